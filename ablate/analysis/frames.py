"""A study's trials as tables, read from its Optuna storage alone: no drawing here.

Everything is read from what `ablate run` stores (docs/storage.md), so these tables work on a
study that is still running or was run on other machines.

    open_study(name, storage)   -> optuna.Study, or a ReportError listing the studies there
    trials_table(study)         one row per trial (unit attempt)
    epochs_table(study)         one row per (trial, epoch), gradient norms as grad_<stage>
    points_table(study)         one row per (trial, point): training curves at iteration resolution
    curves, iteration_curves, gradient_flow, gradient_ratios: means over the final runs' seeds
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import optuna
import pandas as pd
import sqlalchemy

from ablate.spec.variants import AXES
from ablate.storage import (StorageError, StudyAttrs, TrialAttrs, axis_values, flat, number, one_line, open_storage, outcomes,
                            safe_url, spec_from_params, sqlite_path)

__all__ = ["ReportError", "CURVE_AXES", "TRIAL_COLUMNS", "EPOCH_FIELDS", "open_study", "trials_table", "epochs_table",
           "points_table", "hyperparameter_columns", "grad_norms_long", "finals", "curves", "gradient_flow",
           "iteration_curves", "gradient_ratios"]

#: The axes as columns of per-epoch and per-point rows (blocks follow from depth but where given).
CURVE_AXES = tuple(a for a in AXES if a != "blocks")


class ReportError(Exception):
    """A study or storage that cannot be reported on; the message says why and what exists."""


# --------------------------------------------------------------------------- opening a study


def open_study(study_name: str, storage: str) -> optuna.Study:
    """Load a study for reading. A missing SQLite file or study is a ReportError, never a new one."""
    url = safe_url(storage)
    path = sqlite_path(storage)
    if path is not None and not path.is_file():
        raise ReportError(f"storage {url}: no such SQLite file ({path}); run the study first or give --storage")
    try:
        rdb = open_storage(storage)
        names = optuna.get_all_study_names(rdb)
    except StorageError as exc:
        raise ReportError(str(exc)) from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:  # e.g. a file that is not a database
        raise ReportError(f"storage {url}: cannot be read: {one_line(exc)}") from None
    if study_name not in names:
        there = ", ".join(sorted(names)) if names else "none"
        raise ReportError(f"study {study_name!r} is not in storage {url}; studies there: {there}")
    return optuna.load_study(study_name=study_name, storage=rdb)


# --------------------------------------------------------------------------- per trial


_axes = axis_values
_number = number


def _variant_name(a: TrialAttrs, params: dict[str, Any], number: int) -> str:
    if a.variant:
        return str(a.variant)
    try:  # a trial written by something else: name it from its axes, as the driver would
        return spec_from_params(params).name
    except (ValueError, TypeError, KeyError):  # axes that name no variant
        return f"trial-{number}"


def _hyperparameters(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in AXES and k != "seed"}


_scalar = flat  # one encoding of lists and dicts as one plain value, as the driver stores params


TRIAL_COLUMNS = (
    "number", "variant", "unit", "kind", "index", "seed", "state", "value",
    "train_error", "test_error", "val_error", *AXES, "params", "macs",
    "epochs_done", "last_value", "images_per_second", "seconds", "seconds_per_epoch",
    "device", "data", "versions", "failure", "diverged_epoch", "interrupted", "started", "completed",
    "failure_kind", "did_not_learn", "worker",
)


def _kind(a: TrialAttrs, study: StudyAttrs) -> str | None:
    """A trial's kind; in a study without a search every trial is a final run."""
    return a.kind or ("final" if not study.search else None)


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: what ran (variant, axes, kind, seed, hyperparameters), how it ended
    (state, errors, failure) and what it cost (params, MACs, throughput, time).

    `interrupted` marks a FAIL trial that was not the unit's own failure (killed, interrupted,
    its checkpoint unwritable: `failure_kind`, ablate.outcomes), retried as a later trial
    (docs/storage.md). `did_not_learn` holds the reason a COMPLETE final run counts as having
    learned nothing (its errors stay out of the means), else None. Hyperparameters (the trial params that are not
    axes or the seed: `lr`, `weight_decay`, ...) follow the fixed columns.
    """
    sa = StudyAttrs.read(study.user_attrs)
    variants = sa.variant_entries()
    rows: list[dict[str, Any]] = []
    hp_keys: dict[str, None] = {}
    for t in study.get_trials(deepcopy=False):
        ua, params = t.user_attrs, t.params
        a = TrialAttrs.read(ua)
        name = _variant_name(a, params, t.number)
        spec = variants.get(name)
        # A search's sample or finalist has no stored variant entry: its `spec` holds every axis.
        axes = _axes(spec if spec is not None else a.spec if isinstance(a.spec, dict) else params)
        history = a.history or []
        steps = sorted(t.intermediate_values)
        epochs_done = len(history) or len(steps)
        seconds = _number(a.seconds)
        hist_seconds = [_number(h.get("seconds")) for h in history]
        per_epoch = (float(np.nansum(hist_seconds)) / len(history) if history and not all(map(math.isnan, hist_seconds))
                     else seconds / epochs_done if epochs_done else math.nan)
        state = t.state.name
        kind = outcomes.failure_kind(state, ua)
        row = {
            "number": t.number,
            "variant": name,
            "unit": a.unit,
            "kind": _kind(a, sa),
            "index": a.index,
            "seed": a.seed if a.seed is not None else params.get("seed"),
            "state": state,
            "value": t.values[0] if t.values else math.nan,
            "train_error": _number(a.train_error),
            "test_error": _number(a.test_error),
            "val_error": _number(a.val_error),
            **axes,
            "params": _number(spec.get("params") if spec and spec.get("params") is not None else a.params),
            "macs": _number(spec.get("macs") if spec and spec.get("macs") is not None else a.macs),
            "epochs_done": epochs_done,
            "last_value": float(t.intermediate_values[steps[-1]]) if steps else math.nan,
            "images_per_second": _number(a.images_per_second),
            "seconds": seconds,
            "seconds_per_epoch": per_epoch,
            "device": a.device,
            "data": a.data,
            "versions": json.dumps(a.versions, sort_keys=True) if a.versions else None,
            "failure": None if a.failure is None else str(a.failure),
            "diverged_epoch": a.diverged_epoch,
            "interrupted": state == "FAIL" and not outcomes.is_own(kind),
            "started": t.datetime_start,
            "completed": t.datetime_complete,
            "failure_kind": kind,
            "did_not_learn": _flag(a, state),
            "worker": None if a.worker is None else str(a.worker),
        }
        if state == "COMPLETE" and math.isnan(row["test_error"]) and sa.metric == "test_error":
            row["test_error"] = row["value"]
        for k, v in _hyperparameters(params).items():
            key = k if k not in TRIAL_COLUMNS else f"param_{k}"
            row[key] = _scalar(v)
            hp_keys[key] = None
        rows.append(row)
    df = pd.DataFrame(rows, columns=[*TRIAL_COLUMNS, *hp_keys])
    df.attrs["notes"] = _integers(df, ("seed", "index", "diverged_epoch", "depth", "width"))
    return df


def _integers(df: pd.DataFrame, columns: tuple[str, ...]) -> list[str]:
    """Integer columns as pandas' nullable Int64. A stored value that is not a 64-bit integer (an
    old or odd value, written by another version or by hand) leaves its column as stored, with a
    one-line note naming it, so the study still opens, reports and exports."""
    notes = []
    for col in columns:
        if not len(df):
            continue
        try:
            df[col] = df[col].astype("Int64")
        except (TypeError, ValueError, OverflowError):
            odd = next((v for v in df[col] if not _int64(v)), None)
            notes.append(f"{col}: the stored value {odd!r} is not a 64-bit integer; the column is shown as stored")
    return notes


def _int64(v: Any) -> bool:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return True
    try:
        return float(v).is_integer() and -(2**63) <= int(v) < 2**63
    except (TypeError, ValueError, OverflowError):
        return False


def _flag(a: TrialAttrs, state: str) -> str | None:
    reason = a.did_not_learn
    return str(reason) if reason and state == "COMPLETE" else None


def hyperparameter_columns(trials: pd.DataFrame) -> list[str]:
    return [c for c in trials.columns if c not in TRIAL_COLUMNS]


# --------------------------------------------------------------------------- per epoch


def _base_row(t: optuna.trial.FrozenTrial, sa: StudyAttrs, variants: dict[str, dict[str, Any]]) -> dict[str, Any]:
    """What every per-epoch and per-point row of a trial starts with: which trial, which variant."""
    a = TrialAttrs.read(t.user_attrs)
    name = _variant_name(a, t.params, t.number)
    axes = _axes(variants.get(name) or (a.spec if isinstance(a.spec, dict) else t.params))
    return {"number": t.number, "variant": name, "kind": _kind(a, sa), "seed": a.seed if a.seed is not None else t.params.get("seed"),
            "state": t.state.name, **{x: axes[x] for x in CURVE_AXES}, "did_not_learn": _flag(a, t.state.name)}

EPOCH_FIELDS = ("train_loss", "train_error", "test_error", "val_error", "lr", "seconds", "images_per_second")


def epochs_table(study: optuna.Study) -> pd.DataFrame:
    """One row per (trial, epoch) with the epoch's figures and `grad_<stage>` columns (mean L2
    norm of each stage's gradient over the epoch: stem, stage1.., head).

    A trial still running has no `history` yet: its rows come from the intermediate values
    (test error only), so the curves of a running study show what is known.
    """
    sa = StudyAttrs.read(study.user_attrs)
    variants = sa.variant_entries()
    rows: list[dict[str, Any]] = []
    stages: dict[str, None] = {}
    for t in study.get_trials(deepcopy=False):
        base = _base_row(t, sa, variants)
        history = TrialAttrs.read(t.user_attrs).history or []
        if history:
            for h in history:
                row = {**base, "epoch": int(h.get("epoch", len(rows) + 1))}
                row.update({f: _number(h.get(f)) for f in EPOCH_FIELDS})
                for stage, norm in (h.get("grad_norms") or {}).items():
                    stages[f"grad_{stage}"] = None
                    row[f"grad_{stage}"] = _number(norm)
                rows.append(row)
        else:
            for step, value in sorted(t.intermediate_values.items()):
                rows.append({**base, "epoch": int(step), **{f: math.nan for f in EPOCH_FIELDS}, "test_error": float(value)})
    columns = ["number", "variant", "kind", "seed", "state", *CURVE_AXES, "did_not_learn", "epoch", *EPOCH_FIELDS, *stages]
    df = pd.DataFrame(rows, columns=columns)
    if len(df):
        _integers(df, ("seed", "depth", "width", "epoch"))
    return df


def grad_norms_long(epochs: pd.DataFrame) -> pd.DataFrame:
    """The gradient-norm columns in long format: one row per (trial, epoch, stage)."""
    grads = [c for c in epochs.columns if c.startswith("grad_")]
    keep = [c for c in epochs.columns if c not in grads and c not in EPOCH_FIELDS]
    long = epochs.melt(id_vars=keep, value_vars=grads, var_name="stage", value_name="grad_norm")
    long["stage"] = long["stage"].str.removeprefix("grad_")
    return long.dropna(subset=["grad_norm"]).reset_index(drop=True)


def finals(frame: pd.DataFrame) -> pd.DataFrame:
    """The final runs that are measurements: COMPLETE, and not at chance level (did not learn)."""
    return frame[(frame["kind"] == "final") & (frame["state"] == "COMPLETE") & frame["did_not_learn"].isna()]


def curves(epochs: pd.DataFrame) -> pd.DataFrame:
    """Training and test error per (variant, epoch): mean and std over the final runs' seeds."""
    fin = finals(epochs)
    cols = ["variant", *CURVE_AXES, "epoch"]
    if fin.empty:
        return pd.DataFrame(columns=[*cols, "train_error_mean", "train_error_std", "test_error_mean", "test_error_std", "n"])
    g = fin.groupby(cols, sort=True, dropna=False)
    out = g.agg(
        train_error_mean=("train_error", "mean"), train_error_std=("train_error", "std"),
        test_error_mean=("test_error", "mean"), test_error_std=("test_error", "std"), n=("number", "nunique"),
    ).reset_index()
    return out


