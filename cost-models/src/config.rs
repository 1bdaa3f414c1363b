//! Model configs (TOML): built-ins embedded in the binary, or a user's file.
//! Also the shared TOML loading that turns serde errors into messages naming
//! the file, line and field.

use crate::regnet::RegNetSpec;
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use std::path::Path;
use thiserror::Error;

/// SwAV projection head + prototypes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwavHeadSpec {
    /// Output width of each Linear of the projection MLP; its input is the
    /// trunk width. VISSL writes the same list with the trunk width first.
    pub mlp_dims: Vec<usize>,
    /// Number of prototypes (the last, bias-free Linear).
    pub prototypes: usize,
}

/// A model: RegNet-Y trunk + SwAV head.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Where the generator numbers come from.
    #[serde(default)]
    pub source: String,
    pub regnet: RegNetSpec,
    pub head: SwavHeadSpec,
}

/// Any error loading or validating a config file.
#[derive(Debug, Error)]
pub enum ConfigError {
    /// The OS reason is in the message, not chained as a source, so
    /// `{:#}` prints it once.
    #[error("{origin}: cannot read file: {error}")]
    Io { origin: String, error: std::io::Error },
    /// A syntax or type error; `field` is the dotted path of the value it is
    /// in, when it can be told.
    #[error("{origin}:{line}:{column}: {}{message}", field_prefix(.field))]
    Parse { origin: String, line: usize, column: usize, field: Option<String>, message: String },
    /// A value that parses but makes no sense; `line` when the field can be
    /// found in the text (see [`ConfigError::located`]).
    #[error("{origin}{}: field `{field}`: {reason}", line_suffix(*.line))]
    Invalid { origin: String, line: Option<usize>, field: String, reason: String },
    #[error("unknown {kind} `{name}`: not a file and not a built-in (built-ins: {builtins})")]
    Unknown { kind: &'static str, name: String, builtins: String },
}

pub(crate) fn field_prefix(f: &Option<String>) -> String {
    f.as_ref().map(|f| format!("field `{f}`: ")).unwrap_or_default()
}

pub(crate) fn line_suffix(l: Option<usize>) -> String {
    l.map(|l| format!(":{l}")).unwrap_or_default()
}

impl ConfigError {
    pub fn invalid(origin: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { origin: origin.to_string(), line: None, field: field.into(), reason: reason.into() }
    }

    /// Adds the line of an [`ConfigError::Invalid`] field found in the TOML
    /// `text` it was read from; other errors are returned unchanged.
    pub fn located(self, text: &str) -> Self {
        match self {
            ConfigError::Invalid { origin, line: None, field, reason } => ConfigError::Invalid { origin, line: locate_key(text, &field), field, reason },
            e => e,
        }
    }
}

/// Parses TOML text; errors carry `origin` (a path or `builtin:NAME`), the
/// line and column, the field and serde's message.
pub fn parse_toml<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| toml_error(&e, text, origin))
}

/// Turns a toml error into file:line:column plus the offending field.
pub fn toml_error(e: &toml::de::Error, text: &str, origin: &str) -> ConfigError {
    let message = e.message().trim().replace('\n', " ");
    let (line, column, offset) = match e.span() {
        Some(span) => {
            let (l, c) = line_col(text, span.start);
            (l, c, Some(span.start))
        }
        None => (1, 1, None),
    };
    let field = toml_field_of_error(&message, text, offset);
    ConfigError::Parse { origin: origin.to_string(), line, column, field, message }
}

