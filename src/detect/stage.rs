//! The detect stage: tails the readings log from its cursor, runs the engine
//! over each batch, and writes the new cursor, the changed stream states and
//! the outputs in one store transaction. On start it resumes from the last
//! such transaction, learned baselines and open alerts included.
//!
//! When the store is full, it makes room (`Store::make_room`: consumed
//! readings, then old aggregates, then alerts over their cap) so that ingest
//! can go on. Each commit that adds to the outbox wakes the forwarder.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio::sync::watch;
use tracing::{debug, error, info, warn};

use crate::config::DeviceRegistry;
use crate::model::{wall_ms, AlertKind};
use crate::ops::{Health, Stage};
use crate::store::{DetectionCommit, Store, StoreError};

use super::engine::{DetectCounters, Engine, Output, StreamState};

/// Readings per detection batch (one transaction): at least this many, and
/// more with many streams, since each batch rewrites the state of every
/// stream it touched (about 2 KB each): 64 readings per stream keeps that
/// cost small per reading.
const BATCH_MIN: usize = 4096;
const BATCH_MAX: usize = 65_536;
const BATCH_PER_STREAM: usize = 64;
/// How often processing-time work (idle windows, silent sensors) runs.
const TICK: Duration = Duration::from_secs(1);
/// Pause after a store error before trying again.
const RETRY: Duration = Duration::from_secs(1);
/// Checkpoint key of the counters (stream keys hold a NUL, this one starts with 0x01).
const COUNTERS_KEY: &str = "\u{1}counters";

/// Live figures for logs and the metrics endpoint.
#[derive(Debug, Default)]
pub struct DetectMetrics {
    pub cursor: AtomicU64,
    pub alerts_raised: AtomicU64,
    pub alerts_cleared: AtomicU64,
    pub aggregates: AtomicU64,
    pub readings_trimmed: AtomicU64,
    pub readings_skipped: AtomicU64,
    /// Alerts raised and cleared since start, by severity (warning, alarm).
    pub raised_by_severity: [AtomicU64; 2],
    pub cleared_by_severity: [AtomicU64; 2],
    /// From the engine's counters, which are kept with its checkpoint.
    pub late: AtomicU64,
    pub duplicates: AtomicU64,
    pub windows: AtomicU64,
    pub streams: AtomicU64,
    /// Alerts open now, by severity (updated once a second).
    pub open_alerts: [AtomicU64; 2],
}

pub struct Task {
    pub store: Store,
    /// The device files; a new value (SIGHUP) applies from the next batch.
    pub registry_rx: watch::Receiver<DeviceRegistry>,
    /// Sequence number after the newest committed reading (from ingest).
    pub committed_rx: watch::Receiver<u64>,
    /// Bumped after each commit that added alerts or aggregates to the outbox.
    pub outbox_tx: watch::Sender<u64>,
    pub shutdown: watch::Receiver<bool>,
    pub metrics: Arc<DetectMetrics>,
    pub health: Arc<Health>,
}

/// Rebuild the engine from the store's checkpoints.
pub fn restore(store: &Store, registry: DeviceRegistry) -> Result<(Engine, u64), StoreError> {
    let mut engine = Engine::new(registry);
    let cursor = store.detection_cursor()?;
    for (key, bytes) in store.checkpoints()? {
        if key == COUNTERS_KEY {
            match ciborium::de::from_reader::<DetectCounters, _>(bytes.as_slice()) {
                Ok(c) => engine.set_counters(c),
                Err(e) => warn!(error = %e, "detection counters unreadable; they restart at zero"),
            }
            continue;
        }
        match ciborium::de::from_reader::<StreamState, _>(bytes.as_slice()) {
            Ok(state) => engine.restore(&key, state),
            Err(e) => {
                let (device, metric) = key.split_once('\0').unwrap_or((&key, ""));
                warn!(device, metric, error = %e, "stream state unreadable (written by another version?); the stream starts learning again");
            }
        }
    }
    engine.resume(wall_ms());
    Ok((engine, cursor))
}

