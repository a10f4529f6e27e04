//! Device files (`devices/*.toml`): per device, or per device class matched by
//! a glob pattern, what each stream is. Every file whose pattern matches a
//! device applies, least specific first, so `pump-*.toml` describes the fleet
//! and `pump-7.toml` overrides only what differs for one pump.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use super::diag::{parse_file, ConfigError, Source};
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
    metrics: Option<BTreeMap<String, RawMetric>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMetric {
    unit: Option<String>,
    description: Option<String>,
}

/// One device file, validated.
#[derive(Debug, Clone, PartialEq)]
pub struct DeviceClass {
    pub file: PathBuf,
    pub pattern: String,
    pub description: Option<String>,
    pub metadata: BTreeMap<String, String>,
    pub metrics: BTreeMap<String, MetricProfile>,
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
}

/// Literal characters in a pattern: more literal means more specific.
fn specificity(pattern: &str) -> usize {
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
    let start = errors.len();
    let mut classes: Vec<(DeviceClass, Option<usize>)> = Vec::new();
    for file in files {
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) => {
                errors.push(ConfigError {
                    file: file.clone(),
                    line: None,
                    message: format!("cannot read: {e}"),
                });
                continue;
            }
        };
        let mut src = Source::new(&file, text);
        let Some(raw) = parse_file::<RawDevice>(&mut src, errors) else {
            continue;
        };
        if let Some(class) = validate_device(&src, raw, errors) {
            let line = src.line("match");
            classes.push((class, line));
        }
    }
    // Two files with the same pattern would override each other in file-name order,
    // which nobody would guess: refuse it.
    for i in 0..classes.len() {
        for j in 0..i {
            if classes[i].0.pattern == classes[j].0.pattern {
                errors.push(ConfigError {
                    file: classes[i].0.file.clone(),
                    line: classes[i].1,
                    message: format!(
                        "match: pattern {:?} is also used by {}; merge the two files or make one pattern more specific",
                        classes[i].0.pattern,
                        classes[j].0.file.display()
                    ),
                });
            }
        }
    }
    if errors.len() > start {
        return None;
    }
    let mut classes: Vec<DeviceClass> = classes.into_iter().map(|(c, _)| c).collect();
    // Stable sort: equal specificity keeps file-name order.
    classes.sort_by_key(|c| specificity(&c.pattern));
    Some(DeviceRegistry { classes })
}

fn validate_device(
    src: &Source,
    raw: RawDevice,
    errors: &mut Vec<ConfigError>,
) -> Option<DeviceClass> {
    let start = errors.len();
    let pattern = raw.pattern.unwrap_or_else(|| {
        src.path
            .file_stem()
            .map(|s| s.to_string_lossy().into_owned())
            .unwrap_or_default()
    });
    if let Err(e) = check_name("device pattern", &pattern) {
        errors.push(src.at("match", e));
    }
    let mut metrics = BTreeMap::new();
    for (name, m) in raw.metrics.unwrap_or_default() {
        let key = format!("metrics.{name}");
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
        metrics.insert(
            name,
            MetricProfile {
                unit: m.unit,
                description: m.description,
            },
        );
    }
    if errors.len() > start {
        return None;
    }
    Some(DeviceClass {
        file: src.path.clone(),
        pattern,
        description: raw.description,
        metadata: raw.metadata.unwrap_or_default(),
        metrics,
    })
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
