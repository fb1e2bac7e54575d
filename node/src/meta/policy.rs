//! Per-repository replication policies: the pattern grammar, which pattern applies to a
//! repository, and what a policy means for a region. Pure: the policies themselves are Raft
//! state (`p/<pattern>`, read through `MetaReader`). It sits in `meta`, beside the record it
//! interprets, because both the replicator (`replication`) and the read path (`registry`,
//! which keeps a blob out of a region the policy excludes) apply it.
//!
//! A pattern is a glob over repository names: `*` matches any run of characters within one
//! path component (no `/`), `**` any run including `/` (also none); every other character
//! matches itself. `library/*` matches `library/nginx` but not `library/a/b`; `eu/**` matches
//! `eu/a` and `eu/a/b`; `**` matches everything.
//!
//! When several patterns match a repository, the most specific wins: the one with the most
//! literal (non-wildcard) characters; on a tie, the one with fewer `**`, then fewer `*`, then
//! the lexically smaller pattern (so the choice never depends on the order of the policies).
//! An exact name therefore beats every glob that matches it. No match: the default policy
//! (every region holds a copy).

use std::cmp::Reverse;

use crate::meta::ReplicationPolicy;

/// Longest pattern accepted, in bytes (as a repository name).
pub const MAX_PATTERN_LEN: usize = 255;

/// Why a pattern or a policy is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PolicyError {
    /// The pattern is empty, too long, or has a character a repository name cannot have.
    #[error("invalid repository pattern {pattern:?}: {reason}")]
    Pattern {
        /// The pattern.
        pattern: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// A region name is empty or has whitespace.
    #[error("invalid region name {0:?}")]
    Region(String),
    /// An on-demand region is not among the regions allowed to hold copies.
    #[error("on-demand region {0:?} is not among the policy's regions")]
    OnDemandOutside(String),
}

impl PolicyError {
    /// The broad class of the error: always [`crate::types::ErrorKind::Invalid`].
    pub fn kind(&self) -> crate::types::ErrorKind {
        crate::types::ErrorKind::Invalid
    }
}

/// Checks a pattern: 1 to [`MAX_PATTERN_LEN`] bytes of `[a-z0-9._/-]` and `*`.
pub fn validate_pattern(pattern: &str) -> Result<(), PolicyError> {
    let bad = |reason| PolicyError::Pattern {
        pattern: pattern.to_string(),
        reason,
    };
    if pattern.is_empty() {
        return Err(bad("it is empty"));
    }
    if pattern.len() > MAX_PATTERN_LEN {
        return Err(bad("it is longer than 255 bytes"));
    }
    if !pattern
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._/-*".contains(&b))
    {
        return Err(bad("only a-z, 0-9, '.', '_', '-', '/' and '*' may appear"));
    }
    if pattern.contains("***") {
        return Err(bad("'***' means nothing; use '**'"));
    }
    Ok(())
}

/// Checks and normalises a policy: region names valid, sorted and unique, and every
/// on-demand region allowed to hold copies.
pub fn normalise(mut policy: ReplicationPolicy) -> Result<ReplicationPolicy, PolicyError> {
    for r in policy.regions.iter().chain(&policy.on_demand) {
        if r.is_empty() || r.chars().any(char::is_whitespace) {
            return Err(PolicyError::Region(r.clone()));
        }
    }
    policy.regions.sort();
    policy.regions.dedup();
    policy.on_demand.sort();
    policy.on_demand.dedup();
    if !policy.regions.is_empty()
        && let Some(r) = policy
            .on_demand
            .iter()
            .find(|r| !policy.regions.contains(r))
    {
        return Err(PolicyError::OnDemandOutside(r.clone()));
    }
    Ok(policy)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Token {
    Literal(u8),
    Star,
    DoubleStar,
}

fn tokens(pattern: &str) -> Vec<Token> {
    let b = pattern.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'*' {
            if b.get(i + 1) == Some(&b'*') {
                out.push(Token::DoubleStar);
                i += 2;
            } else {
                out.push(Token::Star);
                i += 1;
            }
        } else {
            out.push(Token::Literal(b[i]));
            i += 1;
        }
    }
    out
}

