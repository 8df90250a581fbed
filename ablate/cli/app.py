"""The `ablate` command line: one function per command; the work is done by the packages below.

Bad input is one line on stderr and exit status 2, never a traceback. An error that is not the
user's (a bug of ablate's) is one line too, naming the file the traceback was written to, exit 70.
"""

from __future__ import annotations

import dataclasses
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.table import Table
from rich.text import Text

from ablate import __version__
from ablate.cli.common import console, err, fail, load, show_notices, warnings_to
from ablate.runs.options import GRACE_SECONDS, parse_fuse
from ablate.spec.paths import PathError
from ablate.spec.study import Study, check_first_seed
from ablate.storage.contract import DEFAULT_STORAGE, STORAGE_RETRY_SECONDS

__all__ = ["app", "main"]

app = typer.Typer(
    name="ablate",
    help="Architecture ablation studies of ResNet-family CNNs.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,  # help texts are plain text: "[default: ...]" is shown, not parsed as markup
)

StorageOpt = Annotated[str, typer.Option("--storage", help="SQLAlchemy URL of the Optuna storage; ~ is your home folder.")]


# ---------------------------------------------------------------- variants


def variant_rows(study: Study) -> list[dict[str, object]]:
    from ablate.engine.models import measure  # torch is imported only when needed
    from ablate.spec.recipe import input_info, schedule, train_size

    rows = []
    for spec in study.variants:
        recipe = study.recipe_for(spec)
        params, macs = measure(spec, input_info(study.info, recipe))
        resolved = schedule(recipe, train_size(recipe, study.info)).describe(recipe)
        rows.append({"name": spec.name, **spec.axes(), "params": params, "macs": macs, "recipe": resolved})
    return rows


def _axis_cell(value: object) -> str:
    if value is None:  # a plain net's shortcut
        return "-"
    return "-".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


