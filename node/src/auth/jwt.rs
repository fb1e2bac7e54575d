//! Registry tokens: compact JWS (RFC 7515) signed with ES256 (ECDSA P-256, SHA-256), with the
//! claims of the Docker token spec plus berth's own (`uid`, `sid`, `typ`).
//!
//! Written on `ring` directly (already the TLS provider) rather than a JWT crate: a token is
//! three base64url parts, and checking one is short enough to read in full. The header must
//! say exactly `"alg":"ES256"` with a `kid` the cluster knows: `none`, HMAC and RSA tokens,
//! and tokens of unknown keys, fail before their claims are read. The signature is checked
//! over the exact bytes received; then the time claims and the audience.

use base64::Engine;
use base64::engine::general_purpose::URL_SAFE_NO_PAD as B64;
use ring::rand::SystemRandom;
use ring::signature::{self, EcdsaKeyPair, KeyPair};
use serde::{Deserialize, Serialize};

/// What a token grants on one resource (the Docker token spec's `access` entry).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Access {
    /// `repository` or `registry`.
    #[serde(rename = "type")]
    pub kind: String,
    /// Repository name, or `catalog`.
    pub name: String,
    /// Docker actions: `pull`, `push`, `delete`, `*`.
    pub actions: Vec<String>,
}

/// Which kind of token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum TokenType {
    /// A registry (bearer) token for `/v2/` requests.
    Access,
    /// A refresh token, exchanged at the token endpoint for access tokens.
    Refresh,
}

/// The claims berth signs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// Issuer: the service name.
    pub iss: String,
    /// Subject: the login name; empty for an anonymous token.
    pub sub: String,
    /// Audience: the service name.
    pub aud: String,
    /// Expiry (seconds since the epoch).
    pub exp: u64,
    /// Not before.
    pub nbf: u64,
    /// Issued at.
    pub iat: u64,
    /// Unique id.
    pub jti: String,
    /// What it grants (empty for a refresh token).
    #[serde(default)]
    pub access: Vec<Access>,
    /// The identity's `uid` (0: anonymous).
    pub uid: u64,
    /// The `stamp` of the password it was issued for (0: anonymous).
    pub sid: u64,
    /// Access or refresh.
    pub typ: TokenType,
}

#[derive(Serialize, Deserialize)]
struct Header {
    alg: String,
    typ: Option<String>,
    kid: Option<String>,
}

/// Why a token is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum JwtError {
    /// Not three base64url parts of JSON.
    #[error("malformed token")]
    Malformed,
    /// Not ES256, or no `kid`.
    #[error("token algorithm {0:?} is not accepted")]
    Algorithm(String),
    /// Signed by a key the cluster does not have.
    #[error("token signed by an unknown key")]
    UnknownKey,
    /// The signature does not verify.
    #[error("token signature is invalid")]
    Signature,
    /// Expired, or not yet valid.
    #[error("token has expired or is not yet valid")]
    Expired,
    /// For another service.
    #[error("token is for another service")]
    Audience,
}

/// A parsed signing key.
pub struct SigningKey {
    kid: String,
    pair: EcdsaKeyPair,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("kid", &self.kid)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Parses a PKCS#8 P-256 key.
    pub fn from_pkcs8(kid: &str, pkcs8: &[u8]) -> Option<SigningKey> {
        let pair = EcdsaKeyPair::from_pkcs8(
            &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
            pkcs8,
            &SystemRandom::new(),
        )
        .ok()?;
        Some(SigningKey {
            kid: kid.to_string(),
            pair,
        })
    }

    /// The key's `kid`.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// The uncompressed public point (to verify with).
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }

    /// Signs `claims` into a compact JWS.
    pub fn sign(&self, claims: &Claims) -> String {
        let header = Header {
            alg: "ES256".to_string(),
            typ: Some("JWT".to_string()),
            kid: Some(self.kid.clone()),
        };
        let mut out = B64.encode(serde_json::to_vec(&header).expect("json encodes"));
        out.push('.');
        out.push_str(&B64.encode(serde_json::to_vec(claims).expect("json encodes")));
        let sig = self
            .pair
            .sign(&SystemRandom::new(), out.as_bytes())
            .expect("ECDSA signing with a valid key cannot fail");
        out.push('.');
        out.push_str(&B64.encode(sig.as_ref()));
        out
    }
}

/// Makes a new P-256 key, PKCS#8 DER.
pub fn generate_pkcs8() -> Vec<u8> {
    EcdsaKeyPair::generate_pkcs8(
        &signature::ECDSA_P256_SHA256_FIXED_SIGNING,
        &SystemRandom::new(),
    )
    .expect("key generation cannot fail")
    .as_ref()
    .to_vec()
}

