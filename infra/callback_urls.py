"""Checking a URL the platform will post callbacks to before it is accepted (SSRF):
a trigger's ``callbackUrl``, or the URL a client registers for ``points.expired``.

A callback is a POST the platform makes from inside its network to an address
a third party chose, so the gateway refuses, at once and with the reason,
URLs that are not https (outside development) and hosts that are, or resolve
to, addresses that are not on the public internet: loopback, private,
link-local (where cloud metadata services answer), multicast, reserved and
unspecified ones. The notifier checks the address again when it sends, since
a name can resolve differently later.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
from collections.abc import Awaitable, Callable
from urllib.parse import urlsplit

from infra.addresses import Address, allowed_schemes, described, refusal_reason
from infra.problems import Problem

#: Looks up a host name; returns its addresses as strings.
Resolver = Callable[[str], Awaitable[list[str]]]


class InvalidCallbackUrl(Problem):
    code = "INVALID_CALLBACK_URL"


class CallbackHostUnresolved(Problem):
    """The host's name could not be looked up in time: the caller may retry."""

    status = 503
    code = "CALLBACK_HOST_UNRESOLVED"


async def resolve_with_system(host: str) -> list[str]:
    infos = await asyncio.get_running_loop().getaddrinfo(host, None, type=socket.SOCK_STREAM)
    return [str(info[4][0]) for info in infos]


def _literal(host: str) -> Address | None:
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        return None


async def check_callback_url(
    url: str,
    *,
    development: bool,
    timeout: float,
    resolve: Resolver = resolve_with_system,
    field: str = "callbackUrl",
) -> None:
    """Raise :class:`InvalidCallbackUrl` naming why ``url`` (the request's ``field``) may not
    receive callbacks.

    In development, http and loopback targets (``localhost``, ``127.0.0.1``)
    are allowed so callbacks reach a receiver on the same machine.
    """
    try:
        parts = urlsplit(url)
        host = parts.hostname
        parts.port  # noqa: B018 - parsing the port is what validates it
    except ValueError as error:
        raise InvalidCallbackUrl(f"{field} is not a valid URL: {error}") from error
    if parts.scheme not in allowed_schemes(development=development):
        raise InvalidCallbackUrl(f"{field} must use https")
    if not host:
        raise InvalidCallbackUrl(f"{field} has no host")
    literal = _literal(host)
    if literal is not None:
        addresses = [literal]
    else:
        _check_host_name(host, field)
        addresses = await _resolved(host, timeout, resolve, field)
    for address in addresses:
        reason = refusal_reason(address, development=development)
        if reason is None:
            continue
        named = f"{host} is" if literal is not None else f"{host} resolves to {address}, which is"
        raise InvalidCallbackUrl(f"{field} host {named} {described(reason)}")


def _check_host_name(host: str, field: str) -> None:
    """Refuse a name DNS cannot carry: one IDNA refuses (an empty label, a zero-width
    space), which the resolver would otherwise raise on as a ``UnicodeError``."""
    try:
        host.encode("idna")
    except UnicodeError as error:
        raise InvalidCallbackUrl(
            f"{field} host {host!r} is not a valid host name ({error})"
        ) from error


async def _resolved(host: str, timeout: float, resolve: Resolver, field: str) -> list[Address]:
    try:
        async with asyncio.timeout(timeout):
            found = await resolve(host)
    except TimeoutError as error:
        raise CallbackHostUnresolved(
            f"{field} host {host} could not be resolved within {timeout:g} s; retry later",
            headers={"Retry-After": "5"},
        ) from error
    except OSError as error:
        raise InvalidCallbackUrl(f"{field} host {host} does not resolve") from error
    addresses = [address for address in map(_literal, found) if address is not None]
    if not addresses:
        raise InvalidCallbackUrl(f"{field} host {host} does not resolve")
    return addresses
