"""The training recipe: what a study file's [train] table says, validated, and the learning-rate
schedule as a pure function of the step.

Nothing here imports torch, so a study file is read and checked (`ablate run` on a bad file,
`ablate --help`) without it; `ablate.train` runs the recipe and re-exports these names.
"""

from __future__ import annotations

import math
import dataclasses
from dataclasses import dataclass, fields
from typing import Any

from ablate.spec.catalog import AUGMENTATIONS
from ablate.spec.limits import (BATCH_REASON, EPOCHS_REASON, GAMMA_REASON, LR_REASON, MAX_BATCH_SIZE, MAX_EPOCHS, MAX_GAMMA, MAX_LR,
                                MAX_POINTS_PER_EPOCH, MAX_WEIGHT_DECAY, POINTS_REASON, WEIGHT_DECAY_REASON, shown)

SCHEDULES = ("constant", "step", "cosine", "onecycle")
WARMUPS = ("linear", "constant")
PRECISIONS = ("auto", "bf16", "fp32")
#: Recipe keys that decide which examples a seed's batches hold and how they are augmented: two
#: runs with the same seed and equal values here saw the same batches (what a paired test needs).
DATA_ORDER_KEYS = ("batch_size", "augment", "train_subset", "val_size")
#: Keys that say the same thing in two units; a recipe gives at most one of each pair.
ALTERNATIVES = (("epochs", "iterations"), ("milestones", "milestone_iterations"), ("warmup_epochs", "warmup_iterations"))


@dataclass(frozen=True)
class Recipe:
    """How one variant is trained. Units in comments; defaults follow He et al. 2016, Sec. 4.2."""

    epochs: int | None = 2  # passes over the training data; or give `iterations` instead
    iterations: int | None = None  # optimizer steps in all (He et al. 2016: 64k on CIFAR-10); the last epoch may be partial
    batch_size: int = 128
    lr: float = 0.1  # peak learning rate
    momentum: float = 0.9
    nesterov: bool = False
    weight_decay: float = 1e-4  # L2, applied by SGD to every parameter as in the paper
    schedule: str = "step"  # constant | step | cosine | onecycle
    milestones: tuple[float, ...] = (0.5, 0.75)  # step: fractions of training where lr *= gamma
    milestone_iterations: tuple[int, ...] | None = None  # step: or the optimizer steps where lr *= gamma (32000, 48000)
    gamma: float = 0.1  # step: the factor at each milestone
    warmup_epochs: float = 0.0  # warm-up from warmup_lr to lr over this many epochs
    warmup_iterations: int | None = None  # or over this many optimizer steps (He et al.: 400)
    warmup: str = "linear"  # linear: ramp from warmup_lr to lr; constant: warmup_lr, then lr (He et al. 2016, 2016b)
    warmup_lr: float = 0.01  # He et al. warm ResNet-110 up at 0.01
    label_smoothing: float = 0.0
    augment: tuple[str, ...] = ("crop", "flip")  # on the device, whole batches
    train_subset: int | None = None  # class-balanced subset of the training split (data option)
    test_subset: int | None = None  # class-balanced subset of the test split, evaluated every epoch (all when None)
    val_size: int = 0  # examples held out of the training split for validation (He et al.: 5000)
    resize: int | None = None  # train and test at this many pixels a side (upsampled on the device; d2l uses 224)
    compile: bool = False  # torch.compile the model (CUDA; slow to start, fast after)
    precision: str = "auto"  # auto: bf16 autocast on CUDA, fp32 on a CPU; bf16; fp32 (as the papers trained; no TF32)
    points_per_epoch: int = 10  # training loss and error recorded at this many evenly spaced steps of each epoch

    def __post_init__(self) -> None:
        check_recipe(self)


def _fail(key: str, message: str) -> None:
    raise ValueError(f"{key}: {message}")


