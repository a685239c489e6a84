//! nodeward: a node-level OpenID Connect identity agent. One process per node
//! validates bearer tokens for every enrolled workload against a shared JWKS
//! cache, applies claim-based policy, forwards allowed requests with the
//! verified identity, and explains every refusal.
//!
//! Map of the crate (see ARCHITECTURE.md for the life of a request):
//! - `config`: the YAML model and its pure parser/validator;
//! - `provider`: discovery, JWKS cache, refresh, disk copy;
//! - `token` + `token_cache`: RFC 8725 validation and the verified-token cache;
//! - `policy` + `authz`: rules and the per-request decision;
//! - `proxy`: listeners, header hygiene, upstream forwarding;
//! - `ebpf` + `netns`: SK_LOOKUP steering of pod traffic into the agent, and
//!   sockets created inside pods' network namespaces;
//! - `admin`, `metrics`, `audit`: what operators see;
//! - `app`, `state`, `reload`: wiring and live configuration;
//! - `k8s`: the Kubernetes pod watch (this node's opted-in pods → workloads).
//!
//! Test support (`nodeward-testkit`) and the development OpenID provider
//! (`nodeward-dev-idp`) are crates of their own, never linked into the agent.

pub mod admin;
pub mod app;
pub mod audit;
pub mod authz;
pub mod config;
pub mod ebpf;
pub mod enrol;
pub mod explain;
pub mod k8s;
pub mod logging;
pub mod metrics;
pub mod netns;
pub mod policy;
pub mod provider;
pub mod proxy;
pub mod reload;
pub mod state;
pub mod token;
pub mod token_cache;
