//! Tests of the dev IdP over real HTTP (server endpoints, stats, failure
//! injection) and of its command line (argument parsing, `mint` client,
//! loopback-only listening).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::{CommandFactory as _, Parser};
use serde_json::{Value, json};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

use super::{TestResult, verify_token};
use crate::cli::{check_listen_addr, mint_remote, parse_claim};
use crate::{DevIdp, DevIdpArgs, DevIdpCommand, DevIdpError, MintRequest, run_cli, serve};

struct Running {
    idp: Arc<DevIdp>,
    base: String,
    client: reqwest::Client,
    stop: oneshot::Sender<()>,
    task: JoinHandle<Result<(), DevIdpError>>,
}

impl Running {
    async fn start() -> TestResult<Self> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let base = format!("http://{}", listener.local_addr()?);
        let idp = Arc::new(DevIdp::new(base.clone())?);
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(Arc::clone(&idp), listener, async {
            let _ = stopped.await;
        }));
        // A proxy from the environment must not intercept loopback requests.
        let client = reqwest::Client::builder().no_proxy().build()?;
        Ok(Self {
            idp,
            base,
            client,
            stop,
            task,
        })
    }

    async fn get(&self, path: &str) -> TestResult<reqwest::Response> {
        Ok(self.client.get(format!("{}{path}", self.base)).send().await?)
    }

    async fn post(&self, path: &str, body: &str) -> TestResult<reqwest::Response> {
        let response = self
            .client
            .post(format!("{}{path}", self.base))
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .body(body.to_owned())
            .send()
            .await?;
        Ok(response)
    }

    async fn stop(self) -> TestResult {
        let _ = self.stop.send(());
        tokio::time::timeout(Duration::from_secs(10), self.task).await???;
        Ok(())
    }
}

async fn json_body(response: reqwest::Response) -> TestResult<Value> {
    Ok(serde_json::from_str(&response.text().await?)?)
}

fn header<'r>(response: &'r reqwest::Response, name: &str) -> Option<&'r str> {
    response.headers().get(name).and_then(|v| v.to_str().ok())
}

#[tokio::test]
async fn serves_documents_tokens_and_rotation_over_http() -> TestResult {
    let server = Running::start().await?;

    let response = server.get("/.well-known/openid-configuration").await?;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "cache-control"), Some("max-age=300"));
    assert_eq!(header(&response, "content-type"), Some("application/json"));
    let discovery = json_body(response).await?;
    assert_eq!(discovery, server.idp.discovery());
    assert_eq!(discovery["jwks_uri"], format!("{}/jwks", server.base));

    let response = server.get("/jwks").await?;
    assert_eq!(response.status(), 200);
    assert_eq!(header(&response, "cache-control"), Some("max-age=300"));
    let jwks = json_body(response).await?;
    assert_eq!(jwks, server.idp.jwks());

    let request = json!({"alg": "EdDSA", "ttl": "1m", "claims": {"sub": "bob"}});
    let response = server.post("/mint", &request.to_string()).await?;
    assert_eq!(response.status(), 200);
    let token = json_body(response).await?["token"]
        .as_str()
        .ok_or("no token")?
        .to_owned();
    let (header_fields, claims) = verify_token(&token, &jwks)?;
    assert_eq!(header_fields["alg"], "EdDSA");
    assert_eq!(claims["sub"], "bob");
    assert_eq!(claims["iss"], server.base.as_str());

    for bad in ["not json", r#"{"alg": "HS256"}"#, r#"{"ttl": "soon"}"#] {
        let response = server.post("/mint", bad).await?;
        assert_eq!(response.status(), 400, "{bad}");
        assert!(json_body(response).await?["error"].is_string());
    }

    let response = server.post("/rotate?keep_old=true", "").await?;
    assert_eq!(response.status(), 200);
    let kids = json_body(response).await?["kids"].clone();
    assert_eq!(kids.as_array().map(Vec::len), Some(3));
    let jwks = json_body(server.get("/jwks").await?).await?;
    assert_eq!(jwks["keys"].as_array().map(Vec::len), Some(6));
    verify_token(&token, &jwks)?;
    let response = server.post("/rotate?keep_old=false", "").await?;
    assert_eq!(response.status(), 200);
    assert_eq!(server.idp.jwks()["keys"].as_array().map(Vec::len), Some(3));
    assert_eq!(server.post("/rotate?keep_old=maybe", "").await?.status(), 400);

    assert_eq!(server.get("/nope").await?.status(), 404);
    assert_eq!(server.get("/mint").await?.status(), 404);
    assert_eq!(server.post("/jwks", "").await?.status(), 404);

    let response = server.get("/stats").await?;
    assert_eq!(response.status(), 200);
    assert_eq!(
        json_body(response).await?,
        json!({"discovery_fetches": 1, "jwks_fetches": 2})
    );
    server.stop().await
}

