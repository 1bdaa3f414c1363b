//! Validation variants: names, parsing, the default set, and their plans
//! with every decision fixed.

use crate::build::build_plan;
use crate::memory::{Decisions, MemoryReport};
use crate::search::{BatchPolicy, GpuCount, SearchSpace, Searcher, ShardingSpace, DEFAULT_BUCKET_MIB};
use crate::simulator::PhaseTimes;
use cost_models::compute::ComputeModel;
use cost_models::config::ModelConfig;
use cost_models::graph::{BlockKind, ModelGraph, Workload};
use cost_models::hardware::HardwareProfile;
use cost_models::padding::ChannelPadding;
use cost_models::DType;
use runspec::plan::{Plan, Precision};
use runspec::recipe::{Recipe, Wrapping};
use runspec::schedule::BackwardOrder;
use runspec::sharding::{Sharding, Strategy};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::ops::Range;

use super::ValidationError;

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
    /// The crop groups' order in backward (`-bygroup`: one after the other).
    #[serde(default)]
    pub backward_order: BackwardOrder,
    /// Channels padded to tensor-core multiples (`-pad`).
    #[serde(default)]
    pub channel_padding: ChannelPadding,
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
        )?;
        if self.backward_order == BackwardOrder::ByCropGroup {
            write!(f, "-bygroup")?;
        }
        if self.channel_padding.is_on() {
            write!(f, "-pad")?;
        }
        Ok(())
    }
}

/// Largest world size a variant may ask for (ranks are local processes).
pub const MAX_VARIANT_WORLD: usize = 16;

impl Variant {
    pub fn parse(name: &str) -> Result<Variant, ValidationError> {
        let bad = |why: &str| ValidationError::BadVariant { name: name.to_string(), why: why.to_string() };
        let mut parts: Vec<&str> = name.trim().split('-').collect();
        let channel_padding = if parts.len() > 7 && parts.last() == Some(&"pad") {
            parts.pop();
            ChannelPadding::On
        } else {
            ChannelPadding::Off
        };
        let backward_order = match parts.get(7) {
            None => BackwardOrder::Together,
            Some(&"bygroup") => BackwardOrder::ByCropGroup,
            Some(o) => return Err(bad(&format!("`{o}`: the optional last parts must be bygroup, then pad"))),
        };
        if !(7..=8).contains(&parts.len()) {
            return Err(bad("needs 7 dash-separated parts (and optionally -bygroup, -pad)"));
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
        Ok(Variant {
            world_size: world,
            sharding,
            granularity,
            reshard_after_forward: reshard,
            checkpoint,
            precision,
            batch_per_rank: batch,
            resolution,
            backward_order,
            channel_padding,
        })
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
        backward_orders: vec![v.backward_order],
        paddings: vec![v.channel_padding],
        shardings: ShardingSpace::Only(v.sharding),
        bucket_mib: DEFAULT_BUCKET_MIB,
        exhaustive: true,
        headroom: 0.0,
        reliability: crate::failures::Reliability::builtin(),
    };
    let mut s = Searcher::new(recipe, space).map_err(|source| ValidationError::Plan { name: v.to_string(), source })?;
    let checkpoint = v.checkpoint.segments(s.graph(v.precision, v.channel_padding, v.batch_per_rank));
    let d = Decisions {
        world_size: v.world_size,
        batch_per_rank: v.batch_per_rank,
        precision: Precision { compute: v.precision, reduce: v.precision },
        reshard_after_forward: v.reshard_after_forward,
        sharding: v.sharding.resolved(v.world_size),
        wrapping: v.granularity.wrapping(),
        recompute_segments: checkpoint,
        backward_order: v.backward_order,
        channel_padding: v.channel_padding,
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
    let g =
        ModelGraph::build_executed(&model, &Workload { images: v.batch_per_rank as u64, crops: recipe.crop_groups(), dtype: v.precision }, v.channel_padding);
    let compute = ComputeModel::new(hardware);
    Ok((g.blocks.iter().filter(|b| compute.block_time(&g.block_key(b)).is_some()).count(), g.blocks.len()))
}
