//! Compact-JWS splitting, canonical base64url and duplicate-free JSON on
//! arbitrary text: never a panic, and what parses is structurally sound.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeward::token::Jws;

fuzz_target!(|data: &[u8]| {
    let Ok(token) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(jws) = Jws::parse(token, 16 * 1024) {
        // Three non-empty parts, two dots: anything else must have been refused.
        assert_eq!(token.matches('.').count(), 2, "{token:?}");
        let _ = jws.iss();
    }
});
