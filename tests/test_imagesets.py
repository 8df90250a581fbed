"""Imagenette and STL-10, read from small files written here in their real on-disk layouts (the
folders and file formats torchvision downloads into), since the real downloads need the internet:
Imagenette as class-coloured JPEGs under imagenette2-160/{train,val}/<wnid>/, STL-10 as the raw
column-major binaries in stl10_binary/."""

from __future__ import annotations

import json
import tarfile
from dataclasses import replace
from pathlib import Path

import numpy as np
import optuna
import pytest
from PIL import Image
from typer.testing import CliRunner

from ablate.cli.app import app
from ablate.engine import data, owndata
from ablate.engine.data import DataError, load_dataset
from ablate.engine.models import measure
from ablate.spec import dataset_info, get_variant

WNIDS = ("n01440764", "n02102040", "n02979186", "n03000684", "n03028079",
         "n03394916", "n03417042", "n03425413", "n03445777", "n03888257")  # Imagenette's ten classes
RUN_HEADER = '[fixed]\ndepth = 8\nwidth = 4\n[train]\nbatch_size = 10\nepochs = 1\n'


def colour(c: int) -> tuple[int, int, int]:
    """A colour per class, far apart: the class is learnable from the mean pixel."""
    return (40 + 200 * (c % 2), 40 + 50 * (c // 2), 240 - 200 * (c % 2))


def make_imagenette(root: Path, folder: str = "imagenette2-160", per_class=(2, 1), size=(40, 30)) -> Path:
    """`folder`/{train,val}/<wnid>/*.JPEG: class-coloured JPEGs, wider than high with a black band at
    each side (which a centre crop leaves out), and the noisy-labels CSV the archive carries."""
    rng = np.random.default_rng(0)
    w, h = size
    rows = ["path,noisy_labels_0,noisy_labels_1,noisy_labels_5,noisy_labels_25,noisy_labels_50,is_valid"]
    for split, n in (("train", per_class[0]), ("val", per_class[1])):
        for c, wnid in enumerate(WNIDS):
            (root / folder / split / wnid).mkdir(parents=True)
            for i in range(n):
                pixels = np.clip(np.array(colour(c)) + rng.integers(-10, 10, (h, w, 3)), 0, 255).astype(np.uint8)
                pixels[:, : (w - h) // 2] = pixels[:, w - (w - h) // 2 :] = 0
                name = f"{split}/{wnid}/{wnid}_{i}.JPEG"
                Image.fromarray(pixels).save(root / folder / name, quality=95)
                rows.append(f"{name},{wnid},{wnid},{wnid},{wnid},{wnid},{split == 'val'}")
    (root / folder / "noisy_imagenette.csv").write_text("\n".join(rows) + "\n")
    return root / folder


def make_stl10(root: Path, n=(20, 10), seed=0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """stl10_binary/ as the dataset ships it: each image's three 96x96 planes column-major, labels
    1..10 as bytes, and the class names; returns the images row-major with labels 0..9."""
    rng = np.random.default_rng(seed)
    folder = root / "stl10_binary"
    folder.mkdir(parents=True)
    written = {}
    for split, count in (("train", n[0]), ("test", n[1])):
        images = rng.integers(0, 256, (count, 3, 96, 96), dtype=np.uint8)
        labels = rng.permutation(np.arange(count) % 10)
        (folder / f"{split}_X.bin").write_bytes(images.transpose(0, 1, 3, 2).tobytes())
        (folder / f"{split}_y.bin").write_bytes((labels + 1).astype(np.uint8).tobytes())
        written[split] = images, labels
    names = "airplane bird car cat deer dog horse monkey ship truck".split()
    (folder / "class_names.txt").write_text("\n".join(names) + "\n")
    return written


def fresh(**kwargs):
    owndata.read_own.cache_clear()  # a new process: only the data dir's cache remains
    data.read_files.cache_clear()
    return load_dataset(**kwargs)


def test_imagenette_is_decoded_at_the_size_asked_from_centre_crops_and_cached(tmp_path):
    make_imagenette(tmp_path / "data")
    before = owndata.decoded_images
    got = fresh(name="imagenette", data_dir=tmp_path / "data", download=False, resize=16)
    assert owndata.decoded_images - before == 30
    assert got.train.images.shape == (20, 3, 16, 16) and got.test.images.shape == (10, 3, 16, 16)
    assert (got.info.classes, got.info.channels, got.info.size) == (10, 3, 16)
    assert got.info.mean == (0.485, 0.456, 0.406)  # the table's (ImageNet's), as for every named dataset
    # Labels follow the sorted WordNet ids; the black bands at the sides were cropped away.
    for split in (got.train, got.test):
        mean = split.images.float().mean((2, 3))
        expected = np.array([colour(int(c)) for c in split.labels])
        assert np.abs(mean.numpy() - expected).max() < 12
    cached = list((tmp_path / "data" / "own").glob("imagenette-*.npz"))
    assert len(cached) == 1 and str(cached[0]) in fresh(name="imagenette", data_dir=tmp_path / "data",
                                                        download=False, resize=16).source
    assert owndata.decoded_images - before == 30  # the second load decoded nothing
    default = fresh(name="imagenette", data_dir=tmp_path / "data", download=False)
    assert default.train.images.shape == (20, 3, 160, 160)  # the 160 px version's own size by default
    assert owndata.decoded_images - before == 60 and len(list((tmp_path / "data" / "own").glob("*.npz"))) == 2


def test_imagenette_folders_are_the_ones_torchvision_reads(tmp_path):
    datasets = pytest.importorskip("torchvision.datasets")
    make_imagenette(tmp_path)
    theirs = datasets.Imagenette(str(tmp_path), split="val", size="160px")  # found: no download, no md5
    ours = fresh(name="imagenette", data_dir=tmp_path, download=False, resize=8)
    assert list(theirs.wnids) == list(WNIDS)
    np.testing.assert_array_equal(ours.test.labels.numpy(), [theirs[i][1] for i in range(len(theirs))])


def test_imagenette_above_160_px_is_read_from_the_320_px_version(tmp_path, monkeypatch):
    make_imagenette(tmp_path / "data")
    monkeypatch.setattr(data, "_download", lambda *args: pytest.fail("downloaded with download=False"))
    with pytest.raises(DataError) as error:
        fresh(name="imagenette", data_dir=tmp_path / "data", download=False, resize=224)
    message = str(error.value)
    assert "\n" not in message and "imagenette (320px version) not found" in message
    assert str(tmp_path / "data" / "imagenette2-320") in message and "imagenette2-320.tgz" in message
    make_imagenette(tmp_path / "data", "imagenette2-320", size=(60, 45))
    assert fresh(name="imagenette", data_dir=tmp_path / "data", download=False, resize=224).test.images.shape == (10, 3, 224, 224)


def test_an_imagenette_archive_copied_in_is_extracted_without_network(tmp_path, monkeypatch):
    make_imagenette(tmp_path / "source")
    (tmp_path / "data").mkdir()
    with tarfile.open(tmp_path / "data" / "imagenette2-160.tgz", "w:gz") as tar:
        tar.add(tmp_path / "source" / "imagenette2-160", arcname="imagenette2-160")
    monkeypatch.setattr(data, "_download", lambda *args: pytest.fail("downloaded although the archive was there"))
    assert fresh(name="imagenette", data_dir=tmp_path / "data", resize=8).test.images.shape == (10, 3, 8, 8)
    assert (tmp_path / "data" / "imagenette2-160" / "noisy_imagenette.csv").is_file()


@pytest.mark.parametrize("name, folder, archive", [("imagenette", "imagenette2-160", "imagenette2-160.tgz"),
                                                   ("stl10", "stl10_binary", "stl10_binary.tar.gz")])
def test_a_missing_dataset_is_one_line_saying_where_to_put_it(tmp_path, monkeypatch, name, folder, archive):
    monkeypatch.setattr(data, "_download", lambda *args: pytest.fail("downloaded with download=False"))
    with pytest.raises(DataError) as error:
        fresh(name=name, data_dir=tmp_path / "data", download=False)
    message = str(error.value)
    assert "\n" not in message and "internet" in message and archive in message
    assert str(tmp_path / "data" / folder) in message


def test_a_download_puts_the_files_where_they_are_then_read(tmp_path, monkeypatch):
    calls = []

    def download(name, root):  # stands in for torchvision: writes the files where it would
        calls.append(name)
        make_imagenette(root) if name == "imagenette" else make_stl10(root)

    monkeypatch.setattr(data, "_download", download)
    assert len(fresh(name="imagenette", data_dir=tmp_path, resize=8).train) == 20
    assert len(fresh(name="stl10", data_dir=tmp_path).train) == 20
    assert len(fresh(name="imagenette", data_dir=tmp_path, resize=8).train) == 20
    assert calls == ["imagenette", "stl10"]


def test_imagenette_with_a_class_missing_is_a_clear_error(tmp_path):
    folder = make_imagenette(tmp_path)
    for split in ("train", "val"):
        for image in (folder / split / WNIDS[3]).iterdir():
            image.unlink()
        (folder / split / WNIDS[3]).rmdir()
        # First a class in val/ only, then one missing from both.
        why = r"the class 'n03000684' is in val/ but not in train/" if split == "train" else \
            r"holds 9 class folders in train/.*Imagenette has 10"
        with pytest.raises(DataError, match=rf"dataset 'imagenette': .*{why}"):
            fresh(name="imagenette", data_dir=tmp_path, download=False, resize=8)


def test_stl10_reads_the_binary_layout(tmp_path):
    written = make_stl10(tmp_path)
    got = fresh(name="stl10", data_dir=tmp_path, download=False)
    for split, (images, labels) in ((got.train, written["train"]), (got.test, written["test"])):
        np.testing.assert_array_equal(split.images.numpy(), images)
        np.testing.assert_array_equal(split.labels.numpy(), labels)
    assert (got.info.channels, got.info.classes, got.info.size) == (3, 10, 96)
    assert got.source == str(tmp_path / "stl10_binary")


def test_stl10_files_read_the_same_through_torchvision(tmp_path, monkeypatch):
    # torchvision's reader, with its md5 check (which only the real files pass) switched off: our
    # files are in its format, and our reader agrees with it, the column-major planes included.
    stl10 = pytest.importorskip("torchvision.datasets.stl10")
    make_stl10(tmp_path, seed=1)
    monkeypatch.setattr(stl10, "check_integrity", lambda *args, **kwargs: True)
    theirs = stl10.STL10(str(tmp_path), split="train")
    ours = fresh(name="stl10", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(ours.train.images.numpy(), theirs.data)  # theirs is NCHW too
    np.testing.assert_array_equal(ours.train.labels.numpy(), theirs.labels)
    assert theirs.classes[0] == "airplane"


def test_a_truncated_stl10_file_is_a_clear_error(tmp_path):
    make_stl10(tmp_path)
    path = tmp_path / "stl10_binary" / "test_X.bin"
    path.write_bytes(path.read_bytes()[:-5])
    with pytest.raises(DataError, match=r"dataset 'stl10': cannot read .*test_X\.bin holds \d+ bytes, not a whole number"):
        fresh(name="stl10", data_dir=tmp_path, download=False)


def test_imagenette_too_large_for_the_device_says_which_resize_would_fit(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "DATA_SHARE", 1e-6)  # the host's memory, scaled down: what a small GPU would say
    with pytest.raises(DataError, match=r"dataset 'imagenette': 13394 images of 3x320x320 take 3\.8 GiB as uint8.*"
                                        r"set resize = \d+ \(or less\) in \[train\], or train_subset"):
        fresh(name="imagenette", data_dir=tmp_path, download=False, resize=320)
    with pytest.raises(DataError, match=r"dataset 'stl10': .* set train_subset = \d+ \(or less\)"):
        fresh(name="stl10", data_dir=tmp_path, download=False)


def test_ablate_variants_and_a_run_on_both(tmp_path):
    make_imagenette(tmp_path / "data")
    make_stl10(tmp_path / "data")
    for name, extra, side, shape in (("imagenette", "resize = 16\n", 16, "3x16x16, resized from 160"),
                                     ("stl10", "", 96, "3x96x96")):
        path = tmp_path / f"{name}.toml"
        path.write_text(f'name = "{name}"\ndataset = "{name}"\n[fixed]\nstem = "imagenet"\n[grid]\ndepth = [18, 34]\n'
                        f'[train]\n{extra}')
        shown = CliRunner().invoke(app, ["variants", str(path), "--json"])
        assert shown.exit_code == 0, shown.output
        rows = json.loads(shown.stdout)
        assert [r["name"] for r in rows] == ["resnet-18", "resnet-34"]
        assert rows[0]["macs"] == measure(get_variant("resnet-18"), replace(dataset_info(name), size=side))[1]
        table = CliRunner().invoke(app, ["variants", str(path)], terminal_width=200)
        assert f"on {name} ({shape})" in table.output
    # One tiny epoch on Imagenette at 16 px, decoded at that size: the run loop takes the named dataset.
    (tmp_path / "run.toml").write_text('name = "tiny"\ndataset = "imagenette"\n' + RUN_HEADER + "resize = 16\n")
    url = f"sqlite:///{tmp_path / 'db.sqlite'}"
    run = CliRunner().invoke(app, ["run", str(tmp_path / "run.toml"), "--storage", url, "--device", "cpu",
                                   "--data-dir", str(tmp_path / "data")])
    assert run.exit_code == 0, run.output
    trials = optuna.load_study(study_name="tiny", storage=url).trials
    assert [t.state for t in trials] == [optuna.trial.TrialState.COMPLETE]
