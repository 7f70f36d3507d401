"""The inference benches' inputs (bench/infer.sh, bench/infer_contention.sh): 200 JPEGs of
500x375 (noise on a flat colour, one coloured box each) into IMAGES_DIR, and with BATCH, a
4x3x384x512 float32 batch (standard normal, raw little-endian) for onnxruntime alone.
Usage: infer_images.py IMAGES_DIR [BATCH]"""
import os
import sys

import numpy as np
from PIL import Image

rng = np.random.default_rng(0)
os.makedirs(sys.argv[1], exist_ok=True)
for i in range(200):
    a = (rng.random((375, 500, 3)) * 60 + rng.integers(40, 180, 3)).astype(np.uint8)
    y, x = rng.integers(0, 300), rng.integers(0, 400)
    a[y:y + 75, x:x + 100] = rng.integers(0, 255, 3)
    Image.fromarray(a).save(f"{sys.argv[1]}/img_{i:03d}.jpg", quality=90)
if len(sys.argv) > 2:
    rng.standard_normal((4, 3, 384, 512)).astype(np.float32).tofile(sys.argv[2])
