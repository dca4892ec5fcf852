"""Tests of training.synth: determinism, true-to-scale objects and valid Ultralytics OBB labels."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from training.synth import CONTAINER, RAILCAR, SynthConfig, generate_chip, obb_label_lines, write_dataset


def _sides(corners: np.ndarray) -> tuple[float, float]:
    d = np.linalg.norm(np.roll(corners, -1, axis=0) - corners, axis=1)
    return float(max(d[0], d[1])), float(min(d[0], d[1]))


def test_same_seed_same_chip_other_seed_other_chip() -> None:
    a, b, c = generate_chip(7), generate_chip(7), generate_chip(8)
    assert np.array_equal(a.image, b.image)
    assert [o.corners.tolist() for o in a.objects] == [o.corners.tolist() for o in b.objects]
    assert not np.array_equal(a.image, c.image)


def test_objects_are_true_to_scale() -> None:
    cfg = SynthConfig()
    seen = {RAILCAR: 0, CONTAINER: 0}
    for seed in range(12):
        chip = generate_chip(seed, cfg)
        assert cfg.gsd_range[0] <= chip.gsd_m <= cfg.gsd_range[1]
        for o in chip.objects:
            length_m, width_m = (s * chip.gsd_m for s in _sides(o.corners))
            whole = (o.corners.min() > 0.5) and (o.corners.max() < cfg.size_px - 0.5)
            if not whole:
                continue  # clipped at the chip edge
            seen[o.class_id] += 1
            if o.class_id == RAILCAR:
                assert 13.9 <= length_m <= 23.1 and 2.7 <= width_m <= 3.3
            else:
                assert min(abs(length_m - 6.06), abs(length_m - 12.19)) < 0.1 and abs(width_m - 2.44) < 0.05
    assert seen[RAILCAR] > 50 and seen[CONTAINER] > 20


def test_labels_are_normalised_obb_lines(tmp_path: Path) -> None:
    chip = generate_chip(3)
    lines = obb_label_lines(chip)
    assert len(lines) == len(chip.objects)
    for line in lines:
        parts = line.split()
        assert len(parts) == 9 and parts[0] in {"0", "1"}
        assert all(0.0 <= float(v) <= 1.0 for v in parts[1:])
    data = write_dataset(tmp_path / "ds", n_train=2, n_val=1, seed=11, workers=1, cfg=SynthConfig(size_px=160))
    assert "names" in data.read_text()
    assert len(list((tmp_path / "ds" / "images" / "train").glob("*.jpg"))) == 2
    assert len(list((tmp_path / "ds" / "labels" / "val").glob("*.txt"))) == 1


def test_training_stage_variants_are_recorded_in_the_manifest(tmp_path: Path) -> None:
    """``--config stage6`` writes a set whose manifest holds the variant's knobs (bays nearly touching)."""
    import json

    from training.synth import main

    main([str(tmp_path / "s6"), "--train", "1", "--val", "1", "--size", "160", "--workers", "1", "--config", "stage6"])
    config = json.loads((tmp_path / "s6" / "manifest.json").read_text())["config"]
    assert config["lot_bay_gap_m"] == [0.2, 4.0] and config["lot_rows"] == [1, 12]
    assert config["shadow_factor"] == [0.04, 0.4]  # the fourth stage's shadows kept
    assert SynthConfig().lot_bay_gap_m == (1.0, 4.0)  # the defaults (versions 2-3 data) unchanged


def test_yard_variant_draws_wide_yards_on_light_ballast_and_leaves_the_defaults_alone() -> None:
    """``--config yard``: many close tracks, often on light ballast; the defaults draw no light ballast at all."""
    from dataclasses import replace

    from training.synth import CONFIGS, LIGHT_BALLAST_COLOURS, YARD_CONFIG

    assert CONFIGS["yard"] is YARD_CONFIG and YARD_CONFIG.light_ballast_probability > 0
    shadow = CONFIGS["yard_shadow"]  # the tenth stage's: light roofs beside near-black bands, near nadir
    assert shadow.tracks_per_bundle == YARD_CONFIG.tracks_per_bundle and shadow.light_roof_probability >= 0.5
    assert shadow.shadow_factor[1] <= 0.25 and shadow.off_nadir_deg[1] <= 10
    assert YARD_CONFIG.tracks_per_bundle[0] >= 6 and YARD_CONFIG.shadow_factor == (0.04, 0.4)
    assert SynthConfig().light_ballast_probability == 0.0

    def light_share(cfg: SynthConfig) -> float:
        # median over 12 chips of the share of pixels about as light as the light ballast palette's darkest colour
        darkest = min(sum(c) for c in LIGHT_BALLAST_COLOURS) / 3 - 15
        shares = [float((generate_chip(s, cfg).image.mean(axis=2) >= darkest).mean()) for s in range(20, 32)]
        return float(np.median(shares))

    assert light_share(replace(YARD_CONFIG, size_px=160)) > light_share(SynthConfig(size_px=160)) + 0.05


