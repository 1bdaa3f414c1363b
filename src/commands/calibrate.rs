//! `seerscale calibrate`: measure this machine and write a hardware profile
//! (`[hardware]` = the catalog entry with measured memory numbers,
//! `[measured]` = achieved op rates, memory-bound bandwidth, per-op overhead
//! and collective alpha/beta) that `plan` / `validate` accept by path.
//!
//! Compute is measured in this process. Collectives need a real process
//! group, so this command re-launches itself as `--nproc` local ranks (Gloo
//! over 127.0.0.1, the same launcher `train` uses); rank 0 hands its samples
//! back through a JSON file.

use super::synthetic_images::synthetic_images;
use anyhow::{bail, Context, Result};
use clap::Args;
use cost_models::config::ModelConfig;
use cost_models::graph::Workload;
use cost_models::hardware::{load_hardware, DeviceKind};
use cost_models::DType;
use executor::block_timing;
use executor::calibrate::{
    self, BlockMeasurement, BusySample, CalibrationReport, CollectiveOptions, CollectiveSample, ComputeOptions, HostInfo, HostRound, LoaderMeasurement,
    SpeedProbes,
};
use executor::dist::{Backend, GroupConfig, ProcessGroup};
use executor::launch::{launch_local, LaunchOptions, RankEnv};
use runspec::recipe::Recipe;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// `--out` unless given (with `--nccl-tests`: `runs/calibration/<base>-nccl.toml`).
const DEFAULT_OUT: &str = "runs/calibration/cpu-local.toml";

#[derive(Args)]
pub struct CalibrateArgs {
    /// Where to write the profile (TOML); the full measurements go next to
    /// it with a `.json` extension.
    #[arg(long, default_value = DEFAULT_OUT)]
    pub out: PathBuf,
    /// A few seconds instead of about a minute: fewer shapes, sizes, repeats.
    #[arg(long)]
    pub quick: bool,
    /// Print every measurement as it is taken and every number at the end
    /// (they are in the `.json` next to the profile either way).
    #[arg(long)]
    pub verbose: bool,
    /// Intra-op threads for the compute measurements (default: cores /
    /// --nproc, what each rank of an --nproc-rank job on this machine gets).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Ranks for the collective measurements (1 = skip collectives;
    /// default 2 on CPU, 1 on CUDA, where collectives are not calibrated).
    #[arg(long)]
    pub nproc: Option<usize>,
    /// Where the executor's ops run: `cpu`, or `cuda` / `cuda:N` (one GPU:
    /// host issue and fixed costs, copy bandwidth and, with --recipe, whole
    /// blocks; op rates then come from the catalog's kernel model).
    #[arg(long, default_value = "cpu", value_parser = parse_device)]
    pub device: executor::Device,
    /// Catalog entry (or spec file) the measurements are layered on
    /// (default `cpu-local`; on CUDA, name the GPU's entry, e.g. `h200-141gb`).
    #[arg(long)]
    pub base: Option<String>,
    /// Dtypes to measure compute in.
    #[arg(long, value_delimiter = ',', default_value = "fp32,bf16", value_parser = super::model::parse_dtype)]
    pub dtypes: Vec<DType>,
    /// Also time every block of this recipe's model through the executor's
    /// block code, at the recipe's crops, for each --batch x --largest-crop
    /// x --dtypes: the planner then uses these block times instead of its
    /// per-op estimate for blocks with the same shapes.
    #[arg(long)]
    pub recipe: Option<String>,
    /// Per-rank batches to time the blocks at (default: the recipe's).
    #[arg(long, value_delimiter = ',', requires = "recipe")]
    pub batch: Vec<usize>,
    /// Resolutions of the largest crop group to time the blocks at, the
    /// other groups scaled alike (default: the recipe's crops).
    #[arg(long, value_delimiter = ',', requires = "recipe")]
    pub largest_crop: Vec<u64>,
    /// Time every block workload this many times, in interleaved rounds
    /// (all workloads, then all again), and keep each block's median: the
    /// host's speed drifts by tens of percent over tens of seconds, and one
    /// pass puts a workload wherever that drift happened to be. The host
    /// and fixed per-op costs are re-measured in each round and the
    /// busy-rank collectives fitted per round, the medians kept (default 3,
    /// or 1 with --quick).
    #[arg(long)]
    pub rounds: Option<usize>,
    /// Image folder to time the data loader on (with --recipe): its CPU
    /// time per image at each crop set, which the planner charges to the
    /// step when the ranks fill the cores. Decoding and cropping cost what
    /// the images make them, so point it at the training images. Default:
    /// validate's synthetic images, written to `images/` next to --out.
    #[arg(long, requires = "recipe")]
    pub data: Option<PathBuf>,
    /// Kill the collective ranks after this many seconds.
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
    /// Measure nothing: rebuild the profile (`--out`) from the measurements
    /// a calibration stored next to its profile (its `.json`), with this
    /// version's profile building, on `--base`.
    #[arg(long, value_name = "REPORT.json", conflicts_with_all = ["recipe", "collectives_worker"])]
    pub replay: Option<PathBuf>,
    /// Measure nothing: fit these nccl-tests logs (all_reduce_perf,
    /// all_gather_perf, reduce_scatter_perf output) into the collectives of
    /// a profile on `--base` (a GPU catalog entry); one log per collective
    /// and scope (one node, or several), the most ranks kept where several.
    #[arg(long, value_name = "LOG", num_args = 1.., conflicts_with_all = ["recipe", "replay", "collectives_worker"])]
    pub nccl_tests: Vec<PathBuf>,
    /// Internal: run as one collective-measuring rank and (rank 0) write the
    /// samples to this JSON file.
    #[arg(long, hide = true)]
    pub collectives_worker: Option<PathBuf>,
}

