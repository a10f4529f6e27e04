//! Detectors with explicit thresholds: static warning/alarm limits on any
//! feature, ISO 10816-3 zones on velocity RMS, and rate-of-change limits.

use crate::config::{IsoZones, Limit, MachineGroup, RateLimit};
use crate::model::Severity;

use super::alert::{Basis, Check};

/// Warning and alarm levels, above and below. The score grows from 0.5 at
/// the warning level to 1 at the alarm level (1 at whichever level is crossed
/// when only one is set).
pub fn limit(limit: &Limit, value: f64) -> Check {
    let mut check = Check {
        detector: "limit",
        feature: limit.feature.clone(),
        severity: None,
        value,
        limit: None,
        baseline: None,
        statistic: None,
        score: 0.0,
        note: "",
        basis: Basis::Recent,
    };
    let above = side(value, limit.warning_above, limit.alarm_above, 1.0);
    let below = side(value, limit.warning_below, limit.alarm_below, -1.0);
    worst(&mut check, [(above, "above"), (below, "below")]);
    check
}

/// What one side of a limit found (severity, the limit crossed, score), and
/// the word for that side.
type Side = (Option<(Severity, f64, f64)>, &'static str);

/// Put the more severe of two sides' findings into `check`.
fn worst(check: &mut Check, sides: [Side; 2]) {
    for (found, note) in sides {
        if let Some((sev, lim, score)) = found {
            if Some(sev) > check.severity {
                check.severity = Some(sev);
                check.limit = Some(lim);
                check.score = score;
                check.note = note;
            }
        }
    }
}

/// `dir` = 1 for upper limits, −1 for lower ones.
fn side(
    value: f64,
    warning: Option<f64>,
    alarm: Option<f64>,
    dir: f64,
) -> Option<(Severity, f64, f64)> {
    let beyond = |lim: f64| dir * (value - lim) >= 0.0;
    if let Some(a) = alarm.filter(|a| beyond(*a)) {
        return Some((Severity::Alarm, a, 1.0));
    }
    let w = warning.filter(|w| beyond(*w))?;
    let score = match alarm {
        Some(a) if a != w => (0.5 + 0.5 * (value - w) / (a - w)).clamp(0.5, 0.99),
        _ => 1.0,
    };
    Some((Severity::Warning, w, score))
}

/// ISO 10816-3: zone C (from the B/C boundary) is a warning, zone D (from
/// the C/D boundary) an alarm.
pub fn iso10816(zones: &IsoZones, feature: &str, value: f64) -> Check {
    let as_limit = Limit {
        feature: feature.to_string(),
        warning_above: Some(zones.b_c),
        alarm_above: Some(zones.c_d),
        warning_below: None,
        alarm_below: None,
    };
    let mut check = limit(&as_limit, value);
    check.detector = "iso10816";
    check.note = match (zones.group, zones.foundation) {
        (MachineGroup::Large, crate::config::Foundation::Rigid) => "group 1, rigid foundation",
        (MachineGroup::Large, crate::config::Foundation::Flexible) => {
            "group 1, flexible foundation"
        }
        (MachineGroup::Medium, crate::config::Foundation::Rigid) => "group 2, rigid foundation",
        (MachineGroup::Medium, crate::config::Foundation::Flexible) => {
            "group 2, flexible foundation"
        }
    };
    check
}

/// Rate of change between two consecutive windows, in units per minute.
pub fn rate(rule: &RateLimit, value: f64, per_min: f64) -> Check {
    let rise = side(
        per_min,
        rule.warning_rise_per_min,
        rule.alarm_rise_per_min,
        1.0,
    );
    let fall = side(
        -per_min,
        rule.warning_fall_per_min,
        rule.alarm_fall_per_min,
        1.0,
    );
    let mut check = Check {
        detector: "rate",
        feature: rule.feature.clone(),
        severity: None,
        value,
        limit: None,
        baseline: None,
        statistic: Some(per_min),
        score: 0.0,
        note: if per_min >= 0.0 { "rising" } else { "falling" },
        basis: Basis::Recent,
    };
    worst(&mut check, [(rise, "rising"), (fall, "falling")]);
    check
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Foundation;

    fn lim() -> Limit {
        Limit {
            feature: "mean".into(),
            warning_above: Some(80.0),
            alarm_above: Some(90.0),
            warning_below: Some(5.0),
            alarm_below: Some(0.0),
        }
    }

    #[test]
    fn static_limits_both_sides() {
        assert_eq!(limit(&lim(), 50.0).severity, None);
        let w = limit(&lim(), 85.0);
        assert_eq!(w.severity, Some(Severity::Warning));
        assert_eq!(w.limit, Some(80.0));
        assert!((w.score - 0.75).abs() < 1e-12);
        let a = limit(&lim(), 90.0);
        assert_eq!((a.severity, a.limit), (Some(Severity::Alarm), Some(90.0)));
        let low = limit(&lim(), 3.0);
        assert_eq!((low.severity, low.note), (Some(Severity::Warning), "below"));
        assert_eq!(limit(&lim(), -1.0).severity, Some(Severity::Alarm));
        assert!(limit(&lim(), 85.0)
            .explain("degC")
            .contains("above the warning limit 80 degC"));
    }

    #[test]
    fn iso_zones_group_2_rigid() {
        let z = IsoZones::new(MachineGroup::Medium, Foundation::Rigid);
        assert_eq!(iso10816(&z, "velocity_rms", 2.0).severity, None);
        assert_eq!(
            iso10816(&z, "velocity_rms", 3.0).severity,
            Some(Severity::Warning)
        );
        let d = iso10816(&z, "velocity_rms", 4.6);
        assert_eq!(d.severity, Some(Severity::Alarm));
        assert!(d.explain("mm/s").contains("zone D"));
        let big = IsoZones::new(MachineGroup::Large, Foundation::Flexible);
        assert_eq!(iso10816(&big, "velocity_rms", 7.0).severity, None);
    }

    #[test]
    fn rate_rising_and_falling() {
        let r = RateLimit {
            feature: "mean".into(),
            warning_rise_per_min: Some(0.5),
            alarm_rise_per_min: Some(2.0),
            warning_fall_per_min: Some(1.0),
            alarm_fall_per_min: None,
        };
        assert_eq!(rate(&r, 70.0, 0.2).severity, None);
        assert_eq!(rate(&r, 70.0, 0.6).severity, Some(Severity::Warning));
        assert_eq!(rate(&r, 70.0, 2.5).severity, Some(Severity::Alarm));
        assert_eq!(rate(&r, 70.0, -0.6).severity, None);
        let f = rate(&r, 70.0, -1.5);
        assert_eq!((f.severity, f.note), (Some(Severity::Warning), "falling"));
        assert!(f.explain("degC").contains("falling at 1.5 degC/min"));
    }
}
