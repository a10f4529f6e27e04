//! vigil's `/metrics` as the benchmark reads it: one scrape over plain
//! HTTP, parsed into series → value, with the few sums the measurements use.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

/// One scrape: `name` or `name{label="value"}`, exactly as vigil prints it,
/// → value.
pub struct Metrics(HashMap<String, f64>);

impl Metrics {
    pub fn parse(text: &str) -> Metrics {
        Metrics(
            text.lines()
                .filter(|l| !l.starts_with('#'))
                .filter_map(|l| {
                    let (series, value) = l.rsplit_once(' ')?;
                    Some((series.to_string(), value.parse().ok()?))
                })
                .collect(),
        )
    }

    /// The series' value; NaN when vigil does not report it.
    pub fn get(&self, series: &str) -> f64 {
        self.0.get(series).copied().unwrap_or(f64::NAN)
    }

    fn count(&self, series: &str) -> u64 {
        self.get(series) as u64
    }

    pub fn stored(&self) -> u64 {
        self.count("vigil_readings_stored_total")
    }

    /// Readings stored but not yet through detection.
    pub fn lag(&self) -> u64 {
        self.count("vigil_detection_lag_readings")
    }

    /// Outbox entries, both lanes.
    pub fn outbox(&self) -> u64 {
        self.count(r#"vigil_outbox_entries{lane="alerts"}"#)
            + self.count(r#"vigil_outbox_entries{lane="aggregates"}"#)
    }

    /// Entries acknowledged upstream: alerts, aggregates.
    pub fn delivered(&self) -> [u64; 2] {
        [
            self.count(r#"vigil_delivered_total{lane="alerts"}"#),
            self.count(r#"vigil_delivered_total{lane="aggregates"}"#),
        ]
    }

    /// Alert events detection produced since start (raised and cleared,
    /// both severities).
    pub fn alert_events(&self) -> u64 {
        ["raised", "cleared"]
            .iter()
            .flat_map(|t| {
                ["warning", "alarm"]
                    .map(|s| self.count(&format!("vigil_alerts_{t}_total{{severity=\"{s}\"}}")))
            })
            .sum()
    }

    pub fn upstream_connected(&self) -> bool {
        self.get(r#"vigil_broker_connected{broker="upstream"}"#) == 1.0
    }

    /// Every one of `readings` stored, through detection, and forwarded.
    pub fn settled(&self, readings: u64) -> bool {
        self.stored() >= readings && self.lag() == 0 && self.outbox() == 0
    }

    /// What was given way or refused (should all be 0 here): rejected
    /// messages, late readings, readings skipped, aggregates or alerts dropped.
    pub fn losses(&self) -> u64 {
        let rejected: f64 = self
            .0
            .iter()
            .filter(|(k, _)| k.starts_with("vigil_messages_rejected_total"))
            .map(|(_, v)| v)
            .sum();
        rejected as u64
            + [
                "vigil_readings_late_total",
                "vigil_readings_skipped_total",
                "vigil_aggregates_dropped_total",
                "vigil_alerts_dropped_total",
            ]
            .iter()
            .map(|s| self.count(s))
            .sum::<u64>()
    }
}

/// GET /metrics from vigil's endpoint on `port` (HTTP/1.0, so the answer is
/// not chunked and ends with the connection).
pub fn scrape(port: u16) -> std::io::Result<Metrics> {
    let mut conn = TcpStream::connect(("127.0.0.1", port))?;
    conn.set_read_timeout(Some(Duration::from_secs(10)))?;
    conn.write_all(b"GET /metrics HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut answer = String::new();
    conn.read_to_string(&mut answer)?;
    let (head, body) = answer.split_once("\r\n\r\n").unwrap_or(("", ""));
    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") {
        return Err(std::io::Error::other(format!(
            "/metrics answered {:?}",
            head.lines().next().unwrap_or("nothing")
        )));
    }
    Ok(Metrics::parse(body))
}