@app.command()
def variants(
    study: Annotated[Path, typer.Argument(help="Study file (TOML).", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array instead of a table.")] = False,
) -> None:
    """List the variants a study file generates, with parameters and MACs."""
    s = load(study)  # before anything heavy is imported: a bad study file is reported at once
    from ablate.analysis.format import human
    from ablate.spec.variants import AXES

    if s.is_search:
        _print_spaces(s, as_json)
        return
    rows = variant_rows(s)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    side = s.recipe.resize or s.info.size  # what the nets see (and count their MACs at)
    resized = f", resized from {s.info.size}" if side != s.info.size else ""
    table = Table(title=Text(f"{s.name}: {len(rows)} variants on {s.dataset} ({s.info.channels}x{side}x{side}{resized})"))
    for col in ("name", *AXES, "params", "MACs", "iterations", "warm-up"):
        table.add_column(col, justify="right" if col in ("depth", "width", "params", "MACs", "iterations") else "left")
    for r in rows:
        rec = r["recipe"]
        table.add_row(
            str(r["name"]), *(_axis_cell(r[a]) for a in AXES), human(r["params"]), human(r["macs"]), str(rec["iterations"]),
            f'{rec["warmup_iterations"]} ({rec["warmup"]}, lr {rec["warmup_lr"]:g})' if rec["warmup_iterations"] else "-",
        )
    console().print(table)


def _print_spaces(s: Study, as_json: bool) -> None:
    """An architecture search's spaces: each sampled axis, the fixed ones, and how many
    architectures the space holds; the budget and the final runs."""
    from ablate.analysis.format import human

    assert s.sample is not None
    rows = [{**space.describe(), "architectures": space.size()} for space in s.spaces]
    if as_json:
        sys.stdout.write(json.dumps({"spaces": rows, "sample": s.sample.describe(), "seeds": s.seeds}, indent=2) + "\n")
        return
    table = Table(title=Text(f"{s.name}: {len(rows)} design space{'s' if len(rows) > 1 else ''} on {s.dataset} "
                             f"({s.info.channels}x{s.info.size}x{s.info.size}), {s.sample.count} architectures sampled from each"))
    for col in ("space", "sampled axes", "fixed axes", "architectures"):
        table.add_column(col, justify="right" if col == "architectures" else "left")
    for r in rows:
        sampled = "; ".join(f"{k} = {_axis_range(v)}" for k, v in r["axes"].items())
        fixed = "; ".join(f"{k} = {_axis_cell(v)}" for k, v in r["fixed"].items()) or "-"
        table.add_row(Text(str(r["name"])), Text(sampled), Text(fixed),  # Text: "[8, 14]" is not rich markup
                      "more than 100000" if r["architectures"] is None else str(r["architectures"]))
    console().print(table)
    budget = [f"{k} = {human(v)}" for k, v in (("max_macs", s.sample.max_macs), ("max_params", s.sample.max_params)) if v]
    finals = "the Pareto set" if s.sample.multi else f"the best {s.sample.finalists}"
    console().print(f"Budget: {', '.join(budget) or 'none'}. Objectives: {', '.join(s.sample.objectives)}; sampler {s.sample.sampler}, "
                    f"pruner {s.sample.pruner}. Final runs: {finals}, {s.seeds} seed{'s' if s.seeds != 1 else ''} each.")


def _axis_range(value: object) -> str:
    if isinstance(value, dict):
        return f"{value['low']}..{value['high']}" + (" (log)" if value.get("log") else "")
    return "[" + ", ".join(map(str, value)) + "]" if isinstance(value, list) else str(value)


# ---------------------------------------------------------------- run


def _with_first_seed(study: Study, first_seed: int | None) -> Study:
    if first_seed is None:
        return study
    try:
        check_first_seed(first_seed)
    except ValueError as exc:
        raise fail(f"--first-seed: {exc}") from None
    return dataclasses.replace(study, first_seed=first_seed)


@app.command()
def run(
    study: Annotated[Path, typer.Argument(help="Study file (TOML).", show_default=False)],
    storage: StorageOpt = DEFAULT_STORAGE,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="ABLATE_DATA", help="Where datasets are read and downloaded [default: ~/.cache/ablate/data].", show_default=False)] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option("--checkpoint-dir", help="Per-epoch checkpoints for resuming [default: beside the SQLite file].", show_default=False)] = None,
    grace_period: Annotated[int, typer.Option("--grace-period", help="Seconds without heartbeat after which a running trial is taken for dead and retried.")] = GRACE_SECONDS,
    first_seed: Annotated[int | None, typer.Option("--first-seed", help="Seed of the first final run, overriding the study file's [seeds] start (e.g. 6 for seeds 6..10 of count = 5): disjoint seed sets without editing the file. Use another --storage for each.", show_default=False)] = None,
    retry_failed: Annotated[bool, typer.Option("--retry-failed", help="Also retry, once, the units whose failure was their own (diverged, out of memory, an error).")] = False,
    fuse: Annotated[str, typer.Option("--fuse", help="Train up to K final runs of a variant (its seeds) as one fused network: K, auto (by device and model size) or off. Results are stored as if run one by one.")] = "auto",
    workers: Annotated[int, typer.Option("--workers", help="Worker processes on this machine, sharing the study: spread over the visible GPUs (several per GPU when more workers than GPUs), or over the CPU cores.")] = 1,
    threads: Annotated[int | None, typer.Option("--threads", help="CPU threads for training [default: torch's; with --workers N on CPU: cores / N].", show_default=False)] = None,
    storage_retry: Annotated[float, typer.Option("--storage-retry", envvar="ABLATE_STORAGE_RETRY", help="Seconds to keep retrying a storage that went away (a database restart or failover, a lost connection, SQLite locked) before stopping; 0: stop at the first error.")] = STORAGE_RETRY_SECONDS,
    no_report: Annotated[bool, typer.Option("--no-report", help="Only train: no summary and no report at the end (what each of many workers runs).")] = False,
) -> None:
    """Train every variant of a study under Optuna and store every trial (resumes where it stopped).

    Any number of `ablate run` processes, on any number of machines, may run one study on one
    storage at once: each unit is trained by exactly one of them (docs/distributed.md)."""
    s = _with_first_seed(load(study), first_seed)  # before importing torch and Optuna: a bad study file is reported at once
    try:
        fuse_runs = parse_fuse(fuse)
    except ValueError as exc:
        raise fail(str(exc)) from None
    for option, value in (("--workers", workers), ("--threads", threads)):
        if value is not None and value < 1:
            raise fail(f"{option}: {value} is not valid; use 1 or more")
    if not 0 <= storage_retry <= 86_400:  # also NaN
        raise fail(f"--storage-retry: {storage_retry:g} is not valid; use seconds from 0 (stop at the first storage error) "
                   "to 86400 (a day)")
    _warn_overlap(s)
    if workers > 1:
        _run_workers(s, study, storage, workers, device, threads)
    else:
        _run_here(s, storage, device, data_dir, checkpoint_dir, grace_period, retry_failed, fuse_runs, threads, storage_retry)
    if not no_report:
        _finish(s, storage)


