"""The terminal's view of a study: the summary table, the verdict, running trials, and a run's
progress. Everything printed here comes finished from `ablate.analysis.StudyResults`, the same
object the report and the export draw, and its numbers from `ablate.analysis.format`."""

from __future__ import annotations

from typing import Any

from rich.table import Table
from rich.text import Text

from ablate.analysis.format import count, human, pct
from ablate.analysis.results import StudyResults
from ablate.analysis.stats import ALPHA
from ablate.analysis.verdicts import comparison_brief
from ablate.cli.common import console, err

__all__ = ["print_summary", "print_verdicts", "print_running", "Display"]


def print_summary(results: StudyResults, title: str) -> None:
    """Per variant: params, MACs, final runs' errors (mean ± std over seeds), best searched values;
    then the verdict. An architecture search: its finalists instead of every sampled network."""
    if results.search.is_search:
        _print_search(results, title)
        return
    table = Table(title=Text(title))
    for col in ("variant", "params", "MACs", "train error", "test error", "seeds", "best hyperparameters", "ok/failed/pruned"):
        table.add_column(col, justify="right" if col in ("params", "MACs", "seeds") else "left")
    for r in results.summary.to_dict("records"):
        table.add_row(
            Text(str(r["variant"])), human(r["params"]), human(r["macs"]),
            pct(r["train_error_mean"], r["train_error_std"]), pct(r["test_error_mean"], r["test_error_std"]),
            str(r["seeds"]), Text(r["best_hyperparameters"] or "-"), f"{r['complete']}/{r['failed']}/{r['pruned']}",
        )
    console().print(table)
    for note in results.notes:
        err.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    print_verdicts(results)
    print_spaces(results)


def print_spaces(results: StudyResults) -> None:
    """Design spaces compared (two or more [[space]] tables): the report's sentences, one per pair."""
    if results.spaces is None:
        return
    out = console()
    out.print(Text("Design spaces (complexity-normalised EDFs, weighted KS, permutations within bins, Holm-corrected):",
                   style="bold"))
    for line in [*results.spaces.sentences, *(f"warning: {w}" for w in results.spaces.warnings)]:
        out.print(Text(f"  {line}"))


def _print_search(results: StudyResults, title: str) -> None:
    r = results.search
    s = r.samples
    out = console()
    out.print(Text(title))
    out.print(Text(f"{count(int(s['feasible'].sum()), 'architecture')} sampled and trained, "
                   f"{int((s['failure_kind'] == 'infeasible').sum())} over the budget, {count(int(s['duplicate_of'].notna().sum()), 'repeat')}; "
                   "every sample is in the report and in `ablate export`"))
    table = Table(title=Text("finalists (final runs on fresh seeds)"))
    for col in ("finalist", "params", "MACs", "val error", "test error", "95% CI", "seeds"):
        table.add_column(col, justify="right" if col in ("params", "MACs", "seeds") else "left")
    for f in r.finalists.to_dict("records"):
        table.add_row(Text(str(f["variant"])), human(f["params"]), human(f["macs"]), pct(f["val_error_mean"]),
                      pct(f["test_error_mean"], f["test_error_std"]),
                      "-" if f["ci_low"] != f["ci_low"] else f"{pct(f['ci_low'])} to {pct(f['ci_high'])}", str(f["seeds"]))
    if len(r.finalists):
        out.print(table)
    for note in results.notes:
        err.print(f"note: {note}", markup=False, highlight=False, soft_wrap=True)
    print_verdicts(results)
    print_spaces(results)


def print_verdicts(results: StudyResults) -> None:
    """The report's findings, one line each: the answer, the question, the deciding numbers."""
    findings = results.findings
    if not findings:
        return
    out = console()
    tests = sum(len(f.comparisons) for f in findings)
    out.print(Text(f"Verdict (paired or Welch t-tests, Holm-corrected across {count(tests, 'comparison')}; "
                   f"real = corrected p < {ALPHA:g}):", style="bold"))
    for f in findings:
        c = f.deciding
        numbers = "" if c is None else f" [{comparison_brief(c)}]"
        out.print(Text(f"  {f.answer}: {f.question} ({f.family}){numbers}"))


