//! What each op of one training step costs on a given device and cluster:
//! turns the layer graph, the FSDP units and the decisions into the
//! [`StepProfile`] the simulator runs.
//!
//! Split by what it depends on, so a sweep computes each part once:
//! [`GraphCosts`] depends on (model, batch, precision, device) only; the
//! collective times depend on the world group as well; the optimiser step
//! on the shard size (world size).

use crate::recipe::Recipe;
use crate::simulator::{BlockCost, LossCost, OptimizerCost, StepProfile, UnitCost};
use crate::wrapping::Unit;
use cost_models::collectives::CollectiveModel;
use cost_models::compute::{ComputeError, ComputeModel, OpDesc, OpKind, Pass};
use cost_models::graph::ModelGraph;
use cost_models::topology::GroupLinks;
use cost_models::{Bytes, DType, Flops, Seconds};
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
    /// Parameter tensors (LARC computes one norm each).
    pub param_tensors: usize,
    pub params: u64,
    /// Recompute time per block if it is checkpointed (= its forward).
    pub recompute: Vec<Seconds>,
}

impl GraphCosts {
    pub fn new(graph: &ModelGraph, compute: &ComputeModel, recipe: &Recipe) -> Result<GraphCosts, ComputeError> {
        let mut blocks = Vec::with_capacity(graph.blocks.len());
        let mut flops = Flops(0.0);
        for b in &graph.blocks {
            let (mut f, mut bw) = (Seconds(0.0), Seconds(0.0));
            for l in graph.layers_of(b) {
                f += compute.layer_time(l, Pass::Forward)?;
                bw += compute.layer_time(l, Pass::Backward)?;
            }
            flops += b.fwd_flops + b.bwd_flops;
            blocks.push(BlockCost { forward: f, backward: bw });
        }
        let images = graph.workload.images as f64;
        let k = graph.blocks.last().and_then(|b| graph.layers_of(b).last()).map_or(1, |l| l.out_shape[1]) as f64;
        let crops = recipe.data.crops.iter().map(|c| c.count).sum::<u64>() as f64;
        let assign = recipe.swav.crops_for_assign.len();
        // Sinkhorn and the loss run in fp32 on the (images x K) score
        // matrices and are memory-bound: count bytes moved and kernels.
        let bk = images * k * 4.0;
        let elementwise = |bytes: f64, kernels: u32| -> Result<Seconds, ComputeError> {
            let op = OpDesc { kind: OpKind::Elementwise, flops: Flops(bytes / 4.0), bytes: Bytes(bytes as u64), dtype: DType::Fp32, kernels };
            Ok(compute.op_time(&op)?.time)
        };
        // exp(scores/eps) (read + write) and its sum (read).
        let sinkhorn_init = elementwise(3.0 * bk, 3)?;
        // Row sums, divide, column sums, divide.
        let sinkhorn_iteration = elementwise(6.0 * bk, 4)?;
        // Per (assigned crop, other crop): log-softmax forward + backward,
        // about six passes over the scores.
        let pairs = assign as f64 * (crops - 1.0).max(1.0);
        let swapped_loss = elementwise(pairs * 12.0 * bk, (pairs * 6.0) as u32)?;
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
        Ok(GraphCosts {
            blocks,
            model_flops: flops,
            loss,
            row_sum_bytes: Bytes(k as u64 * 4),
            param_tensors: graph.blocks.iter().map(|b| b.param_tensors.len()).sum(),
            params: graph.blocks.iter().map(|b| b.params).sum(),
            recompute,
        })
    }
}

/// The collective and shard-dependent parts for one world group.
pub struct WorldCosts<'a> {
    pub group: &'a GroupLinks,
    pub collectives: &'a CollectiveModel,
    pub world_size: usize,
}

/// Bytes of one unit's flat parameter (padded to the world size) in a
/// given dtype; the prototypes' unit moves fp32 (SwAV keeps them in full
/// precision).
fn unit_bytes(u: &Unit, dtype: DType, world: usize) -> Bytes {
    Bytes(u.padded(world) * if u.fp32 { 4 } else { dtype.size() })
}

/// Collective times of every unit (forward order).
pub fn unit_costs(units: &[Unit], n_blocks: usize, compute: DType, reduce: DType, w: &WorldCosts) -> Vec<UnitCost> {
    units
        .iter()
        .map(|u| UnitCost {
            blocks: u.blocks.clone(),
            all_gather: w.collectives.all_gather(w.group, unit_bytes(u, compute, w.world_size)).time,
            reduce_scatter: w.collectives.reduce_scatter(w.group, unit_bytes(u, reduce, w.world_size)).time,
            // A unit spanning the whole model is FSDP's root: never resharded.
            keep_after_forward: u.blocks.start == 0 && u.blocks.end >= n_blocks,
        })
        .collect()
}

/// The full step for one set of decisions.
#[allow(clippy::too_many_arguments)]
pub fn step_profile(
    g: &GraphCosts,
    units: Vec<UnitCost>,
    checkpoint: &[Range<usize>],
    recipe: &Recipe,
    compute_dtype: DType,
    reshard_after_forward: bool,
    compute: &ComputeModel,
    w: &WorldCosts,
) -> StepProfile {
    let mut loss = g.loss;
    loss.sum_all_reduce = w.collectives.all_reduce(w.group, Bytes(4)).time;
    loss.row_all_reduce = w.collectives.all_reduce(w.group, g.row_sum_bytes).time;
    StepProfile {
        blocks: g.blocks.clone(),
        units,
        checkpoint: checkpoint.to_vec(),
        loss,
        optimizer: optimizer_cost(g, recipe, compute_dtype, compute, w),
        reshard_after_forward,
        prefetch: true,
    }
}

/// LARC norms, their all-reduce (with the fp16 scaler's overflow flag) and
/// the fp32 update of this rank's shard; memory-bound, one kernel per tensor
/// and pass (PyTorch's foreach kernels batch them, so this is an upper end).
pub fn optimizer_cost(g: &GraphCosts, recipe: &Recipe, compute_dtype: DType, compute: &ComputeModel, w: &WorldCosts) -> OptimizerCost {
    let shard = g.params as f64 / w.world_size.max(1) as f64;
    let tensors = g.param_tensors as u32;
    let bw = compute.memory_bandwidth().0;
    let pass = |bytes: f64, kernels: u32| Seconds(bytes / bw) + compute.kernel_overhead() * kernels as f64;
    let larc = recipe.optim.larc_trust.is_some();
    // Read param + grad for the two norms.
    let norms = if larc { pass(8.0 * shard, tensors) } else { Seconds(0.0) };
    // fp32 master, grad, states: read all, write param + states.
    let states = recipe.optim.kind.states_per_param() as f64;
    let step_bytes = 4.0 * shard * ((2.0 + states) + (1.0 + states));
    let step = pass(step_bytes, tensors);
    let scaler = compute_dtype == DType::Fp16;
    let reduced = if larc { 2 * g.param_tensors as u64 * 4 } else { 0 } + if scaler { 4 } else { 0 };
    let norm_all_reduce = (reduced > 0).then(|| w.collectives.all_reduce(w.group, Bytes(reduced)).time);
    OptimizerCost { norms, norm_all_reduce, step }
}
