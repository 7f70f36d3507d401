#!/usr/bin/env bash
# The seed's scenario on the Keras family: a Keras DeepLabv3+ (the committed MobileNetV2 option,
# converted by tf2onnx, NHWC, [-1, 1]) fine-tuned on a synthetic VOC-layout set (`segtune synth
# --style shapes`, 6 classes, 400 train / 100 val, 128²), two ways:
#   fixed: DeepLab's recipe: --freeze backbone --bn frozen, masked CE (255 ignored), SGD momentum
#          0.9 with the poly(0.9) schedule, lr 0.01, batch 8;
#   seed:  the seed's recipe: the checkpoint ends in a softmax (scripts/seed_softmax.py), lr 1e-5,
#          a "frozen" backbone whose BN layers still train, at batch 2.
# `segtune doctor` runs on both setups first (the seed's must flag the softmax, the learning rate
# and train-mode BN at batch 2; the fixed one must have no FAIL), then both train for EPOCHS
# epochs, and the val mIoU of each epoch is printed side by side. segtune trains on the logits
# before a softmax, so the seed's curve shows the learning rate and BN, not the double softmax.
# Needs python3 with `onnx` (a venv with onnx==1.17.0 is made in target/ when it is missing).
# Usage: bench/keras_seed.sh [EPOCHS=5] [WORKDIR=target/bench-keras-seed]
set -euo pipefail
cd "$(dirname "$0")/.."
epochs=${1:-5}
work=${2:-target/bench-keras-seed}
model=keras_deeplabv3plus_mobilenetv2
cargo build -q
bin=target/debug/segtune
rm -rf "$work" && mkdir -p "$work"
py=python3
if ! $py -c 'import onnx' 2>/dev/null; then
  [ -x target/venv-onnx/bin/python ] || { python3 -m venv target/venv-onnx && target/venv-onnx/bin/pip install -q onnx==1.17.0; }
  py=target/venv-onnx/bin/python
fi
$py scripts/seed_softmax.py "models/$model.onnx" "$work/softmax.onnx"
"$bin" synth "$work/data" --style shapes --classes 6 --train 400 --val 100 --size 128 --seed 1
base=(--model "$model" --data "$work/data" --classes 6 --epochs "$epochs" --crop 128 --seed 0 --freeze backbone)
fixed=("${base[@]}" --bn frozen --lr 0.01 --batch 8)
seed=("${base[@]}" --weights "$work/softmax.onnx" --bn train --lr 1e-5 --batch 2)
echo "== segtune doctor, the seed's recipe"
"$bin" doctor "${seed[@]}" --json "$work/doctor_seed.json" || true
echo "== segtune doctor, the fixed recipe"
"$bin" doctor "${fixed[@]}" --json "$work/doctor_fixed.json" || true
for run in fixed seed; do
  t=$(date +%s)
  if [ $run = fixed ]; then "$bin" train "${fixed[@]}" --out "$work/$run"; else "$bin" train "${seed[@]}" --out "$work/$run"; fi
  echo "$run: $(( $(date +%s) - t )) s wall for $epochs epochs (training + evaluation)"
done
python3 bench/side_by_side.py fixed="$work/fixed" seed="$work/seed"
