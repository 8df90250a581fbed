"""Datasets: what each one is, known without loading it (and without torch).

The metadata table is all the variant family needs: input channels, classes and image size
decide the first convolution, the classifier and the MAC count. Study files are validated
against it before anything is loaded; `ablate.data` loads the datasets and re-exports these names.
"""

from __future__ import annotations

from dataclasses import dataclass

AUGMENTATIONS = ("crop", "flip")  # what ablate.data.augment does to whole batches on the device


@dataclass(frozen=True)
class DatasetInfo:
    name: str
    channels: int
    classes: int
    size: int  # images are size x size
    train_size: int  # examples in the official training split
    test_size: int
    mean: tuple[float, ...]  # per-channel, of the training split, in [0, 1] units
    std: tuple[float, ...]
    augment: tuple[str, ...]  # augmentations that suit the data ("flip" is wrong for digits)


DATASETS: dict[str, DatasetInfo] = {
    info.name: info
    for info in (
        DatasetInfo("fashion-mnist", 1, 10, 28, 60_000, 10_000, (0.2860,), (0.3530,), ("crop", "flip")),
        DatasetInfo("mnist", 1, 10, 28, 60_000, 10_000, (0.1307,), (0.3081,), ("crop",)),
        DatasetInfo(
            "cifar10", 3, 10, 32, 50_000, 10_000,
            (0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616), ("crop", "flip"),
        ),
        DatasetInfo(
            "cifar100", 3, 100, 32, 50_000, 10_000,
            (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762), ("crop", "flip"),
        ),
        DatasetInfo(
            "svhn", 3, 10, 32, 73_257, 26_032,
            (0.4377, 0.4438, 0.4728), (0.1980, 0.2010, 0.1970), ("crop",),
        ),
        # Imagenette (fast.ai, the imagenette2 release): 10 ImageNet classes; train/ and val/ as the
        # splits. 160 px is its smaller version's shorter side: images are decoded at the recipe's
        # resize instead when set (ablate.engine.imagesets). Statistics: ImageNet's, which fast.ai's
        # Imagenette baselines normalise with.
        DatasetInfo(
            "imagenette", 3, 10, 160, 9_469, 3_925,
            (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), ("crop", "flip"),
        ),
        # STL-10 (Coates, Ng and Lee 2011), its labelled splits; the statistics are the values in
        # common use with torchvision's STL10 (not re-measured here).
        DatasetInfo(
            "stl10", 3, 10, 96, 5_000, 8_000,
            (0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713), ("crop", "flip"),
        ),
        # Small, deterministic and learnable: for tests and smoke runs, generated in memory.
        DatasetInfo("synthetic", 3, 10, 16, 2_048, 512, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25), ("crop", "flip")),
    )
}


def dataset_info(name: str) -> DatasetInfo:
    """The metadata of a dataset by name; a ValueError naming the valid ones otherwise."""
    try:
        return DATASETS[name]
    except KeyError:
        raise ValueError(
            f"dataset: unknown dataset {name!r}; valid datasets: {', '.join(DATASETS)}"
        ) from None
