"""Failpoints: named moments at which a test can kill this process exactly there.

The pattern of etcd's gofail and FoundationDB's simulation: the code names its delicate moments
(half a checkpoint written, a trial recorded but its checkpoint not yet removed, a report written
but not yet in place, a unit's claim holding the database lock, a final run's diagnostics computed
but not yet stored), and a test asks the process to stop at one. With `ABLATE_FAILPOINT=name`
(or `name:N`, the N-th time; several separated by commas) the process sends itself SIGSTOP when it gets there, and the test
harness SIGKILLs it while it is stopped: a real kill of a real process, at a moment a timer could
not hit. `storage-open` (just before a worker opens its storage) and `plan` (a worker has planned and is
about to claim) serve as starting gates: a test stops every worker there and continues them all
at once. Without the variable, `reach` returns
at once and nothing changes.
"""

from __future__ import annotations

import os
import signal

ENV = "ABLATE_FAILPOINT"
POINTS = ("checkpoint-write", "trial-complete", "report-write", "storage-open", "plan", "claim", "diagnostics")



def _parse(spec: str) -> dict[str, int]:
    """"name" or "name:N", several separated by commas: point -> the time it stops there. A name
    that is not one of POINTS is an error at once: a misspelt failpoint would never fire, and the
    test that set it would pass without testing anything."""
    out = {}
    for part in filter(None, spec.split(",")):
        name, _, nth = part.partition(":")
        if name not in POINTS:
            raise ValueError(f"{ENV}: {name!r} is not a failpoint; use one of {', '.join(POINTS)}")
        out[name] = int(nth or 1)
    return out


_points = _parse(os.environ.get(ENV, ""))
_counts: dict[str, int] = {}


def reach(name: str) -> None:
    """Mark the moment `name` (one of POINTS); stops this process there if a test asked for it."""
    assert name in POINTS, f"failpoint {name!r} is not in POINTS"
    if name not in _points:
        return
    _counts[name] = _counts.get(name, 0) + 1
    if _counts[name] == _points[name]:
        os.kill(os.getpid(), signal.SIGSTOP)
