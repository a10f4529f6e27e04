//! Detection for every stream, without I/O: readings in (with the processing
//! time `now` passed in), alerts and per-window aggregates out, and the
//! per-stream state that changed, for the caller to checkpoint.
//!
//! `vigil run` and `vigil backtest` both drive this engine; there is no
//! second implementation.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::config::{DeviceRegistry, StreamSettings, WindowSpec};
use crate::model::{Aggregate, AlertEvent, EpochMs, Reading, Severity, Value};

use super::alert::{Basis, Check, Condition, Context};
use super::baseline::{Learned, Volatility};
use super::evaluate::evaluate;
use super::features::Moments;
use super::reload;
pub use super::reload::ReloadReport;
use super::spectrum::{BlockSpectrum, Spectrum};
use super::window::{Admit, Open, Windows};

/// What one call produced.
#[derive(Debug, Default)]
pub struct Output {
    pub alerts: Vec<AlertEvent>,
    pub aggregates: Vec<Aggregate>,
}

impl Output {
    pub fn is_empty(&self) -> bool {
        self.alerts.is_empty() && self.aggregates.is_empty()
    }
}

/// Counters of detection, kept with its checkpoint.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct DetectCounters {
    pub readings: u64,
    /// Behind the watermark: counted, not used.
    pub late: u64,
    /// Redelivered copies of a reading already taken.
    pub duplicates: u64,
    pub windows: u64,
    /// Stamped further ahead of the processing clock than the allowed skew:
    /// counted, not used.
    #[serde(default)]
    pub skewed: u64,
    /// Times a stream's event time was found ahead of the processing clock
    /// (a reading accepted before the clock stepped back, or by an older
    /// version) and its windows started over.
    #[serde(default)]
    pub clock_resets: u64,
    /// Readings of new streams not taken because detection had
    /// `max_streams` in memory, or stream states had their share of the
    /// budget: stored, not detected.
    #[serde(default)]
    pub streams_refused: u64,
    /// Streams put aside for being idle, and those that spoke again.
    #[serde(default)]
    pub streams_evicted: u64,
    #[serde(default)]
    pub streams_resumed: u64,
    /// Idle streams forgotten to keep stream states within their share of
    /// the budget.
    #[serde(default)]
    pub streams_forgotten: u64,
    pub raised: BTreeMap<Severity, u64>,
    pub escalated: u64,
    pub cleared: u64,
    /// Alerts raised again within the hold-off of their clearing.
    #[serde(default)]
    pub reopened: u64,
}

/// Everything detection remembers about one stream.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StreamState {
    pub(super) windows: Windows<Accum>,
    /// Times inside windows are minutes since this instant (keeps sums exact).
    pub(super) origin_ms: Option<EpochMs>,
    pub(super) newest_ms: Option<EpochMs>,
    /// Processing time of the newest reading.
    pub(super) seen_at_ms: Option<EpochMs>,
    /// Smoothed interval between readings (event time), for closing count
    /// windows of a stream that went quiet.
    pub(super) interval_ms: f64,
    /// The previous window's middle and the features rate limits look at.
    pub(super) prev: Option<(EpochMs, Vec<(String, f64)>)>,
    pub(super) learned: BTreeMap<String, Learned>,
    pub(super) volatility: Volatility,
    pub(super) conditions: BTreeMap<String, Condition>,
}

impl StreamState {
    /// The stream's event time is further ahead of the processing time
    /// `now_ms` than `skew_ms`.
    fn time_ahead_of(&self, now_ms: EpochMs, skew_ms: EpochMs) -> bool {
        self.newest_ms
            .is_some_and(|n| n > now_ms.saturating_add(skew_ms))
    }

    /// Forget where the stream is in event time: its open windows (which lie
    /// in the future), its watermark, and the window rate limits compare
    /// with. What it learned about its values and its open alerts stay.
    fn restart_event_time(&mut self) {
        self.windows = Windows::new(self.windows.spec());
        self.origin_ms = None;
        self.newest_ms = None;
        self.interval_ms = 0.0;
        self.prev = None;
    }
}

/// Sums of one window: time-domain moments and, for waveform blocks, the
/// spectral features of each block (averaged over the window's blocks).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Accum {
    pub(super) moments: Moments,
    pub(super) blocks: u32,
    pub(super) velocity_sq: f64,
    pub(super) bands_sq: Vec<f64>,
    pub(super) envelope: Vec<f64>,
}

