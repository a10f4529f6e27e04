//! What a run is asked to do: `Options` (from the library) or `RawOptions`
//! (text from the command line, parsed into `Options`), validated into a
//! `Plan` with every error reported at once.

use std::time::Duration;

use serde::Serialize;

use super::faults::{parse_duration, parse_faults, Fault};
use super::signals::{BLOCK_SAMPLES, SAMPLE_RATE_HZ};
use super::SimError;
use crate::model::EpochMs;

pub const DEFAULT_TOPIC: &str = "plant/line1/{device}/{metric}";
pub const DEFAULT_PREFIX: &str = "pump-";

/// Bounds that keep a run sane (and its tick period above zero).
const MAX_DEVICES: usize = 100_000;
const MAX_RATE_HZ: f64 = 10_000.0;
const MAX_SPEED: f64 = 1_000_000.0;
const MAX_BLOCK_SAMPLES: usize = 1 << 20;
const MIN_BLOCK_SAMPLES: usize = 16;

/// How the vibration stream is sent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Vibration {
    /// Velocity RMS in mm/s (10–1000 Hz), one JSON scalar per reading, as
    /// a wireless vibration sensor reports it.
    Rms,
    /// Blocks of acceleration samples in g, as CBOR
    /// `{"samples": [f32...], "sample_rate_hz": ..., "ts": <ms of the first sample>}`.
    Waveform {
        sample_rate_hz: f64,
        block_samples: usize,
    },
}

impl Vibration {
    /// Waveform blocks with the default sample rate and length.
    pub fn waveform() -> Vibration {
        Vibration::Waveform {
            sample_rate_hz: SAMPLE_RATE_HZ,
            block_samples: BLOCK_SAMPLES,
        }
    }

    pub fn as_str(&self) -> &'static str {
        match self {
            Vibration::Rms => "rms",
            Vibration::Waveform { .. } => "waveform",
        }
    }
}

#[derive(Debug, Clone)]
pub struct Options {
    /// `host:port` (`[::1]:1883` for IPv6).
    pub broker: String,
    /// Devices are named `{prefix}01` ... with at least two digits, more
    /// when the fleet needs them (`pump-0001` for 1000 devices).
    pub devices: usize,
    pub device_prefix: String,
    /// Topic template with `{device}` and `{metric}`.
    pub topic: String,
    /// Readings per second (wall time) per stream; each device has two
    /// streams, temperature and vibration.
    pub rate_hz: f64,
    /// Wall time to run; `None`: until stopped (or `count`).
    pub duration: Option<Duration>,
    /// Stop after this many messages in all (readings and garbage).
    pub count: Option<u64>,
    /// No pacing: publish as fast as the broker takes it (bounded by the
    /// clients' in-flight window and request queues). Event time still
    /// advances by `speed / rate_hz` seconds per tick.
    pub flat_out: bool,
    /// Plant (event) time per wall time: 60 makes a wall second a plant minute.
    pub speed: f64,
    /// Event time of the first reading. Default: when the number of ticks
    /// is known in advance (a paced run with a duration, or a count), early
    /// enough that the last reading is stamped no later than the start of
    /// the run (so an accelerated run never stamps the future); otherwise
    /// the start of the run. Rounded down to a whole second.
    pub start_ms: Option<EpochMs>,
    pub vibration: Vibration,
    pub faults: Vec<Fault>,
    /// 0 or 1.
    pub qos: u8,
    pub seed: u64,
    /// Client ids are this plus `-1`, `-2`, ... (one per MQTT connection).
    pub client_id: String,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            broker: "127.0.0.1:1883".into(),
            devices: 8,
            device_prefix: DEFAULT_PREFIX.into(),
            topic: DEFAULT_TOPIC.into(),
            rate_hz: 1.0,
            duration: None,
            count: None,
            flat_out: false,
            speed: 1.0,
            start_ms: None,
            vibration: Vibration::Rms,
            faults: Vec::new(),
            qos: 1,
            seed: 1,
            client_id: "vigil-simulate".into(),
        }
    }
}

