"""Your own data: a `[dataset]` table naming an image folder tree or an .npz file.

What the study needs to know before anything is loaded is read here from the files' names,
sizes and headers only (no image is decoded, no array but the labels is read): the classes,
the channels, the image size, the split sizes, and the data's identity. Decoding, the cache and
the mean and std are the engine's (`ablate.engine.owndata`).

A folder holds `train/<class>/<image>` and `test/<class>/<image>` (`val/` in place of `test/`);
classes are the sorted folder names; channels are 1 if every image is grey, else 3. An .npz
file holds `x_train`, `y_train`, `x_test`, `y_test`: uint8 images N x H x W or N x H x W x C and
integer labels 0..K-1.
"""

from __future__ import annotations

import hashlib
import zipfile
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ablate.spec.catalog import DatasetInfo
from ablate.spec.paths import PathError, user_path

if TYPE_CHECKING:  # numpy is imported only to read an .npz: `ablate --help` stays quick
    import numpy as np

__all__ = ["IMAGE_SUFFIXES", "OwnData", "OwnDataError", "scan_own_data", "list_image_folder", "MIN_SIZE", "MAX_SIZE"]

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp")
#: PIL modes without colour: such images are read as one channel (alpha dropped).
GREY_MODES = frozenset({"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"})
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
MIN_SIZE, MAX_SIZE = 8, 1024  # as the recipe's resize: from the smallest net input to ImageNet-like and beyond
TEST_FOLDERS = ("test", "val")
#: Placeholders until the engine measures the training split; nothing before loading uses them.
_UNMEASURED_MEAN, _UNMEASURED_STD = 0.5, 0.25


class OwnDataError(ValueError):
    """Data that cannot be used; the message names the file or folder and the fix."""


@dataclass(frozen=True)
class OwnData:
    """A study's own data, as scanned: what decides the net, the identity, and the cache key."""

    name: str
    path: str  # as the study file writes it
    location: str  # absolute
    kind: str  # "folder" | "npz"
    size: int | None  # the [dataset] size: images resized to size x size
    info: DatasetInfo  # mean and std are placeholders: the engine measures them on loading
    classes: tuple[str, ...]  # a folder's class names, in label order; an .npz's are "0".."K-1"
    test_folder: str  # "test" or "val" for a folder; "" for an .npz
    files: tuple[tuple[str, int, int], ...]  # (path relative to location, bytes, mtime in ns), sorted
    digest: str  # of the files' names, sizes and contents (an .npz's: its arrays' CRCs): copies keep it, edits change it
    #: center-crop each image to a square before resizing (as ImageNet evaluation does) instead of squashing it
    crop: bool = False

    def identity(self) -> dict[str, Any]:
        """What the study's stored definition records: running on other data is a changed study."""
        return {"name": self.name, "path": self.path, "files": len(self.files), "hash": self.digest, "size": self.size}

    def cache_key(self) -> str:
        """The decoded arrays' key: the files' names, sizes, modification times and contents (the
        digest), and the size asked for."""
        h = hashlib.blake2b(digest_size=16)
        h.update(f"{self.kind}\0{self.size}\0{self.info.channels}\0{self.location}\0".encode())
        if self.crop:  # only when set: the keys of caches written before the field existed stay valid
            h.update(b"crop\0")
        h.update(self.digest.encode())  # the contents too: an edit that keeps a file's size and time
        for name, nbytes, mtime in self.files:
            h.update(f"{name}\0{nbytes}\0{mtime}\n".encode())
        return h.hexdigest()

    def image_paths(self, split: str) -> list[tuple[Path, int]]:
        """A folder's images of one split ("train" or "test") in a fixed order, with their labels."""
        folder = "train" if split == "train" else self.test_folder
        label = {c: i for i, c in enumerate(self.classes)}
        out = []
        for name, _, _ in self.files:
            parts = Path(name).parts
            if parts[0] == folder:
                out.append((Path(self.location) / name, label[parts[1]]))
        return out


