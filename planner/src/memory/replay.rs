//! The explicit ledger that replays the executor's step event by event.

use super::*;
use cost_models::Bytes;
use runspec::schedule::{Event, Keep, Schedule};
use std::ops::Range;

/// Explicit ledger replaying the executor's step (the ground truth the
/// closed form in `piece_local` must equal).
pub(super) struct Replay<'m> {
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
    pub(super) fn new(m: &'m MemoryModel, segs: &'m [Range<usize>]) -> Replay<'m> {
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
    pub(super) fn peak(mut self) -> Bytes {
        self.timeline = false;
        self.walk();
        Bytes(self.peak.0)
    }

    pub(super) fn run(mut self) -> MemoryReport {
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
