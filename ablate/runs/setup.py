"""The Optuna study a study file becomes: its params and their distributions, the fair sampler
and pruner, and the study's stored attributes (docs/storage.md).

One Optuna study holds every variant, so optuna-dashboard plots the ablation axes; each
variant's search still samples and prunes against its own trials alone (`PerVariantSampler`,
`PerVariantPruner`).
"""

from __future__ import annotations

import dataclasses
import math
import platform
import warnings
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution, IntDistribution
from optuna.trial import FrozenTrial, TrialState

from ablate import __version__
from ablate import storage as S
from ablate.runs.scheduling import Unit, study_units
from ablate.spec.recipe import Recipe, input_info, recipe_dict
from ablate.spec.study import Study, definition, growth

__all__ = ["expected_units", "space_distributions", "directions", "metric_names", "TrialSeeded", "distributions", "fixed_params", "param_keys", "trial_recipe", "objective_metric", "versions", "suggest", "sampler_for", "pruner_for",
           "PerVariantSampler", "PerVariantPruner", "PerSpaceSampler", "axis_value", "same_variant", "create_or_check", "study_attrs"]


# ---------------------------------------------------------------- what a trial's params are


def _searched(study: Study) -> dict[str, Any]:
    return {p.key: p for p in (study.search.space if study.search else ())}


def _distribution(values: list[Any]) -> BaseDistribution:
    """The narrowest distribution holding every value a param takes across the study."""
    if any(isinstance(v, (bool, str)) for v in values):
        return CategoricalDistribution(sorted(set(values), key=str))
    if all(isinstance(v, int) for v in values):
        return IntDistribution(min(values), max(values))
    return FloatDistribution(float(min(values)), float(max(values)))


def _searched_distribution(p: Any) -> BaseDistribution:
    if p.kind == "choice":
        return CategoricalDistribution(list(p.choices))
    if p.kind == "int":
        return IntDistribution(p.low, p.high, log=p.log)
    return FloatDistribution(p.low, p.high, log=p.log)


def space_distributions(study: Study) -> dict[str, BaseDistribution]:
    """An architecture search's sampled axes: a list is categorical, a range an integer range.
    An axis that two spaces sample spans both (one distribution per param in one Optuna study)."""
    values: dict[str, list[Any]] = {}
    ranges: dict[str, Any] = {}
    for space in study.spaces:
        for a in space.axes:
            if a.is_range:
                ranges.setdefault(a.key, []).append(a)
            else:
                values.setdefault(a.key, []).extend(a.choices)
    dists: dict[str, BaseDistribution] = {k: CategoricalDistribution(list(dict.fromkeys(v))) for k, v in values.items() if k not in ranges}
    for key, axes in ranges.items():
        low = min([a.low for a in axes] + [v for v in values.get(key, [])])
        high = max([a.high for a in axes] + [v for v in values.get(key, [])])
        dists[key] = IntDistribution(low, high, log=all(a.log for a in axes))
    return dists


def distributions(study: Study) -> dict[str, BaseDistribution]:
    """One distribution per param over the whole study, so every trial's params are compatible
    and the dashboard's slice / parallel-coordinate / importance plots span the ablation axes.
    A recipe key that a variant overrides spans every variant's value."""
    dists: dict[str, BaseDistribution] = {}
    axes = [S.spec_params(s) for s in study.variants]
    if study.is_search:
        dists.update(space_distributions(study))
        axes = [{}]
    for key in axes[0]:
        values = [a[key] for a in axes]
        ints = all(isinstance(v, int) and not isinstance(v, bool) for v in values)
        dists[key] = IntDistribution(min(values), max(values)) if ints else CategoricalDistribution(sorted(set(values), key=str))
    searched = _searched(study)
    recipes = [study.recipe_for(spec) for spec in study.variants] or [study.recipe]
    for f in dataclasses.fields(Recipe):
        if f.name in searched:
            dists[f.name] = _searched_distribution(searched[f.name])
            continue
        values = [S.flat(getattr(r, f.name)) for r in recipes if getattr(r, f.name) is not None]
        if values:
            dists[f.name] = _distribution(values)
    dists["seed"] = IntDistribution(0, study.final_seeds[-1])
    return dists


def fixed_params(study: Study, unit: Unit, best: dict[str, Any] | None = None) -> dict[str, Any]:
    """The params known before a unit runs: everything but the searched values of a search trial."""
    params = {**(S.spec_params(unit.variant) if unit.kind != "sample" else {}), "seed": unit.seed}
    searched = _searched(study)
    recipe = study.recipe if unit.variant is None else study.recipe_for(unit.variant)
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
    searched = list(_searched(study))
    if unit.kind == "sample":
        return list(fixed_params(study, unit))
    return list(dict.fromkeys([*fixed_params(study, unit, {k: None for k in searched}), *searched]))


