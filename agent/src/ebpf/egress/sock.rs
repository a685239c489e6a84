//! What the kernel says about the sockets handed to
//! `EgressSteering::configure`: that they listen on the pod's loopback
//! (and nowhere else), and which network namespace they are in.

use std::io;
use std::net::{IpAddr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd as _, BorrowedFd};

use nix::sys::socket::{SockaddrStorage, getsockname, getsockopt, sockopt};

use super::{EbpfError, EgressListeners};

/// The netns cookie of the listeners (the key of `NW_EG_PODS`), once both
/// are checked: listening TCP sockets, the IPv4 one on 127.0.0.0/8, the
/// IPv6 one on ::1, both in the same namespace.
///
/// Loopback only, because the listener sends what it receives out with the
/// pod's identity: bound to a pod address, any other pod could reach it and
/// borrow this one's tokens.
pub(super) fn check(listeners: &EgressListeners<'_>) -> Result<u64, EbpfError> {
    let v4 = local_addr(listeners.v4)?;
    if !matches!(v4, SocketAddr::V4(a) if a.ip().is_loopback()) {
        return Err(EbpfError::EgressListenerAddr {
            addr: v4,
            want: "127.0.0.0/8",
        });
    }
    let cookie = netns_cookie(listeners.v4)?;
    if let Some(v6) = listeners.v6 {
        let addr = local_addr(v6)?;
        if addr.ip() != IpAddr::V6(Ipv6Addr::LOCALHOST) {
            return Err(EbpfError::EgressListenerAddr { addr, want: "::1" });
        }
        if netns_cookie(v6)? != cookie {
            return Err(EbpfError::EgressListenersApart);
        }
    }
    Ok(cookie)
}

/// The local address of a listening TCP socket.
fn local_addr(fd: BorrowedFd<'_>) -> Result<SocketAddr, EbpfError> {
    let listening = getsockopt(&fd, sockopt::AcceptConn).map_err(|source| EbpfError::ListenerCheck { source })?;
    if !listening {
        return Err(EbpfError::NotListening);
    }
    let local: SockaddrStorage = getsockname(fd.as_raw_fd()).map_err(|source| EbpfError::ListenerCheck { source })?;
    if let Some(v4) = local.as_sockaddr_in() {
        return Ok(SocketAddr::V4(SocketAddrV4::from(*v4)));
    }
    if let Some(v6) = local.as_sockaddr_in6() {
        return Ok(SocketAddr::V6(SocketAddrV6::from(*v6)));
    }
    Err(EbpfError::NotListening)
}

/// `SO_NETNS_COOKIE` (Linux 5.14): the same number `bpf_get_netns_cookie`
/// gives the programs for sockets of that namespace.
pub(super) fn netns_cookie(fd: BorrowedFd<'_>) -> Result<u64, EbpfError> {
    let mut cookie: u64 = 0;
    let mut len = size_of::<u64>() as nix::libc::socklen_t;
    #[expect(unsafe_code, reason = "nix has no SO_NETNS_COOKIE")]
    // SAFETY: `fd` is a valid descriptor for the call; `cookie` and `len`
    // are live, writable and sized as passed, and the kernel writes at most
    // `len` bytes.
    let ret = unsafe {
        nix::libc::getsockopt(
            fd.as_raw_fd(),
            nix::libc::SOL_SOCKET,
            nix::libc::SO_NETNS_COOKIE,
            (&raw mut cookie).cast(),
            &raw mut len,
        )
    };
    if ret != 0 {
        return Err(EbpfError::NetnsCookie {
            source: io::Error::last_os_error(),
        });
    }
    Ok(cookie)
}

#[cfg(test)]
mod tests {
    use std::net::TcpListener;
    use std::os::fd::AsFd as _;

    use super::*;

    #[test]
    fn loopback_listeners_in_one_namespace_pass() {
        let v4 = TcpListener::bind("127.0.0.1:0").expect("bind");
        let v6 = TcpListener::bind("[::1]:0").expect("bind ::1");
        let cookie = check(&EgressListeners::new(&v4).with_v6(&v6)).expect("loopback listeners");
        assert_eq!(cookie, netns_cookie(v4.as_fd()).expect("cookie"));
        assert_ne!(cookie, 0);
    }

    #[test]
    fn listeners_reachable_from_outside_the_pod_are_refused() {
        let any = TcpListener::bind("0.0.0.0:0").expect("bind");
        let err = check(&EgressListeners::new(&any)).expect_err("0.0.0.0 is reachable from other pods");
        assert!(matches!(err, EbpfError::EgressListenerAddr { .. }), "{err:?}");
        let v4 = TcpListener::bind("127.0.0.1:0").expect("bind");
        let dual = TcpListener::bind("[::]:0").expect("bind");
        let err = check(&EgressListeners::new(&v4).with_v6(&dual)).expect_err("[::] is reachable too");
        assert!(err.to_string().contains("::1"), "{err}");
        // The families must match their slot.
        let err = check(&EgressListeners::new(&dual)).expect_err("IPv6 socket in the IPv4 slot");
        assert!(matches!(err, EbpfError::EgressListenerAddr { .. }), "{err:?}");
    }

    #[test]
    fn a_socket_that_does_not_listen_is_refused() {
        let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
        let err = check(&EgressListeners::new(&udp)).expect_err("udp");
        assert!(matches!(err, EbpfError::NotListening), "{err:?}");
    }
}
