//! Parse + verify against a fixed key set (RSA, P-256, Ed25519 public keys)
//! and a provider that also accepts HS256 with a fixed secret, at a fixed
//! time: never a panic, and nothing verifies unless the Ed25519 seed key or
//! the HS256 secret really signed it.
#![no_main]

use std::sync::LazyLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use libfuzzer_sys::fuzz_target;
use std::sync::Arc;

use nodeward::config::{Algorithm, ProviderConfig, RefreshConfig, TokenSource};
use nodeward::provider::{KeySet, Provider, ProviderMetrics};
use nodeward::token::Jws;

/// The Ed25519 key is `Ed25519KeyPair::from_seed_unchecked(&[7; 32])`, so the
/// seed corpus can hold validly signed tokens; the others are public keys only.
const JWKS: &str = r#"{"keys":[
 {"kty":"OKP","crv":"Ed25519","kid":"ed","use":"sig","x":"6kpsY-KcUgq-9VB7Ey7F-ZVHdq6-vnuSQh7qaRRG0iw"},
 {"kty":"RSA","kid":"rsa","alg":"RS256","e":"AQAB","n":"orjPH1ocKe1uaT3LQR59NJkir_XLsjDdI_QcevX9MvEdpsiJa6WDWO3dsCvoWnOU76QcGWLbj-YUd42x4CSE9oclgksu15QsphVkB3_lHqzmjqGyve7KQBlf_vj-Y0s6DtUX2vXWMrgVT4Jk218o_dNWrn7olIaPWFWLjuSa1MJgZGZ5wv3vLKvMiDtmuFVi-AlD1sKfdfcgkns63Z6MXqa-efvxv3AgTyKleYG2aPGaTjm_eddA1fd65S22VY9QNflPMrUTo-3Br1I2y4s-mPfVEPEyHZLt4zgztrRpDDI8WxpgIX-Pt8Vi0UztKdnDzgeTPg3PYOTw41oMDVdnfw"},
 {"kty":"EC","crv":"P-256","kid":"ec","x":"JfAYPEHrgwX6r89TmEQIPZJiBkeP8BvOSvUTYbjPBAs","y":"grkYxL4jKiYGqNWHVWuBEI_ngBTV1w-BWRbtMFunfQI"}
]}"#;

struct Fixture {
    provider: Arc<Provider>,
    keys: KeySet,
}

static FIXTURE: LazyLock<Fixture> = LazyLock::new(|| {
    let dir = std::env::temp_dir().join(format!("nodeward-fuzz-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("state dir");
    let secret = dir.join("hs.secret");
    std::fs::write(&secret, b"fuzz-secret-0123456789abcdef0123").expect("secret");
    let cfg = ProviderConfig {
        name: "corp".into(),
        issuer: "https://idp.fuzz.test".into(),
        kubernetes_service_accounts: None,
        token_review: false,
        token_review_ttl: Duration::from_secs(30),
        claim_mappings: None,
        audiences: vec!["orders".into()],
        audience_claims: vec!["aud".into()],
        jwks_uri: None,
        token_endpoint: None,
        ca_file: None,
        algorithms: vec![
            Algorithm::RS256,
            Algorithm::PS256,
            Algorithm::ES256,
            Algorithm::ES384,
            Algorithm::EdDSA,
            Algorithm::HS256,
        ],
        hs_secret_file: Some(secret),
        allow_insecure_http: false,
        refresh: RefreshConfig::default(),
        clock_skew: Duration::from_secs(60),
        typ: None,
        token_from: vec![TokenSource::default()],
    };
    let provider = Arc::new(Provider::new(cfg, &dir, ProviderMetrics::unregistered("corp"), None).expect("provider"));
    let keys = KeySet::parse(JWKS.as_bytes(), &provider.cfg.algorithms, None, Some(SystemTime::now())).expect("jwks");
    assert_eq!(keys.len(), 3, "{:?}", keys.skipped);
    Fixture { provider, keys }
});

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    let fx = &*FIXTURE;
    let Ok(jws) = Jws::parse(token, 16 * 1024) else {
        return;
    };
    let now = UNIX_EPOCH + Duration::from_secs(1_750_000_000);
    if let Ok(v) = jws.verify(&fx.provider, &fx.keys, now) {
        // Only the two keys whose private half exists can have signed it.
        let alg = format!("{:?}", v.key.alg);
        assert!(alg == "EdDSA" || alg == "HS256", "verified with {alg}: {token:?}");
        assert!(v.exp as f64 + 60.0 >= 1_750_000_000.0);
    }
});
