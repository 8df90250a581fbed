"""One row per variant, its families and pairs: what the verdicts and the report compare.

    variant_summary(trials, ...)     one row per variant: final runs as mean +- std, counts
    families(summary, ...)           variants that differ only in depth (and connection)
    pairs(summary, axis, a, b)       variants that differ only in one axis, side by side
"""

from __future__ import annotations

import math
from typing import Any, Iterable

import pandas as pd

from ablate.analysis.format import value_text
from ablate.analysis.frames import CURVE_AXES, finals, hyperparameter_columns
from ablate.spec.variants import AXES
from ablate.storage import StudyAttrs, axis_values, number, selection_error

__all__ = ["SUMMARY_STATS", "VARIED_AXES", "FAMILY_AXES", "searched_keys", "variant_summary", "efficient_front",
           "family_label", "groups", "degradation_families", "depth_families", "pairs", "sensitivity", "failures"]

#: Axes that vary inside a family: depth and connection (and what follows from them: a plain
#: net's shortcut, the blocks per stage).
VARIED_AXES = ("connection", "depth", "shortcut", "blocks")
#: Axes a family holds fixed: every other axis (activation, block, stem, width, and any axis added
#: to ablate.spec.variants.AXES), so a new axis never merges families in the verdicts.
FAMILY_AXES = tuple(a for a in AXES if a not in VARIED_AXES)


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


def value_text(v: Any) -> str:
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
        fin = finals(g)
        first = g.iloc[0] if len(g) else None
        axes = axis_values(spec) if spec else {a: first[a] for a in AXES}
        row: dict[str, Any] = {"variant": name, **axes}
        row["params"] = number(spec.get("params")) if spec.get("params") is not None else (first["params"] if first is not None else math.nan)
        row["macs"] = number(spec.get("macs")) if spec.get("macs") is not None else (first["macs"] if first is not None else math.nan)
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
            row["best_hyperparameters"] = ", ".join(f"{k}={value_text(best[k])}" for k in searched if k in best.index)
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
    # An axis without words of its own (one added to AXES later) reads "axis value".
    return ", ".join(words.get(a, lambda v, a=a: f"{a} {v}")(row[a]) for a in held)


def groups(summary: pd.DataFrame, held: tuple[str, ...]) -> list[tuple[str, pd.DataFrame]]:
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
    for label, g in groups(summary, FAMILY_AXES):
        plain = g[g["connection"] == "plain"]
        if plain["depth"].nunique() >= 2 or (len(plain) and (g["connection"] == "residual").any()):
            out.append((label, g))
    return out


def depth_families(summary: pd.DataFrame) -> list[tuple[str, pd.DataFrame]]:
    """Families that vary in depth or connection: where curves and error-against-depth apply."""
    return [(label, g) for label, g in groups(summary, FAMILY_AXES)
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
