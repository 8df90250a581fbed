"""The final runs' diagnostics (ablate.engine.diagnostics) as tables, and what they say, in numbers.

    init       per variant, seed and measurement: per-layer gradient norm at initialisation (kind
               "layer"), signal propagation per block ("block"), gradient correlation by lag ("lag")
    lesion     per variant, seed and block: test error with the block removed, and its increase
    landscape  per variant, seed, kind ("1d", "2d", "interpolation") and alpha (beta): the loss
    per_seed   per variant and seed, one number per instrument (the lag where the gradient
               correlation falls below 0.5, the largest and mean lesion increase, the first layer's
               gradient norm over the last's, the 1-D slice's rise at +-1 over its value at 0)
    summary    per variant: each per-seed number's mean and 95% t-interval over seeds (scipy.stats)
    readings   sentences that read the numbers against the papers' claims, plain against residual

Only final runs that completed count (runs that learned nothing included: why they did not is the
question). Nothing here imports torch.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import optuna
import pandas as pd
from scipy import stats as st

from ablate.analysis.format import points, signed
from ablate.storage import TrialAttrs

__all__ = ["Why", "why_tables", "mean_ci", "WHY_AXES", "PER_SEED_MEASURES", "readings"]

WHY_AXES = ("variant", "connection", "depth", "shortcut", "activation", "block", "width", "seed")
PER_SEED_MEASURES = ("lag_below_half", "lesion_max_increase", "lesion_mean_increase", "grad_first_over_last",
                     "landscape_rise")


@dataclass(frozen=True)
class Why:
    init: pd.DataFrame
    lesion: pd.DataFrame
    landscape: pd.DataFrame
    per_seed: pd.DataFrame
    summary: pd.DataFrame
    errors: list[str] = field(default_factory=list)  # "variant seed N: what failed"
    readings: list[str] = field(default_factory=list)
    #: per instrument, its curve over seeds (`curves`): what the report draws
    curves: dict[str, pd.DataFrame] = field(default_factory=dict)

    @property
    def empty(self) -> bool:
        return self.init.empty and self.lesion.empty and self.landscape.empty


def mean_ci(values: Any, level: float = 0.95) -> tuple[float, float, float, int]:
    """(mean, low, high, n) of the finite values: a t-interval over seeds (NaN bounds below 2 values)."""
    v = np.asarray([x for x in values if x is not None and np.isfinite(x)], dtype=float)
    n = len(v)
    if n == 0:
        return math.nan, math.nan, math.nan, 0
    m = float(v.mean())
    if n < 2:
        return m, math.nan, math.nan, 1
    half = float(st.t.ppf(0.5 + level / 2, n - 1) * v.std(ddof=1) / math.sqrt(n))
    return m, m - half, m + half, n


def _init_rows(base: dict[str, Any], init: dict[str, Any]) -> list[dict[str, Any]]:
    rows = [{**base, "kind": "layer", "index": r["index"], "name": r["layer"], "grad_norm": r["grad_norm"]}
            for r in init.get("layers", [])]
    rows += [{**base, "kind": "block", "index": r["index"], "name": r["block"], "mean_sq": r["mean_sq"],
              "variance": r["variance"], "branch_variance": r["branch_variance"]} for r in init.get("blocks", [])]
    sh = init.get("shattered") or {}
    rows += [{**base, "kind": "lag", "index": lag, "name": f"lag {lag}", "lag": lag, "correlation": c}
             for lag, c in zip(sh.get("lags", []), sh.get("correlation", []))]
    return rows


def _per_seed(base: dict[str, Any], d: dict[str, Any]) -> dict[str, Any]:
    row = dict(base)
    init = d.get("init") or {}
    sh = init.get("shattered") or {}
    if sh:
        lag = sh.get("lag_below_half")
        # Not below 0.5 within the lags measured: censored at one past the last lag (said so in the text).
        row["lag_below_half"] = float(lag) if lag is not None else float(len(sh.get("lags", [])))
        row["lag_censored"] = lag is None
    layers = [r["grad_norm"] for r in init.get("layers", [])]
    if len(layers) >= 2 and layers[-1]:
        row["grad_first_over_last"] = layers[0] / layers[-1]
    blocks = (d.get("lesion") or {}).get("blocks") or []
    if blocks:
        inc = [b["increase"] for b in blocks]
        row["lesion_max_increase"], row["lesion_mean_increase"] = max(inc), float(np.mean(inc))
        row["lesion_base_error"] = d["lesion"]["error"]
    one = ((d.get("landscape") or {}).get("1d")) or []
    at0 = [p["loss"] for p in one if p["alpha"] == 0 and p["loss"] is not None]
    ends = [p["loss"] for p in one if abs(p["alpha"]) == 1 and p["loss"] is not None]
    if at0 and ends and at0[0] > 0:
        row["landscape_rise"] = float(np.mean(ends)) / at0[0]
    return row


def why_tables(study: optuna.Study, trials: pd.DataFrame) -> Why:
    """The diagnostics of the study's completed final runs; `trials` is `frames.trials_table(study)`."""
    axes = trials.set_index("number")[[c for c in WHY_AXES if c in trials.columns]] if len(trials) else None
    init, lesion, land, per_seed, errors = [], [], [], [], []
    for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,)):
        a = TrialAttrs.read(t.user_attrs)
        d = a.diagnostics
        if a.kind != "final" or not isinstance(d, dict) or axes is None or t.number not in axes.index:
            continue
        base = axes.loc[t.number].to_dict()
        if d.get("error"):
            errors.append(f"{base['variant']} seed {base['seed']}: {d['error']}")
        if d.get("init"):
            init += _init_rows(base, d["init"])
        for b in (d.get("lesion") or {}).get("blocks", []):
            lesion.append({**base, "block": b["block"], "test_error": b["error"], "error_increase": b["increase"],
                           "base_error": d["lesion"]["error"]})
        for kind, pts in (d.get("landscape") or {}).items():
            land += [{**base, "kind": kind, "alpha": p["alpha"], "beta": p.get("beta"), "loss": p["loss"]} for p in pts]
        per_seed.append(_per_seed(base, d))
    per = pd.DataFrame(per_seed)
    why = Why(pd.DataFrame(init), pd.DataFrame(lesion), pd.DataFrame(land), per, _summary(per), errors)
    return Why(why.init, why.lesion, why.landscape, why.per_seed, why.summary, errors, readings(why), curves(why))