def print_running(rows: list[tuple[str, dict[str, Any]]]) -> None:
    """The running trials of some studies: unit, worker (host, pid, device), epochs done, last heartbeat."""
    if not rows:
        return
    table = Table(title="running trials")
    for col in ("study", "trial", "unit", "worker", "device", "epochs", "started", "last heartbeat"):
        table.add_column(col, justify="right" if col in ("trial", "epochs") else "left")
    for name, r in rows:
        w = r["worker"]
        age = r["heartbeat_age"]
        table.add_row(Text(name), str(r["number"]), Text(str(r["unit"] or "-")), Text(f"{w.host}:{w.pid}" if w else "-"),
                      w.device if w else "-", str(r["epochs"]), r["started"].strftime("%Y-%m-%d %H:%M:%S") if r["started"] else "-",
                      "-" if age is None else f"{age:.0f} s ago")
    console().print(table)


class Display:
    """The progress of a run on a terminal: units done with ETA, the current trial's epochs."""

    def __init__(self, enabled: bool):
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

        self.bar = Progress(
            TextColumn("{task.description}", markup=False), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
            TextColumn("ETA"), TimeRemainingColumn(), console=err, disable=not enabled,
        )
        self.units = self.bar.add_task("trials done", total=None)
        self.trial = self.bar.add_task("", total=None, visible=False)

    def on_start(self, total: int, done: int) -> None:
        self.bar.update(self.units, total=total, completed=done)

    def on_trial(self, unit: Any, epochs: int) -> None:
        self.bar.reset(self.trial, total=epochs, visible=True, description=f"{unit.variant.name} {unit.kind} #{unit.index} (seed {unit.seed}) epoch")

    def on_epoch(self, unit: Any, epoch: Any) -> None:
        self.bar.update(self.trial, completed=epoch.epoch,
                        description=f"{unit.variant.name} {unit.kind} #{unit.index} (seed {unit.seed}) test {pct(epoch.test_error)} epoch")

    def on_finish(self, unit: Any, trial: Any) -> None:
        from ablate.storage import TrialAttrs, outcomes

        a = TrialAttrs.read(trial.user_attrs)
        if a.failure_kind not in outcomes.NOT_TRAINED and a.duplicate_of is None:  # an untrained sample: its unit is sampled again
            self.bar.advance(self.units)
        # A trial's value is what a search steers on: the validation error in a searched study. A
        # final run shows the test error it recorded; search trials and samples their value.
        value = trial.values[0] if trial.values else None
        label = "val error" if unit.kind in ("sample", "search") else "test error"
        if unit.kind == "final" and a.test_error is not None:
            value = a.test_error
        what = a.failure or (f"{label} {pct(value)}" if value is not None else "")
        if a.duplicate_of is not None:
            what += f" (sampled again: trial {a.duplicate_of}'s result, not trained twice)"
        if unit.kind == "sample" and a.variant:
            what = f"{a.variant}: {what}"
        if a.did_not_learn:
            what += " (did not learn: training error at chance level)"
        self.bar.console.print(f"{unit.key}: {trial.state.name.lower()} {what}", highlight=False, soft_wrap=True, markup=False)

    def on_wait(self, running: int) -> None:
        self.bar.update(self.trial, visible=True, description=f"waiting for {count(running, 'trial')} running elsewhere", total=None)

    def hooks(self) -> Any:
        from ablate.runs.runner import Progress

        return Progress(on_start=self.on_start, on_trial=self.on_trial, on_epoch=self.on_epoch, on_finish=self.on_finish,
                        on_wait=self.on_wait)
