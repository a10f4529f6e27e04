//! Is every stage alive and making progress? Stages mark the work they do
//! (a store commit, a detection batch, an outbox read) with a [`Busy`]
//! guard; waiting for input, for the broker or for room in the store is not
//! work. A stage busy for longer than [`STUCK_AFTER`] is stuck, and a stage
//! whose task ended before shutdown has stopped: either one makes `/readyz`
//! answer 503 and stops the systemd watchdog pings, so systemd restarts vigil.
//! So does a store that fails every write (a full disk): see [`judge_store`].

use std::fmt;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use crate::store::{Store, WriteHealth};

/// How long one unit of work may take before the stage counts as stuck.
/// A detection batch or a store commit takes milliseconds; a minute means
/// a hung disk or a bug.
pub const STUCK_AFTER: Duration = Duration::from_secs(60);

/// Store writes failing in a row that make the agent not ready: one failed
/// write may be a passing error, three at a second's interval (the writer
/// retries every second) are not.
pub const STORE_FAILURES_NOT_READY: u64 = 3;

/// How long the store may fail every write before vigil exits, to be started
/// again (systemd: `Restart=on-failure`) with the store opened anew. sled
/// 0.34 returns a failed write's error for every later write of the same
/// open store, even once the disk has room again, so waiting longer cannot
/// help; reopening within the running agent would pull the store from under
/// every stage. Well within the unit's `WatchdogSec=30s`, so that vigil stops
/// cleanly before the watchdog kills it.
pub const STORE_FAILING_EXIT_AFTER: Duration = Duration::from_secs(10);

/// What the store's failed writes mean for the agent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StoreWrites {
    /// Writes work, or failed fewer than [`STORE_FAILURES_NOT_READY`] times in a row.
    Working,
    /// Not ready, for this reason.
    Failing(String),
    /// Failing for [`STORE_FAILING_EXIT_AFTER`]: vigil must exit and be started again.
    GivenUp(String),
}

/// Judge a run of failed store writes at `now`.
pub fn judge_store(w: &WriteHealth, now: Instant) -> StoreWrites {
    if w.failing < STORE_FAILURES_NOT_READY {
        return StoreWrites::Working;
    }
    let failing_for = w
        .failing_since
        .map_or(Duration::ZERO, |since| now.saturating_duration_since(since));
    let reason = format!(
        "the store has failed {} writes in a row for {} s ({})",
        w.failing,
        failing_for.as_secs(),
        w.last_error.as_deref().unwrap_or("no error kept")
    );
    if failing_for >= STORE_FAILING_EXIT_AFTER {
        StoreWrites::GivenUp(reason)
    } else {
        StoreWrites::Failing(reason)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// The local broker's event loop (receive, decode, route).
    Ingest,
    /// Group commits of readings to the store.
    Writer,
    Detect,
    Forward,
}

impl Stage {
    pub const ALL: [Stage; 4] = [Stage::Ingest, Stage::Writer, Stage::Detect, Stage::Forward];

    pub fn as_str(self) -> &'static str {
        match self {
            Stage::Ingest => "ingest",
            Stage::Writer => "writer",
            Stage::Detect => "detect",
            Stage::Forward => "forward",
        }
    }
}

impl fmt::Display for Stage {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, Default)]
struct Slot {
    /// Part of this agent (forward runs only with an [upstream] table).
    expected: AtomicBool,
    running: AtomicBool,
    /// Milliseconds since `Health::start` + 1 when the current work began; 0 when idle.
    busy_since: AtomicU64,
}

/// Shared by every stage, the HTTP endpoint and the watchdog loop.
pub struct Health {
    start: Instant,
    slots: [Slot; 4],
    store_open: AtomicBool,
    /// The running agent's store, whose failed writes count (see `watch_store`).
    store: OnceLock<Store>,
    stopping: AtomicBool,
}

impl Default for Health {
    fn default() -> Self {
        Health {
            start: Instant::now(),
            slots: Default::default(),
            store_open: AtomicBool::new(false),
            store: OnceLock::new(),
            stopping: AtomicBool::new(false),
        }
    }
}

