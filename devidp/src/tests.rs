//! Unit tests of the dev IdP core (minting, keys, rotation) and the token
//! verification helper shared with the HTTP and CLI tests in `tests/`.

mod http;

use std::time::Duration;

use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Map, Value, json};

use super::{DevIdp, DevIdpError, MintRequest};

pub(super) type TestResult<T = ()> = Result<T, Box<dyn std::error::Error>>;

pub(super) const ISSUER: &str = "http://127.0.0.1:9999";

fn decode_segment(segment: &str) -> TestResult<Map<String, Value>> {
    Ok(serde_json::from_slice(&URL_SAFE_NO_PAD.decode(segment)?)?)
}

fn jwk_bytes(jwk: &Value, field: &str) -> TestResult<Vec<u8>> {
    let text = jwk[field]
        .as_str()
        .ok_or_else(|| format!("JWK field {field} missing"))?;
    Ok(URL_SAFE_NO_PAD.decode(text)?)
}

fn find_jwk<'a>(jwks: &'a Value, kid: &str) -> TestResult<&'a Value> {
    jwks["keys"]
        .as_array()
        .ok_or("JWKS without keys")?
        .iter()
        .find(|jwk| jwk["kid"] == kid)
        .ok_or_else(|| format!("kid {kid} not in the JWKS").into())
}

/// Verifies `token` against `jwk` exactly as a relying party would, using only
/// the public parameters, and returns (header, claims).
pub(super) fn verify_with(token: &str, jwk: &Value) -> TestResult<(Map<String, Value>, Map<String, Value>)> {
    let [header, claims, signature] = token.split('.').collect::<Vec<_>>()[..] else {
        return Err(format!("not a three-part JWS: {token}").into());
    };
    let message = format!("{header}.{claims}");
    let signature = URL_SAFE_NO_PAD.decode(signature)?;
    match jwk["kty"].as_str() {
        Some("RSA") => {
            let key = RsaPublicKeyComponents {
                n: jwk_bytes(jwk, "n")?,
                e: jwk_bytes(jwk, "e")?,
            };
            key.verify(&RSA_PKCS1_2048_8192_SHA256, message.as_bytes(), &signature)?;
        }
        Some("EC") => {
            let mut point = vec![0x04];
            point.extend(jwk_bytes(jwk, "x")?);
            point.extend(jwk_bytes(jwk, "y")?);
            UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, point).verify(message.as_bytes(), &signature)?;
        }
        Some("OKP") => {
            UnparsedPublicKey::new(&ED25519, jwk_bytes(jwk, "x")?).verify(message.as_bytes(), &signature)?;
        }
        other => return Err(format!("unexpected kty {other:?}").into()),
    }
    Ok((decode_segment(header)?, decode_segment(claims)?))
}

/// Verifies `token` with the key its header's kid names in `jwks`.
pub(super) fn verify_token(token: &str, jwks: &Value) -> TestResult<(Map<String, Value>, Map<String, Value>)> {
    let header = decode_segment(token.split('.').next().unwrap_or_default())?;
    let kid = header["kid"].as_str().ok_or("token header without kid")?;
    verify_with(token, find_jwk(jwks, kid)?)
}

fn kids(jwks: &Value) -> Vec<String> {
    jwks["keys"]
        .as_array()
        .map(|keys| {
            keys.iter()
                .filter_map(|k| k["kid"].as_str().map(str::to_owned))
                .collect()
        })
        .unwrap_or_default()
}

fn mint_alg(alg: &str) -> MintRequest {
    MintRequest {
        alg: Some(alg.to_owned()),
        ..MintRequest::default()
    }
}

