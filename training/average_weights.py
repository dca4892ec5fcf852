"""Average two checkpoints of the same network weight for weight (WiSE-FT style).

Averaging a fine-tuned network with the checkpoint it started from often keeps the fine-tuning's gains and loses
less elsewhere. Versions 5 to 7 of the shipped model are such averages (docs/lab/model-history.md).

    python -m training.average_weights runs/cpu_ft15/weights/best.pt runs/cpu_ft18/weights/last.pt \\
        --weight 0.5 --out runs/soup18/v4_s18last_50.pt

The output is the second checkpoint with its network's floating-point tensors replaced by
``(1 - weight) * first + weight * second`` (computed in float32, stored in the network's dtype); integer buffers
come from the second. Its EMA and optimizer state are dropped (they belong to neither).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch


def average_state_dicts(
    first: dict[str, torch.Tensor], second: dict[str, torch.Tensor], weight: float
) -> dict[str, torch.Tensor]:
    """``(1 - weight) * first + weight * second`` for floating-point tensors; other tensors from ``second``.
    The two must hold the same keys and shapes (the same architecture)."""
    if not 0.0 <= weight <= 1.0:
        raise ValueError(f"weight must lie in [0, 1], got {weight}")
    if first.keys() != second.keys():
        raise ValueError("the checkpoints hold different tensors (not the same architecture)")
    out = {}
    for key, b in second.items():
        a = first[key]
        if a.shape != b.shape:
            raise ValueError(f"{key}: shape {tuple(a.shape)} vs {tuple(b.shape)}")
        if b.is_floating_point():
            out[key] = (a.float() * (1.0 - weight) + b.float() * weight).to(b.dtype)
        else:
            out[key] = b.clone()
    return out


def average_checkpoints(first: Path, second: Path, weight: float, out: Path) -> Path:
    """Write the weight average of two Ultralytics checkpoints (see the module docstring) to ``out``."""
    ckpt_a: dict[str, Any] = torch.load(first, map_location="cpu", weights_only=False)
    ckpt_b: dict[str, Any] = torch.load(second, map_location="cpu", weights_only=False)
    model = ckpt_b["model"]
    model.load_state_dict(average_state_dicts(ckpt_a["model"].state_dict(), model.state_dict(), weight))
    for key in ("ema", "optimizer", "updates"):
        if key in ckpt_b:
            ckpt_b[key] = None
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(ckpt_b, out)
    return out


def main(argv: list[str] | None = None) -> None:
    """CLI entry point."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("first", type=Path, help="checkpoint weighted 1 - weight (e.g. the starting point)")
    ap.add_argument("second", type=Path, help="checkpoint weighted weight (e.g. the fine-tuned one)")
    ap.add_argument("--weight", type=float, default=0.5)
    ap.add_argument("--out", type=Path, required=True)
    a = ap.parse_args(argv)
    print(average_checkpoints(a.first, a.second, a.weight, a.out))


if __name__ == "__main__":
    main()