#[tokio::test]
async fn injected_failure_is_served_and_counted() -> TestResult {
    let server = Running::start().await?;
    assert_eq!(server.post("/fail?status=503", "").await?.status(), 200);
    assert_eq!(server.idp.failure(), Some(503));

    let response = server.get("/jwks").await?;
    assert_eq!(response.status(), 503);
    assert!(json_body(response).await?["error"].is_string());
    assert_eq!(server.get("/.well-known/openid-configuration").await?.status(), 503);
    // Minting keeps working: only the documents fail.
    assert_eq!(server.post("/mint", "{}").await?.status(), 200);

    server.idp.set_failure(Some(500));
    assert_eq!(server.get("/jwks").await?.status(), 500);
    assert_eq!(server.post("/fail?status=abc", "").await?.status(), 400);
    assert_eq!(server.post("/fail?status=42", "").await?.status(), 400);
    assert_eq!(server.idp.failure(), Some(500));

    assert_eq!(server.post("/fail", "").await?.status(), 200);
    assert_eq!(server.idp.failure(), None);
    assert_eq!(server.get("/jwks").await?.status(), 200);

    let stats = server.idp.stats();
    assert_eq!(stats.jwks_fetches, 3);
    assert_eq!(stats.discovery_fetches, 1);
    server.stop().await
}

/// The shape `nodeward-dev-idp` parses (main.rs flattens the same args).
#[derive(Parser, Debug)]
struct Cli {
    #[command(flatten)]
    args: DevIdpArgs,
}

fn parse(args: &[&str]) -> Result<DevIdpArgs, clap::Error> {
    Ok(Cli::try_parse_from(["nodeward-dev-idp"].iter().chain(args))?.args)
}

#[test]
fn command_line_shapes() -> TestResult {
    Cli::command().debug_assert();

    let args = parse(&["--listen", "127.0.0.1:0", "--issuer", "http://idp.test"])?;
    assert!(args.command.is_none());
    assert_eq!(args.listen, Some("127.0.0.1:0".parse()?));
    assert_eq!(args.issuer.as_deref(), Some("http://idp.test"));
    assert!(!args.allow_non_loopback);

    assert!(parse(&[]).is_err(), "serving requires --listen");
    assert!(parse(&["--listen", "localhost"]).is_err());
    assert!(parse(&["--listen", "127.0.0.1:0", "mint", "--idp", "http://x"]).is_err());

    let args = parse(&[
        "mint",
        "--idp",
        "http://127.0.0.1:1",
        "--alg",
        "ES256",
        "--ttl",
        "5m",
        "--claims-json",
        r#"{"sub": "carol", "exp": null}"#,
        "--claim",
        "groups=admins,ops",
        "--claim",
        "sub=dave",
    ])?;
    let Some(DevIdpCommand::Mint(mint)) = args.command else {
        return Err("expected the mint subcommand".into());
    };
    assert_eq!(mint.ttl, Some(Duration::from_secs(300)));
    let request = mint.to_request();
    assert_eq!(request.alg.as_deref(), Some("ES256"));
    assert_eq!(request.claims["sub"], "dave");
    assert_eq!(request.claims["groups"], json!(["admins", "ops"]));
    assert!(request.claims["exp"].is_null());

    assert!(parse(&["mint", "--idp", "http://x", "--claim", "novalue"]).is_err());
    assert!(parse(&["mint", "--idp", "http://x", "--claims-json", "[1]"]).is_err());
    Ok(())
}

