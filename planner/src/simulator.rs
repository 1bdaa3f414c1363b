//! Discrete-event simulation of one training step of one rank.
//!
//! Two in-order streams, as on a GPU: the compute stream (forward per block,
//! SwAV loss with its Sinkhorn iterations, backward per block with the
//! recompute of a checkpointed segment just before its backward, LARC norms
//! and the optimiser step) and the communication stream (FSDP all-gathers,
//! gradient reduce-scatters, the LARC-norm and Sinkhorn all-reduces; NCCL
//! runs one process group's collectives one after another, in issue order).
//!
//! The op sequence is the step schedule (`runspec::schedule`), the same
//! events the executor runs and the memory replay walks: a unit's
//! all-gather is issued by the pre-hook of the first op that gathers it
//! (or earlier, by a prefetch one block ahead); resharding drops it, so the
//! next `Gather` issues a new one; a unit's reduce-scatter and all-reduce
//! are issued where the schedule starts them (after the backward of its
//! first block, or once the reduce-scatter it continues has been waited
//! for), and the op after a `Wait*` event waits for that collective.
//!
//! A compute op waits for the collectives it depends on; a collective starts
//! when it has been issued and the stream is free. Exposed communication is
//! therefore a result: `step time - busy compute time`.

use cost_models::Seconds;
use runspec::schedule::{BackwardOrder, Event, Keep, Layout, Schedule};
use runspec::sharding::Reduction;
use std::collections::VecDeque;
use std::ops::Range;

/// Time of one block in each pass on this rank.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct BlockCost {
    /// Forward recorded by autograd (also what a recompute costs).
    pub forward: Seconds,
    /// Forward without autograd: the first pass of a checkpointed block.
    pub forward_no_grad: Seconds,
    pub backward: Seconds,
}

impl BlockCost {
    /// A block whose forward costs the same with or without autograd.
    pub fn new(forward: Seconds, backward: Seconds) -> BlockCost {
        BlockCost { forward, forward_no_grad: forward, backward }
    }
}

/// One FSDP unit: the blocks that use its parameters, its collectives and
/// the host work of its events.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct UnitCost {
    /// Blocks whose forward/backward need the unit's parameters (may be
    /// empty: such a unit is gathered at the start and reduced at the end).
    pub blocks: Range<usize>,
    /// Within the shard group (zero where the rank holds the whole vector).
    pub all_gather: Seconds,
    pub reduce_scatter: Seconds,
    /// The scattered gradient across replicas (zero without replicas).
    pub all_reduce: Seconds,
    /// Parameter tensors the unit holds (one view each per block using it).
    pub tensors: usize,
    /// Bytes of its gathered parameters (compute dtype).
    pub param_bytes: cost_models::Bytes,
    /// Gathers its BN parameters a second time, in fp32.
    pub bn_gather: bool,
    /// Bytes of its unsharded gradient buffer (reduce dtype), zero-filled
    /// at its first backward block.
    pub grad_bytes: cost_models::Bytes,
    /// Compute-stream work of each gather (and the free that ends it),
    /// charged to the op whose pre-hook issues it.
    pub gather_host: Seconds,
    /// Zero-filling the gradient buffer, at the unit's first backward op.
    pub grad_init: Seconds,
    /// Starting the reduce-scatter and adding its result into the shard's
    /// gradient, charged to the backward op that completes the gradient.
    pub finish_host: Seconds,
}

impl UnitCost {}

/// The loss: Sinkhorn-Knopp per assignment crop, then the swapped
/// prediction loss (forward and backward together).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct LossCost {
    /// Crops that get Sinkhorn codes (VISSL runs them one after another).
    pub assign_crops: usize,
    /// `Q = exp(scores / eps)` and its global sum (all-reduced).
    pub sinkhorn_init: Seconds,
    pub sinkhorn_iterations: usize,
    /// One row/column normalisation pass.
    pub sinkhorn_iteration: Seconds,
    /// All-reduce of the total (a scalar): latency only.
    pub sum_all_reduce: Seconds,
    /// All-reduce of the K prototype sums, once per iteration.
    pub row_all_reduce: Seconds,
    /// Softmax + cross-entropy over every crop's scores, both passes.
    pub swapped_loss: Seconds,
}

