//! The demo's closing summary: each injected fault against the first alert
//! that arrived upstream for it, the alerts no fault explains (false
//! alarms), and what the plant's broker received.

use std::fmt::Write;
use std::time::Duration;

use crate::model::EpochMs;
use crate::simulate::{FaultKind, Injection};

use super::upstream::{AlertMessage, Received};
use crate::ops::status::count as thousands;

/// A fault and the first alert raised for it, if any.
#[derive(Debug, Clone)]
pub struct Detection {
    pub injection: Injection,
    pub alert: Option<AlertMessage>,
}

/// The demo's two clocks: the plant's (event time, `speed` times faster)
/// and the gateway's, which silence is measured on.
#[derive(Debug, Clone, Copy)]
pub struct Clock {
    /// Plant time at the start of the demo.
    pub plant_start_ms: EpochMs,
    /// Wall time at the start of the demo.
    pub wall_start_ms: EpochMs,
    pub speed: f64,
}

impl Clock {
    /// When, in demo time, an alert was raised: its window's event time on
    /// the plant clock, or, for a silent sensor, the gateway's clock.
    pub fn raised_at(&self, a: &AlertMessage) -> Duration {
        self.demo_time(a, a.raised_ms)
    }

    /// When, in demo time, this transition (raise, escalation, clear) happened.
    pub fn happened_at(&self, a: &AlertMessage) -> Duration {
        self.demo_time(a, a.end_ms)
    }

    /// When, in demo time, the plant clock showed `event_ms`.
    fn plant_at(&self, event_ms: EpochMs) -> Duration {
        Duration::from_secs_f64(
            ((event_ms - self.plant_start_ms).max(0) as f64 / self.speed) / 1000.0,
        )
    }

    fn demo_time(&self, a: &AlertMessage, ms: EpochMs) -> Duration {
        if a.detector == "silence" {
            Duration::from_millis((ms - self.wall_start_ms).max(0) as u64)
        } else {
            self.plant_at(ms)
        }
    }
}

impl Detection {
    /// Demo time from the fault's first reading to the alert's raise.
    pub fn delay(&self, clock: &Clock) -> Option<Duration> {
        let begun = clock.plant_at(self.injection.event_ms);
        self.alert
            .as_ref()
            .map(|a| clock.raised_at(a).saturating_sub(begun))
    }
}

/// Faults against alerts.
#[derive(Debug, Clone, Default)]
pub struct Outcome {
    pub detections: Vec<Detection>,
    /// Raised alerts on a stream where no fault had begun.
    pub false_alarms: Vec<AlertMessage>,
}

impl Outcome {
    pub fn missed(&self) -> usize {
        self.detections.iter().filter(|d| d.alert.is_none()).count()
    }
}

/// Does this alert belong to this fault: same device, the metric it
/// affects, raised at or after its first reading?
fn explains(clock: &Clock, i: &Injection, a: &AlertMessage) -> bool {
    a.device == i.device
        && (i.metric == "*" || i.metric == a.metric)
        && clock.raised_at(a) >= clock.plant_at(i.event_ms)
}

pub fn match_faults(clock: &Clock, injections: &[Injection], alerts: &[AlertMessage]) -> Outcome {
    let raised: Vec<&AlertMessage> = alerts.iter().filter(|a| a.event == "raised").collect();
    let detections = injections
        .iter()
        .map(|i| Detection {
            injection: i.clone(),
            alert: raised
                .iter()
                .filter(|a| explains(clock, i, a))
                .min_by_key(|a| clock.raised_at(a))
                .map(|a| (*a).clone()),
        })
        .collect();
    let false_alarms = raised
        .iter()
        .filter(|a| !injections.iter().any(|i| explains(clock, i, a)))
        .map(|a| (*a).clone())
        .collect();
    Outcome {
        detections,
        false_alarms,
    }
}

