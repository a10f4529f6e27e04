//! Spectral features of one waveform block: acceleration samples in; broadband
//! velocity RMS (ISO 10816), band RMS and bearing envelope amplitudes out.
//!
//! Plain maths on a slice: no I/O, no clock. A `Spectrum` keeps the FFT plans
//! of the last few block lengths and one set of buffers, so equal-length
//! blocks allocate nothing after the first (apart from the returned `bands`
//! vector).

use std::f64::consts::PI;
use std::sync::Arc;

use realfft::num_complex::Complex;
use realfft::{ComplexToReal, RealFftPlanner, RealToComplex};

use crate::config::WaveformSettings;

/// Shorter blocks give all-zero features.
const MIN_BLOCK_LEN: usize = 16;
/// ISO 10816 broadband velocity range.
const VELOCITY_BAND_HZ: (f64, f64) = (10.0, 1000.0);
/// Mean of w² for the periodic Hann window (1/4 + 1/8): the energy correction.
const HANN_MEAN_SQUARE: f64 = 0.375;
/// Mean of w for the periodic Hann window: the amplitude (coherent gain) correction.
const HANN_COHERENT_GAIN: f64 = 0.5;
/// A defect peak is searched within ±max(this many bins, fraction × f_d).
const SEARCH_MIN_BINS: f64 = 2.0;
const SEARCH_FRACTION: f64 = 0.015;
/// FFT plans kept, one per block length, least recently used out first.
///
/// Block lengths come from the payloads, so a sender can make every block a
/// new length; a plan per length ever seen (rustfft's planner caches them
/// all) grew without bound. Each length keeps its own exact plan rather than
/// being padded to one of a few fixed sizes: padding would move the bins
/// (`bin_hz` = rate / padded length) and spread the Hann window's leakage,
/// changing every spectral feature of blocks that are not already a padded
/// size. A real sensor sends one or a few lengths, which stay cached; a
/// plan that was evicted is simply made again (rustfft picks the same
/// algorithm for a length every time, so the features are identical).
const PLAN_CACHE_LEN: usize = 8;

/// Reusable analyser: caches FFT plans for the last [`PLAN_CACHE_LEN`] block
/// lengths and scratch buffers for the current one, so a stream of
/// equal-length blocks allocates nothing after the first.
pub struct Spectrum {
    /// Plans by block length, most recently used last; the last one is the
    /// current length, which the buffers are sized for.
    plans: Vec<Plans>,
    /// Real time-domain buffers of one block (FFT inputs are clobbered).
    time: Vec<f64>,
    quad: Vec<f64>,
    /// Spectrum of the block, `len / 2 + 1` bins.
    spec: Vec<Complex<f64>>,
    /// Working spectrum (band-passed block, then envelope spectrum).
    work: Vec<Complex<f64>>,
    scratch: Vec<Complex<f64>>,
}

/// Forward and inverse real FFTs of one length.
#[derive(Clone)]
struct Plans {
    len: usize,
    forward: Arc<dyn RealToComplex<f64>>,
    inverse: Arc<dyn ComplexToReal<f64>>,
}

/// Spectral features of one block.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct BlockSpectrum {
    /// Broadband velocity RMS in mm/s over 10–1000 Hz (ISO 10816), from
    /// acceleration integrated in the frequency domain (V(f) = A(f) / (j·2πf)),
    /// Parseval over the band. Bins above Nyquist are simply absent.
    pub velocity_rms_mm_s: f64,
    /// RMS amplitude (input unit) of the signal within each configured band,
    /// same order as settings.bands (Parseval over the band's bins).
    pub bands: Vec<f64>,
    /// Envelope-spectrum amplitude (input unit) at BPFO, BPFI, BSF, FTF (this
    /// order), or None without a bearing. A carrier of amplitude A modulated
    /// with depth m at a defect frequency gives A·m there.
    pub envelope: Option<[f64; 4]>,
}

impl BlockSpectrum {
    /// All features zero, shaped like `settings` (one entry per band, an
    /// envelope exactly when a bearing is configured).
    fn zeros(settings: &WaveformSettings) -> BlockSpectrum {
        BlockSpectrum {
            velocity_rms_mm_s: 0.0,
            bands: vec![0.0; settings.bands.len()],
            envelope: settings.bearing.map(|_| [0.0; 4]),
        }
    }
}

