//! What each op of one training step costs on a given device and cluster:
//! turns the layer graph, the FSDP units and the decisions into the
//! [`StepProfile`] the simulator runs.
//!
//! Split by what it depends on, so a sweep computes each part once:
//! [`GraphCosts`] depends on (model, batch, precision, device) only; the
//! collective times depend on the world group as well; the optimiser step
//! on the shard size (world size).

use crate::cluster::RankLinks;
use crate::simulator::{BlockCost, LossCost, OptimizerCost, StepProfile, UnitCost};
use crate::wrapping::{shards_per_rank, Unit};
use cost_models::collectives::{Collective, CollectiveModel};
use cost_models::compute::{ComputeError, ComputeModel, OpDesc, OpKind, Pass};
use cost_models::graph::{Block, BlockKind, LayerKind, ModelGraph};
use cost_models::hardware::HostCosts;
use cost_models::topology::GroupLinks;
use cost_models::{Bytes, DType, Flops, Seconds};
use runspec::recipe::Recipe;
use runspec::schedule::BackwardOrder;
use runspec::sharding::Sharding;
use std::ops::Range;

/// Device-time of the model's ops for one (graph, device): independent of
/// the world size.
#[derive(Clone, Debug)]
pub struct GraphCosts {
    pub blocks: Vec<BlockCost>,
    /// Model FLOPs of one step (forward + backward, no recompute): the MFU numerator.
    pub model_flops: Flops,
    /// Sinkhorn and swapped-prediction loss times (all-reduce times are filled in per world).
    pub loss: LossCost,
    /// Bytes of one all-reduce of the prototype row sums.
    pub row_sum_bytes: Bytes,
    /// Width of the embedding the prototypes score (SwAV's queue holds it).
    pub embedding_dim: u64,
    /// Images per rank of the graph's workload.
    pub images: u64,
    /// Parameter tensors (LARC computes one norm each).
    pub param_tensors: usize,
    pub params: u64,
    /// Recompute time per block if it is checkpointed (= its forward).
    pub recompute: Vec<Seconds>,
    /// The parameters each block owns: its backward adds one gradient per
    /// tensor into its unit's gradient buffer.
    pub block_own: Vec<OwnParams>,
    /// Host work before forward (zero unless the profile measured host costs).
    pub prologue: Seconds,
    /// The data loader's CPU time for one batch (zero unless the profile
    /// measured it at this crop set).
    pub loader: Seconds,
    /// Blocks whose times came from the profile's measured block times
    /// (the rest are estimated from their layers).
    pub measured_blocks: usize,
    /// Channels of every BatchNorm call per block (each crop group calls
    /// each BN once): what SyncBN all-reduces.
    pub bn_channels: Vec<Vec<u64>>,
    /// Each crop group's share of a trunk block's work (its pixels), in
    /// the order the trunk runs them.
    pub crop_shares: Vec<f64>,
    /// Trunk blocks (`0..trunk`) run each crop group separately.
    pub trunk: usize,
}

/// A block's own parameters: tensors and elements.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OwnParams {
    pub tensors: usize,
    pub elements: u64,
}

/// Ops the executor launches outside the graph's layers, counted from its
/// code (executor/src/{step,fsdp,optim,swav,model,train}.rs). Each is one
/// small tensor op (dispatch + allocation) at the measured host cost.
pub mod host_ops {
    /// Per block and input tensor: `detach` + `set_requires_grad` of the cut.
    pub const CUT_PER_INPUT: f64 = 2.0;
    /// Per block and output tensor: the `detach` passed to the next block.
    pub const DETACH_PER_OUTPUT: f64 = 1.0;
    /// Per BatchNorm layer, forward: `to_kind` of weight and bias.
    pub const BN_EXTRA: f64 = 2.0;
    /// Per block backward and output: the root `(y * grad_y).sum()` is two
    /// autograd ops (elementwise fixed cost each pass), plus one `add` per
    /// extra output; counted as elementwise ops.
    pub const ROOT_OPS_PER_OUTPUT: f64 = 2.0;
    /// Per FSDP unit gather: storage refill, shard cast, collective launch,
    /// and later the free.
    pub const GATHER: f64 = 4.0;
    /// Per gather of a unit whose BN parameters are gathered again in fp32:
    /// the zero vector, the index_select of this rank's values and their
    /// index_copy_.
    pub const BN_GATHER: f64 = 3.0;
    /// Per unit after its backward: output alloc, reduce-scatter launch,
    /// cast + add into the shard gradient.
    pub const FINISH: f64 = 4.0;
    /// Prototype row normalisation (swav::normalize_rows_sharded_): arange,
    /// floor_divide, cast, square, zeros, index_add, sqrt, clamp, index_select,
    /// cast, div; the local slice's narrow.
    pub const PROTO_NORM: f64 = 12.0;
    /// Per unit: zero_grad's `zero_`.
    pub const ZERO_GRAD_PER_UNIT: f64 = 1.0;
    /// Per crop group: the batch's `to_device` + `to_kind`.
    pub const INPUT_PER_GROUP: f64 = 2.0;
    /// The loss kept on the device (detach, cast to fp64, reshape) and the
    /// step's one read-back: three scalars cast, reshaped, concatenated,
    /// copied to the host.
    pub const LOSS_VALUE: f64 = 10.0;
    /// Sinkhorn: detach, cast, div, add, exp, transpose-copy; the inf
    /// guard (isinf, masked_fill, max, logical_not, where); sum, div_.
    pub const SINKHORN_INIT: f64 = 13.0;
    /// Per iteration: row sum; the zero-row guard (eq, any, mul, add_ to
    /// the codes, mul, add_ to the sums); the row scaling (mul, reciprocal,
    /// the inf guard's 5, mul_); column sum, mul, div_.
    pub const SINKHORN_ITERATION: f64 = 18.0;
    /// Final column sum, div, transpose-copy.
    pub const SINKHORN_FINAL: f64 = 3.0;
    /// Per (assigned crop, other crop): narrow, view, select (crop rows),
    /// div, log_softmax, mul, sum, div: autograd ops (forward + backward).
    pub const LOSS_PER_PAIR: f64 = 8.0;
    /// Per assigned crop: stack + mean; then stack + mean + cast once.
    pub const LOSS_PER_ASSIGN: f64 = 2.0;
    pub const LOSS_FINAL: f64 = 4.0;
    /// Norms per flat shard: for w and g, square + segment_reduce +
    /// select the row + index_add_.
    pub const NORMS_PER_SHARD: f64 = 8.0;
    /// Once per step: zeros, view, the all-reduce's view, grad norm (get,
    /// narrow, sum, sqrt), finite flag (isfinite, all), LARC's ratios
    /// (cast, sqrt, two gets, seven arithmetic ops, three comparisons,
    /// logical_and, where, cast).
    pub const NORMS_FIXED: f64 = 24.0;
    /// SGD update per shard: decay mul + add_; LARC's factor broadcast
    /// (index_select, repeat_interleave) and mul; buf mul_ + add_; lr mul +
    /// sub_.
    pub const SGD_PER_SHARD: f64 = 9.0;
    /// Adam update per shard: decay mul + add_; m: mul_, mul, add_; v: mul_,
    /// square, mul, add_; denom: div, sqrt, add; update: div, mul, sub_.
    pub const ADAM_PER_SHARD: f64 = 17.0;
}

