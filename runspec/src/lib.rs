//! What the planner and the executor share, described once: the plan file
//! and its versioning, the recipe it was made for, the sharding strategy,
//! the rule that assigns parameters to FSDP units, the step schedule
//! compiled from a plan, and the metrics record every step writes.
//!
//! Owns: the formats and the rules both sides must read alike.
//!
//! Must not know about: costs, search or prediction (the planner), libtorch
//! or how an event is executed (the executor). Depends on `cost-models` for
//! the model, hardware and unit types only.

// Input checks read `!(x > 0.0)` on purpose: NaN fails them too.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod metrics;
pub mod plan;
pub mod recipe;
pub mod schedule;
pub mod sharding;
pub mod units;
