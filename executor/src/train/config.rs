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

/// Options of `seerscale train` that are not in the plan: the one record of
/// them, parsed by the CLI (clap), built by tests, and turned back into a
/// command line for the ranks a launcher starts ([`TrainArgs::argv`]).
#[derive(clap::Args, Clone, Debug, PartialEq)]
pub struct TrainArgs {
    /// Plan file written by `seerscale plan --out`.
    #[arg(long)]
    pub plan: PathBuf,
    /// Start this many ranks on this machine (like torchrun). Without it the
    /// rank comes from torchrun's or SLURM's environment, or runs alone.
    #[arg(long)]
    pub nproc_per_node: Option<usize>,
    /// Steps to run (default: the recipe's total images / global batch).
    #[arg(long)]
    pub steps: Option<u64>,
    /// Image folder, searched recursively for JPEG/PNG; a .txt file list
    /// (one path per line, relative to the list's folder or absolute); or
    /// WebDataset tar shards: a path, glob or braces (`shards/part-{000..099}.tar`),
    /// or a folder written by `data pack` (default: SEERSCALE_PHOTOS, else
    /// the clone's .photos: scikit-image's).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Tar shards: samples each rank holds in its shuffle buffer.
    #[arg(long, default_value_t = crate::data::DEFAULT_SHUFFLE_BUFFER)]
    pub shuffle_buffer: usize,
    /// Metrics (metrics.rank<r>.jsonl) and checkpoints go here.
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
    /// Continue from the latest checkpoint in --out (refused when there is
    /// none: drop it to start fresh).
    #[arg(long)]
    pub resume: bool,
    /// Continue from the latest checkpoint in --out if there is one (what
    /// a restart after a failure passes its ranks).
    #[arg(long, hide = true, conflicts_with = "resume")]
    pub resume_if_any: bool,
    /// Save a sharded checkpoint every N steps, or `auto`: the plan's
    /// interval for its predicted failure rate (Young/Daly).
    #[arg(long)]
    pub checkpoint_every: Option<CheckpointEvery>,
    /// Stop after this step (the schedule still assumes --steps).
    #[arg(long)]
    pub stop_after: Option<u64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Data-loading worker threads per rank (default: the plan's recipe,
    /// `data.loader_workers`, which the memory prediction counts).
    #[arg(long)]
    pub workers: Option<usize>,
    /// Intra-op threads per rank (default: cores / ranks on this machine).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seconds a collective may wait before the job is declared dead.
    #[arg(long = "timeout-s", value_name = "SECONDS", default_value = "120", value_parser = parse_seconds)]
    pub timeout: Duration,
    /// Run a GPU plan on CPU ranks (Gloo) anyway; GPU plans otherwise use
    /// CUDA device LOCAL_RANK with NCCL.
    #[arg(long = "cpu")]
    pub force_cpu: bool,
    /// Synchronized BN: batch statistics over all ranks (all-reduced in
    /// forward and backward) instead of per rank as in SEER.
    #[arg(long)]
    pub sync_bn: bool,
    /// Write the events each rank's first step ran (gathers, forwards,
    /// recomputes, backwards, reduce-scatters, ...) to
    /// `<out>/events.rank<r>.json`, to set against the plan's compiled
    /// step schedule.
    #[arg(long)]
    pub record_events: bool,
}

/// `--timeout-s`: whole seconds, at least 1.
fn parse_seconds(s: &str) -> Result<Duration, String> {
    match s.parse::<u64>() {
        Ok(n) if n >= 1 => Ok(Duration::from_secs(n)),
        _ => Err(format!("`{s}`: a whole number of seconds, at least 1")),
    }
}

impl TrainArgs {
    /// The defaults for `plan`, as the command line gives them.
    pub fn new(plan: impl Into<PathBuf>) -> TrainArgs {
        use clap::{Args, FromArgMatches};
        let plan: PathBuf = plan.into();
        let m = TrainArgs::augment_args(clap::Command::new("train"))
            .try_get_matches_from([std::ffi::OsString::from("train"), "--plan".into(), plan.into_os_string()])
            .expect("--plan alone parses");
        TrainArgs::from_arg_matches(&m).expect("--plan alone parses")
    }

