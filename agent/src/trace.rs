//! W3C trace context (<https://www.w3.org/TR/trace-context/>): the agent
//! keeps a client's valid `traceparent`/`tracestate` and forwards them
//! unchanged (it records no spans of its own, so it is not a new parent), or
//! starts a trace when there is none, so one refusal can be found from the
//! app's trace and one trace from an audit line.
//!
//! An invalid `traceparent` (wrong length or case, all-zero ids, version
//! `ff`, two of them) is ignored as the specification says, and its
//! `tracestate` with it. Trace context is correlation data, never identity:
//! nothing here is trusted for a decision.

use std::sync::atomic::{AtomicU64, Ordering};

use http::{HeaderMap, HeaderName, HeaderValue};

use crate::config::TraceConfig;

pub const TRACEPARENT: HeaderName = HeaderName::from_static("traceparent");
pub const TRACESTATE: HeaderName = HeaderName::from_static("tracestate");

/// A trace id: 32 lower-case hex digits, not all zero.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct TraceId([u8; 32]);

impl TraceId {
    pub fn as_str(&self) -> &str {
        // Only ever built from lower-case hex digits.
        std::str::from_utf8(&self.0).unwrap_or("")
    }
}

impl std::fmt::Debug for TraceId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The trace id of a valid `traceparent` value.
///
/// `version "-" trace-id "-" parent-id "-" flags`, lower-case hex: version
/// `00` is exactly 55 bytes; a later version may append `-...` fields, which
/// are not read (§3.2.4: a parser for version 00 reads what it knows).
pub fn parse(value: &[u8]) -> Option<TraceId> {
    if value.len() < 55 || value[2] != b'-' || value[35] != b'-' || value[52] != b'-' {
        return None;
    }
    let hex = |b: &[u8]| b.iter().all(|c| matches!(c, b'0'..=b'9' | b'a'..=b'f'));
    let zero = |b: &[u8]| b.iter().all(|c| *c == b'0');
    let (version, trace, parent, flags) = (&value[..2], &value[3..35], &value[36..52], &value[53..55]);
    if !hex(version) || version == b"ff" || !hex(trace) || !hex(parent) || !hex(flags) {
        return None;
    }
    if zero(trace) || zero(parent) {
        return None;
    }
    if version == b"00" && value.len() != 55 {
        return None;
    }
    if value.len() > 55 && value[55] != b'-' {
        return None;
    }
    let mut id = [0; 32];
    id.copy_from_slice(trace);
    Some(TraceId(id))
}

/// Makes trace and parent ids without a syscall per request: a per-process
/// random seed and a counter, mixed by SplitMix64 (a bijection, so no two
/// requests of one process share an id; the seed keeps processes apart).
pub struct Traces {
    seed: [u64; 2],
    next: AtomicU64,
}

impl Default for Traces {
    fn default() -> Self {
        let mut bytes = [0u8; 16];
        let seed = match aws_lc_rs::rand::fill(&mut bytes) {
            Ok(()) => [
                u64::from_le_bytes(bytes[..8].try_into().unwrap_or_default()),
                u64::from_le_bytes(bytes[8..].try_into().unwrap_or_default()),
            ],
            Err(_) => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos() as u64);
                [t, u64::from(std::process::id())]
            }
        };
        Self {
            seed,
            next: AtomicU64::new(1),
        }
    }
}

fn splitmix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn put_hex(out: &mut [u8], v: u64) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for (i, b) in out.iter_mut().enumerate().take(16) {
        *b = DIGITS[((v >> (60 - 4 * i)) & 0xf) as usize];
    }
}

impl Traces {
    /// The request's trace, with `headers` rewritten as the upstream gets
    /// them: a client's valid trace kept (when `config.accept`), otherwise
    /// its trace headers removed and, when `config.start`, a new trace
    /// started. `None`: the request carries no trace.
    pub fn for_request(&self, headers: &mut HeaderMap, config: &TraceConfig) -> Option<TraceId> {
        if config.accept
            && let Some(id) = single(headers)
        {
            return Some(id);
        }
        headers.remove(TRACEPARENT);
        headers.remove(TRACESTATE);
        if !config.start {
            return None;
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        // 00-<32 trace>-<16 parent>-<2 flags>
        let mut v = *b"00-00000000000000000000000000000000-0000000000000000-00";
        let (hi, lo) = (splitmix(self.seed[0] ^ n), splitmix(self.seed[1].wrapping_add(n)));
        put_hex(&mut v[3..19], hi);
        put_hex(&mut v[19..35], lo | u64::from(hi == 0 && lo == 0));
        put_hex(&mut v[36..52], splitmix(hi ^ lo ^ 0x5bd1_e995) | 1);
        if config.sampled {
            v[54] = b'1';
        }
        let mut id = [0; 32];
        id.copy_from_slice(&v[3..35]);
        if let Ok(value) = HeaderValue::from_bytes(&v) {
            headers.insert(TRACEPARENT, value);
        }
        Some(TraceId(id))
    }
}

/// The trace id of the one valid `traceparent` in `headers`; two of them
/// are invalid (§3.2: "a vendor MUST NOT" send more than one).
fn single(headers: &HeaderMap) -> Option<TraceId> {
    let mut all = headers.get_all(TRACEPARENT).iter();
    match (all.next(), all.next()) {
        (Some(v), None) => parse(v.as_bytes()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const VALID: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

    fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                HeaderValue::from_str(v).expect("value"),
            );
        }
        h
    }

