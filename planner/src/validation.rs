//! Predicted vs measured: plan variants with fixed decisions (no search),
//! the comparison of their predictions with what the executor measured, and
//! the report (markdown + hand-written SVG bar plot).
//!
//! A variant is named by its decisions, e.g. `w2-block-reshard-ckpt0-fp32-b8-r32`:
//! world size and sharding (`w4` FSDP over the world, `w4h2` hybrid with
//! shard groups of 2, `w4ddp` DDP), unit granularity (`block` | `stage` |
//! `whole`), `reshard` or
//! `keep` after forward, checkpointing (`ckpt0` none, `ckptsome` one segment
//! per middle stage, `ckptall` every trunk block its own segment), compute
//! precision, per-rank batch and the resolution of the largest crop group
//! (the other groups scale with it).
//!
//! This module never runs anything: the CLI executes the plans and hands the
//! per-step metrics back through [`runspec::metrics`].

use crate::build::build_plan;
use crate::memory::{Decisions, MemoryReport};
use crate::plan::{Plan, Precision};
use crate::recipe::{Recipe, Wrapping};
use crate::search::{BatchPolicy, GpuCount, SearchError, SearchSpace, Searcher, ShardingSpace, DEFAULT_BUCKET_MIB};
use crate::simulator::PhaseTimes;
use crate::svg::xml_escape;
use cost_models::compute::ComputeModel;
use cost_models::config::ModelConfig;
use cost_models::graph::{BlockKind, ModelGraph, Workload};
use cost_models::hardware::HardwareProfile;
use cost_models::stats::median;
use cost_models::{Bytes, DType};
pub use runspec::metrics::{combine_runs, Measured};
use runspec::sharding::{Sharding, Strategy};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Range;

#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("variant `{name}`: {why} (expected e.g. `w2-block-reshard-ckpt0-fp32-b8-r32`)")]
    BadVariant { name: String, why: String },
    #[error("variant `{name}`: {source}")]
    Plan { name: String, source: SearchError },
    #[error("variant `{name}`: {why}")]
    Recipe { name: String, why: String },
}

/// FSDP unit granularity.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Granularity {
    Block,
    Stage,
    Whole,
}

impl Granularity {
    pub fn wrapping(self) -> Wrapping {
        match self {
            Granularity::Block => Wrapping::PerBlock,
            Granularity::Stage => Wrapping::PerStage,
            Granularity::Whole => Wrapping::Whole,
        }
    }
    fn name(self) -> &'static str {
        match self {
            Granularity::Block => "block",
            Granularity::Stage => "stage",
            Granularity::Whole => "whole",
        }
    }
}

/// How much of the trunk is checkpointed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CkptLevel {
    None,
    /// One segment per middle stage (stages 2 .. last-1; stage 2 alone for
    /// models with fewer than 3 stages).
    Some,
    /// Every trunk block (stem included) its own segment.
    All,
}

impl CkptLevel {
    fn name(self) -> &'static str {
        match self {
            CkptLevel::None => "ckpt0",
            CkptLevel::Some => "ckptsome",
            CkptLevel::All => "ckptall",
        }
    }

    /// Segments (block index ranges) of this level on `graph`.
    pub fn segments(self, graph: &ModelGraph) -> Vec<Range<usize>> {
        match self {
            CkptLevel::None => Vec::new(),
            CkptLevel::All => graph.blocks.iter().enumerate().filter(|(_, b)| b.is_trunk()).map(|(i, _)| i..i + 1).collect(),
            CkptLevel::Some => {
                let stages: Vec<usize> = {
                    let mut s: Vec<usize> = graph.blocks.iter().filter(|b| b.kind == BlockKind::Residual).filter_map(|b| b.stage).collect();
                    s.dedup();
                    s
                };
                let last = stages.iter().copied().max().unwrap_or(0);
                let wanted: Vec<usize> = if last >= 3 { (2..last).collect() } else { stages.iter().copied().filter(|&s| s == 2.min(last)).collect() };
                wanted
                    .into_iter()
                    .filter_map(|st| {
                        let idx: Vec<usize> =
                            graph.blocks.iter().enumerate().filter(|(_, b)| b.kind == BlockKind::Residual && b.stage == Some(st)).map(|(i, _)| i).collect();
                        Some(*idx.first()?..*idx.last()? + 1)
                    })
                    .collect()
            }
        }
    }
}

/// One validation variant (see the module docs for the name grammar).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Variant {
    pub world_size: usize,
    /// FSDP over the world in reports written before the field existed.
    #[serde(default)]
    pub sharding: Sharding,
    pub granularity: Granularity,
    pub reshard_after_forward: bool,
    pub checkpoint: CkptLevel,
    pub precision: DType,
    pub batch_per_rank: usize,
    /// Resolution of the largest crop group.
    pub resolution: u64,
}

impl fmt::Display for Variant {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sharding = match self.sharding.strategy {
            Strategy::Fsdp => String::new(),
            Strategy::Ddp => "ddp".into(),
            Strategy::Hybrid => format!("h{}", self.sharding.shard_group),
        };
        write!(
            f,
            "w{}{sharding}-{}-{}-{}-{}-b{}-r{}",
            self.world_size,
            self.granularity.name(),
            if self.reshard_after_forward { "reshard" } else { "keep" },
            self.checkpoint.name(),
            self.precision,
            self.batch_per_rank,
            self.resolution
        )
    }
}

/// Largest world size a variant may ask for (ranks are local processes).
pub const MAX_VARIANT_WORLD: usize = 16;

