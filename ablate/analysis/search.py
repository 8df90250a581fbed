"""An architecture search's results as data: one row per sampled architecture, the chosen ones
(the best by validation error, or the Pareto front of validation error and cost), and what the
report's "Architecture search" section draws.

    samples_table(study)                 -> DataFrame: space, name, every axis, params, macs, val_error,
                                            test_error, feasible, pareto, best, state, ... (one row per sample)
    hypervolume_curve(samples, cost, ref) -> DataFrame: samples, hypervolume (two objectives)
    importances(study, axes)             -> DataFrame: axis, importance (Optuna's PED-ANOVA on the samples)
    finalists_table(trials)              -> DataFrame: the final runs' architectures, means and 95% CIs
    search_results(study, trials)        -> SearchResults: all of it
"""

from __future__ import annotations

import inspect
import json
import math
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd

from ablate.analysis import stats
from ablate.analysis.frames import finals
from ablate.spec.space import pareto_front
from ablate.spec.variants import AXES
from ablate.storage import StudyAttrs, TrialAttrs, outcomes

__all__ = ["SAMPLE_COLUMNS", "SearchResults", "objectives_of", "samples_table", "hypervolume_curve", "importances",
           "finalists_table", "search_results", "sampled_axes"]

SAMPLE_COLUMNS = ("number", "space", "name", *AXES, "params", "macs", "val_error", "epochs", "test_error", "feasible", "pareto",
                  "best", "state", "duplicate_of", "failure_kind", "failure")


def _sample_def(attrs: StudyAttrs) -> dict[str, Any]:
    try:
        doc = json.loads(attrs.definition or "{}")
    except ValueError:
        return {}
    return doc if isinstance(doc.get("sample"), dict) else {}


def objectives_of(attrs: StudyAttrs) -> tuple[str, ...]:
    """The search's objectives, as its stored definition says; () for a study that is not a search."""
    sample = _sample_def(attrs).get("sample")
    return tuple(sample.get("objectives", ("val_error",))) if isinstance(sample, dict) else ()


def sampled_axes(attrs: StudyAttrs) -> list[str]:
    """The axes the search's spaces sample, in the order they are written."""
    spaces = _sample_def(attrs).get("spaces") or []
    return list(dict.fromkeys(k for s in spaces if isinstance(s, dict) for k in (s.get("axes") or {})))


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def _val_error(t: optuna.trial.FrozenTrial, a: TrialAttrs) -> float:
    """A sample's validation error: at its end; for one pruned before it ended, at the last epoch
    it reported (its `epochs` column says which; the front and `best` take COMPLETE samples only)."""
    if isinstance(a.val_error, (int, float)) and not isinstance(a.val_error, bool):
        return float(a.val_error)
    if t.state.name == "PRUNED" and t.intermediate_values:
        return float(t.intermediate_values[max(t.intermediate_values)])
    return math.nan


def samples_table(study: optuna.Study) -> pd.DataFrame:
    """One row per sampled architecture (empty for a study that is not a search). `feasible`: it
    was trained (not over the budget, not sampled before: a repeat has `duplicate_of`, the trial
    whose values the sampler was given again); `best` (the lowest validation error among trained
    COMPLETE samples, ties to the earlier) and `pareto` (two objectives: the trained COMPLETE
    samples no other dominates in validation error and cost; ablate.spec.space.pareto_front)."""
    objectives = objectives_of(StudyAttrs.read(study.user_attrs))
    rows = []
    for t in study.get_trials(deepcopy=False):
        a = TrialAttrs.read(t.user_attrs)
        if a.kind != "sample":
            continue
        kind = outcomes.failure_kind(t.state.name, t.user_attrs)
        spec = a.spec or {}
        rows.append({
            "number": t.number, "space": a.space, "name": a.variant,
            **{axis: ("-".join(map(str, spec[axis])) if axis == "blocks" and spec.get(axis) else spec.get(axis)) for axis in AXES},
            "params": _number(a.params), "macs": _number(a.macs), "val_error": _val_error(t, a),
            "epochs": len(a.history or ()) or len(t.intermediate_values),
            "test_error": _number(a.test_error),
            "feasible": kind not in outcomes.NOT_TRAINED and a.variant is not None and a.duplicate_of is None,
            "state": t.state.name, "duplicate_of": a.duplicate_of, "failure_kind": kind, "failure": a.failure,
        })
    frame = pd.DataFrame(rows, columns=[c for c in SAMPLE_COLUMNS if c not in ("pareto", "best")])
    trained = (frame["feasible"].astype(bool) & (frame["state"] == "COMPLETE") & frame["val_error"].notna()).to_numpy() \
        if len(frame) else np.zeros(0, dtype=bool)
    pareto = np.zeros(len(frame), dtype=bool)
    best = np.zeros(len(frame), dtype=bool)
    idx = np.flatnonzero(trained)
    if len(objectives) > 1 and len(idx):
        pareto[idx] = pareto_front(frame.loc[trained, list(objectives)].to_numpy(dtype=float).tolist())
    if len(idx):
        best[idx[int(np.argmin(frame["val_error"].to_numpy(dtype=float)[idx]))]] = True  # argmin: the first of ties
    frame.insert(frame.columns.get_loc("state"), "pareto", pareto)
    frame.insert(frame.columns.get_loc("state"), "best", best)
    return frame


