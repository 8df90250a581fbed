"""The report's figures: each draws a finished table (ablate.analysis) with plotly, and computes nothing."""

from __future__ import annotations

import html
import math
from typing import Any

import pandas as pd
import plotly.graph_objects as go
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from ablate.analysis.format import human, pct, seeds_text
from ablate.analysis.papers import paper_error

__all__ = ["esc", "is_missing", "FIG_HEIGHT", "fig_curves", "fig_iteration_curves", "fig_error_vs_depth",
           "fig_gradient_flow", "fig_pairs", "fig_efficiency", "fig_sensitivity", "depth_colours", "layout"]

CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "svg"}}
STAGE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
SIDE_COLOURS = {"plain": "#d62728", "residual": "#1f77b4", "post": "#7f7f7f", "pre": "#2ca02c",
                "basic": "#1f77b4", "bottleneck": "#ff7f0e"}
FIG_HEIGHT = 420


def esc(value: Any) -> str:
    """Every string from a study file or the storage goes through here, in HTML and in plotly
    text alike (plotly renders a subset of HTML in labels and decodes entities)."""
    return html.escape("" if value is None else str(value), quote=True)


def is_missing(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA



def _depth_colours(depths) -> dict[int, str]:
    depths = sorted(set(int(d) for d in depths))
    if len(depths) == 1:
        return {depths[0]: "#1f77b4"}
    # Plasma without its pale yellow end, light (shallow) to dark (deep) reversed: deep is dark.
    cols = sample_colorscale("Plasma", [0.85 * i / (len(depths) - 1) for i in range(len(depths))])
    return dict(zip(depths, cols))


def depth_colours(depths) -> dict[int, str]:
    """One colour per depth, as every figure of the report colours depths (ablate.report.why too)."""
    return _depth_colours(depths)


def _side_label(connection: str, shortcut: str) -> str:
    return "plain" if connection == "plain" else f"residual (option {shortcut})" if shortcut not in ("none", None) else "residual"


def _sides(frame: pd.DataFrame) -> list[tuple[str, str]]:
    sides = frame[["connection", "shortcut"]].drop_duplicates().itertuples(index=False, name=None)
    return sorted(sides, key=lambda s: (s[0] != "plain", str(s[1])))


def layout(fig: go.Figure, title: str, height: int = FIG_HEIGHT, **kw: Any) -> go.Figure:
    """The report's common layout (the search, spaces and why sections draw with it too)."""
    fig.update_layout(
        title={"text": esc(title), "x": 0.01, "xanchor": "left", "font": {"size": 15}},
        template="plotly_white", height=height, margin={"l": 60, "r": 20, "t": 70, "b": 50},
        legend={"orientation": "v", "x": 1.01, "y": 1}, hovermode="closest", **kw,
    )
    return fig


def _std(series: pd.Series) -> list[float | None]:
    return [None if is_missing(v) else float(v) * 100 for v in series]


def _epoch_dtick(epochs: pd.Series) -> int | None:
    """Whole epochs on the axis when there are few (plotly would tick 1.2, 1.4, ... for two)."""
    return 1 if len(epochs) and int(epochs.max()) <= 12 else None


def fig_curves(cur: pd.DataFrame, family: str) -> go.Figure:
    """He et al. 2016, Figure 6: training error dashed, test error solid, one colour per depth;
    plain and residual side by side on shared axes."""
    sides = _sides(cur)
    fig = make_subplots(rows=1, cols=len(sides), shared_yaxes=True, shared_xaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[esc(_side_label(*s)) for s in sides])
    colours = _depth_colours(cur["depth"])
    shown: set[int] = set()
    for col, (conn, sc) in enumerate(sides, start=1):
        side = cur[(cur["connection"] == conn) & (cur["shortcut"] == sc)]
        for depth, g in side.groupby("depth", sort=True):
            g = g.sort_values("epoch")
            name = str(g["variant"].iloc[0])
            for metric, dash, label in (("train_error", "dash", "train"), ("test_error", "solid", "test")):
                mean, std = g[f"{metric}_mean"] * 100, _std(g[f"{metric}_std"])
                text = [f"{esc(name)}, epoch {e}: {label} {m:.2f}%" + (f" ± {s:.2f}" if s is not None else "") + f" ({n} run{'s' if n != 1 else ''})"
                        for e, m, s, n in zip(g["epoch"], mean, std, g["n"])]
                fig.add_trace(go.Scatter(
                    x=list(g["epoch"].astype(int)), y=list(mean), mode="lines", name=f"{depth} layers",
                    line={"color": colours[int(depth)], "dash": dash, "width": 2}, legendgroup=f"d{depth}",
                    showlegend=int(depth) not in shown and metric == "test_error", text=text, hoverinfo="text",
                ), row=1, col=col)
            shown.add(int(depth))
    fig.update_xaxes(title_text="epoch", dtick=_epoch_dtick(cur["epoch"]))
    fig.update_yaxes(title_text="error (%)", row=1, col=1)
    return layout(fig, f"Training curves: {family} (dashed: training error, solid: test error)")


def fig_iteration_curves(cur: pd.DataFrame, family: str) -> go.Figure:
    """He et al. 2016, Figure 6, against iterations as in the paper: training error dashed at
    `points_per_epoch` points per epoch, test error solid (with markers) at the end of each epoch,
    one colour per depth; plain and residual side by side on shared axes."""
    sides = _sides(cur)
    fig = make_subplots(rows=1, cols=len(sides), shared_yaxes=True, shared_xaxes=True, horizontal_spacing=0.04,
                        subplot_titles=[esc(_side_label(*s)) for s in sides])
    colours = _depth_colours(cur["depth"])
    shown: set[int] = set()
    for col, (conn, sc) in enumerate(sides, start=1):
        side = cur[(cur["connection"] == conn) & (cur["shortcut"] == sc)]
        for depth, g in side.groupby("depth", sort=True):
            g = g.sort_values("iteration")
            name = str(g["variant"].iloc[0])
            for metric, dash, label, mode in (("train_error", "dash", "train", "lines"), ("test_error", "solid", "test", "lines+markers")):
                h = g.dropna(subset=[f"{metric}_mean"])
                mean, std = h[f"{metric}_mean"] * 100, _std(h[f"{metric}_std"])
                text = [f"{esc(name)}, iteration {i} (epoch {e}): {label} {m:.2f}%" + (f" ± {s:.2f}" if s is not None else "")
                        + f" ({n} run{'s' if n != 1 else ''})" for i, e, m, s, n in zip(h["iteration"], h["epoch"], mean, std, h["n"])]
                fig.add_trace(go.Scatter(
                    x=list(h["iteration"].astype(int)), y=list(mean), mode=mode, name=f"{depth} layers",
                    line={"color": colours[int(depth)], "dash": dash, "width": 2}, marker={"size": 6}, legendgroup=f"d{depth}",
                    showlegend=int(depth) not in shown and metric == "test_error", text=text, hoverinfo="text",
                ), row=1, col=col)
            shown.add(int(depth))
    fig.update_xaxes(title_text="iteration", rangemode="tozero")
    fig.update_yaxes(title_text="error (%)", row=1, col=1)
    return layout(fig, f"Training curves: {family} (dashed: training error, solid: test error)")


def fig_error_vs_depth(fam: pd.DataFrame, family: str, dataset: str) -> go.Figure:
    """Final training and test error against depth with error bars over seeds, per connection;
    the papers' CIFAR-10 test errors beside ours where the variant is one of theirs."""
    fig = go.Figure()
    done = fam[fam["seeds"] > 0]
    for conn, sc in _sides(done):
        g = done[(done["connection"] == conn) & (done["shortcut"] == sc)].sort_values("depth")
        colour = SIDE_COLOURS.get(conn, "#444")
        for metric, dash, symbol, label in (("train_error", "dash", "circle-open", "training"), ("test_error", "solid", "circle", "test")):
            std = _std(g[f"{metric}_std"])
            text = [f"{esc(v)}: {label} error {pct(m, s)} ({seeds_text(int(n))})"
                    for v, m, s, n in zip(g["variant"], g[f"{metric}_mean"], g[f"{metric}_std"], g["seeds"])]
            fig.add_trace(go.Scatter(
                x=list(g["depth"].astype(int)), y=list(g[f"{metric}_mean"] * 100), mode="lines+markers",
                name=esc(f"{_side_label(conn, sc)}, {label}"), line={"color": colour, "dash": dash},
                marker={"symbol": symbol, "size": 8}, text=text, hoverinfo="text",
                error_y={"type": "data", "array": [s if s is not None else 0 for s in std], "visible": any(s is not None for s in std)},
            ))
    paper = []
    for _, row in fam.iterrows():
        p = paper_error(dataset, row)
        if p is not None:
            paper.append((int(row["depth"]), p, row["variant"]))
    for source in dict.fromkeys(p.source for _, p, _ in paper):
        pts = [(d, p, v) for d, p, v in paper if p.source == source]
        fig.add_trace(go.Scatter(
            x=[d for d, _, _ in pts], y=[p.error for _, p, _ in pts], mode="markers", name=esc(f"{source} (test)"),
            marker={"symbol": "star", "size": 12, "color": "#222"},
            error_y={"type": "data", "array": [p.std or 0 for _, p, _ in pts], "visible": any(p.std for _, p, _ in pts)},
            text=[esc(f"{v}: {p.label}") for _, p, v in pts], hoverinfo="text",
        ))
    depths = sorted(done["depth"].astype(int).unique())
    fig.update_xaxes(title_text="depth (layers)", tickvals=depths)
    fig.update_yaxes(title_text="final error (%)")
    return layout(fig, f"Error against depth: {family}")


def fig_gradient_flow(grads: pd.DataFrame, family: str) -> go.Figure | None:
    """Per-stage gradient norm, plain against residual: against epoch at the deepest depth both
    have (top), and against depth in the first epoch (bottom). Vanishing gradients in deep
    plain nets show as early stages' norms falling away from the head's."""
    plain = grads[grads["connection"] == "plain"]
    res = grads[grads["connection"] == "residual"]
    common = sorted(set(plain["depth"].astype(int)) & set(res["depth"].astype(int)))
    if not common:
        return None
    deep = common[-1]
    res_sc = sorted(res[res["depth"] == deep]["shortcut"].unique())[0]
    res = res[res["shortcut"] == res_sc]
    first = int(grads["epoch"].min())
    sides = [("plain", plain), (_side_label("residual", res_sc), res)]
    titles = [esc(f"{s} {deep}: against epoch") for s, _ in sides] + [esc(f"{s}: against depth, epoch {first}") for s, _ in sides]
    fig = make_subplots(rows=2, cols=2, shared_yaxes=True, vertical_spacing=0.16, horizontal_spacing=0.05, subplot_titles=titles)
    stages = list(dict.fromkeys(grads["stage"]))
    colour = {s: STAGE_COLOURS[i % len(STAGE_COLOURS)] for i, s in enumerate(stages)}
    shown: set[str] = set()
    for col, (side, g) in enumerate(sides, start=1):
        at = g[g["depth"] == deep]
        by_depth = g[g["epoch"] == first]
        for stage in stages:
            for row, frame, x in ((1, at, "epoch"), (2, by_depth, "depth")):
                s = frame[frame["stage"] == stage].sort_values(x)
                if s.empty:
                    continue
                fig.add_trace(go.Scatter(
                    x=list(s[x].astype(int)), y=list(s["grad_norm"]), mode="lines+markers", name=esc(stage),
                    line={"color": colour[stage]}, legendgroup=stage, showlegend=stage not in shown,
                    text=[esc(f"{v}, epoch {e}, {stage}: {n:.3g}") for v, e, n in zip(s["variant"], s["epoch"], s["grad_norm"])],
                    hoverinfo="text",
                ), row=row, col=col)
                shown.add(stage)
    fig.update_yaxes(type="log")
    fig.update_yaxes(title_text="gradient L2 norm", col=1)
    fig.update_xaxes(title_text="epoch", row=1, dtick=_epoch_dtick(grads["epoch"]))
    fig.update_xaxes(title_text="depth (layers)", row=2, tickvals=sorted(grads["depth"].astype(int).unique()))
    return layout(fig, f"Gradient flow: {family}", height=700)



def fig_pairs(pr: pd.DataFrame, a: str, b: str, title: str, dataset: str, axis: str) -> go.Figure:
    """Paired comparison at equal depth: training and test error of the two sides, error bars
    over seeds, the papers' values as stars where they exist."""
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.05, subplot_titles=["training error", "test error"])
    x = [esc(f"{r[f'variant_{a}']} / {r[f'variant_{b}']}") for _, r in pr.iterrows()]
    for col, metric in enumerate(("train_error", "test_error"), start=1):
        for side in (a, b):
            std = _std(pr[f"{metric}_std_{side}"])
            fig.add_trace(go.Bar(
                x=x, y=list(pr[f"{metric}_mean_{side}"] * 100), name=esc(side), legendgroup=side, showlegend=col == 1, offsetgroup=side,
                marker_color=SIDE_COLOURS.get(side), hoverinfo="text",
                text=[esc(f"{v}: {pct(m, s)} ({seeds_text(int(n))})") for v, m, s, n in
                      zip(pr[f"variant_{side}"], pr[f"{metric}_mean_{side}"], pr[f"{metric}_std_{side}"], pr[f"seeds_{side}"])],
                textposition="none",
                error_y={"type": "data", "array": [s if s is not None else 0 for s in std], "visible": any(s is not None for s in std)},
            ), row=1, col=col)
    legend = True
    for side in (a, b):  # the papers' values as stars over the bar of their side
        px, py, pt = [], [], []
        for label, (_, r) in zip(x, pr.iterrows()):
            p = paper_error(dataset, {**r.to_dict(), axis: side}, prefer="2016b")
            px.append(label)
            py.append(None if p is None else p.error)
            pt.append("" if p is None else esc(f"{r[f'variant_{side}']}: {p.label}"))
        if any(v is not None for v in py):
            fig.add_trace(go.Scatter(x=px, y=py, mode="markers", name="paper (test)", legendgroup="paper",
                                     showlegend=legend, offsetgroup=side,
                                     marker={"symbol": "star", "size": 12, "color": "#222"}, text=pt, hoverinfo="text"), row=1, col=2)
            legend = False
    fig.update_layout(barmode="group", scattermode="group")
    fig.update_yaxes(title_text="final error (%)", col=1)
    return layout(fig, title)


