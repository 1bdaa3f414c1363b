//! Per-rank memory over one training step, event by event: the replay walks
//! the step schedule the executor runs (`runspec::schedule`, compiled from
//! the same units, segments and reshard policy):
//!
//! * forward, block by block: gather the block's units, prefetch the next
//!   block's, run the block (with grad: keep its saved tensors; inside a
//!   checkpointed segment: no grad, keep only the segment input), free units
//!   whose last forward block it was (reshard_after_forward; the last
//!   block's units stay for backward);
//! * backward, last block first: at the end of a checkpointed segment gather
//!   all its units and recompute it with grad; back-propagate the block
//!   (gradient of its output in, gradient of its input and flat-parameter
//!   gradients out); accumulate unit gradients in the reduce dtype; when a
//!   unit's first block is done, free its parameters and reduce its
//!   gradient as the sharding does (reduce-scatter within the shard group,
//!   all-reduce across replicas, each at most two in flight), then add it
//!   into the fp32 shard gradient;
//! * optimizer step on the fp32 shards.
//!
//! Two evaluations of the same model: [`MemoryModel::report`] replays the
//! schedule with an explicit ledger (the timeline and breakdowns), and
//! [`MemoryModel::peak`] evaluates a closed form that decomposes along the
//! block sequence: every event's value is `static + A + local`, where `A`
//! is what earlier pieces (plain blocks or checkpointed segments) hold for
//! backward and `local` depends only on the piece itself. Tests check the
//! two agree on random instances; the checkpoint DP (checkpoint.rs) is exact
//! with respect to `peak` because it searches over exactly this form.
//!
//! The closed form is the crop groups' `Together` backward order. With
//! `ByCropGroup` (one crop group's whole trunk backward after the other's)
//! what an event holds depends on every group's placement at once, so
//! `peak` replays the schedule; the replay costs each group's share of a
//! block ([`GroupMem`]).

use crate::wrapping::Unit;
use cost_models::graph::{BlockKind, Layer, LayerKind, ModelGraph};
use cost_models::hardware::{DeviceKind, HardwareSpec};
use cost_models::padding::ChannelPadding;
#[cfg(test)]
use cost_models::quantity::MIB;
use cost_models::{Bytes, DType};
use runspec::plan::Precision;
use runspec::recipe::{Recipe, Wrapping};
use runspec::schedule::{BackwardOrder, Event, Keep, Layout, Schedule};
use runspec::sharding::{Reduction, Sharding};
use std::collections::BTreeMap;
use std::ops::Range;

/// What the search decides (checkpointing is evaluated separately).
#[derive(Clone, Debug, PartialEq)]
pub struct Decisions {
    pub world_size: usize,
    pub batch_per_rank: usize,
    pub precision: Precision,
    pub reshard_after_forward: bool,
    /// DDP, FSDP or hybrid (resolved: its shard group is set).
    pub sharding: Sharding,
    pub wrapping: Wrapping,
    /// Checkpointed segments: block index ranges.
    pub recompute_segments: Vec<Range<usize>>,
    /// The crop groups' order in backward.
    pub backward_order: BackwardOrder,
    /// Channels padded to tensor-core multiples (the graph's widths).
    pub channel_padding: ChannelPadding,
}

impl Decisions {
    /// Ranks a parameter is sharded over.
    pub fn shard_group(&self) -> usize {
        self.sharding.resolved(self.world_size).shard_group.max(1)
    }
}

/// Memory categories of the breakdown, in display order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Category {
    ParamsShard,
    GradsShard,
    Optimizer,
    UnshardedParams,
    GradBuffers,
    Activations,
    Recompute,
    HeadLoss,
    Transient,
    Fragmentation,
}

impl Category {
    pub const ALL: [Category; 10] = [
        Category::ParamsShard,
        Category::GradsShard,
        Category::Optimizer,
        Category::UnshardedParams,
        Category::GradBuffers,
        Category::Activations,
        Category::Recompute,
        Category::HeadLoss,
        Category::Transient,
        Category::Fragmentation,
    ];
    pub fn name(self) -> &'static str {
        match self {
            Category::ParamsShard => "params_shard",
            Category::GradsShard => "grads_shard",
            Category::Optimizer => "optimizer",
            Category::UnshardedParams => "unsharded_params",
            Category::GradBuffers => "grad_buffers",
            Category::Activations => "activations",
            Category::Recompute => "recompute",
            Category::HeadLoss => "head_loss",
            Category::Transient => "transient",
            Category::Fragmentation => runspec::plan::FRAGMENTATION,
        }
    }
    fn idx(self) -> usize {
        self as usize
    }
}

/// How the device allocator rounds each tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Allocator {
    /// Every allocation is a multiple of this. The CUDA caching allocator
    /// rounds every request to 512 bytes and counts the rounded block as
    /// allocated; its 2 MiB and 20 MiB granularity is that of the segments
    /// it reserves from the driver, which the allocated-bytes peak does not
    /// see (that is what the fragmentation margin is for).
    pub quantum: u64,
    /// Fraction of live bytes lost to fragmentation, added on top.
    pub fragmentation: f64,
}

impl Allocator {
    /// CUDA caching allocator; CPU: the executor's counting allocator sees
    /// exact byte counts and there is no cache to fragment.
    pub fn for_device(kind: DeviceKind) -> Allocator {
        match kind {
            DeviceKind::Gpu => Allocator { quantum: 512, fragmentation: 0.03 },
            DeviceKind::Cpu => Allocator { quantum: 1, fragmentation: 0.0 },
        }
    }
    /// Bytes the allocator hands out for a tensor of `b` bytes.
    pub fn round(&self, b: u64) -> Bytes {
        if b == 0 {
            Bytes::ZERO
        } else {
            Bytes(b).round_up(self.quantum)
        }
    }
    /// Fragmentation added to `raw` live bytes (monotone in `raw`).
    pub fn frag(&self, raw: u64) -> u64 {
        (raw as f64 * self.fragmentation).ceil() as u64
    }
    /// Largest raw total whose total with fragmentation stays within `budget`.
    pub fn raw_budget(&self, budget: Bytes) -> u64 {
        let fits = |r: u64| (r as u128 + self.frag(r) as u128) <= budget.0 as u128;
        // Binary search: `r + frag(r)` is monotone in `r`.
        let (mut lo, mut hi) = (0u64, budget.0);
        if !fits(0) {
            return 0;
        }
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }
}

/// One block's activation memory, independent of the placement.
#[derive(Clone, Debug, PartialEq)]
pub struct BlockMem {
    pub name: String,
    /// 1-based stage of residual blocks (for "activations of s3 dominate").
    pub stage: Option<usize>,
    /// What a forward with grad keeps until the block's backward (autograd's
    /// saved tensors plus the output the executor keeps).
    pub kept: Bytes,
    /// The block's output (the next block's input).
    pub output: Bytes,
    /// Gradient of the block's input produced by its backward (0 for the
    /// stem: images need no gradient).
    pub input_grad: Bytes,
    /// Temporaries above `kept` while running forward with grad.
    pub fwd_transient: Bytes,
    /// Peak of a no-grad forward (checkpointed), output included, input not.
    pub nograd_peak: Bytes,
    /// Backward working set: intermediate gradients and the input gradient
    /// (the incoming output gradient and parameter gradients are separate).
    pub bwd_transient: Bytes,
    /// May be inside a checkpointed segment (trunk blocks).
    pub checkpointable: bool,
    /// Each crop group's share, in the order the executor runs them (a
    /// trunk block runs each group separately); one entry, the whole
    /// block, for the head.
    pub groups: Vec<GroupMem>,
}

/// One crop group's part of a block: what a backward that runs the group
/// alone (`BackwardOrder::ByCropGroup`) holds and frees.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupMem {
    pub kept: Bytes,
    pub output: Bytes,
    pub fwd_transient: Bytes,
    /// Backward working set of this group alone, its input gradient included.
    pub bwd_transient: Bytes,
}

impl BlockMem {
    /// One group holding the whole block (head blocks, single-group runs).
    pub fn whole(&self) -> GroupMem {
        GroupMem { kept: self.kept, output: self.output, fwd_transient: self.fwd_transient, bwd_transient: self.bwd_transient }
    }
    /// Group `g`'s share (the whole block if it has no such group).
    fn group(&self, g: Option<usize>) -> GroupMem {
        match g.and_then(|g| self.groups.get(g)) {
            Some(x) => x.clone(),
            None => self.whole(),
        }
    }
    /// Output bytes per group (what the next block's backward hands back).
    fn outputs(&self) -> Vec<u64> {
        if self.groups.is_empty() {
            vec![self.output.0]
        } else {
            self.groups.iter().map(|g| g.output.0).collect()
        }
    }
}

/// One unit's memory on one rank.
#[derive(Clone, Debug, PartialEq)]
pub struct UnitMem {
    pub name: String,
    pub blocks: Range<usize>,
    /// Gathered flat parameter (compute dtype, fp32 for the prototypes).
    pub unsharded: Bytes,
    /// fp32 master shard (the grad shard and each optimiser state are the same size).
    pub shard: Bytes,
    /// Unsharded gradient accumulated in the reduce dtype.
    pub grad_acc: Bytes,
    /// What a reduce-scatter holds from its start to its wait: the output
    /// shard (reduce dtype), and on CPU Gloo's flat copy of its input; 0
    /// where nothing scatters (the whole gradient is then reduced in place).
    pub rs_out: Bytes,
    /// fp32 copy of the reduced gradient made when adding it into the grad
    /// shard (0 if the reduce dtype is fp32).
    pub rs_cast: Bytes,
    /// Gradient of the flat parameter produced by a block's backward.
    pub param_grad: Bytes,
}

