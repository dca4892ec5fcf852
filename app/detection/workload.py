"""Bounds on the work one image may cause, checked from its header size and GSD before any pixel is decoded.

A thin strip (1 x 100,000 px) is tiled into hundreds of mostly empty tiles, and a coarse GSD given for a small chip
(``gsd_m=5`` on 320 px, working GSD 0.4 m/px) is enlarged 12.5 times before detection: either held the only
inference slot for a minute or more. Neither can show a railcar or a container, so they are refused at once.
"""

from __future__ import annotations

from app.detection.imaging import ImageShapeError, ImageTooLargeError

#: Defaults of the settings of the same names.
MAX_ASPECT_RATIO = 50.0
MAX_UPSAMPLE = 4.0


def check_aspect(width: int, height: int, max_aspect_ratio: float = MAX_ASPECT_RATIO) -> None:
    """:class:`ImageShapeError` (422) when the longer side exceeds ``max_aspect_ratio`` times the shorter."""
    long, short = max(width, height), max(1, min(width, height))
    if long / short > max_aspect_ratio:
        raise ImageShapeError(
            f"image is {width}x{height} px, an aspect ratio of {long / short:.0f}:1; at most {max_aspect_ratio:g}:1 "
            "is analysed (crop the facility from the scene instead)"
        )


def check_scale(
    width: int,
    height: int,
    scale: float,
    working_gsd_m: float | None,
    max_upsample: float = MAX_UPSAMPLE,
    max_pixels: int = 2_500_000_000,
) -> None:
    """Refuse a region of ``width`` x ``height`` source px that the detector would see ``scale`` times larger
    (working px per source px): enlarging more than ``max_upsample`` times (the GSD is too coarse to show wagons;
    :class:`ImageShapeError`, 422), or more than ``max_pixels`` after resampling (:class:`ImageTooLargeError`,
    413)."""
    if scale > max_upsample:
        coarsest = f" (gsd_m at most {max_upsample * working_gsd_m:g})" if working_gsd_m else ""
        raise ImageShapeError(
            f"the image's GSD is {scale:g} times coarser than the model's working GSD; images at most {max_upsample:g} "
            f"times coarser are analysed{coarsest}: railcars and containers are not resolved at that scale"
        )
    resampled = width * height * scale * scale
    if resampled > max_pixels:
        raise ImageTooLargeError(
            f"the image region is {width}x{height} px, {resampled:.3g} px once resampled to the model's working GSD; "
            f"the limit is {max_pixels} (WAGON_MAX_SCENE_PIXELS)"
        )
