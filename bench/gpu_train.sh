#!/usr/bin/env bash
# GPU training throughput of segtune's wgpu backend, for an NVIDIA Linux host that has no Rust
# toolchain and no network.
#
#   On the build machine:  bench/gpu_train.sh prepare
#     builds segtune with `--features wgpu` and puts it, with Debian's Vulkan loader
#     (libvulkan1, unpacked), into bench/gpu/.
#   On the GPU host:       bench/gpu_train.sh run [BATCH=16] [CROP=256] [EPOCHS=2]
#     synthesizes a set, trains on `--device wgpu`, prints images/s and the final loss.
set -euo pipefail
cd "$(dirname "$0")/.."
here=bench/gpu
case "${1:-run}" in
  prepare)
    cargo build --features wgpu
    mkdir -p "$here/lib"
    cp target/debug/segtune "$here/segtune"
    tmp=$(mktemp -d)
    (cd "$tmp" && apt-get download libvulkan1 >/dev/null)
    dpkg-deb -x "$tmp"/libvulkan1_*.deb "$tmp/x"
    cp -a "$tmp"/x/usr/lib/*/libvulkan.so.1* "$here/lib/"
    rm -rf "$tmp"
    echo "prepared $here: $(ls "$here" "$here/lib" | tr '\n' ' ')"
    ;;
  run)
    batch=${2:-16}; crop=${3:-256}; epochs=${4:-2}
    bin="$here/segtune"
    [ -x "$bin" ] || { echo "error: $bin missing: run 'bench/gpu_train.sh prepare' on a machine with Rust first" >&2; exit 2; }
    if ! ldconfig -p 2>/dev/null | grep -q libvulkan.so.1; then
      export LD_LIBRARY_PATH="$PWD/$here/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    fi
    ls /usr/share/vulkan/icd.d/ /etc/vulkan/icd.d/ 2>/dev/null | grep -qi nvidia \
      || echo "warning: no NVIDIA Vulkan ICD found (/usr/share/vulkan/icd.d/nvidia_icd.json); wgpu may not see the GPU" >&2
    work=$(mktemp -d)
    "$bin" synth "$work/data" --classes 6 --train $((batch * 8)) --val 16 --size "$crop" --seed 1
    start=$(date +%s.%N)
    "$bin" train --data "$work/data" --out "$work/run" --classes 6 --epochs "$epochs" --batch "$batch" \
      --crop "$crop" --bn train --device wgpu
    end=$(date +%s.%N)
    tail -n 1 "$work/run/metrics.csv" | awk -F, -v b="$batch" -v c="$crop" \
      '{printf "wgpu: batch %s crop %s: %.2f images/s (last epoch), final train loss %.4f, val mIoU %.4f\n", b, c, $7, $2, $4}'
    echo "wall: $(echo "$end - $start" | bc) s"
    ;;
  *) echo "usage: bench/gpu_train.sh prepare | run [BATCH] [CROP] [EPOCHS]" >&2; exit 2 ;;
esac
