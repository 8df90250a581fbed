"""Write the Fashion-MNIST subset bundled with ablate (`ablate/assets/fashion-mnist-subset.npz`).

    uv run python tools/bundle_fashion_mnist.py [--from /usr/share/datasets/fashion-mnist] [--train 8192] [--test 2000]

It reads the four official IDX files (gzipped or not; Debian's `dataset-fashion-mnist` installs
them) and keeps every label plus the images of the first `--train` training and `--test` test
examples in the order `ablate.engine.data` draws class-balanced subsets with seed 0: the subset of any
smaller size is then inside the bundle, and loading it from there gives the same images as from
the full files (`ablate.engine.bundled`). The output is reproducible: the same files give the same bytes.
"""

from __future__ import annotations

import argparse
import hashlib
import sys
from pathlib import Path

import numpy as np

from ablate.engine.bundled import BUNDLED, bundled_path, write_bundle
from ablate.engine.data import IDX_FILES, FASHION_MNIST_SYSTEM_DIR, find_file, read_idx, balanced_test_indices, split_indices

NAME = "fashion-mnist"
SOURCE = "Fashion-MNIST, Han Xiao, Kashif Rasul, Roland Vollgraf, Zalando Research, 2017: github.com/zalandoresearch/fashion-mnist"
LICENCE = "MIT, Copyright (c) 2017 Zalando SE (ablate/assets/FASHION-MNIST-LICENSE)"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--from", dest="folder", type=Path, default=FASHION_MNIST_SYSTEM_DIR,
                        help="folder with the four official IDX files (default: Debian's)")
    parser.add_argument("--train", type=int, default=8192, help="training images to keep")
    parser.add_argument("--test", type=int, default=2000, help="test images to keep")
    parser.add_argument("--out", type=Path, default=bundled_path(NAME), help=f"default: ablate/assets/{BUNDLED[NAME]}")
    args = parser.parse_args(argv)

    paths = [find_file(args.folder, file) for file in IDX_FILES]
    if None in paths:
        print(f"error: {args.folder} lacks some of {', '.join(IDX_FILES)} (gzipped or not)", file=sys.stderr)
        return 2
    train_x, train_y, test_x, test_y = (read_idx(path) for path in paths)
    train_index, _ = split_indices(train_y, train_subset=args.train, seed=0)
    test_index = balanced_test_indices(test_y, args.test, seed=0)
    arrays = {
        "train_labels": train_y.astype(np.uint8), "test_labels": test_y.astype(np.uint8),
        "train_index": train_index.astype(np.int32), "train_images": train_x[train_index][:, None],
        "test_index": test_index.astype(np.int32), "test_images": test_x[test_index][:, None],
    }
    meta = {
        "dataset": NAME, "source": SOURCE, "licence": LICENCE,
        "files": {path.name: hashlib.sha256(path.read_bytes()).hexdigest() for path in paths},
        "selection": f"ablate.data.split_indices(train labels, train_subset={args.train}, seed=0) and "
                     f"balanced_test_indices(test labels, {args.test}, seed=0)",
        "made_by": "tools/bundle_fashion_mnist.py",
    }
    write_bundle(args.out, arrays, meta)
    print(f"{args.out}: {args.train} training and {args.test} test images, {args.out.stat().st_size / 2**20:.2f} MiB")
    return 0


if __name__ == "__main__":
    sys.exit(main())
