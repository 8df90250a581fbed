"""The training engine: one variant, one recipe, one seed -> one `Result`.

No Optuna here (STYLE.md, point 5): `train` reports every epoch through a callback and returns
its results; the study driver decides what to do with them. The callback may raise (to prune a
trial, say); that propagates to the caller after the epoch's checkpoint is on disk.

Speed: the dataset lives on the training device as uint8 tensors (`ablate.data`); a batch is an
index into a permutation, augmented on the device as a whole. On CUDA the model runs in bf16
autocast with channels_last and cuDNN autotuning; on CPU the same code runs in fp32.
"""

from __future__ import annotations

import dataclasses
import math
import time
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ablate.checkpoint import load as load_checkpoint
from ablate.checkpoint import save as save_checkpoint
from ablate.data import AUGMENTATIONS, Split, Splits, augment, batches, load_dataset, normalize
from ablate.limits import BATCH_REASON, EPOCHS_REASON, LR_REASON, MAX_BATCH_SIZE, MAX_EPOCHS, MAX_LR
from ablate.models import build_model, count_params, measure
from ablate.variants import VariantSpec

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
    val_size: int = 0  # examples held out of the training split for validation (He et al.: 5000)
    resize: int | None = None  # train and test at this many pixels a side (upsampled on the device; d2l uses 224)
    compile: bool = False  # torch.compile the model (CUDA; slow to start, fast after)

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
    ints = {"epochs": 1, "batch_size": 2}
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
    if isinstance(r.val_size, bool) or not isinstance(r.val_size, int) or r.val_size < 0:
        _fail("val_size", f"{r.val_size!r} is not valid; use a number of examples >= 0")
    if r.resize is not None and (isinstance(r.resize, bool) or not isinstance(r.resize, int) or not 8 <= r.resize <= 1024):
        _fail("resize", f"{r.resize!r} is not valid; use a side length in pixels from 8 to 1024, or leave it out")
    if r.compile not in (True, False):
        _fail("compile", f"{r.compile!r} is not valid; use true or false")
    _check_bounds(r)


def _check_bounds(r: Recipe) -> None:
    """Upper bounds (ablate.limits), with their reasons, and flags that are booleans, not numbers."""
    if r.epochs > MAX_EPOCHS:
        _fail("epochs", f"{r.epochs} is too many; use at most {MAX_EPOCHS} ({EPOCHS_REASON})")
    if r.batch_size > MAX_BATCH_SIZE:
        _fail("batch_size", f"{r.batch_size} is too large; use at most {MAX_BATCH_SIZE} ({BATCH_REASON})")
    for key in ("lr", "warmup_lr"):
        if getattr(r, key) > MAX_LR:
            _fail(key, f"{getattr(r, key)!r} is too large; use a learning rate of at most {MAX_LR:g} ({LR_REASON})")
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


@dataclass(frozen=True)
class Epoch:
    """One epoch's figures. Errors are fractions in [0, 1]."""

    epoch: int  # 1-based
    train_loss: float  # mean over the epoch's batches
    train_error: float  # running error over the epoch's batches, as the papers plot it
    test_error: float
    val_error: float | None
    lr: float  # at the epoch's last step
    seconds: float  # the whole epoch, evaluation included
    images_per_second: float  # training images / training seconds
    grad_norms: dict[str, float]  # per stage (stem, stage1.., head): mean L2 norm of its gradient


@dataclass(frozen=True)
class Result:
    spec: VariantSpec
    recipe: Recipe
    seed: int
    device: str
    params: int
    macs: int
    history: tuple[Epoch, ...]
    diverged: bool = False
    diverged_epoch: int | None = None  # the epoch in which the loss became NaN or Inf
    reason: str | None = None
    resumed_from: int = 0  # epochs restored from a checkpoint

    @property
    def final(self) -> Epoch | None:
        return self.history[-1] if self.history else None

    @property
    def train_error(self) -> float | None:
        return self.final.train_error if self.final else None

    @property
    def test_error(self) -> float | None:
        return self.final.test_error if self.final else None

    @property
    def images_per_second(self) -> float | None:
        # Epoch 1 pays for cuDNN autotuning and compilation: leave it out when there are more.
        steady = self.history[1:] or self.history
        return sum(e.images_per_second for e in steady) / len(steady) if steady else None


class Diverged(Exception):
    def __init__(self, epoch: int, step: int, loss: float):
        super().__init__(f"loss became {loss} at epoch {epoch}, step {step}")
        self.epoch = epoch


def resolve_device(device: str = "auto") -> torch.device:
    """`auto` picks CUDA when present; asking for CUDA without one is a clear error."""
    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device not in ("cpu", "cuda") and not device.startswith("cuda:"):
        raise ValueError(f"device: {device!r} is not valid; use auto, cpu or cuda")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise ValueError("device: cuda was asked for but no CUDA GPU is visible; use --device cpu or auto")
    return torch.device(device)


