"""Dataset loading, batching, augmentation and normalisation.

The CIFAR, MNIST and SVHN tests write small files in the official on-disk formats (the layout
torchvision downloads into), so a real download loads the same way; Fashion-MNIST is read from
the Debian package's files when they are installed.
"""

from __future__ import annotations

import gzip
import hashlib
import pickle
import struct
import subprocess
import sys
import tarfile
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import scipy.io
import pytest
import torch
import torch.nn as nn

from ablate.engine import bundled
from ablate.engine import data
from ablate.engine.data import AUGMENTATIONS, DataError, Split, augment, batches, load_dataset, normalize, split_indices

DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # On a small shared machine, OpenMP threads fighting another busy process turn microsecond
    # ops into milliseconds; these tensors are tiny, so one thread is fastest anyway.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


# --- Writers for the official formats ---------------------------------------------------------


def random_images(rng: np.random.Generator, n: int, channels: int, size: int) -> np.ndarray:
    return rng.integers(0, 256, (n, channels, size, size), dtype=np.uint8)


def balanced_labels(rng: np.random.Generator, n: int, classes: int) -> np.ndarray:
    return rng.permutation(np.arange(n) % classes).astype(np.int64)


def write_idx(path: Path, array: np.ndarray, gz: bool) -> None:
    """LeCun's IDX: two zero bytes, type 0x08 (uint8), rank, big-endian uint32 dims, then the bytes."""
    header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
    path.parent.mkdir(parents=True, exist_ok=True)
    with (gzip.open if gz else open)(path.with_name(path.name + ".gz") if gz else path, "wb") as file:
        file.write(header + array.astype(np.uint8).tobytes())


def write_mnist(folder: Path, rng: np.random.Generator, n_train: int, n_test: int, gz: bool) -> dict:
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": balanced_labels(rng, n_train, 10).astype(np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": balanced_labels(rng, n_test, 10).astype(np.uint8),
    }
    for name, array in arrays.items():
        write_idx(folder / name, array, gz)
    return arrays


class Python2Pickler(pickle._Pickler):
    """Pickles bytes as Python 2 `str` (SHORT_BINSTRING / BINSTRING), as the official CIFAR files were.

    Python 3 would write b"data" as a bytes object, which stays bytes under any `encoding`; a
    Python 2 str is decoded by `encoding="latin1"` (torchvision) and kept as bytes by
    `encoding="bytes"` (the CIFAR web page's snippet). Keys and numpy buffers both go this way.
    """

    dispatch = pickle._Pickler.dispatch.copy()

    def save_python2_str(self, obj: bytes) -> None:
        size = len(obj)
        if size < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([size]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<I", size) + obj)
        self.memoize(obj)

    dispatch[bytes] = save_python2_str


PICKLE_STYLE = {"style": "python2"}  # switched by the `pickle_style` fixture


@pytest.fixture(params=["python2", "python3"])
def pickle_style(request, monkeypatch):
    """Official-style files, and files re-pickled by Python 3 (bytes keys): both must load."""
    monkeypatch.setitem(PICKLE_STYLE, "style", request.param)
    return request.param


def write_pickle(path: Path, obj: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as file:  # protocol 2, as the official files
        if PICKLE_STYLE["style"] == "python2":
            Python2Pickler(file, protocol=2).dump(obj)
        else:
            pickle.dump(obj, file, protocol=2)


def cifar_batch(images: np.ndarray, labels: np.ndarray, label_key: bytes, name: bytes) -> dict:
    # As in the official batches: "data" uint8 [N, 3072] (R, G, B planes, row-major), labels a list.
    return {
        b"batch_label": name,
        label_key: [int(label) for label in labels],
        b"data": images.reshape(len(images), 3072),
        b"filenames": [b"img_%d.png" % i for i in range(len(images))],
    }


def write_cifar10(root: Path, rng: np.random.Generator, per_batch: int = 20, n_test: int = 20) -> dict:
    folder = root / "cifar-10-batches-py"
    train = [(random_images(rng, per_batch, 3, 32), balanced_labels(rng, per_batch, 10)) for _ in range(5)]
    test = (random_images(rng, n_test, 3, 32), balanced_labels(rng, n_test, 10))
    for i, (images, labels) in enumerate(train, 1):
        write_pickle(folder / f"data_batch_{i}", cifar_batch(images, labels, b"labels", b"training batch %d of 5" % i))
    write_pickle(folder / "test_batch", cifar_batch(*test, b"labels", b"testing batch 1 of 1"))
    names = [b"airplane", b"automobile", b"bird", b"cat", b"deer", b"dog", b"frog", b"horse", b"ship", b"truck"]
    write_pickle(folder / "batches.meta", {b"num_cases_per_batch": per_batch, b"label_names": names, b"num_vis": 3072})
    return {
        "train": (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train])),
        "test": test,
    }


