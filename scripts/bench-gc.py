#!/usr/bin/env python3
"""Online garbage collection at scale (issue 11, ADR 020): one berth node (release build,
`gc.grace_period_secs = 0`, no scheduled passes) seeded with BLOBS unreferenced blobs of
1 KiB and one tagged image; then, over ROUNDS rounds:

  baseline     manifest GET (wrk) and blob HEAD (ab) of the tagged image, no collection
  during GC    the same, while `clusterctl gc run --wait` collects every unreferenced blob
               (at `gc.max_blobs_per_sec`, default 2000) and the node's reaper removes the
               files

Reports how long the pass took (blobs/s), how long until the reaper had removed every file,
and client throughput during the pass as a fraction of the baseline (the target: >= 0.8).
With --distribution, also seeds CNCF Distribution (/usr/bin/docker-registry) with the same
blobs and times its offline `garbage-collect` (the registry must be stopped for it) for
comparison.

    CARGO_TARGET_DIR=... scripts/bench-gc.py [--blobs 100000] [--rounds 1] [--duration 15]
"""
import argparse
import concurrent.futures
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import threading
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchkit  # noqa: E402

REPO = "bench/gc"
LUA = r"""
function request()
  return wrk.format("GET", nil, {["Accept"] = "application/vnd.oci.image.manifest.v1+json"})
end
"""


def wrk(url, conns, duration, lua):
    out = subprocess.run(["wrk", "-t2", "-c%d" % conns, "-d%ds" % duration, "-s", lua, url],
                         capture_output=True, text=True, timeout=duration + 60).stdout
    if "Non-2xx" in out:
        raise SystemExit("wrk GET %s: non-2xx answers\n%s" % (url, out))
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))


def ab_head(url, conns, duration):
    out = subprocess.run(["ab", "-k", "-q", "-i", "-c", str(conns), "-t", str(duration),
                          "-n", "100000000", "-s", "5", url],
                         capture_output=True, text=True, timeout=duration + 60).stdout
    if re.search(r"Non-2xx responses:\s+[1-9]", out):
        raise SystemExit("ab HEAD %s: non-2xx answers" % url)
    return float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))


def push_two_step(url, repo, data):
    """POST to open a session, PUT the blob with its digest (Distribution answers a POST with
    `?digest=` and a body with 202 and a session, as clients that do so expect)."""
    st, body, h = benchkit.request(url, "POST", "/v2/%s/blobs/uploads/" % repo)
    if st != 202:
        raise SystemExit("upload POST: HTTP %d %s" % (st, body[:200]))
    loc = h.get("Location") or h.get("location")
    path = loc.split("//", 1)[1].split("/", 1)[1] if loc.startswith("http") else loc.lstrip("/")
    sep = "&" if "?" in path else "?"
    st, body, _ = benchkit.request(url, "PUT", "/%s%sdigest=%s" % (path, sep, benchkit.digest_of(data)),
                                   body=data, headers={"Content-Type": "application/octet-stream"})
    if st != 201:
        raise SystemExit("upload PUT: HTTP %d %s" % (st, body[:200]))


def seed_blobs(url, repo, n, workers=16, push_blob=benchkit.push_blob):
    """Pushes `n` distinct 1 KiB blobs (`workers` at once)."""
    def push(i):
        data = i.to_bytes(8, "big") + os.urandom(1016)
        push_blob(url, repo, data)
    t0 = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(workers) as pool:
        list(pool.map(push, range(n), chunksize=256))
    return time.monotonic() - t0


def blob_files(data_dir):
    n = 0
    for _, _, files in os.walk(os.path.join(data_dir, "blobs")):
        n += len(files)
    return n


def client_load(node, image, args, lua):
    manifest = node.url + "/v2/%s/manifests/v1" % REPO
    blob = node.url + "/v2/%s/blobs/%s" % (REPO, image)
    return {"manifest GET": wrk(manifest, args.conns, args.duration, lua),
            "blob HEAD": ab_head(blob, args.conns, args.duration)}


