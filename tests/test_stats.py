"""The verdict statistics (ablate.stats), calibrated on simulated data: no training here.

A verdict is a claim. On data with no true difference the test must call about 5% of pairs
real (no more: it would cry wolf; much less: it would be blind), and its power must grow with the
number of seeds. Each simulation draws thousands of seeded samples, so the rates are exact
functions of the seed: a deterministic test, with bounds about three binomial standard errors
wide around the nominal rate.
"""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats as sps

from ablate.analysis import stats

DRAWS = 4000
SE = math.sqrt(0.05 * 0.95 / DRAWS)  # binomial standard error of a 5% rate


def _samples(rng: np.random.Generator, n: int, shift: float = 0.0, sd_a: float = 1.0, sd_b: float = 1.0):
    a = dict(enumerate(rng.normal(0.30, 0.01 * sd_a, n), start=1))
    b = dict(enumerate(rng.normal(0.30 + 0.01 * shift, 0.01 * sd_b, n), start=1))
    return a, b


def _paired_samples(rng: np.random.Generator, n: int, shift: float = 0.0):
    """Seeds share noise (the same data order): each side is seed noise plus its own noise."""
    seed_noise = rng.normal(0, 0.01, n)
    a = dict(enumerate(0.30 + seed_noise + rng.normal(0, 0.005, n), start=1))
    b = dict(enumerate(0.30 + 0.005 * shift + seed_noise + rng.normal(0, 0.005, n), start=1))
    return a, b


def _rejection_rate(n: int, shift: float, paired: bool, seed: int, draws: int = DRAWS, **kw) -> float:
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(draws):
        a, b = _paired_samples(rng, n, shift) if paired else _samples(rng, n, shift, **kw)
        t = stats.compare(a, b, pairable=paired)
        assert t.method == (stats.PAIRED if paired else stats.WELCH)
        hits += t.p_value < stats.ALPHA
    return hits / draws


@pytest.mark.parametrize("n", [2, 3, 5])
def test_paired_false_positive_rate_is_5_percent_on_null_data(n):
    rate = _rejection_rate(n, 0.0, True, seed=100 + n)
    assert abs(rate - 0.05) < 3.5 * SE, rate


@pytest.mark.parametrize("n, low", [(2, 0.015), (3, 0.025), (5, 0.03)])
def test_welch_false_positive_rate_is_at_most_5_percent_on_null_data(n, low):
    # Welch's approximate degrees of freedom make it conservative with very few seeds and equal
    # spreads (about 2.5% at 2 seeds a side, 4% at 3), never liberal; it nears 5% as n grows.
    rate = _rejection_rate(n, 0.0, False, seed=100 + n)
    assert low < rate < 0.05 + 3.5 * SE, rate


@pytest.mark.parametrize("n", [2, 3, 5])
def test_welch_stays_calibrated_when_the_two_spreads_differ(n):
    # The old rule (difference > sum of stds) called 31% of such null pairs real at n = 2.
    # Welch's test is slightly conservative here, never liberal.
    rate = _rejection_rate(n, 0.0, False, seed=200 + n, sd_a=1.0, sd_b=4.0)
    assert 0.02 < rate < 0.05 + 3.5 * SE, rate


@pytest.mark.parametrize("paired", [False, True], ids=["welch", "paired"])
def test_power_rises_with_seeds(paired):
    # A 2-sigma effect: the old rule's power fell with n; a t-test's must rise towards 1.
    rates = [_rejection_rate(n, 2.0, paired, seed=300 + n, draws=1000) for n in (2, 3, 5, 10)]
    assert rates == sorted(rates) and rates[0] < 0.5 and rates[-1] > 0.9, rates


@pytest.mark.parametrize("paired", [False, True], ids=["welch", "paired"])
def test_confidence_interval_covers_the_true_difference_95_percent_of_the_time(paired):
    rng = np.random.default_rng(7)
    covered = 0
    for _ in range(DRAWS):
        a, b = _paired_samples(rng, 3, shift=1.5) if paired else _samples(rng, 3, shift=1.5)
        t = stats.compare(a, b, pairable=paired)
        covered += t.ci_low <= (0.0075 if paired else 0.015) <= t.ci_high
    rate = covered / DRAWS
    if paired:  # exact
        assert abs(rate - 0.95) < 3.5 * SE, rate
    else:  # Welch's interval is a little wide at 3 seeds a side (conservative), never narrow
        assert 0.95 - 3.5 * SE < rate < 0.98, rate


def test_paired_test_uses_seeds_and_matches_scipy():
    a = {1: 0.30, 2: 0.35, 3: 0.28, 4: 0.33}
    b = {4: 0.36, 1: 0.32, 2: 0.38, 3: 0.29}  # another order: matched by seed, not position
    t = stats.compare(a, b)
    ref = sps.ttest_rel([0.32, 0.38, 0.29, 0.36], [0.30, 0.35, 0.28, 0.33])
    assert t.method == stats.PAIRED and t.p_value == pytest.approx(ref.pvalue)
    assert t.difference == pytest.approx(0.0225)
    assert (t.ci_low, t.ci_high) == pytest.approx(tuple(ref.confidence_interval(0.95)))
    # Pairing a noisy shared component away: Welch on the same numbers cannot see the shift.
    welch = stats.compare(a, b, pairable=False)
    assert welch.method == stats.WELCH and welch.p_value > 0.3 and t.p_value < 0.05


