//! One rank's stream of samples through epochs of tar shards, as
//! WebDataset does it: each epoch the shards are shuffled (seeded by the
//! epoch) and dealt to the ranks round-robin; each rank reads its shards
//! in order through a shuffle buffer. Every rank takes the same number of
//! steps per epoch: the smallest rank share, in whole batches.
//!
//! The stream's state after every batch ([`StreamState`]: shards left,
//! each from its first unread sample, and the samples waiting in the
//! buffer) is what a checkpoint saves. It resumes exactly on the same
//! world size and, on another, the old ranks' states are pooled and dealt
//! again ([`redistribute`]): nothing already used is read again and
//! nothing unread is lost.

use crate::shards::{Sample, ShardError, ShardReader, ShardSet};
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use serde::{Deserialize, Serialize};
use std::sync::Arc;

/// Where one rank's stream stands after a batch.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StreamState {
    pub epoch: u64,
    /// Step, within the epoch, of the next batch.
    pub step: u64,
    /// The step at which this epoch ends (the same on every rank).
    pub epoch_steps: u64,
    /// Shards this rank still reads this epoch, in order: (shard, first unread sample).
    pub work: Vec<(u32, u64)>,
    /// Samples read into the shuffle buffer and not used yet, in buffer order.
    pub buffer: Vec<(u32, u64)>,
    /// Draws made from the buffer this epoch: seeds the next one.
    pub draws: u64,
}

#[derive(Clone, Debug)]
pub struct StreamConfig {
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
    pub images_per_rank: usize,
    /// Samples held in the shuffle buffer (at least 1).
    pub buffer: usize,
}

#[derive(Debug, thiserror::Error)]
pub enum StreamError {
    #[error(transparent)]
    Shard(#[from] ShardError),
    #[error("{shards} shard(s) for {world} ranks: every rank needs at least one (`seerscale data pack --shard-size` cuts smaller ones)")]
    FewerShardsThanRanks { shards: usize, world: usize },
    #[error("{spec}: rank {rank}'s share of {samples} sample(s) is under one batch of {batch}")]
    TooFewSamples { spec: String, rank: usize, samples: u64, batch: usize },
    #[error("{spec}: rank {rank}'s shards gave no sample this epoch")]
    Dry { spec: String, rank: usize },
    #[error("cannot resume the data stream: {0}")]
    Resume(String),
}

/// The shards in epoch `epoch`'s order.
pub(crate) fn shard_order(shards: usize, seed: u64, epoch: u64) -> Vec<u32> {
    let mut order: Vec<u32> = (0..shards as u32).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(crate::data::mix(&[seed, 0x005b_a4d5, epoch])));
    order
}

/// Rank `cfg.rank`'s state at the start of epoch `epoch`.
pub(crate) fn fresh_epoch(set: &ShardSet, cfg: &StreamConfig, epoch: u64) -> Result<StreamState, StreamError> {
    if set.len() < cfg.world {
        return Err(StreamError::FewerShardsThanRanks { shards: set.len(), world: cfg.world });
    }
    let order = shard_order(set.len(), cfg.seed, epoch);
    let share = |r: usize| -> Vec<(u32, u64)> { order.iter().skip(r).step_by(cfg.world).map(|&s| (s, 0)).collect() };
    let totals: Vec<u64> = (0..cfg.world).map(|r| share(r).iter().map(|&(s, _)| set.counts()[s as usize]).sum()).collect();
    let (rank, samples) = totals.iter().copied().enumerate().min_by_key(|&(_, n)| n).unwrap_or((0, 0));
    let epoch_steps = samples / cfg.images_per_rank as u64;
    if epoch_steps == 0 {
        return Err(StreamError::TooFewSamples { spec: set.spec().to_string(), rank, samples, batch: cfg.images_per_rank });
    }
    Ok(StreamState { epoch, step: 0, epoch_steps, work: share(cfg.rank), buffer: Vec::new(), draws: 0 })
}

