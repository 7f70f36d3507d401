#!/usr/bin/env python3
"""A tf.keras DeepLabv3+ written for segtune, converted to ONNX by tf2onnx (the seed's own system).

The model follows the paper (Chen et al. 2018, "Encoder-Decoder with Atrous Separable Convolution"):
- backbone `xception65`: the modified aligned Xception-65 — entry flow (two convolutions, three
  blocks of three separable convolutions with a strided 1×1 residual), middle flow (16 residual
  blocks of three separable convolutions at 728 channels), exit flow (728-1024-1024 block, then
  1536-1536-2048 separable convolutions, atrous rate 2 for output stride 16); each separable
  convolution is depthwise 3×3 → BN → ReLU → pointwise 1×1 → BN → ReLU;
- backbone `mobilenetv2`: MobileNetV2 (width 1.0) with its last stride replaced by atrous rate 2
  (output stride 16), as DeepLab's MobileNetV2 variant;
- ASPP: 1×1, three atrous separable 3×3 (rates 6, 12, 18) and image pooling, 256 channels each,
  concatenated and projected to 256;
- decoder: the stride-4 low-level features projected to 48 channels, the ASPP output upsampled
  bilinearly to them (the 4× skip), two separable 3×3 convolutions at 256, a 1×1 classifier, and
  bilinear upsampling to the input size.
Strided and dilated convolutions pad explicitly (ZeroPadding2D + "valid"), as Keras Applications
do, so the ONNX graph carries Pad nodes; depthwise convolutions become grouped Conv nodes.

Input: NHWC float `[-1, 1]` (x / 127.5 - 1, what Keras' MobileNetV2/Xception preprocessing does),
any batch, height and width (multiples of 16 keep every stride exact). Output: NHWC logits, or
probabilities with `--softmax` (the seed's mistake, for `segtune doctor` to find).

Conversion: tf2onnx, opset 17. tf2onnx normally folds each BatchNormalization into the Conv
before it; that fold is switched off so the file keeps its BN layers (statistics and affine
parameters) like a training checkpoint — fine-tuning with frozen BN needs them. Initializers are
renamed `backbone.<layer>.<slot>` / `decoder.<layer>.<slot>` (segtune's `--freeze backbone`
freezes `backbone.*`), each BN node gets its Keras momentum, and the file carries segtune's
metadata (mean/std 0.5, NHWC, sides multiple of 16, the source).

Weights are Keras' random initialization, seeded (no model hub here). With internet, a real
checkpoint converts the same way: build the model, `model.load_weights(...)` (or the official
DeepLab zoo's frozen graph through `python -m tf2onnx.convert`), then call `convert()` below.

The MobileNetV2 file is ~13 MB and is committed (pretrained by segtune, see models/README.md);
the Xception-65 one is ~160 MB: made by this script, compiled in by build.rs when present.

Versions: tensorflow-cpu==2.15.1 (Keras 2.15) tf2onnx==1.16.1 onnx==1.17.0 onnxruntime==1.19.2.
Usage: python scripts/export_keras_deeplabv3plus.py --backbone mobilenetv2|xception65 [--classes 21]
           [--softmax] [--calibrate-bn] [--out PATH]
The Xception-65 file the tests expect: --backbone xception65 --calibrate-bn (random weights whose
logits do not vanish; see calibrate_bn).
"""
import argparse
import hashlib

import numpy as np
import onnx
import onnx.numpy_helper
import tensorflow as tf
import tf2onnx
from tf2onnx.optimizer import back_to_back_optimizer

L = tf.keras.layers
SEED = 20261127
BN_MOMENTUM = 0.99  # Keras' default
BN_EPSILON = 1e-3


