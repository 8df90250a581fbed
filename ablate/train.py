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
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ablate.checkpoint import load as load_checkpoint
from ablate.checkpoint import save as save_checkpoint
from ablate.data import Split, Splits, augment, batches, load_dataset, normalize
from ablate.models import build_model, count_params, measure
from ablate.recipe import (  # noqa: F401 (re-exported)
    ALTERNATIVES, DATA_ORDER_KEYS, PRECISIONS, SCHEDULES, WARMUPS, Recipe, Schedule, check_recipe, lr_at, make_recipe,
    schedule, steps_per_epoch, train_size,
)
from ablate.variants import VariantSpec


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
    # Training loss and error at `Recipe.points_per_epoch` evenly spaced steps of the epoch, for
    # curves against iterations (He et al. 2016, Figure 6): {"iteration": optimisation steps done
    # since the start of training, "train_loss", "train_error": means over the steps since the
    # previous point}. The last point closes the epoch.
    points: tuple[dict[str, float], ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "points", tuple(self.points))  # a list when read back from a checkpoint


def point_steps(steps_per_epoch: int, points_per_epoch: int) -> list[int]:
    """The steps of an epoch (1-based) that close a point: evenly spaced, the last one last."""
    n = min(points_per_epoch, steps_per_epoch)
    return [math.ceil(k * steps_per_epoch / n) for k in range(1, n + 1)]


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
    channels_last, which tensor cores want. CPU: fp32 (bf16 on a CPU is slower, not faster) and
    channels_last too: oneDNN's convolutions ran the quick study's nets 1.3-1.5x faster in it
    than in NCHW on a 2-core CPU (docs/benchmarks.md). Tests pass the CUDA setting on a CPU, so
    that path runs where no GPU is."""

    autocast: torch.dtype | None = None
    channels_last: bool = False


def precision_for(device: torch.device, setting: str = "auto") -> Precision:
    """A recipe's `precision` on a device: auto is bf16 on CUDA and fp32 on a CPU. channels_last
    everywhere (it is a layout): tensor cores want it, and oneDNN ran the quick study's nets
    1.3-1.5x faster in it than in NCHW on a 2-core CPU (docs/benchmarks.md)."""
    bf16 = setting == "bf16" or (setting == "auto" and device.type == "cuda")
    return Precision(torch.bfloat16 if bf16 else None, True)


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
    """The dataset as a recipe asks for it: its training subset, validation split and test subset
    (seed 0, so every variant and seed of a study sees the same examples)."""
    return load_dataset(dataset, data_dir=data_dir, device=device, train_subset=recipe.train_subset,
                        val_size=recipe.val_size, seed=0, download=download, test_subset=recipe.test_subset)


def check_data(recipe: Recipe, data: Splits) -> None:
    """The recipe's data options must describe the data it is given: no silent mismatch."""
    n_val = 0 if data.val is None else len(data.val)
    if recipe.val_size != n_val:
        raise ValueError(f"val_size: the recipe holds out {recipe.val_size} examples but the data has {n_val}; load it with load_data()")
    if recipe.train_subset is not None and recipe.train_subset != len(data.train):
        raise ValueError(f"train_subset: the recipe asks for {recipe.train_subset} examples but the data has {len(data.train)}; load it with load_data()")
    if recipe.test_subset is not None and recipe.test_subset != len(data.test):
        raise ValueError(f"test_subset: the recipe asks for {recipe.test_subset} test examples but the data has {len(data.test)}; load it with load_data()")


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


def _points(marks: list[tuple[int, int, torch.Tensor, torch.Tensor]]) -> tuple[dict[str, float], ...]:
    """Per interval between consecutive marks (iteration, images seen, running loss and error sums):
    the iteration at its end and its mean loss and error."""
    sums = torch.stack([torch.stack([loss, wrong.to(loss.dtype)]) for _, _, loss, wrong in marks]).tolist()
    return tuple(
        {"iteration": it, "train_loss": (loss - loss0) / (it - it0), "train_error": (wrong - wrong0) / (seen - seen0)}
        for (it0, seen0, _, _), (it, seen, _, _), (loss0, wrong0), (loss, wrong) in zip(marks, marks[1:], sums, sums[1:])
    )


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
    precision = precision or precision_for(device, recipe.precision)
    info = data.info
    check_data(recipe, data)
    torch.manual_seed(seed)
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        # fp32 means fp32: cuDNN would otherwise run convolutions in TF32 (10-bit mantissa).
        torch.backends.cudnn.allow_tf32 = precision.autocast is not None
        torch.backends.cuda.matmul.allow_tf32 = False
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
    sched = schedule(recipe, n)
    drop_last, total, spe = sched.drop_last, sched.iterations, sched.steps_per_epoch
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
    for epoch in range(start_epoch + 1, sched.epochs + 1):
        t0 = time.perf_counter()
        loss_sum = torch.zeros((), device=device)
        wrong = torch.zeros((), dtype=torch.int64, device=device)
        grad_sums = torch.zeros(len(stages), device=device)
        seen = 0
        step = (epoch - 1) * spe
        lr = recipe.lr
        closes = set(point_steps(spe, recipe.points_per_epoch))
        marks: list[tuple[int, int, torch.Tensor, torch.Tensor]] = [(step, 0, loss_sum.clone(), wrong.clone())]
        for i, (images, labels) in enumerate(batches(data.train, recipe.batch_size, shuffle=True, generator=gen, drop_last=drop_last)):
            if step >= total:  # `iterations` ends training inside this epoch
                break
            lr = lr_at(recipe, step, sched)
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
            if i + 1 in closes:  # copies of the running sums: no device sync until the epoch ends
                marks.append((step, seen, loss_sum.clone(), wrong.clone()))
            if poll is not None:
                poll()
            # A NaN stays NaN in the running sum, so checking every few steps (one device sync)
            # stops a diverged run within a few steps of the divergence.
            if (i % 16 == 15 or device.type == "cpu") and not torch.isfinite(loss_sum):
                return result(diverged=True, diverged_epoch=epoch,
                              reason=f"loss became {loss.item()} at epoch {epoch}, step {step} (lr {lr:.4g})")
        if not torch.isfinite(loss_sum):
            return result(diverged=True, diverged_epoch=epoch, reason=f"loss became {loss_sum.item()} at epoch {epoch} (lr {lr:.4g})")
        if marks[-1][0] != step:  # a partial last epoch: close its last interval
            marks.append((step, seen, loss_sum.clone(), wrong.clone()))
        train_seconds = time.perf_counter() - t0
        steps = max(1, step - (epoch - 1) * spe)
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
            points=_points(marks),
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
