"""The study driver: `ablate run` on real Fashion-MNIST into real SQLite files, resume after
SIGKILL, failures recorded, `ablate ls/show/dashboard`."""

from __future__ import annotations

import contextlib
import json
import re
import os
import signal
import socket
import sqlite3
import subprocess
import sys
import time
import urllib.request
from dataclasses import replace
from pathlib import Path

import optuna
import pytest
from conftest import SMALL_STUDY, ablate

import ablate.runs as driver
import ablate.runs.runner as runner
from ablate.runs.options import GRACE_SECONDS
from ablate.spec.study import definition
from ablate.storage import StorageError, open_storage
from ablate.engine.data import FASHION_MNIST_SYSTEM_DIR
from ablate.spec.limits import MAX_LR, MAX_WEIGHT_DECAY
from ablate.spec.study import load_study, parse_study
from ablate.engine.train import train as real_train
from ablate.engine.train import train_runs

ROOT = Path(__file__).resolve().parents[1]
needs_fashion = pytest.mark.skipif(not FASHION_MNIST_SYSTEM_DIR.is_dir(), reason="needs Debian's dataset-fashion-mnist")

SMALL = SMALL_STUDY.read_text()


def ablate(*args: str, cwd: Path, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "ablate", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout)


def write(tmp_path: Path, text: str, name: str = "study.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


# ---------------------------------------------------------------- units and params (no training)


def test_units_search_then_final_runs_per_variant():
    study = parse_study(SMALL)
    units = driver.study_units(study)
    assert len(units) == 4 * (2 + 2)
    first = [(u.variant.name, u.kind, u.index, u.seed) for u in units[:4]]
    assert first == [("plain-8-w4", "search", 0, 0), ("plain-8-w4", "search", 1, 0),
                     ("plain-8-w4", "final", 0, 1), ("plain-8-w4", "final", 1, 2)]
    assert len({u.key for u in units}) == len(units)


def test_params_cover_axes_recipe_and_seed():
    study = parse_study(SMALL)
    dists = driver.distributions(study)
    unit = driver.study_units(study)[0]
    params = driver.fixed_params(study, unit)
    assert "lr" not in params  # searched: sampled by Optuna
    assert {"connection", "activation", "block", "depth", "shortcut", "stem", "width", "blocks", "seed", "epochs", "batch_size"} <= set(params)
    for name, value in params.items():
        assert dists[name]._contains(dists[name].to_internal_repr(value)), name
    final = driver.fixed_params(study, driver.study_units(study)[2], best={"lr": 0.123})
    assert final["lr"] == 0.123 and final["seed"] == 1
    assert dists["shortcut"].choices == ("A", "none")


def test_a_variants_recipe_override_is_in_its_params_and_the_definition(tmp_path):
    study = parse_study(SMALL.replace("[seeds]", """[[variant]]
connection = "residual"
depth = 20
train = { iterations = 40, warmup = "constant", warmup_iterations = 5 }
[seeds]"""))
    assert study.search is not None and driver.objective_metric(study) == "val_error"
    dists = driver.distributions(study)
    units = {(u.variant.name, u.kind, u.index): u for u in driver.study_units(study)}
    r20 = driver.fixed_params(study, units["resnet-20-w4", "final", 0], best={"lr": 0.1})
    r8 = driver.fixed_params(study, units["resnet-8-w4", "final", 0], best={"lr": 0.1})
    assert (r20["iterations"], r20["warmup"], r20["warmup_iterations"]) == (40, "constant", 5) and "epochs" not in r20
    assert r8["epochs"] == 2 and "iterations" not in r8 and r8["warmup"] == "linear"
    for params in (r20, r8):
        for name, value in params.items():
            assert dists[name]._contains(dists[name].to_internal_repr(value)), name
    assert set(driver.param_keys(study, units["resnet-8-w4", "search", 0])) == {*r8}  # lr: searched
    assert json.loads(definition(study))["overrides"] == {"resnet-20-w4": {"iterations": 40, "warmup": "constant", "warmup_iterations": 5}}
    recipe = driver.trial_recipe(study, units["resnet-20-w4", "final", 0], {**r20, "lr": 0.07})
    assert (recipe.iterations, recipe.lr, recipe.train_subset) == (40, 0.07, 512)


def test_sampler_and_pruner_see_only_the_same_variants_search_trials():
    study = optuna.create_study()
    dist = {"lr": optuna.distributions.FloatDistribution(0.01, 1.0)}
    for variant, kind, value in (("a", "search", 0.1), ("a", "final", 0.2), ("b", "search", 0.3), ("a", "search", 0.4)):
        study.add_trial(optuna.trial.create_trial(params={"lr": value}, distributions=dist, value=value,
                                                  user_attrs={"variant": variant, "kind": kind}))
    probe = optuna.trial.create_trial(params={"lr": 0.5}, distributions=dist, value=0.5, user_attrs={"variant": "a", "kind": "search"})
    shadow = driver.same_variant(study, probe, (optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.params["lr"] for t in shadow.get_trials()) == [0.1, 0.4]


def test_definition_changes_are_refused(tmp_path):
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    study = parse_study(SMALL)
    storage = open_storage(url, grace=GRACE_SECONDS)
    driver.create_or_check(study, storage)
    driver.create_or_check(study, storage)  # the same definition: fine
    changed = replace(study, recipe=replace(study.recipe, epochs=3))
    with pytest.raises(StorageError, match=r"made from a different study file \(it differs in: recipe\)"):
        driver.create_or_check(changed, storage)


@pytest.mark.parametrize(
    "url, expected",
    [("nonsense", "is not a database URL"), ("sqlite:////no/such/folder/x.db", "does not exist"),
     ("postgresql+nosuchdriver://u@localhost/db", "--storage:")],
)
def test_bad_storage_urls(url, expected):
    with pytest.raises(StorageError, match=expected):
        open_storage(url)


def test_cli_bad_storage_exits_2(tmp_path):
    result = ablate("ls", "--storage", "nonsense", cwd=tmp_path)
    assert result.returncode == 2 and "Traceback" not in result.stderr and "not a database URL" in result.stderr
    result = ablate("show", "nothing", "--storage", f"sqlite:///{tmp_path / 'absent.db'}", cwd=tmp_path)
    assert result.returncode == 2 and "no such SQLite file" in result.stderr
    assert not (tmp_path / "absent.db").exists()  # reading never creates a storage
    optuna.create_study(study_name="other", storage=f"sqlite:///{tmp_path / 'one.db'}")
    result = ablate("show", "nothing", "--storage", f"sqlite:///{tmp_path / 'one.db'}", cwd=tmp_path)
    assert result.returncode == 2 and "study 'nothing' is not in storage" in result.stderr and "studies there: other" in result.stderr


def test_missing_dataset_is_a_clear_error_before_training(tmp_path):
    study = write(tmp_path, 'name = "c"\ndataset = "cifar10"\n[fixed]\ndepth = 8\n')
    result = ablate("run", str(study), "--storage", f"sqlite:///{tmp_path / 'db.sqlite'}", "--data-dir", str(tmp_path / "none"), "--device", "cpu", cwd=tmp_path, timeout=300)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    assert str(tmp_path / "none") in result.stderr


# ---------------------------------------------------------------- end to end


def test_run_end_to_end_and_again_trains_nothing(small_run):
    """`ablate run` of the small study (trained once per session, tests/conftest.py) on the full files."""
    tmp_path, study_file, result = small_run.folder, SMALL_STUDY, small_run.result
    db = tmp_path / "ablate.db"
    assert result.returncode == 0, result.stderr
    assert db.exists()
    assert "plain-14-w4" in result.stdout and "sqlite:///ablate.db" in result.stdout
    # Not a terminal: no progress display, one line per finished trial.
    assert "\x1b[" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) >= 16 and all(re.match(r"^[\w.-]+/(search|final)/\d+: (complete|pruned) ", line) for line in lines[:16]), lines
    # ... and, when final runs stayed at chance level, one note saying how many (issue 10).
    flat = sum("did_not_learn" in t.user_attrs for t in optuna.load_study(study_name="small", storage=f"sqlite:///{db}").get_trials())
    assert lines[16:] == ([f"note: {flat} final run(s) did not learn (training error at chance level); they are kept out of the "
                           "means and listed in the report's failures section"] if flat else []), lines

    # An independent reader finds everything docs/storage.md promises.
    study = optuna.load_study(study_name="small", storage=f"sqlite:///{db}")
    assert study.user_attrs["study_file"] == SMALL
    assert study.user_attrs["units"] == 16
    assert [v["name"] for v in study.user_attrs["variants"]] == ["plain-8-w4", "plain-14-w4", "resnet-8-w4", "resnet-14-w4"]
    trials = study.get_trials()
    units = {t.user_attrs["unit"] for t in trials}
    assert len(units) == 16 and len(trials) == 16
    for t in trials:
        assert t.state in (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.PRUNED), (t.number, t.state, t.user_attrs.get("failure"))
        for key in ("connection", "activation", "block", "depth", "shortcut", "stem", "width", "blocks", "seed", "lr", "weight_decay", "epochs"):
            assert key in t.params, key
        if t.state == optuna.trial.TrialState.COMPLETE:
            assert sorted(t.intermediate_values) == [1, 2]
            # The search steers on validation error; the test error is recorded, never optimised.
            assert t.value == t.user_attrs["val_error"] == t.intermediate_values[2]
            # Each is counted on its own set: 256 held-out training images, the 10,000 test images.
            # (A run that learned nothing can score the same on both, so the sets are told apart by
            # their grids, not by the values differing.)
            assert 0 < t.user_attrs["test_error"] < 1
            assert t.user_attrs["val_error"] * 256 == pytest.approx(round(t.user_attrs["val_error"] * 256), abs=1e-9)
            assert t.user_attrs["test_error"] * 10_000 == pytest.approx(round(t.user_attrs["test_error"] * 10_000), abs=1e-6)
            for key in ("variant", "params", "macs", "train_error", "test_error", "history", "images_per_second", "device", "versions", "recipe"):
                assert key in t.user_attrs, key
            assert [h["epoch"] for h in t.user_attrs["history"]] == [1, 2]
            assert set(t.user_attrs["history"][0]["grad_norms"]) == {"stem", "stage1", "stage2", "stage3", "head"}
            # 512 images in batches of 32: 16 steps an epoch, each its own point (points_per_epoch = 16).
            points = [pt for h in t.user_attrs["history"] for pt in h["points"]]
            assert [pt["iteration"] for pt in points] == list(range(1, 33))
            assert all(0 <= pt["train_error"] <= 1 and pt["train_loss"] > 0 for pt in points)
            for h in t.user_attrs["history"]:  # equal intervals: the epoch's means are the points' means
                assert h["train_loss"] == pytest.approx(sum(pt["train_loss"] for pt in h["points"]) / len(h["points"]))
                assert h["train_error"] == pytest.approx(sum(pt["train_error"] for pt in h["points"]) / len(h["points"]))
            assert t.user_attrs["data"] == str(FASHION_MNIST_SYSTEM_DIR)  # the full files, not the bundled subset
            assert t.user_attrs["device"] == "cpu" and t.user_attrs["versions"]["optuna"] == optuna.__version__
    off_val_grid = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE
                    and t.user_attrs["test_error"] * 256 != pytest.approx(round(t.user_attrs["test_error"] * 256), abs=1e-9)]
    assert len(off_val_grid) >= 8, "test errors must come from the test set, not the validation split"
    # Final runs repeat the best search trial's learning rate with seeds 1 and 2.
    for variant in ("plain-8-w4", "resnet-14-w4"):
        mine = [t for t in trials if t.user_attrs["variant"] == variant]
        best = min((t for t in mine if t.user_attrs["kind"] == "search" and t.value is not None), key=lambda t: t.value)
        finals = [t for t in mine if t.user_attrs["kind"] == "final"]
        assert sorted(t.params["seed"] for t in finals) == [1, 2]
        assert {t.params["lr"] for t in finals} == {best.params["lr"]}
        assert {t.params["seed"] for t in mine if t.user_attrs["kind"] == "search"} == {0}

    again = ablate("run", str(study_file), "--device", "cpu", cwd=tmp_path)
    assert again.returncode == 0, again.stderr
    after = optuna.load_study(study_name="small", storage=f"sqlite:///{db}").get_trials()
    assert [(t.number, t.datetime_complete) for t in after] == [(t.number, t.datetime_complete) for t in trials]

    listing = ablate("ls", cwd=tmp_path)
    assert listing.returncode == 0 and "small" in listing.stdout and "16/16" in listing.stdout
    shown = ablate("show", "small", cwd=tmp_path)
    assert shown.returncode == 0 and "resnet-14-w4" in shown.stdout and "±" in shown.stdout


