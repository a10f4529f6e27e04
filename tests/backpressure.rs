//! Backpressure: with a tiny disk budget, ingest stops acknowledging and
//! reading while the store is full, memory stays bounded while the broker
//! keeps the rest, and detection frees the readings it has consumed so that
//! ingest resumes: every reading is stored and detected exactly once.

use std::sync::atomic::Ordering;

use vigil::model::Value;
use vigil::store::{Lane, OutboxEntry};

use crate::support::{publish, start_app, wait_until, Broker, Msg, Options, Setup};

const N: u64 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_budget_pauses_ingest_until_detection_frees_space() {
    let broker = Broker::start();
    let mut options = Options::new(broker.port);
    // 8 KiB for data.
    options.budget_bytes = 20 * 1024;
    options.flush_max_readings = 50;
    // Windows of 1,000 readings: three small aggregates, so the outbox
    // leaves the budget to the readings log.
    options.default_device = "match = \"*\"\n[metrics.\"*\"]\nwindow_readings = 1000\n".into();
    let setup = Setup::new(&options);
    let running = start_app(&setup).await;
    let store = running.store().clone();
    let metrics = running.metrics().clone();

    let msgs = (0..N)
        .map(|i| {
            Msg::new(
                "plant/l1/pump-1/temperature",
                format!("{{\"value\": {i}, \"ts\": {}}}", 1_700_000_000_000u64 + i),
            )
        })
        .collect();
    // The broker takes all of them (it queues for vigil).
    publish(broker.port, msgs).await;

    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("every reading is stored and detected", || {
            let stats = s.stats().unwrap();
            stats.counters.readings_stored == N && stats.detection_cursor == stats.next_seq
        })
    })
    .await
    .unwrap();
    let stats = store.stats().unwrap();
    assert!(
        metrics.full_pauses.load(Ordering::Relaxed) >= 1,
        "the budget never filled: the test did not exercise the pause"
    );
    assert!(
        stats.counters.readings_trimmed > 0,
        "detection did not free the readings it had consumed"
    );

    // Memory stays bounded: what waits in memory is the inbound queue and a
    // few batches (one committing, one retried, one filling, one queued),
    // far less than the 3,000 readings the broker still holds.
    let one = vigil::model::Reading {
        device: "pump-1".into(),
        metric: "temperature".into(),
        time_ms: 0,
        value: Value::Scalar(0.0),
    }
    .approx_bytes() as u64;
    let bound = (vigil::ingest::INBOUND_CAPACITY as u64 + 4 * 50) * one;
    let peak = metrics.held_bytes_peak.load(Ordering::Relaxed);
    assert!(peak > 0);
    assert!(
        peak <= bound,
        "held {peak} bytes in memory, bound {bound} (one reading is {one})"
    );
    assert!(bound < N * one / 2);

    // Each reading went through detection once: the windows count them all.
    let counted: f64 = store
        .outbox(Lane::Aggregates, 0, 100)
        .unwrap()
        .into_iter()
        .map(|item| match item.entry {
            OutboxEntry::Aggregate(a) => a.features["count"],
            OutboxEntry::Alert(a) => panic!("unexpected alert {a:?}"),
        })
        .sum();
    assert_eq!(counted as u64, N);
    running.shutdown().await.unwrap();
}
