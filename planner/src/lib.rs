//! The planner: given a model, a recipe and hardware, decide and predict.
//!
//! Owns: the per-rank memory model, the discrete-event step simulator, the
//! checkpoint-placement and sharding search, failures and checkpoint
//! intervals, the cluster sweep, reports and SVG plots.
//!
//! Must not know about: libtorch or how the executor runs a plan. Everything
//! here is computed from `cost-models`; measured numbers come back only
//! through hardware profiles and metrics files.

// Input checks read `!(x > 0.0)` on purpose: NaN fails them too.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod accuracy;
pub mod bands;
pub mod build;
pub mod cluster;
pub mod dry_run;
pub mod failures;
pub mod loader;
pub mod memory;
pub mod pareto;
pub mod recompute;
pub mod search;
pub mod simulator;
pub mod step_costs;
pub mod sweep;
pub mod timeline_svg;
pub mod validation;
pub mod wrapping;
