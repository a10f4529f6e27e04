//! The MQTT side of a run: messages in, broker acknowledgements counted out.
//!
//! A few rumqttc clients, each with one task that owns and polls its event
//! loop; a device always goes through the same client, so its messages stay
//! in order. Memory is bounded by each client's request queue and in-flight
//! window: when both are full, `publish` waits (the broker sets the pace).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rumqttc::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions, Outgoing, Packet, QoS};
use tokio::sync::Notify;
use tokio::task::JoinHandle;

use super::fleet::Message;
use super::options::Plan;
use super::SimError;

/// MQTT connections: one is enough for a paced run; flat out, rumqttc
/// writes and flushes each request on its own, so a few connections (one
/// task each) are what reaches tens of thousands of messages a second.
const CLIENTS: usize = 4;
/// QoS 1 publishes awaiting their PUBACK, per connection.
const INFLIGHT: u16 = 1000;
/// Requests queued for each event loop.
const REQUEST_CAPACITY: usize = 4096;
/// An unreachable broker fails the run after this long.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
const KEEP_ALIVE: Duration = Duration::from_secs(10);
/// At the end: how long to wait for the DISCONNECT to go out.
const DISCONNECT_WAIT: Duration = Duration::from_secs(2);
/// Room for the topic and the packet header on top of the largest payload.
const PACKET_OVERHEAD: usize = 64 << 10;

/// What one connection's event loop has done, shared with the run.
#[derive(Default)]
struct Progress {
    /// PUBLISH packets written to the socket.
    written: AtomicU64,
    /// PUBACKs received.
    acked: AtomicU64,
    /// The connection has ended (its task is about to return).
    ended: AtomicBool,
    /// Woken on each of the above (`notify_one` keeps a permit for a waiter
    /// that comes later, so no change is missed between a check and a wait).
    changed: Notify,
}

struct Link {
    client: AsyncClient,
    progress: Arc<Progress>,
    /// The event loop's task; taken when its result is read.
    poller: Option<JoinHandle<Result<(), ConnectionError>>>,
    /// Messages handed to the client.
    queued: u64,
}

pub(super) struct Publisher {
    links: Vec<Link>,
    qos: QoS,
    broker: String,
}

/// Counts at the end of a run.
pub(super) struct Delivery {
    /// Messages the broker acknowledged (QoS 1) or that were written to the
    /// socket before a clean disconnect (QoS 0).
    pub confirmed: u64,
    pub queued: u64,
}

impl Publisher {
    /// Connect every client, or fail within `CONNECT_TIMEOUT` with the reason.
    pub async fn connect(
        plan: &Plan,
        client_id: &str,
        max_payload: usize,
    ) -> Result<Publisher, SimError> {
        let mut links = Vec::new();
        for i in 0..plan.devices.min(CLIENTS) {
            let mut opts =
                MqttOptions::new(format!("{client_id}-{}", i + 1), &plan.host, plan.port);
            opts.set_clean_session(true)
                .set_keep_alive(KEEP_ALIVE)
                .set_inflight(INFLIGHT)
                .set_max_packet_size(PACKET_OVERHEAD, max_payload + PACKET_OVERHEAD)
                .set_request_channel_capacity(REQUEST_CAPACITY);
            let (client, mut eventloop) = AsyncClient::new(opts, REQUEST_CAPACITY);
            eventloop
                .network_options
                .set_connection_timeout(CONNECT_TIMEOUT.as_secs());
            if let Err(reason) = connack(&mut eventloop).await {
                for link in links {
                    close(link).await;
                }
                return Err(SimError::Connect {
                    broker: plan.broker.clone(),
                    reason,
                });
            }
            let progress = Arc::new(Progress::default());
            let poller = tokio::spawn({
                let progress = progress.clone();
                async move {
                    let result = poll(eventloop, &progress).await;
                    progress.ended.store(true, Ordering::Relaxed);
                    progress.changed.notify_one();
                    result
                }
            });
            links.push(Link {
                client,
                progress,
                poller: Some(poller),
                queued: 0,
            });
        }
        Ok(Publisher {
            links,
            qos: if plan.qos == 0 {
                QoS::AtMostOnce
            } else {
                QoS::AtLeastOnce
            },
            broker: plan.broker.clone(),
        })
    }