#[test]
fn tokens_of_every_alg_verify_against_the_published_jwk() -> TestResult {
    let idp = DevIdp::new(ISSUER)?;
    let jwks = idp.jwks();
    for (alg, kty) in [("RS256", "RSA"), ("ES256", "EC"), ("EdDSA", "OKP")] {
        let token = idp.mint(&mint_alg(alg))?;
        let (header, claims) = verify_token(&token, &jwks)?;
        assert_eq!(header["alg"], alg);
        assert_eq!(header["typ"], "JWT");
        let jwk = find_jwk(&jwks, header["kid"].as_str().ok_or("kid")?)?;
        assert_eq!(jwk["kty"], kty);
        assert_eq!(jwk["alg"], alg);
        assert_eq!(jwk["use"], "sig");
        assert_eq!(claims["iss"], ISSUER);
        // A token must not verify under another algorithm's key.
        for other in jwks["keys"].as_array().ok_or("keys")? {
            if other["kid"] != header["kid"] {
                assert!(verify_with(&token, other).is_err(), "{alg} verified under {other}");
            }
        }
    }
    Ok(())
}

#[test]
fn default_alg_is_rs256() -> TestResult {
    let idp = DevIdp::new(ISSUER)?;
    let (header, _) = verify_token(&idp.mint(&MintRequest::default())?, &idp.jwks())?;
    assert_eq!(header["alg"], "RS256");
    Ok(())
}

#[test]
fn jwks_publishes_public_parameters_only() -> TestResult {
    let idp = DevIdp::new(ISSUER)?;
    let jwks = idp.jwks();
    let keys = jwks["keys"].as_array().ok_or("keys")?;
    assert_eq!(keys.len(), 3);
    for jwk in keys {
        for private in ["d", "p", "q", "dp", "dq", "qi"] {
            assert!(jwk.get(private).is_none(), "{private} leaked in {jwk}");
        }
        let kid = jwk["kid"].as_str().ok_or("kid")?;
        assert_eq!(kid.len(), 16);
        assert!(kid.chars().all(|c| c.is_ascii_hexdigit()));
    }
    let rsa = &keys[0];
    assert_eq!(rsa["e"], "AQAB");
    let n = jwk_bytes(rsa, "n")?;
    assert_eq!(n.len(), 256, "RSA-2048 modulus without leading zero bytes");
    assert_ne!(n[0], 0);
    assert_eq!(keys[1]["crv"], "P-256");
    assert_eq!(jwk_bytes(&keys[1], "x")?.len(), 32);
    assert_eq!(jwk_bytes(&keys[1], "y")?.len(), 32);
    assert_eq!(keys[2]["crv"], "Ed25519");
    assert_eq!(jwk_bytes(&keys[2], "x")?.len(), 32);
    let mut unique = kids(&jwks);
    unique.sort();
    unique.dedup();
    assert_eq!(unique.len(), 3);
    Ok(())
}

#[test]
fn default_claims_and_ttl() -> TestResult {
    let idp = DevIdp::new(ISSUER)?;
    let (_, claims) = verify_token(&idp.mint(&MintRequest::default())?, &idp.jwks())?;
    assert_eq!(claims["sub"], "dev-user");
    let iat = claims["iat"].as_u64().ok_or("iat")?;
    assert_eq!(claims["exp"].as_u64(), Some(iat + 300));

    let req = MintRequest {
        ttl: Some(Duration::from_secs(60)),
        ..MintRequest::default()
    };
    let (_, claims) = verify_token(&idp.mint(&req)?, &idp.jwks())?;
    let iat = claims["iat"].as_u64().ok_or("iat")?;
    assert_eq!(claims["exp"].as_u64(), Some(iat + 60));
    Ok(())
}

#[test]
fn claims_merge_and_null_removes() -> TestResult {
    let idp = DevIdp::new(ISSUER)?;
    let req: MintRequest = serde_json::from_value(json!({
        "alg": "ES256",
        "ttl": "5m",
        "claims": {"sub": "alice", "groups": ["ops"], "exp": null, "iss": null},
    }))?;
    assert_eq!(req.ttl, Some(Duration::from_secs(300)));
    let (_, claims) = verify_token(&idp.mint(&req)?, &idp.jwks())?;
    assert_eq!(claims["sub"], "alice");
    assert_eq!(claims["groups"], json!(["ops"]));
    assert!(!claims.contains_key("exp"));
    assert!(!claims.contains_key("iss"));
    assert!(claims.contains_key("iat"));
    Ok(())
}

