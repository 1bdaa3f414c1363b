//! The plan file: everything the executor needs to run a plan, plus what the
//! planner predicted, so the run can be checked against it. Versioned JSON.

use crate::recipe::{Recipe, Wrapping};
use crate::sharding::Sharding;
use cost_models::config::{parse_json, read_file, ConfigError, ModelConfig};
use cost_models::graph::{ModelGraph, Workload};
use cost_models::hardware::HardwareSpec;
use cost_models::DType;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::ops::Range;
use std::path::Path;

/// The peak-breakdown category of the allocator's fragmentation margin
/// (headroom beyond live bytes, which no allocated-bytes counter reads).
pub const FRAGMENTATION: &str = "fragmentation";

/// Bump when a field changes meaning; older/newer files are refused.
pub const PLAN_SCHEMA_VERSION: u32 = 1;

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Plan {
    pub schema_version: u32,
    /// `seerscale <version>` that wrote it.
    pub created_by: String,
    pub model: ModelConfig,
    /// Checked on load: a plan whose units/segments or counts don't match
    /// its model is refused.
    pub model_fingerprint: ModelFingerprint,
    pub recipe: Recipe,
    pub hardware: HardwareSpec,
    pub world_size: usize,
    pub gpus_per_node: usize,
    /// Images per rank per step (each cut into the recipe's crops).
    pub batch_per_rank: usize,
    pub precision: Precision,
    pub reshard_after_forward: bool,
    /// The crop groups' order in backward; a plan without the field runs
    /// them together.
    #[serde(default)]
    pub backward_order: crate::schedule::BackwardOrder,
    /// Every channel count padded per group to a tensor-core multiple with
    /// zero channels (`cost_models::padding`): the executor pads each weight
    /// as it uses it, parameters and checkpoints keep their sizes. A plan
    /// without the field runs the model's own widths.
    #[serde(default)]
    pub channel_padding: cost_models::padding::ChannelPadding,
    /// DDP, FSDP or hybrid sharding; a plan without the field is FSDP over
    /// the world.
    #[serde(default)]
    pub sharding: Sharding,
    /// The policy the units came from (for people; `units` is authoritative).
    pub wrapping: Wrapping,
    /// FSDP units in forward order (see docs/architecture.md for the rule).
    pub units: Vec<UnitPlan>,
    /// Checkpointed segments: runs of consecutive block names.
    pub checkpoint_segments: Vec<Vec<String>>,
    /// Measured backward peaks (bytes) by block name, from the calibrated
    /// profile the plan was made with (`calibrate --recipe`), so a dry-run
    /// of the plan rebuilds the same memory model.
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub measured_backward_bytes: std::collections::BTreeMap<String, u64>,
    pub predicted: Predicted,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelFingerprint {
    pub trunk_params: u64,
    pub head_params: u64,
    pub blocks: Vec<String>,
}

impl ModelFingerprint {
    pub fn of(graph: &ModelGraph) -> ModelFingerprint {
        ModelFingerprint { trunk_params: graph.trunk_params(), head_params: graph.head_params(), blocks: graph.blocks.iter().map(|b| b.name.clone()).collect() }
    }
}

/// Mixed precision: fp32 master weights, gradients and optimiser state
/// always; `compute` for gathered params and activations; `reduce` for the
/// gradient reduce-scatter. Prototypes stay fp32.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Precision {
    pub compute: DType,
    pub reduce: DType,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct UnitPlan {
    pub name: String,
    /// Block or layer names; a parameter belongs to the unit with the
    /// longest member that prefixes its name.
    pub members: Vec<String>,
    /// Parameters the unit owns (unpadded).
    pub params: u64,
}

/// `member` names `param` or one of its enclosing modules (on `.` boundaries).
pub fn member_prefixes(member: &str, param: &str) -> bool {
    param == member || (param.starts_with(member) && param.as_bytes().get(member.len()) == Some(&b'.'))
}

/// The plan file's ownership rule, shared by planner and executor: `param`
/// belongs to the unit with the longest member that prefixes it; `None`
/// means the implicit `root` unit. Returns (unit index, member index).
pub(crate) fn owning_unit<'a>(units: impl IntoIterator<Item = &'a [String]>, param: &str) -> Option<(usize, usize)> {
    let mut best: Option<(usize, usize, usize)> = None;
    for (ui, members) in units.into_iter().enumerate() {
        for (mi, m) in members.iter().enumerate() {
            if member_prefixes(m, param) && best.is_none_or(|(len, _, _)| m.len() > len) {
                best = Some((m.len(), ui, mi));
            }
        }
    }
    best.map(|(_, ui, mi)| (ui, mi))
}

