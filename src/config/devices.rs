//! Device files (`devices/*.toml`): per device, or per device class matched by
//! a glob pattern, what each stream is. Every file whose pattern matches a
//! device applies, least specific first, so `pump-*.toml` describes the fleet
//! and `pump-7.toml` overrides only what differs for one pump.
//!
//! Metric tables may be globs too (`[metrics."*"]`, `[metrics."temp*"]`); the
//! detection keys inside them are parsed and checked in `detection_raw.rs`
//! and merged into `StreamSettings` in `detection_merge.rs`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::detection::StreamSettings;
use super::detection_layer::FileLayer;
use super::detection_merge::{build, check_all, merge};
use super::detection_raw::{alerts_layer, metric_layer, RawAlerts, RawMetric};
use super::diag::{parse_file, ConfigError, ConfigErrors, Source};
use super::topic::check_name;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    /// Glob over device names (`*` any run of characters, `?` one character).
    /// Defaults to the file name without `.toml`.
    #[serde(rename = "match")]
    pattern: Option<String>,
    description: Option<String>,
    metadata: Option<BTreeMap<String, String>>,
    /// Device-wide `raise_after` / `clear_after`.
    alerts: Option<RawAlerts>,
    /// Keyed by metric name or glob.
    metrics: Option<BTreeMap<String, RawMetric>>,
}

/// One device file, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceClass {
    pub file: PathBuf,
    pub pattern: String,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    /// Keyed by the table's name as written (a metric name or a glob).
    pub metrics: BTreeMap<String, MetricProfile>,
    /// The detection keys of this file, validated on their own.
    pub(super) detection: FileLayer,
}

#[derive(Debug, Clone, Default, PartialEq)]
pub struct MetricProfile {
    pub unit: Option<String>,
    pub description: Option<String>,
}

/// What vigil knows of one device after merging every matching file.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceProfile {
    /// Files that applied, least specific first.
    pub sources: Vec<PathBuf>,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub metrics: BTreeMap<String, MetricProfile>,
}

/// All device files, ordered from least to most specific.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct DeviceRegistry {
    classes: Vec<DeviceClass>,
}

impl DeviceRegistry {
    pub fn classes(&self) -> &[DeviceClass] {
        &self.classes
    }

    /// One device file on its own (for `vigil backtest`), checked as
    /// `check-config` checks a devices directory.
    pub fn load_file(path: &Path) -> Result<DeviceRegistry, ConfigErrors> {
        let mut errors = Vec::new();
        match load_files(vec![path.to_path_buf()], &mut errors) {
            Some(registry) if errors.is_empty() => Ok(registry),
            _ => Err(ConfigErrors(errors)),
        }
    }

    /// Some device file's `match` names `device`.
    pub fn knows(&self, device: &str) -> bool {
        self.classes
            .iter()
            .any(|c| glob_matches(&c.pattern, device))
    }

    /// Merge every class that matches `device`; later (more specific) wins per key.
    pub fn resolve(&self, device: &str) -> DeviceProfile {
        let mut out = DeviceProfile::default();
        for class in self
            .classes
            .iter()
            .filter(|c| glob_matches(&c.pattern, device))
        {
            out.sources.push(class.file.clone());
            if class.description.is_some() {
                out.description = class.description.clone();
            }
            out.metadata
                .extend(class.metadata.iter().map(|(k, v)| (k.clone(), v.clone())));
            for (name, m) in &class.metrics {
                let slot = out.metrics.entry(name.clone()).or_default();
                if m.unit.is_some() {
                    slot.unit = m.unit.clone();
                }
                if m.description.is_some() {
                    slot.description = m.description.clone();
                }
            }
        }
        out
    }

    /// Settings for one stream: every device file whose `match` glob matches
    /// `device` applies, least specific first; inside each file `[alerts]`
    /// first, then every `[metrics."<glob>"]` table whose glob matches
    /// `metric`, least specific first (`*`, then `temp*`, then
    /// `temperature`); later values override earlier ones key by key. With
    /// no matching metric table at all, `StreamSettings::default()` (with the
    /// `[alerts]` hysteresis, if any).
    ///
    /// Loading checked every file against the files more general than it;
    /// two files that overlap without one being more general (`pump-*` and
    /// `*-7`) can still conflict for a device both match. Then the
    /// conflicting setting is dropped, and a warning logged.
    pub fn stream_settings(&self, device: &str, metric: &str) -> StreamSettings {
        let applying = self
            .classes
            .iter()
            .enumerate()
            .filter(|(_, c)| glob_matches(&c.pattern, device))
            .map(|(i, c)| (i, &c.detection));
        let (view, matched) = merge(applying, metric);
        let (settings, problems) = build(&view, matched);
        for p in problems {
            let file = self.classes.get(p.at.file).map(|c| c.file.as_path());
            tracing::warn!(
                device,
                metric,
                file = %file.unwrap_or(Path::new("?")).display(),
                key = %p.at.key,
                problem = %p.msg,
                "device files that overlap conflict for this stream; the conflicting setting is ignored"
            );
        }
        settings
    }
}

