#!/usr/bin/env bash
# Train the shipped model from scratch on a rented GPU machine (used through the `device` tool; works on any
# CUDA machine with PyTorch, OpenCV and the Ultralytics wheels in .whl/). Writes checkpoints and logs to $OUT.
#   N_TRAIN=3000 N_VAL=300 HOURS=0.085 bash training/gpu_train.sh
set -euo pipefail
OUT=${OUT:-runs/gpu}
N_TRAIN=${N_TRAIN:-3000}
N_VAL=${N_VAL:-300}
HOURS=${HOURS:-0.085}
BATCH=${BATCH:-64}
SEED=${SEED:-0}
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
export PYTHONUNBUFFERED=1 WAGON_ULTRALYTICS_DIR=/tmp/ultra
nvidia-smi --query-gpu=name,memory.total --format=csv || true
nproc
t0=$(date +%s)
python3 -m training.synth /tmp/synth --train "$N_TRAIN" --val "$N_VAL" --seed "$SEED" --workers "$(nproc)"
echo "generated in $(( $(date +%s) - t0 )) s"
# keep the newest checkpoints in $OUT while training runs, so a cut-off run still returns weights
( while sleep 20; do cp -f runs/gpu_train/weights/last.pt runs/gpu_train/weights/best.pt runs/gpu_train/results.csv "$OUT"/ 2>/dev/null || true; done ) &
saver=$!
python3 -m training.train --data /tmp/synth/data.yaml --epochs 300 --hours "$HOURS" --imgsz 640 --batch "$BATCH" \
  --workers "$(( $(nproc) - 2 ))" --cache ram --project runs --name gpu_train 2>&1 | tee "$OUT/train.log" | grep -vE '^\s+[0-9]+/[0-9]+ .*it/s' || true
kill $saver || true
cp -f runs/gpu_train/weights/best.pt runs/gpu_train/weights/last.pt runs/gpu_train/results.csv runs/gpu_train/args.yaml "$OUT"/
cp -f /tmp/synth/manifest.json "$OUT"/synth_manifest.json
echo "total $(( $(date +%s) - t0 )) s"
