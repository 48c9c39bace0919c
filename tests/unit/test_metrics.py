"""The metrics every service serves at /metrics, without a database or a broker."""

from __future__ import annotations

from pathlib import Path

import httpx
from fastapi import APIRouter

from infra.health import health_router
from infra.http import create_http_app
from infra.runtime import ServiceRuntime
from infra.settings import ServiceSettings
from tests.helpers import free_port

REQUESTS = "points_http_requests_total"
DURATION_COUNT = "points_http_request_duration_seconds_count"


def idle_runtime(**settings: str) -> ServiceRuntime:
    """A runtime that is never started: no relay, so nothing to read from PostgreSQL."""
    return ServiceRuntime(
        ServiceSettings(**settings), schema="metrics_unit", migrations=Path(), relay=False
    )


def orders_app(runtime: ServiceRuntime) -> httpx.AsyncClient:
    orders = APIRouter()

    @orders.get("/v1/orders/{order_id}")
    async def get_order(order_id: str) -> dict[str, str]:
        return {"id": order_id}

    app = create_http_app(runtime.metrics)
    app.include_router(health_router(runtime))
    app.include_router(orders)
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://service")


def requests_of(runtime: ServiceRuntime, route: str, status: str) -> float | None:
    return runtime.metrics.registry.get_sample_value(
        REQUESTS, {"service": "service", "method": "GET", "route": route, "status": status}
    )


class TestHttpMetrics:
    async def test_requests_are_counted_under_their_route_template_not_their_path(self) -> None:
        runtime = idle_runtime()
        async with orders_app(runtime) as http:
            await http.get("/v1/orders/a-1")
            await http.get("/v1/orders/b-2")

        assert requests_of(runtime, "/v1/orders/{order_id}", "200") == 2
        labels = {"service": "service", "method": "GET", "route": "/v1/orders/{order_id}"}
        assert runtime.metrics.registry.get_sample_value(DURATION_COUNT, labels) == 2

    async def test_an_unknown_path_is_counted_as_unmatched_so_paths_add_no_series(self) -> None:
        runtime = idle_runtime()
        async with orders_app(runtime) as http:
            await http.get("/no/such/path/42")

        assert requests_of(runtime, "unmatched", "404") == 1

    async def test_scrapes_of_metrics_are_not_counted(self) -> None:
        runtime = idle_runtime()
        async with orders_app(runtime) as http:
            await http.get("/healthz")
            response = await http.get("/metrics")

        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/plain; version=")
        assert requests_of(runtime, "/healthz", "200") == 1
        assert "/metrics" not in response.text

    async def test_two_runtimes_in_one_process_count_their_requests_apart(self) -> None:
        first, second = idle_runtime(), idle_runtime()
        async with orders_app(first) as http:
            await http.get("/v1/orders/a-1")

        assert requests_of(first, "/v1/orders/{order_id}", "200") == 1
        assert requests_of(second, "/v1/orders/{order_id}", "200") is None


class TestConsumerLagMetric:
    async def test_lag_is_left_out_and_the_scrape_still_answers_when_kafka_is_down(self) -> None:
        runtime = idle_runtime(kafka_bootstrap_servers=f"127.0.0.1:{free_port()}")
        runtime.watch_lag("reporting", ["points.requested.v1"])
        async with orders_app(runtime) as http:
            response = await http.get("/metrics")

        assert response.status_code == 200
        assert "points_consumer_lag{" not in response.text
