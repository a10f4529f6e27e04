//! The task that owns the local broker's rumqttc event loop: connects (and
//! reconnects forever, with backoff), subscribes, decodes each publish and
//! hands it to the writer. Acks come back through the client handle.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS, SubscribeReasonCode};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use super::oversized::{self, Drain, Drained};
use super::ratelimit::RateLimit;
use super::route::{self, clock_is_set, route, Limits, Outcome, CLOCK_FLOOR_MS};
use super::{AckToken, Inbound, IngestMetrics, MemoryBudget, MEMORY_BUDGET_BYTES};
use crate::config::{BrokerConfig, DeviceRegistry, Subscription};
use crate::link::Link;
use crate::model::{wall_ms, EpochMs, Reason};
use crate::ops::{Health, Stage};

/// How long shutdown waits for the last acks to reach the broker.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(3);

#[derive(Debug, thiserror::Error)]
pub enum MqttError {
    #[error("TLS configuration: {0}")]
    Tls(String),
}

/// Acks and subscriptions waiting for the event loop. The writer never waits
/// for room here (it keeps acks that do not fit and retries).
const REQUEST_CAPACITY: usize = 4096;

/// Build the client and event loop for the local broker.
pub fn connect(broker: &BrokerConfig) -> Result<(AsyncClient, EventLoop), MqttError> {
    let mut opts = crate::link::options(broker).map_err(MqttError::Tls)?;
    // Persistent session: the broker queues QoS 1 messages while vigil is down.
    opts.set_clean_session(false)
        .set_manual_acks(true)
        // A packet over the limit is refused from its header, before it is
        // buffered; it breaks the connection, and `run` takes it off the
        // session (`oversized.rs`). Within the limit, a payload over
        // max_payload_bytes reaches `route` and is dead-lettered.
        .set_max_packet_size(oversized::packet_limit(broker.max_payload_bytes), 1 << 20);
    opts.set_request_channel_capacity(REQUEST_CAPACITY);
    Ok(AsyncClient::new(opts, REQUEST_CAPACITY))
}

pub struct Task {
    pub eventloop: EventLoop,
    pub client: AsyncClient,
    pub broker: BrokerConfig,
    pub subscriptions: Arc<[Subscription]>,
    /// Event times further ahead of the gateway's clock are dead-lettered.
    pub max_future_skew_ms: EpochMs,
    /// With `detect.devices_known_only`: the device files (SIGHUP sends new
    /// ones); readings of devices none of them names are dead-lettered.
    pub known_devices: Option<watch::Receiver<DeviceRegistry>>,
    pub inbound_tx: mpsc::Sender<Inbound>,
    pub memory: MemoryBudget,
    pub shutdown: watch::Receiver<bool>,
    /// Fires when the writer has committed and acked its last batch.
    pub writer_done: oneshot::Receiver<()>,
    pub metrics: Arc<IngestMetrics>,
    pub health: Arc<Health>,
}

/// What routing a publish needs besides the subscriptions: limits from the
/// configuration and, with `detect.devices_known_only`, the device files.
struct Rules {
    max_payload_bytes: usize,
    max_future_skew_ms: EpochMs,
    known_devices: Option<watch::Receiver<DeviceRegistry>>,
    clock_unset_logged: bool,
}

impl Rules {
    /// Route a publish received now.
    fn route(&mut self, subscriptions: &[Subscription], topic: &str, payload: &[u8]) -> Outcome {
        let now = wall_ms();
        if !clock_is_set(now) && !self.clock_unset_logged {
            self.clock_unset_logged = true;
            warn!(
                clock = %crate::model::rfc3339(now),
                "the gateway's clock is not set (before {}): sensors' event times cannot be checked against it until it is; check NTP",
                crate::model::rfc3339(CLOCK_FLOOR_MS)
            );
        }
        // Held only while routing, which does not wait.
        let registry = self.known_devices.as_ref().map(|rx| rx.borrow());
        let limits = Limits {
            max_payload_bytes: self.max_payload_bytes,
            max_future_skew_ms: self.max_future_skew_ms,
            known_devices: registry.as_deref(),
        };
        route(subscriptions, limits, topic, payload, now)
    }
}

