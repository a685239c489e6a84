//! Root-only tests of eBPF steering in real network namespaces: the
//! SK_LOOKUP program passes the verifier on this kernel, steers protected
//! (pod IP, port) pairs into a listener created inside the pod's namespace,
//! leaves everything else alone, fails closed when the listener is gone,
//! comes back after a restart from the pinned state, and survives
//! enrol/un-enrol churn without leaks.
//!
//! Run as root, one test at a time (they share kernel state; a global lock
//! serialises them anyway):
//! `cargo test -p nodeward-tests --test namespaced -- --test-threads=1`.
//! Without root every test FAILS with a message saying it was not run.

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use nodeward::ebpf::{Counters, EbpfError, Steering};
use nodeward::netns::{Netns, listener_in};
use nodeward_testkit::netns::{
    NetnsApp, NetnsGuard, PinDir, app_reply, canonical, connect, connect_from, get, leftover_namespaces, privileged,
    respond,
};
use nodeward_testkit::resources::open_fds;
use tokio::net::TcpListener;

const APP_PORT: u16 = 8080;
const OTHER_PORT: u16 = 9090;
/// Connect timeout where a connection must fail (fail closed): the first
/// SYN retransmission comes after 1 s, so each attempt is one SYN.
const DROP_TIMEOUT: Duration = Duration::from_millis(600);
const OK_TIMEOUT: Duration = Duration::from_secs(2);

/// Records every `log` record (the program's aya-log events land there),
/// with debug enabled before the program is loaded.
struct CapturedLogs(Mutex<Vec<String>>);

impl CapturedLogs {
    fn lines(&self) -> Vec<String> {
        self.0.lock().map(|l| l.clone()).unwrap_or_default()
    }

    fn contains(&self, needle: &str) -> bool {
        self.lines().iter().any(|l| l.contains(needle))
    }
}

impl log::Log for CapturedLogs {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        if let Ok(mut lines) = self.0.lock() {
            lines.push(format!("{} {}: {}", record.level(), record.target(), record.args()));
        }
    }

    fn flush(&self) {}
}

fn capture_logs() -> &'static CapturedLogs {
    static CAPTURED: CapturedLogs = CapturedLogs(Mutex::new(Vec::new()));
    if log::set_logger(&CAPTURED).is_ok() {
        log::set_max_level(log::LevelFilter::Debug);
    }
    &CAPTURED
}

fn sa(ip: IpAddr, port: u16) -> SocketAddr {
    SocketAddr::new(ip, port)
}

