#!/usr/bin/env python3
"""Reads a scripts/bench output folder and prints a markdown table: median of each figure for
berth and Distribution (min-max in brackets) and the ratio berth / Distribution; with a
baseline berth (BASELINE_BIN), its column and the ratio berth / baseline too."""
import glob
import os
import statistics
import sys

HIGHER_IS_BETTER = {"MB/s", "req/s", "ops/s"}


def read(path):
    figures = {}
    for line in open(path):
        if line.startswith("#") or not line.strip():
            continue
        parts = line.split()
        if len(parts) >= 3:
            try:
                figures[parts[0]] = (float(parts[1]), parts[2])
            except ValueError:
                pass
    return figures


def collect(paths):
    out = {}
    for p in paths:
        for name, (value, unit) in read(p).items():
            out.setdefault(name, (unit, []))[1].append(value)
    return out


def fmt(values):
    med = statistics.median(values)
    if len(values) == 1:
        return "%g" % round(med, 2)
    return "%g [%g–%g]" % (round(med, 2), round(min(values), 2), round(max(values), 2))


def main(folder):
    berth = collect(sorted(glob.glob(os.path.join(folder, "berth-*.txt"))))
    dist = collect(sorted(glob.glob(os.path.join(folder, "distribution-*", "run-*.txt"))))
    base = collect(sorted(glob.glob(os.path.join(folder, "baseline-*.txt"))))
    loop = os.path.join(folder, "loopback.txt")
    if os.path.exists(loop):
        print("Loopback TCP (iperf3, 5 s): " + open(loop).read().strip().split(" ", 1)[1] + "\n")
    head = "| figure | unit | berth | Distribution | berth / Distribution |"
    rule = "|---|---|---|---|---|"
    if base:
        head += " baseline | berth / baseline |"
        rule += "---|---|"
    print(head)
    print(rule)

    def ratio(a, b):
        if a and b and statistics.median(b) != 0:
            return "%.2f×" % (statistics.median(a) / statistics.median(b))
        return ""

    for name in sorted(set(berth) | set(dist) | set(base)):
        unit, bv = berth.get(name, ("", []))
        unit2, dv = dist.get(name, (unit, []))
        _, av = base.get(name, (unit, []))
        unit = unit or unit2
        row = "| %s | %s | %s | %s | %s |" % (
            name, unit, fmt(bv) if bv else "–", fmt(dv) if dv else "–", ratio(bv, dv))
        if base:
            row += " %s | %s |" % (fmt(av) if av else "–", ratio(bv, av))
        print(row)

if __name__ == "__main__":
    main(sys.argv[1])
