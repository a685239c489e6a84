//! Work inside a pod's network namespace without moving the agent there.
//!
//! As ztunnel's in-pod mode does, each operation runs on a short-lived
//! dedicated thread that enters the namespace with `setns(CLONE_NEWNET)`,
//! does its work (create a socket, list addresses) and exits. A socket keeps
//! the namespace it was created in, so the listener or upstream socket it
//! returns can then be driven by the agent's shared tokio runtime like any
//! other. The runtime's own threads never change namespace.
//!
//! This module owns namespace entry and socket creation only; which sockets
//! to create, and the eBPF steering into them, live in `app` and `ebpf`.
//! Entering a namespace needs CAP_SYS_ADMIN (and, in Kubernetes, hostPID or
//! a mounted /var/run/netns to reach the pods' namespace files).

use std::fs::File;
use std::io;
use std::net::{IpAddr, SocketAddr, TcpListener};
use std::os::unix::fs::MetadataExt as _;
use std::path::{Path, PathBuf};

use nix::errno::Errno;
use nix::sched::{CloneFlags, setns};

/// Why an operation inside a network namespace failed. Every variant names
/// the namespace.
#[derive(Debug, thiserror::Error)]
pub enum NetnsError {
    #[error("network namespace {path}: not found (pod gone? in Kubernetes the agent needs hostPID or /var/run/netns)")]
    Missing { path: PathBuf, source: io::Error },
    #[error("network namespace {path}: cannot open: {source}")]
    Open { path: PathBuf, source: io::Error },
    #[error(
        "network namespace {path}: entering it needs CAP_SYS_ADMIN (run as root or grant the capability): {source}"
    )]
    NotPermitted { path: PathBuf, source: Errno },
    #[error("{path} is not a network namespace: {source}")]
    NotANetns { path: PathBuf, source: Errno },
    #[error("network namespace {path}: setns: {source}")]
    Enter { path: PathBuf, source: Errno },
    #[error("network namespace {path}: cannot start a thread to enter it: {source}")]
    Thread { path: PathBuf, source: io::Error },
    #[error("network namespace {path}: binding a TCP listener on {addr}: {source}")]
    Listen {
        path: PathBuf,
        addr: SocketAddr,
        source: io::Error,
    },
    #[error("network namespace {path}: creating a TCP socket: {source}")]
    Socket { path: PathBuf, source: io::Error },
    #[error("network namespace {path}: listing addresses: {source}")]
    Addresses { path: PathBuf, source: Errno },
}

/// An opened network namespace. Holding it keeps the namespace alive (and
/// its identity fixed) even if its path is unmounted meanwhile.
#[derive(Debug)]
pub struct Netns {
    file: File,
    path: PathBuf,
}

impl Netns {
    /// Opens `path` (e.g. `/var/run/netns/NAME` or `/proc/PID/ns/net`).
    pub fn open(path: &Path) -> Result<Self, NetnsError> {
        let file = File::open(path).map_err(|source| {
            let path = path.to_path_buf();
            if source.kind() == io::ErrorKind::NotFound {
                NetnsError::Missing { path, source }
            } else {
                NetnsError::Open { path, source }
            }
        })?;
        Ok(Self {
            file,
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    pub fn file(&self) -> &File {
        &self.file
    }

    /// The namespace's inode number: its identity (what `ip netns identify`
    /// and the kernel's `netns_ino` show).
    pub fn inode(&self) -> Result<u64, NetnsError> {
        self.file
            .metadata()
            .map(|m| m.ino())
            .map_err(|source| NetnsError::Open {
                path: self.path.clone(),
                source,
            })
    }

    /// Runs `f` on a new thread inside this namespace and returns its
    /// result. A panic in `f` is resumed on the caller's thread.
    pub fn run<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
        std::thread::scope(|scope| {
            let thread = std::thread::Builder::new()
                .name("nodeward-netns".into())
                .spawn_scoped(scope, || {
                    setns(&self.file, CloneFlags::CLONE_NEWNET).map_err(|source| self.enter_error(source))?;
                    Ok(f())
                })
                .map_err(|source| NetnsError::Thread {
                    path: self.path.clone(),
                    source,
                })?;
            thread.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic))
        })
    }

    fn enter_error(&self, source: Errno) -> NetnsError {
        let path = self.path.clone();
        match source {
            Errno::EPERM => NetnsError::NotPermitted { path, source },
            Errno::EINVAL => NetnsError::NotANetns { path, source },
            _ => NetnsError::Enter { path, source },
        }
    }

    /// A non-blocking TCP listener bound to `addr` inside this namespace,
    /// ready for `tokio::net::TcpListener::from_std`.
    ///
    /// For eBPF steering bind an address the application does not use, e.g.
    /// `127.0.0.1:0`: steered connections reach it whatever it is bound to,
    /// and keep their original destination as local address. Bind `[::]:0`
    /// (dual-stack) when the workload has IPv6 addresses too: a socket bound
    /// to a specific IPv6 address is IPv6-only and cannot take IPv4 traffic.
    pub fn listener(&self, addr: SocketAddr) -> Result<TcpListener, NetnsError> {
        let listen_error = |source| NetnsError::Listen {
            path: self.path.clone(),
            addr,
            source,
        };
        let listener = self.run(|| TcpListener::bind(addr))?.map_err(listen_error)?;
        // std listens with a backlog of 128. Every steered connection of the
        // pod waits in this one accept queue, and an overflow drops the SYN
        // (a stall of a second or more for the client): ask for as much as
        // the kernel allows (net.core.somaxconn). Listening again on a
        // listening socket only changes its backlog.
        nix::sys::socket::listen(&listener, nix::sys::socket::Backlog::MAXALLOWABLE)
            .map_err(|e| listen_error(e.into()))?;
        listener.set_nonblocking(true).map_err(listen_error)?;
        Ok(listener)
    }

