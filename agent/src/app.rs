//! Wiring, and nothing else: the shared request context, the control plane,
//! the admin server, started in order and stopped in reverse. Only `main`
//! (and the testkit's in-process agent) use it.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::task::JoinHandle;

use crate::admin;
use crate::audit::Audit;
use crate::config::Config;
use crate::control::{Control, ControlError};
use crate::credentials::Credentials;
use crate::drain;
use crate::k8s::review::Reviews;
use crate::metrics::Metrics;
use crate::proxy::Context;
use crate::readiness::Readiness;
use crate::snapshot::Snapshot;
use crate::token_cache::TokenCache;

#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    #[error("cannot register metrics: {0}")]
    Metrics(#[from] prometheus::Error),
    #[error("cannot listen on {addr} for the admin server: {source}")]
    Admin {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error(transparent)]
    Control(#[from] ControlError),
    #[error(transparent)]
    Kube(#[from] crate::k8s::KubeError),
}

/// A running agent.
pub struct Agent {
    control: Arc<Control>,
    kube: Option<kube::Client>,
    metrics: Arc<Metrics>,
    admin_addr: SocketAddr,
    admin_drain: drain::Trigger,
    admin_task: JoinHandle<()>,
}

/// What the admin server shows: metrics refreshed at scrape time, readiness.
struct Status {
    control: Arc<Control>,
    metrics: Arc<Metrics>,
}

impl admin::Status for Status {
    fn metrics(&self) -> Vec<u8> {
        self.control.observe();
        self.metrics.audit.observe(&self.control.context().audit);
        self.metrics.render()
    }

    fn not_ready(&self) -> Vec<String> {
        self.control.not_ready()
    }
}

impl Agent {
    /// Starts everything `config` describes, audit lines going to `audit`.
    /// Fails if a listener cannot bind.
    pub async fn start(config: Config, audit: Audit) -> Result<Self, AgentError> {
        let metrics = Arc::new(Metrics::new()?);
        let admin_listener = tokio::net::TcpListener::bind(config.admin)
            .await
            .map_err(|source| AgentError::Admin {
                addr: config.admin,
                source,
            })?;
        let admin_addr = admin_listener.local_addr().unwrap_or(config.admin);
        // One API client for the pod watch, service-account providers and reviews.
        let kube = match config.kubernetes.api() {
            true => Some(crate::k8s::client(&config.kubernetes).await?),
            false => None,
        };
        let reviews = kube
            .clone()
            .map(|c| Reviews::new(c, &config.kubernetes.rbac, metrics.kubernetes.clone()));
        let credentials = Credentials::new(kube.clone(), metrics.credentials.clone());
        let ctx = Arc::new(Context::new(
            Snapshot::empty(config.clone()),
            TokenCache::new(&config.token_cache),
            metrics.proxy.clone(),
            audit,
            reviews,
            credentials,
        ));
        let control = Arc::new(Control::new(
            ctx,
            metrics.control.clone(),
            metrics.providers.clone(),
            Readiness::default(),
            &config,
            kube.clone(),
        ));
        let (admin_drain, watch) = drain::channel();
        let status = Arc::new(Status {
            control: control.clone(),
            metrics: metrics.clone(),
        });
        let admin_task = tokio::spawn(admin::serve(admin_listener, status, watch));
        control.adopt_pinned_state(&config);
        control.apply(config).await?;
        tracing::info!(admin = %admin_addr, "nodeward started");
        Ok(Self {
            control,
            kube,
            metrics,
            admin_addr,
            admin_drain,
            admin_task,
        })
    }

    pub fn control(&self) -> &Arc<Control> {
        &self.control
    }

    /// The Kubernetes API client, when the configuration asks for the API.
    pub fn kube(&self) -> Option<&kube::Client> {
        self.kube.as_ref()
    }

    pub fn metrics(&self) -> &Metrics {
        &self.metrics
    }

    pub fn admin_addr(&self) -> SocketAddr {
        self.admin_addr
    }

    /// See [`Control::workload_addr`].
    pub fn workload_addr(&self, name: &str) -> Option<SocketAddr> {
        self.control.workload_addr(name)
    }

    /// Applies a new configuration (a reload).
    pub async fn apply(&self, config: Config) -> Result<(), ControlError> {
        self.control.apply(config).await
    }

    /// Why the agent is not ready; empty when it is.
    pub fn not_ready(&self) -> Vec<String> {
        self.control.not_ready()
    }

    /// Stops accepting, drains in-flight requests (bounded), stops refreshes
    /// and the admin server. Steered workloads stay enrolled (fail closed).
    pub async fn shutdown(self) {
        self.control.shutdown().await;
        self.admin_drain.signal();
        let _ = self.admin_task.await;
    }

    /// Un-enrols every steered workload (an operator's uninstall, or a test's
    /// cleanup), then shuts down.
    pub async fn unenrol_all_and_shutdown(self) {
        self.control.unenrol_all().await;
        self.shutdown().await;
    }
}