/// Marks its stage busy until dropped.
#[must_use = "the stage is busy only while the guard lives"]
pub struct Busy {
    health: Arc<Health>,
    stage: Stage,
}

impl Drop for Busy {
    fn drop(&mut self) {
        self.health
            .slot(self.stage)
            .busy_since
            .store(0, Ordering::Relaxed);
    }
}

impl Health {
    fn slot(&self, stage: Stage) -> &Slot {
        &self.slots[stage as usize]
    }

    fn now_ms(&self) -> u64 {
        self.start.elapsed().as_millis() as u64
    }

    /// Time since the agent started.
    pub fn uptime(&self) -> Duration {
        self.start.elapsed()
    }

    pub fn set_store_open(&self, open: bool) {
        self.store_open.store(open, Ordering::Relaxed);
    }

    /// The store is open, and its writes count towards readiness.
    pub fn watch_store(&self, store: Store) {
        let _ = self.store.set(store);
        self.set_store_open(true);
    }

    /// What the store's failed writes mean now (`Working` for a store not watched).
    pub fn store_writes(&self) -> StoreWrites {
        match self.store.get() {
            Some(store) => judge_store(&store.write_health(), Instant::now()),
            None => StoreWrites::Working,
        }
    }

    /// A shutdown was requested: stages ending now is expected.
    pub fn set_stopping(&self) {
        self.stopping.store(true, Ordering::Relaxed);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Relaxed)
    }

    /// The stage's task started (`true`) or ended (`false`).
    pub fn set_running(&self, stage: Stage, running: bool) {
        let slot = self.slot(stage);
        slot.expected.store(true, Ordering::Relaxed);
        slot.running.store(running, Ordering::Relaxed);
    }

    /// Mark `stage` busy until the guard is dropped.
    pub fn busy(self: &Arc<Self>, stage: Stage) -> Busy {
        let since = self.now_ms() + 1;
        self.slot(stage).busy_since.store(since, Ordering::Relaxed);
        Busy {
            health: self.clone(),
            stage,
        }
    }

    /// How long `stage` has been busy with its current work, if it is.
    pub fn busy_for(&self, stage: Stage) -> Option<Duration> {
        let since = self.slot(stage).busy_since.load(Ordering::Relaxed);
        (since > 0).then(|| Duration::from_millis((self.now_ms() + 1).saturating_sub(since)))
    }

    /// `Ok` when the store is open and every stage runs and makes progress;
    /// otherwise every reason why not.
    pub fn verdict(&self) -> Result<(), Vec<String>> {
        self.verdict_with(STUCK_AFTER)
    }

    fn verdict_with(&self, stuck_after: Duration) -> Result<(), Vec<String>> {
        let mut reasons = Vec::new();
        if self.is_stopping() {
            reasons.push("shutting down".to_string());
        }
        if !self.store_open.load(Ordering::Relaxed) {
            reasons.push("the store is not open".to_string());
        }
        match self.store_writes() {
            StoreWrites::Working => {}
            StoreWrites::Failing(reason) | StoreWrites::GivenUp(reason) => reasons.push(reason),
        }
        for stage in Stage::ALL {
            let slot = self.slot(stage);
            if !slot.expected.load(Ordering::Relaxed) {
                continue;
            }
            if !slot.running.load(Ordering::Relaxed) {
                reasons.push(format!("the {stage} stage has stopped"));
            } else if let Some(busy) = self.busy_for(stage).filter(|b| *b >= stuck_after) {
                reasons.push(format!(
                    "the {stage} stage has been stuck in one step for {} s",
                    busy.as_secs()
                ));
            }
        }
        if reasons.is_empty() {
            Ok(())
        } else {
            Err(reasons)
        }
    }

    /// 1 for each stage that is part of this agent and running, 0 for one that stopped.
    pub fn stages(&self) -> impl Iterator<Item = (Stage, bool)> + '_ {
        Stage::ALL.into_iter().filter_map(|s| {
            let slot = self.slot(s);
            slot.expected
                .load(Ordering::Relaxed)
                .then(|| (s, slot.running.load(Ordering::Relaxed)))
        })
    }
}

