"""The study driver: a study file becomes one Optuna study of trained variants in RDB storage.

Optuna organises everything (docs/storage.md says what is stored): each *unit* of work (a
variant's search trial, or one of its final seeded runs) is one trial, enqueued with its fixed
params (the variant's axes, the seed) and run by `study.optimize(n_trials=1)`, which brings
Optuna's heartbeat, failure recording and pruning. Resuming is reading the storage: units with
a finished trial are done; a trial left RUNNING by a killed process goes stale, Optuna's
heartbeat fails it and enqueues a retry, and the retry resumes from the unit's checkpoint.
Several processes (on several machines, with PostgreSQL) can run the same study: they share the
storage and nothing else.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import functools
import hashlib
import json
import math
import platform
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import optuna
import torch
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from ablate import __version__, failpoints, outcomes, stopping
from ablate.checkpoint import CheckpointWriteError, remove_stale
from ablate.study import FIRST_SEED, Study
from ablate.tables import safe_url, selection_error
from ablate.train import Epoch, Recipe, load_data, resolve_device, schedule, train, train_runs
from ablate.variants import VariantSpec

DEFAULT_STORAGE = "sqlite:///ablate.db"
GRACE_SECONDS = 30  # a RUNNING trial whose heartbeat is older than this is stale (its process died)



def _quiet_experimental(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Heartbeats and stale-trial retries are marked experimental in Optuna; they are what we need."""

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            return fn(*args, **kwargs)

    return wrapper


class DriverError(Exception):
    """A problem with the storage or a stored study; the message says how to fix it."""


class TrialFailed(Exception):
    """Raised inside a trial so Optuna records it as FAIL (after `failure` is set)."""


# ---------------------------------------------------------------- units


@dataclass(frozen=True)
class Unit:
    variant: VariantSpec
    kind: str  # "search" | "final"
    index: int
    first_seed: int = FIRST_SEED  # [seeds] start: the seed of final run 0

    @property
    def seed(self) -> int:
        # Search trials share seed 0, so hyperparameters are compared on one initialisation; final
        # runs use fresh seeds (1..count unless [seeds] start moves them), so a variant's reported
        # error is not the best of its search.
        return 0 if self.kind == "search" else self.first_seed + self.index

    @property
    def key(self) -> str:
        return f"{self.variant.name}/{self.kind}/{self.index}"


def study_units(study: Study) -> list[Unit]:
    """Every unit, variant by variant: its search trials, then its final runs."""
    units = []
    for spec in study.variants:
        if study.search is not None:
            units += [Unit(spec, "search", i) for i in range(study.search.trials)]
        units += [Unit(spec, "final", i, study.first_seed) for i in range(study.seeds)]
    return units


# ---------------------------------------------------------------- what a trial's params are


def _scalar(value: Any) -> Any:
    """Recipe values as Optuna params: tuples become strings ("crop+flip")."""
    if isinstance(value, tuple):
        return "+".join(map(str, value)) or "none"
    return value


def axis_params(spec: VariantSpec) -> dict[str, Any]:
    return {
        "connection": spec.connection, "activation": spec.activation, "block": spec.block,
        "depth": spec.depth, "shortcut": spec.shortcut or "none", "stem": spec.stem,
        "width": spec.width, "blocks": "-".join(map(str, spec.blocks)),
    }


def _recipes(study: Study) -> list[Recipe]:
    return [study.recipe_for(spec) for spec in study.variants]


