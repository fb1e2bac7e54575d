//! Key encoding of the `state` and `logs` column families (the schema is drawn in `mod.rs`).

use crate::types::{Digest, RepositoryName, Tag};

/// Key of the last applied log id.
pub(super) const APPLIED: &[u8] = b"_sm/applied";
/// Key of the last applied membership.
pub(super) const MEMBERSHIP: &[u8] = b"_sm/membership";
/// Prefix of the state machine's own bookkeeping keys (not part of a snapshot's records).
pub(super) const SM_PREFIX: &[u8] = b"_sm/";

/// Key of a log entry: its index, big-endian so keys sort by index.
pub(super) fn log(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

/// Index of a log entry key.
pub(super) fn log_index(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    b.copy_from_slice(&key[..8]);
    u64::from_be_bytes(b)
}

fn join(prefix: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    let len = prefix.len() + parts.iter().map(|p| p.len() + 1).sum::<usize>();
    let mut k = Vec::with_capacity(len);
    k.extend_from_slice(prefix);
    for (i, p) in parts.iter().enumerate() {
        if i > 0 {
            k.push(0);
        }
        k.extend_from_slice(p);
    }
    k
}

/// `r/<repo>`
pub(super) fn repo(repo: &RepositoryName) -> Vec<u8> {
    join(b"r/", &[repo.as_str().as_bytes()])
}

/// Prefix of all repository keys.
pub(super) const REPO_PREFIX: &[u8] = b"r/";

/// `m/<repo>\0<digest>`
pub(super) fn manifest(repo: &RepositoryName, digest: &Digest) -> Vec<u8> {
    join(
        b"m/",
        &[repo.as_str().as_bytes(), digest.as_str().as_bytes()],
    )
}

/// `t/<repo>\0<tag>`
pub(super) fn tag(repo: &RepositoryName, tag: &Tag) -> Vec<u8> {
    join(b"t/", &[repo.as_str().as_bytes(), tag.as_str().as_bytes()])
}

/// `t/<repo>\0`: prefix of a repository's tags.
pub(super) fn tag_prefix(repo: &RepositoryName) -> Vec<u8> {
    join(b"t/", &[repo.as_str().as_bytes(), b""])
}

/// `l/<repo>\0<digest>`
pub(super) fn link(repo: &RepositoryName, digest: &Digest) -> Vec<u8> {
    join(
        b"l/",
        &[repo.as_str().as_bytes(), digest.as_str().as_bytes()],
    )
}

/// `b/<digest>`
pub(super) fn blob(digest: &Digest) -> Vec<u8> {
    join(b"b/", &[digest.as_str().as_bytes()])
}

/// `f/<repo>\0<subject>\0<referrer>`
pub(super) fn referrer(repo: &RepositoryName, subject: &Digest, referrer: &Digest) -> Vec<u8> {
    join(
        b"f/",
        &[
            repo.as_str().as_bytes(),
            subject.as_str().as_bytes(),
            referrer.as_str().as_bytes(),
        ],
    )
}

/// `f/<repo>\0<subject>\0`: prefix of a subject's referrers.
pub(super) fn referrer_prefix(repo: &RepositoryName, subject: &Digest) -> Vec<u8> {
    join(
        b"f/",
        &[repo.as_str().as_bytes(), subject.as_str().as_bytes(), b""],
    )
}

/// `p/<pattern>`: a replication policy.
pub(super) fn policy(pattern: &str) -> Vec<u8> {
    join(b"p/", &[pattern.as_bytes()])
}

/// Prefix of all replication policy keys.
pub(super) const POLICY_PREFIX: &[u8] = b"p/";

/// Prefix of all manifest keys.
pub(super) const MANIFEST_PREFIX: &[u8] = b"m/";

/// `m/<repo>\0`: prefix of a repository's manifests.
pub(super) fn manifest_prefix(repo: &RepositoryName) -> Vec<u8> {
    join(b"m/", &[repo.as_str().as_bytes(), b""])
}

/// A digest written as the bytes of a key (`None`: not a digest).
pub(super) fn parse_digest(bytes: &[u8]) -> Option<Digest> {
    Digest::parse(std::str::from_utf8(bytes).ok()?).ok()
}

/// Splits `<repo>\0<digest>`, the rest of a key after its prefix (`None`: not that shape).
pub(super) fn parse_repo_digest(rest: &[u8]) -> Option<(RepositoryName, Digest)> {
    let sep = rest.iter().position(|b| *b == 0)?;
    let repo = RepositoryName::parse(std::str::from_utf8(&rest[..sep]).ok()?).ok()?;
    Some((repo, parse_digest(&rest[sep + 1..])?))
}

/// The smallest key greater than every key that starts with `prefix`.
pub(super) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repository_prefix_does_not_cover_a_longer_name() {
        let a = RepositoryName::parse("a").unwrap();
        let ab = RepositoryName::parse("a/b").unwrap();
        let t = Tag::parse("x").unwrap();
        assert!(!tag(&ab, &t).starts_with(&tag_prefix(&a)));
        assert!(tag(&a, &t).starts_with(&tag_prefix(&a)));
    }

    #[test]
    fn prefix_end_bounds_the_prefix() {
        assert_eq!(prefix_end(b"t/a\0"), b"t/a\x01".to_vec());
        assert_eq!(prefix_end(b"a\xff"), b"b".to_vec());
    }

    #[test]
    fn log_keys_sort_by_index() {
        assert!(log(255) < log(256));
        assert_eq!(log_index(&log(12345)), 12345);
    }
}
