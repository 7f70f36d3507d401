#!/usr/bin/env bash
# Per-epoch evaluation during `segtune train` on the CPU: in onnxruntime (the default since
# session 7: the model's weights written into its graph each epoch) against burn's forward
# (`SEGTUNE_EVAL_IN_BURN=1`, the same binary), interleaved, for (a) full fine-tune (--bn train)
# and (b) --freeze backbone --bn frozen. A 1-epoch run of 2 steps on a synthetic set with VAL
# validation images of SIZE²; the time is the epoch's seconds after training (evaluation,
# snapshot and checkpoint; `metrics.json`: seconds - images / images_per_s). The val loss of the
# two must agree (printed).
# Usage: bench/eval_runtime.sh [VAL=60] [SIZE=512] [ROUNDS=3]
set -euo pipefail
cd "$(dirname "$0")/.."
val=${1:-60}; size=${2:-512}; rounds=${3:-3}
cargo build -q
bin=target/debug/segtune
work=target/bench-eval-runtime
rm -rf "$work" && mkdir -p "$work"
"$bin" synth "$work/data" --classes 6 --train 8 --val "$val" --size "$size" --seed 1 >/dev/null
after() { python3 -c 'import json,sys; m=json.load(open(sys.argv[1]))[0]; print("%.2f %.6f" % (m["seconds"] - 8 / m["images_per_s"], m["val_loss"]))' "$1"; }
echo "$val val images of ${size}², $(nproc) threads, $(date -u +%FT%TZ)"
printf '%-10s %-14s %-14s %-8s %s\n' config "burn s" "onnxrt s" ratio "val loss (burn / onnxruntime)"
for config in full frozen; do
  flags=(--bn train)
  [ "$config" = frozen ] && flags=(--freeze backbone --bn frozen)
  for r in $(seq "$rounds"); do
    declare -A t=() l=()
    for rt in burn onnxruntime; do
      rm -rf "$work/run"
      SEGTUNE_EVAL_IN_BURN=$([ $rt = burn ] && echo 1 || echo 0) "$bin" train --data "$work/data" --out "$work/run" \
        --classes 6 --epochs 1 --batch 4 --crop 256 --lr 0.01 "${flags[@]}" >/dev/null
      read -r t[$rt] l[$rt] < <(after "$work/run/metrics.json")
    done
    printf '%-10s %-14s %-14s %-8s %s / %s\n' "$config" "${t[burn]}" "${t[onnxruntime]}" \
      "$(python3 -c "print('%.2fx' % (${t[onnxruntime]} / ${t[burn]}))")" "${l[burn]}" "${l[onnxruntime]}"
  done
done