/// What the planner expects the executor to measure.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Predicted {
    pub peak_memory_bytes: u64,
    /// Peak broken down by category (params, grads, optimizer, activations, ...).
    pub peak_breakdown: BTreeMap<String, u64>,
    /// Usable device memory the plan was checked against.
    pub usable_memory_bytes: u64,
    pub fits: bool,
    pub step_time_s: f64,
    pub compute_time_s: f64,
    pub comm_time_s: f64,
    pub exposed_comm_s: f64,
    pub images_per_s: f64,
    pub mfu: f64,
    /// Without failures or checkpoints.
    pub days_to_train: f64,
    pub cost_usd: f64,
    /// Checkpoints and expected failures (`planner::failures`); absent in
    /// plans written before they were predicted.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failures: Option<PredictedFailures>,
    /// Where the measured step time is expected, from the accuracy study
    /// that applies to this hardware (`planner::bands`), and the days and
    /// dollars (failures included) scaled alike; absent on CPUs and in
    /// older plans.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_time_range_s: Option<[f64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub days_range: Option<[f64; 2]>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cost_range_usd: Option<[f64; 2]>,
    /// Which accuracy rows the ranges come from; on a CPU, which has no
    /// range, how to read the step time instead.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub range_source: Option<String>,
}

/// What interruptions cost a plan.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct PredictedFailures {
    /// Bytes every rank writes per checkpoint (its fp32 shards, optimiser
    /// state and BN statistics), and all ranks together.
    pub checkpoint_bytes_per_rank: u64,
    pub checkpoint_bytes: u64,
    /// Seconds one checkpoint takes (a node's ranks share its bandwidth).
    pub checkpoint_write_s: f64,
    pub mtbf_job_hours: f64,
    /// Young/Daly's interval, in steps (at least 1): what `train
    /// --checkpoint-every auto` uses.
    pub checkpoint_interval_steps: u64,
    /// Restart plus the average work redone after a failure.
    pub expected_lost_s_per_failure: f64,
    /// Expected failures over the run.
    pub expected_failures: f64,
    /// Useful share of wall time, 0..1.
    pub goodput: f64,
    /// Including checkpoints and expected failures.
    pub days_to_train: f64,
    pub cost_usd: f64,
}

impl Predicted {
    /// The peak an allocator's allocated-bytes counter should read: the
    /// peak without its fragmentation margin. The margin (GPU only) is what
    /// the caching allocator reserves beyond its live blocks, headroom for
    /// the fit check that no allocated-bytes statistic includes.
    pub fn allocated_peak_bytes(&self) -> u64 {
        let frag = self.peak_breakdown.get(FRAGMENTATION).copied().unwrap_or(0);
        self.peak_memory_bytes.saturating_sub(frag)
    }
}

#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Config(#[from] ConfigError),
    #[error("{origin}: plan schema version {found} is not supported (this seerscale reads version {PLAN_SCHEMA_VERSION}); re-run `seerscale plan`")]
    Version { origin: String, found: u32 },
    #[error("{origin}: plan does not match its model `{model}`: {why}")]
    ModelMismatch { origin: String, model: String, why: String },
    #[error("{origin}: field `{field}`: {why}")]
    Invalid { origin: String, field: String, why: String },
    /// The OS reason is in the message, not chained, so `{:#}` prints it once.
    #[error("{origin}: cannot write plan: {error}")]
    Write { origin: String, error: std::io::Error },
}

impl Plan {
    /// Reads and checks a plan file; JSON errors name the file, line,
    /// column and field.
    pub fn load(path: &Path) -> Result<Plan, PlanError> {
        Plan::parse(&read_file(path)?, &path.display().to_string())
    }

