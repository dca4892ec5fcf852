"""Tests of training.strip_checkpoint: training checkpoints reduced to inference weights, written atomically."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.strip_checkpoint import strip_checkpoint


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))


def test_the_ema_network_is_kept_in_half_precision_and_the_training_state_dropped(tmp_path: Path) -> None:
    ema = _net(1)
    source = tmp_path / "last.pt"
    torch.save(
        {"model": None, "ema": ema, "optimizer": {"state": torch.zeros(1000)}, "updates": 7, "epoch": 20}, source
    )
    out = strip_checkpoint(source, tmp_path / "out" / "last.pt")
    assert out == tmp_path / "out" / "last.pt" and not list(out.parent.glob("*.partial"))
    ckpt = torch.load(out, weights_only=False)
    assert ckpt["optimizer"] is None and ckpt["ema"] is None and ckpt["updates"] is None and ckpt["epoch"] == -1
    weights = ckpt["model"].state_dict()["0.weight"]
    assert weights.dtype == torch.float16
    assert torch.equal(weights, ema.state_dict()["0.weight"].half())


def test_an_unreadable_source_leaves_the_destination_as_it_was(tmp_path: Path) -> None:
    source, destination = tmp_path / "last.pt", tmp_path / "out.pt"
    source.write_bytes(b"PK\x03\x04 half a file")  # as a checkpoint caught mid-write
    destination.write_bytes(b"the previous checkpoint")
    with pytest.raises(ValueError, match="not a loadable checkpoint"):
        strip_checkpoint(source, destination)
    assert destination.read_bytes() == b"the previous checkpoint"
    assert not (tmp_path / "out.pt.partial").exists()
