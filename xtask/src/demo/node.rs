//! The eBPF demo's simulated node: a bridge on the host (what a CNI's `cni0`
//! is) and one network namespace per "pod", each joined to the bridge by a
//! veth whose pod end is `eth0`, with an address in one /24. The host
//! reaches every pod through the bridge and pods reach each other over it,
//! as on a real node, without touching the host's forwarding or firewall.
//!
//! Everything is named after this process (`nwdemo-<pid>-<pod>` namespaces,
//! `nwd<pid>v<i>` veths, `nwd<pid>br`, `/sys/fs/bpf/nodeward-demo-<pid>`), so
//! two demos never collide and leftovers of a killed one are recognisable:
//! [`clean_stale`] removes those whose process is gone. [`Node`] and
//! [`Pins`] remove what they made when dropped, on errors and panics too.

use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context as _, bail};

const NETNS_DIR: &str = "/var/run/netns";
const BPFFS: &str = nodeward::ebpf::BPFFS;

pub struct Pod {
    pub name: &'static str,
    /// The namespace's name (`ip netns`) and path (what the agent opens).
    pub netns: String,
    pub path: PathBuf,
    pub ip: Ipv4Addr,
    /// The veth's host end, on the bridge.
    pub host_if: String,
}

pub struct Node {
    pub bridge: String,
    /// The bridge's address: where the host's requests come from.
    pub host_ip: Ipv4Addr,
    pub pods: Vec<Pod>,
}

impl Node {
    /// The bridge and one namespace per name, pod `i` at `<subnet>.<i + 2>`.
    pub fn create(pod_names: &[&'static str]) -> anyhow::Result<Self> {
        let pid = std::process::id();
        // One /24 per demo process; 10.99/16 is not a range Docker, kind or
        // the project's tests (10.200/16) use.
        let subnet = [10, 99, (pid % 250 + 1) as u8];
        let cidr = format!("{}.{}.{}.0/24", subnet[0], subnet[1], subnet[2]);
        let routes = ip_output(&["-4", "route", "show", "root", &cidr])?;
        if !routes.trim().is_empty() {
            bail!("the demo's subnet {cidr} is already routed on this host:\n{routes}");
        }
        let mut node = Self {
            bridge: format!("nwd{pid}br"),
            host_ip: Ipv4Addr::new(subnet[0], subnet[1], subnet[2], 1),
            pods: Vec::new(),
        };
        // The guard exists before anything is made, so a failure half-way
        // still removes what was made (Drop ignores what is missing).
        let bridge = &node.bridge;
        ip_batch(
            &[],
            &format!(
                "link add {bridge} type bridge\naddr add {}/24 dev {bridge}\nlink set {bridge} up\n",
                node.host_ip
            ),
        )?;
        for (i, name) in pod_names.iter().enumerate() {
            let netns = format!("nwdemo-{pid}-{name}");
            node.pods.push(Pod {
                name,
                path: Path::new(NETNS_DIR).join(&netns),
                netns,
                ip: Ipv4Addr::new(subnet[0], subnet[1], subnet[2], i as u8 + 2),
                host_if: format!("nwd{pid}v{i}"),
            });
            let Some(Pod { netns, host_if, ip, .. }) = node.pods.last() else {
                unreachable!("just pushed")
            };
            ip_batch(
                &[],
                &format!(
                    "netns add {netns}\n\
                     link add {host_if} type veth peer name eth0 netns {netns}\n\
                     link set {host_if} master {} up\n",
                    node.bridge
                ),
            )?;
            ip_batch(
                &["-n", netns],
                &format!("link set lo up\naddr add {ip}/24 dev eth0\nlink set eth0 up\n"),
            )?;
        }
        Ok(node)
    }

    pub fn pod(&self, name: &str) -> &Pod {
        self.pods
            .iter()
            .find(|p| p.name == name)
            .unwrap_or_else(|| panic!("the demo has no pod {name}"))
    }

    /// Removes the pods and the bridge; fails naming whatever is left.
    pub fn remove(mut self) -> anyhow::Result<String> {
        let pods = std::mem::take(&mut self.pods);
        let bridge = std::mem::take(&mut self.bridge);
        remove(&pods, &bridge);
        let names: Vec<&str> = pods.iter().map(|p| p.netns.as_str()).collect();
        let mut left = Vec::new();
        let netns = ip_output(&["netns", "list"])?;
        left.extend(
            names
                .iter()
                .filter(|n| netns.lines().any(|l| l.split_whitespace().next() == Some(n)))
                .map(|n| format!("namespace {n}")),
        );
        let links = link_names()?;
        for dev in pods.iter().map(|p| p.host_if.as_str()).chain([bridge.as_str()]) {
            if links.iter().any(|l| l == dev) {
                left.push(format!("interface {dev}"));
            }
        }
        if !left.is_empty() {
            bail!("could not remove {}", left.join(", "));
        }
        Ok(format!(
            "namespaces {}, veths {}, bridge {bridge}",
            names.join(" "),
            pods.iter().map(|p| p.host_if.as_str()).collect::<Vec<_>>().join(" ")
        ))
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        remove(&self.pods, &self.bridge);
    }
}

/// Best effort and quiet: a half-made node lacks some of these. The host
/// end goes first: deleting a veth deletes its peer at once, whereas a
/// deleted namespace is destroyed (with its veths) whenever its last
/// socket closes.
fn remove(pods: &[Pod], bridge: &str) {
    for pod in pods {
        quiet(&["link", "del", &pod.host_if]);
        quiet(&["netns", "del", &pod.netns]);
    }
    if !bridge.is_empty() {
        quiet(&["link", "del", bridge]);
    }
}

/// The pin directory given to the agent. The agent leaves its pins in place
/// when it stops (so protected ports stay closed while it is down); the demo
/// made them, so the demo removes them, after the agent has stopped.
pub struct Pins {
    pub path: PathBuf,
}

impl Pins {
    pub fn new() -> Self {
        Self {
            path: Path::new(BPFFS).join(format!("nodeward-demo-{}", std::process::id())),
        }
    }

