//! The crypto floor, measured in the same run as the end-to-end numbers: a
//! raw aws-lc-rs verify of the pool's tokens, exactly what the criterion
//! bench (`agent/benches/validate.rs`, "raw aws-lc-rs") calls the minimum a
//! hand-written verifier must do per token (decode the signature, verify the
//! signing input with the JWK's components). Also turns the RS256 JWK into
//! the SPKI that njs 0.7.9 needs (it cannot import a JWK).
//!
//! The floor must be measured in optimized code (an unoptimized xtask takes
//! ~35 µs for what takes ~21 µs optimized). `cargo xtask` builds xtask
//! without optimizations, so a full run builds xtask in release once and
//! runs `xtask bench --floor FILE` (this module's [`floor_main`]) as a child.
//! `--quick` measures in-process instead and says so: it asserts no timings.

use std::hint::black_box;

use std::path::Path;
use std::process::Command;

use anyhow::{Context as _, bail};
use aws_lc_rs::signature::{
    ECDSA_P256_SHA256_FIXED, ED25519, RSA_PKCS1_2048_8192_SHA256, RsaPublicKeyComponents, UnparsedPublicKey,
};
use base64::Engine as _;
use base64::engine::general_purpose::{STANDARD, URL_SAFE_NO_PAD};
use serde_json::{Value, json};

const ALGS: [&str; 3] = ["RS256", "ES256", "EdDSA"];

/// The floor per algorithm, µs, and whether it was measured optimized.
pub fn floor(
    jwks: &Value,
    pools: &std::collections::HashMap<&'static str, Vec<String>>,
    release_xtask: Option<&Path>,
    dir: &Path,
) -> anyhow::Result<(Vec<(String, f64)>, bool)> {
    let optimized = !cfg!(debug_assertions);
    let Some(exe) = release_xtask.filter(|_| !optimized) else {
        let mut out = Vec::new();
        for alg in ALGS {
            let tokens = pools.get(alg).map_or(&[][..], Vec::as_slice);
            out.push((alg.to_owned(), verify_us(jwk(jwks, alg)?, alg, tokens)?));
        }
        return Ok((out, optimized));
    };
    let input = dir.join("floor-input.json");
    std::fs::write(&input, json!({"jwks": jwks, "pools": pools}).to_string())?;
    let out = Command::new(exe)
        .args(["bench", "--floor"])
        .arg(&input)
        .output()
        .with_context(|| format!("running {} bench --floor", exe.display()))?;
    if !out.status.success() {
        bail!(
            "{} bench --floor failed: {}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let v: Value = serde_json::from_slice(&out.stdout).context("bench --floor printed no JSON")?;
    let mut res = Vec::new();
    for alg in ALGS {
        let us = v[alg]
            .as_f64()
            .with_context(|| format!("bench --floor printed no {alg}"))?;
        res.push((alg.to_owned(), us));
    }
    Ok((res, true))
}

/// `xtask bench --floor FILE`: reads `{jwks, pools}`, prints `{alg: µs}`.
pub fn floor_main(file: &Path) -> anyhow::Result<()> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(file)?)?;
    let mut out = serde_json::Map::new();
    for alg in ALGS {
        let tokens: Vec<String> = serde_json::from_value(v["pools"][alg].clone())?;
        out.insert(alg.into(), json!(verify_us(jwk(&v["jwks"], alg)?, alg, &tokens)?));
    }
    println!("{}", Value::Object(out));
    Ok(())
}

/// What `--floor-count` reads: `alg`'s JWK and pool.
pub fn floor_input(b: &super::Bench, alg: &str) -> anyhow::Result<String> {
    let tokens = b.pools.get(alg).map_or(&[][..], Vec::as_slice);
    Ok(json!({"alg": alg, "jwk": jwk(&b.jwks, alg)?, "tokens": tokens}).to_string())
}

/// `xtask bench --floor-count FILE N`: `n` raw verifies of the pool in
/// `FILE` (from [`floor_input`]), for callgrind to count.
pub fn count_main(file: &Path, n: u64) -> anyhow::Result<()> {
    let v: Value = serde_json::from_str(&std::fs::read_to_string(file)?)?;
    let alg = v["alg"].as_str().context("no alg")?;
    let tokens: Vec<String> = serde_json::from_value(v["tokens"].clone())?;
    let pieces = pieces(&tokens)?;
    let verify = verifier(&v["jwk"], alg)?;
    anyhow::ensure!(!pieces.is_empty(), "no tokens");
    for i in 0..n as usize {
        let (input, sig) = pieces[i % pieces.len()];
        anyhow::ensure!(verify(black_box(input), black_box(sig)), "a pool token does not verify");
    }
    Ok(())
}

/// The JWK in `jwks` for `alg` (the dev IdP publishes one per alg).
pub fn jwk<'a>(jwks: &'a Value, alg: &str) -> anyhow::Result<&'a Value> {
    jwks["keys"]
        .as_array()
        .and_then(|keys| keys.iter().find(|k| k["alg"] == alg))
        .with_context(|| format!("the dev IdP's JWKS has no {alg} key"))
}