/// The command line's options, as text where it needs parsing.
#[derive(Debug, Clone)]
pub struct RawOptions {
    pub broker: String,
    pub devices: usize,
    pub device_prefix: String,
    pub topic: String,
    pub rate_hz: f64,
    /// "60s", "2m", ...
    pub duration: Option<String>,
    pub count: Option<u64>,
    pub flat_out: bool,
    pub speed: f64,
    /// "rms" or "waveform".
    pub vibration: String,
    /// `kind:device@time`, comma-separated.
    pub faults: Option<String>,
    pub qos: u8,
    pub seed: u64,
}

impl RawOptions {
    /// Parse the text fields, reporting every error; `Options::plan` checks the rest.
    pub fn parse(self) -> Result<Options, SimError> {
        let mut errors = Vec::new();
        let duration = match self.duration.as_deref().map(parse_duration) {
            Some(Ok(d)) => Some(d),
            Some(Err(e)) => {
                errors.push(format!("--duration: {e}"));
                None
            }
            None => None,
        };
        let vibration = match self.vibration.as_str() {
            "rms" => Vibration::Rms,
            "waveform" => Vibration::waveform(),
            other => {
                errors.push(format!(
                    "--vibration: {other:?} is neither \"rms\" nor \"waveform\""
                ));
                Vibration::Rms
            }
        };
        let faults = match self.faults.as_deref().map(parse_faults) {
            Some(Ok(f)) => f,
            Some(Err(e)) => {
                errors.extend(e.into_iter().map(|e| format!("--faults: {e}")));
                Vec::new()
            }
            None => Vec::new(),
        };
        if !errors.is_empty() {
            return Err(SimError::Invalid(errors));
        }
        Ok(Options {
            broker: self.broker,
            devices: self.devices,
            device_prefix: self.device_prefix,
            topic: self.topic,
            rate_hz: self.rate_hz,
            duration,
            count: self.count,
            flat_out: self.flat_out,
            speed: self.speed,
            start_ms: None,
            vibration,
            faults,
            qos: self.qos,
            seed: self.seed,
            client_id: format!("vigil-simulate-{}", std::process::id()),
        })
    }
}

/// A validated run: what it will publish, where, and over which event times.
#[derive(Debug, Clone, Serialize)]
pub struct Plan {
    pub devices: usize,
    pub first_device: String,
    pub last_device: String,
    pub topic: String,
    pub broker: String,
    pub host: String,
    pub port: u16,
    pub vibration: &'static str,
    /// Waveform blocks: sample rate and samples per block.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_rate_hz: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub block_samples: Option<usize>,
    pub rate_hz: f64,
    pub speed: f64,
    pub flat_out: bool,
    pub qos: u8,
    pub seed: u64,
    /// Event time of tick 0.
    pub start_ms: EpochMs,
    /// Event time between ticks, ms: 1000 × speed / rate.
    pub step_ms: f64,
    /// Ticks a paced run with a duration makes (`None`: until stopped or
    /// the count is reached; flat out, the duration is a wall-clock limit).
    pub tick_limit: Option<u64>,
    /// Number of ticks, when known in advance: the tick limit, or the
    /// ticks that `count` messages take (fewer when devices fall silent).
    pub ticks: Option<u64>,
    /// Event time of the last of `ticks`.
    pub end_ms: Option<EpochMs>,
    /// Wall time limit (flat-out runs stop on it; paced runs stop after `ticks`).
    #[serde(skip)]
    pub duration: Option<Duration>,
    pub count: Option<u64>,
}

/// Name of device `index` (0-based) of a fleet of `devices`.
pub fn device_name(prefix: &str, index: usize, devices: usize) -> String {
    let width = devices.to_string().len().max(2);
    format!("{prefix}{:0width$}", index + 1)
}