impl Variant {
    pub fn parse(name: &str) -> Result<Variant, ValidationError> {
        let bad = |why: &str| ValidationError::BadVariant { name: name.to_string(), why: why.to_string() };
        let parts: Vec<&str> = name.trim().split('-').collect();
        if parts.len() != 7 {
            return Err(bad("needs 7 dash-separated parts"));
        }
        let num = |s: &str, prefix: char, what: &str| -> Result<u64, ValidationError> {
            s.strip_prefix(prefix).and_then(|n| n.parse::<u64>().ok()).filter(|&n| n > 0).ok_or_else(|| bad(&format!("`{s}`: {what}")))
        };
        // w<N>, w<N>ddp or w<N>h<S>.
        let (world_part, sharding) = match parts[0].split_once('h') {
            Some((w, s)) => (w, Some(Sharding::hybrid(s.parse::<usize>().map_err(|_| bad(&format!("`{}`: hybrid needs h<S>, S the shard group", parts[0])))?))),
            None => match parts[0].strip_suffix("ddp") {
                Some(w) => (w, Some(Sharding::ddp())),
                None => (parts[0], None),
            },
        };
        let world = num(world_part, 'w', "world size must be w<N>, N >= 1 (w<N>ddp, w<N>h<S> for DDP, hybrid)")? as usize;
        if world > MAX_VARIANT_WORLD {
            return Err(bad(&format!("world size {world} is more than {MAX_VARIANT_WORLD} local ranks")));
        }
        let sharding = sharding.unwrap_or(Sharding::fsdp(world));
        sharding.check(world).map_err(|e| bad(&e.0))?;
        let granularity = match parts[1] {
            "block" => Granularity::Block,
            "stage" => Granularity::Stage,
            "whole" => Granularity::Whole,
            o => return Err(bad(&format!("`{o}`: granularity must be block, stage or whole"))),
        };
        let reshard = match parts[2] {
            "reshard" => true,
            "keep" => false,
            o => return Err(bad(&format!("`{o}`: must be reshard or keep"))),
        };
        let checkpoint = match parts[3] {
            "ckpt0" => CkptLevel::None,
            "ckptsome" => CkptLevel::Some,
            "ckptall" => CkptLevel::All,
            o => return Err(bad(&format!("`{o}`: checkpointing must be ckpt0, ckptsome or ckptall"))),
        };
        let precision = DType::parse(parts[4]).ok_or_else(|| bad(&format!("`{}`: precision must be fp32, bf16 or fp16", parts[4])))?;
        let batch = num(parts[5], 'b', "batch must be b<N>, N >= 1")? as usize;
        let resolution = num(parts[6], 'r', "resolution must be r<N>")?;
        if !(8..=1024).contains(&resolution) {
            return Err(bad("resolution must be within 8..=1024 px"));
        }
        Ok(Variant { world_size: world, sharding, granularity, reshard_after_forward: reshard, checkpoint, precision, batch_per_rank: batch, resolution })
    }

    /// The recipe with this variant's crops: the largest group at
    /// `resolution`, the others scaled by the same factor (at least 8 px).
    pub fn recipe(&self, base: &Recipe) -> Result<Recipe, ValidationError> {
        let mut r =
            base.with_largest_crop(self.resolution).ok_or_else(|| ValidationError::Recipe { name: self.to_string(), why: "the recipe has no crops".into() })?;
        r.cluster.gpus = self.world_size;
        r.cluster.batch_per_gpu = self.batch_per_rank;
        r.validate(&format!("variant {self}")).map_err(|e| ValidationError::Recipe { name: self.to_string(), why: e.to_string() })?;
        Ok(r)
    }
}

/// The default set: every axis covered, one change at a time from
/// `w2-block-reshard-ckpt0-fp32-b8-r32`, plus mixed variants and the
/// sharding strategies at 4 ranks.
pub fn default_variants() -> Vec<Variant> {
    [
        "w2-block-reshard-ckpt0-fp32-b8-r32",
        "w1-block-reshard-ckpt0-fp32-b8-r32",
        "w4-block-reshard-ckpt0-fp32-b8-r32",
        "w2-stage-reshard-ckpt0-fp32-b8-r32",
        "w2-whole-reshard-ckpt0-fp32-b8-r32",
        "w2-block-keep-ckpt0-fp32-b8-r32",
        "w2-block-reshard-ckptsome-fp32-b8-r32",
        "w2-block-reshard-ckptall-fp32-b8-r32",
        "w2-block-reshard-ckpt0-bf16-b8-r32",
        "w2-block-reshard-ckpt0-fp32-b16-r32",
        "w2-block-reshard-ckpt0-fp32-b8-r48",
        "w1-stage-keep-ckptall-bf16-b16-r48",
        "w4-stage-keep-ckptsome-bf16-b8-r48",
        "w4h2-block-reshard-ckpt0-fp32-b8-r32",
        "w4ddp-block-keep-ckpt0-fp32-b8-r32",
        "w2ddp-whole-keep-ckptall-bf16-b8-r32",
    ]
    .iter()
    .map(|n| Variant::parse(n).expect("built-in variant names parse"))
    .collect()
}

/// Parses a comma-separated list; duplicates are dropped.
pub fn parse_variants(list: &str) -> Result<Vec<Variant>, ValidationError> {
    let mut out: Vec<Variant> = Vec::new();
    for n in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
        let v = Variant::parse(n)?;
        if !out.contains(&v) {
            out.push(v);
        }
    }
    if out.is_empty() {
        return Err(ValidationError::BadVariant { name: list.to_string(), why: "no variant named".into() });
    }
    Ok(out)
}

/// A searcher over exactly `v`'s choices and `v`'s decisions (nothing is
/// searched: the caller evaluates these decisions directly).
fn fixed_variant<'r>(recipe: &'r Recipe, hardware: &HardwareProfile, v: &Variant) -> Result<(Searcher<'r>, Decisions), ValidationError> {
    let space = SearchSpace {
        hardware: vec![hardware.clone()],
        gpus: GpuCount::Fixed(v.world_size),
        batch: BatchPolicy::PerGpu(v.batch_per_rank),
        wrappings: vec![v.granularity.wrapping()],
        precisions: vec![v.precision],
        reshard: vec![v.reshard_after_forward],
        shardings: ShardingSpace::Only(v.sharding),
        bucket_mib: DEFAULT_BUCKET_MIB,
        exhaustive: true,
        headroom: 0.0,
        reliability: crate::failures::Reliability::builtin(),
    };
    let mut s = Searcher::new(recipe, space).map_err(|source| ValidationError::Plan { name: v.to_string(), source })?;
    let checkpoint = v.checkpoint.segments(s.graph(v.precision, v.batch_per_rank));
    let d = Decisions {
        world_size: v.world_size,
        batch_per_rank: v.batch_per_rank,
        precision: Precision { compute: v.precision, reduce: v.precision },
        reshard_after_forward: v.reshard_after_forward,
        sharding: v.sharding.resolved(v.world_size),
        wrapping: v.granularity.wrapping(),
        checkpoint,
    };
    Ok((s, d))
}