    /// Values the command line can hold but a run cannot use.
    pub fn check(&self) -> Result<(), TrainError> {
        for (flag, zero) in [("--nproc-per-node", self.nproc_per_node == Some(0)), ("--steps", self.steps == Some(0)), ("--workers", self.workers == Some(0))] {
            if zero {
                return Err(TrainError::Config(format!("{flag} must be at least 1")));
            }
        }
        Ok(())
    }

    /// The command line (after the program's name) that parses back into
    /// these arguments: what a launcher passes the ranks it starts.
    pub fn argv(&self) -> Vec<std::ffi::OsString> {
        use std::ffi::OsString;
        let mut v: Vec<OsString> = vec!["train".into(), "--plan".into(), self.plan.clone().into()];
        let mut value = |flag: &str, x: Option<OsString>| {
            if let Some(x) = x {
                v.push(flag.into());
                v.push(x);
            }
        };
        value("--nproc-per-node", self.nproc_per_node.map(|n| n.to_string().into()));
        value("--steps", self.steps.map(|n| n.to_string().into()));
        value("--data", self.data.clone().map(Into::into));
        value("--shuffle-buffer", Some(self.shuffle_buffer.to_string().into()));
        value("--out", Some(self.out.clone().into()));
        value("--checkpoint-every", self.checkpoint_every.map(|c| c.to_string().into()));
        value("--stop-after", self.stop_after.map(|n| n.to_string().into()));
        value("--seed", Some(self.seed.to_string().into()));
        value("--workers", self.workers.map(|n| n.to_string().into()));
        value("--threads", self.threads.map(|n| n.to_string().into()));
        value("--timeout-s", Some(self.timeout.as_secs().to_string().into()));
        for (flag, on) in [
            ("--resume", self.resume),
            ("--resume-if-any", self.resume_if_any),
            ("--cpu", self.force_cpu),
            ("--sync-bn", self.sync_bn),
            ("--record-events", self.record_events),
        ] {
            if on {
                v.push(flag.into());
            }
        }
        v
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
            resume: args.resume || args.resume_if_any,
            resume_required: args.resume,
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use std::ffi::OsString;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        Train(TrainArgs),
    }

    fn parse(argv: &[OsString]) -> TrainArgs {
        let Sub::Train(a) = Cli::try_parse_from(std::iter::once(OsString::from("seerscale")).chain(argv.iter().cloned())).unwrap().command;
        a
    }

    /// What a launcher passes its ranks parses back into the same run,
    /// every option set or left at its default; `new` is those defaults.
    #[test]
    fn argv_parses_back_into_the_same_arguments() {
        let words = |s: &str| s.split_whitespace().map(OsString::from).collect::<Vec<_>>();
        let bare = parse(&words("train --plan p.json"));
        assert_eq!(bare, TrainArgs::new("p.json"));
        assert_eq!(parse(&bare.argv()), bare);
        let full = parse(&words(
            "train --plan runs/p.json --nproc-per-node 3 --steps 40 --data shards/x-{0..9}.tar --shuffle-buffer 50 --out runs/r \
             --checkpoint-every auto --stop-after 7 --seed 5 --workers 4 --threads 2 --timeout-s 30 --resume --cpu --sync-bn --record-events",
        ));
        assert_eq!(parse(&full.argv()), full);
        let steps = TrainArgs { checkpoint_every: Some(CheckpointEvery::Steps(9)), resume: false, resume_if_any: true, ..full };
        assert_eq!(parse(&steps.argv()), steps);
        assert!(TrainArgs { steps: Some(0), ..steps }.check().unwrap_err().to_string().contains("--steps must be at least 1"));
    }
}