#[test]
fn hostile_headers_are_still_signed_with_the_chosen_key() -> TestResult {
    let idp = DevIdp::new(ISSUER)?;
    let jwks = idp.jwks();
    let rsa_jwk = find_jwk(&jwks, kids(&jwks)[0].as_str())?;
    let req: MintRequest = serde_json::from_value(json!({
        "header": {"alg": "none", "kid": null, "typ": null, "jku": "http://evil.example/jwks"},
    }))?;
    let (header, _) = verify_with(&idp.mint(&req)?, rsa_jwk)?;
    assert_eq!(header["alg"], "none");
    assert_eq!(header["jku"], "http://evil.example/jwks");
    assert!(!header.contains_key("kid"));
    assert!(!header.contains_key("typ"));
    Ok(())
}

#[test]
fn unknown_alg_and_fields_are_rejected() -> TestResult {
    let idp = DevIdp::new(ISSUER)?;
    for alg in ["HS256", "rs256", "none", ""] {
        let result = idp.mint(&mint_alg(alg));
        assert!(
            matches!(result, Err(DevIdpError::UnsupportedAlg { .. })),
            "{alg}: {result:?}"
        );
    }
    let typo = serde_json::from_value::<MintRequest>(json!({"claim": {"sub": "x"}}));
    assert!(typo.is_err(), "unknown fields must not be silently ignored");
    Ok(())
}

#[test]
fn rotation_with_and_without_overlap() -> TestResult {
    let idp = DevIdp::new(ISSUER)?;
    let first = kids(&idp.jwks());
    let old_token = idp.mint(&MintRequest::default())?;

    let second = idp.rotate(true)?;
    assert_eq!(second.len(), 3);
    assert!(second.iter().all(|kid| !first.contains(kid)));
    let jwks = idp.jwks();
    assert_eq!(kids(&jwks), [second.clone(), first.clone()].concat());
    verify_token(&old_token, &jwks)?;
    let (header, _) = verify_token(&idp.mint(&MintRequest::default())?, &jwks)?;
    assert_eq!(header["kid"], second[0].as_str());

    let third = idp.rotate(true)?;
    assert_eq!(kids(&idp.jwks()).len(), 9);
    verify_token(&old_token, &idp.jwks())?;

    let fourth = idp.rotate(false)?;
    let jwks = idp.jwks();
    assert_eq!(kids(&jwks), fourth);
    assert!(third.iter().all(|kid| !fourth.contains(kid)));
    assert!(verify_token(&old_token, &jwks).is_err());
    Ok(())
}

#[test]
fn discovery_document() -> TestResult {
    let idp = DevIdp::new(format!("{ISSUER}/"))?;
    let doc = idp.discovery();
    assert_eq!(doc["issuer"], format!("{ISSUER}/"));
    assert_eq!(doc["jwks_uri"], format!("{ISSUER}/jwks"));
    assert_eq!(doc["token_endpoint"], format!("{ISSUER}/mint"));
    assert_eq!(
        doc["id_token_signing_alg_values_supported"],
        json!(["RS256", "ES256", "EdDSA"])
    );
    assert_eq!(doc["response_types_supported"], json!(["token"]));
    assert_eq!(doc["subject_types_supported"], json!(["public"]));
    Ok(())
}

#[test]
fn failure_injection_and_direct_calls_do_not_count() -> TestResult {
    let idp = DevIdp::new(ISSUER)?;
    assert_eq!(idp.failure(), None);
    idp.set_failure(Some(503));
    assert_eq!(idp.failure(), Some(503));
    idp.set_failure(None);
    assert_eq!(idp.failure(), None);
    let _ = (idp.jwks(), idp.discovery());
    assert_eq!(idp.stats(), super::DevIdpStats::default());
    Ok(())
}

#[test]
fn dev_idp_is_send_and_sync() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<DevIdp>();
}
