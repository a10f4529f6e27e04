//! A backlog of large waveform readings (a restart after a kill, or an
//! upstream of sensors that sent while detection was behind) is read by
//! detection in batches bounded by bytes, and through sled's cache, which
//! only bounds what it counts: vigil's memory stays under a stated bound
//! however many such readings wait.

use vigil::model::{Reading, Value, Waveform};
use vigil::store::{Batch, Commit, Store};

use crate::support::{
    peak_rss_kib, scrape, series, wait_until, Broker, Options, Setup, VigilProcess,
};

/// Waveform readings waiting for detection at start.
const BLOCKS: usize = 150;
/// Samples in each: 2.5 MB encoded, 2 MiB decoded (the largest payload
/// `broker.max_payload_bytes` lets through at 4 MiB).
const SAMPLES: usize = 500_000;
/// Peak RSS of `vigil run` (a debug build) through the whole backlog
/// (375 MB stored), below the 512 MiB of the service's `MemoryMax`: 295 MiB
/// measured. Before readings blocks were stored in small parts it was
/// 425 MiB, sled keeping what detection read (values in blob files, which
/// its cache does not count), and 1.5 GB before batches were bounded in
/// bytes.
const PEAK_RSS_BOUND_KIB: u64 = 360 * 1024;

#[test]
fn a_backlog_of_large_waveforms_is_detected_within_a_memory_bound() {
    let broker = Broker::start();
    let setup = Setup::new(&Options::new(broker.port));
    let config = setup.load();
    {
        let store = Store::open(&config.store).unwrap();
        let blocks: usize = std::env::var("WB")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(BLOCKS);
        for i in 0..blocks {
            let t0 = 1_790_000_000_000i64 + i as i64 * 20_000;
            let samples = (0..SAMPLES)
                .map(|s| (s as f32 * 0.37).sin() * (1.0 + (i % 7) as f32 * 0.01))
                .collect();
            let batch = Batch {
                readings: vec![Reading {
                    device: "pump-1".into(),
                    metric: "vibration".into(),
                    time_ms: t0,
                    value: Value::Waveform(Waveform {
                        sample_rate_hz: 25_600.0,
                        samples,
                    }),
                }],
                dead_letters: vec![],
                messages: 1,
            };
            assert!(matches!(
                store.commit(&batch).unwrap(),
                Commit::Stored { .. }
            ));
        }
    }

    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("health and metrics endpoint listening", 1);
    let addr = vigil.http_addr();
    wait_until("detection through the backlog", || {
        series(&scrape(addr), "vigil_detection_lag_readings") == 0.0
    });
    let m = scrape(addr);
    assert_eq!(series(&m, "vigil_readings_stored_total"), BLOCKS as f64);
    let peak = peak_rss_kib(vigil.pid());
    let status = vigil.terminate();
    assert!(status.success(), "vigil exited with {status}");
    assert!(
        peak < PEAK_RSS_BOUND_KIB,
        "peak RSS {} MiB through {BLOCKS} waveform readings of {SAMPLES} samples (bound {} MiB)",
        peak / 1024,
        PEAK_RSS_BOUND_KIB / 1024
    );
}
