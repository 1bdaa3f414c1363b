//! `seerscale sweep`: the best plan at every cluster size (and GPU type),
//! the frontier over (days, cost), optionally as an SVG. The table shows
//! the sizes a reader compares (powers of two, the frontier, the cheapest
//! and the fastest) unless `--all` asks for every row.

use crate::commands::plan::{run_search, SearchArgs};
use anyhow::{Context, Result};
use clap::Args;
use planner::pareto::svg;
use planner::search::Searcher;
use planner::sweep::{rows_of, Sweep};
use runspec::recipe::Recipe;
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
    /// Write the trade-off plot here (days against cost, frontier marked,
    /// points labelled with their GPU count).
    #[arg(long)]
    pub svg: Option<PathBuf>,
    /// Print every cluster size, not only powers of two, the frontier, the
    /// cheapest and the fastest (`--json` always has every row).
    #[arg(long)]
    pub all: bool,
}

pub fn run(a: &SweepArgs) -> Result<()> {
    let recipe = a.search.recipe(&a.recipe)?;
    let mut s = Searcher::new(&recipe, a.search.space(&recipe, a.search.gpu_range())?)?;
    let outcomes = run_search(&mut s, a.json)?;
    let sweep = rows_of(&s, &recipe, &outcomes);
    if let Some(path) = &a.svg {
        let title = format!("{}: days against cost to train {:.2e} images (labels: GPUs)", recipe.name, recipe.data.total_images);
        std::fs::write(path, svg(&sweep.pareto_points(), &sweep.frontier, &title)).with_context(|| format!("cannot write {}", path.display()))?;
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&sweep)?);
    } else {
        print_table(&sweep, &recipe, a.all);
        if let Some(path) = &a.svg {
            println!("wrote {}", path.display());
        }
    }
    if !sweep.rows.iter().any(|r| r.fits) {
        anyhow::bail!("no cluster size fits: {}", s.explain_infeasible(&outcomes));
    }
    Ok(())
}

/// Rows worth a reader's eye: powers of two, the frontier, the cheapest
/// and the fastest plan; the rest only with `--all`.
fn shown(s: &Sweep, all: bool) -> Vec<usize> {
    let fitting = || s.rows.iter().enumerate().filter(|(_, r)| r.fits);
    let cheapest = fitting().min_by(|a, b| a.1.cost_usd.unwrap_or(f64::INFINITY).total_cmp(&b.1.cost_usd.unwrap_or(f64::INFINITY))).map(|x| x.0);
    let fastest = fitting().min_by(|a, b| a.1.days.unwrap_or(f64::INFINITY).total_cmp(&b.1.days.unwrap_or(f64::INFINITY))).map(|x| x.0);
    let few = fitting().count() <= 24;
    (0..s.rows.len())
        .filter(|&i| {
            let r = &s.rows[i];
            all || (r.fits && few) || r.gpus.is_power_of_two() || (r.pareto && s.frontier.len() <= 8) || Some(i) == cheapest || Some(i) == fastest
        })
        .collect()
}

fn print_table(s: &Sweep, recipe: &Recipe, all: bool) {
    println!(
        "{}: best plan per cluster size ({:.2e} images; days and cost include checkpoints and expected failures); * = on the frontier of days against cost",
        recipe.name, recipe.data.total_images
    );
    println!(
        "  {:<11} {:>5} {:>4}  {:<9} {:<10} {:<5} {:>5} {:>7} {:>5}  {:>9} {:>8} {:>8} {:>6} {:>8} {:>9} {:>11} {:>11}",
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
        "days band",
        "cost $"
    );
    let rows = shown(s, all);
    for &i in &rows {
        let r = &s.rows[i];
        let mark = if r.pareto { "*" } else { " " };
        if r.fits {
            println!(
                "{mark} {:<11} {:>5} {:>4}  {:<9} {:<10} {:<5} {:>5} {:>7} {:>5}  {:>9.2} {:>8.3} {:>8.3} {:>6.1} {:>7.1}% {:>9.2} {:>11} {:>11.0}",
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
                r.days_range.map_or("-".into(), |[lo, hi]| format!("{lo:.2}-{hi:.2}")),
                r.cost_usd.unwrap_or(0.0),
            );
        } else {
            println!("{mark} {:<11} {:>5} {:>4}  {}", r.gpu, r.gpus, "no", r.why.as_deref().unwrap_or(""));
        }
    }
    let hidden = s.rows.len() - rows.len();
    if hidden > 0 {
        println!("  ({hidden} more cluster sizes: --all lists every row)");
    }
    for line in findings(s) {
        println!("{line}");
    }
}

