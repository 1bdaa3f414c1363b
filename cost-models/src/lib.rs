//! Cost models of the work a SEER-style training step does, in pure Rust.
//!
//! Owns: quantities with their units (`Bytes`, `Flops`, `Seconds`), the RegNet-Y + SwAV model spec
//! and its layer graph (parameters, FLOPs, saved activations per layer and
//! block), model configs, the hardware catalog, the cluster topology and the
//! compute and collective cost models, and nccl-tests logs read into the
//! collective model's terms.
//!
//! Must not know about: plans, FSDP wrapping decisions, libtorch, or how the
//! executor runs anything. It answers "how big / how much work / how long
//! would this primitive take", never "what should we do".

// Input checks read `!(x > 0.0)` on purpose: NaN fails them too.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

pub mod collectives;
pub mod compute;
pub mod config;
pub mod graph;
pub mod hardware;
pub mod hash;
pub mod kernels;
pub mod nccl_tests;
pub mod padding;
pub mod quantity;
pub mod regnet;
pub mod stats;
pub mod topology;

pub use quantity::{Bandwidth, Bytes, DType, FlopRate, Flops, Seconds};
