//! Detection end to end, through `vigil run` and a real broker: alerts are
//! the same whether or not vigil is killed while it detects (each stored
//! reading affects detection exactly once), live alerts match what
//! `vigil backtest` finds in the same readings, and a restart keeps the
//! learned baseline and the open alerts.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde_json::Value as Json;

use crate::support::{
    backtest_json, publish_blocking, rand_u64, wait_until, Broker, Msg, Options, Setup,
    VigilProcess, PATIENCE,
};

/// A window length of 10 s (the device files below say `window = "10s"`).
const WINDOW_MS: i64 = 10_000;

fn write_device(setup: &Setup, file: &str, text: &str) {
    std::fs::write(setup.dir.path().join("devices").join(file), text).unwrap();
}

fn reading(device: &str, time_ms: i64, value: f64) -> Msg {
    Msg::new(
        &format!("plant/l1/{device}/temperature"),
        format!("{{\"value\": {value:.3}, \"ts\": {time_ms}}}"),
    )
}

/// Deterministic noise in [-0.5, 0.5) (splitmix64 of the two numbers).
fn noise(a: u64, b: u64) -> f64 {
    let mut x = a.wrapping_mul(0x9e37_79b9_7f4a_7c15) ^ b.wrapping_add(0x632b_e59b_d9b4_e019);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^= x >> 31;
    (x >> 11) as f64 / (1u64 << 53) as f64 - 0.5
}

/// `vigil inspect stats` of a stopped agent.
fn stats(setup: &Setup) -> Json {
    setup.inspect("stats", 1).remove(0)
}