_CURVE_KEYS = ("variant", "connection", "depth", "shortcut")


def _over_seeds(frame: pd.DataFrame, x: list[str], values: list[str]) -> pd.DataFrame:
    """Mean, and 95% t-interval, of `values` over seeds at each variant and x."""
    if frame.empty:
        return pd.DataFrame()
    keys = [k for k in _CURVE_KEYS if k in frame.columns] + x
    rows = []
    for at, g in frame.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, at))
        for v in values:
            mean, low, high, n = mean_ci(g[v])
            row.update({v: mean, f"{v}_low": low, f"{v}_high": high, "n": n})
        rows.append(row)
    return pd.DataFrame(rows)


def curves(why: Why) -> dict[str, pd.DataFrame]:
    """The report's curves: per-layer gradient norm ("layers"), signal propagation ("blocks"),
    gradient correlation by lag ("lags"), lesion increase by block ("lesion"), the loss along the
    1-D slice and the interpolation ("landscape") and on the 2-D grid ("landscape_2d")."""
    init, out = why.init, {}
    if len(init):
        out["layers"] = _over_seeds(init[init["kind"] == "layer"], ["index"], ["grad_norm"])
        out["blocks"] = _over_seeds(init[init["kind"] == "block"], ["index", "name"], ["mean_sq", "variance", "branch_variance"])
        out["lags"] = _over_seeds(init[init["kind"] == "lag"], ["lag"], ["correlation"])
    if len(why.lesion):
        order = why.lesion.assign(_key=why.lesion["block"].map(_block_key))
        # the lesionable blocks in network order, numbered 1.. per variant
        order["position"] = order.groupby("variant")["_key"].rank(method="dense").astype(int)
        lesion = order.drop(columns="_key")
        out["lesion"] = _over_seeds(lesion, ["position", "block"], ["error_increase"])
    land = why.landscape
    if len(land):
        out["landscape"] = _over_seeds(land[land["kind"] != "2d"], ["kind", "alpha"], ["loss"])
        two = land[land["kind"] == "2d"]
        if len(two):
            out["landscape_2d"] = _over_seeds(two, ["alpha", "beta"], ["loss"])
    return {k: v for k, v in out.items() if len(v)}


def _block_key(block: str) -> int:
    stage, index = block.split(".")
    return int(stage.removeprefix("stage")) * 100_000 + int(index)


def _summary(per: pd.DataFrame) -> pd.DataFrame:
    if per.empty:
        return pd.DataFrame()
    keys = [c for c in WHY_AXES if c in per.columns and c != "seed"]
    rows = []
    for values, g in per.groupby(keys, sort=True, dropna=False):
        row = dict(zip(keys, values))
        row["seeds"] = len(g)
        for m in PER_SEED_MEASURES:
            mean, low, high, n = mean_ci(g[m]) if m in g else (math.nan, math.nan, math.nan, 0)
            row.update({f"{m}_mean": mean, f"{m}_low": low, f"{m}_high": high})
        row["lag_censored"] = bool(g["lag_censored"].any()) if "lag_censored" in g else False
        rows.append(row)
    return pd.DataFrame(rows)


def _ci(row: pd.Series, m: str, fmt, unit: str = "") -> str:
    """ "+3.1 points (95% CI +1.0 to +5.2)": the mean over seeds and its t-interval."""
    mean, low, high = row[f"{m}_mean"], row[f"{m}_low"], row[f"{m}_high"]
    text = fmt(mean) + unit
    return text + (f" (95% CI {fmt(low)} to {fmt(high)})" if np.isfinite(low) else "")


