"""The endpoints every service answers for its operators: liveness, readiness, metrics."""

from __future__ import annotations

from typing import Literal

from fastapi import APIRouter, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST
from pydantic import BaseModel, Field

from infra.runtime import ServiceRuntime


class Alive(BaseModel):
    status: Literal["ok"]


class Readiness(BaseModel):
    status: Literal["ready", "not ready"]
    checks: dict[str, bool] = Field(description="Each check by name, and whether it passed.")


def health_router(runtime: ServiceRuntime) -> APIRouter:
    """``/healthz`` (the process answers), ``/readyz`` (it can do its work) and ``/metrics``."""
    router = APIRouter(tags=["health"])

    @router.get("/healthz", response_model=Alive)
    async def healthz() -> dict[str, str]:
        """The process is alive."""
        return {"status": "ok"}

    @router.get(
        "/readyz",
        response_model=Readiness,
        responses={503: {"model": Readiness, "description": "Not ready: a check failed."}},
    )
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

    @router.get(
        "/metrics",
        response_class=Response,
        responses={
            200: {
                "description": "The Prometheus text format.",
                "content": {"text/plain": {"schema": {"type": "string"}}},
            }
        },
    )
    async def prometheus_metrics() -> Response:
        """Request rates and latency, outbox backlog, consumer lag and the service's own."""
        return Response(await runtime.metrics.render(), media_type=CONTENT_TYPE_LATEST)

    return router
