"""A hostile client against the running platform: whatever it sends, no 5xx.

Hypothesis puts hostile strings (NUL, control characters, unpaired surrogates,
10 kB strings, zero-width spaces) and hostile numbers (huge, negative, floats)
into every field of the trigger gateway's and the rules service's APIs, with
wrong types, unknown fields, oversized and chunked bodies, odd content types and
hostile headers. Every answer must be below 500; the inputs tried per API and
the 5xx seen are counted and printed at the end.
"""

from __future__ import annotations

import asyncio
import json
import string
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import quote

import httpx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from infra.dev.launcher import RunningPlatform
from infra.problem_types import BY_SLUG, PROBLEM_TYPES_PATH
from tests.e2e.test_platform import Business, business_with_an_active_rule
from tests.e2e.test_poison_messages import developer_headers
from tests.helpers import eventually, running_platform

pytestmark = pytest.mark.e2e

#: Inputs per property: enough to meet every kind of hostile value many times over,
#: few enough that the module runs in about a minute.
EXAMPLES = 1000
HYPOTHESIS = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=True,  # the same inputs every run: a failure can be replayed
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
TOKEN_PATH = "/realms/partner/protocol/openid-connect/token"

# --- hostile values ------------------------------------------------------------------

#: Characters storage refuses or that confuse parsers, mixed into ordinary text.
NASTY = ["\x00", "\x01", "\x1b", "\x7f", "\x85", "\n", "\r", "\t", "\ud800", "\udfff"]
NASTY += ["\u200b", "\ufeff", "\u202e", "%00", "'", '"', "\\", "😀", "../"]
nasty_text = st.lists(
    st.one_of(st.sampled_from(NASTY), st.text(max_size=8)), min_size=1, max_size=6
).map("".join)
long_text = st.builds(
    lambda unit, nasty: (unit * 10_240)[:10_240] + nasty,
    st.sampled_from(["x", "é", "😀", "\x00"]),
    st.sampled_from(["", "\x00", "\ud800"]),
)
texts = st.one_of(nasty_text, long_text, st.text(max_size=40))
numbers = st.one_of(
    st.integers(),
    st.sampled_from([0, -1, 2**31, 2**53, 2**53 + 1, 2**63 - 1, 2**63, -(2**63) - 1, 10**30]),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from([0.5, 1e308, -0.0, 1.0]),
)
wrong_types = st.one_of(
    st.none(),
    st.booleans(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)
anything = st.one_of(texts, numbers, wrong_types)
unknown_fields = st.dictionaries(st.text(min_size=1, max_size=12), anything, max_size=2)
callback_urls = st.one_of(
    st.sampled_from(
        [
            "http://\u200b",
            "http://127.0.0.1:9/cb\x00",
            "http://[::1",
            "http://a..b/cb",
            "https://" + "a" * 64 + ".com/cb",
            "http://127.0.0.1:99999/cb",
            "https://user:pass@127.0.0.1/cb",
            "http://169.254.169.254/latest/meta-data",
            "javascript:alert(1)",
        ]
    ),
    st.builds(lambda host: f"http://{host}/cb", nasty_text),
    anything,
)


def maybe(good: Any, hostile: st.SearchStrategy[Any] = anything) -> st.SearchStrategy[Any]:
    """The good value half the time, so that the other parameters' checks are reached too."""
    return st.one_of(st.just(good), hostile)


_MISSING = object()


@st.composite
def mostly_good(
    draw: st.DrawFn,
    good: dict[str, Any],
    hostile: dict[str, st.SearchStrategy[Any]],
) -> dict[str, Any]:
    """A body of good values of which up to three fields are hostile or missing, with
    perhaps a field nobody knows: one bad field at a time reaches the checks behind
    the others (down to the database), several at a time meet each other."""
    body = dict(good)
    for name in draw(st.sets(st.sampled_from(sorted(good)), max_size=3)):
        value = draw(st.one_of(st.just(_MISSING), hostile.get(name, anything)))
        if value is _MISSING:
            del body[name]
        else:
            body[name] = value
    unknown: dict[str, Any] = draw(st.one_of(st.just({}), unknown_fields))
    return body | unknown


def json_bytes(body: Any) -> bytes:
    """JSON as a client would send it: lone surrogates as ``\\ud800`` escapes."""
    return json.dumps(body).encode()


# What HTTP lets a client send at all: no CR, LF or NUL, no space at either end.
header_values = st.text(
    alphabet=st.characters(min_codepoint=0x20, max_codepoint=0xFF, exclude_characters="\x7f"),
    max_size=60,
).map(lambda value: value.encode("latin-1").strip(b" "))
content_types = st.sampled_from(
    [
        b"application/json",
        b"text/plain",
        b"application/json; charset=latin-1",
        b"application/x-www-form-urlencoded",
        b"multipart/form-data; boundary=",
        b"application/xml",
        b"*/*",
        b"",
        b"application/json\xff",
    ]
)
authorizations = st.one_of(
    header_values,
    st.builds(lambda value: (b"Bearer " + value).strip(), header_values),
    st.builds(lambda value: (b"Basic " + value).strip(), header_values),
    st.sampled_from([b"Bearer", b"Basic !!!", b"Bearer a.b.c", b"Basic AA==", b"Bearer  x"]),
)


def path_part(value: Any) -> str:
    """``value`` percent-encoded as one path segment (surrogates as their raw bytes)."""
    text = value if isinstance(value, str) else json.dumps(value)
    # At most what an HTTP client sends in a URL (httpx: 64 KiB).
    return quote(text.encode("utf-8", "surrogatepass"), safe="")[:30_000] or "%20"


# --- the platform and the tally ------------------------------------------------------


@dataclass
class Tally:
    """Inputs sent per API, and every answer of 500 or more."""

    inputs: Counter[str] = field(default_factory=Counter)
    statuses: Counter[tuple[str, int]] = field(default_factory=Counter)
    server_errors: list[str] = field(default_factory=list)

    def check(self, api: str, request: str, response: httpx.Response) -> httpx.Response:
        self.inputs[api] += 1
        self.statuses[api, response.status_code] += 1
        if response.status_code >= 500:
            self.server_errors.append(f"{api} {request} -> {response.status_code}")
        return response


class Hostile:
    """The platform, a business with an active rule, its developer's token, and the tally."""

    def __init__(
        self,
        platform: RunningPlatform,
        business: Business,
        developer: dict[str, str],
        http: httpx.Client,
    ) -> None:
        self.platform = platform
        self.business = business
        self.developer = developer
        self.http = http
        self.tally = Tally()

    def __repr__(self) -> str:  # Hypothesis prints a failing case's arguments
        return "Hostile(...)"

    def send(self, api: str, method: str, url: str, **request: Any) -> httpx.Response:
        try:
            response = self.http.request(method, url, **request)
        except httpx.RemoteProtocolError:
            # The server closed the connection (a request it would not read): no 5xx.
            self.tally.inputs[api] += 1
            return httpx.Response(400)
        self.tally.check(api, f"{method} {url[:120]!r}", response)
        assert response.status_code < 500, response.text  # Hypothesis shrinks it to the least
        return response

    def trigger(self, body: bytes, headers: dict[str, Any] | None = None) -> httpx.Response:
        url = f"{self.platform.urls['trigger']}/v1/points/requests"
        headers = headers or {**self.developer, "content-type": "application/json"}
        return self.send("trigger", "POST", url, content=body, headers=headers)

    def rules(self, method: str, path: str, **request: Any) -> httpx.Response:
        request.setdefault("headers", {**self.business.console, "content-type": "application/json"})
        return self.send("rules", method, f"{self.platform.urls['rules']}{path}", **request)


@pytest.fixture(scope="module")
def hostile() -> Iterator[Hostile]:
    # A rate limit far above what this module sends, so inputs reach every check.
    with (
        running_platform(
            "points-hostile-",
            TRIGGER_RATE_LIMIT_PER_SECOND="100000",
            TRIGGER_RATE_LIMIT_BURST="100000",
        ) as platform,
        httpx.Client(timeout=30) as http,
    ):
        business, developer = asyncio.run(developer_of_an_active_rule(platform))
        yield Hostile(platform, business, developer, http)


async def developer_of_an_active_rule(
    platform: RunningPlatform,
) -> tuple[Business, dict[str, str]]:
    async with httpx.AsyncClient(timeout=10) as http:
        business = await business_with_an_active_rule(platform, http, "Hostile Inc", "Target")
        developer = await developer_headers(platform, http, business)

        async def projected() -> bool:
            probe = await http.post(
                f"{platform.urls['trigger']}/v1/points/requests",
                headers=developer,
                json={"userId": "m-1", "ruleId": business.rule_id, "amount": 1, "requestId": "p"},
            )
            return probe.status_code == 202

        await eventually(projected, timeout=60, what="the rule reaching the gateway")
        return business, developer


# --- the trigger gateway ---------------------------------------------------------------


class TestTheTriggerGateway:
    @HYPOTHESIS
    @given(data=st.data())
    def test_hostile_values_in_every_field_are_never_a_5xx(
        self, hostile: Hostile, data: st.DataObject
    ) -> None:
        good = {
            "userId": "member-1",
            "ruleId": hostile.business.rule_id,
            "amount": 1,
            "requestId": f"r-{data.draw(st.uuids())}",
            "callbackUrl": "http://127.0.0.1:9/cb",
        }
        body = data.draw(
            mostly_good(
                good, {"amount": st.one_of(numbers, anything), "callbackUrl": callback_urls}
            )
        )

        hostile.trigger(json_bytes(body))

    @HYPOTHESIS
    @given(body=st.one_of(anything.map(json_bytes), st.binary(max_size=200)))
    def test_bodies_that_are_not_a_trigger_are_never_a_5xx(
        self, hostile: Hostile, body: bytes
    ) -> None:
        hostile.trigger(body)

    @settings(HYPOTHESIS, max_examples=200)
    @given(authorization=authorizations, content_type=content_types, other=header_values)
    def test_hostile_headers_are_never_a_5xx(
        self, hostile: Hostile, authorization: bytes, content_type: bytes, other: bytes
    ) -> None:
        headers = {
            "authorization": authorization,
            "content-type": content_type,
            "x-request-id": other,
            "x-points-timestamp": other,
            "x-points-request-signature": other,
        }
        hostile.trigger(b'{"userId": "m-1"}', headers=headers)

    @settings(HYPOTHESIS, max_examples=200)
    @given(request_id=anything)
    def test_hostile_request_ids_in_the_status_path_are_never_a_5xx(
        self, hostile: Hostile, request_id: Any
    ) -> None:
        url = f"{hostile.platform.urls['trigger']}/v1/points/requests/{path_part(request_id)}"
        hostile.send("trigger", "GET", url, headers=hostile.developer)

    def test_oversized_bodies_are_413(self, hostile: Hostile) -> None:
        padded = {"userId": "m-1", "pad": "x" * 100_000}
        chunks = (b" " * 8192 for _ in range(20))

        declared = hostile.trigger(json_bytes(padded))
        chunked = hostile.trigger(chunks)  # type: ignore[arg-type]

        assert (declared.status_code, chunked.status_code) == (413, 413)

    def test_huge_headers_are_never_a_5xx(self, hostile: Hostile) -> None:
        headers = {**hostile.developer, "x-padding": "x" * 200_000}

        response = hostile.trigger(b"{}", headers=headers)

        assert response.status_code < 500


# --- the rules service -----------------------------------------------------------------


def rule_body(data: st.DataObject, hostile: Hostile) -> dict[str, Any]:
    good = {
        "name": "Rule",
        "description": "line one\nline two",
        "type": "earn",
        "environment": "staging",
        "apiTrigger": True,
        "authorizedClientIds": [hostile.business.client["clientId"]],
        "capMax": 100,
        "capPerMember": 10,
        "maxAmountPerRequest": 5,
        "startsAt": "2026-01-01T00:00:00+00:00",
        "endsAt": "2027-01-01T00:00:00+00:00",
    }
    hostile_values = {
        "authorizedClientIds": st.one_of(st.lists(anything, max_size=3), anything),
        **{name: numbers for name in ("capMax", "capPerMember", "maxAmountPerRequest")},
    }
    return data.draw(mostly_good(good, hostile_values))


class TestTheRulesService:
    @HYPOTHESIS
    @given(data=st.data())
    def test_hostile_rules_are_never_a_5xx(self, hostile: Hostile, data: st.DataObject) -> None:
        hostile.rules("POST", "/v1/rules", content=json_bytes(rule_body(data, hostile)))

    @settings(HYPOTHESIS, max_examples=300)
    @given(data=st.data())
    def test_hostile_changes_to_a_rule_are_never_a_5xx(
        self, hostile: Hostile, data: st.DataObject
    ) -> None:
        body = rule_body(data, hostile) | {"version": data.draw(maybe(1, numbers))}
        rule_id = data.draw(maybe(hostile.business.rule_id))

        hostile.rules("PATCH", f"/v1/rules/{path_part(rule_id)}", content=json_bytes(body))

    @settings(HYPOTHESIS, max_examples=300)
    @given(
        value=anything,
        read=st.sampled_from(["", "/share", "/activate", "/pause", "/promote"]),
    )
    def test_hostile_rule_ids_in_paths_are_never_a_5xx(
        self, hostile: Hostile, value: Any, read: str
    ) -> None:
        method = "GET" if read in ("", "/share") else "POST"

        hostile.rules(method, f"/v1/rules/{path_part(value)}{read}")

    @settings(HYPOTHESIS, max_examples=200)
    @given(value=st.one_of(anything, st.sampled_from(sorted(BY_SLUG))))
    def test_hostile_problem_type_names_are_never_a_5xx(self, hostile: Hostile, value: Any) -> None:
        name = path_part(value)
        assume(name.strip(".") != "")  # "." and ".." are resolved by the client, not sent

        page = hostile.rules("GET", f"{PROBLEM_TYPES_PATH}/{name}", headers={})

        assert page.status_code == (200 if isinstance(value, str) and value in BY_SLUG else 404)

    @settings(HYPOTHESIS, max_examples=300)
    @given(
        params=st.dictionaries(
            st.sampled_from(["actor", "ruleId", "since", "until", "before", "limit", "x"]),
            st.one_of(texts, numbers.map(str)),
            max_size=3,
        ),
        path=st.sampled_from(["/v1/audit", "/v1/rules", "/v1/clients"]),
    )
    def test_hostile_query_parameters_are_never_a_5xx(
        self, hostile: Hostile, params: dict[str, str], path: str
    ) -> None:
        query = "&".join(f"{path_part(key)}={path_part(value)}" for key, value in params.items())
        query = query[:30_000]  # at most what an HTTP client puts in a URL

        hostile.rules("GET", f"{path}?{query}")

    @settings(HYPOTHESIS, max_examples=300)
    @given(to=st.one_of(st.lists(anything, max_size=3), anything))
    def test_hostile_share_email_recipients_are_never_a_5xx(
        self, hostile: Hostile, to: Any
    ) -> None:
        path = f"/v1/rules/{hostile.business.rule_id}/share/email"

        hostile.rules("POST", path, content=json_bytes({"to": to}))

    @settings(HYPOTHESIS, max_examples=300)
    @given(email=maybe("owner@hostile-inc.example"), password=anything, extra=unknown_fields)
    def test_hostile_logins_are_never_a_5xx(
        self, hostile: Hostile, email: Any, password: Any, extra: dict[str, Any]
    ) -> None:
        body = json_bytes({"email": email, "password": password} | extra)

        hostile.rules("POST", "/v1/auth/login", content=body, headers={})

    @settings(HYPOTHESIS, max_examples=300)
    @given(
        fields=st.dictionaries(
            st.sampled_from(["grant_type", "client_id", "client_secret", "scope"]),
            texts,
            max_size=4,
        ),
        authorization=st.one_of(st.none(), authorizations),
        raw=st.one_of(st.none(), st.binary(max_size=100)),
    )
    def test_hostile_token_requests_are_never_a_5xx(
        self,
        hostile: Hostile,
        fields: dict[str, str],
        authorization: bytes | None,
        raw: bytes | None,
    ) -> None:
        form = "&".join(f"{path_part(key)}={path_part(value)}" for key, value in fields.items())
        headers = {"content-type": "application/x-www-form-urlencoded"}
        if authorization is not None:
            headers["authorization"] = authorization  # type: ignore[assignment]

        hostile.rules("POST", TOKEN_PATH, content=raw or form.encode(), headers=headers)

    @settings(HYPOTHESIS, max_examples=200)
    @given(
        authorization=authorizations,
        content_type=content_types,
        csrf=header_values,
        cookie=st.sampled_from(string.ascii_letters + string.digits + string.punctuation).map(
            lambda c: f'points_session="a\\000{c}"'
        ),
    )
    def test_hostile_headers_and_cookies_are_never_a_5xx(
        self, hostile: Hostile, authorization: bytes, content_type: bytes, csrf: bytes, cookie: str
    ) -> None:
        headers = {
            "authorization": authorization,
            "content-type": content_type,
            "x-csrf-token": csrf,
        }
        hostile.rules("POST", "/v1/rules", content=b'{"name": "x"}', headers=headers)
        hostile.rules(
            "GET", "/v1/rules", headers={"cookie": cookie.encode("latin-1"), "x-csrf-token": csrf}
        )

    def test_oversized_bodies_are_413(self, hostile: Hostile) -> None:
        padded = {"name": "x" * 100_000}
        chunks = (b" " * 8192 for _ in range(20))

        declared = hostile.rules("POST", "/v1/rules", content=json_bytes(padded))
        chunked = hostile.rules("POST", "/v1/rules", content=chunks)

        assert (declared.status_code, chunked.status_code) == (413, 413)


# --- the closing figures ---------------------------------------------------------------


def test_no_input_was_answered_with_a_5xx(
    hostile: Hostile, capsys: pytest.CaptureFixture[str]
) -> None:
    tally = hostile.tally
    with capsys.disabled():
        counts = ", ".join(f"{api}: {count}" for api, count in sorted(tally.inputs.items()))
        print(f"\nhostile inputs tried per API: {counts}; 5xx answers: {len(tally.server_errors)}")
        for api in sorted(tally.inputs):
            answers = sorted((status, n) for (of, status), n in tally.statuses.items() if of == api)
            print(f"  {api} answers: " + ", ".join(f"{status}: {n}" for status, n in answers))
        for error in tally.server_errors[:20]:
            print(f"  {error}")
    assert tally.inputs["trigger"] > 0 and tally.inputs["rules"] > 0
    assert tally.server_errors == [], "\n".join(tally.server_errors[:20])