/// Rank `cfg.rank`'s state from the states of all old ranks, saved at the
/// same step: its own state where the world size is unchanged; else the
/// pooled buffers and unread shards dealt round-robin to the new ranks,
/// the epoch then ending when the smallest new share runs out. `step` is
/// the resumed step within the epoch (converted if the global batch changed).
pub(crate) fn redistribute(old: &[StreamState], set: &ShardSet, cfg: &StreamConfig, step: u64) -> Result<StreamState, StreamError> {
    let first = check_saved(old, set)?;
    if old.len() == cfg.world {
        return Ok(StreamState { step, ..old[cfg.rank].clone() });
    }
    let buffered: Vec<(u32, u64)> = old.iter().flat_map(|o| o.buffer.iter().copied()).collect();
    let longest = old.iter().map(|o| o.work.len()).max().unwrap_or(0);
    let work: Vec<(u32, u64)> = (0..longest).flat_map(|k| old.iter().filter_map(move |o| o.work.get(k).copied())).collect();
    let deal = |items: &[(u32, u64)], r: usize| -> Vec<(u32, u64)> { items.iter().skip(r).step_by(cfg.world).copied().collect() };
    let remaining = |r: usize| -> u64 {
        deal(&buffered, r).len() as u64 + deal(&work, r).iter().map(|&(s, from)| set.counts()[s as usize].saturating_sub(from)).sum::<u64>()
    };
    let least = (0..cfg.world).map(remaining).min().unwrap_or(0);
    Ok(StreamState {
        epoch: first.epoch,
        step,
        epoch_steps: step + least / cfg.images_per_rank as u64,
        work: deal(&work, cfg.rank),
        buffer: deal(&buffered, cfg.rank),
        draws: 0,
    })
}

/// Where a rank's stream starts.
#[derive(Clone, Debug, Default, PartialEq)]
pub enum StreamStart {
    /// A new epoch (the loader's start epoch).
    #[default]
    Fresh,
    /// This rank's own saved state, on the same ranks and batch.
    Mine(StreamState),
    /// Every old rank's saved state, to deal again ([`redistribute`]).
    Pooled(Vec<StreamState>),
}

/// A rank's own saved state, checked against the shards it reads.
pub(crate) fn resume_mine(state: &StreamState, set: &ShardSet) -> Result<StreamState, StreamError> {
    check_saved(std::slice::from_ref(state), set).cloned()
}

/// The saved states name shards of `set` and one epoch: the first state.
fn check_saved<'a>(old: &'a [StreamState], set: &ShardSet) -> Result<&'a StreamState, StreamError> {
    let first = old.first().ok_or_else(|| StreamError::Resume("the checkpoint has no data-stream state".into()))?;
    if old.iter().any(|s| s.epoch != first.epoch) {
        return Err(StreamError::Resume("its ranks were saved in different epochs".into()));
    }
    if let Some(&(s, _)) = old.iter().flat_map(|o| o.work.iter().chain(&o.buffer)).find(|&&(s, _)| s as usize >= set.len()) {
        return Err(StreamError::Resume(format!("it reads shard {s} but {} names {} shards", set.spec(), set.len())));
    }
    Ok(first)
}

/// A rank's running stream: its state plus the buffered samples' bytes.
pub struct Stream {
    set: Arc<ShardSet>,
    cfg: StreamConfig,
    state: StreamState,
    buffer: Vec<Sample>,
    reader: Option<ShardReader>,
    /// Shards found cut off, each named once.
    pub warnings: Vec<String>,
}

impl Stream {
    /// Starts from `state`, reading the samples its buffer names again.
    pub fn new(set: Arc<ShardSet>, cfg: StreamConfig, state: StreamState) -> Result<Stream, StreamError> {
        let mut buffer = Vec::with_capacity(state.buffer.len());
        let mut open: Option<ShardReader> = None;
        // Buffered samples come from few shards in rising order; reread each
        // shard at most once per run of increasing positions.
        for &(shard, index) in &state.buffer {
            let reuse = open.as_ref().is_some_and(|r| r.shard() == shard && r.next_index() <= index);
            if !reuse {
                open = Some(ShardReader::open(&set.paths()[shard as usize], shard, index)?);
            }
            let r = open.as_mut().expect("opened above");
            let mut found = None;
            while let Some(s) = r.next_sample(r.next_index() == index)? {
                if s.index == index {
                    found = Some(s);
                    break;
                }
            }
            buffer.push(found.ok_or_else(|| StreamError::Resume(format!("{} has no sample {index}", set.name(shard))))?);
        }
        Ok(Stream { set, cfg, state, buffer, reader: None, warnings: Vec::new() })
    }

    pub fn state(&self) -> &StreamState {
        &self.state
    }