/// The optimiser step after the last gradient has been reduce-scattered.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct OptimizerCost {
    /// Per-tensor norms of the local shards (LARC); zero without LARC.
    pub norms: Seconds,
    /// All-reduce of the norms (LARC with sharded params), and the gradient
    /// scaler's overflow check (fp16); `None` when nothing is reduced.
    pub norm_all_reduce: Option<Seconds>,
    /// SGD/Adam update of the fp32 master shard.
    pub step: Seconds,
    /// All-reduce of the step's loss value after backward (blocking; the
    /// optimiser starts after it); `None` when nothing is reduced.
    pub loss_all_reduce: Option<Seconds>,
}

/// Everything one step costs, in execution order.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepProfile {
    pub blocks: Vec<BlockCost>,
    /// In forward order (nested units after their parent).
    pub units: Vec<UnitCost>,
    /// Checkpointed segments over block indices, in order and disjoint.
    pub recompute_segments: Vec<Range<usize>>,
    pub loss: LossCost,
    pub optimizer: OptimizerCost,
    pub reshard_after_forward: bool,
    /// The collectives that reduce a gradient (from the sharding).
    pub reduction: Reduction,
    /// The crop groups' order in backward; with `ByCropGroup` a trunk
    /// block's recompute and backward run per group, each costing the
    /// group's share of the block (`crop_shares`, over blocks `0..trunk`).
    pub backward_order: BackwardOrder,
    pub crop_shares: Vec<f64>,
    pub trunk: usize,
    /// Issue the next unit's all-gather one unit ahead (FSDP prefetch).
    pub prefetch: bool,
    /// Collectives run beside compute (a GPU's comm stream, or CPU ranks
    /// with a spare core for the transport threads). When false, every
    /// collective takes the core its rank computes on, so it adds to the
    /// step in full.
    pub overlap: bool,
    /// Without overlap: the time ranks spend waiting for the slowest one at
    /// each synchronisation, per second of compute between them (measured
    /// busy-rank skew; 0 with overlap).
    pub skew: f64,
    /// Host work before the first forward block (prototype normalisation,
    /// zeroing gradients, moving the batch), then a blocking all-reduce
    /// (the prototype row norms) that forward waits for.
    pub prologue: Seconds,
    pub prologue_all_reduce: Option<Seconds>,
    /// Per block, SyncBN's blocking all-reduces in its forward and its
    /// backward (already inside the block's times; empty without SyncBN).
    pub sync_bn: Vec<(Seconds, Seconds)>,
}

impl StepProfile {
    /// SyncBN's share of the step's compute: every block's forward and
    /// backward all-reduces, and the forward's again where recomputed.
    pub fn sync_bn_time(&self) -> Seconds {
        let once: f64 = self.sync_bn.iter().map(|(f, b)| f.0 + b.0).sum();
        let again: f64 = self.recompute_segments.iter().flat_map(|s| s.clone()).filter_map(|i| self.sync_bn.get(i)).map(|(f, _)| f.0).sum();
        Seconds(once + again)
    }
}

/// Compute time of one step by phase, as the executor's phase timer
/// (`SEERSCALE_PHASE_TIMES=1`) splits it; communication not included.
#[derive(Clone, Copy, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct PhaseTimes {
    /// Prototype normalisation, zeroing gradients, moving the batch (s).
    pub prologue_s: f64,
    pub forward_s: f64,
    /// Sinkhorn + swapped-prediction loss.
    pub loss_s: f64,
    /// Backward of every block (recompute included).
    pub backward_s: f64,
    /// LARC norms and the update.
    pub optimizer_s: f64,
}

impl StepProfile {
    /// Busy compute time per phase (no waiting on collectives): the same
    /// ops the simulation runs, summed by phase.
    pub fn phases(&self) -> PhaseTimes {
        let mut sim = Simulator::new();
        sim.build(self);
        let mut t = PhaseTimes::default();
        for op in &sim.ops {
            *match op.kind {
                OpKind::Prologue => &mut t.prologue_s,
                OpKind::Forward => &mut t.forward_s,
                OpKind::Loss => &mut t.loss_s,
                OpKind::Recompute | OpKind::Backward => &mut t.backward_s,
                OpKind::Optimizer => &mut t.optimizer_s,
            } += op.dur;
        }
        t
    }
}

