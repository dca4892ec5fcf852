"""Tests of training/gpu_train.sh's plumbing (config entries, seeds, data.yaml, outputs), with python3 stubbed.

The GPU run itself cannot happen here; a stand-in ``python3`` on PATH records each call, writes what the generator and
the trainer would write, and hands every other call to this interpreter.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.support import PROJECT_ROOT

SCRIPT = PROJECT_ROOT / "training" / "gpu_train.sh"

STUB = """#!/usr/bin/env bash
echo "$*" >> "$CALLS"
if [ "$1" = "-m" ] && [ "$2" = "training.synth" ]; then
  mkdir -p "$3" && echo '{}' > "$3/manifest.json"; exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "training.grow_p2" ]; then
  echo grown > "$4"; exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "training.train" ]; then
  mkdir -p runs/gpu_train/weights
  for f in weights/best.pt weights/last.pt results.csv args.yaml; do echo x > "runs/gpu_train/$f"; done
  echo "trained"; exit 0
fi
if [ "$1" = "-m" ] && [ "$2" = "training.strip_checkpoint" ]; then
  [ -f "$3" ] || exit 1
  echo "stripped $(cat "$3")" > "$4"; exit 0
fi
exec "$REAL_PYTHON" "$@"
"""

pytestmark = pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")


Run = tuple[list[str], Path, Path, "subprocess.CompletedProcess[str]"]


def _run(tmp_path: Path, configs: str, stub: str = STUB, **extra_env: str) -> Run:
    """Run the script in an empty folder with ``stub`` as python3; return its calls, $OUT, SYNTH_DIR, the process."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stub_file = bin_dir / "python3"
    stub_file.write_text(stub)
    stub_file.chmod(0o755)
    work, out, synth = tmp_path / "work", tmp_path / "out", tmp_path / "synth"
    work.mkdir()
    calls = tmp_path / "calls.txt"
    env = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "CALLS": str(calls),
        "REAL_PYTHON": sys.executable,
        "OUT": str(out),
        "SYNTH_DIR": str(synth),
        "CONFIGS": configs,
        "N_TRAIN": "7",
        "N_VAL": "2",
        "SEED": "1000",
        "SIZE": "320",
        "IMGSZ": "320",
        "HOURS": "0.01",
        "FROM": "models/wagon-obb.pt",
        "LR0": "0.0005",
        **extra_env,
    }
    proc = subprocess.run(["bash", str(SCRIPT)], cwd=work, env=env, capture_output=True, text=True, timeout=120)
    return calls.read_text().splitlines(), out, synth, proc


def test_entries_set_counts_resampling_seeds_and_data_yaml(tmp_path: Path) -> None:
    calls, out, synth, proc = _run(tmp_path, "default:5:0.4 yard_camo:3 stage6")
    assert proc.returncode == 0, proc.stderr
    gen = [c.split() for c in calls if c.startswith("-m training.synth")]
    assert len(gen) == 3
    first, second, third = gen
    assert first[2] == str(synth / "default_rs")
    assert first[first.index("--train") + 1] == "5" and first[first.index("--seed") + 1] == "1000"
    assert first[first.index("--config") + 1] == "default"
    assert first[first.index("--resample-to-gsd") + 1] == "0.4"
    assert second[2] == str(synth / "yard_camo") and "--resample-to-gsd" not in second
    assert second[second.index("--train") + 1] == "3" and second[second.index("--seed") + 1] == "101000"
    assert third[third.index("--train") + 1] == "7" and third[third.index("--seed") + 1] == "201000"
    assert all(g[g.index("--val") + 1] == "2" for g in gen)
    data = (synth / "data.yaml").read_text()
    assert "train: [default_rs/images/train,yard_camo/images/train,stage6/images/train]" in data
    assert "val: [default_rs/images/val,yard_camo/images/val,stage6/images/val]" in data
    train = next(c.split() for c in calls if c.startswith("-m training.train"))
    assert train[train.index("--hours") + 1] == "0.01"
    assert train[train.index("--from") + 1] == "models/wagon-obb.pt"
    assert train[train.index("--lr0") + 1] == "0.0005"
    for name in ("best.pt", "last.pt", "results.csv", "args.yaml", "train.log", "synth_manifests.tar.gz"):
        assert (out / name).is_file(), name
    # the checkpoints come back stripped (a P2 training checkpoint is over the device tool's 16 MiB a file)
    for name in ("best.pt", "last.pt"):
        assert (out / name).read_text() == "stripped x\n", name
        assert f"-m training.strip_checkpoint runs/gpu_train/weights/{name} {out / name}" in calls


def test_a_failing_generator_stops_the_run_before_training(tmp_path: Path) -> None:
    made = 'mkdir -p "$3" && echo \'{}\' > "$3/manifest.json"; exit 0'
    failing = STUB.replace(made, 'echo "generator failed" >&2; exit 2')
    assert failing != STUB
    calls, _, _, proc = _run(tmp_path, "default:5:0.4 yard_camo:3", stub=failing)
    assert proc.returncode != 0
    assert "generator failed" in proc.stderr
    assert len([c for c in calls if c.startswith("-m training.synth")]) == 1
    assert not any(c.startswith("-m training.train") for c in calls)


def test_grow_p2_trains_the_grown_model(tmp_path: Path) -> None:
    calls, out, _, proc = _run(tmp_path, "default:5", GROW_P2="1")
    assert proc.returncode == 0, proc.stderr
    grow = next(c.split() for c in calls if c.startswith("-m training.grow_p2"))
    assert grow[2] == "models/wagon-obb.pt" and grow[3] == str(out / "grown_p2.pt")
    train = next(c.split() for c in calls if c.startswith("-m training.train"))
    assert train[train.index("--from") + 1] == str(out / "grown_p2.pt")
    assert calls.index(next(c for c in calls if c.startswith("-m training.grow_p2"))) < calls.index(
        next(c for c in calls if c.startswith("-m training.train"))
    )
