//! The forward stage: outbox entries in (alerts first, oldest first within a
//! lane), QoS 1 publishes to the upstream broker out. An entry is deleted
//! only after its PUBACK; whatever is unacknowledged when the connection
//! drops, or when vigil stops, is sent again from the outbox. An entry is
//! published only once it is on disk (`Store::outbox_claim` fsyncs when it
//! must), so a crash cannot give an id that went out to other content.
//!
//! This task owns the upstream connection: one rumqttc event loop, polled
//! here and nowhere else. The gateway's status topic is set to a retained
//! `online` on each connect, and to `offline` by the last will (or on a clean
//! shutdown).
//!
//! Flow control: at most `max_inflight` publishes wait for their PUBACK.
//! Whenever one slot frees, the alerts lane is looked at first, so a live
//! alert overtakes any backlog of aggregates after at most one PUBACK. The
//! aggregates lane can be held to `aggregate_rate_per_s`, so that a backlog
//! after an outage does not saturate a slow uplink.

mod message;

pub use message::{encode, message_id, SCHEMA_VERSION};

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, Event, EventLoop, LastWill, Outgoing, Packet, QoS};
use tokio::sync::watch;
use tokio::time::Instant;
use tracing::{debug, error, info, warn};

use crate::config::UpstreamConfig;
use crate::link::Link;
use crate::ops::{Health, Stage};
use crate::store::{Lane, OutboxItem, Store, StoreError};

/// Outbox entries read (and claimed) from the store at a time, per lane.
const READ_BATCH: usize = 256;
/// Acknowledged entries are deleted in batches of up to this many ...
const ACK_BATCH: usize = 512;
/// ... or after this long.
const ACK_DELAY: Duration = Duration::from_millis(10);
/// How long shutdown waits for outstanding PUBACKs and the `offline` status.
const SHUTDOWN_GRACE: Duration = Duration::from_millis(1500);
/// Largest message in either direction.
const MAX_PACKET: usize = 1 << 20;

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("TLS configuration of the upstream broker: {0}")]
    Tls(String),
}

/// Live figures for logs and the metrics endpoint.
#[derive(Debug, Default)]
pub struct ForwardMetrics {
    pub connected: AtomicBool,
    /// Successful connections (the first one included).
    pub connects: AtomicU64,
    /// Publishes handed to the connection, per lane (resends included).
    pub published: [AtomicU64; 2],
    /// PUBACKs received, per lane.
    pub acked: [AtomicU64; 2],
    pub inflight: AtomicU64,
}

pub struct Task {
    pub store: Store,
    pub config: UpstreamConfig,
    pub gateway_id: String,
    pub eventloop: EventLoop,
    pub client: AsyncClient,
    /// Changes whenever detection has added to the outbox.
    pub outbox_rx: watch::Receiver<u64>,
    pub shutdown: watch::Receiver<bool>,
    pub metrics: Arc<ForwardMetrics>,
    pub health: Arc<Health>,
}

/// Build the client and event loop for the upstream broker.
pub fn connect(config: &UpstreamConfig) -> Result<(AsyncClient, EventLoop), ForwardError> {
    let mut opts = crate::link::options(&config.connection).map_err(ForwardError::Tls)?;
    // A clean session: the outbox, not the MQTT session, is what survives a
    // disconnect, and everything unacknowledged is sent again from it. (With
    // a new session rumqttc also forgets its own unacknowledged publishes.)
    opts.set_clean_session(true)
        .set_last_will(LastWill::new(
            config.status_topic.clone(),
            "offline",
            QoS::AtLeastOnce,
            true,
        ))
        .set_max_packet_size(MAX_PACKET, MAX_PACKET)
        // Packet ids cycle over twice our window: with a broker that acks in
        // order, an id is never still in use when it comes round again.
        .set_inflight(config.max_inflight.saturating_mul(2).saturating_add(2));
    let capacity = usize::from(config.max_inflight) + 16;
    opts.set_request_channel_capacity(capacity);
    Ok(AsyncClient::new(opts, capacity))
}

/// What a publish request was, until its PUBACK.
#[derive(Debug, Clone, Copy)]
enum Sent {
    Entry(Lane, u64),
    Status,
}

/// Token bucket for the aggregates lane.
pub(crate) struct Pace {
    rate: f64,
    burst: f64,
    tokens: f64,
    at: Instant,
}

