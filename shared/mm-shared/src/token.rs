//! Session tokens: JSON Web Tokens signed with Ed25519 (`alg: EdDSA`), so that a gateway
//! checks a token with the session service's *public* key, without asking anyone.
//!
//! `<header>.<claims>.<signature>`, each part base64url without padding (RFC 7519, the
//! signature RFC 8037's Ed25519 over the first two parts). The header names the key
//! (`kid`); the claims say whose token it is (`sub`), its id (`jti`, what a logout
//! revokes), and when it was issued and ends (`iat`, `exp`, Unix seconds). Any JWT tool
//! decodes one; only a holder of the private key (the session service, which keeps it in
//! Redis) can make one.
//!
//! The cryptography is `ring`'s; this module only frames it. What a token does *not* say
//! is whether it was revoked: the session service records revocations in KV bucket
//! [`crate::protocol::buckets::REVOKED_TOKENS`] and gateways follow it.

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use ring::signature::{ED25519, Ed25519KeyPair, KeyPair as _, UnparsedPublicKey};
use serde::{Deserialize, Serialize};

/// Longest token accepted anywhere (a real one is ~250 characters with a 64-character
/// player id): anything longer is refused before it is decoded.
pub const MAX_TOKEN_LEN: usize = 512;

/// What a token says.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Claims {
    /// The player id.
    pub sub: String,
    /// The token's own id (16 random bytes, base64url): its Redis session key and what a
    /// revocation names.
    pub jti: String,
    /// Issued at, Unix seconds.
    pub iat: u64,
    /// Ends at, Unix seconds (the token is refused from that second on).
    pub exp: u64,
}

impl Claims {
    /// Has the token ended at `now_ms` (Unix ms)?
    pub fn expired_at(&self, now_ms: u64) -> bool {
        now_ms >= self.exp.saturating_mul(1000)
    }

    /// When it ends, in Unix ms.
    pub fn expires_at_ms(&self) -> u64 {
        self.exp.saturating_mul(1000)
    }
}

#[derive(Serialize, Deserialize)]
struct Header<'a> {
    alg: &'a str,
    typ: &'a str,
    kid: &'a str,
}

const ALG: &str = "EdDSA";

/// Why a token was refused. Callers answer every one with the same 401: what was wrong
/// is for logs and tests, not for the client.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("not a token (three base64url parts, at most {MAX_TOKEN_LEN} characters)")]
    Malformed,
    #[error("the header is not an EdDSA JWT header with a key id")]
    BadHeader,
    #[error("signed with key `{0}`, which is not known")]
    UnknownKey(String),
    #[error("the signature does not match")]
    BadSignature,
    #[error("the claims are unreadable")]
    BadClaims,
    #[error("expired")]
    Expired,
}

/// A key id: 8 random bytes as hex (a KV key and a Redis hash field as it is).
pub fn is_key_id(value: &str) -> bool {
    value.len() == 16 && value.bytes().all(|b| b.is_ascii_hexdigit())
}

/// Signs `claims` with `key` (whose id is `kid`).
pub fn sign(key: &Ed25519KeyPair, kid: &str, claims: &Claims) -> String {
    let header = serde_json::to_vec(&Header { alg: ALG, typ: "JWT", kid }).unwrap_or_default();
    let claims = serde_json::to_vec(claims).unwrap_or_default();
    let mut token = URL_SAFE_NO_PAD.encode(header);
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(claims, &mut token);
    let signature = key.sign(token.as_bytes());
    token.push('.');
    URL_SAFE_NO_PAD.encode_string(signature.as_ref(), &mut token);
    token
}

/// The public half of `key`, base64url (what KV `session_keys` holds).
pub fn public_key(key: &Ed25519KeyPair) -> String {
    URL_SAFE_NO_PAD.encode(key.public_key().as_ref())
}

/// A token split and its header read, its signature not checked yet.
#[derive(Debug)]
pub struct Unverified<'a> {
    signed: &'a str,
    claims: &'a str,
    signature: &'a str,
    kid: String,
}

impl<'a> Unverified<'a> {
    /// Splits `token` and reads its header; nothing in it is trusted yet.
    pub fn parse(token: &'a str) -> Result<Self, TokenError> {
        if token.len() > MAX_TOKEN_LEN
            || !token.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_' || b == b'.')
        {
            return Err(TokenError::Malformed);
        }
        let (signed, signature) = token.rsplit_once('.').ok_or(TokenError::Malformed)?;
        let (header, claims) = signed.split_once('.').ok_or(TokenError::Malformed)?;
        if header.is_empty() || claims.is_empty() || signature.is_empty() || claims.contains('.') {
            return Err(TokenError::Malformed);
        }
        let header = URL_SAFE_NO_PAD.decode(header).map_err(|_| TokenError::BadHeader)?;
        let header: Header<'_> = serde_json::from_slice(&header).map_err(|_| TokenError::BadHeader)?;
        if header.alg != ALG || !is_key_id(header.kid) {
            return Err(TokenError::BadHeader);
        }
        let kid = header.kid.to_owned();
        Ok(Self { signed, claims, signature, kid })
    }

    /// The id of the key it says it was signed with.
    pub fn kid(&self) -> &str {
        &self.kid
    }

