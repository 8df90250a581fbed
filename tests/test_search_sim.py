"""An architecture search's sampler, budget, dedupe and final runs against a simulated objective:
the real runner, storage and Optuna samplers, with training replaced by a known function of the
architecture (no network is trained, so each test takes seconds). What must hold: exactly `count`
architectures trained per space, none over the budget, none twice; a repeat is given its stored
result; the finalists are the best N (or the Pareto set) of what was trained."""

from __future__ import annotations

import json
import math
import urllib.request
from collections import Counter

import optuna
import pytest

from ablate.analysis.results import load_results
from ablate.engine.models import measure
from ablate.engine.train import Epoch, Result
from ablate.runs import run_study
from ablate.runs.options import OptionError
from ablate.spec.recipe import input_info
from ablate.spec.study import parse_study
from ablate.storage import TrialAttrs
from test_driver import dashboard

STUDY = """
name = "sim"
dataset = "synthetic"
[fixed]
stem = "cifar"
[[space]]
connection = ["plain", "residual"]
depth = [8, 14, 20, 32, 44, 56]
width = {{ low = 4, high = 32, log = true }}
[sample]
count = {count}
sampler = "{sampler}"
objectives = {objectives}
max_macs = {max_macs}
{extra}
[seeds]
count = 2
[diagnostics]  # nothing is trained here, so there is nothing to measure
init = false
lesion = false
landscape = "none"
[train]
epochs = 3
train_subset = 256
val_size = 64
test_subset = 64
augment = []
"""


def simulated_error(spec, seed: int) -> float:
    """A design space with a known law: wider is better, depth hurts plain nets (degradation)
    and helps residual ones a little; each seed adds its own small noise."""
    base = 0.08 + 0.4 * math.exp(-spec.width / 8)
    depth = 0.004 * spec.depth if spec.connection == "plain" else -0.0005 * spec.depth
    noise = 0.004 * math.sin(1000 * seed + 7 * spec.depth + spec.width)
    return base + depth + noise


@pytest.fixture()
def simulated(monkeypatch):
    """Training replaced by `simulated_error`, epoch by epoch (the pruner sees every epoch): the
    architectures and seeds it was asked to train, in order."""
    calls: list[tuple[str, int]] = []

    def fit(spec, recipe, data, *, seed, callback, **_):
        calls.append((spec.name, seed))
        final = simulated_error(spec, seed)
        params, macs = measure(spec, input_info(data.info, recipe))
        history = []
        for e in range(1, recipe.epochs + 1):
            err = final + 0.3 / e - 0.1
            epoch = Epoch(epoch=e, train_loss=err, train_error=err, test_error=err, val_error=err, lr=0.1, seconds=0.01,
                          images_per_second=1e4, grad_norms={})
            history.append(epoch)
            if callback is not None:
                callback(epoch)
        return Result(spec=spec, recipe=recipe, seed=seed, device="cpu", params=params, macs=macs, history=tuple(history))

    def fit_runs(spec, recipe, data, *, seeds, callbacks, **kw):
        return [fit(spec, recipe, data, seed=s, callback=c) for s, c in zip(seeds, callbacks)]

    monkeypatch.setattr("ablate.runs.runner.train", fit)
    monkeypatch.setattr("ablate.runs.runner.train_runs", fit_runs)
    return calls


def _run(tmp_path, sampler="tpe", objectives='["val_error"]', count=12, max_macs=20e6, extra=""):
    study = parse_study(STUDY.format(sampler=sampler, objectives=objectives, count=count, max_macs=max_macs, extra=extra))
    url = f"sqlite:///{tmp_path / 'sim.db'}"
    ostudy = run_study(study, url, device="cpu", data_dir=tmp_path, checkpoint_dir=tmp_path / "ckpt")
    return study, url, ostudy


def _check_samples(study, url, ostudy, calls):
    samples = load_results(study.name, url).samples
    trained = samples[samples["feasible"]]
    # Exactly `count` trained, each architecture once (at seed 0), all within the budget.
    assert len(trained) == study.sample.count and trained["name"].is_unique
    seed0 = Counter(name for name, seed in calls if seed == 0)
    assert set(seed0.values()) == {1} and set(seed0) == set(trained["name"])
    assert (trained["macs"] <= study.sample.max_macs).all()
    # Over the budget: recorded with cost and reason, never trained.
    over = samples[samples["failure_kind"] == "infeasible"]
    assert (over["macs"] > study.sample.max_macs).all() and over["params"].notna().all()
    assert over["failure"].str.contains("over the budget max_macs").all() and not set(over["name"]) & set(seed0)
    # A repeat: COMPLETE with the values of the trial that trained it.
    by_number = {t.number: t for t in ostudy.get_trials()}
    for _, r in samples[samples["duplicate_of"].notna()].iterrows():
        assert by_number[r["number"]].values == by_number[int(r["duplicate_of"])].values
    return samples


