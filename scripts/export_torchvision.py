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

import torch
import torchvision

from export_reference import check, export

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


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default="models/deeplabv3_mobilenet_v3_large.onnx")
    args = ap.parse_args()
    model = build()
    export(model, args.out, source="torchvision deeplabv3_mobilenet_v3_large(num_classes=21, weights=None), "
                                   f"torch.manual_seed({SEED}), random weights, BN at init")
    check(model, args.out)
    print("sha256", hashlib.sha256(open(args.out, "rb").read()).hexdigest(), args.out)


if __name__ == "__main__":
    main()
