//! Forwarding to a second, real Mosquitto (the upstream broker), with vigil
//! as a process: every alert of an outage arrives (across a SIGKILL), alerts
//! before the aggregate backlog, copies only as repeated ids; mutual TLS; the
//! last will; CBOR and custom topics. The disk budget is in `forward_budget.rs`.
//!
//! The test's subscriber has a persistent session on the upstream broker,
//! which keeps it (and queued messages) across the broker's own restart.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::Value as Json;

use crate::support::{
    log_len, num, pki::Pki, publish_blocking, rand_u64, retained, stats, wait_until,
    wait_until_commits_settle, Broker, Msg, Options, Received, Setup, Subscriber, VigilProcess,
};

/// Event time of the first reading (a whole second).
pub const T0: i64 = 1_790_000_000_000;
pub const METRIC: &str = "temp";
const STATUS: &str = "vigil/gw-test/status";

/// One-second windows closed by the next reading (no lateness), alerts on
/// the first anomalous window and cleared by the first normal one; no
/// learned baseline, so the alerts follow from the levels alone.
pub const DEVICE: &str = r#"match = "*"

[alerts]
raise_after = 1
clear_after = 1
hold_off = "0s"

[metrics."*"]
window = "1s"
allowed_lateness = "0s"

[metrics."*".limits.mean]
warning_above = 50.0
alarm_above = 80.0

[metrics."*".baseline]
enabled = false
"#;

/// The [upstream] table for a broker on `port`, plus `extra` keys.
pub fn upstream_table(port: u16, extra: &str) -> String {
    format!(
        "[upstream]\nhost = \"127.0.0.1\"\nport = {port}\nclient_id = \"vigil-up-{port}\"\nkeepalive_s = 5\nreconnect_min_ms = 50\nreconnect_max_ms = 500\n{extra}\n"
    )
}

/// A setup whose vigil reads `local` and forwards with `upstream` (a table).
pub fn forward_setup(local: &Broker, budget_bytes: u64, upstream: String) -> Setup {
    let mut o = Options::new(local.port);
    o.budget_bytes = budget_bytes;
    o.default_device = DEVICE.into();
    o.extra_tables = upstream;
    Setup::new(&o)
}

pub fn reading(device: &str, t: i64, v: f64) -> Msg {
    Msg::new(
        &format!("plant/l1/{device}/{METRIC}"),
        format!("{{\"value\": {v}, \"ts\": {t}}}"),
    )
}

/// The alert transitions (alert id, event) the device file above makes of
/// one stream's readings, one per window, in time order.
pub fn expected_alerts(device: &str, series: &[(i64, f64)]) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    let mut open: Option<(String, u8)> = None;
    for &(t, v) in series {
        let end = t - t.rem_euclid(1000) + 1000;
        let sev = u8::from(v > 50.0) + u8::from(v > 80.0);
        let mut event = |id: &str, e: &str| out.insert((id.to_string(), e.to_string()));
        open = match open {
            None if sev == 0 => None,
            None => {
                let id = format!("{device}/{METRIC}/limit/mean/{end}");
                event(&id, "raised");
                Some((id, sev))
            }
            Some((id, _)) if sev == 0 => {
                event(&id, "cleared");
                None
            }
            Some((id, cur)) if sev > cur => {
                event(&id, "escalated");
                Some((id, sev))
            }
            keep => keep,
        };
    }
    out
}

/// The (alert id, event) and message id of every alert in the outbox.
pub fn outbox_alerts(setup: &Setup) -> BTreeMap<String, (String, String)> {
    let s = |a: &Json, k: &str| a[k].as_str().unwrap().to_string();
    setup
        .inspect("alerts", 1_000_000)
        .iter()
        .map(|a| (s(a, "message_id"), (s(a, "id"), s(a, "kind"))))
        .collect()
}

/// What the upstream broker delivered, by message id.
#[derive(Default)]
pub struct Delivered {
    /// Message id → (topic, message), alerts and aggregates.
    pub alerts: BTreeMap<String, (String, Json)>,
    pub aggregates: BTreeMap<String, (String, Json)>,
    /// Message ids in the order of their first arrival.
    pub order: Vec<String>,
    /// Copies received beyond the first.
    pub copies: usize,
}

