//! The `seerscale` binary end to end: `model`, `plan`, `dry-run` and `sweep`
//! on built-ins, a short `train --sync-bn` run, and the one-line errors bad
//! input must give (naming the file, line and field; never a panic, never
//! the OS reason twice).

use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

mod common;

use common::*;

fn repo_file(rel: &str) -> String {
    std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join(rel)).unwrap()
}

/// `text` with the first line starting with `prefix` replaced by `with`;
/// returns the new text and that line's 1-based number.
fn replace_line(text: &str, prefix: &str, with: &str) -> (String, usize) {
    let n = text.lines().position(|l| l.starts_with(prefix)).unwrap_or_else(|| panic!("no line starting with `{prefix}`"));
    let out: Vec<&str> = text.lines().enumerate().map(|(i, l)| if i == n { with } else { l }).collect();
    (out.join("\n") + "\n", n + 1)
}

/// Parses the `FILE:LINE:COL:` at the start of an error message.
fn file_line_col<'a>(msg: &'a str, file: &str) -> (usize, usize, &'a str) {
    let rest = msg.strip_prefix(file).and_then(|r| r.strip_prefix(':')).unwrap_or_else(|| panic!("`{msg}` does not start with `{file}:`"));
    let mut parts = rest.splitn(3, ':');
    let line = parts.next().and_then(|x| x.parse().ok()).unwrap_or_else(|| panic!("no line number in `{msg}`"));
    let col = parts.next().and_then(|x| x.parse().ok()).unwrap_or_else(|| panic!("no column number in `{msg}`"));
    (line, col, parts.next().unwrap_or("").trim_start())
}

// ------------------------------------------------------------------ model

#[test]
fn model_regnety_400mf_json_matches_torchvision() {
    let m = ok_json(&["model", "regnety-400mf", "--json"]);
    assert_eq!(m["model"], "regnety-400mf");
    assert_eq!(m["trunk_params"].as_u64(), Some(3_903_144));
    // torchvision: 0.40 GFLOPS (multiply-adds) with the 440 x 1000 fc included.
    let macs = m["trunk_fwd_flops"].as_f64().unwrap() / 2.0;
    let rel = (macs + 440_000.0) / 0.40e9 - 1.0;
    assert!(rel.abs() < 0.01, "trunk MACs {macs}, {:.2} % off", 100.0 * rel);
    let stages = m["stages"].as_array().expect("stages list");
    assert_eq!(stages.len(), 4);
    // regnety-400mf: depths 1, 3, 6, 6; widths 48, 104, 208, 440.
    let depths: Vec<u64> = stages.iter().map(|s| s["depth"].as_u64().unwrap()).collect();
    let widths: Vec<u64> = stages.iter().map(|s| s["width"].as_u64().unwrap()).collect();
    assert_eq!(depths, [1, 3, 6, 6]);
    assert_eq!(widths, [48, 104, 208, 440]);
    // The stem plus the stages are the whole trunk.
    let stem = m["blocks"].as_array().unwrap().iter().find(|b| b["name"] == "stem").expect("stem block")["params"].as_u64().unwrap();
    let stage_params: u64 = stages.iter().map(|s| s["params"].as_u64().unwrap()).sum();
    assert_eq!(stem + stage_params, 3_903_144);
}

#[test]
fn model_regnety_16gf_json_matches_torchvision() {
    let m = ok_json(&["model", "regnety-16gf", "--json"]);
    assert_eq!(m["trunk_params"].as_u64(), Some(80_565_140));
    let macs = m["trunk_fwd_flops"].as_f64().unwrap() / 2.0;
    let rel = (macs + 3_024_000.0) / 15.91e9 - 1.0;
    assert!(rel.abs() < 0.01, "trunk MACs {macs}, {:.2} % off", 100.0 * rel);
}

#[test]
fn model_config_errors_name_file_line_and_field() {
    let dir = TempDir::new("model-errors");
    let good = repo_file("configs/models/regnety-400mf.toml");

    let (bad, line) = replace_line(&good, "w_0 =", "w_0 = 48\nwidht = 3");
    let f = dir.write("unknown-field.toml", &bad);
    let e = one_line_error(&["model", &f]);
    let (l, _, rest) = file_line_col(&e, &f);
    assert_eq!(l, line + 1, "{e}");
    assert!(rest.contains("field `regnet.widht`"), "{e}");

    let (bad, line) = replace_line(&good, "w_0 =", "w_0 = -8");
    let f = dir.write("negative-width.toml", &bad);
    let e = one_line_error(&["model", &f]);
    assert!(e.starts_with(&format!("{f}:{line}: field `regnet.w_0`")), "{e}");

    for w_m in ["1.0", "0.5"] {
        let (bad, line) = replace_line(&good, "w_m =", &format!("w_m = {w_m}"));
        let f = dir.write("small-multiplier.toml", &bad);
        let e = one_line_error(&["model", &f]);
        assert!(e.starts_with(&format!("{f}:{line}: field `regnet.w_m`")), "{e}");
    }

    let (bad, line) = replace_line(&good, "w_m =", "w_m = \"big\"");
    let f = dir.write("wrong-type.toml", &bad);
    let e = one_line_error(&["model", &f]);
    let (l, _, rest) = file_line_col(&e, &f);
    assert_eq!(l, line, "{e}");
    assert!(rest.starts_with("field `regnet.w_m`: invalid type"), "{e}");
}

