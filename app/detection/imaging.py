"""Turn uploaded bytes into an RGB ``uint8`` array, refusing anything that is not a whole JPEG, PNG or TIFF.

The format is decided from the content (magic bytes), never from a file name. The pixel count is checked from the
header before any pixel is decoded. Plain 8-bit RGB or grey PNGs and baseline-complete JPEGs without EXIF rotation
are decoded by libspng (PNG, chunk checksums verified first) or OpenCV (JPEG): faster, the same pixels as Pillow;
everything else, and anything they refuse, by Pillow. Every refusal raises a subclass of :class:`ImageError` whose
message is fit to show to the user; the API maps each subclass to one HTTP status.
"""

from __future__ import annotations

import hashlib
import io
import struct
import warnings
import zlib
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

#: Formats accepted, as Pillow names them.
ACCEPTED_FORMATS: tuple[str, ...] = ("JPEG", "PNG", "TIFF")


def _pillow_open() -> Callable[..., Image.Image]:
    """Pillow's own ``Image.open``, unwrapped if a library replaced it.

    Ultralytics wraps ``PIL.Image.open`` on import so that an unidentified file makes it import (or try to install)
    ``pi-heif``; that must never happen here, so this module calls the original.
    """
    fn: Any = Image.open
    for _ in range(5):
        if getattr(fn, "__module__", "PIL.Image") == "PIL.Image":
            break
        inner = getattr(fn, "__wrapped__", None) or getattr(fn, "__globals__", {}).get("_image_open")
        if inner is None:
            break
        fn = inner
    return fn


_OPEN = _pillow_open()

#: What a user whose JPEG/PNG is too big to decode whole should do instead.
_TOO_BIG_ADVICE = (
    "JPEG and PNG are decoded whole (WAGON_MAX_PIXELS); send a larger scene as a GeoTIFF, which is "
    "read window by window (and analysed as a background job when large)"
)

_DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, IndexError, KeyError, TypeError, MemoryError)


class ImageError(ValueError):
    """Base class: the bytes cannot be used as an image."""


class EmptyImageError(ImageError):
    """No bytes at all."""


class UnsupportedImageError(ImageError):
    """Not an image, or an image in a format other than JPEG, PNG or TIFF."""


class CorruptImageError(ImageError):
    """Recognised as JPEG/PNG/TIFF but cannot be fully decoded (truncated or damaged)."""


class ImageTooLargeError(ImageError):
    """More pixels than allowed."""


class ImageShapeError(ImageError):
    """An image whose shape or scale would cost far more work than it can show (a thin strip, a GSD far coarser
    than the model's): :mod:`app.detection.workload`."""


@dataclass(frozen=True)
class DecodedImage:
    """A decoded image ready for the detector."""

    array: np.ndarray  # H x W x 3, uint8, RGB
    format: str  # "JPEG", "PNG" or "TIFF"
    sha256: str  # of the uploaded bytes
    original_mode: str  # Pillow mode before conversion, e.g. "RGB", "P", "I;16", "CMYK"
    valid: np.ndarray | None = None  # H x W bool, False where fully transparent; None: every pixel valid

    @property
    def width(self) -> int:
        """Width in pixels (after EXIF orientation)."""
        return int(self.array.shape[1])

    @property
    def height(self) -> int:
        """Height in pixels (after EXIF orientation)."""
        return int(self.array.shape[0])


def decode_image(data: bytes, max_pixels: int = 100_000_000, sha256: str | None = None) -> DecodedImage:
    """Decode JPEG/PNG/TIFF bytes to an RGB ``uint8`` array, applying EXIF orientation. ``sha256``: the bytes'
    digest when the caller already has it (not computed again).

    Raises :class:`EmptyImageError`, :class:`UnsupportedImageError`, :class:`CorruptImageError` or
    :class:`ImageTooLargeError`.
    """
    if not data:
        raise EmptyImageError("the uploaded file is empty")
    im = _open(data, max_pixels)
    fast = _decode_plain(data, im)
    if fast is not None:
        im.close()
        return DecodedImage(
            array=fast, format=str(im.format), sha256=sha256 or hashlib.sha256(data).hexdigest(), original_mode=im.mode
        )
    try:
        original_mode = im.mode
        _load_fully(im)
        try:
            oriented = ImageOps.exif_transpose(im)
        except _DECODE_ERRORS:
            oriented = im  # unreadable EXIF: keep the pixels as stored
        oriented = oriented if oriented is not None else im
        array = to_rgb_array(oriented)
        alpha = alpha_of(oriented)
    finally:
        im.close()
    valid = None
    if alpha is not None and int(alpha.min()) < 255:
        array = composite_over_black(array, alpha)
        valid = alpha > 0
    return DecodedImage(
        array=array,
        format=str(im.format),
        sha256=sha256 or hashlib.sha256(data).hexdigest(),
        original_mode=original_mode,
        valid=valid,
    )


