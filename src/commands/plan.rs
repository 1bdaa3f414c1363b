//! `seerscale plan`: search the sharding/checkpointing/batch/cluster space
//! for a recipe and write the plan file the executor runs.

use anyhow::{bail, Context, Result};
use clap::Args;
use cost_models::hardware::{builtin_hardware, list_builtin_hardware, load_profile, DeviceKind, HardwareProfile};
use cost_models::padding::ChannelPadding;
use cost_models::DType;
use planner::build::{build_plan, reference_decisions};
use planner::memory::MemoryReport;
use planner::search::{
    choose, wrapping_name, BatchPolicy, Constraints, Evaluated, GpuCount, Objective, PointOutcome, SearchError, SearchSpace, Searcher, ShardingSpace,
    ALL_PRECISIONS, ALL_WRAPPINGS, DEFAULT_BATCHES, DEFAULT_BUCKET_MIB, DEFAULT_MAX_GLOBAL_BATCH,
};
use runspec::plan::Plan;
use runspec::recipe::Recipe;
use runspec::recipe::Wrapping;
use runspec::schedule::BackwardOrder;
use runspec::sharding::Sharding;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct PlanArgs {
    /// Built-in recipe (seer-10b, seer-256gf, tiny-cpu) or path to a recipe TOML.
    #[arg(long)]
    pub recipe: String,
    /// Number of GPUs. Default: the recipe's for `fastest` without budget
    /// or deadline; otherwise searched over whole nodes up to --max-gpus.
    #[arg(long)]
    pub gpus: Option<usize>,
    #[command(flatten)]
    pub search: SearchArgs,
    /// fastest | cheapest | fewest-gpus | fastest-under-budget
    #[arg(long, default_value = "fastest", value_parser = parse_objective)]
    pub objective: Objective,
    /// Spend at most this much (USD) on the whole run.
    #[arg(long)]
    pub budget_usd: Option<f64>,
    /// Finish within this many days.
    #[arg(long)]
    pub deadline_days: Option<f64>,
    /// Emit the recipe's fixed reference plan (e.g. VISSL's SEER settings)
    /// instead of searching.
    #[arg(long)]
    pub reference: bool,
    /// Write the plan file here (atomically).
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// Print the plan file (JSON) instead of the report.
    #[arg(long)]
    pub json: bool,
    /// Search each sharding strategy on its own and show their best plans
    /// side by side (the plan written is the winner's).
    #[arg(long, conflicts_with_all = ["reference", "sharding"])]
    pub by_sharding: bool,
}

