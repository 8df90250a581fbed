"""The design-space test's calibration on simulated data, as docs/spaces.md reports it:
false-positive rates (the same space twice), power (a shifted space) and the complexity
confound, normalised and not. `uv run python tools/spaces_calibration.py` (a few seconds)."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
import test_spaces as T  # noqa: E402  (the simulation the test suite checks)


def main() -> None:
    print(f"{T.DATASETS} simulated datasets, {T.PERMS} within-bin permutations each; SE at 5%: {T.SE * 100:.2f} points")
    for n in (16, 32, 64):
        print(f"same space twice, n = {n}: false-positive rate {T._rejections(np.random.default_rng(n), n):.3f}")
    for n in (16, 32, 64, 128):
        rate = T._rejections(np.random.default_rng(100 + n), n, b=(1e5, 1e6, 0.015))
        print(f"shifted by 1.5 points (noise sd 2), n = {n}: power {rate:.3f}")
    a, b = (1e5, 1e6, 0.0), (3e5, 3e6, 0.0)
    for n in (16, 32, 64):
        norm = T._rejections(np.random.default_rng(7 + n), n, a, b)
        raw = T._rejections(np.random.default_rng(7 + n), n, a, b, normalised=False)
        print(f"complexity confound (MACs 0.1M-1M vs 0.3M-3M, one law), n = {n}: normalised {norm:.3f}, unnormalised {raw:.3f}")


if __name__ == "__main__":
    main()
