"""The run loop: a study file becomes one Optuna study of trained variants in RDB storage.

Optuna organises everything (docs/storage.md says what is stored, ablate.storage how): each
*unit* of work (a variant's search trial, or one of its final seeded runs) is one trial. A worker
loops: it reaps trials of dead workers (Optuna's heartbeat), plans from the stored trials alone
(ablate.runs.scheduling), claims a unit under a database lock (ablate.storage.claim: exactly once,
however many workers), and runs it. Resuming is reading the storage: units with a counting trial
are done; a trial left RUNNING by a killed worker goes stale, and its unit is claimed again by
any worker and resumes from its checkpoint. Any number of processes, on any number of machines
(with PostgreSQL), run one study by running the same command: they share the storage and,
where checkpoints should move between machines, a checkpoint folder (docs/distributed.md).
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from optuna.trial import FrozenTrial, TrialState

from ablate import failpoints
from ablate import storage as S
from ablate.engine.checkpoint import CheckpointWriteError, remove_stale
from ablate.engine.data import Splits
from ablate.engine.models import measure
from ablate.engine.train import Epoch, Result, load_data, resolve_device, schedule, train, train_runs
from ablate.runs import diagnose, scheduling, stopping
from ablate.runs.options import GRACE_SECONDS, OptionError, check_grace, fuse_size, parse_fuse
from ablate.runs.scheduling import Unit, study_units
from ablate.runs.setup import create_or_check, distributions, expected_units, space_distributions, fixed_params, objective_metric, param_keys, suggest, trial_recipe, versions
from ablate.runs.trials import reap, run_group, run_trial
from ablate.spec import limits
from ablate.spec.paths import usable_dir, user_path
from ablate.spec.recipe import Recipe, input_info, recipe_dict
from ablate.spec.study import Study
from ablate.storage import outcomes

__all__ = ["Progress", "Runner", "run_study", "checkpoint_dir_for", "checkpoint_name", "TrialFailed"]

DriverError = S.StorageError  # a problem with the storage or a stored study; the message says how to fix it


class TrialFailed(Exception):
    """Raised inside a trial so Optuna records it as FAIL (after its `failure` is stored)."""


class _Sampled(Exception):
    """A sample whose architecture a stored trial trained: the trial ends with that trial's values."""

    def __init__(self, values: list[float]):
        super().__init__("sampled before")
        self.values = values


@dataclass
class Progress:
    """What the run reports as it goes; the CLI draws it (or not, when not on a terminal)."""

    on_start: Callable[[int, int], None] = lambda total, done: None  # units in all, already done
    on_trial: Callable[[Unit, int], None] = lambda unit, epochs: None  # a unit starts (epochs in it)
    on_epoch: Callable[[Unit, Epoch], None] = lambda unit, epoch: None
    on_finish: Callable[[Unit, FrozenTrial], None] = lambda unit, trial: None
    on_wait: Callable[[int], None] = lambda running: None  # units running elsewhere; waiting for them


# ---------------------------------------------------------------- checkpoints


def checkpoint_dir_for(storage_url: str) -> Path:
    """Beside a SQLite file (`~` expanded as for the database itself); under the user's cache for
    server storages."""
    db = S.sqlite_path(storage_url)
    if db is not None:
        db = db.absolute()
        return db.parent / f"{db.name}.checkpoints"
    return user_path("~/.cache/ablate/checkpoints")


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


def _physical_device(device: str) -> str:
    """cuda:0 as the machine numbers it (CUDA_VISIBLE_DEVICES renumbers what a process sees)."""
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if not device.startswith("cuda:") or not visible:
        return device
    ids = [v.strip() for v in visible.split(",") if v.strip()]
    index = int(device.split(":", 1)[1])
    return f"cuda:{ids[index]}" if index < len(ids) else device


# ---------------------------------------------------------------- the run


@dataclass
class _Job:
    """A trial being run: its unit, recipe and checkpoint, and what it has reported so far."""

    trial: optuna.Trial
    unit: Unit
    recipe: Recipe
    ckpt: Path
    on_epoch: Callable[[Epoch], None] | None = None
    history: list[dict[str, Any]] = field(default_factory=list)
    reported: set[int] = field(default_factory=set)
    start: float = field(default_factory=time.perf_counter)
    diagnostics: dict[str, Any] | None = None  # a final run's, measured at initialisation (ablate.runs.diagnose)


