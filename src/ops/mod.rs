//! Operating vigil on a gateway: health of the stages, the HTTP endpoint
//! (`/healthz`, `/readyz`, `/metrics`), systemd notifications (readiness,
//! reload, watchdog) and the summary `vigil status` prints.

pub mod health;
pub mod http;
pub mod metrics;
pub mod notify;
pub mod status;

use std::sync::atomic::AtomicU64;
use std::sync::Arc;

use crate::detect::DetectMetrics;
use crate::forward::ForwardMetrics;
use crate::ingest::IngestMetrics;
use crate::store::Store;

pub use health::{Busy, Health, Stage};

/// Reloads of the device files.
#[derive(Debug, Default)]
pub struct ReloadMetrics {
    pub applied: AtomicU64,
    pub rejected: AtomicU64,
}

/// Everything the endpoint reports on, shared with the stages.
#[derive(Clone)]
pub struct Observed {
    pub gateway_id: String,
    pub store: Store,
    pub health: Arc<Health>,
    pub ingest: Arc<IngestMetrics>,
    pub detect: Arc<DetectMetrics>,
    pub forward: Arc<ForwardMetrics>,
    pub reloads: Arc<ReloadMetrics>,
}
