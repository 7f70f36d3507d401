#!/usr/bin/env bash
# onnxruntime's time per image inside `segtune infer` against onnxruntime alone on the same
# batches (4 × 3 × 384 × 512, the same threads): alone through segtune's own session
# (bench/ort_alone.rs, opened as infer opens it, spin-waiting off as in infer) and alone in
# Python. infer: 200 JPEGs of 500×375, --size 512 --batch 4; fp32 and the int8 model (segtune
# quantize on 32 of them). Three interleaved rounds (this machine's speed drifts by up to 1.5×
# between minutes), medians printed. With BEFORE, a segtune binary built before the change
# under test, its infer runs in the same rounds.
# Uses bench/.venv-infer (made here on first use). Usage: bench/infer_contention.sh [MODEL] [BEFORE]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/deeplabv3plus_mobilenetv2.onnx}
before=${2:-}
threads=$(nproc)
work=target/bench-contention
cargo build -q && cargo build -q --example ort_alone
[ -x bench/.venv-infer/bin/python ] || { python3 -m venv bench/.venv-infer && bench/.venv-infer/bin/pip install -q onnxruntime==1.31.1 pillow numpy; }
py=bench/.venv-infer/bin/python
rm -rf "$work" && mkdir -p "$work/images"
"$py" - "$work" <<'PY'
import sys, numpy as np
from PIL import Image
rng = np.random.default_rng(0)
for i in range(200):
    a = (rng.random((375, 500, 3)) * 60 + rng.integers(40, 180, 3)).astype(np.uint8)
    y, x = rng.integers(0, 300), rng.integers(0, 400)
    a[y:y + 75, x:x + 100] = rng.integers(0, 255, 3)
    Image.fromarray(a).save(f"{sys.argv[1]}/images/img_{i:03d}.jpg", quality=90)
rng.standard_normal((4, 3, 384, 512)).astype(np.float32).tofile(f"{sys.argv[1]}/batch.f32")
PY
target/debug/segtune quantize "$model" --calibrate "$work/images" --images 32 --out "$work/int8.onnx" >/dev/null
cat > "$work/alone.py" <<'PY'
import statistics, sys, time
import numpy as np, onnxruntime as ort
so = ort.SessionOptions(); so.intra_op_num_threads = int(sys.argv[3])
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
x = {s.get_inputs()[0].name: np.fromfile(sys.argv[2], dtype=np.float32).reshape(4, 3, 384, 512)}
for _ in range(2): s.run(None, x)
t = []
for _ in range(12):
    a = time.perf_counter(); s.run(None, x); t.append(time.perf_counter() - a)
print(f"{statistics.median(t) / 4 * 1000:.1f}")
PY
inside() { # binary model out: onnxruntime ms per image inside infer, and images/s
  "$1" infer "$2" "$work/images" --out "$3" --batch 4 --size 512 --threads "$threads" >/dev/null
  "$py" -c "import json; s = json.load(open('$3/summary.json')); print(f\"{s['run_seconds'] / 200 * 1000:.1f} {s['images_per_s']:.2f}\")"
}
: > "$work/results"
for round in 1 2 3; do
  for kind in fp32 int8; do
    m=$model; [ $kind = int8 ] && m=$work/int8.onnx
    echo "$kind inside $(inside target/debug/segtune "$m" "$work/out")" >> "$work/results"
    [ -n "$before" ] && echo "$kind before $(inside "$before" "$m" "$work/out-before")" >> "$work/results"
    echo "$kind segtune-alone $(target/debug/examples/ort_alone "$m" "$work/batch.f32" 4 3 384 512 "$threads" 0 view 12)" >> "$work/results"
    echo "$kind python-alone $("$py" "$work/alone.py" "$m" "$work/batch.f32" "$threads")" >> "$work/results"
  done
done
"$py" - "$work/results" <<'PY'
import statistics, sys
rows = {}
for line in open(sys.argv[1]):
    kind, what, *v = line.split()
    rows.setdefault((kind, what), []).append([float(x) for x in v])
for kind in ("fp32", "int8"):
    med = {w: [statistics.median(c) for c in zip(*r)] for (k, w), r in rows.items() if k == kind}
    alone = med["python-alone"][0]
    for what, v in med.items():
        rate = f", whole run {v[1]:.2f} images/s" if len(v) > 1 else ""
        print(f"{kind} {what}: onnxruntime {v[0]:.1f} ms per image ({v[0] / alone:.2f}x Python alone){rate}"
              f"  [rounds: {', '.join(f'{r[0]:.1f}' for r in rows[(kind, what)])}]")
PY
echo "$(nproc) cores, $(date -u +%F)"