impl Default for Spectrum {
    fn default() -> Self {
        Spectrum::new()
    }
}

impl std::fmt::Debug for Spectrum {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let len = self.plans.last().map_or(0, |p| p.len);
        f.debug_struct("Spectrum").field("block_len", &len).finish()
    }
}

impl Spectrum {
    pub fn new() -> Spectrum {
        Spectrum {
            plans: Vec::with_capacity(PLAN_CACHE_LEN),
            time: Vec::new(),
            quad: Vec::new(),
            spec: Vec::new(),
            work: Vec::new(),
            scratch: Vec::new(),
        }
    }

    /// Block lengths whose FFT plans are cached (at most [`PLAN_CACHE_LEN`]).
    pub fn cached_plans(&self) -> usize {
        self.plans.len()
    }

    /// Features of one block of acceleration samples (in settings.input_unit)
    /// taken at sample_rate_hz.
    ///
    /// Blocks shorter than 16 samples, a sample rate that is not a positive
    /// finite number, or non-finite samples give all-zero features.
    pub fn analyze(
        &mut self,
        samples: &[f32],
        sample_rate_hz: f64,
        settings: &WaveformSettings,
    ) -> BlockSpectrum {
        let mut out = BlockSpectrum::zeros(settings);
        let n = samples.len();
        if n < MIN_BLOCK_LEN || !(sample_rate_hz.is_finite() && sample_rate_hz > 0.0) {
            return out;
        }
        // f32 samples cannot overflow an f64 sum, so a non-finite mean means a
        // non-finite sample.
        let mean = samples.iter().map(|&s| f64::from(s)).sum::<f64>() / n as f64;
        if !mean.is_finite() {
            return out;
        }
        let plans = self.prepare(n);

        // Sensor DC offset removed before anything else.
        for (t, &s) in self.time.iter_mut().zip(samples) {
            *t = f64::from(s) - mean;
        }
        let forward =
            plans
                .forward
                .process_with_scratch(&mut self.time, &mut self.spec, &mut self.scratch);
        if forward.is_err() {
            return out;
        }
        remove_windowed_mean(&mut self.spec);
        let bin_hz = sample_rate_hz / n as f64;
        let spec = &self.spec;

        // Velocity: |V(f)|² = |A(f)|² / (2πf)², summed over 10–1000 Hz (Parseval).
        let to_m_s2 = settings.input_unit.to_m_s2();
        let mut velocity_ms2 = 0.0;
        if let Some((lo, hi)) = bin_range(VELOCITY_BAND_HZ.0, VELOCITY_BAND_HZ.1, bin_hz, n) {
            for k in lo.max(1)..=hi {
                let w = 2.0 * PI * k as f64 * bin_hz;
                velocity_ms2 += hann_power(spec, k, n) / (w * w);
            }
        }
        out.velocity_rms_mm_s = velocity_ms2.sqrt() * to_m_s2 * 1000.0;

        for (rms, band) in out.bands.iter_mut().zip(&settings.bands) {
            if let Some((lo, hi)) = bin_range(band.from_hz, band.to_hz, bin_hz, n) {
                *rms = (lo..=hi)
                    .map(|k| hann_power(spec, k, n))
                    .sum::<f64>()
                    .sqrt();
            }
        }

        if let Some(bearing) = settings.bearing {
            let nyquist = sample_rate_hz / 2.0;
            let (from, to) = settings
                .envelope_band_hz
                .unwrap_or((nyquist / 4.0, 0.9 * nyquist));
            if !self.envelope_spectrum(&plans, from, to, bin_hz) {
                return out;
            }
            let orders = [bearing.bpfo, bearing.bpfi, bearing.bsf, bearing.ftf];
            out.envelope = Some(orders.map(|order| {
                defect_amplitude(&self.work, order * bearing.shaft_hz, bin_hz, nyquist, n)
            }));
        }
        out
    }

