//! A damaged store. A store made by `vigil run` (readings, dead letters,
//! detection checkpoints, alerts and aggregates in the outbox) gets three
//! bit flips in its files, once per seed. For every seed `vigil inspect`
//! either reads it or says it is damaged, and leaves it as it was; `vigil
//! run` comes up ready on its first start, and has moved the store aside
//! (logged, counted, shown by `vigil status`) exactly when `inspect` found
//! it damaged.
//!
//! `VIGIL_DAMAGE_SEEDS=N` runs N seeds instead of the default (see the
//! README, "When the store is damaged", for the longer run).

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};
use std::time::Instant;

use crate::support::{
    free_port, http_request, metric_samples, publish_blocking, vigil_cmd, wait_until, Broker, Msg,
    Options, Setup, VigilProcess, PATIENCE,
};

/// Seeds run by default (about 0.3 s each in a debug build).
const SEEDS: u64 = 40;
/// Bits flipped per seed.
const FLIPS: usize = 3;

fn seeds() -> u64 {
    std::env::var("VIGIL_DAMAGE_SEEDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(SEEDS)
}

/// Windows of 10 readings and a limit that a third of them cross, so that
/// detection writes checkpoints, aggregates and alerts.
const DEVICE: &str = r#"match = "*"
[alerts]
raise_after = 1
clear_after = 1
hold_off = "0s"
[metrics."*"]
window_readings = 10
[metrics."*".limits.mean]
warning_above = 50.0
"#;

fn options(broker: u16, http: u16) -> Options {
    let mut o = Options::new(broker);
    o.default_device = DEVICE.into();
    o.http_listen = format!("127.0.0.1:{http}");
    o
}

/// Every file under `dir` (relative path → bytes).
fn files(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    fn walk(root: &Path, dir: &Path, out: &mut BTreeMap<PathBuf, Vec<u8>>) {
        for entry in fs::read_dir(dir).unwrap() {
            let entry = entry.unwrap();
            let path = entry.path();
            if entry.file_type().unwrap().is_dir() {
                walk(root, &path, out);
            } else {
                let rel = path.strip_prefix(root).unwrap().to_path_buf();
                out.insert(rel, fs::read(&path).unwrap());
            }
        }
    }
    let mut out = BTreeMap::new();
    walk(dir, dir, &mut out);
    out
}

fn write_files(dir: &Path, files: &BTreeMap<PathBuf, Vec<u8>>) {
    for (rel, bytes) in files {
        let path = dir.join(rel);
        fs::create_dir_all(path.parent().unwrap()).unwrap();
        fs::write(path, bytes).unwrap();
    }
}

/// Flip `FLIPS` bits chosen by `seed` among all the bytes of all the files
/// (so mostly in sled's `db` file, the largest). Returns where.
fn flip_bits(files: &mut BTreeMap<PathBuf, Vec<u8>>, seed: u64) -> Vec<String> {
    let total: u64 = files.values().map(|b| b.len() as u64).sum();
    let mut x = seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    let mut flipped = Vec::new();
    for _ in 0..FLIPS {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        let mut bit = x % (total * 8);
        for (rel, bytes) in files.iter_mut() {
            let bits = bytes.len() as u64 * 8;
            if bit < bits {
                bytes[(bit / 8) as usize] ^= 1 << (bit % 8);
                flipped.push(format!("{}:{}.{}", rel.display(), bit / 8, bit % 8));
                break;
            }
            bit -= bits;
        }
    }
    flipped
}

/// Runs of `vigil run` that make the store, and messages (of 10 readings)
/// published in each, from this many devices. A store of this size (about
/// 5 MB in `db`, some values in sled's blob files, a snapshot) makes sled
/// panic on about a quarter of the seeds and report damage on half.
const RUNS: usize = 3;
const MESSAGES: usize = 1000;
const DEVICES: usize = 10;

/// A store as `vigil run` leaves it: 30,000 readings of 10 devices through
/// detection (aggregates and alerts waiting in the outbox, since there is
/// no upstream) and a few dead letters, over three runs (each open makes
/// sled recover and write a snapshot).
fn make_store(broker: &Broker, setup: &Setup) -> BTreeMap<PathBuf, Vec<u8>> {
    for run in 0..RUNS {
        let vigil = VigilProcess::start(setup);
        vigil.wait_for_log("subscribed", run + 1);
        // One window of 10 readings per message; every third one alerts.
        let mut msgs: Vec<Msg> = (0..MESSAGES)
            .map(|m| {
                let device = m % DEVICES;
                let window = run * MESSAGES / DEVICES + m / DEVICES;
                let value = if window % 3 == 0 { 60.0 } else { 20.0 };
                let readings: Vec<String> = (0..10)
                    .map(|i| {
                        let n = (window * 10 + i) as u64;
                        format!(
                            "{{\"value\": {value}, \"ts\": {}}}",
                            1_790_000_000_000u64 + 1000 * n
                        )
                    })
                    .collect();
                Msg::new(
                    &format!("plant/l1/pump-{device}/temperature"),
                    format!("[{}]", readings.join(",")),
                )
            })
            .collect();
        msgs.push(Msg::new("plant/l1/pump-0/temperature", "not a reading"));
        publish_blocking(broker.port, msgs);
        let stored = MESSAGES * 10 * (run + 1);
        wait_until("vigil has stored and detected every reading", || {
            let m = scrape_ready(&vigil).1;
            m.get("vigil_readings_stored_total") == Some(&(stored as f64))
                && m.get("vigil_detection_lag_readings") == Some(&0.0)
        });
        assert!(vigil.terminate().success());
    }
    let stats = setup.inspect("stats", 1).remove(0);
    assert_eq!(
        stats["readings_stored_total"],
        RUNS * MESSAGES * 10,
        "{stats}"
    );
    assert_eq!(stats["detection_cursor"], RUNS * MESSAGES * 10, "{stats}");
    assert!(stats["outbox_alerts"].as_u64().unwrap() > 0, "{stats}");
    assert!(stats["outbox_aggregates"].as_u64().unwrap() > 0, "{stats}");

    files(&setup.dir.path().join("store"))
}

/// `/readyz` status and `/metrics` of a running agent.
fn scrape_ready(vigil: &VigilProcess) -> (u16, BTreeMap<String, f64>) {
    let addr = vigil.http_addr();
    let ready = http_request(addr, "/readyz").status;
    let metrics = http_request(addr, "/metrics");
    (ready, metric_samples(&metrics.body))
}

/// The directories `store.corrupt-*` next to the store.
fn moved_aside(setup: &Setup) -> Vec<PathBuf> {
    let mut out: Vec<PathBuf> = fs::read_dir(setup.dir.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| {
            p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("store.corrupt-")
        })
        .collect();
    out.sort();
    out
}

#[test]
fn a_damaged_store_never_stops_vigil_from_starting_and_inspect_reports_it() {
    let broker = Broker::start();
    let http = free_port();
    let setup = Setup::new(&options(broker.port, http));
    let pristine = make_store(&broker, &setup);
    let store = setup.dir.path().join("store");
    let started = Instant::now();
    let (mut recovered, mut panicked, mut kept) = (0, 0, 0);
    for seed in 0..seeds() {
        // The damaged copy in place of the store, and nothing else around.
        for dir in std::iter::once(store.clone()).chain(moved_aside(&setup)) {
            fs::remove_dir_all(dir).unwrap();
        }
        let _ = fs::remove_file(setup.log_path());
        let mut damaged = pristine.clone();
        let flipped = flip_bits(&mut damaged, seed);
        write_files(&store, &damaged);
        let what = format!("seed {seed}, bits flipped at {flipped:?}");

        // inspect reads it or says it is damaged, and changes nothing.
        let inspect = setup.inspect_output("stats", 1);
        let stderr = String::from_utf8_lossy(&inspect.stderr).to_string();
        assert!(
            inspect.status.success() || stderr.contains("is damaged and cannot be read"),
            "{what}: inspect failed without saying the store is damaged: {stderr}"
        );
        assert!(
            files(&store) == damaged,
            "{what}: inspect changed the store's files"
        );

        // vigil comes up ready on its first start.
        let mut vigil = VigilProcess::start(&setup);
        let start = Instant::now();
        let (ready, metrics) = loop {
            assert!(
                vigil.is_running(),
                "{what}: vigil exited instead of starting; its log:\n{}",
                vigil.log()
            );
            if vigil
                .log()
                .contains("health and metrics endpoint listening")
            {
                let (ready, metrics) = scrape_ready(&vigil);
                if ready == 200 {
                    break (ready, metrics);
                }
            }
            assert!(
                start.elapsed() < PATIENCE,
                "{what}: vigil did not get ready; its log:\n{}",
                vigil.log()
            );
            std::thread::sleep(std::time::Duration::from_millis(20));
        };
        assert_eq!(ready, 200);
        let moved = moved_aside(&setup);
        let recoveries = metrics
            .get("vigil_store_recoveries_total")
            .copied()
            .unwrap_or(0.0);
        if inspect.status.success() {
            // Readable: used as it is.
            assert!(moved.is_empty(), "{what}: a readable store was moved aside");
            assert_eq!(recoveries, 0.0, "{what}");
            kept += 1;
        } else {
            // Damaged: moved aside, logged with both paths, counted, shown.
            assert_eq!(moved.len(), 1, "{what}: {moved:?}");
            let moved = &moved[0];
            assert!(moved.join("db").is_file(), "{what}: {moved:?}");
            assert_eq!(recoveries, 1.0, "{what}");
            let series = format!(
                "vigil_store_recovered_timestamp_seconds{{moved_to=\"{}\"}}",
                moved.display()
            );
            assert!(metrics.contains_key(&series), "{what}: no {series}");
            let log = vigil.log();
            let line = log
                .lines()
                .find(|l| l.contains("ERROR") && l.contains("the store is damaged"))
                .unwrap_or_else(|| panic!("{what}: no ERROR line about the store:\n{log}"));
            assert!(
                line.contains(&format!("store={}", store.display()))
                    && line.contains(&format!("moved_to={}", moved.display())),
                "{what}: {line}"
            );
            let status = vigil_cmd()
                .args(["status", "--config"])
                .arg(&setup.config)
                .output()
                .unwrap();
            let status = String::from_utf8_lossy(&status.stdout).to_string();
            assert!(
                status.contains("running, ready")
                    && status.contains(&format!(
                        "the store was DAMAGED and moved to {}",
                        moved.display()
                    )),
                "{what}: {status}"
            );
            recovered += 1;
            if line.contains("sled panicked on the store") {
                panicked += 1;
            }
        }
        let log_path = setup.log_path();
        let exit = vigil.terminate();
        assert!(
            exit.success(),
            "{what}: vigil exited with {exit}; its log:\n{}",
            fs::read_to_string(log_path).unwrap_or_default()
        );
        // Whichever store is in place now reads.
        let after = setup.inspect_output("stats", 1);
        assert!(
            after.status.success(),
            "{what}: the store in use does not read: {}",
            String::from_utf8_lossy(&after.stderr)
        );
    }
    let summary = format!(
        "{} seeds in {:.1} s: {recovered} stores moved aside ({panicked} of them had panicked sled), {kept} used as they were",
        seeds(),
        started.elapsed().as_secs_f64()
    );
    println!("{summary}");
    // Both outcomes, and a panic inside sled, must have been met, or the
    // test proved nothing. (Each seed panics sled with a chance of about a
    // quarter: none in 40 is a chance of about 1e-5.)
    assert!(recovered > 0 && panicked > 0 && kept > 0, "{summary}");
}

/// A readings block that sled reads back but that does not decode (damage
/// its checks let through): `inspect stats` still reports the store, names
/// the damaged block on stderr and exits 0, since `vigil run` uses such a
/// store and skips the block rather than moving it aside.
#[test]
fn inspect_stats_names_a_block_that_does_not_decode_and_reads_the_rest() {
    let setup = Setup::new(&Options::new(free_port()));
    let config = setup.load();
    {
        let store = vigil::store::Store::open(&config.store).unwrap();
        let readings = (0..100)
            .map(|i| vigil::model::Reading {
                device: "pump-1".into(),
                metric: "temperature".into(),
                time_ms: 1_790_000_000_000 + i,
                value: vigil::model::Value::Scalar(i as f64),
            })
            .collect();
        store
            .commit(&vigil::store::Batch {
                readings,
                dead_letters: vec![],
                messages: 100,
            })
            .unwrap();
    }
    {
        // The block's first part, overwritten in place by sled itself.
        let db = sled::open(&config.store.path).unwrap();
        let tree = db.open_tree("readings").unwrap();
        let (key, _) = tree.first().unwrap().unwrap();
        tree.insert(key, &b"\xff damaged"[..]).unwrap();
        db.flush().unwrap();
    }
    let out = setup.inspect_output("stats", 1);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "inspect failed: {stderr}");
    assert!(
        stderr.contains("corrupt readings block at key 0") && stderr.contains("skips it"),
        "{stderr}"
    );
    let stats: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(stats["readings_stored_total"], 100, "{stats}");
    assert!(stats["last_reading_time"].is_null(), "{stats}");
}
