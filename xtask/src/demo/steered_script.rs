//! The eBPF demo's tour: requests from the host and from inside the `web`
//! pod to the pods of the simulated node, and what the contract says must
//! happen to each. Pure data; the policies it relies on are in `steered`'s
//! config (`orders`: any valid token, POST|DELETE /admin/** needs group
//! admins; `billing`: group finance; both: /healthz anonymous), and `web`
//! is not enrolled.

use http::Method;

use super::script::{ALICE, BOB, CAROL, Credential, Minted, Route, Scenario, allow, direct, refuse, scenario};

/// The protected port of both enrolled pods, and a port `orders` also
/// listens on that no policy protects.
pub const APP_PORT: u16 = 8080;
pub const SIDE_PORT: u16 = 9090;

/// `scenario` sent from `from` (`None`: the host) to `to`:`port`.
fn at(from: Option<&'static str>, to: &'static str, port: u16, s: Scenario) -> Scenario {
    Scenario {
        route: Route {
            from,
            to: Some((to, port)),
        },
        ..s
    }
}

const HOST: Option<&str> = None;
const WEB: Option<&str> = Some("web");

pub fn script() -> Vec<Scenario> {
    use Credential::{NoToken, Raw, Token};
    use Minted::{Alice, Bob, Carol, Expired, ForgedKey};
    const GET: Method = Method::GET;
    const POST: Method = Method::POST;
    let alice = "alice, in group developers";
    let bob = "bob, in group admins";
    let carol = "carol, in group finance";
    let (lacks_admins, lacks_finance) = (r#"claim groups lacks "admins""#, r#"claim groups lacks "finance""#);
    let orders = |from, s| at(from, "orders", APP_PORT, s);
    let billing = |from, s| at(from, "billing", APP_PORT, s);
    vec![
        // The host (the node itself, e.g. the kubelet or a NodePort) calls orders.
        orders(
            HOST,
            scenario(GET, "/healthz", NoToken, "no token", allow("anonymous", None)),
        ),
        orders(
            HOST,
            scenario(GET, "/orders", NoToken, "no token", refuse(401, "missing_token")),
        ),
        orders(
            HOST,
            scenario(
                GET,
                "/orders",
                Raw("not-a-jwt"),
                "Bearer not-a-jwt",
                refuse(401, "malformed_token"),
            ),
        ),
        orders(
            HOST,
            scenario(
                GET,
                "/orders",
                Token(Expired),
                "token that expired an hour ago",
                refuse(401, "token_expired"),
            ),
        ),
        orders(
            HOST,
            scenario(
                GET,
                "/orders",
                Token(ForgedKey),
                "iss of corp, signed by another key",
                refuse(401, "unknown_kid"),
            ),
        ),
        orders(
            HOST,
            scenario(GET, "/orders", Token(Alice), alice, allow("authorized", Some(ALICE))),
        ),
        orders(
            HOST,
            scenario(
                POST,
                "/admin/users",
                Token(Alice),
                alice,
                refuse(403, "claim_mismatch").detail(lacks_admins),
            ),
        ),
        orders(
            HOST,
            scenario(POST, "/admin/users", Token(Bob), bob, allow("authorized", Some(BOB))),
        ),
        // Another port of the same pod: no policy protects it.
        at(
            HOST,
            "orders",
            SIDE_PORT,
            scenario(GET, "/metrics", NoToken, "no token, unprotected port", direct()),
        ),
        // billing has its own, stricter policy in the same agent.
        billing(
            HOST,
            scenario(GET, "/healthz", NoToken, "no token", allow("anonymous", None)),
        ),
        billing(
            HOST,
            scenario(
                GET,
                "/invoices",
                Token(Alice),
                alice,
                refuse(403, "claim_mismatch").detail(lacks_finance),
            ),
        ),
        billing(
            HOST,
            scenario(GET, "/invoices", Token(Carol), carol, allow("authorized", Some(CAROL))),
        ),
        // Pod to pod: web calls its backends over the node's bridge.
        orders(
            WEB,
            scenario(GET, "/orders", NoToken, "no token", refuse(401, "missing_token")),
        ),
        // The app must see the verified identity, never the client's claim to one.
        orders(
            WEB,
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
        ),
        billing(
            WEB,
            scenario(
                GET,
                "/invoices",
                Token(Bob),
                bob,
                refuse(403, "claim_mismatch").detail(lacks_finance),
            ),
        ),
        billing(
            WEB,
            Scenario {
                show_audit: true,
                ..scenario(GET, "/invoices", Token(Carol), carol, allow("authorized", Some(CAROL)))
            },
        ),
        // web is not enrolled: nothing steers its traffic, from anywhere.
        at(
            HOST,
            "web",
            APP_PORT,
            scenario(GET, "/", NoToken, "no token, pod not enrolled", direct()),
        ),
        // An enrolled pod's outgoing connections are untouched too.
        at(
            Some("orders"),
            "web",
            APP_PORT,
            scenario(GET, "/", NoToken, "no token, pod not enrolled", direct()),
        ),
    ]
}

/// How many connections the program must have steered into the agent for
/// `workload`: one per request to its protected port (each request has its
/// own connection).
pub fn steered(script: &[Scenario], workload: &str) -> u64 {
    script
        .iter()
        .filter(|s| s.expect.via_agent && s.route.to == Some((workload, APP_PORT)))
        .count() as u64
}
