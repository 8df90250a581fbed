"""Design spaces compared through their error distributions (numpy and scipy only, no torch).

Radosavovic et al., "On Network Design Spaces for Visual Recognition" (ICCV 2019) compare two
design spaces by the error EDFs of models sampled at random from each, after reweighting so that
both spaces have the same complexity distribution ("normalized comparison", Sec. 4.2); pycls and
facebookresearch/nds plot those EDFs, and the nds notebooks test only unweighted EDFs with
`scipy.stats.ks_2samp`. Here the comparison is a calibrated test:

- **weights** (`bin_weights`): the spaces' common complexity range (MACs by default) in k
  log-spaced bins; within a space each bin gets the same total weight, so the weighted
  complexity distribution is uniform over the bins every space fills (nds also weights per bin;
  log-spaced because MACs grow multiplicatively with depth and width squared: linear bins would
  crowd a log-uniform space's samples into the first few bins). A bin some space leaves empty is
  dropped for all and named; samples outside the common range get weight 0.
- **EDF** F(e) = the weighted fraction of models with error at most e, Kish's n_eff = 1/sum(w^2)
  (w normalised), 95% bootstrap bands by resampling within bins (so the weights stay exact).
- **best of m** (nds): the expected minimum error of m models drawn from a space's weighted
  EDF, exactly: with the errors sorted and S_j the weight above the j-th, E[min] = sum e_j
  (S_{j-1}^m - S_j^m).
- **test** (`permutation_test`): D = sup |F_a - F_b| of the normalised EDFs; its p-value counts
  the permutations of the space labels *within complexity bins* with D* >= D, p = (1 + #) / (1 + P)
  (exact level for any P). A within-bin permutation keeps every bin's count per space, so the
  normalisation's weights are those of the observed data and need no recomputation per
  permutation (tests/test_spaces.py checks this against recomputing them by brute force).
  Holm's correction (ablate.analysis.stats.holm) runs across every pair of spaces; in a report,
  together with the verdict's other tests (ablate.analysis.results: corrected_spaces, joint_holm).
"""

from __future__ import annotations

import dataclasses
import itertools
import math
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from ablate.analysis import stats
from ablate.analysis.format import human, p_text, pct

__all__ = ["COMPLEXITY_BINS", "PERMUTATIONS", "BOOTSTRAPS", "MIN_OVERLAP", "SPACE_TEST", "SPACES_COLUMNS", "EDF_COLUMNS",
           "SpacesAnalysis", "bin_edges", "bin_of", "space_bins", "bin_weights", "kish", "weighted_edf", "best_of_m", "ks_distance",
           "permutation_pvalues", "permutation_test", "samples_needed", "dominance", "analyse_spaces", "corrected_spaces", "overlap_warning"]

COMPLEXITY_BINS = 10  #: k, the bins of the complexity normalisation (Radosavovic et al. 2019)
PERMUTATIONS = 2000  #: permutations of the space labels per test
BOOTSTRAPS = 1000  #: bootstrap resamples per EDF band
MIN_OVERLAP = 0.5  #: a space with less of its samples in the common range than this is named in a warning
SPACE_TEST = "weighted KS, permutations within complexity bins"
SPACES_COLUMNS = ("space_a", "space_b", "statistic", "p_value", "p_adjusted", "method", "real", "n_a", "n_b", "n_eff_a", "n_eff_b")
EDF_COLUMNS = ("space", "error", "edf", "edf_low", "edf_high", "normalised")
BEST_OF = (1, 2, 4, 8, 16, 32, 64, 128)
MAX_NEEDED = 1024  #: samples_needed searches up to this many samples per space


# ---------------------------------------------------------------- weights


def bin_edges(complexities: list[np.ndarray], k: int = COMPLEXITY_BINS, log: bool = True) -> np.ndarray | None:
    """k bins over the range every space covers (log-spaced by default); None without overlap."""
    low = max(float(np.min(c)) for c in complexities)
    high = min(float(np.max(c)) for c in complexities)
    if not high > low or (log and low <= 0):
        return None
    return np.geomspace(low, high, k + 1) if log else np.linspace(low, high, k + 1)


def bin_of(c: np.ndarray, edges: np.ndarray) -> np.ndarray:
    """Each value's bin (0..k-1; the top edge belongs to the last bin), -1 outside the edges."""
    b = np.searchsorted(edges, c, side="right") - 1
    b = np.where(c == edges[-1], len(edges) - 2, b)
    return np.where((c < edges[0]) | (c > edges[-1]), -1, b)


