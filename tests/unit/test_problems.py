"""Errors reach HTTP callers as RFC 9457 problem details with a stable code."""

from __future__ import annotations

import httpx
from pydantic import BaseModel

from infra.http import create_http_app
from infra.problems import Problem


class Order(BaseModel):
    sku: str
    quantity: int


class OutOfStock(Problem):
    status = 409
    code = "OUT_OF_STOCK"


def app_under_test() -> httpx.AsyncClient:
    app = create_http_app()

    @app.post("/orders")
    async def order(body: Order) -> dict[str, str]:
        if body.sku == "gone":
            raise OutOfStock("no more of that", sku=body.sku)
        if body.sku == "db-down":
            raise ConnectionRefusedError("database refused")
        return {"sku": body.sku}

    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")


class TestProblemResponses:
    async def test_a_body_that_is_not_json_is_a_bad_request_saying_so(self) -> None:
        async with app_under_test() as http:
            response = await http.post(
                "/orders", content=b"{nope", headers={"content-type": "application/json"}
            )
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["code"] == "INVALID_REQUEST"
        assert "not valid JSON" in response.json()["detail"]

    async def test_a_missing_field_is_named(self) -> None:
        async with app_under_test() as http:
            response = await http.post("/orders", json={"sku": "a"})
        assert response.status_code == 400
        assert response.json()["errors"] == [{"field": "quantity", "message": "Field required"}]

    async def test_a_raised_problem_keeps_its_status_code_and_extra_fields(self) -> None:
        async with app_under_test() as http:
            response = await http.post("/orders", json={"sku": "gone", "quantity": 1})
        assert response.status_code == 409
        body = response.json()
        assert (body["code"], body["detail"], body["sku"]) == (
            "OUT_OF_STOCK",
            "no more of that",
            "gone",
        )

    async def test_an_unreachable_database_is_a_retryable_503_not_a_500(self) -> None:
        async with app_under_test() as http:
            response = await http.post("/orders", json={"sku": "db-down", "quantity": 1})
        assert response.status_code == 503
        assert response.json()["code"] == "SERVICE_UNAVAILABLE"
        assert response.headers["retry-after"] == "5"

    async def test_every_response_carries_a_request_id(self) -> None:
        async with app_under_test() as http:
            response = await http.post(
                "/orders", json={"sku": "a", "quantity": 1}, headers={"X-Request-Id": "abc"}
            )
        assert response.headers["x-request-id"] == "abc"
