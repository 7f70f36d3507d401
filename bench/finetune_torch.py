#!/usr/bin/env python3
"""PyTorch peer of bench/finetune.sh: smp DeepLabV3Plus(mobilenet_v2) with the reference's seed
and weights, fine-tuned on the same VOC-layout set with the same recipe as `segtune train`:
6 classes (new classifier), SGD lr 0.02 momentum 0.9 weight decay 1e-4, poly(0.9), batch 8,
crop 128, random scale 0.5-2 + pad (mean / 255) + crop + flip, BN in train mode, cross-entropy
ignoring 255, evaluation on val every epoch (mIoU from a confusion matrix, classes absent from
both ground truth and prediction left out). Dropout is disabled as in the ONNX graph.

Usage: python bench/finetune_torch.py DATA_DIR EPOCHS
"""
import os
import sys
import time

import numpy as np
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F
from PIL import Image

MEAN = np.array([0.485, 0.456, 0.406], np.float32)
STD = np.array([0.229, 0.224, 0.225], np.float32)


def read_split(root, split):
    ids = open(os.path.join(root, "ImageSets/Segmentation", f"{split}.txt")).read().split()
    imgs = [np.asarray(Image.open(os.path.join(root, "JPEGImages", f"{i}.jpg")).convert("RGB")) for i in ids]
    masks = [np.asarray(Image.open(os.path.join(root, "SegmentationClass", f"{i}.png"))) for i in ids]
    return imgs, masks


def augment(img, mask, crop, rng):
    s = rng.uniform(0.5, 2.0)
    h, w = mask.shape
    nh, nw = max(1, round(h * s)), max(1, round(w * s))
    img = np.asarray(Image.fromarray(img).resize((nw, nh), Image.BILINEAR))
    mask = np.asarray(Image.fromarray(mask).resize((nw, nh), Image.NEAREST))
    ph, pw = max(nh, crop), max(nw, crop)
    out_i = np.tile((MEAN * 255).round().astype(np.uint8), (ph, pw, 1))
    out_m = np.full((ph, pw), 255, np.uint8)
    out_i[:nh, :nw], out_m[:nh, :nw] = img, mask
    y, x = rng.integers(0, ph - crop + 1), rng.integers(0, pw - crop + 1)
    out_i, out_m = out_i[y:y + crop, x:x + crop], out_m[y:y + crop, x:x + crop]
    if rng.random() < 0.5:
        out_i, out_m = out_i[:, ::-1], out_m[:, ::-1]
    return out_i, out_m


def to_tensor(imgs):
    x = (np.stack(imgs).astype(np.float32) / 255.0 - MEAN) / STD
    return torch.from_numpy(x.transpose(0, 3, 1, 2).copy())


def main():
    root, epochs = sys.argv[1], int(sys.argv[2])
    torch.set_num_threads(os.cpu_count())
    torch.manual_seed(20261127)  # scripts/export_reference.py's seed: the shipped weights
    model = smp.DeepLabV3Plus(encoder_name="mobilenet_v2", encoder_weights=None, classes=21)
    torch.manual_seed(0)
    model.segmentation_head[0] = torch.nn.Conv2d(256, 6, kernel_size=1)
    torch.nn.init.xavier_uniform_(model.segmentation_head[0].weight)
    torch.nn.init.zeros_(model.segmentation_head[0].bias)
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
    train_i, train_m = read_split(root, "train")
    val_i, val_m = read_split(root, "val")
    batch, crop, classes = 8, 128, 6
    steps = len(train_i) // batch
    total = steps * epochs
    opt = torch.optim.SGD(model.parameters(), lr=0.02, momentum=0.9, weight_decay=1e-4)
    rng = np.random.default_rng(0)
    step, start = 0, time.time()
    for epoch in range(1, epochs + 1):
        model.train()
        order = rng.permutation(len(train_i))
        losses = []
        for b in range(steps):
            idx = order[b * batch:(b + 1) * batch]
            pairs = [augment(train_i[i], train_m[i], crop, rng) for i in idx]
            x = to_tensor([p[0] for p in pairs])
            y = torch.from_numpy(np.stack([p[1] for p in pairs]).astype(np.int64))
            for g in opt.param_groups:
                g["lr"] = 0.02 * (1 - step / total) ** 0.9
            loss = F.cross_entropy(model(x), y, ignore_index=255)
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            losses.append(loss.item())
        model.eval()
        cm = np.zeros((classes, classes), np.int64)
        with torch.no_grad():
            for i in range(0, len(val_i), batch):
                pred = model(to_tensor(val_i[i:i + batch])).argmax(1).numpy()
                gt = np.stack(val_m[i:i + batch])
                ok = gt != 255
                cm += np.bincount(gt[ok].astype(np.int64) * classes + pred[ok], minlength=classes * classes).reshape(classes, classes)
        union = cm.sum(0) + cm.sum(1) - np.diag(cm)
        iou = np.diag(cm)[union > 0] / union[union > 0]
        print(f"torch epoch {epoch:>3}/{epochs}  train loss {np.mean(losses):.4f}  val mIoU {iou.mean():.4f}  "
              f"elapsed {time.time() - start:.0f} s", flush=True)


if __name__ == "__main__":
    main()
