//! Scenario 19 — a region cut off from the Raft leader still authenticates and authorises
//! (ADR 019): signing keys and identities are Raft state every node has applied, so the
//! cut-off node issues registry tokens, checks them and Basic credentials, and refuses what
//! the identity may not do — while its writes answer 503 as every cut-off write does. A
//! token issued by the cut-off node works at the other nodes, and the reverse.

use std::time::{Duration, Instant};

use cluster_tests::admin::basic_auth as basic;
use cluster_tests::oci::OCI_MANIFEST;
use cluster_tests::{ClusterBuilder, random_layer};

const PASSWORD: &str = "admin-pass-1";
const REPO: &str = "s19/app";

#[test]
fn a_cut_off_node_still_authenticates_and_authorises() {
    let c = ClusterBuilder::new()
        .nodes(3)
        .regions(&["r1", "r2", "r3"])
        .write_timeout_ms(2000)
        .auth(PASSWORD)
        .build();
    let leader = c.leader();
    let cut = c.followers()[0];
    let majority: Vec<u64> = c.ids().into_iter().filter(|id| *id != cut).collect();
    let scope = format!("repository:{REPO}:pull,push");

    // Every node answers the admin once the bootstrap is applied there.
    let deadline = Instant::now() + Duration::from_secs(30);
    for id in c.ids() {
        while let Err(e) = c.registry_token(id, "admin", PASSWORD, &scope) {
            assert!(Instant::now() < deadline, "node {id} issues no token: {e}");
            std::thread::sleep(Duration::from_millis(100));
        }
    }
    let admin = |id: u64| c.client(id).with_authorization(&basic("admin", PASSWORD));
    let image = admin(leader).must_push_image(REPO, "v1", &[random_layer(8 * 1024)]);
    let deadline = Instant::now() + Duration::from_secs(30);
    while admin(cut).try_pull_image(REPO, "v1", &image).is_err() {
        assert!(
            Instant::now() < deadline,
            "node {cut} never served the image"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // Without credentials the cluster's clients are refused (nothing here is anonymous).
    let r = c.client(cut).get_manifest(REPO, "v1").unwrap();
    assert_eq!(r.status, 401, "{}", r.text());

    c.partition(&[cut], &majority);

    // The cut-off node issues a token and honours it, and Basic credentials.
    let t = c
        .registry_token(cut, "admin", PASSWORD, &scope)
        .expect("a token from the cut-off node");
    let bearer = c.client(cut).with_authorization(&format!("Bearer {t}"));
    bearer.must_pull_image(REPO, "v1", &image);
    admin(cut).must_pull_image(REPO, "v1", &image);
    // It refuses bad credentials and what the token does not grant.
    let wrong = c
        .client(cut)
        .with_authorization(&basic("admin", "wrong-password"));
    assert_eq!(wrong.get_manifest(REPO, "v1").unwrap().status, 401);
    let other = c.client(cut).with_authorization(&format!("Bearer {t}"));
    assert_eq!(other.get_manifest("s19/other", "v1").unwrap().status, 401);
    // An authorised write is refused for the cut, not for the credentials.
    let r = bearer
        .put_manifest(REPO, "during-cut", OCI_MANIFEST, &image.manifest)
        .unwrap();
    assert_eq!(r.status, 503, "{}", r.text());
    // Its token works at the majority, and theirs at it.
    let at_majority = c.client(leader).with_authorization(&format!("Bearer {t}"));
    at_majority.must_pull_image(REPO, "v1", &image);
    let t2 = c.registry_token(leader, "admin", PASSWORD, &scope).unwrap();
    c.client(cut)
        .with_authorization(&format!("Bearer {t2}"))
        .must_pull_image(REPO, "v1", &image);

    c.heal();
    for id in c.ids() {
        assert_eq!(
            admin(id).must_tags(REPO),
            vec!["v1".to_string()],
            "node {id}"
        );
    }
}
