"""A study's results as tables, computed from its Optuna storage alone: no drawing here.

Everything is read from what `ablate run` stores (docs/storage.md), so these tables work on a
study that is still running or was run on other machines. The report (`ablate.report`) draws
them, `ablate export` writes them, and the tests check them without drawing anything, as
Optuna's own plots compute their data first (STYLE.md, "Reports").

    open_study(name, storage)        -> optuna.Study, or a ReportError listing the studies there
    trials_table(study)              one row per trial (unit attempt)
    epochs_table(study)              one row per (trial, epoch), gradient norms as grad_<stage>
    variant_summary(trials, ...)     one row per variant: final runs as mean +- std, counts
    verdicts(summary, dataset)       the study's answers as structured `Finding`s
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable

import numpy as np
import optuna
import pandas as pd

from ablate import outcomes

AXES = ("connection", "activation", "block", "depth", "shortcut", "stem", "width", "blocks")
#: Axes a family holds fixed: variants of one family differ only in depth (and connection).
FAMILY_AXES = ("activation", "block", "stem", "width")
PERCENT = 100.0


class ReportError(Exception):
    """A study or storage that cannot be reported on; the message says why and what exists."""


# --------------------------------------------------------------------------- opening a study


def safe_url(storage: str) -> str:
    """The storage URL without its password, for messages and the provenance section."""
    try:
        from sqlalchemy.engine import make_url

        return make_url(storage).render_as_string(hide_password=True)
    except Exception:  # not an SQLAlchemy URL: show it without anything that looks like user:password@
        return re.sub(r"//[^/@]*@", "//***@", storage)


def one_line(exc: BaseException) -> str:
    """A storage error in one line: the database's own message, without SQLAlchemy's SQL text and link."""
    orig = getattr(exc, "orig", None)  # SQLAlchemy wraps the driver's exception
    text = str(orig if orig is not None else exc).strip()
    text = re.split(r"\n|\[SQL: |\(Background on this error at", text)[0].strip()
    return text or type(exc).__name__


def _sqlite_path(storage: str) -> Path | None:
    if not storage.startswith("sqlite:///"):
        return None
    path = storage[len("sqlite:///"):].split("?", 1)[0]
    return None if path in ("", ":memory:") else Path(path)


def open_study(study_name: str, storage: str) -> optuna.Study:
    """Load a study for reading. A missing SQLite file or study is a ReportError, never a new one."""
    url = safe_url(storage)
    path = _sqlite_path(storage)
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


def _blocks_text(blocks: Any) -> str | None:
    if blocks is None:
        return None
    if isinstance(blocks, (list, tuple)):
        return "-".join(str(b) for b in blocks)
    return str(blocks)


def _axes(values: dict[str, Any]) -> dict[str, Any]:
    """The variant axes of a `variants` entry or of trial params, normalised: a plain net's
    shortcut is "none" (as in the params), blocks are "3-3-3"."""
    out = {a: values.get(a) for a in AXES}
    if out["shortcut"] in (None, "", "-"):
        out["shortcut"] = "none"
    out["blocks"] = _blocks_text(out["blocks"])
    for key in ("depth", "width"):
        if out[key] is not None:
            try:
                out[key] = int(out[key])
            except (TypeError, ValueError):
                pass
    return out


def _number(x: Any) -> float:
    """A stored number as float; None, strings and the like become NaN."""
    if isinstance(x, bool):
        return float(x)
    if isinstance(x, (int, float)):
        return float(x)
    return math.nan


def _variant_name(ua: dict[str, Any], params: dict[str, Any], number: int) -> str:
    if ua.get("variant"):
        return str(ua["variant"])
    try:  # a trial written by something else: name it from its axes, as the driver would
        from ablate.variants import make_variant

        axes = {a: params[a] for a in AXES if a in params}
        if axes.get("shortcut") == "none":
            axes["shortcut"] = None
        if isinstance(axes.get("blocks"), str):
            axes["blocks"] = [int(b) for b in axes["blocks"].split("-")]
        return make_variant(axes).name
    except Exception:
        return f"trial-{number}"


def _hyperparameters(params: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in params.items() if k not in AXES and k != "seed"}


def _scalar(v: Any) -> Any:
    """Lists and dicts (e.g. milestones) as text, so every column is one plain type."""
    if isinstance(v, (list, tuple)):
        return ",".join(map(str, v))
    if isinstance(v, dict):
        return ", ".join(f"{k}={v[k]}" for k in v)
    return v


TRIAL_COLUMNS = (
    "number", "variant", "unit", "kind", "index", "seed", "state", "value",
    "train_error", "test_error", "val_error", *AXES, "params", "macs",
    "epochs_done", "last_test_error", "images_per_second", "seconds", "seconds_per_epoch",
    "device", "versions", "failure", "diverged_epoch", "interrupted", "started", "completed",
    "failure_kind", "did_not_learn",
)


def trials_table(study: optuna.Study) -> pd.DataFrame:
    """One row per trial: what ran (variant, axes, kind, seed, hyperparameters), how it ended
    (state, errors, failure) and what it cost (params, MACs, throughput, time).

    `interrupted` marks a FAIL trial that was not the unit's own failure (killed, interrupted,
    its checkpoint unwritable: `failure_kind`, ablate.outcomes), retried as a later trial
    (docs/storage.md). `did_not_learn` holds the reason a COMPLETE final run counts as having
    learned nothing (its errors stay out of the means), else None. Hyperparameters (the trial params that are not
    axes or the seed: `lr`, `weight_decay`, ...) follow the fixed columns.
    """
    variants = {v.get("name"): v for v in (study.user_attrs.get("variants") or []) if isinstance(v, dict)}
    rows: list[dict[str, Any]] = []
    hp_keys: dict[str, None] = {}
    for t in study.get_trials(deepcopy=False):
        ua, params = t.user_attrs, t.params
        name = _variant_name(ua, params, t.number)
        spec = variants.get(name)
        axes = _axes(spec if spec is not None else params)
        history = [h for h in (ua.get("history") or []) if isinstance(h, dict)]
        steps = sorted(t.intermediate_values)
        epochs_done = len(history) or len(steps)
        seconds = _number(ua.get("seconds"))
        hist_seconds = [_number(h.get("seconds")) for h in history]
        per_epoch = (float(np.nansum(hist_seconds)) / len(history) if history and not all(map(math.isnan, hist_seconds))
                     else seconds / epochs_done if epochs_done else math.nan)
        state = t.state.name
        failure = ua.get(outcomes.FAILURE)
        kind = outcomes.failure_kind(state, ua)
        row = {
            "number": t.number,
            "variant": name,
            "unit": ua.get("unit"),
            "kind": ua.get("kind") or ("final" if not study.user_attrs.get("search") else None),
            "index": ua.get("index"),
            "seed": ua.get("seed", params.get("seed")),
            "state": state,
            "value": t.value if t.values else math.nan,
            "train_error": _number(ua.get("train_error")),
            "test_error": _number(ua.get("test_error")),
            "val_error": _number(ua.get("val_error")),
            **axes,
            "params": _number(spec.get("params") if spec and spec.get("params") is not None else ua.get("params")),
            "macs": _number(spec.get("macs") if spec and spec.get("macs") is not None else ua.get("macs")),
            "epochs_done": epochs_done,
            "last_test_error": float(t.intermediate_values[steps[-1]]) if steps else math.nan,
            "images_per_second": _number(ua.get("images_per_second")),
            "seconds": seconds,
            "seconds_per_epoch": per_epoch,
            "device": ua.get("device"),
            "versions": json.dumps(ua["versions"], sort_keys=True) if ua.get("versions") else None,
            "failure": None if failure is None else str(failure),
            "diverged_epoch": ua.get("diverged_epoch"),
            "interrupted": state == "FAIL" and not outcomes.is_own(kind),
            "started": t.datetime_start,
            "completed": t.datetime_complete,
            "failure_kind": kind,
            "did_not_learn": _flag(ua, state),
        }
        if state == "COMPLETE" and math.isnan(row["test_error"]):
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


def _flag(ua: dict[str, Any], state: str) -> str | None:
    reason = ua.get(outcomes.DID_NOT_LEARN)
    return str(reason) if reason and state == "COMPLETE" else None


def hyperparameter_columns(trials: pd.DataFrame) -> list[str]:
    return [c for c in trials.columns if c not in TRIAL_COLUMNS]


# --------------------------------------------------------------------------- per epoch

EPOCH_FIELDS = ("train_loss", "train_error", "test_error", "val_error", "lr", "seconds", "images_per_second")


def epochs_table(study: optuna.Study) -> pd.DataFrame:
    """One row per (trial, epoch) with the epoch's figures and `grad_<stage>` columns (mean L2
    norm of each stage's gradient over the epoch: stem, stage1.., head).

    A trial still running has no `history` yet: its rows come from the intermediate values
    (test error only), so the curves of a running study show what is known.
    """
    variants = {v.get("name"): v for v in (study.user_attrs.get("variants") or []) if isinstance(v, dict)}
    rows: list[dict[str, Any]] = []
    stages: dict[str, None] = {}
    for t in study.get_trials(deepcopy=False):
        ua = t.user_attrs
        name = _variant_name(ua, t.params, t.number)
        axes = _axes(variants.get(name) or t.params)
        base = {
            "number": t.number, "variant": name, "kind": ua.get("kind") or ("final" if not study.user_attrs.get("search") else None),
            "seed": ua.get("seed", t.params.get("seed")), "state": t.state.name,
            **{a: axes[a] for a in AXES if a != "blocks"}, "did_not_learn": _flag(ua, t.state.name),
        }
        history = [h for h in (ua.get("history") or []) if isinstance(h, dict)]
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
    columns = ["number", "variant", "kind", "seed", "state", *(a for a in AXES if a != "blocks"), "did_not_learn", "epoch", *EPOCH_FIELDS, *stages]
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
    cols = ["variant", "connection", "activation", "block", "depth", "shortcut", "stem", "width", "epoch"]
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
    cols = ["variant", "connection", "activation", "block", "depth", "shortcut", "stem", "width", "epoch", "stage"]
    if fin.empty or not any(c.startswith("grad_") for c in fin.columns):
        return pd.DataFrame(columns=[*cols, "grad_norm"])
    long = grad_norms_long(fin)
    order = {s: i for i, s in enumerate(dict.fromkeys(long["stage"]))}
    out = long.groupby(cols, sort=False, dropna=False)["grad_norm"].mean().reset_index()
    out["_o"] = out["stage"].map(order)
    return out.sort_values(["variant", "epoch", "_o"]).drop(columns="_o").reset_index(drop=True)


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


def searched_keys(study_attrs: dict[str, Any], trials: pd.DataFrame | None = None) -> list[str]:
    """The hyperparameters a study searched: the `search.space` keys, else those that vary
    among the search trials."""
    search = study_attrs.get("search")
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


def selection_error(val_error: float | None, test_error: float) -> float:
    """What picks a variant's final recipe among its search trials: the validation error when the
    recipe holds a split out, so the test set never chooses hyperparameters; else the test error."""
    return test_error if val_error is None or math.isnan(val_error) else val_error


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
    others = [x for x in ("connection", "activation", "block", "depth", "shortcut", "stem", "width") if x != axis]
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
    the error reached (the final test error, or the last reported one for a pruned trial)."""
    searched = [k for k in searched if k in trials.columns]
    s = trials[(trials["kind"] == "search") & trials["state"].isin(["COMPLETE", "PRUNED"])]
    cols = ["number", "variant", "connection", "depth", "state", "key", "x", "error", "epochs_done"]
    if s.empty or not searched:
        return pd.DataFrame(columns=cols)
    rows = []
    for _, t in s.iterrows():
        err = t["value"] if t["state"] == "COMPLETE" else t["last_test_error"]
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

