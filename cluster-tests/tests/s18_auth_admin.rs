//! Scenario 18 — users, tokens and scope maps through `clusterctl` (issue 10), on three
//! nodes with auth on, a bootstrap admin password and no cluster mTLS:
//!
//! 1. the admin service refuses `clusterctl` without credentials and with a wrong password
//!    (UNAUTHENTICATED), and a user or token that is not an admin (PERMISSION_DENIED); with
//!    the admin's password, or a registry token of the admin as a bearer token, it works, and
//!    `status` at a follower reaches every member (the fan-out carries the credentials);
//! 2. the admin creates a scope map, a token bound to it and a user, each at another node;
//!    the token's password obtains a registry token at `/auth/token` of every node, pushes
//!    within its scope map at one node and pulls at the others; a push outside it is refused;
//! 3. `scope-maps delete` of the map in use is refused, and so is `users delete` of the last
//!    admin; `auth rotate-key` leaves earlier registry tokens working and `auth keys` shows
//!    no private key; `auth anonymous-pull set|clear` opens and closes a repository to
//!    callers without credentials at every node;
//! 4. `tokens update --regenerate 1` stops the registry tokens issued for password1 at every
//!    node, those for password2 keep working;
//! 5. `tokens update --disable` stops the registry tokens issued before at every node.
//!
//! "At every node" is polled (bounded) until the node applied the change, then asserted.

use std::time::Duration;

use berth_testkit::oci::{MANIFEST_ACCEPT, OCI_MANIFEST};
use berth_testkit::sha256_digest;
use cluster_tests::clusterctl::{self, CtlOutput};
use cluster_tests::{Cluster, ClusterBuilder, Image, random_layer, wait_until};

const ADMIN_PASSWORD: &str = "s18-admin-password";
const CTL_TIMEOUT: Duration = Duration::from_secs(30);
/// How long a node may take to apply a change made at another.
const APPLIED_WITHIN: Duration = Duration::from_secs(10);
const REPO: &str = "s18/app";
const ADMIN: [(&str, &str); 2] = [
    ("CLUSTERCTL_USER", "admin"),
    ("CLUSTERCTL_PASSWORD", ADMIN_PASSWORD),
];

/// `clusterctl` at node `at` with `env` and `stdin`.
fn ctl(
    c: &Cluster,
    at: u64,
    args: &[&str],
    env: &[(&str, &str)],
    stdin: Option<&str>,
) -> CtlOutput {
    clusterctl::run_with(&c.node(at).cluster_addr(), args, env, stdin, CTL_TIMEOUT)
}

/// `clusterctl --json` at node `at` as the admin; panics unless it succeeds.
fn must_ctl(c: &Cluster, at: u64, args: &[&str]) -> serde_json::Value {
    let mut all = args.to_vec();
    all.push("--json");
    ctl(c, at, &all, &ADMIN, None).assert_success().json()
}

/// Asserts a refusal with this gRPC code (in the `--json` error line).
#[track_caller]
fn must_refuse(out: &CtlOutput, code: &str) {
    assert_eq!(out.status.code(), Some(1), "{out:?}");
    assert_eq!(out.json()["code"], code, "{out:?}");
}

/// A token for pull and push on `repo`, polled until node `id` knows the identity.
fn must_token(c: &Cluster, id: u64, name: &str, password: &str, repo: &str) -> String {
    let scope = format!("repository:{repo}:pull,push");
    wait_until(
        &format!("a registry token at node {id}"),
        APPLIED_WITHIN,
        || c.registry_token(id, name, password, &scope),
    )
}

/// A token of `s18-ci` with `password` for pull and push on [`REPO`] from each node, in
/// node order.
fn tokens_everywhere(c: &Cluster, password: &str) -> Vec<String> {
    c.ids()
        .iter()
        .map(|&id| must_token(c, id, "s18-ci", password, REPO))
        .collect()
}

