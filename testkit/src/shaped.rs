//! Providers shaped like real ones, for tests: a key of every JWS algorithm
//! Envoy verifies (RS/PS/ES 256–512, EdDSA; HS* are shared secrets, see
//! [`hmac`]), published in a JWKS written the way a given IdP writes it
//! (with or without `alg`, with `x5c`/`x5t`, an `enc` key beside the `sig`
//! ones), behind a discovery document at any issuer path; tokens with any
//! claims and header, signed by aws-lc-rs.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::rsa::KeySize;
use aws_lc_rs::signature::{self, EcdsaKeyPair, Ed25519KeyPair, KeyPair as _, RsaKeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use bytes::Bytes;
use http::{Request, Response};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo};
use serde_json::{Value, json};
use tokio::net::TcpListener;

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

enum Material {
    Rsa(RsaKeyPair, &'static dyn signature::RsaEncoding),
    Ec(EcdsaKeyPair),
    Ed(Ed25519KeyPair),
}

/// A signing key for one algorithm and its public JWK (no `alg`, no `kid`:
/// add what the shape wants).
pub struct SigningKey {
    pub alg: &'static str,
    material: Material,
    pub jwk: Value,
}

impl SigningKey {
    /// `alg`: RS256/384/512, PS256/384/512, ES256/384/512 or EdDSA.
    pub fn generate(alg: &'static str) -> Self {
        let rsa = |encoding: &'static dyn signature::RsaEncoding| {
            let pair = RsaKeyPair::generate(KeySize::Rsa2048).expect("RSA key");
            let public = pair.public_key();
            let jwk = json!({
                "kty": "RSA",
                "n": b64(public.modulus().big_endian_without_leading_zero()),
                "e": b64(public.exponent().big_endian_without_leading_zero()),
            });
            (Material::Rsa(pair, encoding), jwk)
        };
        let ec = |a: &'static signature::EcdsaSigningAlgorithm, crv: &str, size: usize| {
            let pair = EcdsaKeyPair::generate(a).expect("EC key");
            let point = pair.public_key().as_ref().to_vec();
            let (x, y) = point[1..].split_at(size);
            let jwk = json!({"kty": "EC", "crv": crv, "x": b64(x), "y": b64(y)});
            (Material::Ec(pair), jwk)
        };
        let (material, jwk) = match alg {
            "RS256" => rsa(&signature::RSA_PKCS1_SHA256),
            "RS384" => rsa(&signature::RSA_PKCS1_SHA384),
            "RS512" => rsa(&signature::RSA_PKCS1_SHA512),
            "PS256" => rsa(&signature::RSA_PSS_SHA256),
            "PS384" => rsa(&signature::RSA_PSS_SHA384),
            "PS512" => rsa(&signature::RSA_PSS_SHA512),
            "ES256" => ec(&signature::ECDSA_P256_SHA256_FIXED_SIGNING, "P-256", 32),
            "ES384" => ec(&signature::ECDSA_P384_SHA384_FIXED_SIGNING, "P-384", 48),
            "ES512" => ec(&signature::ECDSA_P521_SHA512_FIXED_SIGNING, "P-521", 66),
            "EdDSA" => {
                let pair = Ed25519KeyPair::generate().expect("Ed25519 key");
                let jwk = json!({"kty": "OKP", "crv": "Ed25519", "x": b64(pair.public_key().as_ref())});
                (Material::Ed(pair), jwk)
            }
            other => panic!("no signing key for {other}"),
        };
        Self { alg, material, jwk }
    }

    /// A compact JWS of `claims` with `header` (its `alg` is set to this key's).
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let mut header = header.clone();
        header["alg"] = json!(self.alg);
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = match &self.material {
            Material::Rsa(pair, encoding) => {
                let mut sig = vec![0; pair.public_modulus_len()];
                pair.sign(*encoding, &SystemRandom::new(), input.as_bytes(), &mut sig)
                    .expect("RSA signature");
                sig
            }
            Material::Ec(pair) => pair
                .sign(&SystemRandom::new(), input.as_bytes())
                .expect("ECDSA signature")
                .as_ref()
                .to_vec(),
            Material::Ed(pair) => pair.sign(input.as_bytes()).as_ref().to_vec(),
        };
        format!("{input}.{}", b64(&sig))
    }
}

/// An HS256/384/512 token of `claims` with `header`, keyed by `secret`.
pub fn hmac(alg: &str, secret: &[u8], header: &Value, claims: &Value) -> String {
    let algorithm = match alg {
        "HS256" => aws_lc_rs::hmac::HMAC_SHA256,
        "HS384" => aws_lc_rs::hmac::HMAC_SHA384,
        "HS512" => aws_lc_rs::hmac::HMAC_SHA512,
        other => panic!("not an HMAC algorithm: {other}"),
    };
    let mut header = header.clone();
    header["alg"] = json!(alg);
    let input = format!(
        "{}.{}",
        b64(header.to_string().as_bytes()),
        b64(claims.to_string().as_bytes())
    );
    let tag = aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(algorithm, secret), input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

/// A provider on loopback serving a chosen discovery document and JWKS:
/// discovery at `<issuer>/.well-known/openid-configuration`, the JWKS at
/// `<origin>/keys`, the issuer being the origin plus `path` (Entra ID's
/// `/{tenant}/v2.0`, Keycloak's `/realms/{realm}`, Cognito's `/{pool}`, …).
pub struct ShapedIdp {
    pub addr: SocketAddr,
    pub issuer: String,
    jwks: Arc<Mutex<Value>>,
    task: tokio::task::JoinHandle<()>,
}

impl ShapedIdp {
    pub async fn start(path: &str, jwks: Value) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind shaped idp");
        let addr = listener.local_addr().expect("addr");
        let issuer = format!("http://{addr}{path}");
        let jwks = Arc::new(Mutex::new(jwks));
        let discovery = json!({
            "issuer": issuer,
            "jwks_uri": format!("http://{addr}/keys"),
            "authorization_endpoint": format!("http://{addr}/authorize"),
            "id_token_signing_alg_values_supported": ["RS256"],
        });
        let (doc_path, keys) = (format!("{path}/.well-known/openid-configuration"), jwks.clone());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (doc_path, keys, discovery) = (doc_path.clone(), keys.clone(), discovery.clone());
                tokio::spawn(async move {
                    let service = hyper::service::service_fn(move |req: Request<Incoming>| {
                        let body = if req.uri().path() == doc_path {
                            Some(discovery.clone())
                        } else if req.uri().path() == "/keys" {
                            Some(keys.lock().expect("jwks").clone())
                        } else {
                            None
                        };
                        async move {
                            let mut resp = Response::new(Full::new(Bytes::from(
                                body.as_ref().map(Value::to_string).unwrap_or_default(),
                            )));
                            if body.is_none() {
                                *resp.status_mut() = http::StatusCode::NOT_FOUND;
                            }
                            resp.headers_mut().insert(
                                http::header::CONTENT_TYPE,
                                http::HeaderValue::from_static("application/json"),
                            );
                            Ok::<_, std::convert::Infallible>(resp)
                        }
                    });
                    let _ = hyper_util::server::conn::auto::Builder::new(TokioExecutor::new())
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        Self {
            addr,
            issuer,
            jwks,
            task,
        }
    }

    /// Replaces the published JWKS.
    pub fn set_jwks(&self, jwks: Value) {
        *self.jwks.lock().expect("jwks") = jwks;
    }
}

impl Drop for ShapedIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}
