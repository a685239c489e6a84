//! A policy's `protected_resource`, compiled once per configuration: the RFC
//! 9728 metadata document (serialised once, served by the proxy as is), the
//! absolute URL 401 challenges point at, the request paths that are answered
//! with it, the providers whose tokens the resource accepts, and the scopes
//! a rule requires (for the `scope` challenge parameter).

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use crate::config::{ClaimCondition, ClaimPath, METADATA_PATH, ProtectedResourceConfig, ProviderConfig};
use crate::path::{self, PathOptions};

#[derive(Debug)]
pub struct ProtectedResource {
    /// The resource identifier, as configured (what tokens carry as `aud`).
    pub resource: String,
    /// The absolute URL of the metadata document (RFC 9728 §3.1).
    pub metadata_url: String,
    /// The RFC 9728 document as JSON.
    pub document: Bytes,
    /// The providers named as authorization servers: only their tokens count.
    pub providers: Vec<Arc<str>>,
    /// Normalised request paths answered with the document: the root
    /// well-known path and the one suffixed with the resource's path.
    paths: Vec<String>,
}

/// RFC 9728 §2 fields, in the order the RFC lists them.
#[derive(Serialize)]
struct Document<'a> {
    resource: &'a str,
    authorization_servers: Vec<&'a str>,
    #[serde(skip_serializing_if = "<[String]>::is_empty")]
    scopes_supported: &'a [String],
    bearer_methods_supported: Vec<&'static str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_name: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    resource_documentation: Option<&'a str>,
}

impl ProtectedResource {
    /// `Err` names what is wrong; validation has checked the same things, so
    /// it only happens for a configuration that skipped it.
    pub fn compile(
        cfg: &ProtectedResourceConfig,
        providers: &[ProviderConfig],
        opts: &PathOptions,
    ) -> Result<Self, String> {
        let url = url::Url::parse(&cfg.resource).map_err(|e| format!("resource {:?}: {e}", cfg.resource))?;
        // §3.1: the well-known segment goes between the host and the path; a
        // path of just "/" is no path.
        let suffix = match url.path() {
            "/" => "",
            p => p,
        };
        let origin = &url[..url::Position::BeforePath];
        let metadata_url = format!("{origin}{METADATA_PATH}{suffix}");
        let mut issuers = Vec::new();
        for name in &cfg.authorization_servers {
            match providers.iter().find(|p| &p.name == name) {
                Some(p) if !p.issuer.is_empty() => issuers.push(p.issuer.as_str()),
                _ => {
                    return Err(format!(
                        "authorization server {name:?} is not a provider with an issuer"
                    ));
                }
            }
        }
        let document = serde_json::to_vec(&Document {
            resource: &cfg.resource,
            authorization_servers: issuers,
            scopes_supported: &cfg.scopes_supported,
            bearer_methods_supported: cfg.bearer_methods_supported.iter().map(|m| m.as_str()).collect(),
            resource_name: cfg.resource_name.as_deref(),
            resource_documentation: cfg.resource_documentation.as_deref(),
        })
        .map_err(|e| format!("metadata document: {e}"))?;
        // Matched like any request path, so every spelling that normalises
        // to a well-known path is answered here, never forwarded.
        let mut paths = Vec::new();
        let suffixed = format!("{METADATA_PATH}{suffix}");
        for p in [METADATA_PATH, suffixed.as_str(), suffixed.trim_end_matches('/')] {
            let n = path::normalize(p, opts).map_err(|e| format!("metadata path {p:?}: {e}"))?;
            if !paths.contains(&n.matched) {
                paths.push(n.matched);
            }
        }
        Ok(Self {
            resource: cfg.resource.clone(),
            metadata_url,
            document: Bytes::from(document),
            providers: cfg.authorization_servers.iter().map(|n| n.as_str().into()).collect(),
            paths,
        })
    }

    /// Whether the normalised request path asks for the metadata document.
    pub fn serves(&self, matched: &str) -> bool {
        self.paths.iter().any(|p| p == matched)
    }

    /// Whether tokens of this provider are for this resource's authorization servers.
    pub fn accepts(&self, provider: &str) -> bool {
        self.providers.iter().any(|p| &**p == provider)
    }
}