RESUME = """
name = "resume"
dataset = "fashion-mnist"
[fixed]
width = 4
[grid]
connection = ["plain", "residual"]
depth = [8]
[train]
epochs = 3
batch_size = 64
lr = 0.05
train_subset = 2048
"""


def running_trial_with_an_epoch(db: Path) -> bool:
    if not db.exists():
        return False
    try:
        with sqlite3.connect(db, timeout=5) as con:
            rows = con.execute(
                "SELECT COUNT(*) FROM trials t JOIN trial_intermediate_values v ON v.trial_id = t.trial_id WHERE t.state = 'RUNNING'"
            ).fetchone()
    except sqlite3.OperationalError:  # tables not created yet
        return False
    return rows[0] > 0


@needs_fashion
def test_sigkill_mid_trial_then_resume(tmp_path):
    study_file = write(tmp_path, RESUME)
    db = tmp_path / "resume.db"
    url = f"sqlite:///{db}"
    args = [sys.executable, "-m", "ablate", "run", str(study_file), "--storage", url, "--device", "cpu", "--grace-period", "4"]
    proc = subprocess.Popen(args, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 300
    while not running_trial_with_an_epoch(db):
        assert proc.poll() is None, proc.stderr.read().decode()
        assert time.time() < deadline, "no trial reached its first epoch"
        time.sleep(0.2)
    os.kill(proc.pid, signal.SIGKILL)  # in the middle of a trial, after its epoch-1 checkpoint
    proc.wait()
    checkpoints = list((tmp_path / "resume.db.checkpoints" / "resume").glob("*.pt"))
    assert len(checkpoints) == 1

    result = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    trials = optuna.load_study(study_name="resume", storage=url).get_trials()
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(t.user_attrs["unit"] for t in complete) == ["plain-8-w4/final/0", "resnet-8-w4/final/0"]
    killed = [t for t in trials if t.state == optuna.trial.TrialState.FAIL]
    assert len(killed) == 1 and "failure" not in killed[0].user_attrs  # detected by the heartbeat
    retry = next(t for t in complete if t.user_attrs["unit"] == killed[0].user_attrs["unit"])
    assert retry.user_attrs["resumed_from"] >= 1  # from the checkpoint, not from scratch
    assert [h["epoch"] for h in retry.user_attrs["history"]] == [1, 2, 3]
    assert sorted(retry.intermediate_values) == [1, 2, 3]
    assert not list((tmp_path / "resume.db.checkpoints" / "resume").glob("*.pt"))  # cleaned up


FAILING = """
name = "failing"
dataset = "fashion-mnist"
[fixed]
width = 4
[grid]
connection = ["plain", "residual"]
depth = [8, 14]
[train]
epochs = 1
batch_size = 64
train_subset = 256
[seeds]
count = 2
"""


@needs_fashion
def test_failures_are_recorded_and_the_study_goes_on(tmp_path, monkeypatch):
    """Fault injection at the engine's entry: three units in a row raise (as an out-of-memory
    error would), one diverges for real (an absurd learning rate given to the real engine)."""
    study = parse_study(FAILING)
    raising = {"plain-8-w4/final/1", "plain-14-w4/final/0", "plain-14-w4/final/1"}
    calls: list[str] = []

    def faulty_train(spec, recipe, data, *, seed, **kw):
        key = f"{spec.name}/final/{seed - 1}"
        calls.append(key)
        if key in raising:
            raise RuntimeError(f"CUDA out of memory (injected for {key})")
        if key == "resnet-8-w4/final/0":
            return real_train(spec, replace(recipe, lr=MAX_LR, weight_decay=MAX_WEIGHT_DECAY, momentum=0.99, batch_size=8, schedule="constant"), data, seed=seed, **kw)
        return real_train(spec, recipe, data, seed=seed, **kw)

    monkeypatch.setattr(runner, "train", faulty_train)  # the engine entry the runner calls
    url = f"sqlite:///{tmp_path / 'f.db'}"
    driver.run_study(study, url, device="cpu", fuse="off")  # one unit at a time, through `train`
    assert len(calls) == 8
    trials = optuna.load_study(study_name="failing", storage=url).get_trials()
    by_unit = {t.user_attrs["unit"]: t for t in trials}
    assert len(by_unit) == len(trials) == 8
    for key in raising:
        assert by_unit[key].state == optuna.trial.TrialState.FAIL
        assert by_unit[key].user_attrs["failure"] == f"RuntimeError: CUDA out of memory (injected for {key})"
    diverged = by_unit["resnet-8-w4/final/0"]
    assert diverged.state == optuna.trial.TrialState.FAIL
    assert diverged.user_attrs["failure"].startswith("diverged: loss became")
    assert diverged.user_attrs["diverged_epoch"] == 1
    ok = [k for k, t in by_unit.items() if t.state == optuna.trial.TrialState.COMPLETE]
    assert sorted(ok) == ["plain-8-w4/final/0", "resnet-14-w4/final/0", "resnet-14-w4/final/1", "resnet-8-w4/final/1"]
    # Recorded failures are results: running again retries nothing.
    calls.clear()
    driver.run_study(study, url, device="cpu", fuse="off")
    assert calls == []


FUSED = FAILING.replace('name = "failing"', 'name = "fused"').replace("count = 2", "count = 3").replace("depth = [8, 14]", "depth = [8]")


@needs_fashion
def test_fused_final_runs_are_stored_as_if_run_one_by_one(tmp_path, monkeypatch):
    """--fuse 2 on three seeds: a fused pair and a run alone per variant; every unit its own trial
    with the same attributes, intermediate values and (up to rounding) errors as without fusion."""
    study = parse_study(FUSED)
    stored = {}
    groups: list[tuple[str, list[int]]] = []  # the real train_runs, recording which seeds it trained together

    def recording(spec, recipe, data, *, seeds, **kw):
        groups.append((spec.name, list(seeds)))
        return train_runs(spec, recipe, data, seeds=seeds, **kw)

    monkeypatch.setattr(runner, "train_runs", recording)
    for fuse in ("off", 2):
        url = f"sqlite:///{tmp_path / f'{fuse}.db'}"
        driver.run_study(study, url, device="cpu", fuse=fuse)
        ostudy = optuna.load_study(study_name="fused", storage=url)
        stored[fuse] = ({t.user_attrs["unit"]: t for t in ostudy.get_trials()}, ostudy.user_attrs["definition"])
    (alone, def_alone), (fused, def_fused) = stored["off"], stored[2]
    # Claimed and trained together: the first two seeds as one network, the third alone.
    assert sorted(groups) == [("plain-8-w4", [1, 2]), ("resnet-8-w4", [1, 2])]
    assert def_alone == def_fused  # an execution choice, not part of the study
    assert sorted(alone) == sorted(fused) and len(fused) == 6
    for key, t in fused.items():
        a = alone[key]
        assert t.state == a.state == optuna.trial.TrialState.COMPLETE
        assert set(t.user_attrs) == set(a.user_attrs) and t.params == a.params
        assert sorted(t.intermediate_values) == sorted(a.intermediate_values) == [1]
        assert t.value == pytest.approx(a.value, abs=0.01)
        assert t.user_attrs["history"][0]["train_loss"] == pytest.approx(a.user_attrs["history"][0]["train_loss"], abs=1e-3)
    # The checkpoints went with their trials.
    assert not list((tmp_path / "2.db.checkpoints" / "fused").glob("*.pt"))
    with pytest.raises(ValueError, match="--fuse: 0 is not valid"):
        driver.run_study(study, f"sqlite:///{tmp_path / 'x.db'}", device="cpu", fuse=0)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dashboard(url: str, cwd: Path):
    """`ablate dashboard` on a free loopback port, serving `url`: yields (port, the /api/studies payload)
    once it answers, and stops it after."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "ablate", "dashboard", "--storage", url, "--port", str(port)],
                            cwd=cwd, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.time() + 60
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies", timeout=5) as response:
                    payload = json.load(response)
                break
            except OSError:
                assert proc.poll() is None, proc.stderr.read().decode()
                assert time.time() < deadline, "optuna-dashboard did not answer"
                time.sleep(0.3)
        yield port, payload
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_dashboard_serves_the_study(tmp_path):
    url = f"sqlite:///{tmp_path / 'd.db'}"
    study = optuna.create_study(study_name="served", storage=url)
    study.set_user_attr("dataset", "fashion-mnist")
    study.add_trial(optuna.trial.create_trial(params={"depth": 20}, distributions={"depth": optuna.distributions.IntDistribution(8, 56)}, value=0.1))
    with dashboard(url, tmp_path) as (port, payload):
        names = [s["study_name"] for s in payload["study_summaries"]]
        assert names == ["served"]
        study_id = payload["study_summaries"][0]["study_id"]
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/api/studies/{study_id}", timeout=10) as response:
            detail = json.load(response)
        assert len(detail["trials"]) == 1 and detail["trials"][0]["params"][0]["name"] == "depth"


def test_parallel_search_sees_the_running_trials_of_its_variant_and_never_itself():
    """TPE's constant liar needs the trials other workers are running: the per-variant shadow
    study holds the variant's RUNNING search trials, not the trial being sampled, nor other variants'."""
    study = optuna.create_study()
    dist = {"lr": optuna.distributions.FloatDistribution(0.01, 1.0)}
    study.add_trial(optuna.trial.create_trial(params={"lr": 0.1}, distributions=dist, value=0.1,
                                              user_attrs={"variant": "a", "kind": "search"}))
    for variant in ("a", "a", "b"):  # running elsewhere
        study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.RUNNING, params={"lr": 0.5}, distributions=dist,
                                                  user_attrs={"variant": variant, "kind": "search"}))
    me = study.get_trials()[1]
    shadow = driver.same_variant(study, me, (optuna.trial.TrialState.COMPLETE, optuna.trial.TrialState.RUNNING))
    # trial 0 (complete) and trial 2 (running elsewhere); never trial 1 (itself) nor trial 3 (another variant's)
    assert sorted(t.state.name for t in shadow.get_trials()) == ["COMPLETE", "RUNNING"]
    sampler = driver.sampler_for(parse_study(SMALL))
    assert sampler.inner._constant_liar
    value = sampler.sample_independent(study, me, "lr", dist["lr"])
    assert 0.01 <= value <= 1.0