impl Delivered {
    /// Group `msgs` (the gateway's status left out) by id, checking that every
    /// copy is byte for byte the first one.
    pub fn of(msgs: &[Received], decode: fn(&[u8]) -> Json) -> Delivered {
        let mut d = Delivered::default();
        let mut first: BTreeMap<String, Vec<u8>> = BTreeMap::new();
        let status = |p: &[u8]| p == b"online" || p == b"offline";
        for m in msgs.iter().filter(|m| !status(&m.payload)) {
            let v = decode(&m.payload);
            let id = v["id"].as_str().expect("a message id").to_string();
            if let Some(p) = first.get(&id) {
                assert_eq!(p, &m.payload, "two different messages with the id {id}");
                d.copies += 1;
                continue;
            }
            first.insert(id.clone(), m.payload.clone());
            d.order.push(id.clone());
            let lane = match v["type"].as_str() {
                Some("alert") => &mut d.alerts,
                Some("aggregate") => &mut d.aggregates,
                other => panic!("message of type {other:?}: {v}"),
            };
            lane.insert(id, (m.topic.clone(), v));
        }
        d
    }

    /// (alert id, event) of every alert, by message id.
    pub fn alert_events(&self) -> BTreeMap<String, (String, String)> {
        let s = |v: &Json, k: &str| v[k].as_str().unwrap().to_string();
        self.alerts
            .iter()
            .map(|(id, (_, v))| (id.clone(), (s(v, "alert_id"), s(v, "event"))))
            .collect()
    }
}

pub fn json(payload: &[u8]) -> Json {
    serde_json::from_slice(payload).expect("a JSON payload")
}

/// Wait until `sub` has `alerts` distinct alert messages and `aggregates`
/// distinct aggregate messages (`decode` for the payloads).
pub fn wait_for_delivery(
    sub: &Subscriber,
    alerts: usize,
    aggregates: usize,
    decode: fn(&[u8]) -> Json,
) -> Delivered {
    wait_until(
        &format!("{alerts} alerts and {aggregates} aggregates arrive upstream"),
        || {
            let d = Delivered::of(&sub.messages(), decode);
            d.alerts.len() >= alerts && d.aggregates.len() >= aggregates
        },
    );
    Delivered::of(&sub.messages(), decode)
}

/// The ids `{gateway}/{lane}/0 .. n-1`.
pub fn ids(lane: &str, n: u64) -> BTreeSet<String> {
    (0..n).map(|i| format!("gw-test/{lane}/{i}")).collect()
}

// ---------------------------------------------------------------------------
// 1. An outage with a SIGKILL in it: every alert arrives, alerts first.

const DEVICES: usize = 4;
/// Readings (and one-second windows) per device, half before the kill.
const PER_DEVICE: i64 = 300;

/// Device `d`'s reading `k`: an alarm episode, a warning escalated to an
/// alarm, an alarm in the last window of the first half (cleared in the
/// second), a warning, and an alarm in the very last window (never cleared;
/// seen in the log, it tells that every window has closed).
fn outage_level(d: usize, k: i64) -> f64 {
    let d = d as i64;
    match k {
        _ if (20 + 7 * d..23 + 7 * d).contains(&k) => 90.0,
        _ if (100 + 3 * d..102 + 3 * d).contains(&k) => 60.0,
        _ if (102 + 3 * d..104 + 3 * d).contains(&k) => 95.0,
        149 | 299 => 90.0,
        _ if k == 200 + 5 * d => 65.0,
        _ => 20.0 + (k % 7) as f64 * 0.5 + d as f64,
    }
}

fn outage_series(d: usize) -> Vec<(i64, f64)> {
    (0..PER_DEVICE)
        .map(|k| (T0 + k * 1000, outage_level(d, k)))
        .collect()
}

/// Readings `ks` of every device, devices interleaved.
fn outage_readings(ks: std::ops::Range<i64>) -> Vec<Msg> {
    ks.flat_map(|k| {
        (0..DEVICES).map(move |d| reading(&format!("dev-{d}"), T0 + k * 1000, outage_level(d, k)))
    })
    .collect()
}

