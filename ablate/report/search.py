"""The report's "Architecture search" section: draws `ablate.analysis.search.SearchResults`
(the samples, the front, the hypervolume, the axes' importances, the finalists), computes nothing."""

from __future__ import annotations

from typing import Callable

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from ablate.analysis.format import human, pct, seeds_text
from ablate.analysis.search import SearchResults
from ablate.report.figures import esc, is_missing, layout

__all__ = ["fig_search_cost", "fig_hypervolume", "fig_axes", "fig_importances", "search_section"]

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#17becf")
COSTS = (("macs", "MACs per image", "max_macs"), ("params", "trainable parameters", "max_params"))


def _trained(s: pd.DataFrame) -> pd.DataFrame:
    return s[s["feasible"].astype(bool) & s["state"].isin(["COMPLETE", "PRUNED"]) & s["val_error"].notna()]


def _hover(g: pd.DataFrame) -> list[str]:
    return [esc(f"{n} (trial {k}): {pct(e)} validation error, {human(m)} MACs, {human(p)} params"
                + (f" (pruned after epoch {ep})" if st == "PRUNED" else ""))
            for n, k, e, m, p, st, ep in zip(g["name"], g["number"], g["val_error"], g["macs"], g["params"], g["state"], g["epochs"])]


def fig_search_cost(r: SearchResults) -> go.Figure:
    """Validation error of every trained sample against MACs and against parameters (log axes),
    coloured by space; the Pareto front (two objectives) or the best sample (one); the budget as
    a dashed vertical line; samples over the budget (never trained) as grey ticks on the axis."""
    s = r.samples
    fig = make_subplots(rows=1, cols=2, shared_yaxes=True, horizontal_spacing=0.05,
                        subplot_titles=["against MACs", "against parameters"])
    trained = _trained(s)
    over = s[s["failure_kind"] == "infeasible"]
    top = float(trained["val_error"].max() * 100) if len(trained) else 100.0
    for col, (cost, title, budget_key) in enumerate(COSTS, start=1):
        for i, (space, g) in enumerate(trained.groupby("space", sort=True)):
            fig.add_trace(go.Scatter(
                x=list(g[cost]), y=list(g["val_error"] * 100), mode="markers", name=esc(space), legendgroup=f"s-{space}",
                showlegend=col == 1, marker={"size": 9, "color": PALETTE[i % len(PALETTE)],
                                             "symbol": ["circle-open" if st == "PRUNED" else "circle" for st in g["state"]]},
                text=_hover(g), hoverinfo="text"), row=1, col=col)
        chosen = trained[trained["pareto"].astype(bool)] if len(r.objectives) > 1 else trained[trained["best"].astype(bool)]
        if len(chosen):
            chosen = chosen.sort_values(cost)
            label = "Pareto front" if len(r.objectives) > 1 else "best"
            fig.add_trace(go.Scatter(
                x=list(chosen[cost]), y=list(chosen["val_error"] * 100),
                mode="lines+markers" if len(r.objectives) > 1 and cost == r.objectives[1] else "markers",
                line={"color": "#222", "dash": "dot", "shape": "hv"}, marker={"symbol": "star", "size": 13, "color": "#222"},
                name=label, legendgroup="chosen", showlegend=col == 1, text=_hover(chosen), hoverinfo="text"), row=1, col=col)
        if len(over) and over[cost].notna().any():
            fig.add_trace(go.Scatter(
                x=list(over[cost]), y=[0] * len(over), mode="markers", marker={"symbol": "line-ns-open", "size": 12, "color": "#999"},
                name="over the budget (not trained)", legendgroup="over", showlegend=col == 1,
                text=[esc(f"{n}: {f}") for n, f in zip(over["name"], over["failure"])], hoverinfo="text"), row=1, col=col)
        budget = r.budget.get(budget_key)
        if budget:
            fig.add_trace(go.Scatter(x=[budget, budget], y=[0, top * 1.05], mode="lines", line={"color": "#d62728", "dash": "dash"},
                                     name=f"budget ({budget_key} = {human(budget)})", hoverinfo="name"), row=1, col=col)
        fig.update_xaxes(title_text=title, type="log", col=col)
    fig.update_yaxes(title_text="validation error (%)", col=1, rangemode="tozero")
    return layout(fig, "Sampled architectures: validation error against cost")


def fig_hypervolume(r: SearchResults) -> go.Figure | None:
    h = r.hypervolume
    if h is None or h.empty:
        return None
    fig = go.Figure(go.Scatter(x=list(h["samples"]), y=list(h["hypervolume"]), mode="lines+markers", line={"shape": "hv"},
                               text=[f"after trial {n}" for n in h["number"]], hoverinfo="x+y+text"))
    fig.update_xaxes(title_text="architectures trained")
    fig.update_yaxes(title_text="hypervolume", rangemode="tozero")
    return layout(fig, "Hypervolume of the front against the number of samples", height=320)