impl Accum {
    fn add_block(&mut self, s: &BlockSpectrum) {
        self.blocks += 1;
        self.velocity_sq += s.velocity_rms_mm_s * s.velocity_rms_mm_s;
        self.bands_sq.resize(s.bands.len(), 0.0);
        for (acc, b) in self.bands_sq.iter_mut().zip(&s.bands) {
            *acc += b * b;
        }
        if let Some(env) = &s.envelope {
            self.envelope.resize(4, 0.0);
            for (acc, e) in self.envelope.iter_mut().zip(env) {
                *acc += e;
            }
        }
    }
}

struct Stream {
    device: String,
    metric: String,
    settings: Arc<StreamSettings>,
    state: StreamState,
    dirty: bool,
}

pub struct Engine {
    registry: DeviceRegistry,
    streams: HashMap<String, Stream>,
    spectrum: Spectrum,
    counters: DetectCounters,
    dirty: Vec<String>,
    /// Reused to look streams up without allocating a key per reading.
    key_buf: String,
    /// Event times further ahead of the processing time are not trusted.
    max_future_skew_ms: EpochMs,
    limits: StreamLimits,
    /// Streams put aside (time last seen, key), oldest first, and the same
    /// by key. Their states are in the store.
    idle: BTreeSet<(EpochMs, String)>,
    idle_seen: HashMap<String, EpochMs>,
    /// New streams are refused (stream states have their share of the budget).
    admit_new: bool,
    /// Since the last `take_lifecycle`: streams put aside (with their
    /// states), idle ones that spoke again, idle ones forgotten.
    evicted: Vec<(String, EpochMs, StreamState)>,
    resumed: Vec<(String, EpochMs)>,
    forgotten: Vec<(String, EpochMs)>,
}

/// How many streams detection keeps, and for how long an unseen one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamLimits {
    /// Streams in memory at most; readings of further new streams are not
    /// detected (counted).
    pub max_streams: usize,
    /// A stream unseen this long (processing time), with no open window and
    /// no silence alert still to come, is put aside: its state goes to the
    /// store and leaves memory until it speaks again.
    pub idle_ms: EpochMs,
}

impl Default for StreamLimits {
    fn default() -> Self {
        StreamLimits {
            max_streams: crate::config::DEFAULT_MAX_STREAMS,
            idle_ms: crate::config::DEFAULT_STREAM_IDLE_MS,
        }
    }
}

/// What changed in the streams' lifecycle since the last call.
#[derive(Debug, Default)]
pub struct Lifecycle {
    pub evicted: Vec<(String, EpochMs, StreamState)>,
    pub resumed: Vec<(String, EpochMs)>,
    pub forgotten: Vec<(String, EpochMs)>,
}

/// Key of a stream in maps and in the store: `device NUL metric` (names are
/// topic-safe, so they never hold a NUL).
fn stream_key(buf: &mut String, device: &str, metric: &str) {
    buf.clear();
    buf.push_str(device);
    buf.push('\0');
    buf.push_str(metric);
}

impl Stream {
    /// Features, detectors and alert state of each closed window, in order.
    fn evaluate_all(
        &mut self,
        settings: &StreamSettings,
        closed: Vec<Open<Accum>>,
        counters: &mut DetectCounters,
        out: &mut Output,
    ) {
        for w in closed {
            counters.windows += 1;
            evaluate(
                &self.device,
                &self.metric,
                settings,
                &mut self.state,
                w,
                counters,
                out,
            );
        }
    }
}

impl Engine {
    pub fn new(registry: DeviceRegistry) -> Engine {
        Engine {
            registry,
            streams: HashMap::new(),
            spectrum: Spectrum::new(),
            counters: DetectCounters::default(),
            dirty: Vec::new(),
            key_buf: String::new(),
            max_future_skew_ms: crate::config::DEFAULT_MAX_FUTURE_SKEW_MS,
            limits: StreamLimits::default(),
            idle: BTreeSet::new(),
            idle_seen: HashMap::new(),
            admit_new: true,
            evicted: Vec::new(),
            resumed: Vec::new(),
            forgotten: Vec::new(),
        }
    }

    pub fn set_stream_limits(&mut self, limits: StreamLimits) {
        self.limits = limits;
    }

