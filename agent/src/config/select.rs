//! Which policy a workload (a static one of the file, or a pod) is bound to.
//! One rule for both: the policy it names, else the one policy whose
//! selector its labels match. Two matching policies are a conflict, never
//! "first wins": a static workload is then a configuration error, a pod is
//! enrolled deny-all and the conflict reported.

use std::collections::BTreeMap;

use super::PolicyConfig;

/// Why no single policy binds.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unbound {
    #[error("no policy named {0:?}")]
    NotFound(String),
    #[error("no policy selects its labels")]
    NoneSelects,
    #[error("several policies select it: {}", .0.join(", "))]
    Ambiguous(Vec<String>),
}

/// The policy named by `explicit`, else the single one whose selector `labels` match.
pub fn select_policy<'p>(
    policies: &'p [PolicyConfig],
    labels: &BTreeMap<String, String>,
    explicit: Option<&str>,
) -> Result<&'p PolicyConfig, Unbound> {
    if let Some(name) = explicit {
        return policies
            .iter()
            .find(|p| p.name == name)
            .ok_or_else(|| Unbound::NotFound(name.to_string()));
    }
    let mut matching = policies
        .iter()
        .filter(|p| p.selector.iter().all(|(k, v)| labels.get(k) == Some(v)));
    match (matching.next(), matching.next()) {
        (Some(p), None) => Ok(p),
        (None, _) => Err(Unbound::NoneSelects),
        (Some(a), Some(b)) => Err(Unbound::Ambiguous(
            [a, b].into_iter().chain(matching).map(|p| p.name.clone()).collect(),
        )),
    }
}
