//! `protected_resource`: a policy whose workload is an OAuth 2.0 protected
//! resource serving tools to AI agents (the Model Context Protocol's
//! authorization rules). Typed here; cross references (providers, the
//! policy's audiences, `forward_token`) are checked in `validate/resource.rs`,
//! and the metadata document is built by `policy/resource.rs`.

use serde::{Deserialize, Serialize};

/// RFC 9728 Protected Resource Metadata for the workload, and what follows
/// from it: 401 challenges carry `resource_metadata`, tokens must name the
/// resource as their audience (RFC 8707) and come from one of
/// `authorization_servers`, and the received token is never forwarded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(deny_unknown_fields)]
pub struct ProtectedResourceConfig {
    /// The resource identifier: the canonical URI clients use for the
    /// workload (`https://tools.example.com/mcp`), an absolute http(s) URI
    /// without fragment or query. Tokens must carry it as their audience.
    pub resource: String,
    /// Providers (by name) that issue tokens for this resource; their
    /// issuers are published as `authorization_servers`, and tokens from any
    /// other provider are refused.
    pub authorization_servers: Vec<String>,
    /// Published as `scopes_supported`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub scopes_supported: Vec<String>,
    /// How clients may send the token (RFC 6750 §2); nodeward reads only
    /// the ways its providers' `token_from` read.
    #[serde(default = "default_bearer_methods")]
    pub bearer_methods_supported: Vec<BearerMethod>,
    /// A human-readable name, published as `resource_name`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_name: Option<String>,
    /// A page for developers, published as `resource_documentation`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource_documentation: Option<String>,
}

/// RFC 6750 §2's ways to send a bearer token. There is no `body`: nodeward
/// never reads a request's body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, schemars::JsonSchema)]
#[serde(rename_all = "lowercase")]
pub enum BearerMethod {
    /// `Authorization: Bearer` (a provider's `token_from: {header: ...}`).
    Header,
    /// A query parameter (`token_from: {query: ...}`); MCP clients never use it.
    Query,
}

impl BearerMethod {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Header => "header",
            Self::Query => "query",
        }
    }
}

fn default_bearer_methods() -> Vec<BearerMethod> {
    vec![BearerMethod::Header]
}

/// The RFC 9728 §3.1 well-known path of the metadata document.
pub const METADATA_PATH: &str = "/.well-known/oauth-protected-resource";
