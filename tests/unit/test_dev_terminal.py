"""What `make run` shows of the services' JSON logs, and where it keeps all of them."""

from __future__ import annotations

import json
from pathlib import Path

from infra.dev.terminal import LogFile, TerminalView

# Lines as the services print them under `points dev` (taken from a real run).
STARTED = (
    '{"port": 8002, "event": "service.started", "service": "trigger", "level": "info",'
    ' "timestamp": "2026-12-07T00:45:41.449520Z"}'
)
READY = (
    '{"port": 8002, "event": "service.ready", "service": "trigger", "level": "info",'
    ' "timestamp": "2026-12-07T00:45:47.012345Z"}'
)
RECEIVED = (
    '{"extra": {"topic": "clients.lifecycle.v1", "group_id": "trigger.projection",'
    ' "message_id": "0-0-1796604342656"}, "event": "Received", "service": "trigger",'
    ' "level": "info", "timestamp": "2026-12-07T00:45:46.934547Z"}'
)
PROCESSED = RECEIVED.replace('"Received"', '"Processed"')
UVICORN_STARTED = (
    '{"event": "Started server process [10055]", "service": "trigger", "level": "info",'
    ' "timestamp": "2026-12-07T00:45:41.815328Z"}'
)
TOKEN_ISSUED = (
    '{"client_id": "cli_1e13", "event": "token.issued", "correlation_id": "463c0d72",'
    ' "request_id": "463c0d72", "service": "rules", "level": "info",'
    ' "timestamp": "2026-12-07T00:46:14.545067Z"}'
)
RULE_ACTIVATED = (
    '{"rule_id": "rul_dbb0", "environment": "staging", "actor": "usr_f056",'
    ' "event": "rule.activated", "correlation_id": "ac9b235e", "request_id": "ac9b235e",'
    ' "service": "rules", "level": "info", "timestamp": "2026-12-07T00:46:13.970000Z"}'
)
ACCEPTED = (
    '{"client_id": "cli_1e13", "request_id": "order-1001", "rule_id": "rul_dbb0",'
    ' "transaction_id": "ac84dc89-9651-47b8-b0f7-369f7a4320f6",'
    ' "event": "points.request.accepted", "correlation_id": "b24c5314", "service": "trigger",'
    ' "level": "info", "timestamp": "2026-12-07T00:46:14.573647Z"}'
)
BATCH_APPLIED = (
    '{"received": 3, "applied": 2, "rejected": 1, "settled_before": 0,'
    ' "event": "points.batch.applied", "service": "ledger", "message_id": "0-0-1796604374582",'
    ' "correlation_id": "b24c5314", "level": "info", "timestamp": "2026-12-07T00:46:14.816856Z"}'
)
CALLBACK_DELIVERED = (
    '{"delivery_id": 1, "event_id": "6647d801-b5af-52ef-a1d0-8ca39abac5cf", "attempt": 1,'
    ' "request_id": "order-1001", "client_id": "cli_1e13", "host": "127.0.0.1",'
    ' "status_code": 204, "event": "callback.delivered", "service": "notifier",'
    ' "level": "info", "timestamp": "2026-12-07T00:46:15.047271Z"}'
)
EMAIL_DELIVERED = (
    '{"delivery_id": 2, "event_id": "76851433-1ab7-4715-b9d7-7f8b2eefee1c", "attempt": 1,'
    ' "notification_id": "d0e04c2c-395c-446d-8772-f021d58db177", "recipients": 1,'
    ' "status_code": 250, "event": "email.delivered", "service": "notifier", "level": "info",'
    ' "timestamp": "2026-12-07T00:46:21.314713Z"}'
)
CALLBACK_FAILED = (
    '{"delivery_id": 7, "event_id": "e1", "attempt": 2, "request_id": "order-7",'
    ' "client_id": "cli_1", "host": "127.0.0.1", "status_code": 500, "error": "HTTP 500",'
    ' "retry_in_seconds": 4.0, "event": "callback.failed", "service": "notifier",'
    ' "level": "warning", "timestamp": "2026-12-07T00:47:12.123454Z"}'
)
WORKER_ERROR = (
    '{"error": "division by zero", "event": "delivery.worker.error", "service": "notifier",'
    ' "level": "error", "timestamp": "2026-12-07T00:47:12.123458Z", "exception":'
    ' "Traceback (most recent call last):\\n  File \\"dispatch.py\\", line 6, in <module>\\n'
    '    1 / 0\\nZeroDivisionError: division by zero"}'
)
UVICORN_BIND_FAILED = (
    '{"event": "[Errno 98] error while attempting to bind on address (\'127.0.0.1\', 8002):'
    ' address already in use", "service": "trigger", "level": "error",'
    ' "timestamp": "2026-12-07T00:47:12.123451Z"}'
)
# What Python prints when a service fails before its logging is configured.
TRACEBACK = [
    "Traceback (most recent call last):",
    '  File "<frozen runpy>", line 198, in _run_module_as_main',
    "ModuleNotFoundError: No module named 'services.trigger.app'",
]


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def shown(view: TerminalView, service: str, *lines: str) -> list[str]:
    return [text for line in lines for text in view.lines(service, line)]


