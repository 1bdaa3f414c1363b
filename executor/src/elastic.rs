//! Resuming a checkpoint on another number of ranks, another sharding or
//! other units (a re-planned wrapping): every unit's fp32 master shard and
//! optimiser state are put back together from the old shards of one old
//! shard group, cut into parameters by name and laid out again in this
//! run's units at this rank's place (a rank briefly holds a unit's full
//! vector). BN statistics come from old rank
//! `rank mod old world`; the step and data position carry over, converted
//! through images seen when the global batch changes.

use crate::checkpoint::{self, CheckpointError, RankMeta, RankState};
use crate::fsdp::{flat_layout, UnitSpec};
use crate::model::ParamSpec;
use std::collections::HashMap;
use std::path::Path;
use tch::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum ElasticError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("checkpoint {path}: {msg}")]
    Mismatch { path: String, msg: String },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// Where this rank sits in the new layout.
#[derive(Clone, Copy, Debug)]
pub struct NewLayout {
    pub rank: usize,
    pub world: usize,
    /// This rank's index in its shard group, and the group's size.
    pub shard_rank: usize,
    pub shard_size: usize,
}

/// The old ranks whose files this rank reads: one old shard group's
/// shards, and the rank whose BN statistics it takes.
pub(crate) fn old_ranks_read(old: &RankMeta, new: &NewLayout) -> Vec<usize> {
    let s = old.sharding.resolved(old.world_size).shard_group.max(1);
    let mut v: Vec<usize> = (0..s).collect();
    let bn = new.rank % old.world_size.max(1);
    if !v.contains(&bn) {
        v.push(bn);
    }
    v
}