def check_recipe(r: Recipe) -> None:
    """Every key against what it may be; a ValueError naming the key and the fix otherwise."""
    for f in fields(Recipe):
        value = getattr(r, f.name)
        if f.name in ("milestones", "milestone_iterations", "augment") and isinstance(value, list):
            object.__setattr__(r, f.name, tuple(value))
    if (r.epochs is None) == (r.iterations is None):
        _fail("epochs", "give the length of training once: epochs = N (passes over the data) or iterations = N (optimizer steps)")
    ints = {"epochs": 1, "iterations": 1, "batch_size": 2, "points_per_epoch": 1}
    for key, low in ints.items():
        v = getattr(r, key)
        if v is None and key in ("epochs", "iterations"):
            continue
        if isinstance(v, bool) or not isinstance(v, int) or v < low:
            _fail(key, f"{shown(v)} is not valid; use an integer >= {low}")
    for key in ("lr", "momentum", "weight_decay", "gamma", "warmup_epochs", "warmup_lr", "label_smoothing"):
        v = getattr(r, key)
        # An integer is finite however long (math.isfinite would overflow on it); its size is bounded below.
        if isinstance(v, bool) or not isinstance(v, (int, float)) or isinstance(v, float) and not math.isfinite(v) or v < 0:
            _fail(key, f"{shown(v)} is not valid; use a finite number >= 0")
    if r.lr <= 0:
        _fail("lr", f"{shown(r.lr)} is not valid; use a learning rate > 0, e.g. 0.1")
    if r.momentum >= 1:
        _fail("momentum", f"{shown(r.momentum)} is not valid; use a value in [0, 1), e.g. 0.9")
    if r.label_smoothing >= 1:
        _fail("label_smoothing", f"{shown(r.label_smoothing)} is not valid; use a value in [0, 1), e.g. 0.1")
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
    if r.milestone_iterations is not None:
        m = r.milestone_iterations
        if not isinstance(m, tuple) or not all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in m) or list(m) != sorted(set(m)):
            _fail("milestone_iterations", f"{list(m) if isinstance(m, tuple) else m!r} is not valid; use increasing optimizer steps, e.g. [32000, 48000]")
        if r.milestones:
            _fail("milestones", "give the step schedule's milestones once: milestones (fractions of training) or milestone_iterations (optimizer steps)")
        if r.iterations is not None and m and m[-1] >= r.iterations:
            _fail("milestone_iterations", f"{m[-1]} is not before the end of training ({r.iterations} iterations)")
    if r.warmup_iterations is not None:
        w = r.warmup_iterations
        if isinstance(w, bool) or not isinstance(w, int) or w < 0:
            _fail("warmup_iterations", f"{w!r} is not valid; use a number of optimizer steps >= 0, e.g. 400")
        if r.warmup_epochs:
            _fail("warmup_epochs", "give the warm-up once: warmup_epochs or warmup_iterations")
        if r.iterations is not None and w >= r.iterations:
            _fail("warmup_iterations", f"{w} is not shorter than training ({r.iterations} iterations)")
    if r.warmup not in WARMUPS:
        _fail("warmup", f"{r.warmup!r} is not valid; use one of {', '.join(WARMUPS)}")
    if r.precision not in PRECISIONS:
        _fail("precision", f"{r.precision!r} is not valid; use one of {', '.join(PRECISIONS)}")
    if r.epochs is not None and r.warmup_epochs > r.epochs:
        _fail("warmup_epochs", f"{shown(r.warmup_epochs)} is longer than training ({r.epochs} epochs)")
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
    _check_bounds(r)


#: Optimizer steps: as many as MAX_EPOCHS epochs of CIFAR-10 at batch 128 (He et al.: 64k).
MAX_ITERATIONS = MAX_EPOCHS * 391


