//! The scripted tours: which requests the demos send and what the contract
//! says must happen to each. Pure data plus token minting; sending and
//! comparing live in `check`, and how the workload is reached in `env`
//! (reverse proxy) or `node` (eBPF). This file holds the shared vocabulary
//! and the reverse-proxy tour; `steered` holds the eBPF tour.

use std::collections::HashMap;
use std::time::{SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use http::Method;
use serde_json::{Value, json};

use crate::proc::DevIdp;

/// A caller, and the identity the app must see once nodeward verified it.
#[derive(Clone, Copy)]
pub struct Who {
    pub sub: &'static str,
    pub email: &'static str,
    pub groups: &'static [&'static str],
}

pub const ALICE: Who = Who {
    sub: "alice",
    email: "alice@example.com",
    groups: &["developers"],
};
pub const BOB: Who = Who {
    sub: "bob",
    email: "bob@example.com",
    groups: &["admins"],
};
pub const CAROL: Who = Who {
    sub: "carol",
    email: "carol@example.com",
    groups: &["finance"],
};

/// The tokens the tour uses, minted from the dev IdPs before it starts.
#[derive(Clone, Copy, PartialEq, Eq, Hash, Debug)]
pub enum Minted {
    Alice,
    Bob,
    Carol,
    /// Alice's, expired an hour ago: far beyond any clock-skew allowance.
    Expired,
    /// Alice's, for another audience.
    WrongAudience,
    /// Signed by the IdP the agent does not trust, with that IdP's issuer.
    UntrustedIssuer,
    /// Claims the trusted issuer but is signed by the untrusted IdP's key.
    ForgedKey,
}

impl Minted {
    const ALL: [Self; 7] = [
        Self::Alice,
        Self::Bob,
        Self::Carol,
        Self::Expired,
        Self::WrongAudience,
        Self::UntrustedIssuer,
        Self::ForgedKey,
    ];
}

pub enum Credential {
    NoToken,
    /// Sent as is after `Bearer `.
    Raw(&'static str),
    Token(Minted),
}

pub struct Tokens(HashMap<Minted, String>);

impl Tokens {
    /// Mints every [`Minted`] from `idp` (the trusted one) and `untrusted`.
    pub async fn mint(trusted: &DevIdp, untrusted: &DevIdp) -> anyhow::Result<Self> {
        let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
        let mut tokens = HashMap::new();
        for m in Minted::ALL {
            let who = match m {
                Minted::Bob => BOB,
                Minted::Carol => CAROL,
                _ => ALICE,
            };
            let mut claims = json!({ "sub": who.sub, "email": who.email, "groups": who.groups, "aud": "orders" });
            let mut idp = trusted;
            match m {
                Minted::Alice | Minted::Bob | Minted::Carol => {}
                Minted::Expired => {
                    claims["iat"] = json!(now - 7200);
                    claims["exp"] = json!(now - 3600);
                }
                Minted::WrongAudience => claims["aud"] = json!("billing"),
                Minted::UntrustedIssuer => idp = untrusted,
                Minted::ForgedKey => {
                    idp = untrusted;
                    claims["iss"] = json!(trusted.issuer);
                }
            }
            let token = mint(&idp.url, claims).await.with_context(|| format!("minting {m:?}"))?;
            tokens.insert(m, token);
        }
        Ok(Self(tokens))
    }

