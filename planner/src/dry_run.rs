//! Dry run of a plan file: rebuild the memory model from exactly what the
//! plan says (its units, checkpointed segments and decisions) and report
//! the peak, its breakdown, the top contributors, the distance to the
//! device limit, and — when it does not fit — one sentence saying why.

use crate::memory::{Category, Decisions, MemoryModel, MemoryReport};
use crate::wrapping::{units_from_plan, WrappingError};
use cost_models::quantity::GIB;
use cost_models::Bytes;
use runspec::plan::{Plan, PlanError};
use serde_json::json;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::ops::Range;

#[derive(Debug, thiserror::Error)]
pub enum DryRunError {
    /// Reading or checking the plan file (JSON errors name file, line,
    /// column and field).
    #[error(transparent)]
    Plan(#[from] PlanError),
    /// The cause is in the message, not chained, so `{:#}` prints it once.
    #[error("{origin}: field `units`: {error}")]
    Units { origin: String, error: WrappingError },
}

/// Everything the dry run found.
#[derive(Clone, Debug)]
pub struct DryRun {
    pub origin: String,
    pub plan: Plan,
    pub segments: Vec<Range<usize>>,
    pub report: MemoryReport,
    pub block_names: Vec<String>,
}

/// The decisions a plan encodes.
pub(crate) fn decisions_for_plan(plan: &Plan, segments: Vec<Range<usize>>) -> Decisions {
    Decisions {
        world_size: plan.world_size,
        batch_per_rank: plan.batch_per_rank,
        precision: plan.precision,
        reshard_after_forward: plan.reshard_after_forward,
        sharding: plan.sharding,
        wrapping: plan.wrapping,
        recompute_segments: segments,
        backward_order: plan.backward_order,
        channel_padding: plan.channel_padding,
    }
}

/// A plan's memory model with its segments as block ranges.
pub struct PlanMemory {
    pub model: MemoryModel,
    pub segments: Vec<Range<usize>>,
    pub block_names: Vec<String>,
}

/// The memory model of a (checked) plan, built from the plan's own units
/// and segments, exactly as `build.rs` predicted them.
pub(crate) fn memory_for_plan(plan: &Plan, origin: &str) -> Result<PlanMemory, DryRunError> {
    let graph = plan.graph();
    let units = units_from_plan(&graph, &plan.units).map_err(|error| DryRunError::Units { origin: origin.to_string(), error })?;
    let names: Vec<String> = graph.blocks.iter().map(|b| b.name.clone()).collect();
    // Plan::check (on load) holds the segments to the model.
    let segments = plan.segment_ranges(&names.iter().map(String::as_str).collect::<Vec<_>>()).unwrap_or_default();
    let d = decisions_for_plan(plan, segments.clone());
    let measured: Vec<Option<u64>> = names.iter().map(|n| plan.measured_backward_bytes.get(n).copied()).collect();
    let model = MemoryModel::calibrated(&graph, &units, &plan.recipe, &d, &plan.hardware, &measured);
    Ok(PlanMemory { model, segments, block_names: names })
}

/// Dry-runs a loaded plan.
pub fn dry_run(plan: &Plan, origin: &str) -> Result<DryRun, DryRunError> {
    let PlanMemory { model, segments, block_names } = memory_for_plan(plan, origin)?;
    let report = model.report(&segments);
    Ok(DryRun { origin: origin.to_string(), plan: plan.clone(), segments, report, block_names })
}

impl DryRun {
    pub fn fits(&self) -> bool {
        self.report.fits()
    }

    /// Signed headroom (negative: over the limit).
    pub fn headroom(&self) -> i64 {
        self.report.usable.0 as i64 - self.report.peak.0 as i64
    }

    /// The one-line verdict for a plan that does not fit.
    pub fn infeasible_message(&self) -> String {
        self.report.shortfall(&self.plan.hardware.id.to_uppercase())
    }

    /// Whether the plan's predicted memory equals what we recompute.
    pub fn matches_prediction(&self) -> bool {
        self.plan.predicted.peak_memory_bytes == self.report.peak.0
    }

