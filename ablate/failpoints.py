"""Failpoints: named moments at which a test can kill this process exactly there.

The pattern of etcd's gofail and FoundationDB's simulation: the code names its delicate moments
(half a checkpoint written, a trial recorded but its checkpoint not yet removed, a report written
but not yet in place), and a test asks the process to stop at one. With `ABLATE_FAILPOINT=name`
(or `name:N`, the N-th time) the process sends itself SIGSTOP when it gets there, and the test
harness SIGKILLs it while it is stopped: a real kill of a real process, at a moment a timer could
not hit. Without the variable, `reach` returns at once and nothing changes.
"""

from __future__ import annotations

import os
import signal

ENV = "ABLATE_FAILPOINT"
POINTS = ("checkpoint-write", "trial-complete", "report-write")

_spec = os.environ.get(ENV, "")
_point, _, _nth = _spec.partition(":")
_count = 0


def reach(name: str) -> None:
    """Mark the moment `name` (one of POINTS); stops this process there if a test asked for it."""
    global _count
    if name != _point:
        return
    _count += 1
    if _count == int(_nth or 1):
        os.kill(os.getpid(), signal.SIGSTOP)