/// What one gradient event of the schedule does to memory: the unit's
/// gathered parameters freed, bytes allocated, then (if it is a point of
/// the timeline) the bytes live only at that point, then bytes freed.
struct GradEffect {
    unit: usize,
    frees_params: bool,
    alloc: u64,
    point: Option<(&'static str, u64)>,
    free: u64,
}

/// Data-loading workers per rank the executor uses by default
/// (`seerscale train --workers`).
pub const LOADER_WORKERS: u64 = 2;
/// Batches each worker's channel holds ahead of the consumer (the
/// executor's `LoaderConfig::prefetch` in `train.rs`).
pub const LOADER_PREFETCH: u64 = 2;

/// Placement-independent memory that is not per block or per unit.
#[derive(Clone, Debug, PartialEq)]
pub struct StaticMem {
    /// fp32 optimiser states per parameter (SGD momentum 1, Adam 2).
    pub optimizer_states: u64,
    /// The image batch, alive for the whole step.
    pub input_batch: Bytes,
    /// Image batches the host holds besides `input_batch`, counted only when
    /// the device is the CPU (a GPU's allocator never sees them): the fp32
    /// batch the loader handed over when the step computes in another dtype,
    /// and the data loader's full prefetch queue, [`LOADER_WORKERS`] x
    /// ([`LOADER_PREFETCH`] + 1) fp32 batches (each worker's channel plus the
    /// batch it blocks on). That queue is full whenever the loader keeps up
    /// with training, which it must for the step not to be data-bound.
    /// Shown under `activations`.
    pub host_batches: Bytes,
    /// BN running mean/var (fp32, every rank holds them whole); shown
    /// under `params_shard`.
    pub bn_buffers: Bytes,
    /// SwAV's queue of past embeddings on this rank (fp32, kept across
    /// steps); shown under `activations`.
    pub swav_queue: Bytes,
    /// SwAV loss during the last block's backward: log-softmax outputs,
    /// Sinkhorn codes, score gradient and Sinkhorn temporaries.
    pub head_loss: Bytes,
    /// Temporaries of the optimiser step.
    pub optimizer_transient: Bytes,
}

/// Everything the model needs, already in allocator-rounded bytes.
#[derive(Clone, Debug, PartialEq)]
pub struct MemProfile {
    pub blocks: Vec<BlockMem>,
    pub units: Vec<UnitMem>,
    pub statics: StaticMem,
    pub reshard_after_forward: bool,
    /// The collectives that reduce a gradient (from the sharding).
    pub reduction: Reduction,
    pub backward_order: BackwardOrder,
    /// Crop groups the trunk runs separately, and the trunk's blocks (`0..trunk`).
    pub crop_groups: usize,
    pub trunk: usize,
    pub allocator: Allocator,
    pub usable: Bytes,
}

/// One point of the timeline.
#[derive(Clone, Debug, PartialEq)]
pub struct MemEvent {
    pub label: String,
    pub total: Bytes,
    pub by_category: BTreeMap<String, Bytes>,
}

#[derive(Clone, Debug, PartialEq)]
pub struct MemoryReport {
    pub peak: Bytes,
    pub peak_event: usize,
    /// At the peak, by category (every category present, zeros included).
    pub breakdown: BTreeMap<String, Bytes>,
    /// At the peak: each unit's shards, optimiser state, gathered
    /// parameters and gradient buffers, largest first.
    pub by_unit: Vec<(String, Bytes)>,
    /// At the peak: activation bytes held for (or being computed by) each
    /// block, largest first.
    pub by_block: Vec<(String, Bytes)>,
    pub timeline: Vec<MemEvent>,
    pub usable: Bytes,
}

impl MemoryReport {
    pub fn fits(&self) -> bool {
        self.peak <= self.usable
    }

    /// Activation bytes at the peak by stage (`s3`; other blocks by name),
    /// largest first.
    pub fn activations_by_stage(&self) -> Vec<(String, Bytes)> {
        let mut m: BTreeMap<String, u64> = BTreeMap::new();
        for (b, x) in &self.by_block {
            *m.entry(stage_of(b)).or_default() += x.0;
        }
        let mut v: Vec<(String, Bytes)> = m.into_iter().map(|(k, x)| (k, Bytes(x))).collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }

    /// What dominates the peak, in words: the largest of activations (with
    /// recompute and transients), gathered units, shards and the SwAV loss,
    /// with the stage or unit responsible.
    pub fn dominant(&self) -> String {
        let sum = |cats: &[Category]| -> u64 { cats.iter().map(|c| self.breakdown.get(c.name()).map_or(0, |b| b.0)).sum() };
        let act = sum(&[Category::Activations, Category::Recompute, Category::Transient]);
        let units = sum(&[Category::UnshardedParams, Category::GradBuffers]);
        let shards = sum(&[Category::ParamsShard, Category::GradsShard, Category::Optimizer]);
        let head = sum(&[Category::HeadLoss]);
        let top = act.max(units).max(shards).max(head);
        if top == act {
            match self.activations_by_stage().first() {
                Some((s, b)) => format!("activations of {s} dominate ({:.1} GiB)", b.as_gib()),
                None => "activations dominate".into(),
            }
        } else if top == units {
            match self.by_unit.first() {
                Some((u, b)) => format!("gathered parameters and gradient buffers dominate (largest unit {u}: {:.1} GiB)", b.as_gib()),
                None => "gathered parameters dominate".into(),
            }
        } else if top == shards {
            format!("sharded parameters, gradients and optimiser state dominate ({:.1} GiB; more ranks shard them thinner)", Bytes(shards).as_gib())
        } else {
            format!("the SwAV loss matrices dominate ({:.1} GiB)", Bytes(head).as_gib())
        }
    }

    /// The one-line verdict when the peak does not fit `hardware`:
    /// "needs 51.2 GiB, A100-40GB has 37.5 usable: activations of s3 dominate (..)".
    pub fn shortfall(&self, hardware: &str) -> String {
        format!("needs {:.1} GiB, {hardware} has {:.1} usable: {}", self.peak.as_gib(), self.usable.as_gib(), self.dominant())
    }
}

/// The stage of a block name (`s3.b12` -> `s3`); other blocks keep their name.
fn stage_of(block: &str) -> String {
    match block.split_once('.') {
        Some((s, _)) if s.starts_with('s') && s.len() > 1 && s[1..].chars().all(|c| c.is_ascii_digit()) => s.to_string(),
        _ => block.to_string(),
    }
}

/// The memory model for one (graph, units, recipe, decisions); evaluates
/// any checkpoint placement.
#[derive(Clone, Debug)]
pub struct MemoryModel {
    p: MemProfile,
    n: usize,
    /// params + grads shards, optimiser state, images.
    static_base: u64,
    /// Units whose block span contains each block.
    units_of: Vec<Vec<usize>>,
    /// `q[s * n + e]`: gathered bytes of units with start <= s and last block >= e.
    q: Vec<u64>,
    /// Gradient buffers live during block i's backward (before its own).
    gs_bwd: Vec<u64>,
    /// Parameter gradients produced by block i's backward.
    pg: Vec<u64>,
    /// Post-backward events of block i: (gradient state incl. temporaries,
    /// unsharded bytes freed so far).
    post: Vec<Vec<(u64, u64)>>,
    /// max over post events of (gradient state - freed).
    post_max: Vec<i64>,
    /// Events after the last backward (drain, optimiser), absolute raw.
    tail_max: u64,
}

impl MemoryModel {
    /// Builds the model from the graph of one rank's step.
    pub fn new(graph: &ModelGraph, units: &[Unit], recipe: &Recipe, d: &Decisions, hw: &HardwareSpec) -> MemoryModel {
        MemoryModel::calibrated(graph, units, recipe, d, hw, &[])
    }

    /// Same, with measured backward peaks per block (`BlockTime::
    /// backward_peak_bytes`, `None` where not measured): a block's backward
    /// transient is the larger of the modelled one and what was measured
    /// beyond its parameter gradients (kernel workspaces the storage rule
    /// does not know, e.g. oneDNN's bf16 conv backward on CPU).
    pub fn calibrated(graph: &ModelGraph, units: &[Unit], recipe: &Recipe, d: &Decisions, hw: &HardwareSpec, measured_bwd: &[Option<u64>]) -> MemoryModel {
        MemoryModel::from_profile(profile(graph, units, recipe, d, hw, Allocator::for_device(hw.kind), measured_bwd))
    }

    pub fn from_profile(p: MemProfile) -> MemoryModel {
        let n = p.blocks.len();
        let nu = p.units.len();
        let mut units_of = vec![Vec::new(); n];
        // Clamp spans so a malformed profile cannot index out of bounds.
        let spans: Vec<Range<usize>> = p.units.iter().map(|u| u.blocks.start.min(n)..u.blocks.end.min(n)).collect();
        for (ui, r) in spans.iter().enumerate() {
            for b in r.clone() {
                units_of[b].push(ui);
            }
        }
        // 2-D suffix/prefix sums for gathered bytes by (start <= s, last >= e).
        let mut q = vec![0u64; n * n];
        for (ui, r) in spans.iter().enumerate() {
            if r.start < r.end {
                q[r.start * n + (r.end - 1)] += p.units[ui].unsharded.0;
            }
        }
        for s in 0..n {
            for e in (0..n.saturating_sub(1)).rev() {
                q[s * n + e] += q[s * n + e + 1];
            }
        }
        for s in 1..n {
            for e in 0..n {
                q[s * n + e] += q[(s - 1) * n + e];
            }
        }
        // Gradient state over backward: does not depend on checkpointing,
        // so it is read off the schedule compiled without segments.
        let params_shard: u64 = p.units.iter().map(|u| u.shard.0).sum();
        let static_base = params_shard * (2 + p.statics.optimizer_states)
            + p.statics.input_batch.0
            + p.statics.host_batches.0
            + p.statics.bn_buffers.0
            + p.statics.swav_queue.0;
        let tail_max = static_base + p.statics.optimizer_transient.0;
        let mut m = MemoryModel {
            n,
            static_base,
            units_of,
            q,
            gs_bwd: vec![0; n],
            pg: vec![0; n],
            post: vec![Vec::new(); n],
            post_max: vec![i64::MIN; n],
            tail_max,
            p,
        };
        let mut gs = 0u64;
        let mut has_acc = vec![false; nu];
        let mut block: Option<usize> = None;
        let mut freed = 0u64;
        let schedule = Schedule::compile(&m.layout(), &[], m.p.reshard_after_forward, m.p.reduction, BackwardOrder::Together);
        for &event in &schedule.events {
            if let Event::Backward { block: i, .. } = event {
                m.gs_bwd[i] = gs;
                m.pg[i] = m.units_of[i].iter().map(|&u| m.p.units[u].param_grad.0).sum();
                for &u in &m.units_of[i] {
                    if !std::mem::replace(&mut has_acc[u], true) {
                        gs += m.p.units[u].grad_acc.0;
                    }
                }
                block = Some(i);
                freed = 0;
            } else if let (Some(e), Some(i)) = (m.grad_effect(event), block) {
                if e.frees_params {
                    freed += m.p.units[e.unit].unsharded.0;
                }
                gs += e.alloc;
                if let Some((_, extra)) = e.point {
                    m.post[i].push((gs + extra, freed));
                }
                gs -= e.free;
            }
        }
        for i in 0..n {
            m.post_max[i] = m.post[i].iter().map(|&(g, f)| g as i64 - f as i64).max().unwrap_or(i64::MIN);
        }
        m
    }