class Runner:
    """One worker's run of a study: its storage, data, units and device as fields; `run()` loops
    claim, train, record until the storage holds every unit (`run_study`)."""

    def __init__(self, study: Study, storage_url: str, *, device: str, data_dir: str | Path | None,
                 checkpoint_dir: str | Path | None, progress: Progress, download: bool, grace: int,
                 retry_failed: bool, fuse: int | str, storage_retry: float = S.STORAGE_RETRY_SECONDS):
        self.study, self.progress, self.grace, self.retry_failed = study, progress, check_grace(grace), retry_failed
        self.fuse = parse_fuse(fuse)
        self.device = resolve_device(device)
        failpoints.reach("storage-open")
        self.storage = S.open_storage(storage_url, grace=grace, retry=storage_retry)
        self.ostudy = create_or_check(study, self.storage)
        # The data first: a missing dataset is an error before anything is trained.
        self.data: Splits = load_data(study.data, study.recipe, device=self.device, data_dir=data_dir, download=download)
        self.units = study_units(study)
        self.by_key = {u.key: u for u in self.units}
        self.dists = distributions(study)
        root = usable_dir(checkpoint_dir, "--checkpoint-dir", create=True) if checkpoint_dir is not None else checkpoint_dir_for(storage_url)
        self.ckpt_dir = root / study.name
        self.env = versions()
        self.metric = objective_metric(study)
        self.device_name = str(self.device) if self.device.type == "cpu" else f"{self.device.type}:{torch.cuda.current_device()}"
        self.worker = S.Worker.here(_physical_device(self.device_name))
        self.spaces = {space.name: space for space in study.spaces}
        self.reports = study.sample is None or not study.sample.multi  # Optuna cannot report (or prune) a multi-objective trial
        if study.is_search:
            check_budget(study)
        self.costs: dict[str, tuple[int, int]] = {}  # architecture name -> (params, MACs), measured once
        self.checkpoints: dict[int, Path] = {}  # trial number -> its checkpoint, removed once the trial is stored
        self.retry: dict[str, int] = {}  # with retry_failed: unit key -> the number of its failed trial, retried once

    # -------------------------------------------------------- the loop

    def run(self) -> optuna.Study:
        with stopping.deferred():
            self._start()
            while True:
                stopping.check()
                reap(self.ostudy, self.storage, self.grace)
                records = self._records()
                self._set_units(records)
                plan = scheduling.plan(self.units, records, self.retry)
                _check_untrained(records)
                if plan.finished:
                    return self.ostudy
                if (plan.ready or plan.impossible) and self._claim_and_run(plan):
                    continue
                # Nothing to claim: units running elsewhere (or a killed worker's trial not yet stale).
                self.progress.on_wait(len(plan.running))
                _sleep(S.heartbeat_interval(self.grace))

    def _records(self) -> list[S.TrialRecord]:
        return S.records(self.ostudy.get_trials(deepcopy=False))

    def _set_units(self, records: list[S.TrialRecord]) -> None:
        """The study's units as the records make them (a search's final runs, once its samples are done)."""
        self.units = study_units(self.study, records)
        self.by_key = {u.key: u for u in self.units}


    def _start(self) -> None:
        reap(self.ostudy, self.storage, self.grace)
        records = self._records()
        self._set_units(records)
        done = scheduling.unit_state(records).done
        clean_checkpoints(self.ckpt_dir, set(done))
        if self.retry_failed:
            self.retry = {k: r.number for k, r in scheduling.failed_units(records).items()}
        self.progress.on_start(expected_units(self.study) or len(self.units), len(done) - len(self.retry))

    def _claim_and_run(self, plan: scheduling.Plan) -> bool:
        """Claim what the plan offers (final runs of one variant together, up to the fused
        group's size) and run it; False when another worker was quicker."""
        failpoints.reach("plan")
        size = 1
        if plan.ready and plan.ready[0].unit.kind == "final":
            size = self._fuse_size(plan.ready[0].unit)
        claimed = S.claim(self.storage, self.ostudy, self._candidates(plan),
                          lambda rs: scheduling.plan(study_units(self.study, rs), rs, self.retry).claimable, limit=size)
        running = [c.trial_id for c in claimed if c.running]
        if len(running) > 1:
            run_group(self.ostudy, self.storage, running, self._run_all, self._finished)
        elif running:
            run_trial(self.ostudy, self.storage, running[0], self._objective, self._finished)
        return bool(claimed)

    def _fuse_size(self, unit: Unit) -> int:
        macs = measure(unit.variant, input_info(self.study.info, self.study.recipe_for(unit.variant)))[1] if self.fuse == "auto" else 0
        return fuse_size(self.fuse, macs, self.device.type)

    def _candidates(self, plan: scheduling.Plan) -> list[S.Candidate]:
        out = [self._candidate(unit, fixed_params(self.study, unit, None), "FAIL", {
            "failure_kind": outcomes.NO_RECIPE,
            "failure": "no search trial of this variant completed, so there is no recipe to repeat"}) for unit in plan.impossible]
        for r in plan.ready:
            # Interrupted or killed: the same params, so its checkpoint resumes.
            params = dict(r.previous.params) if r.previous is not None and r.previous.params else {}
            if not params:
                params = fixed_params(self.study, r.unit, dict(r.best.params) if r.best is not None else None)
            out.append(self._candidate(r.unit, params, "RUNNING"))
        return out

    def _candidate(self, unit: Unit, params: dict[str, Any], state: str, extra: dict[str, Any] | None = None) -> S.Candidate:
        params = {k: v for k, v in params.items() if k in self.dists}
        return S.Candidate(unit.key, state, params, {k: self.dists[k] for k in params},
                           {**S.unit_attrs(unit, self.worker), **S.encode_trial_attrs(**(extra or {}))},
                           group=f"{unit.variant.name}/final" if unit.kind == "final" else unit.key)

    # -------------------------------------------------------- one trial

    def _sample(self, trial: optuna.Trial, unit: Unit) -> Unit:
        """A sample unit's architecture: its axes suggested by the sampler, its cost measured on the
        meta device; an infeasible or already sampled architecture fails the trial before training
        (its unit is then sampled again: ablate.runs.scheduling)."""
        space = self.spaces[unit.space]
        dists = space_distributions(self.study)
        # Read the study's trials first: Optuna's cached storage writes a param only for a trial
        # it has read (this one was created by the claim, not by Optuna), and the sampler learns from them.
        self.ostudy.get_trials(deepcopy=False)
        values = {a.key: suggest(trial, a.key, dists[a.key]) for a in space.axes}
        S.set_trial_attrs(trial, space=space.name)
        try:
            spec = space.spec(values)
        except ValueError as exc:
            S.set_trial_attrs(trial, failure_kind=outcomes.INFEASIBLE, failure=f"not a valid network: {exc}")
            raise TrialFailed(str(exc)) from None
        if spec.name not in self.costs:  # a sampler may propose one architecture many times
            self.costs[spec.name] = measure(spec, input_info(self.study.info, self.study.recipe))
        params, macs = self.costs[spec.name]
        S.set_trial_attrs(trial, variant=spec.name, spec=spec.axes(), params=params, macs=macs)
        assert self.study.sample is not None
        why = self.study.sample.over_budget(params, macs)
        kind = outcomes.INFEASIBLE
        if why is None:
            twin = self._twin(trial.number, spec.name)
            if twin is not None and (twin.state == TrialState.COMPLETE and twin.values
                                     or twin.state == TrialState.PRUNED and self.reports):
                # Trained before: the sampler is told that trial's result again (its values, or the
                # epochs it reported before it was pruned), and nothing is trained.
                a = S.TrialAttrs.read(twin.user_attrs)
                S.set_trial_attrs(trial, duplicate_of=twin.number, val_error=a.val_error, test_error=a.test_error)
                if twin.state == TrialState.PRUNED:
                    for step, value in sorted(twin.intermediate_values.items()):
                        trial.report(value, step)
                raise _Sampled(list(twin.values or ()))
            why = None if twin is None else f"{spec.name} was sampled before (trial {twin.number}, {twin.state.name.lower()}); an architecture is trained once"
            kind = outcomes.DUPLICATE
        if why is not None:
            S.set_trial_attrs(trial, failure_kind=kind, failure=why)
            raise TrialFailed(why)
        return dataclasses.replace(unit, variant=spec)

    def _twin(self, number: int, name: str) -> FrozenTrial | None:
        """The trial that trained (or is training) the architecture `name`: a sample or a final run."""
        return next((t for t in self.ostudy.get_trials(deepcopy=False, states=_TRAINED)
                     if t.number != number and t.user_attrs.get(S.trial_key("variant")) == name
                     and S.TrialAttrs.read(t.user_attrs).duplicate_of is None), None)

    def _prepare(self, trial: optuna.Trial) -> _Job:
        """A claimed trial made ready to train: its params suggested, recipe and checkpoint chosen."""
        unit = self.by_key[S.TrialAttrs.read(trial.user_attrs).unit]
        if unit.kind == "sample":
            unit = self._sample(trial, unit)
        # A search's finalist: its axes that the spaces sample are params; the others are in its `spec`.
        params = {name: suggest(trial, name, self.dists[name]) for name in param_keys(self.study, unit) if name in self.dists}
        recipe = trial_recipe(self.study, unit, params)
        S.set_trial_attrs(trial, recipe=recipe_dict(recipe), device=self.device_name, versions=self.env,
                          data=self.data.source)  # data: the folder the files came from, or the bundled subset
        job = _Job(trial, unit, recipe, self.ckpt_dir / checkpoint_name(unit, recipe))
        self.checkpoints[trial.number] = job.ckpt
        job.on_epoch = lambda e: self._on_epoch(job, e)
        if unit.kind == "final":
            job.diagnostics = diagnose.initial(self.study.diagnostics, unit.variant, recipe, self.data, unit.seed, self.device)
        self.progress.on_trial(unit, schedule(recipe, len(self.data.train.labels)).epochs)
        return job

    def _on_epoch(self, job: _Job, e: Epoch) -> None:
        value = getattr(e, self.metric)
        if self.reports:
            job.trial.report(value, e.epoch)
        job.reported.add(e.epoch)
        job.history.append(dataclasses.asdict(e))
        S.set_trial_attrs(job.trial, history=job.history)  # live: a report of a running study shows it
        self.progress.on_epoch(job.unit, e)
        if job.unit.kind in ("search", "sample") and self.reports and job.trial.should_prune():
            against = "the other sampled architectures" if job.unit.kind == "sample" else "the variant's median"
            raise optuna.TrialPruned(f"{self.metric.replace('_', ' ')} {value:.4f} at epoch {e.epoch} is worse than {against}")

    def _objective(self, trial: optuna.Trial) -> float:
        try:
            job = self._prepare(trial)
        except _Sampled as sampled:  # trained before: that trial's values (or its pruning), nothing trained
            if not sampled.values:
                raise optuna.TrialPruned(f"sampled again: trial {S.TrialAttrs.read(trial.user_attrs).duplicate_of} was pruned") from None
            return sampled.values if len(sampled.values) > 1 else sampled.values[0]  # type: ignore[return-value]
        except TrialFailed:  # its reason is stored
            raise
        except Exception as exc:  # recorded as the trial's own failure: the study goes on
            S.set_trial_attrs(trial, failure=" ".join(f"{type(exc).__name__}: {exc}".split())[:2000],
                              failure_kind=outcomes.exception_kind(exc))
            raise
        return self._conclude(job, lambda: train(job.unit.variant, job.recipe, self.data, device=self.device, seed=job.unit.seed,
                                                 callback=job.on_epoch, checkpoint=job.ckpt, poll=stopping.check))

    def _run_all(self, trials: list[optuna.Trial]) -> list[Callable[[], float]]:
        """Claimed trials trained together: one fused network per variant and recipe (a trial
        whose preparation failed, alone). For each trial, a function giving its value or raising."""
        results: dict[int, Any] = {}
        jobs = []
        for t in trials:
            try:
                jobs.append(self._prepare(t))
            except Exception as exc:  # noqa: BLE001 (recorded as that trial's failure)
                results[t.number] = exc
        groups: dict[tuple[Any, ...], list[_Job]] = {}
        for j in jobs:
            groups.setdefault((j.unit.variant, j.recipe), []).append(j)
        stop: BaseException | None = None
        for group in groups.values():
            try:
                if stop is not None:  # a stop ends every group still to run
                    raise stop
                out = self._train_group(group)
            except BaseException as exc:  # a stop, a full disk, an error of the network: every run of the group
                stop = exc if not isinstance(exc, Exception) else stop
                out = [exc] * len(group)
            results.update((j.trial.number, r) for j, r in zip(group, out))
        by_number = {j.trial.number: j for j in jobs}
        return [self._concluder(by_number.get(t.number), results[t.number]) for t in trials]

    def _concluder(self, job: _Job | None, result: Any) -> Callable[[], float]:
        def run() -> Any:
            if isinstance(result, BaseException):
                raise result
            return result

        return run if job is None else (lambda: self._conclude(job, run))

    def _train_group(self, jobs: list[_Job]) -> list[Result | BaseException]:
        """One fused network for the jobs (same variant and recipe): each one's Result or exception."""
        first = jobs[0]
        return train_runs(first.unit.variant, first.recipe, self.data, seeds=[j.unit.seed for j in jobs], device=self.device,
                          callbacks=[j.on_epoch for j in jobs], checkpoints=[j.ckpt for j in jobs], poll=stopping.check)

    def _conclude(self, job: _Job, run: Callable[[], Result]) -> float:
        """The trial's value from `run()`'s result, its attributes stored; or the failure, recorded."""
        trial = job.trial
        try:
            result = run()
        except (optuna.TrialPruned, optuna.exceptions.UpdateFinishedTrialError):  # pruned; or taken for dead elsewhere
            raise
        except stopping.Stop as stop:  # SIGINT / SIGTERM: not the unit's fault; retried at once, from its checkpoint
            S.set_trial_attrs(trial, failure_kind=stop.kind, failure=f"{stop.reason} after {_epochs(len(job.reported))}; "
                              "the next run resumes it from its checkpoint")
            raise
        except CheckpointWriteError as exc:  # a full disk: stop the run, keep the last checkpoint
            S.set_trial_attrs(trial, failure_kind=outcomes.STORAGE, failure=str(exc))
            raise stopping.Stop(f"{exc}; free space (or give --checkpoint-dir) and run the same command again: "
                                "the run resumes from the last checkpoint", outcomes.STORAGE, 1) from None
        except Exception as exc:
            S.set_trial_attrs(trial, failure=" ".join(f"{type(exc).__name__}: {exc}".split())[:2000],
                              failure_kind=outcomes.exception_kind(exc))
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
            raise
        self._record(job, result)
        value = getattr(result.final, self.metric)
        if not self.reports:  # two objectives: the error, then the architecture's cost
            assert self.study.sample is not None
            return [value, float(getattr(result, self.study.sample.objectives[1]))]  # type: ignore[return-value]
        return value

    def _record(self, job: _Job, result: Result) -> None:
        """A finished run's results as the trial's attributes; a diverged run fails the trial."""
        trial, data = job.trial, self.data
        job.history[:] = [dataclasses.asdict(e) for e in result.history]  # restored epochs included
        for e in result.history:  # epochs restored from a checkpoint were reported by the killed trial
            if e.epoch not in job.reported and self.reports:
                trial.report(getattr(e, self.metric), e.epoch)
        S.set_trial_attrs(
            trial, params=result.params, macs=result.macs, history=job.history,
            train_error=result.train_error, test_error=result.test_error,
            val_error=result.final.val_error if result.final else None,
            images_per_second=result.images_per_second, seconds=time.perf_counter() - job.start,
            resumed_from=result.resumed_from,
        )
        if result.diverged:
            S.set_trial_attrs(trial, failure=f"diverged: {result.reason}", failure_kind=outcomes.DIVERGED,
                              diverged_epoch=result.diverged_epoch)
            raise TrialFailed(result.reason)
        if job.unit.kind == "final":  # a run at chance level is kept, but out of the means (ablate.analysis)
            flat = outcomes.did_not_learn(result.train_error, len(data.train), result.test_error, len(data.test), data.info.classes)
            if flat is not None:
                S.set_trial_attrs(trial, did_not_learn=flat)
            S.set_trial_attrs(trial, diagnostics=diagnose.final(job.diagnostics, self.study.diagnostics, job.unit.variant,
                                                                job.recipe, data, job.unit.seed, self.device, job.ckpt))

    def _finished(self, trial: FrozenTrial) -> None:
        # The trial is in the storage now; only then may its checkpoint go (a kill before this
        # line leaves it for the next run to clean up, never a unit without either).
        failpoints.reach("trial-complete")
        ckpt = self.checkpoints.pop(trial.number, None)
        if ckpt is not None and (trial.state != TrialState.FAIL or outcomes.is_own(outcomes.failure_kind(trial.state, trial.user_attrs))):
            ckpt.unlink(missing_ok=True)
        key = S.TrialAttrs.read(trial.user_attrs).unit
        if key in self.by_key:
            self.progress.on_finish(self.by_key[key], trial)