    pub fn parse(text: &str, origin: &str) -> Result<Plan, PlanError> {
        // Look at the version first so an old file gets the version error,
        // not a confusing missing-field one.
        let raw: serde_json::Value = parse_json(text, origin)?;
        match raw.get("schema_version").and_then(|v| v.as_u64()) {
            Some(v) if v == PLAN_SCHEMA_VERSION as u64 => {}
            Some(v) => return Err(PlanError::Version { origin: origin.into(), found: v as u32 }),
            None => {
                return Err(PlanError::Invalid { origin: origin.into(), field: "schema_version".into(), why: "missing; is this a seerscale plan file?".into() })
            }
        }
        let mut plan: Plan = parse_json(text, origin)?;
        plan.sharding = plan.sharding.resolved(plan.world_size);
        plan.check(origin)?;
        Ok(plan)
    }

    /// Writes atomically (temp file, then rename) so a crash never leaves
    /// half a plan; creates the folder it goes in.
    pub fn save(&self, path: &Path) -> Result<(), PlanError> {
        let origin = path.display().to_string();
        let text = serde_json::to_string_pretty(self).expect("plan serialises");
        let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        let write = || -> std::io::Result<()> {
            std::fs::create_dir_all(dir)?;
            let mut tmp = tempfile::NamedTempFile::new_in(dir)?;
            std::io::Write::write_all(&mut tmp, (text + "\n").as_bytes())?;
            tmp.persist(path).map(drop).map_err(|e| e.error)
        };
        write().map_err(|error| PlanError::Write { origin, error })
    }

    /// The model graph for one rank's step under this plan.
    pub fn graph(&self) -> ModelGraph {
        let w = Workload { images: self.batch_per_rank as u64, crops: self.recipe.crop_groups(), dtype: self.precision.compute };
        ModelGraph::build_executed(&self.model, &w, self.channel_padding)
    }

    /// Consistency of the plan with its own model.
    pub fn check(&self, origin: &str) -> Result<(), PlanError> {
        let mismatch = |why: String| PlanError::ModelMismatch { origin: origin.into(), model: self.model.name.clone(), why };
        let invalid = |field: &str, why: String| PlanError::Invalid { origin: origin.into(), field: field.into(), why };
        self.model.validate(origin)?;
        self.recipe.validate(origin)?;
        if self.world_size == 0 || self.batch_per_rank == 0 || self.gpus_per_node == 0 {
            return Err(invalid("world_size", "world_size, gpus_per_node and batch_per_rank must be >= 1".into()));
        }
        self.sharding.check(self.world_size).map_err(|e| invalid("sharding", e.0))?;
        self.recipe.sync_bn_group_for(self.world_size).map_err(|e| invalid("recipe.sync_bn_group", e))?;
        let g = self.graph();
        let fp = ModelFingerprint::of(&g);
        if fp != self.model_fingerprint {
            return Err(mismatch(format!(
                "model_fingerprint says {} trunk + {} head params in {} blocks, the model has {} + {} in {}",
                self.model_fingerprint.trunk_params,
                self.model_fingerprint.head_params,
                self.model_fingerprint.blocks.len(),
                fp.trunk_params,
                fp.head_params,
                fp.blocks.len()
            )));
        }
        let layer_prefixes: Vec<String> = g.blocks.iter().flat_map(|b| b.param_tensors.iter().map(|(n, _)| n.clone())).collect();
        for (i, u) in self.units.iter().enumerate() {
            if u.members.is_empty() {
                return Err(invalid(&format!("units[{i}].members"), "a unit needs at least one member".into()));
            }
            for m in &u.members {
                let known = layer_prefixes.iter().any(|p| member_prefixes(m, p));
                if !known {
                    return Err(mismatch(format!("unit `{}` names `{m}`, which owns no parameter of the model", u.name)));
                }
            }
        }
        let order: Vec<&str> = fp.blocks.iter().map(|s| s.as_str()).collect();
        match segment_ranges(&self.checkpoint_segments, &order) {
            Ok(_) => Ok(()),
            Err(e @ SegmentError::UnknownBlock { .. }) => Err(mismatch(e.to_string())),
            Err(e) => Err(invalid(&format!("checkpoint_segments[{}]", e.index()), e.reason())),
        }
    }

