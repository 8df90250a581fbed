"""benchmarks/gpu_campaign.py: the GPU campaign's smoke run on the CPU (every part in seconds, the
same keys as on a GPU), and its bookkeeping: a part that raises or overruns its budget is recorded
with its error and the rest still run; the targets are read from the results, never assumed."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "benchmarks" / "gpu_campaign.py"
PARTS = ["environment", "engine", "levers", "packing", "study", "fmnist94", "tests"]


def load_script():
    spec = importlib.util.spec_from_file_location("gpu_campaign", SCRIPT)
    module = importlib.util.module_from_spec(spec)
    sys.modules["gpu_campaign"] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def campaign():
    return load_script()


@pytest.fixture(scope="module")
def smoke(tmp_path_factory):
    """One smoke run, with the engine part made to raise (ABLATE_CAMPAIGN_FAIL)."""
    out = tmp_path_factory.mktemp("campaign")
    env = {**os.environ, "ABLATE_CAMPAIGN_FAIL": "engine"}
    t0 = time.monotonic()
    done = subprocess.run([sys.executable, str(SCRIPT), "--smoke", "--out", str(out), "--work", str(out.parent / "work"),
                           "--budget-s", "300"], cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    return out, json.loads((out / "campaign.json").read_text()), time.monotonic() - t0


@pytest.mark.slow
def test_the_smoke_run_writes_every_part_and_survives_a_failing_one(smoke):
    out, results, seconds = smoke
    assert set(results) == {"campaign", *PARTS, "targets"}
    assert sorted(p.name for p in out.iterdir()) == ["campaign.json", "campaign.log", "campaign.md"]  # what comes back
    assert results["engine"]["status"] == "error" and "ABLATE_CAMPAIGN_FAIL" in results["engine"]["error"]
    assert {p: results[p]["status"] for p in PARTS if p != "engine"} == {p: "ok" for p in PARTS if p != "engine"}, \
        {p: results[p].get("error") for p in PARTS}
    assert results["campaign"]["status"] == "done" and results["campaign"]["wall_s"] <= seconds
    assert results["environment"]["bf16_peak_tflops"] > 0


@pytest.mark.slow
def test_the_smoke_run_measures_every_lever_and_packing(smoke):
    _, results, _ = smoke
    levers = results["levers"]
    assert [c["config"].split(" ")[0] for c in levers["configs"]] == ["engine", "fp32", "NCHW", "no"]
    assert all(c["images_per_second"] > 0 for c in levers["configs"])
    assert levers["compile"]["backend"] == "aot_eager" and levers["compile"]["images_per_second"] > 0
    packing = results["packing"]
    assert [f["k"] for f in packing["fused"]] == [1, 2, 4, 8] and packing["fused"][0]["over_one"] == 1
    assert [p["processes"] for p in packing["processes"]] == [1]
    assert all(p["images_per_second"] > 0 and p["window_images_per_second"] > 0 for p in packing["processes"])


@pytest.mark.slow
def test_the_smoke_run_reads_the_study_verdict_and_times_fashion_mnist(smoke):
    _, results, _ = smoke
    study = results["study"]
    assert study["rc"] == 0 and study["wall_s"] > 0 and "ablate run" in study["command"]
    assert study["verdict"] and all({"topic", "answer", "difference", "p_adjusted", "real"} <= set(v) for v in study["verdict"])
    assert {v["variant"] for v in study["variants"]} == {"plain-8-w4", "plain-14-w4", "resnet-8-w4", "resnet-14-w4"}
    fm = results["fmnist94"]
    assert [e["epoch"] for e in fm["epochs"]] == [1, 2] and fm["best_accuracy"] == max(e["test_accuracy"] for e in fm["epochs"])
    assert fm["train_images"] == 256 and fm["epochs"][0]["elapsed_s"] < fm["epochs"][1]["elapsed_s"]
    assert results["tests"]["files"][0]["rc"] in (0, 5)
    md = (smoke[0] / "campaign.md").read_text()
    assert "## Targets (issue 24)" in md and "| engine | error |" in md


def make(campaign, tmp_path, budget: float):
    out = tmp_path / "out"
    out.mkdir()
    return campaign.Campaign(out=out, work=tmp_path, sizes=campaign.SMOKE, smoke=True, budget_s=budget, device="cpu",
                             data_dir=None, study_workers=1, grace_s=0.5)


def test_a_part_that_raises_or_overruns_is_recorded_and_the_next_still_runs(campaign, tmp_path):
    c = make(campaign, tmp_path, budget=12)

    def raises(c, record):
        record["half"] = "measured before the error"
        raise ValueError("no such thing")

    def hangs(c, record):
        time.sleep(60)

    def fine(c, record):
        record["value"] = 1

    t0 = time.monotonic()
    c.run_part("levers", raises)
    c.run_part("packing", hangs)
    c.run_part("study", fine)
    assert time.monotonic() - t0 < 12
    saved = json.loads((c.out / "campaign.json").read_text())
    assert saved["levers"]["status"] == "error" and saved["levers"]["error"] == "ValueError: no such thing"
    assert saved["levers"]["half"] == "measured before the error"
    assert saved["packing"]["status"] == "timeout" and "budget" in saved["packing"]["error"]
    assert saved["study"] == {**saved["study"], "status": "ok", "value": 1}


def test_a_child_past_its_timeout_is_stopped(campaign, tmp_path):
    c = make(campaign, tmp_path, budget=60)
    t0 = time.monotonic()
    done = c.run([sys.executable, "-c", "import time; print('started', flush=True); time.sleep(60)"], "sleeper", timeout=1)
    assert done.timed_out and done.last_line() == "started" and time.monotonic() - t0 < 20


def test_targets_are_read_from_the_results(campaign):
    results = {"engine": {"cases": [{"case": "resnet-20", "ratio": 12.0}, {"case": "resnet-110", "ratio": 2.0}]},
               "fmnist94": {"seconds_to_target": None}, "study": {"status": "timeout", "wall_s": 100}}
    rows = {t["target"].split(",")[-1].strip(): t for t in campaign.targets(results)}
    assert rows["ResNet-20 (x)"]["met"] is True and rows["ResNet-110 (x)"]["met"] is False
    assert rows["ResNet-110 (x)"]["measured"] == 2.0
    assert all(t["met"] is None for t in campaign.targets({}))  # nothing measured: nothing met
    study = next(t for t in campaign.targets(results) if t["target"].startswith("degradation"))
    assert study["met"] is None  # a study that did not finish has no wall time to compare
