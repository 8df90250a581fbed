"""A study's results as tables, computed from its Optuna storage alone: no drawing here.

Everything is read from what `ablate run` stores (docs/storage.md), so these tables work on a
study that is still running or was run on other machines. The report (`ablate.report`) draws
them, `ablate export` writes them, and the tests check them without drawing anything, as
Optuna's own plots compute their data first (STYLE.md, "Reports").

    open_study(name, storage)        -> optuna.Study, or a ReportError listing the studies there
    trials_table(study)              one row per trial (unit attempt)
    epochs_table(study)              one row per (trial, epoch), gradient norms as grad_<stage>
    variant_summary(trials, ...)     one row per variant: final runs as mean +- std, counts
    verdicts(summary, dataset, smp)  the study's answers as structured `Finding`s, tested (ablate.stats)
"""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import numpy as np
import optuna
import pandas as pd

from ablate.storage import outcomes
from ablate.analysis import stats
from ablate.runs.scheduling import selection_error
from ablate.storage import StudyAttrs, TrialAttrs, axis_values, flat, number, one_line, safe_url, spec_from_params, sqlite_path
from ablate.spec.variants import AXES

#: The axes as columns of per-epoch and per-point rows (blocks follow from depth but where given).
CURVE_AXES = tuple(a for a in AXES if a != "blocks")
#: Axes a family holds fixed: variants of one family differ only in depth (and connection).
FAMILY_AXES = ("activation", "block", "stem", "width")
PERCENT = 100.0


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
        names = optuna.get_all_study_names(storage)
    except Exception as exc:  # an unreachable server, a file that is not a database, ...
        raise ReportError(f"storage {url}: cannot be read: {one_line(exc)}") from None
    if study_name not in names:
        there = ", ".join(sorted(names)) if names else "none"
        raise ReportError(f"study {study_name!r} is not in storage {url}; studies there: {there}")
    return optuna.load_study(study_name=study_name, storage=storage)


# --------------------------------------------------------------------------- per trial


_axes = axis_values
_number = number


def _variant_name(a: TrialAttrs, params: dict[str, Any], number: int) -> str:
    if a.variant:
        return str(a.variant)
    try:  # a trial written by something else: name it from its axes, as the driver would
        return spec_from_params(params).name
    except Exception:
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


def objective(study_attrs: dict[str, Any] | StudyAttrs) -> str:
    """What a trial's `value` and intermediate values measure: `val_error` in a searched study
    (the search never sees the test set), `test_error` otherwise (the driver's objective_metric)."""
    return StudyAttrs.read(study_attrs).metric


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
        axes = _axes(spec if spec is not None else params)
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
            "value": t.value if t.values else math.nan,
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
    for col in ("seed", "index", "diverged_epoch", "depth", "width"):
        df[col] = df[col].astype("Int64") if len(df) else df[col]
    return df


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
    axes = _axes(variants.get(name) or t.params)
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
        for col in ("seed", "depth", "width", "epoch"):
            df[col] = df[col].astype("Int64")
    return df


def grad_norms_long(epochs: pd.DataFrame) -> pd.DataFrame:
    """The gradient-norm columns in long format: one row per (trial, epoch, stage)."""
    grads = [c for c in epochs.columns if c.startswith("grad_")]
    keep = [c for c in epochs.columns if c not in grads and c not in EPOCH_FIELDS]
    long = epochs.melt(id_vars=keep, value_vars=grads, var_name="stage", value_name="grad_norm")
    long["stage"] = long["stage"].str.removeprefix("grad_")
    return long.dropna(subset=["grad_norm"]).reset_index(drop=True)


def _finals(frame: pd.DataFrame) -> pd.DataFrame:
    """The final runs that are measurements: COMPLETE, and not at chance level (did not learn)."""
    return frame[(frame["kind"] == "final") & (frame["state"] == "COMPLETE") & frame["did_not_learn"].isna()]


def curves(epochs: pd.DataFrame) -> pd.DataFrame:
    """Training and test error per (variant, epoch): mean and std over the final runs' seeds."""
    fin = _finals(epochs)
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
    fin = _finals(epochs)
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
        for col in ("seed", "depth", "width", "epoch", "iteration"):
            df[col] = df[col].astype("Int64")
    return df