    /// The memory effect of a gradient event (`None` for other events).
    fn grad_effect(&self, event: Event) -> Option<GradEffect> {
        let none = |unit| GradEffect { unit, frees_params: false, alloc: 0, point: None, free: 0 };
        Some(match event {
            Event::GradReady { unit } => GradEffect { frees_params: true, ..none(unit) },
            Event::ReduceScatter { unit } => GradEffect { alloc: self.p.units[unit].rs_out.0, point: Some(("reduce-scatter", 0)), ..none(unit) },
            Event::WaitReduceScatter { unit } => GradEffect { free: self.p.units[unit].grad_acc.0, ..none(unit) },
            Event::AllReduce { unit } | Event::WaitAllReduce { unit } => none(unit),
            Event::ShardGrad { unit } => {
                let u = &self.p.units[unit];
                let buffer = if self.p.reduction.scatter { u.rs_out.0 } else { u.grad_acc.0 };
                GradEffect { point: Some(("gradient into shard", u.rs_cast.0)), free: buffer, ..none(unit) }
            }
            _ => return None,
        })
    }
    /// Which units each block needs (the units' block spans), for the
    /// step schedule the replay walks.
    pub fn layout(&self) -> Layout {
        let blocks: Vec<Vec<usize>> = self.p.units.iter().map(|u| (u.blocks.start.min(self.n)..u.blocks.end.min(self.n)).collect()).collect();
        Layout::new(self.n, &blocks).with_crop_groups(self.p.crop_groups, self.p.trunk)
    }

    /// Every checkpointable block its own segment: about the least memory
    /// any placement holds.
    pub fn every_block_alone(&self) -> Vec<Range<usize>> {
        self.p.blocks.iter().enumerate().filter(|(_, b)| b.checkpointable).map(|(i, _)| i..i + 1).collect()
    }

    /// Whether `peak` replays the schedule (the crop groups run one after
    /// the other) rather than evaluating the closed form.
    pub fn replays(&self) -> bool {
        self.p.backward_order == BackwardOrder::ByCropGroup && self.p.crop_groups > 1
    }

    pub fn profile(&self) -> &MemProfile {
        &self.p
    }
    pub fn num_blocks(&self) -> usize {
        self.n
    }
    pub fn usable(&self) -> Bytes {
        self.p.usable
    }
    pub fn allocator(&self) -> &Allocator {
        &self.p.allocator
    }
    /// Placement-independent bytes present at every event.
    pub fn static_bytes(&self) -> Bytes {
        Bytes(self.static_base)
    }

    /// Raw bytes of the events after backward (drain, optimiser).
    pub(crate) fn tail_raw(&self) -> u64 {
        self.tail_max
    }

    /// Gathered bytes of units with first block <= s and last block >= e.
    fn q(&self, s: usize, e: usize) -> u64 {
        self.q[s * self.n + e]
    }
    fn gathered_fwd(&self, i: usize) -> u64 {
        let s = (i + 1).min(self.n - 1);
        if self.p.reshard_after_forward {
            self.q(s, i)
        } else {
            self.q(s, 0)
        }
    }
    /// During backward of block i inside a piece starting at a.
    fn gathered_bwd(&self, i: usize, a: usize) -> u64 {
        if self.p.reshard_after_forward {
            self.q(i, a.min(i.saturating_sub(1)))
        } else {
            self.q(i, 0)
        }
    }
    fn gathered_rec(&self, a: usize, b: usize) -> u64 {
        if self.p.reshard_after_forward {
            self.q(b - 1, a)
        } else {
            self.q(b - 1, 0)
        }
    }
    /// Gradient of block i's output flowing in during its backward.
    fn grad_in(&self, i: usize) -> u64 {
        self.p.blocks.get(i + 1).map_or(0, |b| b.input_grad.0)
    }
    fn head(&self, i: usize) -> u64 {
        if i + 1 == self.n {
            self.p.statics.head_loss.0
        } else {
            0
        }
    }

    /// What a piece holds for later backward once its forward is done.
    pub(crate) fn held(&self, a: usize, b: usize, ckpt: bool) -> u64 {
        if !ckpt {
            self.p.blocks[a].kept.0
        } else if b < self.n {
            self.p.blocks[b - 1].output.0
        } else {
            0
        }
    }

    /// Highest event of a piece minus (static + what earlier pieces hold).
    /// A plain piece is one block (`b == a + 1`, `ckpt == false`).
    pub(crate) fn piece_local(&self, a: usize, b: usize, ckpt: bool) -> i64 {
        let bl = &self.p.blocks;
        let mut m = i64::MIN;
        if !ckpt {
            let i = a;
            m = m.max((self.gathered_fwd(i) + bl[i].kept.0 + bl[i].fwd_transient.0) as i64);
            m = m.max(self.bwd_event(i, a, bl[i].kept.0));
            m = m.max(self.post_event(i, a, 0));
            return m;
        }
        // Forward without grad.
        for j in a..b {
            let input = if j > a { bl[j - 1].output.0 } else { 0 };
            m = m.max((self.gathered_fwd(j) + input + bl[j].nograd_peak.0) as i64);
        }
        // Recompute with grad, then backward of each block.
        let rec_base = self.gs_bwd[b - 1] + self.gathered_rec(a, b) + self.grad_in(b - 1);
        let mut kept = 0u64;
        for blk in &bl[a..b] {
            m = m.max((rec_base + kept + blk.kept.0 + blk.fwd_transient.0) as i64);
            kept += blk.kept.0;
        }
        for i in (a..b).rev() {
            m = m.max(self.bwd_event(i, a, kept));
            kept -= bl[i].kept.0;
            m = m.max(self.post_event(i, a, kept));
        }
        m
    }

    /// `piece_local(a, b, true)` for every `b` in `a+1..=end`, in O(end - a):
    /// forward, backward and post events of block i depend only on (a, i),
    /// and recompute events on running maxima, so each `b` extends the last.
    pub(crate) fn segment_locals(&self, a: usize, end: usize) -> Vec<i64> {
        let bl = &self.p.blocks;
        let mut out = Vec::with_capacity(end.saturating_sub(a));
        let (mut fwd, mut bwd, mut rec) = (i64::MIN, i64::MIN, i64::MIN);
        let mut kept = 0u64;
        for j in a..end.min(self.n) {
            let input = if j > a { bl[j - 1].output.0 } else { 0 };
            fwd = fwd.max((self.gathered_fwd(j) + input + bl[j].nograd_peak.0) as i64);
            rec = rec.max((kept + bl[j].kept.0 + bl[j].fwd_transient.0) as i64);
            bwd = bwd.max(self.post_event(j, a, kept));
            kept += bl[j].kept.0;
            bwd = bwd.max(self.bwd_event(j, a, kept));
            let rec_base = (self.gs_bwd[j] + self.gathered_rec(a, j + 1) + self.grad_in(j)) as i64;
            out.push(fwd.max(bwd).max(rec_base + rec));
        }
        out
    }

    /// Backward of block i; `kept` = activations of the piece still held (block i's included).
    fn bwd_event(&self, i: usize, a: usize, kept: u64) -> i64 {
        let b = &self.p.blocks[i];
        (self.gs_bwd[i] + self.pg[i] + self.gathered_bwd(i, a) + kept + self.grad_in(i) + b.bwd_transient.0 + self.head(i)) as i64
    }
    /// Unit frees / reduce-scatters after block i's backward; `kept` excludes block i.
    fn post_event(&self, i: usize, a: usize, kept: u64) -> i64 {
        if self.post[i].is_empty() {
            return i64::MIN;
        }
        self.post_max[i] + (self.gathered_bwd(i, a) + kept + self.p.blocks[i].input_grad.0) as i64
    }

    /// Total bytes for a raw live-byte count (adds fragmentation).
    fn total(&self, raw: u64) -> Bytes {
        Bytes(raw + self.p.allocator.frag(raw))
    }

    /// Peak bytes for a checkpoint placement (closed form; fast path for the search).
    pub fn peak(&self, checkpoint: &[Range<usize>]) -> Bytes {
        if self.replays() {
            return Replay::new(self, &normalize_segments(self.n, checkpoint)).peak();
        }
        self.total(self.peak_raw(&normalize_segments(self.n, checkpoint)))
    }