/// The `kid` of a token, after checking its header says ES256. The caller finds the key.
pub fn header_kid(token: &str) -> Result<String, JwtError> {
    let header = token.split('.').next().ok_or(JwtError::Malformed)?;
    let header: Header =
        serde_json::from_slice(&B64.decode(header).map_err(|_| JwtError::Malformed)?)
            .map_err(|_| JwtError::Malformed)?;
    if header.alg != "ES256" {
        return Err(JwtError::Algorithm(header.alg));
    }
    header
        .kid
        .ok_or_else(|| JwtError::Algorithm("ES256 without kid".to_string()))
}

/// Checks the signature of `token` with `public_key` (uncompressed P-256 point) and returns
/// its claims. Time and audience are checked by [`check_claims`].
pub fn verify_signature(token: &str, public_key: &[u8]) -> Result<Claims, JwtError> {
    let mut parts = token.split('.');
    let (Some(header), Some(payload), Some(sig), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(JwtError::Malformed);
    };
    let sig = B64.decode(sig).map_err(|_| JwtError::Malformed)?;
    let signed = &token[..header.len() + 1 + payload.len()];
    signature::UnparsedPublicKey::new(&signature::ECDSA_P256_SHA256_FIXED, public_key)
        .verify(signed.as_bytes(), &sig)
        .map_err(|_| JwtError::Signature)?;
    serde_json::from_slice(&B64.decode(payload).map_err(|_| JwtError::Malformed)?)
        .map_err(|_| JwtError::Malformed)
}

/// The `sub` a `Bearer` header value's token claims, *unverified*: only to name who presented
/// it in a log after the token was checked elsewhere.
pub fn presented_subject(authorization: &str) -> Option<String> {
    let token = authorization
        .strip_prefix("Bearer ")
        .or_else(|| authorization.strip_prefix("bearer "))?;
    let payload = token.split('.').nth(1)?;
    let claims: serde_json::Value = serde_json::from_slice(&B64.decode(payload).ok()?).ok()?;
    claims["sub"].as_str().map(str::to_string)
}

/// Checks the time claims (no leeway beyond `leeway_secs`) and the audience.
pub fn check_claims(
    claims: &Claims,
    service: &str,
    now_secs: u64,
    leeway_secs: u64,
) -> Result<(), JwtError> {
    if claims.aud != service || claims.iss != service {
        return Err(JwtError::Audience);
    }
    if now_secs >= claims.exp.saturating_add(leeway_secs)
        || now_secs.saturating_add(leeway_secs) < claims.nbf
    {
        return Err(JwtError::Expired);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims(exp: u64) -> Claims {
        Claims {
            iss: "berth".into(),
            sub: "alice".into(),
            aud: "berth".into(),
            exp,
            nbf: 100,
            iat: 100,
            jti: "j".into(),
            access: vec![Access {
                kind: "repository".into(),
                name: "a/b".into(),
                actions: vec!["pull".into()],
            }],
            uid: 7,
            sid: 9,
            typ: TokenType::Access,
        }
    }

    fn key(kid: &str) -> SigningKey {
        SigningKey::from_pkcs8(kid, &generate_pkcs8()).unwrap()
    }

    #[test]
    fn a_signed_token_verifies_with_its_key_only() {
        let (k1, k2) = (key("k1"), key("k2"));
        let t = k1.sign(&claims(200));
        assert_eq!(header_kid(&t).unwrap(), "k1");
        assert_eq!(verify_signature(&t, &k1.public_key()).unwrap(), claims(200));
        assert_eq!(
            verify_signature(&t, &k2.public_key()),
            Err(JwtError::Signature)
        );
    }

    #[test]
    fn a_changed_payload_fails_the_signature() {
        let k = key("k");
        let t = k.sign(&claims(200));
        let parts: Vec<&str> = t.split('.').collect();
        let mut c = claims(200);
        c.access[0].actions.push("push".into());
        let forged = format!(
            "{}.{}.{}",
            parts[0],
            B64.encode(serde_json::to_vec(&c).unwrap()),
            parts[2]
        );
        assert_eq!(
            verify_signature(&forged, &k.public_key()),
            Err(JwtError::Signature)
        );
    }

    #[test]
    fn alg_none_and_hmac_are_refused_before_anything_else() {
        for alg in ["none", "HS256", "RS256", "es256"] {
            let h = B64.encode(format!(r#"{{"alg":"{alg}","kid":"k"}}"#));
            let t = format!(
                "{h}.{}.",
                B64.encode(serde_json::to_vec(&claims(200)).unwrap())
            );
            assert_eq!(header_kid(&t), Err(JwtError::Algorithm(alg.to_string())));
        }
        assert_eq!(header_kid("x"), Err(JwtError::Malformed));
    }

    #[test]
    fn time_and_audience_are_checked() {
        let c = claims(200);
        assert!(check_claims(&c, "berth", 150, 0).is_ok());
        assert_eq!(check_claims(&c, "berth", 200, 0), Err(JwtError::Expired));
        assert_eq!(check_claims(&c, "berth", 50, 0), Err(JwtError::Expired));
        assert_eq!(check_claims(&c, "other", 150, 0), Err(JwtError::Audience));
    }
}
