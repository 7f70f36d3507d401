#!/usr/bin/env bash
# segtune quantize against onnxruntime.quantization's quantize_static (QDQ, per-channel int8
# weights, uint8 activations, MinMax) on the same fine-tuned model and the same 32 calibration
# images: the forward time of fp32 and of each int8 model in onnxruntime (one 512x384 input,
# median of 30 runs interleaved across the models, same threads), and each model's val mIoU by
# `segtune validate`, side by side. segtune-head-float is MinMax with the classifier Conv kept in
# float (`--exclude '/segmentation_head*'`).
# The model: `segtune demo`'s fine-tune (6 classes, 5 epochs, frozen backbone) and its data.
# Creates bench/.venv-quantize (onnxruntime 1.31.1, onnx, pillow, numpy, sympy) on first use.
# Usage: bench/quantize.sh [THREADS=nproc]
set -euo pipefail
cd "$(dirname "$0")/.."
threads=${1:-$(nproc)}
work=target/bench-quantize
cargo build -q
source bench/lib.sh
py=$(quantize_python)
seg=target/debug/segtune
rm -rf "$work" && mkdir -p "$work"
$seg demo --out "$work/demo" >/dev/null
model=$work/demo/model.onnx
data=$work/demo/data
train=("$PWD/$data"/JPEGImages/train_*.jpg)
calib=("${train[@]:0:32}")
printf '%s\n' "${calib[@]}" > "$work/calibration.txt"
$seg quantize "$model" --calibrate "${calib[@]}" --out "$work/segtune-minmax.onnx"
$seg quantize "$model" --calibrate "${calib[@]}" --out "$work/segtune-percentile.onnx" --method percentile
$seg quantize "$model" --calibrate "${calib[@]}" --out "$work/segtune-head-float.onnx" --exclude '/segmentation_head*'
"$py" bench/quantize_ort.py "$model" "$work/calibration.txt" "$work/ort-minmax.onnx" "$threads" 384 512 \
  "$work/segtune-minmax.onnx" "$work/segtune-percentile.onnx" "$work/segtune-head-float.onnx" | tee "$work/forward.txt"
ms() { grep "forward $1:" "$work/forward.txt" | sed -E 's/.*: ([0-9.]+) ms/\1/'; }
miou() { $seg validate "$1" --data "$data" --threads "$threads" --json "$work/v.json" >/dev/null
  "$py" -c "import json; print(json.load(open('$work/v.json'))['miou'])"; }
fp_ms=$(ms "$model"); fp_miou=$(miou "$model")
printf '%-28s %10s %8s %10s %10s\n' model "forward ms" speedup "val mIoU" "Δ points"
printf '%-28s %10.2f %7.2fx %10.4f %10s\n' fp32 "$fp_ms" 1 "$fp_miou" -
for m in segtune-minmax segtune-percentile segtune-head-float ort-minmax; do
  t=$(ms "$work/$m.onnx"); v=$(miou "$work/$m.onnx")
  printf '%-28s %10.2f %7.2fx %10.4f %+10.2f\n' "$m" "$t" "$(echo "$fp_ms / $t" | bc -l)" "$v" "$(echo "($v - $fp_miou) * 100" | bc -l)"
done
echo "threads $threads, $(nproc) cores, $(date -u +%F)"