/// The search flags `plan` and `sweep` share.
#[derive(Args, Debug, Clone)]
pub struct SearchArgs {
    /// GPU type: built-in id, path to a hardware/profile TOML, or `all` for
    /// every built-in GPU (default: the recipe's).
    #[arg(long)]
    pub gpu: Option<String>,
    /// Smallest cluster the search considers.
    #[arg(long, default_value_t = 1)]
    pub min_gpus: usize,
    /// Largest cluster the search considers.
    #[arg(long, default_value_t = 1024)]
    pub max_gpus: usize,
    /// Fix the per-GPU batch (images).
    #[arg(long, conflicts_with = "global_batch")]
    pub batch: Option<usize>,
    /// Fix the global batch (images per step; per-GPU = global / GPUs;
    /// cluster sizes that do not divide it are skipped).
    #[arg(long)]
    pub global_batch: Option<usize>,
    /// Search the per-GPU batch, and so the global batch, instead of
    /// holding the recipe's global batch (its GPUs x batch per GPU). SwAV's
    /// learning-rate schedule and optimisation change with the global batch.
    #[arg(long, conflicts_with_all = ["batch", "global_batch"])]
    pub free_batch: bool,
    /// With --free-batch: the largest global batch allowed.
    #[arg(long, default_value_t = DEFAULT_MAX_GLOBAL_BATCH, requires = "free_batch")]
    pub max_global_batch: usize,
    /// Override the price of one GPU-hour (USD).
    #[arg(long)]
    pub price: Option<f64>,
    /// Evaluate every combination (no bound-based skipping).
    #[arg(long)]
    pub exhaustive: bool,
    /// Leave this fraction of usable memory free: the allocator's real
    /// fragmentation varies run to run, so a plan at 99.9 % is a gamble.
    #[arg(long, default_value_t = 0.05)]
    pub headroom: f64,
    /// Only consider these compute precisions (comma-separated: fp32,bf16,fp16).
    #[arg(long, value_delimiter = ',', value_parser = crate::commands::model::parse_dtype)]
    pub precision: Vec<DType>,
    /// Plan for SyncBN (BN statistics all-reduced over the ranks), as if the
    /// recipe said `sync_bn = true`; `train` then runs it.
    #[arg(long)]
    pub sync_bn: bool,
    /// Fix the sharding: ddp, fsdp, or hybrid:S (shard groups of S GPUs,
    /// replicated across the rest). Default: search all of them.
    #[arg(long, value_parser = parse_sharding)]
    pub sharding: Option<Sharding>,
    /// Fix the FSDP unit wrapping: per-block, group-N (N consecutive
    /// blocks), per-stage, vissl or whole. Default: search them.
    #[arg(long, value_parser = parse_wrapping)]
    pub wrapping: Option<Wrapping>,
    /// Fix reshard-after-forward: on or off. Default: search both.
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub reshard_after_forward: Option<bool>,
    /// Fix the crop groups' order in backward: together, or by-crop-group
    /// (one group's whole trunk after the other's: less memory, one more
    /// reduction per unit and group). Default: search both.
    #[arg(long, value_parser = parse_backward_order)]
    pub backward_order: Option<BackwardOrder>,
    /// Fix channel padding: on pads every channel count (per group) to a
    /// multiple of 8 with zero channels, so tensor cores run unaligned
    /// widths such as SEER's (same model; more activation memory). Default:
    /// search both on a GPU where it changes a width, off otherwise.
    #[arg(long, value_name = "on|off", value_parser = parse_on_off)]
    pub channel_padding: Option<bool>,
    /// DDP's gradient bucket size in MiB (PyTorch's bucket_cap_mb).
    #[arg(long, default_value_t = DEFAULT_BUCKET_MIB)]
    pub bucket_mib: usize,
    /// GPU-hours between interruptions, per GPU (default: configs/reliability.toml, from Llama 3's 16k-GPU run).
    #[arg(long)]
    pub mtbf_gpu_hours: Option<f64>,
    /// Checkpoint write bandwidth per node to shared storage, GB/s.
    #[arg(long)]
    pub checkpoint_gb_s: Option<f64>,
    /// Seconds from a failure to training again (relaunch, rendezvous, load).
    #[arg(long)]
    pub restart_s: Option<f64>,
}

pub fn parse_sharding(s: &str) -> Result<Sharding, String> {
    s.parse::<Sharding>().map_err(|e| e.0)
}

pub fn parse_wrapping(s: &str) -> Result<Wrapping, String> {
    if let Some(n) = s.strip_prefix("group-") {
        return match n.parse::<usize>() {
            Ok(n) if n >= 1 => Ok(Wrapping::Group(n)),
            _ => Err(format!("`{s}`: group-N needs N >= 1 blocks per unit")),
        };
    }
    ALL_WRAPPINGS
        .into_iter()
        .find(|w| wrapping_name(*w) == s)
        .ok_or_else(|| format!("unknown wrapping `{s}` (expected per-block, group-N, per-stage, vissl or whole)"))
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("`{s}`: expected on or off")),
    }
}

fn parse_backward_order(s: &str) -> Result<BackwardOrder, String> {
    BackwardOrder::parse(&s.replace('-', "_")).ok_or_else(|| format!("unknown backward order `{s}` (expected together or by-crop-group)"))
}

impl SearchArgs {
    /// The recipe with these flags' overrides.
    pub fn recipe(&self, name: &str) -> Result<Recipe> {
        let mut r = Recipe::load(name)?;
        r.sync_bn |= self.sync_bn;
        Ok(r)
    }
}

