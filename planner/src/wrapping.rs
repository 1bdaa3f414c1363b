//! FSDP wrapping: which parameters form one flat, sharded unit.
//!
//! A unit is a list of members (block or layer names). Ownership follows the
//! naming contract of docs/architecture.md, exactly as the executor applies
//! it: a parameter belongs to the unit with the longest member that prefixes
//! its name on `.` boundaries; parameters no member matches form the
//! implicit `root` unit (appended last). Policies ([`Wrapping`]) only choose
//! members; the ownership rule then decides sizes and block spans, so a
//! policy's units and a plan file's units are measured the same way.

use cost_models::graph::{BlockKind, LayerKind, ModelGraph};
use runspec::plan::UnitPlan;
use runspec::recipe::Wrapping;

/// VISSL/FairScale auto-wrap threshold: a conv this large is its own unit.
pub const VISSL_CONV_UNIT_PARAMS: u64 = 100_000_000;

/// One FSDP unit resolved against a model.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Unit {
    pub name: String,
    pub members: Vec<String>,
    /// Block indices whose forward needs it: first to last block owning one
    /// of its parameters (the executor keeps it gathered over the whole span).
    pub blocks: std::ops::Range<usize>,
    /// Parameters the unit owns (unpadded).
    pub params: u64,
    /// Elements of each parameter tensor the unit owns, in the order the
    /// executor lays them out in its flat parameter (`params` is their sum).
    pub numels: Vec<u64>,
    /// Holds the SwAV prototypes, so it is gathered in fp32 whatever the
    /// compute dtype (as the executor does).
    pub fp32: bool,
    /// BN affine elements it owns: gathered a second time, in fp32, where
    /// the unit's dtype is not (`cost_models::graph::is_batch_norm_param`).
    pub bn_params: u64,
}

impl Unit {
    /// Elements of the flat parameter once padded to a multiple of `world`.
    pub fn padded(&self, world: usize) -> u64 {
        let w = world.max(1) as u64;
        self.params.div_ceil(w) * w
    }
    /// Elements of one rank's shard.
    pub fn shard_len(&self, world: usize) -> u64 {
        self.padded(world) / world.max(1) as u64
    }
    /// Elements of the fp32 side-gather of its BN parameters under
    /// `compute` (0 where there is none): one fp32 vector of them all,
    /// summed over the shard group.
    pub fn bn_gather_elements(&self, compute: cost_models::DType) -> u64 {
        if self.fp32 || compute == cost_models::DType::Fp32 {
            return 0;
        }
        self.bn_params
    }
    /// Parameter tensors the unit owns.
    pub fn tensors(&self) -> usize {
        self.numels.len()
    }
}

