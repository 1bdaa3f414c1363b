//! One train run's settings: the CLI's options and the plan, translated
//! into the config every rank runs.

use super::*;
use crate::augment::{AugmentConfig, CropSpec};
use crate::data::ImageFolder;
use crate::fsdp::UnitSpec;
use crate::launch::RankEnv;
use crate::lr_schedule::LrSchedule;
use crate::metrics::{self};
use crate::optim::{Larc, OptimConfig};
use crate::precision::ComputePrecision;
use crate::swav::SwavLossConfig;
use cost_models::config::ModelConfig;
use cost_models::hardware::DeviceKind;
use cost_models::padding::ChannelPadding;
use cost_models::DType;
use runspec::plan::Plan;
use runspec::schedule::BackwardOrder;
use runspec::sharding::Sharding;
use std::path::PathBuf;
use std::time::Duration;
use tch::Device;

/// Everything a rank needs to train (built from a plan, or directly).
#[derive(Clone, Debug)]
pub struct TrainConfig {
    pub model: ModelConfig,
    pub units: Vec<UnitSpec>,
    pub checkpoint_segments: Vec<Vec<String>>,
    pub reshard_after_forward: bool,
    /// The crop groups' order in backward (`runspec::schedule`).
    pub backward_order: BackwardOrder,
    /// Channels padded to tensor-core multiples where the blocks run
    /// (`executor::padding`); parameters and checkpoints are unchanged.
    pub channel_padding: ChannelPadding,
    pub precision: ComputePrecision,
    /// Reduce-scatter gradients in fp32 instead of the compute dtype.
    pub fp32_reduce: bool,
    pub images_per_rank: usize,
    pub augment: AugmentConfig,
    pub swav: SwavLossConfig,
    pub optim: OptimConfig,
    pub lr_per_256: f64,
    pub warmup_fraction: f64,
    /// Ranks on one node: the warm-up starts from one node's images and is
    /// dropped on a single node (`schedule`).
    pub ranks_per_node: usize,
    /// The prototypes stay as initialised for this many first steps.
    pub freeze_prototypes_iters: u64,
    /// Length of the lr schedule.
    pub steps: u64,
    /// Stop once this many steps are done (schedule unchanged); for
    /// interrupt/resume and short smoke runs.
    pub stop_after: Option<u64>,
    pub seed: u64,
    /// An image folder, a `.txt` file list or tar shards (`data::Dataset::open`).
    pub data_dir: PathBuf,
    /// Loader worker threads, and the batches each holds ready ahead of the
    /// step (the recipe's `data.loader_workers` and `loader_prefetch`).
    pub workers: usize,
    pub prefetch: usize,
    /// Tar shards: samples in each rank's shuffle buffer.
    pub shuffle_buffer: usize,
    /// Metrics (`metrics.rank<r>.jsonl`) and checkpoints (`checkpoints/`).
    pub out_dir: PathBuf,
    pub checkpoint_every: Option<u64>,
    pub resume: bool,
    /// With `resume`: no checkpoint to resume is an error (a mistyped
    /// `--out` must not restart a long run from step 0).
    pub resume_required: bool,
    /// BN statistics per this many contiguous groups of the batch: a
    /// world-size-1 run with N reproduces N ranks' per-rank BN exactly.
    pub bn_groups: usize,
    /// Training-mode BN statistics over all ranks (SyncBN, all-reduced in
    /// forward and backward) instead of per rank; needs `bn_groups == 1`.
    pub sync_bn: bool,
    /// SyncBN over groups of this many consecutive ranks instead of all.
    pub sync_bn_group: Option<usize>,
    /// DDP, FSDP or hybrid sharding (`runspec::sharding`).
    pub sharding: Sharding,
    pub device: Device,
    /// Bound on rendezvous and every collective.
    pub timeout: Duration,
    /// What the plan predicted, set against the run's measurements at its end.
    pub predicted: metrics::PlanPrediction,
    pub progress: bool,
    /// Write the events the first step ran to `events.rank<r>.json` in
    /// `out_dir` (to check them against the plan's compiled schedule).
    pub record_events: bool,
}

fn dtype_precision(d: DType) -> ComputePrecision {
    match d {
        DType::Fp32 => ComputePrecision::Fp32,
        DType::Bf16 => ComputePrecision::Bf16,
        DType::Fp16 => ComputePrecision::Fp16,
    }
}

/// How often `train` saves a checkpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CheckpointEvery {
    Steps(u64),
    /// The plan's predicted interval (Young/Daly, `predicted.failures`).
    Auto,
}