fn u64_of(v: &Json, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

fn str_of(v: &Json, key: &str) -> String {
    v[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in {v}"))
        .to_string()
}

/// Group commits of ingest so far (over every start of vigil on this setup).
fn commit_count(vigil: &VigilProcess) -> usize {
    vigil.log().matches("batch committed").count()
}

/// Wait until ingest has committed nothing new for 1.5 s: what the broker
/// held has been taken, and detection (woken by each commit) has run over it.
fn wait_until_commits_settle(vigil: &VigilProcess) {
    let deadline = Instant::now() + PATIENCE;
    let count = || commit_count(vigil);
    let mut last = (count(), Instant::now());
    while last.1.elapsed() < Duration::from_millis(1500) {
        assert!(Instant::now() < deadline, "vigil never caught up");
        std::thread::sleep(Duration::from_millis(100));
        let n = count();
        if n != last.0 {
            last = (n, Instant::now());
        }
    }
}

// ---------------------------------------------------------------------------
// 1. Exactly once inside vigil, across SIGKILLs.

const PUMPS: u64 = 5;
const PER_PUMP: u64 = 4_000;
/// Event time of the first reading; a multiple of the window, so that
/// reading k of a pump falls in window k / 10.
const T0: i64 = 1_700_000_000_000;
const WINDOWS_PER_PUMP: i64 = (PER_PUMP / 10) as i64;

/// Static limits and rate limits on the mean, the learned baseline on mean
/// and std with a short warm-up.
///
/// The 5 s of lateness keep the alerts a function of event time alone. A
/// quiet stream's windows also close on processing time: those ending before
/// its newest event time plus the quiet time minus the lateness. While the
/// quiet time is under 5 s, such a window ends before the newest reading, so
/// it already holds all its readings (they come in order per pump; copies
/// redelivered after a kill are recognised as duplicates or are late). Event
/// time runs hundreds of times faster than wall time here, so only the end
/// of the run is quiet that long: it closes the last window.
const CRASH_DEVICE: &str = r#"match = "pump-*"

[alerts]
raise_after = 2
clear_after = 3
hold_off = "0s"

[metrics.temperature]
unit = "degC"
window = "10s"
allowed_lateness = "5s"

[metrics.temperature.limits.mean]
warning_above = 80.0
alarm_above = 95.0

[metrics.temperature.rate.mean]
warning_rise_per_min = 20.0
alarm_rise_per_min = 60.0
warning_fall_per_min = 20.0
alarm_fall_per_min = 60.0

[metrics.temperature.baseline]
features = ["mean", "std"]
warmup_windows = 5
"#;

/// Level of pump `p` in window `w`: cycles of 60 windows (shifted per pump)
/// with a ramp through the warning limit, a plateau above the alarm limit
/// and a return to normal; the last two windows are above the warning
/// limit again, so that the very last window raises a known alert.
fn crash_level(p: u64, w: i64) -> f64 {
    if w >= WINDOWS_PER_PUMP - 2 {
        return 85.0;
    }
    if w >= WINDOWS_PER_PUMP - 10 {
        return 60.0;
    }
    match (w + 11 * p as i64) % 60 {
        p @ 30..=34 => 60.0 + 5.0 * (p - 29) as f64,
        35..=41 => 100.0,
        _ => 60.0,
    }
}

/// Every reading, pumps interleaved, in event-time order per pump.
fn crash_readings() -> Vec<Msg> {
    let mut msgs = Vec::with_capacity((PUMPS * PER_PUMP) as usize);
    for k in 0..PER_PUMP {
        for p in 1..=PUMPS {
            let t = T0 + k as i64 * 1000;
            let v = crash_level(p, k as i64 / 10) + 2.0 * noise(p, k);
            msgs.push(reading(&format!("pump-{p}"), t, v));
        }
    }
    msgs
}

/// The alert the last window of `pump` raises: seen in the log, it tells
/// that every window of that pump has been closed.
fn final_alert_id(pump: u64) -> String {
    let end = T0 + WINDOWS_PER_PUMP * WINDOW_MS;
    format!("pump-{pump}/temperature/limit/mean/{end}")
}

type AlertKey = (String, String, String, String);
type AggregateKey = (String, String, String, u64);

struct Outcome {
    /// (id, kind, severity, value), sorted; duplicates kept.
    alerts: Vec<AlertKey>,
    /// (device, start, end, count), sorted; duplicates kept.
    aggregates: Vec<AggregateKey>,
    readings: u64,
}

/// Publish every reading to a fresh setup, with `kills` SIGKILLs (and
/// restarts) of vigil at random moments meanwhile; wait until detection has
/// closed every window, stop vigil and read what it produced.
fn crash_run(kills: usize) -> Outcome {
    let broker = Broker::start();
    let setup = Setup::new(&Options::new(broker.port));
    write_device(&setup, "pumps.toml", CRASH_DEVICE);

    // The first start creates the persistent session and its subscription.
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);
    let port = broker.port;
    let publisher = std::thread::spawn(move || publish_blocking(port, crash_readings()));

    // Each kill lands a random number of group commits (1 to 8) after the
    // start, plus up to 30 ms: while readings stream through ingest and
    // detection, not after they are done (vigil takes all 20,000 readings
    // in about a second).
    let seed = rand_u64();
    let mut rng = seed | 1;
    let mut vigil = Some(vigil);
    for k in 0..kills {
        let mut next = || {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng
        };
        let (commits, jitter_ms) = (1 + next() % 8, next() % 30);
        let v = vigil.take().unwrap();
        let target = commit_count(&v) + commits as usize;
        let since = Instant::now();
        while commit_count(&v) < target && since.elapsed() < Duration::from_secs(2) {
            std::thread::sleep(Duration::from_millis(2));
        }
        std::thread::sleep(Duration::from_millis(jitter_ms));
        v.kill();
        println!("kill {k}: {jitter_ms} ms after group commit {target} (seed {seed})");
        vigil = Some(VigilProcess::start(&setup));
    }
    publisher.join().expect("publisher failed");
    let vigil = vigil.take().unwrap();

    // The last window of each pump closes on processing time, once the
    // pump has been quiet for its remaining event time plus the lateness.
    for p in 1..=PUMPS {
        vigil.wait_for_log(&final_alert_id(p), 1);
    }
    // Redelivered copies may still come in; detection ignores them.
    wait_until_commits_settle(&vigil);
    let status = vigil.terminate();
    assert!(status.success(), "vigil exited with {status}");
    // Where detection stood at each start: the cursor its checkpoint held.
    let log = std::fs::read_to_string(setup.log_path()).unwrap();
    let resumed: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("detection resumes"))
        .filter_map(|l| l.split_whitespace().find(|w| w.starts_with("cursor=")))
        .collect();
    println!("detection resumed at {}", resumed.join(", "));

    let st = stats(&setup);
    assert_eq!(
        u64_of(&st, "detection_cursor"),
        u64_of(&st, "next_seq"),
        "detection has not caught up with the readings log: {st}"
    );
    let mut alerts: Vec<AlertKey> = setup
        .inspect("alerts", 1_000_000)
        .iter()
        .map(|a| {
            (
                str_of(a, "id"),
                str_of(a, "kind"),
                str_of(a, "severity"),
                a["value"].to_string(),
            )
        })
        .collect();
    alerts.sort();
    let mut aggregates: Vec<AggregateKey> = setup
        .inspect("aggregates", 1_000_000)
        .iter()
        .map(|g| {
            (
                str_of(g, "device"),
                str_of(g, "start"),
                str_of(g, "end"),
                g["features"]["count"].as_f64().expect("a count feature") as u64,
            )
        })
        .collect();
    aggregates.sort();
    Outcome {
        alerts,
        aggregates,
        readings: u64_of(&st, "readings"),
    }
}