    /// Checks the signature with `public_key` (the 32 raw bytes) and reads the claims;
    /// an expired token is refused as of `now_ms`.
    pub fn verify(self, public_key: &[u8], now_ms: u64) -> Result<Claims, TokenError> {
        let signature = URL_SAFE_NO_PAD.decode(self.signature).map_err(|_| TokenError::BadSignature)?;
        UnparsedPublicKey::new(&ED25519, public_key)
            .verify(self.signed.as_bytes(), &signature)
            .map_err(|_| TokenError::BadSignature)?;
        let claims = URL_SAFE_NO_PAD.decode(self.claims).map_err(|_| TokenError::BadClaims)?;
        let claims: Claims = serde_json::from_slice(&claims).map_err(|_| TokenError::BadClaims)?;
        if claims.sub.is_empty() || claims.jti.is_empty() {
            return Err(TokenError::BadClaims);
        }
        if claims.expired_at(now_ms) {
            return Err(TokenError::Expired);
        }
        Ok(claims)
    }
}

/// What a token *says*, without checking anything: for tools and tests that need its id
/// or expiry. Never a reason to trust it.
pub fn unverified_claims(token: &str) -> Option<Claims> {
    let mut parts = token.split('.');
    let claims = parts.nth(1)?;
    serde_json::from_slice(&URL_SAFE_NO_PAD.decode(claims).ok()?).ok()
}

/// Decodes a public key as KV `session_keys` holds it (base64url of 32 bytes).
pub fn decode_public_key(text: &str) -> Option<Vec<u8>> {
    URL_SAFE_NO_PAD.decode(text).ok().filter(|bytes| bytes.len() == 32)
}

/// A token id: 16 random bytes, base64url (22 characters; a KV key as it is).
pub fn token_id(random: &[u8; 16]) -> String {
    URL_SAFE_NO_PAD.encode(random)
}

/// Is `value` the shape of a token id ([`token_id`])?
pub fn is_token_id(value: &str) -> bool {
    value.len() == 22 && value.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

#[cfg(test)]
mod tests {
    use super::*;
    use ring::rand::SystemRandom;

    fn key() -> Ed25519KeyPair {
        let pkcs8 = Ed25519KeyPair::generate_pkcs8(&SystemRandom::new()).expect("key");
        Ed25519KeyPair::from_pkcs8(pkcs8.as_ref()).expect("parses")
    }

    fn claims() -> Claims {
        Claims { sub: "ana".into(), jti: token_id(&[7; 16]), iat: 1_000, exp: 4_600 }
    }

    fn public(key: &Ed25519KeyPair) -> Vec<u8> {
        decode_public_key(&public_key(key)).expect("32 bytes")
    }

    #[test]
    fn a_signed_token_verifies_with_its_public_key_until_it_expires() {
        let key = key();
        let token = sign(&key, "00112233aabbccdd", &claims());
        assert!(token.len() < MAX_TOKEN_LEN, "{}", token.len());
        assert_eq!(unverified_claims(&token), Some(claims()));
        let parsed = Unverified::parse(&token).expect("parses");
        assert_eq!(parsed.kid(), "00112233aabbccdd");
        assert_eq!(parsed.verify(&public(&key), 4_599_999).expect("valid"), claims());
        let parsed = Unverified::parse(&token).expect("parses");
        assert_eq!(parsed.verify(&public(&key), 4_600_000), Err(TokenError::Expired));
    }

    #[test]
    fn another_key_a_changed_claim_or_a_changed_header_is_refused() {
        let key = key();
        let token = sign(&key, "00112233aabbccdd", &claims());
        let other = key_other();
        assert_eq!(
            Unverified::parse(&token).expect("parses").verify(&other, 0),
            Err(TokenError::BadSignature)
        );

        // Claims of another player under the same signature.
        let (header, rest) = token.split_once('.').expect("parts");
        let (_, signature) = rest.split_once('.').expect("parts");
        let forged = Claims { sub: "eve".into(), ..claims() };
        let forged = URL_SAFE_NO_PAD.encode(serde_json::to_vec(&forged).expect("json"));
        let tampered = format!("{header}.{forged}.{signature}");
        assert_eq!(
            Unverified::parse(&tampered).expect("parses").verify(&public(&key), 0),
            Err(TokenError::BadSignature)
        );

        // The `none` algorithm and headers without a usable key id.
        for header in [
            r#"{"alg":"none","typ":"JWT","kid":"00112233aabbccdd"}"#,
            r#"{"alg":"HS256","typ":"JWT","kid":"00112233aabbccdd"}"#,
            r#"{"alg":"EdDSA","typ":"JWT","kid":"../../etc"}"#,
            r#"{"alg":"EdDSA","typ":"JWT"}"#,
        ] {
            let header = URL_SAFE_NO_PAD.encode(header);
            let token = format!("{header}.{rest}");
            assert_eq!(Unverified::parse(&token).expect_err(&token), TokenError::BadHeader);
        }
    }

    fn key_other() -> Vec<u8> {
        public(&key())
    }

    #[test]
    fn malformed_tokens_are_refused_before_decoding() {
        for token in ["", "abc", "a.b", "a..c", "a.b.c.d", "a b.c.d", &"a.b.".repeat(200), "ab.cd.ef%"] {
            assert!(Unverified::parse(token).is_err(), "{token:?}");
        }
        assert_eq!(Unverified::parse("a.b.c").expect_err("not base64 JSON"), TokenError::BadHeader);
    }

    #[test]
    fn ids_have_their_shapes() {
        assert!(is_token_id(&token_id(&[255; 16])));
        assert!(!is_token_id("short"));
        assert!(is_key_id("00112233aabbccdd"));
        assert!(!is_key_id("00112233aabbccdx"));
    }
}
