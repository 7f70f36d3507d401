#!/usr/bin/env python3
"""Run by .ci/run after the tests: loads the export written by tests/export.rs with Python
onnxruntime (the same PyPI wheel segtune uses) and checks one prediction against the burn
model's logits saved beside it. Usage: python scripts/check_export.py target/tmp/roundtrip"""
import sys

import numpy as np
import onnxruntime as ort

d = sys.argv[1]
sess = ort.InferenceSession(f"{d}/export.onnx", providers=["CPUExecutionProvider"])
meta = sess.get_modelmeta().custom_metadata_map
classes = int(meta["segtune.classes"])
x = np.fromfile(f"{d}/input.bin", dtype="<f4").reshape(1, 3, 64, 64)
want = np.fromfile(f"{d}/logits.bin", dtype="<f4").reshape(1, classes, 64, 64)
got = sess.run(None, {sess.get_inputs()[0].name: x})[0]
diff = float(np.abs(got - want).max())
agree = float((got.argmax(1) == want.argmax(1)).mean())
print(f"python onnxruntime {ort.__version__}: {classes} classes, max |diff| {diff:.2e}, argmax agreement {agree:.6f}")
assert got.shape == want.shape and diff <= 1e-4 and agree >= 0.9999, "export does not match the burn model"