/// `cpu`, `cuda` or `cuda:N`.
pub fn parse_device(s: &str) -> Result<executor::Device, String> {
    match s {
        "cpu" => Ok(executor::Device::Cpu),
        "cuda" => Ok(executor::Device::Cuda(0)),
        _ => s.strip_prefix("cuda:").and_then(|n| n.parse().ok()).map(executor::Device::Cuda).ok_or_else(|| format!("`{s}`: expected cpu, cuda or cuda:N")),
    }
}

pub fn run(args: &CalibrateArgs) -> Result<()> {
    if let Some(path) = &args.collectives_worker {
        return collectives_rank(args, path);
    }
    let start = Instant::now();
    if let Some(path) = &args.replay {
        return replay(args, path, start);
    }
    if !args.nccl_tests.is_empty() {
        return nccl_tests(args, start);
    }
    let gpu = args.device != executor::Device::Cpu;
    let base_name = args.base.clone().unwrap_or_else(|| "cpu-local".into());
    let base = load_hardware(&base_name).with_context(|| format!("loading base hardware `{base_name}`"))?;
    match (gpu, base.kind) {
        (true, cost_models::hardware::DeviceKind::Cpu) => {
            bail!(
                "--device {}: --base `{base_name}` is a CPU entry; name the GPU's catalog entry (e.g. --base h200-141gb)",
                calibrate::device_label(args.device)
            )
        }
        (false, cost_models::hardware::DeviceKind::Gpu) => bail!("--base `{base_name}` is a GPU entry: add --device cuda to measure on the GPU"),
        _ => {}
    }
    if let executor::Device::Cuda(d) = args.device {
        let n = executor::cuda_device_count();
        if d >= n {
            bail!("--device cuda:{d}: this machine has {n} visible CUDA device(s)");
        }
    }
    let nproc = args.nproc.unwrap_or(if gpu { 1 } else { 2 });
    if nproc == 0 {
        bail!("--nproc must be >= 1");
    }
    if gpu && nproc > 1 {
        bail!("--nproc {nproc}: collectives are calibrated over Gloo on CPU only; on CUDA use --nproc 1");
    }
    let host = HostInfo::detect();
    let threads = args.threads.unwrap_or((host.cores / nproc).max(1));
    if threads == 0 {
        bail!("--threads must be >= 1");
    }
    if args.dtypes.is_empty() {
        bail!("--dtypes is empty");
    }

    let block_workloads = args.recipe.as_deref().map(|r| block_workloads(args, r)).transpose()?;
    rounds(args)?;

    let mut copts = ComputeOptions::new(args.quick, threads);
    copts.dtypes = args.dtypes.clone();
    copts.device = args.device;
    if gpu {
        copts.cases.clear();
        eprintln!("calibrate: host issue and fixed costs on {} ({} host thread(s))", calibrate::device_label(args.device), threads);
    } else {
        eprintln!("calibrate: compute on {} thread(s), {} shapes x {} dtype(s)", threads, copts.cases.len(), copts.dtypes.len());
    }
    let mut speed = SpeedProbes::default();
    take_probe(&mut speed, args.verbose)?;
    let verbose = args.verbose;
    let compute = calibrate::measure_compute(&copts, |m| detail(verbose, m)).context("measuring compute")?;
    speed.compute_s = take_probe(&mut speed, args.verbose)?;

    let (blocks, host_rounds, loader) = measure_rounds(args, block_workloads.as_ref(), threads, &mut speed)?;

    let (collectives, fits, busy) = if nproc >= 2 {
        eprintln!("calibrate: collectives over {nproc} Gloo ranks on 127.0.0.1 (idle, then right after compute)");
        let samples = launch_collectives(args, nproc)?;
        let fits = calibrate::fit_collectives(&samples.idle).context("fitting collective alpha/beta")?;
        (samples.idle, fits, samples.busy)
    } else {
        eprintln!("calibrate: --nproc 1, collectives not measured (the profile keeps the catalog's links)");
        (Vec::new(), Vec::new(), Vec::new())
    };
    let report = CalibrationReport {
        host,
        quick: args.quick,
        compute,
        collectives,
        collective_fits: fits,
        collective_world_size: if nproc >= 2 { nproc } else { 0 },
        blocks,
        busy_collectives: busy,
        speed: Some(speed),
        host_rounds,
        loader,
    };

    let toml = report.profile_toml(&base).context("building the profile")?;
    if let Some(dir) = args.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_atomic(&args.out, toml.as_bytes())?;
    let json_path = args.out.with_extension("json");
    write_atomic(&json_path, serde_json::to_string_pretty(&report)?.as_bytes())?;
    // Prove the file is what plan/validate will read.
    cost_models::hardware::load_profile(&args.out.to_string_lossy()).with_context(|| format!("re-reading {}", args.out.display()))?;

    for l in if args.verbose { report.summary() } else { report.brief() } {
        println!("{l}");
    }
    println!("wrote {} (profile) and {} (all measurements) in {:.1} s", args.out.display(), json_path.display(), start.elapsed().as_secs_f64());
    if !args.verbose {
        println!("(--verbose prints every measurement)");
    }
    Ok(())
}