/// Connects from the host to `addr`, expects the agent's `listener` to take
/// the connection with `addr` as its local address, answers as the agent,
/// and checks the client got that answer.
async fn expect_steered(listener: &TcpListener, addr: SocketAddr, from: IpAddr) {
    let client = tokio::spawn(async move {
        let stream = connect(addr, OK_TIMEOUT)
            .await
            .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
        get(stream).await.unwrap_or_else(|e| panic!("GET {addr}: {e}"))
    });
    let (stream, peer) = tokio::time::timeout(OK_TIMEOUT, listener.accept())
        .await
        .unwrap_or_else(|_| panic!("the agent's listener did not get the connection to {addr}"))
        .expect("accept");
    let local = canonical(stream.local_addr().expect("local addr"));
    assert_eq!(local, addr, "the accepted socket keeps the original destination");
    assert_eq!(canonical(peer).ip(), from, "the peer is the client");
    respond(stream, r#"{"app":"agent"}"#.to_string()).await;
    let body = client.await.expect("client task");
    assert_eq!(body, r#"{"app":"agent"}"#, "the client talked to the agent");
}

/// Connection attempts to `addr` from the host that must all fail. The
/// kernel answers a SYN the program drops like one to a closed port (RST:
/// connection refused); a timeout would do too, nothing else.
async fn expect_dropped(addr: SocketAddr, attempts: u32) {
    for i in 0..attempts {
        match connect(addr, DROP_TIMEOUT).await {
            Ok(_) => panic!("attempt {i}: connection to {addr} got through while fail closed"),
            Err(e) => assert!(
                matches!(e.kind(), ErrorKind::ConnectionRefused | ErrorKind::TimedOut),
                "attempt {i}: unexpected error connecting to {addr}: {e}"
            ),
        }
    }
}

#[test]
fn steers_protected_pairs_only() {
    privileged("steers_protected_pairs_only", steers_protected_pairs_only_body());
}

async fn steers_protected_pairs_only_body() {
    let started = Instant::now();
    let pins = PinDir::new();
    let pod = NetnsGuard::new();
    let other = NetnsGuard::new();
    let app = NetnsApp::start(&pod.path, sa(pod.pod_ip(), APP_PORT), "app");
    let app6 = NetnsApp::start(&pod.path, sa(pod.pod_ip6(), APP_PORT), "app6");
    let app_other_port = NetnsApp::start(&pod.path, sa(pod.pod_ip(), OTHER_PORT), "app-9090");
    let other_app = NetnsApp::start(&other.path, sa(other.pod_ip(), APP_PORT), "other");

    // Before enrolment the app gets its traffic.
    assert_eq!(app_reply(sa(pod.pod_ip(), APP_PORT)).await["app"], "app");

    let captured = capture_logs();
    let mut steering = Steering::load_or_adopt(&pins.path).expect("the program loads (verifier) and pins");
    assert!(!steering.adopted());
    let forward_logs = tokio::spawn(steering.take_logs().expect("the program's log stream").forward());
    let id = steering.workload_id("default/pod-a.v1").expect("id");
    // Dual-stack listener: takes the IPv4 and the IPv6 pair.
    let listener = listener_in(&pod.path, "[::]:0".parse().expect("addr")).expect("listener in the pod netns");
    let protected = [(pod.pod_ip(), APP_PORT), (pod.pod_ip6(), APP_PORT)];
    steering.protect(id, &listener, &protected).expect("protect");
    steering.attach("default/pod-a.v1", &pod.path).expect("attach");
    assert_eq!(pins.links().len(), 1, "one pinned link: {:?}", pins.links());
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    let app_hits = app.hits();

    const N: u64 = 5;
    for _ in 0..N {
        expect_steered(&listener, sa(pod.pod_ip(), APP_PORT), pod.host_ip()).await;
    }
    expect_steered(&listener, sa(pod.pod_ip6(), APP_PORT), IpAddr::V6(pod.veth().host_ip6)).await;
    assert_eq!(app.hits(), app_hits, "no steered connection reached the app");
    assert_eq!(app6.hits(), 0, "no steered IPv6 connection reached the app");

    // The program's debug events reach the `log` facade.
    let wanted = format!("steer ::ffff:{}:{APP_PORT}", pod.pod_ip());
    let deadline = Instant::now() + OK_TIMEOUT;
    while !captured.contains(&wanted) {
        assert!(
            Instant::now() < deadline,
            "no BPF debug event {wanted:?} in {:?}",
            captured.lines()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    forward_logs.abort();

    // A port that is not protected reaches the app untouched.
    let reply = app_reply(sa(pod.pod_ip(), OTHER_PORT)).await;
    assert_eq!(reply["app"], "app-9090");
    assert_eq!(reply["local"], sa(pod.pod_ip(), OTHER_PORT).to_string());
    assert_eq!(
        reply["peer"]
            .as_str()
            .map(|p| p.starts_with(&pod.host_ip().to_string())),
        Some(true)
    );
    assert_eq!(app_other_port.hits(), 1);

    // A namespace that is not enrolled is untouched, same port.
    let reply = app_reply(sa(other.pod_ip(), APP_PORT)).await;
    assert_eq!(reply["app"], "other");
    assert_eq!(other_app.hits(), 1);

    assert_eq!(
        steering.counters(id).expect("counters"),
        Counters {
            steered: N + 1,
            passed: 0,
            dropped_fail_closed: 0,
        },
        "one count per connection"
    );

    // Attaching again is idempotent: the same link stays pinned.
    steering.attach("default/pod-a.v1", &pod.path).expect("attach again");
    assert_eq!(pins.links().len(), 1);
    expect_steered(&listener, sa(pod.pod_ip(), APP_PORT), pod.host_ip()).await;

    // Un-enrolled: the app gets its traffic again.
    steering.unenrol("default/pod-a.v1", id).expect("unenrol");
    assert!(pins.links().is_empty());
    assert_eq!(app_reply(sa(pod.pod_ip(), APP_PORT)).await["app"], "app");
    steering.destroy().expect("destroy");
    eprintln!("steers_protected_pairs_only: {:?}", started.elapsed());
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
    let pod = NetnsGuard::new();
    let app = NetnsApp::start(&pod.path, sa(pod.pod_ip(), APP_PORT), "app");
    let target = sa(pod.pod_ip(), APP_PORT);

    let mut steering = Steering::load_or_adopt(&pins.path).expect("load");
    let id = steering.workload_id("pod-a").expect("id");
    let listener = listener_in(&pod.path, "127.0.0.1:0".parse().expect("addr")).expect("listener");
    steering
        .protect(id, &listener, &[(pod.pod_ip(), APP_PORT)])
        .expect("protect");
    steering.attach("pod-a", &pod.path).expect("attach");
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    expect_steered(&listener, target, pod.host_ip()).await;
    let prog_id = steering.program_id();

    // The agent dies: its listener and every descriptor it held are gone,
    // the pinned entries and link stay.
    drop(listener);
    drop(steering);
    const M: u32 = 3;
    expect_dropped(target, M).await;
    assert_eq!(app.hits(), 0, "no connection reached the app while the agent was down");

    // Restart: adopt the pins; still closed until the listener is back.
    let mut steering = Steering::load_or_adopt(&pins.path).expect("adopt");
    assert!(steering.adopted(), "the restarted agent adopts the pinned state");
    assert_eq!(steering.program_id(), prog_id, "the same program keeps running");
    assert_eq!(
        steering.workloads(),
        vec![("pod-a".to_string(), id)],
        "the id is recovered"
    );
    let counters = steering.counters(id).expect("counters");
    assert_eq!(counters.steered, 1, "counters survive the restart");
    // The kernel refuses a dropped SYN at once (RST), so the client does not
    // retransmit: exactly one count per attempt.
    assert_eq!(
        counters.dropped_fail_closed,
        u64::from(M),
        "every dropped attempt is counted: {counters:?}"
    );
    expect_dropped(target, 1).await;

    let listener = listener_in(&pod.path, "127.0.0.1:0".parse().expect("addr")).expect("new listener");
    steering
        .protect(id, &listener, &[(pod.pod_ip(), APP_PORT)])
        .expect("protect again");
    steering.attach("pod-a", &pod.path).expect("attach is idempotent");
    assert_eq!(pins.links(), vec!["pod-a".to_string()]);
    let listener = TcpListener::from_std(listener).expect("tokio listener");
    expect_steered(&listener, target, pod.host_ip()).await;
    assert_eq!(app.hits(), 0, "nothing ever reached the app unauthenticated");
    let counters = steering.counters(id).expect("counters");
    assert_eq!(
        counters,
        Counters {
            steered: 2,
            passed: 0,
            dropped_fail_closed: u64::from(M) + 1,
        }
    );

    steering.destroy().expect("destroy");
    assert!(!pins.path.exists(), "destroy removes the pins");
    // Without pins and link, the app is reachable again.
    assert_eq!(app_reply(target).await["app"], "app");
    eprintln!(
        "fails_closed_without_the_agent_and_recovers_from_pins: {:?}",
        started.elapsed()
    );
}

#[test]
fn loopback_and_in_pod_traffic_reach_the_app() {
    privileged(
        "loopback_and_in_pod_traffic_reach_the_app",
        loopback_and_in_pod_traffic_reach_the_app_body(),
    );
}

async fn loopback_and_in_pod_traffic_reach_the_app_body() {
    let pins = PinDir::new();
    let pod = NetnsGuard::new();
    // Bound on every address so the agent's upstream path (127.0.0.1) works.
    let app = NetnsApp::start(&pod.path, sa(IpAddr::V4(Ipv4Addr::UNSPECIFIED), APP_PORT), "app");
    let mut steering = Steering::load_or_adopt(&pins.path).expect("load");
    let id = steering.workload_id("pod-a").expect("id");
    let listener = listener_in(&pod.path, "127.0.0.1:0".parse().expect("addr")).expect("listener");
    steering
        .protect(id, &listener, &[(pod.pod_ip(), APP_PORT)])
        .expect("protect");
    steering.attach("pod-a", &pod.path).expect("attach");
    let listener = TcpListener::from_std(listener).expect("tokio listener");

    let reply_from = |bind: Option<SocketAddr>, to: SocketAddr| {
        let path = pod.path.clone();
        async move {
            let stream = connect_from(&path, bind, to, OK_TIMEOUT)
                .await
                .unwrap_or_else(|e| panic!("connect {to} from inside the pod: {e}"));
            let body = get(stream).await.expect("GET");
            serde_json::from_str::<serde_json::Value>(&body).unwrap_or_else(|e| panic!("{e}: {body}"))
        }
    };
    // The agent's upstream path: 127.0.0.1:8080 inside the pod (not protected).
    let upstream = reply_from(None, "127.0.0.1:8080".parse().expect("addr")).await;
    assert_eq!(upstream["app"], "app");
    // Loopback source to the protected pair: passes.
    let lo = reply_from(Some("127.0.0.1:0".parse().expect("addr")), sa(pod.pod_ip(), APP_PORT)).await;
    assert_eq!(lo["app"], "app");
    assert_eq!(lo["local"], sa(pod.pod_ip(), APP_PORT).to_string());
    // In-pod traffic to its own address: passes.
    let own = reply_from(None, sa(pod.pod_ip(), APP_PORT)).await;
    assert_eq!(own["app"], "app");
    assert_eq!(
        own["peer"].as_str().map(|p| p.starts_with(&pod.pod_ip().to_string())),
        Some(true)
    );
    assert_eq!(app.hits(), 3);

    // From outside, the same pair is steered.
    expect_steered(&listener, sa(pod.pod_ip(), APP_PORT), pod.host_ip()).await;
    assert_eq!(
        steering.counters(id).expect("counters"),
        Counters {
            steered: 1,
            passed: 2,
            dropped_fail_closed: 0,
        }
    );
    steering.destroy().expect("destroy");
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
    let created = started.elapsed();
    let fds_before = open_fds();
    let mut steering = Steering::load_or_adopt(&pins.path).expect("load");

    // Each workload gets a made-up pod address: steering keys on addresses,
    // not on what the namespace holds.
    let addr_of = |i: usize| {
        let i = u32::try_from(i).expect("small");
        (
            IpAddr::V4(Ipv4Addr::new(10, 250, (i / 256) as u8, (i % 256) as u8)),
            APP_PORT,
        )
    };
    let name_of = |i: usize| format!("churn/pod-{i}");
    let mut listeners = Vec::new();
    let mut enrol_times = Vec::new();
    let mut enrol = |steering: &mut Steering, i: usize| {
        let t = Instant::now();
        let ns = Netns::open(&namespaces[i].path).expect("netns");
        let listener = ns.listener("127.0.0.1:0".parse().expect("addr")).expect("listener");
        let id = steering.workload_id(&name_of(i)).expect("id");
        steering.protect(id, &listener, &[addr_of(i)]).expect("protect");
        steering.attach(&name_of(i), &namespaces[i].path).expect("attach");
        enrol_times.push(t.elapsed());
        (i, id, listener)
    };
    let t = Instant::now();
    for i in 0..N {
        let enrolled = enrol(&mut steering, i);
        listeners.push(enrolled);
    }
    let enrol_all = t.elapsed();
    assert_eq!(pins.links().len(), N);
    assert_eq!(steering.workloads().len(), N);

    // Un-enrol every other one, then enrol them again.
    let t = Instant::now();
    let (gone, kept): (Vec<_>, Vec<_>) = listeners.into_iter().partition(|(i, _, _)| i % 2 == 0);
    for (i, id, listener) in gone {
        steering.unenrol(&name_of(i), id).expect("unenrol");
        drop(listener);
    }
    assert_eq!(pins.links().len(), N / 2);
    assert_eq!(steering.workloads().len(), N / 2);

    // Restart in the middle: the adopted state knows every kept workload's
    // id, and enrols the others with the adopted program.
    drop(steering);
    let mut steering = Steering::load_or_adopt(&pins.path).expect("adopt");
    assert!(steering.adopted());
    let mut recorded: Vec<(String, u32)> = kept.iter().map(|(i, id, _)| (name_of(*i), *id)).collect();
    recorded.sort();
    assert_eq!(steering.workloads(), recorded, "ids are recovered after the restart");
    let mut listeners = kept;
    for i in (0..N).step_by(2) {
        let enrolled = enrol(&mut steering, i);
        listeners.push(enrolled);
    }
    let churn = t.elapsed();
    assert_eq!(steering.workloads().len(), N);
    assert_eq!(pins.links().len(), N);
    let ids: std::collections::BTreeSet<u32> = listeners.iter().map(|(_, id, _)| *id).collect();
    assert_eq!(ids.len(), N, "ids are distinct");
    assert!(ids.iter().all(|id| (*id as usize) < N), "freed ids are reused: {ids:?}");

    // Idempotent re-attach of everything: no new link.
    for (i, _, _) in &listeners {
        steering.attach(&name_of(*i), &namespaces[*i].path).expect("re-attach");
    }
    assert_eq!(pins.links().len(), N);

    for (i, id, listener) in listeners {
        steering.unenrol(&name_of(i), id).expect("unenrol");
        steering.unenrol(&name_of(i), id).expect("unenrol is idempotent");
        drop(listener);
    }
    assert!(pins.links().is_empty(), "no pinned link left: {:?}", pins.links());
    assert!(steering.workloads().is_empty());
    let prog_id = steering.program_id();
    let live_links = aya::programs::loaded_links()
        .filter_map(Result::ok)
        .filter(|l| l.program_id() == prog_id)
        .count();
    assert_eq!(live_links, 0, "no link of our program is left in the kernel");
    steering.destroy().expect("destroy");
    assert_eq!(open_fds(), fds_before, "no descriptor leaked");
    assert!(
        aya::programs::loaded_programs()
            .filter_map(Result::ok)
            .all(|p| p.id() != prog_id),
        "the program is unloaded once its pins are gone"
    );
    drop(namespaces);
    assert!(
        leftover_namespaces().is_empty(),
        "namespaces left: {:?}",
        leftover_namespaces()
    );

    enrol_times.sort();
    let median = enrol_times[enrol_times.len() / 2];
    let max = enrol_times.last().copied().unwrap_or_default();
    eprintln!(
        "churn: {N} namespaces created in {created:?}; enrol {N} in {enrol_all:?} (median {median:?}, max {max:?}); \
         un-enrol {}, restart (adopt), re-enrol them in {churn:?}; total {:?}",
        N / 2,
        started.elapsed()
    );
    assert!(enrol_all < Duration::from_secs(10), "enrolling {N} took {enrol_all:?}");
    assert!(started.elapsed() < Duration::from_secs(60));
}

#[test]
fn errors_name_what_is_missing() {
    privileged("errors_name_what_is_missing", errors_name_what_is_missing_body());
}

async fn errors_name_what_is_missing_body() {
    let pins = PinDir::new();
    let mut steering = Steering::load_or_adopt(&pins.path).expect("load");

    let missing = std::path::Path::new("/var/run/netns/nodeward-test-no-such-netns");
    let err = steering.attach("pod-x", missing).expect_err("no such netns");
    assert!(matches!(err, EbpfError::Netns { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains("pod-x") && text.contains("no-such-netns") && text.contains("not found"),
        "{text}"
    );

    let off_bpffs = tempfile::tempdir().expect("tempdir");
    let err = Steering::load_or_adopt(&off_bpffs.path().join("nodeward")).expect_err("not bpffs");
    assert!(matches!(err, EbpfError::NotBpffs { .. }), "{err:?}");
    assert!(err.to_string().contains("mount -t bpf bpf"), "{err}");

    // Root without any capability (as in a container that was not granted
    // them): loading must say which capabilities are missing.
    let out = std::process::Command::new("setpriv")
        .args(["--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all", "--"])
        .arg(std::env::current_exe().expect("test binary"))
        .args([
            "--exact",
            "capless_child",
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CAPLESS_PIN_DIR, pins.path.join("capless"))
        .output()
        .expect("running setpriv (util-linux)");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "capless child failed: {stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains("needs CAP_BPF, CAP_NET_ADMIN and CAP_SYS_ADMIN"),
        "{stdout}"
    );
    steering.destroy().expect("destroy");
}

const CAPLESS_PIN_DIR: &str = "NODEWARD_TEST_CAPLESS_PIN_DIR";

/// Run by `errors_name_what_is_missing` in a child without capabilities.
#[test]
#[ignore = "a helper: errors_name_what_is_missing runs it without capabilities"]
fn capless_child() {
    let dir = std::env::var_os(CAPLESS_PIN_DIR).unwrap_or_else(|| {
        panic!("capless_child is a helper of errors_name_what_is_missing; it needs {CAPLESS_PIN_DIR}")
    });
    let err = Steering::load_or_adopt(std::path::Path::new(&dir)).expect_err("loading needs capabilities");
    println!("capless load: {err}");
    assert!(matches!(err, EbpfError::NotPermitted { .. }), "{err:?}");
}
