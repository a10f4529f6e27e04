//! Section 1, drain: how fast the forwarder empties an outbox backlog to an upstream
//! broker (`max_inflight` 100 and 1000), beside a bare rumqttc client sending
//! the same messages and the forwarder's store and encoding steps alone.

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::watch;

use vigil::config::UpstreamConfig;
use vigil::forward::{self, ForwardMetrics};
use vigil::store::{Lane, Store};

use crate::backlog::{encoded_backlog, fill_outbox, STREAMS};
use crate::brokers::{is_entry, tally, Broker, Subscriber};
use crate::common::{grouped, Report};
use crate::config::{config, upstream_of};
use crate::helpers::{secs, wait_for_async, wall_ms};
use crate::machine::Cpu;
use crate::{GATEWAY, PATIENCE};

/// Target of the drain rate, messages per second.
const DRAIN_TARGET: f64 = 20_000.0;
const BACKLOG_ALERTS: u64 = 100;

struct Drain {
    total: u64,
    connected: Duration,
    empty: Option<Duration>,
    /// Last outbox message at the subscriber, after the forwarder's start.
    last_arrival: Duration,
    received: u64,
    distinct: u64,
    duplicates: u64,
    fill: Duration,
    payload_bytes: f64,
    cpu: Cpu,
    /// Mean time of one `Store::stats` poll.
    poll: Duration,
}

