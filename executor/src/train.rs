//! The training loop, spelled out step by step (torchtitan style):
//! normalise prototypes → load batch → forward/backward block by block
//! (FSDP gathers, checkpoint recompute, reduce-scatter) → loss-scale check →
//! LARC-SGD on the shards → metrics → maybe checkpoint.
//!
//! [`run`] is the CLI entry: launcher, single process, or one rank of a job
//! started by torchrun / SLURM / our own launcher. [`Trainer`] is the
//! per-rank engine, usable directly (tests drive it step by step).

use crate::augment::{AugmentConfig, CropSpec};
use crate::checkpoint::{self, CheckpointError, RankMeta, RankState};
use crate::data::{Batch, DataError, DataLoader, DataPosition, Dataset, ImageFolder, LoaderConfig};
use crate::dist::{Backend, DistError, GroupConfig, ProcessGroup, ReduceOp};
use crate::elastic;
use crate::fsdp::{Fsdp, FsdpError, FsdpOptions, UnitSpec};
use crate::groups::RankGroups;
use crate::launch::{self, LaunchError, LaunchOptions, RankEnv};
use crate::lr_schedule::{LrSchedule, LrScheduleError};
use crate::memstats::{self, MemDevice, MemError};
use crate::metrics::{self, MetricsError, MetricsWriter, RunSummary, StepMetrics};
use crate::model::{BnState, Mode, ModelArch, ModelError, SyncBn};
use crate::op_count;
use crate::optim::{Larc, OptimConfig, OptimError, Optimizer, StepStats};
use crate::precision::{ComputePrecision, LossScaler};
use crate::reduce::ReduceError;
use crate::step::{self, Checkpointing, LossInput, StepError};
use crate::stream::{StreamStart, StreamState};
use crate::swav::{self, SwavError, SwavLossConfig, SwavQueue};
use cost_models::config::ModelConfig;
use cost_models::hardware::DeviceKind;
use cost_models::padding::ChannelPadding;
use cost_models::DType;
use runspec::plan::Plan;
use runspec::schedule::{BackwardOrder, Event, Schedule as StepSchedule};
use runspec::sharding::Sharding;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tch::{Device, Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum TrainError {
    #[error(transparent)]
    Plan(#[from] runspec::plan::PlanError),
    #[error("plan/config: {0}")]
    Config(String),
    #[error(transparent)]
    Dist(#[from] DistError),
    #[error(transparent)]
    Fsdp(#[from] FsdpError),
    #[error("step {step}: {source}")]
    Step { step: u64, source: StepError },
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error(transparent)]
    Swav(#[from] SwavError),
    #[error(transparent)]
    LrSchedule(#[from] LrScheduleError),
    #[error(transparent)]
    Data(#[from] DataError),
    #[error(transparent)]
    Memory(#[from] MemError),
    #[error(transparent)]
    Metrics(#[from] MetricsError),
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error(transparent)]
    Launch(#[from] LaunchError),
    #[error("step {step}: loss is {loss} (diverged)")]
    Diverged { step: u64, loss: f64 },
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

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

/// What a finished rank reports.
#[derive(Clone, Debug)]
pub struct TrainReport {
    pub rank: usize,
    pub world_size: usize,
    /// Steps run by this invocation (after a resume: only the new ones).
    pub metrics: Vec<StepMetrics>,
    /// The run's steady-state summary (rank 0: over every rank's records
    /// it can read; other ranks: their own).
    pub summary: Option<RunSummary>,
    /// Printed by rank 0: measured vs predicted.
    pub comparison: Option<String>,
}

/// `seerscale train`: run as a rank if the environment names one, else start
/// `nproc_per_node` local ranks of this same program (forwarding our own
/// arguments), else train in this process. Returns rank 0's report when it
/// ran here (None in the launcher process).
pub fn run(args: &TrainArgs) -> Result<Option<TrainReport>, TrainError> {
    let env = RankEnv::from_env()?;
    let launched = std::env::var_os("RANK").is_some();
    match (env, args.nproc_per_node) {
        // A rank: started by us, torchrun, or srun (a SLURM allocation's
        // shell also has SLURM_PROCID, so --nproc-per-node wins over it).
        (Some(env), n) if launched || n.unwrap_or(1) <= 1 => run_rank(args, &env).map(Some),
        (_, Some(n)) if n > 1 => {
            check_before_launch(args, n)?;
            let forwarded: Vec<OsString> = std::env::args_os().skip(1).collect();
            launch_ranks(&forwarded, n, args.timeout)?;
            Ok(None)
        }
        (_, _) => {
            let port = crate::dist::free_port().map_err(|e| TrainError::Config(format!("no free port: {e}")))?;
            run_rank(args, &RankEnv::single(port)).map(Some)
        }
    }
}

/// What each of `n` local ranks would refuse (the plan file, its world
/// size, the data folder, the device), checked once by the launcher so
/// that it is reported once rather than by every rank.
pub fn check_before_launch(args: &TrainArgs, n: usize) -> Result<(), TrainError> {
    let plan = Plan::load(&args.plan)?;
    let env = RankEnv { rank: 0, world_size: n, local_rank: 0, master_addr: "127.0.0.1".into(), master_port: 0 };
    TrainConfig::from_plan(&plan, args, &env).map(drop)
}

/// Starts `n` local ranks of this program with `forwarded` arguments and
/// waits for them; the first failing rank ends the job.
pub fn launch_ranks(forwarded: &[OsString], n: usize, timeout: Duration) -> Result<(), TrainError> {
    let program = std::env::current_exe().map_err(|e| TrainError::Config(format!("cannot find this program's path: {e}")))?;
    // Survivors of a failed rank get the collective timeout plus a margin
    // to stop on their own before they are killed.
    let opts = LaunchOptions { grace: timeout + Duration::from_secs(10), ..LaunchOptions::local(n) };
    Ok(launch::launch_local(&program, forwarded, &opts)?)
}

/// One rank of a plan's run.
pub fn run_rank(args: &TrainArgs, env: &RankEnv) -> Result<TrainReport, TrainError> {
    let plan = Plan::load(&args.plan)?;
    let cfg = TrainConfig::from_plan(&plan, args, env)?;
    tch::set_num_threads(threads_per_rank(args.threads, plan.gpus_per_node.min(plan.world_size)) as i32);
    train_rank(&cfg, env)
}

/// Intra-op threads for one rank: `requested`, else the cores divided among
/// the ranks on this node (torchrun's LOCAL_WORLD_SIZE when set).
pub fn threads_per_rank(requested: Option<usize>, ranks_per_node: usize) -> usize {
    if let Some(t) = requested {
        return t.max(1);
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let local = std::env::var("LOCAL_WORLD_SIZE").ok().and_then(|v| v.parse().ok()).unwrap_or(ranks_per_node);
    (cores / local.max(1)).max(1)
}

/// Trains with an explicit config as rank `env.rank` (all ranks call it).
pub fn train_rank(cfg: &TrainConfig, env: &RankEnv) -> Result<TrainReport, TrainError> {
    let backend = match cfg.device {
        Device::Cuda(d) => Backend::Nccl { device: d },
        _ => Backend::Gloo,
    };
    let pg = ProcessGroup::new(&GroupConfig {
        master_addr: env.master_addr.clone(),
        master_port: env.master_port,
        rank: env.rank,
        world_size: env.world_size,
        backend,
        timeout: cfg.timeout,
    })?;
    let groups = RankGroups::new(pg, cfg.sharding, cfg.sync_bn_group)?;
    let mut trainer = Trainer::new(&groups, cfg)?;
    trainer.fit()
}

/// SyncBN through this group: the model's BN sees only the [`SyncBn`]
/// trait, the collectives stay in `dist`.
impl SyncBn for ProcessGroup {
    fn batch_norm(&self, x: &Tensor, weight: &Tensor, bias: &Tensor, running: Option<(&Tensor, &Tensor, f64)>, eps: f64) -> Result<Tensor, ReduceError> {
        self.sync_batch_norm(x, weight, bias, running, eps).map_err(|e| ReduceError(e.to_string()))
    }
}

/// A step queued on the device whose scalars have not been read yet.
pub struct PendingStep {
    /// Global loss (fp64, one element).
    loss: Tensor,
    stats: StepStats,
    lr: f64,
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
    pg: &'pg ProcessGroup,
    groups: &'pg RankGroups,
    cfg: TrainConfig,
    arch: ModelArch,
    blocks: Vec<String>,
    fsdp: Fsdp<'pg>,
    bn: BnState,
    optimizer: Optimizer,
    schedule: LrSchedule,
    /// The plan's step, compiled once (`runspec::schedule`).
    step_events: StepSchedule,
    /// The events of the step being recorded (`record_events`).
    recorded: Option<Vec<Event>>,
    events_written: bool,
    scaler: LossScaler,
    mode: Mode<'pg>,
    /// SwAV's queue of past embeddings, when the recipe keeps one.
    queue: Option<SwavQueue>,
    /// Steps completed.
    step: u64,
    data_pos: DataPosition,
    /// Tar shards: this rank's stream state after the last batch (what a
    /// checkpoint saves), or on resume every old rank's to deal again.
    data_stream: StreamStart,
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
    fn all_reduce_sum(&self) -> impl Fn(&mut Tensor) -> Result<(), ReduceError> + 'pg {
        let pg = self.pg;
        move |t: &mut Tensor| pg.all_reduce_(t, ReduceOp::Sum).map_err(|e| ReduceError(e.to_string()))
    }

    /// Sums a tensor over the shard group (norms of sharded parameters);
    /// the identity where this rank holds the parameters whole.
    fn shard_sum(&self) -> impl Fn(&mut Tensor) -> Result<(), ReduceError> + 'pg {
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
    fn write_events(&mut self, events: Vec<Event>) -> Result<(), TrainError> {
        let path = self.cfg.out_dir.join(format!("events.rank{}.json", self.pg.rank()));
        let text = serde_json::to_string_pretty(&StepSchedule { events }).map_err(|e| TrainError::Config(e.to_string()))?;
        std::fs::create_dir_all(&self.cfg.out_dir)
            .and_then(|_| std::fs::write(&path, text))
            .map_err(|e| TrainError::Config(format!("writing {}: {e}", path.display())))?;
        self.events_written = true;
        Ok(())
    }

    fn loader(&self) -> Result<DataLoader, TrainError> {
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

    fn checkpoint_dir(&self) -> PathBuf {
        self.cfg.out_dir.join("checkpoints")
    }

    fn unit_names(&self) -> Vec<String> {
        self.fsdp.master_shards().into_iter().map(|(n, _)| n).collect()
    }

    /// Saves this rank's shard (collective: ends with a barrier and rank 0
    /// publishing the step).
    pub fn save_checkpoint(&self) -> Result<(), TrainError> {
        let dir = self.checkpoint_dir();
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
        checkpoint::save_rank(&dir, &RankState { meta, tensors })?;
        self.pg.barrier()?;
        if self.pg.rank() == 0 {
            checkpoint::publish(&dir, self.step)?;
            if self.cfg.progress {
                eprintln!("checkpoint: step {} written to {}", self.step, checkpoint::step_dir(&dir, self.step).display());
            }
        }
        self.pg.barrier()?;
        Ok(())
    }

    /// Restores the latest published checkpoint, if any; returns its step.
    pub fn restore_latest(&mut self) -> Result<Option<u64>, TrainError> {
        let (rank, world) = (self.pg.rank(), self.pg.world_size());
        let sharding = self.groups.sharding();
        let (shard_rank, shard_size) = self.groups.shard_rank_and_size();
        let layout = elastic::NewLayout { rank, world, shard_rank, shard_size };
        // The newest step every rank finds complete (all-reduced, so all
        // ranks take the same one).
        let mut chosen = None;
        for sd in checkpoint::published(&self.checkpoint_dir())? {
            let old = checkpoint::read_meta(&sd, 0);
            let units = self.unit_names();
            let same = old.as_ref().is_ok_and(|m| m.world_size == world && m.sharding.resolved(m.world_size) == sharding && m.units == units);
            let reads: Vec<usize> = match &old {
                Ok(m) if !same => elastic::old_ranks_read(m, &layout),
                _ => vec![rank],
            };
            let mine = old.map(|_| ()).and_then(|_| reads.iter().try_for_each(|&r| checkpoint::verify_rank(&sd, r)));
            if let Err(e) = &mine {
                eprintln!("warning: rank {rank}: {e}; trying the checkpoint before it");
            }
            let flag = Tensor::from_slice(&[if mine.is_ok() { 0f32 } else { 1.0 }]).f_to_device(self.cfg.device)?;
            self.pg.all_reduce_(&flag, ReduceOp::Max)?;
            if flag.f_double_value(&[0])? == 0.0 {
                chosen = Some((sd, same));
                break;
            }
        }
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

/// `SEERSCALE_FAULT=rank=R,step=S[,once=FILE]` makes rank R abort (as a
/// crash would) when it reaches step S: how the tests and operators check
/// that a dead rank stops the whole job with a clear error instead of a
/// hang. With `once`, only if FILE does not exist yet (it is created), so a
/// restarted job runs through.
fn fault_injection(rank: usize, step: u64) {
    let Ok(spec) = std::env::var("SEERSCALE_FAULT") else { return };
    let mut r = None;
    let mut s = None;
    let mut once = None;
    for kv in spec.split(',') {
        match kv.split_once('=') {
            Some(("rank", v)) => r = v.trim().parse::<usize>().ok(),
            Some(("step", v)) => s = v.trim().parse::<u64>().ok(),
            Some(("once", v)) => once = Some(PathBuf::from(v.trim())),
            _ => {}
        }
    }
    if r == Some(rank) && s == Some(step) {
        if let Some(f) = once {
            if std::fs::OpenOptions::new().write(true).create_new(true).open(&f).is_err() {
                return;
            }
        }
        eprintln!("rank {rank}: SEERSCALE_FAULT: aborting at step {step}");
        std::process::abort();
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
