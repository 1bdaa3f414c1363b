//! `train --plan`: a planner `Plan` (tiny-cpu recipe, regnety-tiny, per-block
//! units, one checkpointed segment) executed by 2 launched ranks through
//! `train::run`, and a plan/world-size mismatch refused with a clear error.

mod common;
use common::*;
use cost_models::config::ModelConfig;
use cost_models::hardware::load_hardware;
use cost_models::DType;
use executor::launch::{self, LaunchOptions};
use executor::train::{self, TrainArgs};
use planner::wrapping::{unit_plans, units_for};
use runspec::plan::{ModelFingerprint, Plan, Precision, Predicted, PLAN_SCHEMA_VERSION};
use runspec::recipe::{Recipe, Wrapping};
use std::path::{Path, PathBuf};
use std::time::Duration;

fn tiny_plan(world: usize) -> Plan {
    let recipe = Recipe::load("tiny-cpu").unwrap();
    let model = ModelConfig::load(&recipe.model).unwrap();
    let mut plan = Plan {
        schema_version: PLAN_SCHEMA_VERSION,
        created_by: "executor test".into(),
        model,
        model_fingerprint: ModelFingerprint { trunk_params: 0, head_params: 0, blocks: vec![] },
        recipe,
        hardware: load_hardware("cpu-local").unwrap(),
        world_size: world,
        gpus_per_node: world,
        batch_per_rank: 4,
        precision: Precision { compute: DType::Fp32, reduce: DType::Fp32 },
        reshard_after_forward: true,
        backward_order: runspec::schedule::BackwardOrder::Together,
        channel_padding: cost_models::padding::ChannelPadding::Off,
        sharding: runspec::sharding::Sharding::fsdp(world),
        wrapping: Wrapping::PerBlock,
        units: vec![],
        checkpoint_segments: vec![vec!["s1.b0".into()]],
        measured_backward_bytes: Default::default(),
        predicted: Predicted {
            peak_memory_bytes: 40 << 20,
            peak_breakdown: Default::default(),
            usable_memory_bytes: 8 << 30,
            fits: true,
            step_time_s: 0.3,
            compute_time_s: 0.25,
            comm_time_s: 0.05,
            exposed_comm_s: 0.02,
            images_per_s: 26.0,
            mfu: 0.1,
            days_to_train: 0.0,
            cost_usd: 0.0,
            failures: None,
            step_time_range_s: None,
            days_range: None,
            cost_range_usd: None,
            range_source: None,
        },
    };
    let g = plan.graph();
    plan.model_fingerprint = ModelFingerprint::of(&g);
    plan.units = unit_plans(&units_for(&g, Wrapping::PerBlock));
    plan.check("test").unwrap();
    plan
}

fn args(plan: &Path, out: &Path) -> TrainArgs {
    let mut a = TrainArgs::new(plan);
    a.steps = Some(3);
    a.out = out.to_path_buf();
    a.data = Some(PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.photos"));
    a.workers = Some(1);
    a.timeout = Duration::from_secs(60);
    a
}

#[test]
#[ignore = "worker: run by a_plan_runs_on_two_launched_ranks"]
fn worker_plan() {
    let dir = PathBuf::from(std::env::var("SSC_TEST_DIR").unwrap());
    let report = train::run(&args(&dir.join("plan.json"), &dir.join("run"))).unwrap().expect("a rank reports");
    assert_eq!(report.world_size, 2);
    assert_eq!(report.metrics.len(), 3);
    if report.rank == 0 {
        let table = report.comparison.expect("rank 0 compares with the plan");
        assert!(table.contains("40.0 MiB") && table.contains("300.00 ms"), "{table}");
    }
}

#[test]
fn a_plan_runs_on_two_launched_ranks() {
    let dir = temp_dir("plan");
    tiny_plan(2).save(&dir.join("plan.json")).unwrap();
    let exe = std::env::current_exe().unwrap();
    let a: Vec<std::ffi::OsString> = ["--ignored", "--exact", "worker_plan", "--nocapture", "--test-threads=1"].iter().map(Into::into).collect();
    let mut opts = LaunchOptions::local(2);
    opts.deadline = Some(Duration::from_secs(180));
    opts.env = vec![("SSC_TEST_DIR".into(), dir.display().to_string()), ("OMP_NUM_THREADS".into(), "1".into())];
    launch::launch_local(&exe, &a, &opts).unwrap();
    for rank in 0..2 {
        let m = executor::metrics::read_metrics(&executor::metrics::metrics_path(&dir.join("run"), rank)).unwrap();
        assert_eq!(m.len(), 3);
        assert!(m.iter().all(|x| x.loss.is_finite() && x.peak_memory_bytes > 0 && x.step_time_s > 0.0 && x.comm_time_s >= 0.0));
        // The host waits for the device once per step (its read-back), and
        // the step's ATen ops are counted.
        assert!(m.iter().all(|x| x.host_syncs == 1 && x.aten_ops > 100), "{:?}", m.iter().map(|x| (x.host_syncs, x.aten_ops)).collect::<Vec<_>>());
    }
}

#[test]
fn a_plan_for_another_world_size_is_refused() {
    let dir = temp_dir("plan-ws");
    tiny_plan(2).save(&dir.join("plan.json")).unwrap();
    // No RANK in this process and no --nproc-per-node: a world of 1.
    let err = train::run(&args(&dir.join("plan.json"), &dir.join("run"))).unwrap_err().to_string();
    assert!(err.contains("the plan is for 2 ranks but this job has 1 rank: use --nproc-per-node 2"), "{err}");
    std::fs::write(dir.join("bad.json"), "{\"schema_version\": 1, \"model\": 3}").unwrap();
    let err = train::run(&args(&dir.join("bad.json"), &dir.join("run"))).unwrap_err().to_string();
    assert!(err.contains("bad.json"), "{err}");
}