def _check_bounds(r: Recipe) -> None:
    """Upper bounds (ablate.limits), with their reasons, and flags that are booleans, not numbers."""
    if r.epochs is not None and r.epochs > MAX_EPOCHS:
        _fail("epochs", f"{shown(r.epochs)} is too many; use at most {MAX_EPOCHS} ({EPOCHS_REASON})")
    if r.iterations is not None and r.iterations > MAX_ITERATIONS:
        _fail("iterations", f"{shown(r.iterations)} is too many; use at most {MAX_ITERATIONS} ({EPOCHS_REASON}; He et al. train 64k iterations)")
    if r.warmup_iterations is not None and r.warmup_iterations > MAX_ITERATIONS:
        _fail("warmup_iterations", f"{shown(r.warmup_iterations)} is too many; use at most {MAX_ITERATIONS} ({EPOCHS_REASON})")
    if r.milestone_iterations and max(r.milestone_iterations) > MAX_ITERATIONS:
        _fail("milestone_iterations", f"{shown(max(r.milestone_iterations))} is too late; use steps of at most {MAX_ITERATIONS} ({EPOCHS_REASON})")
    if r.warmup_epochs > MAX_EPOCHS:  # with iterations given, not bounded by the epochs
        _fail("warmup_epochs", f"{shown(r.warmup_epochs)} is too many; use at most {MAX_EPOCHS} ({EPOCHS_REASON})")
    if r.batch_size > MAX_BATCH_SIZE:
        _fail("batch_size", f"{shown(r.batch_size)} is too large; use at most {MAX_BATCH_SIZE} ({BATCH_REASON})")
    for key in ("lr", "warmup_lr"):
        if getattr(r, key) > MAX_LR:
            _fail(key, f"{shown(getattr(r, key))} is too large; use a learning rate of at most {MAX_LR:g} ({LR_REASON})")
    if r.weight_decay > MAX_WEIGHT_DECAY:
        _fail("weight_decay", f"{shown(r.weight_decay)} is too large; use at most {MAX_WEIGHT_DECAY:g} ({WEIGHT_DECAY_REASON})")
    if r.gamma > MAX_GAMMA:
        _fail("gamma", f"{shown(r.gamma)} is too large; use at most {MAX_GAMMA:g} ({GAMMA_REASON})")
    if r.points_per_epoch > MAX_POINTS_PER_EPOCH:
        _fail("points_per_epoch", f"{shown(r.points_per_epoch)} is too many; use at most {MAX_POINTS_PER_EPOCH} ({POINTS_REASON})")
    for key in ("nesterov", "compile"):
        if not isinstance(getattr(r, key), bool):
            _fail(key, f"{getattr(r, key)!r} is not valid; use true or false")
    if r.train_subset is not None and r.train_subset < r.batch_size:
        _fail("train_subset", f"{r.train_subset} examples is less than one batch ({r.batch_size}); use at least batch_size examples")


def make_recipe(table: dict[str, Any]) -> Recipe:
    """A recipe from a study file's [train] table; unknown keys are an error naming the valid ones."""
    valid = [f.name for f in fields(Recipe)]
    for key in table:
        if key not in valid:
            _fail(key, f"unknown recipe key; valid keys: {', '.join(valid)}")
    table = dict(table)
    for first, second in ALTERNATIVES:
        if first in table and second in table:
            _fail(second, f"give {first} or {second}, not both: they say the same thing in two units")
        if second in table:  # the other spelling: clear the default of the first
            table[first] = None if first == "epochs" else () if first == "milestones" else 0.0
    try:
        return Recipe(**table)
    except TypeError as exc:  # e.g. a comparison between a string and a number
        raise ValueError(f"recipe: {exc}") from None


