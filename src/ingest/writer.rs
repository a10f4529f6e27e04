//! The writer task: group commits. Inbound messages accumulate into a batch
//! that is committed (one sled transaction and one fsync) when it is old
//! enough (`flush_interval`) or big enough (`flush_max_readings`, or
//! `BATCH_MAX_BYTES`), then the QoS 1 messages it holds are acknowledged.
//! While one batch is being committed on a blocking thread the next one fills,
//! so decoding, encoding and fsync overlap.
//!
//! When the store's budget is used up the batch is kept and retried. The
//! writer takes at most one more full batch from the channel; then the channel
//! and the memory budget fill, the event-loop task stops reading the socket,
//! and the broker keeps the messages.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::{mpsc, oneshot, watch, OwnedSemaphorePermit};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::route::Outcome;
use super::{AckToken, Inbound, IngestMetrics, MemoryBudget};
use crate::ops::{Health, Stage};
use crate::store::{Batch, Commit, Store, StoreError};

/// Decoded bytes a batch may hold before it is committed regardless of age.
pub const BATCH_MAX_BYTES: usize = 16 << 20;
/// How often a full store is checked for free space.
const FULL_RETRY: Duration = Duration::from_millis(250);
/// Pause after a failed commit before trying again.
const ERROR_RETRY: Duration = Duration::from_secs(1);
/// How soon acks that did not fit into the client's request channel are retried.
const ACK_RETRY: Duration = Duration::from_millis(2);

#[derive(Debug, Clone, Copy)]
pub struct WriterConfig {
    pub flush_interval: Duration,
    pub flush_max_readings: usize,
}

/// The batch being filled.
#[derive(Default)]
struct Pending {
    batch: Batch,
    acks: Vec<AckToken>,
    /// Readings from QoS 0 messages: what would be lost if this batch were dropped.
    qos0_readings: usize,
    bytes: usize,
    since: Option<Instant>,
    /// Memory-budget permits of the messages in the batch.
    memory: Vec<OwnedSemaphorePermit>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.batch.messages == 0
    }

    fn add(&mut self, msg: Inbound, now: Instant) {
        self.since.get_or_insert(now);
        self.batch.messages += 1;
        self.bytes += msg.memory.num_permits();
        self.memory.push(msg.memory);
        match msg.outcome {
            Outcome::Readings(rs) => {
                if msg.ack.is_none() {
                    self.qos0_readings += rs.len();
                }
                self.batch.readings.extend(rs);
            }
            Outcome::Rejected(dl) => self.batch.dead_letters.push(dl),
        }
        self.acks.extend(msg.ack);
    }

    /// Put an older batch (that could not be committed) in front of this one.
    fn prepend(&mut self, mut older: Pending) {
        older.batch.readings.append(&mut self.batch.readings);
        older
            .batch
            .dead_letters
            .append(&mut self.batch.dead_letters);
        older.batch.messages += self.batch.messages;
        older.acks.append(&mut self.acks);
        older.memory.append(&mut self.memory);
        older.qos0_readings += self.qos0_readings;
        older.bytes += self.bytes;
        *self = older;
    }

    /// Big enough to commit now (and to stop taking more).
    fn is_big(&self, cfg: &WriterConfig) -> bool {
        let entries = self.batch.readings.len() + self.batch.dead_letters.len();
        entries >= cfg.flush_max_readings
            || self.batch.messages >= cfg.flush_max_readings as u64
            || self.bytes >= BATCH_MAX_BYTES
    }

    /// Should this batch be committed at `now`?
    fn is_due(&self, cfg: &WriterConfig, now: Instant, closing: bool) -> bool {
        !self.is_empty()
            && (closing
                || self.is_big(cfg)
                || self.since.is_some_and(|s| now >= s + cfg.flush_interval))
    }
}

pub struct Task {
    pub store: Store,
    /// Used only to send acks; the event-loop task owns the connection.
    pub acker: AsyncClient,
    pub inbound_rx: mpsc::Receiver<Inbound>,
    pub memory: MemoryBudget,
    pub config: WriterConfig,
    pub shutdown: watch::Receiver<bool>,
    pub done_tx: oneshot::Sender<()>,
    pub metrics: Arc<IngestMetrics>,
    /// Sequence number after the last committed reading, for whoever tails the log.
    pub committed_tx: watch::Sender<u64>,
    pub health: Arc<Health>,
}

type InFlight = JoinHandle<(Result<Commit, StoreError>, Pending)>;