fn member(jwk: &Value, name: &str) -> anyhow::Result<Vec<u8>> {
    let s = jwk[name].as_str().with_context(|| format!("JWK has no {name}"))?;
    URL_SAFE_NO_PAD
        .decode(s)
        .with_context(|| format!("JWK {name} is not base64url"))
}

/// (signing input, base64url signature) -> valid.
type Verifier = Box<dyn Fn(&str, &str) -> bool>;

/// CPU microseconds per raw verify of `tokens` with `jwk`: the best of five
/// batches of ~100 ms on-CPU.
pub fn verify_us(jwk: &Value, alg: &str, tokens: &[String]) -> anyhow::Result<f64> {
    let pieces = pieces(tokens)?;
    let verify = verifier(jwk, alg)?;
    anyhow::ensure!(
        pieces.iter().all(|(i, s)| verify(i, s)),
        "a pool token does not verify with the {alg} JWK"
    );
    // On-CPU time of this thread (schedstat, ns), not wall time: on a
    // shared machine the wall clock also counts time spent waiting for a core.
    let mut best = f64::INFINITY;
    for _ in 0..5 {
        let start = on_cpu_ns()?;
        let mut n = 0u64;
        while on_cpu_ns()? - start < 100_000_000 {
            for (input, sig) in pieces.iter().take(64) {
                black_box(verify(black_box(input), black_box(sig)));
                n += 1;
            }
        }
        best = best.min((on_cpu_ns()? - start) as f64 / 1e3 / n as f64);
    }
    Ok(best)
}

/// (signing input, base64url signature) of each token.
fn pieces(tokens: &[String]) -> anyhow::Result<Vec<(&str, &str)>> {
    tokens
        .iter()
        .map(|t| t.rsplit_once('.').context("token without a signature"))
        .collect()
}

/// The raw verify: decode the signature, verify with the JWK's components.
fn verifier(jwk: &Value, alg: &str) -> anyhow::Result<Verifier> {
    Ok(match alg {
        "RS256" => {
            let (n, e) = (member(jwk, "n")?, member(jwk, "e")?);
            Box::new(move |input, sig| {
                URL_SAFE_NO_PAD.decode(sig).is_ok_and(|sig| {
                    RsaPublicKeyComponents { n: &n, e: &e }
                        .verify(&RSA_PKCS1_2048_8192_SHA256, input.as_bytes(), &sig)
                        .is_ok()
                })
            })
        }
        "ES256" => {
            let mut point = vec![0x04];
            point.extend(member(jwk, "x")?);
            point.extend(member(jwk, "y")?);
            Box::new(move |input, sig| {
                URL_SAFE_NO_PAD.decode(sig).is_ok_and(|sig| {
                    UnparsedPublicKey::new(&ECDSA_P256_SHA256_FIXED, &point)
                        .verify(input.as_bytes(), &sig)
                        .is_ok()
                })
            })
        }
        _ => {
            let x = member(jwk, "x")?;
            Box::new(move |input, sig| {
                URL_SAFE_NO_PAD.decode(sig).is_ok_and(|sig| {
                    UnparsedPublicKey::new(&ED25519, &x)
                        .verify(input.as_bytes(), &sig)
                        .is_ok()
                })
            })
        }
    })
}

/// Nanoseconds this thread has run on a CPU.
fn on_cpu_ns() -> anyhow::Result<u64> {
    let text = std::fs::read_to_string("/proc/thread-self/schedstat").context("reading /proc/thread-self/schedstat")?;
    text.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .context("/proc/thread-self/schedstat: no run time")
}

/// The RSA JWK as a DER SubjectPublicKeyInfo, base64 (what njs imports).
pub fn rsa_spki_b64(jwk: &Value) -> anyhow::Result<String> {
    let (n, e) = (member(jwk, "n")?, member(jwk, "e")?);
    let rsa_public_key = der(0x30, &[der_uint(&n), der_uint(&e)].concat());
    // AlgorithmIdentifier { rsaEncryption (1.2.840.113549.1.1.1), NULL }
    let algorithm = der(
        0x30,
        &[
            der(0x06, &[0x2a, 0x86, 0x48, 0x86, 0xf7, 0x0d, 0x01, 0x01, 0x01]),
            vec![0x05, 0x00],
        ]
        .concat(),
    );
    let bits = der(0x03, &[&[0u8][..], &rsa_public_key].concat());
    Ok(STANDARD.encode(der(0x30, &[algorithm, bits].concat())))
}

fn der(tag: u8, content: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    let len = content.len();
    if len < 0x80 {
        out.push(len as u8);
    } else {
        let bytes: Vec<u8> = len.to_be_bytes().into_iter().skip_while(|&b| b == 0).collect();
        out.push(0x80 | bytes.len() as u8);
        out.extend(bytes);
    }
    out.extend_from_slice(content);
    out
}

/// A DER INTEGER from unsigned big-endian bytes.
fn der_uint(bytes: &[u8]) -> Vec<u8> {
    let trimmed: Vec<u8> = bytes.iter().copied().skip_while(|&b| b == 0).collect();
    let mut content = Vec::with_capacity(trimmed.len() + 1);
    if trimmed.first().is_none_or(|&b| b & 0x80 != 0) {
        content.push(0);
    }
    content.extend(trimmed);
    der(0x02, &content)
}
