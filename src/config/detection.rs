//! What detection does with one (device, metric) stream, after every device
//! file that matches has been merged and validated: the window, the features
//! to compute on waveform blocks, the detectors and the alert hysteresis.
//!
//! These are the validated types; the TOML layer that produces them is in
//! `devices.rs`.

/// Everything detection needs for one stream.
#[derive(Debug, Clone, PartialEq)]
pub struct StreamSettings {
    /// Unit of the readings as the sensor sends them (shown in alerts).
    pub unit: Option<String>,
    pub window: WindowSpec,
    /// How far behind the newest event time a reading may arrive and still
    /// count. The watermark is `newest event time - allowed_lateness_ms`.
    pub allowed_lateness_ms: i64,
    /// Raise a "sensor silent" alert when no reading has arrived for this long
    /// (processing time). `None`: never.
    pub silent_after_ms: Option<i64>,
    /// Raise an alert after this many consecutive anomalous windows (>= 1).
    pub raise_after: u32,
    /// Clear it after this many consecutive normal windows (>= 1), and
    /// once the stream has been normal for as long as it was abnormal, up
    /// to `hold_off_ms`.
    pub clear_after: u32,
    /// An alert raised again within this long of clearing reopens the same
    /// episode (same id) instead of starting a new one. 0: off.
    pub hold_off_ms: i64,
    /// Settings for waveform blocks (ignored for scalar streams).
    pub waveform: WaveformSettings,
    /// Static warning/alarm levels, one entry per feature.
    pub limits: Vec<Limit>,
    /// ISO 10816-3 zones applied to `velocity_rms`.
    pub iso10816: Option<IsoZones>,
    /// Rate-of-change limits, one entry per feature.
    pub rates: Vec<RateLimit>,
    /// The learned baseline; `None` when disabled.
    pub baseline: Option<BaselineSettings>,
}

/// Window length and hop. Hop == length is a tumbling window; a shorter hop
/// gives sliding windows that overlap.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum WindowSpec {
    /// Event-time windows aligned to the epoch: `[k*hop, k*hop + length)`.
    Time { length_ms: i64, hop_ms: i64 },
    /// Windows of `length` readings, a new one every `hop` readings.
    Count { length: u32, hop: u32 },
}

#[derive(Debug, Clone, PartialEq)]
pub struct WaveformSettings {
    /// Unit of acceleration samples.
    pub input_unit: AccelUnit,
    /// Spectral band energies to report, as features `band.<name>`.
    pub bands: Vec<Band>,
    /// Bearing defect frequencies to watch in the envelope spectrum, as
    /// features `envelope.bpfo`, `envelope.bpfi`, `envelope.bsf`, `envelope.ftf`.
    pub bearing: Option<Bearing>,
    /// Band-pass applied before the envelope (Hilbert) demodulation, in Hz.
    /// `None`: from a quarter of the Nyquist frequency up to 0.9 of it.
    pub envelope_band_hz: Option<(f64, f64)>,
}