/// `calibrate --nccl-tests`: a profile on `--base` whose collectives are
/// fitted from a cluster's own nccl-tests logs, with each fit's error.
fn nccl_tests(args: &CalibrateArgs, start: Instant) -> Result<()> {
    use cost_models::collectives::CollectiveProfile;
    use cost_models::hardware::{HardwareProfile, Measured};
    use cost_models::nccl_tests::{fit, parse, test_name, NcclFitReport};
    let base_name = args.base.clone().context("--nccl-tests: name the GPU the logs were measured on with --base (e.g. --base a100-40gb)")?;
    let base = load_hardware(&base_name).with_context(|| format!("loading base hardware `{base_name}`"))?;
    if base.kind != cost_models::hardware::DeviceKind::Gpu {
        bail!("--nccl-tests: --base `{base_name}` is a CPU entry; name the GPU's catalog entry");
    }
    let out = if args.out == Path::new(DEFAULT_OUT) { PathBuf::from(format!("runs/calibration/{base_name}-nccl.toml")) } else { args.out.clone() };
    let mut kept: Vec<(NcclFitReport, String)> = Vec::new();
    for path in &args.nccl_tests {
        let name = path.display().to_string();
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {name}"))?;
        let log = parse(&text, &name)?;
        let f = fit(&log, &name)?;
        let (median, max) = f.error();
        println!(
            "{name}: {} over {} ranks on {} node(s), {}: alpha {:.2} us, bus bandwidth {:.1} GB/s; fit error median {:.1} %, max {:.1} % over {} sizes",
            test_name(log.collective),
            log.ranks,
            log.nodes,
            if f.fit.scope == cost_models::collectives::Scope::IntraNode { "inside a node" } else { "across nodes" },
            f.fit.alpha.0 * 1e6,
            f.fit.bus_bandwidth.0 / 1e9,
            100.0 * median,
            100.0 * max,
            f.residuals.len()
        );
        match kept.iter_mut().find(|(k, _)| k.fit.collective == f.fit.collective && k.fit.scope == f.fit.scope) {
            Some(k) if k.0.ranks >= f.ranks => println!("  (kept {}: more ranks)", k.1),
            Some(k) => *k = (f, name),
            None => kept.push((f, name)),
        }
    }
    let sources: Vec<&str> = kept.iter().map(|k| k.1.as_str()).collect();
    let measured = Measured {
        source: Some(format!("nccl-tests logs fitted by `seerscale calibrate --nccl-tests`: {}", sources.join(", "))),
        collectives: CollectiveProfile { fits: kept.into_iter().map(|k| k.0.fit).collect(), busy: Vec::new() },
        ..Measured::default()
    };
    let toml = HardwareProfile { hardware: base, measured }.to_toml_string()?;
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    write_atomic(&out, toml.as_bytes())?;
    cost_models::hardware::load_profile(&out.to_string_lossy()).with_context(|| format!("re-reading {}", out.display()))?;
    println!("wrote {} in {:.1} s: plan, sweep and comm take it as --gpu {}", out.display(), start.elapsed().as_secs_f64(), out.display());
    Ok(())
}

