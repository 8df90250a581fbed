"""The Fashion-MNIST subset shipped inside the package, for machines without the full files.

`ablate/assets/fashion-mnist-subset.npz` holds every label of the official training and test
splits, and the images of the first training and test examples in the order in which
`ablate.data` draws class-balanced subsets with seed 0 (the first n of that order *are* the
subset of size n). A run whose examples all lie in it (no validation split, `train_subset` and
`test_subset` within its counts) therefore gets exactly the images the full files would give it:
the same tensors, so the same results. `ablate.data.load_dataset` uses it only when the full
files are not on disk.

Written by `tools/bundle_fashion_mnist.py` from the official files. Fashion-MNIST: Han Xiao,
Kashif Rasul, Roland Vollgraf, Zalando Research, 2017 (github.com/zalandoresearch/fashion-mnist),
MIT licence, copyright (c) 2017 Zalando SE.

The members are LZMA-compressed `.npy` arrays in a zip (what `np.load` reads): uint8 images and
labels, int32 positions in the official splits, and a JSON string of provenance.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np

ASSETS = Path(__file__).resolve().parent.parent / "assets"
BUNDLED = {"fashion-mnist": "fashion-mnist-subset.npz"}  # dataset -> file under ASSETS


@dataclass(frozen=True, eq=False)
class Bundle:
    path: Path
    train_labels: np.ndarray  # uint8 [60000]: every label of the official training split
    test_labels: np.ndarray  # uint8 [10000]
    train_index: np.ndarray  # int32 [n], sorted: which training examples the images are
    train_images: np.ndarray  # uint8 [n, C, H, W]
    test_index: np.ndarray
    test_images: np.ndarray
    meta: dict  # provenance: the source files' SHA-256, the selection rule, the licence

    def positions(self, split: str, index: np.ndarray) -> np.ndarray | None:
        """Where examples `index` of the official `split` ("train" or "test") sit in the bundle,
        or None if any of them is not bundled."""
        held = self.train_index if split == "train" else self.test_index
        at = np.searchsorted(held, index)
        if len(index) and (at.max() >= len(held) or not np.array_equal(held[at], index)):
            return None
        return at

    def describe(self) -> str:
        return (f"{len(self.train_index):,} of {len(self.train_labels):,} training and "
                f"{len(self.test_index):,} of {len(self.test_labels):,} test images")


def bundled_path(name: str) -> Path | None:
    return ASSETS / BUNDLED[name] if name in BUNDLED else None


@functools.lru_cache(maxsize=2)
def read_bundle(name: str) -> Bundle | None:
    """The bundled subset of dataset `name`, or None when none is shipped (or it was removed)."""
    path = bundled_path(name)
    if path is None or not path.is_file():
        return None
    with np.load(path, allow_pickle=False) as z:
        arrays = {key: z[key] for key in z.files}
    meta = json.loads(str(arrays.pop("meta")))
    return Bundle(path=path, meta=meta, **arrays)


def write_bundle(path: Path, arrays: dict[str, np.ndarray], meta: dict) -> None:
    """Write `arrays` (the Bundle fields) and `meta` as an npz whose members are LZMA-compressed:
    about 15% smaller than `np.savez_compressed` (zlib) on these images."""
    import io
    import zipfile

    path.parent.mkdir(parents=True, exist_ok=True)
    members = {**arrays, "meta": np.array(json.dumps(meta, sort_keys=True))}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_LZMA) as z:
        for key, array in members.items():
            buffer = io.BytesIO()
            np.save(buffer, array, allow_pickle=False)
            info = zipfile.ZipInfo(f"{key}.npy", date_time=(1980, 1, 1, 0, 0, 0))  # reproducible bytes
            info.compress_type = zipfile.ZIP_LZMA
            z.writestr(info, buffer.getvalue())
