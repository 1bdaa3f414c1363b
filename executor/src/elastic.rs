//! Resuming a checkpoint on another number of ranks or another sharding:
//! every unit's fp32 master shard and optimiser state are cut again for
//! this rank's place in the new shard group, from the old shards of one old
//! shard group (each unit is put back together whole on the way, so a rank
//! briefly holds a unit's full vector). BN statistics come from old rank
//! `rank mod old world`; the step and data position carry over, converted
//! through images seen when the global batch changes.

use crate::checkpoint::{self, CheckpointError, RankMeta, RankState};
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
pub fn old_ranks_read(old: &RankMeta, new: &NewLayout) -> Vec<usize> {
    let s = old.sharding.resolved(old.world_size).shard_group.max(1);
    let mut v: Vec<usize> = (0..s).collect();
    let bn = new.rank % old.world_size.max(1);
    if !v.contains(&bn) {
        v.push(bn);
    }
    v
}

/// `unit_numels`: every unit's parameter count, in the run's unit order
/// (the same units as the checkpoint's, or it is refused).
pub fn load_resharded(step_dir: &Path, old: &RankMeta, unit_numels: &[(String, i64)], new: &NewLayout) -> Result<RankState, ElasticError> {
    let mismatch = |msg: String| ElasticError::Mismatch { path: step_dir.display().to_string(), msg };
    let names: Vec<&String> = unit_numels.iter().map(|(n, _)| n).collect();
    if old.units.iter().collect::<Vec<_>>() != names {
        return Err(mismatch(format!("written with units {:?}, this run has {names:?}: a different plan or model cannot resume it", old.units)));
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
    // Old shards of one unit -> this rank's new shard.
    let recut = |group: &str, name: &str, numel: i64| -> Result<Tensor, ElasticError> {
        let pieces: Vec<Tensor> = (0..s_old).map(|r| shard_of(r, group, name).and_then(|t| Ok(t.f_flatten(0, -1)?))).collect::<Result<_, _>>()?;
        let full = Tensor::f_cat(&pieces, 0)?;
        if (full.numel() as i64) < numel {
            return Err(mismatch(format!("`{group}/{name}` has {} elements, the unit needs {numel}", full.numel())));
        }
        let len = (numel + new.shard_size as i64 - 1) / new.shard_size as i64;
        let start = new.shard_rank as i64 * len;
        let out = Tensor::f_zeros([len], (full.kind(), tch::Device::Cpu))?;
        let (a, b) = (start.min(numel), (start + len).min(numel));
        if b > a {
            out.f_narrow(0, 0, b - a)?.f_copy_(&full.f_narrow(0, a, b - a)?)?;
        }
        Ok(out)
    };
    let mut tensors = Vec::new();
    for (name, numel) in unit_numels {
        tensors.push(("master".to_string(), name.clone(), recut("master", name, *numel)?));
    }
    for (_, name, t) in files[&0].tensors.iter().filter(|(g, _, _)| g == "optim") {
        let state = match name.strip_prefix("shard").and_then(|r| r.split_once('.')).and_then(|(i, _)| i.parse::<usize>().ok()) {
            Some(i) => {
                let numel = unit_numels.get(i).map(|u| u.1).ok_or_else(|| mismatch(format!("optimiser state `{name}` of a unit this run does not have")))?;
                recut("optim", name, numel)?
            }
            None => t.shallow_clone(),
        };
        tensors.push(("optim".to_string(), name.clone(), state));
    }
    let bn_rank = new.rank % old.world_size.max(1);
    tensors.extend(files[&bn_rank].tensors.iter().filter(|(g, _, _)| g == "bn").map(|(g, n, t)| (g.clone(), n.clone(), t.shallow_clone())));
    let meta = RankMeta { rank: new.rank, world_size: new.world, ..old.clone() };
    Ok(RankState { meta, tensors })
}

/// `(step, data position step)` converted from a global batch of `old` to
/// one of `new` images: the same images seen (rounded down).
pub fn convert_steps(step: u64, data_step: u64, old: u64, new: u64) -> (u64, u64) {
    if old == new || new == 0 {
        return (step, data_step);
    }
    (step * old / new, data_step * old / new)
}
