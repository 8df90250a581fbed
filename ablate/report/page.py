"""The degradation-comparison report: one self-contained HTML page per study.

Reads only the storage (docs/storage.md), so it works on a study still running or one run on
other machines. The tables come from `ablate.tables` (tested without drawing); this module draws
them with plotly and assembles the page:

    1 verdict  2 training curves (He et al. 2016, Figure 6)  3 error against depth (with the
    papers' numbers on CIFAR-10)  4 gradient flow  5 pre/post, basic/bottleneck, efficiency
    6 hyperparameter sensitivity  7 every variant  8 failures  9 provenance

Sections a study cannot fill are left out. The page makes no network request: plotly.js is
inlined once, MathJax is off, and a Content-Security-Policy allows nothing but the page's own
scripts (by hash), so a `<script>` smuggled into a study description neither shows as markup
(every storage string is escaped) nor could run if it did.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import html
import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio
from plotly.colors import sample_colorscale
from plotly.subplots import make_subplots

from ablate import failpoints
from ablate.analysis import stats
from ablate.analysis import tables as T
from ablate.storage import StudyAttrs, flat, safe_url
from ablate.analysis.tables import ReportError
from ablate.spec.variants import human

__all__ = ["ReportError", "ReportData", "collect", "render", "build_report", "write_report", "export_tables", "default_path"]

CONFIG = {"displaylogo": False, "responsive": True, "toImageButtonOptions": {"format": "svg"}}
STAGE_COLOURS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2")
SIDE_COLOURS = {"plain": "#d62728", "residual": "#1f77b4", "post": "#7f7f7f", "pre": "#2ca02c",
                "basic": "#1f77b4", "bottleneck": "#ff7f0e"}
FIG_HEIGHT = 420


def esc(value: Any) -> str:
    """Every string from a study file or the storage goes through here, in HTML and in plotly
    text alike (plotly renders a subset of HTML in labels and decodes entities)."""
    return html.escape("" if value is None else str(value), quote=True)


def _nan(x: Any) -> bool:
    return x is None or (isinstance(x, float) and math.isnan(x)) or x is pd.NA


# --------------------------------------------------------------------------- the data


@dataclass
class ReportData:
    """Everything the page shows, as tables; `collect` reads it from a study."""

    name: str
    attrs: StudyAttrs
    storage: str  # without its password
    trials: pd.DataFrame
    epochs: pd.DataFrame
    summary: pd.DataFrame
    findings: list[T.Finding]
    searched: list[str]
    points: pd.DataFrame = field(default_factory=pd.DataFrame)  # T.points_table: training curves at iteration resolution

    @property
    def dataset(self) -> str:
        return str(self.attrs.dataset or "")


def collect(study, storage: str = "") -> ReportData:
    trials = T.trials_table(study)
    epochs = T.epochs_table(study)
    attrs = StudyAttrs.read(study.user_attrs)
    searched = T.searched_keys(attrs, trials)
    summary = T.variant_summary(trials, attrs.variants, searched)
    dataset = str(attrs.dataset or "")
    return ReportData(study.study_name, attrs, safe_url(storage) if storage else "",
                      trials, epochs, summary, T.verdicts(summary, dataset, T.samples(trials, T.recipes_of(study))), searched,
                      points=T.points_table(study))


# --------------------------------------------------------------------------- figures


def _depth_colours(depths) -> dict[int, str]:
    depths = sorted(set(int(d) for d in depths))
    if len(depths) == 1:
        return {depths[0]: "#1f77b4"}
    # Plasma without its pale yellow end, light (shallow) to dark (deep) reversed: deep is dark.
    cols = sample_colorscale("Plasma", [0.85 * i / (len(depths) - 1) for i in range(len(depths))])
    return dict(zip(depths, cols))


def _side_label(connection: str, shortcut: str) -> str:
    return "plain" if connection == "plain" else f"residual (option {shortcut})" if shortcut not in ("none", None) else "residual"


def _sides(frame: pd.DataFrame) -> list[tuple[str, str]]:
    sides = frame[["connection", "shortcut"]].drop_duplicates().itertuples(index=False, name=None)
    return sorted(sides, key=lambda s: (s[0] != "plain", str(s[1])))


def _layout(fig: go.Figure, title: str, height: int = FIG_HEIGHT, **kw: Any) -> go.Figure:
    fig.update_layout(
        title={"text": esc(title), "x": 0.01, "xanchor": "left", "font": {"size": 15}},
        template="plotly_white", height=height, margin={"l": 60, "r": 20, "t": 70, "b": 50},
        legend={"orientation": "v", "x": 1.01, "y": 1}, hovermode="closest", **kw,
    )
    return fig


def _std(series: pd.Series) -> list[float | None]:
    return [None if _nan(v) else float(v) * 100 for v in series]


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
    return _layout(fig, f"Training curves: {family} (dashed: training error, solid: test error)")


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
    return _layout(fig, f"Training curves: {family} (dashed: training error, solid: test error)")


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
            text = [f"{esc(v)}: {label} error {T.pct(m, s)} ({T._seeds(int(n))})"
                    for v, m, s, n in zip(g["variant"], g[f"{metric}_mean"], g[f"{metric}_std"], g["seeds"])]
            fig.add_trace(go.Scatter(
                x=list(g["depth"].astype(int)), y=list(g[f"{metric}_mean"] * 100), mode="lines+markers",
                name=esc(f"{_side_label(conn, sc)}, {label}"), line={"color": colour, "dash": dash},
                marker={"symbol": symbol, "size": 8}, text=text, hoverinfo="text",
                error_y={"type": "data", "array": [s if s is not None else 0 for s in std], "visible": any(s is not None for s in std)},
            ))
    paper = []
    for _, row in fam.iterrows():
        p = T.paper_error(dataset, row)
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
    return _layout(fig, f"Error against depth: {family}")


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
    return _layout(fig, f"Gradient flow: {family}", height=700)


def _stem_ratio_note(grads: pd.DataFrame) -> str:
    """One sentence of numbers under a gradient-flow figure: the stem's gradient norm as a multiple
    of the head's in the first epoch, per depth, plain against residual."""
    r = T.gradient_ratios(grads)
    r = r[r["stage"] == "stem"].sort_values(["connection", "depth"])
    if r.empty:
        return ""
    parts = []
    for conn, g in r.groupby("connection", sort=True):
        values = ", ".join(f"{int(d)} layers {v:.2g}x" for d, v in zip(g["depth"], g["ratio"]))
        parts.append(f"{conn}: {values}")
    epoch = int(r["epoch"].iloc[0])
    return f'<p class="note">{esc(f"The stem gradient norm as a multiple of the head gradient norm in epoch {epoch}: " + "; ".join(parts) + ".")}</p>'


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
                text=[esc(f"{v}: {T.pct(m, s)} ({T._seeds(int(n))})") for v, m, s, n in
                      zip(pr[f"variant_{side}"], pr[f"{metric}_mean_{side}"], pr[f"{metric}_std_{side}"], pr[f"seeds_{side}"])],
                textposition="none",
                error_y={"type": "data", "array": [s if s is not None else 0 for s in std], "visible": any(s is not None for s in std)},
            ), row=1, col=col)
    legend = True
    for side in (a, b):  # the papers' values as stars over the bar of their side
        px, py, pt = [], [], []
        for label, (_, r) in zip(x, pr.iterrows()):
            p = T.paper_error(dataset, {**r.to_dict(), axis: side}, prefer="2016b")
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
    return _layout(fig, title)


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
                text=[esc(f"{v}: {T.pct(m, s)} test error, {human(p)} params, {human(mc)} MACs")
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
    return _layout(fig, "Error against cost")


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
    return _layout(fig, "Hyperparameter sensitivity: test error of each search trial", height=FIG_HEIGHT * rows)


# --------------------------------------------------------------------------- HTML

CSS = """
body{font:15px/1.5 system-ui,-apple-system,"Segoe UI",Roboto,sans-serif;color:#222;margin:0;background:#fafafa}
main{max-width:1180px;margin:0 auto;padding:12px 24px 48px;background:#fff}
h1{font-size:24px;margin:12px 0 4px}h2{font-size:19px;margin:32px 0 8px;border-bottom:1px solid #ddd;padding-bottom:4px}
h3{font-size:16px;margin:20px 0 6px}p.sub{color:#555;margin:0 0 12px}
nav{font-size:13px;color:#555}nav a{margin-right:12px;color:#1f5fa8}
table{border-collapse:collapse;font-size:12.5px;margin:8px 0;display:block;overflow-x:auto}
th,td{padding:3px 6px;border-bottom:1px solid #eee;text-align:left;white-space:nowrap}th{background:#f3f3f3;white-space:normal;vertical-align:bottom}
td.num{text-align:right;font-variant-numeric:tabular-nums}td.wrap{white-space:normal;min-width:260px}
ul.findings{list-style:none;padding:0}ul.findings li{margin:10px 0;padding:8px 12px;border-left:4px solid #bbb;background:#f8f8f8}
.ans{display:inline-block;font-weight:600;padding:0 6px;border-radius:3px;margin-right:6px;font-size:13px}
.ans-yes{background:#d9f2dd;color:#17642a}.ans-no{background:#fbe0e0;color:#8a1c1c}.ans-open{background:#eee;color:#444}
li.yes{border-left-color:#3a9b50}li.no{border-left-color:#c0392b}
pre{background:#f5f5f5;padding:8px;overflow-x:auto;font-size:12px;white-space:pre-wrap}
.figure{margin:8px 0 20px}.note{color:#555;font-size:13px}
"""


def _figure_html(fig: go.Figure, div_id: str, scripts: list[str]) -> str:
    """A figure as a div and its own inline script (collected for the page's CSP hashes)."""
    spec = pio.to_json(fig, validate=True)  # escapes <, > and / inside strings: no "</script>" in it
    js = f"(function(){{var f={spec};Plotly.newPlot({json.dumps(div_id)},f.data,f.layout,{json.dumps(CONFIG)});}})();"
    scripts.append(js)
    height = int(fig.layout.height or FIG_HEIGHT)
    return f'<div class="figure"><div id="{esc(div_id)}" class="plotly-graph-div" style="width:100%;height:{height}px"></div><script>{js}</script></div>'


def _table(frame: pd.DataFrame, numeric: set[str] = frozenset(), wrap: set[str] = frozenset()) -> str:
    head = "".join(f"<th>{esc(c)}</th>" for c in frame.columns)
    body = []
    for _, row in frame.iterrows():
        cells = []
        for c in frame.columns:
            v = row[c]
            cls = ' class="num"' if c in numeric else ' class="wrap"' if c in wrap else ""
            cells.append(f"<td{cls}>{esc('-' if _nan(v) else v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


_YES = {"yes"}
_NO = {"no", "no (it hurts)", "no (it falls)"}


def _verdict_html(data: ReportData) -> str:
    items = []
    for f in data.findings:
        kind = "yes" if f.answer in _YES else "no" if f.answer in _NO else "open"
        items.append(
            f'<li class="{kind}"><span class="ans ans-{kind}">{esc(f.answer)}</span><b>{esc(f.question)}</b> '
            f'<span class="note">({esc(f.family)})</span><br>{esc(f.text)}</li>'
        )
    if not items:
        done = int((data.summary["seeds"] > 0).sum()) if len(data.summary) else 0
        return ("<p>No comparison to draw: the verdict compares plain nets across depths, plain with residual nets, "
                "pre- with post-activation and basic with bottleneck blocks, and this study has no such pair with "
                f"finished final runs ({done} of {len(data.summary)} variants have them).</p>")
    rows = []
    for f in data.findings:
        for c in f.comparisons:
            ci = "n/a" if not c.testable else f"{c.ci_low * 100:+.1f} to {c.ci_high * 100:+.1f}"
            p = "n/a" if not c.testable else f"{c.p_value:.3g}"
            padj = "n/a" if not c.testable else f"{c.p_adjusted:.3g}"
            real = "not enough seeds" if not c.testable else "yes" if c.real else "no"
            rows.append([f.topic, f"{c.b} − {c.a}", T.METRIC_LABELS.get(c.metric, c.metric), f"{c.difference * 100:+.1f}", ci,
                         c.method, p, padj, real])
    cols = ["finding", "comparison (b − a)", "metric", "difference (points)", "95% CI (points)", "test", "p",
            "Holm-corrected p", "real"]
    tests = _table(pd.DataFrame(rows, columns=cols), numeric={"difference (points)", "p", "Holm-corrected p"}) if rows else ""
    rule = (f"How a difference is judged: over the final runs' seeds, a paired t-test by seed where both variants ran the same "
            f"seeds with the same data order and augmentation, Welch's t-test otherwise (scipy.stats). Each comparison shows the "
            f"difference of means (b − a) and its 95% confidence interval. The p-values of all comparisons on this page are "
            f"corrected together with Holm's method; a difference is called real only when the corrected p-value is below "
            f"{stats.ALPHA:g}, so the chance that any of them is a false alarm stays at or below {stats.ALPHA:.0%}. \"No clear "
            f"difference\" is not evidence of no difference: it says, from the observed spread, about how many seeds a side "
            f"would detect a difference of the observed size at {stats.POWER:.0%} power. With one seed a side no test is possible. "
            f"Training error is the {T.TRAIN_ERROR_MEANING}, as He et al. plot it.")
    return f'<ul class="findings">{"".join(items)}</ul>{tests}<p class="note">{esc(rule)}</p>'


def _progress(data: ReportData) -> str:
    t = data.trials
    units = data.attrs.units
    # A unit is finished as the driver counts it: COMPLETE, PRUNED, or FAIL with a reason (not interrupted).
    ended = t["state"].isin(["COMPLETE", "PRUNED"]) | (t["state"].eq("FAIL") & ~t["interrupted"].astype(bool))
    finished = int(t.loc[ended, "unit"].nunique()) if len(t) else 0
    running = int(t["state"].isin(["RUNNING", "WAITING"]).sum()) if len(t) else 0
    parts = [f"{len(data.summary)} variants", f"{len(t)} trials"]
    if isinstance(units, int) and units > 0:
        parts.append(f"{finished} of {units} units finished")
    if running:
        parts.append(f"{running} running: this study is still in progress, and the report shows what the storage holds now")
    return "; ".join(parts)


def _variants_table(data: ReportData) -> str:
    s = data.summary
    # Axes every variant shares are said once under the table instead of repeated in every row.
    shared = [a for a in T.AXES if a != "depth" and len(s) > 1 and s[a].astype(str).nunique() == 1]
    # Blocks per stage follow from the depth unless a variant gives its own (its name then ends in -b..).
    custom_blocks = s["variant"].astype(str).str.contains(r"-b\d", regex=True).any()
    hidden = set(shared) | (set() if custom_blocks else {"blocks"})
    rows = []
    for _, r in s.iterrows():
        counts = f"{r['complete']} / {r['failed']} / {r['pruned']}"
        if r["interrupted"]:
            counts += f" (+{r['interrupted']} interrupted)"
        if r.get("did_not_learn"):
            counts += f" ({r['did_not_learn']} did not learn)"
        if r["running"]:
            counts += f" ({r['running']} running)"
        front = " ".join(x for x, k in (("params", "front_params"), ("MACs", "front_macs")) if r[k])
        rows.append({
            "variant": r["variant"], **{a: r[a] for a in T.AXES if a not in hidden},
            "params": human(r["params"]), "MACs": human(r["macs"]),
            **({"best hyperparameters": r["best_hyperparameters"] or "-"} if data.searched else {}),
            "train error": T.pct(r["train_error_mean"], r["train_error_std"]),
            "test error": T.pct(r["test_error_mean"], r["test_error_std"]), "seeds": r["seeds"],
            "s/epoch": "-" if _nan(r["seconds_per_epoch"]) else f"{r['seconds_per_epoch']:.1f}",
            "images/s": "-" if _nan(r["images_per_second"]) else f"{r['images_per_second']:.0f}",
            "trials complete / failed / pruned": counts, "efficient front": front or "-",
        })
    numeric = {"depth", "width", "params", "MACs", "train error", "test error", "seeds", "s/epoch", "images/s"}
    note = ""
    if shared:
        note += "Every variant: " + ", ".join(f"{a} {s[a].iloc[0]}" for a in shared) + ". "
    note += ("Errors are final-epoch fractions over the final runs (mean ± standard deviation over seeds, in percentage points); "
             "search trials are not counted in them. Train error is the final epoch's " + T.TRAIN_ERROR_MEANING + ". Efficient front: no other variant is both cheaper (in parameters or MACs) "
             "and lower in test error.")
    return _table(pd.DataFrame(rows), numeric=numeric) + f'<p class="note">{esc(note)}</p>'


def _failures_html(data: ReportData) -> str:
    f = T.failures(data.trials)
    rows = []
    for _, r in f.iterrows():
        if r["did_not_learn"] is not None:
            reason = f"{r['did_not_learn']}: kept out of the means"
        elif r["interrupted"] and r["failure"] is None:
            reason = "interrupted (the run was killed mid-trial; the unit was retried as a later trial)"
        else:
            reason = r["failure"]
        rows.append({"trial": r["number"], "variant": r["variant"], "unit": r["unit"], "kind": r["kind"], "seed": r["seed"],
                     "epochs done": r["epochs_done"], "diverged at epoch": r["diverged_epoch"], "reason": reason})
    return _table(pd.DataFrame(rows), numeric={"trial", "seed", "epochs done", "diverged at epoch"}, wrap={"reason"})


def _provenance_html(data: ReportData) -> str:
    a, t = data.attrs, data.trials
    versions = sorted(set(t["versions"].dropna())) if len(t) else []
    devices = sorted({str(d) for d in t["device"].dropna()}) if len(t) else []
    sources = sorted({str(d) for d in t["data"].dropna()}) if len(t) else []
    started = t["started"].dropna().min() if len(t) else None
    completed = t["completed"].dropna().max() if len(t) else None
    items = [
        ("study", data.name), ("description", a.description), ("dataset", a.dataset),
        ("study file", a.study_path), ("storage", data.storage), ("ablate version", a.ablate_version),
        ("devices", ", ".join(devices) or "-"), ("data", "; ".join(sources) or "-"), ("versions", "; ".join(versions) or "-"),
        ("first trial started", "-" if _nan(started) or started is None else str(started)[:19]),
        ("last trial finished", "-" if _nan(completed) or completed is None else str(completed)[:19]),
        ("seeds per variant", a.seeds), ("units", a.units),
        ("report generated", dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")),
    ]
    rows = "".join(f"<tr><th>{esc(k)}</th><td class=\"wrap\">{esc('-' if v is None else v)}</td></tr>" for k, v in items)
    out = f"<table>{rows}</table>"
    recipe = a.recipe
    if isinstance(recipe, dict) and recipe:
        out += "<h3>Recipe</h3>" + _table(pd.DataFrame([{k: flat(v) for k, v in recipe.items()}]))
    if a.search:
        out += f"<h3>Search</h3><pre>{esc(json.dumps(a.search, indent=2, sort_keys=True, default=str))}</pre>"
    if a.study_file:
        out += f"<h3>Study file</h3><pre>{esc(a.study_file)}</pre>"
    if a.definition:
        out += f"<details><summary>Definition (what decides the results)</summary><pre>{esc(a.definition)}</pre></details>"
    return out


def render(data: ReportData) -> str:
    """The page, from the tables. Sections a study cannot fill are left out."""
    scripts: list[str] = []
    sections: list[tuple[str, str, str]] = []  # (anchor, title, body)
    fig_n = iter(range(1, 10_000))

    def figure(fig: go.Figure | None) -> str:
        return "" if fig is None else _figure_html(fig, f"fig-{next(fig_n)}", scripts)

    s = data.summary
    sections.append(("verdict", "Verdict", _verdict_html(data)))

    cur = T.curves(data.epochs)
    by_it = T.iteration_curves(data.points, data.epochs)  # studies stored without points: per epoch
    fams = T.depth_families(s) if len(s) else []
    body = "".join(figure(fig_iteration_curves(by_it[by_it["variant"].isin(g["variant"])], label)
                          if by_it["variant"].isin(g["variant"]).any() else fig_curves(cur[cur["variant"].isin(g["variant"])], label))
                   for label, g in fams if cur["variant"].isin(g["variant"]).any())
    if body:
        sections.append(("curves", "Training curves", '<p class="sub">In the style of He et al. 2016, Figure 6: '
                         "mean over the final runs' seeds; training error over the steps between points, test error at "
                         "the end of each epoch; hover for the spread, click a legend entry to hide a depth. "
                         f"Training error is the {T.TRAIN_ERROR_MEANING} (as the papers plot it, not a re-evaluation "
                         "of the finished net).</p>" + body))

    body = "".join(figure(fig_error_vs_depth(g, label, data.dataset)) for label, g in fams
                   if (g["seeds"] > 0).sum() >= 2 and g[g["seeds"] > 0]["depth"].nunique() >= 2)
    if body:
        note = ""
        if data.dataset == "cifar10":
            note = ('<p class="note">Stars: the papers\' CIFAR-10 test errors for the same nets (He et al. 2016, Table 6, '
                    "option A; He et al. 2016b, Table 3), trained 64k iterations on all 50k images at batch 128 with lr 0.1 "
                    "divided by 10 at 32k and 48k iterations. Each star's hover text says what the number is: ResNet-110's "
                    "is the mean of 5 runs, 6.61 ± 0.16 (error bar), whose best was 6.43; the others are single reported "
                    "numbers. Compare the trend rather than the level when this study trains shorter.</p>")
        sections.append(("depth", "Error against depth", body + note))

    grads = T.gradient_flow(data.epochs)
    body = ""
    if len(grads):
        for label, g in T.degradation_families(s):
            fam_grads = grads[grads["variant"].isin(g["variant"])]
            fig = fig_gradient_flow(fam_grads, label)
            if fig is not None:
                body += figure(fig) + _stem_ratio_note(fam_grads)
    if body:
        sections.append(("gradients", "Gradient flow", '<p class="sub">Mean L2 norm of each stage\'s gradient over an '
                         "epoch's steps, averaged over seeds (log scale). If vanishing gradients explained the degradation, "
                         "the early stages of deep plain nets would get far smaller gradients than the head, and shortcuts "
                         "would close the gap. He et al. 2016 (Sec. 4.1) found healthy gradient norms in their plain nets "
                         "with batch normalisation and called the degradation an optimisation difficulty instead: "
                         "these plots show which holds here.</p>" + body))

    body = ""
    done = s[s["seeds"] > 0] if len(s) else s
    for axis, a, b, title in (("activation", "post", "pre", "Pre- vs post-activation at equal depth"),
                              ("block", "basic", "bottleneck", "Basic vs bottleneck blocks at equal depth")):
        pr = T.pairs(done, axis, a, b) if len(done) else pd.DataFrame()
        if len(pr):
            body += f"<h3>{esc(title)}</h3>" + figure(fig_pairs(pr, a, b, title, data.dataset, axis))
    if len(done) >= 2 and done["params"].notna().all() and (done["params"].nunique() >= 2 or body):
        body += "<h3>Efficiency</h3>" + figure(fig_efficiency(s))
        front = ", ".join(done[done["front_params"]]["variant"])
        front_m = ", ".join(done[done["front_macs"]]["variant"])
        body += f'<p class="note">On the efficient front by parameters: {esc(front)}. By MACs: {esc(front_m)}.</p>'
    if body:
        sections.append(("pairs", "Paired comparisons and efficiency", body))

    if data.searched:
        sens = T.sensitivity(data.trials, data.searched)
        if len(sens):
            search = data.attrs.search or {}
            space = search.get("space", {}) if isinstance(search, dict) else {}
            body = figure(fig_sensitivity(sens, data.searched, space))
            body += ('<p class="note">Search trials all use seed 0, so variants are compared on the same initialisation. '
                     "Each variant's final runs use its best searched values (table below), so the comparisons above are "
                     "at each variant's own best hyperparameters: a plain net does not look worse merely because it was "
                     "given a learning rate that suits residual nets.</p>")
            sections.append(("sensitivity", "Hyperparameter sensitivity", body))

    if len(s):
        sections.append(("variants", "Every variant", _variants_table(data)))
    if len(data.trials) and ((data.trials["state"] == "FAIL") | data.trials["did_not_learn"].notna()).any():
        sections.append(("failures", "Failures", _failures_html(data)))
    sections.append(("provenance", "Provenance", _provenance_html(data)))

    # Assemble; each inline script is allowed by its hash and nothing else is (no network at all).
    main = "".join(f'<section id="{a}"><h2>{esc(t)}</h2>{b}</section>' for a, t, b in sections)
    from plotly.offline import get_plotlyjs

    plotly_js = get_plotlyjs()
    all_scripts = [plotly_js, *scripts]
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()}'" for js in all_scripts)
    csp = (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src data: blob:; "
           "font-src data:; connect-src 'none'; base-uri 'none'; form-action 'none'")
    nav = " ".join(f'<a href="#{a}">{esc(t)}</a>' for a, t, _ in sections)
    desc = data.attrs.description or ""
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(data.name)}: ablate report</title><style>{CSS}</style>"
        f"<script>{plotly_js}</script></head><body><main>"
        f"<h1>{esc(data.name)}</h1><p class=\"sub\">{esc(desc)}</p>"
        f"<p class=\"sub\">{esc(data.dataset)}; {esc(_progress(data))}</p><nav>{nav}</nav>{main}"
        "</main></body></html>\n"
    )


