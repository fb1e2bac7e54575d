"""Drives oras-py (PyPI `oras`) for berth's tier-4 test `clients_oras`: pushes a Helm chart
artifact to an insecure (plain HTTP) registry and pulls it back.

Usage: oras_helm.py HOST REPO TAG CHART CONFIG OUTDIR monolithic|chunked

CHART is pushed as the one layer (Helm's chart media type), CONFIG as the config (Helm's
config media type); "chunked" uploads the blobs in small PATCHes instead of POST + PUT.
Prints one JSON object: the manifest digest the registry answered to the push, the files the
pull wrote into OUTDIR, and the manifest oras read back.
"""

import json
import sys

import oras.client

HELM_CONFIG = "application/vnd.cncf.helm.config.v1+json"
HELM_CHART = "application/vnd.cncf.helm.chart.content.v1.tar+gzip"
CHUNK_SIZE = 8192


def main(host, repo, tag, chart, config, outdir, mode):
    if mode not in ("monolithic", "chunked"):
        raise SystemExit(f"unknown upload mode {mode!r}")
    client = oras.client.OrasClient(hostname=host, insecure=True)
    target = f"{host}/{repo}:{tag}"
    response = client.push(
        target=target,
        files=[f"{chart}:{HELM_CHART}"],
        manifest_config=f"{config}:{HELM_CONFIG}",
        disable_path_validation=True,
        do_chunked=mode == "chunked",
        chunk_size=CHUNK_SIZE,
        quiet=True,
    )
    pulled = client.pull(target=target, outdir=outdir)
    manifest = client.get_manifest(target)
    json.dump(
        {
            "pushed_digest": response.headers.get("Docker-Content-Digest"),
            "status": response.status_code,
            "pulled": pulled,
            "manifest": manifest,
        },
        sys.stdout,
    )


if __name__ == "__main__":
    if len(sys.argv) != 8:
        raise SystemExit(__doc__)
    main(*sys.argv[1:])
