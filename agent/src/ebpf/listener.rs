//! Checks that a socket handed to `Steering::protect` can take the
//! connections of the addresses it is meant to serve. The kernel would
//! accept a wrong socket in the SOCKMAP and then fail every assignment at
//! connection time (counted as fail-closed drops); better to say so at once.

use std::net::IpAddr;
use std::os::fd::{AsRawFd as _, BorrowedFd};

use nix::sys::socket::{AddressFamily, SockaddrLike as _, SockaddrStorage, getsockname, getsockopt, sockopt};

use super::EbpfError;

pub(super) fn check(listener: BorrowedFd<'_>, addrs: &[(IpAddr, u16)]) -> Result<(), EbpfError> {
    let listening = getsockopt(&listener, sockopt::AcceptConn).map_err(|source| EbpfError::ListenerCheck { source })?;
    if !listening {
        return Err(EbpfError::NotListening);
    }
    let local: SockaddrStorage =
        getsockname(listener.as_raw_fd()).map_err(|source| EbpfError::ListenerCheck { source })?;
    let v4_only = match local.family() {
        Some(AddressFamily::Inet) => true,
        Some(AddressFamily::Inet6) => {
            let v6_only =
                getsockopt(&listener, sockopt::Ipv6V6Only).map_err(|source| EbpfError::ListenerCheck { source })?;
            if v6_only && let Some((ip, _)) = addrs.iter().find(|(ip, _)| ip.to_canonical().is_ipv4()) {
                return Err(EbpfError::ListenerFamily {
                    listener: "IPv6-only (bound to a specific IPv6 address?)",
                    addr: *ip,
                });
            }
            false
        }
        _ => return Err(EbpfError::NotListening),
    };
    if v4_only && let Some((ip, _)) = addrs.iter().find(|(ip, _)| ip.to_canonical().is_ipv6()) {
        return Err(EbpfError::ListenerFamily {
            listener: "IPv4",
            addr: *ip,
        });
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::net::{TcpListener, UdpSocket};
    use std::os::fd::AsFd as _;

    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().expect("ip")
    }

    #[test]
    fn a_dual_stack_listener_takes_both_families() {
        let l = TcpListener::bind("[::]:0").expect("bind");
        check(l.as_fd(), &[(ip("10.0.0.2"), 8080), (ip("fd77::2"), 8080)]).expect("dual-stack");
    }

    #[test]
    fn family_mismatches_are_refused() {
        let v4 = TcpListener::bind("127.0.0.1:0").expect("bind");
        check(v4.as_fd(), &[(ip("10.0.0.2"), 8080), (ip("::ffff:10.0.0.3"), 8080)]).expect("v4 and v4-mapped");
        let err = check(v4.as_fd(), &[(ip("fd77::2"), 8080)]).expect_err("v6 on a v4 listener");
        assert!(matches!(err, EbpfError::ListenerFamily { .. }), "{err:?}");
        let v6_only = TcpListener::bind("[::1]:0").expect("bind");
        let err = check(v6_only.as_fd(), &[(ip("10.0.0.2"), 8080)]).expect_err("v4 on a v6-only listener");
        assert!(err.to_string().contains("IPv6-only"), "{err}");
    }

    #[test]
    fn a_socket_that_does_not_listen_is_refused() {
        let udp = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let err = check(udp.as_fd(), &[]).expect_err("udp");
        assert!(matches!(err, EbpfError::NotListening), "{err:?}");
    }
}