/// Entries of `a` missing from `b` (as multisets), the first few.
fn missing_from<T: Ord + Clone + std::fmt::Debug>(a: &[T], b: &[T]) -> Vec<T> {
    let mut b = b.to_vec();
    let mut out = Vec::new();
    for x in a {
        match b.binary_search(x) {
            Ok(i) => {
                b.remove(i);
            }
            Err(_) => out.push(x.clone()),
        }
    }
    out.truncate(10);
    out
}

#[test]
fn alerts_are_identical_after_sigkills_during_detection() {
    let n = PUMPS * PER_PUMP;
    let a = crash_run(0);
    let b = crash_run(8);

    let kinds: BTreeSet<&str> = a.alerts.iter().map(|x| x.1.as_str()).collect();
    let transitions = |o: &Outcome, kind: &str| o.alerts.iter().filter(|x| x.1 == kind).count();
    println!(
        "run A: {} alert transitions ({} raised, {} escalated, {} cleared), {} aggregates, {} readings stored",
        a.alerts.len(),
        transitions(&a, "raised"),
        transitions(&a, "escalated"),
        transitions(&a, "cleared"),
        a.aggregates.len(),
        a.readings
    );
    println!(
        "run B: {} alert transitions, {} aggregates, {} readings stored ({} duplicates redelivered after kills)",
        b.alerts.len(),
        b.aggregates.len(),
        b.readings,
        b.readings.saturating_sub(n)
    );

    // The reference run saw what the test intends: every kind of transition,
    // dozens of them, and every window of every pump with all its readings.
    assert_eq!(
        kinds,
        BTreeSet::from(["cleared", "escalated", "raised"]),
        "the readings should raise, escalate and clear alerts"
    );
    assert!(a.alerts.len() >= 50, "only {} alerts", a.alerts.len());
    assert!(a.readings >= n, "run A lost readings");
    assert_eq!(a.aggregates.len() as u64, PUMPS * WINDOWS_PER_PUMP as u64);
    assert!(
        a.aggregates.iter().all(|g| g.3 == 10),
        "a window of run A does not hold exactly its 10 readings"
    );
    assert!(b.readings >= n, "run B lost readings");

    // Exactly once: the same transitions and windows, none missing, none twice.
    assert!(
        a.alerts == b.alerts,
        "alerts differ after SIGKILLs: only in the uninterrupted run {:?}; only in the killed run {:?}",
        missing_from(&a.alerts, &b.alerts),
        missing_from(&b.alerts, &a.alerts)
    );
    assert!(
        a.aggregates == b.aggregates,
        "aggregates differ after SIGKILLs: only in the uninterrupted run {:?}; only in the killed run {:?}",
        missing_from(&a.aggregates, &b.aggregates),
        missing_from(&b.aggregates, &a.aggregates)
    );
}

// ---------------------------------------------------------------------------
// 2. Live alerts, and the backtest of the same readings.

/// 2024-01-01 00:00:00 UTC, a whole minute.
const T_LIVE: i64 = 1_704_067_200_000;
const MINUTE: i64 = 60_000;

const LIVE_DEVICE: &str = r#"match = "pump-1"

[alerts]
raise_after = 2
clear_after = 3
hold_off = "0s"

[metrics.temperature]
unit = "degC"
window = "1m"
allowed_lateness = "5s"

[metrics.temperature.limits.mean]
warning_above = 80.0
alarm_above = 95.0
"#;

/// One reading every 5 s for 30 one-minute windows: two minutes above the
/// warning limit, two above the alarm limit, back to normal; later two more
/// above the warning limit only.
fn live_series() -> Vec<(i64, f64)> {
    (0..30 * 12)
        .map(|i: i64| {
            let level = match i / 12 {
                5 | 6 => 85.0,
                7 | 8 => 100.0,
                17 | 18 => 88.0,
                _ => 60.0,
            };
            (T_LIVE + i * 5_000, level + (i % 3) as f64 * 0.25)
        })
        .collect()
}