    pub(crate) fn peak_raw(&self, segs: &[Range<usize>]) -> u64 {
        let mut best = self.tail_max;
        let mut held = 0u64;
        let mut k = 0usize;
        let mut si = 0usize;
        while k < self.n {
            let (b, ckpt) = match segs.get(si) {
                Some(s) if s.start == k => {
                    si += 1;
                    (s.end, true)
                }
                _ => (k + 1, false),
            };
            let local = self.piece_local(k, b, ckpt);
            best = best.max((self.static_base as i64 + held as i64 + local).max(0) as u64);
            held += self.held(k, b, ckpt);
            k = b;
        }
        best
    }

    /// The whole timeline with breakdowns, replaying the executor's schedule.
    pub fn report(&self, checkpoint: &[Range<usize>]) -> MemoryReport {
        Replay::new(self, &normalize_segments(self.n, checkpoint)).run()
    }
}

/// Sorted, clamped to the model, empty ranges dropped, overlaps merged, so
/// any input describes some valid placement (plans are validated on load).
pub fn normalize_segments(n: usize, segs: &[Range<usize>]) -> Vec<Range<usize>> {
    let mut v: Vec<Range<usize>> = segs.iter().map(|r| r.start.min(n)..r.end.min(n)).filter(|r| r.start < r.end).collect();
    v.sort_by_key(|r| r.start);
    let mut out: Vec<Range<usize>> = Vec::with_capacity(v.len());
    for r in v {
        match out.last_mut() {
            Some(last) if r.start < last.end => last.end = last.end.max(r.end),
            _ => out.push(r),
        }
    }
    out
}

// ------------------------------------------------------------------ replay

/// Explicit ledger replaying the executor's step (the ground truth the
/// closed form in `piece_local` must equal).
struct Replay<'m> {
    m: &'m MemoryModel,
    segs: &'m [Range<usize>],
    cat: [u64; 10],
    /// Activation bytes attributed to each block.
    act_by_block: Vec<u64>,
    /// Unsharded + gradient-buffer bytes attributed to each unit.
    unit_live: Vec<u64>,
    gathered: Vec<bool>,
    events: Vec<MemEvent>,
    peak: (u64, usize, [u64; 10], Vec<u64>, Vec<u64>),
    /// Record every event and the breakdown at the peak (false: the peak
    /// total only, for the search).
    timeline: bool,
}

impl<'m> Replay<'m> {
    fn new(m: &'m MemoryModel, segs: &'m [Range<usize>]) -> Replay<'m> {
        let mut cat = [0u64; 10];
        let shard: u64 = m.p.units.iter().map(|u| u.shard.0).sum();
        cat[Category::ParamsShard.idx()] = shard + m.p.statics.bn_buffers.0;
        cat[Category::GradsShard.idx()] = shard;
        cat[Category::Optimizer.idx()] = shard * m.p.statics.optimizer_states;
        cat[Category::Activations.idx()] = m.p.statics.input_batch.0 + m.p.statics.host_batches.0 + m.p.statics.swav_queue.0;
        Replay {
            m,
            segs,
            cat,
            act_by_block: vec![0; m.n],
            unit_live: vec![0; m.p.units.len()],
            gathered: vec![false; m.p.units.len()],
            events: Vec::new(),
            peak: (0, 0, [0; 10], Vec::new(), Vec::new()),
            timeline: true,
        }
    }

    /// Records an event: the ledger plus `extra` bytes live only now,
    /// attributed to block `blk` when they are activations.
    fn emit(&mut self, label: impl FnOnce() -> String, extra: &[(Category, u64)], blk: Option<usize>) {
        let mut c = self.cat;
        for &(k, b) in extra {
            c[k.idx()] += b;
        }
        let raw: u64 = c.iter().sum();
        c[Category::Fragmentation.idx()] = self.m.p.allocator.frag(raw);
        let total = raw + c[Category::Fragmentation.idx()];
        if !self.timeline {
            self.peak.0 = self.peak.0.max(total);
            return;
        }
        let label = label();
        if total > self.peak.0 || self.events.is_empty() {
            let mut by_block = self.act_by_block.clone();
            if let Some(bi) = blk {
                by_block[bi] +=
                    extra.iter().filter(|(k, _)| matches!(k, Category::Activations | Category::Recompute | Category::Transient)).map(|e| e.1).sum::<u64>();
            }
            self.peak = (total, self.events.len(), c, self.unit_live.clone(), by_block);
        }
        let by_category = Category::ALL.iter().map(|k| (k.name().to_string(), Bytes(c[k.idx()]))).collect();
        self.events.push(MemEvent { label, total: Bytes(total), by_category });
    }

    fn add(&mut self, k: Category, b: u64) {
        self.cat[k.idx()] += b;
    }
    fn sub(&mut self, k: Category, b: u64) {
        self.cat[k.idx()] -= b;
    }

    fn gather(&mut self, u: usize, why: &str) {
        if self.gathered[u] {
            return;
        }
        self.gathered[u] = true;
        let b = self.m.p.units[u].unsharded.0;
        self.add(Category::UnshardedParams, b);
        self.unit_live[u] += b;
        let m = self.m;
        self.emit(|| format!("all-gather {}{why}", m.p.units[u].name), &[], None);
    }
    fn free(&mut self, u: usize) {
        if self.gathered[u] {
            self.gathered[u] = false;
            let b = self.m.p.units[u].unsharded.0;
            self.sub(Category::UnshardedParams, b);
            self.unit_live[u] -= b;
        }
    }
    fn act(&mut self, k: Category, blk: usize, b: u64, plus: bool) {
        if plus {
            self.add(k, b);
            self.act_by_block[blk] += b;
        } else {
            self.sub(k, b);
            self.act_by_block[blk] -= b;
        }
    }

    /// The peak total alone.
    fn peak(mut self) -> Bytes {
        self.timeline = false;
        self.walk();
        Bytes(self.peak.0)
    }

    fn run(mut self) -> MemoryReport {
        self.walk();
        self.breakdown()
    }

    /// Walks the schedule, event by event.
    fn walk(&mut self) {
        let m = self.m;
        let n = m.n;
        let bl = &m.p.blocks;
        let name = |i: usize| bl[i].name.clone();
        // Output of a checkpointed block not yet held by anyone: (producer, bytes per group).
        let mut loose: Option<(usize, Vec<u64>)> = None;
        // Input storage kept alive by block i (its xin / the segment input), per group.
        let mut held_by: Vec<Option<(usize, Vec<u64>)>> = vec![None; n];
        // Gradient of the last back-propagated block's input, per group.
        let mut grad_y: Vec<u64> = Vec::new();
        let mut has_acc = vec![false; m.p.units.len()];
        // Which category holds block i's kept bytes right now.
        let mut kept_in: Vec<Category> = vec![Category::Activations; n];
        // Block (and group) whose input is released once its gradient events are done.
        let mut release: Option<(usize, Option<usize>)> = None;
        let schedule = Schedule::compile(&m.layout(), self.segs, m.p.reshard_after_forward, m.p.reduction, m.p.backward_order);
        for &event in &schedule.events {
            let effect = m.grad_effect(event);
            if effect.is_none() {
                if let Some((i, group)) = release.take() {
                    if let Some((pb, parts)) = held_by[i].as_mut() {
                        let b: u64 = match group {
                            Some(g) if g < parts.len() => std::mem::take(&mut parts[g]),
                            _ => parts.drain(..).sum(),
                        };
                        let pb = *pb;
                        if parts.iter().all(|&x| x == 0) {
                            held_by[i] = None;
                        }
                        self.act(Category::Activations, pb, b, false);
                    }
                }
            }
            if let Some(e) = effect {
                // The executor hands the unit's gradient buffer to its first
                // reduction; a later crop-group pass starts a new one.
                if matches!(event, Event::ReduceScatter { .. } | Event::AllReduce { .. } | Event::ShardGrad { .. }) {
                    has_acc[e.unit] = false;
                }
                if e.frees_params {
                    self.free(e.unit);
                }
                self.add(Category::GradBuffers, e.alloc);
                self.unit_live[e.unit] += e.alloc;
                if let Some((what, extra)) = e.point {
                    self.emit(|| format!("{what} {}", m.p.units[e.unit].name), &[(Category::Transient, extra)], None);
                }
                self.sub(Category::GradBuffers, e.free);
                self.unit_live[e.unit] -= e.free;
                continue;
            }
            match event {
                Event::Prologue | Event::LossAllReduce => {}
                Event::Gather { unit } => self.gather(unit, ""),
                Event::Prefetch { unit } => self.gather(unit, " (prefetch)"),
                Event::Reshard { unit } => self.free(unit),
                Event::Forward { block: i, keep: Keep::Graph } => {
                    held_by[i] = loose.take();
                    self.act(Category::Activations, i, bl[i].kept.0, true);
                    self.emit(|| format!("fwd {}", name(i)), &[(Category::Transient, bl[i].fwd_transient.0)], Some(i));
                }
                Event::Forward { block: i, keep } => {
                    if keep == Keep::SegmentInput {
                        held_by[i] = loose.take();
                    }
                    self.emit(|| format!("fwd {} (no grad)", name(i)), &[(Category::Activations, bl[i].nograd_peak.0)], Some(i));
                    if let Some((pb, parts)) = loose.take() {
                        self.act(Category::Activations, pb, parts.iter().sum(), false);
                    }
                    self.act(Category::Activations, i, bl[i].output.0, true);
                    loose = Some((i, bl[i].outputs()));
                }
                Event::Loss => {
                    if let Some((pb, parts)) = loose.take() {
                        self.act(Category::Activations, pb, parts.iter().sum(), false);
                    }
                }
                Event::Recompute { block: j, group } => {
                    let g = bl[j].group(group);
                    self.act(Category::Recompute, j, g.kept.0, true);
                    kept_in[j] = Category::Recompute;
                    self.emit(|| format!("recompute {}{}", name(j), crop(group)), &[(Category::Transient, g.fwd_transient.0)], Some(j));
                }
                Event::Backward { block: i, group } => {
                    let pgrad: u64 = m.units_of[i].iter().map(|&u| m.p.units[u].param_grad.0).sum();
                    let g = bl[i].group(group);
                    self.emit(
                        || format!("bwd {}{}", name(i), crop(group)),
                        &[(Category::Transient, g.bwd_transient.0), (Category::GradBuffers, pgrad), (Category::HeadLoss, m.head(i))],
                        Some(i),
                    );
                    let k = kept_in[i];
                    self.act(k, i, g.kept.0, false);
                    for u in m.units_of[i].clone() {
                        if !has_acc[u] {
                            has_acc[u] = true;
                            let b = m.p.units[u].grad_acc.0;
                            self.add(Category::GradBuffers, b);
                            self.unit_live[u] += b;
                        }
                    }
                    // The gradient of this block's input replaces its output's.
                    let input_grads = if i > 0 { bl[i - 1].outputs() } else { Vec::new() };
                    match group {
                        Some(g) => {
                            if grad_y.len() <= g {
                                grad_y.resize(g + 1, 0);
                            }
                            self.sub(Category::Transient, grad_y[g]);
                            grad_y[g] = input_grads.get(g).copied().unwrap_or(0);
                            self.add(Category::Transient, grad_y[g]);
                        }
                        None => {
                            self.sub(Category::Transient, grad_y.iter().sum());
                            grad_y = input_grads;
                            self.add(Category::Transient, grad_y.iter().sum());
                        }
                    }
                    release = Some((i, group));
                }
                Event::Drain => {
                    self.sub(Category::Transient, grad_y.iter().sum());
                    grad_y.clear();
                    for u in 0..m.p.units.len() {
                        self.free(u);
                    }
                }
                Event::GradReady { .. }
                | Event::ReduceScatter { .. }
                | Event::WaitReduceScatter { .. }
                | Event::AllReduce { .. }
                | Event::WaitAllReduce { .. }
                | Event::ShardGrad { .. } => {}
                Event::Optimizer => self.emit(|| "optimizer".into(), &[(Category::Transient, m.p.statics.optimizer_transient.0)], None),
            }
        }
    }

    /// The report: the timeline and what is alive at its peak.
    fn breakdown(self) -> MemoryReport {
        let m = self.m;
        let bl = &m.p.blocks;
        let (peak, peak_event, c, unit_live, by_block) = self.peak.clone();
        let breakdown = Category::ALL.iter().map(|k| (k.name().to_string(), Bytes(c[k.idx()]))).collect();
        let per_unit_static = |u: &UnitMem| u.shard.0 * (2 + m.p.statics.optimizer_states);
        let mut by_unit: Vec<(String, Bytes)> = m.p.units.iter().zip(&unit_live).map(|(u, &l)| (u.name.clone(), Bytes(l + per_unit_static(u)))).collect();
        by_unit.sort_by_key(|x| std::cmp::Reverse(x.1));
        let mut by_block: Vec<(String, Bytes)> = bl.iter().zip(&by_block).map(|(b, &x)| (b.name.clone(), Bytes(x))).collect();
        by_block.sort_by_key(|x| std::cmp::Reverse(x.1));
        MemoryReport { peak: Bytes(peak), peak_event, breakdown, by_unit, by_block, timeline: self.events, usable: m.p.usable }
    }
}

