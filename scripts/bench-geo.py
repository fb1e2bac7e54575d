#!/usr/bin/env python3
"""Geo-replication benchmark of berth on this machine (loopback), for docs/benchmarks.md.

Every node is in a region of its own (r1, r2, r3); node 1 takes the pushes. Measures:

  replicate_1g        a 1 GiB blob pushed at r1 and referenced by a manifest, until the copy is
                      in place at r2 (a 2-node cluster): MB/s, against the local push of the
                      same blob over loopback (curl, MB/s); and the receiver's CPU-seconds
                      against r1's CPU-seconds for that push (ratio)
  ack_to_held         20 images of one 10 MiB layer pushed at r1, one after the other: time from
                      each manifest's 201 until the layer file is in place in every other region
                      (3 regions): median and p99; with --delay-ms D, every link between regions
                      has D ms one way (needs a berth built with `--features fault-injection`
                      and the `faultctl` test tool of cluster-tests)
  pull_local_1g / pull_replica_1g
                      GET of the 1 GiB blob at r1 (pushed there) and at r2 (its replica), curl,
                      median of 3 each: a pull from a region's own copy against the origin
  manifest_get_idle / manifest_get_replicating
                      manifest GET rate at r2 with wrk (4 connections, 10 s), idle, then while
                      r2 replicates 4 GiB (four 1 GiB layers of one manifest pushed at r1); the
                      MB/s r2 received during the GETs and after them; with the default
                      replication.busy_bytes_per_sec, then with 0 (copies ignore clients)

"In place" is the blob file at its final path in the node's data directory (the copy was
verified and renamed; the holder record follows through Raft).

Usage: scripts/bench-geo.py [--berth PATH] [--clusterctl PATH] [--faultctl PATH] [--delay-ms D]
                            [--parts replicate,ack,get] [--quick]
Prints `name value unit` lines and comments starting with '#'.
"""

import argparse
import os
import re
import statistics
import subprocess
import sys
import time

from benchkit import (MIB, Bench, curl_pull, curl_push_file, manifest_of, push_blob,
                      put_manifest, random_file, wait_until)


def held_everywhere(nodes, digest):
    return all(os.path.exists(n.blob_path(digest)) for n in nodes)


def set_delay(b, faultctl, delay_ms):
    """Every pair of nodes in different regions gets `delay_ms` one way, both directions."""
    for n in b.nodes:
        links = ["%d=%d" % (m.id, delay_ms) for m in b.nodes if m is not n and m.region != n.region]
        subprocess.run([faultctl, "--endpoint", n.caddr, "links", *links], check=True, timeout=30)


def replicate_1g(args, mib):
    b = Bench(args.berth, args.clusterctl, "berth-geo-bench.")
    try:
        # --pin: the replica alone on CPU 1, the origin and curl on CPU 0 — as if the receiving
        # node were a machine of its own; the local push then also has its receiver alone.
        b.start_cluster(2, regions=["r1", "r2"], cpus=[1, 1] if args.pin else None)
        origin, replica = b.nodes
        path = os.path.join(b.tmp, "big.bin")
        d = random_file(path, mib)
        cpu0, t_push = origin.cpu_seconds(), time.monotonic()
        curl_push_file(origin.url, "bench/big", path, d, cpu=0 if args.pin else None)
        push_secs = time.monotonic() - t_push
        push_cpu = origin.cpu_seconds() - cpu0
        os.unlink(path)
        cfg = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
        cd = push_blob(origin.url, "bench/big", cfg)
        man = manifest_of((cd, len(cfg)), [(d, mib * MIB)])
        if args.pin:
            # The push was received on CPU 1; the origin now sends from CPU 0.
            subprocess.run(["taskset", "-a", "-p", "-c", "0", str(origin.proc.pid)],
                           check=True, capture_output=True)
        cpu1 = replica.cpu_seconds()
        t0 = time.monotonic()
        put_manifest(origin.url, "bench/big", "v1", man)
        wait_until("the 1 GiB copy at r2", 600, lambda: os.path.exists(replica.blob_path(d)), every=0.01)
        secs = time.monotonic() - t0
        recv_cpu = replica.cpu_seconds() - cpu1
        print("replicate_%dm %.0f MB/s" % (mib, mib * MIB / secs / 1e6))
        print("push_%dm_local %.0f MB/s" % (mib, mib * MIB / push_secs / 1e6))
        print("replicate_%dm_receiver_cpu %.2f s" % (mib, recv_cpu))
        print("push_%dm_local_cpu %.2f s" % (mib, push_cpu))
        print("replicate_%dm_cpu_ratio %.2f x" % (mib, recv_cpu / push_cpu))
        blob = "/v2/bench/big/blobs/%s" % d
        local = [curl_pull(origin.url, blob) for _ in range(3)]
        remote = [curl_pull(replica.url, blob) for _ in range(3)]
        print("pull_local_%dm %.0f MB/s" % (mib, statistics.median(local)))
        print("pull_replica_%dm %.0f MB/s" % (mib, statistics.median(remote)))
        print("# pull samples MB/s: local %s; replica %s" % (
            " ".join("%.0f" % x for x in local), " ".join("%.0f" % x for x in remote)))
    finally:
        b.close()


