//! `seerscale validate`: plan each variant with fixed decisions, execute it
//! with the executor as real ranks (a fresh `seerscale train` process group
//! per variant), and report predicted vs measured side by side.

use anyhow::{bail, Context, Result};
use clap::Args;
use cost_models::hardware::load_profile;
use executor::metrics::{metrics_path, read_metrics};
use planner::recipe::Recipe;
use planner::validation::{default_variants, parse_variants, plan_variant, summarize, Row, StepSample, ValidationReport, Variant};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct ValidateArgs {
    /// Built-in recipe or path to a recipe TOML.
    #[arg(long)]
    pub recipe: String,
    /// Comma-separated variant names, e.g. `w2-block-reshard-ckpt0-fp32-b8-r32`
    /// (w<ranks>-<block|stage|whole>-<reshard|keep>-<ckpt0|ckptsome|ckptall>-<fp32|bf16>-b<batch>-r<largest crop px>).
    /// Default: a set covering every axis.
    #[arg(long)]
    pub variants: Option<String>,
    /// Training steps per variant (the first `--warmup` are not measured).
    #[arg(long, default_value_t = 5)]
    pub steps: u64,
    /// Warm-up steps dropped from the measurement (optimiser state is
    /// allocated in step 0).
    #[arg(long, default_value_t = 2)]
    pub warmup: u64,
    /// Report path without extension: writes `<out>.md`, `<out>.svg` and
    /// `<out>.json` (default: docs/validate-<recipe>).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Plans and run metrics go here (default: runs/validate/<recipe>).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Hardware id or profile (e.g. one written by `seerscale calibrate`);
    /// default: the recipe's.
    #[arg(long)]
    pub gpu: Option<String>,
    /// Data-loading workers per rank passed to `train`. On CPU the loader's
    /// prefetched batches are counted by the same allocator; one worker keeps
    /// them from racing the step's peak (see the report notes).
    #[arg(long, default_value_t = 1)]
    pub workers: usize,
    /// Allowed relative peak-memory error.
    #[arg(long, default_value_t = 0.03)]
    pub memory_tolerance: f64,
    /// Exit with an error if any variant's peak memory is off by more than
    /// --memory-tolerance (or a variant could not be measured).
    #[arg(long)]
    pub check: bool,
    /// Seconds one variant's run may take before it is stopped.
    #[arg(long, default_value_t = 300)]
    pub run_timeout_s: u64,
}