    /// The human-readable report.
    pub fn render_text(&self, top: usize) -> String {
        let r = &self.report;
        let p = &self.plan;
        let mut s = String::new();
        let _ = writeln!(
            s,
            "plan {}: {} on {} x {} ({} per node), {}, {} images/rank, compute {} / reduce {}, reshard_after_forward {}, {} units, {} checkpointed segments",
            self.origin,
            p.model.name,
            p.world_size,
            p.hardware.name,
            p.gpus_per_node,
            p.sharding,
            p.batch_per_rank,
            p.precision.compute,
            p.precision.reduce,
            if p.reshard_after_forward { "on" } else { "off" },
            p.units.len(),
            self.segments.len()
        );
        for seg in &self.segments {
            let _ = writeln!(s, "  checkpointed: {}", crate::sweep::segment_label(&self.block_names, seg));
        }
        if p.backward_order == runspec::schedule::BackwardOrder::ByCropGroup {
            let _ = writeln!(s, "  backward: one crop group after the other (each trunk unit reduced once per group)");
        }
        if p.channel_padding.is_on() {
            let _ = writeln!(s, "  channels padded per group to multiples of {} (zero channels; parameters unpadded)", cost_models::padding::ALIGN);
        }
        let label = r.timeline.get(r.peak_event).map_or("", |e| e.label.as_str());
        let _ = writeln!(s, "\npeak {} at event {} of {} ({label})", r.peak, r.peak_event, r.timeline.len());
        let head = self.headroom();
        let pct = 100.0 * head as f64 / r.usable.0.max(1) as f64;
        if self.fits() {
            let _ = writeln!(s, "usable {}: fits, {} ({pct:.1} %) to spare", r.usable, Bytes(head as u64));
        } else {
            let _ = writeln!(s, "usable {}: DOES NOT FIT, {} ({:.1} %) over", r.usable, Bytes((-head) as u64), -pct);
        }
        let pred = Bytes(p.predicted.peak_memory_bytes);
        if self.matches_prediction() {
            let _ = writeln!(s, "plan predicted {pred}: matches");
        } else {
            let _ = writeln!(s, "plan predicted {pred}, recomputed {}: the plan was made by another planner version", r.peak);
        }
        // Small plans (tiny-cpu) read better in MiB.
        let (unit, div) = if r.peak.0 < GIB { ("MiB", (1u64 << 20) as f64) } else { ("GiB", GIB as f64) };
        let _ = writeln!(s, "\n{:<18} {:>10} {:>8}", "category", unit, "share");
        let mut cats: Vec<(&String, &Bytes)> = r.breakdown.iter().collect();
        cats.sort_by_key(|(k, _)| Category::ALL.iter().position(|c| c.name() == k.as_str()).unwrap_or(99));
        for (k, v) in cats {
            let _ = writeln!(s, "{:<18} {:>10.3} {:>7.1} %", k, v.0 as f64 / div, 100.0 * v.0 as f64 / r.peak.0.max(1) as f64);
        }
        let _ = writeln!(s, "{:<18} {:>10.3}", "total", r.peak.0 as f64 / div);
        let list = |s: &mut String, title: &str, v: &[(String, Bytes)]| {
            let items: Vec<String> = v.iter().filter(|(_, b)| b.0 > 0).take(top).map(|(n, b)| format!("{n} {b}")).collect();
            let _ = writeln!(s, "{title}: {}", if items.is_empty() { "-".into() } else { items.join(", ") });
        };
        let _ = writeln!(s);
        list(&mut s, "top stages by activations", &self.report.activations_by_stage());
        list(&mut s, "top blocks by activations", &r.by_block);
        list(&mut s, "top units (shards + gathered + grad buffers)", &r.by_unit);
        if !self.fits() {
            let _ = writeln!(s, "\n{}", self.infeasible_message());
        }
        s
    }

