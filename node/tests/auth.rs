//! Authentication and authorisation of the registry port (ADR 019), through the real router
//! of an in-process node with `auth.enabled = true` and a bootstrap admin: the token
//! challenge, the token endpoint (GET with Basic, OAuth2 POST with the password and
//! refresh-token grants), Basic credentials on `/v2/`, grants and their intersection with
//! what is asked, forged and stale tokens, revocation on the next request, anonymous pull,
//! catalog filtering, failed-login limiting, network rules and `X-Forwarded-For`.
//!
//! Every refused request is followed by a check that it changed nothing.

mod common;

use std::net::SocketAddr;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::extract::ConnectInfo;
use base64::Engine;
use berth_node::auth::jwt::{self, Access, Claims, SigningKey, TokenType};
use berth_node::auth::manage::{AuthAdmin, IdentityChange, parse_role_grant, parse_scope_rule};
use berth_node::meta::auth::RepoNetworkRule;
use common::*;
use http::{Method, StatusCode};
use serde_json::Value;
use tokio_util::sync::CancellationToken;

const ADMIN_PASSWORD: &str = "admin-pass-1";

/// A node with auth on, its bootstrap done, and the use cases to change identities.
struct AuthNode {
    t: TestNode,
    admin: AuthAdmin,
    stop: CancellationToken,
}

impl AuthNode {
    async fn start(change: impl FnOnce(&mut berth_node::config::Config)) -> AuthNode {
        let t = TestNode::start_with(|c| {
            c.auth.enabled = Some(true);
            c.auth.bootstrap_admin_password = Some(ADMIN_PASSWORD.to_string());
            change(c);
        })
        .await;
        let node = t.node();
        let admin = AuthAdmin::new(node.auth.clone(), node.registry.cluster().clone());
        let stop = CancellationToken::new();
        let boot = tokio::spawn(admin.clone().bootstrap(stop.clone()));
        tokio::time::timeout(Duration::from_secs(30), boot)
            .await
            .expect("the bootstrap made a key and the admin within 30 s")
            .unwrap();
        let state = node.auth.state();
        assert!(state.signing_key().is_some() && state.identities.contains_key("admin"));
        AuthNode { t, admin, stop }
    }

    async fn stop(self) {
        self.stop.cancel();
        drop(self.admin);
        self.t.stop().await;
    }

    /// `GET /auth/token` with optional Basic credentials and scopes.
    async fn token_get(&self, creds: Option<(&str, &str)>, scopes: &[&str]) -> Resp {
        let mut uri = "/auth/token?service=berth".to_string();
        for s in scopes {
            uri.push_str(&format!("&scope={}", urlencode(s)));
        }
        let b;
        let mut headers = Vec::new();
        if let Some((u, p)) = creds {
            b = basic(u, p);
            headers.push(("authorization", b.as_str()));
        }
        self.t.get_with(&uri, &headers).await
    }

    /// A registry token for `scopes`, asserting the endpoint answered 200.
    async fn token(&self, creds: Option<(&str, &str)>, scopes: &[&str]) -> String {
        let r = self.token_get(creds, scopes).await;
        r.expect(StatusCode::OK);
        let v = r.json();
        assert_eq!(v["token"], v["access_token"]);
        v["token"].as_str().unwrap().to_string()
    }

    async fn send(
        &self,
        method: Method,
        uri: &str,
        auth: &str,
        body: Vec<u8>,
        ct: Option<&str>,
    ) -> Resp {
        let mut headers = vec![("authorization", auth)];
        if let Some(ct) = ct {
            headers.push(("content-type", ct));
        }
        self.t.send(request(method, uri, &headers, body)).await
    }