    /// The next batch's samples, with the epoch and step they belong to.
    pub fn next_batch(&mut self) -> Result<(u64, u64, Vec<Sample>), StreamError> {
        if self.state.step >= self.state.epoch_steps {
            self.state = fresh_epoch(&self.set, &self.cfg, self.state.epoch + 1)?;
            self.buffer.clear();
            self.reader = None;
        }
        let (epoch, step) = (self.state.epoch, self.state.step);
        let mut out = Vec::with_capacity(self.cfg.images_per_rank);
        for _ in 0..self.cfg.images_per_rank {
            out.push(self.draw()?);
        }
        self.state.step += 1;
        Ok((epoch, step, out))
    }

    fn draw(&mut self) -> Result<Sample, StreamError> {
        self.fill()?;
        if self.buffer.is_empty() {
            // Shards shorter than their counts (cut off): read this rank's
            // share of the epoch again rather than stall the other ranks.
            self.state.work = fresh_epoch(&self.set, &self.cfg, self.state.epoch)?.work;
            self.fill()?;
            if self.buffer.is_empty() {
                return Err(StreamError::Dry { spec: self.set.spec().to_string(), rank: self.cfg.rank });
            }
        }
        let key = [self.cfg.seed, 0xb0ff, self.state.epoch, self.cfg.rank as u64, self.state.draws];
        let j = (crate::data::mix(&key) % self.buffer.len() as u64) as usize;
        self.state.draws += 1;
        self.state.buffer.swap_remove(j);
        Ok(self.buffer.swap_remove(j))
    }

