#!/usr/bin/env bash
# Why onnxruntime is slower inside `segtune infer` than alone: the same 512x384 model inputs
# (--size 512, batch 4, same threads) from 200 full-size JPEGs (500x375: decode, resize, and an
# upsample + PNG of 500x375 per image running beside onnxruntime) and from 200 thumbnails
# (50x38 PNGs: the same inputs after the upscale, almost nothing to decode or write), against
# onnxruntime alone on the same batches. If the side stages are what slow it, onnxruntime's time
# per image on thumbnails is close to its time alone.
# Uses bench/.venv-infer (bench/infer.sh makes it). Usage: bench/infer_contention.sh [MODEL]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/deeplabv3plus_mobilenetv2.onnx}
threads=$(nproc)
work=target/bench-contention
cargo build -q
[ -x bench/.venv-infer/bin/python ] || { python3 -m venv bench/.venv-infer && bench/.venv-infer/bin/pip install -q onnxruntime==1.31.1 pillow numpy; }
py=bench/.venv-infer/bin/python
rm -rf "$work" && mkdir -p "$work/full" "$work/thumb"
"$py" - "$work" <<'PY'
import sys, numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for i in range(200):
    a = (rng.random((375, 500, 3)) * 60 + rng.integers(40, 180, 3)).astype(np.uint8)
    Image.fromarray(a).save(f"{sys.argv[1]}/full/img_{i:03d}.jpg", quality=90)
    Image.fromarray(a).resize((50, 38)).save(f"{sys.argv[1]}/thumb/img_{i:03d}.png")
PY
for kind in full thumb; do
  target/debug/segtune infer "$model" "$work/$kind" --out "$work/out-$kind" --batch 4 --size 512 --threads "$threads" >/dev/null
  "$py" -c "import json; s = json.load(open('$work/out-$kind/summary.json')); print(f\"$kind: onnxruntime {s['run_seconds'] / 200 * 1000:.1f} ms per image inside infer, whole run {s['seconds']:.1f} s\")"
done
"$py" - "$model" "$threads" <<'PY'
import statistics, sys, time
import numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = int(sys.argv[2])
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
x = {s.get_inputs()[0].name: np.random.default_rng(0).standard_normal((4, 3, 384, 512)).astype(np.float32)}
for _ in range(2): s.run(None, x)
t = []
for _ in range(12):
    a = time.perf_counter(); s.run(None, x); t.append(time.perf_counter() - a)
print(f"alone: onnxruntime {statistics.median(t) / 4 * 1000:.1f} ms per image (Python, same batches and threads)")
PY
echo "$(nproc) cores, $(date -u +%F)"
