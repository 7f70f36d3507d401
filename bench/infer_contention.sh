#!/usr/bin/env bash
# onnxruntime's time per image inside `segtune infer` against onnxruntime alone on the same
# batches (4 × 3 × 384 × 512, the same threads): alone through segtune's own session
# (bench/ort_alone.rs, opened as infer opens it: spin-waiting off, the final Resize folded into
# the mask's upsampling; and with the full graph) and alone in Python (the full graph). infer: 200 JPEGs of 500×375, --size 512 --batch 4; fp32 and the int8 model (segtune
# quantize on 32 of them). Three interleaved rounds (this machine's speed drifts by up to 1.5×
# between minutes), medians printed. With BEFORE, a segtune binary built before the change
# under test, its infer runs in the same rounds.
# Uses bench/.venv-infer (bench/lib.sh, made on first use); inputs by bench/infer_images.py,
# Python's onnxruntime alone by bench/ort_alone_python.py. Usage: bench/infer_contention.sh [MODEL] [BEFORE]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/deeplabv3plus_mobilenetv2.onnx}
before=${2:-}
threads=$(nproc)
work=target/bench-contention
cargo build -q && cargo build -q --example ort_alone
source bench/lib.sh
py=$(infer_python)
rm -rf "$work"
"$py" bench/infer_images.py "$work/images" "$work/batch.f32"
target/debug/segtune quantize "$model" --calibrate "$work/images" --images 32 --out "$work/int8.onnx" >/dev/null
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
    echo "$kind segtune-alone $(target/debug/examples/ort_alone "$m" "$work/batch.f32" 4 3 384 512 "$threads" 0 view 12 1)" >> "$work/results"
    echo "$kind segtune-alone-full-graph $(target/debug/examples/ort_alone "$m" "$work/batch.f32" 4 3 384 512 "$threads" 0 view 12 0)" >> "$work/results"
    echo "$kind python-alone $("$py" bench/ort_alone_python.py "$m" "$work/batch.f32" "$threads")" >> "$work/results"
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
