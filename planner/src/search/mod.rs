//! The sharding search: for each (GPU type, world size) it finds the fastest
//! plan that fits, over the sharding strategy (DDP, FSDP, hybrid with shard
//! groups of 1, 2 and 4 nodes' GPUs), unit wrapping, reshard_after_forward,
//! precision, per-GPU batch and (optimal) checkpoint placement; objectives
//! then pick one point among those bests.
//!
//! Per point, every combination is costed with a compute-only lower bound on
//! the time per image (no recompute, no exposed communication) and evaluated
//! best bound first: memory model, optimal checkpoints within the usable
//! memory, then the step simulator. Once a plan has been found, combinations
//! whose bound cannot beat it are skipped (exact: the bound never exceeds
//! the simulated time); `exhaustive` turns that off.
//!
//! Across world sizes, memory is monotone: with the same GPU, sharding
//! (FSDP over the world, or a fixed shard group), wrapping, precision and
//! reshard choice, every placement's peak can only grow when the world
//! shrinks (bigger shards) or the batch grows (more activations).
//! So points are searched from the largest world down, and a memo answers
//! exactly, without the checkpoint DP: a combination that did not fit at a
//! larger world (or a smaller batch) does not fit; and the optimal placement
//! found at a larger world, if it still fits, is optimal here (nothing with
//! less recompute fits here that did not fit there). Its recompute time is
//! also a lower bound for this world, which tightens the bound above.
//!
//! Batch: time to train is `total_images / images_per_s`, and the per-GPU
//! batch changes the global batch (and with it the optimisation). The user
//! fixes the per-GPU batch, or the global batch (per-GPU = global / GPUs,
//! world sizes that do not divide it are skipped), or lets the search pick
//! per-GPU batches from a list while keeping the global batch at most
//! `max_global` (default 16,384, about twice SEER's 7,936: SwAV with LARC is
//! published up to that range).
//!
//! `space` is what may be searched, `costs` what one set of decisions
//! costs (graphs, op costs, memory, the simulated step; cached), `memo`
//! what larger worlds already showed, `outcome` what a point found and
//! how an objective chooses among points.

use crate::cluster::{rank_hardware, world_sizes, LinkCache};
use crate::memory::{Decisions, MemProfile, MemoryModel};
use crate::recompute::{optimal_recompute, Placement};
use crate::simulator::Simulator;
use crate::step_costs::{step_profile, GraphCosts};
use crate::wrapping::Unit;
use cost_models::collectives::CollectiveModel;
use cost_models::compute::{ComputeError, ComputeModel};
use cost_models::config::{ConfigError, ModelConfig};
use cost_models::graph::{ModelGraph, Workload};
use cost_models::hardware::HardwareSpec;
use cost_models::padding::ChannelPadding;
use cost_models::topology::TopologyError;
use cost_models::{Bytes, DType};
use runspec::plan::Precision;
use runspec::recipe::{Recipe, Wrapping};
use runspec::schedule::BackwardOrder;
use runspec::sharding::Sharding;
use std::collections::HashMap;
use std::ops::Range;

mod costs;
mod memo;
mod outcome;
mod space;

use memo::*;
pub use outcome::*;
pub use space::*;

#[derive(Debug, thiserror::Error)]
pub enum SearchError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Compute(#[from] ComputeError),
    #[error(transparent)]
    Topology(#[from] TopologyError),
    #[error("{0}")]
    Infeasible(String),
    #[error("no plan meets the constraints: {0}")]
    Constraint(String),
    #[error("invalid search request: {0}")]
    Request(String),
}

pub(super) type GraphKey = (DType, ChannelPadding, usize);
/// (hardware, CPU share, dtype, batch).
pub(super) type CostKey = (usize, usize, DType, ChannelPadding, usize);

/// The search with its caches (graphs, per-device op costs, units, links).
pub struct Searcher<'r> {
    pub recipe: &'r Recipe,
    pub model: ModelConfig,
    pub space: SearchSpace,
    graphs: HashMap<GraphKey, ModelGraph>,
    costs: HashMap<CostKey, GraphCosts>,
    computes: HashMap<(usize, usize), ComputeModel>,
    /// Measured backward peaks per (hardware, dtype, padding, batch), per block.
    measured_bwd: HashMap<(usize, DType, ChannelPadding, usize), Vec<Option<u64>>>,
    /// Unaligned GEMMs' share of kernel time per (hardware, dtype, padding, batch).
    unaligned: HashMap<(usize, DType, ChannelPadding, usize), f64>,
    units: HashMap<Wrapping, Vec<Unit>>,
    links: LinkCache,
    collectives: Vec<CollectiveModel>,
    sim: Simulator,
    block_names: Vec<String>,
    memo: HashMap<MemoKey, Memo>,
}

