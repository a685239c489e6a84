//! The audit line of one outbound request: the calling workload, where it
//! went, which rule applied and what token it carried (its kind, never the
//! token), or why it was not sent. Same sink and formatting as the inbound
//! line; `"direction":"egress"` tells them apart.

use std::net::SocketAddr;
use std::time::{Duration, SystemTime};

use super::format::{decimal, field, key, socket_addr, timestamp};
use super::{Audit, KEEP_LINE_BYTES, LINE};

pub struct EgressRecord<'a> {
    pub request_id: &'a str,
    /// The calling workload (`namespace/pod` for pods).
    pub workload: &'a str,
    pub method: &'a str,
    /// The host the request named (`Host` / `:authority`), as rules read it.
    pub host: Option<&'a str>,
    /// The path as the application sent it, without the query.
    pub path: &'a str,
    /// The connection's original destination.
    pub destination: SocketAddr,
    pub rule: Option<&'a str>,
    /// The kind of token attached (`service_account`, …), when one was.
    pub token: Option<&'a str>,
    /// `sent`, `sent_app_token`, `passthrough` or `refused`.
    pub outcome: &'a str,
    /// Why, when refused or not sent (`egress_token_unavailable`, …).
    pub reason: Option<&'a str>,
    pub detail: Option<&'a str>,
    /// The destination's status, when it answered.
    pub status: Option<u16>,
    pub latency: Duration,
}

/// Appends one egress audit line (ending in `\n`) for `r` at `now` to `out`.
pub fn format_egress_line(out: &mut Vec<u8>, r: &EgressRecord<'_>, now: SystemTime) {
    out.extend_from_slice(br#"{"timestamp":""#);
    timestamp(out, now);
    out.extend_from_slice(br#"","level":"INFO","target":"audit","direction":"egress""#);
    field(out, key!("request_id"), r.request_id);
    field(out, key!("workload"), r.workload);
    field(out, key!("method"), r.method);
    if let Some(h) = r.host {
        field(out, key!("host"), h);
    }
    field(out, key!("path"), r.path);
    for (key, value) in [
        (key!("rule"), r.rule),
        (key!("token"), r.token),
        (key!("outcome"), Some(r.outcome)),
        (key!("reason"), r.reason),
        (key!("detail"), r.detail),
    ] {
        if let Some(v) = value {
            field(out, key, v);
        }
    }
    if let Some(s) = r.status {
        out.extend_from_slice(br#","status":"#);
        decimal(out, u64::from(s));
    }
    // A socket address needs no escaping.
    out.extend_from_slice(br#","destination":""#);
    socket_addr(out, r.destination);
    out.extend_from_slice(br#"","latency_us":"#);
    decimal(out, u64::try_from(r.latency.as_micros()).unwrap_or(u64::MAX));
    out.extend_from_slice(b"}\n");
}

impl Audit {
    pub fn log_egress(&self, r: &EgressRecord<'_>) {
        match &self.sink {
            Some(sink) => LINE.with_borrow_mut(|line| {
                line.clear();
                format_egress_line(line, r, SystemTime::now());
                sink.push(line);
                if line.capacity() > KEEP_LINE_BYTES {
                    *line = Vec::new();
                }
            }),
            None => tracing::info!(
                target: "audit",
                direction = "egress",
                request_id = r.request_id,
                workload = r.workload,
                method = r.method,
                host = r.host,
                path = r.path,
                rule = r.rule,
                token = r.token,
                outcome = r.outcome,
                reason = r.reason,
                detail = r.detail,
                status = r.status,
                destination = %r.destination,
                latency_us = u64::try_from(r.latency.as_micros()).unwrap_or(u64::MAX),
            ),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_egress_line_is_one_json_object_without_the_token() {
        let mut out = Vec::new();
        format_egress_line(
            &mut out,
            &EgressRecord {
                request_id: "r1",
                workload: "shop/orders-1",
                method: "GET",
                host: Some("payments"),
                path: "/pay\"x",
                destination: "10.0.0.9:8080".parse().expect("addr"),
                rule: Some("payments"),
                token: Some("service_account"),
                outcome: "sent",
                reason: None,
                detail: None,
                status: Some(200),
                latency: Duration::from_micros(42),
            },
            SystemTime::UNIX_EPOCH,
        );
        assert_eq!(out.last(), Some(&b'\n'));
        let v: serde_json::Value = serde_json::from_slice(&out).expect("JSON");
        assert_eq!(v["direction"], "egress");
        assert_eq!(v["path"], "/pay\"x");
        assert_eq!(v["destination"], "10.0.0.9:8080");
        assert_eq!(v["status"], 200);
        assert_eq!(v["latency_us"], 42);
        assert_eq!(v["token"], "service_account");
        assert!(v.get("reason").is_none());
    }
}
