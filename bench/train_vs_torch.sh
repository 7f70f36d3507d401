#!/usr/bin/env bash
# Training step time and peak memory of `segtune train` against PyTorch, same model (smp
# DeepLabV3Plus mobilenet_v2, 6 classes), same batch, crop, optimizer and loss, same threads:
#   (a) full fine-tune, BN in train mode;  (b) --freeze backbone --bn frozen.
# Both sides print the median ms of one optimizer step: segtune's `step_ms_median` of a 1-epoch run
# of STEPS+1 steps (end of one step to the end of the next: the wait for the loader and for a
# frozen backbone running ahead in onnxruntime included, evaluation excluded), PyTorch's over
# STEPS after 3 warm-ups on a fixed batch.
# PyTorch comes from a venv this script creates (bench/.venv-torch), never from CI.
# With UPSTREAM=1, segtune also runs with burn-flex's upstream convolution backward passes
# (SEGTUNE_UPSTREAM_FLEX=1, vendor/burn-flex/VENDORED.md): the patch's effect, same binary.
# (b) runs its frozen backbone in onnxruntime (`--backbone-runtime auto`); a third row runs (b) with
# the backbone in burn (`--backbone-runtime burn`), against the same PyTorch measurement.
# Usage: [UPSTREAM=1] bench/train_vs_torch.sh [BATCH=2] [CROP=256] [STEPS=10]
set -euo pipefail
cd "$(dirname "$0")/.."
batch=${1:-2}; crop=${2:-256}; steps=${3:-10}
threads=$(nproc)
py=${TORCH_PYTHON:-bench/.venv-torch/bin/python}
if [ ! -x "$py" ]; then
  python3 -m venv bench/.venv-torch && bench/.venv-torch/bin/pip install -q torch segmentation-models-pytorch==0.6.0
fi
cargo build -q
work=target/bench-train
rm -rf "$work" && mkdir -p "$work"
target/debug/segtune synth "$work/data" --classes 6 --train $((batch * (steps + 1))) --val 2 --size "$crop" --seed 1 >/dev/null
peak() { # peak RSS (MiB) of a command, from getrusage of the child
  python3 -c 'import resource, subprocess, sys; subprocess.run(sys.argv[1:], check=True, stdout=subprocess.DEVNULL); print(resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss // 1024)' "$@"
}
upstream=${UPSTREAM:-0}
printf '%-26s %12s %12s %8s %14s %14s' config "segtune ms" "PyTorch ms" ratio "segtune MiB" "PyTorch MiB"
[ "$upstream" = 1 ] && printf ' %14s %8s' "upstream ms" "ratio"
echo
ms_per_step() { python3 -c 'import json,sys; print("%.1f" % json.load(open(sys.argv[1]))[0]["step_ms_median"])' "$1"; }
for config in full frozen; do
  flags=(--bn train)
  [ "$config" = frozen ] && flags=(--freeze backbone --bn frozen)
  rm -rf "$work/run_$config"
  seg_mib=$(peak target/debug/segtune train --data "$work/data" --out "$work/run_$config" --classes 6 --epochs 1 \
    --batch "$batch" --crop "$crop" --lr 0.01 "${flags[@]}")
  seg_ms=$(ms_per_step "$work/run_$config/metrics.json")
  torch_ms=$("$py" bench/train_step_torch.py "$config" "$batch" "$crop" "$steps" "$threads")
  torch_mib=$(peak "$py" bench/train_step_torch.py "$config" "$batch" "$crop" 3 "$threads")
  printf '%-26s %12s %12s %7.2fx %14s %14s' "$config (batch $batch, $crop²)" "$seg_ms" "$torch_ms" \
    "$(python3 -c "print($seg_ms / $torch_ms)")" "$seg_mib" "$torch_mib"
  if [ "$upstream" = 1 ]; then
    rm -rf "$work/up_$config"
    SEGTUNE_UPSTREAM_FLEX=1 target/debug/segtune train --data "$work/data" --out "$work/up_$config" \
      --classes 6 --epochs 1 --batch "$batch" --crop "$crop" --lr 0.01 "${flags[@]}" >/dev/null
    up_ms=$(ms_per_step "$work/up_$config/metrics.json")
    printf ' %14s %7.2fx' "$up_ms" "$(python3 -c "print($up_ms / $torch_ms)")"
  fi
  echo
  if [ "$config" = frozen ]; then
    rm -rf "$work/run_burn_backbone"
    burn_mib=$(peak target/debug/segtune train --data "$work/data" --out "$work/run_burn_backbone" --classes 6 --epochs 1 \
      --batch "$batch" --crop "$crop" --lr 0.01 "${flags[@]}" --backbone-runtime burn)
    burn_ms=$(ms_per_step "$work/run_burn_backbone/metrics.json")
    printf '%-26s %12s %12s %7.2fx %14s %14s\n' "frozen, backbone in burn" "$burn_ms" "$torch_ms" \
      "$(python3 -c "print($burn_ms / $torch_ms)")" "$burn_mib" "$torch_mib"
  fi
done
echo "threads: $threads (burn flex: rayon over all cores; PyTorch: torch.set_num_threads)"
