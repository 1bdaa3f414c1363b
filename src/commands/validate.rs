//! `seerscale validate`: plan each variant with fixed decisions, execute it
//! with the executor as real ranks (a fresh `seerscale train` process group
//! per variant), and report predicted vs measured side by side.

use super::synthetic_images::{synthetic_images, SYNTHETIC_IMAGES, SYNTHETIC_SIDE};
use anyhow::{bail, Context, Result};
use clap::Args;
use cost_models::hardware::{load_profile, DeviceKind, HardwareProfile};
use cost_models::Seconds;
use executor::speed_probe;
use planner::simulator::PhaseTimes;
use planner::validation::{
    combine_runs, default_variants, measured_blocks, median_phases, parse_phase_times, parse_variants, plan_variant, variant_phases, Measured, Row,
    ValidationReport, Variant,
};
use runspec::metrics::{metrics_path, read_metrics, summarize, StepMetrics};
use runspec::recipe::Recipe;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[derive(Args, Debug, Clone)]
pub struct ValidateArgs {
    /// Built-in recipe or path to a recipe TOML.
    #[arg(long, required_unless_present = "replay")]
    pub recipe: Option<String>,
    /// Comma-separated variant names, e.g. `w2-block-reshard-ckpt0-fp32-b8-r32`
    /// (w<ranks>[ddp|h<shard group>]-<block|stage|whole>-<reshard|keep>-<ckpt0|ckptsome|ckptall>-<fp32|bf16>-b<batch>-r<largest crop px>).
    /// Default: a set covering every axis.
    #[arg(long)]
    pub variants: Option<String>,
    /// Training steps per variant (the first `--warmup` are not measured).
    #[arg(long, default_value_t = 15)]
    pub steps: u64,
    /// Warm-up steps dropped from the measurement (optimiser state is
    /// allocated in step 0).
    #[arg(long, default_value_t = runspec::metrics::DEFAULT_WARMUP)]
    pub warmup: u64,
    /// Runs per variant, in interleaved rounds (every variant once, then
    /// every variant again): the report takes the median of the runs' step
    /// times, so a slow spell of a shared host hits one run of a variant,
    /// not its result.
    #[arg(long, default_value_t = 3)]
    pub repeats: u64,
    /// Calibrate again right before each round (the calibrate command the
    /// report's first line gives, with `--rounds 1`) and predict that
    /// round's runs from that round's profile: on a shared host the
    /// profile and the runs then come from the same few minutes. The
    /// step-time prediction is the median over the rounds.
    #[arg(long)]
    pub recalibrate: bool,
    /// Report path without extension: writes `<out>.md`, `<out>.svg` and
    /// `<out>.json` (default: runs/validate-<recipe>; a replay's:
    /// runs/<report>-replay, never the report it reads).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Plans and run metrics go here (default: runs/validate/<recipe>).
    #[arg(long)]
    pub work_dir: Option<PathBuf>,
    /// Hardware id or profile (e.g. one written by `seerscale calibrate`);
    /// default: the recipe's.
    #[arg(long)]
    pub gpu: Option<String>,
    /// Image folder for the runs. Default: small synthetic images written
    /// to `<work-dir>/images`, so the data loader keeps up with the step and
    /// its prefetch queue is full (as the memory model assumes) instead of
    /// racing the peak.
    #[arg(long)]
    pub data: Option<PathBuf>,
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
    /// Re-predict a report from the measurements stored in its JSON (no
    /// runs): the same variants planned again with this planner and
    /// `--gpu` (default: the report's recipe hardware), written to `--out`.
    /// How a GPU report follows the planner
    /// when no GPU is at hand.
    #[arg(long, value_name = "REPORT.json", conflicts_with_all = ["variants", "recalibrate", "data"])]
    pub replay: Option<PathBuf>,
    /// Run nothing: write the report from the runs already in --work-dir
    /// (what a validate stopped part-way left there); variants with no run
    /// are reported as not measured.
    #[arg(long, conflicts_with_all = ["recalibrate", "replay"])]
    pub collect: bool,
}

fn slug(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect()
}