#[test]
fn missing_files_print_the_os_reason_once() {
    let dir = TempDir::new("missing");
    let f = dir.path("nope.toml").to_str().unwrap().to_string();
    let e = one_line_error(&["model", &f]);
    assert!(e.starts_with(&format!("{f}: cannot read")), "{e}");
    assert_eq!(e.matches("os error").count(), 1, "{e}");

    let e = one_line_error(&["plan", "--recipe", "tiny-cpu", "--gpu", &f]);
    assert!(e.starts_with(&format!("{f}: cannot read")), "{e}");
    assert_eq!(e.matches("os error").count(), 1, "{e}");

    let p = dir.path("nope.json").to_str().unwrap().to_string();
    let e = one_line_error(&["dry-run", &p]);
    assert!(e.starts_with(&format!("{p}: cannot read")), "{e}");
    assert_eq!(e.matches("os error").count(), 1, "{e}");

    // A library error that names its cause and also chains it.
    let plan = dir.path("tiny.plan.json").to_str().unwrap().to_string();
    let out = seerscale(&["plan", "--recipe", "tiny-cpu", "--gpus", "1", "--out", &plan]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let data = dir.path("no-images").to_str().unwrap().to_string();
    let e = one_line_error(&["train", "--plan", &plan, "--data", &data, "--steps", "1", "--out", dir.path("run").to_str().unwrap()]);
    assert!(e.contains("cannot read image folder") && e.contains(&data), "{e}");
    assert_eq!(e.matches("os error").count(), 1, "{e}");
}

#[test]
fn unknown_model_lists_the_builtins() {
    let e = one_line_error(&["model", "regnety-999gf"]);
    assert!(e.contains("unknown model `regnety-999gf`"), "{e}");
    assert!(e.contains("regnety-400mf") && e.contains("regnety-10b"), "{e}");
}

/// A bad `--gpu` is refused before the model's table is printed.
#[test]
fn unknown_gpu_is_refused_before_any_output() {
    let e = one_line_error(&["model", "regnety-10b", "--gpu", "a100"]);
    assert!(e.contains("--gpu a100") && e.contains("a100-40gb"), "{e}");
    assert!(seerscale(&["model", "regnety-10b", "--gpu", "a100"]).stdout.is_empty());
}

#[test]
fn bad_dtype_is_a_usage_error_naming_the_value() {
    let out = seerscale(&["model", "regnety-400mf", "--dtype", "fp8"]);
    let stderr = text(&out.stderr);
    assert!(!stderr.contains("panicked"), "{stderr}");
    // clap's usage errors exit with 2 and add a `--help` hint line.
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    let errors: Vec<&str> = stderr.lines().filter(|l| l.starts_with("error:")).collect();
    assert_eq!(errors.len(), 1, "{stderr}");
    assert!(errors[0].contains("--dtype") && errors[0].contains("fp8") && errors[0].contains("bf16"), "{stderr}");
    assert!(out.stdout.is_empty());
}

// ------------------------------------------------------- plan and dry-run

#[test]
fn plan_tiny_cpu_writes_a_plan_dry_run_agrees_with() {
    let dir = TempDir::new("plan-tiny");
    let out = dir.path("plan.json");
    let out_s = out.to_str().unwrap();
    let printed = ok_json(&["plan", "--recipe", "tiny-cpu", "--out", out_s, "--json"]);
    let written: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(printed, written, "--json prints the plan file it writes");
    let p = &written["predicted"];
    let peak = p["peak_memory_bytes"].as_u64().expect("predicted.peak_memory_bytes");
    assert!(peak > 0);
    assert!(p["step_time_s"].as_f64().expect("predicted.step_time_s") > 0.0);
    assert_eq!(p["fits"].as_bool(), Some(true));
    assert_eq!(written["schema_version"].as_u64(), Some(1));
    assert!(!dir.path("plan.json.tmp").exists(), "the atomic write leaves no temp file");

    let dr = ok_json(&["dry-run", out_s, "--json"]);
    assert_eq!(dr["peak_memory_bytes"].as_u64(), Some(peak));
    assert_eq!(dr["predicted_peak_memory_bytes"].as_u64(), Some(peak));
    assert_eq!(dr["matches_prediction"].as_bool(), Some(true));
    assert_eq!(dr["fits"].as_bool(), Some(true));

    let svg = dir.path("timeline.svg");
    let run = seerscale(&["dry-run", out_s, "--svg", svg.to_str().unwrap()]);
    let stdout = text(&run.stdout);
    assert!(run.status.success(), "{}", text(&run.stderr));
    assert!(stdout.contains("fits") && stdout.contains("matches"), "{stdout}");
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(svg.contains("<svg") && svg.trim_end().ends_with("</svg>"), "{svg}");
}

/// A tiny-cpu plan file as `plan` writes it, and its JSON.
fn tiny_plan(dir: &TempDir) -> (String, Value) {
    let out = dir.path("good.json");
    let plan = ok_json(&["plan", "--recipe", "tiny-cpu", "--out", out.to_str().unwrap(), "--json"]);
    (std::fs::read_to_string(&out).unwrap(), plan)
}

#[test]
fn dry_run_refuses_other_schema_versions() {
    let dir = TempDir::new("dry-run-version");
    let (_, mut plan) = tiny_plan(&dir);
    plan["schema_version"] = 99.into();
    let f = dir.write("v99.json", &serde_json::to_string_pretty(&plan).unwrap());
    let e = one_line_error(&["dry-run", &f]);
    assert!(e.starts_with(&format!("{f}: plan schema version 99 is not supported")), "{e}");
    assert!(e.contains("reads version 1"), "{e}");
}

#[test]
fn dry_run_refuses_plans_that_do_not_match_their_model() {
    let dir = TempDir::new("dry-run-mismatch");
    let (_, plan) = tiny_plan(&dir);

    let mut p = plan.clone();
    let n = p["model_fingerprint"]["trunk_params"].as_u64().unwrap();
    p["model_fingerprint"]["trunk_params"] = (n + 1).into();
    let f = dir.write("fingerprint.json", &serde_json::to_string_pretty(&p).unwrap());
    let e = one_line_error(&["dry-run", &f]);
    assert!(e.starts_with(&format!("{f}: plan does not match its model `regnety-tiny`")), "{e}");
    assert!(e.contains("model_fingerprint"), "{e}");

    // The model was edited after planning: the fingerprint no longer fits it.
    let mut p = plan.clone();
    p["model"]["regnet"]["w_0"] = 16.into();
    let f = dir.write("model.json", &serde_json::to_string_pretty(&p).unwrap());
    let e = one_line_error(&["dry-run", &f]);
    assert!(e.starts_with(&format!("{f}: plan does not match its model")), "{e}");

    let mut p = plan;
    p["units"][0]["members"] = serde_json::json!(["s9.b0"]);
    let f = dir.write("units.json", &serde_json::to_string_pretty(&p).unwrap());
    let e = one_line_error(&["dry-run", &f]);
    assert!(e.starts_with(&format!("{f}: plan does not match its model")), "{e}");
    assert!(e.contains("`s9.b0`"), "{e}");
}

#[test]
fn dry_run_on_broken_json_names_file_line_column_and_field() {
    let dir = TempDir::new("dry-run-json");
    let (good, _) = tiny_plan(&dir);

    let cut = &good[..good.len() / 2];
    let f = dir.write("truncated.json", cut);
    let e = one_line_error(&["dry-run", &f]);
    let (line, col, rest) = file_line_col(&e, &f);
    assert!(line >= 1 && line <= cut.lines().count() && col >= 1, "{e}");
    assert!(rest.contains("EOF"), "{e}");

    let (bad, line) = replace_line(&good, "  \"world_size\":", "  \"world_size\": \"two\",");
    let f = dir.write("wrong-type.json", &bad);
    let e = one_line_error(&["dry-run", &f]);
    let (l, _, rest) = file_line_col(&e, &f);
    assert_eq!(l, line, "{e}");
    assert!(rest.starts_with("field `world_size`: invalid type"), "{e}");
    assert!(!rest.contains(" at line "), "the position is given once: {e}");

    // A missing field is named as the field, at the top level and nested.
    let f = dir.write("only-version.json", "{\"schema_version\": 1}");
    let e = one_line_error(&["dry-run", &f]);
    assert!(e.ends_with("field `created_by`: missing field `created_by`"), "{e}");
    let mut v: Value = serde_json::from_str(&good).unwrap();
    v["precision"].as_object_mut().unwrap().remove("reduce");
    let f = dir.write("no-reduce.json", &serde_json::to_string_pretty(&v).unwrap());
    let e = one_line_error(&["dry-run", &f]);
    assert!(e.ends_with("field `precision.reduce`: missing field `reduce`"), "{e}");
}

/// `--reference` takes `--batch` (and `--global-batch`) instead of
/// ignoring them.
#[test]
fn reference_plans_take_the_batch_asked_for() {
    let plan = ok_json(&["plan", "--recipe", "seer-10b", "--reference", "--batch", "4", "--json"]);
    assert_eq!(plan["batch_per_rank"].as_u64(), Some(4));
    let plan = ok_json(&["plan", "--recipe", "seer-10b", "--reference", "--global-batch", "3968", "--json"]);
    assert_eq!(plan["batch_per_rank"].as_u64(), Some(8));
    let e = one_line_error(&["plan", "--recipe", "seer-10b", "--reference", "--global-batch", "1000"]);
    assert_eq!(e, "--global-batch 1000 is not a multiple of 496 GPUs");
}

/// A tiny plan reads in the units of its numbers: milliseconds, seconds,
/// MiB, cents; and a one-block checkpointed segment is named once.
#[test]
fn small_plans_print_units_that_fit_their_numbers() {
    let out = seerscale(&["plan", "--recipe", "tiny-cpu"]);
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    for bad in ["0.00 GiB", "0.00 days", " $0 ", "0.000 s"] {
        assert!(!s.contains(bad), "`{bad}` in:\n{s}");
    }
    assert!(s.contains(" ms") && s.contains("GFLOP/s fp32"), "{s}");
    // A CPU has no band; the plan says how to read its step time instead.
    assert!(s.contains("step time: no band on a CPU; the catalog's peak op rates") && s.contains("a floor"), "{s}");
    let dir = TempDir::new("small-units");
    let mut p = ok_json(&["plan", "--recipe", "tiny-cpu", "--json"]);
    assert!(p["predicted"]["step_time_range_s"].is_null() && p["predicted"]["range_source"].as_str().is_some_and(|r| r.contains("floor")), "{p}");
    p["checkpoint_segments"] = serde_json::json!([["s1.b0"]]);
    let f = dir.write("one-block.json", &serde_json::to_string(&p).unwrap());
    let out = seerscale(&["dry-run", &f]);
    let s = text(&out.stdout);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(s.contains("checkpointed: s1.b0\n") && !s.contains("s1.b0..s1.b0") && !s.contains("0.00 GiB"), "{s}");
}

#[test]
fn reference_seer_10b_plan_fits() {
    let plan = ok_json(&["plan", "--recipe", "seer-10b", "--reference", "--json"]);
    assert_eq!(plan["predicted"]["fits"].as_bool(), Some(true));
    assert_eq!(plan["world_size"].as_u64(), Some(496));
    assert_eq!(plan["hardware"]["id"], "a100-40gb");
    assert_eq!(plan["wrapping"], "vissl");
    // VISSL's stage_checkpoints [[2], [7], [9, 17], []]: four segments.
    assert_eq!(plan["checkpoint_segments"].as_array().unwrap().len(), 4);
}

#[test]
fn infeasible_requests_say_what_is_needed_and_usable() {
    // 64 images per V100 of SEER 10B: even checkpointing every block needs
    // more than 32 GB.
    let e = one_line_error(&["plan", "--recipe", "seer-10b", "--gpus", "8", "--gpu", "v100-32gb", "--batch", "64", "--json"]);
    assert!(e.starts_with("no plan fits: needs "), "{e}");
    assert!(e.contains("usable") && e.contains("V100"), "{e}");

    // The published plan on 8 V100s: the report goes to stdout, the verdict to stderr.
    let out = seerscale(&["plan", "--recipe", "seer-10b", "--reference", "--gpus", "8", "--gpu", "v100-32gb"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(stderr.starts_with("error: the reference plan does not fit: needs ") && stderr.contains("usable"), "{stderr}");
    assert!(text(&out.stdout).contains("DOES NOT FIT"));
}

#[test]
fn plan_and_dry_run_give_the_same_verdict_on_a_plan_that_does_not_fit() {
    let dir = TempDir::new("verdict");
    let f = dir.path("ref-v100.json");
    let f = f.to_str().unwrap();
    let out = seerscale(&["plan", "--recipe", "seer-10b", "--reference", "--gpus", "8", "--gpu", "v100-32gb", "--out", f]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stderr));
    let planned = text(&out.stderr);
    let e = one_line_error(&["dry-run", f]);
    // Same numbers and reason; only the hardware's label differs.
    let reason = |m: &str| m[m.find(" usable: ").unwrap_or_else(|| panic!("no reason in `{m}`"))..].trim().to_string();
    let needs = |m: &str| m[m.find("needs ").unwrap_or_else(|| panic!("no `needs` in `{m}`"))..].split(',').next().unwrap().to_string();
    assert!(e.starts_with(&format!("{f}: needs ")), "{e}");
    assert_eq!(reason(&e), reason(&planned), "plan: {planned}\ndry-run: {e}");
    assert_eq!(needs(&e), needs(&planned), "plan: {planned}\ndry-run: {e}");
}

#[test]
fn plan_and_sweep_check_the_shared_search_flags_alike() {
    for cmd in ["plan", "sweep"] {
        let e = one_line_error(&[cmd, "--recipe", "tiny-cpu", "--min-gpus", "4", "--max-gpus", "2"]);
        assert_eq!(e, "--min-gpus 4 is larger than --max-gpus 2");
        let e = one_line_error(&[cmd, "--recipe", "tiny-cpu", "--min-gpus", "0", "--max-gpus", "2"]);
        assert_eq!(e, "--min-gpus must be at least 1");
        let e = one_line_error(&[cmd, "--recipe", "tiny-cpu", "--headroom", "0.95"]);
        assert_eq!(e, "--headroom must be in [0, 0.9)");
        let e = one_line_error(&[cmd, "--recipe", "tiny-cpu", "--price=-1"]);
        assert_eq!(e, "--price must be a non-negative number");
    }
}

/// `--sharding` fixes the strategy the plan file then carries; a shard
/// group that cannot divide the cluster is a one-line error; a plan file
/// whose sharding does not fit its world size is refused on load.
#[test]
fn plan_sharding_is_fixed_by_the_flag_and_checked() {
    let p = ok_json(&["plan", "--recipe", "tiny-cpu", "--gpus", "4", "--sharding", "hybrid:2", "--json"]);
    assert_eq!(p["sharding"], serde_json::json!({"strategy": "hybrid", "shard_group": 2}));
    let p = ok_json(&["plan", "--recipe", "tiny-cpu", "--gpus", "2", "--sharding", "ddp", "--json"]);
    assert_eq!(p["sharding"]["strategy"], "ddp");
    assert!(p["units"].as_array().unwrap().len() >= 2, "DDP's units are its buckets (and the prototypes)");
    let e = one_line_error(&["plan", "--recipe", "tiny-cpu", "--gpus", "4", "--sharding", "hybrid:3"]);
    assert!(e.starts_with("--sharding hybrid:3: hybrid:3 needs a shard group that divides the world size 4"), "{e}");
    // An unknown name is a usage error (exit 2), naming what is accepted.
    let out = seerscale(&["plan", "--recipe", "tiny-cpu", "--sharding", "zero3"]);
    let stderr = text(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(stderr.contains("`zero3` is not a sharding: use ddp, fsdp or hybrid:S"), "{stderr}");
    let dir = TempDir::new("sharding-plan");
    let path = dir.0.join("p.json");
    let mut p = ok_json(&["plan", "--recipe", "tiny-cpu", "--gpus", "4", "--json"]);
    p["sharding"] = serde_json::json!({"strategy": "hybrid", "shard_group": 4});
    std::fs::write(&path, serde_json::to_string(&p).unwrap()).unwrap();
    let e = one_line_error(&["dry-run", path.to_str().unwrap()]);
    assert!(e.contains("field `sharding`") && e.contains("hybrid:4"), "{e}");
    // A plan file written before the field reads as FSDP over the world.
    p.as_object_mut().unwrap().remove("sharding");
    std::fs::write(&path, serde_json::to_string(&p).unwrap()).unwrap();
    let out = seerscale(&["dry-run", path.to_str().unwrap()]);
    assert!(out.status.success() && text(&out.stdout).contains(", fsdp,"), "{}", text(&out.stderr));
}

// ------------------------------------------------------------------ sweep

#[test]
fn sweep_seer_10b_json_has_rows_and_a_frontier() {
    let s = ok_json(&["sweep", "--recipe", "seer-10b", "--json"]);
    assert_eq!(s["recipe"], "seer-10b");
    let rows = s["rows"].as_array().expect("rows");
    assert!(!rows.is_empty());
    for r in rows {
        assert!(r["gpu"].is_string() && r["gpus"].as_u64().is_some_and(|n| n >= 1), "{r}");
        assert!(r.get("sharding").is_some(), "every row says its sharding: {r}");
        if r["fits"].as_bool().unwrap() {
            let sh = r["sharding"].as_str().unwrap();
            assert!(sh == "fsdp" || sh == "ddp" || sh.starts_with("hybrid:"), "{r}");
            // Days and cost include expected failures: never below the failure-free days.
            assert!(r["goodput"].as_f64().is_some_and(|g| g > 0.5 && g <= 1.0), "{r}");
            assert!(r["days"].as_f64().unwrap() >= r["failure_free_days"].as_f64().unwrap(), "{r}");
            assert!(r["checkpoint_interval_steps"].as_u64().is_some_and(|n| n >= 1), "{r}");
            assert!(r["days"].as_f64().unwrap() > 0.0 && r["cost_usd"].as_f64().unwrap() > 0.0, "{r}");
            assert!(r["peak_gib"].as_f64().unwrap() <= r["usable_gib"].as_f64().unwrap(), "{r}");
            // The band brackets the prediction and says where it comes from.
            let days = r["days"].as_f64().unwrap();
            let band = r["days_range"].as_array().expect("days_range");
            assert!(band[0].as_f64().unwrap() < days && days < band[1].as_f64().unwrap(), "{r}");
            assert!(r["cost_range_usd"].as_array().is_some_and(|c| c.len() == 2), "{r}");
            assert!(r["range_source"].as_str().is_some_and(|s| s.contains("kernel model")), "{r}");
        } else {
            assert!(r["why"].is_string(), "{r}");
        }
    }
    assert!(rows.iter().any(|r| r["fits"] == true), "some cluster size fits SEER 10B");
    let frontier = s["frontier"].as_array().expect("frontier");
    assert!(!frontier.is_empty());
    for i in frontier {
        let r = &rows[i.as_u64().unwrap() as usize];
        assert!(r["fits"] == true && r["pareto"] == true, "{r}");
    }
}

/// The table shows the sizes a reader compares, says what the sweep
/// found, and `--all` lists every row; the SVG plots days against cost.
#[test]
fn sweep_table_is_compact_unless_all_rows_are_asked_for() {
    let args = ["sweep", "--recipe", "seer-10b", "--free-batch", "--min-gpus", "8", "--max-gpus", "512"];
    let rows = |out: &Output| text(&out.stdout).lines().filter(|l| l.get(2..).is_some_and(|r| r.starts_with("a100-40gb "))).count();
    let compact = seerscale(&args);
    assert!(compact.status.success(), "{}", text(&compact.stderr));
    let s = text(&compact.stdout);
    let all = seerscale(&[&args[..], &["--all"]].concat());
    assert_eq!(rows(&all), 64, "one row per whole number of 8-GPU nodes from 8 to 512");
    assert!(rows(&compact) <= 12, "powers of two, cheapest, fastest:\n{s}");
    assert!(s.contains("more cluster sizes: --all lists every row"), "{s}");
    assert!(s.contains("frontier of days against cost") && s.contains("per day saved"), "{s}");
    assert!(s.contains("global batch varies from"), "freed batches are called out:\n{s}");
    assert!(
        s.contains("days band")
            && s.contains("days band, measured/predicted as docs/accuracy-gpu.md finds it (`plan` says what each is made of): a100-40gb 0."),
        "{s}"
    );
    let dir = TempDir::new("sweep-svg");
    let svg = dir.path("t.svg");
    let out = seerscale(&["sweep", "--recipe", "seer-10b", "--svg", svg.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let svg = std::fs::read_to_string(&svg).unwrap();
    assert!(
        svg.contains("cost to train")
            && svg.contains("days to train")
            && svg.split("</text>").any(|t| t.trim_end().ends_with(">496") || t.trim_end().ends_with("\n496")),
        "{svg}"
    );
    assert!(svg.contains("band (measured"), "every plan's band is drawn: {svg}");
}

#[test]
fn malformed_recipe_names_file_line_and_field() {
    let dir = TempDir::new("recipe-errors");
    let good = repo_file("configs/recipes/seer-10b.toml");

    let (bad, line) = replace_line(&good, "gpus =", "gpus = \"many\"");
    let f = dir.write("wrong-type.toml", &bad);
    for cmd in ["sweep", "plan"] {
        let e = one_line_error(&[cmd, "--recipe", &f, "--json"]);
        let (l, _, rest) = file_line_col(&e, &f);
        assert_eq!(l, line, "{e}");
        assert!(rest.starts_with("field `cluster.gpus`: invalid type"), "{e}");
    }

    let (bad, line) = replace_line(&good, "temperature =", "temperature = -1.0");
    let f = dir.write("negative-temperature.toml", &bad);
    let e = one_line_error(&["sweep", "--recipe", &f, "--json"]);
    assert!(e.starts_with(&format!("{f}:{line}: field `swav.temperature`")), "{e}");

    let (bad, line) = replace_line(&good, "temperature =", "temperature = 0.1\ntemprature = 0.1");
    let f = dir.write("unknown-field.toml", &bad);
    let e = one_line_error(&["sweep", "--recipe", &f, "--json"]);
    let (l, _, rest) = file_line_col(&e, &f);
    assert_eq!(l, line + 1, "{e}");
    assert!(rest.starts_with("field `swav.temprature`: unknown field"), "{e}");
}

#[test]
fn malformed_hardware_file_names_file_line_and_field() {
    let dir = TempDir::new("hardware-errors");
    let (bad, line) = replace_line(&repo_file("configs/hardware/a100-40gb.toml"), "nic_gbit_s =", "nic_gbit_s = -200");
    let f = dir.write("my-a100.toml", &bad);
    let e = one_line_error(&["plan", "--recipe", "tiny-cpu", "--gpu", &f]);
    assert!(e.starts_with(&format!("{f}:{line}: field `interconnect.nic_gbit_s`")), "{e}");
}

#[test]
fn a_sync_bn_plan_is_charged_for_it_and_trains_with_it() {
    let dir = TempDir::new("train-sync-bn");
    let (_, plain) = tiny_plan(&dir);
    // The planner charges SyncBN's all-reduces and the plan carries it.
    let synced = dir.path("sync.json");
    let plan = ok_json(&["plan", "--recipe", "tiny-cpu", "--sync-bn", "--out", synced.to_str().unwrap(), "--json"]);
    assert_eq!(plan["recipe"]["sync_bn"], Value::Bool(true), "{plan}");
    assert!(plain["recipe"].get("sync_bn").is_none(), "per-rank BN is the default: {plain}");
    let step = |p: &Value| p["predicted"]["step_time_s"].as_f64().expect("step_time_s");
    assert!(step(&plan) > step(&plain), "SyncBN costs time: {} vs {}", step(&plan), step(&plain));
    let world = plan["world_size"].as_u64().expect("world_size").to_string();
    let run = dir.path("run");
    // No --sync-bn: the plan asks for it.
    let out = seerscale(&[
        "train",
        "--plan",
        synced.to_str().unwrap(),
        "--nproc-per-node",
        &world,
        "--steps",
        "2",
        "--out",
        run.to_str().unwrap(),
        "--threads",
        "1",
        "--workers",
        "1",
        "--timeout-s",
        "60",
    ]);
    let stdout = text(&out.stdout);
    assert!(out.status.success(), "train of a SyncBN plan failed:\n{stdout}\n{}", text(&out.stderr));
    assert!(stdout.contains("SyncBN):"), "the summary names the BN mode:\n{stdout}");
    for rank in 0..world.parse::<usize>().unwrap() {
        let lines = std::fs::read_to_string(run.join(format!("metrics.rank{rank}.jsonl"))).unwrap();
        let steps: Vec<Value> = lines.lines().map(|l| serde_json::from_str(l).unwrap()).collect();
        assert_eq!(steps.len(), 2, "rank {rank}: {lines}");
        assert!(steps.iter().all(|s| s["sync_bn"] == Value::Bool(true) && s["loss"].as_f64().is_some_and(f64::is_finite)), "rank {rank}: {lines}");
    }
}

// ------------------------------------------------------------ restarts

/// Losses by step from rank 0's metrics file of a run.
fn losses_by_step(run: &Path) -> Vec<(u64, f64)> {
    let text = std::fs::read_to_string(run.join("metrics.rank0.jsonl")).unwrap();
    let mut v: Vec<(u64, f64)> =
        text.lines().map(|l| serde_json::from_str::<Value>(l).unwrap()).map(|m| (m["step"].as_u64().unwrap(), m["loss"].as_f64().unwrap())).collect();
    v.sort_by_key(|x| x.0);
    v
}

fn train_with(env: &[(&str, String)], args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seerscale")).args(args).envs(env.iter().map(|(k, v)| (*k, v.as_str()))).env("OMP_NUM_THREADS", "1").output().unwrap()
}

/// A rank killed mid-run: `--max-restarts 1` starts the job again from the
/// latest checkpoint and it ends having trained on the same batches as an
/// uninterrupted run; with `--elastic` it goes on with one rank fewer,
/// re-planned, and still matches (SyncBN: BN over the global batch).
#[test]
fn a_restarted_job_finishes_the_uninterrupted_run() {
    let dir = TempDir::new("restarts");
    for (ranks, elastic) in [(2usize, false), (3, true)] {
        let plan = dir.path(&format!("p{ranks}.json"));
        let out = seerscale(&["plan", "--recipe", "tiny-cpu", "--gpus", &ranks.to_string(), "--out", plan.to_str().unwrap()]);
        assert!(out.status.success(), "{}", text(&out.stderr));
        let (plain, restarted) = (dir.path(&format!("plain{ranks}")), dir.path(&format!("restarted{ranks}")));
        let common = |run: &Path| {
            vec![
                "train",
                "--plan",
                plan.to_str().unwrap(),
                "--nproc-per-node",
                if ranks == 2 { "2" } else { "3" },
                "--steps",
                "6",
                "--checkpoint-every",
                "2",
                "--sync-bn",
                "--timeout-s",
                "20",
                "--out",
            ]
            .into_iter()
            .map(str::to_string)
            .chain([run.to_str().unwrap().to_string()])
            .collect::<Vec<_>>()
        };
        let args = common(&plain);
        let out = train_with(&[], &args.iter().map(String::as_str).collect::<Vec<_>>());
        assert!(out.status.success(), "{}", text(&out.stderr));
        // The closing table says what a CPU plan's step time is.
        assert!(text(&out.stdout).contains("step time: no band on a CPU") && text(&out.stdout).contains("a floor"), "{}", text(&out.stdout));
        let mut args = common(&restarted);
        args.extend(["--max-restarts".to_string(), "1".to_string()]);
        if elastic {
            args.push("--elastic".into());
        }
        let fault = format!("rank=1,step=3,once={}", dir.path(&format!("fault{ranks}")).display());
        let out = train_with(&[("SEERSCALE_FAULT", fault)], &args.iter().map(String::as_str).collect::<Vec<_>>());
        let stderr = text(&out.stderr);
        assert!(out.status.success(), "{stderr}");
        assert!(stderr.contains("rank 1 failed") && stderr.contains("restart 1 of 1"), "{stderr}");
        if elastic {
            assert!(stderr.contains("elastic: continuing on 2 ranks"), "{stderr}");
        }
        let (a, b) = (losses_by_step(&plain), losses_by_step(&restarted));
        assert_eq!(a.iter().map(|x| x.0).collect::<Vec<_>>(), (0..6).collect::<Vec<_>>());
        assert_eq!(b.iter().map(|x| x.0).collect::<Vec<_>>(), (0..6).collect::<Vec<_>>(), "every step once in the restarted run's metrics");
        for ((s, x), (_, y)) in a.iter().zip(&b) {
            assert!(((x - y) / x).abs() < 1e-5, "{ranks} ranks, elastic {elastic}, step {s}: uninterrupted {x} vs restarted {y}");
        }
    }
}

// ------------------------------------------------------------ rough edges of a run

/// A folder of small PNGs (and whatever else the test adds to it).
fn image_folder(dir: &TempDir, name: &str, n: u32) -> PathBuf {
    let d = dir.path(name);
    std::fs::create_dir_all(&d).unwrap();
    for i in 0..n {
        let img = image::RgbImage::from_fn(48, 40, |x, y| image::Rgb([(x * 5 + i * 20) as u8, (y * 6) as u8, (i * 30) as u8]));
        img.save(d.join(format!("img{i:02}.png"))).unwrap();
    }
    d
}

/// Unreadable images are skipped with a warning naming them, counted in
/// each step's metrics and in the closing summary; without a terminal the
/// run prints progress lines with the loss, and the summary has the loss
/// at both ends.
#[test]
fn a_run_counts_and_names_unreadable_images_and_prints_progress_lines() {
    let dir = TempDir::new("train-skipped");
    let data = image_folder(&dir, "imgs", 8);
    std::fs::write(data.join("broken.png"), b"not a png at all").unwrap();
    std::fs::write(data.join("empty.jpg"), b"").unwrap();
    let plan = dir.path("plan.json");
    let out = seerscale(&["plan", "--recipe", "tiny-cpu", "--gpus", "1", "--out", plan.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = dir.path("run");
    let out = seerscale(&[
        "train",
        "--plan",
        plan.to_str().unwrap(),
        "--steps",
        "4",
        "--data",
        data.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--threads",
        "1",
        "--workers",
        "1",
    ]);
    let (stdout, stderr) = (text(&out.stdout), text(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.contains("warning: ") && stderr.contains("unreadable image file(s) skipped"), "{stderr}");
    assert!(stderr.contains("broken.png") && stderr.contains("empty.jpg"), "the warning names the files: {stderr}");
    let metrics = std::fs::read_to_string(run.join("metrics.rank0.jsonl")).unwrap();
    let last: Value = serde_json::from_str(metrics.lines().last().unwrap()).unwrap();
    assert_eq!(last["skipped_images"].as_u64(), Some(2), "{metrics}");
    assert!(stdout.contains("unreadable image files skipped: 2 on rank 0"), "{stdout}");
    // Progress lines (stdout is a pipe here): the first and the last step.
    assert!(stdout.contains("step 1/4: loss ") && stdout.contains("step 4/4: loss "), "{stdout}");
    let loss_line = stdout.lines().find(|l| l.trim_start().starts_with("loss ")).unwrap_or_else(|| panic!("no loss summary:\n{stdout}"));
    assert!(loss_line.contains(" -> "), "first -> last loss: {loss_line}");
}

/// A checkpoint shard that libtorch cannot read on `--resume` fails as one
/// line (no C++ frames), and the launcher's headline is that rank's own
/// error rather than a peer's "disconnected".
#[test]
fn a_corrupt_shard_fails_in_one_line_headed_by_the_rank_that_read_it() {
    let dir = TempDir::new("train-corrupt-shard");
    let plan = dir.path("plan.json");
    let out = seerscale(&["plan", "--recipe", "tiny-cpu", "--gpus", "2", "--out", plan.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = dir.path("run");
    let train = |steps: &str, resume: bool| {
        let mut a = vec!["train", "--plan", plan.to_str().unwrap(), "--nproc-per-node", "2", "--steps", steps, "--checkpoint-every", "2"];
        a.extend(["--out", run.to_str().unwrap(), "--threads", "1", "--workers", "1", "--timeout-s", "20"]);
        if resume {
            a.push("--resume");
        }
        seerscale(&a)
    };
    // --resume with nothing to resume is refused (a mistyped --out must not
    // restart a long run), naming where it looked.
    let out = train("2", true);
    let e = text(&out.stderr);
    assert!(!out.status.success() && e.contains("--resume: no checkpoint under") && e.contains("drop --resume"), "{e}");
    assert!(!run.join("checkpoints").join("latest").exists());
    let out = train("2", false);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(text(&out.stderr).contains("checkpoint: step 2 written to"), "{}", text(&out.stderr));
    // A shard cut short whose record carries no size/CRC (as an older
    // checkpoint's): only libtorch's reader can find it broken.
    let step = run.join("checkpoints/step_00000002");
    let shard = step.join("rank1.pt");
    let bytes = std::fs::read(&shard).unwrap();
    std::fs::write(&shard, &bytes[..bytes.len() / 3]).unwrap();
    let record = step.join("rank1.json");
    let mut meta: Value = serde_json::from_str(&std::fs::read_to_string(&record).unwrap()).unwrap();
    meta.as_object_mut().unwrap().remove("tensors_file");
    std::fs::write(&record, serde_json::to_string(&meta).unwrap()).unwrap();

    let out = train("4", true);
    let stderr = text(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(!stderr.contains("frame #") && !stderr.contains("Exception raised from"), "no C++ frames: {stderr}");
    let headline = stderr.lines().last().unwrap();
    assert!(headline.starts_with("error: rank 1 failed"), "{stderr}");
    assert!(headline.contains("rank1.pt") && !headline.contains("disconnected"), "the headline is rank 1's own error: {headline}");
}

/// Plans hold the recipe's global batch (GPUs x batch per GPU) unless
/// asked otherwise, and say so whenever a plan's differs from it.
#[test]
fn the_recipes_global_batch_is_held_unless_freed() {
    let plan = ok_json(&["plan", "--recipe", "seer-10b", "--gpu", "h100-80gb", "--json"]);
    let global = |p: &Value| p["batch_per_rank"].as_u64().unwrap() * p["world_size"].as_u64().unwrap();
    assert_eq!(global(&plan), 496 * 16, "{plan}");
    let out = seerscale(&["plan", "--recipe", "seer-10b", "--gpu", "h100-80gb"]);
    assert!(!text(&out.stdout).contains("note: global batch"), "{}", text(&out.stdout));
    // Freed: the search picks another per-GPU batch, and the output says
    // the run is not the recipe's.
    let free = ok_json(&["plan", "--recipe", "seer-10b", "--gpu", "h100-80gb", "--free-batch", "--json"]);
    assert_ne!(global(&free), 7936, "an 80 GB GPU fits more than 16 images: {free}");
    let out = seerscale(&["plan", "--recipe", "seer-10b", "--gpu", "h100-80gb", "--free-batch"]);
    let s = text(&out.stdout);
    assert!(s.contains(&format!("note: global batch {} is not the recipe's 7936 (496 GPUs x 16)", global(&free))), "{s}");
    // A cluster that cannot hold it is refused, naming the way out.
    let e = one_line_error(&["plan", "--recipe", "seer-10b", "--gpus", "504"]);
    assert!(e.contains("global batch 7936 is not a multiple of 504 GPUs") && e.contains("--free-batch"), "{e}");
    // So is one that SEER's SyncBN groups of 8 cannot tile.
    let e = one_line_error(&["plan", "--recipe", "seer-10b", "--gpus", "500", "--free-batch"]);
    assert!(e.contains("500 GPUs") && e.contains("8 ranks per SyncBN group do not divide the world size 500"), "{e}");
    // The sweep holds it on every row that fits, and says so.
    let sweep = ok_json(&["sweep", "--recipe", "seer-10b", "--min-gpus", "200", "--max-gpus", "1000", "--json"]);
    let fits: Vec<&Value> = sweep["rows"].as_array().unwrap().iter().filter(|r| r["fits"] == Value::Bool(true)).collect();
    assert!(fits.len() >= 3 && fits.iter().all(|r| r["global_batch"].as_u64() == Some(7936)), "{sweep}");
    let out = seerscale(&["sweep", "--recipe", "seer-10b", "--min-gpus", "200", "--max-gpus", "1000"]);
    assert!(text(&out.stdout).contains("every row trains with a global batch of 7936"), "{}", text(&out.stdout));
}

/// `--data` takes a `.txt` file list (tiny-cpu on 2 ranks reads the listed
/// photos); with no `--data` outside the clone, the error names the default
/// folder and the ways to point at another.
#[test]
fn train_reads_a_file_list_and_names_the_default_data_folder() {
    let dir = TempDir::new("train-file-list");
    let plan = dir.path("plan.json");
    let out = seerscale(&["plan", "--recipe", "tiny-cpu", "--gpus", "2", "--out", plan.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let photos = Path::new(env!("CARGO_MANIFEST_DIR")).join(".photos").canonicalize().unwrap();
    let mut names: Vec<PathBuf> =
        std::fs::read_dir(&photos).unwrap().map(|e| e.unwrap().path()).filter(|p| p.extension().is_some_and(|e| e == "png" || e == "jpg")).collect();
    names.sort();
    let list = dir.path("photos.txt");
    std::fs::write(&list, names.iter().take(16).map(|p| p.display().to_string()).collect::<Vec<_>>().join("\n")).unwrap();
    let run = dir.path("run");
    let out = seerscale(&[
        "train",
        "--plan",
        plan.to_str().unwrap(),
        "--nproc-per-node",
        "2",
        "--steps",
        "2",
        "--data",
        list.to_str().unwrap(),
        "--out",
        run.to_str().unwrap(),
        "--threads",
        "1",
        "--workers",
        "1",
        "--timeout-s",
        "30",
    ]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert!(run.join("metrics.rank1.jsonl").exists());
    let plan1 = dir.path("plan1.json");
    assert!(seerscale(&["plan", "--recipe", "tiny-cpu", "--gpus", "1", "--out", plan1.to_str().unwrap()]).status.success());
    let out = Command::new(env!("CARGO_BIN_EXE_seerscale"))
        .args(["train", "--plan", plan1.to_str().unwrap(), "--steps", "1", "--out", run.to_str().unwrap()])
        .current_dir(dir.path(""))
        .env_remove("SEERSCALE_PHOTOS")
        .output()
        .unwrap();
    let e = text(&out.stderr);
    assert!(!out.status.success() && e.contains("default image folder .photos") && e.contains("--data") && e.contains("SEERSCALE_PHOTOS"), "{e}");
}

/// `accuracy` writes its report where `--out` says and names that command
/// in it, so a report under docs/ says how to regenerate itself.
#[test]
fn accuracy_writes_its_report_where_asked_and_names_the_command() {
    let dir = TempDir::new("accuracy");
    let out = dir.path("acc");
    let o = seerscale(&["accuracy", "--out", out.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o.stderr));
    let md = std::fs::read_to_string(out.with_extension("md")).unwrap();
    assert!(md.contains(&format!("seerscale accuracy --out {}", out.display())), "{md}");
    assert!(md.contains("## Error bands and their coverage") && out.with_extension("svg").exists() && out.with_extension("json").exists());
}

/// A plan the ranks would refuse is reported once, by the launcher, before
/// any rank starts, with advice that fits the plan's size.
#[test]
fn a_plan_for_other_ranks_is_refused_once_before_launch() {
    let dir = TempDir::new("wrong-world");
    let plan = dir.path("p2.json");
    let out = seerscale(&["plan", "--recipe", "tiny-cpu", "--gpus", "2", "--out", plan.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let run = dir.path("run");
    let e = one_line_error(&["train", "--plan", plan.to_str().unwrap(), "--nproc-per-node", "3", "--steps", "1", "--out", run.to_str().unwrap()]);
    assert!(
        e.contains(
            "the plan is for 2 ranks but this job has 3 ranks: use --nproc-per-node 2, or plan for this job (`seerscale plan --recipe tiny-cpu --gpus 3`)"
        ),
        "{e}"
    );
    let big = dir.path("seer.json");
    let out = seerscale(&["plan", "--recipe", "seer-10b", "--out", big.to_str().unwrap()]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let e = one_line_error(&["train", "--plan", big.to_str().unwrap(), "--steps", "1", "--out", run.to_str().unwrap()]);
    assert!(e.contains("the plan is for 496 ranks but this job has 1 rank: start 496 ranks under torchrun or SLURM"), "{e}");
}

/// A replay re-predicts a stored report without touching it: by default
/// it writes `runs/<report>-replay.*` and names that `--out` in the
/// command it records.
#[test]
fn a_replay_writes_under_runs_and_leaves_its_input_alone() {
    let dir = TempDir::new("replay");
    let input = dir.path("stored.json");
    std::fs::copy(Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/validate-tiny-cpu.json"), &input).unwrap();
    let before = std::fs::read(&input).unwrap();
    let o = Command::new(env!("CARGO_BIN_EXE_seerscale")).current_dir(&dir.0).args(["validate", "--replay", "stored.json"]).output().unwrap();
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert_eq!(std::fs::read(&input).unwrap(), before, "the stored report is unchanged");
    assert!(!dir.path("stored.md").exists() && !dir.path("stored.svg").exists());
    let md = std::fs::read_to_string(dir.path("runs/stored-replay.md")).unwrap();
    assert!(md.contains("seerscale validate --replay stored.json --out runs/stored-replay"), "{md}");
    assert!(dir.path("runs/stored-replay.json").exists() && dir.path("runs/stored-replay.svg").exists());
}

/// Values a run cannot use are refused by name before anything starts.
#[test]
fn train_refuses_zero_counts_by_name() {
    for flag in ["--steps", "--nproc-per-node", "--workers"] {
        let e = one_line_error(&["train", "--plan", "missing.json", flag, "0"]);
        assert!(e.contains(&format!("{flag} must be at least 1")), "{e}");
    }
}
