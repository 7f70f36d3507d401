#!/usr/bin/env bash
# What compiling models in costs: the time to rebuild segtune's library (build.rs imports every
# models/*.onnx, then rustc compiles the generated code and each model's instantiation of the
# training, evaluation and export code) with the given models in models/ and without them, in
# the same run, alternating. Prints each time and the cost per model.
# Usage: bench/build_cost.sh [REPEATS=1] [MODEL_STEM...]   (default: the three tiny_* models)
set -euo pipefail
cd "$(dirname "$0")/.."
repeats=${1:-1}
shift || true
stems=("$@")
[ ${#stems[@]} -gt 0 ] || stems=(tiny_deeplabv3plus tiny_deeplabv3plus_folded tiny_deeplabv3plus_dynamo)
hold=$(mktemp -d)
restore() { mv "$hold"/* models/ 2>/dev/null || true; rmdir "$hold"; touch build.rs; }
trap restore EXIT
files=()
for s in "${stems[@]}"; do files+=(models/"$s".onnx); [ -f models/"$s".onnx.data ] && files+=(models/"$s".onnx.data); done
cargo build -q --lib
timed() { touch build.rs; local t0; t0=$(date +%s.%N); cargo build -q --lib; echo "$(date +%s.%N) - $t0" | bc; }
for r in $(seq "$repeats"); do
  mv "${files[@]}" "$hold"/
  without=$(timed)
  mv "$hold"/* models/
  with=$(timed)
  printf 'run %d: library rebuild %.1f s with %d models, %.1f s without: %.1f s per model\n' \
    "$r" "$with" "${#stems[@]}" "$without" "$(echo "($with - $without) / ${#stems[@]}" | bc -l)"
done
