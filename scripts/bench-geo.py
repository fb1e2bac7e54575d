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
  snapshot_*          (part `snapshot`, not run by default) a one-node cluster takes N distinct
                      manifests (--manifests, default 100 000; ~1 KB each: one config and five
                      layers, shared by all, and an annotation of its own) by concurrent PUTs
                      (--put-concurrency), and snapshots every --snapshot-every entries (the
                      node's default, 10 000); then a learner in r2 joins behind a link capped at
                      --link-bytes-per-sec (default 4 MB/s, both directions; needs the
                      fault-injection build and faultctl). Reports the creation rate, the
                      snapshot's size on disk (what crosses the link, less the framing of its
                      1 MiB chunks), the time until the learner installed it and until it applied
                      the last entry and served the last manifest, and whether any snapshot
                      transfer failed or was sent again (node logs)

"In place" is the blob file at its final path in the node's data directory (the copy was
verified and renamed; the holder record follows through Raft).

Usage: scripts/bench-geo.py [--berth PATH] [--clusterctl PATH] [--faultctl PATH] [--delay-ms D]
                            [--parts replicate,ack,get,snapshot] [--quick] [--manifests N]
                            [--put-concurrency C] [--snapshot-every E] [--link-bytes-per-sec B]
Prints `name value unit` lines and comments starting with '#'.
"""

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import threading
import time

from benchkit import (MIB, OCI_MANIFEST, Bench, Node, curl_pull, curl_push_file, manifest_of,
                      push_blob, put_manifest, random_file, request, wait_until)


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


def put_manifests(url, repo, count, concurrency, make):
    """PUTs manifests `make(i)` as tags t<i>, i < count, over `concurrency` kept-alive
    connections; returns the seconds it took."""
    host, port = url.split("//")[1].split(":")
    lock, next_i, failed = threading.Lock(), [0], []

    def worker():
        conn = http.client.HTTPConnection(host, int(port), timeout=120)
        while not failed:
            with lock:
                i = next_i[0]
                next_i[0] += 1
            if i >= count:
                break
            conn.request("PUT", "/v2/%s/manifests/t%d" % (repo, i), body=make(i),
                         headers={"Content-Type": OCI_MANIFEST})
            r = conn.getresponse()
            body = r.read()
            if r.status != 201:
                failed.append("manifest PUT t%d: HTTP %d %s" % (i, r.status, body[:300]))
        conn.close()

    t0 = time.monotonic()
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if failed:
        raise SystemExit(failed[0])
    return time.monotonic() - t0


def built_snapshots(node):
    """Last log indexes of the snapshots `node` built, from its log."""
    with open(node.log_path, errors="replace") as f:
        return [int(m.group(1)) for m in
                re.finditer(r"built metadata snapshot.*?index: (\d+)", f.read())]


def log_lines(node, pattern):
    with open(node.log_path, errors="replace") as f:
        return [l.rstrip() for l in f if re.search(pattern, l)]


def snapshot_over_slow_link(args, count):
    b = Bench(args.berth, args.clusterctl, "berth-geo-bench.")
    # The snapshot lines are at info; the rest at warn (a request log would be 100k lines).
    env = {"RUST_LOG": "warn,berth_node::meta::snapshot=info",
           "BERTH_RAFT__SNAPSHOT_EVERY_ENTRIES": str(args.snapshot_every)}
    try:
        b.start_cluster(1, regions=["r1"], env=env)
        origin = b.nodes[0]
        repo = "bench/snap"
        cfg = b'{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":[]}}'
        config = (push_blob(origin.url, repo, cfg), len(cfg))
        layers = []
        for _ in range(5):
            layer = os.urandom(4096)
            layers.append((push_blob(origin.url, repo, layer), len(layer)))
        base = json.loads(manifest_of(config, layers))

        def make(i):
            m = dict(base, annotations={"org.opencontainers.image.ref.name": "t%d" % i,
                                        "org.opencontainers.image.created": "2026-01-01T00:00:00Z"})
            return json.dumps(m).encode()

        secs = put_manifests(origin.url, repo, count, args.put_concurrency, make)
        print("snapshot_manifests %d" % count)
        print("snapshot_manifest_bytes %d B" % len(make(count - 1)))
        print("snapshot_create %.1f s" % secs)
        print("snapshot_create_rate %.0f manifests/s" % (count / secs))
        last = b.status(origin)["last_log_index"]
        # The node snapshots every `snapshot_every` applied entries: wait for the last one.
        wait_until("the snapshot after the last PUTs", 600,
                   lambda: built_snapshots(origin) and last - max(built_snapshots(origin)) < args.snapshot_every)
        snap_index = max(built_snapshots(origin))
        snap_file = os.path.join(origin.data, "snapshots", "current.snap")
        wait_until("the snapshot file", 60, lambda: os.path.exists(snap_file))
        size = os.path.getsize(snap_file)
        print("snapshot_size %.1f MB" % (size / 1e6))
        print("# snapshot at log index %d of %d (the learner replays the last %d entries from the "
              "log); %d snapshots built while the manifests were created"
              % (snap_index, last, last - snap_index, len(built_snapshots(origin))))

        # The learner's link to node 1 (both ends: each shapes the connections it dials).
        rate = args.link_bytes_per_sec
        subprocess.run([args.faultctl, "--endpoint", origin.caddr, "links", "2=0/%d" % rate],
                       check=True, timeout=30)
        learner = Node(b, 2, join=origin.caddr, region="r2", env=env)
        t0 = time.monotonic()
        learner.start()
        b.nodes.append(learner)
        wait_until("node 2's cluster endpoint", 60,
                   lambda: subprocess.run([args.faultctl, "--endpoint", learner.caddr, "links",
                                           "1=0/%d" % rate], capture_output=True,
                                          timeout=30).returncode == 0, every=0.01)
        installed = lambda: log_lines(learner, "installed metadata snapshot")
        wait_until("the learner to install the snapshot", 1800, installed, every=0.1)
        t_installed = time.monotonic() - t0

        def applied():
            members = b.status(origin)["members"]
            return any(m["id"] == 2 and m.get("applied_index", 0) >= last for m in members)

        wait_until("the learner to apply index %d" % last, 600, applied, every=0.2)
        t_applied = time.monotonic() - t0
        st, body, _ = request(learner.url, "GET", "/v2/%s/manifests/t%d" % (repo, count - 1),
                              headers={"Accept": OCI_MANIFEST})
        if st != 200 or body != make(count - 1):
            raise SystemExit("the learner did not serve the last manifest: HTTP %d %s" % (st, body[:200]))
        t_served = time.monotonic() - t0
        got = os.path.getsize(os.path.join(learner.data, "snapshots", "current.snap"))
        print("snapshot_link %.1f MB/s" % (rate / 1e6))
        print("snapshot_installed_after %.1f s" % t_installed)
        # The snapshot's size over the time from the learner's start to its install (the join
        # and the install included): the link's rate as the transfer saw it.
        print("snapshot_transfer_rate %.2f MB/s" % (size / t_installed / 1e6))
        print("snapshot_applied_after %.1f s" % t_applied)
        print("snapshot_served_last_after %.1f s" % t_served)
        trouble = [l for n in (origin, learner)
                   for l in log_lines(n, r"(?i)snapshot|stall|timed? ?out")
                   if re.search(r"WARN|ERROR", l)]
        print("snapshot_installs %d" % len(installed()))
        print("snapshot_errors %d" % len(trouble))
        print("# learner's snapshot file %d bytes (leader's %d)" % (got, size))
        for l in trouble[:10]:
            print("# " + l[:300])
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
                         "and with --delay-ms again over the delay), get (manifest GETs while "
                         "replicating), snapshot (a learner joining behind a slow link)")
    ap.add_argument("--manifests", type=int, default=100_000,
                    help="snapshot part: manifests in the cluster (--quick: 2000)")
    ap.add_argument("--put-concurrency", type=int, default=32,
                    help="snapshot part: manifest PUTs in flight")
    ap.add_argument("--snapshot-every", type=int, default=10_000,
                    help="snapshot part: raft.snapshot_every_entries")
    ap.add_argument("--link-bytes-per-sec", type=int, default=4_000_000,
                    help="snapshot part: the learner's link cap, bytes per second")
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
    if "snapshot" in parts:
        snapshot_over_slow_link(args, 2000 if args.quick else args.manifests)


if __name__ == "__main__":
    sys.exit(main())
