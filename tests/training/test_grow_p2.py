"""Tests of training.grow_p2: a three-level model grown into the four-level (P2-P5) one.

The shipped model is four-level since version 10, so the source here is a three-level network built from
``training/yolo11n-obb-wagon.yaml`` with seeded random weights: what is tested is that every weight is carried over.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from app.detection.augment import strides_for
from tests.support import PROJECT_ROOT

ROOT = PROJECT_ROOT
SIZE = 320


@pytest.fixture(scope="module")
def three_level(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A three-level OBB checkpoint with seeded random weights and BatchNorm statistics away from their defaults."""
    from app.core.offline import configure_offline

    configure_offline()
    import torch
    from ultralytics.nn.tasks import OBBModel

    torch.manual_seed(0)
    net = OBBModel(str(ROOT / "training" / "yolo11n-obb-wagon.yaml"), ch=3, nc=2, verbose=False)
    net.names = {0: "railcar", 1: "container"}
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.5, 1.5)
    path = tmp_path_factory.mktemp("p3") / "three_level.pt"
    torch.save({"model": net.half(), "ema": None, "optimizer": None, "train_args": {}, "epoch": -1}, path)
    return path


@pytest.fixture(scope="module")
def grown(three_level: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, int]]:
    from training.grow_p2 import grow

    out = tmp_path_factory.mktemp("p2") / "grown.pt"
    return out, grow(three_level, out)


def _raw(weights: Path, image: np.ndarray) -> np.ndarray:
    import torch
    from ultralytics import YOLO

    net = YOLO(str(weights)).model.float().eval()
    with torch.no_grad():
        out = net(torch.from_numpy(image).permute(2, 0, 1)[None].float() / 255)
    return (out[0] if isinstance(out, (list, tuple)) else out)[0].numpy()


def test_grown_model_keeps_every_trained_level(grown: tuple[Path, dict[str, int]], three_level: Path) -> None:
    """The P3-P5 anchors of the grown model answer exactly as the source model does; P2 adds stride-4 anchors."""
    path, counts = grown
    assert counts["carried"] > 500 and counts["copied_into_p2"] > 0 and 0 < counts["new"] < 50
    image = np.random.default_rng(0).integers(0, 255, (SIZE, SIZE, 3), dtype=np.uint8)
    old, new = _raw(three_level, image), _raw(path, image)
    assert strides_for(SIZE, old.shape[1]) == (8, 16, 32)
    assert strides_for(SIZE, new.shape[1]) == (4, 8, 16, 32)
    n_p2 = (SIZE // 4) ** 2
    np.testing.assert_allclose(new[:, n_p2:], old, rtol=1e-4, atol=1e-3)


def test_grown_checkpoint_names_its_yaml_and_classes(grown: tuple[Path, dict[str, int]]) -> None:
    import torch

    ckpt = torch.load(grown[0], map_location="cpu", weights_only=False)
    assert ckpt["train_args"]["model"].endswith("yolo11n-p2-obb-wagon.yaml")
    assert ckpt["model"].names == {0: "railcar", 1: "container"}
    assert [float(s) for s in ckpt["model"].stride] == [4.0, 8.0, 16.0, 32.0]


def test_a_four_level_source_is_refused(grown: tuple[Path, dict[str, int]], tmp_path: Path) -> None:
    from training.grow_p2 import grow

    with pytest.raises(ValueError, match="4 output levels"):
        grow(grown[0], tmp_path / "again.pt")
    assert not (tmp_path / "again.pt").exists()
