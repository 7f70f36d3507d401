#!/usr/bin/env bash
# Where `segtune train`'s time goes on the CPU: perf samples (no call graphs) of a 1-epoch run of
# STEPS steps, grouped by the crate and kernel they fall in, then the 15 hottest symbols.
#   bench/profile_train.sh [full|frozen] [BATCH=2] [CROP=256] [STEPS=10]
# full: --bn train (everything trains); frozen: --freeze backbone --bn frozen. Needs `perf`.
set -euo pipefail
cd "$(dirname "$0")/.."
config=${1:-full}; batch=${2:-2}; crop=${3:-256}; steps=${4:-10}
work=target/bench-profile
source bench/train_run.sh
train_run "$work" "$config" "$batch" "$crop" "$steps" perf record -q -F 499 -o "$work/perf.data" --
perf report -i "$work/perf.data" --no-children --sort dso,symbol --stdio 2>/dev/null > "$work/report.txt"
python3 - "$work/report.txt" <<'PY'
import re, sys
rows = []
for line in open(sys.argv[1]):
    m = re.match(r"\s+([\d.]+)%\s+(\S+)\s+\[.\]\s+(.*)", line)
    if m:
        rows.append((float(m.group(1)), m.group(2), m.group(3)))
groups = [
    ("convolution (im2col/gemm, depthwise, backward)", r"conv|im2col|col2im|deform"),
    ("matrix multiply (gemm kernels)", r"gemm|matmul|sgemm|microkernel|packing|pack_"),
    ("batch norm / reductions", r"batch_norm|reduce|sum_dim|mean|var"),
    ("elementwise and activation, SIMD (macerator: add, mul, clamp, relu, masks)", r"macerator|binary|unary|elementwise|clamp|relu|add|mul|sub|div|mask|select|cmp"),
    ("copies and layout (permute, reshape, slice, cat)", r"memcpy|memmove|copy|permute|reshape|slice|cat|contiguous|strided|transpose"),
    ("allocation", r"malloc|free|alloc|memset"),
    ("data loading (image decode, augmentation)", r"jpeg|png|zune|image|resize|augment|Rgb"),
    ("threading (rayon, spin/park)", r"rayon|crossbeam|futex|park|spin|sched"),
]
total = {g: 0.0 for g, _ in groups}
other = 0.0
for pct, dso, sym in rows:
    for g, pat in groups:
        if re.search(pat, sym, re.I):
            total[g] += pct
            break
    else:
        other += pct
print("share of CPU samples")
for g, _ in groups:
    print(f"  {total[g]:5.1f} %  {g}")
print(f"  {other:5.1f} %  other")
print("hottest symbols")
for pct, dso, sym in sorted(rows, reverse=True)[:15]:
    print(f"  {pct:5.1f} %  {sym[:110]}")
PY
