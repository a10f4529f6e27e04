//! The cross-check every measurement ends with: readings published against
//! stored, outbox entries produced against delivered (vigil's counters)
//! against what the upstream subscriber got, and nothing refused or
//! dropped on the way.

use std::time::{Duration, Instant};

use rumqttc::Publish;

use crate::brokers::{tally, Subscriber};
use crate::common::grouped;
use crate::prom::Metrics;

pub struct Counts {
    published: u64,
    stored: u64,
    windows: u64,
    aggregates: u64,
    alerts: u64,
    delivered: u64,
    received: u64,
    distinct: u64,
    duplicates: u64,
    losses: u64,
}

impl Counts {
    /// `published`: readings the broker acknowledged to the sensors; `m`:
    /// vigil's metrics once everything is through; `got`: the upstream
    /// subscriber's messages.
    pub fn new(published: u64, m: &Metrics, got: &[(f64, Publish)]) -> Counts {
        let (received, distinct, duplicates) = tally(got);
        let [alerts_delivered, aggregates_delivered] = m.delivered();
        Counts {
            published,
            stored: m.stored(),
            windows: m.get("vigil_windows_total") as u64,
            aggregates: m.get("vigil_aggregates_total") as u64,
            alerts: m.alert_events(),
            delivered: alerts_delivered + aggregates_delivered,
            received,
            distinct,
            duplicates,
            losses: m.losses(),
        }
    }

    /// Every reading stored, every entry produced delivered and received,
    /// nothing refused or dropped.
    pub fn ok(&self) -> bool {
        self.published == self.stored
            && self.aggregates + self.alerts == self.delivered
            && self.distinct == self.delivered
            && self.losses == 0
    }

    pub fn stored(&self) -> u64 {
        self.stored
    }

    /// For the row: "nothing lost (...)" or what did not add up.
    pub fn verdict(&self) -> String {
        if self.ok() {
            format!("nothing lost ({})", self.summary())
        } else {
            format!("**counts do not add up**: {}", self.describe())
        }
    }

    /// "300,000 stored, 30,010 delivered and received[, 3 duplicates]".
    pub fn summary(&self) -> String {
        format!(
            "{} stored, {} delivered and received{}",
            grouped(self.stored as f64),
            grouped(self.delivered as f64),
            if self.duplicates > 0 {
                format!(", {} duplicates", grouped(self.duplicates as f64))
            } else {
                String::new()
            }
        )
    }

    pub fn describe(&self) -> String {
        format!(
            "{} readings published (acknowledged by the broker), {} stored; {} windows, {} aggregates + {} alert events produced, {} delivered upstream (vigil_delivered_total); the upstream subscriber got {} ({} distinct, {} duplicates); refused, late, skipped or dropped: {}",
            grouped(self.published as f64),
            grouped(self.stored as f64),
            grouped(self.windows as f64),
            grouped(self.aggregates as f64),
            grouped(self.alerts as f64),
            grouped(self.delivered as f64),
            grouped(self.received as f64),
            grouped(self.distinct as f64),
            grouped(self.duplicates as f64),
            self.losses,
        )
    }
}

/// Wait (at most 10 s) until the subscriber has `n` messages, and a little
/// longer for copies still on their way.
pub fn until_received(sub: &Subscriber, n: u64) {
    let start = Instant::now();
    while sub.received() < n && start.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(10));
    }
    std::thread::sleep(Duration::from_millis(300));
}
