//! The JWKS parser on arbitrary bytes: never a panic, every key pinned to an
//! allowed algorithm, at most MAX_KEYS keys, kids unique.
#![no_main]

use std::collections::HashSet;

use nodeward::config::Algorithm;
use libfuzzer_sys::fuzz_target;
use nodeward::provider::KeySet;

const ALLOWED: &[Algorithm] = &[
    Algorithm::RS256,
    Algorithm::PS256,
    Algorithm::ES256,
    Algorithm::ES384,
    Algorithm::EdDSA,
];

fuzz_target!(|data: &[u8]| {
    let Ok(set) = KeySet::parse(data, ALLOWED, None, None) else {
        return;
    };
    assert!(set.len() <= 64, "MAX_KEYS");
    let mut kids = HashSet::new();
    for kid in set.kids() {
        assert!(kids.insert(kid.to_string()), "duplicate kid {kid:?}");
        assert!(set.by_kid(kid).is_some_and(|k| ALLOWED.contains(&k.alg)));
    }
    // Parsing again with the result as `previous` reuses every key.
    let again = KeySet::parse(data, ALLOWED, Some(&set), None).expect("same input parses");
    assert_eq!(again.len(), set.len());
});