    /// Streams put aside, in the store (a restart learns them from there).
    pub fn add_idle(&mut self, seen_ms: EpochMs, key: String) {
        if !self.streams.contains_key(&key) && !self.idle_seen.contains_key(&key) {
            self.idle_seen.insert(key.clone(), seen_ms);
            self.idle.insert((seen_ms, key));
        }
    }

    pub fn idle_streams(&self) -> usize {
        self.idle.len()
    }

    /// Whether new streams are taken (false while stream states have their
    /// share of the budget and no idle stream is left to forget).
    pub fn set_admit_new(&mut self, admit: bool) {
        self.admit_new = admit;
    }

    /// The reading's stream is put aside: its state must be handed back
    /// ([`Engine::wake`]) before the reading is processed. A stream put
    /// aside since the last commit comes back from memory at once.
    pub fn needs_state(&mut self, device: &str, metric: &str) -> Option<String> {
        stream_key(&mut self.key_buf, device, metric);
        if self.streams.contains_key(self.key_buf.as_str()) {
            return None;
        }
        let key = self.key_buf.clone();
        if let Some(i) = self.evicted.iter().position(|(k, _, _)| *k == key) {
            let (key, seen, state) = self.evicted.swap_remove(i);
            self.counters.streams_evicted = self.counters.streams_evicted.saturating_sub(1);
            self.unlist_idle(&key, seen);
            self.restore(&key, state);
            self.mark_dirty(&key);
            return None;
        }
        self.idle_seen.contains_key(&key).then_some(key)
    }

    /// Bring back an idle stream's state read from the store (`None`: it
    /// could not be read, and the stream starts over). It is in memory
    /// again, written as active with the next commit. With `max_streams` in
    /// memory it stays idle, and its readings are refused.
    /// `now_ms`: the processing time it spoke at.
    pub fn wake(&mut self, key: &str, state: Option<StreamState>, now_ms: EpochMs) {
        let Some(seen) = self.idle_seen.get(key).copied() else {
            return;
        };
        if self.streams.len() >= self.limits.max_streams {
            return;
        }
        self.unlist_idle(key, seen);
        self.resumed.push((key.to_string(), seen));
        self.counters.streams_resumed += 1;
        if let Some(mut state) = state {
            state.seen_at_ms = Some(now_ms);
            self.restore(key, state);
            self.mark_dirty(key);
        }
    }

    fn unlist_idle(&mut self, key: &str, seen: EpochMs) {
        self.idle_seen.remove(key);
        self.idle.remove(&(seen, key.to_string()));
    }

    fn mark_dirty(&mut self, key: &str) {
        if let Some(s) = self.streams.get_mut(key) {
            if !s.dirty {
                s.dirty = true;
                self.dirty.push(key.to_string());
            }
        }
    }

    /// Forget the `n` idle streams seen longest ago (their states leave the
    /// store with the next commit). Returns how many were forgotten.
    pub fn forget_oldest_idle(&mut self, n: usize) -> usize {
        let mut done = 0;
        while done < n {
            let Some((seen, key)) = self.idle.pop_first() else {
                break;
            };
            self.idle_seen.remove(&key);
            self.forgotten.push((key, seen));
            self.counters.streams_forgotten += 1;
            done += 1;
        }
        done
    }

    /// Streams were put aside, woken or forgotten since the last
    /// `take_lifecycle`.
    pub fn lifecycle_pending(&self) -> bool {
        !(self.evicted.is_empty() && self.resumed.is_empty() && self.forgotten.is_empty())
    }

    /// Streams put aside, woken and forgotten since the last call.
    pub fn take_lifecycle(&mut self) -> Lifecycle {
        Lifecycle {
            evicted: std::mem::take(&mut self.evicted),
            resumed: std::mem::take(&mut self.resumed),
            forgotten: std::mem::take(&mut self.forgotten),
        }
    }

    /// How far ahead of the processing time an event time may be
    /// (`detect.max_future_skew_ms`).
    pub fn set_max_future_skew(&mut self, ms: EpochMs) {
        self.max_future_skew_ms = ms.max(0);
    }

    /// The wall clock stepped by `delta_ms` (an NTP correction, an operator
    /// setting the time) beyond what a monotonic clock measured. Processing
    /// times remembered per stream move with it, so that the step is not
    /// taken for sensors being silent (or for them having just spoken).
    pub fn clock_stepped(&mut self, delta_ms: EpochMs) {
        for s in self.streams.values_mut() {
            if let Some(seen) = &mut s.state.seen_at_ms {
                *seen = seen.saturating_add(delta_ms);
            }
        }
    }

