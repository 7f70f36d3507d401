"""onnxruntime alone in Python: MODEL on the 4x3x384x512 batch in BATCH (raw float32, from
bench/infer_images.py), THREADS intra-op threads, 2 warm-up runs then RUNS timed; prints the
median milliseconds per image. Usage: ort_alone_python.py MODEL BATCH THREADS [RUNS=12]"""
import statistics
import sys
import time

import numpy as np
import onnxruntime as ort

so = ort.SessionOptions()
so.intra_op_num_threads = int(sys.argv[3])
s = ort.InferenceSession(sys.argv[1], so, providers=["CPUExecutionProvider"])
x = {s.get_inputs()[0].name: np.fromfile(sys.argv[2], dtype=np.float32).reshape(4, 3, 384, 512)}
for _ in range(2):
    s.run(None, x)
t = []
for _ in range(int(sys.argv[4]) if len(sys.argv) > 4 else 12):
    a = time.perf_counter()
    s.run(None, x)
    t.append(time.perf_counter() - a)
print(f"{statistics.median(t) / 4 * 1000:.1f}")
