//! The writer task: group commits. Inbound messages accumulate into a batch
//! that is committed (one sled transaction and one fsync) when it is old
//! enough (`flush_interval`) or big enough (`flush_max_readings`, or
//! `PENDING_MAX_BYTES`), then the QoS 1 messages it holds are acknowledged.
//! While one batch is being committed on a blocking thread the next one fills,
//! so decoding, encoding and fsync overlap.
//!
//! When the store's budget is used up the batch is kept and retried; the
//! writer stops taking from the channel, which stops the event-loop task from
//! reading the socket: memory stays bounded and the broker keeps the messages.

use std::collections::VecDeque;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Publish, QoS};
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use super::route::Outcome;
use super::{Inbound, IngestMetrics};
use crate::store::{Batch, Commit, Store, StoreError};

/// Decoded bytes a batch may hold before it is committed regardless of age.
pub const PENDING_MAX_BYTES: usize = 16 << 20;
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

#[derive(Default)]
struct Pending {
    batch: Batch,
    acks: Vec<u16>,
    bytes: usize,
    since: Option<Instant>,
}

impl Pending {
    fn is_empty(&self) -> bool {
        self.batch.messages == 0
    }

    fn add(&mut self, msg: Inbound, now: Instant) {
        self.since.get_or_insert(now);
        self.batch.messages += 1;
        match msg.outcome {
            Outcome::Readings(rs) => {
                self.bytes += rs.iter().map(|r| r.approx_bytes()).sum::<usize>();
                self.batch.readings.extend(rs);
            }
            Outcome::Rejected(dl) => {
                self.bytes += dl.payload.len() + dl.detail.len() + dl.topic.len();
                self.batch.dead_letters.push(dl);
            }
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
        older.bytes += self.bytes;
        *self = older;
    }

    /// Big enough to commit now (and to stop taking more).
    fn is_big(&self, cfg: &WriterConfig) -> bool {
        self.batch.readings.len() as u64 + self.batch.dead_letters.len() as u64
            >= cfg.flush_max_readings as u64
            || self.batch.messages >= cfg.flush_max_readings as u64
            || self.bytes >= PENDING_MAX_BYTES
    }
}

pub struct Task {
    pub store: Store,
    /// Used only to send acks; the event-loop task owns the connection.
    pub acker: AsyncClient,
    pub inbound_rx: mpsc::Receiver<Inbound>,
    pub config: WriterConfig,
    pub shutdown: watch::Receiver<bool>,
    pub done_tx: oneshot::Sender<()>,
    pub metrics: Arc<IngestMetrics>,
}

type InFlight = JoinHandle<(Result<Commit, StoreError>, Pending)>;

pub async fn run(task: Task) {
    let Task {
        store,
        acker,
        mut inbound_rx,
        config,
        mut shutdown,
        done_tx,
        metrics,
    } = task;
    let mut pending = Pending::default();
    let mut inflight: Option<InFlight> = None;
    let mut retry_at: Option<Instant> = None;
    let mut closing = false;
    let mut full_since: Option<Instant> = None;
    let mut failing = false;
    // Acks wait here, never in `acker.ack().await`: the request channel is
    // drained only by the event-loop task, which may itself be waiting on us
    // (inbound channel full). Blocking on it could deadlock both tasks.
    let mut unsent_acks: VecDeque<u16> = VecDeque::new();

    loop {
        let now = Instant::now();
        let due = pending
            .since
            .is_some_and(|s| now >= s + config.flush_interval)
            || pending.is_big(&config)
            || closing;
        let may_retry = retry_at.is_none_or(|t| now >= t);
        if inflight.is_none() && !pending.is_empty() && due && may_retry {
            let batch = std::mem::take(&mut pending);
            metrics.set_pending(0);
            let store = store.clone();
            inflight = Some(tokio::task::spawn_blocking(move || {
                (store.commit(&batch.batch), batch)
            }));
        }
        if closing && inflight.is_none() && (pending.is_empty() || full_since.is_some()) {
            break;
        }
        send_acks(&acker, &mut unsent_acks);
        // Next moment the loop must wake up without a message or a commit result.
        let wake = [
            retry_at,
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
                        // The blocking commit panicked: the batch is gone, but its QoS 1
                        // messages were not acked, so the broker will redeliver them.
                        error!(error = %e, "store commit task failed; unacknowledged messages will be redelivered");
                        retry_at = Some(Instant::now() + ERROR_RETRY);
                        continue;
                    }
                };
                match result {
                    Ok(Commit::Stored { first_seq, count }) => {
                        retry_at = None;
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
                        unsent_acks.extend(&batch.acks);
                    }
                    Ok(Commit::Full) => {
                        if full_since.is_none() {
                            warn!(
                                used_bytes = store.used_bytes(),
                                budget_bytes = store.budget_bytes(),
                                "store budget used up; ingest paused (no acks, no reads from the broker) until space frees"
                            );
                            full_since = Some(Instant::now());
                        }
                        metrics.store_full.store(true, Ordering::Relaxed);
                        retry_at = Some(Instant::now() + FULL_RETRY);
                        pending.prepend(batch);
                        metrics.set_pending(pending.bytes as u64);
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
                        metrics.set_pending(pending.bytes as u64);
                    }
                }
            }
            msg = inbound_rx.recv(), if !closing && !pending.is_big(&config) => {
                match msg {
                    Some(m) => {
                        pending.add(m, Instant::now());
                        metrics.set_pending(pending.bytes as u64);
                    }
                    None => closing = true,
                }
            }
            _ = sleep_until(wake), if wake.is_some() => {}
            _ = shutdown.changed(), if !closing => {
                // Take what is already queued (bounded by the channel), commit it, ack it.
                closing = true;
                retry_at = None;
                while let Ok(m) = inbound_rx.try_recv() {
                    pending.add(m, Instant::now());
                }
            }
        }
    }
    if !pending.is_empty() {
        let qos0 = pending
            .batch
            .readings
            .len()
            .saturating_sub(pending.acks.len());
        warn!(
            messages = pending.batch.messages,
            unacked = pending.acks.len(),
            "store full at shutdown: QoS 1 messages stay with the broker; up to {qos0} readings from QoS 0 messages are dropped"
        );
    }
    // At shutdown the event-loop task keeps polling until `done_tx` fires, so
    // waiting for room in the request channel is safe here.
    for pkid in unsent_acks {
        if tokio::time::timeout(Duration::from_secs(1), acker.ack(&ack_for(pkid)))
            .await
            .is_err()
        {
            break;
        }
    }
    let _ = done_tx.send(());
}

fn ack_for(pkid: u16) -> Publish {
    let mut p = Publish::new("", QoS::AtLeastOnce, Vec::<u8>::new());
    p.pkid = pkid;
    p
}

/// Hand acks to the client while its request channel has room.
fn send_acks(acker: &AsyncClient, unsent: &mut VecDeque<u16>) {
    while let Some(pkid) = unsent.front() {
        if acker.try_ack(&ack_for(*pkid)).is_err() {
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