def write_cifar100(root: Path, rng: np.random.Generator, n_train: int = 200, n_test: int = 100) -> dict:
    folder = root / "cifar-100-python"
    splits = {
        "train": (random_images(rng, n_train, 3, 32), balanced_labels(rng, n_train, 100)),
        "test": (random_images(rng, n_test, 3, 32), balanced_labels(rng, n_test, 100)),
    }
    for name, (images, labels) in splits.items():
        entry = cifar_batch(images, labels, b"fine_labels", name.encode())
        entry[b"coarse_labels"] = [int(label) // 5 for label in labels]
        write_pickle(folder / name, entry)
    fine = [b"class_%d" % i for i in range(100)]
    write_pickle(folder / "meta", {b"fine_label_names": fine, b"coarse_label_names": fine[:20]})
    return splits


def mat_element(kind: int, payload: bytes) -> bytes:
    if len(payload) <= 4:  # small data element format: type and size share one word
        return struct.pack("<HH", kind, len(payload)) + payload.ljust(4, b"\0")
    return struct.pack("<II", kind, len(payload)) + payload + b"\0" * (-len(payload) % 8)


def write_mat(path: Path, arrays: dict[str, np.ndarray], compress: bool) -> None:
    """A MATLAB 5 MAT-file as MATLAB and scipy.io.savemat write it (little-endian)."""
    classes = {np.dtype(np.uint8): (9, 2), np.dtype(np.float64): (6, 9)}  # (mxCLASS, miTYPE)
    text = b"MATLAB 5.0 MAT-file, Platform: GLNXA64, Created on: Mon Jan  1 00:00:00 2024"
    out = text.ljust(116, b" ") + b"\0" * 8 + struct.pack("<H", 0x0100) + b"IM"
    for name, array in arrays.items():
        array_class, data_type = classes[array.dtype]
        body = (
            mat_element(6, struct.pack("<II", array_class, 0))  # array flags: class, no flags
            + mat_element(5, struct.pack(f"<{array.ndim}i", *array.shape))  # dimensions
            + mat_element(1, name.encode())  # name
            + mat_element(data_type, array.tobytes(order="F"))  # real part, column-major
        )
        matrix = struct.pack("<II", 14, len(body)) + body  # miMATRIX
        if compress:
            packed = zlib.compress(matrix)
            matrix = struct.pack("<II", 15, len(packed)) + packed  # miCOMPRESSED, not padded
        out += matrix
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(out)


def savemat_scipy(path: Path, arrays: dict[str, np.ndarray], compress: bool) -> None:
    scipy.io.savemat(str(path), arrays, do_compression=compress)


def svhn_arrays(rng: np.random.Generator, n: int) -> tuple[dict[str, np.ndarray], np.ndarray, np.ndarray]:
    images = random_images(rng, n, 3, 32)
    labels = balanced_labels(rng, n, 10)
    mat = {
        "X": np.ascontiguousarray(images.transpose(2, 3, 1, 0)),  # [H, W, C, N] as SVHN ships it
        "y": np.where(labels == 0, 10, labels).astype(np.float64)[:, None],  # the digit 0 is labelled 10
    }
    return mat, images, labels


def assert_split(split: Split, images: np.ndarray, labels: np.ndarray) -> None:
    assert split.images.dtype == torch.uint8 and split.labels.dtype == torch.int64
    np.testing.assert_array_equal(split.images.numpy(), images)
    np.testing.assert_array_equal(split.labels.numpy(), labels)


def row_hashes(images: torch.Tensor) -> set[bytes]:
    return {hashlib.sha1(image.numpy().tobytes()).digest() for image in images}


# --- Files in the official formats ------------------------------------------------------------


def test_cifar10_reads_the_official_layout(tmp_path, pickle_style):
    written = write_cifar10(tmp_path, np.random.default_rng(0))
    splits = load_dataset("cifar10", data_dir=tmp_path, download=False)
    assert_split(splits.train, *written["train"])
    assert_split(splits.test, *written["test"])
    assert splits.val is None and splits.info.name == "cifar10"
    assert splits.source == str(tmp_path / "cifar-10-batches-py")


def test_cifar_files_read_the_same_through_torchvision(tmp_path, monkeypatch):
    # torchvision's reader, with its md5 check (which only the real files pass) switched off:
    # our files are in its format, and our reader agrees with it, channel order included.
    cifar = pytest.importorskip("torchvision.datasets.cifar")
    written = write_cifar10(tmp_path, np.random.default_rng(1))
    monkeypatch.setattr(cifar, "check_integrity", lambda *args, **kwargs: True)
    theirs = cifar.CIFAR10(str(tmp_path), train=True)  # reads the keys as str, as from the real files
    ours = load_dataset("cifar10", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(ours.train.images.permute(0, 2, 3, 1).numpy(), theirs.data)  # theirs is NHWC
    np.testing.assert_array_equal(ours.train.labels.numpy(), theirs.targets)
    np.testing.assert_array_equal(written["train"][1], theirs.targets)


def test_cifar100_reads_fine_labels(tmp_path, pickle_style):
    written = write_cifar100(tmp_path, np.random.default_rng(2))
    splits = load_dataset("cifar100", data_dir=tmp_path, download=False)
    assert_split(splits.train, *written["train"])
    assert_split(splits.test, *written["test"])
    assert int(splits.train.labels.max()) == 99


def test_cifar10_tarball_is_extracted_without_network(tmp_path, monkeypatch):
    source = tmp_path / "source"
    written = write_cifar10(source, np.random.default_rng(3))
    (tmp_path / "data").mkdir()
    with tarfile.open(tmp_path / "data" / "cifar-10-python.tar.gz", "w:gz") as tar:
        tar.add(source / "cifar-10-batches-py", arcname="cifar-10-batches-py")
    monkeypatch.setattr(data, "_download", lambda *args: pytest.fail("downloaded although the archive was there"))
    splits = load_dataset("cifar10", data_dir=tmp_path / "data")
    assert_split(splits.test, *written["test"])


@pytest.mark.parametrize("gz", [False, True], ids=["raw", "gzipped"])
def test_mnist_reads_idx_files(tmp_path, gz):
    written = write_mnist(tmp_path / "MNIST" / "raw", np.random.default_rng(4), 50, 30, gz)
    splits = load_dataset("mnist", data_dir=tmp_path, download=False)
    assert splits.train.images.shape == (50, 1, 28, 28)
    assert_split(splits.train, written["train-images-idx3-ubyte"][:, None], written["train-labels-idx1-ubyte"])
    assert_split(splits.test, written["t10k-images-idx3-ubyte"][:, None], written["t10k-labels-idx1-ubyte"])


def test_mnist_files_read_the_same_through_torchvision(tmp_path):
    mnist = pytest.importorskip("torchvision.datasets.mnist")
    write_mnist(tmp_path / "MNIST" / "raw", np.random.default_rng(5), 40, 20, gz=False)
    theirs = mnist.MNIST(str(tmp_path), train=False)  # accepts unzipped files without an md5 check
    ours = load_dataset("mnist", data_dir=tmp_path, download=False)
    np.testing.assert_array_equal(ours.test.images[:, 0].numpy(), theirs.data.numpy())
    np.testing.assert_array_equal(ours.test.labels.numpy(), theirs.targets.numpy())


@pytest.mark.parametrize("writer", ["ours", "scipy"])
@pytest.mark.parametrize("compress", [False, True], ids=["plain", "compressed"])
def test_svhn_reads_mat_files(tmp_path, writer, compress):
    rng = np.random.default_rng(6)
    write = write_mat if writer == "ours" else savemat_scipy
    expected = {}
    for split, n in (("train", 30), ("test", 20)):
        mat, images, labels = svhn_arrays(rng, n)
        write(tmp_path / f"{split}_32x32.mat", mat, compress)
        expected[split] = images, labels
    splits = load_dataset("svhn", data_dir=tmp_path, download=False)
    assert_split(splits.train, *expected["train"])
    assert_split(splits.test, *expected["test"])
    assert 0 in splits.train.labels and 10 not in splits.train.labels


def test_svhn_reads_big_endian_files_with_values_stored_in_a_smaller_type(tmp_path):
    # MATLAB may store a double array as uint8 values, and big-endian files flip every word.
    rng = np.random.default_rng(7)
    for split, n in (("train", 4), ("test", 3)):
        mat, images, labels = svhn_arrays(rng, n)
        body = b""
        for name, array, cls in (("X", mat["X"], 9), ("y", mat["y"], 6)):  # X: mxUINT8, y: mxDOUBLE stored as miUINT8
            values = array.astype(np.uint8).tobytes(order="F")
            name_el = struct.pack(">II", 1, len(name)) + name.encode().ljust(8, b"\0")
            element = (
                struct.pack(">II", 6, 8) + struct.pack(">II", cls, 0)
                + struct.pack(">II", 5, 4 * array.ndim) + struct.pack(f">{array.ndim}i", *array.shape) + b"\0" * (-4 * array.ndim % 8)
                + name_el
                + struct.pack(">II", 2, len(values)) + values + b"\0" * (-len(values) % 8)
            )
            body += struct.pack(">II", 14, len(element)) + element
        header = b"MATLAB 5.0 MAT-file".ljust(116, b" ") + b"\0" * 8 + struct.pack(">H", 0x0100) + b"MI"
        (tmp_path / f"{split}_32x32.mat").write_bytes(header + body)
        if split == "train":
            expected = images, labels
    splits = load_dataset("svhn", data_dir=tmp_path, download=False)
    assert_split(splits.train, *expected)


def test_a_file_that_is_not_a_mat_file_is_a_clear_error(tmp_path):
    (tmp_path / "train_32x32.mat").write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(600))  # a v7.3 (HDF5) signature
    (tmp_path / "test_32x32.mat").write_bytes(b"not a mat file at all")
    with pytest.raises(Exception) as info:
        load_dataset("svhn", data_dir=tmp_path, download=False)
    message = str(info.value)
    assert "train_32x32.mat" in message and "MAT-file" in message
    assert "Traceback" not in message


FASHION = data.FASHION_MNIST_SYSTEM_DIR


@pytest.mark.skipif(not FASHION.is_dir(), reason=f"{FASHION} absent: `apt-get install dataset-fashion-mnist`")
def test_fashion_mnist_from_the_debian_package(tmp_path):
    splits = load_dataset("fashion-mnist", data_dir=tmp_path, download=False)
    assert splits.source == str(FASHION)
    assert splits.train.images.shape == (60_000, 1, 28, 28) and splits.test.images.shape == (10_000, 1, 28, 28)
    assert splits.train.labels.bincount().tolist() == [6_000] * 10
    assert splits.test.labels.bincount().tolist() == [1_000] * 10
    x = normalize(splits.train.images, splits.info)
    assert x.dtype == torch.float32
    assert abs(float(x.mean())) < 0.01 and abs(float(x.std()) - 1) < 0.01
    assert not any(tmp_path.iterdir())  # found, so nothing was written


# --- The Fashion-MNIST subset bundled with ablate ---------------------------------------------

needs_debian = pytest.mark.skipif(not FASHION.is_dir(), reason=f"{FASHION} absent: `apt-get install dataset-fashion-mnist`")
REPO = Path(__file__).resolve().parents[1]


def without_system_copy(monkeypatch, tmp_path) -> Path:
    """Fashion-MNIST as on a machine without Debian's package: the system-wide folder is elsewhere
    and empty, and nothing is downloaded. Returns a data dir with nothing in it."""
    monkeypatch.setitem(data.LAYOUTS, "fashion-mnist", replace(data.LAYOUTS["fashion-mnist"], elsewhere=(tmp_path / "system",)))
    monkeypatch.setattr(data, "_download", lambda *args: pytest.fail("downloaded although the bundled subset holds the data"))
    return tmp_path / "data"


def test_the_bundle_is_small_and_carries_its_licence():
    path = bundled.bundled_path("fashion-mnist")
    assert path.stat().st_size < 8 * 2**20  # the limit on repository files
    licence = (path.parent / "FASHION-MNIST-LICENSE").read_text()
    assert "Copyright (c) 2017 Zalando SE" in licence and "Permission is hereby granted, free of charge" in licence
    b = bundled.read_bundle("fashion-mnist")
    assert b.train_images.shape == (len(b.train_index), 1, 28, 28) and b.test_images.shape == (len(b.test_index), 1, 28, 28)
    assert len(b.train_labels) == 60_000 and len(b.test_labels) == 10_000
    # Class-balanced, and the first examples of ablate's seed-0 order: the subset of that size.
    for labels, index in ((b.train_labels, b.train_index), (b.test_labels, b.test_index)):
        counts = np.bincount(labels[index], minlength=10)
        assert counts.max() - counts.min() <= 1 and counts.sum() == len(index)
    assert np.array_equal(b.train_index, split_indices(b.train_labels, train_subset=len(b.train_index), seed=0)[0])
    assert np.array_equal(b.test_index, data.balanced_test_indices(b.test_labels, len(b.test_index), seed=0))


@needs_debian
def test_the_bundle_holds_the_official_images():
    """Against Debian's copy of the official files: every label, and each bundled image where it belongs."""
    b = bundled.read_bundle("fashion-mnist")
    train_x, train_y, test_x, test_y = data.read_files("fashion-mnist", str(FASHION))
    assert np.array_equal(b.train_labels, train_y.numpy()) and np.array_equal(b.test_labels, test_y.numpy())
    assert np.array_equal(b.train_images, train_x[torch.from_numpy(b.train_index).long()].numpy())
    assert np.array_equal(b.test_images, test_x[torch.from_numpy(b.test_index).long()].numpy())


@needs_debian
def test_the_bundle_is_what_its_script_writes(tmp_path):
    out = tmp_path / "subset.npz"
    b = bundled.read_bundle("fashion-mnist")
    result = subprocess.run([sys.executable, str(REPO / "tools" / "bundle_fashion_mnist.py"), "--from", str(FASHION), "--out", str(out),
                             "--train", str(len(b.train_index)), "--test", str(len(b.test_index))], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert out.read_bytes() == bundled.bundled_path("fashion-mnist").read_bytes()


@needs_debian
def test_the_bundle_gives_the_same_splits_as_the_full_files(tmp_path, monkeypatch, caplog):
    full = load_dataset("fashion-mnist", data_dir=tmp_path / "data", train_subset=4096, test_subset=1000, download=False)
    assert full.source == str(FASHION)  # the full files are used whenever they are present
    without_system_copy(monkeypatch, tmp_path)
    with caplog.at_level("INFO", logger="ablate"):
        small = load_dataset("fashion-mnist", data_dir=tmp_path / "data", train_subset=4096, test_subset=1000)
    assert small.source.startswith(data.BUNDLED_SOURCE)
    for name in ("train", "test"):
        a, b = getattr(full, name), getattr(small, name)
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    notes = [r.getMessage() for r in caplog.records if r.name == "ablate.engine.data"]
    assert len(notes) == 1 and "\n" not in notes[0] and "using the subset bundled with ablate" in notes[0]
    assert str(tmp_path / "system") in notes[0]  # where it looked


def test_the_bundle_serves_any_study_that_fits(tmp_path, monkeypatch):
    root = without_system_copy(monkeypatch, tmp_path)
    b = bundled.read_bundle("fashion-mnist")
    splits = load_dataset("fashion-mnist", data_dir=root, train_subset=len(b.train_index), test_subset=len(b.test_index))
    assert splits.source.startswith(data.BUNDLED_SOURCE) and not root.exists()  # nothing written
    assert torch.equal(splits.train.images, torch.from_numpy(b.train_images))
    assert splits.train.labels.bincount().tolist() == np.bincount(b.train_labels[b.train_index]).tolist()
    smaller = load_dataset("fashion-mnist", data_dir=root, train_subset=100, test_subset=50)
    assert len(smaller.train) == 100 and len(smaller.test) == 50
    assert smaller.train.labels.bincount().tolist() == [10] * 10 and smaller.test.labels.bincount().tolist() == [5] * 10


@pytest.mark.parametrize("kwargs, why", [
    ({"train_subset": 100}, "test_subset all"),  # the whole test split is not bundled
    ({"train_subset": 100, "test_subset": 50, "val_size": 500}, "val_size 500"),
    ({"train_subset": 20_000, "test_subset": 50}, "train_subset 20000"),
])
def test_what_the_bundle_does_not_hold_is_a_clear_error(tmp_path, monkeypatch, kwargs, why):
    root = without_system_copy(monkeypatch, tmp_path)
    with pytest.raises(DataError) as error:
        load_dataset("fashion-mnist", data_dir=root, download=False, **kwargs)
    message = str(error.value)
    assert "apt-get install dataset-fashion-mnist" in message and "bundled with ablate" in message and why in message
    assert "\n" not in message


# --- Missing, broken and downloaded datasets --------------------------------------------------


@pytest.mark.parametrize("name", ["fashion-mnist", "mnist", "cifar10", "cifar100", "svhn"])
def test_missing_dataset_is_one_clear_error(tmp_path, monkeypatch, name):
    nowhere = tmp_path / "system"
    monkeypatch.setitem(data.LAYOUTS, "fashion-mnist", replace(data.LAYOUTS["fashion-mnist"], elsewhere=(nowhere,)))
    monkeypatch.setattr(data, "_download", lambda *args: pytest.fail("downloaded with download=False"))
    with pytest.raises(DataError) as error:
        load_dataset(name, data_dir=tmp_path / "data", download=False)
    message = str(error.value)
    assert str(tmp_path / "data") in message and "internet" in message
    if name == "fashion-mnist":
        assert str(nowhere) in message and "apt-get install dataset-fashion-mnist" in message
    if name == "cifar10":
        assert str(tmp_path / "data" / "cifar-10-batches-py") in message and "cifar-10-python.tar.gz" in message


def test_partial_copy_names_the_missing_files(tmp_path):
    write_cifar10(tmp_path, np.random.default_rng(11))
    (tmp_path / "cifar-10-batches-py" / "data_batch_4").unlink()
    with pytest.raises(DataError, match="cifar-10-batches-py lacks data_batch_4"):
        load_dataset("cifar10", data_dir=tmp_path, download=False)


def test_failed_download_becomes_data_error(tmp_path, monkeypatch):
    def offline(name, root):
        raise OSError("Network is unreachable")

    monkeypatch.setattr(data, "_download", offline)
    with pytest.raises(DataError, match="Downloading failed: OSError: Network is unreachable") as error:
        load_dataset("cifar100", data_dir=tmp_path)
    assert error.value.__cause__ is None and error.value.__context__ is None


def test_download_only_when_missing(tmp_path, monkeypatch):
    calls = []

    def fake_download(name, root):  # stands in for torchvision: writes the files where it would
        calls.append(name)
        write_mnist(root / "MNIST" / "raw", np.random.default_rng(7), 20, 10, gz=True)

    monkeypatch.setattr(data, "_download", fake_download)
    assert len(load_dataset("mnist", data_dir=tmp_path).train) == 20
    assert len(load_dataset("mnist", data_dir=tmp_path).train) == 20
    assert calls == ["mnist"]


def test_default_data_dir(tmp_path, monkeypatch):
    monkeypatch.delenv("ABLATE_DATA", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data.default_data_dir() == tmp_path / "home" / ".cache" / "ablate" / "data"
    monkeypatch.setenv("ABLATE_DATA", str(tmp_path / "env"))
    assert data.default_data_dir() == tmp_path / "env"
    written = write_cifar100(tmp_path / "env", np.random.default_rng(8))
    assert_split(load_dataset("cifar100", download=False).test, *written["test"])


def test_unreadable_files_are_a_data_error(tmp_path):
    write_mnist(tmp_path / "MNIST" / "raw", np.random.default_rng(9), 20, 10, gz=False)
    path = tmp_path / "MNIST" / "raw" / "t10k-images-idx3-ubyte"
    path.write_bytes(path.read_bytes()[:-100])  # truncated
    with pytest.raises(DataError, match="cannot read"):
        load_dataset("mnist", data_dir=tmp_path, download=False)


def test_wrong_image_size_is_a_data_error(tmp_path):
    rng = np.random.default_rng(10)
    for split in ("train", "test"):
        mat, _, _ = svhn_arrays(rng, 4)
        write_mat(tmp_path / f"{split}_32x32.mat", {"X": mat["X"][:16], "y": mat["y"]}, compress=False)
    with pytest.raises(DataError, match=r"\[N, 3, 32, 32\]"):
        load_dataset("svhn", data_dir=tmp_path, download=False)


def test_unknown_dataset():
    with pytest.raises(ValueError, match="valid datasets"):
        load_dataset("imagenet")


# --- Synthetic data, subsets and validation splits --------------------------------------------


def test_synthetic_is_deterministic():
    first, second = load_dataset("synthetic"), load_dataset("synthetic")
    assert first.train.images.shape == (2048, 3, 16, 16) and first.test.images.shape == (512, 3, 16, 16)
    assert first.train.images is not second.train.images  # a copy of the cache, not the cache
    assert torch.equal(first.train.images, second.train.images) and torch.equal(first.test.labels, second.test.labels)
    a, b = (data.synthetic_images(64, 16, np.random.default_rng(0)) for _ in range(2))
    assert np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1])
    assert first.train.labels.bincount().tolist() == [205] * 8 + [204] * 2
    assert first.test.labels.bincount().tolist() == [52] * 2 + [51] * 8
    assert len(row_hashes(first.train.images)) == 2048  # no duplicates


def test_loaded_splits_are_copies():
    splits = load_dataset("synthetic")
    before = load_dataset("synthetic").test.images.clone()
    splits.test.images.zero_()
    assert torch.equal(load_dataset("synthetic").test.images, before)


def test_synthetic_is_learnable_with_augmentation():
    torch.manual_seed(0)
    splits = load_dataset("synthetic")
    model = nn.Sequential(
        nn.Conv2d(3, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.BatchNorm2d(32), nn.ReLU(),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, 10),
    )
    optimizer = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, nesterov=True)
    generator = torch.Generator().manual_seed(0)
    for images, labels in batches(splits.train, 64, shuffle=True, generator=generator):
        x = normalize(augment(images, splits.info.augment, generator=generator), splits.info)
        loss = nn.functional.cross_entropy(model(x), labels)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    model.eval()
    with torch.no_grad():
        accuracy = (model(normalize(splits.test.images, splits.info)).argmax(1) == splits.test.labels).float().mean()
    assert accuracy > 0.9  # one epoch


