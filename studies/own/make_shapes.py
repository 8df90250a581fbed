"""Writes a small image-folder dataset for studies/own/shapes.toml: circles, squares and triangles.

    uv run python studies/own/make_shapes.py            # into studies/own/data/shapes
    uv run python studies/own/make_shapes.py OUT_FOLDER

The layout is torchvision's ImageFolder, the one a [dataset] table reads: train/<class>/<image>
and test/<class>/<image>, here 32x32 PNGs of a shape in a random colour, size and place on a
random background. Colour carries no signal; the shape does.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

CLASSES = ("circle", "square", "triangle")
SIZE = 32
PER_CLASS = {"train": 300, "test": 100}


def shape(kind: str, rng: np.random.Generator) -> Image.Image:
    background, fill = (tuple(int(v) for v in rng.integers(0, 256, 3)) for _ in range(2))
    image = Image.new("RGB", (SIZE, SIZE), background)
    draw = ImageDraw.Draw(image)
    r = int(rng.integers(6, 13))
    cx, cy = (int(v) for v in rng.integers(r, SIZE - r, 2))
    if kind == "circle":
        draw.ellipse((cx - r, cy - r, cx + r, cy + r), fill=fill)
    elif kind == "square":
        draw.rectangle((cx - r, cy - r, cx + r, cy + r), fill=fill)
    else:
        draw.polygon(((cx, cy - r), (cx - r, cy + r), (cx + r, cy + r)), fill=fill)
    return image


def main(out: Path) -> None:
    rng = np.random.default_rng(2016)
    for split, n in PER_CLASS.items():
        for kind in CLASSES:
            folder = out / split / kind
            folder.mkdir(parents=True, exist_ok=True)
            for i in range(n):
                shape(kind, rng).save(folder / f"{i:04d}.png")
    print(f"wrote {sum(PER_CLASS.values()) * len(CLASSES)} images into {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).resolve().parent / "data" / "shapes")