def _open(data: bytes, max_pixels: int) -> Image.Image:
    """Open lazily (header only) and check format and pixel count."""
    _raise_pillow_bomb_limit(max_pixels)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im = _OPEN(io.BytesIO(data), formats=list(ACCEPTED_FORMATS))
    except Image.DecompressionBombError as exc:
        raise ImageTooLargeError(f"image has more than {max_pixels} pixels; {_TOO_BIG_ADVICE}") from exc
    except (UnidentifiedImageError, ImportError) as exc:  # ImportError: a wrapper's plugin hook failed
        other = _identify_any(data)
        if other is not None:
            raise UnsupportedImageError(f"unsupported image format {other}; send JPEG, PNG or TIFF") from exc
        if _looks_like_accepted(data):
            raise CorruptImageError("the image header is damaged or incomplete") from exc
        raise UnsupportedImageError("the file is not a recognised image; send JPEG, PNG or TIFF") from exc
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(f"the image header cannot be read: {exc}") from exc
    width, height = im.size
    if width <= 0 or height <= 0:
        im.close()
        raise CorruptImageError(f"the image has an invalid size {width}x{height}")
    if width * height > max_pixels:
        im.close()
        raise ImageTooLargeError(
            f"image is {width}x{height} = {width * height} pixels; the limit is {max_pixels}; {_TOO_BIG_ADVICE}"
        )
    return im


#: PNG chunks that change nothing in the pixels either decoder returns (libspng and Pillow apply no text, colour
#: profile, gamma or background; compressed text, ICC profiles and EXIF send a file to Pillow).
_PLAIN_PNG_CHUNKS = frozenset({b"IHDR", b"IDAT", b"IEND", b"gAMA", b"cHRM", b"sRGB", b"pHYs", b"tIME", b"tEXt"})


def _decode_plain(data: bytes, im: Image.Image) -> np.ndarray | None:
    """RGB pixels of a plain PNG (decoded by libspng) or JPEG (by OpenCV), or None (use Pillow).

    Plain: 8-bit RGB or grey without transparency, EXIF or compressed metadata; for JPEG, RGB or grey (not CMYK)
    without an EXIF orientation and ending with its end-of-image marker (OpenCV, unlike Pillow, pads a truncated
    JPEG instead of refusing it). The pixels are then Pillow's exactly (``tests/detection/test_imaging.py`` compares
    them); if the fast decoder fails, Pillow decodes and reports what is wrong. The pixel count was checked from the
    header already.
    """
    if im.mode not in ("RGB", "L") or "transparency" in im.info or "exif" in im.info:
        return None
    if im.format == "PNG":
        if not _plain_png(data):
            return None
        return _decode_plain_png(data, im)
    if im.format != "JPEG" or not data.endswith(b"\xff\xd9"):
        return None
    import cv2

    flags = cv2.IMREAD_IGNORE_ORIENTATION | (cv2.IMREAD_COLOR_RGB if im.mode == "RGB" else cv2.IMREAD_GRAYSCALE)
    try:
        out = cv2.imdecode(np.frombuffer(data, np.uint8), flags)
    except cv2.error:
        return None
    if out is None or out.shape[:2] != (im.size[1], im.size[0]) or out.dtype != np.uint8:
        return None
    if out.ndim == 2:
        out = np.repeat(out[:, :, None], 3, axis=2)
    return np.ascontiguousarray(out)


def _decode_plain_png(data: bytes, im: Image.Image) -> np.ndarray | None:
    """RGB pixels of a plain PNG by libspng (a quarter faster than OpenCV's libpng on a 640 px chip), or None."""
    import pyspng

    try:
        out = pyspng.load(data, format="RGB")  # grey is expanded to RGB, as Pillow's convert("RGB") does
    except (RuntimeError, ValueError):
        return None
    if out.shape != (im.size[1], im.size[0], 3) or out.dtype != np.uint8:
        return None
    return np.ascontiguousarray(out)


def _plain_png(data: bytes) -> bool:
    """Whether a PNG is 8-bit RGB or grey, not interlaced, and holds only :data:`_PLAIN_PNG_CHUNKS`, each with its
    checksum right (chunks walked)."""
    if len(data) < 33 or data[12:16] != b"IHDR" or data[24] != 8 or data[25] not in (0, 2) or data[28] != 0:
        return False
    pos, end = 8, len(data)
    view = memoryview(data)
    while pos + 12 <= end:
        length, kind = struct.unpack_from(">I4s", data, pos)
        if kind not in _PLAIN_PNG_CHUNKS or pos + 12 + length > end:
            return False
        # libspng, unlike Pillow, does not check CRCs (pyspng turns the check off): a damaged chunk goes to Pillow
        if zlib.crc32(view[pos + 4 : pos + 8 + length]) != struct.unpack_from(">I", data, pos + 8 + length)[0]:
            return False
        if kind == b"IEND":
            return True
        pos += 12 + length
    return False  # no IEND: Pillow says what is wrong