@dataclass(frozen=True)
class Precision:
    """How the model runs on a device. CUDA: bf16 autocast (no loss scaling needed) and
    channels_last, which tensor cores want. CPU: fp32, NCHW (bf16 on a CPU is slower, not faster).
    Tests pass the CUDA setting on a CPU, so that path runs where no GPU is."""

    autocast: torch.dtype | None = None
    channels_last: bool = False


def precision_for(device: torch.device) -> Precision:
    return Precision(torch.bfloat16, True) if device.type == "cuda" else Precision()


def _autocast(device: torch.device, precision: Precision):
    return torch.autocast(device.type, dtype=precision.autocast, enabled=precision.autocast is not None)


def _inputs(images: torch.Tensor, info, recipe: Recipe, precision: Precision) -> torch.Tensor:
    """uint8 batch -> normalised float input in the model's layout, resized if the recipe says so."""
    x = normalize(images, info)
    if recipe.resize is not None and recipe.resize != info.size:
        x = F.interpolate(x, size=(recipe.resize, recipe.resize), mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last) if precision.channels_last else x


def input_info(info, recipe: Recipe):
    """The dataset metadata as the network sees it (the resolution after `resize`)."""
    return info if recipe.resize is None else dataclasses.replace(info, size=recipe.resize)


def _evaluate(model: nn.Module, split: Split, info, recipe: Recipe, device: torch.device, precision: Precision,
              batch_size: int = 500) -> float:
    model.eval()
    wrong = torch.zeros((), dtype=torch.int64, device=device)
    with torch.no_grad(), _autocast(device, precision):
        for images, labels in batches(split, batch_size, shuffle=False):
            x = _inputs(images, info, recipe, precision)
            wrong += (model(x).argmax(1) != labels).sum()
    model.train()
    return wrong.item() / len(split.labels)


def load_data(dataset: str, recipe: Recipe, *, device: str | torch.device = "cpu", data_dir=None, download: bool = True) -> Splits:
    """The dataset as a recipe asks for it: its training subset and validation split (seed 0, so
    every variant and seed of a study sees the same examples)."""
    return load_dataset(dataset, data_dir=data_dir, device=device, train_subset=recipe.train_subset,
                        val_size=recipe.val_size, seed=0, download=download)


def check_data(recipe: Recipe, data: Splits) -> None:
    """The recipe's data options must describe the data it is given: no silent mismatch."""
    n_val = 0 if data.val is None else len(data.val)
    if recipe.val_size != n_val:
        raise ValueError(f"val_size: the recipe holds out {recipe.val_size} examples but the data has {n_val}; load it with load_data()")
    if recipe.train_subset is not None and recipe.train_subset != len(data.train):
        raise ValueError(f"train_subset: the recipe asks for {recipe.train_subset} examples but the data has {len(data.train)}; load it with load_data()")


def _fingerprint(spec: VariantSpec, recipe: Recipe, seed: int, data: Splits) -> dict[str, Any]:
    return {
        "spec": repr(spec), "recipe": repr(recipe), "seed": seed, "dataset": data.info.name,
        "train": len(data.train.labels), "val": 0 if data.val is None else len(data.val.labels),
    }


def _rng_states(device: torch.device, gen: torch.Generator) -> dict[str, torch.Tensor]:
    states = {"cpu": torch.get_rng_state(), "data": gen.get_state()}
    if device.type == "cuda":
        states["cuda"] = torch.cuda.get_rng_state(device)
    return states


