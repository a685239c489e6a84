//! `cargo xtask test`: the project's test command, and what CI runs. Format
//! check, the module structure (`scripts/module-graph.py`: no dependency
//! cycle among the agent's modules, no product file over 500 lines), clippy
//! with warnings denied, then every test of the workspace's
//! default members (not `--workspace`: the BPF crate only builds for the BPF
//! target, through the agent's build script); the first failure stops the
//! run and its exit code becomes ours. The root-only tests (network
//! namespaces, eBPF) are part of it and fail loudly when not run as root.

use std::process::{Command, ExitCode};

use anyhow::Context as _;

use crate::{cargo, workspace_root};

/// `extra` goes to `cargo test` (a test name filter, `--nocapture`, ...).
pub fn run(extra: &[String]) -> anyhow::Result<ExitCode> {
    let root = workspace_root();
    interop_prerequisites(&root)?;
    let steps: [(&str, Command); 4] = [
        ("format", with_args(cargo(), &["fmt", "--all", "--", "--check"])),
        (
            "module structure (no cycle, no product file over 500 lines)",
            with_args(Command::new("python3"), &["scripts/module-graph.py", "--quiet"]),
        ),
        (
            "lints",
            with_args(cargo(), &["clippy", "--all-targets", "--", "-D", "warnings"]),
        ),
        ("tests", {
            let mut c = with_args(cargo(), &["test"]);
            c.args(extra);
            c
        }),
    ];
    for (what, mut cmd) in steps {
        cmd.current_dir(&root);
        eprintln!("== {what}: {}", show(&cmd));
        let status = cmd.status().with_context(|| format!("running {}", show(&cmd)))?;
        if !status.success() {
            eprintln!("== {what} failed ({status})");
            // A signal-killed step has no code; 1 still says "failed".
            return Ok(ExitCode::from(
                status.code().and_then(|c| u8::try_from(c).ok()).unwrap_or(1),
            ));
        }
    }
    eprintln!("== all checks passed");
    Ok(ExitCode::SUCCESS)
}

/// The interop tests run panva's oidc-provider and the MCP SDK under Node
/// and fail loudly (on purpose) when their packages are missing, so install
/// them first.
pub(crate) fn interop_prerequisites(root: &std::path::Path) -> anyhow::Result<()> {
    let dir = root.join("tests/interop");
    if nodeward_testkit::interop::missing_package().is_none() {
        return Ok(());
    }
    let mut npm = with_args(Command::new("npm"), &["ci", "--no-audit", "--no-fund", "--prefix"]);
    npm.arg(&dir).current_dir(root);
    eprintln!("== interop prerequisites: {}", show(&npm));
    let status = npm.status().context(
        "running npm (the interop test needs Node.js >= 20.19 and npm: install them, e.g. `apt-get install nodejs npm`)",
    )?;
    anyhow::ensure!(status.success(), "`{}` failed ({status})", show(&npm));
    Ok(())
}

fn with_args(mut cmd: Command, args: &[&str]) -> Command {
    cmd.args(args);
    cmd
}

/// `program arg arg` for progress lines (Command's Debug quotes every word).
fn show(cmd: &Command) -> String {
    let program = std::path::Path::new(cmd.get_program())
        .file_name()
        .unwrap_or(cmd.get_program())
        .to_string_lossy()
        .into_owned();
    std::iter::once(program)
        .chain(cmd.get_args().map(|a| a.to_string_lossy().into_owned()))
        .collect::<Vec<_>>()
        .join(" ")
}