impl GraphCosts {
    pub fn new(graph: &ModelGraph, compute: &ComputeModel, recipe: &Recipe) -> Result<GraphCosts, ComputeError> {
        let groups = graph.workload.crops.len().max(1) as f64;
        let host = compute.host().copied();
        let mut blocks = Vec::with_capacity(graph.blocks.len());
        let mut flops = Flops(0.0);
        let mut measured_blocks = 0;
        for b in &graph.blocks {
            // Keys cost a pass over the block's layers: only with measurements.
            let measured = if compute.has_block_times() { compute.block_time(&graph.block_key(b)) } else { None };
            let cost = match measured {
                Some(m) => {
                    measured_blocks += 1;
                    BlockCost { forward: m.forward, forward_no_grad: m.forward_no_grad, backward: m.backward }
                }
                None => estimated_block(graph, b, compute)?,
            };
            flops += b.fwd_flops + b.bwd_flops;
            blocks.push(cost);
        }
        let images = graph.workload.images as f64;
        let k = graph.prototype_layer().map_or(1, |l| l.out_shape[1]) as f64;
        let crops = recipe.data.crops.iter().map(|c| c.count).sum::<u64>() as f64;
        let assign = recipe.swav.crops_for_assign.len();
        // Sinkhorn and the loss run in fp32 on the (images x K) score
        // matrices and are memory-bound: count bytes moved and kernels.
        let bk = images * k * 4.0;
        let elementwise = |bytes: f64, kernels: u32| -> Result<Seconds, ComputeError> {
            let op = OpDesc { kind: OpKind::Elementwise, flops: Flops(bytes / 4.0), bytes: Bytes(bytes as u64), dtype: DType::Fp32, kernels };
            Ok(compute.op_time(&op)?.time)
        };
        // With measured host costs the fixed part is the executor's op count
        // at the small-op cost (no grad) or the elementwise fixed cost (autograd).
        let counted = |bytes: f64, ops: f64, pass_both: bool| -> Result<Seconds, ComputeError> {
            match host {
                None => elementwise(bytes, ops as u32),
                Some(h) => {
                    let memory = Bytes(bytes as u64) / compute.memory_bandwidth();
                    let per = if pass_both {
                        compute.fixed_cost(OpKind::Elementwise, Pass::Forward, 1) + compute.fixed_cost(OpKind::Elementwise, Pass::Backward, 1)
                    } else {
                        h.small_op
                    };
                    Ok(memory + per * ops)
                }
            }
        };
        // exp(scores/eps) (read + write) and its sum (read); plus the final
        // normalisation, which runs once per assignment crop as well.
        let (init_ops, iter_ops) = match host {
            None => (3.0, 4.0),
            Some(_) => (host_ops::SINKHORN_INIT + host_ops::SINKHORN_FINAL, host_ops::SINKHORN_ITERATION),
        };
        let sinkhorn_init = counted(3.0 * bk, init_ops, false)?;
        // Row sums, divide, column sums, divide.
        let sinkhorn_iteration = counted(6.0 * bk, iter_ops, false)?;
        // Per (assigned crop, other crop): log-softmax forward + backward,
        // about six passes over the scores.
        let pairs = assign as f64 * (crops - 1.0).max(1.0);
        let swapped_loss = match host {
            None => elementwise(pairs * 12.0 * bk, (pairs * 6.0) as u32)?,
            Some(h) => {
                counted(pairs * 12.0 * bk, pairs * host_ops::LOSS_PER_PAIR + assign as f64 * host_ops::LOSS_PER_ASSIGN + 2.0, true)?
                    + h.small_op * host_ops::LOSS_FINAL
            }
        };
        let loss = LossCost {
            assign_crops: assign,
            sinkhorn_init,
            sinkhorn_iterations: recipe.swav.sinkhorn_iterations,
            sinkhorn_iteration,
            sum_all_reduce: Seconds(0.0),
            row_all_reduce: Seconds(0.0),
            swapped_loss,
        };
        let recompute = blocks.iter().map(|b| b.forward).collect();
        let prologue = compute.small_ops(host_ops::PROTO_NORM + host_ops::INPUT_PER_GROUP * groups);
        Ok(GraphCosts {
            blocks,
            model_flops: flops,
            loss,
            row_sum_bytes: Bytes(k as u64 * 4),
            embedding_dim: graph.prototype_layer().map_or(0, |l| l.in_shape[1]),
            images: graph.workload.images,
            param_tensors: graph.blocks.iter().map(|b| b.param_tensors.len()).sum(),
            params: graph.blocks.iter().map(|b| b.params).sum(),
            recompute,
            block_own: graph.blocks.iter().map(|b| OwnParams { tensors: b.param_tensors.len(), elements: b.params }).collect(),
            prologue,
            loader: compute.loader_image(&graph.workload.crops_label()).map_or(Seconds(0.0), |s| s * graph.workload.images as f64),
            measured_blocks,
            bn_channels: graph.blocks.iter().map(|b| graph.layers_of(b).filter(|l| l.kind == LayerKind::BatchNorm).map(|l| l.out_shape[1]).collect()).collect(),
            crop_shares: crop_shares(&graph.workload.crops),
            trunk: graph.trunk_blocks().count(),
        })
    }
}

