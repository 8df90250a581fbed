"""The study driver: a study file becomes one Optuna study of trained variants in RDB storage.

Optuna organises everything (docs/storage.md says what is stored, ablate.storage how): each
*unit* of work (a variant's search trial, or one of its final seeded runs) is one trial. A worker
loops: it reaps trials of dead workers (Optuna's heartbeat), plans from the stored trials alone
(ablate.scheduling), claims a unit under a database lock (ablate.storage.claim: exactly once,
however many workers), and runs it. Resuming is reading the storage: units with a counting trial
are done; a trial left RUNNING by a killed worker goes stale, and its unit is claimed again by
any worker and resumes from its checkpoint. Any number of processes, on any number of machines
(with PostgreSQL), run one study by running the same command: they share the storage and,
where checkpoints should move between machines, a checkpoint folder (docs/distributed.md).
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import hashlib
import os
import platform
import threading
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from ablate import __version__
from ablate import failpoints
from ablate.storage import outcomes
from ablate.runs import scheduling
from ablate.runs import stopping
from ablate import storage as S
from ablate.engine.checkpoint import CheckpointWriteError, remove_stale
from ablate.runs.scheduling import Unit, study_units
from ablate.spec.study import Study, definition, growth
from ablate.engine.train import Epoch, Recipe, load_data, resolve_device, schedule, train, train_runs
from ablate.spec.variants import VariantSpec

DEFAULT_STORAGE = S.DEFAULT_STORAGE
GRACE_SECONDS = 30  # a RUNNING trial whose heartbeat is older than this is stale (its process died)
DriverError = S.StorageError  # a problem with the storage or a stored study; the message says how to fix it
recipe_dict = S.recipe_dict

__all__ = ["Unit", "study_units", "run_study", "Progress", "DriverError"]


class TrialFailed(Exception):
    """Raised inside a trial so Optuna records it as FAIL (after `failure` is set)."""


# ---------------------------------------------------------------- what a trial's params are


def _recipes(study: Study) -> list[Recipe]:
    return [study.recipe_for(spec) for spec in study.variants]


def distributions(study: Study) -> dict[str, BaseDistribution]:
    """One distribution per param over the whole study, so every trial's params are compatible
    and the dashboard's slice / parallel-coordinate / importance plots span the ablation axes.
    A recipe key that a variant overrides spans every variant's value."""
    dists: dict[str, BaseDistribution] = {}
    axes = [S.spec_params(s) for s in study.variants]
    for key in axes[0]:
        values = [a[key] for a in axes]
        if all(isinstance(v, int) and not isinstance(v, bool) for v in values):
            dists[key] = IntDistribution(min(values), max(values))
        else:
            dists[key] = CategoricalDistribution(sorted(set(values), key=str))
    searched = {p.key: p for p in (study.search.space if study.search else ())}
    recipes = _recipes(study)
    for f in dataclasses.fields(Recipe):
        if f.name in searched:
            p = searched[f.name]
            if p.kind == "choice":
                dists[f.name] = CategoricalDistribution(list(p.choices))
            elif p.kind == "int":
                dists[f.name] = IntDistribution(p.low, p.high, log=p.log)
            else:
                dists[f.name] = FloatDistribution(p.low, p.high, log=p.log)
            continue
        values = [S.flat(getattr(r, f.name)) for r in recipes if getattr(r, f.name) is not None]
        if not values:
            continue
        if any(isinstance(v, (bool, str)) for v in values):
            dists[f.name] = CategoricalDistribution(sorted(set(values), key=str))
        elif all(isinstance(v, int) for v in values):
            dists[f.name] = IntDistribution(min(values), max(values))
        else:
            dists[f.name] = FloatDistribution(float(min(values)), float(max(values)))
    dists["seed"] = IntDistribution(0, study.final_seeds[-1])
    return dists


def fixed_params(study: Study, unit: Unit, best: dict[str, Any] | None = None) -> dict[str, Any]:
    """The params known before a unit runs: everything but the searched values of a search trial."""
    params = {**S.spec_params(unit.variant), "seed": unit.seed}
    searched = {p.key for p in study.search.space} if study.search else set()
    recipe = study.recipe_for(unit.variant)
    for f in dataclasses.fields(Recipe):
        value = getattr(recipe, f.name)
        if f.name in searched:
            if unit.kind == "final":
                params[f.name] = best[f.name] if best is not None else value
        elif value is not None:
            params[f.name] = S.flat(value)
    return params