#[test]
fn claim_values_are_typed() -> TestResult {
    assert_eq!(
        parse_claim("groups=admins,ops")?,
        ("groups".into(), json!(["admins", "ops"]))
    );
    assert_eq!(parse_claim("groups=admins,")?, ("groups".into(), json!(["admins"])));
    assert_eq!(parse_claim("n=42")?, ("n".into(), json!(42)));
    assert_eq!(parse_claim("n=-7")?, ("n".into(), json!(-7)));
    assert_eq!(parse_claim("sub=alice")?, ("sub".into(), json!("alice")));
    assert_eq!(parse_claim("aud=a=b")?, ("aud".into(), json!("a=b")));
    assert_eq!(parse_claim("empty=")?, ("empty".into(), json!("")));
    assert!(matches!(parse_claim("=x"), Err(DevIdpError::InvalidClaim { .. })));
    assert!(matches!(parse_claim("x"), Err(DevIdpError::InvalidClaim { .. })));
    Ok(())
}

#[tokio::test]
async fn mint_client_fetches_a_token() -> TestResult {
    let server = Running::start().await?;
    let request = MintRequest {
        alg: Some("ES256".into()),
        claims: [("groups".to_owned(), json!(["ops"]))].into_iter().collect(),
        ..MintRequest::default()
    };
    let token = mint_remote(&format!("{}/", server.base), &request).await?;
    let (header_fields, claims) = verify_token(&token, &server.idp.jwks())?;
    assert_eq!(header_fields["alg"], "ES256");
    assert_eq!(claims["groups"], json!(["ops"]));

    let bad = MintRequest {
        alg: Some("HS256".into()),
        ..MintRequest::default()
    };
    let error = mint_remote(&server.base, &bad).await;
    assert!(
        matches!(error, Err(DevIdpError::MintStatus { status: 400, .. })),
        "{error:?}"
    );
    let base = server.base.clone();
    server.stop().await?;
    let error = mint_remote(&base, &request).await;
    assert!(matches!(error, Err(DevIdpError::MintHttp { .. })), "{error:?}");
    Ok(())
}

#[tokio::test]
async fn refuses_non_loopback_listen_addresses() -> TestResult {
    let args = DevIdpArgs {
        command: None,
        listen: Some("0.0.0.0:0".parse()?),
        issuer: None,
        allow_non_loopback: false,
    };
    let error = run_cli(args).await.err().ok_or("run_cli accepted 0.0.0.0")?;
    assert!(
        matches!(
            error.downcast_ref::<DevIdpError>(),
            Some(DevIdpError::NonLoopback { .. })
        ),
        "{error:#}"
    );
    assert!(error.to_string().contains("--allow-non-loopback"));

    let addr = |s: &str| s.parse::<SocketAddr>();
    for loopback in ["127.0.0.1:80", "127.0.0.2:80", "[::1]:80", "[::ffff:127.0.0.1]:80"] {
        check_listen_addr(addr(loopback)?, false)?;
    }
    for exposed in ["0.0.0.0:80", "[::]:80", "10.0.0.1:80", "[2001:db8::1]:80"] {
        assert!(check_listen_addr(addr(exposed)?, false).is_err(), "{exposed}");
        check_listen_addr(addr(exposed)?, true)?;
    }
    Ok(())
}
