//! Hostile tokens against the running proxy (dev IdP + nodeward + echo
//! upstream over real sockets): one table of cases, each a token and the
//! exact outcome — 200, or 401 with the precise `reason` — so that removing
//! any one defence makes its cases fail (a refusal for the wrong reason is a
//! failure too). Library-level checks live in `agent/src/token/tests.rs`;
//! this suite proves the same defences hold end to end, through header
//! extraction, the token cache, the on-demand JWKS refetch and the 401 body.

#[path = "hostile/forge.rs"]
mod forge;

use std::collections::BTreeMap;
use std::time::{SystemTime, UNIX_EPOCH};

use forge::{
    Attacker, ED25519_L, P256_N, add_le, b64, ecdsa_der, hmac, noncanonical, padded, parts, public_key_encodings,
    resign, sub_be, unb64,
};
use nodeward_dev_idp::{DevIdp, MintRequest};
use nodeward_testkit::{EchoUpstream, TestAgent, TestIdp, client, example_config, metric};
use serde_json::{Map, Value, json};

const SECRET: &[u8] = b"a-shared-secret-of-32-bytes-or-more";
/// `limits.max_token_bytes` by default.
const MAX_TOKEN: usize = 16 * 1024;

/// Which running agent a case is sent to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum On {
    /// The contract's example config: asymmetric algorithms only.
    Plain,
    /// Also accepts HS256 with a configured shared secret.
    Hs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Want {
    /// 200 from the upstream, with the verified identity attached.
    Allow,
    /// 401 with this `reason`.
    Refused(&'static str),
    /// The head is over `max_header_bytes`: 431, or the connection is closed.
    HeadTooLarge,
}
use Want::{Allow, HeadTooLarge, Refused};

const MALFORMED: Want = Refused("malformed_token");
const BAD_SIG: Want = Refused("bad_signature");
const NOT_ALLOWED: Want = Refused("algorithm_not_allowed");
const MISMATCH: Want = Refused("algorithm_mismatch");
const UNKNOWN_KID: Want = Refused("unknown_kid");

enum Auth {
    /// `Authorization: Bearer <token>`.
    Bearer(String),
    /// These `Authorization` values, byte for byte.
    Raw(Vec<Vec<u8>>),
}

struct Case {
    name: String,
    on: On,
    auth: Auth,
    want: Want,
}

#[derive(Default)]
struct Table(Vec<Case>);

impl Table {
    fn add(&mut self, name: impl Into<String>, token: String, want: Want) {
        self.add_on(On::Plain, name, token, want);
    }
    fn add_on(&mut self, on: On, name: impl Into<String>, token: String, want: Want) {
        self.0.push(Case {
            name: name.into(),
            on,
            auth: Auth::Bearer(token),
            want,
        });
    }
    fn raw(&mut self, name: &str, values: Vec<Vec<u8>>, want: Want) {
        self.0.push(Case {
            name: name.into(),
            on: On::Plain,
            auth: Auth::Raw(values),
            want,
        });
    }
}

/// Token building against the victim IdP.
struct Forge<'a> {
    idp: &'a DevIdp,
    iss: String,
    now: u64,
}

fn obj(v: Value) -> Map<String, Value> {
    match v {
        Value::Object(m) => m,
        other => panic!("not an object: {other}"),
    }
}

impl Forge<'_> {
    /// A token signed by the IdP's current `alg` key; `aud: orders` unless overridden.
    fn mint(&self, alg: &str, claims: Value, header: Value) -> String {
        let mut all = obj(json!({"aud": "orders"}));
        all.extend(obj(claims));
        self.idp
            .mint(&MintRequest {
                alg: Some(alg.into()),
                ttl: None,
                claims: all,
                header: obj(header),
            })
            .expect("mint")
    }

    fn valid(&self, alg: &str) -> String {
        self.mint(alg, json!({}), json!({}))
    }

    fn kid(&self, alg: &str) -> String {
        self.idp.current_kid(alg).expect("kid")
    }

    fn jwk(&self, alg: &str) -> Value {
        let kid = self.kid(alg);
        self.idp.jwks()["keys"]
            .as_array()
            .and_then(|k| k.iter().find(|k| k["kid"] == kid.as_str()))
            .cloned()
            .expect("current key in the JWKS")
    }

    /// Exactly these header and claims bytes, validly signed with `alg`.
    fn raw(&self, alg: &str, header: &[u8], claims: &[u8]) -> String {
        let input = format!("{}.{}", b64(header), b64(claims));
        let sig = self.idp.sign_raw(alg, input.as_bytes()).expect("sign");
        format!("{input}.{sig}")
    }

    /// `{"alg":"RS256","kid":<current>` + `extra` + `}`.
    fn header_text(&self, extra: &str) -> String {
        format!(r#"{{"alg":"RS256","kid":"{}"{extra}}}"#, self.kid("RS256"))
    }

    /// Valid claims as text, + `extra` members.
    fn claims_text(&self, extra: &str) -> String {
        format!(
            r#"{{"iss":"{}","aud":"orders","sub":"mallory","exp":{}{extra}}}"#,
            self.iss,
            self.now + 300
        )
    }

    /// An RS256 token over these texts.
    fn rs(&self, header: &str, claims: &str) -> String {
        self.raw("RS256", header.as_bytes(), claims.as_bytes())
    }
}

