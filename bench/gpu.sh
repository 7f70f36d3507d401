#!/usr/bin/env bash
# GPU fine-tuning, measured: segtune's burn `cuda` (CUDA C++ through NVRTC) and `wgpu` (Vulkan)
# backends against PyTorch CUDA eager (TF32 on and off) on the same work: smp DeepLabV3Plus
# mobilenet_v2, 6 classes, batch 16, crop 512, SGD momentum 0.9, cross-entropy ignoring 255, in two
# configs: (a) full fine-tune, BatchNorm in train mode; (b) --freeze backbone --bn frozen.
#
# For an NVIDIA Linux host that has PyTorch and a driver but no Rust toolchain and no network:
#   here (Rust + internet):  bench/gpu.sh prepare
#       builds segtune and tests/gpu.rs with `--features cuda,wgpu` (CUDARC_CUDA_VERSION=13000, the
#       host's CUDA 13.0), strips and xz-compresses both into bench/gpu/, downloads Debian's
#       Vulkan and GL loaders (bench/gpu/deb) and the segmentation-models-pytorch wheel.
#   on the GPU host:         [OUT=DIR] bench/gpu.sh run [BATCH=16] [CROP=512]
#       in this order, each result appended to $OUT/results.txt as soon as it is known (a run cut
#       off still reports what it finished), in under 8 minutes:
#         1. the check: one train step on cuda and on wgpu against the CPU (tests/gpu.rs);
#         2. PyTorch CUDA eager, (a) and (b), TF32 on and off: ms/step, images/s, peak GPU memory;
#         3. segtune on each device, (a) and (b), each bounded by SEG_TIMEOUT (60 s): images/s from
#            the median step of its last finished epoch, ratios to PyTorch, peak GPU memory
#            (nvidia-smi, sampled);
#         4. a kernel-time profile of segtune's cuda step (cubecl's profiling), kernels by family;
#         between 1 and 2, `providers` (below), 1–4 minutes (TensorRT builds its engine first).
#   on the GPU host:         [OUT=DIR] bench/gpu.sh providers
#       `segtune infer` and `validate` with --provider cuda and tensorrt through the host's
#       onnxruntime (its Python package's library, the nvidia-* wheels' CUDA libraries on the
#       loader path), against the CPU provider and Python onnxruntime alone on the same provider:
#       onnxruntime ms per image, images/s, identical masks, the mIoU difference to the CPU's.
#   on the GPU host:         bench/gpu.sh pretrain | export RUN_DIR OUT.onnx | profile OUT_DIR DEVICE
#   anywhere (no GPU):       DEVICES=cpu TORCH_DEVICE=cpu bench/gpu.sh run 2 128
#       the same logic with the device names swapped for the CPU (what a session without a GPU
#       checks); SEGTUNE and GPU_TEST then default to this checkout's builds.
set -euo pipefail
cd "$(dirname "$0")/.."
here=bench/gpu
bin=${SEGTUNE:-$here/segtune}
gpu_test=${GPU_TEST:-$here/gpu_test}
devices=${DEVICES:-cuda wgpu}
torch_device=${TORCH_DEVICE:-cuda}
out=${OUT:-$(mktemp -d)}
mkdir -p "$out"
results=$out/results.txt

say() { echo "$*" | tee -a "$results"; }

# The path of tests/gpu.rs's binary in cargo's JSON messages (stdin).
test_exe='import json, sys; print([j["executable"] for j in map(json.loads, sys.stdin) if j.get("executable") and j["target"]["kind"] == ["test"] and j["target"]["name"] == "gpu"][-1])'