    /// Plans and buffers for blocks of `n` samples; allocates only when `n`
    /// has no cached plan or is larger than any block before.
    fn prepare(&mut self, n: usize) -> Plans {
        if let Some(plans) = self.plans.last().filter(|p| p.len == n) {
            return plans.clone();
        }
        let plans = match self.plans.iter().position(|p| p.len == n) {
            Some(i) => self.plans.remove(i),
            None => {
                if self.plans.len() == PLAN_CACHE_LEN {
                    self.plans.remove(0);
                }
                // A planner of its own, dropped here: the shared planner kept
                // every length it had planned. Forward and inverse share
                // its inner complex FFT.
                let mut planner = RealFftPlanner::new();
                Plans {
                    len: n,
                    forward: planner.plan_fft_forward(n),
                    inverse: planner.plan_fft_inverse(n),
                }
            }
        };
        let zero = Complex::new(0.0, 0.0);
        let scratch = plans
            .forward
            .get_scratch_len()
            .max(plans.inverse.get_scratch_len());
        self.time.resize(n, 0.0);
        self.quad.resize(n, 0.0);
        self.spec.resize(n / 2 + 1, zero);
        self.work.resize(n / 2 + 1, zero);
        self.scratch.resize(scratch, zero);
        self.plans.push(plans.clone());
        plans
    }

    /// Envelope spectrum of the block (from `self.spec`) into `self.work`,
    /// unwindowed; false when the band holds no bins.
    fn envelope_spectrum(&mut self, plans: &Plans, from_hz: f64, to_hz: f64, bin_hz: f64) -> bool {
        let n = plans.len;
        let (inverse, forward) = (&plans.inverse, &plans.forward);
        // DC and an even length's Nyquist bin have no Hilbert transform.
        let last = (n - 1) / 2;
        let Some((lo, hi)) = bin_range(from_hz, to_hz, bin_hz, n) else {
            return false;
        };
        let (lo, hi) = (lo.max(1), hi.min(last));
        if lo > hi {
            return false;
        }
        let zero = Complex::new(0.0, 0.0);
        // Analytic signal z = x + j·H{x} of the band-passed block, built from
        // two real inverse FFTs: the band itself, and the band times −j (the
        // Hilbert transform's response at positive frequencies). This is the
        // usual "zero the negative frequencies" construction, split into its
        // real and imaginary parts; realfft offers no complex FFT.
        self.work.fill(zero);
        self.work[lo..=hi].copy_from_slice(&self.spec[lo..=hi]);
        let real = inverse.process_with_scratch(&mut self.work, &mut self.time, &mut self.scratch);
        self.work.fill(zero);
        for (w, x) in self.work[lo..=hi].iter_mut().zip(&self.spec[lo..=hi]) {
            *w = Complex::new(x.im, -x.re);
        }
        let quad = inverse.process_with_scratch(&mut self.work, &mut self.quad, &mut self.scratch);
        if real.is_err() || quad.is_err() {
            return false;
        }
        // |z| is the envelope; realfft's inverse is unnormalised (× n).
        let scale = 1.0 / n as f64;
        for (t, q) in self.time.iter_mut().zip(&self.quad) {
            *t = (*t * *t + q * q).sqrt() * scale;
        }
        let spectrum =
            forward.process_with_scratch(&mut self.time, &mut self.work, &mut self.scratch);
        if spectrum.is_err() {
            return false;
        }
        remove_windowed_mean(&mut self.work);
        true
    }
}

/// Bins k with from ≤ k·bin_hz ≤ to, within the `n / 2 + 1` bins of a real
/// FFT of `n` samples; `None` when empty.
fn bin_range(from_hz: f64, to_hz: f64, bin_hz: f64, n: usize) -> Option<(usize, usize)> {
    // A hair of tolerance so that a band edge exactly on a bin includes it.
    let lo = (from_hz / bin_hz - 1e-9).ceil().max(0.0);
    let hi = (to_hz / bin_hz + 1e-9).floor().min((n / 2) as f64);
    if !(lo.is_finite() && hi.is_finite() && lo <= hi) {
        return None;
    }
    Some((lo as usize, hi as usize))
}