impl Pace {
    /// `rate` is held to the range the configuration accepts, so that the
    /// wait for a token is at most 1000 s and always a valid `Duration`.
    pub(crate) fn new(rate: f64) -> Pace {
        let range = crate::config::ranges::AGGREGATE_RATE_PER_S;
        // `max` first: a NaN becomes the lowest rate.
        let rate = rate.max(range.min).min(range.max);
        // 50 ms worth of messages, at least one.
        let burst = (rate / 20.0).max(1.0);
        Pace {
            rate,
            burst,
            tokens: burst,
            at: Instant::now(),
        }
    }

    fn refill(&mut self, now: Instant) {
        let dt = now.saturating_duration_since(self.at).as_secs_f64();
        self.tokens = (self.tokens + dt * self.rate).min(self.burst);
        self.at = now;
    }

    /// Take a token, or say when the next one is due.
    pub(crate) fn take(&mut self, now: Instant) -> Result<(), Instant> {
        self.refill(now);
        // A token that is due within rounding counts: the wait below is
        // rounded up to whole nanoseconds, and at its end one must be there.
        if self.tokens >= 1.0 - 1e-9 {
            self.tokens -= 1.0;
            Ok(())
        } else {
            // At most 1 / the lowest rate: 1e12 ns, a valid `Duration`.
            let wait_ns = ((1.0 - self.tokens) / self.rate * 1e9).ceil();
            Err(now + Duration::from_nanos(wait_ns as u64))
        }
    }
}

struct Forwarder {
    store: Store,
    config: UpstreamConfig,
    gateway: String,
    client: AsyncClient,
    metrics: Arc<ForwardMetrics>,
    health: Arc<Health>,
    /// Entries read and claimed, not yet published.
    queue: [VecDeque<OutboxItem>; 2],
    /// Where the next read of each lane starts.
    next_read: [u64; 2],
    /// The lane may hold entries at or after `next_read`.
    more: [bool; 2],
    /// Publish requests handed to rumqttc, waiting for their packet id.
    sent: VecDeque<Sent>,
    /// A publish rumqttc holds back because its packet id is still in use.
    collided: Option<Sent>,
    /// Packet id → what was published, until the PUBACK.
    inflight: HashMap<u16, Sent>,
    /// PUBACKed entries not yet deleted from the store.
    acked: Vec<(Lane, u64)>,
    pace: Option<Pace>,
    /// When the next aggregate may go, while the pace holds it back.
    paced_until: Option<Instant>,
}

pub async fn run(task: Task) {
    let Task {
        store,
        config,
        gateway_id,
        mut eventloop,
        client,
        mut outbox_rx,
        mut shutdown,
        metrics,
        health,
    } = task;
    let mut link = Link::new("upstream", "upstream", &config.connection);
    info!(broker = %link.addr(), client_id = %config.connection.client_id, status_topic = %config.status_topic, "connecting to the upstream broker");
    let mut f = Forwarder {
        pace: config.aggregate_rate.map(Pace::new),
        store,
        config,
        gateway: gateway_id,
        client,
        metrics,
        health,
        queue: Default::default(),
        next_read: [0; 2],
        more: [true; 2],
        sent: VecDeque::new(),
        collided: None,
        inflight: HashMap::new(),
        acked: Vec::new(),
        paced_until: None,
    };
    let mut ack_deadline: Option<Instant> = None;
    // Detection may stop first at shutdown; a closed channel must not spin.
    let mut outbox_open = true;
    'run: loop {
        if link.is_up() {
            if let Err(e) = f.fill().await {
                error!(error = %e, "cannot read the outbox; retrying");
                tokio::select! {
                    _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => break 'run,
                }
            }
        }
        if !f.acked.is_empty() && ack_deadline.is_none() {
            ack_deadline = Some(Instant::now() + ACK_DELAY);
        }
        let paced = f.paced_until;
        tokio::select! {
            ev = eventloop.poll() => match ev {
                Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                    link.up(ack.session_present);
                    f.on_connected();
                }
                Ok(ev) => f.on_event(ev),
                Err(e) => {
                    f.metrics.connected.store(false, Ordering::Relaxed);
                    f.flush_acks().await;
                    ack_deadline = None;
                    f.reset();
                    let delay = link.down(&e);
                    tokio::select! {
                        _ = tokio::time::sleep(delay) => {}
                        _ = shutdown.changed() => break 'run,
                    }
                }
            },
            changed = outbox_rx.changed(), if outbox_open => match changed {
                Ok(()) => f.more = [true; 2],
                Err(_) => outbox_open = false,
            },
            _ = sleep_until(paced), if paced.is_some() => f.paced_until = None,
            _ = sleep_until(ack_deadline), if ack_deadline.is_some() => {
                f.flush_acks().await;
                ack_deadline = None;
            }
            _ = shutdown.changed() => break 'run,
        }
        if f.acked.len() >= ACK_BATCH {
            f.flush_acks().await;
            ack_deadline = None;
        }
    }
    f.stop(&mut eventloop, &link).await;
}