def pad_for(kernel, rate):
    """Explicit 'same' padding of a kernel at a dilation rate (Keras Applications' correct_pad for
    stride 2 on even inputs: the extra pixel at the end)."""
    total = (kernel - 1) * rate
    return (total // 2, total - total // 2)


def bn(x, name):
    return L.BatchNormalization(momentum=BN_MOMENTUM, epsilon=BN_EPSILON, name=name)(x)


def conv_bn(x, filters, kernel, name, stride=1, rate=1, act="relu"):
    if kernel > 1:
        p = pad_for(kernel, rate)
        x = L.ZeroPadding2D((p, p), name=name + "_pad")(x)
    x = L.Conv2D(filters, kernel, strides=stride, dilation_rate=rate, padding="valid", use_bias=False, name=name)(x)
    x = bn(x, name + "_bn")
    if act == "relu":
        x = L.ReLU(name=name + "_relu")(x)
    elif act == "relu6":
        x = L.ReLU(6.0, name=name + "_relu6")(x)
    return x


def sep_conv_bn(x, filters, name, stride=1, rate=1, depth_activation=True):
    """Depthwise 3×3 (stride, rate) → BN → [ReLU] → pointwise 1×1 → BN → [ReLU], DeepLab style."""
    if not depth_activation:
        x = L.ReLU(name=name + "_prerelu")(x)
    p = pad_for(3, rate)
    x = L.ZeroPadding2D((p, p), name=name + "_pad")(x)
    x = L.DepthwiseConv2D(3, strides=stride, dilation_rate=rate, padding="valid", use_bias=False,
                          name=name + "_depthwise")(x)
    x = bn(x, name + "_depthwise_bn")
    if depth_activation:
        x = L.ReLU(name=name + "_depthwise_relu")(x)
    x = L.Conv2D(filters, 1, padding="valid", use_bias=False, name=name + "_pointwise")(x)
    x = bn(x, name + "_pointwise_bn")
    if depth_activation:
        x = L.ReLU(name=name + "_pointwise_relu")(x)
    return x


def xception_block(x, depths, name, skip="conv", stride=1, rate=1, depth_activation=False, return_skip=False):
    """Three separable convolutions (the last one strided) with a residual: a strided 1×1 conv
    (`conv`), the identity (`sum`) or none."""
    residual = x
    low = None
    for i, d in enumerate(depths):
        residual = sep_conv_bn(residual, d, f"{name}_sep{i + 1}", stride=stride if i == 2 else 1, rate=rate,
                               depth_activation=depth_activation)
        if i == 1:
            low = residual
    if skip == "conv":
        shortcut = L.Conv2D(depths[-1], 1, strides=stride, use_bias=False, name=name + "_shortcut")(x)
        shortcut = bn(shortcut, name + "_shortcut_bn")
        out = L.Add(name=name + "_add")([residual, shortcut])
    elif skip == "sum":
        out = L.Add(name=name + "_add")([residual, x])
    else:
        out = residual
    return (out, low) if return_skip else out


def xception65(x):
    """Modified aligned Xception-65 at output stride 16: (features, stride-4 low-level features)."""
    p = "backbone_"
    x = conv_bn(x, 32, 3, p + "entry_conv1", stride=2)
    x = conv_bn(x, 64, 3, p + "entry_conv2")
    x = xception_block(x, [128, 128, 128], p + "entry_block1", stride=2)
    x, low = xception_block(x, [256, 256, 256], p + "entry_block2", stride=2, return_skip=True)
    x = xception_block(x, [728, 728, 728], p + "entry_block3", stride=2)
    for i in range(16):
        x = xception_block(x, [728, 728, 728], p + f"middle_block{i + 1}", skip="sum")
    x = xception_block(x, [728, 1024, 1024], p + "exit_block1", stride=1, rate=1)
    x = xception_block(x, [1536, 1536, 2048], p + "exit_block2", skip="none", rate=2, depth_activation=True)
    return x, low


def inverted_residual(x, expansion, filters, name, stride=1, rate=1):
    c = x.shape[-1]
    y = x
    if expansion != 1:
        y = L.Conv2D(c * expansion, 1, use_bias=False, name=name + "_expand")(y)
        y = bn(y, name + "_expand_bn")
        y = L.ReLU(6.0, name=name + "_expand_relu6")(y)
    p = pad_for(3, rate)
    y = L.ZeroPadding2D((p, p), name=name + "_pad")(y)
    y = L.DepthwiseConv2D(3, strides=stride, dilation_rate=rate, padding="valid", use_bias=False,
                          name=name + "_depthwise")(y)
    y = bn(y, name + "_depthwise_bn")
    y = L.ReLU(6.0, name=name + "_depthwise_relu6")(y)
    y = L.Conv2D(filters, 1, use_bias=False, name=name + "_project")(y)
    y = bn(y, name + "_project_bn")
    if stride == 1 and c == filters:
        y = L.Add(name=name + "_add")([x, y])
    return y


def mobilenetv2(x):
    """MobileNetV2 (width 1.0) at output stride 16: (features, stride-4 low-level features)."""
    p = "backbone_"
    x = conv_bn(x, 32, 3, p + "conv1", stride=2, act="relu6")
    x = inverted_residual(x, 1, 16, p + "block0")
    # (expansion, channels, repeats, stride, rate): the last stride-2 stage runs at rate 2 instead.
    stages = [(6, 24, 2, 2, 1), (6, 32, 3, 2, 1), (6, 64, 4, 2, 1), (6, 96, 3, 1, 1), (6, 160, 3, 1, 2),
              (6, 320, 1, 1, 2)]
    low, k = None, 1
    for t, c, n, s, r in stages:
        for i in range(n):
            x = inverted_residual(x, t, c, p + f"block{k}", stride=s if i == 0 else 1, rate=r)
            k += 1
        if c == 24:
            low = x
    return x, low


def resize_like(x, like, name):
    """Bilinear resize of `x` to the spatial size of `like` (half-pixel centres, as TF2 does)."""
    return L.Lambda(lambda t: tf.image.resize(t[0], tf.shape(t[1])[1:3], method="bilinear"), name=name)([x, like])


def deeplabv3plus(backbone="mobilenetv2", classes=21, softmax=False):
    image = L.Input((None, None, 3), name="image")
    features, low = {"mobilenetv2": mobilenetv2, "xception65": xception65}[backbone](image)
    d = "decoder_"
    # ASPP: image pooling, 1×1, atrous separable 3×3 at rates 6, 12, 18.
    pool = L.Lambda(lambda t: tf.reduce_mean(t, axis=[1, 2], keepdims=True), name=d + "aspp_pool")(features)
    pool = conv_bn(pool, 256, 1, d + "aspp_pool_conv")
    pool = resize_like(pool, features, d + "aspp_pool_upsample")
    branches = [pool, conv_bn(features, 256, 1, d + "aspp_conv0")]
    branches += [sep_conv_bn(features, 256, d + f"aspp_conv{i + 1}", rate=r) for i, r in enumerate((6, 12, 18))]
    x = L.Concatenate(name=d + "aspp_concat")(branches)
    x = conv_bn(x, 256, 1, d + "aspp_project")
    # Decoder: the 4× skip.
    x = resize_like(x, low, d + "upsample4")
    skip = conv_bn(low, 48, 1, d + "low_level_project")
    x = L.Concatenate(name=d + "concat")([x, skip])
    x = sep_conv_bn(x, 256, d + "conv1")
    x = sep_conv_bn(x, 256, d + "conv2")
    x = L.Conv2D(classes, 1, name=d + "classifier")(x)
    x = resize_like(x, image, d + "upsample_output")
    if softmax:
        x = L.Softmax(axis=-1, name="probabilities")(x)
    return tf.keras.Model(image, x, name=f"deeplabv3plus_{backbone}")


def rename_initializers(model, layer_of_node):
    """Each Conv/BN node gets its own initializers, named `backbone.<layer>.<slot>` /
    `decoder.<layer>.<slot>` (tf2onnx merges equal constants, e.g. every BN's initial zeros, into one
    shared initializer: a trainable checkpoint needs one tensor per parameter)."""
    g = model.graph
    slots = {"Conv": ["weight", "bias"], "BatchNormalization": ["gamma", "beta", "running_mean", "running_var"]}
    inits = {t.name: t for t in g.initializer}
    used = set()
    owned = []
    for node in g.node:
        if node.op_type not in slots:
            continue
        layer = layer_of_node(node.name)
        if layer is None:
            raise SystemExit(f"node {node.name}: no Keras layer named backbone_* or decoder_* in its name")
        prefix, rest = layer.split("_", 1)
        for i, (slot, value) in enumerate(zip(slots[node.op_type], node.input[1:])):
            if value in inits:
                t = onnx.TensorProto()
                t.CopyFrom(inits[value])
                t.name = f"{prefix}.{rest}.{slot}"
                owned.append(t)
                node.input[i + 1] = t.name
    for node in g.node:
        used.update(node.input)
    keep = [t for t in g.initializer if t.name in used]
    del g.initializer[:]
    g.initializer.extend(keep + owned)
    assert len({t.name for t in g.initializer}) == len(g.initializer), "initializer names are unique"
    return len(owned)


def restore_dropped_biases(model_proto, model, layer_of_node):
    """tf2onnx optimizes away a BiasAdd of zeros, so a freshly initialized classifier (bias 0)
    loses its bias in the graph and it could never be trained; give such Conv nodes their bias back
    as an initializer of zeros, `<prefix>.<layer>.bias`."""
    g = model_proto.graph
    with_bias = {l.name for l in model.layers if isinstance(l, L.Conv2D) and l.use_bias}
    added = 0
    for node in g.node:
        layer = layer_of_node(node.name) if node.op_type == "Conv" else None
        if layer in with_bias and len(node.input) == 2:
            bias = model.get_layer(layer).bias.numpy()
            assert not bias.any(), f"{layer}: a non-zero bias should have been kept by tf2onnx"
            prefix, rest = layer.split("_", 1)
            t = onnx.numpy_helper.from_array(bias.astype(np.float32), f"{prefix}.{rest}.bias")
            g.initializer.append(t)
            node.input.append(t.name)
            added += 1
    return added


def convert(model, out, source):
    # Keep BatchNormalization nodes: no Conv+BN folding.
    back_to_back_optimizer._func_map.pop(("Conv", "BatchNormalization"), None)
    spec = (tf.TensorSpec((None, None, None, 3), tf.float32, name="image"),)
    proto, _ = tf2onnx.convert.from_keras(model, input_signature=spec, opset=17)
    layer_names = sorted((l.name for l in model.layers if l.name.startswith(("backbone_", "decoder_"))),
                         key=len, reverse=True)

    def layer_of_node(node_name):
        parts = node_name.split("/")
        for layer in layer_names:  # longest first: `block1` must not claim `block10`'s nodes
            if layer in parts:
                return layer
        return None

    n = rename_initializers(proto, layer_of_node)
    n += restore_dropped_biases(proto, model, layer_of_node)
    momentum = {l.name: l.momentum for l in model.layers if isinstance(l, L.BatchNormalization)}
    bns = 0
    for node in proto.graph.node:
        if node.op_type == "BatchNormalization":
            layer = layer_of_node(node.name)
            del node.attribute[:]
            node.attribute.extend([onnx.helper.make_attribute("epsilon", BN_EPSILON),
                                   onnx.helper.make_attribute("momentum", float(momentum[layer]))])
            bns += 1
    proto.graph.output[0].name  # noqa: B018 (exists)
    del proto.metadata_props[:]
    for k, v in [("segtune.mean", "0.5,0.5,0.5"), ("segtune.std", "0.5,0.5,0.5"), ("segtune.layout", "NHWC"),
                 ("segtune.size_multiple", "16"), ("segtune.source", source)]:
        proto.metadata_props.add(key=k, value=v)
    proto.producer_name = "tf2onnx"
    onnx.checker.check_model(proto)
    onnx.save(proto, out)
    print(f"{out}: {len(proto.graph.node)} nodes, {n} parameter initializers, {bns} BatchNormalization kept")


def calibrate_bn(model, size=128, batch=4):
    """Sets every BatchNorm's moving statistics to those of one batch of uniform [-1, 1] noise in
    training mode (momentum 0 for that call). At Keras' initial statistics (mean 0, variance 1) a
    random deep network's logits vanish (~1e-12 for Xception-65), and parity on them proves
    nothing; calibrated statistics keep the activations normalized, so the logits are O(1)."""
    bns = [layer for layer in model.layers if isinstance(layer, L.BatchNormalization)]
    saved = [layer.momentum for layer in bns]
    for layer in bns:
        layer.momentum = 0.0
    x = np.random.default_rng(1).uniform(-1, 1, (batch, size, size, 3)).astype(np.float32)
    model(x, training=True)
    for layer, m in zip(bns, saved):
        layer.momentum = m


def check(model, path, size=64):
    """Keras and onnxruntime agree on a random [-1, 1] batch of two."""
    import onnxruntime as ort

    x = np.random.default_rng(0).uniform(-1, 1, (2, size, size, 3)).astype(np.float32)
    want = model(x, training=False).numpy()
    sess = ort.InferenceSession(path, providers=["CPUExecutionProvider"])
    got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
    err = float(np.abs(got - want).max())
    scale = max(1.0, float(np.abs(want).max()))
    print(f"keras vs onnxruntime: max |diff| {err:.2e} on {x.shape}, output {got.shape}, largest |logit| {scale:.3g}")
    # TensorFlow and onnxruntime accumulate in different orders: 1e-4 relative to the logits.
    assert got.shape == want.shape and err <= 1e-4 * scale, err


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--backbone", choices=["mobilenetv2", "xception65"], default="mobilenetv2")
    ap.add_argument("--classes", type=int, default=21)
    ap.add_argument("--softmax", action="store_true", help="end in a softmax (the seed's mistake)")
    ap.add_argument("--calibrate-bn", action="store_true",
                    help="BN statistics from one batch of [-1, 1] noise instead of Keras' initial ones")
    ap.add_argument("--out")
    args = ap.parse_args()
    out = args.out or f"models/keras_deeplabv3plus_{args.backbone}.onnx"
    tf.keras.utils.set_random_seed(SEED)
    model = deeplabv3plus(args.backbone, args.classes, args.softmax)
    print(f"{model.name}: {model.count_params():,} parameters")
    if args.calibrate_bn:
        calibrate_bn(model)
    flags = (" --softmax" if args.softmax else "") + (" --calibrate-bn" if args.calibrate_bn else "")
    convert(model, out, source=f"scripts/export_keras_deeplabv3plus.py --backbone {args.backbone} --classes "
                               f"{args.classes}{flags}; Keras random init, seed {SEED}")
    check(model, out)
    print("sha256", hashlib.sha256(open(out, "rb").read()).hexdigest(), out)


if __name__ == "__main__":
    main()
