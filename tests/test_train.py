"""The training engine: recipes, schedules, determinism, checkpoint-resume, divergence, curves at
iteration resolution. (The degradation on real data: the quick study, tests/test_quick.py.)"""

from __future__ import annotations

import math
from dataclasses import asdict, replace

import pytest
import torch

from ablate.engine import checkpoint
from ablate.engine.data import FASHION_MNIST_SYSTEM_DIR
from ablate.spec.limits import MAX_LR, MAX_WEIGHT_DECAY
from ablate.engine.train import Epoch, Precision, Recipe, load_data, lr_at, make_recipe, point_steps, precision_for, resolve_device, schedule, train
from ablate.spec.variants import VariantSpec

TINY = VariantSpec(depth=8, width=4)
FAST = Recipe(epochs=3, batch_size=64, lr=0.05, schedule="cosine", val_size=128)


@pytest.fixture(scope="module")
def synthetic():
    return load_data("synthetic", FAST)


def timeless(history) -> list[dict]:
    """Epoch records without the wall-clock fields, which differ between any two runs."""
    return [{k: v for k, v in asdict(e).items() if k not in ("seconds", "images_per_second")} for e in history]


# ---------------------------------------------------------------- recipes


@pytest.mark.parametrize(
    "table, expected",
    [
        ({"epochs": 0}, "epochs: 0 is not valid"),
        ({"lr": -0.1}, "lr: -0.1 is not valid"),
        ({"lr": 0}, "lr: 0 is not valid"),
        ({"momentum": 1.0}, "momentum: 1.0 is not valid"),
        ({"schedule": "linear"}, "schedule: 'linear' is not valid; use one of constant, step, cosine, onecycle"),
        ({"milestones": [0.75, 0.5]}, "milestones: [0.75, 0.5] is not valid"),
        ({"augment": ["crop", "rotate"]}, "augment: 'rotate' is not valid; use a list of crop, flip"),
        ({"augment": "crop"}, "augment: 'crop' is not valid; use a list such as"),
        ({"batch_size": 1}, "batch_size: 1 is not valid"),
        ({"batch_size": 12.5}, "batch_size: 12.5 is not valid"),
        ({"train_subset": 0}, "train_subset: 0 is not valid"),
        ({"warmup_epochs": 5, "epochs": 2}, "warmup_epochs: 5 is longer than training"),
        ({"nesterov": True, "momentum": 0}, "nesterov: Nesterov momentum needs momentum > 0"),
        ({"learning_rate": 0.1}, "learning_rate: unknown recipe key; valid keys: epochs, iterations, batch_size, lr"),
        ({"lr": "fast"}, "lr: 'fast' is not valid"),
        ({"resize": 4}, "resize: 4 is not valid"),
        ({"test_subset": 0}, "test_subset: 0 is not valid"),
        ({"points_per_epoch": 0}, "points_per_epoch: 0 is not valid"),
    ],
)
def test_bad_recipes_name_the_key(table, expected):
    with pytest.raises(ValueError) as info:
        make_recipe(table)
    assert expected in str(info.value)


def test_recipe_lists_become_tuples():
    r = make_recipe({"milestones": [0.3, 0.6], "augment": ["flip"]})
    assert r.milestones == (0.3, 0.6) and r.augment == ("flip",)
    hash(r)


def _sched(r: Recipe, n_train: int = 1280, batch: int = 128):
    return schedule(replace(r, batch_size=batch), n_train)  # 10 steps an epoch


