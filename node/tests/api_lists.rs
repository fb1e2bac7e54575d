//! Lists: `GET /v2/<name>/tags/list` and `GET /v2/_catalog`, with `n`, `last` and `Link`.

mod common;

use common::*;
use http::StatusCode;

/// Tags pushed in a scrambled order; their lexical (byte) order is `SORTED_TAGS`.
const TAGS: [&str; 8] = ["v2", "latest", "10", "1.0", "V1", "_x", "9", "a-b"];
const SORTED_TAGS: [&str; 8] = ["1.0", "10", "9", "V1", "_x", "a-b", "latest", "v2"];

/// A repository with every tag of `TAGS` (all on one manifest).
async fn tagged(t: &Client, repo: &str) {
    let (_, bytes) = t.push_image(repo, Some(TAGS[0]), "x").await;
    let m = serde_json::from_slice(&bytes).unwrap();
    for tag in &TAGS[1..] {
        t.push_manifest(repo, tag, &m).await;
    }
}

/// The `Link` header of a list page, parsed: (path, last, n). Asserts its exact shape.
#[track_caller]
fn next_link(r: &Resp) -> Option<(String, String, String)> {
    let link = r.header("link")?;
    let inner = link
        .strip_prefix('<')
        .and_then(|l| l.strip_suffix(">; rel=\"next\""))
        .unwrap_or_else(|| panic!("{}: malformed Link {link:?}", r.what));
    let (path, query) = inner.split_once('?').expect("Link has a query");
    let q: Vec<(String, String)> = serde_urlencoded::from_str(query).unwrap();
    let get = |k: &str| {
        q.iter()
            .find(|(key, _)| key == k)
            .map(|(_, v)| v.clone())
            .unwrap_or_else(|| panic!("{link}: no {k}"))
    };
    Some((path.to_string(), get("last"), get("n")))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_are_in_lexical_order() {
    let t = TestNode::start().await;
    tagged(&t, "r").await;
    let r = t.get("/v2/r/tags/list").await;
    r.expect(StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("link"), None, "no page was asked for");
    let v = r.json();
    assert_eq!(v["name"], "r");
    assert_eq!(strings(&v["tags"]), SORTED_TAGS);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_of_a_repository_with_no_tags_is_an_empty_list() {
    let t = TestNode::start().await;
    t.push_blob("only/blobs", b"x").await;
    let r = t.get("/v2/only/blobs/tags/list").await;
    r.expect(StatusCode::OK);
    assert_eq!(
        r.json(),
        serde_json::json!({ "name": "only/blobs", "tags": [] })
    );
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_n_and_last_with_link_exactly_when_more_follow() {
    let t = TestNode::start().await;
    tagged(&t, "a/b").await;
    let page = |n: Option<usize>, last: Option<&str>| {
        let mut q = Vec::new();
        if let Some(n) = n {
            q.push(format!("n={n}"));
        }
        if let Some(l) = last {
            q.push(format!("last={l}"));
        }
        format!("/v2/a/b/tags/list?{}", q.join("&"))
    };
    let tags = |r: &Resp| strings(&r.json()["tags"]);

    // First page of 3: more follow.
    let r = t.get(&page(Some(3), None)).await;
    r.expect(StatusCode::OK);
    assert_eq!(tags(&r), &SORTED_TAGS[..3]);
    assert_eq!(
        r.header("link"),
        Some("</v2/a/b/tags/list?last=9&n=3>; rel=\"next\"")
    );

    // Following the Links visits every tag exactly once, in order.
    let mut seen = Vec::new();
    let mut uri = page(Some(3), None);
    let mut pages = 0;
    loop {
        let r = t.get(&uri).await;
        r.expect(StatusCode::OK);
        let got = tags(&r);
        assert!(got.len() <= 3);
        seen.extend(got.clone());
        pages += 1;
        match next_link(&r) {
            Some((path, last, n)) => {
                assert_eq!(path, "/v2/a/b/tags/list");
                assert_eq!(n, "3");
                assert_eq!(&last, got.last().unwrap());
                uri = r.header("link").unwrap()[1..]
                    .split('>')
                    .next()
                    .unwrap()
                    .to_string();
            }
            None => break,
        }
        assert!(pages < 10, "pagination does not end");
    }
    assert_eq!(seen, SORTED_TAGS);
    assert_eq!(pages, 3);

    // Exactly the number left: no Link.
    let r = t.get(&page(Some(2), Some("a-b"))).await;
    assert_eq!(tags(&r), ["latest", "v2"]);
    assert_eq!(r.header("link"), None);
    // More than there are: all of them, no Link.
    let r = t.get(&page(Some(100), None)).await;
    assert_eq!(tags(&r), SORTED_TAGS);
    assert_eq!(r.header("link"), None);
    // n equal to the total: no Link.
    let r = t.get(&page(Some(SORTED_TAGS.len()), None)).await;
    assert_eq!(tags(&r), SORTED_TAGS);
    assert_eq!(r.header("link"), None);
    // n = 0: empty, and no Link.
    let r = t.get(&page(Some(0), None)).await;
    r.expect(StatusCode::OK);
    assert_eq!(tags(&r), Vec::<String>::new());
    assert_eq!(r.header("link"), None);
    // last alone: everything after it, no Link.
    let r = t.get(&page(None, Some("V1"))).await;
    assert_eq!(tags(&r), &SORTED_TAGS[4..]);
    assert_eq!(r.header("link"), None);
    // last that is not a tag: everything lexically after it.
    let r = t.get(&page(Some(2), Some("b"))).await;
    assert_eq!(tags(&r), ["latest", "v2"]);
    assert_eq!(r.header("link"), None);
    // last past the end: empty.
    let r = t.get(&page(Some(2), Some("zzz"))).await;
    assert_eq!(tags(&r), Vec::<String>::new());
    assert_eq!(r.header("link"), None);
    // Empty parameters mean "not given".
    let r = t.get("/v2/a/b/tags/list?n=&last=").await;
    assert_eq!(tags(&r), SORTED_TAGS);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_of_unknown_repository_is_name_unknown() {
    let t = TestNode::start().await;
    t.push_image("known", Some("v1"), "1").await;
    for repo in ["unknown", "known/sub", "kno"] {
        let r = t.get(&format!("/v2/{repo}/tags/list")).await;
        assert_error(&r, StatusCode::NOT_FOUND, "NAME_UNKNOWN");
        assert_eq!(r.json()["errors"][0]["detail"]["name"], repo);
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_n_is_400() {
    let t = TestNode::start().await;
    t.push_image("r", Some("v1"), "1").await;
    for n in ["abc", "-1", "1.5", "99999999999999999999999", "0x10"] {
        for uri in [
            format!("/v2/r/tags/list?n={n}"),
            format!("/v2/_catalog?n={n}"),
        ] {
            let r = t.get(&uri).await;
            r.expect(StatusCode::BAD_REQUEST);
            assert_eq!(error_code(&r), "PAGINATION_NUMBER_INVALID", "{uri}");
        }
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tags_list_with_invalid_name_is_name_invalid() {
    let t = TestNode::start().await;
    for name in ["UPPER", "a//b", "a/../b", "a_", "-a"] {
        let r = t.get(&format!("/v2/{name}/tags/list")).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "NAME_INVALID");
    }
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn catalog_is_lexical_and_pages_with_link() {
    let t = TestNode::start().await;
    assert_eq!(t.catalog().await, Vec::<String>::new(), "empty registry");
    // Created by a blob push, a manifest push, and a mount.
    let repos = ["zeta", "a/b", "a", "a-b", "a.b", "a_b", "m/n/o"];
    for repo in &repos[..6] {
        t.push_blob(repo, repo.as_bytes()).await;
    }
    let d = digest_of(b"a");
    t.post(
        &format!("/v2/m/n/o/blobs/uploads/?mount={d}&from=a"),
        Vec::new(),
    )
    .await
    .expect(StatusCode::CREATED);
    let sorted = ["a", "a-b", "a.b", "a/b", "a_b", "m/n/o", "zeta"];
    let r = t.get("/v2/_catalog").await;
    r.expect(StatusCode::OK);
    assert_eq!(r.header("content-type"), Some("application/json"));
    assert_eq!(r.header("link"), None);
    assert_eq!(strings(&r.json()["repositories"]), sorted);

    let r = t.get("/v2/_catalog?n=2").await;
    assert_eq!(strings(&r.json()["repositories"]), ["a", "a-b"]);
    assert_eq!(
        r.header("link"),
        Some("</v2/_catalog?last=a-b&n=2>; rel=\"next\"")
    );
    // A `last` with a slash round-trips through the Link.
    let r = t.get("/v2/_catalog?n=2&last=a-b").await;
    assert_eq!(strings(&r.json()["repositories"]), ["a.b", "a/b"]);
    let (path, last, n) = next_link(&r).expect("more follow");
    assert_eq!(
        (path.as_str(), last.as_str(), n.as_str()),
        ("/v2/_catalog", "a/b", "2")
    );
    let next = r.header("link").unwrap()[1..]
        .split('>')
        .next()
        .unwrap()
        .to_string();
    let r = t.get(&next).await;
    assert_eq!(strings(&r.json()["repositories"]), ["a_b", "m/n/o"]);
    // Following every Link visits every repository once.
    let mut seen = Vec::new();
    let mut uri = "/v2/_catalog?n=3".to_string();
    loop {
        let r = t.get(&uri).await;
        r.expect(StatusCode::OK);
        seen.extend(strings(&r.json()["repositories"]));
        match r.header("link") {
            Some(l) => uri = l[1..].split('>').next().unwrap().to_string(),
            None => break,
        }
        assert!(seen.len() <= sorted.len(), "pagination does not end");
    }
    assert_eq!(seen, sorted);
    // Edges: n = 0, n = total, last alone, last past the end.
    let r = t.get("/v2/_catalog?n=0").await;
    assert_eq!(strings(&r.json()["repositories"]), Vec::<String>::new());
    assert_eq!(r.header("link"), None);
    let r = t.get("/v2/_catalog?n=7").await;
    assert_eq!(strings(&r.json()["repositories"]), sorted);
    assert_eq!(r.header("link"), None);
    let r = t.get("/v2/_catalog?last=m/n/o").await;
    assert_eq!(strings(&r.json()["repositories"]), ["zeta"]);
    assert_eq!(r.header("link"), None);
    let r = t.get("/v2/_catalog?last=zzz&n=5").await;
    assert_eq!(strings(&r.json()["repositories"]), Vec::<String>::new());
    assert_eq!(r.header("link"), None);
    t.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tag_lists_are_the_same_from_the_cache_and_follow_every_change() {
    let t = TestNode::start().await;
    tagged(&t, "c").await;
    let combos: Vec<String> = [
        "",
        "?n=0",
        "?n=1",
        "?n=3",
        "?n=8",
        "?n=100",
        "?last=9",
        "?last=8",
        "?last=v2",
        "?last=zzz",
        "?n=2&last=V1",
        "?n=3&last=",
        "?last=1.0&n=7",
    ]
    .iter()
    .map(|q| format!("/v2/c/tags/list{q}"))
    .collect();
    let answers = |c: Client| {
        let combos = combos.clone();
        async move {
            let mut out = Vec::new();
            for uri in &combos {
                let r = c.get(uri).await;
                out.push((
                    r.status,
                    r.header("link").map(str::to_string),
                    r.body.clone(),
                ));
            }
            out
        }
    };
    // Pages first (scans), then after a whole-list request has filled the cache.
    let scanned = answers(t.client.clone()).await;
    t.get("/v2/c/tags/list").await.expect(StatusCode::OK);
    let cached = answers(t.client.clone()).await;
    assert_eq!(scanned, cached);

    // A new tag and a deleted tag show at once in the whole list (the cache was told).
    let (_, bytes) = t.push_image("c", None, "x").await;
    let m = serde_json::from_slice(&bytes).unwrap();
    t.push_manifest("c", "new", &m).await;
    let all = strings(&t.get("/v2/c/tags/list").await.json()["tags"]);
    assert!(all.contains(&"new".to_string()), "{all:?}");
    t.delete("/v2/c/manifests/latest")
        .await
        .expect(StatusCode::ACCEPTED);
    let all = strings(&t.get("/v2/c/tags/list").await.json()["tags"]);
    assert!(!all.contains(&"latest".to_string()), "{all:?}");
    assert_eq!(all.len(), TAGS.len(), "{all:?}");
    t.stop().await;
}
