"""Resolving a callback host within a time limit.

The system resolver (``getaddrinfo``) blocks a thread and cannot be cancelled:
an attempt gives up on it after ``dns_timeout_seconds``, but the thread runs
on until the resolver itself gives up. The lookup therefore keeps a slot of
the organisation that asked until its thread returns (``on_orphaned``), so an
organisation whose names never resolve holds at most its share of lookups,
and the threads are a pool of the notifier's own, apart from the event loop's.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import socket
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: ``socket.getaddrinfo``'s shape; tests stand in a resolver that never answers.
GetAddrInfo = Callable[..., list[tuple[Any, ...]]]


class UnreachableTarget(Exception):
    """A callback host that cannot be resolved now; the attempt fails and is retried."""


class BoundedResolver:
    """``getaddrinfo`` in threads of its own, awaited for at most ``timeout`` seconds."""

    def __init__(
        self, timeout: float, threads: int, getaddrinfo: GetAddrInfo = socket.getaddrinfo
    ) -> None:
        self._timeout = timeout
        self._getaddrinfo = getaddrinfo
        self._threads = ThreadPoolExecutor(threads, thread_name_prefix="notifier-dns")

    async def resolve(
        self, host: str, port: int, *, on_orphaned: Callable[[], Callable[[], None]]
    ) -> list[IPAddress]:
        """The addresses of ``host``; raises :class:`UnreachableTarget` when it has none
        or no answer comes in time. When the lookup is abandoned, ``on_orphaned()`` is
        called and the function it returns is called once the lookup's thread is done."""
        if "%" not in host:
            try:
                return [ipaddress.ip_address(host)]  # an address needs no lookup
            except ValueError:
                pass  # a name
        loop = asyncio.get_running_loop()
        lookup = loop.run_in_executor(
            self._threads,
            functools.partial(self._getaddrinfo, host, port, type=socket.SOCK_STREAM),
        )
        try:
            async with asyncio.timeout(self._timeout):
                infos = await asyncio.shield(lookup)
        except TimeoutError:
            release = on_orphaned()
            lookup.add_done_callback(lambda done: _forget(done, release))
            raise UnreachableTarget(
                f"no DNS answer for {host} within {self._timeout:g} s"
            ) from None
        except (socket.gaierror, UnicodeError) as error:
            raise UnreachableTarget(f"cannot resolve {host}: {error}") from error
        except asyncio.CancelledError:  # the notifier is stopping
            lookup.add_done_callback(lambda done: _forget(done, lambda: None))
            raise
        # An IPv6 link-local answer may carry a zone ("fe80::1%eth0"); the zone
        # does not change what kind of address it is.
        addresses = [ipaddress.ip_address(str(info[4][0]).split("%", 1)[0]) for info in infos]
        if not addresses:
            raise UnreachableTarget(f"{host} has no addresses")
        return addresses

    def close(self) -> None:
        """Stop taking lookups; threads still blocked in the resolver finish on their own."""
        self._threads.shutdown(wait=False, cancel_futures=True)


def _forget(lookup: asyncio.Future[Any], release: Callable[[], None]) -> None:
    if not lookup.cancelled():
        lookup.exception()  # retrieved, so asyncio does not report it as never retrieved
    release()
