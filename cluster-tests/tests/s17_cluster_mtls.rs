//! Scenario 17 — mutual TLS between nodes (ADR 018), with certificates `clusterctl certs
//! init|issue` made:
//!
//! 1. three nodes whose cluster ports require a certificate the cluster CA signed form a
//!    cluster (joins, promotions, Raft), take a push at one node and serve the pull at the
//!    others (peer reads); a plaintext gRPC client and a `clusterctl` without a client
//!    certificate (or with one another CA signed) are refused, `clusterctl` with one works;
//! 2. a node whose certificate another CA signed cannot join: its join attempts fail in the
//!    handshake and it never becomes a member.

use std::path::Path;
use std::time::Duration;

use berth_proto::admin::NodeStatusRequest;
use berth_proto::admin::admin_client::AdminClient;
use cluster_tests::clusterctl::{self, CtlOutput};
use cluster_tests::{ClusterBuilder, random_layer, wait_until};

const CTL_TIMEOUT: Duration = Duration::from_secs(30);
const VISIBLE_WITHIN: Duration = Duration::from_secs(10);

/// `clusterctl certs …` (the endpoint is not contacted).
fn certs(args: &[&str]) -> CtlOutput {
    let out = clusterctl::run("127.0.0.1:1", args, CTL_TIMEOUT);
    out.assert_success();
    out
}

/// A CA in `dir/ca` and, in `dir/node`, the certificate every node and the harness use
/// (naming 127.0.0.1, the host of every node's cluster address) and an operator's client
/// certificate without a host.
fn make_certs(dir: &Path) {
    let p = |s: &str| dir.join(s).to_string_lossy().into_owned();
    certs(&["certs", "init", "--out", &p("ca")]);
    let issue = |name: &str, hosts: &[&str]| {
        let (ca, out) = (p("ca"), p("node"));
        let mut args = vec!["certs", "issue", "--ca", &ca, "--name", name, "--out", &out];
        for h in hosts {
            args.extend(["--host", h]);
        }
        certs(&args);
    };
    issue("node", &["127.0.0.1", "localhost"]);
    issue("operator", &[]);
}

#[test]
fn a_cluster_over_mutual_tls_forms_replicates_and_refuses_strangers() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let other = dir.path().join("other");
    make_certs(&other);
    let c = ClusterBuilder::new()
        .nodes(3)
        .cluster_tls(&dir.path().join("node"))
        .build();
    let image = c.must_push_image(1, "s17/mtls", "v1", &[random_layer(64 * 1024)]);
    for id in [2, 3] {
        c.wait_for_image(id, &image, VISIBLE_WITHIN);
        c.must_pull_image(id, "s17/mtls", "v1", &image);
    }

    let addr = c.node(2).cluster_addr();
    // A plaintext gRPC client never gets an answer.
    let plain = cluster_tests::admin::block_on(async {
        let channel = tonic::transport::Endpoint::from_shared(format!("http://{addr}"))
            .unwrap()
            .connect_timeout(Duration::from_secs(2))
            .connect()
            .await
            .map_err(|e| e.to_string())?;
        AdminClient::new(channel)
            .node_status(NodeStatusRequest {})
            .await
            .map_err(|s| s.to_string())
    });
    assert!(plain.is_err(), "plaintext NodeStatus answered: {plain:?}");

    // clusterctl: with the operator certificate it works; without one, or with one another
    // CA signed, the handshake fails and nothing is answered.
    let files = |d: &Path| {
        let p = |s: &str| d.join("node").join(s).to_string_lossy().into_owned();
        [p("ca.pem"), p("operator.pem"), p("operator-key.pem")]
    };
    let [ca, cert, key] = files(dir.path());
    let ok = clusterctl::run(
        &addr,
        &[
            "--ca", &ca, "--cert", &cert, "--key", &key, "--json", "status",
        ],
        CTL_TIMEOUT,
    );
    ok.assert_success();
    assert_eq!(
        ok.json()["members"].as_array().map(Vec::len),
        Some(3),
        "{}",
        ok.stdout
    );
    let refused = |out: &CtlOutput| {
        assert_eq!(out.status.code(), Some(1), "{out:?}");
        // The handshake fails: at connect time or at the first call, depending on when the
        // transport notices — and how: a plaintext HTTP/2 client may see the refusal as a
        // protocol error or a cancelled call (seen on loaded machines).
        let stderr = out.stderr.to_ascii_lowercase();
        assert!(
            [
                "cannot reach",
                "transport error",
                "h2 protocol error",
                "cancelled",
                "connection reset",
                "broken pipe",
            ]
            .iter()
            .any(|m| stderr.contains(m)),
            "{}",
            out.stderr
        );
        assert!(out.stdout.is_empty(), "{}", out.stdout);
    };
    refused(&clusterctl::run(&addr, &["status"], CTL_TIMEOUT));
    // The CA but no client certificate: refused before anything is contacted.
    let partial = clusterctl::run(&addr, &["--ca", &ca, "status"], CTL_TIMEOUT);
    assert_eq!(partial.status.code(), Some(1), "{partial:?}");
    assert!(partial.stderr.contains("together"), "{}", partial.stderr);
    let [_, other_cert, other_key] = files(&other);
    refused(&clusterctl::run(
        &addr,
        &[
            "--ca",
            &ca,
            "--cert",
            &other_cert,
            "--key",
            &other_key,
            "status",
        ],
        CTL_TIMEOUT,
    ));
}

#[test]
fn a_node_another_ca_signed_cannot_join() {
    let dir = tempfile::tempdir().unwrap();
    make_certs(dir.path());
    let other = dir.path().join("other");
    make_certs(&other);
    let mut c = ClusterBuilder::new()
        .nodes(1)
        .cluster_tls(&dir.path().join("node"))
        .build();
    let file = |s: &str| other.join("node").join(s).to_string_lossy().into_owned();
    let (ca, cert, key) = (file("ca.pem"), file("node.pem"), file("node-key.pem"));
    let stranger = c.start_node_with_env(
        Some(1),
        &[
            ("BERTH_CLUSTER_TLS__CA_FILE", &ca),
            ("BERTH_CLUSTER_TLS__CERT_FILE", &cert),
            ("BERTH_CLUSTER_TLS__KEY_FILE", &key),
        ],
    );
    wait_until(
        "the stranger's join attempts to fail twice",
        Duration::from_secs(20),
        || {
            let log = c.node(stranger).stderr();
            match log.matches("failed to join the cluster").count() {
                n if n >= 2 => Ok(()),
                n => Err(format!("{n} failed attempts so far")),
            }
        },
    );
    let members: Vec<u64> = c.status(1).members.iter().map(|m| m.id).collect();
    assert_eq!(members, vec![1], "the stranger became a member");
    c.kill(stranger);
}