/// The scopes a rule's claim conditions require, space-separated, for the
/// challenge's `scope` parameter: `all_of` and `equals` on a scope claim,
/// and `any_of` with a single value (a choice cannot be written as a scope).
pub fn required_scope(claims: &[(ClaimPath, ClaimCondition)]) -> Option<Box<str>> {
    let mut scopes: Vec<&str> = Vec::new();
    for (_, cond) in claims.iter().filter(|(p, _)| p.is_scope()) {
        let values: Vec<&str> = match cond {
            ClaimCondition::AllOf(v) => v.iter().filter_map(|v| v.as_str()).collect(),
            ClaimCondition::AnyOf(v) if v.len() == 1 => v.iter().filter_map(|v| v.as_str()).collect(),
            ClaimCondition::Equals(v) => v.as_str().into_iter().flat_map(|s| s.split(' ')).collect(),
            _ => continue,
        };
        // Only scope tokens (RFC 6749 §3.3) go into a quoted parameter.
        let tokens = values
            .into_iter()
            .filter(|s| !s.is_empty() && s.bytes().all(|b| b.is_ascii_graphic() && b != b'"' && b != b'\\'));
        for s in tokens {
            if !scopes.contains(&s) {
                scopes.push(s);
            }
        }
    }
    (!scopes.is_empty()).then(|| scopes.join(" ").into_boxed_str())
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::config::{BearerMethod, Config};

    fn providers() -> Vec<ProviderConfig> {
        let c = Config::parse(
            "providers:\n  - {name: corp, issuer: \"https://idp.example/tenant\", audiences: [x]}\n",
            std::path::Path::new("t.yaml"),
        )
        .expect("valid");
        c.providers
    }

    fn cfg(resource: &str) -> ProtectedResourceConfig {
        ProtectedResourceConfig {
            resource: resource.into(),
            authorization_servers: vec!["corp".into()],
            scopes_supported: vec!["tools.read".into(), "tools.call".into()],
            bearer_methods_supported: vec![BearerMethod::Header],
            resource_name: Some("Tools".into()),
            resource_documentation: None,
        }
    }

    fn compile(resource: &str) -> ProtectedResource {
        ProtectedResource::compile(&cfg(resource), &providers(), &PathOptions::default()).expect("compiles")
    }

    #[test]
    fn the_document_names_the_resource_and_the_issuers() {
        let r = compile("http://127.0.0.1:15007/mcp");
        let doc: Value = serde_json::from_slice(&r.document).expect("JSON");
        assert_eq!(
            doc,
            json!({
                "resource": "http://127.0.0.1:15007/mcp",
                "authorization_servers": ["https://idp.example/tenant"],
                "scopes_supported": ["tools.read", "tools.call"],
                "bearer_methods_supported": ["header"],
                "resource_name": "Tools",
            })
        );
        assert!(r.accepts("corp"));
        assert!(!r.accepts("other"));
    }

    #[test]
    fn the_metadata_url_inserts_the_well_known_path_before_the_resource_path() {
        for (resource, url) in [
            (
                "http://127.0.0.1:15007/mcp",
                "http://127.0.0.1:15007/.well-known/oauth-protected-resource/mcp",
            ),
            (
                "https://tools.example.com",
                "https://tools.example.com/.well-known/oauth-protected-resource",
            ),
            (
                "https://tools.example.com/",
                "https://tools.example.com/.well-known/oauth-protected-resource",
            ),
            (
                "https://Tools.Example.com:8443/a/mcp/",
                "https://tools.example.com:8443/.well-known/oauth-protected-resource/a/mcp/",
            ),
        ] {
            assert_eq!(compile(resource).metadata_url, url, "{resource}");
        }
    }

    #[test]
    fn it_serves_the_root_and_the_path_suffixed_well_known_paths_only() {
        let r = compile("https://tools.example.com/a/mcp/");
        for p in [
            "/.well-known/oauth-protected-resource",
            "/.well-known/oauth-protected-resource/a/mcp",
            "/.well-known/oauth-protected-resource/a/mcp/",
        ] {
            let n = path::normalize(p, &PathOptions::default()).expect("normal").matched;
            assert!(r.serves(&n), "{p}");
        }
        for p in [
            "/.well-known/oauth-protected-resource/other",
            "/.well-known/oauth-protected-resource/a",
            "/a/mcp",
            "/.well-known/openid-configuration",
        ] {
            let n = path::normalize(p, &PathOptions::default()).expect("normal").matched;
            assert!(!r.serves(&n), "{p}");
        }
    }

    #[test]
    fn a_provider_without_an_issuer_is_an_error_not_an_empty_entry() {
        let mut c = cfg("https://t.example/mcp");
        c.authorization_servers = vec!["missing".into()];
        let e = ProtectedResource::compile(&c, &providers(), &PathOptions::default()).expect_err("refused");
        assert!(e.contains("\"missing\""), "{e}");
    }

    #[test]
    fn required_scopes_come_from_conditions_on_scope_claims() {
        let path = |p: &str| ClaimPath::parse(p).expect("path");
        let claims = vec![
            (
                path("scope"),
                ClaimCondition::AllOf(vec![json!("tools.call"), json!("tools.read")]),
            ),
            (path("scp"), ClaimCondition::AnyOf(vec![json!("tools.read")])),
            (path("groups"), ClaimCondition::AllOf(vec![json!("admins")])),
        ];
        assert_eq!(required_scope(&claims).as_deref(), Some("tools.call tools.read"));
        // A choice cannot be written as a scope parameter; a non-scope claim is not a scope.
        let choice = vec![(path("scope"), ClaimCondition::AnyOf(vec![json!("a"), json!("b")]))];
        assert_eq!(required_scope(&choice), None);
        let equals = vec![(path("scope"), ClaimCondition::Equals(json!("a b")))];
        assert_eq!(required_scope(&equals).as_deref(), Some("a b"));
        let unsafe_value = vec![(path("scope"), ClaimCondition::AllOf(vec![json!("a\"b")]))];
        assert_eq!(required_scope(&unsafe_value), None);
    }
}
