//! The demo's live view: a status line redrawn every second (on a
//! terminal; a plain line every few seconds otherwise) with events printed
//! above it. The numbers come from vigil's own `/metrics`, as an operator's
//! monitoring would read them.

use std::collections::VecDeque;
use std::io::Write;
use std::time::{Duration, Instant};

use crate::ops::status::{count, Samples};

use super::upstream::AlertMessage;

/// The readings rate is averaged over this long.
const RATE_SPAN: Duration = Duration::from_secs(3);
/// How often a plain (non-terminal) output repeats the status line.
const PLAIN_EVERY: Duration = Duration::from_secs(5);

pub struct View {
    tty: bool,
    started: Instant,
    /// Recent (time, readings stored): the rate is taken over a few seconds.
    history: VecDeque<(Instant, f64)>,
    last_plain: Option<Instant>,
    /// The status line is on screen (to be cleared before an event line).
    drawn: bool,
}

/// One reading of the metrics, as the status line shows it.
#[derive(Debug, Clone, Copy, Default)]
pub struct Gauges {
    pub stored: f64,
    pub buffered: f64,
    pub outbox: f64,
    pub uplink_up: bool,
    pub raised: f64,
    pub cleared: f64,
    pub dead_letters: f64,
    pub delivered: f64,
    pub lag: f64,
}

impl Gauges {
    pub fn read(s: &Samples) -> Gauges {
        let n = |name: &str, labels: &[(&str, &str)]| s.get(name, labels).unwrap_or(0.0);
        let sum = |name: &str, label: &str, values: &[&str]| -> f64 {
            values.iter().map(|v| n(name, &[(label, v)])).sum()
        };
        Gauges {
            stored: n("vigil_readings_stored_total", &[]),
            buffered: n("vigil_readings_buffered", &[]),
            outbox: sum("vigil_outbox_entries", "lane", &["alerts", "aggregates"]),
            uplink_up: n("vigil_broker_connected", &[("broker", "upstream")]) == 1.0,
            raised: sum(
                "vigil_alerts_raised_total",
                "severity",
                &["warning", "alarm"],
            ),
            cleared: sum(
                "vigil_alerts_cleared_total",
                "severity",
                &["warning", "alarm"],
            ),
            dead_letters: n("vigil_dead_letters", &[]),
            delivered: sum("vigil_delivered_total", "lane", &["alerts", "aggregates"]),
            lag: n("vigil_detection_lag_readings", &[]),
        }
    }
}

impl View {
    pub fn new(tty: bool) -> View {
        View {
            tty,
            started: Instant::now(),
            history: VecDeque::new(),
            last_plain: None,
            drawn: false,
        }
    }

    pub fn started(&self) -> Instant {
        self.started
    }

    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    /// Seconds since the start, as the event lines show it.
    pub fn stamp(&self, at: Instant) -> String {
        format!(
            "+{:>3.0}s",
            at.saturating_duration_since(self.started).as_secs_f64()
        )
    }

    fn paint(&self, code: &str, text: &str) -> String {
        if self.tty {
            format!("\x1b[{code}m{text}\x1b[0m")
        } else {
            text.to_string()
        }
    }

    /// Print one event line (above the status line, on a terminal).
    pub fn event(&mut self, line: &str) {
        let mut out = std::io::stdout().lock();
        if self.drawn {
            let _ = write!(out, "\r\x1b[2K");
            self.drawn = false;
        }
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }

    /// An alert message that arrived upstream, with its explanation; `held`
    /// says how long it waited in the outbox for the link, when it did.
    pub fn alert(&mut self, a: &AlertMessage, held: Option<Duration>) {
        let (code, mark) = match (a.event.as_str(), a.severity.as_str()) {
            ("cleared", _) => ("32", "✔ cleared  "),
            (_, "alarm") => ("1;31", "▲ ALARM    "),
            _ => ("33", "▲ warning  "),
        };
        let mark = match a.event.as_str() {
            "escalated" => self.paint(code, "▲ ALARM ↑  "),
            "reopened" => self.paint(code, "▲ reopened "),
            _ => self.paint(code, mark),
        };
        let mut line = format!(
            "{}  {mark}{} {}  {}/{}: {}",
            self.stamp(a.arrived),
            a.device,
            a.metric,
            a.detector,
            a.feature,
            a.message
        );
        if let Some(held) = held {
            line.push_str(&self.paint(
                "2",
                &format!(
                    "  [held {:.0} s in the outbox while the uplink was down]",
                    held.as_secs_f64()
                ),
            ));
        }
        self.event(&line);
    }

    /// Redraw the status line (or, off a terminal, print it now and then).
    pub fn status(&mut self, g: &Gauges, uplink_cut: bool) {
        let now = Instant::now();
        self.history.push_back((now, g.stored));
        while self
            .history
            .front()
            .is_some_and(|(at, _)| now - *at > RATE_SPAN)
        {
            self.history.pop_front();
        }
        let rate = match self.history.front() {
            Some((at, stored)) if now > *at => (g.stored - stored) / (now - *at).as_secs_f64(),
            _ => 0.0,
        };
        let uplink = match (g.uplink_up, uplink_cut) {
            (true, _) => self.paint("32", "up"),
            (false, true) => self.paint("1;31", "DOWN (cut)"),
            (false, false) => self.paint("33", "reconnecting"),
        };
        let line = format!(
            "{}  {:>5.0} readings/s │ stored {} │ outbox {} │ uplink {uplink} │ alerts {} raised, {} cleared │ delivered {} │ dead letters {}",
            self.stamp(now),
            rate,
            count(g.buffered),
            count(g.outbox),
            g.raised,
            g.cleared,
            count(g.delivered),
            g.dead_letters,
        );
        let mut out = std::io::stdout().lock();
        if self.tty {
            let _ = write!(out, "\r\x1b[2K{line}");
            self.drawn = true;
        } else if self.last_plain.is_none_or(|t| now - t >= PLAIN_EVERY) {
            let _ = writeln!(out, "{line}");
            self.last_plain = Some(now);
        }
        let _ = out.flush();
    }

    /// Leave the status line on screen and move below it.
    pub fn finish(&mut self) {
        if self.drawn {
            let mut out = std::io::stdout().lock();
            let _ = writeln!(out);
            self.drawn = false;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gauges_read_the_metric_families_vigil_exposes() {
        let s = Samples::parse(
            "vigil_readings_stored_total 120\nvigil_readings_buffered 100\n\
             vigil_outbox_entries{lane=\"alerts\"} 2\nvigil_outbox_entries{lane=\"aggregates\"} 5\n\
             vigil_broker_connected{broker=\"upstream\"} 1\n\
             vigil_alerts_raised_total{severity=\"warning\"} 3\nvigil_alerts_raised_total{severity=\"alarm\"} 1\n\
             vigil_delivered_total{lane=\"alerts\"} 4\nvigil_delivered_total{lane=\"aggregates\"} 40\n",
        );
        let g = Gauges::read(&s);
        assert_eq!((g.stored, g.buffered, g.outbox), (120.0, 100.0, 7.0));
        assert!(g.uplink_up);
        assert_eq!((g.raised, g.delivered), (4.0, 44.0));
    }
}