/// `host:port` or `[v6 address]:port`.
pub fn parse_broker(text: &str) -> Result<(String, u16), String> {
    let bad = || format!("broker {text:?} is not HOST:PORT (e.g. 127.0.0.1:1883)");
    let (host, port) = text.rsplit_once(':').ok_or_else(bad)?;
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty() || host.contains(':') && !text.starts_with('[') {
        return Err(bad());
    }
    let port: u16 = port.parse().map_err(|_| bad())?;
    if port == 0 {
        return Err(bad());
    }
    Ok((host.to_string(), port))
}

/// The topic of one stream.
pub fn topic_of(template: &str, device: &str, metric: &str) -> String {
    template
        .replace("{device}", device)
        .replace("{metric}", metric)
}

fn check_template(template: &str) -> Result<(), String> {
    for placeholder in ["{device}", "{metric}"] {
        if template.matches(placeholder).count() != 1 {
            return Err(format!(
                "topic template {template:?} must name {placeholder} exactly once"
            ));
        }
    }
    let rest = template.replace("{device}", "").replace("{metric}", "");
    if let Some(c) = rest
        .chars()
        .find(|c| matches!(c, '+' | '#' | '{' | '}' | '\0'))
    {
        return Err(format!(
            "topic template {template:?} contains {c:?}; a topic to publish to has no wildcards and no other placeholders"
        ));
    }
    Ok(())
}

impl Options {
    pub fn device_names(&self) -> Vec<String> {
        (0..self.devices)
            .map(|i| device_name(&self.device_prefix, i, self.devices))
            .collect()
    }

    /// Messages one tick publishes at most: one per stream.
    fn per_tick(&self) -> u64 {
        2 * self.devices as u64
    }

    /// Validate everything (every error at once) and resolve the event
    /// times against `now_ms`.
    pub fn plan(&self, now_ms: EpochMs) -> Result<Plan, SimError> {
        let mut errors = Vec::new();
        let (host, port) = parse_broker(&self.broker).unwrap_or_else(|e| {
            errors.push(e);
            (String::new(), 0)
        });
        if self.devices == 0 || self.devices > MAX_DEVICES {
            errors.push(format!(
                "devices: {} is not a fleet; expected 1 to {MAX_DEVICES}",
                self.devices
            ));
        }
        let rate_ok = self.rate_hz.is_finite() && self.rate_hz > 0.0 && self.rate_hz <= MAX_RATE_HZ;
        if !rate_ok {
            errors.push(format!(
                "rate: {} readings/s per stream; expected a number above 0 and at most {MAX_RATE_HZ}",
                self.rate_hz
            ));
        }
        if !(self.speed.is_finite() && self.speed > 0.0 && self.speed <= MAX_SPEED) {
            errors.push(format!(
                "speed: {} is not a speed-up; expected a number above 0 and at most {MAX_SPEED}",
                self.speed
            ));
        }
        if self.duration == Some(Duration::ZERO) {
            errors.push("duration: must be above 0".into());
        }
        if self.count == Some(0) {
            errors.push("count: must be at least 1".into());
        }
        if self.qos > 1 {
            errors.push(format!("qos: {} is not 0 or 1", self.qos));
        }
        if self.client_id.is_empty() {
            errors.push("client id: must not be empty".into());
        }
        if let Vibration::Waveform {
            sample_rate_hz,
            block_samples,
        } = self.vibration
        {
            if !(1000.0..=1e6).contains(&sample_rate_hz) {
                errors.push(format!(
                    "waveform sample rate: {sample_rate_hz} Hz; expected 1000 to 1000000"
                ));
            }
            if !(MIN_BLOCK_SAMPLES..=MAX_BLOCK_SAMPLES).contains(&block_samples) {
                errors.push(format!(
                    "waveform block: {block_samples} samples; expected {MIN_BLOCK_SAMPLES} to {MAX_BLOCK_SAMPLES}"
                ));
            }
        }
        if let Err(e) = check_template(&self.topic) {
            errors.push(e);
        }
        let devices = self.devices.clamp(1, MAX_DEVICES);
        let first = device_name(&self.device_prefix, 0, devices);
        let last = device_name(&self.device_prefix, devices - 1, devices);
        if let Err(e) = crate::config::check_name("device", &first) {
            errors.push(format!("prefix: {e}"));
        }
        for f in &self.faults {
            let spec = format!("{}:{}@{}", f.kind, f.device, format_duration(f.at));
            let known = f
                .device
                .strip_prefix(self.device_prefix.as_str())
                .filter(|n| n.len() == first.len() - self.device_prefix.len())
                .filter(|n| n.bytes().all(|b| b.is_ascii_digit()))
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| (1..=self.devices).contains(&n));
            if !known {
                errors.push(format!(
                    "fault {spec}: {} is not in the fleet ({first} to {last})",
                    f.device
                ));
            }
            if let Some(d) = self.duration.filter(|d| f.at >= *d) {
                errors.push(format!(
                    "fault {spec}: {} is not before the end of the run ({})",
                    format_duration(f.at),
                    format_duration(d)
                ));
            }
        }
        if !errors.is_empty() {
            return Err(SimError::Invalid(errors));
        }

