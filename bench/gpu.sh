#!/usr/bin/env bash
# GPU training throughput: segtune's burn `wgpu` backend (Vulkan) against PyTorch CUDA eager on the
# same work: smp DeepLabV3Plus mobilenet_v2, 6 classes, batch 16, crop 512, SGD momentum 0.9,
# cross-entropy ignoring 255, BatchNorm in train mode (full fine-tune).
#
# For an NVIDIA Linux host that has PyTorch but no Rust toolchain and no network:
#   here (Rust + internet):  bench/gpu.sh prepare
#       builds segtune with `--features wgpu` into bench/gpu/segtune, downloads Debian's Vulkan and
#       GL loaders (bench/gpu/deb) and the segmentation-models-pytorch wheel (bench/gpu/whl).
#   on the GPU host:         [SEG_TIMEOUT=360] bench/gpu.sh run [BATCH=16] [CROP=512] [EPOCHS=3]
#       unpacks the loaders if the host has none, times both (PyTorch first; segtune's training
#       bounded by SEG_TIMEOUT seconds, its log and metrics.json copied to $OUT when set), prints
#       images/s and the ratios.
#   on the GPU host:         bench/gpu.sh pretrain   (bench/pretrain.sh on --device wgpu)
#   on the GPU host:         bench/gpu.sh export RUN_DIR OUT.onnx   (with the host's onnxruntime)
#   on the GPU host:         bench/gpu.sh profile OUT_DIR [BATCH=16] [CROP=512] [STEPS=4]
#       where the wgpu step's time goes: 3 epochs of STEPS steps with cubecl's kernel profiling
#       (every kernel timed, so the steps run slower than unprofiled); bench/gpu_profile.py sums
#       the last epoch's kernels by name into OUT_DIR/kernels.txt.
# segtune's images/s is batch / the median step of its last epoch (`metrics.json`: from the end of
# one step to the end of the next, loader wait included; evaluation and the first epochs' shader
# compilation and autotuning excluded); PyTorch's is batch / median step time after 3 warm-up steps. burn's `cuda` backend is not timed: its build downloads LLVM.
set -euo pipefail
cd "$(dirname "$0")/.."
here=bench/gpu
bin=$here/segtune

unpack() { # the binary, with Python's lzma (the host may lack xz)
  [ -x "$bin" ] && return 0
  [ -f "$bin.xz" ] || { echo "error: $bin.xz missing: run 'bench/gpu.sh prepare' on a machine with Rust first" >&2; exit 2; }
  python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$bin.xz" "$bin"
  chmod +x "$bin"
}

