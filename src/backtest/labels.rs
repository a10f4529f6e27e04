//! Labelled anomaly windows: a NAB `windows.json` file in, the windows of one
//! input file (`(start_ms, end_ms)`, inclusive, UTC) out.

use std::collections::BTreeMap;
use std::path::{Component, Path};

use super::input::{parse_timestamp_ms, InputError};

/// All windows of a labels file, keyed as in the file
/// (e.g. `realKnownCause/machine_temperature_system_failure.csv`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Labels {
    files: BTreeMap<String, Vec<(i64, i64)>>,
}

/// Reads a NAB `windows.json`: `{"dir/file.csv": [["start", "end"], ...], ...}`
/// with timestamps such as `2013-12-10 06:25:00.000000` (UTC).
pub fn load_labels(path: &Path) -> Result<Labels, InputError> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| InputError::new(path, None, format!("cannot read: {e}")))?;
    parse_labels(&text, path)
}

/// [`load_labels`] on text already read; `file` only names the source in errors.
pub fn parse_labels(text: &str, file: &Path) -> Result<Labels, InputError> {
    let raw: BTreeMap<String, Vec<[String; 2]>> = serde_json::from_str(text).map_err(|e| {
        let line = (e.line() > 0).then_some(e.line());
        // serde_json appends " at line L column C"; the line is already in the prefix.
        let full = e.to_string();
        let message = match full.rfind(" at line ") {
            Some(cut) => full[..cut].to_owned(),
            None => full,
        };
        InputError::new(
            file,
            line,
            format!(
                "not a NAB windows file ({message}); expected \
                 {{\"dir/file.csv\": [[\"start\", \"end\"], ...]}}"
            ),
        )
    })?;

    let mut files = BTreeMap::new();
    for (key, pairs) in raw {
        let mut windows = Vec::with_capacity(pairs.len());
        for (i, [start, end]) in pairs.iter().enumerate() {
            let at = |text: &str| {
                parse_timestamp_ms(text).ok_or_else(|| {
                    InputError::new(
                        file,
                        None,
                        format!(
                            "window {} of \"{key}\": unparsable timestamp \"{text}\" \
                             (expected `YYYY-MM-DD HH:MM:SS[.ffffff]`)",
                            i + 1
                        ),
                    )
                })
            };
            let (start_ms, end_ms) = (at(start)?, at(end)?);
            if end_ms < start_ms {
                return Err(InputError::new(
                    file,
                    None,
                    format!(
                        "window {} of \"{key}\" ends (\"{end}\") before it starts (\"{start}\")",
                        i + 1
                    ),
                ));
            }
            windows.push((start_ms, end_ms));
        }
        windows.sort_unstable();
        files.insert(key, windows);
    }
    Ok(Labels { files })
}

impl Labels {
    /// The windows for `input`, matched by file name: a key matches when its
    /// last path component equals the input's file name. `None` when no key
    /// matches; `Some(vec![])` when the key lists no windows. If several keys
    /// share the file name, the one that is a path suffix of `input` wins
    /// (`data/realKnownCause/x.csv` → `realKnownCause/x.csv`), else the first
    /// in key order.
    pub fn windows_for(&self, input: &Path) -> Option<Vec<(i64, i64)>> {
        let name = input.file_name()?.to_str()?;
        let mut matching = self
            .files
            .iter()
            .filter(|(key, _)| key_components(key).next_back() == Some(name));
        let first = matching.next()?;
        let chosen = std::iter::once(first)
            .chain(matching)
            .find(|(key, _)| is_path_suffix(key, input))
            .unwrap_or(first);
        Some(chosen.1.clone())
    }

    /// The keys, in sorted order.
    pub fn keys(&self) -> impl Iterator<Item = &str> {
        self.files.keys().map(String::as_str)
    }

    pub fn len(&self) -> usize {
        self.files.len()
    }

    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

/// NAB keys use `/`; accept `\` too for labels written on Windows.
fn key_components(key: &str) -> impl DoubleEndedIterator<Item = &str> {
    key.split(['/', '\\']).filter(|c| !c.is_empty())
}

fn is_path_suffix(key: &str, input: &Path) -> bool {
    let mut path = input.components().rev().map(|c| match c {
        Component::Normal(s) => s.to_str(),
        _ => None,
    });
    key_components(key)
        .rev()
        .all(|k| path.next().flatten() == Some(k))
}

#[cfg(test)]
mod tests {
    use super::*;

