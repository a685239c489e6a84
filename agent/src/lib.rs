//! nodeward: a node-level OpenID Connect identity agent. One process per node
//! validates bearer tokens for every enrolled workload against a shared JWKS
//! cache, applies claim-based policy, forwards allowed requests with the
//! verified identity, and explains every refusal.
//!
//! Map of the crate, in dependency order (see ARCHITECTURE.md):
//! - `config`: the typed YAML model and its pure parser/validator; `path`:
//!   the one request-path normalisation;
//! - `provider`: discovery, JWKS cache, refresh, disk copy;
//! - `token` + `token_cache`: RFC 8725 validation, token sources, the
//!   verified-token cache;
//! - `policy` + `authz` (+ `reason`): rules and the per-request decision;
//! - `snapshot`: one applied configuration, data only;
//! - `proxy`: listeners, the request pipeline, upstream forwarding;
//! - `ebpf` + `netns`: SK_LOOKUP steering of pod traffic into the agent, and
//!   sockets created inside pods' network namespaces;
//! - `control`: applying configurations and pod sets (listeners, providers,
//!   enrolment); `readiness`, `drain`;
//! - `admin`, `metrics`, `audit`, `logging`, `trace`: what operators see
//!   (`trace`: W3C trace context kept or started per request);
//! - `k8s`: the Kubernetes pod watch (this node's opted-in pods → workloads);
//! - `reload`, `explain`: the file watcher and `nodeward explain`;
//! - `app`: wiring (only `main` and the testkit use it).
//!
//! Test support (`nodeward-testkit`) and the development OpenID provider
//! (`nodeward-dev-idp`) are crates of their own, never linked into the agent.

mod admin;
mod app;
mod audit;
mod authz;
pub mod config;
mod control;
pub mod credentials;
mod drain;
pub mod ebpf;
mod explain;
pub mod identity;
pub mod k8s;
mod logging;
mod metrics;
pub mod netns;
pub mod path;
pub mod policy;
pub mod provider;
mod proxy;
mod readiness;
mod reason;
mod reload;
mod snapshot;
pub mod token;
mod token_cache;
pub mod trace;

pub use app::{Agent, AgentError};
pub use audit::{Audit, Fields as AuditFields, Limits as AuditLimits, Record as AuditRecord, format_line};
pub use authz::{Decision, Outcome, Verifier};
pub use control::{Control, ControlError};
pub use explain::{ExplainError, Explanation, Probe, Subject, explain};
pub use logging::init as init_logging;
pub use metrics::Metrics;
pub use policy::{Policy, PolicyError};
pub use proxy::admit;
pub use proxy::headers::{ascii_json, identity as identity_headers, strip_identity};
pub use reason::Reason;
pub use reload::{Reload, Reloader};
pub use snapshot::{Snapshot, WorkloadSpec};
pub use token_cache::TokenCache;