impl std::fmt::Display for CheckpointEvery {
    /// As `--checkpoint-every` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            CheckpointEvery::Steps(n) => write!(f, "{n}"),
            CheckpointEvery::Auto => f.write_str("auto"),
        }
    }
}

impl std::str::FromStr for CheckpointEvery {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "auto" => Ok(CheckpointEvery::Auto),
            _ => s.parse::<u64>().ok().filter(|&n| n > 0).map(CheckpointEvery::Steps).ok_or_else(|| format!("`{s}`: a number of steps (>= 1) or `auto`")),
        }
    }
}

/// Options of `seerscale train` that are not in the plan.
#[derive(Clone, Debug)]
pub struct TrainArgs {
    pub plan: PathBuf,
    /// Start this many local ranks (None or 1: run in this process unless
    /// the environment already names a rank).
    pub nproc_per_node: Option<usize>,
    /// Override the schedule length (default: the recipe's total images /
    /// global batch).
    pub steps: Option<u64>,
    /// Image folder (default: `SEERSCALE_PHOTOS` or `.photos`).
    pub data: Option<PathBuf>,
    pub out: PathBuf,
    pub resume: bool,
    /// `--resume`: a checkpoint must be there (`--resume-if-any`: if one is).
    pub resume_required: bool,
    pub checkpoint_every: Option<CheckpointEvery>,
    pub stop_after: Option<u64>,
    pub seed: u64,
    /// Loader worker threads per rank (default: the plan's recipe's).
    pub workers: Option<usize>,
    /// Tar shards: samples in each rank's shuffle buffer.
    pub shuffle_buffer: usize,
    pub timeout: Duration,
    /// Run a GPU plan on CPU ranks (Gloo) anyway; GPU plans otherwise use
    /// CUDA device LOCAL_RANK with NCCL.
    pub force_cpu: bool,
    /// Intra-op threads per rank (default: this machine's cores divided by
    /// the ranks sharing it, so local ranks don't oversubscribe the CPU).
    pub threads: Option<usize>,
    /// BN statistics over all ranks (SyncBN, as SEER) even where the recipe keeps them per rank.
    pub sync_bn: bool,
    /// Write the events of the first step to `events.rank<r>.json`.
    pub record_events: bool,
}

impl TrainArgs {
    pub fn new(plan: impl Into<PathBuf>) -> TrainArgs {
        TrainArgs {
            plan: plan.into(),
            nproc_per_node: None,
            steps: None,
            data: None,
            out: PathBuf::from("runs/train"),
            resume: false,
            resume_required: false,
            checkpoint_every: None,
            stop_after: None,
            seed: 0,
            workers: None,
            shuffle_buffer: crate::data::DEFAULT_SHUFFLE_BUFFER,
            timeout: Duration::from_secs(120),
            force_cpu: false,
            threads: None,
            sync_bn: false,
            record_events: false,
        }
    }
}

/// The multi-crop augmentation a recipe's data section describes.
pub fn augment_for(r: &runspec::recipe::Recipe) -> AugmentConfig {
    let crops = r.data.crops.iter().map(|c| CropSpec { count: c.count as usize, resolution: c.resolution as u32, scale: (c.scale[0], c.scale[1]) }).collect();
    let mut augment = AugmentConfig::with_crops(crops);
    augment.color_strength = r.data.color_strength;
    augment.blur_p = r.data.blur_p;
    augment
}

