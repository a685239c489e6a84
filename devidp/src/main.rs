//! `nodeward-dev-idp`: the development OpenID provider as a command. Its own
//! binary, never part of the agent's image: it signs any token it is asked for.

use std::process::ExitCode;

use clap::Parser;
use nodeward_dev_idp::DevIdpArgs;

#[derive(Parser, Debug)]
#[command(
    name = "nodeward-dev-idp",
    version,
    about = "Development OpenID provider for nodeward demos and tests (NEVER for production)"
)]
struct Cli {
    #[command(flatten)]
    args: DevIdpArgs,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt().with_writer(std::io::stderr).init();
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match rt.block_on(nodeward_dev_idp::run_cli(cli.args)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}
