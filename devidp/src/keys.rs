//! Signing keys of the development IdP: generation with aws-lc-rs, raw JWS
//! signing, and each key's public half rendered once as a JWK.

use aws_lc_rs::rand::{SecureRandom, SystemRandom};
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, Ed25519KeyPair, KeyPair, RSA_PKCS1_SHA256, RsaKeyPair,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::DevIdpError;

/// The JWS algorithms the dev IdP signs with, one current key each.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Alg {
    Rs256,
    Es256,
    EdDsa,
}

impl Alg {
    /// Order matters: it is the order of the current keys in the JWKS.
    pub(crate) const ALL: [Alg; 3] = [Alg::Rs256, Alg::Es256, Alg::EdDsa];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
            Alg::EdDsa => "EdDSA",
        }
    }

    /// JOSE algorithm names are case-sensitive (RFC 7515 §4.1.1), so this is
    /// an exact match: a test asking for "rs256" gets an error, not RS256.
    pub(crate) fn parse(name: &str) -> Result<Self, DevIdpError> {
        Alg::ALL
            .into_iter()
            .find(|alg| alg.name() == name)
            .ok_or_else(|| DevIdpError::UnsupportedAlg { alg: name.to_owned() })
    }
}

enum Material {
    Rsa(RsaKeyPair),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// One private key plus its precomputed public JWK.
pub(crate) struct SigningKey {
    alg: Alg,
    kid: String,
    material: Material,
    jwk: Value,
}

impl SigningKey {
    pub(crate) fn generate(alg: Alg) -> Result<Self, DevIdpError> {
        let keygen_failed = |_| DevIdpError::KeyGeneration { alg: alg.name() };
        let kid = random_kid()?;
        let (material, key_fields) = match alg {
            Alg::Rs256 => {
                let pair = RsaKeyPair::generate(KeySize::Rsa2048).map_err(keygen_failed)?;
                let public = pair.public_key();
                let fields = json!({
                    "kty": "RSA",
                    "n": b64(public.modulus().big_endian_without_leading_zero()),
                    "e": b64(public.exponent().big_endian_without_leading_zero()),
                });
                (Material::Rsa(pair), fields)
            }
            Alg::Es256 => {
                let pair = EcdsaKeyPair::generate(&ECDSA_P256_SHA256_FIXED_SIGNING).map_err(keygen_failed)?;
                let point = pair.public_key().as_ref();
                // Uncompressed SEC1 point: 0x04 || x (32 bytes) || y (32 bytes).
                let (x, y) = match point {
                    [0x04, rest @ ..] if rest.len() == 64 => rest.split_at(32),
                    _ => {
                        return Err(DevIdpError::PublicKeyEncoding {
                            alg: alg.name(),
                            len: point.len(),
                        });
                    }
                };
                let fields = json!({"kty": "EC", "crv": "P-256", "x": b64(x), "y": b64(y)});
                (Material::Ec(pair), fields)
            }
            Alg::EdDsa => {
                let pair = Ed25519KeyPair::generate().map_err(keygen_failed)?;
                let fields = json!({
                    "kty": "OKP",
                    "crv": "Ed25519",
                    "x": b64(pair.public_key().as_ref()),
                });
                (Material::Ed(pair), fields)
            }
        };
        let mut jwk = key_fields;
        if let Value::Object(map) = &mut jwk {
            map.insert("kid".to_owned(), Value::from(kid.as_str()));
            map.insert("use".to_owned(), Value::from("sig"));
            map.insert("alg".to_owned(), Value::from(alg.name()));
        }
        Ok(Self {
            alg,
            kid,
            material,
            jwk,
        })
    }

    pub(crate) fn kid(&self) -> &str {
        &self.kid
    }

    pub(crate) fn jwk(&self) -> &Value {
        &self.jwk
    }

    /// Signs the JWS signing input; the result is the raw signature that goes
    /// (base64url-encoded) in the third token segment.
    pub(crate) fn sign(&self, signing_input: &[u8]) -> Result<Vec<u8>, DevIdpError> {
        let failed = |_| DevIdpError::Signing {
            alg: self.alg.name(),
            kid: self.kid.clone(),
        };
        match &self.material {
            Material::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                pair.sign(&RSA_PKCS1_SHA256, &SystemRandom::new(), signing_input, &mut signature)
                    .map_err(failed)?;
                Ok(signature)
            }
            Material::Ec(pair) => Ok(pair
                .sign(&SystemRandom::new(), signing_input)
                .map_err(failed)?
                .as_ref()
                .to_vec()),
            Material::Ed(pair) => Ok(pair.sign(signing_input).as_ref().to_vec()),
        }
    }
}

pub(crate) fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

/// Random rather than derived from the key so that a rotated key set never
/// reuses a kid, which is what cache-invalidation tests key on.
fn random_kid() -> Result<String, DevIdpError> {
    let mut bytes = [0u8; 8];
    SystemRandom::new().fill(&mut bytes).map_err(|_| DevIdpError::Random)?;
    Ok(bytes.iter().map(|b| format!("{b:02x}")).collect())
}
