//! `seerscale sweep`: the best plan at every cluster size (and GPU type),
//! the Pareto frontier over (GPUs, days, cost), optionally as an SVG.

use crate::commands::plan::{run_search, SearchArgs};
use anyhow::{Context, Result};
use clap::Args;
use planner::pareto::svg;
use planner::recipe::Recipe;
use planner::search::Searcher;
use planner::sweep::{rows_of, Sweep};
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct SweepArgs {
    /// Built-in recipe or path to a recipe TOML.
    #[arg(long)]
    pub recipe: String,
    #[command(flatten)]
    pub search: SearchArgs,
    /// Print JSON (rows and frontier) instead of the table.
    #[arg(long)]
    pub json: bool,
    /// Write the Pareto plot (days against GPUs) here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

pub fn run(a: &SweepArgs) -> Result<()> {
    let recipe = a.search.recipe(&a.recipe)?;
    let mut s = Searcher::new(&recipe, a.search.space(&recipe, a.search.gpu_range())?)?;
    let outcomes = run_search(&mut s, a.json)?;
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
    println!(
        "{}: best plan per cluster size ({:.2e} images; days and cost include checkpoints and expected failures); * = Pareto frontier (GPUs, days, cost)",
        recipe.name, recipe.data.total_images
    );
    println!(
        "  {:<11} {:>5} {:>4}  {:<9} {:<10} {:<5} {:>5} {:>7} {:>5}  {:>9} {:>8} {:>8} {:>6} {:>8} {:>9} {:>11}",
        "gpu",
        "GPUs",
        "fits",
        "sharding",
        "wrapping",
        "prec",
        "batch",
        "reshard",
        "ckpt",
        "peak GiB",
        "step s",
        "exposed",
        "MFU %",
        "goodput",
        "days",
        "cost $"
    );
    for r in &s.rows {
        let mark = if r.pareto { "*" } else { " " };
        if r.fits {
            println!(
                "{mark} {:<11} {:>5} {:>4}  {:<9} {:<10} {:<5} {:>5} {:>7} {:>5}  {:>9.2} {:>8.3} {:>8.3} {:>6.1} {:>7.1}% {:>9.2} {:>11.0}",
                r.gpu,
                r.gpus,
                "yes",
                r.sharding.as_deref().unwrap_or("-"),
                r.wrapping.as_deref().unwrap_or("-"),
                r.precision.as_deref().unwrap_or("-"),
                r.batch_per_gpu.unwrap_or(0),
                if r.reshard_after_forward == Some(true) { "yes" } else { "no" },
                r.checkpoint.as_ref().map_or(0, |c| c.len()),
                r.peak_gib.unwrap_or(0.0),
                r.step_s.unwrap_or(0.0),
                r.exposed_comm_s.unwrap_or(0.0),
                100.0 * r.mfu.unwrap_or(0.0),
                100.0 * r.goodput.unwrap_or(0.0),
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
