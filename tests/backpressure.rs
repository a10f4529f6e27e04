//! Backpressure: with a tiny disk budget, ingest stops acknowledging and
//! reading, memory stays bounded while the broker keeps the rest, and
//! everything is taken once space frees.

use std::collections::BTreeSet;
use std::sync::atomic::Ordering;

use vigil::model::Value;

use crate::support::{publish, start_app, wait_until, Broker, Msg, Options, Setup};

const N: u64 = 3_000;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_budget_pauses_ingest_and_resumes_when_space_frees() {
    let broker = Broker::start();
    let mut options = Options::new(broker.port);
    options.budget_bytes = 8 * 1024;
    options.flush_max_readings = 50;
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

    let (s, m) = (store.clone(), metrics.clone());
    tokio::task::spawn_blocking(move || {
        wait_until("the store is full", || {
            m.store_full.load(Ordering::Relaxed) && s.is_full()
        })
    })
    .await
    .unwrap();
    let stats = store.stats().unwrap();
    assert!(
        stats.readings < N,
        "everything fit: the budget did not apply"
    );
    assert!(stats.readings_bytes + stats.dead_letter_bytes >= stats.budget_bytes);

    // Memory stays bounded: what waits in memory is the inbound queue and a
    // few batches, far less than the 3,000 readings the broker still holds.
    let one = vigil::model::Reading {
        device: "pump-1".into(),
        metric: "temperature".into(),
        time_ms: 0,
        value: Value::Scalar(0.0),
    }
    .approx_bytes() as u64;
    let bound = (vigil::ingest::INBOUND_CAPACITY as u64 + 3 * 50) * one;
    let peak = metrics.held_bytes_peak.load(Ordering::Relaxed);
    assert!(peak > 0);
    assert!(
        peak <= bound,
        "held {peak} bytes in memory, bound {bound} (one reading is {one})"
    );
    assert!(bound < N * one / 2);

    // Act as the consumer: take what is stored, free the space, repeat.
    let s = store.clone();
    let seen = tokio::task::spawn_blocking(move || {
        let mut seen = BTreeSet::new();
        let mut cursor = 0;
        wait_until("every reading has been taken", || {
            for (seq, r) in s.readings_from(cursor, usize::MAX).unwrap() {
                if let Value::Scalar(v) = r.value {
                    seen.insert(v as u64);
                }
                cursor = seq + 1;
            }
            s.trim_before(cursor).unwrap();
            seen.len() as u64 == N
        });
        seen
    })
    .await
    .unwrap();
    assert_eq!(seen, (0..N).collect::<BTreeSet<_>>());
    assert!(!store.is_full());
    running.shutdown().await.unwrap();
    assert!(store.stats().unwrap().counters.readings_trimmed >= N);
}