/// Removes the mean as the Hann window sees it, so the windowed block has no
/// DC: Y[0] = 0.5·X[0] − 0.5·Re X[1] is zero when X[0] = Re X[1]; only the DC
/// bin changes, as for any constant. Zeroing X[0] (the plain mean) instead
/// would undo the window's leakage cancellation at bin 1, which is inside
/// 10–1000 Hz for blocks up to 1200 samples at 12 kHz (or is the FTF bin of a
/// short envelope spectrum).
fn remove_windowed_mean(x: &mut [Complex<f64>]) {
    x[0] = Complex::new(x[1].re, 0.0);
}

/// Bin k of the spectrum of the periodic-Hann-windowed block, from the
/// unwindowed spectrum `x` (`n / 2 + 1` bins of a real FFT of `n` samples).
/// The window is 0.5 − 0.25·e^{j2πt/n} − 0.25·e^{−j2πt/n}, so windowing is the
/// three-tap convolution Y[k] = 0.5·X[k] − 0.25·(X[k−1] + X[k+1]), with the
/// bins beyond either end taken from conjugate symmetry X[−k] = X[n−k] = X[k]*.
fn hann_bin(x: &[Complex<f64>], k: usize, n: usize) -> Complex<f64> {
    let last = x.len() - 1;
    let prev = if k == 0 { x[1].conj() } else { x[k - 1] };
    let next = match (k == last, n & 1 == 0) {
        (false, _) => x[k + 1],
        (true, true) => x[last - 1].conj(),
        (true, false) => x[last].conj(),
    };
    x[k] * 0.5 - (prev + next) * 0.25
}

/// Contribution of bin k to the block's mean square (Parseval, single-sided,
/// Hann energy-corrected): c·|Y[k]|² / (n²·mean(w²)), with c = 1 for DC and
/// an even length's Nyquist bin (they have no mirror) and 2 otherwise.
fn hann_power(x: &[Complex<f64>], k: usize, n: usize) -> f64 {
    let mirrored = k != 0 && !(n & 1 == 0 && k == n / 2);
    let c = if mirrored { 2.0 } else { 1.0 };
    let nf = n as f64;
    c * hann_bin(x, k, n).norm_sqr() / (nf * nf * HANN_MEAN_SQUARE)
}

