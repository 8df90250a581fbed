"""An architecture search end to end on synthetic data: samples within the budget, none trained
twice, exactly `count` trained; a budget nothing fits is one line."""

from __future__ import annotations

import time

import pytest

from ablate.analysis.results import load_results
from ablate.engine.models import measure
from ablate.runs import run_study
from ablate.runs.options import OptionError
from ablate.spec.recipe import input_info
from ablate.spec.study import parse_study

STUDY = """
name = "search-tiny"
dataset = "synthetic"
[fixed]
width = 4
[[space]]
connection = ["plain", "residual"]
activation = ["post", "pre"]
depth = [8, 14]
[sample]
count = 3
sampler = "{sampler}"
seed = 3
objectives = {objectives}
max_macs = {max_macs}
{finalists}
[seeds]
count = 2
[train]
epochs = 1
batch_size = 64
train_subset = 256
val_size = 64
test_subset = 64
augment = []
"""


def _study(sampler="random", objectives='["val_error"]', max_macs=1e12):
    finalists = "" if "macs" in objectives else "finalists = 2"
    return parse_study(STUDY.format(sampler=sampler, objectives=objectives, max_macs=max_macs, finalists=finalists))


@pytest.mark.parametrize("sampler, objectives", [("random", '["val_error"]'), ("nsga2", '["val_error", "macs"]')])
def test_a_search_trains_count_distinct_architectures_within_the_budget(tmp_path, sampler, objectives):
    probe = _study()
    info = input_info(probe.info, probe.recipe)
    # A budget between the depth-8 and the depth-14 nets: every depth-14 sample is infeasible.
    space = probe.spaces[0]
    nets = [space.spec({"connection": c, "activation": a, "depth": d}) for c in ("plain", "residual") for a in ("post", "pre") for d in (8, 14)]
    macs8 = max(measure(s, info)[1] for s in nets if s.depth == 8)
    macs14 = min(measure(s, info)[1] for s in nets if s.depth == 14)
    assert macs8 < macs14
    study = _study(sampler, objectives, max_macs=(macs8 + macs14) // 2)
    url = f"sqlite:///{tmp_path / 'a.db'}"
    ostudy = run_study(study, url, device="cpu", data_dir=tmp_path, checkpoint_dir=tmp_path / "ckpt")
    assert len(ostudy.directions) == len(study.sample.objectives)
    samples = load_results(study.name, url).samples
    trained = samples[samples["feasible"]]
    assert len(trained) == 3 and set(trained["state"]) <= {"COMPLETE", "PRUNED"}
    assert trained["name"].is_unique and (trained["macs"] <= study.sample.max_macs).all()
    assert (trained["depth"] == 8).all()
    assert trained["val_error"].notna().all()
    untrained = samples[~samples["feasible"]]
    repeats = untrained[untrained["duplicate_of"].notna()]  # sampled again: given the stored result, not trained
    assert (repeats["state"] == "COMPLETE").all() and repeats["duplicate_of"].isin(trained["number"]).all()
    for _, r in repeats.iterrows():
        assert r["val_error"] == trained.set_index("number").loc[r["duplicate_of"], "val_error"]
    infeasible = untrained[untrained["duplicate_of"].isna()]
    assert (infeasible["state"] == "FAIL").all()
    assert set(infeasible["failure_kind"]) <= {"infeasible", "duplicate"}
    assert (infeasible[infeasible["failure_kind"] == "infeasible"]["macs"] > study.sample.max_macs).all()
    # The final runs: the best 2 by validation error, or the Pareto set, each on seeds 1 and 2.
    results = load_results(study.name, url)
    finals = results.trials[results.trials["kind"] == "final"]
    complete = trained[trained["state"] == "COMPLETE"]
    if study.sample.multi:
        assert samples["pareto"].sum() >= 1 and not untrained["pareto"].any()
        chosen = set(complete[complete["pareto"]]["name"])
        for _, r in complete.iterrows():  # the front, checked by brute force
            dominated = ((complete["val_error"] <= r["val_error"]) & (complete["macs"] <= r["macs"])
                         & ((complete["val_error"] < r["val_error"]) | (complete["macs"] < r["macs"]))).any()
            assert (r["name"] in chosen) == (not dominated)
    else:
        assert samples["best"].sum() == 1
        chosen = set(complete.sort_values(["val_error", "number"])["name"][:2])
    assert set(finals["variant"]) == chosen
    assert sorted(finals.groupby("variant")["seed"].apply(sorted).tolist()) == [[1, 2]] * len(chosen)
    assert (finals["state"] == "COMPLETE").all() and finals["depth"].notna().all() and (finals["width"] == 4).all()
    assert set(results.search.finalists["variant"]) == chosen
    if len(chosen) > 1:  # the finalists are compared by the verdict
        assert any(f.topic == "search" for f in results.findings)


def test_a_budget_nothing_fits_is_one_line(tmp_path):
    study = _study(max_macs=10)
    with pytest.raises(OptionError) as err:
        run_study(study, f"sqlite:///{tmp_path / 'a.db'}", device="cpu", data_dir=tmp_path)
    message = str(err.value)
    assert message.startswith("sample.max_macs: no architecture of space 'space' fits the budget") and "\n" not in message


def test_a_search_killed_mid_training_resumes_under_two_workers_without_a_repeat(tmp_path):
    """A real `ablate run` SIGKILLed while training a sample (stopped at its fourth checkpoint
    write), then two workers started at the same instant finish the search: every sample unit
    ends with exactly one counting trial, no architecture is trained twice, the killed sample
    resumes from its checkpoint, and the finalists' runs follow."""
    import os
    import signal
    import subprocess
    from collections import Counter

    import optuna

    from ablate import failpoints
    from ablate.storage import TrialAttrs, outcomes
    from test_workers import args, is_stopped, start_together

    text = STUDY.format(sampler="tpe", objectives='["val_error"]', max_macs=1e12, finalists="finalists = 2").replace(
        "count = 3\n", "count = 4\n", 1).replace("epochs = 1", "epochs = 2").replace('name = "search-tiny"', 'name = "many"')
    path = tmp_path / "search.toml"
    path.write_text(text)
    url = f"sqlite:///{tmp_path / 'search.db'}"
    argv = args(path, url, "--no-report", "--grace-period", "2")
    first = subprocess.Popen(argv, cwd=tmp_path, env={**os.environ, failpoints.ENV: "checkpoint-write:4"},
                             stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 300
    while not is_stopped(first.pid):
        assert first.poll() is None, first.communicate()[1]
        assert time.time() < deadline
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    procs = start_together(2, argv, tmp_path)
    for p in procs:
        err = p.communicate(timeout=600)[1]
        assert p.returncode == 0 and "Traceback" not in err, err
    trials = optuna.load_study(study_name="many", storage=url).get_trials()
    attrs = [(t, TrialAttrs.read(t.user_attrs)) for t in trials]
    counting = Counter(a.unit for t, a in attrs if t.state.name in ("COMPLETE", "PRUNED") and a.duplicate_of is None)
    samples = [f"space/sample/{i}" for i in range(4)]
    assert all(counting[u] == 1 for u in samples), counting
    trained = [a.variant for t, a in attrs if a.kind == "sample" and a.duplicate_of is None
               and t.state.name in ("COMPLETE", "PRUNED")]
    assert len(trained) == len(set(trained)) == 4
    killed = [t for t, a in attrs if outcomes.failure_kind(t.state, t.user_attrs) == outcomes.KILLED]
    assert len(killed) == 1
    resumed = [a for t, a in attrs if a.unit == TrialAttrs.read(killed[0].user_attrs).unit and t.state.name == "COMPLETE"]
    assert resumed and resumed[0].resumed_from >= 1  # from the killed trial's checkpoint
    finals = [a for t, a in attrs if a.kind == "final" and t.state.name == "COMPLETE"]
    assert len(finals) == 4 and len({(a.variant, a.seed) for a in finals}) == 4  # 2 finalists x 2 seeds, once each
