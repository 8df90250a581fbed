"""Named datasets that are not small arrays: Imagenette (JPEG folders) and STL-10 (raw binaries).

The files sit where torchvision's `datasets.Imagenette` and `datasets.STL10` put them under their
root (the data dir), so a folder torchvision downloaded works here and the other way round;
`ablate.engine.data` finds or downloads them and calls the readers below.

Imagenette (fast.ai; Howard 2019) is ten easy ImageNet classes at ImageNet-like resolution:
`imagenette2-160/{train,val}/<wnid>/*.JPEG` (shorter side 160 px; also a 320 px and a full-size
version). Its JPEGs are decoded once, in parallel, at the size the study trains at and cached in
the data dir: the own-data decoder and cache (`ablate.engine.owndata`) do it, with each image's
central square resized, as ImageNet evaluation does (He et al. 2016, sec. 3.4), rather than squashed.

STL-10 (Coates, Ng and Lee 2011) is 96 px images, also from ImageNet: the labelled splits are
`stl10_binary/{train,test}_{X,y}.bin`, read here as they are (no decoding, so no cache).
"""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np

from ablate.spec.catalog import DATASETS, DatasetInfo
from ablate.spec.owndata import OwnData, OwnDataError, list_image_folder

__all__ = ["IMAGENETTE_VERSIONS", "ImagesetError", "imagenette_version", "imagenette_data", "read_stl10", "STL10_FILES"]

#: torchvision's `size` argument, the shorter side in pixels (None: as photographed), and the folder
#: its archive extracts to (`Path(url).stem`), smallest first.
IMAGENETTE_VERSIONS = (("160px", 160, "imagenette2-160"), ("320px", 320, "imagenette2-320"), ("full", None, "imagenette2"))
STL10_FILES = ("train_X.bin", "train_y.bin", "test_X.bin", "test_y.bin")
STL10_SIDE = 96


class ImagesetError(Exception):
    """Files in the right place that do not hold the dataset; ablate.engine.data turns it into a DataError."""


def imagenette_version(size: int) -> tuple[str, str]:
    """The version to decode `size` px images from (torchvision's name for it, its folder): the
    smallest whose shorter side is at least `size`, so images are never upsampled from a smaller version."""
    return next((key, folder) for key, side, folder in IMAGENETTE_VERSIONS if side is None or size <= side)


def imagenette_data(folder: Path, size: int) -> OwnData:
    """The Imagenette folder as own data to decode at `size` x `size` (its files listed, none opened)."""
    try:
        classes, test_folder, files = list_image_folder(folder, at="imagenette")
    except OwnDataError as exc:
        raise ImagesetError(f"in {folder}, {str(exc).removeprefix('imagenette.path: ')}") from None
    info = DATASETS["imagenette"]
    if len(classes) != info.classes or test_folder != "val":
        raise ImagesetError(f"{folder} holds {len(classes)} class folders in train/ and a {test_folder}/ folder; Imagenette has "
                            f"{info.classes} (one per WordNet id: train/n01440764/...) and val/")
    n_train = sum(1 for rel, _, _ in files if rel.startswith("train/"))
    found = DatasetInfo("imagenette", info.channels, info.classes, size, n_train, len(files) - n_train,
                           info.mean, info.std, info.augment)
    return OwnData("imagenette", str(folder), str(folder), "folder", size, found, classes, test_folder, files,
                   digest="", crop=True)


def read_stl10(folder: Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """STL-10's labelled splits as uint8 [N, 3, 96, 96] images and int64 labels 0..9.

    The format (the dataset's README, and torchvision's `STL10.__loadfile`): images one after the
    other, each three 96x96 planes (R, G, B) stored column-major, so each plane is transposed to
    rows first; labels one byte each, 1..10.
    """
    out = []
    for x_name, y_name in ((STL10_FILES[0], STL10_FILES[1]), (STL10_FILES[2], STL10_FILES[3])):
        raw = _read(folder / x_name)
        plane = STL10_SIDE * STL10_SIDE * 3
        if len(raw) % plane:
            raise ImagesetError(f"{folder / x_name} holds {len(raw)} bytes, not a whole number of 3x96x96 images")
        images = np.frombuffer(raw, np.uint8).reshape(-1, 3, STL10_SIDE, STL10_SIDE).transpose(0, 1, 3, 2)
        labels = np.frombuffer(_read(folder / y_name), np.uint8).astype(np.int64) - 1
        if len(labels) != len(images):
            raise ImagesetError(f"{folder / y_name} holds {len(labels)} labels for the {len(images)} images of {x_name}")
        if len(labels) and not 0 <= labels.min() <= labels.max() < 10:
            raise ImagesetError(f"{folder / y_name}: labels outside 1..10")
        out += [np.ascontiguousarray(images), labels]
    return out[0], out[1], out[2], out[3]


def _read(path: Path) -> bytes:
    """A file's bytes, from it or its gzipped copy (as every built-in dataset's files may be)."""
    found = next((p for p in (path, path.with_name(path.name + ".gz")) if p.is_file()), None)
    if found is None:
        raise ImagesetError(f"{path} is missing")
    with (gzip.open if found.suffix == ".gz" else open)(found, "rb") as file:
        return file.read()
