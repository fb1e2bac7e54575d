#!/usr/bin/env python3
"""Benchmark of a 3-node berth cluster on this machine (loopback), for docs/benchmarks.md.

Starts three release `berth` processes (node 1 initialises, 2 and 3 join and are promoted with
clusterctl), then measures:

  manifest_put_3n   2000 manifest PUTs under distinct tags, 16 workers, requests spread
                    round-robin over the three nodes (keep-alive connections): ops/s, p50, p99
  failover          leader kill -9 -> first acknowledged manifest PUT at a survivor, retried
                    every 10 ms; median of TRIALS trials (the killed node is restarted between
                    trials); default Raft timeouts
  pull_leader / pull_follower
                    GET of a 1 GiB blob at the leader and at a follower that already holds a
                    copy (fetched once, untimed), median of 3 each, with curl

Usage: scripts/bench-cluster.py [--berth PATH] [--clusterctl PATH] [--quick]
Prints `name value unit` lines and comments starting with '#'.
"""

import argparse
import http.client
import os
import statistics
import sys
import threading
import time

from benchkit import (Bench, OCI_MANIFEST, curl_pull, curl_push_file, random_file, request,
                      seed_manifest, wait_until)

def manifest_puts(b, count, workers):
    repo = "bench/puts"
    man = seed_manifest(b.nodes[0].url, repo)
    lat, errors = [], []
    lock = threading.Lock()
    next_i = [0]

    def worker(w):
        conns = {}
        while True:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= count:
                break
            node = b.nodes[i % len(b.nodes)]
            c = conns.get(node.id)
            if c is None:
                c = conns[node.id] = http.client.HTTPConnection("127.0.0.1", node.port, timeout=30)
            t0 = time.perf_counter()
            try:
                c.request("PUT", "/v2/%s/manifests/t%05d" % (repo, i), body=man,
                          headers={"Content-Type": OCI_MANIFEST})
                r = c.getresponse()
                r.read()
                st = r.status
            except OSError as e:
                conns.pop(node.id, None)
                st = str(e)
            dt = time.perf_counter() - t0
            with lock:
                if st == 201:
                    lat.append(dt)
                else:
                    errors.append(st)
        for c in conns.values():
            c.close()

    threads = [threading.Thread(target=worker, args=(w,)) for w in range(workers)]
    t0 = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - t0
    lat.sort()
    print("manifest_put_3n %.0f ops/s" % (len(lat) / wall))
    print("manifest_put_3n_p50 %.1f ms" % (1e3 * lat[len(lat) // 2]))
    print("manifest_put_3n_p99 %.1f ms" % (1e3 * lat[int(len(lat) * 0.99) - 1]))
    print("manifest_put_3n_errors %d count" % len(errors))
    if errors:
        print("# first errors: %s" % errors[:5])


def failover(b, trials):
    repo = "bench/failover"
    man = seed_manifest(b.nodes[0].url, repo)
    times = []
    for t in range(trials):
        leader = wait_until("a leader", 30, b.leader)
        survivor = next(n for n in b.nodes if n is not leader)
        # The survivor must know the manifest's blobs before the kill: one write through it.
        st, body, _ = request(survivor.url, "PUT", "/v2/%s/manifests/warm%d" % (repo, t), body=man,
                              headers={"Content-Type": OCI_MANIFEST})
        if st != 201:
            raise SystemExit("warm-up PUT: HTTP %d %s" % (st, body[:200]))
        leader.kill()
        t0 = time.perf_counter()
        end = t0 + 30
        while time.perf_counter() < end:
            try:
                st, _, _ = request(survivor.url, "PUT", "/v2/%s/manifests/after%d" % (repo, t),
                                   body=man, headers={"Content-Type": OCI_MANIFEST}, timeout=15)
            except OSError:
                st = 0
            if st == 201:
                break
            time.sleep(0.01)
        else:
            raise SystemExit("no write acknowledged within 30 s after the leader kill")
        times.append(time.perf_counter() - t0)
        leader.start()
        wait_until("restarted node ready", 60,
                   lambda: request(leader.url, "GET", "/readyz")[0] == 200)
    print("failover_first_ack %.2f s" % statistics.median(times))
    print("# failover samples s: %s" % " ".join("%.2f" % x for x in times))


def pulls(b, mib):
    repo = "bench/pull"
    leader = wait_until("a leader", 30, b.leader)
    follower = next(n for n in b.nodes if n is not leader)
    path_blob = os.path.join(b.tmp, "big.bin")
    d = random_file(path_blob, mib)
    curl_push_file(leader.url, repo, path_blob, d)
    os.unlink(path_blob)
    path = "/v2/%s/blobs/%s" % (repo, d)
    curl_pull(follower.url, path)  # untimed: the follower fetches and keeps its copy
    lead = [curl_pull(leader.url, path) for _ in range(3)]
    foll = [curl_pull(follower.url, path) for _ in range(3)]
    print("pull_leader_%dm %.0f MB/s" % (mib, statistics.median(lead)))
    print("pull_follower_%dm %.0f MB/s" % (mib, statistics.median(foll)))
    print("# pull samples MB/s: leader %s; follower %s" % (
        " ".join("%.0f" % x for x in lead), " ".join("%.0f" % x for x in foll)))


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--berth", default=os.path.join(target, "release", "berth"))
    ap.add_argument("--clusterctl", default=os.path.join(target, "release", "clusterctl"))
    ap.add_argument("--quick", action="store_true", help="smoke run: small counts")
    args = ap.parse_args()
    count, trials, mib = (2000, 5, 1024) if not args.quick else (200, 2, 64)
    b = Bench(args.berth, args.clusterctl, "berth-cluster-bench.")
    try:
        print("# bench-cluster date=%s nproc=%d" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), os.cpu_count()))
        b.start_cluster()
        manifest_puts(b, count, 16)
        pulls(b, mib)
        failover(b, trials)
    finally:
        b.close()


if __name__ == "__main__":
    sys.exit(main())
