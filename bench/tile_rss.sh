#!/usr/bin/env bash
# Peak memory of `segtune infer` on one 4000x3000 image at native resolution (the default
# pipeline): one forward pass of the whole image against sliding-window tiles (--tile 1024 and
# 512, MMSeg's 1/3 overlap), the shipped model, same threads; with each run's time and its
# mask's agreement with the whole-image mask. The image: a 4x3 mosaic of 1000x1000 synthetic
# corpus images (objects the shipped model was pretrained on). Peak RSS by GNU time (%M).
# Creates bench/.venv-quantize (pillow, numpy, ...) on first use, as bench/quantize.sh does.
# Usage: bench/tile_rss.sh [MODEL=models/deeplabv3plus_mobilenetv2.onnx]
set -euo pipefail
cd "$(dirname "$0")/.."
model=${1:-models/deeplabv3plus_mobilenetv2.onnx}
work=target/bench-tile
cargo build -q
source bench/lib.sh
py=$(quantize_python)
seg=target/debug/segtune
rm -rf "$work" && mkdir -p "$work"
$seg synth "$work/corpus" --classes 21 --style corpus --train 1 --val 12 --size 1000 --seed 4 >/dev/null
"$py" - "$work" <<'PY'
import sys
from PIL import Image
work = sys.argv[1]
out = Image.new("RGB", (4000, 3000))
for i in range(12):
    out.paste(Image.open(f"{work}/corpus/JPEGImages/val_{i:05d}.jpg"), ((i % 4) * 1000, (i // 4) * 1000))
out.save(f"{work}/large.png")
PY
for run in whole:"" tile1024:"--tile 1024" tile512:"--tile 512"; do
  name=${run%%:*}; flags=${run#*:}
  # shellcheck disable=SC2086
  /usr/bin/time -f "%M %e" -o "$work/$name.time" $seg infer "$model" "$work/large.png" --out "$work/$name" $flags >/dev/null
  read -r kb secs < "$work/$name.time"
  agree=$("$py" -c "
import numpy as np; from PIL import Image
a = np.asarray(Image.open('$work/whole/large.png')); b = np.asarray(Image.open('$work/$name/large.png'))
print(f'{(a == b).mean() * 100:.2f}')")
  printf '%-9s peak RSS %6.0f MiB  %6.1f s  mask agrees with whole-image on %s%% of pixels\n' "$name" "$(echo "$kb / 1024" | bc -l)" "$secs" "$agree"
done
echo "$(nproc) cores, $(date -u +%F)"
