//! `vigil backtest`: recorded series in, through the same engine as
//! `vigil run` (windows, detectors, alert state), alerts and scores out.
//!
//! Processing time is the event time of the reading being played, so idle
//! windows and silent sensors behave as they would have live.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::config::{ConfigErrors, DeviceRegistry};
use crate::detect::{Engine, Output};
use crate::model::{
    human_duration, rfc3339, AlertEvent, AlertKind, EpochMs, Reading, Severity, Value, Waveform,
};

use super::input::{cut_blocks, read_series, InputError, ScalarRow, Series};
use super::labels::load_labels;
use super::nab::{score_file, write_nab_results, Detections, FileScore};

#[derive(Debug, thiserror::Error)]
pub enum BacktestError {
    #[error("{0}")]
    Config(#[from] ConfigErrors),
    #[error("{0}")]
    Input(#[from] InputError),
    #[error("{0}")]
    Usage(String),
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

#[derive(Debug, Clone)]
pub struct Options {
    pub device_file: PathBuf,
    pub metric: Option<String>,
    pub sample_rate_hz: Option<f64>,
    pub block_seconds: f64,
    pub labels: Option<PathBuf>,
    pub nab_out: Option<PathBuf>,
    pub inputs: Vec<PathBuf>,
}

/// One alert as the backtest reports it.
#[derive(Debug, Clone, Serialize)]
pub struct ReportAlert {
    pub id: String,
    /// RFC 3339, UTC.
    pub raised_at: String,
    pub cleared_at: Option<String>,
    pub severity: String,
    pub detector: String,
    pub feature: String,
    pub value: f64,
    pub score: f64,
    /// The input file the raising window's readings came from.
    pub source: String,
    pub message: String,
    /// `raised_at` in milliseconds since the epoch.
    pub raised_ms: EpochMs,
}

#[derive(Debug, Clone, Serialize)]
pub struct InputReport {
    pub file: String,
    pub readings: usize,
    pub alerts: usize,
    /// Present with `--labels` when the file has an entry there.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub labels: Option<LabelReport>,
}

#[derive(Debug, Clone, Serialize)]
pub struct LabelReport {
    pub windows: usize,
    pub detected: usize,
    pub missed: usize,
    pub false_positives: usize,
    /// Seconds from each detected window's start to its first alert.
    pub delays_s: Vec<f64>,
    /// NAB-style score, standard profile: 100 perfect, 0 never firing.
    pub nab_score: Option<f64>,
    /// NAB raw scores of this detector, of the one that never fires and of
    /// a perfect one: a corpus is scored by summing them over its files
    /// before normalising (`scripts/evaluate`).
    pub nab_raw: f64,
    pub nab_null: f64,
    pub nab_perfect: f64,
}

impl LabelReport {
    fn from_score(s: &FileScore) -> LabelReport {
        LabelReport {
            windows: s.windows,
            detected: s.detected,
            missed: s.missed,
            false_positives: s.false_positives,
            delays_s: s.delays_ms.iter().map(|d| *d as f64 / 1000.0).collect(),
            nab_score: s.normalized(),
            nab_raw: s.raw,
            nab_null: s.null,
            nab_perfect: s.perfect,
        }
    }
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub device: String,
    pub metric: String,
    pub alerts: Vec<ReportAlert>,
    pub inputs: Vec<InputReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub total: Option<LabelReport>,
    /// Readings behind their window's watermark (counted, not used).
    pub late: u64,
    /// Readings stamped further ahead of the recording's clock than
    /// `detect.max_future_skew_ms` allows by default (counted, not used).
    pub skewed: u64,
}

/// One input, turned into readings.
struct Played {
    path: PathBuf,
    readings: Vec<Reading>,
    rows: Vec<ScalarRow>,
}

/// The device name and metric a device file's settings are played under.
fn stream_names(
    registry: &DeviceRegistry,
    metric: Option<&str>,
) -> Result<(String, String), BacktestError> {
    let class = registry
        .classes()
        .last()
        .ok_or_else(|| BacktestError::Usage("the device file describes no device".into()))?;
    // The pattern taken literally matches itself (and every less specific file).
    let device = class.pattern.clone();
    let metric = match metric {
        Some(m) => m.to_string(),
        None => {
            let named: Vec<&String> = class
                .metrics
                .keys()
                .filter(|m| !m.contains(['*', '?']))
                .collect();
            match named.as_slice() {
                [one] => (*one).clone(),
                [] => "value".to_string(),
                many => {
                    return Err(BacktestError::Usage(format!(
                        "the device file has several metrics ({}); choose one with --metric",
                        many.iter()
                            .map(|s| s.as_str())
                            .collect::<Vec<_>>()
                            .join(", ")
                    )))
                }
            }
        }
    };
    Ok((device, metric))
}

fn play(opts: &Options, device: &str, metric: &str) -> Result<Vec<Played>, BacktestError> {
    let mut out = Vec::new();
    let mut next_start: EpochMs = 0;
    for path in &opts.inputs {
        let series = read_series(path)?;
        let played = match series {
            Series::Scalar { rows } => {
                let readings = rows
                    .iter()
                    .map(|r| Reading {
                        device: device.to_string(),
                        metric: metric.to_string(),
                        time_ms: r.time_ms,
                        value: Value::Scalar(r.value),
                    })
                    .collect();
                Played {
                    path: path.clone(),
                    readings,
                    rows,
                }
            }
            Series::Waveform { samples } => {
                let rate = opts.sample_rate_hz.ok_or_else(|| {
                    BacktestError::Usage(format!(
                        "{} holds waveform samples: --sample-rate is required",
                        path.display()
                    ))
                })?;
                let blocks = cut_blocks(&samples, rate, opts.block_seconds, next_start);
                let block_ms = (opts.block_seconds * 1000.0).round() as EpochMs;
                if let Some((t, _)) = blocks.last() {
                    next_start = t + block_ms;
                }
                let readings = blocks
                    .into_iter()
                    .map(|(t, samples)| Reading {
                        device: device.to_string(),
                        metric: metric.to_string(),
                        time_ms: t,
                        value: Value::Waveform(Waveform {
                            sample_rate_hz: rate,
                            samples,
                        }),
                    })
                    .collect();
                Played {
                    path: path.clone(),
                    readings,
                    rows: Vec::new(),
                }
            }
        };
        if let Some(last) = played.rows.last() {
            next_start = last.time_ms + 1;
        }
        out.push(played);
    }
    Ok(out)
}

/// Run the backtest and build its report.
pub fn run(opts: &Options) -> Result<Report, BacktestError> {
    if !(opts.block_seconds.is_finite() && opts.block_seconds > 0.0) {
        return Err(BacktestError::Usage(
            "--block-seconds must be a positive number".into(),
        ));
    }
    if let Some(r) = opts.sample_rate_hz {
        if !(r.is_finite() && r > 0.0) {
            return Err(BacktestError::Usage(
                "--sample-rate must be a positive number of Hz".into(),
            ));
        }
    }
    let registry = DeviceRegistry::load_file(&opts.device_file)?;
    let (device, metric) = stream_names(&registry, opts.metric.as_deref())?;
    let labels = match &opts.labels {
        Some(p) => Some(load_labels(p)?),
        None => None,
    };
    let played = play(opts, &device, &metric)?;

    let mut engine = Engine::new(registry);
    let mut out = Output::default();
    let all: Vec<&Reading> = played.iter().flat_map(|p| &p.readings).collect();
    let clock = recording_clock(&all);
    for (r, now) in all.iter().zip(&clock) {
        engine.tick(*now, &mut out);
        engine.process(r, *now, &mut out);
    }
    // The end of the recording: let every window close.
    let end = clock.last().copied().unwrap_or(0);
    engine.tick(end.saturating_add(365 * 86_400_000), &mut out);

    // Which input each window came from: the latest one with readings before its end.
    let firsts: Vec<EpochMs> = played
        .iter()
        .map(|p| p.readings.first().map_or(EpochMs::MAX, |r| r.time_ms))
        .collect();
    let source_of = |a: &AlertEvent| -> usize {
        firsts
            .iter()
            .rposition(|f| *f < a.window_end_ms.max(a.window_start_ms + 1))
            .unwrap_or(0)
    };
    // Per alert id: when it was cleared, and the highest severity it reached.
    let mut cleared: BTreeMap<&str, EpochMs> = BTreeMap::new();
    let mut highest: BTreeMap<&str, Severity> = BTreeMap::new();
    for a in &out.alerts {
        if let (AlertKind::Cleared, Some(c)) = (a.kind, a.cleared_ms) {
            cleared.insert(&a.id, c);
        }
        let h = highest.entry(&a.id).or_insert(a.severity);
        *h = (*h).max(a.severity);
    }
    let mut alerts = Vec::new();
    let mut per_input: Vec<Detections> = played.iter().map(|_| Detections::new()).collect();
    for a in out.alerts.iter().filter(|a| a.kind == AlertKind::Raised) {
        let src = source_of(a);
        per_input[src].push(a.raised_ms);
        let severity = highest.get(a.id.as_str()).copied().unwrap_or(a.severity);
        alerts.push(ReportAlert {
            id: a.id.clone(),
            raised_at: rfc3339(a.raised_ms),
            cleared_at: cleared.get(a.id.as_str()).map(|c| rfc3339(*c)),
            severity: severity.to_string(),
            detector: a.detector.clone(),
            feature: a.feature.clone(),
            value: a.value,
            score: a.score,
            source: played[src].path.display().to_string(),
            message: a.message.clone(),
            raised_ms: a.raised_ms,
        });
    }

    let mut inputs = Vec::new();
    let mut scores = Vec::new();
    for (p, detections) in played.iter().zip(&per_input) {
        let windows = labels.as_ref().and_then(|l| l.windows_for(&p.path));
        let label = match (&windows, p.rows.is_empty()) {
            (Some(w), false) => {
                let times: Vec<EpochMs> = p.rows.iter().map(|r| r.time_ms).collect();
                let s = score_file(&times, w, detections.times_ms());
                let report = LabelReport::from_score(&s);
                scores.push(s);
                Some(report)
            }
            _ => None,
        };
        inputs.push(InputReport {
            file: p.path.display().to_string(),
            readings: p.readings.len(),
            alerts: detections.len(),
            labels: label,
        });
    }
    if let Some(dest) = &opts.nab_out {
        let rows: Vec<ScalarRow> = played.iter().flat_map(|p| p.rows.clone()).collect();
        if rows.is_empty() {
            return Err(BacktestError::Usage(
                "--nab-out needs scalar `timestamp,value` inputs".into(),
            ));
        }
        let mut all = Detections::new();
        for d in &per_input {
            for t in d.times_ms() {
                all.push(*t);
            }
        }
        let times: Vec<EpochMs> = rows.iter().map(|r| r.time_ms).collect();
        write_nab_results(dest, &rows, &all.anomaly_scores(&times)).map_err(|source| {
            BacktestError::Write {
                path: dest.clone(),
                source,
            }
        })?;
    }
    let total = (!scores.is_empty()).then(|| LabelReport::from_score(&scores.iter().sum()));
    Ok(Report {
        device,
        metric,
        alerts,
        inputs,
        total,
        late: engine.counters().late,
        skewed: engine.counters().skewed,
    })
}

/// Processing time for each reading of a recording, as if it had been
/// received live: its own event time, unless that time stands out from its
/// neighbours'. The median of five readings around it (one wrong stamp, even
/// two, cannot move it) follows the recording through gaps and stays put
/// under a reading stamped a day or 8,000 years ahead, which the engine
/// then refuses as skewed. Never goes back.
fn recording_clock(readings: &[&Reading]) -> Vec<EpochMs> {
    const HALF: usize = 2;
    let mut clock = Vec::with_capacity(readings.len());
    let mut now = EpochMs::MIN;
    let mut around = Vec::with_capacity(2 * HALF + 1);
    for i in 0..readings.len() {
        around.clear();
        let (lo, hi) = (i.saturating_sub(HALF), (i + HALF + 1).min(readings.len()));
        around.extend(readings[lo..hi].iter().map(|r| r.time_ms));
        around.sort_unstable();
        now = now.max(around[around.len() / 2]);
        clock.push(now);
    }
    clock
}

/// The report as an engineer reads it in a terminal.
pub fn print_text(report: &Report) {
    println!(
        "backtest of {} / {}: {} alert(s)",
        report.device,
        report.metric,
        report.alerts.len()
    );
    for a in &report.alerts {
        println!(
            "  {}  {:<7} {}/{}  {}  [{}]{}",
            a.raised_at,
            a.severity,
            a.detector,
            a.feature,
            a.message,
            file_name(&a.source),
            a.cleared_at
                .as_ref()
                .map(|c| format!(" cleared {c}"))
                .unwrap_or_default()
        );
    }
    for i in &report.inputs {
        print!(
            "{}: {} readings, {} alert(s)",
            file_name(&i.file),
            i.readings,
            i.alerts
        );
        if let Some(l) = &i.labels {
            print!("; {}", label_line(l));
        }
        println!();
    }
    if let Some(t) = &report.total {
        println!("total: {}", label_line(t));
    }
    if report.late + report.skewed > 0 {
        println!(
            "not used: {} late reading(s), {} stamped too far ahead of the recording's clock",
            report.late, report.skewed
        );
    }
}

fn label_line(l: &LabelReport) -> String {
    let delay = if l.delays_s.is_empty() {
        String::new()
    } else {
        let mean = l.delays_s.iter().sum::<f64>() / l.delays_s.len() as f64;
        format!(", mean delay {}", human_duration(mean))
    };
    format!(
        "{} of {} labelled window(s) detected, {} missed, {} false positive(s){}, NAB score {}",
        l.detected,
        l.windows,
        l.missed,
        l.false_positives,
        delay,
        l.nab_score
            .map(|s| format!("{s:.1}"))
            .unwrap_or_else(|| "n/a".into())
    )
}

fn file_name(p: &str) -> String {
    Path::new(p)
        .file_name()
        .map(|f| f.to_string_lossy().into_owned())
        .unwrap_or_else(|| p.to_string())
}
