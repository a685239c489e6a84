//! A provider behind HTTPS with a private CA: trusted through `ca_file`
//! (and only through it), refused without it — fail closed, visible in
//! readiness and metrics.

use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper_util::rt::TokioIo;
use nodeward_dev_idp::{DevIdp, MintRequest};
use nodeward_testkit::{EchoUpstream, TestAgent, client, metric};
use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, IsCa, KeyPair};
use serde_json::json;
use tokio::net::TcpListener;

struct HttpsIdp {
    idp: Arc<DevIdp>,
    ca_pem: String,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for HttpsIdp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Serves the dev IdP's discovery and JWKS over TLS with a certificate from a fresh private CA.
async fn https_idp() -> HttpsIdp {
    let mut ca_params = CertificateParams::new(Vec::<String>::new()).expect("ca params");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().expect("ca key")).expect("ca");
    let leaf_key = KeyPair::generate().expect("leaf key");
    let leaf = CertificateParams::new(vec!["localhost".to_string()])
        .expect("leaf params")
        .signed_by(&leaf_key, &ca)
        .expect("leaf");

    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let server = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .expect("versions")
        .with_no_client_auth()
        .with_single_cert(
            vec![leaf.der().clone()],
            rustls::pki_types::PrivateKeyDer::Pkcs8(leaf_key.serialize_der().into()),
        )
        .expect("server config");
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(server));

    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let idp = Arc::new(DevIdp::new(format!("https://localhost:{port}")).expect("idp"));
    let task = tokio::spawn({
        let idp = idp.clone();
        async move {
            loop {
                let Ok((tcp, _)) = listener.accept().await else {
                    continue;
                };
                let (acceptor, idp) = (acceptor.clone(), idp.clone());
                tokio::spawn(async move {
                    let Ok(tls) = acceptor.accept(tcp).await else { return };
                    let svc = hyper::service::service_fn(move |req: http::Request<hyper::body::Incoming>| {
                        let body = match req.uri().path() {
                            "/.well-known/openid-configuration" => idp.discovery(),
                            "/jwks" => idp.jwks(),
                            _ => json!({}),
                        };
                        async move {
                            Ok::<_, std::convert::Infallible>(http::Response::new(Full::new(Bytes::from(
                                body.to_string(),
                            ))))
                        }
                    });
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(tls), svc)
                        .await;
                });
            }
        }
    });
    HttpsIdp {
        idp,
        ca_pem: ca.pem(),
        task,
    }
}

fn config(issuer: &str, ca_file: Option<&std::path::Path>, upstream: std::net::SocketAddr) -> String {
    let ca = ca_file
        .map(|p| format!("    ca_file: {}\n", p.display()))
        .unwrap_or_default();
    format!(
        r#"admin: 127.0.0.1:0
providers:
  - name: private
    issuer: {issuer}
    audiences: [orders]
{ca}    refresh: {{min_interval: 1s, unknown_kid_cooldown: 100ms, fetch_timeout: 2s}}
policies:
  - name: p
    rules: [{{name: all, require: {{}}}}]
workloads:
  - name: orders
    listen: 127.0.0.1:0
    upstream: {upstream}
"#
    )
}

fn token(idp: &DevIdp) -> String {
    idp.mint(&MintRequest {
        claims: json!({"aud": "orders"}).as_object().cloned().unwrap_or_default(),
        ..MintRequest::default()
    })
    .expect("mint")
}

#[tokio::test]
async fn private_ca_is_trusted_through_ca_file() {
    let server = https_idp().await;
    let dir = tempfile::tempdir().expect("tempdir");
    let ca_file = dir.path().join("ca.pem");
    std::fs::write(&ca_file, &server.ca_pem).expect("write ca");
    let up = EchoUpstream::start().await;
    let agent = TestAgent::start(&config(server.idp.issuer(), Some(&ca_file), up.addr)).await;
    agent.wait_ready().await;
    let resp = client()
        .get(format!("{}/x", agent.url("orders")))
        .bearer_auth(token(&server.idp))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 200);
}

#[tokio::test]
async fn untrusted_certificate_fails_closed() {
    let server = https_idp().await;
    let up = EchoUpstream::start().await;
    let agent = TestAgent::start(&config(server.idp.issuer(), None, up.addr)).await;
    tokio::time::sleep(std::time::Duration::from_millis(300)).await;
    assert!(!agent.agent.not_ready().is_empty(), "not ready without trusted keys");
    let resp = client()
        .get(format!("{}/x", agent.url("orders")))
        .bearer_auth(token(&server.idp))
        .send()
        .await
        .expect("request");
    assert_eq!(resp.status(), 401);
    let body = resp.text().await.expect("body");
    assert!(body.contains("no_keys"), "{body}");
    let m = agent.metrics().await;
    assert!(
        metric(
            &m,
            "nodeward_jwks_fetches_total{provider=\"private\",result=\"network\"}"
        )
        .is_some_and(|n| n >= 1.0),
        "{m}"
    );
}

#[test]
fn unreadable_or_empty_ca_file_is_a_clear_error() {
    let dir = tempfile::tempdir().expect("tempdir");
    let empty = dir.path().join("empty.pem");
    std::fs::write(&empty, "not a certificate").expect("write");
    for ca in [dir.path().join("missing.pem"), empty] {
        let yaml = config("https://localhost:1", Some(&ca), "127.0.0.1:9".parse().expect("addr"));
        let cfg = TestAgent::config(&yaml, dir.path());
        let err = tokio::runtime::Runtime::new()
            .expect("rt")
            .block_on(nodeward::Agent::start(cfg, nodeward::Audit::tracing()))
            .err()
            .expect("start must fail");
        assert!(err.to_string().contains("CA file"), "{err}");
    }
}
