#!/usr/bin/env python3
"""The Python peer of `segtune infer`: the same work with onnxruntime, Pillow and numpy —
decode, letterbox to SIZE (scale the longer side, pad with the ImageNet mean), normalize, run in
batches of BATCH, crop the logits, upsample them bilinearly to the original size, argmax, and
write VOC-palette PNGs; prints the throughput and onnxruntime's own time per image (its runs
alone, as segtune's summary.json run_seconds). PAD `square` pads each image to SIZE × SIZE (what `segtune infer
--square` does); `rect` pads each side only to a multiple of 16 and a batch to its largest image
(segtune's default).
Usage: python bench/infer_python.py MODEL IMAGE_DIR OUT SIZE BATCH THREADS [PAD=square|rect]
"""
import os
import sys
import time

import numpy as np
import onnxruntime as ort
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def palette():
    p = np.zeros((256, 3), np.uint8)
    for i in range(256):
        c, r, g, b = i, 0, 0, 0
        for j in range(8):
            r |= ((c >> 0) & 1) << (7 - j)
            g |= ((c >> 1) & 1) << (7 - j)
            b |= ((c >> 2) & 1) << (7 - j)
            c >>= 3
        p[i] = (r, g, b)
    return p.flatten().tolist()


def main():
    model, src, out, size, batch, threads = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4]), int(sys.argv[5]), int(sys.argv[6])
    square = (sys.argv[7] if len(sys.argv) > 7 else "square") == "square"
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    sess = ort.InferenceSession(model, so, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    files = sorted(f for f in os.listdir(src) if f.endswith(".jpg"))
    os.makedirs(out, exist_ok=True)
    pal = palette()
    start, run = time.time(), 0.0
    for i in range(0, len(files), batch):
        items = []
        for f in files[i:i + batch]:
            img = Image.open(os.path.join(src, f)).convert("RGB")
            w, h = img.size
            s = size / max(w, h)
            nw, nh = max(1, round(w * s)), max(1, round(h * s))
            cw, ch = (size, size) if square else (-(-nw // 16) * 16, -(-nh // 16) * 16)
            canvas = Image.new("RGB", (cw, ch), tuple(int(round(m * 255)) for m in MEAN))
            canvas.paste(img.resize((nw, nh), Image.BILINEAR), (0, 0))
            items.append((f, w, h, nw, nh, (np.asarray(canvas, np.float32) / 255.0 - MEAN) / STD))
        bh, bw = max(it[5].shape[0] for it in items), max(it[5].shape[1] for it in items)
        x = np.zeros((len(items), bh, bw, 3), np.float32)  # 0 = the normalized mean
        for k, it in enumerate(items):
            x[k, :it[5].shape[0], :it[5].shape[1]] = it[5]
        x = x.transpose(0, 3, 1, 2).copy()
        t = time.perf_counter()
        logits = sess.run(None, {name: x})[0]
        run += time.perf_counter() - t
        for (f, w, h, nw, nh, _), lg in zip(items, logits):
            up = np.stack([np.asarray(Image.fromarray(c[:nh, :nw]).resize((w, h), Image.BILINEAR)) for c in lg])
            mask = Image.fromarray(up.argmax(0).astype(np.uint8), mode="P")
            mask.putpalette(pal)
            mask.save(os.path.join(out, os.path.splitext(f)[0] + ".png"))
    elapsed = time.time() - start
    ms = run / len(files) * 1000
    print(f"python: {len(files)} images in {elapsed:.2f} s (onnxruntime {ms:.1f} ms per image) = {len(files) / elapsed:.2f} images/s")


if __name__ == "__main__":
    main()
