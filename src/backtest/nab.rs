//! NAB scoring: row times, labelled windows and alert times in, a
//! [`FileScore`] out; plus the NAB result file writer
//! (`timestamp,value,anomaly_score`).
//!
//! The rules are those of the Numenta Anomaly Benchmark (Lavin & Ahmad 2015,
//! "Evaluating Real-time Anomaly Detection Algorithms – the Numenta Anomaly
//! Benchmark"), as implemented by numenta/NAB `nab/sweeper.py`
//! (`calcSweepScore`, `calcScoreByThreshold`) and normalised as in
//! `nab/runner.py` (`normalize`). NAB scores rows, not time: an alert counts on
//! the first row at or after the moment it was raised.

use std::borrow::Cow;
use std::fs::File;
use std::io::{self, BufWriter, Write};
use std::iter::Sum;
use std::ops::AddAssign;
use std::path::Path;

use super::input::ScalarRow;

/// Weights of one NAB application profile (`config/profiles.json`).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct CostMatrix {
    pub tp_weight: f64,
    pub fp_weight: f64,
    pub fn_weight: f64,
}

impl CostMatrix {
    /// NAB's "standard" profile.
    pub const STANDARD: CostMatrix = CostMatrix {
        tp_weight: 1.0,
        fp_weight: 0.11,
        fn_weight: 1.0,
    };
}

/// Share of each file that NAB treats as warm-up (`probationPercent`).
pub const PROBATION_PERCENT: f64 = 0.15;

/// Rows at the start of a file whose detections NAB ignores:
/// `min(floor(0.15 × rows), 0.15 × 5000)`, i.e. at most 750 rows
/// (`Sweeper._getProbationaryLength`).
pub fn probationary_rows(n_rows: usize) -> usize {
    let by_share = (PROBATION_PERCENT * n_rows as f64).floor();
    by_share.min(PROBATION_PERCENT * 5000.0) as usize
}

/// NAB's scaled sigmoid of a relative position: `2·σ(−5x) − 1`, which is
/// ≈ 0.98661 at the left edge of a window (x = −1), 0 at its right edge (x = 0)
/// and tends to −1 after it; exactly −1 from x = 3 on (`sweeper.scaledSigmoid`).
pub fn scaled_sigmoid(relative_position: f64) -> f64 {
    if relative_position >= 3.0 {
        -1.0
    } else {
        2.0 / (1.0 + (5.0 * relative_position).exp()) - 1.0
    }
}

/// The times at which a detector raised alerts, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Detections {
    times_ms: Vec<i64>,
}

impl Detections {
    pub fn new() -> Self {
        Self::default()
    }

    /// Records an alert raised at `raised_at_ms` (any order).
    pub fn push(&mut self, raised_at_ms: i64) {
        self.times_ms.push(raised_at_ms);
    }

    pub fn times_ms(&self) -> &[i64] {
        &self.times_ms
    }

    pub fn len(&self) -> usize {
        self.times_ms.len()
    }

    pub fn is_empty(&self) -> bool {
        self.times_ms.is_empty()
    }

    /// One NAB `anomaly_score` per row: 1.0 on rows an alert maps to (the
    /// first row at or after the alert), 0.0 elsewhere.
    pub fn anomaly_scores(&self, row_times_ms: &[i64]) -> Vec<f64> {
        let mut scores = vec![0.0; row_times_ms.len()];
        for row in rows_at(&monotone(row_times_ms), &self.times_ms) {
            scores[row] = 1.0;
        }
        scores
    }
}

impl From<Vec<i64>> for Detections {
    fn from(times_ms: Vec<i64>) -> Self {
        Self { times_ms }
    }
}

impl FromIterator<i64> for Detections {
    fn from_iter<I: IntoIterator<Item = i64>>(iter: I) -> Self {
        Self {
            times_ms: iter.into_iter().collect(),
        }
    }
}

/// The NAB score of one file, or (summed) of several.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FileScore {
    /// Windows that were scored: those with at least one row after the
    /// probationary period.
    pub windows: usize,
    pub detected: usize,
    pub missed: usize,
    /// Windows not scored: no row falls inside them, or all of their rows are
    /// in the probationary period (NAB scores neither).
    pub skipped_windows: usize,
    /// Rows after the probationary period and outside every window on which an
    /// alert landed (several alerts on one row count once, as in NAB).
    pub false_positives: usize,
    /// Per detected window: time of the first detected row − window start.
    pub delays_ms: Vec<i64>,
    /// NAB raw score of the detector.
    pub raw: f64,
    /// Raw score of the detector that never fires: −A_FN per scored window.
    pub null: f64,
    /// Raw score of a perfect detector: A_TP per scored window (NAB counts the
    /// number of windows × `tpWeight`).
    pub perfect: f64,
}

