"""The quick study on disjoint seed sets: does its verdict hold whichever seeds it runs?

    uv run python benchmarks/quick_seeds.py                 # three runs: seeds 1..n, n+1..2n, 2n+1..3n
    uv run python benchmarks/quick_seeds.py --sets 2,3      # only the second and third sets
    uv run python benchmarks/quick_seeds.py --analyse-only  # read the storages of earlier runs again

Each run is `ablate run studies/quick.toml --first-seed F --storage sqlite:///<dir>/quick-seeds-F.db`
(n = the study's [seeds] count), timed, with the load average before and after. The verdict is
the one the report and `ablate run` print, computed by the same code (`ablate.analysis.verdicts`:
paired t-tests by seed, Holm-corrected across all of the report's comparisons). Prints one
Markdown row per run for docs/benchmarks.md: per finding, the answer and its deciding comparison.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

from ablate.spec.study import load_study
from ablate.analysis import open_study, recipes_of, samples, searched_keys, trials_table, variant_summary, verdicts

ROOT = Path(__file__).resolve().parents[1]
QUICK = ROOT / "studies" / "quick.toml"


def findings(storage: str):
    """The report's findings for the study stored at `storage`."""
    ostudy = open_study("quick", storage)
    trials = trials_table(ostudy)
    summary = variant_summary(trials, ostudy.user_attrs.get("variants"), searched_keys(ostudy.user_attrs, trials))
    return summary, verdicts(summary, str(ostudy.user_attrs.get("dataset")), samples(trials, recipes_of(ostudy)))


def cell(f) -> str:
    c = f.deciding
    if c is None or not c.testable:
        return f"{f.answer}"
    return f"{f.answer}: {c.difference * 100:+.1f} points (95% CI {c.ci_low * 100:+.1f} to {c.ci_high * 100:+.1f}), Holm p = {c.p_adjusted:.2g}"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sets", default="1,2,3", help="which seed sets: set k runs seeds (k-1)n+1 .. kn")
    parser.add_argument("--dir", type=Path, default=Path("/tmp/ablate-quick-seeds"), help="where the storages go")
    parser.add_argument("--analyse-only", action="store_true", help="do not run; read the storages")
    args = parser.parse_args()
    n = load_study(QUICK).seeds
    args.dir.mkdir(parents=True, exist_ok=True)
    header = False
    for k in (int(x) for x in args.sets.split(",")):
        first = 1 + (k - 1) * n
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
            wall, load = f"{seconds // 60:.0f} min {seconds % 60:02.0f} s", f"{before:.2f} / {os.getloadavg()[0]:.2f}"
        summary, found = findings(storage)
        if not header:
            print("| seeds | wall | load before / after | " + " | ".join(f.question for f in found) + " |")
            print("|---|---|---|" + "---|" * len(found))
            header = True
        print(f"| {first}..{first + n - 1} | {wall} | {load} | " + " | ".join(cell(f) for f in found) + " |", flush=True)
        means = ", ".join(f"{r.variant} {100 * r.train_error_mean:.1f}%" for r in summary.itertuples())
        print(f"  training error means: {means}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
