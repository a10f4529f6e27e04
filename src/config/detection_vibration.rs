//! The vibration keys of a metric table: `waveform` (accelerometer unit,
//! spectral bands, envelope band), `bearing` (shaft speed and defect
//! frequencies, from the data sheet or the geometry) and `iso10816` (machine
//! group and foundation).

use std::collections::BTreeMap;

use serde::Deserialize;

use super::detection::{AccelUnit, Bearing, Foundation, MachineGroup};
use super::detection_layer::{
    at, band_name_ok, set, BearingLayer, Check, IsoLayer, MetricLayer, Set, Val,
};
use super::ranges::{
    BALLS, BALL_DIAMETER, CONTACT_ANGLE_DEG, DEFECT_MULTIPLE, PITCH_DIAMETER, SHAFT_HZ, SHAFT_RPM,
};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawWaveform {
    /// "g" or "m/s2".
    input_unit: Option<String>,
    /// `[from_hz, to_hz]` (a Vec, not an array type, so that a wrong length
    /// is one error rather than one per element).
    envelope_band_hz: Option<Vec<f64>>,
    /// Band name -> `[from_hz, to_hz]`.
    bands: Option<BTreeMap<String, Vec<f64>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawBearing {
    shaft_rpm: Option<f64>,
    shaft_hz: Option<f64>,
    /// Defect frequencies as multiples of the shaft speed.
    bpfo: Option<f64>,
    bpfi: Option<f64>,
    bsf: Option<f64>,
    ftf: Option<f64>,
    /// Or the geometry (diameters in any one unit, angle in degrees).
    balls: Option<i64>,
    ball_diameter: Option<f64>,
    pitch_diameter: Option<f64>,
    contact_angle_deg: Option<f64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawIso {
    /// 1 (> 300 kW) or 2 (15-300 kW).
    group: Option<i64>,
    /// "rigid" or "flexible".
    foundation: Option<String>,
}

pub(super) fn bearing(c: &mut Check<'_>, bk: &str, raw: &RawBearing) -> Option<BearingLayer> {
    let key = |f: &str| format!("{bk}.{f}");
    let shaft_hz = match (raw.shaft_rpm, raw.shaft_hz) {
        (Some(_), Some(_)) => {
            c.err(
                &key("shaft_hz"),
                "set either `shaft_rpm` or `shaft_hz`, not both",
            );
            None
        }
        (Some(rpm), None) => c
            .real(&key("shaft_rpm"), Some(rpm), SHAFT_RPM)
            .map(|s| Set {
                v: s.v / 60.0,
                at: s.at,
            }),
        (None, hz) => c.real(&key("shaft_hz"), hz, SHAFT_HZ),
    };
    let multiples = [raw.bpfo, raw.bpfi, raw.bsf, raw.ftf];
    let geometry = raw.balls.is_some()
        || raw.ball_diameter.is_some()
        || raw.pitch_diameter.is_some()
        || raw.contact_angle_deg.is_some();
    let has_multiples = multiples.iter().any(Option::is_some);
    let orders = if has_multiples && geometry {
        c.err(bk, "give either the defect multiples (bpfo, bpfi, bsf, ftf) or the geometry (balls, ball_diameter, pitch_diameter, contact_angle_deg), not both");
        None
    } else if has_multiples {
        let names = ["bpfo", "bpfi", "bsf", "ftf"];
        let missing: Vec<&str> = (0..4)
            .filter(|i| multiples[*i].is_none())
            .map(|i| names[i])
            .collect();
        if !missing.is_empty() {
            c.err(
                bk,
                format!(
                    "missing {}; the four defect multiples go together",
                    missing.join(", ")
                ),
            );
        }
        let vals = [0, 1, 2, 3].map(|i| c.real(&key(names[i]), multiples[i], DEFECT_MULTIPLE));
        match vals {
            [Some(o), Some(i), Some(b), Some(f)] => Some(set(bk, [o.v, i.v, b.v, f.v])),
            _ => None,
        }
    } else if geometry {
        geometry_orders(c, bk, raw)
    } else {
        if raw.shaft_rpm.is_none() && raw.shaft_hz.is_none() {
            c.err(bk, "expected a shaft speed (shaft_rpm or shaft_hz) and the defect multiples (bpfo, bpfi, bsf, ftf) or the geometry (balls, ball_diameter, pitch_diameter, contact_angle_deg)");
        }
        None
    };
    Some(BearingLayer {
        at: at(bk),
        shaft_hz,
        orders,
    })
}

/// Defect multiples from the geometry; the contact angle defaults to 0°.
fn geometry_orders(c: &mut Check<'_>, bk: &str, raw: &RawBearing) -> Val<[f64; 4]> {
    let key = |f: &str| format!("{bk}.{f}");
    let before = c.errors.len();
    for (name, missing) in [
        ("balls", raw.balls.is_none()),
        ("ball_diameter", raw.ball_diameter.is_none()),
        ("pitch_diameter", raw.pitch_diameter.is_none()),
    ] {
        if missing {
            c.err(bk, format!("missing {name}; the geometry needs balls, ball_diameter and pitch_diameter (contact_angle_deg defaults to 0)"));
        }
    }
    let balls = c.whole(&key("balls"), raw.balls, BALLS);
    let d = c.real(&key("ball_diameter"), raw.ball_diameter, BALL_DIAMETER);
    let pd = c.real(&key("pitch_diameter"), raw.pitch_diameter, PITCH_DIAMETER);
    let angle = c
        .real(
            &key("contact_angle_deg"),
            raw.contact_angle_deg,
            CONTACT_ANGLE_DEG,
        )
        .map_or(0.0, |s| s.v);
    if let (Some(d), Some(pd)) = (&d, &pd) {
        if d.v >= pd.v {
            c.err(
                &key("ball_diameter"),
                format!("{} must be smaller than pitch_diameter ({})", d.v, pd.v),
            );
        }
    }
    if c.errors.len() > before {
        return None;
    }
    let (balls, d, pd) = (balls?.v, d?.v, pd?.v);
    let (bpfo, bpfi, bsf, ftf) = Bearing::orders_from_geometry(balls, d, pd, angle);
    Some(set(bk, [bpfo, bpfi, bsf, ftf]))
}

/// `[metrics.<name>.waveform]` into `out`.
pub(super) fn waveform(c: &mut Check<'_>, wk: &str, raw: &RawWaveform, out: &mut MetricLayer) {
    let uk = format!("{wk}.input_unit");
    out.input_unit = match raw.input_unit.as_deref() {
        None => None,
        Some("g") => Some(set(&uk, AccelUnit::G)),
        Some("m/s2") => Some(set(&uk, AccelUnit::MetersPerSecond2)),
        Some(other) => {
            c.err(
                &uk,
                format!("{other:?} is not an acceleration unit; expected \"g\" or \"m/s2\""),
            );
            None
        }
    };
    let ek = format!("{wk}.envelope_band_hz");
    if let Some(band) = raw.envelope_band_hz.as_deref().and_then(|b| c.band(&ek, b)) {
        out.envelope_band_hz = Some(set(&ek, band));
    }
    for (name, b) in raw.bands.iter().flatten() {
        let bk = format!("{wk}.bands.{name}");
        if !band_name_ok(name) {
            c.err(
                &bk,
                format!("{name:?} is not a band name; use letters, digits, `_` and `-`"),
            );
        } else if let Some(band) = c.band(&bk, b) {
            out.bands.insert(name.clone(), set(&bk, band));
        }
    }
}

/// `[metrics.<name>.iso10816]`.
pub(super) fn iso(c: &mut Check<'_>, ik: &str, raw: &RawIso) -> IsoLayer {
    let gk = format!("{ik}.group");
    let group = match raw.group {
        None => None,
        Some(1) => Some(set(&gk, MachineGroup::Large)),
        Some(2) => Some(set(&gk, MachineGroup::Medium)),
        Some(n) => {
            c.err(
                &gk,
                format!("{n} is not an ISO 10816-3 group; expected 1 (above 300 kW) or 2 (15 to 300 kW)"),
            );
            None
        }
    };
    let fk = format!("{ik}.foundation");
    let foundation = match raw.foundation.as_deref() {
        None => None,
        Some("rigid") => Some(set(&fk, Foundation::Rigid)),
        Some("flexible") => Some(set(&fk, Foundation::Flexible)),
        Some(other) => {
            c.err(
                &fk,
                format!("{other:?} is not a foundation; expected \"rigid\" or \"flexible\""),
            );
            None
        }
    };
    if raw.group.is_none() && raw.foundation.is_none() {
        c.err(
            ik,
            "expected `group` (1 or 2) and `foundation` (\"rigid\" or \"flexible\")",
        );
    }
    IsoLayer {
        at: at(ik),
        group,
        foundation,
    }
}
