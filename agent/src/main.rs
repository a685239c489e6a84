//! The `nodeward` command: `run`, `check`, `explain`. The development
//! OpenID provider is its own binary (`nodeward-dev-idp`), never shipped here.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use nodeward::config::Config;
use nodeward::k8s::PodWatch;
use nodeward::{Agent, Audit, AuditLimits, Probe, Reloader, Subject};

#[derive(Parser, Debug)]
#[command(name = "nodeward", version, about = "Node-level OpenID Connect identity agent")]
struct Cli {
    /// Logs (not audit lines) as JSON.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Run the node agent.
    Run {
        #[arg(long)]
        config: PathBuf,
        /// How often the config file is checked for changes (SIGHUP also reloads).
        #[arg(long, default_value = "2s", value_parser = humantime::parse_duration)]
        reload_interval: Duration,
    },
    /// Validate a config file and print the effective configuration; with
    /// --identity-policy, also check IdentityPolicy manifests against it.
    Check {
        #[arg(long)]
        config: PathBuf,
        /// A YAML file of IdentityPolicy objects (`---`-separated; other
        /// kinds are skipped), each checked as the agent checks it; repeatable.
        #[arg(long = "identity-policy", value_name = "FILE")]
        identity_policies: Vec<PathBuf>,
    },
    /// Print the decision for one request, the rule that matched and why.
    #[command(group(clap::ArgGroup::new("subject").required(true).args(["workload", "pod", "labels"])))]
    Explain {
        #[arg(long)]
        config: PathBuf,
        /// A workload of the configuration file.
        #[arg(long)]
        workload: Option<String>,
        /// A pod, NAMESPACE/NAME: read from the API server and bound to its
        /// policy as the pod watch binds it (needs `kubernetes.enabled`).
        #[arg(long)]
        pod: Option<String>,
        /// Offline: a pod with these labels (KEY=VALUE,...).
        #[arg(long)]
        labels: Option<String>,
        /// With --labels: the value of the pod's policy annotation.
        #[arg(long, requires = "labels")]
        policy: Option<String>,
        /// The method as the client sends it (`get` is refused, as the proxy refuses it).
        #[arg(long, default_value = "GET")]
        method: String,
        /// The request target: path and query, as the client sends it.
        #[arg(long, default_value = "/")]
        path: String,
        /// A request header, 'Name: value'; repeatable.
        #[arg(long = "header", value_name = "NAME: VALUE")]
        headers: Vec<String>,
        /// The token (never logged), placed where the first token source reads it.
        #[arg(long)]
        token: Option<String>,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    nodeward::init_logging(cli.log_json);
    let rt = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let code = match rt.block_on(run(cli.command)) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    };
    // Stop the runtime before the audit writer flushes, so no task logs after it.
    drop(rt);
    code
}

async fn run(command: Command) -> anyhow::Result<ExitCode> {
    match command {
        Command::Check {
            config,
            identity_policies,
        } => match Config::load(&config) {
            Ok(c) if identity_policies.is_empty() => {
                print!("{}", c.to_yaml());
                eprintln!("{}: ok", config.display());
                Ok(ExitCode::SUCCESS)
            }
            Ok(c) => {
                let mut failed = false;
                for file in &identity_policies {
                    let text =
                        std::fs::read_to_string(file).with_context(|| format!("{}: cannot read", file.display()))?;
                    for (what, verdict) in nodeward::k8s::catalog::check_manifests(&c, &text) {
                        match verdict {
                            Ok(()) => eprintln!("{}: {what}: ok", file.display()),
                            Err(e) => {
                                failed = true;
                                eprintln!("error: {}: {e}", file.display());
                            }
                        }
                    }
                }
                Ok(if failed { ExitCode::from(2) } else { ExitCode::SUCCESS })
            }
            Err(e) => {
                eprintln!("error: {e}");
                Ok(ExitCode::from(2))
            }
        },
        Command::Explain {
            config,
            workload,
            pod,
            labels,
            policy,
            method,
            path,
            headers,
            token,
        } => {
            let c = Config::load(&config)?;
            let subject = match (workload, pod, labels) {
                // `ns/name` that is not a workload of the file: the pod of that name.
                (Some(w), _, _)
                    if w.contains('/') && c.kubernetes.enabled && !c.workloads.iter().any(|x| x.name == w) =>
                {
                    Subject::Pod(w)
                }
                (Some(w), _, _) => Subject::Workload(w),
                (None, Some(p), _) => Subject::Pod(p),
                (None, None, Some(l)) => Subject::labels(&l, policy)?,
                (None, None, None) => anyhow::bail!("explain needs --workload, --pod or --labels"),
            };
            let probe = Probe {
                method: &method,
                target: &path,
                headers: &headers,
                token: token.as_deref(),
            };
            let e = nodeward::explain(c, &subject, probe).await?;
            print!("{e}");
            Ok(ExitCode::SUCCESS)
        }
        Command::Run {
            config,
            reload_interval,
        } => {
            let text = std::fs::read(&config).with_context(|| format!("{}: cannot read", config.display()))?;
            let c = Config::parse(std::str::from_utf8(&text).context("config is not UTF-8")?, &config)?;
            let kubernetes = c.kubernetes.enabled;
            // Signal handlers first: a SIGTERM while the agent starts (a
            // rolling update) must still drain, not kill the process.
            // Likewise SIGHUP: its default action would kill a starting agent.
            // (HUP before TERM: a test that sees TERM handled may send HUP.)
            let hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
            let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
            // Audit lines on stdout through a batching writer; the guard
            // flushes what is buffered when `run` returns.
            let (audit, _audit_flush) = Audit::writer(Box::new(std::io::stdout()), AuditLimits::default())
                .context("cannot start the audit writer")?;
            let agent = Arc::new(Agent::start(c, audit).await?);
            let pods = match (kubernetes, agent.kube()) {
                (true, Some(client)) => {
                    let metrics = agent.metrics().kubernetes.clone();
                    Some(PodWatch::start(agent.control().clone(), client.clone(), metrics).await?)
                }
                _ => None,
            };
            let reloader = Reloader::new(&config, Some(text));
            tokio::select! {
                _ = reloader.run(agent.control(), reload_interval, Some(hup)) => {}
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
            tracing::info!("shutting down: draining in-flight requests");
            if let Some(pods) = pods {
                // Pods stay enrolled (pinned, fail closed) for the next agent.
                pods.stop().await;
            }
            match Arc::try_unwrap(agent) {
                Ok(agent) => agent.shutdown().await,
                Err(_) => tracing::error!("agent still shared at shutdown; exiting without draining"),
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}
