"""Scheduling as a pure function of stored trials (ablate.scheduling): what to claim, what to
record as impossible, what to wait for. Milliseconds, no storage, no training."""

from __future__ import annotations

from ablate.storage import outcomes
from ablate.runs.scheduling import Unit, failed_units, plan, study_units, unit_state
from ablate.storage import TrialRecord
from ablate.spec.study import parse_study

SEARCHED = """
name = "s"
dataset = "synthetic"
[fixed]
width = 4
depth = 8
[grid]
connection = ["plain", "residual"]
[train]
epochs = 1
val_size = 64
[search]
trials = 2
lr = { low = 0.01, high = 1.0, log = true }
[seeds]
count = 2
"""

PLAIN = SEARCHED.split("[search]")[0] + "[seeds]\ncount = 3\n"


def units(text: str = SEARCHED) -> list[Unit]:
    return study_units(parse_study(text))


def rec(number: int, unit: str, state: str = "COMPLETE", kind: str | None = None, value: float | None = None,
        params: dict | None = None, val_error: float | None = None) -> TrialRecord:
    return TrialRecord(number, state, unit, kind if state == "FAIL" else None, params or {}, value, val_error)


def keys(p) -> list[str]:
    return [r.unit.key for r in p.ready]


def test_a_fresh_study_runs_every_search_trial_first_and_final_runs_wait():
    p = plan(units(), [])
    assert keys(p) == ["plain-8-w4/search/0", "plain-8-w4/search/1", "resnet-8-w4/search/0", "resnet-8-w4/search/1"]
    assert p.blocked == ["plain-8-w4/final/0", "plain-8-w4/final/1", "resnet-8-w4/final/0", "resnet-8-w4/final/1"]
    assert not p.finished and p.running == [] and p.impossible == []


def test_final_runs_wait_for_a_search_trial_running_elsewhere_then_repeat_the_best():
    running = [rec(0, "plain-8-w4/search/0", value=0.3, val_error=0.3, params={"lr": 0.1}),
               rec(1, "plain-8-w4/search/1", "RUNNING")]
    p = plan(units(), running)
    assert "plain-8-w4/final/0" in p.blocked and p.running == ["plain-8-w4/search/1"]
    assert "plain-8-w4/search/1" not in keys(p)  # never claimed twice
    done = [running[0], rec(1, "plain-8-w4/search/1", value=0.2, val_error=0.25, params={"lr": 0.5}),
            rec(2, "plain-8-w4/search/1", value=0.1, val_error=0.2, params={"lr": 0.7})]  # (a retried unit counts by its latest)
    p = plan(units(), done)
    ready = {r.unit.key: r for r in p.ready}
    assert ready["plain-8-w4/final/0"].best.number == 2 and ready["plain-8-w4/final/1"].best.params == {"lr": 0.7}


def test_the_best_search_trial_is_chosen_by_validation_error_ties_to_the_earlier():
    done = [rec(0, "plain-8-w4/search/0", value=0.1, val_error=0.3), rec(1, "plain-8-w4/search/1", value=0.9, val_error=0.2)]
    assert plan(units(), done).ready[0].best.number == 1
    tied = [rec(0, "plain-8-w4/search/0", value=0.5, val_error=0.2), rec(1, "plain-8-w4/search/1", value=0.5, val_error=0.2)]
    assert plan(units(), tied).ready[0].best.number == 0


def test_a_variant_whose_search_all_failed_has_impossible_final_runs():
    failed = [rec(0, "plain-8-w4/search/0", "FAIL", outcomes.DIVERGED), rec(1, "plain-8-w4/search/1", "PRUNED")]
    p = plan(units(), failed)
    assert [u.key for u in p.impossible] == ["plain-8-w4/final/0", "plain-8-w4/final/1"]
    assert {u.key for u in p.impossible} <= p.claimable


def test_a_killed_or_interrupted_unit_is_ready_again_with_its_params_and_own_failures_are_results():
    trials = [rec(0, "plain-8-w4/final/0", "FAIL", outcomes.KILLED, params={"seed": 1, "lr": 0.1}),
              rec(1, "plain-8-w4/final/1", "FAIL", outcomes.OUT_OF_MEMORY),
              rec(2, "plain-8-w4/final/2", "FAIL", outcomes.INTERRUPTED, params={"seed": 3})]
    p = plan(units(PLAIN), trials)
    ready = {r.unit.key: r for r in p.ready}
    assert ready["plain-8-w4/final/0"].previous.params == {"seed": 1, "lr": 0.1}
    assert ready["plain-8-w4/final/2"].previous.number == 2
    assert "plain-8-w4/final/1" not in ready and "plain-8-w4/final/1" in p.done
    assert list(failed_units(trials)) == ["plain-8-w4/final/1"]
    # --retry-failed: the unit's own failure runs once more; after that attempt it is done again.
    assert "plain-8-w4/final/1" in keys(plan(units(PLAIN), trials, retry={"plain-8-w4/final/1": 1}))
    again = [*trials, rec(3, "plain-8-w4/final/1", "FAIL", outcomes.OUT_OF_MEMORY)]
    assert "plain-8-w4/final/1" not in keys(plan(units(PLAIN), again, retry={"plain-8-w4/final/1": 1}))


def test_waiting_and_running_trials_are_in_flight_and_the_study_finishes_when_every_unit_counts():
    us = units(PLAIN)
    trials = [rec(i, u.key) for i, u in enumerate(us[:-1])] + [rec(len(us) - 1, us[-1].key, "WAITING")]
    p = plan(us, trials)
    assert p.ready == [] and p.running == [us[-1].key] and not p.finished
    assert unit_state(trials).in_flight == {us[-1].key}
    trials[-1] = rec(len(us) - 1, us[-1].key)
    assert plan(us, trials).finished
    # Trials of no unit (written by something else) and units a study no longer has are ignored.
    assert plan(us, [*trials, rec(99, None), rec(100, "gone/final/0")]).finished


def test_a_grown_study_plans_only_the_new_units():
    old = [rec(i, u.key) for i, u in enumerate(units(PLAIN))]
    grown = units(PLAIN.replace("count = 3", "count = 5").replace('"plain", "residual"', '"plain", "residual", "plain"'))
    assert sorted(keys(plan(grown, old))) == sorted(
        f"{v}/final/{i}" for v in ("plain-8-w4", "resnet-8-w4") for i in (3, 4))
