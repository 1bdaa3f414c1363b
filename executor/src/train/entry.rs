//! How a train process starts: as the launcher of local ranks, as one
//! rank of a job, or alone; and what each rank runs.

use super::*;
use crate::dist::{Backend, GroupConfig, ProcessGroup};
use crate::groups::RankGroups;
use crate::launch::{self, LaunchOptions, RankEnv};
use crate::model::SyncBn;
use crate::reduce::ReduceError;
use runspec::plan::Plan;
use std::ffi::OsString;
use std::time::Duration;
use tch::{Device, Tensor};

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
pub(crate) fn run_rank(args: &TrainArgs, env: &RankEnv) -> Result<TrainReport, TrainError> {
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
