#!/usr/bin/env python3
"""The PyTorch peer of one `segtune train` configuration: smp DeepLabV3Plus(mobilenet_v2) with a
new classifier, SGD momentum 0.9 + weight decay, cross-entropy ignoring 255, random batches of
the given size and crop. Config "full": everything trains, BN in train mode. Config "frozen":
the encoder at requires_grad=False and in eval mode (its BN frozen), decoder BN in eval mode too
(segtune's --bn frozen freezes every BN). Prints the median ms per step over STEPS after 3
warm-up steps. DEVICE (default cpu) may be cuda: then each step ends with a synchronize.
On CUDA, PyTorch's default lets cuDNN convolutions use TF32 tensor cores (10-bit mantissa);
TORCH_TF32=0 makes them full float32, as segtune's kernels compute. On CUDA the peak GPU memory
PyTorch allocated goes to stderr as `peak_gpu_mib N`.
Usage: [TORCH_TF32=0] python bench/train_step_torch.py CONFIG BATCH CROP STEPS THREADS [DEVICE]"""
import os
import sys
import time

import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

config, batch, crop, steps, threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])
device = torch.device(sys.argv[6] if len(sys.argv) > 6 else "cpu")
torch.set_num_threads(threads)
if os.environ.get("TORCH_TF32") == "0":
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False
torch.manual_seed(0)
model = smp.DeepLabV3Plus(encoder_name="mobilenet_v2", encoder_weights=None, classes=6)
for m in model.modules():
    if isinstance(m, torch.nn.Dropout):
        m.p = 0.0
model.to(device).train()
if config == "frozen":
    for p in model.encoder.parameters():
        p.requires_grad = False
    for m in model.modules():
        if isinstance(m, torch.nn.BatchNorm2d):
            m.eval()
params = [p for p in model.parameters() if p.requires_grad]
opt = torch.optim.SGD(params, lr=0.01, momentum=0.9, weight_decay=1e-4)
x = torch.randn(batch, 3, crop, crop, device=device)
y = torch.randint(0, 6, (batch, crop, crop), device=device)
times = []
for i in range(steps + 3):
    t = time.perf_counter()
    loss = F.cross_entropy(model(x), y, ignore_index=255)
    opt.zero_grad()
    loss.backward()
    opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    if i >= 3:
        times.append(time.perf_counter() - t)
times.sort()
print(f"{1000 * times[len(times) // 2]:.1f}")
if device.type == "cuda":
    print(f"peak_gpu_mib {torch.cuda.max_memory_allocated() / 2**20:.0f}", file=sys.stderr)
