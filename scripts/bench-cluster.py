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
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

MIB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    def __init__(self, bench, node_id, join=None):
        self.bench, self.id, self.join = bench, node_id, join
        self.port, self.cport = free_port(), free_port()
        self.data = os.path.join(bench.tmp, "node%d" % node_id)
        self.proc = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def caddr(self):
        return "127.0.0.1:%d" % self.cport

    def start(self):
        cmd = [self.bench.berth, "serve", "--node-id", str(self.id),
               "--listen", "127.0.0.1:%d" % self.port, "--cluster-listen", self.caddr,
               "--data-dir", self.data]
        if self.join:
            cmd += ["--join", self.join]
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        env.setdefault("RUST_LOG", "warn")
        log = open(os.path.join(self.bench.tmp, "node%d.log" % self.id), "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)

    def kill(self):
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait()

    def stop(self):
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.kill()


def request(url, method, path, body=None, headers=None, timeout=30):
    host, port = url.split("//")[1].split(":")
    c = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        c.request(method, path, body=body, headers=headers or {})
        r = c.getresponse()
        return r.status, r.read(), dict(r.getheaders())
    finally:
        c.close()


def wait_until(what, deadline_s, fn):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            v = fn()
            if v:
                return v
        except OSError:
            pass
        time.sleep(0.05)
    raise SystemExit("timed out waiting for " + what)


class Bench:
    def __init__(self, args):
        self.berth, self.clusterctl = args.berth, args.clusterctl
        self.tmp = tempfile.mkdtemp(prefix="berth-cluster-bench.")
        self.nodes = []

    def ctl(self, node, *a):
        out = subprocess.run([self.clusterctl, "--endpoint", node.caddr, "--json", *a],
                             capture_output=True, text=True, timeout=120)
        if out.returncode != 0:
            raise SystemExit("clusterctl %s failed: %s" % (" ".join(a), out.stderr))
        return out.stdout

    def status(self, node):
        return json.loads(self.ctl(node, "status"))

    def leader(self):
        """The node that leads, as the members themselves report it (each member's role in
        `status` comes from its own answer); None until exactly one reachable member leads."""
        for n in self.nodes:
            if n.proc.poll() is not None:
                continue
            try:
                members = self.status(n)["members"]
            except SystemExit:
                continue
            leaders = [m["id"] for m in members if m.get("reachable") and m["role"] == "leader"]
            if len(leaders) == 1:
                return next(x for x in self.nodes if x.id == leaders[0])
        return None

    def start_cluster(self):
        first = Node(self, 1)
        first.start()
        self.nodes.append(first)
        wait_until("node 1 ready", 30, lambda: request(first.url, "GET", "/readyz")[0] == 200)
        for i in (2, 3):
            n = Node(self, i, join=first.caddr)
            n.start()
            self.nodes.append(n)
            wait_until("node %d ready" % i, 30, lambda n=n: request(n.url, "GET", "/readyz")[0] == 200)
            self.ctl(first, "nodes", "promote", str(i))

    def close(self):
        for n in self.nodes:
            n.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def push_blob(url, repo, data):
    d = "sha256:" + hashlib.sha256(data).hexdigest()
    st, body, _ = request(url, "POST", "/v2/%s/blobs/uploads/?digest=%s" % (repo, d), body=data,
                          headers={"Content-Type": "application/octet-stream"}, timeout=600)
    if st != 201:
        raise SystemExit("blob push: HTTP %d %s" % (st, body[:200]))
    return d


def seed_manifest(url, repo):
    cfg = b'{"architecture":"amd64","os":"linux"}'
    layer = os.urandom(4096)
    cd, ld = push_blob(url, repo, cfg), push_blob(url, repo, layer)
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json", "digest": cd, "size": len(cfg)},
        "layers": [{"mediaType": "application/vnd.oci.image.layer.v1.tar", "digest": ld, "size": len(layer)}],
    }).encode()


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


def curl_pull(url, path):
    out = subprocess.run(["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w",
                          "%{http_code} %{time_total} %{size_download}", url + path],
                         capture_output=True, text=True, timeout=600).stdout.split()
    if out[0] != "200":
        raise SystemExit("pull: HTTP %s" % out[0])
    return int(out[2]) / float(out[1]) / 1e6


def pulls(b, mib):
    repo = "bench/pull"
    leader = wait_until("a leader", 30, b.leader)
    follower = next(n for n in b.nodes if n is not leader)
    path_blob = os.path.join(b.tmp, "big.bin")
    with open(path_blob, "wb") as f:
        for _ in range(mib // 4):
            f.write(os.urandom(4 * MIB))
    h = hashlib.sha256()
    with open(path_blob, "rb") as f:
        for chunk in iter(lambda: f.read(4 * MIB), b""):
            h.update(chunk)
    d = "sha256:" + h.hexdigest()
    out = subprocess.run(["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}",
                          "-X", "POST", "-T", path_blob, "-H", "Content-Type: application/octet-stream",
                          leader.url + "/v2/%s/blobs/uploads?digest=%s" % (repo, d)],
                         capture_output=True, text=True, timeout=600).stdout
    os.unlink(path_blob)
    if out != "201":
        raise SystemExit("big blob push: HTTP %s" % out)
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
    b = Bench(args)
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