def test_train_subset_is_class_balanced_and_seeded():
    a = load_dataset("synthetic", train_subset=100, seed=1)
    assert a.train.labels.bincount().tolist() == [10] * 10
    b = load_dataset("synthetic", train_subset=100, seed=1)
    c = load_dataset("synthetic", train_subset=100, seed=2)
    assert torch.equal(a.train.images, b.train.images)
    assert not torch.equal(a.train.images, c.train.images)
    counts = load_dataset("synthetic", train_subset=105).train.labels.bincount()
    assert int(counts.sum()) == 105 and int(counts.max() - counts.min()) == 1
    assert len(a.test) == 512  # the test split is never subset


def test_validation_is_held_out_before_the_subset():
    splits = load_dataset("synthetic", val_size=200, train_subset=500, seed=3)
    assert splits.val is not None and len(splits.val) == 200 and len(splits.train) == 500
    assert splits.val.labels.bincount().tolist() == [20] * 10
    assert not row_hashes(splits.val.images) & row_hashes(splits.train.images)
    # the same validation set whatever the subset, and the whole remainder when there is none
    full = load_dataset("synthetic", val_size=200, seed=3)
    assert torch.equal(full.val.images, splits.val.images) and len(full.train) == 2048 - 200
    everything = row_hashes(load_dataset("synthetic").train.images)
    assert row_hashes(full.val.images) | row_hashes(full.train.images) == everything


