#!/usr/bin/env python3
"""Export torchvision's DeepLabv3 (MobileNetV3-Large backbone) for segtune: models/deeplabv3_mobilenet_v3_large.onnx.

torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(num_classes=21, weights=None,
weights_backbone=None, aux_loss=False), seeded, exported like the reference (torch.onnx, opset 17,
BatchNorm kept with TrainingMode.PRESERVE, dynamic batch/height/width, the `out` head only, named
`output`), with segtune's normalization metadata (ImageNet, NCHW). HardSwish and HardSigmoid are
in the graph. Random weights (no model hub here); with internet, pass
`weights="COCO_WITH_VOC_LABELS_V1"` to `build()` for torchvision's pretrained ones.

The file is ~44 MB, above what the repository commits (~20 MB): this script makes it, `build.rs`
compiles in whatever is in models/, and the tests of this family are skipped when it is absent.

Versions: torch==2.15.0 torchvision==0.29.2 onnx==1.23.2 onnxruntime==1.31.1.
Usage: python scripts/export_torchvision.py [--out models/deeplabv3_mobilenet_v3_large.onnx]
"""
import argparse
import hashlib

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torchvision

SEED = 20261127


class OutOnly(torch.nn.Module):
    """torchvision's segmentation forward (backbone, classifier, bilinear upsampling to the input
    size) returning the logits instead of {"out": logits}, with the parameter names unchanged
    (`backbone.*`, `classifier.*`), which `--freeze backbone` relies on."""

    def __init__(self, model):
        super().__init__()
        self.backbone = model.backbone
        self.classifier = model.classifier

    def forward(self, x):
        size = x.shape[-2:]
        y = self.classifier(self.backbone(x)["out"])
        return torch.nn.functional.interpolate(y, size=size, mode="bilinear", align_corners=False)


def build(weights=None):
    torch.manual_seed(SEED)
    m = torchvision.models.segmentation.deeplabv3_mobilenet_v3_large(
        weights=weights, weights_backbone=None, num_classes=21, aux_loss=False)
    ref = m.eval()
    out = OutOnly(m).eval()
    x = torch.randn(1, 3, 64, 64)
    with torch.no_grad():
        assert torch.equal(out(x), ref(x)["out"]), "OutOnly must compute torchvision's forward"
    return out


def export(model, path):
    torch.onnx.export(
        model, (torch.randn(1, 3, 256, 256),), path, opset_version=17, dynamo=False,
        input_names=["input"], output_names=["output"],
        dynamic_axes={"input": {0: "batch", 2: "height", 3: "width"},
                      "output": {0: "batch", 2: "height", 3: "width"}},
        training=torch.onnx.TrainingMode.PRESERVE,
    )
    m = onnx.load(path)
    meta = {
        "segtune.source": "torchvision deeplabv3_mobilenet_v3_large(num_classes=21, weights=None), "
                          f"torch.manual_seed({SEED}), random weights, BN at init",
        "segtune.layout": "NCHW",
        "segtune.mean": "0.485,0.456,0.406",
        "segtune.std": "0.229,0.224,0.225",
        "segtune.size_multiple": "16",
    }
    del m.metadata_props[:]
    for k, v in meta.items():
        m.metadata_props.add(key=k, value=v)
    onnx.checker.check_model(m)
    onnx.save(m, path)


def check(model, path):
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    for b, s in [(1, 64), (2, 128)]:
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
    ap.add_argument("--out", default="models/deeplabv3_mobilenet_v3_large.onnx")
    args = ap.parse_args()
    model = build()
    export(model, args.out)
    check(model, args.out)
    print("sha256", hashlib.sha256(open(args.out, "rb").read()).hexdigest(), args.out)


if __name__ == "__main__":
    main()