def _warn_overlap(s: Study) -> None:
    """Before a run of several [[space]] tables: one warning line naming the spaces whose MACs
    ranges (from each space's cheapest and priciest candidates, measured on the meta device)
    overlap too little to compare at equal complexity. The report says it again from the samples."""
    if len(s.spaces) < 2:
        return
    from ablate.analysis.spaces import overlap_warning
    from ablate.engine.models import measure
    from ablate.spec.recipe import input_info

    info = input_info(s.info, s.recipe)
    ranges = {}
    for space in s.spaces:
        macs = [measure(spec, info)[1] for spec in [*space.cheapest_candidates(), *space.priciest_candidates()]]
        if not macs:
            return  # too many candidates to measure before the run; the report checks the samples
        ranges[space.name] = (float(min(macs)), float(max(macs)))
    line = overlap_warning(ranges)
    if line is not None:
        err.print(Text("warning: ", style="yellow") + Text(line), highlight=False, soft_wrap=True)


def _run_workers(s: Study, path: Path, storage: str, workers: int, device: str, threads: int | None) -> None:
    from ablate.runs.workers import WorkerError, run_workers

    try:
        code = run_workers(s, path, storage, workers, device=device, threads=threads, forward=sys.argv[1:], console=err)
    except WorkerError as exc:
        raise fail(str(exc), code=exc.code) from None
    if code != 0:
        raise typer.Exit(code)


def _run_here(s: Study, storage: str, device: str, data_dir: Path | None, checkpoint_dir: Path | None, grace: int,
              retry_failed: bool, fuse: int | str, threads: int | None, storage_retry: float) -> None:
    import optuna
    import sqlalchemy
    import torch

    from ablate.cli.terminal import Display
    from ablate.engine.data import DataError
    from ablate.runs import stopping
    from ablate.runs.options import OptionError
    from ablate.runs.runner import run_study
    from ablate.storage import StorageError, one_line, outcomes, safe_url

    if threads is not None:
        torch.set_num_threads(threads)
    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are recorded and shown by ablate
    show_notices()
    display = Display(enabled=err.is_terminal)
    try:
        with stopping.handled(), warnings_to(display.bar.console), display.bar:
            run_study(s, storage, device=device, data_dir=data_dir, checkpoint_dir=checkpoint_dir, progress=display.hooks(),
                      grace=grace, retry_failed=retry_failed, fuse=fuse, storage_retry=storage_retry)
    except (StorageError, DataError, OptionError, PathError) as exc:
        raise fail(str(exc)) from None
    except stopping.Stop as stop:
        if stop.kind == outcomes.STORAGE:
            raise fail(stop.reason, code=stop.code) from None
        raise fail(f"{stop.reason}; every finished trial is stored, a trial in progress keeps its checkpoint and is retried first; "
                   "run the same command again to resume where it stopped", code=stop.code) from None
    except KeyboardInterrupt:
        raise fail("interrupted; run the same command again to resume where it stopped", code=130) from None
    except (sqlalchemy.exc.SQLAlchemyError, optuna.exceptions.StorageInternalError) as exc:  # the database itself: full, locked, gone
        raise fail(f"storage {safe_url(storage)}: {one_line(exc)}; what is stored stays; fix it and run the same command again", code=1) from None