    pub fn get(&self, m: Minted) -> &str {
        self.0.get(&m).expect("Tokens::mint mints every Minted")
    }
}

/// `POST /mint` on a running dev IdP, as any client of the demo would.
async fn mint(idp_url: &str, claims: Value) -> anyhow::Result<String> {
    let body = json!({ "alg": "RS256", "ttl": "5m", "claims": claims });
    let resp = nodeward_testkit::client()
        .post(format!("{idp_url}/mint"))
        .header(reqwest::header::CONTENT_TYPE, "application/json")
        .body(body.to_string())
        .send()
        .await?;
    let status = resp.status();
    let text = resp.text().await?;
    anyhow::ensure!(status.is_success(), "{idp_url}/mint answered {status}: {text}");
    let v: Value = serde_json::from_str(&text).context("mint response is not JSON")?;
    v["token"]
        .as_str()
        .map(str::to_owned)
        .context("mint response has no token")
}

/// What the contract says must happen.
pub struct Expect {
    /// False: the request must reach the app directly, never the agent (a
    /// port or pod that is not protected).
    pub via_agent: bool,
    pub status: u16,
    /// The audit line's `decision`: allow, deny or audit_deny.
    pub decision: &'static str,
    /// The machine-readable reason (refusal body and audit line).
    pub reason: &'static str,
    pub detail: Option<&'static str>,
    /// For requests that reach the app: whose identity headers it must see
    /// (`None`: no identity headers at all).
    pub identity: Option<Who>,
}

pub fn allow(reason: &'static str, identity: Option<Who>) -> Expect {
    Expect {
        via_agent: true,
        status: 200,
        decision: "allow",
        reason,
        detail: None,
        identity,
    }
}

pub fn refuse(status: u16, reason: &'static str) -> Expect {
    Expect {
        via_agent: true,
        status,
        decision: "deny",
        reason,
        detail: None,
        identity: None,
    }
}

/// Audit mode: the rule denies, the request goes through, the log says so.
fn audit_deny(reason: &'static str, identity: Who) -> Expect {
    Expect {
        via_agent: true,
        status: 200,
        decision: "audit_deny",
        reason,
        detail: None,
        identity: Some(identity),
    }
}

/// Not steered: the app answers itself; no decision, no audit line.
pub fn direct() -> Expect {
    Expect {
        via_agent: false,
        status: 200,
        decision: "",
        reason: "",
        detail: None,
        identity: None,
    }
}

impl Expect {
    pub fn detail(mut self, detail: &'static str) -> Self {
        self.detail = Some(detail);
        self
    }
}

/// Where a request goes: from the host or from inside a pod's network
/// namespace, to a pod's port. The reverse-proxy tour has one workload and
/// sends from the host (`Route::default()`).
#[derive(Clone, Copy, Default)]
pub struct Route {
    /// The pod whose namespace the request is sent from; `None`: the host.
    pub from: Option<&'static str>,
    /// The pod and port it is sent to; `None`: the environment's workload.
    pub to: Option<(&'static str, u16)>,
}

pub struct Scenario {
    pub route: Route,
    pub method: Method,
    pub path: &'static str,
    pub credential: Credential,
    /// The credential (and anything else notable), in words.
    pub what: &'static str,
    /// Extra headers the client sends.
    pub headers: &'static [(&'static str, &'static str)],
    /// Print the request's audit line under its result.
    pub show_audit: bool,
    pub expect: Expect,
}

pub fn scenario(
    method: Method,
    path: &'static str,
    credential: Credential,
    what: &'static str,
    expect: Expect,
) -> Scenario {
    Scenario {
        route: Route::default(),
        method,
        path,
        credential,
        what,
        headers: &[],
        show_audit: false,
        expect,
    }
}

/// The tour, against the contract's example policy: /healthz is anonymous,
/// POST|DELETE /admin/** needs group admins, /audit/** (audit mode) needs
/// group auditors, everything else needs any valid token from provider corp.
pub fn script() -> Vec<Scenario> {
    use Credential::{NoToken, Raw, Token};
    use Minted::*;
    const GET: Method = Method::GET;
    const POST: Method = Method::POST;
    let alice = "alice, in group developers";
    vec![
        scenario(GET, "/healthz", NoToken, "no token", allow("anonymous", None)),
        scenario(GET, "/orders", NoToken, "no token", refuse(401, "missing_token")),
        scenario(
            GET,
            "/orders",
            Raw("not-a-jwt"),
            "Bearer not-a-jwt",
            refuse(401, "malformed_token"),
        ),
        scenario(
            GET,
            "/orders",
            Token(UntrustedIssuer),
            "token from the untrusted IdP",
            refuse(401, "unknown_issuer"),
        ),
        scenario(
            GET,
            "/orders",
            Token(ForgedKey),
            "iss of corp, signed by the untrusted IdP's key",
            refuse(401, "unknown_kid"),
        ),
        scenario(
            GET,
            "/orders",
            Token(Expired),
            "token that expired an hour ago",
            refuse(401, "token_expired"),
        ),
        scenario(
            GET,
            "/orders",
            Token(WrongAudience),
            "token for audience billing",
            refuse(401, "wrong_audience"),
        ),
        scenario(GET, "/orders", Token(Alice), alice, allow("authorized", Some(ALICE))),
        scenario(
            POST,
            "/admin/users",
            Token(Alice),
            alice,
            refuse(403, "claim_mismatch").detail(r#"claim groups lacks "admins""#),
        ),
        scenario(
            POST,
            "/admin/users",
            Token(Bob),
            "bob, in group admins",
            allow("authorized", Some(BOB)),
        ),
        // The app must see the verified identity, never the client's claim to one.
        Scenario {
            headers: &[("x-nodeward-sub", "root"), ("x-user-email", "root@example.com")],
            ..scenario(
                GET,
                "/orders",
                Token(Alice),
                "alice + spoofed x-nodeward-sub: root",
                allow("authorized", Some(ALICE)),
            )
        },
        Scenario {
            show_audit: true,
            ..scenario(
                GET,
                "/audit/report",
                Token(Alice),
                alice,
                audit_deny("claim_mismatch", ALICE).detail(r#"claim groups lacks "auditors""#),
            )
        },
    ]
}
