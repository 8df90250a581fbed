"""Checkpoints that cannot lose a unit: damage found before unpickling, discarded with one warning,
stale temporary files removed; and a damaged checkpoint in a real training run."""

from __future__ import annotations

import os
import random
import re
import subprocess
import sys
from dataclasses import replace

import pytest
import torch

from ablate.engine import checkpoint
from ablate.engine.data import DATASETS
from ablate.engine.models import build_model
from ablate.engine.train import Recipe, load_data, train
from ablate.spec.variants import VariantSpec

TINY = VariantSpec(depth=8, width=4)
FINGERPRINT = {"spec": repr(TINY), "seed": 3}


def payload(model: torch.nn.Module, epoch: int = 1) -> dict:
    return {"fingerprint": FINGERPRINT, "epoch": epoch, "model": model.state_dict(), "optimizer": {},
            "rng": {"cpu": torch.get_rng_state(), "data": torch.Generator().get_state()},
            "history": [{"epoch": e} for e in range(1, epoch + 1)]}


@pytest.fixture
def model():
    torch.manual_seed(0)
    return build_model(TINY, DATASETS["synthetic"])


def test_round_trip_and_header(tmp_path, model):
    path = tmp_path / "u.pt"
    checkpoint.save(path, payload(model))
    raw = path.read_bytes()
    assert raw.startswith(checkpoint.MAGIC)
    state = checkpoint.load(path, FINGERPRINT, model)
    assert state is not None and state["epoch"] == 1
    assert all(torch.equal(state["model"][k], v) for k, v in model.state_dict().items())
    assert [p.name for p in tmp_path.iterdir()] == ["u.pt"]  # no temporary file left


def damage(kind: str, raw: bytes) -> bytes:
    n = len(checkpoint.MAGIC)
    return {
        "random bytes": random.Random(0).randbytes(len(raw)),
        "empty": b"",
        "header cut": raw[: n + 10],
        "data cut": raw[: len(raw) // 2],
        "appended": raw + b"\0" * 7,
        "one byte flipped": raw[:-100] + bytes([raw[-100] ^ 1]) + raw[-99:],
        "first byte lost": raw[1:],
    }[kind]


@pytest.mark.parametrize("kind, reason", [
    ("random bytes", "not an ablate checkpoint"),
    ("empty", "not an ablate checkpoint"),
    ("header cut", "truncated header"),
    ("data cut", r"\d+ bytes of data where the header says \d+: truncated or appended to"),
    ("appended", r"\d+ bytes of data where the header says \d+: truncated or appended to"),
    ("one byte flipped", "checksum mismatch"),
    ("first byte lost", "not an ablate checkpoint"),
])
def test_damaged_checkpoints_are_discarded_with_one_warning(tmp_path, model, caplog, kind, reason):
    path = tmp_path / "u.pt"
    checkpoint.save(path, payload(model))
    path.write_bytes(damage(kind, path.read_bytes()))
    with pytest.raises(checkpoint.BadCheckpoint, match=reason):
        checkpoint.read(path)
    with caplog.at_level("WARNING", logger="ablate"):
        assert checkpoint.load(path, FINGERPRINT, model) is None
    (record,) = caplog.records
    assert re.match(f"checkpoint {re.escape(str(path))} discarded: {reason}", record.getMessage())
    assert record.getMessage().endswith("; the unit trains from scratch") and "\n" not in record.getMessage()
    assert not path.exists()


def test_checkpoints_that_do_not_fit_are_discarded(tmp_path, model, caplog):
    path = tmp_path / "u.pt"
    wider = build_model(replace(TINY, width=8), DATASETS["synthetic"])
    checkpoint.save(path, payload(wider))
    with caplog.at_level("WARNING", logger="ablate"):
        assert checkpoint.load(path, FINGERPRINT, model) is None
    assert "its weights do not fit the network" in caplog.records[0].getMessage()
    bad = payload(model, epoch=2)
    bad["history"] = bad["history"][:1]
    checkpoint.save(path, bad)
    assert checkpoint.load(path, FINGERPRINT, model) is None
    assert "its history does not match its epoch" in caplog.records[1].getMessage()
    checkpoint.save(path, payload(model))
    assert checkpoint.load(path, {**FINGERPRINT, "seed": 4}, model) is None
    assert "it belongs to another run (its seed differs)" in caplog.records[2].getMessage()


def test_a_bare_torch_save_file_still_loads(tmp_path, model):
    """Checkpoints written before the header (a plain torch.save zip) resume, unverified."""
    path = tmp_path / "u.pt"
    torch.save(payload(model), path)
    assert checkpoint.load(path, FINGERPRINT, model)["epoch"] == 1


def test_stale_temporary_files_are_removed_but_not_a_live_writers(tmp_path):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True).stdout.strip()
    stale = tmp_path / f"a_final_0-123.pt.tmp{dead}"
    live = tmp_path / f"b_final_0-123.pt.tmp{os.getpid()}"
    other = tmp_path / "notes.tmp1"
    for p in (stale, live, other):
        p.write_bytes(b"partial")
    assert checkpoint.remove_stale(tmp_path) == [stale]
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([live.name, other.name])
    assert checkpoint.remove_stale(tmp_path / "absent") == []
    # Written as ablate writes them now, with the host: only this host's dead writers are removed;
    # another host's writer (a shared checkpoint folder) is left alone, whatever its pid here.
    here = tmp_path / f"c_final_0-123.pt.tmp{dead}-{checkpoint.host_name()}"
    there = tmp_path / f"d_final_0-123.pt.tmp{dead}-another-machine.example"
    for p in (here, there):
        p.write_bytes(b"partial")
    assert checkpoint.remove_stale(tmp_path) == [here] and there.exists()


def test_training_from_a_damaged_checkpoint_starts_over_to_the_same_result(tmp_path, caplog):
    """The issue's case: a checkpoint overwritten with random bytes. The run warns, trains from
    scratch, and ends exactly where a run without any checkpoint ends."""
    recipe = Recipe(epochs=2, batch_size=64, lr=0.05, train_subset=256, augment=())
    data = load_data("synthetic", recipe)
    path = tmp_path / "u.pt"

    class Stop(Exception):
        pass

    def stop(epoch):
        raise Stop

    with pytest.raises(Stop):
        train(TINY, recipe, data, seed=5, checkpoint=path, callback=stop)
    assert checkpoint.read(path)["epoch"] == 1
    path.write_bytes(random.Random(1).randbytes(path.stat().st_size))
    with caplog.at_level("WARNING", logger="ablate"):
        resumed = train(TINY, recipe, data, seed=5, checkpoint=path)
    fresh = train(TINY, recipe, data, seed=5)
    assert len(caplog.records) == 1 and "not an ablate checkpoint" in caplog.records[0].getMessage()
    assert resumed.resumed_from == 0
    strip = lambda h: [(e.epoch, e.train_loss, e.train_error, e.test_error) for e in h]  # noqa: E731
    assert strip(resumed.history) == strip(fresh.history)