def trial_recipe(study: Study, unit: Unit, params: dict[str, Any]) -> Recipe:
    """The recipe a trial trains: its variant's, with the trial's searched values."""
    searched = _searched(study)
    return dataclasses.replace(study.recipe_for(unit.variant), **{k: params[k] for k in searched if k in params})


def objective_metric(study: Study) -> str:
    """What a trial's value and intermediate values are: the validation error when the study
    searches (so the sampler and the pruner never see the test set), else the test error."""
    return "val_error" if study.search is not None or study.is_search else "test_error"


def directions(study: Study) -> list[str]:
    """The Optuna study's directions: every objective is minimised (errors, MACs, params)."""
    return ["minimize"] * (len(study.sample.objectives) if study.sample is not None else 1)


def metric_names(study: Study) -> list[str]:
    """Optuna's names of the objectives, so optuna-dashboard labels the axes of the Pareto front."""
    return list(study.sample.objectives) if study.sample is not None else [objective_metric(study)]


def suggest(trial: optuna.Trial, name: str, dist: BaseDistribution) -> Any:
    """The trial's value of `name`: sampled for a searched key, its fixed value otherwise."""
    if isinstance(dist, CategoricalDistribution):
        return trial.suggest_categorical(name, dist.choices)
    if isinstance(dist, IntDistribution):
        return trial.suggest_int(name, dist.low, dist.high, log=dist.log)
    assert isinstance(dist, FloatDistribution)
    return trial.suggest_float(name, dist.low, dist.high, log=dist.log)


def versions() -> dict[str, str]:
    """What a trial ran on, stored with it."""
    import torch
    import torchvision

    v = {"ablate": __version__, "python": platform.python_version(), "torch": torch.__version__,
         "torchvision": torchvision.__version__, "optuna": optuna.__version__}
    if torch.cuda.is_available():
        v["cuda"] = str(torch.version.cuda)
        v["gpu"] = torch.cuda.get_device_name()
    return v


# ---------------------------------------------------------------- fairness: per-variant sampling and pruning


def same_variant(study: optuna.Study, trial: FrozenTrial, states: tuple[TrialState, ...]) -> optuna.Study:
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

    @property
    def inner(self) -> optuna.samplers.BaseSampler:
        """The sampler each variant's search uses on its own trials."""
        return self._inner

    def infer_relative_search_space(self, study, trial):  # noqa: D102 (independent sampling only)
        return {}

    def sample_relative(self, study, trial, search_space):  # noqa: D102
        return {}

    def sample_independent(self, study, trial, param_name, param_distribution):  # noqa: D102
        # RUNNING trials too: with several workers, TPE's constant liar counts the values being
        # tried elsewhere as bad ones for now, so parallel workers do not all sample one spot.
        shadow = same_variant(study, trial, (TrialState.COMPLETE, TrialState.PRUNED, TrialState.RUNNING))
        return self._inner.sample_independent(shadow, trial, param_name, param_distribution)


class PerVariantPruner(optuna.pruners.BasePruner):
    """Prunes a search trial only against the same variant's completed search trials: a plain
    net is never stopped for being worse than a residual one."""

    def __init__(self, inner: optuna.pruners.BasePruner):
        self._inner = inner

    def prune(self, study, trial):  # noqa: D102
        return self._inner.prune(same_variant(study, trial, (TrialState.COMPLETE,)), trial)


class TrialSeeded(optuna.samplers.BaseSampler):
    """An architecture search's sampler, made afresh for each trial with a seed of the study's
    seed and the trial's number: every worker, and a resumed run, draws what the same trial would
    have drawn, and two workers never draw from one random stream in step. Whatever a sampler
    learns lives in the stored trials, which it reads again each time."""

    def __init__(self, make: Any, seed: int):
        self._make, self._seed = make, seed
        self._current: tuple[int, optuna.samplers.BaseSampler] | None = None

    def _for(self, trial: FrozenTrial) -> optuna.samplers.BaseSampler:
        if self._current is None or self._current[0] != trial.number:
            self._current = (trial.number, self._make((self._seed * 1_000_003 + trial.number) % 2**32))
        return self._current[1]

    def infer_relative_search_space(self, study, trial):  # noqa: D102
        return self._for(trial).infer_relative_search_space(study, trial)

    def sample_relative(self, study, trial, search_space):  # noqa: D102
        return self._for(trial).sample_relative(study, trial, search_space)

    def sample_independent(self, study, trial, param_name, param_distribution):  # noqa: D102
        return self._for(trial).sample_independent(study, trial, param_name, param_distribution)

    def before_trial(self, study, trial):  # noqa: D102
        self._for(trial).before_trial(study, trial)

    def after_trial(self, study, trial, state, values):  # noqa: D102
        self._for(trial).after_trial(study, trial, state, values)