/// A timeline label's crop-group suffix.
fn crop(group: Option<usize>) -> String {
    group.map_or(String::new(), |g| format!(" (crop group {g})"))
}

// ------------------------------------------------------------- from graph

fn numel(s: &[u64; 4]) -> u64 {
    s.iter().product()
}

/// Crop-group suffix of a layer name (`@160`), "" with a single group.
fn group_of(l: &Layer) -> &str {
    l.name.find('@').map_or("", |p| &l.name[p..])
}

/// Peak bytes a block's backward holds above what its forward kept, as
/// autograd runs it: first the output gradients of every crop group (the
/// `y * grad_y` seeds), then each crop group's graph whole, the last group
/// first (autograd takes the newest nodes first). Within a group the main
/// branch runs before the projection shortcut, whose gradient (and the
/// main branch's input gradient) waits for it; each layer's backward holds
/// its output and input gradients, and what a layer saved is freed once it
/// has run backward. A finished group's input gradient stays (the previous
/// block needs it).
fn backward_walk(groups: &[(String, Vec<&Layer>)], a: &Allocator) -> u64 {
    let bytes = |shape: &[u64; 4], l: &Layer| a.round(numel(shape) * l.dtype.size()).0;
    fn trunk<'a>(ls: &[&'a Layer]) -> Vec<&'a Layer> {
        ls.iter().copied().filter(|l| l.kind != LayerKind::Input).collect()
    }
    let kept: u64 = groups.iter().flat_map(|(_, ls)| trunk(ls)).map(|l| saved_rounded(l, a)).sum();
    let outputs: Vec<u64> = groups.iter().map(|(_, ls)| trunk(ls).last().map_or(0, |l| bytes(&l.out_shape, l))).collect();
    let mut seeds: u64 = outputs.iter().sum();
    let (mut freed, mut done_inputs, mut peak) = (0u64, 0u64, kept + seeds);
    for (g, (_, ls)) in groups.iter().enumerate().rev() {
        let ls = trunk(ls);
        let is_proj = |l: &&Layer| l.name.contains(".proj");
        let main: Vec<&Layer> = ls.iter().copied().filter(|l| !is_proj(l)).collect();
        let proj: Vec<&Layer> = ls.iter().copied().filter(is_proj).collect();
        seeds -= outputs[g];
        let mut grad_out = outputs[g];
        // The gradient the add hands the shortcut, and the main branch's
        // input gradient waiting for the shortcut's.
        let (mut shortcut, mut main_input) = (0u64, 0u64);
        let order: Vec<&Layer> = main.iter().rev().chain(proj.iter().rev()).copied().collect();
        for (k, l) in order.iter().enumerate() {
            let grad_in = bytes(&l.in_shape, l);
            // Convolutions and BN allocate a temporary the size of their
            // input besides the gradient.
            let work = if matches!(l.kind, LayerKind::Conv { .. } | LayerKind::BatchNorm) { grad_in } else { 0 };
            peak = peak.max(kept - freed + seeds + done_inputs + grad_out + grad_in + work + shortcut + main_input);
            freed += saved_rounded(l, a);
            if l.kind == LayerKind::Add && !proj.is_empty() {
                shortcut = grad_out;
            }
            grad_out = grad_in;
            if !proj.is_empty() && k + 1 == main.len() {
                main_input = grad_out;
                grad_out = shortcut;
                shortcut = 0;
            }
        }
        done_inputs += ls.first().map_or(0, |l| bytes(&l.in_shape, l));
    }
    peak.saturating_sub(kept)
}

/// Bytes a layer's forward allocates for its output (in-place ReLUs none).
fn out_storage(l: &Layer) -> u64 {
    match l.kind {
        LayerKind::Relu if l.saved.0 == 0 => 0,
        LayerKind::Input => 0,
        _ => numel(&l.out_shape) * l.dtype.size(),
    }
}

/// Allocator-rounded saved bytes of one layer, tensor by tensor.
fn saved_rounded(l: &Layer, a: &Allocator) -> u64 {
    let out = numel(&l.out_shape) * l.dtype.size();
    let s = l.saved.0;
    match l.kind {
        // Output (if saved) + fp32 mean and inverse std.
        LayerKind::BatchNorm => {
            let stats = 2 * l.out_shape[1] * 4;
            let o = s.saturating_sub(stats);
            a.round(o).0 + 2 * a.round(stats / 2).0
        }
        // Output + norms + clamped norms.
        LayerKind::Normalize if s > out => {
            let extra = s - out;
            a.round(out).0 + 2 * a.round(extra / 2).0
        }
        _ => a.round(s).0,
    }
}

/// Measured backward peaks of `graph`'s blocks from a profile's block
/// times (matched by `ModelGraph::block_key`); empty without any.
pub fn measured_backward(measured: &cost_models::hardware::Measured, graph: &ModelGraph) -> Vec<Option<u64>> {
    if measured.block_times.is_empty() {
        return Vec::new();
    }
    graph
        .blocks
        .iter()
        .map(|b| {
            let key = graph.block_key(b);
            measured.block_times.iter().find(|t| t.key == key).and_then(|t| t.backward_peak_bytes)
        })
        .collect()
}

