//! `seerscale sweep`: the best plan at every cluster size (and GPU type),
//! the Pareto frontier over (GPUs, days, cost), optionally as an SVG.

use crate::commands::plan::{batch_policy, hardware_list, progress_bar};
use anyhow::{Context, Result};
use clap::Args;
use planner::pareto::svg;
use planner::recipe::Recipe;
use planner::search::{GpuCount, SearchSpace, Searcher, DEFAULT_MAX_GLOBAL_BATCH};
use planner::sweep::{rows_of, Sweep};
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    /// Built-in recipe or path to a recipe TOML.
    #[arg(long)]
    pub recipe: String,
    /// GPU type (id or path), or `all` for every built-in GPU (default: the recipe's).
    #[arg(long)]
    pub gpu: Option<String>,
    #[arg(long, default_value_t = 1)]
    pub min_gpus: usize,
    #[arg(long, default_value_t = 1024)]
    pub max_gpus: usize,
    /// Fix the per-GPU batch.
    #[arg(long, conflicts_with = "global_batch")]
    pub batch: Option<usize>,
    /// Fix the global batch (cluster sizes that do not divide it are skipped).
    #[arg(long)]
    pub global_batch: Option<usize>,
    #[arg(long, default_value_t = DEFAULT_MAX_GLOBAL_BATCH)]
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
    pub precision: Vec<cost_models::DType>,
    /// Print JSON (rows and frontier) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write the Pareto plot (days against GPUs) here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

pub fn run(a: &SweepArgs) -> Result<()> {
    let recipe = Recipe::load(&a.recipe)?;
    anyhow::ensure!(a.min_gpus >= 1 && a.min_gpus <= a.max_gpus, "need 1 <= --min-gpus <= --max-gpus");
    if a.price.is_some_and(|p| !(p.is_finite() && p >= 0.0)) {
        anyhow::bail!("--price must be a non-negative number");
    }
    let hardware = hardware_list(a.gpu.as_deref(), &recipe, a.price)?;
    let batch = batch_policy(a.batch, a.global_batch, a.max_global_batch, &recipe)?;
    let mut space = SearchSpace::full(hardware, GpuCount::Range { min: a.min_gpus, max: a.max_gpus }, batch);
    space.precisions = super::plan::precisions(&a.precision, &recipe);
    space.exhaustive = a.exhaustive;
    anyhow::ensure!((0.0..0.9).contains(&a.headroom), "--headroom must be in [0, 0.9)");
    space.headroom = a.headroom;
    let mut s = Searcher::new(&recipe, space)?;
    let progress = progress_bar(s.points().len(), a.json);
    let outcomes = s.run(|done, _| {
        if let Some(p) = &progress {
            p.set_position(done as u64);
        }
    })?;
    if let Some(p) = progress {
        p.finish_and_clear();
    }
    let sweep = rows_of(&s, &recipe, &outcomes);
    if let Some(path) = &a.svg {
        let title = format!("{}: days to train {:.2e} images vs GPUs", recipe.name, recipe.data.total_images);
        std::fs::write(path, svg(&sweep.pareto_points(), &sweep.frontier, &title)).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&sweep)?);
    } else {
        print_table(&sweep, &recipe);
        if let Some(path) = &a.svg {
            println!("wrote {}", path.display());
        }
    }
    if !sweep.rows.iter().any(|r| r.fits) {
        anyhow::bail!("no cluster size fits: {}", s.explain_infeasible(&outcomes));
    }
    Ok(())
}

fn print_table(s: &Sweep, recipe: &Recipe) {
    println!("{}: best plan per cluster size ({:.2e} images); * = Pareto frontier (GPUs, days, cost)", recipe.name, recipe.data.total_images);
    println!(
        "  {:<11} {:>5} {:>4}  {:<10} {:<5} {:>5} {:>7} {:>5}  {:>9} {:>8} {:>8} {:>6} {:>9} {:>11}",
        "gpu", "GPUs", "fits", "wrapping", "prec", "batch", "reshard", "ckpt", "peak GiB", "step s", "exposed", "MFU %", "days", "cost $"
    );
    for r in &s.rows {
        let mark = if r.pareto { "*" } else { " " };
        if r.fits {
            println!(
                "{mark} {:<11} {:>5} {:>4}  {:<10} {:<5} {:>5} {:>7} {:>5}  {:>9.2} {:>8.3} {:>8.3} {:>6.1} {:>9.2} {:>11.0}",
                r.gpu,
                r.gpus,
                "yes",
                r.wrapping.as_deref().unwrap_or("-"),
                r.precision.as_deref().unwrap_or("-"),
                r.batch_per_gpu.unwrap_or(0),
                if r.reshard_after_forward == Some(true) { "yes" } else { "no" },
                r.checkpoint.as_ref().map_or(0, |c| c.len()),
                r.peak_gib.unwrap_or(0.0),
                r.step_s.unwrap_or(0.0),
                r.exposed_comm_s.unwrap_or(0.0),
                100.0 * r.mfu.unwrap_or(0.0),
                r.days.unwrap_or(0.0),
                r.cost_usd.unwrap_or(0.0),
            );
        } else {
            println!("{mark} {:<11} {:>5} {:>4}  {}", r.gpu, r.gpus, "no", r.why.as_deref().unwrap_or(""));
        }
    }
    println!("Pareto frontier:");
    for &i in &s.frontier {
        let r = &s.rows[i];
        println!("  {} x {}: {:.2} days, ${:.0}", r.gpus, r.gpu, r.days.unwrap_or(0.0), r.cost_usd.unwrap_or(0.0));
    }
}
