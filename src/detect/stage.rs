//! The detect stage: tails the readings log from its cursor, runs the engine
//! over each batch, and writes the new cursor, the changed stream states and
//! the outputs in one store transaction. On start it resumes from the last
//! such transaction, learned baselines and open alerts included.
//!
//! Writing every stream's state after every small batch would wear a
//! gateway's flash (a state is kilobytes; at 2,000 readings/s that came to
//! over half a terabyte a day). So progress without alerts is held in memory
//! and written at most every `store.checkpoint_interval_ms`, or once input
//! pauses for [`IDLE`]; an alert, a reload, a full store or shutdown writes
//! at once. A crash loses only
//! what was not on disk yet (progress held, commits not flushed), which
//! detection redoes from the last durable commit over the same readings.
//! None of it was published (the forwarder sends only what is on disk), so
//! what comes out differently the second time (windows closed and silence
//! alerts raised on processing time) takes no id already used.
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
use crate::ingest::ratelimit::RateLimit;
use crate::model::{wall_ms, AlertEvent, AlertKind, EpochMs};
use crate::ops::{Health, Stage};
use crate::store::{DetectionCommit, Store, StoreError};

use super::clock::StepWatch;
use super::engine::{DetectCounters, Engine, Output, StreamLimits, StreamState};
use crate::store::IdleStream;

/// Readings per detection batch (one transaction): at least this many, and
/// more with many streams, since each batch rewrites the state of every
/// stream it touched (about 2 KB each): 64 readings per stream keeps that
/// cost small per reading.
const BATCH_MIN: usize = 4096;
const BATCH_MAX: usize = 65_536;
const BATCH_PER_STREAM: usize = 64;
/// Decoded readings a batch holds in memory at most (one reading more if a
/// single one is larger). 65,536 scalar readings take about 7 MiB; a waveform block
/// can decode to 2 MiB, so a count alone would let a backlog of them take
/// gigabytes after a restart.
pub const BATCH_MAX_BYTES: usize = 8 << 20;
/// How often processing-time work (idle windows, silent sensors) runs.
const TICK: Duration = Duration::from_secs(1);
/// Input paused this long: what is held is written (the end of a burst, or
/// a slow trickle, need not wait for the interval).
const IDLE: Duration = Duration::from_millis(500);
/// Aggregates held in memory beyond which detection commits early.
const PENDING_MAX: usize = 4096;
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
    /// Readings stamped too far ahead of the processing clock, not used.
    pub skewed: AtomicU64,
    /// Streams whose event time ran ahead of the clock and started over.
    pub clock_resets: AtomicU64,
    /// Streams put aside for being idle (gauge), and the stream lifecycle.
    pub idle_streams: AtomicU64,
    pub streams_refused: AtomicU64,
    pub streams_evicted: AtomicU64,
    pub streams_resumed: AtomicU64,
    pub streams_forgotten: AtomicU64,
    /// 1 while alerts are raised faster than `detect.alert_storm_per_minute`.
    pub alert_storm: AtomicU64,
    pub alert_storms: AtomicU64,
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
    /// Longest time progress without alerts stays uncommitted.
    pub checkpoint_interval: Duration,
    /// Event times further ahead of the wall clock are not used.
    pub max_future_skew_ms: EpochMs,
    /// How many streams are kept in memory, and for how long an unseen one.
    pub stream_limits: StreamLimits,
    /// Alerts raised within a minute from which a storm is reported.
    pub alert_storm_per_minute: u64,
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
    for (seen, key) in store.idle_streams()? {
        engine.add_idle(seen, key);
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
    let lifecycle = engine.take_lifecycle();
    let mut evicted = Vec::with_capacity(lifecycle.evicted.len());
    for (key, seen_ms, state) in lifecycle.evicted {
        let mut bytes = Vec::new();
        match ciborium::ser::into_writer(&state, &mut bytes) {
            Ok(()) => evicted.push(IdleStream {
                key,
                seen_ms,
                state: bytes,
            }),
            Err(e) => error!(key, error = %e, "cannot encode an idle stream's state"),
        }
    }
    DetectionCommit {
        cursor,
        checkpoints,
        alerts: out.alerts,
        aggregates: out.aggregates,
        evicted,
        resumed: lifecycle.resumed,
        forgotten: lifecycle.forgotten,
    }
}

