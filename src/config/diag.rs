//! Config diagnostics: every error names its file, its line and what was
//! expected, and a file is checked section by section so that one mistake does
//! not hide the next.

use std::collections::HashMap;
use std::fmt;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde::de::DeserializeOwned;
use toml::de::{DeTable, DeValue, ValueDeserializer};
use toml::Spanned;

/// One problem in one configuration file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigError {
    pub file: PathBuf,
    /// 1-based; `None` when the problem is the file as a whole.
    pub line: Option<usize>,
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.line {
            Some(line) => write!(f, "{}:{}: {}", self.file.display(), line, self.message),
            None => write!(f, "{}: {}", self.file.display(), self.message),
        }
    }
}

impl ConfigError {
    /// The same as a warning: `file:line: warning: message`.
    pub fn as_warning(&self) -> String {
        match self.line {
            Some(line) => format!(
                "{}:{}: warning: {}",
                self.file.display(),
                line,
                self.message
            ),
            None => format!("{}: warning: {}", self.file.display(), self.message),
        }
    }
}

/// Every problem found in a configuration, reported together.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

/// A configuration file's text, with the line of every key path
/// (`broker.port`, `subscriptions[1].qos`) for errors found after parsing.
pub struct Source {
    pub path: PathBuf,
    text: String,
    line_starts: Vec<usize>,
    key_lines: HashMap<String, usize>,
}

impl Source {
    pub fn new(path: &Path, text: String) -> Self {
        let mut line_starts = vec![0];
        line_starts.extend(text.match_indices('\n').map(|(i, _)| i + 1));
        Source {
            path: path.to_path_buf(),
            text,
            line_starts,
            key_lines: HashMap::new(),
        }
    }

    /// 1-based line of a byte offset.
    pub fn line_of(&self, offset: usize) -> usize {
        match self.line_starts.binary_search(&offset) {
            Ok(i) => i + 1,
            Err(i) => i,
        }
    }

    /// Line where `path` is set, or of its nearest enclosing table.
    pub fn line(&self, path: &str) -> Option<usize> {
        let mut p = path;
        loop {
            if let Some(l) = self.key_lines.get(p) {
                return Some(*l);
            }
            let cut = p.rfind(['.', '['])?;
            p = &p[..cut];
        }
    }

    pub fn error(&self, line: Option<usize>, message: impl Into<String>) -> ConfigError {
        ConfigError {
            file: self.path.clone(),
            line,
            message: message.into(),
        }
    }

    /// Error at the line of a key path.
    pub fn at(&self, path: &str, message: impl fmt::Display) -> ConfigError {
        self.error(self.line(path), format!("{path}: {message}"))
    }

    fn record_lines(&mut self, prefix: &str, table: &DeTable<'_>) {
        for (k, v) in table.iter() {
            let path = if prefix.is_empty() {
                k.get_ref().to_string()
            } else {
                format!("{prefix}.{}", k.get_ref())
            };
            let line = self.line_of(k.span().start);
            self.key_lines.insert(path.clone(), line);
            self.record_value_lines(&path, v);
        }
    }

    fn record_value_lines(&mut self, path: &str, v: &Spanned<DeValue<'_>>) {
        match v.get_ref() {
            DeValue::Table(t) => self.record_lines(path, t),
            DeValue::Array(items) => {
                for (i, item) in items.iter().enumerate() {
                    let p = format!("{path}[{i}]");
                    let line = self.line_of(item.span().start);
                    self.key_lines.insert(p.clone(), line);
                    self.record_value_lines(&p, item);
                }
            }
            _ => {}
        }
    }
}

/// Parse a whole file into `T`, collecting every error.
///
/// `T`'s fields should all be optional (`Option` or `#[serde(default)]`) and
/// deny unknown fields: required keys are checked by the validation step, so a
/// failed parse can be retried key by key to find each bad key on its own line.
pub fn parse_file<T: DeserializeOwned>(
    src: &mut Source,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    // Parse against an owned copy so `src` can be updated with key lines.
    let text = src.text.clone();
    let (root, syntax) = DeTable::parse_recoverable(&text);
    if !syntax.is_empty() {
        for e in syntax {
            let line = e.span().map(|s| src.line_of(s.start));
            errors.push(src.error(line, format!("invalid TOML: {}", e.message().trim())));
        }
        return None;
    }
    src.record_lines("", root.get_ref());
    let span = root.span();
    deserialize_all(src, "", DeValue::Table(root.into_inner()), span, errors)
}