    #[test]
    fn valid_values_are_read_and_invalid_ones_ignored() {
        assert_eq!(
            parse(VALID.as_bytes()).map(|t| t.as_str().to_string()).as_deref(),
            Some("4bf92f3577b34da6a3ce929d0e0e4736")
        );
        // A later version may carry more fields.
        assert!(parse(format!("01{}-extra", &VALID[2..]).as_bytes()).is_some());
        for bad in [
            "",
            &VALID[..54],
            &VALID.to_uppercase(),
            &format!("{VALID}-x"),          // version 00 is exactly 55 bytes
            &format!("01{}x", &VALID[2..]), // a later version's extra needs a '-'
            &format!("ff{}", &VALID[2..]),  // version ff is invalid
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473g-00f067aa0ba902b7-01",
            "00_4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-0x",
        ] {
            assert_eq!(parse(bad.as_bytes()), None, "{bad:?}");
        }
    }

    #[test]
    fn a_valid_trace_is_kept_with_its_state() {
        let traces = Traces::default();
        let mut h = headers(&[("traceparent", VALID), ("tracestate", "vendor=abc")]);
        let id = traces.for_request(&mut h, &TraceConfig::default()).expect("trace");
        assert_eq!(id.as_str(), &VALID[3..35]);
        assert_eq!(h.get("traceparent").expect("kept"), VALID);
        assert_eq!(h.get("tracestate").expect("kept"), "vendor=abc");
    }

    #[test]
    fn an_invalid_or_doubled_trace_is_replaced_and_its_state_dropped() {
        let traces = Traces::default();
        for pairs in [
            vec![("traceparent", "00-garbage"), ("tracestate", "vendor=abc")],
            vec![
                ("traceparent", VALID),
                ("traceparent", VALID),
                ("tracestate", "vendor=abc"),
            ],
            vec![("tracestate", "vendor=abc")],
        ] {
            let mut h = headers(&pairs);
            let id = traces
                .for_request(&mut h, &TraceConfig::default())
                .expect("a new trace");
            let sent: Vec<_> = h.get_all("traceparent").iter().collect();
            assert_eq!(sent.len(), 1, "{pairs:?}");
            let sent = sent[0].to_str().expect("ascii");
            assert_eq!(parse(sent.as_bytes()), Some(id), "{sent}");
            assert_ne!(id.as_str(), &VALID[3..35]);
            assert!(sent.ends_with("-01"), "sampled by default: {sent}");
            assert!(h.get("tracestate").is_none(), "{pairs:?}");
        }
    }

    #[test]
    fn the_switches_decide_what_is_kept_and_started() {
        let traces = Traces::default();
        let edge = TraceConfig {
            accept: false,
            ..TraceConfig::default()
        };
        let mut h = headers(&[("traceparent", VALID), ("tracestate", "a=b")]);
        let id = traces.for_request(&mut h, &edge).expect("a new trace");
        assert_ne!(id.as_str(), &VALID[3..35], "a client's trace is not continued");
        assert!(h.get("tracestate").is_none());
        let off = TraceConfig {
            accept: false,
            start: false,
            sampled: false,
        };
        let mut h = headers(&[("traceparent", VALID)]);
        assert_eq!(traces.for_request(&mut h, &off), None);
        assert!(h.get("traceparent").is_none(), "nothing is forwarded");
        let unsampled = TraceConfig {
            sampled: false,
            ..TraceConfig::default()
        };
        let mut h = HeaderMap::new();
        traces.for_request(&mut h, &unsampled).expect("trace");
        assert!(h["traceparent"].to_str().expect("ascii").ends_with("-00"));
    }

    #[test]
    fn started_traces_are_valid_and_distinct() {
        let traces = Traces::default();
        let mut seen = std::collections::HashSet::new();
        for _ in 0..10_000 {
            let mut h = HeaderMap::new();
            let id = traces.for_request(&mut h, &TraceConfig::default()).expect("trace");
            assert_eq!(parse(h["traceparent"].as_bytes()), Some(id));
            assert!(seen.insert(id.as_str().to_string()), "duplicate trace id");
        }
    }
}
