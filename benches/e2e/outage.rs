//! Measurement 4, an uplink outage: the upstream broker stops while
//! readings keep coming, the outbox grows; once it is back, how fast vigil
//! empties the outbox, and whether everything arrived.

use std::path::Path;
use std::sync::atomic::AtomicU64;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::agent::{Agent, Detection};
use crate::brokers::{Broker, Subscriber};
use crate::common::{grouped, Report};
use crate::counts::{until_received, Counts};
use crate::helpers::secs;
use crate::publisher::{spawn_publisher, Load};
use crate::{scratch_dir, Tools, PATIENCE};

const DEVICES: u64 = 100;
const RATE_PER_S: f64 = 4_000.0;
/// Load before the outage starts.
const WARMUP: Duration = Duration::from_secs(3);

/// The upstream broker keeps its sessions across the restart, so the
/// subscriber's session (and what is queued for it) survives it, as on a
/// plant's or a cloud's broker. Started as root, Mosquitto would switch to
/// the `mosquitto` user, who cannot write in the scratch directory; `user
/// root` keeps it as it is (and means nothing to a broker not run as root).
const PERSISTENT: &str = "persistence true\npersistence_location {dir}/\nuser root\n";

pub fn outage(tools: &Tools, scratch: &Path, rep: &mut Report) {
    let backlog = rep.scale(40_000);
    // Long enough to fill the outbox, then to drain it while readings flow.
    let seconds = secs(WARMUP) + 1.3 * backlog as f64 / RATE_PER_S + 10.0;
    eprintln!("[bench] outage: {RATE_PER_S} readings/s, a backlog of {backlog}");
    let dir = scratch_dir(scratch, "outage");
    let local = Broker::start(&tools.mosquitto, dir.path());
    let mut upstream = Broker::start_with(&tools.mosquitto, dir.path(), PERSISTENT);
    let sub = Subscriber::start_with(upstream.port, true);
    let agent = Agent::start(dir.path(), local.port, upstream.port, Detection::OneReading);
    let load = Load {
        rate_per_s: RATE_PER_S,
        devices: DEVICES,
        metrics: &["temperature"],
        spikes: false,
        seconds,
    };
    let publisher = spawn_publisher(local.port, load, Arc::new(AtomicU64::new(0)));
    std::thread::sleep(WARMUP);
    upstream.stop();
    let stopped = Instant::now();
    let grown = agent.wait_for("the outbox has grown", PATIENCE, |m| m.outbox() >= backlog);
    upstream.restart();
    let restarted = Instant::now();
    let outage = restarted - stopped;

    // The last scrape before vigil is back: nothing is delivered while it
    // is cut off, so its delivered count is the one at the reconnect.
    let (mut delivered_before, mut waiting) = grown
        .as_ref()
        .map_or((0, 0), |(_, m)| (m.delivered().iter().sum(), m.outbox()));
    let mut reconnected = None;
    let cpu_before = agent.usage().cpu;
    let cpu_since = Instant::now();
    let drained = agent.wait_for("the outbox is empty again", PATIENCE, |m| {
        if reconnected.is_none() {
            if m.upstream_connected() {
                reconnected = Some(Instant::now());
            } else {
                delivered_before = m.delivered().iter().sum();
                waiting = m.outbox();
            }
        }
        reconnected.is_some() && m.outbox() == 0
    });
    let cpu = agent.usage().cpu - cpu_before;
    let published = publisher.join().expect("the publisher thread");
    let settled = agent.wait_for(
        "every reading is through and forwarded",
        Duration::from_secs(60),
        |m| m.settled(published.readings),
    );
    let m = agent.metrics();
    until_received(&sub, m.delivered().iter().sum());
    let counts = Counts::new(published.acked, &m, &sub.finish());
    let reconnects = m.get(r#"vigil_broker_reconnects_total{broker="upstream"}"#);
    let clean = agent.stop();

    let setup = format!(
        "{} readings/s from {DEVICES} devices, one window per reading (an aggregate each); the upstream Mosquitto stopped (SIGTERM) until the outbox held ≥ {} entries, then started again; readings keep coming",
        grouped(RATE_PER_S),
        grouped(backlog as f64),
    );
    let (Some((reconnected, drained)), Some(_)) = (
        reconnected.zip(drained.map(|(at, m)| (at, m.delivered().iter().sum::<u64>()))),
        settled,
    ) else {
        rep.row(
            "4. backlog drain after an outage",
            setup,
            format!(
                "**did not drain** within {} s: {}",
                PATIENCE.as_secs(),
                counts.describe()
            ),
            "",
            None,
        );
        return;
    };
    let (empty_at, delivered_after) = drained;
    let took = empty_at - reconnected;
    let sent = delivered_after - delivered_before;
    rep.row(
        "4. backlog drain after an outage",
        setup,
        format!(
            "**{} messages/s** from vigil's reconnect until the outbox was empty ({} delivered in {:.2} s; {} were waiting at the reconnect, the rest came in meanwhile); {}",
            grouped(sent as f64 / secs(took)),
            grouped(sent as f64),
            secs(took),
            grouped(waiting as f64),
            counts.verdict(),
        ),
        "",
        None,
    );
    rep.detail(format!(
        "outage: upstream down for {:.1} s; vigil reconnected {:.2} s after the broker was back ({} upstream reconnect(s) in all; outbox and /metrics scraped every 10 ms); vigil used {:.1} CPU s from the restart until the outbox was empty ({:.0} % of one core, ingest and detection of the ongoing load included); exited {} on SIGTERM",
        secs(outage),
        secs(reconnected - restarted),
        reconnects,
        cpu,
        100.0 * cpu / secs(empty_at - cpu_since),
        if clean { "cleanly" } else { "**not cleanly**" },
    ));
    rep.detail(format!(
        "outage: the publisher sent {} readings in {:.2} s (at most {:.1} ms behind its schedule); {}",
        grouped(published.readings as f64),
        secs(published.took),
        secs(published.behind) * 1e3,
        counts.describe(),
    ));
}