/// Whether `pattern` matches the repository name `name`.
pub fn matches(pattern: &str, name: &str) -> bool {
    let p = tokens(pattern);
    let n = name.as_bytes();
    // at[j]: the pattern prefix seen so far matches name[..j].
    let mut at = vec![false; n.len() + 1];
    at[0] = true;
    for t in &p {
        let mut next = vec![false; n.len() + 1];
        match t {
            Token::Literal(c) => {
                for j in 0..n.len() {
                    if at[j] && n[j] == *c {
                        next[j + 1] = true;
                    }
                }
            }
            Token::Star | Token::DoubleStar => {
                let crosses = matches!(t, Token::DoubleStar);
                for j in 0..=n.len() {
                    if at[j] || (j > 0 && next[j - 1] && (crosses || n[j - 1] != b'/')) {
                        next[j] = true;
                    }
                }
            }
        }
        at = next;
    }
    at[n.len()]
}

/// How specific a pattern is: greater is more specific (see the module's rule).
fn specificity(pattern: &str) -> (usize, Reverse<usize>, Reverse<usize>) {
    let t = tokens(pattern);
    let literal = t.iter().filter(|t| matches!(t, Token::Literal(_))).count();
    let double = t.iter().filter(|t| matches!(t, Token::DoubleStar)).count();
    let single = t.iter().filter(|t| matches!(t, Token::Star)).count();
    (literal, Reverse(double), Reverse(single))
}

/// The most specific of `patterns` that matches `repo` (the module's rule), if any.
pub fn most_specific<'a>(patterns: impl Iterator<Item = &'a str>, repo: &str) -> Option<&'a str> {
    patterns.filter(|p| matches(p, repo)).max_by(|a, b| {
        specificity(a)
            .cmp(&specificity(b))
            // The lexically smaller pattern wins a tie: it must compare greater.
            .then_with(|| b.cmp(a))
    })
}

/// The policy that applies to `repo` among `policies` (pattern, policy): the most specific
/// matching pattern, or `None` (the default: every region).
pub fn effective<'a>(
    repo: &str,
    policies: &'a [(String, ReplicationPolicy)],
) -> Option<&'a (String, ReplicationPolicy)> {
    let best = most_specific(policies.iter().map(|(p, _)| p.as_str()), repo)?;
    policies.iter().find(|(p, _)| p == best)
}

/// Whether a policy lets `region` hold copies at all (residency). `None`: the default.
pub fn allows(policy: Option<&ReplicationPolicy>, region: &str) -> bool {
    policy.is_none_or(|p| p.regions.is_empty() || p.regions.iter().any(|r| r == region))
}

