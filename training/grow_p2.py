"""Grow a trained three-level model (P3-P5) into the four-level one of ``yolo11n-p2-obb-wagon.yaml`` (P2-P5).

Small objects are what the shipped model misses most: a container 2.4 m wide is 6 px at the working 0.4 m/px and
covers about two stride-8 anchor points, which it shares with the flat wagon under it (docs/lab/model-history.md,
failure analysis). A stride-4 output gives it four times as many. Layers 0-22 of the two YAMLs are identical and
carried over as they are; the head's P3-P5 levels move up one place; the new P2 level of the head starts as a copy
of the trained P3 level (same channels), and only the P2 neck (layers 23-25) starts from scratch. The result is an
Ultralytics checkpoint that ``wagon-detector train --from`` fine-tunes like any other. Version 10 of the shipped
model was grown this way from version 8, so the shipped model is four-level already; to grow a three-level one again
take it from the history, e.g. version 9's:

    git show 3eb34b5:models/wagon-obb.pt > runs/v9.pt
    python -m training.grow_p2 runs/v9.pt runs/p2/grown.pt
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import cast

from app.core.offline import configure_offline

ROOT = Path(__file__).resolve().parents[1]
P2_YAML = ROOT / "training" / "yolo11n-p2-obb-wagon.yaml"


def grow(source: Path, out: Path, seed: int = 0) -> dict[str, int]:
    """Write the grown checkpoint to ``out``; return how many tensors were carried, copied into P2, and new."""
    configure_offline()
    import torch
    from ultralytics.nn.tasks import OBBModel

    ckpt = torch.load(source, map_location="cpu", weights_only=False)
    old = (ckpt.get("ema") or ckpt["model"]).float()
    levels = len(getattr(old.model[-1], "stride", ()))
    if levels != 3:
        raise ValueError(f"{source} has {levels} output levels; grow_p2 grows a three-level (P3-P5) model")
    torch.manual_seed(seed)
    new = OBBModel(str(P2_YAML), ch=3, nc=len(old.names), verbose=False)
    new.names = dict(old.names)
    old_sd, new_sd = old.state_dict(), new.state_dict()
    # the layers are an nn.Sequential (Ultralytics' parse_model); torch's Module.__getattr__ types them loosely
    old_head, new_head = len(old.model) - 1, len(cast(torch.nn.Sequential, new.model)) - 1
    carried = copied = 0
    for key in new_sd:
        prefix, layer, rest = key.split(".", 2)
        if prefix != "model":
            continue
        i = int(layer)
        if i < old_head:  # every layer before the source's head is shared (backbone and the P3-P5 neck)
            new_sd[key] = old_sd[key].clone()
            carried += 1
        elif i == new_head:  # "cv2.<level>.…": level 0 is new P2, levels 1-3 are old 0-2
            branch, level, tail = (rest.split(".", 2) + ["", ""])[:3]
            if not level.isdigit():  # not per level (the DFL's fixed projection)
                src, level_no = f"model.{old_head}.{rest}", 1
            else:
                level_no = int(level)
                src = f"model.{old_head}.{branch}.{max(level_no - 1, 0)}.{tail}"
            if src in old_sd and old_sd[src].shape == new_sd[key].shape:
                new_sd[key] = old_sd[src].clone()
                copied += level_no == 0
                carried += level_no > 0
    new.load_state_dict(new_sd)
    new.args = getattr(old, "args", {})  # type: ignore[assignment]  # an attribute Ultralytics adds, undeclared
    grown = dict(ckpt)
    grown.update(model=new.half(), ema=None, updates=None, optimizer=None, epoch=-1, best_fitness=None)
    train_args = dict(grown.get("train_args") or {})
    train_args["model"] = str(P2_YAML.relative_to(ROOT))  # as the repository names it, on any machine
    grown["train_args"] = train_args
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save(grown, out)
    new_tensors = len(new_sd) - carried - copied
    return {"carried": carried, "copied_into_p2": copied, "new": new_tensors}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("source", type=Path, help="trained three-level checkpoint (e.g. version 9's, from the history)")
    ap.add_argument("out", type=Path, help="where to write the four-level checkpoint")
    ap.add_argument("--seed", type=int, default=0, help="seed of the new P2 neck's initial weights")
    args = ap.parse_args(argv)
    print(grow(args.source, args.out, args.seed))


if __name__ == "__main__":
    main()