def test_yard_across_puts_the_sun_across_the_tracks_and_the_defaults_keep_a_uniform_azimuth() -> None:
    """``--config yard_across``: shadows fall within 30 degrees of the tracks' normal in most chips."""
    import math
    from dataclasses import replace

    from training.synth import CONFIGS

    def across_share(cfg: SynthConfig) -> float:
        hits = 0
        for seed in range(40):
            chip = generate_chip(seed, replace(cfg, size_px=64, supersample=1))
            track = (math.cos(chip.track_angle_rad), math.sin(chip.track_angle_rad))
            cos_to_track = abs(track[0] * chip.shadow_dir[0] + track[1] * chip.shadow_dir[1])
            hits += cos_to_track <= math.sin(math.radians(30)) + 1e-9  # within 30 degrees of the normal
        return hits / 40

    assert across_share(CONFIGS["yard_across"]) >= 0.7
    assert across_share(SynthConfig()) <= 0.55  # uniform azimuth: about a third


def test_yard_ortho_sees_the_yard_through_a_sharp_clean_sensor() -> None:
    """``--config yard_ortho`` (stage 14): the yard_across scene at higher contrast and with the sun across nearly
    always; the knobs it changes are sensor knobs, so its chips spread wider in brightness than yard_across's."""
    from dataclasses import replace

    from training.synth import CONFIGS

    ortho, across = CONFIGS["yard_ortho"], CONFIGS["yard_across"]
    assert ortho.sun_across_track_probability >= 0.9 and ortho.blur_sigma_px[1] <= 0.5
    assert ortho.tracks_per_bundle == across.tracks_per_bundle and ortho.shadow_factor == across.shadow_factor

    def spread(cfg: SynthConfig) -> float:
        # median over 12 chips of the 5-95 percentile range of brightness
        values = []
        for seed in range(12):
            grey = generate_chip(seed, replace(cfg, size_px=128)).image.mean(axis=2)
            values.append(float(np.percentile(grey, 95) - np.percentile(grey, 5)))
        return float(np.median(values))

    assert spread(ortho) > spread(across) * 1.1


def _band_and_roof_to_ground(cfg: SynthConfig, seeds: range) -> tuple[float, float]:
    """Median brightness of the band one wagon width beside each sun-across wagon on its shadow side, and of its roof,
    over that of the band on its other side (how the Swiss yard was measured: 0.37 and 0.88)."""
    band, roof = _band_and_roof_ratios(cfg, seeds)
    return float(np.nanmedian(band)), float(np.nanmedian(roof))


def _band_and_roof_ratios(cfg: SynthConfig, seeds: range) -> tuple[list[float], list[float]]:
    """Per sun-across wagon: its shadow-side band's and its roof's brightness over the other side's."""
    import cv2

    from training.failure_analysis import _axes

    band, roof = [], []
    for seed in seeds:
        chip = generate_chip(seed, cfg)
        grey = chip.image.mean(axis=2)

        def mean_in(corners: np.ndarray, grey: np.ndarray = grey) -> float:
            mask = np.zeros(grey.shape, np.uint8)
            cv2.fillPoly(mask, [np.round(corners).astype(np.int32)], 1)
            return float(grey[mask > 0].mean()) if mask.any() else float("nan")

        for o in chip.objects:
            if o.class_id != RAILCAR:
                continue
            c = o.corners
            _, axis, _, width = _axes(c)
            if abs(float(np.dot(axis, chip.shadow_dir))) > 0.5:  # sun along the track: no band
                continue
            normal = np.array([axis[1], -axis[0]]) * width
            if np.dot(normal, chip.shadow_dir) < 0:
                normal = -normal
            shadow_side, other_side = mean_in(c + normal), mean_in(c - normal)
            if other_side > 0:
                band.append(shadow_side / other_side)
                roof.append(mean_in(c) / other_side)
    return band, roof


def test_yard_measured_brings_bands_and_roofs_towards_the_swiss_yard() -> None:
    """``--config yard_measured`` (stage 16): darker bands and mid-tone roofs, closer to the measured 0.37 / 0.88."""
    from dataclasses import replace

    from training.synth import CONFIGS

    measured = _band_and_roof_to_ground(replace(CONFIGS["yard_measured"], size_px=192), range(16))
    across = _band_and_roof_to_ground(replace(CONFIGS["yard_across"], size_px=192), range(16))
    assert measured[0] < across[0] - 0.03 and measured[1] < across[1] - 0.03
    assert abs(measured[0] - 0.37) < abs(across[0] - 0.37) and abs(measured[1] - 0.88) < abs(across[1] - 0.88)


