//! `vigil simulate` against a real broker: what it reports is what a
//! subscriber receives, faults show as announced, bad options and an
//! unreachable broker fail cleanly, and a simulated bearing fault makes
//! vigil raise an ISO 10816 alert for that pump and no other.

use std::collections::{BTreeMap, BTreeSet};
use std::process::Stdio;
use std::time::{Duration, Instant};

use serde_json::Value as Json;
use tokio::sync::{mpsc, watch};
use vigil::config::{PayloadFormat, TopicIds};
use vigil::ingest::decode::decode;
use vigil::model::{AlertKind, Reading};
use vigil::simulate::{self, FaultKind, Vibration};
use vigil::store::{Lane, OutboxEntry, Store};

use crate::support::{
    free_port, start_app, vigil_cmd, wait_until, Broker, Options, Setup, Subscriber, PATIENCE,
};

/// The device and metric of `plant/line1/{device}/{metric}`.
fn ids(topic: &str) -> (String, String) {
    let parts: Vec<&str> = topic.split('/').collect();
    assert_eq!(parts.len(), 4, "unexpected topic {topic}");
    (parts[2].to_string(), parts[3].to_string())
}

fn decode_one(topic: &str, payload: &[u8]) -> Option<Reading> {
    let (device, metric) = ids(topic);
    let ids = TopicIds {
        device: Some(&device),
        metric: Some(&metric),
    };
    decode(PayloadFormat::Auto, ids, payload, 0)
        .ok()
        .map(|mut r| r.remove(0))
}

fn u64_of(v: &Json, key: &str) -> u64 {
    v[key]
        .as_u64()
        .unwrap_or_else(|| panic!("no number {key} in {v}"))
}

#[test]
fn what_simulate_reports_is_what_a_subscriber_receives() {
    let broker = Broker::start();
    let watcher = Subscriber::start(broker.port, "sim-watcher", "plant/#");
    let out = vigil_cmd()
        .arg("simulate")
        .args(["--broker", &format!("127.0.0.1:{}", broker.port)])
        .args([
            "--devices",
            "5",
            "--rate",
            "10",
            "--duration",
            "3s",
            "--speed",
            "60",
        ])
        .args(["--faults", "garbage:pump-02@1s,silent:pump-04@1500ms"])
        .args(["--seed", "7", "--json"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "vigil simulate failed: {stderr}");
    let lines: Vec<Json> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap_or_else(|e| panic!("{l:?}: {e}")))
        .collect();
    let event = |v: &Json| v["event"].as_str().unwrap_or_default().to_string();
    assert_eq!(event(&lines[0]), "start", "{lines:?}");
    assert_eq!(event(lines.last().unwrap()), "summary", "{lines:?}");
    let faults: Vec<&Json> = lines.iter().filter(|v| event(v) == "fault").collect();
    let summary = lines.last().unwrap();
    assert_eq!(faults.len(), 2, "{lines:?}");
    let fault = |kind: &str| {
        *faults
            .iter()
            .find(|f| f["kind"] == kind)
            .unwrap_or_else(|| panic!("no {kind} fault in {faults:?}"))
    };
    let (garbage, silent) = (fault("garbage"), fault("silent"));
    assert_eq!(
        (garbage["device"].as_str(), garbage["metric"].as_str()),
        (Some("pump-02"), Some("temperature"))
    );
    assert_eq!(silent["device"], "pump-04");
    assert_eq!(silent["wall_s"], 1.5);

    // Everything the simulator counted reached the subscriber, no more.
    let messages = u64_of(summary, "messages");
    assert_eq!(u64_of(summary, "unconfirmed"), 0);
    assert_eq!(
        messages,
        u64_of(summary, "readings") + u64_of(summary, "garbage")
    );
    wait_until("the subscriber has every message", || {
        watcher.messages().len() as u64 >= messages
    });
    let received = watcher.messages();
    assert_eq!(received.len() as u64, messages);

    // 30 ticks of 5 devices × 2 streams, less pump-04 after 15 ticks.
    assert_eq!(messages, 30 * 10 - 15 * 2);
    let mut streams: BTreeMap<(String, String), Vec<i64>> = BTreeMap::new();
    let mut malformed = 0;
    for m in &received {
        let (device, metric) = ids(&m.topic);
        match decode_one(&m.topic, &m.payload) {
            Some(r) => streams.entry((device, metric)).or_default().push(r.time_ms),
            None => {
                assert_eq!(
                    (device.as_str(), metric.as_str()),
                    ("pump-02", "temperature")
                );
                malformed += 1;
            }
        }
    }
    assert_eq!(malformed, u64_of(summary, "garbage"));
    assert_eq!(malformed, 20, "pump-02's temperature from 1 s (tick 10) on");
    // Both metrics of every device, each in event-time order within the run.
    let (first, last) = (
        summary["first_event_ms"].as_i64().unwrap(),
        summary["last_event_ms"].as_i64().unwrap(),
    );
    for d in 1..=5 {
        for metric in ["temperature", "vibration"] {
            let times = &streams[&(format!("pump-{d:02}"), metric.to_string())];
            assert!(
                times.windows(2).all(|w| w[0] < w[1]),
                "pump-{d:02} {metric}"
            );
            assert!(times.iter().all(|t| (first..=last).contains(t)));
        }
    }
    // The garbage began, and the silence, where announced.
    let garbage_at = garbage["event_ms"].as_i64().unwrap();
    assert!(streams[&("pump-02".into(), "temperature".into())]
        .iter()
        .all(|&t| t < garbage_at));
    let silent_at = silent["event_ms"].as_i64().unwrap();
    for metric in ["temperature", "vibration"] {
        let times = &streams[&("pump-04".into(), metric.into())];
        assert_eq!(times.len(), 15);
        assert!(times.iter().all(|&t| t < silent_at));
    }
    // 60x: a plant minute between readings 6 s apart at 10/s per stream.
    let t = &streams[&("pump-01".into(), "vibration".into())];
    assert_eq!(t[1] - t[0], 6_000);
}