/// `calibrate --replay`: the profile of stored measurements.
fn replay(args: &CalibrateArgs, path: &Path, start: Instant) -> Result<()> {
    let text = std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
    let report: CalibrationReport = cost_models::config::parse_json(&text, &path.display().to_string())?;
    let base_name = args.base.clone().unwrap_or_else(|| "cpu-local".into());
    let base = load_hardware(&base_name).with_context(|| format!("loading base hardware `{base_name}`"))?;
    let toml = report.profile_toml(&base).context("building the profile")?;
    write_atomic(&args.out, toml.as_bytes())?;
    cost_models::hardware::load_profile(&args.out.to_string_lossy()).with_context(|| format!("re-reading {}", args.out.display()))?;
    println!("wrote {} from {} in {:.1} s", args.out.display(), path.display(), start.elapsed().as_secs_f64());
    Ok(())
}

/// The block workloads `--recipe` asks for: its model and, per largest-crop
/// resolution x batch x dtype, the workload. Checked before anything is
/// measured, so a bad flag costs nothing.
struct BlockWorkloads {
    model: ModelConfig,
    workloads: Vec<Workload>,
    /// One data-loader timing per crop set.
    loader: Vec<LoaderCase>,
    /// The folder the loader reads.
    data: PathBuf,
}

struct LoaderCase {
    crops: String,
    augment: executor::augment::AugmentConfig,
    images: usize,
}

fn block_workloads(args: &CalibrateArgs, recipe: &str) -> Result<BlockWorkloads> {
    let recipe = Recipe::load(recipe).with_context(|| format!("loading recipe `{recipe}`"))?;
    let model = ModelConfig::load(&recipe.model).with_context(|| format!("loading model `{}` of recipe `{}`", recipe.model, recipe.name))?;
    let batches = if args.batch.is_empty() { vec![recipe.cluster.batch_per_gpu] } else { args.batch.clone() };
    let crops = if args.largest_crop.is_empty() { vec![recipe.largest_crop()] } else { args.largest_crop.clone() };
    if let Some(b) = batches.iter().find(|&&b| b == 0) {
        bail!("--batch {b}: a batch must be at least 1 image");
    }
    if let Some(px) = crops.iter().find(|&&px| !(8..=1024).contains(&px)) {
        bail!("--largest-crop {px}: must be within 8..=1024 px");
    }
    let data = match &args.data {
        Some(d) => {
            executor::data::ImageFolder::open(d).with_context(|| format!("--data {}", d.display()))?;
            d.clone()
        }
        None => args.out.parent().unwrap_or(Path::new(".")).join("images"),
    };
    let mut workloads = Vec::new();
    let mut loader = Vec::new();
    for &px in &crops {
        let r = recipe.with_largest_crop(px).with_context(|| format!("recipe `{}` has no crops", recipe.name))?;
        for &images in &batches {
            for &dtype in &args.dtypes {
                workloads.push(Workload { images: images as u64, crops: r.crop_groups(), dtype });
            }
        }
        let crops = cost_models::graph::crops_label(&r.crop_groups());
        loader.push(LoaderCase { crops, augment: executor::train::augment_for(&r), images: batches[0] });
    }
    Ok(BlockWorkloads { model, workloads, loader, data })
}