    /// A not yet connected TCP socket created inside this namespace, of the
    /// family of `peer` (the address it will connect to), e.g. for the
    /// agent's upstream connection to `127.0.0.1:<port>` of the pod.
    pub fn socket(&self, peer: SocketAddr) -> Result<tokio::net::TcpSocket, NetnsError> {
        self.run(|| match peer {
            SocketAddr::V4(_) => tokio::net::TcpSocket::new_v4(),
            SocketAddr::V6(_) => tokio::net::TcpSocket::new_v6(),
        })?
        .map_err(|source| NetnsError::Socket {
            path: self.path.clone(),
            source,
        })
    }

    /// Every IP address inside this namespace except loopback ones,
    /// including IPv6 link-local addresses (they too reach the pod from its
    /// link, so a workload protected on "all its addresses" needs them).
    pub fn addresses(&self) -> Result<Vec<IpAddr>, NetnsError> {
        // Collected inside the thread: the iterator holds libc's list.
        let mut out: Vec<IpAddr> = self
            .run(|| {
                nix::ifaddrs::getifaddrs().map(|addrs| {
                    addrs
                        .filter_map(|ifa| ifa.address)
                        .filter_map(|a| {
                            a.as_sockaddr_in()
                                .map(|s| IpAddr::V4(s.ip()))
                                .or_else(|| a.as_sockaddr_in6().map(|s| IpAddr::V6(s.ip())))
                        })
                        .filter(|ip| !ip.is_loopback())
                        .collect()
                })
            })?
            .map_err(|source| NetnsError::Addresses {
                path: self.path.clone(),
                source,
            })?;
        out.sort();
        out.dedup();
        Ok(out)
    }
}

/// Runs `f` on a new thread inside the network namespace at `netns`.
pub fn run_in<T: Send>(netns: &Path, f: impl FnOnce() -> T + Send) -> Result<T, NetnsError> {
    Netns::open(netns)?.run(f)
}

/// A non-blocking TCP listener bound to `addr` inside `netns`; see
/// [`Netns::listener`].
pub fn listener_in(netns: &Path, addr: SocketAddr) -> Result<TcpListener, NetnsError> {
    Netns::open(netns)?.listener(addr)
}

/// A TCP socket created inside `netns`, for connecting to `peer`; see
/// [`Netns::socket`].
pub fn socket_in(netns: &Path, peer: SocketAddr) -> Result<tokio::net::TcpSocket, NetnsError> {
    Netns::open(netns)?.socket(peer)
}

/// The non-loopback IP addresses inside `netns`; see [`Netns::addresses`].
pub fn addresses_in(netns: &Path) -> Result<Vec<IpAddr>, NetnsError> {
    Netns::open(netns)?.addresses()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_missing_namespace_is_named() {
        let err = listener_in(Path::new("/nonexistent/netns"), "127.0.0.1:0".parse().expect("addr"))
            .expect_err("no such netns");
        assert!(matches!(err, NetnsError::Missing { .. }), "{err:?}");
        assert!(err.to_string().contains("/nonexistent/netns"), "{err}");
    }

    #[test]
    fn listeners_queue_bursts_past_std_default_backlog() {
        let listener = match listener_in(Path::new("/proc/self/ns/net"), "127.0.0.1:0".parse().expect("addr")) {
            Ok(l) => l,
            Err(e @ NetnsError::NotPermitted { .. }) => {
                eprintln!("SKIPPED listeners_queue_bursts_past_std_default_backlog: needs CAP_SYS_ADMIN: {e}");
                return;
            }
            Err(e) => panic!("{e}"),
        };
        let addr = listener.local_addr().expect("addr");
        // Nobody accepts: every connection waits in the accept queue. With
        // std's backlog of 128 the 130th SYN is dropped and connect times out.
        let mut held = Vec::new();
        for i in 0..600 {
            match std::net::TcpStream::connect_timeout(&addr, std::time::Duration::from_millis(500)) {
                Ok(s) => held.push(s),
                Err(e) => panic!("connection {i} was not queued: {e}"),
            }
        }
    }

    #[test]
    fn a_file_that_is_not_a_namespace_is_refused() {
        let file = tempfile::NamedTempFile::new().expect("temp file");
        let err = run_in(file.path(), || ()).expect_err("not a netns");
        // Without CAP_SYS_ADMIN the kernel answers EPERM before looking at
        // the file; both are precise.
        assert!(
            matches!(err, NetnsError::NotANetns { .. } | NetnsError::NotPermitted { .. }),
            "{err:?}"
        );
    }
}
