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
use std::path::{Path, PathBuf};

/// `seerscale train`: the run's arguments (`executor::train::TrainArgs`)
/// and the launcher's restart policy.
#[derive(Args, Clone, Debug, PartialEq)]
pub struct TrainCliArgs {
    #[command(flatten)]
    pub run: TrainArgs,
    /// When a rank dies, start the job again from the latest checkpoint,
    /// up to this many times (with --nproc-per-node, like torchrun's).
    #[arg(long, default_value_t = 0)]
    pub max_restarts: usize,
    /// With --max-restarts: continue on one rank fewer each time, re-planned
    /// for the ranks that are left (the checkpoint is re-cut for them).
    #[arg(long, requires = "max_restarts")]
    pub elastic: bool,
}

pub fn run(a: &TrainCliArgs) -> Result<()> {
    let args = &a.run;
    args.check()?;
    let n = args.nproc_per_node.unwrap_or(1);
    let launcher = std::env::var_os("RANK").is_none() && n > 1;
    if a.max_restarts == 0 || !launcher {
        train::run(args)?;
        return Ok(());
    }
    train::check_before_launch(args, n)?;
    if args.checkpoint_every.is_none() {
        eprintln!("warning: --max-restarts without --checkpoint-every: a restart starts from step 0");
    }
    // Each attempt's ranks: this run's arguments with the attempt's plan,
    // rank count and resume flag; restarting is the launcher's alone.
    let mut ranks = args.clone();
    for attempt in 0..=a.max_restarts {
        match train::launch_ranks(&ranks.argv(), ranks.nproc_per_node.unwrap_or(1), args.timeout) {
            Ok(()) => return Ok(()),
            Err(TrainError::Launch(LaunchError::RankFailed { rank, status, .. })) if attempt < a.max_restarts => {
                eprintln!("rank {rank} failed ({status}); restart {} of {} from the latest checkpoint in {}", attempt + 1, a.max_restarts, args.out.display());
                // Before its first checkpoint a job restarts from step 0.
                (ranks.resume, ranks.resume_if_any) = (false, true);
                let n = ranks.nproc_per_node.unwrap_or(1);
                if a.elastic && n > 1 {
                    ranks.plan = replan(&ranks.plan, n - 1, &args.out)?;
                    ranks.nproc_per_node = Some(n - 1);
                    eprintln!("elastic: continuing on {} ranks with {}", n - 1, ranks.plan.display());
                }
            }
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
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
