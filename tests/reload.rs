//! SIGHUP reloads the device files of a running `vigil run`: new thresholds
//! apply from the next window while open alerts keep their ids, a stream
//! whose settings did not change keeps its learned baseline, and an invalid
//! configuration is rejected with file and line while the old one stays.
//!
//! Every device file here uses one-reading windows (`window_readings = 1`),
//! so each reading closes its own window as soon as detection sees it.

use std::net::SocketAddr;

use serde_json::Value as Json;

use crate::support::{
    http_get, publish_blocking, scrape, series, wait_until, Broker, Msg, Options, Setup,
    VigilProcess,
};

/// Event time of the first reading.
const T0: i64 = 1_780_000_000_000;

fn write_device(setup: &Setup, file: &str, text: &str) {
    std::fs::write(setup.dir.path().join("devices").join(file), text).unwrap();
}

/// One reading per message, explicit increasing event times (`k` seconds after `T0`).
fn reading(device: &str, k: i64, value: f64) -> Msg {
    Msg::new(
        &format!("plant/l1/{device}/temp"),
        format!("{{\"value\": {value}, \"ts\": {}}}", T0 + k * 1000),
    )
}

/// Wait until detection has closed `n` windows in all.
fn wait_for_windows(addr: SocketAddr, n: u64) {
    wait_until(&format!("detection has closed {n} windows"), || {
        let s = scrape(addr);
        series(&s, "vigil_windows_total") >= n as f64
            && series(&s, "vigil_detection_lag_readings") == 0.0
    });
    let got = series(&scrape(addr), "vigil_windows_total");
    assert_eq!(got, n as f64, "more windows than readings sent");
}

/// Alerts raised (or cleared) since start, both severities.
fn alerts_total(addr: SocketAddr, what: &str) -> f64 {
    let s = scrape(addr);
    ["warning", "alarm"]
        .iter()
        .map(|sev| {
            series(
                &s,
                &format!("vigil_alerts_{what}_total{{severity=\"{sev}\"}}"),
            )
        })
        .sum()
}

fn reloads(addr: SocketAddr, result: &str) -> f64 {
    series(
        &scrape(addr),
        &format!("vigil_config_reloads_total{{result=\"{result}\"}}"),
    )
}

fn s(a: &Json, key: &str) -> String {
    a[key]
        .as_str()
        .unwrap_or_else(|| panic!("no string {key} in {a}"))
        .to_string()
}

/// A limit on the mean of every metric, alerts raised at the first window
/// above it and cleared after two below; no learned baseline.
fn limit_device(warning_above: f64) -> String {
    format!(
        r#"match = "*"

[alerts]
raise_after = 1
clear_after = 2
hold_off = "0s"

[metrics."*"]
window_readings = 1

[metrics."*".limits.mean]
warning_above = {warning_above:.1}

[metrics."*".baseline]
enabled = false
"#
    )
}

fn start(setup: &Setup) -> (VigilProcess, SocketAddr) {
    let vigil = VigilProcess::start(setup);
    vigil.wait_for_log("subscribed", 1);
    let addr = vigil.http_addr();
    (vigil, addr)
}

