//! Backtest inputs: a CSV file in, a [`Series`] out — scalar `timestamp,value`
//! rows (the NAB data format) or waveform samples, one per line — plus
//! [`cut_blocks`], which turns waveform samples into timed blocks.
//!
//! Reading never panics: every malformed input becomes an [`InputError`]
//! naming the file and the 1-based line. Timestamps that go backwards are
//! logged, not rejected (see [`Series::Scalar`]).

use std::fs::File;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};

use time::{Date, Month, PrimitiveDateTime, Time};
use tracing::warn;

/// One input file, sniffed from its first line.
#[derive(Debug, Clone, PartialEq)]
pub enum Series {
    /// Header `timestamp,value`: one reading per row, in file order. Times
    /// should not decrease; when they do (a clock step in the recording) the
    /// rows are kept in order and a warning is logged, as NAB scores rows.
    Scalar { rows: Vec<ScalarRow> },
    /// A single column (with or without a one-word header such as `accel_g`):
    /// raw samples at a sample rate given on the command line.
    Waveform { samples: Vec<f32> },
}

/// One row of a scalar series.
#[derive(Debug, Clone, PartialEq)]
pub struct ScalarRow {
    /// Unix time in milliseconds (UTC).
    pub time_ms: i64,
    pub value: f64,
    /// The timestamp field exactly as written in the file, so that NAB result
    /// files can repeat it byte for byte.
    pub timestamp_text: String,
}

/// A bad input file (or labels file), with the place it went wrong.
#[derive(Debug, thiserror::Error)]
#[error("{}{}: {message}", .file.display(), line_suffix(*.line))]
pub struct InputError {
    pub file: PathBuf,
    /// 1-based line number, when the problem is on one line.
    pub line: Option<usize>,
    pub message: String,
}

impl InputError {
    pub(crate) fn new(file: &Path, line: Option<usize>, message: impl Into<String>) -> Self {
        Self {
            file: file.to_path_buf(),
            line,
            message: message.into(),
        }
    }
}

fn line_suffix(line: Option<usize>) -> String {
    line.map(|l| format!(":{l}")).unwrap_or_default()
}

/// What the timestamp column may hold, for error messages.
const TIMESTAMP_FORMATS: &str =
    "expected `YYYY-MM-DD HH:MM:SS[.fff]` (UTC), RFC 3339, or integer epoch milliseconds";

/// Reads one input file. The first non-blank line decides the kind:
/// `timestamp,value` → [`Series::Scalar`]; a single column → [`Series::Waveform`]
/// (the first line is data when it parses as a number, a header otherwise).
/// Blank lines are skipped; `\r\n` endings and a UTF-8 byte-order mark are
/// accepted.
pub fn read_series(path: &Path) -> Result<Series, InputError> {
    let file =
        File::open(path).map_err(|e| InputError::new(path, None, format!("cannot open: {e}")))?;
    parse_series(BufReader::with_capacity(64 * 1024, file), path)
}

/// [`read_series`] on any reader; `file` only names the source in errors.
pub fn parse_series<R: BufRead>(reader: R, file: &Path) -> Result<Series, InputError> {
    let mut lines = Lines {
        reader,
        buf: Vec::with_capacity(256),
        line_no: 0,
    };
    let Some((header_line, header)) = lines.next_line(file)? else {
        return Err(InputError::new(file, None, "file is empty"));
    };

    let series = if is_scalar_header(header) {
        let rows = parse_scalar_rows(&mut lines, file)?;
        if rows.is_empty() {
            return Err(no_rows(file, header_line));
        }
        Series::Scalar { rows }
    } else if !header.contains(',') {
        let mut samples = Vec::new();
        // A numeric first line is data (headerless file); anything else is the
        // column name. `parse::<f32>` also accepts "nan"/"inf", which are then
        // rejected as data rather than silently taken as a header.
        let has_header = unquote(header).parse::<f32>().is_err();
        if !has_header {
            samples.push(parse_sample(header, header_line, file)?);
        }
        parse_samples(&mut lines, file, &mut samples)?;
        if samples.is_empty() {
            return Err(no_rows(file, header_line));
        }
        Series::Waveform { samples }
    } else {
        let first = unquote(header.split(',').next().unwrap_or(""));
        let what = if parse_timestamp_ms(first).is_some() {
            "missing header"
        } else {
            "unrecognised header"
        };
        return Err(InputError::new(
            file,
            Some(header_line),
            format!(
                "{what}: expected `timestamp,value` (scalar series) or a single column \
                 (waveform samples), found \"{}\"",
                clip(header)
            ),
        ));
    };
    Ok(series)
}

