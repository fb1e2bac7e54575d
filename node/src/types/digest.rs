//! Content digests (`algorithm:encoded`) and the hasher that produces them.
//!
//! Owns the OCI digest grammar (image-spec `descriptor.md`):
//!
//! ```text
//! digest              := algorithm ":" encoded
//! algorithm           := algorithm-component (algorithm-separator algorithm-component)*
//! algorithm-component := [a-z0-9]+
//! algorithm-separator := [+._-]
//! encoded             := [a-zA-Z0-9=_-]+
//! ```
//!
//! Only `sha256` is supported for storage. A string that matches the grammar
//! but names another algorithm is [`TypesError::UnsupportedDigestAlgorithm`];
//! anything else that fails is [`TypesError::InvalidDigest`].
//!
//! Invariant: every [`Digest`] is exactly `sha256:` followed by 64 lowercase
//! hex characters, so [`Digest::hex`] is safe to use as a file name (no `/`,
//! no `.`, no path traversal) and two digests of the same content compare equal.

use super::TypesError;
use sha2::Digest as _;

/// The only digest algorithm this registry stores content under.
pub const SHA256: &str = "sha256";

/// Length of the hex encoding of a SHA-256 hash.
pub const SHA256_HEX_LEN: usize = 64;

/// `"sha256:"`, the prefix of every [`Digest`] string.
const SHA256_PREFIX: &str = "sha256:";

/// A validated content digest, always `sha256:<64 lowercase hex>`.
#[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
pub struct Digest(String);

impl Digest {
    /// Parses `algorithm:encoded`; see the module docs for which errors mean what.
    pub fn parse(s: &str) -> Result<Digest, TypesError> {
        let invalid = || TypesError::InvalidDigest(s.to_owned());
        let (algorithm, encoded) = s.split_once(':').ok_or_else(invalid)?;
        if !is_algorithm(algorithm) || !is_encoded(encoded) {
            return Err(invalid());
        }
        if algorithm != SHA256 {
            return Err(TypesError::UnsupportedDigestAlgorithm(s.to_owned()));
        }
        if !is_sha256_hex(encoded) {
            return Err(invalid());
        }
        Ok(Digest(s.to_owned()))
    }

    /// Builds a sha256 digest from its 64-character lowercase hex encoding alone
    /// (e.g. a blob file name read back from disk).
    pub fn from_sha256_hex(hex: &str) -> Result<Digest, TypesError> {
        if is_sha256_hex(hex) {
            Ok(Digest(format!("{SHA256_PREFIX}{hex}")))
        } else {
            Err(TypesError::InvalidDigest(hex.to_owned()))
        }
    }

    /// Builds a sha256 digest from the raw 32-byte hash.
    pub fn from_sha256_bytes(hash: [u8; 32]) -> Digest {
        Digest(format!("{SHA256_PREFIX}{}", hex::encode(hash)))
    }

    /// The sha256 digest of `bytes`.
    pub fn sha256_of(bytes: &[u8]) -> Digest {
        let mut hasher = DigestHasher::new();
        hasher.update(bytes);
        hasher.finish()
    }

    /// The algorithm part, e.g. `"sha256"`.
    pub fn algorithm(&self) -> &str {
        &self.0[..SHA256.len()]
    }

    /// The encoded part (64 lowercase hex characters), without the algorithm prefix.
    pub fn hex(&self) -> &str {
        &self.0[SHA256_PREFIX.len()..]
    }

    /// The whole digest string, e.g. `"sha256:e3b0c442…"`.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Whether `bytes` hash to this digest.
    pub fn matches(&self, bytes: &[u8]) -> bool {
        Digest::sha256_of(bytes) == *self
    }
}

super::string_newtype_impls!(Digest);

/// `algorithm-component (algorithm-separator algorithm-component)*`.
fn is_algorithm(s: &str) -> bool {
    let mut after_separator = true; // at the start, as after a separator, a component must begin
    for b in s.bytes() {
        match b {
            b'a'..=b'z' | b'0'..=b'9' => after_separator = false,
            b'+' | b'.' | b'_' | b'-' if !after_separator => after_separator = true,
            _ => return false,
        }
    }
    !after_separator
}