def berth_round(bench, args, lua):
    env = {"BERTH_GC__GRACE_PERIOD_SECS": "0", "BERTH_GC__INTERVAL_SECS": "0"}
    node = benchkit.Node(bench, len(bench.nodes) + 1, env=env)
    node.start()
    bench.nodes.append(node)
    benchkit.wait_until("ready", 60, lambda: benchkit.request(node.url, "GET", "/readyz")[0] == 200)
    m = benchkit.seed_manifest(node.url, REPO)
    benchkit.put_manifest(node.url, REPO, "v1", m)
    image_layer = json.loads(m)["layers"][0]["digest"]
    seeded = seed_blobs(node.url, REPO, args.blobs)
    files_before = blob_files(node.data)
    print("  seeded %d blobs in %.0f s" % (args.blobs, seeded), file=sys.stderr)
    out = {"seed_s": seeded}
    out["baseline"] = client_load(node, image_layer, args, lua)
    # The pass, in the background; the client load starts a moment after it.
    result = {}

    def run_gc():
        t0 = time.monotonic()
        r = subprocess.run([bench.clusterctl, "--endpoint", node.caddr, "--json", "--timeout", "1800",
                            "gc", "run", "--wait"], capture_output=True, text=True, timeout=1900)
        result["pass_s"] = time.monotonic() - t0
        result["out"] = r.stdout
        result["rc"] = r.returncode
        result["err"] = r.stderr
    reaped = {}

    def watch_reaper():
        # The reaper's own count (`gc status`), once a second: cheaper than walking the
        # directory, and it does not disturb the client load.
        while time.monotonic() - t0 < 1800:
            st = json.loads(bench.ctl(node, "gc", "status"))
            if st.get("reaper_removed_files", 0) >= args.blobs:
                reaped["s"] = time.monotonic() - t0
                return
            time.sleep(1)
    t0 = time.monotonic()
    gc = threading.Thread(target=run_gc)
    gc.start()
    watcher = threading.Thread(target=watch_reaper)
    watcher.start()
    time.sleep(2)
    out["during"] = client_load(node, image_layer, args, lua)
    load_ended = time.monotonic() - t0
    gc.join()
    watcher.join()
    if result["rc"] != 0:
        raise SystemExit("gc run failed: %s %s" % (result["out"], result["err"]))
    report = json.loads(result["out"])
    out["collected"] = report["blobs"]
    out["pass_s"] = result["pass_s"]
    out["load_within_pass"] = load_ended <= result["pass_s"]
    if "s" not in reaped:
        raise SystemExit("the reaper did not report %d files removed" % args.blobs)
    out["reaped_s"] = reaped["s"]
    left = blob_files(node.data)
    if left != files_before - args.blobs:
        raise SystemExit("%d blob files left, expected %d" % (left, files_before - args.blobs))
    out["cpu_s"] = node.cpu_seconds()
    node.stop()
    return out