fn no_rows(file: &Path, header_line: usize) -> InputError {
    InputError::new(
        file,
        None,
        format!("no data rows after the header on line {header_line}"),
    )
}

/// Reads lines into one reused buffer: no allocation per line.
struct Lines<R> {
    reader: R,
    buf: Vec<u8>,
    line_no: usize,
}

impl<R: BufRead> Lines<R> {
    /// The next non-blank line without its line ending, with its 1-based number.
    fn next_line(&mut self, file: &Path) -> Result<Option<(usize, &str)>, InputError> {
        let (start, end) = loop {
            self.buf.clear();
            let n = self.reader.read_until(b'\n', &mut self.buf).map_err(|e| {
                InputError::new(file, Some(self.line_no + 1), format!("read failed: {e}"))
            })?;
            if n == 0 {
                return Ok(None);
            }
            self.line_no += 1;
            let mut end = self.buf.len();
            if self.buf[..end].ends_with(b"\n") {
                end -= 1;
            }
            if self.buf[..end].ends_with(b"\r") {
                end -= 1;
            }
            let start = if self.line_no == 1 && self.buf[..end].starts_with(b"\xEF\xBB\xBF") {
                3
            } else {
                0
            };
            if !self.buf[start..end].iter().all(u8::is_ascii_whitespace) {
                break (start, end);
            }
        };
        match std::str::from_utf8(&self.buf[start..end]) {
            Ok(text) => Ok(Some((self.line_no, text))),
            Err(_) => Err(InputError::new(
                file,
                Some(self.line_no),
                "line is not valid UTF-8",
            )),
        }
    }
}

fn is_scalar_header(line: &str) -> bool {
    match line.split_once(',') {
        Some((a, b)) => {
            unquote(a).eq_ignore_ascii_case("timestamp") && unquote(b).eq_ignore_ascii_case("value")
        }
        None => false,
    }
}

fn parse_scalar_rows<R: BufRead>(
    lines: &mut Lines<R>,
    file: &Path,
) -> Result<Vec<ScalarRow>, InputError> {
    let mut rows: Vec<ScalarRow> = Vec::new();
    let mut backwards = 0usize;
    let mut first_backwards: Option<(usize, String, String)> = None;
    while let Some((line_no, line)) = lines.next_line(file)? {
        let err = |message: String| InputError::new(file, Some(line_no), message);
        let Some((ts_raw, value_raw)) = line.split_once(',') else {
            return Err(err(format!(
                "expected 2 columns (timestamp,value), found 1: \"{}\"",
                clip(line)
            )));
        };
        if value_raw.contains(',') {
            let found = 2 + value_raw.matches(',').count();
            return Err(err(format!(
                "expected 2 columns (timestamp,value), found {found}: \"{}\"",
                clip(line)
            )));
        }
        let time_ms = parse_timestamp_ms(unquote(ts_raw)).ok_or_else(|| {
            err(format!(
                "unparsable timestamp \"{}\": {TIMESTAMP_FORMATS}",
                clip(ts_raw)
            ))
        })?;
        let value: f64 = unquote(value_raw)
            .parse()
            .map_err(|_| err(format!("unparsable value \"{}\"", clip(value_raw))))?;
        if !value.is_finite() {
            return Err(err(format!("value \"{}\" is not finite", clip(value_raw))));
        }
        if let Some(prev) = rows.last() {
            if time_ms < prev.time_ms {
                backwards += 1;
                first_backwards.get_or_insert_with(|| {
                    (line_no, ts_raw.to_owned(), prev.timestamp_text.clone())
                });
            }
        }
        rows.push(ScalarRow {
            time_ms,
            value,
            timestamp_text: ts_raw.to_owned(),
        });
    }
    // Real recordings do this (NAB's machine_temperature_system_failure.csv
    // repeats an hour at line 10151), and NAB scores such files in row order,
    // so this is a warning, not an error.
    if let Some((line, text, previous)) = first_backwards {
        warn!(
            file = %file.display(),
            line,
            timestamp = %clip(&text),
            previous = %clip(&previous),
            count = backwards,
            "timestamps go backwards; rows are kept in file order"
        );
    }
    Ok(rows)
}

