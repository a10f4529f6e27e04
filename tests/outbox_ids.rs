//! Message ids outlive a crash: an outbox entry is on disk before vigil
//! publishes it upstream, so a kill right after a publish cannot hand its id
//! to other content, nor send the same alert again under a new id.
//!
//! What makes it matter is processing time. A window closed because its
//! sensor went quiet (or a silence alert) is made by the clock, not by a
//! reading, so no group commit of readings follows it to the disk; and a
//! restarted vigil does not make the same outputs in the same order. A test
//! cannot cut the power: SIGKILL stands in for it, which loses the same
//! thing here (sled holds writes that were not flushed in its own buffers).

use std::collections::BTreeMap;

use crate::forward::{forward_setup, json, reading, upstream_table, Delivered, METRIC, T0};
use crate::support::{
    publish_blocking, scrape, series, wait_until, Broker, Subscriber, VigilProcess,
};

/// (alert id, event) of the alert the window of `device` at `start` raised or cleared.
fn event(device: &str, start: i64, event: &str) -> (String, String) {
    let id = format!("{device}/{METRIC}/limit/mean/{}", start + 1000);
    (id, event.to_string())
}

/// Each (alert id, event) and each aggregate window under one message id
/// only; `Delivered::of` has checked that one id never carries two contents.
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

#[test]
fn an_id_published_before_a_kill_is_never_given_to_other_content() {
    let upstream = Broker::start();
    let sub = Subscriber::start(upstream.port, "test-sub-ids", "vigil/#");
    let local = Broker::start();
    let setup = forward_setup(&local, 1 << 30, upstream_table(upstream.port, ""));

    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);
    // One alarm reading, then nothing: its window closes on processing time
    // (about a second later), after the reading's own group commit.
    publish_blocking(local.port, vec![reading("dev-a", T0, 90.0)]);
    let raised_a = event("dev-a", T0, "raised");
    wait_until("dev-a's alert arrives upstream", || {
        let got = Delivered::of(&sub.messages(), json);
        got.alert_events().values().any(|e| *e == raised_a) && got.aggregates.len() == 1
    });
    vigil.kill();

    // While vigil is down another device's alarm waits in its session; after
    // the restart it is detected before any window can close on the clock.
    publish_blocking(
        local.port,
        vec![
            reading("dev-b", T0, 95.0),
            reading("dev-b", T0 + 1000, 20.0),
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
        Delivered::of(&sub.messages(), json)
            .alert_events()
            .values()
            .any(|e| *e == cleared_b)
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
