#!/usr/bin/env bash
# Train on a rented GPU machine (used through the `device` tool; works on any CUDA machine with PyTorch, OpenCV and
# the Ultralytics wheels in .whl/): generate synthetic chips there, train, and write checkpoints and logs to $OUT.
#
# Version 1, from scratch on 640 px chips of the default generator:
#   N_TRAIN=3000 N_VAL=300 HOURS=0.085 bash training/gpu_train.sh
# Stage 9, fine-tuned from a checkpoint on four generator variants at 320 px, inside a fixed wall-time budget:
#   FROM=runs/cpu_ft8/weights/best.pt CONFIGS="default stage4 stage6 yard" N_TRAIN=2500 N_VAL=100 SIZE=320 \
#     IMGSZ=320 LR0=0.001 SEED=600000 BATCH=64 BUDGET_S=470 FINAL_S=55 bash training/gpu_train.sh
#
# Stage 13, weighted towards one variant: an entry NAME:N generates N training chips of that config instead of N_TRAIN:
#   FROM=runs/cpu_ft12/weights/best.pt CONFIGS="yard_across:5000 default:1500 stage6:1500 yard_shadow:1000" N_VAL=100 \
#     SIZE=320 IMGSZ=320 LR0=0.0005 SEED=1400000 BATCH=64 BUDGET_S=530 FINAL_S=50 bash training/gpu_train.sh
#
# Stage 22, chips resampled to the working GSD as in CPU stage 21: an entry NAME:N:GSD draws each chip at its own GSD
# and resamples it to GSD m/px (`training.synth --resample-to-gsd`), in a folder NAME_rs:
#   FROM=models/wagon-obb.pt CONFIGS="default:2200:0.4 intermodal:1500:0.4 yard_camo:2200:0.4 yard_across:1500:0.4 \
#     default:1500 yard_camo:700" N_VAL=60 SIZE=320 IMGSZ=320 LR0=0.0005 SEED=4100000 BATCH=64 BUDGET_S=565 \
#     FINAL_S=50 bash training/gpu_train.sh
#
# A four-level model (P2-P5, training/yolo11n-p2-obb-wagon.yaml) grown from a three-level FROM first
# (`training.grow_p2`): GROW_P2=1.
#
# Stage 30 (version 10): the four-level candidate of CPU stages 27-28 (`git show 3eb34b5:models/candidates/
# wagon-obb-p2-soup28.pt`) on a mix with 40% of its chips at their own GSD. The shipped model is four-level since, so
# a later run starts from FROM=models/wagon-obb.pt, without GROW_P2 and with a fresh SEED:
#   FROM=models/candidates/wagon-obb-p2-soup28.pt CONFIGS="default:2200 yard_camo:1000 intermodal:800 default:2000:0.4 \
#     intermodal:1200:0.4 yard_camo:1600:0.4 yard_across:1200:0.4" N_VAL=50 SIZE=320 IMGSZ=320 LR0=0.0004 \
#     SEED=6000000 BATCH=64 BUDGET_S=555 FINAL_S=55 bash training/gpu_train.sh
#
# N_TRAIN and N_VAL are per config; config k draws seeds SEED + k*100000 (validation 5,000,000 above its training
# seeds); the chips go to SYNTH_DIR (default /tmp/synth, emptied first). Without HOURS, training gets what is left of
# BUDGET_S seconds after generation, less FINAL_S for the final validation and copies.
set -euo pipefail
OUT=${OUT:-runs/gpu}
N_TRAIN=${N_TRAIN:-3000}
N_VAL=${N_VAL:-300}
HOURS=${HOURS:-}
BUDGET_S=${BUDGET_S:-600}
FINAL_S=${FINAL_S:-70}
BATCH=${BATCH:-64}
SEED=${SEED:-0}
SIZE=${SIZE:-640}
IMGSZ=${IMGSZ:-640}
CONFIGS=${CONFIGS:-default}
FROM=${FROM:-}
LR0=${LR0:-}
t0=$(date +%s)
mkdir -p "$OUT"
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
fi
export PYTHONPATH=/tmp/site:$PWD PYTHONUNBUFFERED=1 WAGON_ULTRALYTICS_DIR=/tmp/ultra
nvidia-smi --query-gpu=name,memory.total --format=csv || true
nproc
synth=${SYNTH_DIR:-/tmp/synth}
rm -rf "$synth"
train_dirs=() val_dirs=()
k=0
for entry in $CONFIGS; do
  IFS=: read -r cfg n gsd <<< "$entry"
  n=${n:-$N_TRAIN} dir=$cfg resample=()
  if [ -n "${gsd:-}" ]; then dir=${cfg}_rs resample=(--resample-to-gsd "$gsd"); fi
  python3 -m training.synth "$synth/$dir" --train "$n" --val "$N_VAL" --seed $(( SEED + k * 100000 )) \
    --size "$SIZE" --workers "$(nproc)" --config "$cfg" "${resample[@]}"
  train_dirs+=("$dir/images/train") val_dirs+=("$dir/images/val")
  k=$(( k + 1 ))