/// What the summary reports besides the faults.
pub struct Facts {
    pub wall: Duration,
    pub clock: Clock,
    pub devices: usize,
    pub readings: u64,
    pub garbage: u64,
    pub stored: f64,
    pub dead_letters: f64,
    pub delivered: f64,
    pub received: Received,
    /// Wall offsets of the cut and of the link's return, if it happened.
    pub outage: Option<(Duration, Option<Duration>)>,
    pub outbox_peak: f64,
    /// From the link's return until the outbox was empty.
    pub drained_in: Option<Duration>,
    pub interrupted: bool,
}

pub fn render(outcome: &Outcome, f: &Facts) -> String {
    let mut s = String::new();
    let speed = f.clock.speed;
    let plant_min = f.wall.as_secs_f64() * speed / 60.0;
    let _ = writeln!(
        s,
        "\nSummary{}: {:.0} s of demo, {} of plant time at {}×",
        if f.interrupted {
            " (stopped early)"
        } else {
            ""
        },
        f.wall.as_secs_f64(),
        plant_span(plant_min),
        speed
    );
    let _ = writeln!(
        s,
        "  sensors    {} devices published {} readings and {} garbage payloads; vigil stored {} readings and kept {} dead letters",
        f.devices,
        thousands(f.readings as f64),
        f.garbage,
        thousands(f.stored),
        f.dead_letters
    );
    let _ = writeln!(
        s,
        "  faults     injected → first alert upstream (detected after: plant time / demo time)"
    );
    for d in &outcome.detections {
        let i = &d.injection;
        let what = format!(
            "+{:>3.0}s {} {}",
            i.wall.as_secs_f64(),
            i.device,
            fault_name(i.kind)
        );
        match (&d.alert, d.delay(&f.clock)) {
            (Some(a), Some(delay)) => {
                let _ = writeln!(
                    s,
                    "    {what:<34} → {} {} {}/{} {}: after {} / {:.0} s",
                    a.severity,
                    a.metric,
                    a.detector,
                    a.feature,
                    short(&a.message, 60),
                    plant_span(delay.as_secs_f64() * speed / 60.0),
                    delay.as_secs_f64()
                );
            }
            _ => {
                let _ = writeln!(s, "    {what:<34} → no alert (missed)");
            }
        }
    }
    let _ = writeln!(
        s,
        "             {} of {} faults detected; {} false alarm(s){}",
        outcome.detections.len() - outcome.missed(),
        outcome.detections.len(),
        outcome.false_alarms.len(),
        if outcome.false_alarms.is_empty() {
            String::new()
        } else {
            let mut list: Vec<String> = outcome
                .false_alarms
                .iter()
                .take(5)
                .map(|a| format!("{} {} {}/{}", a.device, a.metric, a.detector, a.feature))
                .collect();
            if outcome.false_alarms.len() > list.len() {
                list.push("…".into());
            }
            format!(": {}", list.join(", "))
        }
    );
    let r = &f.received;
    let count = |event: &str| r.alerts.iter().filter(|a| a.event == event).count();
    let unique = r.aggregates as f64 + r.alerts.len() as f64;
    let _ = writeln!(
        s,
        "  upstream   the plant's broker got {} aggregates and {} alert messages ({} raised, {} escalated, {} cleared, {} reopened); {}{}",
        thousands(r.aggregates as f64),
        r.alerts.len(),
        count("raised"),
        count("escalated"),
        count("cleared"),
        count("reopened"),
        if unique == f.delivered {
            "every message vigil delivered arrived once".to_string()
        } else {
            format!(
                "vigil counts {} delivered, {} arrived",
                thousands(f.delivered),
                thousands(unique)
            )
        },
        if r.duplicates > 0 {
            format!(" ({} resent copies recognised by id)", r.duplicates)
        } else {
            String::new()
        }
    );
    if let Some((cut, restored)) = f.outage {
        let back = match restored {
            Some(r) => format!("+{:.0}s", r.as_secs_f64()),
            None => "the end".into(),
        };
        let drained = match f.drained_in {
            Some(d) => format!(
                "; the backlog was delivered {:.1} s after the link came back",
                d.as_secs_f64()
            ),
            None => String::new(),
        };
        let _ = writeln!(
            s,
            "  outage     uplink cut from +{:.0}s to {back}: the outbox held up to {} entries, nothing was lost{drained}",
            cut.as_secs_f64(),
            thousands(f.outbox_peak)
        );
    }
    s
}

