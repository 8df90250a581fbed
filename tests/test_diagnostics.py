"""The "why" diagnostics (issue 22): each measurement on tiny nets with a known answer, the
[diagnostics] table, a run killed during the diagnostics, and the tables and the report's Why
section on the quick study that the session trains once (conftest.py)."""

from __future__ import annotations

import contextlib
import html
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import optuna
import pandas as pd
import pytest
import torch
from optuna.trial import TrialState
from torch import nn

from ablate import failpoints
from ablate.analysis import load_results, mean_ci
from ablate.engine import build_model
from ablate.engine import diagnostics as D
from ablate.report import render, write_tables
from ablate.spec import DATASETS, Diagnostics, StudyError, definition, make_variant, parse_study
from ablate.spec.limits import MAX_DIAGNOSTIC_IMAGES

INFO = DATASETS["synthetic"]  # 3 channels, 10 classes, 16 px


def _net(connection: str, depth: int = 14, seed: int = 0) -> nn.Sequential:
    torch.manual_seed(seed)
    return build_model(make_variant({"connection": connection, "depth": depth, "width": 4}), INFO)


def _batch(n: int = 64, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 16, 16, generator=g), torch.randint(0, 10, (n,), generator=g)


# ---------------------------------------------------------------- the measurements, with known answers


def test_a_residual_net_whose_branches_are_zeroed_loses_nothing_to_any_lesion():
    model = _net("residual")
    x, y = _batch()
    D.calibrate_bn(model, x)
    for stage in ("stage1", "stage2", "stage3"):
        for unit in getattr(model, stage):
            bn = unit.body[-1]  # post-activation: the branch ends in BN; zero it and the branch is 0
            nn.init.zeros_(bn.weight)
            nn.init.zeros_(bn.bias)
    out = D.lesion(model, x, y)
    assert len(out["blocks"]) == 4  # resnet-14: 2 blocks a stage, the first of stages 2 and 3 downsample
    assert all(b["increase"] == 0.0 and b["error"] == out["error"] for b in out["blocks"])


def test_lesion_of_a_plain_net_replaces_the_block_by_the_identity():
    """Against the naive lesion (the block swapped for nn.Identity, the whole net rerun)."""
    model = _net("plain")
    x, y = _batch(96)
    D.calibrate_bn(model, x)
    out = D.lesion(model, x, y)
    assert [b["block"] for b in out["blocks"]] == ["stage1.0", "stage1.1", "stage2.1", "stage3.1"]
    for b in out["blocks"]:
        stage, i = b["block"].split(".")
        seq = getattr(model, stage)
        unit, seq[int(i)] = seq[int(i)], nn.Identity()
        assert D.error_of(model, x, y) == b["error"]
        seq[int(i)] = unit
    assert D.error_of(model, x, y) == out["error"]


def test_a_linear_net_has_gradient_correlation_one_at_every_lag():
    model = nn.Sequential(nn.Flatten(), nn.Linear(3 * 16 * 16, 10)).eval()
    x, y = _batch(16)
    out = D.shattered_gradients(model, x, y, 64, torch.Generator().manual_seed(0))
    assert out["lags"] == list(range(33)) and out["lag_below_half"] is None
    assert out["correlation"] == pytest.approx([1.0] * 33, abs=1e-9)


def test_white_noise_has_no_gradient_correlation_past_lag_zero():
    corr = D.gradient_autocorrelation(torch.randn(2000, 256, generator=torch.Generator().manual_seed(1)), 8)
    assert corr[0] == pytest.approx(1.0)
    assert max(abs(c) for c in corr[1:]) < 0.02


def test_shattered_gradients_use_batch_norm_in_eval_mode_with_real_statistics():
    """calibrate_bn sets every running statistic to the real images' own and leaves eval mode, so a
    point's gradient does not depend on the other points of its line."""
    model = _net("plain", depth=8)
    x, _ = _batch(64)
    D.calibrate_bn(model, x)
    assert not model.training
    stem_out = model.stem[0](x)  # the first BN normalises the stem conv's output
    bn = model.stem[1]
    assert torch.allclose(bn.running_mean, stem_out.mean(dim=(0, 2, 3)), atol=1e-5)
    assert torch.allclose(bn.running_var, stem_out.var(dim=(0, 2, 3), unbiased=True), rtol=1e-4)
    a, b = x[0], x[1]
    line = D.line_gradients(model, a, b, 3, 8)
    point = a[None].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(point)[0, 3], point)
    assert torch.allclose(line[0], g[0], atol=1e-6)  # the line's first point, alone


def test_a_filter_normalised_direction_has_each_filters_norm_and_zero_elsewhere():
    model = _net("residual")
    state = model.state_dict()
    for p in model.parameters():  # weights unlike the initial ones
        with torch.no_grad():
            p.add_(torch.randn_like(p))
    state = model.state_dict()
    d = D.filter_normalized_direction(state, torch.Generator().manual_seed(0))
    assert d.keys() == state.keys()
    for k, w in state.items():
        if w.dim() > 1:
            dims = tuple(range(1, w.dim()))
            assert torch.allclose(torch.linalg.vector_norm(d[k], dim=dims), torch.linalg.vector_norm(w, dim=dims), rtol=1e-5), k
            assert not torch.equal(d[k], w)
        else:  # biases, BN weights and biases, running statistics, step counters
            assert not d[k].any(), k


