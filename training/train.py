"""Train or fine-tune the wagon-detector OBB model with Ultralytics, offline.

From scratch the network is built from ``training/yolo11n-obb-wagon.yaml`` (nothing is downloaded); with
``--from models/wagon-obb.pt`` training starts from the shipped weights. The same command uses a GPU when one is
present and restores both CPU threads otherwise (Ultralytics silently drops to one).

    wagon-detector train --data data/synth/data.yaml --from models/wagon-obb.pt --epochs 10

``--data`` also takes real labelled sources, once each (see ``training/importers.py``): ``xview:GEOJSON,IMAGES``,
``dota:ROOT``, ``yolo:ROOT_OR_DATA_YAML`` or a bare data.yaml among others. They are imported into one combined
dataset, cached under ``<project>/datasets/<hash>`` (the hash covers the sources' files, the options and the
importer code), and training runs on that:

    wagon-detector train --data xview:xView_train.geojson,train_images --data data/synth/data.yaml --epochs 30

Analysts' reviews, written by ``wagon-detector export-reviews DIR``, fine-tune the shipped model (unless ``--from``
says otherwise) with synthetic chips mixed in (``--synthetic-mix``, default 3 per review tile):

    wagon-detector train --data reviews:DIR --epochs 10
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
from collections.abc import Sequence
from pathlib import Path
from typing import cast

from app.core.offline import configure_offline

ROOT = Path(__file__).resolve().parent.parent
MODEL_YAML = ROOT / "training" / "yolo11n-obb-wagon.yaml"

# Augmentation suited to overhead imagery: any rotation, both flips, moderate scale jitter (GSD already varies).
OVERHEAD_AUGMENT: dict[str, float] = {
    "degrees": 180.0,
    "flipud": 0.5,
    "fliplr": 0.5,
    "scale": 0.3,
    "translate": 0.1,
    "mosaic": 1.0,
    "hsv_h": 0.02,
    "hsv_s": 0.5,
    "hsv_v": 0.4,
}


def _restore_threads(threads: int):
    import torch

    def callback(_trainer: object) -> None:
        torch.set_num_threads(threads)

    return callback


def _results_without_polars(self) -> dict[str, list[float]]:
    """``BaseTrainer.read_results_csv`` with the csv module (Ultralytics imports polars only for this)."""
    import csv

    try:
        with open(self.csv, newline="") as f:
            rows = list(csv.DictReader(f))
    except OSError:
        return {}
    return {k.strip(): [float(r[k]) for r in rows] for k in (rows[0] if rows else {})}


def train_arguments(
    data: Path,
    epochs: int,
    imgsz: int,
    batch: int,
    device: str,
    project: Path,
    name: str,
    hours: float | None = None,
    workers: int = 8,
    cache: str | bool = False,
    lr0: float | None = None,
    patience: int = 100,
    seed: int = 0,
    fine_tune: bool = False,
) -> dict[str, object]:
    """Ultralytics ``train`` arguments for one run.

    With ``lr0`` the optimizer is AdamW, named: Ultralytics' default ``optimizer=auto`` ignores ``lr0`` and picks
    AdamW at lr 0.001667 for runs this short (every CPU fine-tune before this fix ran at that rate, whatever its
    ``--lr0``). Fine-tuning warms up for half an epoch with the biases' warm-up rate at 0 (Ultralytics' default
    starts them at 0.1). With both old defaults a fine-tune fell from 0.783 to 0.753 synthetic-validation mAP50 in
    its first epoch; at AdamW 0.0005 with biases from 0 it fell to 0.774 and then rose to 0.790 (model card).
    """
    kwargs: dict[str, object] = dict(
        data=str(data),
        epochs=epochs,
        imgsz=imgsz,
        batch=batch,
        device=device,
        project=str(Path(project).resolve()),
        name=name,
        exist_ok=True,
        plots=False,
        amp=False,
        workers=workers,
        cache=cache,
        patience=patience,
        seed=seed,
        deterministic=False,
        verbose=True,
        **OVERHEAD_AUGMENT,
    )
    if hours:
        kwargs["time"] = hours
    if lr0 is not None:
        kwargs["lr0"] = lr0
        kwargs["optimizer"] = "AdamW"
    if fine_tune:
        kwargs["warmup_epochs"] = 0.5
        kwargs["warmup_bias_lr"] = 0.0
    return kwargs


def train(
    data: Path,
    weights_from: Path | None,
    epochs: int,
    imgsz: int,
    batch: int,
    device: str | None,
    project: Path,
    name: str,
    hours: float | None = None,
    workers: int = 8,
    cache: str | bool = False,
    lr0: float | None = None,
    patience: int = 100,
    seed: int = 0,
) -> Path:
    """Run one training and return the path of the best checkpoint."""
    os.environ.setdefault("YOLO_VERBOSE", "True")
    configure_offline()
    import torch
    from ultralytics import YOLO
    from ultralytics.engine.trainer import BaseTrainer

    try:
        import polars  # noqa: F401  # imported only to learn whether it is installed
    except ImportError:  # Ultralytics reads results.csv with polars: read it with the csv module instead
        BaseTrainer.read_results_csv = _results_without_polars  # type: ignore[method-assign]  # monkeypatch: no polars

    if device is None:
        device = "0" if torch.cuda.is_available() else "cpu"
    model = YOLO(str(weights_from)) if weights_from else YOLO(str(MODEL_YAML), task="obb")
    if device == "cpu":
        threads = max(1, torch.get_num_threads(), len(os.sched_getaffinity(0)))
        for event in ("on_pretrain_routine_start", "on_pretrain_routine_end", "on_train_epoch_start"):
            model.add_callback(event, _restore_threads(threads))
    kwargs = train_arguments(
        data,
        epochs,
        imgsz,
        batch,
        device,
        project,
        name,
        hours,
        workers,
        cache,
        lr0,
        patience,
        seed,
        fine_tune=weights_from is not None,
    )
    model.train(**kwargs)
    trainer = cast(BaseTrainer, model.trainer)  # set by train() (Ultralytics declares it None until then)
    best = Path(trainer.best)
    return best if best.exists() else Path(trainer.last)


def _fingerprint(path: Path) -> list[object]:
    """Name, size and mtime of a file, or of every file under a folder (cheap: no contents are read)."""
    path = path.resolve()
    if path.is_file():
        st = path.stat()
        return [str(path), st.st_size, st.st_mtime_ns]
    files = sorted(p for p in path.rglob("*") if p.is_file()) if path.is_dir() else []
    return [str(path), [[p.relative_to(path).as_posix(), p.stat().st_size, p.stat().st_mtime_ns] for p in files]]


def prepare_data(
    data: Sequence[str | Path],
    cache_root: Path,
    class_map: str | None = None,
    keep_negatives: bool = False,
    val_share: float = 0.1,
    target_gsd_m: float | None = None,
    synthetic_mix: int | None = None,
) -> Path:
    """The data.yaml to train on: a single bare data.yaml as is; otherwise the sources imported into one dataset.

    The combined dataset lives in ``cache_root/<hash>`` and is reused while the sources, options and importer code
    are unchanged.
    """
    if len(data) == 1 and str(data[0]).lower().endswith((".yaml", ".yml")):
        return Path(data[0])
    from training import importers

    specs = [importers.parse_source(str(d)) for d in data]
    key = {
        "sources": [[s.kind, *(_fingerprint(p) for p in s.paths)] for s in specs],
        "options": [class_map, keep_negatives, val_share, target_gsd_m, synthetic_mix],
        "code": hashlib.sha256(Path(importers.__file__).read_bytes()).hexdigest(),
    }
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    out = Path(cache_root) / digest
    done = out / ".complete"
    if done.exists():
        print(f"using cached dataset {out}")
        return out / "data.yaml"
    data_yaml = importers.build_dataset(
        [str(d) for d in data],
        out,
        val_share=val_share,
        class_map=class_map,
        keep_negatives=keep_negatives,
        target_gsd_m=target_gsd_m,
        synthetic_mix=synthetic_mix,
    )
    done.write_text(json.dumps({"data": [str(d) for d in data]}, indent=1))
    print(f"built dataset {out}")
    return data_yaml


def main(argv: list[str] | None = None) -> None:
    """CLI entry point (``wagon-detector train``)."""
    ap = argparse.ArgumentParser(prog="wagon-detector train", description=__doc__.splitlines()[0])
    ap.add_argument(
        "--data",
        action="append",
        required=True,
        help="Ultralytics data.yaml of an OBB dataset, or a source to import (repeatable): "
        "xview:GEOJSON,IMAGES | dota:ROOT | yolo:ROOT_OR_YAML | reviews:DIR (wagon-detector export-reviews) | "
        "data.yaml",
    )
    ap.add_argument(
        "--synthetic-mix",
        type=int,
        default=None,
        help="synthetic chips mixed in with reviews:DIR sources (default: 3 per review tile; 0: none)",
    )
    ap.add_argument(
        "--class-map",
        default=None,
        help="category=railcar,... for DOTA sources and extra YOLO class names (default: none for DOTA)",
    )
    ap.add_argument("--keep-negatives", action="store_true", help="keep imported chips with no railcar or container")
    ap.add_argument("--val-share", type=float, default=0.1, help="share of imported images held out for validation")
    ap.add_argument(
        "--target-gsd",
        type=float,
        default=None,
        help="resample imported images of known GSD to this many metres per pixel",
    )
    ap.add_argument(
        "--from",
        dest="weights_from",
        type=Path,
        default=None,
        help="start from these weights (default: build from the YAML, random init)",
    )
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--hours", type=float, default=None, help="train for this wall time instead of --epochs")
    ap.add_argument("--imgsz", type=int, default=640)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--device", default=None, help="'cpu', '0', ... (default: GPU when present)")
    ap.add_argument("--workers", type=int, default=8)
    ap.add_argument("--cache", default=False, help="'ram' or 'disk' to cache decoded images")
    ap.add_argument("--lr0", type=float, default=None)
    ap.add_argument("--project", type=Path, default=ROOT / "runs")
    ap.add_argument("--name", default="train")
    ap.add_argument("--out", type=Path, default=None, help="copy the best checkpoint here")
    a = ap.parse_args(argv)
    data = prepare_data(
        a.data, a.project / "datasets", a.class_map, a.keep_negatives, a.val_share, a.target_gsd, a.synthetic_mix
    )
    start = a.weights_from
    if start is None and any(str(d).lower().startswith("reviews:") for d in a.data):
        start = ROOT / "models" / "wagon-obb.pt"  # reviews fine-tune the shipped model
        print(f"fine-tuning from {start}")
    best = train(
        data,
        start,
        a.epochs,
        a.imgsz,
        a.batch,
        a.device,
        a.project,
        a.name,
        a.hours,
        a.workers,
        a.cache,
        a.lr0,
    )
    if a.out:
        a.out.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(best, a.out)
        print(f"best checkpoint copied to {a.out}")
    else:
        print(f"best checkpoint: {best}")


if __name__ == "__main__":
    main()
