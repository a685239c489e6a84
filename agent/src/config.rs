//! The configuration file: its typed model, the pure parser that turns YAML
//! text into a validated [`Config`], and the errors that name the file, the
//! key and the reason.
//!
//! This module does not touch the network or the clock: loading a file and
//! reacting to changes live in `reload.rs`, turning a [`Config`] into running
//! state lives in `snapshot.rs` and `control/`.

mod claim_path;
mod egress;
mod model;
mod policy;
mod provider;
mod resource;
mod schema;
mod select;
mod validate;

pub use claim_path::ClaimPath;
pub use egress::*;
pub use model::*;
pub use policy::*;
pub use provider::*;
pub use resource::{BearerMethod, METADATA_PATH, ProtectedResourceConfig};
pub use select::{Unbound, select_policy};
pub use validate::{RESERVED_HEADERS, bound_policy, url_allowed};

use std::path::{Path, PathBuf};

/// A configuration that cannot be used. Every variant says where and why.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{file}: cannot read: {source}")]
    Read {
        file: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{file}: key `{key}`: {reason}")]
    Invalid { file: PathBuf, key: String, reason: String },
}

impl ConfigError {
    pub(crate) fn invalid(file: &Path, key: impl Into<String>, reason: impl Into<String>) -> Self {
        Self::Invalid {
            file: file.to_path_buf(),
            key: key.into(),
            reason: reason.into(),
        }
    }
}

impl Config {
    /// Reads and validates a configuration file.
    pub fn load(file: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(file).map_err(|source| ConfigError::Read {
            file: file.to_path_buf(),
            source,
        })?;
        Self::parse(&text, file)
    }

    /// Parses and validates configuration text; `file` only names the source in errors.
    /// `kubernetes.node_name` defaults to the `NODE_NAME` environment variable.
    pub fn parse(text: &str, file: &Path) -> Result<Self, ConfigError> {
        Self::parse_with_env(text, file, |k| std::env::var(k).ok())
    }

    /// [`Config::parse`] with the environment injected, so tests need not touch the process's.
    pub fn parse_with_env(text: &str, file: &Path, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let de = serde_yaml_ng::Deserializer::from_str(text);
        let mut config: Config = serde_path_to_error::deserialize(de).map_err(|e| {
            let key = e.path().to_string();
            let key = if key == "." { "(top level)".to_string() } else { key };
            ConfigError::invalid(file, key, strip_location(&e.into_inner().to_string()))
        })?;
        if config.kubernetes.enabled && config.kubernetes.node_name.is_none() {
            config.kubernetes.node_name = env("NODE_NAME").filter(|n| !n.is_empty());
        }
        validate::validate(&config, file)?;
        Ok(config)
    }

    /// A policy given apart from the file (an IdentityPolicy's spec, as
    /// JSON, `name` from its metadata), parsed and checked by the same code
    /// as the file's policies against this configuration's providers. Keys
    /// in errors start at `spec.`; `source` names the object.
    pub fn parse_policy(
        &self,
        name: &str,
        spec: &serde_json::Value,
        source: &Path,
    ) -> Result<PolicyConfig, ConfigError> {
        let Some(fields) = spec.as_object() else {
            return Err(ConfigError::invalid(source, "spec", "must be an object"));
        };
        if fields.contains_key("name") {
            return Err(ConfigError::invalid(
                source,
                "spec.name",
                "unknown field: the policy's name is its metadata.name",
            ));
        }
        let mut fields = fields.clone();
        fields.insert("name".into(), serde_json::Value::String(name.to_string()));
        let policy: PolicyConfig =
            serde_path_to_error::deserialize(serde_json::Value::Object(fields)).map_err(|e| {
                let key = e.path().to_string();
                let key = if key == "." {
                    "spec".to_string()
                } else {
                    format!("spec.{key}")
                };
                ConfigError::invalid(source, key, strip_location(&e.into_inner().to_string()))
            })?;
        validate::policy(self, &policy)
            .and_then(|()| validate::resource_policy(&policy))
            .map_err(|(key, reason)| ConfigError::invalid(source, format!("spec.{key}"), reason))?;
        Ok(policy)
    }

    /// The effective configuration, defaults filled in, as YAML.
    pub fn to_yaml(&self) -> String {
        serde_yaml_ng::to_string(self).unwrap_or_else(|e| format!("# cannot render: {e}\n"))
    }
}

/// serde_yaml prefixes its messages with its own rendering of the path
/// (`providers[0]: unknown field ...`); the key is already reported, so drop
/// a leading path-like token. "at line X column Y" stays: it helps.
fn strip_location(msg: &str) -> String {
    let msg = msg.trim();
    if let Some((head, rest)) = msg.split_once(": ")
        && !head.is_empty()
        && head.chars().all(|c| c.is_ascii_alphanumeric() || "_.[]-".contains(c))
        && head.contains(['.', '['])
    {
        return rest.to_string();
    }
    msg.to_string()
}

#[cfg(test)]
mod tests;