// === the table ===

fn alg_none_and_alg_values(f: &Forge, t: &mut Table) {
    // Every casing of "none", signed (the signature is irrelevant) and unsecured.
    for mask in 0..16u8 {
        let alg: String = "none"
            .chars()
            .enumerate()
            .map(|(i, c)| if mask >> i & 1 == 1 { c.to_ascii_uppercase() } else { c })
            .collect();
        let token = f.mint("RS256", json!({"sub": "admin"}), json!({"alg": alg}));
        t.add(format!("alg {alg}"), token.clone(), NOT_ALLOWED);
        let [h, c, _] = parts(&token);
        t.add(format!("alg {alg}, unsecured"), format!("{h}.{c}."), MALFORMED);
    }
    let hand = |alg: &str| {
        let header = json!({"alg": alg, "typ": "JWT"}).to_string();
        format!("{}.{}.", b64(header.as_bytes()), b64(f.claims_text("").as_bytes()))
    };
    t.add("alg none, no kid, unsecured", hand("none"), MALFORMED);
    for alg in [
        "",
        "RS256 ",
        " RS256",
        "rs256",
        "RS256\u{0}",
        "HS256",
        "ES521",
        "RSA-OAEP",
        "dir",
    ] {
        let token = f.mint("RS256", json!({}), json!({"alg": alg}));
        t.add(format!("alg {alg:?}"), token, NOT_ALLOWED);
    }
    t.add(
        "alg 5000 chars",
        f.mint("RS256", json!({}), json!({"alg": "A".repeat(5000)})),
        NOT_ALLOWED,
    );
    for (what, alg) in [
        ("null", json!(null)),
        ("number", json!(256)),
        ("array", json!(["RS256"])),
    ] {
        let token = if alg.is_null() {
            f.rs(&format!(r#"{{"kid":"{}"}}"#, f.kid("RS256")), &f.claims_text(""))
        } else {
            f.mint("RS256", json!({}), json!({"alg": alg}))
        };
        t.add(format!("alg {what}"), token, MALFORMED);
    }
}

fn algorithm_confusion(f: &Forge, t: &mut Table) {
    let claims = f.claims_text(r#","sub":"admin""#).replace(r#""sub":"mallory","#, "");
    for alg in ["RS256", "ES256"] {
        let jwk = f.jwk(alg);
        let kid = f.kid(alg);
        for (form, key) in public_key_encodings(&jwk) {
            for (on, want) in [(On::Plain, NOT_ALLOWED), (On::Hs, BAD_SIG)] {
                let header = format!(r#"{{"alg":"HS256","kid":"{kid}","typ":"JWT"}}"#);
                let token = hmac("HS256", &key, &header, &claims);
                t.add_on(
                    on,
                    format!("HS256 keyed with the {alg} key's {form} ({on:?})"),
                    token,
                    want,
                );
            }
        }
        let key = public_key_encodings(&jwk).remove(0).1;
        let token = hmac("HS512", &key, r#"{"alg":"HS512"}"#, &claims);
        t.add_on(
            On::Hs,
            format!("HS512 keyed with the {alg} JWK (Hs)"),
            token,
            NOT_ALLOWED,
        );
    }
    // The control: HS256 with the configured secret is accepted where allowed.
    let real = hmac("HS256", SECRET, r#"{"alg":"HS256","typ":"JWT"}"#, &claims);
    t.add_on(On::Hs, "HS256 with the configured secret (Hs)", real.clone(), Allow);
    t.add("HS256 with the configured secret (Plain)", real, NOT_ALLOWED);

    // Header alg differing from the JWK's: the key decides.
    let (rsa, ec, ed) = (f.kid("RS256"), f.kid("ES256"), f.kid("EdDSA"));
    for (signer, alg, kid) in [
        ("RS256", "ES256", &rsa),
        ("RS256", "RS384", &rsa),
        ("RS256", "RS512", &rsa),
        ("RS256", "PS256", &rsa),
        ("RS256", "EdDSA", &rsa),
        ("ES256", "RS256", &ec),
        ("ES256", "ES384", &ec),
        ("ES256", "EdDSA", &ec),
        ("EdDSA", "ES256", &ed),
        ("EdDSA", "RS256", &ed),
    ] {
        let token = f.mint(signer, json!({}), json!({"alg": alg, "kid": kid}));
        t.add(format!("header {alg} on the {signer} key"), token, MISMATCH);
    }
    // Without a kid only keys pinned to the header's alg are tried.
    let token = f.mint("RS256", json!({}), json!({"alg": "ES256", "kid": null}));
    t.add("no kid, header ES256, RSA signature", token, BAD_SIG);
    t.add(
        "no kid, RS256 (control)",
        f.mint("RS256", json!({}), json!({"kid": null})),
        Allow,
    );
}

fn forged_signatures(f: &Forge, t: &mut Table) {
    // ECDSA: "psychic signatures" (CVE-2022-21449) and other out-of-range scalars.
    let es = f.mint("ES256", json!({"sub": "admin"}), json!({}));
    let sig = unb64(parts(&es)[2]);
    let (r, s) = sig.split_at(32);
    let zero = [0u8; 32];
    let n = &P256_N[..];
    let psychic: [(&str, Vec<u8>); 12] = [
        ("r=0,s=0", [zero, zero].concat()),
        ("r=0", [&zero[..], s].concat()),
        ("s=0", [r, &zero[..]].concat()),
        ("r=n,s=n", [n, n].concat()),
        ("r=n", [n, s].concat()),
        ("s=n", [r, n].concat()),
        ("r=s=2^256-1", vec![0xff; 64]),
        ("ASN.1 DER instead of r||s", ecdsa_der(&sig)),
        ("63 bytes", sig[..63].to_vec()),
        ("65 bytes", [&sig[..], &[0]].concat()),
        ("r only", r.to_vec()),
        ("r and s swapped", [s, r].concat()),
    ];
    for (what, bad) in psychic {
        t.add(format!("ES256 {what}"), resign(&es, &bad), BAD_SIG);
    }
    // ECDSA is malleable: (r, n-s) verifies too. JWS does not ask for low-s and
    // the cache keys on the token text, so this is documented, not refused.
    let high_s = sub_be(&P256_N, s);
    t.add(
        "ES256 (r, n-s) is the same signature",
        resign(&es, &[r, &high_s[..]].concat()),
        Allow,
    );

    // Ed25519: S must be reduced mod L; the identity point with S=0; zeros.
    let ed = f.mint("EdDSA", json!({"sub": "admin"}), json!({}));
    let sig = unb64(parts(&ed)[2]);
    let (big_r, big_s) = sig.split_at(32);
    let unreduced = add_le(big_s, &ED25519_L);
    let mut identity = vec![0u8; 64];
    identity[0] = 1;
    for (what, bad) in [
        ("S+L (non-canonical S)", [big_r, &unreduced[..]].concat()),
        ("all zero", vec![0; 64]),
        ("R=identity,S=0", identity),
    ] {
        t.add(format!("EdDSA {what}"), resign(&ed, &bad), BAD_SIG);
    }

    // RSA: signature values that are not in (0, n) or are trivially related to it.
    let rs = f.mint("RS256", json!({"sub": "admin"}), json!({}));
    let modulus = unb64(f.jwk("RS256")["n"].as_str().expect("n"));
    let mut one = vec![0u8; modulus.len()];
    *one.last_mut().expect("len") = 1;
    for (what, bad) in [
        ("0", vec![0; modulus.len()]),
        ("1", one),
        ("n", modulus.clone()),
        ("2^2048-1", vec![0xff; modulus.len()]),
        ("one byte", vec![0]),
    ] {
        t.add(format!("RS256 signature = {what}"), resign(&rs, &bad), BAD_SIG);
    }

    // Truncated, extended, bit-flipped, swapped: for every algorithm.
    for alg in ["RS256", "ES256", "EdDSA"] {
        let token = f.mint(alg, json!({"sub": "alice"}), json!({}));
        let other = f.mint(alg, json!({"sub": "admin"}), json!({}));
        let [h, c, s] = parts(&token);
        let sig = unb64(s);
        let flip = |i: usize, bit: u8| {
            let mut b = sig.clone();
            b[i] ^= bit;
            format!("{h}.{c}.{}", b64(&b))
        };
        let last = sig.len() - 1;
        let mut cases = vec![
            ("first bit flipped", flip(0, 0x80)),
            ("middle bit flipped", flip(sig.len() / 2, 0x10)),
            ("last bit flipped", flip(last, 0x01)),
            ("truncated by one byte", format!("{h}.{c}.{}", b64(&sig[..last]))),
            (
                "extended by one byte",
                format!("{h}.{c}.{}", b64(&[&sig[..], &[0]].concat())),
            ),
            ("signature of another token", format!("{h}.{c}.{}", parts(&other)[2])),
            ("claims of another token", format!("{h}.{}.{s}", parts(&other)[1])),
        ];
        // A different but equivalent header (typ changed) breaks the signature.
        let header: Value = serde_json::from_slice(&unb64(h)).expect("header json");
        let mut header = obj(header);
        header.insert("typ".into(), json!("at+jwt"));
        let rewritten = b64(Value::Object(header).to_string().as_bytes());
        cases.push(("header re-encoded", format!("{rewritten}.{c}.{s}")));
        for (what, token) in cases {
            t.add(format!("{alg} {what}"), token, BAD_SIG);
        }
        t.add(
            format!("{alg} signature not base64"),
            format!("{h}.{c}.!!!!"),
            MALFORMED,
        );
    }
}

fn encodings_and_shapes(f: &Forge, t: &mut Table) {
    // Make every segment's length leave spare bits, so non-canonical forms exist.
    let pad = |n: usize| json!({"p": format!("?>?>{}", "x".repeat(n))});
    let token = (0..9)
        .map(|n: usize| f.mint("RS256", pad(n % 3), pad(n / 3)))
        .find(|tk| parts(tk).iter().all(|s| matches!(s.len() % 4, 2 | 3)))
        .expect("some padding gives every part spare bits");
    t.add("canonical control", token.clone(), Allow);
    let [h, c, s] = parts(&token);
    let std_alphabet = |seg: &str| seg.replace('-', "+").replace('_', "/");
    let mut std_cases = 0;
    for (part, seg) in [("header", h), ("claims", c), ("signature", s)] {
        let with = |new: &str| match part {
            "header" => format!("{new}.{c}.{s}"),
            "claims" => format!("{h}.{new}.{s}"),
            _ => format!("{h}.{c}.{new}"),
        };
        t.add(format!("{part} padded with ="), with(&padded(seg)), MALFORMED);
        t.add(
            format!("{part} non-canonical trailing bits"),
            with(&noncanonical(seg)),
            MALFORMED,
        );
        if std_alphabet(seg) != seg {
            std_cases += 1;
            t.add(
                format!("{part} in the +/ alphabet"),
                with(&std_alphabet(seg)),
                MALFORMED,
            );
        }
        t.add(
            format!("{part} with a space inside"),
            with(&format!("{} {}", &seg[..4], &seg[4..])),
            MALFORMED,
        );
        t.add(
            format!("{part} percent-encoded"),
            with(&format!("{}%3D", seg)),
            MALFORMED,
        );
    }
    assert!(std_cases >= 2, "the +/ alphabet cases need '-' or '_' in the segments");

    let jwe_header = b64(br#"{"alg":"RSA-OAEP-256","enc":"A256GCM","kid":"x"}"#);
    #[rustfmt::skip]
    let shapes = [
        ("one part", c.to_string(), MALFORMED),
        ("two parts", format!("{h}.{c}"), MALFORMED),
        ("four parts", format!("{token}.{s}"), MALFORMED),
        ("JWE compact (five parts)", format!("{jwe_header}.{}.{}.{}.{}", b64(&[7; 256]), b64(&[1; 12]), c, b64(&[2; 16])), Refused("unsupported_token")),
        ("JWS with two more parts", format!("{token}.{c}.{s}"), Refused("unsupported_token")),
        ("six parts", format!("{token}.{c}.{s}.{s}"), MALFORMED),
        ("enc header on a JWS", f.mint("RS256", json!({}), json!({"enc": "A256GCM"})), Refused("unsupported_token")),
        ("empty header", format!(".{c}.{s}"), MALFORMED),
        ("empty claims", format!("{h}..{s}"), MALFORMED),
        ("empty signature", format!("{h}.{c}."), MALFORMED),
        ("dots only", "..".to_string(), MALFORMED),
        ("leading dot", format!(".{token}"), MALFORMED),
        ("JWS JSON general serialisation",
         json!({"payload": c, "signatures": [{"protected": h, "signature": s}]}).to_string(), MALFORMED),
        ("JWS JSON flattened serialisation", json!({"payload": c, "protected": h, "signature": s}).to_string(), MALFORMED),
    ];
    for (what, token, want) in shapes {
        t.add(what, token, want);
    }

    // Validly signed, but the header or claims are not one clean JSON object.
    let (hd, cl) = (f.header_text(""), f.claims_text(""));
    t.add("hand-built control", f.rs(&hd, &cl), Allow);
    let deep = format!(r#","x":{}{}"#, "[".repeat(200), "]".repeat(200));
    #[rustfmt::skip]
    let broken: [(&str, Vec<u8>, Vec<u8>); 11] = [
        ("header is an array", format!("[{hd}]").into_bytes(), cl.clone().into_bytes()),
        ("header with trailing bytes", format!("{hd} x").into_bytes(), cl.clone().into_bytes()),
        ("header with a BOM", format!("\u{feff}{hd}").into_bytes(), cl.clone().into_bytes()),
        ("header not UTF-8", [hd.as_bytes(), b"\xff"].concat(), cl.clone().into_bytes()),
        ("claims null", hd.clone().into_bytes(), b"null".to_vec()),
        ("claims nested 200 deep", hd.clone().into_bytes(), f.claims_text(&deep).into_bytes()),
        ("claims with a lone surrogate", hd.clone().into_bytes(), f.claims_text(r#","name":"\ud800""#).into_bytes()),
        ("claims with a number out of range", hd.clone().into_bytes(), f.claims_text(r#","n":1e400"#).into_bytes()),
        ("claims with a trailing comma", hd.clone().into_bytes(), f.claims_text(",").into_bytes()),
        ("claims with single quotes", hd.clone().into_bytes(), f.claims_text(",'a':'b'").into_bytes()),
        ("claims with a comment", hd.clone().into_bytes(), f.claims_text("/* x */").into_bytes()),
    ];
    for (what, header, claims) in broken {
        t.add(what, f.raw("RS256", &header, &claims), MALFORMED);
    }
}

fn key_carrying_headers(f: &Forge, evil: &TestIdp, att: &Attacker, t: &mut Table) {
    let evil_url = format!("http://{}", evil.addr);
    let evil_jwk = evil.idp.jwks()["keys"][0].clone();
    let carry = json!({"jwk": evil_jwk, "jku": format!("{evil_url}/jwks"),
                       "x5u": format!("{evil_url}/cert.pem"), "x5c": att.x5c()});
    let victim = json!({"iss": f.iss, "aud": "orders", "sub": "admin"});
    let evil_mint = |header: Value| {
        evil.idp
            .mint(&MintRequest {
                alg: Some("RS256".into()),
                ttl: None,
                claims: obj(victim.clone()),
                header: obj(header),
            })
            .expect("evil mint")
    };
    let with = |extra: Value| {
        let mut h = obj(carry.clone());
        h.extend(obj(extra));
        Value::Object(h)
    };
    t.add("jwk+jku+x5u+x5c, attacker's kid", evil_mint(carry.clone()), UNKNOWN_KID);
    t.add(
        "jwk+jku+x5u+x5c, victim's kid",
        evil_mint(with(json!({"kid": f.kid("RS256")}))),
        BAD_SIG,
    );
    t.add(
        "jwk+jku+x5u+x5c, no kid",
        evil_mint(with(json!({"kid": null}))),
        BAD_SIG,
    );
    for name in ["jwk", "jku", "x5u", "x5c"] {
        let header = json!({ name: carry[name], "kid": f.kid("RS256") });
        t.add(format!("{name} alone, victim's kid"), evil_mint(header), BAD_SIG);
    }
    let claims = json!({"iss": f.iss, "aud": "orders", "sub": "admin", "exp": f.now + 300});
    let es = |extra: Value| {
        let mut h = obj(json!({"alg": "ES256", "typ": "JWT"}));
        h.extend(obj(extra));
        att.sign(&Value::Object(h), &claims)
    };
    t.add("ES256 embedded jwk, no kid", es(json!({"jwk": att.jwk})), BAD_SIG);
    t.add(
        "ES256 embedded jwk, its kid",
        es(json!({"jwk": att.jwk, "kid": "attacker"})),
        UNKNOWN_KID,
    );
    t.add(
        "ES256 embedded jwk, victim's kid",
        es(json!({"jwk": att.jwk, "kid": f.kid("ES256")})),
        BAD_SIG,
    );
    t.add(
        "ES256 x5c self-signed, victim's kid",
        es(json!({"x5c": att.x5c(), "kid": f.kid("ES256")})),
        BAD_SIG,
    );
    t.add("ES256 x5c self-signed, no kid", es(json!({"x5c": att.x5c()})), BAD_SIG);
    // The real IdP's token with the same headers verifies with the real key.
    t.add(
        "jwk+jku+x5u+x5c on a genuine token",
        f.mint("RS256", json!({}), carry),
        Allow,
    );
}

fn kids_and_crit(f: &Forge, t: &mut Table) {
    let real = f.kid("RS256");
    let big = "k".repeat(10_000);
    for (what, kid) in [
        ("10 KB", big.as_str()),
        ("path traversal", "../../../../../../etc/passwd"),
        ("absolute path", "/dev/stdin"),
        ("NUL", "\u{0}"),
        ("real kid + NUL", &format!("{real}\u{0}")),
        ("real kid + space", &format!("{real} ")),
        ("real kid upper-cased", &real.to_uppercase()),
        ("SQL", "' OR '1'='1' --"),
        ("SQL drop", "x'; DROP TABLE keys; --"),
        ("URL", "https://evil.example/jwks.json"),
        ("CRLF", "a\r\nx-nodeward-sub: admin"),
        ("empty", ""),
    ] {
        t.add(
            format!("kid {what}"),
            f.mint("RS256", json!({}), json!({"kid": kid})),
            UNKNOWN_KID,
        );
    }
    for (what, kid) in [
        ("number", json!(7)),
        ("array", json!([real])),
        ("object", json!({"$ne": null})),
        ("bool", json!(true)),
    ] {
        t.add(
            format!("kid {what}"),
            f.mint("RS256", json!({}), json!({"kid": kid})),
            MALFORMED,
        );
    }
    #[rustfmt::skip]
    let crits = [
        ("crit [exp]", json!({"crit": ["exp"], "exp": 1}), Refused("unknown_crit")),
        ("crit [b64] (RFC 7797)", json!({"crit": ["b64"], "b64": false}), Refused("unknown_crit")),
        ("crit naming an absent member", json!({"crit": ["x-policy"]}), Refused("unknown_crit")),
        ("crit [kid]", json!({"crit": ["kid"]}), Refused("unknown_crit")),
        ("crit with a number", json!({"crit": [1]}), Refused("unknown_crit")),
        ("crit 5000-char name", json!({"crit": ["c".repeat(5000)]}), Refused("unknown_crit")),
        ("crit empty", json!({"crit": []}), MALFORMED),
        ("crit a string", json!({"crit": "exp"}), MALFORMED),
        ("crit an object", json!({"crit": {}}), MALFORMED),
    ];
    for (what, header, want) in crits {
        t.add(what, f.mint("RS256", json!({}), header), want);
    }
}

fn time_claims(f: &Forge, t: &mut Table) {
    let now = f.now;
    let nf = now as f64;
    let expired = Refused("token_expired");
    let early = Refused("token_not_yet_valid");
    let future = Refused("token_issued_in_future");
    #[rustfmt::skip]
    let cases = [
        ("exp as a string", json!({"exp": (now + 300).to_string()}), MALFORMED),
        ("exp as an empty string", json!({"exp": ""}), MALFORMED),
        ("exp as a bool", json!({"exp": true}), MALFORMED),
        ("exp as an array", json!({"exp": [now + 300]}), MALFORMED),
        ("exp as an object", json!({"exp": {"$gt": 0}}), MALFORMED),
        ("exp null", json!({"exp": Value::Null}), MALFORMED),
        ("exp negative", json!({"exp": -1}), MALFORMED),
        ("exp a float", json!({"exp": nf + 300.5}), Allow),
        ("exp huge (1e300)", json!({"exp": 1e300}), Allow),
        ("exp u64::MAX", json!({"exp": u64::MAX}), Allow),
        ("exp 0", json!({"exp": 0}), expired),
        ("exp 1e-300", json!({"exp": 1e-300}), expired),
        // Margins of 30 s or more either side of the 60 s skew: the table is
        // minted before its ~300 cases run, which takes seconds on a loaded machine.
        ("exp now-30 (inside the 60s skew)", json!({"exp": now - 30}), Allow),
        ("exp now-120 (outside the skew)", json!({"exp": now - 120}), expired),
        ("exp now-120.5 as a float", json!({"exp": nf - 120.5}), expired),
        ("nbf as a string", json!({"nbf": now.to_string()}), MALFORMED),
        ("nbf negative", json!({"nbf": -5}), MALFORMED),
        ("nbf a float in the past", json!({"nbf": nf - 10.5}), Allow),
        ("nbf now+30 (inside the skew)", json!({"nbf": now + 30}), Allow),
        ("nbf now+120 (outside the skew)", json!({"nbf": now + 120}), early),
        ("nbf huge", json!({"nbf": 1e300}), early),
        ("iat as a string", json!({"iat": now.to_string()}), MALFORMED),
        ("iat negative", json!({"iat": -1}), MALFORMED),
        ("iat a float", json!({"iat": nf - 0.25}), Allow),
        ("iat missing", json!({"iat": Value::Null}), Allow),
        ("iat now+30 (inside the skew)", json!({"iat": now + 30}), Allow),
        ("iat now+120 (outside the skew)", json!({"iat": now + 120}), future),
        ("iat huge", json!({"iat": u64::MAX}), future),
    ];
    for (what, claims, want) in cases {
        // A JSON null in mint's overrides removes the claim; "exp null" needs the literal.
        let token = if what == "exp null" {
            f.rs(
                &f.header_text(""),
                &f.claims_text("").replace(&format!("{}", now + 300), "null"),
            )
        } else {
            f.mint("RS256", claims, json!({}))
        };
        t.add(what, token, want);
    }
    t.add(
        "exp missing",
        f.mint("RS256", json!({"exp": null}), json!({})),
        MALFORMED,
    );
    let huge = f
        .claims_text("")
        .replace(&format!(r#""exp":{}"#, now + 300), r#""exp":1e400"#);
    t.add("exp 1e400 (not a double)", f.rs(&f.header_text(""), &huge), MALFORMED);
}

fn issuer_and_audience(f: &Forge, t: &mut Table) {
    let iss = f.iss.as_str();
    let unknown = Refused("unknown_issuer");
    let wrong = Refused("wrong_audience");
    let port = iss.rsplit(':').next().expect("port");
    #[rustfmt::skip]
    let cases = [
        ("iss with a trailing slash", json!({"iss": format!("{iss}/")}), unknown),
        ("iss with a trailing space", json!({"iss": format!("{iss} ")}), unknown),
        ("iss with a leading space", json!({"iss": format!(" {iss}")}), unknown),
        ("iss with NUL", json!({"iss": format!("{iss}\u{0}")}), unknown),
        ("iss upper-case scheme", json!({"iss": iss.replace("http", "HTTP")}), unknown),
        ("iss https", json!({"iss": iss.replace("http:", "https:")}), unknown),
        ("iss Cyrillic р in http", json!({"iss": iss.replace("http", "htt\u{440}")}), unknown),
        ("iss full-width digits", json!({"iss": iss.replace("127", "\u{ff11}\u{ff12}\u{ff17}")}), unknown),
        ("iss localhost", json!({"iss": format!("http://localhost:{port}")}), unknown),
        ("iss with a path", json!({"iss": format!("{iss}/.well-known/openid-configuration")}), unknown),
        ("iss 5000 chars", json!({"iss": "i".repeat(5000)}), unknown),
        ("iss missing", json!({"iss": null}), MALFORMED),
        ("iss a number", json!({"iss": 1}), MALFORMED),
        ("iss an array", json!({"iss": [iss]}), MALFORMED),
        ("aud array with ours", json!({"aud": ["billing", "orders"]}), Allow),
        ("aud array without ours", json!({"aud": ["billing", "orders-admin"]}), wrong),
        ("aud empty array", json!({"aud": []}), wrong),
        ("aud missing", json!({"aud": null}), wrong),
        ("aud other case", json!({"aud": "Orders"}), wrong),
        ("aud with a space", json!({"aud": "orders "}), wrong),
        ("aud with NUL", json!({"aud": "orders\u{0}"}), wrong),
        ("aud Cyrillic о", json!({"aud": "\u{43e}rders"}), wrong),
        ("aud prefix", json!({"aud": "order"}), wrong),
        ("aud array holding a number", json!({"aud": ["orders", 1]}), MALFORMED),
        ("aud an object", json!({"aud": {"orders": true}}), MALFORMED),
        ("aud a number", json!({"aud": 1}), MALFORMED),
        ("sub a number", json!({"sub": 1}), MALFORMED),
    ];
    for (what, claims, want) in cases {
        t.add(what, f.mint("RS256", claims, json!({})), want);
    }
}

fn duplicate_members(f: &Forge, t: &mut Table) {
    let (hd, cl) = (|e: &str| f.header_text(e), |e: &str| f.claims_text(e));
    #[rustfmt::skip]
    let cases = [
        ("header alg twice", hd(r#","alg":"none""#), cl("")),
        ("header alg twice, escaped", hd(r#","\u0061lg":"none""#), cl("")),
        ("header kid twice", hd(r#","kid":"other""#), cl("")),
        ("header crit twice", hd(r#","crit":["x"],"crit":[]"#), cl("")),
        ("claims aud twice", hd(""), cl(r#","aud":"billing""#)),
        ("claims iss twice", hd(""), cl(r#","iss":"https://evil.example""#)),
        ("claims exp twice", hd(""), cl(r#","exp":1"#)),
        ("claims sub twice", hd(""), cl(r#","sub":"admin""#)),
        ("claims nested member twice", hd(""), cl(r#","groups":{"a":1,"a":2}"#)),
        ("claims member twice inside an array", hd(""), cl(r#","r":[{"g":[],"g":["admins"]}]"#)),
        ("claims member twice, 5000-char name", hd(""), cl(&format!(r#","{0}":1,"{0}":2"#, "m".repeat(5000)))),
    ];
    for (what, header, claims) in cases {
        t.add(what, f.rs(&header, &claims), MALFORMED);
    }
}

/// An RS256 token of exactly `len` bytes.
fn sized(f: &Forge, len: usize) -> String {
    let make = |a: usize, b: usize| f.mint("RS256", json!({"pad": "c".repeat(b)}), json!({"pad": "h".repeat(a)}));
    for a in 0..6 {
        let base = make(a, 0).len();
        let estimate = (len.saturating_sub(base)) * 3 / 4;
        for b in estimate.saturating_sub(6)..estimate + 6 {
            let token = make(a, b);
            if token.len() == len {
                return token;
            }
        }
    }
    panic!("no token of exactly {len} bytes");
}

fn sizes_and_transport(f: &Forge, t: &mut Table) {
    t.add("token of exactly max_token_bytes", sized(f, MAX_TOKEN), Allow);
    t.add(
        "token one byte over",
        sized(f, MAX_TOKEN + 1),
        Refused("token_too_large"),
    );
    t.add("token of 30 KB", sized(f, 30_000), Refused("token_too_large"));
    t.add("token of 40 KB (over the head limit)", sized(f, 40_000), HeadTooLarge);
    let many: Map<String, Value> = (0..1000).map(|i| (format!("c{i}"), json!(i))).collect();
    t.add("1000 claims", f.mint("RS256", Value::Object(many), json!({})), Allow);
    t.add(
        "a 10 KB claim",
        f.mint("RS256", json!({"email": "e".repeat(10_000)}), json!({})),
        Allow,
    );

    let v = f.valid("RS256");
    let bearer = |prefix: &str, suffix: &[u8]| [prefix.as_bytes(), v.as_bytes(), suffix].concat();
    t.raw(
        "two Authorization headers",
        vec![bearer("Bearer ", b""), bearer("Bearer ", b"")],
        MALFORMED,
    );
    t.raw("lower-case scheme", vec![bearer("bearer ", b"")], Allow);
    t.raw("upper-case scheme", vec![bearer("BEARER ", b"")], Allow);
    t.raw("extra spaces", vec![bearer("Bearer    ", b"  ")], Allow);
    t.raw(
        "Basic scheme",
        vec![b"Basic dXNlcjpwYXNz".to_vec()],
        Refused("missing_token"),
    );
    t.raw("scheme only", vec![b"Bearer".to_vec()], Refused("missing_token"));
    t.raw(
        "scheme and spaces only",
        vec![b"Bearer   ".to_vec()],
        Refused("missing_token"),
    );
    t.raw(
        "scheme glued to the token",
        vec![bearer("Bearer", b"")],
        Refused("missing_token"),
    );
    t.raw("obs-text after the token", vec![bearer("Bearer ", b"\xff")], MALFORMED);
    t.raw("space inside the token", vec![bearer("Bearer ", b" x")], MALFORMED);
}

fn table(f: &Forge, evil: &TestIdp, att: &Attacker) -> Vec<Case> {
    let mut t = Table::default();
    t.add("valid RS256 (control)", f.valid("RS256"), Allow);
    t.add("valid ES256 (control)", f.valid("ES256"), Allow);
    t.add("valid EdDSA (control)", f.valid("EdDSA"), Allow);
    alg_none_and_alg_values(f, &mut t);
    algorithm_confusion(f, &mut t);
    forged_signatures(f, &mut t);
    encodings_and_shapes(f, &mut t);
    key_carrying_headers(f, evil, att, &mut t);
    kids_and_crit(f, &mut t);
    time_claims(f, &mut t);
    issuer_and_audience(f, &mut t);
    duplicate_members(f, &mut t);
    sizes_and_transport(f, &mut t);
    t.0
}

// === running it ===

/// Sends one case and compares the outcome; `Err` says what differed.
async fn check(case: &Case, url: &str) -> Result<(), String> {
    let mut req = client().get(format!("{url}/orders"));
    let token: &[u8] = match &case.auth {
        Auth::Bearer(t) => {
            req = req.header("authorization", format!("Bearer {t}"));
            t.as_bytes()
        }
        Auth::Raw(values) => {
            for v in values {
                let value = reqwest::header::HeaderValue::from_bytes(v).map_err(|e| format!("header value: {e}"))?;
                req = req.header("authorization", value);
            }
            &values[0]
        }
    };
    let resp = req.send().await;
    let resp = match (case.want, resp) {
        (HeadTooLarge, Err(_)) => return Ok(()),
        (_, Err(e)) => return Err(format!("request failed: {e}")),
        (_, Ok(r)) => r,
    };
    let status = resp.status().as_u16();
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned())
        .unwrap_or_default();
    let text = resp.text().await.map_err(|e| format!("body: {e}"))?;
    let body: Value = serde_json::from_str(&text).unwrap_or(Value::Null);
    let got = format!("{status} {}", body["reason"]);
    match case.want {
        HeadTooLarge if status == 431 => Ok(()),
        HeadTooLarge => Err(format!("want 431, got {got}")),
        Allow if status == 200 && body["headers"]["x-nodeward-sub"].is_array() => Ok(()),
        Allow => Err(format!("want 200, got {got}: {text:.300}")),
        Refused(reason) => {
            if status != 401 || body["reason"] != reason {
                return Err(format!("want 401 {reason}, got {got}: {text:.300}"));
            }
            let printable = String::from_utf8_lossy(token);
            let token_shown = printable.len() > 16 && (text.contains(&*printable) || challenge.contains(&*printable));
            if token_shown {
                return Err("the refusal echoes the token".into());
            }
            // Attacker-chosen strings (kid, alg, crit, member names) are echoed
            // in `detail` and the audit line only in bounded form.
            if text.len() > 1024 {
                return Err(format!("refusal body of {} bytes: {text:.300}", text.len()));
            }
            let want_error = if reason == "missing_token" {
                "unauthorized"
            } else {
                "invalid_token"
            };
            if body["error"] != want_error || !challenge.starts_with("Bearer realm=\"nodeward\"") {
                return Err(format!("error {} / challenge {challenge:?}", body["error"]));
            }
            Ok(())
        }
    }
}

fn now_secs() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).expect("clock").as_secs()
}

#[tokio::test]
async fn every_hostile_token_gets_its_precise_refusal() {
    let idp = TestIdp::start().await;
    let evil = TestIdp::start().await;
    let upstream = EchoUpstream::start().await;
    let plain = TestAgent::start(&example_config(&idp.issuer(), upstream.addr)).await;
    let dir = tempfile::tempdir().expect("tempdir");
    let secret = dir.path().join("hs.secret");
    std::fs::write(&secret, SECRET).expect("write secret");
    let hs_yaml = example_config(&idp.issuer(), upstream.addr).replace(
        "    audiences: [orders]\n",
        &format!(
            "    audiences: [orders]\n    algorithms: [RS256, ES256, EdDSA, HS256]\n    hs_secret_file: {}\n",
            secret.display()
        ),
    );
    let hs = TestAgent::start(&hs_yaml).await;
    plain.wait_ready().await;
    hs.wait_ready().await;

    let forge = Forge {
        idp: &idp.idp,
        iss: idp.issuer(),
        now: now_secs(),
    };
    // The DER encoder behind the confusion secrets is the real key: it verifies a real token.
    let rs = forge.valid("RS256");
    let [h, c, s] = parts(&rs);
    let pkcs1 = forge::rsa_pkcs1(&forge.jwk("RS256"));
    aws_lc_rs::signature::UnparsedPublicKey::new(&aws_lc_rs::signature::RSA_PKCS1_2048_8192_SHA256, &pkcs1)
        .verify(format!("{h}.{c}").as_bytes(), &unb64(s))
        .expect("PKCS#1 encoding of the JWK verifies");

    let attacker = Attacker::new();
    let cases = table(&forge, &evil, &attacker);
    let (plain_url, hs_url) = (plain.url("orders"), hs.url("orders"));
    let mut failures = Vec::new();
    let mut expected: BTreeMap<String, f64> = BTreeMap::new();
    for case in &cases {
        let url = if case.on == On::Plain { &plain_url } else { &hs_url };
        if let Err(why) = check(case, url).await {
            failures.push(format!("{} ({:?}): {why}", case.name, case.want));
        }
        if case.on == On::Plain {
            let series = match case.want {
                Allow => "decision=\"allow\",reason=\"authorized\"".to_string(),
                Refused(r) => format!("decision=\"deny\",reason=\"{r}\""),
                HeadTooLarge => continue,
            };
            *expected.entry(series).or_default() += 1.0;
        }
    }
    assert!(
        failures.is_empty(),
        "{} of {} hostile-token cases failed:\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
    // Every decision is counted under the same reason the client saw.
    let m = plain.metrics().await;
    for (series, n) in &expected {
        let name = format!("nodeward_requests_total{{{series},workload=\"orders\"}}");
        assert_eq!(metric(&m, &name), Some(*n), "{name}");
    }
    // Key-carrying headers are never followed.
    let stats = evil.idp.stats();
    assert_eq!(
        (stats.discovery_fetches, stats.jwks_fetches),
        (0, 0),
        "the agent fetched from a URL named in a token header"
    );
    eprintln!("{} hostile-token cases passed", cases.len());
}
