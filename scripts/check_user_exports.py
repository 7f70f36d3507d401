#!/usr/bin/env python3
"""Run by .ci/run after the tests: every export tests/user_exports.rs wrote (one per form a user
brings: wrapper prefixes, fixed sizes, folded BatchNorm, external data; under
target/tmp/user_exports/FORM/), loaded by Python onnxruntime from the same PyPI wheel segtune
uses, against the burn model's logits saved beside it: at two sizes (64² and 96², batch 2) where
the export's graph allows, at its fixed size where it does not.

Usage: python scripts/check_user_exports.py target/tmp/user_exports
"""
import os
import sys

import numpy as np
import onnxruntime as ort

root = sys.argv[1]
forms = sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, "export.onnx")))
assert forms, f"no exports under {root}"
for form in forms:
    d = os.path.join(root, form)
    sess = ort.InferenceSession(os.path.join(d, "export.onnx"), providers=["CPUExecutionProvider"])
    classes = int(sess.get_modelmeta().custom_metadata_map["segtune.classes"])
    name = sess.get_inputs()[0].name
    sizes = sorted(int(f[len("input_"):-len(".bin")]) for f in os.listdir(d) if f.startswith("input_"))
    report = []
    for s in sizes:
        x = np.fromfile(os.path.join(d, f"input_{s}.bin"), dtype="<f4").reshape(2, 3, s, s)
        want = np.fromfile(os.path.join(d, f"logits_{s}.bin"), dtype="<f4").reshape(2, classes, s, s)
        got = sess.run(None, {name: x})[0]
        diff = float(np.abs(got - want).max())
        agree = float((got.argmax(1) == want.argmax(1)).mean())
        assert got.shape == want.shape and diff <= 1e-4 and agree >= 0.999, (form, s, diff, agree)
        report.append(f"{s}² max |diff| {diff:.1e}")
    external = " (external data)" if os.path.exists(os.path.join(d, "export.onnx.data")) else ""
    print(f"{form}{external}: python onnxruntime {ort.__version__} = burn at {', '.join(report)}")
print(f"{len(forms)} exports checked")
