//! A pod's application for the egress tests: started inside the pod's
//! network namespace (`nsenter --net=…`), moved into the pod's cgroup by
//! the test, then told where to connect. A process of its own, because the
//! connect programs only see sockets of processes in the pod's cgroup and
//! the test process must stay outside it (it plays the agent).
//!
//! Prints `ready`, then reads commands, one a line, and answers each with
//! one line:
//! - `get ADDR`: connects (1 s timeout), sends `GET /`, reads the reply to
//!   its end; answers `ok LOCAL BODY` (the body on one line), or
//!   `err ERRNO KIND` when connect or the exchange failed.
//!
//! End of stdin (the test is done or died) ends it.

use std::io::{BufRead, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

fn main() -> std::io::Result<()> {
    let mut out = std::io::stdout().lock();
    writeln!(out, "ready")?;
    out.flush()?;
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let answer = match line.split_once(' ') {
            Some(("get", addr)) => match addr.trim().parse::<SocketAddr>() {
                Ok(addr) => get(addr),
                Err(e) => format!("err 0 bad-address:{e}"),
            },
            _ => format!("err 0 unknown-command:{line}"),
        };
        writeln!(out, "{answer}")?;
        out.flush()?;
    }
    Ok(())
}

fn get(addr: SocketAddr) -> String {
    let failed = |e: std::io::Error| format!("err {} {:?}", e.raw_os_error().unwrap_or(0), e.kind());
    let mut stream = match TcpStream::connect_timeout(&addr, Duration::from_secs(1)) {
        Ok(s) => s,
        Err(e) => return failed(e),
    };
    let local = stream
        .local_addr()
        .map(|a| a.to_string())
        .unwrap_or_else(|_| "?".to_string());
    let exchange = |stream: &mut TcpStream| -> std::io::Result<String> {
        stream.set_read_timeout(Some(Duration::from_secs(5)))?;
        stream.write_all(b"GET / HTTP/1.1\r\nhost: egress-test\r\nconnection: close\r\n\r\n")?;
        let mut reply = Vec::new();
        stream.read_to_end(&mut reply)?;
        let reply = String::from_utf8_lossy(&reply).into_owned();
        let body = reply.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or(&reply);
        Ok(body.replace(['\r', '\n'], " "))
    };
    match exchange(&mut stream) {
        Ok(body) => format!("ok {local} {body}"),
        Err(e) => failed(e),
    }
}
