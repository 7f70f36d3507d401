#!/usr/bin/env bash
# Proof that segtune's fine-tune learns from scratch: synthesizes a 6-class VOC-layout set (128²,
# 200 train, 50 val), trains the random-weight reference (commit 0e541eb's models/ file: seeded
# random weights, BN at its initial statistics; the PyTorch peer builds the same weights from the
# seed) with --bn train on the CPU and prints val mIoU per epoch (the goal: >= 0.85 within 15
# minutes on a 2-core machine). bench/transfer.sh measures the shipped pretrained model instead.
# With PEER=1 it also trains the PyTorch peer (smp DeepLabV3Plus, same set, same recipe) in a venv
# it creates under bench/.venv (torch is never needed by segtune itself).
# Usage: bench/finetune.sh [EPOCHS=20] [WORKDIR=target/bench-finetune]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-20}
work=${2:-target/bench-finetune}
cargo build -q
bin=target/debug/segtune
rm -rf "$work" && mkdir -p "$work"
"$bin" synth "$work/data" --classes 6 --train 200 --val 50 --size 128 --seed 1
git show 0e541eb:models/deeplabv3plus_mobilenetv2.onnx > "$work/random.onnx"
start=$(date +%s)
"$bin" train --data "$work/data" --out "$work/run" --weights "$work/random.onnx" --classes 6 --epochs "$epochs" --batch 8 --crop 128 \
  --lr 0.02 --bn train --seed 0
echo "segtune: $(( $(date +%s) - start )) s wall for $epochs epochs (training + evaluation)"
if [ "${PEER:-0}" = 1 ]; then
  [ -x bench/.venv/bin/python ] || { python3 -m venv bench/.venv && bench/.venv/bin/pip install -q torch torchvision segmentation-models-pytorch==0.6.0 pillow numpy; }
  start=$(date +%s)
  bench/.venv/bin/python bench/finetune_torch.py "$work/data" "$epochs"
  echo "PyTorch: $(( $(date +%s) - start )) s wall for $epochs epochs"
fi