    pub fn counters(&self) -> &DetectCounters {
        &self.counters
    }

    pub fn set_counters(&mut self, c: DetectCounters) {
        self.counters = c;
    }

    pub fn streams(&self) -> usize {
        self.streams.len()
    }

    /// Alerts open now, by severity (warning, alarm).
    pub fn open_alerts(&self) -> [u64; 2] {
        let mut open = [0; 2];
        for s in self.streams.values() {
            for c in s.state.conditions.values() {
                if let Some(sev) = c.active_severity() {
                    open[sev as usize] += 1;
                }
            }
        }
        open
    }

    /// Put back a stream's state from a checkpoint. If its window settings
    /// changed since, its open windows start over.
    pub fn restore(&mut self, key: &str, mut state: StreamState) {
        let Some((device, metric)) = key.split_once('\0') else {
            return;
        };
        let settings = Arc::new(self.registry.stream_settings(device, metric));
        if state.windows.spec() != settings.window {
            state.windows = Windows::new(settings.window);
        }
        self.streams.insert(
            key.to_string(),
            Stream {
                device: device.to_string(),
                metric: metric.to_string(),
                settings,
                state,
                dirty: false,
            },
        );
    }

    /// Take new device files (SIGHUP). Streams seen from now on resolve their
    /// settings from `registry`. Each known stream whose resolved settings
    /// differ gets the new ones, which apply from the next window that
    /// closes; see `reload::apply` for what else changes with them (open
    /// windows, learned baselines, alerts of detectors that are gone: cleared
    /// into `out`). A stream whose settings are unchanged is left exactly as
    /// it was. `now_ms` is the processing time.
    pub fn reload(
        &mut self,
        registry: DeviceRegistry,
        now_ms: EpochMs,
        out: &mut Output,
    ) -> ReloadReport {
        self.registry = registry;
        let Engine {
            registry,
            streams,
            counters,
            dirty,
            ..
        } = self;
        // In key order, so the events come out the same on every run.
        let mut keys: Vec<&String> = streams.keys().collect();
        keys.sort_unstable();
        let mut report = ReloadReport::default();
        let mut changed = Vec::new();
        for key in keys {
            let stream = &streams[key];
            let settings = registry.stream_settings(&stream.device, &stream.metric);
            if settings == *stream.settings {
                report.unchanged += 1;
            } else {
                changed.push((key.clone(), settings));
            }
        }
        for (key, settings) in changed {
            let stream = streams.get_mut(&key).expect("listed above");
            let change = reload::apply(
                &stream.device,
                &stream.metric,
                &stream.settings,
                &settings,
                &mut stream.state,
                now_ms,
                counters,
                out,
            );
            stream.settings = Arc::new(settings);
            report.record(&stream.device, &stream.metric, &change);
            if !stream.dirty {
                stream.dirty = true;
                dirty.push(key);
            }
        }
        report
    }

    /// After a restart: silence is measured while vigil listens, so the time
    /// it was down does not count as every sensor having been quiet.
    pub fn resume(&mut self, now_ms: EpochMs) {
        for s in self.streams.values_mut() {
            if s.state.seen_at_ms.is_some() {
                s.state.seen_at_ms = Some(now_ms);
            }
        }
    }

    /// The states changed since the last call, with their keys.
    pub fn take_dirty(&mut self) -> Vec<(String, &StreamState)> {
        let keys = std::mem::take(&mut self.dirty);
        for k in &keys {
            if let Some(s) = self.streams.get_mut(k) {
                s.dirty = false;
            }
        }
        keys.into_iter()
            .filter_map(|k| {
                let s = self.streams.get(&k)?;
                Some((k, &s.state))
            })
            .collect()
    }

