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
    #[error("{origin}: cannot read file: {source}")]
    Io { origin: String, source: std::io::Error },
    #[error("{origin}:{line}:{column}: {message}")]
    Parse { origin: String, line: usize, column: usize, message: String },
    #[error("{origin}: field `{field}`: {reason}")]
    Invalid { origin: String, field: String, reason: String },
    #[error("unknown {kind} `{name}`: not a file and not a built-in (built-ins: {builtins})")]
    Unknown { kind: &'static str, name: String, builtins: String },
}

impl ConfigError {
    pub fn invalid(origin: &str, field: impl Into<String>, reason: impl Into<String>) -> Self {
        ConfigError::Invalid { origin: origin.to_string(), field: field.into(), reason: reason.into() }
    }
}

/// Parses TOML text; errors carry `origin` (a path or `builtin:NAME`), the
/// line and column, and serde's message (which names the field).
pub fn parse_toml<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    toml::from_str(text).map_err(|e| {
        let (line, column) = match e.span() {
            Some(span) => line_col(text, span.start),
            None => (1, 1),
        };
        ConfigError::Parse {
            origin: origin.to_string(),
            line,
            column,
            message: e.message().replace('\n', " "),
        }
    })
}

/// Parses JSON text with the same error shape as [`parse_toml`].
pub fn parse_json<T: DeserializeOwned>(text: &str, origin: &str) -> Result<T, ConfigError> {
    serde_json::from_str(text).map_err(|e| ConfigError::Parse {
        origin: origin.to_string(),
        line: e.line(),
        column: e.column(),
        message: e.to_string(),
    })
}

/// 1-based line and column of a byte offset.
pub fn line_col(text: &str, offset: usize) -> (usize, usize) {
    let before = &text[..offset.min(text.len())];
    let line = before.matches('\n').count() + 1;
    let column = before.len() - before.rfind('\n').map_or(0, |i| i + 1) + 1;
    (line, column)
}

/// Reads `name_or_path` as a file if it looks like a path or exists,
/// otherwise as the name of a built-in from `builtins` (name, text).
pub fn resolve_text(
    kind: &'static str,
    name_or_path: &str,
    builtins: &[(&'static str, &'static str)],
) -> Result<(String, String), ConfigError> {
    let looks_like_path = name_or_path.contains('/') || name_or_path.ends_with(".toml") || name_or_path.ends_with(".json");
    if looks_like_path || Path::new(name_or_path).is_file() {
        let text = std::fs::read_to_string(name_or_path)
            .map_err(|source| ConfigError::Io { origin: name_or_path.to_string(), source })?;
        return Ok((name_or_path.to_string(), text));
    }
    match builtins.iter().find(|(n, _)| *n == name_or_path) {
        Some((n, text)) => Ok((format!("builtin:{n}"), text.to_string())),
        None => Err(ConfigError::Unknown {
            kind,
            name: name_or_path.to_string(),
            builtins: builtins.iter().map(|(n, _)| *n).collect::<Vec<_>>().join(", "),
        }),
    }
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
    "regnety-10b",
);

impl ModelConfig {
    /// Loads a built-in by name or a user's TOML file by path, and validates it.
    pub fn load(name_or_path: &str) -> Result<ModelConfig, ConfigError> {
        let (origin, text) = resolve_text("model", name_or_path, BUILTIN_MODELS)?;
        let cfg: ModelConfig = parse_toml(&text, &origin)?;
        cfg.validate(&origin)?;
        Ok(cfg)
    }

    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        self.regnet
            .validate()
            .map_err(|e| ConfigError::invalid(origin, format!("regnet.{}", e.field), e.reason))?;
        if self.head.mlp_dims.iter().any(|&d| d == 0) {
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
