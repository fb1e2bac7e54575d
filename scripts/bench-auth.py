#!/usr/bin/env python3
"""The cost of authentication (issue 10, ADR 019): one berth node with auth off and one with
auth on, interleaved over ROUNDS rounds, each from a fresh start, measured with wrk on
loopback (64 connections, 2 threads):

  manifest GET and blob HEAD   off (no credentials) vs on (a bearer token, docker's way;
                               and Basic credentials on every request, simple clients' way)
  token issue                  on: GET /auth/token with Basic credentials (docker's GET
                               flow; the password is verified once, then cached), and the
                               OAuth2 refresh_token grant (docker after `docker login`)

Prints a markdown table (medians over the rounds; p99 latency as wrk reports it).

    CARGO_TARGET_DIR=... scripts/bench-auth.py [--rounds 3] [--duration 10] [--conns 64]
"""
import argparse
import base64
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import benchkit  # noqa: E402

PASSWORD = "bench-admin-password"
BASIC = "Basic " + base64.b64encode(("admin:" + PASSWORD).encode()).decode()
REPO = "bench/auth"
LUA = r"""
local method, header, body = "GET", nil, nil
function init(args)
  method = args[1]
  header = args[2]
  body = args[3]
end
function request()
  local h = {}
  if header and header ~= "" then h["Authorization"] = header end
  h["Accept"] = "application/vnd.oci.image.manifest.v1+json"
  if body and body ~= "" then
    h["Content-Type"] = "application/x-www-form-urlencoded"
    return wrk.format(method, nil, h, body)
  end
  return wrk.format(method, nil, h)
end
"""


def wrk(url, method, header, body, conns, duration, lua):
    return benchkit.wrk_get(url, lua, conns, duration, method, header or "", body or "")


def ab_head(url, header, conns, duration, tmp):
    """HEAD with ApacheBench (wrk waits for a body after a HEAD answer with Content-Length)."""
    csv = os.path.join(tmp, "ab.csv")
    cmd = ["ab", "-k", "-q", "-i", "-c", str(conns), "-t", str(duration), "-n", "100000000",
           "-s", "5", "-e", csv]
    if header:
        cmd += ["-H", "Authorization: " + header]
    out = subprocess.run(cmd + [url], capture_output=True, text=True, timeout=duration + 60).stdout
    rps = float(re.search(r"Requests per second:\s+([\d.]+)", out).group(1))
    bad = re.search(r"Non-2xx responses:\s+(\d+)", out)
    if bad:
        raise SystemExit("ab HEAD %s: %s non-2xx answers" % (url, bad.group(1)))
    p99 = 0.0
    with open(csv) as f:
        for line in f.read().splitlines()[1:]:
            k, v = line.split(",")
            if int(float(k)) == 99:
                p99 = float(v)
    return rps, p99


def seed(node, auth):
    h = {"Authorization": auth} if auth else {}
    cfg = b'{"architecture":"amd64","os":"linux"}'
    layer = os.urandom(4096)
    digests = []
    for blob in (cfg, layer):
        d = benchkit.digest_of(blob)
        st, body, _ = benchkit.request(node.url, "POST", "/v2/%s/blobs/uploads/?digest=%s" % (REPO, d),
                                       body=blob, headers=dict(h, **{"Content-Type": "application/octet-stream"}))
        assert st == 201, (st, body)
        digests.append((d, len(blob)))
    m = benchkit.manifest_of(digests[0], [digests[1]])
    st, body, _ = benchkit.request(node.url, "PUT", "/v2/%s/manifests/v1" % REPO, body=m,
                                   headers=dict(h, **{"Content-Type": benchkit.OCI_MANIFEST}))
    assert st == 201, (st, body)
    return digests[1][0]


def token(node, query, method="GET", body=None):
    headers = {"Authorization": BASIC} if method == "GET" else {
        "Content-Type": "application/x-www-form-urlencoded"}
    st, raw, _ = benchkit.request(node.url, method, "/auth/token?" + query if method == "GET" else "/auth/token",
                                  body=body, headers=headers)
    assert st == 200, (st, raw)
    return json.loads(raw)


