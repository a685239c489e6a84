//! Fixtures for root-only tests in real network namespaces: a namespace
//! with a veth to the host ([`NetnsGuard`]), a veth between two of them
//! ([`NetnsLink`]), a tiny app inside one ([`NetnsApp`]), a private pin
//! directory on bpffs ([`PinDir`]), and clients that connect from the host
//! or from inside a namespace.
//!
//! Every name (namespace, veth, pin directory) is unique per process and
//! fixture, addresses are 10.x / fd77:6e77::/32 only inside namespaces the
//! fixture created, and everything is removed on drop, panics included.
//! Tests using these must run one at a time (they share kernel state) and
//! call [`require_root`] first, which fails loudly rather than skipping.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use nodeward::netns::{listener_in, socket_in};

/// Panics with a clear message unless running as root: these tests must
/// never pass silently where they could not run.
pub fn require_root(test: &str) {
    assert!(
        nix::unistd::geteuid().is_root(),
        "{test}: NOT RUN: this test needs root (network namespaces, veth, cgroups, eBPF, bpffs); \
         run it as root: `sudo -E cargo test -p nodeward-tests --test <namespaced|egress|kubernetes> -- \
         --test-threads=1`, or `sudo -E cargo xtask test`"
    );
}

/// Runs one root-only test: fails loudly without root (see
/// [`require_root`]), one test at a time (they share kernel state: a lock
/// serialises them whatever `--test-threads` says), on its own
/// current-thread runtime.
pub fn privileged(test: &str, body: impl Future<Output = ()>) {
    require_root(test);
    static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());
    let _serial = SERIAL.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime")
        .block_on(body);
}

/// `<pid>x<n>`: unique per process and call, short enough for interface
/// names (15 bytes with a 3-byte prefix).
pub(crate) fn unique() -> (u32, String) {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let n = NEXT.fetch_add(1, Ordering::Relaxed);
    (n, format!("{}x{n}", std::process::id() % 100_000))
}

/// Runs `ip` with `args`, feeding `batch` (one command a line) on stdin
/// when given; panics with ip's output on failure.
fn ip(args: &[&str], batch: Option<&str>) {
    let mut cmd = Command::new("ip");
    cmd.args(args).stdout(Stdio::null()).stderr(Stdio::piped());
    if batch.is_some() {
        cmd.args(["-batch", "-"]).stdin(Stdio::piped());
    }
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("running ip {args:?}: {e} (is iproute2 installed?)"));
    if let (Some(batch), Some(mut stdin)) = (batch, child.stdin.take()) {
        use std::io::Write as _;
        stdin
            .write_all(batch.as_bytes())
            .unwrap_or_else(|e| panic!("feeding ip {args:?}: {e}"));
    }
    let out = child
        .wait_with_output()
        .unwrap_or_else(|e| panic!("waiting for ip {args:?}: {e}"));
    assert!(
        out.status.success(),
        "ip {args:?} failed ({}): {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr),
        batch.unwrap_or("")
    );
}

/// A network namespace made for one test. With [`NetnsGuard::new`] it is a
/// simulated pod: a veth pair to the host, `pod_ip`/`pod_ip6` inside and
/// `host_ip`/`host_ip6` on the host end, all up. Drop deletes the
/// namespace and the veth.
#[derive(Debug)]
pub struct NetnsGuard {
    pub name: String,
    /// `/var/run/netns/<name>`.
    pub path: PathBuf,
    pub veth: Option<Veth>,
    lease: Option<SubnetLease>,
}

/// The host–pod link of a [`NetnsGuard`].
#[derive(Debug, Clone)]
pub struct Veth {
    pub host_if: String,
    pub pod_if: String,
    pub host_ip: Ipv4Addr,
    pub pod_ip: Ipv4Addr,
    pub host_ip6: Ipv6Addr,
    pub pod_ip6: Ipv6Addr,
}