async fn drain_once(mosquitto: &Path, scratch: &Path, aggregates: u64, max_inflight: u16) -> Drain {
    let dir = tempfile::Builder::new()
        .prefix("drain")
        .tempdir_in(scratch)
        .expect("a scratch directory");
    let broker = Broker::start(mosquitto, dir.path());
    let sub = Subscriber::start(broker.port);
    let config = config(dir.path(), 1, broker.port, max_inflight, 20);
    let upstream = upstream_of(&config);

    let store = Store::open(&config.store).expect("open the store");
    let filled = Instant::now();
    fill_outbox(&store, aggregates, BACKLOG_ALERTS);
    let fill = filled.elapsed();
    let stats = store.stats().expect("store stats");
    let total = stats.outbox[0] + stats.outbox[1];
    let payload_bytes = {
        let sample = store
            .outbox(Lane::Aggregates, 0, 1000)
            .expect("read the outbox");
        let bytes: usize = sample
            .iter()
            .map(|i| {
                forward::encode(&upstream, GATEWAY, Lane::Aggregates, i).map_or(0, |m| m.1.len())
            })
            .sum();
        bytes as f64 / sample.len().max(1) as f64
    };

    let (client, eventloop) = forward::connect(&upstream).expect("upstream client");
    let (outbox_tx, outbox_rx) = watch::channel(0u64);
    let (shutdown_tx, shutdown_rx) = watch::channel(false);
    let metrics = Arc::new(ForwardMetrics::default());
    let cpu_before = Cpu::now(&[sub.tid], &broker, None);
    let wall_start = wall_ms();
    let start = Instant::now();
    let task = tokio::spawn(forward::run(forward::Task {
        store: store.clone(),
        config: upstream,
        gateway_id: GATEWAY.into(),
        eventloop,
        client,
        outbox_rx,
        shutdown: shutdown_rx,
        metrics: metrics.clone(),
        health: Default::default(),
    }));
    while !metrics.connected.load(Relaxed) && start.elapsed() < Duration::from_secs(10) {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let connected = start.elapsed();
    let mut empty = None;
    let (mut polls, mut polling) = (0u32, Duration::ZERO);
    while start.elapsed() < PATIENCE {
        tokio::time::sleep(Duration::from_millis(5)).await;
        let t = Instant::now();
        let outbox = store.stats().expect("store stats").outbox;
        polling += t.elapsed();
        polls += 1;
        if outbox == [0, 0] {
            empty = Some(start.elapsed());
            break;
        }
    }

    let cpu = Cpu::now(&[sub.tid], &broker, None).since(cpu_before);
    if empty.is_none() {
        eprintln!("[bench-forward] the outbox did not empty within {PATIENCE:?}");
    }
    // Whatever is still on its way to the subscriber.
    wait_for_async(
        "the subscriber has every message",
        Duration::from_secs(10),
        || sub.received() >= total,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let _ = shutdown_tx.send(true);
    let _ = tokio::time::timeout(Duration::from_secs(5), task).await;
    drop(outbox_tx);
    let got = sub.finish();
    let (received, distinct, duplicates) = tally(&got);
    let last = got
        .iter()
        .filter(|(_, p)| is_entry(p))
        .map(|(at, _)| *at)
        .fold(wall_start, f64::max);
    Drain {
        total,
        connected,
        empty,
        last_arrival: Duration::from_secs_f64((last - wall_start).max(0.0) / 1e3),
        received,
        distinct,
        duplicates,
        fill,
        payload_bytes,
        cpu,
        poll: polling / polls.max(1),
    }
}

/// The same messages from a bare rumqttc client (QoS 1, `window` publishes
/// unacknowledged at most) to a fresh broker with a subscriber: what MQTT
/// alone allows on this machine. Returns the time from CONNACK to the last
/// PUBACK, and what the subscriber got.
async fn bare_publish(
    mosquitto: &Path,
    scratch: &Path,
    messages: Vec<(String, Vec<u8>)>,
    window: u16,
) -> (Duration, u64, (u64, u64, u64), Cpu) {
    let broker = Broker::start(mosquitto, scratch);
    let sub = Subscriber::start(broker.port);
    let n = messages.len() as u64;
    let mut opts = MqttOptions::new(
        format!("bench-bare-{}", broker.port),
        "127.0.0.1",
        broker.port,
    );
    opts.set_keep_alive(Duration::from_secs(30))
        .set_max_packet_size(1 << 20, 1 << 20)
        .set_inflight(window);
    let (client, mut eventloop) = AsyncClient::new(opts, usize::from(window) + 16);
    let cpu_before = Cpu::now(&[sub.tid], &broker, None);
    let sender = tokio::spawn(async move {
        for (topic, payload) in messages {
            if client
                .publish(topic, QoS::AtLeastOnce, false, payload)
                .await
                .is_err()
            {
                break;
            }
        }
        client
    });
    let mut connack = None;
    let mut acked = 0;
    let start = Instant::now();
    while acked < n && start.elapsed() < PATIENCE {
        match tokio::time::timeout(Duration::from_secs(10), eventloop.poll()).await {
            Ok(Ok(Event::Incoming(Packet::ConnAck(_)))) => connack = Some(Instant::now()),
            Ok(Ok(Event::Incoming(Packet::PubAck(_)))) => acked += 1,
            Ok(Ok(_)) => {}
            Ok(Err(e)) => {
                eprintln!("[bench-forward] bare publisher: {e}");
                break;
            }
            Err(_) => {
                eprintln!("[bench-forward] bare publisher stalled");
                break;
            }
        }
    }
    let took = connack.map_or(Duration::ZERO, |c| c.elapsed());
    let cpu = Cpu::now(&[sub.tid], &broker, None).since(cpu_before);
    wait_for_async(
        "the subscriber has every message",
        Duration::from_secs(10),
        || sub.received() >= n,
    )
    .await;
    if let Ok(client) = sender.await {
        let _ = client.try_disconnect();
        let _ = tokio::time::timeout(Duration::from_millis(500), eventloop.poll()).await;
    }
    let got = sub.finish();
    (took, acked, tally(&got), cpu)
}

/// The forwarder's store and encoding steps alone, on one thread: claim
/// (read + decode) in batches of 256, encode to JSON, delete in batches of 512.
fn parts(scratch: &Path, upstream: &UpstreamConfig, n: u64) -> (f64, f64, f64) {
    let dir = tempfile::Builder::new()
        .prefix("parts")
        .tempdir_in(scratch)
        .expect("a scratch directory");
    let store = Store::open_at(dir.path(), 1 << 40, 10_000, 16 << 20).expect("open the store");
    fill_outbox(&store, n, 0);
    let t = Instant::now();
    let mut items = Vec::new();
    let mut from = 0;
    loop {
        let batch = store
            .outbox_claim(Lane::Aggregates, from, 256)
            .expect("claim");
        let Some(last) = batch.last() else { break };
        from = last.seq + 1;
        items.extend(batch);
    }
    let claim = t.elapsed();
    let t = Instant::now();
    for item in &items {
        std::hint::black_box(
            forward::encode(upstream, GATEWAY, Lane::Aggregates, item).expect("encode"),
        );
    }
    let encode = t.elapsed();
    let acked: Vec<(Lane, u64)> = items.iter().map(|i| (Lane::Aggregates, i.seq)).collect();
    let t = Instant::now();
    for chunk in acked.chunks(512) {
        store.outbox_ack(chunk).expect("ack");
    }
    let ack = t.elapsed();
    let us = |d: Duration| secs(d) * 1e6 / items.len().max(1) as f64;
    (us(claim), us(encode), us(ack))
}

pub async fn drain(mosquitto: &Path, scratch: &Path, rep: &mut Report) {
    let aggregates = rep.scale(100_000);
    for max_inflight in [100u16, 1000] {
        eprintln!("[bench-forward] drain: {aggregates} aggregates + {BACKLOG_ALERTS} alerts, max_inflight {max_inflight}");
        let d = drain_once(mosquitto, scratch, aggregates, max_inflight).await;
        let rate = d.empty.map(|e| d.total as f64 / secs(e));
        let setup = format!(
            "{} aggregates (11 features, {STREAMS} streams, {:.0} B JSON each) + {BACKLOG_ALERTS} alerts in the outbox; `max_inflight = {max_inflight}`; loopback Mosquitto, rumqttc subscriber on `#` (QoS 1)",
            grouped(aggregates as f64),
            d.payload_bytes
        );
        let result = match (rate, d.empty) {
            (Some(rate), Some(empty)) => format!(
                "**{} msgs/s** ({} in {:.2} s from the forwarder's start; {} msgs/s from its CONNACK at {:.0} ms); subscriber: {} received, {} distinct, {} duplicates, {} missing",
                grouped(rate),
                grouped(d.total as f64),
                secs(empty),
                grouped(d.total as f64 / secs(empty.saturating_sub(d.connected))),
                secs(d.connected) * 1e3,
                grouped(d.received as f64),
                grouped(d.distinct as f64),
                d.duplicates,
                grouped(d.total.saturating_sub(d.distinct) as f64),
            ),
            _ => format!(
                "**did not empty** in {} s; subscriber: {} received",
                PATIENCE.as_secs(),
                grouped(d.received as f64)
            ),
        };
        rep.row(
            &format!("1. drain, max_inflight {max_inflight}"),
            setup,
            result,
            "≥ 20,000 msgs/s",
            Some(rate.is_some_and(|r| r >= DRAIN_TARGET)),
        );
        if let Some(empty) = d.empty {
            rep.detail(format!(
                "drain, max_inflight {max_inflight}: CPU while draining ({:.2} s): {}; last message at the subscriber {:.2} s after the start; `Store::stats` took {:.2} ms a poll (in vigil's share); filling the outbox took {:.2} s",
                secs(empty),
                d.cpu.describe(empty, "subscriber", false),
                secs(d.last_arrival),
                secs(d.poll) * 1e3,
                secs(d.fill),
            ));
        }
    }

    // The MQTT ceiling: the same messages from a bare client.
    let dir = tempfile::Builder::new()
        .prefix("bare")
        .tempdir_in(scratch)
        .expect("a scratch directory");
    let upstream = upstream_of(&config(dir.path(), 1, 1, 100, 20));
    for window in [100u16, 1000] {
        let messages = encoded_backlog(&upstream, aggregates, BACKLOG_ALERTS);
        let n = messages.len() as u64;
        let (took, acked, (received, distinct, dups), cpu) =
            bare_publish(mosquitto, dir.path(), messages, window).await;
        let rate = acked as f64 / secs(took).max(1e-9);
        rep.row(
            &format!("1. bare rumqttc, window {window}"),
            format!(
                "the same {} messages, already encoded, from a plain rumqttc client (QoS 1, {window} unacknowledged at most); same broker set-up and subscriber",
                grouped(n as f64)
            ),
            format!(
                "**{} msgs/s** ({} PUBACKs in {:.2} s from CONNACK); subscriber: {} received, {} distinct, {} duplicates",
                grouped(rate),
                grouped(acked as f64),
                secs(took),
                grouped(received as f64),
                grouped(distinct as f64),
                dups
            ),
            "— (comparison)",
            None,
        );
        rep.detail(format!(
            "bare rumqttc, window {window}: CPU ({:.2} s): {}",
            secs(took),
            cpu.describe(took, "subscriber", false)
        ));
    }

    let n = rep.scale(20_000);
    let (claim, encode, ack) = parts(scratch, &upstream, n);
    let sum = claim + encode + ack;
    rep.row(
        "1. forwarder steps alone",
        format!(
            "{} aggregates in a fresh store, one thread, no MQTT: `outbox_claim` 256 at a time, `forward::encode` (JSON), `outbox_ack` 512 at a time",
            grouped(n as f64)
        ),
        format!(
            "**{sum:.1} µs/msg** (claim {claim:.1} + encode {encode:.1} + ack {ack:.1}): at most {} msgs/s if nothing else ran",
            grouped(1e6 / sum)
        ),
        "—",
        None,
    );
}
