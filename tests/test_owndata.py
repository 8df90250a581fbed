"""Your own data: image folders and .npz files, generated here in their real on-disk formats
(PNG, JPEG, BMP and WebP written by PIL, .npz by numpy), scanned, decoded, cached and trained on."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image
from typer.testing import CliRunner

from conftest import ablate
from ablate.cli.app import app
from ablate.engine import owndata
from ablate.engine.data import DataError, load_dataset
from ablate.spec.study import StudyError, definition, growth, parse_study

COLOURS = [(220, 30, 30), (30, 200, 30), (30, 30, 220)]  # the class is the colour: learnable in a few steps
HEADER = 'name = "own"\n[fixed]\ndepth = 8\nwidth = 4\n[train]\nbatch_size = 8\nepochs = 1\n'


def make_folder(root: Path, *, per_class=(6, 3), size=(10, 10), grey=False, test="test", suffixes=(".png", ".jpg"),
                classes=("cat", "ant", "bee"), seed=0) -> Path:
    """train/<class>/ and test/<class>/ of class-coloured noisy images, saved in turn in each format."""
    rng = np.random.default_rng(seed)
    for split, n in (("train", per_class[0]), (test, per_class[1])):
        for c, name in enumerate(classes):
            folder = root / split / name
            folder.mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(COLOURS[c % 3]) + rng.integers(-25, 25, (size[1], size[0], 3)), 0, 255).astype(np.uint8)
                image = Image.fromarray(pixels)
                image = image.convert("L") if grey else image
                image.save(folder / f"{i}{suffixes[i % len(suffixes)]}")
    return root


def study(folder: Path, table: str, extra: str = "") -> object:
    """A study file next to `folder`'s parent, with the [dataset] table given, parsed as `ablate` parses it."""
    path = folder.parent / "study.toml"
    path.write_text(HEADER + extra + "[dataset]\n" + table)
    return parse_study(path.read_text(), str(path))


def fresh_load(s, data_dir: Path):
    owndata.read_own.cache_clear()  # a new process: only the data dir's cache remains
    return load_dataset(s.own_data, data_dir=data_dir)


def test_a_colour_folder_loads_with_sorted_classes_and_measured_statistics(tmp_path):
    make_folder(tmp_path / "pets", suffixes=(".png", ".jpg", ".bmp", ".webp"))
    s = study(tmp_path / "pets", 'path = "pets"\n')
    assert s.dataset == "pets" and s.own_data.classes == ("ant", "bee", "cat")
    assert (s.info.channels, s.info.classes, s.info.size, s.info.train_size, s.info.test_size) == (3, 3, 10, 18, 9)
    data = fresh_load(s, tmp_path / "cache")
    assert data.train.images.shape == (18, 3, 10, 10) and data.test.images.shape == (9, 3, 10, 10)
    # labels follow the sorted names: ant (written as colour 1) is 0, cat (colour 0) is 2
    red = data.train.images[:, 0].float().mean((1, 2))
    assert (red[data.train.labels == 2] > 150).all() and (red[data.train.labels != 2] < 100).all()
    x = data.train.images.double() / 255
    assert np.allclose(data.info.mean, x.mean((0, 2, 3)).numpy(), atol=1e-5)
    assert np.allclose(data.info.std, x.permute(1, 0, 2, 3).reshape(3, -1).std(1, unbiased=False).numpy(), atol=1e-5)
    assert data.info.augment == ("crop", "flip")


def test_grey_images_make_one_channel_and_one_colour_image_makes_three(tmp_path):
    make_folder(tmp_path / "g", grey=True, suffixes=(".png", ".bmp"), test="val")  # val/ in place of test/
    s = study(tmp_path / "g", 'path = "g"\nname = "greys"\n')
    assert s.dataset == "greys" and s.info.channels == 1 and s.own_data.test_folder == "val"
    assert fresh_load(s, tmp_path / "cache").test.images.shape == (9, 1, 10, 10)
    Image.new("RGB", (10, 10), (1, 2, 3)).save(tmp_path / "g" / "train" / "ant" / "colour.png")
    assert study(tmp_path / "g", 'path = "g"\n').info.channels == 3