impl NetnsGuard {
    /// A pod-like namespace with a veth to the host: an IPv4 /30 in
    /// 10.200.0.0/16 and an IPv6 /64 in fd77:6e77::/48, leased so that no
    /// other fixture on this machine, in any process, uses them meanwhile.
    pub fn new() -> Self {
        let (_, tag) = unique();
        let mut guard = Self::create(&tag);
        let lease = SubnetLease::acquire();
        let (host_ip, pod_ip, host_ip6, pod_ip6) = lease.addresses();
        guard.lease = Some(lease);
        let veth = Veth {
            host_if: format!("nwh{tag}"),
            pod_if: format!("nwp{tag}"),
            host_ip,
            pod_ip,
            host_ip6,
            pod_ip6,
        };
        // Recorded before creating it so Drop removes a half-made veth too.
        guard.veth = Some(veth.clone());
        let Veth { host_if, pod_if, .. } = &veth;
        let name = &guard.name;
        ip(
            &[],
            Some(&format!(
                "link add {host_if} type veth peer name {pod_if}\n\
                 link set {pod_if} netns {name}\n\
                 addr add {host_ip}/30 dev {host_if}\n\
                 addr add {host_ip6}/64 dev {host_if} nodad\n\
                 link set {host_if} up\n"
            )),
        );
        ip(
            &["-n", name],
            Some(&format!(
                "addr add {pod_ip}/30 dev {pod_if}\n\
                 addr add {pod_ip6}/64 dev {pod_if} nodad\n\
                 link set {pod_if} up\n"
            )),
        );
        guard
    }

    /// A namespace with only loopback (up): enough to attach to.
    pub fn bare() -> Self {
        let (_, tag) = unique();
        Self::create(&tag)
    }

    fn create(tag: &str) -> Self {
        let name = format!("nwtest-{tag}");
        let guard = Self {
            path: Path::new("/var/run/netns").join(&name),
            name,
            veth: None,
            lease: None,
        };
        ip(&["netns", "add", &guard.name], None);
        ip(&["-n", &guard.name, "link", "set", "lo", "up"], None);
        guard
    }

    pub fn veth(&self) -> &Veth {
        self.veth
            .as_ref()
            .expect("this namespace was made with NetnsGuard::new (it has a veth)")
    }

    pub fn pod_ip(&self) -> IpAddr {
        IpAddr::V4(self.veth().pod_ip)
    }

    pub fn pod_ip6(&self) -> IpAddr {
        IpAddr::V6(self.veth().pod_ip6)
    }

    pub fn host_ip(&self) -> IpAddr {
        IpAddr::V4(self.veth().host_ip)
    }
}

impl Default for NetnsGuard {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for NetnsGuard {
    fn drop(&mut self) {
        // Best effort and quiet: a half-made fixture lacks some of these.
        if let Some(veth) = &self.veth {
            let _ = Command::new("ip")
                .args(["link", "del", &veth.host_if])
                .stderr(Stdio::null())
                .status();
        }
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .stderr(Stdio::null())
            .status();
    }
}

/// A veth pair between two namespaces a test made (pod A and pod B on one
/// link, as two pods of a node reach each other), with a leased /30 and
/// /64: `a_ip`/`a_ip6` inside `a`, `b_ip`/`b_ip6` inside `b`. Drop deletes
/// the pair (deleting either namespace does too).
#[derive(Debug)]
pub struct NetnsLink {
    pub a_if: String,
    pub b_if: String,
    pub a_ip: Ipv4Addr,
    pub b_ip: Ipv4Addr,
    pub a_ip6: Ipv6Addr,
    pub b_ip6: Ipv6Addr,
    a_ns: String,
    _lease: SubnetLease,
}

impl NetnsLink {
    pub fn new(a: &NetnsGuard, b: &NetnsGuard) -> Self {
        let (_, tag) = unique();
        let lease = SubnetLease::acquire();
        let (a_ip, b_ip, a_ip6, b_ip6) = lease.addresses();
        let link = Self {
            a_if: format!("nwa{tag}"),
            b_if: format!("nwb{tag}"),
            a_ip,
            b_ip,
            a_ip6,
            b_ip6,
            a_ns: a.name.clone(),
            _lease: lease,
        };
        let Self { a_if, b_if, .. } = &link;
        let (a_ns, b_ns) = (&a.name, &b.name);
        ip(
            &[],
            Some(&format!(
                "link add {a_if} netns {a_ns} type veth peer name {b_if} netns {b_ns}\n"
            )),
        );
        for (ns, ifname, v4, v6) in [(a_ns, a_if, a_ip, a_ip6), (b_ns, b_if, b_ip, b_ip6)] {
            ip(
                &["-n", ns],
                Some(&format!(
                    "addr add {v4}/30 dev {ifname}\n\
                     addr add {v6}/64 dev {ifname} nodad\n\
                     link set {ifname} up\n"
                )),
            );
        }
        link
    }

