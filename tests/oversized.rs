//! A publish far over `broker.max_payload_bytes`, QoS 1, through a real
//! Mosquitto: vigil refuses the packet without reading it into memory, takes
//! it off its persistent session (so that the broker does not send it again
//! on every reconnect), keeps it as a `too_large` dead letter, and goes on
//! storing the readings behind it.

use std::collections::BTreeSet;

use crate::support::{
    peak_rss_kib, publish_blocking, scrape, series, wait_until, Broker, Msg, Options, Setup,
    VigilProcess,
};

const TOPIC: &str = "plant/l1/pump-1/temperature";
/// Far over the limit below, and over what vigil needs in memory.
const BIG: usize = 128 << 20;
const LIMIT: u64 = 64 << 10;

/// Occurrences of `needle` in vigil's log so far (it spans every start).
fn vigil_log_count(setup: &Setup, needle: &str) -> usize {
    std::fs::read_to_string(setup.log_path())
        .unwrap_or_default()
        .matches(needle)
        .count()
}

fn values(setup: &Setup) -> BTreeSet<String> {
    setup
        .inspect("readings", 100)
        .iter()
        .map(|r| r["value"].to_string())
        .collect()
}

#[test]
fn a_payload_far_over_the_limit_is_refused_unread_and_taken_off_the_session() {
    let broker = Broker::start();
    let mut o = Options::new(broker.port);
    o.max_payload_bytes = LIMIT;
    let setup = Setup::new(&o);
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);
    let addr = vigil.http_addr();

    publish_blocking(
        broker.port,
        vec![
            Msg::new(TOPIC, "1"),
            Msg::new(TOPIC, vec![b'7'; BIG]),
            Msg::new(TOPIC, "2"),
            Msg::new(TOPIC, "3"),
        ],
    );
    wait_until("the readings behind it are stored", || {
        let s = scrape(addr);
        series(&s, "vigil_messages_rejected_total{reason=\"too_large\"}") == 1.0
            && series(&s, "vigil_readings_stored_total") >= 3.0
            && series(&s, "vigil_broker_connected{broker=\"local\"}") == 1.0
    });
    // Never held whole in memory.
    let peak = 1024 * peak_rss_kib(vigil.pid()) as usize;
    assert!(peak < BIG, "peak RSS {peak} bytes for a {BIG}-byte payload");
    let s = scrape(addr);
    assert_eq!(series(&s, "vigil_mqtt_packets_too_large_total"), 1.0);
    let log = vigil.log();
    let limit = format!("limit_bytes={}", LIMIT as usize + 2 + 65_535 + 2);
    assert!(
        log.contains("refused a packet over the limit") && log.contains(&limit),
        "{log}"
    );
    assert!(vigil.terminate().success());

    // The readings around it (a redelivered one may be stored twice).
    let want: BTreeSet<String> = ["1.0", "2.0", "3.0"].map(String::from).into();
    assert_eq!(values(&setup), want);
    let dead = setup.inspect("dead-letters", 10);
    assert_eq!(dead.len(), 1, "{dead:?}");
    assert_eq!(dead[0]["reason"], "too_large");
    assert_eq!(dead[0]["topic"], TOPIC);
    assert_eq!(dead[0]["payload_len"], BIG);
    assert_eq!(dead[0]["payload"].as_str().unwrap().len(), 64 << 10);

    // The broker no longer holds it: a new start is not refused again.
    let subscribed = vigil_log_count(&setup, "subscribed");
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", subscribed + 1);
    publish_blocking(broker.port, vec![Msg::new(TOPIC, "4")]);
    let addr = vigil.http_addr();
    wait_until("the next reading is received", || {
        series(&scrape(addr), "vigil_mqtt_messages_received_total") >= 1.0
    });
    assert_eq!(
        series(&scrape(addr), "vigil_mqtt_packets_too_large_total"),
        0.0
    );
    // SIGTERM commits the batch in hand.
    assert!(vigil.terminate().success());
    assert!(values(&setup).contains("4.0"));
}