def test_different_seed_sets_fall_back_to_welch_and_one_seed_is_no_test():
    t = stats.compare({1: 0.3, 2: 0.31, 3: 0.29}, {4: 0.4, 5: 0.41})
    assert t.method == stats.WELCH and (t.n_a, t.n_b) == (3, 2)
    one = stats.compare({1: 0.3}, {1: 0.4, 2: 0.41})
    assert one.method == stats.NO_TEST and not one.testable and math.isnan(one.p_value)
    assert one.difference == pytest.approx(0.105)
    assert stats.seeds_needed(one) is None


def test_no_spread_at_all_is_an_exact_difference():
    same = stats.compare({1: 0.3, 2: 0.3}, {1: 0.3, 2: 0.3})
    assert same.p_value == 1.0
    moved = stats.compare({1: 0.3, 2: 0.4}, {1: 0.35, 2: 0.45})  # every seed +5 points (to float rounding)
    assert moved.method == stats.PAIRED and moved.p_value == 0.0 and moved.ci_low == pytest.approx(0.05)


def test_holm_against_a_worked_example():
    # Holm (1979), as in R's p.adjust(c(0.01, 0.04, 0.03, 0.005), "holm"): 0.03 0.06 0.06 0.02.
    assert stats.holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert stats.holm([0.5, math.nan, 0.01]) == pytest.approx([0.5, math.nan, 0.02], nan_ok=True)
    assert stats.holm([0.3, 0.4]) == pytest.approx([0.6, 0.6])  # monotone: never below a smaller p's
    assert stats.holm([0.9, 0.8]) == [1.0, 1.0]  # capped at 1
    assert stats.holm([]) == []


def test_holm_keeps_the_family_wise_error_at_5_percent_for_three_null_tests():
    rng = np.random.default_rng(11)
    any_real = 0
    for _ in range(DRAWS):
        tests = [stats.compare(*_samples(rng, 3), pairable=False) for _ in range(3)]
        any_real += any(t.real for t in stats.correct(tests))
    rate = any_real / DRAWS
    assert rate < 0.05 + 3.5 * SE, rate  # uncorrected, three tests would reach about 14%


def test_seeds_needed_reaches_the_target_power_by_simulation():
    # With a 1.5-sigma difference Welch's test needs about 8 seeds a side for 80% power.
    t = stats.compare({i: v for i, v in enumerate([0.0, 0.01, -0.01, 0.0], start=1)},
                      {i: v for i, v in enumerate([0.01, 0.025, 0.005, 0.02], start=1)}, pairable=False)
    n = stats.seeds_needed(t)
    effect = t.difference / t.sd
    assert stats.power(n, effect, paired=False) >= 0.8 > stats.power(n - 1, effect, paired=False)
    rate = _rejection_rate(n, effect, False, seed=400, draws=2000)
    assert abs(rate - stats.power(n, effect, paired=False)) < 0.03
    huge = stats.Test(0.0001, 0, 0, 0.9, stats.WELCH, 3, 3, 1.0)
    assert stats.seeds_needed(huge) == stats.MAX_SEEDS + 1


def test_the_report_verdict_is_calibrated_end_to_end_on_null_data():
    """The whole verdict path (summary, samples, tests, Holm, answers) on simulated final runs of
    plain and residual nets at two depths with no true difference anywhere: "yes" to the
    degradation question at most about 5% of the time; a 3-sigma rise is found most of the time."""
    import pandas as pd

    from ablate import analysis as tables

    def findings(rng, rise: float):
        trials = []
        for connection in ("plain", "residual"):
            for depth in (8, 20):
                name = f"{'plain' if connection == 'plain' else 'resnet'}-{depth}"
                for seed in (1, 2, 3):
                    err = 0.30 + rng.normal(0, 0.01) + (rise * 0.01 if connection == "plain" and depth == 20 else 0)
                    trials.append({"number": len(trials), "variant": name, "kind": "final", "state": "COMPLETE", "seed": seed,
                                   "train_error": err, "test_error": err, "val_error": float("nan"), "batch_size": 128, "did_not_learn": None,
                                   "connection": connection, "depth": depth})
        t = pd.DataFrame(trials)
        summary = pd.DataFrame([{
            "variant": v, "connection": g["connection"].iloc[0], "depth": g["depth"].iloc[0], "activation": "post",
            "block": "basic", "stem": "cifar", "width": 8, "shortcut": "A" if g["connection"].iloc[0] == "residual" else "none",
            "seeds": len(g), "params": 1000, "macs": 1000, **{f"{m}_{f}": getattr(g[m], f)() for m in ("train_error", "test_error") for f in ("mean", "std")},
        } for v, g in t.groupby("variant", sort=False)])
        return {f.topic: f for f in tables.verdicts(summary, "fashion-mnist", tables.samples(t))}

    rng = np.random.default_rng(12)
    draws = 300
    null = [findings(rng, 0.0) for _ in range(draws)]
    assert all(f["degradation"].deciding.method == stats.PAIRED for f in null)
    yes = sum(f["degradation"].answer == "yes" for f in null) / draws
    assert yes < 0.05 + 3.5 * math.sqrt(0.05 * 0.95 / draws), yes
    removed = sum(f["residual"].answer == "yes" for f in null) / draws
    assert removed == 0.0  # with no degradation there is nothing to remove
    real = [findings(rng, 3.0 * math.sqrt(2)) for _ in range(60)]  # a rise of 3 sd of the paired difference
    assert sum(f["degradation"].answer == "yes" for f in real) / 60 > 0.3
