#!/usr/bin/env python3
"""Reproduces the seed's mistake on an ONNX checkpoint: a Softmax over the classes on its output.

A tf2onnx graph (ending in the Transpose back to NHWC) gets the Softmax where tf2onnx puts a
Keras `Softmax(axis=-1)`: over axis 1 just before that Transpose (what
`scripts/export_keras_deeplabv3plus.py --softmax` produces); any other graph gets Softmax(axis=1)
appended. Used by bench/keras_seed.sh for `segtune doctor` to find.

Versions: onnx==1.17.0 (any onnx >= 1.12). Usage: python scripts/seed_softmax.py IN.onnx OUT.onnx
"""
import sys

import onnx
from onnx import helper


def main():
    src, dst = sys.argv[1], sys.argv[2]
    m = onnx.load(src)
    g = m.graph
    out = g.output[0].name
    last = next(i for i, n in enumerate(g.node) if out in n.output)
    if g.node[last].op_type == "Transpose":
        logits = g.node[last].input[0]
        g.node[last].input[0] = "probabilities_nchw"
        g.node.insert(last, helper.make_node("Softmax", [logits], ["probabilities_nchw"], name="probabilities/Softmax",
                                             axis=1))
    else:
        g.node.append(helper.make_node("Softmax", [out], ["probabilities"], name="probabilities/Softmax", axis=1))
        g.output[0].name = "probabilities"
    onnx.checker.check_model(m)
    onnx.save(m, dst)
    print(f"{dst}: {src} with a Softmax on its output")


if __name__ == "__main__":
    main()
