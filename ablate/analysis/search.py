"""An architecture search's results as data: one row per sampled architecture, and the chosen
ones (the best by validation error, or the Pareto front of validation error and cost).

    samples_table(study)            -> DataFrame: space, name, every axis, params, macs, val_error,
                                       test_error, feasible, pareto, state, failure (one row per sample)
    pareto_mask(frame, objectives)  -> which rows no other row dominates (all objectives minimised)
"""

from __future__ import annotations

import json
import math
from typing import Any, Sequence

import numpy as np
import optuna
import pandas as pd

from ablate.spec.variants import AXES
from ablate.storage import StudyAttrs, TrialAttrs, outcomes

__all__ = ["SAMPLE_COLUMNS", "objectives_of", "pareto_mask", "samples_table"]

SAMPLE_COLUMNS = ("number", "space", "name", *AXES, "params", "macs", "val_error", "test_error", "feasible", "pareto",
                  "best", "state", "failure_kind", "failure")


def objectives_of(attrs: StudyAttrs) -> tuple[str, ...]:
    """The search's objectives, as its stored definition says; () for a study that is not a search."""
    try:
        sample = json.loads(attrs.definition or "{}").get("sample")
    except ValueError:
        return ()
    return tuple(sample.get("objectives", ("val_error",))) if isinstance(sample, dict) else ()


def pareto_mask(frame: pd.DataFrame, objectives: Sequence[str]) -> np.ndarray:
    """Rows that no other row dominates (no worse in every objective, better in one); rows with a
    missing value are never on the front."""
    values = frame[list(objectives)].to_numpy(dtype=float) if len(frame) else np.empty((0, len(objectives)))
    ok = ~np.isnan(values).any(axis=1)
    mask = np.zeros(len(values), dtype=bool)
    for i in np.flatnonzero(ok):
        others = values[ok]
        dominated = np.any(np.all(others <= values[i], axis=1) & np.any(others < values[i], axis=1))
        mask[i] = not dominated
    return mask


def _number(value: Any) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else math.nan


def samples_table(study: optuna.Study) -> pd.DataFrame:
    """One row per sampled architecture (empty for a study that is not a search). `feasible`: it
    was trained (not over the budget, not a duplicate); `best` (one objective: the lowest
    validation error among COMPLETE samples, ties to the earlier) or `pareto` (two objectives:
    the COMPLETE samples no other dominates in validation error and cost)."""
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
            "params": _number(a.params), "macs": _number(a.macs), "val_error": _number(a.val_error),
            "test_error": _number(a.test_error), "feasible": kind not in outcomes.NOT_TRAINED and a.variant is not None,
            "state": t.state.name, "failure_kind": kind, "failure": a.failure,
        })
    frame = pd.DataFrame(rows, columns=[c for c in SAMPLE_COLUMNS if c not in ("pareto", "best")])
    complete = (frame["state"] == "COMPLETE").to_numpy() if len(frame) else np.zeros(0, dtype=bool)
    pareto = np.zeros(len(frame), dtype=bool)
    best = np.zeros(len(frame), dtype=bool)
    if len(objectives) > 1 and complete.any():
        pareto[np.flatnonzero(complete)] = pareto_mask(frame[complete], objectives)
    if complete.any():
        errors = frame["val_error"].where(complete)
        if errors.notna().any():
            best[int(errors.to_numpy().argmin() if not errors.isna().any() else errors.fillna(np.inf).to_numpy().argmin())] = True
    frame.insert(frame.columns.get_loc("state"), "pareto", pareto)
    frame.insert(frame.columns.get_loc("state"), "best", best)
    return frame