fn parse_samples<R: BufRead>(
    lines: &mut Lines<R>,
    file: &Path,
    samples: &mut Vec<f32>,
) -> Result<(), InputError> {
    while let Some((line_no, line)) = lines.next_line(file)? {
        samples.push(parse_sample(line, line_no, file)?);
    }
    Ok(())
}

fn parse_sample(line: &str, line_no: usize, file: &Path) -> Result<f32, InputError> {
    let err = |message: String| InputError::new(file, Some(line_no), message);
    if line.contains(',') {
        let found = 1 + line.matches(',').count();
        return Err(err(format!(
            "expected 1 column (waveform sample), found {found}: \"{}\"",
            clip(line)
        )));
    }
    let sample: f32 = unquote(line)
        .parse()
        .map_err(|_| err(format!("unparsable sample \"{}\"", clip(line))))?;
    if !sample.is_finite() {
        return Err(err(format!(
            "sample \"{}\" is not finite (or out of range for f32)",
            clip(line)
        )));
    }
    Ok(sample)
}

/// Trims spaces and one pair of surrounding double quotes.
fn unquote(field: &str) -> &str {
    let t = field.trim();
    t.strip_prefix('"')
        .and_then(|s| s.strip_suffix('"'))
        .unwrap_or(t)
}

/// Keeps quoted text in messages short when a line is garbage.
fn clip(text: &str) -> String {
    const MAX_CHARS: usize = 60;
    match text.char_indices().nth(MAX_CHARS) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text.to_owned(),
    }
}

/// Parses a timestamp to Unix milliseconds (UTC). Accepts
/// `YYYY-MM-DD HH:MM:SS` with optional fractional seconds (the NAB format,
/// taken as UTC), the same with `T` and an optional `Z` or `±HH:MM` offset
/// (RFC 3339), and integer epoch milliseconds. Fractions below a millisecond
/// are truncated.
pub fn parse_timestamp_ms(text: &str) -> Option<i64> {
    let s = text.trim();
    let digits = s.strip_prefix('-').unwrap_or(s);
    if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
        return s.parse().ok();
    }
    parse_date_time_ms(s.as_bytes())
}

fn parse_date_time_ms(b: &[u8]) -> Option<i64> {
    if b.len() < 19
        || b[4] != b'-'
        || b[7] != b'-'
        || !matches!(b[10], b' ' | b'T' | b't')
        || b[13] != b':'
        || b[16] != b':'
    {
        return None;
    }
    let year = number(&b[0..4])?;
    let month = Month::try_from(u8::try_from(number(&b[5..7])?).ok()?).ok()?;
    let day = u8::try_from(number(&b[8..10])?).ok()?;
    let hour = u8::try_from(number(&b[11..13])?).ok()?;
    let minute = u8::try_from(number(&b[14..16])?).ok()?;
    let second = u8::try_from(number(&b[17..19])?).ok()?;

    let mut rest = &b[19..];
    let mut nanos: u32 = 0;
    if let Some(frac) = rest.strip_prefix(b".") {
        let n = frac.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 {
            return None;
        }
        // Nanosecond resolution: digits past the ninth are dropped.
        for (i, &c) in frac[..n].iter().take(9).enumerate() {
            nanos += u32::from(c - b'0') * 10u32.pow(8 - i as u32);
        }
        rest = &frac[n..];
    }
    let offset_seconds: i64 = match rest {
        [] | [b'Z'] | [b'z'] => 0,
        [sign @ (b'+' | b'-'), h1, h2, b':', m1, m2] => {
            let h = number(&[*h1, *h2])?;
            let m = number(&[*m1, *m2])?;
            if h > 23 || m > 59 {
                return None;
            }
            let magnitude = (h * 3600 + m * 60) as i64;
            if *sign == b'-' {
                -magnitude
            } else {
                magnitude
            }
        }
        _ => return None,
    };

    let date = Date::from_calendar_date(year as i32, month, day).ok()?;
    let time = Time::from_hms_nano(hour, minute, second, nanos).ok()?;
    let unix_seconds = PrimitiveDateTime::new(date, time)
        .assume_utc()
        .unix_timestamp()
        - offset_seconds;
    Some(unix_seconds * 1000 + i64::from(nanos / 1_000_000))
}