impl SearchArgs {
    /// Checks the flags and builds the search space of `recipe` over `gpus`
    /// cluster sizes.
    pub fn space(&self, recipe: &Recipe, gpus: GpuCount) -> Result<SearchSpace> {
        if self.min_gpus == 0 {
            bail!("--min-gpus must be at least 1");
        }
        if self.min_gpus > self.max_gpus {
            bail!("--min-gpus {} is larger than --max-gpus {}", self.min_gpus, self.max_gpus);
        }
        if self.price.is_some_and(|p| !(p.is_finite() && p >= 0.0)) {
            bail!("--price must be a non-negative number");
        }
        anyhow::ensure!((0.0..0.9).contains(&self.headroom), "--headroom must be in [0, 0.9)");
        anyhow::ensure!(self.bucket_mib >= 1, "--bucket-mib must be at least 1");
        let hardware = hardware_list(self.gpu.as_deref(), recipe, self.price)?;
        let batch = self.batch_policy(recipe)?;
        let mut space = SearchSpace::full(hardware, gpus, batch);
        space.precisions = precisions(&self.precision, recipe);
        space.exhaustive = self.exhaustive;
        space.headroom = self.headroom;
        space.bucket_mib = self.bucket_mib;
        let r = &mut space.reliability;
        r.mtbf_gpu_hours = self.mtbf_gpu_hours.unwrap_or(r.mtbf_gpu_hours);
        r.checkpoint_gb_s_per_node = self.checkpoint_gb_s.unwrap_or(r.checkpoint_gb_s_per_node);
        r.restart_s = self.restart_s.unwrap_or(r.restart_s);
        for (v, f) in [(self.mtbf_gpu_hours, "--mtbf-gpu-hours"), (self.checkpoint_gb_s, "--checkpoint-gb-s")] {
            anyhow::ensure!(v.is_none_or(|x| x.is_finite() && x > 0.0), "{f} must be a positive number");
        }
        anyhow::ensure!(self.restart_s.is_none_or(|x| x.is_finite() && x >= 0.0), "--restart-s must be a non-negative number");
        if let Some(sh) = self.sharding {
            space.shardings = ShardingSpace::Only(sh);
        }
        if let Some(w) = self.wrapping {
            space.wrappings = vec![w];
        }
        if let Some(r) = self.reshard_after_forward {
            space.reshard = vec![r];
        }
        if let Some(o) = self.backward_order {
            space.backward_orders = vec![o];
        }
        if let Some(p) = self.channel_padding {
            space.paddings = vec![if p { ChannelPadding::On } else { ChannelPadding::Off }];
        }
        Ok(space)
    }

    /// Every cluster size between --min-gpus and --max-gpus.
    pub fn gpu_range(&self) -> GpuCount {
        GpuCount::Range { min: self.min_gpus, max: self.max_gpus }
    }
}

pub fn parse_objective(s: &str) -> Result<Objective, String> {
    Objective::parse(s).ok_or_else(|| format!("unknown objective `{s}` (expected fastest, cheapest, fewest-gpus or fastest-under-budget)"))
}

/// Hardware candidates: `--gpu` (id, path or `all`) or the recipe's, with `--price` applied.
pub fn hardware_list(gpu: Option<&str>, recipe: &Recipe, price: Option<f64>) -> Result<Vec<HardwareProfile>> {
    let mut list = match gpu {
        Some("all") => list_builtin_hardware()
            .into_iter()
            .map(builtin_hardware)
            .collect::<Result<Vec<_>, _>>()?
            .into_iter()
            .filter(|h| h.kind == DeviceKind::Gpu)
            .map(HardwareProfile::from_spec)
            .collect(),
        Some(g) => vec![load_profile(g)?],
        None => vec![load_profile(&recipe.cluster.gpu).with_context(|| format!("hardware `{}` named by recipe `{}`", recipe.cluster.gpu, recipe.name))?],
    };
    if let Some(p) = price {
        for h in &mut list {
            h.hardware = h.hardware.clone().with_price(p)?;
        }
    }
    Ok(list)
}

