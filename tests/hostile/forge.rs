//! Building hostile tokens: encodings of the provider's public keys (the
//! secrets an algorithm-confusion attacker would HMAC with), signature
//! mangling (out-of-range ECDSA scalars, non-canonical Ed25519 `S`), and an
//! attacker's own P-256 key with a self-signed certificate for `x5c`.

use aws_lc_rs::rand::SystemRandom;
use aws_lc_rs::signature::{ECDSA_P256_SHA256_FIXED_SIGNING, EcdsaKeyPair, KeyPair};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

pub fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

pub fn unb64(s: &str) -> Vec<u8> {
    URL_SAFE_NO_PAD.decode(s).expect("canonical base64url")
}

/// The three segments of a compact JWS.
pub fn parts(token: &str) -> [&str; 3] {
    let v: Vec<&str> = token.split('.').collect();
    assert_eq!(v.len(), 3, "{token}");
    [v[0], v[1], v[2]]
}

/// `token` with its signature replaced by `sig`.
pub fn resign(token: &str, sig: &[u8]) -> String {
    let [h, c, _] = parts(token);
    format!("{h}.{c}.{}", b64(sig))
}

/// An HS256/384/512 token over exactly these JSON texts, keyed by `key`.
pub fn hmac(alg: &str, key: &[u8], header: &str, claims: &str) -> String {
    let algorithm = match alg {
        "HS256" => aws_lc_rs::hmac::HMAC_SHA256,
        "HS384" => aws_lc_rs::hmac::HMAC_SHA384,
        _ => aws_lc_rs::hmac::HMAC_SHA512,
    };
    let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let tag = aws_lc_rs::hmac::sign(&aws_lc_rs::hmac::Key::new(algorithm, key), input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

// === DER / PEM of public keys ===

fn der_len(n: usize) -> Vec<u8> {
    if n < 0x80 {
        return vec![n as u8];
    }
    let bytes: Vec<u8> = n.to_be_bytes().into_iter().skip_while(|&b| b == 0).collect();
    [vec![0x80 | bytes.len() as u8], bytes].concat()
}

fn der(tag: u8, body: &[u8]) -> Vec<u8> {
    [vec![tag], der_len(body.len()), body.to_vec()].concat()
}

fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|&b| b == 0).collect();
    let body = match trimmed.first() {
        None => vec![0],
        Some(b) if b & 0x80 != 0 => [vec![0], trimmed].concat(),
        Some(_) => trimmed,
    };
    der(0x02, &body)
}

fn spki(alg_id: &[u8], key: &[u8]) -> Vec<u8> {
    der(
        0x30,
        &[der(0x30, alg_id), der(0x03, &[&[0u8][..], key].concat())].concat(),
    )
}

pub fn pem(label: &str, der: &[u8]) -> String {
    let text = STANDARD.encode(der);
    let lines: Vec<&str> = text
        .as_bytes()
        .chunks(64)
        .map(|c| std::str::from_utf8(c).expect("base64 is ASCII"))
        .collect();
    format!("-----BEGIN {label}-----\n{}\n-----END {label}-----\n", lines.join("\n"))
}

/// Every byte string a confused verifier might use as the HMAC key for this
/// JWK: the JWK JSON, its RFC 7638 thumbprint input, SPKI and PKCS#1 DER and
/// PEM, and the raw key material.
pub fn public_key_encodings(jwk: &Value) -> Vec<(&'static str, Vec<u8>)> {
    let field = |k: &str| unb64(jwk[k].as_str().expect("jwk field"));
    let mut out = vec![("jwk-json", serde_json::to_vec(jwk).expect("json"))];
    match jwk["kty"].as_str() {
        Some("RSA") => {
            let (n, e) = (field("n"), field("e"));
            let thumb = json!({"e": jwk["e"], "kty": "RSA", "n": jwk["n"]});
            let pkcs1 = der(0x30, &[der_uint(&n), der_uint(&e)].concat());
            // rsaEncryption, NULL parameters
            let alg_id = [
                der(0x06, &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01]),
                vec![0x05, 0x00],
            ]
            .concat();
            let spki = spki(&alg_id, &pkcs1);
            out.extend([
                ("jwk-thumbprint-json", thumb.to_string().into_bytes()),
                ("spki-der", spki.clone()),
                ("spki-pem", pem("PUBLIC KEY", &spki).into_bytes()),
                ("pkcs1-der", pkcs1.clone()),
                ("pkcs1-pem", pem("RSA PUBLIC KEY", &pkcs1).into_bytes()),
                ("modulus", n),
            ]);
        }
        Some("EC") => {
            let point = [vec![0x04], field("x"), field("y")].concat();
            // id-ecPublicKey, prime256v1
            let alg_id = [
                der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x02, 0x01]),
                der(0x06, &[0x2a, 0x86, 0x48, 0xce, 0x3d, 0x03, 0x01, 0x07]),
            ]
            .concat();
            let spki = spki(&alg_id, &point);
            out.extend([
                ("spki-der", spki.clone()),
                ("spki-pem", pem("PUBLIC KEY", &spki).into_bytes()),
                ("sec1-point", point),
            ]);
        }
        other => panic!("no encodings for kty {other:?}"),
    }
    out
}