def test_schedules():
    step = Recipe(epochs=10, lr=0.1, schedule="step")
    sched = _sched(step)
    assert (sched.steps_per_epoch, sched.iterations, sched.milestones) == (10, 100, (50, 75))
    assert [lr_at(step, s, sched) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx([0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    const = Recipe(epochs=10, lr=0.3, schedule="constant")
    assert {lr_at(const, s, _sched(const)) for s in range(100)} == {0.3}
    cos = Recipe(epochs=10, lr=0.2, schedule="cosine")
    assert lr_at(cos, 0, _sched(cos)) == pytest.approx(0.2)
    assert lr_at(cos, 50, _sched(cos)) == pytest.approx(0.1)
    assert lr_at(cos, 99, _sched(cos)) < 0.001
    one = Recipe(epochs=10, lr=0.4, schedule="onecycle")
    lrs = [lr_at(one, s, _sched(one)) for s in range(100)]
    assert lrs[0] == pytest.approx(0.4 / 25)
    assert max(lrs) == pytest.approx(0.4) and lrs.index(max(lrs)) == 30
    assert lrs[-1] < 1e-3
    warm = Recipe(epochs=10, lr=0.1, schedule="step", warmup_epochs=1, warmup_lr=0.01)
    assert [lr_at(warm, s, _sched(warm)) for s in (0, 5, 10)] == pytest.approx([0.01, 0.055, 0.1])


def test_schedule_points_in_iterations_and_a_constant_warm_up():
    # He et al. 2016, Sec. 4.2, on CIFAR-10's 50k images: 390 steps an epoch, 64k iterations,
    # lr 0.1 / 10 at 32k and 48k; ResNet-110: 0.01 for the first 400 iterations.
    r = make_recipe({"iterations": 64000, "milestone_iterations": [32000, 48000], "schedule": "step",
                     "warmup": "constant", "warmup_iterations": 400, "warmup_lr": 0.01})
    sched = schedule(r, 50000)
    assert (sched.steps_per_epoch, sched.iterations, sched.epochs, sched.milestones) == (390, 64000, 165, (32000, 48000))
    got = [lr_at(r, s, sched) for s in (0, 399, 400, 31999, 32000, 47999, 48000, 63999)]
    assert got == pytest.approx([0.01, 0.01, 0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    # Fractions and iterations are two spellings of one schedule.
    frac = make_recipe({"epochs": 10, "milestones": [0.5, 0.75]})
    its = make_recipe({"iterations": 100, "milestone_iterations": [50, 75]})
    a, b = _sched(frac), _sched(its)
    assert [lr_at(frac, s, a) for s in range(100)] == [lr_at(its, s, b) for s in range(100)]


def test_iterations_end_training_inside_an_epoch(synthetic):
    steps = len(synthetic.train.labels) // FAST.batch_size  # full batches in one epoch
    recipe = replace(FAST, epochs=None, iterations=steps + 3)
    result = train(TINY, recipe, synthetic, seed=0)
    assert [e.epoch for e in result.history] == [1, 2]
    assert result.history[-1].images_per_second > 0 and math.isfinite(result.history[-1].train_loss)


def test_precision_settings():
    cpu, cuda = torch.device("cpu"), torch.device("cuda")
    assert precision_for(cpu, "auto") == Precision(None, True) == precision_for(cpu, "fp32")  # fp32, channels_last
    assert precision_for(cpu, "bf16") == Precision(torch.bfloat16, True)
    assert precision_for(cuda, "auto") == precision_for(cuda, "bf16") == Precision(torch.bfloat16, True)
    assert precision_for(cuda, "fp32") == Precision(None, True)  # the papers' fp32, still channels_last


def test_resolve_device():
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    with pytest.raises(ValueError, match="device: 'tpu' is not valid"):
        resolve_device("tpu")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU is visible"):
            resolve_device("cuda")


# ---------------------------------------------------------------- one run


def test_train_records_every_epoch(synthetic):
    seen: list[Epoch] = []
    result = train(TINY, FAST, synthetic, seed=0, callback=seen.append)
    assert not result.diverged and result.reason is None
    assert len(result.history) == 3 and list(result.history) == seen
    assert [e.epoch for e in seen] == [1, 2, 3]
    for e in seen:
        assert 0 <= e.train_error <= 1 and 0 <= e.test_error <= 1 and 0 <= e.val_error <= 1
        assert math.isfinite(e.train_loss) and e.seconds > 0 and e.images_per_second > 0
        assert set(e.grad_norms) == {"stem", "stage1", "stage2", "stage3", "head"}
        assert all(v > 0 and math.isfinite(v) for v in e.grad_norms.values())
    assert seen[-1].lr < seen[0].lr  # cosine decays
    # The synthetic set is learnable: a tiny net gets well below chance (90% error) in 3 epochs.
    assert result.test_error < 0.6
    assert result.params == sum(p.numel() for p in __import__("ablate.engine.models", fromlist=["x"]).build_model(TINY, synthetic.info).parameters())
    assert result.macs > 0 and result.device == "cpu"


def test_same_seed_same_result_other_seed_other_result(synthetic):
    a = train(TINY, replace(FAST, epochs=2), synthetic, seed=3)
    b = train(TINY, replace(FAST, epochs=2), synthetic, seed=3)
    c = train(TINY, replace(FAST, epochs=2), synthetic, seed=4)
    assert timeless(a.history) == timeless(b.history)
    assert timeless(a.history) != timeless(c.history)


def test_callback_exceptions_propagate(synthetic):
    class Stop(Exception):
        pass

    def stop(epoch: Epoch) -> None:
        raise Stop(epoch.epoch)

    with pytest.raises(Stop):
        train(TINY, FAST, synthetic, seed=0, callback=stop)


def test_divergence_is_a_result_not_an_exception(synthetic):
    # The learning rate and the weight decay are bounded (ablate.spec.limits); at both bounds, with
    # heavy momentum, the weights grow by an order of magnitude a step and the loss overflows.
    absurd = replace(FAST, lr=MAX_LR, schedule="constant", weight_decay=MAX_WEIGHT_DECAY, momentum=0.99)
    result = train(TINY, absurd, synthetic, seed=0)
    assert result.diverged
    assert result.diverged_epoch == 1
    assert "loss became" in result.reason and "epoch 1" in result.reason
    assert result.history == ()


def test_checkpoint_resume_gives_the_same_weights(tmp_path, synthetic):
    recipe = replace(FAST, epochs=4, schedule="step")
    full = train(TINY, recipe, synthetic, seed=7, checkpoint=tmp_path / "full.pt")

    class Killed(Exception):
        pass

    def kill_after_2(epoch: Epoch) -> None:
        if epoch.epoch == 2:  # the checkpoint of epoch 2 is on disk when the callback runs
            raise Killed

    with pytest.raises(Killed):
        train(TINY, recipe, synthetic, seed=7, checkpoint=tmp_path / "cut.pt", callback=kill_after_2)
    assert checkpoint.read(tmp_path / "cut.pt")["epoch"] == 2
    resumed = train(TINY, recipe, synthetic, seed=7, checkpoint=tmp_path / "cut.pt")
    assert resumed.resumed_from == 2
    assert timeless(resumed.history) == timeless(full.history)
    a = checkpoint.read(tmp_path / "full.pt")
    b = checkpoint.read(tmp_path / "cut.pt")
    assert a["epoch"] == b["epoch"] == 4
    assert a["model"].keys() == b["model"].keys()
    for key in a["model"]:
        assert torch.equal(a["model"][key], b["model"][key]), key
    # A finished checkpoint resumes to the finished result without training again.
    again = train(TINY, recipe, synthetic, seed=7, checkpoint=tmp_path / "full.pt")
    assert again.resumed_from == 4 and timeless(again.history) == timeless(full.history)


def test_the_recipe_must_describe_the_data(synthetic):
    with pytest.raises(ValueError, match="val_size: the recipe holds out 0 examples but the data has 128"):
        train(TINY, replace(FAST, val_size=0), synthetic)
    with pytest.raises(ValueError, match="train_subset: the recipe asks for 100 examples but the data has 1920"):
        train(TINY, replace(FAST, train_subset=100), synthetic)
    with pytest.raises(ValueError, match="test_subset: the recipe asks for 100 test examples but the data has 512"):
        train(TINY, replace(FAST, test_subset=100), synthetic)


def test_a_checkpoint_of_another_run_is_discarded(tmp_path, synthetic, caplog):
    train(TINY, replace(FAST, epochs=1), synthetic, seed=0, checkpoint=tmp_path / "c.pt")
    fresh = train(TINY, replace(FAST, epochs=1), synthetic, seed=1)
    with caplog.at_level("WARNING", logger="ablate"):
        other = train(TINY, replace(FAST, epochs=1), synthetic, seed=1, checkpoint=tmp_path / "c.pt")
    assert [r.getMessage() for r in caplog.records] == [
        f"checkpoint {tmp_path / 'c.pt'} discarded: it belongs to another run (its seed differs); the unit trains from scratch"]
    assert other.resumed_from == 0 and timeless(other.history) == timeless(fresh.history)


def test_resize_trains_at_another_resolution(synthetic):
    result = train(TINY, replace(FAST, epochs=1, resize=24), synthetic, seed=0)
    small = train(TINY, replace(FAST, epochs=1), synthetic, seed=0)
    assert result.macs == pytest.approx(small.macs * (24 / 16) ** 2, rel=0.01)


# ---------------------------------------------------------------- training curves at iteration resolution


def test_point_steps_are_evenly_spaced_and_close_the_epoch():
    assert point_steps(64, 10) == [7, 13, 20, 26, 32, 39, 45, 52, 58, 64]
    assert point_steps(10, 3) == [4, 7, 10]
    assert point_steps(5, 10) == [1, 2, 3, 4, 5]  # fewer steps than points: every step
    assert point_steps(1, 10) == [1]


def test_points_record_loss_and_error_between_evenly_spaced_steps(synthetic):
    """1920 images in batches of 64: 30 steps an epoch; 4 points close steps 8, 15, 23, 30."""
    recipe = replace(FAST, points_per_epoch=4)
    result = train(TINY, recipe, synthetic, seed=0)
    steps = len(synthetic.train) // recipe.batch_size
    assert steps == 30
    for e in result.history:
        assert [p["iteration"] for p in e.points] == [(e.epoch - 1) * steps + k for k in point_steps(steps, 4)]
        # Each point is the mean over its interval's steps (and images, all batches full): weighted
        # by interval length, the points give back the epoch's figures.
        lengths = [b - a for a, b in zip([(e.epoch - 1) * steps] + [p["iteration"] for p in e.points], [p["iteration"] for p in e.points])]
        assert sum(lengths) == steps
        assert sum(n * p["train_loss"] for n, p in zip(lengths, e.points)) / steps == pytest.approx(e.train_loss, rel=1e-5)
        assert sum(n * p["train_error"] for n, p in zip(lengths, e.points)) / steps == pytest.approx(e.train_error, rel=1e-9)
        assert all(0 <= p["train_error"] <= 1 and math.isfinite(p["train_loss"]) for p in e.points)
    first, last = result.history[0].points, result.history[-1].points
    assert last[-1]["train_loss"] < first[0]["train_loss"]  # it learns: the curve has a shape
    assert len(train(TINY, replace(FAST, epochs=1), synthetic, seed=0).history[0].points) == 10  # the default


def test_the_cuda_precision_path_runs_on_the_cpu(tmp_path, synthetic):
    """bf16 autocast and channels_last, as on CUDA, exercised where no GPU is."""
    cuda_like = Precision(autocast=torch.bfloat16, channels_last=True)
    assert precision_for(torch.device("cuda")) == cuda_like
    assert precision_for(torch.device("cpu")) == Precision(channels_last=True)  # fp32; channels_last is faster on the CPU too
    recipe = replace(FAST, epochs=2)
    half = train(TINY, recipe, synthetic, seed=0, precision=cuda_like, checkpoint=tmp_path / "c.pt")
    full = train(TINY, recipe, synthetic, seed=0)
    assert not half.diverged
    assert all(math.isfinite(v) for e in half.history for v in (e.train_loss, *e.grad_norms.values()))
    assert half.test_error < 0.75  # it learns (chance is 0.9) ...
    assert abs(half.test_error - full.test_error) < 0.15  # ... about as well as in fp32
    assert timeless(half.history) != timeless(full.history)  # and really ran in another precision
    weights = checkpoint.read(tmp_path / "c.pt")["model"]
    assert weights["stem.0.weight"].is_contiguous(memory_format=torch.channels_last)
    assert weights["stem.0.weight"].dtype == torch.float32  # master weights stay fp32 under autocast
