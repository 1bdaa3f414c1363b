//! What the CLI tests share: running this build's `seerscale`, reading its
//! output, and a temporary folder per test. Each test binary uses a part.
#![allow(dead_code)]

use serde_json::Value;
use std::path::PathBuf;
use std::process::{Command, Output};

/// This build's `seerscale` with `args`, one intra-op thread per process
/// (the tests share two cores with the ranks they start).
pub fn seerscale(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seerscale")).args(args).env("OMP_NUM_THREADS", "1").output().expect("cannot start seerscale")
}

pub fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// Runs a command that must succeed.
pub fn ok(args: &[&str]) -> Output {
    let out = seerscale(args);
    assert!(out.status.success(), "seerscale {}:\n{}\n{}", args.join(" "), text(&out.stdout), text(&out.stderr));
    out
}

/// Runs a command that must succeed and print JSON on stdout.
pub fn ok_json(args: &[&str]) -> Value {
    let out = seerscale(args);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "seerscale {args:?} failed:\n{stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("seerscale {args:?}: stdout is not JSON ({e}):\n{stdout}"))
}

/// Runs a command that must fail with exit code 1 and exactly one line on
/// stderr, `error: ...`; returns that line without the prefix.
pub fn one_line_error(args: &[&str]) -> String {
    let out = seerscale(args);
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "seerscale {args:?} panicked:\n{stderr}");
    assert_eq!(out.status.code(), Some(1), "seerscale {args:?} should fail with exit code 1; stderr:\n{stderr}");
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "seerscale {args:?}: expected a one-line error, got:\n{stderr}");
    lines[0].strip_prefix("error: ").unwrap_or_else(|| panic!("no `error: ` prefix: {stderr}")).to_string()
}

/// A fresh folder for one test, removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    /// `name` is unique within a test binary; the binary's name and the
    /// process keep it apart from others running at the same time.
    pub fn new(name: &str) -> TempDir {
        let binary = std::env::current_exe().ok().and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned())).unwrap_or_default();
        let d = std::env::temp_dir().join(format!("seerscale-{binary}-{}-{name}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        TempDir(d)
    }
    pub fn path(&self, rel: &str) -> PathBuf {
        self.0.join(rel)
    }
    /// The path of `rel` as a string (for arguments).
    pub fn s(&self, rel: &str) -> String {
        self.path(rel).display().to_string()
    }
    /// Writes `contents` to `file` and returns its path as a string.
    pub fn write(&self, file: &str, contents: &str) -> String {
        let p = self.path(file);
        std::fs::write(&p, contents).unwrap();
        p.to_str().unwrap().to_string()
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
