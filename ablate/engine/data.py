"""Datasets: how each one is found, read and put on the device (what each one is: `ablate.catalog`)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import gzip
import logging
import math
import os
import pickle
import socket
import struct
import tarfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from ablate.spec.paths import user_path
from ablate.engine.bundled import read_bundle
from ablate.engine.imagesets import (IMAGENETTE_VERSIONS, STL10_FILES, ImagesetError, imagenette_data, imagenette_version,
                                    read_stl10)
from ablate.spec.catalog import AUGMENTATIONS, DATASETS, DatasetInfo, dataset_info  # noqa: F401 (re-exported)
from ablate.spec.owndata import OwnData

log = logging.getLogger(__name__)  # one-line notices (the bundled subset in use); `ablate run` prints them


# --- Loading ---------------------------------------------------------------------------------
#
# Everything below follows airbench: a dataset is small enough to sit whole on the training
# device as uint8, so batches are index selections of one permutation and augmentation is a
# handful of tensor ops over the whole batch. There is no DataLoader, no worker process and no
# per-sample Python anywhere after decoding.

CROP_PADDING = 4  # He et al. (2016), sec. 4.2: "4 pixels are padded on each side"
FASHION_MNIST_SYSTEM_DIR = Path("/usr/share/datasets/fashion-mnist")  # Debian's dataset-fashion-mnist
DOWNLOAD_TIMEOUT_S = 60  # per socket operation; see _socket_timeout
BUNDLED_SOURCE = "bundled subset"  # Splits.source of data from ablate.engine.bundled, followed by its path


class DataError(Exception):
    """A dataset that is neither on disk nor downloadable, or whose files cannot be read."""


@dataclass(frozen=True, eq=False)  # eq=False: comparing tensors elementwise is not equality
class Split:
    images: torch.Tensor  # uint8 [N, C, H, W]
    labels: torch.Tensor  # int64 [N]

    def __post_init__(self) -> None:
        if self.images.dtype != torch.uint8 or self.images.dim() != 4:
            raise ValueError(
                f"Split: images must be uint8 [N, C, H, W], got {self.images.dtype} {tuple(self.images.shape)}"
            )
        if self.labels.dtype != torch.int64 or self.labels.shape != self.images.shape[:1]:
            raise ValueError(
                f"Split: labels must be int64 [{len(self.images)}], got {self.labels.dtype} {tuple(self.labels.shape)}"
            )
        if self.images.device != self.labels.device:
            raise ValueError(f"Split: images on {self.images.device} but labels on {self.labels.device}")

    def __len__(self) -> int:
        return len(self.labels)

    @property
    def device(self) -> torch.device:
        return self.images.device


@dataclass(frozen=True, eq=False)
class Splits:
    train: Split
    val: Split | None  # held out of the official training split; None when val_size == 0
    test: Split  # the official test split, whole
    info: DatasetInfo
    source: str = ""  # the directory the files were read from, or "generated": provenance for results


def default_data_dir() -> Path:
    """`$ABLATE_DATA` if set, else `~/.cache/ablate/data` (`~` expanded: ablate.spec.paths)."""
    return user_path(os.environ.get("ABLATE_DATA") or "~/.cache/ablate/data", "--data-dir")


def _data_root(data_dir: str | os.PathLike[str] | None) -> Path:
    """The data dir, absolute; a DataError when it names a file (a folder is created only to download into)."""
    try:
        root = (user_path(data_dir, "--data-dir") if data_dir is not None else default_data_dir()).absolute()
    except ValueError as exc:  # PathError: a ~ without a home
        raise DataError(str(exc)) from None
    if root.exists() and not root.is_dir():
        raise DataError(f"--data-dir: {root} is a file, not a folder; give the folder that holds the datasets "
                        "(or leave it out for ~/.cache/ablate/data)")
    return root


def load_dataset(
    name: str | OwnData,
    *,
    data_dir: str | os.PathLike[str] | None = None,
    device: str | torch.device = "cpu",
    train_subset: int | None = None,
    val_size: int = 0,
    seed: int = 0,
    download: bool = True,
    test_subset: int | None = None,
    resize: int | None = None,
) -> Splits:
    """A dataset on `device` as uint8 NCHW images and int64 labels.

    `val_size` examples are held out of the training split first, then `train_subset` examples
    (all remaining when None) are drawn from the rest; both are class-balanced and fixed by
    `seed`, so the validation set is the same whatever the subset and never overlaps it.
    `test_subset` examples (all when None) are drawn from the test split the same way.
    Decoded files are cached per process, so loading a dataset again costs only the copy.

    Where the files are looked for, in order: the data dir, the system-wide install (Debian's
    dataset-fashion-mnist), then, for Fashion-MNIST, the subset bundled with ablate
    (`ablate.bundled`) if it holds every example asked for (it gives the same images), and last
    a download into the data dir. Raises DataError when none has the dataset.

    Own data (an `OwnData`, from a study's [dataset] table) is read from its folder or .npz file,
    decoded once and cached in the data dir (`ablate.engine.owndata`); so is Imagenette, decoded
    at `resize` pixels a side (the recipe's; 160 when None). Other datasets ignore `resize`: the
    training resizes their batches on the device.

    Before anything is read, a DataError when the images would not fit in the device's memory.
    """
    chosen = None  # the bundle's positions of the examples asked for, when the bundle is used
    nominal = name.info if isinstance(name, OwnData) else dataset_info(name)
    if name == "imagenette":
        nominal = dataclasses.replace(nominal, size=resize or nominal.size)
    _check_fits(name, nominal, torch.device(device), train_subset or nominal.train_size - val_size,
                val_size + (test_subset or nominal.test_size))
    if isinstance(name, OwnData):
        arrays, info, source = _own(name, data_dir)
    elif name == "imagenette":
        arrays, info, source = _imagenette(nominal.size, data_dir, download)
    else:
        info = nominal
        arrays, chosen, source = _builtin(name, data_dir, download, train_subset=train_subset, val_size=val_size,
                                          test_subset=test_subset, seed=seed)
    train_x, train_y, test_x, test_y = arrays
    if chosen is None:
        train_idx, val_idx = split_indices(train_y, val_size=val_size, train_subset=train_subset, seed=seed)
        test_idx = balanced_test_indices(test_y, test_subset, seed=seed)
    else:
        train_idx, val_idx, test_idx = chosen

    def take(images: torch.Tensor, labels: torch.Tensor, idx: np.ndarray | None) -> Split:
        if idx is not None:  # indexing copies
            index = torch.from_numpy(idx)
            return Split(images[index].to(device), labels[index].to(device))
        # copy=True: these CPU tensors are the cache's own; a caller writing into its split must
        # not change what the next load_dataset returns.
        return Split(images.to(device, copy=True), labels.to(device, copy=True))

    return Splits(
        train=take(train_x, train_y, train_idx),
        val=take(train_x, train_y, val_idx) if val_idx is not None else None,
        test=take(test_x, test_y, test_idx),
        info=info,
        source=source,
    )


def _builtin(name: str, data_dir: str | os.PathLike[str] | None, download: bool, *, train_subset: int | None,
             val_size: int, test_subset: int | None, seed: int) -> tuple[_Arrays, tuple | None, str]:
    """A built-in dataset's arrays, the bundle's positions of the examples asked for (or None), and its source."""
    if name == "synthetic":
        return _synthetic(), None, "generated"
    root = _data_root(data_dir)
    bundled, why_not = (None, "") if _on_disk(name, root) else _from_bundle(
        name, root, train_subset=train_subset, val_size=val_size, test_subset=test_subset, seed=seed)
    if bundled is not None:
        return bundled
    try:
        folder, missing = _locate(name, root, download), None
    except DataError as exc:
        folder, missing = None, f"{exc}{why_not}"
    if missing is not None:  # raised outside the handler: one error, no chained context
        raise DataError(missing)
    if data_dir is not None and root not in Path(folder).absolute().parents and Path(folder).absolute() != root:
        # The folder the user named was not used: say so, and which one was.
        there = "does not exist" if not root.exists() else f"holds no {name} files"
        log.info(f"{name}: the data dir {root} {there}; using {folder}")
    return read_files(name, str(folder)), None, str(folder)


def _own(own: OwnData, data_dir: str | os.PathLike[str] | None) -> tuple[_Arrays, DatasetInfo, str]:
    """Own data's arrays as CPU tensors, its measured info and its source; DataError when they cannot be had."""
    from ablate.engine.owndata import OwnDataReadError, read_own

    try:
        arrays, info, source = read_own(own, _data_root(data_dir))
    except OwnDataReadError as exc:
        raise DataError(f"dataset {own.name!r}: {exc}") from None
    tensors = (torch.from_numpy(_writable(a)) for a in arrays)
    return tuple(tensors), info, source  # type: ignore[return-value]


def _imagenette(size: int, data_dir: str | os.PathLike[str] | None, download: bool) -> tuple[_Arrays, DatasetInfo, str]:
    """Imagenette decoded at `size` from the smallest version that has it (found or downloaded as
    every named dataset is), through the own-data decoder and its cache in the data dir."""
    version, _ = imagenette_version(size)
    root = _data_root(data_dir)
    folder = _locate(_imagenette_key(version), root, download)
    try:
        own = imagenette_data(folder, size)
    except ImagesetError as exc:
        raise DataError(f"dataset 'imagenette': {exc}") from None
    arrays, _, source = _own(own, root)
    # The table's ImageNet statistics, not the measured ones: as fast.ai's Imagenette baselines normalise.
    return arrays, own.info, source


#: Of the device's free memory (the host's, on the CPU), what the uint8 data may take: training needs the rest.
DATA_SHARE = 0.5


def _check_fits(data: str | OwnData, info: DatasetInfo, device: torch.device, train: int, others: int) -> None:
    """A DataError, before reading, when the training and other (validation, test) images would not
    fit in the device's memory as uint8; it says what `size` (or `resize`) or `train_subset` would."""
    images = train + others
    per_image = info.channels * info.size * info.size
    needed = images * per_image
    if device.type == "cuda":
        free = torch.cuda.mem_get_info(device)[0]
    else:
        free = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") if hasattr(os, "sysconf") else needed * 4
    room = int(free * DATA_SHARE)
    if needed <= room:
        return
    side = max(8, int(math.sqrt(room / images / info.channels)))
    fits = max(1, room // per_image - others)
    subset = f"train_subset = {fits} (or less) in [train]"
    # What decides the stored size: own data's [dataset] size, Imagenette's resize (it is decoded at it).
    smaller = ""  # the other named datasets are stored at their own size, whatever the recipe's resize
    if isinstance(data, OwnData):
        smaller = f"size = {side} (or less) in [dataset], or "
    elif data == "imagenette":  # decoded at the recipe's resize
        smaller = f"resize = {side} (or less) in [train], or "
    raise DataError(
        f"dataset {info.name!r}: {images} images of {info.channels}x{info.size}x{info.size} "
        f"take {needed / 2**30:.1f} GiB as uint8, more than {DATA_SHARE:.0%} of the {free / 2**30:.1f} GiB free on {device}; "
        f"set {smaller}{subset}"
    )


def balanced_test_indices(labels: torch.Tensor | np.ndarray, test_subset: int | None, *, seed: int = 0) -> np.ndarray | None:
    """Sorted positions of a class-balanced `test_subset` of the test split (None: all of it).

    Its own generator seeded by `seed`, so the subset depends on nothing else; the subset of
    size n is the first n of one fixed order, so a smaller subset lies inside a larger one.
    """
    if test_subset is None:
        return None
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    if not 0 < test_subset <= len(labels):
        raise ValueError(f"dataset: test_subset must be in [1, {len(labels)}] for {len(labels)} test examples, got {test_subset}")
    return _balanced(labels, test_subset, np.random.default_rng(seed))


def split_indices(
    labels: torch.Tensor | np.ndarray, *, val_size: int = 0, train_subset: int | None = None, seed: int = 0
) -> tuple[np.ndarray, np.ndarray | None]:
    """Sorted positions of the training and validation examples within the official training split.

    Validation is drawn first, from one generator seeded by `seed`, so it does not depend on
    `train_subset`; the training subset is then drawn from what is left.
    """
    labels = labels.cpu().numpy() if isinstance(labels, torch.Tensor) else np.asarray(labels)
    n = len(labels)
    if val_size < 0 or val_size >= n:
        raise ValueError(f"dataset: val_size must be in [0, {n}) for {n} training examples, got {val_size}")
    rng = np.random.default_rng(seed)
    val = _balanced(labels, val_size, rng) if val_size else None
    rest = np.setdiff1d(np.arange(n), val, assume_unique=True) if val is not None else np.arange(n)
    if train_subset is None:
        return rest, val
    if not 0 < train_subset <= len(rest):
        raise ValueError(
            f"dataset: train_subset must be in [1, {len(rest)}] ({n} training examples, {val_size} for validation), "
            f"got {train_subset}"
        )
    return rest[_balanced(labels[rest], train_subset, rng)], val


def _balanced(labels: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
    """`n` sorted positions with per-class counts as equal as the classes allow.

    Shuffle, rank each example within its class, and take the lowest ranks first: every class
    gives its first example before any gives its second. Classes too small for their share are
    exhausted and the others fill in; ties at the last rank go to a random set of classes.
    """
    order = rng.permutation(len(labels))
    classes, class_of = np.unique(labels[order], return_inverse=True)
    by_class = np.argsort(class_of, kind="stable")
    starts = np.searchsorted(class_of[by_class], np.arange(len(classes)))
    rank = np.empty(len(labels), np.int64)
    rank[by_class] = np.arange(len(labels)) - starts[class_of[by_class]]
    priority = rng.permutation(len(classes))[class_of]
    chosen = np.lexsort((priority, rank))[:n]
    return np.sort(order[chosen])


def batches(
    split: Split,
    batch_size: int,
    *,
    shuffle: bool,
    generator: torch.Generator | None = None,
    drop_last: bool = False,
) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """(uint8 images, int64 labels) batches covering the split once, in random order if `shuffle`.

    The permutation is drawn on the generator's device (so a CPU generator gives the same order
    for a CUDA split as for a CPU one) and moved to the split's device.
    """
    if batch_size < 1:
        raise ValueError(f"batches: batch_size must be positive, got {batch_size}")
    n = len(split)
    order = None
    if shuffle:
        on = generator.device if generator is not None else split.device
        order = torch.randperm(n, generator=generator, device=on).to(split.device)
    stop = n - n % batch_size if drop_last else n
    for start in range(0, stop, batch_size):
        if order is None:  # in order: slices are views, no copy
            yield split.images[start : start + batch_size], split.labels[start : start + batch_size]
        else:
            index = order[start : start + batch_size]
            yield split.images[index], split.labels[index]


def augment(images: torch.Tensor, ops: Sequence[str], *, generator: torch.Generator | None) -> torch.Tensor:
    """A randomly augmented copy of a uint8 [N, C, H, W] batch (the batch itself if `ops` is empty).

    `ops` are names from AUGMENTATIONS, applied in order; the metadata's `augment` suits the data.

    "crop": pad 4 pixels of zeros on each side and crop back at a random offset, as He et al.
    (2016) did for CIFAR-10. "flip": mirror each image left-right with probability 1/2.
    Random numbers are drawn on the generator's device, so results depend only on its seed.
    """
    unknown = [op for op in ops if op not in AUGMENTATIONS]
    if unknown:
        raise ValueError(f"augment: unknown augmentation(s) {unknown}; valid: {', '.join(AUGMENTATIONS)}")
    for op in ops:
        images = _crop(images, CROP_PADDING, generator) if op == "crop" else _flip(images, generator)
    return images


def _uniform_ints(high: int, n: int, generator: torch.Generator | None, device: torch.device) -> torch.Tensor:
    on = generator.device if generator is not None else device
    return torch.randint(0, high, (n,), generator=generator, device=on).to(device)


def _crop(images: torch.Tensor, pad: int, generator: torch.Generator | None) -> torch.Tensor:
    # One gather: output pixel (n, c, y, x) reads padded pixel (n, c, y + dy[n], x + dx[n]).
    # The four index tensors broadcast to [N, C, H, W] without being materialised separately.
    n, c, h, w = images.shape
    device = images.device
    padded = F.pad(images, (pad, pad, pad, pad))
    dy = _uniform_ints(2 * pad + 1, n, generator, device)
    dx = _uniform_ints(2 * pad + 1, n, generator, device)
    rows = (dy[:, None] + torch.arange(h, device=device))[:, None, :, None]
    cols = (dx[:, None] + torch.arange(w, device=device))[:, None, None, :]
    batch = torch.arange(n, device=device)[:, None, None, None]
    channel = torch.arange(c, device=device)[None, :, None, None]
    return padded[batch, channel, rows, cols]


def _flip(images: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    on = generator.device if generator is not None else images.device
    mirrored = (torch.rand(len(images), generator=generator, device=on) < 0.5).to(images.device)
    return torch.where(mirrored[:, None, None, None], images.flip(-1), images)


def normalize(images: torch.Tensor, info: DatasetInfo, dtype: torch.dtype = torch.float32) -> torch.Tensor:
    """(images / 255 - mean) / std per channel, with the dataset's mean and std from the table."""
    scale, shift = _affine(info, images.device, dtype)
    return torch.addcmul(shift, images.to(dtype), scale)


@functools.lru_cache(maxsize=32)
def _affine(info: DatasetInfo, device: torch.device, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor]:
    # Folded into one multiply-add: x / (255 std) - mean / std. Cached per device so a training
    # loop does not copy two small tensors to the GPU every batch.
    mean = torch.tensor(info.mean, dtype=torch.float64)
    std = torch.tensor(info.std, dtype=torch.float64)
    scale, shift = 1 / (255 * std), -mean / std
    return (
        scale.to(device=device, dtype=dtype).view(1, -1, 1, 1),
        shift.to(device=device, dtype=dtype).view(1, -1, 1, 1),
    )


# --- Finding the files ------------------------------------------------------------------------
#
# Files sit where torchvision's dataset classes put them under their root (the data dir), so a
# directory torchvision downloaded into works here and the other way round. torchvision is used
# only to download: its CIFAR and SVHN readers insist on the official md5 sums (so no small test
# file could stand in) and its SVHN reader needs scipy, so the formats are read below instead.

_Arrays = tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]  # train x, y, test x, y (CPU)
IDX_FILES = ("train-images-idx3-ubyte", "train-labels-idx1-ubyte", "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")


def _imagenette_key(version: str) -> str:
    """Imagenette's versions in LAYOUTS: the default (160 px) under the dataset's name."""
    return "imagenette" if version == "160px" else f"imagenette-{version}"


@dataclass(frozen=True)
class _Layout:
    folder: str  # under the data dir; "" for SVHN, which torchvision keeps at the root
    files: tuple[str, ...]  # all must be present (IDX files may also be gzipped)
    get_it: str  # how to get it, with {root} for the data dir
    archive: str | None = None  # an official archive that extracts into `folder`
    elsewhere: tuple[Path, ...] = ()  # system-wide installs, searched after the data dir
    dirs: tuple[str, ...] = ()  # sub-folders that must exist too (an image tree's splits)
    shown: str = ""  # the dataset as messages name it, when not its key in LAYOUTS


LAYOUTS: dict[str, _Layout] = {
    "mnist": _Layout("MNIST/raw", IDX_FILES, "copy the four MNIST IDX files (gzipped or not) into {root}/MNIST/raw"),
    "fashion-mnist": _Layout(
        "FashionMNIST/raw", IDX_FILES,
        "`apt-get install dataset-fashion-mnist`, or copy the four Fashion-MNIST IDX files (gzipped or not) "
        "into {root}/FashionMNIST/raw",
        elsewhere=(FASHION_MNIST_SYSTEM_DIR,),
    ),
    "cifar10": _Layout(
        "cifar-10-batches-py", tuple(f"data_batch_{i}" for i in range(1, 6)) + ("test_batch",),
        "copy the CIFAR-10 python version (cifar-10-python.tar.gz, or the cifar-10-batches-py folder it "
        "extracts to) into {root}",
        archive="cifar-10-python.tar.gz",
    ),
    "cifar100": _Layout(
        "cifar-100-python", ("train", "test"),
        "copy the CIFAR-100 python version (cifar-100-python.tar.gz, or the cifar-100-python folder it "
        "extracts to) into {root}",
        archive="cifar-100-python.tar.gz",
    ),
    "svhn": _Layout(
        "", ("train_32x32.mat", "test_32x32.mat"), "copy SVHN's train_32x32.mat and test_32x32.mat into {root}"
    ),
    "stl10": _Layout(
        "stl10_binary", STL10_FILES,
        "copy STL-10's binary version (stl10_binary.tar.gz, or the stl10_binary folder it extracts to, with "
        "train_X.bin, train_y.bin, test_X.bin and test_y.bin) into {root}",
        archive="stl10_binary.tar.gz",
    ),
    # One layout per Imagenette version; `imagenette_version` picks one for the size trained at.
    **{
        _imagenette_key(version): _Layout(
            folder, (), f"copy {folder}.tgz (or the {folder} folder it extracts to, with train/<wnid>/*.JPEG and "
            "val/<wnid>/*.JPEG) into {root}",
            archive=f"{folder}.tgz", dirs=("train", "val"), shown=f"imagenette ({version} version)",
        )
        for version, _, folder in IMAGENETTE_VERSIONS
    },
}


def find_file(folder: Path, name: str) -> Path | None:
    for path in (folder / name, folder / f"{name}.gz"):
        if path.is_file():
            return path
    return None


def _complete(folder: Path, layout: _Layout) -> bool:
    return not _lacking(folder, layout)


def _lacking(folder: Path, layout: _Layout) -> list[str]:
    """The layout's files and folders that `folder` lacks."""
    return ([name for name in layout.files if find_file(folder, name) is None]
            + [f"{name}/" for name in layout.dirs if not (folder / name).is_dir()])


def _folders(name: str, root: Path) -> list[Path]:
    """Where the full files of a dataset are looked for, in order: under the data dir, then system-wide."""
    layout = LAYOUTS[name]
    return [root / layout.folder, *layout.elsewhere]


def _on_disk(name: str, root: Path) -> Path | None:
    """The first folder holding all of the dataset's files, if any."""
    return next((folder for folder in _folders(name, root) if _complete(folder, LAYOUTS[name])), None)


def _from_bundle(
    name: str, root: Path, *, train_subset: int | None, val_size: int, test_subset: int | None, seed: int
) -> tuple[tuple[_Arrays, tuple[np.ndarray, np.ndarray | None, np.ndarray], str] | None, str]:
    """The bundled subset's arrays, with the positions in them of the examples asked for, and its
    source; or None and why it does not hold them (a sentence for the DataError, "" if none is bundled).

    The examples are chosen on the full splits' labels, which the bundle carries, exactly as from
    the full files: a bundled run sees the same images in the same order.
    """
    bundle = read_bundle(name)
    if bundle is None:
        return None, ""
    train_idx, val_idx = split_indices(bundle.train_labels, val_size=val_size, train_subset=train_subset, seed=seed)
    test_idx = balanced_test_indices(bundle.test_labels, test_subset, seed=seed)
    if test_idx is None:
        test_idx = np.arange(len(bundle.test_labels))
    at = [None if idx is None else bundle.positions(split, idx)
          for split, idx in (("train", train_idx), ("train", val_idx), ("test", test_idx))]
    if at[0] is None or at[2] is None or (val_idx is not None and at[1] is None):
        return None, (
            f" The Fashion-MNIST subset bundled with ablate ({bundle.describe()}, chosen with seed 0, no validation "
            f"split) does not hold what was asked for (train_subset {train_subset or 'all'}, val_size {val_size}, "
            f"test_subset {test_subset or 'all'}, seed {seed})."
        )
    arrays = _checked(name, str(bundle.path), (bundle.train_images, bundle.train_labels[bundle.train_index],
                                               bundle.test_images, bundle.test_labels[bundle.test_index]))
    looked = ", ".join(str(folder) for folder in _folders(name, root))
    log.info(f"{name}: the full files are not on this machine (looked in {looked}); using the subset bundled "
             f"with ablate ({bundle.describe()}), which holds every image this run uses: the results are the same")
    return (arrays, (at[0], at[1], at[2]), f"{BUNDLED_SOURCE} {bundle.path}"), ""


def _locate(name: str, root: Path, download: bool) -> Path:
    """The folder holding the dataset's files, downloading them into `root` only if none does."""
    layout = LAYOUTS[name]
    own = root / layout.folder
    folders = _folders(name, root)
    found = _on_disk(name, root)
    if found is not None:
        return found
    failure = ""
    archive = root / layout.archive if layout.archive else None
    if archive is not None and archive.is_file():  # copied in by hand: extracting needs no network
        try:
            with tarfile.open(archive) as tar:
                # The "data" filter refuses paths outside root; Pythons before 3.11.4 lack it.
                tar.extractall(root, **({"filter": "data"} if hasattr(tarfile, "data_filter") else {}))
        except (OSError, tarfile.TarError) as exc:
            failure = f" Extracting {archive} failed: {exc}."
    elif download:
        try:
            with _socket_timeout(DOWNLOAD_TIMEOUT_S):
                _download(name, root)
        except Exception as exc:  # whatever the network or torchvision raised: one clear error below
            failure = f" Downloading failed: {type(exc).__name__}: {' '.join(str(exc).split())}."
    if _complete(own, layout):
        return own
    looked = ", ".join(str(folder) for folder in folders)
    missing = _lacking(own, layout)
    if own.is_dir() and len(missing) < len(layout.files) + len(layout.dirs):  # a partial copy: say what is lacking
        failure = f" {own} lacks {', '.join(missing)}." + failure
    shown = layout.shown or repr(name)
    raise DataError(
        f"dataset {shown} not found; looked in {looked}.{failure} To get it: run once with internet access "
        f"(download=True) to download it into {root}, or {layout.get_it.format(root=root)}. "
        f"The data dir is data_dir if given, else $ABLATE_DATA, else ~/.cache/ablate/data."
    )


def _download(name: str, root: Path) -> None:
    # Imported here: torchvision takes seconds to import and only downloads need it.
    from torchvision import datasets
    from torchvision.datasets.utils import download_url

    if name == "svhn":  # torchvision's SVHN class would then need scipy to read the files back
        for split in ("train", "test"):
            url, filename, md5 = datasets.SVHN.split_list[split]
            download_url(url, str(root), filename, md5)
        return
    if name == "stl10":  # the whole archive (2.6 GB, the unlabelled split included): torchvision fetches no less
        datasets.STL10(str(root), split="test", download=True)
        return
    if name.startswith("imagenette"):  # torchvision >= 0.17; the version from the layout's folder
        version = next(key for key, _, folder in IMAGENETTE_VERSIONS if folder == LAYOUTS[name].folder)
        datasets.Imagenette(str(root), split="val", size=version, download=True)
        return
    dataset = {"mnist": datasets.MNIST, "fashion-mnist": datasets.FashionMNIST,
               "cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100}[name]
    dataset(str(root), train=False, download=True)  # the test split: the smaller one to read back


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    # torchvision opens URLs without a timeout, so a connection that silently stalls would hang
    # the study forever; the process-wide default applies only while downloading.
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


# --- Reading the files ------------------------------------------------------------------------


@functools.lru_cache(maxsize=4)
def read_files(name: str, folder: str) -> _Arrays:
    """The decoded dataset from its folder, as CPU tensors; cached, so a second load is a copy."""
    path = Path(folder)
    try:
        if name in ("mnist", "fashion-mnist"):
            train_x, train_y, test_x, test_y = (read_idx(find_file(path, file)) for file in IDX_FILES)
            arrays = train_x[:, None], train_y, test_x[:, None], test_y  # add the channel axis
        elif name == "cifar10":
            train = [_read_cifar(path / f"data_batch_{i}", "labels") for i in range(1, 6)]
            arrays = (np.concatenate([x for x, _ in train]), np.concatenate([y for _, y in train]),
                      *_read_cifar(path / "test_batch", "labels"))
        elif name == "cifar100":
            arrays = (*_read_cifar(path / "train", "fine_labels"), *_read_cifar(path / "test", "fine_labels"))
        elif name == "stl10":
            arrays = read_stl10(path)
        else:
            arrays = (*_read_svhn(path / "train_32x32.mat"), *_read_svhn(path / "test_32x32.mat"))
    except (ImagesetError, OSError, EOFError, ValueError, KeyError, TypeError, pickle.UnpicklingError, zlib.error) as exc:
        raise DataError(f"dataset {name!r}: cannot read the files in {folder}: {exc}. "
                        "Delete them to download again.") from None
    return _checked(name, folder, arrays)


def _checked(name: str, source: str, arrays: tuple[np.ndarray, ...]) -> _Arrays:
    info = DATASETS[name]
    train_x, train_y, test_x, test_y = (torch.from_numpy(_writable(a)) for a in arrays)
    for x, y in ((train_x, train_y), (test_x, test_y)):
        if x.dtype != torch.uint8 or tuple(x.shape[1:]) != (info.channels, info.size, info.size) or len(x) != len(y):
            raise DataError(f"dataset {name!r} in {source}: expected uint8 images "
                            f"[N, {info.channels}, {info.size}, {info.size}] and N labels, "
                            f"got {x.dtype} {tuple(x.shape)} and {len(y)} labels")
        if len(y) and not 0 <= int(y.min()) <= int(y.max()) < info.classes:
            raise DataError(f"dataset {name!r} in {source}: labels outside [0, {info.classes})")
    return train_x, train_y.long(), test_x, test_y.long()


def _writable(array: np.ndarray) -> np.ndarray:
    # torch.from_numpy shares memory and warns about read-only arrays (np.frombuffer gives those).
    array = np.ascontiguousarray(array)
    return array if array.flags.writeable else array.copy()


_IDX_TYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


def read_idx(path: Path) -> np.ndarray:
    """An IDX file (LeCun's MNIST format), gzipped or not: 2 zero bytes, type, rank, big-endian dims, data."""
    with (gzip.open if path.suffix == ".gz" else open)(path, "rb") as file:
        raw = file.read()
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_TYPES:
        raise ValueError(f"{path.name} is not an IDX file")
    rank = raw[3]
    shape = struct.unpack_from(f">{rank}I", raw, 4)
    data = np.frombuffer(raw, _IDX_TYPES[raw[2]], offset=4 + 4 * rank)
    if data.size != math.prod(shape):
        raise ValueError(f"{path.name}: header says {shape}, file holds {data.size} values")
    return data.reshape(shape)


def _read_cifar(path: Path, label_key: str) -> tuple[np.ndarray, np.ndarray]:
    """A CIFAR python batch: a pickled dict with "data" uint8 [N, 3072] (R, G, B planes, row-major) and labels."""
    # The official files were pickled by Python 2: latin1 keeps the numpy buffers intact and turns
    # their str keys into str; files written by Python 3 have bytes keys. Accept both. (A pickle
    # can run code when loaded: only the dataset's own files are read from here, as in torchvision.)
    with open(path, "rb") as file:
        entry = pickle.load(file, encoding="latin1")
    data, labels = (entry[key] if key in entry else entry[key.encode()] for key in ("data", label_key))
    return np.asarray(data, np.uint8).reshape(-1, 3, 32, 32), np.asarray(labels, np.int64)


def _read_svhn(path: Path) -> tuple[np.ndarray, np.ndarray]:
    import scipy.io  # SVHN ships MATLAB 5 MAT-files; scipy reads them (and refuses anything else)

    try:
        mat = scipy.io.loadmat(path, variable_names=("X", "y"))
    except (ValueError, NotImplementedError, OSError, EOFError) as exc:  # not a MAT-file, v7.3 (HDF5), truncated
        raise ValueError(f"{path.name} is not a readable MATLAB 5 MAT-file: {exc}") from None
    if "X" not in mat or "y" not in mat:
        raise ValueError(f"{path.name} holds no X and y arrays, as SVHN's files do")
    images = np.asarray(mat["X"], np.uint8).transpose(3, 2, 0, 1)  # [H, W, C, N] -> [N, C, H, W], as torchvision does
    labels = np.asarray(mat["y"]).reshape(-1).astype(np.int64)
    return images, np.where(labels == 10, 0, labels)  # SVHN labels the digit 0 as 10


# --- Synthetic --------------------------------------------------------------------------------

_SYNTHETIC_SEED = 20160101
# Which channels carry the stripes; label = 2 * colour + (1 if vertical else 0).
_PALETTE = np.array([(1, 0, 0), (0, 1, 0), (0, 0, 1), (1, 1, 0), (0, 1, 1)], np.float64)


@functools.lru_cache(maxsize=1)
def _synthetic() -> _Arrays:
    info = DATASETS["synthetic"]
    rng = np.random.default_rng(_SYNTHETIC_SEED)
    train = synthetic_images(info.train_size, info.size, rng)
    test = synthetic_images(info.test_size, info.size, rng)  # same generator, continued: new images
    return _checked("synthetic", "generated", (*train, *test))


def synthetic_images(n: int, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Stripes whose orientation (horizontal or vertical) and colour (which channels) give the class.

    Both survive crops and flips, so the labels stay right under the augmentations the metadata
    allows. Random phase, frequency, brightness and noise make a learnable but not trivial task:
    the channel means carry no signal (stripes average to 0.5, the plain channels get a random
    level), so a model has to look at spatial structure.
    """
    labels = rng.permutation(np.arange(n) % 10)
    colour = _PALETTE[labels // 2][:, :, None, None]  # [N, 3, 1, 1]
    vertical = (labels % 2 == 1)[:, None, None]
    cycles = rng.uniform(2.0, 4.0, (n, 1))
    phase = rng.uniform(0.0, 2 * np.pi, (n, 1))
    wave = np.sin(2 * np.pi * cycles * np.arange(size) / size + phase)  # [N, size]
    stripes = np.where(vertical, wave[:, None, :], wave[:, :, None])[:, None]  # [N, 1, size, size]
    level = rng.uniform(-0.4, 0.4, (n, 3, 1, 1))
    noise = rng.normal(0.0, 0.08, (n, 3, size, size))
    values = 0.5 + colour * 0.35 * stripes + (1 - colour) * level + noise
    return np.clip(np.rint(values * 255), 0, 255).astype(np.uint8), labels.astype(np.int64)
