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

use crate::config::{BrokerConfig, Config, Credentials, DeviceRegistry, UpstreamConfig};
use crate::detect::{self, DetectMetrics};
use crate::forward::{self, ForwardMetrics};
use crate::ingest::{
    self, IngestMetrics, MemoryBudget, WriterConfig, INBOUND_CAPACITY, MEMORY_BUDGET_BYTES,
};
use crate::ops::health::{supervise, StoreWrites, STORE_FAILING_EXIT_AFTER};
use crate::ops::{self, Health, Observed, ReloadMetrics, Stage};
use crate::store::{Checker, Recovery, Store, StoreError};

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
    /// The store was damaged and moved aside at this start.
    recovery: Option<Recovery>,
    shutdown_tx: watch::Sender<bool>,
    tasks: JoinSet<()>,
}

/// Open the store and start every stage. A damaged store that sled reports
/// as such is moved aside for a fresh one; one that panics sled ends the
/// process (see [`start_checked`]).
pub async fn start(config: &Config) -> Result<Running, AppError> {
    start_checked(config, None).await
}

/// Like [`start`], with the store checked first by `checker` in a child
/// process, so that a store on which sled panics is moved aside too
/// (`store/check.rs`): what `vigil run` does.
pub async fn start_checked(config: &Config, checker: Option<Checker>) -> Result<Running, AppError> {
    let store_path = config.store.path.display().to_string();
    let store_err = |error| AppError::Store {
        path: store_path.clone(),
        error,
    };
    let store_config = config.store.clone();
    let (store, recovery) = tokio::task::spawn_blocking(move || {
        // Reading a large store takes a while: systemd's start timeout is
        // pushed back while the check makes progress.
        let mut progress = || ops::notify::extend_start(crate::store::check::STALL * 2);
        progress();
        crate::store::open_or_recover(
            &store_config,
            checker.as_ref(),
            &mut progress,
            crate::model::wall_ms(),
        )
    })
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
        recovered = recovery.is_some(),
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

    // The sensors' broker, when vigil hosts it, before ingest connects to
    // it; vigil's own connections to it become insiders (`broker::Insiders`).
    let mut local_broker = config.broker.clone();
    let mut upstream = config.upstream.clone();
    if let Some(embedded) = &config.embedded_broker {
        let insiders = crate::broker::Insiders::draw()?;
        let (e, i) = (embedded.clone(), insiders.clone());
        let running = tokio::task::spawn_blocking(move || crate::broker::start(&e, &i)).await??;
        let connections =
            std::iter::once(&mut local_broker).chain(upstream.as_mut().map(|u| &mut u.connection));
        for c in connections {
            if embedded.serves(&c.host, c.port) {
                insiders.admit(c, running.local());
            }
        }
    }

    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    // The device files: detection, and ingest with `devices_known_only`;
    // SIGHUP sends new ones.
    let (registry_tx, registry_rx) = watch::channel(config.devices.clone());
    let metrics = Arc::new(IngestMetrics::default());
    let mut tasks = JoinSet::new();

    // Ingest: event loop task → (inbound channel) → writer task → store.
    let writer_config = WriterConfig {
        flush_interval: config.store.flush_interval,
        flush_max_readings: config.store.flush_max_readings,
    };
    let (client, eventloop) = ingest::connect(&local_broker)?;
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
            broker: local_broker,
            subscriptions: config.subscriptions.clone().into(),
            max_future_skew_ms: config.detect.max_future_skew_ms,
            known_devices: config
                .detect
                .devices_known_only
                .then(|| registry_rx.clone()),
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
            max_future_skew_ms: config.detect.max_future_skew_ms,
            stream_limits: detect::StreamLimits {
                max_streams: config.detect.max_streams,
                idle_ms: config.detect.stream_idle_ms,
            },
            alert_storm_per_minute: config.detect.alert_storm_per_minute,
        }),
    ));

    // Forward: outbox (woken by each detection commit) → upstream broker.
    let forward_metrics = Arc::new(ForwardMetrics::default());
    match &upstream {
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
        recovery,
        shutdown_tx,
        tasks,
    })
}

/// The settings of `vigil.toml` that a reload does not apply and that
/// changed: compared by value (a new password counts), named by key for the
/// two connections and by section otherwise, never with their values (no
/// secret reaches the log).
fn needs_restart(old: &Config, new: &Config) -> Vec<String> {
    fn check(key: &str, differs: bool, changed: &mut Vec<String>) {
        if differs {
            changed.push(key.to_string());
        }
    }
    let mut changed = Vec::new();
    check("gateway_id", old.gateway_id != new.gateway_id, &mut changed);
    check("log_level", old.log_level != new.log_level, &mut changed);
    connection_changes("broker", &old.broker, &new.broker, &mut changed);
    check(
        "subscriptions",
        old.subscriptions != new.subscriptions,
        &mut changed,
    );
    check("store", old.store != new.store, &mut changed);
    match (&old.upstream, &new.upstream) {
        (Some(a), Some(b)) => {
            // Everything but the connection, which is compared key by key.
            let rest = UpstreamConfig {
                connection: b.connection.clone(),
                ..a.clone()
            };
            check("upstream", rest != *b, &mut changed);
            connection_changes("upstream", &a.connection, &b.connection, &mut changed);
        }
        (a, b) => check("upstream", a != b, &mut changed),
    }
    check("http", old.http != new.http, &mut changed);
    check("detect", old.detect != new.detect, &mut changed);
    check(
        "embedded_broker",
        old.embedded_broker != new.embedded_broker,
        &mut changed,
    );
    check(
        "devices_dir",
        old.devices_dir != new.devices_dir,
        &mut changed,
    );
    changed
}