/// What the simulation found.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct StepResult {
    pub step_time: Seconds,
    /// Busy time of the compute stream (recompute included).
    pub compute_time: Seconds,
    pub recompute_time: Seconds,
    /// Busy time of the communication stream.
    pub comm_time: Seconds,
    /// Time the compute stream waited for communication.
    pub exposed_comm: Seconds,
    /// SyncBN's blocking all-reduces, inside the compute time.
    pub sync_bn: Seconds,
}

impl StepResult {
    /// Share of the communication that hid behind compute.
    pub fn overlap(&self) -> f64 {
        if self.comm_time.0 <= 0.0 {
            1.0
        } else {
            1.0 - (self.exposed_comm.0 / self.comm_time.0).clamp(0.0, 1.0)
        }
    }
}

/// What a compute op is, for the phase split.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum OpKind {
    Prologue,
    Forward,
    Loss,
    Recompute,
    Backward,
    Optimizer,
}

#[derive(Clone, Copy, Debug)]
struct ComputeOp {
    dur: f64,
    kind: OpKind,
    /// Ranges into the flat `deps` / `prefetch` / `after` lists.
    deps: (u32, u32),
    prefetch: (u32, u32),
    after: (u32, u32),
}

#[derive(Clone, Copy, Debug)]
struct CommOp {
    dur: f64,
    issued: Option<f64>,
    finish: Option<f64>,
}

/// What the next compute op's pre-hook does: the collectives it waits for,
/// those it prefetches, and the host work of the gathers it issues.
#[derive(Default)]
struct PreHook {
    deps: Vec<u32>,
    prefetch: Vec<u32>,
    host: Seconds,
}

/// Reusable buffers: a sweep simulates tens of thousands of steps.
#[derive(Default)]
pub struct Simulator {
    ops: Vec<ComputeOp>,
    comm: Vec<CommOp>,
    deps: Vec<u32>,
    prefetch: Vec<u32>,
    after: Vec<u32>,
    queue: VecDeque<u32>,
    scratch: Vec<u32>,
    overlap: bool,
    skew: f64,
}

/// One-off simulation (allocates; use [`Simulator`] in loops).
#[cfg(test)]
pub(crate) fn simulate(p: &StepProfile) -> StepResult {
    Simulator::default().run(p)
}

impl Simulator {
    pub fn new() -> Simulator {
        Simulator::default()
    }

    pub fn run(&mut self, p: &StepProfile) -> StepResult {
        self.build(p);
        StepResult { sync_bn: p.sync_bn_time(), ..self.execute() }
    }

    fn comm_op(&mut self, dur: Seconds) -> u32 {
        self.comm.push(CommOp { dur: dur.0.max(0.0), issued: None, finish: None });
        (self.comm.len() - 1) as u32
    }

    /// Pushes a compute op: the collectives it waits for, those its pre-hook
    /// prefetches, and those it issues when it ends.
    fn compute_op(&mut self, dur: Seconds, kind: OpKind, deps: &[u32], prefetch: &[u32], after: &[u32]) {
        let push = |v: &mut Vec<u32>, xs: &[u32]| {
            let s = v.len() as u32;
            v.extend_from_slice(xs);
            (s, v.len() as u32)
        };
        let deps = push(&mut self.deps, deps);
        let prefetch = push(&mut self.prefetch, prefetch);
        let after = push(&mut self.after, after);
        self.ops.push(ComputeOp { dur: dur.0.max(0.0), kind, deps, prefetch, after });
    }

