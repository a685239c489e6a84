//! The audit log: one JSON line per decision under the tracing target
//! `audit`, naming the caller (iss, sub, email), never the token.

use std::net::SocketAddr;
use std::time::Duration;

use http::{HeaderValue, Method};

use crate::authz::Decision;

pub struct Record<'a> {
    pub request_id: &'a HeaderValue,
    pub workload: &'a str,
    pub method: &'a Method,
    pub path: &'a str,
    pub decision: &'a Decision,
    pub client: SocketAddr,
    pub latency: Duration,
}

pub fn log(r: &Record<'_>) {
    let d = r.decision;
    let token = d.token.as_ref().map(|t| &t.verified);
    tracing::info!(
        target: "audit",
        request_id = r.request_id.to_str().unwrap_or(""),
        workload = r.workload,
        method = r.method.as_str(),
        path = r.path,
        decision = d.label(),
        reason = d.reason,
        detail = d.detail.as_deref(),
        rule = d.rule.as_deref(),
        iss = token.map(|t| t.iss.as_str()),
        sub = token.and_then(|t| t.sub.as_deref()),
        email = token.and_then(|t| t.email()),
        client = %r.client,
        latency_us = r.latency.as_micros() as u64,
    );
}
