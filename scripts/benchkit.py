"""Shared parts of the cluster benchmarks (scripts/bench-cluster.py, scripts/bench-geo.py):
real `berth` processes on loopback, plain HTTP requests, bounded waits, blob pushes, curl
pulls, CPU time of a process. Standard library only."""

import hashlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import tempfile
import time

MIB = 1 << 20
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Node:
    """One berth process; `region` and `env` (config through BERTH_* variables) optional."""

    def __init__(self, bench, node_id, join=None, region=None, env=None, cpu=None):
        self.bench, self.id, self.join, self.region, self.cpu = bench, node_id, join, region, cpu
        self.extra_env = env or {}
        self.port, self.cport = free_port(), free_port()
        self.data = os.path.join(bench.tmp, "node%d" % node_id)
        self.proc = None

    @property
    def url(self):
        return "http://127.0.0.1:%d" % self.port

    @property
    def caddr(self):
        return "127.0.0.1:%d" % self.cport

    @property
    def log_path(self):
        """Its stderr (the log), appended to across restarts."""
        return os.path.join(self.bench.tmp, "node%d.log" % self.id)

    def start(self):
        cmd = [self.bench.berth, "serve", "--node-id", str(self.id),
               "--listen", "127.0.0.1:%d" % self.port, "--cluster-listen", self.caddr,
               "--data-dir", self.data]
        if self.region:
            cmd += ["--region", self.region]
        if self.join:
            cmd += ["--join", self.join]
        if self.cpu is not None:
            cmd = ["taskset", "-c", str(self.cpu)] + cmd
        env = {k: v for k, v in os.environ.items() if not k.startswith("BERTH_")}
        env.setdefault("RUST_LOG", "warn")
        env.update(self.extra_env)
        log = open(self.log_path, "ab")
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=log, env=env)

    def cpu_seconds(self):
        """User + system CPU time the process has used so far."""
        with open("/proc/%d/stat" % self.proc.pid) as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / CLK_TCK

    def blob_path(self, digest):
        hexd = digest.split(":", 1)[1]
        return os.path.join(self.data, "blobs", "sha256", hexd[:2], hexd)

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


def wait_until(what, deadline_s, fn, every=0.05):
    end = time.monotonic() + deadline_s
    while time.monotonic() < end:
        try:
            v = fn()
            if v:
                return v
        except OSError:
            pass
        time.sleep(every)
    raise SystemExit("timed out waiting for " + what)


class Bench:
    """A temporary folder and the nodes started in it; `close` stops them and removes it."""

    def __init__(self, berth, clusterctl, prefix):
        self.berth, self.clusterctl = berth, clusterctl
        self.tmp = tempfile.mkdtemp(prefix=prefix)
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

    def start_cluster(self, n=3, regions=None, env=None, voters=None, cpus=None):
        """Node 1 initialises; the others join it and those in `voters` (default: all) are
        promoted. `regions[i]` is node i+1's region; `cpus[i]`, if given, the one CPU it runs
        on."""
        voters = voters if voters is not None else range(2, n + 1)
        for i in range(1, n + 1):
            node = Node(self, i, join=None if i == 1 else self.nodes[0].caddr,
                        region=regions[i - 1] if regions else None, env=env,
                        cpu=cpus[i - 1] if cpus else None)
            node.start()
            self.nodes.append(node)
            wait_until("node %d ready" % i, 60, lambda node=node: request(node.url, "GET", "/readyz")[0] == 200)
            if i > 1 and i in voters:
                self.ctl(self.nodes[0], "nodes", "promote", str(i))

    def close(self):
        for n in self.nodes:
            n.stop()
        shutil.rmtree(self.tmp, ignore_errors=True)


def digest_of(data):
    return "sha256:" + hashlib.sha256(data).hexdigest()


def push_blob(url, repo, data):
    d = digest_of(data)
    st, body, _ = request(url, "POST", "/v2/%s/blobs/uploads/?digest=%s" % (repo, d), body=data,
                          headers={"Content-Type": "application/octet-stream"}, timeout=600)
    if st != 201:
        raise SystemExit("blob push: HTTP %d %s" % (st, body[:200]))
    return d


def manifest_of(config, layers):
    """An OCI image manifest over (digest, size) pairs."""
    return json.dumps({
        "schemaVersion": 2, "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config[0], "size": config[1]},
        "layers": [{"mediaType": OCI_LAYER, "digest": d, "size": s} for d, s in layers],
    }).encode()


def put_manifest(url, repo, tag, manifest):
    st, body, _ = request(url, "PUT", "/v2/%s/manifests/%s" % (repo, tag), body=manifest,
                          headers={"Content-Type": OCI_MANIFEST}, timeout=120)
    if st != 201:
        raise SystemExit("manifest PUT %s:%s: HTTP %d %s" % (repo, tag, st, body[:300]))


def seed_manifest(url, repo):
    cfg = b'{"architecture":"amd64","os":"linux"}'
    layer = os.urandom(4096)
    cd, ld = push_blob(url, repo, cfg), push_blob(url, repo, layer)
    return manifest_of((cd, len(cfg)), [(ld, len(layer))])


def random_file(path, mib):
    """Writes `mib` MiB of random bytes to `path`; returns its digest."""
    h = hashlib.sha256()
    with open(path, "wb") as f:
        for _ in range(mib // 4):
            chunk = os.urandom(4 * MIB)
            h.update(chunk)
            f.write(chunk)
    return "sha256:" + h.hexdigest()


def curl_push_file(url, repo, path, digest, cpu=None):
    pin = ["taskset", "-c", str(cpu)] if cpu is not None else []
    out = subprocess.run(pin + ["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w", "%{http_code}",
                          "-X", "POST", "-T", path, "-H", "Content-Type: application/octet-stream",
                          url + "/v2/%s/blobs/uploads?digest=%s" % (repo, digest)],
                         capture_output=True, text=True, timeout=600).stdout
    if out != "201":
        raise SystemExit("blob push of %s: HTTP %s" % (path, out))


def curl_pull(url, path):
    """GETs `path` with curl, discarding the body; returns MB/s."""
    out = subprocess.run(["curl", "-s", "--noproxy", "*", "-o", "/dev/null", "-w",
                          "%{http_code} %{time_total} %{size_download}", url + path],
                         capture_output=True, text=True, timeout=600).stdout.split()
    if out[0] != "200":
        raise SystemExit("pull: HTTP %s" % out[0])
    return int(out[2]) / float(out[1]) / 1e6


def wrk_get(url, lua, conns, duration, *script_args):
    """Drives `url` with wrk (2 threads, `conns` connections, `duration` s, the requests of the
    `lua` script, given `script_args`); returns (req/s, p99 latency in ms). Any non-2xx answer
    stops the run."""
    args = ["--", *script_args] if script_args else []
    out = subprocess.run(["wrk", "-t2", "-c%d" % conns, "-d%ds" % duration, "--latency", "-s", lua, url, *args],
                         capture_output=True, text=True, timeout=duration + 60)
    text = out.stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    p99 = re.search(r"99%\s+([\d.]+)(us|ms|s)", text)
    scale = {"us": 0.001, "ms": 1.0, "s": 1000.0}[p99.group(2)]
    bad = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", text)
    if bad:
        raise SystemExit("wrk %s %s: %s non-2xx answers\n%s" % (" ".join(script_args), url, bad.group(1), text))
    return rps, float(p99.group(1)) * scale