/// Precisions to search: the flag's, else the recipe's, else all.
pub fn precisions(flag: &[DType], recipe: &Recipe) -> Vec<DType> {
    if !flag.is_empty() {
        return flag.to_vec();
    }
    recipe.cluster.precisions.clone().unwrap_or_else(|| ALL_PRECISIONS.to_vec())
}

impl SearchArgs {
    /// Batch policy from the flags and the recipe (see `planner::search`):
    /// the recipe's global batch unless a flag sets or frees it.
    pub fn batch_policy(&self, recipe: &Recipe) -> Result<BatchPolicy> {
        Ok(match (self.batch, self.global_batch) {
            (Some(0), _) | (_, Some(0)) => bail!("--batch and --global-batch must be at least 1"),
            (Some(b), _) => BatchPolicy::PerGpu(b),
            (None, Some(g)) => BatchPolicy::Global(g),
            (None, None) if recipe.cluster.fixed_batch => BatchPolicy::PerGpu(recipe.cluster.batch_per_gpu),
            (None, None) if !self.free_batch => BatchPolicy::Global(recipe.global_batch()),
            (None, None) => {
                let mut c = DEFAULT_BATCHES.to_vec();
                if !c.contains(&recipe.cluster.batch_per_gpu) {
                    c.push(recipe.cluster.batch_per_gpu);
                    c.sort_unstable();
                }
                BatchPolicy::Search { candidates: c, max_global: self.max_global_batch }
            }
        })
    }
}

/// A line for a plan whose global batch is not the recipe's, else nothing.
pub fn global_batch_note(global: usize, recipe: &Recipe) -> Option<String> {
    (global != recipe.global_batch()).then(|| {
        format!(
            "note: global batch {global} is not the recipe's {} ({} GPUs x {}): SwAV's learning-rate schedule and optimisation change with it, so days and cost are for a different training run",
            recipe.global_batch(),
            recipe.cluster.gpus,
            recipe.cluster.batch_per_gpu
        )
    })
}

pub fn run(a: &PlanArgs) -> Result<()> {
    let recipe = a.search.recipe(&a.recipe)?;
    if a.gpus == Some(0) {
        bail!("--gpus must be at least 1");
    }
    for (v, f) in [(a.budget_usd, "--budget-usd"), (a.deadline_days, "--deadline-days")] {
        if v.is_some_and(|x| !(x.is_finite() && x >= 0.0)) {
            bail!("{f} must be a non-negative number");
        }
    }
    let constrained = a.budget_usd.is_some() || a.deadline_days.is_some();
    let gpus = match a.gpus {
        Some(n) => GpuCount::Fixed(n),
        None if a.reference || (a.objective == Objective::Fastest && !constrained) => GpuCount::Fixed(recipe.cluster.gpus),
        None => a.search.gpu_range(),
    };
    if let (Some(sh), GpuCount::Fixed(n)) = (a.search.sharding, &gpus) {
        sh.resolved(*n).check(*n).map_err(|e| anyhow::anyhow!("--sharding {sh}: {e}"))?;
    }
    let mut s = Searcher::new(&recipe, a.search.space(&recipe, gpus.clone())?)?;

    if a.reference {
        if s.space.hardware.len() != 1 {
            bail!("--reference needs one GPU type, not `all`");
        }
        let world = match gpus {
            GpuCount::Fixed(n) => n,
            GpuCount::Range { .. } => recipe.cluster.gpus,
        };
        let mut d = reference_decisions(&mut s, world).with_context(|| format!("recipe `{}` has no [reference_plan]", recipe.name))?;
        // The published plan at another batch, when asked for.
        match (a.search.batch, a.search.global_batch) {
            (Some(b), _) => d.batch_per_rank = b,
            (None, Some(g)) => {
                anyhow::ensure!(g.is_multiple_of(world), "--global-batch {g} is not a multiple of {world} GPUs");
                d.batch_per_rank = g / world;
            }
            (None, None) => {}
        }
        let e = s.evaluate(0, &d)?;
        let (plan, report) = build_plan(&mut s, &e)?;
        emit(a, &plan, &report, &[("reference".to_string(), &e)], &s)?;
        if !plan.predicted.fits {
            bail!("the reference plan does not fit: {}", report.shortfall(&e.rank_hardware.name));
        }
        return Ok(());
    }

    let constraints = Constraints { budget_usd: a.budget_usd, deadline_days: a.deadline_days };
    if a.by_sharding {
        return by_sharding(a, &recipe, gpus, constraints);
    }
    let outcomes = run_search(&mut s, a.json)?;
    let chosen = match choose(&outcomes, a.objective, constraints) {
        Ok(e) => e.clone(),
        Err(SearchError::Infeasible(_)) => bail!("no plan fits: {}", s.explain_infeasible(&outcomes)),
        Err(e) => return Err(e.into()),
    };
    let (plan, report) = build_plan(&mut s, &chosen)?;
    // The published plan on the same cluster, for comparison.
    let reference = match reference_decisions(&mut s, chosen.decisions.world_size) {
        Some(d) => {
            let h = chosen.hardware;
            s.evaluate(h, &d).ok()
        }
        None => None,
    };
    let mut cols = vec![("planner".to_string(), &chosen)];
    if let Some(r) = &reference {
        cols.push(("reference (published)".to_string(), r));
    }
    emit(a, &plan, &report, &cols, &s)
}

