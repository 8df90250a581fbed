"""The engine's CUDA paths, where a GPU is: bf16 autocast and channels_last, resuming from a
checkpoint (RNG states included), fused runs and batches drawn on the device.

Skipped without CUDA. Their CPU counterparts are in test_train.py, test_fused.py and
test_checkpoint.py; this file is what the GPU campaign's `tests` part runs first
(benchmarks/gpu_campaign.py, docs/gpu.md)."""

from __future__ import annotations

import math
from dataclasses import replace

import pytest
import torch

from ablate.engine import checkpoint
from ablate.engine.data import augment, batches
from ablate.engine.train import Precision, Recipe, load_data, train, train_runs
from ablate.spec.variants import VariantSpec

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

TINY = VariantSpec(depth=8, width=8)
# 512 synthetic images in batches of 64: 8 steps an epoch; a constant rate keeps epochs comparable.
RECIPE = Recipe(epochs=2, batch_size=64, lr=0.05, schedule="constant", train_subset=512, test_subset=256)
CHANCE = 0.9  # ten classes


@pytest.fixture(scope="module")
def data():
    return load_data("synthetic", RECIPE, device="cuda")


def test_trains_in_bf16_and_channels_last_on_the_gpu(tmp_path, data):
    result = train(TINY, RECIPE, data, device="cuda", seed=0, checkpoint=tmp_path / "run.pt")
    assert not result.diverged and len(result.history) == 2
    assert result.final.train_error < CHANCE and result.final.test_error < CHANCE
    saved = checkpoint.read(tmp_path / "run.pt")
    assert saved["model"]["stem.0.weight"].is_contiguous(memory_format=torch.channels_last)
    assert set(saved["rng"]) == {"cpu", "data", "cuda"}


def test_resumes_on_the_gpu_where_it_stopped(tmp_path, data):
    """Stopped after epoch 1 and resumed: the checkpoint (loaded onto the GPU, RNG states included)
    restores the run, and epoch 2 is the uninterrupted run's up to kernel nondeterminism."""
    whole = train(TINY, RECIPE, data, device="cuda", seed=3)

    class Stop(Exception):
        pass

    def stop(epoch):
        raise Stop  # raised after the epoch's checkpoint is on disk, as a signal's stop is

    with pytest.raises(Stop):
        train(TINY, RECIPE, data, device="cuda", seed=3, checkpoint=tmp_path / "run.pt", callback=stop)
    resumed = train(TINY, RECIPE, data, device="cuda", seed=3, checkpoint=tmp_path / "run.pt")
    assert resumed.resumed_from == 1 and len(resumed.history) == 2
    # Same data order and augmentation (the restored generator): the same losses, to bf16 rounding.
    assert resumed.history[1].train_loss == pytest.approx(whole.history[1].train_loss, abs=0.05)


def test_fused_runs_match_runs_alone_on_the_gpu(data):
    """fp32 (no TF32): a fused pair trains each seed as it trains alone, up to rounding."""
    fp32 = Precision(None, True)
    recipe = replace(RECIPE, epochs=1)
    fused = train_runs(TINY, recipe, data, seeds=[1, 2], device="cuda", precision=fp32)
    for seed, run in zip([1, 2], fused):
        alone = train(TINY, recipe, data, device="cuda", seed=seed, precision=fp32)
        assert run.history[0].train_loss == pytest.approx(alone.history[0].train_loss, rel=1e-3)
    bf16 = train_runs(TINY, recipe, data, seeds=[1, 2, 3, 4], device="cuda")  # the default on a GPU
    assert all(not r.diverged and math.isfinite(r.final.train_loss) for r in bf16)


def test_batches_are_drawn_on_the_gpu_and_repeat_by_seed(data):
    def draw(seed: int) -> torch.Tensor:
        gen = torch.Generator(device="cuda").manual_seed(seed)
        images, _ = next(batches(data.train, 64, shuffle=True, generator=gen))
        return augment(images, ("crop", "flip"), generator=gen)

    first = draw(5)
    assert first.device.type == "cuda" and first.dtype == torch.uint8
    assert torch.equal(first, draw(5)) and not torch.equal(first, draw(6))
