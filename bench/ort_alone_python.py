"""onnxruntime alone in Python: MODEL on the 4x3xHxW batch in BATCH (raw float32, from
bench/infer_images.py; transposed for an NHWC model), THREADS intra-op threads, on PROVIDER (cpu, cuda, tensorrt; falling back
to the CPU for what it cannot run), 2 warm-up runs then RUNS timed; prints the median milliseconds
per image. Usage: ort_alone_python.py MODEL BATCH THREADS [RUNS=12] [PROVIDER=cpu] [HxW=384x512]"""
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

so = ort.SessionOptions()
so.intra_op_num_threads = int(sys.argv[3])
provider = sys.argv[5] if len(sys.argv) > 5 else "cpu"
first = {"cpu": [], "cuda": ["CUDAExecutionProvider"], "tensorrt": ["TensorrtExecutionProvider", "CUDAExecutionProvider"]}
s = ort.InferenceSession(sys.argv[1], so, providers=first[provider] + ["CPUExecutionProvider"])
if first[provider] and s.get_providers()[0] != first[provider][0]:  # onnxruntime falls back silently
    sys.exit(f"error: this onnxruntime could not use {first[provider][0]}; it has {ort.get_available_providers()}")
h, w = map(int, (sys.argv[6] if len(sys.argv) > 6 else "384x512").split("x"))
batch = np.fromfile(sys.argv[2], dtype=np.float32).reshape(4, 3, h, w)
if s.get_inputs()[0].shape[-1] == 3:  # an NHWC model (Keras) takes the NCHW batch transposed
    batch = np.ascontiguousarray(batch.transpose(0, 2, 3, 1))
x = {s.get_inputs()[0].name: batch}
for _ in range(2):
    s.run(None, x)
t = []
for _ in range(int(sys.argv[4]) if len(sys.argv) > 4 else 12):
    a = time.perf_counter()
    s.run(None, x)
    t.append(time.perf_counter() - a)
print(f"{statistics.median(t) / 4 * 1000:.1f}")
