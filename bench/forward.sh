#!/usr/bin/env bash
# Forward time of the burn model (CPU, flex) against onnxruntime, same input, same process, same
# machine. Prints the median of warm runs and the ratio burn/onnxruntime.
# Usage: bench/forward.sh [SIZE=256] [REPEAT=10]
set -euo pipefail
cd "$(dirname "$0")/.."
size=${1:-256}
repeat=${2:-10}
threads=$(nproc)
cargo build -q
bin=target/debug/segtune
printf '%-8s %-6s %12s %16s %8s %10s\n' size batch "burn ms" "onnxruntime ms" ratio "max |Δ|"
for batch in 1 2; do
  json=$("$bin" parity --size "$size" --batch "$batch" --repeat "$repeat" --threads "$threads" --json)
  python3 - "$size" "$batch" "$json" <<'PY'
import json, sys
size, batch, r = sys.argv[1], sys.argv[2], json.loads(sys.argv[3])
print(f"{size:<8} {batch:<6} {r['burn_ms']:12.1f} {r['ort_ms']:16.1f} {r['burn_ms'] / r['ort_ms']:7.2f}x {r['max_abs_diff']:10.2e}")
PY
done
echo "machine: $(nproc) cores; onnxruntime intra-op threads = $threads; burn flex uses rayon over all cores"
