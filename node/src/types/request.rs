//! The client request a piece of work is done for: its id and what webhook payloads say of it.
//!
//! The HTTP front gives every request a [`RequestMeta`] and runs its handler inside
//! [`RequestMeta::scope`]; code below it that needs the request (the registry, when it wraps
//! a metadata write so the events derived from it name the request) reads
//! [`RequestMeta::current`]. The value is persisted in the Raft log with the write, so its
//! shape is versioned with the commands (`meta::command`): fields are never changed in place.

use serde::{Deserialize, Serialize};

/// The longest request id kept from a client's `X-Request-Id` header; longer ones (or ones
/// with characters other than ASCII letters, digits, `-`, `_`, `.`) are replaced.
pub const MAX_REQUEST_ID: usize = 128;
/// The longest host and user agent kept (longer ones are cut at a character boundary).
pub const MAX_FIELD: usize = 256;

/// What a webhook payload says of the request that caused an event.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RequestMeta {
    /// The request id (also the `X-Request-Id` response header and in log lines).
    pub id: String,
    /// The `Host` the client addressed.
    pub host: String,
    /// The HTTP method.
    pub method: String,
    /// The client's `User-Agent`.
    pub user_agent: String,
}

tokio::task_local! {
    static CURRENT: RequestMeta;
}

impl RequestMeta {
    /// The request the current task is serving, if it serves one.
    pub fn current() -> Option<RequestMeta> {
        CURRENT.try_with(Clone::clone).ok()
    }

    /// Runs `f` as serving this request.
    pub async fn scope<F: std::future::Future>(self, f: F) -> F::Output {
        CURRENT.scope(self, f).await
    }

    /// The id to use for a request that came with `header` as its `X-Request-Id`: the
    /// client's when it is short and plain, a new random one otherwise.
    pub fn id_from(header: Option<&str>) -> String {
        match header {
            Some(h)
                if !h.is_empty()
                    && h.len() <= MAX_REQUEST_ID
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.')) =>
            {
                h.to_string()
            }
            _ => uuid::Uuid::new_v4().to_string(),
        }
    }

    /// `s` cut to [`MAX_FIELD`] bytes at a character boundary.
    pub fn bounded(s: &str) -> String {
        let mut end = s.len().min(MAX_FIELD);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        s[..end].to_string()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_client_ids_are_kept_and_others_replaced() {
        assert_eq!(RequestMeta::id_from(Some("abc-123_x.y")), "abc-123_x.y");
        for bad in ["", "a b", "x\u{e9}", &"a".repeat(MAX_REQUEST_ID + 1)] {
            let id = RequestMeta::id_from(Some(bad));
            assert_ne!(id, bad);
            assert_eq!(id.len(), 36, "{id}");
        }
        assert_eq!(RequestMeta::id_from(None).len(), 36);
    }

    #[tokio::test]
    async fn the_current_request_is_seen_inside_its_scope_only() {
        assert_eq!(RequestMeta::current(), None);
        let meta = RequestMeta {
            id: "r1".into(),
            ..RequestMeta::default()
        };
        let seen = meta.clone().scope(async { RequestMeta::current() }).await;
        assert_eq!(seen, Some(meta));
    }

    #[test]
    fn long_fields_are_cut_at_a_char_boundary() {
        let s = "\u{e9}".repeat(MAX_FIELD);
        let b = RequestMeta::bounded(&s);
        assert!(b.len() <= MAX_FIELD && s.starts_with(&b));
    }
}
