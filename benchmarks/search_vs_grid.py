"""How an architecture search's sampled nets compare with the grid study's at the same depths.

    uv run python benchmarks/search_vs_grid.py sqlite:///quick.db sqlite:///search-quick.db

Prints, for each connection and depth the grid holds, the grid's final-run test error (mean over
seeds) next to every sampled architecture of that connection and depth (any width, any activation:
their width and activation are printed) with its seed-0 test error, and the finalists' final runs.
Both studies train 3 epochs of the same 2,048 Fashion-MNIST images (the search holds 1,000 of the
training split out for validation), so the levels are comparable; the widths are not the same.
"""

from __future__ import annotations

import sys

from ablate.analysis.format import pct
from ablate.analysis.results import load_results


def main(grid_url: str, search_url: str, grid: str = "quick", search: str = "search-quick") -> None:
    g = load_results(grid, grid_url).summary
    s = load_results(search, search_url)
    samples = s.samples[s.samples["feasible"] & (s.samples["state"] == "COMPLETE")]
    for _, row in g.sort_values(["connection", "depth"]).iterrows():
        same = samples[(samples["connection"] == row["connection"]) & (samples["depth"] == row["depth"])]
        nets = ", ".join(f"{r['name']} {pct(r['test_error'])}" for _, r in same.iterrows()) or "none sampled"
        print(f"{row['connection']}-{row['depth']}: grid {row['variant']} {pct(row['test_error_mean'], row['test_error_std'])} "
              f"({row['seeds']} seeds); search: {nets}")
    for _, f in s.search.finalists.iterrows():
        print(f"finalist {f['variant']}: test {pct(f['test_error_mean'], f['test_error_std'])} over {f['seeds']} seeds")


if __name__ == "__main__":
    main(*sys.argv[1:])