def scan_own_data(table: dict[str, Any], study_dir: Path, *, at: str = "dataset") -> OwnData:
    """The `[dataset]` table checked and its files scanned; OwnDataError naming the key and the fix otherwise."""
    for key in table:
        if key not in ("path", "name", "size"):
            raise OwnDataError(f"{at}.{key}: unknown key; [dataset] has path, name and size")
    written = table.get("path")
    if not isinstance(written, str) or not written:
        raise OwnDataError(f'{at}.path: missing; give the folder (train/ and test/ inside) or .npz file, e.g. path = "data/flowers"')
    size = table.get("size")
    if size is not None and (isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE):
        raise OwnDataError(f"{at}.size: {size!r} is not valid; use a side length in pixels from {MIN_SIZE} to {MAX_SIZE}, or leave it out")
    try:
        location = user_path(written, f"{at}.path")
    except PathError as exc:
        raise OwnDataError(str(exc)) from None
    location = (location if location.is_absolute() else study_dir / location).absolute()
    name = table.get("name", location.stem if location.suffix == ".npz" else location.name)
    if not isinstance(name, str) or not name or len(name) > 100:
        raise OwnDataError(f"{at}.name: expected a short string (at most 100 characters), got {name!r}")
    if not location.exists():
        raise OwnDataError(f"{at}.path: {location} does not exist; give a folder with train/ and test/ in it, or an .npz file "
                           "(a relative path is relative to the study file)")
    if location.is_dir():
        return _scan_folder(at, name, written, location, size)
    if location.suffix != ".npz":
        raise OwnDataError(f"{at}.path: {location} is neither a folder nor an .npz file; give a folder with train/ and test/ in it, "
                           "or an .npz file with x_train, y_train, x_test, y_test")
    return _scan_npz(at, name, written, location, size)


def _info(name: str, channels: int, classes: int, size: int, n_train: int, n_test: int) -> DatasetInfo:
    return DatasetInfo(name, channels, classes, size, n_train, n_test, (_UNMEASURED_MEAN,) * channels,
                       (_UNMEASURED_STD,) * channels, ("crop", "flip"))


def _digest(entries: list[tuple[str, int, int]], extra: str = "") -> str:
    h = hashlib.blake2b(digest_size=16)
    for name, nbytes, _ in entries:
        h.update(f"{name}\0{nbytes}\n".encode())
    h.update(extra.encode())
    return h.hexdigest()


#: A folder's files are hashed whole up to this many bytes, and above it by their first and last
#: halves of it (their size is hashed too): every byte of a typical training image, and a bounded
#: read of a large photo, whose compressed bytes an edit mostly changes throughout.
HASH_WHOLE = 1 << 17


