//! The crate graph of docs/architecture.md, read from `cargo metadata`:
//! only the executor links libtorch (`tch`); the executor and the planner
//! share `runspec` and neither depends on the other; the contract and the
//! cost models know neither.

use serde_json::Value;
use std::collections::{BTreeMap, BTreeSet};
use std::process::Command;

/// (crate, crate it must not reach through normal dependencies).
const FORBIDDEN: [(&str, &str); 7] = [
    ("executor", "planner"),
    ("planner", "executor"),
    ("planner", "tch"),
    ("cost-models", "tch"),
    ("runspec", "tch"),
    ("runspec", "planner"),
    ("runspec", "executor"),
];

/// Package name -> names of its normal (not dev, not build) dependencies.
type Graph = BTreeMap<String, BTreeSet<String>>;

/// The resolved graph of `cargo metadata`'s JSON.
fn graph_of(metadata: &Value) -> Graph {
    let name_of: BTreeMap<&str, &str> =
        metadata["packages"].as_array().unwrap().iter().map(|p| (p["id"].as_str().unwrap(), p["name"].as_str().unwrap())).collect();
    let mut g = Graph::new();
    for node in metadata["resolve"]["nodes"].as_array().unwrap() {
        let from = name_of[node["id"].as_str().unwrap()].to_string();
        let deps = g.entry(from).or_default();
        for d in node["deps"].as_array().unwrap() {
            let normal = d["dep_kinds"].as_array().unwrap().iter().any(|k| k["kind"].is_null());
            if normal {
                deps.insert(name_of[d["pkg"].as_str().unwrap()].to_string());
            }
        }
    }
    g
}

/// Every crate `from` reaches through normal dependencies.
fn reachable(g: &Graph, from: &str) -> BTreeSet<String> {
    let mut seen = BTreeSet::new();
    let mut todo = vec![from.to_string()];
    while let Some(c) = todo.pop() {
        for d in g.get(&c).into_iter().flatten() {
            if seen.insert(d.clone()) {
                todo.push(d.clone());
            }
        }
    }
    seen
}

/// The rules `g` breaks, as `a depends on b`.
fn broken(g: &Graph) -> Vec<String> {
    FORBIDDEN.iter().filter(|(a, b)| reachable(g, a).contains(*b)).map(|(a, b)| format!("{a} depends on {b}")).collect()
}

/// This machine's target triple (`rustc -vV`): the graph is read for it,
/// so that other platforms' crates need not be downloaded.
fn host_triple() -> String {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".into());
    let out = Command::new(rustc).arg("-vV").output().expect("rustc runs");
    let text = String::from_utf8(out.stdout).unwrap();
    text.lines().find_map(|l| l.strip_prefix("host: ")).expect("rustc -vV names the host").to_string()
}

#[test]
fn the_crate_graph_keeps_libtorch_in_the_executor_and_the_planner_apart_from_it() {
    let out = Command::new(env!("CARGO"))
        .args(["metadata", "--format-version", "1", "--offline", "--filter-platform", &host_triple()])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("cargo metadata runs");
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let metadata: Value = serde_json::from_slice(&out.stdout).unwrap();
    let g = graph_of(&metadata);
    for krate in ["executor", "planner", "runspec", "cost-models"] {
        assert!(g.contains_key(krate), "{krate} is a workspace crate");
    }
    assert!(reachable(&g, "executor").contains("tch") && reachable(&g, "planner").contains("runspec"), "the graph is read");
    assert_eq!(broken(&g), Vec::<String>::new(), "docs/architecture.md forbids these");
}

/// A transitive dependency counts: planner -> x -> tch breaks the rule.
#[test]
fn a_dependency_through_another_crate_is_caught() {
    let mut g = Graph::new();
    g.entry("planner".into()).or_default().insert("x".into());
    g.entry("x".into()).or_default().insert("tch".into());
    assert_eq!(broken(&g), vec!["planner depends on tch".to_string()]);
}