/// Builds the rounded profile from the graph.
pub fn profile(
    graph: &ModelGraph,
    units: &[Unit],
    recipe: &Recipe,
    d: &Decisions,
    hw: &HardwareSpec,
    alloc: Allocator,
    measured_bwd: &[Option<u64>],
) -> MemProfile {
    let a = &alloc;
    let shard_group = d.shard_group();
    let dt = graph.workload.dtype;
    let mut blocks: Vec<BlockMem> = Vec::with_capacity(graph.blocks.len());
    let mut input_batch = 0u64;
    let mut host_batch = 0u64;
    let mut bn_buffers = 0u64;
    for (bi, b) in graph.blocks.iter().enumerate() {
        // Per crop group, in the order the executor runs them.
        let mut groups: Vec<(String, Vec<&Layer>)> = Vec::new();
        for l in graph.layers_of(b) {
            let g = group_of(l).to_string();
            match groups.iter_mut().find(|(k, _)| *k == g) {
                Some((_, v)) => v.push(l),
                None => groups.push((g, vec![l])),
            }
        }
        let mut kept = 0u64;
        let mut output = 0u64;
        let (mut fwd_t, mut nograd, mut bwd_ws) = (0u64, 0u64, 0u64);
        let mut outs_before = 0u64;
        // Per group: kept, output, forward transient, backward working set.
        let mut parts: Vec<(u64, u64, u64, u64)> = Vec::with_capacity(groups.len());
        for (_, ls) in &groups {
            let kept_before = kept;
            for l in ls {
                // Running mean and var of the first crop group's copy (the one with params).
                if l.kind == LayerKind::BatchNorm && !l.params.is_empty() {
                    bn_buffers += 2 * a.round(l.out_shape[1] * 4).0;
                }
                if l.kind == LayerKind::Input {
                    input_batch += a.round(numel(&l.out_shape) * l.dtype.size()).0;
                    // The loader's batch is fp32, one tensor per crop group.
                    host_batch += a.round(numel(&l.out_shape) * 4).0;
                } else {
                    kept += saved_rounded(l, a);
                }
            }
            // The group's output is its last layer's (in-place ReLU: same storage).
            let out_g = ls.last().map_or(0, |l| a.round(numel(&l.out_shape) * l.dtype.size()).0);
            output += out_g;
            let largest = ls.iter().map(|l| a.round(out_storage(l)).0).max().unwrap_or(0);
            // Non-saved outputs alive together (projection BN and c BN before the add).
            let mut unsaved: Vec<u64> = ls.iter().filter(|l| out_storage(l) > 0 && l.saved.0 < out_storage(l)).map(|l| a.round(out_storage(l)).0).collect();
            unsaved.sort_unstable_by(|x, y| y.cmp(x));
            let fwd_g: u64 = unsaved.iter().take(2).sum();
            fwd_t = fwd_t.max(fwd_g);
            nograd = nograd.max(outs_before + out_g + 2 * largest);
            bwd_ws = bwd_ws.max(out_g + 2 * largest);
            outs_before += out_g;
            parts.push((kept - kept_before, out_g, fwd_g, out_g + 2 * largest));
        }
        // The prototypes' Linear does not save its output, but the executor keeps it.
        if b.kind == BlockKind::HeadProto {
            kept += output;
        }
        let input_grad = if bi == 0 { 0 } else { blocks[bi - 1].output.0 };
        let pdt = if b.kind == BlockKind::HeadProto { DType::Fp32 } else { dt };
        let measured = measured_bwd.get(bi).copied().flatten().map(|p| p.saturating_sub(a.round(b.params * pdt.size()).0));
        // A crop group's output and twice its largest tensor, all saved
        // tensors alive: what a GPU's backward holds (the caching allocator
        // and cuDNN's workspaces keep more than autograd's frees give back,
        // and a block measured alone only raises it). On CPU, autograd's
        // frees come back at once: the walk, layer by layer, except for the
        // stem, whose convolution's weight gradient unfolds the images
        // (im2col); a measured block peak is then the figure itself. The
        // rule applies to a block's crop groups together or to one of them.
        let modelled = |gs: &[(String, Vec<&Layer>)], working_set: u64| match hw.kind {
            DeviceKind::Cpu if bi > 0 => backward_walk(gs, a),
            _ => working_set,
        };
        let unmeasured = modelled(&groups, input_grad + bwd_ws);
        let bwd_transient = match hw.kind {
            DeviceKind::Gpu => unmeasured.max(measured.unwrap_or(0)),
            DeviceKind::Cpu => measured.unwrap_or(unmeasured),
        };
        // Each group alone, by the same rules; a measured block peak (all
        // groups) is shared in proportion to the modelled ones.
        let group_mems: Vec<GroupMem> = if b.is_trunk() && parts.len() > 1 {
            let prev = if bi == 0 { Vec::new() } else { blocks[bi - 1].outputs() };
            let per_group: Vec<u64> =
                parts.iter().enumerate().map(|(g, &(_, _, _, ws))| modelled(&groups[g..=g], prev.get(g).copied().unwrap_or(0) + ws)).collect();
            let scale = bwd_transient as f64 / unmeasured.max(1) as f64;
            parts
                .iter()
                .zip(&per_group)
                .map(|(&(kept_g, out_g, fwd_g, _), &m)| {
                    let bwd = (m as f64 * scale).round() as u64;
                    GroupMem { kept: Bytes(kept_g), output: Bytes(out_g), fwd_transient: Bytes(fwd_g), bwd_transient: Bytes(bwd) }
                })
                .collect()
        } else {
            Vec::new()
        };
        blocks.push(BlockMem {
            name: b.name.clone(),
            stage: b.stage,
            kept: Bytes(kept),
            output: Bytes(output),
            input_grad: Bytes(input_grad),
            fwd_transient: Bytes(fwd_t),
            nograd_peak: Bytes(nograd.max(output)),
            bwd_transient: Bytes(bwd_transient),
            checkpointable: b.is_trunk(),
            groups: group_mems,
        });
    }
    let reduce = d.precision.reduce.size();
    let unit_mems: Vec<UnitMem> = units
        .iter()
        .map(|u| {
            let pdt = if u.fp32 { DType::Fp32 } else { d.precision.compute }.size();
            let (padded, shard) = (u.padded(shard_group), u.shard_len(shard_group));
            UnitMem {
                name: u.name.clone(),
                blocks: u.blocks.clone(),
                // Plus the fp32 side-gather of its BN parameters.
                unsharded: a.round(padded * pdt) + a.round(u.bn_gather_elements(d.precision.compute) * 4),
                shard: a.round(shard * 4),
                // Plus BN's fp32 gradients, accumulated apart.
                grad_acc: a.round(padded * reduce) + a.round(u.bn_gather_elements(d.precision.compute) * 4),
                rs_out: match (shard_group > 1, hw.kind) {
                    (false, _) => Bytes::ZERO,
                    (true, DeviceKind::Gpu) => a.round(shard * reduce),
                    // Gloo's reduce-scatter flattens its input into a copy
                    // of the unsharded gradient and holds it until waited.
                    (true, DeviceKind::Cpu) => a.round(shard * reduce) + a.round(padded * reduce),
                },
                rs_cast: if reduce == 4 { Bytes::ZERO } else { a.round(shard * 4) },
                param_grad: a.round(padded * pdt),
            }
        })
        .collect();
    // SwAV loss on this rank: per assignment crop its codes, per other crop a
    // log-softmax kept for backward; the score gradient; two Sinkhorn temporaries.
    let k = graph.prototype_layer().map_or(0, |l| l.out_shape[1]);
    let images = graph.workload.images;
    let crops: u64 = graph.workload.crops.iter().map(|c| c.count).sum();
    let assign = recipe.swav.crops_for_assign.len() as u64;
    let crop_mat = a.round(images * k * 4).0;
    // With SwAV's queue, each assignment crop's Sinkhorn runs on the batch
    // and this rank's queue rows: the queue's scores against the prototypes
    // (computed for every assignment crop first), their concatenation with
    // the batch's, and the two Sinkhorn temporaries at that height.
    let queue_rows = recipe.swav.queue_length_for((d.batch_per_rank * d.world_size) as u64) / d.world_size.max(1) as u64;
    let dim = graph.prototype_layer().map_or(0, |l| l.in_shape[1]);
    let sinkhorn_mat = a.round((images + queue_rows) * k * 4).0;
    let queue_scores = if queue_rows > 0 { assign * a.round(queue_rows * k * 4).0 + sinkhorn_mat } else { 0 };
    let swav_queue = a.round(assign * queue_rows * dim * 4);
    let head_loss = (assign * crops.saturating_sub(1) + assign) * crop_mat + 2 * sinkhorn_mat + queue_scores + a.round(images * crops * k * 4).0;
    let states = recipe.optim.kind.states_per_param();
    let largest_shard = unit_mems.iter().map(|u| u.shard.0).max().unwrap_or(0);
    let optimizer_transient = Bytes(largest_shard * (states + 1));
    let host_batches = match hw.kind {
        DeviceKind::Cpu => {
            let cast_copy = if dt == DType::Fp32 { 0 } else { host_batch };
            cast_copy + LOADER_WORKERS * (LOADER_PREFETCH + 1) * host_batch
        }
        DeviceKind::Gpu => 0,
    };
    MemProfile {
        blocks,
        units: unit_mems,
        statics: StaticMem {
            optimizer_states: states,
            input_batch: Bytes(input_batch),
            host_batches: Bytes(host_batches),
            bn_buffers: Bytes(bn_buffers),
            swav_queue,
            head_loss: Bytes(head_loss),
            optimizer_transient,
        },
        reshard_after_forward: d.reshard_after_forward,
        reduction: d.sharding.resolved(d.world_size).reduction(d.world_size),
        backward_order: d.backward_order,
        crop_groups: graph.workload.crops.len().max(1),
        trunk: graph.trunk_blocks().count(),
        allocator: alloc,
        usable: hw.usable_memory(),
    }
}

/// Random small instances for the cross-checks (replay vs closed form,
/// DP vs brute force).
#[cfg(test)]
pub(crate) mod testgen {
    use super::*;

    pub use rand::rngs::StdRng as Rng;
    use rand::{Rng as _, SeedableRng};

    /// A deterministic generator from a seed (proptest picks the seeds).
    pub fn seeded(seed: u64) -> Rng {
        Rng::seed_from_u64(seed)
    }

    /// Uniform in `0..n` (0 when `n` is 0).
    pub fn below(rng: &mut Rng, n: u64) -> u64 {
        rng.gen_range(0..n.max(1))
    }

    fn bytes(rng: &mut Rng, max: u64) -> Bytes {
        Bytes(rng.gen_range(0..=max))
    }

