//! One forward + backward pass over the FSDP runtime, event by event as the
//! plan's compiled step schedule (`runspec::schedule`) lists them: gathers,
//! prefetches and reshards, each block's forward (with its graph, or inside
//! a checkpointed segment without), the loss, recomputes, each block's
//! backward and the collectives that reduce each unit's gradient.
//!
//! Every block's input is cut from the previous block's graph
//! (`x.detach().set_requires_grad(true)`), so backward runs one block at a
//! time: `run_backward((y * grad_y).sum(), [x, the block's parameter leaves])`.
//! That is what lets a unit's gradient be reduced as soon as its first
//! block is done, and a checkpointed segment be recomputed just before its
//! own backward.

use crate::fsdp::{BlockParams, Fsdp, FsdpError, ParamLeaf};
use crate::model::{BnState, Mode, ModelArch, ModelError};
use runspec::schedule::{Event, Keep};
use std::collections::HashMap;
use std::ops::Range;
use std::time::Instant;
use tch::{Kind, TchError, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("checkpoint segment {index} {blocks:?}: {reason}")]
    Segment { index: usize, blocks: Vec<String>, reason: String },
    #[error("block `{block}`: {source}")]
    Model { block: String, source: ModelError },
    #[error("loss: {0}")]
    Loss(String),
    #[error(transparent)]
    Fsdp(#[from] FsdpError),
    #[error("libtorch: {0}")]
    Torch(#[from] TchError),
}

/// Where activations are recomputed: contiguous block ranges.
#[derive(Clone, Debug, PartialEq)]
pub struct Checkpointing {
    segments: Vec<Range<usize>>,
    segment_of: Vec<Option<usize>>,
}

impl Checkpointing {
    /// Validates plan segments (lists of block names) against the model's
    /// blocks (`runspec::plan::segment_ranges`: names known, consecutive,
    /// in forward order, disjoint).
    pub fn new(blocks: &[String], segments: &[Vec<String>]) -> Result<Checkpointing, StepError> {
        let names: Vec<&str> = blocks.iter().map(String::as_str).collect();
        let ranges = runspec::plan::segment_ranges(segments, &names).map_err(|e| StepError::Segment {
            index: e.index(),
            blocks: segments[e.index()].clone(),
            reason: e.reason(),
        })?;
        let mut segment_of = vec![None; blocks.len()];
        for (si, r) in ranges.iter().enumerate() {
            for slot in &mut segment_of[r.clone()] {
                *slot = Some(si);
            }
        }
        Ok(Checkpointing { segments: ranges, segment_of })
    }

    pub fn none(num_blocks: usize) -> Checkpointing {
        Checkpointing { segments: Vec::new(), segment_of: vec![None; num_blocks] }
    }

    pub fn segments(&self) -> &[Range<usize>] {
        &self.segments
    }
}

/// What forward (or a recompute) kept for block i's backward, per crop
/// group where the block runs each group separately.
#[derive(Default)]
struct Saved {
    /// The first block of a checkpointed segment: the segment's input,
    /// one slot per group, taken when the group is recomputed.
    segment_input: Vec<Option<Tensor>>,
    graph: Option<Graph>,
}

/// A block run with autograd: its cut inputs and its outputs (one slot per
/// group, emptied as each group's backward runs) and its parameter leaves.
struct Graph {
    xin: Vec<Option<Tensor>>,
    y: Vec<Option<Tensor>>,
    params: Vec<ParamLeaf>,
}

impl Graph {
    /// One group's graph, in slot `group` of `groups`.
    fn of_group(groups: usize, group: Option<usize>, xin: Vec<Tensor>, y: Vec<Tensor>, params: Vec<ParamLeaf>) -> Graph {
        let slots = |v: Vec<Tensor>| -> Vec<Option<Tensor>> {
            match group {
                None => v.into_iter().map(Some).collect(),
                Some(g) => {
                    let mut out: Vec<Option<Tensor>> = (0..groups.max(g + 1)).map(|_| None).collect();
                    out[g] = v.into_iter().next();
                    out
                }
            }
        };
        Graph { xin: slots(xin), y: slots(y), params }
    }
}

/// What the loss sees: the last block's output (the prototype scores),
/// its input (the L2-normalised embedding, a leaf cut from the head) and
/// its parameters by name (the gathered prototypes).
pub struct LossInput<'a> {
    pub scores: &'a Tensor,
    pub embedding: &'a Tensor,
    pub params: &'a HashMap<String, Tensor>,
}