/// Literal characters in a pattern: more literal means more specific.
pub(super) fn specificity(pattern: &str) -> usize {
    pattern.chars().filter(|c| *c != '*' && *c != '?').count()
}

/// Glob match with `*` (any run, possibly empty) and `?` (one character).
pub fn glob_matches(pattern: &str, name: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let n: Vec<char> = name.chars().collect();
    // Iterative matcher with backtracking to the last `*` (linear in practice).
    let (mut pi, mut ni) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ni < n.len() {
        if pi < p.len() && (p[pi] == '?' || p[pi] == n[ni]) {
            pi += 1;
            ni += 1;
        } else if pi < p.len() && p[pi] == '*' {
            star = Some((pi, ni));
            pi += 1;
        } else if let Some((sp, sn)) = star {
            pi = sp + 1;
            ni = sn + 1;
            star = Some((sp, sn + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == '*' {
        pi += 1;
    }
    pi == p.len()
}

/// Load every `*.toml` in `dir`. Errors go to `errors`; `None` if any.
pub(super) fn load_dir(
    dir: &Path,
    main: &Source,
    errors: &mut Vec<ConfigError>,
) -> Option<DeviceRegistry> {
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => {
            errors.push(main.at(
                "devices_dir",
                format!("cannot read the devices directory {}: {e}", dir.display()),
            ));
            return None;
        }
    };
    let mut files: Vec<PathBuf> = entries
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
        .collect();
    files.sort();
    load_files(files, errors)
}

/// Load and check device files together. Errors go to `errors`; `None` if any.
fn load_files(files: Vec<PathBuf>, errors: &mut Vec<ConfigError>) -> Option<DeviceRegistry> {
    let start = errors.len();
    let mut classes: Vec<(DeviceClass, Source)> = Vec::new();
    // A file that could not be read or parsed at all may hold what a check
    // across files would look for.
    let mut all_parsed = true;
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError {
                    file: file.clone(),
                    line: None,
                    message: format!("cannot read: {e}"),
                });
                all_parsed = false;
                continue;
            }
        };
        let mut src = Source::new(&file, text);
        let before = errors.len();
        let Some(raw) = parse_file::<RawDevice>(&mut src, errors) else {
            all_parsed = false;
            continue;
        };
        let parsed = errors.len();
        let mut class = validate_device(&src, raw, errors);
        drop_follow_ons(errors, before, parsed);
        mark_refused(&mut class.detection, &errors[before..]);
        classes.push((class, src));
    }
    // Two files with the same pattern would override each other in file-name order,
    // which nobody would guess: refuse it.
    for i in 0..classes.len() {
        for j in 0..i {
            if classes[i].0.pattern == classes[j].0.pattern {
                errors.push(ConfigError {
                    file: classes[i].0.file.clone(),
                    line: classes[i].1.line("match"),
                    message: format!(
                        "match: pattern {:?} is also used by {}; merge the two files or make one pattern more specific",
                        classes[i].0.pattern,
                        classes[j].0.file.display()
                    ),
                });
            }
        }
    }
    // Stable sort: equal specificity keeps file-name order.
    classes.sort_by_key(|(c, _)| specificity(&c.pattern));
    if all_parsed {
        let layers: Vec<(&str, &FileLayer)> = classes
            .iter()
            .map(|(c, _)| (c.pattern.as_str(), &c.detection))
            .collect();
        for p in check_all(&layers) {
            errors.push(classes[p.at.file].1.at(&p.at.key, p.msg));
        }
    }
    if errors.len() > start {
        return None;
    }
    let classes = classes.into_iter().map(|(c, _)| c).collect();
    Some(DeviceRegistry { classes })
}

/// A key that failed to parse was left out before validation: do not also
/// report it, what is inside it, or its table as incomplete (errors
/// `parse_start..parsed` are the parse errors, the rest validation errors).
fn drop_follow_ons(errors: &mut Vec<ConfigError>, parse_start: usize, parsed: usize) {
    let path = |e: &ConfigError| e.message.split(": ").next().unwrap_or_default().to_string();
    let refused: Vec<String> = errors[parse_start..parsed].iter().map(path).collect();
    let mut i = parsed;
    while i < errors.len() {
        let p = path(&errors[i]);
        let follows = refused.iter().any(|r| {
            let under = r == &p || [".", "["].iter().any(|s| p.starts_with(&format!("{r}{s}")));
            let table = r.rsplit_once('.').is_some_and(|(parent, _)| parent == p);
            under || table
        });
        if follows {
            errors.remove(i);
        } else {
            i += 1;
        }
    }
}