/// This rank's state from the checkpoint in `step_dir` (written by `old`'s
/// run) for a run of the model `specs` under `units` at `new`: every
/// unit's master shard and optimiser buffers are put back together whole,
/// cut into parameters by name at their offsets in the checkpoint's units,
/// laid out again in this run's units and cut at this rank's place. The
/// unit sets may differ (another wrapping), as may the world size and the
/// sharding.
pub(crate) fn load_resharded(step_dir: &Path, old: &RankMeta, specs: &[ParamSpec], units: &[UnitSpec], new: &NewLayout) -> Result<RankState, ElasticError> {
    let mismatch = |msg: String| ElasticError::Mismatch { path: step_dir.display().to_string(), msg };
    let new_layout = flat_layout(specs, units).map_err(|e| mismatch(e.to_string()))?;
    // The checkpoint's own unit list; written before it recorded one: this
    // run's, provided the unit names agree.
    let old_units: Vec<UnitSpec> = if old.unit_specs.is_empty() {
        let here: Vec<&String> = new_layout.iter().map(|(n, _)| n).collect();
        if old.units.iter().collect::<Vec<_>>() != here {
            return Err(mismatch(format!("written with units {:?} and no unit list, this run has {here:?}: it cannot be re-cut", old.units)));
        }
        units.to_vec()
    } else {
        old.unit_specs.iter().map(|(name, members)| UnitSpec { name: name.clone(), members: members.clone() }).collect()
    };
    let old_layout = flat_layout(specs, &old_units).map_err(|e| mismatch(format!("its units do not fit this model: {e}")))?;
    if old_layout.iter().map(|(n, _)| n).collect::<Vec<_>>() != old.units.iter().collect::<Vec<_>>() {
        return Err(mismatch(format!("its units {:?} are not what its unit list gives for this model", old.units)));
    }
    let old_sharding = old.sharding.resolved(old.world_size);
    let s_old = old_sharding.shard_group.max(1);
    let mut files: HashMap<usize, RankState> = HashMap::new();
    for r in old_ranks_read(old, new) {
        files.insert(r, checkpoint::load_rank(step_dir, r, old.world_size, old_sharding, &old.units)?);
    }
    let shard_of = |r: usize, group: &str, name: &str| -> Result<Tensor, ElasticError> {
        files[&r]
            .tensors
            .iter()
            .find(|(g, n, _)| g == group && n == name)
            .map(|(_, _, t)| t.shallow_clone())
            .ok_or_else(|| mismatch(format!("rank {r} has no `{group}/{name}`")))
    };
    // One tensor per unit (`key` names it in `group`), old shards -> every
    // parameter by name -> this run's units -> this rank's shards.
    let recut = |group: &str, key: &dyn Fn(usize, &str) -> String| -> Result<Vec<Tensor>, ElasticError> {
        let mut values: HashMap<&str, Tensor> = HashMap::new();
        for (i, (uname, params)) in old_layout.iter().enumerate() {
            let k = key(i, uname);
            let pieces: Vec<Tensor> = (0..s_old).map(|r| shard_of(r, group, &k).and_then(|t| Ok(t.f_flatten(0, -1)?))).collect::<Result<_, _>>()?;
            let full = Tensor::f_cat(&pieces, 0)?;
            let numel: i64 = params.iter().map(|p| p.numel).sum();
            if (full.numel() as i64) < numel {
                return Err(mismatch(format!("`{group}/{k}` has {} elements, its unit needs {numel}", full.numel())));
            }
            for p in params {
                values.insert(p.name.as_str(), full.f_narrow(0, p.offset, p.numel)?);
            }
        }
        let mut out = Vec::with_capacity(new_layout.len());
        for (uname, params) in &new_layout {
            let numel: i64 = params.iter().map(|p| p.numel).sum();
            let len = (numel + new.shard_size as i64 - 1) / new.shard_size as i64;
            let (lo, hi) = (new.shard_rank as i64 * len, (new.shard_rank as i64 + 1) * len);
            let shard = Tensor::f_zeros([len], (tch::Kind::Float, tch::Device::Cpu))?;
            for p in params {
                let v =
                    values.get(p.name.as_str()).ok_or_else(|| mismatch(format!("unit `{uname}` needs `{}`, which the checkpoint does not hold", p.name)))?;
                let (a, b) = (p.offset.max(lo), (p.offset + p.numel).min(hi));
                if a < b {
                    shard.f_narrow(0, a - lo, b - a)?.f_copy_(&v.f_narrow(0, a - p.offset, b - a)?.f_to_kind(tch::Kind::Float)?)?;
                }
            }
            out.push(shard);
        }
        Ok(out)
    };
    let mut tensors = Vec::new();
    for ((name, _), t) in new_layout.iter().zip(recut("master", &|_, u| u.to_string())?) {
        tensors.push(("master".to_string(), name.clone(), t));
    }
    // Optimiser buffers per unit (`shard{i}.{buffer}`), re-cut the same way;
    // the counters pass through.
    let mut buffers: Vec<String> = Vec::new();
    for (_, name, t) in files[&0].tensors.iter().filter(|(g, _, _)| g == "optim") {
        match name.strip_prefix("shard0.") {
            Some(b) => buffers.push(b.to_string()),
            None if !name.starts_with("shard") => tensors.push(("optim".to_string(), name.clone(), t.shallow_clone())),
            None => {}
        }
    }
    for b in &buffers {
        for (i, t) in recut("optim", &|i, _| format!("shard{i}.{b}"))?.into_iter().enumerate() {
            tensors.push(("optim".to_string(), format!("shard{i}.{b}"), t));
        }
    }
    let bn_rank = new.rank % old.world_size.max(1);
    tensors.extend(files[&bn_rank].tensors.iter().filter(|(g, _, _)| g == "bn").map(|(g, n, t)| (g.clone(), n.clone(), t.shallow_clone())));
    let here: Vec<String> = new_layout.iter().map(|(n, _)| n.clone()).collect();
    let unit_specs = units.iter().map(|u| (u.name.clone(), u.members.clone())).collect();
    let meta = RankMeta { rank: new.rank, world_size: new.world, units: here, unit_specs, ..old.clone() };
    Ok(RankState { meta, tensors })
}

/// `(step, data position step)` converted from a global batch of `old` to
/// one of `new` images: the same images seen (rounded down).
pub(crate) fn convert_steps(step: u64, data_step: u64, old: u64, new: u64) -> (u64, u64) {
    if old == new || new == 0 {
        return (step, data_step);
    }
    (step * old / new, data_step * old / new)
}