class PerSpaceSampler(optuna.samplers.BaseSampler):
    """Draws each sample's axes from its own [[space]] alone, at random or from the space's own
    scrambled Sobol sequence (`qmc`), without looking at any error: what a comparison of design
    spaces by their error distributions needs (Radosavovic et al. 2019 sample each space at random).

    One Optuna study holds every space, so a param spans the values of all spaces (one
    distribution per name): Optuna's own samplers would draw a plain space's `connection` from
    the residual space's values too. Optuna's `QMCSampler` is not used for `qmc`: its search
    space is the study's first trial's (one for all spaces), its point counter is a study-wide
    system attribute incremented without a lock (two workers can draw one point), and in Optuna
    5.0 it does not fall back to independent sampling for categorical params (as the 3.x docs
    suggest) but maps each to a pseudo-float dimension [0, n) of the Sobol point, which is what
    this class does too. Here a trial's point is the i-th of its space's sequence, i = the
    number of that space's earlier sample trials: resumable, the same on every worker, and an
    infeasible or duplicate draw moves on to the next point. Sobol points are balanced in
    powers of two: a `count` of 16, 32 or 64 spreads each space best."""

    def __init__(self, study: Study):
        assert study.sample is not None
        self._spaces = {s.name: s for s in study.spaces}
        self._index = {s.name: i for i, s in enumerate(study.spaces)}
        self._space_of = {u.key: u.space for u in study_units(study)}
        self._seed, self._qmc = study.sample.seed, study.sample.sampler == "qmc"
        self._points: dict[int, Any] = {}

    def infer_relative_search_space(self, study, trial):  # noqa: D102 (each axis drawn in sample_independent)
        return {}

    def sample_relative(self, study, trial, search_space):  # noqa: D102
        return {}

    def _point(self, study: optuna.Study, trial: FrozenTrial, space: str) -> Any:
        """The trial's point in [0, 1)^axes: a Sobol point of its space's sequence, or uniform."""
        if trial.number not in self._points:
            import numpy as np
            from scipy.stats import qmc

            dims = len(self._spaces[space].axes)
            seed = np.random.SeedSequence([self._seed, self._index[space]])
            if self._qmc:
                earlier = sum(1 for t in study.get_trials(deepcopy=False) if t.number < trial.number
                              and self._space_of.get(S.TrialAttrs.read(t.user_attrs).unit or "") == space)
                engine = qmc.Sobol(dims, scramble=True, seed=np.random.default_rng(seed))
                if earlier:
                    engine.fast_forward(earlier)
                self._points = {trial.number: engine.random(1)[0]}
            else:
                rng = np.random.default_rng(np.random.SeedSequence([self._seed, self._index[space], trial.number]))
                self._points = {trial.number: rng.random(dims)}
        return self._points[trial.number]

    def sample_independent(self, study, trial, param_name, param_distribution):  # noqa: D102
        space = self._space_of[S.TrialAttrs.read(trial.user_attrs).unit]
        axes = self._spaces[space].axes
        j = next(i for i, a in enumerate(axes) if a.key == param_name)
        return axis_value(axes[j], float(self._point(study, trial, space)[j]))


def axis_value(axis: Any, u: float) -> Any:
    """The value of a space's axis at u in [0, 1): a choice, or an integer of the range (uniform
    in log scale when `log`, as Optuna's IntDistribution draws: over [low - 0.5, high + 0.5])."""
    if not axis.is_range:
        return axis.choices[min(int(u * len(axis.choices)), len(axis.choices) - 1)]
    lo, hi = axis.low - 0.5, axis.high + 0.5
    x = math.exp(math.log(lo) + u * (math.log(hi) - math.log(lo))) if axis.log else lo + u * (hi - lo)
    return int(min(max(round(x), axis.low), axis.high))