#[test]
fn live_readings_raise_and_clear_alerts_and_backtest_reproduces_them() {
    let broker = Broker::start();
    let setup = Setup::new(&Options::new(broker.port));
    write_device(&setup, "pump-1.toml", LIVE_DEVICE);
    let series = live_series();

    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);
    let msgs = series
        .iter()
        .map(|(t, v)| reading("pump-1", *t, *v))
        .collect();
    publish_blocking(broker.port, msgs);
    // The second alert clears in window 21 of 30, closed by later readings.
    vigil.wait_for_log("alert cleared", 2);
    wait_until_commits_settle(&vigil);
    let status = vigil.terminate();
    assert!(status.success(), "vigil exited with {status}");

    let st = stats(&setup);
    assert!(
        u64_of(&st, "readings") >= series.len() as u64,
        "readings lost: {st}"
    );
    assert_eq!(u64_of(&st, "detection_cursor"), u64_of(&st, "next_seq"));
    let live = setup.inspect("alerts", 1000);
    let events: Vec<(String, String, String)> = live
        .iter()
        .map(|a| (str_of(a, "id"), str_of(a, "kind"), str_of(a, "severity")))
        .collect();
    let first = format!("pump-1/temperature/limit/mean/{}", T_LIVE + 7 * MINUTE);
    let second = format!("pump-1/temperature/limit/mean/{}", T_LIVE + 19 * MINUTE);
    let ev = |id: &str, kind: &str, sev: &str| (id.to_string(), kind.to_string(), sev.to_string());
    assert_eq!(
        events,
        vec![
            ev(&first, "raised", "warning"),
            ev(&first, "escalated", "alarm"),
            ev(&first, "cleared", "alarm"),
            ev(&second, "raised", "warning"),
            ev(&second, "cleared", "warning"),
        ],
        "live alerts: {live:#?}"
    );
    let message = |i: usize| str_of(&live[i], "message");
    assert!(
        message(0).contains("above the warning limit 80 degC"),
        "{}",
        message(0)
    );
    assert!(
        message(1).contains("above the alarm limit 95 degC"),
        "{}",
        message(1)
    );
    assert!(
        message(2).starts_with("cleared after 3 normal window(s)"),
        "{}",
        message(2)
    );
    // Raised at the end of the second window above the limit, cleared at
    // the end of the third normal one.
    assert_eq!(
        str_of(&live[0], "raised_at"),
        vigil::model::rfc3339(T_LIVE + 7 * MINUTE)
    );
    assert_eq!(
        live[2]["cleared_at"].as_str(),
        Some(vigil::model::rfc3339(T_LIVE + 12 * MINUTE).as_str())
    );

    // The same readings as a NAB-style CSV, through the backtest.
    let csv = setup.dir.path().join("pump-1.csv");
    let mut text = String::from("timestamp,value\n");
    for (t, v) in &series {
        let ts = vigil::model::rfc3339(*t).replace('T', " ").replace('Z', "");
        text.push_str(&format!("{ts},{v:.3}\n"));
    }
    std::fs::write(&csv, text).unwrap();
    let device = setup.dir.path().join("devices/pump-1.toml");
    let report = backtest_json(
        &[
            "--device",
            device.to_str().unwrap(),
            "--metric",
            "temperature",
        ],
        &[csv],
    );
    let key = |a: &Json| {
        (
            str_of(a, "id"),
            str_of(a, "raised_at"),
            a["cleared_at"].as_str().map(str::to_string),
        )
    };
    let backtest: Vec<_> = report["alerts"]
        .as_array()
        .unwrap()
        .iter()
        .map(key)
        .collect();
    let raised_live: Vec<_> = live
        .iter()
        .filter(|a| a["kind"] == "raised")
        .map(|a| {
            let cleared = live
                .iter()
                .find(|c| c["kind"] == "cleared" && c["id"] == a["id"])
                .and_then(|c| c["cleared_at"].as_str().map(str::to_string));
            (str_of(a, "id"), str_of(a, "raised_at"), cleared)
        })
        .collect();
    assert_eq!(
        backtest, raised_live,
        "the backtest of the same readings found other alerts"
    );
}

// ---------------------------------------------------------------------------
// 3. A restart keeps the learned baseline and the open alerts.

/// Event time of the first reading (a multiple of the window).
const T_RESTART: i64 = 1_710_000_000_000;

/// No lateness: a reading in the next window closes the previous one, so
/// no window waits for processing time.
const RESTART_DEVICE: &str = r#"match = "pump-3"

[alerts]
raise_after = 2
clear_after = 3
hold_off = "0s"

[metrics.temperature]
unit = "degC"
window = "10s"
allowed_lateness = "0s"

[metrics.temperature.limits.mean]
warning_above = 80.0

[metrics.temperature.baseline]
features = ["mean"]
warmup_windows = 8
cusum = false
volatility = false
"#;

