//! The task that owns the local broker's rumqttc event loop: connects (and
//! reconnects forever, with backoff), subscribes, decodes each publish and
//! hands it to the writer. Acks come back through the client handle.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS, SubscribeReasonCode};
use tokio::sync::{mpsc, oneshot, watch};
use tracing::{error, info, warn};

use super::ratelimit::RateLimit;
use super::route::{clock_is_set, route, Limits, Outcome, CLOCK_FLOOR_MS};
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

/// Largest packet MQTT can express (variable byte integer, four bytes).
const MQTT_MAX_PACKET: usize = 268_435_455;
/// Acks and subscriptions waiting for the event loop. The writer never waits
/// for room here (it keeps acks that do not fit and retries).
const REQUEST_CAPACITY: usize = 4096;

/// Build the client and event loop for the local broker.
pub fn connect(broker: &BrokerConfig) -> Result<(AsyncClient, EventLoop), MqttError> {
    let mut opts = crate::link::options(broker).map_err(MqttError::Tls)?;
    // Persistent session: the broker queues QoS 1 messages while vigil is down.
    opts.set_clean_session(false)
        .set_manual_acks(true)
        // Accept any packet MQTT allows: a payload over our own limit must reach
        // `route` to be dead-lettered. Refusing it here would break the
        // connection and the broker would redeliver it forever. (The broker's
        // `message_size_limit` is what bounds the memory one packet can take.)
        .set_max_packet_size(MQTT_MAX_PACKET, 1 << 20);
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
    let mut warnings = RateLimit::new(Duration::from_secs(10));
    let mut clock_unset_logged = false;
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
                metrics.messages.fetch_add(1, Ordering::Relaxed);
                let busy = health.busy(Stage::Ingest);
                let now = wall_ms();
                if !clock_is_set(now) && !clock_unset_logged {
                    clock_unset_logged = true;
                    warn!(
                        clock = %crate::model::rfc3339(now),
                        "the gateway's clock is not set (before {}): sensors' event times cannot be checked against it until it is; check NTP",
                        crate::model::rfc3339(CLOCK_FLOOR_MS)
                    );
                }
                let outcome = {
                    // Held only while routing, which does not wait.
                    let registry = known_devices.as_ref().map(|rx| rx.borrow());
                    let limits = Limits {
                        max_payload_bytes: broker.max_payload_bytes,
                        max_future_skew_ms,
                        known_devices: registry.as_deref(),
                    };
                    route(&subscriptions, limits, &p.topic, &p.payload, now)
                };
                if let Outcome::Rejected(dl) = &outcome {
                    metrics.rejected.fetch_add(1, Ordering::Relaxed);
                    warn_rejected(&mut warnings, dl.reason, &dl.topic, &dl.detail);
                }
                let bytes = match &outcome {
                    Outcome::Readings(rs) => rs.iter().map(|r| r.approx_bytes()).sum(),
                    Outcome::Rejected(dl) => dl.payload.len() + dl.detail.len() + dl.topic.len(),
                };
                let ack = (p.qos != QoS::AtMostOnce).then(|| AckToken {
                    connection: metrics.connection.load(Ordering::Relaxed),
                    pkid: p.pkid,
                });
                drop(p);
                drop(busy);
                // Waiting here is the backpressure: no more reads from the socket.
                let memory = tokio::select! {
                    permit = budget.acquire(bytes, MEMORY_BUDGET_BYTES) => permit,
                    _ = shutdown.changed() => break 'run,
                };
                metrics.set_held(&budget);
                let inbound = Inbound {
                    outcome,
                    ack,
                    memory,
                };
                tokio::select! {
                    sent = inbound_tx.send(inbound) => if sent.is_err() { break 'run },
                    _ = shutdown.changed() => break 'run,
                }
            }
            Ok(_) => {}
            Err(e) => {
                metrics.connected.store(false, Ordering::Relaxed);
                metrics.subscribed.store(false, Ordering::Relaxed);
                let delay = link.down(&e);
                tokio::select! {
                    _ = tokio::time::sleep(delay) => {}
                    _ = shutdown.changed() => break 'run,
                }
            }
        }
    }

    // Shutdown: stop handing messages over, but keep the connection serviced
    // until the writer's last acks are sent, then disconnect cleanly.
    drop(inbound_tx);
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

fn warn_rejected(limiter: &mut RateLimit<Reason>, reason: Reason, topic: &str, detail: &str) {
    if let Some(held) = limiter.check(reason, Instant::now()) {
        warn!(%reason, topic, detail, suppressed = held, "payload rejected; kept in dead letters");
    }
}
