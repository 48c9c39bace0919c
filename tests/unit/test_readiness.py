"""``/readyz`` and the ``service.ready`` line that says when a process began its work."""

from __future__ import annotations

from pathlib import Path

from structlog.testing import capture_logs

from infra.runtime import ReadinessCheck, ServiceRuntime
from infra.settings import ServiceSettings


class Check:
    """A readiness check that answers what it is told to."""

    def __init__(self, ready: bool) -> None:
        self.ready = ready

    async def __call__(self) -> bool:
        return self.ready


def runtime_with(**checks: ReadinessCheck) -> ServiceRuntime:
    runtime = ServiceRuntime(
        ServiceSettings(port=8123), schema="readiness_unit", migrations=Path(), relay=False
    )
    runtime.readiness_checks = dict(checks)
    return runtime


class TestReadiness:
    async def test_reports_each_check(self) -> None:
        runtime = runtime_with(database=Check(True), projection=Check(False))

        assert await runtime.readiness() == {"database": True, "projection": False}

    async def test_logs_service_ready_once_when_every_check_first_passes(self) -> None:
        projection = Check(False)
        runtime = runtime_with(database=Check(True), projection=projection)

        with capture_logs() as logs:
            await runtime.readiness()
            projection.ready = True
            await runtime.readiness()
            await runtime.readiness()

        assert [line for line in logs if line["event"] == "service.ready"] == [
            {"event": "service.ready", "port": 8123, "log_level": "info"}
        ]

    async def test_a_failing_check_is_not_ready(self) -> None:
        async def broken() -> bool:
            raise OSError("database away")

        runtime = runtime_with(database=broken)

        assert await runtime.readiness() == {"database": False}

    async def test_a_process_nobody_polls_logs_service_ready_too(self) -> None:
        runtime = runtime_with(database=Check(True))

        with capture_logs() as logs:
            await runtime.log_when_ready()

        assert [line["event"] for line in logs] == ["service.ready"]
