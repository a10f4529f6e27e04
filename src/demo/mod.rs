//! `vigil demo`: the whole job in one command, with nothing installed. In a
//! temporary directory it starts vigil with its embedded broker, a second
//! broker standing in for the plant's (behind a link the demo cuts for a
//! while), and a simulated fleet of pumps and motors with faults injected
//! on schedule; it shows what happens live and ends with faults against
//! alerts. The plant runs faster than the wall clock (`speed`), so two
//! minutes show two hours of a plant's life.

mod summary;
mod uplink;
mod upstream;
mod view;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tokio::sync::{mpsc, watch};

use crate::config::{self, Config, EmbeddedBrokerConfig};
use crate::model::wall_ms;
use crate::ops::status::{fetch, Samples};
use crate::simulate::{self, Fault, FaultKind, Vibration};

pub use summary::{match_faults, Clock, Detection, Outcome};
pub use upstream::AlertMessage;

use uplink::Uplink;
use upstream::Upstream;
use view::{Gauges, View};

/// The demo's configuration, copied into its directory.
const VIGIL_TOML: &str = include_str!("../../config/demo/vigil.toml");
const DEVICE_FILES: [(&str, &str); 3] = [
    (
        "default.toml",
        include_str!("../../config/demo/devices/default.toml"),
    ),
    (
        "pumps.toml",
        include_str!("../../config/demo/devices/pumps.toml"),
    ),
    (
        "motors.toml",
        include_str!("../../config/demo/devices/motors.toml"),
    ),
];

/// Pumps (velocity RMS sensors) and motors (accelerometers) in the fleet.
const PUMPS: usize = 12;
const MOTORS: usize = 2;
/// After the fleet stops, how long the demo waits for vigil to deliver the rest.
const DRAIN_PATIENCE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone)]
pub struct Options {
    /// How long the fleet publishes (wall time); faults and the outage are
    /// placed at fixed fractions of it.
    pub duration: Duration,
    /// Plant time per wall time.
    pub speed: f64,
    /// Readings per second per stream (wall time).
    pub rate_hz: f64,
    pub seed: u64,
    /// Redraw a status line (a terminal) or print one every few seconds.
    pub tty: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            duration: Duration::from_secs(120),
            speed: 60.0,
            rate_hz: 5.0,
            seed: 7,
            tty: false,
        }
    }
}

/// Shortest demo that still has a warmed-up baseline before the first fault.
pub const MIN_DURATION: Duration = Duration::from_secs(40);

