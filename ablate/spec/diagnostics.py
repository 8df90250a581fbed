"""The `[diagnostics]` table: which "why" measurements each final run gets (ablate.engine.diagnostics).

    [diagnostics]
    init = true        # at initialisation: per-layer gradient norms, signal propagation, shattered gradients
    lesion = true      # after training: the block lesion (Veit et al. 2016)
    landscape = "1d"   # none | 1d | 2d: loss along filter-normalised directions (Li et al. 2018), and the
                       # interpolation from the initial to the final weights (Goodfellow et al. 2015)
    images = 64        # examples each measurement uses

Not part of the study's stored definition: the diagnostics measure a trained network and change
nothing that is trained, so changing them never makes "a different study". Each final run stores
the settings its diagnostics were computed with, beside them.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ablate.spec.limits import DIAGNOSTIC_IMAGES_REASON, MAX_DIAGNOSTIC_IMAGES, shown

LANDSCAPES = ("none", "1d", "2d")
#: Examples each measurement uses by default, sized on the quick study (docs/benchmarks.md,
#: "Diagnostics"): its wall time may grow by at most 15%, and its final runs train on 2,048 images
#: for 3 epochs, so every pass over the probe images counts. 64 still tells a lesion's
#: chance-level error from a residual net's few points (a standard error of about 6 points a seed,
#: averaged over seeds). A GPU study can afford 512 or more (`images = 512`).
DEFAULT_IMAGES = 64
MIN_IMAGES = 8  # a line of 8 inputs still has lags 1..4; fewer says nothing


class DiagnosticsError(ValueError):
    """A bad [diagnostics] table; the message names the key and the fix."""


@dataclass(frozen=True)
class Diagnostics:
    init: bool = True
    lesion: bool = True
    landscape: str = "1d"
    images: int = DEFAULT_IMAGES

    def __post_init__(self) -> None:
        for key in ("init", "lesion"):
            if not isinstance(getattr(self, key), bool):
                raise DiagnosticsError(f"diagnostics.{key}: expected true or false, got {getattr(self, key)!r}")
        if self.landscape not in LANDSCAPES:
            raise DiagnosticsError(f"diagnostics.landscape: {self.landscape!r} is not valid; use one of {', '.join(LANDSCAPES)}")
        n = self.images
        if isinstance(n, bool) or not isinstance(n, int) or n < MIN_IMAGES:
            raise DiagnosticsError(f"diagnostics.images: expected an integer >= {MIN_IMAGES} (examples each measurement uses), "
                                   f"got {shown(n)}")
        if n > MAX_DIAGNOSTIC_IMAGES:
            raise DiagnosticsError(f"diagnostics.images: {shown(n)} is too many; use at most {MAX_DIAGNOSTIC_IMAGES} "
                                   f"({DIAGNOSTIC_IMAGES_REASON})")

    @property
    def after_training(self) -> bool:
        return self.lesion or self.landscape != "none"

    @property
    def any(self) -> bool:
        return self.init or self.after_training

    def describe(self) -> dict[str, Any]:
        return {"init": self.init, "lesion": self.lesion, "landscape": self.landscape, "images": self.images}


def parse_diagnostics(table: Any) -> Diagnostics:
    """A [diagnostics] table (None: the defaults); DiagnosticsError naming the key otherwise."""
    if table is None:
        return Diagnostics()
    if not isinstance(table, dict):
        raise DiagnosticsError(f"diagnostics: expected a table [diagnostics], got {table!r}")
    for key in table:
        if key not in ("init", "lesion", "landscape", "images"):
            raise DiagnosticsError(f"diagnostics.{key}: unknown key; [diagnostics] has init, lesion, landscape and images")
    return Diagnostics(**table)