#: He et al. 2016, Table 6: CIFAR-10 test error (%) of the option-A ResNets (best of 5 runs; 110: 6.61 +- 0.16 mean).
HE2016_TABLE6 = {20: 8.75, 32: 7.51, 44: 7.17, 56: 6.97, 110: 6.43, 1202: 7.93}
#: He et al. 2016b, Table 3: CIFAR-10 test error (%), original (post) vs full pre-activation units.
HE2016B = {("post", "basic", 110): 6.61, ("pre", "basic", 110): 6.37,
           ("post", "bottleneck", 164): 5.93, ("pre", "bottleneck", 164): 5.46,
           ("post", "bottleneck", 1001): 7.61, ("pre", "bottleneck", 1001): 4.92}


def paper_error(dataset: str, row: pd.Series | dict[str, Any], prefer: str = "2016") -> tuple[float, str] | None:
    """The paper's CIFAR-10 test error (%) for a variant, and its source, when the variant is one
    of the papers' nets (CIFAR stem, width 16) on CIFAR-10; None otherwise.

    ResNet-110 is in both papers: 6.43 in Table 6 (best of 5 runs) and 6.61 in 2016b (the mean
    of 5, against which 2016b measures pre-activation); `prefer="2016b"` picks the latter.
    """
    if dataset != "cifar10" or row["stem"] != "cifar" or row["width"] != 16 or row["connection"] != "residual":
        return None
    key = (row["activation"], row["block"], row["depth"])
    if prefer == "2016b" and key in HE2016B:
        return HE2016B[key], "He et al. 2016b, Table 3"
    if row["activation"] == "post" and row["block"] == "basic" and row["shortcut"] == "A" and row["depth"] in HE2016_TABLE6:
        return HE2016_TABLE6[row["depth"]], "He et al. 2016, Table 6"
    if key in HE2016B:
        return HE2016B[key], "He et al. 2016b, Table 3"
    return None


