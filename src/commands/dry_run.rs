//! `seerscale dry-run <plan.json>`: rebuild the memory model from a plan
//! file and say whether, by how much and why it fits, with an SVG timeline.

use anyhow::{bail, Context};
use clap::Args;
use planner::dry_run::dry_run;
use planner::timeline_svg::timeline_svg;
use runspec::plan::Plan;
use std::io::Write;
use std::path::PathBuf;

#[derive(Args, Debug)]
pub struct DryRunArgs {
    /// Plan file written by `seerscale plan`.
    pub plan: PathBuf,
    /// Write the memory timeline (stacked by category) as SVG here.
    #[arg(long, value_name = "PATH")]
    pub svg: Option<PathBuf>,
    /// Print the report as JSON instead of a table.
    #[arg(long)]
    pub json: bool,
    /// How many blocks/units to list as top contributors.
    #[arg(long, default_value_t = 5)]
    pub top: usize,
}

pub fn run(a: &DryRunArgs) -> anyhow::Result<()> {
    let plan = Plan::load(&a.plan)?;
    let origin = a.plan.display().to_string();
    let dr = dry_run(&plan, &origin)?;
    if let Some(path) = &a.svg {
        let title = format!("{}: {} x {} ({}), peak memory per rank", plan.model.name, plan.world_size, plan.hardware.id, origin);
        std::fs::write(path, timeline_svg(&dr.report, &title)).with_context(|| format!("writing {}", path.display()))?;
    }
    let mut out = if a.json { serde_json::to_string_pretty(&dr.to_json())? + "\n" } else { dr.render_text(a.top) };
    if let (false, Some(path)) = (a.json, &a.svg) {
        out += &format!("memory timeline: {}\n", path.display());
    }
    // A closed pipe (`| head`) is not an error worth a panic.
    match std::io::stdout().lock().write_all(out.as_bytes()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => return Err(e).context("writing to stdout"),
        _ => {}
    }
    if !dr.fits() {
        bail!("{}: {}", origin, dr.infeasible_message());
    }
    Ok(())
}
