//! Holds many idle TCP connections to one address on behalf of a test, in a
//! process of its own so the test process (which runs the agent) only pays
//! for the accepted ends in its open-file limit.
//!
//! Usage: `idle-holder ADDR COUNT`. Opens COUNT connections (every even one
//! stalls mid-request-head), prints `held COUNT`, then waits for a line on
//! stdin; on `check` it prints `open N`, the number the peer has not closed,
//! and exits. End of stdin (the test died) exits at once.

use std::io::{BufRead, ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

type Error = Box<dyn std::error::Error>;

fn main() -> Result<(), Error> {
    let mut args = std::env::args().skip(1);
    let usage = "usage: idle-holder ADDR COUNT";
    let addr: SocketAddr = args.next().ok_or(usage)?.parse()?;
    let count: usize = args.next().ok_or(usage)?.parse()?;
    // A few connecting threads: one at a time, 10,000 handshakes take long
    // enough for the first connections to hit the agent's idle timeout.
    const THREADS: usize = 8;
    let workers: Vec<_> = (0..THREADS)
        .map(|t| {
            std::thread::spawn(move || -> Result<Vec<TcpStream>, String> {
                let mut held = Vec::new();
                for i in (t..count).step_by(THREADS) {
                    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(5))
                        .map_err(|e| format!("connection {i} of {count}: {e}"))?;
                    if i % 2 == 0 {
                        s.write_all(b"GET /orders HTTP/1.1\r\nHost:")
                            .map_err(|e| format!("connection {i}: {e}"))?;
                    }
                    held.push(s);
                }
                Ok(held)
            })
        })
        .collect();
    let mut held = Vec::with_capacity(count);
    for w in workers {
        held.extend(w.join().map_err(|_| "a connecting thread panicked")??);
    }
    println!("held {count}");
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().lock().read_line(&mut line)?;
    if line.trim() != "check" {
        return Ok(());
    }
    let mut open = 0;
    for s in &mut held {
        s.set_read_timeout(Some(Duration::from_millis(20)))?;
        let mut buf = [0u8; 512];
        // A 408 may come first; the close follows.
        let closed = (0..2).any(|_| match s.read(&mut buf) {
            Ok(n) => n == 0,
            Err(e) => !matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut),
        });
        if !closed {
            open += 1;
        }
    }
    println!("open {open}");
    Ok(())
}