/// Each crop group's share of the trunk's pixels (every trunk layer's work
/// scales with them).
pub(crate) fn crop_shares(crops: &[cost_models::graph::CropGroup]) -> Vec<f64> {
    let px: Vec<f64> = crops.iter().map(|c| (c.count * c.resolution * c.resolution) as f64).collect();
    let total: f64 = px.iter().sum();
    px.iter().map(|p| if total > 0.0 { p / total } else { 0.0 }).collect()
}

/// A block's time from its layers (the compute model) plus, when host costs
/// are measured, the executor's per-block bookkeeping around them.
pub(crate) fn estimated_block(graph: &ModelGraph, b: &Block, compute: &ComputeModel) -> Result<BlockCost, ComputeError> {
    let groups = graph.workload.crops.len().max(1) as f64;
    let (mut f, mut bw) = (Seconds(0.0), Seconds(0.0));
    let mut bn_layers = 0.0;
    let mut extra_elementwise = 0.0;
    for l in graph.layers_of(b) {
        f += compute.layer_time(l, Pass::Forward)?;
        bw += compute.layer_time(l, Pass::Backward)?;
        match l.kind {
            LayerKind::BatchNorm => bn_layers += 1.0,
            // L2 normalise is norm + clamp_min + div in the executor.
            LayerKind::Normalize => extra_elementwise += 2.0,
            _ => {}
        }
    }
    if let Some(h) = compute.host() {
        let (inputs, outputs) = match b.kind {
            BlockKind::Stem | BlockKind::Residual => (groups, groups),
            BlockKind::HeadMlp => (groups, 1.0),
            BlockKind::HeadProto => (1.0, 1.0),
        };
        let ew = |pass| compute.fixed_cost(OpKind::Elementwise, pass, 1);
        f += h.small_op * (host_ops::CUT_PER_INPUT * inputs + host_ops::DETACH_PER_OUTPUT * outputs + host_ops::BN_EXTRA * bn_layers);
        f += ew(Pass::Forward) * extra_elementwise;
        bw += ew(Pass::Backward) * extra_elementwise;
        // The engine call and its root (the last block's root is the loss).
        bw += h.backward_call;
        if b.kind != BlockKind::HeadProto {
            let root = host_ops::ROOT_OPS_PER_OUTPUT * outputs + (outputs - 1.0);
            bw += (ew(Pass::Forward) + ew(Pass::Backward)) * root;
        }
    }
    Ok(BlockCost::new(f, bw))
}

/// The collective and shard-dependent parts for one world group.
pub struct WorldCosts<'a> {
    /// The links of the rank's groups: world, shard, replica, SyncBN.
    pub links: &'a RankLinks,
    pub collectives: &'a CollectiveModel,
    pub world_size: usize,
    /// DDP, FSDP or hybrid, resolved for `world_size`.
    pub sharding: Sharding,
    /// Collectives overlap compute (see `StepProfile::overlap`).
    pub overlap: bool,
    /// The ranks' compute fills every core (`cluster::cores_full`): the
    /// data loader's threads then take their CPU time from the step.
    pub cores_full: bool,
}

impl WorldCosts<'_> {
    /// Time of one collective over the world group.
    pub fn time(&self, op: Collective, bytes: Bytes) -> Seconds {
        self.time_in(&self.links.world, op, bytes)
    }

    /// Time of one collective over `group` (zero for a group of one);
    /// among ranks that cannot overlap it with compute, plus its measured
    /// busy-rank extra.
    pub fn time_in(&self, group: &GroupLinks, op: Collective, bytes: Bytes) -> Seconds {
        if group.ranks <= 1 {
            return Seconds(0.0);
        }
        let t = self.collectives.cost(op, group, bytes).time;
        if self.overlap {
            t
        } else {
            t + self.collectives.busy_extra(op, group.ranks)
        }
    }

    /// Ranks a parameter is sharded over.
    pub fn shard_group(&self) -> usize {
        self.sharding.shard_group.max(1)
    }
}

/// Bytes of one unit's flat parameter (padded to the shard group) in a
/// given dtype; the prototypes' unit moves fp32 (SwAV keeps them in full
/// precision).
fn unit_bytes(u: &Unit, dtype: DType, shard_group: usize) -> Bytes {
    Bytes(u.padded(shard_group) * if u.fp32 { 4 } else { dtype.size() })
}

/// Collective times of every unit (forward order).
pub(crate) fn unit_costs(units: &[Unit], compute: DType, reduce: DType, w: &WorldCosts) -> Vec<UnitCost> {
    let (s, links) = (w.shard_group(), w.links);
    units
        .iter()
        .map(|u| {
            let grad = unit_bytes(u, reduce, s);
            // BN's affine parameters, gathered again in fp32 (a second,
            // small collective: an all-reduce of them all) where the
            // compute dtype is not.
            let bn = u.bn_gather_elements(compute);
            let bn_gather = if bn > 0 && s > 1 { w.time_in(&links.shard, Collective::AllReduce, Bytes(bn * 4)) } else { Seconds(0.0) };
            // Their fp32 gradients, summed over every rank, with whichever
            // collective reduces the rest of the unit's.
            let bn_reduce = if bn > 0 && w.world_size > 1 { w.time(Collective::AllReduce, Bytes(bn * 4)) } else { Seconds(0.0) };
            let (bn_scatter, bn_replicas) = if s > 1 { (bn_reduce, Seconds(0.0)) } else { (Seconds(0.0), bn_reduce) };
            UnitCost {
                blocks: u.blocks.clone(),
                all_gather: w.time_in(&links.shard, Collective::AllGather, unit_bytes(u, compute, s)) + bn_gather,
                reduce_scatter: w.time_in(&links.shard, Collective::ReduceScatter, grad) + bn_scatter,
                // Across replicas: the scattered shard (all of it under DDP).
                all_reduce: w.time_in(&links.replica, Collective::AllReduce, Bytes(grad.0 / s as u64)) + bn_replicas,
                tensors: u.tensors(),
                param_bytes: unit_bytes(u, compute, s),
                bn_gather: bn > 0,
                grad_bytes: grad,
                ..UnitCost::default()
            }
        })
        .collect()
}

