"""Study files and `ablate variants`: what a study generates, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ablate.spec.study import StudyError, load_study, parse_study
from ablate.spec.variants import VariantSpec

ROOT = Path(__file__).resolve().parents[1]
STUDIES = sorted((ROOT / "studies").glob("*.toml"))

EXAMPLE = """
name = "degradation-cifar10"
description = "He et al. 2016, Table 6"
dataset = "cifar10"
[fixed]
block = "basic"
activation = "post"
shortcut = "A"
stem = "cifar"
width = 16
[grid]
connection = ["plain", "residual"]
depth = [20, 32, 44, 56]
[[variant]]
connection = "residual"
depth = 110
"""


def ablate(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ablate", *args], capture_output=True, text=True, cwd=cwd or ROOT)


def test_the_issue_example_generates_the_grid_then_the_extras():
    study = parse_study(EXAMPLE)
    assert [s.name for s in study.variants] == [
        "plain-20", "plain-32", "plain-44", "plain-56",
        "resnet-20", "resnet-32", "resnet-44", "resnet-56", "resnet-110",
    ]
    assert study.dataset == "cifar10" and study.info.classes == 10
    assert study.source == EXAMPLE


def test_duplicate_networks_are_generated_once():
    study = parse_study("""
name = "dupes"
dataset = "cifar10"
[grid]
connection = ["plain", "residual"]
shortcut = ["A", "B"]
depth = [20]
[[variant]]
depth = 20
shortcut = "A"
""")
    # plain x {A, B} is one network; the extra variant repeats resnet-20.
    assert [s.name for s in study.variants] == ["plain-20", "resnet-20", "resnet-20-optB"]


def test_fixed_alone_is_one_variant():
    study = parse_study('name = "one"\ndataset = "mnist"\n[fixed]\ndepth = 8\nwidth = 4\n')
    assert study.variants == (VariantSpec(depth=8, width=4),)


def test_variant_tables_override_fixed_axes():
    study = parse_study('name = "o"\ndataset = "svhn"\n[fixed]\ndepth = 20\n[[variant]]\ndepth = 32\n')
    assert [s.depth for s in study.variants] == [32]


@pytest.mark.parametrize("path", STUDIES, ids=lambda p: p.name)
def test_shipped_studies_are_valid(path):
    study = load_study(path)
    assert study.variants or study.is_search
    assert study.name == path.stem


def test_shipped_studies_cover_the_papers():
    names = {p.stem: [s.name for s in load_study(p).variants] for p in STUDIES}
    assert names["degradation-cifar10"] == [
        "plain-20", "plain-32", "plain-44", "plain-56",
        "resnet-20", "resnet-32", "resnet-44", "resnet-56", "resnet-110",
    ]
    assert {"resnet-110", "preact-resnet-110", "resnet-164", "preact-resnet-164"} <= set(names["preact-cifar10"])
    blocks = {s.block for s in load_study(ROOT / "studies/bottleneck-cifar10.toml").variants}
    assert blocks == {"basic", "bottleneck"}
    quick = load_study(ROOT / "studies/quick.toml")
    assert quick.dataset == "fashion-mnist"
    assert {s.connection for s in quick.variants} == {"plain", "residual"}


@pytest.mark.parametrize(
    "text, expected",
    [
        ('name = "x"\ndataset = "cifar10"\n[grid\ndepth = [20]\n', "TOML syntax error: "),
        ('name = "x"\ndataset = "cifar10"\n[grid\ndepth = [20]\n', "line 3"),
        ('dataset = "cifar10"\n[fixed]\ndepth = 20\n', "name: missing"),
        ('name = 3\ndataset = "cifar10"\n', "name: expected a string, got an integer"),
        ('name = "a b"\ndataset = "cifar10"\n', "name: 'a b' is not valid"),
        ('name = "x"\n[fixed]\ndepth = 20\n', "dataset: missing"),
        ('name = "x"\ndataset = "imagenet22k"\n[fixed]\ndepth = 20\n', "dataset: unknown dataset 'imagenet22k'; valid datasets: fashion-mnist, mnist"),
        ('name = "x"\ndataset = "cifar10"\nepochs = 3\n', "epochs: unknown key; valid top-level keys"),
        ('name = "x"\ndataset = "cifar10"\n[fixed]\ndepht = 20\n', "fixed.depht: unknown axis; valid axes: connection, activation"),
        ('name = "x"\ndataset = "cifar10"\n[grid]\ndepth = 20\n', "grid.depth: expected a list of values"),
        ('name = "x"\ndataset = "cifar10"\n[grid]\ndepth = []\n', "grid.depth: empty list"),
        ('name = "x"\ndataset = "cifar10"\n[fixed]\ndepth = 20\n[grid]\ndepth = [20]\n', "grid.depth: also set in [fixed]"),
        ('name = "x"\ndataset = "cifar10"\n[grid]\ndepth = [20, 21]\n', "[grid] point (depth = 21): depth: 21 is not valid for a basic CIFAR-stem net"),
        ('name = "x"\ndataset = "cifar10"\n[grid]\ndepth = [20, 21]\n', "nearest valid depths: 20, 26"),
        ('name = "x"\ndataset = "cifar10"\n[fixed]\nstem = "imagenet"\nblock = "bottleneck"\n[grid]\ndepth = [34]\n', "depth: 34 is not valid for a bottleneck ImageNet-stem net"),
        ('name = "x"\ndataset = "cifar10"\n[fixed]\nwidth = 0\ndepth = 20\n', "[fixed]: width: 0 is not valid; use a positive integer"),
        ('name = "x"\ndataset = "cifar10"\n[[variant]]\ndepth = 20\ncolor = 1\n', "[[variant]] #1.color: unknown axis"),
        ('name = "x"\ndataset = "cifar10"\n[[variant]]\ndepth = 20\n[[variant]]\ndepth = "deep"\n', "[[variant]] #2 (depth = 'deep'): depth: 'deep' is not valid"),
        ('name = "x"\ndataset = "cifar10"\n[fixed]\nconnection = "skip"\ndepth = 20\n', "connection: 'skip' is not valid; use one of 'plain', 'residual'"),
        ('name = "x"\ndataset = "cifar10"\n[fixed]\ndepth = 20\n[train]\ntest_subset = 20000\n', "train.test_subset: 20000 is more than cifar10's 10000 test examples"),
        ('name = "x"\ndataset = "cifar10"\n[fixed]\ndepth = 20\n[seeds]\nfirst = 2\n', "seeds.first: unknown key; [seeds] has count and start"),
        ('name = "x"\ndataset = "cifar10"\n[fixed]\ndepth = 20\n[seeds]\nstart = 0\n', "seeds.start: expected an integer >= 1"),
        ('name = "x"\ndataset = "cifar10"\n[fixed]\ndepth = 20\n[seeds]\nstart = "6"\n', "seeds.start: expected an integer >= 1"),
    ],
)
def test_bad_study_files_get_one_clear_message(text, expected):
    with pytest.raises(StudyError) as info:
        parse_study(text, "bad.toml")
    assert str(info.value).startswith("bad.toml: ")
    assert expected in str(info.value)


def test_cli_lists_variants_as_json():
    result = ablate("variants", "studies/degradation-cifar10.toml", "--json")
    assert result.returncode == 0, result.stderr
    rows = json.loads(result.stdout)
    assert [r["name"] for r in rows][:2] == ["plain-20", "plain-32"]
    assert set(rows[0]) == {"name", "connection", "activation", "block", "depth", "shortcut", "stem", "width", "blocks", "params",
                            "macs", "recipe"}
    resnet20 = next(r for r in rows if r["name"] == "resnet-20")
    assert resnet20["blocks"] == [3, 3, 3] and resnet20["shortcut"] == "A"
    assert round(resnet20["params"] / 1e6, 2) == 0.27
    assert round(resnet20["macs"] / 1e6, 1) == 40.6
    assert next(r for r in rows if r["name"] == "plain-20")["shortcut"] is None


def test_the_degradation_study_resolves_to_he_et_al_recipe():
    # He et al. 2016, Sec. 4.2: all 50k images, batch 128, 64k iterations, lr / 10 at 32k and 48k;
    # ResNet-110 warmed up at a constant 0.01 for about 400 iterations; fp32.
    rows = {r["name"]: r["recipe"] for r in json.loads(ablate("variants", "studies/degradation-cifar10.toml", "--json").stdout)}
    for name, r in rows.items():
        assert (r["train_size"], r["batch_size"], r["iterations"], r["milestones"], r["lr"]) == (50000, 128, 64000, [32000, 48000], 0.1)
        assert r["precision"] == "fp32"
        warm = (r["warmup"], r["warmup_iterations"], r["warmup_lr"])
        assert warm == (("constant", 400, 0.01) if name == "resnet-110" else ("linear", 0, 0.01)), name
    assert rows["plain-20"]["steps_per_epoch"] == 390 and rows["plain-20"]["epochs"] == 165  # the last epoch partial


def test_the_preact_study_warms_every_net_up_as_he_et_al_2016b():
    rows = json.loads(ablate("variants", "studies/preact-cifar10.toml", "--json").stdout)
    assert len(rows) == 4
    for r in rows:
        rec = r["recipe"]
        assert (rec["warmup"], rec["warmup_iterations"], rec["warmup_lr"]) == ("constant", 400, 0.01)
        assert (rec["iterations"], rec["milestones"], rec["train_size"], rec["precision"]) == (64000, [32000, 48000], 50000, "fp32")


OVERRIDE = """name = "o"
dataset = "cifar10"
[grid]
connection = ["plain", "residual"]
depth = [20]
[train]
epochs = 4
[[variant]]
connection = "residual"
depth = 56
train = { iterations = 1000, warmup = "constant", warmup_iterations = 50, lr = 0.05 }
"""


def test_a_variant_carries_its_own_recipe_overrides():
    study = parse_study(OVERRIDE)
    by = {s.name: s for s in study.variants}
    assert study.recipe_for(by["resnet-20"]) == study.recipe
    r56 = study.recipe_for(by["resnet-56"])
    # iterations replace the study's epochs (the other unit of the same thing)
    assert (r56.iterations, r56.epochs, r56.lr, r56.warmup, r56.warmup_iterations) == (1000, None, 0.05, "constant", 50)
    assert study.overrides == {"resnet-56": {"iterations": 1000, "warmup": "constant", "warmup_iterations": 50, "lr": 0.05}}


@pytest.mark.parametrize(
    "text, expected",
    [
        (OVERRIDE.replace("lr = 0.05", "lr = -1"), "[[variant]] #1 (resnet-56): train.lr: -1 is not valid"),
        (OVERRIDE.replace("lr = 0.05", "val_size = 10"), "train.val_size: a data option, shared by the whole study"),
        (OVERRIDE.replace("depth = 56", "depth = 20"), "also another variant of the study with a different recipe"),
        (OVERRIDE.replace("train = {", "train = 3 #"), "[[variant]] #1: train: expected a table of recipe keys"),
        ('name = "x"\ndataset = "cifar10"\n[fixed]\ndepth = 8\n[train]\nepochs = 2\n[search]\ntrials = 2\nlr = { low = 0.01, high = 0.1 }\n',
         "train.val_size: a [search] needs a validation split"),
        ('name = "x"\ndataset = "cifar10"\n[fixed]\ndepth = 8\n[train]\nepochs = 2\niterations = 100\n', "give epochs or iterations, not both"),
        ('name = "x"\ndataset = "cifar10"\n[fixed]\ndepth = 8\n[train]\nmilestones = [0.5]\nmilestone_iterations = [10]\n',
         "give milestones or milestone_iterations, not both"),
        ('name = "x"\ndataset = "cifar10"\n[fixed]\ndepth = 8\n[train]\niterations = 100\nmilestone_iterations = [50, 40]\n',
         "milestone_iterations: [50, 40] is not valid; use increasing optimizer steps"),
        ('name = "x"\ndataset = "cifar10"\n[fixed]\ndepth = 8\n[train]\niterations = 100\nmilestone_iterations = [100]\n',
         "milestone_iterations: 100 is not before the end of training (100 iterations)"),
        ('name = "x"\ndataset = "cifar10"\n[fixed]\ndepth = 8\n[train]\nwarmup = "cubic"\n', "warmup: 'cubic' is not valid; use one of linear, constant"),
        ('name = "x"\ndataset = "cifar10"\n[fixed]\ndepth = 8\n[train]\nprecision = "fp16"\n', "precision: 'fp16' is not valid; use one of auto, bf16, fp32"),
    ],
)
def test_recipe_spellings_and_overrides_are_validated(text, expected):
    with pytest.raises(StudyError) as info:
        parse_study(text, "bad.toml")
    assert expected in str(info.value)


def test_cli_prints_a_table():
    result = ablate("variants", "studies/quick.toml")
    assert result.returncode == 0, result.stderr
    for name in ("plain-8-w8", "resnet-56-w8", "19.1K", "214K", "24M"):
        assert name in result.stdout


@pytest.mark.parametrize(
    "content, expected",
    [
        (None, "study file not found"),
        ('name = "x"\ndataset = "cifar10"\n[grid]\ndepth = [21]\n', "nearest valid depths: 20, 26"),
        ('name = "x"\ndataset = "cifar10"\n[grid\n', "TOML syntax error"),
        ('name = "x"\ndataset = "tiny-imagenet"\n', "unknown dataset"),
    ],
)
def test_cli_errors_exit_2_without_traceback(tmp_path, content, expected):
    path = tmp_path / "study.toml"
    if content is not None:
        path.write_text(content)
    result = ablate("variants", str(path))
    assert result.returncode == 2
    assert "Traceback" not in result.stderr + result.stdout
    assert expected in result.stderr
    assert result.stderr.startswith("error: ")
    assert len(result.stderr.strip().splitlines()) == 1


def test_seeds_start_gives_disjoint_seed_sets():
    import ablate.runs as driver
    from ablate.spec.study import definition

    base = 'name = "x"\ndataset = "cifar10"\n[grid]\nconnection = ["plain", "residual"]\ndepth = [20]\n[seeds]\ncount = 3\n'
    first, second = parse_study(base), parse_study(base + "start = 4\n")
    assert list(first.final_seeds) == [1, 2, 3] and list(second.final_seeds) == [4, 5, 6]
    for study in (first, second):  # every variant runs the same seeds: runs pair by seed
        by_variant = {}
        for unit in driver.study_units(study):
            by_variant.setdefault(unit.variant.name, []).append(unit.seed)
        assert list(by_variant.values()) == [list(study.final_seeds)] * 2
    assert json.loads(definition(second))["first_seed"] == 4  # another study: not resumed from the first's storage
    assert "first_seed" not in json.loads(definition(first))  # storages written before [seeds] start still match
    assert driver.distributions(second)["seed"].high == 6


# ---------------------------------------------------------------- a fast command line

PROBE = """
import sys
from ablate.cli.app import app
try:
    app(sys.argv[1:], prog_name="ablate")
