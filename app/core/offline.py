"""Keep Ultralytics offline: call :func:`configure_offline` before importing ``ultralytics``.

Ultralytics tries to reach the internet at import (online check), after train/predict (analytics), on every
dataset check (a font download) and when asked for a released checkpoint name. Each try can hang for minutes on a
machine whose traffic is dropped. This module sets the documented switches and gives it a local font.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

CLASS_NAMES: tuple[str, ...] = ("railcar", "container")


def _default_config_dir() -> Path:
    return Path(os.environ.get("WAGON_ULTRALYTICS_DIR", Path.home() / ".cache" / "wagon-detector" / "ultralytics"))


def configure_offline(config_dir: Path | None = None) -> Path:
    """Set environment and settings so Ultralytics never opens a network connection; return its config dir."""
    cfg = Path(config_dir) if config_dir else _default_config_dir()
    (cfg / "Ultralytics").mkdir(parents=True, exist_ok=True)
    os.environ["YOLO_OFFLINE"] = "1"
    os.environ["YOLO_AUTOINSTALL"] = "False"
    os.environ["YOLO_VERBOSE"] = os.environ.get("YOLO_VERBOSE", "False")
    os.environ["YOLO_CONFIG_DIR"] = str(cfg)
    os.environ.setdefault("MPLCONFIGDIR", str(cfg / "matplotlib"))
    os.environ["ORT_DISABLE_TELEMETRY"] = "1"
    settings_file = cfg / "Ultralytics" / "settings.json"
    settings: dict[str, object] = {}
    if settings_file.exists():
        try:
            settings = json.loads(settings_file.read_text())
        except json.JSONDecodeError:
            settings = {}
    settings.update(
        {
            "sync": False,
            "hub": False,
            "clearml": False,
            "comet": False,
            "dvc": False,
            "mlflow": False,
            "neptune": False,
            "raytune": False,
            "tensorboard": False,
            "wandb": False,
        }
    )
    settings_file.write_text(json.dumps(settings, indent=2))
    font = cfg / "Ultralytics" / "Arial.ttf"
    if not font.exists():
        try:
            import matplotlib

            src = Path(matplotlib.get_data_path()) / "fonts" / "ttf" / "DejaVuSans.ttf"
            shutil.copyfile(src, font)
            shutil.copyfile(src, cfg / "Ultralytics" / "Arial.Unicode.ttf")
        except (ImportError, OSError):
            pass
    return cfg
