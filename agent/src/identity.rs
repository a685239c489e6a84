//! Callers as Kubernetes users. A service-account token names its user the
//! way the API server does (`system:serviceaccount:NS:NAME`, the groups
//! `system:serviceaccounts`, `system:serviceaccounts:NS`,
//! `system:authenticated`, and the pod it is bound to as `extra`); an IdP
//! token becomes a user through its provider's `claim_mappings`, and, as the
//! API server refuses them, names that would pass for the cluster's own
//! (`system:…`) are refused.

use std::collections::BTreeMap;

use serde_json::Value;

use crate::config::ProviderConfig;
use crate::token::VerifiedToken;

/// The user a SubjectAccessReview asks about.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct KubeUser {
    pub username: String,
    pub uid: Option<String>,
    pub groups: Vec<String>,
    pub extra: BTreeMap<String, Vec<String>>,
}

/// The calling workload named by a service-account token's `kubernetes.io` claim.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceAccountCaller {
    pub namespace: String,
    pub service_account: String,
    pub service_account_uid: Option<String>,
    /// The pod the token is bound to (projected tokens).
    pub pod: Option<(String, Option<String>)>,
    pub node: Option<String>,
}

/// Why a token cannot stand for a Kubernetes user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    #[error("the token has no `kubernetes.io` claim naming its namespace and service account")]
    NotAServiceAccount,
    #[error("sub {0:?} does not name the service account its kubernetes.io claim names")]
    SubjectMismatch(String),
    #[error("provider {0} maps no claims to a Kubernetes user")]
    NoMappings(String),
    #[error("claim {0} (the username) is missing or not a string")]
    NoUsername(String),
    #[error("claim {0} (the groups) is not a string or a list of strings")]
    BadGroups(String),
    #[error("{0:?} would pass for one of the cluster's own `system:` names")]
    SystemName(String),
}

const AUTHENTICATED: &str = "system:authenticated";

fn str_at<'a>(v: &'a Value, path: &[&str]) -> Option<&'a str> {
    path.iter().try_fold(v, |v, k| v.get(k))?.as_str()
}

impl ServiceAccountCaller {
    /// Reads the `kubernetes.io` claim (RFC-shaped as the API server mints it).
    pub fn of(token: &VerifiedToken) -> Result<Self, IdentityError> {
        let k = token
            .claims
            .get("kubernetes.io")
            .ok_or(IdentityError::NotAServiceAccount)?;
        let namespace = str_at(k, &["namespace"]).ok_or(IdentityError::NotAServiceAccount)?;
        let service_account = str_at(k, &["serviceaccount", "name"]).ok_or(IdentityError::NotAServiceAccount)?;
        let caller = Self {
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
            service_account_uid: str_at(k, &["serviceaccount", "uid"]).map(String::from),
            pod: str_at(k, &["pod", "name"]).map(|n| (n.to_string(), str_at(k, &["pod", "uid"]).map(String::from))),
            node: str_at(k, &["node", "name"]).map(String::from),
        };
        let expected = caller.username();
        if token.sub.as_deref() != Some(expected.as_str()) {
            return Err(IdentityError::SubjectMismatch(token.sub.clone().unwrap_or_default()));
        }
        Ok(caller)
    }

    pub fn username(&self) -> String {
        format!("system:serviceaccount:{}:{}", self.namespace, self.service_account)
    }

    /// As the API server authenticates it (pkg/serviceaccount: user, groups, extra).
    pub fn user(&self, jti: Option<&str>) -> KubeUser {
        let mut extra = BTreeMap::new();
        if let Some((pod, uid)) = &self.pod {
            extra.insert("authentication.kubernetes.io/pod-name".into(), vec![pod.clone()]);
            if let Some(uid) = uid {
                extra.insert("authentication.kubernetes.io/pod-uid".into(), vec![uid.clone()]);
            }
        }
        if let Some(node) = &self.node {
            extra.insert("authentication.kubernetes.io/node-name".into(), vec![node.clone()]);
        }
        if let Some(jti) = jti {
            extra.insert(
                "authentication.kubernetes.io/credential-id".into(),
                vec![format!("JTI={jti}")],
            );
        }
        KubeUser {
            username: self.username(),
            uid: self.service_account_uid.clone(),
            groups: vec![
                "system:serviceaccounts".into(),
                format!("system:serviceaccounts:{}", self.namespace),
                AUTHENTICATED.into(),
            ],
            extra,
        }
    }
}

/// The Kubernetes user `token` stands for, under `provider`'s rules.
pub fn user_of(token: &VerifiedToken, provider: &ProviderConfig) -> Result<KubeUser, IdentityError> {
    if provider.kubernetes_service_accounts.is_some() {
        let jti = token.claims.get("jti").and_then(Value::as_str);
        return Ok(ServiceAccountCaller::of(token)?.user(jti));
    }
    let m = provider
        .claim_mappings
        .as_ref()
        .ok_or_else(|| IdentityError::NoMappings(provider.name.clone()))?;
    let name = m
        .username
        .claim
        .lookup(&token.claims)
        .and_then(Value::as_str)
        .filter(|s| !s.is_empty())
        .ok_or_else(|| IdentityError::NoUsername(m.username.claim.to_string()))?;
    let username = format!("{}{name}", m.username.prefix);
    refuse_system(&username)?;
    let mut groups = Vec::new();
    if let Some(g) = &m.groups {
        let values: Vec<&str> = match g.claim.lookup(&token.claims) {
            None | Some(Value::Null) => Vec::new(),
            Some(Value::String(s)) => vec![s.as_str()],
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().ok_or_else(|| IdentityError::BadGroups(g.claim.to_string())))
                .collect::<Result<_, _>>()?,
            Some(_) => return Err(IdentityError::BadGroups(g.claim.to_string())),
        };
        for v in values {
            let group = format!("{}{v}", g.prefix);
            refuse_system(&group)?;
            groups.push(group);
        }
    }
    groups.push(AUTHENTICATED.into());
    Ok(KubeUser {
        username,
        uid: None,
        groups,
        extra: BTreeMap::new(),
    })
}

fn refuse_system(name: &str) -> Result<(), IdentityError> {
    if name.starts_with("system:") {
        Err(IdentityError::SystemName(name.to_string()))
    } else {
        Ok(())
    }
}