/// Parses JSON text with the same error shape as [`parse_toml`]: the field
/// is the JSON path (`units[3].members`) of the value the error is in.
pub fn parse_json<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    serde_json::from_str(text).map_err(|e| {
        let (line, column) = (e.line(), e.column());
        // serde_json appends the position, which the prefix already gives.
        let full = e.to_string();
        let message = full.strip_suffix(&format!(" at line {line} column {column}")).unwrap_or(&full).to_string();
        let at = json_path_at(text, line, column);
        // A missing field is reported at the end of its object, where the
        // path is the object's last key: name the missing one instead.
        let field = match message.strip_prefix("missing field `").and_then(|r| r.split('`').next()) {
            Some(name) => match at.as_deref().and_then(|p| p.rsplit_once('.')) {
                Some((parent, _)) => Some(format!("{parent}.{name}")),
                None => Some(name.to_string()),
            },
            None => at,
        };
        ConfigError::Parse { origin: origin.to_string(), line, column, field, message }
    })
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Best-effort dotted field name for a toml error: the key named in serde's
/// message (unknown/missing field) or the key on the error's line, prefixed
/// with the enclosing `[table]`.
fn toml_field_of_error(message: &str, text: &str, offset: Option<usize>) -> Option<String> {
    let quoted = ["unknown field `", "missing field `", "duplicate key `"].iter().find_map(|p| {
        let rest = &message[message.find(p)? + p.len()..];
        Some(rest[..rest.find('`')?].to_string())
    });
    let off = offset?;
    let line_start = text[..off.min(text.len())].rfind('\n').map_or(0, |i| i + 1);
    let line_text = text[line_start..].lines().next().unwrap_or("");
    let table = enclosing_table(&text[..line_start]);
    let key = quoted.or_else(|| {
        let (k, _) = line_text.split_once('=')?;
        let k = k.trim();
        (!k.is_empty() && !k.starts_with('[')).then(|| k.to_string())
    });
    // A `missing field` error points at the table header itself.
    let header = line_text.trim().strip_prefix('[').and_then(|h| h.strip_suffix(']')).map(str::trim);
    let table = if message.contains("missing field") { header.map(str::to_string).or(table) } else { table };
    match (table, key) {
        (Some(t), Some(k)) => Some(format!("{t}.{k}")),
        (None, Some(k)) => Some(k),
        (Some(t), None) => Some(t),
        (None, None) => None,
    }
}

/// Name of the last `[table]` header in `before`, if any.
fn enclosing_table(before: &str) -> Option<String> {
    before.lines().rev().find_map(|l| {
        let l = l.trim();
        let inner = l.strip_prefix("[[").and_then(|x| x.strip_suffix("]]")).or_else(|| l.strip_prefix('[').and_then(|x| x.strip_suffix(']')))?;
        Some(inner.trim().to_string())
    })
}

/// 1-based line of `a.b.c = ...` in a hand-written TOML file: the key `c`
/// inside the `[a.b]` section (or a dotted key). `None` if not found.
pub fn locate_key(text: &str, dotted: &str) -> Option<usize> {
    let (table, key) = match dotted.rsplit_once('.') {
        Some((t, k)) => (t, k),
        None => ("", dotted),
    };
    let mut current = String::new();
    for (i, raw) in text.lines().enumerate() {
        let l = raw.trim();
        if l.starts_with('[') {
            current = l.trim_matches(|c| c == '[' || c == ']').trim().to_string();
            continue;
        }
        let Some((k, _)) = l.split_once('=') else { continue };
        let k = k.trim().trim_matches('"');
        let full = if current.is_empty() { k.to_string() } else { format!("{current}.{k}") };
        if full == dotted || (current == table && k == key) {
            return Some(i + 1);
        }
    }
    None
}