# --------------------------------------------------------------------------- verdicts


@dataclass(frozen=True)
class Comparison:
    """Variant `b` against variant `a` on one metric (fractions); `difference` = b - a.

    The difference "exceeds the spread" when it is larger than the sum of the two standard
    deviations over seeds: conservative (stricter than a two-sided t-test at 5% for 3+ seeds each),
    and needs two seeds a side; with fewer `exceeds` is None, "not enough seeds to tell".
    """

    metric: str
    a: str
    b: str
    a_mean: float
    a_std: float
    a_n: int
    b_mean: float
    b_std: float
    b_n: int

    @property
    def difference(self) -> float:
        return self.b_mean - self.a_mean

    @property
    def spread(self) -> float:
        return self.a_std + self.b_std

    @property
    def exceeds(self) -> bool | None:
        if self.a_n < 2 or self.b_n < 2 or math.isnan(self.spread):
            return None
        return abs(self.difference) > self.spread


@dataclass(frozen=True)
class Finding:
    """One answer of the study: a question about one family, the answer, and its numbers."""

    topic: str  # degradation | residual | preact | bottleneck
    family: str  # the axes held fixed, in words
    question: str
    answer: str  # yes | no | no clear difference | trade-off | not enough seeds to tell | ...
    text: str  # the answer in plain words, with numbers
    comparisons: tuple[Comparison, ...] = field(default=())