/// Run a stage's task, recording when it starts and ends. A stage that ends
/// before shutdown was asked for is logged: the agent is no longer whole.
pub async fn supervise(
    health: Arc<Health>,
    stage: Stage,
    task: impl std::future::Future<Output = ()>,
) {
    health.set_running(stage, true);
    task.await;
    health.set_running(stage, false);
    if !health.is_stopping() {
        tracing::error!(%stage, "the {stage} stage stopped unexpectedly; vigil is not ready and the watchdog will restart it");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn running() -> Arc<Health> {
        let h = Arc::new(Health::default());
        h.set_store_open(true);
        for s in [Stage::Ingest, Stage::Writer, Stage::Detect] {
            h.set_running(s, true);
        }
        h
    }

    #[test]
    fn ready_when_open_and_running_and_forward_not_expected() {
        let h = running();
        assert_eq!(h.verdict(), Ok(()));
        assert_eq!(h.stages().count(), 3);
    }

    #[test]
    fn a_closed_store_or_a_stopped_stage_is_not_ready() {
        let h = running();
        h.set_store_open(false);
        h.set_running(Stage::Detect, false);
        let reasons = h.verdict().unwrap_err();
        assert_eq!(
            reasons,
            ["the store is not open", "the detect stage has stopped"]
        );
    }

    #[test]
    fn busy_past_the_limit_is_stuck_and_ends_with_the_guard() {
        let h = running();
        let guard = h.busy(Stage::Writer);
        std::thread::sleep(Duration::from_millis(30));
        let reasons = h.verdict_with(Duration::from_millis(20)).unwrap_err();
        assert_eq!(reasons.len(), 1);
        assert!(
            reasons[0].starts_with("the writer stage has been stuck"),
            "{reasons:?}"
        );
        // Busy, but not yet for long: fine.
        assert_eq!(h.verdict_with(Duration::from_secs(3600)), Ok(()));
        drop(guard);
        assert_eq!(h.busy_for(Stage::Writer), None);
        assert_eq!(h.verdict_with(Duration::from_millis(20)), Ok(()));
    }

    fn failing(n: u64, for_s: u64, now: Instant) -> WriteHealth {
        WriteHealth {
            errors: n + 1,
            failing: n,
            failing_since: Some(now - Duration::from_secs(for_s)),
            last_error: Some("store I/O failed: No space left on device".into()),
        }
    }

    #[test]
    fn failed_store_writes_make_not_ready_then_give_up() {
        // Far enough ahead that every run of failures starts after the clock's origin.
        let now = Instant::now() + Duration::from_secs(3600);
        assert_eq!(
            judge_store(&WriteHealth::default(), now),
            StoreWrites::Working
        );
        // Two may be a passing error, even if they are minutes apart.
        assert_eq!(
            judge_store(&failing(2, 600, now), now),
            StoreWrites::Working
        );
        let StoreWrites::Failing(reason) = judge_store(&failing(3, 2, now), now) else {
            panic!("three failed writes in a row are not ready");
        };
        assert_eq!(
            reason,
            "the store has failed 3 writes in a row for 2 s (store I/O failed: No space left on device)"
        );
        let exit = STORE_FAILING_EXIT_AFTER.as_secs();
        assert!(matches!(
            judge_store(&failing(9, exit - 1, now), now),
            StoreWrites::Failing(_)
        ));
        assert!(matches!(
            judge_store(&failing(3, exit, now), now),
            StoreWrites::GivenUp(r) if r.contains(&format!("for {exit} s"))
        ));
    }

    #[test]
    fn stopping_is_not_ready() {
        let h = running();
        h.set_stopping();
        assert_eq!(h.verdict().unwrap_err(), ["shutting down"]);
    }
}
