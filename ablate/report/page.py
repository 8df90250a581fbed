"""The study's report: one self-contained HTML page per study.

Reads only the storage (docs/storage.md), so it works on a study still running or one run on
other machines. Every table comes finished from `ablate.analysis` (`StudyResults`, tested
without drawing); `ablate.report.figures` draws them with plotly and this module assembles the page:

    1 verdict  2 architecture search and 3 design spaces (studies with [[space]])
    4 why (the final runs' diagnostics, and the gradient flow during training)
    5 training curves (He et al. 2016, Figure 6)  6 error against depth (with the
    papers' numbers on CIFAR-10)  7 pre/post, basic/bottleneck, efficiency
    8 hyperparameter sensitivity  9 every variant  10 failures  11 provenance

Sections a study cannot fill are left out. The page makes no network request: plotly.js is
inlined once, MathJax is off, and a Content-Security-Policy allows nothing but the page's own
scripts (by hash), so a `<script>` smuggled into a study description neither shows as markup
(every storage string is escaped) nor could run if it did.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
from pathlib import Path
from typing import Callable

import pandas as pd
import plotly.graph_objects as go
import plotly.io as pio

from ablate import failpoints
from ablate.analysis import stats
from ablate.analysis.format import human, pct
from ablate.analysis.results import Family, StudyResults, load_results
from ablate.analysis.verdicts import TRAIN_ERROR_MEANING, comparison_cells
from ablate.report.search import search_section
from ablate.report.figures import (CONFIG, FIG_HEIGHT, esc, fig_curves, fig_efficiency, fig_error_vs_depth,
                                   fig_gradient_flow, fig_iteration_curves, fig_pairs, fig_sensitivity, is_missing)
from ablate.report.spaces import spaces_section
from ablate.report.why import why_section
from ablate.spec.paths import PathError, user_path
from ablate.spec.variants import AXES
from ablate.storage import flat

__all__ = ["render", "build_report", "write_report", "default_path"]

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
            cells.append(f"<td{cls}>{esc('-' if is_missing(v) else v)}</td>")
        body.append("<tr>" + "".join(cells) + "</tr>")
    return f"<table><thead><tr>{head}</tr></thead><tbody>{''.join(body)}</tbody></table>"


def _verdict_html(data: StudyResults) -> str:
    items = []
    for f in data.findings:
        tone = f.answer.tone
        items.append(
            f'<li class="{tone}"><span class="ans ans-{tone}">{esc(f.answer)}</span><b>{esc(f.question)}</b> '
            f'<span class="note">({esc(f.family)})</span><br>{esc(f.text)}</li>'
        )
    if not items:
        done, total = len(data.done), len(data.summary)
        return ("<p>No comparison to draw: the verdict compares plain nets across depths, plain with residual nets, "
                "pre- with post-activation and basic with bottleneck blocks, and this study has no such pair with "
                f"finished final runs ({done} of {total} variants have them).</p>")
    rows = [comparison_cells(f.topic, c) for f in data.findings for c in f.comparisons]
    tests = _table(pd.DataFrame(rows), numeric={"difference (points)", "p", "Holm-corrected p"}) if rows else ""
    rule = (f"How a difference is judged: over the final runs' seeds, a paired t-test by seed where both variants ran the same "
            f"seeds with the same data order and augmentation, Welch's t-test otherwise (scipy.stats). Each comparison shows the "
            f"difference of means (b − a) and its 95% confidence interval. The p-values of all comparisons on this page are "
            f"corrected together with Holm's method; a difference is called real only when the corrected p-value is below "
            f"{stats.ALPHA:g}, so the chance that any of them is a false alarm stays at or below {stats.ALPHA:.0%}. \"No clear "
            f"difference\" is not evidence of no difference: it says, from the observed spread, about how many seeds a side "
            f"would detect a difference of the observed size at {stats.POWER:.0%} power. With one seed a side no test is possible. "
            f"Training error is the {TRAIN_ERROR_MEANING}, as He et al. plot it.")
    return f'<ul class="findings">{"".join(items)}</ul>{tests}<p class="note">{esc(rule)}</p>'


def _progress(data: StudyResults) -> str:
    p = data.progress()
    parts = [f"{p['variants']} variants", f"{p['trials']} trials"]
    if p["units"]:
        parts.append(f"{p['finished']} of {p['units']} units finished")
    elif p["finished"]:
        parts.append(f"{p['finished']} units finished")
    if p["running"]:
        parts.append(f"{p['running']} running: this study is still in progress, and the report shows what the storage holds now")
    return "; ".join(parts)


def _variants_table(data: StudyResults) -> str:
    s = data.summary
    # Axes every variant shares are said once under the table instead of repeated in every row.
    shared = [a for a in AXES if a != "depth" and len(s) > 1 and s[a].astype(str).nunique() == 1]
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
            "variant": r["variant"], **{a: r[a] for a in AXES if a not in hidden},
            "params": human(r["params"]), "MACs": human(r["macs"]),
            **({"best hyperparameters": r["best_hyperparameters"] or "-"} if data.searched else {}),
            "train error": pct(r["train_error_mean"], r["train_error_std"]),
            "test error": pct(r["test_error_mean"], r["test_error_std"]), "seeds": r["seeds"],
            "s/epoch": "-" if is_missing(r["seconds_per_epoch"]) else f"{r['seconds_per_epoch']:.1f}",
            "images/s": "-" if is_missing(r["images_per_second"]) else f"{r['images_per_second']:.0f}",
            "trials complete / failed / pruned": counts, "efficient front": front or "-",
        })
    numeric = {"depth", "width", "params", "MACs", "train error", "test error", "seeds", "s/epoch", "images/s"}
    note = ""
    if shared:
        note += "Every variant: " + ", ".join(f"{a} {s[a].iloc[0]}" for a in shared) + ". "
    note += ("Errors are final-epoch fractions over the final runs (mean ± standard deviation over seeds, in percentage points); "
             "search trials are not counted in them. Train error is the final epoch's " + TRAIN_ERROR_MEANING + ". Efficient front: no other variant is both cheaper (in parameters or MACs) "
             "and lower in test error.")
    return _table(pd.DataFrame(rows), numeric=numeric) + f'<p class="note">{esc(note)}</p>'


def _failures_html(data: StudyResults) -> str:
    f = data.failures
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


def _provenance_html(data: StudyResults) -> str:
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
        ("first trial started", "-" if is_missing(started) or started is None else str(started)[:19]),
        ("last trial finished", "-" if is_missing(completed) or completed is None else str(completed)[:19]),
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


_Figure = Callable[[go.Figure | None], str]


def _curves_section(data: StudyResults, figure: _Figure) -> str:
    body = "".join(figure(fig_iteration_curves(f.iteration_curves, f.label) if len(f.iteration_curves) else fig_curves(f.curves, f.label))
                   for f in data.families if len(f.curves))
    if not body:
        return ""
    return ('<p class="sub">In the style of He et al. 2016, Figure 6: '
            "mean over the final runs' seeds; training error over the steps between points, test error at "
            "the end of each epoch; hover for the spread, click a legend entry to hide a depth. "
            f"Training error is the {TRAIN_ERROR_MEANING} (as the papers plot it, not a re-evaluation "
            "of the finished net).</p>" + body)


def _depth_section(data: StudyResults, figure: _Figure) -> str:
    body = "".join(figure(fig_error_vs_depth(f.summary, f.label, data.dataset)) for f in data.families if f.by_depth)
    if body and data.dataset == "cifar10":
        body += ('<p class="note">Stars: the papers\' CIFAR-10 test errors for the same nets (He et al. 2016, Table 6, '
                 "option A; He et al. 2016b, Table 3), trained 64k iterations on all 50k images at batch 128 with lr 0.1 "
                 "divided by 10 at 32k and 48k iterations. Each star's hover text says what the number is: ResNet-110's "
                 "is the mean of 5 runs, 6.61 ± 0.16 (error bar), whose best was 6.43; the others are single reported "
                 "numbers. Compare the trend rather than the level when this study trains shorter.</p>")
    return body


def _stem_ratio_note(f: Family) -> str:
    """One sentence of numbers under a gradient-flow figure: the stem's gradient norm as a multiple
    of the head's in the first epoch, per depth, plain against residual."""
    r = f.stem_ratios
    if r.empty:
        return ""
    parts = []
    for conn, g in r.groupby("connection", sort=True):
        values = ", ".join(f"{int(d)} layers {v:.2g}x" for d, v in zip(g["depth"], g["ratio"]))
        parts.append(f"{conn}: {values}")
    epoch = int(r["epoch"].iloc[0])
    return f'<p class="note">{esc(f"The stem gradient norm as a multiple of the head gradient norm in epoch {epoch}: " + "; ".join(parts) + ".")}</p>'


