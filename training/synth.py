"""Synthetic overhead chips of rail yards and ports, with oriented-box labels.

Every chip is drawn at true scale: a ground sample distance (GSD) is drawn per chip and every object is sized in
metres (wagons 14-20 m x 3 m, locomotives 18-23 m, containers 6.06 or 12.19 m x 2.44 m). Scenes hold parallel and
branching tracks on ballast with coupled rows of wagons of several kinds (box, tank, hopper, gondola, flat, flat
carrying containers) and locomotives, container lots, and distractors (roads, buildings, trucks, cars, storage
tanks, catenary masts). One sun direction per chip casts every shadow, and shadows follow heights: a shadow reaches a
lower roof only as far as the sun's rays get at that roof's height, never darkens a roof as high as its caster, and
darkens a point once however many shadows overlap there (renderer 2; renderer 1, used for versions 1-10, darkened
everything drawn earlier inside a shadow's ground outline, so a low container's shadow blacked out a taller
neighbour's roof). The chip then goes through a sensor model (blur, haze, colour shift, noise, pan-sharpening fringes,
JPEG).

All knobs live in :class:`SynthConfig`; its defaults draw the data the shipped model was trained on, and
:data:`STAGE4_CONFIG` the darker-shadow variant tried after it (not shipped). The same seed gives the same chip, byte
for byte.

Labels are returned as oriented boxes (4 corners in pixels) and written in Ultralytics OBB format:
``class x1 y1 x2 y2 x3 y3 x4 y4`` normalised to [0, 1].
"""

from __future__ import annotations

import argparse
import json
import math
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

import cv2
import numpy as np

from app.detection.geometry import resample, resample_scale

RAILCAR, CONTAINER = 0, 1
#: changes when the same seed and config draw a different picture (figures on synthetic chips compare only within one)
RENDERER_VERSION = 2
CLASS_NAMES = ("railcar", "container")

Corners = np.ndarray  # (4, 2) float array of x, y in pixels
Colour = tuple[float, float, float] | np.ndarray  # RGB, 0-255


@dataclass(frozen=True)
class SynthConfig:
    """Every knob of the generator, in one place (lengths in metres unless named ``_px``)."""

    size_px: int = 640
    supersample: int = 2
    gsd_range: tuple[float, float] = (0.3, 0.8)
    # the service resamples to its working GSD (0.4 m/px) whenever the GSD is known, so chips may be drawn near it
    # (share gsd_focus_probability); the rest span gsd_range. Defaults reproduce the data of the shipped model; the
    # fourth training stage (not shipped, see docs/lab/model-history.md) used (0.34, 0.48) with probability 0.6
    gsd_focus: tuple[float, float] = (0.34, 0.48)
    gsd_focus_probability: float = 0.0
    # when set, each chip is drawn at its own GSD on a canvas sized so that resampling it to this GSD gives size_px,
    # then resampled exactly as the service resamples an upload of known GSD (cubic up, area down): the model trains
    # on what it sees at inference (objects at the working scale, blurred when the source was coarser). None: chips
    # stay at their own GSD (all data of versions 1-5)
    resample_to_gsd_m: float | None = None
    # scene mix: probabilities of rail yard, port (container lots with some rail), mixed, and empty (no targets)
    scene_weights: tuple[float, float, float, float] = (0.5, 0.2, 0.22, 0.08)
    # rail geometry
    track_gauge_m: float = 1.435
    track_spacing_m: tuple[float, float] = (4.3, 6.5)
    ballast_width_m: tuple[float, float] = (2.8, 3.8)
    # share of bundles on light-grey ballast (the 0.25-0.5 m Swiss orthophotos: near-white ballast between dark
    # rails, wagons dark against it); versions 1-3 drew the darker BALLAST_COLOURS only
    light_ballast_probability: float = 0.0
    tracks_per_bundle: tuple[int, int] = (2, 14)
    branch_probability: float = 0.5
    track_occupancy: tuple[float, float] = (0.15, 0.95)
    # rolling stock
    wagon_length_m: tuple[float, float] = (14.0, 20.0)
    wagon_width_m: tuple[float, float] = (2.8, 3.2)
    loco_length_m: tuple[float, float] = (17.0, 23.0)
    coupling_gap_m: tuple[float, float] = (0.6, 1.8)
    kind_weights: dict[str, float] = field(
        default_factory=lambda: {
            "box": 0.22,
            "tank": 0.16,
            "hopper": 0.16,
            "gondola": 0.16,
            "flat": 0.08,
            "flat_containers": 0.12,
            "locomotive": 0.10,
        }
    )
    # containers
    container_lengths_m: tuple[float, float] = (6.06, 12.19)
    container_width_m: float = 2.44
    container_gap_m: tuple[float, float] = (0.05, 0.5)
    lot_rows: tuple[int, int] = (2, 12)
    lot_columns: tuple[int, int] = (2, 10)
    lot_fill: tuple[float, float] = (0.4, 1.0)
    # gap between container bays along a row: quay rows whose 40 ft boxes nearly touch end to end look like a train
    # (real terminals: 0.2-1 m); versions 1-3 drew 1-4 m only
    lot_bay_gap_m: tuple[float, float] = (1.0, 4.0)
    # distractors (expected number per chip)
    buildings: tuple[int, int] = (0, 6)
    trucks: tuple[int, int] = (0, 10)
    cars: tuple[int, int] = (0, 25)
    storage_tanks: tuple[int, int] = (0, 8)
    roads: tuple[int, int] = (0, 3)
    # hard negatives (railcar look-alikes seen as false alarms on the real port, kari_port), drawn after everything
    # else and never over a labelled object, so a chip's labels are those of the same seed without them. Expected
    # number per chip; (0, 0) and 0 draw nothing (the random draws of every earlier config are unchanged):
    # lanes of parked semi-trailers and empty container chassis, nose to tail or side by side (12-16 m x 2.5 m, the
    # size of a wagon, in rows like a train), on asphalt beside container stacks
    trailer_rows: tuple[int, int] = (0, 0)
    # flat roofs carrying lines of skylights or rooftop units (8-20 m x 2-3.5 m, 0.5-3 m apart)
    roof_strip_buildings: tuple[int, int] = (0, 0)
    # share of chips with a quay: dark water along one side, a moored ship whose deck edge carries a line of narrow
    # hatch-cover or cargo strips
    ship_probability: float = 0.0
    # chips whose ground is per-pixel colour noise or speckle (teaches the model that noise is not containers)
    noise_ground_probability: float = 0.06
    # sun and shadows
    sun_elevation_deg: tuple[float, float] = (25.0, 75.0)
    # share of chips whose sun shines across the main tracks (azimuth within 30 degrees of their normal), so each
    # wagon's shadow is a band beside it as the Swiss orthophotos show; with a uniform azimuth only about a third of
    # wagons get a band at least 0.8 of their width. 0 keeps the defaults' uniform azimuth (and their random draws)
    sun_across_track_probability: float = 0.0
    # brightness left in a shadow (real shadows next to wagons are near black: a dark band as wide as the wagon,
    # which a detector must not take for the wagon itself)
    shadow_factor: tuple[float, float] = (0.12, 0.5)
    # share of wagons given a light roof (grey, beige, white), the kind that sits beside a black shadow band
    light_roof_probability: float = 0.0
    # share of wagons whose roof takes the colour of the ground beside it (grey wagons on grey concrete or ballast):
    # such a wagon shows only by its edges, coupling gaps and shadow, and its black shadow band looks more like a
    # wagon than the wagon does — the real Swiss yard's lower train
    ground_roof_probability: float = 0.0
    # such a roof's brightness as a share of that ground's (per wagon, uniform in the range)
    ground_roof_ratio: tuple[float, float] = (0.85, 1.12)
    # share of tracks in a bundle that hold a train (real yards have many empty tracks)
    bundle_occupancy: tuple[float, float] = (0.15, 0.9)
    # viewing geometry: off-nadir angle leans tall objects away from the sensor (their side face shows)
    off_nadir_deg: tuple[float, float] = (0.0, 25.0)
    platform_probability: float = 0.3
    # sensor model
    blur_sigma_px: tuple[float, float] = (0.0, 1.1)
    noise_sigma: tuple[float, float] = (1.0, 9.0)
    heavy_noise_probability: float = 0.04
    haze: tuple[float, float] = (0.0, 0.35)
    brightness: tuple[float, float] = (0.55, 1.2)
    contrast: tuple[float, float] = (0.6, 1.2)
    saturation: tuple[float, float] = (0.4, 1.2)
    channel_gain: float = 0.12
    fringe_probability: float = 0.35
    cloud_shadow_probability: float = 0.15
    jpeg_quality: tuple[int, int] = (35, 95)
    # labels
    min_visible_fraction: float = 0.6


#: The variant of the fourth training stage (docs/lab/model-history.md): near-black shadows from a lower sun, light
#: roofs, most chips near the working GSD. Evaluated and not shipped; kept to reproduce it (``--config stage4``).
STAGE4_CONFIG = SynthConfig(
    gsd_focus_probability=0.6, sun_elevation_deg=(20.0, 70.0), shadow_factor=(0.04, 0.4), light_roof_probability=0.3
)

