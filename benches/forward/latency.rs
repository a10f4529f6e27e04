//! Section 2, latency: alerts from a sensor's publish to a subscriber of the upstream
//! broker, through `vigil::app::start` between two Mosquittos, with
//! `store.flush_interval_ms` 20 and 5; and the group-commit cost that bounds it.

use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vigil::model::{Reading, Value};
use vigil::store::{Batch, Store};

use crate::brokers::{Broker, Subscriber};
use crate::common::{grouped, Report};
use crate::config::config;
use crate::helpers::{percentile, secs, wait_for_async};
use crate::machine::Cpu;
use crate::publisher::{spawn_publisher, Load, SPIKE_EVERY};
use crate::timings::{breakdown, hop_latencies, latencies, spread, Sampler};
use crate::T0;

pub const DEVICES: u64 = 50;
pub const RATE_PER_S: f64 = 5_000.0;

const LATENCY_TARGET_MS: f64 = 50.0;

/// The group-commit cost on the scratch file system: `Store::commit` of
/// 100 readings (one sled transaction and one fsync), 50 times.
fn commit_cost(scratch: &Path) -> (f64, f64, f64) {
    let dir = tempfile::Builder::new()
        .prefix("fsync")
        .tempdir_in(scratch)
        .expect("a scratch directory");
    let store = Store::open_at(dir.path(), 1 << 40, 10_000, 16 << 20).expect("open the store");
    let mut ms = Vec::new();
    for b in 0..50 {
        let readings = (0..100)
            .map(|i| Reading {
                device: format!("sensor-{:02}", i % DEVICES),
                metric: "temperature".into(),
                time_ms: T0 + b * 100 + i as i64,
                value: Value::Scalar(50.0),
            })
            .collect();
        let t = Instant::now();
        store
            .commit(&Batch {
                readings,
                dead_letters: Vec::new(),
                messages: 100,
            })
            .expect("commit");
        ms.push(secs(t.elapsed()) * 1e3);
    }
    ms.sort_by(f64::total_cmp);
    (
        percentile(&ms, 50.0),
        percentile(&ms, 99.0),
        ms[ms.len() - 1],
    )
}