/// Whether the replicator copies blobs into `region` under a policy: allowed, and not on
/// demand there.
pub fn replicates_to(policy: Option<&ReplicationPolicy>, region: &str) -> bool {
    allows(policy, region) && policy.is_none_or(|p| !p.on_demand.iter().any(|r| r == region))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn p(regions: &[&str], on_demand: &[&str]) -> ReplicationPolicy {
        ReplicationPolicy {
            regions: regions.iter().map(|r| r.to_string()).collect(),
            on_demand: on_demand.iter().map(|r| r.to_string()).collect(),
        }
    }

    #[test]
    fn single_star_stays_within_a_component() {
        assert!(matches("library/*", "library/nginx"));
        assert!(!matches("library/*", "library/a/b"));
        assert!(!matches("library/*", "library"));
        assert!(matches("*/nginx", "library/nginx"));
        assert!(matches("a*c", "abbc"));
        assert!(matches("a*c", "ac"));
        assert!(!matches("a*c", "a/c"));
        assert!(matches("*", "nginx"));
        assert!(!matches("*", "a/b"));
    }

    #[test]
    fn double_star_crosses_components() {
        assert!(matches("eu/**", "eu/a"));
        assert!(matches("eu/**", "eu/a/b/c"));
        assert!(!matches("eu/**", "us/a"));
        assert!(matches("**", "a/b/c"));
        assert!(matches("**/base", "team/x/base"));
        assert!(matches("a/**/z", "a/b/c/z"));
        assert!(!matches("a/**/z", "a/b/c/y"));
    }

    #[test]
    fn literals_match_exactly() {
        assert!(matches("library/nginx", "library/nginx"));
        assert!(!matches("library/nginx", "library/nginx2"));
        assert!(!matches("library/nginx", "library/ngin"));
    }

    #[test]
    fn the_most_specific_pattern_wins_whatever_the_order() {
        let mut policies = vec![
            ("**".to_string(), p(&[], &["r3"])),
            ("eu/**".to_string(), p(&["r1"], &[])),
            ("eu/*".to_string(), p(&["r2"], &[])),
            ("eu/secret".to_string(), p(&["r1", "r2"], &[])),
        ];
        for _ in 0..4 {
            policies.rotate_left(1);
            assert_eq!(effective("eu/secret", &policies).unwrap().0, "eu/secret");
            // `eu/*` and `eu/**` have as many literals; fewer `**` wins.
            assert_eq!(effective("eu/app", &policies).unwrap().0, "eu/*");
            assert_eq!(effective("eu/a/b", &policies).unwrap().0, "eu/**");
            assert_eq!(effective("us/app", &policies).unwrap().0, "**");
        }
        assert!(effective("x", &policies[..0]).is_none());
    }

    #[test]
    fn ties_go_to_the_lexically_smaller_pattern() {
        let policies = vec![
            ("a*".to_string(), p(&["r2"], &[])),
            ("*b".to_string(), p(&["r1"], &[])),
        ];
        assert_eq!(effective("ab", &policies).unwrap().0, "*b");
    }

    #[test]
    fn residency_and_on_demand() {
        assert!(allows(None, "anywhere"));
        assert!(replicates_to(None, "anywhere"));
        let limited = p(&["r1", "r2"], &["r2"]);
        assert!(allows(Some(&limited), "r2"));
        assert!(!allows(Some(&limited), "r3"));
        assert!(replicates_to(Some(&limited), "r1"));
        assert!(!replicates_to(Some(&limited), "r2"));
        let everywhere_but_lazy = p(&[], &["r3"]);
        assert!(allows(Some(&everywhere_but_lazy), "r3"));
        assert!(!replicates_to(Some(&everywhere_but_lazy), "r3"));
    }

    #[test]
    fn patterns_and_policies_are_validated() {
        assert!(validate_pattern("library/*").is_ok());
        assert!(validate_pattern("**").is_ok());
        assert!(validate_pattern("").is_err());
        assert!(validate_pattern("Library").is_err());
        assert!(validate_pattern("a b").is_err());
        assert!(validate_pattern("a/***").is_err());
        assert!(validate_pattern(&"a".repeat(256)).is_err());
        assert_eq!(
            normalise(p(&["r2", "r1", "r2"], &[])).unwrap(),
            p(&["r1", "r2"], &[])
        );
        assert_eq!(
            normalise(p(&["r1"], &["r3"])),
            Err(PolicyError::OnDemandOutside("r3".into()))
        );
        assert!(normalise(p(&[""], &[])).is_err());
        assert!(normalise(p(&[], &["r3"])).is_ok());
    }

    proptest! {
        /// A name without wildcards matches exactly itself; `**` matches everything.
        #[test]
        fn literal_patterns_match_only_themselves(
            a in "[a-z0-9]{1,6}(/[a-z0-9]{1,6}){0,3}",
            b in "[a-z0-9]{1,6}(/[a-z0-9]{1,6}){0,3}",
        ) {
            prop_assert!(matches(&a, &a));
            prop_assert_eq!(matches(&a, &b), a == b);
            prop_assert!(matches("**", &a));
        }

        /// Replacing any one component with `*` still matches, and never matches a name with
        /// another number of components.
        #[test]
        fn a_star_stands_for_one_component(
            parts in proptest::collection::vec("[a-z0-9]{1,6}", 1..5),
            at in 0usize..5,
        ) {
            let at = at % parts.len();
            let name = parts.join("/");
            let mut globbed = parts.clone();
            globbed[at] = "*".to_string();
            let pattern = globbed.join("/");
            prop_assert!(matches(&pattern, &name));
            let longer = format!("{name}/x");
            prop_assert!(!matches(&pattern, &longer));
        }
    }
}