/// Builds the plan of `v` with its decisions fixed (memory model, step
/// simulator and plan builder only; nothing is searched).
pub fn plan_variant(base: &Recipe, hardware: &HardwareProfile, v: &Variant) -> Result<(Plan, MemoryReport), ValidationError> {
    let recipe = v.recipe(base)?;
    let (mut s, d) = fixed_variant(&recipe, hardware, v)?;
    let plan_err = |source| ValidationError::Plan { name: v.to_string(), source };
    let e = s.evaluate(0, &d).map_err(plan_err)?;
    build_plan(&mut s, &e).map_err(plan_err)
}

/// The simulator's compute time per phase for one variant (what
/// `plan_variant`'s prediction is made of), to compare with the executor's
/// phase timer.
pub fn variant_phases(base: &Recipe, hardware: &HardwareProfile, v: &Variant) -> Result<PhaseTimes, ValidationError> {
    let recipe = v.recipe(base)?;
    let (mut s, d) = fixed_variant(&recipe, hardware, v)?;
    Ok(s.step_profile(0, &d).map_err(|source| ValidationError::Plan { name: v.to_string(), source })?.phases())
}

/// How many of `v`'s blocks have a measured time in `hardware`'s profile
/// (`seerscale calibrate --recipe`), out of all its blocks.
pub fn measured_blocks(base: &Recipe, hardware: &HardwareProfile, v: &Variant) -> Result<(usize, usize), ValidationError> {
    let recipe = v.recipe(base)?;
    let model = ModelConfig::load(&recipe.model).map_err(|e| ValidationError::Recipe { name: v.to_string(), why: e.to_string() })?;
    let g = ModelGraph::build(&model, &Workload { images: v.batch_per_rank as u64, crops: recipe.crop_groups(), dtype: v.precision });
    let compute = ComputeModel::new(hardware);
    Ok((g.blocks.iter().filter(|b| compute.block_time(&g.block_key(b)).is_some()).count(), g.blocks.len()))
}

/// Median per phase over steps `>= warmup` of rank 0's
/// `phase-times rank=0 step=N key=ms ...` lines (the executor's
/// `SEERSCALE_PHASE_TIMES=1` output). Backward is the executor's
/// `backward+loss` window less the loss; the prologue is `proto_norm +
/// zero_grad`. None when the log has no such lines.
pub fn parse_phase_times(log: &str, warmup: u64) -> Option<PhaseTimes> {
    let mut rows: Vec<PhaseTimes> = Vec::new();
    for line in log.lines() {
        let Some(rest) = line.trim().strip_prefix("phase-times ") else { continue };
        let kv: Vec<(&str, &str)> = rest.split_whitespace().filter_map(|t| t.split_once('=')).collect();
        let get = |k: &str| kv.iter().find(|(a, _)| *a == k).and_then(|(_, v)| v.parse::<f64>().ok());
        if get("rank") != Some(0.0) || get("step").is_none_or(|st| st < warmup as f64) {
            continue;
        }
        let ms = |k: &str| get(k).unwrap_or(0.0) / 1e3;
        let loss = ms("loss");
        rows.push(PhaseTimes {
            prologue_s: ms("proto_norm") + ms("zero_grad"),
            forward_s: ms("forward"),
            loss_s: loss,
            backward_s: (get("backward+loss").map_or(ms("run_backward"), |b| b / 1e3 - loss)).max(0.0),
            optimizer_s: ms("optimizer"),
        });
    }
    median_phases(&rows)
}

/// Median of each phase over steps or runs; None when there are none.
pub fn median_phases(rows: &[PhaseTimes]) -> Option<PhaseTimes> {
    if rows.is_empty() {
        return None;
    }
    let med = |f: fn(&PhaseTimes) -> f64| median(rows.iter().map(f).collect());
    Some(PhaseTimes {
        prologue_s: med(|p| p.prologue_s),
        forward_s: med(|p| p.forward_s),
        loss_s: med(|p| p.loss_s),
        backward_s: med(|p| p.backward_s),
        optimizer_s: med(|p| p.optimizer_s),
    })
}

/// `(measured - predicted) / predicted`; None without a prediction.
pub fn rel_error(measured: f64, predicted: f64) -> Option<f64> {
    (predicted > 0.0 && measured.is_finite()).then(|| (measured - predicted) / predicted)
}

/// One variant's line of the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub variant: String,
    /// The plan's peak as an allocated-bytes counter reads it (without the
    /// GPU fragmentation margin: [`crate::plan::Predicted::allocated_peak_bytes`]).
    pub predicted_peak_bytes: u64,
    /// Predicted peak by category (bytes).
    pub predicted_breakdown: Vec<(String, u64)>,
    pub predicted_step_time_s: f64,
    pub predicted_comm_time_s: f64,
    pub predicted_exposed_comm_s: f64,
    pub measured: Option<Measured>,
    /// Why there is no (or only a partial) measurement.
    pub note: Option<String>,
    /// The simulator's compute time per phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_phases: Option<PhaseTimes>,
    /// Rank 0's phase timer (median over steady-state steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_phases: Option<PhaseTimes>,
    /// How much slower the host-speed probe ran around this variant's run
    /// (before and after it) than during the calibration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_slowdown: Option<f64>,
    /// The step time predicted at the speed `host_slowdown` says the host
    /// had (a diagnostic: the probe does not track the ranks' speed well
    /// enough to be the prediction, see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_scaled_step_time_s: Option<f64>,
    /// The plan's model FLOPs utilisation (against the device's dense peak
    /// in the plan's compute dtype).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_mfu: Option<f64>,
}