#[test]
fn sighup_applies_new_thresholds_and_keeps_open_alerts() {
    let broker = Broker::start();
    let mut o = Options::new(broker.port);
    o.default_device = limit_device(50.0);
    let setup = Setup::new(&o);
    let (vigil, addr) = start(&setup);
    let send = |readings: &[(i64, f64)]| {
        let msgs = readings
            .iter()
            .map(|&(k, v)| reading("pump-1", k, v))
            .collect();
        publish_blocking(broker.port, msgs);
    };

    // 40 is normal, 60 is above 50: raised at once.
    send(&[(0, 40.0), (1, 60.0)]);
    wait_for_windows(addr, 2);
    assert_eq!(alerts_total(addr, "raised"), 1.0);

    // The limit goes up to 70.
    write_device(&setup, "default.toml", &limit_device(70.0));
    vigil.signal("HUP");
    vigil.wait_for_log("device settings reloaded", 1);
    assert_eq!(reloads(addr, "applied"), 1.0);
    assert_eq!(reloads(addr, "rejected"), 0.0);
    assert!(vigil
        .log()
        .contains("reload: applying the new device files"));

    // 65 was anomalous under 50 but is normal under 70: two such windows
    // clear the alert opened before the reload, and raise nothing.
    send(&[(2, 65.0), (3, 65.0)]);
    wait_for_windows(addr, 4);
    assert_eq!(alerts_total(addr, "cleared"), 1.0);
    assert_eq!(alerts_total(addr, "raised"), 1.0);

    // 75 is above the new limit: a new alert.
    send(&[(4, 75.0)]);
    wait_for_windows(addr, 5);
    assert_eq!(alerts_total(addr, "raised"), 2.0);
    assert_eq!(http_get(addr.port(), "/readyz").0, 200);
    let status = vigil.terminate();
    assert!(status.success(), "vigil exited with {status}");

    let alerts = setup.inspect("alerts", 100);
    let events: Vec<(String, String)> = alerts.iter().map(|a| (s(a, "id"), s(a, "kind"))).collect();
    assert_eq!(events.len(), 3, "{alerts:#?}");
    let (first, second) = (&events[0].0, &events[2].0);
    assert_eq!(
        events,
        vec![
            (first.clone(), "raised".to_string()),
            (first.clone(), "cleared".to_string()),
            (second.clone(), "raised".to_string()),
        ],
        "{alerts:#?}"
    );
    assert_ne!(first, second, "the 75 window raised a new alert");
    assert!(first.starts_with("pump-1/temp/limit/mean/"), "{first}");
    assert_eq!(
        (alerts[0]["value"].as_f64(), alerts[0]["limit"].as_f64()),
        (Some(60.0), Some(50.0))
    );
    // Cleared by the hysteresis, not retired by the reload.
    assert!(
        s(&alerts[1], "message").starts_with("cleared after 2 normal window(s)"),
        "{alerts:#?}"
    );
    assert_eq!(
        (alerts[2]["value"].as_f64(), alerts[2]["limit"].as_f64()),
        (Some(75.0), Some(70.0))
    );
}

/// Every device: one-reading windows, alerts at the first anomalous window
/// and cleared at the first normal one, no learned baseline unless a
/// device's own file asks for it.
const COMMON: &str = r#"match = "*"

[alerts]
raise_after = 1
clear_after = 1
hold_off = "0s"

[metrics."*"]
window_readings = 1

[metrics."*".baseline]
enabled = false
"#;

/// Device B learns its baseline on the mean over a 10-window warm-up.
const LEARNS: &str = r#"match = "pump-b"

[metrics."*".baseline]
enabled = true
features = ["mean"]
warmup_windows = 10
cusum = false
volatility = false
"#;

fn pump_a(warning_above: f64) -> String {
    format!(
        "match = \"pump-a\"\n\n[metrics.\"*\".limits.mean]\nwarning_above = {warning_above:.1}\n"
    )
}

