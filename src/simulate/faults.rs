//! Faults: the `kind:device@time` specs in, `Fault`s out; and what each
//! fault does to a signal, as plain functions of the plant (event) time
//! since its onset.

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::Serialize;

use super::rng::Rng;
use crate::model::EpochMs;

/// What goes wrong.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FaultKind {
    /// Outer-race bearing defect, growing: vibration.
    Bearing,
    /// Temperature ramp on top of the normal signal.
    Overheat,
    /// The temperature sensor repeats its last value exactly.
    Stuck,
    /// The device stops publishing (both streams).
    Silent,
    /// The temperature payloads become malformed.
    Garbage,
}

impl FaultKind {
    pub const ALL: [FaultKind; 5] = [
        FaultKind::Bearing,
        FaultKind::Overheat,
        FaultKind::Stuck,
        FaultKind::Silent,
        FaultKind::Garbage,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            FaultKind::Bearing => "bearing",
            FaultKind::Overheat => "overheat",
            FaultKind::Stuck => "stuck",
            FaultKind::Silent => "silent",
            FaultKind::Garbage => "garbage",
        }
    }

    /// The metric it affects (`*`: every metric of the device).
    pub fn metric(self) -> &'static str {
        match self {
            FaultKind::Bearing => super::VIBRATION,
            FaultKind::Silent => "*",
            FaultKind::Overheat | FaultKind::Stuck | FaultKind::Garbage => super::TEMPERATURE,
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for FaultKind {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        FaultKind::ALL
            .into_iter()
            .find(|k| k.as_str() == s)
            .ok_or_else(|| {
                let known: Vec<&str> = FaultKind::ALL.iter().map(|k| k.as_str()).collect();
                format!(
                    "unknown fault kind {s:?}; expected one of {}",
                    known.join(", ")
                )
            })
    }
}

/// A fault injected into one device from a wall-clock offset of the run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Fault {
    pub kind: FaultKind,
    pub device: String,
    /// Offset from the start of the run (wall time, as scheduled: in a
    /// flat-out run, tick number / rate).
    pub at: Duration,
}

impl FromStr for Fault {
    type Err = String;

    /// `kind:device@time`, e.g. `bearing:pump-03@30s`.
    fn from_str(spec: &str) -> Result<Self, String> {
        let shape = || format!("fault {spec:?} is not kind:device@time (e.g. bearing:pump-03@30s)");
        let (kind, rest) = spec.split_once(':').ok_or_else(shape)?;
        let (device, at) = rest.rsplit_once('@').ok_or_else(shape)?;
        let kind: FaultKind = kind
            .trim()
            .parse()
            .map_err(|e| format!("fault {spec:?}: {e}"))?;
        let device = device.trim();
        if device.is_empty() {
            return Err(shape());
        }
        let at = parse_duration(at.trim()).map_err(|e| format!("fault {spec:?}: {e}"))?;
        Ok(Fault {
            kind,
            device: device.to_string(),
            at,
        })
    }
}

/// A comma-separated list of fault specs; every bad one is reported.
pub fn parse_faults(list: &str) -> Result<Vec<Fault>, Vec<String>> {
    let mut faults = Vec::new();
    let mut errors = Vec::new();
    for spec in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        match spec.parse() {
            Ok(f) => faults.push(f),
            Err(e) => errors.push(e),
        }
    }
    if errors.is_empty() {
        Ok(faults)
    } else {
        Err(errors)
    }
}

/// "500ms", "30s", "2m", "1h": a whole number and a unit, as in the device files.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!("{text:?} is not a duration; expected a whole number and a unit, such as \"500ms\", \"30s\", \"2m\" or \"1h\"")
    };
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let ms_per: u64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(bad()),
    };
    number
        .parse::<u64>()
        .ok()
        .and_then(|n| n.checked_mul(ms_per))
        .map(Duration::from_millis)
        .ok_or_else(bad)
}

// ------------------------------------------------------------ bearing

