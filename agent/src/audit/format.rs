//! The audit line's text: one JSON object per line, written by hand into a
//! reused buffer (no `serde` structure, no `core::fmt` on the usual path).
//! A new field is one line in [`format_line`] (and in `Fields` and the
//! `tracing` form in `audit.rs`); an optional one goes in the list there.

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr};
use std::time::SystemTime;

use super::Fields;

/// `,"name":`, the start of a field, as one literal (one copy per field).
macro_rules! key {
    ($name:literal) => {
        concat!(",\"", $name, "\":")
    };
}
pub(super) use key;

/// Appends one audit line (ending in `\n`) for `f` at `now` to `out`.
pub fn format_line(out: &mut Vec<u8>, f: &Fields<'_>, now: SystemTime) {
    out.extend_from_slice(br#"{"timestamp":""#);
    timestamp(out, now);
    out.extend_from_slice(br#"","level":"INFO","target":"audit""#);
    field(out, key!("request_id"), f.request_id);
    if let Some(t) = f.trace_id {
        field(out, key!("trace_id"), t);
    }
    field(out, key!("workload"), f.workload);
    field(out, key!("method"), f.method);
    field(out, key!("path"), f.path);
    field(out, key!("decision"), f.decision);
    field(out, key!("reason"), f.reason);
    for (key, value) in [
        (key!("detail"), f.detail),
        (key!("rule"), f.rule),
        (key!("iss"), f.iss),
        (key!("sub"), f.sub),
        (key!("email"), f.email),
        (key!("client_id"), f.client_id),
        (key!("act"), f.act.as_deref()),
        (key!("k8s_user"), f.k8s_user),
        (key!("k8s_groups"), f.k8s_groups.as_deref()),
    ] {
        if let Some(v) = value {
            field(out, key, v);
        }
    }
    // A socket address is digits, hex, '.', ':', '[', ']' and '%': nothing to escape.
    out.extend_from_slice(br#","client":""#);
    socket_addr(out, f.client);
    out.extend_from_slice(br#"","latency_us":"#);
    decimal(out, f.latency_us);
    out.extend_from_slice(b"}\n");
}

/// `addr` as `Display` writes it; IPv4 by hand (the common case: `core::fmt`
/// costs several thousand instructions for an address, the rest of the line
/// a few hundred).
pub(super) fn socket_addr(out: &mut Vec<u8>, addr: SocketAddr) {
    match addr {
        SocketAddr::V4(a) => {
            ipv4(out, *a.ip());
            out.push(b':');
            decimal(out, u64::from(a.port()));
        }
        SocketAddr::V6(a) => {
            let _ = write!(out, "{a}");
        }
    }
}

/// `ip` in dotted decimal, as `Display` writes it, without `core::fmt`
/// (also the proxy's `x-forwarded-for`).
pub(crate) fn ipv4(out: &mut Vec<u8>, ip: Ipv4Addr) {
    for (i, octet) in ip.octets().into_iter().enumerate() {
        if i > 0 {
            out.push(b'.');
        }
        decimal(out, u64::from(octet));
    }
}

/// `n` in decimal.
pub(super) fn decimal(out: &mut Vec<u8>, n: u64) {
    out.extend_from_slice(itoa::Buffer::new().format(n).as_bytes());
}

thread_local! {
    /// The second the last timestamp of this thread fell in, and its
    /// `YYYY-MM-DDTHH:MM:SS` text: formatted once per second, not per line.
    static SECOND: std::cell::Cell<(u64, [u8; 19])> = const { std::cell::Cell::new((u64::MAX, [0; 19])) };
}

/// RFC 3339 in UTC with microseconds (`2026-05-28T20:26:40.123456Z`).
pub(super) fn timestamp(out: &mut Vec<u8>, now: SystemTime) {
    let since = now.duration_since(SystemTime::UNIX_EPOCH).unwrap_or_default();
    let secs = since.as_secs();
    let (cached, mut text) = SECOND.get();
    if cached != secs {
        let full = humantime::format_rfc3339_seconds(now).to_string();
        match full.as_bytes().get(..19) {
            Some(t) => text.copy_from_slice(t),
            None => text = [b'0'; 19],
        }
        SECOND.set((secs, text));
    }
    out.extend_from_slice(&text);
    let micros = since.subsec_micros();
    let mut frac = *b".000000Z";
    let mut m = micros;
    for b in frac[1..7].iter_mut().rev() {
        *b = b'0' + (m % 10) as u8;
        m /= 10;
    }
    out.extend_from_slice(&frac);
}

/// `key` (`,"name":`, from [`key!`]) and `"value"`, the value
/// JSON-escaped (quotes, backslashes, control characters).
pub(super) fn field(out: &mut Vec<u8>, key: &str, value: &str) {
    out.extend_from_slice(key.as_bytes());
    // Most values need no escape: copy them as they are.
    if !needs_escape(value.as_bytes()) {
        out.push(b'"');
        out.extend_from_slice(value.as_bytes());
        out.push(b'"');
        return;
    }
    // Serializing a &str into a Vec cannot fail.
    let _ = serde_json::to_writer(&mut *out, value);
}

/// Whether `bytes` hold one that JSON escapes: a control character, `"` or
/// `\\`. Eight bytes at a time (a line has a dozen values, some long).
pub(super) fn needs_escape(bytes: &[u8]) -> bool {
    const ONES: u64 = u64::from_ne_bytes([0x01; 8]);
    const HIGHS: u64 = u64::from_ne_bytes([0x80; 8]);
    // Some byte of `x` is below `n` (n ≤ 128), or zero: exact as a yes/no.
    let below = |x: u64, n: u64| x.wrapping_sub(ONES * n) & !x & HIGHS != 0;
    let zero = |x: u64| below(x, 1);
    let mut chunks = bytes.chunks_exact(8);
    for c in &mut chunks {
        let x = u64::from_ne_bytes(c.try_into().unwrap_or([0; 8]));
        if below(x, 0x20) || zero(x ^ (ONES * u64::from(b'"'))) || zero(x ^ (ONES * u64::from(b'\\'))) {
            return true;
        }
    }
    chunks.remainder().iter().any(|&b| b < 0x20 || b == b'"' || b == b'\\')
}
