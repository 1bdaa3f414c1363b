//! `seerscale accuracy`: the GPU kernel model against measured GPU time
//! (public timings, the same workloads on an H200, the executor's blocks),
//! and the fit of its per-architecture parameters.

use anyhow::{bail, Context, Result};
use clap::Args;
use planner::accuracy::{self, AccuracyReport};
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct AccuracyArgs {
    /// Report path without extension: writes `<out>.md`, `<out>.json` and
    /// `<out>.svg` (the project's report: `--out docs/accuracy-gpu`).
    #[arg(long, default_value = "runs/accuracy-gpu")]
    pub out: PathBuf,
    /// Print the report as JSON instead of its summary.
    #[arg(long)]
    pub json: bool,
    /// Fit each architecture's `[kernels]` parameters on the fit rows and
    /// print them (as TOML to paste into configs/hardware/); writes no report.
    #[arg(long)]
    pub fit: bool,
    /// Exit with an error when a public row not fitted on leaves its tolerance.
    #[arg(long)]
    pub check: bool,
}

pub fn run(a: &AccuracyArgs) -> Result<()> {
    if a.fit {
        for f in accuracy::fit()? {
            println!("# {}: {} fit rows, rms log error {:.3}", f.architecture, f.rows, f.rms_log_error);
            let s = &f.spec;
            println!(
                "tensor_efficiency = {:.3}\ncuda_efficiency = {:.3}\nwinograd_speedup = {:.3}\nbackward_efficiency = {:.3}\nk_overhead = {:.1}\nmemory_efficiency = {:.3}\nlaunch_us = {:.2}\nhost_op_us = {:.2}\n",
                s.tensor_efficiency,
                s.cuda_efficiency,
                s.winograd_speedup,
                s.backward_efficiency,
                s.k_overhead,
                s.memory_efficiency,
                s.launch.0 * 1e6,
                s.host_op.0 * 1e6
            );
        }
        return Ok(());
    }
    let report = accuracy::report()?;
    write(&report, a)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!("{}", report.summary_text());
    }
    let failures = report.failures();
    if a.check && !failures.is_empty() {
        bail!("{} rows outside their targets: {}", failures.len(), failures.join("; "));
    }
    Ok(())
}

fn write(report: &AccuracyReport, a: &AccuracyArgs) -> Result<()> {
    if let Some(dir) = a.out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let svg = a.out.with_extension("svg");
    let name = svg.file_name().map(|s| s.to_string_lossy().into_owned());
    for (path, text) in [
        (a.out.with_extension("md"), report.markdown(name.as_deref(), &format!("seerscale accuracy --out {}", a.out.display()))),
        (a.out.with_extension("json"), serde_json::to_string_pretty(report)? + "\n"),
        (svg.clone(), report.svg()),
    ] {
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    eprintln!("wrote {}.{{md,json,svg}}", a.out.display());
    Ok(())
}