/// Runs `seerscale train` for one plan; Ok(None) on success, Ok(Some(why))
/// when the run failed (its metrics may still hold some steps).
fn execute(plan: &Path, v: &Variant, steps: u64, threads: Option<usize>, data: &Path, out: &Path, timeout: Duration) -> Result<Option<String>> {
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
        .arg("--data")
        .arg(data)
        .arg("--out")
        .arg(out)
        .env("SEERSCALE_PHASE_TIMES", "1")
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    if let Some(t) = threads {
        cmd.arg("--threads").arg(t.to_string());
    }
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

/// Every rank's records of one run, and what could not be read.
fn samples(dir: &Path, world: usize) -> (Vec<StepMetrics>, Option<String>) {
    let mut out = Vec::new();
    let mut problems = Vec::new();
    for r in 0..world {
        match read_metrics(&metrics_path(dir, r)) {
            Ok(m) => out.extend(m),
            Err(e) => problems.push(e.to_string()),
        }
    }
    (out, (!problems.is_empty()).then(|| problems.join("; ")))
}

pub fn run(a: &ValidateArgs) -> Result<()> {
    if let Some(path) = &a.replay {
        return replay(a, path);
    }
    let recipe_arg = a.recipe.as_deref().context("--recipe is required")?;
    if a.steps == 0 {
        bail!("--steps must be at least 1");
    }
    if a.repeats == 0 {
        bail!("--repeats must be at least 1");
    }
    if !(a.memory_tolerance > 0.0) {
        bail!("--memory-tolerance must be > 0");
    }
    let recipe = Recipe::load(recipe_arg)?;
    let variants = match &a.variants {
        Some(list) => parse_variants(list)?,
        None => default_variants(),
    };
    let (hw, hardware_source) = hardware(a, &recipe)?;
    let out = a.out.clone().unwrap_or_else(|| PathBuf::from(format!("runs/validate-{}", slug(&recipe.name))));
    let work = a.work_dir.clone().unwrap_or_else(|| PathBuf::from(format!("runs/validate/{}", slug(&recipe.name))));
    std::fs::create_dir_all(&work).with_context(|| format!("creating {}", work.display()))?;
    let data = match &a.data {
        Some(d) => d.clone(),
        None => {
            let d = work.join("images");
            if !a.collect {
                synthetic_images(&d)?;
            }
            d
        }
    };
    // Run every rank with the threads the profile's rates were measured
    // with (the planner scales them when the ranks oversubscribe the cores).
    let threads = profile_threads(&hw);
    let start = Instant::now();
    let mut planned = Vec::with_capacity(variants.len());
    for v in &variants {
        let (plan, _) = plan_variant(&recipe, &hw, v)?;
        let dir = work.join(v.to_string());
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let plan_path = dir.join("plan.json");
        plan.save(&plan_path)?;
        planned.push((plan, dir, plan_path));
    }
    let mut runs: Vec<Vec<Run>> = variants.iter().map(|_| Vec::new()).collect();
    for round in 1..=a.repeats {
        let hw_round =
            if a.recalibrate { recalibrate(recipe_arg, &variants, threads, &data, &work.join(format!("calibration-round-{round}.toml")))? } else { hw.clone() };
        for (i, (v, (_, dir, plan_path))) in variants.iter().zip(&planned).enumerate() {
            let run_dir = if a.repeats == 1 { dir.join("run") } else { dir.join(format!("run-{round}")) };
            eprint!("[{}{}/{}] {v}: ", if a.repeats > 1 { format!("round {round}/{}, ", a.repeats) } else { String::new() }, i + 1, variants.len());
            let t0 = Instant::now();
            let r = run_once(&recipe, &hw_round, v, plan_path, &run_dir, threads, &data, a)?;
            let mut this_run = Row::from_plan(v, &planned[i].0, r.measured.clone(), None);
            this_run.predicted_step_time_s = r.predicted_step_time_s;
            match (this_run.memory_error(), this_run.step_error()) {
                (Some(m), Some(s)) => eprintln!("peak {:+.1}%, step {:+.0}% ({:.1} s)", m * 100.0, s * 100.0, t0.elapsed().as_secs_f64()),
                _ => eprintln!("not measured: {}", r.note.as_deref().unwrap_or("no metrics")),
            }
            runs[i].push(r);
        }
    }
    let mut rows = Vec::with_capacity(variants.len());
    for ((v, (plan, _, _)), runs) in variants.iter().zip(&planned).zip(runs) {
        let measured: Vec<Measured> = runs.iter().filter_map(|r| r.measured.clone()).collect();
        let notes: Vec<String> = runs
            .iter()
            .enumerate()
            .filter_map(|(k, r)| r.note.as_ref().map(|n| if a.repeats > 1 { format!("run {}: {n}", k + 1) } else { n.clone() }))
            .collect();
        let median_of = |f: fn(&Run) -> Option<f64>| {
            let v: Vec<f64> = runs.iter().filter_map(f).collect();
            (!v.is_empty()).then(|| cost_models::stats::median(v))
        };
        let mut row = Row::from_plan(v, plan, combine_runs(&measured), (!notes.is_empty()).then(|| notes.join("; ")));
        // Each run's prediction is its round's profile's: the same as the
        // plan's unless --recalibrate.
        row.predicted_step_time_s = median_of(|r| Some(r.predicted_step_time_s)).unwrap_or(row.predicted_step_time_s);
        row.predicted_exposed_comm_s = median_of(|r| Some(r.predicted_exposed_comm_s)).unwrap_or(row.predicted_exposed_comm_s);
        row.host_slowdown = median_of(|r| r.slowdown);
        row.probe_scaled_step_time_s = median_of(|r| r.probe_scaled_step_time_s);
        row.predicted_phases = median_phases(&runs.iter().map(|r| r.predicted_phases).collect::<Vec<_>>());
        row.measured_phases = median_phases(&runs.iter().filter_map(|r| r.phases).collect::<Vec<_>>());
        rows.push(row);
    }
    let mut coverage = Vec::new();
    for v in &variants {
        let (measured, all) = measured_blocks(&recipe, &hw, v)?;
        if measured < all {
            coverage.push(format!("`{v}` {measured}/{all}"));
        }
    }
    let mut block_note = if coverage.is_empty() {
        "Block compute times come from the profile's measured blocks (`seerscale calibrate --recipe`) for every variant.".to_string()
    } else {
        format!("Block compute times: the profile has measured times for only some blocks of {} (blocks measured/all); the rest use the per-op estimate. Run the calibrate command above to measure them.", coverage.join(", "))
    };
    let fill = match (hw.measured.threads_per_rank, hw.measured.host_cores) {
        (Some(t), Some(c)) => format!(" (ranks x {t} thread(s) >= the profile's {c} cores)"),
        _ => String::new(),
    };
    block_note.push_str(&match hw.measured.loader.as_slice() {
        [] => " The profile has no data-loader timing, so the loader's CPU time is not charged.".to_string(),
        l => format!(
            " The data loader's CPU time per image ({}; calibrate's one-worker timing) is charged, times the batch, to every rank's step, in its prologue, once the ranks fill the cores{fill}: its threads then take that time from the compute.",
            l.iter().map(|l| format!("{} {:.0} µs", l.crops, l.image.0 * 1e6)).collect::<Vec<_>>().join(", ")
        ),
    });
    let mut command = format!("seerscale validate --recipe {recipe_arg}");
    if let Some(vs) = &a.variants {
        command.push_str(&format!(" --variants {vs}"));
    }
    if a.steps != 15 {
        command.push_str(&format!(" --steps {}", a.steps));
    }
    if a.warmup != 3 {
        command.push_str(&format!(" --warmup {}", a.warmup));
    }
    if a.repeats != 3 {
        command.push_str(&format!(" --repeats {}", a.repeats));
    }
    if a.recalibrate {
        command.push_str(" --recalibrate");
    }
    if a.collect {
        command.push_str(&format!(" --collect --work-dir {}", work.display()));
    }
    if let Some(g) = &a.gpu {
        command.push_str(&format!(" --gpu {g}"));
        // A profile path: say how it was made, so one line regenerates everything.
        if g.ends_with(".toml") || g.ends_with(".json") {
            command = format!("{}\n{command}", calibrate_command(recipe_arg, &variants, g));
        }
    }
    if let Some(d) = &a.data {
        command.push_str(&format!(" --data {}", d.display()));
    }
    if a.out.is_some() {
        command.push_str(&format!(" --out {}", out.display()));
    }
    let workers = recipe.data.loader_workers;
    let device_notes: Vec<String> = if hw.hardware.kind == DeviceKind::Gpu {
        gpu_notes()
    } else {
        vec![
            match threads {
                Some(t) => format!("Ranks are local processes; each runs {t} intra-op thread(s) (`train --threads {t}`, the threads per rank the profile was measured with; when ranks x threads exceeds the cores the planner scales the measured rates by cores / (ranks x threads)) and {workers} data-loading workers (the recipe's `data.loader_workers`)."),
                None => format!("Ranks are local processes; each gets `cores / ranks` intra-op threads (at least 1) and {workers} data-loading workers (the recipe's `data.loader_workers`)."),
            },
            format!("On CPU the data loader's prefetched image batches go through the same counting allocator as the step, so the model counts the loader's full queue ({workers} workers x ({} prefetched + 1 blocked) fp32 batches) besides the batch in use. The queue is full only when the loader keeps up with the step; the runs therefore read {}. With the bundled 512 px photos on 2 shared cores the loader does not keep up, the queue holds 0-6 batches at the peak, and the measured peak moves by whole batches (about 9 % each for b8-r32) from step to step.", recipe.data.loader_prefetch, match &a.data { Some(d) => format!("`{}`", d.display()), None => format!("{SYNTHETIC_IMAGES} synthetic {SYNTHETIC_SIDE} px PNGs (decoding is then negligible)") }),
        ]
    };
    let device = (hw.hardware.kind == DeviceKind::Gpu && !a.collect).then(describe_gpu).flatten();
    let report = ValidationReport {
        recipe_config: Some(recipe.clone()),
        device,
        measured_with: None,
        recipe: recipe.name.clone(),
        hardware: hw.hardware.name.clone(),
        hardware_source,
        steps: a.steps,
        warmup: a.warmup,
        repeats: a.repeats,
        memory_tolerance: a.memory_tolerance,
        step_tolerance: 0.10,
        command,
        rows,
        notes: device_notes
            .into_iter()
            .chain([
                "Peak memory is predicted by `planner::memory` from the plan alone (no measured input); step and communication times come from the step simulator with the hardware above.".to_string(),
                block_note,
            ])
            .chain(a.collect.then(|| format!(
                "Collected: the runs are those found in `{}` (a validate stopped before it wrote its report); the predictions are this planner's.",
                work.display()
            )))
            .chain(a.recalibrate.then(|| format!(
                "Recalibrated: before each round `validate --recalibrate` ran the calibrate command above with `--rounds 1` (profiles `{}`), and predicted that round's runs from that round's profile; predicted step and exposed comm are the medians over the rounds, the peak is the plan's.",
                work.join("calibration-round-N.toml").display()
            )))
            .chain(hw.measured.speed_probe.map(|r| format!(
                "Host speed: this shared machine's speed drifts by tens of percent from minute to minute. Every run is bracketed by the host-speed probe (`executor::speed_probe`, a fixed single-thread conv/BN workload, {:.1} s each): `host slowdown (probe)` = mean of the two readings / the calibration's reference reading ({:.0} µs), to which `calibrate` normalised its own measurements. The predictions are at the calibration's speed; the probe-scaled alternative in the headline shows how far the probe is from tracking what the ranks see.",
                speed_probe::DURATION.0,
                r.0 * 1e6
            )))
            .collect(),
    };
    write_report(&report, &out, a.check, a.memory_tolerance, start)
}

/// The hardware `--gpu` names (default: the recipe's), and how the report
/// describes where its numbers came from.
fn hardware(a: &ValidateArgs, recipe: &Recipe) -> Result<(HardwareProfile, String)> {
    let hw_name = a.gpu.clone().unwrap_or_else(|| recipe.cluster.gpu.clone());
    let hw = load_profile(&hw_name).with_context(|| format!("hardware `{hw_name}`"))?;
    let source = if a.gpu.is_some() && hw_name.contains(['/', '.']) {
        format!("profile {hw_name}")
    } else {
        format!("built-in catalog entry `{hw_name}` (not calibrated)")
    };
    Ok((hw, source))
}

fn gpu_notes() -> Vec<String> {
    vec![
        "GPU runs: one rank per GPU (NCCL), cuDNN autotuning on (`cudnn.benchmark`, each convolution's algorithm timed at its first call; the warm-up steps absorb it); step time is wall time up to the step's one read-back of its scalars, which waits for its kernels; the measured peak is the CUDA caching allocator's peak allocated bytes, reset before every step. The plan's fragmentation margin is left out of the compared prediction: it is headroom for what the caching allocator reserves beyond its live blocks, which no allocated-bytes statistic includes. The data loader's batches stay in host memory and are not counted.".into(),
        "Phases on GPU: the phase timer waits for the device at the end of each top-level phase (a few extra synchronisations per step), so a phase is the wall time until its kernels finished. MFU is the plan's model FLOPs (forward + backward, no recompute) per step over the step time, against the device's dense peak in the plan's compute dtype.".into(),
    ]
}

/// The GPU this process sees and its libraries, plus the driver as
/// `nvidia-smi` reports it; `None` without a GPU.
fn describe_gpu() -> Option<String> {
    let mut d = executor::memstats::describe_cuda(0).ok()?;
    let smi = Command::new("nvidia-smi").args(["--query-gpu=driver_version", "--format=csv,noheader"]).output();
    if let Some(o) = smi.ok().filter(|o| o.status.success()) {
        let v = String::from_utf8_lossy(&o.stdout);
        if let Some(line) = v.lines().next().filter(|l| !l.trim().is_empty()) {
            d.push_str(&format!(", driver {}", line.trim()));
        }
    }
    Some(d)
}

fn write_report(report: &ValidationReport, out: &Path, check: bool, memory_tolerance: f64, start: Instant) -> Result<()> {
    if let Some(parent) = out.parent().filter(|p| !p.as_os_str().is_empty()) {
        std::fs::create_dir_all(parent).with_context(|| format!("creating {}", parent.display()))?;
    }
    let md_path = out.with_extension("md");
    let svg_path = out.with_extension("svg");
    let json_path = out.with_extension("json");
    let svg_name = svg_path.file_name().map(|s| s.to_string_lossy().to_string());
    std::fs::write(&svg_path, report.svg()).with_context(|| format!("writing {}", svg_path.display()))?;
    std::fs::write(&md_path, report.markdown(svg_name.as_deref())).with_context(|| format!("writing {}", md_path.display()))?;
    std::fs::write(&json_path, serde_json::to_string_pretty(report)? + "\n").with_context(|| format!("writing {}", json_path.display()))?;
    println!("{}", report.markdown(None));
    println!("wrote {}, {} and {} in {:.0} s", md_path.display(), svg_path.display(), json_path.display(), start.elapsed().as_secs_f64());
    let failures = report.memory_failures();
    if check && !failures.is_empty() {
        bail!("peak memory off by more than {:.0}%: {}", memory_tolerance * 100.0, failures.join("; "));
    }
    Ok(())
}

/// `validate --replay`: the stored measurements against fresh predictions.
fn replay(a: &ValidateArgs, path: &Path) -> Result<()> {
    let start = Instant::now();
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let old: ValidationReport = cost_models::config::parse_json(&text, &path.display().to_string())?;
    let recipe = match &old.recipe_config {
        Some(r) => r.clone(),
        None => Recipe::load(&old.recipe).with_context(|| format!("{}: no stored recipe, and `{}` does not load", path.display(), old.recipe))?,
    };
    let (hw, hardware_source) = hardware(a, &recipe)?;
    let mut rows = Vec::with_capacity(old.rows.len());
    for r in &old.rows {
        let v = Variant::parse(&r.variant).with_context(|| format!("{}: row `{}`", path.display(), r.variant))?;
        let (plan, _) = plan_variant(&recipe, &hw, &v)?;
        let mut row = Row::from_plan(&v, &plan, r.measured.clone(), r.note.clone());
        row.predicted_phases = Some(variant_phases(&recipe, &hw, &v)?);
        row.measured_phases = r.measured_phases;
        rows.push(row);
    }
    let stem = path.file_stem().map_or_else(|| "validate".into(), |s| s.to_string_lossy().into_owned());
    let out = a.out.clone().unwrap_or_else(|| Path::new("runs").join(format!("{stem}-replay")));
    let mut command = format!("seerscale validate --replay {}", path.display());
    if let Some(g) = &a.gpu {
        command.push_str(&format!(" --gpu {g}"));
    }
    command.push_str(&format!(" --out {}", out.display()));
    let mut notes = if hw.hardware.kind == DeviceKind::Gpu { gpu_notes() } else { Vec::new() };
    notes.push("Peak memory is predicted by `planner::memory` from the plan alone (no measured input); step and communication times come from the step simulator with the hardware above.".into());
    notes.push(format!(
        "Replayed: the measurements (peak, step time, phases, notes) are those stored in `{}`; the predictions are this planner's.",
        path.display()
    ));
    let report = ValidationReport {
        recipe: recipe.name.clone(),
        hardware: hw.hardware.name.clone(),
        hardware_source,
        command,
        rows,
        notes,
        recipe_config: Some(recipe),
        measured_with: Some(old.measured_with.clone().unwrap_or_else(|| old.command.clone())),
        ..old
    };
    write_report(&report, &out, a.check, a.memory_tolerance, start)
}

/// What one run of one variant measured, and what its round's profile
/// predicted.
struct Run {
    predicted_step_time_s: f64,
    predicted_exposed_comm_s: f64,
    predicted_phases: PhaseTimes,
    measured: Option<Measured>,
    /// Why the run failed or measured nothing.
    note: Option<String>,
    /// The host-speed probe around the run vs the calibration's reference.
    slowdown: Option<f64>,
    /// The plan's step time at the speed `slowdown` says the host had.
    probe_scaled_step_time_s: Option<f64>,
    phases: Option<PhaseTimes>,
}

/// Executes one variant's plan once (bracketed by the host-speed probe)
/// and reads back what its ranks measured.
#[allow(clippy::too_many_arguments)]
fn run_once(
    recipe: &Recipe,
    hw: &HardwareProfile,
    v: &Variant,
    plan_path: &Path,
    run_dir: &Path,
    threads: Option<usize>,
    data: &Path,
    a: &ValidateArgs,
) -> Result<Run> {
    let (before, failure, after) = if a.collect {
        (None, (!run_dir.is_dir()).then(|| format!("no run in {}", run_dir.display())), None)
    } else {
        let before = probe(hw)?;
        let failure = execute(plan_path, v, a.steps, threads, data, run_dir, Duration::from_secs(a.run_timeout_s.max(1)))?;
        (before, failure, probe(hw)?)
    };
    let slowdown = match (hw.measured.speed_probe, before, after) {
        (Some(r), Some(b), Some(a)) => Some(speed_probe::slowdown(r, b, a)),
        _ => None,
    };
    let probe_scaled_step_time_s = match slowdown {
        Some(f) => Some(plan_variant(recipe, &HardwareProfile { measured: hw.measured.slowed_by(f), ..hw.clone() }, v)?.0.predicted.step_time_s),
        None => None,
    };
    let (ss, missing) = samples(run_dir, v.world_size);
    let mut measured = summarize(&ss, a.warmup);
    let mut note = failure.or(missing);
    if measured.is_some() && (measured.as_ref().is_some_and(|m| m.steps == 0) || ss.iter().map(|s| s.step).max().unwrap_or(0) < a.warmup) {
        // Warm-up steps are not what the model predicts (optimiser state
        // appears in step 0): report the run as unmeasured.
        note = Some(format!("{}only warm-up steps ran, nothing measured", note.map(|n| format!("{n}; ")).unwrap_or_default()));
        measured = None;
    }
    let phases = std::fs::read_to_string(run_dir.join("train.log")).ok().and_then(|t| parse_phase_times(&t, a.warmup));
    let predicted = plan_variant(recipe, hw, v)?.0.predicted;
    Ok(Run {
        predicted_step_time_s: predicted.step_time_s,
        predicted_exposed_comm_s: predicted.exposed_comm_s,
        predicted_phases: variant_phases(recipe, hw, v)?,
        measured,
        note,
        slowdown,
        probe_scaled_step_time_s,
        phases,
    })
}

/// One host-speed probe reading, when the profile has a reference to
/// compare it with.
fn probe(hw: &HardwareProfile) -> Result<Option<Seconds>> {
    if hw.measured.speed_probe.is_none() {
        return Ok(None);
    }
    Ok(Some(speed_probe::measure(speed_probe::DURATION).context("running the host-speed probe")?))
}

/// The calibration that measures what `variants` need: every block at each
/// of their per-rank batches, largest-crop resolutions and precisions.
fn calibrate_command(recipe: &str, variants: &[Variant], out: &str) -> String {
    format!("seerscale {}", calibrate_args(recipe, variants, out).join(" "))
}

fn calibrate_args(recipe: &str, variants: &[Variant], out: &str) -> Vec<String> {
    let list = |mut v: Vec<String>| {
        v.dedup();
        v.join(",")
    };
    let mut batches: Vec<usize> = variants.iter().map(|v| v.batch_per_rank).collect();
    batches.sort_unstable();
    let mut crops: Vec<u64> = variants.iter().map(|v| v.resolution).collect();
    crops.sort_unstable();
    let mut dtypes: Vec<String> = variants.iter().map(|v| v.precision.to_string()).collect();
    dtypes.sort();
    vec![
        "calibrate".into(),
        "--recipe".into(),
        recipe.into(),
        "--batch".into(),
        list(batches.iter().map(|b| b.to_string()).collect()),
        "--largest-crop".into(),
        list(crops.iter().map(|c| c.to_string()).collect()),
        "--dtypes".into(),
        list(dtypes),
        "--out".into(),
        out.into(),
    ]
}

/// `--recalibrate`: one calibration round (`calibrate --rounds 1`, at the
/// threads per rank the runs use, its loader timed on the runs' images)
/// into `out`, loaded as this round's profile.
fn recalibrate(recipe: &str, variants: &[Variant], threads: Option<usize>, data: &Path, out: &Path) -> Result<HardwareProfile> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let log_path = out.with_extension("log");
    let log = std::fs::File::create(&log_path).with_context(|| format!("creating {}", log_path.display()))?;
    eprintln!("calibrating into {} (log {})", out.display(), log_path.display());
    let mut cmd = Command::new(exe);
    cmd.args(calibrate_args(recipe, variants, &out.to_string_lossy()))
        .args(["--rounds", "1"])
        .arg("--data")
        .arg(data)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    if let Some(t) = threads {
        cmd.arg("--threads").arg(t.to_string());
    }
    let status = cmd.status().context("starting `seerscale calibrate`")?;
    if !status.success() {
        bail!("`seerscale calibrate` for --recalibrate exited with {status}; see {}", log_path.display());
    }
    load_profile(&out.to_string_lossy()).with_context(|| format!("loading {}", out.display()))
}

/// Threads per rank the profile's compute rates were measured with: the
/// `[measured] threads_per_rank` field, else the "N thread(s) per rank" that
/// older calibrated profiles put in their name; None for catalog entries.
fn profile_threads(hw: &cost_models::hardware::HardwareProfile) -> Option<usize> {
    hw.measured.threads_per_rank.or_else(|| {
        let name = &hw.hardware.name;
        let i = name.find(" thread(s) per rank")?;
        name[..i].rsplit(|c: char| !c.is_ascii_digit()).next()?.parse().ok()
    })
}