/// `--by-sharding`: the best plan of every strategy at the asked cluster
/// size, fastest first, and why the winner wins.
fn by_sharding(a: &PlanArgs, recipe: &Recipe, gpus: GpuCount, constraints: Constraints) -> Result<()> {
    let GpuCount::Fixed(world) = gpus else { bail!("--by-sharding compares strategies at one cluster size: pass --gpus") };
    let base = a.search.space(recipe, gpus.clone())?;
    if base.hardware.len() != 1 {
        bail!("--by-sharding needs one GPU type, not `all`");
    }
    let gpn = cost_models::hardware::HardwareSpec::gpus_per_node(&base.hardware[0].hardware).min(world).max(1);
    let mut best: Vec<(Evaluated, Searcher)> = Vec::new();
    let mut misses = Vec::new();
    for sh in ShardingSpace::Every.at(world, gpn) {
        let mut space = base.clone();
        space.shardings = ShardingSpace::Only(sh);
        let mut s = Searcher::new(recipe, space)?;
        let outcomes = run_search(&mut s, true)?;
        match choose(&outcomes, a.objective, constraints) {
            Ok(e) => {
                let e = e.clone();
                best.push((e, s));
            }
            Err(SearchError::Infeasible(_) | SearchError::Constraint(_)) => misses.push(format!("{}: {}", sh.resolved(world), s.explain_infeasible(&outcomes))),
            Err(e) => return Err(e.into()),
        }
    }
    if best.is_empty() {
        bail!("no strategy fits: {}", misses.join("; "));
    }
    best.sort_by(|x, y| x.0.throughput.days.total_cmp(&y.0.throughput.days));
    let (winner, rest) = best.split_first_mut().context("no plan")?;
    let (plan, report) = build_plan(&mut winner.1, &winner.0)?;
    let mut cols: Vec<(String, &Evaluated)> = vec![(winner.0.decisions.sharding.to_string(), &winner.0)];
    cols.extend(rest.iter().map(|(e, _)| (e.decisions.sharding.to_string(), e)));
    emit(a, &plan, &report, &cols, &winner.1)?;
    if !a.json {
        for (e, _) in rest.iter() {
            println!("{}", why_faster(&winner.0, e));
        }
        for m in &misses {
            println!("{m}");
        }
    }
    Ok(())
}

/// Seconds as reports print them ([`Seconds::readable`]).
fn secs(s: f64) -> String {
    cost_models::Seconds(s).readable()
}