/// The full step for one set of decisions: `units` gathered in
/// `compute_dtype`, their gradients reduced in `reduce_dtype`.
#[allow(clippy::too_many_arguments)]
pub(crate) fn step_profile(
    g: &GraphCosts,
    units: &[Unit],
    checkpoint: &[Range<usize>],
    recipe: &Recipe,
    compute_dtype: DType,
    reduce_dtype: DType,
    reshard_after_forward: bool,
    backward_order: BackwardOrder,
    compute: &ComputeModel,
    w: &WorldCosts,
) -> StepProfile {
    let shards = shards_per_rank(units);
    let mut units = unit_costs(units, compute_dtype, reduce_dtype, w);
    let mut loss = g.loss;
    loss.sum_all_reduce = w.time(Collective::AllReduce, Bytes(4));
    loss.row_all_reduce = w.time(Collective::AllReduce, g.row_sum_bytes);
    let global = g.images * w.world_size as u64;
    add_queue_costs(&mut loss, g, recipe.swav.queue_length_for(global) / w.world_size.max(1) as u64, compute);
    let mut blocks = g.blocks.clone();
    let sync_bn = if recipe.sync_bn { add_sync_bn_costs(&mut blocks, &g.bn_channels, w) } else { Vec::new() };
    let host = compute.host().copied();
    if let Some(h) = host {
        add_block_param_costs(&mut blocks, &g.block_own, &units, reduce_dtype, &h, compute);
        add_unit_event_costs(&mut units, &h, compute);
    }
    if w.shard_group() == 1 {
        // Nothing to gather: the whole fp32 vector is cast into the
        // gathered buffer (read 4 bytes, write the compute dtype's).
        let bw = compute.memory_bandwidth();
        for u in &mut units {
            u.gather_host += Bytes(u.param_bytes.0 / compute_dtype.size().max(1) * 4 + u.param_bytes.0) / bw;
        }
    }
    // With every core computing, the loader's threads take their CPU time
    // from the step (spread over it; charged here, before forward).
    let loader = if w.cores_full { g.loader } else { Seconds(0.0) };
    let (prologue, prologue_all_reduce, loss_all_reduce) = match host {
        Some(h) => (
            g.prologue + h.small_op * (host_ops::ZERO_GRAD_PER_UNIT * units.len() as f64 + host_ops::LOSS_VALUE),
            // The prototype row norms (K fp32, over the shards) and the loss
            // value (one f64, over the world).
            (w.shard_group() > 1).then(|| w.time_in(&w.links.shard, Collective::AllReduce, g.row_sum_bytes)),
            (w.world_size > 1).then(|| w.time(Collective::AllReduce, Bytes(8))),
        ),
        None => (Seconds(0.0), None, None),
    };
    let mut optimizer = optimizer_cost(g, recipe, compute_dtype, compute, w, shards);
    optimizer.loss_all_reduce = loss_all_reduce;
    StepProfile {
        blocks,
        units,
        recompute_segments: checkpoint.to_vec(),
        loss,
        optimizer,
        reshard_after_forward,
        reduction: w.sharding.reduction(w.world_size),
        backward_order,
        crop_shares: g.crop_shares.clone(),
        trunk: g.trunk,
        prefetch: true,
        overlap: w.overlap,
        skew: if w.overlap { 0.0 } else { w.collectives.busy_skew(w.world_size) },
        prologue: prologue + loader,
        prologue_all_reduce,
        sync_bn,
    }
}

/// SyncBN's collectives over the SyncBN group, inside the blocks that call
/// BN: each call all-reduces count, sum and sum of squares in forward
/// ((2C + 1) fp64 values) and the two gradient sums in backward (2C fp32
/// values). They block the compute that needs their result, so they add to
/// the block's time even where other collectives overlap; a recompute
/// repeats the forward one.
/// SwAV's queue (`queue_rows` on this rank, steady state: full): per
/// assignment crop, its embeddings scored against the prototypes (an fp32
/// matmul) and Sinkhorn over that many more columns (memory-bound, as the
/// batch's part: 3 passes to start, 6 per iteration).
pub(crate) fn add_queue_costs(loss: &mut LossCost, g: &GraphCosts, queue_rows: u64, compute: &ComputeModel) {
    if queue_rows == 0 {
        return;
    }
    let (q, k, d) = (queue_rows as f64, g.row_sum_bytes.0 as f64 / 4.0, g.embedding_dim as f64);
    let scores =
        OpDesc { kind: OpKind::Matmul, flops: Flops(2.0 * q * d * k), bytes: Bytes(((q * d + d * k + q * k) * 4.0) as u64), dtype: DType::Fp32, kernels: 1 };
    let matmul = compute.op_time(&scores).map_or(Seconds(0.0), |t| t.time);
    let bw = compute.memory_bandwidth();
    loss.sinkhorn_init += matmul + Bytes((3.0 * q * k * 4.0) as u64) / bw;
    loss.sinkhorn_iteration += Bytes((6.0 * q * k * 4.0) as u64) / bw;
}

/// Returns what it added per block (forward, backward).
pub(crate) fn add_sync_bn_costs(blocks: &mut [BlockCost], bn_channels: &[Vec<u64>], w: &WorldCosts) -> Vec<(Seconds, Seconds)> {
    let group = &w.links.sync_bn;
    if group.ranks <= 1 {
        return Vec::new();
    }
    let mut added = Vec::with_capacity(blocks.len());
    for (cost, channels) in blocks.iter_mut().zip(bn_channels) {
        let fwd: Seconds = channels.iter().map(|&c| w.time_in(group, Collective::AllReduce, Bytes((2 * c + 1) * 8))).sum();
        let bwd: Seconds = channels.iter().map(|&c| w.time_in(group, Collective::AllReduce, Bytes(2 * c * 4))).sum();
        cost.forward += fwd;
        cost.forward_no_grad += fwd;
        cost.backward += bwd;
        added.push((fwd, bwd));
    }
    added
}