    /// Pushes a one-layer image as `auth` (monolithic blob uploads); returns the status of
    /// the first refused step, or of the manifest PUT.
    async fn push(&self, auth: &str, repo: &str, tag: &str, seed: &str) -> Resp {
        let config = format!("{{\"seed\":\"{seed}\"}}").into_bytes();
        let layer = format!("layer of {seed}").into_bytes();
        for blob in [&config, &layer] {
            let uri = format!("/v2/{repo}/blobs/uploads/?digest={}", digest_of(blob));
            let r = self
                .send(
                    Method::POST,
                    &uri,
                    auth,
                    blob.to_vec(),
                    Some("application/octet-stream"),
                )
                .await;
            if r.status != StatusCode::CREATED {
                return r;
            }
        }
        let manifest = oci_manifest(&config, &[&layer]);
        self.send(
            Method::PUT,
            &format!("/v2/{repo}/manifests/{tag}"),
            auth,
            bytes_of(&manifest),
            Some(OCI_MANIFEST),
        )
        .await
    }

    /// `POST /auth/token` with an OAuth2 form.
    async fn post_form(&self, form: impl Into<Vec<u8>>) -> Resp {
        let ct = [("content-type", "application/x-www-form-urlencoded")];
        self.t
            .send(request(Method::POST, "/auth/token", &ct, form))
            .await
    }

    async fn get(&self, uri: &str, auth: &str) -> Resp {
        self.send(Method::GET, uri, auth, Vec::new(), None).await
    }

    /// Creates a user with one role (`ROLE:PATTERN`).
    async fn user(&self, name: &str, password: &str, grant: &str) {
        let grant = parse_role_grant(grant).unwrap();
        self.admin
            .create_user(name, password, vec![grant])
            .await
            .unwrap();
    }

    fn admin_basic(&self) -> String {
        basic("admin", ADMIN_PASSWORD)
    }
}

fn basic(user: &str, password: &str) -> String {
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{user}:{password}"))
    )
}

fn bearer(t: &str) -> String {
    format!("Bearer {t}")
}

