#!/usr/bin/env python3
"""Sums cubecl's kernel profile (`level = "basic"`: one line `| DURATION | KERNEL` per launch, in
launch order) by kernel family (the name without its `_hash` suffix) and by kernel, over the last
1/EPOCHS of the launches (the last epoch; the first ones compile shaders and autotune), and prints
where the kernel time goes.
Usage: python3 bench/gpu_profile.py cubecl-profile.log [EPOCHS=3] [TOP=20]"""
import re
import sys
from collections import defaultdict

UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
LINE = re.compile(r"^\|\s*([0-9.]+)(ns|µs|us|ms|s)\s*\|\s*(\S+)")


def table(title, total, count, grand, top):
    print(f"\n{title:<48} {'ms':>10} {'%':>6} {'launches':>9} {'µs/launch':>10}")
    for name, s in sorted(total.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{name[:48]:<48} {s * 1e3:>10.1f} {100 * s / grand:>6.1f} {count[name]:>9} {1e6 * s / count[name]:>10.1f}")


def main():
    path = sys.argv[1]
    epochs = int(sys.argv[2]) if len(sys.argv) > 2 else 3
    top = int(sys.argv[3]) if len(sys.argv) > 3 else 20
    launches = []
    for line in open(path, encoding="utf-8", errors="replace"):
        m = LINE.match(line)
        if m:
            launches.append((m.group(3), float(m.group(1)) * UNITS[m.group(2)]))
    last = launches[len(launches) - len(launches) // epochs:]
    by_kernel, by_family = defaultdict(float), defaultdict(float)
    n_kernel, n_family = defaultdict(int), defaultdict(int)
    for name, s in last:
        family = re.sub(r"_[0-9a-f]{8}$", "", name)
        by_kernel[name] += s
        n_kernel[name] += 1
        by_family[family] += s
        n_family[family] += 1
    grand = sum(by_kernel.values())
    print(f"{len(launches)} kernel launches profiled; the last {len(last)} (the last epoch): "
          f"{grand * 1e3:.1f} ms of kernel time in {len(by_kernel)} kernels")
    table("kernel family", by_family, n_family, grand, top)
    table("kernel", by_kernel, n_kernel, grand, top)


if __name__ == "__main__":
    main()