#[test]
fn outage_with_restart_delivers_every_alert_alerts_first() {
    let upstream = Broker::start_persistent(None);
    let sub = Subscriber::start(upstream.port, "test-sub-outage", "vigil/#");
    let local = Broker::start();
    let extra = "max_inflight = 8\naggregate_rate_per_s = 500";
    let setup = forward_setup(&local, 1 << 30, upstream_table(upstream.port, extra));

    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);
    wait_until("vigil says online upstream", || {
        sub.messages()
            .iter()
            .any(|m| m.topic == STATUS && m.payload == b"online")
    });
    let stopped = upstream.stop();

    // The first half, with a SIGKILL once ingest has committed a batch.
    let port = local.port;
    let publisher = std::thread::spawn(move || publish_blocking(port, outage_readings(0..150)));
    let commits = || vigil.log().matches("batch committed").count();
    wait_until("vigil stores readings", || commits() >= 1);
    std::thread::sleep(Duration::from_millis(rand_u64() % 30));
    let at = commits();
    vigil.kill();
    println!("SIGKILL after {at} group commit(s)");
    let vigil = VigilProcess::start(&setup);
    publisher.join().expect("publisher failed");
    publish_blocking(local.port, outage_readings(150..PER_DEVICE));
    for d in 0..DEVICES {
        let end = T0 + PER_DEVICE * 1000;
        vigil.wait_for_log(&format!("dev-{d}/{METRIC}/limit/mean/{end}"), 1);
    }
    wait_until_commits_settle(&vigil);
    assert!(vigil.terminate().success());

    // Everything waits in the outbox: what detection made of the readings.
    let mut expected = BTreeSet::new();
    for d in 0..DEVICES {
        expected.extend(expected_alerts(&format!("dev-{d}"), &outage_series(d)));
    }
    let before = stats(&setup);
    let outbox = outbox_alerts(&setup);
    let n_alerts = num(&before, "outbox_alerts");
    let n_aggregates = num(&before, "outbox_aggregates");
    assert_eq!(outbox.values().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(n_alerts as usize, expected.len(), "{before}");
    assert_eq!(n_aggregates, DEVICES as u64 * PER_DEVICE as u64, "{before}");
    assert_eq!(
        outbox.keys().cloned().collect::<BTreeSet<_>>(),
        ids("alerts", n_alerts)
    );
    assert_eq!(num(&before, "delivered_alerts_total"), 0);

    // vigil retries while the upstream broker is away; then it comes back.
    let from = log_len(&setup);
    let vigil = VigilProcess::start(&setup);
    wait_until("vigil retries the upstream broker", || {
        vigil.log()[from..].contains("upstream broker unreachable")
    });
    let mark = sub.messages().len();
    let upstream = stopped.start();
    // Killed again while the (paced) backlog drains: what was acknowledged
    // but not yet deleted comes again, under the same id.
    wait_for_delivery(&sub, n_alerts as usize, 300, json);
    vigil.kill();
    let vigil = VigilProcess::start(&setup);
    let got = wait_for_delivery(&sub, n_alerts as usize, n_aggregates as usize, json);
    assert!(
        sub.sessions().iter().skip(1).all(|&resumed| resumed),
        "the subscriber's session was lost: {:?}",
        sub.sessions()
    );

    // Every alert transition, each under its outbox message id, no others.
    assert_eq!(got.alert_events(), outbox);
    assert_eq!(got.alerts.len() as u64, n_alerts);
    assert_eq!(
        got.aggregates.keys().cloned().collect::<BTreeSet<_>>(),
        ids("aggregates", n_aggregates)
    );
    for (id, (topic, v)) in got.alerts.iter().chain(&got.aggregates) {
        let (kind, lane) = if v["type"] == "alert" {
            ("alerts", "alert")
        } else {
            ("aggregates", "aggregate")
        };
        assert_eq!(v["schema"], 1, "{v}");
        assert_eq!(v["gateway"], "gw-test", "{v}");
        assert_eq!(v["type"], lane, "{v}");
        assert_eq!(*id, format!("gw-test/{kind}/{}", v["seq"]), "{v}");
        let device = v["device"].as_str().unwrap();
        assert_eq!(*topic, format!("vigil/gw-test/{kind}/{device}/{METRIC}"));
    }
    // Each window once, with its one reading.
    let mut windows = BTreeSet::new();
    for (_, v) in got.aggregates.values() {
        let device = v["device"].as_str().unwrap();
        let d: usize = device.trim_start_matches("dev-").parse().unwrap();
        let (start, end) = (
            v["start_ms"].as_i64().unwrap(),
            v["end_ms"].as_i64().unwrap(),
        );
        assert_eq!((end - start, v["windows"].as_u64()), (1000, Some(1)), "{v}");
        assert_eq!(v["features"]["count"], 1.0, "{v}");
        assert_eq!(
            v["features"]["mean"],
            outage_level(d, (start - T0) / 1000),
            "{v}"
        );
        assert!(windows.insert((d, start)), "window twice: {v}");
    }

    // The backlog of alerts went out before the first aggregate.
    let after = Delivered::of(&sub.messages()[mark..], json);
    let first_aggregate = after
        .order
        .iter()
        .position(|id| id.contains("/aggregates/"));
    let last_alert = after.order.iter().rposition(|id| id.contains("/alerts/"));
    assert!(
        last_alert < first_aggregate,
        "an aggregate arrived before the alert backlog was through: {:?}",
        &after.order[..after.order.len().min(60)]
    );

    assert!(vigil.terminate().success());
    let st = stats(&setup);
    println!("after the outage: {st}; {} copies received", got.copies);
    assert_eq!(
        (num(&st, "outbox_alerts"), num(&st, "outbox_aggregates")),
        (0, 0),
        "{st}"
    );
    assert!(num(&st, "delivered_alerts_total") >= n_alerts, "{st}");
    assert!(
        num(&st, "delivered_aggregates_total") >= n_aggregates,
        "{st}"
    );
    drop(upstream);
}