/// The transaction for what the engine did since the last one.
fn commit_of(engine: &mut Engine, cursor: u64, out: Output) -> DetectionCommit {
    let mut checkpoints = Vec::new();
    for (key, state) in engine.take_dirty() {
        let mut bytes = Vec::new();
        match ciborium::ser::into_writer(state, &mut bytes) {
            Ok(()) => checkpoints.push((key, bytes)),
            // Encoding plain structs of numbers cannot fail short of OOM;
            // the stream then resumes from its previous checkpoint.
            Err(e) => error!(key, error = %e, "cannot encode a stream state"),
        }
    }
    let mut counters = Vec::new();
    if ciborium::ser::into_writer(engine.counters(), &mut counters).is_ok() {
        checkpoints.push((COUNTERS_KEY.to_string(), counters));
    }
    DetectionCommit {
        cursor,
        checkpoints,
        alerts: out.alerts,
        aggregates: out.aggregates,
    }
}

fn log_alerts(out: &Output) {
    for a in &out.alerts {
        match a.kind {
            AlertKind::Raised | AlertKind::Escalated => warn!(
                id = %a.id, device = %a.device, metric = %a.metric, detector = %a.detector,
                severity = %a.severity, "alert {}: {}", a.kind.as_str(), a.message
            ),
            AlertKind::Cleared => info!(
                id = %a.id, device = %a.device, metric = %a.metric, detector = %a.detector,
                "alert cleared: {}", a.message
            ),
        }
    }
}