fn urlencode(s: &str) -> String {
    serde_urlencoded::to_string([("x", s)]).unwrap()[2..].to_string()
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

fn challenge(r: &Resp) -> String {
    r.header("www-authenticate")
        .unwrap_or_else(|| panic!("{}: no challenge", r.what))
        .to_string()
}

/// The repositories of the catalog as the admin sees them.
async fn catalog(n: &AuthNode) -> Vec<String> {
    strings(&n.get("/v2/_catalog", &n.admin_basic()).await.json()["repositories"])
}

#[tokio::test]
async fn a_challenge_then_a_token_pushes_and_pulls() {
    let n = AuthNode::start(|_| {}).await;
    let r = n.t.get("/v2/").await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let c = challenge(&r);
    assert!(
        c.starts_with("Bearer realm=\"http://localhost/auth/token\",service=\"berth\""),
        "{c}"
    );
    let r = n.t.get_with("/v2/", &[("host", "reg.example:5000")]).await;
    assert!(challenge(&r).contains("realm=\"http://reg.example:5000/auth/token\""));
    // A protected endpoint names the scope it needs.
    let r = n.t.get("/v2/team/app/manifests/v1").await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert!(challenge(&r).contains("scope=\"repository:team/app:pull\""));

    // A path that names no repository is refused as such, before any challenge names it.
    let r = n.t.get("/v2/Not-A-Name/manifests/v1").await;
    assert_error(&r, StatusCode::BAD_REQUEST, "NAME_INVALID");

    // docker login: a token with no scope opens /v2/.
    let t = n.token(Some(("admin", ADMIN_PASSWORD)), &[]).await;
    n.get("/v2/", &bearer(&t)).await.expect(StatusCode::OK);

    let t = n
        .token(
            Some(("admin", ADMIN_PASSWORD)),
            &["repository:team/app:pull,push"],
        )
        .await;
    n.push(&bearer(&t), "team/app", "v1", "a")
        .await
        .expect(StatusCode::CREATED);
    let pull = n
        .token(
            Some(("admin", ADMIN_PASSWORD)),
            &["repository:team/app:pull"],
        )
        .await;
    let r = n.get("/v2/team/app/manifests/v1", &bearer(&pull)).await;
    r.expect(StatusCode::OK);
    // The pull-only token cannot push or delete; the refusal names the scope to ask for.
    let r = n.push(&bearer(&pull), "team/app", "v2", "b").await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let c = challenge(&r);
    assert!(
        c.contains("scope=\"repository:team/app:pull,push\"") && c.contains("insufficient_scope"),
        "{c}"
    );
    let r = n
        .send(
            Method::DELETE,
            "/v2/team/app/manifests/v1",
            &bearer(&pull),
            vec![],
            None,
        )
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert!(challenge(&r).contains("scope=\"repository:team/app:delete\""));
    let tags = n.get("/v2/team/app/tags/list", &n.admin_basic()).await;
    assert_eq!(strings(&tags.json()["tags"]), vec!["v1"]);
    n.stop().await;
}

#[tokio::test]
async fn bad_credentials_and_bad_tokens_are_refused() {
    let n = AuthNode::start(|_| {}).await;
    for (u, p) in [("admin", "wrong-password"), ("nobody", ADMIN_PASSWORD)] {
        let r = n.token_get(Some((u, p)), &["repository:a:pull"]).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
        let r = n.get("/v2/", &basic(u, p)).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    n.push(&n.admin_basic(), "a", "v1", "a")
        .await
        .expect(StatusCode::CREATED);
    let good = n
        .token(Some(("admin", ADMIN_PASSWORD)), &["repository:a:pull"])
        .await;
    n.get("/v2/a/manifests/v1", &bearer(&good))
        .await
        .expect(StatusCode::OK);

    let state = n.t.node().auth.state();
    let cluster_key = state.signing_key().unwrap();
    let cluster_key = SigningKey::from_pkcs8(&cluster_key.kid, &cluster_key.pkcs8).unwrap();
    let admin_id = &state.identities["admin"];
    let claims = |exp: u64, aud: &str| Claims {
        iss: aud.to_string(),
        sub: "admin".into(),
        aud: aud.to_string(),
        exp,
        nbf: now_secs() - 10,
        iat: now_secs() - 10,
        jti: "t".into(),
        access: vec![Access {
            kind: "repository".into(),
            name: "a".into(),
            actions: vec!["pull".into(), "push".into()],
        }],
        uid: admin_id.uid,
        sid: admin_id.secrets[0].stamp,
        typ: TokenType::Access,
    };
    let b64 = |v: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(v);
    // The cluster's own key, right claims: accepted (the control for the cases below).
    let control = cluster_key.sign(&claims(now_secs() + 60, "berth"));
    n.get("/v2/a/manifests/v1", &bearer(&control))
        .await
        .expect(StatusCode::OK);
    let parts: Vec<&str> = good.split('.').collect();
    let mut forged_claims = claims(now_secs() + 60, "berth");
    forged_claims.access[0].actions.push("delete".into());
    let forged_payload = format!(
        "{}.{}.{}",
        parts[0],
        b64(&serde_json::to_vec(&forged_claims).unwrap()),
        parts[2]
    );
    let other_key = SigningKey::from_pkcs8(cluster_key.kid(), &jwt::generate_pkcs8()).unwrap();
    let resigned = other_key.sign(&claims(now_secs() + 60, "berth"));
    let alg_none = format!(
        "{}.{}.",
        b64(format!(
            r#"{{"alg":"none","typ":"JWT","kid":"{}"}}"#,
            cluster_key.kid()
        )
        .as_bytes()),
        b64(&serde_json::to_vec(&claims(now_secs() + 60, "berth")).unwrap())
    );
    let expired = cluster_key.sign(&claims(now_secs() - 1, "berth"));
    let too_long = cluster_key.sign(&claims(now_secs() + 3600, "berth"));
    let other_service = cluster_key.sign(&claims(now_secs() + 60, "another-registry"));
    let mut refresh_as_access = claims(now_secs() + 60, "berth");
    refresh_as_access.typ = TokenType::Refresh;
    let refresh_as_access = cluster_key.sign(&refresh_as_access);
    for (what, t) in [
        ("a changed payload", forged_payload),
        ("a token re-signed with another key", resigned),
        ("alg none", alg_none),
        ("an expired token", expired),
        ("a token living longer than the cluster issues", too_long),
        ("a token for another service", other_service),
        ("a refresh token used as an access token", refresh_as_access),
        ("garbage", "not.a.token".to_string()),
    ] {
        let r = n.get("/v2/a/manifests/v1", &bearer(&t)).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}");
        assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
        assert!(challenge(&r).contains("error=\"invalid_token\""), "{what}");
        let r = n
            .send(
                Method::DELETE,
                "/v2/a/manifests/v1",
                &bearer(&t),
                vec![],
                None,
            )
            .await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: delete");
    }
    assert_eq!(
        strings(&n.get("/v2/a/tags/list", &n.admin_basic()).await.json()["tags"]),
        vec!["v1"]
    );
    n.stop().await;
}

#[tokio::test]
async fn a_token_grants_the_intersection_of_asked_and_allowed() {
    let n = AuthNode::start(|_| {}).await;
    n.user("ann", "ann-password", "writer:team-a/**").await;
    n.push(&n.admin_basic(), "team-b/app", "v1", "b")
        .await
        .expect(StatusCode::CREATED);
    // Ann asks for everything on team-b and push on team-a: she gets team-a only.
    let r = n
        .token_get(
            Some(("ann", "ann-password")),
            &[
                "repository:team-a/app:pull,push,delete",
                "repository:team-b/app:pull,push",
            ],
        )
        .await;
    r.expect(StatusCode::OK);
    let token = r.json()["token"].as_str().unwrap().to_string();
    let payload = token.split('.').nth(1).unwrap();
    let claims: Value = serde_json::from_slice(
        &base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(payload)
            .unwrap(),
    )
    .unwrap();
    assert_eq!(
        claims["access"],
        serde_json::json!([{"type": "repository", "name": "team-a/app", "actions": ["pull", "push"]}])
    );
    n.push(&bearer(&token), "team-a/app", "v1", "a")
        .await
        .expect(StatusCode::CREATED);
    // Her token for team-a cannot push to team-b; her password cannot either.
    let before = catalog(&n).await;
    let r = n.push(&bearer(&token), "team-b/app", "evil", "x").await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let r = n
        .push(&basic("ann", "ann-password"), "team-b/app", "evil", "x")
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "DENIED");
    let r = n
        .push(&basic("ann", "ann-password"), "team-c/new", "evil", "x")
        .await;
    assert_error(&r, StatusCode::FORBIDDEN, "DENIED");
    assert_eq!(catalog(&n).await, before);
    assert_eq!(
        strings(
            &n.get("/v2/team-b/app/tags/list", &n.admin_basic())
                .await
                .json()["tags"]
        ),
        vec!["v1"]
    );
    // The catalog lists only what she may read.
    let r = n.get("/v2/_catalog", &basic("ann", "ann-password")).await;
    assert_eq!(strings(&r.json()["repositories"]), vec!["team-a/app"]);
    let admin_list = catalog(&n).await;
    assert_eq!(admin_list, vec!["team-a/app", "team-b/app"]);

    // A machine token bound to a scope map: read on team-b only.
    let rules = [parse_scope_rule("team-b/*:content/read,metadata/read").unwrap()].into();
    n.admin
        .put_scope_map("team-b-read", String::new(), rules, true)
        .await
        .unwrap();
    let (_, pw) = n
        .admin
        .create_token("ci", Some("team-b-read".into()), vec![], None, 1)
        .await
        .unwrap();
    let ci = n
        .token(
            Some(("ci", &pw[0].password)),
            &["repository:team-b/app:pull,push"],
        )
        .await;
    n.get("/v2/team-b/app/manifests/v1", &bearer(&ci))
        .await
        .expect(StatusCode::OK);
    let r = n.push(&bearer(&ci), "team-b/app", "v2", "c").await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    assert_eq!(
        strings(
            &n.get("/v2/team-b/app/tags/list", &n.admin_basic())
                .await
                .json()["tags"]
        ),
        vec!["v1"]
    );
    n.stop().await;
}

