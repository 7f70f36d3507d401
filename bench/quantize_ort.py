"""The peer of `segtune quantize` for bench/quantize.sh: onnxruntime.quantization's static QDQ
(quant_pre_process without symbolic shapes, then quantize_static with per-channel int8 weights, uint8 activations, MinMax)
on the same calibration images, prepared as segtune prepares them (native size padded to the
size multiple, the model's mean/std); then each model's forward time in onnxruntime on one input (median of 30 runs, the
models interleaved).

Usage: quantize_ort.py FP32.onnx CALIB_LIST OUT_INT8.onnx THREADS H W MODEL.onnx...
"""
import os
import statistics
import sys
import time

import numpy as np
import onnx
import onnxruntime as ort
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process
from PIL import Image


def meta(model, key, default):
    for p in model.metadata_props:
        if p.key == key:
            return [float(v) for v in p.value.split(",")]
    return default


def prepared(path, mean, std, multiple=16):
    a = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32) / 255.0
    h, w = a.shape[:2]
    ph, pw = -(-h // multiple) * multiple, -(-w // multiple) * multiple
    x = np.zeros((ph, pw, 3), np.float32)  # padded with the mean: 0 once normalized
    x[:h, :w] = (a - mean) / std
    return x.transpose(2, 0, 1)[None]


class Reader(CalibrationDataReader):
    def __init__(self, name, inputs):
        self.items = iter([{name: x} for x in inputs])

    def get_next(self):
        return next(self.items, None)


def session(path, threads):
    so = ort.SessionOptions()
    so.intra_op_num_threads = threads
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(path, so, providers=["CPUExecutionProvider"])


def forward_ms(paths, threads, h, w, rounds=5, runs=6):
    """Median forward time of each model, the models interleaved round by round so that a
    slower moment of the machine falls on all of them alike."""
    sessions = [session(p, threads) for p in paths]
    x = np.random.default_rng(0).standard_normal((1, 3, h, w)).astype(np.float32)
    feeds = [{s.get_inputs()[0].name: x} for s in sessions]
    for s, f in zip(sessions, feeds):
        for _ in range(3):
            s.run(None, f)
    times = [[] for _ in paths]
    for _ in range(rounds):
        for i, (s, f) in enumerate(zip(sessions, feeds)):
            for _ in range(runs):
                t = time.perf_counter()
                s.run(None, f)
                times[i].append((time.perf_counter() - t) * 1000)
    return [statistics.median(t) for t in times]


def main():
    names = [sys.argv[1], sys.argv[3]] + sys.argv[7:]  # as given, for the report
    fp32, calib_list, out = (os.path.abspath(p) for p in sys.argv[1:4])
    threads, h, w = sys.argv[4:7]
    models = [os.path.abspath(p) for p in sys.argv[7:]]
    # quant_pre_process leaves temporary files in the working directory: keep them beside `out`.
    os.chdir(os.path.dirname(out))
    threads, h, w = int(threads), int(h), int(w)
    m = onnx.load(fp32)
    mean = np.array(meta(m, "segtune.mean", [0.485, 0.456, 0.406]), np.float32)
    std = np.array(meta(m, "segtune.std", [0.229, 0.224, 0.225]), np.float32)
    files = [l.strip() for l in open(calib_list) if l.strip()]  # absolute paths
    inputs = [prepared(f, mean, std) for f in files]
    pre = out + ".pre.onnx"
    t = time.perf_counter()
    # Symbolic shape inference stops on the ASPP pooling's Shape → Resize; the ONNX one is used.
    quant_pre_process(fp32, pre, skip_symbolic_shape=True)
    quantize_static(
        pre,
        out,
        Reader(m.graph.input[0].name, inputs),
        quant_format=QuantFormat.QDQ,
        per_channel=True,
        activation_type=QuantType.QUInt8,
        weight_type=QuantType.QInt8,
    )
    print(f"onnxruntime.quantization: {len(inputs)} calibration images, {time.perf_counter() - t:.1f} s")
    for name, ms in zip(names, forward_ms([fp32, out] + models, threads, h, w)):
        print(f"forward {name}: {ms:.2f} ms")


if __name__ == "__main__":
    main()