    const WINDOWS: &str = r#"{
  "artificialNoAnomaly/art_noisy.csv": [],
  "realKnownCause/machine_temperature_system_failure.csv": [
    ["2014-02-08 14:30:00.000000", "2014-02-09 22:55:00.000000"],
    ["2013-12-10 06:25:00.000000", "2013-12-12 05:35:00.000000"]
  ],
  "a/dup.csv": [["2014-01-01 00:00:00.000000", "2014-01-01 00:00:00.000000"]],
  "b/dup.csv": [["2014-01-02 00:00:00.000000", "2014-01-02 00:00:00.000000"]]
}"#;

    fn labels() -> Labels {
        parse_labels(WINDOWS, Path::new("windows.json")).unwrap()
    }

    #[test]
    fn matches_by_file_name_and_sorts_windows() {
        let labels = labels();
        let windows = labels
            .windows_for(Path::new("/data/machine_temperature_system_failure.csv"))
            .unwrap();
        let start = parse_timestamp_ms("2013-12-10 06:25:00").unwrap();
        let end = parse_timestamp_ms("2013-12-12 05:35:00").unwrap();
        assert_eq!(windows.len(), 2);
        assert_eq!(windows[0], (start, end));
        assert!(windows[1].0 > windows[0].1);
    }

    #[test]
    fn none_for_unknown_file_and_empty_for_clean_file() {
        let labels = labels();
        assert_eq!(labels.windows_for(Path::new("nyc_taxi.csv")), None);
        assert_eq!(labels.windows_for(Path::new("machine_temperature")), None);
        assert_eq!(
            labels.windows_for(Path::new("x/art_noisy.csv")),
            Some(vec![])
        );
        assert_eq!(labels.len(), 4);
    }

    #[test]
    fn duplicate_file_names_prefer_the_matching_directory() {
        let labels = labels();
        let a = parse_timestamp_ms("2014-01-01 00:00:00").unwrap();
        let b = parse_timestamp_ms("2014-01-02 00:00:00").unwrap();
        assert_eq!(
            labels.windows_for(Path::new("/x/b/dup.csv")),
            Some(vec![(b, b)])
        );
        assert_eq!(
            labels.windows_for(Path::new("/x/a/dup.csv")),
            Some(vec![(a, a)])
        );
        assert_eq!(labels.windows_for(Path::new("dup.csv")), Some(vec![(a, a)]));
    }

    #[test]
    fn errors_name_the_file_and_the_problem() {
        let err = |text: &str| {
            parse_labels(text, Path::new("w.json"))
                .unwrap_err()
                .to_string()
        };
        let message = err("{\n  \"f.csv\": [[\"2014-01-01 00:00:00\"]]\n}");
        assert!(
            message.starts_with("w.json:2: not a NAB windows file (invalid length 1"),
            "{message}"
        );
        assert!(err("[1, 2]").starts_with("w.json:1: not a NAB windows file"));
        assert!(err("").starts_with("w.json:1: not a NAB windows file"));
        assert_eq!(
            err(r#"{"f.csv": [["2014-01-01 00:00:00", "soon"]]}"#),
            "w.json: window 1 of \"f.csv\": unparsable timestamp \"soon\" \
             (expected `YYYY-MM-DD HH:MM:SS[.ffffff]`)"
        );
        assert_eq!(
            err(r#"{"f.csv": [["2014-01-02 00:00:00", "2014-01-01 00:00:00"]]}"#),
            "w.json: window 1 of \"f.csv\" ends (\"2014-01-01 00:00:00\") before it starts \
             (\"2014-01-02 00:00:00\")"
        );
    }

    #[test]
    fn load_labels_reads_a_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("windows.json");
        std::fs::write(&path, WINDOWS).unwrap();
        assert_eq!(load_labels(&path).unwrap(), labels());
        let missing = load_labels(&dir.path().join("nope.json")).unwrap_err();
        assert!(missing.to_string().contains("nope.json: cannot read:"));
    }
}
