//! The planner: given a model, a recipe and hardware, decide and predict.
//!
//! Owns: recipes, the plan file format, the per-rank memory model, the
//! discrete-event step simulator, the checkpoint-placement and sharding
//! search, the cluster sweep, reports and SVG plots.
//!
//! Must not know about: libtorch or how the executor runs a plan. Everything
//! here is computed from `cost-models`; measured numbers come back only
//! through hardware profiles and metrics files.

pub mod plan;
pub mod recipe;
pub mod simulator;
pub mod wrapping;
pub mod memory;
pub mod checkpoint;
pub mod step_costs;
pub mod cluster;
pub mod search;
pub mod sweep;
pub mod pareto;
pub mod build;
pub mod dryrun;
pub mod timeline_svg;
pub mod validation;
