#!/usr/bin/env bash
# segtune's logits-to-mask step (bilinear upsampling fused with the argmax, upsample::upsample_argmax)
# against PyTorch's interpolate(bilinear, align_corners=False) + argmax on the same logits: the
# shipped model's on 16 synthetic 21-class images at 500x375 (512x384 model input), at 1 thread
# and at all cores, medians over 5 passes; and how many pixels' classes agree.
# PyTorch from TORCH_PYTHON or bench/.venv-torch (made on first use), never from CI.
# Usage: bench/upsample_argmax.sh [MODEL]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/deeplabv3plus_mobilenetv2.onnx}
py=${TORCH_PYTHON:-bench/.venv-torch/bin/python}
if [ ! -x "$py" ]; then
  python3 -m venv bench/.venv-torch && bench/.venv-torch/bin/pip install -q torch onnxruntime==1.31.1 pillow numpy
fi
cargo build -q --example upsample_argmax
work=target/bench-upsample
rm -rf "$work"
target/debug/segtune synth "$work/data" --classes 21 --train 0 --val 16 --size 384 --seed 3 >/dev/null
for threads in 1 $(nproc); do
  read -r torch_ms classes < <("$py" bench/upsample_argmax_torch.py "$model" "$work/data/JPEGImages" "$work/logits.f32" "$work/torch.u8" "$threads")
  read -r ours_ms differ < <(target/debug/examples/upsample_argmax "$work/logits.f32" "$work/torch.u8" 16 "$classes" "$threads")
  echo "$threads threads: segtune $ours_ms ms per image, PyTorch $torch_ms ms ($(python3 -c "print(f'{$ours_ms / $torch_ms:.2f}')")x); classes differ on $differ of $((16 * 375 * 500)) pixels"
done
echo "$(nproc) cores, $(date -u +%F)"
