//! The executor: runs a plan for real with libtorch (tch) and PyTorch's c10d.
//!
//! Owns: the tch RegNet-Y + SwAV model, the c10d shim (`csrc/`), the FSDP
//! runtime, activation checkpointing, the data pipeline, the launcher,
//! sharded checkpoints and per-step metrics.
//!
//! Must not know about: search or cost formulas. It measures; the planner
//! predicts. It takes the plan file as the single source of decisions.

pub mod dist;
pub mod memstats;
pub mod storage;
pub mod reduce;
pub mod model;
pub mod swav;
pub mod optim;
pub mod schedule;
pub mod augment;
pub mod data;
pub mod fsdp;
pub mod step;
pub mod reference;
pub mod precision;
pub mod metrics;
pub mod checkpoint;
pub mod launch;
pub mod train;
pub mod calibrate;
pub mod phase_timer;
