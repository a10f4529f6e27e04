//! Healthy sensor signals: event time and a random stream in; a bearing
//! housing temperature, a velocity RMS or a block of acceleration samples
//! out. Pure functions: no clock, no I/O.
//!
//! The constants are generic figures for a 15 kW centrifugal pump on a rigid
//! foundation (ISO 10816-3 group 2), not fitted to any recording. The
//! machine and bearing constants are public so that a device file can be
//! written to match (`[metrics.vibration.bearing] shaft_rpm`, `bpfo`, ...).

use std::f64::consts::TAU;

use super::rng::Rng;
use crate::model::EpochMs;

// ------------------------------------------------------------ the machine

/// Shaft speed of every simulated pump: a 4-pole induction motor at 50 Hz
/// under load (1500 rpm synchronous, about 1.3 % slip).
pub const SHAFT_RPM: f64 = 1480.0;
pub const SHAFT_HZ: f64 = SHAFT_RPM / 60.0;
/// Defect frequencies of the drive-end bearing as multiples of shaft speed:
/// a 6205 deep-groove ball bearing (9 balls), the same figures as
/// `config/devices/motors.toml`. BPFO × shaft speed = 88.4 Hz at 1480 rpm.
pub const BPFO_ORDER: f64 = 3.5848;
pub const BPFI_ORDER: f64 = 5.4152;
pub const BSF_ORDER: f64 = 2.357;
pub const FTF_ORDER: f64 = 0.39828;

/// Accelerometer defaults: 12.8 kHz sampling (5 kHz usable bandwidth) and
/// blocks of 4096 samples (0.32 s, 3.1 Hz resolution).
pub const SAMPLE_RATE_HZ: f64 = 12_800.0;
pub const BLOCK_SAMPLES: usize = 4096;
/// Structural resonance each defect impulse rings at, and its damping ratio.
pub const RESONANCE_HZ: f64 = 3_500.0;
pub const RESONANCE_DAMPING: f64 = 0.05;
/// A band around the resonance: what a device file should give as
/// `envelope_band_hz` (vigil's default, a quarter to 0.9 of Nyquist, also
/// contains it at 12.8 kHz).
pub const ENVELOPE_BAND_HZ: (f64, f64) = (2_000.0, 5_000.0);

/// Peak acceleration (g) of the 1×, 2× and 3× shaft harmonics of a healthy,
/// slightly unbalanced and misaligned machine, before the per-device gain.
pub const HARMONICS_G: [f64; 3] = [0.030, 0.015, 0.008];
/// Per-device gain on the harmonics: velocity RMS 1.4 to 1.9 mm/s (zone B).
pub const HARMONICS_GAIN: (f64, f64) = (1.0, 1.4);
/// Broadband (white) acceleration noise, standard deviation in g.
pub const ACCEL_NOISE_G: f64 = 0.02;
/// Random timing error of each defect impulse, as a fraction of the period
/// (rolling elements slip a little).
pub const IMPULSE_JITTER: f64 = 0.01;

// ------------------------------------------------------------ temperature

/// Range of the per-device base temperature of the bearing housing, degC.
pub const TEMPERATURE_BASE_C: (f64, f64) = (40.0, 50.0);
/// Daily cycle (ambient and load), amplitude in degC, peaking mid-afternoon UTC.
pub const DAILY_AMPLITUDE_C: f64 = 3.0;
pub const DAILY_PEAK_HOUR_UTC: f64 = 15.0;
/// Slow wander (an Ornstein–Uhlenbeck process: AR(1) at any reading
/// interval): stationary standard deviation and time constant.
pub const WANDER_SIGMA_C: f64 = 0.5;
pub const WANDER_TAU_S: f64 = 7_200.0;
/// Measurement noise (standard deviation) and resolution of the sensor.
pub const TEMPERATURE_NOISE_C: f64 = 0.15;
pub const TEMPERATURE_RESOLUTION_C: f64 = 0.01;

// ------------------------------------------------------------ velocity RMS

/// Range of the per-device velocity RMS (mm/s, 10–1000 Hz), as a wireless
/// vibration sensor reports it: zone A/B of ISO 10816-3 group 2 (B is
/// 1.4–2.8 mm/s).
pub const VELOCITY_BASE_MM_S: (f64, f64) = (1.2, 2.0);
/// Load-related wobble: relative amplitude and period (event time).
pub const LOAD_WOBBLE: f64 = 0.05;
pub const LOAD_PERIOD_S: f64 = 17.0 * 60.0;
/// Relative measurement noise (standard deviation).
pub const VELOCITY_NOISE: f64 = 0.02;
/// Resolution of the reported velocity RMS, mm/s.
pub const VELOCITY_RESOLUTION_MM_S: f64 = 0.001;

