"""Run the development stack's processes side by side, like a small foreman.

Each child runs in its own process group with stdout and stderr merged into
the supervisor's output, one line at a time behind a name prefix::

    rules    | started on port 8001
    trigger  | started on port 8002

The services log JSON: every line goes, whole, to the child's own file in
``log_dir`` when one is given, and a :class:`~infra.dev.terminal.TerminalView`
picks and rewrites the lines worth showing (a line that is not JSON is shown
as it is).

Built on asyncio subprocesses rather than a thread per child: one event loop
reads every pipe, waits for every exit and handles SIGINT/SIGTERM, so "the
first child that exits" is a plain ``asyncio.wait`` and no locking is needed
around the shared output.
"""

from __future__ import annotations

import asyncio
import contextlib
import signal
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from itertools import cycle
from pathlib import Path
from typing import TextIO

from infra.dev.process_groups import die_with_parent, signal_group
from infra.dev.terminal import LogFile, TerminalView

_COLOURS = ("36", "33", "32", "35", "34", "91", "96", "93")  # ANSI foreground colour codes
_READ_SIZE = 65536
_LONGEST_LINE = 1 << 20  # longer lines are printed in pieces rather than buffered forever
_DRAIN_SECONDS = 1.0
_POLL_SECONDS = 0.05
#: How long a child started with ``restart`` stays down before it is started again.
RESTART_DELAY_SECONDS = 1.0


@dataclass(frozen=True)
class ChildExit:
    """A child process that has exited, and its status (negative: killed by that signal)."""

    name: str
    returncode: int

    def describe(self) -> str:
        if self.returncode < 0:
            return f"{self.name} was killed by {signal.Signals(-self.returncode).name}"
        return f"{self.name} exited with code {self.returncode}"


@dataclass
class _Child:
    name: str
    command: _Command
    prefix: str
    log_path: Path | None
    restart: bool
    """Started again whenever it exits, until the supervisor stops or removes it."""
    removed: bool = False
    """Stopped on purpose by :meth:`Supervisor.remove`: its exit is not a failure."""
    process: asyncio.subprocess.Process = field(init=False)
    log_file: LogFile | None = field(init=False, default=None)
    exited: asyncio.Task[ChildExit] = field(init=False)
    released: bool = False
    """Exited and its process group emptied: never signal that group id again."""


@dataclass(frozen=True)
class _Command:
    argv: list[str]
    env: dict[str, str]
    cwd: Path | None


