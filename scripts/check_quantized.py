#!/usr/bin/env python3
"""Run by .ci/run after the tests: loads the int8 model `segtune quantize` wrote in
tests/quantize.rs with Python onnxruntime (the same PyPI wheel segtune uses), checks that
onnxruntime fuses every quantized Conv into a QLinearConv, and that its prediction on a val
image agrees with the fp32 model's. Usage: python scripts/check_quantized.py target/tmp/quantize"""
import collections
import sys
import tempfile

import numpy as np
import onnx
import onnxruntime as ort

d = sys.argv[1]
x = np.fromfile(f"{d}/input.bin", dtype="<f4").reshape(1, 3, 128, 128)
so = ort.SessionOptions()
so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED
with tempfile.TemporaryDirectory() as tmp:
    so.optimized_model_filepath = f"{tmp}/optimized.onnx"
    int8 = ort.InferenceSession(f"{d}/int8.onnx", so, providers=["CPUExecutionProvider"])
    ops = collections.Counter(n.op_type for n in onnx.load(so.optimized_model_filepath).graph.node)
fp32 = ort.InferenceSession(f"{d}/fp32.onnx", providers=["CPUExecutionProvider"])
name = fp32.get_inputs()[0].name
got, want = int8.run(None, {name: x})[0], fp32.run(None, {name: x})[0]
agree = float((got.argmax(1) == want.argmax(1)).mean())
print(f"python onnxruntime {ort.__version__}: {ops['QLinearConv']} QLinearConv, {ops['Conv']} float Conv, "
      f"argmax agreement with fp32 {agree:.4f}")
assert ops["QLinearConv"] == 67 and ops["Conv"] == 0, f"not every Conv was fused: {dict(ops)}"
assert agree >= 0.98, "the int8 model disagrees with the fp32 model"

# The float16 model (tests/quantize.rs, `--fp16`): fp32 in and out, fp32's predictions.
fp16 = ort.InferenceSession(f"{d}/fp16.onnx", providers=["CPUExecutionProvider"])
assert fp16.get_inputs()[0].type == "tensor(float)" and fp16.get_outputs()[0].type == "tensor(float)"
got = fp16.run(None, {name: x})[0]
agree = float((got.argmax(1) == want.argmax(1)).mean())
print(f"fp16: max |diff| {float(np.abs(got - want).max()):.2e}, argmax agreement with fp32 {agree:.4f}")
assert agree >= 0.99, "the fp16 model disagrees with the fp32 model"