impl Row {
    pub fn from_plan(variant: &Variant, plan: &Plan, measured: Option<Measured>, note: Option<String>) -> Row {
        let p = &plan.predicted;
        let frag = crate::memory::Category::Fragmentation.name();
        let mut breakdown: Vec<(String, u64)> = p.peak_breakdown.iter().filter(|(k, v)| **v > 0 && k.as_str() != frag).map(|(k, v)| (k.clone(), *v)).collect();
        breakdown.sort_by_key(|x| std::cmp::Reverse(x.1));
        Row {
            variant: variant.to_string(),
            predicted_peak_bytes: p.allocated_peak_bytes(),
            predicted_breakdown: breakdown,
            predicted_step_time_s: p.step_time_s,
            predicted_comm_time_s: p.comm_time_s,
            predicted_exposed_comm_s: p.exposed_comm_s,
            measured,
            note,
            predicted_phases: None,
            measured_phases: None,
            host_slowdown: None,
            probe_scaled_step_time_s: None,
            predicted_mfu: Some(p.mfu),
        }
    }
    /// The measured MFU: the same model FLOPs and peak as the prediction,
    /// over the measured step time.
    pub fn measured_mfu(&self) -> Option<f64> {
        let m = self.measured.as_ref()?;
        let mfu = self.predicted_mfu?;
        (m.step_time_s > 0.0).then(|| mfu * self.predicted_step_time_s / m.step_time_s)
    }
    pub fn memory_error(&self) -> Option<f64> {
        self.measured.as_ref().and_then(|m| rel_error(m.peak_memory_bytes as f64, self.predicted_peak_bytes as f64))
    }
    pub fn step_error(&self) -> Option<f64> {
        self.measured.as_ref().and_then(|m| rel_error(m.step_time_s, self.predicted_step_time_s))
    }
    /// The step-time error of the probe-scaled prediction.
    pub fn probe_scaled_step_error(&self) -> Option<f64> {
        let p = self.probe_scaled_step_time_s?;
        self.measured.as_ref().and_then(|m| rel_error(m.step_time_s, p))
    }
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    pub recipe: String,
    pub hardware: String,
    /// Where the hardware numbers came from (catalog or a calibrated profile).
    pub hardware_source: String,
    pub steps: u64,
    pub warmup: u64,
    /// Runs per variant (`validate --repeats`), in interleaved rounds.
    #[serde(default = "one")]
    pub repeats: u64,
    pub memory_tolerance: f64,
    pub step_tolerance: f64,
    /// The command that regenerates the report.
    pub command: String,
    pub rows: Vec<Row>,
    /// Free-form notes printed under the table (how things were measured).
    pub notes: Vec<String>,
    /// The recipe the variants were derived from, in full (so a report can
    /// be re-predicted without the file it was read from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe_config: Option<crate::recipe::Recipe>,
    /// The GPU and library versions the runs used (GPU runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// For a report re-predicted from stored measurements (`validate
    /// --replay`): the command that measured them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_with: Option<String>,
}

/// Memory figures in one unit for a whole table, chosen by the largest.
fn memory_unit(max_bytes: u64) -> (&'static str, f64) {
    match max_bytes {
        b if b >= 64 << 30 => ("GiB", (1u64 << 30) as f64),
        b if b >= 64 << 20 => ("MiB", (1u64 << 20) as f64),
        _ => ("KiB", 1024.0),
    }
}

fn one() -> u64 {
    1
}

impl ValidationReport {
    /// "k/n within ±t% (max |error| m%, median n%)" for one step-time error.
    fn step_summary(&self, error: fn(&Row) -> Option<f64>) -> String {
        let errs: Vec<f64> = self.rows.iter().filter_map(error).map(f64::abs).collect();
        if errs.is_empty() {
            return format!("0/{} measured", self.rows.len());
        }
        let within = errs.iter().filter(|e| **e <= self.step_tolerance).count();
        let max = errs.iter().copied().fold(0.0, f64::max);
        let mid = median(errs);
        format!("{within}/{} within ±{:.0}% (max |error| {:.0}%, median {:.0}%)", self.rows.len(), self.step_tolerance * 100.0, max * 100.0, mid * 100.0)
    }