class Supervisor:
    """Starts named children, merges their output, and stops them all together."""

    def __init__(
        self,
        output: TextIO | None = None,
        *,
        colour: bool | None = None,
        name_width: int = 8,
        log_dir: Path | None = None,
        view: TerminalView | None = None,
        on_change: Callable[[], object] | None = None,
    ) -> None:
        """``on_change`` is called each time a child is started again, added or removed
        once the stack runs (the process ids changed)."""
        self._output = output if output is not None else sys.stdout
        self._colour = self._output.isatty() if colour is None else colour
        self._name_width = name_width
        self._log_dir = log_dir
        self._view = view if view is not None else TerminalView(colour=self._colour)
        self._colours = cycle(_COLOURS)
        self._prefixes: dict[str, str] = {}
        self._children: dict[str, _Child] = {}
        self._summaries: asyncio.Task[None] | None = None
        self._on_change = on_change
        self._stopping = False
        self._membership = asyncio.Event()
        """Set when a child is added or removed, so :meth:`wait_any` watches the new set."""

    @property
    def pids(self) -> dict[str, int]:
        """The process id (and process group id) of every child started so far."""
        return {name: child.process.pid for name, child in self._children.items()}

    async def add(
        self,
        name: str,
        argv: list[str],
        env: dict[str, str],
        *,
        cwd: Path | None = None,
        restart: bool = False,
    ) -> None:
        """Start ``argv`` as child ``name``; ``env`` is its whole environment.

        ``PYTHONUNBUFFERED=1`` is added unless ``env`` sets it, so that Python
        children print each line as it happens rather than when a buffer fills.
        With ``restart``, the child is started again whenever it exits (after
        :data:`RESTART_DELAY_SECONDS`), as an orchestrator restarts a replica, and its
        exits never end :meth:`wait_any`.
        """
        if name in self._children:
            raise ValueError(f"a child named {name!r} was already added")
        log_path = self._log_dir / f"{name}.log" if self._log_dir else None
        child = _Child(name, _Command(argv, env, cwd), self._prefix(name), log_path, restart)
        await self._spawn(child)
        child.exited = asyncio.create_task(self._watch(child), name=f"supervise-{name}")
        self._children[name] = child
        self._membership.set()
        if self._summaries is None:
            self._summaries = asyncio.create_task(self._show_summaries(), name="summaries")

    async def _spawn(self, child: _Child) -> None:
        command = child.command
        child.process = await asyncio.create_subprocess_exec(
            *command.argv,
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.STDOUT,
            env={"PYTHONUNBUFFERED": "1", **command.env},
            cwd=command.cwd,
            process_group=0,
            preexec_fn=die_with_parent(),
        )
        child.log_file = LogFile(child.log_path) if child.log_path else None
        child.released = False

    async def wait_any(self) -> ChildExit:
        """Wait until any child exits (returns at once if one already has); a child
        stopped by :meth:`remove` does not count."""
        if not self._children:
            raise RuntimeError("no child was added")
        while True:
            watchers = [child.exited for child in self._children.values() if not child.removed]
            changed = asyncio.create_task(self._membership.wait())
            try:
                done, _ = await asyncio.wait(
                    [*watchers, changed], return_when=asyncio.FIRST_COMPLETED
                )
            finally:
                changed.cancel()
            exits = [task.result() for task in watchers if task in done]
            if exits:
                return exits[0]
            self._membership.clear()  # a child was added or removed: watch the new set

    async def remove(self, name: str, timeout: float = 10.0) -> ChildExit:
        """Stop child ``name`` (SIGTERM, then SIGKILL after ``timeout``) and forget it, as
        an operator scales a service down; its exit ends no :meth:`wait_any`."""
        child = self._children[name]
        child.removed, child.restart = True, False
        self._membership.set()
        if not child.released:
            signal_group(child.process.pid, signal.SIGTERM)
        done, _ = await asyncio.wait([child.exited], timeout=timeout)
        if not done and not child.released:
            signal_group(child.process.pid, signal.SIGKILL)
        ended = await child.exited
        child.released = True
        del self._children[name]
        self._changed()
        return ended

    def _changed(self) -> None:
        if self._on_change is not None:
            self._on_change()

    # The timeout is a grace period before SIGKILL, not a cancellation.
    async def stop(self, timeout: float = 10.0) -> list[ChildExit]:
        """SIGTERM every child's group, SIGKILL what is left after ``timeout``; safe to repeat.

        Returns how each child ended, in the order they were added.
        """
        self._stopping = True
        self._signal_groups(signal.SIGTERM)
        await asyncio.wait([child.exited for child in self._children.values()], timeout=timeout)
        self.kill()
        exits = [await child.exited for child in self._children.values()]
        for child in self._children.values():
            child.released = True
        if self._summaries is not None:
            self._summaries.cancel()
        self._write_summaries(everything=True)
        return exits

    def kill(self) -> None:
        """SIGKILL every child's process group, including anything they spawned."""
        self._signal_groups(signal.SIGKILL)

    def _signal_groups(self, sig: signal.Signals) -> None:
        for child in self._children.values():
            if not child.released:
                signal_group(child.process.pid, sig)

    def announce(self, name: str, text: str) -> None:
        """Print a line of the supervisor's own under ``name``'s prefix."""
        self._write(self._prefix(name), text)

    def _prefix(self, name: str) -> str:
        if name not in self._prefixes:
            label = f"{name.ljust(self._name_width)} | "
            colour = next(self._colours)
            self._prefixes[name] = f"\x1b[{colour}m{label}\x1b[0m" if self._colour else label
        return self._prefixes[name]

    async def _watch(self, child: _Child) -> ChildExit:
        while True:
            returncode = await self._run(child)
            if not child.restart or self._stopping:
                return ChildExit(child.name, returncode)
            child.released = True
            self.announce(child.name, f"{ChildExit(child.name, returncode).describe()}; restarting")
            await asyncio.sleep(RESTART_DELAY_SECONDS)
            if self._stopping:
                return ChildExit(child.name, returncode)
            await self._spawn(child)
            self._changed()

    async def _run(self, child: _Child) -> int:
        """Show the output of ``child``'s process until it exits; its exit status."""
        pump = asyncio.create_task(self._pump(child))
        returncode = await _exit_status(child.process)
        # Print what the child wrote just before exiting, without waiting on a
        # grandchild that may still hold the pipe open.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(_DRAIN_SECONDS):
                await asyncio.shield(pump)
        return returncode

    async def _pump(self, child: _Child) -> None:
        # This process's pipe and log file: a restarted child has new ones.
        stream, log_file = child.process.stdout, child.log_file
        assert stream is not None
        pending = b""
        try:
            while chunk := await stream.read(_READ_SIZE):
                *lines, pending = (pending + chunk).split(b"\n")
                if len(pending) > _LONGEST_LINE:
                    lines.append(pending)
                    pending = b""
                for line in lines:
                    self._take(child, log_file, _decode(line))
                if log_file is not None:
                    log_file.flush()
            if pending:
                self._take(child, log_file, _decode(pending))
        finally:
            if log_file is not None:
                log_file.close()

    def _take(self, child: _Child, log_file: LogFile | None, line: str) -> None:
        """File ``line`` in the child's log and show what the terminal view makes of it."""
        if log_file is not None:
            log_file.write(line)
        for text in self._view.lines(child.name, line):
            self._write(child.prefix, text)

    async def _show_summaries(self) -> None:
        while True:
            await asyncio.sleep(self._view.every)
            self._write_summaries()

    def _write_summaries(self, *, everything: bool = False) -> None:
        for name, text in self._view.due(everything=everything):
            self._write(self._prefix(name), text)

    def _write(self, prefix: str, text: str) -> None:
        self._output.write(f"{prefix}{text}\n")
        self._output.flush()


