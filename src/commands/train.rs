//! `seerscale train`: execute a plan for real (tch + c10d), as one rank, as
//! N local ranks, or as a rank of a torchrun / SLURM job.

use anyhow::{Context, Result};
use clap::Args;
use cost_models::hardware::load_profile;
use executor::launch::LaunchError;
use executor::train::{self, TrainArgs, TrainError};
use planner::build::build_plan;
use planner::search::{choose, BatchPolicy, Constraints, GpuCount, Objective, SearchSpace, Searcher, ShardingSpace};
use runspec::plan::Plan;
use runspec::sharding::{Sharding, Strategy};
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::time::Duration;

#[derive(Args, Clone, Debug, PartialEq)]
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
    /// Data-loading worker threads per rank (default: the plan's recipe,
    /// `data.loader_workers`, which the memory prediction counts).
    #[arg(long)]
    pub workers: Option<usize>,
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
        anyhow::ensure!(self.workers != Some(0), "--workers must be at least 1");
        a.workers = self.workers;
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
    train::check_before_launch(&args, n)?;
    if a.checkpoint_every.is_none() {
        eprintln!("warning: --max-restarts without --checkpoint-every: a restart starts from step 0");
    }
    // Each attempt's ranks: this run's arguments with the attempt's plan,
    // rank count and resume flag; restarting is the launcher's alone.
    let mut ranks = TrainCliArgs { max_restarts: 0, elastic: false, ..a.clone() };
    for attempt in 0..=a.max_restarts {
        match train::launch_ranks(&ranks.argv(), ranks.nproc_per_node.unwrap_or(1), args.timeout) {
            Ok(()) => return Ok(()),
            Err(TrainError::Launch(LaunchError::RankFailed { rank, status, .. })) if attempt < a.max_restarts => {
                eprintln!("rank {rank} failed ({status}); restart {} of {} from the latest checkpoint in {}", attempt + 1, a.max_restarts, a.out.display());
                // Before its first checkpoint a job restarts from step 0.
                (ranks.resume, ranks.resume_if_any) = (false, true);
                let n = ranks.nproc_per_node.unwrap_or(1);
                if a.elastic && n > 1 {
                    ranks.plan = replan(&ranks.plan, n - 1, &a.out)?;
                    ranks.nproc_per_node = Some(n - 1);
                    eprintln!("elastic: continuing on {} ranks with {}", n - 1, ranks.plan.display());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl TrainCliArgs {
    /// The command line (after the program's name) that parses back into
    /// these arguments: what a launcher passes the ranks it starts.
    pub fn argv(&self) -> Vec<OsString> {
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
        value("--timeout-s", Some(self.timeout_s.to_string().into()));
        value("--max-restarts", Some(self.max_restarts.to_string().into()));
        for (flag, on) in [
            ("--resume", self.resume),
            ("--resume-if-any", self.resume_if_any),
            ("--cpu", self.cpu),
            ("--sync-bn", self.sync_bn),
            ("--record-events", self.record_events),
            ("--elastic", self.elastic),
        ] {
            if on {
                v.push(flag.into());
            }
        }
        v
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser)]
    struct Cli {
        #[command(subcommand)]
        command: Sub,
    }

    #[derive(clap::Subcommand)]
    enum Sub {
        Train(TrainCliArgs),
    }

    fn parse(argv: &[OsString]) -> TrainCliArgs {
        let Sub::Train(a) = Cli::try_parse_from(std::iter::once(OsString::from("seerscale")).chain(argv.iter().cloned())).unwrap().command;
        a
    }

    /// What a launcher passes its ranks parses back into the same run,
    /// every option set or left at its default.
    #[test]
    fn argv_parses_back_into_the_same_arguments() {
        let words = |s: &str| s.split_whitespace().map(OsString::from).collect::<Vec<_>>();
        let bare = parse(&words("train --plan p.json"));
        assert_eq!(parse(&bare.argv()), bare);
        let full = parse(&words(
            "train --plan runs/p.json --nproc-per-node 3 --steps 40 --data shards/x-{0..9}.tar --shuffle-buffer 50 --out runs/r \
             --checkpoint-every auto --stop-after 7 --seed 5 --workers 4 --threads 2 --timeout-s 30 --resume --cpu --sync-bn --record-events \
             --max-restarts 2 --elastic",
        ));
        assert_eq!(parse(&full.argv()), full);
        let steps = TrainCliArgs { checkpoint_every: Some(executor::train::CheckpointEvery::Steps(9)), resume: false, resume_if_any: true, ..full };
        assert_eq!(parse(&steps.argv()), steps);
    }
}