def test_split_indices_bookkeeping():
    labels = np.repeat(np.arange(10), [50, 50, 50, 50, 50, 50, 50, 50, 50, 3])  # class 9 is rare
    train, val = split_indices(labels, val_size=40, train_subset=300, seed=0)
    assert len(np.intersect1d(train, val)) == 0 and len(train) == 300 and len(val) == 40
    assert np.all(np.diff(train) > 0) and np.all(np.diff(val) > 0)
    val_counts = np.bincount(labels[val], minlength=10)  # the rare class gives all it has, one other fills in
    assert val_counts[9] == 3 and sorted(val_counts[:9].tolist()) == [4] * 8 + [5]
    # 300 from what is left: the 9 big classes give 33 or 34, the rare one is exhausted
    train_counts = np.bincount(labels[train], minlength=10)
    assert train_counts[9] == 0 and set(train_counts[:9].tolist()) <= {33, 34}
    everything, none = split_indices(labels)
    assert none is None and everything.tolist() == list(range(len(labels)))


@pytest.mark.parametrize(
    "kwargs", [{"val_size": -1}, {"val_size": 2048}, {"train_subset": 0}, {"val_size": 48, "train_subset": 2001}]
)
def test_impossible_sizes_raise(kwargs):
    with pytest.raises(ValueError, match="dataset:"):
        load_dataset("synthetic", **kwargs)


