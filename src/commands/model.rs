//! `seerscale model`: what a RegNet-Y + SwAV model costs, by stage.

use anyhow::{Context, Result};
use clap::Args;
use cost_models::config::ModelConfig;
use cost_models::graph::{ModelGraph, Workload};
use cost_models::{Bytes, DType};
use serde_json::json;

#[derive(Args)]
pub struct ModelArgs {
    /// Built-in model name (e.g. regnety-10b) or path to a model TOML.
    pub model: String,
    /// Images in the batch (for saved activations).
    #[arg(long, default_value_t = 1)]
    pub batch: u64,
    /// Square input resolution in pixels.
    #[arg(long, default_value_t = 224)]
    pub resolution: u64,
    /// Activation dtype: fp32, fp16 or bf16.
    #[arg(long, default_value = "fp32", value_parser = parse_dtype)]
    pub dtype: DType,
    /// Also predict each stage's forward and backward time on this GPU
    /// (catalog id or hardware TOML) with the kernel model, and where it
    /// goes: tensor cores (aligned or not), CUDA cores, memory-bound
    /// kernels, or the host's issue rate.
    #[arg(long)]
    pub gpu: Option<String>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn parse_dtype(s: &str) -> Result<DType, String> {
    DType::parse(s).ok_or_else(|| format!("unknown dtype `{s}` (expected fp32, fp16 or bf16)"))
}

struct StageRow {
    name: String,
    width: usize,
    depth: usize,
    group_width: usize,
    groups: usize,
    params: u64,
    flops: f64,
    saved: Bytes,
}

pub fn run(a: &ModelArgs) -> Result<()> {
    anyhow::ensure!(a.batch >= 1, "--batch must be at least 1");
    anyhow::ensure!(a.resolution >= 8, "--resolution must be at least 8 px");
    let model = ModelConfig::load(&a.model)?;
    // A bad --gpu is refused before anything is printed.
    let kernels = a.gpu.as_deref().map(|gpu| kernel_model(gpu, a)).transpose()?;
    let g = ModelGraph::build(&model, &Workload::single(a.batch, a.resolution, a.dtype));
    let per_image = ModelGraph::build(&model, &Workload::single(1, a.resolution, a.dtype));
    let stages = model.regnet.stages();
    let mut rows = vec![];
    let stem = g.block("stem").context("graph has no stem")?;
    rows.push(StageRow {
        name: "stem".into(),
        width: model.regnet.stem_width,
        depth: 1,
        group_width: 0,
        groups: 1,
        params: stem.params,
        flops: per_image.block("stem").map_or(0.0, |b| b.fwd_flops.0),
        saved: stem.saved,
    });
    for (i, st) in stages.iter().enumerate() {
        let in_stage = |b: &&cost_models::graph::Block| b.stage == Some(i + 1);
        rows.push(StageRow {
            name: format!("s{}", i + 1),
            width: st.width,
            depth: st.depth,
            group_width: st.group_width,
            groups: st.groups(),
            params: g.blocks.iter().filter(in_stage).map(|b| b.params).sum(),
            flops: per_image.blocks.iter().filter(in_stage).map(|b| b.fwd_flops.0).sum(),
            saved: g.blocks.iter().filter(in_stage).map(|b| b.saved).sum(),
        });
    }
    let head_flops: f64 = per_image.head_blocks().map(|b| b.fwd_flops.0).sum();
    let head_saved: Bytes = g.head_blocks().map(|b| b.saved).sum();
    if a.json {
        let out = json!({
            "model": model.name,
            "batch": a.batch,
            "resolution": a.resolution,
            "dtype": a.dtype,
            "trunk_params": g.trunk_params(),
            "head_params": g.head_params(),
            "trunk_fwd_flops": per_image.trunk_fwd_flops().0,
            "head_fwd_flops": head_flops,
            "saved_activation_bytes": g.trunk_saved().0,
            "head_saved_activation_bytes": head_saved.0,
            "stages": stages.iter().zip(rows.iter().skip(1)).map(|(s, r)| json!({
                "width": s.width, "depth": s.depth, "group_width": s.group_width,
                "groups": s.groups(), "params": r.params,
                "fwd_flops": r.flops, "saved_activation_bytes": r.saved.0,
            })).collect::<Vec<_>>(),
            "blocks": g.blocks.iter().map(|b| json!({
                "name": b.name, "params": b.params, "fwd_flops": b.fwd_flops.0,
                "bwd_flops": b.bwd_flops.0, "saved_activation_bytes": b.saved.0,
                "output_bytes": b.output.0,
            })).collect::<Vec<_>>(),
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{} — {}", model.name, model.description);
    println!("source: {}", model.source);
    println!("batch {} at {} px, activations {}\n", a.batch, a.resolution, a.dtype);
    println!("{:<6} {:>6} {:>5} {:>7} {:>6} {:>14} {:>10} {:>14}", "stage", "width", "depth", "g_width", "groups", "params", "GFLOPs/img", "saved act MiB");
    for r in &rows {
        println!(
            "{:<6} {:>6} {:>5} {:>7} {:>6} {:>14} {:>10.3} {:>14.1}",
            r.name,
            r.width,
            r.depth,
            r.group_width,
            r.groups,
            group_digits(r.params),
            r.flops / 1e9,
            r.saved.as_mib()
        );
    }
    println!(
        "{:<6} {:>6} {:>5} {:>7} {:>6} {:>14} {:>10.3} {:>14.1}",
        "head",
        "",
        "",
        "",
        "",
        group_digits(g.head_params()),
        head_flops / 1e9,
        head_saved.as_mib()
    );
    println!(
        "\ntrunk: {} params, {:.3} GFLOPs/img forward ({:.3} G multiply-adds), {} saved for backward",
        group_digits(g.trunk_params()),
        per_image.trunk_fwd_flops().0 / 1e9,
        per_image.trunk_fwd_flops().0 / 2e9,
        g.trunk_saved()
    );
    println!("head:  {} params (MLP {:?}, {} prototypes)", group_digits(g.head_params()), model.head.mlp_dims, model.head.prototypes);
    if let Some((name, k)) = &kernels {
        print_times(&g, name, k);
    }
    Ok(())
}

/// The name and GPU time model of `gpu`, which must run `--dtype`.
fn kernel_model(gpu: &str, a: &ModelArgs) -> Result<(String, cost_models::kernels::KernelModel)> {
    let hw = cost_models::hardware::load_hardware(gpu).with_context(|| format!("--gpu {gpu}"))?;
    anyhow::ensure!(hw.supports(a.dtype), "{} cannot run {}", hw.name, a.dtype);
    let k = cost_models::kernels::KernelModel::new(&hw).with_context(|| format!("{} has no [kernels] table (the GPU kernel model)", hw.name))?;
    Ok((hw.name, k))
}

/// Forward and backward time per stage on `gpu`, and the share of each
/// [`TimeClass`] in the whole model's time.
fn print_times(g: &ModelGraph, gpu_name: &str, k: &cost_models::kernels::KernelModel) {
    use cost_models::kernels::TimeClass;
    let stage_of = |b: &cost_models::graph::Block| match b.stage {
        Some(s) => format!("s{s}"),
        None if b.is_trunk() => "stem".into(),
        None => "head".into(),
    };
    let mut stages: Vec<(String, f64, f64)> = Vec::new();
    let mut by_class = [0.0f64; 5];
    for b in &g.blocks {
        let (mut f, mut bw) = (0.0, 0.0);
        for l in g.layers_of(b) {
            for (backward, acc) in [(false, &mut f), (true, &mut bw)] {
                let (t, class) = k.classify(l, backward);
                *acc += t.0;
                by_class[TimeClass::ALL.iter().position(|c| *c == class).unwrap_or(0)] += t.0;
            }
        }
        let name = stage_of(b);
        match stages.last_mut() {
            Some(s) if s.0 == name => {
                s.1 += f;
                s.2 += bw;
            }
            _ => stages.push((name, f, bw)),
        }
    }
    let total: f64 = by_class.iter().sum();
    println!("\non {gpu_name} (kernel model, {}; `seerscale accuracy` says how it does):", k.spec().architecture);
    println!("{:<6} {:>12} {:>12}", "stage", "forward ms", "backward ms");
    for (name, f, bw) in &stages {
        println!("{:<6} {:>12.2} {:>12.2}", name, f * 1e3, bw * 1e3);
    }
    println!("{:<6} {:>12.2} {:>12.2}", "total", stages.iter().map(|s| s.1).sum::<f64>() * 1e3, stages.iter().map(|s| s.2).sum::<f64>() * 1e3);
    let shares: Vec<String> =
        TimeClass::ALL.iter().zip(by_class).filter(|(_, t)| *t > 0.0).map(|(c, t)| format!("{} {:.0} %", c.name(), 100.0 * t / total.max(1e-30))).collect();
    println!("time by kind: {}", shares.join(", "));
}

/// 80565140 -> "80,565,140".
pub fn group_digits(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}
