//! The `nodeward-dev-idp` command line: running the server (loopback only
//! unless overridden) and the `mint` client that asks a running dev IdP for a
//! token.

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use serde_json::{Map, Value};
use tokio::net::TcpListener;

use super::{DevIdp, DevIdpError, MintRequest, serve};

/// How long `nodeward-dev-idp mint` waits for the server; it is local, so a long wait
/// means something is wrong.
const MINT_TIMEOUT: Duration = Duration::from_secs(30);

/// `nodeward-dev-idp`: a development OpenID provider. NOT for production: it
/// signs any token it is asked for.
#[derive(clap::Args, Debug)]
#[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
pub struct DevIdpArgs {
    #[command(subcommand)]
    pub command: Option<DevIdpCommand>,

    /// Address to serve on, as IP:PORT (port 0 picks a free port). Must be a
    /// loopback address unless --allow-non-loopback is given.
    #[arg(long, value_name = "ADDR", required = true)]
    pub listen: Option<SocketAddr>,

    /// Issuer URL announced in discovery and put in minted tokens' `iss`
    /// [default: http://ADDR, with the port actually bound].
    #[arg(long, value_name = "URL")]
    pub issuer: Option<String>,

    /// Allow serving on a non-loopback address. Anyone who can reach it can
    /// mint valid tokens.
    #[arg(long)]
    pub allow_non_loopback: bool,
}

#[derive(clap::Subcommand, Debug)]
pub enum DevIdpCommand {
    /// Ask a running dev IdP to mint a token and print it on stdout.
    Mint(MintArgs),
}

#[derive(clap::Args, Debug)]
pub struct MintArgs {
    /// Base URL of the running dev IdP (its issuer), e.g. http://127.0.0.1:8470.
    #[arg(long, value_name = "URL")]
    pub idp: String,

    /// Signing algorithm: RS256, ES256 or EdDSA.
    #[arg(long, default_value = "RS256")]
    pub alg: String,

    /// Token lifetime, e.g. 30s or 5m [server default: 5m].
    #[arg(long, value_parser = humantime::parse_duration)]
    pub ttl: Option<Duration>,

    /// A claim as KEY=VALUE; repeatable, applied after --claims-json. VALUE
    /// becomes a JSON array of strings when it contains a comma
    /// (groups=admins,ops; a trailing comma makes a one-element array:
    /// groups=admins,), a JSON number when it parses as an integer, and a
    /// string otherwise. Use --claims-json for anything else.
    #[arg(long = "claim", value_name = "KEY=VALUE", value_parser = parse_claim)]
    pub claims: Vec<(String, Value)>,

    /// Claims as a JSON object, merged over the defaults (iss, sub, iat,
    /// exp); a null value removes that claim.
    #[arg(long, value_name = "JSON", value_parser = parse_claims_json)]
    pub claims_json: Option<Map<String, Value>>,
}

/// Entry point of `nodeward-dev-idp`.
pub async fn run_cli(args: DevIdpArgs) -> anyhow::Result<()> {
    match args.command {
        Some(DevIdpCommand::Mint(mint)) => {
            let token = mint_remote(&mint.idp, &mint.to_request()).await?;
            println!("{token}");
        }
        None => {
            let listen = args.listen.ok_or(DevIdpError::MissingListen)?;
            run_server(listen, args.issuer, args.allow_non_loopback).await?;
        }
    }
    Ok(())
}

impl MintArgs {
    pub(crate) fn to_request(&self) -> MintRequest {
        let mut claims = self.claims_json.clone().unwrap_or_default();
        claims.extend(self.claims.iter().cloned());
        MintRequest {
            alg: Some(self.alg.clone()),
            ttl: self.ttl,
            claims,
            header: Map::new(),
        }
    }
}

