//! Wire-level value types of the OCI Distribution API: parsing and validation only.
//!
//! This module owns the grammar of every string a client can hand the registry
//! (digests, repository names, tags, references, `Range` / `Content-Range`
//! headers, media types) and the structural validation of image manifests and
//! indexes. It does no IO and holds no state.
//!
//! Invariants: a value of any type defined here was produced by its parser (or
//! by hashing, for [`Digest`]), so holding one is proof that it is well formed.
//! In particular a [`Digest`]'s [`hex`](Digest::hex) contains only `[0-9a-f]`
//! and a [`RepositoryName`] only `[a-z0-9._/-]` with no empty, `.` or `..`
//! component, so both are safe to use as path components. Parsers never panic,
//! whatever the input, and every failure is a [`TypesError`] that carries the
//! offending input (or, for manifests, a description of the problem).

pub mod digest;
pub mod kind;
pub mod manifest;
pub mod name;
pub mod range;
pub mod reference;
pub mod request;
pub mod time;

pub use digest::{Digest, DigestHasher};
pub use kind::ErrorKind;
pub use manifest::{Descriptor, ManifestKind, MediaType, ParsedManifest};
pub use name::RepositoryName;
pub use range::{ByteRange, ByteRangeSpec, ContentRange};
pub use reference::{Reference, Tag};
pub use request::RequestMeta;

/// Every way a value handed to the registry can fail to parse or validate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TypesError {
    /// The string is not a digest of the form `algorithm:encoded`, or its
    /// encoded part is wrong for its algorithm.
    #[error("invalid digest {0:?}")]
    InvalidDigest(String),
    /// The string is a well-formed digest whose algorithm this registry does not support.
    #[error("unsupported digest algorithm in {0:?}")]
    UnsupportedDigestAlgorithm(String),
    /// The string is not a valid repository name.
    #[error("invalid repository name {0:?}")]
    InvalidName(String),
    /// The string is not a valid tag.
    #[error("invalid tag {0:?}")]
    InvalidTag(String),
    /// The `Range` or `Content-Range` header value is malformed or not satisfiable as written.
    #[error("invalid range {0:?}")]
    InvalidRange(String),
    /// The `Range` header asks for more than one range; callers may ignore the header.
    #[error("multiple ranges are not supported: {0:?}")]
    MultipleRanges(String),
    /// The string is not a valid media type (`type/subtype` per RFC 6838).
    #[error("invalid media type {0:?}")]
    InvalidMediaType(String),
    /// The manifest is malformed; the string describes the problem.
    #[error("invalid manifest: {0}")]
    InvalidManifest(String),
}

/// Implements `Display`, `FromStr`, `AsRef<str>`, `TryFrom<String>`/`TryFrom<&str>`,
/// `From<T> for String`, and serde (as a validated string) for a newtype whose
/// `parse(&str) -> Result<Self, TypesError>` and `as_str(&self) -> &str` exist.
macro_rules! string_newtype_impls {
    ($ty:ident) => {
        impl ::std::fmt::Display for $ty {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl ::std::str::FromStr for $ty {
            type Err = super::TypesError;
            fn from_str(s: &str) -> ::std::result::Result<Self, Self::Err> {
                Self::parse(s)
            }
        }

        impl ::std::convert::AsRef<str> for $ty {
            fn as_ref(&self) -> &str {
                self.as_str()
            }
        }

        impl ::std::convert::TryFrom<&str> for $ty {
            type Error = super::TypesError;
            fn try_from(s: &str) -> ::std::result::Result<Self, Self::Error> {
                Self::parse(s)
            }
        }

        impl ::std::convert::TryFrom<String> for $ty {
            type Error = super::TypesError;
            fn try_from(s: String) -> ::std::result::Result<Self, Self::Error> {
                Self::parse(&s)
            }
        }

        impl ::std::convert::From<$ty> for String {
            fn from(v: $ty) -> String {
                v.0
            }
        }

        impl ::serde::Serialize for $ty {
            fn serialize<S: ::serde::Serializer>(
                &self,
                serializer: S,
            ) -> ::std::result::Result<S::Ok, S::Error> {
                serializer.serialize_str(self.as_str())
            }
        }

        impl<'de> ::serde::Deserialize<'de> for $ty {
            fn deserialize<D: ::serde::Deserializer<'de>>(
                deserializer: D,
            ) -> ::std::result::Result<Self, D::Error> {
                struct V;
                impl ::serde::de::Visitor<'_> for V {
                    type Value = $ty;
                    fn expecting(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                        f.write_str(concat!("a string holding a valid ", stringify!($ty)))
                    }
                    fn visit_str<E: ::serde::de::Error>(
                        self,
                        v: &str,
                    ) -> ::std::result::Result<$ty, E> {
                        $ty::parse(v).map_err(E::custom)
                    }
                }
                deserializer.deserialize_str(V)
            }
        }
    };
}
pub(crate) use string_newtype_impls;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_messages_are_lowercase_and_carry_input() {
        let cases = [
            TypesError::InvalidDigest("x".into()),
            TypesError::UnsupportedDigestAlgorithm("x".into()),
            TypesError::InvalidName("x".into()),
            TypesError::InvalidTag("x".into()),
            TypesError::InvalidRange("x".into()),
            TypesError::MultipleRanges("x".into()),
            TypesError::InvalidMediaType("x".into()),
            TypesError::InvalidManifest("x".into()),
        ];
        for e in cases {
            let msg = e.to_string();
            assert!(msg.chars().next().unwrap().is_lowercase(), "{msg}");
            assert!(msg.contains('x'), "{msg}");
        }
    }

    #[test]
    fn control_characters_are_escaped_in_messages() {
        let e = TypesError::InvalidTag("a\nb".into());
        assert!(!e.to_string().contains('\n'));
    }

    #[test]
    fn reexports_are_usable() {
        let d = Digest::sha256_of(b"");
        let r = Reference::parse(d.as_str()).unwrap();
        assert_eq!(r, Reference::Digest(d));
        assert!(RepositoryName::parse("library/alpine").is_ok());
        assert!(Tag::parse("latest").is_ok());
        assert_eq!(
            ManifestKind::from_media_type(manifest::OCI_INDEX),
            Some(ManifestKind::OciIndex)
        );
    }
}