const DAY_MS: i64 = 86_400_000;

/// `x` rounded to a multiple of `step`, as a sensor with that resolution sends it.
pub fn quantize(x: f64, step: f64) -> f64 {
    (x / step).round() * step
}

/// The daily cycle at event time `t_ms`, degC around the base.
pub fn daily_cycle_c(t_ms: EpochMs) -> f64 {
    let hours = t_ms.rem_euclid(DAY_MS) as f64 / 3_600_000.0;
    DAILY_AMPLITUDE_C * (TAU * (hours - DAILY_PEAK_HOUR_UTC) / 24.0).cos()
}

/// A bearing housing temperature sensor.
#[derive(Debug, Clone)]
pub struct Temperature {
    base_c: f64,
    wander_c: f64,
    last_ms: Option<EpochMs>,
}

impl Temperature {
    pub fn new(rng: &mut Rng) -> Temperature {
        Temperature {
            base_c: rng.range(TEMPERATURE_BASE_C.0, TEMPERATURE_BASE_C.1),
            // Drawn from the stationary distribution: no start-up transient.
            wander_c: WANDER_SIGMA_C * rng.normal(),
            last_ms: None,
        }
    }

    /// The reading at event time `t_ms` (times must not go backwards; the
    /// wander advances by the time since the previous reading).
    pub fn next(&mut self, t_ms: EpochMs, rng: &mut Rng) -> f64 {
        if let Some(last) = self.last_ms {
            // Exact discretisation of the OU process over dt: φ = e^(−dt/τ),
            // innovation σ·√(1 − φ²), so the wander's spread does not depend
            // on the reading rate or the speed-up.
            let dt_s = (t_ms - last).max(0) as f64 / 1000.0;
            let phi = (-dt_s / WANDER_TAU_S).exp();
            self.wander_c =
                phi * self.wander_c + WANDER_SIGMA_C * (1.0 - phi * phi).sqrt() * rng.normal();
        }
        self.last_ms = Some(t_ms);
        let v =
            self.base_c + daily_cycle_c(t_ms) + self.wander_c + TEMPERATURE_NOISE_C * rng.normal();
        quantize(v, TEMPERATURE_RESOLUTION_C)
    }
}

/// A wireless vibration sensor reporting velocity RMS.
#[derive(Debug, Clone)]
pub struct VelocityRms {
    base_mm_s: f64,
    wobble_phase: f64,
}

impl VelocityRms {
    pub fn new(rng: &mut Rng) -> VelocityRms {
        VelocityRms {
            base_mm_s: rng.range(VELOCITY_BASE_MM_S.0, VELOCITY_BASE_MM_S.1),
            wobble_phase: rng.range(0.0, TAU),
        }
    }

    /// The healthy machine's velocity RMS at `t_ms`, mm/s (unrounded).
    pub fn healthy(&self, t_ms: EpochMs, rng: &mut Rng) -> f64 {
        let t_s = t_ms as f64 / 1000.0;
        let load = 1.0 + LOAD_WOBBLE * (TAU * t_s / LOAD_PERIOD_S + self.wobble_phase).sin();
        self.base_mm_s * load * (1.0 + VELOCITY_NOISE * rng.normal())
    }
}

/// An accelerometer on the drive-end bearing housing, sending blocks of
/// samples in g.
#[derive(Debug, Clone)]
pub struct Accelerometer {
    gain: f64,
    phases: [f64; 3],
}

impl Accelerometer {
    pub fn new(rng: &mut Rng) -> Accelerometer {
        Accelerometer {
            gain: rng.range(HARMONICS_GAIN.0, HARMONICS_GAIN.1),
            phases: [
                rng.range(0.0, TAU),
                rng.range(0.0, TAU),
                rng.range(0.0, TAU),
            ],
        }
    }