/// `lo-hi` in `fmt`'s units, the unit said once where both share it:
/// `2.00-2.49 s`, `950.0 ms-1.100 s`.
fn range_text(lo: f64, hi: f64, fmt: fn(f64) -> String) -> String {
    let (a, b) = (fmt(lo), fmt(hi));
    match (a.split_once(' '), b.split_once(' ')) {
        (Some((na, ua)), Some((_, ub))) if ua == ub => format!("{na}-{b}"),
        _ => format!("{a}-{b}"),
    }
}

/// A span given in days, in days, hours, minutes or seconds.
fn span(days: f64) -> String {
    let s = days * 86_400.0;
    if !days.is_finite() {
        "never".into()
    } else if days >= 1.0 {
        format!("{days:.2} days")
    } else if s >= 3600.0 {
        format!("{:.1} h", s / 3600.0)
    } else if s >= 60.0 {
        format!("{:.1} min", s / 60.0)
    } else {
        format!("{s:.1} s")
    }
}

/// Dollars with the cents that matter: `$207297`, `$12.34`, `$0.0042`.
fn usd(x: f64) -> String {
    if x >= 100.0 {
        format!("${x:.0}")
    } else if x >= 0.01 || x == 0.0 {
        format!("${x:.2}")
    } else {
        format!("${x:.1e}")
    }
}

/// Why `w` beats `o`, from where their steps differ.
fn why_faster(w: &Evaluated, o: &Evaluated) -> String {
    let (ws, os) = (w.decisions.sharding, o.decisions.sharding);
    let per_image = |e: &Evaluated| e.step.step_time.0 / e.decisions.batch_per_rank as f64;
    let gain = 100.0 * (1.0 - per_image(w) / per_image(o));
    let exposed = |e: &Evaluated| e.step.exposed_comm.0 / e.decisions.batch_per_rank as f64 * 1e3;
    let compute = |e: &Evaluated| (e.step.compute_time.0 - e.step.recompute_time.0) / e.decisions.batch_per_rank as f64 * 1e3;
    let recompute = |e: &Evaluated| e.step.recompute_time.0 / e.decisions.batch_per_rank as f64 * 1e3;
    let parts = [
        ("exposed communication", exposed(o) - exposed(w), exposed(w), exposed(o)),
        ("recompute", recompute(o) - recompute(w), recompute(w), recompute(o)),
        ("compute", compute(o) - compute(w), compute(w), compute(o)),
    ];
    let (what, _, a, b) = parts.iter().copied().max_by(|x, y| x.1.total_cmp(&y.1)).unwrap_or(parts[0]);
    format!(
        "{ws} is {gain:.0} % faster per image than {os}: mostly {what}, {a:.1} vs {b:.1} ms per image per GPU ({ws}: {} img/GPU, {} checkpointed segments, peak {}; {os}: {} img/GPU, {} segments, peak {})",
        w.decisions.batch_per_rank,
        w.decisions.recompute_segments.len(),
        w.peak,
        o.decisions.batch_per_rank,
        o.decisions.recompute_segments.len(),
        o.peak
    )
}

/// Runs the search, with a progress bar on a terminal unless `quiet`.
pub fn run_search(s: &mut Searcher, quiet: bool) -> Result<Vec<PointOutcome>> {
    let progress = progress_bar(s.points().len(), quiet);
    let outcomes = s.run(|done, _| {
        if let Some(p) = &progress {
            p.set_position(done as u64);
        }
    })?;
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    Ok(outcomes)
}

fn progress_bar(len: usize, quiet: bool) -> Option<indicatif::ProgressBar> {
    if quiet || len < 16 || !std::io::stderr().is_terminal() {
        return None;
    }
    let p = indicatif::ProgressBar::new(len as u64);
    p.set_style(
        indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} cluster sizes ({elapsed})")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    p.set_message("searching");
    Some(p)
}

