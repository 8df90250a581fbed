"""The training engine: one variant, one recipe, one seed -> one `Result`.

No Optuna here (STYLE.md, point 5): `train` reports every epoch through a callback and returns
its results; the study driver decides what to do with them. The callback may raise (to prune a
trial, say); that propagates to the caller after the epoch's checkpoint is on disk.

Speed: the dataset lives on the training device as uint8 tensors (`ablate.data`); a batch is an
index into a permutation, augmented on the device as a whole. On CUDA the model runs in bf16
autocast with channels_last and cuDNN autotuning; on CPU the same code runs in fp32.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Callable

import torch
import torch.nn.functional as F
from torch import nn

from ablate.engine.checkpoint import load as load_checkpoint
from ablate.engine.checkpoint import save as save_checkpoint
from ablate.spec.owndata import OwnData
from ablate.engine.data import Split, Splits, augment, batches, load_dataset, normalize
from ablate.engine.models import build_model, count_params, fuse_states, measure, split_state
from ablate.spec.recipe import (  # noqa: F401 (re-exported)
    ALTERNATIVES, DATA_ORDER_KEYS, PRECISIONS, SCHEDULES, WARMUPS, Recipe, Schedule, check_recipe, lr_at, make_recipe,
    input_info, schedule, steps_per_epoch, train_size,
)
from ablate.spec.variants import VariantSpec


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


def _inputs(images: torch.Tensor | list[torch.Tensor], info, recipe: Recipe, precision: Precision) -> torch.Tensor:
    """uint8 batch -> normalised float input in the model's layout, resized if the recipe says so.
    A list (one batch per fused run) is stacked along the channel axis, run k in slice k."""
    if isinstance(images, torch.Tensor):
        x = normalize(images, info)
    else:
        x = torch.cat([normalize(im, info) for im in images], 1) if len(images) > 1 else normalize(images[0], info)
    if recipe.resize is not None and recipe.resize != info.size:
        x = F.interpolate(x, size=(recipe.resize, recipe.resize), mode="bilinear", align_corners=False)
    return x.contiguous(memory_format=torch.channels_last) if precision.channels_last else x


def _evaluate(model: nn.Module, split: Split, info, recipe: Recipe, device: torch.device, precision: Precision,
              batch_size: int = 500, runs: int = 1) -> list[float]:
    """Each run's error on `split` (one per fused run; every run sees the same images)."""
    model.eval()
    wrong = torch.zeros(runs, dtype=torch.int64, device=device)
    with torch.no_grad(), _autocast(device, precision):
        for images, labels in batches(split, batch_size, shuffle=False):
            x = _inputs([images] * runs, info, recipe, precision)
            wrong += (model(x).view(len(labels), runs, -1).argmax(2) != labels[:, None]).sum(0)
    model.train()
    return [w / len(split.labels) for w in wrong.tolist()]


def load_data(dataset: str | OwnData, recipe: Recipe, *, device: str | torch.device = "cpu", data_dir=None, download: bool = True) -> Splits:
    """The dataset as a recipe asks for it: its training subset, validation split and test subset
    (seed 0, so every variant and seed of a study sees the same examples)."""
    return load_dataset(dataset, data_dir=data_dir, device=device, train_subset=recipe.train_subset,
                        val_size=recipe.val_size, seed=0, download=download, test_subset=recipe.test_subset,
                        resize=recipe.resize)


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
    (outcome,) = train_runs(spec, recipe, data, seeds=[seed], device=device, callbacks=[callback],
                            checkpoints=[checkpoint], precision=precision, poll=poll)
    if isinstance(outcome, Exception):  # the callback's
        raise outcome
    return outcome