fn bearer(token: &str) -> String {
    format!("Bearer {token}")
}

/// Pushes `image` (blobs with `POST ?digest=`, then the manifest) at node `id`; the status of
/// the first step that did not answer 201.
fn push(c: &Cluster, id: u64, token: &str, image: &Image) -> Result<(), u16> {
    let client = c.client(id);
    let auth = bearer(token);
    for blob in std::iter::once(&image.config).chain(&image.layers) {
        let path = format!(
            "/v2/{}/blobs/uploads/?digest={}",
            image.repo,
            sha256_digest(blob)
        );
        let headers = [
            ("Authorization", auth.as_str()),
            ("Content-Type", "application/octet-stream"),
        ];
        let r = client
            .request("POST", &path, &headers, Some(blob))
            .map_err(|_| 0u16)?;
        if r.status != 201 {
            return Err(r.status);
        }
    }
    let path = format!("/v2/{}/manifests/{}", image.repo, image.tag);
    let headers = [
        ("Authorization", auth.as_str()),
        ("Content-Type", OCI_MANIFEST),
    ];
    let r = client
        .request("PUT", &path, &headers, Some(&image.manifest))
        .map_err(|_| 0u16)?;
    if r.status == 201 {
        Ok(())
    } else {
        Err(r.status)
    }
}

/// The status of a manifest GET of `image` at node `id` with `token`; on 200 also checks the
/// bytes and that the layers are served.
fn pull_status(c: &Cluster, id: u64, token: &str, image: &Image) -> Result<u16, String> {
    let client = c.client(id);
    let auth = bearer(token);
    let path = format!("/v2/{}/manifests/{}", image.repo, image.tag);
    let r = client.request(
        "GET",
        &path,
        &[("Authorization", &auth), ("Accept", MANIFEST_ACCEPT)],
        None,
    )?;
    if r.status != 200 {
        return Ok(r.status);
    }
    if r.body != image.manifest {
        return Err(format!("node {id}: another manifest"));
    }
    for layer in &image.layers {
        let path = format!("/v2/{}/blobs/{}", image.repo, sha256_digest(layer));
        let b = client.request("GET", &path, &[("Authorization", &auth)], None)?;
        if b.status != 200 || &b.body != layer {
            return Err(format!("node {id}: layer GET answered {}", b.status));
        }
    }
    Ok(200)
}

/// Polls until node `id` answers a pull of `image` with `token` with `want`.
fn wait_pull(c: &Cluster, id: u64, token: &str, image: &Image, want: u16) {
    wait_until(
        &format!("node {id} to answer the pull {want}"),
        APPLIED_WITHIN,
        || match pull_status(c, id, token, image)? {
            s if s == want => Ok(()),
            s => Err(format!("node {id} answered {s}")),
        },
    );
}

/// Polls until node `id` answers a manifest GET of `image` without credentials with `want`.
fn wait_anonymous(c: &Cluster, id: u64, image: &Image, want: u16) {
    let path = format!("/v2/{}/manifests/{}", image.repo, image.tag);
    let what = format!("node {id} to answer an anonymous pull {want}");
    wait_until(&what, APPLIED_WITHIN, || {
        let r = c
            .client(id)
            .request("GET", &path, &[("Accept", MANIFEST_ACCEPT)], None)?;
        if r.status == want {
            Ok(())
        } else {
            Err(format!("node {id} answered {}", r.status))
        }
    });
}

