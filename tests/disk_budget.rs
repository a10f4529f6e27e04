//! `store.budget_bytes` bounds the store's files on disk, not only the data
//! counted in them: readings flowing through a full store (the oldest
//! trimmed, as when detection keeps up) leave sled's files within the
//! budget. `scripts/bench-detect disk` measures the same over ten budgets.

use vigil::model::{Reading, Value, Waveform};
use vigil::store::{Batch, Commit, Store};

const MIB: u64 = 1 << 20;
const BUDGET: u64 = 64 * MIB;
/// Readings written through the store, in budgets.
const BUDGETS_WRITTEN: u64 = 4;

#[test]
fn waveforms_through_a_full_store_keep_its_files_within_the_budget() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open_at(dir.path(), BUDGET, 10_000, 16 * MIB).unwrap();
    let mut t = 1_790_000_000_000i64;
    let (mut written, mut peak) = (0u64, 0u64);
    while written < BUDGETS_WRITTEN * BUDGET {
        // 8 blocks of 8,192 samples from 8 sensors: about 300 KB encoded.
        let readings: Vec<Reading> = (0..8)
            .map(|k| {
                t += 320;
                Reading {
                    device: format!("pump-{k}"),
                    metric: "vibration".into(),
                    time_ms: t,
                    value: Value::Waveform(Waveform {
                        sample_rate_hz: 25_600.0,
                        samples: (0..8192)
                            .map(|i| (i as f32 * 0.01 + k as f32).sin())
                            .collect(),
                    }),
                }
            })
            .collect();
        let before = store.stats().unwrap().readings_bytes;
        let Commit::Stored { .. } = store
            .commit(&Batch {
                readings,
                dead_letters: vec![],
                messages: 8,
            })
            .unwrap()
        else {
            panic!("the store stayed full although everything was processed");
        };
        let stats = store.stats().unwrap();
        written += stats.readings_bytes - before;
        // Detection has processed everything: all of it may be trimmed.
        store.make_room(stats.next_seq).unwrap();
        let stats = store.stats().unwrap();
        assert!(stats.readings_bytes <= store.data_limit() + 400_000);
        peak = peak.max(stats.size_on_disk);
    }
    let stats = store.stats().unwrap();
    assert!(
        stats.counters.readings_trimmed > 0,
        "the store never filled"
    );
    assert!(
        peak <= BUDGET,
        "the files took {:.1} MiB at most, over the {} MiB budget",
        peak as f64 / MIB as f64,
        BUDGET / MIB
    );
}