@dataclass
class _Run:
    """One run of a (fused) group: everything it owns besides its slice of the network."""

    seed: int
    callback: Callable[[Epoch], None] | None
    checkpoint: Path | None
    fingerprint: dict[str, Any]
    gen: torch.Generator  # data order and augmentation
    cpu_rng: torch.Tensor  # the global generator's state after the run's initialisation
    model: dict[str, torch.Tensor]  # its state dict, as `build_model(spec, info)` has it
    optimizer: dict[str, Any] | None  # restored from its checkpoint
    history: list[Epoch]
    start_epoch: int
    outcome: Result | Exception | None = None  # set when the run ends


def train_runs(
    spec: VariantSpec,
    recipe: Recipe,
    data: Splits,
    *,
    seeds: list[int],
    device: str | torch.device = "cpu",
    callbacks: list[Callable[[Epoch], None] | None] | None = None,
    checkpoints: list[str | Path | None] | None = None,
    precision: Precision | None = None,
    poll: Callable[[], None] | None = None,
) -> list[Result | Exception]:
    """Train one run of `spec` per seed, all at once, as one horizontally fused network
    (`build_model(..., runs=len(seeds))`); `train` is this with one seed.

    Each run is what `train` with its seed, callback and checkpoint would give (up to
    floating-point rounding): its own initialisation, data order and augmentation, drawn from
    its own seed; its batch stacked along the channel axis; the loss the sum of the runs'
    losses, whose parameters are disjoint, so each run's SGD step is its own. Its checkpoint is
    the one `train` writes, so a run resumes fused or alone. Runs whose checkpoints stopped at
    different epochs are trained as one group per epoch reached, one group after the other.

    A run that diverges is masked out (its slice of the network and of the momentum zeroed, its
    loss left out) and ends with a diverged `Result`; the others go on. A callback's exception
    ends its own run and is that run's outcome. Returns one outcome per seed, in order.
    """
    device = device if isinstance(device, torch.device) else resolve_device(device)
    precision = precision or precision_for(device, recipe.precision)
    info = data.info
    check_data(recipe, data)
    if not seeds:
        raise ValueError("seeds: give at least one seed")
    callbacks = list(callbacks) if callbacks is not None else [None] * len(seeds)
    checkpoints = list(checkpoints) if checkpoints is not None else [None] * len(seeds)
    if not len(seeds) == len(callbacks) == len(checkpoints):
        raise ValueError("train_runs: give one callback and one checkpoint (or None) per seed")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        # fp32 means fp32: cuDNN would otherwise run convolutions in TF32 (10-bit mantissa).
        torch.backends.cudnn.allow_tf32 = precision.autocast is not None
        torch.backends.cuda.matmul.allow_tf32 = False
    runs = []
    for seed, callback, path in zip(seeds, callbacks, checkpoints):
        torch.manual_seed(seed)
        alone = build_model(spec, info).to(device)
        # Data order and augmentation draw from their own generator on the data's device.
        gen = torch.Generator(device=data.train.images.device)
        gen.manual_seed(seed)
        run = _Run(seed, callback, Path(path) if path is not None else None, _fingerprint(spec, recipe, seed, data), gen,
                   torch.get_rng_state(), alone.state_dict(), None, [], 0)
        # A checkpoint that cannot be used (damaged, another run's) is discarded with a warning: from scratch.
        state = load_checkpoint(run.checkpoint, run.fingerprint, alone, map_location=device) if run.checkpoint is not None else None
        if state is not None:
            run.model, run.optimizer = state["model"], state["optimizer"]
            # The checkpoint was loaded onto `device`, RNG states included, but generators take
            # their state only as a CPU byte tensor ("RNG state must be a torch.ByteTensor").
            run.cpu_rng = state["rng"]["cpu"].cpu()
            gen.set_state(state["rng"]["data"].cpu())
            if device.type == "cuda" and "cuda" in state["rng"]:
                torch.cuda.set_rng_state(state["rng"]["cuda"].cpu(), device)
            run.history = [Epoch(**e) for e in state["history"]]
            run.start_epoch = state["epoch"]
        runs.append(run)
    if len(runs) == 1:
        torch.set_rng_state(runs[0].cpu_rng)
    params = count_params(alone)
    _, macs = measure(spec, input_info(info, recipe))
    for epoch in sorted({r.start_epoch for r in runs}):
        _fit(spec, recipe, data, [r for r in runs if r.start_epoch == epoch], device, precision, params, macs, poll)
    return [r.outcome for r in runs]