def hypervolume_2d(points: np.ndarray, ref: tuple[float, float]) -> float:
    """The area dominated by `points` (both objectives minimised) and bounded by `ref`."""
    pts = points[(points[:, 0] < ref[0]) & (points[:, 1] < ref[1])]
    if not len(pts):
        return 0.0
    pts = pts[np.argsort(pts[:, 0], kind="stable")]
    area, best_cost = 0.0, ref[1]
    for i, (err, cost) in enumerate(pts):
        if cost < best_cost:
            right = ref[0]
            area += (right - err) * (best_cost - cost)
            best_cost = cost
    return float(area)


def hypervolume_curve(samples: pd.DataFrame, cost: str, ref_cost: float | None) -> pd.DataFrame:
    """Hypervolume of the trained samples' front after each sample, in sample order. Cost is
    divided by `ref_cost` (the budget, else the costliest trained sample) and error is a
    fraction, so the reference point is (1, 1) and the hypervolume a fraction of the unit square."""
    done = samples[samples["feasible"].astype(bool) & (samples["state"] == "COMPLETE")].sort_values("number")
    if done.empty:
        return pd.DataFrame(columns=["samples", "number", "hypervolume"])
    ref = ref_cost or float(done[cost].max())
    rows = []
    pts = np.column_stack([done["val_error"].to_numpy(float), done[cost].to_numpy(float) / ref])
    for k in range(1, len(done) + 1):
        rows.append({"samples": k, "number": int(done["number"].iloc[k - 1]), "hypervolume": hypervolume_2d(pts[:k], (1.0, 1.0))})
    return pd.DataFrame(rows)


def importances(study: optuna.Study, axes: list[str]) -> tuple[pd.DataFrame, str | None]:
    """Each sampled axis's importance for validation error (Optuna's `get_param_importances`,
    PED-ANOVA) over the trained samples alone: final runs repeat finalists, and repeats
    and infeasible samples were not trained. An empty table and the reason when it cannot be said."""
    trials = []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        a = TrialAttrs.read(t.user_attrs)
        if a.kind != "sample" or a.duplicate_of is not None or not t.values:
            continue
        params = {k: t.params[k] for k in axes if k in t.params}
        trials.append(optuna.trial.create_trial(params=params, distributions={k: t.distributions[k] for k in params},
                                                value=float(t.values[0])))
    varied = [k for k in axes if len({json.dumps(t.params.get(k)) for t in trials}) > 1]
    if len(trials) < 3 or not varied:
        return pd.DataFrame(columns=["axis", "importance"]), "fewer than 3 trained samples, or no axis took two values"
    verbosity = optuna.logging.get_verbosity()
    optuna.logging.set_verbosity(optuna.logging.WARNING)  # the in-memory view's "A new study created" is noise here
    try:
        view = optuna.create_study(direction="minimize")
    finally:
        optuna.logging.set_verbosity(verbosity)
    view.add_trials(trials)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        try:
            # PED-ANOVA (Watanabe et al., IJCAI 2023): how much each axis decides reaching the best
            # samples. Optuna's fANOVA default needs scikit-learn; PED-ANOVA does not, and is made for
            # few trials. At least 5 samples above the quantile, as its docs advise.
            quantile = min(0.5, max(0.1, 5 / len(trials)))
            evaluator = optuna.importance.PedAnovaImportanceEvaluator
            # Optuna 5 names the quantile `target_quantile` and the whole space `region_quantile = 1`;
            # Optuna 4 `baseline_quantile` and `evaluate_on_local = False`.
            options = ({"target_quantile": quantile, "region_quantile": 1.0}
                       if "target_quantile" in inspect.signature(evaluator).parameters
                       else {"baseline_quantile": quantile, "evaluate_on_local": False})
            imp = optuna.importance.get_param_importances(view, params=varied, evaluator=evaluator(**options))
        except (RuntimeError, ValueError) as exc:
            return pd.DataFrame(columns=["axis", "importance"]), f"Optuna could not compute them: {exc}"
    return pd.DataFrame({"axis": list(imp), "importance": [float(v) for v in imp.values()]}), None