/// The JSON path (`units[3].members`) of the value at a 1-based line and
/// column, found by scanning the text up to there. Good enough for error
/// messages; `None` at the top level.
pub fn json_path_at(text: &str, line: usize, column: usize) -> Option<String> {
    enum Frame {
        Obj(Option<String>),
        Arr(usize),
    }
    let mut stack: Vec<Frame> = Vec::new();
    let (mut l, mut c) = (1usize, 0usize);
    let mut chars = text.chars().peekable();
    let mut expecting_key = false;
    while let Some(ch) = chars.next() {
        if ch == '\n' {
            l += 1;
            c = 0;
        } else {
            c += 1;
        }
        if l > line || (l == line && c >= column) {
            break;
        }
        match ch {
            '{' => {
                stack.push(Frame::Obj(None));
                expecting_key = true;
            }
            '[' => stack.push(Frame::Arr(0)),
            '}' | ']' => {
                stack.pop();
                expecting_key = false;
            }
            ',' => match stack.last_mut() {
                Some(Frame::Arr(i)) => *i += 1,
                Some(Frame::Obj(_)) => expecting_key = true,
                None => {}
            },
            '"' => {
                let mut s = String::new();
                while let Some(x) = chars.next() {
                    c += 1;
                    match x {
                        '\\' => {
                            chars.next();
                            c += 1;
                        }
                        '"' => break,
                        '\n' => {
                            l += 1;
                            c = 0;
                        }
                        _ => s.push(x),
                    }
                }
                if expecting_key {
                    if let Some(Frame::Obj(k)) = stack.last_mut() {
                        *k = Some(s);
                    }
                    expecting_key = false;
                }
            }
            _ => {}
        }
    }
    let mut path = String::new();
    for f in &stack {
        match f {
            Frame::Obj(Some(k)) => {
                if !path.is_empty() {
                    path.push('.');
                }
                path.push_str(k);
            }
            Frame::Obj(None) => {}
            Frame::Arr(i) => {
                path.push_str(&format!("[{i}]"));
            }
        }
    }
    (!path.is_empty()).then_some(path)
}

/// Whether a name given for a config is a file path rather than a built-in:
/// it has a path separator, a `.toml` / `.json` ending, or is an existing file.
pub fn looks_like_path(name_or_path: &str) -> bool {
    name_or_path.contains('/')
        || name_or_path.contains(std::path::MAIN_SEPARATOR)
        || name_or_path.ends_with(".toml")
        || name_or_path.ends_with(".json")
        || Path::new(name_or_path).is_file()
}

/// Reads a config (or plan) file; the error names the file.
pub fn read_file(path: impl AsRef<Path>) -> Result<String, ConfigError> {
    let path = path.as_ref();
    std::fs::read_to_string(path).map_err(|error| ConfigError::Io { origin: path.display().to_string(), error })
}

/// Reads `name_or_path` as a file if it looks like a path or exists,
/// otherwise as the name of a built-in from `builtins` (name, text).
/// Returns (origin, text): the path, or `builtin:NAME`.
pub fn resolve_text(kind: &'static str, name_or_path: &str, builtins: &[(&'static str, &'static str)]) -> Result<(String, String), ConfigError> {
    if looks_like_path(name_or_path) {
        return Ok((name_or_path.to_string(), read_file(name_or_path)?));
    }
    match builtins.iter().find(|(n, _)| *n == name_or_path) {
        Some((n, text)) => Ok((format!("builtin:{n}"), text.to_string())),
        None => Err(ConfigError::Unknown { kind, name: name_or_path.to_string(), builtins: builtins.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", ") }),
    }
}

/// Loads a built-in by name or a TOML file by path, parses and validates it;
/// a validation error gets the line of its field.
pub fn load_toml<T: DeserializeOwned>(
    kind: &'static str,
    name_or_path: &str,
    builtins: &[(&'static str, &'static str)],
    validate: impl FnOnce(&T, &str) -> Result<(), ConfigError>,
) -> Result<T, ConfigError> {
    let (origin, text) = resolve_text(kind, name_or_path, builtins)?;
    let value: T = parse_toml(&text, &origin)?;
    validate(&value, &origin).map_err(|e| e.located(&text))?;
    Ok(value)
}

