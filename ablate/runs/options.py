"""How a run is carried out, as `ablate run`'s options set it: defaults and checks, defined once
for the command line and the runner alike. Imports nothing heavy (the CLI's help reads it)."""

from __future__ import annotations

from typing import Any

__all__ = ["OptionError", "GRACE_SECONDS", "MIN_GRACE_SECONDS", "CPU_FUSE", "GPU_FUSE", "parse_fuse", "check_grace", "fuse_size"]

GRACE_SECONDS = 30  #: a RUNNING trial whose heartbeat is older than this is stale (its process died)
MIN_GRACE_SECONDS = 2  #: the heartbeat beats every grace/3 seconds, at least once a second

#: Fused runs per group on a CPU, by MACs per image (docs/benchmarks.md, "Fused runs"): pairs for
#: nets as small as the quick study's (width 8, 28 px: 2-24M MACs), where a micro-benchmark
#: showed pairs ahead; ResNet-20 at 32 px (41M) fused 4 ways measured slower than one run after
#: another on a busy 2-core CPU, so larger nets are not fused. Provisional: no quiet machine yet.
CPU_FUSE = ((30e6, 2),)
#: On a GPU one small net leaves most of it idle (issue 12: ResNet-20 wants K = 8); not measured yet.
GPU_FUSE = ((50e6, 8), (500e6, 4))

_FUSE_WORDS = ("auto", "off")


class OptionError(ValueError):
    """An option of `ablate run` that cannot be used; the message names it and what is valid."""


def parse_fuse(value: Any) -> int | str:
    """--fuse: auto, off, or a number of runs >= 1 (1 is off); ValueError with one line otherwise."""
    text = value.strip().lower() if isinstance(value, str) else value
    if text in _FUSE_WORDS:
        return text
    runs = 0
    if isinstance(text, str):
        try:
            runs = int(text)
        except ValueError:
            runs = 0
    elif isinstance(text, int) and not isinstance(text, bool):
        runs = text
    if runs < 1:
        raise OptionError(f"--fuse: {value!r} is not valid; use auto, off or a number of runs >= 1 (1 is off)")
    return runs


def check_grace(grace: int) -> int:
    if grace < MIN_GRACE_SECONDS:
        raise OptionError(f"--grace-period: {grace} is too short; use at least {MIN_GRACE_SECONDS} seconds "
                         f"(default {GRACE_SECONDS})")
    return grace


def fuse_size(fuse: int | str, macs: int, device_type: str) -> int:
    """How many runs to fuse: `fuse` itself, 1 for off, or for auto a size by the model's MACs
    per image and the device (`CPU_FUSE`, `GPU_FUSE`)."""
    if fuse == "off":
        return 1
    if fuse != "auto":
        return int(fuse)
    table = GPU_FUSE if device_type == "cuda" else CPU_FUSE
    return next((k for limit, k in table if macs <= limit), 1)
