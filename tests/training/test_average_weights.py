"""Tests of training.average_weights: weight-for-weight averages of two checkpoints of one network."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from training.average_weights import average_checkpoints, average_state_dicts


def _net(seed: int) -> torch.nn.Module:
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4)).half()


def test_floats_are_averaged_and_integer_buffers_come_from_the_second() -> None:
    a, b = _net(0).state_dict(), _net(1).state_dict()
    b["1.num_batches_tracked"] = torch.tensor(7)
    avg = average_state_dicts(a, b, 0.25)
    w = avg["0.weight"]
    assert w.dtype == torch.float16
    expected = (a["0.weight"].float() * 0.75 + b["0.weight"].float() * 0.25).half()
    assert torch.equal(w, expected)
    assert not torch.equal(w, a["0.weight"]) and not torch.equal(w, b["0.weight"])
    assert int(avg["1.num_batches_tracked"]) == 7
    assert torch.equal(average_state_dicts(a, b, 0.0)["0.weight"], a["0.weight"])
    assert torch.equal(average_state_dicts(a, b, 1.0)["0.weight"], b["0.weight"])


def test_mismatched_networks_and_weights_are_refused() -> None:
    a = _net(0).state_dict()
    other = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.BatchNorm2d(5)).half().state_dict()
    with pytest.raises(ValueError, match="shape"):
        average_state_dicts(a, other, 0.5)
    with pytest.raises(ValueError, match="different tensors"):
        average_state_dicts(a, {"x": torch.zeros(1)}, 0.5)
    with pytest.raises(ValueError, match="weight"):
        average_state_dicts(a, a, 1.5)


def test_checkpoints_are_averaged_and_training_state_dropped(tmp_path: Path) -> None:
    for i in (0, 1):
        torch.save(
            {"model": _net(i), "ema": _net(i), "optimizer": {"lr": 1.0}, "updates": 3, "version": f"v{i}"},
            tmp_path / f"{i}.pt",
        )
    out = average_checkpoints(tmp_path / "0.pt", tmp_path / "1.pt", 0.5, tmp_path / "avg" / "a.pt")
    ckpt = torch.load(out, weights_only=False)
    assert ckpt["ema"] is None and ckpt["optimizer"] is None and ckpt["updates"] is None and ckpt["version"] == "v1"
    expected = average_state_dicts(_net(0).state_dict(), _net(1).state_dict(), 0.5)
    got = ckpt["model"].state_dict()
    assert all(torch.equal(got[k], expected[k]) for k in expected)