# --- Batches, augmentation, normalisation -----------------------------------------------------


def indexed_split(n: int, device: str = "cpu") -> Split:
    """Image i is filled with i % 251 and labelled i, so a batch shows which examples it holds."""
    labels = torch.arange(n)
    images = (labels % 251).to(torch.uint8).view(n, 1, 1, 1).expand(n, 1, 2, 2).contiguous()
    return Split(images.to(device), labels.to(device))


@pytest.mark.parametrize("device", DEVICES)
def test_batches_cover_each_example_once(device):
    split = indexed_split(103, device)
    seen = []
    for images, labels in batches(split, 10, shuffle=True, generator=torch.Generator().manual_seed(0)):
        assert images.device == split.device and len(labels) <= 10
        assert torch.equal(images[:, 0, 0, 0], (labels % 251).to(torch.uint8))  # images travel with labels
        seen.append(labels.cpu())
    order = torch.cat(seen)
    assert sorted(order.tolist()) == list(range(103)) and order.tolist() != list(range(103))
    replay = batches(split, 10, shuffle=True, generator=torch.Generator().manual_seed(0))
    again = torch.cat([labels.cpu() for _, labels in replay])
    assert torch.equal(order, again)


def test_batches_in_order_and_drop_last():
    split = indexed_split(25)
    assert [len(y) for _, y in batches(split, 10, shuffle=False)] == [10, 10, 5]
    assert torch.cat([y for _, y in batches(split, 10, shuffle=False)]).tolist() == list(range(25))
    kept = [y for _, y in batches(split, 10, shuffle=True, drop_last=True, generator=torch.Generator().manual_seed(1))]
    assert [len(y) for y in kept] == [10, 10]


