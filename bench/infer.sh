#!/usr/bin/env bash
# segtune infer against the Python pipeline (onnxruntime + Pillow + numpy) doing the same work on
# the same model, 200 JPEGs of 500x375, longer side 512, batch 4, same thread budget, twice:
# square letterboxes (512x512 inputs: `--square`, the export issue's pipeline) and segtune's
# default aspect-preserving inputs (512x384), each against the Python pipeline doing the same;
# then the int8 model (segtune quantize) the same way, and onnxruntime alone per image.
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
  printf '%s %s: ratio segtune / python: %.2fx (threads %s)\n' "$kind" "$pad" "$(echo "$seg / $pyips" | bc -l)" "$threads"
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
"$py" - "$model" "$work/int8.onnx" "$threads" <<'PY'
import statistics, sys, time
import numpy as np, onnxruntime as ort
for path in sys.argv[1:3]:
    so = ort.SessionOptions(); so.intra_op_num_threads = int(sys.argv[3])
    s = ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])
    x = {s.get_inputs()[0].name: np.random.default_rng(0).standard_normal((4, 3, 384, 512)).astype(np.float32)}
    for _ in range(2): s.run(None, x)
    t = []
    for _ in range(8):
        a = time.perf_counter(); s.run(None, x); t.append(time.perf_counter() - a)
    print(f"onnxruntime alone, {path}: {statistics.median(t) / 4 * 1000:.1f} ms per image")
PY
