//! The config parser and validator on arbitrary text: never a panic; a
//! config it accepts prints (the effective config of `nodeward check`) and
//! its policies compile.
#![no_main]

use libfuzzer_sys::fuzz_target;
use nodeward::config::Config;
use nodeward::policy::Policy;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(cfg) = Config::parse(text, std::path::Path::new("fuzz.yaml")) {
        for p in &cfg.policies {
            Policy::compile(p, &cfg.providers).expect("a validated policy compiles");
        }
    }
});