/// A run of ASCII digits as a number; `None` on any other byte.
fn number(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0u32, |acc, &c| {
        c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0'))
    })
}

/// Cuts waveform samples into blocks of `round(sample_rate_hz × block_seconds)`
/// samples (at least one), each paired with the event time of its first
/// sample: block `k` starts at `start_ms + round(k × block_len / sample_rate_hz × 1000)`,
/// so times stay consecutive without drift.
///
/// A final partial block is kept when it holds at least half a block and
/// dropped when it is shorter. A non-finite or non-positive sample rate or
/// block length yields no blocks (the CLI rejects those before calling).
pub fn cut_blocks(
    samples: &[f32],
    sample_rate_hz: f64,
    block_seconds: f64,
    start_ms: i64,
) -> Vec<(i64, Vec<f32>)> {
    let valid = |x: f64| x.is_finite() && x > 0.0;
    if !valid(sample_rate_hz) || !valid(block_seconds) {
        return Vec::new();
    }
    let block_len = ((sample_rate_hz * block_seconds).round() as usize).max(1);
    samples
        .chunks(block_len)
        .take_while(|chunk| 2 * chunk.len() >= block_len)
        .enumerate()
        .map(|(k, chunk)| {
            let offset_ms = (k as f64 * block_len as f64 / sample_rate_hz * 1000.0).round();
            (start_ms.saturating_add(offset_ms as i64), chunk.to_vec())
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Series, InputError> {
        parse_series(text.as_bytes(), Path::new("in.csv"))
    }

    fn error(text: &str) -> String {
        parse(text).unwrap_err().to_string()
    }

    fn rows(text: &str) -> Vec<ScalarRow> {
        match parse(text).unwrap() {
            Series::Scalar { rows } => rows,
            other => panic!("expected scalar, got {other:?}"),
        }
    }

    fn samples(text: &str) -> Vec<f32> {
        match parse(text).unwrap() {
            Series::Waveform { samples } => samples,
            other => panic!("expected waveform, got {other:?}"),
        }
    }

    #[test]
    fn reads_nab_scalar_rows_keeping_timestamp_text() {
        let rows = rows(
            "timestamp,value\n2013-12-02 21:15:00,73.96732207\n2013-12-02 21:20:00,74.93588199999998\n",
        );
        assert_eq!(rows.len(), 2);
        // 2013-12-02T21:15:00Z
        assert_eq!(rows[0].time_ms, 1_386_018_900_000);
        assert_eq!(rows[1].time_ms - rows[0].time_ms, 300_000);
        assert_eq!(rows[0].value, 73.96732207);
        assert_eq!(rows[1].timestamp_text, "2013-12-02 21:20:00");
    }

    #[test]
    fn accepts_crlf_bom_blank_lines_and_quoted_header() {
        let rows =
            rows("\u{feff}\"timestamp\",\"Value\"\r\n\r\n2014-01-01 00:00:00,1\r\n  \n2014-01-01 00:05:00,2\r\n");
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[1].value, 2.0);
        assert_eq!(rows[1].timestamp_text, "2014-01-01 00:05:00");
    }

    #[test]
    fn keeps_rows_in_file_order_when_time_goes_backwards() {
        let rows = rows("timestamp,value\n2014-01-07 02:55:00,1\n2014-01-07 02:00:00,2\n2014-01-07 02:05:00,3\n");
        let values: Vec<f64> = rows.iter().map(|r| r.value).collect();
        assert_eq!(values, vec![1.0, 2.0, 3.0]);
        assert!(rows[1].time_ms < rows[0].time_ms);
    }

    #[test]
    fn timestamp_formats() {
        let base = parse_timestamp_ms("2014-04-10 07:15:00").unwrap();
        assert_eq!(base, 1_397_114_100_000);
        assert_eq!(parse_timestamp_ms("2014-04-10 07:15:00.000000"), Some(base));
        assert_eq!(
            parse_timestamp_ms("2014-04-10 07:15:00.25"),
            Some(base + 250)
        );
        assert_eq!(parse_timestamp_ms("2014-04-10T07:15:00Z"), Some(base));
        assert_eq!(
            parse_timestamp_ms("2014-04-10T09:15:00.5+02:00"),
            Some(base + 500)
        );
        assert_eq!(parse_timestamp_ms("2014-04-10T02:15:00-05:00"), Some(base));
        assert_eq!(parse_timestamp_ms("1397114100000"), Some(base));
        assert_eq!(parse_timestamp_ms("-1000"), Some(-1000));
        for bad in [
            "",
            "2014-02-30 00:00:00",
            "2014-04-10 24:00:00",
            "2014-04-10 07:15",
            "2014-04-10 07:15:00.",
            "2014-04-10 07:15:00+2",
            "2014/04/10 07:15:00",
            "99999999999999999999",
            "１２３",
        ] {
            assert_eq!(parse_timestamp_ms(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn reads_waveform_with_and_without_header() {
        assert_eq!(samples("accel_g\n0.5\n-1.25\n"), vec![0.5, -1.25]);
        assert_eq!(samples("0.5\n-1.25\n"), vec![0.5, -1.25]);
    }

    #[test]
    fn errors_name_file_line_and_text() {
        assert_eq!(error(""), "in.csv: file is empty");
        assert_eq!(error("\n \n"), "in.csv: file is empty");
        assert_eq!(
            error("timestamp,value\n"),
            "in.csv: no data rows after the header on line 1"
        );
        assert_eq!(
            error("accel_g\n"),
            "in.csv: no data rows after the header on line 1"
        );
        assert!(error("time,val\n2014-01-01 00:00:00,1\n").starts_with(
            "in.csv:1: unrecognised header: expected `timestamp,value` (scalar series) or a single column"
        ));
        assert!(error("2014-01-01 00:00:00,1\n")
            .starts_with("in.csv:1: missing header: expected `timestamp,value`"));
        assert_eq!(
            error("timestamp,value\n2014-01-01 00:00:00,1\n2014-01-01 00:05:00,2,3\n"),
            "in.csv:3: expected 2 columns (timestamp,value), found 3: \"2014-01-01 00:05:00,2,3\""
        );
        assert_eq!(
            error("timestamp,value\n2014-01-01 00:00:00\n"),
            "in.csv:2: expected 2 columns (timestamp,value), found 1: \"2014-01-01 00:00:00\""
        );
        assert_eq!(
            error("timestamp,value\n2014-01-01 00:00:00,1\n\n2014-01-01 00:05:00,abc\n"),
            "in.csv:4: unparsable value \"abc\""
        );
        assert!(error("timestamp,value\nyesterday,1\n").starts_with(
            "in.csv:2: unparsable timestamp \"yesterday\": expected `YYYY-MM-DD HH:MM:SS"
        ));
        assert_eq!(
            error("timestamp,value\n2014-01-01 00:00:00,NaN\n"),
            "in.csv:2: value \"NaN\" is not finite"
        );
        assert_eq!(
            error("accel_g\n0.1\n0.2,0.3\n"),
            "in.csv:3: expected 1 column (waveform sample), found 2: \"0.2,0.3\""
        );
        assert_eq!(
            error("accel_g\n0.1\nx\n"),
            "in.csv:3: unparsable sample \"x\""
        );
        assert_eq!(
            error("0.1\n1e39\n"),
            "in.csv:2: sample \"1e39\" is not finite (or out of range for f32)"
        );
        assert_eq!(
            error("inf\n"),
            "in.csv:1: sample \"inf\" is not finite (or out of range for f32)"
        );
        let not_utf8 = parse_series(b"accel_g\n0.1\n\xff\n".as_slice(), Path::new("in.csv"));
        assert_eq!(
            not_utf8.unwrap_err().to_string(),
            "in.csv:3: line is not valid UTF-8"
        );
    }

    #[test]
    fn long_garbage_is_clipped_in_messages() {
        let text = format!(
            "timestamp,value\n2014-01-01 00:00:00,{}\n",
            "x".repeat(10_000)
        );
        let message = error(&text);
        assert!(message.len() < 200, "{message}");
        assert!(message.ends_with("…\""));
    }

    #[test]
    fn read_series_names_missing_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("absent.csv");
        let message = read_series(&path).unwrap_err().to_string();
        assert!(message.starts_with(&format!("{}: cannot open:", path.display())));

        let path = dir.path().join("ok.csv");
        std::fs::write(&path, "timestamp,value\n2014-01-01 00:00:00,1\n").unwrap();
        assert!(matches!(read_series(&path), Ok(Series::Scalar { rows }) if rows.len() == 1));
    }

    #[test]
    fn reads_many_rows() {
        let mut text = String::from("timestamp,value\n");
        for i in 0..150_000u32 {
            let (m, s) = (i / 60 % 60, i % 60);
            text.push_str(&format!(
                "2014-01-{:02} {:02}:{m:02}:{s:02},{i}\n",
                1 + i / 86_400,
                i / 3600 % 24
            ));
        }
        let rows = rows(&text);
        assert_eq!(rows.len(), 150_000);
        assert_eq!(rows[149_999].time_ms - rows[0].time_ms, 149_999_000);
    }

    #[test]
    fn cut_blocks_drops_short_tail_and_keeps_consecutive_times() {
        let samples: Vec<f32> = (0..25).map(|i| i as f32).collect();
        // 10 samples per block at 1 kHz = 10 ms per block; tail of 5 = half a block: kept.
        let blocks = cut_blocks(&samples, 1000.0, 0.01, 1_000);
        let times: Vec<i64> = blocks.iter().map(|(t, _)| *t).collect();
        assert_eq!(times, vec![1_000, 1_010, 1_020]);
        assert_eq!(blocks[2].1, vec![20.0, 21.0, 22.0, 23.0, 24.0]);
        // Tail of 4 < half a block: dropped.
        assert_eq!(cut_blocks(&samples[..24], 1000.0, 0.01, 0).len(), 2);

        // 12 kHz, 1/3 s blocks: 4000 samples = 333.33 ms, rounded per block, no drift.
        let samples = vec![0.0f32; 12_000 * 2];
        let times: Vec<i64> = cut_blocks(&samples, 12_000.0, 1.0 / 3.0, 0)
            .iter()
            .map(|(t, _)| *t)
            .collect();
        assert_eq!(times, vec![0, 333, 667, 1000, 1333, 1667]);
    }

    #[test]
    fn cut_blocks_rejects_nonsense_parameters_without_panicking() {
        let samples = [1.0f32; 8];
        assert!(cut_blocks(&samples, 0.0, 1.0, 0).is_empty());
        assert!(cut_blocks(&samples, f64::NAN, 1.0, 0).is_empty());
        assert!(cut_blocks(&samples, 100.0, -1.0, 0).is_empty());
        assert!(cut_blocks(&[], 100.0, 1.0, 0).is_empty());
        // Less than one sample per block still makes one-sample blocks.
        assert_eq!(cut_blocks(&samples, 10.0, 0.01, 0).len(), 8);
    }

    /// Garbage bytes, and garbage after each valid header, never panic.
    #[test]
    fn garbage_never_panics() {
        let mut state: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            // xorshift64: deterministic, dependency-free noise.
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        let alphabet = b"0123456789-:., \n\r\"TZ+eEaN\xff\xef\xbb\xbftimestampvalue";
        for case in 0..2_000 {
            let len = (next() % 200) as usize;
            let mut bytes: Vec<u8> = match case % 3 {
                0 => Vec::new(),
                1 => b"timestamp,value\n".to_vec(),
                _ => b"accel_g\n".to_vec(),
            };
            for _ in 0..len {
                let r = next();
                bytes.push(if r % 4 == 0 {
                    r as u8 >> 1
                } else {
                    alphabet[(r >> 8) as usize % alphabet.len()]
                });
            }
            let _ = parse_series(bytes.as_slice(), Path::new("fuzz.csv"));
        }
    }

    proptest::proptest! {
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..300)) {
            let _ = parse_series(bytes.as_slice(), Path::new("fuzz.csv"));
        }

        #[test]
        fn arbitrary_timestamps_never_panic(text in "\\PC{0,40}") {
            let _ = parse_timestamp_ms(&text);
        }
    }
}