class TestTerminalView:
    def test_says_a_service_started_and_is_ready(self) -> None:
        assert shown(TerminalView(), "trigger", STARTED, READY) == [
            "started on port 8002",
            "ready",
        ]

    def test_hides_per_message_and_routine_lines(self) -> None:
        view = TerminalView()

        assert shown(view, "trigger", RECEIVED, PROCESSED, UVICORN_STARTED, TOKEN_ISSUED) == []

    def test_shows_a_rule_being_activated(self) -> None:
        assert shown(TerminalView(), "rules", RULE_ACTIVATED) == [
            "rule rul_dbb0 activated (staging)"
        ]

    def test_says_how_many_requests_a_batch_applied_and_rejected(self) -> None:
        assert shown(TerminalView(), "ledger", BATCH_APPLIED) == ["2 requests applied, 1 rejected"]

    def test_shows_a_delivered_callback_and_a_sent_email(self) -> None:
        view = TerminalView()

        assert shown(view, "notifier", CALLBACK_DELIVERED, EMAIL_DELIVERED) == [
            "callback for order-1001 delivered to 127.0.0.1 (204)",
            "e-mail sent to 1 recipient",
        ]

    def test_shows_a_line_that_is_not_json_as_it_is(self) -> None:
        assert shown(TerminalView(), "trigger", *TRACEBACK) == TRACEBACK

    def test_shows_a_warning_with_its_fields(self) -> None:
        assert shown(TerminalView(), "notifier", CALLBACK_FAILED) == [
            "WARNING callback.failed delivery_id=7 event_id=e1 attempt=2 request_id=order-7"
            ' client_id=cli_1 host=127.0.0.1 status_code=500 error="HTTP 500"'
            " retry_in_seconds=4.0"
        ]

    def test_shows_an_error_followed_by_its_traceback(self) -> None:
        assert shown(TerminalView(), "notifier", WORKER_ERROR) == [
            'ERROR delivery.worker.error error="division by zero"',
            "Traceback (most recent call last):",
            '  File "dispatch.py", line 6, in <module>',
            "    1 / 0",
            "ZeroDivisionError: division by zero",
        ]

    def test_shows_uvicorns_own_start_up_error(self) -> None:
        assert shown(TerminalView(), "trigger", UVICORN_BIND_FAILED) == [
            "ERROR [Errno 98] error while attempting to bind on address ('127.0.0.1', 8002):"
            " address already in use"
        ]

    def test_colours_the_level_only_when_asked(self) -> None:
        [line] = shown(TerminalView(colour=True), "notifier", CALLBACK_FAILED)

        assert line.startswith("\x1b[33mWARNING\x1b[0m callback.failed ")

    def test_shows_a_line_whole_when_it_lacks_what_its_rendering_needs(self) -> None:
        older = json.dumps({"event": "service.started", "level": "info"})

        assert shown(TerminalView(), "rules", older) == [older]