    pub fn a(&self) -> IpAddr {
        IpAddr::V4(self.a_ip)
    }

    pub fn b(&self) -> IpAddr {
        IpAddr::V4(self.b_ip)
    }

    pub fn b6(&self) -> IpAddr {
        IpAddr::V6(self.b_ip6)
    }
}

impl Drop for NetnsLink {
    fn drop(&mut self) {
        // Quiet: gone already when a namespace went first.
        let _ = Command::new("ip")
            .args(["-n", &self.a_ns, "link", "del", &self.a_if])
            .stderr(Stdio::null())
            .status();
    }
}

/// A /30 + /64 pair held for one fixture. Leases are files created with
/// O_EXCL under `/run/nodeward-tests`, so concurrent test processes (a test
/// run beside a benchmark) never pick the same subnet; a lease whose owner
/// died is taken over, and one whose addresses are on this host already
/// (a leaked veth) is skipped.
#[derive(Debug)]
struct SubnetLease {
    index: u32,
    file: PathBuf,
}

impl SubnetLease {
    const COUNT: u32 = 16384;
    const DIR: &str = "/run/nodeward-tests";

    fn acquire() -> Self {
        std::fs::create_dir_all(Self::DIR).unwrap_or_else(|e| panic!("creating {}: {e}", Self::DIR));
        let on_host: Vec<IpAddr> = nix::ifaddrs::getifaddrs()
            .map(|addrs| {
                addrs
                    .filter_map(|a| a.address)
                    .filter_map(|a| a.as_sockaddr_in().map(|s| IpAddr::V4(s.ip())))
                    .collect()
            })
            .unwrap_or_default();
        let start = (std::process::id().wrapping_mul(7919)) % Self::COUNT;
        for k in 0..Self::COUNT {
            let index = (start + k) % Self::COUNT;
            let (host_ip, pod_ip, _, _) = subnet(index);
            if on_host.contains(&IpAddr::V4(host_ip)) || on_host.contains(&IpAddr::V4(pod_ip)) {
                continue;
            }
            let file = Path::new(Self::DIR).join(format!("subnet-{index}"));
            if Self::try_create(&file) {
                return Self { index, file };
            }
        }
        panic!("no free test subnet in 10.200.0.0/16 (leases in {})", Self::DIR);
    }

    fn try_create(file: &Path) -> bool {
        use std::io::Write as _;
        for _ in 0..2 {
            match std::fs::OpenOptions::new().write(true).create_new(true).open(file) {
                Ok(mut f) => {
                    let _ = write!(f, "{}", std::process::id());
                    return true;
                }
                Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
                    let owner = std::fs::read_to_string(file).unwrap_or_default();
                    let alive = owner
                        .trim()
                        .parse::<u32>()
                        .is_ok_and(|pid| Path::new(&format!("/proc/{pid}")).exists());
                    if alive || std::fs::remove_file(file).is_err() {
                        return false;
                    }
                }
                Err(e) => panic!("leasing {}: {e}", file.display()),
            }
        }
        false
    }