unpack() { # the binaries, with Python's lzma (the host may lack xz)
  for b in "$bin" "$gpu_test"; do
    [ -x "$b" ] && continue
    [ -f "$b.xz" ] || { echo "error: $b.xz missing: run 'bench/gpu.sh prepare' on a machine with Rust first" >&2; exit 2; }
    python3 -c 'import lzma, shutil, sys; shutil.copyfileobj(lzma.open(sys.argv[1]), open(sys.argv[2], "wb"))' "$b.xz" "$b"
    chmod +x "$b"
  done
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

cuda_env() { # libnvrtc from PyTorch's nvidia-cuda-nvrtc package; the headers from the toolkit
  local d
  d=$(python3 -c 'import nvidia.cuda_nvrtc, os; print(os.path.join(list(nvidia.cuda_nvrtc.__path__)[0], "lib"))' 2>/dev/null) ||
    d=$(python3 -c 'import nvidia, os, glob; print(next(iter(glob.glob(os.path.join(list(nvidia.__path__)[0], "cu*", "lib"))), ""))' 2>/dev/null) || d=
  [ -n "$d" ] && export LD_LIBRARY_PATH="$d${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
  [ -z "${CUDA_PATH:-}" ] && [ -d /usr/local/cuda/include ] && export CUDA_PATH=/usr/local/cuda
  echo "cuda: nvrtc from ${d:-the system}, headers from ${CUDA_PATH:-/usr (nvcc)}"
}

ort_lib() { # onnxruntime from the host's Python package, unless ORT_DYLIB_PATH names one
  [ -n "${ORT_DYLIB_PATH:-}" ] && return 0
  local d
  d=$(python3 -c 'import onnxruntime, os; print(os.path.join(os.path.dirname(onnxruntime.__file__), "capi"))' 2>/dev/null) || return 0
  export ORT_DYLIB_PATH
  ORT_DYLIB_PATH=$(ls "$d"/libonnxruntime.so.1.* 2>/dev/null | head -n 1)
}

smp_site() { # segmentation-models-pytorch from the carried wheel where the host has none
  python3 -c 'import segmentation_models_pytorch' 2>/dev/null && return 0
  local site
  site=$(mktemp -d)
  python3 -m pip install -q --no-index --no-deps --no-compile --target "$site" "$here"/whl/*.whl
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
}

cuda_libs() { # the CUDA, cuDNN and TensorRT libraries of the host's nvidia-* / tensorrt wheels
  local d
  d=$(python3 -c 'import glob, os, nvidia; p = list(nvidia.__path__)[0]; print(":".join(sorted(glob.glob(p + "/*/lib") + glob.glob(p + "/cu*/lib"))))' 2>/dev/null) || d=
  local t
  t=$(python3 -c 'import os, tensorrt_libs; print(list(tensorrt_libs.__path__)[0])' 2>/dev/null) || t=
  for x in $t $d; do LD_LIBRARY_PATH="$x${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"; done
  export LD_LIBRARY_PATH
  echo "cuda libraries: ${d:-none from wheels}${t:+; tensorrt $t}"
}

# infer and validate on PROVIDER over the synth set in WORK (512² images, batch 4), against the
# CPU's masks and mIoU and Python onnxruntime alone on the same provider and batch.
provider_run() {
  local provider=$1 work=$2 model=models/deeplabv3plus_mobilenetv2.onnx status=0
  local dir=$work/infer_$provider
  timeout 60 "$bin" infer "$model" "$work/data/JPEGImages" --out "$dir" --batch 4 --size 512 --threads "$(nproc)" --provider "$provider" \
    >"$out/infer_$provider.log" 2>&1 || status=$?
  if [ ! -f "$dir/summary.json" ]; then
    say "infer --provider $provider: failed (exit $status): $(grep -m1 error "$out/infer_$provider.log" || tail -n 1 "$out/infer_$provider.log")"
    return 0
  fi
  timeout 60 "$bin" validate "$model" --data "$work/data" --threads "$(nproc)" --provider "$provider" --json "$out/validate_$provider.json" \
    >"$out/validate_$provider.log" 2>&1 || say "validate --provider $provider: failed (exit $?)"
  local alone
  alone=$(timeout 45 python3 bench/ort_alone_python.py "$model" "$work/batch.f32" "$(nproc)" 12 "$provider" 512x512 2>/dev/null) || alone=
  python3 - "$dir/summary.json" "$work/infer_cpu" "$dir" "$out/validate_cpu.json" "$out/validate_$provider.json" "$provider" "${alone:-}" >>"$results" <<'PY'
import filecmp, json, os, sys
s, cpu, here, vcpu, vthis, provider, alone = json.load(open(sys.argv[1])), *sys.argv[2:]
n = len(s["images"])
ms = s["run_seconds"] / max(n, 1) * 1000
masks = sorted(f for f in os.listdir(here) if f.endswith(".png"))
same = sum(os.path.exists(os.path.join(cpu, f)) and filecmp.cmp(os.path.join(cpu, f), os.path.join(here, f), shallow=False) for f in masks)
line = f"infer --provider {provider}: onnxruntime {ms:.2f} ms per image, whole run {s['images_per_s']:.1f} images/s"
if alone:
    line += f"; Python onnxruntime alone {alone} ms per image ({ms / float(alone):.2f}x)"
if provider != "cpu":
    line += f"; masks identical to the CPU's: {same} of {len(masks)}"
try:
    a, b = json.load(open(vcpu))["miou"], json.load(open(vthis))["miou"]
    line += f"; validate mIoU {b:.4f}" + (f" vs CPU {a:.4f} ({b - a:+.4f})" if provider != "cpu" else "")
except (OSError, KeyError, ValueError) as e:
    line += f"; validate: no report ({e})"
print(line)
PY
  tail -n 1 "$results"
}

gpu_mem() { nvidia-smi --query-gpu=memory.used --format=csv,noheader,nounits 2>/dev/null | head -n 1 || echo 0; }

# Runs segtune's training on DEVICE in CONFIG (a|b) for 2 epochs of 4 steps, bounded by
# SEG_TIMEOUT, sampling GPU memory; appends images/s and peak memory to the results.
segtune_run() {
  local device=$1 config=$2 batch=$3 crop=$4 work=$5
  local flags=(--bn train --freeze none)
  [ "$config" = b ] && flags=(--bn frozen --freeze backbone)
  local run=$work/run_${device}_$config base peak status=0
  base=$(gpu_mem); peak=$base
  timeout "${SEG_TIMEOUT:-60}" "$bin" train --data "$work/data" --out "$run" --classes 6 --epochs 2 --batch "$batch" \
    --crop "$crop" --lr 0.01 "${flags[@]}" --device "$device" >"$out/train_${device}_$config.log" 2>&1 &
  local pid=$!
  while kill -0 "$pid" 2>/dev/null; do m=$(gpu_mem); [ "$m" -gt "$peak" ] && peak=$m; sleep 0.5; done
  wait "$pid" || status=$?
  cp "$run/metrics.json" "$out/metrics_${device}_$config.json" 2>/dev/null || true
  if [ ! -f "$run/metrics.json" ]; then
    say "segtune $device ($config): no epoch finished (exit $status; 124 = timed out after ${SEG_TIMEOUT:-60} s); log in $out/train_${device}_$config.log"
    return 0
  fi
  python3 - "$run/metrics.json" "$batch" "$device" "$config" "$((peak - base))" "$status" "$out/torch.txt" >>"$results" <<'PY'
import json, sys
m = json.load(open(sys.argv[1]))[-1]
batch, device, config, mib, status = int(sys.argv[2]), sys.argv[3], sys.argv[4], int(sys.argv[5]), sys.argv[6]
ips = batch * 1000 / m["step_ms_median"]
peers = dict(line.split()[:2] for line in open(sys.argv[7]) if line.startswith(config))  # "a_tf32 12.3"
note = "" if status == "0" else f" (stopped: exit {status}; epoch {m['epoch']})"
line = f"segtune {device} ({config}): {ips:.1f} images/s ({m['step_ms_median']:.0f} ms/step, epoch {m['epoch']}), peak GPU memory +{mib} MiB{note}"
for key, label in [(f"{config}_tf32", "PyTorch TF32"), (f"{config}_fp32", "PyTorch fp32")]:
    if key in peers:
        line += f"; {ips / (batch * 1000 / float(peers[key])):.3f}x {label}"
print(line)
PY
  tail -n 1 "$results"
}

case "${1:-run}" in
  prepare)
    export CUDARC_CUDA_VERSION=${CUDARC_CUDA_VERSION:-13000}
    cargo build --features cuda,wgpu
    test_bin=$(cargo test --features cuda,wgpu --no-run --test gpu --message-format=json 2>/dev/null |
      python3 -c "$test_exe")
    mkdir -p "$here/deb" "$here/whl"
    # Stripped and xz-compressed to travel; `run` unpacks them.
    strip -o "$here/segtune" target/debug/segtune
    strip -o "$here/gpu_test" "$test_bin"
    xz -T0 -3 -f "$here/segtune" "$here/gpu_test"
    # The device tool carries at most 64 MiB: models in models/ under 64 MiB are embedded in the
    # binary, so move large gitignored ones (e.g. deeplabv3_mobilenet_v3_large.onnx) aside first.
    size=$(cat "$here"/segtune.xz "$here"/gpu_test.xz | wc -c)
    if [ "$size" -gt $((60 * 1024 * 1024)) ]; then
      echo "error: the binaries are $((size / 1048576)) MiB (> 60): move the large models out of models/ and rerun" >&2
      exit 2
    fi
    echo "$(git rev-parse --short HEAD)$(git diff --quiet HEAD -- src build.rs Cargo.toml Cargo.lock vendor || echo +uncommitted) built $(date -u +%FT%TZ)" > "$here/COMMIT"
    (cd "$here/deb" && apt-get download libvulkan1 libegl1 libglvnd0 libopengl0 libgl1 libglx0 libgles2 >/dev/null)
    python3 -m pip download -q --no-deps --only-binary=:all: -d "$here/whl" segmentation-models-pytorch==0.6.0
    echo "prepared $here ($(cat "$here/COMMIT")): $(cd "$here" && ls ./*.xz deb/* whl/* | tr '\n' ' ')"
    ;;
  run)
    batch=${2:-16}; crop=${3:-512}
    if [ "$devices" = cpu ]; then
      bin=${SEGTUNE:-target/debug/segtune}
      gpu_test=${GPU_TEST:-$(cargo test --no-run --test gpu --message-format=json 2>/dev/null |
        python3 -c "$test_exe")}
    else
      unpack; vulkan; cuda_env
    fi
    ort_lib; smp_site
    say "binary: $(cat "$here/COMMIT" 2>/dev/null || echo "$bin"); devices: $devices; PyTorch on $torch_device; batch $batch, crop $crop; $(date -u +%FT%TZ)"
    say "card: $(nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader 2>/dev/null || echo none)"
    # 1. Numbers before speed.
    test_devices=$(echo "$devices" | tr ' ' ,)
    SEGTUNE_TEST_GPU_DEVICES=$test_devices timeout 150 "$gpu_test" --include-ignored --nocapture --test-threads 1 \
      >"$out/check.txt" 2>&1 && say "check (tests/gpu.rs): passed" || say "check (tests/gpu.rs): FAILED or cut off (exit $?)"
    grep -E "^(Cuda|Wgpu|Cpu):|^skipped|panicked" "$out/check.txt" | tee -a "$results" || true
    # The onnxruntime providers (#22), before the long training steps.
    [ "$devices" = cpu ] || OUT=$out "$0" providers
    # 2. The peer.
    work=$(mktemp -d)
    : >"$out/torch.txt"
    for config in a b; do
      name=full; [ "$config" = b ] && name=frozen
      for tf32 in 1 0; do
        key=${config}_$([ "$tf32" = 1 ] && echo tf32 || echo fp32)
        ms=$(TORCH_TF32=$tf32 timeout 90 python3 bench/train_step_torch.py "$name" "$batch" "$crop" 20 "$(nproc)" "$torch_device" 2>"$work/torch.err") || ms=
        mem=$(grep -o 'peak_gpu_mib [0-9]*' "$work/torch.err" | awk '{print $2}' || true)
        [ -n "$ms" ] && echo "$key $ms" >>"$out/torch.txt"
        say "PyTorch $torch_device eager ($config, TF32 $([ "$tf32" = 1 ] && echo on || echo off)): ${ms:-failed} ms/step$([ -n "$ms" ] && python3 -c "print(f', {$batch * 1000 / $ms:.1f} images/s')")${mem:+, peak GPU memory $mem MiB allocated}"
      done
    done
    # 3. segtune on each device, (a) and (b).
    "$bin" synth "$work/data" --classes 6 --train $((batch * 4)) --val "$batch" --size "$crop" --seed 1 >/dev/null
    for device in $devices; do
      for config in a b; do segtune_run "$device" "$config" "$batch" "$crop" "$work"; done
    done
    # 4. Where segtune's step time goes (the first device's (a)).
    first=${devices%% *}
    "$0" profile "$out/profile" "$first" "$batch" "$crop" 2 >/dev/null 2>&1 || true
    [ -f "$out/profile/kernels.txt" ] && { say "kernel profile ($first, (a)): $out/profile/kernels.txt"; head -n 14 "$out/profile/kernels.txt" | tee -a "$results"; }
    say "done $(date -u +%FT%TZ)"
    ;;
  providers)
    [ "$devices" = cpu ] && bin=${SEGTUNE:-target/debug/segtune} || { unpack; cuda_env; }
    ort_lib; cuda_libs
    say "providers: onnxruntime ${ORT_DYLIB_PATH:-the one segtune fetches}; Python's has $(python3 -c 'import onnxruntime as o; print(", ".join(o.get_available_providers()))' 2>/dev/null || echo none)"
    work=$(mktemp -d)
    "$bin" synth "$work/data" --classes 21 --train 4 --val 32 --size 512 --seed 1 >/dev/null
    python3 -c 'import numpy as np, sys; np.random.default_rng(0).random((4, 3, 512, 512), dtype=np.float32).tofile(sys.argv[1])' "$work/batch.f32"
    for provider in cpu ${PROVIDERS:-cuda tensorrt}; do provider_run "$provider" "$work"; done
    ;;
  pretrain)
    unpack; vulkan; ort_lib
    DEVICE=wgpu SEGTUNE=$bin bench/pretrain.sh
    ;;
  export)
    [ $# -eq 3 ] || { echo "usage: bench/gpu.sh export RUN_DIR OUT.onnx" >&2; exit 2; }
    unpack; ort_lib
    "$bin" export "$2" --out "$3"
    ;;
  profile)
    [ $# -ge 3 ] || { echo "usage: bench/gpu.sh profile OUT_DIR DEVICE [BATCH] [CROP] [STEPS]" >&2; exit 2; }
    mkdir -p "$2"
    dir=$(realpath "$2"); device=$3; batch=${4:-16}; crop=${5:-512}; steps=${6:-4}
    [ "$device" = cpu ] || { unpack; vulkan; cuda_env; }
    work=$(mktemp -d)
    "$bin" synth "$work/data" --classes 6 --train $((batch * steps)) --val "$batch" --size "$crop" --seed 1 >/dev/null
    # cubecl reads cubecl.toml from the working directory: basic profiling into a log file.
    printf '[profiling.logger]\nlevel = "basic"\nfile = "%s"\n' "$dir/cubecl-profile.log" > "$work/cubecl.toml"
    bin=$(realpath "$bin")
    (cd "$work" && timeout "${SEG_TIMEOUT:-60}" "$bin" train --data data --out run --classes 6 --epochs 3 --batch "$batch" \
      --crop "$crop" --lr 0.01 --bn train --device "$device") 2>&1 | tee "$dir/train.txt"
    [ -s "$dir/cubecl-profile.log" ] && python3 bench/gpu_profile.py "$dir/cubecl-profile.log" 3 | tee "$dir/kernels.txt"
    ;;
  *) echo "usage: bench/gpu.sh prepare | run [BATCH] [CROP] | providers | pretrain | export RUN_DIR OUT.onnx | profile OUT_DIR DEVICE" >&2; exit 2 ;;
esac