def test_yard_camo_gives_many_wagons_the_ground_colour_beside_a_black_band() -> None:
    """``--config yard_camo`` (stage 17): roofs as bright as the ground beside them, next to a dark band."""
    from dataclasses import replace

    from training.synth import CONFIGS

    camo = CONFIGS["yard_camo"]
    assert camo.ground_roof_probability >= 0.3 and camo.sun_across_track_probability >= 0.8

    def roof_off_ground(probability: float) -> float:
        _, roof = _band_and_roof_ratios(replace(camo, size_px=192, ground_roof_probability=probability), range(16))
        ratios = np.array(roof)
        return float(np.median(np.abs(ratios[np.isfinite(ratios)] - 1.0)))

    # every wagon in the ground's colour: roofs much closer to the ground beside them than drawn from the palettes
    assert roof_off_ground(1.0) < 0.8 * roof_off_ground(0.0)
    band, _ = _band_and_roof_to_ground(replace(camo, size_px=192), range(16))
    assert band < 0.6
    assert SynthConfig().ground_roof_probability == 0.0  # the defaults draw as before


def test_ground_roof_ratio_sets_how_bright_a_camouflaged_roof_is() -> None:
    """``ground_roof_ratio``: a camouflaged roof's brightness as a share of the ground beside it (the real lower
    train's roofs: 0.72-0.81); the default keeps yard_camo's 0.85-1.12."""
    from dataclasses import replace

    from training.synth import CONFIGS

    assert SynthConfig().ground_roof_ratio == (0.85, 1.12)
    camo = replace(CONFIGS["yard_camo"], size_px=192, ground_roof_probability=1.0)

    def median_roof(ratio: tuple[float, float]) -> float:
        _, roof = _band_and_roof_ratios(replace(camo, ground_roof_ratio=ratio), range(12))
        r = np.array(roof)
        return float(np.median(r[np.isfinite(r)]))

    dark, plain = median_roof((0.6, 0.6)), median_roof((1.0, 1.0))
    assert dark < plain - 0.15
    assert 0.5 < dark < 0.9 and 0.9 < plain < 1.15


def test_resample_to_gsd_draws_at_the_own_gsd_and_resamples_as_the_service_does(tmp_path: Path) -> None:
    """``resample_to_gsd_m``: every chip comes out at the working GSD and size, covering the ground its own-GSD
    render covers, with true-to-scale labels inside the frame; unset, chips stay at their own GSD."""
    from dataclasses import replace

    from training.synth import _draw_gsd, main

    assert SynthConfig().resample_to_gsd_m is None
    cfg = SynthConfig(size_px=160, resample_to_gsd_m=0.4)
    seen = {RAILCAR: 0, CONTAINER: 0}
    factors = []
    fine = replace(cfg, gsd_range=(0.3, 0.36))  # drawn finer than the working GSD: downsampled
    for seed, c in [(seed, cfg) for seed in range(8)] + [(seed, fine) for seed in range(3)]:
        chip = generate_chip(seed, c)
        assert chip.image.shape == (160, 160, 3) and chip.image.dtype == np.uint8
        assert abs(chip.gsd_m - 0.4) < 0.01
        own = _draw_gsd(c, np.random.default_rng(seed))
        native = generate_chip(seed, replace(c, size_px=round(160 * 0.4 / own), resample_to_gsd_m=None))
        assert native.gsd_m == own
        assert abs(native.image.shape[0] * own - 160 * chip.gsd_m) < 1e-6  # the same ground, resampled
        assert len(native.objects) == len(chip.objects)
        factors.append(own / chip.gsd_m)
        for o in chip.objects:
            assert o.corners.min() >= 0 and o.corners.max() <= 160
            if o.corners.min() > 0.5 and o.corners.max() < 159.5:
                seen[o.class_id] += 1
                length_m, width_m = (s * chip.gsd_m for s in _sides(o.corners))
                if o.class_id == RAILCAR:
                    assert 13.6 <= length_m <= 23.4 and 2.6 <= width_m <= 3.4
                else:
                    assert min(abs(length_m - 6.06), abs(length_m - 12.19)) < 0.3 and abs(width_m - 2.44) < 0.2
    assert min(factors) < 0.9 and max(factors) > 1.5  # both down- and upsampled chips
    near = replace(cfg, gsd_range=(0.399, 0.401))  # within 2% of the working GSD: the service does not resample
    assert np.array_equal(generate_chip(5, near).image, generate_chip(5, replace(near, resample_to_gsd_m=None)).image)
    assert seen[RAILCAR] > 20 and seen[CONTAINER] > 5
    main(
        [
            str(tmp_path / "rs"),
            "--train",
            "2",
            "--val",
            "1",
            "--size",
            "96",
            "--workers",
            "1",
            "--resample-to-gsd",
            "0.4",
        ]
    )
    import json

    manifest = json.loads((tmp_path / "rs" / "manifest.json").read_text())
    assert manifest["config"]["resample_to_gsd_m"] == 0.4
    assert all(abs(c["gsd_m"] - 0.4) < 0.02 for c in manifest["chips"])


