//! The one place that creates channels and spawns stages, in flow order:
//! local broker → ingest (event loop task → writer task) → store → detect
//! → forward → upstream broker.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{info, warn};

use crate::config::Config;
use crate::detect::{self, DetectMetrics};
use crate::forward::{self, ForwardMetrics};
use crate::ingest::{
    self, IngestMetrics, MemoryBudget, WriterConfig, INBOUND_CAPACITY, MEMORY_BUDGET_BYTES,
};
use crate::store::{Store, StoreError};

/// How long stages get to finish after a shutdown request. With the final
/// flush (at most 1 s) and the runtime's own grace (0.5 s) vigil exits within 5 s.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(3500);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    #[error("cannot open the store at {path}: {source}")]
    Store { path: String, source: StoreError },
    #[error(transparent)]
    Mqtt(#[from] ingest::MqttError),
    #[error(transparent)]
    Forward(#[from] forward::ForwardError),
    #[error("a stage failed: {0}")]
    Join(#[from] tokio::task::JoinError),
}

/// A running agent: its store, its live metrics, and the handle to stop it.
pub struct Running {
    store: Store,
    store_path: String,
    metrics: Arc<IngestMetrics>,
    detect_metrics: Arc<DetectMetrics>,
    forward_metrics: Arc<ForwardMetrics>,
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Open the store and start every stage.
pub async fn start(config: &Config) -> Result<Running, AppError> {
    let store_path = config.store.path.display().to_string();
    let store_err = |source| AppError::Store {
        path: store_path.clone(),
        source,
    };
    let store_config = config.store.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&store_config))
        .await?
        .map_err(store_err)?;
    let stats = store.stats().map_err(store_err)?;
    info!(
        path = %config.store.path.display(),
        readings = stats.readings,
        used_bytes = store.used_bytes(),
        detection_cursor = stats.detection_cursor,
        budget_bytes = stats.budget_bytes,
        "store open"
    );

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let metrics = Arc::new(IngestMetrics::default());
    let mut tasks = JoinSet::new();

    // Ingest: event loop task → (inbound channel) → writer task → store.
    let writer_config = WriterConfig {
        flush_interval: config.store.flush_interval,
        flush_max_readings: config.store.flush_max_readings,
    };
    let (client, eventloop) = ingest::connect(&config.broker)?;
    let memory = MemoryBudget::new(MEMORY_BUDGET_BYTES);
    let (inbound_tx, inbound_rx) = mpsc::channel(INBOUND_CAPACITY);
    let (writer_done_tx, writer_done_rx) = oneshot::channel();
    let (committed_tx, committed_rx) = watch::channel(stats.next_seq);

    tasks.spawn(ingest::run_mqtt(ingest::MqttTask {
        eventloop,
        client: client.clone(),
        broker: config.broker.clone(),
        subscriptions: config.subscriptions.clone().into(),
        inbound_tx,
        memory: memory.clone(),
        shutdown: shutdown_rx.clone(),
        writer_done: writer_done_rx,
        metrics: metrics.clone(),
    }));
    tasks.spawn(ingest::run_writer(ingest::WriterTask {
        store: store.clone(),
        acker: client,
        inbound_rx,
        memory,
        config: writer_config,
        shutdown: shutdown_rx.clone(),
        done_tx: writer_done_tx,
        metrics: metrics.clone(),
        committed_tx,
    }));

    // Detect: tails the readings log (woken by each commit) → outbox.
    let detect_metrics = Arc::new(DetectMetrics::default());
    let (outbox_tx, outbox_rx) = watch::channel(0u64);
    tasks.spawn(detect::run_stage(detect::DetectTask {
        store: store.clone(),
        registry: config.devices.clone(),
        committed_rx,
        outbox_tx,
        shutdown: shutdown_rx.clone(),
        metrics: detect_metrics.clone(),
    }));

    // Forward: outbox (woken by each detection commit) → upstream broker.
    let forward_metrics = Arc::new(ForwardMetrics::default());
    match &config.upstream {
        Some(upstream) => {
            let (client, eventloop) = forward::connect(upstream)?;
            tasks.spawn(forward::run(forward::Task {
                store: store.clone(),
                config: upstream.clone(),
                gateway_id: config.gateway_id.clone(),
                eventloop,
                client,
                outbox_rx,
                shutdown: shutdown_rx,
                metrics: forward_metrics.clone(),
            }));
        }
        None => info!("no [upstream] configured: alerts and aggregates stay in the outbox"),
    }

    Ok(Running {
        store,
        store_path,
        metrics,
        detect_metrics,
        forward_metrics,
        shutdown_tx,
        tasks,
    })
}

impl Running {
    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn metrics(&self) -> &Arc<IngestMetrics> {
        &self.metrics
    }

    pub fn detect_metrics(&self) -> &Arc<DetectMetrics> {
        &self.detect_metrics
    }

    pub fn forward_metrics(&self) -> &Arc<ForwardMetrics> {
        &self.forward_metrics
    }

    /// Ask every stage to finish its current batch, then wait for them.
    pub async fn shutdown(mut self) -> Result<(), AppError> {
        let _ = self.shutdown_tx.send(true);
        let wait = async {
            while let Some(r) = self.tasks.join_next().await {
                r?;
            }
            Ok::<(), AppError>(())
        };
        match tokio::time::timeout(SHUTDOWN_TIMEOUT, wait).await {
            Ok(r) => r?,
            Err(_) => {
                warn!("stages did not stop in time; unacknowledged messages will be redelivered");
                self.tasks.abort_all();
            }
        }
        // Every commit already flushed; this is for anything sled still buffers.
        let store = self.store.clone();
        let flush = tokio::task::spawn_blocking(move || store.flush());
        match tokio::time::timeout(Duration::from_secs(1), flush).await {
            Ok(joined) => joined?.map_err(|source| AppError::Store {
                path: self.store_path.clone(),
                source,
            })?,
            Err(_) => warn!("the final store flush did not finish in time"),
        }
        Ok(())
    }
}

/// Run until `stop` completes, then shut down cleanly.
pub async fn run(
    config: &Config,
    stop: impl std::future::Future<Output = ()>,
) -> Result<(), AppError> {
    let running = start(config).await?;
    stop.await;
    info!("shutting down");
    running.shutdown().await
}