#: The variant of the sixth training stage: the fourth stage's shadows and light roofs, plus container rows that
#: read like trains (bays nearly touching, single-row lines), the confusion seen on kari_containers_2 (``--config
#: stage6``).
STAGE6_CONFIG = replace(STAGE4_CONFIG, lot_bay_gap_m=(0.2, 4.0), lot_rows=(1, 12))

#: The variant of the ninth training stage (``--config yard``): the sixth stage's knobs in wide marshalling yards as
#: the real Swiss orthophotos show them — many close parallel tracks (6-20, 4.3-5.2 m apart) on ballast that is often
#: light grey and fills the space between tracks, most tracks empty, short groups of wagons.
YARD_CONFIG = replace(
    STAGE6_CONFIG,
    scene_weights=(0.7, 0.1, 0.12, 0.08),
    tracks_per_bundle=(6, 20),
    track_spacing_m=(4.3, 5.2),
    ballast_width_m=(3.6, 4.8),
    light_ballast_probability=0.6,
    bundle_occupancy=(0.1, 0.5),
    track_occupancy=(0.1, 0.7),
)

#: The variant of the tenth training stage (``--config yard_shadow``): the yard variant with the Swiss orthophotos'
#: failure in mind (stage 9's boxes sat on the black band beside light wagons): most wagons light-roofed (beige, grey,
#: white: 60%), near-black shadows (brightness left 0.03-0.25) from a sun at 35-65 degrees (a band about as wide as the
#: wagon when the sun is across the track: with the azimuth uniform, for about a third of the wagons), and near-nadir
#: views (off-nadir up to 8 degrees, as an orthophoto).
YARD_SHADOW_CONFIG = replace(
    YARD_CONFIG,
    light_roof_probability=0.6,
    shadow_factor=(0.03, 0.25),
    sun_elevation_deg=(35.0, 65.0),
    off_nadir_deg=(0.0, 8.0),
)

#: The variant of the twelfth training stage (``--config yard_across``): the tenth stage's yard, most chips with
#: the sun across the tracks and at 30-55 degrees, so most wagons have a black band about their width beside them.
YARD_ACROSS_CONFIG = replace(YARD_SHADOW_CONFIG, sun_across_track_probability=0.8, sun_elevation_deg=(30.0, 55.0))

#: The variant of the fourteenth training stage (``--config yard_ortho``): the twelfth stage's yard through an
#: orthophoto's sensor rather than a satellite's — sharp (blur up to 0.5 px), clean (noise 1-4, no heavy noise or
#: noise ground), little haze, full contrast, light JPEG, few colour fringes — and the sun across the tracks in 90% of
#: chips and at 42-62 degrees (a band 0.7-1.5 wagon widths, as the Swiss yard shows). It tested whether the crisp
#: look of the real band was what the generator lacked (stage 13's boxes sat on the real yard's dark bands, 17 of 24
#: false alarms, yet rarely on synthetic ones, 18 of 94): it was not (stage 14 did worse on the real images).
YARD_ORTHO_CONFIG = replace(
    YARD_ACROSS_CONFIG,
    sun_across_track_probability=0.9,
    sun_elevation_deg=(42.0, 62.0),
    blur_sigma_px=(0.0, 0.5),
    fringe_probability=0.1,
    noise_sigma=(1.0, 4.0),
    heavy_noise_probability=0.0,
    noise_ground_probability=0.0,
    haze=(0.0, 0.1),
    contrast=(0.9, 1.3),
    brightness=(0.8, 1.15),
    jpeg_quality=(75, 95),
    cloud_shadow_probability=0.05,
)

#: The variant of the sixteenth training stage (``--config yard_measured``): the twelfth stage's yard with its roofs
#: and shadow bands brought to what the labelled Swiss yard measures (mean brightness inside each of its 41 wagon
#: labels, and one wagon width to either side: band 0.37 and roof 0.88 of the ground on the other side). Measured the
#: same way on sun-across wagons of 60 chips, yard_across gives 0.53 and 1.08 — bands too light (not fully covered,
#: blurred, hazed) and roofs too light (60% light roofs) — and this variant 0.47 and 1.01: 25% light roofs, shadows
#: keeping 0.02-0.15 of the light, sun across the tracks in 90% of chips at 35-50 degrees (a band at least a wagon's
#: width), haze up to 0.15, blur up to 0.7 px. Stage 16 on it (7 epochs) left the real figures and the band mistake
#: where they were.
YARD_MEASURED_CONFIG = replace(
    YARD_ACROSS_CONFIG,
    light_roof_probability=0.25,
    shadow_factor=(0.02, 0.15),
    sun_across_track_probability=0.9,
    sun_elevation_deg=(35.0, 50.0),
    haze=(0.0, 0.15),
    blur_sigma_px=(0.0, 0.7),
)

#: The variant of the seventeenth training stage (``--config yard_camo``): the twelfth stage's yard where 40% of the
#: wagons wear the colour of the ground one wagon width beside them (``ground_roof_ratio``: 0.85-1.12 of it), with
#: near-black shadows from a sun across the tracks. Looked at closely, the real Swiss yard's lower train is such a
#: train: grey wagons on grey concrete, each beside a black band with light coupling gaps — the band has the
#: wagon's outline and more contrast than the wagon, and the model boxed the band (17 of 21 false alarms).
YARD_CAMO_CONFIG = replace(
    YARD_ACROSS_CONFIG,
    ground_roof_probability=0.4,
    light_roof_probability=0.3,
    shadow_factor=(0.02, 0.2),
    sun_across_track_probability=0.9,
    sun_elevation_deg=(35.0, 55.0),
)

#: A variant first used in the seventeenth training stage (``--config intermodal``): the defaults with half the wagons
#: flat wagons carrying containers. ``training.container_breakdown`` found version 4 missing 55% of the containers on
#: flat wagons (77% of a single container centred on its wagon, which competes with the wagon for the same anchors)
#: against 20% of those in lots.
INTERMODAL_CONFIG = SynthConfig(
    kind_weights={
        "box": 0.1,
        "tank": 0.08,
        "hopper": 0.08,
        "gondola": 0.08,
        "flat": 0.06,
        "flat_containers": 0.5,
        "locomotive": 0.1,
    }
)

#: A hard-negative variant (``--config hard_negatives``, from the failure analysis of the real port, kari_port): the
#: defaults weighted to ports, with the real port's railcar look-alikes drawn unlabelled — lanes of parked
#: semi-trailers and container chassis (1-4 per chip), flat roofs with lines of skylights (0-3) and, in 35% of chips,
#: a quay with a moored ship whose deck edge carries a line of narrow strips. Mix it with the yard variants (the
#: Swiss yard's shadow-band mistake is theirs to teach).
HARD_NEGATIVES_CONFIG = replace(
    SynthConfig(),
    scene_weights=(0.35, 0.35, 0.2, 0.1),
    trailer_rows=(1, 4),
    roof_strip_buildings=(0, 3),
    ship_probability=0.35,
)


@dataclass
class SynthObject:
    """One labelled object: class id and its 4 corners in output pixels."""

    class_id: int
    corners: Corners


@dataclass
class SynthChip:
    """A rendered chip and its labels."""

    image: np.ndarray  # H x W x 3 uint8 RGB
    objects: list[SynthObject]
    gsd_m: float
    seed: int
    track_angle_rad: float = 0.0  # direction of the main tracks (and container lots), radians
    shadow_dir: tuple[float, float] = (0.0, 0.0)  # unit vector, image x/y, in which shadows fall

    def counts(self) -> dict[str, int]:
        """Objects per class name."""
        out = {name: 0 for name in CLASS_NAMES}
        for o in self.objects:
            out[CLASS_NAMES[o.class_id]] += 1
        return out


# ---------------------------------------------------------------------------------------------------------------
# palettes (RGB), read off real imagery: dull, desaturated roofs; rust browns dominate wagons
WAGON_COLOURS = {
    "box": [
        (120, 62, 45),
        (95, 70, 60),
        (70, 80, 95),
        (140, 140, 140),
        (150, 60, 50),
        (60, 90, 120),
        (170, 165, 155),
        (90, 100, 80),
        (215, 212, 205),
        (200, 185, 165),
        (185, 150, 120),
        (225, 225, 222),
    ],
    "tank": [(35, 35, 38), (200, 200, 200), (160, 160, 165), (60, 60, 62), (210, 205, 190), (120, 120, 125)],
    "hopper": [(130, 130, 130), (110, 95, 80), (160, 155, 145), (90, 85, 80), (140, 110, 70), (200, 195, 185)],
    "gondola": [(85, 60, 45), (70, 70, 70), (100, 80, 60), (60, 65, 75), (170, 150, 120)],
    "flat": [(95, 80, 65), (70, 65, 60), (110, 100, 85)],
    "locomotive": [
        (170, 40, 35),
        (40, 70, 140),
        (210, 180, 40),
        (60, 110, 60),
        (200, 200, 200),
        (50, 50, 55),
        (200, 90, 30),
    ],
}
# light roofs (aluminium hoppers, white reefers, faded grey box cars): next to a black shadow they are what real
# 0.25-0.5 m orthophotos of yards show most
LIGHT_ROOFS = [(190, 190, 188), (205, 200, 190), (175, 172, 165), (215, 215, 212), (185, 178, 160), (160, 165, 168)]
CONTAINER_COLOURS = [
    (175, 50, 40),
    (200, 80, 40),
    (40, 70, 130),
    (60, 110, 160),
    (220, 220, 215),
    (150, 150, 150),
    (45, 110, 75),
    (110, 70, 45),
    (200, 170, 50),
    (40, 130, 130),
    (90, 90, 95),
    (160, 40, 60),
    (230, 120, 40),
    (30, 30, 35),
]
GROUND_COLOURS = [
    (118, 112, 98),
    (95, 108, 70),
    (130, 122, 105),
    (85, 85, 82),
    (140, 135, 125),
    (105, 95, 75),
    (70, 85, 55),
    (150, 145, 135),
    (60, 62, 64),
]
BALLAST_COLOURS = [(120, 112, 104), (100, 92, 85), (135, 128, 120), (90, 80, 72), (145, 140, 130)]
LIGHT_BALLAST_COLOURS = [(168, 166, 160), (182, 180, 174), (155, 154, 150), (192, 190, 184), (175, 170, 160)]
ROOF_COLOURS = [
    (150, 150, 150),
    (110, 110, 115),
    (180, 175, 170),
    (90, 80, 75),
    (130, 70, 60),
    (200, 200, 200),
    (70, 90, 110),
    (60, 60, 60),
]