async fn run_server(listen: SocketAddr, issuer: Option<String>, allow_non_loopback: bool) -> Result<(), DevIdpError> {
    check_listen_addr(listen, allow_non_loopback)?;
    let shutdown = shutdown_signal()?;
    let listener = TcpListener::bind(listen)
        .await
        .map_err(|source| DevIdpError::Bind { addr: listen, source })?;
    let local = listener
        .local_addr()
        .map_err(|source| DevIdpError::LocalAddr { source })?;
    let issuer = issuer.unwrap_or_else(|| format!("http://{local}"));
    let idp = Arc::new(DevIdp::new(issuer)?);
    eprintln!(
        "WARNING: nodeward-dev-idp is a development and test OpenID provider; it signs any \
         token it is asked for. Never use it in production."
    );
    // Demos and tests parse this exact line to find the port and issuer.
    println!("dev-idp listening on http://{local} issuer={}", idp.issuer());
    serve(idp, listener, shutdown).await
}

/// Anyone who reaches the dev IdP can mint tokens that nodeward accepts, so
/// exposing it beyond the host has to be a deliberate choice.
pub(crate) fn check_listen_addr(addr: SocketAddr, allow_non_loopback: bool) -> Result<(), DevIdpError> {
    if allow_non_loopback || addr.ip().to_canonical().is_loopback() {
        Ok(())
    } else {
        Err(DevIdpError::NonLoopback { addr })
    }
}

fn shutdown_signal() -> Result<impl Future<Output = ()> + Send + 'static, DevIdpError> {
    #[cfg(unix)]
    let mut terminate =
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).map_err(|source| {
            DevIdpError::Signal {
                signal: "SIGTERM",
                source,
            }
        })?;
    Ok(async move {
        let interrupt = async {
            if let Err(error) = tokio::signal::ctrl_c().await {
                // Without a Ctrl-C handler the server must keep running rather
                // than treat the failure as a shutdown request.
                tracing::warn!(%error, "dev-idp could not listen for Ctrl-C");
                std::future::pending::<()>().await;
            }
        };
        #[cfg(unix)]
        tokio::select! {
            () = interrupt => {}
            _ = terminate.recv() => {}
        }
        #[cfg(not(unix))]
        interrupt.await;
        tracing::info!("dev-idp shutting down");
    })
}

pub(crate) fn parse_claim(arg: &str) -> Result<(String, Value), DevIdpError> {
    let (key, raw) = arg
        .split_once('=')
        .filter(|(key, _)| !key.is_empty())
        .ok_or_else(|| DevIdpError::InvalidClaim { arg: arg.to_owned() })?;
    let value = if raw.contains(',') {
        raw.split(',')
            .filter(|item| !item.is_empty())
            .map(Value::from)
            .collect()
    } else if let Ok(number) = raw.parse::<i64>() {
        Value::from(number)
    } else {
        Value::from(raw)
    };
    Ok((key.to_owned(), value))
}

fn parse_claims_json(arg: &str) -> Result<Map<String, Value>, DevIdpError> {
    serde_json::from_str(arg).map_err(|source| DevIdpError::InvalidClaimsJson { source })
}

#[derive(serde::Deserialize)]
struct MintResponse {
    token: String,
}

/// POSTs `req` to `{idp}/mint` and returns the minted token.
pub(crate) async fn mint_remote(idp: &str, req: &MintRequest) -> Result<String, DevIdpError> {
    let url = format!("{}/mint", idp.trim_end_matches('/'));
    let http_failed = |source| DevIdpError::MintHttp {
        url: url.clone(),
        source,
    };
    let body = serde_json::to_vec(req).map_err(|source| DevIdpError::Serialize {
        what: "mint request",
        source,
    })?;
    // The dev IdP is local; an HTTP(S)_PROXY from the environment would only
    // get in the way of reaching it.
    let client = reqwest::Client::builder()
        .no_proxy()
        .timeout(MINT_TIMEOUT)
        .build()
        .map_err(http_failed)?;
    let response = client
        .post(&url)
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body)
        .send()
        .await
        .map_err(http_failed)?;
    let status = response.status();
    let text = response.text().await.map_err(http_failed)?;
    if !status.is_success() {
        return Err(DevIdpError::MintStatus {
            url,
            status: status.as_u16(),
            body: text,
        });
    }
    let parsed: MintResponse =
        serde_json::from_str(&text).map_err(|source| DevIdpError::MintResponse { url, source })?;
    Ok(parsed.token)
}
