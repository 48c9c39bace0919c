"""What ``points dev`` shows of its services: one readable line per event that matters.

The services log JSON lines (structlog). :class:`LogFile` keeps every line of
a service, whole, in ``var/log/<service>.log``; :class:`TerminalView` turns
the few that a developer watching the terminal wants into short lines::

    rules    | started on port 8001
    ledger   | 1 request applied, 0 rejected
    notifier | WARNING callback.failed delivery_id=7 request_id=order-7 error="HTTP 500"

and drops the rest (FastStream's ``Received``/``Processed`` per message,
uvicorn's banner, token grants, ...). A line that is not JSON (a traceback
printed before logging was configured) and anything at warning or above is
always shown. Events that come once per request are counted: the first after
a quiet second is shown as it comes, the ones after it are summed into at
most one line per second (:meth:`TerminalView.due`).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

Fields = dict[str, Any]

#: Keys every line carries that say nothing a reader of the terminal needs.
_HIDDEN_KEYS = frozenset(
    {"event", "level", "timestamp", "service", "correlation_id", "message_id", "exception"}
)
_LEVEL_COLOURS = {"warning": "33", "error": "31", "critical": "31"}
_SHOWN_LEVELS = frozenset(_LEVEL_COLOURS)


def _count(number: int, noun: str, plural: str | None = None) -> str:
    return f"{number:,} {noun if number == 1 else plural or noun + 's'}"


@dataclass(frozen=True)
class Shown:
    """An event shown each time it happens, as ``line(fields)``."""

    line: Callable[[Fields], str]


@dataclass(frozen=True)
class Counted:
    """An event that can come once per request: shown alone after a quiet second, summed
    into ``summary(totals)`` when several come within one. ``totals`` has ``events``,
    how many were summed, and the sum of each field named in ``summed``."""

    line: Callable[[Fields], str]
    summary: Callable[[dict[str, int]], str]
    summed: tuple[str, ...] = ()


def _rule(change: str) -> Shown:
    return Shown(lambda f: f"rule {f['rule_id']} {change} ({f['environment']})")


def _applied(totals: Fields) -> str:
    return f"{_count(totals['applied'], 'request')} applied, {totals['rejected']:,} rejected"


#: The info events a developer watching ``make run`` wants to see, by event name.
EVENTS: dict[str, Shown | Counted] = {
    "service.started": Shown(lambda f: f"started on port {f['port']}"),
    "service.ready": Shown(lambda _: "ready"),
    "service.stopped": Shown(lambda _: "stopped"),
    "rule.activated": _rule("activated"),
    "rule.paused": _rule("paused"),
    "rule.archived": _rule("archived"),
    "points.transaction.reversed": Shown(
        lambda f: (
            f"transaction {f['transaction_id']} reversed: {f['reversed']:,} points back,"
            f" {f['uncovered']:,} uncovered"
        )
    ),
    "delivery.replayed": Shown(lambda f: f"delivery {f['delivery_id']} replayed"),
    "delivery.replayed_all": Shown(
        lambda f: f"{_count(f['count'], 'parked delivery', 'parked deliveries')} replayed"
    ),
    "points.request.accepted": Counted(
        lambda f: f"request {f['request_id']} accepted for rule {f['rule_id']}",
        lambda t: f"{_count(t['events'], 'request')} accepted",
    ),
    "points.batch.applied": Counted(
        _applied,
        lambda t: f"{_applied(t)} in {_count(t['events'], 'batch', 'batches')}",
        summed=("applied", "rejected"),
    ),
    "callback.delivered": Counted(
        lambda f: f"callback for {f['request_id']} delivered to {f['host']} ({f['status_code']})",
        lambda t: f"{_count(t['events'], 'callback')} delivered",
    ),
    "email.delivered": Counted(
        lambda f: f"e-mail sent to {_count(f['recipients'], 'recipient')}",
        lambda t: f"{_count(t['events'], 'e-mail')} sent to {_count(t['recipients'], 'recipient')}",
        summed=("recipients",),
    ),
}


@dataclass
class _Tally:
    """One service's events of one counted kind since its last line."""

    shown_at: float
    totals: dict[str, int] = field(default_factory=dict)

    def add(self, fields: Fields, summed: tuple[str, ...]) -> None:
        self.totals["events"] = self.totals.get("events", 0) + 1
        for name in summed:
            self.totals[name] = self.totals.get(name, 0) + int(fields.get(name) or 0)


