"""The statistics behind a verdict, from `scipy.stats`: one place, tested on simulated data.

A comparison is variant b against variant a on one metric, over the final runs' seeds:

- **paired t-test** (`scipy.stats.ttest_rel`) when both sides ran the same seeds (two or more)
  and pairing holds: the same seed gives the same data order and augmentation (the recipes
  agree on the keys in `ablate.train.DATA_ORDER_KEYS`), so seed k of a and seed k of b saw the
  same batches and their difference removes that shared noise;
- **Welch's t-test** (`scipy.stats.ttest_ind(equal_var=False)`) otherwise;
- with fewer than two seeds on a side there is no test: "not enough seeds to tell".

Every test reports the difference of means (b - a), its 95% confidence interval and a two-sided
p-value. Across the findings of one report the p-values are corrected with Holm's step-down
method (`holm`), which keeps the chance of calling *any* null difference real at or below 5%
whatever the dependence between the tests. A difference is real only when its corrected
p-value is below `ALPHA`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from typing import Mapping, Sequence

import numpy as np
from scipy import stats

ALPHA = 0.05  #: family-wise error rate of one report's findings
CONFIDENCE = 0.95  #: of the difference's confidence interval
POWER = 0.80  #: the power at which `seeds_needed` sizes a follow-up
MAX_SEEDS = 1000  #: beyond this `seeds_needed` says "more than 1000"

PAIRED = "paired t-test"
WELCH = "Welch's t-test"
NO_TEST = "none (fewer than 2 seeds a side)"


@dataclass(frozen=True)
class Test:
    """b against a: the difference of means (b - a), its CI, the test's p-value, and after
    `holm` the corrected p-value and whether the difference is real."""

    difference: float
    ci_low: float
    ci_high: float
    p_value: float  # two-sided, uncorrected; NaN without a test
    method: str  # PAIRED | WELCH | NO_TEST
    n_a: int
    n_b: int
    sd: float  # the spread the test sees: sd of the paired differences, or sqrt of the mean variance (Welch)
    p_adjusted: float = math.nan  # Holm-corrected across the report's tests
    real: bool = False

    @property
    def testable(self) -> bool:
        return self.method != NO_TEST

    @property
    def paired(self) -> bool:
        return self.method == PAIRED


def compare(a: Mapping[int, float], b: Mapping[int, float], pairable: bool = True) -> Test:
    """Test b against a, each a mapping seed -> value (NaN values are dropped).

    Paired by seed when `pairable` (the caller knows the same seed means the same data order)
    and both sides hold the same two or more seeds; Welch's t-test otherwise.
    """
    a = {s: float(v) for s, v in a.items() if v is not None and not math.isnan(float(v))}
    b = {s: float(v) for s, v in b.items() if v is not None and not math.isnan(float(v))}
    xa, xb = np.array(list(a.values())), np.array(list(b.values()))
    diff = float(xb.mean() - xa.mean()) if len(xa) and len(xb) else math.nan
    if len(xa) < 2 or len(xb) < 2:
        return Test(diff, math.nan, math.nan, math.nan, NO_TEST, len(xa), len(xb), math.nan)
    if pairable and set(a) == set(b):
        seeds = sorted(a)
        va, vb = np.array([a[s] for s in seeds]), np.array([b[s] for s in seeds])
        d = vb - va
        sd = float(np.std(d, ddof=1))
        if sd <= _TINY * max(1.0, float(np.abs(d).max())):  # every seed moved by the same amount (to rounding): t is undefined
            return _degenerate(diff, PAIRED, len(va), len(vb))
        result = stats.ttest_rel(vb, va)
        method = PAIRED
    else:
        sd = math.sqrt((np.var(xa, ddof=1) + np.var(xb, ddof=1)) / 2)
        if sd <= _TINY * max(1.0, float(np.abs(np.concatenate([xa, xb])).max())):
            return _degenerate(diff, WELCH, len(xa), len(xb))
        result = stats.ttest_ind(xb, xa, equal_var=False)
        method = WELCH
    ci = result.confidence_interval(CONFIDENCE)
    return Test(diff, float(ci.low), float(ci.high), float(result.pvalue), method, len(xa), len(xb), sd)


_TINY = 1e-12  # a spread below this (relative to the values) is rounding, not noise


def _degenerate(diff: float, method: str, n_a: int, n_b: int) -> Test:
    """No spread at all (identical runs, e.g. a deterministic toy): the difference is exact."""
    p = 1.0 if diff == 0 else 0.0
    return Test(diff, diff, diff, p, method, n_a, n_b, 0.0)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm 1979), in the input order; NaN stays NaN.

    Sorted ascending, the i-th of m p-values (from 0) becomes max over j <= i of
    min(1, (m - j) * p_j): rejecting where the adjusted value is below alpha is Holm's procedure.
    """
    idx = [i for i, p in enumerate(p_values) if not math.isnan(p)]
    m = len(idx)
    out = [math.nan] * len(p_values)
    running = 0.0
    for rank, i in enumerate(sorted(idx, key=lambda i: p_values[i])):
        running = max(running, min(1.0, (m - rank) * p_values[i]))
        out[i] = running
    return out