/// One host-speed probe reading, logged; the mean with the one before.
fn take_probe(speed: &mut SpeedProbes, verbose: bool) -> Result<f64> {
    let now = executor::speed_probe::measure(executor::speed_probe::DURATION).context("running the host-speed probe")?;
    let mean = speed.record(now.0);
    detail(verbose, &format!("host-speed probe {:.1} µs", speed.readings_s.last().copied().unwrap_or(0.0) * 1e6));
    Ok(mean)
}

/// The `--rounds` rounds after the compute pass: each round times every
/// block workload, and rounds 2.. first re-measure the host and fixed
/// costs (round 1's are the compute pass's), each with the host speed
/// while it ran (the profile keeps the medians over rounds).
fn measure_rounds(
    args: &CalibrateArgs,
    blocks: Option<&BlockWorkloads>,
    threads: usize,
    speed: &mut SpeedProbes,
) -> Result<(Vec<BlockMeasurement>, Vec<HostRound>, Vec<LoaderMeasurement>)> {
    let budget = if args.quick { calibrate::Budget::quick() } else { calibrate::Budget::full() };
    let rounds = rounds(args)?;
    if let Some(b) = blocks.filter(|_| args.data.is_none()) {
        synthetic_images(&b.data)?;
    }
    let (mut out, mut hosts, mut loader) = (Vec::new(), Vec::new(), Vec::new());
    for round in 1..=rounds {
        if round > 1 {
            eprintln!("calibrate: host and fixed costs (round {round}/{rounds})");
            let (host, fixed) = calibrate::measure_host_round(&budget, threads, args.device).context("measuring host costs")?;
            let probe = take_probe(speed, args.verbose)?;
            detail(args.verbose, &format!("small op {:.2} µs, backward call {:.1} µs", host.small_op.median_s * 1e6, host.backward_call_s * 1e6));
            hosts.push(HostRound { host, fixed, probe_s: Some(probe) });
        }
        // Padded channels too where the planner may choose them: on a GPU,
        // for a model whose widths padding changes.
        let kind = if args.device == executor::Device::Cpu { DeviceKind::Cpu } else { DeviceKind::Gpu };
        let paddings = |b: &BlockWorkloads| cost_models::padding::worth_trying(&b.model, kind);
        for (b, w, padding) in blocks.iter().flat_map(|b| b.workloads.iter().flat_map(move |w| paddings(b).into_iter().map(move |p| (b, w, p)))) {
            let label = block_timing::workload_label(w);
            let pad = if padding.is_on() { ", channels padded" } else { "" };
            eprintln!("calibrate: blocks of {} at {label}{pad} (round {round}/{rounds})", b.model.name);
            let mut m = block_timing::measure_blocks(&b.model, w, padding, &budget, threads, args.device, |m| detail(args.verbose, m))
                .with_context(|| format!("timing the blocks of {} at {label}{pad}", b.model.name))?;
            let probe = take_probe(speed, args.verbose)?;
            // GPU kernels do not run at the host's speed: only CPU block
            // times are put on the probe's scale.
            for x in m.iter_mut().filter(|_| args.device == executor::Device::Cpu) {
                x.probe_s = Some(probe);
            }
            out.extend(m);
        }
        if let Some(b) = blocks {
            for c in &b.loader {
                let batches = if args.quick { 16 } else { 48 };
                let mut m = calibrate::measure_loader(&b.data, c.augment.clone(), c.crops.clone(), c.images, batches).context("timing the data loader")?;
                m.probe_s = Some(take_probe(speed, args.verbose)?);
                detail(args.verbose, &format!("loader {} over {}: {:.1} µs per image (round {round}/{rounds})", c.crops, b.data.display(), m.image_s() * 1e6));
                loader.push(m);
            }
        }
    }
    Ok((out, hosts, loader))
}

