"""The storage contract's claim, called in-process on every backend (as Optuna's own storage tests
are parametrised over backends): each unit is created exactly once, a group is claimed together,
and the trials it writes are ordinary Optuna trials (params, attributes, heartbeat, numbers)."""

from __future__ import annotations

import optuna
import pytest
from optuna.distributions import CategoricalDistribution, IntDistribution
from optuna.trial import TrialState

from ablate.storage import Candidate, TrialAttrs, claim, heartbeats, open_storage, records, trial_id, trial_key

BACKENDS = ["sqlite", "postgresql"]


@pytest.fixture(params=BACKENDS)
def storage(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'claim.db'}"
    else:
        url = request.getfixturevalue("postgres_url")
    st = open_storage(url, grace=30)
    yield st
    if request.param == "postgresql":  # the server is shared by the session: leave no study behind
        for name in optuna.get_all_study_names(st):
            optuna.delete_study(study_name=name, storage=st)


def candidate(unit: str, group: str = "", state: str = "RUNNING", seed: int = 1) -> Candidate:
    dists = {"seed": IntDistribution(0, 10), "connection": CategoricalDistribution(["plain", "residual"])}
    return Candidate(unit, state, {"seed": seed, "connection": "plain"}, dists, {trial_key("unit"): unit}, group=group or unit)


def test_claim_creates_each_unit_once_with_params_attributes_and_a_heartbeat(storage, request):
    ostudy = optuna.create_study(study_name=f"claim-{request.node.name}", storage=storage)
    free = {"a", "b"}

    def claimable(recs):
        return free - {r.unit for r in recs}

    first = claim(storage, ostudy, [candidate("a"), candidate("b")], claimable)
    second = claim(storage, ostudy, [candidate("a"), candidate("b")], claimable)
    third = claim(storage, ostudy, [candidate("a"), candidate("b")], claimable)
    assert [c.running for c in first + second] == [True, True] and third == []
    trials = ostudy.get_trials()
    assert [TrialAttrs.read(t.user_attrs).unit for t in trials] == ["a", "b"]
    assert [t.number for t in trials] == [0, 1]
    assert all(t.state == TrialState.RUNNING and t.params == {"seed": 1, "connection": "plain"} for t in trials)
    beats = heartbeats(storage, [trial_id(t) for t in trials])
    assert set(beats) == {trial_id(t) for t in trials} | {-1}  # a first heartbeat with the claim
    assert [r.unit for r in records(trials)] == ["a", "b"]


def test_claim_takes_a_group_together_up_to_the_limit_and_records_impossible_units_failed(storage, request):
    ostudy = optuna.create_study(study_name=f"group-{request.node.name}", storage=storage)
    offered = [candidate(f"v/final/{i}", group="v/final", seed=i + 1) for i in range(3)] + [candidate("w/final/0", group="w/final")]
    got = claim(storage, ostudy, offered, lambda recs: {c.unit for c in offered}, limit=2)
    assert len(got) == 2 and all(c.running for c in got)
    assert [t.params["seed"] for t in ostudy.get_trials()] == [1, 2]
    failed = claim(storage, ostudy, [candidate("x", state="FAIL")], lambda recs: {"x"})
    assert [c.running for c in failed] == [False]
    t = ostudy.get_trials()[-1]
    assert t.state == TrialState.FAIL and t.datetime_complete is not None


def test_claimed_trials_run_and_finish_through_optunas_public_api(storage, request):
    ostudy = optuna.create_study(study_name=f"tell-{request.node.name}", storage=storage)
    (c,) = claim(storage, ostudy, [candidate("a")], lambda recs: {"a"})
    trial = optuna.Trial(ostudy, c.trial_id)
    trial.report(0.5, 1)
    frozen = ostudy.tell(trial, 0.25)
    assert frozen.state == TrialState.COMPLETE and frozen.value == 0.25 and frozen.intermediate_values == {1: 0.5}


TINY = """
name = "tiny"
dataset = "synthetic"
[fixed]
width = 4
[grid]
connection = ["plain", "residual"]
depth = [8]
[train]
epochs = 1
batch_size = 64
train_subset = 256
val_size = 128
[search]
trials = 2
lr = { low = 0.02, high = 0.2, log = true }
pruner = "median"
[seeds]
count = 2
"""


def test_a_tiny_study_runs_end_to_end_in_process(tmp_path):
    """The runner on this Optuna (CI also runs this file against the lowest Optuna allowed):
    search trials sampled and pruned per variant, final runs claimed in fused pairs, every unit once."""
    from ablate.runs import run_study
    from ablate.spec import parse_study

    url = f"sqlite:///{tmp_path / 'tiny.db'}"
    ostudy = run_study(parse_study(TINY), url, device="cpu", fuse=2)
    units = [TrialAttrs.read(t.user_attrs).unit for t in ostudy.get_trials()]
    assert sorted(units) == sorted(f"{v}/{k}/{i}" for v in ("plain-8-w4", "resnet-8-w4") for k, n in (("search", 2), ("final", 2))
                                   for i in range(n))
    assert all(t.state in (TrialState.COMPLETE, TrialState.PRUNED) for t in ostudy.get_trials())
