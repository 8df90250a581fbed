"""Where a stored study stands: units done, running (with their workers and heartbeats), failed.
Read from the storage alone, for `ablate ls`, `show`, `run --workers` and the end of a run."""

from __future__ import annotations

from typing import Any

import optuna
from optuna.trial import FrozenTrial, TrialState

from ablate import storage as S
from ablate.runs import scheduling

__all__ = ["unit_state", "failed_units", "study_progress", "running_trials"]


def unit_state(trials: list[FrozenTrial]) -> scheduling.UnitState:
    return scheduling.unit_state(S.records(trials))


def failed_units(trials: list[FrozenTrial]) -> dict[str, FrozenTrial]:
    """Units whose latest finished attempt failed for a reason of their own: unit key -> that trial."""
    by_number = {t.number: t for t in trials}
    return {k: by_number[r.number] for k, r in scheduling.failed_units(S.records(trials)).items()}


def study_progress(ostudy: optuna.Study) -> dict[str, Any]:
    trials = ostudy.get_trials(deepcopy=False)
    state = unit_state(trials)
    attrs = S.StudyAttrs.read(ostudy.user_attrs)
    return {
        "study": ostudy.study_name, "dataset": attrs.dataset,
        "variants": len(attrs.variants or []),
        "done": len(state.done), "units": attrs.units,
        "running": sum(t.state == TrialState.RUNNING for t in trials),
        "failed": len(failed_units(trials)),
        "pruned": sum(t.state == TrialState.PRUNED for t in trials),
        "started": min((t.datetime_start for t in trials if t.datetime_start), default=None),
    }


def running_trials(ostudy: optuna.Study) -> list[dict[str, Any]]:
    """The study's RUNNING trials with their worker (host, pid, device), epochs done and the age
    of their last heartbeat in seconds (None: none recorded)."""
    running = ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
    beats = S.heartbeats(S.rdb_of(ostudy), [S.trial_id(t) for t in running]) if running else {}
    now = beats.get(-1)
    rows = []
    for t in running:
        a = S.TrialAttrs.read(t.user_attrs)
        beat = beats.get(S.trial_id(t))
        age = (now - beat).total_seconds() if now is not None and beat is not None else None
        rows.append({"number": t.number, "unit": a.unit, "worker": a.worker, "epochs": len(a.history or []),
                     "started": t.datetime_start, "heartbeat_age": age})
    return rows
