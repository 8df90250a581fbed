"""Running claimed trials to their end, as Optuna's `Study.optimize` would (heartbeat, pruning,
failures), but on the trials this worker claimed: Optuna's optimize takes whichever trial is
queued, which is what would make two workers run one unit. And reaping the trials of dead workers.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import threading
import warnings
from dataclasses import dataclass
from typing import Callable, Iterable

import optuna
from optuna.trial import FrozenTrial, TrialState

from ablate import storage as S

__all__ = ["Heartbeat", "Told", "tell", "run_trial", "run_group", "reap"]

log = logging.getLogger("ablate")


class Heartbeat:
    """Optuna's heartbeat for a trial this worker runs: a thread that records it every interval."""

    def __init__(self, storage: optuna.storages.RDBStorage, trial_id: int):
        self._storage, self._trial_id = storage, trial_id
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._beat, daemon=True)

    def _beat(self) -> None:
        interval = self._storage.get_heartbeat_interval() or 1
        while not self._stop.is_set():
            try:
                self._storage.record_heartbeat(self._trial_id)
            except Exception as exc:  # noqa: BLE001 (a thread: nothing above it to report to)
                # A storage hiccup: the next beat tries again, and a long one makes the trial
                # stale. Logged, so an error that is not a hiccup does not pass in silence.
                log.debug(f"heartbeat of trial id {self._trial_id}: {type(exc).__name__}: {exc}")
            self._stop.wait(interval)

    def __enter__(self) -> "Heartbeat":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


@dataclass
class Told:
    """How a trial ended, before it is told to the storage."""

    trial: optuna.Trial
    state: TrialState
    value: float | None = None
    stop: BaseException | None = None  # a KeyboardInterrupt (stopping.Stop): raised after every trial is told


def tell(ostudy: optuna.Study, told: Told) -> FrozenTrial:
    """Record a trial's end. A value Optuna refuses (NaN, inf) fails the trial instead."""
    value = told.value if told.state == TrialState.COMPLETE else None
    try:
        return ostudy.tell(told.trial, value, state=told.state, skip_if_finished=True)
    except ValueError:
        return ostudy.tell(told.trial, state=TrialState.FAIL, skip_if_finished=True)


def _ended(trial: optuna.Trial, run: Callable[[], float]) -> Told:
    """Run `run()` for a trial and say how it ended: COMPLETE with its value, PRUNED, or FAIL
    (its reason is recorded by `run` itself; a stop is kept to be raised once the trial is told)."""
    try:
        return Told(trial, TrialState.COMPLETE, run())
    except optuna.TrialPruned:
        return Told(trial, TrialState.PRUNED)
    except KeyboardInterrupt as exc:  # stopping.Stop, or a Ctrl-C without ablate's handler
        return Told(trial, TrialState.FAIL, stop=exc)
    except Exception:  # noqa: BLE001 (the trial's own failure: its reason is stored by `run`; the study goes on)
        return Told(trial, TrialState.FAIL)


def _finish(ostudy: optuna.Study, told: Iterable[Told], finished: Callable[[FrozenTrial], None]) -> None:
    """Tell every trial, call `finished` for each, then raise the first stop, if any."""
    stop = None
    for t in told:
        frozen = tell(ostudy, t)
        if frozen.state != t.state and t.stop is None:
            log.warning(f"trial {frozen.number} ({S.TrialAttrs.read(frozen.user_attrs).unit}) was taken for dead by another "
                        "worker (no heartbeat for the grace period) and its unit retried there; this worker's result is not kept")
        finished(frozen)
        stop = stop or t.stop
    if stop is not None:
        raise stop


def run_trial(ostudy: optuna.Study, storage: optuna.storages.RDBStorage, trial_id: int,
              objective: Callable[[optuna.Trial], float], finished: Callable[[FrozenTrial], None]) -> None:
    """Run one claimed trial to its end. Exceptions are recorded as FAIL; a Stop is recorded, then raised."""
    trial = optuna.Trial(ostudy, trial_id)
    with Heartbeat(storage, trial_id):
        told = _ended(trial, lambda: objective(trial))
    _finish(ostudy, [told], finished)


def run_group(ostudy: optuna.Study, storage: optuna.storages.RDBStorage, trial_ids: list[int],
              run_all: Callable[[list[optuna.Trial]], list[Callable[[], float]]],
              finished: Callable[[FrozenTrial], None]) -> None:
    """Run claimed trials together, as `run_trial` runs one: each has its own heartbeat, reports,
    attributes and state, and `finished` is called for each. `run_all(trials)` trains them
    (ablate.runs.runner: one fused network per variant and recipe) and returns, for each trial,
    a function giving its value or raising its failure."""
    trials = [optuna.Trial(ostudy, tid) for tid in trial_ids]
    with contextlib.ExitStack() as beats:
        for tid in trial_ids:
            beats.enter_context(Heartbeat(storage, tid))
        results = run_all(trials)
        told = [_ended(t, r) for t, r in zip(trials, results)]
    _finish(ostudy, told, finished)


def reap(ostudy: optuna.Study, storage: optuna.storages.RDBStorage, grace: int) -> None:
    """Dead workers' trials: FAIL, so that their units are claimed again. Optuna's heartbeat
    finds those whose heartbeat went stale (an atomic update: one worker wins, the rest find it
    failed); `_fail_unbeaten` those that never beat. Not until heartbeats are trusted again
    after a storage outage (ablate.storage.retry): no trial beat while it lasted."""
    if not S.retrier(storage).settled(grace):
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(ostudy)
    _fail_unbeaten(ostudy, storage, grace)


def _fail_unbeaten(ostudy: optuna.Study, storage: optuna.storages.RDBStorage, grace: int) -> None:
    """Optuna's heartbeat only finds trials that beat once. A trial taken outside ablate's claim
    (which records a first heartbeat with the trial) by a process killed before its first beat
    would never go stale, and every later run would wait for it. Such a trial, older than the
    grace period, is failed here (then retried as killed)."""
    now = datetime.datetime.now()  # Optuna stores datetime_start in local time
    old = [t for t in ostudy.get_trials(deepcopy=False, states=(TrialState.RUNNING,))
           if t.datetime_start is not None and (now - t.datetime_start).total_seconds() > grace]
    if not old:
        return
    beaten = set(S.heartbeats(storage, [S.trial_id(t) for t in old]))
    for t in old:
        if S.trial_id(t) not in beaten:
            try:
                storage.set_trial_state_values(S.trial_id(t), state=TrialState.FAIL)
            except optuna.exceptions.UpdateFinishedTrialError:  # it finished meanwhile, or another worker failed it
                pass