def distributions(study: Study) -> dict[str, BaseDistribution]:
    """One distribution per param over the whole study, so every trial's params are compatible
    and the dashboard's slice / parallel-coordinate / importance plots span the ablation axes.
    A recipe key that a variant overrides spans every variant's value."""
    dists: dict[str, BaseDistribution] = {}
    axes = [axis_params(s) for s in study.variants]
    for key in ("connection", "activation", "block", "shortcut", "stem", "blocks"):
        dists[key] = CategoricalDistribution(sorted({a[key] for a in axes}))
    for key in ("depth", "width"):
        dists[key] = IntDistribution(min(a[key] for a in axes), max(a[key] for a in axes))
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
        values = [_scalar(getattr(r, f.name)) for r in recipes if getattr(r, f.name) is not None]
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
    params = {**axis_params(unit.variant), "seed": unit.seed}
    searched = {p.key for p in study.search.space} if study.search else set()
    recipe = study.recipe_for(unit.variant)
    for f in dataclasses.fields(Recipe):
        value = getattr(recipe, f.name)
        if f.name in searched:
            if unit.kind == "final":
                params[f.name] = best[f.name] if best is not None else value
        elif value is not None:
            params[f.name] = _scalar(value)
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


def definition(study: Study) -> str:
    """Canonical JSON of everything that decides the results; a re-run must match it."""
    doc = {
        "dataset": study.dataset,
        "variants": [s.axes() for s in study.variants],
        "recipe": recipe_dict(study.recipe),
        "search": study.search.describe() if study.search else None,
        "seeds": study.seeds,
    }
    if study.first_seed != FIRST_SEED:  # only when moved: storages written before [seeds] start keep their definition
        doc["first_seed"] = study.first_seed
    if study.overrides:
        doc["overrides"] = study.overrides
    return json.dumps(doc, sort_keys=True)