    /// Hand `m` to its device's client; waits while that client's queue is full.
    pub async fn publish(&mut self, m: Message) -> Result<(), SimError> {
        let i = m.device % self.links.len();
        let link = &mut self.links[i];
        if link
            .client
            .publish(m.topic, self.qos, false, m.payload)
            .await
            .is_err()
        {
            // The event loop is gone: its task holds the reason.
            return Err(self.lost(i).await);
        }
        link.queued += 1;
        Ok(())
    }

    /// An error if a connection has been lost.
    pub async fn check(&mut self) -> Result<(), SimError> {
        let ended = |l: &Link| l.poller.as_ref().is_none_or(|p| p.is_finished());
        match self.links.iter().position(ended) {
            Some(i) => Err(self.lost(i).await),
            None => Ok(()),
        }
    }

    async fn lost(&mut self, i: usize) -> SimError {
        let reason = match self.links[i].poller.take() {
            Some(poller) => match poller.await {
                Ok(Err(e)) => e.to_string(),
                Ok(Ok(())) => "disconnected".to_string(),
                Err(e) => e.to_string(),
            },
            None => "disconnected".to_string(),
        };
        SimError::ConnectionLost {
            broker: self.broker.clone(),
            reason,
        }
    }

    /// Wait up to `wait` until the broker has acknowledged every QoS 1
    /// message (or, at QoS 0, until every message is written), then
    /// disconnect. A lost connection ends the wait: what was confirmed
    /// until then is counted.
    pub async fn finish(self, wait: Duration) -> Delivery {
        let deadline = tokio::time::Instant::now() + wait;
        let qos = self.qos;
        let done = |l: &Link| {
            let p = &l.progress;
            let n = match qos {
                QoS::AtMostOnce => p.written.load(Ordering::Relaxed),
                _ => p.acked.load(Ordering::Relaxed),
            };
            n >= l.queued
        };
        let mut delivery = Delivery {
            confirmed: 0,
            queued: 0,
        };
        for link in self.links {
            while !done(&link) && !link.progress.ended.load(Ordering::Relaxed) {
                tokio::select! {
                    _ = link.progress.changed.notified() => {}
                    _ = tokio::time::sleep_until(deadline) => break,
                }
            }
            let p = &link.progress;
            let confirmed = match qos {
                QoS::AtMostOnce => p.written.load(Ordering::Relaxed),
                _ => p.acked.load(Ordering::Relaxed),
            };
            delivery.confirmed += confirmed.min(link.queued);
            delivery.queued += link.queued;
            close(link).await;
        }
        delivery
    }
}

/// Disconnect cleanly if the connection still stands, and end its task.
async fn close(link: Link) {
    let Link { client, poller, .. } = link;
    let Some(mut poller) = poller else {
        return;
    };
    if !poller.is_finished() {
        let _ = tokio::time::timeout(DISCONNECT_WAIT, client.disconnect()).await;
    }
    if tokio::time::timeout(DISCONNECT_WAIT, &mut poller)
        .await
        .is_err()
    {
        poller.abort();
    }
}

/// Poll until the broker's CONNACK, the connection's error, or the timeout.
async fn connack(eventloop: &mut EventLoop) -> Result<(), String> {
    let wait = async {
        loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    };
    tokio::time::timeout(CONNECT_TIMEOUT, wait)
        .await
        .unwrap_or_else(|_| Err(format!("no answer within {} s", CONNECT_TIMEOUT.as_secs())))
}

/// The one task that polls a connection's event loop: counts what was
/// written and acknowledged; ends on DISCONNECT or on the first error (a
/// simulator does not reconnect: counts across a lost session would lie).
async fn poll(mut eventloop: EventLoop, progress: &Progress) -> Result<(), ConnectionError> {
    loop {
        match eventloop.poll().await? {
            Event::Incoming(Packet::PubAck(_)) => {
                progress.acked.fetch_add(1, Ordering::Relaxed);
                progress.changed.notify_one();
            }
            Event::Outgoing(Outgoing::Publish(_)) => {
                progress.written.fetch_add(1, Ordering::Relaxed);
                progress.changed.notify_one();
            }
            Event::Outgoing(Outgoing::Disconnect) => return Ok(()),
            _ => {}
        }
    }
}
