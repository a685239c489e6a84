//! The agent's live state: one immutable [`Runtime`] snapshot per applied
//! configuration, swapped atomically on reload. A request loads the snapshot
//! once and sees one consistent configuration from head to decision, so a
//! reload never affects a request already in flight.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;

use crate::config::{Config, Limits, TokenSource};
use crate::policy::Policy;
use crate::provider::Providers;

pub struct Runtime {
    pub config: Arc<Config>,
    pub providers: Providers,
    pub workloads: HashMap<String, Workload>,
    /// Distinct places a token may be read from, in provider order.
    pub token_sources: Vec<Source>,
}

impl Runtime {
    pub fn limits(&self) -> &Limits {
        &self.config.limits
    }
}

/// A workload as the request path needs it.
pub struct Workload {
    pub name: Arc<str>,
    pub policy: Arc<Policy>,
    pub upstream: Upstream,
    pub client: Arc<crate::proxy::upstream::Client>,
}

/// Where a workload's allowed requests go.
pub enum Upstream {
    /// Reverse-proxy mode: a configured address.
    Fixed(http::uri::Authority),
    /// eBPF mode: the connection's original destination (pod IP and port),
    /// dialled from inside the pod's namespace. The program lets a connection
    /// from the pod's own address through, so it reaches the application
    /// whether that listens on the pod IP or on every address.
    OriginalDestination,
}

impl Upstream {
    /// The authority to dial for a connection accepted on `local`.
    pub fn target(&self, local: SocketAddr) -> Option<http::uri::Authority> {
        match self {
            Self::Fixed(a) => Some(a.clone()),
            Self::OriginalDestination => local.to_string().parse().ok(),
        }
    }
}

/// A compiled [`TokenSource`].
#[derive(Debug, Clone)]
pub struct Source {
    pub header: http::HeaderName,
    /// Lower-case scheme followed by a space, or empty for a bare token.
    pub prefix: String,
}

impl Source {
    pub fn compile(all: impl Iterator<Item = TokenSource>) -> Vec<Source> {
        let mut out: Vec<Source> = Vec::new();
        for s in all {
            let Ok(header) = http::HeaderName::from_bytes(s.header.to_ascii_lowercase().as_bytes()) else {
                continue;
            };
            let prefix = if s.prefix.is_empty() {
                String::new()
            } else {
                format!("{} ", s.prefix.to_ascii_lowercase())
            };
            if !out.iter().any(|o| o.header == header && o.prefix == prefix) {
                out.push(Source { header, prefix });
            }
        }
        if out.is_empty() {
            out.push(Source {
                header: http::header::AUTHORIZATION,
                prefix: "bearer ".into(),
            });
        }
        out
    }
}