#[test]
fn flat_out_publishes_the_count_as_fast_as_the_broker_takes_it() {
    let broker = Broker::start();
    let watcher = Subscriber::start(broker.port, "flat-watcher", "plant/#");
    let out = simulate_output(&[
        "--broker",
        &format!("127.0.0.1:{}", broker.port),
        "--devices",
        "50",
        "--rate",
        "10",
        "--flat-out",
        "--count",
        "5000",
        "--json",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let summary: Json = serde_json::from_str(stdout.lines().last().unwrap()).unwrap();
    assert_eq!(summary["event"], "summary", "{stdout}");
    assert_eq!(
        (
            u64_of(&summary, "messages"),
            u64_of(&summary, "unconfirmed")
        ),
        (5000, 0)
    );
    wait_until("the subscriber has all 5,000", || {
        watcher.messages().len() >= 5000
    });
    assert_eq!(watcher.messages().len(), 5000);
    // Unpaced, event time still steps by 1/rate per tick: 50 ticks of 100
    // readings, 100 ms apart, all stamped before the run began.
    let (first, last) = (
        summary["first_event_ms"].as_i64().unwrap(),
        summary["last_event_ms"].as_i64().unwrap(),
    );
    assert_eq!(last - first, 49 * 100);
    assert!(last <= vigil::model::wall_ms());
}

/// Run `vigil simulate ARGS` to its end (a hang fails the test after PATIENCE).
fn simulate_output(args: &[&str]) -> std::process::Output {
    let mut child = vigil_cmd()
        .arg("simulate")
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while child.try_wait().unwrap().is_none() {
        assert!(
            start.elapsed() < PATIENCE,
            "vigil simulate {args:?} did not end"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

#[test]
fn bad_options_and_an_unreachable_broker_fail_with_a_clear_message() {
    let nobody = format!("127.0.0.1:{}", free_port());
    let cases: &[(&[&str], &str)] = &[
        (&["--devices", "0"], "devices: 0 is not a fleet"),
        (&["--rate", "0"], "rate: 0 readings/s"),
        (
            &["--faults", "melt:pump-01@1s"],
            "unknown fault kind \"melt\"; expected one of bearing, overheat, stuck, silent, garbage",
        ),
        (
            &["--devices", "8", "--faults", "bearing:pump-09@1s"],
            "pump-09 is not in the fleet (pump-01 to pump-08)",
        ),
        (
            &["--duration", "10s", "--faults", "overheat:pump-01@20s"],
            "20s is not before the end of the run (10s)",
        ),
        (&["--duration", "soon"], "\"soon\" is not a duration"),
        (&["--qos", "2"], "qos: 2 is not 0 or 1"),
        (&["--duration", "5s"], "cannot connect to the broker at"),
    ];
    for (args, expected) in cases {
        let mut all = vec!["--broker", nobody.as_str()];
        all.extend_from_slice(args);
        let out = simulate_output(&all);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(expected), "{args:?}: {stderr}");
        assert!(!stderr.contains("panicked"), "{args:?}: {stderr}");
    }
}

const PUMPS: &str = r#"match = "pump-*"

[alerts]
raise_after = 2
clear_after = 3
hold_off = "0s"

[metrics.temperature]
unit = "degC"
window = "1m"

[metrics.temperature.baseline]
enabled = false

[metrics.vibration]
unit = "mm/s"
window = "1m"

[metrics.vibration.iso10816]
group = 2
foundation = "rigid"

[metrics.vibration.baseline]
enabled = false
"#;

/// Alerts raised so far (transitions of kind `raised`).
fn raised(store: &Store) -> Vec<vigil::model::AlertEvent> {
    store
        .last_outbox(Lane::Alerts, 10_000)
        .unwrap()
        .into_iter()
        .filter_map(|item| match item.entry {
            OutboxEntry::Alert(a) if a.kind == AlertKind::Raised => Some(a),
            _ => None,
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_simulated_bearing_fault_raises_an_alert_for_that_pump_only() {
    let broker = Broker::start();
    let setup = Setup::new(&Options::new(broker.port));
    std::fs::write(setup.dir.path().join("devices/pumps.toml"), PUMPS).unwrap();
    let running = start_app(&setup).await;
    let store = running.store().clone();

    // 60x: a wall second is a plant minute, one window of each stream.
    let opts = simulate::Options {
        broker: format!("127.0.0.1:{}", broker.port),
        devices: 4,
        rate_hz: 10.0,
        speed: 60.0,
        duration: Some(Duration::from_secs(50)),
        vibration: Vibration::Rms,
        faults: simulate::parse_faults("bearing:pump-03@1s").unwrap(),
        seed: 3,
        client_id: "sim-e2e".into(),
        ..simulate::Options::default()
    };
    let (stop_tx, stop_rx) = watch::channel(false);
    let (injection_tx, mut injection_rx) = mpsc::unbounded_channel();
    let sim = tokio::spawn(simulate::run(opts, Some(injection_tx), stop_rx));
    let injection = tokio::time::timeout(PATIENCE, injection_rx.recv())
        .await
        .expect("the fault begins")
        .expect("one injection");
    assert_eq!(
        (
            injection.kind,
            injection.device.as_str(),
            injection.metric.as_str()
        ),
        (FaultKind::Bearing, "pump-03", "vibration")
    );

    let s = store.clone();
    tokio::task::spawn_blocking(move || {
        wait_until("an alert for pump-03", || {
            raised(&s).iter().any(|a| a.device == "pump-03")
        })
    })
    .await
    .unwrap();
    stop_tx.send(true).unwrap();
    let summary = sim.await.unwrap().expect("the run ends cleanly");
    assert!(summary.stopped);
    assert_eq!(summary.unconfirmed, 0);
    assert_eq!(summary.injections, vec![injection.clone()]);

    // vigil has stored every reading, and detected over them.
    let s = store.clone();
    let readings = summary.readings;
    tokio::task::spawn_blocking(move || {
        wait_until("vigil has stored every reading", || {
            s.stats().unwrap().readings >= readings
        })
    })
    .await
    .unwrap();
    running.shutdown().await.unwrap();

    let alerts = raised(&store);
    let sources: BTreeSet<(String, String, String)> = alerts
        .iter()
        .map(|a| (a.device.clone(), a.metric.clone(), a.detector.clone()))
        .collect();
    assert_eq!(
        sources,
        BTreeSet::from([("pump-03".into(), "vibration".into(), "iso10816".into())]),
        "{alerts:#?}"
    );
    // Raised in zone C or D, after the fault began.
    let first = &alerts[0];
    assert!(first.raised_ms > injection.event_ms);
    assert!(first.value > 2.8, "{first:?}");
    assert_eq!(store.stats().unwrap().readings, summary.readings);
}
