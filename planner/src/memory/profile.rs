//! What the memory model needs of a step, in allocator-rounded bytes, and
//! how it is built from the layer graph.

use super::*;
use crate::wrapping::Unit;
use cost_models::graph::{BlockKind, Layer, LayerKind, ModelGraph};
use cost_models::hardware::{DeviceKind, HardwareSpec};
use cost_models::{Bytes, DType};
use runspec::recipe::Recipe;
use runspec::schedule::BackwardOrder;
use runspec::sharding::Reduction;
use std::ops::Range;

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
    pub(super) fn group(&self, g: Option<usize>) -> GroupMem {
        match g.and_then(|g| self.groups.get(g)) {
            Some(x) => x.clone(),
            None => self.whole(),
        }
    }
    /// Output bytes per group (what the next block's backward hands back).
    pub(super) fn outputs(&self) -> Vec<u64> {
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
pub(crate) fn measured_backward(measured: &cost_models::hardware::Measured, graph: &ModelGraph) -> Vec<Option<u64>> {
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
            // Each loader worker holds its prefetched batches and one it is
            // blocked on (the recipe's loader settings, as the executor runs them).
            let (workers, prefetch) = (recipe.data.loader_workers as u64, recipe.data.loader_prefetch as u64);
            cast_copy + workers * (prefetch + 1) * host_batch
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
