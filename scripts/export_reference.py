#!/usr/bin/env python3
"""Export the reference architecture, the graph of `models/deeplabv3plus_mobilenetv2.onnx`.

segmentation-models-pytorch DeepLabV3Plus(encoder_name="mobilenet_v2", encoder_weights=None,
classes=21), seeded, exported with torch.onnx at opset 17, BatchNorm kept (TrainingMode.PRESERVE),
a dynamic batch axis and dynamic spatial axes so that any batch and any size divisible by 16 runs.

Weights are random (torch.manual_seed(SEED)) and BN statistics are at their initial values: no
model hub is reachable where this was made. This file was the shipped model until commit 0e541eb;
the shipped model now is this graph with weights pretrained by segtune (bench/pretrain.sh), so the
default output no longer overwrites it. See models/README.md.

Pinned versions this file was made with (torch is needed only to regenerate it, never to build
or test segtune):
    torch==2.15.0 torchvision==0.29.2 segmentation-models-pytorch==0.6.0 timm==1.0.31
    onnx==1.23.2 onnxruntime==1.31.1 numpy==2.4.6

Usage: python scripts/export_reference.py [--out target/deeplabv3plus_mobilenetv2_random.onnx]
"""
import argparse
import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import segmentation_models_pytorch as smp
import torch

SEED = 20261127
IMAGENET_MEAN = [0.485, 0.456, 0.406]
IMAGENET_STD = [0.229, 0.224, 0.225]


def build(classes=21):
    torch.manual_seed(SEED)
    return smp.DeepLabV3Plus(encoder_name="mobilenet_v2", encoder_weights=None, classes=classes).eval()


def export(model, path, source=None):
    """Exports `model` to `path` (opset 17, BN kept, dynamic batch/height/width, output `output`)
    with segtune's metadata: ImageNet normalization, NCHW, sides multiple of 16."""
    x = torch.randn(1, 3, 256, 256)
    torch.onnx.export(
        model, (x,), path, opset_version=17, dynamo=False,
        input_names=["input"], output_names=["output"],
        dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"},
                      "output": {0: "batch", 2: "height", 3: "width"}},
        training=torch.onnx.TrainingMode.PRESERVE,
    )
    m = onnx.load(path)
    meta = {
        "segtune.source": source or "smp DeepLabV3Plus(mobilenet_v2, encoder_weights=None, classes=21), "
                                    f"torch.manual_seed({SEED}), random weights, BN at init",
        "segtune.layout": "NCHW",
        "segtune.mean": ",".join(str(v) for v in IMAGENET_MEAN),
        "segtune.std": ",".join(str(v) for v in IMAGENET_STD),
        "segtune.size_multiple": "16",
    }
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m)
    onnx.save(m, path)


def check(model, path):
    """onnxruntime on the file computes what `model` computes (21 classes) at several sizes."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for b, s in [(1, 64), (3, 128), (2, 320)]:
        x = torch.randn(b, 3, s, s)
        with torch.no_grad():
            ref = model(x).numpy()
        out = sess.run(None, {"input": x.numpy()})[0]
        assert out.shape == (b, 21, s, s), out.shape
        err = float(np.abs(out - ref).max())
        print(f"batch {b} {s}x{s}: max |torch - onnxruntime| = {err:.2e}")
        assert err < 1e-4


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="target/deeplabv3plus_mobilenetv2_random.onnx")
    args = ap.parse_args()
    model = build()
    export(model, args.out)
    check(model, args.out)
    print("sha256", hashlib.sha256(open(args.out, "rb").read()).hexdigest(), args.out)


if __name__ == "__main__":
    main()
