"""The report's "Why" section: the final runs' diagnostics (ablate.analysis.why), drawn.

One figure per instrument, plain and residual side by side, one colour per depth, each a mean
over seeds (with its 95% interval where it is a per-seed number), then the readings: sentences
generated from the numbers, never written in advance.
"""

from __future__ import annotations

from typing import Callable

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ablate.analysis.format import signed
from ablate.analysis.why import Why
from ablate.report.figures import depth_colours as _depth_colours
from ablate.report.figures import esc, is_missing
from ablate.report.figures import layout

__all__ = ["why_section", "fig_init_gradients", "fig_signal_propagation", "fig_gradient_correlation", "fig_lesion",
           "fig_landscape", "fig_landscape_2d"]

_SIDES = ("plain", "residual")


def _panels(frame: pd.DataFrame, rows: int = 1, titles: list[str] | None = None) -> tuple[go.Figure, list[str]]:
    sides = [s for s in _SIDES if s in set(frame["connection"])]
    fig = make_subplots(rows=rows, cols=len(sides), shared_yaxes=True, vertical_spacing=0.14, horizontal_spacing=0.05,
                        subplot_titles=titles or [esc(s) for s in sides])
    return fig, sides


def _lines(fig: go.Figure, frame: pd.DataFrame, sides: list[str], x: str, y: str, row: int = 1, dash: str = "solid",
           label: str = "", band: bool = False, legend: bool = True) -> None:
    colours = _depth_colours(frame["depth"])
    for col, side in enumerate(sides, start=1):
        for depth, g in frame[frame["connection"] == side].groupby("depth", sort=True):
            g = g.sort_values(x)
            name = str(g["variant"].iloc[0])
            err = {}
            if band and f"{y}_high" in g:
                hi, lo = g[f"{y}_high"] - g[y], g[y] - g[f"{y}_low"]
                err = {"error_y": {"type": "data", "array": list(hi.fillna(0)), "arrayminus": list(lo.fillna(0)),
                                   "visible": bool(hi.notna().any())}}
            fig.add_trace(go.Scatter(
                x=list(g[x]), y=list(g[y]), mode="lines+markers", name=esc(f"{depth} layers{label}"),
                line={"color": colours[int(depth)], "dash": dash}, marker={"size": 5}, legendgroup=f"d{depth}{label}",
                showlegend=legend and col == 1, hoverinfo="text",
                text=[esc(f"{name}, {x} {xv}: {y.replace('_', ' ')} {yv:.4g}") for xv, yv in zip(g[x], g[y])], **err,
            ), row=row, col=col)


def fig_init_gradients(layers: pd.DataFrame) -> go.Figure:
    """Yang et al. 2019: the gradient norm of every layer at initialisation, input (left) to output."""
    fig, sides = _panels(layers)
    _lines(fig, layers, sides, "index", "grad_norm")
    fig.update_yaxes(type="log")
    fig.update_yaxes(title_text="gradient L2 norm", col=1)
    fig.update_xaxes(title_text="layer (1 = the stem's conv)")
    return layout(fig, "At initialisation: gradient norm per layer (mean over seeds)")


def fig_signal_propagation(blocks: pd.DataFrame) -> go.Figure:
    """Brock et al. 2021's signal-propagation plot: per block, the average channel variance (solid)
    and the residual branch's variance (dotted) on top, the average squared channel mean below."""
    sides = [s for s in _SIDES if s in set(blocks["connection"])]
    titles = [esc(f"{s}: channel variance (solid), branch variance (dotted)") for s in sides] + \
             [esc(f"{s}: squared channel mean") for s in sides]
    fig, sides = _panels(blocks, rows=2, titles=titles)
    _lines(fig, blocks, sides, "index", "variance")
    _lines(fig, blocks, sides, "index", "branch_variance", dash="dot", label=" (branch)", legend=False)
    _lines(fig, blocks, sides, "index", "mean_sq", row=2, legend=False)
    fig.update_yaxes(type="log")
    fig.update_xaxes(title_text="block", row=2)
    return layout(fig, "At initialisation: signal propagation per block (mean over seeds)", height=640)


def fig_gradient_correlation(lags: pd.DataFrame) -> go.Figure:
    """Balduzzi et al. 2017: the input gradient's correlation against lag along lines between images."""
    fig, sides = _panels(lags)
    _lines(fig, lags, sides, "lag", "correlation", band=True)
    for col in range(1, len(sides) + 1):
        fig.add_hline(y=0.5, line={"color": "#888", "dash": "dot"}, row=1, col=col)
    fig.update_yaxes(title_text="gradient correlation", col=1)
    fig.update_xaxes(title_text="lag (inputs along the line)")
    return layout(fig, "At initialisation: shattered gradients (mean over seeds, 95% interval)")


def fig_lesion(lesion: pd.DataFrame) -> go.Figure:
    """Veit et al. 2016: the test error's rise when one block is removed, per block."""
    frame = lesion.assign(increase=lesion["error_increase"] * 100, increase_low=lesion["error_increase_low"] * 100,
                          increase_high=lesion["error_increase_high"] * 100)
    fig, sides = _panels(frame)
    _lines(fig, frame, sides, "position", "increase", band=True)
    fig.update_yaxes(title_text="test error increase (points)", col=1)
    fig.update_xaxes(title_text="removed block (those whose shapes match, in order)")
    return layout(fig, "After training: one block removed (mean over seeds, 95% interval)")


