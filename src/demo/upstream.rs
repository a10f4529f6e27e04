//! The plant's side of the demo: a subscriber on the upstream broker that
//! receives what vigil forwards, as the plant's data team would.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde::Deserialize;
use tokio::sync::mpsc;

use crate::model::EpochMs;

/// An alert message as it arrived upstream (the fields the demo shows).
#[derive(Debug, Clone, Deserialize)]
pub struct AlertMessage {
    pub id: String,
    pub alert_id: String,
    pub device: String,
    pub metric: String,
    pub event: String,
    pub severity: String,
    pub detector: String,
    pub feature: String,
    pub end_ms: EpochMs,
    pub raised_ms: EpochMs,
    pub message: String,
    /// When it arrived (not part of the message).
    #[serde(skip, default = "Instant::now")]
    pub arrived: Instant,
}

#[derive(Deserialize)]
struct Envelope {
    id: String,
    #[serde(rename = "type")]
    kind: String,
}

/// What arrived upstream so far.
#[derive(Debug, Default, Clone)]
pub struct Received {
    pub aggregates: u64,
    /// Every alert message, first copy only.
    pub alerts: Vec<AlertMessage>,
    /// Copies of a message already received (at-least-once resends).
    pub duplicates: u64,
    /// Payloads that were neither (the retained status, say).
    pub other: u64,
}

pub struct Upstream {
    received: Arc<Mutex<Received>>,
}

impl Upstream {
    /// Subscribe to `filter` on the broker at `addr`; each new alert is also
    /// sent to `alerts` as it arrives.
    pub async fn start(
        addr: SocketAddr,
        filter: &str,
        alerts: mpsc::UnboundedSender<AlertMessage>,
    ) -> Upstream {
        let mut opts = MqttOptions::new("demo-plant", addr.ip().to_string(), addr.port());
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut eventloop) = AsyncClient::new(opts, 100);
        let received = Arc::new(Mutex::new(Received::default()));
        let state = received.clone();
        let filter = filter.to_string();
        tokio::spawn(async move {
            let mut seen = HashSet::new();
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client.subscribe(filter.clone(), QoS::AtLeastOnce).await;
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let mut r = state.lock().unwrap_or_else(|e| e.into_inner());
                        tally(&mut r, &mut seen, &p.payload, &alerts);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
                }
            }
        });
        Upstream { received }
    }

    pub fn received(&self) -> Received {
        self.received
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }
}

fn tally(
    r: &mut Received,
    seen: &mut HashSet<String>,
    payload: &[u8],
    alerts: &mpsc::UnboundedSender<AlertMessage>,
) {
    let Ok(envelope) = serde_json::from_slice::<Envelope>(payload) else {
        r.other += 1;
        return;
    };
    if !seen.insert(envelope.id) {
        r.duplicates += 1;
        return;
    }
    match envelope.kind.as_str() {
        "aggregate" => r.aggregates += 1,
        "alert" => match serde_json::from_slice::<AlertMessage>(payload) {
            Ok(alert) => {
                let _ = alerts.send(alert.clone());
                r.alerts.push(alert);
            }
            Err(_) => r.other += 1,
        },
        _ => r.other += 1,
    }
}