async fn latency_once(
    mosquitto: &Path,
    scratch: &Path,
    flush_ms: u64,
    seconds: f64,
    rep: &mut Report,
) {
    let dir = tempfile::Builder::new()
        .prefix("latency")
        .tempdir_in(scratch)
        .expect("a scratch directory");
    let local = Broker::start(mosquitto, dir.path());
    let upstream = Broker::start(mosquitto, dir.path());
    let sub = Subscriber::start(upstream.port);
    // A plain subscriber beside vigil on the local broker: the MQTT hop alone.
    let tap = Subscriber::start(local.port);
    let config = config(dir.path(), local.port, upstream.port, 100, flush_ms);
    let running = vigil::app::start(&config).await.expect("start vigil");
    let (im, fm) = (running.metrics().clone(), running.forward_metrics().clone());
    let up = wait_for_async(
        "vigil is subscribed and connected upstream",
        Duration::from_secs(20),
        || im.subscribed.load(Relaxed) && fm.connected.load(Relaxed),
    )
    .await;
    assert!(up, "vigil did not connect to both brokers");

    let sampler = Sampler::start(im.clone(), running.detect_metrics().clone());
    let pub_tid = Arc::new(AtomicU64::new(0));
    let load = Load {
        rate_per_s: RATE_PER_S,
        devices: DEVICES,
        metrics: &["temperature"],
        spikes: true,
        seconds,
    };
    let publisher = spawn_publisher(local.port, load, pub_tid.clone());
    // Its thread id, so that its CPU is counted apart from vigil's.
    while pub_tid.load(Relaxed) == 0 {
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    let cpu_before = Cpu::now(
        &[sub.tid, tap.tid, pub_tid.load(Relaxed)],
        &upstream,
        Some(&local),
    );
    let started = Instant::now();
    // Backlog while the publisher runs: outbox entries and the forwarder's window.
    let store = running.store().clone();
    let (mut max_outbox, mut max_inflight) = ([0u64; 2], 0u64);
    while !publisher.is_finished() {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if let Ok(s) = store.stats() {
            max_outbox = [
                max_outbox[0].max(s.outbox[0]),
                max_outbox[1].max(s.outbox[1]),
            ];
        }
        max_inflight = max_inflight.max(fm.inflight.load(Relaxed));
    }
    let pubd = tokio::task::spawn_blocking(move || publisher.join())
        .await
        .expect("join")
        .expect("the publisher thread");
    // The publisher thread has ended: its CPU is still in the process's
    // total, and in its own report.
    let mut after = Cpu::now(&[sub.tid, tap.tid], &upstream, Some(&local));
    after.helpers += pubd.cpu;
    after.vigil -= pubd.cpu;
    let cpu = after.since(cpu_before);
    let wall = started.elapsed();
    // Everything through: stored, detected, forwarded, delivered.
    let expected_alerts = pubd.spikes + pubd.clears;
    let settled = wait_for_async(
        "vigil has forwarded everything",
        Duration::from_secs(30),
        || {
            store.stats().is_ok_and(|s| {
                s.next_seq >= pubd.readings
                    && s.detection_cursor >= s.next_seq
                    && s.outbox == [0, 0]
            })
        },
    )
    .await;
    wait_for_async(
        "the subscriber has every message",
        Duration::from_secs(10),
        || sub.received() >= pubd.readings + expected_alerts,
    )
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let samples = sampler.finish();
    let stats = store.stats().expect("store stats");
    // Reading i of the publisher should be reading i of the store.
    let aligned = pubd.marks.iter().all(|((device, t), &i)| {
        store
            .readings_from(i, 1)
            .ok()
            .and_then(|v| v.into_iter().next())
            .is_some_and(|(seq, r)| seq == i && r.device == *device && r.time_ms == *t)
    });
    if let Err(e) = running.shutdown().await {
        eprintln!("[bench-forward] vigil shutdown: {e}");
    }
    let got = sub.finish();
    let l = latencies(&got);
    let hop = hop_latencies(&tap.finish());
    let p99 = percentile(&l.alerts, 99.0);
    rep.row(
        &format!("2. alert latency, flush {flush_ms} ms"),
        format!(
            "`vigil::app::start`, local + upstream Mosquitto; {DEVICES} devices × {:.0} readings/s = {} readings/s at QoS 1 for {seconds:.0} s; `window_readings = 1`, static limit, raise_after = clear_after = 1, every {SPIKE_EVERY}th reading of a device above the limit; `store.flush_interval_ms = {flush_ms}`, `max_inflight = 100`",
            RATE_PER_S / DEVICES as f64,
            grouped(RATE_PER_S)
        ),
        format!(
            "**p99 {p99:.1} ms** (p50 {:.1}, p90 {:.1}, max {:.1} ms; publish → upstream subscriber); {} alerts of {} expected ({} raised + {} cleared), {} duplicates",
            percentile(&l.alerts, 50.0),
            percentile(&l.alerts, 90.0),
            l.alerts.last().copied().unwrap_or(f64::NAN),
            grouped(l.alert_ids as f64),
            grouped(expected_alerts as f64),
            grouped(pubd.spikes as f64),
            grouped(pubd.clears as f64),
            l.alert_messages - l.alert_ids,
        ),
        "p99 ≤ 50 ms",
        Some(p99 <= LATENCY_TARGET_MS && l.alert_ids >= expected_alerts),
    );
    rep.detail(format!(
        "latency, flush {flush_ms} ms: raised {}; cleared {}; aggregates ({}) {}",
        spread(&l.raised),
        spread(&l.cleared),
        grouped(l.aggregates.len() as f64),
        spread(&l.aggregates),
    ));
    rep.detail(format!(
        "latency, flush {flush_ms} ms: publisher sent {} readings in {:.2} s ({} /s; at most {:.1} ms behind schedule), {} acknowledged; store: {} readings stored, {} delivered upstream{}; largest outbox seen while publishing (every 50 ms): {} alerts, {} aggregates; forwarder window up to {}",
        grouped(pubd.readings as f64),
        secs(pubd.took),
        grouped(pubd.readings as f64 / secs(pubd.took)),
        secs(pubd.behind) * 1e3,
        grouped(pubd.acked as f64),
        grouped(stats.counters.readings_stored as f64),
        grouped((stats.counters.delivered[0] + stats.counters.delivered[1]) as f64),
        if settled { "" } else { " (NOT settled after 30 s)" },
        max_outbox[0],
        grouped(max_outbox[1] as f64),
        max_inflight,
    ));
    rep.detail(format!(
        "latency, flush {flush_ms} ms: CPU while publishing ({:.1} s): {}",
        secs(wall),
        cpu.describe(wall, "publisher + 2 subscribers", true)
    ));
    let [ingest, detect, fwd] = breakdown(&samples, &pubd.marks, &l.firsts);
    if aligned && !ingest.is_empty() {
        let quantiles = |v: &[f64]| {
            format!(
                "{:.1} / {:.1} / {:.1} / {:.1}",
                percentile(v, 50.0),
                percentile(v, 90.0),
                percentile(v, 99.0),
                percentile(v, 100.0)
            )
        };
        rep.detail(format!(
            "latency, flush {flush_ms} ms: where an alert's time goes (p50 / p90 / p99 / max ms over {} alerts; stage counters sampled every 0.5 ms): publish → committed by ingest (local broker, batch wait, fsync) {}; → committed by detection {}; → at the upstream subscriber (forwarder, upstream broker) {}. For scale, publish → a plain subscriber of the local broker ({} readings): {}",
            ingest.len(),
            quantiles(&ingest),
            quantiles(&detect),
            quantiles(&fwd),
            grouped(hop.len() as f64),
            quantiles(&hop),
        ));
    } else {
        rep.detail(format!(
            "latency, flush {flush_ms} ms: no breakdown (the store's readings are not in publish order)"
        ));
    }
}

pub async fn latency(mosquitto: &Path, scratch: &Path, rep: &mut Report) {
    let seconds = rep.scale(20) as f64;
    let (p50, p99, max) = commit_cost(scratch);
    rep.detail(format!(
        "group commit on the scratch file system (`Store::commit` of 100 readings: one transaction + fsync, 50 times): p50 {p50:.2} ms, p99 {p99:.2} ms, max {max:.2} ms"
    ));
    for flush_ms in [20, 5] {
        eprintln!("[bench-forward] latency: flush_interval_ms {flush_ms}, {seconds} s");
        latency_once(mosquitto, scratch, flush_ms, seconds, rep).await;
    }
    rep.detail(
        "latency: event times are whole milliseconds (the publish time truncated), so each latency reads 0–1 ms high".into(),
    );
}