def ack_to_held(args, images, layer_mib, delay_ms):
    b = Bench(args.berth, args.clusterctl, "berth-geo-bench.")
    try:
        b.start_cluster(3, regions=["r1", "r2", "r3"])
        if delay_ms:
            set_delay(b, args.faultctl, delay_ms)
        origin, others = b.nodes[0], b.nodes[1:]
        cfg = b'{"architecture":"amd64","os":"linux"}'
        cd = push_blob(origin.url, "bench/geo", cfg)
        lags = []
        for i in range(images):
            layer = os.urandom(layer_mib * MIB)
            d = push_blob(origin.url, "bench/geo", layer)
            put_manifest(origin.url, "bench/geo", "i%03d" % i,
                         manifest_of((cd, len(cfg)), [(d, len(layer))]))
            t0 = time.monotonic()
            wait_until("image %d in every region" % i, 120, lambda: held_everywhere(others, d), every=0.005)
            lags.append(time.monotonic() - t0)
        lags.sort()
        tag = "ack_to_held%s" % ("_%dms" % delay_ms if delay_ms else "")
        print("%s_p50 %.3f s" % (tag, statistics.median(lags)))
        print("%s_p99 %.3f s" % (tag, lags[max(0, int(len(lags) * 0.99) - 1)]))
        print("# %s samples s: %s" % (tag, " ".join("%.3f" % x for x in lags)))
    finally:
        b.close()


def wrk_rate(url, path, secs):
    out = subprocess.run(["wrk", "-t", "2", "-c", "4", "-d", "%ds" % secs, "-H",
                          "Accept: application/vnd.oci.image.manifest.v1+json", url + path],
                         capture_output=True, text=True, timeout=secs + 60).stdout
    m = re.search(r"Requests/sec:\s+([\d.]+)", out)
    if not m:
        raise SystemExit("wrk printed no rate:\n" + out)
    return float(m.group(1))


def disk_bytes(node):
    """Bytes allocated under a node's data directory (blobs and staging files)."""
    total = 0
    for root, _, files in os.walk(node.data):
        for f in files:
            try:
                total += os.stat(os.path.join(root, f)).st_blocks * 512
            except FileNotFoundError:
                pass
    return total


def manifest_get_under_replication(args, gib, secs, busy_cap):
    """`busy_cap`: replication.busy_bytes_per_sec of the replica (None: its default)."""
    env = None if busy_cap is None else {"BERTH_REPLICATION__BUSY_BYTES_PER_SEC": str(busy_cap)}
    label = "default" if busy_cap is None else "busy_cap_%d" % busy_cap
    b = Bench(args.berth, args.clusterctl, "berth-geo-bench.")
    try:
        b.start_cluster(2, regions=["r1", "r2"], env=env)
        origin, replica = b.nodes
        small = b'{"architecture":"amd64","os":"linux"}'
        sd = push_blob(origin.url, "bench/get", small)
        put_manifest(origin.url, "bench/get", "small", manifest_of((sd, len(small)), []))
        path = "/v2/bench/get/manifests/small"
        idle = wrk_rate(replica.url, path, secs)
        layers = []
        for i in range(gib):
            f = os.path.join(b.tmp, "l%d.bin" % i)
            d = random_file(f, 1024)
            curl_push_file(origin.url, "bench/get", f, d)
            os.unlink(f)
            layers.append((d, 1024 * MIB))
        before = disk_bytes(replica)
        put_manifest(origin.url, "bench/get", "big", manifest_of((sd, len(small)), layers))
        busy = wrk_rate(replica.url, path, secs)
        during = disk_bytes(replica) - before
        ended = time.monotonic()
        wait_until("the replica to hold the 4 layers", 600,
                   lambda: held_everywhere([replica], layers[0][0]) and
                   all(held_everywhere([replica], d) for d, _ in layers))
        after = time.monotonic() - ended
        print("manifest_get_idle_%s %.0f req/s" % (label, idle))
        print("manifest_get_replicating_%s %.0f req/s" % (label, busy))
        print("manifest_get_replicating_ratio_%s %.2f x" % (label, busy / idle))
        print("replicated_during_gets_%s %.0f MB/s" % (label, during / secs / 1e6))
        rest = gib * 1024 * MIB - during
        if rest > 64 * MIB:
            print("replicated_after_gets_%s %.0f MB/s (the rest of %d GiB in %.1f s)" %
                  (label, rest / after / 1e6, gib, after))
        else:
            print("# %s: the copy of %d GiB ended within the GETs' window" % (label, gib))
    finally:
        b.close()


def main():
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--berth", default=os.path.join(target, "release", "berth"))
    ap.add_argument("--clusterctl", default=os.path.join(target, "release", "clusterctl"))
    ap.add_argument("--faultctl", default=os.path.join(target, "release", "faultctl"))
    ap.add_argument("--delay-ms", type=int, default=0)
    ap.add_argument("--quick", action="store_true", help="smoke run: small sizes")
    ap.add_argument("--pin", action="store_true",
                    help="replicate part: every receiver alone on CPU 1, senders on CPU 0")
    ap.add_argument("--parts", default="replicate,ack,get",
                    help="comma-separated: replicate (1 GiB copy and pulls), ack (ack to held, "
                         "and with --delay-ms again over the delay), get (manifest GETs while replicating)")
    args = ap.parse_args()
    parts = set(args.parts.split(","))
    print("# bench-geo date=%s nproc=%d" % (time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), os.cpu_count()))
    big_mib, images, layer_mib, gib, secs = (64, 5, 1, 1, 3) if args.quick else (1024, 20, 10, 4, 10)
    if "replicate" in parts:
        replicate_1g(args, big_mib)
    if "ack" in parts:
        ack_to_held(args, images, layer_mib, 0)
        if args.delay_ms:
            ack_to_held(args, images, layer_mib, args.delay_ms)
    if "get" in parts:
        # As shipped, then with copies at full speed whatever the clients (the code before
        # ADR 016), in the same sitting.
        for cap in (None, 0):
            manifest_get_under_replication(args, gib, secs, cap)


if __name__ == "__main__":
    sys.exit(main())
