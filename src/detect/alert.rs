//! The alert state machine of one condition (one detector on one feature of
//! one stream): raise after N consecutive anomalous windows, escalate from
//! warning to alarm within the same alert, clear after M normal windows
//! once the stream has also been normal for as long as it was abnormal (up
//! to the hold-off). One alert per episode, however long it lasts: raised
//! again within the hold-off of its clearing, it is reopened (same id).

use serde::{Deserialize, Serialize};

use crate::model::{AlertEvent, AlertKind, EpochMs, Severity};

pub use super::baseline::Basis;

/// What one detector concluded about one feature in one window.
#[derive(Debug, Clone, PartialEq)]
pub struct Check {
    pub detector: &'static str,
    pub feature: String,
    /// `None`: normal.
    pub severity: Option<Severity>,
    pub value: f64,
    pub limit: Option<f64>,
    /// Learned level and spread (baseline detectors).
    pub baseline: Option<(f64, f64)>,
    /// Detector-specific statistic: z-score, CUSUM sum, spread ratio, rate per minute.
    pub statistic: Option<f64>,
    pub score: f64,
    /// Extra words for the explanation (ISO zone, direction).
    pub note: &'static str,
    /// What a baseline detector compared the value with.
    pub basis: Basis,
}

impl Check {
    /// The explanation an operator reads.
    pub fn explain(&self, unit: &str) -> String {
        let f = &self.feature;
        let v = fmt_num(self.value);
        let unit = unit_of(f, unit);
        let u = if unit.is_empty() {
            String::new()
        } else {
            format!(" {unit}")
        };
        let sev = self.severity.map(|s| s.as_str()).unwrap_or("normal");
        let lim = self.limit.map(fmt_num).unwrap_or_default();
        let score = format!("score {:.3}", self.score);
        // A normal window (the one that clears an alert) has no limit it
        // crossed: say where the value is.
        if self.severity.is_none() {
            match self.detector {
                "limit" | "iso10816" => {
                    return format!("{f} {v}{u} is back within its limits ({score})")
                }
                "rate" => {
                    return format!(
                        "{f} changing at {}{u}/min, back within its limits ({score})",
                        fmt_num(self.statistic.unwrap_or(0.0)),
                    )
                }
                _ => {}
            }
        }
        match self.detector {
            "limit" => format!(
                "{f} {v}{u} is {} the {sev} limit {lim}{u} ({score})",
                self.note
            ),
            "iso10816" => format!(
                "{f} {v} mm/s is in ISO 10816-3 {} ({} {lim} mm/s; {score})",
                self.note,
                if self.severity == Some(Severity::Alarm) {
                    "zone D from"
                } else {
                    "zone C from"
                }
            ),
            "rate" => format!(
                "{f} {} at {}{u}/min, faster than the {sev} limit {lim}{u}/min ({score})",
                self.note,
                fmt_num(self.statistic.unwrap_or(0.0).abs()),
            ),
            "baseline" => {
                let (level, spread) = self.baseline.unwrap_or((0.0, 0.0));
                format!(
                    "{f} {v}{u} is {} spreads {} {} {}{u} ± {} ({score})",
                    fmt_num(self.statistic.unwrap_or(0.0).abs()),
                    if self.value >= level {
                        "above"
                    } else {
                        "below"
                    },
                    self.basis.describe(),
                    fmt_num(level),
                    fmt_num(spread),
                )
            }
            "drift" => {
                let (level, spread) = self.baseline.unwrap_or((0.0, 0.0));
                format!(
                    "{f} has crept {}: {v}{u} against the long-term level {}{u} ± {}, CUSUM {} past its decision interval {lim} ({score})",
                    if self.statistic.unwrap_or(0.0) >= 0.0 { "up" } else { "down" },
                    fmt_num(level),
                    fmt_num(spread),
                    fmt_num(self.statistic.unwrap_or(0.0).abs()),
                )
            }
            "volatility" => format!(
                "{f} {v}{u} is {}× the learned within-window spread {}{u}, limit {lim}× ({score})",
                fmt_num(self.statistic.unwrap_or(0.0)),
                fmt_num(self.baseline.map(|b| b.0).unwrap_or(0.0)),
            ),
            "silence" => format!("no reading for {v} s (limit {lim} s)"),
            other => format!("{other}: {f} {v}{u} ({sev}, {score})"),
        }
    }
}

