"""Test-time augmentation: the network also sees each tile's mirror images; their boxes join before the NMS.

Each tile is run as it is and flipped left-right, top-bottom and both. A flip of a square tile maps the anchor grid
of every stride onto itself, so each mirror image's raw output maps back anchor by anchor: centres mirrored, angles
negated (a single flip), anchors reordered. The four outputs are then joined into one candidate set for the usual
rotated NMS, which keeps the best-scoring view of each object (what Ultralytics' own augmented inference does).
Measured against averaging the four views anchor by anchor, this scored higher on held-out synthetic chips for both
classes (docs/lab/model-history.md, version 9).

NumPy only; the detector calls it around its engine (any runtime).
"""

from __future__ import annotations

from collections.abc import Sequence
from functools import lru_cache

import numpy as np

#: The mirror images: none, left-right, top-bottom, both (a half turn).
FLIPS: tuple[str, ...] = ("none", "lr", "ud", "both")
#: Output strides of the OBB head (P3-P5), in the order its anchors are concatenated.
STRIDES: tuple[int, ...] = (8, 16, 32)
#: The head layouts a raw output may come from: P3-P5, or P2-P5 (``training/yolo11n-p2-obb-wagon.yaml``).
KNOWN_STRIDES: tuple[tuple[int, ...], ...] = (STRIDES, (4, 8, 16, 32))


def strides_for(size: int, n_anchors: int) -> tuple[int, ...]:
    """The output strides of a head that gives ``n_anchors`` anchors for a ``size`` px tile."""
    for strides in KNOWN_STRIDES:
        if sum((size // s) ** 2 for s in strides) == n_anchors:
            return strides
    raise ValueError(
        f"{n_anchors} anchors fit no known head layout for a {size} px tile "
        f"(strides {', '.join(map(str, KNOWN_STRIDES))})"
    )


def flip_tile(tile: np.ndarray, flip: str) -> np.ndarray:
    """An H x W x C tile mirrored by ``flip`` (one of :data:`FLIPS`): a view, not a copy."""
    if flip == "none":
        return tile
    if flip == "lr":
        return tile[:, ::-1]
    if flip == "ud":
        return tile[::-1]
    if flip == "both":
        return tile[::-1, ::-1]
    raise ValueError(f"flip must be one of {FLIPS}, not {flip!r}")


def augment_tiles(tiles: Sequence[np.ndarray], flips: Sequence[str] = FLIPS) -> list[np.ndarray]:
    """Every tile in every flip, tile-major: ``[t0 f0, t0 f1, ..., t1 f0, ...]``."""
    return [flip_tile(t, f) for t in tiles for f in flips]


@lru_cache(maxsize=32)
def _anchor_order(size: int, flip: str, strides: tuple[int, ...]) -> np.ndarray:
    """For each anchor of the original tile, the index of the same place in the flipped tile's output (cached: the
    same few orders serve every tile)."""
    parts, offset = [], 0
    for s in strides:
        n = size // s
        grid = np.arange(n * n).reshape(n, n)  # row-major: y then x, as the head flattens its maps
        if flip in ("lr", "both"):
            grid = grid[:, ::-1]
        if flip in ("ud", "both"):
            grid = grid[::-1, :]
        parts.append(grid.reshape(-1) + offset)
        offset += n * n
    return np.concatenate(parts)


def unflip_raw(raw: np.ndarray, flip: str, size: int, strides: Sequence[int] | None = None) -> np.ndarray:
    """One flipped tile's raw output ``(4 + classes + 1) x anchors`` (x y w h, scores, angle) in the original
    tile's frame and anchor order (``strides`` None: inferred from the number of anchors)."""
    if strides is None:
        strides = strides_for(size, raw.shape[-1])
    n_anchors = sum((size // s) ** 2 for s in strides)
    if raw.ndim != 2 or raw.shape[1] != n_anchors:
        raise ValueError(f"raw output {raw.shape} does not hold {n_anchors} anchors of a {size} px tile")
    if flip == "none":
        return raw
    out = raw[:, _anchor_order(size, flip, tuple(strides))]
    if flip in ("lr", "both"):
        out[0] = size - out[0]
    if flip in ("ud", "both"):
        out[1] = size - out[1]
    if flip in ("lr", "ud"):
        out[-1] = -out[-1]
    return out


def merge_raw(raw: np.ndarray, flips: Sequence[str], size: int, strides: Sequence[int] | None = None) -> np.ndarray:
    """The raw outputs of :func:`augment_tiles`' batch (``N·len(flips) x C x anchors``) mapped back and joined
    into one raw output per original tile (``N x C x len(flips)·anchors``), ready for the usual decoding."""
    k = len(flips)
    if raw.shape[0] % k:
        raise ValueError(f"{raw.shape[0]} outputs are not a whole number of {k}-flip groups")
    return np.stack(
        [
            np.concatenate([unflip_raw(raw[i + j], f, size, strides) for j, f in enumerate(flips)], axis=1)
            for i in range(0, raw.shape[0], k)
        ]
    )
