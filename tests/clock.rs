//! Sensors' clocks are untrusted: a reading stamped far ahead of the
//! gateway's clock is dead-lettered as `clock_skew` live and counted as
//! skewed in a backtest, and in both the stream keeps detecting.

use std::time::{SystemTime, UNIX_EPOCH};

use serde_json::Value as Json;

use crate::support::{
    backtest_json, publish_blocking, wait_until_commits_settle, Broker, Msg, Options, Setup,
    VigilProcess,
};

const DEVICE: &str = r#"match = "pump-1"

[alerts]
raise_after = 1

[metrics.temperature]
unit = "degC"
window = "10s"
allowed_lateness = "1s"

[metrics.temperature.limits.mean]
warning_above = 80.0
"#;

/// 9999-12-31T23:59:59Z, the latest time a payload may carry.
const YEAR_9999: i64 = 253_402_300_799_000;
const DAY: i64 = 86_400_000;

fn reading(time_ms: i64, value: f64) -> Msg {
    Msg::new(
        "plant/l1/pump-1/temperature",
        format!("{{\"value\": {value:.3}, \"ts\": {time_ms}}}"),
    )
}

fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_millis() as i64
}

#[test]
fn readings_stamped_ahead_of_the_gateway_clock_are_dead_lettered_and_detection_goes_on() {
    let broker = Broker::start();
    let setup = Setup::new(&Options::new(broker.port));
    std::fs::write(setup.dir.path().join("devices/pump-1.toml"), DEVICE).unwrap();
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);

    // Two minutes of readings a second, ending a minute ago (whole 10 s
    // windows), with a reading stamped in 9999 and one a day ahead in the
    // middle; the last 30 s overheat.
    let t0 = (now_ms() - 180_000) / 10_000 * 10_000;
    let mut msgs = Vec::new();
    for s in 0..120 {
        if s == 60 {
            msgs.push(reading(YEAR_9999, 20.0));
            msgs.push(reading(now_ms() + DAY, 20.0));
        }
        msgs.push(reading(t0 + s * 1000, if s >= 90 { 95.0 } else { 20.0 }));
    }
    publish_blocking(broker.port, msgs);
    vigil.wait_for_log("alert raised", 1);
    wait_until_commits_settle(&vigil);
    let status = vigil.terminate();
    assert!(status.success(), "vigil exited with {status}");

    let dead = setup.inspect("dead-letters", 100);
    let reasons: Vec<&str> = dead.iter().map(|d| d["reason"].as_str().unwrap()).collect();
    assert_eq!(reasons, ["clock_skew", "clock_skew"], "{dead:#?}");
    let stats = setup.inspect("stats", 1);
    assert_eq!(stats[0]["readings"].as_u64(), Some(120), "{stats:?}");

    let alerts = setup.inspect("alerts", 100);
    let raised: Vec<&Json> = alerts.iter().filter(|a| a["kind"] == "raised").collect();
    assert_eq!(raised.len(), 1, "{alerts:#?}");
    assert_eq!(raised[0]["detector"], "limit");
    assert_eq!(
        raised[0]["raised_at"].as_str(),
        Some(vigil::model::rfc3339(t0 + 100_000).as_str()),
        "the overheating was not alerted when it happened"
    );
    // Every window before and after the skewed readings was evaluated.
    let aggregates = setup.inspect("aggregates", 100);
    assert!(aggregates.len() >= 11, "{} aggregates", aggregates.len());
}

#[test]
fn a_backtest_counts_skewed_readings_and_keeps_detecting() {
    let dir = tempfile::tempdir().unwrap();
    let device = dir.path().join("pump-1.toml");
    std::fs::write(&device, DEVICE).unwrap();
    // 2024-01-01, one row a second, with a row stamped in 9999 and one a
    // day ahead among them; overheating from the 90th second.
    let t0 = 1_704_067_200_000_i64;
    let row = |t: i64, v: f64| {
        let ts = vigil::model::rfc3339(t).replace('T', " ").replace('Z', "");
        format!("{ts},{v}\n")
    };
    let mut csv = String::from("timestamp,value\n");
    for s in 0..120 {
        if s == 60 {
            csv.push_str(&row(YEAR_9999, 20.0));
            csv.push_str(&row(t0 + s * 1000 + DAY, 20.0));
        }
        csv.push_str(&row(t0 + s * 1000, if s >= 90 { 95.0 } else { 20.0 }));
    }
    let input = dir.path().join("pump-1.csv");
    std::fs::write(&input, csv).unwrap();

    let report = backtest_json(
        &[
            "--device",
            device.to_str().unwrap(),
            "--metric",
            "temperature",
        ],
        &[input],
    );
    assert_eq!(report["skewed"].as_u64(), Some(2), "{report}");
    assert_eq!(report["late"].as_u64(), Some(0), "{report}");
    let alerts = report["alerts"].as_array().unwrap();
    assert_eq!(alerts.len(), 1, "{report}");
    assert_eq!(
        alerts[0]["raised_at"].as_str(),
        Some(vigil::model::rfc3339(t0 + 100_000).as_str())
    );
}