        let step_ms = 1000.0 * self.speed / self.rate_hz;
        let by_duration = self
            .duration
            .filter(|_| !self.flat_out)
            .map(|d| (d.as_secs_f64() * self.rate_hz).ceil().max(1.0) as u64);
        let by_count = self.count.map(|c| c.div_ceil(self.per_tick()));
        let ticks = match (by_duration, by_count) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let span_ms = |ticks: u64| ((ticks.saturating_sub(1)) as f64 * step_ms).round() as EpochMs;
        // On a whole second (earlier, never later): easier to read.
        let start_ms = self
            .start_ms
            .unwrap_or_else(|| (now_ms - ticks.map_or(0, span_ms)).div_euclid(1000) * 1000);
        Ok(Plan {
            devices,
            first_device: first,
            last_device: last,
            topic: self.topic.clone(),
            broker: self.broker.clone(),
            host,
            port,
            vibration: self.vibration.as_str(),
            sample_rate_hz: match self.vibration {
                Vibration::Waveform { sample_rate_hz, .. } => Some(sample_rate_hz),
                Vibration::Rms => None,
            },
            block_samples: match self.vibration {
                Vibration::Waveform { block_samples, .. } => Some(block_samples),
                Vibration::Rms => None,
            },
            rate_hz: self.rate_hz,
            speed: self.speed,
            flat_out: self.flat_out,
            qos: self.qos,
            seed: self.seed,
            start_ms,
            step_ms,
            tick_limit: by_duration,
            ticks,
            end_ms: ticks.map(|t| start_ms + span_ms(t)),
            duration: self.duration,
            count: self.count,
        })
    }
}

impl Plan {
    /// Event time of tick `k`.
    pub fn event_ms(&self, k: u64) -> EpochMs {
        self.start_ms + (k as f64 * self.step_ms).round() as EpochMs
    }

    /// Scheduled wall offset of tick `k`.
    pub fn wall(&self, k: u64) -> Duration {
        Duration::from_secs_f64(k as f64 / self.rate_hz)
    }

    /// First tick at or after the wall offset `at`.
    pub fn tick_at(&self, at: Duration) -> u64 {
        // A hair of tolerance: 0.3 s × 10/s is tick 3, not 3.0000000000000004 → 4.
        (at.as_secs_f64() * self.rate_hz - 1e-9).ceil().max(0.0) as u64
    }
}

/// A duration as the command line writes it ("30s", "1500ms").
pub fn format_duration(d: Duration) -> String {
    let ms = d.as_millis();
    for (unit, per) in [("h", 3_600_000), ("m", 60_000), ("s", 1_000)] {
        if ms != 0 && ms % per == 0 {
            return format!("{}{unit}", ms / per);
        }
    }
    format!("{ms}ms")
}

#[cfg(test)]
#[path = "options_tests.rs"]
mod tests;