fn fault_name(kind: FaultKind) -> &'static str {
    match kind {
        FaultKind::Bearing => "bearing defect",
        FaultKind::Overheat => "overheating",
        FaultKind::Stuck => "stuck sensor",
        FaultKind::Silent => "silent sensor",
        FaultKind::Garbage => "garbage payloads",
    }
}

/// Minutes of plant time as "2 h 05 min" or "12 min".
fn plant_span(minutes: f64) -> String {
    let m = minutes.round() as i64;
    if m >= 60 {
        format!("{} h {:02} min", m / 60, m % 60)
    } else {
        format!("{m} min")
    }
}

fn short(text: &str, max: usize) -> String {
    if text.chars().count() <= max {
        format!("\"{text}\"")
    } else {
        let cut: String = text.chars().take(max - 1).collect();
        format!("\"{cut}…\"")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Instant;

    fn injection(device: &str, metric: &str, kind: FaultKind, event_ms: EpochMs) -> Injection {
        Injection {
            wall: Duration::from_secs(30),
            event_ms,
            device: device.into(),
            metric: metric.into(),
            kind,
            detail: String::new(),
        }
    }

    fn alert(device: &str, metric: &str, event: &str, raised_ms: EpochMs) -> AlertMessage {
        AlertMessage {
            id: format!("gw/alerts/{raised_ms}"),
            alert_id: format!("{device}/{metric}/limit/mean/{raised_ms}"),
            device: device.into(),
            metric: metric.into(),
            event: event.into(),
            severity: "warning".into(),
            detector: "limit".into(),
            feature: "mean".into(),
            end_ms: raised_ms,
            raised_ms,
            message: "mean 80 is above the warning limit 75".into(),
            arrived: Instant::now(),
        }
    }

    #[test]
    fn a_fault_is_matched_to_the_first_alert_on_its_stream_after_it_began() {
        let faults = [
            injection("pump-03", "temperature", FaultKind::Overheat, 1_000_000),
            injection("pump-09", "*", FaultKind::Silent, 2_000_000),
            injection("pump-05", "vibration", FaultKind::Bearing, 3_000_000),
        ];
        let alerts = [
            // Before the fault: a false alarm, not the detection.
            alert("pump-03", "temperature", "raised", 900_000),
            alert("pump-03", "temperature", "raised", 1_240_000),
            alert("pump-03", "temperature", "raised", 1_120_000),
            // Another metric of the same device: not this fault.
            alert("pump-03", "vibration", "raised", 1_500_000),
            // Any metric of a device that went silent; silence is raised
            // on the gateway's clock: 43.3 s into the demo, 10 s after the
            // fault's first reading (2,000 s of plant time = 33.3 s).
            AlertMessage {
                detector: "silence".into(),
                ..alert("pump-09", "temperature", "raised", 1_000_000 + 43_334)
            },
            alert("pump-09", "temperature", "cleared", 2_900_000),
        ];
        let clock = Clock {
            plant_start_ms: 0,
            wall_start_ms: 1_000_000,
            speed: 60.0,
        };
        let o = match_faults(&clock, &faults, &alerts);
        assert_eq!(o.detections[0].delay(&clock), Some(Duration::from_secs(2)));
        let silence = o.detections[1].delay(&clock).unwrap().as_secs_f64();
        assert!((silence - 10.0).abs() < 0.01, "{silence}");
        assert!(o.detections[2].alert.is_none());
        assert_eq!(o.missed(), 1);
        let false_alarms: Vec<(&str, EpochMs)> = o
            .false_alarms
            .iter()
            .map(|a| (a.metric.as_str(), a.raised_ms))
            .collect();
        assert_eq!(
            false_alarms,
            [("temperature", 900_000), ("vibration", 1_500_000)]
        );
    }

    #[test]
    fn plant_spans_read_as_hours_and_minutes() {
        assert_eq!(plant_span(12.4), "12 min");
        assert_eq!(plant_span(125.0), "2 h 05 min");
    }
}