pub async fn run(task: Task) {
    let Task {
        store,
        acker,
        mut inbound_rx,
        memory,
        config,
        mut shutdown,
        done_tx,
        metrics,
        committed_tx,
        health,
    } = task;
    let mut pending = Pending::default();
    let mut inflight: Option<InFlight> = None;
    // Earliest moment for the next commit attempt after a full store or an error.
    let mut retry_at: Option<Instant> = None;
    // Shutdown requested; `drained` once the event-loop task has dropped its sender.
    let mut closing = false;
    let mut drained = false;
    let mut full_since: Option<Instant> = None;
    let mut failing = false;
    // Acks wait here, never in `acker.ack().await`: the request channel is
    // drained only by the event-loop task, which may itself be waiting on us
    // (inbound channel full). Blocking on it could deadlock both tasks.
    let mut unsent_acks: VecDeque<AckToken> = VecDeque::new();

    loop {
        let now = Instant::now();
        if inflight.is_none()
            && retry_at.is_none_or(|t| now >= t)
            && pending.is_due(&config, now, closing)
        {
            retry_at = None;
            let batch = std::mem::take(&mut pending);
            let store = store.clone();
            let busy = health.busy(Stage::Writer);
            inflight = Some(tokio::task::spawn_blocking(move || {
                let _busy = busy;
                (store.commit(&batch.batch), batch)
            }));
        }
        // At shutdown, give up on a batch the store refuses (full or failing):
        // its QoS 1 messages stay with the broker.
        if closing
            && drained
            && inflight.is_none()
            && (pending.is_empty() || full_since.is_some() || failing)
        {
            break;
        }
        send_acks(
            &acker,
            &mut unsent_acks,
            metrics.connection.load(Ordering::Relaxed),
        );
        // Next moment the loop must wake up without a message or a commit result.
        let wake = [
            retry_at.filter(|_| inflight.is_none()),
            pending
                .since
                .filter(|_| inflight.is_none())
                .map(|s| s + config.flush_interval),
            (!unsent_acks.is_empty()).then(|| Instant::now() + ACK_RETRY),
        ]
        .into_iter()
        .flatten()
        .min();

        tokio::select! {
            joined = async { inflight.as_mut().expect("guarded by the branch condition").await }, if inflight.is_some() => {
                inflight = None;
                let (result, batch) = match joined {
                    Ok(r) => r,
                    Err(e) => {
                        // Only reachable in builds that unwind on panic.
                        error!(error = %e, "store commit task failed; its messages are not acknowledged");
                        failing = true;
                        retry_at = Some(Instant::now() + ERROR_RETRY);
                        continue;
                    }
                };
                match result {
                    Ok(Commit::Stored { first_seq, count }) => {
                        if std::mem::take(&mut failing) {
                            info!("store writes work again");
                        }
                        if let Some(since) = full_since.take() {
                            info!(paused_s = since.elapsed().as_secs_f64(), "store has space again; ingest resumed");
                        }
                        metrics.store_full.store(false, Ordering::Relaxed);
                        metrics.commits.fetch_add(1, Ordering::Relaxed);
                        metrics.readings_stored.fetch_add(count, Ordering::Relaxed);
                        debug!(first_seq, count, messages = batch.batch.messages, "batch committed");
                        if count > 0 {
                            committed_tx.send_replace(first_seq + count);
                        }
                        unsent_acks.extend(&batch.acks);
                        // Dropping the batch releases its share of the memory budget.
                        drop(batch);
                        metrics.set_held(&memory);
                    }
                    Ok(Commit::Full) => {
                        if full_since.is_none() {
                            warn!(
                                used_bytes = store.used_bytes(),
                                budget_bytes = store.budget_bytes(),
                                data_limit_bytes = store.data_limit(),
                                "store budget used up; ingest paused (no acks, no reads from the broker) until space frees"
                            );
                            full_since = Some(Instant::now());
                            metrics.full_pauses.fetch_add(1, Ordering::Relaxed);
                        }
                        metrics.store_full.store(true, Ordering::Relaxed);
                        retry_at = Some(Instant::now() + FULL_RETRY);
                        pending.prepend(batch);
                    }
                    Err(e) => {
                        // Once per outage, not once per retry.
                        if !failing {
                            error!(error = %e, "cannot write to the store; retrying every second (messages stay unacknowledged)");
                            failing = true;
                        } else {
                            debug!(error = %e, "store write still failing");
                        }
                        retry_at = Some(Instant::now() + ERROR_RETRY);
                        pending.prepend(batch);
                    }
                }
            }
            // While paused, take at most one batch more; at shutdown, take
            // everything left (bounded by the memory budget).
            msg = inbound_rx.recv(), if !drained && (closing || !pending.is_big(&config)) => {
                match msg {
                    Some(m) => pending.add(m, Instant::now()),
                    None => {
                        drained = true;
                        closing = true;
                    }
                }
            }
            _ = sleep_until(wake), if wake.is_some() => {}
            _ = shutdown.changed(), if !closing => {
                closing = true;
                // Commit what is there now rather than after the retry pause.
                retry_at = None;
            }
        }
    }
    if !pending.is_empty() {
        warn!(
            messages = pending.batch.messages,
            unacked = pending.acks.len(),
            qos0_readings_dropped = pending.qos0_readings,
            "store refused the last batch at shutdown: its QoS 1 messages stay with the broker; its QoS 0 readings are lost"
        );
    }
    // The event-loop task keeps polling until `done_tx` fires, so there is
    // room in the request channel soon; wait a little for it.
    let connection = metrics.connection.load(Ordering::Relaxed);
    let mut last: VecDeque<AckToken> = unsent_acks
        .into_iter()
        .filter(|t| t.connection == connection)
        .collect();
    let send_all = async {
        while let Some(token) = last.front() {
            if acker.ack(&ack_for(token.pkid)).await.is_err() {
                break;
            }
            last.pop_front();
        }
    };
    let _ = tokio::time::timeout(Duration::from_secs(1), send_all).await;
    let unsent = last.len();
    if unsent > 0 {
        warn!(unsent, "could not send every ack before exiting; the broker will redeliver those messages (stored twice)");
    }
    let _ = done_tx.send(());
}

fn ack_for(pkid: u16) -> Publish {
    let mut p = Publish::new("", QoS::AtLeastOnce, Vec::<u8>::new());
    p.pkid = pkid;
    p
}

/// Hand acks to the client while its request channel has room. Acks from an
/// earlier connection are dropped: the broker redelivers those messages and
/// may have given their packet ids to others.
fn send_acks(acker: &AsyncClient, unsent: &mut VecDeque<AckToken>, connection: u64) {
    while let Some(token) = unsent.front() {
        if token.connection == connection && acker.try_ack(&ack_for(token.pkid)).is_err() {
            // Full (or the event loop is gone, in which case the broker redelivers).
            break;
        }
        unsent.pop_front();
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(t) => tokio::time::sleep_until(t).await,
        None => std::future::pending().await,
    }
}