async fn sleep_until(at: Option<Instant>) {
    if let Some(at) = at {
        tokio::time::sleep_until(at).await;
    }
}

impl Forwarder {
    fn outstanding(&self) -> usize {
        self.sent.len() + self.inflight.len() + usize::from(self.collided.is_some())
    }

    fn on_connected(&mut self) {
        self.metrics.connected.store(true, Ordering::Relaxed);
        self.metrics.connects.fetch_add(1, Ordering::Relaxed);
        // Birth message: the retained status the last will overwrites.
        self.publish_status("online");
        self.more = [true; 2];
    }

    fn publish_status(&mut self, status: &'static str) -> bool {
        match self.client.try_publish(
            self.config.status_topic.clone(),
            QoS::AtLeastOnce,
            true,
            status,
        ) {
            Ok(()) => {
                self.sent.push_back(Sent::Status);
                true
            }
            Err(e) => {
                warn!(error = %e, status, "cannot queue the gateway status");
                false
            }
        }
    }

    fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Outgoing(Outgoing::Publish(pkid)) => {
                // Requests go out in the order they were made; a held-back
                // one goes out first once its packet id is free.
                if let Some(s) = self.collided.take().or_else(|| self.sent.pop_front()) {
                    self.inflight.insert(pkid, s);
                }
            }
            Event::Outgoing(Outgoing::AwaitAck(_)) => {
                self.collided = self.sent.pop_front();
            }
            Event::Incoming(Packet::PubAck(ack)) => match self.inflight.remove(&ack.pkid) {
                Some(Sent::Entry(lane, seq)) => {
                    self.metrics.acked[lane as usize].fetch_add(1, Ordering::Relaxed);
                    self.acked.push((lane, seq));
                }
                Some(Sent::Status) => debug!("upstream broker has the online status"),
                None => debug!(pkid = ack.pkid, "PUBACK for an unknown packet id"),
            },
            _ => {}
        }
        self.metrics
            .inflight
            .store(self.outstanding() as u64, Ordering::Relaxed);
    }

    /// The connection is gone: everything not acknowledged goes again, from
    /// the outbox, once it is back.
    fn reset(&mut self) {
        self.sent.clear();
        self.inflight.clear();
        self.collided = None;
        self.queue = Default::default();
        self.next_read = [0; 2];
        self.more = [true; 2];
        self.store.outbox_release();
        self.metrics.inflight.store(0, Ordering::Relaxed);
    }

    /// Publish from the outbox while the window has room.
    async fn fill(&mut self) -> Result<(), StoreError> {
        while self.outstanding() < usize::from(self.config.max_inflight) {
            let lane = if self.ready(Lane::Alerts).await? {
                Lane::Alerts
            } else if self.config.aggregates
                && self.paced_until.is_none()
                && self.ready(Lane::Aggregates).await?
            {
                if let Some(pace) = &mut self.pace {
                    if let Err(at) = pace.take(Instant::now()) {
                        self.paced_until = Some(at);
                        return Ok(());
                    }
                }
                Lane::Aggregates
            } else {
                return Ok(());
            };
            let Some(item) = self.queue[lane as usize].pop_front() else {
                return Ok(());
            };
            let (topic, payload) = match encode(&self.config, &self.gateway, lane, &item) {
                Ok(m) => m,
                Err(e) => {
                    // Left claimed and unsent: it is tried again after the next reconnect.
                    error!(lane = lane.as_str(), seq = item.seq, error = %e, "cannot encode an outbox entry; skipping it for now");
                    continue;
                }
            };
            if let Err(e) = self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
            {
                // The request channel has room for the whole window; only a
                // stopped event loop gets here. Keep the entry for later.
                debug!(error = %e, "cannot queue a publish");
                self.queue[lane as usize].push_front(item);
                return Ok(());
            }
            self.metrics.published[lane as usize].fetch_add(1, Ordering::Relaxed);
            self.sent.push_back(Sent::Entry(lane, item.seq));
        }
        Ok(())
    }

    /// Whether `lane` has an entry to publish, reading the next batch if needed.
    async fn ready(&mut self, lane: Lane) -> Result<bool, StoreError> {
        let l = lane as usize;
        if !self.queue[l].is_empty() {
            return Ok(true);
        }
        if !self.more[l] {
            return Ok(false);
        }
        let store = self.store.clone();
        let from = self.next_read[l];
        let busy = self.health.busy(Stage::Forward);
        let items = tokio::task::spawn_blocking(move || {
            let _busy = busy;
            store.outbox_claim(lane, from, READ_BATCH)
        })
        .await
        .unwrap_or_else(|e| {
            error!(error = %e, "outbox read panicked");
            Ok(Vec::new())
        })?;
        if items.len() < READ_BATCH {
            self.more[l] = false;
        }
        if let Some(last) = items.last() {
            self.next_read[l] = last.seq + 1;
        }
        self.queue[l].extend(items);
        Ok(!self.queue[l].is_empty())
    }

    /// Delete acknowledged entries from the store.
    async fn flush_acks(&mut self) {
        if self.acked.is_empty() {
            return;
        }
        let acked = std::mem::take(&mut self.acked);
        let store = self.store.clone();
        let busy = self.health.busy(Stage::Forward);
        let result = tokio::task::spawn_blocking(move || {
            let _busy = busy;
            let r = store.outbox_ack(&acked);
            (acked, r)
        })
        .await;
        match result {
            Ok((_, Ok(()))) => {}
            Ok((acked, Err(e))) => {
                error!(error = %e, "cannot delete delivered entries from the outbox; retrying");
                self.acked = acked;
            }
            Err(e) => error!(error = %e, "outbox delete panicked; the entries will be sent again"),
        }
    }

    /// Shutdown: wait briefly for outstanding PUBACKs, delete what was
    /// delivered, say `offline`, disconnect.
    async fn stop(mut self, eventloop: &mut EventLoop, link: &Link) {
        if link.is_up() {
            let grace = async {
                // Returns false if the connection dropped.
                async fn settle(f: &mut Forwarder, eventloop: &mut EventLoop) -> bool {
                    while f.outstanding() > 0 {
                        match eventloop.poll().await {
                            Ok(ev) => f.on_event(ev),
                            Err(_) => return false,
                        }
                    }
                    true
                }
                if !settle(&mut self, eventloop).await {
                    return;
                }
                if self.publish_status("offline") && !settle(&mut self, eventloop).await {
                    return;
                }
                if self.client.try_disconnect().is_ok() {
                    while let Ok(ev) = eventloop.poll().await {
                        if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                            break;
                        }
                    }
                }
            };
            if tokio::time::timeout(SHUTDOWN_GRACE, grace).await.is_err() {
                warn!("the upstream broker did not acknowledge everything in time; the rest is sent again at the next start");
            }
        }
        self.flush_acks().await;
        self.store.outbox_release();
        self.metrics.connected.store(false, Ordering::Relaxed);
        info!("disconnected from the upstream broker");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pace_allows_a_burst_then_spaces_messages_at_the_rate() {
        let t0 = Instant::now();
        let mut p = Pace::new(100.0);
        // Burst of 5 (50 ms at 100/s), then one every 10 ms.
        for _ in 0..5 {
            assert!(p.take(t0).is_ok());
        }
        let next = p.take(t0).unwrap_err();
        assert_eq!(next - t0, Duration::from_millis(10));
        assert!(p.take(t0 + Duration::from_millis(10)).is_ok());
        assert!(p.take(t0 + Duration::from_millis(11)).is_err());
        // A long pause refills only up to the burst.
        let later = t0 + Duration::from_secs(10);
        let taken = (0..100).filter(|_| p.take(later).is_ok()).count();
        assert_eq!(taken, 5);
    }

    /// A rate that once passed validation (1e-20 per second) made the wait
    /// for the second message overflow `Duration`: the pacing must stay
    /// total for any rate it is given.
    #[test]
    fn pace_is_total_for_any_rate() {
        let t0 = Instant::now();
        for rate in [1e-20, f64::MIN_POSITIVE, 1e-3, 1e6, 1e300, f64::INFINITY] {
            let mut p = Pace::new(rate);
            assert!(p.take(t0).is_ok(), "{rate}: the burst holds one message");
            let mut at = t0;
            for _ in 0..3 {
                while p.take(at).is_ok() {}
                let next = p.take(at).unwrap_err();
                assert!(
                    next > at && next - at <= Duration::from_secs(1000),
                    "{rate}"
                );
                // When it is due, a token is there.
                assert!(p.take(next).is_ok(), "{rate}");
                at = next;
            }
        }
    }
}