def iteration_curves(points: pd.DataFrame, epochs: pd.DataFrame) -> pd.DataFrame:
    """He et al. 2016, Figure 6 against iterations: per (variant, iteration), training loss and
    error (mean and std over the final runs' seeds, over the steps since the previous point),
    and at each epoch's last iteration the test error (NaN elsewhere: it is measured per epoch)."""
    fin = _finals(points)
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
        return pd.DataFrame(columns=["variant", "connection", "depth", "shortcut", "epoch", "stage", "ratio"])
    epoch = int(grads["epoch"].min()) if epoch is None else epoch
    g = grads[grads["epoch"] == epoch]
    head = g[g["stage"] == "head"].set_index("variant")["grad_norm"]
    out = g[g["stage"] != "head"].copy()
    out["ratio"] = out["grad_norm"].to_numpy() / out["variant"].map(head).to_numpy()
    return out[["variant", "connection", "depth", "shortcut", "epoch", "stage", "ratio"]].reset_index(drop=True)


# --------------------------------------------------------------------------- per variant

SUMMARY_STATS = ("train_error", "test_error", "val_error")


def searched_keys(study_attrs: dict[str, Any] | StudyAttrs, trials: pd.DataFrame | None = None) -> list[str]:
    """The hyperparameters a study searched: the `search.space` keys, else those that vary
    among the search trials."""
    search = StudyAttrs.read(study_attrs).search
    if isinstance(search, dict) and isinstance(search.get("space"), dict) and search["space"]:
        return list(search["space"])
    if trials is None or trials.empty:
        return []
    s = trials[trials["kind"] == "search"]
    return [c for c in hyperparameter_columns(trials) if s[c].nunique(dropna=True) > 1]


def _fmt_value(v: Any) -> str:
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)


def variant_summary(trials: pd.DataFrame, variants: Iterable[dict[str, Any]] | None = None,
                    searched: Iterable[str] = ()) -> pd.DataFrame:
    """One row per variant, in study order: axes, params, MACs, final-run errors as mean and
    std over seeds (std is NaN with one seed), throughput, trial counts, and the best searched
    hyperparameters (those of its best complete search trial).

    Only final runs (kind == "final", COMPLETE) enter the errors: search trials all use seed 0
    and differ in hyperparameters, so they are not samples of the same thing.
    """
    searched = list(searched)
    order: dict[str, dict[str, Any]] = {}
    for v in variants or []:
        if isinstance(v, dict) and v.get("name"):
            order[str(v["name"])] = v
    for name in trials["variant"].unique() if len(trials) else []:
        order.setdefault(name, {})
    rows = []
    for name, spec in order.items():
        g = trials[trials["variant"] == name] if len(trials) else trials
        fin = _finals(g)
        first = g.iloc[0] if len(g) else None
        axes = _axes(spec) if spec else {a: first[a] for a in AXES}
        row: dict[str, Any] = {"variant": name, **axes}
        row["params"] = _number(spec.get("params")) if spec.get("params") is not None else (first["params"] if first is not None else math.nan)
        row["macs"] = _number(spec.get("macs")) if spec.get("macs") is not None else (first["macs"] if first is not None else math.nan)
        row["seeds"] = len(fin)
        for stat in SUMMARY_STATS:
            vals = fin[stat].astype(float)
            row[f"{stat}_mean"] = vals.mean() if len(vals) else math.nan
            row[f"{stat}_std"] = vals.std(ddof=1) if len(vals) >= 2 else math.nan
        row["seconds_per_epoch"] = fin["seconds_per_epoch"].astype(float).mean() if len(fin) else math.nan
        row["images_per_second"] = fin["images_per_second"].astype(float).mean() if len(fin) else math.nan
        state = g["state"] if len(g) else pd.Series(dtype=object)
        row["complete"] = int((state == "COMPLETE").sum())
        row["failed"] = int(((state == "FAIL") & ~g["interrupted"].astype(bool)).sum()) if len(g) else 0
        row["interrupted"] = int(g["interrupted"].astype(bool).sum()) if len(g) else 0
        row["pruned"] = int((state == "PRUNED").sum())
        row["did_not_learn"] = int(g["did_not_learn"].notna().sum()) if len(g) else 0
        row["running"] = int(state.isin(["RUNNING", "WAITING"]).sum())
        search = g[(g["kind"] == "search") & (g["state"] == "COMPLETE")] if len(g) else g
        if searched and len(search):
            # As the driver picks it; ties go to the earlier trial.
            score = search.apply(lambda r: selection_error(r["val_error"], r["value"]), axis=1)
            best = search.loc[score.idxmin()]
            row["best_search_error"] = float(best["value"])
            row["best_hyperparameters"] = ", ".join(f"{k}={_fmt_value(best[k])}" for k in searched if k in best.index)
            for k in searched:
                if k in best.index:
                    row[f"best_{k}"] = best[k]
        else:
            row["best_search_error"] = math.nan
            row["best_hyperparameters"] = ""
        rows.append(row)
    df = pd.DataFrame(rows)
    if df.empty:
        return df
    df["family"] = df.apply(family_label, axis=1)
    df["front_params"] = efficient_front(df, "params")
    df["front_macs"] = efficient_front(df, "macs")
    return df


