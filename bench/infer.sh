#!/usr/bin/env bash
# segtune infer against the Python pipeline (onnxruntime + Pillow + numpy) doing the same work on
# the same model, 200 JPEGs of 500x375, longer side 512, batch 4, same thread budget, twice:
# square letterboxes (512x512 inputs: `--square`, the export issue's pipeline) and segtune's
# default aspect-preserving inputs (512x384), each against the Python pipeline doing the same.
# Creates bench/.venv-infer (onnxruntime 1.31.1, pillow, numpy) on first use.
# Usage: bench/infer.sh [MODEL=models/deeplabv3plus_mobilenetv2.onnx]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/deeplabv3plus_mobilenetv2.onnx}
threads=$(nproc)
work=target/bench-infer
cargo build -q
[ -x bench/.venv-infer/bin/python ] || { python3 -m venv bench/.venv-infer && bench/.venv-infer/bin/pip install -q onnxruntime==1.31.1 pillow numpy; }
py=bench/.venv-infer/bin/python
rm -rf "$work" && mkdir -p "$work/images"
"$py" - "$work/images" <<'PY'
import sys, numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for i in range(200):
    a = (rng.random((375, 500, 3)) * 60 + rng.integers(40, 180, 3)).astype(np.uint8)
    y, x = rng.integers(0, 300), rng.integers(0, 400)
    a[y:y + 75, x:x + 100] = rng.integers(0, 255, 3)
    Image.fromarray(a).save(f"{sys.argv[1]}/img_{i:03d}.jpg", quality=90)
PY
for pad in square rect; do
  flag=(); [ $pad = square ] && flag=(--square)
  s=$(date +%s.%N)
  target/debug/segtune infer "$model" "$work/images" --out "$work/segtune-$pad" --batch 4 --size 512 --threads "$threads" "${flag[@]}" >/dev/null
  e=$(date +%s.%N)
  seg=$(echo "200 / ($e - $s)" | bc -l)
  printf '%s: segtune: 200 images in %.2f s = %.2f images/s\n' $pad "$(echo "$e - $s" | bc -l)" "$seg"
  pyout=$("$py" bench/infer_python.py "$model" "$work/images" "$work/python-$pad" 512 4 "$threads" $pad)
  echo "$pad: $pyout"
  pyips=$(echo "$pyout" | sed -E 's/.*= ([0-9.]+) images\/s/\1/')
  printf '%s: ratio segtune / python: %.2fx (threads %s)\n' $pad "$(echo "$seg / $pyips" | bc -l)" "$threads"
  [ $pad = square ] && square_py=$pyips
  "$py" - "$work/segtune-$pad" "$work/python-$pad" <<'PY'
import os, sys
import numpy as np
from PIL import Image
same = total = 0
for f in sorted(f for f in os.listdir(sys.argv[2]) if f.endswith(".png")):
    a, b = (np.asarray(Image.open(os.path.join(d, f))) for d in sys.argv[1:3])
    same, total = same + int((a == b).sum()), total + a.size
print(f"masks: segtune and python agree on {100 * same / total:.2f} % of pixels")
PY
done
printf 'segtune (rect) / python (square, the export issue pipeline): %.2fx\n' "$(echo "$seg / $square_py" | bc -l)"
