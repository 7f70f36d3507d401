#!/usr/bin/env bash
# Does the shipped model transfer? The DeepLab fine-tuning recipe (--freeze backbone --bn frozen,
# a new 6-class head) from the shipped pretrained reference, against the same run from the
# random-weight reference it replaced (git history, commit 0e541eb: same graph, seeded random
# weights, BN at its initial statistics). The set is a different label set from the pretraining
# corpus: `segtune synth --style shapes` (6 classes, disc/square/triangle/diamond, other hues), 128².
# The recipe is `segtune demo`'s (lr 0.02, batch 8, crop 128, poly, seed 0). Prints val mIoU per
# epoch of both runs. Goal: the shipped model >= 0.80 within 5 epochs on the CPU.
# Usage: bench/transfer.sh [EPOCHS=5] [WORKDIR=target/bench-transfer]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-5}
work=${2:-target/bench-transfer}
cargo build -q
bin=target/debug/segtune
rm -rf "$work" && mkdir -p "$work"
git show 0e541eb:models/deeplabv3plus_mobilenetv2.onnx > "$work/random.onnx"
"$bin" synth "$work/data" --style shapes --classes 6 --train 200 --val 50 --size 128 --seed 1
recipe=(--data "$work/data" --classes 6 --epochs "$epochs" --batch 8 --crop 128 --lr 0.02
  --freeze backbone --bn frozen --seed 0)
for start in pretrained random; do
  weights=()
  [ "$start" = random ] && weights=(--weights "$work/random.onnx")
  t=$(date +%s)
  "$bin" train "${recipe[@]}" "${weights[@]}" --out "$work/$start"
  echo "$start: $(( $(date +%s) - t )) s wall for $epochs epochs (training + evaluation)"
done
python3 bench/side_by_side.py pretrained="$work/pretrained" random="$work/random"
