"""The `ablate` command line. Bad input is one line on stderr and exit status 2, never a traceback."""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from ablate import __version__
from ablate.spec.study import Study, StudyError, load_study
from ablate.spec.variants import human
from ablate.storage.contract import STORAGE_RETRY_SECONDS

app = typer.Typer(
    name="ablate",
    help="Architecture ablation studies of ResNet-family CNNs.",
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)
err = Console(stderr=True)


def fail(message: str, code: int = 2) -> typer.Exit:
    # The message quotes the user's text (a study file's values, a path): printed as it is, never as Rich markup.
    err.print(Text("error: ", style="bold red") + Text(message), highlight=False, soft_wrap=True)
    return typer.Exit(code)


def _load(path: Path) -> Study:
    try:
        return load_study(path)
    except StudyError as exc:
        raise fail(str(exc)) from None


def _show_notices() -> None:
    """ablate's own notices (the bundled data in use, ...) as one line each on stderr, above any
    progress display."""
    import logging

    class Notice(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            err.print(f"note: {record.getMessage()}", markup=False, highlight=False, soft_wrap=True)

    logger = logging.getLogger("ablate")
    logger.setLevel(logging.INFO)
    if not any(type(h).__name__ == "Notice" for h in logger.handlers):
        logger.addHandler(Notice())


def parse_fuse(text: str) -> int | str:
    """--fuse: auto, off, or a number of runs >= 1."""
    value = text.strip().lower()
    if value in ("auto", "off"):
        return value
    try:
        runs = int(value)
    except ValueError:
        runs = 0
    if runs < 1:
        raise fail(f"--fuse: {text!r} is not valid; use auto, off or a number of runs >= 1 (1 is off)")
    return runs


def _with_first_seed(study: Study, first_seed: int) -> Study:
    import dataclasses

    from ablate.spec.study import check_first_seed

    try:
        check_first_seed(first_seed)
    except ValueError as exc:
        raise fail(f"--first-seed: {exc}") from None
    return dataclasses.replace(study, first_seed=first_seed)


def variant_rows(study: Study) -> list[dict[str, object]]:
    from ablate.engine.models import measure  # torch is imported only when needed
    from ablate.engine.train import schedule, train_size

    rows = []
    for spec in study.variants:
        params, macs = measure(spec, study.info)
        recipe = study.recipe_for(spec)
        resolved = schedule(recipe, train_size(recipe, study.info)).describe(recipe)
        rows.append({"name": spec.name, **spec.axes(), "params": params, "macs": macs, "recipe": resolved})
    return rows


@app.command()
def variants(
    study: Annotated[Path, typer.Argument(help="Study file (TOML).", show_default=False)],
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON array instead of a table.")] = False,
) -> None:
    """List the variants a study file generates, with parameters and MACs."""
    s = _load(study)
    rows = variant_rows(s)
    if as_json:
        sys.stdout.write(json.dumps(rows, indent=2) + "\n")
        return
    table = Table(title=f"{s.name}: {len(rows)} variants on {s.dataset} ({s.info.channels}x{s.info.size}x{s.info.size})")
    from ablate.spec.variants import AXES

    for col in ("name", *AXES, "params", "MACs",
                "iterations", "warm-up"):
        table.add_column(col, justify="right" if col in ("depth", "width", "params", "MACs", "iterations") else "left")
    for r in rows:
        table.add_row(
            str(r["name"]), *(_axis_cell(a, r[a]) for a in AXES),
            human(r["params"]), human(r["macs"]), str(r["recipe"]["iterations"]),
            f'{r["recipe"]["warmup_iterations"]} ({r["recipe"]["warmup"]}, lr {r["recipe"]["warmup_lr"]:g})'
            if r["recipe"]["warmup_iterations"] else "-",
        )
    _console().print(table)


def _axis_cell(axis: str, value: object) -> str:
    if value is None:  # a plain net's shortcut
        return "-"
    return "-".join(map(str, value)) if isinstance(value, (list, tuple)) else str(value)


StorageOpt = Annotated[str, typer.Option("--storage", help="SQLAlchemy URL of the Optuna storage.")]
DEFAULT_STORAGE = "sqlite:///ablate.db"


def _print_summary(ostudy, title: str) -> None:
    """Per variant: params, MACs, final runs' errors (mean ± std over seeds), best searched values."""
    import math

    from ablate.analysis.tables import searched_keys, trials_table, variant_summary

    from ablate.storage import StudyAttrs

    attrs = StudyAttrs.read(ostudy.user_attrs)
    trials = trials_table(ostudy)
    rows = variant_summary(trials, attrs.variants, searched_keys(attrs, trials))

    def error(mean: float, std: float) -> str:
        if math.isnan(mean):
            return "-"
        return f"{100 * mean:.2f}%" + ("" if math.isnan(std) else f" ± {100 * std:.2f}")

    table = Table(title=title)
    for col in ("variant", "params", "MACs", "train error", "test error", "seeds", "best hyperparameters", "ok/failed/pruned"):
        table.add_column(col, justify="right" if col in ("params", "MACs", "seeds") else "left")
    for r in rows.to_dict("records"):
        table.add_row(
            str(r["variant"]), human(int(r["params"])), human(int(r["macs"])),
            error(r["train_error_mean"], r["train_error_std"]), error(r["test_error_mean"], r["test_error_std"]),
            str(r["seeds"]), r["best_hyperparameters"] or "-", f"{r['complete']}/{r['failed']}/{r['pruned']}",
        )
    _console().print(table)
    _print_verdicts(ostudy, trials, rows)


def _print_verdicts(ostudy, trials, summary) -> None:
    """The report's findings, one line each: the answer, the question, the deciding numbers."""
    from rich.text import Text

    from ablate.analysis.stats import ALPHA
    from ablate.analysis.tables import recipes_of, samples, verdicts

    from ablate.storage import StudyAttrs

    findings = verdicts(summary, str(StudyAttrs.read(ostudy.user_attrs).dataset or ""), samples(trials, recipes_of(ostudy)))
    if not findings:
        return
    out = _console()
    out.print(Text(f"Verdict (paired or Welch t-tests, Holm-corrected across {sum(len(f.comparisons) for f in findings)} "
                   f"comparisons; real = corrected p < {ALPHA:g}):", style="bold"))
    for f in findings:
        c = f.deciding
        numbers = ""
        if c is not None:
            numbers = f" [{c.b} − {c.a}: {c.difference * 100:+.1f} points"
            if c.testable:
                numbers += f", 95% CI {c.ci_low * 100:+.1f} to {c.ci_high * 100:+.1f}, {c.method}, Holm p = {c.p_adjusted:.2g}"
            numbers += "]"
        out.print(Text(f"  {f.answer}: {f.question} ({f.family}){numbers}"))


def _console() -> Console:
    out = Console()
    return out if out.is_terminal else Console(width=200)  # piped: do not squeeze tables into 80 columns


class _Display:
    """The progress of a run on a terminal: units done with ETA, the current trial's epochs."""

    def __init__(self, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=err, disable=not enabled,
        )
        self.units = self.bar.add_task("trials done", total=None)
        self.trial = self.bar.add_task("", total=None, visible=False)

    def hooks(self):
        from ablate.runs.runner import Progress

        def on_start(total: int, done: int) -> None:
            self.bar.update(self.units, total=total, completed=done)

        def on_trial(unit, epochs: int) -> None:
            self.bar.reset(self.trial, total=epochs, visible=True, description=f"{unit.variant.name} {unit.kind} #{unit.index} (seed {unit.seed}) epoch")

        def on_epoch(unit, epoch) -> None:
            self.bar.update(self.trial, completed=epoch.epoch,
                            description=f"{unit.variant.name} {unit.kind} #{unit.index} (seed {unit.seed}) test {100 * epoch.test_error:.1f}% epoch")

        def on_finish(unit, trial) -> None:
            self.bar.advance(self.units)
            state = trial.state.name.lower()
            from ablate.storage import TrialAttrs

            a = TrialAttrs.read(trial.user_attrs)
            what = a.failure or (f"test error {100 * trial.value:.2f}%" if trial.value is not None else "")
            if a.did_not_learn:
                what += " (did not learn: training error at chance level)"
            self.bar.console.print(f"{unit.key}: {state} {what}", highlight=False, soft_wrap=True, markup=False)

        def on_wait(running: int) -> None:
            self.bar.update(self.trial, visible=True, description=f"waiting for {running} trial(s) running elsewhere", total=None)

        return Progress(on_start=on_start, on_trial=on_trial, on_epoch=on_epoch, on_finish=on_finish, on_wait=on_wait)


@app.command()
def run(
    study: Annotated[Path, typer.Argument(help="Study file (TOML).", show_default=False)],
    storage: StorageOpt = DEFAULT_STORAGE,
    device: Annotated[str, typer.Option("--device", help="auto, cpu or cuda.")] = "auto",
    data_dir: Annotated[Path | None, typer.Option("--data-dir", envvar="ABLATE_DATA", help="Where datasets are read and downloaded [default: ~/.cache/ablate/data].")] = None,
    checkpoint_dir: Annotated[Path | None, typer.Option("--checkpoint-dir", help="Per-epoch checkpoints for resuming [default: beside the SQLite file].")] = None,
    grace_period: Annotated[int, typer.Option("--grace-period", help="Seconds without heartbeat after which a running trial is taken for dead and retried.")] = 30,
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
    s = _load(study)  # before importing torch and Optuna: a bad study file is reported at once
    if first_seed is not None:
        s = _with_first_seed(s, first_seed)
    fuse_runs = parse_fuse(fuse)
    if workers < 1:
        raise fail(f"--workers: {workers} is not valid; use 1 or more")
    if threads is not None and threads < 1:
        raise fail(f"--threads: {threads} is not valid; use 1 or more")
    if not 0 <= storage_retry <= 86_400:  # also NaN
        raise fail(f"--storage-retry: {storage_retry:g} is not valid; use seconds from 0 (stop at the first storage error) "
                   "to 86400 (a day)")
    if workers > 1:
        from ablate.runs.workers import WorkerError, run_workers

        try:
            code = run_workers(s, study, storage, workers, device=device, threads=threads, forward=sys.argv[1:], console=err)
        except WorkerError as exc:
            raise fail(str(exc), code=exc.code) from None
        if code != 0:
            raise typer.Exit(code)
        if not no_report:
            _finish(s, storage)
        return
    if threads is not None:
        import torch

        torch.set_num_threads(threads)
    import optuna
    import sqlalchemy

    from ablate.storage import outcomes
    from ablate.runs import stopping
    from ablate.engine.data import DataError
    from ablate.runs.runner import DriverError, run_study
    from ablate.storage import one_line, safe_url

    optuna.logging.set_verbosity(optuna.logging.ERROR)  # failures are recorded and shown by ablate
    _show_notices()
    display = _Display(enabled=err.is_terminal)
    try:
        with stopping.handled(), _warnings_to(display.bar.console), display.bar:
            ostudy = run_study(s, storage, device=device, data_dir=data_dir, checkpoint_dir=checkpoint_dir, progress=display.hooks(),
                               grace=grace_period, retry_failed=retry_failed, fuse=fuse_runs, storage_retry=storage_retry)
    except (DriverError, DataError, ValueError) as exc:
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
    if not no_report:
        _finish(s, storage, ostudy)


def _finish(s: Study, storage: str, ostudy=None) -> None:
    """After a run: the summary, the report, and exit 1 when units are left failed."""
    from ablate.storage import safe_url

    if ostudy is None:
        from ablate.analysis.tables import open_study

        ostudy = open_study(s.name, storage)
    _print_summary(ostudy, f"{s.name} on {s.dataset}: final runs, error mean ± std over seeds")
    from ablate.report import write_report

    try:
        path = write_report(s.name, storage)
    except OSError as exc:
        raise fail(f"every trial is stored in {safe_url(storage)}, but the report could not be written: {exc.strerror or exc} "
                   f"({exc.filename or 'reports/'}); free space and run: ablate report {s.name} --storage {storage}", code=1) from None
    print(f"storage: {storage} (study {s.name!r})")
    print(f"report:  {path}")
    print(f"inspect: ablate show {s.name} --storage {storage}  |  ablate dashboard --storage {storage}")
    _left_failed(ostudy)


@contextlib.contextmanager
def _warnings_to(console: Console):
    """ablate's warnings (a discarded checkpoint) as one line each, above the progress display."""
    import logging

    class OneLine(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            console.print(Text("warning: ", style="yellow") + Text(record.getMessage()), highlight=False, soft_wrap=True)

    def below_warnings(record: logging.LogRecord) -> bool:
        return record.levelno < logging.WARNING

    log, handler = logging.getLogger("ablate"), OneLine(logging.WARNING)
    notices = [h for h in log.handlers if type(h).__name__ == "Notice"]  # _show_notices': warnings are printed here, once
    propagate, log.propagate = log.propagate, False
    log.addHandler(handler)
    for h in notices:
        h.addFilter(below_warnings)
    try:
        yield
    finally:
        for h in notices:
            h.removeFilter(below_warnings)
        log.removeHandler(handler)
        log.propagate = propagate


def _left_failed(ostudy) -> None:
    """A run that leaves units failed says how many and why, and exits 1; runs that did not learn are noted."""
    from collections import Counter

    from ablate.storage import outcomes
    from ablate.runs.runner import failed_units

    trials = ostudy.get_trials(deepcopy=False)
    from ablate.storage import StudyAttrs, TrialAttrs

    flat = sum(bool(TrialAttrs.read(t.user_attrs).did_not_learn) and t.state.name == "COMPLETE" for t in trials)
    if flat:
        err.print(f"note: {flat} final run(s) did not learn (training error at chance level); they are kept out of the "
                  "means and listed in the report's failures section", highlight=False, soft_wrap=True, markup=False)
    failed = failed_units(trials)
    if failed:
        kinds = Counter(outcomes.failure_kind(t.state, t.user_attrs) for t in failed.values())
        why = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
        raise fail(f"{len(failed)} of {StudyAttrs.read(ostudy.user_attrs).units or '?'} units failed ({why}); their reasons are in the report's "
                   "failures section; run again with --retry-failed to retry them", code=1)


@app.command()
def show(
    study: Annotated[str, typer.Argument(help="Study name in the storage.", show_default=False)],
    storage: StorageOpt = DEFAULT_STORAGE,
) -> None:
    """The summary table of one study."""
    from ablate.runs.runner import study_progress
    from ablate.analysis.tables import ReportError, open_study

    try:
        ostudy = open_study(study, storage)
    except ReportError as exc:
        raise fail(str(exc)) from None
    p = study_progress(ostudy)
    _print_summary(ostudy, f"{study} on {p['dataset']}: {p['done']}/{p['units']} trials done; error mean ± std over seeds")
    _print_running([(study, ostudy)], ostudy._storage)


def _print_running(studies, storage) -> None:
    """The running trials of some studies: unit, worker (host, pid, device), epochs done, last heartbeat."""
    from ablate.runs.runner import running_trials

    backend = getattr(storage, "_backend", storage)  # Optuna wraps RDB storage in a cache
    rows = [(name, r) for name, o in studies for r in running_trials(o, backend)]
    if not rows:
        return
    table = Table(title="running trials")
    for col in ("study", "trial", "unit", "worker", "device", "epochs", "started", "last heartbeat"):
        table.add_column(col, justify="right" if col in ("trial", "epochs") else "left")
    for name, r in rows:
        w = r["worker"]
        age = r["heartbeat_age"]
        table.add_row(name, str(r["number"]), str(r["unit"] or "-"), f"{w.host}:{w.pid}" if w else "-", w.device if w else "-",
                      str(r["epochs"]), r["started"].strftime("%Y-%m-%d %H:%M:%S") if r["started"] else "-",
                      "-" if age is None else f"{age:.0f} s ago")
    _console().print(table)


@app.command("ls")
def ls(storage: StorageOpt = DEFAULT_STORAGE) -> None:
    """The studies in a storage, with their progress."""
    import optuna

    from ablate.runs.runner import DriverError, open_storage, study_progress

    try:
        st = open_storage(storage)
        studies = [optuna.load_study(study_name=n, storage=st) for n in optuna.get_all_study_names(st)]
    except DriverError as exc:
        raise fail(str(exc)) from None
    from ablate.storage import safe_url

    table = Table(title=f"studies in {safe_url(storage)}")
    for col in ("study", "dataset", "variants", "done", "running", "failed", "pruned", "started"):
        table.add_column(col)
    for o in studies:
        p = study_progress(o)
        table.add_row(p["study"], str(p["dataset"]), str(p["variants"]), f"{p['done']}/{p['units']}", str(p["running"]),
                      str(p["failed"]), str(p["pruned"]), p["started"].strftime("%Y-%m-%d %H:%M") if p["started"] else "-")
    _console().print(table)
    _print_running([(o.study_name, o) for o in studies], st)


@app.command()
def dashboard(
    storage: StorageOpt = DEFAULT_STORAGE,
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 8080,
) -> None:
    """Serve optuna-dashboard for a storage on 127.0.0.1."""
    from optuna_dashboard import run_server

    from ablate.runs.runner import DriverError, open_storage

    try:
        st = open_storage(storage)
    except DriverError as exc:
        raise fail(str(exc)) from None
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
    out: Annotated[Path | None, typer.Option("--out", help="Where to write the HTML [default: reports/<study>.html].")] = None,
) -> None:
    """Write a self-contained HTML degradation-comparison report of a study."""
    from ablate.report import write_report
    from ablate.analysis.tables import ReportError

    try:
        path = write_report(study, storage, out)
    except ReportError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write the report: {exc.strerror or exc} ({exc.filename or out or 'reports/'}); free space or give --out", code=1) from None
    print(path)


@app.command()
def export(
    study: Annotated[str, typer.Argument(help="Study name in the storage.", show_default=False)],
    storage: StorageOpt = DEFAULT_STORAGE,
    fmt: Annotated[str, typer.Option("--format", help="csv or parquet.")] = "csv",
    out_dir: Annotated[Path, typer.Option("--out-dir", help="Folder for the tables.")] = Path("reports"),
) -> None:
    """Write the per-trial, per-epoch and per-variant tables for notebooks."""
    from ablate.report import export_tables
    from ablate.analysis.tables import ReportError

    try:
        paths = export_tables(study, storage, out_dir, fmt)
    except ReportError as exc:
        raise fail(str(exc)) from None
    except OSError as exc:
        raise fail(f"cannot write the tables: {exc.strerror or exc} ({exc.filename or out_dir}); free space or give --out-dir", code=1) from None
    for p in paths:
        print(p)


from ablate.engine.bench import bench  # noqa: E402 (registered below; imports torch only when it runs)

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
    app()
