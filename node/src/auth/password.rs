//! Password hashes: argon2id for the passwords people choose, SHA-256 for the 256-bit random
//! passwords of machine tokens (a slow hash adds nothing to a secret nobody can guess), and a
//! per-process cache of passwords already checked, so a client that logs in again and again
//! costs a SHA-256, not an argon2 run.

use std::collections::HashMap;
use std::sync::Mutex;

use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use base64::Engine;
use ring::rand::SecureRandom;
use sha2::{Digest, Sha256};

/// Prefix of a token password's hash.
const SHA256_PREFIX: &str = "$sha256$";
/// Entries the cache of checked passwords keeps before it starts over.
const CHECKED_MAX: usize = 10_000;

/// `n` random bytes.
pub fn random_bytes<const N: usize>() -> [u8; N] {
    let mut b = [0u8; N];
    ring::rand::SystemRandom::new()
        .fill(&mut b)
        .expect("the system random source cannot fail");
    b
}

/// A random non-zero u64 (uids, stamps).
pub fn random_id() -> u64 {
    u64::from_le_bytes(random_bytes::<8>()).max(1)
}

/// A new machine-token password: 256 random bits, base64url.
pub fn generate_token_password() -> String {
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(random_bytes::<32>())
}

/// Hashes a user's password (argon2id, default parameters, random salt).
pub fn hash_user_password(password: &str) -> String {
    let salt = SaltString::encode_b64(&random_bytes::<16>()).expect("16 bytes make a salt");
    argon2::Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .expect("argon2 with default parameters cannot fail")
        .to_string()
}

/// An argon2 hash of a random password nobody knows: verified against for names that do not
/// exist, so that they cost what an existing name costs. Made once per process.
pub fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_user_password(&generate_token_password()))
}

/// Hashes a machine token's generated password.
pub fn hash_token_password(password: &str) -> String {
    format!(
        "{SHA256_PREFIX}{}",
        hex::encode(Sha256::digest(password.as_bytes()))
    )
}

/// Whether `password` matches `hash` (either kind). Slow for argon2 hashes: call on the
/// blocking pool.
pub fn verify(hash: &str, password: &str) -> bool {
    if let Some(hex_digest) = hash.strip_prefix(SHA256_PREFIX) {
        let got = hex::encode(Sha256::digest(password.as_bytes()));
        return same(got.as_bytes(), hex_digest.as_bytes());
    }
    match PasswordHash::new(hash) {
        Ok(parsed) => argon2::Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
    }
}

/// Equality in time that depends on the length only.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Passwords this node has verified, by (login name, password stamp): a keyed SHA-256 of the
/// password. A changed password has a new stamp, so an old entry never matches it.
#[derive(Debug)]
pub struct Checked {
    key: [u8; 32],
    entries: Mutex<HashMap<(String, u64), [u8; 32]>>,
}

impl Default for Checked {
    fn default() -> Self {
        Checked {
            key: random_bytes::<32>(),
            entries: Mutex::default(),
        }
    }
}

impl Checked {
    fn mac(&self, password: &str) -> [u8; 32] {
        let mut h = Sha256::new();
        h.update(self.key);
        h.update(password.as_bytes());
        h.finalize().into()
    }

    /// Whether this password was verified for this name and stamp.
    pub fn contains(&self, name: &str, stamp: u64, password: &str) -> bool {
        let mac = self.mac(password);
        let entries = self.entries.lock().expect("checked lock");
        entries
            .get(&(name.to_string(), stamp))
            .is_some_and(|m| same(m, &mac))
    }

    /// Remembers a verified password.
    pub fn insert(&self, name: &str, stamp: u64, password: &str) {
        let mac = self.mac(password);
        let mut entries = self.entries.lock().expect("checked lock");
        if entries.len() >= CHECKED_MAX {
            entries.clear();
        }
        entries.insert((name.to_string(), stamp), mac);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_kinds_of_hash_verify_only_their_password() {
        let h = hash_user_password("s3cret");
        assert!(h.starts_with("$argon2id$"));
        assert!(verify(&h, "s3cret"));
        assert!(!verify(&h, "s3creT"));
        let p = generate_token_password();
        let t = hash_token_password(&p);
        assert!(verify(&t, &p));
        assert!(!verify(&t, "x"));
        assert!(!verify("garbage", "x"));
    }

    #[test]
    fn the_cache_matches_name_stamp_and_password() {
        let c = Checked::default();
        c.insert("a", 1, "pw");
        assert!(c.contains("a", 1, "pw"));
        assert!(!c.contains("a", 2, "pw"));
        assert!(!c.contains("a", 1, "pW"));
        assert!(!c.contains("b", 1, "pw"));
    }
}
