//! The audit log through the real router: with auth on, a refused and an accepted login at
//! the token endpoint, a push and deletes with Basic credentials each leave a record with the
//! identity and the client's address, which the node's audit query returns.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use axum::extract::ConnectInfo;
use base64::Engine;
use berth_node::audit::{AuditQuery, AuditRecord};
use common::*;
use http::{Method, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const ADMIN_PASSWORD: &str = "correct horse battery staple";
/// The client address every request of this test comes from.
const CLIENT: ([u8; 4], u16) = ([10, 9, 8, 7], 40_000);

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

/// `req` as if it came over a connection from [`CLIENT`].
async fn send_from_client(
    t: &Client,
    method: Method,
    uri: &str,
    headers: &[(&str, &str)],
    body: impl Into<Vec<u8>>,
) -> Resp {
    let mut req = request(method, uri, headers, body);
    req.extensions_mut()
        .insert(ConnectInfo(SocketAddr::from(CLIENT)));
    t.send(req).await
}

/// The records of this node, polled until `done` says they are all there (the writer stores
/// them in the background), at most 10 s.
async fn records_until(
    node: &berth_node::Node,
    query: AuditQuery,
    done: impl Fn(&[AuditRecord]) -> bool,
) -> Vec<AuditRecord> {
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    loop {
        let records = node.audit.query(query.clone()).await.unwrap();
        if done(&records) || tokio::time::Instant::now() >= deadline {
            return records;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn field(r: &AuditRecord, key: &str) -> Option<String> {
    r.event
        .fields()
        .into_iter()
        .find(|(k, _)| *k == key)
        .map(|(_, v)| v)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logins_tokens_pushes_and_deletes_are_audited_with_identity_and_address() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = test_config(dir.path());
    config.auth.enabled = Some(true);
    config.auth.bootstrap_admin_password = Some(ADMIN_PASSWORD.to_string());
    config.region = "eu-west".to_string();
    let node = berth_node::Node::start(&config, Duration::from_secs(10))
        .await
        .unwrap();
    let stop = CancellationToken::new();
    let bootstrap = tokio::spawn(
        berth_node::auth::manage::AuthAdmin::new(
            node.auth.clone(),
            node.registry.cluster().clone(),
        )
        .bootstrap(stop.clone()),
    );
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    while !(node.auth.state().has_user() && node.auth.state().signing_key().is_some()) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "the bootstrap did not create the admin user and a signing key within 20 s"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let t = Client { app: node.router() };
    let admin = basic("admin", ADMIN_PASSWORD);

    // A refused and an accepted login at the token endpoint.
    let wrong = basic("admin", "wrong");
    send_from_client(
        &t,
        Method::GET,
        "/auth/token?service=berth",
        &[("authorization", &wrong)],
        Vec::new(),
    )
    .await
    .expect(StatusCode::UNAUTHORIZED);
    let token = send_from_client(
        &t,
        Method::GET,
        "/auth/token?service=berth&scope=repository:team/app:pull,push",
        &[("authorization", &admin)],
        Vec::new(),
    )
    .await;
    token.expect(StatusCode::OK);

    // A push (two blobs and a tagged manifest) and deletes, with Basic credentials.
    let auth = [("authorization", admin.as_str())];
    let config_blob = b"{\"seed\":\"audit\"}".to_vec();
    let layer = b"layer of audit".to_vec();
    for content in [&config_blob, &layer] {
        send_from_client(
            &t,
            Method::POST,
            &format!("/v2/team/app/blobs/uploads/?digest={}", digest_of(content)),
            &auth,
            content.clone(),
        )
        .await
        .expect(StatusCode::CREATED);
    }
    let manifest = bytes_of(&oci_manifest(&config_blob, &[&layer]));
    let digest = digest_of(&manifest);
    send_from_client(
        &t,
        Method::PUT,
        "/v2/team/app/manifests/v1",
        &[auth[0], ("content-type", OCI_MANIFEST)],
        manifest,
    )
    .await
    .expect(StatusCode::CREATED);
    send_from_client(
        &t,
        Method::DELETE,
        &format!("/v2/team/app/manifests/{digest}"),
        &auth,
        Vec::new(),
    )
    .await
    .expect(StatusCode::ACCEPTED);
    send_from_client(
        &t,
        Method::DELETE,
        &format!("/v2/team/app/blobs/{}", digest_of(&layer)),
        &auth,
        Vec::new(),
    )
    .await
    .expect(StatusCode::ACCEPTED);

    let all = AuditQuery {
        since_ms: 0,
        identity: None,
        limit: 1000,
    };
    let records = records_until(&node, all.clone(), |rs| {
        rs.iter().filter(|r| r.event.name() == "delete").count() == 2
    })
    .await;
    let names: Vec<&str> = records.iter().map(|r| r.event.name()).collect();
    assert_eq!(
        names,
        [
            "login_failed",
            "login_succeeded",
            "token_issued",
            "push",
            "delete",
            "delete"
        ],
        "{records:#?}"
    );
    let client_ip = SocketAddr::from(CLIENT).ip();
    for r in &records {
        assert_eq!(r.identity.as_deref(), Some("admin"), "{r:?}");
        assert_eq!(r.address, Some(client_ip), "{r:?}");
        assert_eq!(r.node, config.node_id);
        assert_eq!(r.region, "eu-west");
        assert!(r.time_ms > 0);
    }
    assert!(records.windows(2).all(|w| w[0].time_ms <= w[1].time_ms));
    assert_eq!(
        field(&records[0], "reason").as_deref(),
        Some("authentication required: invalid user name or password")
    );
    assert!(
        field(&records[2], "scope")
            .unwrap()
            .contains("repository:team/app:"),
        "{:?}",
        records[2]
    );
    let push = &records[3];
    assert_eq!(field(push, "repository").as_deref(), Some("team/app"));
    assert_eq!(field(push, "digest").as_deref(), Some(digest.as_str()));
    assert_eq!(field(push, "tag").as_deref(), Some("v1"));
    assert_eq!(field(&records[4], "kind").as_deref(), Some("manifest"));
    assert_eq!(
        field(&records[4], "reference").as_deref(),
        Some(digest.as_str())
    );
    assert_eq!(field(&records[5], "kind").as_deref(), Some("blob"));

    // Pulls are not audited; a request without credentials (answered with a challenge) is
    // not a login.
    send_from_client(
        &t,
        Method::GET,
        "/v2/team/app/manifests/v1",
        &auth,
        Vec::new(),
    )
    .await;
    send_from_client(&t, Method::GET, "/v2/team/app/tags/list", &[], Vec::new())
        .await
        .expect(StatusCode::UNAUTHORIZED);
    // A bad bearer token is refused credentials, with no identity.
    send_from_client(
        &t,
        Method::GET,
        "/v2/team/app/tags/list",
        &[("authorization", "Bearer not-a-token")],
        Vec::new(),
    )
    .await
    .expect(StatusCode::UNAUTHORIZED);
    let records = records_until(&node, all.clone(), |rs| rs.len() == 7).await;
    assert_eq!(records.len(), 7, "{records:#?}");
    assert_eq!(records[6].event.name(), "login_failed");
    assert_eq!(records[6].identity, None);

    // The identity filter, and the limit (the newest ones).
    let anonymous_only = node
        .audit
        .query(AuditQuery {
            identity: Some("nobody".into()),
            ..all.clone()
        })
        .await
        .unwrap();
    assert!(anonymous_only.is_empty());
    let admins = node
        .audit
        .query(AuditQuery {
            identity: Some("admin".into()),
            limit: 2,
            ..all
        })
        .await
        .unwrap();
    let names: Vec<&str> = admins.iter().map(|r| r.event.name()).collect();
    assert_eq!(names, ["delete", "delete"]);
    let line: Value = berth_node::audit::json_line(&admins[1]);
    assert_eq!(line["address"], "10.9.8.7");

    stop.cancel();
    bootstrap.await.unwrap();
    drop(t);
    assert!(node.stop().await, "the metadata store did not close");
}