/// `[a-zA-Z0-9=_-]+`.
fn is_encoded(s: &str) -> bool {
    !s.is_empty()
        && s.bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'=' | b'_' | b'-'))
}

/// Exactly 64 characters of `[0-9a-f]`.
fn is_sha256_hex(s: &str) -> bool {
    s.len() == SHA256_HEX_LEN && s.bytes().all(|b| matches!(b, b'0'..=b'9' | b'a'..=b'f'))
}

/// An incremental sha256 hasher producing a [`Digest`].
#[derive(Clone, Default)]
pub struct DigestHasher(sha2::Sha256);

impl DigestHasher {
    /// A hasher that has seen no bytes yet.
    pub fn new() -> DigestHasher {
        DigestHasher(sha2::Sha256::new())
    }

    /// Feeds `bytes` to the hash.
    pub fn update(&mut self, bytes: &[u8]) {
        self.0.update(bytes);
    }

    /// The digest of every byte fed so far.
    pub fn finish(self) -> Digest {
        let hash: [u8; 32] = self.0.finalize().into();
        Digest::from_sha256_bytes(hash)
    }
}

impl std::fmt::Debug for DigestHasher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DigestHasher")
            .field("algorithm", &SHA256)
            .finish()
    }
}

/// Lets a hasher be the sink of `std::io::copy`; never fails.
impl std::io::Write for DigestHasher {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.update(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const EMPTY: &str = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
    const ABC: &str = "sha256:ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad";

    #[test]
    fn known_vectors() {
        assert_eq!(Digest::sha256_of(b"").as_str(), EMPTY);
        assert_eq!(Digest::sha256_of(b"abc").as_str(), ABC);
        let mut h = DigestHasher::new();
        h.update(b"a");
        let fork = h.clone();
        h.update(b"bc");
        assert_eq!(h.finish().as_str(), ABC);
        assert_eq!(fork.finish(), Digest::sha256_of(b"a"));
        assert_eq!(DigestHasher::default().finish().as_str(), EMPTY);
    }

    #[test]
    fn io_write_feeds_the_hash() {
        let mut h = DigestHasher::new();
        std::io::copy(&mut &b"abc"[..], &mut h).unwrap();
        assert_eq!(h.finish().as_str(), ABC);
    }

    #[test]
    fn accessors() {
        let d = Digest::parse(ABC).unwrap();
        assert_eq!(d.algorithm(), "sha256");
        assert_eq!(d.hex(), &ABC[7..]);
        assert_eq!(d.as_str(), ABC);
        assert_eq!(d.to_string(), ABC);
        assert_eq!(ABC.parse::<Digest>().unwrap(), d);
        assert!(d.matches(b"abc"));
        assert!(!d.matches(b"abd"));
        assert_eq!(Digest::from_sha256_hex(d.hex()).unwrap(), d);
        assert_eq!(String::from(d.clone()), ABC);
    }

    #[test]
    fn rejects_malformed() {
        for s in [
            "",
            ":",
            "sha256",
            "sha256:",
            ":abc",
            "SHA256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:E3B0C44298FC1C149AFBF4C8996FB92427AE41E4649B934CA495991B7852B855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b8555",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b85g",
            "sha256:../../../../etc/passwd",
            "sha256:e3b0c44298fc1c149afbf4c8996fb924/7ae41e4649b934ca495991b7852b855",
            " sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855 ",
            "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855:",
            "sha256::e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
            "-sha256:abc",
            "sha256-:abc",
            "sha--256:abc",
            "sha256:é",
        ] {
            assert_eq!(
                Digest::parse(s),
                Err(TypesError::InvalidDigest(s.to_owned())),
                "{s:?}"
            );
        }
        assert!(Digest::from_sha256_hex("..").is_err());
        assert!(Digest::from_sha256_hex(&ABC[6..]).is_err());
    }

    #[test]
    fn other_algorithms_are_unsupported() {
        for s in [
            "sha512:401b09eab3c013d4ca54922bb802bec8fd5318192b0a75f201d8b3727429080fb337591abd3e44453b954555b7a0812e1081c39b740293f765eae731f5a65ed1",
            "multihash+base58:QmRZxt2b1FVZPNqd8hsiykDL3TdBDeTSPX9Kv46HmX4Gx8",
            "sha256+b64u:LCa0a2j_xo_5m0U8HTBBNBNCLXBkg7-g-YpeiGJm564",
            "md5:abc=",
        ] {
            assert_eq!(
                Digest::parse(s),
                Err(TypesError::UnsupportedDigestAlgorithm(s.to_owned())),
                "{s:?}"
            );
        }
    }

    #[test]
    fn serde_as_string_and_validates() {
        let d = Digest::parse(ABC).unwrap();
        let json = serde_json::to_string(&d).unwrap();
        assert_eq!(json, format!("\"{ABC}\""));
        assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d);
        let err = serde_json::from_str::<Digest>("\"sha256:xyz\"").unwrap_err();
        assert!(err.to_string().contains("invalid digest"), "{err}");
        assert!(serde_json::from_str::<Digest>("42").is_err());
    }

