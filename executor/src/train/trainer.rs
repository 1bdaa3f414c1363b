//! The per-rank engine: one explicit step, and the loop that runs them.

use super::fault::fault_injection;
use super::*;
use crate::data::{Batch, DataError, DataLoader, DataPosition, Dataset, LoaderConfig};
use crate::dist::{ProcessGroup, ReduceOp};
use crate::fsdp::{Fsdp, FsdpOptions};
use crate::groups::RankGroups;
use crate::lr_schedule::LrSchedule;
use crate::memstats::{self, MemDevice};
use crate::metrics::{self, MetricsWriter, StepMetrics};
use crate::model::{BnState, Mode, ModelArch};
use crate::op_count;
use crate::optim::{Optimizer, StepStats};
use crate::precision::{ComputePrecision, LossScaler};
use crate::reduce::ReduceError;
use crate::step::{self, Checkpointing, LossInput};
use crate::stream::StreamStart;
use crate::swav::{self, SwavQueue};
use runspec::schedule::{Event, Schedule as StepSchedule};
use std::path::Path;
use std::time::Instant;
use tch::{Device, Kind, Tensor};

/// A step queued on the device whose scalars have not been read yet.
pub struct PendingStep {
    /// Global loss (fp64, one element).
    pub(super) loss: Tensor,
    pub(super) stats: StepStats,
    pub(super) lr: f64,
}

/// How the step's optimiser update went.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct StepOutcome {
    /// Global loss (sum of every rank's share).
    pub loss: f64,
    pub skipped: bool,
    pub grad_norm: f64,
    pub lr: f64,
}

/// The per-rank engine.
pub struct Trainer<'pg> {
    /// The world group (data, loss, checkpoints) and the sharding's subgroups.
    pub(super) pg: &'pg ProcessGroup,
    pub(super) groups: &'pg RankGroups,
    pub(super) cfg: TrainConfig,
    pub(super) arch: ModelArch,
    pub(super) blocks: Vec<String>,
    pub(super) fsdp: Fsdp<'pg>,
    pub(super) bn: BnState,
    pub(super) optimizer: Optimizer,
    pub(super) schedule: LrSchedule,
    /// The plan's step, compiled once (`runspec::schedule`).
    pub(super) step_events: StepSchedule,
    /// The events of the step being recorded (`record_events`).
    pub(super) recorded: Option<Vec<Event>>,
    pub(super) events_written: bool,
    pub(super) scaler: LossScaler,
    pub(super) mode: Mode<'pg>,
    /// SwAV's queue of past embeddings, when the recipe keeps one.
    pub(super) queue: Option<SwavQueue>,
    /// Steps completed.
    pub(super) step: u64,
    pub(super) data_pos: DataPosition,
    /// Tar shards: this rank's stream state after the last batch (what a
    /// checkpoint saves), or on resume every old rank's to deal again.
    pub(super) data_stream: StreamStart,
    /// Writes and finds the run's checkpoints.
    pub(super) checkpointer: super::checkpointer::Checkpointer,
}

