//! Root-only tests of eBPF egress steering with real namespaces, cgroups
//! and programs: pod A's application (the `egress-client` helper, in A's
//! network namespace and cgroup) connects to pod B over a veth between
//! them. Configured destinations arrive at the agent's egress listener
//! inside A with their original destination recoverable; others go
//! straight to B; with the agent gone they are refused (or, failing open,
//! reach B); a restarted agent adopts the pins; the agent's own sockets in
//! A's namespace are never steered; enrolment churn leaks nothing.
//!
//! Run as root, one test at a time (they share kernel state; a global lock
//! serialises them anyway):
//! `cargo test -p nodeward-tests --test egress -- --test-threads=1`.
//! Without root every test FAILS with a message saying it was not run.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::path::Path;
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use nodeward::ebpf::{
    Destination, EbpfError, EgressCounters, EgressListeners, EgressPolicy, EgressSteering, FailMode,
    OriginalDestinations,
};
use nodeward::netns::{Netns, listener_in};
use nodeward_testkit::cgroup::{CgroupGuard, cgroup2_root, leftover_cgroups};
use nodeward_testkit::netns::{
    NetnsApp, NetnsGuard, NetnsLink, PinDir, canonical, connect_from, get, leftover_namespaces, privileged, respond,
};
use nodeward_testkit::resources::open_fds;
use tokio::io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader, Lines};
use tokio::net::TcpListener;
use tokio::process::{Child, ChildStdin, ChildStdout};

const PORT: u16 = 8080;
const OTHER_PORT: u16 = 9090;
const WARM_UP_PORT: u16 = 1;
const TIMEOUT: Duration = Duration::from_secs(3);
const EPERM: i32 = 1;

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// Two pods on one link: A (enrolled, with its cgroup) and B (the
/// destination, with apps on PORT and OTHER_PORT on both families).
struct Pods {
    a: NetnsGuard,
    a_cgroup: CgroupGuard,
    b: NetnsGuard,
    link: NetnsLink,
    b_app: NetnsApp,
    b_app6: NetnsApp,
    b_other: NetnsApp,
}

impl Pods {
    async fn new() -> Self {
        let a = NetnsGuard::bare();
        let b = NetnsGuard::bare();
        let link = NetnsLink::new(&a, &b);
        let b_app = NetnsApp::start(&b.path, sa(link.b(), PORT), "b");
        let b_app6 = NetnsApp::start(&b.path, sa(link.b6(), PORT), "b6");
        let b_other = NetnsApp::start(&b.path, sa(link.b(), OTHER_PORT), "b-other");
        // A fresh link loses the first IPv6 SYN (neighbour discovery), and
        // the retransmission comes after a second: connect once per family
        // (to a port no app uses, so the apps' counts stay exact) before
        // the test's own connections, which expect an answer within one.
        for ip in [link.b(), link.b6()] {
            let warm = sa(ip, WARM_UP_PORT);
            let _listener = listener_in(&b.path, warm).expect("warm-up listener in B");
            connect_from(&a.path, None, warm, Duration::from_secs(5))
                .await
                .unwrap_or_else(|e| panic!("pod B unreachable from pod A at {warm}: {e}"));
        }
        Self {
            a_cgroup: CgroupGuard::new(),
            a,
            b,
            link,
            b_app,
            b_app6,
            b_other,
        }
    }

    fn b(&self, port: u16) -> SocketAddr {
        sa(self.link.b(), port)
    }

    fn b6(&self, port: u16) -> SocketAddr {
        sa(self.link.b6(), port)
    }
}

/// What the pod's application got for one `get`.
#[derive(Debug)]
enum Reply {
    Ok { local: SocketAddr, body: serde_json::Value },
    Err { errno: i32, kind: String },
}

impl Reply {
    fn body(&self) -> &serde_json::Value {
        match self {
            Self::Ok { body, .. } => body,
            Self::Err { errno, kind } => panic!("expected a reply, the connection failed: errno {errno} ({kind})"),
        }
    }
}

/// The pod's application: `egress-client` inside A's namespace and cgroup.
struct PodApp {
    _child: Child,
    stdin: ChildStdin,
    stdout: Lines<BufReader<ChildStdout>>,
}

