"""Decoding uploads: refusals (empty, not an image, truncated, too many pixels) and conversions to RGB uint8."""

from __future__ import annotations

import hashlib
import io
import time

import numpy as np
import pytest
from PIL import Image, PngImagePlugin

from app.detection import imaging
from app.detection.imaging import (
    CorruptImageError,
    EmptyImageError,
    ImageTooLargeError,
    UnsupportedImageError,
    decode_image,
)
from tests.support.images import crafted_png_header, encode_image, gradient_rgb


def _noisy(width: int = 256, height: int = 256) -> np.ndarray:
    return np.random.default_rng(1).integers(0, 256, (height, width, 3), dtype=np.uint8)


# ------------------------------------------------------------------------------------------- refusals


def test_empty() -> None:
    with pytest.raises(EmptyImageError, match="empty"):
        decode_image(b"")


@pytest.mark.parametrize("data", [b"hello world", b"%PDF-1.7\n" + b"x" * 100, b"\x00" * 64])
def test_not_an_image(data: bytes) -> None:
    with pytest.raises(UnsupportedImageError, match="not a recognised image"):
        decode_image(data)


@pytest.mark.parametrize("fmt", ["GIF", "BMP", "WEBP"])
def test_other_image_formats_are_unsupported(fmt: str) -> None:
    data = encode_image(gradient_rgb(), fmt)
    with pytest.raises(UnsupportedImageError, match=fmt):
        decode_image(data)


def test_damaged_png_header() -> None:
    with pytest.raises(CorruptImageError):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)