    /// Reference oracle written independently of the parser: `None` = grammatical
    /// but unsupported, `Some(true)` = accepted, `Some(false)` = invalid.
    fn oracle(s: &str) -> Option<bool> {
        let Some((alg, enc)) = s.split_once(':') else {
            return Some(false);
        };
        let alg_ok = alg.split(['+', '.', '_', '-']).all(|c| {
            !c.is_empty()
                && c.chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
        });
        let enc_ok = !enc.is_empty()
            && enc
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '=' || c == '_' || c == '-');
        if !alg_ok || !enc_ok {
            return Some(false);
        }
        if alg != "sha256" {
            return None;
        }
        Some(enc.len() == 64 && enc.chars().all(|c| "0123456789abcdef".contains(c)))
    }

    fn near_digest() -> impl Strategy<Value = String> {
        prop_oneof![
            "[a-z0-9+._:=A-F-]{0,12}:[0-9a-fA-Z=_.:/-]{0,70}",
            "sha256:[0-9a-f]{62,66}",
            "sha256:[0-9a-fG/.]{64}",
            "[a-z0-9]{1,4}([+._-][a-z0-9]{1,3}){0,3}:[a-zA-Z0-9=_-]{1,80}",
            "\\PC{0,80}",
        ]
    }

    proptest! {
        #[test]
        fn round_trip(bytes in proptest::collection::vec(any::<u8>(), 0..256)) {
            let d = Digest::sha256_of(&bytes);
            prop_assert_eq!(Digest::parse(d.as_str()).unwrap(), d.clone());
            prop_assert_eq!(d.to_string().parse::<Digest>().unwrap(), d.clone());
            let json = serde_json::to_string(&d).unwrap();
            prop_assert_eq!(serde_json::from_str::<Digest>(&json).unwrap(), d.clone());
            prop_assert!(d.hex().bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        }

        #[test]
        fn never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..200)) {
            let s = String::from_utf8_lossy(&bytes);
            let _ = Digest::parse(&s);
            let _ = Digest::from_sha256_hex(&s);
        }

        #[test]
        fn accepts_exactly_the_grammar(s in near_digest()) {
            match (oracle(&s), Digest::parse(&s)) {
                (Some(true), Ok(d)) => {
                    prop_assert_eq!(d.as_str(), s.as_str());
                    prop_assert_eq!(d.algorithm(), "sha256");
                }
                (Some(false), Err(TypesError::InvalidDigest(e))) => prop_assert_eq!(e, s),
                (None, Err(TypesError::UnsupportedDigestAlgorithm(e))) => prop_assert_eq!(e, s),
                (o, r) => prop_assert!(false, "{:?}: oracle {:?}, parser {:?}", s, o, r),
            }
        }
    }
}