impl FileScore {
    /// NAB normalised score `100 · (raw − null) / (perfect − null)`: 100 for a
    /// perfect detector, 0 for one that never fires, negative when worse.
    /// `None` when nothing can be detected (no scored window), where NAB's
    /// formula divides by zero. For a corpus, sum the files first
    /// (`scores.iter().sum::<FileScore>()`): NAB normalises the sums.
    pub fn normalized(&self) -> Option<f64> {
        let span = self.perfect - self.null;
        (span > 0.0).then(|| 100.0 * (self.raw - self.null) / span)
    }

    /// Mean of [`Self::delays_ms`], `None` when nothing was detected.
    pub fn mean_delay_ms(&self) -> Option<f64> {
        let n = self.delays_ms.len();
        (n > 0).then(|| self.delays_ms.iter().map(|&d| d as f64).sum::<f64>() / n as f64)
    }
}

impl AddAssign<&FileScore> for FileScore {
    fn add_assign(&mut self, other: &FileScore) {
        self.windows += other.windows;
        self.detected += other.detected;
        self.missed += other.missed;
        self.skipped_windows += other.skipped_windows;
        self.false_positives += other.false_positives;
        self.delays_ms.extend_from_slice(&other.delays_ms);
        self.raw += other.raw;
        self.null += other.null;
        self.perfect += other.perfect;
    }
}

impl<'a> Sum<&'a FileScore> for FileScore {
    fn sum<I: Iterator<Item = &'a FileScore>>(iter: I) -> Self {
        iter.fold(FileScore::default(), |mut total, score| {
            total += score;
            total
        })
    }
}

/// Scores one file with the standard profile and NAB's probationary period.
/// `row_times_ms` are the rows' times in file order; `windows` are inclusive
/// `(start_ms, end_ms)`; detections are alert raise times in any order. An
/// alert lands on the first row at or after it; alerts after the last row
/// land nowhere.
///
/// Rows and alerts are matched on the running maximum of the row times, which
/// is the row times themselves unless the recording steps back in time; then
/// the repeated stretch maps to the rows that first reached those times.
/// Callers that know which row raised each alert can use [`score_rows`].
pub fn score_file(
    row_times_ms: &[i64],
    windows: &[(i64, i64)],
    detections_ms: &[i64],
) -> FileScore {
    score_file_with(
        &CostMatrix::STANDARD,
        probationary_rows(row_times_ms.len()),
        row_times_ms,
        windows,
        detections_ms,
    )
}

/// A window as a range of rows.
struct Span {
    start_ms: i64,
    first: usize,
    last: usize,
}

impl Span {
    fn contains(&self, row: usize) -> bool {
        self.first <= row && row <= self.last
    }

    fn width(&self) -> usize {
        self.last - self.first + 1
    }
}

/// [`score_file`] with any profile and probationary length.
pub fn score_file_with(
    cost: &CostMatrix,
    probationary_rows: usize,
    row_times_ms: &[i64],
    windows: &[(i64, i64)],
    detections_ms: &[i64],
) -> FileScore {
    let rows = rows_at(&monotone(row_times_ms), detections_ms);
    score_rows(cost, probationary_rows, row_times_ms, windows, &rows)
}