def mean_ci(values: Sequence[float], confidence: float = CONFIDENCE) -> tuple[float, float]:
    """The t-interval of the mean of `values` (NaN, NaN with fewer than two)."""
    x = np.asarray([v for v in values if not math.isnan(v)], dtype=float)
    if len(x) < 2:
        return math.nan, math.nan
    half = float(stats.t.ppf(0.5 + confidence / 2, len(x) - 1) * x.std(ddof=1) / math.sqrt(len(x)))
    return float(x.mean()) - half, float(x.mean()) + half


def correct(tests: Sequence[Test], alpha: float = ALPHA, extra_p: Sequence[float] = ()) -> list[Test]:
    """The tests with Holm-corrected p-values and `real` set (corrected p < alpha); `extra_p`,
    other p-values of the same report, join the family (their adjusted values are not returned)."""
    adjusted = holm([t.p_value for t in tests] + list(extra_p))[: len(tests)]
    return [replace(t, p_adjusted=p, real=bool(not math.isnan(p) and p < alpha)) for t, p in zip(tests, adjusted)]


def power(n: int, effect: float, paired: bool, alpha: float = ALPHA) -> float:
    """Power of a two-sided t-test with n seeds a side at standardised effect |diff| / sd
    (the noncentral t distribution, `scipy.stats.nct`). Paired: df n-1, noncentrality
    effect*sqrt(n); two samples of n (equal spreads): df 2n-2, noncentrality effect*sqrt(n/2)."""
    df = n - 1 if paired else 2 * n - 2
    nc = abs(effect) * math.sqrt(n if paired else n / 2)
    crit = stats.t.ppf(1 - alpha / 2, df)
    p = float(stats.nct.sf(crit, df, nc) + stats.nct.cdf(-crit, df, nc))
    if math.isnan(p):  # scipy's nct loses precision far in the tail (large df and noncentrality): the normal limit
        p = float(stats.norm.sf(crit - nc) + stats.norm.cdf(-crit - nc))
    return p


def seeds_needed(test: Test, target: float = POWER, alpha: float = ALPHA) -> int | None:
    """About how many seeds a side would detect a difference of the observed size with the
    observed spread at `target` power (uncorrected two-sided test at `alpha`); None when it
    cannot be said (no spread measured, or no difference observed), MAX_SEEDS + 1 for "more"."""
    if not test.testable or math.isnan(test.sd) or test.sd == 0 or test.difference == 0 or math.isnan(test.difference):
        return None
    effect = test.difference / test.sd
    lo, hi = 2, MAX_SEEDS
    if power(hi, effect, test.paired, alpha) < target:
        return MAX_SEEDS + 1
    while lo < hi:  # power rises with n: the smallest n that reaches the target
        mid = (lo + hi) // 2
        if power(mid, effect, test.paired, alpha) >= target:
            hi = mid
        else:
            lo = mid + 1
    return lo