/// Run until shutdown. Never returns early on connection errors: it retries forever.
pub async fn run(task: Task) {
    let Task {
        mut eventloop,
        client,
        broker,
        subscriptions,
        max_future_skew_ms,
        known_devices,
        inbound_tx,
        memory: budget,
        mut shutdown,
        writer_done,
        metrics,
        health,
    } = task;
    let mut link = Link::new("local", "broker", &broker);
    let addr = link.addr().to_string();
    let mut handoff = Handoff {
        inbound_tx,
        budget,
        metrics: metrics.clone(),
        warnings: RateLimit::new(Duration::from_secs(10)),
    };
    let mut refusals = RateLimit::new(Duration::from_secs(10));
    let mut rules = Rules {
        max_payload_bytes: broker.max_payload_bytes,
        max_future_skew_ms,
        known_devices,
        clock_unset_logged: false,
    };
    info!(broker = %addr, client_id = %broker.client_id, "connecting to the local broker");

    'run: loop {
        let event = tokio::select! {
            ev = eventloop.poll() => ev,
            _ = shutdown.changed() => break 'run,
        };
        match event {
            Ok(Event::Incoming(Packet::ConnAck(ack))) => {
                if link.up(ack.session_present) {
                    metrics.reconnects.fetch_add(1, Ordering::Relaxed);
                }
                metrics.connection.fetch_add(1, Ordering::Relaxed);
                metrics.connected.store(true, Ordering::Relaxed);
                // Subscribe even when the session was resumed: the configured
                // subscriptions may have changed since it was created. (Retained
                // messages are then sent again and stored twice.)
                let topics = subscriptions.iter().map(|s| {
                    let qos = if s.qos == 0 {
                        QoS::AtMostOnce
                    } else {
                        QoS::AtLeastOnce
                    };
                    rumqttc::SubscribeFilter::new(s.filter.clone(), qos)
                });
                if let Err(e) = client.try_subscribe_many(topics) {
                    error!(error = %e, "cannot queue the subscriptions");
                }
            }
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, SubscribeReasonCode::Failure))
                {
                    error!(broker = %addr, codes = ?ack.return_codes, "the broker refused a subscription; check its ACL for this client");
                } else {
                    metrics.subscribed.store(true, Ordering::Relaxed);
                    info!(broker = %addr, filters = subscriptions.len(), "subscribed");
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let busy = health.busy(Stage::Ingest);
                let outcome = rules.route(&subscriptions, &p.topic, &p.payload);
                let ack = (p.qos != QoS::AtMostOnce).then(|| AckToken {
                    connection: metrics.connection.load(Ordering::Relaxed),
                    pkid: p.pkid,
                });
                drop(p);
                drop(busy);
                if handoff.send(outcome, ack, &mut shutdown).await.is_err() {
                    break 'run;
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.connected.store(false, Ordering::Relaxed);
                metrics.subscribed.store(false, Ordering::Relaxed);
                let mut delay = link.down(&e);
                if let Some(size) = oversized::refused_size(&e) {
                    metrics.oversized_packets.fetch_add(1, Ordering::Relaxed);
                    if let Some(held) = refusals.check((), Instant::now()) {
                        warn!(
                            broker = %addr,
                            packet_bytes = size,
                            limit_bytes = oversized::packet_limit(broker.max_payload_bytes),
                            max_payload_bytes = broker.max_payload_bytes,
                            suppressed = held,
                            "refused a packet over the limit (broker.max_payload_bytes plus topic and header) unread; \
                             taking it off vigil's session, then reconnecting (Mosquitto's message_size_limit stops such payloads at the broker)"
                        );
                    }
                    match drain(
                        &broker,
                        &subscriptions,
                        &mut rules,
                        &mut handoff,
                        &mut shutdown,
                    )
                    .await
                    {
                        Ok(0) => {}
                        // It is gone from the session: no reason to wait.
                        Ok(_) => delay = Duration::ZERO,
                        Err(Stopped) => break 'run,
                    }
                }
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => break 'run,
                }
            }
        }
    }

    // Shutdown: stop handing messages over, but keep the connection serviced
    // until the writer's last acks are sent, then disconnect cleanly.
    drop(handoff);
    let drain = async {
        let mut writer_done = writer_done;
        if link.is_up() {
            loop {
                tokio::select! {
                    _ = &mut writer_done => break,
                    ev = eventloop.poll() => if ev.is_err() { return },
                }
            }
            if client.try_disconnect().is_ok() {
                while let Ok(ev) = eventloop.poll().await {
                    if matches!(ev, Event::Outgoing(Outgoing::Disconnect)) {
                        break;
                    }
                }
            }
        } else {
            let _ = writer_done.await;
        }
    };
    if tokio::time::timeout(SHUTDOWN_GRACE, drain).await.is_err() {
        warn!(broker = %addr, "gave up waiting for the last acks; the broker will redeliver those messages");
    }
    metrics.connected.store(false, Ordering::Relaxed);
    info!(broker = %addr, "disconnected from the local broker");
}

