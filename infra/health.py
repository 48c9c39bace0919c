"""The endpoints every service answers for its operators: liveness, readiness, metrics."""

from __future__ import annotations

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST

from infra.runtime import ServiceRuntime


def health_router(runtime: ServiceRuntime) -> APIRouter:
    """``/healthz`` (the process answers), ``/readyz`` (it can do its work) and ``/metrics``."""
    router = APIRouter(tags=["health"])

    @router.get("/healthz")
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @router.get("/readyz")
    async def readyz() -> JSONResponse:
        """Database and broker reachable, projections caught up."""
        results = await runtime.readiness()
        ready = all(results.values())
        return JSONResponse(
            {"status": "ready" if ready else "not ready", "checks": results},
            status_code=200 if ready else 503,
        )

    router.include_router(metrics_router(runtime))
    return router


def metrics_router(runtime: ServiceRuntime) -> APIRouter:
    """``GET /metrics`` for Prometheus; open like ``/healthz``, as it holds counts, not data."""
    router = APIRouter(tags=["metrics"])

    @router.get("/metrics", response_class=Response)
    async def prometheus_metrics() -> Response:
        """Request rates and latency, outbox backlog, consumer lag and the service's own."""
        return Response(await runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