done
join() { local IFS=,; echo "$*"; }
printf 'path: %s\ntrain: [%s]\nval: [%s]\nnames:\n  0: railcar\n  1: container\n' \
  "$synth" "$(join "${train_dirs[@]}")" "$(join "${val_dirs[@]}")" > "$synth/data.yaml"
(cd "$synth" && tar czf "$OUT/synth_manifests.tar.gz" */manifest.json data.yaml)
echo "generated in $(( $(date +%s) - t0 )) s"
if [ -z "$HOURS" ]; then
  HOURS=$(python3 -c "print(max(0.01, ($BUDGET_S - $FINAL_S - ($(date +%s) - $t0)) / 3600))")
fi
echo "training for $HOURS h"
extra=()
if [ -n "${GROW_P2:-}" ]; then
  [ -n "$FROM" ] || { echo "GROW_P2 needs FROM (a trained three-level checkpoint)" >&2; exit 2; }
  python3 -m training.grow_p2 "$FROM" "$OUT/grown_p2.pt"
  FROM=$OUT/grown_p2.pt
fi
[ -n "$FROM" ] && extra+=(--from "$FROM")
[ -n "$LR0" ] && extra+=(--lr0 "$LR0")
# Checkpoints travel back stripped to half-precision weights (a P2 training checkpoint with its optimizer is 28 MB,
# over the device tool's 16 MiB a file). Keep the newest in $OUT while training runs, so a cut-off run still returns
# weights; a checkpoint caught mid-write is skipped until the next round.
( while sleep 30; do
    for f in last best; do
      python3 -m training.strip_checkpoint "runs/gpu_train/weights/$f.pt" "$OUT/$f.pt" >/dev/null 2>&1 || true
    done
    cp -f runs/gpu_train/results.csv "$OUT"/ 2>/dev/null || true
  done ) >/dev/null 2>&1 &  # its own output closed, so a sleep it leaves behind holds no caller's pipe open
saver=$!
python3 -m training.train --data "$synth/data.yaml" "${extra[@]}" --epochs 300 --hours "$HOURS" --imgsz "$IMGSZ" \
  --batch "$BATCH" --workers "$(( $(nproc) - 2 ))" --cache ram --project runs --name gpu_train 2>&1 \
  | tee "$OUT/train.log" | grep -vE '^\s+[0-9]+/[0-9]+ .*it/s' || true
kill $saver || true
for f in last best; do python3 -m training.strip_checkpoint "runs/gpu_train/weights/$f.pt" "$OUT/$f.pt"; done
cp -f runs/gpu_train/results.csv runs/gpu_train/args.yaml "$OUT"/
echo "total $(( $(date +%s) - t0 )) s"
