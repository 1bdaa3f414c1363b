//! What the search may choose from: sharding, batches, wrappings,
//! precisions, GPU counts, paddings.

use crate::failures::Reliability;
use cost_models::hardware::HardwareProfile;
use cost_models::padding::ChannelPadding;
use cost_models::DType;
use runspec::recipe::Wrapping;
use runspec::schedule::BackwardOrder;
use runspec::sharding::{Sharding, Strategy};

/// Per-GPU batches tried when the user fixes neither.
pub const DEFAULT_BATCHES: [usize; 6] = [8, 16, 24, 32, 48, 64];
/// Largest global batch the search accepts by default.
pub const DEFAULT_MAX_GLOBAL_BATCH: usize = 16_384;
/// Every wrapping policy the search tries under FSDP and hybrid sharding.
pub const ALL_WRAPPINGS: [Wrapping; 6] = [Wrapping::PerBlock, Wrapping::Group(2), Wrapping::Group(4), Wrapping::PerStage, Wrapping::Vissl, Wrapping::Whole];
/// DDP's gradient bucket size (PyTorch's `bucket_cap_mb` default).
pub const DEFAULT_BUCKET_MIB: usize = 25;

/// Which shardings the search tries.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ShardingSpace {
    /// DDP, FSDP, and hybrid with shard groups of 1, 2 and 4 nodes' GPUs
    /// (where they lie strictly inside the world and divide it).
    Every,
    /// One strategy (FSDP's group follows the world size).
    Only(Sharding),
}

impl ShardingSpace {
    /// The shardings at `world` ranks with `gpus_per_node` per node; FSDP
    /// stays unresolved (shard group 0: the world) so memo keys match
    /// across world sizes.
    pub fn at(self, world: usize, gpus_per_node: usize) -> Vec<Sharding> {
        let fits = |s: &Sharding| s.resolved(world).check(world).is_ok();
        match self {
            ShardingSpace::Only(s) => {
                let s = if s.strategy == Strategy::Fsdp { Sharding::default() } else { s };
                if fits(&s) {
                    vec![s]
                } else {
                    vec![]
                }
            }
            ShardingSpace::Every => {
                let mut v = vec![Sharding::default(), Sharding::ddp()];
                for k in [1, 2, 4] {
                    let h = Sharding::hybrid(gpus_per_node * k);
                    if fits(&h) && !v.contains(&h) {
                        v.push(h);
                    }
                }
                v.retain(fits);
                v
            }
        }
    }
}
pub const ALL_PRECISIONS: [DType; 3] = [DType::Fp32, DType::Fp16, DType::Bf16];

/// How many GPUs to consider.
#[derive(Clone, Debug, PartialEq)]
pub enum GpuCount {
    Fixed(usize),
    /// Whole nodes (and slices of one node) in `[min, max]`.
    Range {
        min: usize,
        max: usize,
    },
}

/// How the per-GPU batch is chosen (see the module docs).
#[derive(Clone, Debug, PartialEq)]
pub enum BatchPolicy {
    PerGpu(usize),
    Global(usize),
    Search { candidates: Vec<usize>, max_global: usize },
}

impl BatchPolicy {
    /// Per-GPU batches allowed at `world` GPUs.
    pub fn per_gpu(&self, world: usize) -> Vec<usize> {
        match self {
            BatchPolicy::PerGpu(b) => vec![*b],
            BatchPolicy::Global(g) => {
                if world > 0 && g % world == 0 && g / world > 0 {
                    vec![g / world]
                } else {
                    vec![]
                }
            }
            BatchPolicy::Search { candidates, max_global } => candidates.iter().copied().filter(|&b| b > 0 && b * world <= *max_global).collect(),
        }
    }
}

/// Everything the search may choose from.
#[derive(Clone, Debug)]
pub struct SearchSpace {
    pub hardware: Vec<HardwareProfile>,
    pub gpus: GpuCount,
    pub batch: BatchPolicy,
    pub shardings: ShardingSpace,
    /// Wrappings tried under FSDP and hybrid sharding.
    pub wrappings: Vec<Wrapping>,
    /// DDP's units are its gradient buckets of this many MiB (unless
    /// `ddp_wrappings` names others).
    pub bucket_mib: usize,
    /// Tried where the hardware supports them.
    pub precisions: Vec<DType>,
    pub reshard: Vec<bool>,
    /// The crop groups' backward orders tried (`ByCropGroup` only where
    /// `Together` needs checkpointing or does not fit: it reduces each
    /// trunk unit once per crop group, so it pays only where it holds less).
    pub backward_orders: Vec<BackwardOrder>,
    /// Channel padding tried: `on` only where it changes a width and the
    /// device has tensor cores to gain from it, unless it is the only one
    /// asked for.
    pub paddings: Vec<ChannelPadding>,
    /// Evaluate every combination (no bound-based skipping).
    pub exhaustive: bool,
    /// Fraction of usable memory the plan must leave free (0 = plan up to
    /// the limit; the memory model already adds a fragmentation margin).
    pub headroom: f64,
    /// Failure rate, checkpoint bandwidth and restart time: days and cost
    /// include expected failures.
    pub reliability: Reliability,
}

impl SearchSpace {
    /// The wrappings tried with `sharding`: DDP buckets its gradients
    /// unless the wrappings were narrowed to a single one.
    pub fn wrappings_for(&self, sharding: Sharding) -> Vec<Wrapping> {
        match (sharding.strategy, self.wrappings.as_slice()) {
            (Strategy::Ddp, [one]) => vec![*one],
            (Strategy::Ddp, _) => vec![Wrapping::Buckets(self.bucket_mib)],
            _ => self.wrappings.clone(),
        }
    }

    /// Every option, on the given hardware.
    pub fn full(hardware: Vec<HardwareProfile>, gpus: GpuCount, batch: BatchPolicy) -> SearchSpace {
        SearchSpace {
            hardware,
            gpus,
            batch,
            shardings: ShardingSpace::Every,
            wrappings: ALL_WRAPPINGS.to_vec(),
            bucket_mib: DEFAULT_BUCKET_MIB,
            precisions: ALL_PRECISIONS.to_vec(),
            reshard: vec![true, false],
            backward_orders: vec![BackwardOrder::Together, BackwardOrder::ByCropGroup],
            paddings: vec![ChannelPadding::Off, ChannelPadding::On],
            exhaustive: false,
            headroom: 0.0,
            reliability: Reliability::builtin(),
        }
    }
}
