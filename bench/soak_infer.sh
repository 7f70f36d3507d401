#!/usr/bin/env bash
# Memory soak of `segtune infer`: 2,000 images on all cores, VmRSS sampled every 0.5 s. Prints
# the RSS after warm-up (the first 10% of the run), the peak after it, and the growth.
# Usage: bench/soak_infer.sh [IMAGES=2000] [MODEL=models/deeplabv3plus_mobilenetv2.onnx]
set -euo pipefail
cd "$(dirname "$0")/.."
n=${1:-2000}
model=${2:-models/deeplabv3plus_mobilenetv2.onnx}
work=target/bench-soak
cargo build -q
rm -rf "$work" && mkdir -p "$work/images"
python3 - "$work/images" "$n" <<'PY'
import sys, zlib, struct, random
# Plain PNGs written with the standard library only (no Pillow needed): 256x192 noise + a block.
out, n = sys.argv[1], int(sys.argv[2])
def png(w, h, rows):
    raw = b"".join(b"\x00" + r for r in rows)
    def chunk(t, d): return struct.pack(">I", len(d)) + t + d + struct.pack(">I", zlib.crc32(t + d) & 0xffffffff)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)) + chunk(b"IDAT", zlib.compress(raw, 1)) + chunk(b"IEND", b"")
rnd = random.Random(0)
for i in range(n):
    base = bytes(rnd.randrange(40, 200) for _ in range(3))
    rows = [bytes(base * 256) for _ in range(192)]
    open(f"{out}/img_{i:05d}.png", "wb").write(png(256, 192, rows))
PY
target/debug/segtune infer "$model" "$work/images" --out "$work/out" --batch 8 --size 256 --threads "$(nproc)" > "$work/log" 2>&1 &
pid=$!
: > "$work/rss"
start=$(date +%s.%N)
while kill -0 "$pid" 2>/dev/null; do
  rss=$(awk '/VmRSS/ {print $2}' "/proc/$pid/status" 2>/dev/null || true)
  [ -n "$rss" ] && echo "$(echo "$(date +%s.%N) - $start" | bc) $rss" >> "$work/rss"
  sleep 0.5
done
wait "$pid"
cat "$work/log"
python3 - "$work/rss" <<'PY'
import sys
rows = [tuple(map(float, l.split())) for l in open(sys.argv[1]) if l.strip()]
end = rows[-1][0]
warm = [r for t, r in rows if t >= 0.1 * end]
w0 = warm[0] / 1024
peak = max(warm) / 1024
print(f"samples {len(rows)} over {end:.0f} s; RSS after warm-up {w0:.0f} MiB, peak after warm-up {peak:.0f} MiB, growth {100 * (peak - w0) / w0:.1f}%")
PY
