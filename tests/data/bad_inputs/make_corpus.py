"""Write the corpus of hostile, broken and awkward uploads next to this script (all tiny; committed).

    python tests/data/bad_inputs/make_corpus.py

What each file is and what the service must answer is in ``tests/api/test_hostile_input.py`` (and docs/api.md).
Deterministic: the same Pillow/zlib give the same bytes.
"""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
from PIL import Image

HERE = Path(__file__).resolve().parent


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _encode(im: Image.Image, fmt: str, **kwargs: object) -> bytes:
    buf = io.BytesIO()
    im.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _noise(h: int = 48, w: int = 48) -> np.ndarray:
    return np.random.default_rng(7).integers(0, 256, (h, w, 3), dtype=np.uint8)


def huge_png_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A PNG whose header claims ``width x height`` RGB pixels, with almost no data (a decompression bomb's
    header)."""
    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", zlib.compress(b"\x00" * 64))
        + _png_chunk(b"IEND", b"")
    )


def huge_tiff_header(width: int = 100_000, height: int = 100_000) -> bytes:
    """A little-endian baseline TIFF whose one strip claims ``width x height`` 8-bit grey pixels, 64 bytes of
    data."""
    entries = [  # tag, type (3 SHORT, 4 LONG), count, value
        (256, 4, 1, width),
        (257, 4, 1, height),
        (258, 3, 1, 8),
        (259, 3, 1, 1),
        (262, 3, 1, 1),
        (273, 4, 1, 0),
        (277, 3, 1, 1),
        (278, 4, 1, height),
        (279, 4, 1, width * height & 0xFFFFFFFF),
    ]
    ifd_size = 2 + 12 * len(entries) + 4
    data_offset = 8 + ifd_size
    out = b"II*\x00" + struct.pack("<I", 8) + struct.pack("<H", len(entries))
    for tag, typ, count, value in entries:
        value = data_offset if tag == 273 else value
        packed = struct.pack("<HI", value, 0)[:4] if typ == 3 else struct.pack("<I", value)
        out += struct.pack("<HHI", tag, typ, count) + packed
    return out + struct.pack("<I", 0) + bytes(64)


def cmyk_jpeg() -> bytes:
    """A valid CMYK JPEG: left half pure cyan ink, right half pure magenta."""
    c = np.zeros((32, 32, 4), np.uint8)
    c[:, :16, 0] = 255
    c[:, 16:, 1] = 255
    return _encode(Image.fromarray(c, "CMYK"), "JPEG", quality=95)


def palette_png() -> bytes:
    """A valid palette PNG: left half palette entry 0 (red), right half entry 1 (green)."""
    im = Image.new("P", (16, 8))
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * (254 * 3))
    px = np.zeros((8, 16), np.uint8)
    px[:, 8:] = 1
    im.putdata(px.ravel().tolist())
    return _encode(im, "PNG")


def grey16_png() -> bytes:
    """A valid 16-bit grey PNG carrying 12-bit sensor data (0..4095 across)."""
    ramp = np.tile(np.linspace(0, 4095, 64).round().astype(np.uint16), (8, 1))
    return _encode(Image.fromarray(ramp), "PNG")


def rgba_png() -> bytes:
    """A valid RGBA PNG: left half fully transparent red (hidden colour), right half opaque green."""
    a = np.zeros((8, 16, 4), np.uint8)
    a[:, :8] = (255, 0, 0, 0)
    a[:, 8:] = (0, 255, 0, 255)
    return _encode(Image.fromarray(a, "RGBA"), "PNG")


def exif_rotated_jpeg() -> bytes:
    """A valid JPEG stored 64 wide x 32 high with EXIF orientation 6 (shown rotated 90 degrees clockwise, 32 x 64):
    stored left half red, right half blue."""
    a = np.zeros((32, 64, 3), np.uint8)
    a[:, :32] = (255, 0, 0)
    a[:, 32:] = (0, 0, 255)
    exif = Image.Exif()
    exif[0x0112] = 6
    return _encode(Image.fromarray(a), "JPEG", quality=95, exif=exif.tobytes())


def polyglot_png_zip() -> bytes:
    """A valid PNG that is also a ZIP archive (a ZIP appended after IEND; ZIP readers look from the end)."""
    import zipfile

    zbuf = io.BytesIO()
    with zipfile.ZipFile(zbuf, "w") as zf:
        zf.writestr("payload.html", "<script>alert(1)</script>")
    return _encode(Image.fromarray(_noise(16, 16)), "PNG") + zbuf.getvalue()


def polyglot_html_png() -> bytes:
    """An HTML page with a PNG after it: to a browser it is HTML; its first bytes are no image signature."""
    return b"<html><script>alert(1)</script><!--" + _encode(Image.fromarray(_noise(16, 16)), "PNG") + b"-->"


def ztxt_bomb_png() -> bytes:
    """A valid 8 x 8 PNG with a compressed text chunk that inflates to 8 MiB (a zlib bomb in metadata)."""
    png = _encode(Image.fromarray(_noise(8, 8)), "PNG")
    bomb = _png_chunk(b"zTXt", b"Comment\x00\x00" + zlib.compress(b"\x00" * (8 * 1024 * 1024), 9))
    return png[:33] + bomb + png[33:]  # right after IHDR (8-byte signature + 25-byte IHDR chunk)


def corpus() -> dict[str, bytes]:
    """File name -> bytes."""
    noisy_png = _encode(Image.fromarray(_noise()), "PNG")
    noisy_jpeg = _encode(Image.fromarray(_noise()), "JPEG", quality=90)
    noisy_tiff = _encode(Image.fromarray(_noise()), "TIFF")
    return {
        "zero_bytes.png": b"",
        "truncated.jpg": noisy_jpeg[: len(noisy_jpeg) // 2],
        "truncated.png": noisy_png[: len(noisy_png) // 2],
        "truncated.tif": noisy_tiff[: len(noisy_tiff) // 2],
        "wrong_magic.png": b"GIF89a this is no picture at all, just a name that says .png\n",
        "gif_named.jpg": _encode(Image.fromarray(_noise(16, 16)), "GIF"),
        "png_named.tif": _encode(Image.fromarray(_noise(16, 16)), "PNG"),
        "header_100k.png": huge_png_header(),
        "header_100k.tif": huge_tiff_header(),
        "cmyk.jpg": cmyk_jpeg(),
        "palette.png": palette_png(),
        "grey16.png": grey16_png(),
        "rgba.png": rgba_png(),
        "exif_rotated.jpg": exif_rotated_jpeg(),
        "polyglot_png_zip.png": polyglot_png_zip(),
        "polyglot_html_png.png": polyglot_html_png(),
        "ztxt_bomb.png": ztxt_bomb_png(),
        "strip_1x100000.png": _encode(Image.new("RGB", (1, 100_000), (90, 90, 90)), "PNG"),
        "strip_100000x1.png": _encode(Image.new("RGB", (100_000, 1), (90, 90, 90)), "PNG"),
        "strip_2x48000.jpg": _encode(Image.new("RGB", (2, 48_000), (90, 90, 90)), "JPEG", quality=10),
    }


def main() -> None:
    for name, data in corpus().items():
        (HERE / name).write_bytes(data)
        print(f"{name}: {len(data)} bytes")


if __name__ == "__main__":
    main()
