"""Errors reach HTTP callers as RFC 9457 problem details with a stable code."""

from __future__ import annotations

from collections.abc import AsyncIterator

import asyncpg
import httpx
from pydantic import BaseModel

from contracts.text import Text
from infra.http import create_http_app
from infra.problems import Problem


class Order(BaseModel):
    sku: str
    quantity: int


class OutOfStock(Problem):
    status = 409
    code = "OUT_OF_STOCK"


def app_under_test(max_body_bytes: int = 65_536) -> httpx.AsyncClient:
    app = create_http_app(max_body_bytes=max_body_bytes)

    @app.post("/orders")
    async def order(body: Order) -> dict[str, str]:
        if body.sku == "gone":
            raise OutOfStock("no more of that", sku=body.sku)
        if body.sku == "db-down":
            raise ConnectionRefusedError("database refused")
        if body.sku == "too-long-for-db":
            raise asyncpg.StringDataRightTruncationError("value too long for type")
        return {"sku": body.sku}

    @app.get("/items/{sku}")
    async def item(sku: Text, tag: Text | None = None) -> dict[str, str]:
        return {"sku": sku}

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


class TestHostileRequests:
    async def test_a_value_the_database_refuses_is_a_400_naming_it_not_a_500(self) -> None:
        async with app_under_test() as http:
            response = await http.post("/orders", json={"sku": "too-long-for-db", "quantity": 1})
        assert (response.status_code, response.json()["code"]) == (400, "INVALID_VALUE")

    async def test_a_nul_in_a_path_parameter_is_a_problem_naming_it(self) -> None:
        async with app_under_test() as http:
            response = await http.get("/items/a%00b")
        assert response.status_code == 400
        assert response.headers["content-type"] == "application/problem+json"
        assert response.json()["errors"][0]["field"] == "path.sku"

    async def test_a_control_character_in_a_query_parameter_is_a_problem_naming_it(self) -> None:
        async with app_under_test() as http:
            response = await http.get("/items/a", params={"tag": "x\x1by"})
        assert response.json()["errors"][0]["field"] == "query.tag"

    async def test_a_body_declared_over_the_limit_is_refused_with_413_unread(self) -> None:
        async with app_under_test(max_body_bytes=1024) as http:
            response = await http.post(
                "/orders", content=b"x" * 1025, headers={"content-type": "application/json"}
            )
        assert (response.status_code, response.json()["code"]) == (413, "BODY_TOO_LARGE")

    async def test_a_chunked_body_over_the_limit_is_refused_with_413(self) -> None:
        async def chunks() -> AsyncIterator[bytes]:
            for _ in range(4):
                yield b'{"sku": "' + b"x" * 500

        async with app_under_test(max_body_bytes=1024) as http:
            response = await http.post(
                "/orders", content=chunks(), headers={"content-type": "application/json"}
            )
        assert "content-length" not in response.request.headers
        assert (response.status_code, response.json()["code"]) == (413, "BODY_TOO_LARGE")

    async def test_a_body_within_the_limit_is_served(self) -> None:
        async with app_under_test(max_body_bytes=1024) as http:
            response = await http.post("/orders", json={"sku": "a", "quantity": 1})
        assert response.status_code == 200

    async def test_a_content_length_that_is_not_a_number_is_a_bad_request(self) -> None:
        async with app_under_test() as http:
            response = await http.post("/orders", content=b"{}", headers={"content-length": "lots"})
        assert (response.status_code, response.json()["code"]) == (400, "BAD_REQUEST")

    async def test_a_body_that_is_not_utf_8_is_a_4xx_problem(self) -> None:
        async with app_under_test() as http:
            response = await http.post(
                "/orders", content=b'{"sku": "\xff"}', headers={"content-type": "application/json"}
            )
        assert 400 <= response.status_code < 500
        assert response.headers["content-type"] == "application/problem+json"