/// Readings 1 s apart filling the windows `windows` at about `level`.
fn restart_window_readings(windows: std::ops::Range<i64>, level: f64) -> Vec<(i64, f64)> {
    let from = windows.start * WINDOW_MS;
    let to = windows.end * WINDOW_MS;
    (from / 1000..to / 1000)
        .map(|s| {
            let t = T_RESTART + s * 1000;
            (t, level + noise(3, s as u64))
        })
        .collect()
}

fn end_of(window: i64) -> i64 {
    T_RESTART + (window + 1) * WINDOW_MS
}

#[test]
fn restart_keeps_learned_baseline_and_open_alerts() {
    let broker = Broker::start();
    let setup = Setup::new(&Options::new(broker.port));
    write_device(&setup, "pump-3.toml", RESTART_DEVICE);
    let send = |readings: Vec<(i64, f64)>| {
        let msgs = readings
            .into_iter()
            .map(|(t, v)| reading("pump-3", t, v))
            .collect();
        publish_blocking(broker.port, msgs);
    };
    let limit_id = format!("pump-3/temperature/limit/mean/{}", end_of(13));
    let baseline_id = format!("pump-3/temperature/baseline/mean/{}", end_of(13));

    // Windows 0-11 normal (8 of warm-up, 4 scored), 12-13 above the limit;
    // the first reading of window 14 closes window 13, which raises the
    // limit alert and the baseline alert.
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);
    let mut first = restart_window_readings(0..12, 60.0);
    first.extend(restart_window_readings(12..14, 85.0));
    first.push((T_RESTART + 14 * WINDOW_MS, 60.0));
    send(first);
    vigil.wait_for_log(&limit_id, 1);
    vigil.wait_for_log(&baseline_id, 1);
    let status = vigil.terminate();
    assert!(status.success(), "vigil exited with {status}");
    let before: Vec<(String, String)> = setup
        .inspect("alerts", 100)
        .iter()
        .map(|a| (str_of(a, "id"), str_of(a, "kind")))
        .collect();
    assert_eq!(before.len(), 2, "before the restart: {before:?}");
    assert_eq!(
        before.iter().collect::<BTreeSet<_>>(),
        BTreeSet::from([
            &(limit_id.clone(), "raised".to_string()),
            &(baseline_id.clone(), "raised".to_string()),
        ]),
        "before the restart"
    );

    // After the restart: the rest of window 14 and windows 15-16 normal,
    // which clears both open alerts (clear_after = 3); windows 17-18 at 70,
    // below the limit but far outside the learned level. A baseline that
    // started learning again would still be in its 8-window warm-up.
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 2);
    let mut second: Vec<(i64, f64)> = restart_window_readings(14..17, 60.0)
        .into_iter()
        .skip(1)
        .collect();
    second.extend(restart_window_readings(17..19, 70.0));
    second.push((T_RESTART + 19 * WINDOW_MS, 60.0));
    let sent = second.len() as u64 + 14 * 10 + 1;
    let commits = commit_count(&vigil);
    send(second);
    // What detection made of them is asserted below, from the store.
    wait_until("vigil stores the readings", || {
        commit_count(&vigil) > commits
    });
    wait_until_commits_settle(&vigil);
    let status = vigil.terminate();
    assert!(status.success(), "vigil exited with {status}");

    let st = stats(&setup);
    assert!(u64_of(&st, "readings") >= sent, "readings lost: {st}");
    assert_eq!(u64_of(&st, "detection_cursor"), u64_of(&st, "next_seq"));
    let after = setup.inspect("alerts", 100);
    let events: Vec<(String, String, Option<String>)> = after
        .iter()
        .skip(before.len())
        .map(|a| {
            (
                str_of(a, "id"),
                str_of(a, "kind"),
                a["cleared_at"].as_str().map(str::to_string),
            )
        })
        .collect();
    let cleared_at = Some(vigil::model::rfc3339(end_of(16)));
    let new_baseline_id = format!("pump-3/temperature/baseline/mean/{}", end_of(18));
    let expected: BTreeSet<(String, String, Option<String>)> = BTreeSet::from([
        // The alerts open at the stop, cleared after three normal windows.
        (limit_id.clone(), "cleared".into(), cleared_at.clone()),
        (baseline_id.clone(), "cleared".into(), cleared_at),
        // The learned level flags the second window at 70 at once.
        (new_baseline_id, "raised".into(), None),
    ]);
    assert_eq!(
        events.iter().cloned().collect::<BTreeSet<_>>(),
        expected,
        "after the restart: {after:#?}"
    );
    assert_eq!(
        events.len(),
        expected.len(),
        "after the restart: {after:#?}"
    );
}