/// A developing defect doubles its vibration every this many plant minutes
/// (a spall growing under load, compressed into minutes so that a demo at
/// 60× shows it), until it reaches the cap.
pub const BEARING_DOUBLING_MIN: f64 = 10.0;
/// Velocity RMS (mm/s) the defect adds at onset and at most. It adds to the
/// healthy machine's in quadrature (independent sources: powers add), so a
/// pump at 1.8 mm/s reaches 2.8 (zone C of ISO 10816-3 group 2) about 8
/// plant minutes after onset, 4.5 (zone D) after about 18, and levels off
/// near 7.2.
pub const BEARING_ONSET_MM_S: f64 = 1.2;
pub const BEARING_MAX_MM_S: f64 = 7.0;
/// Peak acceleration (g) of each defect impulse at onset and at most
/// (waveform mode).
pub const IMPULSE_ONSET_G: f64 = 0.15;
pub const IMPULSE_MAX_G: f64 = 3.0;

/// 2^(t / doubling time): the growth of a defect `elapsed_min` plant
/// minutes after onset.
fn growth(elapsed_min: f64) -> f64 {
    (elapsed_min.max(0.0) / BEARING_DOUBLING_MIN).exp2()
}

/// Velocity RMS the defect adds, mm/s.
pub fn bearing_velocity_mm_s(elapsed_min: f64) -> f64 {
    (BEARING_ONSET_MM_S * growth(elapsed_min)).min(BEARING_MAX_MM_S)
}

/// Peak of each defect impulse, g.
pub fn bearing_impulse_g(elapsed_min: f64) -> f64 {
    (IMPULSE_ONSET_G * growth(elapsed_min)).min(IMPULSE_MAX_G)
}

/// The healthy and the defect's velocity RMS together (powers add).
pub fn with_defect_mm_s(healthy_mm_s: f64, defect_mm_s: f64) -> f64 {
    healthy_mm_s.hypot(defect_mm_s)
}

// ------------------------------------------------------------ overheating

/// Rise of an overheating bearing, degC per plant minute (a failing
/// lubricant film: friction heat outruns cooling).
pub const OVERHEAT_C_PER_MIN: f64 = 1.0;
/// The ramp stops this far above normal (the machine would trip about there).
pub const OVERHEAT_MAX_RISE_C: f64 = 70.0;

/// `normal_c` with the ramp of an overheat `elapsed_min` plant minutes old.
/// At the top the ramp stops but the signal keeps its noise and cycle,
/// as a real sensor's does (a flat line would look like a stuck sensor).
pub fn overheat_c(normal_c: f64, elapsed_min: f64) -> f64 {
    normal_c + (OVERHEAT_C_PER_MIN * elapsed_min.max(0.0)).min(OVERHEAT_MAX_RISE_C)
}

// ------------------------------------------------------------ garbage

/// The malformed payloads a garbage fault sends, in turn.
pub const GARBAGE_KINDS: [&str; 4] = [
    "truncated JSON",
    "non-numeric value",
    "random bytes",
    "NaN text",
];