def reference_crop(image: torch.Tensor, dy: int, dx: int, pad: int = 4) -> torch.Tensor:
    """One image padded with zeros and cropped at (dy, dx), written out pixel by pixel."""
    c, h, w = image.shape
    out = torch.zeros_like(image)
    for y in range(h):
        for x in range(w):
            sy, sx = y + dy - pad, x + dx - pad
            if 0 <= sy < h and 0 <= sx < w:
                out[:, y, x] = image[:, sy, sx]
    return out


def test_crop_is_a_zero_padded_shift():
    # Values 1..255, so a zero can only come from the padding and each crop has one explanation.
    images = torch.randint(1, 256, (1000, 2, 6, 6), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cropped = augment(images, ("crop",), generator=torch.Generator().manual_seed(1))
    assert cropped.shape == images.shape and cropped.dtype == torch.uint8
    padded = nn.functional.pad(images, (4, 4, 4, 4))
    candidates = {(dy, dx): padded[:, :, dy : dy + 6, dx : dx + 6] for dy in range(9) for dx in range(9)}
    offsets = []
    for i in range(len(images)):
        matches = [shift for shift, crop in candidates.items() if torch.equal(crop[i], cropped[i])]
        assert len(matches) == 1
        offsets.append(matches[0])
    for i in range(0, len(images), 97):  # the shifted copies themselves, against the slow reference
        assert torch.equal(cropped[i], reference_crop(images[i], *offsets[i]))
    assert len(set(offsets)) == 81  # every offset from -4 to +4 in both directions turns up
    assert (4, 4) in offsets and not torch.equal(cropped, images)


def test_flip_mirrors_about_half():
    images = torch.randint(0, 256, (1000, 3, 5, 5), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    flipped = augment(images, ("flip",), generator=torch.Generator().manual_seed(1))
    assert flipped.shape == images.shape and flipped.dtype == torch.uint8
    same = (flipped == images).flatten(1).all(1)
    mirrored = (flipped == images.flip(-1)).flatten(1).all(1)
    assert bool((same ^ mirrored).all())
    assert 400 < int(mirrored.sum()) < 600


@pytest.mark.parametrize("device", DEVICES)
def test_augment_is_seeded_and_checks_names(device):
    images = torch.randint(0, 256, (64, 3, 8, 8), dtype=torch.uint8).to(device)
    a = augment(images, AUGMENTATIONS, generator=torch.Generator().manual_seed(5))
    b = augment(images, AUGMENTATIONS, generator=torch.Generator().manual_seed(5))
    c = augment(images, AUGMENTATIONS, generator=torch.Generator().manual_seed(6))
    assert a.device == images.device and torch.equal(a, b) and not torch.equal(a, c)
    assert augment(images, (), generator=None) is images
    with pytest.raises(ValueError, match="crop, flip"):
        augment(images, ("crop", "rotate"), generator=None)


@pytest.mark.parametrize("device", DEVICES)
def test_normalize_uses_the_table(device):
    info = data.dataset_info("cifar10")
    images = torch.randint(0, 256, (4, 3, 8, 8), dtype=torch.uint8).to(device)
    mean = torch.tensor(info.mean, dtype=torch.float64, device=device).view(1, 3, 1, 1)
    std = torch.tensor(info.std, dtype=torch.float64, device=device).view(1, 3, 1, 1)
    expected = (images.double() / 255 - mean) / std
    x = normalize(images, info)
    assert x.dtype == torch.float32 and x.device == images.device
    torch.testing.assert_close(x.double(), expected, rtol=1e-5, atol=1e-5)
    assert normalize(images, info, dtype=torch.bfloat16).dtype == torch.bfloat16


@pytest.mark.parametrize("device", DEVICES)
def test_load_onto_device(device):
    splits = load_dataset("synthetic", device=device, val_size=100, train_subset=200)
    for split in (splits.train, splits.val, splits.test):
        assert split.images.device.type == device and split.labels.device.type == device


def test_split_checks_its_tensors():
    with pytest.raises(ValueError, match="uint8"):
        Split(torch.zeros(2, 1, 4, 4), torch.zeros(2, dtype=torch.int64))
    with pytest.raises(ValueError, match="int64"):
        Split(torch.zeros(2, 1, 4, 4, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64))
