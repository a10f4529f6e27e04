//! Detection benchmark: scalar readings and waveform blocks in, on one core;
//! out, a Markdown table of readings/s, samples/s, heap and checkpoint bytes
//! per stream, the cost of committing detection batches to sled, and what
//! sled's files take under a full budget.
//!
//! Run with `cargo bench --bench detect`, or `scripts/bench-detect` (which
//! pins it to one CPU). Arguments pick sections (`scalar`, `waveform`,
//! `memory`, `store`, `disk`; default all); `--quick` does a tenth of the work, for
//! trying a change, not for reporting.
//!
//! Every measurement does a fixed amount of work (not a fixed time): a
//! warm-up pass, then three timed passes, of which the fastest is reported.
//! Device files are written to a temporary directory and loaded like a
//! user's, so the settings are exactly what `vigil run` would use.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::f64::consts::PI;
use std::fmt::Write as _;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use vigil::config::DeviceRegistry;
use vigil::detect::features::Moments;
use vigil::detect::spectrum::Spectrum;
use vigil::detect::{Engine, Output};
use vigil::model::{EpochMs, Reading, Value, Waveform};
use vigil::store::{Batch, DetectionCommit, Store};

mod common;

use common::{build_kind, cpu_model, grouped, Args, Noise, Report};

// ------------------------------------------------------------ heap counting

/// System malloc, counting while `COUNTING` is set. Only changes made while
/// counting are recorded, which is exact for "live after − live before": a
/// block allocated earlier and freed inside the measurement counts as −size,
/// as it should.
struct CountingAlloc;

#[global_allocator]
static ALLOC: CountingAlloc = CountingAlloc;

static COUNTING: AtomicBool = AtomicBool::new(false);
/// Requested bytes.
static BYTES: AtomicI64 = AtomicI64::new(0);
/// The same, as glibc malloc chunks (what the process really pays).
static CHUNK_BYTES: AtomicI64 = AtomicI64::new(0);
/// Live blocks.
static BLOCKS: AtomicI64 = AtomicI64::new(0);
/// Calls to alloc / realloc.
static CALLS: AtomicU64 = AtomicU64::new(0);

/// glibc's chunk for a request: 8 bytes of header, rounded up to 16, at
/// least 32 (malloc.c, `request2size`). An estimate for other allocators.
fn chunk(size: usize) -> i64 {
    ((size + 8 + 15) & !15).max(32) as i64
}

fn note(bytes: i64, chunks: i64, blocks: i64, calls: u64) {
    BYTES.fetch_add(bytes, Relaxed);
    CHUNK_BYTES.fetch_add(chunks, Relaxed);
    BLOCKS.fetch_add(blocks, Relaxed);
    CALLS.fetch_add(calls, Relaxed);
}

unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc(layout);
        if !p.is_null() && COUNTING.load(Relaxed) {
            note(layout.size() as i64, chunk(layout.size()), 1, 1);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let p = System.alloc_zeroed(layout);
        if !p.is_null() && COUNTING.load(Relaxed) {
            note(layout.size() as i64, chunk(layout.size()), 1, 1);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        System.dealloc(ptr, layout);
        if COUNTING.load(Relaxed) {
            note(-(layout.size() as i64), -chunk(layout.size()), -1, 0);
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let p = System.realloc(ptr, layout, new_size);
        if !p.is_null() && COUNTING.load(Relaxed) {
            let (old, new) = (layout.size(), new_size);
            note(new as i64 - old as i64, chunk(new) - chunk(old), 0, 1);
        }
        p
    }
}

#[derive(Debug, Clone, Copy, Default)]
struct Heap {
    bytes: i64,
    chunk_bytes: i64,
    blocks: i64,
    calls: u64,
}

/// Heap changes since `start`, counted until the meter is dropped.
struct Meter(Heap);

impl Meter {
    fn start() -> Meter {
        COUNTING.store(true, Relaxed);
        Meter(Self::now())
    }

    fn now() -> Heap {
        Heap {
            bytes: BYTES.load(Relaxed),
            chunk_bytes: CHUNK_BYTES.load(Relaxed),
            blocks: BLOCKS.load(Relaxed),
            calls: CALLS.load(Relaxed),
        }
    }

    fn read(&self) -> Heap {
        let n = Self::now();
        Heap {
            bytes: n.bytes - self.0.bytes,
            chunk_bytes: n.chunk_bytes - self.0.chunk_bytes,
            blocks: n.blocks - self.0.blocks,
            calls: n.calls - self.0.calls,
        }
    }
}

impl Drop for Meter {
    fn drop(&mut self) {
        COUNTING.store(false, Relaxed);
    }
}

// ------------------------------------------------------------ device files

/// Scalar streams as default.toml describes them, plus a static limit:
/// 1-minute windows, the learned baseline on mean and std with its default
/// CUSUM and volatility tests.
const SCALAR_TIME: &str = r#"
match = "*"
description = "Benchmark sensor, one reading a second"

[metrics."*"]
unit = "degC"
window = "1m"
allowed_lateness = "5s"

[metrics."*".limits.mean]
warning_above = 80.0
alarm_above = 95.0

[metrics."*".baseline]
features = ["mean", "std"]
"#;

/// The same with count windows of 60 readings.
const SCALAR_COUNT: &str = r#"
match = "*"
description = "Benchmark sensor, windows of 60 readings"

[metrics."*"]
unit = "degC"
window_readings = 60
allowed_lateness = "5s"

[metrics."*".limits.mean]
warning_above = 80.0
alarm_above = 95.0

[metrics."*".baseline]
features = ["mean", "std"]
"#;

/// Motors with an accelerometer, as in config/devices/motors.toml.
const MOTORS: &str = r#"
match = "motor-*"
description = "Benchmark motor, drive-end accelerometer"

[metrics.vibration]
unit = "g"
window = "10s"

[metrics.vibration.waveform]
input_unit = "g"
envelope_band_hz = [2000.0, 5000.0]
bands = { low = [10.0, 200.0], high = [1000.0, 5000.0] }

[metrics.vibration.bearing]
shaft_rpm = 1796
bpfo = 3.5848
bpfi = 5.4152
bsf = 2.357
ftf = 0.39828

[metrics.vibration.limits.kurtosis]
warning_above = 6.0
alarm_above = 10.0

[metrics.vibration.baseline]
features = ["velocity_rms", "crest_factor", "band.high", "envelope.bpfo", "envelope.bpfi", "envelope.bsf"]
"#;

fn device_file(dir: &Path, name: &str, text: &str) -> DeviceRegistry {
    let path = dir.join(name);
    std::fs::write(&path, text).expect("write a device file");
    DeviceRegistry::load_file(&path)
        .unwrap_or_else(|e| panic!("benchmark device file {name} is invalid:\n{e}"))
}

/// Windows the learned baseline needs before it scores anything.
fn warmup_windows(registry: &DeviceRegistry, device: &str, metric: &str) -> u64 {
    registry
        .stream_settings(device, metric)
        .baseline
        .expect("the benchmark streams have a learned baseline")
        .warmup_windows as u64
}

// ------------------------------------------------------------ synthetic data

/// 2026-01-01T00:00:00Z: on a minute boundary, so 1-minute windows hold 60 readings.
const T0: EpochMs = 1_767_225_600_000;
/// Readings per detection batch, as in the detect stage.
const BATCH: usize = 4096;

// `Noise` (xorshift64*) lives in benches/common; only this benchmark draws
// normal variates from it.
impl Noise {
    /// Approximately standard normal (Irwin–Hall: 12 uniforms − 6).
    fn gauss(&mut self) -> f64 {
        (0..12).map(|_| self.uniform()).sum::<f64>() - 6.0
    }
}

/// One reading a second from each of `n` sensors, interleaved (every sensor's
/// second `s` before any sensor's second `s + 1`): 50 + 2·sin over a 10-minute
/// period (a phase per sensor) plus noise of σ 0.5. Values come from tables,
/// so the feed costs next to nothing beside the engine.
struct ScalarFeed {
    readings: Vec<Reading>,
    /// Per sensor: positions in `wave` and `noise`.
    pos: Vec<(usize, usize)>,
    wave: Vec<f64>,
    noise: Vec<f64>,
    second: i64,
}

impl ScalarFeed {
    fn new(sensors: usize) -> ScalarFeed {
        const PERIOD_S: usize = 600;
        let wave: Vec<f64> = (0..PERIOD_S)
            .map(|i| 50.0 + 2.0 * (2.0 * PI * i as f64 / PERIOD_S as f64).sin())
            .collect();
        let mut rng = Noise(0x9E37_79B9_7F4A_7C15);
        // A prime length, so sensors do not share a noise sequence for long.
        let noise: Vec<f64> = (0..7919).map(|_| 0.5 * rng.gauss()).collect();
        ScalarFeed {
            readings: (0..sensors)
                .map(|k| Reading {
                    device: format!("sensor-{k:05}"),
                    metric: "temperature".into(),
                    time_ms: T0,
                    value: Value::Scalar(0.0),
                })
                .collect(),
            pos: (0..sensors)
                .map(|k| ((k * 37) % wave.len(), (k * 101) % noise.len()))
                .collect(),
            wave,
            noise,
            second: 0,
        }
    }

    fn sensors(&self) -> usize {
        self.readings.len()
    }

    /// The next reading of every sensor, in place in `self.readings`.
    fn advance(&mut self) -> EpochMs {
        let t = T0 + self.second * 1000;
        self.second += 1;
        let (wave, noise) = (&self.wave, &self.noise);
        for (r, (w, z)) in self.readings.iter_mut().zip(self.pos.iter_mut()) {
            r.time_ms = t;
            r.value = Value::Scalar(wave[*w] + noise[*z]);
            *w = if *w + 1 == wave.len() { 0 } else { *w + 1 };
            *z = if *z + 1 == noise.len() { 0 } else { *z + 1 };
        }
        t
    }

    /// `seconds` seconds of every sensor through the engine.
    fn run(&mut self, engine: &mut Engine, seconds: u64, sink: &mut Sink) -> u64 {
        let mut n = 0;
        for _ in 0..seconds {
            let t = self.advance();
            for r in &self.readings {
                engine.process(r, t, &mut sink.out);
                sink.taken(engine);
                n += 1;
            }
        }
        n
    }

    /// `seconds` seconds of every sensor, as owned readings (for the store's log).
    fn collect(&mut self, seconds: u64) -> Vec<Reading> {
        let mut all = Vec::with_capacity(seconds as usize * self.sensors());
        for _ in 0..seconds {
            self.advance();
            all.extend(self.readings.iter().cloned());
        }
        all
    }
}

/// What the detect stage does with the engine's output every `BATCH`
/// readings (without the store): take the dirty states, drop the outputs.
#[derive(Default)]
struct Sink {
    out: Output,
    in_batch: usize,
    aggregates: u64,
    alerts: u64,
}

impl Sink {
    fn taken(&mut self, engine: &mut Engine) {
        self.in_batch += 1;
        if self.in_batch == BATCH {
            self.flush(engine);
        }
    }

    fn flush(&mut self, engine: &mut Engine) {
        self.in_batch = 0;
        drop(engine.take_dirty());
        self.aggregates += self.out.aggregates.len() as u64;
        self.alerts += self.out.alerts.len() as u64;
        self.out.aggregates.clear();
        self.out.alerts.clear();
    }
}

/// Accelerometer blocks at 12 kHz from `motors` motors: 1× shaft tone, a
/// 3 kHz resonance amplitude-modulated at the outer-race defect frequency,
/// and noise (in g). A few distinct blocks per motor, reused in turn.
struct WaveFeed {
    /// Per motor, the distinct blocks.
    blocks: Vec<Vec<Reading>>,
    block_ms: EpochMs,
    samples: usize,
    next: i64,
}

const FS_HZ: f64 = 12_000.0;
const VARIANTS: usize = 8;

impl WaveFeed {
    fn new(motors: usize, samples: usize) -> WaveFeed {
        let shaft_hz = 1796.0 / 60.0;
        let bpfo_hz = 3.5848 * shaft_hz;
        let mut rng = Noise(0x2545_F491_4F6C_DD1D);
        let blocks = (0..motors)
            .map(|m| {
                (0..VARIANTS)
                    .map(|v| {
                        let x = (0..samples)
                            .map(|i| {
                                let t = (v * samples + i) as f64 / FS_HZ;
                                let shaft = 0.05 * (2.0 * PI * shaft_hz * t + m as f64).sin();
                                let am = 1.0 + 0.5 * (2.0 * PI * bpfo_hz * t).cos();
                                let ring = 0.2 * am * (2.0 * PI * 3000.0 * t).cos();
                                (shaft + ring + 0.05 * rng.gauss()) as f32
                            })
                            .collect();
                        Reading {
                            device: format!("motor-{m:02}"),
                            metric: "vibration".into(),
                            time_ms: T0,
                            value: Value::Waveform(Waveform {
                                sample_rate_hz: FS_HZ,
                                samples: x,
                            }),
                        }
                    })
                    .collect()
            })
            .collect();
        WaveFeed {
            blocks,
            block_ms: (samples as f64 * 1000.0 / FS_HZ) as EpochMs,
            samples,
            next: 0,
        }
    }

    /// `rounds` blocks of every motor through the engine; returns samples.
    fn run(&mut self, engine: &mut Engine, rounds: u64, sink: &mut Sink) -> u64 {
        let mut n = 0;
        for _ in 0..rounds {
            let t = T0 + self.next * self.block_ms;
            let v = self.next as usize % VARIANTS;
            self.next += 1;
            for motor in &mut self.blocks {
                let r = &mut motor[v];
                r.time_ms = t;
                engine.process(r, t, &mut sink.out);
                sink.taken(engine);
                n += self.samples as u64;
            }
        }
        n
    }

    fn motors(&self) -> usize {
        self.blocks.len()
    }

    fn samples_of(&self, motor: usize, variant: usize) -> &[f32] {
        match &self.blocks[motor][variant].value {
            Value::Waveform(w) => &w.samples,
            Value::Scalar(_) => unreachable!("waveform feed holds blocks"),
        }
    }
}

// ------------------------------------------------------------ timing

/// Three timed passes (after the caller's warm-up); the fastest.
fn best_of_3(mut pass: impl FnMut()) -> Duration {
    (0..3)
        .map(|_| {
            let start = Instant::now();
            pass();
            start.elapsed()
        })
        .min()
        .expect("three passes")
}

fn per_s(n: u64, d: Duration) -> f64 {
    n as f64 / d.as_secs_f64()
}

// ------------------------------------------------------------ 1. scalar

fn scalar(dir: &Path, file: &str, text: &str, sensors: usize, label: &str, rep: &mut Report) {
    let registry = device_file(dir, file, text);
    let warmup = warmup_windows(&registry, "sensor-00000", "temperature");
    let mut feed = ScalarFeed::new(sensors);
    let mut engine = Engine::new(registry);
    let mut sink = Sink::default();

    // Warm-up pass: past the baseline's warm-up, so the timed passes run the
    // detectors (not just the collection of warm-up windows).
    let work = rep.scale(3_000_000);
    let warm_s = ((warmup + 2) * 60 + 5).max(work / sensors as u64);
    let meter = Meter::start();
    let n = feed.run(&mut engine, warm_s, &mut sink);
    let heap = meter.read();
    drop(meter);
    let windows_before = engine.counters().windows;
    let seconds = (work / sensors as u64).max(1);
    let mut fed = 0;
    let best = best_of_3(|| fed = feed.run(&mut engine, seconds, &mut sink));
    sink.flush(&mut engine);
    let windows = (engine.counters().windows - windows_before) / 3;
    assert!(
        windows >= sensors as u64,
        "{label}: only {windows} windows closed per pass; the benchmark does not exercise detection"
    );
    let rate = per_s(fed, best);
    rep.row(
        "1. scalar detection",
        format!(
            "{} streams interleaved, {label}; baseline mean+std with CUSUM and volatility, static limit",
            grouped(sensors as f64)
        ),
        format!(
            "**{} readings/s** ({:.0} ns/reading)",
            grouped(rate),
            1e9 / rate
        ),
        "≥ 2,000,000 readings/s",
        Some(rate >= 2_000_000.0),
    );
    rep.detail(format!(
        "scalar, {} streams, {label}: {} readings per pass, {} windows closed per pass, {} aggregates and {} alerts in all; warm-up pass of {} readings made {:.2} heap allocations per reading",
        grouped(sensors as f64),
        grouped(fed as f64),
        grouped(windows as f64),
        grouped(sink.aggregates as f64),
        sink.alerts,
        grouped(n as f64),
        heap.calls as f64 / n as f64,
    ));
}

// ------------------------------------------------------------ 2. waveform

fn waveform(dir: &Path, samples: usize, rep: &mut Report) {
    let registry = device_file(dir, "motors.toml", MOTORS);
    let settings = registry.stream_settings("motor-00", "vibration");
    let warmup = warmup_windows(&registry, "motor-00", "vibration");
    let mut feed = WaveFeed::new(4, samples);
    let mut engine = Engine::new(registry);
    let mut sink = Sink::default();

    let window_blocks = 10_000 / feed.block_ms as u64;
    let work_samples = rep.scale(24_000_000);
    let rounds = (work_samples / (samples * feed.motors()) as u64).max(1);
    let warm_rounds = ((warmup + 2) * window_blocks + 1).max(rounds);
    let meter = Meter::start();
    feed.run(&mut engine, warm_rounds, &mut sink);
    let heap = meter.read();
    drop(meter);
    let warm_blocks = warm_rounds * feed.motors() as u64;
    let windows_before = engine.counters().windows;
    let mut fed = 0;
    let best = best_of_3(|| fed = feed.run(&mut engine, rounds, &mut sink));
    sink.flush(&mut engine);
    let windows = (engine.counters().windows - windows_before) / 3;
    assert!(
        windows > 0,
        "no waveform window closed during the timed passes"
    );
    let rate = per_s(fed, best);
    let blocks = fed / samples as u64;
    let us_per_block = best.as_secs_f64() * 1e6 / blocks as f64;
    rep.row(
        "2. waveform detection",
        format!(
            "{} motors, blocks of {} samples at 12 kHz ({} s), 10 s windows; velocity RMS, 2 bands, bearing envelope, baseline on 6 features",
            feed.motors(),
            grouped(samples as f64),
            samples as f64 / FS_HZ
        ),
        format!(
            "**{} samples/s** ({:.0} µs/block)",
            grouped(rate),
            us_per_block
        ),
        "≥ 20,000,000 samples/s",
        Some(rate >= 20_000_000.0),
    );

    // Where a block's time goes: the same blocks through the parts alone.
    let calls = rep.scale(800);
    let mut spectrum = Spectrum::new();
    let spectrum_us = per_block_us(&feed, calls, |x| {
        std::hint::black_box(spectrum.analyze(x, FS_HZ, &settings.waveform));
    });
    let moments_us = per_block_us(&feed, calls, |x| {
        let mut m = Moments::default();
        m.push_block(0.0, 1.0 / (FS_HZ * 60.0), x);
        std::hint::black_box(m);
    });
    // The engine's FNV-1a over the sample bits (engine.rs `fingerprint`,
    // private), copied to time it.
    let fingerprint_us = per_block_us(&feed, calls, |x| {
        let mut h = 0xcbf2_9ce4_8422_2325u64 ^ FS_HZ.to_bits();
        for s in std::hint::black_box(x) {
            h ^= s.to_bits() as u64;
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
        std::hint::black_box(h);
    });
    rep.detail(format!(
        "waveform, {} samples/block: {:.0} µs per block in the engine; the parts alone on the same blocks: Spectrum::analyze {:.0} µs, Moments::push_block {:.0} µs, fingerprint (FNV-1a) {:.0} µs; {} windows closed per pass; the warm-up pass made {:.1} heap allocations per block",
        grouped(samples as f64),
        us_per_block,
        spectrum_us,
        moments_us,
        fingerprint_us,
        windows,
        heap.calls as f64 / warm_blocks as f64,
    ));
}

/// Microseconds per call of `part` on motor 0's blocks in turn: a warm-up
/// pass, then the best of three passes of `calls` calls.
fn per_block_us(feed: &WaveFeed, calls: u64, mut part: impl FnMut(&[f32])) -> f64 {
    let mut pass = |n: u64| {
        for i in 0..n {
            part(feed.samples_of(0, i as usize % VARIANTS));
        }
    };
    pass(VARIANTS as u64);
    best_of_3(|| pass(calls)).as_secs_f64() * 1e6 / calls as f64
}

// ------------------------------------------------------------ 3. memory

/// Heap and checkpoint bytes of all streams at one point of their life.
struct Footprint {
    label: &'static str,
    windows: u64,
    heap: Heap,
    checkpoint_bytes: usize,
}

/// Heap the engine holds for 10,000 scalar streams, from an empty engine, at
/// three points: after one reading each, just past the baseline's warm-up,
/// and after two hours; with the size of each stream's checkpoint there.
fn memory(dir: &Path, rep: &mut Report) {
    let registry = device_file(dir, "memory.toml", SCALAR_TIME);
    let warmup = warmup_windows(&registry, "sensor-00000", "temperature");
    let streams = rep.scale(10_000) as usize;
    let n = streams as f64;

    // Each stream holds its own `Arc<StreamSettings>`, resolved when it appears.
    let settings_bytes = {
        let mut kept = Vec::with_capacity(1000);
        let meter = Meter::start();
        for k in 0..1000 {
            let s = registry.stream_settings(&format!("sensor-{k:05}"), "temperature");
            kept.push(std::sync::Arc::new(s));
        }
        meter.read().bytes as f64 / kept.len() as f64
    };

    let mut feed = ScalarFeed::new(streams);
    let mut found = Vec::new();
    let mut parts = BTreeMap::new();
    let meter = Meter::start();
    let mut engine = Engine::new(registry);
    let mut sink = Sink::default();
    let mut done_s = 0;
    // Seconds fed before the stage's last reading; +5 s of lateness allowance
    // closes the last whole window.
    for (label, windows) in [
        ("after 1 reading", 0u64),
        ("just past the warm-up", warmup + 2),
        ("after 2 h", 120),
    ] {
        let target_s = if windows == 0 { 0 } else { windows * 60 + 5 };
        feed.run(&mut engine, target_s - done_s, &mut sink);
        sink.flush(&mut engine);
        // One more reading each, straight to the engine, so that every
        // stream is dirty and take_dirty hands out all the states to encode.
        let t = feed.advance();
        for r in &feed.readings {
            engine.process(r, t, &mut sink.out);
        }
        done_s = target_s + 1;
        let mut checkpoint_bytes = 0;
        parts.clear();
        {
            let dirty = engine.take_dirty();
            assert_eq!(dirty.len(), streams, "every stream should be dirty");
            let mut buf = Vec::new();
            for (_, state) in &dirty {
                buf.clear();
                ciborium::ser::into_writer(*state, &mut buf).expect("encode a stream state");
                checkpoint_bytes += buf.len();
                composition(&buf, &mut parts);
            }
        }
        // The stage hands its outputs to the store and drops them.
        sink.out = Output::default();
        let heap = meter.read();
        assert_eq!(engine.streams(), streams);
        found.push(Footprint {
            label,
            windows,
            heap,
            checkpoint_bytes,
        });
    }
    drop(meter);

    for f in &found {
        let setup = format!(
            "{} streams, 1-min windows, baseline mean+std, limit; {} ({} windows)",
            grouped(n),
            f.label,
            f.windows
        );
        let chunks = f.heap.chunk_bytes as f64 / n;
        rep.row(
            "3. heap per scalar stream",
            setup.clone(),
            format!(
                "**{} B** requested; {} B as malloc chunks; {:.1} blocks",
                grouped(f.heap.bytes as f64 / n),
                grouped(chunks),
                f.heap.blocks as f64 / n
            ),
            "≤ 8 KiB (8,192 B)",
            (f.windows > 0).then_some(chunks <= 8192.0),
        );
        rep.row(
            "3. checkpoint per stream",
            setup,
            format!(
                "**{} B** CBOR of StreamState",
                grouped(f.checkpoint_bytes as f64 / n)
            ),
            "—",
            None,
        );
    }
    let mut top: Vec<_> = parts.iter().filter(|(k, _)| !k.contains('.')).collect();
    top.sort_by_key(|(_, b)| std::cmp::Reverse(**b));
    let mut line = String::new();
    for (field, bytes) in top {
        let _ = write!(line, "{field} {}", grouped(*bytes as f64 / n));
        let inner: Vec<String> = parts
            .iter()
            .filter(|(k, b)| {
                k.strip_prefix(field.as_str())
                    .is_some_and(|rest| rest.starts_with('.'))
                    && **b as f64 / n >= 64.0
            })
            .map(|(k, b)| format!("{} {}", &k[field.len() + 1..], grouped(*b as f64 / n)))
            .collect();
        if !inner.is_empty() {
            let _ = write!(line, " ({})", inner.join(", "));
        }
        line.push_str("; ");
    }
    rep.detail(format!(
        "checkpoint per stream after 2 h, bytes by StreamState field (fields of 64 B or more inside): {}",
        line.trim_end_matches("; ")
    ));
    rep.detail(format!(
        "memory: of the heap per stream, {} B is its own copy of the stream settings (an Arc<StreamSettings> per stream, resolved when the stream appears)",
        grouped(settings_bytes)
    ));
}

/// Adds the encoded size of each field of a CBOR-encoded struct (and of the
/// fields of its fields) to `parts`, by dotted name.
fn composition(bytes: &[u8], parts: &mut BTreeMap<String, usize>) {
    let encoded_len = |v: &ciborium::Value| {
        let mut buf = Vec::new();
        ciborium::ser::into_writer(v, &mut buf).map_or(0, |()| buf.len())
    };
    let name = |k: &ciborium::Value| k.as_text().map_or_else(|| format!("{k:?}"), str::to_string);
    let Ok(ciborium::Value::Map(fields)) = ciborium::de::from_reader(bytes) else {
        return;
    };
    for (k, v) in &fields {
        let field = name(k);
        *parts.entry(field.clone()).or_default() += encoded_len(v);
        if let ciborium::Value::Map(inner) = v {
            for (k2, v2) in inner {
                *parts.entry(format!("{field}.{}", name(k2))).or_default() += encoded_len(v2);
            }
        }
    }
}

// ------------------------------------------------------------ 4. store

/// Sums over the batches of one pass.
#[derive(Debug, Default, Clone, Copy)]
struct StepTimes {
    read: Duration,
    detect: Duration,
    encode: Duration,
    commit: Duration,
    batches: u64,
    readings: u64,
    states: u64,
    bytes: u64,
    outputs: u64,
}

impl StepTimes {
    fn total(&self) -> Duration {
        self.read + self.detect + self.encode + self.commit
    }
}

/// The detect stage's `step` without its async shell: read a batch from the
/// log, run it through the engine, encode the dirty states as `commit_of`
/// does, and write them with the outputs and the cursor in one transaction.
fn steps(store: &Store, engine: &mut Engine, cursor: &mut u64, batches: u64) -> StepTimes {
    let mut t = StepTimes::default();
    for _ in 0..batches {
        let t0 = Instant::now();
        let batch = store
            .readings_from(*cursor, BATCH)
            .expect("read the readings log");
        assert!(!batch.is_empty(), "the readings log ran out");
        let t1 = Instant::now();
        let mut out = Output::default();
        let mut next = *cursor;
        for (seq, r) in &batch {
            engine.process(r, r.time_ms, &mut out);
            next = seq + 1;
        }
        let t2 = Instant::now();
        let mut checkpoints = Vec::new();
        for (key, state) in engine.take_dirty() {
            let mut bytes = Vec::new();
            ciborium::ser::into_writer(state, &mut bytes).expect("encode a stream state");
            checkpoints.push((key, bytes));
        }
        let mut counters = Vec::new();
        ciborium::ser::into_writer(engine.counters(), &mut counters).expect("encode counters");
        checkpoints.push(("\u{1}counters".to_string(), counters));
        t.states += checkpoints.len() as u64 - 1;
        t.bytes += checkpoints.iter().map(|(_, b)| b.len() as u64).sum::<u64>();
        t.outputs += (out.alerts.len() + out.aggregates.len()) as u64;
        let commit = DetectionCommit {
            cursor: next,
            checkpoints,
            alerts: out.alerts,
            aggregates: out.aggregates,
            ..DetectionCommit::default()
        };
        let t3 = Instant::now();
        store.commit_detection(&commit).expect("commit detection");
        let full = store.is_full();
        assert!(!full, "the benchmark store's budget ran out");
        let t4 = Instant::now();
        t.read += t1 - t0;
        t.detect += t2 - t1;
        t.encode += t3 - t2;
        t.commit += t4 - t3;
        t.batches += 1;
        t.readings += batch.len() as u64;
        *cursor = next;
    }
    t
}

fn store(dir: &Path, sensors: usize, rep: &mut Report) {
    let registry = device_file(dir, "store.toml", SCALAR_TIME);
    let warmup = warmup_windows(&registry, "sensor-00000", "temperature");
    let mut feed = ScalarFeed::new(sensors);
    let mut engine = Engine::new(registry);
    let mut sink = Sink::default();
    // Past the baseline's warm-up directly, without the store.
    feed.run(&mut engine, (warmup + 2) * 60 + 5, &mut sink);
    sink.flush(&mut engine);

    // The log ingest would have written: what each sensor sends next.
    let store_dir = tempfile::Builder::new()
        .prefix("vigil-bench-store")
        .tempdir_in(dir)
        .expect("a store directory");
    let store =
        Store::open_at(store_dir.path(), 1 << 40, 10_000, 16 << 20).expect("open the store");
    let batches = rep.scale(100);
    let per_pass = batches * BATCH as u64;
    let seconds = (4 * per_pass).div_ceil(sensors as u64) + 1;
    let mut left = seconds;
    while left > 0 {
        let s = left.min((65_536 / sensors as u64).max(1));
        let readings = feed.collect(s);
        let messages = readings.len() as u64;
        store
            .commit(&Batch {
                readings,
                dead_letters: Vec::new(),
                messages,
            })
            .expect("fill the readings log");
        left -= s;
    }

    let mut cursor = store.detection_cursor().expect("read the cursor");
    steps(&store, &mut engine, &mut cursor, batches);
    let mut passes = Vec::new();
    for _ in 0..3 {
        passes.push(steps(&store, &mut engine, &mut cursor, batches));
    }
    let best = *passes
        .iter()
        .min_by_key(|p| p.total())
        .expect("three passes");
    let b = best.batches as f64;
    let ms = |d: Duration| d.as_secs_f64() * 1e3 / b;
    let rate = per_s(best.readings, best.total());
    let setup = format!(
        "{} streams, 1-min windows, baseline mean+std; real sled store in a temp dir",
        grouped(sensors as f64)
    );
    rep.row(
        "4. store commit per batch",
        setup.clone(),
        format!(
            "**{:.2} ms** per 4,096 readings (encode {:.2} ms + commit_detection {:.2} ms; {:.0} states, {:.0} KiB, {:.1} outputs)",
            ms(best.encode + best.commit),
            ms(best.encode),
            ms(best.commit),
            best.states as f64 / b,
            best.bytes as f64 / b / 1024.0,
            best.outputs as f64 / b,
        ),
        "—",
        None,
    );
    rep.row(
        "4. end to end, step-like",
        setup,
        format!(
            "**{} readings/s** (per batch: read {:.2} + detect {:.2} + encode {:.2} + commit {:.2} ms)",
            grouped(rate),
            ms(best.read),
            ms(best.detect),
            ms(best.encode),
            ms(best.commit),
        ),
        "—",
        None,
    );
}

/// Files of a store with readings flowing through it at disk speed, once
/// full: each batch committed, the oldest readings trimmed to make room
/// (detection caught up). `samples` 0 for scalar readings.
fn disk(dir: &Path, budget: u64, samples: usize, rep: &mut Report) {
    let store_dir = tempfile::Builder::new()
        .prefix("vigil-bench-disk")
        .tempdir_in(dir)
        .expect("a store directory");
    let store =
        Store::open_at(store_dir.path(), budget, 10_000, budget / 16).expect("open the store");
    // Batches of 500 scalar readings (about 20 KB) or 8 blocks of 8,192
    // samples (about 330 KB).
    let per_batch = if samples == 0 { 500 } else { 8 };
    let to_write = rep.scale(10) * budget;
    let mut written = 0u64;
    let mut t: EpochMs = 1_790_000_000_000;
    let mut peak = 0u64;
    let mut last = (0u64, 0u64);
    while written < to_write {
        let readings: Vec<Reading> = (0..per_batch)
            .map(|k| {
                t += 10;
                let value = if samples == 0 {
                    Value::Scalar((t % 1000) as f64 * 0.37)
                } else {
                    Value::Waveform(Waveform {
                        sample_rate_hz: 25_600.0,
                        samples: (0..samples)
                            .map(|i| ((i as f32) * 0.01 + k as f32).sin())
                            .collect(),
                    })
                };
                Reading {
                    device: format!("sensor-{:02}", k % 20),
                    metric: "vibration".into(),
                    time_ms: t,
                    value,
                }
            })
            .collect();
        let messages = readings.len() as u64;
        let before = store.stats().expect("store stats").readings_bytes;
        store
            .commit(&Batch {
                readings,
                dead_letters: Vec::new(),
                messages,
            })
            .expect("commit a batch");
        let stats = store.stats().expect("store stats");
        written += stats.readings_bytes.saturating_sub(before);
        store.make_room(stats.next_seq).expect("make room");
        let stats = store.stats().expect("store stats");
        let data = stats.readings_bytes + stats.checkpoint_bytes;
        peak = peak.max(stats.size_on_disk);
        last = (stats.size_on_disk, data);
    }
    let mib = |b: u64| b as f64 / (1 << 20) as f64;
    let kind = if samples == 0 {
        "scalar readings".to_string()
    } else {
        format!("waveforms of {} samples", grouped(samples as f64))
    };
    rep.row(
        "5. store files under a full budget",
        format!(
            "budget {:.0} MiB, {:.0} MiB of {kind} written through it (oldest trimmed), fsync per batch",
            mib(budget),
            mib(to_write)
        ),
        format!(
            "**{:.2}× the budget** at most ({:.0} MiB of files), {:.2}× at the end with {:.0} MiB of data",
            peak as f64 / budget as f64,
            mib(peak),
            last.0 as f64 / budget as f64,
            mib(last.1),
        ),
        "—",
        None,
    );
}

// ------------------------------------------------------------ main

fn cpus_allowed() -> String {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
        .map(|s| s.trim().to_string())
        .unwrap_or_else(|| "?".into())
}

fn main() {
    let args = Args::parse("detect", &["scalar", "waveform", "memory", "store", "disk"]);
    let dir = tempfile::Builder::new()
        .prefix("vigil-bench-detect")
        .tempdir()
        .expect("a temporary directory");
    let mut rep = Report::new("bench-detect", args.quick, 10, "a tenth");
    let started = Instant::now();

    if args.run("scalar") {
        scalar(
            dir.path(),
            "time.toml",
            SCALAR_TIME,
            1000,
            "1-min windows (60 readings)",
            &mut rep,
        );
        scalar(
            dir.path(),
            "time.toml",
            SCALAR_TIME,
            10,
            "1-min windows (60 readings)",
            &mut rep,
        );
        scalar(
            dir.path(),
            "count.toml",
            SCALAR_COUNT,
            1000,
            "window_readings = 60",
            &mut rep,
        );
    }
    if args.run("waveform") {
        waveform(dir.path(), 12_000, &mut rep);
        waveform(dir.path(), 6_000, &mut rep);
    }
    if args.run("memory") {
        memory(dir.path(), &mut rep);
    }
    if args.run("store") {
        store(dir.path(), 1000, &mut rep);
        store(dir.path(), 10, &mut rep);
    }
    if args.run("disk") {
        disk(dir.path(), 16 << 20, 0, &mut rep);
        disk(dir.path(), 64 << 20, 0, &mut rep);
        disk(dir.path(), 64 << 20, 8192, &mut rep);
        disk(dir.path(), 256 << 20, 0, &mut rep);
    }

    let intro = format!(
        "CPU: {} · CPUs allowed: {} · one thread · {} · best of 3 after a warm-up pass",
        cpu_model(),
        cpus_allowed(),
        build_kind(),
    );
    print!(
        "{}",
        rep.markdown("vigil detection benchmark", &intro, started)
    );
}
