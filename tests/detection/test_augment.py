"""Tests of app.detection.augment: flips of tiles and of raw OBB outputs, and the views joined for one NMS."""

from __future__ import annotations

import numpy as np
import pytest

from app.detection.augment import (
    FLIPS,
    KNOWN_STRIDES,
    STRIDES,
    augment_tiles,
    flip_tile,
    merge_raw,
    strides_for,
    unflip_raw,
)

SIZE = 64  # anchors: 8x8 + 4x4 + 2x2 = 84
N_CLASSES = 2


def _anchor_centres(size: int, strides: tuple[int, ...] = STRIDES) -> np.ndarray:
    out = []
    for s in strides:
        n = size // s
        ys, xs = np.mgrid[0:n, 0:n]
        out.append(np.stack([(xs.ravel() + 0.5) * s, (ys.ravel() + 0.5) * s], 1))
    return np.concatenate(out)


def _mirror_points(p: np.ndarray, flip: str, size: int) -> np.ndarray:
    p = p.copy()
    if flip in ("lr", "both"):
        p[..., 0] = size - p[..., 0]
    if flip in ("ud", "both"):
        p[..., 1] = size - p[..., 1]
    return p


def _raw_of_boxes(
    centres: np.ndarray, w: np.ndarray, h: np.ndarray, angle: np.ndarray, scores: np.ndarray
) -> np.ndarray:
    return np.concatenate([centres.T, w[None], h[None], scores.T, angle[None]]).astype(np.float64)


def _flipped_raw(raw: np.ndarray, flip: str, size: int, strides: tuple[int, ...] = STRIDES) -> np.ndarray:
    """What an equivariant network outputs for the flipped tile: the same boxes, mirrored, at mirrored anchors."""
    centres = _anchor_centres(size, strides)
    target = _mirror_points(centres, flip, size)  # where original anchor i lands
    index = {tuple(c): k for k, c in enumerate(centres)}
    out = np.empty_like(raw)
    for i, c in enumerate(target):
        k = index[tuple(c)]
        col = raw[:, i].copy()
        col[:2] = _mirror_points(col[:2][None], flip, size)[0]
        if flip in ("lr", "ud"):
            col[-1] = -col[-1]
        out[:, k] = col
    return out


@pytest.fixture()
def raw() -> np.ndarray:
    rng = np.random.default_rng(3)
    n = len(_anchor_centres(SIZE))
    centres = _anchor_centres(SIZE) + rng.normal(0, 2, (n, 2))
    return _raw_of_boxes(
        centres,
        rng.uniform(4, 20, n),
        rng.uniform(2, 6, n),
        rng.uniform(-0.7, 2.3, n),
        rng.uniform(0, 1, (n, N_CLASSES)),
    )


def test_flip_tile_mirrors_and_rejects_unknown_flips() -> None:
    tile = np.arange(2 * 3 * 1).reshape(2, 3, 1)
    assert flip_tile(tile, "none") is tile
    assert flip_tile(tile, "lr")[0, 0, 0] == tile[0, 2, 0]
    assert flip_tile(tile, "ud")[0, 0, 0] == tile[1, 0, 0]
    assert flip_tile(tile, "both")[0, 0, 0] == tile[1, 2, 0]
    with pytest.raises(ValueError, match="flip must be one of"):
        flip_tile(tile, "rot90")


def test_augment_tiles_is_tile_major() -> None:
    a, b = np.zeros((4, 4, 3), np.uint8), np.ones((4, 4, 3), np.uint8)
    out = augment_tiles([a, b])
    assert len(out) == 2 * len(FLIPS)
    assert all((t == 0).all() for t in out[:4]) and all((t == 1).all() for t in out[4:])


@pytest.mark.parametrize("flip", FLIPS)
def test_unflip_raw_undoes_a_flip(raw: np.ndarray, flip: str) -> None:
    back = unflip_raw(_flipped_raw(raw, flip, SIZE), flip, SIZE)
    np.testing.assert_allclose(back, raw, atol=1e-9)


def test_unflip_raw_rejects_a_wrong_anchor_count(raw: np.ndarray) -> None:
    with pytest.raises(ValueError, match="anchors"):
        unflip_raw(raw[:, :-1], "lr", SIZE)
    with pytest.raises(ValueError, match="anchors"):
        unflip_raw(raw, "lr", SIZE, strides=(4, 8, 16, 32))


def test_strides_are_told_by_the_anchor_count() -> None:
    assert strides_for(640, 8400) == (8, 16, 32)  # the P3-P5 head of versions 1-9
    assert strides_for(640, 34000) == (4, 8, 16, 32)  # the P2-P5 head of version 10 (yolo11n-p2-obb-wagon.yaml)
    with pytest.raises(ValueError, match="no known head layout"):
        strides_for(640, 8399)


@pytest.mark.parametrize("flip", FLIPS)
def test_unflip_raw_undoes_a_flip_of_a_four_level_head(flip: str) -> None:
    strides = KNOWN_STRIDES[1]
    centres = _anchor_centres(SIZE, strides)
    n = len(centres)
    rng = np.random.default_rng(5)
    raw = _raw_of_boxes(
        centres + rng.normal(0, 1, (n, 2)),
        rng.uniform(3, 20, n),
        rng.uniform(2, 6, n),
        rng.uniform(-0.7, 2.3, n),
        rng.uniform(0, 1, (n, N_CLASSES)),
    )
    back = unflip_raw(_flipped_raw(raw, flip, SIZE, strides), flip, SIZE)  # strides inferred: 340 anchors
    np.testing.assert_allclose(back, raw, atol=1e-9)


def test_merge_joins_every_view_in_the_original_frame(raw: np.ndarray) -> None:
    other = raw.copy()
    other[4] = 1.0 - other[4]  # a second tile, told apart by its scores
    batch = np.stack([_flipped_raw(r, f, SIZE) for r in (raw, other) for f in FLIPS])  # two tiles, four flips each
    merged = merge_raw(batch, FLIPS, SIZE)
    n = raw.shape[1]
    assert merged.shape == (2, raw.shape[0], len(FLIPS) * n)
    for tile, want in zip(merged, (raw, other), strict=True):
        for j in range(len(FLIPS)):  # each view, mapped back, is the tile's own output again
            np.testing.assert_allclose(tile[:, j * n : (j + 1) * n], want, atol=1e-9)


def test_merged_views_decode_to_one_detection_per_object() -> None:
    """Four consistent views of one box: after the NMS, one detection, in the original frame."""
    from app.detection.runtimes import decode

    centres = _anchor_centres(SIZE)
    n = len(centres)
    scores = np.zeros((n, N_CLASSES))
    scores[10, 0] = 0.8  # one confident railcar at anchor 10
    box = _raw_of_boxes(centres, np.full(n, 12.0), np.full(n, 4.0), np.full(n, 0.3), scores)
    merged = merge_raw(np.stack([_flipped_raw(box, f, SIZE) for f in FLIPS]), FLIPS, SIZE)
    ((corners, conf, cls),) = decode(merged.astype(np.float32), 0.25, 0.5, 100, N_CLASSES)
    assert len(conf) == 1 and cls[0] == 0 and conf[0] == pytest.approx(0.8)
    np.testing.assert_allclose(corners[0].mean(0), centres[10], atol=1e-4)


def test_merge_raw_rejects_an_incomplete_group(raw: np.ndarray) -> None:
    with pytest.raises(ValueError, match="flip groups"):
        merge_raw(np.stack([raw] * 3), FLIPS, SIZE)
