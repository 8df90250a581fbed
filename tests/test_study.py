"""Study files and `ablate variants`: what a study generates, and clear errors for bad input."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from ablate.study import StudyError, load_study, parse_study
from ablate.variants import VariantSpec

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
    assert study.variants
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
    assert set(rows[0]) == {"name", "connection", "activation", "block", "depth", "shortcut", "stem", "width", "blocks", "params", "macs"}
    resnet20 = next(r for r in rows if r["name"] == "resnet-20")
    assert resnet20["blocks"] == [3, 3, 3] and resnet20["shortcut"] == "A"
    assert round(resnet20["params"] / 1e6, 2) == 0.27
    assert round(resnet20["macs"] / 1e6, 1) == 40.6
    assert next(r for r in rows if r["name"] == "plain-20")["shortcut"] is None


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
    from ablate import driver

    base = 'name = "x"\ndataset = "cifar10"\n[grid]\nconnection = ["plain", "residual"]\ndepth = [20]\n[seeds]\ncount = 3\n'
    first, second = parse_study(base), parse_study(base + "start = 4\n")
    assert list(first.final_seeds) == [1, 2, 3] and list(second.final_seeds) == [4, 5, 6]
    for study in (first, second):  # every variant runs the same seeds: runs pair by seed
        by_variant = {}
        for unit in driver.study_units(study):
            by_variant.setdefault(unit.variant.name, []).append(unit.seed)
        assert list(by_variant.values()) == [list(study.final_seeds)] * 2
    assert json.loads(driver.definition(second))["first_seed"] == 4  # another study: not resumed from the first's storage
    assert "first_seed" not in json.loads(driver.definition(first))  # storages written before [seeds] start still match
    assert driver.distributions(second)["seed"].high == 6


# ---------------------------------------------------------------- a fast command line

PROBE = """
import sys
from ablate.cli import app
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