def fig_efficiency(summary: pd.DataFrame) -> go.Figure:
    """Test error against parameters and against MACs (log axes); the efficient front of each
    is a dotted line: no variant off it is both cheaper and better than one on it."""
    done = summary[summary["seeds"] > 0]
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.05, subplot_titles=["against parameters", "against MACs"])

    def group(r: pd.Series) -> str:
        parts = ["pre-activation" if r["activation"] == "pre" else "", r["connection"], "bottleneck" if r["block"] == "bottleneck" else ""]
        return " ".join(p for p in parts if p)

    groups = done.assign(_g=done.apply(group, axis=1)) if len(done) else done.assign(_g=[])
    palette = ("#d62728", "#1f77b4", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")
    for col, cost in enumerate(("params", "macs"), start=1):
        for i, (g_name, g) in enumerate(groups.groupby("_g", sort=True)):
            std = _std(g["test_error_std"])
            fig.add_trace(go.Scatter(
                x=list(g[cost]), y=list(g["test_error_mean"] * 100), mode="markers", name=esc(g_name), legendgroup=g_name,
                showlegend=col == 1, marker={"size": 10, "color": palette[i % len(palette)]},
                error_y={"type": "data", "array": [s if s is not None else 0 for s in std], "visible": any(s is not None for s in std)},
                text=[esc(f"{v}: {pct(m, s)} test error, {human(p)} params, {human(mc)} MACs")
                      for v, m, s, p, mc in zip(g["variant"], g["test_error_mean"], g["test_error_std"], g["params"], g["macs"])],
                hoverinfo="text",
            ), row=1, col=col)
        front = done[done[f"front_{cost}"]].sort_values(cost)
        fig.add_trace(go.Scatter(
            x=list(front[cost]), y=list(front["test_error_mean"] * 100), mode="lines", name="efficient front",
            legendgroup="front", showlegend=col == 1, line={"color": "#888", "dash": "dot"}, hoverinfo="skip",
        ), row=1, col=col)
    fig.update_xaxes(type="log")
    fig.update_xaxes(title_text="trainable parameters", col=1)
    fig.update_xaxes(title_text="MACs per image", col=2)
    fig.update_yaxes(title_text="test error (%)", col=1)
    return layout(fig, "Error against cost")


def fig_sensitivity(sens: pd.DataFrame, searched: list[str], space: dict[str, Any]) -> go.Figure:
    """Test error of every search trial against each searched value, one colour per variant;
    pruned trials as open markers at the last error they reported."""
    keys = [k for k in searched if k in set(sens["key"])]
    cols = min(len(keys), 3)
    rows = math.ceil(len(keys) / cols)
    fig = make_subplots(rows=rows, cols=cols, shared_yaxes=True, horizontal_spacing=0.05, vertical_spacing=0.18,
                        subplot_titles=[esc(k) for k in keys])
    variants = list(dict.fromkeys(sens["variant"]))
    palette = sample_colorscale("Turbo", [0.1 + 0.8 * i / max(1, len(variants) - 1) for i in range(len(variants))])
    colour = dict(zip(variants, palette))
    for i, key in enumerate(keys):
        r, c = i // cols + 1, i % cols + 1
        ks = sens[sens["key"] == key]
        for v in variants:
            for state, mode, symbol in (("COMPLETE", "lines+markers", "circle"), ("PRUNED", "markers", "circle-open")):
                s = ks[(ks["variant"] == v) & (ks["state"] == state)]
                if s.empty:
                    continue
                try:
                    s = s.assign(_x=s["x"].astype(float)).sort_values("_x")
                except (TypeError, ValueError):
                    s = s.assign(_x=s["x"].astype(str)).sort_values("_x")
                label = v if state == "COMPLETE" else f"{v} (pruned)"
                fig.add_trace(go.Scatter(
                    x=list(s["_x"]), y=list(s["error"] * 100), mode=mode, name=esc(label), legendgroup=v,
                    showlegend=i == 0, line={"color": colour[v]}, marker={"symbol": symbol, "size": 9, "color": colour[v]},
                    text=[esc(f"{v}, trial {n}: {key}={x}, {state.lower()} after {e} epochs, test error {err * 100:.2f}%")
                          for n, x, e, err in zip(s["number"], s["x"], s["epochs_done"], s["error"])],
                    hoverinfo="text",
                ), row=r, col=c)
        sp = space.get(key) if isinstance(space, dict) else None
        if isinstance(sp, dict) and sp.get("log"):
            fig.update_xaxes(type="log", row=r, col=c)
    fig.update_yaxes(title_text="test error (%)", col=1)
    return layout(fig, "Hyperparameter sensitivity: test error of each search trial", height=FIG_HEIGHT * rows)