    fn fill(&mut self) -> Result<(), StreamError> {
        let cap = self.cfg.buffer.max(1);
        while self.buffer.len() < cap {
            let Some(&(shard, from)) = self.state.work.first() else { return Ok(()) };
            if self.reader.is_none() {
                self.reader = Some(ShardReader::open(&self.set.paths()[shard as usize], shard, from)?);
            }
            let reader = self.reader.as_mut().expect("opened above");
            match reader.next_sample(true)? {
                Some(s) => {
                    self.state.work[0].1 = s.index + 1;
                    self.state.buffer.push((shard, s.index));
                    self.buffer.push(s);
                }
                None => {
                    if let Some(why) = reader.truncated.take() {
                        self.warnings.push(format!(
                            "{} is cut off ({why}): its {} sample(s) before the break are used",
                            self.set.name(shard),
                            reader.next_index()
                        ));
                    }
                    self.state.work.remove(0);
                    self.reader = None;
                }
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::shards::tests::write_tar;
    use std::collections::HashSet;

    /// `shards` shards of `per` samples each (sample bytes = its id).
    fn shard_set(tag: &str, shards: usize, per: impl Fn(usize) -> usize) -> (PathBuf, Arc<ShardSet>) {
        let d = std::env::temp_dir().join(format!("seerscale-stream-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        let mut id = 0u32;
        for s in 0..shards {
            let m: Vec<(String, Vec<u8>)> = (0..per(s))
                .map(|i| {
                    id += 1;
                    (format!("{i:06}.jpg"), (id - 1).to_le_bytes().to_vec())
                })
                .collect();
            write_tar(&d.join(format!("{s:03}.tar")), &m.iter().map(|(n, b)| (n.as_str(), b.clone())).collect::<Vec<_>>());
        }
        let set = ShardSet::open(&format!("{}/{{000..{:03}}}.tar", d.display(), shards - 1)).unwrap();
        (d, Arc::new(set))
    }
    use std::path::PathBuf;

    fn cfg(rank: usize, world: usize, b: usize) -> StreamConfig {
        StreamConfig { seed: 3, rank, world, images_per_rank: b, buffer: 4 }
    }

    fn ids(samples: &[Sample]) -> Vec<u32> {
        samples.iter().map(|s| u32::from_le_bytes(s.image[..4].try_into().unwrap())).collect()
    }

    /// `steps` batches of every rank, from `states` (one per rank).
    fn run(set: &Arc<ShardSet>, states: Vec<StreamState>, b: usize, steps: usize) -> (Vec<Vec<u32>>, Vec<StreamState>) {
        let world = states.len();
        let mut out = vec![Vec::new(); world];
        let mut after = Vec::new();
        for (r, st) in states.into_iter().enumerate() {
            let mut s = Stream::new(Arc::clone(set), cfg(r, world, b), st).unwrap();
            for _ in 0..steps {
                let (_, _, batch) = s.next_batch().unwrap();
                out[r].extend(ids(&batch));
            }
            after.push(s.state().clone());
        }
        (out, after)
    }

    #[test]
    fn an_epoch_deals_shards_round_robin_and_uses_each_sample_once() {
        let (d, set) = shard_set("epoch", 5, |s| 6 + s);
        let fresh: Vec<StreamState> = (0..2).map(|r| fresh_epoch(&set, &cfg(r, 2, 3), 0).unwrap()).collect();
        let order = shard_order(5, 3, 0);
        assert_eq!(fresh[0].work.iter().map(|w| w.0).collect::<Vec<_>>(), [order[0], order[2], order[4]]);
        assert_eq!(fresh[1].work.iter().map(|w| w.0).collect::<Vec<_>>(), [order[1], order[3]]);
        // The smaller share sets the epoch: every rank takes that many steps.
        let smaller = fresh[1].work.iter().map(|w| set.counts()[w.0 as usize]).sum::<u64>();
        assert_eq!(fresh[0].epoch_steps, smaller / 3);
        let steps = fresh[0].epoch_steps as usize;
        let (seen, _) = run(&set, fresh.clone(), 3, steps);
        let all: Vec<u32> = seen.concat();
        assert_eq!(all.iter().collect::<HashSet<_>>().len(), all.len(), "no sample twice in an epoch");
        // The shuffle buffer reorders within a rank's stream.
        assert_ne!(seen[0], {
            let mut v = seen[0].clone();
            v.sort();
            v
        });
        // The next epoch reshuffles the shards.
        assert_ne!(shard_order(5, 3, 1), order);
        assert!(matches!(fresh_epoch(&set, &cfg(0, 6, 1), 0), Err(StreamError::FewerShardsThanRanks { shards: 5, world: 6 })));
        assert!(matches!(fresh_epoch(&set, &cfg(0, 2, 100), 0), Err(StreamError::TooFewSamples { .. })));
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_saved_state_resumes_the_same_stream_on_the_same_ranks() {
        let (d, set) = shard_set("same", 4, |_| 9);
        let fresh: Vec<StreamState> = (0..2).map(|r| fresh_epoch(&set, &cfg(r, 2, 2), 0).unwrap()).collect();
        let (whole, _) = run(&set, fresh.clone(), 2, 7);
        let (first, mid) = run(&set, fresh, 2, 3);
        let resumed: Vec<StreamState> = (0..2).map(|r| redistribute(&mid, &set, &cfg(r, 2, 2), 3).unwrap()).collect();
        assert_eq!(resumed, mid);
        let (rest, _) = run(&set, resumed, 2, 4);
        for r in 0..2 {
            assert_eq!([first[r].clone(), rest[r].clone()].concat(), whole[r], "rank {r}");
        }
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn states_are_dealt_again_over_another_world_size_without_rereading() {
        let (d, set) = shard_set("elastic", 6, |s| 7 + s % 3);
        let fresh: Vec<StreamState> = (0..2).map(|r| fresh_epoch(&set, &cfg(r, 2, 2), 0).unwrap()).collect();
        let (before, mid) = run(&set, fresh, 2, 3);
        let used: HashSet<u32> = before.concat().into_iter().collect();
        for world in [1usize, 3] {
            let states: Vec<StreamState> = (0..world).map(|r| redistribute(&mid, &set, &cfg(r, world, 2), 3).unwrap()).collect();
            assert!(states.iter().all(|s| s.epoch_steps == states[0].epoch_steps && s.step == 3));
            let left = states[0].epoch_steps as usize - 3;
            let (after, _) = run(&set, states, 2, left);
            let after: Vec<u32> = after.concat();
            assert_eq!(after.iter().collect::<HashSet<_>>().len(), after.len(), "world {world}: a sample twice");
            assert!(after.iter().all(|i| !used.contains(i)), "world {world}: a used sample read again");
            // What is left unread fits in less than one step of the new world.
            let total = set.samples() as usize;
            assert!(total - used.len() - after.len() < world * 2 * world.max(2), "world {world}: {} unread", total - used.len() - after.len());
        }
        let err = redistribute(&[], &set, &cfg(0, 1, 2), 0).unwrap_err().to_string();
        assert!(err.contains("no data-stream state"), "{err}");
        std::fs::remove_dir_all(&d).ok();
    }
}
