#!/usr/bin/env python3
"""Prints the val mIoU of each epoch of several segtune runs side by side, from their
metrics.csv files. Usage: python3 bench/side_by_side.py LABEL=RUN_DIR..."""
import csv
import sys


def main():
    runs = [arg.split("=", 1) for arg in sys.argv[1:]]
    rows = {label: list(csv.DictReader(open(f"{run}/metrics.csv"))) for label, run in runs}
    print(f"\n{'epoch':<6} " + " ".join(f"{label + ' val mIoU':<22}" for label, _ in runs))
    for e in range(max(len(r) for r in rows.values())):
        cells = [f"{float(rows[label][e]['val_miou']):<22.4f}" if e < len(rows[label]) else " " * 22 for label, _ in runs]
        print(f"{e + 1:<6} " + " ".join(cells))


if __name__ == "__main__":
    main()