def _swept(footprint: np.ndarray, offset: np.ndarray) -> np.ndarray:
    """The convex outline a footprint sweeps when moved by ``offset`` (pixels): a prism's shadow on a plane."""
    footprint = np.asarray(footprint, np.float64)
    return cv2.convexHull(np.vstack([footprint, footprint + offset]).astype(np.float32)).reshape(-1, 2)


class _Canvas:
    """A supersampled float canvas that draws in output-pixel coordinates."""

    def __init__(self, size_px: int, supersample: int) -> None:
        self.ss = supersample
        self.size = size_px
        self.img = np.zeros((size_px * supersample, size_px * supersample, 3), np.float32)
        # height (m) of the surface seen at each canvas pixel (0: ground), and whether it already lies in a shadow
        self.height = np.zeros(self.img.shape[:2], np.float32)
        self.shaded = np.zeros(self.img.shape[:2], bool)

    def _window(self, pts: np.ndarray) -> tuple[int, int, int, int] | None:
        """The canvas window (x0, y0, x1, y1) around a polygon in output pixel coords (None: off the canvas)."""
        p = np.round(np.asarray(pts, np.float64) * self.ss * 16).astype(np.int32).reshape(-1, 2)
        x0, y0 = np.clip(p.min(0) // 16 - 2, 0, None)
        x1, y1 = np.clip(p.max(0) // 16 + 3, None, self.img.shape[1])
        if x1 <= x0 or y1 <= y0:
            return None
        return int(x0), int(y0), int(x1), int(y1)

    def coverage(self, pts: np.ndarray, x0: int, y0: int, x1: int, y1: int, aa: bool = True) -> np.ndarray:
        """Coverage (0..1) of a polygon (output pixel coords) over the canvas window [y0:y1, x0:x1]."""
        p = np.round(np.asarray(pts, np.float64) * self.ss * 16).astype(np.int32).reshape(-1, 1, 2)
        p[:, 0, 0] -= x0 * 16
        p[:, 0, 1] -= y0 * 16
        mask = np.zeros((y1 - y0, x1 - x0), np.float32)
        cv2.fillPoly(mask, [p], 1.0, lineType=cv2.LINE_AA if aa else cv2.LINE_8, shift=4)
        return mask

    def shade(self, mask: np.ndarray, factor: float, x0: int, y0: int, x1: int, y1: int) -> None:
        """Darken the window by ``factor`` where ``mask`` covers it and nothing has shaded it yet (one shadow)."""
        shaded = self.shaded[y0:y1, x0:x1]
        mask = mask * ~shaded
        self.img[y0:y1, x0:x1] *= (1 - mask * (1 - factor))[..., None]
        shaded |= mask > 0.5

    def cast_shadow(self, footprint: np.ndarray, offset_per_m: np.ndarray, height_m: float, factor: float) -> None:
        """Cast the shadow of a prism (footprint, height) onto what is drawn so far: onto the ground its full length,
        onto a lower roof of height z only as far as the sun's rays reach at z (``height_m - z``), never onto a roof
        as high or higher; a pixel already in a shadow is not darkened again."""
        full = _swept(footprint, offset_per_m * height_m)
        win = self._window(full)
        if win is None:
            return
        x0, y0, x1, y1 = win
        z = self.height[y0:y1, x0:x1]
        mask = self.coverage(full, x0, y0, x1, y1) * (z <= 0)
        for level in np.unique(z[(z > 0) & (z < height_m)]):
            reach = _swept(footprint, offset_per_m * (height_m - level))
            mask = np.maximum(mask, self.coverage(reach, x0, y0, x1, y1) * (z == level))
        self.shade(mask, factor, x0, y0, x1, y1)

    def raise_roof(self, roof: np.ndarray, height_m: float) -> tuple[np.ndarray, int, int, int, int] | None:
        """Record a roof just drawn at ``height_m`` (it is lit until a taller caster shades it); returns its coverage
        and window, or None when off the canvas."""
        win = self._window(roof)
        if win is None:
            return None
        x0, y0, x1, y1 = win
        inside = self.coverage(roof, x0, y0, x1, y1, aa=False) > 0
        self.height[y0:y1, x0:x1][inside] = height_m
        self.shaded[y0:y1, x0:x1][inside] = False
        return self.coverage(roof, x0, y0, x1, y1), x0, y0, x1, y1

    def poly(self, pts: np.ndarray, colour: Colour, alpha: float = 1.0) -> None:
        """Fill a polygon (output pixel coords) with a colour, optionally blended."""
        p = np.round(np.asarray(pts, np.float64) * self.ss * 16).astype(np.int32).reshape(-1, 1, 2)
        col = tuple(float(c) for c in colour)
        if alpha >= 1.0:
            cv2.fillPoly(self.img, [p], col, lineType=cv2.LINE_AA, shift=4)
        else:
            win = self._window(pts)
            if win is None:
                return
            x0, y0, x1, y1 = win
            sub = self.img[y0:y1, x0:x1]
            m = (self.coverage(pts, x0, y0, x1, y1) * alpha)[..., None]
            sub[:] = sub * (1 - m) + np.asarray(col, np.float32) * m

    def darken(self, pts: np.ndarray, factor: float) -> None:
        """Multiply the colours inside a polygon by ``factor`` (a shadow)."""
        win = self._window(pts)
        if win is None:
            return
        x0, y0, x1, y1 = win
        self.img[y0:y1, x0:x1] *= (1 - self.coverage(pts, x0, y0, x1, y1) * (1 - factor))[..., None]

    def line(self, a: np.ndarray, b: np.ndarray, width_px: float, colour: Colour, alpha: float = 1.0) -> None:
        """A straight band from a to b of the given width (output pixels)."""
        a, b = np.asarray(a, float), np.asarray(b, float)
        ok, pa, pb = cv2.clipLine(
            (-8, -8, self.size + 16, self.size + 16),
            (int(round(a[0])), int(round(a[1]))),
            (int(round(b[0])), int(round(b[1]))),
        )
        if not ok:
            return
        d = b - a
        n = np.hypot(*d)
        if n < 1e-6:
            return
        perp = np.array([-d[1], d[0]]) / n * width_px / 2
        self.poly(np.array([a + perp, b + perp, b - perp, a - perp]), colour, alpha)

    def result(self) -> np.ndarray:
        """Downsample to output size (area averaging = anti-aliasing)."""
        return cv2.resize(self.img, (self.size, self.size), interpolation=cv2.INTER_AREA)


def _rect(cx: float, cy: float, length: float, width: float, angle: float) -> Corners:
    """Corners of a rectangle centred at (cx, cy), long side along ``angle`` (radians)."""
    u = np.array([math.cos(angle), math.sin(angle)])
    v = np.array([-u[1], u[0]])
    c = np.array([cx, cy])
    hl, hw = length / 2, width / 2
    return np.array([c + u * hl + v * hw, c - u * hl + v * hw, c - u * hl - v * hw, c + u * hl - v * hw])


def _chance(rng: np.random.Generator, probability: float) -> bool:
    """True with the given probability; draws nothing when it is 0, so a knob added off leaves every chip as it was
    (the held-out seeds included)."""
    return probability > 0 and rng.random() < probability


def _jitter(rng: np.random.Generator, colour: Colour, amount: float = 18) -> np.ndarray:
    return np.clip(np.asarray(colour, np.float32) + rng.normal(0, amount, 3), 0, 255)


def _smooth_noise(rng: np.random.Generator, size: int, scale: int, channels: int = 1) -> np.ndarray:
    """Low-frequency noise in [-1, 1] roughly, made by upsampling a small random grid."""
    small = rng.normal(0, 1, (max(2, size // scale), max(2, size // scale), channels)).astype(np.float32)
    big = cv2.resize(small, (size, size), interpolation=cv2.INTER_CUBIC)
    return big.reshape(size, size, channels)


def _draw_gsd(cfg: SynthConfig, rng: np.random.Generator) -> float:
    """A chip's ground sample distance: the first draws of its generator."""
    focus = rng.random() < cfg.gsd_focus_probability
    return float(rng.uniform(*(cfg.gsd_focus if focus else cfg.gsd_range)))


class _Scene:
    """State for drawing one chip."""

    def __init__(self, cfg: SynthConfig, rng: np.random.Generator) -> None:
        self.cfg = cfg
        self.rng = rng
        self.gsd = _draw_gsd(cfg, rng)
        self.px = 1.0 / self.gsd  # pixels per metre
        self.canvas = _Canvas(cfg.size_px, cfg.supersample)
        az = rng.uniform(0, 2 * math.pi)
        elev = math.radians(rng.uniform(*cfg.sun_elevation_deg))
        # shadow falls away from the sun: offset per metre of height, in pixels
        self.shadow_dir = -np.array([math.cos(az), math.sin(az)])
        self.shadow_per_m = self.px / math.tan(elev)
        self.shadow_strength = rng.uniform(*cfg.shadow_factor)
        lean_az = rng.uniform(0, 2 * math.pi)
        self.lean_per_m = math.tan(math.radians(rng.uniform(*cfg.off_nadir_deg))) * self.px
        self.lean_dir = np.array([math.cos(lean_az), math.sin(lean_az)])
        self.objects: list[SynthObject] = []
        self.occupied: list[Corners] = []  # footprints of solid objects, to keep distractors off them
        self.deferred: list = []  # object drawing that must wait until every ground surface is down
        # every shadow cast so far: (footprint, height m, footprint min, footprint max)
        self.casters: list[tuple[np.ndarray, float, np.ndarray, np.ndarray]] = []
        self.ballast: list[Corners] = []  # outline of every track's ballast bed (hard negatives keep off the rails)

    # -- helpers ---------------------------------------------------------------------------------------------
    def shadow(self, corners: Corners, height_m: float) -> None:
        """Cast the shadow of an object of this footprint and height (before its roof is drawn)."""
        off = self.shadow_dir * self.shadow_per_m
        self.canvas.cast_shadow(corners, off, height_m, self.shadow_strength)
        footprint = np.asarray(corners, np.float64).copy()
        self.casters.append((footprint, float(height_m), footprint.min(0), footprint.max(0)))

    def roof(self, corners: Corners, height_m: float) -> None:
        """Record the roof of an object just drawn, and shade it where an earlier, taller object's shadow reaches
        down to it: the part of that object's shadow at this height (a lower neighbour's shadow never darkens it)."""
        covered = self.canvas.raise_roof(corners, height_m)
        if covered is None:
            return
        cover, x0, y0, x1, y1 = covered
        if not self.casters:
            return
        off = self.shadow_dir * self.shadow_per_m
        lo, hi = np.asarray(corners).min(0), np.asarray(corners).max(0)
        heights = np.array([c[1] for c in self.casters])
        f_lo = np.array([c[2] for c in self.casters])
        f_hi = np.array([c[3] for c in self.casters])
        shift = off[None, :] * np.clip(heights - height_m, 0, None)[:, None]
        near = (
            (heights > height_m)
            & (np.maximum(f_hi, f_hi + shift) >= lo).all(1)
            & (np.minimum(f_lo, f_lo + shift) <= hi).all(1)
        )
        for k in np.flatnonzero(near):
            footprint, h, _, _ = self.casters[k]
            reach = _swept(footprint, off * (h - height_m))
            self.canvas.shade(cover * self.canvas.coverage(reach, x0, y0, x1, y1), self.shadow_strength, x0, y0, x1, y1)

    def ground_colour_at(self, centre: np.ndarray, radius_px: float = 2.0) -> np.ndarray:
        """Mean colour of what is drawn so far in a square window around a point (output pixel coords)."""
        ss, img = self.canvas.ss, self.canvas.img
        x, y = (np.clip(np.asarray(centre, float), 0, self.canvas.size - 1) * ss).astype(int)
        r = max(1, int(radius_px * ss))
        return img[max(0, y - r) : y + r + 1, max(0, x - r) : x + r + 1].reshape(-1, 3).mean(0)

    def label(self, class_id: int, corners: Corners) -> None:
        self.objects.append(SynthObject(class_id, corners.copy()))

    def overlaps(self, corners: Corners, margin_px: float = 2.0) -> bool:
        """Whether a footprint would overlap a solid object already drawn."""
        if not self.occupied:
            return False
        c = corners.mean(0)
        r = np.linalg.norm(corners - c, axis=1).max() + margin_px
        self._occ_cache()
        centres = np.array(self._occ_centres)
        radii = self._occ_radii
        near = np.nonzero(np.linalg.norm(centres - c, axis=1) < r + radii)[0]
        poly_a = corners.astype(np.float32)
        for i in near:
            inter, _ = cv2.intersectConvexConvex(poly_a, self.occupied[i].astype(np.float32))
            if inter > 0.5:
                return True
        return False

    def _occ_cache(self) -> list[Corners]:
        n = len(self.occupied)
        if getattr(self, "_occ_n", 0) != n:
            self._occ_centres = [o.mean(0) for o in self.occupied]
            self._occ_radii = np.array([np.linalg.norm(o - o.mean(0), axis=1).max() for o in self.occupied])
            self._occ_n = n
        return self.occupied

    # -- ground ----------------------------------------------------------------------------------------------
    def ground(self) -> None:
        s = self.cfg.size_px * self.cfg.supersample
        base = _jitter(self.rng, GROUND_COLOURS[self.rng.integers(len(GROUND_COLOURS))], 12)
        tex = _smooth_noise(self.rng, s, 64, 1) * self.rng.uniform(6, 18) + _smooth_noise(
            self.rng, s, 8, 1
        ) * self.rng.uniform(2, 8)
        tint = _smooth_noise(self.rng, s, 128, 3) * self.rng.uniform(2, 10)
        self.canvas.img[:] = base + tex + tint
        if self.rng.random() < self.cfg.noise_ground_probability:
            block = int(self.rng.integers(1, 4)) * self.cfg.supersample
            small = self.rng.uniform(0, 255, (s // block + 1, s // block + 1, 3)).astype(np.float32)
            speckle = np.kron(small, np.ones((block, block, 1), np.float32))[:s, :s]
            mix = self.rng.uniform(0.3, 1.0)
            self.canvas.img[:] = self.canvas.img * (1 - mix) + speckle * mix
        # patches of a second ground type (grass, dirt, asphalt)
        for _ in range(self.rng.integers(0, 5)):
            other = _jitter(self.rng, GROUND_COLOURS[self.rng.integers(len(GROUND_COLOURS))], 10)
            c = self.rng.uniform(0, self.cfg.size_px, 2)
            pts = c + self.rng.normal(0, self.rng.uniform(30, 160), (6, 2))
            hull = cv2.convexHull(pts.astype(np.float32)).reshape(-1, 2)
            self.canvas.poly(hull, other, alpha=self.rng.uniform(0.4, 0.9))

    # -- rail --------------------------------------------------------------------------------------------------
    def track(self, a: np.ndarray, b: np.ndarray, ballast: np.ndarray) -> None:
        cfg = self.cfg
        bw = self.rng.uniform(*cfg.ballast_width_m) * self.px
        self.canvas.line(a, b, bw, ballast)
        mid, seg = (a + b) / 2, b - a
        self.ballast.append(_rect(mid[0], mid[1], float(np.linalg.norm(seg)), bw, math.atan2(seg[1], seg[0])))
        d = (b - a) / max(np.linalg.norm(b - a), 1e-6)
        perp = np.array([-d[1], d[0]])
        g = cfg.track_gauge_m * self.px / 2
        rail_w = max(0.25, 0.12 * self.px)
        # sleepers: a darker band on the ballast (blended colour computed directly: ballast is known)
        tie = np.clip(ballast * (1 - self.rng.uniform(0.1, 0.3)), 0, 255)
        self.canvas.line(a, b, 2.4 * self.px, tie)
        rail = np.clip(tie * 0.2 + ballast * self.rng.uniform(0.45, 1.35) * 0.8, 0, 255)
        for sgn in (-1, 1):
            self.canvas.line(a + perp * g * sgn, b + perp * g * sgn, rail_w, rail)

    def wagon(self, centre: np.ndarray, length_m: float, angle: float, kind: str) -> None:
        cfg, rng, px = self.cfg, self.rng, self.px
        width_m = rng.uniform(*cfg.wagon_width_m)
        L, W = length_m * px, width_m * px
        body = _rect(centre[0], centre[1], L, W, angle)
        if self.overlaps(body, 0.0):
            return
        u = np.array([math.cos(angle), math.sin(angle)])
        v = np.array([-u[1], u[0]])
        ground_here = None
        if kind != "locomotive" and _chance(rng, cfg.ground_roof_probability):
            # the ground one wagon width beside it on the sunny side (at the centre lie its own sleepers)
            sunny = -v if np.dot(v, self.shadow_dir) > 0 else v
            ground_here = self.ground_colour_at(centre + sunny * W, radius_px=W / 2)
            kind = "box" if kind in ("gondola", "tank", "flat", "flat_containers") else kind  # a plain roof
        height = {
            "box": 4.2,
            "tank": 4.0,
            "hopper": 3.8,
            "gondola": 2.8,
            "flat": 1.3,
            "flat_containers": 3.9,
            "locomotive": 4.3,
        }[kind] * rng.uniform(0.9, 1.1)
        self.shadow(body, height)
        palette = WAGON_COLOURS["flat" if kind == "flat_containers" else kind]
        col = _jitter(rng, palette[rng.integers(len(palette))], 14)
        if kind != "locomotive" and rng.random() < cfg.light_roof_probability:
            col = _jitter(rng, LIGHT_ROOFS[rng.integers(len(LIGHT_ROOFS))], 10)
        if ground_here is not None:
            col = np.clip(ground_here * rng.uniform(*cfg.ground_roof_ratio) + rng.normal(0, 5, 3), 0, 255)
        lean = self.lean_dir * self.lean_per_m * height
        if np.linalg.norm(lean) > 0.3:  # off-nadir: the side face shows, the roof (the label) is displaced
            side = cv2.convexHull(np.vstack([body, body + lean]).astype(np.float32)).reshape(-1, 2)
            self.canvas.poly(side, np.clip(col * rng.uniform(0.45, 0.75), 0, 255))
            centre = centre + lean
            body = body + lean
        if kind == "tank":
            # cylinder: bands across the width from dark edge to bright crest
            self.canvas.poly(_rect(centre[0], centre[1], L * 0.97, W * 0.92, angle), col * 0.7)
            light = rng.uniform(1.1, 1.45)
            for f in np.linspace(-0.35, 0.35, 5):
                shade = col * (light - abs(f) * 1.4)
                c = centre + v * f * W
                self.canvas.poly(_rect(c[0], c[1], L * 0.95, W * 0.2, angle), np.clip(shade, 0, 255))
            if rng.random() < 0.7:  # dome / walkway
                self.canvas.poly(_rect(centre[0], centre[1], W * 0.5, W * 0.4, angle), np.clip(col * 0.6, 0, 255))
        elif kind == "gondola":
            self.canvas.poly(body, col)
            loads: list[Colour] = [(25, 25, 28), (90, 70, 55), (120, 110, 95), (60, 55, 50), col * 0.5]
            load = loads[rng.integers(5)]
            self.canvas.poly(_rect(centre[0], centre[1], L - 0.8 * px, W - 0.6 * px, angle), _jitter(rng, load, 8))
        elif kind == "hopper":
            self.canvas.poly(body, col)
            n = int(rng.integers(2, 5))
            for k in range(1, n):
                c = centre + u * (k / n - 0.5) * L
                self.canvas.line(c - v * W / 2, c + v * W / 2, max(0.6, 0.3 * px), col * 0.65)
            for sgn in (-1, 1):
                c = centre + v * sgn * W * 0.42
                self.canvas.poly(_rect(c[0], c[1], L * 0.98, W * 0.12, angle), col * 1.15)
        elif kind in ("flat", "flat_containers"):
            self.canvas.poly(body, col)
            if kind == "flat_containers":
                n = 2 if length_m > 15 and rng.random() < 0.6 else 1
                clen = cfg.container_lengths_m[0] if n == 2 else cfg.container_lengths_m[rng.integers(2)]
                clen = min(clen, length_m / n - 0.3)
                for k in range(n):
                    c = centre + u * ((k + 0.5) / n - 0.5) * L
                    self.container(c, clen, angle, shadow=False)
        elif kind == "locomotive":
            self.canvas.poly(body, col)
            roof = _jitter(rng, (120, 120, 120), 20)
            for f in (-0.3, 0.0, 0.28):
                c = centre + u * f * L
                self.canvas.poly(_rect(c[0], c[1], L * rng.uniform(0.12, 0.22), W * 0.55, angle), roof)
            c = centre + u * 0.46 * L
            self.canvas.poly(_rect(c[0], c[1], L * 0.06, W * 0.9, angle), np.clip(col * 0.5, 0, 255))
        else:  # box
            self.canvas.poly(body, col)
            self.canvas.poly(_rect(centre[0], centre[1], L * 0.96, W * 0.18, angle), np.clip(col * 1.12, 0, 255))
            if rng.random() < 0.5:
                n = int(rng.integers(4, 12))
                for k in range(1, n):
                    c = centre + u * (k / n - 0.5) * L
                    self.canvas.line(c - v * W / 2, c + v * W / 2, max(0.3, 0.08 * px), col * 0.8, alpha=0.6)
        self.roof(body, height)
        self.label(RAILCAR, body)
        self.occupied.append(body)

    def train_row(self, a: np.ndarray, b: np.ndarray) -> None:
        """Coupled wagons along the track from a to b, occupying a random part of it."""
        cfg, rng = self.cfg, self.rng
        d = b - a
        total = np.linalg.norm(d)
        if total < 5:
            return
        u = d / total
        angle = math.atan2(u[1], u[0])
        occ = rng.uniform(*cfg.track_occupancy)
        run = total * occ
        start = rng.uniform(-0.2 * total, total - run * 0.8)
        pos = start
        with_loco = rng.random() < 0.35
        uniform_kind = rng.random() < 0.55
        kinds = list(cfg.kind_weights)
        p = np.array([cfg.kind_weights[k] for k in kinds])
        p = p / p.sum()
        row_kind = kinds[rng.choice(len(kinds), p=p)]
        if row_kind == "locomotive":
            row_kind = "box"
        row_len = rng.uniform(*cfg.wagon_length_m)
        first = True
        while pos < start + run:
            if first and with_loco:
                kind, length = "locomotive", rng.uniform(*cfg.loco_length_m)
            else:
                kind = row_kind if uniform_kind else kinds[rng.choice(len(kinds), p=p)]
                if kind == "locomotive" and rng.random() < 0.7:
                    kind = "box"
                length = (
                    float(np.clip(row_len * rng.uniform(0.98, 1.02), *cfg.wagon_length_m))
                    if uniform_kind
                    else rng.uniform(*cfg.wagon_length_m)
                )
                if kind == "locomotive":
                    length = rng.uniform(*cfg.loco_length_m)
            first = False
            L = length * self.px
            c = a + u * (pos + L / 2)
            self.wagon(c, length, angle, kind)
            pos += L + rng.uniform(*cfg.coupling_gap_m) * self.px

    def rail_bundle(
        self, centre: np.ndarray, angle: float, n_tracks: int, extent: float, occupied_share: float
    ) -> None:
        rng, cfg = self.rng, self.cfg
        spacing = rng.uniform(*cfg.track_spacing_m) * self.px
        u = np.array([math.cos(angle), math.sin(angle)])
        v = np.array([-u[1], u[0]])
        palette = LIGHT_BALLAST_COLOURS if _chance(rng, cfg.light_ballast_probability) else BALLAST_COLOURS
        ballast = _jitter(rng, palette[rng.integers(len(palette))], 10)
        tracks = []
        for k in range(n_tracks):
            off = (k - (n_tracks - 1) / 2) * spacing * rng.uniform(0.95, 1.05)
            if rng.random() < 0.1:
                off += spacing * rng.uniform(0.5, 1.5)  # a wider gap (platform, road)
            a = centre + v * off - u * extent
            b = centre + v * off + u * extent
            tracks.append((a, b))
            self.track(a, b, ballast)
        if rng.random() < cfg.branch_probability:
            for _ in range(rng.integers(1, 4)):  # diagonal switch tracks
                t = tracks[rng.integers(len(tracks))]
                da = rng.uniform(0.08, 0.25) * rng.choice([-1, 1])
                ua = np.array([math.cos(angle + da), math.sin(angle + da)])
                s = t[0] + u * rng.uniform(0.2, 1.5) * extent
                self.track(s, s + ua * extent * rng.uniform(0.5, 1.2), ballast)
        if rng.random() < cfg.platform_probability:  # a passenger/loading platform along one edge
            edge = (n_tracks / 2 + 0.5) * spacing * rng.choice([-1, 1])
            w = rng.uniform(5, 10) * self.px
            off = v * (edge + np.sign(edge) * w / 2)
            a, b = centre + off - u * extent, centre + off + u * extent
            dn = self.shadow_dir * self.shadow_per_m * 1.0
            self.canvas.line(a + dn, b + dn, w, np.clip(ballast * 0.4, 0, 255))
            self.canvas.line(a, b, w, _jitter(rng, (165, 162, 158), 15))
        self.deferred.append(lambda: self.masts(tracks, angle, spacing))
        for a, b in tracks:
            if rng.random() < occupied_share:
                self.deferred.append(lambda a=a, b=b: self.train_row(a, b))

    def masts(self, tracks: list[tuple[np.ndarray, np.ndarray]], angle: float, spacing: float) -> None:
        """Catenary masts and cross-spans: thin bright lines with long thin shadows."""
        if self.rng.random() > 0.45 or len(tracks) < 2:
            return
        u = np.array([math.cos(angle), math.sin(angle)])
        v = np.array([-u[1], u[0]])
        a0, b0 = tracks[0]
        a1, _ = tracks[-1]
        width = np.dot(a1 - a0, v)
        step = self.rng.uniform(40, 70) * self.px
        n = int(np.linalg.norm(b0 - a0) / step) + 1
        col = _jitter(self.rng, (150, 150, 150), 20)
        for k in range(n):
            p0 = a0 + u * k * step - v * spacing * 0.5
            p1 = p0 + v * (width + spacing)
            off = self.shadow_dir * self.shadow_per_m * 9
            d = (p1 - p0) / max(np.linalg.norm(p1 - p0), 1e-6)
            side = np.array([-d[1], d[0]]) * max(0.2, 0.15 * self.px)  # half the mast's width, across it
            self.canvas.darken(np.array([p0 + off + side, p1 + off + side, p1 + off - side, p0 + off - side]), 0.75)
            self.canvas.line(p0, p1, max(0.3, 0.2 * self.px), col)

    # -- containers ----------------------------------------------------------------------------------------------
    def container(
        self,
        centre: np.ndarray,
        length_m: float,
        angle: float,
        shadow: bool = True,
        colour: np.ndarray | None = None,
        height_m: float = 2.6,
    ) -> Corners:
        rng, px = self.rng, self.px
        body = _rect(centre[0], centre[1], length_m * px, self.cfg.container_width_m * px, angle)
        if shadow:
            self.shadow(body, height_m)
        col = (
            colour if colour is not None else _jitter(rng, CONTAINER_COLOURS[rng.integers(len(CONTAINER_COLOURS))], 14)
        )
        self.canvas.poly(body, col)
        if rng.random() < 0.6:  # roof corrugation / end frames
            u = np.array([math.cos(angle), math.sin(angle)])
            v = np.array([-u[1], u[0]])
            for sgn in (-1, 1):
                e = centre + u * sgn * (length_m * px / 2 - 0.15 * px)
                self.canvas.line(e - v * 1.2 * px, e + v * 1.2 * px, max(0.3, 0.2 * px), col * 0.7, alpha=0.7)
        if shadow:  # (on a wagon, the wagon records the roof)
            self.roof(body, height_m)
        self.label(CONTAINER, body)
        return body

    def container_lot(self, centre: np.ndarray, angle: float) -> None:
        rng, cfg, px = self.rng, self.cfg, self.px
        u = np.array([math.cos(angle), math.sin(angle)])
        v = np.array([-u[1], u[0]])
        rows = int(rng.integers(*cfg.lot_rows, endpoint=True))
        cols = int(rng.integers(*cfg.lot_columns, endpoint=True))
        length = cfg.container_lengths_m[int(rng.random() < 0.55)]
        gap = rng.uniform(*cfg.container_gap_m)
        block_gap = rng.uniform(*cfg.lot_bay_gap_m)
        fill = rng.uniform(*cfg.lot_fill)
        pitch_w = (cfg.container_width_m + gap) * px
        pitch_l = (length + block_gap) * px
        # pavement under the lot
        pave = _jitter(rng, (115, 115, 112), 15)
        self.canvas.poly(
            _rect(centre[0], centre[1], cols * pitch_l + 6 * px, rows * pitch_w * 1.0 + 6 * px, angle),
            pave,
            alpha=rng.uniform(0.5, 1.0),
        )
        self.deferred.append(lambda: self._fill_lot(centre, u, v, rows, cols, length, pitch_l, pitch_w, fill, angle))

    def _fill_lot(
        self,
        centre: np.ndarray,
        u: np.ndarray,
        v: np.ndarray,
        rows: int,
        cols: int,
        length: float,
        pitch_l: float,
        pitch_w: float,
        fill: float,
        angle: float,
    ) -> None:
        rng, cfg, px = self.rng, self.cfg, self.px
        same_colour_runs = rng.random() < 0.35
        run_col = None
        for i in range(cols):
            for j in range(rows):
                if rng.random() > fill:
                    continue
                c = centre + u * (i - (cols - 1) / 2) * pitch_l + v * (j - (rows - 1) / 2) * pitch_w
                body = _rect(c[0], c[1], length * px, cfg.container_width_m * px, angle)
                if self.overlaps(body, 0.0):
                    continue
                if same_colour_runs:
                    if run_col is None or rng.random() < 0.3:
                        run_col = _jitter(rng, CONTAINER_COLOURS[rng.integers(len(CONTAINER_COLOURS))], 10)
                    col = run_col
                else:
                    col = None
                stack_h = 2.6 * rng.integers(1, 5)
                self.container(c, length, angle, colour=col, height_m=stack_h)
                self.occupied.append(body)

    # -- distractors -----------------------------------------------------------------------------------------------
    def road(self) -> None:
        rng, px = self.rng, self.px
        a = rng.uniform(-100, self.cfg.size_px + 100, 2)
        ang = rng.uniform(0, math.pi)
        d = np.array([math.cos(ang), math.sin(ang)]) * self.cfg.size_px * 2
        w = rng.uniform(6, 20) * px
        self.canvas.line(a - d, a + d, w, _jitter(rng, (75, 75, 78), 12))
        if rng.random() < 0.6:
            self.canvas.line(a - d, a + d, max(0.3, 0.15 * px), (200, 200, 190), alpha=0.6)

    def building(self, long_shed: bool = False) -> None:
        rng, px, size = self.rng, self.px, self.cfg.size_px
        c = rng.uniform(0, size, 2)
        if long_shed:  # long narrow buildings / platforms look like trains
            L, W = rng.uniform(60, 250) * px, rng.uniform(4, 14) * px
        else:
            L, W = rng.uniform(15, 120) * px, rng.uniform(10, 70) * px
        ang = rng.uniform(0, math.pi)
        body = _rect(c[0], c[1], L, W, ang)
        if self.overlaps(body):
            return
        height = rng.uniform(3, 20) if not long_shed else rng.uniform(0.5, 8)
        self.shadow(body, height)
        col = _jitter(rng, ROOF_COLOURS[rng.integers(len(ROOF_COLOURS))], 15)
        self.canvas.poly(body, col)
        if rng.random() < 0.5:
            self.canvas.poly(_rect(c[0], c[1], L, W * 0.05, ang), col * 0.8)
        self.roof(body, height)
        self.occupied.append(body)

    def vehicle(self, truck: bool) -> None:
        rng, px, size = self.rng, self.px, self.cfg.size_px
        c = rng.uniform(0, size, 2)
        ang = rng.uniform(0, 2 * math.pi)
        if truck:
            L, W = rng.uniform(8, 17), rng.uniform(2.3, 2.6)
        else:
            L, W = rng.uniform(3.8, 5.2), rng.uniform(1.7, 2.0)
        body = _rect(c[0], c[1], L * px, W * px, ang)
        if self.overlaps(body):
            return
        height = 3.5 if truck else 1.5
        self.shadow(body, height)
        col = _jitter(
            rng,
            [(200, 200, 200), (40, 40, 45), (150, 30, 30), (40, 60, 120), (170, 170, 170), (220, 220, 210)][
                rng.integers(6)
            ],
            15,
        )
        self.canvas.poly(body, col)
        if truck:
            u = np.array([math.cos(ang), math.sin(ang)])
            cab = c + u * (L * px / 2 - 1.2 * px)
            self.canvas.poly(_rect(cab[0], cab[1], 2.2 * px, W * px, ang), _jitter(rng, (180, 180, 180), 40))
        self.roof(body, height)
        self.occupied.append(body)

    def storage_tank(self) -> None:
        rng, px, size = self.rng, self.px, self.cfg.size_px
        c = rng.uniform(0, size, 2)
        r = rng.uniform(4, 25) * px
        square = _rect(c[0], c[1], 2 * r, 2 * r, 0)
        if self.overlaps(square):
            return
        h = rng.uniform(6, 18)
        circle = np.array([c + r * np.array([math.cos(t), math.sin(t)]) for t in np.linspace(0, 2 * math.pi, 40)])
        self.shadow(circle, h)
        col = _jitter(rng, (205, 205, 200), 20)
        self.canvas.poly(circle, col)
        self.canvas.poly(circle * 0.75 + c * 0.25, col * 0.93)
        self.roof(circle, h)
        self.occupied.append(square)

    # -- hard negatives (unlabelled railcar look-alikes) ---------------------------------------------------------------
    def _clear(self, corners: Corners) -> bool:
        """Whether an unlabelled look-alike may go here: over no solid object and off every track's ballast (a
        trailer on a track would teach the model that a wagon is not a railcar)."""
        if self.overlaps(corners, 1.0):
            return False
        poly = corners.astype(np.float32)
        return not any(cv2.intersectConvexConvex(poly, b.astype(np.float32))[0] > 0.5 for b in self.ballast)

    def _strip(
        self, c: np.ndarray, length_px: float, width_px: float, angle: float, colour: Colour, height_m: float
    ) -> bool:
        """One unlabelled box-shaped object (shadow, body, roof), if :meth:`_clear` allows it there."""
        body = _rect(c[0], c[1], length_px, width_px, angle)
        if not self._clear(body):
            return False
        self.shadow(body, height_m)
        self.canvas.poly(body, colour)
        self.roof(body, height_m)
        self.occupied.append(body)
        return True

    def trailer_row(self) -> None:
        """A lane of parked semi-trailers or container chassis: nose to tail (like coupled wagons) or side by side."""
        rng, px = self.rng, self.px
        n = int(rng.integers(3, 13))
        side_by_side = rng.random() < 0.4
        length, width = rng.uniform(12.0, 16.2), rng.uniform(2.45, 2.6)
        step = (width + rng.uniform(0.8, 2.5)) if side_by_side else (length + rng.uniform(1.0, 4.0))
        for _ in range(6):  # a lane (asphalt) clear of every solid object and track
            c0 = rng.uniform(0, self.cfg.size_px, 2)
            ang = rng.uniform(0, math.pi)
            lane = _rect(
                c0[0],
                c0[1],
                (length + 8) * px if side_by_side else (n * step + 8) * px,
                (n * step + 6) * px if side_by_side else (width + 6) * px,
                ang,
            )
            if self._clear(lane):
                break
        else:
            return
        u = np.array([math.cos(ang), math.sin(ang)])
        v = np.array([-u[1], u[0]])
        self.canvas.poly(lane, _jitter(rng, (80, 80, 82), 12), alpha=rng.uniform(0.4, 0.9))
        base = _jitter(
            rng,
            [(215, 215, 210), (175, 175, 175), (120, 120, 125), (60, 60, 62), (150, 40, 35), (40, 70, 130)][
                rng.integers(6)
            ],
            10,
        )
        for i in range(n):
            if rng.random() < 0.15:  # an empty bay
                continue
            c = c0 + (v if side_by_side else u) * (i - (n - 1) / 2) * step * px
            chassis = rng.random() < 0.35
            col = np.array((45, 45, 48), float) if chassis else (base if rng.random() < 0.6 else _jitter(rng, base, 40))
            if self._strip(c, length * px, width * px, ang, col, 1.4 if chassis else 4.0) and chassis:
                for k in (-0.35, 0.0, 0.35):  # cross members of an empty chassis: a ladder, not a roof
                    m = c + u * k * length * px
                    self.canvas.poly(_rect(m[0], m[1], 0.4 * px, width * px, ang), (90, 90, 92))
            if not chassis and rng.random() < 0.5:  # its tractor
                cab = c + u * (length / 2 + 3.3) * px * (1 if rng.random() < 0.5 else -1)
                self._strip(cab, 6.0 * px, 2.5 * px, ang, _jitter(rng, (170, 170, 175), 50), 3.6)

    def roof_strip_building(self) -> None:
        """A flat-roofed building with lines of skylights or rooftop units along its length."""
        rng, px = self.rng, self.px
        c = rng.uniform(0, self.cfg.size_px, 2)
        L, W = rng.uniform(50, 220), rng.uniform(20, 80)
        ang = rng.uniform(0, math.pi)
        height = rng.uniform(5, 15)
        if not self._strip(
            c, L * px, W * px, ang, _jitter(rng, ROOF_COLOURS[rng.integers(len(ROOF_COLOURS))], 15), height
        ):
            return
        u = np.array([math.cos(ang), math.sin(ang)])
        v = np.array([-u[1], u[0]])
        sl, sw, gap = rng.uniform(8, 20), rng.uniform(2.0, 3.5), rng.uniform(0.5, 3.0)
        n = int((L - 6) // (sl + gap))
        lines = int(rng.integers(1, max(2, min(5, int(W // 8)) + 1)))
        col = _jitter(rng, [(215, 220, 225), (60, 65, 75), (150, 150, 150)][rng.integers(3)], 12)
        for j in range(lines):
            off = (j - (lines - 1) / 2) * W / (lines + 0.5)
            for i in range(n):
                m = c + u * (i - (n - 1) / 2) * (sl + gap) * px + v * off * px
                self.canvas.poly(_rect(m[0], m[1], sl * px, sw * px, ang), col)

    def quay_ship(self) -> None:
        """Dark water along one side of the chip, a quay edge, and a moored ship with strips along its deck edge."""
        rng, px, size = self.rng, self.px, self.cfg.size_px
        ang = rng.choice([0.0, math.pi / 2]) + rng.uniform(-0.3, 0.3)
        u = np.array([math.cos(ang), math.sin(ang)])
        v = np.array([-u[1], u[0]])
        # the water lies beyond every labelled object and track (it may cover unlabelled distractors)
        centre = np.array([size / 2, size / 2])
        reach = max(
            [float(np.max((o.corners - centre) @ v)) for o in self.objects]
            + [float(np.max((b - centre) @ v)) for b in self.ballast],
            default=-size,
        )
        start = max(reach + 3 * px, rng.uniform(-0.05, 0.35) * size)
        if start > 0.5 * size - 30 * px:  # less than 30 m of water would show: no quay in this chip
            return
        edge = centre + v * start  # quay edge through this point
        far = edge + v * size
        water = np.array([edge - u * 2 * size, edge + u * 2 * size, far + u * 2 * size, far - u * 2 * size])
        self.canvas.poly(water, _jitter(rng, (22, 30, 38), 8))
        self.occupied.append(water.astype(np.float64))  # no trailer or building on the water
        self.canvas.line(edge - u * 2 * size, edge + u * 2 * size, 1.5 * px, (165, 165, 160))
        L, B = rng.uniform(120, 300), rng.uniform(22, 45)
        hc = edge + v * (B / 2 + rng.uniform(1, 4)) * px + u * rng.uniform(-0.3, 0.3) * size
        hull = _rect(hc[0], hc[1], L * px, B * px, ang)
        self.shadow(hull, 8.0)
        self.canvas.poly(
            hull, _jitter(rng, [(40, 60, 50), (120, 40, 35), (50, 55, 70), (150, 150, 150)][rng.integers(4)], 10)
        )
        stern = hc + u * L / 2 * px
        bow = np.array([stern + v * B / 2 * px, hc + u * (L / 2 + 0.8 * B) * px, stern - v * B / 2 * px])
        self.canvas.poly(bow, _jitter(rng, (60, 60, 60), 20))
        self.roof(hull, 8.0)
        self.occupied.append(hull)
        hatch_w, n = B * rng.uniform(0.55, 0.75), int(L // 22)
        for i in range(n):  # hatch covers: wide, light
            m = hc + u * (i - (n - 1) / 2) * 20 * px
            self.canvas.poly(
                _rect(m[0], m[1], rng.uniform(12, 17) * px, hatch_w * px, ang), _jitter(rng, (200, 200, 195), 15)
            )
        side = -1 if rng.random() < 0.5 else 1
        sl, gap = rng.uniform(10, 18), rng.uniform(0.6, 3.0)
        col = _jitter(rng, [(200, 60, 50), (210, 210, 205), (70, 70, 75)][rng.integers(3)], 12)
        for i in range(int(L * 0.85 // (sl + gap))):  # narrow strips along the deck edge: the look of coupled wagons
            m = hc + u * (i * (sl + gap) - L * 0.4) * px + v * side * (B / 2 - 2.0) * px
            self.canvas.poly(_rect(m[0], m[1], sl * px, rng.uniform(2.5, 3.3) * px, ang), col)

    def hard_negatives(self) -> None:
        """Every hard negative the config asks for (nothing and no random draw when its knobs are off)."""
        cfg, rng = self.cfg, self.rng
        if _chance(rng, cfg.ship_probability):
            self.quay_ship()
        if cfg.trailer_rows[1] > 0:
            for _ in range(rng.integers(*cfg.trailer_rows, endpoint=True)):
                self.trailer_row()
        if cfg.roof_strip_buildings[1] > 0:
            for _ in range(rng.integers(*cfg.roof_strip_buildings, endpoint=True)):
                self.roof_strip_building()

    # -- sensor ----------------------------------------------------------------------------------------------------
    def sensor(self, img: np.ndarray) -> np.ndarray:
        rng, cfg = self.rng, self.cfg
        size = img.shape[0]
        if rng.random() < cfg.cloud_shadow_probability:
            blob = _smooth_noise(rng, size, int(rng.integers(64, 256)), 1)[..., 0]
            mask = np.clip((blob - rng.uniform(0.0, 0.8)) * 2, 0, 1)[..., None]
            img = img * (1 - mask * rng.uniform(0.2, 0.5))
        # colour: per-channel gain, saturation, brightness, contrast
        gain = 1 + rng.uniform(-cfg.channel_gain, cfg.channel_gain, 3)
        img = img * gain
        grey = img.mean(2, keepdims=True)
        img = grey + (img - grey) * rng.uniform(*cfg.saturation)
        mean = img.mean()
        img = (img - mean) * rng.uniform(*cfg.contrast) + mean * rng.uniform(*cfg.brightness)
        haze = rng.uniform(*cfg.haze)
        if haze > 0:
            img = img * (1 - haze) + np.array([170, 175, 185], np.float32) * haze
        sigma = rng.uniform(*cfg.blur_sigma_px)
        if sigma > 0.15:
            img = cv2.GaussianBlur(img, (0, 0), sigma)
        if rng.random() < cfg.fringe_probability:  # pan-sharpening colour misregistration
            ch = rng.integers(3)
            dx, dy = rng.integers(-1, 2, 2)
            img[..., ch] = np.roll(img[..., ch], (int(dy), int(dx)), axis=(0, 1))
        sigma_noise = rng.uniform(*cfg.noise_sigma)
        if rng.random() < cfg.heavy_noise_probability:
            sigma_noise = rng.uniform(25, 70)
        img = img + rng.normal(0, sigma_noise, img.shape).astype(np.float32)
        if rng.random() < 0.2:  # 11-bit radiometry squeezed to 8 bits: coarse quantisation in the shadows
            q = rng.choice([2, 4, 8])
            img = np.round(img / q) * q
        out = np.clip(img, 0, 255).astype(np.uint8)
        quality = int(rng.integers(*cfg.jpeg_quality, endpoint=True))
        ok, buf = cv2.imencode(".jpg", out[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, quality])
        decoded = cv2.imdecode(buf, cv2.IMREAD_COLOR)
        assert decoded is not None  # a JPEG that OpenCV has just encoded
        return decoded[..., ::-1].copy()


def _visible_label(corners: Corners, size: int, min_fraction: float) -> Corners | None:
    """Clip an oriented box to the chip; return the min-area box of the visible part, or None if mostly hidden."""
    poly = corners.astype(np.float32)
    area = abs(cv2.contourArea(poly))
    if area <= 0:
        return None
    frame = np.array([[0, 0], [size, 0], [size, size], [0, size]], np.float32)
    inter, clipped = cv2.intersectConvexConvex(poly, frame)
    if inter <= 0 or clipped is None:
        return None
    if inter / area >= 0.999:
        return corners
    if inter / area < min_fraction:
        return None
    box = cv2.boxPoints(cv2.minAreaRect(clipped.reshape(-1, 2)))
    return np.clip(box.astype(np.float64), 0, size)


def generate_chip(seed: int, cfg: SynthConfig | None = None) -> SynthChip:
    """Render one chip. The same seed and config give the same chip."""
    cfg = cfg or SynthConfig()
    if cfg.resample_to_gsd_m:
        return _resampled_chip(seed, cfg, cfg.resample_to_gsd_m)
    rng = np.random.default_rng(seed)
    sc = _Scene(cfg, rng)
    size = cfg.size_px
    sc.ground()
    scene = rng.choice(4, p=np.array(cfg.scene_weights) / sum(cfg.scene_weights))
    main_angle = rng.uniform(0, math.pi)
    if _chance(rng, cfg.sun_across_track_probability):
        across = main_angle + math.pi / 2 + rng.uniform(-math.pi / 6, math.pi / 6) + math.pi * rng.integers(2)
        sc.shadow_dir = np.array([math.cos(across), math.sin(across)])
    for _ in range(rng.integers(*cfg.roads, endpoint=True)):
        sc.road()
    if scene in (0, 2):  # rail yard (and mixed)
        n_bundles = 1 if scene == 2 else rng.integers(1, 3)
        for b in range(n_bundles):
            centre = rng.uniform(0.2 * size, 0.8 * size, 2)
            ang = main_angle + (0 if b == 0 else rng.uniform(-0.4, 0.4))
            n = rng.integers(*cfg.tracks_per_bundle, endpoint=True)
            sc.rail_bundle(centre, ang, int(n), size * 0.9, rng.uniform(*cfg.bundle_occupancy))
    if scene in (1, 2):  # container lots
        for _ in range(rng.integers(1, 4)):
            sc.container_lot(rng.uniform(0.1 * size, 0.9 * size, 2), main_angle + rng.choice([0, math.pi / 2]))
        if scene == 1 and rng.random() < 0.5:
            sc.rail_bundle(
                rng.uniform(0.2 * size, 0.8 * size, 2), main_angle, int(rng.integers(1, 5)), size, rng.uniform(0.3, 1.0)
            )
    for draw in sc.deferred:
        draw()
    for _ in range(rng.integers(*cfg.buildings, endpoint=True)):
        sc.building(long_shed=rng.random() < 0.35)
    for _ in range(rng.integers(*cfg.storage_tanks, endpoint=True)):
        if rng.random() < 0.5:
            sc.storage_tank()
    for _ in range(rng.integers(*cfg.trucks, endpoint=True)):
        sc.vehicle(truck=True)
    for _ in range(rng.integers(*cfg.cars, endpoint=True)):
        sc.vehicle(truck=False)
    sc.hard_negatives()
    image = sc.sensor(sc.canvas.result())
    objects = []
    for o in sc.objects:
        vis = _visible_label(o.corners, size, cfg.min_visible_fraction)
        if vis is not None:
            objects.append(SynthObject(o.class_id, vis))
    return SynthChip(
        image=image,
        objects=objects,
        gsd_m=sc.gsd,
        seed=seed,
        track_angle_rad=float(main_angle),
        shadow_dir=(float(sc.shadow_dir[0]), float(sc.shadow_dir[1])),
    )


def _resampled_chip(seed: int, cfg: SynthConfig, target_gsd_m: float) -> SynthChip:
    """The chip of ``seed`` drawn at its own GSD, resampled to ``target_gsd_m`` as ``app.detection.detector``
    resamples."""
    native_gsd = _draw_gsd(cfg, np.random.default_rng(seed))  # the same draw the scene makes first
    own = replace(cfg, resample_to_gsd_m=None)
    if resample_scale(native_gsd, target_gsd_m) == 1.0:
        return generate_chip(seed, own)  # close enough: the service would not resample it either
    size = cfg.size_px
    render = max(32, round(size * target_gsd_m / native_gsd))
    chip = generate_chip(seed, replace(own, size_px=render))
    factor = size / render
    image = resample(chip.image, factor)
    objects = [SynthObject(o.class_id, np.clip(o.corners * factor, 0, size)) for o in chip.objects]
    return replace(chip, image=image, objects=objects, gsd_m=chip.gsd_m / factor)


def obb_label_lines(chip: SynthChip) -> list[str]:
    """Ultralytics OBB label lines for a chip."""
    size = chip.image.shape[0]
    lines = []
    for o in chip.objects:
        pts = np.clip(o.corners / size, 0, 1).reshape(-1)
        lines.append(f"{o.class_id} " + " ".join(f"{v:.6f}" for v in pts))
    return lines


def _write_one(args: tuple[int, Path, str, SynthConfig]) -> dict[str, object]:
    seed, root, split, cfg = args
    chip = generate_chip(seed, cfg)
    name = f"synth_{seed:07d}"
    cv2.imwrite(str(root / "images" / split / f"{name}.jpg"), chip.image[..., ::-1], [cv2.IMWRITE_JPEG_QUALITY, 95])
    (root / "labels" / split / f"{name}.txt").write_text("\n".join(obb_label_lines(chip)) + "\n")
    return {"name": name, "seed": seed, "gsd_m": chip.gsd_m, **chip.counts()}


def write_dataset(
    root: Path, n_train: int, n_val: int, seed: int = 0, workers: int = 2, cfg: SynthConfig | None = None
) -> Path:
    """Write a YOLO-OBB dataset (images, labels, data.yaml, manifest.json) under ``root``; return data.yaml."""
    cfg = cfg or SynthConfig()
    root = Path(root)
    jobs: list[tuple[int, Path, str, SynthConfig]] = []
    # train and val seeds never overlap: val seeds start far above any train seed
    for split, n, base in (("train", n_train, seed), ("val", n_val, seed + 5_000_000)):
        (root / "images" / split).mkdir(parents=True, exist_ok=True)
        (root / "labels" / split).mkdir(parents=True, exist_ok=True)
        jobs += [(base + i, root, split, cfg) for i in range(n)]
    if workers > 1:
        with ProcessPoolExecutor(workers) as pool:
            manifest = list(pool.map(_write_one, jobs, chunksize=8))
    else:
        manifest = [_write_one(j) for j in jobs]
    (root / "manifest.json").write_text(json.dumps({"config": asdict(cfg), "chips": manifest}, indent=1))
    data_yaml = root / "data.yaml"
    data_yaml.write_text(
        f"path: {root.resolve()}\ntrain: images/train\nval: images/val\nnames:\n  0: railcar\n  1: container\n"
    )
    return data_yaml


#: The generator settings the CLI's ``--config`` names.
CONFIGS: dict[str, SynthConfig] = {
    "default": SynthConfig(),
    "stage4": STAGE4_CONFIG,
    "stage6": STAGE6_CONFIG,
    "yard": YARD_CONFIG,
    "yard_shadow": YARD_SHADOW_CONFIG,
    "yard_across": YARD_ACROSS_CONFIG,
    "yard_ortho": YARD_ORTHO_CONFIG,
    "yard_measured": YARD_MEASURED_CONFIG,
    "yard_camo": YARD_CAMO_CONFIG,
    "intermodal": INTERMODAL_CONFIG,
    "hard_negatives": HARD_NEGATIVES_CONFIG,
}


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m training.synth OUT --train N --val N --seed S --workers W``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("out", type=Path)
    ap.add_argument("--train", type=int, default=2000)
    ap.add_argument("--val", type=int, default=200)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--size", type=int, default=640)
    ap.add_argument(
        "--resample-to-gsd",
        type=float,
        default=None,
        metavar="M",
        help="draw each chip at its own GSD and resample it to M m/px as the service does (e.g. 0.4)",
    )
    ap.add_argument(
        "--config",
        choices=tuple(CONFIGS),
        default="default",
        help="generator settings: the defaults (versions 2-3 data), or the fourth, sixth, ninth "
        "(yard), tenth (yard_shadow), twelfth (yard_across), fourteenth (yard_ortho), sixteenth "
        "(yard_measured) or seventeenth (yard_camo, intermodal) stage's variant",
    )
    a = ap.parse_args(argv)
    base = CONFIGS[a.config]
    cfg = replace(base, size_px=a.size)
    if a.resample_to_gsd is not None:
        if not 0.05 <= a.resample_to_gsd <= 5.0:
            ap.error("--resample-to-gsd must lie in 0.05-5 m/px")
        cfg = replace(cfg, resample_to_gsd_m=a.resample_to_gsd)
    print(write_dataset(a.out, a.train, a.val, a.seed, a.workers, cfg))


if __name__ == "__main__":
    main()