    /// Run one reading through its stream's windows and detectors.
    pub fn process(&mut self, r: &Reading, now_ms: EpochMs, out: &mut Output) {
        self.counters.readings += 1;
        // Ingest refuses such readings; these came before the processing
        // clock stepped back, from an older version, or from a recording.
        if r.time_ms > now_ms.saturating_add(self.max_future_skew_ms) {
            self.counters.skewed += 1;
            return;
        }
        stream_key(&mut self.key_buf, &r.device, &r.metric);
        if !self.streams.contains_key(self.key_buf.as_str()) {
            // Still idle (not woken: memory is at `max_streams`), or new
            // while there is no room: stored, not detected.
            if self.idle_seen.contains_key(self.key_buf.as_str())
                || self.streams.len() >= self.limits.max_streams
                || !self.admit_new
            {
                self.counters.streams_refused += 1;
                return;
            }
            let settings = Arc::new(self.registry.stream_settings(&r.device, &r.metric));
            let state = StreamState {
                windows: Windows::new(settings.window),
                origin_ms: None,
                newest_ms: None,
                seen_at_ms: None,
                interval_ms: 0.0,
                prev: None,
                learned: BTreeMap::new(),
                volatility: Volatility::default(),
                conditions: BTreeMap::new(),
            };
            self.streams.insert(
                self.key_buf.clone(),
                Stream {
                    device: r.device.clone(),
                    metric: r.metric.clone(),
                    settings,
                    state,
                    dirty: false,
                },
            );
        }
        let Engine {
            streams,
            spectrum,
            counters,
            dirty,
            key_buf,
            max_future_skew_ms,
            ..
        } = self;
        let stream = streams.get_mut(key_buf.as_str()).expect("inserted above");
        if !stream.dirty {
            stream.dirty = true;
            dirty.push(key_buf.clone());
        }
        let settings = stream.settings.clone();
        let st = &mut stream.state;
        if st.time_ahead_of(now_ms, *max_future_skew_ms) {
            st.restart_event_time();
            counters.clock_resets += 1;
        }

        // A silent sensor that speaks again clears its alert at once.
        if let Some(cond) = st.conditions.get_mut(SILENCE) {
            let gap = now_ms - st.seen_at_ms.unwrap_or(now_ms);
            let check = silence_check(gap, settings.silent_after_ms.unwrap_or(0), None);
            let ctx = context(&stream.device, &stream.metric, &settings);
            out.alerts
                .extend(cond.clear_now(&check, (r.time_ms, r.time_ms), &ctx));
        }
        st.seen_at_ms = Some(now_ms);

        let origin = *st.origin_ms.get_or_insert(r.time_ms);
        let t_min = (r.time_ms - origin) as f64 / 60_000.0;
        let (duration_ms, fingerprint) = match &r.value {
            Value::Scalar(x) => (0, x.to_bits()),
            Value::Waveform(w) => (
                (w.samples.len() as f64 * 1000.0 / w.sample_rate_hz) as EpochMs,
                fingerprint(w.sample_rate_hz, &w.samples),
            ),
        };
        let mut block: Option<BlockSpectrum> = None;
        let admit = st.windows.add(
            r.time_ms,
            duration_ms,
            fingerprint,
            settings.allowed_lateness_ms,
            |acc| match &r.value {
                Value::Scalar(x) => acc.moments.push(t_min, *x),
                Value::Waveform(w) => {
                    let dt_min = 1.0 / (w.sample_rate_hz * 60.0);
                    acc.moments.push_block(t_min, dt_min, &w.samples);
                    let s = block.get_or_insert_with(|| {
                        spectrum.analyze(&w.samples, w.sample_rate_hz, &settings.waveform)
                    });
                    acc.add_block(s);
                }
            },
        );
        match admit {
            Admit::Late => counters.late += 1,
            Admit::Duplicate => counters.duplicates += 1,
            Admit::Accepted => {
                if let Some(prev) = st.newest_ms {
                    if r.time_ms > prev {
                        let gap = (r.time_ms - prev) as f64;
                        st.interval_ms = if st.interval_ms == 0.0 {
                            gap
                        } else {
                            0.9 * st.interval_ms + 0.1 * gap
                        };
                    }
                }
                st.newest_ms = Some(st.newest_ms.map_or(r.time_ms, |n| n.max(r.time_ms)));
            }
        }
        let mut closed = Vec::new();
        st.windows
            .drain_final(settings.allowed_lateness_ms, &mut closed);
        stream.evaluate_all(&settings, closed, counters, out);
    }

