//! Names from the network are untrusted: 100,000 distinct device names do
//! not make detection grow without bound. Streams beyond `max_streams` are
//! stored but not detected, and counted; memory stays under a stated bound,
//! also after a restart that loads the streams back.

use crate::support::{
    peak_rss_kib, publish_blocking, scrape, series, wait_until, Broker, Msg, Options, Setup,
    VigilProcess,
};

const NAMES: usize = 100_000;
/// `detect.max_streams` as shipped.
const MAX_STREAMS: usize = 10_000;
/// Peak RSS of `vigil run` (a debug build) through all of it: 10,000
/// streams of one reading each, their checkpoints, sled's cache, the
/// runtime. Before the cap, every name stayed in memory (1.19 GB for the
/// same 100,000 names).
const PEAK_RSS_BOUND_KIB: u64 = 200 * 1024;

#[test]
fn distinct_names_beyond_max_streams_are_stored_counted_and_not_kept() {
    let broker = Broker::start();
    let setup = Setup::new(&Options::new(broker.port));
    let vigil = VigilProcess::start(&setup);
    vigil.wait_for_log("subscribed", 1);
    let addr = vigil.http_addr();

    let msgs = (0..NAMES)
        .map(|i| Msg::new(&format!("plant/l1/spoof-{i}/temperature"), "21.5"))
        .collect();
    publish_blocking(broker.port, msgs);
    wait_until("every reading stored and through detection", || {
        let m = scrape(addr);
        series(&m, "vigil_readings_stored_total") == NAMES as f64
            && series(&m, "vigil_detection_lag_readings") == 0.0
    });
    let m = scrape(addr);
    assert_eq!(series(&m, "vigil_streams"), MAX_STREAMS as f64);
    assert_eq!(
        series(&m, "vigil_streams_refused_total"),
        (NAMES - MAX_STREAMS) as f64,
        "every reading of a stream over the cap is counted"
    );
    assert!(series(&m, "vigil_store_used_bytes{part=\"checkpoints\"}") > 0.0);
    assert!(vigil.log().contains("more streams than detection keeps"));
    let peak = peak_rss_kib(vigil.pid());
    let status = vigil.terminate();
    assert!(status.success(), "vigil exited with {status}");
    assert!(
        peak < PEAK_RSS_BOUND_KIB,
        "peak RSS {} MiB with {NAMES} names (bound {} MiB)",
        peak / 1024,
        PEAK_RSS_BOUND_KIB / 1024
    );

    // A restart loads the streams it kept, and no more.
    let vigil = VigilProcess::start(&setup);
    // The log spans both starts: the second endpoint line is this one's.
    vigil.wait_for_log("health and metrics endpoint listening", 2);
    let addr = vigil.http_addr();
    vigil.wait_for_log("detection resumes from its checkpoint", 2);
    assert_eq!(series(&scrape(addr), "vigil_streams"), MAX_STREAMS as f64);
    let peak = peak_rss_kib(vigil.pid());
    vigil.terminate();
    assert!(
        peak < PEAK_RSS_BOUND_KIB,
        "peak RSS {} MiB after a restart (bound {} MiB)",
        peak / 1024,
        PEAK_RSS_BOUND_KIB / 1024
    );
}
