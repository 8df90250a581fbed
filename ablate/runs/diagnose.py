"""A final run's diagnostics (ablate.engine.diagnostics) as part of its unit.

The initialisation measurements run when the unit starts, before training; the lesion and the
landscape after training, from the final weights in the unit's checkpoint (written after the last
epoch, removed only once the trial is stored). All of it is stored as the trial's `diagnostics`
attribute together with the settings it was computed with. A run killed during the diagnostics
leaves its trial RUNNING without them; the unit is claimed again, its checkpoint says training is
done (no epoch is trained twice) and the diagnostics run again, from the same seed, to the same
numbers.

Only final runs get them: search trials and sampled architectures are many, and the "why" is
asked of the networks the report compares. A measurement that fails (out of memory, say) is
recorded as `error` in the attribute and never fails the trial: the training it measured is good.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import torch

from ablate import failpoints
from ablate.engine import diagnostics as D
from ablate.engine.checkpoint import read
from ablate.engine.data import Splits
from ablate.spec.diagnostics import Diagnostics
from ablate.spec.recipe import Recipe
from ablate.spec.variants import VariantSpec

__all__ = ["initial", "final"]

log = logging.getLogger("ablate")


def _error(stage: str, exc: Exception) -> str:
    return f"{stage}: " + " ".join(f"{type(exc).__name__}: {exc}".split())[:500]


def initial(settings: Diagnostics, spec: VariantSpec, recipe: Recipe, data: Splits, seed: int,
            device: torch.device) -> dict[str, Any] | None:
    """The attribute's first part, before training (None when no diagnostics are asked for)."""
    if not settings.any:
        return None
    out: dict[str, Any] = {"settings": settings.describe()}
    if settings.init:
        try:
            out["init"] = D.at_init(spec, recipe, data, seed, settings, device)
        except Exception as exc:  # noqa: BLE001 (recorded; the run trains all the same)
            out["error"] = _error("at initialisation", exc)
            log.warning("diagnostics of %s seed %d %s", spec.name, seed, out["error"])
    return out


def final(before: dict[str, Any] | None, settings: Diagnostics, spec: VariantSpec, recipe: Recipe, data: Splits,
          seed: int, device: torch.device, checkpoint: Path) -> dict[str, Any] | None:
    """The whole attribute after training: `before` with the lesion and the landscape added."""
    if before is None:
        return None
    out = dict(before)
    if settings.after_training:
        try:
            weights = read(checkpoint, map_location=device)["model"]
            out.update(D.after_training(spec, recipe, data, seed, weights, settings, device))
        except Exception as exc:  # noqa: BLE001 (recorded; the run's results stand)
            out["error"] = "; ".join(filter(None, [out.get("error"), _error("after training", exc)]))
            log.warning("diagnostics of %s seed %d %s", spec.name, seed, out["error"])
    failpoints.reach("diagnostics")  # computed, not yet stored: a kill here must resume them
    return out
