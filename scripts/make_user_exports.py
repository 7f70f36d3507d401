#!/usr/bin/env python3
"""Make the checkpoints a user brings, as `torch.onnx.export` writes them the ordinary ways.

One tiny DeepLabV3+ (`TinyDeepLabV3Plus` below: smp's module names and layout — `encoder`,
`decoder.aspp`, `decoder.block1/2`, `segmentation_head` — a 4-stage encoder at output stride 16
with a 1/4 skip, an ASPP with image pooling that upsamples to the feature's size, 6 classes,
~12k parameters), seeded random weights and BatchNorm statistics calibrated on noise, exported in
every form issue #18 lists. Small enough to commit and for CI (each file < 100 kB).

Compiled in (`models/`, each an architecture of its own):
  tiny_deeplabv3plus.onnx          canonical: opset 17, BN kept (TrainingMode.PRESERVE), dynamic
                                   batch/height/width, plain names (encoder.*, decoder.*)
  tiny_deeplabv3plus_folded.onnx   the most common export: eval mode (BN folded into Conv, weights
                                   named onnx::Conv_N), inside a wrapper `self.m = model`, only the
                                   batch dynamic (input declared [batch, 3, 64, 64])
  tiny_deeplabv3plus_dynamo.onnx   dynamo=True (torch.export), inside a Lightning-style wrapper
    + .onnx.data                   `self.model = model`: names under `model.`, weights in the side
                                   file, attributes written out at their defaults

`--weights` variants of those architectures (`tests/fixtures/exports/`), each with weights of
its own seed:
  prefix_m.onnx, prefix_model.onnx   canonical, wrapped as `self.m` / `self.model` (Lightning)
  prefix_module.onnx                 canonical under `module.` (a DataParallel/DDP state dict kept
                                     in a wrapper: torch.onnx refuses nn.DataParallel itself)
  fixed_hw.onnx                      canonical, dynamic_axes on the batch only: [batch, 3, 64, 64]
  static.onnx                        canonical, no dynamic axes: [1, 3, 64, 64]; the ASPP pooling's
                                     upsampling size is a constant, so it runs at 64×64 only
  external.onnx + external.onnx.data canonical, saved with onnx's external data (all tensors)
  folded_other.onnx                  the folded architecture, another seed (prefix `m.`)
  dynamo_other.onnx + .onnx.data     the dynamo architecture, another seed

Each file is checked against torch with onnxruntime at the export size and, where its graph
allows, at 96×96 and batch 2. Pinned versions (torch is needed only to regenerate these):
    torch==2.15.0 onnx==1.23.2 onnxruntime==1.31.1 onnxscript (for dynamo=True)

Usage: python scripts/make_user_exports.py   (from the repository root)
       python scripts/make_user_exports.py --smp DIR   the same forms of smp's real DeepLabV3Plus
           (mobilenet_v2, random weights, 17 MB each; needs segmentation-models-pytorch==0.6.0),
           not committed: prefix_m, fixed_hw and static load as --weights of the shipped model,
           folded and dynamo (+ .onnx.data) are architectures of their own to put in models/
"""
import os

import numpy as np
import onnx
import onnxruntime as ort
import torch
import torch.nn as nn
import torch.nn.functional as F

CLASSES = 6
SIZE = 64
MODELS = "models"
EXPORTS = "tests/fixtures/exports"