def test_the_second_load_reads_the_cache_and_a_changed_file_is_decoded_again(tmp_path):
    make_folder(tmp_path / "d")
    s = study(tmp_path / "d", 'path = "d"\n')
    before = owndata.decoded_images
    first = fresh_load(s, tmp_path / "cache")
    assert owndata.decoded_images - before == 27
    cached = list((tmp_path / "cache" / "own").glob("d-*.npz"))
    assert len(cached) == 1
    again = fresh_load(s, tmp_path / "cache")
    assert owndata.decoded_images - before == 27  # nothing decoded
    assert "decoded" in again.source and str(cached[0]) in again.source
    assert (again.train.images == first.train.images).all() and again.info == first.info
    touched = tmp_path / "d" / "train" / "ant" / "0.png"
    os.utime(touched, ns=(touched.stat().st_atime_ns, touched.stat().st_mtime_ns + 10**9))
    fresh_load(study(tmp_path / "d", 'path = "d"\n'), tmp_path / "cache")
    assert owndata.decoded_images - before == 54  # a new modification time: a new key


def test_size_resizes_and_differing_sizes_without_it_are_one_clear_error(tmp_path):
    make_folder(tmp_path / "d")
    Image.new("RGB", (14, 9), (200, 0, 0)).save(tmp_path / "d" / "train" / "cat" / "wide.png")
    with pytest.raises(StudyError, match=r"dataset\.size: the images differ in size .*set size = N in \[dataset\]"):
        study(tmp_path / "d", 'path = "d"\n')
    s = study(tmp_path / "d", 'path = "d"\nsize = 16\n')
    assert s.info.size == 16
    assert fresh_load(s, tmp_path / "cache").train.images.shape == (19, 3, 16, 16)


def npz(path: Path, *, grey=True, n=(40, 12), classes=3, **change) -> Path:
    rng = np.random.default_rng(1)
    arrays = {}
    for split, count in (("train", n[0]), ("test", n[1])):
        y = np.arange(count) % classes
        shape = (count, 8, 8) if grey else (count, 8, 8, 3)
        x = (y.reshape((-1,) + (1,) * (len(shape) - 1)) * 80 + rng.integers(0, 40, shape)).astype(np.uint8)
        arrays |= {f"x_{split}": x, f"y_{split}": y}
    np.savez(path, **(arrays | change))
    return path


@pytest.mark.parametrize("grey", [True, False])
def test_an_npz_file_loads_as_nchw(tmp_path, grey):
    npz(tmp_path / "arrays.npz", grey=grey)
    s = study(tmp_path / "arrays.npz", 'path = "arrays.npz"\n')
    c = 1 if grey else 3
    assert (s.dataset, s.info.channels, s.info.classes, s.info.size, s.info.train_size) == ("arrays", c, 3, 8, 40)
    data = fresh_load(s, tmp_path / "cache")
    assert data.train.images.shape == (40, c, 8, 8) and data.train.labels.tolist() == [i % 3 for i in range(40)]
    resized = fresh_load(study(tmp_path / "arrays.npz", 'path = "arrays.npz"\nsize = 12\n'), tmp_path / "cache")
    assert resized.test.images.shape == (12, c, 12, 12)


def write_bad(tmp_path: Path, case: str) -> str:
    """A broken dataset of one kind; returns the [dataset] table that names it."""
    if case == "missing":
        return 'path = "nowhere"\n'
    if case.startswith("npz-"):
        change = {"npz-labels": {"y_test": np.arange(12) % 4}, "npz-lengths": {"y_train": np.arange(39) % 3},
                  "npz-float": {"x_train": np.zeros((40, 8, 8), np.float32)}}[case]
        npz(tmp_path / "a.npz", **change)
        return 'path = "a.npz"\n'
    make_folder(tmp_path / "d", classes=("a",) if case == "one-class" else ("a", "b"))
    if case == "no-train":
        (tmp_path / "d" / "train").rename(tmp_path / "d" / "training")
    elif case == "no-test":
        (tmp_path / "d" / "test").rename(tmp_path / "d" / "testing")
    elif case == "stray-class":
        (tmp_path / "d" / "test" / "zebra").mkdir()
    elif case == "empty-class":
        (tmp_path / "d" / "train" / "c").mkdir()
    elif case == "unreadable":
        (tmp_path / "d" / "train" / "a" / "broken.jpg").write_bytes(b"not a jpeg at all")
    elif case == "builtin-name":
        return 'path = "d"\nname = "cifar10"\n'
    return 'path = "d"\n'