    fn build(&mut self, p: &StepProfile) {
        self.overlap = p.overlap;
        self.skew = p.skew;
        self.ops.clear();
        self.comm.clear();
        self.deps.clear();
        self.prefetch.clear();
        self.after.clear();
        let nb = p.blocks.len();
        let blocks_of_units: Vec<Vec<usize>> = p.units.iter().map(|u| (u.blocks.start.min(nb)..u.blocks.end.min(nb)).collect()).collect();
        let layout = Layout::new(nb, &blocks_of_units).with_crop_groups(p.crop_shares.len(), p.trunk);
        let schedule = Schedule::compile(&layout, &p.recompute_segments, p.reshard_after_forward, p.reduction, p.backward_order);
        let share = |group: Option<usize>| group.and_then(|g| p.crop_shares.get(g)).copied().unwrap_or(1.0);

        // The gather that currently holds each unit's parameters (None: sharded).
        let mut gathered: Vec<Option<u32>> = vec![None; p.units.len()];
        let mut has_grad = vec![false; p.units.len()];
        let mut hook = PreHook::default();
        // The collective reducing each unit's gradient right now.
        let mut reducing: Vec<Option<u32>> = vec![None; p.units.len()];
        for event in &schedule.events {
            match *event {
                Event::Prologue => {
                    let ar: Vec<u32> = p.prologue_all_reduce.map(|t| self.comm_op(t)).into_iter().collect();
                    self.op(&mut hook, p.prologue, OpKind::Prologue, &ar);
                    hook.deps.extend(ar);
                }
                Event::Gather { unit } => {
                    let g = match gathered[unit] {
                        Some(g) => g,
                        None => {
                            hook.host += p.units[unit].gather_host;
                            self.comm_op(p.units[unit].all_gather)
                        }
                    };
                    gathered[unit] = Some(g);
                    hook.deps.push(g);
                }
                Event::Prefetch { unit } => {
                    if p.prefetch && gathered[unit].is_none() {
                        hook.host += p.units[unit].gather_host;
                        let g = self.comm_op(p.units[unit].all_gather);
                        gathered[unit] = Some(g);
                        hook.prefetch.push(g);
                    }
                }
                Event::Forward { block, keep } => {
                    let b = &p.blocks[block];
                    let t = if keep == Keep::Graph { b.forward } else { b.forward_no_grad };
                    self.op(&mut hook, t, OpKind::Forward, &[]);
                }
                Event::Reshard { unit } => gathered[unit] = None,
                Event::Loss => {
                    // Sinkhorn per assignment crop, each step waiting for the
                    // previous step's all-reduce; then the swapped loss.
                    let l = &p.loss;
                    for _ in 0..l.assign_crops {
                        for i in 0..=l.sinkhorn_iterations {
                            let (t, reduce) = if i == 0 { (l.sinkhorn_init, l.sum_all_reduce) } else { (l.sinkhorn_iteration, l.row_all_reduce) };
                            let ar = self.comm_op(reduce);
                            self.op(&mut hook, t, OpKind::Loss, &[ar]);
                            hook.deps.push(ar);
                        }
                    }
                    self.op(&mut hook, l.swapped_loss, OpKind::Loss, &[]);
                }
                Event::Recompute { block, group } => self.op(&mut hook, p.blocks[block].forward * share(group), OpKind::Recompute, &[]),
                Event::Backward { block, group } => {
                    for &u in &layout.units_of_block[block] {
                        if !std::mem::replace(&mut has_grad[u], true) {
                            hook.host += p.units[u].grad_init;
                        }
                    }
                    self.op(&mut hook, p.blocks[block].backward * share(group), OpKind::Backward, &[]);
                }
                Event::GradReady { unit } => {
                    gathered[unit] = None;
                    if let Some(last) = self.ops.last_mut() {
                        last.dur += p.units[unit].finish_host.0.max(0.0);
                    }
                }
                Event::ReduceScatter { unit } => {
                    let c = self.comm_op(p.units[unit].reduce_scatter);
                    self.issue_after_last_op(c);
                    reducing[unit] = Some(c);
                }
                Event::AllReduce { unit } => {
                    let c = self.comm_op(p.units[unit].all_reduce);
                    self.issue_after_last_op(c);
                    reducing[unit] = Some(c);
                }
                Event::WaitReduceScatter { unit } | Event::WaitAllReduce { unit } => hook.deps.extend(reducing[unit].take()),
                Event::ShardGrad { .. } | Event::Drain => {}
                Event::LossAllReduce => {
                    if let Some(t) = p.optimizer.loss_all_reduce {
                        let ar = self.comm_op(t);
                        self.op(&mut hook, Seconds(0.0), OpKind::Optimizer, &[ar]);
                        hook.deps.push(ar);
                    }
                }
                Event::Optimizer => {
                    let o = &p.optimizer;
                    let ar: Vec<u32> = o.norm_all_reduce.map(|t| self.comm_op(t)).into_iter().collect();
                    self.op(&mut hook, o.norms, OpKind::Optimizer, &ar);
                    hook.deps.extend(ar);
                    self.op(&mut hook, o.step, OpKind::Optimizer, &[]);
                }
            }
        }
    }

