"""Append one model's evaluation to ``models/metrics.json`` (the history every committed model is judged by).

python -m training.record_metrics --eval eval.json --version 2026.11.27-1 --recipe "..." --command "..."
"""

from __future__ import annotations

import argparse
import hashlib
import json
from datetime import date
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def record(
    metrics_file: Path,
    weights: Path,
    evaluation: dict,
    version: str,
    recipe: str,
    command: str,
    extra: dict | None = None,
) -> dict:
    """Add (or replace) the entry for ``version`` and make it current; return the whole file's content."""
    data = json.loads(metrics_file.read_text()) if metrics_file.exists() else {"current": None, "history": []}
    entry = {
        "version": version,
        "date": date.today().isoformat(),
        "weights": weights.name,
        "weights_sha256": hashlib.sha256(weights.read_bytes()).hexdigest(),
        "recipe": recipe,
        "evaluate_command": command,
        "operating_conf": evaluation.get("synthetic", evaluation.get("real", {})).get("operating_conf"),
        "heldout_synthetic": evaluation.get("synthetic"),
        "real_eval": evaluation.get("real"),
        **(extra or {}),
    }
    data["history"] = [h for h in data["history"] if h["version"] != version] + [entry]
    data["current"] = version
    metrics_file.write_text(json.dumps(data, indent=2) + "\n")
    return data


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--eval", type=Path, required=True, help="JSON written by `wagon-detector evaluate --json`")
    ap.add_argument("--weights", type=Path, default=ROOT / "models" / "wagon-obb.pt")
    ap.add_argument("--metrics", type=Path, default=ROOT / "models" / "metrics.json")
    ap.add_argument("--version", required=True)
    ap.add_argument("--recipe", required=True)
    ap.add_argument("--command", required=True)
    ap.add_argument("--extra", type=Path, default=None, help="JSON object merged into the entry")
    a = ap.parse_args(argv)
    extra = json.loads(a.extra.read_text()) if a.extra else None
    record(a.metrics, a.weights, json.loads(a.eval.read_text()), a.version, a.recipe, a.command, extra)


if __name__ == "__main__":
    main()