def fig_axes(r: SearchResults) -> go.Figure | None:
    """Validation error by the value of each sampled axis: every sample trained to the end as a
    point, with its box (a pruned sample's error is from fewer epochs)."""
    trained = _trained(r.samples)
    trained = trained[trained["state"] == "COMPLETE"]
    axes = [a for a in r.axes if a in trained.columns and trained[a].astype(str).nunique() > 1]
    if trained.empty or not axes:
        return None
    fig = make_subplots(rows=1, cols=len(axes), shared_yaxes=True, horizontal_spacing=0.04, subplot_titles=list(axes))
    for col, axis in enumerate(axes, start=1):
        values = trained[axis]
        order = sorted(values.dropna().unique(), key=lambda v: (isinstance(v, str), v))
        for v in order:
            g = trained[values == v]
            fig.add_trace(go.Box(x=[str(v)] * len(g), y=list(g["val_error"] * 100), name=esc(str(v)), boxpoints="all", jitter=0.4,
                                 pointpos=0, marker={"color": PALETTE[0], "size": 6}, line={"color": "#888"}, showlegend=False,
                                 text=_hover(g), hoverinfo="text"), row=1, col=col)
        fig.update_xaxes(type="category", categoryorder="array", categoryarray=[str(v) for v in order], col=col)
    fig.update_yaxes(title_text="validation error (%)", col=1)
    return layout(fig, "Validation error by the value of each sampled axis", height=360)


def fig_importances(r: SearchResults) -> go.Figure | None:
    imp = r.importances
    if imp is None or imp.empty:
        return None
    imp = imp.sort_values("importance")
    fig = go.Figure(go.Bar(x=list(imp["importance"]), y=[esc(a) for a in imp["axis"]], orientation="h", marker={"color": PALETTE[0]}))
    fig.update_xaxes(title_text="importance (PED-ANOVA, sums to 1)", range=[0, 1])
    return layout(fig, "Which sampled axes matter", height=120 + 40 * len(imp))


def _finalists_frame(r: SearchResults) -> pd.DataFrame:
    rows = []
    for _, f in r.finalists.iterrows():
        ci = "-" if is_missing(f["ci_low"]) else f"{pct(f['ci_low'])} to {pct(f['ci_high'])}"
        rows.append({"finalist": f["variant"], "params": human(f["params"]), "MACs": human(f["macs"]), "runs": seeds_text(int(f["seeds"])),
                     "validation error": pct(f["val_error_mean"]), "test error": pct(f["test_error_mean"], f["test_error_std"]),
                     "test error, 95% CI": ci})
    return pd.DataFrame(rows)


def search_section(r: SearchResults, figure: Callable[[go.Figure | None], str],
                   table: Callable[[pd.DataFrame], str]) -> str:
    if not r.is_search or r.samples.empty:
        return ""
    s = r.samples
    trained, over, repeats = int(s["feasible"].sum()), int((s["failure_kind"] == "infeasible").sum()), int(s["duplicate_of"].notna().sum())
    multi = len(r.objectives) > 1
    intro = (f"{trained} architectures trained, {over} sampled over the budget (never trained) and {repeats} sampled again "
             f"(given their stored result, not trained twice). Every one trained with the study's [train] recipe at seed 0 and "
             f"was selected on the validation split; the test set is only used by the final runs. "
             + ("Two objectives, validation error and " + r.objectives[1] + ": the Pareto set got final runs. "
                "A multi-objective search is not pruned: Optuna's pruners compare one value per epoch." if multi
                else "One objective, validation error: the best samples by validation error got final runs."))
    body = f'<p class="sub">{esc(intro)}</p>' + figure(fig_search_cost(r))
    if multi:
        body += figure(fig_hypervolume(r)) + ('<p class="note">Hypervolume: the area of the (error, cost) square that the front '
                                              "dominates, with the error as a fraction and the cost divided by the budget (or by the "
                                              "costliest trained sample); the reference point is (1, 1). It rises as the front improves.</p>")
    body += figure(fig_axes(r)) + figure(fig_importances(r))
    if r.importances_note:
        body += f'<p class="note">{esc("Axis importances: not shown (" + r.importances_note + ").")}</p>'
    if len(r.finalists):
        body += "<h3>Finalists</h3>" + table(_finalists_frame(r)) + (
            '<p class="note">Mean over each finalist\'s final runs (fresh seeds); the confidence interval is the t-interval of the '
            "mean test error. The verdict above tests whether the first on validation error is better on test than the others.</p>")
    return body