    /// The pinned links, by workload: what keeps the program attached.
    pub fn links(&self) -> Vec<String> {
        let mut links: Vec<String> = std::fs::read_dir(self.path.join("links"))
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default();
        links.sort();
        links
    }

    pub fn remove(&self) -> anyhow::Result<()> {
        nodeward::ebpf::remove_pinned(&self.path).with_context(|| format!("removing {}", self.path.display()))?;
        anyhow::ensure!(!self.path.exists(), "{} is still there", self.path.display());
        Ok(())
    }
}

impl Drop for Pins {
    fn drop(&mut self) {
        if let Err(e) = nodeward::ebpf::remove_pinned(&self.path) {
            eprintln!("removing {}: {e}", self.path.display());
        }
    }
}

/// Removes what earlier demos left behind when they were killed (SIGKILL,
/// power loss): namespaces, interfaces and pins named after a process that
/// no longer exists. Returns what it removed.
pub fn clean_stale() -> Vec<String> {
    let dead = |pid: &str| {
        !pid.is_empty() && pid.bytes().all(|b| b.is_ascii_digit()) && !Path::new("/proc").join(pid).exists()
    };
    let mut removed = Vec::new();
    let names = |dir: &str| -> Vec<String> {
        std::fs::read_dir(dir)
            .map(|d| {
                d.filter_map(Result::ok)
                    .filter_map(|e| e.file_name().into_string().ok())
                    .collect()
            })
            .unwrap_or_default()
    };
    for name in names(BPFFS) {
        if name.strip_prefix("nodeward-demo-").is_some_and(dead)
            && nodeward::ebpf::remove_pinned(&Path::new(BPFFS).join(&name)).is_ok()
        {
            removed.push(format!("{BPFFS}/{name}"));
        }
    }
    // Interfaces first: deleting a veth deletes its peer at once, whereas a
    // deleted namespace takes its veths along only when it is destroyed.
    for name in link_names().unwrap_or_default() {
        // nwd<pid>br and nwd<pid>v<i>: the digits up to the first letter are the pid.
        let Some(rest) = name.strip_prefix("nwd") else { continue };
        let pid: String = rest.chars().take_while(char::is_ascii_digit).collect();
        let kind = &rest[pid.len()..];
        if (kind == "br" || kind.starts_with('v')) && dead(&pid) {
            quiet(&["link", "del", &name]);
            removed.push(format!("interface {name}"));
        }
    }
    for name in names(NETNS_DIR) {
        let pid = name
            .strip_prefix("nwdemo-")
            .and_then(|r| r.split_once('-'))
            .map(|(pid, _)| pid);
        if pid.is_some_and(dead) {
            quiet(&["netns", "del", &name]);
            removed.push(format!("namespace {name}"));
        }
    }
    removed
}

fn link_names() -> anyhow::Result<Vec<String>> {
    // `ip -o link` prints "<index>: <name>[@<peer>]: <flags> ...".
    Ok(ip_output(&["-o", "link", "show"])?
        .lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|n| n.split('@').next().unwrap_or(n).to_owned())
        .collect())
}

/// `ip [OPTIONS] -batch -`: one command a line; fails with ip's message.
fn ip_batch(options: &[&str], batch: &str) -> anyhow::Result<()> {
    use std::io::Write as _;
    let mut child = Command::new("ip")
        .args(options)
        .args(["-batch", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .context("running ip (is iproute2 installed?)")?;
    child.stdin.take().context("ip's stdin")?.write_all(batch.as_bytes())?;
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "ip -batch failed: {}\ncommands:\n{batch}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn ip_output(args: &[&str]) -> anyhow::Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (is iproute2 installed?)")?;
    if !out.status.success() {
        bail!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn quiet(args: &[&str]) {
    let _ = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status();
}