def test_tpe_trains_count_architectures_once_each_within_the_budget_and_repeats_the_best_three(tmp_path, simulated):
    study, url, ostudy = _run(tmp_path, extra='pruner = "hyperband"')
    samples = _check_samples(study, url, ostudy, simulated)
    complete = samples[samples["feasible"] & (samples["state"] == "COMPLETE")]
    best3 = list(complete.sort_values(["val_error", "number"])["name"][:3])
    finals = Counter(name for name, seed in simulated if seed > 0)
    assert sorted(finals) == sorted(best3) and set(finals.values()) == {2}
    assert {s for _, s in simulated if s > 0} == {1, 2}


def test_nsga2_final_runs_are_the_pareto_set_of_error_and_macs(tmp_path, simulated):
    study, url, ostudy = _run(tmp_path, sampler="nsga2", objectives='["val_error", "macs"]', count=10)
    samples = _check_samples(study, url, ostudy, simulated)
    done = samples[samples["feasible"] & (samples["state"] == "COMPLETE")]
    front = {r["name"] for _, r in done.iterrows()
             if not ((done["val_error"] <= r["val_error"]) & (done["macs"] <= r["macs"])
                     & ((done["val_error"] < r["val_error"]) | (done["macs"] < r["macs"]))).any()}
    assert set(samples[samples["pareto"]]["name"]) == front
    assert {name for name, seed in simulated if seed > 0} == front
    # optuna-dashboard's view: two named objectives; Optuna's own front of the samples agrees.
    assert ostudy.metric_names == ["val_error", "macs"]
    view = optuna.create_study(directions=["minimize", "minimize"])
    view.add_trials([t for t in ostudy.get_trials() if TrialAttrs.read(t.user_attrs).kind == "sample"
                     and TrialAttrs.read(t.user_attrs).duplicate_of is None and t.state.name == "COMPLETE"])
    assert {TrialAttrs.read(t.user_attrs).variant for t in view.best_trials} == front
    # The real optuna-dashboard serves the search with its objectives' names.
    with dashboard(url, tmp_path) as (port, payload):
        (summary,) = payload["study_summaries"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{summary['study_id']}?after=0", timeout=30) as r:
            served = json.load(r)
    assert served["objective_names"] == ["val_error", "macs"] and len(served["trials"]) == len(ostudy.trials)


def test_a_space_with_fewer_feasible_architectures_than_count_stops_with_one_line(tmp_path, simulated):
    # 8 architectures, of which only the two of depth 8 and width 4 fit the budget: fewer than 4.
    text = STUDY.format(sampler="random", objectives='["val_error"]', count=4, max_macs=1.2e6, extra="")
    study = parse_study(text.replace("depth = [8, 14, 20, 32, 44, 56]", "depth = [8, 56]").replace(
        "width = { low = 4, high = 32, log = true }", "width = [4, 32]"))
    with pytest.raises(OptionError) as err:
        run_study(study, f"sqlite:///{tmp_path / 'sim.db'}", device="cpu", data_dir=tmp_path, checkpoint_dir=tmp_path / "ckpt")
    assert str(err.value).startswith("sample.count: ") and "\n" not in str(err.value)
    assert len(set(simulated)) == len(simulated)  # nothing trained twice on the way


def test_growing_count_samples_more_and_keeps_every_trained_architecture(tmp_path, simulated):
    study, url, ostudy = _run(tmp_path, sampler="random", count=6)
    before = set(load_results(study.name, url).samples.query("feasible")["name"])
    first_calls = len(simulated)
    # The same study with more seeds: only the new final runs train.
    grown = parse_study(STUDY.format(sampler="random", objectives='["val_error"]', count=6, max_macs=20e6, extra="").replace(
        "[seeds]\ncount = 2", "[seeds]\ncount = 3"))
    run_study(grown, url, device="cpu", data_dir=tmp_path, checkpoint_dir=tmp_path / "ckpt")
    new = simulated[first_calls:]
    assert {s for _, s in new} == {3} and len(new) == 3
    assert set(load_results(study.name, url).samples.query("feasible")["name"]) == before
    assert optuna.load_study(study_name="sim", storage=url).user_attrs