/// Deserialize one value; on failure find each bad key on its own (by
/// deserializing documents that hold only that key), report each with its
/// line, drop them, and deserialize the rest, so that validation can still
/// check everything that parsed.
fn deserialize_all<T: DeserializeOwned>(
    src: &Source,
    path: &str,
    value: DeValue<'_>,
    span: Range<usize>,
    errors: &mut Vec<ConfigError>,
) -> Option<T> {
    let first = match T::deserialize(ValueDeserializer::from(Spanned::new(
        span.clone(),
        value.clone(),
    ))) {
        Ok(v) => return Some(v),
        Err(e) => e,
    };
    let before = errors.len();
    let mut bad: Vec<Vec<Elem>> = Vec::new();
    find_bad::<T>(src, path, &mut Vec::new(), &value, &span, &mut bad, errors);
    if errors.len() == before {
        errors.push(de_error(src, path, &first, span.start));
        return None;
    }
    let mut pruned = value;
    for p in &bad {
        prune(&mut pruned, p);
    }
    T::deserialize(ValueDeserializer::from(Spanned::new(span, pruned))).ok()
}

/// One step of a path into a document.
#[derive(Debug, Clone, PartialEq)]
enum Elem {
    Key(String),
    Index(usize),
}

/// A document holding only `leaf`, placed at `path`.
fn isolate<'a>(
    path: &[(Elem, Range<usize>)],
    leaf: Spanned<DeValue<'a>>,
    root_span: &Range<usize>,
) -> Spanned<DeValue<'a>> {
    let mut value = leaf;
    for (i, (elem, elem_span)) in path.iter().enumerate().rev() {
        let span = if i == 0 {
            root_span.clone()
        } else {
            path[i - 1].1.clone()
        };
        value = match elem {
            Elem::Key(key) => {
                let mut t = DeTable::new();
                t.insert(Spanned::new(elem_span.clone(), key.clone().into()), value);
                Spanned::new(span, DeValue::Table(t))
            }
            Elem::Index(_) => Spanned::new(span, DeValue::Array(std::iter::once(value).collect())),
        };
    }
    value
}

#[allow(clippy::too_many_arguments)]
fn find_bad<T: DeserializeOwned>(
    src: &Source,
    prefix: &str,
    path: &mut Vec<(Elem, Range<usize>)>,
    node: &DeValue<'_>,
    root_span: &Range<usize>,
    bad: &mut Vec<Vec<Elem>>,
    errors: &mut Vec<ConfigError>,
) {
    let children: Vec<(Elem, Range<usize>, &Spanned<DeValue<'_>>)> = match node {
        DeValue::Table(table) => table
            .iter()
            .map(|(k, v)| (Elem::Key(k.get_ref().to_string()), k.span(), v))
            .collect(),
        DeValue::Array(items) => items
            .iter()
            .enumerate()
            .map(|(i, v)| (Elem::Index(i), v.span(), v))
            .collect(),
        _ => return,
    };
    for (elem, elem_span, v) in children {
        path.push((elem, elem_span));
        let doc = isolate(path, v.clone(), root_span);
        let span = doc.span();
        if let Err(e) = T::deserialize(ValueDeserializer::from(doc)) {
            let before = errors.len();
            if matches!(v.get_ref(), DeValue::Table(_) | DeValue::Array(_)) {
                find_bad::<T>(src, prefix, path, v.get_ref(), root_span, bad, errors);
            }
            if errors.len() == before {
                errors.push(de_error(src, &join_path(prefix, path), &e, span.start));
                bad.push(path.iter().map(|(k, _)| k.clone()).collect());
            }
        }
        path.pop();
    }
}

/// `broker.tls.ca_file`, `subscriptions[1].qos`.
fn join_path(prefix: &str, path: &[(Elem, Range<usize>)]) -> String {
    let mut out = prefix.to_string();
    for (elem, _) in path {
        match elem {
            Elem::Key(k) if out.is_empty() => out.push_str(k),
            Elem::Key(k) => {
                out.push('.');
                out.push_str(k);
            }
            Elem::Index(i) => out.push_str(&format!("[{i}]")),
        }
    }
    out
}

fn prune(value: &mut DeValue<'_>, path: &[Elem]) {
    let Some((first, rest)) = path.split_first() else {
        return;
    };
    match (first, value) {
        (Elem::Key(key), DeValue::Table(table)) => {
            if rest.is_empty() {
                let old = std::mem::take(table);
                *table = old
                    .into_iter()
                    .filter(|(k, _)| k.get_ref() != key)
                    .collect();
            } else if let Some((_, child)) = table.iter_mut().find(|(k, _)| k.get_ref() == key) {
                prune(child.get_mut(), rest);
            }
        }
        (Elem::Index(i), DeValue::Array(items)) => {
            if rest.is_empty() {
                // Keep the other elements at their indices: blank this one.
                if let Some(item) = items.get_mut(*i) {
                    *item.get_mut() = DeValue::Table(DeTable::new());
                }
            } else if let Some(item) = items.get_mut(*i) {
                prune(item.get_mut(), rest);
            }
        }
        _ => {}
    }
}