def _load_fully(im: Image.Image) -> None:
    """Force decoding of every pixel so truncated files are caught now.

    Relies on Pillow's default ``ImageFile.LOAD_TRUNCATED_IMAGES = False``; nothing in this project changes it.
    """
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            im.load()
    except _DECODE_ERRORS as exc:
        raise CorruptImageError(f"the {im.format} image is truncated or damaged: {exc}") from exc


def _raise_pillow_bomb_limit(max_pixels: int) -> None:
    """Let our own limit govern: Pillow's bomb guard must not refuse images we accept."""
    current = Image.MAX_IMAGE_PIXELS
    if current is not None and current < max_pixels:
        Image.MAX_IMAGE_PIXELS = max_pixels


def _identify_any(data: bytes) -> str | None:
    """Name of the image format if Pillow knows it at all (used only for error messages)."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with _OPEN(io.BytesIO(data)) as other:
                return str(other.format)
    except Exception:
        # any failure means "not an image Pillow knows"
        return None


def _looks_like_accepted(data: bytes) -> bool:
    """Whether the bytes start with a JPEG, PNG or TIFF signature."""
    return data.startswith((b"\xff\xd8\xff", b"\x89PNG\r\n\x1a\n", b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+"))


def to_rgb_array(im: Image.Image) -> np.ndarray:
    """Convert any Pillow image (palette, grey, alpha, CMYK, 16-bit, float) to an ``H x W x 3`` RGB uint8 array.

    Integer data deeper than 8 bits is scaled by its apparent bit depth: the smallest of 8, 10, 12, 14 or 16 bits
    that holds the image maximum (so 12-bit sensor data spans the full 8-bit range). Float data in ``[0, 1]`` is
    scaled by 255, other float data is clipped to ``[0, 255]``. Alpha is ignored here (see :func:`alpha_of`).
    """
    mode = im.mode
    if mode == "RGB":
        return _contiguous(np.asarray(im, dtype=np.uint8))
    if mode in ("I", "I;16", "I;16B", "I;16L", "I;16N", "F") or mode.startswith("I;"):
        grey = _scale_to_uint8(np.asarray(im))
        return np.repeat(grey[:, :, None], 3, axis=2)
    if mode in ("P", "PA"):
        im = im.convert("RGBA")
    try:
        rgb = im.convert("RGB")
    except _DECODE_ERRORS as exc:
        raise UnsupportedImageError(f"unsupported pixel mode {mode}") from exc
    return _contiguous(np.asarray(rgb, dtype=np.uint8))


def alpha_of(im: Image.Image) -> np.ndarray | None:
    """The image's alpha (``H x W`` uint8) if it has any (alpha band, or a transparent palette or colour key)."""
    if im.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        return np.asarray(im.getchannel("A"), dtype=np.uint8)
    if "transparency" in im.info and im.mode in ("P", "L", "RGB", "1"):
        try:
            return np.asarray(im.convert("RGBA").getchannel("A"), dtype=np.uint8)
        except _DECODE_ERRORS:
            return None
    return None


def composite_over_black(rgb: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """Premultiply colour by alpha: transparent pixels become black (as nodata does in GeoTIFF scenes), so that
    colour hidden under transparency is never shown to the detector."""
    out = rgb.astype(np.uint16) * alpha[:, :, None].astype(np.uint16)
    return np.ascontiguousarray(((out + 127) // 255).astype(np.uint8))


def _scale_to_uint8(values: np.ndarray) -> np.ndarray:
    """Map one band of >8-bit integer or float samples to uint8."""
    if values.dtype.kind == "f":
        arr = np.nan_to_num(values.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        if arr.size and arr.min() >= 0.0 and arr.max() <= 1.0:
            arr = arr * 255.0
        return np.clip(np.rint(arr), 0, 255).astype(np.uint8)
    arr = values.astype(np.int64)
    arr = np.clip(arr, 0, None)
    top = int(arr.max()) if arr.size else 0
    if top <= 255:
        return arr.astype(np.uint8)
    bits = next((b for b in (10, 12, 14, 16) if top < (1 << b)), 16)
    arr = np.clip(arr, 0, (1 << bits) - 1)
    return np.rint(arr * (255.0 / ((1 << bits) - 1))).astype(np.uint8)


def _contiguous(arr: np.ndarray) -> np.ndarray:
    if arr.ndim != 3 or arr.shape[2] != 3:
        raise UnsupportedImageError(f"unexpected decoded shape {arr.shape}")
    return np.ascontiguousarray(arr)
