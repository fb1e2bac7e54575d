//! Tags and manifest references (`<reference>` in `/v2/<name>/manifests/<reference>`).
//!
//! Owns the distribution-spec tag grammar `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`
//! and the rule that splits a reference: a string containing `:` is a digest,
//! anything else is a tag (a tag can never contain `:`).
//!
//! Invariants: a [`Tag`] is 1 to [`MAX_TAG_LEN`] ASCII characters from
//! `[a-zA-Z0-9._-]`, never starting with `.` or `-` (so never `.` or `..`,
//! and safe as a path component); a [`Reference`] holds a valid tag or digest.

use super::{Digest, TypesError};

/// Longest tag accepted, in characters.
pub const MAX_TAG_LEN: usize = 128;

/// A validated tag such as `latest` or `v1.2.3`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Tag(String);

impl Tag {
    /// Parses a tag; any departure from the grammar is [`TypesError::InvalidTag`].
    pub fn parse(s: &str) -> Result<Tag, TypesError> {
        let b = s.as_bytes();
        let valid = match b.split_first() {
            Some((first, rest)) => {
                b.len() <= MAX_TAG_LEN
                    && (first.is_ascii_alphanumeric() || *first == b'_')
                    && rest
                        .iter()
                        .all(|c| c.is_ascii_alphanumeric() || matches!(c, b'.' | b'_' | b'-'))
            }
            None => false,
        };
        if valid {
            Ok(Tag(s.to_owned()))
        } else {
            Err(TypesError::InvalidTag(s.to_owned()))
        }
    }

    /// The tag as a string.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

super::string_newtype_impls!(Tag);

/// What a manifest is addressed by: a tag or a digest.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub enum Reference {
    /// A mutable tag such as `latest`.
    Tag(Tag),
    /// An immutable content digest.
    Digest(Digest),
}

impl Reference {
    /// Parses a reference: with a `:` it must be a digest (digest errors),
    /// otherwise a tag (tag errors).
    pub fn parse(s: &str) -> Result<Reference, TypesError> {
        if s.contains(':') {
            Digest::parse(s).map(Reference::Digest)
        } else {
            Tag::parse(s).map(Reference::Tag)
        }
    }

    /// The reference as written: the tag, or the full digest string.
    pub fn as_str(&self) -> &str {
        match self {
            Reference::Tag(t) => t.as_str(),
            Reference::Digest(d) => d.as_str(),
        }
    }

    /// The tag, if this reference is one.
    pub fn as_tag(&self) -> Option<&Tag> {
        match self {
            Reference::Tag(t) => Some(t),
            Reference::Digest(_) => None,
        }
    }

    /// The digest, if this reference is one.
    pub fn as_digest(&self) -> Option<&Digest> {
        match self {
            Reference::Tag(_) => None,
            Reference::Digest(d) => Some(d),
        }
    }

    /// Whether this reference is a digest.
    pub fn is_digest(&self) -> bool {
        matches!(self, Reference::Digest(_))
    }
}

impl From<Tag> for Reference {
    fn from(t: Tag) -> Reference {
        Reference::Tag(t)
    }
}

impl From<Digest> for Reference {
    fn from(d: Digest) -> Reference {
        Reference::Digest(d)
    }
}

impl std::fmt::Display for Reference {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Reference {
    type Err = TypesError;
    fn from_str(s: &str) -> Result<Reference, TypesError> {
        Reference::parse(s)
    }
}

impl serde::Serialize for Reference {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(self.as_str())
    }
}

impl<'de> serde::Deserialize<'de> for Reference {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Reference, D::Error> {
        let s = String::deserialize(deserializer)?;
        Reference::parse(&s).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const D: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";

    #[test]
    fn tags() {
        for s in ["latest", "v1.2.3", "_", "0", "A-b_c.D", "1.0-rc.1", "__x"] {
            let t = Tag::parse(s).unwrap();
            assert_eq!(t.as_str(), s);
            assert_eq!(t.to_string(), s);
        }
        let max = "a".repeat(MAX_TAG_LEN);
        assert!(Tag::parse(&max).is_ok());
        for s in [
            "",
            ".",
            "..",
            "-x",
            ".x",
            "a:b",
            "a/b",
            "a b",
            "é",
            "a+b",
            &"a".repeat(MAX_TAG_LEN + 1),
        ] {
            assert_eq!(
                Tag::parse(s),
                Err(TypesError::InvalidTag(s.to_owned())),
                "{s:?}"
            );
        }
    }