def efficient_front(summary: pd.DataFrame, cost: str, error: str = "test_error_mean") -> pd.Series:
    """Whether each variant is on the efficient front: no other variant has lower-or-equal cost
    and lower-or-equal error, one of them strictly lower. Variants without results are not."""
    ok = summary[cost].notna() & summary[error].notna()
    c, e = summary[cost].astype(float), summary[error].astype(float)
    front = pd.Series(False, index=summary.index)
    for i in summary.index[ok]:
        others = summary.index[ok & (summary.index != i)]
        dominated = ((c[others] <= c[i]) & (e[others] <= e[i]) & ((c[others] < c[i]) | (e[others] < e[i]))).any()
        front[i] = not dominated
    return front


# --------------------------------------------------------------------------- families


def family_label(row: pd.Series | dict[str, Any], held: Iterable[str] = FAMILY_AXES) -> str:
    """The axes a family holds fixed, in words: "post-activation, basic blocks, cifar stem, width 8"."""
    words = {
        "activation": lambda v: f"{v}-activation",
        "block": lambda v: f"{v} blocks",
        "stem": lambda v: f"{v} stem",
        "width": lambda v: f"width {v}",
        "connection": lambda v: str(v),
        "shortcut": lambda v: ("no shortcuts" if v == "none" else "each block's default shortcut option" if v == "mixed"
                               else f"option {v} shortcuts"),
        "depth": lambda v: f"{v} layers",
    }
    return ", ".join(words[a](row[a]) for a in held)


def _groups(summary: pd.DataFrame, held: tuple[str, ...]) -> list[tuple[str, pd.DataFrame]]:
    if summary.empty:
        return []
    out = []
    for _, g in summary.groupby(list(held), sort=False, dropna=False):
        out.append((family_label(g.iloc[0], held), g))
    return out