    /// A block of `n` samples at `sample_rate_hz` whose first sample is at
    /// `t_ms`: shaft harmonics, broadband noise and, when `impulse_g` > 0,
    /// an outer-race defect: an impulse at every ball pass (BPFO) exciting
    /// the housing resonance, `impulse_g` at its peak.
    pub fn block(
        &self,
        t_ms: EpochMs,
        sample_rate_hz: f64,
        n: usize,
        impulse_g: f64,
        rng: &mut Rng,
    ) -> Vec<f32> {
        let dt = 1.0 / sample_rate_hz;
        // Shaft angle from event time, so consecutive blocks are in phase
        // (1480 revolutions per minute: a whole number each minute).
        let t0 = t_ms.rem_euclid(60_000) as f64 / 1000.0;
        let mut x: Vec<f64> = (0..n)
            .map(|j| {
                let t = t0 + j as f64 * dt;
                let harmonics: f64 = HARMONICS_G
                    .iter()
                    .zip(self.phases)
                    .enumerate()
                    .map(|(h, (a, phase))| a * (TAU * (h + 1) as f64 * SHAFT_HZ * t + phase).sin())
                    .sum();
                self.gain * harmonics + ACCEL_NOISE_G * rng.normal()
            })
            .collect();
        if impulse_g > 0.0 {
            add_defect_impulses(&mut x, sample_rate_hz, impulse_g, rng);
        }
        x.into_iter().map(|v| v as f32).collect()
    }
}

/// Adds an impulse train at BPFO, each impulse the response of a single
/// degree of freedom resonance: A·e^(−ζωₙt)·sin(ω_d t), ω_d = ωₙ√(1 − ζ²).
/// The envelope of this train repeats at BPFO, which is what envelope
/// analysis finds (the resonance itself is far above the shaft harmonics).
fn add_defect_impulses(x: &mut [f64], sample_rate_hz: f64, amplitude_g: f64, rng: &mut Rng) {
    let n = x.len();
    let period_s = 1.0 / (BPFO_ORDER * SHAFT_HZ);
    let wn = TAU * RESONANCE_HZ;
    let decay = RESONANCE_DAMPING * wn;
    let wd = wn * (1.0 - RESONANCE_DAMPING * RESONANCE_DAMPING).sqrt();
    // Ringing down to 1/1000 of the peak: ln(1000) / (ζωₙ).
    let ring = ((1000f64.ln() / decay) * sample_rate_hz).ceil() as usize;
    let block_s = n as f64 / sample_rate_hz;
    // Start one period early: an impulse just before the block still rings into it.
    let mut t_k = -rng.uniform() * period_s;
    while t_k < block_s {
        let at = t_k + IMPULSE_JITTER * period_s * rng.normal();
        let first = (at * sample_rate_hz).ceil().max(0.0) as usize;
        for (j, v) in x.iter_mut().enumerate().skip(first).take(ring) {
            let t = j as f64 / sample_rate_hz - at;
            *v += amplitude_g * (-decay * t).exp() * (wd * t).sin();
        }
        t_k += period_s;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const T0: EpochMs = 1_795_219_200_000; // 2026-11-21T00:00:00Z

    #[test]
    fn temperature_follows_the_daily_cycle_within_its_range() {
        let mut rng = Rng::new(1);
        let mut sensor = Temperature::new(&mut rng);
        let base = sensor.base_c;
        assert!((40.0..50.0).contains(&base));
        // One reading a minute for two days.
        let values: Vec<(EpochMs, f64)> = (0..2 * 1440)
            .map(|i| {
                let t = T0 + i * 60_000;
                (t, sensor.next(t, &mut rng))
            })
            .collect();
        let (min, max) = values
            .iter()
            .fold((f64::MAX, f64::MIN), |(lo, hi), &(_, v)| {
                (lo.min(v), hi.max(v))
            });
        // ±3 degC of cycle, a few spreads of wander and noise.
        assert!(
            min > base - 6.0 && max < base + 6.0,
            "{min}..{max} around {base}"
        );
        assert!(max - min > 4.0, "the cycle shows: {min}..{max}");
        // Warmest in the afternoon, coolest at night: hourly means at 15:00
        // and 03:00 differ by about twice the amplitude.
        let mean_at = |hour: i64| {
            let v: Vec<f64> = values
                .iter()
                .filter(|(t, _)| (t - T0).rem_euclid(DAY_MS) / 3_600_000 == hour)
                .map(|&(_, v)| v)
                .collect();
            v.iter().sum::<f64>() / v.len() as f64
        };
        let swing = mean_at(15) - mean_at(3);
        assert!((4.0..8.0).contains(&swing), "afternoon - night = {swing}");
        // Quantised to the sensor's resolution.
        for &(_, v) in &values {
            assert!((v * 100.0 - (v * 100.0).round()).abs() < 1e-6);
        }
    }

    #[test]
    fn velocity_rms_stays_in_zone_a_or_b() {
        let mut rng = Rng::new(2);
        for _ in 0..50 {
            let sensor = VelocityRms::new(&mut rng);
            for i in 0..500 {
                let v = sensor.healthy(T0 + i * 10_000, &mut rng);
                assert!(v > 1.0 && v < 2.5, "{v} mm/s");
            }
        }
    }
}
