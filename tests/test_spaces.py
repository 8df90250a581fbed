"""Design spaces compared (ablate.analysis.spaces): the weighting and permutation logic against
brute force on small cases, and the test's calibration on simulated data (no training).

Calibration: each rate is measured over DATASETS simulated studies with PERMS within-bin
permutations each. Fewer permutations than the report's 2,000 are still honest here: with P
permutations, p = (1 + #{D* >= D}) / (1 + P) is a valid p-value for any P (its level is at most
alpha exactly when (1 + P) * alpha is an integer: 100 * 0.05 = 5), so the false-positive rate
measured is the test's own, not a Monte-Carlo artefact. 1,000 datasets give a standard error of
0.69 points at 5%: "within 3 SE" is 2.9% to 7.1%. `uv run python tools/spaces_calibration.py`
prints every rate (docs/spaces.md).
"""

from __future__ import annotations

import itertools
import math

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from ablate.analysis.spaces import (analyse_spaces, best_of_m, bin_weights, kish, ks_distance, overlap_warning,
                                    permutation_test, space_bins, weighted_edf)

DATASETS = 1000
PERMS = 99
ALPHA = 0.05
SE = math.sqrt(ALPHA * (1 - ALPHA) / DATASETS)


def _law(macs: np.ndarray) -> np.ndarray:
    """A shared error-against-MACs law: bigger nets are better (as in the papers' spaces)."""
    return 0.30 - 0.04 * np.log10(macs)


def _space(rng: np.random.Generator, n: int, lo: float, hi: float, shift: float = 0.0, noise: float = 0.02):
    macs = np.exp(rng.uniform(math.log(lo), math.log(hi), n))
    return _law(macs) + shift + rng.normal(0, noise, n), macs


def _rejections(rng, n, a=(1e5, 1e6, 0.0), b=(1e5, 1e6, 0.0), normalised=True) -> float:
    """The rejection rate at ALPHA over DATASETS simulated pairs of spaces."""
    rejected = 0
    for i in range(DATASETS):
        e_a, c_a = _space(rng, n, a[0], a[1], a[2])
        e_b, c_b = _space(rng, n, b[0], b[1], b[2])
        if normalised:
            bins_a, bins_b = space_bins([c_a, c_b])[0]
        else:  # the nds notebooks' test: unweighted EDFs, all samples in one bin
            bins_a, bins_b = np.zeros(n, int), np.zeros(n, int)
        _, p = permutation_test(e_a, bins_a, e_b, bins_b, n_perm=PERMS, seed=i)
        rejected += p <= ALPHA
    return rejected / DATASETS


# ---------------------------------------------------------------- against brute force


def test_weights_make_each_used_bin_weigh_the_same_and_kish_counts_them():
    bins = np.array([0, 0, 0, 1, 2, 2, -1])
    w = bin_weights(bins, np.array([True, True, False]))
    assert w[-1] == 0 and w[4] == w[5] == 0  # outside the range, and in an unused bin
    assert np.allclose(w[:3], 1 / 6) and np.isclose(w[3], 1 / 2) and np.isclose(w.sum(), 1)
    assert np.isclose(kish(w), 1 / (3 * (1 / 6) ** 2 + (1 / 2) ** 2))
    assert np.isclose(kish(np.full(8, 1 / 8)), 8)


def test_unweighted_ks_distance_is_scipys():
    rng = np.random.default_rng(0)
    a, b = rng.normal(0, 1, 13), rng.normal(0.5, 1, 9)
    errors = np.concatenate([a, b])
    order = np.argsort(errors)
    is_a = np.concatenate([np.ones(13, bool), np.zeros(9, bool)])[order]
    d = ks_distance(errors[order], is_a, np.full(22, 1 / 13), np.full(22, 1 / 9))
    assert np.isclose(d, sps.ks_2samp(a, b).statistic)


def test_weighted_edf_against_brute_force():
    e = np.array([0.3, 0.1, 0.2, 0.2])
    w = np.array([0.1, 0.2, 0.3, 0.4])
    grid = np.array([0.05, 0.1, 0.2, 0.25, 0.3])
    brute = [sum(wi for ei, wi in zip(e, w) if ei <= g) for g in grid]
    assert np.allclose(weighted_edf(e, w, grid), brute)


def test_best_of_m_is_the_exact_expected_minimum():
    e = np.array([0.3, 0.1, 0.25, 0.2])
    w = np.array([0.4, 0.1, 0.3, 0.2])
    for m in (1, 2, 3):
        brute = sum(min(e[list(t)]) * np.prod(w[list(t)]) for t in itertools.product(range(4), repeat=m))
        assert np.isclose(best_of_m(e, w, (m,))[0], brute)