#[test]
fn unchanged_stream_keeps_its_learned_baseline() {
    const WARMUP: i64 = 10;
    let broker = Broker::start();
    let mut o = Options::new(broker.port);
    o.default_device = COMMON.into();
    let setup = Setup::new(&o);
    write_device(&setup, "pump-b.toml", LEARNS);
    write_device(&setup, "pump-a.toml", &pump_a(50.0));
    let (vigil, addr) = start(&setup);

    // B: the warm-up and two scored windows, steady about 50; A: 40, under its limit.
    let mut msgs: Vec<Msg> = (0..WARMUP + 2)
        .map(|k| reading("pump-b", k, 50.0 + 0.1 * (k % 3) as f64))
        .collect();
    msgs.push(reading("pump-a", 0, 40.0));
    msgs.push(reading("pump-a", 1, 40.0));
    publish_blocking(broker.port, msgs);
    let mut windows = WARMUP as u64 + 4;
    wait_for_windows(addr, windows);
    assert_eq!(
        alerts_total(addr, "raised"),
        0.0,
        "steady readings raise nothing"
    );

    // Only A's file changes: its limit drops to 30.
    write_device(&setup, "pump-a.toml", &pump_a(30.0));
    vigil.signal("HUP");
    vigil.wait_for_log("device settings reloaded", 1);
    assert_eq!(reloads(addr, "applied"), 1.0);

    // Right after the reload, with no further normal window on B: a spike
    // on B is judged against what B learned before. Had the reload reset
    // B, this window would be the first of a new 10-window warm-up and
    // raise nothing. And A's 40, fine before, is above its new limit.
    publish_blocking(
        broker.port,
        vec![
            reading("pump-b", WARMUP + 2, 80.0),
            reading("pump-a", 2, 40.0),
        ],
    );
    windows += 2;
    wait_for_windows(addr, windows);
    assert_eq!(alerts_total(addr, "raised"), 2.0);
    let status = vigil.terminate();
    assert!(status.success(), "vigil exited with {status}");

    let alerts = setup.inspect("alerts", 100);
    assert_eq!(alerts.len(), 2, "{alerts:#?}");
    let of = |device: &str| {
        alerts
            .iter()
            .find(|a| a["device"] == device)
            .unwrap_or_else(|| panic!("no alert for {device}: {alerts:#?}"))
    };
    let b = of("pump-b");
    assert_eq!(
        (s(b, "kind"), s(b, "detector"), s(b, "feature")),
        ("raised".into(), "baseline".into(), "mean".into())
    );
    assert_eq!(b["value"].as_f64(), Some(80.0));
    let level = b["baseline"]["level"].as_f64().expect("a learned level");
    assert!((level - 50.1).abs() < 0.2, "learned level {level}: {b}");
    let a = of("pump-a");
    assert_eq!(
        (s(a, "kind"), s(a, "detector")),
        ("raised".into(), "limit".into())
    );
    assert_eq!(
        (a["value"].as_f64(), a["limit"].as_f64()),
        (Some(40.0), Some(30.0))
    );
}

#[test]
fn invalid_config_is_rejected_and_the_old_one_stays() {
    let broker = Broker::start();
    let mut o = Options::new(broker.port);
    o.default_device = limit_device(50.0);
    let setup = Setup::new(&o);
    let (mut vigil, addr) = start(&setup);
    publish_blocking(broker.port, vec![reading("pump-1", 0, 40.0)]);
    wait_for_windows(addr, 1);

    // A higher limit, and a duration that is not one: all or nothing.
    let broken = limit_device(70.0).replace(
        "window_readings = 1\n",
        "window_readings = 1\nallowed_lateness = \"5 seconds\"\n",
    );
    let line = broken
        .lines()
        .position(|l| l.starts_with("allowed_lateness"))
        .unwrap()
        + 1;
    let file = setup.dir.path().join("devices/default.toml");
    std::fs::write(&file, &broken).unwrap();
    vigil.signal("HUP");
    vigil.wait_for_log("reload rejected", 1);
    let log = vigil.log();
    let at = format!("{}:{line}: ", file.display());
    assert!(
        log.lines().any(|l| l.contains(&at)
            && l.contains("allowed_lateness")
            && l.contains("is not a duration")),
        "no error naming {at}... in:\n{log}"
    );
    assert!(
        log.contains("reload rejected: the configuration has errors; the one in force stays"),
        "{log}"
    );
    assert!(!log.contains("device settings reloaded"), "{log}");
    assert_eq!(reloads(addr, "rejected"), 1.0);
    assert_eq!(reloads(addr, "applied"), 0.0);

    // Still running, still ready, still judging by 50: 60 raises.
    assert!(vigil.is_running());
    assert_eq!(
        http_get(addr.port(), "/readyz"),
        (200, "ready\n".to_string())
    );
    publish_blocking(broker.port, vec![reading("pump-1", 1, 60.0)]);
    wait_for_windows(addr, 2);
    assert_eq!(alerts_total(addr, "raised"), 1.0);
    let status = vigil.terminate();
    assert!(status.success(), "vigil exited with {status}");

    // `inspect` loads the configuration too: put a valid one back.
    std::fs::write(&file, limit_device(50.0)).unwrap();
    let alerts = setup.inspect("alerts", 100);
    assert_eq!(alerts.len(), 1, "{alerts:#?}");
    assert_eq!(s(&alerts[0], "kind"), "raised");
    assert_eq!(
        (alerts[0]["value"].as_f64(), alerts[0]["limit"].as_f64()),
        (Some(60.0), Some(50.0))
    );
}