def recipe_dict(recipe: Recipe) -> dict[str, Any]:
    return {k: list(v) if isinstance(v, tuple) else v for k, v in dataclasses.asdict(recipe).items()}


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
    """An in-memory copy of `study` holding only the finished search trials of `trial`'s variant."""
    variant = trial.user_attrs.get("variant")
    shadow = optuna.create_study(direction="minimize")
    shadow.add_trials(
        t for t in study.get_trials(deepcopy=False, states=states)
        if t.user_attrs.get("variant") == variant and t.user_attrs.get("kind") == "search"
    )
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
        shadow = _same_variant(study, trial, (TrialState.COMPLETE, TrialState.PRUNED))
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
        inner = optuna.samplers.TPESampler(n_startup_trials=max(2, study.search.trials // 3))
    return PerVariantSampler(inner)


def _pruner(study: Study) -> optuna.pruners.BasePruner:
    if study.search is None or study.search.pruner == "none":
        return optuna.pruners.NopPruner()
    return PerVariantPruner(optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))


# ---------------------------------------------------------------- storage


def heartbeat_for(grace: int) -> int:
    return max(1, grace // 3)


def storage_for_run(url: str, grace: int = GRACE_SECONDS) -> optuna.storages.RDBStorage:
    """RDB storage with Optuna's heartbeat: stale trials are failed and retried with their params."""
    return _open(url, grace=grace)


def open_storage(url: str) -> optuna.storages.RDBStorage:
    """RDB storage for reading (ls, show, report, dashboard)."""
    return _open(url, grace=None)


@_quiet_experimental
def _open(url: str, grace: int | None) -> optuna.storages.RDBStorage:
    import sqlalchemy

    try:
        parsed = sqlalchemy.engine.make_url(url)
    except Exception:
        raise DriverError(f"--storage: {url!r} is not a database URL; use e.g. {DEFAULT_STORAGE} or postgresql+psycopg://user@host/db") from None
    kwargs: dict[str, Any] = {}
    if parsed.get_backend_name() == "sqlite":
        database = parsed.database
        if database and database != ":memory:" and not Path(database).expanduser().parent.exists():
            raise DriverError(f"--storage: the folder of {database} does not exist; create it or choose another path")
        kwargs["engine_kwargs"] = {"connect_args": {"timeout": 60}}
    if grace is not None:
        kwargs.update(
            heartbeat_interval=heartbeat_for(grace), grace_period=grace,
            heartbeat_stale_trial_callback=optuna.storages.RetryHeartbeatStaleTrialCallback(max_retry=3),
        )
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except ModuleNotFoundError as exc:
        raise DriverError(f"--storage: {safe_url(url)}: the database driver is not installed ({exc.name}); install it or use SQLite") from None
    except Exception as exc:  # SQLAlchemy and Optuna errors: connection refused, bad schema, ...
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise DriverError(f"--storage: cannot open {safe_url(url)}: {first}") from None


# ---------------------------------------------------------------- progress of a study in storage


@dataclass(frozen=True)
class UnitState:
    done: dict[str, FrozenTrial]  # unit key -> its latest finished trial (COMPLETE, PRUNED, or FAIL of its own)
    in_flight: set[str]  # units with a WAITING or RUNNING trial
    interrupted: dict[str, FrozenTrial]  # units whose last attempt failed for a reason not their own (ablate.outcomes)


def unit_state(trials: list[FrozenTrial]) -> UnitState:
    done: dict[str, FrozenTrial] = {}
    in_flight: set[str] = set()
    interrupted: dict[str, FrozenTrial] = {}
    for t in trials:  # in trial order: a unit retried with --retry-failed is done by its latest attempt
        key = t.user_attrs.get("unit")
        if key is None:
            continue
        if t.state in (TrialState.COMPLETE, TrialState.PRUNED) or outcomes.is_own(outcomes.failure_kind(t.state, t.user_attrs)):
            done[key] = t
        elif t.state in (TrialState.WAITING, TrialState.RUNNING):
            in_flight.add(key)
        elif t.state == TrialState.FAIL:
            interrupted[key] = t
    return UnitState(done, in_flight - set(done), {k: t for k, t in interrupted.items() if k not in done})


def failed_units(trials: list[FrozenTrial]) -> dict[str, FrozenTrial]:
    """Units whose latest finished attempt failed for a reason of their own: unit key -> that trial."""
    return {k: t for k, t in unit_state(trials).done.items() if t.state == TrialState.FAIL}


def checkpoint_name(unit: Unit, recipe: Recipe) -> str:
    """A unit's checkpoint file: its key and a tag of what it trains, so a changed recipe never resumes."""
    tag = hashlib.sha1(f"{recipe!r}/{unit.seed}".encode()).hexdigest()[:10]
    return f"{_checkpoint_prefix(unit.key)}{tag}.pt"


def _checkpoint_prefix(key: str) -> str:
    return f"{key.replace('/', '_')}-"


def clean_checkpoints(ckpt_dir: Path, state: UnitState) -> None:
    """A killed run's leftovers: temporary files of interrupted writes, and checkpoints of units
    that are done (a run killed between recording a trial and removing its checkpoint)."""
    remove_stale(ckpt_dir)
    if not ckpt_dir.is_dir():
        return
    for p in ckpt_dir.glob("*.pt"):
        if any(p.name.startswith(_checkpoint_prefix(k)) for k in state.done):
            p.unlink(missing_ok=True)


def best_search_trial(trials: list[FrozenTrial], variant: str) -> FrozenTrial | None:
    complete = [t for t in trials if t.state == TrialState.COMPLETE and t.user_attrs.get("variant") == variant
                and t.user_attrs.get("kind") == "search"]
    return min(complete, key=lambda t: (selection_error(t.user_attrs.get("val_error"), t.value), t.number)) if complete else None


# ---------------------------------------------------------------- the run


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
    from ablate.models import measure

    recipe = study.recipe_for(spec)
    info = study.info if recipe.resize is None else dataclasses.replace(study.info, size=recipe.resize)
    _, macs = measure(spec, info)
    table = GPU_FUSE if device.type == "cuda" else CPU_FUSE
    return next((k for limit, k in table if macs <= limit), 1)


def pick_group(pending: list[Unit], size: int) -> list[Unit]:
    """The units to run next, together: the first pending one and, when it is a final run, up to
    `size` - 1 more final runs of the same variant (the same recipe, other seeds), in order.
    A pure function of the pending units, so the pick can go through a claim of its own."""
    first = pending[0]
    if first.kind != "final" or size <= 1:
        return [first]
    return [first, *[u for u in pending[1:] if u.kind == "final" and u.variant == first.variant][:size - 1]]


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


def _run_group(ostudy: optuna.Study, storage, prepare, train_group, conclude, finished, n: int) -> None:
    """Run the `n` oldest queued trials at once, as `optimize` runs one: each has its heartbeat,
    its own reports and attributes, and is told its own state, then `finished` is called for it.
    Trials of the same variant and recipe train as one fused network (`train_group`); a trial
    queued by another process for another variant trains in a group of its own."""
    from optuna.storages._heartbeat import get_heartbeat_thread

    with warnings.catch_warnings():  # "Heartbeat ... supposed to be used with Study.optimize": it is run here, below
        warnings.simplefilter("ignore", UserWarning)
        trials = [ostudy.ask() for _ in range(n)]
    told: list[tuple[optuna.Trial, TrialState, float | None, BaseException | None]] = []
    with contextlib.ExitStack() as beats:
        for t in trials:
            beats.enter_context(get_heartbeat_thread(t._trial_id, storage))
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
        frozen = ostudy.tell(t, value, state=state) if state == TrialState.COMPLETE else ostudy.tell(t, state=state)
        finished(ostudy, frozen)
        if isinstance(exc, KeyboardInterrupt) and raise_after is None:  # a stop: after every trial is told
            raise_after = exc
    if raise_after is not None:
        raise raise_after



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
) -> optuna.Study:
    """Train every unit of `study` that the storage does not hold yet; returns the Optuna study.

    `grace`: seconds after which a RUNNING trial without heartbeat is taken for dead and retried.
    `retry_failed`: also run once more every unit whose failure was its own (diverged, out of
    memory, ...); units interrupted or killed are always retried. A SIGINT or SIGTERM (with
    `stopping.handled()` in force) stops the run between steps with `stopping.Stop`, and so does a
    checkpoint that cannot be written; the trial is marked for retry and its checkpoint kept.
    `fuse`: train up to this many final runs of one variant at once as one fused network
    (`fuse_size`, `ablate.train.train_runs`): an execution choice, not part of the study's
    definition; each run is its own trial, stored as if it had run alone.
    """
    progress = progress or Progress()
    dev = resolve_device(device)
    check_fuse(fuse)
    if grace < 2:
        raise ValueError(f"--grace-period: {grace} is too short; use at least 2 seconds (default {GRACE_SECONDS})")
    storage = storage_for_run(storage_url, grace)
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

    def prepare(trial: optuna.Trial) -> _Job:
        unit = by_key[trial.user_attrs["unit"]]
        params = {name: _suggest(trial, name, dists[name]) for name in param_keys(study, unit)}
        recipe = trial_recipe(study, unit, params)
        trial.set_user_attr("recipe", recipe_dict(recipe))
        trial.set_user_attr("device", str(dev) if dev.type == "cpu" else f"{dev.type}:{torch.cuda.current_device()}")
        trial.set_user_attr("versions", env)
        trial.set_user_attr("data", data.source)  # the folder the files came from, or the bundled subset
        ckpt = ckpt_dir / checkpoint_name(unit, recipe)
        checkpoints[trial.number] = ckpt
        job = _Job(trial, unit, recipe, ckpt)

        def on_epoch(e: Epoch) -> None:
            trial.report(getattr(e, metric), e.epoch)
            job.reported.add(e.epoch)
            job.history.append(dataclasses.asdict(e))
            trial.set_user_attr("history", job.history)  # live: a report of a running study shows it
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
        except stopping.Stop as stop:  # SIGINT / SIGTERM: not the unit's fault; retried at once, from its checkpoint
            _mark_for_retry(trial, stop.kind, f"{stop.reason} after {len(job.reported)} epochs; the next run resumes it from its checkpoint")
            raise
        except CheckpointWriteError as exc:  # a full disk: stop the run, keep the last checkpoint
            _mark_for_retry(trial, outcomes.STORAGE, str(exc))
            raise stopping.Stop(f"{exc}; free space (or give --checkpoint-dir) and run the same command again: "
                                "the run resumes from the last checkpoint", outcomes.STORAGE, 1) from None
        except Exception as exc:
            trial.set_user_attr(outcomes.FAILURE, " ".join(f"{type(exc).__name__}: {exc}".split())[:2000])
            trial.set_user_attr(outcomes.FAILURE_KIND, outcomes.exception_kind(exc))
            if dev.type == "cuda":
                torch.cuda.empty_cache()
            raise
        history[:] = [dataclasses.asdict(e) for e in result.history]  # restored epochs included
        for e in result.history:  # epochs restored from a checkpoint were reported by the killed trial
            if e.epoch not in job.reported:
                trial.report(getattr(e, metric), e.epoch)
        attrs = {
            "params": result.params, "macs": result.macs, "history": history,
            "train_error": result.train_error, "test_error": result.test_error,
            "val_error": result.final.val_error if result.final else None,
            "images_per_second": result.images_per_second, "seconds": time.perf_counter() - job.start,
            "resumed_from": result.resumed_from,
        }
        for k, v in attrs.items():
            trial.set_user_attr(k, v)
        if result.diverged:
            trial.set_user_attr(outcomes.FAILURE, f"diverged: {result.reason}")
            trial.set_user_attr(outcomes.FAILURE_KIND, outcomes.DIVERGED)
            trial.set_user_attr("diverged_epoch", result.diverged_epoch)
            raise TrialFailed(result.reason)
        if unit.kind == "final":  # a run at chance level is kept, but out of the means (ablate.tables)
            flat = outcomes.did_not_learn(result.train_error, len(data.train), result.test_error, len(data.test), data.info.classes)
            if flat is not None:
                trial.set_user_attr(outcomes.DID_NOT_LEARN, flat)
        return getattr(result.final, metric)

    def objective(trial: optuna.Trial) -> float:
        job = prepare(trial)
        return conclude(job, lambda: train(job.unit.variant, job.recipe, data, device=dev, seed=job.unit.seed,
                                           callback=job.on_epoch, checkpoint=job.ckpt, poll=stopping.check))

    def train_group(jobs: list[_Job]) -> list[Any]:
        """One fused network for the jobs (same variant and recipe): each one's Result or exception."""
        return train_runs(jobs[0].unit.variant, jobs[0].recipe, data, seeds=[j.unit.seed for j in jobs], device=dev,
                          callbacks=[j.on_epoch for j in jobs], checkpoints=[j.ckpt for j in jobs], poll=stopping.check)

    def finished(_: optuna.Study, trial: FrozenTrial) -> None:
        # The trial is in the storage now; only then may its checkpoint go (a kill before this
        # line leaves it for the next run to clean up, never a unit without either).
        failpoints.reach("trial-complete")
        ckpt = checkpoints.pop(trial.number, None)
        if ckpt is not None and (trial.state != TrialState.FAIL or outcomes.is_own(outcomes.failure_kind(trial.state, trial.user_attrs))):
            ckpt.unlink(missing_ok=True)
        if trial.user_attrs.get("unit") in by_key:
            progress.on_finish(by_key[trial.user_attrs["unit"]], trial)

    checkpoints: dict[int, Path] = {}
    first = True
    retry: dict[str, int] = {}  # with retry_failed: unit key -> the number of its failed trial, retried once
    with stopping.deferred():
        while True:
            stopping.check()
            _fail_unbeaten(ostudy, storage, grace)
            _quiet_experimental(optuna.storages.fail_stale_trials)(ostudy)  # a killed run's trials: FAIL, and a WAITING retry
            trials = ostudy.get_trials(deepcopy=False)
            state = unit_state(trials)
            if first:
                clean_checkpoints(ckpt_dir, state)
                if retry_failed:
                    retry = {k: t.number for k, t in failed_units(trials).items()}
                progress.on_start(len(units), len(state.done) - len(retry))
                first = False
            group = functools.partial(_run_group, ostudy, storage, prepare, train_group, conclude, finished)
            if not _step(ostudy, study, units, trials, state, retry, dists, objective, finished, progress, grace,
                         lambda unit: fuse_size(fuse, unit.variant, study, dev), group):
                return ostudy


def _fail_unbeaten(ostudy: optuna.Study, storage: optuna.storages.RDBStorage, grace: int) -> None:
    """Optuna's heartbeat only finds trials that beat once: a process killed between taking a trial
    (RUNNING) and its first heartbeat leaves one that never goes stale, and every later run would
    wait for it. Such a trial, older than the grace period, is failed here (then retried as killed)."""
    now = datetime.datetime.now()  # Optuna stores datetime_start in local time
    old = [t for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
           if t.datetime_start is not None and (now - t.datetime_start).total_seconds() > grace]
    if not old:
        return
    try:  # Optuna keeps heartbeats in its own table; there is no public way to ask for them
        from optuna.storages._rdb.models import TrialHeartbeatModel
        from optuna.storages._rdb.storage import _create_scoped_session

        with _create_scoped_session(storage.scoped_session) as session:
            ids = [t._trial_id for t in old]
            beaten = {tid for (tid,) in session.query(TrialHeartbeatModel.trial_id).filter(TrialHeartbeatModel.trial_id.in_(ids))}
    except Exception:  # another Optuna: leave it to the heartbeat
        return
    for t in old:
        if t._trial_id not in beaten:
            try:
                storage.set_trial_state_values(t._trial_id, state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:  # it finished meanwhile, or another worker failed it
                pass


def _mark_for_retry(trial: optuna.Trial, kind: str, reason: str) -> None:
    trial.set_user_attr(outcomes.FAILURE_KIND, kind)
    trial.set_user_attr(outcomes.FAILURE, reason)


def _step(ostudy, study, units, trials, state, retry, dists, objective, finished, progress, grace,
          fuse=lambda unit: 1, run_group=None) -> bool:
    """Queue and run the next unit (or group of units, `pick_group`), or wait for units running
    elsewhere; False when all are done."""
    done = {k for k, t in state.done.items() if retry.get(k) != t.number}
    waiting = [t for t in trials if t.state == TrialState.WAITING]
    busy = {t.user_attrs.get("unit") for t in trials if t.state in (TrialState.WAITING, TrialState.RUNNING)}
    pending = [u for u in units if u.key not in done and u.key not in busy]
    runnable = [u for u in pending if u.kind == "search" or _search_finished(u, units, done)]
    if not waiting and runnable:  # nothing queued: queue the next unit, or group of units
        group = pick_group(runnable, fuse(runnable[0]))
        for unit in group:
            previous = state.interrupted.get(unit.key)
            # Interrupted or killed: the same params, so its checkpoint resumes (a trial killed before its
            # objective ran has no params yet: those it was enqueued with, in Optuna's `fixed_params`).
            params = {**previous.system_attrs.get("fixed_params", {}), **previous.params} if previous is not None else {}
            if not params:
                best = best_search_trial(trials, unit.variant.name) if unit.kind == "final" and study.search else None
                if unit.kind == "final" and study.search and best is None:
                    _record_impossible(ostudy, study, unit, dists)
                    return True
                params = fixed_params(study, unit, best.params if best else None)
            ostudy.enqueue_trial(params, user_attrs={
                "unit": unit.key, "variant": unit.variant.name, "kind": unit.kind, "index": unit.index, "seed": unit.seed,
            })
        if len(group) > 1 and run_group is not None:
            run_group(len(group))
            return True
    if waiting or runnable:  # run the oldest queued trial, whichever process queued it
        ostudy.optimize(objective, n_trials=1, catch=(Exception,), gc_after_trial=False, callbacks=[finished])
        return True
    if state.in_flight:  # running elsewhere (or a killed run's trial not yet stale): wait
        progress.on_wait(len(state.in_flight))
        _sleep(heartbeat_for(grace))
        return True
    return False


def _sleep(seconds: float) -> None:
    """Wait, stopping at once on a signal."""
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        time.sleep(min(0.25, left))
        stopping.check()


def _search_finished(unit: Unit, units: list[Unit], done: set[str]) -> bool:
    """A variant's final runs wait for all of its search trials."""
    return all(u.key in done for u in units if u.variant == unit.variant and u.kind == "search")


def _record_impossible(ostudy: optuna.Study, study: Study, unit: Unit, dists: dict[str, BaseDistribution]) -> None:
    """Every search trial of a variant failed: its final runs are recorded as failed, with why."""
    params = fixed_params(study, unit, None)
    ostudy.add_trial(optuna.trial.create_trial(
        state=TrialState.FAIL, params=params, distributions={k: dists[k] for k in params},
        user_attrs={"unit": unit.key, "variant": unit.variant.name, "kind": unit.kind, "index": unit.index,
                    "seed": unit.seed, outcomes.FAILURE_KIND: outcomes.NO_RECIPE,
                    outcomes.FAILURE: "no search trial of this variant completed, so there is no recipe to repeat"},
    ))


def _suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    assert isinstance(dist, FloatDistribution)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def _create_or_check(study: Study, storage: optuna.storages.RDBStorage) -> optuna.Study:
    ostudy = optuna.create_study(
        study_name=study.name, storage=storage, direction="minimize", load_if_exists=True,
        sampler=_sampler(study), pruner=_pruner(study),
    )
    mine = definition(study)
    stored = ostudy.user_attrs.get("definition")
    if stored is None:
        from ablate.models import measure

        rows = []
        for spec in study.variants:
            params, macs = measure(spec, study.info if study.recipe.resize is None else dataclasses.replace(study.info, size=study.recipe.resize))
            rows.append({"name": spec.name, **spec.axes(), "params": params, "macs": macs,
                         "train": study.overrides.get(spec.name, {})})
        attrs = {
            "ablate_version": __version__, "study_file": study.source, "study_path": study.path,
            "description": study.description, "dataset": study.dataset, "definition": mine,
            "variants": rows, "recipe": recipe_dict(study.recipe),
            "search": study.search.describe() if study.search else None,
            "seeds": study.seeds, "first_seed": study.first_seed, "units": len(study_units(study)),
            "objective": objective_metric(study),
        }
        for k, v in attrs.items():
            ostudy.set_user_attr(k, v)
    elif stored != mine:
        old, new = json.loads(stored), json.loads(mine)
        differs = ", ".join(k for k in sorted(new) if old.get(k) != new.get(k))
        raise DriverError(
            f"the storage already holds a study named {study.name!r} made from a different study file "
            f"(it differs in: {differs}); rename the study (name = ...) or use another --storage"
        )
    return ostudy


# ---------------------------------------------------------------- summaries (run, show, ls)


def study_progress(ostudy: optuna.Study) -> dict[str, Any]:
    trials = ostudy.get_trials(deepcopy=False)
    state = unit_state(trials)
    return {
        "study": ostudy.study_name, "dataset": ostudy.user_attrs.get("dataset"),
        "variants": len(ostudy.user_attrs.get("variants", [])),
        "done": len(state.done), "units": ostudy.user_attrs.get("units"),
        "running": sum(t.state == TrialState.RUNNING for t in trials),
        "failed": len(failed_units(trials)),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "started": min((t.datetime_start for t in trials if t.datetime_start), default=None),
    }