// ---------------------------------------------------------------------------
// Short runs: one device, a few alerts, vigil connected (or trying to).

/// An alarm episode, a warning, and an alarm in the last window.
fn short_series() -> Vec<(i64, f64)> {
    (0..30)
        .map(|k| {
            let v = match k {
                10..=12 => 90.0,
                20 => 60.0,
                29 => 85.0,
                _ => 20.0 + k as f64 * 0.25,
            };
            (T0 + k * 1000, v)
        })
        .collect()
}

/// Publish `short_series` for `device` and wait until every window has closed.
fn run_short_series(local: &Broker, vigil: &VigilProcess, device: &str) {
    let msgs = short_series()
        .iter()
        .map(|&(t, v)| reading(device, t, v))
        .collect();
    publish_blocking(local.port, msgs);
    vigil.wait_for_log(&format!("{device}/{METRIC}/limit/mean/{}", T0 + 30_000), 1);
    wait_until_commits_settle(vigil);
}

// ---------------------------------------------------------------------------
// 3. Mutual TLS.

#[test]
fn mutual_tls_upstream() {
    let pki = Pki::new();
    let upstream = pki.broker(true);
    let sub = Subscriber::start(upstream.port, "test-sub-tls", "#");
    let local = Broker::start();
    let tls_port = upstream.tls_port.unwrap();
    let table = upstream_table(tls_port, "") + &pki.table("upstream.tls", "stranger");
    let setup = forward_setup(&local, 1 << 30, table);

    // (a) A client certificate the broker does not trust: a clear error,
    // and the alerts wait in the outbox.
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);
    vigil.wait_for_log("TLS with the upstream broker failed; check upstream.tls", 1);
    run_short_series(&local, &vigil, "fan-1");
    let log = vigil.log();
    assert!(vigil.terminate().success());
    assert!(
        !log.contains("connected to the upstream broker"),
        "log:\n{log}"
    );
    let expected = expected_alerts("fan-1", &short_series());
    let outbox = outbox_alerts(&setup);
    let st = stats(&setup);
    assert_eq!(outbox.values().cloned().collect::<BTreeSet<_>>(), expected);
    assert_eq!(num(&st, "outbox_alerts") as usize, expected.len(), "{st}");
    assert_eq!(num(&st, "delivered_alerts_total"), 0, "{st}");
    assert_eq!(num(&st, "delivered_aggregates_total"), 0, "{st}");
    assert!(sub.messages().is_empty(), "{:?}", sub.messages());

    // (b) The right certificate: everything arrives.
    let text = std::fs::read_to_string(&setup.config).unwrap();
    std::fs::write(&setup.config, text.replace("stranger.", "client.")).unwrap();
    let from = log_len(&setup);
    let vigil = VigilProcess::start(&setup);
    let got = wait_for_delivery(&sub, expected.len(), 30, json);
    let log = vigil.log()[from..].to_string();
    assert!(vigil.terminate().success());
    assert!(
        log.contains(&format!("127.0.0.1:{tls_port}")),
        "log:\n{log}"
    );
    assert_eq!(got.alert_events(), outbox);
    assert_eq!(retained(upstream.port, STATUS).as_deref(), Some("offline"));
    let st = stats(&setup);
    assert_eq!(
        (num(&st, "outbox_alerts"), num(&st, "outbox_aggregates")),
        (0, 0),
        "{st}"
    );
    assert_eq!(
        num(&st, "delivered_alerts_total") as usize,
        expected.len(),
        "{st}"
    );
}

// ---------------------------------------------------------------------------
// 4. The gateway's status.