    fn addresses(&self) -> (Ipv4Addr, Ipv4Addr, Ipv6Addr, Ipv6Addr) {
        subnet(self.index)
    }
}

/// Host and pod addresses of subnet `i`: `10.200.<i/64>.<(i%64)*4 + 1|2>`
/// and `fd77:6e77:0:<i>::1|2`.
fn subnet(i: u32) -> (Ipv4Addr, Ipv4Addr, Ipv6Addr, Ipv6Addr) {
    let (c, d) = ((i / 64) as u8, ((i % 64) * 4) as u8);
    let v6 = |last: u16| Ipv6Addr::new(0xfd77, 0x6e77, 0, i as u16, 0, 0, 0, last);
    (
        Ipv4Addr::new(10, 200, c, d + 1),
        Ipv4Addr::new(10, 200, c, d + 2),
        v6(1),
        v6(2),
    )
}

impl Drop for SubnetLease {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.file);
    }
}

/// Names of the network namespaces this process's fixtures made that still
/// exist (a leak check for the end of a test).
pub fn leftover_namespaces() -> Vec<String> {
    let prefix = format!("nwtest-{}x", std::process::id() % 100_000);
    std::fs::read_dir("/var/run/netns")
        .map(|dir| {
            dir.filter_map(Result::ok)
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// A pin directory for one test, `/sys/fs/bpf/nodeward-test-<unique>`;
/// drop removes it and everything pinned in it.
#[derive(Debug)]
pub struct PinDir {
    pub path: PathBuf,
}

impl PinDir {
    pub fn new() -> Self {
        let (_, tag) = unique();
        let path = Path::new(nodeward::ebpf::BPFFS).join(format!("nodeward-test-{tag}"));
        nodeward::ebpf::ensure_bpffs(&path).unwrap_or_else(|e| panic!("bpffs for {}: {e}", path.display()));
        let _ = nodeward::ebpf::remove_pinned(&path);
        Self { path }
    }

    /// Files pinned under `links/`.
    pub fn links(&self) -> Vec<String> {
        std::fs::read_dir(self.path.join("links"))
            .map(|dir| {
                dir.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The egress programs' link directories (`egress/links/<workload>/`),
    /// each with the links pinned in it, sorted.
    pub fn egress_links(&self) -> Vec<(String, Vec<String>)> {
        let names = |dir: &Path| -> Vec<String> {
            let mut out: Vec<String> = std::fs::read_dir(dir)
                .map(|d| d.flatten().filter_map(|e| e.file_name().into_string().ok()).collect())
                .unwrap_or_default();
            out.sort();
            out
        };
        let links = self.path.join(nodeward::ebpf::egress::EGRESS_DIR).join("links");
        names(&links)
            .into_iter()
            .map(|w| {
                let inside = names(&links.join(&w));
                (w, inside)
            })
            .collect()
    }
}

impl Default for PinDir {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        if let Err(e) = nodeward::ebpf::remove_pinned(&self.path) {
            eprintln!("removing {}: {e}", self.path.display());
        }
    }
}

/// A tiny HTTP app listening inside a namespace. Every response is JSON
/// `{"app": NAME, "peer": "<client addr>", "local": "<addr it was reached on>"}`.
/// [`NetnsApp::hits`] counts accepted connections, so a test can prove
/// that nothing reached the app.
#[derive(Debug)]
pub struct NetnsApp {
    pub addr: SocketAddr,
    hits: Arc<AtomicU64>,
    task: tokio::task::JoinHandle<()>,
}

impl NetnsApp {
    /// Serves on `addr` inside `netns` (e.g. the pod IP and a port, or
    /// `0.0.0.0:8080` to be reachable on loopback too). Needs a runtime.
    pub fn start(netns: &Path, addr: SocketAddr, name: &str) -> Self {
        let listener = listener_in(netns, addr).unwrap_or_else(|e| panic!("app {name} on {addr}: {e}"));
        let listener = TcpListener::from_std(listener).expect("tokio listener");
        let hits = Arc::new(AtomicU64::new(0));
        let task = tokio::spawn({
            let hits = hits.clone();
            let name = name.to_string();
            async move {
                while let Ok((stream, peer)) = listener.accept().await {
                    hits.fetch_add(1, Ordering::SeqCst);
                    let local = stream.local_addr().map(|a| a.to_string()).unwrap_or_default();
                    let body = serde_json::json!({"app": name, "peer": canonical(peer).to_string(), "local": local});
                    tokio::spawn(respond(stream, body.to_string()));
                }
            }
        });
        Self { addr, hits, task }
    }

    /// Connections the app accepted so far.
    pub fn hits(&self) -> u64 {
        self.hits.load(Ordering::SeqCst)
    }
}

impl Drop for NetnsApp {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Reads one request head (bounded), answers 200 with `body`, closes.
pub async fn respond(mut stream: TcpStream, body: String) {
    let mut head = Vec::new();
    let mut buf = [0u8; 1024];
    let read = async {
        while !head.windows(4).any(|w| w == b"\r\n\r\n") && head.len() < 8192 {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => head.extend_from_slice(buf.get(..n).unwrap_or_default()),
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(5), read).await;
    let resp = format!(
        "HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(resp.as_bytes()).await;
    let _ = stream.shutdown().await;
}

/// IPv4-mapped IPv6 addresses (from a dual-stack socket) as plain IPv4.
pub fn canonical(addr: SocketAddr) -> SocketAddr {
    SocketAddr::new(addr.ip().to_canonical(), addr.port())
}

/// Connects from the host within `timeout`.
pub async fn connect(addr: SocketAddr, timeout: Duration) -> std::io::Result<TcpStream> {
    tokio::time::timeout(timeout, TcpStream::connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {addr}")))?
}

/// Connects from inside `netns` (optionally from `bind`) within `timeout`.
pub async fn connect_from(
    netns: &Path,
    bind: Option<SocketAddr>,
    addr: SocketAddr,
    timeout: Duration,
) -> std::io::Result<TcpStream> {
    let socket = socket_in(netns, addr).map_err(std::io::Error::other)?;
    if let Some(bind) = bind {
        socket.bind(bind)?;
    }
    tokio::time::timeout(timeout, socket.connect(addr))
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, format!("connecting to {addr}")))?
}

/// Sends `GET /` on `stream` and returns the response body (bounded wait).
pub async fn get(mut stream: TcpStream) -> std::io::Result<String> {
    let exchange = async {
        stream
            .write_all(b"GET / HTTP/1.1\r\nhost: test\r\nconnection: close\r\n\r\n")
            .await?;
        let mut resp = Vec::new();
        stream.read_to_end(&mut resp).await?;
        let resp = String::from_utf8_lossy(&resp).into_owned();
        Ok(resp.split_once("\r\n\r\n").map(|(_, b)| b.to_string()).unwrap_or(resp))
    };
    tokio::time::timeout(Duration::from_secs(5), exchange)
        .await
        .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "HTTP exchange"))?
}

/// The JSON an [`NetnsApp`] answered, fetched over a new connection from
/// the host to `addr`.
pub async fn app_reply(addr: SocketAddr) -> serde_json::Value {
    let stream = connect(addr, Duration::from_secs(2))
        .await
        .unwrap_or_else(|e| panic!("connect {addr}: {e}"));
    let body = get(stream).await.unwrap_or_else(|e| panic!("GET {addr}: {e}"));
    serde_json::from_str(&body).unwrap_or_else(|e| panic!("app reply from {addr} is not JSON ({e}): {body}"))
}