def _gradients_section(data: StudyResults, figure: _Figure) -> str:
    body = ""
    for f in data.families:
        fig = fig_gradient_flow(f.gradients, f.label) if len(f.gradients) else None
        if fig is not None:
            body += figure(fig) + _stem_ratio_note(f)
    if not body:
        return ""
    return ('<p class="sub">Mean L2 norm of each stage\'s gradient over an '
            "epoch's steps, averaged over seeds (log scale). If vanishing gradients explained the degradation, "
            "the early stages of deep plain nets would get far smaller gradients than the head, and shortcuts "
            "would close the gap. He et al. 2016 (Sec. 4.1) found healthy gradient norms in their plain nets "
            "with batch normalisation and called the degradation an optimisation difficulty instead: "
            "these plots show which holds here.</p>" + body)


def _pairs_section(data: StudyResults, figure: _Figure) -> str:
    body = "".join(f"<h3>{esc(p.title)}</h3>" + figure(fig_pairs(p.frame, p.a, p.b, p.title, data.dataset, p.axis))
                   for p in data.pairs)
    done = data.done
    if len(done) >= 2 and done["params"].notna().all() and (done["params"].nunique() >= 2 or body):
        body += "<h3>Efficiency</h3>" + figure(fig_efficiency(data.summary))
        front = ", ".join(done[done["front_params"]]["variant"])
        front_m = ", ".join(done[done["front_macs"]]["variant"])
        body += f'<p class="note">On the efficient front by parameters: {esc(front)}. By MACs: {esc(front_m)}.</p>'
    return body