    /// Work driven by processing time alone: close the windows of streams
    /// that went quiet, and raise "sensor silent" alerts.
    pub fn tick(&mut self, now_ms: EpochMs, out: &mut Output) {
        let Engine {
            streams,
            counters,
            dirty,
            max_future_skew_ms,
            ..
        } = self;
        for (key, stream) in streams.iter_mut() {
            let settings = stream.settings.clone();
            let mut changed = false;
            if stream.state.time_ahead_of(now_ms, *max_future_skew_ms) {
                stream.state.restart_event_time();
                counters.clock_resets += 1;
                if !stream.dirty {
                    stream.dirty = true;
                    dirty.push(key.clone());
                }
            }
            let (Some(seen), Some(newest)) = (stream.state.seen_at_ms, stream.state.newest_ms)
            else {
                continue;
            };
            let quiet = now_ms - seen;
            if stream.state.windows.has_open() {
                // Event time as it would be now had the sensor kept sending:
                // its clock, advanced by the processing time since it spoke.
                let event_now = newest + quiet;
                let mut closed = Vec::new();
                match settings.window {
                    WindowSpec::Time { .. } => {
                        stream.state.windows.drain_final_at(
                            event_now.saturating_sub(settings.allowed_lateness_ms),
                            &mut closed,
                        );
                    }
                    WindowSpec::Count { length, .. } => {
                        let fill = (stream.state.interval_ms * length as f64) as EpochMs;
                        if quiet > fill.max(1).saturating_add(settings.allowed_lateness_ms) {
                            stream.state.windows.drain_all(&mut closed);
                        }
                    }
                }
                changed |= !closed.is_empty();
                stream.evaluate_all(&settings, closed, counters, out);
            }
            if let Some(limit) = settings.silent_after_ms {
                let cond = stream
                    .state
                    .conditions
                    .entry(SILENCE.to_string())
                    .or_default();
                if quiet > limit && !cond.is_active() {
                    let check = silence_check(quiet, limit, Some(Severity::Warning));
                    let ctx = Context {
                        raise_after: 1,
                        ..context(&stream.device, &stream.metric, &settings)
                    };
                    if let Some(ev) = cond.step(&check, (newest, now_ms), &ctx) {
                        *counters.raised.entry(ev.severity).or_default() += 1;
                        out.alerts.push(ev);
                        changed = true;
                    }
                }
            }
            if changed && !stream.dirty {
                stream.dirty = true;
                dirty.push(key.clone());
            }
        }
        self.evict_idle(now_ms);
    }

    /// Put aside the streams unseen for `limits.idle_ms` that processing
    /// time has nothing left to do for: no open window, and no silence
    /// alert still to raise.
    fn evict_idle(&mut self, now_ms: EpochMs) {
        let idle_ms = self.limits.idle_ms;
        let quiet: Vec<String> = self
            .streams
            .iter()
            .filter(|(_, s)| {
                let st = &s.state;
                let seen = st.seen_at_ms.unwrap_or(now_ms);
                let silence_settled = s.settings.silent_after_ms.is_none()
                    || st.conditions.get(SILENCE).is_some_and(|c| c.is_active());
                now_ms.saturating_sub(seen) >= idle_ms && !st.windows.has_open() && silence_settled
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in quiet {
            let Some(stream) = self.streams.remove(&key) else {
                continue;
            };
            let seen = stream.state.seen_at_ms.unwrap_or(now_ms);
            self.idle_seen.insert(key.clone(), seen);
            self.idle.insert((seen, key.clone()));
            self.evicted.push((key, seen, stream.state));
            self.counters.streams_evicted += 1;
        }
    }
}

const SILENCE: &str = "silence/last_reading";

fn silence_check(quiet_ms: EpochMs, limit_ms: EpochMs, severity: Option<Severity>) -> Check {
    Check {
        detector: "silence",
        feature: "last_reading".into(),
        severity,
        value: quiet_ms as f64 / 1000.0,
        limit: Some(limit_ms as f64 / 1000.0),
        baseline: None,
        statistic: None,
        score: if severity.is_some() { 1.0 } else { 0.0 },
        note: "",
        basis: Basis::Recent,
    }
}

/// FNV-1a over the sample bits: recognises a redelivered waveform block.
fn fingerprint(rate: f64, samples: &[f32]) -> u64 {
    let mut h = 0xcbf29ce484222325u64 ^ rate.to_bits();
    for s in samples {
        h ^= s.to_bits() as u64;
        h = h.wrapping_mul(0x100000001b3);
    }
    h
}

pub(super) fn context<'a>(device: &'a str, metric: &'a str, s: &'a StreamSettings) -> Context<'a> {
    Context {
        device,
        metric,
        unit: s.unit.as_deref().unwrap_or(""),
        raise_after: s.raise_after,
        clear_after: s.clear_after,
        hold_off_ms: s.hold_off_ms,
    }
}

#[cfg(test)]
#[path = "engine_tests.rs"]
mod tests;