fn rounds(args: &CalibrateArgs) -> Result<usize> {
    match args.rounds {
        Some(0) => bail!("--rounds must be at least 1"),
        Some(r) => Ok(r),
        None => Ok(if args.quick { 1 } else { 3 }),
    }
}

/// What the collective ranks hand back.
#[derive(serde::Serialize, serde::Deserialize)]
struct CollectiveSamples {
    idle: Vec<CollectiveSample>,
    busy: Vec<BusySample>,
}

/// Starts `--nproc` copies of this program as collective ranks and reads
/// rank 0's samples back.
fn launch_collectives(args: &CalibrateArgs, nproc: usize) -> Result<CollectiveSamples> {
    let exe = std::env::current_exe().context("cannot find this program's path")?;
    let tmp = args.out.with_extension(format!("collectives-{}.json", std::process::id()));
    if let Some(dir) = tmp.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    let mut child_args: Vec<OsString> = vec!["calibrate".into(), "--collectives-worker".into(), tmp.clone().into_os_string()];
    if args.quick {
        child_args.push("--quick".into());
    }
    child_args.extend(["--rounds".into(), rounds(args)?.to_string().into()]);
    let timeout = Duration::from_secs(args.timeout_s);
    child_args.extend(["--timeout-s".into(), args.timeout_s.to_string().into()]);
    let opts = LaunchOptions {
        deadline: Some(timeout + Duration::from_secs(10)),
        grace: Duration::from_secs(5),
        // Collectives do not need intra-op threads; keep ranks from spinning.
        env: vec![("OMP_NUM_THREADS".into(), "1".into())],
        ..LaunchOptions::local(nproc)
    };
    launch_local(&exe, &child_args, &opts).context("collective ranks")?;
    let text = std::fs::read_to_string(&tmp).with_context(|| format!("rank 0 wrote no samples to {}", tmp.display()))?;
    std::fs::remove_file(&tmp).ok();
    serde_json::from_str(&text).with_context(|| format!("parsing {}", tmp.display()))
}

/// One rank: join the group, measure, rank 0 writes the (max-over-ranks) samples.
fn collectives_rank(args: &CalibrateArgs, path: &Path) -> Result<()> {
    let env = RankEnv::from_env()?.context("--collectives-worker runs under the launcher (RANK/WORLD_SIZE/MASTER_* unset)")?;
    let pg = ProcessGroup::new(&GroupConfig {
        master_addr: env.master_addr.clone(),
        master_port: env.master_port,
        rank: env.rank,
        world_size: env.world_size,
        backend: Backend::Gloo,
        timeout: Duration::from_secs(args.timeout_s),
    })?;
    let opts = CollectiveOptions::new(args.quick);
    let idle = calibrate::measure_collectives(&pg, &opts)?;
    let mut busy = Vec::new();
    for round in 0..rounds(args)? {
        busy.extend(calibrate::measure_busy_collectives(&pg, &opts, round)?);
    }
    if env.rank == 0 {
        write_atomic(path, serde_json::to_string(&CollectiveSamples { idle, busy })?.as_bytes())?;
    }
    Ok(())
}

/// Write then rename, so a reader never sees half a file.
/// One measurement as it is taken, with `--verbose`.
fn detail(verbose: bool, what: &str) {
    if verbose {
        eprintln!("calibrate:   {what}");
    }
}

fn write_atomic(path: &Path, bytes: &[u8]) -> Result<()> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let mut tmp = tempfile::NamedTempFile::new_in(dir).with_context(|| format!("writing beside {}", path.display()))?;
    std::io::Write::write_all(&mut tmp, bytes).with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(path).with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}
