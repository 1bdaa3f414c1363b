//! The training loop, spelled out step by step (torchtitan style):
//! normalise prototypes → load batch → forward/backward block by block
//! (FSDP gathers, checkpoint recompute, reduce-scatter) → loss-scale check →
//! LARC-SGD on the shards → metrics → maybe checkpoint.
//!
//! [`run`] is the CLI entry: launcher, single process, or one rank of a job
//! started by torchrun / SLURM / our own launcher. [`Trainer`] is the
//! per-rank engine, usable directly (tests drive it step by step).

use crate::checkpoint::CheckpointError;
use crate::data::DataError;
use crate::dist::DistError;
use crate::fsdp::FsdpError;
use crate::launch::LaunchError;
use crate::lr_schedule::LrScheduleError;
use crate::memstats::MemError;
use crate::metrics::{MetricsError, RunSummary, StepMetrics};
use crate::model::ModelError;
use crate::optim::OptimError;
use crate::step::StepError;
use crate::swav::SwavError;

mod checkpointer;
mod config;
mod entry;
mod fault;
mod trainer;

pub use checkpointer::Checkpointer;
pub use config::*;
pub use entry::*;
pub use trainer::*;

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
