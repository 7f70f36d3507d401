#!/usr/bin/env bash
# segtune infer against the Python pipeline (onnxruntime + Pillow + numpy) doing the same work on
# the same model, 200 JPEGs of 500x375, longer side 512, batch 4, same thread budget, twice:
# square letterboxes (512x512 inputs: `--square`, the export issue's pipeline) and segtune's
# default aspect-preserving inputs (512x384), each against the Python pipeline doing the same;
# then the int8 model (segtune quantize) the same way, and onnxruntime alone per image.
# Creates bench/.venv-infer (onnxruntime 1.31.1, pillow, numpy; bench/lib.sh) on first use.
# Usage: bench/infer.sh [MODEL=models/deeplabv3plus_mobilenetv2.onnx]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/deeplabv3plus_mobilenetv2.onnx}
threads=$(nproc)
work=target/bench-infer
cargo build -q
source bench/lib.sh
py=$(infer_python)
rm -rf "$work"
"$py" bench/infer_images.py "$work/images" "$work/batch.f32"
# The int8 model: segtune quantize on 32 of the bench images (bench/quantize.sh compares it
# with onnxruntime's own tool).
target/debug/segtune quantize "$model" --calibrate "$work/images" --images 32 --out "$work/int8.onnx" >/dev/null
compare() { # kind, model, pad: segtune infer and the Python pipeline on the same model and inputs
  local kind=$1 m=$2 pad=$3 flag=()
  [ "$pad" = square ] && flag=(--square)
  local s e
  s=$(date +%s.%N)
  target/debug/segtune infer "$m" "$work/images" --out "$work/segtune-$kind-$pad" --batch 4 --size 512 --threads "$threads" "${flag[@]}" >/dev/null
  e=$(date +%s.%N)
  seg=$(echo "200 / ($e - $s)" | bc -l)
  run=$("$py" -c "import json; print(json.load(open('$work/segtune-$kind-$pad/summary.json'))['run_seconds'] / 200 * 1000)")
  printf '%s %s: segtune: 200 images in %.2f s = %.2f images/s (onnxruntime %.1f ms per image)\n' "$kind" "$pad" "$(echo "$e - $s" | bc -l)" "$seg" "$run"
  pyout=$("$py" bench/infer_python.py "$m" "$work/images" "$work/python-$kind-$pad" 512 4 "$threads" "$pad")
  echo "$kind $pad: $pyout"
  pyips=$(echo "$pyout" | sed -E 's/.*= ([0-9.]+) images\/s/\1/')
  pyrun=$(echo "$pyout" | sed -E 's/.*onnxruntime ([0-9.]+) ms per image.*/\1/')
  printf '%s %s: ratio segtune / python: %.2fx (threads %s)\n' "$kind" "$pad" "$(echo "$seg / $pyips" | bc -l)" "$threads"
  printf '%s %s: onnxruntime per image, inside segtune / inside the Python pipeline: %.2fx\n' "$kind" "$pad" "$(echo "$run / $pyrun" | bc -l)"
  "$py" - "$work/segtune-$kind-$pad" "$work/python-$kind-$pad" <<'PY'
import os, sys
import numpy as np
from PIL import Image
same = total = 0
for f in sorted(f for f in os.listdir(sys.argv[2]) if f.endswith(".png")):
    a, b = (np.asarray(Image.open(os.path.join(d, f))) for d in sys.argv[1:3])
    same, total = same + int((a == b).sum()), total + a.size
print(f"masks: segtune and python agree on {100 * same / total:.2f} % of pixels")
PY
}
compare fp32 "$model" square; square_py=$pyips
compare fp32 "$model" rect; rect_seg=$seg; rect_py=$pyips
printf 'segtune (rect) / python (square, the export issue pipeline): %.2fx\n' "$(echo "$rect_seg / $square_py" | bc -l)"
compare int8 "$work/int8.onnx" rect
printf 'segtune int8 (rect) / python fp32 (rect, the same pipeline): %.2fx\n' "$(echo "$seg / $rect_py" | bc -l)"
# onnxruntime alone, batches of 4 at 512x384 (what infer runs), the same threads, no other work.
for m in "$model" "$work/int8.onnx"; do
  echo "onnxruntime alone, $m: $("$py" bench/ort_alone_python.py "$m" "$work/batch.f32" "$threads" 8) ms per image"
done
