//! A run's checkpoints: the [`Checkpointer`] writes a rank's state and
//! publishes the step, and finds the newest step every rank can read; the
//! trainer says what its state is and takes it back (on any plan).

use super::*;
use crate::checkpoint::{self, RankMeta, RankState};
use crate::dist::ProcessGroup;
use crate::dist::ReduceOp;
use crate::elastic;
use crate::stream::{StreamStart, StreamState};
use crate::swav::SwavQueue;
use std::path::{Path, PathBuf};
use tch::{Device, Tensor};

/// Where a run's checkpoints go (`<out>/checkpoints`), written and found
/// by every rank together.
pub struct Checkpointer {
    dir: PathBuf,
    /// Rank 0 names each checkpoint it publishes.
    announce: bool,
}

impl Checkpointer {
    pub fn new(out_dir: &Path, announce: bool) -> Checkpointer {
        Checkpointer { dir: out_dir.join("checkpoints"), announce }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Writes this rank's state; once every rank has, rank 0 publishes the
    /// step (collective: all ranks call it).
    pub fn write(&self, pg: &ProcessGroup, state: &RankState) -> Result<(), TrainError> {
        checkpoint::save_rank(&self.dir, state)?;
        pg.barrier()?;
        if pg.rank() == 0 {
            checkpoint::publish(&self.dir, state.meta.step)?;
            if self.announce {
                eprintln!("checkpoint: step {} written to {}", state.meta.step, checkpoint::step_dir(&self.dir, state.meta.step).display());
            }
        }
        pg.barrier()?;
        Ok(())
    }

    /// The newest published step whose files every rank finds complete
    /// (collective: all ranks agree on it), and whether it was written by
    /// this very layout (same world, sharding and units) or must be re-cut.
    /// A step a rank cannot read is named in a warning and the one before
    /// it tried.
    pub fn newest_readable(
        &self,
        pg: &ProcessGroup,
        device: Device,
        layout: &elastic::NewLayout,
        sharding: runspec::sharding::Sharding,
        units: &[String],
    ) -> Result<Option<(PathBuf, bool)>, TrainError> {
        let (rank, world) = (layout.rank, layout.world);
        for sd in checkpoint::published(&self.dir)? {
            let old = checkpoint::read_meta(&sd, 0);
            let same = old.as_ref().is_ok_and(|m| m.world_size == world && m.sharding.resolved(m.world_size) == sharding && m.units == units);
            let reads: Vec<usize> = match &old {
                Ok(m) if !same => elastic::old_ranks_read(m, layout),
                _ => vec![rank],
            };
            let mine = old.map(|_| ()).and_then(|_| reads.iter().try_for_each(|&r| checkpoint::verify_rank(&sd, r)));
            if let Err(e) = &mine {
                eprintln!("warning: rank {rank}: {e}; trying the checkpoint before it");
            }
            let flag = Tensor::from_slice(&[if mine.is_ok() { 0f32 } else { 1.0 }]).f_to_device(device)?;
            pg.all_reduce_(&flag, ReduceOp::Max)?;
            if flag.f_double_value(&[0])? == 0.0 {
                return Ok(Some((sd, same)));
            }
        }
        Ok(None)
    }
}

impl<'pg> Trainer<'pg> {
    pub(super) fn checkpoint_dir(&self) -> &Path {
        self.checkpointer.dir()
    }

    pub(super) fn unit_names(&self) -> Vec<String> {
        self.fsdp.master_shards().into_iter().map(|(n, _)| n).collect()
    }

    /// Saves this rank's shard (collective: ends with a barrier and rank 0
    /// publishing the step).
    pub fn save_checkpoint(&self) -> Result<(), TrainError> {
        let mut tensors: Vec<(String, String, Tensor)> = Vec::new();
        for (n, t) in self.fsdp.master_shards() {
            tensors.push(("master".into(), n, t));
        }
        for (n, t) in self.optimizer.state_tensors() {
            tensors.push(("optim".into(), n, t));
        }
        for (n, t) in self.bn.buffers() {
            tensors.push(("bn".into(), n, t));
        }
        for (n, t) in self.queue.iter().flat_map(SwavQueue::state) {
            tensors.push(("queue".into(), n, t));
        }
        let meta = RankMeta {
            format_version: checkpoint::FORMAT_VERSION,
            step: self.step,
            rank: self.pg.rank(),
            world_size: self.pg.world_size(),
            data: self.data_pos,
            data_stream: match &self.data_stream {
                StreamStart::Mine(s) => Some(s.clone()),
                _ => None,
            },
            loss_scaler: self.scaler.clone(),
            seed: self.cfg.seed,
            units: self.unit_names(),
            sharding: self.groups.sharding(),
            model: Some(self.cfg.model.clone()),
            unit_specs: self.cfg.units.iter().map(|u| (u.name.clone(), u.members.clone())).collect(),
            tensors_file: None,
            images_per_step: Some((self.cfg.images_per_rank * self.pg.world_size()) as u64),
        };
        self.checkpointer.write(self.pg, &RankState { meta, tensors })
    }