/// The unit a feature is in, given the stream's unit: shape features have
/// none, velocity RMS is always mm/s.
fn unit_of<'a>(feature: &str, unit: &'a str) -> &'a str {
    match feature {
        "count" | "crest_factor" | "kurtosis" | "skewness" => "",
        "velocity_rms" => "mm/s",
        _ => unit,
    }
}

/// Numbers in explanations: four significant digits, no exponent for common sizes.
pub fn fmt_num(v: f64) -> String {
    if v == 0.0 || !v.is_finite() {
        return format!("{v}");
    }
    let a = v.abs();
    if (1e-3..1e6).contains(&a) {
        let decimals = (3 - a.log10().floor() as i32).clamp(0, 6) as usize;
        let s = format!("{v:.decimals$}");
        if s.contains('.') {
            s.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            s
        }
    } else {
        format!("{v:.3e}")
    }
}

/// Where an alert belongs and its hysteresis.
pub struct Context<'a> {
    pub device: &'a str,
    pub metric: &'a str,
    pub unit: &'a str,
    pub raise_after: u32,
    pub clear_after: u32,
    pub hold_off_ms: EpochMs,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Condition {
    /// Consecutive anomalous / normal windows so far.
    bad: u32,
    good: u32,
    /// Highest severity in the current anomalous run.
    run_max: Option<Severity>,
    active: Option<Active>,
    /// The value and window of the latest check, so that an alert closed
    /// without a window of its own (`retire`) still reports where it stood.
    /// Absent from checkpoints written before it existed.
    #[serde(default)]
    last: Option<Seen>,
    /// Event times of the episode: the start of its first anomalous window,
    /// the end of its latest, and the start of the normal run since.
    #[serde(default)]
    episode: Option<Episode>,
    /// The latest alert cleared, while a new raise would reopen it.
    #[serde(default)]
    closed: Option<Closed>,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Serialize, Deserialize)]
struct Episode {
    first_bad_ms: EpochMs,
    last_bad_ms: EpochMs,
    good_since_ms: Option<EpochMs>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Closed {
    id: String,
    raised_ms: EpochMs,
    cleared_ms: EpochMs,
}

#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
struct Seen {
    value: f64,
    window: (EpochMs, EpochMs),
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct Active {
    id: String,
    severity: Severity,
    raised_ms: EpochMs,
}

impl Condition {
    pub fn is_active(&self) -> bool {
        self.active.is_some()
    }

    /// The severity of the open alert, if one is open.
    pub fn active_severity(&self) -> Option<Severity> {
        self.active.as_ref().map(|a| a.severity)
    }

