//! The one place that creates channels and spawns stages, in flow order:
//! local broker (embedded, when configured) → ingest (event loop task → writer task) → store → detect
//! → forward → upstream broker; beside them the health and metrics endpoint.
//! A running agent also takes reloads of its device files, tells the
//! systemd watchdog whether its stages make progress, and gives up (exits,
//! to be started again) when its store fails every write.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinSet;
use tracing::{error, info, warn};

use crate::config::{Config, DeviceRegistry};
use crate::detect::{self, DetectMetrics};
use crate::forward::{self, ForwardMetrics};
use crate::ingest::{
    self, IngestMetrics, MemoryBudget, WriterConfig, INBOUND_CAPACITY, MEMORY_BUDGET_BYTES,
};
use crate::ops::health::{supervise, StoreWrites, STORE_FAILING_EXIT_AFTER};
use crate::ops::{self, Health, Observed, ReloadMetrics, Stage};
use crate::store::{Store, StoreError};

/// How long stages get to finish after a shutdown request. With the final
/// flush (at most 1 s) and the runtime's own grace (0.5 s) vigil exits within 5 s.
pub const SHUTDOWN_TIMEOUT: Duration = Duration::from_millis(3500);

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    // The store error is part of the message, not a `source`: printed as
    // a chain, it would repeat.
    #[error("cannot open the store at {path}: {error}")]
    Store { path: String, error: StoreError },
    #[error("cannot flush the store at {path} at shutdown: {error}")]
    Flush { path: String, error: StoreError },
    #[error(transparent)]
    Mqtt(#[from] ingest::MqttError),
    #[error(transparent)]
    Forward(#[from] forward::ForwardError),
    #[error(transparent)]
    Broker(#[from] crate::broker::BrokerError),
    #[error("a stage failed: {0}")]
    Join(#[from] tokio::task::JoinError),
    #[error(
        "cannot listen on {addr} for the health and metrics endpoint ([http] listen): {source}"
    )]
    Http {
        addr: SocketAddr,
        source: std::io::Error,
    },
}

/// A running agent: its store, its live metrics, and the handle to stop it.
pub struct Running {
    store: Store,
    store_path: String,
    metrics: Arc<IngestMetrics>,
    detect_metrics: Arc<DetectMetrics>,
    forward_metrics: Arc<ForwardMetrics>,
    health: Arc<Health>,
    reloads: Arc<ReloadMetrics>,
    registry_tx: watch::Sender<DeviceRegistry>,
    /// The configuration in force (device files included).
    config: Config,
    http_addr: Option<SocketAddr>,
    /// The watchdog pings stopped (logged once until they resume).
    watchdog_held: bool,
    /// Store writes fail (logged once until they work again).
    store_failing: bool,
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Open the store and start every stage.
pub async fn start(config: &Config) -> Result<Running, AppError> {
    let store_path = config.store.path.display().to_string();
    let store_err = |error| AppError::Store {
        path: store_path.clone(),
        error,
    };
    let store_config = config.store.clone();
    let store = tokio::task::spawn_blocking(move || Store::open(&store_config))
        .await?
        .map_err(store_err)?;
    let health = Arc::new(Health::default());
    health.watch_store(store.clone());
    let stats = store.stats().map_err(store_err)?;
    info!(
        path = %config.store.path.display(),
        readings = stats.readings,
        used_bytes = store.used_bytes(),
        detection_cursor = stats.detection_cursor,
        budget_bytes = stats.budget_bytes,
        "store open"
    );

    // Bound before any stage starts, so that a taken port fails the start.
    let listener = match config.http {
        Some(addr) => Some(
            tokio::net::TcpListener::bind(addr)
                .await
                .map_err(|source| AppError::Http { addr, source })?,
        ),
        None => None,
    };
    let http_addr = listener.as_ref().and_then(|l| l.local_addr().ok());

    // The sensors' broker, when vigil hosts it, before ingest connects to it.
    if let Some(embedded) = &config.embedded_broker {
        let embedded = embedded.clone();
        tokio::task::spawn_blocking(move || crate::broker::start(&embedded)).await??;
    }

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

    tasks.spawn(supervise(
        health.clone(),
        Stage::Ingest,
        ingest::run_mqtt(ingest::MqttTask {
            eventloop,
            client: client.clone(),
            broker: config.broker.clone(),
            subscriptions: config.subscriptions.clone().into(),
            inbound_tx,
            memory: memory.clone(),
            shutdown: shutdown_rx.clone(),
            writer_done: writer_done_rx,
            metrics: metrics.clone(),
            health: health.clone(),
        }),
    ));
    tasks.spawn(supervise(
        health.clone(),
        Stage::Writer,
        ingest::run_writer(ingest::WriterTask {
            store: store.clone(),
            acker: client,
            inbound_rx,
            memory,
            config: writer_config,
            shutdown: shutdown_rx.clone(),
            done_tx: writer_done_tx,
            metrics: metrics.clone(),
            committed_tx,
            health: health.clone(),
        }),
    ));

    // Detect: tails the readings log (woken by each commit) → outbox.
    let detect_metrics = Arc::new(DetectMetrics::default());
    let (outbox_tx, outbox_rx) = watch::channel(0u64);
    let (registry_tx, registry_rx) = watch::channel(config.devices.clone());
    tasks.spawn(supervise(
        health.clone(),
        Stage::Detect,
        detect::run_stage(detect::DetectTask {
            store: store.clone(),
            registry_rx,
            committed_rx,
            outbox_tx,
            shutdown: shutdown_rx.clone(),
            metrics: detect_metrics.clone(),
            health: health.clone(),
            checkpoint_interval: config.store.checkpoint_interval,
        }),
    ));

    // Forward: outbox (woken by each detection commit) → upstream broker.
    let forward_metrics = Arc::new(ForwardMetrics::default());
    match &config.upstream {
        Some(upstream) => {
            let (client, eventloop) = forward::connect(upstream)?;
            tasks.spawn(supervise(
                health.clone(),
                Stage::Forward,
                forward::run(forward::Task {
                    store: store.clone(),
                    config: upstream.clone(),
                    gateway_id: config.gateway_id.clone(),
                    eventloop,
                    client,
                    outbox_rx,
                    shutdown: shutdown_rx.clone(),
                    metrics: forward_metrics.clone(),
                    health: health.clone(),
                }),
            ));
        }
        None => info!("no [upstream] configured: alerts and aggregates stay in the outbox"),
    }

    // Health and metrics: reads what the stages share, never changes it.
    let reloads = Arc::new(ReloadMetrics::default());
    if let Some(listener) = listener {
        let observed = Observed {
            gateway_id: config.gateway_id.clone(),
            store: store.clone(),
            health: health.clone(),
            ingest: metrics.clone(),
            detect: detect_metrics.clone(),
            forward: forward_metrics.clone(),
            reloads: reloads.clone(),
        };
        tasks.spawn(ops::http::serve(listener, observed, shutdown_rx));
    }

    Ok(Running {
        store,
        store_path,
        metrics,
        detect_metrics,
        forward_metrics,
        health,
        reloads,
        registry_tx,
        config: config.clone(),
        http_addr,
        watchdog_held: false,
        store_failing: false,
        shutdown_tx,
        tasks,
    })
}

/// The sections of `vigil.toml` that a reload does not apply.
fn needs_restart(old: &Config, new: &Config) -> Vec<&'static str> {
    let mut changed = Vec::new();
    let mut check = |name, a: String, b: String| {
        if a != b {
            changed.push(name);
        }
    };
    check("gateway_id", old.gateway_id.clone(), new.gateway_id.clone());
    check("log_level", old.log_level.clone(), new.log_level.clone());
    check(
        "broker",
        format!("{:?}", old.broker),
        format!("{:?}", new.broker),
    );
    check(
        "subscriptions",
        format!("{:?}", old.subscriptions),
        format!("{:?}", new.subscriptions),
    );
    check(
        "store",
        format!("{:?}", old.store),
        format!("{:?}", new.store),
    );
    check(
        "upstream",
        format!("{:?}", old.upstream),
        format!("{:?}", new.upstream),
    );
    check("http", format!("{:?}", old.http), format!("{:?}", new.http));
    check(
        "devices_dir",
        format!("{:?}", old.devices_dir),
        format!("{:?}", new.devices_dir),
    );
    changed
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

    pub fn health(&self) -> &Arc<Health> {
        &self.health
    }

    /// Where the health and metrics endpoint listens, if it does.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http_addr
    }

    /// Re-read the configuration at `path` and apply its device files: a
    /// stream whose settings changed uses them from its next window, the
    /// others keep everything. An invalid configuration changes nothing.
    /// Returns whether the new device files were applied.
    pub fn reload(&mut self, path: &Path) -> bool {
        let new = match crate::config::load(path) {
            Ok(c) => c,
            Err(errors) => {
                for e in &errors.0 {
                    error!("{e}");
                }
                error!(
                    errors = errors.0.len(),
                    config = %path.display(),
                    "reload rejected: the configuration has errors; the one in force stays"
                );
                self.reloads.rejected.fetch_add(1, Ordering::Relaxed);
                return false;
            }
        };
        let restart = needs_restart(&self.config, &new);
        if !restart.is_empty() {
            warn!(
                sections = %restart.join(", "),
                "these settings changed but apply only after a restart (systemctl restart vigil); the device files are reloaded now"
            );
        }
        let files = new.devices.classes().len();
        if new.devices == self.config.devices {
            info!(
                device_files = files,
                "reload: the device files are unchanged"
            );
        } else {
            info!(device_files = files, config = %path.display(), "reload: applying the new device files from the next batch");
            // Detection holds the receiver until shutdown.
            let _ = self.registry_tx.send(new.devices.clone());
        }
        self.config.devices = new.devices;
        self.reloads.applied.fetch_add(1, Ordering::Relaxed);
        true
    }

    /// Called at half the watchdog interval: ping systemd while every
    /// stage makes progress; stop (and say why, once) when one does not.
    pub fn watchdog(&mut self) {
        match self.health.verdict() {
            Ok(()) => {
                if self.watchdog_held {
                    info!("every stage makes progress again; watchdog pings resume");
                    self.watchdog_held = false;
                }
                ops::notify::watchdog();
            }
            Err(reasons) => {
                if !self.watchdog_held {
                    error!(reasons = %reasons.join("; "), "watchdog pings stopped; systemd restarts vigil if this lasts");
                    ops::notify::status(&format!("not ready: {}", reasons.join("; ")));
                    self.watchdog_held = true;
                }
            }
        }
    }

    /// Called every second: say once (at ERROR, and to systemd) that the
    /// store fails every write, and when it works again. Returns why vigil
    /// must exit once it has failed for [`STORE_FAILING_EXIT_AFTER`].
    pub fn check_store(&mut self) -> Option<String> {
        match self.health.store_writes() {
            StoreWrites::Working => {
                if std::mem::take(&mut self.store_failing) {
                    info!(path = %self.store_path, "store writes work again; vigil is ready");
                }
                None
            }
            StoreWrites::Failing(reason) => {
                if !self.store_failing {
                    self.store_failing = true;
                    error!(
                        %reason,
                        path = %self.store_path,
                        "the store fails every write: vigil is not ready and acknowledges nothing; if no write works within {} s it exits, to be started again with the store reopened",
                        STORE_FAILING_EXIT_AFTER.as_secs()
                    );
                    ops::notify::status(&format!("not ready: {reason}"));
                }
                None
            }
            StoreWrites::GivenUp(reason) => {
                error!(
                    %reason,
                    path = %self.store_path,
                    "vigil exits so that it is started again with the store reopened (systemd: Restart=on-failure); the messages it did not acknowledge stay with the broker"
                );
                Some(reason)
            }
        }
    }

    /// Ask every stage to finish its current batch, then wait for them.
    pub async fn shutdown(mut self) -> Result<(), AppError> {
        self.health.set_stopping();
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
            Ok(joined) => joined?.map_err(|error| AppError::Flush {
                path: self.store_path.clone(),
                error,
            })?,
            Err(_) => warn!("the final store flush did not finish in time"),
        }
        Ok(())
    }
}