/// Prints the plan report: one column per plan in `cols` (the first is
/// the plan written), then the first plan's units, checkpoints and peak.
fn emit(a: &PlanArgs, plan: &Plan, report: &MemoryReport, cols: &[(String, &Evaluated)], s: &Searcher) -> Result<()> {
    let e = cols[0].1;
    if let Some(out) = &a.out {
        plan.save(out)?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(plan)?);
        return Ok(());
    }
    let names = s.block_names();
    let hw = &e.rank_hardware;
    println!("{} on {} x {}{}", plan.recipe.name, plan.world_size, hw.name, if a.reference { " (reference plan)" } else { "" });
    let row = |label: &str, f: &dyn Fn(&Evaluated) -> String| {
        let mut line = format!("  {label:<24}");
        for (_, c) in cols {
            line.push_str(&format!("{:<34}", f(c)));
        }
        println!("{}", line.trim_end());
    };
    let mut header = format!("  {:<24}", "");
    for (name, _) in cols {
        header.push_str(&format!("{name:<34}"));
    }
    println!("{}", header.trim_end());
    row("sharding", &|c| c.decisions.sharding.to_string());
    row("wrapping", &|c| wrapping_name(c.decisions.wrapping));
    row("precision (reduce)", &|c| format!("{} ({})", c.decisions.precision.compute, c.decisions.precision.reduce));
    row("batch/GPU (global)", &|c| format!("{} ({})", c.decisions.batch_per_rank, c.throughput.global_batch));
    row("reshard after forward", &|c| if c.decisions.reshard_after_forward { "yes".into() } else { "no".into() });
    row("checkpointed segments", &|c| format!("{}", c.decisions.recompute_segments.len()));
    row("crop groups in backward", &|c| match c.decisions.backward_order {
        BackwardOrder::Together => "together".into(),
        BackwardOrder::ByCropGroup => "one after another".into(),
    });
    row("channel padding", &|c| c.decisions.channel_padding.name().into());
    row("peak / usable", &|c| format!("{} / {}{}", c.peak, c.usable, if c.fits() { "" } else { "  DOES NOT FIT" }));
    let ranges: Vec<Option<planner::bands::StepRange>> = cols.iter().map(|(_, c)| planner::bands::range_of(&s.space.hardware[c.hardware], c)).collect();
    let range_of = |c: &Evaluated| cols.iter().position(|(_, x)| std::ptr::eq(*x, c)).and_then(|i| ranges[i].clone());
    row("step time", &|c| match range_of(c) {
        Some(r) => format!("{} ({})", secs(c.step.step_time.0), range_text(r.low.0, r.high.0, secs)),
        None => secs(c.step.step_time.0),
    });
    row("  compute (recompute)", &|c| format!("{} ({})", secs(c.step.compute_time.0), secs(c.step.recompute_time.0)));
    row("  comm (exposed)", &|c| format!("{} ({})", secs(c.step.comm_time.0), secs(c.step.exposed_comm.0)));
    if cols.iter().any(|(_, c)| c.step.sync_bn.0 > 0.0) {
        row("  SyncBN (in compute)", &|c| secs(c.step.sync_bn.0));
    }
    row("MFU (of dense peak)", &|c| {
        let dtype = c.decisions.precision.compute;
        let peak = c.rank_hardware.peak(dtype, cost_models::hardware::MathUnit::Conv).map_or(0.0, |p| p.0);
        let peak = if peak >= 1e12 { format!("{:.0} TFLOP/s", peak / 1e12) } else { format!("{:.0} GFLOP/s", peak / 1e9) };
        format!("{:.1} % of {peak} {dtype}", 100.0 * c.throughput.mfu)
    });
    row("images/s", &|c| format!("{:.0}", c.throughput.images_per_s));
    let crops = s.recipe.crop_groups();
    row("loader cores/GPU (has)", &|c| {
        let n = planner::loader::LoaderNeed::of(c.rank_hardware.host.as_ref(), &crops, c.decisions.batch_per_rank, c.step.step_time);
        match (n.cpu_cores_per_gpu, n.keeps_up()) {
            (Some(has), Some(true)) => format!("{:.2} ({has})", n.cores_per_gpu),
            (Some(has), _) => {
                format!("{:.2} ({has}): LIMITS the step to {}", n.cores_per_gpu, secs(n.loader_bound_step(c.decisions.batch_per_rank).map_or(0.0, |s| s.0)))
            }
            (None, _) => format!("{:.2} (unknown)", n.cores_per_gpu),
        }
    });
    row("checkpoint/rank (write)", &|c| {
        let f = &c.throughput.failures;
        format!("{} ({})", cost_models::Bytes(f.checkpoint_bytes_per_rank), secs(f.checkpoint_write_s))
    });
    row("checkpoint every", &|c| {
        let n = c.throughput.failures.checkpoint_interval_steps;
        let run = c.throughput.failure_free_days * 86_400.0 / c.step.step_time.0.max(1e-12);
        if n as f64 >= run {
            format!("{n} steps (> the run)")
        } else {
            format!("{n} steps")
        }
    });
    row("failures (job MTBF)", &|c| format!("{:.1} ({:.0} h)", c.throughput.failures.expected_failures, c.throughput.failures.mtbf_job_hours));
    row("goodput", &|c| format!("{:.1} %", 100.0 * c.throughput.failures.goodput));
    println!("  {:<24}{:.3e} images; failure-free in brackets", "time and cost to train", plan.recipe.data.total_images);
    row("  time", &|c| format!("{} ({})", span(c.throughput.days), span(c.throughput.failure_free_days)));
    row("  cost", &|c| format!("{} ({})", usd(c.throughput.cost_usd), usd(c.throughput.failure_free_cost_usd)));
    if ranges.iter().any(Option::is_some) {
        row("  range (step's band)", &|c| match range_of(c) {
            Some(r) => {
                let [d0, d1] = r.scale(c.step.step_time, c.throughput.days);
                let [c0, c1] = r.scale(c.step.step_time, c.throughput.cost_usd);
                format!("{}, {}-{}", range_text(d0, d1, span), usd(c0), usd(c1))
            }
            None => "-".into(),
        });
    }
    let sources: Vec<(&str, &str)> = cols.iter().zip(&ranges).filter_map(|((name, _), r)| r.as_ref().map(|r| (name.as_str(), r.source.as_str()))).collect();
    if let Some((_, first)) = sources.first().filter(|(_, first)| sources.iter().all(|(_, s)| s == first)) {
        println!("ranges: measured/predicted as docs/accuracy-gpu.md finds it: {first}");
    } else if !sources.is_empty() {
        println!("ranges: measured/predicted as docs/accuracy-gpu.md finds it:");
        for (name, source) in &sources {
            println!("  {name}: {source}");
        }
    } else if let Some(caveat) = cols.iter().find_map(|(_, c)| planner::bands::cpu_caveat(&s.space.hardware[c.hardware])) {
        println!("step time: {caveat}");
    }
    let mut noted = std::collections::BTreeSet::new();
    for (_, c) in cols {
        if let Some(note) = global_batch_note(c.throughput.global_batch, s.recipe).filter(|n| noted.insert(n.clone())) {
            println!("{note}");
        }
    }
    if a.by_sharding {
        // The comparison only: the winner's units and peak are `plan --sharding`'s.
        if let Some(out) = &a.out {
            println!("wrote {} ({})", out.display(), cols[0].0);
        }
        return Ok(());
    }
    println!();
    println!("units ({}): {}", plan.units.len(), plan.units.iter().map(|u| u.name.as_str()).collect::<Vec<_>>().join(", "));
    if e.decisions.recompute_segments.is_empty() {
        println!("checkpointing: none");
    } else {
        let segs: Vec<String> = e.decisions.recompute_segments.iter().map(|r| planner::sweep::segment_label(names, r)).collect();
        println!("checkpointing: {}", segs.join(", "));
    }
    println!("peak {} at `{}`; breakdown:", report.peak, report.timeline.get(report.peak_event).map_or("?", |ev| ev.label.as_str()));
    let mut cats: Vec<(&String, &cost_models::Bytes)> = report.breakdown.iter().filter(|(_, b)| b.0 > 0).collect();
    cats.sort_by(|x, y| y.1.cmp(x.1));
    for (k, b) in cats {
        println!("  {k:<20} {:>12}", b.to_string());
    }
    if let Some(out) = &a.out {
        println!("wrote {}", out.display());
    }
    Ok(())
}
