#!/usr/bin/env python3
"""Issue 21's bars on docs/results/fid/results.csv: for each seed and T, the best training-free
row's FID and FD-cls (Euler, DPM-Solver++(2M), iPNDM on EDM's levels, base weights), then each
learned row's ratios to them and whether it is <= 0.95x in FID and <= 1.10x in FD-cls.

    python3 scripts/fid_bars.py [results.csv]
"""
import csv
import sys
from collections import defaultdict

FID_BAR, FD_CLS_BAR = 0.95, 1.10


def main(path):
    rows = defaultdict(list)
    with open(path, newline="") as f:
        for r in csv.DictReader(f):
            rows[(int(r["seed"]), int(r["T"]))].append(r)
    print("| seed | T | row | FID | x best free | FD-cls | x best free | both |")
    print("| ---: | ---: | --- | ---: | ---: | ---: | ---: | --- |")
    for (seed, t), group in sorted(rows.items()):
        free = [r for r in group if r["levels"] == "edm" and r["weights"] == "base"]
        if not free:
            print(f"seed {seed}, T = {t}: no training-free row", file=sys.stderr)
            continue
        best_fid = min(float(r["fid"]) for r in free)
        best_cls = min(float(r["fd_cls"]) for r in free)
        print(f"| {seed} | {t} | best free | {best_fid:.2f} | | {best_cls:.1f} | | |")
        for r in group:
            if r in free:
                continue
            fid, cls = float(r["fid"]), float(r["fd_cls"])
            a, b = fid / best_fid, cls / best_cls
            ok = "yes" if a <= FID_BAR and b <= FD_CLS_BAR else "no"
            print(f"| {seed} | {t} | {r['row']} | {fid:.2f} | {a:.3f} | {cls:.1f} | {b:.3f} | {ok} |")


if __name__ == "__main__":
    main(sys.argv[1] if len(sys.argv) > 1 else "docs/results/fid/results.csv")
