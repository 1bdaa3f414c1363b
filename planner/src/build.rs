//! From a costed set of decisions to the plan file the executor runs:
//! units with their members, checkpointed segments as block names, and the
//! predictions (memory report of the chosen placement, simulated step).

use crate::memory::{Decisions, MemoryReport};
use crate::recompute::vissl_stage_segments;
use crate::search::{Evaluated, SearchError, Searcher};
use crate::wrapping::{unit_plans, units_for};
use cost_models::graph::{ModelGraph, Workload};
use cost_models::padding::ChannelPadding;
use runspec::plan::{ModelFingerprint, Plan, Precision, Predicted, PLAN_SCHEMA_VERSION};
use runspec::sharding::Sharding;

/// The plan for `e`, with the full memory report it predicts.
pub fn build_plan(s: &mut Searcher, e: &Evaluated) -> Result<(Plan, MemoryReport), SearchError> {
    let d = &e.decisions;
    let recipe = s.recipe;
    let graph = ModelGraph::build_executed(
        &s.model,
        &Workload { images: d.batch_per_rank as u64, crops: recipe.crop_groups(), dtype: d.precision.compute },
        d.channel_padding,
    );
    let units = units_for(&graph, d.wrapping);
    let report = s.memory(e.hardware, &e.rank_hardware, d).report(&d.recompute_segments);
    let measured_bwd = s.measured_backward(e.hardware, d).to_vec();
    let names: Vec<String> = graph.blocks.iter().map(|b| b.name.clone()).collect();
    let segments: Vec<Vec<String>> = d.recompute_segments.iter().map(|r| names[r.start.min(names.len())..r.end.min(names.len())].to_vec()).collect();
    // The plan's recipe describes the cluster the plan is for.
    let mut recipe = recipe.clone();
    recipe.cluster.gpu = s.space.hardware[e.hardware].hardware.id.clone();
    recipe.cluster.gpus = d.world_size;
    recipe.cluster.batch_per_gpu = d.batch_per_rank;
    let t = &e.throughput;
    let profile = &s.space.hardware[e.hardware];
    let range = crate::bands::range_of(profile, e);
    let caveat = crate::bands::cpu_caveat(profile);
    let predicted = Predicted {
        peak_memory_bytes: report.peak.0,
        peak_breakdown: report.breakdown.iter().map(|(k, v)| (k.clone(), v.0)).collect(),
        usable_memory_bytes: report.usable.0,
        fits: report.fits(),
        step_time_s: e.step.step_time.0,
        compute_time_s: e.step.compute_time.0,
        comm_time_s: e.step.comm_time.0,
        exposed_comm_s: e.step.exposed_comm.0,
        images_per_s: t.images_per_s,
        mfu: t.mfu,
        days_to_train: t.failure_free_days,
        cost_usd: t.failure_free_cost_usd,
        failures: Some(t.failures),
        step_time_range_s: range.as_ref().map(|r| [r.low.0, r.high.0]),
        days_range: range.as_ref().map(|r| r.scale(e.step.step_time, t.days)),
        cost_range_usd: range.as_ref().map(|r| r.scale(e.step.step_time, t.cost_usd)),
        range_source: range.map(|r| r.source).or(caveat),
    };
    let plan = Plan {
        schema_version: PLAN_SCHEMA_VERSION,
        created_by: format!("seerscale {}", env!("CARGO_PKG_VERSION")),
        model: s.model.clone(),
        model_fingerprint: ModelFingerprint::of(&graph),
        recipe,
        hardware: e.rank_hardware.clone(),
        world_size: d.world_size,
        gpus_per_node: e.rank_hardware.gpus_per_node().min(d.world_size).max(1),
        batch_per_rank: d.batch_per_rank,
        precision: d.precision,
        reshard_after_forward: d.reshard_after_forward,
        backward_order: d.backward_order,
        channel_padding: d.channel_padding,
        sharding: d.sharding.resolved(d.world_size),
        wrapping: d.wrapping,
        units: unit_plans(&units),
        checkpoint_segments: segments,
        measured_backward_bytes: names.iter().zip(&measured_bwd).filter_map(|(n, m)| m.map(|m| (n.clone(), m))).collect(),
        predicted,
    };
    plan.check("planned").map_err(|e| SearchError::Request(format!("internal: the plan built is inconsistent: {e}")))?;
    Ok((plan, report))
}

/// The recipe's published plan (e.g. VISSL's SEER 10B settings) as
/// decisions on `world` ranks; `None` if the recipe has none. VISSL reduces
/// gradients in the compute dtype (`fp32_reduce_scatter: False`).
pub fn reference_decisions(s: &mut Searcher, world: usize) -> Option<Decisions> {
    let rp = s.recipe.reference_plan.clone()?;
    let checkpoint = vissl_stage_segments(s.graph(rp.precision, ChannelPadding::Off, rp.batch_per_gpu), &rp.stage_checkpoints);
    Some(Decisions {
        world_size: world,
        batch_per_rank: rp.batch_per_gpu,
        precision: Precision { compute: rp.precision, reduce: rp.precision },
        reshard_after_forward: rp.reshard_after_forward,
        sharding: rp.sharding.parse::<Sharding>().ok()?.resolved(world),
        wrapping: rp.wrapping,
        recompute_segments: checkpoint,
        backward_order: runspec::schedule::BackwardOrder::Together,
        channel_padding: ChannelPadding::Off,
    })
}