impl<'pg> Trainer<'pg> {
    pub fn new(groups: &'pg RankGroups, cfg: &TrainConfig) -> Result<Trainer<'pg>, TrainError> {
        let pg = groups.world_group();
        if groups.sharding() != cfg.sharding.resolved(pg.world_size()) {
            return Err(TrainError::Config(format!(
                "the process groups are for {} but the run asks for {}",
                groups.sharding(),
                cfg.sharding.resolved(pg.world_size())
            )));
        }
        // Count CPU memory from here on (before any tensor of the run exists;
        // idempotent).
        if cfg.device == Device::Cpu {
            memstats::install_cpu_counter()?;
        }
        if let Device::Cuda(d) = cfg.device {
            crate::cuda_setup(d);
        }
        tch::manual_seed(cfg.seed as i64);
        let arch = ModelArch::with_padding(&cfg.model, cfg.channel_padding)?;
        let specs = arch.param_specs();
        let blocks = arch.block_names();
        let opts = FsdpOptions {
            reshard_after_forward: cfg.reshard_after_forward,
            precision: cfg.precision.policy(cfg.fp32_reduce || cfg.precision == ComputePrecision::Fp32),
            device: cfg.device,
        };
        let seed = cfg.seed;
        let fsdp = Fsdp::new(groups, &specs, &blocks, &cfg.units, opts, &mut |p| p.init_tensor(seed).map_err(|e| e.to_string()))?;
        let ckpt = Checkpointing::new(&blocks, &cfg.checkpoint_segments).map_err(|e| TrainError::Step { step: 0, source: e })?;
        let reduction = groups.sharding().reduction(pg.world_size());
        let layout = fsdp.layout().with_crop_groups(cfg.augment.crops.len(), arch.trunk_len());
        let step_events = StepSchedule::compile(&layout, ckpt.segments(), cfg.reshard_after_forward, reduction, cfg.backward_order);
        let schedule = cfg.lr_schedule(pg.world_size());
        schedule.validate()?;
        if !cfg.images_per_rank.is_multiple_of(cfg.bn_groups.max(1)) {
            return Err(TrainError::Config(format!("bn_groups {} does not divide {} images per rank", cfg.bn_groups, cfg.images_per_rank)));
        }
        if cfg.sync_bn && cfg.bn_groups > 1 {
            return Err(TrainError::Config(format!(
                "sync_bn takes BN statistics over all ranks; it cannot be combined with bn_groups {} (per-rank BN emulation)",
                cfg.bn_groups
            )));
        }
        op_count::install().map_err(|e| TrainError::Config(e.to_string()))?;
        let scaler = LossScaler::for_precision(cfg.precision);
        let mut optimizer = Optimizer::new(cfg.optim.clone(), specs.len())?;
        optimizer.skip_non_finite(scaler.enabled);
        if cfg.freeze_prototypes_iters > 0 {
            let protos: Vec<usize> = specs.iter().enumerate().filter(|(_, p)| p.name == "head.proto.weight").map(|(i, _)| i).collect();
            optimizer.freeze(&protos, cfg.freeze_prototypes_iters as i64)?;
        }
        let queue = SwavQueue::new(&cfg.swav, cfg.images_per_rank as i64, pg.world_size() as i64, arch.embedding_dim(), cfg.device)?;
        let mode = Mode::train().with_bn_groups(cfg.bn_groups.max(1));
        let mode = if cfg.sync_bn { mode.with_sync_bn(groups.sync_bn()) } else { mode };
        Ok(Trainer {
            pg,
            groups,
            arch: arch.clone(),
            bn: BnState::new(&arch, cfg.device),
            optimizer,
            schedule,
            step_events,
            recorded: None,
            events_written: false,
            scaler,
            mode,
            queue,
            step: 0,
            data_pos: DataPosition::default(),
            data_stream: StreamStart::Fresh,
            blocks,
            fsdp,
            checkpointer: super::checkpointer::Checkpointer::new(&cfg.out_dir, cfg.progress),
            cfg: cfg.clone(),
        })
    }

    pub fn fsdp(&self) -> &Fsdp<'pg> {
        &self.fsdp
    }
    pub fn loss_scaler(&self) -> &LossScaler {
        &self.scaler
    }
    pub fn bn(&self) -> &BnState {
        &self.bn
    }

