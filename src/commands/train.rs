//! `seerscale train`: execute a plan for real (tch + c10d), as one rank, as
//! N local ranks, or as a rank of a torchrun / SLURM job.

use anyhow::Result;
use clap::Args;
use executor::train::{self, TrainArgs};
use std::path::PathBuf;
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
    /// Image folder, searched recursively for JPEG/PNG (default: the photos bundled with scikit-image).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Metrics (metrics.rank<r>.jsonl) and checkpoints go here.
    #[arg(long, default_value = "runs/train")]
    pub out: PathBuf,
    /// Continue from the latest checkpoint in --out.
    #[arg(long)]
    pub resume: bool,
    /// Save a sharded checkpoint every N steps.
    #[arg(long)]
    pub checkpoint_every: Option<u64>,
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
        a.resume = self.resume;
        a.checkpoint_every = self.checkpoint_every;
        a.stop_after = self.stop_after;
        a.seed = self.seed;
        a.workers = self.workers.max(1);
        a.threads = self.threads;
        a.timeout = Duration::from_secs(self.timeout_s);
        a.force_cpu = self.cpu;
        a.sync_bn = self.sync_bn;
        a.record_events = self.record_events;
        Ok(a)
    }
}

pub fn run(a: &TrainCliArgs) -> Result<()> {
    train::run(&a.to_train_args()?)?;
    Ok(())
}
