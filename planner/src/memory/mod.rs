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
//! two agree on random instances; the recompute placement DP (`crate::recompute`) is exact
//! with respect to `peak` because it searches over exactly this form.
//!
//! The closed form is the crop groups' `Together` backward order. With
//! `ByCropGroup` (one crop group's whole trunk backward after the other's)
//! what an event holds depends on every group's placement at once, so
//! `peak` replays the schedule; the replay costs each group's share of a
//! block ([`GroupMem`]).

use crate::wrapping::Unit;
use cost_models::graph::ModelGraph;
use cost_models::hardware::HardwareSpec;
use cost_models::padding::ChannelPadding;
#[cfg(test)]
use cost_models::quantity::MIB;
use cost_models::Bytes;
use runspec::plan::Precision;
use runspec::recipe::{Recipe, Wrapping};
use runspec::schedule::{BackwardOrder, Event, Layout, Schedule};
use runspec::sharding::Sharding;
use std::collections::BTreeMap;
use std::ops::Range;

mod allocator;
mod profile;
mod replay;
#[cfg(test)]
pub(crate) mod testgen;
#[cfg(test)]
mod tests;

pub use allocator::Allocator;
pub use profile::*;
use replay::Replay;

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
pub(crate) fn normalize_segments(n: usize, segs: &[Range<usize>]) -> Vec<Range<usize>> {
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