vulkan() { # make the NVIDIA Vulkan driver reachable through a loader
  if ! ldconfig -p | grep -q libvulkan.so.1; then
    for f in "$here"/deb/*.deb; do dpkg -x "$f" /; done
    ldconfig
  fi
  if ! ls /usr/share/vulkan/icd.d/ /etc/vulkan/icd.d/ 2>/dev/null | grep -qi nvidia; then
    for j in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /usr/share/vulkan/icd.d/nvidia_icd.json; do
      [ -f "$j" ] && export VK_DRIVER_FILES="$j" && break
    done
    [ -f /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json ] &&
      export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
  fi
  echo "vulkan: loader $(ldconfig -p | grep -m1 libvulkan.so.1 | awk '{print $NF}'), driver ${VK_DRIVER_FILES:-system icd.d}"
}

ort_lib() { # onnxruntime from the host's Python package, for `segtune export`'s check
  local d
  d=$(python3 -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))' 2>/dev/null) || return 0
  export ORT_DYLIB_PATH
  ORT_DYLIB_PATH=$(ls "$d"/libonnxruntime.so.1.* 2>/dev/null | head -n 1)
}

case "${1:-run}" in
  prepare)
    cargo build --features wgpu
    mkdir -p "$here/deb" "$here/whl"
    # Stripped and xz-compressed to travel (~30 MB); `run` and `pretrain` unpack it.
    strip -o "$bin" target/debug/segtune
    xz -T0 -3 -f "$bin"
    # The device tool carries at most 64 MiB: models in models/ under 64 MiB are embedded in the
    # binary, so move large gitignored ones (e.g. deeplabv3_mobilenet_v3_large.onnx) aside first.
    size=$(stat -c %s "$bin.xz")
    if [ "$size" -gt $((60 * 1024 * 1024)) ]; then
      echo "error: $bin.xz is $((size / 1048576)) MiB (> 60): move the large models out of models/ and rerun" >&2
      exit 2
    fi
    # Which code the binary is: `run` prints it (a later session can tell a stale build).
    echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src build.rs Cargo.toml Cargo.lock || echo +uncommitted) built $(date -u +%FT%TZ)" > "$here/COMMIT"
    (cd "$here/deb" && apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 >/dev/null)
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$here/whl" segmentation-models-pytorch==0.6.0
    echo "prepared $here ($(cat "$here/COMMIT")): $(cd "$here" && ls segtune.xz deb/* whl/* | tr '\n' ' ')"
    ;;
  run)
    batch=${2:-16}; crop=${3:-512}; epochs=${4:-3}
    unpack
    vulkan
    echo "binary: $(cat "$here/COMMIT" 2>/dev/null || echo 'of unknown commit')"
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
    site=$(mktemp -d)
    python3 -c 'import segmentation_models_pytorch' 2>/dev/null ||
      { python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$here"/whl/*.whl && export PYTHONPATH="$site"; }
    work=$(mktemp -d)
    # PyTorch first (quick and sure), so that its numbers exist whatever segtune does.
    torch_ms=$(python3 bench/train_step_torch.py full "$batch" "$crop" 20 "$(nproc)" cuda)
    # PyTorch's default convolutions use TF32 tensor cores; segtune's are float32: both peers.
    torch_fp32_ms=$(TORCH_TF32=0 python3 bench/train_step_torch.py full "$batch" "$crop" 20 "$(nproc)" cuda)
    echo "PyTorch CUDA eager: $torch_ms ms/step (default, TF32), $torch_fp32_ms ms/step (float32)"
    "$bin" synth "$work/data" --classes 6 --train $((batch * 10)) --val "$batch" --size "$crop" --seed 1 >/dev/null
    # Bounded (SEG_TIMEOUT seconds, default 360): the device is lent for minutes, and the first
    # epoch compiles and autotunes every kernel. Its log and metrics go to $OUT when set.
    status=0
    timeout "${SEG_TIMEOUT:-360}" "$bin" train --data "$work/data" --out "$work/run" --classes 6 --epochs "$epochs" \
      --batch "$batch" --crop "$crop" --lr 0.01 --bn train --device wgpu 2>&1 | tee "$work/train.log" || status=$?
    if [ -n "${OUT:-}" ]; then cp "$work/train.log" "$work"/run/metrics.json "$OUT"/ 2>/dev/null || true; fi
    if [ ! -f "$work/run/metrics.json" ]; then
      echo "segtune wgpu: no epoch finished (exit $status; 124 = timed out after ${SEG_TIMEOUT:-360} s)" >&2
      exit 1
    fi
    [ "$status" = 0 ] || echo "segtune wgpu: stopped early (exit $status); the figures below are from its last finished epoch" >&2
    # images/s from the last epoch's median step (end of one step to the end of the next, loader wait included).
    seg=$(python3 -c 'import json,sys; print(int(sys.argv[2]) * 1000 / json.load(open(sys.argv[1]))[-1]["step_ms_median"])' "$work/run/metrics.json" "$batch")
    python3 - "$seg" "$torch_ms" "$torch_fp32_ms" "$batch" "$crop" <<'PY'
import sys
seg, ms, ms32, batch, crop = float(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
print(f"train step, batch {batch}, crop {crop}, full fine-tune, BN train")
print(f"  segtune wgpu                     {seg:9.1f} images/s  ({1000 * batch / seg:.0f} ms/step)")
for name, t in [("PyTorch CUDA eager (default, TF32)", ms), ("PyTorch CUDA eager (float32)", ms32)]:
    ips = 1000 * batch / t
    print(f"  {name:32} {ips:9.1f} images/s  ({t:.0f} ms/step)  ratio segtune/PyTorch {seg / ips:.2f}x")
PY
    ;;
  pretrain)
    unpack
    vulkan
    ort_lib
    DEVICE=wgpu SEGTUNE=$bin bench/pretrain.sh
    ;;
  export)
    [ $# -eq 3 ] || { echo "usage: bench/gpu.sh export RUN_DIR OUT.onnx" >&2; exit 2; }
    unpack
    ort_lib
    "$bin" export "$2" --out "$3"
    ;;
  profile)
    [ $# -ge 2 ] || { echo "usage: bench/gpu.sh profile OUT_DIR [BATCH] [CROP] [STEPS]" >&2; exit 2; }
    dir=$(realpath "$2"); batch=${3:-16}; crop=${4:-512}; steps=${5:-4}
    unpack
    vulkan
    work=$(mktemp -d)
    "$bin" synth "$work/data" --classes 6 --train $((batch * steps)) --val "$batch" --size "$crop" --seed 1 >/dev/null
    # cubecl reads cubecl.toml from the working directory: basic profiling into a log file.
    printf '[profiling.logger]\nlevel = "basic"\nfile = "%s"\n' "$dir/cubecl-profile.log" > "$work/cubecl.toml"
    bin=$(realpath "$bin")
    (cd "$work" && "$bin" train --data data --out run --classes 6 --epochs 3 --batch "$batch" --crop "$crop" \
      --lr 0.01 --bn train --device wgpu) 2>&1 | tee "$dir/train.txt"
    python3 bench/gpu_profile.py "$dir/cubecl-profile.log" 3 | tee "$dir/kernels.txt"
    ;;
  *) echo "usage: bench/gpu.sh prepare | run [BATCH] [CROP] [EPOCHS] | pretrain | export RUN_DIR OUT.onnx | profile OUT_DIR" >&2; exit 2 ;;
esac