_TRAINED = (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING)


def check_budget(study: Study) -> None:
    """Every space holds an architecture within the budget; else one line naming the budget and
    the smallest architecture's cost (measured on the meta device)."""
    assert study.sample is not None
    for space in study.spaces:
        costs = [(measure(spec, input_info(study.info, study.recipe)), spec) for spec in space.cheapest_candidates()]
        if costs and all(study.sample.over_budget(p, m) for (p, m), _ in costs):
            (params, macs), spec = min(costs, key=lambda c: (c[0][1], c[0][0]))
            budget = "max_macs" if study.sample.max_macs is not None and macs > study.sample.max_macs else "max_params"
            raise OptionError(f"sample.{budget}: no architecture of space {space.name!r} fits the budget; the smallest, "
                              f"{spec.name}, has {macs} MACs and {params} parameters; raise {budget} or make the space smaller")


def _check_untrained(records: list[S.TrialRecord]) -> None:
    """A sampler that keeps drawing what cannot be trained (infeasible, or sampled before) stops the run."""
    untrained = 0
    for r in records:  # the latest samples that could not be trained, in a row
        if r.failure_kind in outcomes.NOT_TRAINED or r.duplicate_of is not None:
            untrained += 1
        elif r.state != "FAIL":  # a trained sample (or one training now) ends the run of misses
            untrained = 0
    if untrained >= limits.MAX_INFEASIBLE:
        raise OptionError(f"sample.count: the last {untrained} samples could not be trained (over the budget or sampled before); "
                          "the space may hold fewer feasible architectures than count: lower count, widen the space or raise the budget")