    /// Sums a tensor over the world (the loss, Sinkhorn).
    pub(super) fn all_reduce_sum(&self) -> impl Fn(&mut Tensor) -> Result<(), ReduceError> + 'pg {
        let pg = self.pg;
        move |t: &mut Tensor| pg.all_reduce_(t, ReduceOp::Sum).map_err(|e| ReduceError(e.to_string()))
    }

    /// Sums a tensor over the shard group (norms of sharded parameters);
    /// the identity where this rank holds the parameters whole.
    pub(super) fn shard_sum(&self) -> impl Fn(&mut Tensor) -> Result<(), ReduceError> + 'pg {
        let g = self.groups.shard();
        move |t: &mut Tensor| match g {
            Some(g) => g.all_reduce_(t, ReduceOp::Sum).map_err(|e| ReduceError(e.to_string())),
            None => Ok(()),
        }
    }

    /// Forward + backward of one batch: fills the shard gradients (zeroed
    /// first) and returns the global loss (a one-element fp64 tensor on the
    /// device). Collective.
    pub fn compute_grads(&mut self, batch: &Batch) -> Result<Tensor, TrainError> {
        let ar = self.all_reduce_sum();
        let t_proto = Instant::now();
        // SwAV keeps the prototypes on the unit sphere: normalise the rows
        // of the master weight before each step (norms reduced over shards).
        if let Some((slice, offset)) = self.fsdp.local_slice("head.proto.weight")? {
            let (k, d) = (self.arch.prototypes, self.arch.embedding_dim());
            swav::normalize_rows_sharded_(&slice, offset, k, d, &self.shard_sum())?;
        }
        crate::phase_timer::add_synced("proto_norm", t_proto);
        let t0 = Instant::now();
        self.fsdp.zero_grad()?;
        crate::phase_timer::add_synced("zero_grad", t0);
        let kind = self.cfg.precision.compute_kind();
        let inputs: Vec<Tensor> = batch.groups.iter().map(|t| t.f_to_device(self.cfg.device).and_then(|t| t.f_to_kind(kind))).collect::<Result<_, _>>()?;
        let layout = batch.layout.clone();
        let global_images = layout.images * self.pg.world_size() as i64;
        let swav_cfg = self.cfg.swav.clone();
        let step = self.step;
        let queue = &mut self.queue;
        let mut loss_fn = |head: &LossInput| -> Result<Tensor, String> {
            let queued = match queue.as_ref() {
                Some(q) => {
                    let protos = head.params.get("head.proto.weight").ok_or("the last block has no `head.proto.weight`")?;
                    q.scores(protos, layout.images).map_err(|e| e.to_string())?
                }
                None => None,
            };
            let loss = swav::swav_loss(head.scores, &layout, &swav_cfg, global_images, queued.as_ref(), &ar).map_err(|e| e.to_string())?;
            if let Some(q) = queue.as_mut().filter(|q| q.fills_at(step)) {
                q.push(head.embedding, &layout, &swav_cfg.crops_for_assign).map_err(|e| e.to_string())?;
            }
            Ok(loss)
        };
        let t_fb = Instant::now();
        let pass = step::forward_backward(
            &mut self.fsdp,
            &self.arch,
            &self.blocks,
            &mut self.bn,
            self.step_events.pass(),
            &self.mode,
            &inputs,
            &mut loss_fn,
            self.scaler.scale(),
            self.recorded.as_mut(),
        )
        .map_err(|source| TrainError::Step { step, source })?;
        crate::phase_timer::add("fwd_bwd", t_fb);
        let t0 = Instant::now();
        // Summed in fp64 on the device: nothing waits for the value here.
        let total = pass.loss.f_to_kind(Kind::Double)?.f_reshape([1])?;
        self.pg.all_reduce_(&total, ReduceOp::Sum)?;
        crate::phase_timer::add_synced("loss_all_reduce", t0);
        if let Some(r) = self.recorded.as_mut() {
            r.push(Event::LossAllReduce);
        }
        Ok(total)
    }

    /// Unscales the gradients and runs the optimiser on the shards, all on
    /// the device: on a step whose gradients overflowed (fp16) the
    /// optimiser leaves everything as it was, decided on the device.
    pub fn apply_grads(&mut self, loss: Tensor) -> Result<PendingStep, TrainError> {
        let lr = self.schedule.lr(self.step);
        let used = self.scaler.scale();
        if used != 1.0 {
            self.fsdp.scale_grads(1.0 / used)?;
        }
        let shards = self.fsdp.shards();
        let stats = self.optimizer.step(&shards, lr, &self.shard_sum())?;
        Ok(PendingStep { loss, stats, lr })
    }

    /// The step's scalars, read back in one copy (the step's one
    /// synchronisation, after everything it queued): the loss-scale
    /// decision, divergence, and what the metrics record. [`Trainer::train_step`]
    /// is `compute_grads`, `apply_grads`, then this.
    pub fn finish_step(&mut self, pending: PendingStep) -> Result<StepOutcome, TrainError> {
        let PendingStep { loss, stats, lr } = pending;
        let packed = Tensor::f_cat(
            &[loss.f_reshape([1])?, stats.grad_norm.f_to_kind(Kind::Double)?.f_reshape([1])?, stats.finite.f_to_kind(Kind::Double)?.f_reshape([1])?],
            0,
        )?;
        let v = op_count::read_back(&packed)?;
        let (loss, grad_norm, finite) = (v[0], v[1], v[2] != 0.0);
        let skipped = self.scaler.enabled && !finite;
        self.scaler.update(skipped);
        if skipped {
            self.optimizer.unstep();
        }
        if !self.scaler.enabled && !loss.is_finite() {
            return Err(TrainError::Diverged { step: self.step, loss });
        }
        self.step += 1;
        Ok(StepOutcome { loss, skipped, grad_norm: if skipped { f64::NAN } else { grad_norm }, lr })
    }

    /// One full training step on `batch`.
    pub fn train_step(&mut self, batch: &Batch) -> Result<StepOutcome, TrainError> {
        if self.cfg.record_events && !self.events_written {
            self.recorded = Some(vec![Event::Prologue]);
        }
        let loss = self.compute_grads(batch)?;
        let t0 = Instant::now();
        let pending = self.apply_grads(loss)?;
        crate::phase_timer::add_synced("optimizer", t0);
        let r = self.finish_step(pending);
        if let Some(mut events) = self.recorded.take() {
            events.push(Event::Optimizer);
            self.write_events(events)?;
        }
        crate::phase_timer::flush(self.pg.rank(), self.step);
        r
    }

    /// Writes the events one step ran (`record_events`).
    pub(super) fn write_events(&mut self, events: Vec<Event>) -> Result<(), TrainError> {
        let path = self.cfg.out_dir.join(format!("events.rank{}.json", self.pg.rank()));
        let text = serde_json::to_string_pretty(&StepSchedule { events }).map_err(|e| TrainError::Config(e.to_string()))?;
        std::fs::create_dir_all(&self.cfg.out_dir)
            .and_then(|_| std::fs::write(&path, text))
            .map_err(|e| TrainError::Config(format!("writing {}: {e}", path.display())))?;
        self.events_written = true;
        Ok(())
    }

    pub(super) fn loader(&self) -> Result<DataLoader, TrainError> {
        let data = Dataset::open(&self.cfg.data_dir)?;
        Ok(DataLoader::new(
            data,
            LoaderConfig {
                seed: self.cfg.seed,
                rank: self.pg.rank(),
                world: self.pg.world_size(),
                images_per_rank: self.cfg.images_per_rank,
                augment: self.cfg.augment.clone(),
                workers: self.cfg.workers.max(1),
                prefetch: self.cfg.prefetch.max(1),
                start: self.data_pos,
                shuffle_buffer: self.cfg.shuffle_buffer,
                stream_start: self.data_stream.clone(),
            },
        )?)
    }
}

