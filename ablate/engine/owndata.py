"""Your own data, decoded: a folder's images or an .npz file's arrays as uint8 NCHW arrays.

Images are decoded once, by a thread per core (PIL decodes and resizes outside the GIL), and
cached as one .npz in the data dir under `own/`, keyed by the files' names, sizes,
modification times and contents (`OwnData.cache_key`): a second run reads the cache and decodes
nothing. The mean and std are measured on the training split and cached with the arrays.
Imagenette is decoded here too (`ablate.engine.imagesets`), its images' central squares resized.
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import tempfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from ablate.spec.catalog import DatasetInfo
from ablate.spec.owndata import OwnData

__all__ = ["OwnArrays", "OwnDataReadError", "read_own", "decoded_images", "cache_path", "measure"]

log = logging.getLogger(__name__)

CACHE_FOLDER = "own"
_CHUNK = 1024  # images per step when measuring the mean and std: float64 copies stay small

#: Images decoded by this process: a load served from the cache adds none (what the tests check).
decoded_images = 0

OwnArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


class OwnDataReadError(Exception):
    """A file that cannot be decoded; ablate.engine.data turns it into a DataError."""


def cache_path(own: OwnData, root: Path) -> Path:
    return root / CACHE_FOLDER / f"{own.name}-{own.cache_key()}.npz"


@functools.lru_cache(maxsize=2)
def read_own(own: OwnData, root: Path) -> tuple[OwnArrays, DatasetInfo, str]:
    """(x_train, y_train, x_test, y_test) as uint8 NCHW and int64 arrays, the info with the measured
    mean and std, and where they came from; decoded at most once per cache key."""
    cached = cache_path(own, root) if own.kind == "folder" or own.size is not None else None
    if cached is not None and cached.is_file():
        got = _read_cache(cached, own)
        if got is not None:
            return got[0], got[1], f"{own.location} (decoded: {cached})"
    arrays = _decode_folder(own) if own.kind == "folder" else _read_npz(own)
    mean, std = measure(arrays[0])
    info = dataclasses.replace(own.info, mean=mean, std=std)
    if cached is not None:
        _write_cache(cached, arrays, info)
    return arrays, info, own.location


def measure(images: np.ndarray) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of uint8 NCHW images, in [0, 1] units (std at least 1/255)."""
    c = images.shape[1]
    total, squares = np.zeros(c), np.zeros(c)
    for start in range(0, len(images), _CHUNK):
        chunk = images[start : start + _CHUNK].astype(np.float64) / 255
        total += chunk.sum(axis=(0, 2, 3))
        squares += np.square(chunk).sum(axis=(0, 2, 3))
    n = len(images) * images.shape[2] * images.shape[3]
    mean = total / n
    std = np.sqrt(np.maximum(squares / n - mean**2, 0))
    return tuple(round(float(m), 6) for m in mean), tuple(round(max(float(s), 1 / 255), 6) for s in std)


def _read_cache(path: Path, own: OwnData) -> tuple[OwnArrays, DatasetInfo] | None:
    try:
        with np.load(path, allow_pickle=False) as npz:
            arrays = tuple(npz[k] for k in ("x_train", "y_train", "x_test", "y_test"))
            mean, std = tuple(float(v) for v in npz["mean"]), tuple(float(v) for v in npz["std"])
    except (OSError, ValueError, KeyError, EOFError) as exc:
        log.info(f"{own.name}: the decoded cache {path} cannot be read ({exc}); decoding again")
        return None
    want = (own.info.channels, own.info.size, own.info.size)
    if tuple(arrays[0].shape[1:]) != want or len(arrays[0]) != own.info.train_size or len(arrays[2]) != own.info.test_size:
        return None
    return arrays, dataclasses.replace(own.info, mean=mean, std=std)  # type: ignore[return-value]


def _write_cache(path: Path, arrays: OwnArrays, info: DatasetInfo) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".partial-", suffix=".npz")
        with os.fdopen(fd, "wb") as file:
            np.savez(file, x_train=arrays[0], y_train=arrays[1], x_test=arrays[2], y_test=arrays[3],
                     mean=np.array(info.mean), std=np.array(info.std))
        os.replace(tmp, path)  # whole or absent: a killed run leaves no half cache under the real name
    except OSError as exc:
        log.info(f"{info.name}: cannot cache the decoded images in {path.parent} ({exc.strerror or exc}); "
                 "the next run decodes them again")


def _decode_folder(own: OwnData) -> OwnArrays:
    global decoded_images
    out = []
    with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
        for split in ("train", "test"):
            items = own.image_paths(split)
            images = np.empty((len(items), own.info.channels, own.info.size, own.info.size), np.uint8)

            def decode(i: int, images: np.ndarray = images, items: list = items) -> None:
                images[i] = _decode(items[i][0], own.info.channels, own.info.size, crop=own.crop)

            list(pool.map(decode, range(len(items))))
            decoded_images += len(items)  # counted here, in one thread: += from the pool's threads could lose counts
            out += [images, np.array([label for _, label in items], np.int64)]
    return out[0], out[1], out[2], out[3]


def _decode(path: Path, channels: int, size: int, *, crop: bool = False) -> np.ndarray:
    """One image as uint8 [C, size, size]: converted to grey or RGB, resized when it is not size x size
    (after cropping its central square when `crop`, so the objects keep their aspect ratio)."""
    from PIL import Image

    try:
        with Image.open(path) as image:
            image = image.convert("L" if channels == 1 else "RGB")
            if image.size != (size, size):
                (w, h), side = image.size, min(image.size)
                # PIL's resize takes the source box: the crop and the (antialiased) resize are one step.
                box = ((w - side) // 2, (h - side) // 2, (w - side) // 2 + side, (h - side) // 2 + side) if crop else None
                image = image.resize((size, size), Image.Resampling.BILINEAR, box=box)
            array = np.asarray(image, np.uint8)
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise OwnDataReadError(f"{path} is not a readable image ({' '.join(str(exc).split())}); delete or replace it") from None
    return array[None] if channels == 1 else array.transpose(2, 0, 1)


def _read_npz(own: OwnData) -> OwnArrays:
    with np.load(own.location, allow_pickle=False) as npz:
        x_train, y_train, x_test, y_test = (npz[k] for k in ("x_train", "y_train", "x_test", "y_test"))
    return _nchw(x_train, own), y_train.astype(np.int64), _nchw(x_test, own), y_test.astype(np.int64)


def _nchw(images: np.ndarray, own: OwnData) -> np.ndarray:
    images = images[..., None] if images.ndim == 3 else images
    side = own.info.size
    if images.shape[1:3] != (side, side):
        from PIL import Image

        def resize(image: np.ndarray) -> np.ndarray:
            pil = Image.fromarray(image[..., 0] if image.shape[2] == 1 else image)
            out = np.asarray(pil.resize((side, side), Image.Resampling.BILINEAR), np.uint8)
            return out[..., None] if out.ndim == 2 else out

        with ThreadPoolExecutor(max_workers=min(32, os.cpu_count() or 1)) as pool:
            images = np.stack(list(pool.map(resize, images)))
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2))