impl Default for WaveformSettings {
    fn default() -> Self {
        WaveformSettings {
            input_unit: AccelUnit::G,
            bands: Vec::new(),
            bearing: None,
            envelope_band_hz: None,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AccelUnit {
    /// Standard gravity, 9.80665 m/s².
    G,
    MetersPerSecond2,
}

impl AccelUnit {
    /// Factor from this unit to m/s².
    pub fn to_m_s2(self) -> f64 {
        match self {
            AccelUnit::G => 9.80665,
            AccelUnit::MetersPerSecond2 => 1.0,
        }
    }
}

#[derive(Debug, Clone, PartialEq)]
pub struct Band {
    pub name: String,
    pub from_hz: f64,
    pub to_hz: f64,
}

/// A rolling-element bearing: shaft speed and defect frequencies as
/// multiples of it (from the bearing's data sheet, or from its geometry).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bearing {
    pub shaft_hz: f64,
    /// Ball pass frequency, outer race.
    pub bpfo: f64,
    /// Ball pass frequency, inner race.
    pub bpfi: f64,
    /// Ball spin frequency.
    pub bsf: f64,
    /// Fundamental train (cage) frequency.
    pub ftf: f64,
}

impl Bearing {
    /// Defect orders from geometry (the standard kinematic formulas):
    /// with d = ball diameter, D = pitch diameter, φ = contact angle, n = balls,
    /// FTF = ½(1 − d/D·cosφ), BPFO = n·FTF, BPFI = n/2·(1 + d/D·cosφ),
    /// BSF = D/(2d)·(1 − (d/D·cosφ)²).
    pub fn orders_from_geometry(
        balls: u32,
        ball_diameter: f64,
        pitch_diameter: f64,
        contact_angle_deg: f64,
    ) -> (f64, f64, f64, f64) {
        let r = ball_diameter / pitch_diameter * contact_angle_deg.to_radians().cos();
        let ftf = 0.5 * (1.0 - r);
        let n = balls as f64;
        let bpfo = n * ftf;
        let bpfi = n / 2.0 * (1.0 + r);
        let bsf = pitch_diameter / (2.0 * ball_diameter) * (1.0 - r * r);
        (bpfo, bpfi, bsf, ftf)
    }
}

/// Warning and alarm levels on one feature. At least one level is set;
/// when both are set on one side, the warning is the milder one.
#[derive(Debug, Clone, PartialEq)]
pub struct Limit {
    pub feature: String,
    pub warning_above: Option<f64>,
    pub alarm_above: Option<f64>,
    pub warning_below: Option<f64>,
    pub alarm_below: Option<f64>,
}

/// ISO 10816-3 machine group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineGroup {
    /// Group 1: large machines, above 300 kW.
    Large,
    /// Group 2: medium machines, 15 to 300 kW.
    Medium,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Foundation {
    Rigid,
    Flexible,
}

/// ISO 10816-3 zone boundaries for broadband velocity RMS (mm/s, 10-1000 Hz).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct IsoZones {
    pub group: MachineGroup,
    pub foundation: Foundation,
    /// Zone A/B boundary (informational).
    pub a_b: f64,
    /// Zone B/C boundary: zone C raises a warning.
    pub b_c: f64,
    /// Zone C/D boundary: zone D raises an alarm.
    pub c_d: f64,
}

impl IsoZones {
    /// The boundaries of ISO 10816-3 (also 20816-3), table A.1/A.2.
    pub fn new(group: MachineGroup, foundation: Foundation) -> IsoZones {
        let (a_b, b_c, c_d) = match (group, foundation) {
            (MachineGroup::Large, Foundation::Rigid) => (2.3, 4.5, 7.1),
            (MachineGroup::Large, Foundation::Flexible) => (3.5, 7.1, 11.0),
            (MachineGroup::Medium, Foundation::Rigid) => (1.4, 2.8, 4.5),
            (MachineGroup::Medium, Foundation::Flexible) => (2.3, 4.5, 7.1),
        };
        IsoZones {
            group,
            foundation,
            a_b,
            b_c,
            c_d,
        }
    }
}

/// Limits on how fast a feature may change, in its unit per minute, measured
/// between consecutive windows (and by the in-window least-squares slope).
#[derive(Debug, Clone, PartialEq)]
pub struct RateLimit {
    pub feature: String,
    /// Rising faster than this (units/min, positive) is anomalous.
    pub warning_rise_per_min: Option<f64>,
    pub alarm_rise_per_min: Option<f64>,
    /// Falling faster than this (units/min, positive number) is anomalous.
    pub warning_fall_per_min: Option<f64>,
    pub alarm_fall_per_min: Option<f64>,
}

/// The learned baseline: no thresholds to set, only how sure it must be.
#[derive(Debug, Clone, PartialEq)]
pub struct BaselineSettings {
    /// Features to learn (e.g. `mean`, `std`, `velocity_rms`, `kurtosis`).
    pub features: Vec<String>,
    /// Windows to learn from before scoring.
    pub warmup_windows: u32,
    /// Weight of a new window in the moving level and spread (0 < alpha < 1).
    pub alpha: f64,
    /// Robust z-score for a warning and for an alarm (alarm >= warning).
    pub warning_z: f64,
    pub alarm_z: f64,
    /// CUSUM reference value k and decision interval h, in units of the
    /// learned spread (Page 1954; k = 0.5, h = 5 detect a one-sigma shift
    /// within about ten windows). `None` disables the drift detector.
    pub cusum: Option<(f64, f64)>,
    /// Volatility test: a window whose spread is this many times the learned
    /// within-window spread (F test on the variance ratio) is anomalous.
    /// `None` disables it.
    pub volatility_ratio: Option<f64>,
}

impl Default for BaselineSettings {
    fn default() -> Self {
        BaselineSettings {
            features: vec!["mean".into()],
            warmup_windows: 30,
            alpha: 0.02,
            warning_z: 6.0,
            alarm_z: 10.0,
            cusum: Some((0.5, 12.0)),
            volatility_ratio: Some(4.0),
        }
    }
}

impl Default for StreamSettings {
    /// What applies to a stream no device file describes: one-minute tumbling
    /// windows and the learned baseline on the mean.
    fn default() -> Self {
        StreamSettings {
            unit: None,
            window: WindowSpec::Time {
                length_ms: 60_000,
                hop_ms: 60_000,
            },
            allowed_lateness_ms: 5_000,
            silent_after_ms: None,
            raise_after: 2,
            clear_after: 3,
            hold_off_ms: DEFAULT_HOLD_OFF_MS,
            waveform: WaveformSettings::default(),
            limits: Vec::new(),
            iso10816: None,
            rates: Vec::new(),
            baseline: Some(BaselineSettings::default()),
        }
    }
}

pub use crate::model::Severity;

/// An hour: a condition back within the hour is the same problem.
pub const DEFAULT_HOLD_OFF_MS: i64 = 3_600_000;

/// Features computed for every window. Waveform streams add `velocity_rms`,
/// `band.<name>` and `envelope.<defect>`.
pub const SCALAR_FEATURES: &[&str] = &[
    "count",
    "mean",
    "min",
    "max",
    "std",
    "rms",
    "peak",
    "peak_to_peak",
    "crest_factor",
    "kurtosis",
    "skewness",
    "slope",
];

/// The defect names used in `envelope.<defect>` features.
pub const DEFECTS: &[&str] = &["bpfo", "bpfi", "bsf", "ftf"];