def test_the_1d_slice_at_zero_is_the_models_loss_and_the_model_is_restored():
    model = _net("plain")
    x, y = _batch()
    D.calibrate_bn(model, x)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    d = D.filter_normalized_direction(model.state_dict(), torch.Generator().manual_seed(0))
    pts = D.landscape_1d(model, x, y, d)
    assert [p["alpha"] for p in pts] == list(D.ALPHAS_1D) and 0.0 in D.ALPHAS_1D
    assert next(p["loss"] for p in pts if p["alpha"] == 0) == D.loss_of(model, x, y)
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert pts[0]["loss"] != pts[len(pts) // 2]["loss"]


def test_the_2d_slice_is_a_grid_whose_centre_is_the_models_loss():
    model = _net("residual", depth=8)
    x, y = _batch(16)
    D.calibrate_bn(model, x)
    gen = torch.Generator().manual_seed(0)
    d1, d2 = D.filter_normalized_direction(model.state_dict(), gen), D.filter_normalized_direction(model.state_dict(), gen)
    pts = D.landscape_2d(model, x, y, d1, d2)
    assert len(pts) == len(D.ALPHAS_2D) ** 2
    assert next(p["loss"] for p in pts if p["alpha"] == 0 and p["beta"] == 0) == D.loss_of(model, x, y)


def test_the_interpolations_ends_are_the_two_models_losses():
    start_model, end_model = _net("residual", seed=0), _net("residual", seed=1)
    x, y = _batch()
    D.calibrate_bn(end_model, x)  # the end has real running statistics, the start the initial ones
    start, end = start_model.state_dict(), end_model.state_dict()
    pts = D.interpolation(start_model, start, end, x, y)
    assert pts[0]["alpha"] == 0 and pts[-1]["alpha"] == 1
    assert pts[0]["loss"] == D.loss_of(_net("residual", seed=0), x, y)
    assert pts[-1]["loss"] == D.loss_of(end_model, x, y)


def test_layer_gradient_norms_and_signal_propagation_at_init():
    model = _net("residual", depth=8)
    x, y = _batch()
    layers = D.layer_grad_norms(model, x, y)
    # resnet-8: stem conv, 3 blocks of 2 convs, the head (option A shortcuts have no weights)
    assert [r["layer"] for r in layers][0] == "stem.0" and layers[-1]["layer"] == "head.2" and len(layers) == 8
    assert all(r["grad_norm"] > 0 for r in layers)
    blocks = D.signal_propagation(model, x)
    assert [b["block"] for b in blocks] == ["stage1.0", "stage2.0", "stage3.0"]
    # The branch ends in BN (training mode, weight 1, bias 0): unit channel variance, zero channel mean.
    assert all(b["branch_variance"] == pytest.approx(1.0, abs=1e-3) for b in blocks)
    assert all(b["variance"] > 0 and b["mean_sq"] > 0 for b in blocks)


def test_at_init_rebuilds_the_training_initialisation_and_leaves_the_rng_alone():
    spec = make_variant({"connection": "plain", "depth": 8, "width": 4})
    from ablate.engine.train import load_data
    from ablate.spec import make_recipe

    recipe = make_recipe({"epochs": 1, "batch_size": 64, "train_subset": 256, "augment": []})
    data = load_data("synthetic", recipe)
    rng = torch.get_rng_state()
    a = D.at_init(spec, recipe, data, 3, Diagnostics(images=32), torch.device("cpu"))
    assert torch.equal(rng, torch.get_rng_state())
    assert a == D.at_init(spec, recipe, data, 3, Diagnostics(images=32), torch.device("cpu"))  # seeded: the same numbers
    assert a["shattered"]["points"] == 32 and len(a["shattered"]["correlation"]) == 17


def test_mean_ci_is_a_t_interval():
    m, lo, hi, n = mean_ci([1.0, 2.0, 3.0, float("nan")])
    assert (m, n) == (2.0, 3) and lo == pytest.approx(2 - 4.302653 / 3 ** 0.5, rel=1e-5) and hi == pytest.approx(4 - lo)


# ---------------------------------------------------------------- the [diagnostics] table

BASE = """
name = "d"
dataset = "synthetic"
[fixed]
width = 4
depth = 8
[train]
epochs = 1
"""


@pytest.mark.parametrize(("table", "message"), [
    ("colour = 1", "diagnostics.colour: unknown key; [diagnostics] has init, lesion, landscape and images"),
    ('landscape = "3d"', "diagnostics.landscape: '3d' is not valid; use one of none, 1d, 2d"),
    ("init = 1", "diagnostics.init: expected true or false, got 1"),
    ("images = 4", "diagnostics.images: expected an integer >= 8"),
    ("images = true", "diagnostics.images: expected an integer >= 8"),
    (f"images = {MAX_DIAGNOSTIC_IMAGES + 1}", f"diagnostics.images: {MAX_DIAGNOSTIC_IMAGES + 1} is too many; use at most"),
])
def test_bad_diagnostics_tables_are_one_line_naming_the_key(table, message):
    with pytest.raises(StudyError) as err:
        parse_study(BASE + "[diagnostics]\n" + table + "\n", "d.toml")
    assert str(err.value).startswith("d.toml: " + message) and "\n" not in str(err.value)


def test_diagnostics_default_on_and_are_not_part_of_the_definition():
    default = parse_study(BASE)
    assert default.diagnostics == Diagnostics(init=True, lesion=True, landscape="1d")
    off = parse_study(BASE + '[diagnostics]\ninit = false\nlesion = false\nlandscape = "2d"\nimages = 512\n')
    assert off.diagnostics == Diagnostics(False, False, "2d", 512)
    assert definition(off) == definition(default)  # changing them is never "a different study"


# ---------------------------------------------------------------- in a run: killed during the diagnostics

TINY = """
name = "why"
dataset = "synthetic"
[fixed]
width = 4
depth = 8
connection = "residual"
[train]
epochs = 1
batch_size = 128
train_subset = 256
test_subset = 128
augment = []
[diagnostics]
images = 32
"""


def _stopped(pid: int) -> bool:
    with contextlib.suppress(OSError):
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "T"
    return False


@pytest.mark.slow
def test_a_run_killed_during_the_diagnostics_resumes_them_without_training_again(tmp_path):
    study = tmp_path / "why.toml"
    study.write_text(TINY)
    db = tmp_path / "why.db"
    args = [sys.executable, "-m", "ablate", "run", str(study), "--storage", f"sqlite:///{db}", "--device", "cpu",
            "--grace-period", "2", "--fuse", "off"]
    proc = subprocess.Popen(args, cwd=tmp_path, env={**os.environ, failpoints.ENV: "diagnostics"},
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 300
    while not _stopped(proc.pid) and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    assert proc.poll() is None, proc.stderr.read().decode()
    proc.send_signal(signal.SIGKILL)
    proc.communicate()
    with contextlib.closing(sqlite3.connect(db)) as con:  # the killed unit: RUNNING, trained, no diagnostics
        assert con.execute("SELECT COUNT(*) FROM trial_user_attributes WHERE key = 'diagnostics'").fetchone()[0] == 0
    time.sleep(2.5)  # its heartbeat goes stale
    done = subprocess.run(args, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    trials = optuna.load_study(study_name="why", storage=f"sqlite:///{db}").get_trials()
    complete = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(complete) == 1 and len([t for t in trials if t.state == TrialState.FAIL]) == 1
    assert complete[0].user_attrs["resumed_from"] == 1  # its one epoch came from the checkpoint: not trained again
    for t in complete:
        d = t.user_attrs["diagnostics"]
        assert d["settings"] == {"init": True, "lesion": True, "landscape": "1d", "images": 32} and "error" not in d
        assert {"init", "lesion", "landscape"} <= d.keys() and len(d["landscape"]["interpolation"]) == len(D.INTERPOLATION)


# ---------------------------------------------------------------- the quick study: tables and the Why section


@pytest.mark.slow
def test_the_quick_studys_diagnostics_tables_and_why_section(quick_run, tmp_path):
    assert quick_run.result.returncode == 0, quick_run.result.stderr
    results = load_results("quick", quick_run.storage)
    why = results.why
    assert why is not None and not why.errors
    assert len(why.per_seed) == 24  # every final run
    lesion = why.lesion
    # plain-56 and resnet-56: 27 blocks, of which the first of stages 2 and 3 change the shape
    assert set(lesion.groupby("variant")["block"].nunique()) == {1, 7, 25}
    assert (lesion["error_increase"] == lesion["test_error"] - lesion["base_error"]).all()
    paths = write_tables(results, tmp_path)
    names = {p.name for p in paths}
    assert {"quick-init.csv", "quick-lesion.csv", "quick-landscape.csv"} <= names
    init = pd.read_csv(tmp_path / "quick-init.csv")
    assert set(init["kind"]) == {"layer", "block", "lag"} and {"grad_norm", "mean_sq", "variance", "correlation"} <= set(init.columns)
    land = pd.read_csv(tmp_path / "quick-landscape.csv")
    assert set(land["kind"]) == {"1d", "interpolation"} and land.groupby(["variant", "seed", "kind"]).size().min() >= 7
    page = render(results)
    assert '<section id="why">' in page and page.index('id="verdict"') < page.index('id="why"')
    assert len(why.readings) == 4 and all(html.escape(r) in page for r in why.readings)
    assert "plain-56-w8" in why.readings[2] and "resnet-56-w8" in why.readings[2]
    summary = why.summary.set_index("variant")
    per = why.per_seed[why.per_seed["variant"] == "resnet-56-w8"]
    assert summary.loc["resnet-56-w8", "lesion_max_increase_mean"] == pytest.approx(per["lesion_max_increase"].mean())
    assert f"{summary.loc['resnet-56-w8', 'lesion_max_increase_mean'] * 100:+.1f} points" in why.readings[2]
