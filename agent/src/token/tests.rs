//! Tests of compact-JWS parsing, signature and claim checks, `validate`, and
//! the JWKS key set they rely on. Keys come from the dev IdP; `Jws::verify`
//! tests parse its JWKS directly (no network), `validate` tests serve it on
//! loopback.

use std::sync::{Arc, LazyLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use serde_json::{Value, json};

use super::*;
use crate::config::{
    Algorithm, ProviderConfig, RefreshConfig, TokenSource, default_algorithms, default_audience_claims,
};
use crate::provider::ProviderMetrics;
use nodeward_dev_idp::{DevIdp, MintRequest};

const ISSUER: &str = "https://idp.nodeward.test";
const SECRET: &[u8] = b"0123456789abcdef0123456789abcdef-hs";
const MAX: usize = 16 * 1024;

static IDP: LazyLock<DevIdp> = LazyLock::new(|| DevIdp::new(ISSUER).expect("dev idp keys"));
/// Same issuer name, different keys: what an attacker can sign with.
static ATTACKER: LazyLock<DevIdp> = LazyLock::new(|| DevIdp::new(ISSUER).expect("dev idp keys"));

fn cfg(issuer: &str) -> ProviderConfig {
    ProviderConfig {
        name: "corp".into(),
        issuer: issuer.into(),
        kubernetes_service_accounts: None,
        token_review: false,
        token_review_ttl: Duration::from_secs(30),
        claim_mappings: None,
        audiences: vec!["orders".into()],
        audience_claims: default_audience_claims(),
        jwks_uri: None,
        token_endpoint: None,
        ca_file: None,
        algorithms: default_algorithms(),
        hs_secret_file: None,
        allow_insecure_http: false,
        refresh: RefreshConfig::default(),
        clock_skew: Duration::from_secs(60),
        typ: None,
        token_from: vec![TokenSource::default()],
    }
}

struct Fixture {
    provider: Arc<Provider>,
    keys: KeySet,
    _dir: tempfile::TempDir,
}

impl Fixture {
    fn new(edit: impl FnOnce(&std::path::Path, &mut ProviderConfig)) -> Self {
        let dir = tempfile::tempdir().expect("tempdir");
        let mut c = cfg(ISSUER);
        edit(dir.path(), &mut c);
        let provider =
            Arc::new(Provider::new(c, dir.path(), ProviderMetrics::unregistered("corp"), None).expect("provider"));
        let keys = KeySet::parse(&jwks(&IDP), &provider.cfg.algorithms, None, Some(SystemTime::now())).expect("jwks");
        assert!(!keys.is_empty(), "skipped: {:?}", keys.skipped);
        Self {
            provider,
            keys,
            _dir: dir,
        }
    }

    /// Accepts RS256 and HS256 (with `SECRET`) besides the IdP's JWKS.
    fn with_hs() -> Self {
        Self::new(|dir, c| {
            let file = dir.join("secret");
            std::fs::write(&file, [SECRET, b"\n"].concat()).expect("write secret");
            c.hs_secret_file = Some(file);
            c.algorithms = vec![Algorithm::RS256, Algorithm::HS256];
        })
    }

    fn refusal(&self, token: &str) -> (TokenError, &'static str) {
        refused(self.check(token))
    }

    fn check(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        self.check_at(token, SystemTime::now())
    }

    fn check_at(&self, token: &str, now: SystemTime) -> Result<VerifiedToken, TokenError> {
        Jws::parse(token, MAX)?.verify(&self.provider, &self.keys, now)
    }

    /// `check`, then the audience against the provider's list (as a request does).
    fn check_with_audience(&self, token: &str) -> Result<VerifiedToken, TokenError> {
        let v = self.check(token)?;
        v.check_audience(&self.provider.cfg.audiences)?;
        Ok(v)
    }
}

fn jwks(idp: &DevIdp) -> Vec<u8> {
    serde_json::to_vec(&idp.jwks()).expect("jwks json")
}

fn jwk(idp: &DevIdp, alg: &str) -> Value {
    idp.jwks()["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["alg"] == alg))
        .cloned()
        .expect("the dev idp has a key for every alg")
}

fn kid(idp: &DevIdp, alg: &str) -> String {
    jwk(idp, alg)["kid"].as_str().expect("kid").to_string()
}

fn obj(v: Value) -> serde_json::Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

/// A token from `idp` with `aud: orders` plus `claims` and `header` overrides.
fn mint_by(idp: &DevIdp, alg: &str, claims: Value, header: Value) -> String {
    let mut all = obj(json!({"aud": "orders"}));
    all.extend(obj(claims));
    idp.mint(&MintRequest {
        alg: Some(alg.into()),
        ttl: None,
        claims: all,
        header: obj(header),
    })
    .expect("mint")
}

fn mint(alg: &str, claims: Value, header: Value) -> String {
    mint_by(&IDP, alg, claims, header)
}

fn b64(bytes: &[u8]) -> String {
    URL_SAFE_NO_PAD.encode(bytes)
}

fn parts(token: &str) -> [&str; 3] {
    let v: Vec<&str> = token.split('.').collect();
    [v[0], v[1], v[2]]
}

/// An HS256 token over exactly these JSON texts (duplicates and all).
fn hmac(secret: &[u8], header: &str, claims: &str) -> String {
    let input = format!("{}.{}", b64(header.as_bytes()), b64(claims.as_bytes()));
    let key = aws_lc_rs::hmac::Key::new(aws_lc_rs::hmac::HMAC_SHA256, secret);
    let tag = aws_lc_rs::hmac::sign(&key, input.as_bytes());
    format!("{input}.{}", b64(tag.as_ref()))
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

fn at(secs: u64) -> SystemTime {
    UNIX_EPOCH + Duration::from_secs(secs)
}

/// The refusal and its reason code; panics when the token verifies.
fn refused(r: Result<VerifiedToken, TokenError>) -> (TokenError, &'static str) {
    coded(r.expect_err("the token must be refused"))
}

/// A verification outcome with the refusal's reason code.
type Coded<T> = Result<T, (TokenError, &'static str)>;

fn coded(e: TokenError) -> (TokenError, &'static str) {
    let reason = e.reason().as_str();
    (e, reason)
}

#[test]
fn valid_tokens_of_every_algorithm_verify() {
    let fx = Fixture::new(|_, _| {});
    for alg in ["RS256", "ES256", "EdDSA"] {
        let token = mint(alg, json!({"email": "a@x.io"}), json!({}));
        let jws = Jws::parse(&token, MAX).expect("parse");
        assert_eq!((jws.alg.as_str(), jws.kid.clone()), (alg, Some(kid(&IDP, alg))));
        assert_eq!(jws.iss(), Ok(ISSUER));
        let exp = jws.claims["exp"].as_u64().expect("exp");
        let v = fx.check(&token).unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(
            (&**v.provider_name(), v.iss.as_str(), v.sub.as_deref()),
            ("corp", ISSUER, Some("dev-user"))
        );
        assert_eq!(
            (v.exp, v.email(), v.key.alg.to_string()),
            (exp, Some("a@x.io"), alg.into())
        );
        assert!(Arc::ptr_eq(&v.key, fx.keys.by_kid(&kid(&IDP, alg)).expect("key")));
        // Without a kid, only keys pinned to the header's alg are tried.
        let v = fx.check(&mint(alg, json!({}), json!({"kid": null}))).expect("no kid");
        assert_eq!(v.key.kid, Some(kid(&IDP, alg)));
    }
}

#[test]
fn algorithm_none_and_bad_headers_are_refused() {
    let fx = Fixture::new(|_, _| {});
    for alg in ["none", "None", "NONE", "rs256", "HS1", "ES521"] {
        let token = mint("RS256", json!({}), json!({"alg": alg}));
        let want = TokenError::AlgorithmNotAllowed(alg.into());
        assert_eq!(fx.refusal(&token), (want, "algorithm_not_allowed"));
        // The unsecured form, with an empty signature, is not even a JWS here.
        let [h, c, _] = parts(&token);
        let empty = TokenError::Malformed("empty part");
        assert_eq!(fx.refusal(&format!("{h}.{c}.")), (empty, "malformed_token"));
    }
    let cases = [
        (json!({"alg": null}), "no alg"),
        (json!({"alg": 256}), "alg is not a string"),
        (json!({"kid": 7}), "kid is not a string"),
        (json!({"crit": []}), "crit must be a non-empty array of names"),
        (json!({"crit": "exp"}), "crit must be a non-empty array of names"),
    ];
    for (header, why) in cases {
        let token = mint("RS256", json!({}), header);
        assert_eq!(
            fx.refusal(&token),
            (TokenError::BadHeader(why.into()), "malformed_token")
        );
    }
    for (crit, listed) in [(json!(["exp"]), r#""exp""#), (json!(["b64", 1]), r#""b64", 1"#)] {
        let token = mint("RS256", json!({}), json!({"crit": crit, "exp": 1}));
        assert_eq!(
            fx.refusal(&token),
            (TokenError::UnknownCrit(listed.into()), "unknown_crit")
        );
    }
}

#[test]
fn algorithm_confusion_is_refused() {
    let fx = Fixture::new(|_, _| {});
    let rsa_kid = kid(&IDP, "RS256");
    // HMAC keyed with the RSA public key: the classic confusion attack.
    let public = serde_json::to_vec(&jwk(&IDP, "RS256")).expect("jwk");
    let claims = format!(r#"{{"iss":"{ISSUER}","aud":"orders","exp":{}}}"#, now_secs() + 300);
    let forged = hmac(&public, &format!(r#"{{"alg":"HS256","kid":"{rsa_kid}"}}"#), &claims);
    let not_allowed = |a: &str| (TokenError::AlgorithmNotAllowed(a.into()), "algorithm_not_allowed");
    assert_eq!(fx.refusal(&forged), not_allowed("HS256"));
    // Even where HS256 is allowed, the HMAC key is the configured secret, never a JWKS key.
    let hs = Fixture::with_hs();
    assert_eq!(hs.refusal(&forged), (TokenError::BadSignature, "bad_signature"));
    let real = hmac(SECRET, r#"{"alg":"HS256"}"#, &claims);
    assert_eq!(hs.check(&real).expect("the secret verifies").key.alg, Algorithm::HS256);
    assert_eq!(hs.refusal(&mint("ES256", json!({}), json!({}))), not_allowed("ES256"));

    // A key is pinned to its own alg whatever the header says.
    let ec_kid = kid(&IDP, "ES256");
    let mismatches = [
        ("ES256", &rsa_kid, "RS256"),
        ("RS384", &rsa_kid, "RS256"),
        ("PS256", &rsa_kid, "RS256"),
    ];
    for (token_alg, kid, key_alg) in mismatches.into_iter().chain([("RS256", &ec_kid, "ES256")]) {
        let signer = if token_alg == "RS256" { "RS256" } else { "ES256" };
        let token = mint(signer, json!({}), json!({"alg": token_alg, "kid": kid}));
        let (kid, key_alg, token_alg) = (kid.clone(), key_alg.into(), token_alg.into());
        let want = TokenError::AlgorithmMismatch {
            kid,
            key_alg,
            token_alg,
        };
        assert_eq!(fx.refusal(&token), (want, "algorithm_mismatch"));
    }
}

#[test]
fn foreign_keys_and_key_carrying_headers() {
    let fx = Fixture::new(|_, _| {});
    let nope = mint("RS256", json!({}), json!({"kid": "nope"}));
    assert_eq!(
        fx.refusal(&nope),
        (TokenError::UnknownKid("nope".into()), "unknown_kid")
    );
    let carry = json!({"jwk": jwk(&ATTACKER, "RS256"), "jku": "https://evil.example/jwks",
                       "x5u": "https://evil.example/cert", "x5c": ["MIIB"]});
    // The attacker's own kid is simply unknown, whatever key the header carries.
    let own = mint_by(&ATTACKER, "RS256", json!({}), carry.clone());
    let want = TokenError::UnknownKid(kid(&ATTACKER, "RS256"));
    assert_eq!(fx.refusal(&own), (want, "unknown_kid"));
    for header in [json!({"kid": kid(&IDP, "RS256")}), json!({"kid": null})] {
        let token = mint_by(&ATTACKER, "RS256", json!({}), with(carry.clone(), header));
        assert_eq!(fx.refusal(&token), (TokenError::BadSignature, "bad_signature"));
    }
    // The real IdP's token with the same headers verifies, with the real key.
    let v = fx
        .check(&mint("RS256", json!({}), carry))
        .expect("jku/jwk/x5u/x5c are ignored");
    assert!(Arc::ptr_eq(&v.key, fx.keys.by_kid(&kid(&IDP, "RS256")).expect("key")));
}

#[test]
fn tampering_is_a_bad_signature() {
    let fx = Fixture::new(|_, _| {});
    for alg in ["RS256", "ES256", "EdDSA"] {
        let token = mint(alg, json!({"sub": "alice"}), json!({}));
        let [h, c, s] = parts(&token);
        let other = mint(alg, json!({"sub": "admin"}), json!({}));
        let sig = URL_SAFE_NO_PAD.decode(s).expect("sig");
        let mut flipped = sig.clone();
        flipped[7] ^= 0x01;
        let cases = [
            ("claims", format!("{h}.{}.{s}", parts(&other)[1])),
            ("swap", format!("{h}.{c}.{}", parts(&other)[2])),
            ("flip", format!("{h}.{c}.{}", b64(&flipped))),
            ("truncate", format!("{h}.{c}.{}", b64(&sig[..sig.len() - 3]))),
        ];
        for (what, t) in cases {
            assert_eq!(fx.check(&t).map(|_| ()), Err(TokenError::BadSignature), "{alg} {what}");
        }
        // One character less is not even base64 of whole bytes.
        let short = &token[..token.len() - 1];
        assert!(matches!(fx.check(short), Err(TokenError::Malformed(_))), "{alg}");
    }
}

/// The same bytes encoded with a non-zero spare bit: only non-canonical.
fn noncanonical(seg: &str) -> String {
    const ALPHABET: &[u8] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";
    assert!(matches!(seg.len() % 4, 2 | 3), "segment has no spare bits");
    let last = *seg.as_bytes().last().expect("non-empty");
    let i = ALPHABET.iter().position(|&c| c == last).expect("base64url");
    let out = format!("{}{}", &seg[..seg.len() - 1], ALPHABET[i | 1] as char);
    let lenient = base64::engine::GeneralPurpose::new(
        &base64::alphabet::URL_SAFE,
        base64::engine::GeneralPurposeConfig::new()
            .with_encode_padding(false)
            .with_decode_padding_mode(base64::engine::DecodePaddingMode::RequireNone)
            .with_decode_allow_trailing_bits(true),
    );
    assert_ne!(out, seg);
    assert_eq!(
        lenient.decode(&out).ok(),
        URL_SAFE_NO_PAD.decode(seg).ok(),
        "same bytes"
    );
    out
}

fn padded(seg: &str) -> String {
    format!("{seg}{}", "=".repeat((4 - seg.len() % 4) % 4))
}

#[test]
fn padded_and_noncanonical_base64_is_malformed() {
    let fx = Fixture::new(|_, _| {});
    // Pad header and claims until every part has spare bits to abuse.
    let pad = |n: usize| json!({"p": "x".repeat(n)});
    let token = (0..9)
        .map(|n: usize| mint("RS256", pad(n % 3), pad(n / 3)))
        .find(|t| parts(t).iter().all(|s| matches!(s.len() % 4, 2 | 3)))
        .expect("some padding gives every part spare bits");
    fx.check(&token).expect("the canonical token verifies");
    let [h, c, s] = parts(&token);
    let [header, claims, sig] = ["header", "claims", "signature"];
    #[rustfmt::skip]
    let cases = [
        (format!("{}.{c}.{s}", padded(h)), header),
        (format!("{}.{c}.{s}", noncanonical(h)), header),
        (format!(" {token}"), header),
        (format!("{h}.{}.{s}", padded(c)), claims),
        (format!("{h}.{}.{s}", noncanonical(c)), claims),
        (format!("{h}.{c}.{}", padded(s)), sig),
        (format!("{h}.{c}.{}", noncanonical(s)), sig),
        (format!("{token} "), sig),
        (format!("{token}\n"), sig),
    ];
    for (t, part) in cases {
        let (e, reason) = fx.refusal(&t);
        assert_eq!(reason, "malformed_token");
        assert_eq!(
            e.to_string(),
            format!(
                "token is not a compact JWS: {part} {} not canonical base64url",
                if part == "claims" { "are" } else { "is" }
            )
        );
    }
}

#[test]
fn structure_errors() {
    let fx = Fixture::new(|_, _| {});
    let token = mint("RS256", json!({}), json!({}));
    let three = TokenError::Malformed("expected three dot-separated parts");
    let empty = TokenError::Malformed("empty part");
    let (m, u) = ("malformed_token", "unsupported_token");
    #[rustfmt::skip]
    let cases = [
        ("h.c".to_string(), three.clone(), m),
        (format!("{token}.x"), three.clone(), m),
        (format!("{token}.x.y"), TokenError::Encrypted, u),
        (format!("{token}.x.y.z"), three, m),
        ("..".to_string(), empty.clone(), m),
        (token[token.find('.').expect("dot")..].to_string(), empty, m),
        (mint("RS256", json!({}), json!({"enc": "A256GCM"})), TokenError::Encrypted, u),
        (format!("{}.e30.c2ln", b64(b"[1]")), TokenError::BadHeader("not a JSON object".into()), m),
        (format!("{}.bnVsbA.c2ln", b64(br#"{"alg":"RS256"}"#)), TokenError::BadClaims("not a JSON object".into()), m),
    ];
    for (t, want, reason) in cases {
        assert_eq!(fx.refusal(&t), (want, reason), "{t}");
    }
}

#[test]
fn duplicate_members_are_refused_even_when_signed() {
    let fx = Fixture::with_hs();
    let exp = now_secs() + 300;
    let claims = |extra: &str| format!(r#"{{"iss":"{ISSUER}","aud":"orders","exp":{exp}{extra}}}"#);
    let hs = |header: &str, claims: &str| hmac(SECRET, header, claims);
    let plain = r#"{"alg":"HS256"}"#;
    fx.check(&hs(r#"{"alg":"HS256","typ":"JWT"}"#, &claims("")))
        .expect("a hand-made token verifies");
    #[rustfmt::skip]
    let cases = [
        (hs(r#"{"alg":"HS256","alg":"none"}"#, &claims("")), "token header", "alg"),
        (hs(r#"{"alg":"HS256","al\u0067":"none"}"#, &claims("")), "token header", "alg"),
        (hs(r#"{"alg":"HS256","kid":"a","kid":"b"}"#, &claims("")), "token header", "kid"),
        (hs(plain, &claims(r#","aud":"billing""#)), "token claims", "aud"),
        (hs(plain, &claims(r#","r":{"g":[],"g":["admin"]}"#)), "token claims", "g"),
    ];
    for (t, part, member) in cases {
        let (e, reason) = fx.refusal(&t);
        assert_eq!(reason, "malformed_token");
        let want = format!("{part}: invalid JSON: duplicate member \"{member}\"");
        assert!(e.to_string().starts_with(&want), "{e}");
    }
    // An explicit null is not "absent".
    let null_exp = hs(plain, &format!(r#"{{"iss":"{ISSUER}","aud":"orders","exp":null}}"#));
    let want = TokenError::BadClaims("exp must be a number, not null".into());
    assert_eq!(fx.refusal(&null_exp), (want, "malformed_token"));
}

#[test]
fn time_claims() {
    let fx = Fixture::new(|_, _| {});
    let now = now_secs();
    let bad = |s: &str| Err((TokenError::BadClaims(s.into()), "malformed_token"));
    let (expired, early) = ("token_expired", "token_not_yet_valid");
    #[rustfmt::skip]
    let cases: Vec<(Value, Coded<u64>)> = vec![
        (json!({"exp": null}), bad("no exp: tokens must expire")),
        (json!({"exp": "4000000000"}), bad("exp must be a number, not a string")),
        (json!({"exp": true}), bad("exp must be a number, not a boolean")),
        (json!({"exp": -1}), bad("exp is not a valid NumericDate")),
        (json!({"exp": -0.5}), bad("exp is not a valid NumericDate")),
        (json!({"exp": now as f64 + 100.75}), Ok(now + 100)),
        (json!({"exp": 1e300}), Ok(u64::MAX)),
        (json!({"exp": now - 61}), Err((TokenError::Expired(61), expired))),
        (json!({"exp": now - 3600}), Err((TokenError::Expired(3600), expired))),
        (json!({"exp": now - 60}), Ok(now - 60)),
        (json!({"exp": now - 59}), Ok(now - 59)),
        (json!({"nbf": now + 61}), Err((TokenError::NotYetValid(61), early))),
        (json!({"nbf": now + 59}), Ok(now + 300)),
        (json!({"nbf": now - 10}), Ok(now + 300)),
        (json!({"nbf": "soon"}), bad("nbf must be a number, not a string")),
        (json!({"iat": now + 120}), Err((TokenError::IssuedInFuture(120), "token_issued_in_future"))),
        (json!({"iat": now + 30}), Ok(now + 300)),
        (json!({"iat": [1]}), bad("iat must be a number, not an array")),
    ];
    for (claims, want) in cases {
        let claims = with(json!({"exp": now + 300}), claims);
        let token = mint("ES256", claims.clone(), json!({"kid": null}));
        let got = fx.check_at(&token, at(now)).map(|v| v.exp).map_err(coded);
        assert_eq!(got, want, "{claims}");
    }
    let strict = Fixture::new(|_, c| c.clock_skew = Duration::ZERO);
    let token = mint("RS256", json!({"exp": now - 1}), json!({}));
    assert_eq!(
        refused(strict.check_at(&token, at(now))),
        (TokenError::Expired(1), expired)
    );
}

#[test]
fn audience_and_subject() {
    let fx = Fixture::new(|_, c| c.audiences.push("payments".into()));
    let expected = r#"["orders", "payments"]"#.to_string();
    let wrong = |found: &str| {
        let (found, expected) = (found.into(), expected.clone());
        Err(coded(TokenError::WrongAudience { found, expected }))
    };
    let bad = |s: &str| Err((TokenError::BadClaims(s.into()), "malformed_token"));
    #[rustfmt::skip]
    let cases: Vec<(Value, Coded<Option<&str>>)> = vec![
        (json!({"aud": "orders"}), Ok(Some("dev-user"))),
        (json!({"aud": "payments"}), Ok(Some("dev-user"))),
        (json!({"aud": "billing"}), wrong(r#"["billing"]"#)),
        (json!({"aud": "Orders"}), wrong(r#"["Orders"]"#)),
        (json!({"aud": ["billing", "orders"]}), Ok(Some("dev-user"))),
        (json!({"aud": ["billing", "shipping"]}), wrong(r#"["billing","shipping"]"#)),
        (json!({"aud": []}), wrong("(none)")),
        (json!({"aud": null}), wrong("(none)")),
        (json!({"aud": 5}), bad("aud must be a string or array, not a number")),
        (json!({"aud": {"orders": true}}), bad("aud must be a string or array, not an object")),
        (json!({"aud": ["orders", 5]}), bad("aud array holds a non-string")),
        (json!({"sub": null}), Ok(None)),
        (json!({"sub": 42}), bad("sub must be a string, not a number")),
    ];
    for (claims, want) in cases {
        let got = fx.check_with_audience(&mint("EdDSA", claims.clone(), json!({})));
        let got = got.map(|v| v.sub).map_err(coded);
        assert_eq!(
            got.as_ref().map(Option::as_deref),
            want.as_ref().map(|s| *s),
            "{claims}"
        );
    }
}

#[test]
fn issuer_claim_and_size_limit() {
    let token = mint("RS256", json!({}), json!({}));
    let jws = Jws::parse(&token, token.len()).expect("exactly at the limit");
    assert_eq!(jws.iss(), Ok(ISSUER));
    let e = Jws::parse(&token, token.len() - 1).err().expect("one byte over");
    assert_eq!(
        (e.reason().as_str(), e),
        ("token_too_large", TokenError::TooLarge { limit: token.len() - 1 })
    );
    for (claims, why) in [
        (json!({"iss": null}), "no iss"),
        (json!({"iss": 1}), "iss is not a string"),
    ] {
        let t = mint("RS256", claims, json!({}));
        let e = Jws::parse(&t, MAX).expect("parse").iss().expect_err("bad iss");
        assert_eq!(e, TokenError::BadClaims(why.into()));
    }
}

fn providers(c: ProviderConfig, dir: &std::path::Path) -> Providers {
    let mut ps = Providers::default();
    ps.insert(Arc::new(
        Provider::new(c, dir, ProviderMetrics::unregistered("corp"), None).expect("provider"),
    ));
    ps
}

#[tokio::test]
async fn validate_refuses_unknown_issuers_and_oversized_tokens() {
    let dir = tempfile::tempdir().expect("tempdir");
    let mut c = cfg(ISSUER);
    c.jwks_uri = Some("http://127.0.0.1:1/jwks".into()); // nothing listens: refetches fail fast
    let ps = providers(c, dir.path());
    let long = format!("https://{}", "i".repeat(200));
    #[rustfmt::skip]
    let cases = [
        (format!("{ISSUER}/"), format!("{ISSUER}/")),
        ("https://other.example".into(), "https://other.example".into()),
        ("HTTPS://IDP.NODEWARD.TEST".into(), "HTTPS://IDP.NODEWARD.TEST".into()),
        (long.clone(), format!("{}…", &long[..128])),
    ];
    for (iss, shown) in cases {
        let t = mint("RS256", json!({"iss": iss}), json!({}));
        assert_eq!(
            refused(validate(&t, &ps, MAX).await),
            (TokenError::UnknownIssuer(shown), "unknown_issuer")
        );
    }
    let t = mint("RS256", json!({}), json!({}));
    assert_eq!(
        refused(validate(&t, &ps, 100).await).0,
        TokenError::TooLarge { limit: 100 }
    );
    // The provider holds no keys and cannot fetch any: fail closed.
    assert_eq!(
        refused(validate(&t, &ps, MAX).await),
        (TokenError::NoKeys("corp".into()), "no_keys")
    );
}

#[tokio::test]
async fn validate_fetches_keys_and_refetches_for_an_unknown_kid() {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    let idp = Arc::new(DevIdp::new(format!("http://{addr}")).expect("dev idp keys"));
    let server = tokio::spawn(nodeward_dev_idp::serve(idp.clone(), listener, std::future::pending()));
    let dir = tempfile::tempdir().expect("tempdir");
    let ps = providers(cfg(idp.issuer()), dir.path());
    let provider = ps.by_name("corp").expect("provider").clone();
    provider.refresh().await.expect("refresh from the dev idp");
    for alg in ["RS256", "ES256", "EdDSA"] {
        let t = mint_by(&idp, alg, json!({}), json!({}));
        let v = validate(&t, &ps, MAX).await.unwrap_or_else(|e| panic!("{alg}: {e}"));
        assert_eq!(v.iss.as_str(), idp.issuer());
    }
    let old = provider.keys().by_kid(&kid(&idp, "RS256")).expect("old key").clone();
    idp.rotate(false).expect("rotate");
    assert_eq!(provider.metrics().on_demand.get(), 0);
    let t = mint_by(&idp, "RS256", json!({}), json!({}));
    let v = validate(&t, &ps, MAX).await.expect("the new kid is fetched on demand");
    assert_eq!(
        (v.key.kid.clone(), provider.metrics().on_demand.get()),
        (Some(kid(&idp, "RS256")), 1)
    );
    assert!(old.is_revoked(), "a key that left the JWKS is revoked");
    // Within the cooldown a random kid does not fetch again.
    let t = mint_by(&idp, "RS256", json!({}), json!({"kid": "random"}));
    assert_eq!(
        refused(validate(&t, &ps, MAX).await).0,
        TokenError::UnknownKid("random".into())
    );
    assert_eq!(provider.metrics().on_demand.get(), 1);
    server.abort();
}

// ---- KeySet ----

fn set_of(keys: Vec<Value>, allowed: &[Algorithm]) -> KeySet {
    let doc = serde_json::to_vec(&json!({ "keys": keys })).expect("json");
    KeySet::parse(&doc, allowed, None, None).expect("a JWKS")
}

/// `base` with the members of `extra` set, or removed where `extra` has null.
fn with(base: Value, extra: Value) -> Value {
    let mut out = obj(base);
    for (k, v) in obj(extra) {
        out.insert(k, v);
    }
    Value::Object(out)
}

#[test]
fn keyset_skips_unusable_keys_with_reasons() {
    use Algorithm::*;
    let (rsa, ec, ed) = (jwk(&IDP, "RS256"), jwk(&IDP, "ES256"), jwk(&IDP, "EdDSA"));
    let mut implied = obj(with(rsa.clone(), json!({"kid": "implied", "use": "sig"})));
    implied.remove("alg");
    #[rustfmt::skip]
    let cases = [
        (with(rsa.clone(), json!({"kid": "enc", "use": "enc"})), "use \"enc\" is not \"sig\""),
        (json!({"kty": "oct", "k": b64(SECRET), "kid": "oct"}), "symmetric keys are never taken from a JWKS"),
        (with(ec.clone(), json!({"kid": "ec-rs", "alg": "RS256"})), "alg RS256 does not fit a EC key"),
        (with(rsa.clone(), json!({"kid": "rsa-es", "alg": "ES256"})), "alg ES256 does not fit a RSA key"),
        (with(ed.clone(), json!({"kid": "ed-es", "alg": "ES256"})), "alg ES256 does not fit a OKP key"),
        (with(ec.clone(), json!({"kid": "p256-es384", "alg": "ES384"})), "alg ES384 does not fit a EC key"),
        (with(rsa.clone(), json!({"kid": "rsa-hs", "alg": "HS256"})), "alg HS256 does not fit a RSA key"),
        (with(rsa.clone(), json!({"kid": "rsa-none", "alg": "none"})), "unknown alg \"none\""),
        (with(ec.clone(), json!({"kid": "sign-only", "key_ops": ["sign"]})), "key_ops lacks \"verify\""),
        (json!({"kty": "EC", "crv": "secp256k1", "kid": "k1"}), "unsupported key type EC"),
        (json!({"kid": "no-kty"}), "no kty"),
        (json!("not an object"), "not a JSON object"),
    ];
    let good = [
        with(rsa.clone(), json!({"kid": "ps", "alg": "PS256"})),
        with(ec, json!({"kid": "ec", "key_ops": ["verify"]})),
        Value::Object(implied),
    ];
    let keys = cases.iter().map(|(k, _)| k.clone()).chain(good).collect();
    let set = set_of(keys, &[RS256, PS256, HS256, ES256, ES384, EdDSA]);
    assert_eq!(
        set.kids().collect::<Vec<_>>(),
        ["ps", "ec", "implied"],
        "{:#?}",
        set.skipped
    );
    assert_eq!(set.by_kid("ps").map(|k| k.alg), Some(PS256));
    assert_eq!(set.by_kid("implied").map(|k| k.alg), Some(RS256));
    assert_eq!(set.skipped.len(), cases.len(), "{:#?}", set.skipped);
    for (i, (got, (_, why))) in set.skipped.iter().zip(&cases).enumerate() {
        assert!(got.starts_with(&format!("key {i}: {why}")), "{got:?} vs {why:?}");
    }
    let only_ec = set_of(vec![rsa, jwk(&IDP, "ES256")], &[ES256]);
    assert_eq!(only_ec.len(), 1);
    assert!(
        only_ec.skipped[0].contains("not in the provider's allowlist"),
        "{:?}",
        only_ec.skipped
    );
}

#[test]
fn keyset_duplicate_kids_first_wins_and_limits() {
    let first = with(jwk(&IDP, "RS256"), json!({"kid": "dup"}));
    let second = with(jwk(&ATTACKER, "RS256"), json!({"kid": "dup"}));
    let set = set_of(vec![first, second], &[Algorithm::RS256]);
    assert_eq!(
        (set.len(), set.skipped.as_slice()),
        (1, &["key 1: duplicate kid \"dup\"".to_string()][..])
    );
    let key = set.by_kid("dup").expect("first kept");
    let verifies = |idp: &DevIdp| {
        let t = mint_by(idp, "RS256", json!({}), json!({}));
        let [h, c, s] = parts(&t);
        key.verify(format!("{h}.{c}").as_bytes(), &super::jose::b64(s).expect("base64url"))
    };
    assert!(
        verifies(&IDP) && !verifies(&ATTACKER),
        "the first key under the kid is the one used"
    );

    let many = (0..70).map(|i| with(jwk(&IDP, "ES256"), json!({"kid": format!("k{i}")})));
    let set = set_of(many.collect(), &[Algorithm::ES256]);
    assert_eq!(set.len(), 64);
    assert!(
        set.skipped.iter().any(|s| s.contains("past the first 64")),
        "{:?}",
        set.skipped
    );

    for (doc, why) in [
        (&b"nope"[..], "JWKS is not JSON"),
        (br#"{"key":[]}"#, "JWKS has no \"keys\" array"),
    ] {
        let e = KeySet::parse(doc, &[Algorithm::RS256], None, None).expect_err("not a JWKS");
        assert!(e.starts_with(why), "{e}");
    }
}

#[test]
fn keyset_reuses_keys_and_revokes_dropped_ones() {
    let idp = DevIdp::new(ISSUER).expect("idp");
    let algs: Vec<Algorithm> = default_algorithms();
    let parse = |prev: Option<&KeySet>| KeySet::parse(&jwks(&idp), &algs, prev, None).expect("jwks");
    let t0 = SystemTime::now();
    let first = KeySet::parse(&jwks(&idp), &algs, None, Some(t0)).expect("jwks");
    assert_eq!(first.fetched_at, Some(t0));
    let old = |k: &str| first.by_kid(k).expect("old key").clone();
    let again = parse(Some(&first));
    let old_kids: Vec<String> = first.kids().map(String::from).collect();
    for k in &old_kids {
        assert!(
            Arc::ptr_eq(&old(k), again.by_kid(k).expect("b")) && !old(k).is_revoked(),
            "{k} reused"
        );
    }
    idp.rotate(true).expect("rotate with overlap");
    let overlap = parse(Some(&again));
    assert_eq!(overlap.len(), 6);
    for k in &old_kids {
        assert!(
            Arc::ptr_eq(overlap.by_kid(k).expect("kept"), &old(k)) && !old(k).is_revoked(),
            "{k} kept"
        );
    }
    idp.rotate(false).expect("rotate without overlap");
    let fresh = parse(Some(&overlap));
    assert_eq!(fresh.len(), 3);
    for k in &old_kids {
        assert!(
            !old(k).is_revoked(),
            "parsing alone revokes nothing: the set may yet be refused"
        );
    }
    fresh.revoke_missing_from(&overlap);
    for k in &old_kids {
        assert!(fresh.by_kid(k).is_none() && old(k).is_revoked(), "{k} left the JWKS");
    }
    assert!(fresh.kids().all(|k| !fresh.by_kid(k).expect("new").is_revoked()));
}

#[test]

fn keys_back_in_the_jwks_are_not_revoked() {
    // Provider::fetch_and_install parses with `previous`, then refuses an
    // all-unusable JWKS and keeps the old keys -- already marked revoked.
    let algs = [Algorithm::RS256, Algorithm::ES256, Algorithm::EdDSA];
    let live = KeySet::parse(&jwks(&IDP), &algs, None, None).expect("jwks");
    let empty = KeySet::parse(br#"{"keys":[]}"#, &algs, Some(&live), None).expect("jwks");
    assert!(empty.is_empty(), "the provider refuses this set and keeps `live`");
    let next = KeySet::parse(&jwks(&IDP), &algs, Some(&live), None).expect("jwks");
    let key = next.by_kid(&kid(&IDP, "RS256")).expect("still published");
    assert!(!key.is_revoked(), "a key in the current JWKS must not report revoked");
}

/// Regression: a 10 KB kid (or alg, crit name, duplicate member name) came
/// back whole in the refusal detail, hence in the 401 body and every audit
/// line: a cheap log amplifier. Echoed values are now cut to `ECHO_MAX` chars.
#[test]
fn attacker_chosen_values_are_echoed_bounded() {
    let fx = Fixture::with_hs();
    let long = "k".repeat(10_000);
    let cut = format!("{}…", &long[..ECHO_MAX]);
    let kid = mint("RS256", json!({}), json!({"kid": long}));
    assert_eq!(fx.refusal(&kid), (TokenError::UnknownKid(cut.clone()), "unknown_kid"));
    let alg = mint("RS256", json!({}), json!({"alg": long}));
    assert_eq!(
        fx.refusal(&alg),
        (TokenError::AlgorithmNotAllowed(cut.clone()), "algorithm_not_allowed")
    );
    let crit = mint("RS256", json!({}), json!({"crit": [long]}));
    let (e, reason) = fx.refusal(&crit);
    assert_eq!(reason, "unknown_crit");
    assert!(e.to_string().len() < 200, "{e}");
    let name = &long[..5000];
    let dup = hmac(SECRET, r#"{"alg":"HS256"}"#, &format!(r#"{{"{name}":1,"{name}":2}}"#));
    let (e, reason) = fx.refusal(&dup);
    assert_eq!(reason, "malformed_token");
    assert!(e.to_string().len() < 300, "{e}");
    for e in [
        TokenError::UnknownKid(cut.clone()),
        TokenError::AlgorithmNotAllowed(cut),
    ] {
        assert!(e.to_string().len() < 200, "{e}");
    }
}

/// Keys are built into aws-lc-rs keys when the JWKS loads: one that could
/// never verify is skipped there, with the reason, instead of failing every
/// token later; and the built key verifies only its own algorithm's form.
#[test]
fn keys_are_built_and_checked_when_the_jwks_loads() {
    use Algorithm::*;
    let (rsa, ec, ed) = (jwk(&IDP, "RS256"), jwk(&IDP, "ES256"), jwk(&IDP, "EdDSA"));
    let n_1024 = b64(&[[0xc5u8].as_slice(), &[0x5a; 127]].concat());
    let y: Vec<u8> = URL_SAFE_NO_PAD.decode(ec["y"].as_str().expect("y")).expect("b64 y");
    let mut off_curve = y.clone();
    off_curve[31] ^= 1;
    #[rustfmt::skip]
    let cases = [
        (with(rsa.clone(), json!({"kid": "rsa-1024", "n": n_1024})), "key unusable for RS256: a 1024-bit RSA modulus is outside 2048–8192 bits"),
        (with(ec.clone(), json!({"kid": "off-curve", "y": b64(&off_curve)})), "key unusable for ES256"),
        (with(ec.clone(), json!({"kid": "short-y", "y": b64(&y[1..])})), "key unusable for ES256"),
        (with(ed.clone(), json!({"kid": "short-ed", "x": b64(&[7; 31])})), "key unusable for EdDSA"),
    ];
    let keys = cases.iter().map(|(k, _)| k.clone()).chain([rsa, ec, ed]).collect();
    let set = set_of(keys, &[RS256, ES256, EdDSA]);
    assert_eq!(set.len(), 3, "{:#?}", set.skipped);
    for (i, (got, (_, why))) in set.skipped.iter().zip(&cases).enumerate() {
        assert!(got.starts_with(&format!("key {i}: {why}")), "{got:?} vs {why:?}");
    }

    // Each key takes only its own signature form: raw r||s for ECDSA (not
    // DER), 64 bytes for Ed25519, the full modulus length for RSA.
    for alg in ["RS256", "ES256", "EdDSA"] {
        let key = set.by_kid(&kid(&IDP, alg)).expect("loaded");
        let t = mint(alg, json!({}), json!({}));
        let [h, c, s] = parts(&t);
        let msg = format!("{h}.{c}");
        let sig = URL_SAFE_NO_PAD.decode(s).expect("b64 sig");
        assert!(key.verify(msg.as_bytes(), &sig), "{alg}: the real signature verifies");
        assert!(
            !key.verify(b"other message", &sig),
            "{alg}: over another message it does not"
        );
        assert!(!key.verify(msg.as_bytes(), &sig[..sig.len() - 1]), "{alg}: truncated");
        assert!(
            !key.verify(msg.as_bytes(), &[sig.as_slice(), &[0]].concat()),
            "{alg}: extended"
        );
        assert!(
            !key.verify(msg.as_bytes(), &vec![0; sig.len()]),
            "{alg}: all zero (psychic)"
        );
        assert!(!key.verify(msg.as_bytes(), &[]), "{alg}: empty");
    }
}

#[test]
fn shared_secrets_build_hmac_keys_for_hs_algorithms_only() {
    use Algorithm::*;
    assert!(Key::from_secret(b"", HS256).is_err(), "an empty secret is refused");
    assert!(Key::from_secret(SECRET, RS256).is_err(), "not an HMAC algorithm");
    let token = hmac(SECRET, r#"{"alg":"HS256"}"#, r#"{"iss":"x"}"#);
    let [h, c, s] = parts(&token);
    let sig = URL_SAFE_NO_PAD.decode(s).expect("b64");
    let key = Key::from_secret(SECRET, HS256).expect("HS256 key");
    assert!(key.verify(format!("{h}.{c}").as_bytes(), &sig));
    assert!(!key.verify(format!("{h}.{c}x").as_bytes(), &sig));
    assert!(!key.verify(format!("{h}.{c}").as_bytes(), &sig[..31]));
    let other = Key::from_secret(b"another secret of the same size!!!!", HS256).expect("key");
    assert!(!other.verify(format!("{h}.{c}").as_bytes(), &sig));
}