def conv_bn(cin, cout, k=3, stride=1, dilation=1, groups=1, act=nn.ReLU6):
    pad = dilation * (k - 1) // 2
    return nn.Sequential(
        nn.Conv2d(cin, cout, k, stride, pad, dilation=dilation, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
        act(),
    )


class InvertedResidual(nn.Module):
    """MobileNetV2's block at expansion 1 with a residual Add when shapes allow."""

    def __init__(self, cin, cout, stride):
        super().__init__()
        self.residual = stride == 1 and cin == cout
        self.conv = nn.Sequential(
            conv_bn(cin, cin, 3, stride, groups=cin),
            nn.Conv2d(cin, cout, 1, bias=False),
            nn.BatchNorm2d(cout),
        )

    def forward(self, x):
        y = self.conv(x)
        return x + y if self.residual else y


class Encoder(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            conv_bn(3, 8, 3, 2),  # 1/2
            InvertedResidual(8, 12, 2),  # 1/4: the skip
            InvertedResidual(12, 16, 2),  # 1/8
            InvertedResidual(16, 24, 2),  # 1/16
            InvertedResidual(24, 24, 1),
        )

    def forward(self, x):
        low = self.features[:2](x)
        high = self.features[2:](low)
        return low, high


class SeparableConv(nn.Sequential):
    def __init__(self, cin, cout, dilation=1):
        super().__init__(
            nn.Conv2d(cin, cin, 3, padding=dilation, dilation=dilation, groups=cin, bias=False),
            nn.Conv2d(cin, cout, 1, bias=False),
        )


class ASPPPooling(nn.Sequential):
    def __init__(self, cin, cout):
        super().__init__(nn.AdaptiveAvgPool2d(1), nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())

    def forward(self, x):
        size = x.shape[-2:]
        for m in self:
            x = m(x)
        return F.interpolate(x, size=size, mode="bilinear", align_corners=False)


class ASPP(nn.Module):
    def __init__(self, cin, cout, rates=(2, 3)):
        super().__init__()
        branches = [nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())]
        for r in rates:
            branches.append(nn.Sequential(SeparableConv(cin, cout, r), nn.BatchNorm2d(cout), nn.ReLU()))
        branches.append(ASPPPooling(cin, cout))
        self.convs = nn.ModuleList(branches)
        self.project = nn.Sequential(
            nn.Conv2d(len(branches) * cout, cout, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(), nn.Dropout(0.5)
        )

    def forward(self, x):
        return self.project(torch.cat([b(x) for b in self.convs], dim=1))


class Decoder(nn.Module):
    def __init__(self, high=24, low=12, out=16, low_out=8):
        super().__init__()
        self.aspp = nn.Sequential(ASPP(high, out), SeparableConv(out, out), nn.BatchNorm2d(out), nn.ReLU())
        self.up = nn.UpsamplingBilinear2d(scale_factor=4)
        self.block1 = nn.Sequential(nn.Conv2d(low, low_out, 1, bias=False), nn.BatchNorm2d(low_out), nn.ReLU())
        self.block2 = nn.Sequential(SeparableConv(out + low_out, out), nn.BatchNorm2d(out), nn.ReLU())

    def forward(self, low, high):
        x = self.up(self.aspp(high))
        return self.block2(torch.cat([x, self.block1(low)], dim=1))


class TinyDeepLabV3Plus(nn.Module):
    def __init__(self, classes=CLASSES):
        super().__init__()
        self.encoder = Encoder()
        self.decoder = Decoder()
        self.segmentation_head = nn.Sequential(nn.Conv2d(16, classes, 3, padding=1), nn.UpsamplingBilinear2d(scale_factor=4))

    def forward(self, x):
        low, high = self.encoder(x)
        return self.segmentation_head(self.decoder(low, high))


class Wrapper(nn.Module):
    """A training wrapper holding the network as an attribute (`self.m`, a LightningModule's
    `self.model`): every parameter name gets the attribute's prefix."""

    def __init__(self, attr, net):
        super().__init__()
        self.attr = attr
        setattr(self, attr, net)

    def forward(self, x):
        return getattr(self, self.attr)(x)


def build(seed):
    """Seeded random weights; BN statistics calibrated on noise (cumulative averages of 8 train-mode
    batches), so that they are neither 0/1 nor equal across layers."""
    torch.manual_seed(seed)
    net = TinyDeepLabV3Plus()
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = None
            nn.init.uniform_(m.weight, 0.5, 1.5)
            nn.init.uniform_(m.bias, -0.2, 0.2)
    net.train()
    with torch.no_grad():
        for _ in range(8):
            net(torch.randn(4, 3, SIZE, SIZE))
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.momentum = 0.1
    return net.eval()


DYNAMIC = {"input": {0: "batch", 2: "height", 3: "width"}, "output": {0: "batch", 2: "height", 3: "width"}}
BATCH_ONLY = {"input": {0: "batch"}, "output": {0: "batch"}}


def torchscript(model, path, dynamic_axes, bn_kept, batch=1):
    torch.onnx.export(
        model, (torch.randn(batch, 3, SIZE, SIZE),), path, opset_version=17, dynamo=False,
        input_names=["input"], output_names=["output"], dynamic_axes=dynamic_axes,
        training=torch.onnx.TrainingMode.PRESERVE if bn_kept else torch.onnx.TrainingMode.EVAL,
    )


def dynamo(model, path):
    """torch.export with dynamic batch, height and width; onnxscript writes the weights into
    `PATH.data` (what any model over 2 GB gets, and what dynamo=True does here)."""
    batch, height, width = torch.export.Dim("batch"), torch.export.Dim.AUTO, torch.export.Dim.AUTO
    program = torch.onnx.export(
        model, (torch.randn(2, 3, SIZE, SIZE),), dynamo=True, input_names=["input"], output_names=["output"],
        dynamic_shapes={"x": {0: batch, 2: height, 3: width}}, optimize=True,
    )
    for stale in (path, path + ".data"):
        if os.path.exists(stale):
            os.remove(stale)
    program.save(path, external_data=True)


def external(src, path):
    """An export re-saved by onnx with every tensor in `PATH.data`."""
    m = onnx.load(src)
    data = os.path.basename(path) + ".data"
    if os.path.exists(path + ".data"):
        os.remove(path + ".data")
    onnx.save_model(m, path, save_as_external_data=True, all_tensors_to_one_file=True, location=data, size_threshold=0)


def check(model, path, sizes):
    """onnxruntime on the file computes what torch computes, at each (batch, side) in `sizes`."""
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    name = sess.get_inputs()[0].name
    for b, s in sizes:
        x = torch.randn(b, 3, s, s)
        with torch.no_grad():
            want = model(x).numpy()
        got = sess.run(None, {name: x.numpy()})[0]
        assert got.shape == want.shape, (path, got.shape, want.shape)
        err = float(np.abs(got - want).max())
        assert err < 1e-4, (path, b, s, err)
    inits = onnx.load(path, load_external_data=False).graph.initializer
    print(f"{path}: {len(inits)} initializers (first {inits[0].name!r}), onnxruntime = torch at {sizes}")


def main():
    os.makedirs(EXPORTS, exist_ok=True)
    anywhere = [(1, SIZE), (2, 96), (3, 32)]
    fixed = [(1, SIZE), (2, SIZE)]

    canonical = build(1)
    torchscript(canonical, f"{MODELS}/tiny_deeplabv3plus.onnx", DYNAMIC, bn_kept=True)
    check(canonical, f"{MODELS}/tiny_deeplabv3plus.onnx", anywhere)

    folded = Wrapper("m", build(2)).eval()
    torchscript(folded, f"{MODELS}/tiny_deeplabv3plus_folded.onnx", BATCH_ONLY, bn_kept=False)
    check(folded, f"{MODELS}/tiny_deeplabv3plus_folded.onnx", fixed)

    lightning = Wrapper("model", build(3)).eval()
    dynamo(lightning, f"{MODELS}/tiny_deeplabv3plus_dynamo.onnx")
    check(lightning, f"{MODELS}/tiny_deeplabv3plus_dynamo.onnx", anywhere)

    for attr, seed in [("m", 11), ("model", 12)]:
        wrapped = Wrapper(attr, build(seed)).eval()
        torchscript(wrapped, f"{EXPORTS}/prefix_{attr}.onnx", DYNAMIC, bn_kept=True)
        check(wrapped, f"{EXPORTS}/prefix_{attr}.onnx", anywhere)
    # torch.onnx refuses nn.DataParallel itself ("use model.module"); its `module.` names reach an
    # export through a wrapper that keeps the attribute, as DDP-era training code does.
    parallel = Wrapper("module", build(13)).eval()
    torchscript(parallel, f"{EXPORTS}/prefix_module.onnx", DYNAMIC, bn_kept=True)
    check(parallel, f"{EXPORTS}/prefix_module.onnx", anywhere)

    net = build(14)
    torchscript(net, f"{EXPORTS}/fixed_hw.onnx", BATCH_ONLY, bn_kept=True)
    check(net, f"{EXPORTS}/fixed_hw.onnx", fixed)

    net = build(15)
    torchscript(net, f"{EXPORTS}/static.onnx", None, bn_kept=True)
    check(net, f"{EXPORTS}/static.onnx", [(1, SIZE)])

    net = build(16)
    torchscript(net, f"{EXPORTS}/external_src.onnx", DYNAMIC, bn_kept=True)
    external(f"{EXPORTS}/external_src.onnx", f"{EXPORTS}/external.onnx")
    os.remove(f"{EXPORTS}/external_src.onnx")
    check(net, f"{EXPORTS}/external.onnx", anywhere)

    other = Wrapper("m", build(17)).eval()
    torchscript(other, f"{EXPORTS}/folded_other.onnx", BATCH_ONLY, bn_kept=False)
    check(other, f"{EXPORTS}/folded_other.onnx", fixed)

    other = Wrapper("model", build(18)).eval()
    dynamo(other, f"{EXPORTS}/dynamo_other.onnx")
    check(other, f"{EXPORTS}/dynamo_other.onnx", anywhere)


def smp_forms(out):
    """smp DeepLabV3Plus(mobilenet_v2) exported as users do, into `out`."""
    import segmentation_models_pytorch as smp

    global SIZE
    SIZE = 256
    os.makedirs(out, exist_ok=True)
    torch.manual_seed(0)
    net = smp.DeepLabV3Plus(encoder_name="mobilenet_v2", encoder_weights=None, classes=21).eval()
    torchscript(Wrapper("m", net).eval(), f"{out}/prefix_m.onnx", DYNAMIC, bn_kept=True)
    torchscript(net, f"{out}/fixed_hw.onnx", BATCH_ONLY, bn_kept=True)
    torchscript(net, f"{out}/static.onnx", None, bn_kept=True)
    torchscript(Wrapper("module", net).eval(), f"{out}/folded.onnx", BATCH_ONLY, bn_kept=False)
    dynamo(Wrapper("model", net).eval(), f"{out}/dynamo.onnx")
    for name, sizes in [("prefix_m", [(1, 256), (2, 320)]), ("fixed_hw", [(1, 256)]), ("static", [(1, 256)]),
                        ("folded", [(1, 256)]), ("dynamo", [(1, 256), (2, 320)])]:
        check(Wrapper("m", net).eval(), f"{out}/{name}.onnx", sizes)


if __name__ == "__main__":
    import sys

    if len(sys.argv) == 3 and sys.argv[1] == "--smp":
        smp_forms(sys.argv[2])
    else:
        main()