/// Hands messages to the writer; each holds its share of the memory budget
/// until its batch is committed.
struct Handoff {
    inbound_tx: mpsc::Sender<Inbound>,
    budget: MemoryBudget,
    metrics: Arc<IngestMetrics>,
    warnings: RateLimit<Reason>,
}

/// Shutdown began, or the writer is gone.
struct Stopped;

impl Handoff {
    /// Count one message and hand it over. Waiting here for memory or for
    /// room in the queue is the backpressure: nothing more is read from the
    /// broker meanwhile.
    async fn send(
        &mut self,
        outcome: Outcome,
        ack: Option<AckToken>,
        shutdown: &mut watch::Receiver<bool>,
    ) -> Result<(), Stopped> {
        let metrics = &self.metrics;
        metrics.messages.fetch_add(1, Ordering::Relaxed);
        if let Outcome::Rejected(dl) = &outcome {
            metrics.rejected.fetch_add(1, Ordering::Relaxed);
            warn_rejected(&mut self.warnings, dl.reason, &dl.topic, &dl.detail);
        }
        let bytes = match &outcome {
            Outcome::Readings(rs) => rs.iter().map(|r| r.approx_bytes()).sum(),
            Outcome::Rejected(dl) => dl.payload.len() + dl.detail.len() + dl.topic.len(),
        };
        let memory = tokio::select! {
            permit = self.budget.acquire(bytes, MEMORY_BUDGET_BYTES) => permit,
            _ = shutdown.changed() => return Err(Stopped),
        };
        metrics.set_held(&self.budget);
        let inbound = Inbound {
            outcome,
            ack,
            memory,
        };
        tokio::select! {
            sent = self.inbound_tx.send(inbound) => sent.map_err(|_| Stopped),
            _ = shutdown.changed() => Err(Stopped),
        }
    }
}

/// Take the session's redeliveries off the wire (`oversized.rs`) and hand
/// over what they hold. Returns how many oversized messages were removed;
/// a failure is logged, and the next refusal tries again.
async fn drain(
    broker: &BrokerConfig,
    subscriptions: &[Subscription],
    rules: &mut Rules,
    handoff: &mut Handoff,
    shutdown: &mut watch::Receiver<bool>,
) -> Result<usize, Stopped> {
    let mut removed = 0;
    let connected = tokio::select! {
        d = Drain::connect(broker) => d,
        _ = shutdown.changed() => return Err(Stopped),
    };
    let result = match connected {
        Ok(mut drain) => loop {
            let next = tokio::select! {
                next = drain.next() => next,
                _ = shutdown.changed() => return Err(Stopped),
            };
            let outcome = match next {
                Ok(None) => break Ok(()),
                Err(e) => break Err(e),
                Ok(Some(Drained::TooLarge { topic, head, len })) => {
                    removed += 1;
                    Outcome::Rejected(route::too_large(
                        topic,
                        head,
                        len,
                        broker.max_payload_bytes,
                        wall_ms(),
                    ))
                }
                Ok(Some(Drained::Message { topic, payload })) => {
                    rules.route(subscriptions, &topic, &payload)
                }
            };
            // QoS 0, or acknowledged already (oversized): no ack to send.
            handoff.send(outcome, None, shutdown).await?;
        },
        Err(e) => Err(e),
    };
    match result {
        Ok(()) => info!(removed, "took the redelivered messages off the session"),
        Err(e) => {
            warn!(error = %e, removed, "cannot take the redelivered messages off the session; the broker may send an oversized one again")
        }
    }
    Ok(removed)
}

fn warn_rejected(limiter: &mut RateLimit<Reason>, reason: Reason, topic: &str, detail: &str) {
    if let Some(held) = limiter.check(reason, Instant::now()) {
        warn!(%reason, topic, detail, suppressed = held, "payload rejected; kept in dead letters");
    }
}