/// Flat shards a rank's optimiser updates: one per unit that holds any
/// parameter (every rank holds a slice of each, padding included).
pub(crate) fn shards_per_rank(units: &[Unit]) -> usize {
    units.iter().filter(|u| u.params > 0).count()
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WrappingError {
    #[error(transparent)]
    Units(#[from] runspec::units::UnitError),
    #[error("group size must be >= 1 (got {0})")]
    BadGroup(usize),
}

/// Units chosen by a policy (see [`Wrapping`]). Head blocks are always
/// their own units; under `Whole` everything but the prototypes is one unit,
/// because the prototypes are gathered in fp32 and the rest in the compute dtype.
pub fn units_for(graph: &ModelGraph, wrapping: Wrapping) -> Vec<Unit> {
    // A policy only ever names existing blocks/layers, so resolution cannot
    // fail except for Group(0), which we treat as per-block.
    try_units_for(graph, wrapping).unwrap_or_else(|_| {
        let specs = graph.blocks.iter().map(|b| (b.name.clone(), vec![b.name.clone()])).collect();
        resolve(graph, specs).unwrap_or_default()
    })
}

/// Like [`units_for`], refusing `Group(0)`.
pub(crate) fn try_units_for(graph: &ModelGraph, wrapping: Wrapping) -> Result<Vec<Unit>, WrappingError> {
    let trunk: Vec<&str> = graph.trunk_blocks().map(|b| b.name.as_str()).collect();
    let head: Vec<(String, Vec<String>)> = graph.head_blocks().map(|b| (b.name.clone(), vec![b.name.clone()])).collect();
    let one = |n: &str| (n.to_string(), vec![n.to_string()]);
    let mut specs: Vec<(String, Vec<String>)> = Vec::new();
    match wrapping {
        Wrapping::PerBlock => specs.extend(trunk.iter().map(|b| one(b))),
        Wrapping::PerStage => {
            let mut cur: Option<(String, Vec<String>)> = None;
            for b in graph.trunk_blocks() {
                let key = b.stage.map_or_else(|| b.name.clone(), |s| format!("s{s}"));
                match &mut cur {
                    Some((k, members)) if *k == key => members.push(b.name.clone()),
                    _ => {
                        specs.extend(cur.take());
                        cur = Some((key, vec![b.name.clone()]));
                    }
                }
            }
            specs.extend(cur);
        }
        Wrapping::Group(g) => {
            if g == 0 {
                return Err(WrappingError::BadGroup(0));
            }
            for chunk in trunk.chunks(g) {
                let name = if chunk.len() == 1 { chunk[0].to_string() } else { format!("{}..{}", chunk[0], chunk[chunk.len() - 1]) };
                specs.push((name, chunk.iter().map(|s| s.to_string()).collect()));
            }
        }
        Wrapping::Vissl => {
            for b in graph.trunk_blocks() {
                specs.push(one(&b.name));
                // Big convs (first crop group's copy carries the params).
                for l in graph.layers_of(b) {
                    if matches!(l.kind, LayerKind::Conv { .. }) && l.param_count() >= VISSL_CONV_UNIT_PARAMS {
                        let lname = l.name.split('@').next().unwrap_or(&l.name);
                        specs.push(one(lname));
                    }
                }
            }
        }
        Wrapping::Buckets(mib) => {
            if mib == 0 {
                return Err(WrappingError::BadGroup(0));
            }
            // As DDP fills its buckets: from the last block backwards, a
            // bucket closes once it holds `mib` MiB of fp32 parameters. The
            // prototypes (fp32 whatever the compute dtype) stay their own.
            let cap = mib as u64 * (1 << 20);
            let mut buckets: Vec<Vec<String>> = Vec::new();
            let (mut cur, mut bytes) = (Vec::new(), 0u64);
            for b in graph.blocks.iter().rev().filter(|b| b.kind != BlockKind::HeadProto) {
                cur.insert(0, b.name.clone());
                bytes += b.params * 4;
                if bytes >= cap {
                    buckets.push(std::mem::take(&mut cur));
                    bytes = 0;
                }
            }
            if !cur.is_empty() {
                buckets.push(cur);
            }
            buckets.reverse();
            for members in buckets {
                let name = if members.len() == 1 { members[0].clone() } else { format!("{}..{}", members[0], members[members.len() - 1]) };
                specs.push((name, members));
            }
            specs.extend(graph.blocks.iter().filter(|b| b.kind == BlockKind::HeadProto).map(|b| one(&b.name)));
            return resolve(graph, specs);
        }
        Wrapping::Whole => {
            let rest = graph.blocks.iter().filter(|b| b.kind != BlockKind::HeadProto).map(|b| b.name.clone()).collect();
            specs.push(("model".to_string(), rest));
            specs.extend(graph.blocks.iter().filter(|b| b.kind == BlockKind::HeadProto).map(|b| one(&b.name)));
            return resolve(graph, specs);
        }
    }
    specs.extend(head);
    resolve(graph, specs)
}

/// Resolves a plan's units against the model (the executor's rule).
pub(crate) fn units_from_plan(graph: &ModelGraph, units: &[UnitPlan]) -> Result<Vec<Unit>, WrappingError> {
    resolve(graph, units.iter().map(|u| (u.name.clone(), u.members.clone())).collect())
}

/// What a plan file stores for each unit.
pub fn unit_plans(units: &[Unit]) -> Vec<UnitPlan> {
    units
        .iter()
        .filter(|u| u.name != "root" || !u.members.is_empty())
        .map(|u| UnitPlan { name: u.name.clone(), members: u.members.clone(), params: u.params })
        .collect()
}

/// Applies the plan's ownership rule (`runspec::units`) to the graph's
/// parameters. Units that end up owning nothing are dropped (a block whose
/// every tensor went to sub-units).
fn resolve(graph: &ModelGraph, specs: Vec<(String, Vec<String>)>) -> Result<Vec<Unit>, WrappingError> {
    let params: Vec<(usize, &str, u64)> =
        graph.blocks.iter().enumerate().flat_map(|(bi, b)| b.param_tensors.iter().map(move |(n, k)| (bi, n.as_str(), *k))).collect();
    let names: Vec<&str> = params.iter().map(|p| p.1).collect();
    let o = runspec::units::assign(&names, &specs)?;
    let mut out = Vec::new();
    for (ui, name) in o.names.iter().enumerate() {
        let mine: Vec<&(usize, &str, u64)> = params.iter().zip(&o.owner).filter(|(_, &u)| u == ui).map(|(p, _)| p).collect();
        let (Some(first), Some(last)) = (mine.iter().map(|p| p.0).min(), mine.iter().map(|p| p.0).max()) else { continue };
        let members = specs.get(ui).map(|(_, m)| m.clone()).unwrap_or_default();
        out.push(Unit {
            name: name.clone(),
            members,
            blocks: first..last + 1,
            params: mine.iter().map(|p| p.2).sum(),
            numels: mine.iter().map(|p| p.2).collect(),
            fp32: mine.iter().any(|p| p.1.starts_with("head.proto.")),
            bn_params: mine.iter().filter(|p| cost_models::graph::is_batch_norm_param(p.1)).map(|p| p.2).sum(),
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cost_models::config::ModelConfig;
    use cost_models::graph::{CropGroup, Workload};
    use cost_models::DType;
    use runspec::plan::member_prefixes;

    fn graph(model: &str) -> ModelGraph {
        let m = ModelConfig::load(model).unwrap();
        ModelGraph::build(&m, &Workload { images: 2, crops: vec![CropGroup { count: 2, resolution: 32 }], dtype: DType::Fp16 })
    }

    #[test]
    fn every_policy_partitions_all_parameters() {
        let g = graph("regnety-tiny");
        let total = g.trunk_params() + g.head_params();
        for w in [Wrapping::PerBlock, Wrapping::PerStage, Wrapping::Group(2), Wrapping::Group(3), Wrapping::Vissl, Wrapping::Whole] {
            let units = try_units_for(&g, w).unwrap();
            assert_eq!(units.iter().map(|u| u.params).sum::<u64>(), total, "{w:?}");
            assert!(units.iter().all(|u| u.name != "root"), "{w:?} leaves parameters to root");
            // Prototypes only in an fp32 unit.
            assert_eq!(units.iter().filter(|u| u.fp32).count(), 1, "{w:?}");
        }
        let per_block = units_for(&g, Wrapping::PerBlock);
        assert_eq!(per_block.len(), g.blocks.len());
        for (i, u) in per_block.iter().enumerate() {
            assert_eq!(u.blocks, i..i + 1);
        }
        let stages = units_for(&g, Wrapping::PerStage);
        let names: Vec<&str> = stages.iter().map(|u| u.name.as_str()).collect();
        assert_eq!(names, ["stem", "s1", "s2", "s3", "s4", "head.mlp", "head.proto"]);
        let s3 = stages.iter().find(|u| u.name == "s3").unwrap();
        assert_eq!(s3.blocks, 3..5);
        // Whole: one compute-dtype unit for everything but the fp32 prototypes.
        let whole = units_for(&g, Wrapping::Whole);
        assert_eq!(whole.len(), 2);
        assert!(!whole[0].fp32 && whole[0].blocks == (0..g.blocks.len() - 1));
        assert!(whole[1].fp32 && whole[1].name == "head.proto");
    }

    #[test]
    fn vissl_gives_big_convs_their_own_units() {
        let g = graph("regnety-10b");
        let units = units_for(&g, Wrapping::Vissl);
        let big: Vec<&Unit> = units.iter().filter(|u| u.members.len() == 1 && u.members[0].matches('.').count() == 2).collect();
        assert!(!big.is_empty());
        for u in &big {
            assert!(u.params >= VISSL_CONV_UNIT_PARAMS, "{} has {}", u.name, u.params);
        }
        // s4.b0's grouped conv: 28280 x 1010 x 3 x 3.
        let b = units.iter().find(|u| u.name == "s4.b0.b").expect("s4.b0.b unit");
        assert_eq!(b.params, 28280 * 1010 * 9);
        let blk = units.iter().find(|u| u.name == "s4.b0").unwrap();
        assert_eq!(b.blocks, blk.blocks);
        // What stays in the block unit: BN and the two SE convs, each < 1e8.
        let left: Vec<&(String, u64)> =
            g.block("s4.b0").unwrap().param_tensors.iter().filter(|(n, _)| [".a.", ".b.", ".c.", ".proj."].iter().all(|c| !n.contains(c))).collect();
        assert_eq!(blk.params, left.iter().map(|(_, n)| n).sum::<u64>());
        assert!(left.iter().all(|(_, n)| *n < VISSL_CONV_UNIT_PARAMS));
        assert_eq!(units.iter().map(|u| u.params).sum::<u64>(), g.trunk_params() + g.head_params());
    }

    #[test]
    fn plan_units_follow_longest_prefix_and_root() {
        let g = graph("regnety-tiny");
        let plan = vec![
            UnitPlan { name: "s3.b0".into(), members: vec!["s3.b0".into()], params: 0 },
            UnitPlan { name: "s3.b0.b".into(), members: vec!["s3.b0.b".into()], params: 0 },
        ];
        let u = units_from_plan(&g, &plan).unwrap();
        assert_eq!(u.len(), 3);
        assert_eq!(u[2].name, "root");
        let bw: u64 = g.block("s3.b0").unwrap().param_tensors.iter().filter(|(n, _)| n.starts_with("s3.b0.b.")).map(|(_, n)| n).sum();
        assert_eq!(u[1].params, bw);
        assert_eq!(u[0].params + u[1].params, g.block("s3.b0").unwrap().params);
        assert_eq!(u[2].blocks, 0..g.blocks.len());
        let bad = vec![UnitPlan { name: "x".into(), members: vec!["s9.b0".into()], params: 0 }];
        assert!(matches!(units_from_plan(&g, &bad), Err(WrappingError::Units(runspec::units::UnitError::UnknownMember { .. }))));
        // `s3.b0.b` must not capture `s3.b0.b_bn` (dot boundary).
        assert!(!member_prefixes("s3.b0.b", "s3.b0.b_bn.weight"));
        let dup = vec![plan[0].clone(), UnitPlan { name: "y".into(), members: vec!["s3.b0".into()], params: 0 }];
        assert!(matches!(units_from_plan(&g, &dup), Err(WrappingError::Units(runspec::units::UnitError::DuplicateMember { .. }))));
        assert_eq!(try_units_for(&g, Wrapping::Group(0)), Err(WrappingError::BadGroup(0)));
    }

    #[test]
    fn padding_rounds_to_world_size() {
        let u = Unit { name: "u".into(), members: vec![], blocks: 0..1, params: 10, numels: vec![10], fp32: false, bn_params: 0 };
        assert_eq!(u.padded(4), 12);
        assert_eq!(u.shard_len(4), 3);
        assert_eq!(u.padded(1), 10);
    }

    #[test]
    fn every_unit_with_parameters_is_one_shard_on_every_rank() {
        let u = Unit { name: "u".into(), members: vec![], blocks: 0..1, params: 12, numels: vec![3, 5, 1, 3], fp32: false, bn_params: 0 };
        let empty = Unit { params: 0, numels: vec![], ..u.clone() };
        assert_eq!(shards_per_rank(&[u.clone(), empty, u]), 2);
        assert_eq!(shards_per_rank(&[]), 0);
    }
}