/// Warnings detection logs at most once a minute each (counted meanwhile
/// in the metrics).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Warning {
    /// Readings stamped ahead of the clock, streams whose time ran ahead.
    Time,
    /// Streams refused or forgotten.
    Streams,
}

/// Stream states may take at most this share of the store's data limit
/// (`Store::data_limit`): beyond it
/// the idle streams seen longest ago are forgotten, and new streams are
/// refused while none is left to forget.
const STATE_BUDGET_SHARE: u64 = 4;
/// Idle streams forgotten per step while stream states are over their share.
const FORGET_PER_STEP: usize = 256;

/// Keep stream states within their share of the budget.
fn keep_states_in_budget(store: &Store, engine: &mut Engine) {
    if store.checkpoint_bytes() > store.data_limit() / STATE_BUDGET_SHARE {
        if engine.forget_oldest_idle(FORGET_PER_STEP) == 0 {
            engine.set_admit_new(false);
        }
    } else {
        engine.set_admit_new(true);
    }
}

/// Idle streams among `batch` get their states back from the store before
/// the batch is processed.
fn wake_idle(
    store: &Store,
    engine: &mut Engine,
    batch: &[(u64, crate::model::Reading)],
    now_ms: EpochMs,
) -> Result<(), StoreError> {
    // Idle streams include those put aside since the last commit; without
    // any, no reading needs a look-up before the engine's own.
    if engine.idle_streams() == 0 {
        return Ok(());
    }
    for (_, r) in batch {
        if let Some(key) = engine.needs_state(&r.device, &r.metric) {
            let state = store.idle_stream_state(&key)?.and_then(|bytes| {
                match ciborium::de::from_reader::<StreamState, _>(bytes.as_slice()) {
                    Ok(s) => Some(s),
                    Err(e) => {
                        warn!(key, error = %e, "idle stream's state unreadable; the stream starts learning again");
                        None
                    }
                }
            });
            engine.wake(&key, state, now_ms);
        }
    }
    Ok(())
}