def test_within_bin_permutations_keep_the_weights_so_none_need_recomputing():
    """The exact permutation distribution (every within-bin relabelling, weights recomputed from
    scratch for each) against the sampled one the test uses."""
    e_a, e_b = np.array([0.1, 0.15, 0.3, 0.32, 0.5]), np.array([0.2, 0.35, 0.4, 0.45])
    bins_a, bins_b = np.array([0, 0, 1, 1, 2]), np.array([0, 1, 2, 2])
    errors, bins = np.concatenate([e_a, e_b]), np.concatenate([bins_a, bins_b])
    labels = np.concatenate([np.ones(5, bool), np.zeros(4, bool)])
    grid = np.sort(errors)

    def brute_d(lab):
        w_a = bin_weights(np.where(lab, bins, -1), np.ones(3, bool))
        w_b = bin_weights(np.where(~lab, bins, -1), np.ones(3, bool))
        return np.abs(weighted_edf(errors, w_a, grid) - weighted_edf(errors, w_b, grid)).max()

    d_obs = brute_d(labels)
    per_bin = [np.flatnonzero(bins == b) for b in range(3)]
    ds = []
    for choice in itertools.product(*(itertools.combinations(m, int(labels[m].sum())) for m in per_bin)):
        lab = np.zeros(9, bool)
        lab[[i for c in choice for i in c]] = True
        ds.append(brute_d(lab))
    exact = np.mean(np.array(ds) >= d_obs - 1e-12)
    d, p = permutation_test(e_a, bins_a, e_b, bins_b, n_perm=20000, seed=1)
    assert np.isclose(d, d_obs)
    assert abs(p - exact) < 0.015  # 20,000 draws: the SE of a sampled p near 0.3 is 0.003


# ---------------------------------------------------------------- calibration


@pytest.mark.parametrize("n", [16, 32, 64])
def test_the_same_space_twice_is_a_false_positive_about_5_percent_of_the_time(n):
    rate = _rejections(np.random.default_rng(n), n)
    assert abs(rate - ALPHA) <= 3 * SE, rate


def test_power_rises_with_the_number_of_samples():
    rates = [_rejections(np.random.default_rng(100 + n), n, b=(1e5, 1e6, 0.015)) for n in (16, 64)]
    assert rates[0] + 6 * SE < rates[1], rates
    assert rates[1] > 0.8, rates


def test_a_complexity_confound_is_no_difference_once_normalised():
    """Two spaces on one error-against-MACs law, one reaching 10x further: the normalised test
    holds its level; the unnormalised one (nds's ks_2samp on raw EDFs) calls the bigger space
    better nearly always (docs/spaces.md)."""
    a, b = (1e5, 1e6, 0.0), (3e5, 3e6, 0.0)
    normalised = _rejections(np.random.default_rng(7), 64, a, b)
    raw = _rejections(np.random.default_rng(7), 64, a, b, normalised=False)
    assert abs(normalised - ALPHA) <= 3 * SE, normalised
    assert raw > 0.5, raw


# ---------------------------------------------------------------- the tables


def _samples(rng, spaces) -> pd.DataFrame:
    rows = []
    for name, n, lo, hi, shift in spaces:
        e, c = _space(rng, n, lo, hi, shift)
        rows += [{"space": name, "name": f"{name}-{i}", "macs": c[i], "params": c[i] / 10, "val_error": e[i],
                  "state": "COMPLETE"} for i in range(n)]
    return pd.DataFrame(rows)


def test_the_analysis_finds_a_better_space_and_says_so_in_one_sentence():
    frame = _samples(np.random.default_rng(3), [("plain", 60, 1e5, 1e6, 0.04), ("residual", 60, 1e5, 1e6, 0.0)])
    a = analyse_spaces(frame, n_boot=200)
    (row,) = a.tests.to_dict("records")
    assert row["real"] and row["better"] == "residual" and row["p_value"] <= 1 / 2001 * 2
    assert a.sentences[0].startswith("The residual space is better than the plain space: D = ")
    edf = a.edf[a.edf["normalised"]]
    assert ((edf["edf_low"] <= edf["edf"] + 1e-12) & (edf["edf"] <= edf["edf_high"] + 1e-12)).all()
    assert set(a.edf.columns) >= {"space", "error", "edf", "edf_low", "edf_high", "normalised"}
    best = a.best_of[a.best_of["normalised"] & (a.best_of["space"] == "plain")]["error"].to_numpy()
    assert (np.diff(best) <= 1e-12).all()  # more models, a lower expected best


def test_no_overlap_is_one_warning_and_no_claim():
    frame = _samples(np.random.default_rng(4), [("small", 20, 1e4, 1e5, 0.0), ("big", 20, 2e5, 1e6, 0.0)])
    a = analyse_spaces(frame, n_boot=50)
    assert "do not overlap" in a.warnings[0]
    assert a.sentences[0].startswith("small and big share no complexity bin")
    assert overlap_warning({"a": (1e5, 1e6), "b": (9e5, 1e7)}).startswith("the spaces' MACs ranges overlap too little")
    assert overlap_warning({"a": (1e5, 1e6), "b": (2e5, 2e6)}) is None


def test_an_empty_bin_is_named():
    rng = np.random.default_rng(5)
    frame = _samples(rng, [("a", 40, 1e5, 1e6, 0.0), ("b", 40, 1e5, 1e6, 0.0)])
    frame = frame[~((frame["space"] == "b") & (frame["macs"] > 2e5) & (frame["macs"] < 3e5))]
    a = analyse_spaces(frame, n_boot=50)
    assert any("complexity bins are empty in some space" in w for w in a.warnings)
    assert not a.bins["used"].all()
