//! The embedded broker: vigil hosting the sensors' MQTT broker itself, with
//! no Mosquitto anywhere. Sensors publish to it, vigil's ingest takes from
//! it, and (as in config/dev.toml) the forwarder publishes back to it under
//! `vigil/...` where a plain subscriber sees the alerts.

use std::net::TcpListener;

use crate::forward::upstream_table;
use crate::support::{
    free_port, publish_blocking, scrape, series, vigil_cmd, wait_until, Msg, Options, Setup,
    Subscriber, VigilProcess,
};

/// Event time of the first reading (a whole minute).
const T0: i64 = 1_760_000_000_000;

fn embedded_table(port: u16) -> String {
    format!("[embedded_broker]\nenabled = true\nlisten = \"127.0.0.1:{port}\"\n")
}

/// One reading per window, a limit at 80: every 10th reading is above it.
const DEVICE: &str = r#"match = "*"
[alerts]
raise_after = 1
clear_after = 1
hold_off = "0s"
[metrics.temperature]
window_readings = 1
[metrics.temperature.limits.mean]
warning_above = 80.0
"#;

fn readings(device: &str, n: usize) -> Vec<Msg> {
    (0..n)
        .map(|i| {
            let v = if i % 10 == 5 { 90.0 } else { 40.0 };
            Msg::new(
                &format!("plant/l1/{device}/temperature"),
                format!("{{\"value\": {v}, \"ts\": {}}}", T0 + i as i64 * 1000),
            )
        })
        .collect()
}

#[test]
fn sensors_publish_to_vigils_own_broker_and_alerts_come_back_through_it() {
    let port = free_port();
    let mut o = Options::new(port);
    o.default_device = DEVICE.into();
    o.extra_tables = format!(
        "{}\n{}",
        embedded_table(port),
        upstream_table(port, "topic_prefix = \"vigil\"")
    );
    let setup = Setup::new(&o);
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("embedded MQTT broker listening", 1);
    let addr = vigil.http_addr();
    // The forwarder's own connection to the embedded broker is up.
    wait_until("vigil connected to its own broker twice", || {
        let m = scrape(addr);
        series(&m, "vigil_broker_connected{broker=\"local\"}") == 1.0
            && series(&m, "vigil_broker_connected{broker=\"upstream\"}") == 1.0
    });
    let sub = Subscriber::start(port, "alerts-watcher", "vigil/+/alerts/#");

    let n = 200;
    publish_blocking(port, readings("pump-1", n / 2));
    publish_blocking(port, readings("pump-2", n / 2));

    wait_until("every reading stored and processed", || {
        let m = scrape(addr);
        series(&m, "vigil_readings_stored_total") == n as f64
            && series(&m, "vigil_detection_lag_readings") == 0.0
    });
    // 10 spikes per device, each raised and cleared by the next reading
    // (the last one is cleared too: readings 95 → 96...).
    wait_until("40 alert transitions at the subscriber", || {
        sub.messages().len() >= 40
    });
    let msgs = sub.messages();
    let events: Vec<serde_json::Value> = msgs
        .iter()
        .map(|m| serde_json::from_slice(&m.payload).unwrap())
        .collect();
    let raised = events.iter().filter(|e| e["event"] == "raised").count();
    let cleared = events.iter().filter(|e| e["event"] == "cleared").count();
    assert_eq!((raised, cleared, msgs.len()), (20, 20, 40));
    assert!(events
        .iter()
        .all(|e| e["value"] == 90.0 || e["event"] == "cleared"));

    let status = vigil.terminate();
    assert!(status.success(), "vigil exited with {status}");
    assert_eq!(
        crate::support::num(&crate::support::stats(&setup), "readings"),
        n as u64
    );
}

#[test]
fn a_taken_port_for_the_embedded_broker_fails_the_start_with_the_key_named() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let mut o = Options::new(port);
    o.extra_tables = embedded_table(port);
    let setup = Setup::new(&o);
    let out = vigil_cmd()
        .args(["run", "--config"])
        .arg(&setup.config)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "stderr: {stderr}");
    assert!(
        stderr.contains("embedded_broker.listen: cannot listen on 127.0.0.1:"),
        "stderr: {stderr}"
    );
}

#[test]
fn without_a_broker_table_vigil_connects_to_its_embedded_broker() {
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("vigil.toml");
    std::fs::write(
        &config,
        format!(
            "gateway_id = \"gw\"\n[[subscriptions]]\ntemplate = \"plant/+/{{device}}/{{metric}}\"\n\
             [store]\npath = \"store\"\n[http]\nenabled = false\n{}",
            embedded_table(port)
        ),
    )
    .unwrap();
    let c = vigil::config::load(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!((c.broker.host.as_str(), c.broker.port), ("127.0.0.1", port));
    let e = c.embedded_broker.expect("enabled");
    assert_eq!(e.listen.port(), port);
}
