//! Crash test: 20,000 QoS 1 readings, each with a unique sequence number, are
//! published while `vigil run` is killed with SIGKILL at random moments and
//! restarted. Every acknowledged reading must be in the store afterwards.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use crate::support::{
    publish_blocking, rand_u64, Broker, Msg, Options, Setup, VigilProcess, PATIENCE,
};

const N: u64 = 20_000;
const KILLS: usize = 4;

fn stored_values(setup: &Setup) -> HashMap<u64, u32> {
    let mut seen = HashMap::new();
    for line in setup.inspect("readings", 10 * N as usize) {
        let v = line["value"].as_f64().expect("scalar reading");
        *seen.entry(v as u64).or_insert(0) += 1;
    }
    seen
}

#[test]
fn no_acknowledged_reading_is_lost_across_sigkills() {
    let broker = Broker::start();
    let setup = Setup::new(&Options::new(broker.port));

    // First start creates the persistent session and its subscription.
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);

    let port = broker.port;
    let publisher = std::thread::spawn(move || {
        let msgs = (0..N)
            .map(|i| {
                Msg::new(
                    &format!("plant/l{}/pump-{}/seq", i % 2, i % 7),
                    format!("{{\"value\": {i}}}"),
                )
            })
            .collect();
        publish_blocking(port, msgs);
    });

    let seed = rand_u64();
    println!("kill schedule seed {seed}");
    let mut rng = seed | 1;
    let mut vigil = Some(vigil);
    for k in 0..KILLS {
        rng ^= rng << 13;
        rng ^= rng >> 7;
        rng ^= rng << 17;
        std::thread::sleep(Duration::from_millis(100 + rng % 700));
        vigil.take().unwrap().kill();
        println!("kill {k} done");
        vigil = Some(VigilProcess::start(&setup));
    }
    publisher.join().expect("publisher failed");
    let vigil = vigil.take().unwrap();

    // Catch up: let vigil drain what the broker queued, until commits stop, then stop it.
    let deadline = Instant::now() + PATIENCE;
    let mut last = (
        vigil.log().matches("batch committed").count(),
        Instant::now(),
    );
    while last.1.elapsed() < Duration::from_millis(1500) {
        assert!(Instant::now() < deadline, "vigil never caught up");
        std::thread::sleep(Duration::from_millis(100));
        let n = vigil.log().matches("batch committed").count();
        if n != last.0 {
            last = (n, Instant::now());
        }
    }
    let status = vigil.terminate();
    assert!(status.success(), "vigil exited with {status}");

    let seen = stored_values(&setup);
    let missing: Vec<u64> = (0..N).filter(|i| !seen.contains_key(i)).collect();
    let duplicates: u32 = seen.values().map(|c| c - 1).sum();
    println!(
        "stored {} distinct readings, {duplicates} duplicates (redelivered after a kill)",
        seen.len()
    );
    assert!(
        missing.is_empty(),
        "{} readings lost, first: {:?}",
        missing.len(),
        &missing[..missing.len().min(10)]
    );
    assert!(
        seen.keys().all(|v| *v < N),
        "a reading that was never published was stored"
    );
    let stats = &setup.inspect("stats", 1)[0];
    assert_eq!(
        stats["readings"].as_u64().unwrap(),
        N + u64::from(duplicates)
    );
}