def _content(at: str, location: Path, entries: list[tuple[str, int, int]]) -> str:
    """A hash of the files' contents, so that an edit that keeps a file's size changes the identity."""
    h = hashlib.blake2b(digest_size=16)
    for rel, nbytes, _ in entries:
        try:
            with open(location / rel, "rb") as file:
                if nbytes <= HASH_WHOLE:
                    h.update(file.read())
                else:
                    h.update(file.read(HASH_WHOLE // 2))
                    file.seek(-(HASH_WHOLE // 2), 2)
                    h.update(file.read())
        except OSError as exc:
            raise OwnDataError(f"{at}.path: {location / rel} cannot be read ({exc.strerror or exc}); "
                               "fix its permissions or remove it") from None
    return h.hexdigest()


def _class_folders(at: str, split: Path) -> list[str]:
    return sorted(p.name for p in split.iterdir() if p.is_dir() and not p.name.startswith("."))


def _images(at: str, folder: Path) -> list[Path]:
    images = sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES and not p.name.startswith("."))
    if not images:
        raise OwnDataError(f"{at}.path: the class folder {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}); "
                           "add images or remove the folder")
    return images


def list_image_folder(location: Path, *, at: str = "dataset") -> tuple[tuple[str, ...], str, tuple[tuple[str, int, int], ...]]:
    """A folder tree's classes (sorted), its test folder ("test" or "val") and its images as
    (path relative to `location`, bytes, mtime in ns), from names and stat() only: nothing is opened.
    OwnDataError naming the folder and the fix when the tree is not train/<class>/<image> and test/<class>/<image>."""
    train = location / "train"
    if not train.is_dir():
        raise OwnDataError(f"{at}.path: {location} has no train/ folder; put the training images in train/<class>/<image> "
                           "and the test images in test/<class>/<image>")
    test_folder = next((t for t in TEST_FOLDERS if (location / t).is_dir()), None)
    if test_folder is None:
        raise OwnDataError(f"{at}.path: {location} has no test/ (or val/) folder; put the test images in test/<class>/<image>")
    classes = _class_folders(at, train)
    if len(classes) < 2:
        raise OwnDataError(f"{at}.path: {train} holds {len(classes)} class folder(s); a classifier needs at least two, "
                           "one folder per class: train/<class>/<image>")
    test_classes = _class_folders(at, location / test_folder)
    stray = [c for c in test_classes if c not in classes]
    if stray:
        raise OwnDataError(f"{at}.path: the class {stray[0]!r} is in {test_folder}/ but not in train/; "
                           f"add its training images to train/{stray[0]}/ or remove {test_folder}/{stray[0]}/")
    entries: list[tuple[str, int, int]] = []
    for split, names in (("train", classes), (test_folder, test_classes)):
        for c in names:
            for image in _images(at, location / split / c):
                st = image.stat()
                entries.append((image.relative_to(location).as_posix(), st.st_size, st.st_mtime_ns))
    return tuple(classes), test_folder, tuple(entries)


def _scan_folder(at: str, name: str, written: str, location: Path, size: int | None) -> OwnData:
    classes, test_folder, entries = list_image_folder(location, at=at)
    n_train = sum(1 for rel, _, _ in entries if rel.startswith("train/"))
    channels, side = _headers(at, location, list(entries), size)
    info = _info(name, channels, len(classes), side, n_train, len(entries) - n_train)
    digest = _digest(list(entries), _content(at, location, list(entries)))
    return OwnData(name, written, str(location), "folder", size, info, classes, test_folder, entries, digest)


def _headers(at: str, location: Path, entries: list[tuple[str, int, int]], size: int | None) -> tuple[int, int]:
    """Channels (1 if every image is grey) and the side, from the images' headers only."""
    from PIL import Image, UnidentifiedImageError

    grey, sizes = True, {}
    for rel, _, _ in entries:
        try:
            with Image.open(location / rel) as image:
                mode, dims = image.mode, image.size
        except (OSError, UnidentifiedImageError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
            raise OwnDataError(f"{at}.path: {location / rel} is not a readable image ({' '.join(str(exc).split())}); "
                               "delete or replace it") from None
        grey = grey and mode in GREY_MODES
        sizes.setdefault(dims, rel)
    return (1 if grey else 3), _side(at, location, sizes, size)


def _side(at: str, location: Path, sizes: dict[tuple[int, int], str], size: int | None) -> int:
    if size is not None:
        return size
    if len(sizes) > 1:
        (a, first), (b, second) = list(sizes.items())[:2]
        raise OwnDataError(f"{at}.size: the images differ in size ({first} is {a[0]}x{a[1]}, {second} is {b[0]}x{b[1]}); "
                           f"set size = N in [dataset] to resize them all to N x N")
    (w, h), first = next(iter(sizes.items()))
    if w != h:
        raise OwnDataError(f"{at}.size: the images are {w}x{h}, not square; set size = N in [dataset] to resize them to N x N")
    if not MIN_SIZE <= w <= MAX_SIZE:
        raise OwnDataError(f"{at}.size: the images are {w}x{h}; set size = N in [dataset] (from {MIN_SIZE} to {MAX_SIZE}) to resize them")
    return w


def _npz_header(archive: zipfile.ZipFile, key: str) -> tuple[tuple[int, ...], np.dtype]:
    import numpy as np

    with archive.open(f"{key}.npy") as file:
        version = np.lib.format.read_magic(file)
        shape, _, dtype = (np.lib.format.read_array_header_1_0 if version == (1, 0) else np.lib.format.read_array_header_2_0)(file)
    return shape, dtype


def _scan_npz(at: str, name: str, written: str, location: Path, size: int | None) -> OwnData:
    import numpy as np

    try:
        with zipfile.ZipFile(location) as archive:
            members = {i.filename: i.CRC for i in archive.infolist()}
            missing = [k for k in NPZ_KEYS if f"{k}.npy" not in members]
            if missing:
                raise OwnDataError(f"{at}.path: {location} lacks {', '.join(missing)}; an .npz holds x_train, y_train, x_test, y_test "
                                   "(np.savez(path, x_train=..., y_train=..., x_test=..., y_test=...))")
            shapes = {k: _npz_header(archive, k) for k in NPZ_KEYS}
        with np.load(location, allow_pickle=False) as npz:
            y_train, y_test = npz["y_train"], npz["y_test"]
    except (OSError, zipfile.BadZipFile, ValueError, EOFError) as exc:
        if isinstance(exc, OwnDataError):
            raise
        raise OwnDataError(f"{at}.path: {location} is not a readable .npz file ({exc}); write it with np.savez") from None
    channels, side = _npz_shapes(at, location, shapes, size)
    classes = _npz_labels(at, location, y_train, y_test)
    st = location.stat()
    entries = [(location.name, st.st_size, st.st_mtime_ns)]
    info = _info(name, channels, classes, side, len(y_train), len(y_test))
    return OwnData(name, written, str(location), "npz", size, info, tuple(str(i) for i in range(classes)), "",
                   tuple(entries), _digest(entries, ",".join(f"{k}:{members[k + '.npy']}" for k in NPZ_KEYS)))


def _npz_shapes(at: str, location: Path, shapes: dict[str, tuple[tuple[int, ...], np.dtype]], size: int | None) -> tuple[int, int]:
    import numpy as np

    dims: set[tuple[int, int, int]] = set()
    for x, y in (("x_train", "y_train"), ("x_test", "y_test")):
        (shape, dtype), (yshape, ydtype) = shapes[x], shapes[y]
        if dtype != np.uint8 or len(shape) not in (3, 4) or (len(shape) == 4 and shape[3] not in (1, 3)):
            raise OwnDataError(f"{at}.path: {location}: {x} is {dtype} {shape}; expected uint8 images N x H x W or N x H x W x C "
                               "(C = 1 or 3): convert with .astype(np.uint8) after scaling to 0..255")
        if len(yshape) != 1 or ydtype.kind not in "iu":
            raise OwnDataError(f"{at}.path: {location}: {y} is {ydtype} {yshape}; expected integer labels, one per image")
        if yshape[0] != shape[0]:
            raise OwnDataError(f"{at}.path: {location}: {x} holds {shape[0]} images but {y} {yshape[0]} labels; "
                               "give one label per image")
        if shape[0] == 0:
            raise OwnDataError(f"{at}.path: {location}: {x} holds no images")
        dims.add((shape[1], shape[2], shape[3] if len(shape) == 4 else 1))
    channels = {c for _, _, c in dims}
    if len(channels) > 1:
        raise OwnDataError(f"{at}.path: {location}: x_train and x_test differ in channels; give both the same")
    sides: dict[tuple[int, int], str] = {}
    for x in ("x_train", "x_test"):
        sides.setdefault((shapes[x][0][2], shapes[x][0][1]), x)  # (width, height), as PIL gives them
    return channels.pop(), _side(at, location, sides, size)


def _npz_labels(at: str, location: Path, y_train: np.ndarray, y_test: np.ndarray) -> int:
    classes = int(y_train.max()) + 1
    low = min(int(y_train.min()), int(y_test.min()))
    if low < 0 or int(y_test.max()) >= classes:
        bad = low if low < 0 else int(y_test.max())
        raise OwnDataError(f"{at}.path: {location}: label {bad} is out of range: labels are 0..K-1 with K the classes in "
                           f"y_train (here 0..{classes - 1}); renumber the labels")
    if classes < 2:
        raise OwnDataError(f"{at}.path: {location}: y_train holds one class; a classifier needs at least two")
    return classes