/// The PKCS#1 DER of an RSA JWK, to check the encoder against a real verify.
pub fn rsa_pkcs1(jwk: &Value) -> Vec<u8> {
    let field = |k: &str| unb64(jwk[k].as_str().expect("jwk field"));
    der(0x30, &[der_uint(&field("n")), der_uint(&field("e"))].concat())
}

// === signature mangling ===

/// The order n of the P-256 group, big-endian.
pub const P256_N: [u8; 32] = [
    0xff, 0xff, 0xff, 0xff, 0x00, 0x00, 0x00, 0x00, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xbc, 0xe6, 0xfa,
    0xad, 0xa7, 0x17, 0x9e, 0x84, 0xf3, 0xb9, 0xca, 0xc2, 0xfc, 0x63, 0x25, 0x51,
];

/// The order L of the Ed25519 group, little-endian.
pub const ED25519_L: [u8; 32] = [
    0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0, 0,
    0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
];

/// a - b over big-endian 32-byte integers (a >= b).
pub fn sub_be(a: &[u8; 32], b: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut borrow = 0i16;
    for i in (0..32).rev() {
        let mut d = i16::from(a[i]) - i16::from(b[i]) - borrow;
        borrow = i16::from(d < 0);
        if d < 0 {
            d += 256;
        }
        out[i] = d as u8;
    }
    out
}

/// a + b over little-endian 32-byte integers (no overflow expected).
pub fn add_le(a: &[u8], b: &[u8; 32]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let mut carry = 0u16;
    for i in 0..32 {
        let s = u16::from(a[i]) + u16::from(b[i]) + carry;
        out[i] = s as u8;
        carry = s >> 8;
    }
    out
}

/// The ASN.1 DER form of a P1363 `r || s` ECDSA signature.
pub fn ecdsa_der(sig: &[u8]) -> Vec<u8> {
    let (r, s) = sig.split_at(sig.len() / 2);
    der(0x30, &[der_uint(r), der_uint(s)].concat())
}

/// Rewrites the spare low bits of the last base64url character: the same
/// bytes to a lenient decoder, a different string to a strict one.
pub fn noncanonical(seg: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    assert!(matches!(seg.len() % 4, 2 | 3), "segment has no spare bits");
    let last = *seg.as_bytes().last().expect("non-empty");
    let i = ALPHABET.iter().position(|&c| c == last).expect("base64url");
    format!("{}{}", &seg[..seg.len() - 1], ALPHABET[i | 1] as char)
}

pub fn padded(seg: &str) -> String {
    format!("{seg}{}", "=".repeat((4 - seg.len() % 4) % 4))
}

// === the attacker's own key ===

/// A P-256 key the attacker controls, its JWK and a self-signed certificate.
pub struct Attacker {
    pair: EcdsaKeyPair,
    pub jwk: Value,
    pub cert_der: Vec<u8>,
}

impl Attacker {
    pub fn new() -> Self {
        let pkcs8 =
            EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &SystemRandom::new()).expect("attacker key");
        let pair = EcdsaKeyPair::from_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, pkcs8.as_ref()).expect("attacker key");
        let point = pair.public_key().as_ref();
        let jwk = json!({"kty": "EC", "crv": "P-256", "kid": "attacker", "use": "sig", "alg": "ES256",
                         "x": b64(&point[1..33]), "y": b64(&point[33..])});
        let rc = rcgen::KeyPair::try_from(pkcs8.as_ref()).expect("rcgen key");
        let cert = rcgen::CertificateParams::new(vec!["idp.example".into()])
            .expect("params")
            .self_signed(&rc)
            .expect("self-signed");
        Self {
            pair,
            jwk,
            cert_der: cert.der().to_vec(),
        }
    }

    /// An ES256 token over exactly these JSON texts, signed by the attacker.
    pub fn sign(&self, header: &Value, claims: &Value) -> String {
        let input = format!(
            "{}.{}",
            b64(header.to_string().as_bytes()),
            b64(claims.to_string().as_bytes())
        );
        let sig = self
            .pair
            .sign(&SystemRandom::new(), input.as_bytes())
            .expect("attacker signs");
        format!("{input}.{}", b64(sig.as_ref()))
    }

    pub fn x5c(&self) -> Value {
        json!([STANDARD.encode(&self.cert_der)])
    }
}
