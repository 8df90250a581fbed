"""The report's "Design spaces" section: drawn from a finished `ablate.analysis.SpacesAnalysis`
(Radosavovic et al. 2019: error EDFs of random models from each space, normalised for
complexity); nothing is computed here but the drawing."""

from __future__ import annotations

from typing import Callable

import pandas as pd
import plotly.graph_objects as go

from ablate.analysis import stats
from ablate.analysis.format import human, p_short
from ablate.analysis.spaces import BOOTSTRAPS, COMPLEXITY_BINS, PERMUTATIONS, SpacesAnalysis
from ablate.report.figures import esc, layout

__all__ = ["spaces_section", "fig_space_edfs", "fig_space_errors", "fig_best_of"]

COLOURS = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2")


def _colour(spaces: list[str], name: str) -> str:
    return COLOURS[spaces.index(name) % len(COLOURS)]


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def fig_space_edfs(a: SpacesAnalysis) -> go.Figure:
    """The normalised EDFs, each with its 95% bootstrap band (steps, as an EDF is)."""
    fig = go.Figure()
    for name in a.spaces:
        g = a.edf[(a.edf["space"] == name) & a.edf["normalised"]]
        if g.empty:
            continue
        colour, x = _colour(a.spaces, name), (g["error"] * 100).tolist()
        fig.add_trace(go.Scatter(x=x, y=g["edf_high"].tolist(), mode="lines", line={"width": 0, "shape": "hv"},
                                 showlegend=False, hoverinfo="skip", legendgroup=esc(name)))
        fig.add_trace(go.Scatter(x=x, y=g["edf_low"].tolist(), mode="lines", line={"width": 0, "shape": "hv"},
                                 fill="tonexty", fillcolor=_rgba(colour, 0.18), showlegend=False, hoverinfo="skip",
                                 legendgroup=esc(name)))
        fig.add_trace(go.Scatter(x=x, y=g["edf"].tolist(), mode="lines", name=esc(name), legendgroup=esc(name),
                                 line={"color": colour, "shape": "hv", "width": 2},
                                 hovertemplate="error %{x:.1f}%: %{y:.2f} of the models<extra>" + esc(name) + "</extra>"))
    return layout(fig, "Complexity-normalised error EDFs (95% bootstrap bands)",
                  xaxis_title=f"{a.error.replace('_', ' ')} (%)", yaxis_title="fraction of models with lower error",
                  yaxis={"range": [0, 1]})


def fig_space_errors(a: SpacesAnalysis) -> go.Figure:
    """Every sample's error against its complexity, coloured by space; hollow: outside the
    common range or in an empty bin (weight 0)."""
    fig = go.Figure()
    p = a.points
    for name in a.spaces:
        g = p[p["space"] == name]
        colour = _colour(a.spaces, name)
        fig.add_trace(go.Scatter(
            x=g[a.complexity].tolist(), y=(g[a.error] * 100).tolist(), mode="markers", name=esc(name),
            marker={"color": colour, "size": 8, "symbol": ["circle" if w > 0 else "circle-open" for w in g["weight"]]},
            text=[esc(f"{n}: {human(c)} {a.complexity}, weight {w:.3f}") for n, c, w in zip(g["name"], g[a.complexity], g["weight"])],
            hovertemplate="%{text}<br>error %{y:.1f}%<extra></extra>"))
    used = a.bins[a.bins["used"]]
    if len(used):
        fig.add_vrect(x0=float(used["low"].min()), x1=float(used["high"].max()), fillcolor="#888", opacity=0.08, line_width=0)
    return layout(fig, f"Error against {'MACs' if a.complexity == 'macs' else 'parameters'}, every sample (shaded: the common range)",
                  xaxis_title="MACs" if a.complexity == "macs" else "parameters", xaxis_type="log",
                  yaxis_title=f"{a.error.replace('_', ' ')} (%)")


def fig_best_of(a: SpacesAnalysis) -> go.Figure:
    """nds's "best of m": the expected lowest error of m random models, with 95% bands."""
    fig = go.Figure()
    for name in a.spaces:
        g = a.best_of[(a.best_of["space"] == name) & a.best_of["normalised"]]
        if g.empty:
            continue
        colour = _colour(a.spaces, name)
        fig.add_trace(go.Scatter(
            x=g["m"].tolist(), y=(g["error"] * 100).tolist(), mode="lines+markers", name=esc(name),
            line={"color": colour}, error_y={"type": "data", "symmetric": False, "array": ((g["high"] - g["error"]) * 100).tolist(),
                                             "arrayminus": ((g["error"] - g["low"]) * 100).tolist()},
            hovertemplate="best of %{x}: %{y:.2f}%<extra>" + esc(name) + "</extra>"))
    return layout(fig, "Best of m: the expected lowest error of m random models (normalised, 95% bands)",
                  xaxis_title="m (models drawn)", xaxis_type="log", yaxis_title=f"{a.error.replace('_', ' ')} (%)")


def _tests_table(a: SpacesAnalysis) -> str:
    t = a.tests
    rows = [{"space a": r["space_a"], "space b": r["space_b"], "D": f"{r['statistic']:.2f}",
             "p": p_short(r["p_value"]), "Holm p": p_short(r["p_adjusted"]), "real": "yes" if r["real"] else "no",
             "n": f"{r['n_a']} / {r['n_b']}", "effective n": f"{r['n_eff_a']:.0f} / {r['n_eff_b']:.0f}",
             "samples for 80% power": "-" if r["samples_needed"] is None or pd.isna(r["samples_needed"]) else
             f"{int(r['samples_needed'])}"} for _, r in t.iterrows()]
    frame = pd.DataFrame(rows)
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    body = "".join("<tr>" + "".join(f"<td>{esc(v)}</td>" for v in row) + "</tr>" for row in frame.itertuples(index=False))
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def spaces_section(a: SpacesAnalysis | None, figure: Callable[[go.Figure | None], str]) -> str:
    """The section's HTML, or "" for a study with fewer than two spaces."""
    if a is None:
        return ""
    what = "MACs" if a.complexity == "macs" else "parameters"
    sentences = "".join(f"<li>{esc(s)}</li>" for s in a.sentences)
    warnings = "".join(f'<p class="note">warning: {esc(w)}</p>' for w in a.warnings)
    rule = (f"Each space's models were sampled at random (Radosavovic et al. 2019). Errors are validation errors of the "
            f"completed samples. Normalised: each space's samples are weighted so that its {what} distribution is uniform "
            f"over {COMPLEXITY_BINS} log-spaced bins of the range every space covers (a bin some space leaves empty, and "
            f"every sample outside the range, gets weight 0); effective n is Kish's 1/sum(w²). Bands: {BOOTSTRAPS} "
            f"bootstrap resamples within bins. The test: D, the largest gap between two normalised EDFs; its p-value from "
            f"{PERMUTATIONS} permutations of the space labels within complexity bins (which keeps the normalisation); "
            f"Holm-corrected across the pairs of spaces; real when the corrected p is below {stats.ALPHA:g}. Where a "
            f"space's EDF is above, more of its models reach that error: it is the better space there.")
    return (f'<ul class="findings">{sentences}</ul>{warnings}{_tests_table(a)}<p class="note">{esc(rule)}</p>'
            + figure(fig_space_edfs(a)) + figure(fig_space_errors(a)) + figure(fig_best_of(a)))