def gradient_flow(epochs: pd.DataFrame) -> pd.DataFrame:
    """Per-stage gradient norm per (variant, epoch, stage), mean over the final runs' seeds."""
    fin = finals(epochs)
    cols = ["variant", *CURVE_AXES, "epoch", "stage"]
    if fin.empty or not any(c.startswith("grad_") for c in fin.columns):
        return pd.DataFrame(columns=[*cols, "grad_norm"])
    long = grad_norms_long(fin)
    order = {s: i for i, s in enumerate(dict.fromkeys(long["stage"]))}
    out = long.groupby(cols, sort=False, dropna=False)["grad_norm"].mean().reset_index()
    out["_o"] = out["stage"].map(order)
    return out.sort_values(["variant", "epoch", "_o"]).drop(columns="_o").reset_index(drop=True)


# --------------------------------------------------------------------------- per point (iterations)

POINT_FIELDS = ("train_loss", "train_error")
_CURVE_KEYS = ["variant", *CURVE_AXES]


def points_table(study: optuna.Study) -> pd.DataFrame:
    """One row per (trial, point): training loss and error at evenly spaced steps of every epoch
    (the `points` of each stored epoch record, docs/storage.md), against `iteration`, the
    optimisation steps done at the point. Empty for studies stored without points."""
    sa = StudyAttrs.read(study.user_attrs)
    variants = sa.variant_entries()
    rows: list[dict[str, Any]] = []
    for t in study.get_trials(deepcopy=False):
        base = _base_row(t, sa, variants)
        for h in TrialAttrs.read(t.user_attrs).history or []:
            for pt in h.get("points") or []:
                if isinstance(pt, dict) and pt.get("iteration") is not None:
                    rows.append({**base, "epoch": h.get("epoch"), "iteration": int(pt["iteration"]),
                                 **{f: _number(pt.get(f)) for f in POINT_FIELDS}})
    columns = ["number", "variant", "kind", "seed", "state", *CURVE_AXES, "did_not_learn", "epoch", "iteration",
               *POINT_FIELDS]
    df = pd.DataFrame(rows, columns=columns)
    if len(df):
        _integers(df, ("seed", "depth", "width", "epoch", "iteration"))
    return df