def _save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Atomically, with a checksum (ablate.checkpoint): a run killed while saving leaves the previous
    checkpoint intact, and damage is found before anything is unpickled."""
    save_checkpoint(path, payload)


def train(
    spec: VariantSpec,
    recipe: Recipe,
    data: Splits,
    *,
    device: str | torch.device = "cpu",
    seed: int = 0,
    callback: Callable[[Epoch], None] | None = None,
    checkpoint: str | Path | None = None,
    precision: Precision | None = None,
    poll: Callable[[], None] | None = None,
) -> Result:
    """Train `spec` on `data` (already on `device`) with `recipe` and `seed`.

    With `checkpoint`, model, optimiser, schedule position, RNG states and history are saved
    atomically after every epoch, and an existing checkpoint of the same run is resumed from,
    to the same result as an uninterrupted run. `precision` defaults to the device's own.
    `poll` is called after every optimisation step and may raise to stop training there (the
    last epoch's checkpoint stays): the driver stops on SIGINT and SIGTERM this way.
    """
    device = device if isinstance(device, torch.device) else resolve_device(device)
    precision = precision or precision_for(device)
    info = data.info
    check_data(recipe, data)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    model = build_model(spec, info).to(device)
    if precision.channels_last:
        model = model.to(memory_format=torch.channels_last)
    params = count_params(model)
    _, macs = measure(spec, input_info(info, recipe))
    stages = {name: [p for p in m.parameters()] for name, m in model.named_children()}
    optimizer = torch.optim.SGD(
        model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
        nesterov=recipe.nesterov, weight_decay=recipe.weight_decay,
    )
    step_model = torch.compile(model) if recipe.compile else model
    # Data order and augmentation draw from their own generator on the data's device.
    gen = torch.Generator(device=data.train.images.device)
    gen.manual_seed(seed)

    n = len(data.train.labels)
    drop_last = n >= recipe.batch_size * 2  # a last batch of 1 would break BatchNorm
    steps_per_epoch = n // recipe.batch_size if drop_last else math.ceil(n / recipe.batch_size)
    total = steps_per_epoch * recipe.epochs
    history: list[Epoch] = []
    start_epoch = 0
    ckpt = Path(checkpoint) if checkpoint is not None else None
    fingerprint = _fingerprint(spec, recipe, seed, data)
    # A checkpoint that cannot be used (damaged, another run's) is discarded with a warning: from scratch.
    state = load_checkpoint(ckpt, fingerprint, model, map_location=device) if ckpt is not None else None
    if state is not None:
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        torch.set_rng_state(state["rng"]["cpu"])
        gen.set_state(state["rng"]["data"])
        if device.type == "cuda" and "cuda" in state["rng"]:
            torch.cuda.set_rng_state(state["rng"]["cuda"], device)
        history = [Epoch(**e) for e in state["history"]]
        start_epoch = state["epoch"]
    resumed_from = start_epoch

    def result(**kw: Any) -> Result:
        return Result(spec=spec, recipe=recipe, seed=seed, device=str(device), params=params, macs=macs,
                      history=tuple(history), resumed_from=resumed_from, **kw)

    model.train()
    for epoch in range(start_epoch + 1, recipe.epochs + 1):
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        wrong = torch.zeros((), dtype=torch.int64, device=device)
        grad_sums = torch.zeros(len(stages), device=device)
        seen = 0
        step = (epoch - 1) * steps_per_epoch
        lr = recipe.lr
        for i, (images, labels) in enumerate(batches(data.train, recipe.batch_size, shuffle=True, generator=gen, drop_last=drop_last)):
            lr = lr_at(recipe, step, total, steps_per_epoch)
            for group in optimizer.param_groups:
                group["lr"] = lr
            if recipe.augment:
                images = augment(images, recipe.augment, generator=gen)
            x = _inputs(images, info, recipe, precision)
            with _autocast(device, precision):
                logits = step_model(x)
                loss = F.cross_entropy(logits.float(), labels, label_smoothing=recipe.label_smoothing)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            grad_sums += torch.stack([
                torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in ps if p.grad is not None])))
                for ps in stages.values()
            ])
            optimizer.step()
            loss_sum += loss.detach()
            wrong += (logits.detach().argmax(1) != labels).sum()
            seen += len(labels)
            step += 1
            if poll is not None:
                poll()
            # A NaN stays NaN in the running sum, so checking every few steps (one device sync)
            # stops a diverged run within a few steps of the divergence.
            if (i % 16 == 15 or device.type == "cpu") and not torch.isfinite(loss_sum):
                return result(diverged=True, diverged_epoch=epoch,
                              reason=f"loss became {loss.item()} at epoch {epoch}, step {step} (lr {lr:.4g})")
        if not torch.isfinite(loss_sum):
            return result(diverged=True, diverged_epoch=epoch, reason=f"loss became {loss_sum.item()} at epoch {epoch} (lr {lr:.4g})")
        train_seconds = time.perf_counter() - t0
        steps = max(1, steps_per_epoch)
        norms = (grad_sums / steps).tolist()
        record = Epoch(
            epoch=epoch,
            train_loss=loss_sum.item() / steps,
            train_error=wrong.item() / max(1, seen),
            test_error=_evaluate(model, data.test, info, recipe, device, precision),
            val_error=_evaluate(model, data.val, info, recipe, device, precision) if data.val is not None else None,
            lr=lr,
            seconds=time.perf_counter() - t0,
            images_per_second=seen / train_seconds,
            grad_norms=dict(zip(stages, norms)),
        )
        history.append(record)
        if ckpt is not None:
            _save_checkpoint(ckpt, {
                "fingerprint": fingerprint, "epoch": epoch, "model": model.state_dict(),
                "optimizer": optimizer.state_dict(), "rng": _rng_states(device, gen),
                "history": [asdict(e) for e in history],
            })
        if callback is not None:
            callback(record)
    return result()