def degradation_families(summary: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Families (same activation, block, stem, width) with plain and residual variants, or plain
    variants at two or more depths: the ones where the degradation question can be asked."""
    out = []
    for label, g in _groups(summary, FAMILY_AXES):
        plain = g[g["connection"] == "plain"]
        if plain["depth"].nunique() >= 2 or (len(plain) and (g["connection"] == "residual").any()):
            out.append((label, g))
    return out


def depth_families(summary: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Families that vary in depth or connection: where curves and error-against-depth apply."""
    return [(label, g) for label, g in _groups(summary, FAMILY_AXES)
            if g["depth"].nunique() >= 2 or g["connection"].nunique() >= 2]


def pairs(summary: pd.DataFrame, axis: str, a: str, b: str) -> pd.DataFrame:
    """Variants that differ only in `axis` (a vs b) at equal depth: one row per pair with both
    sides' variant, params, MACs and errors (suffixes _a and _b, by value: `test_error_mean_pre`).
    E.g. pairs(summary, "activation", "post", "pre").

    Basic and bottleneck nets default to different shortcut options (A and B): a basic net with
    no partner of its own shortcut option is paired with the bottleneck net of the other option.
    """
    others = [x for x in CURVE_AXES if x != axis]
    cols = ["variant", "params", "macs", "seeds", "train_error_mean", "train_error_std", "test_error_mean", "test_error_std"]
    left = summary[summary[axis] == a][others + cols]
    right = summary[summary[axis] == b][others + cols]
    m = left.merge(right, on=others, suffixes=(f"_{a}", f"_{b}"))
    if axis == "block":
        loose = [x for x in others if x != "shortcut"]
        rest_l = left[~left["variant"].isin(m[f"variant_{a}"])]
        rest_r = right[~right["variant"].isin(m[f"variant_{b}"])]
        extra = rest_l.drop(columns="shortcut").merge(rest_r.drop(columns="shortcut"), on=loose, suffixes=(f"_{a}", f"_{b}"))
        extra = extra.drop_duplicates(subset=[f"variant_{a}"]).drop_duplicates(subset=[f"variant_{b}"])
        extra["shortcut"] = "mixed"
        m = pd.concat([m, extra], ignore_index=True) if len(extra) else m
    return m.reset_index(drop=True)


def sensitivity(trials: pd.DataFrame, searched: Iterable[str]) -> pd.DataFrame:
    """Search trials in long format: one row per (trial, searched key) with the value tried and
    the error reached: the trial's value (the validation error a search steers on), or the last one
    reported for a pruned trial."""
    searched = [k for k in searched if k in trials.columns]
    s = trials[(trials["kind"] == "search") & trials["state"].isin(["COMPLETE", "PRUNED"])]
    cols = ["number", "variant", "connection", "depth", "state", "key", "x", "error", "epochs_done"]
    if s.empty or not searched:
        return pd.DataFrame(columns=cols)
    rows = []
    for _, t in s.iterrows():
        err = t["value"] if t["state"] == "COMPLETE" else t["last_value"]
        for k in searched:
            rows.append({"number": t["number"], "variant": t["variant"], "connection": t["connection"], "depth": t["depth"],
                         "state": t["state"], "key": k, "x": t[k], "error": float(err), "epochs_done": t["epochs_done"]})
    return pd.DataFrame(rows, columns=cols)


def failures(trials: pd.DataFrame) -> pd.DataFrame:
    """Failed, diverged and interrupted trials, and final runs that did not learn, with their reasons."""
    f = trials[(trials["state"] == "FAIL") | trials["did_not_learn"].notna()]
    cols = ["number", "variant", "unit", "kind", "seed", "failure", "failure_kind", "did_not_learn", "diverged_epoch",
            "interrupted", "epochs_done", "started"]
    return f[cols].reset_index(drop=True)


# --------------------------------------------------------------------------- the paper

@dataclass(frozen=True)
class PaperValue:
    """A published CIFAR-10 test error (%) and what exactly it is."""

    error: float
    std: float | None  # over runs, where the paper gives one
    source: str  # "He et al. 2016, Table 6"
    what: str  # "mean ± std of 5 runs (best 6.43)", "as reported", ...

    @property
    def label(self) -> str:
        spread = f" ± {self.std:.2f}" if self.std is not None else ""
        return f"{self.error:.2f}%{spread}: {self.source}, {self.what}"


_T6, _T3 = "He et al. 2016, Table 6", "He et al. 2016b, Table 3"
#: He et al. 2016, Table 6: CIFAR-10 test error (%) of the option-A ResNets. ResNet-110 is the one
#: net run 5 times there: "6.43 (6.61 ± 0.16)", best (mean ± std); we compare with the mean.
HE2016_TABLE6 = {d: PaperValue(e, None, _T6, "as reported (one number per net)") for d, e in
                 {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 1202: 7.93}.items()}
HE2016_TABLE6[110] = PaperValue(6.61, 0.16, _T6, "mean ± std of 5 runs (best of the 5: 6.43)")
#: He et al. 2016b, Table 3: CIFAR-10 test error (%), original (post) vs full pre-activation units.
#: Its ResNet-110 original-unit figure is 2016's mean of 5 runs.
HE2016B = {("post", "basic", 110): PaperValue(6.61, None, _T3, "original units, the mean of 5 runs from He et al. 2016"),
           ("pre", "basic", 110): PaperValue(6.37, None, _T3, "full pre-activation, as reported"),
           ("post", "bottleneck", 164): PaperValue(5.93, None, _T3, "original units, as reported"),
           ("pre", "bottleneck", 164): PaperValue(5.46, None, _T3, "full pre-activation, as reported"),
           ("post", "bottleneck", 1001): PaperValue(7.61, None, _T3, "original units, as reported"),
           ("pre", "bottleneck", 1001): PaperValue(4.92, None, _T3, "full pre-activation, as reported")}


def paper_error(dataset: str, row: pd.Series | dict[str, Any], prefer: str = "2016") -> PaperValue | None:
    """The paper's CIFAR-10 test error for a variant, labelled with what it is, when the variant
    is one of the papers' nets (CIFAR stem, width 16) on CIFAR-10; None otherwise.

    ResNet-110 is in both papers (6.61, the mean of 5 runs, in both); `prefer="2016b"` takes the
    2016b table first, for pre- against post-activation comparisons.
    """
    if dataset != "cifar10" or row["stem"] != "cifar" or row["width"] != 16 or row["connection"] != "residual":
        return None
    key = (row["activation"], row["block"], row["depth"])
    if prefer == "2016b" and key in HE2016B:
        return HE2016B[key]
    if row["activation"] == "post" and row["block"] == "basic" and row["shortcut"] == "A" and row["depth"] in HE2016_TABLE6:
        return HE2016_TABLE6[row["depth"]]
    return HE2016B.get(key)


# --------------------------------------------------------------------------- verdicts
#
# A finding is a question about one family, answered by one or more tests (ablate.stats): a
# paired t-test by seed where pairing holds, Welch's t-test otherwise, Holm-corrected across all
# the comparisons of one report. Findings are built in two passes: first every question collects
# its comparisons, then all of them are corrected together, then each question is answered from
# its corrected comparisons.


@dataclass(frozen=True)
class Comparison:
    """Variant `b` against variant `a` on one metric (fractions), over their final runs' seeds.

    `difference` = b - a; `test` holds its 95% CI, the p-value and the method, and after Holm's
    correction across the report `real` (the corrected test rejects at 5%)."""

    metric: str
    a: str
    b: str
    a_mean: float
    a_std: float
    a_n: int
    b_mean: float
    b_std: float
    b_n: int
    test: stats.Test

    @property
    def difference(self) -> float:
        return self.test.difference

    @property
    def ci_low(self) -> float:
        return self.test.ci_low

    @property
    def ci_high(self) -> float:
        return self.test.ci_high

    @property
    def p_value(self) -> float:
        return self.test.p_value

    @property
    def p_adjusted(self) -> float:
        return self.test.p_adjusted

    @property
    def method(self) -> str:
        return self.test.method

    @property
    def real(self) -> bool:
        return self.test.real

    @property
    def testable(self) -> bool:
        return self.test.testable

    @property
    def seeds_needed(self) -> int | None:
        return stats.seeds_needed(self.test)


@dataclass(frozen=True)
class Finding:
    """One answer of the study: a question about one family, the answer, and its numbers."""

    topic: str  # degradation | residual | preact | bottleneck
    family: str  # the axes held fixed, in words
    question: str
    answer: str  # yes | no | no clear difference | trade-off | not enough seeds to tell | ...
    text: str  # the answer in plain words, with numbers
    comparisons: tuple[Comparison, ...] = field(default=())

    @property
    def deciding(self) -> Comparison | None:
        """The comparison the answer rests on: the deepest pair for pair findings, else the first."""
        if not self.comparisons:
            return None
        return self.comparisons[-1] if self.topic in ("preact", "bottleneck") else self.comparisons[0]


@dataclass(frozen=True)
class Samples:
    """Per variant, the final runs' values by seed, and what a seed's data order depends on."""

    values: dict[str, dict[str, dict[int, float]]]  # variant -> metric -> seed -> value
    data_order: dict[str, Any]  # variant -> the recipe's DATA_ORDER_KEYS values (None: final runs disagree)

    def pairable(self, a: str, b: str) -> bool:
        """The same seed means the same data order and augmentation on both sides."""
        oa, ob = self.data_order.get(a), self.data_order.get(b)
        return oa is not None and oa == ob


def samples(trials: pd.DataFrame, recipes: dict[int, dict[str, Any]] | None = None) -> Samples:
    """The final runs of every variant as samples for the tests. `recipes`: trial number ->
    the recipe it ran (the `recipe` user attribute); without it pairing is judged from the
    hyperparameter columns."""
    from ablate.engine.train import DATA_ORDER_KEYS

    fin = _finals(trials) if len(trials) else trials
    values: dict[str, dict[str, dict[int, float]]] = {}
    order: dict[str, Any] = {}
    for name, g in fin.groupby("variant", sort=False) if len(fin) else ():
        values[name] = {m: {int(r["seed"]): float(r[m]) for _, r in g.iterrows() if not pd.isna(r["seed"]) and not pd.isna(r[m])}
                        for m in SUMMARY_STATS}
        keys = set()
        for _, r in g.iterrows():
            rec = (recipes or {}).get(int(r["number"])) or {k: r[k] for k in DATA_ORDER_KEYS if k in r.index}
            keys.add(json.dumps([rec.get(k) for k in DATA_ORDER_KEYS], sort_keys=True, default=str))
        order[name] = keys.pop() if len(keys) == 1 else None
    return Samples(values, order)


def recipes_of(study: optuna.Study) -> dict[int, dict[str, Any]]:
    """Trial number -> the recipe the trial ran (its `recipe` user attribute)."""
    out = {}
    for t in study.get_trials(deepcopy=False):
        recipe = TrialAttrs.read(t.user_attrs).recipe
        if isinstance(recipe, dict):
            out[t.number] = recipe
    return out


def _compare(summary_a: pd.Series, summary_b: pd.Series, metric: str, smp: Samples) -> Comparison:
    a, b = str(summary_a["variant"]), str(summary_b["variant"])
    va = smp.values.get(a, {}).get(metric, {})
    vb = smp.values.get(b, {}).get(metric, {})
    return Comparison(
        metric=metric, a=a, b=b,
        a_mean=float(summary_a[f"{metric}_mean"]), a_std=float(summary_a[f"{metric}_std"]), a_n=int(summary_a["seeds"]),
        b_mean=float(summary_b[f"{metric}_mean"]), b_std=float(summary_b[f"{metric}_std"]), b_n=int(summary_b["seeds"]),
        test=stats.compare(va, vb, pairable=smp.pairable(a, b)),
    )


def pct(x: float, std: float | None = None) -> str:
    """12.3% or 12.3% ± 0.4 (the std in percentage points)."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    s = f"{x * PERCENT:.1f}%"
    if std is not None and not math.isnan(std):
        s += f" ± {std * PERCENT:.1f}" if std * PERCENT >= 0.095 else f" ± {std * PERCENT:.2f}"
    return s


def _seeds(n: int) -> str:
    return f"{n} seed" + ("" if n == 1 else "s")


def _p(p: float) -> str:
    """ "p < 0.001", "p = 0.014", "p = 0.61" """
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def test_words(c: Comparison) -> str:
    """The statistics of one comparison in words: CI, test, corrected p, and what it means."""
    if not c.testable:
        few = min(c.a_n, c.b_n)
        return f"{_seeds(few)} {'each' if c.a_n == c.b_n else 'on one side'}: not enough seeds to tell"
    t = c.test
    words = (f"95% CI {t.ci_low * PERCENT:+.1f} to {t.ci_high * PERCENT:+.1f} points, {t.method} "
             f"{_p(t.p_value)}, Holm-corrected {_p(t.p_adjusted)}")
    if c.real:
        return f"{words}: a real difference"
    need = c.seeds_needed
    if need is None:
        follow = ""
    elif need > stats.MAX_SEEDS:
        follow = f"; a difference this small would take more than {stats.MAX_SEEDS} seeds a side to detect"
    else:
        follow = (f"; about {need} seeds a side would detect a difference of this size "
                  f"at {stats.POWER:.0%} power")
    return f"{words}: no clear difference{follow}"


def _points(d: float) -> str:
    return f"{d * PERCENT:+.1f} points"


def _by_depth(g: pd.DataFrame) -> pd.DataFrame:
    return g[g["seeds"] > 0].sort_values("depth")


def _series(g: pd.DataFrame, metric: str) -> str:
    return ", ".join(f"{r['depth']}: {pct(r[f'{metric}_mean'], r[f'{metric}_std'])}" for _, r in g.iterrows())


METRIC_LABELS = {"train_error": "training error", "test_error": "test error", "val_error": "validation error"}
#: "training error" wherever the report shows it: as He et al. plot it, not a clean re-evaluation.
TRAIN_ERROR_MEANING = "running error over each epoch's augmented training batches"


@dataclass
class _Question:
    """A finding before its tests are corrected: its comparisons and how to answer from them."""

    comparisons: list[Comparison]
    answer: Callable[[list[Comparison]], Finding]


def _degradation(label: str, plain: pd.DataFrame, smp: Samples) -> _Question | None:
    p = _by_depth(plain)
    if p["depth"].nunique() < 2:
        return None
    lo, hi = p.iloc[0], p.iloc[-1]

    def answer(cs: list[Comparison]) -> Finding:
        (c,) = cs
        if not c.testable:
            ans = "not enough seeds to tell"
        elif c.real:
            ans = "yes" if c.difference > 0 else "no (it falls)"
        else:
            ans = "no clear difference"
        rise = "rises" if c.difference > 0 else "falls" if c.difference < 0 else "stays"
        text = (
            f"Plain nets ({label}): training error {rise} from {pct(lo['train_error_mean'], lo['train_error_std'])} "
            f"at {lo['depth']} layers to {pct(hi['train_error_mean'], hi['train_error_std'])} at {hi['depth']} layers "
            f"({_points(c.difference)}; {test_words(c)}). Test error: {pct(lo['test_error_mean'], lo['test_error_std'])} to "
            f"{pct(hi['test_error_mean'], hi['test_error_std'])}. Training error by depth: {_series(p, 'train_error')}."
        )
        if ans == "yes":
            text += " This is the degradation problem: the deeper plain net fits its training data worse."
        return Finding("degradation", label, "Does training error rise with depth for plain nets?", ans, text, tuple(cs))

    return _Question([_compare(lo, hi, "train_error", smp)], answer)


def _residual(label: str, plain: pd.DataFrame, residual: pd.DataFrame, smp: Samples,
              plain_rise: _Question | None) -> _Question | None:
    r = _by_depth(residual)
    p = _by_depth(plain)
    common = sorted(set(p["depth"]) & set(r["depth"]))
    if not common:
        return None
    d = common[-1]
    pd_, rd = p[p["depth"] == d].iloc[0], r[r["depth"] == d].iloc[0]
    shortcut = rd["shortcut"]
    comps = [_compare(pd_, rd, "train_error", smp)]  # residual - plain at the deepest shared depth
    lo = hi = None
    if r["depth"].nunique() >= 2:
        lo, hi = r.iloc[0], r.iloc[-1]
        comps.append(_compare(lo, hi, "train_error", smp))

    def answer(cs: list[Comparison]) -> Finding:
        gap, rise = cs[0], (cs[1] if len(cs) > 1 else None)
        base = plain_rise.comparisons[0] if plain_rise is not None else None  # corrected in place by verdicts()
        parts = []
        if rise is not None:
            parts.append(
                f"Residual nets (option {shortcut} shortcuts): training error goes from {pct(lo['train_error_mean'], lo['train_error_std'])} "
                f"at {lo['depth']} layers to {pct(hi['train_error_mean'], hi['train_error_std'])} at {hi['depth']} layers "
                f"({_points(rise.difference)}; {test_words(rise)})."
            )
        better = "lower" if gap.difference < 0 else "higher"
        parts.append(
            f"At {d} layers the residual net's training error is {pct(rd['train_error_mean'], rd['train_error_std'])} against "
            f"{pct(pd_['train_error_mean'], pd_['train_error_std'])} for the plain net ({_points(gap.difference)}, {better}; "
            f"{test_words(gap)}); test error {pct(rd['test_error_mean'], rd['test_error_std'])} against "
            f"{pct(pd_['test_error_mean'], pd_['test_error_std'])}."
        )
        if any(not x.testable for x in (gap, *(y for y in (rise, base) if y is not None))):
            ans = "not enough seeds to tell"
        elif base is not None and not (base.real and base.difference > 0):
            ans = "no degradation to remove"
        elif rise is not None and rise.real and rise.difference > 0:
            ans = "no"
            parts.append("Residual nets also train worse when deeper: the shortcuts do not remove the degradation here.")
        elif gap.real and gap.difference < 0:
            ans = "yes"
            parts.append("The shortcuts remove the degradation: the deep residual net trains better than the deep plain net, "
                         "and depth brings it no real rise in training error.")
        else:
            ans = "no clear difference"
        question = "Does the residual version remove the degradation?"
        return Finding("residual", f"{label}, option {shortcut} shortcuts", question, ans, " ".join(parts), tuple(cs))

    return _Question(comps, answer)


def _pair_question(topic: str, question: str, label: str, pr: pd.DataFrame, a: str, b: str, dataset: str,
                   smp: Samples) -> _Question:
    """Every pair is tested (and corrected with the rest); the deepest pair decides the answer."""
    pr = pr.sort_values("depth")
    sides = []
    for _, row in pr.iterrows():
        sa = pd.Series({"variant": row[f"variant_{a}"], "seeds": row[f"seeds_{a}"],
                        **{k: row[f"{k}_{a}"] for k in ("test_error_mean", "test_error_std", "train_error_mean", "train_error_std")}})
        sb = pd.Series({"variant": row[f"variant_{b}"], "seeds": row[f"seeds_{b}"],
                        **{k: row[f"{k}_{b}"] for k in ("test_error_mean", "test_error_std", "train_error_mean", "train_error_std")}})
        sides.append((sa, sb, row))
    comps = [_compare(sa, sb, "test_error", smp) for sa, sb, _ in sides]

    def answer(cs: list[Comparison]) -> Finding:
        texts = []
        for c, (sa, sb, row) in zip(cs, sides):
            text = (f"{row['depth']} layers: {sb['variant']} {pct(c.b_mean, c.b_std)} against {sa['variant']} {pct(c.a_mean, c.a_std)} "
                    f"test error ({_points(c.difference)}; {test_words(c)})")
            if topic == "bottleneck":
                rp, rm = row[f"params_{b}"] / row[f"params_{a}"], row[f"macs_{b}"] / row[f"macs_{a}"]
                text += f", with {rp:.2f}x the parameters and {rm:.2f}x the MACs"
            paper = [paper_error(dataset, {**row.to_dict(), pair_axis(topic): side}, prefer="2016b") for side in (a, b)]
            if all(paper):
                text += f" (paper: {paper[1].error:.2f}% against {paper[0].error:.2f}%, {paper[1].source})"
            texts.append(text)
        deep, row = cs[-1], sides[-1][2]
        if topic == "bottleneck":
            rp, rm = row[f"params_{b}"] / row[f"params_{a}"], row[f"macs_{b}"] / row[f"macs_{a}"]
            cheaper, dearer = rp < 1 and rm < 1, rp > 1 and rm > 1
            if not deep.testable:
                ans = "not enough seeds to tell"
            elif not deep.real:
                ans = "yes" if cheaper else "no" if dearer else "mixed"
            elif deep.difference < 0:
                ans = "yes" if rp <= 1 and rm <= 1 else "trade-off"
            else:
                ans = "no" if rp >= 1 and rm >= 1 else "trade-off"
            tail = {"yes": "The bottleneck net is better per parameter and per MAC: as accurate or better for less.",
                    "no": "The bottleneck net is not better per parameter or per MAC here.",
                    "trade-off": "A trade-off: one is cheaper, the other more accurate.",
                    "mixed": "Mixed: cheaper in one measure, dearer in the other, with no clear difference in accuracy.",
                    "not enough seeds to tell": ""}[ans]
        else:
            if not deep.testable:
                ans = "not enough seeds to tell"
            elif deep.real:
                ans = "yes" if deep.difference < 0 else "no (it hurts)"
            else:
                ans = "no clear difference"
            tail = {"yes": "Pre-activation helps at depth.", "no (it hurts)": "Pre-activation is worse here.",
                    "no clear difference": "No clear difference at this number of seeds.", "not enough seeds to tell": ""}[ans]
        text = "; ".join(texts) + "." + (f" {tail}" if tail else "")
        return Finding(topic, label, question, ans, text, tuple(cs))

    return _Question(comps, answer)


def pair_axis(topic: str) -> str:
    return {"preact": "activation", "bottleneck": "block"}[topic]


def verdicts(summary: pd.DataFrame, dataset: str = "", smp: Samples | None = None) -> list[Finding]:
    """The study's answers, family by family: degradation of plain nets, its removal by
    shortcuts, pre- vs post-activation at equal depth, bottleneck vs basic per parameter and MAC.
    Questions a study cannot ask (no plain nets, one depth, no pairs) give no finding.

    `smp`: the final runs' per-seed values (`samples(trials)`); every comparison of every
    finding is tested on them and Holm-corrected together (ablate.stats)."""
    if summary.empty:
        return []
    smp = smp or Samples({}, {})
    questions: list[_Question] = []
    for label, g in _groups(summary, FAMILY_AXES):
        plain, residual = g[g["connection"] == "plain"], g[g["connection"] == "residual"]
        rise = _degradation(label, plain, smp)
        if rise is not None:
            questions.append(rise)
        if len(plain):
            for _, res in residual.groupby("shortcut", sort=False):
                q = _residual(label, plain, res, smp, rise)
                if q is not None:
                    questions.append(q)
    for topic, axis, a, b, question in (
        ("preact", "activation", "post", "pre", "Does pre-activation help at depth?"),
        ("bottleneck", "block", "basic", "bottleneck", "Is the bottleneck block better per parameter and per MAC?"),
    ):
        pr = pairs(summary[summary["seeds"] > 0], axis, a, b)
        if pr.empty:
            continue
        held = [x for x in ("connection", "activation", "block", "stem", "width", "shortcut") if x != axis]
        for _, group in pr.groupby(held, sort=False, dropna=False):
            label = family_label(group.iloc[0], held)
            questions.append(_pair_question(topic, question, label, group, a, b, dataset, smp))
    # Holm across every comparison of the report, then answer each question from its corrected tests.
    flat = [c for q in questions for c in q.comparisons]
    corrected = iter(stats.correct([c.test for c in flat]))
    for q in questions:
        q.comparisons[:] = [dataclasses.replace(c, test=next(corrected)) for c in q.comparisons]
    return [q.answer(q.comparisons) for q in questions]


FINDING_COLUMNS = ("topic", "family", "question", "answer", "metric", "a", "b", "a_mean", "a_std", "a_n",
                   "b_mean", "b_std", "b_n", "difference", "ci_low", "ci_high", "p_value", "p_adjusted", "method", "real")


def findings_table(findings: list[Finding]) -> pd.DataFrame:
    """The findings flat, one row per comparison, for export and tests. `p_value` is the test's
    own, `p_adjusted` Holm-corrected across the report, `real` whether that rejects at 5%."""
    rows = []
    for f in findings:
        for c in f.comparisons or (None,):
            rows.append({
                "topic": f.topic, "family": f.family, "question": f.question, "answer": f.answer,
                **({} if c is None else {
                    "metric": c.metric, "a": c.a, "b": c.b, "a_mean": c.a_mean, "a_std": c.a_std, "a_n": c.a_n,
                    "b_mean": c.b_mean, "b_std": c.b_std, "b_n": c.b_n, "difference": c.difference,
                    "ci_low": c.ci_low, "ci_high": c.ci_high, "p_value": c.p_value, "p_adjusted": c.p_adjusted,
                    "method": c.method, "real": bool(c.real),
                }),
            })
    return pd.DataFrame(rows, columns=list(FINDING_COLUMNS))