    #[test]
    fn references() {
        let r = Reference::parse("latest").unwrap();
        assert_eq!(r, Reference::Tag(Tag::parse("latest").unwrap()));
        assert!(!r.is_digest());
        assert_eq!(r.as_tag().unwrap().as_str(), "latest");
        assert_eq!(r.as_digest(), None);
        let r = Reference::parse(D).unwrap();
        assert!(r.is_digest());
        assert_eq!(r.to_string(), D);
        assert_eq!(r.as_digest().unwrap().as_str(), D);
        assert_eq!(r.as_tag(), None);
        assert_eq!(
            Reference::parse("sha256:abc"),
            Err(TypesError::InvalidDigest("sha256:abc".into()))
        );
        assert_eq!(
            Reference::parse("sha512:abc"),
            Err(TypesError::UnsupportedDigestAlgorithm("sha512:abc".into()))
        );
        assert_eq!(
            Reference::parse("a:"),
            Err(TypesError::InvalidDigest("a:".into()))
        );
        assert_eq!(
            Reference::parse("-x"),
            Err(TypesError::InvalidTag("-x".into()))
        );
        assert_eq!(Reference::parse(""), Err(TypesError::InvalidTag("".into())));
    }

    #[test]
    fn serde() {
        let t = Tag::parse("v1").unwrap();
        assert_eq!(serde_json::to_string(&t).unwrap(), "\"v1\"");
        assert_eq!(serde_json::from_str::<Tag>("\"v1\"").unwrap(), t);
        assert!(serde_json::from_str::<Tag>("\".v1\"").is_err());
        let r = Reference::parse(D).unwrap();
        let json = serde_json::to_string(&r).unwrap();
        assert_eq!(serde_json::from_str::<Reference>(&json).unwrap(), r);
        assert!(serde_json::from_str::<Reference>("\"a:b\"").is_err());
    }

    fn tag_oracle(s: &str) -> bool {
        let chars: Vec<char> = s.chars().collect();
        let word = |c: char| c.is_ascii_alphanumeric() || c == '_';
        !chars.is_empty()
            && chars.len() <= 128
            && word(chars[0])
            && chars[1..].iter().all(|&c| word(c) || c == '.' || c == '-')
    }

    proptest! {
        #[test]
        fn tag_round_trip(s in "[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}") {
            let t = Tag::parse(&s).unwrap();
            prop_assert_eq!(t.as_str(), s.as_str());
            prop_assert_eq!(t.to_string().parse::<Tag>().unwrap(), t.clone());
            let r = Reference::parse(&s).unwrap();
            prop_assert_eq!(&r, &Reference::Tag(t));
            prop_assert_eq!(r.to_string().parse::<Reference>().unwrap(), r.clone());
        }

        #[test]
        fn digest_reference_round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
            let d = Digest::sha256_of(&bytes);
            let r = Reference::parse(d.as_str()).unwrap();
            prop_assert_eq!(&r, &Reference::Digest(d));
            prop_assert_eq!(r.to_string().parse::<Reference>().unwrap(), r.clone());
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let s = String::from_utf8_lossy(&bytes);
            let _ = Tag::parse(&s);
            let _ = Reference::parse(&s);
        }

        #[test]
        fn tag_accepts_exactly_the_grammar(s in prop_oneof![
            "[a-zA-Z0-9._:/+ -]{0,10}",
            "[a-z._-]{120,135}",
            "\\PC{0,20}",
        ]) {
            let expected = tag_oracle(&s);
            match Tag::parse(&s) {
                Ok(t) => prop_assert!(expected && t.as_str() == s, "accepted {:?}", s),
                Err(TypesError::InvalidTag(e)) => prop_assert!(!expected && e == s, "rejected {:?}", s),
                Err(e) => prop_assert!(false, "wrong error {:?}", e),
            }
        }

        #[test]
        fn reference_dispatches_on_colon(s in "[a-z0-9:._-]{0,80}") {
            let r = Reference::parse(&s);
            if s.contains(':') {
                prop_assert_eq!(r.map(|r| r.to_string()), Digest::parse(&s).map(|d| d.to_string()));
            } else {
                prop_assert_eq!(r.map(|r| r.to_string()), Tag::parse(&s).map(|t| t.to_string()));
            }
        }
    }
}