impl PodApp {
    async fn start(netns: &Path, cgroup: &CgroupGuard) -> Self {
        let mut child = tokio::process::Command::new("nsenter")
            .arg(format!("--net={}", netns.display()))
            .arg("--")
            .arg(env!("CARGO_BIN_EXE_egress-client"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawning nsenter (util-linux) with the egress client");
        let stdin = child.stdin.take().expect("stdin");
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let ready = tokio::time::timeout(TIMEOUT, stdout.next_line()).await;
        assert!(
            matches!(&ready, Ok(Ok(Some(l))) if l == "ready"),
            "the egress client did not start: {ready:?}"
        );
        // nsenter exec'd the client: this pid is the client. It opens no
        // socket before its first command, so every socket is the cgroup's.
        cgroup.add(child.id().expect("pid"));
        Self {
            _child: child,
            stdin,
            stdout,
        }
    }

    async fn get(&mut self, addr: SocketAddr) -> Reply {
        self.stdin
            .write_all(format!("get {addr}\n").as_bytes())
            .await
            .expect("command to the client");
        let line = tokio::time::timeout(Duration::from_secs(10), self.stdout.next_line())
            .await
            .unwrap_or_else(|_| panic!("the client did not answer for {addr}"))
            .expect("reading the client")
            .unwrap_or_else(|| panic!("the client exited during get {addr}"));
        let mut words = line.splitn(3, ' ');
        match (words.next(), words.next(), words.next()) {
            (Some("ok"), Some(local), Some(body)) => Reply::Ok {
                local: local.parse().unwrap_or_else(|e| panic!("{e}: {line}")),
                body: serde_json::from_str(body)
                    .unwrap_or_else(|e| panic!("reply to {addr} is not JSON ({e}): {line}")),
            },
            (Some("err"), Some(errno), Some(kind)) => Reply::Err {
                errno: errno.parse().unwrap_or(0),
                kind: kind.to_string(),
            },
            _ => panic!("unexpected answer from the client: {line}"),
        }
    }
}

/// The agent's side of one pod: its egress listeners inside A's namespace.
struct AgentSide {
    id: u32,
    v4: TcpListener,
    v6: TcpListener,
    original: Arc<OriginalDestinations>,
}

impl AgentSide {
    /// Listeners in `netns`, `configure`d with `policy`, and attached to
    /// `cgroup` (`name` is the workload).
    fn enrol(egress: &mut EgressSteering, name: &str, netns: &Path, cgroup: &Path, policy: &EgressPolicy) -> Self {
        let ns = Netns::open(netns).expect("netns");
        let v4 = ns
            .listener("127.0.0.1:0".parse().expect("addr"))
            .expect("v4 listener in the pod");
        let v6 = ns
            .listener("[::1]:0".parse().expect("addr"))
            .expect("v6 listener in the pod");
        let id = egress.workload_id(name).expect("id");
        egress
            .configure(id, &EgressListeners::new(&v4).with_v6(&v6), policy)
            .expect("configure");
        egress.attach(name, cgroup).expect("attach to the pod's cgroup");
        Self {
            id,
            v4: TcpListener::from_std(v4).expect("tokio listener"),
            v6: TcpListener::from_std(v6).expect("tokio listener"),
            original: egress.original_destinations(),
        }
    }

    /// Accepts one connection on `listener`, answers it with where it was
    /// going (as the agent learns it), and returns that.
    async fn serve_one(&self, v6: bool) -> Option<SocketAddr> {
        let listener = if v6 { &self.v6 } else { &self.v4 };
        let (stream, peer) = tokio::time::timeout(TIMEOUT, listener.accept())
            .await
            .expect("the agent's egress listener got no connection")
            .expect("accept");
        assert!(
            peer.ip().is_loopback(),
            "steered clients come from the pod's loopback: {peer}"
        );
        let original = self
            .original
            .take(self.id, peer)
            .expect("reading the original destination");
        let again = self.original.take(self.id, peer).expect("reading again");
        assert_eq!(again, None, "an original destination is handed out once");
        let body = serde_json::json!({"app": "agent", "original": original.map(|a| a.to_string())});
        respond(stream, body.to_string()).await;
        original
    }
}

/// The pod's application gets `addr`; the agent must take it, and learn
/// that `addr` was where it was going.
async fn expect_steered(app: &mut PodApp, agent: &AgentSide, addr: SocketAddr) {
    let v6 = addr.is_ipv6() && !addr.ip().to_canonical().is_ipv4();
    let (reply, original) = tokio::join!(app.get(addr), agent.serve_one(v6));
    assert_eq!(
        original.map(canonical),
        Some(canonical(addr)),
        "the agent recovers the original destination"
    );
    assert_eq!(
        reply.body()["app"],
        "agent",
        "the application talked to the agent: {reply:?}"
    );
    assert_eq!(reply.body()["original"], canonical(addr).to_string());
    if let Reply::Ok { local, .. } = reply {
        assert!(
            local.ip().to_canonical().is_loopback(),
            "connected over loopback: {local}"
        );
    }
}

/// The pod's application gets `addr` and the app there (`name`) answers.
async fn expect_direct(app: &mut PodApp, addr: SocketAddr, name: &str) {
    let reply = app.get(addr).await;
    assert_eq!(reply.body()["app"], name, "{addr} reached {name} directly: {reply:?}");
}

async fn expect_refused(app: &mut PodApp, addr: SocketAddr) {
    match app.get(addr).await {
        Reply::Err { errno, kind } => assert_eq!(errno, EPERM, "connect to {addr} refused with EPERM, got {kind}"),
        reply @ Reply::Ok { .. } => panic!("{addr} got through while the agent is down: {reply:?}"),
    }
}

fn port_policy(ports: &[u16], fail: FailMode) -> EgressPolicy {
    EgressPolicy {
        destinations: ports.iter().map(|&p| Destination::port(p)).collect(),
        fail,
    }
}

#[test]
fn steers_configured_egress_to_the_agent_with_its_original_destination() {
    privileged(
        "steers_configured_egress_to_the_agent_with_its_original_destination",
        steers_configured_egress_body(),
    );
}

async fn steers_configured_egress_body() {
    let started = Instant::now();
    let pins = PinDir::new();
    let pods = Pods::new().await;
    let mut app = PodApp::start(&pods.a.path, &pods.a_cgroup).await;
    // Before enrolment the pod reaches B directly.
    expect_direct(&mut app, pods.b(PORT), "b").await;

    let mut egress = EgressSteering::load_or_adopt(&pins.path).expect("the programs load (verifier) and pin");
    assert!(!egress.adopted());
    let agent = AgentSide::enrol(
        &mut egress,
        "default/pod-a.v1",
        &pods.a.path,
        &pods.a_cgroup.path,
        &port_policy(&[PORT], FailMode::Closed),
    );
    let links = pins.egress_links();
    assert_eq!(links.len(), 1, "one link directory: {links:?}");
    assert_eq!(
        links[0].1,
        ["connect4", "connect6", "sockops"],
        "three links: {links:?}"
    );
    let b_hits = pods.b_app.hits();

    const N: u64 = 5;
    for _ in 0..N {
        expect_steered(&mut app, &agent, pods.b(PORT)).await;
    }
    // IPv6, and IPv4 from a dual-stack IPv6 socket (as Java makes them).
    expect_steered(&mut app, &agent, pods.b6(PORT)).await;
    let mapped = sa(IpAddr::V6(pods.link.b_ip.to_ipv6_mapped()), PORT);
    expect_steered(&mut app, &agent, mapped).await;
    assert_eq!(pods.b_app.hits(), b_hits, "no steered connection reached B");
    assert_eq!(pods.b_app6.hits(), 0, "no steered IPv6 connection reached B");

    // A port not configured goes to B untouched.
    expect_direct(&mut app, pods.b(OTHER_PORT), "b-other").await;
    assert_eq!(pods.b_other.hits(), 1);

    let counters = egress.counters(agent.id).expect("counters");
    assert_eq!(
        counters,
        EgressCounters {
            steered: N + 2,
            passed: 1,
            dropped_fail_closed: 0,
            passed_fail_open: 0,
        },
        "one count per connect"
    );

    // The agent's own upstream socket, made inside A's namespace but from
    // the agent's cgroup, goes to B: never steered back to the agent.
    let upstream = connect_from(&pods.a.path, None, pods.b(PORT), TIMEOUT)
        .await
        .expect("the agent dials the original destination from inside the pod");
    let body = get(upstream).await.expect("GET through the agent's own socket");
    let reply: serde_json::Value = serde_json::from_str(&body).expect("JSON");
    assert_eq!(reply["app"], "b");
    assert_eq!(
        reply["peer"]
            .as_str()
            .map(|p| p.starts_with(&pods.link.a_ip.to_string())),
        Some(true),
        "B sees pod A's address: {reply}"
    );
    assert_eq!(pods.b_app.hits(), b_hits + 1);
    assert_eq!(
        egress.counters(agent.id).expect("counters"),
        counters,
        "the programs never saw it"
    );

    // Attaching again is idempotent: the same three links stay.
    let before = kernel_links(&egress);
    egress
        .attach("default/pod-a.v1", &pods.a_cgroup.path)
        .expect("attach again");
    assert_eq!(kernel_links(&egress), before, "no new link");
    assert_eq!(before.len(), 3);

    // Un-enrolled: the pod reaches B directly again.
    egress.unenrol("default/pod-a.v1", agent.id).expect("unenrol");
    assert!(pins.egress_links().is_empty());
    assert!(kernel_links(&egress).is_empty(), "the links are detached at once");
    expect_direct(&mut app, pods.b(PORT), "b").await;
    egress.destroy().expect("destroy");
    eprintln!("steers_configured_egress: {:?}", started.elapsed());
}

/// Ids of the kernel's links of our programs.
fn kernel_links(egress: &EgressSteering) -> Vec<u32> {
    let programs = egress.program_ids();
    let mut ids: Vec<u32> = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|l| programs.contains(&l.program_id()))
        .map(|l| l.id())
        .collect();
    ids.sort();
    ids
}

#[test]
fn leaves_destinations_not_configured_alone() {
    privileged(
        "leaves_destinations_not_configured_alone",
        leaves_destinations_not_configured_alone_body(),
    );
}

async fn leaves_destinations_not_configured_alone_body() {
    let pins = PinDir::new();
    let pods = Pods::new().await;
    // An app inside A on loopback: in-pod traffic on a configured port.
    let local_app = NetnsApp::start(&pods.a.path, "127.0.0.1:8080".parse().expect("addr"), "a-local");
    let net_app = NetnsApp::start(&pods.b.path, pods.b(6060), "b-6060");
    let v4_only_app = NetnsApp::start(&pods.b.path, pods.b(7070), "b-7070");
    let v6_only_app = NetnsApp::start(&pods.b.path, pods.b6(7070), "b6-7070");
    let elsewhere_app = NetnsApp::start(&pods.b.path, pods.b(5050), "b-5050");
    let mut app = PodApp::start(&pods.a.path, &pods.a_cgroup).await;

    let mut egress = EgressSteering::load_or_adopt(&pins.path).expect("load");
    let b_net = Destination::net(pods.link.b(), 30, 6060);
    let policy = EgressPolicy {
        destinations: vec![
            Destination::port(PORT),
            b_net,
            Destination::addr(pods.b6(7070)),
            Destination::net("10.254.0.0".parse().expect("ip"), 16, 5050),
        ],
        fail: FailMode::Closed,
    };
    let agent = AgentSide::enrol(&mut egress, "pod-a", &pods.a.path, &pods.a_cgroup.path, &policy);

    // Loopback is never steered, configured port or not.
    expect_direct(&mut app, "127.0.0.1:8080".parse().expect("addr"), "a-local").await;
    // B's network on 6060: steered; B's v6 address on 7070: steered, its
    // v4 address on 7070 is not configured; 5050 only for another network.
    expect_steered(&mut app, &agent, pods.b(6060)).await;
    expect_steered(&mut app, &agent, pods.b6(7070)).await;
    expect_direct(&mut app, pods.b(7070), "b-7070").await;
    expect_direct(&mut app, pods.b(5050), "b-5050").await;
    expect_direct(&mut app, pods.b(OTHER_PORT), "b-other").await;
    assert_eq!(net_app.hits(), 0);
    assert_eq!(v6_only_app.hits(), 0);
    assert_eq!((local_app.hits(), v4_only_app.hits(), elsewhere_app.hits()), (1, 1, 1));
    assert_eq!(
        egress.counters(agent.id).expect("counters"),
        EgressCounters {
            steered: 2,
            passed: 4,
            dropped_fail_closed: 0,
            passed_fail_open: 0,
        }
    );

    // An update drops 6060 and keeps the rest: 6060 goes to B again.
    let mut update = policy.clone();
    update.destinations.retain(|d| *d != b_net);
    egress
        .configure(agent.id, &EgressListeners::new(&agent.v4).with_v6(&agent.v6), &update)
        .expect("update");
    expect_direct(&mut app, pods.b(6060), "b-6060").await;
    expect_steered(&mut app, &agent, pods.b(PORT)).await;
    egress.destroy().expect("destroy");
}

#[test]
fn fails_closed_without_the_agent_and_recovers_from_pins() {
    privileged(
        "fails_closed_without_the_agent_and_recovers_from_pins",
        fails_closed_without_the_agent_and_recovers_from_pins_body(),
    );
}

async fn fails_closed_without_the_agent_and_recovers_from_pins_body() {
    let started = Instant::now();
    let pins = PinDir::new();
    let pods = Pods::new().await;
    let mut app = PodApp::start(&pods.a.path, &pods.a_cgroup).await;
    let mut egress = EgressSteering::load_or_adopt(&pins.path).expect("load");
    let policy = port_policy(&[PORT], FailMode::Closed);
    let agent = AgentSide::enrol(&mut egress, "pod-a", &pods.a.path, &pods.a_cgroup.path, &policy);
    expect_steered(&mut app, &agent, pods.b(PORT)).await;
    let (id, program_ids) = (agent.id, egress.program_ids());

    // The agent dies: its listeners and descriptors go, the pins stay.
    drop(agent);
    drop(egress);
    const M: u64 = 3;
    for _ in 0..M {
        expect_refused(&mut app, pods.b(PORT)).await;
    }
    expect_refused(&mut app, pods.b6(PORT)).await;
    assert_eq!(
        (pods.b_app.hits(), pods.b_app6.hits()),
        (0, 0),
        "nothing reached B without the agent"
    );
    // Not configured: unaffected by the agent being down.
    expect_direct(&mut app, pods.b(OTHER_PORT), "b-other").await;

    // Restart: adopt the pins; still refused until the listeners are back.
    let mut egress = EgressSteering::load_or_adopt(&pins.path).expect("adopt");
    assert!(egress.adopted(), "the restarted agent adopts the pinned state");
    assert_eq!(egress.program_ids(), program_ids, "the same programs keep running");
    assert_eq!(
        egress.workloads(),
        vec![("pod-a".to_string(), id)],
        "the id is recovered"
    );
    assert!(egress.is_configured(id));
    assert_eq!(
        egress.counters(id).expect("counters"),
        EgressCounters {
            steered: 1,
            passed: 1,
            dropped_fail_closed: M + 1,
            passed_fail_open: 0,
        },
        "counters survive the restart and count every refusal"
    );
    expect_refused(&mut app, pods.b(PORT)).await;

    let agent = AgentSide::enrol(&mut egress, "pod-a", &pods.a.path, &pods.a_cgroup.path, &policy);
    assert_eq!(agent.id, id);
    assert_eq!(pins.egress_links().len(), 1, "attach is idempotent after a restart");
    expect_steered(&mut app, &agent, pods.b(PORT)).await;
    expect_steered(&mut app, &agent, pods.b6(PORT)).await;
    assert_eq!(pods.b_app.hits(), 0, "nothing ever reached B without the agent");
    egress.destroy().expect("destroy");
    assert!(!pins.path.join("egress").exists(), "destroy removes the egress pins");
    // Without pins and links, the pod reaches B directly again.
    expect_direct(&mut app, pods.b(PORT), "b").await;
    eprintln!("fails_closed_and_recovers: {:?}", started.elapsed());
}

#[test]
fn fail_open_sends_to_the_original_destination_without_the_agent() {
    privileged(
        "fail_open_sends_to_the_original_destination_without_the_agent",
        fail_open_body(),
    );
}

async fn fail_open_body() {
    let pins = PinDir::new();
    let pods = Pods::new().await;
    let mut app = PodApp::start(&pods.a.path, &pods.a_cgroup).await;
    let mut egress = EgressSteering::load_or_adopt(&pins.path).expect("load");
    let agent = AgentSide::enrol(
        &mut egress,
        "pod-a",
        &pods.a.path,
        &pods.a_cgroup.path,
        &port_policy(&[PORT], FailMode::Open),
    );
    expect_steered(&mut app, &agent, pods.b(PORT)).await;
    let id = agent.id;
    drop(agent);
    expect_direct(&mut app, pods.b(PORT), "b").await;
    expect_direct(&mut app, pods.b6(PORT), "b6").await;
    assert_eq!(
        egress.counters(id).expect("counters"),
        EgressCounters {
            steered: 1,
            passed: 0,
            dropped_fail_closed: 0,
            passed_fail_open: 2,
        }
    );
    egress.destroy().expect("destroy");
}

#[test]
fn enrol_unenrol_churn_leaks_nothing() {
    privileged(
        "enrol_unenrol_churn_leaks_nothing",
        enrol_unenrol_churn_leaks_nothing_body(),
    );
}

async fn enrol_unenrol_churn_leaks_nothing_body() {
    const N: usize = 100;
    let started = Instant::now();
    let pins = PinDir::new();
    let namespaces: Vec<NetnsGuard> = (0..N).map(|_| NetnsGuard::bare()).collect();
    let cgroups: Vec<CgroupGuard> = (0..N).map(|_| CgroupGuard::new()).collect();
    let created = started.elapsed();
    let fds_before = open_fds();
    let mut egress = EgressSteering::load_or_adopt(&pins.path).expect("load");
    let policy = EgressPolicy {
        destinations: vec![
            Destination::port(PORT),
            Destination::addr(sa(IpAddr::V4(Ipv4Addr::new(10, 251, 0, 1)), 443)),
        ],
        fail: FailMode::Closed,
    };
    let name_of = |i: usize| format!("churn/pod-{i}");
    let mut enrol_times = Vec::new();
    let mut enrol = |egress: &mut EgressSteering, i: usize| {
        let t = Instant::now();
        let ns = Netns::open(&namespaces[i].path).expect("netns");
        let v4 = ns.listener("127.0.0.1:0".parse().expect("addr")).expect("listener");
        let v6 = ns.listener("[::1]:0".parse().expect("addr")).expect("listener");
        let id = egress.workload_id(&name_of(i)).expect("id");
        egress
            .configure(id, &EgressListeners::new(&v4).with_v6(&v6), &policy)
            .expect("configure");
        egress.attach(&name_of(i), &cgroups[i].path).expect("attach");
        enrol_times.push(t.elapsed());
        (i, id, v4, v6)
    };
    let t = Instant::now();
    let mut enrolled: Vec<_> = (0..N).map(|i| enrol(&mut egress, i)).collect();
    let enrol_all = t.elapsed();
    assert_eq!(pins.egress_links().len(), N);
    assert_eq!(kernel_links(&egress).len(), 3 * N);

    // One namespace cannot be two workloads.
    let (_, _, v4, v6) = &enrolled[0];
    let other = egress.workload_id("churn/intruder").expect("id");
    let err = egress
        .configure(other, &EgressListeners::new(v4).with_v6(v6), &policy)
        .expect_err("a second workload in one netns");
    assert!(matches!(err, EbpfError::NetnsTaken { .. }), "{err:?}");
    egress.unenrol("churn/intruder", other).expect("unenrol the intruder");

    // Un-enrol every other one, restart in the middle, enrol them again.
    let t = Instant::now();
    let (gone, kept): (Vec<_>, Vec<_>) = enrolled.drain(..).partition(|(i, ..)| i % 2 == 0);
    for (i, id, ..) in gone {
        egress.unenrol(&name_of(i), id).expect("unenrol");
    }
    assert_eq!(pins.egress_links().len(), N / 2);
    drop(egress);
    let mut egress = EgressSteering::load_or_adopt(&pins.path).expect("adopt");
    assert!(egress.adopted());
    let mut recorded: Vec<(String, u32)> = kept.iter().map(|(i, id, ..)| (name_of(*i), *id)).collect();
    recorded.sort();
    assert_eq!(egress.workloads(), recorded, "ids are recovered after the restart");
    let mut enrolled = kept;
    for i in (0..N).step_by(2) {
        let e = enrol(&mut egress, i);
        enrolled.push(e);
    }
    let churn = t.elapsed();
    assert_eq!(egress.workloads().len(), N);
    assert_eq!(pins.egress_links().len(), N);
    assert_eq!(kernel_links(&egress).len(), 3 * N, "re-enrolment made no extra links");
    let ids: std::collections::BTreeSet<u32> = enrolled.iter().map(|(_, id, ..)| *id).collect();
    assert_eq!(ids.len(), N, "ids are distinct");
    assert!(
        ids.iter().all(|id| (*id as usize) < N + 1),
        "freed ids are reused: {ids:?}"
    );

    let t = Instant::now();
    for (i, id, ..) in &enrolled {
        egress.unenrol(&name_of(*i), *id).expect("unenrol");
        egress.unenrol(&name_of(*i), *id).expect("unenrol is idempotent");
    }
    let unenrol_all = t.elapsed();
    drop(enrolled);
    assert!(pins.egress_links().is_empty(), "{:?}", pins.egress_links());
    assert!(egress.workloads().is_empty());
    assert!(
        kernel_links(&egress).is_empty(),
        "no link of our programs is left in the kernel"
    );
    let program_ids = egress.program_ids();
    egress.destroy().expect("destroy");
    assert_eq!(open_fds(), fds_before, "no descriptor leaked");
    assert!(
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .all(|p| !program_ids.contains(&p.id())),
        "the programs are unloaded once their pins are gone"
    );
    drop(cgroups);
    drop(namespaces);
    assert!(leftover_cgroups().is_empty(), "cgroups left: {:?}", leftover_cgroups());
    assert!(
        leftover_namespaces().is_empty(),
        "namespaces left: {:?}",
        leftover_namespaces()
    );

    enrol_times.sort();
    let median = enrol_times[enrol_times.len() / 2];
    let max = enrol_times.last().copied().unwrap_or_default();
    eprintln!(
        "egress churn: {N} namespaces + cgroups created in {created:?}; enrol {N} in {enrol_all:?} \
         (median {median:?}, max {max:?}); un-enrol {}, restart (adopt), re-enrol them in {churn:?}; \
         un-enrol {N} in {unenrol_all:?}; total {:?}",
        N / 2,
        started.elapsed()
    );
    assert!(enrol_all < Duration::from_secs(10), "enrolling {N} took {enrol_all:?}");
}

#[test]
fn misuse_is_refused_with_reasons() {
    privileged("misuse_is_refused_with_reasons", misuse_is_refused_with_reasons_body());
}

async fn misuse_is_refused_with_reasons_body() {
    let pins = PinDir::new();
    let pod = NetnsGuard::bare();
    let mut egress = EgressSteering::load_or_adopt(&pins.path).expect("load");
    let id = egress.workload_id("pod-x").expect("id");
    let ns = Netns::open(&pod.path).expect("netns");

    // A listener other pods could reach would lend them this pod's identity.
    let exposed = ns.listener("0.0.0.0:0".parse().expect("addr")).expect("listener");
    let err = egress
        .configure(id, &EgressListeners::new(&exposed), &EgressPolicy::default())
        .expect_err("not loopback");
    assert!(matches!(err, EbpfError::EgressListenerAddr { .. }), "{err:?}");
    assert!(err.to_string().contains("borrow this pod's identity"), "{err}");

    // The two listeners must be in one namespace.
    let v4 = ns.listener("127.0.0.1:0".parse().expect("addr")).expect("listener");
    let host_v6 = std::net::TcpListener::bind("[::1]:0").expect("host listener");
    let err = egress
        .configure(
            id,
            &EgressListeners::new(&v4).with_v6(&host_v6),
            &EgressPolicy::default(),
        )
        .expect_err("namespaces differ");
    assert!(matches!(err, EbpfError::EgressListenersApart), "{err:?}");

    let bad = EgressPolicy {
        destinations: vec![Destination::net("fd00::".parse().expect("ip"), 129, 80)],
        fail: FailMode::Closed,
    };
    let err = egress
        .configure(id, &EgressListeners::new(&v4), &bad)
        .expect_err("/129");
    assert!(err.to_string().contains("[fd00::/129]:80"), "{err}");

    // The cgroup must be a cgroup v2 directory.
    let tmp = tempfile::tempdir().expect("tempdir");
    let err = egress.attach("pod-x", tmp.path()).expect_err("not a cgroup");
    assert!(matches!(err, EbpfError::NotCgroup2 { .. }), "{err:?}");
    let err = egress
        .attach("pod-x", &cgroup2_root().join("nodeward-test-no-such-cgroup"))
        .expect_err("no such cgroup");
    assert!(err.to_string().contains("no-such-cgroup"), "{err}");
    assert!(!egress.is_configured(id), "nothing was configured by the failed calls");
    egress.unenrol("pod-x", id).expect("unenrol");
    egress.destroy().expect("destroy");
}