BAD = {
    "missing": r"dataset\.path: .*nowhere does not exist; give a folder with train/ and test/",
    "no-train": r"dataset\.path: .* has no train/ folder; put the training images in train/<class>/<image>",
    "no-test": r"has no test/ \(or val/\) folder",
    "one-class": r"holds 1 class folder\(s\); a classifier needs at least two",
    "stray-class": r"the class 'zebra' is in test/ but not in train/; add its training images",
    "empty-class": r"the class folder .*train/c holds no images",
    "unreadable": r"broken\.jpg is not a readable image .*; delete or replace it",
    "builtin-name": r"dataset\.name: 'cifar10' is a built-in dataset's name",
    "npz-labels": r"label 3 is out of range: labels are 0\.\.K-1 .*here 0\.\.2",
    "npz-lengths": r"x_train holds 40 images but y_train 39 labels",
    "npz-float": r"x_train is float32 .*expected uint8 images",
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_data_is_one_line_naming_the_key_and_the_fix(tmp_path, case):
    table = write_bad(tmp_path, case)
    with pytest.raises(StudyError, match=BAD[case]) as caught:
        study(tmp_path / "x", table)
    assert "\n" not in str(caught.value) and str(tmp_path / "study.toml") in str(caught.value)


def test_data_that_does_not_fit_the_device_says_what_would(tmp_path, monkeypatch):
    s = study(npz(tmp_path / "a.npz"), 'path = "a.npz"\nsize = 1024\n')
    from ablate.engine import data

    monkeypatch.setattr(data, "DATA_SHARE", 1e-6)  # the host's memory, scaled down: what a small GPU would say
    with pytest.raises(DataError, match=r"take 0\.\d GiB as uint8.*set size = \d+ \(or less\) in \[dataset\], or train_subset"):
        fresh_load(s, tmp_path / "cache")


def test_the_data_is_part_of_the_definition_and_other_data_is_refused(tmp_path):
    make_folder(tmp_path / "d")
    s = study(tmp_path / "d", 'path = "d"\n')
    stored = definition(s)
    assert json.loads(stored)["dataset"] == {"name": "d", "path": "d", "files": 27, "hash": s.own_data.digest, "size": None}
    assert growth(stored, definition(study(tmp_path / "d", 'path = "d"\n'))) == (None, False)
    Image.new("RGB", (10, 10)).save(tmp_path / "d" / "test" / "ant" / "extra.png")
    assert growth(stored, definition(study(tmp_path / "d", 'path = "d"\n')))[0] == "it differs in: dataset"


def test_an_edit_that_keeps_the_files_size_and_time_changes_the_identity(tmp_path):
    make_folder(tmp_path / "d", suffixes=(".bmp",))  # uncompressed: a pixel's byte changes in place
    s = study(tmp_path / "d", 'path = "d"\n')
    edited = tmp_path / "d" / "test" / "bee" / "1.bmp"
    stat, pixels = edited.stat(), bytearray(edited.read_bytes())
    pixels[-1] ^= 0xFF
    edited.write_bytes(bytes(pixels))
    os.utime(edited, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    again = study(tmp_path / "d", 'path = "d"\n')
    assert again.own_data.files == s.own_data.files  # names, sizes and times: all as before
    assert growth(definition(s), definition(again))[0] == "it differs in: dataset"


def test_ablate_variants_run_and_rerun_on_a_generated_folder(tmp_path):
    make_folder(tmp_path / "data" / "colours", per_class=(24, 8), size=(8, 8))
    (tmp_path / "study.toml").write_text(
        'name = "colours"\n[fixed]\nwidth = 4\n[grid]\nconnection = ["plain", "residual"]\ndepth = [8]\n'
        '[train]\nbatch_size = 8\nepochs = 3\nlr = 0.05\nschedule = "onecycle"\naugment = ["flip"]\n'
        '[dataset]\npath = "data/colours"\nname = "colours"\n')
    shown = CliRunner().invoke(app, ["variants", str(tmp_path / "study.toml")], terminal_width=200)
    assert shown.exit_code == 0, shown.output
    assert "colours (3x8x8)" in shown.output and "53K" in shown.output  # channels, size and classes decide the MACs
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run = ablate("run", "study.toml", "--storage", url, "--data-dir", str(tmp_path / "cache"), "--device", "cpu",
                 cwd=tmp_path, timeout=300)
    assert run.returncode == 0, run.stderr
    trials = optuna.load_study(study_name="colours", storage=url).trials
    errors = [t.value for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(errors) == 2 and all(e < 2 / 3 for e in errors), errors  # below chance on three classes
    Image.new("RGB", (8, 8)).save(tmp_path / "data" / "colours" / "train" / "ant" / "extra.png")
    again = CliRunner().invoke(app, ["run", str(tmp_path / "study.toml"), "--storage", url, "--device", "cpu"])
    assert again.exit_code == 2 and "Traceback" not in again.output
    assert "differs in: dataset" in again.output


def test_the_example_study_reads_the_folder_its_script_writes(tmp_path):
    """studies/own/shapes.toml with the data studies/own/make_shapes.py writes, as the README says."""
    import runpy
    import shutil

    root = Path(__file__).resolve().parents[1] / "studies" / "own"
    runpy.run_path(str(root / "make_shapes.py"))["main"](tmp_path / "data" / "shapes")
    shutil.copy(root / "shapes.toml", tmp_path / "shapes.toml")
    s = parse_study((tmp_path / "shapes.toml").read_text(), str(tmp_path / "shapes.toml"))
    assert (s.dataset, s.info.channels, s.info.classes, s.info.size, s.info.train_size, s.info.test_size) == \
        ("shapes", 3, 3, 32, 900, 300)


def test_an_image_whose_header_reads_but_whose_pixels_do_not_is_named_on_loading(tmp_path):
    make_folder(tmp_path / "d", size=(64, 64))
    whole = (tmp_path / "d" / "train" / "bee" / "0.png").read_bytes()
    (tmp_path / "d" / "train" / "bee" / "0.png").write_bytes(whole[: len(whole) // 2])  # cut short: the header survives
    s = study(tmp_path / "d", 'path = "d"\n')
    with pytest.raises(DataError, match=r"dataset 'd': .*train/bee/0\.png is not a readable image .*delete or replace it"):
        fresh_load(s, tmp_path / "cache")
    assert not (tmp_path / "cache" / "own").exists() or not list((tmp_path / "cache" / "own").glob("*.npz"))


def test_an_architecture_search_samples_and_trains_on_own_data(tmp_path):
    from ablate.analysis.results import load_results
    from ablate.runs import run_study

    make_folder(tmp_path / "d", per_class=(12, 4), size=(8, 8))
    path = tmp_path / "search.toml"
    path.write_text('name = "own-search"\n[fixed]\nwidth = 4\n[[space]]\nconnection = ["plain", "residual"]\n'
                    'activation = ["post", "pre"]\ndepth = [8]\n[sample]\ncount = 2\nsampler = "random"\nseed = 1\n'
                    '[train]\nepochs = 1\nbatch_size = 8\nval_size = 6\naugment = []\n[dataset]\npath = "d"\n')
    s = parse_study(path.read_text(), str(path))
    assert s.is_search and s.own_data is not None and s.info.classes == 3
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run_study(s, url, device="cpu", data_dir=tmp_path / "cache", checkpoint_dir=tmp_path / "ckpt")
    samples = load_results(s.name, url).samples
    trained = samples[samples["feasible"]]
    assert len(trained) == 2 and trained["name"].is_unique and trained["val_error"].notna().all()
    assert list((tmp_path / "cache" / "own").glob("d-*.npz"))  # decoded through the own-data cache