async def _exit_status(process: asyncio.subprocess.Process) -> int:
    """The exit status, as soon as the process has exited.

    ``Process.wait()`` also waits until the output pipe is closed, which a
    grandchild that inherited it can put off for ever.
    """
    while process.returncode is None:  # noqa: ASYNC110 - asyncio offers no exit-only event
        await asyncio.sleep(_POLL_SECONDS)
    return process.returncode


def _decode(line: bytes) -> str:
    return line.decode("utf-8", errors="replace").rstrip("\r")


async def run_until_signal(
    supervisor: Supervisor, *, stop_timeout: float = 10.0
) -> ChildExit | None:
    """Wait until a child exits or SIGINT/SIGTERM arrives, then stop every child.

    Returns the child that exited first, or ``None`` when a signal asked for
    the stop. A second signal while stopping SIGKILLs the children at once.
    """
    loop = asyncio.get_running_loop()
    stop_requested = asyncio.Event()

    def on_signal(sig: signal.Signals) -> None:
        if stop_requested.is_set():
            supervisor.announce("supervisor", f"received {sig.name} again; killing")
            supervisor.kill()
            return
        supervisor.announce("supervisor", f"received {sig.name}; stopping")
        stop_requested.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, on_signal, sig)
    try:
        first_exit = await _first_exit_or(stop_requested, supervisor)
        if first_exit is not None:
            supervisor.announce("supervisor", f"{first_exit.describe()}; stopping")
        return first_exit
    finally:
        # The handlers stay in place while stopping, so a second Ctrl-C kills.
        await supervisor.stop(stop_timeout)
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.remove_signal_handler(sig)


async def _first_exit_or(stop_requested: asyncio.Event, supervisor: Supervisor) -> ChildExit | None:
    """The first child exit, or ``None`` if ``stop_requested`` is set before any."""
    child_exit = asyncio.create_task(supervisor.wait_any())
    stop = asyncio.create_task(stop_requested.wait())
    try:
        done, _ = await asyncio.wait([child_exit, stop], return_when=asyncio.FIRST_COMPLETED)
    finally:
        child_exit.cancel()
        stop.cancel()
    return child_exit.result() if child_exit in done else None