@pytest.mark.parametrize("fmt", ["JPEG", "PNG", "TIFF"])
def test_truncated(fmt: str) -> None:
    data = encode_image(_noisy(), fmt)
    with pytest.raises(CorruptImageError, match="truncated|damaged|cannot be read|header"):
        decode_image(data[: len(data) // 2])


def test_pixel_limit_checked_from_header_before_decoding() -> None:
    data = crafted_png_header(100_000, 100_000)  # 10^10 pixels claimed in a ~100-byte file
    t0 = time.perf_counter()
    with pytest.raises(ImageTooLargeError, match="pixels"):
        decode_image(data, max_pixels=100_000_000)
    assert time.perf_counter() - t0 < 1.0


def test_pixel_limit_between_our_limit_and_pillows_guard() -> None:
    # 1.5e8 pixels: above our 1e8 limit; decoding would fail (no data), so the header check must come first.
    with pytest.raises(ImageTooLargeError, match="15000x10000"):
        decode_image(crafted_png_header(15_000, 10_000), max_pixels=100_000_000)


def test_pixel_limit_on_real_image() -> None:
    data = encode_image(gradient_rgb(64, 48), "PNG")
    with pytest.raises(ImageTooLargeError):
        decode_image(data, max_pixels=64 * 48 - 1)
    assert decode_image(data, max_pixels=64 * 48).width == 64


def test_high_limit_is_not_refused_by_pillow_guard() -> None:
    # A 2e8-pixel header would trip Pillow's default bomb guard; with a higher limit we get to the decode step.
    with pytest.raises(CorruptImageError):
        decode_image(crafted_png_header(20_000, 10_000), max_pixels=300_000_000)


# ------------------------------------------------------------------------------------------- conversions


@pytest.mark.parametrize("fmt", ["PNG", "TIFF"])
def test_rgb_roundtrip_lossless(fmt: str) -> None:
    arr = gradient_rgb(64, 48)
    data = encode_image(arr, fmt)
    out = decode_image(data)
    assert out.array.dtype == np.uint8 and out.array.shape == (48, 64, 3)
    np.testing.assert_array_equal(out.array, arr)
    assert out.format == fmt
    assert (out.width, out.height) == (64, 48)
    assert out.sha256 == hashlib.sha256(data).hexdigest()


def test_jpeg_decodes() -> None:
    out = decode_image(encode_image(gradient_rgb(), "JPEG", quality=95))
    assert out.format == "JPEG" and out.array.shape == (48, 64, 3)
    assert np.abs(out.array.astype(int) - gradient_rgb().astype(int)).mean() < 3


def test_format_is_decided_by_content() -> None:
    # The decoder never sees a file name; PNG bytes are PNG whatever the upload was called.
    assert decode_image(encode_image(gradient_rgb(), "PNG")).format == "PNG"


def test_palette() -> None:
    im = Image.new("P", (8, 4))
    im.putpalette([255, 0, 0, 0, 255, 0] + [0] * (256 * 3 - 6))
    px = np.zeros((4, 8), dtype=np.uint8)
    px[:, 4:] = 1
    im.putdata(px.ravel().tolist())
    out = decode_image(encode_image(im, "PNG")).array
    assert out.shape == (4, 8, 3)
    assert tuple(out[0, 0]) == (255, 0, 0) and tuple(out[0, 7]) == (0, 255, 0)


def test_rgba_is_composited_over_black_and_masked() -> None:
    rgba = np.zeros((4, 4, 4), dtype=np.uint8)
    rgba[..., 0] = 200
    rgba[..., 3] = np.array([0, 255, 128, 255], dtype=np.uint8)[None, :]
    decoded = decode_image(encode_image(rgba, "PNG"))
    out = decoded.array
    assert out.shape == (4, 4, 3) and (out[..., 1:] == 0).all()
    assert (out[:, :, 0] == np.array([0, 200, 100, 200])[None, :]).all()  # colour premultiplied by alpha
    assert decoded.valid is not None and (decoded.valid == np.array([False, True, True, True])[None, :]).all()
    opaque = rgba.copy()
    opaque[..., 3] = 255
    assert decode_image(encode_image(opaque, "PNG")).valid is None  # no transparency: no mask


@pytest.mark.parametrize("mode", ["L", "LA", "1"])
def test_grey_modes(mode: str) -> None:
    im = Image.fromarray(np.full((5, 6), 255, dtype=np.uint8), "L").convert(mode)
    out = decode_image(encode_image(im, "PNG")).array
    assert out.shape == (5, 6, 3) and (out == 255).all()


def test_16bit_grey_png_is_scaled_by_bit_depth() -> None:
    arr = np.array([[0, 2048, 4095, 1000]], dtype=np.uint16)  # 12-bit data in a 16-bit file
    im = Image.fromarray(arr)
    data = encode_image(im, "PNG")
    assert Image.open(io.BytesIO(data)).mode.startswith("I")
    out = decode_image(data)
    assert out.original_mode.startswith("I")
    assert out.array[0, :, 0].tolist() == [0, round(2048 * 255 / 4095), 255, round(1000 * 255 / 4095)]
    assert (out.array[..., 0] == out.array[..., 1]).all()


def test_16bit_full_range_tiff() -> None:
    arr = np.array([[0, 65535, 32768]], dtype=np.uint16)
    out = decode_image(encode_image(Image.fromarray(arr), "TIFF")).array
    assert out[0, :, 0].tolist() == [0, 255, 128]


def test_float_tiff() -> None:
    arr = np.array([[0.0, 0.5, 1.0]], dtype=np.float32)
    out = decode_image(encode_image(Image.fromarray(arr, "F"), "TIFF")).array
    assert out[0, :, 0].tolist() == [0, 128, 255]


@pytest.mark.parametrize("fmt", ["JPEG", "TIFF"])
def test_cmyk(fmt: str) -> None:
    cmyk = Image.new("CMYK", (8, 8), (0, 255, 255, 0))  # pure red in CMYK
    data = encode_image(cmyk, fmt, **({"quality": 100} if fmt == "JPEG" else {}))
    out = decode_image(data).array
    assert out.shape == (8, 8, 3)
    r, g, b = out[4, 4].astype(int)
    assert r > 200 and g < 60 and b < 60


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_exif_orientation_is_honoured(fmt: str) -> None:
    arr = np.zeros((20, 40, 3), dtype=np.uint8)  # H=20, W=40: left half red, right half blue
    arr[:, :20] = (255, 0, 0)
    arr[:, 20:] = (0, 0, 255)
    im = Image.fromarray(arr)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 CW to display"
    data = encode_image(im, fmt, exif=exif.tobytes(), **({"quality": 95} if fmt == "JPEG" else {}))
    out = decode_image(data).array
    assert out.shape == (40, 20, 3)  # width and height swapped
    top, bottom = out[5, 10].astype(int), out[35, 10].astype(int)
    assert top[0] > 200 and top[2] < 60  # the left (red) half is now on top
    assert bottom[2] > 200 and bottom[0] < 60


def test_decode_is_immune_to_ultralytics_pil_patch() -> None:
    """Ultralytics replaces ``PIL.Image.open`` with a wrapper that reaches for ``pi-heif`` on unknown files."""
    from app.core.offline import configure_offline
    from app.detection import imaging

    configure_offline()
    patches = pytest.importorskip("ultralytics.utils.patches")
    assert Image.open is patches.image_open
    assert imaging._pillow_open() is patches._image_open  # unwrapped even when imported after the patch
    with pytest.raises(UnsupportedImageError):
        decode_image(b"definitely not an image")
    with pytest.raises(CorruptImageError):
        decode_image(b"\x89PNG\r\n\x1a\n" + b"garbage" * 10)
    assert decode_image(encode_image(gradient_rgb(), "PNG")).format == "PNG"


# ------------------------------------------------------------------------------------- OpenCV fast path


def _pillow_only(data: bytes, monkeypatch: pytest.MonkeyPatch) -> np.ndarray:
    """The pixels the Pillow path alone gives (the fast path switched off)."""
    with monkeypatch.context() as m:
        m.setattr(imaging, "_decode_plain", lambda data, im: None)
        return decode_image(data).array


def _exif_rotated_jpeg() -> bytes:
    im = Image.fromarray(_noisy(40, 24))
    exif = im.getexif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    return encode_image(im, "JPEG", quality=90, exif=exif.tobytes())


def _ztxt() -> PngImagePlugin.PngInfo:
    info = PngImagePlugin.PngInfo()
    info.add_text("comment", "x" * 100, zip=True)
    return info


@pytest.mark.parametrize("size", [(64, 48), (67, 45), (1, 1), (333, 17)])
@pytest.mark.parametrize("mode", ["RGB", "L"])
@pytest.mark.parametrize(
    "options",
    [
        ("PNG", {}),
        ("PNG", {"optimize": True}),
        ("JPEG", {"quality": 50}),
        ("JPEG", {"quality": 95, "subsampling": 0}),
        ("JPEG", {"subsampling": 1}),
        ("JPEG", {"progressive": True}),
        ("JPEG", {"optimize": True}),
    ],
)
def test_fast_path_gives_pillows_pixels(
    size: tuple[int, int], mode: str, options: tuple[str, dict], monkeypatch: pytest.MonkeyPatch
) -> None:
    fmt, kwargs = options
    im = Image.fromarray(np.vstack([_noisy(*size)[: size[1] // 2], gradient_rgb(*size)[size[1] // 2 :]]))
    data = encode_image(im.convert(mode), fmt, **kwargs)
    assert imaging._decode_plain(data, imaging._open(data, 10**8)) is not None  # libspng or OpenCV decode these
    np.testing.assert_array_equal(decode_image(data).array, _pillow_only(data, monkeypatch))


@pytest.mark.parametrize(
    "name, data",
    [
        ("rgba", encode_image(Image.fromarray(_noisy(32, 32)).convert("RGBA"), "PNG")),
        ("palette", encode_image(Image.fromarray(_noisy(32, 32)).convert("P"), "PNG")),
        (
            "grey 16-bit",
            encode_image(Image.fromarray((np.arange(32 * 32).reshape(32, 32) * 60).astype(np.uint16)), "PNG"),
        ),
        ("tRNS colour key", encode_image(Image.fromarray(_noisy(32, 32)), "PNG", transparency=(1, 2, 3))),
        ("compressed text", encode_image(Image.fromarray(_noisy(32, 32)), "PNG", pnginfo=_ztxt())),
        ("EXIF-rotated JPEG", _exif_rotated_jpeg()),
        ("CMYK JPEG", encode_image(Image.fromarray(_noisy(32, 32)).convert("CMYK"), "JPEG")),
        ("JPEG with bytes after its end", encode_image(_noisy(32, 32), "JPEG") + b"trailing"),
    ],
)
def test_other_inputs_go_to_pillow(name: str, data: bytes, monkeypatch: pytest.MonkeyPatch) -> None:
    assert imaging._decode_plain(data, imaging._open(data, 10**8)) is None, name
    np.testing.assert_array_equal(decode_image(data).array, _pillow_only(data, monkeypatch))


def test_exif_rotation_still_applies() -> None:
    out = decode_image(_exif_rotated_jpeg())
    assert out.array.shape == (40, 24, 3)  # 40 wide, 24 high, turned upright


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_fast_path_refusals_are_pillows(fmt: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """What libspng or OpenCV cannot decode is left to Pillow, which names the fault; a truncated JPEG is never
    padded."""
    data = encode_image(_noisy(), fmt)
    with pytest.raises(CorruptImageError):
        decode_image(data[: len(data) // 2])
    if fmt == "JPEG":  # cut short but closed by an end marker: both decoders accept it, with the same pixels
        closed = data[: len(data) // 2] + b"\xff\xd9"
        np.testing.assert_array_equal(decode_image(closed).array, _pillow_only(closed, monkeypatch))


def test_png_with_a_damaged_chunk_is_refused_not_decoded_by_libspng() -> None:
    """libspng (as pyspng calls it) ignores chunk checksums: the walk verifies them, so damage reaches Pillow."""
    data = bytearray(encode_image(_noisy(), "PNG"))
    data[data.find(b"IDAT") + 200] ^= 0xFF  # one flipped bit pattern inside the compressed pixels
    assert imaging._decode_plain(bytes(data), imaging._open(bytes(data), 10**8)) is None
    with pytest.raises(CorruptImageError):
        decode_image(bytes(data))
