#!/usr/bin/env python3
"""Make tests/fixtures/metrics.json: random ground truth (with 255 "ignore" pixels) and random
predictions for 7 classes, one class absent from both, scored with the semantics of torchvision's
references/segmentation/utils.py ConfusionMatrix (labels outside [0, n) ignored; IoU per class
diag / (row + col - diag); mIoU over the classes whose IoU is defined, i.e. nanmean).

Needs only numpy (2.x). Usage: python scripts/make_metric_fixture.py
"""
import json

import numpy as np

N = 7
rng = np.random.default_rng(2026)
gt = rng.integers(0, N, size=(4, 33, 47)).astype(np.uint8)
pred = gt.copy()
noise = rng.random(gt.shape) < 0.35
pred[noise] = rng.integers(0, N, size=int(noise.sum()))
gt[gt == 5] = 0      # class 5 absent from ground truth ...
pred[pred == 5] = 1  # ... and from predictions
gt[rng.random(gt.shape) < 0.1] = 255

# torchvision ConfusionMatrix.update / compute
a, b = gt.flatten().astype(np.int64), pred.flatten().astype(np.int64)
k = (a >= 0) & (a < N)
mat = np.bincount(N * a[k] + b[k], minlength=N * N).reshape(N, N)
diag = np.diag(mat).astype(np.float64)
acc_global = diag.sum() / mat.sum()
with np.errstate(invalid="ignore", divide="ignore"):
    iu = diag / (mat.sum(1) + mat.sum(0) - diag)
freq = mat.sum(1) / mat.sum()
out = {
    "classes": N,
    "shape": list(gt.shape),
    "gt": gt.flatten().tolist(),
    "pred": pred.flatten().tolist(),
    "miou": float(np.nanmean(iu)),
    "pixel_accuracy": float(acc_global),
    "per_class_iou": [None if np.isnan(v) else float(v) for v in iu],
    "frequency_weighted_iou": float(np.nansum(freq * iu)),
    "pixels": int(mat.sum()),
}
json.dump(out, open("tests/fixtures/metrics.json", "w"))
print({k: v for k, v in out.items() if k not in ("gt", "pred")})