    pub fn to_json(&self) -> serde_json::Value {
        let r = &self.report;
        let named = |v: &[(String, Bytes)]| v.iter().map(|(n, b)| json!({"name": n, "bytes": b.0})).collect::<Vec<_>>();
        json!({
            "plan": self.origin,
            "model": self.plan.model.name,
            "hardware": self.plan.hardware.id,
            "world_size": self.plan.world_size,
            "peak_memory_bytes": r.peak.0,
            "usable_memory_bytes": r.usable.0,
            "headroom_bytes": self.headroom(),
            "fits": self.fits(),
            "predicted_peak_memory_bytes": self.plan.predicted.peak_memory_bytes,
            "matches_prediction": self.matches_prediction(),
            "peak_event": r.timeline.get(r.peak_event).map(|e| e.label.clone()),
            "breakdown": r.breakdown.iter().map(|(k, v)| (k.clone(), v.0)).collect::<BTreeMap<_, _>>(),
            "activations_by_stage": named(&self.report.activations_by_stage()),
            "by_block": named(&r.by_block),
            "by_unit": named(&r.by_unit),
            "checkpoint_segments": self.segments.iter().map(|s| self.block_names[s.clone()].to_vec()).collect::<Vec<_>>(),
            "verdict": if self.fits() { "fits".to_string() } else { self.infeasible_message() },
            "timeline": r.timeline.iter().map(|e| json!({"label": e.label, "total_bytes": e.total.0})).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    // A one-segment placement is a placement, not a mistaken range-to-vec.
    #![allow(clippy::single_range_in_vec_init)]
    use super::*;
    use crate::wrapping::{unit_plans, units_for};
    use cost_models::config::ModelConfig;
    use cost_models::graph::{ModelGraph, Workload};
    use cost_models::hardware::builtin_hardware;
    use cost_models::DType;
    use runspec::plan::{ModelFingerprint, Precision, Predicted, PLAN_SCHEMA_VERSION};
    use runspec::recipe::{Recipe, Wrapping};

    /// A plan as `plan` would write it, its prediction from the memory model
    /// built the way the search builds it (units from the policy).
    fn make_plan(recipe: &str, hw: &str, world: usize, batch: usize, dt: DType, wrapping: Wrapping, segs: &[Range<usize>]) -> Plan {
        let recipe = Recipe::load(recipe).unwrap();
        let model = ModelConfig::load(&recipe.model).unwrap();
        let hw = builtin_hardware(hw).unwrap();
        let graph = ModelGraph::build_executed(
            &model,
            &Workload { images: batch as u64, crops: recipe.crop_groups(), dtype: dt },
            cost_models::padding::ChannelPadding::Off,
        );
        let units = units_for(&graph, wrapping);
        let d = Decisions {
            world_size: world,
            batch_per_rank: batch,
            precision: Precision { compute: dt, reduce: dt },
            reshard_after_forward: true,
            sharding: runspec::sharding::Sharding::fsdp(world),
            wrapping,
            recompute_segments: segs.to_vec(),
            backward_order: runspec::schedule::BackwardOrder::Together,
            channel_padding: cost_models::padding::ChannelPadding::Off,
        };
        let report = MemoryModel::new(&graph, &units, &recipe, &d, &hw).report(segs);
        let names: Vec<String> = graph.blocks.iter().map(|b| b.name.clone()).collect();
        Plan {
            schema_version: PLAN_SCHEMA_VERSION,
            created_by: "test".into(),
            model_fingerprint: ModelFingerprint::of(&graph),
            model,
            recipe,
            gpus_per_node: hw.gpus_per_node().min(world),
            hardware: hw,
            world_size: world,
            batch_per_rank: batch,
            precision: d.precision,
            reshard_after_forward: true,
            backward_order: runspec::schedule::BackwardOrder::Together,
            channel_padding: cost_models::padding::ChannelPadding::Off,
            sharding: d.sharding,
            wrapping,
            units: unit_plans(&units),
            checkpoint_segments: segs.iter().map(|r| names[r.clone()].to_vec()).collect(),
            measured_backward_bytes: Default::default(),
            predicted: Predicted {
                peak_memory_bytes: report.peak.0,
                peak_breakdown: report.breakdown.iter().map(|(k, v)| (k.clone(), v.0)).collect(),
                usable_memory_bytes: report.usable.0,
                fits: report.fits(),
                step_time_s: 0.0,
                compute_time_s: 0.0,
                comm_time_s: 0.0,
                exposed_comm_s: 0.0,
                images_per_s: 0.0,
                mfu: 0.0,
                days_to_train: 0.0,
                cost_usd: 0.0,
                failures: None,
                step_time_range_s: None,
                days_range: None,
                cost_range_usd: None,
                range_source: None,
            },
        }
    }

    fn tmp(name: &str) -> std::path::PathBuf {
        let d = std::env::temp_dir().join(format!("seerscale-dryrun-{}", std::process::id()));
        std::fs::create_dir_all(&d).unwrap();
        d.join(name)
    }

    #[test]
    fn dry_run_recomputes_the_plan_prediction_exactly() {
        for (recipe, hw, world, batch, dt, w, segs) in [
            ("tiny-cpu", "cpu-local", 2, 8, DType::Fp32, Wrapping::PerBlock, vec![1..3, 3..5]),
            ("seer-10b", "a100-40gb", 496, 16, DType::Fp16, Wrapping::Vissl, vec![1..3, 3..10, 10..19, 19..27]),
            ("seer-256gf", "v100-32gb", 64, 8, DType::Fp16, Wrapping::PerStage, vec![]),
        ] {
            let plan = make_plan(recipe, hw, world, batch, dt, w, &segs);
            let path = tmp(&format!("{recipe}.json"));
            plan.save(&path).unwrap();
            let loaded = Plan::load(&path).unwrap();
            let dr = dry_run(&loaded, &path.display().to_string()).unwrap();
            assert!(dr.matches_prediction(), "{recipe}: plan {} vs dry-run {}", plan.predicted.peak_memory_bytes, dr.report.peak.0);
            let bd: BTreeMap<String, u64> = dr.report.breakdown.iter().map(|(k, v)| (k.clone(), v.0)).collect();
            assert_eq!(bd, plan.predicted.peak_breakdown);
            assert_eq!(dr.segments, segs);
            let text = dr.render_text(5);
            assert!(text.contains("matches"), "{text}");
            let j = dr.to_json();
            assert_eq!(j["peak_memory_bytes"].as_u64(), Some(dr.report.peak.0));
        }
    }

    #[test]
    fn corrupted_plan_files_name_file_and_field() {
        let plan = make_plan("tiny-cpu", "cpu-local", 2, 8, DType::Fp32, Wrapping::PerBlock, &[]);
        let good = serde_json::to_string_pretty(&plan).unwrap();
        let path = tmp("bad.json");
        let origin = path.display().to_string();
        let check = |text: String, field: &str| {
            std::fs::write(&path, text).unwrap();
            let e = Plan::load(&path).unwrap_err().to_string();
            assert!(e.contains(&origin) && e.contains(field), "expected file and `{field}` in: {e}");
        };
        // Wrong type inside a nested array element.
        check(good.replacen("\"params\": ", "\"params\": \"many\", \"x\": ", 1), "units[0].params");
        // Wrong type at top level.
        check(good.replace("\"world_size\": 2", "\"world_size\": -2"), "world_size");
        // Unknown field (serde names it).
        check(good.replace("\"world_size\": 2", "\"world_size\": 2, \"wrld\": 1"), "wrld");
        // Truncated file.
        let cut = good.find("\"members\": [").unwrap() + "\"members\": [".len();
        check(good[..cut].to_string(), "units[0].members");
        check(good[..good.len() / 2].to_string(), "bad.json:");
        // Semantic errors from Plan::check.
        check(good.replace("\"world_size\": 2", "\"world_size\": 0"), "world_size");
        check(good.replace("\"schema_version\": 1", "\"schema_version\": 99"), "schema version 99");
        // A member that is not in the model.
        check(good.replacen("\"members\": [\n        \"stem\"", "\"members\": [\n        \"stem9\"", 1), "stem9");
        let missing = Plan::load(&tmp("does-not-exist.json")).unwrap_err().to_string();
        assert!(missing.contains("does-not-exist.json"), "{missing}");
    }

    #[test]
    fn infeasible_plan_says_why() {
        // SEER 10B without checkpointing on 8 A100-40GB.
        let plan = make_plan("seer-10b", "a100-40gb", 8, 16, DType::Fp16, Wrapping::Vissl, &[]);
        let dr = dry_run(&plan, "p.json").unwrap();
        assert!(!dr.fits());
        let msg = dr.infeasible_message();
        assert!(msg.starts_with("needs ") && msg.contains("A100-40GB has 38.0 usable"), "{msg}");
        assert!(msg.contains("dominate"), "{msg}");
        assert!(dr.render_text(5).contains("DOES NOT FIT"));
        assert!(dr.headroom() < 0);
    }
}