    /// Pushes a compute op that runs `dur` after its pre-hook (`hook`,
    /// emptied), issuing `after` when it ends.
    fn op(&mut self, hook: &mut PreHook, dur: Seconds, kind: OpKind, after: &[u32]) {
        self.compute_op(dur + hook.host, kind, &hook.deps, &hook.prefetch, after);
        hook.deps.clear();
        hook.prefetch.clear();
        hook.host = Seconds(0.0);
    }

    /// Issues `c` when the last pushed compute op ends.
    fn issue_after_last_op(&mut self, c: u32) {
        self.after.push(c);
        if let Some(op) = self.ops.last_mut() {
            debug_assert_eq!(op.after.1 as usize + 1, self.after.len());
            op.after.1 += 1;
        }
    }

    fn issue(&mut self, c: u32, at: f64) {
        let op = &mut self.comm[c as usize];
        if op.issued.is_none() {
            op.issued = Some(at);
            self.queue.push_back(c);
        }
    }

    /// Runs queued collectives in issue order until `c` has finished.
    /// Issue times never decrease (they follow the compute stream), so the
    /// FIFO is the stream's order.
    fn run_until(&mut self, c: u32, comm_free: &mut f64) -> f64 {
        while self.comm[c as usize].finish.is_none() {
            let Some(q) = self.queue.pop_front() else { break };
            let op = &mut self.comm[q as usize];
            let start = comm_free.max(op.issued.unwrap_or(0.0));
            let end = start + op.dur;
            op.finish = Some(end);
            *comm_free = end;
        }
        self.comm[c as usize].finish.unwrap_or(*comm_free)
    }