pub async fn run(task: Task) {
    let Task {
        store,
        mut registry_rx,
        mut committed_rx,
        outbox_tx,
        mut shutdown,
        metrics,
        health,
    } = task;
    let mut registry = registry_rx.borrow_and_update().clone();
    let mut registry_open = true;
    // Seen by the wait below, to apply at the top of the loop.
    let mut registry_changed = false;
    let (mut engine, mut cursor) = loop {
        let (s, r) = (store.clone(), registry.clone());
        match tokio::task::spawn_blocking(move || restore(&s, r)).await {
            Ok(Ok(v)) => break v,
            Ok(Err(e)) => error!(error = %e, "cannot read detection checkpoints; retrying"),
            Err(e) => error!(error = %e, "cannot read detection checkpoints; retrying"),
        }
        tokio::select! {
            _ = tokio::time::sleep(RETRY) => {}
            _ = shutdown.changed() => return,
        }
    };
    info!(
        cursor,
        streams = engine.streams(),
        "detection resumes from its checkpoint"
    );
    let mut last_tick = Instant::now();
    loop {
        if *shutdown.borrow() {
            break;
        }
        let tick_due = last_tick.elapsed() >= TICK;
        let reload = if registry_changed || registry_rx.has_changed().unwrap_or(false) {
            registry_changed = false;
            registry = registry_rx.borrow_and_update().clone();
            Some(registry.clone())
        } else {
            None
        };
        let step = {
            let store = store.clone();
            let busy = health.busy(Stage::Detect);
            tokio::task::spawn_blocking(move || {
                let _busy = busy;
                let r = step(&store, &mut engine, cursor, tick_due, reload);
                (engine, r)
            })
            .await
        };
        let (returned, result) = match step {
            Ok(v) => v,
            Err(e) => {
                // The engine went down with the thread; only a bug gets here.
                error!(error = %e, "detection thread panicked; stopping detection");
                return;
            }
        };
        engine = returned;
        let c = engine.counters();
        metrics.late.store(c.late, Ordering::Relaxed);
        metrics.duplicates.store(c.duplicates, Ordering::Relaxed);
        metrics.windows.store(c.windows, Ordering::Relaxed);
        metrics
            .streams
            .store(engine.streams() as u64, Ordering::Relaxed);
        if tick_due {
            for (gauge, n) in metrics.open_alerts.iter().zip(engine.open_alerts()) {
                gauge.store(n, Ordering::Relaxed);
            }
            last_tick = Instant::now();
        }
        let processed = match result {
            Ok(s) => {
                metrics.cursor.store(s.cursor, Ordering::Relaxed);
                metrics
                    .aggregates
                    .fetch_add(s.aggregates, Ordering::Relaxed);
                metrics.alerts_raised.fetch_add(s.raised, Ordering::Relaxed);
                metrics
                    .alerts_cleared
                    .fetch_add(s.cleared, Ordering::Relaxed);
                metrics
                    .readings_trimmed
                    .fetch_add(s.trimmed, Ordering::Relaxed);
                metrics
                    .readings_skipped
                    .fetch_add(s.skipped, Ordering::Relaxed);
                for i in 0..2 {
                    metrics.raised_by_severity[i].fetch_add(s.raised_by[i], Ordering::Relaxed);
                    metrics.cleared_by_severity[i].fetch_add(s.cleared_by[i], Ordering::Relaxed);
                }
                if s.outputs > 0 {
                    outbox_tx.send_modify(|n| *n += 1);
                }
                let n = s.cursor - cursor;
                cursor = s.cursor;
                n
            }
            Err(e) => {
                error!(error = %e, "detection batch failed; retrying from the last checkpoint");
                // The transaction did not happen: rebuild the engine as it was.
                let (s, r) = (store.clone(), registry.clone());
                if let Ok(Ok((e2, c2))) = tokio::task::spawn_blocking(move || restore(&s, r)).await
                {
                    engine = e2;
                    cursor = c2;
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
        };
        if processed > 0 {
            continue;
        }
        // Caught up: wait for new readings, the next tick, or shutdown.
        let until_tick = TICK.saturating_sub(last_tick.elapsed());
        tokio::select! {
            _ = committed_rx.changed() => {}
            changed = registry_rx.changed(), if registry_open => {
                registry_open = changed.is_ok();
                registry_changed = registry_open;
            }
            _ = tokio::time::sleep(until_tick) => {}
            _ = shutdown.changed() => {}
        }
    }
    debug!(cursor, "detection stopped");
}

struct StepResult {
    cursor: u64,
    /// Alert transitions and aggregates committed to the outbox.
    outputs: u64,
    aggregates: u64,
    raised: u64,
    cleared: u64,
    trimmed: u64,
    skipped: u64,
    /// Raised and cleared alerts by severity (warning, alarm).
    raised_by: [u64; 2],
    cleared_by: [u64; 2],
}

/// One batch: read, detect, commit, and trim if the store is full. Blocking.
fn step(
    store: &Store,
    engine: &mut Engine,
    cursor: u64,
    tick: bool,
    reload: Option<DeviceRegistry>,
) -> Result<StepResult, StoreError> {
    let size = (BATCH_PER_STREAM * engine.streams()).clamp(BATCH_MIN, BATCH_MAX);
    let batch = store.readings_from(cursor, size)?;
    let now = wall_ms();
    let mut out = Output::default();
    let reloaded = reload.is_some();
    if let Some(registry) = reload {
        // Before the batch: its windows close under the new settings.
        let r = engine.reload(registry, now, &mut out);
        info!(
            unchanged = r.unchanged,
            changed = r.changed,
            windows_restarted = r.windows_restarted,
            relearned = r.relearned,
            alerts_retired = r.alerts_retired,
            streams = ?r.changed_streams,
            "device settings reloaded"
        );
    }
    let mut next = cursor;
    let mut skipped = 0;
    if let Some((first, _)) = batch.first() {
        if *first > cursor {
            skipped = first - cursor;
            warn!(
                from = cursor,
                to = first,
                "readings were removed from the log before detection saw them"
            );
        }
    }
    for (seq, r) in &batch {
        engine.process(r, now, &mut out);
        next = seq + 1;
    }
    if tick {
        engine.tick(now, &mut out);
    }
    if next == cursor && out.is_empty() && !tick && !reloaded {
        return Ok(StepResult {
            cursor,
            outputs: 0,
            aggregates: 0,
            raised: 0,
            cleared: 0,
            trimmed: 0,
            skipped,
            raised_by: [0; 2],
            cleared_by: [0; 2],
        });
    }
    log_alerts(&out);
    let raised = out
        .alerts
        .iter()
        .filter(|a| a.kind == AlertKind::Raised)
        .count() as u64;
    let cleared = out
        .alerts
        .iter()
        .filter(|a| a.kind == AlertKind::Cleared)
        .count() as u64;
    let (mut raised_by, mut cleared_by) = ([0; 2], [0; 2]);
    for a in &out.alerts {
        match a.kind {
            AlertKind::Raised => raised_by[a.severity as usize] += 1,
            AlertKind::Cleared => cleared_by[a.severity as usize] += 1,
            AlertKind::Escalated => {}
        }
    }
    let aggregates = out.aggregates.len() as u64;
    let outputs = aggregates + out.alerts.len() as u64;
    let commit = commit_of(engine, next, out);
    if next != cursor || !commit.alerts.is_empty() || !commit.aggregates.is_empty() || reloaded {
        store.commit_detection(&commit)?;
    }
    // Logged and counted by the store.
    let trimmed = store.make_room(next)?.readings_trimmed;
    Ok(StepResult {
        cursor: next,
        outputs,
        aggregates,
        raised,
        cleared,
        trimmed,
        skipped,
        raised_by,
        cleared_by,
    })
}
