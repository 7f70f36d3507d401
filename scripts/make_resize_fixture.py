#!/usr/bin/env python3
"""Make tests/fixtures/resize.json: a 13×9 RGB pattern scaled with Pillow's BILINEAR filter to
7×5 (down: the filter widens and averages) and 20×14 (up: interpolation), what `segtune infer`'s
letterbox must reproduce (the Python peer in bench/infer_python.py resizes with Pillow).

Needs Pillow and numpy. Usage: python scripts/make_resize_fixture.py
"""
import json

import numpy as np
from PIL import Image

W, H = 13, 9
x, y, c = np.meshgrid(np.arange(W), np.arange(H), np.arange(3), indexing="xy")
src = ((x * 37 + y * 91 + c * 53 + (x * y) % 7 * 29) % 256).astype(np.uint8)
out = {"width": W, "height": H, "pixels": src.flatten().tolist(), "resized": []}
for w, h in [(7, 5), (20, 14)]:
    r = np.asarray(Image.fromarray(src).resize((w, h), Image.BILINEAR))
    out["resized"].append({"width": w, "height": h, "pixels": r.flatten().tolist()})
with open("tests/fixtures/resize.json", "w") as f:
    json.dump(out, f)
print("wrote tests/fixtures/resize.json")
