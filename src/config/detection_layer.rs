//! What one device file sets for detection, validated on its own: every
//! value with the key path it was set at, so that merging
//! (`detection_merge.rs`) can blame the right file and line. Also the
//! vocabulary shared by the checks: durations, feature names.

use std::collections::BTreeMap;
use std::fmt;

use super::detection::{AccelUnit, Foundation, MachineGroup, DEFECTS, SCALAR_FEATURES};
use super::diag::{ConfigError, Source};
use super::ranges::{Real, Span, Whole, BAND_HZ};

/// Where a value was set: its key path in its file and, once merged, the
/// file (index in the registry) and the order in which it was applied.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct At {
    pub key: String,
    pub file: usize,
    pub seq: usize,
}

/// A value a file sets, and where.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Set<T> {
    pub v: T,
    pub at: At,
}

pub(super) type Val<T> = Option<Set<T>>;

/// A window length or hop: a duration or a number of readings.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Extent {
    Ms(i64),
    Readings(u32),
}

/// What one device file sets for detection.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct FileLayer {
    /// The file's `match` or a whole metric table was refused: checks
    /// across files skip every merge this file is part of.
    pub tainted: bool,
    pub raise_after: Val<u32>,
    pub clear_after: Val<u32>,
    pub hold_off_ms: Val<i64>,
    /// Metric tables, least specific glob first.
    pub metrics: Vec<MetricLayer>,
}

/// One `[metrics."<glob>"]` table, or the merge of several.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct MetricLayer {
    /// The table's glob.
    pub name: String,
    pub at: At,
    /// What a refused key of this table may have left out: the first key
    /// inside the table (`window` for every window and hop key, `bearing`,
    /// `baseline`, ...), or `*` for all. Checks across files on a merge with
    /// this table skip problems of those topics: the missing value may be
    /// what they would look for.
    pub refused: Vec<String>,
    pub unit: Val<String>,
    pub window: Val<Extent>,
    pub hop: Val<Extent>,
    pub allowed_lateness_ms: Val<i64>,
    /// `Some(None)`: "never", overriding a less specific file.
    pub silent_after_ms: Val<Option<i64>>,
    pub raise_after: Val<u32>,
    pub clear_after: Val<u32>,
    pub hold_off_ms: Val<i64>,
    pub limits: BTreeMap<String, Levels>,
    pub rates: BTreeMap<String, Levels>,
    pub baseline: Option<BaselineLayer>,
    pub input_unit: Val<AccelUnit>,
    pub envelope_band_hz: Val<(f64, f64)>,
    pub bands: BTreeMap<String, Set<(f64, f64)>>,
    pub bearing: Option<BearingLayer>,
    pub iso: Option<IsoLayer>,
}