def distribution_round(bench, args):
    """Seeds Distribution with the same number of 1 KiB blobs and times its offline GC."""
    root = os.path.join(bench.tmp, "dist")
    os.makedirs(root, exist_ok=True)
    port = benchkit.free_port()
    cfg = os.path.join(root, "config.yml")
    with open(cfg, "w") as f:
        f.write("version: 0.1\nlog:\n  level: error\nstorage:\n  filesystem:\n    rootdirectory: %s\n"
                "  delete:\n    enabled: true\nhttp:\n  addr: 127.0.0.1:%d\n" % (os.path.join(root, "data"), port))
    proc = subprocess.Popen(["/usr/bin/docker-registry", "serve", cfg],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = "http://127.0.0.1:%d" % port
    try:
        benchkit.wait_until("distribution", 60, lambda: benchkit.request(url, "GET", "/v2/")[0] == 200)
        cfg_blob = b'{"architecture":"amd64","os":"linux"}'
        layer = os.urandom(4096)
        for blob in (cfg_blob, layer):
            push_two_step(url, REPO, blob)
        m = benchkit.manifest_of((benchkit.digest_of(cfg_blob), len(cfg_blob)),
                                 [(benchkit.digest_of(layer), len(layer))])
        benchkit.put_manifest(url, REPO, "v1", m)
        seeded = seed_blobs(url, REPO, args.blobs, push_blob=push_two_step)
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    t0 = time.monotonic()
    r = subprocess.run(["/usr/bin/docker-registry", "garbage-collect", cfg],
                       capture_output=True, text=True, timeout=3600)
    gc_s = time.monotonic() - t0
    if r.returncode != 0:
        raise SystemExit("distribution garbage-collect failed: %s" % r.stderr[-2000:])
    left = sum(len(fs) for _, _, fs in os.walk(os.path.join(root, "data", "docker", "registry", "v2", "blobs")))
    shutil.rmtree(root, ignore_errors=True)
    return {"seed_s": seeded, "gc_s": gc_s, "files_left": left}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--blobs", type=int, default=100_000)
    ap.add_argument("--rounds", type=int, default=1)
    ap.add_argument("--duration", type=int, default=15)
    ap.add_argument("--conns", type=int, default=32)
    ap.add_argument("--distribution", action="store_true")
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    subprocess.run([os.path.join(root, "scripts", "deps"), "--bench"], check=True)
    subprocess.run(["cargo", "build", "--release", "--bin", "berth", "--bin", "clusterctl"],
                   cwd=root, check=True)
    bench = benchkit.Bench(os.path.join(target, "release", "berth"),
                           os.path.join(target, "release", "clusterctl"), "berth-bench-gc-")
    lua = os.path.join(bench.tmp, "get.lua")
    with open(lua, "w") as f:
        f.write(LUA)
    rounds, dist = [], []
    try:
        for r in range(args.rounds):
            print("round %d: berth" % (r + 1), file=sys.stderr)
            rounds.append(berth_round(bench, args, lua))
            if args.distribution:
                print("round %d: distribution" % (r + 1), file=sys.stderr)
                dist.append(distribution_round(bench, args))
    finally:
        bench.close()
    med = lambda xs: statistics.median(xs)  # noqa: E731
    print("| measure | value (median of %d) | rounds |" % args.rounds)
    print("|---|---|---|")
    print("| unreferenced blobs collected | %d | %s |" % (med([x["collected"] for x in rounds]),
                                                         ", ".join(str(x["collected"]) for x in rounds)))
    print("| pass (`gc run --wait`), s | %.1f | %s |" % (med([x["pass_s"] for x in rounds]),
                                                       ", ".join("%.1f" % x["pass_s"] for x in rounds)))
    print("| until every file was removed, s | %.1f | %s |" % (med([x["reaped_s"] for x in rounds]),
                                                             ", ".join("%.1f" % x["reaped_s"] for x in rounds)))
    for w in ("manifest GET", "blob HEAD"):
        base = [x["baseline"][w] for x in rounds]
        during = [x["during"][w] for x in rounds]
        print("| %s req/s: baseline / during the pass (ratio) | %.0f / %.0f (%.2f) | %s |" % (
            w, med(base), med(during), med(during) / med(base),
            ", ".join("%.0f/%.0f" % (b, d) for b, d in zip(base, during))))
    print("| client load entirely within the pass | %s | |" % all(x["load_within_pass"] for x in rounds))
    if dist:
        print("| Distribution offline `garbage-collect`, s (registry stopped) | %.1f | %s |" % (
            med([x["gc_s"] for x in dist]), ", ".join("%.1f" % x["gc_s"] for x in dist)))
        print("| Distribution blob files left after its GC | %d | |" % med([x["files_left"] for x in dist]))


if __name__ == "__main__":
    main()