def param_keys(study: Study, unit: Unit) -> list[str]:
    """The params a unit's trial holds: its fixed params and, for a search trial, the searched keys."""
    searched = [p.key for p in study.search.space] if study.search else []
    return list(dict.fromkeys([*fixed_params(study, unit, {k: None for k in searched}), *searched]))


def trial_recipe(study: Study, unit: Unit, params: dict[str, Any]) -> Recipe:
    searched = {p.key for p in study.search.space} if study.search else set()
    return dataclasses.replace(study.recipe_for(unit.variant), **{k: params[k] for k in searched if k in params})


def objective_metric(study: Study) -> str:
    """What a trial's value and intermediate values are: the validation error when the study
    searches (so the sampler and the pruner never see the test set), else the test error."""
    return "val_error" if study.search is not None else "test_error"


def versions() -> dict[str, str]:
    import torchvision

    v = {"ablate": __version__, "python": platform.python_version(), "torch": torch.__version__,
         "torchvision": torchvision.__version__, "optuna": optuna.__version__}
    if torch.cuda.is_available():
        v["cuda"] = str(torch.version.cuda)
        v["gpu"] = torch.cuda.get_device_name()
    return v


# ---------------------------------------------------------------- fairness: per-variant sampling and pruning


def _same_variant(study: optuna.Study, trial: FrozenTrial, states: tuple[TrialState, ...]) -> optuna.Study:
    """An in-memory copy of `study` holding only the search trials of `trial`'s variant in
    `states` (never `trial` itself)."""
    variant = S.TrialAttrs.read(trial.user_attrs).variant
    shadow = optuna.create_study(direction="minimize")
    mine = []
    for t in study.get_trials(deepcopy=False, states=states):
        a = S.TrialAttrs.read(t.user_attrs)
        if a.variant == variant and a.kind == "search" and t.number != trial.number:
            mine.append(t)
    shadow.add_trials(mine)
    return shadow