/// The executor's per-block parameter machinery (`Fsdp::block_params`,
/// `step::backward`): every block's forward makes each parameter of each
/// unit covering it an autograd leaf on the gathered storage, and its
/// backward asks the engine for the gradients of all those leaves (the
/// other blocks' come back undefined) and adds each of its own tensors'
/// gradients into its unit's gradient buffer, cast to the reduce dtype
/// (read the gradient, read + write the slot). The per-unit work (gather,
/// gradient buffer, reduce-scatter) is charged by the simulator at the
/// schedule's events ([`UnitCost`]'s host fields).
pub(crate) fn add_block_param_costs(blocks: &mut [BlockCost], own: &[OwnParams], units: &[UnitCost], reduce: DType, h: &HostCosts, compute: &ComputeModel) {
    let bw = compute.memory_bandwidth();
    let unused_leaf = h.param_leaf_unused.unwrap_or(Seconds(0.0));
    for (b, cost) in blocks.iter_mut().enumerate() {
        let views: usize = units.iter().filter(|u| u.blocks.contains(&b)).map(|u| u.tensors).sum();
        let own = own.get(b).copied().unwrap_or(OwnParams { tensors: 0, elements: 0 });
        cost.forward += h.param_view_forward * views as f64;
        cost.backward +=
            h.param_grad * own.tensors as f64 + unused_leaf * views.saturating_sub(own.tensors) as f64 + Bytes(3 * own.elements * reduce.size()) / bw;
    }
}

/// The host work of each unit's FSDP events: a gather (storage refill,
/// shard cast, collective launch, and later the free), the zero-fill of its
/// gradient buffer at its first backward block, and the reduce-scatter
/// bookkeeping after its gradient is complete.
pub(crate) fn add_unit_event_costs(units: &mut [UnitCost], h: &HostCosts, compute: &ComputeModel) {
    let bw = compute.memory_bandwidth();
    for u in units {
        u.gather_host = h.small_op * (host_ops::GATHER + if u.bn_gather { host_ops::BN_GATHER } else { 0.0 });
        u.grad_init = h.small_op + u.grad_bytes / bw;
        u.finish_host = h.small_op * host_ops::FINISH;
    }
}

/// Bytes per parameter the executor's norms pass moves (`Optimizer::
/// global_sq_norms`): for weight and gradient, `square` reads and writes,
/// then `sum` reads the squares.
pub const NORMS_BYTES_PER_PARAM: f64 = 2.0 * (4.0 + 4.0 + 4.0);

/// Bytes per fp32 parameter one update of the executor's optimiser moves
/// (executor/src/optim.rs, op by op; `x.op(y)` reads x and y and writes a
/// new tensor, `x.op_(y)` writes x in place): SGD builds the decayed
/// gradient `w·wd + g` (20), broadcasts LARC's per-parameter factor over
/// the shard and multiplies by it (4 + 12), updates the momentum `b·m` in
/// place then `+ d` (8 + 12) and the weight `w - b·lr` (20); Adam adds its
/// moment updates, bias corrections and the division.
pub(crate) fn optimizer_bytes_per_param(kind: runspec::recipe::OptimKind, decay: bool, larc: bool) -> f64 {
    use runspec::recipe::OptimKind;
    let decayed = if decay { 20.0 } else { 0.0 };
    match kind {
        OptimKind::Sgd => decayed + if larc { 16.0 } else { 0.0 } + 8.0 + 12.0 + 20.0,
        // m: mul_ 8, mul 8 + add_ 12; v: mul_ 8, square 8 + mul 8 + add_ 12;
        // denom: div 8, sqrt 8, add 8; w: div 12, mul 8, sub_ 12.
        OptimKind::Adam => decayed + 8.0 + 20.0 + 8.0 + 28.0 + 24.0 + 32.0,
    }
}

