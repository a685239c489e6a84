//! The service-account issuer's keys: RSA-2048, RS256, generated with
//! aws-lc-rs. The key id is derived from the public key as the apiserver
//! derives it (`pkg/serviceaccount/jwt.go keyIDFromPublicKey`: base64url of
//! the SHA-256 of the PKIX DER), and each key's JWK is what
//! `/openid/v1/jwks` serves (`kty`, `alg`, `use: sig`, `kid`, `n`, `e`).

use aws_lc_rs::digest::{SHA256, digest};
use aws_lc_rs::encoding::AsDer;
use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{KeyPair, RSA_PKCS1_2048_8192_SHA256, RSA_PKCS1_SHA256, RsaKeyPair, UnparsedPublicKey};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

#[derive(Debug, thiserror::Error)]
pub(super) enum SigningError {
    #[error("generating an RSA-2048 service-account signing key")]
    Generate,
    #[error("DER-encoding the public half of a new service-account key")]
    EncodePublic,
    #[error("signing a service-account token with key {kid}")]
    Sign { kid: String },
}

pub(super) struct SigningKey {
    kid: String,
    pair: RsaKeyPair,
    jwk: Value,
}

impl SigningKey {
    pub fn generate() -> Result<Self, SigningError> {
        let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(|_| SigningError::Generate)?;
        let public = pair.public_key();
        let spki = public.as_der().map_err(|_| SigningError::EncodePublic)?;
        let kid = b64(digest(&SHA256, spki.as_ref()).as_ref());
        let jwk = json!({
            "use": "sig",
            "kty": "RSA",
            "kid": kid,
            "alg": "RS256",
            "n": b64(public.modulus().big_endian_without_leading_zero()),
            "e": b64(public.exponent().big_endian_without_leading_zero()),
        });
        Ok(Self { kid, pair, jwk })
    }

    pub fn kid(&self) -> &str {
        &self.kid
    }

    pub fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// A compact JWS of `claims`, with the header the apiserver's go-jose
    /// signer writes (`alg` and `kid`, no `typ`).
    pub fn sign_jwt(&self, claims: &Value) -> Result<String, SigningError> {
        let header = json!({ "alg": "RS256", "kid": self.kid });
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let mut signature = vec![0; self.pair.public_modulus_len()];
        self.pair
            .sign(
                &RSA_PKCS1_SHA256,
                &SystemRandom::new(),
                input.as_bytes(),
                &mut signature,
            )
            .map_err(|_| SigningError::Sign { kid: self.kid.clone() })?;
        Ok(format!("{input}.{}", b64(&signature)))
    }

    /// Whether `signature` is this key's RS256 signature of `input`.
    pub fn verifies(&self, input: &[u8], signature: &[u8]) -> bool {
        UnparsedPublicKey::new(&RSA_PKCS1_2048_8192_SHA256, self.pair.public_key().as_ref())
            .verify(input, signature)
            .is_ok()
    }
}

/// A compact JWS split into what a verifier needs; None when it is not one
/// (the apiserver's authenticator then has no opinion on the token).
pub(super) struct ParsedJwt<'a> {
    pub header: Value,
    pub claims: Value,
    pub signing_input: &'a str,
    pub signature: Vec<u8>,
}

pub(super) fn parse_jwt(token: &str) -> Option<ParsedJwt<'_>> {
    let token = token.trim();
    let mut parts = token.split('.');
    let (h, c, s) = (parts.next()?, parts.next()?, parts.next()?);
    if parts.next().is_some() {
        return None;
    }
    let header = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(h).ok()?).ok()?;
    let claims = serde_json::from_slice(&URL_SAFE_NO_PAD.decode(c).ok()?).ok()?;
    let signature = URL_SAFE_NO_PAD.decode(s).ok()?;
    Some(ParsedJwt {
        header,
        claims,
        signing_input: &token[..h.len() + 1 + c.len()],
        signature,
    })
}

pub(super) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_verify_with_their_key_only() {
        let key = SigningKey::generate().expect("key");
        let other = SigningKey::generate().expect("key");
        let token = key.sign_jwt(&json!({ "sub": "x" })).expect("sign");
        let parsed = parse_jwt(&token).expect("a JWS");
        assert_eq!(parsed.header["kid"], key.kid());
        assert_eq!(parsed.header.as_object().map(|h| h.len()), Some(2), "alg and kid only");
        assert!(key.verifies(parsed.signing_input.as_bytes(), &parsed.signature));
        assert!(!other.verifies(parsed.signing_input.as_bytes(), &parsed.signature));
        assert_eq!(key.kid().len(), 43, "base64url of a SHA-256");
        assert!(parse_jwt("a.b").is_none() && parse_jwt("{}.e30.x").is_none());
    }
}