    /// Feed the check of one window ending at `end_ms`; returns the alert
    /// transition it causes, if any.
    pub fn step(
        &mut self,
        check: &Check,
        window: (EpochMs, EpochMs),
        ctx: &Context,
    ) -> Option<AlertEvent> {
        let (start_ms, end_ms) = window;
        self.last = Some(Seen {
            value: check.value,
            window,
        });
        match check.severity {
            Some(sev) => {
                self.bad = self.bad.saturating_add(1);
                self.good = 0;
                self.run_max = self.run_max.max(Some(sev));
                let ep = self.episode.get_or_insert(Episode {
                    first_bad_ms: start_ms,
                    ..Episode::default()
                });
                ep.last_bad_ms = end_ms;
                ep.good_since_ms = None;
                match &mut self.active {
                    Some(active) if sev > active.severity => {
                        active.severity = sev;
                        let (id, raised) = (active.id.clone(), active.raised_ms);
                        Some(event(
                            AlertKind::Escalated,
                            id,
                            sev,
                            raised,
                            None,
                            check,
                            window,
                            ctx,
                        ))
                    }
                    Some(_) => None,
                    None if self.bad >= ctx.raise_after.max(1) => {
                        let severity = self.run_max.unwrap_or(sev);
                        let reopen = self
                            .closed
                            .take()
                            .filter(|c| end_ms.saturating_sub(c.cleared_ms) <= ctx.hold_off_ms);
                        let (kind, id, raised_ms) = match reopen {
                            Some(c) => (AlertKind::Reopened, c.id, c.raised_ms),
                            None => (
                                AlertKind::Raised,
                                format!(
                                    "{}/{}/{}/{}/{}",
                                    ctx.device, ctx.metric, check.detector, check.feature, end_ms
                                ),
                                end_ms,
                            ),
                        };
                        self.active = Some(Active {
                            id: id.clone(),
                            severity,
                            raised_ms,
                        });
                        Some(event(
                            kind,
                            id,
                            severity,
                            raised_ms,
                            None,
                            check,
                            (start_ms, end_ms),
                            ctx,
                        ))
                    }
                    None => None,
                }
            }
            None => {
                self.good = self.good.saturating_add(1);
                self.bad = 0;
                self.run_max = None;
                let Some(active) = &self.active else {
                    // Nothing open: the episode (and a clearing that could
                    // be reopened, once the hold-off has passed) is over.
                    self.episode = None;
                    if self
                        .closed
                        .as_ref()
                        .is_some_and(|c| end_ms.saturating_sub(c.cleared_ms) > ctx.hold_off_ms)
                    {
                        self.closed = None;
                    }
                    return None;
                };
                // Normal for as long as it was abnormal, up to the hold-off.
                let settled = match self.episode.as_mut() {
                    Some(ep) => {
                        let since = *ep.good_since_ms.get_or_insert(start_ms);
                        let needed = ep
                            .last_bad_ms
                            .saturating_sub(ep.first_bad_ms)
                            .min(ctx.hold_off_ms);
                        end_ms.saturating_sub(since) >= needed
                    }
                    None => true,
                };
                if self.good >= ctx.clear_after.max(1) && settled {
                    let (id, severity, raised_ms) =
                        (active.id.clone(), active.severity, active.raised_ms);
                    self.active = None;
                    self.episode = None;
                    if ctx.hold_off_ms > 0 {
                        self.closed = Some(Closed {
                            id: id.clone(),
                            raised_ms,
                            cleared_ms: end_ms,
                        });
                    }
                    let mut ev = event(
                        AlertKind::Cleared,
                        id,
                        severity,
                        raised_ms,
                        Some(end_ms),
                        check,
                        window,
                        ctx,
                    );
                    // It may have taken more than clear_after: say how many.
                    ev.message = cleared_message(self.good, check, ctx.unit);
                    return Some(ev);
                }
                None
            }
        }
    }