def iteration_curves(points: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """He et al. 2016, Figure 6 against iterations: per (variant, iteration), training loss and
    error (mean and std over the final runs' seeds, over the steps since the previous point),
    and at each epoch's last iteration the test error (NaN elsewhere: it is measured per epoch)."""
    fin = finals(points)
    cols = [*_CURVE_KEYS, "iteration", "epoch"]
    stats = ["train_loss_mean", "train_error_mean", "train_error_std", "test_error_mean", "test_error_std", "n"]
    if fin.empty:
        return pd.DataFrame(columns=[*cols, *stats])
    out = fin.groupby(cols, sort=True, dropna=False).agg(
        train_loss_mean=("train_loss", "mean"), train_error_mean=("train_error", "mean"),
        train_error_std=("train_error", "std"), n=("number", "nunique"),
    ).reset_index()
    ends = out.groupby(["variant", "epoch"])["iteration"].transform("max") == out["iteration"]
    test = curves(epochs)[["variant", "epoch", "test_error_mean", "test_error_std"]]
    out = out.merge(test, on=["variant", "epoch"], how="left")
    out.loc[~ends.to_numpy(), ["test_error_mean", "test_error_std"]] = math.nan
    return out[[*cols, *stats]].sort_values(["variant", "iteration"]).reset_index(drop=True)


def gradient_ratios(grads: pd.DataFrame, epoch: int | None = None) -> pd.DataFrame:
    """Per variant, in one epoch (default the first): the stem's and each stage's gradient norm
    as a multiple of the head's. Vanishing gradients would show as ratios far below 1 that shrink
    with depth in plain nets and not in residual ones."""
    if grads.empty:
        return pd.DataFrame(columns=["variant", *CURVE_AXES, "epoch", "stage", "ratio"])
    epoch = int(grads["epoch"].min()) if epoch is None else epoch
    g = grads[grads["epoch"] == epoch]
    head = g[g["stage"] == "head"].set_index("variant")["grad_norm"]
    out = g[g["stage"] != "head"].copy()
    out["ratio"] = out["grad_norm"].to_numpy() / out["variant"].map(head).to_numpy()
    return out[["variant", *CURVE_AXES, "epoch", "stage", "ratio"]].reset_index(drop=True)