/// What every combination at one (hardware, world size) shares.
struct Point {
    h: usize,
    world: usize,
    /// One rank's device (a share of the machine for CPU ranks).
    rank_hw: HardwareSpec,
    batches: Vec<usize>,
    precisions: Vec<DType>,
    paddings: Vec<ChannelPadding>,
    shardings: Vec<Sharding>,
    /// The CPU share key of the costs cache.
    share: usize,
    usable: Bytes,
    /// Usable memory less the headroom asked for.
    budget: Bytes,
    compute: ComputeModel,
    use_memo: bool,
}

struct Combo {
    /// As searched (FSDP unresolved: the memo key).
    sharding: Sharding,
    dtype: DType,
    padding: ChannelPadding,
    batch: usize,
    wrapping: Wrapping,
    reshard: bool,
    bound_per_image: f64,
    /// Compute alone per image, no recompute: what any order costs at least.
    compute_per_image: f64,
}

impl<'r> Searcher<'r> {
    pub fn new(recipe: &'r Recipe, space: SearchSpace) -> Result<Searcher<'r>, SearchError> {
        let model = ModelConfig::load(&recipe.model)?;
        if space.hardware.is_empty() {
            return Err(SearchError::Request("no hardware to search over".into()));
        }
        if let GpuCount::Fixed(n) = space.gpus {
            recipe.sync_bn_group_for(n).map_err(|e| SearchError::Request(format!("{n} GPUs: recipe `{}`: {e}", recipe.name)))?;
        }
        let collectives = space.hardware.iter().map(|h| CollectiveModel::new(h.measured.collectives.clone())).collect();
        // Names and parameter counts do not depend on batch or dtype.
        let names_graph = ModelGraph::build_executed(&model, &Workload { images: 1, crops: recipe.crop_groups(), dtype: DType::Fp32 }, ChannelPadding::Off);
        let block_names = names_graph.blocks.iter().map(|b| b.name.clone()).collect();
        let mut graphs = HashMap::new();
        graphs.insert((DType::Fp32, ChannelPadding::Off, 1), names_graph);
        Ok(Searcher {
            recipe,
            model,
            space,
            block_names,
            memo: HashMap::new(),
            graphs,
            costs: HashMap::new(),
            computes: HashMap::new(),
            measured_bwd: HashMap::new(),
            unaligned: HashMap::new(),
            units: HashMap::new(),
            links: LinkCache::default(),
            collectives,
            sim: Simulator::new(),
        })
    }

    /// The paddings the search tries on `hw`: those of the space worth
    /// trying there (`cost_models::padding::worth_trying`); a single
    /// padding asked for is tried as asked.
    fn paddings_for(&self, hw: &HardwareSpec) -> Vec<ChannelPadding> {
        if self.space.paddings.len() <= 1 {
            return self.space.paddings.clone();
        }
        let worth = cost_models::padding::worth_trying(&self.model, hw.kind);
        self.space.paddings.iter().copied().filter(|p| worth.contains(p)).collect()
    }

    /// Block names in forward order.
    pub fn block_names(&self) -> &[String] {
        &self.block_names
    }

    /// (hardware, world size) points of the space, in hardware then size order.
    pub fn points(&self) -> Vec<(usize, usize)> {
        let mut out = Vec::new();
        for (h, p) in self.space.hardware.iter().enumerate() {
            match self.space.gpus {
                GpuCount::Fixed(n) => out.push((h, n)),
                // World sizes the recipe's SyncBN groups cannot tile are skipped.
                GpuCount::Range { min, max } => {
                    out.extend(world_sizes(&p.hardware, min, max).into_iter().filter(|&n| self.recipe.sync_bn_group_for(n).is_ok()).map(|n| (h, n)))
                }
            }
        }
        out
    }

    /// Searches every point (largest world first, so the memo applies);
    /// outcomes come back in [`Searcher::points`] order.
    pub fn run(&mut self, mut progress: impl FnMut(usize, usize)) -> Result<Vec<PointOutcome>, SearchError> {
        let points = self.points();
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by_key(|&i| (points[i].0, std::cmp::Reverse(points[i].1)));
        let mut out: Vec<Option<PointOutcome>> = vec![None; points.len()];
        for (k, &i) in order.iter().enumerate() {
            let (h, n) = points[i];
            out[i] = Some(self.search_point(h, n)?);
            progress(k + 1, points.len());
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// Costs fixed decisions (e.g. a published plan) without searching.
    pub fn evaluate(&mut self, h: usize, d: &Decisions) -> Result<Evaluated, SearchError> {
        let rank_hw = rank_hardware(&self.space.hardware[h].hardware, d.world_size)
            .ok_or_else(|| SearchError::Request(format!("{} cannot host {} ranks", self.space.hardware[h].hardware.name, d.world_size)))?;
        if !rank_hw.supports(d.precision.compute) {
            return Err(SearchError::Request(format!("{} does not support {}", rank_hw.name, d.precision.compute)));
        }
        let mm = self.memory(h, &rank_hw, d);
        let peak = mm.peak(&d.recompute_segments);
        let (step, flops) = self.simulate(h, &rank_hw, d)?;
        let ckpt = self.checkpoint_per_rank(d);
        let throughput = Throughput::new(self.recipe, &rank_hw, d, &step, flops, ckpt, &self.space.reliability);
        let usable = rank_hw.usable_memory();
        let unaligned_share = self.unaligned_share(h, d.precision.compute, d.channel_padding, d.batch_per_rank);
        Ok(Evaluated { hardware: h, rank_hardware: rank_hw, decisions: d.clone(), peak, usable, step, throughput, unaligned_share })
    }

    /// The fastest plan that fits at one (hardware, world size).
    pub fn search_point(&mut self, h: usize, world: usize) -> Result<PointOutcome, SearchError> {
        let mut out = PointOutcome { hardware: h, world_size: world, best: None, closest: None, evaluated: 0, skipped: 0, note: None };
        let p = match self.point(h, world) {
            Ok(p) => p,
            Err(note) => {
                out.note = Some(note);
                return Ok(out);
            }
        };
        let combos = self.combinations(&p)?;
        let mut best_per_image = f64::INFINITY;
        for c in &combos {
            if !self.space.exhaustive && c.bound_per_image >= best_per_image {
                out.skipped += 1;
                continue;
            }
            let key = (h, c.sharding, c.dtype, c.padding, c.wrapping, c.reshard);
            let memo = if p.use_memo { self.memo.get(&key) } else { None };
            if memo.is_some_and(|m| m.known_infeasible(world, c.batch)) {
                out.skipped += 1;
                continue;
            }
            let previous = memo.and_then(|m| m.placement(world, c.batch)).map(|p| p.2.clone());
            out.evaluated += 1;
            let d = Decisions {
                world_size: world,
                batch_per_rank: c.batch,
                precision: Precision { compute: c.dtype, reduce: c.dtype },
                reshard_after_forward: c.reshard,
                sharding: c.sharding.resolved(world),
                wrapping: c.wrapping,
                recompute_segments: Vec::new(),
                backward_order: BackwardOrder::Together,
                channel_padding: c.padding,
            };
            let mm = self.memory(h, &p.rank_hw, &d);
            let candidates = self.placements(&p, c, &mm, previous, best_per_image);
            if candidates.is_empty() {
                // Least memory this combination could need: every checkpointable block alone.
                let peak = mm.peak(&mm.every_block_alone()).min(mm.peak(&[]));
                if out.closest.as_ref().is_none_or(|m| peak < m.peak) {
                    out.closest = Some(NearMiss { hardware: h, rank_hardware: p.rank_hw.clone(), decisions: d.clone(), peak, usable: p.usable });
                }
                if p.use_memo {
                    self.memo.entry(key).or_default().infeasible.push((world, c.batch));
                }
                continue;
            };
            if p.use_memo {
                let memo = self.memo.entry(key).or_default();
                if let Some((BackwardOrder::Together, pl)) = candidates.first() {
                    memo.placements.push((world, c.batch, pl.segments.clone(), pl.recompute.0));
                }
                let least = candidates.iter().map(|(_, pl)| pl.recompute.0).fold(f64::INFINITY, f64::min);
                memo.least_recompute.push((world, c.batch, least));
            }
            for e in self.simulate_candidates(&p, c, &d, candidates)? {
                let per_image = e.step.step_time.0 / c.batch as f64;
                if per_image < best_per_image {
                    best_per_image = per_image;
                    out.best = Some(e);
                }
            }
        }
        if out.best.is_none() && out.closest.is_none() {
            out.note = Some("nothing fits (every option already failed on a larger cluster or with a smaller batch)".into());
        }
        Ok(out)
    }

    /// What every combination at (`h`, `world`) shares, or why none can run
    /// there (the note a sweep row shows).
    fn point(&mut self, h: usize, world: usize) -> Result<Point, String> {
        let hw = self.space.hardware[h].hardware.clone();
        let rank_hw = rank_hardware(&hw, world).ok_or_else(|| format!("{} cannot host {world} ranks", hw.name))?;
        let batches = self.space.batch.per_gpu(world);
        if batches.is_empty() {
            return Err(match &self.space.batch {
                BatchPolicy::Global(g) => format!("global batch {g} is not a multiple of {world} GPUs (--free-batch searches others)"),
                _ => format!("no per-GPU batch keeps the global batch within the limit at {world} GPUs"),
            });
        }
        let precisions: Vec<DType> = self.space.precisions.iter().copied().filter(|&p| rank_hw.supports(p)).collect();
        if precisions.is_empty() {
            return Err(format!("{} supports none of the precisions asked for", hw.name));
        }
        let shardings = self.space.shardings.at(world, rank_hw.gpus_per_node().min(world).max(1));
        if shardings.is_empty() {
            return Err(format!("no sharding asked for fits {world} ranks"));
        }
        let share = self.share(h, world);
        let usable = rank_hw.usable_memory();
        let budget = Bytes((usable.0 as f64 * (1.0 - self.space.headroom.clamp(0.0, 0.9))) as u64);
        let compute = self.compute_model(h, share, &rank_hw).clone();
        let paddings = self.paddings_for(&hw);
        // The memo is exact only if the rank's device is the same at every world.
        let use_memo = hw.kind == cost_models::hardware::DeviceKind::Gpu;
        Ok(Point { h, world, rank_hw, batches, precisions, paddings, shardings, share, usable, budget, compute, use_memo })
    }

    /// Every combination at a point with its lower bound on the time per
    /// image, best first.
    fn combinations(&mut self, p: &Point) -> Result<Vec<Combo>, SearchError> {
        let mut combos = Vec::new();
        for (&dtype, &padding) in p.precisions.iter().flat_map(|d| p.paddings.iter().map(move |pad| (d, pad))) {
            for &batch in &p.batches {
                let gc = self.graph_costs(p.h, p.share, &p.rank_hw, dtype, padding, batch)?;
                let l = &gc.loss;
                let loss = l.assign_crops as f64 * (l.sinkhorn_init.0 + l.sinkhorn_iterations as f64 * l.sinkhorn_iteration.0) + l.swapped_loss.0;
                let compute_s: f64 = gc.blocks.iter().map(|b| b.forward.0 + b.backward.0).sum::<f64>() + loss;
                for &sharding in &p.shardings {
                    for wrapping in self.space.wrappings_for(sharding) {
                        for &reshard in &self.space.reshard {
                            let recompute_lb = match self.memo.get(&(p.h, sharding, dtype, padding, wrapping, reshard)) {
                                Some(m) if p.use_memo => m.recompute_bound(p.world, batch),
                                _ => 0.0,
                            };
                            combos.push(Combo {
                                sharding,
                                dtype,
                                padding,
                                batch,
                                wrapping,
                                reshard,
                                bound_per_image: (compute_s + recompute_lb) / batch as f64,
                                compute_per_image: compute_s / batch as f64,
                            });
                        }
                    }
                }
            }
        }
        combos.sort_by(|a, b| a.bound_per_image.total_cmp(&b.bound_per_image));
        Ok(combos)
    }

    /// The recompute placements worth simulating for a combination, per
    /// backward order: cheapest exact answers first (the larger world's
    /// optimum, no recompute at all, only then the DP); the crop groups one
    /// after the other where together needs recompute or does not fit and
    /// saving recompute could beat `best_per_image`. Empty: nothing fits.
    fn placements(&self, p: &Point, c: &Combo, mm: &MemoryModel, previous: Option<Vec<Range<usize>>>, best_per_image: f64) -> Vec<(BackwardOrder, Placement)> {
        let recompute = &self.costs[&(p.h, p.share, c.dtype, c.padding, c.batch)].recompute;
        let placement = match previous.map(|segs| (mm.peak(&segs), segs)) {
            Some((peak, segs)) if peak <= p.budget => {
                let rc = segs.iter().flat_map(|r| recompute[r.clone()].iter()).map(|t| t.0).sum::<f64>();
                Some(Placement { segments: segs, recompute: cost_models::Seconds(rc), peak })
            }
            _ => {
                let peak0 = mm.peak(&[]);
                if peak0 <= p.budget {
                    Some(Placement { segments: Vec::new(), recompute: cost_models::Seconds(0.0), peak: peak0 })
                } else {
                    optimal_recompute(mm, p.budget, recompute)
                }
            }
        };
        let orders = &self.space.backward_orders;
        let (together_allowed, by_group_allowed) = (orders.contains(&BackwardOrder::Together), orders.contains(&BackwardOrder::ByCropGroup));
        let could_win = self.space.exhaustive || c.compute_per_image < best_per_image;
        let needs_less = !together_allowed || placement.as_ref().is_none_or(|pl| !pl.segments.is_empty());
        let by_group = if by_group_allowed && mm.profile().crop_groups > 1 && could_win && needs_less {
            let mm_bg = MemoryModel::from_profile(MemProfile { backward_order: BackwardOrder::ByCropGroup, ..mm.profile().clone() });
            by_crop_group_placement(mm, &mm_bg, placement.as_ref(), together_allowed, p.budget, recompute)
        } else {
            None
        };
        let together = if together_allowed { placement } else { None };
        together.map(|pl| (BackwardOrder::Together, pl)).into_iter().chain(by_group.map(|pl| (BackwardOrder::ByCropGroup, pl))).collect()
    }

    /// Each candidate placement of a combination simulated as a step, with
    /// what it costs to train.
    fn simulate_candidates(&mut self, p: &Point, c: &Combo, d: &Decisions, candidates: Vec<(BackwardOrder, Placement)>) -> Result<Vec<Evaluated>, SearchError> {
        let links = self.links.groups(&p.rank_hw, p.world, c.sharding, self.recipe.sync_bn_group_for(p.world).ok().flatten())?.clone();
        let unaligned_share = self.unaligned_share(p.h, c.dtype, c.padding, c.batch);
        let mut out = Vec::with_capacity(candidates.len());
        for (order, placement) in candidates {
            let d = Decisions { recompute_segments: placement.segments, backward_order: order, ..d.clone() };
            let gc = &self.costs[&(p.h, p.share, c.dtype, c.padding, c.batch)];
            let units = &self.units[&c.wrapping];
            let w = self.world_costs(p.h, &links, p.world, c.sharding);
            let profile = step_profile(gc, units, &d.recompute_segments, self.recipe, c.dtype, c.dtype, c.reshard, order, &p.compute, &w);
            let step = self.sim.run(&profile);
            let flops = gc.model_flops.0;
            let ckpt = self.checkpoint_per_rank(&d);
            let throughput = Throughput::new(self.recipe, &p.rank_hw, &d, &step, flops, ckpt, &self.space.reliability);
            out.push(Evaluated {
                hardware: p.h,
                rank_hardware: p.rank_hw.clone(),
                decisions: d,
                peak: placement.peak,
                usable: p.usable,
                step,
                throughput,
                unaligned_share,
            });
        }
        Ok(out)
    }

    /// Why nothing fits: the closest miss, its shortfall and what dominates it.
    pub fn explain_infeasible(&mut self, outcomes: &[PointOutcome]) -> String {
        let miss = outcomes
            .iter()
            .filter_map(|o| o.closest.as_ref().map(|c| (o.hardware, c)))
            .min_by(|(_, a), (_, b)| (a.peak.0 as f64 / a.usable.0.max(1) as f64).total_cmp(&(b.peak.0 as f64 / b.usable.0.max(1) as f64)));
        let Some((h, m)) = miss.map(|(h, m)| (h, m.clone())) else {
            let notes: Vec<String> = outcomes.iter().filter_map(|o| o.note.clone()).collect();
            return if notes.is_empty() { "nothing to search".into() } else { notes.join("; ") };
        };
        let singles: Vec<Range<usize>> =
            (0..self.graph(m.decisions.precision.compute, m.decisions.channel_padding, m.decisions.batch_per_rank).blocks.len()).map(|b| b..b + 1).collect();
        let mm = self.memory(h, &m.rank_hardware, &m.decisions);
        let report = if mm.peak(&singles) <= mm.peak(&[]) { mm.report(&singles) } else { mm.report(&[]) };
        let top = report.dominant();
        let d = &m.decisions;
        format!(
            "needs {:.1} GiB, {} has {:.1} usable: {top} (closest: {} x {}, {}, {} wrapping, {}, {} img/GPU, reshard {}, checkpointing every block)",
            m.peak.as_gib(),
            m.rank_hardware.name,
            m.usable.as_gib(),
            d.world_size,
            m.rank_hardware.id,
            d.sharding,
            wrapping_name(d.wrapping),
            d.precision.compute,
            d.batch_per_rank,
            d.reshard_after_forward,
        )
    }
}

/// Display name of a wrapping policy.
/// The placement with the least recompute whose peak, the crop groups run
/// one after the other (`by_group`), is within `budget`, found from the
/// checkpoint DP, which is exact for the crop groups together (`together`).
/// Where together fits (`at_budget`, its optimum), what one group at a time
/// saves there guides the one relaxed budget tried (budget + that saving);
/// where it saves nothing, nothing is tried (unless together is not
/// allowed: then together's optimum is the answer). Where together fits nowhere,
/// every block alone must fit first, then together's optima at 3x down to
/// 1.1x the budget are tried. No checkpointing is tried before any of them;
/// the first candidate that fits has the least recompute.
fn by_crop_group_placement(
    together: &MemoryModel,
    by_group: &MemoryModel,
    at_budget: Option<&Placement>,
    together_allowed: bool,
    budget: Bytes,
    recompute: &[cost_models::Seconds],
) -> Option<Placement> {
    let cost = |segs: &[Range<usize>]| segs.iter().flat_map(|r| recompute.get(r.clone()).unwrap_or(&[])).map(|t| t.0.max(0.0)).sum::<f64>();
    let fits = |segs: Vec<Range<usize>>| {
        let peak = by_group.peak(&segs);
        (peak <= budget).then(|| Placement { recompute: cost_models::Seconds(cost(&segs)), segments: segs, peak })
    };
    // What one group at a time saves at together's optimum guides the
    // budgets tried: a placement fits about when together's peak minus
    // that saving does.
    let saved = match at_budget {
        Some(p) => {
            let peak = by_group.peak(&p.segments);
            match p.peak.0.checked_sub(peak.0) {
                Some(s) if s > 0 => Some(s),
                // No saving: as good as together only where together is not allowed.
                _ if together_allowed => return None,
                _ => return (peak <= budget).then(|| Placement { segments: p.segments.clone(), recompute: p.recompute, peak }),
            }
        }
        None => None,
    };
    // Where together fits nowhere, every block alone is about the least
    // this order can hold: if that does not fit, nothing will.
    let least = match at_budget {
        Some(_) => None,
        None => Some(fits(together.every_block_alone())?),
    };
    if let Some(p) = fits(Vec::new()) {
        return Some(p);
    }
    let budgets: Vec<u64> = match saved {
        Some(s) => vec![budget.0 + s],
        None => [3.0, 2.0, 1.5, 1.25, 1.1].iter().map(|f| (budget.0 as f64 * f) as u64).collect(),
    };
    for b in budgets {
        let Some(p) = optimal_recompute(together, Bytes(b), recompute) else { continue };
        if at_budget.is_some_and(|b| cost(&p.segments) >= b.recompute.0) {
            break;
        }
        if let Some(p) = fits(p.segments) {
            return Some(p);
        }
    }
    match at_budget {
        Some(p) => fits(p.segments.clone()),
        None => least,
    }
}
