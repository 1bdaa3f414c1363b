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
    /// BatchNorm after every hidden Linear of the MLP (VISSL's swav_head
    /// `use_bn`: on in SwAV's ImageNet configs, off in both SEER runs).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub use_bn: bool,
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
    serde_path_to_error::deserialize(toml::Deserializer::new(text)).map_err(|e| {
        let field = field_of(e.path(), e.inner().message());
        let e = e.into_inner();
        let message = e.message().trim().replace('\n', " ");
        let (line, column) = e.span().map_or((1, 1), |span| line_col(text, span.start));
        ConfigError::Parse { origin: origin.to_string(), line, column, field, message }
    })
}

/// The dotted path (`units[3].members`) serde was at when it failed, as
/// `serde_path_to_error` tracks it; a missing field is named itself (the
/// path is then its parent's).
fn field_of(path: &serde_path_to_error::Path, message: &str) -> Option<String> {
    let at = path.to_string();
    let at = (at != "." && !at.is_empty()).then_some(at);
    let quoted = ["missing field `", "unknown field `"].iter().find_map(|p| {
        let rest = &message[message.find(p)? + p.len()..];
        Some(rest[..rest.find('`')?].to_string())
    });
    match (at, quoted) {
        (Some(parent), Some(name)) if message.contains("missing field") => Some(format!("{parent}.{name}")),
        (None, Some(name)) if message.contains("missing field") => Some(name),
        (Some(p), _) => Some(p),
        (None, name) => name,
    }
}

/// Parses JSON text with the same error shape as [`parse_toml`]: the field
/// is the JSON path (`units[3].members`) of the value the error is in.
pub fn parse_json<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    let mut de = serde_json::Deserializer::from_str(text);
    let error = |e: serde_json::Error, field: Option<String>| {
        let (line, column) = (e.line(), e.column());
        // serde_json appends the position, which the prefix already gives.
        let full = e.to_string();
        let message = full.strip_suffix(&format!(" at line {line} column {column}")).unwrap_or(&full).to_string();
        ConfigError::Parse { origin: origin.to_string(), line, column, field, message }
    };
    let value = serde_path_to_error::deserialize(&mut de).map_err(|e| {
        let field = field_of(e.path(), &e.inner().to_string());
        error(e.into_inner(), field)
    })?;
    de.end().map_err(|e| error(e, None))?;
    Ok(value)
}

/// 1-based line and column of a byte offset.
pub(crate) fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// 1-based line of `a.b.c = ...` in a hand-written TOML file: the key `c`
/// inside the `[a.b]` section (or a dotted key). `None` if not found.
pub(crate) fn locate_key(text: &str, dotted: &str) -> Option<usize> {
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

/// Whether a name given for a config is a file path rather than a built-in:
/// it has a path separator, a `.toml` / `.json` ending, or is an existing file.
pub(crate) fn looks_like_path(name_or_path: &str) -> bool {
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
pub(crate) fn resolve_text(kind: &'static str, name_or_path: &str, builtins: &[(&'static str, &'static str)]) -> Result<(String, String), ConfigError> {
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
}