/// Warning and alarm levels in two directions: `above`/`below` for limits,
/// `rise`/`fall` per minute for rates.
#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct Levels {
    pub at: At,
    pub warning_up: Val<f64>,
    pub alarm_up: Val<f64>,
    pub warning_down: Val<f64>,
    pub alarm_down: Val<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct BaselineLayer {
    pub at: At,
    pub enabled: Val<bool>,
    pub features: Val<Vec<String>>,
    pub warmup_windows: Val<u32>,
    pub alpha: Val<f64>,
    pub warning_z: Val<f64>,
    pub alarm_z: Val<f64>,
    pub cusum: Val<bool>,
    pub cusum_k: Val<f64>,
    pub cusum_h: Val<f64>,
    pub volatility: Val<bool>,
    pub volatility_ratio: Val<f64>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct BearingLayer {
    pub at: At,
    pub shaft_hz: Val<f64>,
    /// bpfo, bpfi, bsf, ftf; from the multiples or the geometry. Blamed at
    /// the bearing table.
    pub orders: Val<[f64; 4]>,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub(super) struct IsoLayer {
    pub at: At,
    pub group: Val<MachineGroup>,
    pub foundation: Val<Foundation>,
}

/// Why a feature name can never be valid, if it cannot. Whether a `band.`
/// is defined or an `envelope.` has a bearing depends on the merge.
pub(super) fn check_feature(name: &str) -> Result<(), String> {
    let ok = SCALAR_FEATURES.contains(&name)
        || name == "velocity_rms"
        || name.strip_prefix("band.").is_some_and(band_name_ok)
        || name
            .strip_prefix("envelope.")
            .is_some_and(|d| DEFECTS.contains(&d));
    if ok {
        return Ok(());
    }
    Err(format!(
        "unknown feature {name:?}; expected one of {}, velocity_rms, band.<name> (a band in `waveform.bands`) or envelope.{} (with a `bearing`)",
        SCALAR_FEATURES.join(", "),
        DEFECTS.join("|")
    ))
}

pub(super) fn band_name_ok(name: &str) -> bool {
    !name.is_empty()
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// "500ms", "10s", "5m", "1h", "2d" in milliseconds.
pub(super) fn parse_duration_ms(text: &str) -> Result<i64, String> {
    let expected =
        "expected a whole number and a unit, such as \"500ms\", \"10s\", \"5m\", \"1h\" or \"2d\"";
    let digits = text
        .find(|c: char| !c.is_ascii_digit())
        .unwrap_or(text.len());
    let (number, unit) = text.split_at(digits);
    let factor: i64 = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => return Err(format!("{text:?} is not a duration; {expected}")),
    };
    number
        .parse::<i64>()
        .ok()
        .and_then(|n| n.checked_mul(factor))
        .ok_or_else(|| format!("{text:?} is not a duration; {expected}"))
}

/// Milliseconds in the largest unit that divides them ("90s", "5m").
pub(super) fn format_ms(ms: i64) -> String {
    for (unit, factor) in [
        ("d", 86_400_000),
        ("h", 3_600_000),
        ("m", 60_000),
        ("s", 1_000),
    ] {
        if ms != 0 && ms % factor == 0 {
            return format!("{}{unit}", ms / factor);
        }
    }
    format!("{ms}ms")
}

/// Validates one file's keys, reporting each bad one and leaving it unset.
pub(super) struct Check<'a> {
    pub src: &'a Source,
    pub errors: &'a mut Vec<ConfigError>,
}

impl Check<'_> {
    pub(super) fn err(&mut self, key: &str, msg: impl fmt::Display) {
        self.errors.push(self.src.at(key, msg));
    }

    /// A duration within `span`, in milliseconds.
    pub(super) fn duration(&mut self, key: &str, text: Option<&String>, span: Span) -> Option<i64> {
        match span.parse(text?) {
            Ok(ms) => Some(ms),
            Err(e) => {
                self.err(key, e);
                None
            }
        }
    }

    /// A whole number within `range`, as `u32`.
    pub(super) fn whole(&mut self, key: &str, raw: Option<i64>, range: Whole) -> Val<u32> {
        // Every range of a device file fits a u32.
        let n = range
            .check(raw?.into())
            .and_then(|n| u32::try_from(n).map_err(|e| e.to_string()));
        match n {
            Ok(n) => Some(set(key, n)),
            Err(e) => {
                self.err(key, e);
                None
            }
        }
    }

    /// A number within `range`.
    pub(super) fn real(&mut self, key: &str, raw: Option<f64>, range: Real) -> Val<f64> {
        match range.check(raw?) {
            Ok(x) => Some(set(key, x)),
            Err(e) => {
                self.err(key, e);
                None
            }
        }
    }

    /// `[from_hz, to_hz]` with from < to, both within `BAND_HZ`.
    pub(super) fn band(&mut self, key: &str, raw: &[f64]) -> Option<(f64, f64)> {
        match *raw {
            [from, to] if BAND_HZ.contains(from) && BAND_HZ.contains(to) && from < to => {
                Some((from, to))
            }
            _ => {
                self.err(
                    key,
                    format!("{raw:?} is not a band; expected [from_hz, to_hz] with from_hz < to_hz, each {BAND_HZ}"),
                );
                None
            }
        }
    }
}

pub(super) fn set<T>(key: &str, v: T) -> Set<T> {
    Set {
        v,
        at: At {
            key: key.to_string(),
            ..At::default()
        },
    }
}

pub(super) fn at(key: &str) -> At {
    At {
        key: key.to_string(),
        ..At::default()
    }
}