/// Scores detections given as row indices (any order, duplicates allowed,
/// indices past the end ignored).
///
/// Per `sweeper.calcSweepScore`:
/// - rows before `probationary_rows` are ignored, both as detections and as
///   parts of a window (a window wholly inside that period is not scored);
/// - a window is the rows with `start ≤ t ≤ end`; its first detected scorable
///   row `i` earns `A_TP · S(−(last − i + 1)/width) / S(−1)` where `S` is
///   [`scaled_sigmoid`] (so a detection on the window's first row earns
///   exactly A_TP); later detections in the window add nothing;
/// - a window without detection costs `A_FN`;
/// - a detection outside every window costs `A_FP` before the first window,
///   and `A_FP · S((i − last)/(width − 1))` after one, measured from the
///   nearest preceding window (a one-row window uses position 2, as NAB's
///   older `scorer.py` did; `sweeper.py` divides by zero there).
pub fn score_rows(
    cost: &CostMatrix,
    probationary_rows: usize,
    row_times_ms: &[i64],
    windows: &[(i64, i64)],
    detected_rows: &[usize],
) -> FileScore {
    let key = monotone(row_times_ms);
    let mut detected: Vec<usize> = detected_rows
        .iter()
        .copied()
        .filter(|&row| row < key.len())
        .collect();
    detected.sort_unstable();
    detected.dedup();
    let spans: Vec<Span> = windows
        .iter()
        .filter_map(|&(start_ms, end_ms)| {
            let first = key.partition_point(|&t| t < start_ms);
            let end = key.partition_point(|&t| t <= end_ms);
            (first < end).then_some(Span {
                start_ms,
                first,
                last: end - 1,
            })
        })
        .collect();

    let max_tp = scaled_sigmoid(-1.0);
    let mut score = FileScore {
        skipped_windows: windows.len() - spans.len(),
        ..FileScore::default()
    };

    for span in &spans {
        if span.last < probationary_rows {
            score.skipped_windows += 1;
            continue;
        }
        score.windows += 1;
        score.null -= cost.fn_weight;
        score.perfect += cost.tp_weight;
        // Detection scores fall with position in the window, so NAB's "max
        // over the window's detections" is the first detection.
        let from = span.first.max(probationary_rows);
        let next = detected.partition_point(|&row| row < from);
        match detected.get(next) {
            Some(&row) if row <= span.last => {
                let position = -((span.last - row + 1) as f64) / span.width() as f64;
                score.raw += scaled_sigmoid(position) * cost.tp_weight / max_tp;
                score.detected += 1;
                score.delays_ms.push(key[row] - span.start_ms);
            }
            _ => {
                score.raw -= cost.fn_weight;
                score.missed += 1;
            }
        }
    }

    for &row in &detected {
        if row < probationary_rows || spans.iter().any(|s| s.contains(row)) {
            continue;
        }
        score.false_positives += 1;
        let preceding = spans.iter().filter(|s| s.last < row).max_by_key(|s| s.last);
        let position = match preceding {
            None => 3.0,
            Some(s) if s.width() <= 1 => 2.0,
            Some(s) => (row - s.last) as f64 / (s.width() - 1) as f64,
        };
        score.raw += scaled_sigmoid(position) * cost.fp_weight;
    }
    score
}

/// The rows the alerts land on: the first row whose key is at or after each
/// alert. Alerts after the last row land nowhere.
fn rows_at(key: &[i64], detections_ms: &[i64]) -> Vec<usize> {
    detections_ms
        .iter()
        .map(|&t| key.partition_point(|&r| r < t))
        .filter(|&row| row < key.len())
        .collect()
}

/// Row times as a non-decreasing key for binary search: their running
/// maximum, borrowed unchanged when the times never decrease.
fn monotone(row_times_ms: &[i64]) -> Cow<'_, [i64]> {
    if row_times_ms.windows(2).all(|w| w[0] <= w[1]) {
        return Cow::Borrowed(row_times_ms);
    }
    let mut max = i64::MIN;
    Cow::Owned(
        row_times_ms
            .iter()
            .map(|&t| {
                max = max.max(t);
                max
            })
            .collect(),
    )
}