fn passwords(v: &serde_json::Value) -> Vec<String> {
    v["passwords"]
        .as_array()
        .map(|a| {
            a.iter()
                .map(|p| p["password"].as_str().unwrap_or_default().to_string())
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_admin_service_needs_an_admin_and_manages_tokens_cluster_wide() {
    let c = ClusterBuilder::new()
        .nodes(3)
        .auth(ADMIN_PASSWORD)
        // Refused logins below must not lock the admin out of the harness's calls.
        .env("BERTH_AUTH__MAX_FAILED_LOGINS", "100")
        .build();
    let follower = c.followers()[0];

    // 1. Who may call.
    must_refuse(
        &ctl(&c, follower, &["status", "--json"], &[], None),
        "UNAUTHENTICATED",
    );
    let wrong = [
        ("CLUSTERCTL_USER", "admin"),
        ("CLUSTERCTL_PASSWORD", "not-the-password"),
    ];
    must_refuse(
        &ctl(&c, follower, &["status", "--json"], &wrong, None),
        "UNAUTHENTICATED",
    );
    let status = must_ctl(&c, follower, &["status"]);
    let members = status["members"].as_array().expect("members");
    assert_eq!(members.len(), 3);
    for m in members {
        assert_eq!(m["reachable"], true, "{m}");
    }

    // A registry token of the admin issued for the admin service works as a bearer
    // credential, at another node; the admin's token for anything else does not.
    let pull_token = c
        .registry_token(1, "admin", ADMIN_PASSWORD, "")
        .expect("admin token");
    let as_bearer = [("CLUSTERCTL_TOKEN", pull_token.as_str())];
    must_refuse(
        &ctl(&c, 3, &["roles", "list", "--json"], &as_bearer, None),
        "PERMISSION_DENIED",
    );
    let admin_token = c
        .registry_token(1, "admin", ADMIN_PASSWORD, "registry:admin:*")
        .expect("admin token");
    let as_bearer = [("CLUSTERCTL_TOKEN", admin_token.as_str())];
    ctl(&c, 3, &["roles", "list", "--json"], &as_bearer, None).assert_success();

    // 2. A scope map, a token bound to it and a user, each made at another node.
    must_ctl(
        &c,
        1,
        &[
            "scope-maps",
            "create",
            "s18-push",
            "--rule",
            "s18/app:content/read,content/write,metadata/read",
            "--description",
            "s18",
        ],
    );
    let created = must_ctl(
        &c,
        2,
        &[
            "tokens",
            "create",
            "s18-ci",
            "--scope-map",
            "s18-push",
            "--passwords",
            "2",
        ],
    );
    let [password1, password2] =
        <[String; 2]>::try_from(passwords(&created)).expect("two passwords");
    let user = ctl(
        &c,
        3,
        &[
            "--password-stdin",
            "users",
            "create",
            "s18-reader",
            "--role",
            "reader:s18/**",
            "--json",
        ],
        &ADMIN,
        Some("s18-reader-password\n"),
    );
    assert_eq!(user.assert_success().json()["identity"]["admin"], false);
    // A user that is not an admin is refused by the admin service, at every node.
    let reader = [
        ("CLUSTERCTL_USER", "s18-reader"),
        ("CLUSTERCTL_PASSWORD", "s18-reader-password"),
    ];
    for id in c.ids() {
        let out = wait_until(
            &format!("node {id} to know s18-reader"),
            APPLIED_WITHIN,
            || {
                let out = ctl(&c, id, &["roles", "list", "--json"], &reader, None);
                match out.json()["code"].as_str() {
                    Some("UNAUTHENTICATED") => Err(format!("node {id}: not applied yet")),
                    _ => Ok(out),
                }
            },
        );
        must_refuse(&out, "PERMISSION_DENIED");
    }
    // The token logs in at every node and may push and pull within its scope map only; its
    // registry tokens are no admin credential.
    let ci_token = must_token(&c, 3, "s18-ci", &password1, REPO);
    let not_admin = [("CLUSTERCTL_TOKEN", ci_token.as_str())];
    must_refuse(
        &ctl(&c, 3, &["roles", "list", "--json"], &not_admin, None),
        "PERMISSION_DENIED",
    );
    let tokens1 = tokens_everywhere(&c, &password1);
    let image = Image::new(REPO, "v1", &[random_layer(32 * 1024)]);
    push(&c, 1, &tokens1[0], &image).expect("a push within the scope map");
    for id in c.ids() {
        wait_pull(&c, id, &tokens1[id as usize - 1], &image, 200);
    }
    let outside = Image::new("s18/other", "v1", &[random_layer(1024)]);
    let other_token = must_token(&c, 2, "s18-ci", &password1, "s18/other");
    assert_eq!(
        push(&c, 2, &other_token, &outside),
        Err(401),
        "a push outside the scope map"
    );

    // 3. A scope map in use cannot go.
    let out = ctl(
        &c,
        2,
        &["scope-maps", "delete", "s18-push", "--json"],
        &ADMIN,
        None,
    );
    must_refuse(&out, "FAILED_PRECONDITION");
    assert!(out.stderr.contains("s18-ci"), "{out:?}");
    // Nor can the last admin.
    let out = ctl(&c, 3, &["users", "delete", "admin", "--json"], &ADMIN, None);
    must_refuse(&out, "FAILED_PRECONDITION");

    // Keys and settings: a rotated key leaves earlier registry tokens working; anonymous pull
    // opens a repository to callers without credentials at every node, and closes it again.
    let rotated = must_ctl(&c, 2, &["auth", "rotate-key"]);
    let keys = must_ctl(&c, 3, &["auth", "keys"]);
    assert_eq!(keys["keys"].as_array().map(Vec::len), Some(2), "{keys}");
    assert_eq!(keys["signing_kid"], rotated["signing_kid"]);
    for key in keys["keys"].as_array().into_iter().flatten() {
        let fields: Vec<&String> = key.as_object().expect("a key").keys().collect();
        assert_eq!(
            fields,
            ["created_ms", "kid", "retired_ms"],
            "never the private key"
        );
    }
    assert_eq!(pull_status(&c, 3, &tokens1[2], &image), Ok(200));
    must_ctl(&c, 1, &["auth", "anonymous-pull", "set", "s18/app"]);
    for id in c.ids() {
        wait_anonymous(&c, id, &image, 200);
    }
    must_ctl(&c, 2, &["auth", "anonymous-pull", "clear"]);
    for id in c.ids() {
        wait_anonymous(&c, id, &image, 401);
    }

    // 4. Regenerating password1 stops what was issued for it, not what was for password2.
    let tokens2 = tokens_everywhere(&c, &password2);
    let regenerated = must_ctl(&c, 3, &["tokens", "update", "s18-ci", "--regenerate", "1"]);
    let new1 = passwords(&regenerated);
    assert_eq!(new1.len(), 1);
    assert_ne!(new1[0], password1);
    for id in c.ids() {
        let i = id as usize - 1;
        wait_pull(&c, id, &tokens1[i], &image, 401);
        assert_eq!(
            pull_status(&c, id, &tokens2[i], &image),
            Ok(200),
            "password2's token at node {id}"
        );
        assert!(
            c.registry_token(id, "s18-ci", &password1, "").is_err(),
            "the old password1 at node {id}"
        );
    }
    let fresh = must_token(&c, 1, "s18-ci", &new1[0], REPO);
    assert_eq!(pull_status(&c, 1, &fresh, &image), Ok(200));

    // 5. Disabling the token stops every registry token issued before, at every node.
    must_ctl(&c, 1, &["tokens", "update", "s18-ci", "--disable"]);
    for id in c.ids() {
        wait_pull(&c, id, &tokens2[id as usize - 1], &image, 401);
        assert_eq!(
            pull_status(&c, id, &fresh, &image),
            Ok(401),
            "the fresh token at node {id}"
        );
    }
    let shown = must_ctl(&c, 2, &["tokens", "show", "s18-ci"]);
    assert_eq!(shown["enabled"], false);
    assert!(
        !shown.to_string().contains(&new1[0]),
        "show never prints a password"
    );
}
