//! `seerscale calibrate --quick` end to end: launches its own 2 Gloo ranks
//! for the collectives, writes the profile and the JSON report, and the
//! profile loads through the same function `plan` uses.

use cost_models::compute::OpKind;
use cost_models::hardware::load_profile;
use cost_models::DType;
use std::process::Command;

#[test]
fn calibrate_quick_writes_a_profile_plan_can_load() {
    let dir = std::env::temp_dir().join(format!("seerscale-calibrate-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let out = dir.join("cpu-local.toml");
    let run = Command::new(env!("CARGO_BIN_EXE_seerscale"))
        .args(["calibrate", "--quick", "--threads", "1", "--recipe", "tiny-cpu", "--rounds", "2", "--out"])
        .arg(&out)
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "calibrate failed:\n{stdout}\n{}", String::from_utf8_lossy(&run.stderr));
    assert!(stdout.contains("collectives over 2 ranks fitted: AllGather"), "{stdout}");
    assert!(stdout.lines().count() <= 10, "a short summary without --verbose:\n{stdout}");

    let p = load_profile(out.to_str().unwrap()).unwrap();
    assert_eq!(p.hardware.id, "cpu-local");
    for (kind, dtype) in [(OpKind::Conv, DType::Fp32), (OpKind::GroupedConv, DType::Fp32), (OpKind::Matmul, DType::Fp32), (OpKind::Conv, DType::Bf16)] {
        let t = p.measured.op_throughput.iter().find(|t| t.kind == kind && t.dtype == dtype).unwrap_or_else(|| panic!("{kind:?} {dtype} missing"));
        // A CPU core does between 0.1 GFLOP/s and 10 TFLOP/s.
        assert!(t.rate.0 > 1e8 && t.rate.0 < 1e13, "{kind:?} {dtype}: {}", t.rate.0);
    }
    let bw = p.measured.memory_bandwidth.unwrap().0;
    assert!(bw > 1e8 && bw < 1e12, "memory-bound bandwidth {bw}");
    let ovh = p.measured.kernel_overhead.unwrap().0;
    assert!(ovh > 1e-8 && ovh < 1e-3, "overhead {ovh}");
    // The optimiser per flat shard: the executor's own optimiser, timed.
    let host = p.measured.host.unwrap();
    for (name, s) in [("norms", host.optimizer_norms_shard), ("sgd", host.optimizer_sgd_shard), ("adam", host.optimizer_adam_shard)] {
        let s = s.unwrap_or_else(|| panic!("optimizer {name} per shard missing")).0;
        assert!(s > 1e-8 && s < 1e-2, "optimizer {name} per shard {s} s");
    }
    assert_eq!(p.measured.collectives.fits.len(), 4);
    for f in &p.measured.collectives.fits {
        assert!(f.alpha.0 < 0.1 && f.bus_bandwidth.0 > 1e7, "{f:?}");
    }

    let report: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(dir.join("cpu-local.json")).unwrap()).unwrap();
    assert!(report["compute"]["ops"].as_array().unwrap().len() >= 10, "fp32 + bf16 x 5 shapes");
    assert_eq!(report["collectives"].as_array().unwrap().len(), 12, "4 collectives x 3 sizes");

    // --recipe: every block of regnety-tiny at the recipe's workload, per dtype,
    // with its backward peak; and the busy-rank collective fits. Two rounds
    // are in the report, one median per block in the profile.
    assert_eq!(report["blocks"].as_array().unwrap().len(), 2 * 2 * 8, "2 rounds x fp32 + bf16 x 8 blocks");
    // The prototype head runs in fp32 in both precisions: one key, one time.
    assert_eq!(p.measured.block_times.len(), 2 * 8 - 1, "fp32 + bf16 x 8 blocks, head.proto shared");
    assert!(p.measured.block_times.iter().all(|b| b.backward.0 > 0.0 && b.backward_peak_bytes.is_some_and(|x| x > 0)), "{:?}", p.measured.block_times);
    assert_eq!(p.measured.collectives.busy.len(), 3, "all-gather, reduce-scatter, all-reduce");
    // The data loader per image at the recipe's crops, over the synthetic
    // images written next to the profile (no --data given).
    assert_eq!(p.measured.loader.len(), 1, "{:?}", p.measured.loader);
    let l = &p.measured.loader[0];
    assert_eq!(l.crops, "2x32+2x16");
    assert!(l.image.0 > 1e-7 && l.image.0 < 0.1, "{l:?}");
    assert_eq!(l.data.as_deref(), Some(dir.join("images").to_str().unwrap()));
    assert!(dir.join("images").join("img000.png").exists());
    // A plan made with the profile uses them: measured backward peaks travel with it.
    let plan_path = dir.join("plan.json");
    let plan =
        Command::new(env!("CARGO_BIN_EXE_seerscale")).args(["plan", "--recipe", "tiny-cpu", "--gpu"]).arg(&out).arg("--out").arg(&plan_path).output().unwrap();
    assert!(plan.status.success(), "{}", String::from_utf8_lossy(&plan.stderr));
    let plan: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&plan_path).unwrap()).unwrap();
    assert_eq!(plan["measured_backward_bytes"].as_object().map(|m| m.len()), Some(8), "{}", plan["measured_backward_bytes"]);
    std::fs::remove_dir_all(&dir).ok();
}

/// Bad --recipe / --batch / --largest-crop fail before anything is measured.
#[test]
fn calibrate_refuses_bad_block_flags_up_front() {
    for (args, want) in [
        (&["--recipe", "nope"][..], "unknown recipe `nope`"),
        (&["--recipe", "tiny-cpu", "--batch", "0"][..], "--batch 0"),
        (&["--recipe", "tiny-cpu", "--largest-crop", "5"][..], "--largest-crop 5"),
        (&["--recipe", "tiny-cpu", "--rounds", "0"][..], "--rounds must be at least 1"),
        (&["--recipe", "tiny-cpu", "--data", "/nonexistent/images"][..], "--data /nonexistent/images"),
    ] {
        let run = Command::new(env!("CARGO_BIN_EXE_seerscale")).arg("calibrate").args(args).args(["--out", "/nonexistent/p.toml"]).output().unwrap();
        let stderr = String::from_utf8_lossy(&run.stderr);
        assert_eq!(run.status.code(), Some(1), "{args:?}: {stderr}");
        assert!(stderr.contains(want), "{args:?}: {stderr}");
        assert!(!stderr.contains("calibrate: compute"), "{args:?} measured before failing: {stderr}");
    }
}