#[tokio::test]
async fn revocation_takes_effect_on_the_next_request() {
    let n = AuthNode::start(|_| {}).await;
    n.push(&n.admin_basic(), "r", "v1", "a")
        .await
        .expect(StatusCode::CREATED);
    let rules = [parse_scope_rule("r:content/read").unwrap()].into();
    n.admin
        .put_scope_map("read-r", String::new(), rules, true)
        .await
        .unwrap();
    let (_, pw) = n
        .admin
        .create_token("bot", Some("read-r".into()), vec![], None, 2)
        .await
        .unwrap();
    let scope = ["repository:r:pull"];
    let t1 = n.token(Some(("bot", &pw[0].password)), &scope).await;
    let t2 = n.token(Some(("bot", &pw[1].password)), &scope).await;
    for t in [&t1, &t2] {
        n.get("/v2/r/manifests/v1", &bearer(t))
            .await
            .expect(StatusCode::OK);
    }
    // Regenerating password 1 revokes the tokens issued for it, not those of password 2.
    let (_, new) = n
        .admin
        .update_identity(
            "bot",
            IdentityChange {
                regenerate: Some(1),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let r = n.get("/v2/r/manifests/v1", &bearer(&t1)).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    n.get("/v2/r/manifests/v1", &bearer(&t2))
        .await
        .expect(StatusCode::OK);
    let r = n.token_get(Some(("bot", &pw[0].password)), &scope).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let t3 = n.token(Some(("bot", &new[0].password)), &scope).await;
    // Narrowing the scope map applies to tokens already issued.
    let rules = [parse_scope_rule("other:content/read").unwrap()].into();
    n.admin
        .put_scope_map("read-r", String::new(), rules, false)
        .await
        .unwrap();
    let r = n.get("/v2/r/manifests/v1", &bearer(&t3)).await;
    assert_error(&r, StatusCode::FORBIDDEN, "DENIED");
    let rules = [parse_scope_rule("r:content/read").unwrap()].into();
    n.admin
        .put_scope_map("read-r", String::new(), rules, false)
        .await
        .unwrap();
    n.get("/v2/r/manifests/v1", &bearer(&t3))
        .await
        .expect(StatusCode::OK);
    // Disabling refuses every token and the passwords; enabling again restores them.
    n.admin
        .update_identity(
            "bot",
            IdentityChange {
                enabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    for t in [&t2, &t3] {
        let r = n.get("/v2/r/manifests/v1", &bearer(t)).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    let r = n.token_get(Some(("bot", &new[0].password)), &scope).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    n.admin
        .update_identity(
            "bot",
            IdentityChange {
                enabled: Some(true),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    n.get("/v2/r/manifests/v1", &bearer(&t3))
        .await
        .expect(StatusCode::OK);
    // Deleting, and re-creating the same name, never revives an old token.
    n.admin.delete_identity("bot").await.unwrap();
    n.admin
        .create_token("bot", Some("read-r".into()), vec![], None, 1)
        .await
        .unwrap();
    let r = n.get("/v2/r/manifests/v1", &bearer(&t3)).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    // A user's password change revokes the tokens issued before it.
    n.user("ann", "first-password", "reader:r").await;
    let ta = n.token(Some(("ann", "first-password")), &scope).await;
    n.get("/v2/r/manifests/v1", &bearer(&ta))
        .await
        .expect(StatusCode::OK);
    n.admin
        .update_identity(
            "ann",
            IdentityChange {
                password: Some("second-password".into()),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let r = n.get("/v2/r/manifests/v1", &bearer(&ta)).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let r = n
        .get("/v2/r/manifests/v1", &basic("ann", "first-password"))
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    n.get("/v2/r/manifests/v1", &basic("ann", "second-password"))
        .await
        .expect(StatusCode::OK);
    // An expired token identity is refused.
    n.admin
        .update_identity(
            "ann",
            IdentityChange {
                expiry_ms: Some(Some(1)),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let r = n
        .get("/v2/r/manifests/v1", &basic("ann", "second-password"))
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    // A rotated signing key keeps verifying the tokens it signed; new ones use the new key.
    let before = n.token(Some(("admin", ADMIN_PASSWORD)), &scope).await;
    let kid = n.admin.rotate_key().await.unwrap();
    n.get("/v2/r/manifests/v1", &bearer(&before))
        .await
        .expect(StatusCode::OK);
    let after = n.token(Some(("admin", ADMIN_PASSWORD)), &scope).await;
    assert_eq!(jwt::header_kid(&after).unwrap(), kid);
    assert_ne!(jwt::header_kid(&before).unwrap(), kid);
    n.get("/v2/r/manifests/v1", &bearer(&after))
        .await
        .expect(StatusCode::OK);
    // Dropping the retired key (thought stolen) ends its tokens at once; the key that signs
    // cannot be dropped.
    let old_kid = jwt::header_kid(&before).unwrap();
    assert!(n.admin.drop_key(&kid).await.is_err());
    n.admin.drop_key(&old_kid).await.unwrap();
    let r = n.get("/v2/r/manifests/v1", &bearer(&before)).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    n.get("/v2/r/manifests/v1", &bearer(&after))
        .await
        .expect(StatusCode::OK);
    n.stop().await;
}

#[tokio::test]
async fn anonymous_pull_opens_only_the_patterns_set() {
    let n = AuthNode::start(|_| {}).await;
    n.push(&n.admin_basic(), "public/app", "v1", "a")
        .await
        .expect(StatusCode::CREATED);
    n.push(&n.admin_basic(), "private/app", "v1", "b")
        .await
        .expect(StatusCode::CREATED);
    let anon = n.token(None, &["repository:public/app:pull"]).await;
    let r = n.get("/v2/public/app/manifests/v1", &bearer(&anon)).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let r = n.t.get("/v2/public/app/manifests/v1").await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    n.admin
        .update_settings(|s| {
            s.anonymous_pull = vec!["public/**".into()];
            Ok(())
        })
        .await
        .unwrap();
    n.t.get("/v2/public/app/manifests/v1")
        .await
        .expect(StatusCode::OK);
    let anon = n
        .token(
            None,
            &[
                "repository:public/app:pull,push",
                "repository:private/app:pull",
            ],
        )
        .await;
    n.get("/v2/public/app/manifests/v1", &bearer(&anon))
        .await
        .expect(StatusCode::OK);
    for uri in ["/v2/private/app/manifests/v1", "/v2/private/app/tags/list"] {
        let r = n.get(uri, &bearer(&anon)).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
        let r = n.t.get(uri).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    let r = n.push(&bearer(&anon), "public/app", "v2", "c").await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    // Anonymous callers get no refresh token and no catalog.
    let r =
        n.t.get("/auth/token?service=berth&offline_token=true")
            .await;
    assert!(r.json().get("refresh_token").is_none());
    let r = n.get("/v2/_catalog", &bearer(&anon)).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    n.stop().await;
}

#[tokio::test]
async fn failed_logins_are_limited_per_name_and_address() {
    let n = AuthNode::start(|c| {
        c.auth.max_failed_logins = 3;
        c.auth.failed_login_window_secs = 600;
    })
    .await;
    for _ in 0..3 {
        let r = n.token_get(Some(("admin", "nope-nope")), &[]).await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    }
    // The name is now blocked, even with the right password, on both endpoints.
    let r = n.token_get(Some(("admin", ADMIN_PASSWORD)), &[]).await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
    let wait: u64 = r.header("retry-after").unwrap().parse().unwrap();
    assert!((1..=600).contains(&wait), "{wait}");
    let r = n.get("/v2/", &n.admin_basic()).await;
    assert_error(&r, StatusCode::TOO_MANY_REQUESTS, "TOOMANYREQUESTS");
    n.stop().await;
}

#[tokio::test]
async fn concurrent_guesses_cannot_outrun_the_limit() {
    let n = AuthNode::start(|c| {
        c.auth.max_failed_logins = 3;
        c.auth.failed_login_window_secs = 600;
    })
    .await;
    let tries: Vec<_> = (0..16)
        .map(|i| {
            let client = n.t.client.clone();
            tokio::spawn(async move {
                let auth = basic("admin", &format!("guess-{i}"));
                client
                    .send(request(
                        Method::GET,
                        "/auth/token?service=berth",
                        &[("authorization", &auth)],
                        Vec::new(),
                    ))
                    .await
                    .status
            })
        })
        .collect();
    let mut checked = 0;
    for t in tries {
        match t.await.unwrap() {
            StatusCode::UNAUTHORIZED => checked += 1,
            StatusCode::TOO_MANY_REQUESTS => {}
            other => panic!("{other}"),
        }
    }
    assert_eq!(checked, 3, "passwords checked beyond the limit of 3");
    n.stop().await;
}

#[tokio::test]
async fn the_bootstrap_admin_is_made_once() {
    let n = AuthNode::start(|_| {}).await;
    n.user("root", "root-password", "admin:**").await;
    n.admin.delete_identity("admin").await.unwrap();
    // A node restarting with the bootstrap password does not bring the admin back.
    let again = n.admin.clone().bootstrap(n.stop.clone());
    tokio::time::timeout(Duration::from_secs(30), again)
        .await
        .unwrap();
    assert!(!n.t.node().auth.state().identities.contains_key("admin"));
    let r = n.token_get(Some(("admin", ADMIN_PASSWORD)), &[]).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    n.stop().await;
}

#[tokio::test]
async fn refresh_tokens_and_the_oauth_form() {
    let n = AuthNode::start(|_| {}).await;
    let form = "grant_type=password&username=admin&password=admin-pass-1&service=berth\
                &client_id=docker&access_type=offline&scope=repository%3Aa%3Apull%2Cpush";
    let r = n.post_form(form).await;
    r.expect(StatusCode::OK);
    let v = r.json();
    assert_eq!(v["scope"], "repository:a:pull,push");
    let refresh = v["refresh_token"].as_str().unwrap().to_string();
    n.push(&bearer(v["access_token"].as_str().unwrap()), "a", "v1", "a")
        .await
        .expect(StatusCode::CREATED);
    // The refresh token is no access token, and buys new access tokens.
    let r = n.get("/v2/a/manifests/v1", &bearer(&refresh)).await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    let form = format!(
        "grant_type=refresh_token&refresh_token={refresh}&service=berth&scope=repository%3Aa%3Apull"
    );
    let r = n.post_form(form.clone()).await;
    r.expect(StatusCode::OK);
    let t = r.json()["access_token"].as_str().unwrap().to_string();
    n.get("/v2/a/manifests/v1", &bearer(&t))
        .await
        .expect(StatusCode::OK);
    // GET with offline_token also returns one; a wrong password on the form is refused.
    let r =
        n.t.get_with(
            "/auth/token?service=berth&offline_token=true&client_id=x",
            &[("authorization", &n.admin_basic())],
        )
        .await;
    assert!(r.json()["refresh_token"].is_string());
    let r = n
        .post_form("grant_type=password&username=admin&password=bad&service=berth")
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    // Disabling the user kills its refresh token.
    n.user("ann", "ann-password", "reader:a").await;
    let r = n
        .post_form("grant_type=password&username=ann&password=ann-password&access_type=offline")
        .await;
    let ann_refresh = r.json()["refresh_token"].as_str().unwrap().to_string();
    n.admin
        .update_identity(
            "ann",
            IdentityChange {
                enabled: Some(false),
                ..Default::default()
            },
        )
        .await
        .unwrap();
    let r = n
        .post_form(format!(
            "grant_type=refresh_token&refresh_token={ann_refresh}"
        ))
        .await;
    assert_error(&r, StatusCode::UNAUTHORIZED, "UNAUTHORIZED");
    n.stop().await;
}

#[tokio::test]
async fn a_mount_from_a_repository_the_caller_cannot_read_becomes_an_upload() {
    let n = AuthNode::start(|_| {}).await;
    n.push(&n.admin_basic(), "secret/app", "v1", "s")
        .await
        .expect(StatusCode::CREATED);
    n.user("ann", "ann-password", "writer:ann/**").await;
    let layer = digest_of(b"layer of s");
    let uri = format!("/v2/ann/app/blobs/uploads/?mount={layer}&from=secret/app");
    let r = n
        .send(
            Method::POST,
            &uri,
            &basic("ann", "ann-password"),
            vec![],
            None,
        )
        .await;
    r.expect(StatusCode::ACCEPTED);
    let r = n
        .get(
            &format!("/v2/ann/app/blobs/{layer}"),
            &basic("ann", "ann-password"),
        )
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "BLOB_UNKNOWN");
    // The admin may read the source: the same mount links the blob.
    let r = n
        .send(Method::POST, &uri, &n.admin_basic(), vec![], None)
        .await;
    r.expect(StatusCode::CREATED);
    n.stop().await;
}

/// Sends `GET /v2/` as from `peer`, with an optional `X-Forwarded-For`.
async fn from_addr(n: &AuthNode, peer: &str, forwarded: Option<&str>) -> Resp {
    let auth = n.admin_basic();
    let mut headers = vec![("authorization", auth.as_str())];
    if let Some(f) = forwarded {
        headers.push(("x-forwarded-for", f));
    }
    let mut req = request(Method::GET, "/v2/", &headers, Vec::new());
    let addr = SocketAddr::new(peer.parse().unwrap(), 40000);
    req.extensions_mut().insert(ConnectInfo(addr));
    n.t.send(req).await
}

#[tokio::test]
async fn network_rules_and_forwarded_addresses() {
    let n = AuthNode::start(|c| c.auth.trusted_proxies = vec!["10.9.0.0/16".into()]).await;
    from_addr(&n, "192.0.2.7", None)
        .await
        .expect(StatusCode::OK);
    n.admin
        .update_settings(|s| {
            s.network.default_allow = false;
            s.network.allow = vec!["198.51.100.0/24".into()];
            s.network.repositories.insert(
                "open/**".into(),
                RepoNetworkRule {
                    default_allow: true,
                    allow: vec![],
                },
            );
            Ok(())
        })
        .await
        .unwrap();
    let r = from_addr(&n, "192.0.2.7", None).await;
    assert_error(&r, StatusCode::FORBIDDEN, "DENIED");
    from_addr(&n, "198.51.100.9", None)
        .await
        .expect(StatusCode::OK);
    // A forwarded address counts only from a trusted proxy, and only its rightmost
    // untrusted hop.
    from_addr(&n, "10.9.1.1", Some("192.0.2.1, 198.51.100.9"))
        .await
        .expect(StatusCode::OK);
    let r = from_addr(&n, "10.9.1.1", Some("198.51.100.9, 192.0.2.1")).await;
    assert_error(&r, StatusCode::FORBIDDEN, "DENIED");
    let r = from_addr(&n, "192.0.2.7", Some("198.51.100.9")).await;
    assert_error(&r, StatusCode::FORBIDDEN, "DENIED");
    // A hop that is no address ends the walk at the last trusted one (here the proxy).
    let r = from_addr(&n, "10.9.1.1", Some("198.51.100.9, unknown")).await;
    assert_error(&r, StatusCode::FORBIDDEN, "DENIED");
    // An IPv4 client of a dual-stack listener is matched as IPv4.
    from_addr(&n, "::ffff:198.51.100.9", None)
        .await
        .expect(StatusCode::OK);
    // The token endpoint is behind the same rules.
    let mut req = request(Method::GET, "/auth/token?service=berth", &[], Vec::new());
    req.extensions_mut()
        .insert(ConnectInfo("192.0.2.7:1".parse::<SocketAddr>().unwrap()));
    assert_error(&n.t.send(req).await, StatusCode::FORBIDDEN, "DENIED");
    // A repository rule replaces the cluster's for its repositories.
    let mut req = request(
        Method::GET,
        "/v2/open/x/tags/list",
        &[("authorization", &n.admin_basic())],
        Vec::new(),
    );
    req.extensions_mut()
        .insert(ConnectInfo("192.0.2.7:1".parse::<SocketAddr>().unwrap()));
    assert_error(&n.t.send(req).await, StatusCode::NOT_FOUND, "NAME_UNKNOWN");
    // Public access off: only the allow rules get in, whatever the defaults.
    n.admin
        .update_settings(|s| {
            s.network.public_access = false;
            Ok(())
        })
        .await
        .unwrap();
    let mut req = request(
        Method::GET,
        "/v2/open/x/tags/list",
        &[("authorization", &n.admin_basic())],
        Vec::new(),
    );
    req.extensions_mut()
        .insert(ConnectInfo("192.0.2.7:1".parse::<SocketAddr>().unwrap()));
    assert_error(&n.t.send(req).await, StatusCode::FORBIDDEN, "DENIED");
    from_addr(&n, "198.51.100.9", None)
        .await
        .expect(StatusCode::OK);
    n.stop().await;
}
