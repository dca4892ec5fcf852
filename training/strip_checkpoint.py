"""Strip an Ultralytics training checkpoint to its inference weights, written atomically.

A checkpoint saved while training holds the optimizer state and, mid-run, the EMA network with ``model`` set to
None; a four-level (P2) one is 28 MB, over what the device tool sends back per file (16 MiB). Stripped (EMA network
kept as the model, half precision, optimizer dropped: Ultralytics' ``strip_optimizer``) it is about 6 MB and loads
for evaluation and further training.

    python -m training.strip_checkpoint runs/gpu_train/weights/last.pt "$OUT/last.pt"

The destination is written to a temporary file first and renamed, so a reader never sees half a file; a source
caught mid-write (unreadable) raises and leaves the destination as it was.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from app.core.offline import configure_offline


def strip_checkpoint(source: Path, destination: Path) -> Path:
    """Write ``source`` stripped of its training state to ``destination`` (atomically); return ``destination``."""
    configure_offline()  # before Ultralytics is imported: no hub, font or connectivity checks
    from ultralytics.utils.torch_utils import strip_optimizer

    destination = Path(destination)
    destination.parent.mkdir(parents=True, exist_ok=True)
    partial = destination.with_name(destination.name + ".partial")
    try:
        strip_optimizer(str(source), str(partial))
        if not partial.is_file():
            raise ValueError(f"{source} is not a loadable checkpoint")
        os.replace(partial, destination)
    finally:
        partial.unlink(missing_ok=True)
    return destination


def main(argv: list[str] | None = None) -> None:
    """CLI: ``python -m training.strip_checkpoint SOURCE DESTINATION``."""
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("source", type=Path)
    ap.add_argument("destination", type=Path)
    a = ap.parse_args(argv)
    print(strip_checkpoint(a.source, a.destination))


if __name__ == "__main__":
    main()