/// The per-parameter norms, their all-reduce over the shard group (which
/// also carries the fp16 scaler's overflow check: a non-finite gradient
/// makes its norm non-finite on every rank) and the fp32 update of a rank's
/// `shards` flat shards, which the executor's optimiser updates with a fixed
/// number of whole-shard ops each. Memory-bound plus a per-shard cost:
/// measured per shard when the profile has it (`calibrate`), otherwise the
/// executor's op count as small ops, or its kernels per shard on a catalog
/// device. Under fp16 the gradients are first unscaled: one more pass over
/// every shard (read and write).
pub(crate) fn optimizer_cost(g: &GraphCosts, recipe: &Recipe, compute_dtype: DType, compute: &ComputeModel, w: &WorldCosts, shards: usize) -> OptimizerCost {
    use runspec::recipe::OptimKind;
    let shard = g.params as f64 / w.shard_group() as f64;
    let bw = compute.memory_bandwidth().0;
    let pass = |bytes: f64, kernels: usize| Seconds(bytes / bw) + compute.kernel_overhead() * kernels as f64;
    let larc = recipe.optim.larc_trust.is_some();
    let step_bytes = shard * optimizer_bytes_per_param(recipe.optim.kind, recipe.optim.weight_decay != 0.0, larc);
    let s = shards as f64;
    let per_shard_kernels = |ops: f64| (shards as f64 * ops).round() as usize;
    let update_ops = match recipe.optim.kind {
        OptimKind::Sgd => host_ops::SGD_PER_SHARD,
        OptimKind::Adam => host_ops::ADAM_PER_SHARD,
    };
    let unscale_bytes = if compute_dtype == DType::Fp16 { 8.0 * shard } else { 0.0 };
    let unscale_ops = if compute_dtype == DType::Fp16 { 1.0 } else { 0.0 };
    let step_bytes = step_bytes + unscale_bytes;
    let update_ops = update_ops + unscale_ops;
    let (norms, step) = match compute.host() {
        // The executor runs the norms for SGD and Adam alike (grad norm and
        // the overflow check come from them).
        Some(h) => {
            let counted = |ops: f64| h.small_op * ops;
            let norms_shard = h.optimizer_norms_shard.unwrap_or_else(|| counted(host_ops::NORMS_PER_SHARD));
            let update_shard = match recipe.optim.kind {
                OptimKind::Sgd => h.optimizer_sgd_shard.unwrap_or_else(|| counted(host_ops::SGD_PER_SHARD)),
                OptimKind::Adam => h.optimizer_adam_shard.unwrap_or_else(|| counted(host_ops::ADAM_PER_SHARD)),
            } + counted(unscale_ops);
            (Seconds(NORMS_BYTES_PER_PARAM * shard / bw) + counted(host_ops::NORMS_FIXED) + norms_shard * s, Seconds(step_bytes / bw) + update_shard * s)
        }
        None => (
            pass(NORMS_BYTES_PER_PARAM * shard, per_shard_kernels(host_ops::NORMS_PER_SHARD) + host_ops::NORMS_FIXED as usize),
            pass(step_bytes, per_shard_kernels(update_ops)),
        ),
    };
    // The per-tensor norms over the shard group; replicas hold the same
    // reduced gradients, so every rank reaches the same overflow verdict.
    let norms_bytes = 2 * (g.param_tensors as u64 + 1) * 4;
    let norm_all_reduce = (w.shard_group() > 1).then(|| w.time_in(&w.links.shard, Collective::AllReduce, Bytes(norms_bytes)));
    OptimizerCost { norms, norm_all_reduce, step, loss_all_reduce: None }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cost_models::config::ModelConfig;
    use cost_models::graph::Workload;
    use cost_models::hardware::{builtin_hardware, HardwareProfile, OpFixed};

    /// The groups of rank 0 under FSDP over `world` ranks of `topo`.
    fn fsdp_links(topo: &cost_models::topology::Topology, world: usize) -> RankLinks {
        let g = topo.group(&(0..world).collect::<Vec<_>>()).unwrap();
        RankLinks { world: g.clone(), shard: g.clone(), replica: topo.group(&[0]).unwrap(), sync_bn: g }
    }

    fn model(host: Option<HostCosts>) -> ComputeModel {
        let mut p = HardwareProfile::from_spec(builtin_hardware("cpu-local").unwrap());
        // Zero fixed costs, so the only difference between the two models is
        // the host bookkeeping.
        p.measured.op_fixed = OpKind::ALL.iter().map(|&kind| OpFixed { kind, forward: Seconds(0.0), backward: Seconds(0.0) }).collect();
        p.measured.host = host;
        ComputeModel::new(&p)
    }

    /// Hand count for `s1.b0` of regnety-tiny in the tiny-cpu recipe (two
    /// crop groups, so the block runs twice): forward cuts 2 inputs (detach +
    /// set_requires_grad each) and detaches 2 outputs; each group has 4 BN
    /// layers (proj_bn, a_bn, b_bn, c_bn: the width changes 16 -> 8), each
    /// casting weight and bias: 2*2 + 2 + 2*4*2 = 22 small ops.
    #[test]
    fn block_host_ops_match_a_hand_count() {
        let recipe = Recipe::load("tiny-cpu").unwrap();
        let m = ModelConfig::load("regnety-tiny").unwrap();
        let g = ModelGraph::build(&m, &Workload { images: 8, crops: recipe.crop_groups(), dtype: DType::Fp32 });
        let b = g.blocks.iter().position(|b| b.name == "s1.b0").unwrap();
        let us = Seconds(1e-6);
        let host = HostCosts::new(us, Seconds(0.0), Seconds(0.0), Seconds(0.0));
        let with = GraphCosts::new(&g, &model(Some(host)), &recipe).unwrap();
        let without = GraphCosts::new(&g, &model(None), &recipe).unwrap();
        let d = (with.blocks[b].forward - without.blocks[b].forward).0;
        assert!((d - 22e-6).abs() < 1e-12, "{d}");
        // s1.b0 owns 2 x proj/a/b/c convs? no: params once: proj, proj_bn(2), a, a_bn(2), b, b_bn(2),
        // se.reduce(2), se.expand(2), c, c_bn(2) = 16 tensors.
        assert_eq!(with.block_own[b].tensors, 16);
        // One unit per block: every leaf costs 1 µs forward; the block's
        // backward adds its 16 gradients (1 µs each plus reading them and
        // reading + writing their slots in fp32).
        let h = HostCosts::new(Seconds(0.0), us, us, Seconds(0.0));
        let units = vec![UnitCost { blocks: b..b + 1, tensors: 16, ..UnitCost::default() }];
        let mut blocks = without.blocks.clone();
        add_block_param_costs(&mut blocks, &without.block_own, &units, DType::Fp32, &h, &model(None));
        let traffic = Bytes(3 * 4 * with.block_own[b].elements) / model(None).memory_bandwidth();
        assert!(((blocks[b].forward - without.blocks[b].forward).0 - 16e-6).abs() < 1e-12);
        assert!(((blocks[b].backward - without.blocks[b].backward).0 - 16e-6 - traffic.0).abs() < 1e-12);
    }

    /// A unit over two blocks: each block's forward makes a leaf of every
    /// tensor of the unit; each block's backward adds only its own
    /// gradients and walks the other block's leaves as unused inputs. The
    /// unit's events cost once each where the schedule puts them: one
    /// gather (the last block's unit is not gathered again), one zero-fill
    /// of its gradient buffer, one reduce-scatter's bookkeeping. Nothing
    /// grows with unit size x tensors.
    #[test]
    fn a_unit_over_two_blocks_charges_each_block_its_own_gradients() {
        use crate::simulator::StepProfile;
        let own = [OwnParams { tensors: 3, elements: 100 }, OwnParams { tensors: 5, elements: 300 }];
        let zero = BlockCost::new(Seconds(0.0), Seconds(0.0));
        let (leaf, grad, unused, small) = (Seconds(1e-6), Seconds(2e-6), Seconds(0.5e-6), Seconds(10e-6));
        let h = HostCosts { param_leaf_unused: Some(unused), ..HostCosts::new(small, leaf, grad, Seconds(0.0)) };
        let compute = model(None);
        let bw = compute.memory_bandwidth();
        let run = |grad_bytes: u64| {
            let mut units = vec![UnitCost { blocks: 0..2, tensors: 8, grad_bytes: Bytes(grad_bytes), ..UnitCost::default() }];
            let mut blocks = vec![zero; 2];
            add_block_param_costs(&mut blocks, &own, &units, DType::Bf16, &h, &compute);
            add_unit_event_costs(&mut units, &h, &compute);
            StepProfile { blocks, units, reshard_after_forward: true, prefetch: true, overlap: true, ..StepProfile::default() }
        };
        let p = run(800);
        let close = |a: Seconds, b: Seconds| assert!((a.0 - b.0).abs() < 1e-12, "{a:?} vs {b:?}");
        // Per block: 8 leaves each forward; backward, the own gradients
        // (bf16: 2 bytes x 3 passes) + the other block's leaves.
        close(p.blocks[0].forward, leaf * 8.0);
        close(p.blocks[1].forward, leaf * 8.0);
        close(p.blocks[0].backward, grad * 3.0 + unused * 5.0 + Bytes(3 * 2 * 100) / bw);
        close(p.blocks[1].backward, grad * 5.0 + unused * 3.0 + Bytes(3 * 2 * 300) / bw);
        // The unit's events, from the schedule.
        let ph = p.phases();
        close(Seconds(ph.forward_s), leaf * 16.0 + small * host_ops::GATHER);
        let zero_fill = small + Bytes(800) / bw;
        close(Seconds(ph.backward_s), p.blocks[0].backward + p.blocks[1].backward + zero_fill + small * host_ops::FINISH);
        // A 10x larger buffer costs one more zero-fill of 9x the bytes, once.
        close(Seconds(run(8000).phases().backward_s - ph.backward_s), Bytes(7200) / bw);
        // Two units of one block each, resharding: three gathers instead of
        // one (both units in forward, the first again for backward; the
        // last block's stays gathered), and one more zero-fill and finish.
        let mut two = run(800);
        two.units = vec![UnitCost { blocks: 0..1, ..two.units[0].clone() }, UnitCost { blocks: 1..2, ..two.units[0].clone() }];
        let gathers = (two.phases().forward_s + two.phases().backward_s - ph.forward_s - ph.backward_s - zero_fill.0 - (small * host_ops::FINISH).0)
            / (small * host_ops::GATHER).0;
        assert!((gathers - 2.0).abs() < 1e-6, "{gathers} more gathers");
    }

    /// A profile's measured block time replaces exactly the block with the
    /// same key (same ops, shapes, dtype); other blocks and other workloads
    /// keep the per-op estimate.
    #[test]
    fn measured_block_times_replace_the_estimate_for_matching_blocks_only() {
        use cost_models::hardware::BlockTime;
        let recipe = Recipe::load("tiny-cpu").unwrap();
        let m = ModelConfig::load("regnety-tiny").unwrap();
        let g = ModelGraph::build(&m, &Workload { images: 8, crops: recipe.crop_groups(), dtype: DType::Fp32 });
        let b = g.blocks.iter().position(|b| b.name == "s2.b0").unwrap();
        let mut p = HardwareProfile::from_spec(builtin_hardware("cpu-local").unwrap());
        let before = GraphCosts::new(&g, &ComputeModel::new(&p), &recipe).unwrap();
        p.measured.block_times.push(BlockTime {
            key: g.block_key(&g.blocks[b]),
            label: "s2.b0".into(),
            forward: Seconds(1e-3),
            forward_no_grad: Seconds(0.5e-3),
            backward: Seconds(3e-3),
            backward_peak_bytes: None,
        });
        let after = GraphCosts::new(&g, &ComputeModel::new(&p), &recipe).unwrap();
        assert_eq!(after.measured_blocks, 1);
        assert_eq!(after.blocks[b], BlockCost { forward: Seconds(1e-3), forward_no_grad: Seconds(0.5e-3), backward: Seconds(3e-3) });
        assert_eq!(after.recompute[b], Seconds(1e-3));
        for (i, (x, y)) in before.blocks.iter().zip(&after.blocks).enumerate() {
            if i != b {
                assert_eq!(x, y, "block {i}");
            }
        }
        // Another batch is another shape: nothing matches.
        let g16 = ModelGraph::build(&m, &Workload { images: 16, crops: recipe.crop_groups(), dtype: DType::Fp32 });
        assert_eq!(GraphCosts::new(&g16, &ComputeModel::new(&p), &recipe).unwrap().measured_blocks, 0);
    }

    /// SyncBN adds, per BN call of a block, one all-reduce of (2C + 1) fp64
    /// to its forward and one of 2C fp32 to its backward; nothing on 1 rank.
    #[test]
    fn sync_bn_charges_two_all_reduces_per_bn_call() {
        use cost_models::topology::Topology;
        let recipe = Recipe::load("tiny-cpu").unwrap();
        let m = ModelConfig::load("regnety-tiny").unwrap();
        let g = ModelGraph::build(&m, &Workload { images: 8, crops: recipe.crop_groups(), dtype: DType::Fp32 });
        let gc = GraphCosts::new(&g, &model(None), &recipe).unwrap();
        let b = g.blocks.iter().position(|b| b.name == "s1.b0").unwrap();
        // 4 BN layers x 2 crop groups, 8 channels each (width 16 -> 8: proj_bn is 8 too).
        assert_eq!(gc.bn_channels[b].len(), 8, "{:?}", gc.bn_channels[b]);
        let hw = builtin_hardware("a100-40gb").unwrap();
        let topo = Topology::build(&hw, 1).unwrap();
        let group = topo.group(&[0, 1]).unwrap();
        let coll = CollectiveModel::default();
        let links = fsdp_links(&topo, 2);
        let w = WorldCosts { links: &links, collectives: &coll, world_size: 2, sharding: Sharding::fsdp(2), overlap: true, cores_full: false };
        let mut blocks = gc.blocks.clone();
        add_sync_bn_costs(&mut blocks, &gc.bn_channels, &w);
        let ar = |bytes: u64| coll.all_reduce(&group, Bytes(bytes)).time.0;
        let want_f: f64 = gc.bn_channels[b].iter().map(|&c| ar((2 * c + 1) * 8)).sum();
        let want_b: f64 = gc.bn_channels[b].iter().map(|&c| ar(2 * c * 4)).sum();
        assert!(want_f > 0.0);
        assert!(((blocks[b].forward - gc.blocks[b].forward).0 - want_f).abs() < 1e-15);
        assert!(((blocks[b].forward_no_grad - gc.blocks[b].forward_no_grad).0 - want_f).abs() < 1e-15);
        assert!(((blocks[b].backward - gc.blocks[b].backward).0 - want_b).abs() < 1e-15);
        let alone = fsdp_links(&topo, 1);
        let one = WorldCosts { links: &alone, world_size: 1, sharding: Sharding::fsdp(1), ..w };
        let mut same = gc.blocks.clone();
        add_sync_bn_costs(&mut same, &gc.bn_channels, &one);
        assert_eq!(same, gc.blocks);
    }

    /// The optimiser pays the profile's measured cost per flat shard (one
    /// per unit, whatever the number of parameter tensors or ranks);
    /// without it, its op count as small ops.
    #[test]
    fn optimizer_pays_measured_cost_per_shard() {
        use cost_models::topology::Topology;
        let recipe = Recipe::load("tiny-cpu").unwrap();
        assert_eq!(recipe.optim.kind, runspec::recipe::OptimKind::Sgd);
        let m = ModelConfig::load("regnety-tiny").unwrap();
        let g = ModelGraph::build(&m, &Workload { images: 8, crops: recipe.crop_groups(), dtype: DType::Fp32 });
        let us = Seconds(1e-6);
        let measured = HostCosts {
            optimizer_norms_shard: Some(us * 3.0),
            optimizer_sgd_shard: Some(us * 5.0),
            optimizer_adam_shard: Some(us * 7.0),
            ..HostCosts::new(us, us, us, us)
        };
        let gc = GraphCosts::new(&g, &model(Some(measured)), &recipe).unwrap();
        let hw = builtin_hardware("a100-40gb").unwrap();
        let topo = Topology::build(&hw, 1).unwrap();
        let coll = CollectiveModel::default();
        let cost = |host: HostCosts, world: usize, wrapping| {
            let units = crate::wrapping::units_for(&g, wrapping);
            let links = fsdp_links(&topo, world);
            let w = WorldCosts { links: &links, collectives: &coll, world_size: world, sharding: Sharding::fsdp(world), overlap: true, cores_full: false };
            let c = model(Some(host));
            let shards = shards_per_rank(&units);
            let o = optimizer_cost(&gc, &recipe, DType::Fp32, &c, &w, shards);
            // Take the memory traffic out: what is left is the per-shard work.
            let shard = gc.params as f64 / world as f64;
            let bw = c.memory_bandwidth().0;
            let step_bytes = shard * optimizer_bytes_per_param(recipe.optim.kind, recipe.optim.weight_decay != 0.0, true);
            (shards, (o.norms.0 - NORMS_BYTES_PER_PARAM * shard / bw) * 1e6, (o.step.0 - step_bytes / bw) * 1e6)
        };
        let per_block = runspec::recipe::Wrapping::PerBlock;
        let (s1, norms1, step1) = cost(measured, 1, per_block);
        assert!(s1 > 1 && s1 < gc.param_tensors, "{s1} shards, {} tensors", gc.param_tensors);
        assert!((norms1 - (host_ops::NORMS_FIXED + 3.0 * s1 as f64)).abs() < 1e-6, "{norms1}");
        assert!((step1 - 5.0 * s1 as f64).abs() < 1e-6, "{step1}");
        // More ranks: the same shards, each smaller.
        let (s2, _, step2) = cost(measured, 2, per_block);
        assert_eq!(s2, s1);
        assert!((step2 - step1).abs() < 1e-6, "{step2} vs {step1}");
        // Fewer units: fewer shards.
        let (s_whole, _, step_whole) = cost(measured, 2, runspec::recipe::Wrapping::Whole);
        assert!(s_whole < s1 && step_whole < step1, "{s_whole} shards: {step_whole} µs");
        // An older profile without them: the executor's op count.
        let (_, norms_old, step_old) = cost(HostCosts::new(us, us, us, us), 1, per_block);
        assert!((norms_old - (host_ops::NORMS_FIXED + host_ops::NORMS_PER_SHARD * s1 as f64)).abs() < 1e-6, "{norms_old}");
        assert!((step_old - host_ops::SGD_PER_SHARD * s1 as f64).abs() < 1e-6, "{step_old}");
    }

    /// The loader's measured CPU time per image, times the batch, is
    /// charged before forward only when the ranks fill the cores; a crop
    /// set it was not measured at costs nothing.
    #[test]
    fn the_loader_takes_its_cpu_time_from_the_step_only_when_ranks_fill_the_cores() {
        use cost_models::hardware::LoaderTime;
        use cost_models::topology::Topology;
        let recipe = Recipe::load("tiny-cpu").unwrap();
        let m = ModelConfig::load("regnety-tiny").unwrap();
        let g = ModelGraph::build(&m, &Workload { images: 8, crops: recipe.crop_groups(), dtype: DType::Fp32 });
        assert_eq!(g.workload.crops_label(), "2x32+2x16");
        let mut p = HardwareProfile::from_spec(builtin_hardware("cpu-local").unwrap());
        p.measured.loader = vec![LoaderTime { crops: "2x32+2x16".into(), image: Seconds(100e-6), data: None }];
        let c = ComputeModel::new(&p);
        let gc = GraphCosts::new(&g, &c, &recipe).unwrap();
        assert!((gc.loader.0 - 800e-6).abs() < 1e-12, "{:?}", gc.loader);
        let r48 = recipe.with_largest_crop(48).unwrap();
        let g48 = ModelGraph::build(&m, &Workload { crops: r48.crop_groups(), ..g.workload.clone() });
        assert_eq!(GraphCosts::new(&g48, &c, &recipe).unwrap().loader, Seconds(0.0));
        let units = crate::wrapping::units_for(&g, runspec::recipe::Wrapping::PerBlock);
        let topo = Topology::build(&builtin_hardware("a100-40gb").unwrap(), 1).unwrap();
        let links = fsdp_links(&topo, 2);
        let coll = CollectiveModel::default();
        let profile = |cores_full: bool| {
            let w = WorldCosts { links: &links, collectives: &coll, world_size: 2, sharding: Sharding::fsdp(2), overlap: !cores_full, cores_full };
            step_profile(&gc, &units, &[], &recipe, DType::Fp32, DType::Fp32, true, BackwardOrder::Together, &c, &w)
        };
        let extra = (profile(true).prologue - profile(false).prologue).0;
        assert!((extra - 800e-6).abs() < 1e-12, "{extra}");
    }
}