/// The `n`-th malformed temperature payload (0-based) of a garbage fault.
/// Each is refused by vigil's decoder: JSON cut short; a value that is a
/// string; bytes starting with 0xFF (a CBOR "break" outside an
/// indefinite-length item, ill-formed by RFC 8949 §3.2.1); `NaN`, which
/// decimal text may spell but a reading may not be.
pub fn garbage_payload(n: u64, t_ms: EpochMs, rng: &mut Rng) -> Vec<u8> {
    match n % GARBAGE_KINDS.len() as u64 {
        0 => {
            let full = format!(
                "{{\"value\": {:.2}, \"ts\": {t_ms}}}",
                rng.range(40.0, 50.0)
            );
            let cut = 5 + rng.below(full.len() as u64 - 6) as usize;
            full.as_bytes()[..cut].to_vec()
        }
        1 => format!("{{\"value\": \"hot\", \"ts\": {t_ms}}}").into_bytes(),
        2 => {
            let len = 8 + rng.below(24) as usize;
            let mut bytes: Vec<u8> = (0..len).map(|_| rng.next_u64() as u8).collect();
            bytes[0] = 0xff;
            bytes
        }
        _ => b"NaN".to_vec(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{PayloadFormat, TopicIds};
    use crate::ingest::decode::decode;

    #[test]
    fn fault_specs_parse_and_bad_ones_are_all_reported() {
        let faults =
            parse_faults("bearing:pump-03@30s, overheat:pump-05@2m,silent:pump-04@500ms").unwrap();
        assert_eq!(
            faults,
            vec![
                Fault {
                    kind: FaultKind::Bearing,
                    device: "pump-03".into(),
                    at: Duration::from_secs(30)
                },
                Fault {
                    kind: FaultKind::Overheat,
                    device: "pump-05".into(),
                    at: Duration::from_secs(120)
                },
                Fault {
                    kind: FaultKind::Silent,
                    device: "pump-04".into(),
                    at: Duration::from_millis(500)
                },
            ]
        );
        assert_eq!(parse_faults("").unwrap(), vec![]);
        let errors = parse_faults("melt:pump-01@3s,bearing:pump-01,stuck:pump-02@soon,garbage:@1s")
            .unwrap_err();
        assert_eq!(errors.len(), 4, "{errors:?}");
        assert!(
            errors[0].contains("unknown fault kind \"melt\""),
            "{}",
            errors[0]
        );
        assert!(errors[0].contains("bearing, overheat, stuck, silent, garbage"));
        assert!(errors[1].contains("kind:device@time"), "{}", errors[1]);
        assert!(
            errors[2].contains("\"soon\" is not a duration"),
            "{}",
            errors[2]
        );
        assert!(errors[3].contains("kind:device@time"), "{}", errors[3]);
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("1h"), Ok(Duration::from_secs(3600)));
        for bad in [
            "",
            "s",
            "10",
            "1.5s",
            "-3s",
            "10 s",
            "99999999999999999999d",
        ] {
            assert!(parse_duration(bad).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn overheat_ramps_one_degree_a_plant_minute_up_to_the_ceiling() {
        assert_eq!(overheat_c(45.0, 0.0), 45.0);
        assert!((overheat_c(45.0, 10.0) - 55.0).abs() < 1e-9);
        assert!((overheat_c(45.0, 30.5) - 75.5).abs() < 1e-9);
        assert_eq!(overheat_c(45.0, 500.0), 45.0 + OVERHEAT_MAX_RISE_C);
        // At the top of the ramp the sensor's noise goes on.
        assert_eq!(overheat_c(45.3, 500.0), 45.3 + OVERHEAT_MAX_RISE_C);
        // Never cooler than normal.
        assert_eq!(overheat_c(130.0, -5.0), 130.0);
    }

    #[test]
    fn bearing_defect_doubles_every_ten_plant_minutes_up_to_its_cap() {
        let v0 = bearing_velocity_mm_s(0.0);
        assert!((bearing_velocity_mm_s(10.0) / v0 - 2.0).abs() < 1e-9);
        assert_eq!(bearing_velocity_mm_s(1000.0), BEARING_MAX_MM_S);
        assert!((bearing_impulse_g(20.0) / bearing_impulse_g(0.0) - 4.0).abs() < 1e-9);
        assert_eq!(bearing_impulse_g(1000.0), IMPULSE_MAX_G);
    }

    #[test]
    fn every_garbage_payload_is_refused_by_the_decoder() {
        let ids = TopicIds {
            device: Some("pump-01"),
            metric: Some("temperature"),
        };
        let mut rng = Rng::new(9);
        for n in 0..400 {
            let p = garbage_payload(n, 1_795_219_200_000 + n as i64, &mut rng);
            let got = decode(PayloadFormat::Auto, ids, &p, 0);
            assert!(
                got.is_err(),
                "garbage {n} ({}) {:?} was accepted: {got:?}",
                GARBAGE_KINDS[n as usize % 4],
                String::from_utf8_lossy(&p)
            );
        }
    }
}