def _epochs(n: int) -> str:
    return f"{n} epoch" + ("" if n == 1 else "s")


def _sleep(seconds: float) -> None:
    """Wait, stopping at once on a signal."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(0.25, left))
        stopping.check()


def run_study(
    study: Study,
    storage_url: str = S.DEFAULT_STORAGE,
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
    (auto, off, or K; ablate.engine.train.train_runs); an execution choice, stored as if run one by one.
    `storage_retry`: seconds a storage that went away (a restart, a lost connection, a lock) is
    retried before the run stops (ablate.storage.retry).
    `retry_failed`: also run once more every unit whose failure was its own (diverged, out of
    memory, ...); units interrupted or killed are always retried. A SIGINT or SIGTERM (with
    `stopping.handled()` in force) stops the run between steps with `stopping.Stop`, and so does a
    checkpoint that cannot be written; the trial is marked for retry and its checkpoint kept.
    """
    if S.in_memory(storage_url):
        raise OptionError(f"--storage: {storage_url} is an in-memory database: nothing in it would outlive this run, "
                         "and other workers could not see it; give a file, e.g. sqlite:///ablate.db")
    return Runner(study, storage_url, device=device, data_dir=data_dir, checkpoint_dir=checkpoint_dir,
                  progress=progress or Progress(), download=download, grace=grace, retry_failed=retry_failed, fuse=fuse,
                  storage_retry=storage_retry).run()