FINALIST_COLUMNS = ("variant", *AXES, "params", "macs", "seeds", "val_error_mean", "test_error_mean", "test_error_std",
                    "ci_low", "ci_high")


def finalists_table(trials: pd.DataFrame) -> pd.DataFrame:
    """The architectures with final runs (a search's finalists): mean validation and test error
    over their seeds and the test error's 95% t-interval, best validation error first."""
    fin = finals(trials) if len(trials) else trials
    ran = trials[trials["kind"] == "final"] if len(trials) else trials
    rows = []
    for name, g in ran.groupby("variant", sort=False) if len(ran) else ():
        f = fin[fin["variant"] == name]
        low, high = stats.mean_ci(f["test_error"].astype(float).tolist())
        first = g.iloc[0]
        rows.append({"variant": name, **{a: first[a] for a in AXES}, "params": first["params"], "macs": first["macs"],
                     "seeds": len(f), "val_error_mean": f["val_error"].astype(float).mean() if len(f) else math.nan,
                     "test_error_mean": f["test_error"].astype(float).mean() if len(f) else math.nan,
                     "test_error_std": f["test_error"].astype(float).std(ddof=1) if len(f) > 1 else math.nan,
                     "ci_low": low, "ci_high": high})
    out = pd.DataFrame(rows, columns=list(FINALIST_COLUMNS))
    return out.sort_values(["val_error_mean", "variant"], na_position="last").reset_index(drop=True) if len(out) else out


@dataclass(frozen=True)
class SearchResults:
    """What the report's "Architecture search" section draws (an empty one for other studies)."""

    samples: pd.DataFrame = field(default_factory=pd.DataFrame)
    objectives: tuple[str, ...] = ()
    axes: tuple[str, ...] = ()  # the sampled axes
    budget: dict[str, float | None] = field(default_factory=dict)  # max_macs, max_params
    hypervolume: pd.DataFrame = field(default_factory=pd.DataFrame)
    importances: pd.DataFrame = field(default_factory=pd.DataFrame)
    importances_note: str | None = None
    finalists: pd.DataFrame = field(default_factory=pd.DataFrame)

    @property
    def is_search(self) -> bool:
        return bool(self.objectives)


def search_results(study: optuna.Study, trials: pd.DataFrame) -> SearchResults:
    attrs = StudyAttrs.read(study.user_attrs)
    objectives = objectives_of(attrs)
    if not objectives:
        return SearchResults(samples=samples_table(study))
    samples = samples_table(study)
    sample = _sample_def(attrs)["sample"]
    budget = {k: sample.get(k) for k in ("max_macs", "max_params")}
    cost = objectives[1] if len(objectives) > 1 else None
    axes = sampled_axes(attrs)
    imp, note = importances(study, axes)
    return SearchResults(
        samples=samples, objectives=objectives, axes=tuple(axes), budget=budget,
        hypervolume=hypervolume_curve(samples, cost, budget.get(f"max_{cost}")) if cost else pd.DataFrame(),
        importances=imp, importances_note=note, finalists=finalists_table(trials),
    )
