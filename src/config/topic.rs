//! Topic templates (`plant/+/{device}/{metric}`): which levels of an incoming
//! topic name the device and the metric, and the MQTT filter they imply.

use std::fmt;

#[derive(Debug, Clone, PartialEq, Eq)]
enum Level {
    Literal(String),
    /// `+`: any single level, ignored.
    Any,
    /// `{name}`: any single level, captured (`device` and `metric` are used).
    Capture(String),
    /// `#`: any remaining levels (last only).
    Rest,
}

/// A parsed topic template.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TopicTemplate {
    text: String,
    levels: Vec<Level>,
}

/// Device and metric named by a topic (either may come from the payload instead).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TopicIds<'a> {
    pub device: Option<&'a str>,
    pub metric: Option<&'a str>,
}

impl TopicTemplate {
    pub fn parse(text: &str) -> Result<Self, String> {
        if text.is_empty() {
            return Err("a topic template cannot be empty".into());
        }
        let parts: Vec<&str> = text.split('/').collect();
        let mut levels = Vec::with_capacity(parts.len());
        let mut seen = Vec::new();
        for (i, part) in parts.iter().enumerate() {
            let level = if *part == "+" {
                Level::Any
            } else if *part == "#" {
                if i + 1 != parts.len() {
                    return Err("`#` may only be the last level".into());
                }
                Level::Rest
            } else if let Some(name) = part.strip_prefix('{').and_then(|p| p.strip_suffix('}')) {
                if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    return Err(format!(
                        "`{part}` is not a valid placeholder; use letters, digits and `_`"
                    ));
                }
                if seen.contains(&name) {
                    return Err(format!("placeholder `{{{name}}}` appears twice"));
                }
                seen.push(name);
                Level::Capture(name.to_string())
            } else if part.contains(['+', '#', '{', '}']) {
                return Err(format!(
                    "level `{part}` mixes text with `+`, `#` or braces; a level is literal text, `+`, `#` or one `{{name}}`"
                ));
            } else {
                Level::Literal(part.to_string())
            };
            levels.push(level);
        }
        Ok(TopicTemplate {
            text: text.to_string(),
            levels,
        })
    }

    /// The MQTT subscription filter this template implies (placeholders become `+`).
    pub fn filter(&self) -> String {
        self.levels
            .iter()
            .map(|l| match l {
                Level::Literal(s) => s.as_str(),
                Level::Any | Level::Capture(_) => "+",
                Level::Rest => "#",
            })
            .collect::<Vec<_>>()
            .join("/")
    }

    /// Match a concrete topic; `None` when it does not fit.
    pub fn extract<'a>(&self, topic: &'a str) -> Option<TopicIds<'a>> {
        let mut ids = TopicIds::default();
        let mut parts = topic.split('/');
        for level in &self.levels {
            match level {
                Level::Rest => return Some(ids),
                _ => {
                    let part = parts.next()?;
                    match level {
                        Level::Literal(s) if s != part => return None,
                        Level::Capture(name) if name == "device" => ids.device = Some(part),
                        Level::Capture(name) if name == "metric" => ids.metric = Some(part),
                        _ => {}
                    }
                }
            }
        }
        if parts.next().is_some() {
            return None;
        }
        Some(ids)
    }
}

impl fmt::Display for TopicTemplate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.text)
    }
}

/// Is `filter` a valid MQTT subscription filter?
pub fn validate_filter(filter: &str) -> Result<(), String> {
    if filter.is_empty() {
        return Err("a topic filter cannot be empty".into());
    }
    let parts: Vec<&str> = filter.split('/').collect();
    for (i, p) in parts.iter().enumerate() {
        if p.contains('#') && (*p != "#" || i + 1 != parts.len()) {
            return Err("`#` must be a whole level and the last one".into());
        }
        if p.contains('+') && *p != "+" {
            return Err("`+` must be a whole level".into());
        }
    }
    Ok(())
}

/// MQTT topic filter matching (MQTT 3.1.1 section 4.7).
pub fn filter_matches(filter: &str, topic: &str) -> bool {
    // Filters starting with a wildcard do not match `$SYS`-style topics.
    if topic.starts_with('$') && (filter.starts_with('+') || filter.starts_with('#')) {
        return false;
    }
    let mut f = filter.split('/');
    let mut t = topic.split('/');
    loop {
        match (f.next(), t.next()) {
            (Some("#"), _) => return true,
            (Some("+"), Some(_)) => {}
            (Some(a), Some(b)) if a == b => {}
            (None, None) => return true,
            _ => return false,
        }
    }
}

/// Why a device or metric name cannot be used, if it cannot.
///
/// Names are embedded in upstream topics (`.../{device}/{metric}`), so MQTT
/// wildcards, the level separator and control characters are refused.
pub fn check_name(kind: &str, name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("{kind} name is empty"));
    }
    if name.len() > 128 {
        return Err(format!(
            "{kind} name is {} bytes long; at most 128 are allowed",
            name.len()
        ));
    }
    if let Some(c) = name
        .chars()
        .find(|c| matches!(c, '+' | '#' | '/') || c.is_control())
    {
        return Err(format!(
            "{kind} name {:?} contains {:?}, which is not allowed in an MQTT topic level",
            name, c
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn template_extracts_device_and_metric() {
        let t = TopicTemplate::parse("plant/+/{device}/{metric}").unwrap();
        assert_eq!(t.filter(), "plant/+/+/+");
        let ids = t.extract("plant/line1/pump-7/temperature").unwrap();
        assert_eq!(ids.device, Some("pump-7"));
        assert_eq!(ids.metric, Some("temperature"));
        assert!(t.extract("plant/line1/pump-7").is_none());
        assert!(t.extract("plant/line1/pump-7/temperature/extra").is_none());
        assert!(t.extract("other/line1/pump-7/temperature").is_none());
    }

    #[test]
    fn template_with_rest_and_other_captures() {
        let t = TopicTemplate::parse("site/{line}/{device}/#").unwrap();
        assert_eq!(t.filter(), "site/+/+/#");
        let ids = t.extract("site/l1/fan-1/a/b").unwrap();
        assert_eq!(ids.device, Some("fan-1"));
        assert_eq!(ids.metric, None);
    }

    #[test]
    fn bad_templates_are_refused() {
        assert!(TopicTemplate::parse("a/#/b").is_err());
        assert!(TopicTemplate::parse("a/x{device}").is_err());
        assert!(TopicTemplate::parse("a/{device}/{device}").is_err());
        assert!(TopicTemplate::parse("a/{}/b").is_err());
        assert!(TopicTemplate::parse("").is_err());
    }

    #[test]
    fn filters_match_like_mqtt() {
        assert!(filter_matches("a/+/c", "a/b/c"));
        assert!(filter_matches("a/#", "a"));
        assert!(filter_matches("a/#", "a/b/c"));
        assert!(!filter_matches("a/+", "a/b/c"));
        assert!(!filter_matches("a/b", "a/b/c"));
        assert!(!filter_matches("#", "$SYS/x"));
        assert!(validate_filter("a/+/#").is_ok());
        assert!(validate_filter("a/b#").is_err());
        assert!(validate_filter("a/+b").is_err());
    }

    #[test]
    fn unsafe_names_are_refused() {
        assert!(check_name("device", "pump-7").is_ok());
        assert!(check_name("device", "Pumpe_Halle_3").is_ok());
        for bad in ["", "a+b", "a#", "a/b", "a\nb", "a\u{0}b"] {
            assert!(check_name("device", bad).is_err(), "{bad:?}");
        }
        assert!(check_name("metric", &"x".repeat(129)).is_err());
    }
}
