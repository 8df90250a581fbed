"""The quick study on disjoint seed sets: does its verdict hold whichever seeds it runs?

    uv run python benchmarks/quick_seeds.py                 # three runs: seeds 1..n, n+1..2n, 2n+1..3n
    uv run python benchmarks/quick_seeds.py --analyse-only  # read the storages of earlier runs again

Each run is `ablate run studies/quick.toml --first-seed F --storage sqlite:///<dir>/quick-seeds-F.db`
(n = the study's [seeds] count), timed, with the load average before and after. Then, per run,
the decisive tests of the quick study's verdict on the final training errors, paired by seed
(the same seed is the same initialisation, data order and augmentation on every variant):

1. degradation: plain at the deepest depth against plain at the shallowest (must rise);
2. removal: residual against plain at the deepest depth (must be lower);
3. the residual net's own change from the shallowest to the deepest (must not be a significant rise);

two-sided paired t-tests (scipy.stats.ttest_rel), Holm-adjusted over the three, alpha 0.05.
Prints one Markdown row per run for docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import optuna
from scipy import stats

from ablate.study import load_study

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "studies" / "quick.toml"
ALPHA = 0.05


def holm(pvalues: list[float]) -> list[float]:
    """Holm's step-down adjusted p-values, in the order given."""
    order = np.argsort(pvalues)
    adjusted, running = [0.0] * len(pvalues), 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (len(pvalues) - rank) * pvalues[i]))
        adjusted[i] = running
    return adjusted


def final_train_errors(storage: str) -> dict[str, dict[int, float]]:
    out: dict[str, dict[int, float]] = {}
    for t in optuna.load_study(study_name="quick", storage=storage).get_trials():
        if t.user_attrs.get("kind") == "final" and t.state == optuna.trial.TrialState.COMPLETE:
            out.setdefault(t.user_attrs["variant"], {})[t.user_attrs["seed"]] = t.user_attrs["train_error"]
    return out


def verdict_tests(storage: str, seeds: list[int]) -> list[tuple[str, float, float, float]]:
    """(test, mean difference in points, raw p, Holm-adjusted p) for the three decisive tests."""
    quick = load_study(QUICK)
    errors = final_train_errors(storage)
    name = {(s.connection, s.depth): s.name for s in quick.variants}
    depths = sorted({s.depth for s in quick.variants})
    lo, hi = depths[0], depths[-1]
    pairs = [("plain rise", name["plain", hi], name["plain", lo]),
             ("residual - plain", name["residual", hi], name["plain", hi]),
             ("residual rise", name["residual", hi], name["residual", lo])]
    rows = []
    for label, a, b in pairs:
        x, y = (np.array([errors[v][s] for s in seeds]) for v in (a, b))
        rows.append((label, 100 * float(np.mean(x - y)), float(stats.ttest_rel(x, y).pvalue)))
    adjusted = holm([p for _, _, p in rows])
    return [(label, d, p, q) for (label, d, p), q in zip(rows, adjusted)]


def means(storage: str) -> dict[str, float]:
    return {v: 100 * float(np.mean(list(e.values()))) for v, e in final_train_errors(storage).items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ablate-quick-seeds"), help="where the storages go")
    parser.add_argument("--analyse-only", action="store_true", help="do not run; read the storages")
    args = parser.parse_args()
    n = load_study(QUICK).seeds
    args.dir.mkdir(parents=True, exist_ok=True)
    print("| seeds | wall | load before / after | plain rise (points, p, Holm p) | residual - plain at depth (points, p, Holm p) "
          "| residual rise (points, p, Holm p) | both effects real |")
    print("|---|---|---|---|---|---|---|")
    for k in range(args.runs):
        first = 1 + k * n
        seeds = list(range(first, first + n))
        storage = f"sqlite:///{args.dir / f'quick-seeds-{first}.db'}"
        wall, load = "-", "-"
        if not args.analyse_only:
            before = os.getloadavg()[0]
            t0 = time.perf_counter()
            result = subprocess.run([sys.executable, "-m", "ablate", "run", str(QUICK), "--first-seed", str(first),
                                     "--storage", storage], cwd=args.dir, capture_output=True, text=True)
            if result.returncode != 0:
                print(result.stderr, file=sys.stderr)
                return result.returncode
            seconds = time.perf_counter() - t0
            wall, load = f"{seconds // 60:.0f} min {seconds % 60:.0f} s", f"{before:.2f} / {os.getloadavg()[0]:.2f}"
        tests = verdict_tests(storage, seeds)
        real = tests[0][1] > 0 and tests[0][3] < ALPHA and tests[1][1] < 0 and tests[1][3] < ALPHA \
            and not (tests[2][1] > 0 and tests[2][3] < ALPHA)
        cells = [f"{d:+.1f}, {p:.2g}, {q:.2g}" for _, d, p, q in tests]
        print(f"| {first}..{first + n - 1} | {wall} | {load} | " + " | ".join(cells) + f" | {'yes' if real else 'NO'} |", flush=True)
        print("  train error means: " + ", ".join(f"{v} {e:.1f}%" for v, e in means(storage).items()), file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
