"""Image bytes for tests: encoded arrays, a gradient that identifies its pixels, crafted PNG headers, busy yards."""

from __future__ import annotations

import io
import struct
import zlib
from typing import Any

import numpy as np
from PIL import Image


def encode_image(image: Image.Image | np.ndarray, fmt: str = "PNG", **save_kwargs: Any) -> bytes:
    """Encode a Pillow image or array to bytes in ``fmt``."""
    im = Image.fromarray(image) if isinstance(image, np.ndarray) else image
    buf = io.BytesIO()
    im.save(buf, format=fmt, **save_kwargs)
    return buf.getvalue()


def gradient_rgb(width: int = 64, height: int = 48) -> np.ndarray:
    """A small RGB test image whose pixels identify their position."""
    y, x = np.mgrid[0:height, 0:width]
    return np.stack(
        [(x * 255 // max(width - 1, 1)), (y * 255 // max(height - 1, 1)), np.full_like(x, 128)], axis=2
    ).astype(np.uint8)


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def crafted_png_header(width: int, height: int) -> bytes:
    """A PNG that claims ``width x height`` RGB pixels but carries almost no data."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 16))
        + _png_chunk(b"IEND", b"")
    )


def first_busy_yard(min_railcars: int, max_railcars: int = 150, first_seed: int = 9_000_000) -> Any:
    """The first held-out synthetic chip (seeds never trained on) holding ``min..max`` railcars.

    Found by search rather than pinned to a seed, so that generator changes do not silently empty the test scene.
    """
    from training.synth import generate_chip

    for seed in range(first_seed, first_seed + 400):
        chip = generate_chip(seed)
        if min_railcars <= chip.counts()["railcar"] <= max_railcars:
            return chip
    raise LookupError(f"no held-out chip with {min_railcars}-{max_railcars} railcars")
