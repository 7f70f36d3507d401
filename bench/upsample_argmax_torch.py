"""The peer of segtune's logits-to-mask step (bench/upsample_argmax.sh): the shipped model's
logits of N synthetic images (onnxruntime, 512x384 input, as `segtune infer --size 512` prepares a
500x375 image), written raw to LOGITS.f32; then PyTorch's interpolate(bilinear,
align_corners=False) to 375x500 and argmax over classes, per image, at THREADS threads: prints
the median ms per image and writes the masks (uint8, raw) to MASKS.u8.
Usage: upsample_argmax_torch.py MODEL IMAGES_DIR LOGITS.f32 MASKS.u8 THREADS"""
import glob
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

model, images, logits_path, masks_path, threads = sys.argv[1:6]
torch.set_num_threads(int(threads))
files = sorted(glob.glob(f"{images}/*.jpg"))
mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
batch = np.stack([
    ((np.asarray(Image.open(f).convert("RGB").resize((500, 375), Image.BILINEAR).resize((512, 384), Image.BILINEAR))
      / 255.0 - mean) / std).transpose(2, 0, 1)
    for f in files
]).astype(np.float32)
session = ort.InferenceSession(model, providers=["CPUExecutionProvider"])
logits = np.concatenate([session.run(None, {session.get_inputs()[0].name: batch[i:i + 1]})[0] for i in range(len(files))])
logits.tofile(logits_path)
t = torch.from_numpy(logits)
masks, times = None, []
for _ in range(5):
    out = []
    for i in range(len(files)):
        start = time.perf_counter()
        up = torch.nn.functional.interpolate(t[i:i + 1], size=(375, 500), mode="bilinear", align_corners=False)
        out.append(up.argmax(1).to(torch.uint8))
        times.append(time.perf_counter() - start)
    masks = torch.cat(out)
masks.numpy().tofile(masks_path)
print(f"{statistics.median(times) * 1000:.2f} {logits.shape[1]}")