class PerVariantSampler(optuna.samplers.BaseSampler):
    """Samples a variant's searched values from that variant's trials alone.

    One Optuna study holds every variant (so the dashboard can plot the ablation axes), but a
    learning rate that suits residual nets must not steer the search of the plain ones: each
    variant gets the same budget and its own TPE (or random) search.
    """

    def __init__(self, inner: optuna.samplers.BaseSampler):
        self._inner = inner

    def infer_relative_search_space(self, study, trial):  # noqa: D102 (independent sampling only)
        return {}

    def sample_relative(self, study, trial, search_space):  # noqa: D102
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):  # noqa: D102
        # RUNNING trials too: with several workers, TPE's constant liar counts the values being
        # tried elsewhere as bad ones for now, so parallel workers do not all sample one spot.
        shadow = _same_variant(study, trial, (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        return self._inner.sample_independent(shadow, trial, param_name, param_distribution)


class PerVariantPruner(optuna.pruners.BasePruner):
    """Prunes a search trial only against the same variant's completed search trials: a plain
    net is never stopped for being worse than a residual one."""

    def __init__(self, inner: optuna.pruners.BasePruner):
        self._inner = inner

    def prune(self, study, trial):  # noqa: D102
        return self._inner.prune(_same_variant(study, trial, (TrialState.COMPLETE,)), trial)


def _sampler(study: Study) -> optuna.samplers.BaseSampler:
    if study.search is None or study.search.sampler == "random":
        inner: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler()
    else:
        inner = optuna.samplers.TPESampler(n_startup_trials=max(2, study.search.trials // 3), constant_liar=True)
    return PerVariantSampler(inner)


def _pruner(study: Study) -> optuna.pruners.BasePruner:
    if study.search is None or study.search.pruner == "none":
        return optuna.pruners.NopPruner()
    return PerVariantPruner(optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))


# ---------------------------------------------------------------- storage


def heartbeat_for(grace: int) -> int:
    return S.heartbeat_interval(grace)


def storage_for_run(url: str, grace: int = GRACE_SECONDS, retry: float = S.STORAGE_RETRY_SECONDS) -> optuna.storages.RDBStorage:
    """RDB storage with Optuna's heartbeat, set up for many workers (ablate.storage); a storage
    that goes away is retried for `retry` seconds (ablate.storage.retry)."""
    return S.open_storage(url, grace=grace, retry=retry)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """RDB storage for reading (ls, show, report, dashboard)."""
    return S.open_storage(url)


# ---------------------------------------------------------------- progress of a study in storage


def unit_state(trials: list[FrozenTrial]) -> scheduling.UnitState:
    return scheduling.unit_state(S.records(trials))


def failed_units(trials: list[FrozenTrial]) -> dict[str, FrozenTrial]:
    """Units whose latest finished attempt failed for a reason of their own: unit key -> that trial."""
    by_number = {t.number: t for t in trials}
    return {k: by_number[r.number] for k, r in scheduling.failed_units(S.records(trials)).items()}


def checkpoint_name(unit: Unit, recipe: Recipe) -> str:
    """A unit's checkpoint file: its key and a tag of what it trains, so a changed recipe never resumes."""
    tag = hashlib.sha1(f"{recipe!r}/{unit.seed}".encode()).hexdigest()[:10]
    return f"{_checkpoint_prefix(unit.key)}{tag}.pt"


def _checkpoint_prefix(key: str) -> str:
    return f"{key.replace('/', '_')}-"


def clean_checkpoints(ckpt_dir: Path, done: set[str]) -> None:
    """A killed run's leftovers: temporary files of interrupted writes, and checkpoints of units
    that are done (a run killed between recording a trial and removing its checkpoint)."""
    remove_stale(ckpt_dir)
    if not ckpt_dir.is_dir():
        return
    for p in ckpt_dir.glob("*.pt"):
        if any(p.name.startswith(_checkpoint_prefix(k)) for k in done):
            p.unlink(missing_ok=True)


# ---------------------------------------------------------------- the run


@dataclass
class Progress:
    """What the run reports as it goes; the CLI draws it (or not, when not on a terminal)."""

    on_start: Callable[[int, int], None] = lambda total, done: None  # units in all, already done
    on_trial: Callable[[Unit, int], None] = lambda unit, epochs: None  # a unit starts (epochs in it)
    on_epoch: Callable[[Unit, Epoch], None] = lambda unit, epoch: None
    on_finish: Callable[[Unit, FrozenTrial], None] = lambda unit, trial: None
    on_wait: Callable[[int], None] = lambda running: None  # units running elsewhere; waiting for them


def checkpoint_dir_for(storage_url: str) -> Path:
    """Beside a SQLite file; under the user's cache for server storages."""
    import sqlalchemy

    parsed = sqlalchemy.engine.make_url(storage_url)
    if parsed.get_backend_name() == "sqlite" and parsed.database and parsed.database != ":memory:":
        db = Path(parsed.database).expanduser().absolute()
        return db.parent / f"{db.name}.checkpoints"
    return Path("~/.cache/ablate/checkpoints").expanduser()


def check_fuse(fuse: int | str) -> None:
    if fuse in ("auto", "off"):
        return
    if isinstance(fuse, bool) or not isinstance(fuse, int) or fuse < 1:
        raise ValueError(f"--fuse: {fuse!r} is not valid; use auto, off or a number of runs >= 1")


#: Fused runs per group on a CPU, by MACs per image (docs/benchmarks.md, "Fused runs"): pairs for
#: nets as small as the quick study's (width 8, 28 px: 2-24M MACs), where a micro-benchmark
#: showed pairs ahead; ResNet-20 at 32 px (41M) fused 4 ways measured slower than one run after
#: another on a busy 2-core CPU, so larger nets are not fused. Provisional: no quiet machine yet.
CPU_FUSE = ((30e6, 2),)
#: On a GPU one small net leaves most of it idle (issue 12: ResNet-20 wants K = 8); not measured yet.
GPU_FUSE = ((50e6, 8), (500e6, 4))


def fuse_size(fuse: int | str, spec: VariantSpec, study: Study, device: torch.device) -> int:
    """How many runs of `spec` to fuse: `fuse` itself, 1 for off, or for auto a size by the
    model's MACs per image and the device (`CPU_FUSE`, `GPU_FUSE`)."""
    if fuse == "off":
        return 1
    if fuse != "auto":
        return int(fuse)
    from ablate.engine.models import measure

    recipe = study.recipe_for(spec)
    info = study.info if recipe.resize is None else dataclasses.replace(study.info, size=recipe.resize)
    _, macs = measure(spec, info)
    table = GPU_FUSE if device.type == "cuda" else CPU_FUSE
    return next((k for limit, k in table if macs <= limit), 1)


@dataclass
class _Job:
    """A trial being run: its unit, recipe and checkpoint, and what it has reported so far."""

    trial: optuna.Trial
    unit: Unit
    recipe: Recipe
    ckpt: Path
    on_epoch: Callable[[Epoch], None] | None = None
    history: list[dict[str, Any]] = dataclasses.field(default_factory=list)
    reported: set[int] = dataclasses.field(default_factory=set)
    start: float = dataclasses.field(default_factory=time.perf_counter)



def run_study(
    study: Study,
    storage_url: str = DEFAULT_STORAGE,
    *,
    device: str = "auto",
    data_dir: str | Path | None = None,
    checkpoint_dir: str | Path | None = None,
    progress: Progress | None = None,
    download: bool = True,
    grace: int = GRACE_SECONDS,
    retry_failed: bool = False,
    fuse: int | str = "auto",
    storage_retry: float = S.STORAGE_RETRY_SECONDS,
) -> optuna.Study:
    """Train every unit of `study` that the storage does not hold yet; returns the Optuna study.

    Any number of processes may run this on one storage at once: each unit ends with exactly
    one counting trial (ablate.storage.claim). `grace`: seconds after which a RUNNING trial
    without heartbeat is taken for dead and its unit claimed again, by any worker.
    `fuse`: final runs of one variant claimed and trained together as one fused network
    (auto, off, or K; ablate.train.train_runs); an execution choice, stored as if run one by one.
    `storage_retry`: seconds a storage that went away (a restart, a lost connection, a lock) is
    retried before the run stops (ablate.storage.retry).
    `retry_failed`: also run once more every unit whose failure was its own (diverged, out of
    memory, ...); units interrupted or killed are always retried. A SIGINT or SIGTERM (with
    `stopping.handled()` in force) stops the run between steps with `stopping.Stop`, and so does a
    checkpoint that cannot be written; the trial is marked for retry and its checkpoint kept.
    """
    progress = progress or Progress()
    dev = resolve_device(device)
    check_fuse(fuse)
    if grace < 2:
        raise ValueError(f"--grace-period: {grace} is too short; use at least 2 seconds (default {GRACE_SECONDS})")
    failpoints.reach("storage-open")
    storage = storage_for_run(storage_url, grace, storage_retry)
    ostudy = _create_or_check(study, storage)
    # The data first: a missing dataset is an error before anything is trained.
    data = load_data(study.dataset, study.recipe, device=dev, data_dir=data_dir, download=download)
    units = study_units(study)
    by_key = {u.key: u for u in units}
    dists = distributions(study)
    ckpt_root = Path(checkpoint_dir) if checkpoint_dir is not None else checkpoint_dir_for(storage_url)
    ckpt_dir = ckpt_root / study.name
    env = versions()
    metric = objective_metric(study)
    device_name = str(dev) if dev.type == "cpu" else f"{dev.type}:{torch.cuda.current_device()}"
    worker = S.Worker.here(_physical_device(device_name))

    def prepare(trial: optuna.Trial) -> _Job:
        """A claimed trial made ready to train: its params suggested, recipe and checkpoint chosen."""
        unit = by_key[S.TrialAttrs.read(trial.user_attrs).unit]
        params = {name: _suggest(trial, name, dists[name]) for name in param_keys(study, unit)}
        recipe = trial_recipe(study, unit, params)
        S.set_trial_attrs(trial, recipe=recipe_dict(recipe), device=device_name, versions=env,
                          data=data.source)  # data: the folder the files came from, or the bundled subset
        ckpt = ckpt_dir / checkpoint_name(unit, recipe)
        checkpoints[trial.number] = ckpt
        job = _Job(trial, unit, recipe, ckpt)

        def on_epoch(e: Epoch) -> None:
            trial.report(getattr(e, metric), e.epoch)
            job.reported.add(e.epoch)
            job.history.append(dataclasses.asdict(e))
            S.set_trial_attrs(trial, history=job.history)  # live: a report of a running study shows it
            progress.on_epoch(unit, e)
            if unit.kind == "search" and trial.should_prune():
                raise optuna.TrialPruned(f"{metric.replace('_', ' ')} {getattr(e, metric):.4f} at epoch {e.epoch} is worse than the variant's median")

        job.on_epoch = on_epoch
        progress.on_trial(unit, schedule(recipe, len(data.train.labels)).epochs)
        return job

    def conclude(job: _Job, run: Callable[[], Any]) -> float:
        """The trial's value from `run()`'s result, its attributes stored; or the failure, recorded."""
        trial, unit, history = job.trial, job.unit, job.history
        try:
            result = run()
        except optuna.TrialPruned:
            raise
        except optuna.exceptions.UpdateFinishedTrialError:  # another worker took this trial for dead
            raise
        except stopping.Stop as stop:  # SIGINT / SIGTERM: not the unit's fault; retried at once, from its checkpoint
            _mark_for_retry(trial, stop.kind, f"{stop.reason} after {len(job.reported)} epochs; the next run resumes it from its checkpoint")
            raise
        except CheckpointWriteError as exc:  # a full disk: stop the run, keep the last checkpoint
            _mark_for_retry(trial, outcomes.STORAGE, str(exc))
            raise stopping.Stop(f"{exc}; free space (or give --checkpoint-dir) and run the same command again: "
                                "the run resumes from the last checkpoint", outcomes.STORAGE, 1) from None
        except Exception as exc:
            S.set_trial_attrs(trial, failure=" ".join(f"{type(exc).__name__}: {exc}".split())[:2000],
                              failure_kind=outcomes.exception_kind(exc))
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            raise
        history[:] = [dataclasses.asdict(e) for e in result.history]  # restored epochs included
        for e in result.history:  # epochs restored from a checkpoint were reported by the killed trial
            if e.epoch not in job.reported:
                trial.report(getattr(e, metric), e.epoch)
        S.set_trial_attrs(
            trial, params=result.params, macs=result.macs, history=history,
            train_error=result.train_error, test_error=result.test_error,
            val_error=result.final.val_error if result.final else None,
            images_per_second=result.images_per_second, seconds=time.perf_counter() - job.start,
            resumed_from=result.resumed_from,
        )
        if result.diverged:
            S.set_trial_attrs(trial, failure=f"diverged: {result.reason}", failure_kind=outcomes.DIVERGED,
                              diverged_epoch=result.diverged_epoch)
            raise TrialFailed(result.reason)
        if unit.kind == "final":  # a run at chance level is kept, but out of the means (ablate.tables)
            flat = outcomes.did_not_learn(result.train_error, len(data.train), result.test_error, len(data.test), data.info.classes)
            if flat is not None:
                S.set_trial_attrs(trial, did_not_learn=flat)
        return getattr(result.final, metric)

    def objective(trial: optuna.Trial) -> float:
        job = prepare(trial)
        return conclude(job, lambda: train(job.unit.variant, job.recipe, data, device=dev, seed=job.unit.seed,
                                           callback=job.on_epoch, checkpoint=job.ckpt, poll=stopping.check))

    def train_group(jobs: list[_Job]) -> list[Any]:
        """One fused network for the jobs (same variant and recipe): each one's Result or exception."""
        return train_runs(jobs[0].unit.variant, jobs[0].recipe, data, seeds=[j.unit.seed for j in jobs], device=dev,
                          callbacks=[j.on_epoch for j in jobs], checkpoints=[j.ckpt for j in jobs], poll=stopping.check)

    def finished(trial: FrozenTrial) -> None:
        # The trial is in the storage now; only then may its checkpoint go (a kill before this
        # line leaves it for the next run to clean up, never a unit without either).
        failpoints.reach("trial-complete")
        ckpt = checkpoints.pop(trial.number, None)
        if ckpt is not None and (trial.state != TrialState.FAIL or outcomes.is_own(outcomes.failure_kind(trial.state, trial.user_attrs))):
            ckpt.unlink(missing_ok=True)
        key = S.TrialAttrs.read(trial.user_attrs).unit
        if key in by_key:
            progress.on_finish(by_key[key], trial)

    def candidates(plan: scheduling.Plan) -> list[S.Candidate]:
        out = [_candidate(study, unit, dists, fixed_params(study, unit, None), "FAIL", worker, {
            "failure_kind": outcomes.NO_RECIPE,
            "failure": "no search trial of this variant completed, so there is no recipe to repeat"}) for unit in plan.impossible]
        for r in plan.ready:
            # Interrupted or killed: the same params, so its checkpoint resumes.
            params = dict(r.previous.params) if r.previous is not None and r.previous.params else {}
            if not params:
                params = fixed_params(study, r.unit, dict(r.best.params) if r.best is not None else None)
            out.append(_candidate(study, r.unit, dists, params, "RUNNING", worker))
        return out

    checkpoints: dict[int, Path] = {}
    first = True
    retry: dict[str, int] = {}  # with retry_failed: unit key -> the number of its failed trial, retried once
    with stopping.deferred():
        while True:
            stopping.check()
            _reap(ostudy, storage, grace)
            records = S.records(ostudy.get_trials(deepcopy=False))
            if first:
                done = scheduling.unit_state(records).done
                clean_checkpoints(ckpt_dir, set(done))
                if retry_failed:
                    retry = {k: r.number for k, r in scheduling.failed_units(records).items()}
                progress.on_start(len(units), len(done) - len(retry))
                first = False
            plan = scheduling.plan(units, records, retry)
            if plan.finished:
                return ostudy
            if plan.ready or plan.impossible:
                failpoints.reach("plan")
                offered = candidates(plan)
                # Final runs of one variant are claimed together, up to the fused group's size.
                size = fuse_size(fuse, plan.ready[0].unit.variant, study, dev) if plan.ready and plan.ready[0].unit.kind == "final" else 1
                claimed = S.claim(storage, ostudy, offered, lambda rs: scheduling.plan(units, rs, retry).claimable, limit=size)
                running = [tid for tid in claimed if ostudy._storage.get_trial(tid).state == TrialState.RUNNING]
                if len(running) > 1:
                    run_group(ostudy, storage, running, prepare, train_group, conclude, finished)
                elif running:
                    run_trial(ostudy, storage, running[0], objective, finished)
                if claimed:
                    continue
            # Nothing to claim: units running elsewhere (or a killed worker's trial not yet stale).
            progress.on_wait(len(plan.running))
            _sleep(heartbeat_for(grace))


def _physical_device(device: str) -> str:
    """cuda:0 as the machine numbers it (CUDA_VISIBLE_DEVICES renumbers what a process sees)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not device.startswith("cuda:") or not visible:
        return device
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    index = int(device.split(":", 1)[1])
    return f"cuda:{ids[index]}" if index < len(ids) else device


def _candidate(study: Study, unit: Unit, dists: dict[str, BaseDistribution], params: dict[str, Any], state: str,
               worker: S.Worker, extra: dict[str, Any] | None = None) -> S.Candidate:
    params = {k: v for k, v in params.items() if k in dists}
    return S.Candidate(unit.key, state, params, {k: dists[k] for k in params},
                       {**S.unit_attrs(unit, worker), **S.encode_trial_attrs(**(extra or {}))},
                       group=f"{unit.variant.name}/final" if unit.kind == "final" else unit.key)


class _Heartbeat:
    """Optuna's heartbeat for a trial this worker runs: a thread that records it every interval."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int):
        self._storage, self._trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        interval = self._storage.get_heartbeat_interval() or 1
        while not self._stop.is_set():
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception:  # a storage hiccup: the next beat tries again; a long one makes the trial stale
                pass
            self._stop.wait(interval)

    def __enter__(self) -> "_Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def run_group(ostudy: optuna.Study, storage: optuna.storages.RDBStorage, trial_ids: list[int], prepare, train_group,
              conclude, finished: Callable[[FrozenTrial], None]) -> None:
    """Run claimed trials together, as `run_trial` runs one: each has its own heartbeat, reports,
    attributes and state, and `finished` is called for each. Trials of the same variant and recipe
    train as one fused network (`train_group`); any other trial trains in a group of its own."""
    trials = [optuna.Trial(ostudy, tid) for tid in trial_ids]
    told: list[tuple[optuna.Trial, TrialState, float | None, BaseException | None]] = []
    with contextlib.ExitStack() as beats:
        for tid in trial_ids:
            beats.enter_context(_Heartbeat(storage, tid))
        jobs, outcome = [], {}
        for t in trials:
            try:
                jobs.append(prepare(t))
            except Exception as exc:
                outcome[t.number] = exc
        groups: dict[tuple[Any, ...], list[_Job]] = {}
        for j in jobs:
            groups.setdefault((j.unit.variant, j.recipe), []).append(j)
        stop: BaseException | None = None
        for group in groups.values():
            try:
                if stop is not None:
                    raise stop
                results = train_group(group)
            except BaseException as exc:  # a stop, a full disk, an error of the network: every run of the group
                stop = exc if not isinstance(exc, Exception) else stop
                results = [exc] * len(group)
            for j, r in zip(group, results):
                outcome[j.trial.number] = r
        for t in trials:
            job = next((j for j in jobs if j.trial is t), None)
            r = outcome[t.number]

            def result(r=r):
                if isinstance(r, BaseException):
                    raise r
                return r

            try:
                if job is None:
                    result()
                told.append((t, TrialState.COMPLETE, conclude(job, result), None))
            except optuna.TrialPruned as exc:
                told.append((t, TrialState.PRUNED, None, exc))
            except (Exception, KeyboardInterrupt) as exc:
                told.append((t, TrialState.FAIL, None, exc))
    raise_after = None
    for t, state, value, exc in told:
        try:
            frozen = ostudy.tell(t, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)
        except Exception:  # e.g. a value Optuna refuses: the trial fails
            frozen = ostudy.tell(t, state=TrialState.FAIL, skip_if_finished=True)
        finished(frozen)
        if isinstance(exc, KeyboardInterrupt) and raise_after is None:  # a stop: after every trial is told
            raise_after = exc
    if raise_after is not None:
        raise raise_after


def run_trial(ostudy: optuna.Study, storage: optuna.storages.RDBStorage, trial_id: int,
              objective: Callable[[optuna.Trial], float], finished: Callable[[FrozenTrial], None]) -> FrozenTrial:
    """Run a claimed trial to its end, as `Study.optimize` would (heartbeat, pruning, failures),
    but on this trial: Optuna's optimize takes whichever trial is queued, which is what makes
    two workers run one unit. Exceptions are recorded as FAIL; a Stop is recorded, then raised."""
    trial = optuna.Trial(ostudy, trial_id)
    value: float | None = None
    state = TrialState.COMPLETE
    stop: BaseException | None = None
    with _Heartbeat(storage, trial_id):
        try:
            value = objective(trial)
        except optuna.TrialPruned:
            state = TrialState.PRUNED
        except KeyboardInterrupt as exc:  # stopping.Stop, or a Ctrl-C without ablate's handler
            state, stop = TrialState.FAIL, exc
        except Exception:
            state = TrialState.FAIL
    try:
        frozen = ostudy.tell(trial, value if state == TrialState.COMPLETE else None, state=state, skip_if_finished=True)
    except Exception:  # e.g. a value Optuna refuses: the trial fails
        frozen = ostudy.tell(trial, state=TrialState.FAIL, skip_if_finished=True)
    if frozen.state != state and stop is None:
        import logging

        logging.getLogger("ablate").warning(
            f"trial {frozen.number} ({S.TrialAttrs.read(frozen.user_attrs).unit}) was taken for dead by another worker "
            f"(no heartbeat for the grace period) and its unit retried there; this worker's result is not kept")
    finished(frozen)
    if stop is not None:
        raise stop
    return frozen


def _reap(ostudy: optuna.Study, storage: optuna.storages.RDBStorage, grace: int) -> None:
    """Dead workers' trials: FAIL, so that their units are claimed again. Optuna's heartbeat
    finds those whose heartbeat went stale (an atomic update: one worker wins, the rest find it
    failed); `_fail_unbeaten` those that never beat. Not until heartbeats are trusted again
    after a storage outage (ablate.storage.retry): no trial beat while it lasted."""
    if not S.retrier(storage).settled(grace):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(ostudy)
    _fail_unbeaten(ostudy, storage, grace)


def _fail_unbeaten(ostudy: optuna.Study, storage: optuna.storages.RDBStorage, grace: int) -> None:
    """Optuna's heartbeat only finds trials that beat once. A trial taken outside ablate's claim
    (which records a first heartbeat with the trial) by a process killed before its first beat
    would never go stale, and every later run would wait for it. Such a trial, older than the
    grace period, is failed here (then retried as killed)."""
    now = datetime.datetime.now()  # Optuna stores datetime_start in local time
    old = [t for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
           if t.datetime_start is not None and (now - t.datetime_start).total_seconds() > grace]
    if not old:
        return
    try:
        beaten = set(S.heartbeats(storage, [t._trial_id for t in old]))
    except Exception:  # another Optuna: leave it to the heartbeat
        return
    for t in old:
        if t._trial_id not in beaten:
            try:
                storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:  # it finished meanwhile, or another worker failed it
                pass


def _mark_for_retry(trial: optuna.Trial, kind: str, reason: str) -> None:
    S.set_trial_attrs(trial, failure_kind=kind, failure=reason)


def _sleep(seconds: float) -> None:
    """Wait, stopping at once on a signal."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(0.25, left))
        stopping.check()


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    assert isinstance(dist, FloatDistribution)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def _create_or_check(study: Study, storage: optuna.storages.RDBStorage) -> optuna.Study:
    """The study's Optuna study, created with its attributes, or checked against them: a study
    file may grow a stored study (more variants, more seeds: only the new units run), never
    change what a stored unit means (ablate.storage.growth)."""
    ostudy = optuna.create_study(
        study_name=study.name, storage=storage, direction="minimize", load_if_exists=True,
        sampler=_sampler(study), pruner=_pruner(study),
    )
    mine = definition(study)
    stored = S.StudyAttrs.read(ostudy.user_attrs).definition
    if stored is not None:
        why, grows = growth(stored, mine)
        if why is not None:
            raise DriverError(
                f"the storage already holds a study named {study.name!r} made from a different study file "
                f"({why}); a study may only grow (more variants, more seeds); rename the study (name = ...) "
                "or use another --storage"
            )
        if not grows:
            return ostudy
    study_attrs(study).write(ostudy)  # new, or grown: every worker writes the same values
    return ostudy


def study_attrs(study: Study) -> S.StudyAttrs:
    from ablate.engine.models import measure

    rows = []
    for spec in study.variants:
        params, macs = measure(spec, study.info if study.recipe.resize is None else dataclasses.replace(study.info, size=study.recipe.resize))
        rows.append({"name": spec.name, **spec.axes(), "params": params, "macs": macs,
                     "train": study.overrides.get(spec.name, {})})
    return S.StudyAttrs(
        ablate_version=__version__, study_file=study.source, study_path=study.path, description=study.description,
        dataset=study.dataset, definition=definition(study), variants=rows, recipe=recipe_dict(study.recipe),
        search=study.search.describe() if study.search else None, seeds=study.seeds, first_seed=study.first_seed,
        units=len(study_units(study)), objective=objective_metric(study),
    )


# ---------------------------------------------------------------- summaries (run, show, ls)


def study_progress(ostudy: optuna.Study) -> dict[str, Any]:
    trials = ostudy.get_trials(deepcopy=False)
    state = unit_state(trials)
    attrs = S.StudyAttrs.read(ostudy.user_attrs)
    return {
        "study": ostudy.study_name, "dataset": attrs.dataset,
        "variants": len(attrs.variants or []),
        "done": len(state.done), "units": attrs.units,
        "running": sum(t.state == TrialState.RUNNING for t in trials),
        "failed": len(failed_units(trials)),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "started": min((t.datetime_start for t in trials if t.datetime_start), default=None),
    }


def running_trials(ostudy: optuna.Study, storage: optuna.storages.RDBStorage) -> list[dict[str, Any]]:
    """The study's RUNNING trials with their worker (host, pid, device), epochs done and the age
    of their last heartbeat in seconds (None: none recorded)."""
    running = ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    try:
        beats = S.heartbeats(storage, [t._trial_id for t in running]) if running else {}
    except Exception:
        beats = {}
    now = beats.get(-1)
    rows = []
    for t in running:
        a = S.TrialAttrs.read(t.user_attrs)
        beat = beats.get(t._trial_id)
        age = (now - beat).total_seconds() if now is not None and beat is not None else None
        rows.append({"number": t.number, "unit": a.unit, "worker": a.worker, "epochs": len(a.history or []),
                     "started": t.datetime_start, "heartbeat_age": age})
    return rows