/// Single-sided Hann-windowed envelope amplitude near `freq_hz`: the largest
/// bin within ±max(2 bins, 1.5 %), since shaft speed is never exact.
fn defect_amplitude(
    env: &[Complex<f64>],
    freq_hz: f64,
    bin_hz: f64,
    nyquist: f64,
    n: usize,
) -> f64 {
    if !(freq_hz.is_finite() && freq_hz > 0.0 && freq_hz <= nyquist) {
        return 0.0;
    }
    let half = (SEARCH_MIN_BINS * bin_hz).max(SEARCH_FRACTION * freq_hz);
    let Some((lo, hi)) = bin_range(freq_hz - half, freq_hz + half, bin_hz, n) else {
        return 0.0;
    };
    let lo = lo.max(1);
    let mag = |k: usize| hann_bin(env, k, n).norm();
    let mut best = (lo, mag(lo));
    for k in lo + 1..=hi {
        let m = mag(k);
        if m > best.1 {
            best = (k, m);
        }
    }
    let (k, peak) = best;
    if peak.is_nan() || peak == 0.0 {
        return 0.0;
    }
    // Hann scalloping loss reaches 15 % when the tone falls between bins.
    // At a local maximum, the ratio α of the larger neighbour to the peak
    // gives the offset δ = (2α − 1)/(α + 1) in bins, and the window response
    // there is sinc(δ)/(1 − δ²) (two-point interpolation; Grandke 1983).
    let mut gain = 1.0;
    if k < env.len() - 1 {
        let neighbour = mag(k - 1).max(mag(k + 1));
        if neighbour <= peak {
            let alpha = neighbour / peak;
            let delta = ((2.0 * alpha - 1.0) / (alpha + 1.0)).clamp(0.0, 0.5);
            if delta > 0.0 {
                gain = (PI * delta).sin() / (PI * delta) / (1.0 - delta * delta);
            }
        }
    }
    // Single-sided amplitude: 2·|Y| / (n·coherent gain).
    2.0 * peak / (n as f64 * HANN_COHERENT_GAIN * gain)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{AccelUnit, Band, Bearing};

    const FS: f64 = 12_000.0;
    const G: f64 = 9.80665;
    /// CWRU 6205-2RS at 1797 rpm: BPFO 107.4 Hz, BPFI 162.2 Hz, BSF 70.6 Hz, FTF 11.9 Hz.
    const BEARING: Bearing = Bearing {
        shaft_hz: 29.95,
        bpfo: 3.5848,
        bpfi: 5.4152,
        bsf: 2.357,
        ftf: 0.39828,
    };

    fn tones(n: usize, parts: &[(f64, f64)]) -> Vec<f32> {
        (0..n)
            .map(|i| {
                let t = i as f64 / FS;
                parts
                    .iter()
                    .map(|&(a, f)| a * (2.0 * PI * f * t).sin())
                    .sum::<f64>() as f32
            })
            .collect()
    }

    /// Closed form: a sine of amplitude A (m/s²) at f Hz has velocity RMS
    /// A/(2πf)/√2 m/s.
    fn velocity_mm_s(amplitude_m_s2: f64, f: f64) -> f64 {
        amplitude_m_s2 / (2.0 * PI * f) / 2f64.sqrt() * 1000.0
    }

    fn close(got: f64, want: f64, rel: f64) -> bool {
        (got - want).abs() <= rel * want.abs()
    }

    /// SplitMix64 with Box–Muller: deterministic noise without a dependency.
    struct Noise(u64);
    impl Noise {
        fn uniform(&mut self) -> f64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            ((z ^ (z >> 31)) >> 11) as f64 / (1u64 << 53) as f64
        }
        fn gauss(&mut self) -> f64 {
            let u = self.uniform().max(1e-300);
            (-2.0 * u.ln()).sqrt() * (2.0 * PI * self.uniform()).cos()
        }
    }

    fn with_bearing() -> WaveformSettings {
        WaveformSettings {
            bearing: Some(BEARING),
            ..WaveformSettings::default()
        }
    }

    #[test]
    fn velocity_of_a_sine_matches_closed_form_in_g_and_m_s2() {
        let mut s = Spectrum::new();
        let g = WaveformSettings::default();
        let si = WaveformSettings {
            input_unit: AccelUnit::MetersPerSecond2,
            ..WaveformSettings::default()
        };
        // 50 Hz on a bin, and 50.37 Hz between bins; with a 0.3 g DC offset.
        for (n, f) in [
            (12_000, 50.0),
            (12_000, 50.37),
            (6_000, 50.37),
            (4_999, 50.0),
        ] {
            let x: Vec<f32> = tones(n, &[(0.5, f)]).iter().map(|v| v + 0.3).collect();
            let got = s.analyze(&x, FS, &g).velocity_rms_mm_s;
            let want = velocity_mm_s(0.5 * G, f);
            assert!(close(got, want, 0.02), "n={n} f={f}: {got} vs {want}");
            let x = tones(n, &[(3.0, f)]);
            let got = s.analyze(&x, FS, &si).velocity_rms_mm_s;
            let want = velocity_mm_s(3.0, f);
            assert!(close(got, want, 0.02), "n={n} f={f} m/s²: {got} vs {want}");
        }
    }

    #[test]
    fn tones_outside_10_to_1000_hz_add_nothing_to_velocity() {
        // Off-bin on purpose: a rectangular window leaks 4 % of the 5.5 Hz
        // tone's velocity into the 10 Hz bins; the Hann window keeps it < 1 %.
        let mut s = Spectrum::new();
        let set = WaveformSettings::default();
        let low = s.analyze(&tones(12_000, &[(1.0, 5.5)]), FS, &set);
        assert!(low.velocity_rms_mm_s < 0.01 * velocity_mm_s(G, 5.5));
        // 1 024 samples: bin 1 is 11.7 Hz, where a badly removed mean would land.
        for n in [12_000, 1_024] {
            let high = s.analyze(&tones(n, &[(1.0, 2000.5)]), FS, &set);
            assert!(high.velocity_rms_mm_s < 0.01 * velocity_mm_s(G, 2000.5));
        }
        let mix = tones(12_000, &[(1.0, 5.5), (0.2, 80.0), (1.0, 2000.5)]);
        let got = s.analyze(&mix, FS, &set).velocity_rms_mm_s;
        assert!(close(got, velocity_mm_s(0.2 * G, 80.0), 0.01), "{got}");
    }

    #[test]
    fn two_tones_add_in_quadrature() {
        let mut s = Spectrum::new();
        // Comparable velocities, so quadrature (12.1) and sum (17.1) differ.
        let x = tones(12_000, &[(0.4, 50.0), (1.2, 160.3)]);
        let got = s
            .analyze(&x, FS, &WaveformSettings::default())
            .velocity_rms_mm_s;
        let (a, b) = (velocity_mm_s(0.4 * G, 50.0), velocity_mm_s(1.2 * G, 160.3));
        assert!(close(got, a.hypot(b), 0.02), "{got} vs {}", a.hypot(b));
    }

    #[test]
    fn band_rms_counts_only_tones_inside_the_band() {
        let band = |name: &str, from_hz, to_hz| Band {
            name: name.into(),
            from_hz,
            to_hz,
        };
        let set = WaveformSettings {
            bands: vec![
                band("low", 100.0, 500.0),
                band("high", 2000.0, 4000.0),
                band("above", 7000.0, 9000.0),
            ],
            ..WaveformSettings::default()
        };
        let mut s = Spectrum::new();
        let out = s.analyze(&tones(12_000, &[(2.0, 300.3)]), FS, &set);
        assert_eq!(out.bands.len(), 3);
        assert!(
            close(out.bands[0], 2.0 / 2f64.sqrt(), 0.01),
            "{:?}",
            out.bands
        );
        assert!(
            out.bands[1] < 1e-3 && out.bands[2] == 0.0,
            "{:?}",
            out.bands
        );
        let out = s.analyze(&tones(6_000, &[(2.0, 3000.0), (1.0, 300.0)]), FS, &set);
        assert!(
            close(out.bands[0], 1.0 / 2f64.sqrt(), 0.01),
            "{:?}",
            out.bands
        );
        assert!(
            close(out.bands[1], 2.0 / 2f64.sqrt(), 0.01),
            "{:?}",
            out.bands
        );
    }

    /// x = A·(1 + m·cos 2π·fm·t)·cos 2π·fc·t has envelope A·(1 + m·cos 2π·fm·t),
    /// so its envelope spectrum shows A·m at fm.
    #[test]
    fn envelope_of_am_carrier_shows_modulation_depth_at_bpfo() {
        let (a, m, fc) = (0.8, 0.5, 3000.0);
        let bpfo = BEARING.bpfo * BEARING.shaft_hz;
        let mut s = Spectrum::new();
        // The shaft turning 1 % faster than configured puts fm 0.44 bin off a
        // 1 Hz bin; 5 980 samples put the exact BPFO half a bin off. Both would
        // lose 10–15 % to Hann scalloping without the interpolation.
        for (n, fm) in [(12_000, 1.01 * bpfo), (5_980, bpfo)] {
            let x: Vec<f32> = (0..n)
                .map(|i| {
                    let t = i as f64 / FS;
                    (a * (1.0 + m * (2.0 * PI * fm * t).cos()) * (2.0 * PI * fc * t).cos()) as f32
                })
                .collect();
            let env = s.analyze(&x, FS, &with_bearing()).envelope.unwrap();
            assert!(close(env[0], a * m, 0.05), "n={n}: {env:?}");
            assert!(
                env[1..].iter().all(|&v| v < 0.05 * env[0]),
                "n={n}: {env:?}"
            );
        }
    }

    #[test]
    fn impulses_at_bpfi_in_noise_make_bpfi_the_largest() {
        let fd = BEARING.bpfi * BEARING.shaft_hz;
        let mut noise = Noise(7);
        let x: Vec<f32> = (0..12_000)
            .map(|i| {
                let t = i as f64 / FS;
                // Time since the last impact; each rings a 3.5 kHz resonance.
                let since = t % (1.0 / fd);
                let ring = (-since / 0.0008).exp() * (2.0 * PI * 3500.0 * since).sin();
                (ring + 0.3 * noise.gauss()) as f32
            })
            .collect();
        let env = Spectrum::new()
            .analyze(&x, FS, &with_bearing())
            .envelope
            .unwrap();
        let others = [env[0], env[2], env[3]];
        assert!(others.iter().all(|&v| v < 0.3 * env[1]), "{env:?}");
    }

    #[test]
    fn any_length_from_16_works_and_shorter_or_bad_input_gives_zeros() {
        let mut s = Spectrum::new();
        let set = WaveformSettings {
            bands: vec![Band {
                name: "b".into(),
                from_hz: 10.0,
                to_hz: 5000.0,
            }],
            ..with_bearing()
        };
        for n in [6_000, 12_000, 16, 17] {
            let out = s.analyze(&tones(n, &[(1.0, 1500.0)]), FS, &set);
            assert!(out.bands[0] > 0.1, "n={n}: {out:?}");
        }
        let zeros = BlockSpectrum {
            velocity_rms_mm_s: 0.0,
            bands: vec![0.0],
            envelope: Some([0.0; 4]),
        };
        let x = tones(12_000, &[(1.0, 50.0)]);
        assert_eq!(s.analyze(&x[..10], FS, &set), zeros);
        assert_eq!(s.analyze(&[], FS, &set), zeros);
        for fs in [f64::NAN, f64::INFINITY, 0.0, -FS] {
            assert_eq!(s.analyze(&x, fs, &set), zeros);
        }
        let mut bad = x.clone();
        bad[5] = f32::NAN;
        assert_eq!(s.analyze(&bad, FS, &set), zeros);
        bad[5] = f32::INFINITY;
        assert_eq!(s.analyze(&bad, FS, &set), zeros);
        let none = s.analyze(&x[..10], FS, &WaveformSettings::default());
        assert_eq!(none, BlockSpectrum::default());
    }

    #[test]
    fn same_input_gives_identical_output_across_lengths_and_instances() {
        let mut noise = Noise(42);
        let x: Vec<f32> = (0..12_000).map(|_| noise.gauss() as f32).collect();
        let set = with_bearing();
        // The engine keeps its analyser inside an async task.
        fn is_send<T: Send>(_: &T) {}
        let mut s = Spectrum::new();
        is_send(&s);
        let first = s.analyze(&x, FS, &set);
        let short = s.analyze(&x[..6_000], FS, &set);
        assert_eq!(s.analyze(&x, FS, &set), first);
        assert_eq!(Spectrum::new().analyze(&x, FS, &set), first);
        assert_eq!(s.analyze(&x[..6_000], FS, &set), short);
        assert!(first.velocity_rms_mm_s > 0.0 && first.envelope.unwrap()[0] > 0.0);
    }

    /// Every block length is a new FFT plan; a stream of ever-changing
    /// lengths (untrusted input) must not keep a plan for each of them, and
    /// a length planned again after eviction gives the same features.
    #[test]
    fn plan_cache_stays_bounded_and_replanning_changes_no_feature() {
        let mut noise = Noise(3);
        let x: Vec<f32> = (0..2_100).map(|_| noise.gauss() as f32).collect();
        let set = WaveformSettings {
            bands: vec![Band {
                name: "b".into(),
                from_hz: 500.0,
                to_hz: 3000.0,
            }],
            ..with_bearing()
        };
        let mut s = Spectrum::new();
        let first = s.analyze(&x[..1_000], FS, &set);
        for n in 1_001..=2_000 {
            s.analyze(&x[..n], FS, &set);
            assert!(
                s.cached_plans() <= PLAN_CACHE_LEN,
                "{} plans cached after length {n}",
                s.cached_plans()
            );
        }
        assert_eq!(s.analyze(&x[..1_000], FS, &set), first);
        assert_eq!(Spectrum::new().analyze(&x[..1_000], FS, &set), first);
        assert!(first.velocity_rms_mm_s > 0.0 && first.bands[0] > 0.0);
    }
}
