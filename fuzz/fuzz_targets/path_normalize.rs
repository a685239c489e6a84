//! The one path normalisation against any request target: nodeward either
//! refuses it, or (1) normalising what it forwards changes nothing
//! (idempotent: the upstream's path is already in the one canonical form),
//! and (2) a lenient reference router reading the forwarded path — decode
//! every escape once, `\` as `/`, drop `;params` per segment, merge slashes,
//! remove dot segments, the way common servers and frameworks read a path —
//! selects the same rule of a fixed policy that nodeward applied. A
//! difference is a request that a rule judged as one resource and the
//! upstream serves as another.
//!
//! Input: one byte choosing the options (even: the defaults; odd:
//! `escaped_slashes: unescape, backslashes: as_slash`), then the request
//! target (a `?query` is cut off, as the proxy takes `uri.path()`).
#![no_main]

use std::sync::LazyLock;

use http::Method;
use libfuzzer_sys::fuzz_target;
use nodeward::Policy;
use nodeward::config::Config;
use nodeward::path::{Backslashes, EscapedSlashes, PathOptions, normalize};

/// Globs that differ in the places spellings hide: a protected prefix, a
/// wildcard segment before one, a file pattern, encoded and non-ASCII
/// names, a deny rule, a catch-all.
const CONFIG: &str = r#"
providers:
  - {name: corp, issuer: "https://idp.fuzz.test", audiences: [orders]}
policies:
  - name: files
    rules:
      - {name: public, paths: ["/public/**"], allow: anonymous}
      - {name: admin, paths: ["/admin/**", "/api/*/admin/**"], require: {claims: {groups: {any_of: [admins]}}}}
      - {name: internal, paths: ["/internal/**", "/**/.git/**"], deny: true}
      - {name: assets, paths: ["/static/*.css", "/a%20b/**", "/caf%C3%A9/**", "/~user/*"], allow: anonymous}
      - {name: exact, paths: ["/login", "/api/v1/users"], allow: anonymous}
      - {name: default, require: {providers: [corp]}}
workloads:
  - {name: files, listen: "127.0.0.1:15006", upstream: "127.0.0.1:8080"}
"#;

static POLICY: LazyLock<Policy> = LazyLock::new(|| {
    let cfg = Config::parse(CONFIG, std::path::Path::new("fuzz.yaml")).expect("fixed config");
    Policy::compile(&cfg.policies[0], &cfg.providers).expect("fixed policy")
});

fn hex(b: u8) -> Option<u8> {
    (b as char).to_digit(16).and_then(|d| u8::try_from(d).ok())
}

/// How a lenient server reads a path: every valid escape decoded once (a
/// malformed one kept as text), `\` as `/`, `;params` dropped from each
/// segment, empty segments merged, dot segments resolved. Returned in the
/// form rules match (no trailing slash, except for `/`); `None` when the
/// decoded bytes are not UTF-8 (no rule could name such a path).
fn reference(path: &str) -> Option<String> {
    let bytes = path.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let escape = (bytes[i] == b'%')
            .then(|| Some(hex(*bytes.get(i + 1)?)? << 4 | hex(*bytes.get(i + 2)?)?))
            .flatten();
        match escape {
            Some(v) => {
                decoded.push(v);
                i += 3;
            }
            None => {
                decoded.push(bytes[i]);
                i += 1;
            }
        }
    }
    let text = String::from_utf8(decoded).ok()?.replace('\\', "/");
    let mut stack: Vec<&str> = Vec::new();
    for seg in text.split('/') {
        let seg = seg.split(';').next().unwrap_or("");
        match seg {
            "" | "." => {}
            ".." => {
                stack.pop();
            }
            s => stack.push(s),
        }
    }
    Some(format!("/{}", stack.join("/")))
}

fuzz_target!(|data: &[u8]| {
    let Some((&choice, rest)) = data.split_first() else {
        return;
    };
    let Ok(target) = std::str::from_utf8(rest) else {
        return;
    };
    let options = if choice % 2 == 0 {
        PathOptions::default()
    } else {
        PathOptions {
            escaped_slashes: EscapedSlashes::Unescape,
            backslashes: Backslashes::AsSlash,
            ..PathOptions::default()
        }
    };
    let path = target.split_once('?').map_or(target, |(p, _)| p);
    let Ok(n) = normalize(path, &options) else {
        return; // refused (400): nothing reaches a rule or the upstream
    };
    let again = normalize(&n.forward, &options)
        .unwrap_or_else(|e| panic!("{path:?} forwarded as {:?}, which is refused: {e}", n.forward));
    assert_eq!(again, n, "{path:?}: normalising the forwarded path changed it");
    let Some(theirs) = reference(&n.forward) else {
        panic!("{path:?}: nodeward matched {:?} but forwards non-UTF-8 {:?}", n.matched, n.forward);
    };
    let rule = |p: &str| POLICY.matching_rule(&Method::GET, p).map(|r| r.name.clone());
    assert_eq!(
        rule(&n.matched),
        rule(&theirs),
        "{path:?}: nodeward matched {:?}, the upstream reads {:?} from {:?}",
        n.matched,
        theirs,
        n.forward
    );
});