/// What one pass returns.
#[derive(Debug)]
pub struct PassResult {
    /// This rank's loss term (unscaled; the loss closure's value), still on
    /// the device: reading it would wait for the forward.
    pub loss: Tensor,
}

/// Runs one forward and backward pass as `events` say (the part of a
/// compiled [`Schedule`] between its prologue and its drain, drain
/// included) on one rank's batch. `inputs`: one image tensor per
/// crop-resolution group (image-major rows), already in the compute dtype.
/// `loss_fn` maps the final block's output (see [`LossInput`]) to this
/// rank's scalar loss term;
/// backward starts from `loss * loss_scale`. Shard gradients are *added to*
/// (call `zero_grad` between steps). `ran`, when given, receives every
/// event as it completes.
// Blocks and `saved` are indexed by block number.
#[allow(clippy::too_many_arguments)]
pub fn forward_backward(
    fsdp: &mut Fsdp<'_>,
    arch: &ModelArch,
    blocks: &[String],
    bn: &mut BnState,
    events: &[Event],
    mode: &Mode,
    inputs: &[Tensor],
    loss_fn: &mut dyn FnMut(&LossInput) -> Result<Tensor, String>,
    loss_scale: f64,
    mut ran: Option<&mut Vec<Event>>,
) -> Result<PassResult, StepError> {
    let n = blocks.len();
    let groups = inputs.len();
    let mut saved: Vec<Saved> = (0..n).map(|_| Saved::default()).collect();
    let run = |fsdp: &Fsdp<'_>, bn: &mut BnState, i: usize, xs: &[Tensor], mode: &Mode| -> Result<(Vec<Tensor>, BlockParams), StepError> {
        let tp = Instant::now();
        let params = fsdp.block_params(i)?;
        crate::phase_timer::add("block_params", tp);
        let tb = Instant::now();
        let y = arch.forward_block(&blocks[i], &params.by_name, bn, xs, mode).map_err(|source| StepError::Model { block: blocks[i].clone(), source })?;
        crate::phase_timer::add("block_fwd", tb);
        Ok((y, params))
    };
    // The last block's parameters by name, for the loss.
    let mut last_params: HashMap<String, Tensor> = HashMap::new();
    let cut = |xs: &[Tensor], i: usize| -> Vec<Tensor> {
        // The images need no gradient; every later input does.
        xs.iter().map(|t| if i == 0 { t.detach() } else { t.detach().set_requires_grad(true) }).collect()
    };
    let internal = |what: String| StepError::Loss(format!("internal: {what}"));
    let recompute_mode = mode.recompute();
    // The forward's running activations, and the input of the segment being recomputed.
    let mut x: Vec<Tensor> = inputs.iter().map(|t| t.shallow_clone()).collect();
    let mut recomputing: Option<Vec<Tensor>> = None;
    // The gradient of the last back-propagated block's input, per group.
    let mut grad_y: Vec<Option<Tensor>> = Vec::new();
    let mut root: Option<Tensor> = None;
    let mut loss_value = None;
    let (t_step, mut t_bwd) = (Instant::now(), None);
    for &event in events {
        match event {
            Event::Prologue | Event::LossAllReduce | Event::Optimizer => return Err(internal(format!("{event:?} is the trainer's, not the pass's"))),
            Event::Gather { unit } => {
                let tg = Instant::now();
                fsdp.gather(unit)?;
                crate::phase_timer::add(if t_bwd.is_some() { "bwd_gather" } else { "fwd_gather" }, tg);
            }
            Event::Prefetch { unit } => fsdp.prefetch(unit)?,
            Event::Reshard { unit } => fsdp.free(unit)?,
            Event::Forward { block: i, keep } => {
                x = match keep {
                    Keep::Graph => {
                        let xin = cut(&x, i);
                        let (y, params) = run(fsdp, bn, i, &xin, mode)?;
                        let out: Vec<Tensor> = y.iter().map(|t| t.detach()).collect();
                        if i + 1 == n {
                            last_params = params.by_name;
                        }
                        saved[i].graph = Some(Graph::of_group(groups, None, xin, y, params.leaves));
                        out
                    }
                    Keep::SegmentInput | Keep::Nothing => {
                        if keep == Keep::SegmentInput {
                            saved[i].segment_input = x.iter().map(|t| Some(t.detach())).collect();
                        }
                        tch::no_grad(|| run(fsdp, bn, i, &x, mode))?.0
                    }
                };
            }
            Event::Loss => {
                drop(std::mem::take(&mut x));
                crate::phase_timer::add_synced("forward", t_step);
                t_bwd = Some(Instant::now());
                let last = n.checked_sub(1).ok_or_else(|| StepError::Loss("model has no blocks".into()))?;
                let Some(Graph { y, xin, .. }) = &saved[last].graph else { return Err(internal(format!("nothing saved for block `{}`", blocks[last]))) };
                let ([Some(y)], [Some(embedding)]) = (y.as_slice(), xin.as_slice()) else {
                    return Err(StepError::Loss(format!("last block `{}` must take and return one tensor, got {} and {}", blocks[last], xin.len(), y.len())));
                };
                let tl = Instant::now();
                let l = loss_fn(&LossInput { scores: y, embedding, params: &last_params }).map_err(StepError::Loss)?;
                crate::phase_timer::add_synced("loss", tl);
                loss_value = Some(l.f_detach()?);
                root = Some(l.f_mul_scalar(loss_scale)?);
            }
            Event::Recompute { block: j, group } => {
                // With autograd; BN momentum 0 so the running statistics
                // are updated once per step.
                let xs = match recomputing.take() {
                    Some(xs) => xs,
                    None => {
                        let slots = &mut saved[j].segment_input;
                        let taken: Option<Vec<Tensor>> = match group {
                            None => slots.drain(..).collect(),
                            Some(g) => slots.get_mut(g).and_then(Option::take).map(|t| vec![t]),
                        };
                        taken.ok_or_else(|| internal(format!("no segment input kept for block `{}`", blocks[j])))?
                    }
                };
                let xin = cut(&xs, j);
                let (y, params) = run(fsdp, bn, j, &xin, &recompute_mode)?;
                recomputing = Some(y.iter().map(|t| t.detach()).collect());
                saved[j].graph = Some(Graph::of_group(groups, group, xin, y, params.leaves));
            }
            Event::Backward { block: i, group } => {
                recomputing = None;
                let Some(graph) = saved[i].graph.as_mut() else {
                    return Err(internal(format!("nothing saved for block `{}`", blocks[i])));
                };
                // The slots this backward runs: one group's, or all.
                let slots: Vec<usize> = match group {
                    Some(g) => vec![g],
                    None => (0..graph.y.len()).collect(),
                };
                let missing = || internal(format!("block `{}`: no graph kept for crop group {group:?}", blocks[i]));
                let y: Vec<Tensor> = slots.iter().map(|&k| graph.y.get_mut(k).and_then(Option::take).ok_or_else(missing)).collect::<Result<_, _>>()?;
                let xin: Vec<Tensor> = match group {
                    Some(g) => vec![graph.xin.get_mut(g).and_then(Option::take).ok_or_else(missing)?],
                    None => graph.xin.iter_mut().map(|t| t.take().ok_or_else(missing)).collect::<Result<_, _>>()?,
                };
                // Other groups still to run keep the shared graph (and parameters).
                let others = graph.y.iter().any(Option::is_some);
                let params: Vec<ParamLeaf> =
                    if others { graph.params.iter().map(ParamLeaf::shallow_clone).collect() } else { std::mem::take(&mut graph.params) };
                if !others {
                    saved[i].graph = None;
                }
                let root = match root.take() {
                    Some(r) => r,
                    None => {
                        // Sum in fp32: the value is unused, but an fp16
                        // overflow to inf would be confusing when debugging.
                        let mut acc: Option<Tensor> = None;
                        for (yk, &k) in y.iter().zip(&slots) {
                            let g = grad_y.get(k).and_then(Option::as_ref).ok_or_else(|| internal(format!("backward of `{}` before the loss", blocks[i])))?;
                            let t = yk.f_mul(&g.f_detach()?)?.f_sum(Kind::Float)?;
                            acc = Some(match acc {
                                None => t,
                                Some(a) => a.f_add(&t)?,
                            });
                        }
                        acc.ok_or_else(|| StepError::Loss(format!("block `{}` has no outputs", blocks[i])))?
                    }
                };
                let mut wrt: Vec<Tensor> = xin.iter().filter(|t| t.requires_grad()).map(|t| t.shallow_clone()).collect();
                let n_x = wrt.len();
                wrt.extend(params.iter().map(|p| p.tensor.shallow_clone()));
                let t_rb = Instant::now();
                let grads = Tensor::f_run_backward(&[&root], &wrt, others, false)?;
                crate::phase_timer::add("run_backward", t_rb);
                drop(root);
                drop(y);
                for (p, g) in params.iter().zip(&grads[n_x..]) {
                    // Undefined: the parameter did not take part (e.g. a
                    // unit's tensors that belong to another block).
                    if g.defined() {
                        fsdp.accumulate_param_grad(p.unit, p.offset, g)?;
                    }
                }
                drop(params);
                // Undefined input grads (an input that did not influence
                // the output) become zeros so the next block still
                // back-propagates; the images (block 0) need none.
                let mut gs = Vec::with_capacity(xin.len());
                for (k, x) in xin.iter().enumerate() {
                    gs.push(match (i, grads.get(k)) {
                        (0, _) => None,
                        (_, Some(g)) if g.defined() => Some(g.shallow_clone()),
                        _ => Some(x.f_zeros_like()?),
                    });
                }
                match group {
                    Some(g) => {
                        if grad_y.len() <= g {
                            grad_y.resize_with(g + 1, || None);
                        }
                        grad_y[g] = gs.pop().flatten();
                    }
                    None => grad_y = gs,
                }
            }
            Event::GradReady { unit } => fsdp.grad_ready(unit)?,
            Event::ReduceScatter { unit } => fsdp.reduce_scatter(unit)?,
            Event::WaitReduceScatter { unit } => fsdp.wait_reduce_scatter(unit)?,
            Event::AllReduce { unit } => fsdp.all_reduce(unit)?,
            Event::WaitAllReduce { unit } => fsdp.wait_all_reduce(unit)?,
            Event::ShardGrad { unit } => fsdp.shard_grad(unit)?,
            Event::Drain => {
                let t_dr = Instant::now();
                fsdp.free_all()?;
                crate::phase_timer::add("drain", t_dr);
            }
        }
        if let Some(r) = ran.as_deref_mut() {
            r.push(event);
        }
    }
    crate::phase_timer::add_synced("backward+loss", t_bwd.unwrap_or(t_step));
    let loss = loss_value.ok_or_else(|| StepError::Loss("the schedule has no loss".into()))?;
    Ok(PassResult { loss })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_must_be_known_consecutive_and_disjoint() {
        let blocks: Vec<String> = ["stem", "s1.b0", "s1.b1", "s2.b0", "head.mlp"].iter().map(|s| s.to_string()).collect();
        let seg = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let c = Checkpointing::new(&blocks, &[seg(&["s1.b0", "s1.b1"]), seg(&["s2.b0"])]).unwrap();
        assert_eq!(c.segments(), &[1..3, 3..4]);
        assert_eq!(c.segment_of, vec![None, Some(0), Some(0), Some(1), None]);
        let e = Checkpointing::new(&blocks, &[seg(&["s1.b0", "s2.b0"])]).unwrap_err();
        assert!(e.to_string().contains("consecutive"), "{e}");
        let e = Checkpointing::new(&blocks, &[seg(&["s1.b9"])]).unwrap_err();
        assert!(e.to_string().contains("unknown block `s1.b9`"), "{e}");
        let e = Checkpointing::new(&blocks, &[seg(&["s1.b0"]), seg(&["s1.b0", "s1.b1"])]).unwrap_err();
        assert!(e.to_string().contains("forward order and disjoint"), "{e}");
    }
}