def _compare(summary_a: pd.Series, summary_b: pd.Series, metric: str) -> Comparison:
    return Comparison(
        metric=metric, a=summary_a["variant"], b=summary_b["variant"],
        a_mean=float(summary_a[f"{metric}_mean"]), a_std=float(summary_a[f"{metric}_std"]), a_n=int(summary_a["seeds"]),
        b_mean=float(summary_b[f"{metric}_mean"]), b_std=float(summary_b[f"{metric}_std"]), b_n=int(summary_b["seeds"]),
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


def _spread_words(c: Comparison) -> str:
    if c.exceeds is None:
        few = min(c.a_n, c.b_n)
        return f"{_seeds(few)} {'each' if c.a_n == c.b_n else 'at least'}: not enough seeds to tell whether this exceeds the spread over seeds"
    if c.exceeds:
        return f"more than the spread over seeds ({c.spread * PERCENT:.1f} points)"
    return f"within the spread over seeds ({c.spread * PERCENT:.1f} points)"


def _points(d: float) -> str:
    return f"{d * PERCENT:+.1f} points"


def _by_depth(g: pd.DataFrame) -> pd.DataFrame:
    return g[g["seeds"] > 0].sort_values("depth")


def _series(g: pd.DataFrame, metric: str) -> str:
    return ", ".join(f"{r['depth']}: {pct(r[f'{metric}_mean'], r[f'{metric}_std'])}" for _, r in g.iterrows())


def _degradation(label: str, plain: pd.DataFrame) -> tuple[Finding | None, Comparison | None]:
    p = _by_depth(plain)
    if p["depth"].nunique() < 2:
        return None, None
    lo, hi = p.iloc[0], p.iloc[-1]
    c = _compare(lo, hi, "train_error")
    t = _compare(lo, hi, "test_error")
    if c.exceeds is None:
        answer = "not enough seeds to tell"
    elif c.exceeds:
        answer = "yes" if c.difference > 0 else "no (it falls)"
    else:
        answer = "no clear change"
    rise = "rises" if c.difference > 0 else "falls" if c.difference < 0 else "stays"
    text = (
        f"Plain nets ({label}): training error {rise} from {pct(lo['train_error_mean'], lo['train_error_std'])} "
        f"at {lo['depth']} layers to {pct(hi['train_error_mean'], hi['train_error_std'])} at {hi['depth']} layers "
        f"({_points(c.difference)}; {_spread_words(c)}). Test error: {pct(t.a_mean, t.a_std)} to {pct(t.b_mean, t.b_std)} "
        f"({_points(t.difference)}). Training error by depth: {_series(p, 'train_error')}."
    )
    if answer == "yes":
        text += " This is the degradation problem: the deeper plain net fits its training data worse."
    return Finding("degradation", label, "Does training error rise with depth for plain nets?", answer, text, (c, t)), c


def _residual(label: str, plain: pd.DataFrame, residual: pd.DataFrame, plain_rise: Comparison | None) -> Finding | None:
    r = _by_depth(residual)
    p = _by_depth(plain)
    common = sorted(set(p["depth"]) & set(r["depth"]))
    if not common:
        return None
    d = common[-1]
    pd_, rd = p[p["depth"] == d].iloc[0], r[r["depth"] == d].iloc[0]
    gap = _compare(pd_, rd, "train_error")  # residual - plain at the deepest shared depth
    gap_test = _compare(pd_, rd, "test_error")
    shortcut = rd["shortcut"]
    parts = []
    rise = None
    if r["depth"].nunique() >= 2:
        lo, hi = r.iloc[0], r.iloc[-1]
        rise = _compare(lo, hi, "train_error")
        parts.append(
            f"Residual nets (option {shortcut} shortcuts): training error goes from {pct(lo['train_error_mean'], lo['train_error_std'])} "
            f"at {lo['depth']} layers to {pct(hi['train_error_mean'], hi['train_error_std'])} at {hi['depth']} layers "
            f"({_points(rise.difference)}; {_spread_words(rise)})."
        )
    better = "lower" if gap.difference < 0 else "higher"
    parts.append(
        f"At {d} layers the residual net's training error is {pct(rd['train_error_mean'], rd['train_error_std'])} against "
        f"{pct(pd_['train_error_mean'], pd_['train_error_std'])} for the plain net ({_points(gap.difference)}, {better}; "
        f"{_spread_words(gap)}); test error {pct(gap_test.b_mean, gap_test.b_std)} against {pct(gap_test.a_mean, gap_test.a_std)} "
        f"({_points(gap_test.difference)})."
    )
    comparisons = tuple(x for x in (rise, gap, gap_test) if x is not None)
    if any(x.exceeds is None for x in (gap, *(y for y in (rise, plain_rise) if y is not None))):
        answer = "not enough seeds to tell"
    elif plain_rise is not None and not (plain_rise.exceeds and plain_rise.difference > 0):
        answer = "no degradation to remove"
    elif rise is not None and rise.exceeds and rise.difference > 0:
        answer = "no"
        parts.append("Residual nets also train worse when deeper: the shortcuts do not remove the degradation here.")
    elif gap.exceeds and gap.difference < 0:
        answer = "yes"
        parts.append("The shortcuts remove the degradation: depth no longer costs training error.")
    else:
        answer = "no clear difference"
    question = "Does the residual version remove the degradation?"
    return Finding("residual", f"{label}, option {shortcut} shortcuts", question, answer, " ".join(parts), comparisons)


def _pair_finding(topic: str, question: str, label: str, pr: pd.DataFrame, a: str, b: str, dataset: str) -> Finding:
    """The deepest pair decides the answer; every pair is listed."""
    pr = pr.sort_values("depth")
    texts = []
    comps = []
    for _, row in pr.iterrows():
        sa = pd.Series({"variant": row[f"variant_{a}"], "seeds": row[f"seeds_{a}"],
                        **{k: row[f"{k}_{a}"] for k in ("test_error_mean", "test_error_std", "train_error_mean", "train_error_std")}})
        sb = pd.Series({"variant": row[f"variant_{b}"], "seeds": row[f"seeds_{b}"],
                        **{k: row[f"{k}_{b}"] for k in ("test_error_mean", "test_error_std", "train_error_mean", "train_error_std")}})
        c = _compare(sa, sb, "test_error")
        comps.append(c)
        text = (f"{row['depth']} layers: {sb['variant']} {pct(c.b_mean, c.b_std)} against {sa['variant']} {pct(c.a_mean, c.a_std)} "
                f"test error ({_points(c.difference)}; {_spread_words(c)})")
        if topic == "bottleneck":
            rp, rm = row[f"params_{b}"] / row[f"params_{a}"], row[f"macs_{b}"] / row[f"macs_{a}"]
            text += f", with {rp:.2f}x the parameters and {rm:.2f}x the MACs"
        paper = [paper_error(dataset, {**row.to_dict(), pair_axis(topic): side}, prefer="2016b") for side in (a, b)]
        if all(paper):
            text += f" (paper: {paper[1][0]:.2f}% against {paper[0][0]:.2f}%, {paper[1][1]})"
        texts.append(text)
    deep, row = comps[-1], pr.iloc[-1]
    if topic == "bottleneck":
        rp, rm = row[f"params_{b}"] / row[f"params_{a}"], row[f"macs_{b}"] / row[f"macs_{a}"]
        cheaper, dearer = rp < 1 and rm < 1, rp > 1 and rm > 1
        if deep.exceeds is None:
            answer = "not enough seeds to tell"
        elif not deep.exceeds:
            answer = "yes" if cheaper else "no" if dearer else "mixed"
        elif deep.difference < 0:
            answer = "yes" if rp <= 1 and rm <= 1 else "trade-off"
        else:
            answer = "no" if rp >= 1 and rm >= 1 else "trade-off"
        tail = {"yes": "The bottleneck net is better per parameter and per MAC: as accurate or better for less.",
                "no": "The bottleneck net is not better per parameter or per MAC here.",
                "trade-off": "A trade-off: one is cheaper, the other more accurate.",
                "mixed": "Mixed: cheaper in one measure, dearer in the other, at equal accuracy.",
                "not enough seeds to tell": ""}[answer]
    else:
        if deep.exceeds is None:
            answer = "not enough seeds to tell"
        elif deep.exceeds:
            answer = "yes" if deep.difference < 0 else "no (it hurts)"
        else:
            answer = "no clear difference"
        tail = {"yes": "Pre-activation helps at depth.", "no (it hurts)": "Pre-activation is worse here.",
                "no clear difference": "No difference beyond the spread over seeds.", "not enough seeds to tell": ""}[answer]
    text = "; ".join(texts) + "." + (f" {tail}" if tail else "")
    return Finding(topic, label, question, answer, text, tuple(comps))


def pair_axis(topic: str) -> str:
    return {"preact": "activation", "bottleneck": "block"}[topic]


def verdicts(summary: pd.DataFrame, dataset: str = "") -> list[Finding]:
    """The study's answers, family by family: degradation of plain nets, its removal by
    shortcuts, pre- vs post-activation at equal depth, bottleneck vs basic per parameter and MAC.
    Questions a study cannot ask (no plain nets, one depth, no pairs) give no finding."""
    findings: list[Finding] = []
    if summary.empty:
        return findings
    for label, g in _groups(summary, FAMILY_AXES):
        plain, residual = g[g["connection"] == "plain"], g[g["connection"] == "residual"]
        finding, rise = _degradation(label, plain)
        if finding is not None:
            findings.append(finding)
        if len(plain):
            for _, res in residual.groupby("shortcut", sort=False):
                f = _residual(label, plain, res, rise)
                if f is not None:
                    findings.append(f)
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
            findings.append(_pair_finding(topic, question, label, group, a, b, dataset))
    return findings


def findings_table(findings: list[Finding]) -> pd.DataFrame:
    """The findings flat, one row per comparison, for export and tests."""
    rows = []
    for f in findings:
        for c in f.comparisons or (None,):
            rows.append({
                "topic": f.topic, "family": f.family, "question": f.question, "answer": f.answer,
                **({} if c is None else {
                    "metric": c.metric, "a": c.a, "b": c.b, "a_mean": c.a_mean, "a_std": c.a_std, "a_n": c.a_n,
                    "b_mean": c.b_mean, "b_std": c.b_std, "b_n": c.b_n, "difference": c.difference,
                    "spread": c.spread, "exceeds": c.exceeds,
                }),
            })
    return pd.DataFrame(rows)