fn slug(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// Runs `seerscale train` for one plan; Ok(None) on success, Ok(Some(why))
/// when the run failed (its metrics may still hold some steps).
fn execute(plan: &Path, v: &Variant, steps: u64, workers: usize, out: &Path, timeout: Duration) -> Result<Option<String>> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    if out.exists() {
        std::fs::remove_dir_all(out).with_context(|| format!("clearing {}", out.display()))?;
    }
    std::fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let log_path = out.join("train.log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    let log2 = log.try_clone()?;
    let mut cmd = Command::new(exe);
    cmd.arg("train")
        .arg("--plan")
        .arg(plan)
        .arg("--nproc-per-node")
        .arg(v.world_size.to_string())
        .arg("--steps")
        .arg(steps.to_string())
        .arg("--workers")
        .arg(workers.to_string())
        .arg("--out")
        .arg(out)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    // A run started from inside a rank would otherwise think it is one.
    for k in ["RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT", "SLURM_PROCID"] {
        cmd.env_remove(k);
    }
    let mut child = cmd.spawn().context("starting `seerscale train`")?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait()? {
            if status.success() {
                return Ok(None);
            }
            let text = std::fs::read_to_string(&log_path).unwrap_or_default();
            let last = text.lines().rev().find(|l| l.contains("error")).unwrap_or("no error line").trim().to_string();
            return Ok(Some(format!("train exited with {status}: {last}")));
        }
        if start.elapsed() > timeout {
            let _ = child.kill();
            let _ = child.wait();
            return Ok(Some(format!("stopped after {} s", timeout.as_secs())));
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn samples(dir: &Path, world: usize) -> (Vec<StepSample>, Option<String>) {
    let mut out = Vec::new();
    let mut missing = Vec::new();
    for r in 0..world {
        match read_metrics(&metrics_path(dir, r)) {
            Ok(ms) => out.extend(ms.iter().map(|m| StepSample { rank: m.rank, step: m.step, peak_memory_bytes: m.peak_memory_bytes, step_time_s: m.step_time_s, comm_time_s: m.comm_time_s })),
            Err(e) => missing.push(e.to_string()),
        }
    }
    (out, (!missing.is_empty()).then(|| missing.join("; ")))
}

pub fn run(a: &ValidateArgs) -> Result<()> {
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if !(a.memory_tolerance > 0.0) {
        bail!("--memory-tolerance must be > 0");
    }
    let recipe = Recipe::load(&a.recipe)?;
    let variants = match &a.variants {
        Some(list) => parse_variants(list)?,
        None => default_variants(),
    };
    let hw_name = a.gpu.clone().unwrap_or_else(|| recipe.cluster.gpu.clone());
    let hw = load_profile(&hw_name).with_context(|| format!("hardware `{hw_name}`"))?;
    let hardware_source = if a.gpu.is_some() && hw_name.contains(['/', '.']) { format!("profile {hw_name}") } else { format!("built-in catalog entry `{hw_name}` (not calibrated)") };
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("docs/validate-{}", slug(&recipe.name))));
    let work = a.work_dir.clone().unwrap_or_else(|| PathBuf::from(format!("runs/validate/{}", slug(&recipe.name))));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let start = Instant::now();
    let mut rows = Vec::new();
    for (i, v) in variants.iter().enumerate() {
        let name = v.to_string();
        let (plan, _) = plan_variant(&recipe, &hw, v)?;
        let dir = work.join(&name);
        let run_dir = dir.join("run");
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let plan_path = dir.join("plan.json");
        plan.save(&plan_path)?;
        eprint!("[{}/{}] {name}: ", i + 1, variants.len());
        let t0 = Instant::now();
        let failure = execute(&plan_path, v, a.steps, a.workers.max(1), &run_dir, Duration::from_secs(a.run_timeout_s.max(1)))?;
        let (ss, missing) = samples(&run_dir, v.world_size);
        let measured = summarize(&ss, a.warmup);
        let mut note = failure.or(missing);
        if let Some(m) = &measured {
            if m.steps == 0 || ss.iter().map(|s| s.step).max().unwrap_or(0) < a.warmup {
                note = Some(format!("{}only warm-up steps measured", note.map(|n| format!("{n}; ")).unwrap_or_default()));
            }
        }
        let row = Row::from_plan(v, &plan, measured, note);
        match (row.memory_error(), row.step_error()) {
            (Some(m), Some(s)) => eprintln!("peak {:+.1}%, step {:+.0}% ({:.1} s)", m * 100.0, s * 100.0, t0.elapsed().as_secs_f64()),
            _ => eprintln!("not measured: {}", row.note.as_deref().unwrap_or("no metrics")),
        }
        rows.push(row);
    }
    let mut command = format!("seerscale validate --recipe {}", a.recipe);
    if let Some(vs) = &a.variants {
        command.push_str(&format!(" --variants {vs}"));
    }
    if a.steps != 5 {
        command.push_str(&format!(" --steps {}", a.steps));
    }
    if a.warmup != 2 {
        command.push_str(&format!(" --warmup {}", a.warmup));
    }
    if let Some(g) = &a.gpu {
        command.push_str(&format!(" --gpu {g}"));
    }
    if a.workers != 1 {
        command.push_str(&format!(" --workers {}", a.workers));
    }
    if a.out.is_some() {
        command.push_str(&format!(" --out {}", out.display()));
    }
    let report = ValidationReport {
        recipe: recipe.name.clone(),
        hardware: hw.hardware.name.clone(),
        hardware_source,
        steps: a.steps,
        warmup: a.warmup,
        memory_tolerance: a.memory_tolerance,
        step_tolerance: 0.10,
        command,
        rows,
        notes: vec![
            format!("Ranks are local processes; each gets `cores / ranks` intra-op threads (at least 1) and {} data-loading worker(s).", a.workers.max(1)),
            "On CPU the data loader's prefetched image batches go through the same counting allocator as the step. With one worker the loader is slower than the step, so no prefetched batch is finished at the step's peak and the measurement is stable; with more workers 0 to `workers x (prefetch + 1)` extra batches race the peak and the measured peak moves by whole batches from step to step. The model counts the batch the step uses, not the loader's queue.".into(),
            "Peak memory is predicted by `planner::memory` from the plan alone (no measured input); step and communication times come from the step simulator with the hardware above.".into(),
        ],
    };
    let md_path = out.with_extension("md");
    let svg_path = out.with_extension("svg");
    let json_path = out.with_extension("json");
    let svg_name = svg_path.file_name().map(|s| s.to_string_lossy().to_string());
    std::fs::write(&svg_path, report.svg()).with_context(|| format!("writing {}", svg_path.display()))?;
    std::fs::write(&md_path, report.markdown(svg_name.as_deref())).with_context(|| format!("writing {}", md_path.display()))?;
    std::fs::write(&json_path, serde_json::to_string_pretty(&report)? + "\n").with_context(|| format!("writing {}", json_path.display()))?;
    println!("{}", report.markdown(None));
    println!("wrote {}, {} and {} in {:.0} s", md_path.display(), svg_path.display(), json_path.display(), start.elapsed().as_secs_f64());
    let failures = report.memory_failures();
    if a.check && !failures.is_empty() {
        bail!("peak memory off by more than {:.0}%: {}", a.memory_tolerance * 100.0, failures.join("; "));
    }
    Ok(())
}
