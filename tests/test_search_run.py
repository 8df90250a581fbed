"""An architecture search end to end on synthetic data: samples within the budget, none trained
twice, exactly `count` trained; a budget nothing fits is one line."""

from __future__ import annotations

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
[train]
epochs = 1
batch_size = 64
train_subset = 256
val_size = 64
test_subset = 64
augment = []
"""


def _study(sampler="random", objectives='["val_error"]', max_macs=1e12):
    return parse_study(STUDY.format(sampler=sampler, objectives=objectives, max_macs=max_macs))


@pytest.mark.parametrize("sampler, objectives", [("random", '["val_error"]'), ("nsga2", '["val_error", "macs"]')])
def test_a_search_trains_count_distinct_architectures_within_the_budget(tmp_path, sampler, objectives):
    probe = _study()
    info = input_info(probe.info, probe.recipe)
    # A budget between the depth-8 and the depth-14 nets: every depth-14 sample is infeasible.
    macs8 = max(measure(s, info)[1] for s in probe.spaces[0].cheapest_candidates() if s.depth == 8)
    macs14 = min(measure(s, info)[1] for s in probe.spaces[0].cheapest_candidates() if s.depth == 14)
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
    infeasible = samples[~samples["feasible"]]
    assert (infeasible["state"] == "FAIL").all()
    assert set(infeasible["failure_kind"]) <= {"infeasible", "duplicate"}
    assert (infeasible[infeasible["failure_kind"] == "infeasible"]["macs"] > study.sample.max_macs).all()
    if study.sample.multi:
        assert samples["pareto"].sum() >= 1 and not samples[~samples["feasible"]]["pareto"].any()
    else:
        assert samples["best"].sum() == 1


def test_a_budget_nothing_fits_is_one_line(tmp_path):
    study = _study(max_macs=10)
    with pytest.raises(OptionError) as err:
        run_study(study, f"sqlite:///{tmp_path / 'a.db'}", device="cpu", data_dir=tmp_path)
    message = str(err.value)
    assert message.startswith("sample.max_macs: no architecture of space 'space' fits the budget") and "\n" not in message