class TestTerminalViewUnderLoad:
    def test_shows_the_first_request_of_a_quiet_second_at_once(self) -> None:
        view = TerminalView(clock=Clock())

        assert shown(view, "trigger", ACCEPTED) == ["request order-1001 accepted for rule rul_dbb0"]
        assert view.due() == []

    def test_sums_a_flood_of_requests_into_one_line_a_second(self) -> None:
        clock = Clock()
        view = TerminalView(clock=clock)

        first = shown(view, "trigger", *[ACCEPTED] * 1000)
        held_back = view.due()
        clock.now += 1.0
        summed = view.due()

        assert first == ["request order-1001 accepted for rule rul_dbb0"]
        assert held_back == []
        assert summed == [("trigger", "999 requests accepted")]

    def test_sums_applied_and_rejected_over_the_batches_of_a_second(self) -> None:
        clock = Clock()
        view = TerminalView(clock=clock)
        shown(view, "ledger", *[BATCH_APPLIED] * 4)

        clock.now += 1.0

        assert view.due() == [("ledger", "6 requests applied, 3 rejected in 3 batches")]

    def test_counts_each_service_and_event_apart(self) -> None:
        clock = Clock()
        view = TerminalView(clock=clock)
        shown(view, "notifier", *[CALLBACK_DELIVERED, EMAIL_DELIVERED] * 3)

        clock.now += 1.0

        assert view.due() == [
            ("notifier", "2 callbacks delivered"),
            ("notifier", "2 e-mails sent to 2 recipients"),
        ]

    def test_shows_at_most_one_summary_a_second(self) -> None:
        clock = Clock()
        view = TerminalView(clock=clock)
        shown(view, "trigger", ACCEPTED, ACCEPTED)
        clock.now += 1.0
        view.due()

        clock.now += 0.5
        after_half_a_second = shown(view, "trigger", ACCEPTED)

        assert after_half_a_second == []
        assert view.due() == []

    def test_never_holds_back_a_warning_during_a_flood(self) -> None:
        view = TerminalView(clock=Clock())

        lines = shown(view, "notifier", *[CALLBACK_DELIVERED, CALLBACK_FAILED] * 50)

        assert sum(line.startswith("WARNING callback.failed") for line in lines) == 50

    def test_shows_what_was_still_counted_when_the_platform_stops(self) -> None:
        view = TerminalView(clock=Clock())
        shown(view, "trigger", ACCEPTED, ACCEPTED, ACCEPTED)

        assert view.due(everything=True) == [("trigger", "2 requests accepted")]


class TestLogFile:
    def test_keeps_every_line_whole_json_or_not(self, tmp_path: Path) -> None:
        log = LogFile(tmp_path / "log" / "notifier.log")

        for line in (RECEIVED, CALLBACK_FAILED, *TRACEBACK):
            log.write(line)
        log.close()

        assert log.path.read_text().splitlines() == [RECEIVED, CALLBACK_FAILED, *TRACEBACK]

    def test_appends_to_what_an_earlier_run_wrote(self, tmp_path: Path) -> None:
        path = tmp_path / "rules.log"
        path.write_text(STARTED + "\n")

        log = LogFile(path)
        log.write(READY)
        log.close()

        assert path.read_text().splitlines() == [STARTED, READY]

    def test_lines_are_on_disk_once_flushed(self, tmp_path: Path) -> None:
        log = LogFile(tmp_path / "ledger.log")

        log.write(BATCH_APPLIED)
        log.flush()

        assert log.path.read_text() == BATCH_APPLIED + "\n"
        log.close()