#[derive(Debug, thiserror::Error)]
pub enum DemoError {
    #[error("--duration {0:?} is too short; the demo needs at least 40 s")]
    TooShort(Duration),
    #[error("cannot prepare the demo directory {path}: {source}")]
    Dir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("the demo configuration is invalid:\n{0}")]
    Config(#[from] config::ConfigErrors),
    #[error("cannot start the plant's broker: {0}")]
    Upstream(#[from] crate::broker::BrokerError),
    #[error("cannot find a free loopback port: {0}")]
    Port(std::io::Error),
    #[error("cannot start the uplink relay: {0}")]
    Uplink(std::io::Error),
    #[error(transparent)]
    App(#[from] crate::app::AppError),
    #[error("the simulated fleet failed: {0}")]
    Simulate(#[from] simulate::SimError),
}

/// A temporary directory removed when dropped (the store, the config).
struct TempDir(PathBuf);

impl TempDir {
    fn new() -> Result<TempDir, DemoError> {
        let path =
            std::env::temp_dir().join(format!("vigil-demo-{}-{}", std::process::id(), wall_ms()));
        std::fs::create_dir_all(path.join("devices")).map_err(|source| DemoError::Dir {
            path: path.clone(),
            source,
        })?;
        Ok(TempDir(path))
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The fault schedule, as fractions of the duration: five before the
/// outage (most after the learned baselines' warm-up), one during it.
fn faults(duration: Duration) -> Vec<Fault> {
    let fault = |kind, device: &str, f| Fault {
        kind,
        device: device.into(),
        at: duration.mul_f64(f),
    };
    vec![
        fault(FaultKind::Garbage, "pump-02", 0.15),
        fault(FaultKind::Overheat, "pump-03", 0.25),
        fault(FaultKind::Bearing, "motor-01", 0.30),
        fault(FaultKind::Bearing, "pump-05", 0.35),
        fault(FaultKind::Stuck, "pump-07", 0.42),
        fault(FaultKind::Silent, "pump-09", 0.55),
    ]
}

/// When the uplink is cut and restored, as fractions of the duration.
const OUTAGE: (f64, f64) = (0.50, 0.70);

fn free_loopback() -> Result<SocketAddr, DemoError> {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_err(DemoError::Port)
}

/// Write the demo configuration into `dir` and load it, with free ports.
fn prepare(dir: &Path, upstream: SocketAddr) -> Result<Config, DemoError> {
    let write = |name: &Path, text: &str| {
        std::fs::write(dir.join(name), text).map_err(|source| DemoError::Dir {
            path: dir.to_path_buf(),
            source,
        })
    };
    write(Path::new("vigil.toml"), VIGIL_TOML)?;
    for (name, text) in DEVICE_FILES {
        write(&Path::new("devices").join(name), text)?;
    }
    let mut config = config::load(&dir.join("vigil.toml"))?;
    let local = free_loopback()?;
    if let Some(e) = config.embedded_broker.as_mut() {
        e.listen = local;
    }
    config.broker.port = local.port();
    if let Some(u) = config.upstream.as_mut() {
        u.connection.port = upstream.port();
    }
    config.http = Some(SocketAddr::from(([127, 0, 0, 1], 0)));
    Ok(config)
}

/// Run the demo, printing as it goes; Ctrl-C (or `interrupt`) ends it early
/// with a summary of what happened so far. Returns faults against alerts.
pub async fn run(
    opts: Options,
    mut interrupt: watch::Receiver<bool>,
) -> Result<Outcome, DemoError> {
    if opts.duration < MIN_DURATION {
        return Err(DemoError::TooShort(opts.duration));
    }
    let dir = TempDir::new()?;
    let plant_broker = crate::broker::start(
        &EmbeddedBrokerConfig {
            listen: free_loopback()?,
            max_connections: 16,
            max_payload_bytes: 1 << 20,
            queue_bytes: 32 << 20,
            users: None,
            tls: None,
        },
        &crate::broker::Insiders::draw()?,
    )?;
    let link = Uplink::start(plant_broker.addr())
        .await
        .map_err(DemoError::Uplink)?;
    let config = prepare(&dir.0, link.addr())?;
    let sensors = config.broker.port;
    let running = crate::app::start(&config).await?;
    let http = running
        .http_addr()
        .expect("the demo config enables the endpoint");

    let (alerts_tx, mut alerts_rx) = mpsc::unbounded_channel();
    let plant = Upstream::start(plant_broker.addr(), "demo/#", alerts_tx).await;

    let mut view = View::new(opts.tty);
    view.event(&format!(
        "vigil demo: {PUMPS} pumps and {MOTORS} motors publish to vigil's embedded MQTT broker on 127.0.0.1:{sensors}; \
         vigil stores, analyses and forwards to the plant's broker on {}.\n\
         The plant runs {}× faster than the clock: one second here is {} of plant time. \
         Faults are injected on schedule and the uplink is cut from +{:.0}s to +{:.0}s. Ctrl-C stops early.\n",
        plant_broker.addr(),
        opts.speed,
        if opts.speed == 60.0 { "a minute".to_string() } else { format!("{} s", opts.speed) },
        opts.duration.mul_f64(OUTAGE.0).as_secs_f64(),
        opts.duration.mul_f64(OUTAGE.1).as_secs_f64(),
    ));

    // The fleet: pumps and motors on one plant clock that ends at the present.
    let wall_start_ms = wall_ms();
    let start_ms = wall_start_ms - (opts.duration.as_secs_f64() * opts.speed * 1000.0) as i64;
    let clock = Clock {
        plant_start_ms: start_ms,
        wall_start_ms,
        speed: opts.speed,
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (inj_tx, mut inj_rx) = mpsc::unbounded_channel();
    let schedule = faults(opts.duration);
    let fleet = |prefix: &str, devices: usize, vibration: Vibration| {
        let faults = schedule
            .iter()
            .filter(|f| f.device.starts_with(prefix))
            .cloned()
            .collect();
        simulate::Options {
            broker: format!("127.0.0.1:{sensors}"),
            devices,
            device_prefix: prefix.into(),
            rate_hz: opts.rate_hz,
            duration: Some(opts.duration),
            speed: opts.speed,
            start_ms: Some(start_ms),
            vibration,
            faults,
            qos: 1,
            seed: opts.seed + devices as u64,
            client_id: format!("demo-{prefix}sensors"),
            ..simulate::Options::default()
        }
    };
    let pumps = tokio::spawn(simulate::run(
        fleet("pump-", PUMPS, Vibration::Rms),
        Some(inj_tx.clone()),
        stop_rx.clone(),
    ));
    let motors = tokio::spawn(simulate::run(
        fleet("motor-", MOTORS, Vibration::waveform()),
        Some(inj_tx),
        stop_rx,
    ));

    let cut_at = opts.duration.mul_f64(OUTAGE.0);
    let restore_at = opts.duration.mul_f64(OUTAGE.1);
    let mut outage: Option<(Duration, Option<Duration>)> = None;
    let mut restored: Option<Instant> = None;
    let mut drained_in: Option<Duration> = None;
    let mut outbox_peak = 0.0f64;
    let mut gauges = Gauges::default();
    let mut interrupted = false;
    let mut fleet_done = false;
    let mut drain_deadline: Option<Instant> = None;
    let mut tick = tokio::time::interval(Duration::from_millis(500));
    loop {
        tokio::select! {
            _ = interrupt.wait_for(|i| *i) => {
                interrupted = true;
                break;
            }
            Some(i) = inj_rx.recv() => {
                view.event(&format!(
                    "{}  ⚡ fault    {} {}: {}",
                    view.stamp(Instant::now()),
                    i.device,
                    if i.metric == "*" { "(all streams)".to_string() } else { i.metric.clone() },
                    i.detail
                ));
            }
            Some(a) = alerts_rx.recv() => {
                let arrived = a.arrived.saturating_duration_since(view.started());
                let raised = clock.happened_at(&a);
                let held = (raised >= cut_at && raised < restore_at)
                    .then(|| arrived.saturating_sub(raised));
                view.alert(&a, held);
            }
            _ = tick.tick() => {
                let elapsed = view.elapsed();
                if outage.is_none() && elapsed >= cut_at {
                    link.set_cut(true);
                    outage = Some((elapsed, None));
                    view.event(&format!("{}  ✂ uplink cut: vigil keeps storing and detecting; alerts and aggregates wait in the outbox", view.stamp(Instant::now())));
                }
                if link.is_cut() && elapsed >= restore_at {
                    link.set_cut(false);
                    restored = Some(Instant::now());
                    outage = outage.map(|(c, _)| (c, Some(elapsed)));
                    view.event(&format!("{}  ↻ uplink restored: vigil reconnects and sends the backlog, alerts first", view.stamp(Instant::now())));
                }
                if let Ok((200, text)) = fetch(http, "/metrics").await {
                    gauges = Gauges::read(&Samples::parse(&text));
                }
                outbox_peak = outbox_peak.max(gauges.outbox);
                if let (Some(r), None) = (restored, drained_in) {
                    if gauges.outbox == 0.0 && gauges.uplink_up {
                        drained_in = Some(r.elapsed());
                    }
                }
                view.status(&gauges, link.is_cut());
                if !fleet_done && pumps.is_finished() && motors.is_finished() {
                    fleet_done = true;
                    drain_deadline = Some(Instant::now() + DRAIN_PATIENCE);
                    view.event(&format!("{}  ■ the fleet stopped; vigil finishes what it holds", view.stamp(Instant::now())));
                }
                if fleet_done && gauges.outbox == 0.0 && gauges.lag == 0.0 && gauges.uplink_up {
                    break;
                }
                if drain_deadline.is_some_and(|d| Instant::now() >= d) {
                    break;
                }
            }
        }
    }
    let _ = stop_tx.send(true);
    link.set_cut(false);
    let pumps = pumps.await.map_err(crate::app::AppError::from)??;
    let motors = motors.await.map_err(crate::app::AppError::from)??;
    // Let the last messages reach the plant's subscriber.
    tokio::time::sleep(Duration::from_millis(300)).await;
    if let Ok((200, text)) = fetch(http, "/metrics").await {
        gauges = Gauges::read(&Samples::parse(&text));
    }
    view.status(&gauges, false);
    view.finish();
    let wall = view.elapsed();
    running.shutdown().await?;

    let mut injections = pumps.injections.clone();
    injections.extend(motors.injections.iter().cloned());
    injections.sort_by_key(|i| i.wall);
    let received = plant.received();
    let outcome = match_faults(&clock, &injections, &received.alerts);
    let facts = summary::Facts {
        wall: wall.min(opts.duration),
        clock,
        devices: PUMPS + MOTORS,
        readings: pumps.readings + motors.readings,
        garbage: pumps.garbage + motors.garbage,
        stored: gauges.stored,
        dead_letters: gauges.dead_letters,
        delivered: gauges.delivered,
        received,
        outage,
        outbox_peak,
        drained_in,
        interrupted,
    };
    let text = summary::render(&outcome, &facts);
    view.event(&text);
    drop(dir);
    Ok(outcome)
}
