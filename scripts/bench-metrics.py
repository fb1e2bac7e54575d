#!/usr/bin/env python3
"""The cost of the metrics path (issue 12: at most 3 % of manifest GET throughput): two berth
nodes started side by side, one with metrics on and one with `[metrics] enabled = false`
(BERTH_METRICS__ENABLED), each seeded with the same image; then wrk drives manifest GETs at one
node at a time, alternating in ABBA order (on, off, off, on, on, off, …) over ROUNDS rounds,
so that a drift of the machine's speed during the run falls on both alike. Only the node
measured is busy; the other idles.

Prints a markdown table: the median req/s of each, their ratio (on/off), the ratio of each
round, p99 latency, the server's CPU time per request (from /proc/<pid>/stat: steadier than
req/s on a shared machine, where client and server share the cores), and every round's
figures.

    CARGO_TARGET_DIR=... scripts/bench-metrics.py [--rounds 10] [--duration 8] [--conns 64]
"""
import argparse
import os
import statistics
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchkit  # noqa: E402

REPO = "bench/metrics"
LUA = r"""
function request()
  return wrk.format("GET", nil, {["Accept"] = "application/vnd.oci.image.manifest.v1+json"})
end
"""


def start(bench, metrics):
    node = benchkit.Node(bench, len(bench.nodes) + 1,
                         env={"BERTH_METRICS__ENABLED": "true" if metrics else "false"})
    node.start()
    bench.nodes.append(node)
    benchkit.wait_until("ready", 60, lambda: benchkit.request(node.url, "GET", "/readyz")[0] == 200)
    manifest = benchkit.seed_manifest(node.url, REPO)
    benchkit.put_manifest(node.url, REPO, "v1", manifest)
    st, _, _ = benchkit.request(node.url, "GET", "/metrics")
    if st != (200 if metrics else 404):
        raise SystemExit("node with metrics %s: GET /metrics answered %d" % (metrics, st))
    return node


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=10)
    ap.add_argument("--duration", type=int, default=8)
    ap.add_argument("--conns", type=int, default=64)
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    subprocess.run(["cargo", "build", "--release", "--bin", "berth"], cwd=root, check=True)
    bench = benchkit.Bench(os.path.join(target, "release", "berth"), None, "berth-bench-metrics-")
    lua = os.path.join(bench.tmp, "get.lua")
    with open(lua, "w") as f:
        f.write(LUA)
    results = {True: [], False: []}
    try:
        nodes = {True: start(bench, True), False: start(bench, False)}
        url = {m: nodes[m].url + "/v2/%s/manifests/v1" % REPO for m in nodes}
        # A warm-up of each, not counted.
        for m in (True, False):
            benchkit.wrk_get(url[m], lua, args.conns, 3)
        for r in range(args.rounds):
            order = (True, False) if r % 2 == 0 else (False, True)
            for m in order:
                print("round %d, metrics %s" % (r + 1, "on" if m else "off"), file=sys.stderr)
                cpu = nodes[m].cpu_seconds()
                rps, p99 = benchkit.wrk_get(url[m], lua, args.conns, args.duration)
                cpu_us = (nodes[m].cpu_seconds() - cpu) * 1e6 / (rps * args.duration)
                results[m].append((rps, p99, cpu_us))
        st, body, _ = benchkit.request(nodes[True].url, "GET", "/metrics")
        counted = [l for l in body.decode().splitlines()
                   if l.startswith('berth_http_requests_total{route="manifest",method="GET",status="200"}')]
        print("metrics node counted: %s" % (counted[0] if counted else "nothing"), file=sys.stderr)
    finally:
        bench.close()
    on = [x[0] for x in results[True]]
    off = [x[0] for x in results[False]]
    per_round = [a / b for a, b in zip(on, off)]
    cpu_on = [x[2] for x in results[True]]
    cpu_off = [x[2] for x in results[False]]
    med = statistics.median
    print("| measure | metrics off | metrics on | on/off |")
    print("|---|---|---|---|")
    print("| manifest GET req/s (median) | %.0f | %.0f | %.3f |" % (med(off), med(on), med(on) / med(off)))
    print("| per-round on/off, median | | | %.3f |" % med(per_round))
    print("| server CPU µs per request (median) | %.2f | %.2f | %.3f |" % (
        med(cpu_off), med(cpu_on), med(cpu_on) / med(cpu_off)))
    print("| p99 latency ms (median) | %.2f | %.2f | |" % (
        med(x[1] for x in results[False]), med(x[1] for x in results[True])))
    print()
    print("rounds (ABBA order), req/s off / on: %s" % "; ".join(
        "%.0f / %.0f (%.3f)" % (b, a, a / b) for a, b in zip(on, off)))
    print("rounds, server CPU µs per request off / on: %s" % "; ".join(
        "%.2f / %.2f" % (b, a) for a, b in zip(cpu_on, cpu_off)))


if __name__ == "__main__":
    main()
