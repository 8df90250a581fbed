"""Stopping `ablate run` at a safe point: SIGINT (Ctrl-C), SIGTERM (`timeout`, Slurm preemption,
Kubernetes), or a checkpoint that cannot be written.

`Stop` is a KeyboardInterrupt, so Optuna records the running trial as FAIL the moment it leaves
the objective and then re-raises it; the driver marks that trial first (`failure_kind`
"interrupted" or "storage"), so that the next run of any worker retries it at once from its
checkpoint, without waiting for a heartbeat to go stale.

While a trial trains (`deferred()`), a signal is only noted; the training loop calls `check()`
after every step and between trials, and the stop happens there, never in the middle of a
checkpoint write or a storage update. Outside (loading data, waiting for other workers), and for
a second signal, it happens at once.
"""

from __future__ import annotations

import contextlib
import signal
from collections.abc import Iterator

SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Stop(KeyboardInterrupt):
    """Stop the run: `reason` for the stored trial and the message, `kind` a failure kind
    (ablate.outcomes), `code` the exit status."""

    def __init__(self, reason: str, kind: str, code: int):
        super().__init__(reason)
        self.reason, self.kind, self.code = reason, kind, code


def signalled(signum: int) -> Stop:
    from ablate.storage.outcomes import INTERRUPTED

    return Stop(f"interrupted by {signal.Signals(signum).name}", INTERRUPTED, 128 + signum)


_pending: Stop | None = None
_deferring = 0


def _on_signal(signum: int, frame: object) -> None:
    global _pending
    if _deferring and _pending is None:
        _pending = signalled(signum)
        return
    _pending = None
    raise signalled(signum)


def check() -> None:
    """Raise the Stop of a signal noted since the last check (a safe point)."""
    global _pending
    if _pending is not None:
        stop, _pending = _pending, None
        raise stop


@contextlib.contextmanager
def deferred() -> Iterator[None]:
    """Signals inside are noted, and raised by the next `check()` (or at once if a second comes)."""
    global _deferring
    _deferring += 1
    try:
        yield
    finally:
        _deferring -= 1


@contextlib.contextmanager
def handled() -> Iterator[None]:
    """SIGINT and SIGTERM become `Stop` while inside (main thread only); the old handlers come back after."""
    global _pending
    old = {s: signal.getsignal(s) for s in SIGNALS}
    _pending = None
    for s in SIGNALS:
        signal.signal(s, _on_signal)
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        _pending = None
