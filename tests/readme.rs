//! The README is user documentation: its example outputs are what the
//! commands print, and it carries no dated history.
//!
//! Every fenced block after a `<!-- output: CMD -->` line must equal the
//! standard output of CMD (a shell command line in which `seerscale` is this
//! build's binary, run from the repository root). `SEERSCALE_UPDATE_README=1
//! cargo test --test readme` rewrites those blocks instead of comparing.

use std::path::Path;
use std::process::Command;

const MARK: &str = "<!-- output: ";

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs `cmd` with `seerscale` bound to this build's binary.
fn output_of(cmd: &str) -> String {
    std::fs::create_dir_all(root().join("target/readme")).unwrap();
    let script = format!("set -eo pipefail\nseerscale() {{ \"{}\" \"$@\"; }}\n{cmd}\n", env!("CARGO_BIN_EXE_seerscale"));
    let out = Command::new("bash").arg("-c").arg(&script).current_dir(root()).output().unwrap();
    assert!(out.status.success(), "`{cmd}` failed: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8(out.stdout).unwrap()
}

fn normalise(text: &str) -> String {
    let lines: Vec<&str> = text.lines().map(str::trim_end).collect();
    lines.join("\n").trim_matches('\n').to_string()
}

#[test]
fn example_outputs_are_what_the_commands_print() {
    let path = root().join("README.md");
    let text = std::fs::read_to_string(&path).unwrap();
    let lines: Vec<&str> = text.lines().collect();
    let update = std::env::var_os("SEERSCALE_UPDATE_README").is_some();
    let mut out: Vec<String> = Vec::new();
    let mut mismatches = Vec::new();
    let mut blocks = 0;
    let mut i = 0;
    while i < lines.len() {
        out.push(lines[i].to_string());
        let Some(cmd) = lines[i].trim().strip_prefix(MARK).and_then(|c| c.strip_suffix("-->")) else {
            i += 1;
            continue;
        };
        let cmd = cmd.trim();
        assert!(lines.get(i + 1).is_some_and(|l| l.starts_with("```")), "README line {}: `{MARK}` must be followed by a fenced block", i + 1);
        out.push(lines[i + 1].to_string());
        let end = (i + 2..lines.len()).find(|&j| lines[j].starts_with("```")).unwrap_or_else(|| panic!("README line {}: unclosed block", i + 2));
        let shown = lines[i + 2..end].join("\n");
        let actual = output_of(cmd);
        blocks += 1;
        if update {
            out.extend(normalise(&actual).lines().map(str::to_string));
        } else {
            out.extend(lines[i + 2..end].iter().map(|l| l.to_string()));
            if normalise(&shown) != normalise(&actual) {
                mismatches.push(format!("`{cmd}`:\n--- README\n{}\n--- printed\n{}", normalise(&shown), normalise(&actual)));
            }
        }
        out.push(lines[end].to_string());
        i = end + 1;
    }
    assert!(blocks >= 3, "the README shows {blocks} command outputs");
    if update {
        std::fs::write(&path, out.join("\n") + "\n").unwrap();
    }
    assert!(mismatches.is_empty(), "README outputs differ from the commands' (rerun with SEERSCALE_UPDATE_README=1):\n{}", mismatches.join("\n\n"));
}

#[test]
fn the_readme_is_documentation_not_a_diary() {
    let text = std::fs::read_to_string(root().join("README.md")).unwrap();
    let dated: Vec<&str> = text
        .lines()
        .filter(|l| {
            let b = l.as_bytes();
            (0..b.len().saturating_sub(9)).any(|k| {
                b[k..k + 2] == *b"20"
                    && b[k + 2..k + 4].iter().all(u8::is_ascii_digit)
                    && b[k + 4] == b'-'
                    && b[k + 5..k + 7].iter().all(u8::is_ascii_digit)
                    && b[k + 7] == b'-'
            })
        })
        .collect();
    assert!(dated.is_empty(), "dated lines in the README: {dated:?}");
    for word in ["session", "Until ", "no longer", "used to be"] {
        assert!(!text.contains(word), "the README tells history (`{word}`)");
    }
    let n = text.lines().count();
    assert!(n <= 380, "the README has {n} lines; details belong in docs/");
}