def _finish(s: Study, storage: str) -> None:
    """After a run: the summary, the report, and exit 1 when units are left failed."""
    from ablate.analysis.results import collect
    from ablate.cli.terminal import print_summary
    from ablate.report.page import default_path, render, write_page
    from ablate.storage import safe_url

    ostudy = _open(s.name, storage)
    results = collect(ostudy, storage)
    print_summary(results, f"{s.name} on {s.dataset}: final runs, error mean ± std over seeds")
    try:
        path = write_page(render(results), default_path(s.name))
    except OSError as exc:
        raise fail(f"every trial is stored in {safe_url(storage)}, but the report could not be written: {exc.strerror or exc} "
                   f"({exc.filename or 'reports/'}); free space and run: ablate report {s.name} --storage {storage}", code=1) from None
    print(f"storage: {storage} (study {s.name!r})")
    print(f"report:  {path}")
    print(f"inspect: ablate show {s.name} --storage {storage}  |  ablate dashboard --storage {storage}")
    _left_failed(ostudy, results)


def _left_failed(ostudy, results) -> None:
    """A run that leaves units failed says how many and why, and exits 1; runs that did not learn are noted."""
    from collections import Counter

    from ablate.analysis.format import count
    from ablate.runs.status import failed_units
    from ablate.storage import outcomes

    t = results.trials
    flat = int((t["did_not_learn"].notna() & (t["state"] == "COMPLETE")).sum()) if len(t) else 0
    if flat:
        err.print(f"note: {count(flat, 'final run')} did not learn (training error at chance level); they are kept out of the "
                  "means and listed in the report's failures section", highlight=False, soft_wrap=True, markup=False)
    failed = failed_units(ostudy.get_trials(deepcopy=False))
    if failed:
        kinds = Counter(outcomes.failure_kind(t.state, t.user_attrs) for t in failed.values())
        why = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
        raise fail(f"{len(failed)} of {results.attrs.units or '?'} units failed ({why}); their reasons are in the report's "
                   "failures section; run again with --retry-failed to retry them", code=1)


# ---------------------------------------------------------------- reading a storage


def _results(study: str, storage: str):
    from ablate.analysis.results import load_results
    from ablate.analysis.frames import ReportError

    try:
        return load_results(study, storage)
    except ReportError as exc:
        raise fail(str(exc)) from None


@app.command()
def show(
    study: Annotated[str, typer.Argument(help="Study name in the storage.", show_default=False)],
    storage: StorageOpt = DEFAULT_STORAGE,
) -> None:
    """The summary table of one study."""
    from ablate.cli.terminal import print_running, print_summary
    from ablate.runs.status import running_trials

    results = _results(study, storage)
    p = results.progress()
    print_summary(results, f"{study} on {results.dataset}: {p['finished']}/{p['units'] or '?'} trials done; error mean ± std over seeds")
    print_running([(study, r) for r in running_trials(_open(study, storage))])


def _open(study: str, storage: str):
    import optuna

    return optuna.load_study(study_name=study, storage=_storage(storage))


def _storage(storage: str):
    from ablate.storage import StorageError, open_storage

    try:
        return open_storage(storage)
    except StorageError as exc:
        raise fail(str(exc)) from None


@app.command("ls")
def ls(storage: StorageOpt = DEFAULT_STORAGE) -> None:
    """The studies in a storage, with their progress."""
    import optuna

    from ablate.cli.terminal import print_running
    from ablate.runs.status import running_trials, study_progress
    from ablate.storage import safe_url

    st = _storage(storage)
    studies = [optuna.load_study(study_name=n, storage=st) for n in optuna.get_all_study_names(st)]
    table = Table(title=Text(f"studies in {safe_url(storage)}"))
    for col in ("study", "dataset", "variants", "done", "running", "failed", "pruned", "started"):
        table.add_column(col)
    for o in studies:
        p = study_progress(o)
        table.add_row(Text(p["study"]), str(p["dataset"]), str(p["variants"]), f"{p['done']}/{p['units']}", str(p["running"]),
                      str(p["failed"]), str(p["pruned"]), p["started"].strftime("%Y-%m-%d %H:%M") if p["started"] else "-")
    console().print(table)
    print_running([(o.study_name, r) for o in studies for r in running_trials(o)])


