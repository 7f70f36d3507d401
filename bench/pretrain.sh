#!/usr/bin/env bash
# Pretrains a compiled-in model (default the shipped reference, models/deeplabv3plus_mobilenetv2.onnx) on segtune's synthetic
# 21-class corpus with BatchNorm in train mode, then exports it with `segtune export` into the
# same graph. The corpus is made here, deterministically; it is not committed.
#
#   bench/pretrain.sh                       # CPU, the defaults below
#   DEVICE=wgpu SEGTUNE=bench/gpu/segtune bench/pretrain.sh    # a GPU through wgpu (Vulkan)
#
# Settings (environment): MODEL (compiled-in model, default deeplabv3plus_mobilenetv2), SEGTUNE binary (target/debug/segtune, built if missing), DEVICE cpu|wgpu,
# EPOCHS 12, BATCH 16, CROP 256, LR 0.02, TRAIN 4000 and VAL 400 images (256²), SEED 2026,
# WORK target/pretrain, WEIGHTS (an ONNX checkpoint to continue from; default the compiled-in
# model). Writes WORK/run (the training run: config.json, metrics.csv, curves.png) and
# WORK/MODEL.onnx, and prints its sha256. To ship it:
#   cp WORK/deeplabv3plus_mobilenetv2.onnx models/ && python scripts/make_fixtures.py
#
# The shipped model was made in two stages (models/README.md):
#   1. on an H200:  DEVICE=wgpu SEGTUNE=bench/gpu/segtune EPOCHS=2 bench/pretrain.sh  (cut after epoch 1)
#   2. on 2 CPU cores: WEIGHTS=stage1.onnx WORK=target/pretrain2 EPOCHS=4 CROP=128 LR=0.01 SEED=2027 bench/pretrain.sh
set -euo pipefail
cd "$(dirname "$0")/.."
SEGTUNE=${SEGTUNE:-target/debug/segtune}; MODEL=${MODEL:-deeplabv3plus_mobilenetv2}
DEVICE=${DEVICE:-cpu}; EPOCHS=${EPOCHS:-12}; BATCH=${BATCH:-16}; CROP=${CROP:-256}; LR=${LR:-0.02}
TRAIN=${TRAIN:-4000}; VAL=${VAL:-400}; SEED=${SEED:-2026}; WORK=${WORK:-target/pretrain}
if [ ! -x "$SEGTUNE" ]; then cargo build -q; fi
mkdir -p "$WORK"
start=$(date +%s)
if [ ! -f "$WORK/corpus/ImageSets/Segmentation/val.txt" ]; then
  "$SEGTUNE" synth "$WORK/corpus" --style corpus --classes 21 --train "$TRAIN" --val "$VAL" --size 256 --seed "$SEED"
fi
if [ -f "$WORK/run/checkpoints/latest" ]; then
  "$SEGTUNE" train --resume "$WORK/run"
else
  weights=()
  [ -n "${WEIGHTS:-}" ] && weights=(--weights "$WEIGHTS")
  "$SEGTUNE" train --data "$WORK/corpus" --out "$WORK/run" --epochs "$EPOCHS" --batch "$BATCH" --crop "$CROP" \
    --lr "$LR" --bn train --freeze none --seed "$SEED" --device "$DEVICE" --model "$MODEL" "${weights[@]}"
fi
"$SEGTUNE" export "$WORK/run" --out "$WORK/$MODEL.onnx"
end=$(date +%s)
echo "pretraining took $((end - start)) s on $DEVICE ($(nproc) cores)"
sha256sum "$WORK/$MODEL.onnx"