def _fuse_optimizer(states: list[dict[str, Any]]) -> dict[str, Any]:
    """SGD's state dicts of the runs as one for the fused network (momentum stacked like the weights)."""
    first = states[0]
    fused = {i: {k: torch.cat([s["state"][i][k] for s in states]) if isinstance(v, torch.Tensor) and v.dim() else v
                 for k, v in entry.items()} for i, entry in first["state"].items()}
    return {"state": fused, "param_groups": first["param_groups"]}


def _split_optimizer(state: dict[str, Any], runs: int) -> list[dict[str, Any]]:
    return [{"state": {i: {k: v.chunk(runs)[r].clone() if isinstance(v, torch.Tensor) and v.dim() else v for k, v in entry.items()}
                       for i, entry in state["state"].items()},
             "param_groups": state["param_groups"]} for r in range(runs)]


def _silence(model: nn.Module, optimizer: torch.optim.Optimizer, k: int, runs: int) -> None:
    """Mask run `k` out of a fused network: zero its slice of every weight, buffer and momentum.
    With zero weights its activations are zero and finite, and with its loss left out its
    gradient is zero, so SGD (momentum and weight decay included) leaves the slice at zero."""
    with torch.no_grad():
        tensors = [*model.state_dict().values(), *(s.get("momentum_buffer") for s in optimizer.state.values())]
        for t in tensors:
            if isinstance(t, torch.Tensor) and t.dim() and t.is_floating_point():
                t.chunk(runs)[k].zero_()


def _stage_norms(stages: dict[str, list[nn.Parameter]], runs: int) -> torch.Tensor:
    """[stages, runs]: each run's L2 norm of its gradient in each stage."""
    if runs == 1:
        return torch.stack([
            torch.linalg.vector_norm(torch.stack(torch._foreach_norm([p.grad for p in ps if p.grad is not None])))
            for ps in stages.values()
        ])[:, None]
    return torch.stack([
        torch.linalg.vector_norm(torch.cat([p.grad.reshape(runs, -1) for p in ps if p.grad is not None], 1), dim=1)
        for ps in stages.values()
    ])


def _fit(spec: VariantSpec, recipe: Recipe, data: Splits, runs: list[_Run], device: torch.device, precision: Precision,
         params: int, macs: int, poll: Callable[[], None] | None) -> None:
    """The training loop of runs that start at the same epoch, fused into one network; sets each
    run's outcome."""
    _Fit(spec, recipe, data, runs, device, precision, params, macs, poll).run()


