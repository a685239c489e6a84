//! The `nodeward-dev-idp` binary as a user runs it.

use std::process::Command;

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Anyone who reaches the dev IdP can mint accepted tokens: serving beyond
/// loopback must be asked for explicitly.
#[test]
fn refuses_non_loopback_without_the_flag() {
    let out = Command::new(env!("CARGO_BIN_EXE_nodeward-dev-idp"))
        .args(["--listen", "0.0.0.0:0"])
        .output()
        .expect("run nodeward-dev-idp");
    assert!(!out.status.success());
    assert!(
        text(&out.stderr).contains("--allow-non-loopback"),
        "{}",
        text(&out.stderr)
    );
}
