//! `seerscale comm` (the planner's collectives as nccl-tests prints them)
//! and `seerscale calibrate --nccl-tests` (a cluster's nccl-tests logs
//! fitted into a profile that `comm` and `plan` then use).

use cost_models::collectives::Collective;
use cost_models::nccl_tests::synthetic_log;
use serde_json::Value;
use std::path::PathBuf;

mod common;

use common::*;

fn temp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("seerscale-comm-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn rows(v: &Value, op: &str) -> Vec<Value> {
    v["rows"].as_array().unwrap().iter().filter(|r| r["op"] == op).cloned().collect()
}

/// The catalog's 8 A100s: bus bandwidth rises with the message and levels
/// off near the NVLink bus bandwidth; 4 nodes of H100s go hierarchical for
/// large messages; the table has nccl-tests' columns.
#[test]
fn comm_prints_the_planners_collectives_as_nccl_tests_does() {
    let v: Value = serde_json::from_slice(&ok(&["comm", "--gpu", "a100-40gb", "--gpus", "8", "--json"]).stdout).unwrap();
    let ar = rows(&v, "all_reduce");
    assert_eq!(ar.len(), 31, "8 B to 8 GiB, doubling");
    assert_eq!(ar[0]["bytes"], 8);
    let bus: Vec<f64> = ar.iter().map(|r| r["busbw_gb_s"].as_f64().unwrap()).collect();
    assert!(bus.windows(2).all(|w| w[1] >= w[0]), "{bus:?}");
    // busbw = algbw x 2(n-1)/n, as nccl-tests defines it.
    let last = ar.last().unwrap();
    assert!((last["busbw_gb_s"].as_f64().unwrap() / last["algbw_gb_s"].as_f64().unwrap() - 1.75).abs() < 1e-9);
    assert!(bus[30] > 150.0 && bus[30] < 300.0, "{}", bus[30]);
    assert_eq!(rows(&v, "all_gather").len(), 31);
    let h: Value = serde_json::from_slice(&ok(&["comm", "--gpu", "h100-80gb", "--gpus", "32", "--op", "all-gather", "--json"]).stdout).unwrap();
    assert_eq!(h["nodes"], 4);
    assert!(rows(&h, "all_gather").iter().any(|r| r["algorithm"] == "hierarchical"), "{h}");
    let table = text(&ok(&["comm", "--gpu", "a100-40gb", "--gpus", "8", "--op", "all-reduce"]).stdout);
    assert!(table.contains("# all_reduce_perf predicted: 8 GPUs") && table.contains("algbw") && table.contains("busbw"), "{table}");
    let bad = seerscale(&["comm", "--gpu", "a100-40gb", "--gpus", "1"]);
    assert!(!bad.status.success() && text(&bad.stderr).contains("at least 2"));
}

/// Logs in nccl-tests' layout, written from known alpha and bus bandwidth
/// inside a node and across 4 nodes, fit back to them; the profile they
/// make is what `comm` then predicts with, and `plan` takes it.
#[test]
fn calibrate_fits_nccl_tests_logs_into_a_profile_comm_and_plan_use() {
    let dir = temp("fit");
    let intra = dir.join("all_reduce_perf-1node.log");
    std::fs::write(&intra, synthetic_log(Collective::AllReduce, &["node1"], 8, 5.0, 210.0)).unwrap();
    let inter = dir.join("all_reduce_perf-4nodes.log");
    std::fs::write(&inter, synthetic_log(Collective::AllReduce, &["n1", "n2", "n3", "n4"], 8, 14.0, 85.0)).unwrap();
    let profile = dir.join("a100-nccl.toml");
    let out = ok(&["calibrate", "--base", "a100-40gb", "--nccl-tests", intra.to_str().unwrap(), inter.to_str().unwrap(), "--out", profile.to_str().unwrap()]);
    let stdout = text(&out.stdout);
    assert!(stdout.contains("inside a node: alpha 5.00 us, bus bandwidth 210.0 GB/s"), "{stdout}");
    assert!(stdout.contains("across nodes: alpha 14.00 us, bus bandwidth 85.0 GB/s"), "{stdout}");
    let v: Value = serde_json::from_slice(&ok(&["comm", "--gpu", profile.to_str().unwrap(), "--gpus", "8", "--op", "all-reduce", "--json"]).stdout).unwrap();
    let big = rows(&v, "all_reduce").last().unwrap()["busbw_gb_s"].as_f64().unwrap();
    assert!((big - 210.0).abs() < 1.0, "the fitted bus bandwidth at 8 GiB: {big}");
    assert!(v["source"].as_str().unwrap().contains("measured collectives"));
    ok(&["plan", "--recipe", "seer-10b", "--gpu", profile.to_str().unwrap()]);
    let garbage = dir.join("notes.txt");
    std::fs::write(&garbage, "nothing here").unwrap();
    let bad = seerscale(&["calibrate", "--base", "a100-40gb", "--nccl-tests", garbage.to_str().unwrap(), "--out", profile.to_str().unwrap()]);
    let e = text(&bad.stderr);
    assert!(!bad.status.success() && e.contains("notes.txt") && e.contains("no collective named"), "{e}");
    let _ = std::fs::remove_dir_all(&dir);
}
