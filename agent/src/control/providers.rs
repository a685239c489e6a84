//! The control plane's providers: one refresh task per provider; an
//! unchanged provider keeps its keys and task across reloads (its shared
//! secret is re-read), a new or changed one is built and started.

use std::collections::HashMap;
use std::sync::Arc;

use tokio::task::JoinHandle;

use super::supervisor::ControlError;
use crate::config::{Config, ProviderConfig};
use crate::provider::{Provider, ProviderMetricFamilies, Providers};

pub(super) struct ProviderTask {
    cfg: ProviderConfig,
    provider: Arc<Provider>,
    task: JoinHandle<()>,
}

/// The providers of `config`, and those that must be started.
pub(super) fn providers_for(
    running: &HashMap<String, ProviderTask>,
    metrics: &ProviderMetricFamilies,
    config: &Config,
    kube: Option<&kube::Client>,
) -> Result<(Providers, Vec<Arc<Provider>>), ControlError> {
    let mut providers = Providers::default();
    let mut started = Vec::new();
    for p in &config.providers {
        match running.get(&p.name) {
            Some(t) if t.cfg == *p => {
                t.provider.reload_secret()?;
                providers.insert(t.provider.clone());
            }
            _ => {
                let m = metrics.for_provider(&p.name);
                let provider = Arc::new(Provider::new(p.clone(), &config.state_dir, m, kube)?);
                providers.insert(provider.clone());
                started.push(provider);
            }
        }
    }
    Ok((providers, started))
}

/// Starts the refresh tasks of `started` (replacing older ones of the same
/// name) and stops those of providers `config` no longer has.
pub(super) fn restart(
    running: &mut HashMap<String, ProviderTask>,
    metrics: &ProviderMetricFamilies,
    started: Vec<Arc<Provider>>,
    config: &Config,
) {
    for p in started {
        let task = tokio::spawn(p.clone().refresh_loop());
        if let Some(old) = running.insert(
            p.cfg.name.clone(),
            ProviderTask {
                cfg: p.cfg.clone(),
                provider: p,
                task,
            },
        ) {
            old.task.abort();
        }
    }
    let gone: Vec<String> = running
        .keys()
        .filter(|n| !config.providers.iter().any(|p| &p.name == *n))
        .cloned()
        .collect();
    for name in gone {
        if let Some(t) = running.remove(&name) {
            t.task.abort();
            metrics.forget(&name);
        }
    }
}

/// Stops every refresh task.
pub(super) fn stop_all(running: &mut HashMap<String, ProviderTask>) {
    for (_, t) in running.drain() {
        t.task.abort();
    }
}
