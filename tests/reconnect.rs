//! The local broker goes away and comes back: vigil reconnects on its own,
//! subscribes again (the new broker has no session for it), logs the outage
//! once rather than once per attempt, and stores what is published afterwards.

use crate::support::{publish_blocking, Broker, Msg, Options, Setup, VigilProcess};

#[test]
fn reconnects_after_the_broker_restarts_and_logs_the_outage_once() {
    let broker = Broker::start();
    let port = broker.port;
    let setup = Setup::new(&Options::new(port));
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);
    publish_blocking(port, vec![Msg::new("plant/l1/pump-1/temperature", "1")]);
    vigil.wait_for_log("batch committed", 1);

    drop(broker);
    // Several reconnect attempts fail (backoff 50..500 ms) while it is down.
    vigil.wait_for_log("local broker unreachable", 1);
    std::thread::sleep(std::time::Duration::from_millis(1500));
    let broker = Broker::start_on(port, None);
    vigil.wait_for_log("subscribed", 2);
    publish_blocking(
        broker.port,
        vec![Msg::new("plant/l1/pump-1/temperature", "2")],
    );
    vigil.wait_for_log("batch committed", 2);

    let log = vigil.log();
    assert_eq!(
        log.matches("local broker unreachable").count(),
        1,
        "the outage was logged more than once:\n{log}"
    );
    assert_eq!(
        log.matches("connected to the local broker").count(),
        2,
        "{log}"
    );
    assert!(vigil.terminate().success());
    let values: Vec<f64> = setup
        .inspect("readings", 10)
        .iter()
        .map(|r| r["value"].as_f64().unwrap())
        .collect();
    assert_eq!(values, vec![1.0, 2.0]);
}
