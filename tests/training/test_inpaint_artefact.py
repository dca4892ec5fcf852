"""Tests of training.inpaint_artefact: the inpainted outline smears exactly the labelled edges, nothing else."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from training.inpaint_artefact import SWISS_GSD_M, inpaint_outlines, railcar_figures


def _scene() -> tuple[np.ndarray, np.ndarray]:
    """A 96 x 96 light ground with a dark 40 x 10 px wagon in the middle; and the wagon's label."""
    image = np.full((96, 96, 3), 150, np.uint8)
    image[43:53, 28:68] = 60
    label = np.array([[28.0, 43.0], [68.0, 43.0], [68.0, 53.0], [28.0, 53.0]])
    return image, label


def test_inpainting_smears_the_labelled_edges_and_leaves_the_rest() -> None:
    image, label = _scene()
    smeared = inpaint_outlines(image, [label], stroke_px=3)
    assert smeared.shape == image.shape and smeared.dtype == np.uint8
    # far from the outline nothing changes
    assert np.array_equal(smeared[:30], image[:30]) and np.array_equal(smeared[:, :20], image[:, :20])
    # across the wagon's long edge the step from ground to body is gone: a ramp instead
    before = np.abs(np.diff(image[38:58, 48, 0].astype(int))).max()
    after = np.abs(np.diff(smeared[38:58, 48, 0].astype(int))).max()
    assert before == 90 and after < 60
    # the body's centre line is left alone
    assert np.array_equal(smeared[48, 35:61], image[48, 35:61])


def test_a_wider_stroke_smears_more_and_zero_returns_a_copy() -> None:
    image, label = _scene()
    changed = [int((inpaint_outlines(image, [label], s) != image).any(axis=2).sum()) for s in (2, 5, 7)]
    assert 0 < changed[0] < changed[1] < changed[2]
    same = inpaint_outlines(image, [label], 0)
    assert np.array_equal(same, image) and same is not image
    assert np.array_equal(inpaint_outlines(image, [], 5), image)


@pytest.mark.slow
def test_railcar_figures_on_a_chip_with_and_without_the_smear(detector: Any) -> None:
    from dataclasses import replace

    from training.synth import YARD_CAMO_CONFIG, generate_chip

    cfg = replace(YARD_CAMO_CONFIG, gsd_range=(SWISS_GSD_M, SWISS_GSD_M), gsd_focus_probability=0.0)
    chips = [generate_chip(7_200_000 + i, cfg) for i in range(2)]
    clean = railcar_figures(detector, chips, 0, half=False)
    for key in ("map50", "precision", "recall", "count_err_over_true"):
        assert 0.0 <= clean[key] <= 1.5
    assert clean["map50"] > 0.5  # the shipped model finds drawn wagons
    assert 0 <= clean["false_alarms_beside_a_label"] <= clean["false_alarms"]
    assert railcar_figures(detector, chips, 0, half=False) == clean  # deterministic