fn de_error(src: &Source, path: &str, e: &toml::de::Error, fallback: usize) -> ConfigError {
    let at = e.span().map(|s| s.start).unwrap_or(fallback);
    let msg = plain_words(e.message().trim());
    let msg = if path.is_empty() {
        msg
    } else {
        format!("{path}: {msg}")
    };
    src.error(Some(src.line_of(at)), msg)
}

/// Serde speaks of Rust types; say what to write in the file instead.
fn plain_words(msg: &str) -> String {
    let mut out = msg.replace('\n', " ");
    for (rust, toml) in [
        ("expected u8", "expected a whole number from 0 to 255"),
        ("expected u16", "expected a whole number from 0 to 65535"),
        (
            "expected u32",
            "expected a whole number from 0 to 4294967295",
        ),
        ("expected u64", "expected a whole number of 0 or more"),
        ("expected a string", "expected a quoted string"),
        ("expected a map", "expected a table"),
        ("expected a sequence", "expected an array"),
    ] {
        out = out.replace(rust, toml);
    }
    // "expected struct RawBroker" and the like.
    while let Some(i) = out.find("struct Raw") {
        let end = out[i..]
            .find(|c: char| !c.is_alphanumeric() && c != ' ')
            .map_or(out.len(), |j| i + j);
        out.replace_range(i..end, "a table");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    #[test]
    fn serde_words_become_toml_words() {
        assert_eq!(
            plain_words("invalid type: string \"x\", expected u8"),
            "invalid type: string \"x\", expected a whole number from 0 to 255"
        );
        assert_eq!(
            plain_words("invalid type: integer `5`, expected struct RawSubscription"),
            "invalid type: integer `5`, expected a table"
        );
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Doc {
        a: Option<u16>,
        b: Option<String>,
        inner: Option<Inner>,
    }

    #[derive(Debug, Deserialize)]
    #[serde(deny_unknown_fields)]
    struct Inner {
        x: Option<bool>,
    }

    fn run(text: &str) -> (Option<Doc>, Vec<ConfigError>) {
        let mut src = Source::new(Path::new("t.toml"), text.to_string());
        let mut errors = Vec::new();
        let doc = parse_file::<Doc>(&mut src, &mut errors);
        (doc, errors)
    }

    #[test]
    fn valid_document_parses() {
        let (doc, errors) = run("a = 5\nb = \"x\"\n[inner]\nx = true\n");
        assert!(errors.is_empty(), "{errors:?}");
        let doc = doc.unwrap();
        assert_eq!(doc.a, Some(5));
        assert_eq!(doc.inner.unwrap().x, Some(true));
    }

    #[test]
    fn every_bad_key_is_reported_with_its_line() {
        let (doc, errors) = run("a = \"five\"\nb = \"ok\"\nc = 1\n[inner]\nx = 3\n");
        // The bad keys are dropped so the rest can still be validated.
        let doc = doc.expect("the good keys still parse");
        assert_eq!(doc.b.as_deref(), Some("ok"));
        assert!(doc.a.is_none());
        assert!(
            errors.iter().any(|e| e.message.starts_with("inner.x: ")),
            "{errors:?}"
        );
        let lines: Vec<_> = errors.iter().map(|e| e.line).collect();
        assert_eq!(errors.len(), 3, "{errors:?}");
        assert!(lines.contains(&Some(1)), "{errors:?}");
        assert!(lines.contains(&Some(3)), "{errors:?}");
        assert!(lines.contains(&Some(5)), "{errors:?}");
        assert!(
            errors
                .iter()
                .any(|e| e.message.contains("unknown field `c`")),
            "{errors:?}"
        );
    }

    #[test]
    fn syntax_errors_name_the_line() {
        let (_, errors) = run("a = 1\nb = \n");
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].line, Some(2));
        assert!(errors[0].to_string().starts_with("t.toml:2: invalid TOML"));
    }

    #[test]
    fn key_paths_map_to_lines() {
        let mut src = Source::new(Path::new("t.toml"), "a = 1\n\n[inner]\nx = true\n".into());
        let mut errors = Vec::new();
        let _ = parse_file::<Doc>(&mut src, &mut errors);
        assert_eq!(src.line("inner.x"), Some(4));
        assert_eq!(src.line("inner.nothing"), Some(3));
        assert_eq!(src.line("a"), Some(1));
    }
}
