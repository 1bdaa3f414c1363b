//! The executor: runs a plan for real with libtorch (tch) and PyTorch's c10d.
//!
//! Owns: the tch RegNet-Y + SwAV model, the c10d shim (`csrc/`), the FSDP
//! runtime, activation checkpointing, the data pipeline, the launcher,
//! sharded checkpoints and per-step metrics.
//!
//! Must not know about: search or cost formulas. It measures; the planner
//! predicts. It takes the plan file as the single source of decisions.

pub mod augment;
pub mod block_timing;
pub mod calibrate;
pub mod checkpoint;
pub mod data;
pub mod dist;
pub mod fsdp;
pub mod launch;
pub mod memstats;
pub mod metrics;
pub mod model;
pub mod optim;
pub mod phase_timer;
pub mod precision;
pub mod reduce;
pub mod reference;
pub mod schedule;
pub mod speed_probe;
pub mod step;
pub mod storage;
pub mod swav;
pub mod train;