#[test]
fn last_will_marks_the_gateway_offline() {
    let upstream = Broker::start();
    let local = Broker::start();
    let setup = forward_setup(&local, 1 << 30, upstream_table(upstream.port, ""));
    let status = || retained(upstream.port, STATUS);
    let client = format!("Client vigil-up-{}", upstream.port);

    let vigil = VigilProcess::start(&setup);
    wait_until("the status is online", || {
        status().as_deref() == Some("online")
    });
    // Killed: the broker sees the connection drop and publishes the will.
    vigil.kill();
    wait_until("the will says offline", || {
        status().as_deref() == Some("offline")
    });
    assert!(
        !upstream.log().contains(&format!("{client} disconnected.")),
        "a killed vigil cannot disconnect cleanly:\n{}",
        upstream.log()
    );

    let vigil = VigilProcess::start(&setup);
    wait_until("the status is online again", || {
        status().as_deref() == Some("online")
    });
    // Stopped: vigil says offline itself and disconnects cleanly (after
    // which the broker discards the will).
    assert!(vigil.terminate().success());
    assert_eq!(status().as_deref(), Some("offline"));
    wait_until("the broker logs a clean disconnect", || {
        upstream.log().contains(&format!("{client} disconnected."))
    });
}

// ---------------------------------------------------------------------------
// 5. CBOR and custom topics.

fn cbor(payload: &[u8]) -> Json {
    assert_eq!(payload[0] >> 5, 5, "not a CBOR map: {payload:?}");
    ciborium::de::from_reader(payload).expect("a CBOR payload")
}

#[test]
fn cbor_encoding_and_custom_topics() {
    let upstream = Broker::start();
    let sub = Subscriber::start(upstream.port, "test-sub-cbor", "#");
    let local = Broker::start();
    let extra = r#"encoding = "cbor"
topic_prefix = "acme/hall2"
alert_topic = "{prefix}/{device}/{metric}/alarms/{gateway}"
aggregate_topic = "stats/{gateway}/{device}/{metric}"
status_topic = "{prefix}/state/{gateway}""#;
    let setup = forward_setup(&local, 1 << 30, upstream_table(upstream.port, extra));
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);
    wait_until("vigil says online", || {
        retained(upstream.port, "acme/hall2/state/gw-test").as_deref() == Some("online")
    });
    run_short_series(&local, &vigil, "fan-1");
    let expected = expected_alerts("fan-1", &short_series());
    let got = wait_for_delivery(&sub, expected.len(), 30, cbor);
    assert!(vigil.terminate().success());

    let events: BTreeSet<_> = got.alert_events().into_values().collect();
    assert_eq!(events, expected);
    for (topic, v) in got.alerts.values() {
        assert_eq!(topic, "acme/hall2/fan-1/temp/alarms/gw-test");
        assert_eq!(
            (v["schema"].as_u64(), v["gateway"].as_str()),
            (Some(1), Some("gw-test"))
        );
        assert_eq!(
            (v["device"].as_str(), v["metric"].as_str()),
            (Some("fan-1"), Some(METRIC))
        );
        assert_eq!(
            (v["detector"].as_str(), v["feature"].as_str()),
            (Some("limit"), Some("mean"))
        );
        assert!(v["message"].as_str().is_some_and(|m| !m.is_empty()), "{v}");
    }
    // The first alarm, raised and cleared, in full.
    let raised = T0 + 11_000;
    let of = |event: &str| {
        got.alerts
            .values()
            .map(|(_, v)| v)
            .find(|v| v["event"] == event && v["raised_ms"] == raised)
            .unwrap_or_else(|| panic!("no {event} alert raised at {raised}"))
    };
    let (r, c) = (of("raised"), of("cleared"));
    assert_eq!(r["alert_id"], format!("fan-1/temp/limit/mean/{raised}"));
    assert_eq!(
        (r["severity"].as_str(), r["value"].as_f64()),
        (Some("alarm"), Some(90.0))
    );
    assert_eq!(
        (r["limit"].as_f64(), r["start_ms"].as_i64()),
        (Some(80.0), Some(raised - 1000))
    );
    assert!(r["cleared_ms"].is_null(), "{r}");
    assert_eq!(
        (c["alert_id"].clone(), c["cleared_ms"].as_i64()),
        (r["alert_id"].clone(), Some(T0 + 14_000))
    );
    for (topic, v) in got.aggregates.values() {
        assert_eq!(topic, "stats/gw-test/fan-1/temp");
        let k = (v["start_ms"].as_i64().unwrap() - T0) / 1000;
        assert_eq!(
            v["features"]["mean"].as_f64(),
            Some(short_series()[k as usize].1),
            "{v}"
        );
        assert_eq!(
            (v["windows"].as_u64(), v["features"]["count"].as_f64()),
            (Some(1), Some(1.0))
        );
    }
    assert_eq!(got.aggregates.len(), 30);
    assert!(sub
        .messages()
        .iter()
        .all(|m| !m.topic.starts_with("vigil/")));
}