@app.command()
def dashboard(
    storage: StorageOpt = DEFAULT_STORAGE,
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 8080,
) -> None:
    """Serve optuna-dashboard for a storage on 127.0.0.1."""
    from optuna_dashboard import run_server

    st = _storage(storage)
    print(f"optuna-dashboard for {storage} at http://127.0.0.1:{port}/ (Ctrl-C to stop)", flush=True)
    try:
        run_server(st, host="127.0.0.1", port=port)
    except OSError as exc:
        raise fail(f"--port: cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}; choose another port") from None
    except KeyboardInterrupt:
        pass


@app.command()
def report(
    study: Annotated[str, typer.Argument(help="Study name in the storage.", show_default=False)],
    storage: StorageOpt = DEFAULT_STORAGE,
    out: Annotated[Path | None, typer.Option("--out", help="Where to write the HTML [default: reports/<study>.html].", show_default=False)] = None,
) -> None:
    """Write a self-contained HTML report of a study: verdicts, curves, gradients, every trial."""
    from ablate.report.page import default_path, render, write_page

    results = _results(study, storage)
    target = out if out is not None else default_path(study)
    try:
        path = write_page(render(results), target)
    except PathError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write the report: {exc.strerror or exc} ({exc.filename or target}); free space or give --out",
                   code=1) from None
    print(path)


@app.command()
def export(
    study: Annotated[str, typer.Argument(help="Study name in the storage.", show_default=False)],
    storage: StorageOpt = DEFAULT_STORAGE,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for the tables (created when missing).")] = Path("reports"),
) -> None:
    """Write the per-trial, per-epoch and per-variant tables for notebooks."""
    from ablate.report.export import EXPORT_FORMATS, write_tables
    from ablate.spec.paths import usable_dir

    if fmt not in EXPORT_FORMATS:
        raise fail(f"--format: {fmt!r} is not valid; use one of {', '.join(EXPORT_FORMATS)}")
    results = _results(study, storage)
    try:
        paths = write_tables(results, usable_dir(out_dir, "--out-dir", create=True), fmt)
    except PathError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write the tables: {exc.strerror or exc} ({exc.filename or out_dir}); free space or give --out-dir",
                   code=1) from None
    for p in paths:
        print(p)


from ablate.cli.bench import bench  # noqa: E402 (imports torch only when it runs)

app.command(help="Training throughput of the engine against a seed-style DataLoader baseline, in one run.")(bench)


def version_callback(value: bool) -> None:
    if value:
        print(f"ablate {__version__}")
        raise typer.Exit()


@app.callback()
def root(
    version: Annotated[bool, typer.Option("--version", callback=version_callback, is_eager=True, help="Show the version.")] = False,
) -> None:
    """Architecture ablation studies of ResNet-family CNNs."""


def main() -> None:
    """The console script: a bug of ablate's is one line and a traceback file, never a traceback on the screen."""
    try:
        app()
    except Exception as exc:  # noqa: BLE001 (the last resort: everything expected was caught below)
        import tempfile
        import time
        import traceback

        path = Path(tempfile.gettempdir()) / f"ablate-bug-{time.strftime('%Y%m%d-%H%M%S')}-{id(exc):x}.txt"
        path.write_text("".join(traceback.format_exception(exc)), encoding="utf-8")
        err.print(Text(f"error: a bug in ablate: {type(exc).__name__}: {' '.join(str(exc).split())[:300]}; the traceback "
                       f"is in {path}; please report it with the command you ran"), highlight=False, soft_wrap=True)
        sys.exit(70)