    /// `n` blocks with random sizes, random (possibly overlapping) units,
    /// random reshard and fragmentation.
    pub fn random_profile(rng: &mut Rng, n: usize) -> MemProfile {
        let blocks = (0..n)
            .map(|i| {
                let output = bytes(rng, 1000);
                BlockMem {
                    name: format!("b{i}"),
                    stage: Some(1 + i / 3),
                    kept: output + bytes(rng, 3000),
                    output,
                    input_grad: Bytes::ZERO,
                    fwd_transient: bytes(rng, 800),
                    nograd_peak: output + bytes(rng, 1500),
                    bwd_transient: bytes(rng, 2000),
                    checkpointable: below(rng, 6) != 0,
                    groups: Vec::new(),
                }
            })
            .collect::<Vec<_>>();
        let mut blocks = blocks;
        for i in 1..n {
            blocks[i].input_grad = blocks[i - 1].output;
        }
        let nu = 1 + below(rng, n as u64 + 2) as usize;
        let units = (0..nu)
            .map(|u| {
                let s = below(rng, n as u64) as usize;
                let len = if below(rng, 4) == 0 { 1 + below(rng, (n - s) as u64) as usize } else { 1 };
                UnitMem {
                    name: format!("u{u}"),
                    blocks: s..s + len,
                    unsharded: bytes(rng, 2000),
                    shard: bytes(rng, 300),
                    grad_acc: bytes(rng, 2000),
                    rs_out: bytes(rng, 300),
                    rs_cast: bytes(rng, 600),
                    param_grad: bytes(rng, 2000),
                }
            })
            .collect();
        MemProfile {
            blocks,
            units,
            statics: StaticMem {
                optimizer_states: below(rng, 3),
                input_batch: bytes(rng, 500),
                host_batches: bytes(rng, 500),
                bn_buffers: bytes(rng, 100),
                swav_queue: bytes(rng, 100),
                head_loss: bytes(rng, 3000),
                optimizer_transient: bytes(rng, 2000),
            },
            reshard_after_forward: below(rng, 2) == 0,
            reduction: Reduction { scatter: below(rng, 3) != 0, all_reduce: below(rng, 2) == 0 },
            backward_order: BackwardOrder::Together,
            crop_groups: 1,
            trunk: n,
            allocator: Allocator { quantum: 1, fragmentation: [0.0, 0.03, 0.1][below(rng, 3) as usize] },
            usable: Bytes(20_000),
        }
    }

    /// Every placement: each block plain, or segments over checkpointable runs.
    pub fn all_placements(p: &MemProfile) -> Vec<Vec<Range<usize>>> {
        fn rec(p: &MemProfile, k: usize, cur: &mut Vec<Range<usize>>, out: &mut Vec<Vec<Range<usize>>>) {
            let n = p.blocks.len();
            if k == n {
                out.push(cur.clone());
                return;
            }
            rec(p, k + 1, cur, out);
            let mut e = k;
            while e < n && p.blocks[e].checkpointable {
                e += 1;
                cur.push(k..e);
                rec(p, e, cur, out);
                cur.pop();
            }
        }
        let mut out = Vec::new();
        rec(p, 0, &mut Vec::new(), &mut out);
        out
    }
}