def bin_weights(bins: np.ndarray, used: np.ndarray) -> np.ndarray:
    """Weights summing to 1 that give each bin in `used` (a bool per bin) the same total weight;
    0 outside them. `bins` from `bin_of`."""
    ok = (bins >= 0) & used[np.maximum(bins, 0)]
    counts = np.bincount(bins[ok], minlength=len(used)).astype(float)
    w = np.zeros(len(bins))
    if ok.any():
        w[ok] = 1.0 / (counts[bins[ok]] * np.count_nonzero(used))
    return w


def space_bins(complexities: list[np.ndarray], k: int = COMPLEXITY_BINS, log: bool = True
               ) -> tuple[list[np.ndarray], np.ndarray | None, np.ndarray]:
    """Each space's samples' bins over the common range (-1: outside it, or in a bin some space
    leaves empty), the edges (None without overlap) and which bins are used."""
    edges = bin_edges(complexities, k, log)
    if edges is None:
        return [np.full(len(c), -1) for c in complexities], None, np.zeros(k, bool)
    raw = [bin_of(np.asarray(c, float), edges) for c in complexities]
    used = np.all([np.bincount(b[b >= 0], minlength=k) > 0 for b in raw], axis=0)
    return [np.where((b >= 0) & used[np.maximum(b, 0)], b, -1) for b in raw], edges, used


def kish(w: np.ndarray) -> float:
    """Kish's effective sample size 1/sum(w^2) of weights normalised to sum 1."""
    total = float(np.sum(w))
    return 0.0 if total <= 0 else float(1.0 / np.sum((np.asarray(w) / total) ** 2))


# ---------------------------------------------------------------- EDFs and best of m


def weighted_edf(errors: np.ndarray, w: np.ndarray, grid: np.ndarray) -> np.ndarray:
    """F(e) = sum of the weights of errors <= e, at each grid value; errors (..., n), w (..., n)."""
    order = np.argsort(errors, axis=-1)
    e = np.take_along_axis(errors, order, -1)
    cw = np.cumsum(np.take_along_axis(np.broadcast_to(w, errors.shape), order, -1), axis=-1)
    cw = np.concatenate([np.zeros(cw.shape[:-1] + (1,)), cw], axis=-1)
    if e.ndim == 1:
        return cw[np.searchsorted(e, grid, side="right")]
    idx = np.stack([np.searchsorted(row, grid, side="right") for row in e])
    return np.take_along_axis(cw, idx, -1)


def best_of_m(errors: np.ndarray, w: np.ndarray, ms: tuple[int, ...] = BEST_OF) -> np.ndarray:
    """The expected minimum error of m models drawn (with replacement) from the weighted EDF,
    exactly, for each m; errors (..., n) -> (..., len(ms))."""
    order = np.argsort(errors, axis=-1)
    e = np.take_along_axis(errors, order, -1)
    ws = np.take_along_axis(np.broadcast_to(w, errors.shape), order, -1)
    ws = ws / ws.sum(axis=-1, keepdims=True)
    above = np.clip(1.0 - np.cumsum(ws, axis=-1), 0.0, 1.0)  # S_j: weight strictly after the j-th
    before = np.concatenate([np.ones(above.shape[:-1] + (1,)), above[..., :-1]], axis=-1)
    m = np.asarray(ms, dtype=float)[:, None]
    return np.einsum("...n,...mn->...m", e, before[..., None, :] ** m - above[..., None, :] ** m)


def _resample(bins: np.ndarray, n_boot: int, rng: np.random.Generator) -> np.ndarray:
    """(n_boot, n) indices resampled with replacement within each bin (bin -1 stays out: it
    carries no weight, so its members are kept in place)."""
    out = np.tile(np.arange(len(bins)), (n_boot, 1))
    for b in np.unique(bins[bins >= 0]):
        members = np.flatnonzero(bins == b)
        out[:, members] = members[rng.integers(0, len(members), (n_boot, len(members)))]
    return out


# ---------------------------------------------------------------- the test


def ks_distance(errors: np.ndarray, is_a: np.ndarray, w_a: np.ndarray, w_b: np.ndarray) -> np.ndarray:
    """sup_e |F_a(e) - F_b(e)| for labels `is_a` (..., n) over pooled `errors` (n,) sorted
    ascending; w_a / w_b: each position's weight were it labelled a / b."""
    diff = np.cumsum(np.where(is_a, w_a, -w_b), axis=-1)
    last = np.append(errors[1:] != errors[:-1], True)  # compare only after a run of tied errors
    return np.abs(diff[..., last]).max(axis=-1)


