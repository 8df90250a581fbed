"""Several design spaces end to end: the [sample] rules for comparing spaces, each sample drawn
from its own space (no training), and a tiny two-space study run, reported and exported by the CLI."""

from __future__ import annotations

import optuna
import pandas as pd
import pytest

from ablate.runs.scheduling import study_units
from ablate.runs.setup import PerSpaceSampler, space_distributions, suggest
from ablate.spec.study import StudyError, parse_study
from ablate.storage import unit_attrs
from conftest import ablate

STUDY = """
name = "spaces-tiny"
dataset = "synthetic"
[fixed]
width = 4
[[space]]
name = "plain"
connection = ["plain"]
depth = [8, 14]
width = {{ low = 2, high = 6 }}
[[space]]
name = "residual"
connection = ["residual"]
depth = [8, 14]
width = {{ low = 3, high = 8, log = true }}
[sample]
count = {count}
{sampler}
[train]
epochs = 1
batch_size = 64
train_subset = 128
val_size = 64
test_subset = 64
augment = []
"""


def _text(count=3, sampler='sampler = "random"'):
    return STUDY.format(count=count, sampler=sampler).replace("[fixed]\nwidth = 4\n", "")


ONE_SPACE = 'name = "s"\ndataset = "synthetic"\n[train]\nval_size = 64\n[[space]]\ndepth = [8, 14]\n[sample]\ncount = 2\n'


@pytest.mark.parametrize("text, expected", [
    (_text(sampler='sampler = "tpe"'), "sample.sampler: 'tpe' cannot compare 2 spaces: it favours the good regions"),
    (_text(sampler='sampler = "nsga2"'), "sample.sampler: 'nsga2' cannot compare 2 spaces"),
    (_text(sampler='pruner = "median"'), "sample.pruner: 'median' cannot be used with 2 spaces: a pruned model's error"),
    (ONE_SPACE + 'sampler = "qmc"\npruner = "hyperband"\n', "sample.pruner: 'hyperband' cannot be used with sampler = \"qmc\""),
])
def test_spaces_are_compared_only_from_unbiased_fully_trained_samples(text, expected):
    with pytest.raises(StudyError) as err:
        parse_study(text, "s.toml")
    message = str(err.value)
    assert message.startswith("s.toml: ") and expected in message and "\n" not in message


def test_several_spaces_sample_at_random_by_default():
    assert parse_study(_text(sampler="")).sample.sampler == "random"


@pytest.mark.parametrize("sampler", ["random", "qmc"])
def test_each_sample_is_drawn_from_its_own_space(sampler):
    """The study-wide distributions span both spaces; a sample never takes the other space's values."""
    study = parse_study(_text(count=16, sampler=f'sampler = "{sampler}"'))
    dists = space_distributions(study)
    ostudy = optuna.create_study(sampler=PerSpaceSampler(study))
    drawn = {"plain": [], "residual": []}
    for unit in study_units(study):
        trial = ostudy.ask()
        for k, v in unit_attrs(unit).items():
            trial.set_user_attr(k, v)
        values = {a.key: suggest(trial, a.key, dists[a.key]) for a in study.spaces[0 if unit.space == "plain" else 1].axes}
        drawn[unit.space].append(values)
        ostudy.tell(trial, 0.5)
    plain, residual = pd.DataFrame(drawn["plain"]), pd.DataFrame(drawn["residual"])
    assert set(plain["connection"]) == {"plain"} and set(residual["connection"]) == {"residual"}
    assert plain["width"].between(2, 6).all() and residual["width"].between(3, 8).all()
    assert set(plain["depth"]) == {8, 14} and plain["width"].nunique() >= 4
    if sampler == "qmc":  # 16 Sobol points: each half of a range holds about half of them
        assert 5 <= (plain["depth"] == 8).sum() <= 11


def test_a_two_space_study_runs_reports_and_exports(tmp_path):
    path = tmp_path / "spaces.toml"
    path.write_text(_text(count=3))
    run = ablate("run", str(path), "--device", "cpu", "--data-dir", str(tmp_path), cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    page = (tmp_path / "reports" / "spaces-tiny.html").read_text()
    assert '<section id="spaces"><h2>Design spaces</h2>' in page
    assert "between the plain and residual spaces" in page or "space is better than the" in page
    out = ablate("export", "spaces-tiny", "--out-dir", str(tmp_path / "out"), cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    spaces = pd.read_csv(tmp_path / "out" / "spaces-tiny-spaces.csv")
    assert list(spaces.columns) == ["space_a", "space_b", "statistic", "p_value", "p_adjusted", "method", "real",
                                    "n_a", "n_b", "n_eff_a", "n_eff_b"]
    assert len(spaces) == 1 and {spaces["space_a"][0], spaces["space_b"][0]} == {"plain", "residual"}
    edf = pd.read_csv(tmp_path / "out" / "spaces-tiny-edf.csv")
    assert list(edf.columns) == ["space", "error", "edf", "edf_low", "edf_high", "normalised"]
    assert set(edf["space"]) == {"plain", "residual"} and edf["edf"].between(0, 1).all()


def test_a_run_warns_first_when_spaces_overlap_too_little(tmp_path):
    """The warning comes from the spaces' cheapest and priciest candidates, before anything
    trains (here the budget then stops the run at once)."""
    text = _text().replace("width = { low = 2, high = 6 }", "width = { low = 2, high = 3 }")
    text = text.replace('sampler = "random"', 'sampler = "random"\nmax_macs = 10')
    path = tmp_path / "apart.toml"
    path.write_text(text)
    run = ablate("run", str(path), "--device", "cpu", "--data-dir", str(tmp_path), cwd=tmp_path, timeout=120)
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert lines[0].startswith("warning: the spaces' MACs ranges") and "plain" in lines[0], run.stderr
    assert lines[-1].startswith("error: sample.max_macs: no architecture of space")
