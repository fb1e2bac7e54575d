//! The `/v2/…` path grammar: one parser for every endpoint, reading from the right so that
//! repository names may have any number of components.

/// An endpoint of the OCI API, with the raw (not yet validated) name and reference parts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route<'a> {
    /// `/v2/`
    Base,
    /// `/v2/_catalog`
    Catalog,
    /// `/v2/<name>/tags/list`
    Tags(&'a str),
    /// `/v2/<name>/manifests/<reference>`
    Manifest(&'a str, &'a str),
    /// `/v2/<name>/blobs/<digest>`
    Blob(&'a str, &'a str),
    /// `/v2/<name>/blobs/uploads/`
    Uploads(&'a str),
    /// `/v2/<name>/blobs/uploads/<id>`
    Upload(&'a str, &'a str),
    /// `/v2/<name>/referrers/<digest>`
    Referrers(&'a str, &'a str),
}

/// Parses the part of the path after `/v2/`. `None`: no such endpoint.
pub fn parse(rest: &str) -> Option<Route<'_>> {
    if rest.is_empty() {
        return Some(Route::Base);
    }
    if rest == "_catalog" {
        return Some(Route::Catalog);
    }
    if let Some(name) = rest.strip_suffix("/tags/list") {
        return non_empty(name).map(Route::Tags);
    }
    if let Some(name) = rest
        .strip_suffix("/blobs/uploads/")
        .or_else(|| rest.strip_suffix("/blobs/uploads"))
    {
        return non_empty(name).map(Route::Uploads);
    }
    let (head, last) = rest.rsplit_once('/')?;
    if last.is_empty() {
        return None;
    }
    if let Some(name) = head.strip_suffix("/blobs/uploads") {
        return non_empty(name).map(|n| Route::Upload(n, last));
    }
    let (name, kind) = head.rsplit_once('/')?;
    let name = non_empty(name)?;
    match kind {
        "manifests" => Some(Route::Manifest(name, last)),
        "blobs" => Some(Route::Blob(name, last)),
        "referrers" => Some(Route::Referrers(name, last)),
        _ => None,
    }
}

fn non_empty(s: &str) -> Option<&str> {
    (!s.is_empty()).then_some(s)
}

#[cfg(test)]
mod tests {
    use super::Route::*;
    use super::*;

    #[test]
    fn every_endpoint() {
        assert_eq!(parse(""), Some(Base));
        assert_eq!(parse("_catalog"), Some(Catalog));
        assert_eq!(parse("a/b/c/tags/list"), Some(Tags("a/b/c")));
        assert_eq!(parse("a/manifests/latest"), Some(Manifest("a", "latest")));
        assert_eq!(parse("a/b/blobs/sha256:00"), Some(Blob("a/b", "sha256:00")));
        assert_eq!(parse("a/blobs/uploads/"), Some(Uploads("a")));
        assert_eq!(parse("a/blobs/uploads"), Some(Uploads("a")));
        assert_eq!(parse("a/blobs/uploads/1-ff"), Some(Upload("a", "1-ff")));
        assert_eq!(
            parse("a/referrers/sha256:00"),
            Some(Referrers("a", "sha256:00"))
        );
    }

    #[test]
    fn names_may_contain_endpoint_words() {
        assert_eq!(parse("blobs/manifests/x"), Some(Manifest("blobs", "x")));
        assert_eq!(
            parse("x/blobs/uploads/blobs/sha256:1"),
            Some(Blob("x/blobs/uploads", "sha256:1"))
        );
        assert_eq!(parse("tags/list/tags/list"), Some(Tags("tags/list")));
    }

    #[test]
    fn not_endpoints() {
        for p in [
            "a",
            "a/b",
            "a/manifests/",
            "/manifests/x",
            "tags/list",
            "a/unknown/x",
            "manifests/x",
        ] {
            assert_eq!(parse(p), None, "{p}");
        }
    }
}