fn log_alerts(alerts: &[AlertEvent]) {
    for a in alerts {
        match a.kind {
            AlertKind::Raised | AlertKind::Escalated | AlertKind::Reopened => warn!(
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
        checkpoint_interval,
        max_future_skew_ms,
        stream_limits,
        alert_storm_per_minute,
    } = task;
    let mut registry = registry_rx.borrow_and_update().clone();
    let mut registry_open = true;
    // Seen by the wait below, to apply at the top of the loop.
    let mut registry_changed = false;
    let (mut engine, cursor) = loop {
        let (s, r) = (store.clone(), registry.clone());
        match tokio::task::spawn_blocking(move || restore(&s, r)).await {
            Ok(Ok((mut e, c))) => {
                e.set_max_future_skew(max_future_skew_ms);
                e.set_stream_limits(stream_limits);
                break (e, c);
            }
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
    let mut pending = Pending::at(cursor, checkpoint_interval);
    let mut last_tick = Instant::now();
    // At most one warning a minute about event times ahead of the clock,
    // and about streams refused.
    let mut warnings = RateLimit::new(Duration::from_secs(60));
    let mut storm = StormWatch::new(alert_storm_per_minute);
    loop {
        let stopping = *shutdown.borrow();
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
            let work = if stopping {
                Work::CommitOnly
            } else {
                Work::Batch {
                    tick: tick_due,
                    reload,
                }
            };
            tokio::task::spawn_blocking(move || {
                let _busy = busy;
                let r = step(&store, &mut engine, &mut pending, work);
                (engine, pending, r)
            })
            .await
        };
        let (returned, returned_pending, result) = match step {
            Ok(v) => v,
            Err(e) => {
                // The engine went down with the thread; only a bug gets here.
                error!(error = %e, "detection thread panicked; stopping detection");
                return;
            }
        };
        engine = returned;
        pending = returned_pending;
        let processed = match result {
            Ok(s) => {
                metrics
                    .readings_trimmed
                    .fetch_add(s.trimmed, Ordering::Relaxed);
                metrics
                    .readings_skipped
                    .fetch_add(s.skipped, Ordering::Relaxed);
                if let Some(c) = s.committed {
                    metrics
                        .aggregates
                        .fetch_add(c.aggregates, Ordering::Relaxed);
                    metrics.alerts_raised.fetch_add(c.raised, Ordering::Relaxed);
                    let change = storm.raised(c.raised, Instant::now());
                    report_storm(change, &metrics, alert_storm_per_minute);
                    metrics
                        .alerts_cleared
                        .fetch_add(c.cleared, Ordering::Relaxed);
                    for i in 0..2 {
                        metrics.raised_by_severity[i].fetch_add(c.raised_by[i], Ordering::Relaxed);
                        metrics.cleared_by_severity[i]
                            .fetch_add(c.cleared_by[i], Ordering::Relaxed);
                    }
                    if c.outputs > 0 {
                        outbox_tx.send_modify(|n| *n += 1);
                    }
                }
                s.read
            }
            Err(e) => {
                error!(error = %e, "detection batch failed; retrying from the last checkpoint");
                // The transaction did not happen: rebuild the engine as it
                // was, and forget what was held since.
                let (s, r) = (store.clone(), registry.clone());
                if let Ok(Ok((mut e2, c2))) =
                    tokio::task::spawn_blocking(move || restore(&s, r)).await
                {
                    e2.set_max_future_skew(max_future_skew_ms);
                    e2.set_stream_limits(stream_limits);
                    engine = e2;
                    pending = Pending::at(c2, checkpoint_interval);
                }
                if stopping {
                    break;
                }
                tokio::select! {
                    _ = tokio::time::sleep(RETRY) => {}
                    _ = shutdown.changed() => {}
                }
                continue;
            }
        };
        // The engine's counters after the outputs' (above): a reader that sees
        // a window counted sees the alerts it raised.
        let c = engine.counters();
        metrics.late.store(c.late, Ordering::Relaxed);
        metrics.duplicates.store(c.duplicates, Ordering::Relaxed);
        let skewed = metrics.skewed.swap(c.skewed, Ordering::Relaxed);
        let resets = metrics.clock_resets.swap(c.clock_resets, Ordering::Relaxed);
        if (c.skewed > skewed || c.clock_resets > resets)
            && warnings.check(Warning::Time, Instant::now()).is_some()
        {
            warn!(
                skewed = c.skewed,
                streams_restarted = c.clock_resets,
                "event times ahead of the gateway's clock: readings stamped more than detect.max_future_skew_ms ahead are not used, and streams whose time ran ahead start their windows over"
            );
        }
        metrics.windows.store(c.windows, Ordering::Relaxed);
        metrics
            .streams
            .store(engine.streams() as u64, Ordering::Relaxed);
        metrics
            .idle_streams
            .store(engine.idle_streams() as u64, Ordering::Relaxed);
        metrics
            .streams_evicted
            .store(c.streams_evicted, Ordering::Relaxed);
        metrics
            .streams_resumed
            .store(c.streams_resumed, Ordering::Relaxed);
        let forgotten = metrics
            .streams_forgotten
            .swap(c.streams_forgotten, Ordering::Relaxed);
        let refused = metrics
            .streams_refused
            .swap(c.streams_refused, Ordering::Relaxed);
        if (c.streams_refused > refused || c.streams_forgotten > forgotten)
            && warnings.check(Warning::Streams, Instant::now()).is_some()
        {
            warn!(
                streams = engine.streams(),
                max_streams = stream_limits.max_streams,
                idle = engine.idle_streams(),
                refused_readings = c.streams_refused,
                forgotten = c.streams_forgotten,
                "more streams than detection keeps: readings of new streams are stored but not detected while detect.max_streams are in memory or stream states fill a quarter of the disk budget (idle streams seen longest ago are forgotten first); check for devices publishing under changing names, or set detect.devices_known_only"
            );
        }
        metrics.cursor.store(pending.cursor, Ordering::Relaxed);
        if tick_due {
            report_storm(
                storm.raised(0, Instant::now()),
                &metrics,
                alert_storm_per_minute,
            );
            for (gauge, n) in metrics.open_alerts.iter().zip(engine.open_alerts()) {
                gauge.store(n, Ordering::Relaxed);
            }
            last_tick = Instant::now();
        }
        if stopping {
            break;
        }
        if processed > 0 {
            continue;
        }
        // Caught up: wait for new readings, the next tick, the checkpoint
        // that is due, or shutdown.
        let until_tick = TICK.saturating_sub(last_tick.elapsed());
        let wait = pending.due_in().map_or(until_tick, |d| d.min(until_tick));
        tokio::select! {
            _ = committed_rx.changed() => {}
            changed = registry_rx.changed(), if registry_open => {
                registry_open = changed.is_ok();
                registry_changed = registry_open;
            }
            _ = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => {}
        }
    }
    debug!(cursor = pending.committed, "detection stopped");
}

fn report_storm(change: Option<StormChange>, metrics: &DetectMetrics, per_minute: u64) {
    match change {
        Some(StormChange::Began(n)) => {
            metrics.alert_storms.fetch_add(1, Ordering::Relaxed);
            metrics.alert_storm.store(1, Ordering::Relaxed);
            warn!(
                raised_in_a_minute = n,
                limit = per_minute,
                "alert storm: alerts are raised faster than detect.alert_storm_per_minute; every one is kept and forwarded"
            );
        }
        Some(StormChange::Ended { raised, minutes }) => {
            metrics.alert_storm.store(0, Ordering::Relaxed);
            info!(raised, minutes, "alert storm over");
        }
        None => {}
    }
}

/// Tells when alerts are raised faster than a rate (a storm) and when that
/// stops, in whole minutes of the monotonic clock.
struct StormWatch {
    per_minute: u64,
    minute_start: Option<Instant>,
    in_minute: u64,
    /// While a storm lasts: alerts raised and minutes since it began.
    storm: Option<(u64, u64)>,
}

#[derive(Debug, PartialEq)]
enum StormChange {
    /// Alerts raised in the minute it began.
    Began(u64),
    Ended {
        raised: u64,
        minutes: u64,
    },
}

impl StormWatch {
    fn new(per_minute: u64) -> Self {
        StormWatch {
            per_minute,
            minute_start: None,
            in_minute: 0,
            storm: None,
        }
    }

    /// `n` alerts were raised at `now`.
    fn raised(&mut self, n: u64, now: Instant) -> Option<StormChange> {
        let mut change = None;
        let start = *self.minute_start.get_or_insert(now);
        if now.duration_since(start) >= Duration::from_secs(60) {
            // A minute under the rate ends a storm.
            if let Some((raised, minutes)) = self.storm {
                if self.in_minute < self.per_minute {
                    self.storm = None;
                    change = Some(StormChange::Ended {
                        raised,
                        minutes: minutes + 1,
                    });
                } else {
                    self.storm = Some((raised, minutes + 1));
                }
            }
            self.minute_start = Some(now);
            self.in_minute = 0;
        }
        self.in_minute += n;
        match &mut self.storm {
            Some((raised, _)) => *raised += n,
            None if self.in_minute >= self.per_minute && n > 0 => {
                self.storm = Some((self.in_minute, 0));
                change = Some(StormChange::Began(self.in_minute));
            }
            None => {}
        }
        change
    }
}

/// Detection's progress since its last commit, held in memory.
struct Pending {
    /// Sequence number of the next reading to process.
    cursor: u64,
    /// The cursor of the last commit: readings below it may be trimmed.
    committed: u64,
    out: Output,
    /// A reload happened since the last commit.
    reloaded: bool,
    /// Streams were put aside, woken or forgotten since the last commit.
    lifecycle: bool,
    last_commit: Instant,
    /// When a step last processed readings.
    last_read: Instant,
    /// Input paused this long: write (normally [`IDLE`]).
    idle: Duration,
    interval: Duration,
    /// Tells wall-clock steps from time passing (silence is an interval).
    clock: StepWatch,
    /// Origin of the monotonic clock `clock` compares with.
    started: Instant,
}

impl Pending {
    fn at(cursor: u64, interval: Duration) -> Pending {
        Pending {
            cursor,
            committed: cursor,
            out: Output::default(),
            reloaded: false,
            lifecycle: false,
            last_commit: Instant::now(),
            last_read: Instant::now(),
            idle: IDLE,
            interval,
            clock: StepWatch::default(),
            started: Instant::now(),
        }
    }

    /// Something is held that a commit would write. (Stream states changed
    /// without readings, by a tick, are written with the next commit.)
    fn holds(&self) -> bool {
        self.cursor != self.committed || !self.out.is_empty() || self.reloaded || self.lifecycle
    }

    /// How long until the held progress must be written; `None` if nothing is held.
    fn due_in(&self) -> Option<Duration> {
        self.holds().then(|| {
            let interval = self.interval.saturating_sub(self.last_commit.elapsed());
            interval.min(self.idle.saturating_sub(self.last_read.elapsed()))
        })
    }

    fn must_commit(&self, store: &Store) -> bool {
        self.holds()
            && (!self.out.alerts.is_empty()
                || self.reloaded
                || self.last_commit.elapsed() >= self.interval
                || self.last_read.elapsed() >= self.idle
                || self.out.aggregates.len() >= PENDING_MAX
                // A full store waits for this cursor to trim readings.
                || store.is_full())
    }
}

enum Work {
    /// Read and process the next batch, then commit if due.
    Batch {
        tick: bool,
        reload: Option<DeviceRegistry>,
    },
    /// Shutting down: commit whatever is held.
    CommitOnly,
}

struct StepResult {
    /// Readings processed by this step.
    read: u64,
    /// What was written, if this step committed.
    committed: Option<Committed>,
    trimmed: u64,
    skipped: u64,
}

/// The outputs of one commit, for the metrics.
struct Committed {
    /// Alert transitions and aggregates committed to the outbox.
    outputs: u64,
    aggregates: u64,
    raised: u64,
    cleared: u64,
    /// Raised and cleared alerts by severity (warning, alarm).
    raised_by: [u64; 2],
    cleared_by: [u64; 2],
}

/// One step: read and detect a batch, commit if due, and trim if the store
/// is full. Blocking.
fn step(
    store: &Store,
    engine: &mut Engine,
    pending: &mut Pending,
    work: Work,
) -> Result<StepResult, StoreError> {
    let mut read = 0;
    let mut skipped = 0;
    let force = match work {
        Work::CommitOnly => true,
        Work::Batch { tick, reload } => {
            let size = (BATCH_PER_STREAM * engine.streams()).clamp(BATCH_MIN, BATCH_MAX);
            // A block that cannot be decoded is removed and counted by the
            // store: returned as an error, it would be retried forever.
            let (batch, unreadable) =
                store.readings_to_detect(pending.cursor, size, BATCH_MAX_BYTES)?;
            let now = wall_ms();
            let mono = pending.started.elapsed().as_millis() as EpochMs;
            if let Some(step) = pending.clock.observe(now, mono) {
                warn!(
                    step_ms = step,
                    "the wall clock stepped; silence is measured across the step as the time that really passed"
                );
                engine.clock_stepped(step);
            }
            if let Some(registry) = reload {
                // Before the batch: its windows close under the new settings.
                let r = engine.reload(registry, now, &mut pending.out);
                pending.reloaded = true;
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
            if let Some((first, _)) = batch.first() {
                if *first > pending.cursor + unreadable {
                    skipped = first - pending.cursor - unreadable;
                    warn!(
                        from = pending.cursor,
                        to = first,
                        "readings were removed from the log before detection saw them"
                    );
                }
            }
            wake_idle(store, engine, &batch, now)?;
            for (seq, r) in &batch {
                engine.process(r, now, &mut pending.out);
                pending.cursor = seq + 1;
            }
            read = batch.len() as u64;
            if read > 0 {
                pending.last_read = Instant::now();
            }
            if tick {
                engine.tick(now, &mut pending.out);
            }
            false
        }
    };
    pending.lifecycle = engine.lifecycle_pending();
    let committed = if pending.holds() && (force || pending.must_commit(store)) {
        Some(commit(store, engine, pending)?)
    } else {
        None
    };
    keep_states_in_budget(store, engine);
    // Logged and counted by the store.
    let trimmed = store.make_room(pending.committed)?.readings_trimmed;
    Ok(StepResult {
        read,
        committed,
        trimmed,
        skipped,
    })
}

/// Write what `pending` holds in one transaction.
fn commit(
    store: &Store,
    engine: &mut Engine,
    pending: &mut Pending,
) -> Result<Committed, StoreError> {
    let out = std::mem::take(&mut pending.out);
    let mut c = Committed {
        outputs: (out.aggregates.len() + out.alerts.len()) as u64,
        aggregates: out.aggregates.len() as u64,
        raised: 0,
        cleared: 0,
        raised_by: [0; 2],
        cleared_by: [0; 2],
    };
    for a in &out.alerts {
        match a.kind {
            // A reopened alert is open again, as a raised one is.
            AlertKind::Raised | AlertKind::Reopened => {
                c.raised += 1;
                c.raised_by[a.severity as usize] += 1;
            }
            AlertKind::Cleared => {
                c.cleared += 1;
                c.cleared_by[a.severity as usize] += 1;
            }
            AlertKind::Escalated => {}
        }
    }
    let transaction = commit_of(engine, pending.cursor, out);
    store.commit_detection(&transaction)?;
    // Logged once written, so that a failed commit redone is not logged twice.
    log_alerts(&transaction.alerts);
    pending.committed = pending.cursor;
    pending.reloaded = false;
    pending.lifecycle = false;
    pending.last_commit = Instant::now();
    Ok(c)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::{Reading, Value};
    use crate::store::Batch;

    const DEVICE: &str = r#"match = "pump-1"
[alerts]
raise_after = 1
[metrics.temperature]
window = "10s"
allowed_lateness = "1s"
[metrics.temperature.limits.mean]
warning_above = 80.0
"#;

    struct Fixture {
        _dir: tempfile::TempDir,
        store: Store,
        registry: DeviceRegistry,
        engine: Engine,
        pending: Pending,
    }

    /// A store holding `values` one second apart, and detection at its start
    /// (writing only as `interval` says, or for an alert: never for a pause).
    fn fixture(values: &[f64], interval: Duration) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("pump-1.toml");
        std::fs::write(&file, DEVICE).unwrap();
        let registry = DeviceRegistry::load_file(&file).unwrap();
        let store = Store::open_at(&dir.path().join("store"), 1 << 30, 10, 1 << 20).unwrap();
        store
            .commit(&Batch {
                readings: values
                    .iter()
                    .enumerate()
                    .map(|(i, v)| Reading {
                        device: "pump-1".into(),
                        metric: "temperature".into(),
                        time_ms: 1_700_000_000_000 + 1000 * i as i64,
                        value: Value::Scalar(*v),
                    })
                    .collect(),
                dead_letters: vec![],
                messages: values.len() as u64,
            })
            .unwrap();
        let (engine, cursor) = restore(&store, registry.clone()).unwrap();
        let mut pending = Pending::at(cursor, interval);
        pending.idle = Duration::from_secs(3600);
        Fixture {
            _dir: dir,
            store,
            registry,
            engine,
            pending,
        }
    }

    fn batch() -> Work {
        Work::Batch {
            tick: false,
            reload: None,
        }
    }

    #[test]
    fn progress_without_alerts_stays_in_memory_until_the_interval() {
        let mut f = fixture(&[20.0; 45], Duration::from_secs(3600));
        let r = step(&f.store, &mut f.engine, &mut f.pending, batch()).unwrap();
        assert_eq!(r.read, 45);
        assert!(r.committed.is_none(), "committed before the interval");
        assert_eq!(f.store.detection_cursor().unwrap(), 0);
        assert!(f.store.checkpoints().unwrap().is_empty());
        assert_eq!(f.store.stats().unwrap().outbox, [0, 0]);

        // Once the interval has passed, the next step writes it all.
        f.pending.interval = Duration::ZERO;
        let r = step(&f.store, &mut f.engine, &mut f.pending, batch()).unwrap();
        assert_eq!(r.read, 0);
        let c = r.committed.expect("a commit once the interval passed");
        assert_eq!((c.aggregates, c.raised), (4, 0));
        assert_eq!(f.store.detection_cursor().unwrap(), 45);
        assert!(!f.store.checkpoints().unwrap().is_empty());
        assert_eq!(f.store.stats().unwrap().outbox, [0, 4]);
    }

    #[test]
    fn a_pause_in_the_input_writes_what_is_held() {
        let mut f = fixture(&[20.0; 45], Duration::from_secs(3600));
        let r = step(&f.store, &mut f.engine, &mut f.pending, batch()).unwrap();
        assert!(r.committed.is_none());
        // Nothing new, and the input has been quiet for the idle time.
        f.pending.idle = Duration::ZERO;
        let r = step(&f.store, &mut f.engine, &mut f.pending, batch()).unwrap();
        assert_eq!(r.read, 0);
        assert!(r.committed.is_some(), "a pause did not write");
        assert_eq!(f.store.detection_cursor().unwrap(), 45);
    }

    #[test]
    fn an_alert_is_written_at_once_with_everything_held() {
        let mut values = vec![20.0; 25];
        values.extend([90.0; 20]);
        let mut f = fixture(&values, Duration::from_secs(3600));
        let r = step(&f.store, &mut f.engine, &mut f.pending, batch()).unwrap();
        let c = r.committed.expect("an alert commits at once");
        assert_eq!(c.raised, 1);
        assert_eq!(f.store.detection_cursor().unwrap(), 45);
        assert_eq!(f.store.stats().unwrap().outbox, [1, 4]);
    }

    #[test]
    fn shutdown_writes_what_is_held_and_a_restart_resumes_there() {
        let mut f = fixture(&[20.0; 45], Duration::from_secs(3600));
        step(&f.store, &mut f.engine, &mut f.pending, batch()).unwrap();
        assert_eq!(f.store.detection_cursor().unwrap(), 0);
        let r = step(&f.store, &mut f.engine, &mut f.pending, Work::CommitOnly).unwrap();
        assert_eq!(r.read, 0);
        assert!(r.committed.is_some());
        assert_eq!(f.store.detection_cursor().unwrap(), 45);
        // Nothing held: a second shutdown step writes nothing.
        let r = step(&f.store, &mut f.engine, &mut f.pending, Work::CommitOnly).unwrap();
        assert!(r.committed.is_none());
        let (engine, cursor) = restore(&f.store, f.registry.clone()).unwrap();
        assert_eq!(cursor, 45);
        assert_eq!(engine.streams(), 1);
    }

    #[test]
    fn a_readings_block_that_cannot_be_decoded_is_skipped_and_counted_not_retried() {
        let mut f = fixture(&[20.0; 45], Duration::ZERO);
        f.store
            .commit(&Batch {
                readings: (45..50)
                    .map(|i| Reading {
                        device: "pump-1".into(),
                        metric: "temperature".into(),
                        time_ms: 1_700_000_000_000 + 1000 * i,
                        value: Value::Scalar(20.0),
                    })
                    .collect(),
                dead_letters: vec![],
                messages: 5,
            })
            .unwrap();
        // The first block (45 readings) is damaged.
        f.store.overwrite_block(0, b"\xff damaged");
        let r = step(&f.store, &mut f.engine, &mut f.pending, batch())
            .expect("detection goes past a block it cannot decode");
        assert_eq!((r.read, r.skipped), (5, 0));
        assert_eq!(f.store.detection_cursor().unwrap(), 50);
        assert_eq!(f.store.stats().unwrap().counters.readings_unreadable, 45);
        // Nothing is left to fail on.
        let r = step(&f.store, &mut f.engine, &mut f.pending, batch()).unwrap();
        assert_eq!(r.read, 0);
    }

    #[test]
    fn zero_interval_writes_after_every_batch() {
        let mut f = fixture(&[20.0; 5], Duration::ZERO);
        let r = step(&f.store, &mut f.engine, &mut f.pending, batch()).unwrap();
        assert!(r.committed.is_some());
        assert_eq!(f.store.detection_cursor().unwrap(), 5);
    }

    #[test]
    fn an_idle_stream_is_written_aside_and_comes_back_from_the_store() {
        let mut f = fixture(&[20.0; 45], Duration::ZERO);
        let limits = StreamLimits {
            max_streams: 10,
            idle_ms: 60_000,
        };
        f.engine.set_stream_limits(limits);
        step(&f.store, &mut f.engine, &mut f.pending, batch()).unwrap();
        // Two hours on, the stream is idle; the commit puts it aside.
        f.engine.tick(wall_ms() + 7_200_000, &mut f.pending.out);
        assert_eq!(f.engine.idle_streams(), 1);
        step(&f.store, &mut f.engine, &mut f.pending, Work::CommitOnly).unwrap();
        assert!(f
            .store
            .checkpoints()
            .unwrap()
            .iter()
            .all(|(k, _)| !k.contains("pump-1")));
        assert_eq!(f.store.idle_streams().unwrap().len(), 1);

        // After a restart it is known, not in memory; a new reading wakes it.
        let (mut engine, cursor) = restore(&f.store, f.registry.clone()).unwrap();
        engine.set_stream_limits(limits);
        assert_eq!((engine.streams(), engine.idle_streams()), (0, 1));
        f.store
            .commit(&Batch {
                readings: vec![Reading {
                    device: "pump-1".into(),
                    metric: "temperature".into(),
                    time_ms: 1_700_000_100_000,
                    value: Value::Scalar(20.0),
                }],
                dead_letters: vec![],
                messages: 1,
            })
            .unwrap();
        let mut pending = Pending::at(cursor, Duration::ZERO);
        step(&f.store, &mut engine, &mut pending, batch()).unwrap();
        assert_eq!((engine.streams(), engine.idle_streams()), (1, 0));
        assert_eq!(engine.counters().streams_resumed, 1);
        assert_eq!(engine.counters().late, 0, "its windows were not kept");
        assert!(f.store.idle_streams().unwrap().is_empty());
        assert!(f
            .store
            .checkpoints()
            .unwrap()
            .iter()
            .any(|(k, _)| k.contains("pump-1")));
    }
}
