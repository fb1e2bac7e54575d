//! Tier 2: the durability policy and regional routing on one in-process node.
//!
//! A policy one node cannot meet (`min_copies` or `min_regions` above 1) answers a manifest
//! PUT with 503 `UNAVAILABLE` naming the blob and why, at once (not after the write timeout),
//! and commits nothing. A client mapped to a region with no node serves from here (no
//! redirect to nowhere). The multi-node halves are `cluster-tests/tests/s12_durability.rs` and
//! `s13_regional_redirects.rs`.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use axum::extract::ConnectInfo;
use common::*;
use http::{Method, StatusCode};

/// A one-node cluster with `edit` applied to its configuration.
async fn node_with(
    edit: impl FnOnce(&mut berth_node::config::Config),
) -> (Client, berth_node::Node, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    edit(&mut config);
    config.validate().unwrap();
    let node = berth_node::Node::start(&config, Duration::from_secs(10))
        .await
        .unwrap();
    let client = Client { app: node.router() };
    (client, node, dir)
}

#[tokio::test]
async fn a_policy_one_node_cannot_meet_is_503_with_the_reason_and_commits_nothing() {
    for (field, edit) in [
        (
            "min_copies",
            (|c: &mut berth_node::config::Config| c.durability.min_copies = 2)
                as fn(&mut berth_node::config::Config),
        ),
        ("min_regions", |c| c.durability.min_regions = 2),
    ] {
        let (client, node, _dir) = node_with(edit).await;
        let config = b"{\"durable\":1}";
        let layer = b"a layer that stays alone";
        client.push_blob("d", config).await;
        client.push_blob("d", layer).await;
        let m = oci_manifest(config, &[layer]);
        let started = Instant::now();
        let r = client
            .put_manifest("d", "v1", OCI_MANIFEST, &bytes_of(&m))
            .await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{field}: an impossible policy must fail at once"
        );
        assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "UNAVAILABLE");
        let message = r.json()["errors"][0]["message"]
            .as_str()
            .unwrap()
            .to_string();
        assert!(
            message.contains(&digest_of(config)) || message.contains(&digest_of(layer)),
            "{field}: {message}"
        );
        assert!(
            message.contains("the cluster has 1 node(s) in 1 region(s)"),
            "{field}: {message}"
        );
        let g = client.get("/v2/d/manifests/v1").await;
        assert_error(&g, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
        let g = client
            .get(&format!("/v2/d/manifests/{}", digest_of(&bytes_of(&m))))
            .await;
        assert_error(&g, StatusCode::NOT_FOUND, "MANIFEST_UNKNOWN");
        drop(client);
        assert!(node.stop().await);
    }
}

#[tokio::test]
async fn a_client_of_a_region_without_nodes_is_served_here() {
    let (client, node, _dir) = node_with(|c| {
        c.region = "r1".to_string();
        c.routing.client_regions = vec!["127.0.0.0/8=r2".to_string()];
        c.routing.redirect_missing = true;
    })
    .await;
    let blob = b"served where it is asked for";
    let digest = client.push_blob("route", blob).await;
    for method in [Method::GET, Method::HEAD] {
        let mut req = request(
            method.clone(),
            &format!("/v2/route/blobs/{digest}"),
            &[],
            Vec::new(),
        );
        req.extensions_mut()
            .insert(ConnectInfo(SocketAddr::from(([127, 0, 0, 1], 40000))));
        let r = client.send(req).await;
        assert_eq!(r.status, StatusCode::OK, "{method}");
        assert_eq!(r.header("location"), None, "{method}");
        if method == Method::GET {
            assert_eq!(&r.body[..], &blob[..]);
        }
    }
    drop(client);
    assert!(node.stop().await);
}