impl<'pg> Trainer<'pg> {
    /// The whole run: resume, loop, metrics, checkpoints, final report.
    pub fn fit(&mut self) -> Result<TrainReport, TrainError> {
        let rank = self.pg.rank();
        let world = self.pg.world_size();
        if self.cfg.resume {
            match self.restore_latest()? {
                Some(s) if rank == 0 => println!("resumed from step {s} ({})", self.checkpoint_dir().display()),
                Some(_) => {}
                None if self.cfg.resume_required => {
                    return Err(TrainError::Config(format!(
                        "--resume: no checkpoint under {} (is --out right? drop --resume to start from step 0)",
                        self.checkpoint_dir().display()
                    )))
                }
                None if rank == 0 => println!("no checkpoint under {} yet: starting from step 0", self.checkpoint_dir().display()),
                None => {}
            }
        }
        let end = self.cfg.stop_after.map_or(self.cfg.steps, |s| s.min(self.cfg.steps));
        let mut loader = self.loader()?;
        let mem = MemDevice::of(self.cfg.device);
        let bar = (rank == 0 && self.cfg.progress).then_some((self.step, end));
        let mut writer = MetricsWriter::open(&self.cfg.out_dir, rank, self.cfg.resume.then_some(self.step), bar)?;
        let mut all = Vec::new();
        let global_images = (self.cfg.images_per_rank * world) as f64;
        let mut warned_skipped = 0u64;
        while self.step < end {
            fault_injection(rank, self.step);
            memstats::reset_peak(mem)?;
            let _ = self.pg.take_comm_time();
            let t0 = Instant::now();
            let batch = loader.next().ok_or(DataError::WorkerGone)??;
            let data_wait = t0.elapsed().as_secs_f64();
            let counts = op_count::HostCounts::now();
            // Ends with the step's one read-back, after every kernel it queued.
            let out = self.train_step(&batch)?;
            let counts = op_count::HostCounts::now().since(counts);
            self.data_pos = loader.position();
            if let Some(s) = loader.stream_state() {
                self.data_stream = StreamStart::Mine(s.clone());
            }
            let dt = t0.elapsed().as_secs_f64();
            let m = StepMetrics {
                rank,
                step: self.step - 1,
                loss: out.loss,
                lr: out.lr,
                step_time_s: dt,
                images_per_s: global_images / dt,
                peak_memory_bytes: memstats::peak(mem)?.0,
                comm_time_s: self.pg.take_comm_time().as_secs_f64(),
                data_wait_s: data_wait,
                loss_scale: self.scaler.scale(),
                skipped: out.skipped,
                grad_norm: out.grad_norm,
                sync_bn: self.cfg.sync_bn,
                skipped_images: loader.skipped_files() as u64,
                aten_ops: counts.ops,
                host_syncs: counts.syncs,
                host_rss_bytes: memstats::rss_bytes().unwrap_or(0),
            };
            if m.skipped_images > warned_skipped {
                warned_skipped = m.skipped_images;
                let paths: Vec<String> = loader.skipped_paths().into_iter().take(3).collect();
                eprintln!("warning: {} unreadable image file(s) skipped so far on this rank, e.g. {}", m.skipped_images, paths.join(", "));
            }
            writer.record(&m)?;
            all.push(m);
            if self.cfg.checkpoint_every.is_some_and(|k| k > 0 && self.step.is_multiple_of(k)) || (self.cfg.checkpoint_every.is_some() && self.step == end) {
                self.save_checkpoint()?;
            }
        }
        writer.finish();
        // Every rank's file is complete once all ranks are past this barrier.
        self.pg.barrier()?;
        let records = if rank == 0 { metrics::read_run(&self.cfg.out_dir, world).unwrap_or_else(|_| all.clone()) } else { all.clone() };
        let summary = metrics::summarize_run(&records, global_images);
        let comparison = match (&summary, rank) {
            (Some(s), 0) => {
                let table = metrics::comparison_table(s, &self.cfg.predicted);
                let bn = if self.cfg.sync_bn { "SyncBN" } else { "BN per rank" };
                println!(
                    "measured vs predicted ({world} ranks, {} steps, steady state after step {}, slowest rank per step, {bn}):\n{table}",
                    all.len(),
                    metrics::DEFAULT_WARMUP.min(all.len().saturating_sub(1) as u64)
                );
                // Each rank's loader counts its own unreadable files.
                let mut per_rank: std::collections::BTreeMap<usize, u64> = std::collections::BTreeMap::new();
                for m in &records {
                    let e = per_rank.entry(m.rank).or_default();
                    *e = (*e).max(m.skipped_images);
                }
                if per_rank.values().any(|&n| n > 0) {
                    let counts: Vec<String> = per_rank.iter().map(|(r, n)| format!("{n} on rank {r}")).collect();
                    println!("unreadable image files skipped: {} (warnings above name them)", counts.join(", "));
                }
                Some(table)
            }
            _ => None,
        };
        Ok(TrainReport { rank, world_size: world, metrics: all, summary, comparison })
    }
}

/// Loads a batch for tests and tools: rank `rank`'s part of global step
/// `position` of `dir`.
pub fn load_batch(dir: &Path, cfg: &TrainConfig, rank: usize, world: usize, position: DataPosition) -> Result<Batch, TrainError> {
    let mut l = DataLoader::new(
        Dataset::open(dir)?,
        LoaderConfig {
            seed: cfg.seed,
            rank,
            world,
            images_per_rank: cfg.images_per_rank,
            augment: cfg.augment.clone(),
            workers: 1,
            prefetch: 1,
            start: position,
            shuffle_buffer: cfg.shuffle_buffer,
            stream_start: StreamStart::Fresh,
        },
    )?;
    Ok(l.next().ok_or(DataError::WorkerGone)??)
}
