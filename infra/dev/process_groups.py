"""Child processes that live in their own process group and die with their parent.

Every child of the development stack gets its own process group, so a signal
reaches the child and anything it spawned, and a Ctrl-C in the terminal reaches
only the supervisor, which then stops the children in order.
"""

from __future__ import annotations

import ctypes
import os
import signal
import sys
from collections.abc import Callable

_PR_SET_PDEATHSIG = 1  # from <linux/prctl.h>

# Looked up before any fork: the code that runs in the child between fork and
# exec must not import or load anything.
_prctl = ctypes.CDLL(None, use_errno=True).prctl if sys.platform == "linux" else None


def die_with_parent(sig: signal.Signals = signal.SIGTERM) -> Callable[[], None] | None:
    """A ``preexec_fn`` asking Linux to send ``sig`` to the child when its parent dies.

    This covers the case no handler can: the parent being SIGKILLed. Linux ties
    the signal to the *thread* that forked, so start children from a thread
    that outlives them (the main thread or the event loop's thread). Elsewhere
    than on Linux there is nothing to set and ``None`` is returned.
    """
    if _prctl is None:
        return None
    prctl = _prctl
    parent_pid = os.getpid()

    def set_parent_death_signal() -> None:
        prctl(_PR_SET_PDEATHSIG, int(sig), 0, 0, 0)
        # The parent may have died between fork and prctl; then nobody will
        # send the signal, so send it now.
        if os.getppid() != parent_pid:
            os.kill(os.getpid(), sig)

    return set_parent_death_signal


def signal_group(pgid: int, sig: signal.Signals) -> bool:
    """Send ``sig`` to process group ``pgid``; ``False`` when the group is already empty."""
    try:
        os.killpg(pgid, sig)
    except ProcessLookupError:
        return False
    return True
