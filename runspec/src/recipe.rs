//! Training recipes (TOML): model, multi-crop, SwAV loss, optimiser, data
//! volume, the cluster asked about, and optionally a published fixed plan
//! (e.g. VISSL's SEER 10B wrapping and stage checkpoints) to compare against.

use cost_models::config::{load_toml, ConfigError};
use cost_models::graph::CropGroup;
use cost_models::DType;
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Recipe {
    pub name: String,
    #[serde(default)]
    pub description: String,
    /// Built-in model name or a path to a model TOML.
    pub model: String,
    pub data: DataSpec,
    pub swav: SwavSpec,
    pub optim: OptimSpec,
    pub cluster: ClusterSpec,
    /// BatchNorm statistics over all ranks (SyncBN, as SEER: PyTorch's
    /// SyncBatchNorm) instead of per rank: two small blocking all-reduces
    /// per BN call, which the step simulator charges and `train` honours.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub sync_bn: bool,
    /// SyncBN over groups of this many consecutive ranks instead of all of
    /// them (SEER 10B: 8, one node; SEER 2021: 64); must divide the world size.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sync_bn_group: Option<usize>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reference_plan: Option<ReferencePlan>,
}

/// One multi-crop group: `count` crops of `resolution` px, RandomResizedCrop scale range.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CropSpec {
    pub count: u64,
    pub resolution: u64,
    pub scale: [f64; 2],
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DataSpec {
    pub crops: Vec<CropSpec>,
    /// Images seen over the whole run (SEER: one pass over ~1B images).
    pub total_images: f64,
    #[serde(default = "one")]
    pub color_strength: f64,
    #[serde(default = "half")]
    pub blur_p: f64,
    /// Data-loading worker threads per rank, and the batches each holds
    /// ready ahead of the step: what the executor runs (`train --workers`
    /// overrides the first) and what a CPU rank's memory counts.
    #[serde(default = "two")]
    pub loader_workers: usize,
    #[serde(default = "two")]
    pub loader_prefetch: usize,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SwavSpec {
    pub temperature: f64,
    pub sinkhorn_iterations: usize,
    pub epsilon: f64,
    pub crops_for_assign: Vec<usize>,
    /// The prototypes stay as initialised (no update, decay or momentum)
    /// for this many first iterations (SEER and SwAV: 313).
    #[serde(default)]
    pub freeze_prototypes_iters: u64,
    /// Embeddings of past batches kept per assignment crop, over all ranks
    /// (SwAV's `queue_length`; 0: no queue, as SEER), trimmed to a multiple
    /// of the global batch as VISSL trims it; each rank keeps its share.
    #[serde(default)]
    pub queue_length: u64,
    /// The iteration the queue starts filling at; it joins Sinkhorn once
    /// full (SwAV's `epoch_queue_starts`, counted in iterations).
    #[serde(default)]
    pub queue_start_iter: u64,
}

impl SwavSpec {
    /// The queue a run of `global` images per step keeps over all ranks:
    /// `queue_length` less its remainder by the global batch
    /// (`hydra_config.py`: `queue_length -= queue_length % batch_size`), so
    /// each rank's share is whole batches; 0 where that leaves none.
    pub fn queue_length_for(&self, global: u64) -> u64 {
        if global == 0 {
            return 0;
        }
        self.queue_length - self.queue_length % global
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum OptimKind {
    /// SGD + momentum (+ LARC when `larc_trust` is set): one fp32 state per param.
    Sgd,
    /// Adam: two fp32 states per param.
    Adam,
}

impl OptimKind {
    /// fp32 optimiser-state tensors per parameter.
    pub fn states_per_param(self) -> u64 {
        match self {
            OptimKind::Sgd => 1,
            OptimKind::Adam => 2,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OptimSpec {
    pub kind: OptimKind,
    pub lr_per_256: f64,
    #[serde(default)]
    pub momentum: f64,
    #[serde(default)]
    pub weight_decay: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub larc_trust: Option<f64>,
    #[serde(default)]
    pub warmup_fraction: f64,
}

/// The cluster the user asks about; `plan`/`sweep` flags override it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ClusterSpec {
    /// Hardware id (built-in) or path to a hardware/profile TOML.
    pub gpu: String,
    pub gpus: usize,
    /// Per-GPU batch (images); the search may try others unless fixed.
    pub batch_per_gpu: usize,
    #[serde(default)]
    pub fixed_batch: bool,
    /// Compute precisions the search may use (default: all the hardware supports).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub precisions: Option<Vec<DType>>,
}

/// Wrapping policies the planner knows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Wrapping {
    /// One unit per block.
    PerBlock,
    /// One unit per stage (trunk) + head units.
    PerStage,
    /// Units of consecutive blocks, `group` blocks each.
    Group(usize),
    /// DDP's gradient buckets: consecutive blocks, from the last, grouped
    /// until each unit holds at least this many MiB of fp32 parameters
    /// (PyTorch DDP's `bucket_cap_mb`, 25 by default).
    Buckets(usize),
    /// VISSL / FairScale auto-wrap for SEER: every block a unit, convs with
    /// >= 1e8 parameters their own unit (BN fp32 units folded into blocks).
    Vissl,
    /// One unit for the whole model (plain data parallel when sharding is off).
    Whole,
}

/// A published plan to compare with (VISSL's SEER settings).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ReferencePlan {
    /// `ddp`, `fsdp` or `hybrid:S` (default fsdp).
    #[serde(default = "fsdp_label")]
    pub sharding: String,
    pub wrapping: Wrapping,
    pub precision: DType,
    pub reshard_after_forward: bool,
    pub batch_per_gpu: usize,
    /// VISSL `stage_checkpoints`: per stage, the block indices (exclusive
    /// ends) splitting it into checkpointed groups; `[]` = not checkpointed.
    pub stage_checkpoints: Vec<Vec<usize>>,
}

fn two() -> usize {
    2
}

fn one() -> f64 {
    1.0
}
fn fsdp_label() -> String {
    "fsdp".into()
}
fn half() -> f64 {
    0.5
}

macro_rules! builtin_recipes {
    ($($name:literal),* $(,)?) => {
        /// Built-in recipes (name, TOML text), embedded at compile time.
        pub const BUILTIN_RECIPES: &[(&str, &str)] = &[
            $(($name, include_str!(concat!("../../configs/recipes/", $name, ".toml")))),*
        ];
    };
}
builtin_recipes!("seer-10b", "seer-256gf", "tiny-cpu", "cpu-400mf", "gpu-check-400mf", "gpu-check-10b-s3");

impl Recipe {
    /// Images per optimiser step of the run the recipe describes (its GPUs
    /// times its per-GPU batch): SwAV's learning rate, Sinkhorn and the
    /// optimisation itself are tuned for it, so plans hold it by default.
    pub fn global_batch(&self) -> usize {
        self.cluster.gpus * self.cluster.batch_per_gpu
    }

    /// The SyncBN group a run of `world` ranks uses: `None` (all ranks)
    /// where the recipe's group covers the world, as SEER's groups of 8 do
    /// on one node; an error where it is smaller and does not divide it.
    pub fn sync_bn_group_for(&self, world: usize) -> Result<Option<usize>, String> {
        match self.sync_bn_group {
            Some(k) if k < world => {
                if world.is_multiple_of(k) {
                    Ok(Some(k))
                } else {
                    Err(format!("{k} ranks per SyncBN group do not divide the world size {world}"))
                }
            }
            _ => Ok(None),
        }
    }

    pub fn load(name_or_path: &str) -> Result<Recipe, ConfigError> {
        load_toml("recipe", name_or_path, BUILTIN_RECIPES, Recipe::validate)
    }

    pub fn validate(&self, origin: &str) -> Result<(), ConfigError> {
        let bad = |f: &str, why: &str| Err(ConfigError::invalid(origin, f, why));
        if self.data.crops.is_empty() {
            return bad("data.crops", "needs at least one crop group");
        }
        for (i, c) in self.data.crops.iter().enumerate() {
            if c.count == 0 || c.resolution < 8 {
                return bad(&format!("data.crops[{i}]"), "count must be >= 1 and resolution >= 8 px");
            }
            if !(c.scale[0] > 0.0 && c.scale[0] <= c.scale[1] && c.scale[1] <= 1.0) {
                return bad(&format!("data.crops[{i}].scale"), "must satisfy 0 < min <= max <= 1");
            }
        }
        if !(self.data.total_images > 0.0) {
            return bad("data.total_images", "must be > 0");
        }
        if self.data.loader_workers == 0 || self.data.loader_prefetch == 0 {
            return bad("data.loader_workers", "loader_workers and loader_prefetch must be >= 1");
        }
        let n_crops: u64 = self.data.crops.iter().map(|c| c.count).sum();
        if self.swav.crops_for_assign.is_empty() || self.swav.crops_for_assign.iter().any(|&c| c as u64 >= n_crops) {
            return bad("swav.crops_for_assign", "must name crops that exist (0-based, across all crop groups)");
        }
        if !(self.swav.temperature > 0.0) {
            return bad("swav.temperature", "must be > 0");
        }
        if !(self.swav.epsilon > 0.0) {
            return bad("swav.epsilon", "must be > 0");
        }
        if self.swav.sinkhorn_iterations == 0 {
            return bad("swav.sinkhorn_iterations", "must be >= 1");
        }
        if !(self.optim.lr_per_256 > 0.0) {
            return bad("optim.lr_per_256", "must be > 0");
        }
        if !(0.0..1.0).contains(&self.optim.warmup_fraction) {
            return bad("optim.warmup_fraction", "must be in [0, 1)");
        }
        if self.cluster.gpus == 0 {
            return bad("cluster.gpus", "must be >= 1");
        }
        if self.cluster.batch_per_gpu == 0 {
            return bad("cluster.batch_per_gpu", "must be >= 1");
        }
        if self.sync_bn_group.is_some_and(|k| k < 2) {
            return bad("sync_bn_group", "must be >= 2 ranks (1 is per-rank BN: sync_bn = false)");
        }
        if self.sync_bn_group.is_some() && !self.sync_bn {
            return bad("sync_bn_group", "needs sync_bn = true");
        }
        if let Some(r) = &self.reference_plan {
            if let Err(e) = r.sharding.parse::<crate::sharding::Sharding>() {
                return bad("reference_plan.sharding", &e.0);
            }
        }
        Ok(())
    }

    /// Crop groups as the cost model wants them.
    pub fn crop_groups(&self) -> Vec<CropGroup> {
        self.data.crops.iter().map(|c| CropGroup { count: c.count, resolution: c.resolution }).collect()
    }

    /// Resolution of the largest crop group (0 without crops).
    pub fn largest_crop(&self) -> u64 {
        self.data.crops.iter().map(|c| c.resolution).max().unwrap_or(0)
    }

    /// The same crops with the largest group at `px` and the others scaled
    /// by the same factor (at least 8 px); `None` when there are no crops.
    pub fn with_largest_crop(&self, px: u64) -> Option<Recipe> {
        let largest = self.largest_crop();
        if largest == 0 {
            return None;
        }
        let mut r = self.clone();
        for c in &mut r.data.crops {
            c.resolution = ((c.resolution as f64 * px as f64 / largest as f64).round() as u64).max(8);
        }
        Some(r)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cost_models::config::parse_toml;

    #[test]
    fn builtin_recipes_load_and_name_existing_models() {
        for (name, _) in BUILTIN_RECIPES {
            let r = Recipe::load(name).unwrap_or_else(|e| panic!("{name}: {e}"));
            cost_models::config::ModelConfig::load(&r.model).unwrap();
        }
        let seer = Recipe::load("seer-10b").unwrap();
        assert_eq!(seer.cluster.gpus, 496);
        assert_eq!(seer.reference_plan.unwrap().stage_checkpoints, vec![vec![2], vec![7], vec![9, 17], vec![]]);
    }

    #[test]
    fn sync_bn_groups_cover_or_tile_the_world_and_queues_hold_whole_batches() {
        let seer = Recipe::load("seer-10b").unwrap();
        assert_eq!(seer.sync_bn_group_for(496), Ok(Some(8)));
        assert_eq!(seer.sync_bn_group_for(8), Ok(None));
        assert_eq!(seer.sync_bn_group_for(4), Ok(None));
        assert!(seer.sync_bn_group_for(12).unwrap_err().contains("do not divide"));
        let mut s = seer.swav.clone();
        assert_eq!(s.queue_length_for(7936), 0);
        s.queue_length = 3840;
        assert_eq!((s.queue_length_for(128), s.queue_length_for(112), s.queue_length_for(5000)), (3840, 3808, 0));
    }

    #[test]
    fn bad_recipe_names_field() {
        let text = include_str!("../../configs/recipes/tiny-cpu.toml").replace("temperature = 0.1", "temperature = -1.0");
        let r: Recipe = parse_toml(&text, "x.toml").unwrap();
        let e = r.validate("x.toml").unwrap_err().to_string();
        assert!(e.contains("x.toml") && e.contains("swav"), "{e}");
    }
}