def _within_bin_permutations(bins: np.ndarray, is_a: np.ndarray, n_perm: int, rng: np.random.Generator) -> np.ndarray:
    """(n_perm, n) labels: `is_a` shuffled within each bin (uniformly, independently)."""
    by_bin = np.argsort(bins, kind="stable")
    keys = bins[None, :] + rng.random((n_perm, len(bins)))  # random order inside each bin's block
    target = np.argsort(keys, axis=1)
    out = np.empty((n_perm, len(bins)), dtype=bool)
    np.put_along_axis(out, target, np.broadcast_to(is_a[by_bin], (n_perm, len(bins))), axis=1)
    return out


def permutation_pvalues(errors: np.ndarray, is_a: np.ndarray, bins: np.ndarray, n_perm: int,
                        rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Vectorised over datasets: errors, is_a, bins (B, n), bins numbered 0.. (a bin only one
    label fills carries no weight). Returns (D, p) per dataset, p = (1 + #{D* >= D}) / (1 + n_perm)."""
    B, n = errors.shape
    order = np.argsort(errors, axis=1)
    errors, is_a, bins = (np.take_along_axis(x, order, 1) for x in (errors, is_a, bins))
    k = int(bins.max()) + 1
    d_obs, p = np.empty(B), np.empty(B)
    for i in range(B):  # per dataset: its weights, then all its permutations at once
        na = np.bincount(bins[i][is_a[i]], minlength=k).astype(float)
        nb = np.bincount(bins[i][~is_a[i]], minlength=k).astype(float)
        both = (na > 0) & (nb > 0)
        kk = max(np.count_nonzero(both), 1)
        w_a = np.where(both, 1 / (kk * np.maximum(na, 1)), 0.0)[bins[i]]
        w_b = np.where(both, 1 / (kk * np.maximum(nb, 1)), 0.0)[bins[i]]
        d_obs[i] = ks_distance(errors[i], is_a[i], w_a, w_b)
        perms = _within_bin_permutations(bins[i], is_a[i], n_perm, rng)
        d_perm = ks_distance(errors[i], perms, w_a, w_b)
        p[i] = (1 + np.count_nonzero(d_perm >= d_obs[i] - 1e-12)) / (1 + n_perm)
    return d_obs, p


def permutation_test(e_a: np.ndarray, bins_a: np.ndarray, e_b: np.ndarray, bins_b: np.ndarray,
                     n_perm: int = PERMUTATIONS, seed: int = 0) -> tuple[float, float]:
    """D and its permutation p-value for two spaces' samples in their complexity bins (-1: out
    of the common range or in a bin the other space leaves empty, so it carries no weight)."""
    shared = np.intersect1d(bins_a[bins_a >= 0], bins_b[bins_b >= 0])
    ka, kb = np.isin(bins_a, shared), np.isin(bins_b, shared)
    if not ka.any() or not kb.any():
        return math.nan, math.nan
    errors = np.concatenate([e_a[ka], e_b[kb]])[None]
    labels = np.concatenate([np.ones(ka.sum(), bool), np.zeros(kb.sum(), bool)])[None]
    bins = np.searchsorted(shared, np.concatenate([bins_a[ka], bins_b[kb]]))[None]
    d, p = permutation_pvalues(errors, labels, bins, n_perm, np.random.default_rng(seed))
    return float(d[0]), float(p[0])


def samples_needed(e_a: np.ndarray, bins_a: np.ndarray, e_b: np.ndarray, bins_b: np.ndarray, seed: int = 0,
                   datasets: int = 100, n_perm: int = 99, target: float = stats.POWER) -> int | None:
    """About how many samples per space give `target` power at the observed effect: datasets
    drawn from each space's samples (a bin uniformly, then a member: the normalised
    distribution), tested at n = 8, 16, ... MAX_NEEDED; the first n reaching the target, or
    MAX_NEEDED + 1 for "more". 100 datasets give the power to about +-4 points (its SE at 0.8)."""
    shared = np.intersect1d(bins_a[bins_a >= 0], bins_b[bins_b >= 0])
    if not len(shared):
        return None
    rng = np.random.default_rng(seed)
    pools = [[e[bins == b] for b in shared] for e, bins in ((e_a, bins_a), (e_b, bins_b))]
    n = 8
    while n <= MAX_NEEDED:
        # n samples a space, spread evenly over the shared bins (the normalised design), each a
        # draw from that space's samples in the bin
        bins = np.broadcast_to(np.arange(n) % len(shared), (datasets, n))
        errors = np.concatenate([_pick(pool, bins, rng.random((datasets, n))) for pool in pools], axis=1)
        labels = np.concatenate([np.ones((datasets, n), bool), np.zeros((datasets, n), bool)], axis=1)
        _, p = permutation_pvalues(errors, labels, np.concatenate([bins, bins], axis=1), n_perm, rng)
        if np.mean(p <= stats.ALPHA) >= target:
            return n
        n *= 2
    return MAX_NEEDED + 1


def _pick(pool: list[np.ndarray], pick: np.ndarray, member: np.ndarray) -> np.ndarray:
    out = np.empty(pick.shape)
    for b, values in enumerate(pool):
        hit = pick == b
        out[hit] = values[(member[hit] * len(values)).astype(int)]
    return out


def dominance(grid: np.ndarray, f_a: np.ndarray, f_b: np.ndarray, a: str, b: str, min_gap: float = 0.05) -> str:
    """Where one EDF is above the other by more than `min_gap`: there more of that space's models
    reach the error, so it is the better space over that range of errors."""
    diff = f_a - f_b
    # hysteresis: a stretch where the EDFs are within min_gap of each other keeps the side that
    # led before it, so one crossing of noise does not split a range in two
    side, state = np.zeros(len(grid), int), 0
    for i, d in enumerate(diff):
        state = 1 if d > min_gap else -1 if d < -min_gap else state
        side[i] = state
    parts = []
    for s, run in itertools.groupby(range(len(grid)), key=lambda i: side[i]):
        idx = list(run)
        if s != 0:
            gap = np.abs(diff[idx]).max()
            parts.append(f"{a if s > 0 else b}'s EDF is above from {pct(grid[idx[0]])} to {pct(grid[idx[-1]])} error "
                         f"(by up to {gap * 100:.0f} points)")
    return "; ".join(parts) if parts else f"neither EDF is above the other by more than {min_gap * 100:.0f} points anywhere"


def overlap_warning(ranges: dict[str, tuple[float, float]], what: str = "MACs", min_overlap: float = MIN_OVERLAP) -> str | None:
    """One line naming the spaces whose complexity ranges share less than `min_overlap` of their
    own (log) range with the range every space covers, or None: the normalised comparison only
    uses the common range, so such a space is compared on a sliver of itself."""
    if len(ranges) < 2:
        return None
    low = max(lo for lo, _ in ranges.values())
    high = min(hi for _, hi in ranges.values())
    if not high > low:
        spans = ", ".join(f"{n} {human(lo)}-{human(hi)}" for n, (lo, hi) in ranges.items())
        return f"the spaces' {what} ranges do not overlap ({spans}): their errors cannot be compared at equal complexity"
    thin = []
    for name, (lo, hi) in ranges.items():
        share = 1.0 if hi <= lo else math.log(high / low) / math.log(hi / lo)
        if share < min_overlap:
            thin.append(f"{name} ({share:.0%} of its {human(lo)}-{human(hi)} {what})")
    if not thin:
        return None
    return (f"the spaces' {what} ranges overlap too little to compare well: only {human(low)}-{human(high)} is common; "
            f"{', '.join(thin)}; the normalised comparison uses the common range alone")


@dataclass(frozen=True)
class SpacesAnalysis:
    """Design spaces compared: every table the report draws and the export writes."""

    complexity: str  # the column normalised over: "macs" or "params"
    error: str  # the error compared: "val_error"
    points: pd.DataFrame  # space, name, complexity, error, bin, weight: every sample used
    bins: pd.DataFrame  # bin, low, high, one count column per space, used
    edf: pd.DataFrame  # EDF_COLUMNS
    best_of: pd.DataFrame  # space, m, error, low, high, normalised
    tests: pd.DataFrame  # SPACES_COLUMNS + dominance, samples_needed
    sentences: list[str] = field(default_factory=list)  # one per pair
    warnings: list[str] = field(default_factory=list)  # overlap, empty bins, left-out samples

    @property
    def spaces(self) -> list[str]:
        return list(dict.fromkeys(self.points["space"]))


def _usable(samples: pd.DataFrame, error: str, complexity: str) -> tuple[pd.DataFrame, list[str]]:
    """COMPLETE samples with an error and a complexity: a pruned sample's error is of a shorter
    training, and would make its space look better or worse than it is."""
    notes = []
    ok = samples["state"].eq("COMPLETE") & samples[error].notna() & samples[complexity].notna()
    if "duplicate_of" in samples:  # a repeat carries its twin's result: one architecture counts once
        ok &= samples["duplicate_of"].isna()
    pruned = samples["state"].eq("PRUNED")
    if pruned.any():
        notes.append(f"{int(pruned.sum())} pruned samples are left out of the distributions (their errors are of shorter training)")
    return samples[ok], notes


def _bands(e: np.ndarray, w: np.ndarray, bins: np.ndarray, grid: np.ndarray, rng: np.random.Generator,
           n_boot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """EDF and best-of-m, each with its 95% bootstrap band (resampled within bins)."""
    idx = _resample(bins, n_boot, rng)
    edfs = weighted_edf(e[idx], w[idx], grid)
    best = best_of_m(e[idx], w[idx])
    lo, hi = (1 - 0.95) / 2, 1 - (1 - 0.95) / 2
    return (weighted_edf(e, w, grid), *np.quantile(edfs, [lo, hi], axis=0), *np.quantile(best, [lo, hi], axis=0))


def analyse_spaces(samples: pd.DataFrame, complexity: str = "macs", error: str = "val_error", k: int = COMPLEXITY_BINS,
                   n_perm: int = PERMUTATIONS, n_boot: int = BOOTSTRAPS, seed: int = 0) -> SpacesAnalysis | None:
    """The design spaces of a search's samples table (ablate.analysis.search) compared; None for
    fewer than two spaces with usable samples."""
    usable, notes = _usable(samples, error, complexity)
    names = [n for n in dict.fromkeys(usable["space"]) if (usable["space"] == n).sum() >= 1]
    if len(names) < 2:
        return None
    e = {n: usable.loc[usable["space"] == n, error].to_numpy(float) for n in names}
    c = {n: usable.loc[usable["space"] == n, complexity].to_numpy(float) for n in names}
    what = "MACs" if complexity == "macs" else "parameters"
    warn = overlap_warning({n: (float(c[n].min()), float(c[n].max())) for n in names}, what)
    binned, edges, used = space_bins([c[n] for n in names], k)
    counts = {n: np.bincount(bin_of(c[n], edges)[bin_of(c[n], edges) >= 0], minlength=k) if edges is not None
              else np.zeros(k, int) for n in names}
    bins = dict(zip(names, binned))
    if edges is None:
        edges = np.full(k + 1, np.nan)
    elif not used.all():
        empty = np.flatnonzero(~used)
        notes.append(f"{len(empty)} of {k} complexity bins are empty in some space and carry no weight: "
                     + "; ".join(f"{human(edges[i])}-{human(edges[i + 1])} {what} (" +
                                 ", ".join(f"{n}: {counts[n][i]}" for n in names) + ")" for i in empty))
    weights = {n: bin_weights(bins[n], used) for n in names}
    rng = np.random.default_rng(seed)
    grid = np.unique(np.concatenate(list(e.values())))
    edf_rows, best_rows, norm_edf = [], [], {}
    for n in names:
        for normalised in (True, False):
            w = weights[n] if normalised else np.full(len(e[n]), 1 / len(e[n]))
            b = bins[n] if normalised else np.zeros(len(e[n]), int)
            if w.sum() <= 0:
                continue
            f, f_lo, f_hi, best_lo, best_hi = _bands(e[n], w, b, grid, rng, n_boot)
            norm_edf[n] = f if normalised else norm_edf.get(n)
            edf_rows.append(pd.DataFrame({"space": n, "error": grid, "edf": f, "edf_low": f_lo, "edf_high": f_hi,
                                          "normalised": normalised}))
            best_rows.append(pd.DataFrame({"space": n, "m": BEST_OF, "error": best_of_m(e[n], w), "low": best_lo,
                                           "high": best_hi, "normalised": normalised}))
    tests = _tests(names, e, bins, weights, norm_edf, grid, n_perm, seed)
    points = pd.concat([pd.DataFrame({"space": n, "name": usable.loc[usable["space"] == n, "name"].to_numpy(),
                                      complexity: c[n], error: e[n], "bin": bins[n], "weight": weights[n]}) for n in names],
                       ignore_index=True)
    bin_table = pd.DataFrame({"bin": range(len(used)), "low": edges[:-1], "high": edges[1:], "used": used,
                              **{n: counts[n] for n in names}})
    return SpacesAnalysis(complexity, error, points, bin_table, pd.concat(edf_rows, ignore_index=True),
                          pd.concat(best_rows, ignore_index=True), tests, [_sentence(r) for _, r in tests.iterrows()],
                          [w for w in [warn, *notes] if w])


def corrected_spaces(analysis: SpacesAnalysis, p_adjusted: list[float]) -> SpacesAnalysis:
    """The analysis with its tests' Holm-adjusted p-values replaced by those of the report's whole
    family (ablate.analysis.verdicts.joint_holm), `real` and the sentences following them."""
    tests = analysis.tests.copy()
    if not len(tests):
        return analysis
    tests["p_adjusted"] = p_adjusted
    tests["real"] = tests["p_adjusted"] < stats.ALPHA
    return dataclasses.replace(analysis, tests=tests, sentences=[_sentence(r) for _, r in tests.iterrows()])


def _tests(names: list[str], e: dict, bins: dict, weights: dict, norm_edf: dict, grid: np.ndarray, n_perm: int,
           seed: int) -> pd.DataFrame:
    rows = []
    for i, (a, b) in enumerate(itertools.combinations(names, 2)):
        d, p = permutation_test(e[a], bins[a], e[b], bins[b], n_perm, seed + i)
        ok = a in norm_edf and b in norm_edf and norm_edf[a] is not None and norm_edf[b] is not None
        rows.append({"space_a": a, "space_b": b, "statistic": d, "p_value": p, "method": SPACE_TEST,
                     "n_a": int((bins[a] >= 0).sum()), "n_b": int((bins[b] >= 0).sum()),
                     "n_eff_a": kish(weights[a]), "n_eff_b": kish(weights[b]),
                     "dominance": dominance(grid, norm_edf[a], norm_edf[b], a, b) if ok else "",
                     "better": _better(grid, norm_edf[a], norm_edf[b], a, b) if ok else "",
                     "samples_needed": samples_needed(e[a], bins[a], e[b], bins[b], seed + i) if ok and not math.isnan(d) else None})
    frame = pd.DataFrame(rows)
    frame.insert(4, "p_adjusted", stats.holm(frame["p_value"].tolist()))
    frame.insert(6, "real", frame["p_adjusted"] < stats.ALPHA)
    return frame


def _better(grid: np.ndarray, f_a: np.ndarray, f_b: np.ndarray, a: str, b: str) -> str:
    """The space whose normalised EDF is above the other's over more of the error range (the
    area between them), or "" when they cross evenly."""
    diff = float(np.sum((f_a - f_b)[:-1] * np.diff(grid))) if len(grid) > 1 else 0.0
    return a if diff > 0 else b if diff < 0 else ""


def _sentence(r: pd.Series) -> str:
    """One sentence for one pair of spaces, as the report prints it."""
    a, b = r["space_a"], r["space_b"]
    if math.isnan(r["statistic"]):
        return f"{a} and {b} share no complexity bin: they cannot be compared at equal complexity."
    numbers = (f"D = {r['statistic']:.2f}, permutation {p_text(r['p_value'])}, Holm {p_text(r['p_adjusted'])}; "
               f"n = {r['n_a']} and {r['n_b']} (effective {r['n_eff_a']:.0f} and {r['n_eff_b']:.0f})")
    where = r["dominance"][:1].upper() + r["dominance"][1:]
    if r["real"] and r["better"]:
        worse = b if r["better"] == a else a
        return f"The {r['better']} space is better than the {worse} space: {numbers}. {where}."
    if r["real"]:  # the EDFs cross: each space is better over part of the error range
        return f"The {a} and {b} spaces differ, neither better throughout: {numbers}. {where}."
    needed = r["samples_needed"]
    more = ("" if needed is None else f" About {needed} samples per space would detect a difference of the observed size "
            f"with {stats.POWER:.0%} power." if needed <= MAX_NEEDED else
            f" More than {MAX_NEEDED} samples per space would be needed to detect a difference of the observed size.")
    return (f"No clear difference between the {a} and {b} spaces: {numbers}; this is not evidence that they are "
            f"equal.{more}")
