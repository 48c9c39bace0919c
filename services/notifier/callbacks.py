"""HTTP callbacks: the SSRF guard on a callback's URL, and the signed POST.

A callback's host is resolved within ``dns_timeout_seconds`` and checked
against SSRF; the connection goes to the address that was checked, and the
body, signed with the client's derived secret, is POSTed with redirects,
proxies and the response body left alone.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from infra.addresses import allowed_schemes, described, refusal_reason
from infra.signing import EVENT_ID_HEADER, SIGNATURE_HEADER
from services.notifier.attempts import AttemptOutcome
from services.notifier.repository import ClaimedCallback
from services.notifier.resolver import IPAddress
from services.notifier.settings import NotifierSettings

USER_AGENT = "points-notifier/1"
#: Answers up to this long are read to their end, so that their connection is kept.
SHORT_BODY_BYTES = 16_384


class RefusedTarget(Exception):
    """A callback URL the notifier will never call: the delivery is parked."""


@dataclass(frozen=True)
class CallbackTarget:
    """A vetted callback URL, pinned to the address that was checked.

    Connecting to the checked address (rather than resolving the name again)
    keeps a DNS answer that changes between check and connect from reaching an
    internal address. The original host still goes in ``Host`` and, for
    https, in the TLS server name, which the certificate is verified against.
    """

    url: httpx.URL
    host_header: str
    extensions: dict[str, Any] = field(default_factory=dict)


#: Resolves a host and port to addresses, or raises :class:`UnreachableTarget`.
Resolve = Callable[[str, int], Awaitable[list[IPAddress]]]


async def vet_callback_url(url: str, *, development: bool, resolve: Resolve) -> CallbackTarget:
    """Resolve ``url``'s host and refuse it unless every address is public.

    Raises :class:`RefusedTarget` for URLs that can never be called and
    :class:`UnreachableTarget` when the name does not resolve now (in time).
    """
    try:
        parsed = httpx.URL(url)
    except httpx.InvalidURL as error:
        raise RefusedTarget(f"malformed callback URL: {error}") from error
    if parsed.scheme not in allowed_schemes(development=development):
        raise RefusedTarget(f"scheme {parsed.scheme!r} is not allowed; callbacks use https")
    host = parsed.raw_host.decode("ascii")
    if not host:
        raise RefusedTarget("callback URL has no host")
    port = parsed.port or (443 if parsed.scheme == "https" else 80)
    addresses = await resolve(host, port)
    for address in addresses:
        reason = refusal_reason(address, development=development)
        if reason is not None:
            raise RefusedTarget(f"{host} resolves to {address}, {described(reason)}")
    return CallbackTarget(
        url=parsed.copy_with(host=str(addresses[0])),
        host_header=parsed.netloc.decode("ascii"),
        extensions={"sni_hostname": host} if parsed.scheme == "https" else {},
    )


def open_http_client(
    settings: NotifierSettings, transport: httpx.AsyncBaseTransport | None = None
) -> httpx.AsyncClient:
    """The client every callback is POSTed with; ``aclose()`` it when done."""
    # httpx logs every request's full URL at INFO, and a callback URL's query
    # may carry the receiver's own token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    return httpx.AsyncClient(
        timeout=httpx.Timeout(settings.total_timeout, connect=settings.connect_timeout),
        follow_redirects=False,
        # A connection kept for every worker: the workers bound how many are open.
        limits=httpx.Limits(max_connections=None, max_keepalive_connections=settings.workers),
        # Proxies from the environment would connect to the name again
        # and bypass the address the SSRF check pinned.
        trust_env=False,
        transport=transport,
        headers={"User-Agent": USER_AGENT},
    )


async def post_callback(
    http: httpx.AsyncClient,
    target: CallbackTarget,
    delivery: ClaimedCallback,
    signature: str,
    *,
    total_timeout: float,
) -> AttemptOutcome:
    """POST the delivery's body to ``target``; the outcome is the receiver's status code."""
    headers = {
        "Host": target.host_header,
        "Content-Type": "application/json",
        EVENT_ID_HEADER: str(delivery.event_id),
        SIGNATURE_HEADER: signature,
    }
    code: int | None = None
    try:
        async with (
            asyncio.timeout(total_timeout),
            http.stream(
                "POST",
                target.url,
                content=delivery.body,
                headers=headers,
                extensions=target.extensions,
            ) as response,
        ):
            code = response.status_code
            await _read_a_short_body(response)
    except TimeoutError:
        if code is None:
            return AttemptOutcome(None, f"no answer within {total_timeout:g} s")
    except httpx.HTTPError as error:
        if code is None:
            return AttemptOutcome(None, f"{type(error).__name__}: {error}".rstrip(": "))
    # The status line is the receiver's answer: a body cut short changes nothing.
    return AttemptOutcome(code, None if 200 <= code < 300 else f"HTTP {code}")


async def _read_a_short_body(response: httpx.Response) -> None:
    """Read the answer's body to its end when it is short, so that its connection can
    carry the next callback; a longer one is left unread and its connection closed, so
    a huge body costs nothing."""
    read = 0
    async for chunk in response.aiter_raw():
        read += len(chunk)
        if read > SHORT_BODY_BYTES:
            return