    /// Clear at once (the condition no longer exists, e.g. a silent sensor spoke).
    pub fn clear_now(
        &mut self,
        check: &Check,
        window: (EpochMs, EpochMs),
        ctx: &Context,
    ) -> Option<AlertEvent> {
        self.bad = 0;
        self.run_max = None;
        self.episode = None;
        self.last = Some(Seen {
            value: check.value,
            window,
        });
        let active = self.active.take()?;
        Some(event(
            AlertKind::Cleared,
            active.id,
            active.severity,
            active.raised_ms,
            Some(window.1),
            check,
            window,
            ctx,
        ))
    }
}

/// Why an open alert is closed without a normal window (`Condition::retire`).
pub struct Retired<'a> {
    pub detector: &'a str,
    pub feature: &'a str,
    /// Completes "cleared by a configuration reload: …".
    pub why: &'a str,
    /// The value to report; `None`: the last one this condition saw.
    pub value: Option<f64>,
    /// Event time to report as the clearing time (no earlier than the
    /// alert's last window).
    pub at_ms: EpochMs,
}

impl Condition {
    /// Close the alert now because nothing will evaluate this condition
    /// again (a configuration reload removed its detector, or restarted what
    /// it learned), so it does not stay open upstream forever. The event
    /// carries the last value and window the condition saw, no limit and no
    /// baseline (neither applies any more), and score 0. Only a condition
    /// restored from a checkpoint older than `last`, and not evaluated since,
    /// has no value to report: then it is NaN (`null` in JSON).
    pub fn retire(&mut self, r: &Retired, ctx: &Context) -> Option<AlertEvent> {
        self.bad = 0;
        self.good = 0;
        self.run_max = None;
        self.episode = None;
        self.closed = None;
        let active = self.active.take()?;
        let window = self
            .last
            .map(|l| l.window)
            .unwrap_or((active.raised_ms, active.raised_ms));
        let value = r.value.or(self.last.map(|l| l.value)).unwrap_or(f64::NAN);
        let shown = if value.is_finite() {
            let unit = unit_of(r.feature, ctx.unit);
            let u = if unit.is_empty() {
                String::new()
            } else {
                format!(" {unit}")
            };
            format!(" (last value {}{u})", fmt_num(value))
        } else {
            String::new()
        };
        Some(AlertEvent {
            id: active.id,
            kind: AlertKind::Cleared,
            device: ctx.device.to_string(),
            metric: ctx.metric.to_string(),
            detector: r.detector.to_string(),
            feature: r.feature.to_string(),
            severity: active.severity,
            raised_ms: active.raised_ms,
            cleared_ms: Some(r.at_ms.max(window.1).max(active.raised_ms)),
            window_start_ms: window.0,
            window_end_ms: window.1,
            value,
            limit: None,
            baseline: None,
            score: 0.0,
            message: format!("cleared by a configuration reload: {}{shown}", r.why),
        })
    }
}

fn cleared_message(normal_windows: u32, check: &Check, unit: &str) -> String {
    format!(
        "cleared after {normal_windows} normal window(s): {}",
        check.explain(unit)
    )
}

#[allow(clippy::too_many_arguments)]
fn event(
    kind: AlertKind,
    id: String,
    severity: Severity,
    raised_ms: EpochMs,
    cleared_ms: Option<EpochMs>,
    check: &Check,
    window: (EpochMs, EpochMs),
    ctx: &Context,
) -> AlertEvent {
    let message = match kind {
        AlertKind::Cleared => cleared_message(ctx.clear_after.max(1), check, ctx.unit),
        AlertKind::Reopened => format!("again within the hold-off: {}", check.explain(ctx.unit)),
        _ => check.explain(ctx.unit),
    };
    AlertEvent {
        id,
        kind,
        device: ctx.device.to_string(),
        metric: ctx.metric.to_string(),
        detector: check.detector.to_string(),
        feature: check.feature.clone(),
        severity,
        raised_ms,
        cleared_ms,
        window_start_ms: window.0,
        window_end_ms: window.1,
        value: check.value,
        limit: check.limit,
        baseline: check.baseline,
        score: check.score,
        message,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(sev: Option<Severity>, value: f64) -> Check {
        Check {
            detector: "limit",
            feature: "mean".into(),
            severity: sev,
            value,
            limit: Some(80.0),
            baseline: None,
            statistic: None,
            score: if sev.is_some() { 0.9 } else { 0.0 },
            note: "above",
            basis: Basis::Recent,
        }
    }

    #[test]
    fn a_normal_window_says_the_value_is_back_within_its_limits() {
        let normal = check(None, 50.0);
        assert_eq!(
            normal.explain("degC"),
            "mean 50 degC is back within its limits (score 0.000)"
        );
        let rate = Check {
            detector: "rate",
            statistic: Some(0.1),
            limit: None,
            ..check(None, 50.0)
        };
        assert_eq!(
            rate.explain("degC"),
            "mean changing at 0.1 degC/min, back within its limits (score 0.000)"
        );
        // A crossing still names the limit.
        assert!(check(Some(Severity::Warning), 85.0)
            .explain("degC")
            .contains("above the warning limit 80 degC"));
    }

    fn run(seq: &[Option<Severity>]) -> Vec<AlertEvent> {
        run_with_hold_off(seq, 0)
    }

    /// Windows of one second, the `i`-th ending at `(i + 1) * 1000`.
    fn run_with_hold_off(seq: &[Option<Severity>], hold_off_ms: EpochMs) -> Vec<AlertEvent> {
        let ctx = Context {
            device: "pump-1",
            metric: "temperature",
            unit: "degC",
            raise_after: 2,
            clear_after: 3,
            hold_off_ms,
        };
        let mut c = Condition::default();
        let mut out = Vec::new();
        for (i, s) in seq.iter().enumerate() {
            let t = i as i64 * 1000;
            out.extend(c.step(&check(*s, 85.0), (t, t + 1000), &ctx));
        }
        out
    }

    const W: Option<Severity> = Some(Severity::Warning);
    const A: Option<Severity> = Some(Severity::Alarm);
    const N: Option<Severity> = None;

    #[test]
    fn raise_after_n_and_clear_after_m() {
        // One anomalous window is not enough; two in a row raise.
        assert!(run(&[W, N, W, N]).is_empty());
        let ev = run(&[W, W, W, N, N, W, N, N, N]);
        let kinds: Vec<_> = ev.iter().map(|e| e.kind).collect();
        assert_eq!(kinds, vec![AlertKind::Raised, AlertKind::Cleared]);
        assert_eq!(ev[0].raised_ms, 2000, "raised at the end of the 2nd window");
        assert_eq!(ev[1].cleared_ms, Some(9000));
        assert_eq!(ev[0].id, ev[1].id);
        assert_eq!(ev[0].id, "pump-1/temperature/limit/mean/2000");
        assert!(ev[0].message.contains("above the warning limit 80 degC"));
    }

    fn kinds(ev: &[AlertEvent]) -> Vec<(AlertKind, EpochMs)> {
        ev.iter()
            .map(|e| (e.kind, e.cleared_ms.unwrap_or(e.window_end_ms)))
            .collect()
    }

    #[test]
    fn an_alert_clears_only_once_normal_for_as_long_as_it_was_abnormal() {
        // Abnormal from 0 to 10 s: three normal windows are not enough, ten are.
        let mut seq = vec![W; 10];
        seq.extend([N; 12]);
        let ev = run_with_hold_off(&seq, 60_000);
        assert_eq!(
            kinds(&ev),
            vec![(AlertKind::Raised, 2000), (AlertKind::Cleared, 20_000)]
        );
        assert!(ev[1]
            .message
            .starts_with("cleared after 10 normal window(s): "));
        // Without a hold-off, clear_after alone decides (as before).
        let ev = run_with_hold_off(&seq, 0);
        assert_eq!(ev[1].cleared_ms, Some(13_000));
        // The hold-off caps the wait: 4 s, then three windows suffice.
        let ev = run_with_hold_off(&seq, 4_000);
        assert_eq!(ev[1].cleared_ms, Some(14_000));
    }

    #[test]
    fn a_condition_back_within_the_hold_off_reopens_the_same_alert() {
        // Raised at 2 s, cleared at 5 s, back at 7 s: the same episode.
        let ev = run_with_hold_off(&[W, W, N, N, N, W, W, N, N, N], 10_000);
        assert_eq!(
            kinds(&ev),
            vec![
                (AlertKind::Raised, 2000),
                (AlertKind::Cleared, 5000),
                (AlertKind::Reopened, 7000),
                (AlertKind::Cleared, 10_000)
            ]
        );
        assert!(ev.iter().all(|e| e.id == ev[0].id && e.raised_ms == 2000));
        assert!(ev[2].message.starts_with("again within the hold-off: "));
        // Back after the hold-off has passed: a new alert.
        let mut seq = vec![W, W, N, N, N];
        seq.extend([N; 12]);
        seq.extend([W, W]);
        let ev = run_with_hold_off(&seq, 10_000);
        let raised: Vec<_> = ev.iter().filter(|e| e.kind == AlertKind::Raised).collect();
        assert_eq!(raised.len(), 2);
        assert_ne!(raised[0].id, raised[1].id);
    }

    #[test]
    fn escalates_within_one_alert() {
        let ev = run(&[W, W, A, A, W, N, N, N]);
        let kinds: Vec<_> = ev.iter().map(|e| (e.kind, e.severity)).collect();
        assert_eq!(
            kinds,
            vec![
                (AlertKind::Raised, Severity::Warning),
                (AlertKind::Escalated, Severity::Alarm),
                (AlertKind::Cleared, Severity::Alarm)
            ]
        );
        assert!(ev.iter().all(|e| e.id == ev[0].id));
    }

    #[test]
    fn a_run_that_reached_alarm_raises_an_alarm() {
        let ev = run(&[A, W]);
        assert_eq!(ev[0].severity, Severity::Alarm);
    }

    #[test]
    fn retire_reports_the_last_value_and_window() {
        let ctx = Context {
            device: "pump-1",
            metric: "temperature",
            unit: "degC",
            raise_after: 1,
            clear_after: 3,
            hold_off_ms: 0,
        };
        let mut c = Condition::default();
        let raised = c.step(&check(W, 85.0), (0, 1000), &ctx).unwrap();
        assert!(c.step(&check(W, 86.5), (1000, 2000), &ctx).is_none());
        let r = Retired {
            detector: "limit",
            feature: "mean",
            why: "the limit detector is no longer configured for mean",
            value: None,
            at_ms: 1500,
        };
        let ev = c.retire(&r, &ctx).expect("an open alert is cleared");
        assert_eq!(
            (ev.kind, ev.id.as_str()),
            (AlertKind::Cleared, raised.id.as_str())
        );
        assert_eq!((ev.window_start_ms, ev.window_end_ms), (1000, 2000));
        assert_eq!(ev.cleared_ms, Some(2000), "never before its last window");
        assert_eq!((ev.value, ev.limit, ev.score), (86.5, None, 0.0));
        assert_eq!(
            ev.message,
            "cleared by a configuration reload: the limit detector is no longer configured for mean (last value 86.5 degC)"
        );
        assert!(!c.is_active());
        assert!(c.retire(&r, &ctx).is_none(), "only once");
    }

    #[test]
    fn checkpoints_without_the_last_check_still_load() {
        // The layout of a condition before `last` was added.
        #[derive(Serialize)]
        struct Old {
            bad: u32,
            good: u32,
            run_max: Option<Severity>,
            active: Option<Active>,
        }
        let old = Old {
            bad: 2,
            good: 0,
            run_max: W,
            active: Some(Active {
                id: "a".into(),
                severity: Severity::Warning,
                raised_ms: 5,
            }),
        };
        let mut bytes = Vec::new();
        ciborium::ser::into_writer(&old, &mut bytes).unwrap();
        let c: Condition = ciborium::de::from_reader(bytes.as_slice()).unwrap();
        assert!(c.is_active());
        assert_eq!((c.bad, c.last), (2, None));
    }

    #[test]
    fn numbers_read_well() {
        assert_eq!(fmt_num(80.0), "80");
        assert_eq!(fmt_num(4.5678), "4.568");
        assert_eq!(fmt_num(0.012345), "0.01235");
        assert_eq!(fmt_num(123456.0), "123456");
        assert_eq!(fmt_num(2.5e-6), "2.500e-6");
    }
}