#[cfg(test)]
mod tests {
    // A one-segment placement is a placement, not a mistaken range-to-vec.
    #![allow(clippy::single_range_in_vec_init)]
    use super::testgen::*;
    use super::*;
    use crate::wrapping::units_for;
    use cost_models::config::ModelConfig;
    use cost_models::graph::Workload;
    use cost_models::hardware::builtin_hardware;
    use runspec::recipe::Recipe;

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
        /// The closed form equals the event-by-event replay on random
        /// profiles and placements, and the breakdown adds up to the peak.
        #[test]
        fn closed_form_equals_replayed_timeline_on_random_instances(seed in proptest::prelude::any::<u64>(), n in 1usize..10) {
            let mut rng = seeded(seed);
            let p = random_profile(&mut rng, n);
            let m = MemoryModel::from_profile(p.clone());
            let all = all_placements(&p);
            for _ in 0..8 {
                let segs = &all[below(&mut rng, all.len() as u64) as usize];
                let r = m.report(segs);
                proptest::prop_assert_eq!(m.peak(segs), r.peak, "segments {:?}, profile {:#?}", segs, p);
                proptest::prop_assert_eq!(r.timeline[r.peak_event].total, r.peak);
                let sum: u64 = r.breakdown.values().map(|b| b.0).sum();
                proptest::prop_assert_eq!(sum, r.peak.0, "breakdown adds up");
            }
        }
    }

    /// Everything the replay allocates it frees: at the optimiser event only
    /// static memory (plus the optimiser's temporaries) is left.
    #[test]
    fn replay_releases_everything_by_the_optimizer_step() {
        let mut rng = seeded(7);
        for n in 1..9 {
            let p = random_profile(&mut rng, n);
            let m = MemoryModel::from_profile(p.clone());
            for segs in all_placements(&p).iter().take(20) {
                let r = m.report(segs);
                let last = r.timeline.last().unwrap();
                assert_eq!(last.label, "optimizer");
                let raw = m.static_bytes().0 + p.statics.optimizer_transient.0;
                assert!(m.static_bytes().0 >= p.statics.bn_buffers.0 + p.statics.input_batch.0);
                assert_eq!(last.total.0, raw + p.allocator.frag(raw), "{segs:?}");
            }
        }
    }

    /// tiny-cpu without its queue: these tests are about activations and
    /// checkpointing, whose trade-offs a loss-side transient would shift.
    fn tiny(batch: u64, precision: DType) -> (ModelGraph, Recipe) {
        let mut r = Recipe::load("tiny-cpu").unwrap();
        r.swav.queue_length = 0;
        let m = ModelConfig::load(&r.model).unwrap();
        (ModelGraph::build(&m, &Workload { images: batch, crops: r.crop_groups(), dtype: precision }), r)
    }

    fn decisions(world: usize, reshard: bool, dt: DType, w: Wrapping) -> Decisions {
        Decisions {
            world_size: world,
            batch_per_rank: 8,
            precision: Precision { compute: dt, reduce: dt },
            reshard_after_forward: reshard,
            sharding: Sharding::fsdp(world),
            wrapping: w,
            recompute_segments: vec![],
            backward_order: BackwardOrder::Together,
            channel_padding: cost_models::padding::ChannelPadding::Off,
        }
    }

    /// The crop groups one after the other: a trunk block's groups add up
    /// to the block; every kept and recomputed byte is freed by the end of
    /// backward; with every block checkpointed the peak drops (one group's
    /// recompute at a time), and with one crop group it is the same step.
    #[test]
    fn by_crop_group_replays_one_groups_recompute_at_a_time() {
        let (g, r) = tiny(8, DType::Fp32);
        let hw = builtin_hardware("cpu-local").unwrap();
        let units = units_for(&g, Wrapping::PerBlock);
        let d = decisions(2, true, DType::Fp32, Wrapping::PerBlock);
        let together = MemoryModel::new(&g, &units, &r, &d, &hw);
        let by_group = MemoryModel::new(&g, &units, &r, &Decisions { backward_order: BackwardOrder::ByCropGroup, ..d.clone() }, &hw);
        assert!(by_group.replays() && !together.replays());
        for b in by_group.profile().blocks.iter().filter(|b| b.checkpointable) {
            assert_eq!(b.groups.len(), 2, "{}", b.name);
            assert_eq!(b.groups.iter().map(|x| x.kept.0).sum::<u64>(), b.kept.0, "{}", b.name);
            assert_eq!(b.groups.iter().map(|x| x.output.0).sum::<u64>(), b.output.0, "{}", b.name);
        }
        let singles: Vec<Range<usize>> = (0..together.profile().trunk).map(|b| b..b + 1).collect();
        for segs in [vec![], singles.clone(), vec![1..4]] {
            let rep = by_group.report(&segs);
            assert_eq!(by_group.peak(&segs), rep.peak, "{segs:?}");
            // Back to the static bytes after the drain.
            let drain = rep.timeline.iter().rposition(|e| e.label == "optimizer").unwrap();
            let acts: u64 = ["activations", "recompute", "grad_buffers", "unsharded_params"]
                .iter()
                .map(|k| rep.timeline[drain].by_category.iter().find(|(n, _)| n == k).unwrap().1 .0)
                .sum();
            let statics = &by_group.profile().statics;
            assert_eq!(acts, statics.input_batch.0 + statics.host_batches.0 + statics.swav_queue.0, "{segs:?}");
        }
        assert!(by_group.peak(&singles) < together.peak(&singles), "{} vs {}", by_group.peak(&singles), together.peak(&singles));
        assert!(by_group.report(&singles).timeline.iter().any(|e| e.label == "recompute s1.b0 (crop group 1)"));
        let mut one = by_group.profile().clone();
        one.crop_groups = 1;
        let mut one_together = together.profile().clone();
        one_together.crop_groups = 1;
        assert_eq!(MemoryModel::from_profile(one).report(&singles), MemoryModel::from_profile(one_together).report(&singles));
    }

    /// A measured backward peak replaces the walk's estimate of a block's
    /// backward transient, higher or lower: what was measured beyond the
    /// block's parameter gradients.
    #[test]
    fn measured_backward_peaks_replace_the_estimate() {
        let (g, r) = tiny(8, DType::Bf16);
        let hw = builtin_hardware("cpu-local").unwrap();
        let units = units_for(&g, Wrapping::PerBlock);
        let d = decisions(2, true, DType::Bf16, Wrapping::PerBlock);
        let plain = MemoryModel::new(&g, &units, &r, &d, &hw);
        let i = g.blocks.iter().position(|b| b.name == "s4.b0").unwrap();
        let params = Allocator::for_device(hw.kind).round(g.blocks[i].params * 2).0;
        let mut measured = vec![None; g.blocks.len()];
        measured[i] = Some(params + 1_000_000);
        measured[0] = Some(Allocator::for_device(hw.kind).round(g.blocks[0].params * 2).0 + 1);
        let cal = MemoryModel::calibrated(&g, &units, &r, &d, &hw, &measured);
        assert_eq!(cal.profile().blocks[i].bwd_transient.0, 1_000_000);
        assert_eq!(cal.profile().blocks[0].bwd_transient.0, 1, "a smaller measurement lowers it");
        assert!(plain.profile().blocks[0].bwd_transient.0 > 1);
        assert!(cal.peak(&[]) > plain.peak(&[]));
        assert_eq!(MemoryModel::calibrated(&g, &units, &r, &d, &hw, &[]).peak(&[]), plain.peak(&[]));
    }

    #[test]
    fn no_checkpointing_peak_is_static_plus_everything_kept_plus_last_backward() {
        let (g, r) = tiny(8, DType::Fp32);
        let hw = builtin_hardware("cpu-local").unwrap();
        let units = units_for(&g, Wrapping::PerBlock);
        let d = decisions(1, true, DType::Fp32, Wrapping::PerBlock);
        let m = MemoryModel::new(&g, &units, &r, &d, &hw);
        let p = m.profile();
        let n = p.blocks.len();
        // The last block's backward: every block's kept activations, the
        // images, shards, the last block's and previous block's gathered
        // units, its parameter gradient, transient and the loss.
        let kept: u64 = p.blocks.iter().map(|b| b.kept.0).sum();
        let shard: u64 = p.units.iter().map(|u| u.shard.0).sum();
        let last = &p.blocks[n - 1];
        let expect_last_bwd = shard * 3
            + p.statics.bn_buffers.0
            + p.statics.swav_queue.0
            + p.statics.input_batch.0
            + p.statics.host_batches.0
            + kept
            + p.units[n - 1].unsharded.0
            + p.units[n - 2].unsharded.0
            + p.units[n - 1].param_grad.0
            + last.bwd_transient.0
            + p.statics.head_loss.0;
        let rep = m.report(&[]);
        let ev = rep.timeline.iter().find(|e| e.label == format!("bwd {}", last.name)).unwrap();
        assert_eq!(ev.total.0, expect_last_bwd);
        assert!(rep.peak >= ev.total);
        assert_eq!(m.peak(&[]), rep.peak);
        // CPU: exact bytes, no fragmentation.
        assert_eq!(rep.breakdown["fragmentation"], Bytes::ZERO);
        // Kept bytes follow the graph's saved bytes (images separate; the
        // prototypes' output is kept by the executor though not saved).
        let saved: u64 = g.blocks.iter().map(|b| b.saved.0).sum();
        let images: u64 = p.statics.input_batch.0;
        assert_eq!(kept, saved - images + g.blocks[n - 1].output.0);
        // On CPU the loader's full prefetch queue is counted too (fp32
        // compute: the batch in use is the loader's own tensor).
        assert_eq!(p.statics.host_batches.0, LOADER_WORKERS * (LOADER_PREFETCH + 1) * images);
        let gpu = MemoryModel::new(&g, &units, &r, &d, &builtin_hardware("a100-80gb").unwrap());
        assert_eq!(gpu.profile().statics.host_batches, Bytes::ZERO);
        for (b, gb) in p.blocks.iter().zip(&g.blocks) {
            assert_eq!(b.output, gb.output, "{}", b.name);
        }
    }

    #[test]
    fn the_queue_is_state_and_a_taller_sinkhorn() {
        let (g, plain) = tiny(8, DType::Fp32);
        let queued = Recipe::load("tiny-cpu").unwrap();
        assert_eq!(queued.swav.queue_length, 256);
        let hw = builtin_hardware("cpu-local").unwrap();
        let units = units_for(&g, Wrapping::PerBlock);
        let d = decisions(2, true, DType::Fp32, Wrapping::PerBlock);
        let (a, b) = (MemoryModel::new(&g, &units, &plain, &d, &hw), MemoryModel::new(&g, &units, &queued, &d, &hw));
        let (sa, sb) = (&a.profile().statics, &b.profile().statics);
        // 128 rows per rank (256 over 2 ranks) of 32-wide embeddings for 2
        // assignment crops, in fp32.
        assert_eq!(sa.swav_queue.0, 0);
        assert_eq!(sb.swav_queue, a.allocator().round(2 * 128 * 32 * 4));
        // Its scores (2 crops x 128 x 32 prototypes), their concatenation
        // with the batch's (136 rows), and two Sinkhorn temporaries 128
        // rows taller.
        let qk = 128 * 32 * 4;
        assert_eq!(sb.head_loss.0 - sa.head_loss.0, 2 * qk + 136 * 32 * 4 + 2 * qk);
        assert!(b.peak(&[]) > a.peak(&[]));
    }

    #[test]
    fn checkpointing_resharding_and_more_ranks_lower_the_peak() {
        let (g, r) = tiny(8, DType::Fp32);
        let hw = builtin_hardware("cpu-local").unwrap();
        let units = units_for(&g, Wrapping::PerBlock);
        let d = decisions(1, true, DType::Fp32, Wrapping::PerBlock);
        let m = MemoryModel::new(&g, &units, &r, &d, &hw);
        let nt = g.trunk_blocks().count();
        let none = m.peak(&[]);
        // One segment over the whole trunk recomputes everything at once:
        // no gain (the classic reason to split segments).
        assert!(m.peak(&[0..nt]) >= none);
        let each: Vec<Range<usize>> = (0..nt).map(|i| i..i + 1).collect();
        let all = m.peak(&each);
        assert!(all < none, "checkpointing every trunk block: {all} vs {none}");
        let per_stage = m.peak(&[1..2, 2..3, 3..5, 5..6]);
        assert!(per_stage < none);
        // Activations held at the peak shrink accordingly.
        let rn = m.report(&[]);
        let ra = m.report(&each);
        assert!(ra.breakdown["activations"] < rn.breakdown["activations"]);

        // Resharding after forward frees gathered units (big units: Whole-free policy).
        let units = units_for(&g, Wrapping::PerBlock);
        let keep = MemoryModel::new(&g, &units, &r, &decisions(1, false, DType::Fp32, Wrapping::PerBlock), &hw).peak(&[]);
        assert!(none < keep, "reshard {none} vs keep {keep}");

        // More ranks: smaller shards.
        let (g16, r16) = (g.clone(), r.clone());
        let m1 = MemoryModel::new(&g16, &units, &r16, &decisions(1, true, DType::Fp32, Wrapping::PerBlock), &hw);
        let m4 = MemoryModel::new(&g16, &units, &r16, &decisions(4, true, DType::Fp32, Wrapping::PerBlock), &hw);
        let r1 = m1.report(&[]);
        let r4 = m4.report(&[]);
        assert!(r4.breakdown["params_shard"] < r1.breakdown["params_shard"]);
        assert!(r4.breakdown["optimizer"] < r1.breakdown["optimizer"]);
        assert!(r4.peak < r1.peak);
        // Padding: every unit's shard is ceil(params / world) fp32 elements.
        for (u, um) in units.iter().zip(&m4.profile().units) {
            assert_eq!(um.shard.0, u.params.div_ceil(4) * 4);
        }
    }

    #[test]
    fn adam_holds_twice_the_optimizer_state_of_sgd() {
        let (g, mut r) = tiny(8, DType::Fp32);
        let hw = builtin_hardware("cpu-local").unwrap();
        let units = units_for(&g, Wrapping::PerStage);
        let d = decisions(2, true, DType::Fp32, Wrapping::PerStage);
        let sgd = MemoryModel::new(&g, &units, &r, &d, &hw).report(&[]);
        r.optim.kind = runspec::recipe::OptimKind::Adam;
        let adam = MemoryModel::new(&g, &units, &r, &d, &hw).report(&[]);
        assert_eq!(adam.breakdown["optimizer"].0, 2 * sgd.breakdown["optimizer"].0);
        assert_eq!(sgd.breakdown["optimizer"], sgd.breakdown["grads_shard"]);
        assert_eq!(sgd.breakdown["params_shard"].0, sgd.breakdown["grads_shard"].0 + MemoryModel::new(&g, &units, &r, &d, &hw).profile().statics.bn_buffers.0);
    }

    #[test]
    fn gpu_allocator_rounds_and_adds_fragmentation() {
        let a = Allocator::for_device(DeviceKind::Gpu);
        assert_eq!(a.round(1), Bytes(512));
        assert_eq!(a.round(MIB), Bytes(MIB));
        // Large blocks too: the allocated-bytes statistic counts 512 B blocks,
        // whatever segment they were carved from.
        assert_eq!(a.round(MIB + 1), Bytes(MIB + 512));
        assert_eq!(a.round(5 * MIB + 600), Bytes(5 * MIB + 1024));
        for b in [0u64, 1, 1000, 10_000_000, 40 << 30] {
            let r = a.raw_budget(Bytes(b));
            assert!(r + a.frag(r) <= b);
            assert!(r + 1 + a.frag(r + 1) > b);
        }
        // Huge budgets do not overflow.
        let r = a.raw_budget(Bytes(u64::MAX));
        assert!(r > 0 && (r as u128 + a.frag(r) as u128) <= u64::MAX as u128);
        {}
    }

    #[test]
    fn incremental_segment_locals_equal_direct_ones() {
        let mut rng = seeded(11);
        for case in 0..200 {
            let n = 1 + case % 12;
            let m = MemoryModel::from_profile(random_profile(&mut rng, n));
            for a in 0..n {
                let inc = m.segment_locals(a, n);
                for b in a + 1..=n {
                    assert_eq!(inc[b - a - 1], m.piece_local(a, b, true), "case {case} [{a},{b})");
                }
            }
        }
    }

    #[test]
    fn normalize_segments_never_panics() {
        // Clamped, overlaps merged, adjacent segments kept apart.
        assert_eq!(normalize_segments(5, &[3..9, 0..2, 1..3, 4..4]), vec![0..3, 3..5]);
        assert_eq!(normalize_segments(5, &[3..4, 0..2]), vec![0..2, 3..4]);
        let m = MemoryModel::from_profile(random_profile(&mut seeded(3), 4));
        let _ = m.peak(&[2..100, 7..9]);
        let _ = m.report(&[2..100]);
    }
}
