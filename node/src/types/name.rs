//! Repository names (`<name>` in `/v2/<name>/...`).
//!
//! Owns the distribution-spec grammar:
//!
//! ```text
//! name      := component ("/" component)*
//! component := [a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*
//! ```
//!
//! with a total length of at most [`MAX_NAME_LEN`] bytes.
//!
//! Invariants: a [`RepositoryName`] is non-empty, ASCII, made of
//! `[a-z0-9._/-]` only, has no leading, trailing or doubled `/`, and every
//! component starts and ends with `[a-z0-9]` (so no component is `.` or `..`).
//! `__` is a separator but `___` is not; any run of `-` is a separator.

use super::TypesError;

/// Longest repository name accepted, in bytes.
pub const MAX_NAME_LEN: usize = 255;

/// A validated repository name such as `library/alpine`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct RepositoryName(String);

impl RepositoryName {
    /// Parses a repository name; any departure from the grammar is [`TypesError::InvalidName`].
    pub fn parse(s: &str) -> Result<RepositoryName, TypesError> {
        if !s.is_empty() && s.len() <= MAX_NAME_LEN && s.split('/').all(is_component) {
            Ok(RepositoryName(s.to_owned()))
        } else {
            Err(TypesError::InvalidName(s.to_owned()))
        }
    }

    /// The name as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// The `/`-separated components, in order; each is non-empty.
    pub fn components(&self) -> impl Iterator<Item = &str> {
        self.0.split('/')
    }
}

super::string_newtype_impls!(RepositoryName);

/// `[a-z0-9]+ ((\.|_|__|-+) [a-z0-9]+)*`.
fn is_component(c: &str) -> bool {
    let b = c.as_bytes();
    let alnum = |x: u8| x.is_ascii_lowercase() || x.is_ascii_digit();
    let mut i = 0;
    loop {
        // A run of [a-z0-9]+ ...
        let run_start = i;
        while i < b.len() && alnum(b[i]) {
            i += 1;
        }
        if i == run_start {
            return false;
        }
        if i == b.len() {
            return true;
        }
        // ... then one separator, which must be followed by another run.
        match b[i] {
            b'.' => i += 1,
            b'_' => {
                i += 1;
                if i < b.len() && b[i] == b'_' {
                    i += 1;
                }
            }
            b'-' => {
                while i < b.len() && b[i] == b'-' {
                    i += 1;
                }
            }
            _ => return false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn accepts_valid_names() {
        for s in [
            "a",
            "0",
            "alpine",
            "library/alpine",
            "a/b/c/d/e",
            "my-org/my--repo",
            "a---b",
            "foo.bar",
            "foo_bar",
            "foo__bar",
            "foo.bar_baz__qux-quux",
            "123/456",
            "ghcr.io.mirror/x",
        ] {
            let n = RepositoryName::parse(s).unwrap();
            assert_eq!(n.as_str(), s);
            assert_eq!(n.to_string(), s);
            assert_eq!(s.parse::<RepositoryName>().unwrap(), n);
        }
    }

    #[test]
    fn rejects_invalid_names() {
        for s in [
            "",
            "/",
            "/a",
            "a/",
            "a//b",
            "A",
            "library/Alpine",
            "foo___bar",
            "foo..bar",
            "foo._bar",
            "foo_-bar",
            "-foo",
            "foo-",
            ".foo",
            "foo.",
            "_foo",
            "foo_",
            "..",
            "a/../b",
            "a/./b",
            "a b",
            "a:b",
            "a@b",
            "é",
            "a\0",
        ] {
            assert_eq!(
                RepositoryName::parse(s),
                Err(TypesError::InvalidName(s.to_owned())),
                "{s:?}"
            );
        }
    }

    #[test]
    fn length_limit() {
        let ok = "a".repeat(MAX_NAME_LEN);
        assert!(RepositoryName::parse(&ok).is_ok());
        let long = "a".repeat(MAX_NAME_LEN + 1);
        assert_eq!(
            RepositoryName::parse(&long),
            Err(TypesError::InvalidName(long.clone()))
        );
        let nested = format!("{}/b", "a".repeat(MAX_NAME_LEN - 1));
        assert!(RepositoryName::parse(&nested).is_err());
    }

    #[test]
    fn components_and_serde() {
        let n = RepositoryName::parse("org/team/app").unwrap();
        assert_eq!(n.components().collect::<Vec<_>>(), ["org", "team", "app"]);
        let json = serde_json::to_string(&n).unwrap();
        assert_eq!(json, "\"org/team/app\"");
        assert_eq!(serde_json::from_str::<RepositoryName>(&json).unwrap(), n);
        assert!(serde_json::from_str::<RepositoryName>("\"Org\"").is_err());
    }

    /// Independent oracle: split each component into maximal runs of
    /// `[a-z0-9]` and of other characters, and check the runs.
    fn oracle(s: &str) -> bool {
        fn component_ok(c: &str) -> bool {
            if c.is_empty()
                || !c
                    .chars()
                    .all(|ch| ch.is_ascii_lowercase() || ch.is_ascii_digit() || ".-_".contains(ch))
            {
                return false;
            }
            let is_alnum = |ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit();
            let chars: Vec<char> = c.chars().collect();
            let mut runs: Vec<(bool, String)> = Vec::new();
            for ch in chars {
                match runs.last_mut() {
                    Some((a, run)) if *a == is_alnum(ch) => run.push(ch),
                    _ => runs.push((is_alnum(ch), ch.to_string())),
                }
            }
            runs.first().is_some_and(|r| r.0)
                && runs.last().is_some_and(|r| r.0)
                && runs.iter().filter(|r| !r.0).all(|(_, sep)| {
                    sep == "." || sep == "_" || sep == "__" || sep.chars().all(|ch| ch == '-')
                })
        }
        !s.is_empty() && s.len() <= 255 && s.split('/').all(component_ok)
    }

    const VALID: &str = "[a-z0-9]{1,5}((\\.|_|__|-{1,3})[a-z0-9]{1,5}){0,3}(/[a-z0-9]{1,5}((\\.|_|__|-{1,3})[a-z0-9]{1,5}){0,3}){0,3}";

    proptest! {
        #[test]
        fn round_trip(s in VALID) {
            let n = RepositoryName::parse(&s).unwrap();
            prop_assert_eq!(n.as_str(), s.as_str());
            prop_assert_eq!(n.to_string().parse::<RepositoryName>().unwrap(), n.clone());
            let json = serde_json::to_string(&n).unwrap();
            prop_assert_eq!(serde_json::from_str::<RepositoryName>(&json).unwrap(), n.clone());
            prop_assert_eq!(n.components().collect::<Vec<_>>().join("/"), s);
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = RepositoryName::parse(&String::from_utf8_lossy(&bytes));
        }

        #[test]
        fn accepts_exactly_the_grammar(s in prop_oneof![
            "[a-z0-9._/A-Z -]{0,24}",
            "[a-z._/-]{0,12}",
            "[ab]{1,3}([._/-]{1,4}[ab]{0,3}){0,5}",
            "[a-z/]{250,260}",
            "\\PC{0,30}",
        ]) {
            let expected = oracle(&s);
            match RepositoryName::parse(&s) {
                Ok(n) => prop_assert!(expected && n.as_str() == s, "accepted {:?}", s),
                Err(TypesError::InvalidName(e)) => prop_assert!(!expected && e == s, "rejected {:?}", s),
                Err(e) => prop_assert!(false, "wrong error {:?}", e),
            }
        }
    }
}