def fig_landscape(land: pd.DataFrame) -> go.Figure:
    """Li et al. 2018 (top): the training loss along a filter-normalised direction; Goodfellow et
    al. 2015 (bottom): along the line from the initial (0) to the final (1) weights."""
    sides = [s for s in _SIDES if s in set(land["connection"])]
    titles = [esc(f"{s}: along a random direction") for s in sides] + [esc(f"{s}: initial to final weights") for s in sides]
    fig, sides = _panels(land, rows=2, titles=titles)
    one, interp = land[land["kind"] == "1d"], land[land["kind"] == "interpolation"]
    if len(one):
        _lines(fig, one, sides, "alpha", "loss")
    if len(interp):
        _lines(fig, interp, sides, "alpha", "loss", row=2, legend=not len(one))
    fig.update_yaxes(type="log")
    fig.update_yaxes(title_text="training loss", col=1)
    fig.update_xaxes(title_text="step along the direction (filter-normalised)", row=1)
    fig.update_xaxes(title_text="interpolation (0 initial, 1 final)", row=2)
    return layout(fig, "After training: the loss landscape (mean over seeds)", height=640)


def fig_landscape_2d(two: pd.DataFrame) -> go.Figure:
    """Li et al. 2018, Fig. 5: contours of the loss on a 2-D filter-normalised plane, the deepest
    plain and residual nets side by side."""
    deepest = two.groupby("connection")["depth"].max()
    frame = two[two.apply(lambda r: r["depth"] == deepest[r["connection"]], axis=1)]
    sides = [s for s in _SIDES if s in set(frame["connection"])]
    fig = make_subplots(rows=1, cols=len(sides), horizontal_spacing=0.08,
                        subplot_titles=[esc(str(frame[frame["connection"] == s]["variant"].iloc[0])) for s in sides])
    for col, side in enumerate(sides, start=1):
        g = frame[frame["connection"] == side].pivot_table(index="beta", columns="alpha", values="loss")
        fig.add_trace(go.Contour(x=list(g.columns), y=list(g.index), z=g.values.tolist(), showscale=col == len(sides),
                                 colorscale="Viridis", contours={"coloring": "lines", "showlabels": True}), row=1, col=col)
    return layout(fig, "After training: the loss on a 2-D slice (mean over seeds)")


def _summary_table(why: Why, table: Callable[..., str]) -> str:
    s = why.summary
    if s.empty:
        return ""

    def ci(r: pd.Series, m: str, fmt: Callable[[float], str]) -> str:
        mean, low, high = r[f"{m}_mean"], r[f"{m}_low"], r[f"{m}_high"]
        if is_missing(mean):
            return "-"
        return fmt(mean) + ("" if is_missing(low) else f" [{fmt(low)}, {fmt(high)}]")

    rows = [{
        "variant": r["variant"], "seeds": r["seeds"],
        "first / last layer gradient at init": ci(r, "grad_first_over_last", lambda v: f"{v:.3g}"),
        "lag where correlation < 0.5": ("> " if r["lag_censored"] else "") + ci(r, "lag_below_half", lambda v: f"{v:.3g}"),
        "largest lesion increase (points)": ci(r, "lesion_max_increase", signed),
        "mean lesion increase (points)": ci(r, "lesion_mean_increase", signed),
        "loss at ±1 over loss at 0": ci(r, "landscape_rise", lambda v: f"{v:.3g}"),
    } for _, r in s.sort_values(["connection", "depth"]).iterrows()]
    numeric = set(rows[0]) - {"variant"}
    return table(pd.DataFrame(rows), numeric=numeric) + (
        '<p class="note">Mean over seeds [95% t-interval]. A lag with "&gt;" did not fall below 0.5 within the lags '
        "measured in some seed, and counts as one past the last lag there.</p>")


def why_section(why: Why | None, figure: Callable[[go.Figure | None], str], table: Callable[..., str],
                gradient_flow: str = "") -> str:
    """The section's body: the readings, the summary table, a figure per instrument, and the
    training-time gradient flow (`gradient_flow`, drawn by the page) folded in at the end."""
    if why is None or why.empty:
        return gradient_flow
    c = why.curves
    parts = []
    if why.readings:
        parts.append("<p>" + " ".join(esc(r) for r in why.readings) + "</p>")
    parts.append('<p class="sub">The seed documents explain the degradation of deep plain nets with vanishing gradients '
                 "(the chain-rule product shrinks; a shortcut adds 1 to it). The instruments below test that account and its "
                 "rivals on this study's own nets: gradient norms and signal propagation at initialisation (Yang et al. 2019; "
                 "Brock et al. 2021), shattered gradients (Balduzzi et al. 2017), the block lesion (Veit et al. 2016) and the "
                 "loss landscape (Li et al. 2018; Goodfellow et al. 2015).</p>")
    parts.append(_summary_table(why, table))
    for key, draw in (("layers", fig_init_gradients), ("blocks", fig_signal_propagation), ("lags", fig_gradient_correlation),
                      ("lesion", fig_lesion), ("landscape", fig_landscape), ("landscape_2d", fig_landscape_2d)):
        if key in c:
            parts.append(figure(draw(c[key])))
    if why.errors:
        parts.append('<p class="note">' + esc("Diagnostics that could not be measured: " + "; ".join(why.errors)) + "</p>")
    if gradient_flow:
        parts.append("<h3>Gradient flow during training</h3>" + gradient_flow)
    return "".join(parts)
