//! `seerscale train`: execute a plan for real (tch + c10d), as one rank, as
//! N local ranks, or as a rank of a torchrun / SLURM job.

use anyhow::{Context, Result};
use clap::Args;
use cost_models::hardware::load_profile;
use executor::launch::LaunchError;
use executor::train::{self, TrainArgs, TrainError};
use planner::build::build_plan;
use planner::plan::Plan;
use planner::search::{choose, BatchPolicy, Constraints, GpuCount, Objective, SearchSpace, Searcher, ShardingSpace};
use runspec::sharding::{Sharding, Strategy};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args)]
pub struct TrainCliArgs {
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
    #[arg(long, default_value_t = executor::data::DEFAULT_SHUFFLE_BUFFER)]
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
    pub checkpoint_every: Option<executor::train::CheckpointEvery>,
    /// Stop after this step (the schedule still assumes --steps).
    #[arg(long)]
    pub stop_after: Option<u64>,
    #[arg(long, default_value_t = 0)]
    pub seed: u64,
    /// Data-loading worker threads per rank.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Intra-op threads per rank (default: cores / ranks on this machine).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Seconds a collective may wait before the job is declared dead.
    #[arg(long, default_value_t = 120)]
    pub timeout_s: u64,
    /// Run a GPU plan on CPU ranks (Gloo) anyway.
    #[arg(long)]
    pub cpu: bool,
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
    /// When a rank dies, start the job again from the latest checkpoint,
    /// up to this many times (with --nproc-per-node, like torchrun's).
    #[arg(long, default_value_t = 0)]
    pub max_restarts: usize,
    /// With --max-restarts: continue on one rank fewer each time, re-planned
    /// for the ranks that are left (the checkpoint is re-cut for them).
    #[arg(long, requires = "max_restarts")]
    pub elastic: bool,
}

impl TrainCliArgs {
    pub fn to_train_args(&self) -> Result<TrainArgs> {
        anyhow::ensure!(self.nproc_per_node != Some(0), "--nproc-per-node must be at least 1");
        anyhow::ensure!(self.steps != Some(0), "--steps must be at least 1");
        anyhow::ensure!(self.timeout_s > 0, "--timeout-s must be at least 1");
        let mut a = TrainArgs::new(&self.plan);
        a.nproc_per_node = self.nproc_per_node;
        a.steps = self.steps;
        a.data = self.data.clone();
        a.out = self.out.clone();
        a.resume = self.resume || self.resume_if_any;
        a.resume_required = self.resume;
        a.checkpoint_every = self.checkpoint_every;
        a.stop_after = self.stop_after;
        a.seed = self.seed;
        a.workers = self.workers.max(1);
        a.shuffle_buffer = self.shuffle_buffer.max(1);
        a.threads = self.threads;
        a.timeout = Duration::from_secs(self.timeout_s);
        a.force_cpu = self.cpu;
        a.sync_bn = self.sync_bn;
        a.record_events = self.record_events;
        Ok(a)
    }
}

pub fn run(a: &TrainCliArgs) -> Result<()> {
    let args = a.to_train_args()?;
    let n = a.nproc_per_node.unwrap_or(1);
    let launcher = std::env::var_os("RANK").is_none() && n > 1;
    if a.max_restarts == 0 || !launcher {
        train::run(&args)?;
        return Ok(());
    }
    if a.checkpoint_every.is_none() {
        eprintln!("warning: --max-restarts without --checkpoint-every: a restart starts from step 0");
    }
    let (mut plan, mut n) = (a.plan.clone(), n);
    let mut resume = if a.resume {
        "--resume"
    } else if a.resume_if_any {
        "--resume-if-any"
    } else {
        ""
    };
    for attempt in 0..=a.max_restarts {
        match train::launch_ranks(&rank_args(&plan, n, resume), n, args.timeout) {
            Ok(()) => return Ok(()),
            Err(TrainError::Launch(LaunchError::RankFailed { rank, status, .. })) if attempt < a.max_restarts => {
                eprintln!("rank {rank} failed ({status}); restart {} of {} from the latest checkpoint in {}", attempt + 1, a.max_restarts, a.out.display());
                // Before its first checkpoint a job restarts from step 0.
                resume = "--resume-if-any";
                if a.elastic && n > 1 {
                    n -= 1;
                    plan = replan(&plan, n, &a.out)?;
                    eprintln!("elastic: continuing on {n} ranks with {}", plan.display());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

/// This program's arguments for the ranks of a (re)started job: the plan
/// and rank count of this attempt, and its resume flag (`--resume`,
/// `--resume-if-any` after a failure, or none).
fn rank_args(plan: &Path, n: usize, resume: &str) -> Vec<OsString> {
    let mut out: Vec<OsString> = Vec::new();
    let mut args = std::env::args_os().skip(1);
    while let Some(arg) = args.next() {
        let s = arg.to_string_lossy();
        let takes_value = ["--plan", "--nproc-per-node", "--max-restarts"].contains(&s.as_ref());
        if takes_value {
            args.next();
            continue;
        }
        if ["--plan=", "--nproc-per-node=", "--max-restarts="].iter().any(|p| s.starts_with(p)) || s == "--resume" || s == "--resume-if-any" || s == "--elastic"
        {
            continue;
        }
        out.push(arg);
    }
    out.extend([OsString::from("--plan"), plan.as_os_str().to_owned(), "--nproc-per-node".into(), n.to_string().into()]);
    if !resume.is_empty() {
        out.push(resume.into());
    }
    out
}

/// The plan for `n` ranks with the same decisions as `plan` where they
/// still apply (wrapping, precision, reshard, the sharding if its group
/// divides `n`, the global batch if `n` divides it), checkpointing placed
/// again; written next to the run's output.
fn replan(plan: &Path, n: usize, out: &Path) -> Result<PathBuf> {
    let old = Plan::load(plan)?;
    let recipe = old.recipe.clone();
    let hw = load_profile(&recipe.cluster.gpu).with_context(|| format!("re-planning for {n} ranks: hardware `{}`", recipe.cluster.gpu))?;
    let global = old.batch_per_rank * old.world_size;
    let batch = if global.is_multiple_of(n) { BatchPolicy::Global(global) } else { BatchPolicy::PerGpu(old.batch_per_rank) };
    let mut space = SearchSpace::full(vec![hw], GpuCount::Fixed(n), batch);
    space.wrappings = vec![old.wrapping];
    space.precisions = vec![old.precision.compute];
    space.reshard = vec![old.reshard_after_forward];
    let s = old.sharding.shard_group;
    space.shardings = ShardingSpace::Only(match old.sharding.strategy {
        Strategy::Hybrid if s < n && n.is_multiple_of(s) => old.sharding,
        Strategy::Ddp => Sharding::ddp(),
        _ => Sharding::default(),
    });
    let mut searcher = Searcher::new(&recipe, space)?;
    let outcomes = searcher.run(|_, _| {})?;
    let e = choose(&outcomes, Objective::Fastest, Constraints::default())
        .map_err(|e| anyhow::anyhow!("cannot continue on {n} ranks: {e}: {}", searcher.explain_infeasible(&outcomes)))?
        .clone();
    let (new, _) = build_plan(&mut searcher, &e)?;
    std::fs::create_dir_all(out).with_context(|| format!("cannot create {}", out.display()))?;
    let path = out.join(format!("plan.{n}-ranks.json"));
    new.save(&path)?;
    Ok(path)
}