def build_report(study_name: str, storage: str) -> str:
    """The report page of a study, as HTML text."""
    return render(collect(T.open_study(study_name, storage), storage))


_FILE_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def default_path(study_name: str) -> Path:
    """`reports/<study>.html` relative to the working directory (a name from the storage is made
    safe for a file name first)."""
    return Path("reports") / f"{_FILE_SAFE.sub('_', study_name).lstrip('.') or 'study'}.html"


def write_report(study_name: str, storage: str, out: str | Path | None = None) -> Path:
    """Write the report of `study_name` in `storage` to `out` (default `reports/<study>.html`),
    creating the folder; returns the path written. Raises ReportError for a missing study."""
    page = build_report(study_name, storage)
    path = Path(out) if out is not None else default_path(study_name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    try:
        tmp.write_text(page, encoding="utf-8")
        failpoints.reach("report-write")
        tmp.replace(path)  # a browser open on the old report never sees half a file
    except OSError:
        tmp.unlink(missing_ok=True)  # a full disk leaves the old report, and no half of a new one
        raise
    return path


# --------------------------------------------------------------------------- export

EXPORT_FORMATS = ("csv", "parquet")


def export_tables(study_name: str, storage: str, out_dir: str | Path, fmt: str = "csv") -> list[Path]:
    """Write the per-trial, per-epoch and per-variant tables, the findings and the per-point
    training curves of a study as `<study>-trials.<fmt>`, `-epochs`, `-variants`, `-findings`,
    `-points` in `out_dir`; returns the paths
    (parquet through pyarrow, a dependency)."""
    if fmt not in EXPORT_FORMATS:
        raise ReportError(f"format: {fmt!r} is not valid; use one of {', '.join(EXPORT_FORMATS)}")
    study = T.open_study(study_name, storage)
    data = collect(study, storage)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    stem = default_path(study_name).stem
    frames = {"trials": data.trials, "epochs": data.epochs, "variants": data.summary, "findings": T.findings_table(data.findings),
              "points": data.points}
    paths = []
    for name, frame in frames.items():
        path = out / f"{stem}-{name}.{fmt}"
        frame = frame.copy()
        for c in frame.columns:  # one plain type per column, for parquet
            if frame[c].dtype == object:
                frame[c] = frame[c].map(lambda v: v if v is None or isinstance(v, (str, bool, int, float)) else str(v))
        if fmt == "csv":
            frame.to_csv(path, index=False)
        else:
            frame.to_parquet(path, index=False)
        paths.append(path)
    return paths