def _sensitivity_section(data: StudyResults, figure: _Figure) -> str:
    if not data.searched or not len(data.sensitivity):
        return ""
    search = data.attrs.search or {}
    space = search.get("space", {}) if isinstance(search, dict) else {}
    return figure(fig_sensitivity(data.sensitivity, data.searched, space)) + (
        '<p class="note">Search trials all use seed 0, so variants are compared on the same initialisation. '
        "Each variant's final runs use its best searched values (table below), so the comparisons above are "
        "at each variant's own best hyperparameters: a plain net does not look worse merely because it was "
        "given a learning rate that suits residual nets.</p>")


def _sections(data: StudyResults, figure: _Figure) -> list[tuple[str, str, str]]:
    """(anchor, title, body) of every section the study can fill, in order."""
    t = data.trials
    failed = len(t) and ((t["state"] == "FAIL") | t["did_not_learn"].notna()).any()
    candidates = [
        ("verdict", "Verdict", _verdict_html(data)),
        ("search", "Architecture search", search_section(data.search, figure, _table)),
        ("spaces", "Design spaces", spaces_section(data.spaces, figure)),
        # The final runs' diagnostics, with the training-time gradient flow folded in (ablate.report.why)
        ("why", "Why", why_section(data.why, figure, _table, _gradients_section(data, figure))),
        ("curves", "Training curves", _curves_section(data, figure)),
        ("depth", "Error against depth", _depth_section(data, figure)),
        ("pairs", "Paired comparisons and efficiency", _pairs_section(data, figure)),
        ("sensitivity", "Hyperparameter sensitivity", _sensitivity_section(data, figure)),
        ("variants", "Every variant", _variants_table(data) if len(data.summary) else ""),
        ("failures", "Failures", _failures_html(data) if failed else ""),
        ("provenance", "Provenance", _provenance_html(data)),
    ]
    return [(a, title, body) for a, title, body in candidates if body]


def render(data: StudyResults) -> str:
    """The page, from finished tables. Sections a study cannot fill are left out."""
    scripts: list[str] = []
    fig_n = iter(range(1, 10_000))

    def figure(fig: go.Figure | None) -> str:
        return "" if fig is None else _figure_html(fig, f"fig-{next(fig_n)}", scripts)

    sections = _sections(data, figure)
    # Assemble; each inline script is allowed by its hash and nothing else is (no network at all).
    main = "".join(f'<section id="{a}"><h2>{esc(t)}</h2>{b}</section>' for a, t, b in sections)
    from plotly.offline import get_plotlyjs

    plotly_js = get_plotlyjs()
    hashes = " ".join(f"'sha256-{base64.b64encode(hashlib.sha256(js.encode()).digest()).decode()}'" for js in [plotly_js, *scripts])
    csp = (f"default-src 'none'; script-src {hashes}; style-src 'unsafe-inline'; img-src data: blob:; "
           "font-src data:; connect-src 'none'; base-uri 'none'; form-action 'none'")
    nav = " ".join(f'<a href="#{a}">{esc(t)}</a>' for a, t, _ in sections)
    notes = "".join(f'<p class="note">note: {esc(n)}</p>' for n in data.notes)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f'<meta http-equiv="Content-Security-Policy" content="{csp}">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(data.name)}: ablate report</title><style>{CSS}</style>"
        f"<script>{plotly_js}</script></head><body><main>"
        f"<h1>{esc(data.name)}</h1><p class=\"sub\">{esc(data.attrs.description or '')}</p>"
        f"<p class=\"sub\">{esc(data.dataset)}; {esc(_progress(data))}</p>{notes}<nav>{nav}</nav>{main}"
        "</main></body></html>\n"
    )


def build_report(study_name: str, storage: str) -> str:
    """The report page of a study, as HTML text."""
    return render(load_results(study_name, storage))


_FILE_SAFE = re.compile(r"[^A-Za-z0-9._-]")


def default_path(study_name: str) -> Path:
    """`reports/<study>.html` relative to the working directory (a name from the storage is made
    safe for a file name first)."""
    return Path("reports") / f"{_FILE_SAFE.sub('_', study_name).lstrip('.') or 'study'}.html"


def write_report(study_name: str, storage: str, out: str | Path | None = None) -> Path:
    """Write the report of `study_name` in `storage` to `out` (default `reports/<study>.html`),
    creating the folder; returns the path written. Raises ReportError for a missing study."""
    return write_page(render(load_results(study_name, storage)), Path(out) if out is not None else default_path(study_name))


def write_page(page: str, path: Path) -> Path:
    """Write a page atomically (`~` expanded), creating its folder; returns the path written."""
    path = user_path(path, "--out")
    if path.is_dir():
        raise PathError(f"--out: {path} is a folder; give a file name, e.g. {path / 'report.html'}")
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