    /// Restores the latest published checkpoint, if any; returns its step.
    pub fn restore_latest(&mut self) -> Result<Option<u64>, TrainError> {
        let (rank, world) = (self.pg.rank(), self.pg.world_size());
        let sharding = self.groups.sharding();
        let (shard_rank, shard_size) = self.groups.shard_rank_and_size();
        let layout = elastic::NewLayout { rank, world, shard_rank, shard_size };
        let chosen = self.checkpointer.newest_readable(self.pg, self.cfg.device, &layout, sharding, &self.unit_names())?;
        let Some((sd, same)) = chosen else { return Ok(None) };
        let st = if same {
            checkpoint::load_rank(&sd, rank, world, sharding, &self.unit_names())?
        } else {
            let old = checkpoint::read_meta(&sd, 0)?;
            if old.model.as_ref().is_some_and(|m| *m != self.cfg.model) {
                return Err(TrainError::Config(format!("checkpoint {} is of another model; it cannot resume this run", sd.display())));
            }
            let mut st =
                elastic::load_resharded(&sd, &old, &self.arch.param_specs(), &self.cfg.units, &layout).map_err(|e| TrainError::Config(e.to_string()))?;
            let (old_batch, new_batch) = (old.images_per_step.unwrap_or(0), (self.cfg.images_per_rank * world) as u64);
            let (step, data_step) = elastic::convert_steps(st.meta.step, st.meta.data.step, old_batch, new_batch);
            st.meta.step = step;
            st.meta.data.step = data_step;
            if rank == 0 {
                println!("resuming a {}-rank {} checkpoint on {world} ranks ({sharding})", old.world_size, old.sharding.resolved(old.world_size));
            }
            st
        };
        if st.meta.seed != self.cfg.seed {
            return Err(TrainError::Config(format!("checkpoint {} used seed {}, this run seed {}", sd.display(), st.meta.seed, self.cfg.seed)));
        }
        self.fsdp.load_master_shards(&st.group("master"))?;
        let shards = self.fsdp.shards();
        self.optimizer.load_state(&st.group("optim"), &shards)?;
        self.bn.load(&st.group("bn"))?;
        if let Some(q) = self.queue.as_mut() {
            // A queue is per rank: it survives a resume on the same ranks;
            // re-cut over another world size it refills from empty.
            let saved = st.group("queue");
            if same && !saved.is_empty() {
                q.load(&saved)?;
            } else if rank == 0 {
                println!("the SwAV queue starts empty after this resume (it refills in {} steps)", q.len() / self.cfg.images_per_rank.max(1) as i64);
            }
        }
        self.scaler = st.meta.loss_scaler.clone();
        self.step = st.meta.step;
        self.data_pos = st.meta.data;
        // Tar shards: every old rank's stream state, for the loader to deal
        // again (its own state alone on an unchanged world size).
        self.data_stream = if same {
            st.meta.data_stream.clone().map_or(StreamStart::Fresh, StreamStart::Mine)
        } else {
            let old = checkpoint::read_meta(&sd, 0)?;
            let states: Vec<StreamState> = (0..old.world_size).filter_map(|r| checkpoint::read_meta(&sd, r).ok().and_then(|m| m.data_stream)).collect();
            if !states.is_empty() && states.len() != old.world_size {
                return Err(TrainError::Config(format!(
                    "checkpoint {}: only {} of its {} ranks saved a data-stream state",
                    sd.display(),
                    states.len(),
                    old.world_size
                )));
            }
            if states.is_empty() {
                StreamStart::Fresh
            } else {
                StreamStart::Pooled(states)
            }
        };
        Ok(Some(self.step))
    }
}
