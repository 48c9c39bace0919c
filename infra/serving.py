"""Running a service process: :func:`serve` starts its :class:`~infra.runtime.ServiceRuntime`
and serves its HTTP app under uvicorn until SIGINT/SIGTERM.

Every service's ``app`` module has the :data:`AppFactory` ``create_app(settings=None)``,
so ``serve(create_app)`` runs any of them. The app's lifespan starts and stops the
runtime too, for ``uvicorn --factory services.<name>.app:asgi_app`` (each ``app``
module has ``asgi_app = app_only(create_app)``); ``serve`` turns
that lifespan off and starts the runtime itself, to exit 2 with one clear line when a
dependency is out of reach.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import socket
import sys
from collections.abc import Callable, Generator

import uvicorn
import uvloop
from fastapi import FastAPI
from pydantic import ValidationError

from infra.errors import StartupError
from infra.logging import configure_logging, get_logger
from infra.runtime import ServiceRuntime

log = get_logger(__name__)

#: A service's ``create_app``: its HTTP app and the runtime that app serves.
AppFactory = Callable[[], tuple[FastAPI, ServiceRuntime]]


def app_only(create_app: AppFactory) -> Callable[[], FastAPI]:
    """``create_app`` as ``uvicorn --factory`` calls it: the app alone, whose lifespan
    starts and stops the runtime."""

    def build() -> FastAPI:
        app, _ = create_app()
        return app

    return build


def serve(build: AppFactory) -> None:
    """Build a service and run it until SIGINT/SIGTERM.

    Bad settings and unreachable dependencies exit 2 with one clear line
    instead of a traceback.
    """
    try:
        app, runtime = build()
    except ValidationError as error:
        problems = "; ".join(
            f"{'.'.join(str(part) for part in item['loc']) or 'settings'}: {item['msg']}"
            for item in error.errors()
        )
        print(f"invalid settings: {problems}", file=sys.stderr)
        sys.exit(2)
    settings = runtime.settings
    configure_logging(settings.service_name, settings.log_level, settings.log_json)
    # uvloop's event loop (and uvicorn's httptools parser, picked when installed)
    # roughly halve the per-request cost of the asyncio and HTTP plumbing.
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        sys.exit(runner.run(_serve(app, runtime)))


async def _serve(app: FastAPI, runtime: ServiceRuntime) -> int:
    settings = runtime.settings
    try:
        await runtime.start()
    except StartupError as error:
        log.error("service.start_failed", reason=str(error))
        await _stop_quietly(runtime)
        return 2
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        lifespan="off",  # the runtime started above; the app's lifespan would start it again
        # On SIGINT/SIGTERM uvicorn stops accepting at once and lets requests in progress
        # finish, for this long; the runtime then drains its consumers and relay.
        timeout_graceful_shutdown=max(int(settings.shutdown_grace_seconds), 1),
    )
    server = _DrainingServer(config)
    # Everything built so far (the app, its routes and models, the contracts) lives as
    # long as the process: move it out of the collector's reach, so the full
    # collections that happen under load scan only what requests create, which
    # shortens the pauses that set the gateway's tail latency.
    gc.collect()
    gc.freeze()
    ready = asyncio.create_task(runtime.log_when_ready(), name="log-when-ready")
    try:
        sockets = (
            [_shared_socket(settings.host, settings.port)] if settings.http_reuse_port else None
        )
        await server.serve(sockets=sockets)
    except OSError as error:  # the shared port is held by a process that does not share it
        log.error("service.bind_failed", port=settings.port, reason=str(error))
        return 2
    finally:
        ready.cancel()
        await runtime.stop()
    return 0 if server.started else 2


def _shared_socket(host: str, port: int) -> socket.socket:
    """A listening socket on ``host:port`` that other processes may bind too.

    With SO_REUSEPORT on every replica's socket, Linux accepts each new connection on
    one of them, spreading a service's clients over its replicas the way a load
    balancer in front of them would.
    """
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    shared = socket.socket(family, socket.SOCK_STREAM)
    shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    shared.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
    shared.bind((host, port))
    return shared


class _DrainingServer(uvicorn.Server):
    """uvicorn's server, except that the stop signal is not raised again once it has
    stopped serving.

    uvicorn restores the previous signal handlers and raises the signal it caught, so
    that a program that embeds it stops as the signal asked. For SIGTERM that means the
    process dies right there, before the runtime has drained its consumers and relay:
    every stop would be a crash. The runtime's stop is what the signal asked for.
    """

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        with super().capture_signals():
            yield
            self._captured_signals.clear()


async def _stop_quietly(runtime: ServiceRuntime) -> None:
    try:
        await runtime.stop()
    except Exception as error:  # already failing; say so and go on
        log.warning("service.stop_failed", error=str(error))