    fn execute(&mut self) -> StepResult {
        self.queue.clear();
        let (mut t, mut comm_free) = (0.0f64, 0.0f64);
        let (mut busy, mut recompute) = (0.0, 0.0);
        for i in 0..self.ops.len() {
            let op = self.ops[i];
            // Pre-hook: issue what this op needs (if nobody prefetched it),
            // then the prefetch.
            self.scratch.clear();
            self.scratch.extend_from_slice(&self.deps[op.deps.0 as usize..op.deps.1 as usize]);
            for k in 0..self.scratch.len() {
                let c = self.scratch[k];
                self.issue(c, t);
            }
            for k in op.prefetch.0..op.prefetch.1 {
                let c = self.prefetch[k as usize];
                self.issue(c, t);
            }
            let mut start = t;
            for k in 0..self.scratch.len() {
                let c = self.scratch[k];
                start = start.max(self.run_until(c, &mut comm_free));
            }
            t = start + op.dur;
            busy += op.dur;
            if op.kind == OpKind::Recompute {
                recompute += op.dur;
            }
            for k in op.after.0..op.after.1 {
                let c = self.after[k as usize];
                self.issue(c, t);
            }
        }
        // Drain whatever is still queued.
        while let Some(q) = self.queue.pop_front() {
            let op = &mut self.comm[q as usize];
            let start = comm_free.max(op.issued.unwrap_or(0.0));
            comm_free = start + op.dur;
            op.finish = Some(comm_free);
        }
        let comm: f64 = self.comm.iter().map(|c| c.dur).sum();
        // Serial: every compute stretch ends at a synchronising collective,
        // so the waiting for the slowest rank adds `skew` per second of it.
        let step = if self.overlap { t.max(comm_free) } else { busy * (1.0 + self.skew) + comm };
        StepResult {
            step_time: Seconds(step),
            compute_time: Seconds(busy),
            recompute_time: Seconds(recompute),
            comm_time: Seconds(comm),
            exposed_comm: Seconds((step - busy).max(0.0)),
            sync_bn: Seconds(0.0),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn profile(blocks: usize, per_block: usize, fwd: f64, gather: f64) -> StepProfile {
        let blocks_v = vec![BlockCost::new(Seconds(fwd), Seconds(2.0 * fwd)); blocks];
        let units = (0..blocks / per_block)
            .map(|u| UnitCost {
                blocks: u * per_block..(u + 1) * per_block,
                all_gather: Seconds(gather),
                reduce_scatter: Seconds(gather),
                ..UnitCost::default()
            })
            .collect();
        StepProfile {
            blocks: blocks_v,
            units,
            recompute_segments: vec![],
            loss: LossCost {
                assign_crops: 2,
                sinkhorn_init: Seconds(0.01),
                sinkhorn_iterations: 3,
                sinkhorn_iteration: Seconds(0.01),
                sum_all_reduce: Seconds(0.0),
                row_all_reduce: Seconds(0.0),
                swapped_loss: Seconds(0.02),
            },
            optimizer: OptimizerCost { norms: Seconds(0.01), norm_all_reduce: Some(Seconds(0.0)), step: Seconds(0.05), loss_all_reduce: None },
            reshard_after_forward: true,
            reduction: Reduction { scatter: true, all_reduce: false },
            prefetch: true,
            overlap: true,
            skew: 0.0,
            prologue: Seconds(0.0),
            prologue_all_reduce: None,
            ..StepProfile::default()
        }
    }

    fn compute_sum(p: &StepProfile) -> f64 {
        let b: f64 = p.blocks.iter().map(|c| c.forward.0 + c.backward.0).sum();
        let rc: f64 = p.recompute_segments.iter().map(|s| p.blocks[s.clone()].iter().map(|c| c.forward.0).sum::<f64>()).sum();
        let l = &p.loss;
        let loss = l.assign_crops as f64 * (l.sinkhorn_init.0 + l.sinkhorn_iterations as f64 * l.sinkhorn_iteration.0) + l.swapped_loss.0;
        b + rc + loss + p.optimizer.norms.0 + p.optimizer.step.0
    }

    #[test]
    fn zero_cost_comm_gives_the_sum_of_compute() {
        let mut p = profile(12, 3, 0.1, 0.0);
        p.recompute_segments = vec![2..5, 7..10];
        let r = simulate(&p);
        let want = compute_sum(&p);
        assert!((r.step_time.0 - want).abs() < 1e-12, "{} vs {want}", r.step_time.0);
        assert!((r.compute_time.0 - want).abs() < 1e-12);
        assert!((r.recompute_time.0 - 0.6).abs() < 1e-12, "{}", r.recompute_time.0);
        assert_eq!(r.exposed_comm.0, 0.0);
    }

    /// A checkpointed block's first forward runs without autograd (its own,
    /// usually cheaper, time); its recompute in backward pays the full one.
    #[test]
    fn checkpointed_blocks_forward_without_grad_and_recompute_with_it() {
        let mut p = profile(6, 1, 0.1, 0.0);
        for b in &mut p.blocks {
            b.forward_no_grad = Seconds(0.04);
        }
        // One checkpointed segment (a list of ranges), not blocks 1 and 2.
        #[allow(clippy::single_range_in_vec_init)]
        let segments = vec![1..3];
        p.recompute_segments = segments;
        let r = simulate(&p);
        // compute_sum counts every forward at 0.1: blocks 1 and 2 save 0.06 each.
        let want = compute_sum(&p) - 2.0 * 0.06;
        assert!((r.step_time.0 - want).abs() < 1e-12, "{} vs {want}", r.step_time.0);
        assert!((r.recompute_time.0 - 0.2).abs() < 1e-12, "{}", r.recompute_time.0);
        let ph = p.phases();
        assert!((ph.forward_s - (4.0 * 0.1 + 2.0 * 0.04)).abs() < 1e-12, "{}", ph.forward_s);
        assert!((ph.backward_s - (6.0 * 0.2 + 0.2)).abs() < 1e-12, "{}", ph.backward_s);
    }

    /// Without overlap every collective adds to the step in full.
    #[test]
    fn without_overlap_the_step_is_compute_plus_all_comm() {
        let mut p = profile(8, 2, 0.1, 0.05);
        let overlapped = simulate(&p);
        p.overlap = false;
        let serial = simulate(&p);
        let want = compute_sum(&p) + serial.comm_time.0;
        assert!((serial.step_time.0 - want).abs() < 1e-12, "{} vs {want}", serial.step_time.0);
        assert!((serial.exposed_comm.0 - serial.comm_time.0).abs() < 1e-12);
        assert!(overlapped.step_time < serial.step_time);
        // Skew stretches the compute between synchronisations.
        p.skew = 0.1;
        let skewed = simulate(&p);
        let want = compute_sum(&p) * 1.1 + serial.comm_time.0;
        assert!((skewed.step_time.0 - want).abs() < 1e-12, "{} vs {want}", skewed.step_time.0);
    }

    #[test]
    fn huge_comm_is_exposed_except_what_compute_can_hide() {
        let p = profile(8, 2, 0.01, 100.0);
        let r = simulate(&p);
        // 4 units: 4 forward gathers + 3 backward gathers (the last block's
        // unit stays gathered) + 4 reduce-scatters.
        assert!((r.comm_time.0 - 1100.0).abs() < 1e-9);
        let compute = compute_sum(&p);
        // Everything but the compute that overlaps a collective is exposed:
        // exposed >= comm - compute, and the step is at least the comm.
        assert!(r.step_time.0 >= r.comm_time.0);
        assert!(r.exposed_comm.0 >= r.comm_time.0 - compute - 1e-9, "{r:?}");
        assert!(r.exposed_comm.0 <= r.comm_time.0 + 1e-9, "{r:?}");
        assert!((r.exposed_comm.0 - (r.step_time.0 - compute)).abs() < 1e-9);
    }

    #[test]
    fn prefetch_hides_gathers_behind_compute() {
        // Gathers shorter than a unit's compute: prefetch hides all but the first.
        let mut p = profile(16, 2, 0.1, 0.05);
        p.prefetch = false;
        let without = simulate(&p);
        p.prefetch = true;
        let with = simulate(&p);
        assert!(with.exposed_comm.0 < without.exposed_comm.0, "with {with:?} without {without:?}");
        assert!(with.step_time < without.step_time);
        assert_eq!(with.comm_time, without.comm_time);
        // Without prefetch, every gather is exposed: 8 forward + 7 backward gathers.
        assert!(without.exposed_comm.0 >= 15.0 * 0.05 - 1e-9, "{without:?}");
    }

    #[test]
    fn no_reshard_skips_backward_gathers() {
        let mut p = profile(8, 2, 0.1, 0.3);
        let resharded = simulate(&p);
        p.reshard_after_forward = false;
        let kept = simulate(&p);
        // Every unit but the last block's is gathered again for backward.
        assert!((resharded.comm_time.0 - kept.comm_time.0 - 3.0 * 0.3).abs() < 1e-9);
        assert!(kept.step_time <= resharded.step_time);
    }

    #[test]
    fn world_size_one_has_no_comm() {
        let mut p = profile(6, 1, 0.1, 0.0);
        p.optimizer.norm_all_reduce = None;
        let r = simulate(&p);
        assert_eq!(r.comm_time.0, 0.0);
        assert_eq!(r.exposed_comm.0, 0.0);
    }

    #[test]
    fn optimizer_waits_for_the_last_reduce_scatter() {
        // Compute is trivial; the final reduce-scatter decides the end.
        let mut p = profile(4, 4, 1e-6, 0.0);
        p.units[0].reduce_scatter = Seconds(5.0);
        let r = simulate(&p);
        assert!(r.step_time.0 > 5.0 + p.optimizer.step.0 - 1e-9, "{r:?}");
    }

    /// The executor keeps at most two reduce-scatters in flight: the op
    /// after a third waits for the oldest to finish.
    #[test]
    fn a_third_reduce_scatter_in_flight_makes_the_next_op_wait_for_the_oldest() {
        let mut p = profile(4, 1, 1e-6, 0.0);
        for u in &mut p.units {
            u.reduce_scatter = Seconds(1.0);
        }
        p.blocks[0].backward = Seconds(3.0);
        // No backward gathers queued behind the reduce-scatters.
        p.reshard_after_forward = false;
        let r = simulate(&p);
        // After the loss (at t0), blocks 3, 2, 1 issue their reduce-scatters
        // (the stream is busy until t0+3); block 0's backward starts when
        // the first ends (t0+1) and runs to t0+4; its own reduce-scatter
        // then takes 1 s. Without the bound block 0 would start at once and
        // the step would end near t0+4.
        let l = &p.loss;
        let t0 = l.assign_crops as f64 * (l.sinkhorn_init.0 + l.sinkhorn_iterations as f64 * l.sinkhorn_iteration.0) + l.swapped_loss.0;
        let tail = p.optimizer.norms.0 + p.optimizer.step.0;
        assert!((r.step_time.0 - (t0 + 5.0 + tail)).abs() < 1e-3, "{r:?}");
    }

    #[test]
    fn reusing_the_simulator_gives_the_same_answer() {
        let mut sim = Simulator::new();
        let a = profile(10, 2, 0.1, 0.2);
        let b = profile(4, 1, 0.3, 0.01);
        let ra = sim.run(&a);
        let _ = sim.run(&b);
        assert_eq!(sim.run(&a), ra);
    }
}