/// The keys of one connection (`broker` or `upstream`) that differ.
fn connection_changes(
    section: &str,
    old: &BrokerConfig,
    new: &BrokerConfig,
    out: &mut Vec<String>,
) {
    // Destructured, so that a new setting cannot be left out of the comparison.
    let BrokerConfig {
        host,
        port,
        client_id,
        keepalive,
        credentials,
        tls,
        max_payload_bytes,
        reconnect_min,
        reconnect_max,
    } = old;
    let username = |c: &Option<Credentials>| c.as_ref().map(|c| c.username.clone());
    let password = |c: &Option<Credentials>| c.as_ref().and_then(|c| c.password.clone());
    let keys = [
        ("host", *host != new.host),
        ("port", *port != new.port),
        ("client_id", *client_id != new.client_id),
        ("keepalive_s", *keepalive != new.keepalive),
        (
            "username",
            username(credentials) != username(&new.credentials),
        ),
        (
            "password",
            password(credentials) != password(&new.credentials),
        ),
        ("tls", *tls != new.tls),
        (
            "max_payload_bytes",
            *max_payload_bytes != new.max_payload_bytes,
        ),
        ("reconnect_min_ms", *reconnect_min != new.reconnect_min),
        ("reconnect_max_ms", *reconnect_max != new.reconnect_max),
    ];
    for (key, differs) in keys {
        if differs {
            out.push(format!("{section}.{key}"));
        }
    }
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

    /// Set when the store was damaged and moved aside at this start.
    pub fn recovery(&self) -> Option<&Recovery> {
        self.recovery.as_ref()
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
                changed = %restart.join(", "),
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

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::{Credentials, EmbeddedBrokerConfig};

    fn config() -> Config {
        let text = "gateway_id = \"gw-1\"\n[broker]\nhost = \"127.0.0.1\"\nport = 1884\nusername = \"vigil\"\npassword = \"old secret\"\nallow_plaintext_credentials = true\n[[subscriptions]]\ntemplate = \"plant/{device}/{metric}\"\n[store]\npath = \"store\"\n[upstream]\nhost = \"127.0.0.2\"\nusername = \"gw\"\npassword = \"old secret\"\nallow_plaintext_credentials = true\n[embedded_broker]\nenabled = true\n";
        let mut errors = Vec::new();
        let dir = tempfile::tempdir().unwrap();
        let c = crate::config::from_str(&dir.path().join("vigil.toml"), text.into(), &mut errors);
        assert!(errors.is_empty(), "{errors:?}");
        c.unwrap()
    }

    #[test]
    fn a_password_change_needs_a_restart() {
        let old = config();
        let mut new = old.clone();
        new.broker.credentials = Some(Credentials {
            username: "vigil".into(),
            password: Some("new secret".into()),
        });
        let upstream = new.upstream.as_mut().unwrap();
        upstream.connection.credentials = Some(Credentials {
            username: "gw".into(),
            password: Some("new secret".into()),
        });
        let changed = needs_restart(&old, &new);
        assert_eq!(changed, ["broker.password", "upstream.password"]);
        // The names of what changed are logged; the secrets never are.
        assert!(changed.iter().all(|k| !k.contains("secret")));
    }

    #[test]
    fn an_embedded_broker_change_needs_a_restart() {
        let old = config();
        let mut new = old.clone();
        let queue_bytes = 64 << 20;
        new.embedded_broker = Some(EmbeddedBrokerConfig {
            queue_bytes,
            ..old.embedded_broker.clone().unwrap()
        });
        assert_eq!(needs_restart(&old, &new), ["embedded_broker"]);
        new.embedded_broker = None;
        assert_eq!(needs_restart(&old, &new), ["embedded_broker"]);
    }

    #[test]
    fn every_changed_key_is_named_and_device_files_are_not() {
        let old = config();
        let mut new = old.clone();
        assert!(needs_restart(&old, &new).is_empty());
        new.broker.credentials = None;
        new.broker.port = 1885;
        new.store.flush_interval = Duration::from_millis(5);
        new.devices_dir = Path::new("elsewhere").into();
        assert_eq!(
            needs_restart(&old, &new),
            [
                "broker.port",
                "broker.username",
                "broker.password",
                "store",
                "devices_dir"
            ]
        );
        let mut only_devices = old.clone();
        only_devices.devices = DeviceRegistry::default();
        assert!(needs_restart(&old, &only_devices).is_empty());
    }
}