    /// How repeatable the host makes a single run: for every run of a
    /// variant measured more than once, its deviation from the median of
    /// the variant's *other* runs. Returns (runs within the step tolerance,
    /// runs compared, median |deviation|); None with fewer than two runs
    /// anywhere. A perfect predictor cannot beat this spread, so it is the
    /// floor under the step-time errors.
    pub fn run_spread(&self) -> Option<(usize, usize, f64)> {
        let mut devs = Vec::new();
        for m in self.rows.iter().filter_map(|r| r.measured.as_ref()) {
            let runs = &m.run_step_times_s;
            if runs.len() < 2 {
                continue;
            }
            for (i, &t) in runs.iter().enumerate() {
                let others: Vec<f64> = runs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, &o)| o).collect();
                if let Some(d) = rel_error(t, median(others)) {
                    devs.push(d.abs());
                }
            }
        }
        if devs.is_empty() {
            return None;
        }
        let within = devs.iter().filter(|d| **d <= self.step_tolerance).count();
        Some((within, devs.len(), median(devs.clone())))
    }

    /// Median of the signed step-time errors: a systematic bias of the
    /// model shows here, host noise mostly cancels.
    pub fn step_bias(&self) -> Option<f64> {
        let errs: Vec<f64> = self.rows.iter().filter_map(Row::step_error).collect();
        (!errs.is_empty()).then(|| median(errs))
    }

    /// Variants whose measured peak is off by more than the tolerance, or
    /// that were not measured at all.
    pub fn memory_failures(&self) -> Vec<String> {
        self.rows
            .iter()
            .filter_map(|r| match r.memory_error() {
                Some(e) if e.abs() <= self.memory_tolerance => None,
                Some(e) => Some(format!(
                    "{}: peak {:+.1}% (measured {}, predicted {})",
                    r.variant,
                    e * 100.0,
                    Bytes(r.measured.as_ref().map_or(0, |m| m.peak_memory_bytes)),
                    Bytes(r.predicted_peak_bytes)
                )),
                None => Some(format!("{}: not measured ({})", r.variant, r.note.as_deref().unwrap_or("no metrics"))),
            })
            .collect()
    }

    pub fn markdown(&self, svg_name: Option<&str>) -> String {
        let pct = |e: Option<f64>| e.map_or("-".to_string(), |e| format!("{:+.1}%", e * 100.0));
        let largest =
            self.rows.iter().flat_map(|r| std::iter::once(r.predicted_peak_bytes).chain(r.measured.as_ref().map(|m| m.peak_memory_bytes))).max().unwrap_or(0);
        let (unit, per) = memory_unit(largest);
        let kib = |b: u64| format!("{:.1}", b as f64 / per);
        let ms = |s: f64| format!("{:.1}", s * 1e3);
        let mut s = String::new();
        s.push_str(&format!("# Validation: `{}` predicted vs measured\n\n", self.recipe));
        match &self.measured_with {
            Some(m) => s.push_str(&format!(
                "Regenerate the predictions (from the measurements stored in the report's JSON, with this planner) with:\n\n```sh\n{}\n```\n\nThe measurements were taken with:\n\n```sh\n{m}\n```\n\n",
                self.command
            )),
            None => s.push_str(&format!("Regenerate with:\n\n```sh\n{}\n```\n\n", self.command)),
        }
        if let Some(d) = &self.device {
            s.push_str(&format!("Device: {d}.\n\n"));
        }
        let runs = if self.repeats > 1 {
            format!(" Each variant ran {} times, in interleaved rounds (every variant once, then every variant again), so a slow spell of the host falls on different variants in different rounds; the peak is the max over the runs, step and comm times the median of the runs' own (`step runs` lists each run's).", self.repeats)
        } else {
            String::new()
        };
        s.push_str(&format!(
            "Hardware: {} ({}). Each variant is planned with fixed decisions, executed by `seerscale train` as real ranks for {} steps; steps 0..{} are warm-up and dropped. Measured peak = max over ranks and steady-state steps of the allocator's peak allocated bytes (the executor's counting allocator on CPU, the CUDA caching allocator's statistics on GPU); step time = median over steady-state steps of the slowest rank; comm = median time blocked in collectives (mean over ranks), compared with the simulator's *exposed* communication.{runs}\n\n",
            self.hardware, self.hardware_source, self.steps, self.warmup
        ));
        let within_mem = self.rows.iter().filter(|r| r.memory_error().is_some_and(|e| e.abs() <= self.memory_tolerance)).count();
        let mem_errs: Vec<f64> = self.rows.iter().filter_map(|r| r.memory_error()).map(f64::abs).collect();
        let maxf = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let memory = if mem_errs.is_empty() {
            format!("0/{} variants measured", self.rows.len())
        } else {
            format!("{within_mem}/{} variants within ±{:.0}% (max |error| {:.1}%)", self.rows.len(), self.memory_tolerance * 100.0, maxf(&mem_errs) * 100.0)
        };
        s.push_str(&format!("**Peak memory**: {memory}. **Step time**: {}", self.step_summary(Row::step_error)));
        if self.rows.iter().any(|r| r.probe_scaled_step_time_s.is_some()) {
            s.push_str(&format!(" (scaled by the host-speed probe's slowdown instead: {})", self.step_summary(Row::probe_scaled_step_error)));
        }
        s.push('.');
        if let Some(bias) = self.step_bias() {
            s.push_str(&format!(" Median signed step error {:+.0}% (measured slower than predicted when positive).", bias * 100.0));
        }
        if let Some((within, n, mid)) = self.run_spread() {
            s.push_str(&format!(
                " **Run-to-run spread** (the floor under any prediction): {within}/{n} single runs within ±{:.0}% of the median of their variant's other runs (median |deviation| {:.0}%).",
                self.step_tolerance * 100.0,
                mid * 100.0
            ));
        }
        s.push_str("\n\n");
        if let Some(svg) = svg_name {
            s.push_str(&format!("![predicted vs measured peak memory and step time]({svg})\n\n"));
        }
        let per_run = self.rows.iter().any(|r| r.measured.as_ref().is_some_and(|m| m.run_step_times_s.len() > 1));
        let mfu = self.device.is_some();
        s.push_str(&format!(
            "| variant | ranks | peak pred ({unit}) | peak meas ({unit}) | error | step pred (ms) | step meas (ms) | error |{}{} host slowdown (probe) | comm exposed pred (ms) | comm meas (ms) |\n",
            if per_run { " step runs (ms) |" } else { "" },
            if mfu { " MFU pred / meas |" } else { "" }
        ));
        s.push_str(&format!(
            "|---|---:|---:|---:|---:|---:|---:|---:|{}{}---:|---:|---:|\n",
            if per_run { "---:|" } else { "" },
            if mfu { "---:|" } else { "" }
        ));
        for r in &self.rows {
            let (mp, mt, mc, ranks) = match &r.measured {
                Some(m) => (kib(m.peak_memory_bytes), ms(m.step_time_s), ms(m.comm_time_s), m.ranks.to_string()),
                None => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            let runs = match (&r.measured, per_run) {
                (_, false) => String::new(),
                (Some(m), true) => format!(" {} |", m.run_step_times_s.iter().map(|t| ms(*t)).collect::<Vec<_>>().join(", ")),
                (None, true) => " - |".into(),
            };
            let runs = if mfu {
                let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{:.1}%", x * 100.0));
                format!("{runs} {} / {} |", f(r.predicted_mfu), f(r.measured_mfu()))
            } else {
                runs
            };
            s.push_str(&format!(
                "| `{}` | {} | {} | {} | {} | {} | {} | {} |{runs} {} | {} | {} |\n",
                r.variant,
                ranks,
                kib(r.predicted_peak_bytes),
                mp,
                pct(r.memory_error()),
                ms(r.predicted_step_time_s),
                mt,
                pct(r.step_error()),
                r.host_slowdown.map_or("-".to_string(), |f| format!("x{f:.2}")),
                ms(r.predicted_exposed_comm_s),
                mc
            ));
        }
        if self.rows.iter().any(|r| r.predicted_phases.is_some() || r.measured_phases.is_some()) {
            s.push_str("\n## Step time by phase\n\n");
            s.push_str("Compute time per phase in ms, predicted (the simulator's busy time, no waiting on collectives) / measured (rank 0's `SEERSCALE_PHASE_TIMES` timer, median over steady-state steps; waits inside a phase included).\n\n");
            s.push_str("| variant | prologue | forward | loss | backward | optimizer | sum |\n|---|---:|---:|---:|---:|---:|---:|\n");
            let sum = |p: &PhaseTimes| p.prologue_s + p.forward_s + p.loss_s + p.backward_s + p.optimizer_s;
            for r in &self.rows {
                let cell = |f: &dyn Fn(&PhaseTimes) -> f64| {
                    let a = r.predicted_phases.as_ref().map_or("-".to_string(), |p| ms(f(p)));
                    let b = r.measured_phases.as_ref().map_or("-".to_string(), |p| ms(f(p)));
                    format!("{a} / {b}")
                };
                s.push_str(&format!(
                    "| `{}` | {} | {} | {} | {} | {} | {} |\n",
                    r.variant,
                    cell(&|p| p.prologue_s),
                    cell(&|p| p.forward_s),
                    cell(&|p| p.loss_s),
                    cell(&|p| p.backward_s),
                    cell(&|p| p.optimizer_s),
                    cell(&sum)
                ));
            }
        }
        s.push_str("\n## Predicted peak by category\n\n");
        s.push_str(&format!("The executor's counter has one total per step, so categories are predicted only ({unit} at the predicted peak event).\n\n"));
        for r in &self.rows {
            let parts: Vec<String> = r.predicted_breakdown.iter().map(|(k, v)| format!("{k} {}", kib(*v))).collect();
            s.push_str(&format!("* `{}`: {}\n", r.variant, parts.join(", ")));
        }
        let notes: Vec<String> = self.rows.iter().filter_map(|r| r.note.as_ref().map(|n| format!("`{}`: {n}", r.variant))).collect();
        if !notes.is_empty() || !self.notes.is_empty() {
            s.push_str("\n## Notes\n\n");
            for n in self.notes.iter().chain(&notes) {
                s.push_str(&format!("* {n}\n"));
            }
        }
        s
    }

    /// Grouped bars per variant: predicted vs measured peak memory (top
    /// panel) and step time (bottom panel), each scaled to its own maximum.
    pub fn svg(&self) -> String {
        let n = self.rows.len().max(1);
        // Rotated variant names run right and down past their bar group.
        let (left, right, top) = (70.0, 130.0, 40.0);
        let group_w = 56.0;
        let width = left + right + group_w * n as f64;
        let panel_h = 160.0;
        let label_h = 200.0;
        let height = top + 2.0 * panel_h + 40.0 + label_h;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"18\" font-size=\"14\">{} — predicted vs measured (per rank)</text>\n",
            xml_escape(&self.recipe)
        );
        s.push_str(&format!(
            "<rect x=\"{:.0}\" y=\"24\" width=\"10\" height=\"10\" fill=\"#4e79a7\"/><text x=\"{:.0}\" y=\"33\">predicted</text><rect x=\"{:.0}\" y=\"24\" width=\"10\" height=\"10\" fill=\"#f28e2b\"/><text x=\"{:.0}\" y=\"33\">measured</text>\n",
            width - 190.0,
            width - 176.0,
            width - 100.0,
            width - 86.0
        ));
        type Panel<'a> = (&'a str, Box<dyn Fn(&Row) -> (f64, Option<f64>)>, f64);
        let panels: [Panel; 2] = [
            (
                "peak memory (KiB)",
                Box::new(|r: &Row| (r.predicted_peak_bytes as f64 / 1024.0, r.measured.as_ref().map(|m| m.peak_memory_bytes as f64 / 1024.0))),
                top,
            ),
            ("step time (ms)", Box::new(|r: &Row| (r.predicted_step_time_s * 1e3, r.measured.as_ref().map(|m| m.step_time_s * 1e3))), top + panel_h + 20.0),
        ];
        for (title, f, y0) in &panels {
            let vals: Vec<(f64, Option<f64>)> = self.rows.iter().map(f).collect();
            let max = vals.iter().flat_map(|(p, m)| [Some(*p), *m]).flatten().filter(|v| v.is_finite()).fold(0.0, f64::max).max(1e-9);
            let base = y0 + panel_h - 14.0;
            let scale = (panel_h - 30.0) / max;
            s.push_str(&format!("<text x=\"4\" y=\"{:.0}\" font-size=\"12\">{}</text>\n", y0 + 12.0, xml_escape(title)));
            s.push_str(&format!("<line x1=\"{left}\" y1=\"{base:.1}\" x2=\"{:.1}\" y2=\"{base:.1}\" stroke=\"black\"/>\n", width - right));
            for k in 0..=4 {
                let v = max * k as f64 / 4.0;
                let y = base - v * scale;
                s.push_str(&format!(
                    "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
                    width - right,
                    left - 4.0,
                    y + 4.0,
                    fmt_num(v)
                ));
            }
            for (i, (p, m)) in vals.iter().enumerate() {
                let x = left + group_w * i as f64 + 8.0;
                let hp = (p * scale).max(0.0);
                s.push_str(&format!(
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"18\" height=\"{hp:.1}\" fill=\"#4e79a7\"><title>predicted {}</title></rect>\n",
                    base - hp,
                    fmt_num(*p)
                ));
                if let Some(m) = m {
                    let hm = (m * scale).max(0.0);
                    s.push_str(&format!(
                        "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"18\" height=\"{hm:.1}\" fill=\"#f28e2b\"><title>measured {}</title></rect>\n",
                        x + 20.0,
                        base - hm,
                        fmt_num(*m)
                    ));
                    if let Some(e) = rel_error(*m, *p) {
                        s.push_str(&format!(
                            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"9\">{:+.0}%</text>\n",
                            x + 19.0,
                            base - hp.max(hm) - 3.0,
                            e * 100.0
                        ));
                    }
                }
            }
        }
        let ly = top + 2.0 * panel_h + 30.0;
        for (i, r) in self.rows.iter().enumerate() {
            let x = left + group_w * i as f64 + 27.0;
            s.push_str(&format!(
                "<text x=\"{x:.1}\" y=\"{ly:.1}\" transform=\"rotate(60 {x:.1} {ly:.1})\" font-size=\"10\">{}</text>\n",
                xml_escape(&r.variant)
            ));
        }
        s.push_str("</svg>\n");
        s
    }
}

fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cost_models::hardware::{builtin_hardware, HardwareProfile};

    #[test]
    fn names_round_trip_and_bad_names_are_errors() {
        for v in default_variants() {
            assert_eq!(Variant::parse(&v.to_string()).unwrap(), v);
        }
        let v = Variant::parse("w4-stage-keep-ckptall-bf16-b16-r48").unwrap();
        assert_eq!((v.world_size, v.granularity, v.reshard_after_forward, v.checkpoint), (4, Granularity::Stage, false, CkptLevel::All));
        assert_eq!((v.precision, v.batch_per_rank, v.resolution), (DType::Bf16, 16, 48));
        for bad in [
            "",
            "w2",
            "w0-block-reshard-ckpt0-fp32-b8-r32",
            "w2-blocks-reshard-ckpt0-fp32-b8-r32",
            "w2-block-reshard-ckpt9-fp32-b8-r32",
            "w2-block-reshard-ckpt0-fp64-b8-r32",
            "w2-block-reshard-ckpt0-fp32-b0-r32",
            "w2-block-reshard-ckpt0-fp32-b8-r4",
            "w99-block-reshard-ckpt0-fp32-b8-r32",
        ] {
            assert!(Variant::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_variants("w1-block-keep-ckpt0-fp32-b8-r32, w1-block-keep-ckpt0-fp32-b8-r32").unwrap().len(), 1);
        assert!(parse_variants(" , ").is_err());
    }

    #[test]
    fn default_set_covers_every_axis() {
        let vs = default_variants();
        let has = |f: &dyn Fn(&Variant) -> bool| vs.iter().any(f);
        for w in [1, 2, 4] {
            assert!(has(&|v| v.world_size == w));
        }
        for g in [Granularity::Block, Granularity::Stage, Granularity::Whole] {
            assert!(has(&|v| v.granularity == g));
        }
        for c in [CkptLevel::None, CkptLevel::Some, CkptLevel::All] {
            assert!(has(&|v| v.checkpoint == c));
        }
        assert!(has(&|v| v.reshard_after_forward) && has(&|v| !v.reshard_after_forward));
        assert!(has(&|v| v.precision == DType::Fp32) && has(&|v| v.precision == DType::Bf16));
        assert!(has(&|v| v.batch_per_rank == 8) && has(&|v| v.batch_per_rank == 16));
        assert!(has(&|v| v.resolution == 32) && has(&|v| v.resolution == 48));
    }

    #[test]
    fn variant_plans_carry_their_decisions() {
        let base = Recipe::load("tiny-cpu").unwrap();
        let hw = HardwareProfile::from_spec(builtin_hardware("cpu-local").unwrap());
        let v = Variant::parse("w2-stage-keep-ckptsome-bf16-b16-r48").unwrap();
        let (plan, report) = plan_variant(&base, &hw, &v).unwrap();
        assert_eq!(plan.world_size, 2);
        assert_eq!(plan.batch_per_rank, 16);
        assert_eq!(plan.precision.compute, DType::Bf16);
        assert!(!plan.reshard_after_forward);
        assert_eq!(plan.wrapping, Wrapping::PerStage);
        assert_eq!(plan.recipe.data.crops.iter().map(|c| c.resolution).collect::<Vec<_>>(), vec![48, 24]);
        // tiny: stages 1..4, so "some" = stages 2 and 3, s3 as one segment of two blocks.
        assert_eq!(plan.checkpoint_segments, vec![vec!["s2.b0".to_string()], vec!["s3.b0".to_string(), "s3.b1".to_string()]]);
        assert_eq!(plan.predicted.peak_memory_bytes, report.peak.0);
        let all = plan_variant(&base, &hw, &Variant::parse("w2-stage-keep-ckptall-bf16-b16-r48").unwrap()).unwrap().0;
        assert_eq!(all.checkpoint_segments.len(), 6);
        assert!(all.predicted.peak_memory_bytes < plan.predicted.peak_memory_bytes || all.predicted.peak_memory_bytes > 0);
    }

    #[test]
    fn report_flags_drift_and_renders() {
        let base = Recipe::load("tiny-cpu").unwrap();
        let hw = HardwareProfile::from_spec(builtin_hardware("cpu-local").unwrap());
        let v = Variant::parse("w1-block-reshard-ckpt0-fp32-b8-r32").unwrap();
        let (plan, _) = plan_variant(&base, &hw, &v).unwrap();
        let p = plan.predicted.peak_memory_bytes;
        let meas = |peak: u64| Measured {
            ranks: 1,
            steps: 3,
            peak_memory_bytes: peak,
            peak_memory_min_rank_bytes: peak,
            step_time_s: 0.1,
            comm_time_s: 0.0,
            run_step_times_s: Vec::new(),
        };
        let mut rep = ValidationReport {
            recipe: "tiny-cpu".into(),
            hardware: "cpu".into(),
            hardware_source: "catalog".into(),
            steps: 5,
            warmup: 2,
            repeats: 1,
            memory_tolerance: 0.03,
            step_tolerance: 0.10,
            command: "seerscale validate --recipe tiny-cpu".into(),
            rows: vec![Row::from_plan(&v, &plan, Some(meas(p + p / 50)), None)],
            notes: vec![],
            recipe_config: None,
            device: None,
            measured_with: None,
        };
        assert!(rep.memory_failures().is_empty());
        rep.rows.push(Row::from_plan(&v, &plan, Some(meas(p + p / 10)), None));
        rep.rows.push(Row::from_plan(&v, &plan, None, Some("rank 1 failed".into())));
        let f = rep.memory_failures();
        assert_eq!(f.len(), 2, "{f:?}");
        let unmeasured = ValidationReport { rows: vec![rep.rows[2].clone()], ..rep.clone() };
        let md = unmeasured.markdown(None);
        assert!(md.contains("**Peak memory**: 0/1 variants measured. **Step time**: 0/1 measured."), "no run, no error figures: {md}");
        assert!(f[1].contains("rank 1 failed"));
        let md = rep.markdown(Some("x.svg"));
        assert!(md.contains("seerscale validate --recipe tiny-cpu") && md.contains("+2.0%") && md.contains("+10.0%") && md.contains("x.svg"));
        assert!(!md.contains("host-speed probe"), "no probe, no correction: {md}");
        let svg = rep.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        assert_eq!(svg.matches("<rect").count(), 3 + 2 * (3 + 2));

        // A run the probe found 1.5x slower: the headline stays the
        // calibration-speed prediction, the probe-scaled one is stated too.
        let mut slow = Row::from_plan(&v, &plan, Some(Measured { step_time_s: 1.05 * plan.predicted.step_time_s, ..meas(p) }), None);
        slow.host_slowdown = Some(1.5);
        slow.probe_scaled_step_time_s = Some(plan.predicted.step_time_s * 1.5);
        assert!((slow.step_error().unwrap() - 0.05).abs() < 1e-9);
        assert!((slow.probe_scaled_step_error().unwrap() + 0.3).abs() < 1e-9);
        rep.rows = vec![slow];
        let md = rep.markdown(None);
        assert!(md.contains("**Step time**: 1/1 within ±10% (max |error| 5%, median 5%) (scaled by the host-speed probe's slowdown instead: 0/1 within ±10% (max |error| 30%"), "{md}");
        assert!(md.contains("| x1.50 |"), "{md}");
        assert!(!md.contains("step runs") && !md.contains("interleaved") && !md.contains("Run-to-run"), "one run, no per-run column: {md}");

        // Three runs of the variant: the report says so and lists each run.
        let runs = [0.2, 0.1, 0.11].map(|t| Measured { step_time_s: t, run_step_times_s: vec![t], ..meas(p) });
        rep.rows = vec![Row::from_plan(&v, &plan, combine_runs(&runs), None)];
        rep.repeats = 3;
        let md = rep.markdown(None);
        assert!(md.contains("ran 3 times, in interleaved rounds") && md.contains("| step runs (ms) |") && md.contains("| 200.0, 100.0, 110.0 |"), "{md}");
        // 0.2 is +90% off the others' median 0.105; 0.1 is -35% off 0.155;
        // 0.11 is -27% off 0.15: no run within ±10%, median deviation 35%.
        let (within, n, mid) = rep.run_spread().unwrap();
        assert_eq!((within, n), (0, 3));
        assert!((mid - (0.1_f64 / 0.155 - 1.0).abs()).abs() < 1e-9, "{mid}");
        assert!(md.contains("**Run-to-run spread** (the floor under any prediction): 0/3 single runs within ±10%"), "{md}");
        let runs = [0.1, 0.104, 0.099].map(|t| Measured { step_time_s: t, run_step_times_s: vec![t], ..meas(p) });
        rep.rows = vec![Row::from_plan(&v, &plan, combine_runs(&runs), None)];
        assert_eq!(rep.run_spread().map(|(w, n, _)| (w, n)), Some((3, 3)), "a quiet host: every run near the others");
        let bias = rep.step_bias().unwrap();
        assert!((bias - (0.1 / plan.predicted.step_time_s - 1.0)).abs() < 1e-9);
    }

    /// Allocated-bytes counters do not see the GPU fragmentation margin, so
    /// the row compares against the peak without it; on CPU there is none.
    #[test]
    fn rows_compare_allocated_bytes_without_the_fragmentation_margin() {
        let base = Recipe::load("tiny-cpu").unwrap();
        let v = Variant::parse("w1-block-reshard-ckpt0-bf16-b64-r224").unwrap();
        let gpu = HardwareProfile::from_spec(builtin_hardware("h200-141gb").unwrap());
        let (plan, _) = plan_variant(&base, &gpu, &v).unwrap();
        let frag = plan.predicted.peak_breakdown["fragmentation"];
        assert!(frag > 0, "GPU plans carry a fragmentation margin");
        let row = Row::from_plan(&v, &plan, None, None);
        assert_eq!(row.predicted_peak_bytes, plan.predicted.peak_memory_bytes - frag);
        assert_eq!(row.predicted_breakdown.iter().map(|(_, b)| b).sum::<u64>(), row.predicted_peak_bytes, "the listed categories add up to the compared peak");
        let cpu = HardwareProfile::from_spec(builtin_hardware("cpu-local").unwrap());
        let (plan, _) = plan_variant(&base, &cpu, &v).unwrap();
        assert_eq!(Row::from_plan(&v, &plan, None, None).predicted_peak_bytes, plan.predicted.peak_memory_bytes);
    }

    #[test]
    fn phase_times_are_medians_of_rank0_after_warmup() {
        let log = "phase-times rank=0 step=0 proto_norm=9 zero_grad=0 forward=100 loss=1 run_backward=90 backward+loss=95 optimizer=20\n\
                   phase-times rank=0 step=2 proto_norm=0.2 zero_grad=0.1 forward=8 loss=0.5 run_backward=16 backward+loss=18.5 optimizer=3\n\
                   phase-times rank=1 step=2 proto_norm=0.2 zero_grad=0.1 forward=80 loss=0.5 run_backward=16 backward+loss=18.5 optimizer=3\n\
                   phase-times rank=0 step=3 proto_norm=0.2 zero_grad=0.1 forward=10 loss=0.5 run_backward=16 backward+loss=20.5 optimizer=5\n\
                   other line\n";
        let p = parse_phase_times(log, 2).unwrap();
        assert!((p.forward_s - 9e-3).abs() < 1e-12, "{p:?}");
        assert!((p.backward_s - 19e-3).abs() < 1e-12, "{p:?}");
        assert!((p.optimizer_s - 4e-3).abs() < 1e-12, "{p:?}");
        assert!((p.prologue_s - 0.3e-3).abs() < 1e-12, "{p:?}");
        assert!(parse_phase_times("nothing", 0).is_none());
    }
}
