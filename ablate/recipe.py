"""The training recipe: what a study file's [train] table says, validated, and the learning-rate
schedule as a pure function of the step.

Nothing here imports torch, so a study file is read and checked (`ablate run` on a bad file,
`ablate --help`) without it; `ablate.train` runs the recipe and re-exports these names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, fields
from typing import Any

from ablate.catalog import AUGMENTATIONS

SCHEDULES = ("constant", "step", "cosine", "onecycle")


@dataclass(frozen=True)
class Recipe:
    """How one variant is trained. Units in comments; defaults follow He et al. 2016, Sec. 4.2."""

    epochs: int = 2
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4  # L2, applied by SGD to every parameter as in the paper
    schedule: str = "step"  # constant | step | cosine | onecycle
    milestones: tuple[float, ...] = (0.5, 0.75)  # step: fractions of training where lr *= gamma
    gamma: float = 0.1  # step: the factor at each milestone
    warmup_epochs: float = 0.0  # linear warm-up from warmup_lr to lr over this many epochs
    warmup_lr: float = 0.01  # He et al. warm ResNet-110 up at 0.01
    label_smoothing: float = 0.0
    augment: tuple[str, ...] = ("crop", "flip")  # on the device, whole batches
    train_subset: int | None = None  # class-balanced subset of the training split (data option)
    test_subset: int | None = None  # class-balanced subset of the test split, evaluated every epoch (all when None)
    val_size: int = 0  # examples held out of the training split for validation (He et al.: 5000)
    resize: int | None = None  # train and test at this many pixels a side (upsampled on the device; d2l uses 224)
    compile: bool = False  # torch.compile the model (CUDA; slow to start, fast after)
    points_per_epoch: int = 10  # training loss and error recorded at this many evenly spaced steps of each epoch

    def __post_init__(self) -> None:
        check_recipe(self)


def _fail(key: str, message: str) -> None:
    raise ValueError(f"{key}: {message}")


def check_recipe(r: Recipe) -> None:
    """Every key against what it may be; a ValueError naming the key and the fix otherwise."""
    for f in fields(Recipe):
        value = getattr(r, f.name)
        if f.name in ("milestones", "augment") and isinstance(value, list):
            object.__setattr__(r, f.name, tuple(value))
    ints = {"epochs": 1, "batch_size": 2, "points_per_epoch": 1}
    for key, low in ints.items():
        v = getattr(r, key)
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            _fail(key, f"{v!r} is not valid; use an integer >= {low}")
    for key in ("lr", "momentum", "weight_decay", "gamma", "warmup_epochs", "warmup_lr", "label_smoothing"):
        v = getattr(r, key)
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v) or v < 0:
            _fail(key, f"{v!r} is not valid; use a finite number >= 0")
    if r.lr <= 0:
        _fail("lr", f"{r.lr!r} is not valid; use a learning rate > 0, e.g. 0.1")
    if r.momentum >= 1:
        _fail("momentum", f"{r.momentum!r} is not valid; use a value in [0, 1), e.g. 0.9")
    if r.label_smoothing >= 1:
        _fail("label_smoothing", f"{r.label_smoothing!r} is not valid; use a value in [0, 1), e.g. 0.1")
    if r.nesterov not in (True, False):
        _fail("nesterov", f"{r.nesterov!r} is not valid; use true or false")
    if r.nesterov and r.momentum == 0:
        _fail("nesterov", "Nesterov momentum needs momentum > 0")
    if r.schedule not in SCHEDULES:
        _fail("schedule", f"{r.schedule!r} is not valid; use one of {', '.join(SCHEDULES)}")
    if not all(isinstance(m, (int, float)) and not isinstance(m, bool) and 0 < m < 1 for m in r.milestones) or list(
        r.milestones
    ) != sorted(r.milestones):
        _fail("milestones", f"{list(r.milestones)!r} is not valid; use increasing fractions of training in (0, 1), e.g. [0.5, 0.75]")
    if r.warmup_epochs > r.epochs:
        _fail("warmup_epochs", f"{r.warmup_epochs} is longer than training ({r.epochs} epochs)")
    if isinstance(r.augment, str) or not isinstance(r.augment, tuple):
        _fail("augment", f"{r.augment!r} is not valid; use a list such as [\"crop\", \"flip\"] (or [])")
    for a in r.augment:
        if a not in AUGMENTATIONS:
            _fail("augment", f"{a!r} is not valid; use a list of {', '.join(AUGMENTATIONS)} (or [])")
    if r.train_subset is not None and (isinstance(r.train_subset, bool) or not isinstance(r.train_subset, int) or r.train_subset < 1):
        _fail("train_subset", f"{r.train_subset!r} is not valid; use a positive number of examples, or leave it out for all")
    if r.test_subset is not None and (isinstance(r.test_subset, bool) or not isinstance(r.test_subset, int) or r.test_subset < 1):
        _fail("test_subset", f"{r.test_subset!r} is not valid; use a positive number of examples, or leave it out for all")
    if isinstance(r.val_size, bool) or not isinstance(r.val_size, int) or r.val_size < 0:
        _fail("val_size", f"{r.val_size!r} is not valid; use a number of examples >= 0")
    if r.resize is not None and (isinstance(r.resize, bool) or not isinstance(r.resize, int) or not 8 <= r.resize <= 1024):
        _fail("resize", f"{r.resize!r} is not valid; use a side length in pixels from 8 to 1024, or leave it out")
    if r.compile not in (True, False):
        _fail("compile", f"{r.compile!r} is not valid; use true or false")


def make_recipe(table: dict[str, Any]) -> Recipe:
    """A recipe from a study file's [train] table; unknown keys are an error naming the valid ones."""
    valid = [f.name for f in fields(Recipe)]
    for key in table:
        if key not in valid:
            _fail(key, f"unknown recipe key; valid keys: {', '.join(valid)}")
    try:
        return Recipe(**table)
    except TypeError as exc:  # e.g. a comparison between a string and a number
        raise ValueError(f"recipe: {exc}") from None


def lr_at(r: Recipe, step: int, total: int, steps_per_epoch: int) -> float:
    """The learning rate of optimisation step `step` (0-based) of `total`: a pure function, so a
    resumed run needs only the step count to continue the schedule exactly."""
    warmup = round(r.warmup_epochs * steps_per_epoch)
    if step < warmup:
        return r.warmup_lr + (r.lr - r.warmup_lr) * step / warmup
    t = step / total  # fraction of training done
    if r.schedule == "constant":
        return r.lr
    if r.schedule == "step":
        return r.lr * r.gamma ** sum(t >= m for m in r.milestones)
    if r.schedule == "cosine":
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * r.lr * (1 + math.cos(math.pi * t))
    # onecycle, as torch's OneCycleLR: cosine up from lr/25 over 30% of training, then down to lr/25e4.
    rise = 0.3
    start, end = r.lr / 25, r.lr / 25e4
    if t < rise:
        return start + (r.lr - start) * (1 - math.cos(math.pi * t / rise)) / 2
    return end + (r.lr - end) * (1 + math.cos(math.pi * (t - rise) / (1 - rise))) / 2