def steps_per_epoch(batch_size: int, train_size: int) -> tuple[int, bool]:
    """Optimizer steps in one pass over `train_size` examples, and whether the last partial
    batch is dropped (it is, when there are two or more full batches: a batch of 1 breaks BatchNorm)."""
    drop_last = train_size >= batch_size * 2
    return (train_size // batch_size if drop_last else math.ceil(train_size / batch_size)), drop_last


@dataclass(frozen=True)
class Schedule:
    """A recipe resolved against the number of training examples: everything in optimizer steps."""

    train_size: int  # images trained on (after the subset and the validation hold-out)
    steps_per_epoch: int
    drop_last: bool
    iterations: int  # optimizer steps in all
    epochs: int  # passes over the data (the last may be partial when `iterations` was given)
    milestones: tuple[int, ...]  # step schedule: the first step at each lower rate
    warmup_iterations: int
    warmup_lr: float
    warmup: str

    def describe(self, recipe: Recipe) -> dict[str, Any]:
        """The resolved recipe as `ablate variants --json` shows it."""
        return {
            "train_size": self.train_size, "batch_size": recipe.batch_size, "steps_per_epoch": self.steps_per_epoch,
            "iterations": self.iterations, "epochs": self.epochs, "schedule": recipe.schedule, "lr": recipe.lr,
            "milestones": list(self.milestones) if recipe.schedule == "step" else [], "gamma": recipe.gamma,
            "warmup": self.warmup, "warmup_iterations": self.warmup_iterations, "warmup_lr": self.warmup_lr,
            "momentum": recipe.momentum, "weight_decay": recipe.weight_decay, "precision": recipe.precision,
            "augment": list(recipe.augment),
        }


def train_size(recipe: Recipe, info) -> int:
    """How many images a recipe trains on for a dataset: its subset, else the split less the hold-out."""
    return recipe.train_subset if recipe.train_subset is not None else info.train_size - recipe.val_size


def schedule(recipe: Recipe, n_train: int) -> Schedule:
    spe, drop_last = steps_per_epoch(recipe.batch_size, n_train)
    spe = max(1, spe)
    total = recipe.iterations if recipe.iterations is not None else spe * recipe.epochs
    epochs = math.ceil(total / spe)
    if recipe.milestone_iterations is not None:
        milestones = tuple(recipe.milestone_iterations)
    else:  # fractions: the first step whose fraction of training done reaches the milestone
        milestones = tuple(math.ceil(m * total) for m in recipe.milestones)
    warmup = recipe.warmup_iterations if recipe.warmup_iterations is not None else round(recipe.warmup_epochs * spe)
    return Schedule(n_train, spe, drop_last, total, epochs, milestones, min(warmup, total), recipe.warmup_lr, recipe.warmup)


def lr_at(r: Recipe, step: int, sched: Schedule) -> float:
    """The learning rate of optimisation step `step` (0-based): a pure function of the step, so a
    resumed run needs only the step count to continue the schedule exactly."""
    total, warmup = sched.iterations, sched.warmup_iterations
    if step < warmup:
        if sched.warmup == "constant":  # He et al. 2016: 0.01 until training error is below 80%, ~400 iterations
            return r.warmup_lr
        return r.warmup_lr + (r.lr - r.warmup_lr) * step / warmup
    t = step / total  # fraction of training done
    if r.schedule == "constant":
        return r.lr
    if r.schedule == "step":
        return r.lr * r.gamma ** sum(step >= m for m in sched.milestones)
    if r.schedule == "cosine":
        t = (step - warmup) / max(1, total - warmup)
        return 0.5 * r.lr * (1 + math.cos(math.pi * t))
    # onecycle, as torch's OneCycleLR: cosine up from lr/25 over 30% of training, then down to lr/25e4.
    rise = 0.3
    start, end = r.lr / 25, r.lr / 25e4
    if t < rise:
        return start + (r.lr - start) * (1 - math.cos(math.pi * t / rise)) / 2
    return end + (r.lr - end) * (1 + math.cos(math.pi * (t - rise) / (1 - rise))) / 2


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    """A Recipe as stored (`recipe` attributes): a dict, tuples as lists."""
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(recipe).items()}


def input_info(info: Any, recipe: Recipe) -> Any:
    """The dataset metadata as the network sees it: the resolution after the recipe's `resize`."""
    import dataclasses

    return info if recipe.resize is None else dataclasses.replace(info, size=recipe.resize)