/// Writes a NAB result file: header `timestamp,value,anomaly_score`, then the
/// input rows in order with their timestamp text unchanged. Scores are clamped
/// to [0, 1]; a NaN score or a length mismatch is an `InvalidInput` error.
pub fn write_nab_results(out: &Path, rows: &[ScalarRow], anomaly_scores: &[f64]) -> io::Result<()> {
    if rows.len() != anomaly_scores.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} rows but {} anomaly scores",
                rows.len(),
                anomaly_scores.len()
            ),
        ));
    }
    if let Some(i) = anomaly_scores.iter().position(|s| s.is_nan()) {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("anomaly score of row {} is NaN", i + 1),
        ));
    }
    let mut w = BufWriter::new(File::create(out)?);
    writeln!(w, "timestamp,value,anomaly_score")?;
    for (row, score) in rows.iter().zip(anomaly_scores) {
        writeln!(
            w,
            "{},{},{}",
            row.timestamp_text,
            row.value,
            score.clamp(0.0, 1.0)
        )?;
    }
    w.flush()
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIN5: i64 = 300_000;

    /// Rows every 5 minutes from t = 0.
    fn times(n: usize) -> Vec<i64> {
        (0..n as i64).map(|i| i * MIN5).collect()
    }

    fn window(first: usize, last: usize) -> (i64, i64) {
        (first as i64 * MIN5, last as i64 * MIN5)
    }

    fn at(rows: &[usize]) -> Vec<i64> {
        rows.iter().map(|&r| r as i64 * MIN5).collect()
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-9
    }

    #[test]
    fn scaled_sigmoid_matches_nab_values() {
        // Values quoted in NAB's scorer_test.py and sweeper docstring.
        assert!(close(scaled_sigmoid(-1.0), 0.9866142981514305));
        assert!(close(scaled_sigmoid(-0.5), 0.8482836399575131));
        assert!(close(scaled_sigmoid(0.0), 0.0));
        assert!(close(scaled_sigmoid(1.0), -0.9866142981514305));
        assert_eq!(scaled_sigmoid(3.0), -1.0);
        assert_eq!(scaled_sigmoid(f64::INFINITY), -1.0);
        assert!(close(scaled_sigmoid(-50.0), 1.0));
    }

    #[test]
    fn probationary_rows_follow_nab() {
        assert_eq!(probationary_rows(0), 0);
        assert_eq!(probationary_rows(100), 15);
        assert_eq!(probationary_rows(22_695), 750);
        assert_eq!(probationary_rows(5000), 750);
        assert_eq!(probationary_rows(4000), 600);
    }

    #[test]
    fn perfect_detector_scores_100_and_null_scores_0() {
        let rows = times(1000);
        let windows = [window(300, 339), window(700, 719)];
        let perfect = score_file(&rows, &windows, &at(&[300, 700]));
        assert_eq!(
            (perfect.windows, perfect.detected, perfect.missed),
            (2, 2, 0)
        );
        assert!(close(perfect.raw, 2.0));
        assert!(close(perfect.normalized().unwrap(), 100.0));
        assert_eq!(perfect.delays_ms, vec![0, 0]);

        let null = score_file(&rows, &windows, &[]);
        assert_eq!(
            (null.detected, null.missed, null.false_positives),
            (0, 2, 0)
        );
        assert!(close(null.raw, -2.0));
        assert!(close(null.null, -2.0));
        assert!(close(null.perfect, 2.0));
        assert!(close(null.normalized().unwrap(), 0.0));
    }

    #[test]
    fn one_false_positive_without_windows_costs_exactly_a_fp() {
        let score = score_file(&times(1000), &[], &at(&[500]));
        assert_eq!(score.false_positives, 1);
        assert!(close(score.raw, -0.11));
        assert_eq!(score.normalized(), None);
    }

    #[test]
    fn only_the_first_detection_in_a_window_counts() {
        let rows = times(1000);
        let windows = [window(300, 339)];
        let first = score_file(&rows, &windows, &at(&[310]));
        let many = score_file(&rows, &windows, &at(&[310, 311, 320, 339]));
        assert_eq!(first, many);
        assert_eq!(many.delays_ms, vec![10 * MIN5]);
        // 30 of 40 rows remain: S(-30/40) / S(-1).
        assert!(close(
            many.raw,
            scaled_sigmoid(-0.75) / scaled_sigmoid(-1.0)
        ));
    }

    #[test]
    fn detection_on_the_last_row_of_a_window_scores_s_of_minus_one_over_width() {
        // NAB's position is −(last − i + 1)/width, so the last row is −1/width,
        // never 0: S(−0.1)/S(−1) = tanh(0.25)/S(−1) for a 10-row window.
        let score = score_file(&times(1000), &[window(300, 309)], &at(&[309]));
        assert_eq!(score.detected, 1);
        assert!(close(score.raw, 0.25f64.tanh() / 0.9866142981514305));
        assert!((score.raw - 0.2482415).abs() < 1e-6);
    }

    #[test]
    fn detections_in_the_probationary_period_are_ignored() {
        let rows = times(1000); // 150 probationary rows
        assert_eq!(probationary_rows(rows.len()), 150);
        let ignored = score_file(&rows, &[], &at(&[0, 10, 149]));
        assert_eq!(ignored.false_positives, 0);
        assert_eq!(ignored.raw, 0.0);
        let counted = score_file(&rows, &[], &at(&[149, 150]));
        assert_eq!(counted.false_positives, 1);

        // A window wholly inside the period is not scored; one straddling it
        // is scored on its rows after the period, with its full width.
        let windows = [window(10, 20), window(140, 159)];
        let score = score_file(&rows, &windows, &at(&[15, 145, 150]));
        assert_eq!(
            (score.windows, score.skipped_windows, score.detected),
            (1, 1, 1)
        );
        assert!(close(
            score.raw,
            scaled_sigmoid(-0.5) / scaled_sigmoid(-1.0)
        ));
        assert!(close(score.perfect, 1.0));
        assert_eq!(score.delays_ms, vec![10 * MIN5]);
    }

    #[test]
    fn false_positives_after_a_window_are_weighted_by_distance() {
        let rows = times(1000);
        // Window rows 300..=302 (width 3); FP at 303 is 1 row past: position 1/2.
        let score = score_file(&rows, &[window(300, 302)], &at(&[303]));
        assert_eq!((score.false_positives, score.missed), (1, 1));
        assert!(close(score.raw, -1.0 + 0.11 * scaled_sigmoid(0.5)));
        // Far away (position ≥ 3): the full −A_FP.
        let far = score_file(&rows, &[window(300, 302)], &at(&[900]));
        assert!(close(far.raw, -1.0 - 0.11));
        // Before any window: the full −A_FP.
        let before = score_file(&rows, &[window(300, 302)], &at(&[200]));
        assert!(close(before.raw, -1.0 - 0.11));
        // After a one-row window: position 2.
        let single = score_file(&rows, &[window(300, 300)], &at(&[301]));
        assert!(close(single.raw, -1.0 + 0.11 * scaled_sigmoid(2.0)));
    }

    #[test]
    fn alerts_between_rows_land_on_the_next_row() {
        let rows = times(1000);
        let windows = [window(300, 339)];
        // One millisecond after row 299: lands on row 300, the window start.
        let score = score_file(&rows, &windows, &[299 * MIN5 + 1]);
        assert!(close(score.raw, 1.0));
        assert_eq!(score.delays_ms, vec![0]);
        // After the last row: lands nowhere.
        assert_eq!(score_file(&rows, &[], &[1000 * MIN5]).false_positives, 0);
        // Duplicate alerts on one row are one false positive.
        assert_eq!(
            score_file(&rows, &[], &[500 * MIN5, 500 * MIN5 - 5]).false_positives,
            1
        );
    }

    #[test]
    fn a_step_back_in_time_maps_to_the_rows_that_first_reached_it() {
        // Rows 0..=9 at 0..9 min, then the clock steps back to 5 min: rows
        // 10..=14 repeat 5..9 min, rows 15.. continue from 10 min.
        let mut rows: Vec<i64> = (0..10)
            .chain(5..10)
            .chain(10..100)
            .map(|m| m * 60_000)
            .collect();
        rows.truncate(100);
        let window = (20 * 60_000, 29 * 60_000); // rows 25..=34
        let score = score_file_with(
            &CostMatrix::STANDARD,
            0,
            &rows,
            &[window],
            &[20 * 60_000, 7 * 60_000],
        );
        assert_eq!(
            (score.windows, score.detected, score.false_positives),
            (1, 1, 1)
        );
        assert_eq!(score.delays_ms, vec![0]);
        assert!(close(score.raw, 1.0 - 0.11));
        // The alert at 7 min lands on row 7, as score_rows with row 7 does.
        let by_row = score_rows(&CostMatrix::STANDARD, 0, &rows, &[window], &[25, 7, 7, 500]);
        assert_eq!(by_row, score);
    }

    #[test]
    fn windows_without_rows_are_skipped() {
        let rows = times(1000);
        let between_rows = (500 * MIN5 + 1, 500 * MIN5 + 2);
        let after_end = (2000 * MIN5, 2001 * MIN5);
        let score = score_file(&rows, &[between_rows, after_end], &[]);
        assert_eq!((score.windows, score.skipped_windows), (0, 2));
        assert_eq!(score.raw, 0.0);
    }

    #[test]
    fn totals_normalise_the_sums() {
        let rows = times(1000);
        let a = score_file(&rows, &[window(300, 339)], &at(&[300]));
        let b = score_file(&rows, &[window(300, 339)], &[]);
        let c = score_file(&rows, &[], &at(&[500, 600]));
        let total: FileScore = [a, b, c].iter().sum();
        assert_eq!(
            (
                total.windows,
                total.detected,
                total.missed,
                total.false_positives
            ),
            (2, 1, 1, 2)
        );
        // raw = 1 − 1 − 0.22, null = −2, perfect = 2.
        assert!(close(
            total.normalized().unwrap(),
            100.0 * (-0.22 + 2.0) / 4.0
        ));
        assert_eq!(total.mean_delay_ms(), Some(0.0));
    }

    /// NAB tests/unit/scorer_test.py: 5-minute rows, tpWeight 1.1,
    /// fpWeight 0.11, fnWeight 1.2, windows on exact row timestamps.
    mod nab_unit_tests {
        use super::*;

        const COST: CostMatrix = CostMatrix {
            tp_weight: 1.1,
            fp_weight: 0.11,
            fn_weight: 1.2,
        };

        fn raw(
            n: usize,
            predictions: &[usize],
            windows: &[(usize, usize)],
            probation: usize,
        ) -> f64 {
            let windows: Vec<(i64, i64)> = windows.iter().map(|&(a, b)| window(a, b)).collect();
            score_file_with(&COST, probation, &times(n), &windows, &at(predictions)).raw
        }

        #[test]
        fn null() {
            assert!(close(raw(5, &[], &[], 0), 0.0));
        }

        #[test]
        fn false_positives() {
            assert!(close(raw(5, &[1, 3], &[], 0), -2.0 * 0.11));
        }

        #[test]
        fn false_negatives() {
            assert!(close(raw(7, &[], &[(1, 2), (4, 5)], 0), -2.0 * 1.2));
        }

        #[test]
        fn false_positives_in_probationary() {
            assert!(close(raw(5, &[1, 3], &[], 4), 0.0));
        }

        #[test]
        fn false_positives_before_and_after_probationary() {
            assert!(close(raw(5, &[1, 3], &[], 3), -0.11));
        }

        #[test]
        fn true_positives_1() {
            let expected = 0.8482836399575131 * 1.1 / 0.9866142981514305;
            assert!(close(raw(7, &[2], &[(1, 2)], 0), expected));
        }

        #[test]
        fn true_positives_1_with_fn() {
            let expected = 0.8482836399575131 * 1.1 / 0.9866142981514305 - 1.2;
            assert!(close(raw(7, &[2], &[(1, 2), (4, 5)], 0), expected));
        }

        #[test]
        fn true_positives_2_and_3() {
            assert!(close(raw(7, &[4], &[(4, 5)], 0), 1.1));
            assert!(close(raw(7, &[4, 5], &[(4, 5)], 0), 1.1));
        }

        #[test]
        fn true_positives_multiple() {
            let expected = 0.8482836399575131 * 1.1 / 0.9866142981514305 + 1.1;
            assert!(close(raw(7, &[2, 4], &[(1, 2), (4, 5)], 0), expected));
        }
    }

    #[test]
    fn anomaly_scores_mark_the_rows_alerts_land_on() {
        let detections: Detections = [0, 301_000, 600_000, 10_000_000].into_iter().collect();
        assert_eq!(
            detections.anomaly_scores(&times(4)),
            vec![1.0, 0.0, 1.0, 0.0]
        );
    }

    #[test]
    fn writes_nab_result_format() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("detector_x.csv");
        let rows = vec![
            ScalarRow {
                time_ms: 0,
                value: 73.96732207,
                timestamp_text: "2013-12-02 21:15:00".into(),
            },
            ScalarRow {
                time_ms: MIN5,
                value: 10844.0,
                timestamp_text: "2013-12-02 21:20:00.000".into(),
            },
        ];
        write_nab_results(&out, &rows, &[0.25, 7.0]).unwrap();
        assert_eq!(
            std::fs::read_to_string(&out).unwrap(),
            "timestamp,value,anomaly_score\n\
             2013-12-02 21:15:00,73.96732207,0.25\n\
             2013-12-02 21:20:00.000,10844,1\n"
        );
        let mismatch = write_nab_results(&out, &rows, &[0.0]).unwrap_err();
        assert_eq!(mismatch.kind(), io::ErrorKind::InvalidInput);
        let nan = write_nab_results(&out, &rows, &[0.0, f64::NAN]).unwrap_err();
        assert_eq!(nan.kind(), io::ErrorKind::InvalidInput);
    }
}
