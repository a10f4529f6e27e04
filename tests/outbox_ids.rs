//! Message ids outlive a crash: an outbox entry is on disk before vigil
//! publishes it upstream, so a kill right after a publish cannot hand its id
//! to other content, nor send the same alert again under a new id.
//!
//! What makes it matter is processing time. A window closed because its
//! sensor went quiet (or a silence alert) is made by the clock, not by a
//! reading, so no group commit of readings follows it to the disk, and a
//! restarted vigil does not make the same outputs in the same order. A test
//! cannot cut the power: SIGKILL stands in for it. That loses the same
//! thing here, since sled keeps writes it has not flushed in its own
//! buffers until the next flush or the next transaction; the PUBACK is held
//! back (by a relay in front of the upstream broker) so that the
//! forwarder's own delete, a transaction, does not come first.

use std::collections::BTreeMap;

use crate::forward::{json, reading, upstream_table, Delivered, METRIC};
use crate::support::relay::Relay;
use crate::support::{
    publish_blocking, scrape, series, wait_until, Broker, Options, Setup, Subscriber, VigilProcess,
};

/// Event time of the first reading, on a window boundary.
const T0: i64 = 1_790_000_001_000;
const WINDOW_MS: i64 = 3000;

/// Three-second windows closed by the next reading, or on the clock when
/// none comes; alerts on the first window above the limit, cleared by the
/// first one back under it. The windows are long enough that after a restart
/// none can close on the clock before the readings waiting at the broker
/// have been detected.
const DEVICE: &str = r#"match = "*"

[alerts]
raise_after = 1
clear_after = 1
hold_off = "0s"

[metrics."*"]
window = "3s"
allowed_lateness = "0s"

[metrics."*".limits.mean]
warning_above = 50.0
alarm_above = 80.0

[metrics."*".baseline]
enabled = false
"#;

/// (alert id, event) of the alert raised by the window of `device` at `start`.
fn event(device: &str, start: i64, event: &str) -> (String, String) {
    let id = format!("{device}/{METRIC}/limit/mean/{}", start + WINDOW_MS);
    (id, event.to_string())
}

/// Each (alert id, event) and each aggregate window under one message id
/// only; `Delivered::of` has checked that an id never names two contents.
fn assert_one_id_each(got: &Delivered) {
    let mut alerts: BTreeMap<(String, String), String> = BTreeMap::new();
    for (id, e) in got.alert_events() {
        if let Some(other) = alerts.insert(e.clone(), id.clone()) {
            panic!("the alert {e:?} arrived as {other} and again as {id}");
        }
    }
    let mut windows: BTreeMap<(String, i64), String> = BTreeMap::new();
    for (id, (_, v)) in &got.aggregates {
        let w = (
            v["device"].as_str().unwrap().to_string(),
            v["start_ms"].as_i64().unwrap(),
        );
        if let Some(other) = windows.insert(w.clone(), id.clone()) {
            panic!("the window {w:?} arrived as {other} and again as {id}");
        }
    }
}

fn has_event(sub: &Subscriber, e: &(String, String)) -> bool {
    Delivered::of(&sub.messages(), json)
        .alert_events()
        .values()
        .any(|got| got == e)
}

#[test]
fn an_id_published_before_a_kill_is_never_given_to_other_content() {
    let upstream = Broker::start();
    let relay = Relay::start(upstream.port);
    let sub = Subscriber::start(upstream.port, "test-sub-ids", "vigil/#");
    let local = Broker::start();
    let mut o = Options::new(local.port);
    o.default_device = DEVICE.into();
    o.extra_tables = upstream_table(relay.port, "");
    let setup = Setup::new(&o);

    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);
    wait_until("vigil says online upstream", || {
        sub.messages().iter().any(|m| m.payload == b"online")
    });
    relay.hold();
    // One alarm reading, then nothing: its window closes on the clock,
    // after the reading's own group commit, and goes out at once.
    publish_blocking(local.port, vec![reading("dev-a", T0, 90.0)]);
    let raised_a = event("dev-a", T0, "raised");
    wait_until("dev-a's alert and window arrive upstream", || {
        has_event(&sub, &raised_a) && Delivered::of(&sub.messages(), json).aggregates.len() == 1
    });
    vigil.kill();
    relay.release();

    // While vigil is down another device's alarm waits in its session; after
    // the restart it is detected well before any window can close on the clock.
    publish_blocking(
        local.port,
        vec![
            reading("dev-b", T0, 95.0),
            reading("dev-b", T0 + WINDOW_MS, 20.0),
        ],
    );
    let vigil = VigilProcess::start(&setup);
    // The log holds both starts; the endpoint is the second one's.
    vigil.wait_for_log("health and metrics endpoint listening", 2);
    let addr = vigil.http_addr();
    // dev-b's second window closes on the clock, and whatever the restart
    // redoes of dev-a closes on the same tick or before.
    let cleared_b = event("dev-b", T0, "cleared");
    wait_until("dev-b's alert is cleared upstream", || {
        has_event(&sub, &cleared_b)
    });
    wait_until("the outbox is empty", || {
        let m = scrape(addr);
        ["alerts", "aggregates"]
            .iter()
            .all(|lane| series(&m, &format!("vigil_outbox_entries{{lane=\"{lane}\"}}")) == 0.0)
    });
    assert!(vigil.terminate().success());

    let got = Delivered::of(&sub.messages(), json);
    assert_one_id_each(&got);
    let mut events: Vec<_> = got.alert_events().into_values().collect();
    events.sort();
    let mut expected = vec![raised_a, event("dev-b", T0, "raised"), cleared_b];
    expected.sort();
    assert_eq!(events, expected, "{:?}", got.order);
    assert_eq!(got.aggregates.len(), 3, "{:?}", got.order);
}
