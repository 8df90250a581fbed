"""`ablate bench`: the result's structure and the command's errors. No timing assertions: timings
on a small shared machine are too noisy to test."""

from __future__ import annotations

import json
import math

import pytest
import torch
import typer
from typer.testing import CliRunner

from ablate.cli.bench import bench
from ablate.engine.bench import BenchResult, run_bench
from ablate.spec.variants import VariantSpec

TINY = VariantSpec(depth=8, width=4)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny tensors: one thread is fastest, and does not fight other work on a small machine.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def app() -> typer.Typer:
    a = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    a.command()(bench)
    return a


def check(r: BenchResult) -> None:
    for ips in (r.engine_ips, r.baseline_ips):
        assert math.isfinite(ips) and ips > 0
    assert r.ratio == pytest.approx(r.engine_ips / r.baseline_ips)
    assert r.device == "cpu" and r.device_name and r.torch == torch.__version__
    assert r.cpus >= 1 and r.threads >= 1 and len(r.date) == 10 and len(r.load) == 2
    assert r.others_cpu is None or r.others_cpu >= 0


def test_random_data_result_is_sane():
    r = run_bench(TINY, "cifar10", device="cpu", batch_size=32, images=64, random_data=True, workers=0)
    check(r)
    assert (r.variant, r.dataset, r.data, r.size, r.images, r.epochs) == (TINY.name, "cifar10", "random", 32, 64, 2)
    assert r.augment == ("crop", "flip")
    assert json.loads(json.dumps(r.to_dict()))["ratio"] == pytest.approx(r.ratio)


def test_files_resized_with_a_worker():
    # The generated dataset stands in for files; one worker process and a resize exercise the
    # baseline's DataLoader and Resize, the engine's `Recipe.resize`.
    r = run_bench(TINY, "synthetic", device="cpu", batch_size=16, images=32, size=24, workers=1)
    check(r)
    assert (r.data, r.size, r.images) == ("generated", 24, 32)


def test_missing_dataset_is_one_line_and_status_2(tmp_path):
    result = CliRunner().invoke(app(), ["--dataset", "cifar10", "--data-dir", str(tmp_path), "--device", "cpu"])
    assert result.exit_code == 2
    out = result.output.strip()
    assert "--random-data" in out and "Traceback" not in out and len(out.splitlines()) == 1


@pytest.mark.parametrize("args, key", [
    (["--variant", "resnet-7"], "variant"),
    (["--dataset", "imagenet"], "dataset"),
    (["--epochs", "1"], "epochs"),
    (["--images", "1"], "images"),
    (["--size", "4"], "size"),
])
def test_bad_settings_are_one_line_and_status_2(args, key):
    result = CliRunner().invoke(app(), [*args, "--random-data", "--device", "cpu"])
    assert result.exit_code == 2
    out = result.output.strip()
    assert out.startswith(f"error: {key}") and "Traceback" not in out and len(out.splitlines()) == 1


def test_json(tmp_path):
    result = CliRunner().invoke(app(), ["--dataset", "synthetic", "--images", "32", "--batch-size", "16",
                                        "--variant", "resnet-20", "--workers", "0", "--device", "cpu", "--json"])
    assert result.exit_code == 0, result.output
    r = json.loads(result.stdout)
    assert r["variant"] == "resnet-20" and r["ratio"] == pytest.approx(r["engine_ips"] / r["baseline_ips"])
