#!/usr/bin/env bash
# The matrix multiplies of `segtune train`, per call site and shape: calls, wall ms per step and
# GFLOP/s, from burn-flex's GEMM trace (SEGTUNE_GEMM_TRACE, vendor/burn-flex/VENDORED.md).
#   bench/gemm_trace.sh [full|frozen] [BATCH=2] [CROP=256] [STEPS=10]
# Sites: fwd1x1 / fwd_im2col (forward convolutions), wgrad (weight gradients), pw_xgrad (1×1
# input gradients), matmul. The forward 1×1 products of a batch run one image per thread, so
# their wall times overlap: their ms/step sum is up to the thread count above their share.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-frozen}; batch=${2:-2}; crop=${3:-256}; steps=${4:-10}
work=target/bench-gemm
source bench/train_run.sh
train_run "$work" "$config" "$batch" "$crop" "$steps" env SEGTUNE_GEMM_TRACE=1
python3 - "$work/stderr" "$steps" "$work/run/metrics.json" <<'PY'
import collections, json, sys
calls = collections.defaultdict(lambda: [0, 0, 0])  # count, ns, flop
for line in open(sys.argv[1]):
    if line.startswith("GEMM "):
        _, site, m, n, k, ns = line.split()
        c = calls[(site, int(m), int(n), int(k))]
        c[0] += 1; c[1] += int(ns); c[2] += 2 * int(m) * int(n) * int(k)
steps = int(sys.argv[2])
step_ms = json.load(open(sys.argv[3]))[0]["step_ms_median"]
sites = collections.Counter()
for (site, *_), c in calls.items():
    sites[site] += c[1] / 1e6 / steps
print(f"median step {step_ms:.1f} ms; GEMM wall ms per step by site: " + ", ".join(f"{s} {v:.1f}" for s, v in sites.most_common()))
print(f"{'site':<11} {'m':>6} {'n':>6} {'k':>6} {'calls/step':>10} {'ms/step':>8} {'GFLOP/s':>8}")
for (site, m, n, k), c in sorted(calls.items(), key=lambda kv: -kv[1][1])[:20]:
    print(f"{site:<11} {m:>6} {n:>6} {k:>6} {c[0] / steps:>10.1f} {c[1] / 1e6 / steps:>8.2f} {c[2] / c[1]:>8.0f}")
PY