    /// The checkpointed segments as block index ranges of this plan's
    /// model ([`segment_ranges`]).
    pub fn segment_ranges(&self, blocks: &[&str]) -> Result<Vec<Range<usize>>, SegmentError> {
        segment_ranges(&self.checkpoint_segments, blocks)
    }
}

/// Why a plan's checkpointed segment does not describe blocks of its model.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum SegmentError {
    #[error("checkpoint segment {index} names a block the model does not have: `{block}`")]
    UnknownBlock { index: usize, block: String },
    #[error("checkpoint segment {index} {blocks:?}: must be a non-empty run of consecutive blocks")]
    NotConsecutive { index: usize, blocks: Vec<String> },
    #[error("checkpoint segment {index} {blocks:?}: segments must be in forward order and disjoint")]
    Overlapping { index: usize, blocks: Vec<String> },
}

impl SegmentError {
    /// Which segment.
    pub fn index(&self) -> usize {
        match self {
            SegmentError::UnknownBlock { index, .. } | SegmentError::NotConsecutive { index, .. } | SegmentError::Overlapping { index, .. } => *index,
        }
    }

    /// What is wrong with it, without saying which.
    pub fn reason(&self) -> String {
        match self {
            SegmentError::UnknownBlock { block, .. } => format!("unknown block `{block}`"),
            SegmentError::NotConsecutive { .. } => "must be a non-empty run of consecutive blocks".into(),
            SegmentError::Overlapping { .. } => "segments must be in forward order and disjoint".into(),
        }
    }
}

/// Checkpointed segments (lists of block names) as index ranges over
/// `blocks`, the model's blocks in forward order: every name known, each
/// segment a non-empty run of consecutive blocks, the segments in forward
/// order and disjoint. The one resolver of segment names that the plan's
/// check, the step schedule, the dry run and the executor share.
pub fn segment_ranges(segments: &[Vec<String>], blocks: &[&str]) -> Result<Vec<Range<usize>>, SegmentError> {
    let mut out: Vec<Range<usize>> = Vec::with_capacity(segments.len());
    for (index, seg) in segments.iter().enumerate() {
        let mut idx = Vec::with_capacity(seg.len());
        for b in seg {
            let i = blocks.iter().position(|o| o == b).ok_or_else(|| SegmentError::UnknownBlock { index, block: b.clone() })?;
            idx.push(i);
        }
        if idx.is_empty() || idx.windows(2).any(|w| w[1] != w[0] + 1) {
            return Err(SegmentError::NotConsecutive { index, blocks: seg.clone() });
        }
        if out.last().is_some_and(|r| idx[0] < r.end) {
            return Err(SegmentError::Overlapping { index, blocks: seg.clone() });
        }
        out.push(idx[0]..idx[idx.len() - 1] + 1);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_resolve_to_ranges_or_say_what_is_wrong() {
        let blocks = ["stem", "s1.b0", "s1.b1", "s2.b0", "head.mlp"];
        let seg = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(segment_ranges(&[seg(&["s1.b0", "s1.b1"]), seg(&["s2.b0"])], &blocks), Ok(vec![1..3, 3..4]));
        assert_eq!(segment_ranges(&[], &blocks), Ok(vec![]));
        let e = segment_ranges(&[seg(&["s1.b0", "s2.b0"])], &blocks).unwrap_err();
        assert!(matches!(e, SegmentError::NotConsecutive { index: 0, .. }) && e.to_string().contains("consecutive"), "{e}");
        let e = segment_ranges(&[seg(&["s2.b0"]), seg(&["s1.b9"])], &blocks).unwrap_err();
        assert_eq!(e, SegmentError::UnknownBlock { index: 1, block: "s1.b9".into() });
        let e = segment_ranges(&[seg(&["s1.b0"]), seg(&["s1.b0", "s1.b1"])], &blocks).unwrap_err();
        assert!(matches!(e, SegmentError::Overlapping { index: 1, .. }), "{e}");
        let e = segment_ranges(&[seg(&["s2.b0"]), seg(&["s1.b0"])], &blocks).unwrap_err();
        assert!(matches!(e, SegmentError::Overlapping { index: 1, .. }), "out of order: {e}");
        assert!(matches!(segment_ranges(&[vec![]], &blocks), Err(SegmentError::NotConsecutive { index: 0, .. })));
    }
}