/// Mark what a file's errors (`key.path: message`) may have left out: for a
/// metric table, the first key inside it that was refused (see
/// `MetricLayer::refused`); the whole file when its `match` or a whole
/// metric table was refused.
fn mark_refused(layer: &mut FileLayer, file_errors: &[ConfigError]) {
    for e in file_errors {
        let m = e.message.as_str();
        let mut in_table = false;
        for t in &mut layer.metrics {
            let Some(rest) = m.strip_prefix(&format!("metrics.{}", t.name)) else {
                continue;
            };
            let topic = if let Some(inner) = rest.strip_prefix('.') {
                match inner.split(['.', ':', '[']).next().unwrap_or_default() {
                    "window_readings" | "hop" | "hop_readings" => "window",
                    first => first,
                }
            } else if rest.starts_with(':') {
                "*"
            } else {
                continue;
            };
            t.refused.push(topic.to_string());
            in_table = true;
        }
        if !in_table && (m.starts_with("metrics") || m.starts_with("match")) {
            layer.tainted = true;
        }
    }
}

/// Validate one file; refused keys are reported and left out.
fn validate_device(src: &Source, raw: RawDevice, errors: &mut Vec<ConfigError>) -> DeviceClass {
    let pattern = raw.pattern.unwrap_or_else(|| {
        src.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    if let Err(e) = check_name("device pattern", &pattern) {
        errors.push(src.at("match", e));
    }
    let mut detection = alerts_layer(src, raw.alerts, errors);
    let mut metrics = BTreeMap::new();
    for (name, m) in raw.metrics.unwrap_or_default() {
        let key = format!("metrics.{name}");
        // Glob characters are allowed here (`*`, `?`), and check_name lets them through.
        if let Err(e) = check_name("metric", &name) {
            errors.push(src.at(&key, e));
        }
        if let Some(unit) = &m.unit {
            if unit.trim().is_empty() {
                errors.push(src.at(
                    &format!("{key}.unit"),
                    "expected a unit such as \"degC\", \"g\" or \"mm/s\"",
                ));
            }
        }
        detection.metrics.push(metric_layer(src, &name, &m, errors));
        metrics.insert(
            name,
            MetricProfile {
                unit: m.unit,
                description: m.description,
            },
        );
    }
    // Stable sort: equal specificity keeps name order.
    detection.metrics.sort_by_key(|t| specificity(&t.name));
    DeviceClass {
        file: src.path.clone(),
        pattern,
        description: raw.description,
        metadata: raw.metadata.unwrap_or_default(),
        metrics,
        detection,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn glob_matching() {
        assert!(glob_matches("pump-*", "pump-7"));
        assert!(glob_matches("pump-*", "pump-"));
        assert!(!glob_matches("pump-*", "fan-1"));
        assert!(glob_matches("*", "anything"));
        assert!(glob_matches("p?mp-*-a", "pump-12-a"));
        assert!(!glob_matches("p?mp-*-a", "pump-12-b"));
        assert!(glob_matches("*a*b", "xxaxxb"));
        assert!(glob_matches("pump-7", "pump-7"));
        assert!(!glob_matches("pump-7", "pump-70"));
    }

    #[test]
    fn specific_files_override_classes() {
        let class = |pattern: &str, unit: &str, site: Option<&str>| DeviceClass {
            file: PathBuf::from(format!("{pattern}.toml")),
            pattern: pattern.into(),
            description: None,
            metadata: site
                .map(|s| [("site".to_string(), s.to_string())].into())
                .unwrap_or_default(),
            metrics: [(
                "temperature".to_string(),
                MetricProfile {
                    unit: Some(unit.into()),
                    description: None,
                },
            )]
            .into(),
            detection: FileLayer::default(),
        };
        let mut classes = vec![
            class("pump-7", "degF", None),
            class("*", "degC", Some("hall")),
            class("pump-*", "degC", Some("line 1")),
        ];
        classes.sort_by_key(|c| specificity(&c.pattern));
        let reg = DeviceRegistry { classes };
        let p7 = reg.resolve("pump-7");
        assert_eq!(p7.metrics["temperature"].unit.as_deref(), Some("degF"));
        assert_eq!(p7.metadata["site"], "line 1");
        assert_eq!(p7.sources.len(), 3);
        let p8 = reg.resolve("pump-8");
        assert_eq!(p8.metrics["temperature"].unit.as_deref(), Some("degC"));
        let fan = reg.resolve("fan-1");
        assert_eq!(fan.metadata["site"], "hall");
        assert_eq!(fan.sources.len(), 1);
    }
}