except SystemExit as exit:
    code = exit.code
print(code, sorted({m.split(".")[0] for m in sys.modules} & {"torch", "torchvision", "numpy", "optuna", "pandas", "plotly", "scipy"}))
"""


@pytest.mark.parametrize("args, code", [
    (["--help"], 0),
    (["run", "--help"], 0),
    (["run", "BAD"], 2),
    (["variants", "BAD"], 2),
    (["run", "studies/quick.toml", "--first-seed", "0"], 2),
])
def test_help_and_bad_study_files_do_not_import_torch(tmp_path, args, code):
    """Importing torch takes seconds: help and a bad study file answer without it."""
    bad = tmp_path / "bad.toml"
    bad.write_text('name = "x"\ndataset = "cifar10"\n[grid]\ndepth = [21]\n')
    result = subprocess.run([sys.executable, "-c", PROBE, *(str(bad) if a == "BAD" else a for a in args)],
                            capture_output=True, text=True, cwd=ROOT)
    assert result.stdout.splitlines()[-1] == f"{code} []", result.stdout + result.stderr
    if code == 2:
        assert result.stderr.startswith("error: ") and len(result.stderr.strip().splitlines()) == 1


# ---------------------------------------------------------------- hostile input: bounds, sizes, nesting

BASE = 'name = "x"\ndataset = "fashion-mnist"\n'


@pytest.mark.parametrize(
    "text, expected",
    [
        # Issue 10's probes: each is one line naming the key, the bound and its reason, at once.
        (BASE + "[fixed]\nwidth = 1000000000\ndepth = 20\n", "width: 1000000000 is too wide; use at most 1024 (over six times WRN-28-10's 160"),
        (BASE + "[grid]\ndepth = [9223372036854775808]\n", "depth: 9223372036854775808 is too deep; a basic CIFAR-stem net has at most 2402 layers"),
        (BASE + f"[fixed]\ndepth = {2**64}\n", f"depth: {2**64} is too deep"),
        (BASE + "[fixed]\nblocks = [100000000, 1, 1]\n", "blocks: 100000000 blocks in one stage is too many; use at most 400 per stage (twice ResNet-1202's 200"),
        (BASE + "[grid]\ndepth = [" + ", ".join(str(6 * n + 2) for n in range(1, 400)) + "]\n", "grid.depth: a list of 399 values; use at most 256"),
        (BASE + "[grid]\ndepth = [" + ", ".join(str(6 * n + 2) for n in range(150, 170)) + "]\n", "blocks in all; use at most 5000 (about eight ResNet-1202s"),
        (BASE + "[grid]\nwidth = [" + ", ".join(map(str, range(1, 21))) + "]\ndepth = [8, 14, 20, 26, 32, 38, 44, 50, 56, 62, 68, 74, 80, 86]\n",
         "[grid]: 280 grid points and 0 [[variant]] tables make 280 variants; use at most 256"),
        (BASE + "[fixed]\ndepth = 8\n[train]\nepochs = 99999999999999999999999\n", "train.epochs: 99999999999999999999999 is too many; use at most 10000"),
        (BASE + "[fixed]\ndepth = 8\n[seeds]\ncount = 1000000000\n", "seeds.count: 1000000000 is too many; use at most 100"),
        (BASE + "[fixed]\ndepth = 8\n[search]\ntrials = 1000000000\nlr = { low = 0.01, high = 0.1 }\n", "search.trials: 1000000000 is too many; use at most 1000"),
        (BASE + "[grid]\ndepth = [8, 14, 20]\nwidth = [4, 8, 16, 32, 64, 128, 256]\n[train]\nval_size = 1000\n[search]\ntrials = 1000\nlr = { low = 0.01, high = 0.1 }\n[seeds]\ncount = 100\n",
         "make 23100 trials; use at most 20000"),
        (BASE + "[fixed]\ndepth = 8\n[train]\nbatch_size = 1000000000\n", "train.batch_size: 1000000000 is too large; use at most 32768"),
        (BASE + "[fixed]\ndepth = 8\n[train]\nbatch_size = 32768\nval_size = 40000\n", "train.batch_size: 32768 is more than the 20000 training examples"),
        (BASE + "[fixed]\ndepth = 8\n[train]\nlr = 1e308\n", "train.lr: 1e+308 is too large; use a learning rate of at most 10"),
        (BASE + "[fixed]\ndepth = 8\n[train]\nlr = inf\n", "train.lr: inf is not valid; use a finite number"),
        (BASE + "[fixed]\ndepth = 8\n[train]\nlr = -0.1\n", "train.lr: -0.1 is not valid"),
        (BASE + "[fixed]\ndepth = 8\n[train]\nlr = 0.0\n", "train.lr: 0.0 is not valid; use a learning rate > 0"),
        (BASE + "[fixed]\ndepth = 8\n[train]\ntrain_subset = 1\n", "train.train_subset: 1 examples is less than one batch (128)"),
        (BASE + "[fixed]\ndepth = 8\n[train]\ntrain_subset = 256\n[search]\ntrials = 2\nbatch_size = { low = 64, high = 512 }\n",
         "search.batch_size: 512 would not be a valid recipe: train_subset: 256 examples is less than one batch (512)"),
        (BASE + "[fixed]\ndepth = 8\n[search]\ntrials = 2\nbatch_size = { low = 64, high = 100000 }\n", "search.batch_size: 100000 would not be a valid recipe: batch_size: 100000 is too large"),
        (BASE + "[fixed]\ndepth = 8\n[search]\ntrials = 2\nnesterov = { choices = [1] }\n", "nesterov: 1 is not valid; use true or false"),
        (BASE + "x = " + "{a=" * 500 + "1" + "}" * 500 + "\n", "TOML: values nested too deeply to read"),
        (BASE + "[fixed]\ndepth = " + "[" * 1000 + "]" * 1000 + "\n", "TOML: values nested too deeply to read"),
        (BASE + "[fixed]\ndepth = " + "[" * 20 + "]" * 20 + "\n", "fixed.depth[0][0][0][0][0]: nested 7 deep; a study file nests tables and lists at most 6 deep"),
        (BASE + "[fixed]\ndepth = " + "9" * 5000 + "\n", "TOML: a value cannot be read: Exceeds the limit (4300 digits)"),
        (BASE + '"a\\nb" = 1\n', "'a\\nb' is not a valid key"),
        (BASE + 'description = "' + "d" * 10_001 + '"\n', "description: a string of 10001 characters; use at most 10000"),
        (BASE + '[fixed]\nconnection = "' + "p" * 201 + '"\n', "fixed.connection: a string of 201 characters; use at most 200"),
        (BASE + "# " + "c" * (1 << 20) + "\n", "a study file may have at most 1048576"),
        # Issue 19's: numbers that passed, then broke the run, the summary or the stored seeds.
        (BASE + "[fixed]\ndepth = 8\n[seeds]\nstart = 9223372036854775807\n",
         "seeds.start: 9223372036854775807 is too large; use at most 2147483547 (the final runs' seeds, start to start + count - 1"),
        (BASE + "[fixed]\ndepth = 8\n[train]\npoints_per_epoch = 1000000000\n",
         "train.points_per_epoch: 1000000000 is too many; use at most 1000 (each point is a record in the trial's stored history"),
        (BASE + "[fixed]\ndepth = 8\n[train]\nlr = 1" + "0" * 400 + "\n", "train.lr: 100000000000...(401 digits) is too large; use a learning rate of at most 10"),
        (BASE + "[fixed]\ndepth = 8\n[train]\nweight_decay = 1e300\n", "train.weight_decay: 1e+300 is too large; use at most 1 (ResNets use 1e-4 to 5e-4"),
        (BASE + "[fixed]\ndepth = 8\n[train]\ngamma = 10.0\n", "train.gamma: 10.0 is too large; use at most 1 (the step schedule"),
        (BASE + "[fixed]\ndepth = 8\n[train]\niterations = 100\nwarmup_epochs = 1e300\n", "train.warmup_epochs: 1e+300 is too many; use at most 10000"),
        (BASE + "[fixed]\ndepth = 8\n[train]\nmilestone_iterations = [99999999999999999999]\n",
         "train.milestone_iterations: 99999999999999999999 is too late; use steps of at most 3910000"),
        (BASE + "[fixed]\ndepth = 8\n[search]\ntrials = 2\nlr = { low = 0.1, high = 1" + "0" * 400 + " }\n",
         "search.lr: 100000000000...(401 digits) would not be a valid recipe: lr: 100000000000...(401 digits) is too large"),
    ],
)
def test_hostile_study_files_get_one_clear_message(text, expected):
    with pytest.raises(StudyError) as info:
        parse_study(text, "bad.toml")
    message = str(info.value)
    assert message.startswith("bad.toml: ") and "\n" not in message
    assert expected in message


@pytest.mark.parametrize("extra, args, expected", [
    ("[seeds]\nstart = 9223372036854775807\n", [], "error: study.toml: seeds.start: 9223372036854775807 is too large; use at most 2147483547 ("),
    ("", ["--first-seed", "9223372036854775807"], "error: --first-seed: 9223372036854775807 is too large; use at most 2147483547 ("),
    ("[train]\npoints_per_epoch = 1000000000\n", [], "error: study.toml: train.points_per_epoch: 1000000000 is too many; use at most 1000 ("),
])
def test_ablate_run_refuses_numbers_past_their_bound_in_one_line(tmp_path, extra, args, expected):
    """Issue 19: both used to train, then end in a traceback in the summary (and every later show/report)."""
    (tmp_path / "study.toml").write_text(BASE + "[fixed]\nwidth = 4\ndepth = 8\n" + extra)
    result = ablate("run", "study.toml", "--storage", "sqlite:///a.db", *args, cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr, result.stderr
    assert result.stderr.startswith(expected) and len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert not (tmp_path / "a.db").exists()  # refused before anything is stored


def test_the_largest_seeds_are_stored_exactly(tmp_path):
    """The seed of the last final run of the largest allowed [seeds] start, as a trial param and an
    attribute: the integer itself (a float would have made 2**63 - 1 into 2**63)."""
    import optuna

    from ablate import storage as S
    from ablate.runs import distributions, fixed_params, study_units
    from ablate.spec.limits import MAX_FIRST_SEED, MAX_SEED, MAX_SEEDS

    study = parse_study(BASE + f"[fixed]\nwidth = 4\ndepth = 8\n[seeds]\nstart = {MAX_FIRST_SEED}\ncount = {MAX_SEEDS}\n")
    unit = study_units(study)[-1]
    assert unit.seed == study.final_seeds[-1] == MAX_SEED - 1
    storage = S.open_storage(f"sqlite:///{tmp_path / 'seeds.db'}", grace=30)
    ostudy = optuna.create_study(study_name=study.name, storage=storage)
    dists = distributions(study)
    params = {k: v for k, v in fixed_params(study, unit).items() if k in dists}
    candidate = S.Candidate(unit.key, "RUNNING", params, {k: dists[k] for k in params}, S.unit_attrs(unit, S.Worker.here("cpu")))
    assert S.claim(storage, ostudy, [candidate], lambda records: {unit.key})
    (trial,) = optuna.load_study(study_name=study.name, storage=f"sqlite:///{tmp_path / 'seeds.db'}").get_trials()
    assert type(trial.params["seed"]) is int and trial.params["seed"] == unit.seed
    assert S.TrialAttrs.read(trial.user_attrs).seed == unit.seed


def test_the_largest_allowed_values_make_a_valid_study():
    study = parse_study(BASE + "[fixed]\nwidth = 1024\nblocks = [400, 400, 400]\n[train]\nepochs = 10000\nbatch_size = 32768\nlr = 10.0\n[seeds]\ncount = 100\n")
    assert study.variants[0].depth == 2402 and study.recipe.epochs == 10_000 and study.seeds == 100


def test_nearest_depths_are_exact_integers():
    with pytest.raises(StudyError, match=r"nearest valid depths: 2396, 2402$"):
        parse_study(BASE + "[fixed]\ndepth = 2401\n", "bad.toml")


def test_a_study_file_over_the_size_limit_is_not_read_whole(tmp_path):
    from ablate.spec.limits import MAX_STUDY_BYTES

    path = tmp_path / "big.toml"
    path.write_bytes(b"#" * (MAX_STUDY_BYTES + 10))
    with pytest.raises(StudyError, match=f"larger than {MAX_STUDY_BYTES} bytes"):
        load_study(path)


@pytest.mark.parametrize(
    "text, expected",
    [
        (BASE + '[fixed]\nwidth = "[/x]"\ndepth = 20\n', "error: bad.toml: [fixed]: width: '[/x]' is not valid"),
        (BASE + '[fixed]\nwidth = "[bold red]wide[/]"\ndepth = 20\n', "width: '[bold red]wide[/]' is not valid"),
        (BASE + "[grid]\ndepth = [20, 21]\n", "error: bad.toml: [grid] point (depth = 21): depth: 21 is not valid"),
        (BASE + '[grid]\nconnection = ["[link=http://x]y[/link]"]\ndepth = [20]\n', "[grid] point (connection = '[link=http://x]y[/link]', depth = 20): connection"),
    ],
)
def test_errors_print_the_users_text_literally(tmp_path, monkeypatch, text, expected):
    """Rich markup in a value (or in ablate's own `[grid]`) is printed as written, never interpreted."""
    from typer.testing import CliRunner

    from ablate.cli.app import app

    monkeypatch.chdir(tmp_path)
    Path("bad.toml").write_text(text)
    result = CliRunner().invoke(app, ["variants", "bad.toml"])
    assert result.exit_code == 2 and isinstance(result.exception, SystemExit)
    assert expected in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_cli_prints_bracketed_values_literally_from_a_real_process(tmp_path):
    path = tmp_path / "bad.toml"
    path.write_text(BASE + '[fixed]\nwidth = "[/x]"\ndepth = 20\n')
    result = ablate("variants", str(path))
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr == f"error: {path}: [fixed]: width: '[/x]' is not valid; use a positive integer (default 16)\n"
