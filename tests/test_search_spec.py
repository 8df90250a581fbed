"""Architecture search study files: [[space]] and [sample] parse, and every mistake is one line naming the key."""

from __future__ import annotations

import pytest

from ablate.spec.study import StudyError, definition, parse_study

HEAD = 'name = "s"\ndataset = "synthetic"\n[train]\nepochs = 1\nval_size = 128\ntrain_subset = 256\n'
SPACE = '[[space]]\nconnection = ["plain", "residual"]\ndepth = [8, 14]\nwidth = { low = 2, high = 8, log = true }\n'
SAMPLE = '[sample]\ncount = 4\n'


def test_a_space_study_parses_with_its_defaults():
    study = parse_study(HEAD + SPACE + SAMPLE)
    assert study.is_search and study.variants == ()
    (space,) = study.spaces
    assert space.name == "space" and [a.key for a in space.axes] == ["connection", "depth", "width"]
    assert space.axes[2].low == 2 and space.axes[2].high == 8 and space.axes[2].log
    assert study.sample.count == 4 and study.sample.sampler == "tpe" and study.sample.objectives == ("val_error",)
    assert '"spaces"' in definition(study)


def test_final_runs_of_the_finalists_are_declared_with_seeds():
    study = parse_study(HEAD + SPACE + '[sample]\ncount = 5\nfinalists = 2\n[seeds]\ncount = 3\nstart = 4\n')
    assert study.sample.finalists == 2 and study.seeds == 3 and list(study.final_seeds) == [4, 5, 6]
    assert parse_study(HEAD + SPACE + '[sample]\ncount = 2\n').sample.finalists == 2  # the default 3, at most count
    assert '"finalists": 2' in definition(study)


def test_two_objectives_and_a_budget():
    study = parse_study(HEAD + SPACE + '[sample]\ncount = 3\nsampler = "nsga2"\nobjectives = ["val_error", "macs"]\nmax_macs = 30e6\n')
    assert study.sample.multi and study.sample.max_macs == 30e6
    assert study.sample.over_budget(10, 31_000_000) is not None and study.sample.over_budget(10, 29_000_000) is None


@pytest.mark.parametrize("text, expected", [
    (HEAD + SPACE, "sample: missing"),
    (HEAD + SAMPLE, "[sample] needs at least one [[space]]"),
    (HEAD + SPACE + SAMPLE + '[grid]\ndepth = [8]\n', "grid: [grid] and [[space]] cannot be in one study"),
    (HEAD + SPACE + SAMPLE + '[search]\ntrials = 2\nlr = { low = 0.01, high = 0.1 }\n', "search: [search] (recipe tuning)"),
    (HEAD + '[[space]]\ndepth = [8, 15]\n' + SAMPLE, "space.depth: 15 is not valid"),
    (HEAD + '[[space]]\nblock = ["basic", "bottleneck"]\ndepth = [8]\n' + SAMPLE, "space.depth: 8 is not valid"),
    (HEAD + '[[space]]\ndepth = { low = 8, high = 20 }\n' + SAMPLE, "space.depth: a range is only for width"),
    (HEAD + '[[space]]\ndepth = [8]\nwidth = { low = 8, high = 4 }\n' + SAMPLE, "space.width: low (8) must be less than high (4)"),
    (HEAD + '[[space]]\ndepth = [8]\nwidth = { low = 2.5, high = 4 }\n' + SAMPLE, "space.width.low: expected a positive integer"),
    (HEAD + '[[space]]\ndepth = [8]\ncolour = ["red"]\n' + SAMPLE, "space.colour: unknown axis"),
    (HEAD + '[[space]]\ndepth = [8]\n[[space]]\ndepth = [14]\n' + SAMPLE, "[[space]] #1.name: missing"),
    (HEAD + SPACE + '[sample]\ncount = 0\n', "sample.count: expected a positive integer"),
    (HEAD + SPACE + '[sample]\ncount = 2\nsampler = "grid"\n', "sample.sampler: 'grid' is not valid"),
    (HEAD + SPACE + '[sample]\ncount = 2\nobjectives = ["test_error"]\n', "sample.objectives: the first objective"),
    (HEAD + SPACE + '[sample]\ncount = 2\nobjectives = ["val_error", "flops"]\n', "sample.objectives: ['val_error', 'flops'] is not valid"),
    (HEAD + SPACE + '[sample]\ncount = 2\nmax_macs = -1\n', "sample.max_macs: expected a positive number"),
    (HEAD + SPACE + '[sample]\ncount = 2\nobjectives = ["val_error", "macs"]\npruner = "hyperband"\n',
     "sample.pruner: 'hyperband' cannot prune a multi-objective search"),
    (HEAD + SPACE + '[sample]\ncount = 2\npruner = "sha"\n', "sample.pruner: 'sha' is not valid"),
    (HEAD + SPACE + '[sample]\ncount = 2\nbudget = 3\n', "sample.budget: unknown key"),
    (HEAD + SPACE + '[sample]\ncount = 2\nobjectives = ["val_error", "macs"]\nfinalists = 2\n',
     "sample.finalists: a multi-objective search gives its Pareto set final runs"),
    (HEAD + SPACE + '[sample]\ncount = 2\nfinalists = 3\n', "sample.finalists: expected an integer from 1 to 2"),
    (HEAD + SPACE + SAMPLE + '[seeds]\ncount = 0\n', "seeds.count: expected a positive integer"),
    ('name = "s"\ndataset = "synthetic"\n[train]\nepochs = 1\n' + SPACE + SAMPLE, "train.val_size: a [[space]] search"),
])
def test_mistakes_are_one_line_naming_the_key(text, expected):
    with pytest.raises(StudyError) as err:
        parse_study(text, "s.toml")
    message = str(err.value)
    assert expected in message and "\n" not in message and message.startswith("s.toml: ")
