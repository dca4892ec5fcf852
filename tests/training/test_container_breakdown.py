"""Tests of training.container_breakdown: the context of each synthetic container and the found share per group."""

from __future__ import annotations

from dataclasses import replace

import numpy as np

from training.container_breakdown import breakdown, container_contexts
from training.synth import CONTAINER, SynthChip, SynthConfig, generate_chip

# only container trains: every wagon a flat wagon carrying containers, in rail scenes
TRAINS = replace(SynthConfig(size_px=256), kind_weights={"flat_containers": 1.0}, scene_weights=(1.0, 0.0, 0.0, 0.0))


def test_containers_on_flat_wagons_are_told_from_those_in_lots() -> None:
    on_trains = [c for s in range(4) for c in container_contexts(generate_chip(s, TRAINS))]
    assert len(on_trains) > 10
    assert np.mean([c.on_wagon for c in on_trains]) > 0.9  # a few scene extras may stand elsewhere
    lots = replace(SynthConfig(size_px=256), scene_weights=(0.0, 1.0, 0.0, 0.0))
    in_lots = [c for s in range(4) for c in container_contexts(generate_chip(s, lots))]
    assert len(in_lots) > 10
    assert np.mean([c.on_wagon for c in in_lots]) < 0.2
    assert any(c.neighbour_colour_diff is not None for c in in_lots)


def test_found_share_counts_one_to_one_matches() -> None:
    chips = [generate_chip(s, TRAINS) for s in range(3)]
    n = sum(o.class_id == CONTAINER for c in chips for o in c.objects)

    def perfect(chip: SynthChip) -> list[np.ndarray]:  # every label, twice: the second copy must not count again
        boxes = [o.corners for o in chip.objects if o.class_id == CONTAINER]
        return boxes + boxes

    def shifted(chip: SynthChip) -> list[np.ndarray]:  # every label moved by a whole width: no match at IoU 0.5
        return [o.corners + 8.0 for o in chip.objects if o.class_id == CONTAINER]

    all_found = breakdown(chips, perfect)["all"]
    assert (all_found.found, all_found.total) == (n, n)
    none_found = breakdown(chips, shifted)
    assert none_found["all"].found == 0 and none_found["all"].total == n
    assert sum(t.total for g, t in none_found.items() if g.startswith("GSD")) == n


def test_intermodal_config_puts_many_more_containers_on_flat_wagons() -> None:
    """``--config intermodal`` (stage 17): half the wagons carry containers; the defaults are unchanged."""
    from training.synth import CONFIGS

    def on_wagon(cfg: SynthConfig) -> int:
        return sum(
            c.on_wagon for s in range(8) for c in container_contexts(generate_chip(s, replace(cfg, size_px=256)))
        )

    assert on_wagon(CONFIGS["intermodal"]) > 2 * on_wagon(CONFIGS["default"])
    assert SynthConfig().kind_weights["flat_containers"] == 0.12