def run_round(bench, auth, args, lua):
    env = {"BERTH_AUTH__ENABLED": "true" if auth else "false"}
    if auth:
        env["BERTH_AUTH__BOOTSTRAP_ADMIN_PASSWORD"] = PASSWORD
        env["BERTH_AUTH__MAX_FAILED_LOGINS"] = "0"
        env["BERTH_AUTH__TOKEN_TTL_SECS"] = "3600"
    node = benchkit.Node(bench, len(bench.nodes) + 1, env=env)
    node.start()
    bench.nodes.append(node)
    benchkit.wait_until("ready", 60, lambda: benchkit.request(node.url, "GET", "/readyz")[0] == 200)
    out = {}
    if auth:
        benchkit.wait_until("the admin", 60,
                            lambda: benchkit.request(node.url, "GET", "/auth/token?service=berth",
                                                     headers={"Authorization": BASIC})[0] == 200)
    layer = seed(node, BASIC if auth else None)
    manifest = node.url + "/v2/%s/manifests/v1" % REPO
    blob = node.url + "/v2/%s/blobs/%s" % (REPO, layer)
    if auth:
        t = token(node, "service=berth&scope=repository:%s:pull" % REPO)["token"]
        bearer = "Bearer " + t
        out["manifest GET"] = wrk(manifest, "GET", bearer, None, args.conns, args.duration, lua)
        out["blob HEAD"] = ab_head(blob, bearer, args.conns, args.duration, bench.tmp)
        out["blob HEAD (Basic)"] = ab_head(blob, BASIC, args.conns, args.duration, bench.tmp)
        out["manifest GET (Basic)"] = wrk(manifest, "GET", BASIC, None, args.conns, args.duration, lua)
        out["token issue (GET, Basic)"] = wrk(
            node.url + "/auth/token?service=berth&scope=repository:%s:pull" % REPO, "GET", BASIC, None,
            args.conns, args.duration, lua)
        form = "grant_type=password&username=admin&password=%s&access_type=offline" % PASSWORD
        refresh = token(node, "", "POST", form.encode())["refresh_token"]
        out["token issue (refresh grant)"] = wrk(
            node.url + "/auth/token", "POST", None,
            "grant_type=refresh_token&service=berth&scope=repository:%s:pull&refresh_token=%s" % (REPO, refresh),
            args.conns, args.duration, lua)
    else:
        out["manifest GET"] = wrk(manifest, "GET", None, None, args.conns, args.duration, lua)
        out["blob HEAD"] = ab_head(blob, None, args.conns, args.duration, bench.tmp)
    node.stop()
    return out


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--duration", type=int, default=10)
    ap.add_argument("--conns", type=int, default=64)
    args = ap.parse_args()
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    target = os.environ.get("CARGO_TARGET_DIR", os.path.join(root, "target"))
    subprocess.run(["cargo", "build", "--release", "--bin", "berth"], cwd=root, check=True)
    bench = benchkit.Bench(os.path.join(target, "release", "berth"), None, "berth-bench-auth-")
    lua = os.path.join(bench.tmp, "auth.lua")
    with open(lua, "w") as f:
        f.write(LUA)
    results = {False: [], True: []}
    try:
        for r in range(args.rounds):
            for auth in (False, True):
                print("round %d, auth %s" % (r + 1, "on" if auth else "off"), file=sys.stderr)
                results[auth].append(run_round(bench, auth, args, lua))
    finally:
        bench.close()
    print("| workload | auth off req/s | auth on req/s | on/off | p99 on (ms) | rounds off / on (req/s) |")
    print("|---|---|---|---|---|---|")
    for name in results[True][0]:
        on = [x[name][0] for x in results[True]]
        p99 = [x[name][1] for x in results[True]]
        base = name.replace(" (Basic)", "")
        off = [x[base][0] for x in results[False] if base in x]
        med_on = statistics.median(on)
        if off:
            med_off = statistics.median(off)
            print("| %s | %.0f | %.0f | %.2f | %.2f | %s / %s |" % (
                name, med_off, med_on, med_on / med_off, statistics.median(p99),
                ", ".join("%.0f" % v for v in off), ", ".join("%.0f" % v for v in on)))
        else:
            print("| %s | — | %.0f | — | %.2f | %s |" % (
                name, med_on, statistics.median(p99), ", ".join("%.0f" % v for v in on)))


if __name__ == "__main__":
    main()
