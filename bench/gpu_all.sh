#!/usr/bin/env bash
# One GPU-host session, as run for docs/BENCHMARKS.md and models/README.md: the wgpu-vs-PyTorch
# training bench (bench/gpu.sh run), then the reference's pretraining (bench/gpu.sh pretrain) with
# as many epochs as fit PRETRAIN_S seconds at the measured speed. Copies the results, the export
# split in 9 MB parts (join: cat model.part.* > MODEL.onnx), into $OUT.
# Usage (GPU host, after bench/gpu.sh prepare here): OUT=DIR PRETRAIN_S=300 bench/gpu_all.sh
# MODEL=NAME pretrains another compiled-in model; BENCH_S=0 skips the bench (then EPOCHS, default 3).
set -uo pipefail
cd "$(dirname "$0")/.."
out=${OUT:?set OUT to a folder for the results}
budget=${PRETRAIN_S:-300}
export PYTHONUNBUFFERED=1
model=${MODEL:-deeplabv3plus_mobilenetv2}
if [ "${BENCH_S:-170}" != 0 ]; then
  timeout "${BENCH_S:-170}" bench/gpu.sh run 16 512 3 2>&1 | tee "$out/bench.txt"
else
  echo "bench skipped (BENCH_S=0)" > "$out/bench.txt"
fi
# images/s at 512² from the bench; 256² runs ~3.5x as many. Unknown: assume 20.
ips=$(sed -n 's/.*segtune wgpu *\([0-9.]*\) images.*/\1/p' "$out/bench.txt")
if [ -z "$ips" ] && [ -n "${EPOCHS:-}" ]; then
  epochs=$EPOCHS
else
  epochs=$(python3 -c "import sys; ips = float(sys.argv[1] or 20) * 3.5; print(max(2, min(40, int($budget * ips * 0.8 / 4400))))" "$ips")
fi
echo "pretraining: $epochs epochs (wgpu at 512²: ${ips:-unknown} images/s)" | tee -a "$out/bench.txt"
MODEL=$model WORK=/tmp/pretrain EPOCHS=$epochs timeout $((budget + 90)) bench/gpu.sh pretrain 2>&1 | tee "$out/pretrain.txt"
onnx=/tmp/pretrain/$model.onnx
if [ ! -f "$onnx" ] && [ -f /tmp/pretrain/run/checkpoints/latest ]; then
  echo "pretraining stopped early: exporting its last checkpoint" | tee -a "$out/pretrain.txt"
  bench/gpu.sh export /tmp/pretrain/run "$onnx" 2>&1 | tee -a "$out/pretrain.txt"
fi
if [ -f "$onnx" ]; then
  split -b 9M "$onnx" "$out/model.part."
elif [ -f /tmp/pretrain/run/checkpoints/latest ]; then # export here instead
  ckpt=/tmp/pretrain/run/checkpoints/$(cat /tmp/pretrain/run/checkpoints/latest)
  split -b 9M "$ckpt/model.bpk" "$out/bpk.part."
  cp "$ckpt/state.json" "$out/"
fi
cp /tmp/pretrain/run/metrics.csv /tmp/pretrain/run/config.json "$out/" 2>/dev/null
ls -la "$out"
