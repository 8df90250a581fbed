"""Numbers in words, one function per kind, for the terminal, the report and the verdicts alike."""

from __future__ import annotations

import math

__all__ = ["PERCENT", "pct", "points", "signed", "ci_text", "p_text", "p_short", "count", "seeds_text", "human", "value_text"]

PERCENT = 100.0


def pct(x: float | None, std: float | None = None) -> str:
    """12.3% or 12.3% ± 0.4 (the std in percentage points); n/a for a missing value."""
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "n/a"
    s = f"{x * PERCENT:.1f}%"
    if std is not None and not math.isnan(std):
        s += f" ± {std * PERCENT:.1f}" if std * PERCENT >= 0.095 else f" ± {std * PERCENT:.2f}"
    return s


def points(d: float) -> str:
    """A difference of two errors: "+1.2 points"."""
    return f"{d * PERCENT:+.1f} points"


def signed(d: float) -> str:
    """A difference in percentage points, signed: "+1.2"."""
    return f"{d * PERCENT:+.1f}"


def ci_text(low: float, high: float) -> str:
    """A confidence interval in percentage points: "+0.4 to +2.0"."""
    return f"{signed(low)} to {signed(high)}"


def p_short(p: float) -> str:
    """A p-value in a table cell or a bracket: two significant digits (0.00077, 0.61)."""
    return f"{p:.2g}"


def p_text(p: float) -> str:
    """ "p < 0.001", "p = 0.014", "p = 0.61" """
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}" if p < 0.1 else f"p = {p:.2f}"


def count(n: int, word: str, plural: str | None = None) -> str:
    """ "1 seed", "2 seeds", "1 epoch" """
    return f"{n} {word if n == 1 else plural or word + 's'}"


def seeds_text(n: int) -> str:
    return count(n, "seed")


def human(n: float | None) -> str:
    """0.27M, 40.6M, 1.82G: the papers' way of writing parameter and MAC counts; "-" when unknown."""
    if n is None or n != n:  # None or NaN
        return "-"
    for unit, scale in (("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if n >= scale:
            v = n / scale
            return f"{v:.3g}{unit}" if v < 100 else f"{v:.0f}{unit}"
    return f"{n:.0f}"


def value_text(v: object) -> str:
    """A hyperparameter's value: floats to three significant digits."""
    if isinstance(v, float):
        return f"{v:.3g}"
    return str(v)