def _shadow_scene(sun_x_px_per_m: float = 1.0):
    """A bare scene at 0.5 m/px whose shadows fall along +x, ``sun_x_px_per_m`` pixels per metre of height."""
    from training.synth import _rect, _Scene

    scene = _Scene(SynthConfig(size_px=128, supersample=1), np.random.default_rng(0))
    scene.canvas.img[:] = 200.0
    scene.shadow_dir = np.array([1.0, 0.0])
    scene.shadow_per_m = sun_x_px_per_m
    scene.shadow_strength = 0.5
    return scene, _rect


def _draw_box(scene, rect, cx: float, height: float, colour: float = 100.0) -> np.ndarray:
    body = rect(cx, 64.0, 10.0, 20.0, 0.0)  # x from cx-5 to cx+5
    scene.shadow(body, height)
    scene.canvas.poly(body, (colour, colour, colour))
    scene.roof(body, height)
    return body


def test_a_lower_neighbour_never_shades_a_higher_roof() -> None:
    scene, rect = _shadow_scene()
    _draw_box(scene, rect, 40.0, height=10.0)  # tall, drawn first
    _draw_box(scene, rect, 50.0, height=2.6)  # low, drawn after: its shadow (2.6 px) falls on the ground
    img = scene.canvas.img
    assert np.allclose(img[64, 37:44], 100.0)  # the tall roof keeps its colour (the old bug darkened it)


def test_a_taller_shadow_reaches_a_lower_roof_only_as_far_as_the_height_difference() -> None:
    scene, rect = _shadow_scene()
    _draw_box(scene, rect, 40.0, height=10.0)  # roof x 35..45, casts 10 px onto the ground
    _draw_box(scene, rect, 50.0, height=5.2)  # roof x 45..55: shaded from 45 to 45 + (10 - 5.2) = 49.8
    img = scene.canvas.img
    assert np.allclose(img[64, 46:49], 50.0)  # shaded once, at 0.5
    assert np.allclose(img[64, 51:55], 100.0)  # beyond the reach: lit
    # the same pair drawn in the other order gives the same picture
    other, rect = _shadow_scene()
    _draw_box(other, rect, 50.0, height=5.2)
    _draw_box(other, rect, 40.0, height=10.0)
    assert np.allclose(other.canvas.img[64, 36:44], img[64, 36:44], atol=1.0)  # (edge pixels differ by anti-aliasing)
    assert np.allclose(other.canvas.img[64, 46:60], img[64, 46:60], atol=1.0)


def test_overlapping_shadows_on_the_ground_darken_once() -> None:
    scene, rect = _shadow_scene(sun_x_px_per_m=2.0)
    _draw_box(scene, rect, 40.0, height=10.0)  # ground shadow x 45..65
    _draw_box(scene, rect, 20.0, height=20.0)  # ground shadow x 25..65, over the first one's
    img = scene.canvas.img
    assert np.allclose(img[64, 56:64], 100.0)  # 200 * 0.5, not 200 * 0.25
    assert np.allclose(img[64, 38:43], 50.0)  # the lower roof lies in the taller one's shadow (reach 20 px)


def test_hard_negatives_add_unlabelled_look_alikes_and_leave_every_label_and_other_config_alone() -> None:
    from dataclasses import replace

    from training.synth import CONFIGS

    hn = replace(CONFIGS["hard_negatives"], size_px=320)
    off = replace(hn, trailer_rows=(0, 0), roof_strip_buildings=(0, 0), ship_probability=0.0)
    changed = 0
    for seed in range(6):
        a, b = generate_chip(seed, hn), generate_chip(seed, off)
        assert [o.class_id for o in a.objects] == [o.class_id for o in b.objects]
        assert all(np.array_equal(x.corners, y.corners) for x, y in zip(a.objects, b.objects, strict=True))
        changed += not np.array_equal(a.image, b.image)
    assert changed >= 5
    assert SynthConfig().trailer_rows == (0, 0) and SynthConfig().ship_probability == 0.0  # off unless asked for