class TerminalView:
    """Decides which of a service's output lines reach the terminal, and how they read."""

    def __init__(
        self,
        *,
        colour: bool = False,
        every: float = 1.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._colour = colour
        self.every = every
        """The shortest time between two lines of one service's counted event."""
        self._clock = clock
        self._tallies: dict[tuple[str, str], _Tally] = {}

    def lines(self, service: str, line: str) -> list[str]:
        """What to show now of ``line``, a line ``service`` printed (often nothing)."""
        fields = _parse(line)
        if fields is None:
            return [line]
        event = str(fields["event"])
        level = str(fields.get("level", "info")).lower()
        if level in _SHOWN_LEVELS:
            return [self._problem(level, event, fields), *_exception_lines(fields)]
        kind = EVENTS.get(event)
        if isinstance(kind, Shown):
            return [_rendered(kind.line, fields, line)]
        if isinstance(kind, Counted):
            return self._counted(service, event, kind, fields, line)
        return []

    def due(self, *, everything: bool = False) -> list[tuple[str, str]]:
        """``(service, line)`` for each count whose second is up (every count, when
        ``everything``: the supervisor is stopping)."""
        now = self._clock()
        shown = []
        for (service, event), tally in self._tallies.items():
            if tally.totals and (everything or now - tally.shown_at >= self.every):
                kind = EVENTS[event]
                assert isinstance(kind, Counted)
                shown.append((service, kind.summary(tally.totals)))
                tally.totals = {}
                tally.shown_at = now
        return shown

    def _counted(
        self, service: str, event: str, kind: Counted, fields: Fields, line: str
    ) -> list[str]:
        now = self._clock()
        tally = self._tallies.get((service, event))
        if tally is None or (not tally.totals and now - tally.shown_at >= self.every):
            self._tallies[service, event] = _Tally(shown_at=now)
            return [_rendered(kind.line, fields, line)]
        tally.add(fields, kind.summed)
        return []

    def _problem(self, level: str, event: str, fields: Fields) -> str:
        label = level.upper()
        if self._colour:
            label = f"\x1b[{_LEVEL_COLOURS[level]}m{label}\x1b[0m"
        details = " ".join(f"{key}={_value(value)}" for key, value in _details(fields))
        return f"{label} {event} {details}".rstrip()


def _parse(line: str) -> Fields | None:
    """The fields of a structlog JSON line; ``None`` for anything else."""
    if not line.startswith("{"):
        return None
    try:
        fields = json.loads(line)
    except ValueError:
        return None
    if not isinstance(fields, dict) or "event" not in fields:
        return None
    return fields


def _rendered(render: Callable[[Fields], str], fields: Fields, line: str) -> str:
    # A line that lacks what its renderer expects (an older service, a field renamed)
    # is shown whole rather than lost.
    try:
        return render(fields)
    except (KeyError, TypeError, ValueError):
        return line


def _details(fields: Fields) -> Iterator[tuple[str, Any]]:
    """The fields worth showing after a warning's event name: ids, counts, the error."""
    extra = fields.get("extra")
    merged = {**fields, **extra} if isinstance(extra, dict) else fields
    for key, value in merged.items():
        if key in _HIDDEN_KEYS or key == "extra":
            continue
        # An HTTP request's id is its correlation id: one of them is enough.
        if key == "request_id" and value == fields.get("correlation_id"):
            continue
        yield key, value


def _value(value: Any) -> str:
    if isinstance(value, str):
        return json.dumps(value) if not value or any(c in value for c in ' ="') else value
    return json.dumps(value, separators=(",", ":"))


def _exception_lines(fields: Fields) -> list[str]:
    exception = fields.get("exception")
    return str(exception).splitlines() if exception else []


class LogFile:
    """Every line one service printed, appended to its own file.

    Lines are buffered and written by :meth:`flush`, which the supervisor calls
    after each chunk it reads, so a busy service costs one write per chunk
    rather than one per line.
    """

    def __init__(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        self.path = path
        self._file: IO[str] = path.open("a", encoding="utf-8")

    def write(self, line: str) -> None:
        self._file.write(line + "\n")

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()