def _pairs(summary: pd.DataFrame) -> list[tuple[pd.Series, pd.Series]]:
    """(plain, residual) rows at equal depth and otherwise equal axes, deepest last."""
    if summary.empty:
        return []
    held = [c for c in ("depth", "activation", "block", "width") if c in summary.columns]
    out = []
    for _, g in summary.groupby(held, sort=True):
        plain, res = g[g["connection"] == "plain"], g[g["connection"] == "residual"]
        if len(plain) and len(res):
            out.append((plain.iloc[0], res.iloc[0]))
    return sorted(out, key=lambda p: int(p[0]["depth"]))


def _order(p: pd.Series, r: pd.Series, m: str) -> int:
    """+1 when p's measure is clearly above r's (their 95% intervals over seeds do not overlap; a
    conservative rule), -1 when clearly below, 0 when the seeds do not tell. With one seed a side
    (no interval) the means decide."""
    if not (np.isfinite(p[f"{m}_low"]) and np.isfinite(r[f"{m}_low"])):
        return int(np.sign(p[f"{m}_mean"] - r[f"{m}_mean"]))
    return 1 if p[f"{m}_low"] > r[f"{m}_high"] else -1 if p[f"{m}_high"] < r[f"{m}_low"] else 0


_UNCLEAR = "the seeds do not tell them apart (their 95% intervals overlap)"


def _lag(r: pd.Series) -> str:
    v = r["lag_below_half_mean"]
    return ("beyond " if r["lag_censored"] else "") + f"{v:.3g}"


def readings(why: Why) -> list[str]:
    """The measured numbers against the papers' claims, one sentence per instrument, at the deepest
    depth with both a plain and a residual net; each sentence says which way this study went."""
    pairs = _pairs(why.summary)
    if not pairs:
        return []
    p, r = pairs[-1]
    out = []
    if np.isfinite(p["grad_first_over_last_mean"]) and np.isfinite(r["grad_first_over_last_mean"]):
        g, low, high = p["grad_first_over_last_mean"], p["grad_first_over_last_low"], p["grad_first_over_last_high"]
        sure = np.isfinite(low)  # with one seed there is no interval: the mean alone speaks
        if g > 1 and (not sure or low > 1):
            verdict = ("so its gradients do not vanish towards the input; they grow, as Yang et al. (2019) predict for plain "
                       "nets with batch norm: vanishing gradients at initialisation do not explain what the plain net does here")
        elif g < 1 and (not sure or high < 1):
            verdict = "so its gradients do shrink towards the input, as the vanishing-gradient account says"
        else:
            verdict = "not clearly different from 1 over the seeds: neither vanishing nor exploding gradients show here"
        out.append(f"At initialisation the first layer of {p['variant']} gets a gradient {_ci(p, 'grad_first_over_last', lambda v: f'{v:.3g}')} "
                   f"times the last layer's ({r['variant']}: {r['grad_first_over_last_mean']:.3g} times), {verdict}.")
    if np.isfinite(p["lag_below_half_mean"]) and np.isfinite(r["lag_below_half_mean"]):
        o = _order(p, r, "lag_below_half")
        out.append(f"{p['variant']}'s input-gradient correlation falls below 0.5 at a lag of {_lag(p)} inputs, "
                   f"{r['variant']}'s at {_lag(r)}: " + (
                       "the plain net's gradients are more shattered, as Balduzzi et al. (2017) found." if o < 0 else
                       f"{_UNCLEAR}, so this run neither confirms nor contradicts Balduzzi et al. (2017)." if o == 0 else
                       "unlike Balduzzi et al. (2017), the plain net's gradients are less shattered here."))
    if np.isfinite(p["lesion_max_increase_mean"]) and np.isfinite(r["lesion_max_increase_mean"]):
        o = _order(p, r, "lesion_max_increase")
        out.append(f"Removing one block of {r['variant']} raises its test error by at most "
                   f"{_ci(r, 'lesion_max_increase', signed, ' points')} (mean over blocks {points(r['lesion_mean_increase_mean'])}); "
                   f"of {p['variant']}, by at most {_ci(p, 'lesion_max_increase', signed, ' points')} (mean {points(p['lesion_mean_increase_mean'])}): "
                   + ("the residual net tolerates lesions better, as Veit et al. (2016) found (its paths act like an ensemble)."
                      if o > 0 else f"{_UNCLEAR}; Veit et al. (2016) found the residual net far more tolerant." if o == 0 else
                      "unlike Veit et al. (2016), the residual net tolerates lesions worse here."))
    if np.isfinite(p["landscape_rise_mean"]) and np.isfinite(r["landscape_rise_mean"]):
        o = _order(p, r, "landscape_rise")
        out.append(f"One filter-normalised step from the final weights multiplies {p['variant']}'s training loss by "
                   f"{p['landscape_rise_mean']:.3g} and {r['variant']}'s by {r['landscape_rise_mean']:.3g}: "
                   + ("the plain net sits in a sharper region, as Li et al. (2018) show for ResNet-56 without shortcuts."
                      if o > 0 else f"{_UNCLEAR}; Li et al. (2018) found the plain net's region far sharper." if o == 0 else
                      "unlike Li et al. (2018), the plain net's region is smoother here."))
    return out
