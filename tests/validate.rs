//! Memory drift: executes small, fast plan variants with the real executor
//! (`seerscale validate`, real ranks) and fails if any measured peak differs
//! from the planner's prediction by more than the 3 % target. A change to the
//! executor's allocations (or to the memory model) that breaks the match
//! shows up here.

use std::path::PathBuf;
use std::process::Command;

/// Small variants that together cover 1 rank / several ranks, FSDP, hybrid
/// and DDP sharding, per-block and per-stage units, reshard on and off, no /
/// some / all checkpointing and both precisions, at a few seconds each.
const VARIANTS: &str = "w2-block-reshard-ckpt0-fp32-b8-r32,w2-stage-reshard-ckpt0-fp32-b8-r32,w2-block-reshard-ckptall-fp32-b8-r32,\
w4-stage-keep-ckptsome-bf16-b8-r48,w4h2-block-reshard-ckpt0-fp32-b8-r32,w2ddp-whole-keep-ckptall-bf16-b8-r32,\
w2-block-reshard-ckptsome-fp32-b8-r32-bygroup,w4h2-block-keep-ckptall-fp32-b8-r32-bygroup";
const TOLERANCE: f64 = 0.03;

fn temp_dir(tag: &str) -> PathBuf {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let d = std::env::temp_dir().join(format!("seerscale-{tag}-{}-{nanos}", std::process::id()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Realistic sizes: regnety-400mf at SEER's crops (2x160 + 4x96), 4 images
/// per rank, 2 ranks, per-block units, with and without checkpointing every
/// block, on the built-in (uncalibrated) CPU profile.
const REALISTIC: &str = "w2-block-reshard-ckpt0-fp32-b4-r160,w2-block-reshard-ckptall-fp32-b4-r160,w2-block-reshard-ckptall-fp32-b4-r160-bygroup";

/// Runs `validate` on `variants` and returns the rows whose peak is off by
/// more than the tolerance (and the report's rows).
fn drifted(recipe: &str, variants: &str, args: &[&str]) -> (Vec<String>, Vec<serde_json::Value>, PathBuf, String) {
    let dir = temp_dir("validate");
    let out = dir.join("report");
    let o = Command::new(env!("CARGO_BIN_EXE_seerscale"))
        .args(["validate", "--recipe", recipe, "--variants", variants, "--memory-tolerance", &TOLERANCE.to_string()])
        .args(args)
        .arg("--out")
        .arg(&out)
        .arg("--work-dir")
        .arg(dir.join("work"))
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&o.stdout);
    let stderr = String::from_utf8_lossy(&o.stderr).to_string();
    assert!(o.status.success(), "validate failed:\n{stdout}\n{stderr}");
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap()).unwrap();
    let rows = report["rows"].as_array().unwrap().clone();
    assert_eq!(rows.len(), variants.split(',').count());
    let mut bad = Vec::new();
    for r in &rows {
        let name = r["variant"].as_str().unwrap();
        let predicted = r["predicted_peak_bytes"].as_f64().unwrap();
        let Some(measured) = r["measured"]["peak_memory_bytes"].as_f64() else {
            bad.push(format!("{name}: not measured ({})", r["note"]));
            continue;
        };
        let err = (measured - predicted) / predicted;
        if err.abs() > TOLERANCE {
            bad.push(format!("{name}: measured {measured} B, predicted {predicted} B ({:+.2}%)", err * 100.0));
        }
    }
    (bad, rows, dir, stderr)
}

#[test]
fn realistic_sizes_match_the_model_within_3_percent() {
    let (bad, _, dir, stderr) = drifted("cpu-400mf", REALISTIC, &["--steps", "3", "--warmup", "1", "--repeats", "1"]);
    assert!(bad.is_empty(), "peak memory drifted from the model by more than {}%:\n{}\n\n{stderr}", TOLERANCE * 100.0, bad.join("\n"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn measured_peak_memory_matches_the_model_within_3_percent() {
    let (bad, rows, dir, stderr) = drifted("tiny-cpu", VARIANTS, &["--steps", "4", "--warmup", "2", "--repeats", "2"]);
    for r in &rows {
        let name = r["variant"].as_str().unwrap();
        if r["measured"]["peak_memory_bytes"].as_f64().is_none() {
            continue;
        }
        assert!(r["measured"]["steps"].as_u64().unwrap() >= 2, "{name}: too few steady-state steps");
        // Both runs measured, each in its own directory; the step time is their median.
        let runs: Vec<f64> = r["measured"]["run_step_times_s"].as_array().unwrap().iter().map(|t| t.as_f64().unwrap()).collect();
        assert_eq!(runs.len(), 2, "{name}: {runs:?}");
        assert!((r["measured"]["step_time_s"].as_f64().unwrap() - 0.5 * (runs[0] + runs[1])).abs() < 1e-12, "{name}");
        for k in 1..=2 {
            assert!(dir.join("work").join(name).join(format!("run-{k}")).join("metrics.rank0.jsonl").exists(), "{name} run {k}");
        }
    }
    assert!(bad.is_empty(), "peak memory drifted from the model by more than {}%:\n{}\n\n{stderr}", TOLERANCE * 100.0, bad.join("\n"));
    // The report and plot were written next to the JSON.
    let out = dir.join("report");
    let md = std::fs::read_to_string(out.with_extension("md")).unwrap();
    assert!(md.contains("seerscale validate --recipe tiny-cpu") && md.contains("w4-stage-keep-ckptsome-bf16-b8-r48"));
    assert!(md.contains("ran 2 times, in interleaved rounds") && md.contains("step runs (ms)"), "{md}");
    assert!(std::fs::read_to_string(out.with_extension("svg")).unwrap().starts_with("<svg"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_variant_names_are_one_line_errors() {
    let o = Command::new(env!("CARGO_BIN_EXE_seerscale"))
        .args(["validate", "--recipe", "tiny-cpu", "--variants", "w2-blocky-reshard-ckpt0-fp32-b8-r32"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("blocky") && e.contains("granularity") && !e.contains("panicked"), "{e}");
    let o = Command::new(env!("CARGO_BIN_EXE_seerscale")).args(["validate", "--recipe", "tiny-cpu", "--repeats", "0"]).output().unwrap();
    assert_eq!(o.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&o.stderr).contains("--repeats must be at least 1"));
}

/// `--recalibrate`: a calibration right before the round, and the round's
/// prediction made from that profile.
#[test]
fn recalibrate_predicts_each_round_from_its_own_profile() {
    const VARIANT: &str = "w2-block-reshard-ckpt0-fp32-b8-r32";
    let dir = temp_dir("recalibrate");
    let out = dir.join("report");
    let work = dir.join("work");
    let o = Command::new(env!("CARGO_BIN_EXE_seerscale"))
        .args(["validate", "--recipe", "tiny-cpu", "--variants", VARIANT, "--steps", "4", "--warmup", "2", "--repeats", "1", "--recalibrate"])
        .arg("--out")
        .arg(&out)
        .arg("--work-dir")
        .arg(&work)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&o.stderr);
    assert!(o.status.success(), "validate failed:\n{stderr}");
    let profile = work.join("calibration-round-1.toml");
    let hw = cost_models::hardware::load_profile(profile.to_str().unwrap()).unwrap();
    assert!(!hw.measured.block_times.is_empty(), "the round's calibration timed the variant's blocks");
    let recipe = runspec::recipe::Recipe::load("tiny-cpu").unwrap();
    let (plan, _) = planner::validation::plan_variant(&recipe, &hw, &planner::validation::Variant::parse(VARIANT).unwrap()).unwrap();
    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(out.with_extension("json")).unwrap()).unwrap();
    let row = &report["rows"][0];
    assert_eq!(row["predicted_step_time_s"].as_f64().unwrap(), plan.predicted.step_time_s, "{row}");
    assert!(row["measured"]["step_time_s"].as_f64().is_some(), "{row}");
    assert!(report["command"].as_str().unwrap().contains("--recalibrate"));
    assert!(report["notes"].as_array().unwrap().iter().any(|n| n.as_str().unwrap().starts_with("Recalibrated")));
    let _ = std::fs::remove_dir_all(&dir);
}