def _space_sampler(study: Study) -> optuna.samplers.BaseSampler:
    sample = study.sample
    assert sample is not None
    if sample.sampler == "qmc" or len(study.spaces) > 1:
        return PerSpaceSampler(study)
    startup = max(2, sample.count // 3)
    with warnings.catch_warnings():  # constant_liar is experimental in Optuna; it is what parallel workers need
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        makers = {
            "random": lambda seed: optuna.samplers.RandomSampler(seed=seed),
            "tpe": lambda seed: optuna.samplers.TPESampler(seed=seed, n_startup_trials=startup, constant_liar=True,
                                                           multivariate=True),
            "nsga2": lambda seed: optuna.samplers.NSGAIISampler(seed=seed, population_size=max(4, startup)),
        }
    return TrialSeeded(makers[sample.sampler], sample.seed)


def sampler_for(study: Study) -> optuna.samplers.BaseSampler:
    if study.is_search:
        return _space_sampler(study)
    if study.search is None or study.search.sampler == "random":
        inner: optuna.samplers.BaseSampler = optuna.samplers.RandomSampler()
    else:
        with warnings.catch_warnings():  # constant_liar is experimental in Optuna; it is what parallel workers need
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            inner = optuna.samplers.TPESampler(n_startup_trials=max(2, study.search.trials // 3), constant_liar=True)
    return PerVariantSampler(inner)


def _space_pruner(study: Study) -> optuna.pruners.BasePruner:
    """Multi-fidelity pruning of an architecture search, epochs as the resource: every sampled
    architecture competes with the others (no per-variant pruning: that is the point of a search)."""
    assert study.sample is not None
    epochs: Any = study.recipe.epochs or "auto"
    return {
        "none": lambda: optuna.pruners.NopPruner(),
        "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1),
        "hyperband": lambda: optuna.pruners.HyperbandPruner(min_resource=1, max_resource=epochs, reduction_factor=3),
        "asha": lambda: optuna.pruners.SuccessiveHalvingPruner(min_resource=1, reduction_factor=3),
    }[study.sample.pruner]()


def pruner_for(study: Study) -> optuna.pruners.BasePruner:
    if study.is_search:
        return _space_pruner(study)
    if study.search is None or study.search.pruner == "none":
        return optuna.pruners.NopPruner()
    return PerVariantPruner(optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=1))


# ---------------------------------------------------------------- the study in storage


def create_or_check(study: Study, storage: optuna.storages.RDBStorage) -> optuna.Study:
    """The study's Optuna study, created with its attributes, or checked against them: a study
    file may grow a stored study (more variants, more seeds: only the new units run), never
    change what a stored unit means (ablate.spec.study.growth)."""
    ostudy = optuna.create_study(
        study_name=study.name, storage=storage, directions=directions(study), load_if_exists=True,
        sampler=sampler_for(study), pruner=pruner_for(study),
    )
    if len(ostudy.directions) != len(directions(study)):
        raise S.StorageError(f"the storage already holds a study named {study.name!r} with {len(ostudy.directions)} objective(s), "
                             f"this file has {len(directions(study))}; rename the study (name = ...) or use another --storage")
    if study.is_search and ostudy.metric_names is None:
        with warnings.catch_warnings():  # experimental in Optuna; what optuna-dashboard labels the front with
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            ostudy.set_metric_names(metric_names(study))
    mine = definition(study)
    stored = S.StudyAttrs.read(ostudy.user_attrs).definition
    if stored is not None:
        why, grows = growth(stored, mine)
        if why is not None:
            raise S.StorageError(
                f"the storage already holds a study named {study.name!r} made from a different study file "
                f"({why}); a study may only grow (more variants, more seeds); rename the study (name = ...) "
                "or use another --storage"
            )
        if not grows:
            return ostudy
    study_attrs(study).write(ostudy)  # new, or grown: every worker writes the same values
    return ostudy


def expected_units(study: Study) -> int | None:
    """Units in all: a search's final runs counted ahead when one objective fixes how many
    finalists there are; None when the Pareto set (unknown until sampled) decides it."""
    if study.sample is None:
        return len(study_units(study))
    if study.sample.multi:
        return None
    return len(study_units(study)) + study.sample.finalists * study.seeds


def study_attrs(study: Study) -> S.StudyAttrs:
    from ablate.engine.models import measure

    rows = []
    for spec in study.variants:
        params, macs = measure(spec, input_info(study.info, study.recipe_for(spec)))
        rows.append({"name": spec.name, **spec.axes(), "params": params, "macs": macs,
                     "train": study.overrides.get(spec.name, {})})
    return S.StudyAttrs(
        ablate_version=__version__, study_file=study.source, study_path=study.path, description=study.description,
        dataset=study.dataset, definition=definition(study), variants=rows, recipe=recipe_dict(study.recipe),
        search=study.search.describe() if study.search else None, seeds=study.seeds, first_seed=study.first_seed,
        units=expected_units(study), objective=objective_metric(study),
    )