/// What the sweep says, in words: the frontier from cheapest to fastest,
/// how much cost varies over the sizes that fit, and the global batch.
fn findings(s: &Sweep) -> Vec<String> {
    let fit: Vec<&planner::sweep::SweepRow> = s.rows.iter().filter(|r| r.fits).collect();
    if fit.is_empty() {
        return Vec::new();
    }
    let usd = |v: Option<f64>| format!("${:.0}k", v.unwrap_or(0.0) / 1e3);
    let label = |r: &planner::sweep::SweepRow| format!("{} x {} ({:.2} days, {})", r.gpus, r.gpu, r.days.unwrap_or(0.0), usd(r.cost_usd));
    let mut out = Vec::new();
    let ends = (s.frontier.first().map(|&i| &s.rows[i]), s.frontier.last().map(|&i| &s.rows[i]));
    if s.frontier.len() <= 8 {
        let front: Vec<String> = s.frontier.iter().map(|&i| label(&s.rows[i])).collect();
        out.push(format!("frontier of days against cost, cheapest first: {}", front.join("; ")));
    } else if let (Some(a), Some(b)) = ends {
        out.push(format!("frontier of days against cost: {} plans, from {} to {}", s.frontier.len(), label(a), label(b)));
    }
    if let (Some(a), Some(b)) = ends {
        if s.frontier.len() > 1 {
            let (dc, dd) = (b.cost_usd.unwrap_or(0.0) - a.cost_usd.unwrap_or(0.0), a.days.unwrap_or(0.0) - b.days.unwrap_or(0.0));
            out.push(format!(
                "the fastest plan costs {} more than the cheapest ({:+.1} %) and finishes {:.2} days sooner: ${:.0} per day saved",
                usd(Some(dc)),
                100.0 * dc / a.cost_usd.unwrap_or(1.0),
                dd,
                dc / dd.max(1e-9)
            ));
        }
    }
    let costs: Vec<f64> = fit.iter().filter_map(|r| r.cost_usd).collect();
    let (lo, hi) = costs.iter().fold((f64::MAX, f64::MIN), |(a, b), &c| (a.min(c), b.max(c)));
    let days: Vec<f64> = fit.iter().filter_map(|r| r.days).collect();
    let (dlo, dhi) = days.iter().fold((f64::MAX, f64::MIN), |(a, b), &c| (a.min(c), b.max(c)));
    out.push(format!(
        "over the {} sizes that fit, cost runs {} to {} ({:+.0} %) while days run {:.2} to {:.2}",
        fit.len(),
        usd(Some(lo)),
        usd(Some(hi)),
        100.0 * (hi / lo - 1.0),
        dlo,
        dhi
    ));
    out.extend(band_findings(s));
    let mut batches: Vec<usize> = fit.iter().filter_map(|r| r.global_batch).collect();
    batches.sort_unstable();
    batches.dedup();
    if let [one] = batches[..] {
        out.push(format!("every row trains with a global batch of {one}"));
    } else if let (Some(a), Some(b)) = (batches.first(), batches.last()) {
        out.push(format!("global batch varies from {a} to {b} across rows (--free-batch): SwAV's optimisation differs between them"));
    }
    out
}

/// What the bands say: each GPU type's range of measured / predicted (and
/// why it is wide where it is), and which plans lead once every plan is
/// taken at its band's high end.
fn band_findings(s: &Sweep) -> Vec<String> {
    let mut per_gpu: Vec<(String, f64, f64, &str)> = Vec::new();
    for r in s.rows.iter().filter(|r| r.fits) {
        let (Some(days), Some([lo, hi]), Some(src)) = (r.days, r.days_range, r.range_source.as_deref()) else { continue };
        let (lo, hi) = (lo / days, hi / days);
        match per_gpu.iter_mut().find(|g| g.0 == r.gpu) {
            Some(g) => {
                g.1 = g.1.min(lo);
                g.2 = g.2.max(hi);
            }
            None => per_gpu.push((r.gpu.clone(), lo, hi, src)),
        }
    }
    if per_gpu.is_empty() {
        return Vec::new();
    }
    let why = |src: &str| match (src.contains("Hopper"), src.contains("unaligned")) {
        (true, true) => " (Hopper, never fitted; unaligned GEMMs)",
        (true, false) => " (Hopper, never fitted)",
        (false, true) => " (unaligned GEMMs)",
        (false, false) => "",
    };
    let bands: Vec<String> = per_gpu.iter().map(|(g, lo, hi, src)| format!("{g} {lo:.2}-{hi:.2}x{}", why(src))).collect();
    let mut out = vec![format!("days band, measured/predicted as docs/accuracy-gpu.md finds it (`plan` says what each is made of): {}", bands.join(", "))];
    if s.frontier_at_band_high != s.frontier {
        let names: Vec<String> = s
            .frontier_at_band_high
            .iter()
            .map(|&i| {
                let r = &s.rows[i];
                let [d, c] = [r.days_range.map_or(r.days.unwrap_or(0.0), |d| d[1]), r.cost_range_usd.map_or(r.cost_usd.unwrap_or(0.0), |c| c[1])];
                format!("{} x {} ({d:.2} days, ${:.0}k)", r.gpus, r.gpu, c / 1e3)
            })
            .collect();
        let shown = if names.len() <= 8 { names.join("; ") } else { format!("{} plans, from {} to {}", names.len(), names[0], names[names.len() - 1]) };
        out.push(format!("with every plan at its band's high end the frontier becomes: {shown}"));
    }
    out
}