macro_rules! builtin_models {
    ($($name:literal),* $(,)?) => {
        /// Built-in model configs (name, TOML text), embedded at compile time.
        pub const BUILTIN_MODELS: &[(&str, &str)] = &[
            $(($name, include_str!(concat!("../../configs/models/", $name, ".toml")))),*
        ];
    };
}
builtin_models!(
    "regnety-tiny",
    "regnety-400mf",
    "regnety-8gf",
    "regnety-16gf",
    "regnety-32gf",
    "regnety-64gf",
    "regnety-128gf",
    "regnety-256gf-seer",
    "regnety-10b-s3-pair",
    "regnety-10b",
    "regnetx-200mf",
    "regnetx-400mf",
    "regnetx-600mf",
    "regnetx-800mf",
    "regnetx-1.6gf",
    "regnetx-3.2gf",
    "regnetx-4.0gf",
    "regnetx-6.4gf",
    "regnetx-8.0gf",
    "regnetx-12gf",
    "regnetx-16gf",
    "regnetx-32gf",
    "regnety-200mf",
    "regnety-600mf",
    "regnety-800mf",
    "regnety-1.6gf",
    "regnety-3.2gf",
    "regnety-4.0gf",
    "regnety-6.4gf",
    "regnety-12gf",
);

impl ModelConfig {
    /// Loads a built-in by name or a user's TOML file by path, and validates it.
    pub fn load(name_or_path: &str) -> Result<ModelConfig, ConfigError> {
        load_toml("model", name_or_path, BUILTIN_MODELS, ModelConfig::validate)
    }

    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        self.regnet.validate().map_err(|e| ConfigError::invalid(origin, format!("regnet.{}", e.field), e.reason))?;
        if self.head.mlp_dims.contains(&0) {
            return Err(ConfigError::invalid(origin, "head.mlp_dims", "every width must be at least 1"));
        }
        if self.head.prototypes == 0 {
            return Err(ConfigError::invalid(origin, "head.prototypes", "must be at least 1"));
        }
        if self.name.trim().is_empty() {
            return Err(ConfigError::invalid(origin, "name", "must not be empty"));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_loads() {
        for (name, _) in BUILTIN_MODELS {
            let m = ModelConfig::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            assert_eq!(&m.name, name);
        }
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let text = "name = \"x\"\n[regnet]\ndepth = 4\nw_0 = 8\nw_a = 8\nw_m = 2\ngroup_width = 8\nwidht = 3\n[head]\nmlp_dims=[8]\nprototypes=4\n";
        let err = parse_toml::<ModelConfig>(text, "my.toml").unwrap_err().to_string();
        assert!(err.starts_with("my.toml:8:"), "{err}");
        assert!(err.contains("widht"), "{err}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let dir = std::env::temp_dir().join(format!("seerscale-cfg-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("bad.toml");
        std::fs::write(&p, "name = \"x\"\n[regnet]\ndepth = 4\nw_0 = 8\nw_a = 8\nw_m = 1.0\ngroup_width = 8\n[head]\nmlp_dims=[8]\nprototypes=4\n").unwrap();
        let err = ModelConfig::load(p.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("bad.toml") && err.contains("regnet.w_m"), "{err}");
        std::fs::write(&p, "name = \"x\"\n[regnet]\ndepth = 4\nw_0 = -8\nw_a = 8\nw_m = 2\ngroup_width = 8\n[head]\nmlp_dims=[8]\nprototypes=4\n").unwrap();
        let err = ModelConfig::load(p.to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("regnet.w_0"), "{err}");
        let err = ModelConfig::load(dir.join("missing.toml").to_str().unwrap()).unwrap_err().to_string();
        assert!(err.contains("missing.toml") && err.contains("cannot read"), "{err}");
        let err = ModelConfig::load("regnety-999gf").unwrap_err().to_string();
        assert!(err.contains("unknown model `regnety-999gf`") && err.contains("regnety-10b"), "{err}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn json_paths_from_positions() {
        let t = "{\n  \"a\": 1,\n  \"b\": [ {\"c\": 2}, {\"d\": x} ]\n}";
        let (line, col) = (3, t.lines().nth(2).unwrap().find('x').unwrap() + 1);
        assert_eq!(json_path_at(t, line, col).as_deref(), Some("b[1].d"));
        assert_eq!(json_path_at(t, 1, 1), None);
    }
}