impl TrainConfig {
    /// The run a plan describes, for a rank of `env`.
    pub fn from_plan(plan: &Plan, args: &TrainArgs, env: &RankEnv) -> Result<TrainConfig, TrainError> {
        if plan.world_size != env.world_size {
            let ranks = |n: usize| if n == 1 { "1 rank".to_string() } else { format!("{n} ranks") };
            let how = if plan.world_size <= plan.gpus_per_node {
                format!("use --nproc-per-node {}", plan.world_size)
            } else {
                format!("start {} under torchrun or SLURM", ranks(plan.world_size))
            };
            return Err(TrainError::Config(format!(
                "the plan is for {} but this job has {}: {how}, or plan for this job (`seerscale plan --recipe {} --gpus {}`)",
                ranks(plan.world_size),
                ranks(env.world_size),
                plan.recipe.name,
                env.world_size
            )));
        }
        let r = &plan.recipe;
        let augment = augment_for(r);
        let optim = match r.optim.kind {
            runspec::recipe::OptimKind::Sgd => OptimConfig::Sgd {
                momentum: r.optim.momentum,
                weight_decay: r.optim.weight_decay,
                larc: r.optim.larc_trust.map(|trust| Larc { trust, ..Larc::default() }),
            },
            runspec::recipe::OptimKind::Adam => OptimConfig::adam(r.optim.weight_decay),
        };
        let global = (plan.batch_per_rank * plan.world_size) as f64;
        let steps = args.steps.unwrap_or_else(|| (r.data.total_images / global).ceil().max(1.0) as u64);
        let data_dir = match &args.data {
            Some(d) => d.clone(),
            None => {
                let d = ImageFolder::default_root();
                if !d.exists() {
                    return Err(TrainError::Config(format!(
                        "no --data given, and the default image folder {} is not here (it is scikit-image's photos, linked into the clone by scripts/setup): pass --data DIR|LIST.txt or set SEERSCALE_PHOTOS",
                        d.display()
                    )));
                }
                d
            }
        };
        let device = match plan.hardware.kind {
            DeviceKind::Gpu if !args.force_cpu => {
                if !tch::Cuda::is_available() {
                    return Err(TrainError::Config(format!(
                        "the plan targets GPU hardware `{}` but CUDA is not available here (pass --cpu to run it on CPU ranks)",
                        plan.hardware.id
                    )));
                }
                if !crate::dist::nccl_available() {
                    return Err(TrainError::Config(format!("the plan targets GPUs but this build has no NCCL shim ({})", crate::dist::CUDA_SHIM)));
                }
                Device::Cuda(env.local_rank)
            }
            _ => Device::Cpu,
        };
        Ok(TrainConfig {
            model: plan.model.clone(),
            units: plan.units.iter().map(|u| UnitSpec { name: u.name.clone(), members: u.members.clone() }).collect(),
            checkpoint_segments: plan.checkpoint_segments.clone(),
            reshard_after_forward: plan.reshard_after_forward,
            backward_order: plan.backward_order,
            channel_padding: plan.channel_padding,
            precision: dtype_precision(plan.precision.compute),
            fp32_reduce: plan.precision.reduce == DType::Fp32 && plan.precision.compute != DType::Fp32,
            images_per_rank: plan.batch_per_rank,
            augment,
            swav: SwavLossConfig {
                temperature: r.swav.temperature,
                epsilon: r.swav.epsilon,
                sinkhorn_iters: r.swav.sinkhorn_iterations,
                crops_for_assign: r.swav.crops_for_assign.iter().map(|&c| c as i64).collect(),
                queue_length: r.swav.queue_length_for((plan.batch_per_rank * plan.world_size) as u64) as i64,
                queue_start_iter: r.swav.queue_start_iter,
            },
            optim,
            lr_per_256: r.optim.lr_per_256,
            warmup_fraction: r.optim.warmup_fraction,
            ranks_per_node: plan.gpus_per_node,
            freeze_prototypes_iters: r.swav.freeze_prototypes_iters,
            steps,
            stop_after: args.stop_after,
            seed: args.seed,
            data_dir,
            workers: args.workers.unwrap_or(r.data.loader_workers),
            prefetch: r.data.loader_prefetch,
            shuffle_buffer: args.shuffle_buffer,
            out_dir: args.out.clone(),
            checkpoint_every: match args.checkpoint_every {
                None => None,
                Some(CheckpointEvery::Steps(n)) => Some(n),
                Some(CheckpointEvery::Auto) => Some(plan.predicted.failures.map(|f| f.checkpoint_interval_steps.max(1)).ok_or_else(|| {
                    TrainError::Config("--checkpoint-every auto: the plan has no predicted checkpoint interval (re-plan with this seerscale)".into())
                })?),
            },
            resume: args.resume,
            resume_required: args.resume_required,
            bn_groups: 1,
            // The plan's recipe may ask for it; --sync-bn forces it on.
            sync_bn: args.sync_bn || r.sync_bn,
            sync_bn_group: r.sync_bn_group_for(plan.world_size).map_err(TrainError::Config)?,
            sharding: plan.sharding,
            device,
            timeout: args.timeout,
            predicted: metrics::PlanPrediction::of(plan),
            progress: true,
            record_events: args.record_events,
        })
    }

    /// The lr schedule of this run for `world` ranks.
    pub fn lr_schedule(&self, world: usize) -> LrSchedule {
        LrSchedule {
            base_lr_per_256: self.lr_per_256,
            global_batch: self.images_per_rank * world,
            node_batch: self.images_per_rank * self.ranks_per_node.clamp(1, world.max(1)),
            total_steps: self.steps,
            warmup_fraction: self.warmup_fraction,
            final_ratio: 0.001,
        }
    }
}
