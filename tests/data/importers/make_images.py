"""Write the tiny images of the importer fixtures (labels are committed; images are made here, deterministically).

    python tests/data/importers/make_images.py DEST   # DEST: a copy of this folder

Each image is a smooth gradient with a per-image offset, so chips cut from different places differ.
"""

from __future__ import annotations

import sys
from pathlib import Path

import cv2
import numpy as np

#: fixture image -> (width, height)
IMAGES: dict[str, tuple[int, int]] = {
    "xview/train_images/104.tif": (200, 150),  # xView images are GeoTIFFs; tiled at 100 px in the tests
    "xview/train_images/105.tif": (100, 80),  # only unmapped objects: a negative
    "dota/images/P0001.png": (300, 200),
    "dota/images/P0002.png": (160, 120),
    "yolo/images/train/a.png": (64, 48),
    "yolo/images/train/empty.png": (64, 48),  # no label file: a negative
    "yolo/images/val/b.jpg": (64, 48),
    "yolo_classes_txt/images/c.png": (80, 60),
}


def make_images(root: Path) -> None:
    """Write every fixture image under ``root``."""
    for i, (rel, (w, h)) in enumerate(IMAGES.items()):
        y, x = np.mgrid[0:h, 0:w]
        img = np.stack(
            [(x * 255 // w + 17 * i) % 256, (y * 255 // h + 29 * i) % 256, np.full_like(x, (40 * i) % 256)], axis=2
        ).astype(np.uint8)
        path = Path(root) / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        cv2.imwrite(str(path), img)


if __name__ == "__main__":
    make_images(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
