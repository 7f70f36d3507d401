#!/usr/bin/env bash
# (b) `--freeze backbone --bn frozen` per compiled-in model: the median training step with the
# frozen backbone in onnxruntime (`--backbone-runtime onnxruntime`) against the same run with it
# in burn (`--backbone-runtime burn`), on the same synthetic set, ROUNDS times interleaved (this
# machine's speed drifts). The peer is segtune's own burn path: the Keras and torchvision
# families have no PyTorch twin here (bench/train_vs_torch.sh compares the smp model to PyTorch).
# A run that fails (e.g. a NaN loss: LR=1e-5 for the random-weight Xception-65) prints its error.
# Usage: [LR=0.01] bench/backbone_runtime.sh [BATCH=2] [CROP=256] [STEPS=10] [ROUNDS=2] [MODEL...]
#   (default: every model in models/, each compiled in; build.rs splits them all)
set -euo pipefail
cd "$(dirname "$0")/.."
batch=${1:-2}; crop=${2:-256}; steps=${3:-10}; rounds=${4:-2}
shift $(( $# < 4 ? $# : 4 ))
cargo build -q
bin=target/debug/segtune
models=("$@")
[ ${#models[@]} -gt 0 ] || for f in models/*.onnx; do models+=("$(basename "$f" .onnx)"); done
work=target/bench-backbone-runtime
rm -rf "$work" && mkdir -p "$work"
"$bin" synth "$work/data" --classes 6 --train $((batch * (steps + 1))) --val 2 --size "$crop" --seed 1 >/dev/null
ms() { python3 -c 'import json,sys; print("%.1f" % json.load(open(sys.argv[1]))[0]["step_ms_median"])' "$1"; }
echo "batch $batch, crop $crop, $steps steps, $(nproc) threads, $(date -u +%FT%TZ)"
printf '%-34s %-12s %-12s %s\n' model "burn ms" "onnxrt ms" "ratio onnxrt/burn"
for m in "${models[@]}"; do
  for r in $(seq "$rounds"); do
    declare -A t=()
    for rt in burn onnxruntime; do
      rm -rf "$work/run"
      if ! "$bin" train --model "$m" --data "$work/data" --out "$work/run" --classes 6 --epochs 1 --batch "$batch" \
        --crop "$crop" --lr "${LR:-0.01}" --freeze backbone --bn frozen --backbone-runtime "$rt" >/dev/null 2>"$work/stderr"; then
        echo "$m, --backbone-runtime $rt: $(tail -n 1 "$work/stderr")"
        continue 3
      fi
      t[$rt]=$(ms "$work/run/metrics.json")
    done
    printf '%-34s %-12s %-12s %.2fx\n' "$m" "${t[burn]}" "${t[onnxruntime]}" "$(python3 -c "print(${t[onnxruntime]} / ${t[burn]})")"
  done
done
