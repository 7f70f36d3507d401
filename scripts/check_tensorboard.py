#!/usr/bin/env python3
"""Reads a segtune run's TensorBoard event files with TensorBoard's own reader (its
EventAccumulator) and checks them against the run's metrics.json: every scalar of every epoch,
and one snapshot image per epoch. Usage: python scripts/check_tensorboard.py RUN_DIR
(needs `pip install tensorboard`; tests/train.rs checks the same files with segtune's reader)."""
import json
import sys

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

run = sys.argv[1]
acc = EventAccumulator(f"{run}/tensorboard", size_guidance={"images": 0, "scalars": 0})
acc.Reload()
history = json.load(open(f"{run}/metrics.json"))
for tag, key in [("val/miou", "val_miou"), ("train/loss", "train_loss"), ("val/loss", "val_loss"), ("train/lr", "lr")]:
    got = [(e.step, e.value) for e in acc.Scalars(tag)]
    want = [(m["epoch"], m[key]) for m in history]
    assert len(got) == len(want) and all(a[0] == b[0] and abs(a[1] - b[1]) <= 1e-6 * max(1.0, abs(b[1])) for a, b in zip(got, want)), (tag, got, want)
images = acc.Images(acc.Tags()["images"][0])
assert len(images) == len(history) and images[0].encoded_image_string.startswith(b"\x89PNG"), len(images)
print(f"tensorboard reads {len(acc.Tags()['scalars'])} scalar tags and {len(images)} snapshots of {run}: match metrics.json")
