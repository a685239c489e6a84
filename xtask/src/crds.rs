//! `cargo xtask crds [--check]`: writes the IdentityPolicy CRD generated from
//! the agent's Rust types to `deploy/base/crds/` (`--check`: fails when the
//! committed file differs, as CI does through the agent's unit test too).

use std::process::ExitCode;

use anyhow::Context as _;
use nodeward::k8s::crd::{CRD_FILE, crd_yaml};

use crate::workspace_root;

pub fn run(args: &[String]) -> anyhow::Result<ExitCode> {
    let check = match args {
        [] => false,
        [flag] if flag == "--check" => true,
        _ => anyhow::bail!("usage: cargo xtask crds [--check]"),
    };
    let path = workspace_root().join(CRD_FILE);
    let want = crd_yaml();
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    if check {
        if have == want {
            eprintln!("{CRD_FILE}: up to date");
            return Ok(ExitCode::SUCCESS);
        }
        eprintln!("{CRD_FILE} differs from what the code generates: run `cargo xtask crds` and commit it");
        return Ok(ExitCode::FAILURE);
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    std::fs::write(&path, want).with_context(|| format!("writing {}", path.display()))?;
    eprintln!("wrote {CRD_FILE}");
    Ok(ExitCode::SUCCESS)
}