class _Fit:
    """One fused network of runs in training: the model, its optimizer and which runs are alive."""

    def __init__(self, spec: VariantSpec, recipe: Recipe, data: Splits, runs: list[_Run], device: torch.device,
                 precision: Precision, params: int, macs: int, poll: Callable[[], None] | None):
        self.spec, self.recipe, self.data, self.runs, self.device, self.precision = spec, recipe, data, runs, device, precision
        self.params, self.macs, self.poll = params, macs, poll
        self.k_runs = k_runs = len(runs)
        with torch.device("meta"):  # no initialisation: the runs' own weights are loaded next
            model = build_model(spec, data.info, runs=k_runs)
        model = model.to_empty(device=device)
        model.load_state_dict(fuse_states([r.model for r in runs]))
        if precision.channels_last:
            model = model.to(memory_format=torch.channels_last)
        self.model = model
        self.stages = {name: [p for p in m.parameters()] for name, m in model.named_children()}
        self.optimizer = torch.optim.SGD(
            model.parameters(), lr=recipe.lr, momentum=recipe.momentum,
            nesterov=recipe.nesterov, weight_decay=recipe.weight_decay,
        )
        if runs[0].optimizer is not None:
            self.optimizer.load_state_dict(_fuse_optimizer([r.optimizer for r in runs]))
        self.step_model = torch.compile(model) if recipe.compile else model
        self.sched = schedule(recipe, len(data.train.labels))
        self.alive = torch.ones(k_runs, dtype=torch.bool, device=device)
        self.live = [True] * k_runs  # mirrors `alive`, without a device sync

    def end(self, k: int, outcome: Exception | None = None, **kw: Any) -> None:
        """Run k ends: masked out of the network, with its result (or its callback's exception)."""
        r = self.runs[k]
        r.outcome = outcome if outcome is not None else Result(
            spec=self.spec, recipe=self.recipe, seed=r.seed, device=str(self.device), params=self.params, macs=self.macs,
            history=tuple(r.history), resumed_from=r.start_epoch, **kw)
        self.alive[k], self.live[k] = False, False
        if self.k_runs > 1:
            _silence(self.model, self.optimizer, k, self.k_runs)

    def diverged(self, loss_sums: torch.Tensor, epoch: int, reason: Callable[[int], str]) -> None:
        for k in (~torch.isfinite(loss_sums) & self.alive).nonzero().flatten().tolist():
            self.end(k, diverged=True, diverged_epoch=epoch, reason=reason(k))

    def run(self) -> None:
        self.model.train()
        for epoch in range(self.runs[0].start_epoch + 1, self.sched.epochs + 1):
            if not self._epoch(epoch):
                return
        for r in self.runs:
            if r.outcome is None:
                self.end_well(r)

    def end_well(self, r: _Run) -> None:
        r.outcome = Result(spec=self.spec, recipe=self.recipe, seed=r.seed, device=str(self.device), params=self.params,
                           macs=self.macs, history=tuple(r.history), resumed_from=r.start_epoch)

    def _epoch(self, epoch: int) -> bool:
        """Train one epoch, evaluate and record it; False when no run is left."""
        t0 = time.perf_counter()
        k_runs, device = self.k_runs, self.device
        self.loss_sums = torch.zeros(k_runs, device=device)
        self.wrong = torch.zeros(k_runs, dtype=torch.int64, device=device)
        self.grad_sums = torch.zeros(len(self.stages), k_runs, device=device)
        self.seen = 0
        self.step = (epoch - 1) * self.sched.steps_per_epoch
        self.lr = self.recipe.lr
        self.marks: list[tuple[int, int, torch.Tensor, torch.Tensor]] = [(self.step, 0, self.loss_sums.clone(), self.wrong.clone())]
        if not self._steps(epoch):
            return False
        self.diverged(self.loss_sums, epoch, lambda k: f"loss became {self.loss_sums[k].item()} at epoch {epoch} (lr {self.lr:.4g})")
        if not any(self.live):
            return False
        if self.marks[-1][0] != self.step:  # a partial last epoch: close its last interval
            self.marks.append((self.step, self.seen, self.loss_sums.clone(), self.wrong.clone()))
        self._record(epoch, t0, time.perf_counter() - t0)
        return any(self.live)

    def _steps(self, epoch: int) -> bool:
        """The epoch's optimizer steps; False when every run diverged."""
        recipe, runs, k_runs, data = self.recipe, self.runs, self.k_runs, self.data
        closes = set(point_steps(self.sched.steps_per_epoch, recipe.points_per_epoch))
        streams = [batches(data.train, recipe.batch_size, shuffle=True, generator=r.gen, drop_last=self.sched.drop_last) for r in runs]
        for i, pairs in enumerate(zip(*streams)):
            if self.step >= self.sched.iterations:  # `iterations` ends training inside this epoch
                break
            self.lr = lr = lr_at(recipe, self.step, self.sched)
            for group in self.optimizer.param_groups:
                group["lr"] = lr
            images = [augment(im, recipe.augment, generator=r.gen) if recipe.augment else im for (im, _), r in zip(pairs, runs)]
            labels = torch.stack([lb for _, lb in pairs], 1)  # [N, runs]
            x = _inputs(images, data.info, recipe, self.precision)
            with _autocast(self.device, self.precision):
                logits = self.step_model(x).view(len(labels), k_runs, -1)
                losses = torch.stack([F.cross_entropy(logits[:, k].float(), labels[:, k], label_smoothing=recipe.label_smoothing)
                                      for k in range(k_runs)])
            self.optimizer.zero_grad(set_to_none=True)
            # The runs' parameters are disjoint: the gradient of the sum is each run's own gradient.
            (losses.sum() if all(self.live) else losses[self.alive].sum()).backward()
            self.grad_sums += _stage_norms(self.stages, k_runs)
            self.optimizer.step()
            self.loss_sums += losses.detach()
            self.wrong += (logits.detach().argmax(2) != labels).sum(0)
            self.seen += len(labels)
            self.step += 1
            if i + 1 in closes:  # copies of the running sums: no device sync until the epoch ends
                self.marks.append((self.step, self.seen, self.loss_sums.clone(), self.wrong.clone()))
            if self.poll is not None:
                self.poll()
            # A NaN stays NaN in the running sum, so checking every few steps (one device sync)
            # stops a diverged run within a few steps of the divergence.
            if (i % 16 == 15 or self.device.type == "cpu") and not bool(torch.isfinite(self.loss_sums[self.alive]).all()):
                step = self.step
                self.diverged(self.loss_sums, epoch, lambda k: f"loss became {losses[k].item()} at epoch {epoch}, step {step} (lr {lr:.4g})")
                if not any(self.live):
                    return False
        return True

    def _record(self, epoch: int, t0: float, train_seconds: float) -> None:
        """Evaluate the epoch's nets; each live run records it, checkpoints and calls back."""
        k_runs, data, device = self.k_runs, self.data, self.device
        steps = max(1, self.step - (epoch - 1) * self.sched.steps_per_epoch)
        norms = (self.grad_sums / steps).T.tolist()
        losses_, wrong_ = [v / steps for v in self.loss_sums.tolist()], self.wrong.tolist()
        test = _evaluate(self.model, data.test, data.info, self.recipe, device, self.precision, runs=k_runs)
        val = (_evaluate(self.model, data.val, data.info, self.recipe, device, self.precision, runs=k_runs)
               if data.val is not None else [None] * k_runs)
        seconds = time.perf_counter() - t0
        states = split_state(self.model.state_dict(), k_runs) if any(r.checkpoint for r in self.runs) else None
        optims = _split_optimizer(self.optimizer.state_dict(), k_runs) if states else None
        for k, r in enumerate(self.runs):
            if r.outcome is not None:
                continue
            record = Epoch(
                epoch=epoch, train_loss=losses_[k], train_error=wrong_[k] / max(1, self.seen), test_error=test[k],
                val_error=val[k], lr=self.lr, seconds=seconds, images_per_second=self.seen / train_seconds,
                grad_norms=dict(zip(self.stages, norms[k])),
                points=_points([(it, sn, ls[k], wr[k]) for it, sn, ls, wr in self.marks]),
            )
            r.history.append(record)
            if r.checkpoint is not None:
                rng = {**_rng_states(device, r.gen), "cpu": r.cpu_rng}
                _save_checkpoint(r.checkpoint, {
                    "fingerprint": r.fingerprint, "epoch": epoch, "model": states[k], "optimizer": optims[k],
                    "rng": rng, "history": [asdict(e) for e in r.history],
                })
            if r.callback is not None:
                try:
                    r.callback(record)
                except Exception as exc:  # noqa: BLE001 (ends this run; the others go on)
                    self.end(k, outcome=exc)
