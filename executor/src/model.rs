//! RegNet-Y trunk + SwAV head as *functions of named parameters*, so the FSDP
//! runtime owns every parameter's storage and hands each block views of a
//! gathered buffer. Block and parameter names follow the naming contract in
//! docs/architecture.md (the cost model's `ModelGraph` lists the same blocks
//! and parameter tensors in the same order).
//!
//! Activations between blocks are a `Vec<Tensor>`: one tensor per crop
//! resolution group for trunk blocks (the trunk runs once per resolution),
//! one `[rows, d]` tensor after `head.mlp`, the `[rows, K]` fp32 scores after
//! `head.proto`. Within a resolution group rows are image-major
//! (`img0 crop0, img0 crop1, img1 crop0, ...`), so contiguous batch groups are
//! contiguous image ranges, i.e. ranks.

use crate::padding::{real_positions, PaddedParams, PaddingPlan};
use crate::reduce::ReduceError;
use cost_models::config::ModelConfig;
use cost_models::padding::ChannelPadding;
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;
use rand_distr::StandardNormal;
use std::collections::{BTreeMap, HashMap};
use tch::{Device, Kind, TchError, Tensor};

/// BN epsilon and default momentum of torchvision / pycls RegNet.
pub const BN_EPS: f64 = 1e-5;
pub const BN_MOMENTUM: f64 = 0.1;
/// F.normalize's epsilon.
const NORM_EPS: f64 = 1e-12;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error("invalid model config: field `{field}`: {reason}")]
    Config { field: String, reason: String },
    #[error("unknown block `{0}`")]
    UnknownBlock(String),
    #[error("parameter `{0}` was not provided")]
    MissingParam(String),
    #[error("BN buffers of layer `{0}` are missing")]
    MissingBuffer(String),
    #[error("bad input to block `{block}`: {reason}")]
    Input { block: String, reason: String },
    #[error("synchronized BN of layer `{layer}`: {source}")]
    SyncBn { layer: String, source: ReduceError },
    #[error("libtorch: {0}")]
    Torch(#[from] TchError),
}

/// How a parameter is initialised (torchvision RegNet / SwAV conventions).
#[derive(Clone, Debug, PartialEq)]
pub enum Init {
    /// Conv weight: normal(0, sqrt(2 / fan_out)), fan_out = k*k*out, not
    /// divided by the groups (torchvision, pycls and VISSL's RegNet).
    KaimingNormalFanOut {
        fan_out: usize,
    },
    /// uniform(-bound, bound), bound = 1/sqrt(fan_in): PyTorch's default for
    /// conv biases (torchvision's RegNet leaves the SE ones so) and for
    /// Linear weights and biases (VISSL's SwAV head keeps it).
    Uniform {
        bound: f64,
    },
    /// normal(0, std).
    Normal {
        std: f64,
    },
    /// Prototypes: nn.Linear's default uniform(±1/sqrt(d)), then rows
    /// L2-normalised (SwAV normalises them before every step anyway).
    Prototypes {
        bound: f64,
    },
    Ones,
    Zeros,
}

/// One parameter tensor of the model.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamSpec {
    /// `s3.b12.b.weight`, `head.proto.weight`, ...
    pub name: String,
    pub shape: Vec<i64>,
    /// The block it belongs to (`stem`, `s1.b0`, `head.mlp`, `head.proto`).
    pub block: String,
    pub init: Init,
}

impl ParamSpec {
    pub fn numel(&self) -> i64 {
        self.shape.iter().product()
    }

    /// The initial value as a CPU fp32 tensor. Depends only on `(seed, name)`
    /// so every world size (and every unit order) starts from the same
    /// parameters, and a rank can initialise one unit at a time.
    pub fn init_tensor(&self, seed: u64) -> Result<Tensor, ModelError> {
        let n = self.numel() as usize;
        let mut rng = ChaCha8Rng::seed_from_u64(param_seed(seed, &self.name));
        let data: Vec<f32> = match &self.init {
            Init::Ones => vec![1.0; n],
            Init::Zeros => vec![0.0; n],
            Init::KaimingNormalFanOut { fan_out } => {
                let std = (2.0 / (*fan_out).max(1) as f64).sqrt();
                normal(&mut rng, n, std)
            }
            Init::Normal { std } => normal(&mut rng, n, *std),
            Init::Uniform { bound } | Init::Prototypes { bound } => (0..n).map(|_| rng.gen_range(-*bound..=*bound) as f32).collect(),
        };
        let t = Tensor::f_from_slice(&data)?.f_view(self.shape.as_slice())?;
        if let Init::Prototypes { .. } = self.init {
            let norm = t.f_norm_scalaropt_dim(2, [1i64], true)?.f_clamp_min(NORM_EPS)?;
            return Ok(t.f_div(&norm)?);
        }
        Ok(t)
    }
}

fn normal(rng: &mut ChaCha8Rng, n: usize, std: f64) -> Vec<f32> {
    (0..n).map(|_| (rng.sample::<f64, _>(StandardNormal) * std) as f32).collect()
}

/// A parameter's initialisation seed: stable across platforms and Rust
/// versions (`cost_models::hash::name_seed`).
fn param_seed(seed: u64, name: &str) -> u64 {
    cost_models::hash::name_seed(seed, name)
}

/// One residual block: `cost_models::regnet::BlockSpec` (the one derivation
/// of the network) in the integer type tch takes.
#[derive(Clone, Debug, PartialEq)]
pub struct ResBlock {
    pub name: String,
    pub w_in: i64,
    pub w_out: i64,
    /// Bottleneck width (channels of the 3x3 grouped conv).
    pub w_b: i64,
    pub groups: i64,
    pub stride: i64,
    /// SE squeeze channels; 0 = no SE (RegNet-X).
    pub se: i64,
    /// Projection shortcut (width or stride changes).
    pub proj: bool,
    /// Channels of the input it runs on: `w_in`, padded under channel padding.
    pub w_in_run: i64,
}

/// The concrete architecture of a [`ModelConfig`].
#[derive(Clone, Debug, PartialEq)]
pub struct ModelArch {
    pub stem_width: i64,
    pub blocks: Vec<ResBlock>,
    /// Output width of each projection Linear (input: trunk width).
    pub mlp_dims: Vec<i64>,
    pub prototypes: i64,
    /// BatchNorm after each hidden Linear of the head (`use_bn`).
    pub head_bn: bool,
    /// Channel padding (`cost_models::padding`): how each parameter and BN
    /// layer is padded where it is used; `None` runs the model's widths.
    pub padding: Option<PaddingPlan>,
}

impl ModelArch {
    /// The architecture of `cfg`, its channels padded to tensor-core
    /// multiples when `padding` is on: the same parameters and the same
    /// function, run at aligned widths.
    pub fn with_padding(cfg: &ModelConfig, padding: ChannelPadding) -> Result<ModelArch, ModelError> {
        let mut arch = ModelArch::new(cfg)?;
        if padding.is_on() {
            arch.padding = Some(PaddingPlan::new(cfg.regnet.stem_width, &cfg.regnet.blocks(), &cfg.head.mlp_dims, cfg.head.use_bn));
            for b in &mut arch.blocks {
                b.w_in_run = cost_models::padding::aligned(b.w_in as usize) as i64;
            }
        }
        Ok(arch)
    }

    pub fn new(cfg: &ModelConfig) -> Result<ModelArch, ModelError> {
        cfg.regnet.validate().map_err(|e| ModelError::Config { field: format!("regnet.{}", e.field), reason: e.reason })?;
        if cfg.head.mlp_dims.is_empty() || cfg.head.mlp_dims.contains(&0) {
            return Err(ModelError::Config { field: "head.mlp_dims".into(), reason: "needs at least one Linear, each of width >= 1".into() });
        }
        if cfg.head.prototypes == 0 {
            return Err(ModelError::Config { field: "head.prototypes".into(), reason: "must be >= 1".into() });
        }
        let spec = &cfg.regnet;
        let blocks = spec
            .blocks()
            .into_iter()
            .map(|b| ResBlock {
                name: b.name,
                w_in: b.w_in as i64,
                w_out: b.w_out as i64,
                w_b: b.w_b as i64,
                groups: b.groups as i64,
                stride: b.stride as i64,
                se: b.se as i64,
                proj: b.proj,
                w_in_run: b.w_in as i64,
            })
            .collect();
        Ok(ModelArch {
            stem_width: spec.stem_width as i64,
            blocks,
            mlp_dims: cfg.head.mlp_dims.iter().map(|&d| d as i64).collect(),
            prototypes: cfg.head.prototypes as i64,
            head_bn: cfg.head.use_bn,
            padding: None,
        })
    }

    /// Channels of the trunk output.
    pub fn trunk_width(&self) -> i64 {
        self.blocks.last().map_or(self.stem_width, |b| b.w_out)
    }

    /// Dimension of the L2-normalised embedding (input of the prototypes).
    pub fn embedding_dim(&self) -> i64 {
        *self.mlp_dims.last().unwrap_or(&self.trunk_width())
    }

    /// `stem`, `s1.b0`, ..., `head.mlp`, `head.proto`: the cost model's blocks.
    /// Blocks that run each resolution group separately (the stem and the
    /// residual blocks): the first `trunk_len()` of `block_names()`.
    pub fn trunk_len(&self) -> usize {
        1 + self.blocks.len()
    }

    pub fn block_names(&self) -> Vec<String> {
        let mut v = vec!["stem".to_string()];
        v.extend(self.blocks.iter().map(|b| b.name.clone()));
        v.push("head.mlp".into());
        v.push("head.proto".into());
        v
    }

    /// Every parameter tensor in forward order (the cost model's order).
    pub fn param_specs(&self) -> Vec<ParamSpec> {
        let mut out = Vec::new();
        let conv = |out: &mut Vec<ParamSpec>, block: &str, layer: &str, cin: i64, cout: i64, k: i64, groups: i64, bias: bool| {
            out.push(ParamSpec {
                name: format!("{layer}.weight"),
                shape: vec![cout, cin / groups, k, k],
                block: block.to_string(),
                init: Init::KaimingNormalFanOut { fan_out: (k * k * cout) as usize },
            });
            if bias {
                let fan_in = (cin / groups) * k * k;
                out.push(ParamSpec {
                    name: format!("{layer}.bias"),
                    shape: vec![cout],
                    block: block.to_string(),
                    init: Init::Uniform { bound: 1.0 / (fan_in as f64).sqrt() },
                });
            }
        };
        let bn = |out: &mut Vec<ParamSpec>, block: &str, layer: &str, c: i64| {
            out.push(ParamSpec { name: format!("{layer}.weight"), shape: vec![c], block: block.into(), init: Init::Ones });
            out.push(ParamSpec { name: format!("{layer}.bias"), shape: vec![c], block: block.into(), init: Init::Zeros });
        };
        conv(&mut out, "stem", "stem.conv", 3, self.stem_width, 3, 1, false);
        bn(&mut out, "stem", "stem.bn", self.stem_width);
        for b in &self.blocks {
            let n = &b.name;
            if b.proj {
                conv(&mut out, n, &format!("{n}.proj"), b.w_in, b.w_out, 1, 1, false);
                bn(&mut out, n, &format!("{n}.proj_bn"), b.w_out);
            }
            conv(&mut out, n, &format!("{n}.a"), b.w_in, b.w_b, 1, 1, false);
            bn(&mut out, n, &format!("{n}.a_bn"), b.w_b);
            conv(&mut out, n, &format!("{n}.b"), b.w_b, b.w_b, 3, b.groups, false);
            bn(&mut out, n, &format!("{n}.b_bn"), b.w_b);
            if b.se > 0 {
                conv(&mut out, n, &format!("{n}.se.reduce"), b.w_b, b.se, 1, 1, true);
                conv(&mut out, n, &format!("{n}.se.expand"), b.se, b.w_b, 1, 1, true);
            }
            conv(&mut out, n, &format!("{n}.c"), b.w_b, b.w_out, 1, 1, false);
            bn(&mut out, n, &format!("{n}.c_bn"), b.w_out);
        }
        let mut d_in = self.trunk_width();
        for (k, &d) in self.mlp_dims.iter().enumerate() {
            // nn.Linear's default init, which VISSL's SwAV head keeps: a
            // normal(0, 0.01) head on a narrow trunk makes the pre-normalise
            // features tiny, and the first step's bias update collapses them.
            let bound = 1.0 / (d_in as f64).sqrt();
            out.push(ParamSpec { name: format!("head.mlp.{k}.weight"), shape: vec![d, d_in], block: "head.mlp".into(), init: Init::Uniform { bound } });
            out.push(ParamSpec { name: format!("head.mlp.{k}.bias"), shape: vec![d], block: "head.mlp".into(), init: Init::Uniform { bound } });
            if self.head_bn && k + 1 < self.mlp_dims.len() {
                bn(&mut out, "head.mlp", &format!("head.mlp.{k}.bn"), d);
            }
            d_in = d;
        }
        out.push(ParamSpec {
            name: "head.proto.weight".into(),
            shape: vec![self.prototypes, d_in],
            block: "head.proto".into(),
            init: Init::Prototypes { bound: 1.0 / (d_in as f64).sqrt() },
        });
        out
    }

    /// Layer names of every BN (each has running mean/var buffers).
    pub fn bn_layers(&self) -> Vec<(String, i64)> {
        let mut v = vec![("stem.bn".to_string(), self.stem_width)];
        for b in &self.blocks {
            if b.proj {
                v.push((format!("{}.proj_bn", b.name), b.w_out));
            }
            v.push((format!("{}.a_bn", b.name), b.w_b));
            v.push((format!("{}.b_bn", b.name), b.w_b));
            v.push((format!("{}.c_bn", b.name), b.w_out));
        }
        if self.head_bn {
            let hidden = self.mlp_dims.len().saturating_sub(1);
            v.extend(self.mlp_dims[..hidden].iter().enumerate().map(|(k, &d)| (format!("head.mlp.{k}.bn"), d)));
        }
        v
    }

    /// Initial parameters `(name, CPU fp32 tensor)` in forward order.
    pub fn init_params(&self, seed: u64) -> Result<Vec<(String, Tensor)>, ModelError> {
        self.param_specs().iter().map(|p| Ok((p.name.clone(), p.init_tensor(seed)?))).collect()
    }

    /// Runs one block. `xs`: one tensor per resolution group for trunk blocks
    /// and `head.mlp`, the single embedding tensor for `head.proto`.
    pub fn forward_block(&self, block: &str, params: &dyn ParamSource, bn: &mut BnState, xs: &[Tensor], mode: &Mode<'_>) -> Result<Vec<Tensor>, ModelError> {
        if xs.is_empty() {
            return Err(ModelError::Input { block: block.into(), reason: "no input tensors".into() });
        }
        let padded;
        let params: &dyn ParamSource = match &self.padding {
            Some(plan) => {
                padded = PaddedParams::new(params, plan);
                &padded
            }
            None => params,
        };
        let mut ctx = Ctx { params, bn, mode, block };
        match block {
            "stem" => xs.iter().map(|x| ctx.stem(x)).collect(),
            "head.mlp" => Ok(vec![ctx.head_mlp(xs, self.mlp_dims.len(), self.head_bn)?]),
            "head.proto" => {
                if xs.len() != 1 {
                    return Err(ModelError::Input { block: block.into(), reason: "expects one embedding tensor".into() });
                }
                Ok(vec![ctx.head_proto(&xs[0])?])
            }
            _ => {
                let b = self.blocks.iter().find(|b| b.name == block).ok_or_else(|| ModelError::UnknownBlock(block.into()))?;
                xs.iter().map(|x| ctx.res_block(b, x)).collect()
            }
        }
    }

    /// The whole model, block by block (the non-FSDP reference path):
    /// per-group image batches in, `[rows, K]` fp32 scores out.
    pub fn forward(&self, params: &dyn ParamSource, bn: &mut BnState, inputs: &[Tensor], mode: &Mode<'_>) -> Result<Tensor, ModelError> {
        let mut xs: Vec<Tensor> = inputs.iter().map(|t| t.shallow_clone()).collect();
        for name in self.block_names() {
            xs = self.forward_block(&name, params, bn, &xs, mode)?;
        }
        Ok(xs.remove(0))
    }
}

/// Convenience wrappers with the shapes the planner side uses.
pub fn param_specs(cfg: &ModelConfig) -> Result<Vec<ParamSpec>, ModelError> {
    Ok(ModelArch::new(cfg)?.param_specs())
}
pub fn block_names(cfg: &ModelConfig) -> Result<Vec<String>, ModelError> {
    Ok(ModelArch::new(cfg)?.block_names())
}

/// Where a block finds its parameters by name (views into an FSDP buffer,
/// or plain tensors for the reference path).
pub trait ParamSource {
    fn param(&self, name: &str) -> Option<Tensor>;
}
impl ParamSource for HashMap<String, Tensor> {
    fn param(&self, name: &str) -> Option<Tensor> {
        self.get(name).map(|t| t.shallow_clone())
    }
}
impl ParamSource for BTreeMap<String, Tensor> {
    fn param(&self, name: &str) -> Option<Tensor> {
        self.get(name).map(|t| t.shallow_clone())
    }
}
/// Adapts a closure, e.g. one slicing a gathered flat buffer.
pub struct FnParams<F: Fn(&str) -> Option<Tensor>>(pub F);
impl<F: Fn(&str) -> Option<Tensor>> ParamSource for FnParams<F> {
    fn param(&self, name: &str) -> Option<Tensor> {
        (self.0)(name)
    }
}

/// Batch statistics over every rank (SyncBN). The process group implements
/// it (`train::entry`), so the model needs no c10d types and tests can supply
/// their own.
pub trait SyncBn {
    /// Training-mode batch norm of `x` (`[N, C, ...]`, any float dtype) with
    /// fp32 `weight`/`bias` and statistics over all ranks; the result has
    /// `x`'s dtype. `running`: `(running_mean, running_var, momentum)` to
    /// update in place, None to leave them alone. Collective: every rank
    /// calls it, and back-propagates through the result, in the same order.
    fn batch_norm(&self, x: &Tensor, weight: &Tensor, bias: &Tensor, running: Option<(&Tensor, &Tensor, f64)>, eps: f64) -> Result<Tensor, ReduceError>;
}

/// How blocks run.
#[derive(Clone, Copy)]
pub struct Mode<'s> {
    /// Batch statistics (train) or running statistics (eval) in BN.
    pub train: bool,
    /// Running-stat momentum; 0 while recomputing a checkpointed segment so
    /// the running statistics are updated exactly once per step.
    pub bn_momentum: f64,
    /// BN statistics per this many contiguous groups of each batch: a
    /// world-size-1 run with `bn_groups = N` reproduces per-rank BN of N ranks.
    pub bn_groups: usize,
    /// Training-mode BN statistics over all ranks through this (SyncBN)
    /// instead of per rank; excludes `bn_groups > 1`.
    pub sync_bn: Option<&'s dyn SyncBn>,
}

impl std::fmt::Debug for Mode<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mode")
            .field("train", &self.train)
            .field("bn_momentum", &self.bn_momentum)
            .field("bn_groups", &self.bn_groups)
            .field("sync_bn", &self.sync_bn.is_some())
            .finish()
    }
}

impl<'s> Mode<'s> {
    pub fn train() -> Mode<'static> {
        Mode { train: true, bn_momentum: BN_MOMENTUM, bn_groups: 1, sync_bn: None }
    }
    pub fn eval() -> Mode<'static> {
        Mode { train: false, bn_momentum: 0.0, bn_groups: 1, sync_bn: None }
    }
    /// The same mode for a recompute pass (running stats left alone; SyncBN's
    /// all-reduce still runs, in the same order on every rank).
    pub fn recompute(&self) -> Mode<'s> {
        Mode { bn_momentum: 0.0, ..*self }
    }
    pub fn with_bn_groups(self, g: usize) -> Mode<'s> {
        Mode { bn_groups: g, ..self }
    }
    pub fn with_sync_bn(self, sync: &'s dyn SyncBn) -> Mode<'s> {
        Mode { sync_bn: Some(sync), ..self }
    }
}

/// Running mean/var of every BN layer: buffers, per rank, never sharded.
/// Under channel padding they hold the padded channels too; checkpoints
/// see the real ones only.
pub struct BnState {
    stats: BTreeMap<String, (Tensor, Tensor)>,
    /// Per padded layer, where its real channels sit.
    real: BTreeMap<String, Tensor>,
}

impl BnState {
    /// Mean 0, var 1 in fp32 on `device`.
    pub fn new(arch: &ModelArch, device: Device) -> BnState {
        let (mut stats, mut real) = (BTreeMap::new(), BTreeMap::new());
        for (n, c) in arch.bn_layers() {
            let layout = arch.padding.as_ref().and_then(|p| p.bn_layout(&n)).copied();
            let width = layout.map_or(c, |l| l.padded_total() as i64);
            if let Some(l) = layout {
                real.insert(n.clone(), Tensor::from_slice(&real_positions(&l)).to_device(device));
            }
            stats.insert(n, (Tensor::zeros([width], (Kind::Float, device)), Tensor::ones([width], (Kind::Float, device))));
        }
        BnState { stats, real }
    }

    fn get(&self, layer: &str) -> Result<(Tensor, Tensor), ModelError> {
        self.stats.get(layer).map(|(m, v)| (m.shallow_clone(), v.shallow_clone())).ok_or_else(|| ModelError::MissingBuffer(layer.into()))
    }

    /// `(layer.running_mean | layer.running_var, tensor)` for checkpoints.
    pub fn buffers(&self) -> Vec<(String, Tensor)> {
        let mut v = Vec::new();
        for (n, (m, var)) in &self.stats {
            let real = |t: &Tensor| match self.real.get(n) {
                Some(pos) => t.index_select(0, pos),
                None => t.shallow_clone(),
            };
            v.push((format!("{n}.running_mean"), real(m)));
            v.push((format!("{n}.running_var"), real(var)));
        }
        v
    }

    /// Copies saved buffers back in; every buffer must be present.
    pub fn load(&mut self, buffers: &[(String, Tensor)]) -> Result<(), ModelError> {
        let map: HashMap<&str, &Tensor> = buffers.iter().map(|(n, t)| (n.as_str(), t)).collect();
        for (n, (m, v)) in self.stats.iter_mut() {
            for (suffix, dst) in [("running_mean", m), ("running_var", v)] {
                let key = format!("{n}.{suffix}");
                let src = map.get(key.as_str()).ok_or_else(|| ModelError::MissingBuffer(key.clone()))?;
                let pos = self.real.get(n);
                let want = pos.map_or(dst.size(), |p| p.size());
                if src.size() != want {
                    return Err(ModelError::Input { block: key, reason: format!("shape {:?} != {:?}", src.size(), want) });
                }
                match pos {
                    Some(p) => {
                        let _ = dst.f_index_copy_(0, p, &src.f_to_device(dst.device())?)?;
                    }
                    None => {
                        dst.f_copy_(src)?;
                    }
                }
            }
        }
        Ok(())
    }
}

struct Ctx<'a> {
    params: &'a dyn ParamSource,
    bn: &'a mut BnState,
    mode: &'a Mode<'a>,
    block: &'a str,
}

impl Ctx<'_> {
    fn p(&self, name: &str) -> Result<Tensor, ModelError> {
        self.params.param(name).ok_or_else(|| ModelError::MissingParam(name.into()))
    }

    fn conv(&self, x: &Tensor, layer: &str, stride: i64, pad: i64, groups: i64, bias: bool) -> Result<Tensor, ModelError> {
        let w = self.p(&format!("{layer}.weight"))?;
        let b = if bias { Some(self.p(&format!("{layer}.bias"))?) } else { None };
        Ok(x.f_conv2d(&w, b.as_ref(), [stride, stride], [pad, pad], [1, 1], groups)?)
    }

    /// BN with per-group statistics, or over all ranks with SyncBN. Weight
    /// and bias are used in fp32 (BN kept in fp32 as SEER does); libtorch
    /// accepts reduced-precision input with fp32 parameters and running stats.
    fn bn(&mut self, x: &Tensor, layer: &str) -> Result<Tensor, ModelError> {
        let w = self.p(&format!("{layer}.weight"))?.f_to_kind(Kind::Float)?;
        let b = self.p(&format!("{layer}.bias"))?.f_to_kind(Kind::Float)?;
        let (mut rm, mut rv) = self.bn.get(layer)?;
        let m = self.mode;
        let g = m.bn_groups.max(1);
        if let (true, Some(sync)) = (m.train, m.sync_bn) {
            if g != 1 {
                return Err(ModelError::Input {
                    block: self.block.into(),
                    reason: format!("SyncBN takes statistics over all ranks; it cannot also split the batch into {g} BN groups"),
                });
            }
            // Momentum 0 (a recompute pass) leaves the running stats alone;
            // the forward all-reduce still runs so collectives stay matched.
            let running = (m.bn_momentum > 0.0).then_some((&rm, &rv, m.bn_momentum));
            return sync.batch_norm(x, &w, &b, running, BN_EPS).map_err(|source| ModelError::SyncBn { layer: layer.into(), source });
        }
        if !m.train || g == 1 {
            return Ok(x.f_batch_norm(Some(&w), Some(&b), Some(&rm), Some(&rv), m.train, m.bn_momentum, BN_EPS, true)?);
        }
        let n = x.size()[0];
        if n % g as i64 != 0 {
            return Err(ModelError::Input { block: self.block.into(), reason: format!("batch of {n} rows does not split into {g} BN groups") });
        }
        // Each chunk is what one rank would see: its own batch statistics and
        // its own running-stat update; the running stats kept are the mean of
        // the per-rank ones (the update is linear, so that is exact).
        let mut outs = Vec::with_capacity(g);
        let mut means = Vec::with_capacity(g);
        let mut vars = Vec::with_capacity(g);
        for chunk in x.f_chunk(g as i64, 0)? {
            let (cm, cv) = (rm.f_detach_copy()?, rv.f_detach_copy()?);
            outs.push(chunk.f_batch_norm(Some(&w), Some(&b), Some(&cm), Some(&cv), true, m.bn_momentum, BN_EPS, true)?);
            means.push(cm);
            vars.push(cv);
        }
        tch::no_grad(|| -> Result<(), TchError> {
            rm.f_copy_(&Tensor::f_stack(&means, 0)?.f_mean_dim(&[0i64][..], false, Kind::Float)?)?;
            rv.f_copy_(&Tensor::f_stack(&vars, 0)?.f_mean_dim(&[0i64][..], false, Kind::Float)?)?;
            Ok(())
        })?;
        Ok(Tensor::f_cat(&outs, 0)?)
    }

    /// BN then ReLU in place (torchvision's Conv2dNormActivation).
    fn bn_relu(&mut self, x: &Tensor, layer: &str) -> Result<Tensor, ModelError> {
        let mut y = self.bn(x, layer)?;
        let _ = y.f_relu_()?;
        Ok(y)
    }

    fn check_input(&self, x: &Tensor, channels: i64) -> Result<(), ModelError> {
        let s = x.size();
        if s.len() != 4 || s[1] != channels {
            return Err(ModelError::Input { block: self.block.into(), reason: format!("expected [N, {channels}, H, W], got {s:?}") });
        }
        Ok(())
    }

    fn stem(&mut self, x: &Tensor) -> Result<Tensor, ModelError> {
        self.check_input(x, 3)?;
        let y = self.conv(x, "stem.conv", 2, 1, 1, false)?;
        self.bn_relu(&y, "stem.bn")
    }

    fn res_block(&mut self, b: &ResBlock, x: &Tensor) -> Result<Tensor, ModelError> {
        self.check_input(x, b.w_in_run)?;
        let n = &b.name;
        // Shortcut first, as torchvision computes `proj(x) + f(x)`.
        let shortcut = if b.proj {
            let p = self.conv(x, &format!("{n}.proj"), b.stride, 0, 1, false)?;
            self.bn(&p, &format!("{n}.proj_bn"))?
        } else {
            x.shallow_clone()
        };
        let a = self.conv(x, &format!("{n}.a"), 1, 0, 1, false)?;
        let a = self.bn_relu(&a, &format!("{n}.a_bn"))?;
        let y = self.conv(&a, &format!("{n}.b"), b.stride, 1, b.groups, false)?;
        let mut y = self.bn_relu(&y, &format!("{n}.b_bn"))?;
        if b.se > 0 {
            y = self.squeeze_excite(&y, n)?;
        }
        let c = self.conv(&y, &format!("{n}.c"), 1, 0, 1, false)?;
        let c = self.bn(&c, &format!("{n}.c_bn"))?;
        let mut out = c.f_add(&shortcut)?;
        let _ = out.f_relu_()?;
        Ok(out)
    }

    /// Squeeze-excitation: the pooled channels through the reduce and
    /// expand 1x1 convolutions, run as the matrix multiplies they are on a
    /// 1x1 input (cuDNN's convolution kernels are slow at that shape, its
    /// bf16 weight gradient above all), then the sigmoid gate on `y`. Its
    /// ReLU is not in place (torchvision's SqueezeExcitation).
    fn squeeze_excite(&self, y: &Tensor, block: &str) -> Result<Tensor, ModelError> {
        let linear = |x: &Tensor, layer: &str| -> Result<Tensor, ModelError> {
            let w = self.p(&format!("{block}.{layer}.weight"))?.f_flatten(1, -1)?;
            let b = self.p(&format!("{block}.{layer}.bias"))?;
            Ok(x.f_linear(&w, Some(&b))?)
        };
        let s = y.f_adaptive_avg_pool2d([1, 1])?.f_flatten(1, -1)?;
        let s = linear(&s, "se.reduce")?.f_relu()?;
        let s = linear(&s, "se.expand")?.f_sigmoid()?;
        Ok(y.f_mul(&s.f_unsqueeze(-1)?.f_unsqueeze(-1)?)?)
    }

    /// Pools every resolution group's trunk output, concatenates the rows,
    /// then Linear / (BN) / in-place ReLU ... Linear, then L2 normalisation.
    fn head_mlp(&mut self, xs: &[Tensor], layers: usize, bn: bool) -> Result<Tensor, ModelError> {
        if bn && self.mode.train && self.mode.bn_groups > 1 && xs.len() > 1 {
            return Err(ModelError::Input {
                block: self.block.into(),
                reason: "per-rank BN emulation (bn_groups) cannot split the head's rows of several crop groups by rank".into(),
            });
        }
        let mut pooled = Vec::with_capacity(xs.len());
        for x in xs {
            pooled.push(match x.dim() {
                4 => x.f_adaptive_avg_pool2d([1, 1])?.f_flatten(1, -1)?,
                2 => x.shallow_clone(),
                d => return Err(ModelError::Input { block: self.block.into(), reason: format!("expected 4-D or 2-D input, got {d}-D") }),
            });
        }
        let mut h = if pooled.len() == 1 { pooled.remove(0) } else { Tensor::f_cat(&pooled, 0)? };
        for k in 0..layers {
            let w = self.p(&format!("head.mlp.{k}.weight"))?;
            let b = self.p(&format!("head.mlp.{k}.bias"))?;
            if h.size()[1] != w.size()[1] {
                return Err(ModelError::Input {
                    block: self.block.into(),
                    reason: format!("head.mlp.{k} expects {} features, got {}", w.size()[1], h.size()[1]),
                });
            }
            h = h.f_linear(&w, Some(&b))?;
            if k + 1 < layers {
                if bn {
                    h = self.bn(&h, &format!("head.mlp.{k}.bn"))?;
                }
                let _ = h.f_relu_()?;
            }
        }
        // Normalised in fp32 whatever the compute dtype, as autocast runs
        // `norm`: an fp16 norm of a wide embedding loses the digits the
        // prototype scores (and Sinkhorn's exp(score / 0.03)) depend on.
        let h = h.f_to_kind(Kind::Float)?;
        let norm = h.f_norm_scalaropt_dim(2, [1i64], true)?.f_clamp_min(NORM_EPS)?;
        Ok(h.f_div(&norm)?)
    }

    /// Prototype scores in fp32 (SEER keeps the prototypes in fp32).
    fn head_proto(&mut self, x: &Tensor) -> Result<Tensor, ModelError> {
        let w = self.p("head.proto.weight")?.f_to_kind(Kind::Float)?;
        let x = x.f_to_kind(Kind::Float)?;
        if x.dim() != 2 || x.size()[1] != w.size()[1] {
            return Err(ModelError::Input { block: self.block.into(), reason: format!("expected [rows, {}], got {:?}", w.size()[1], x.size()) });
        }
        Ok(x.f_linear::<Tensor>(&w, None)?)
    }
}

/// The multi-crop layout of one rank's batch: `images` images, each cut
/// into `groups[g]` crops of resolution group g. Scores rows are group after
/// group, image-major within a group.
#[derive(Clone, Debug, PartialEq)]
pub struct CropLayout {
    pub images: i64,
    pub groups: Vec<i64>,
}

impl CropLayout {
    pub fn num_crops(&self) -> i64 {
        self.groups.iter().sum()
    }
    pub fn rows(&self) -> i64 {
        self.images * self.num_crops()
    }

    /// The `[images, K]` rows of crop `v` (crops numbered across groups:
    /// the 2 large crops are 0 and 1), in image order.
    pub fn crop_rows(&self, scores: &Tensor, v: i64) -> Result<Tensor, ModelError> {
        let s = scores.size();
        if s.len() != 2 || s[0] != self.rows() {
            return Err(ModelError::Input { block: "loss".into(), reason: format!("scores {s:?} do not have {} rows", self.rows()) });
        }
        let (mut first, mut offset) = (0, 0);
        for &c in &self.groups {
            if v < first + c {
                let block = scores.f_narrow(0, offset, self.images * c)?.f_view([self.images, c, s[1]])?;
                return Ok(block.f_select(1, v - first)?);
            }
            first += c;
            offset += self.images * c;
        }
        Err(ModelError::Input { block: "loss".into(), reason: format!("crop {v} out of {} crops", self.num_crops()) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cost_models::graph::{ModelGraph, Workload};
    use cost_models::quantity::DType;

    fn cfg(name: &str) -> ModelConfig {
        ModelConfig::load(name).unwrap()
    }

    fn params(arch: &ModelArch, seed: u64) -> HashMap<String, Tensor> {
        arch.init_params(seed).unwrap().into_iter().collect()
    }

    #[test]
    fn params_and_blocks_match_the_cost_model() {
        for name in ["regnety-tiny", "regnety-400mf"] {
            let c = cfg(name);
            let arch = ModelArch::new(&c).unwrap();
            let graph = ModelGraph::build(&c, &Workload::single(1, 64, DType::Fp32));
            let graph_blocks: Vec<String> = graph.blocks.iter().map(|b| b.name.clone()).collect();
            assert_eq!(arch.block_names(), graph_blocks, "{name}");
            // Same tensors, same order, same sizes, same blocks.
            let ours: Vec<(String, String, u64)> = arch.param_specs().iter().map(|p| (p.block.clone(), p.name.clone(), p.numel() as u64)).collect();
            let theirs: Vec<(String, String, u64)> =
                graph.blocks.iter().flat_map(|b| b.param_tensors.iter().map(move |(n, k)| (b.name.clone(), n.clone(), *k))).collect();
            assert_eq!(ours, theirs, "{name}");
        }
        let arch = ModelArch::new(&cfg("regnety-400mf")).unwrap();
        // SwAV's ImageNet head: BN after the hidden Linear, with running stats.
        assert!(arch.param_specs().iter().any(|p| p.name == "head.mlp.0.bn.weight" && p.shape == [2048]));
        assert!(arch.bn_layers().contains(&("head.mlp.0.bn".to_string(), 2048)));
        assert!(!arch.param_specs().iter().any(|p| p.name == "head.mlp.1.bn.weight"));
        let trunk: i64 = arch.param_specs().iter().filter(|p| !p.block.starts_with("head")).map(|p| p.numel()).sum();
        // torchvision regnet_y_400mf: 4,344,144 minus its 440x1000 + 1000 fc.
        assert_eq!(trunk, 3_903_144);
    }

    /// The SE gate as matrix multiplies equals torchvision's 1x1
    /// convolutions on the pooled input: output and every gradient, fp32
    /// and bf16.
    #[test]
    fn squeeze_excitation_as_matmuls_equals_the_1x1_convolutions() {
        let arch = ModelArch::new(&cfg("regnety-tiny")).unwrap();
        for kind in [Kind::Float, Kind::BFloat16] {
            tch::manual_seed(5);
            let (c, se) = (24, 6);
            let leaf = |shape: &[i64]| (Tensor::randn(shape, (Kind::Float, Device::Cpu)) * 0.3).to_kind(kind).set_requires_grad(true);
            let params: HashMap<String, Tensor> = [
                ("b.se.reduce.weight", leaf(&[se, c, 1, 1])),
                ("b.se.reduce.bias", leaf(&[se])),
                ("b.se.expand.weight", leaf(&[c, se, 1, 1])),
                ("b.se.expand.bias", leaf(&[c])),
            ]
            .into_iter()
            .map(|(n, t)| (n.to_string(), t))
            .collect();
            let y = leaf(&[4, c, 5, 5]);
            let mut bn = BnState::new(&arch, Device::Cpu);
            let mode = Mode::train();
            let ctx = Ctx { params: &params, bn: &mut bn, mode: &mode, block: "b" };
            let ours = ctx.squeeze_excite(&y, "b").unwrap();
            let s = y.adaptive_avg_pool2d([1, 1]);
            let s = ctx.conv(&s, "b.se.reduce", 1, 0, 1, true).unwrap().relu();
            let s = ctx.conv(&s, "b.se.expand", 1, 0, 1, true).unwrap().sigmoid();
            let theirs = &y * s;
            let tol = if kind == Kind::Float { 1e-6 } else { 2e-2 };
            let close = |a: &Tensor, b: &Tensor, what: &str| {
                let (a, b) = (a.to_kind(Kind::Float), b.to_kind(Kind::Float));
                let d = (&a - &b).abs().max().double_value(&[]);
                let scale = b.abs().max().double_value(&[]).max(1e-3);
                assert!(d <= tol * scale, "{kind:?} {what}: max diff {d} of {scale}");
            };
            close(&ours, &theirs, "output");
            let g = Tensor::randn_like(&ours.to_kind(Kind::Float)).to_kind(kind);
            let mut inputs: Vec<&Tensor> = vec![&y];
            let names = ["b.se.reduce.weight", "b.se.reduce.bias", "b.se.expand.weight", "b.se.expand.bias"];
            inputs.extend(names.iter().map(|n| &params[*n]));
            let ga = Tensor::run_backward(&[(&ours * &g).sum(Kind::Float)], &inputs, false, false);
            let gb = Tensor::run_backward(&[(&theirs * &g).sum(Kind::Float)], &inputs, false, false);
            for ((a, b), what) in ga.iter().zip(&gb).zip(["input"].iter().chain(names.iter())) {
                close(a, b, what);
            }
        }
    }

    /// Under channel padding the BN buffers hold the padded channels, and
    /// checkpoints see (and restore) the real ones only.
    #[test]
    fn padded_bn_buffers_save_and_load_their_real_channels() {
        let mut c = cfg("regnety-tiny");
        c.regnet.group_width = 6;
        let plain = ModelArch::new(&c).unwrap();
        let padded = ModelArch::with_padding(&c, ChannelPadding::On).unwrap();
        let mut bn = BnState::new(&padded, Device::Cpu);
        let saved: Vec<(String, Tensor)> = BnState::new(&plain, Device::Cpu).buffers().into_iter().map(|(n, t)| (n, Tensor::randn_like(&t))).collect();
        bn.load(&saved).unwrap();
        let back = bn.buffers();
        assert_eq!(back.len(), saved.len());
        for ((n, a), (_, b)) in saved.iter().zip(&back) {
            assert!(a.equal(b), "{n}");
        }
        // The padded layers really are wider, and their padding untouched.
        let (m, _) = bn.get("s1.b0.b_bn").unwrap();
        assert!(m.size()[0] > saved.iter().find(|(n, _)| n == "s1.b0.b_bn.running_mean").unwrap().1.size()[0]);
        let real = back.iter().find(|(n, _)| n == "s1.b0.b_bn.running_mean").unwrap().1.abs().sum(Kind::Double).double_value(&[]);
        assert!((m.abs().sum(Kind::Double).double_value(&[]) - real).abs() < 1e-9, "padded channels of the running mean are not zero");
    }

    #[test]
    fn init_is_deterministic_per_name_and_follows_the_rules() {
        let arch = ModelArch::new(&cfg("regnety-tiny")).unwrap();
        let a = params(&arch, 3);
        let b = params(&arch, 3);
        let c = params(&arch, 4);
        for (n, t) in &a {
            assert!(t.equal(&b[n]), "{n}");
        }
        assert!(!a["s1.b0.a.weight"].equal(&c["s1.b0.a.weight"]));
        assert!(a["stem.bn.weight"].equal(&Tensor::ones([16], (Kind::Float, Device::Cpu))));
        assert!(a["s1.b0.a_bn.bias"].equal(&Tensor::zeros([8], (Kind::Float, Device::Cpu))));
        let b = &a["head.mlp.0.bias"]; // fan_in 64: uniform(+-1/8)
        assert!(b.abs().max().double_value(&[]) <= 0.125 && b.abs().max().double_value(&[]) > 0.05);
        // Prototypes are unit rows; kaiming std roughly sqrt(2 / fan_out).
        let norms = a["head.proto.weight"].norm_scalaropt_dim(2, [1i64], false);
        assert!(norms.allclose(&Tensor::ones([32], (Kind::Float, Device::Cpu)), 1e-5, 1e-6, false));
        // A grouped conv (32 out, 4 groups of 8, 3x3): fan_out 288, not 72.
        let w = &a["s3.b0.b.weight"];
        let std = w.std(true).double_value(&[]);
        assert!((std / (2.0f64 / 288.0).sqrt() - 1.0).abs() < 0.1, "{std}");
    }

    #[test]
    fn multicrop_forward_shapes_for_regnety_tiny() {
        let arch = ModelArch::new(&cfg("regnety-tiny")).unwrap();
        let p = params(&arch, 0);
        let mut bn = BnState::new(&arch, Device::Cpu);
        tch::manual_seed(0);
        let images = 3;
        let big = Tensor::randn([images * 2, 3, 32, 32], (Kind::Float, Device::Cpu));
        let small = Tensor::randn([images * 2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let mut xs = vec![big, small];
        for name in arch.block_names() {
            xs = arch.forward_block(&name, &p, &mut bn, &xs, &Mode::train()).unwrap();
            match name.as_str() {
                "stem" => {
                    assert_eq!(xs[0].size(), [6, 16, 16, 16]);
                    assert_eq!(xs[1].size(), [6, 16, 8, 8]);
                }
                "s4.b0" => {
                    assert_eq!(xs[0].size(), [6, 64, 1, 1]);
                    assert_eq!(xs[1].size(), [6, 64, 1, 1]);
                }
                "head.mlp" => {
                    assert_eq!(xs[0].size(), [12, 32]);
                    let n = xs[0].norm_scalaropt_dim(2, [1i64], false);
                    assert!(n.allclose(&Tensor::ones([12], (Kind::Float, Device::Cpu)), 1e-5, 1e-6, false));
                }
                _ => {}
            }
        }
        assert_eq!(xs[0].size(), [12, 32]);
        assert_eq!(xs[0].kind(), Kind::Float);
        let layout = CropLayout { images, groups: vec![2, 2] };
        assert_eq!(layout.rows(), 12);
        // Crop 3 is image i's second small crop: row 6 + 2i + 1.
        let c3 = layout.crop_rows(&xs[0], 3).unwrap();
        assert!(c3.get(1).equal(&xs[0].get(6 + 2 + 1)));
        assert!(layout.crop_rows(&xs[0], 4).is_err());
        // Running stats moved away from their init in train mode.
        let (m, _) = bn.get("stem.bn").unwrap();
        assert!(m.abs().sum(Kind::Float).double_value(&[]) > 0.0);
    }

    #[test]
    fn bn_groups_reproduce_per_rank_batch_norm() {
        let arch = ModelArch::new(&cfg("regnety-tiny")).unwrap();
        let p = params(&arch, 1);
        tch::manual_seed(1);
        let x = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu));
        let mut bn_all = BnState::new(&arch, Device::Cpu);
        let whole = arch.forward(&p, &mut bn_all, &[x.shallow_clone()], &Mode::train().with_bn_groups(2)).unwrap();
        let mut halves = Vec::new();
        let mut rank_bn = Vec::new();
        for h in x.chunk(2, 0) {
            let mut bn = BnState::new(&arch, Device::Cpu);
            halves.push(arch.forward(&p, &mut bn, &[h], &Mode::train()).unwrap());
            rank_bn.push(bn);
        }
        let split = Tensor::cat(&halves, 0);
        assert!(whole.allclose(&split, 1e-5, 1e-6, false), "max diff {}", (&whole - &split).abs().max().double_value(&[]));
        // Without groups the batch statistics differ, so the output does too.
        let mut bn1 = BnState::new(&arch, Device::Cpu);
        let ungrouped = arch.forward(&p, &mut bn1, &[x.shallow_clone()], &Mode::train()).unwrap();
        assert!(!ungrouped.allclose(&split, 1e-5, 1e-6, false));
        // Running stats are the mean of the per-rank ones.
        let (m, v) = bn_all.get("s2.b0.b_bn").unwrap();
        let (m0, v0) = rank_bn[0].get("s2.b0.b_bn").unwrap();
        let (m1, v1) = rank_bn[1].get("s2.b0.b_bn").unwrap();
        assert!(m.allclose(&((&m0 + &m1) / 2.0), 1e-5, 1e-6, false));
        assert!(v.allclose(&((&v0 + &v1) / 2.0), 1e-5, 1e-6, false));
        // Recompute mode leaves running stats alone; odd splits are errors.
        let before = m.copy();
        let _ = arch.forward(&p, &mut bn_all, &[x.shallow_clone()], &Mode::train().with_bn_groups(2).recompute()).unwrap();
        assert!(bn_all.get("s2.b0.b_bn").unwrap().0.equal(&before));
        let err = arch.forward(&p, &mut bn_all, &[x.narrow(0, 0, 7)], &Mode::train().with_bn_groups(2)).unwrap_err();
        assert!(err.to_string().contains("does not split"), "{err}");
    }

    /// Records whether each SyncBN call updates running stats; normalises
    /// with local statistics (the model only routes the calls).
    struct RecordingSync(std::cell::RefCell<Vec<bool>>);
    impl SyncBn for RecordingSync {
        fn batch_norm(&self, x: &Tensor, w: &Tensor, b: &Tensor, running: Option<(&Tensor, &Tensor, f64)>, eps: f64) -> Result<Tensor, ReduceError> {
            self.0.borrow_mut().push(running.is_some());
            x.f_batch_norm(Some(w), Some(b), None::<&Tensor>, None::<&Tensor>, true, 0.0, eps, false).map_err(|e| ReduceError(e.to_string()))
        }
    }

    #[test]
    fn sync_bn_mode_routes_every_training_bn_and_skips_running_stats_when_recomputing() {
        let arch = ModelArch::new(&cfg("regnety-tiny")).unwrap();
        let p = params(&arch, 0);
        let mut bn = BnState::new(&arch, Device::Cpu);
        let x = Tensor::randn([4, 3, 16, 16], (Kind::Float, Device::Cpu));
        let sync = RecordingSync(Default::default());
        let train = Mode::train().with_sync_bn(&sync);
        let _ = arch.forward(&p, &mut bn, &[x.shallow_clone()], &train).unwrap();
        let calls = sync.0.take();
        assert_eq!(calls.len(), arch.bn_layers().len());
        assert!(calls.iter().all(|&update| update));
        let _ = arch.forward(&p, &mut bn, &[x.shallow_clone()], &train.recompute()).unwrap();
        assert!(sync.0.take().iter().all(|&update| !update));
        // Eval mode uses the running statistics, no collective.
        let _ = arch.forward(&p, &mut bn, &[x.shallow_clone()], &Mode { sync_bn: Some(&sync), ..Mode::eval() }).unwrap();
        assert!(sync.0.take().is_empty());
        let e = arch.forward(&p, &mut bn, &[x], &train.with_bn_groups(2)).unwrap_err();
        assert!(e.to_string().contains("SyncBN"), "{e}");
    }

    #[test]
    fn bad_inputs_are_errors_not_panics() {
        let arch = ModelArch::new(&cfg("regnety-tiny")).unwrap();
        let mut p = params(&arch, 0);
        let mut bn = BnState::new(&arch, Device::Cpu);
        let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let e = arch.forward_block("s9.b0", &p, &mut bn, &[x.shallow_clone()], &Mode::train()).unwrap_err();
        assert!(matches!(e, ModelError::UnknownBlock(_)));
        let e = arch.forward_block("s1.b0", &p, &mut bn, &[x.shallow_clone()], &Mode::train()).unwrap_err();
        assert!(e.to_string().contains("expected [N, 16, H, W]"), "{e}");
        p.remove("stem.bn.bias");
        let e = arch.forward_block("stem", &p, &mut bn, &[x], &Mode::train()).unwrap_err();
        assert!(e.to_string().contains("stem.bn.bias"), "{e}");
        let mut c = cfg("regnety-tiny");
        c.head.mlp_dims.clear();
        assert!(ModelArch::new(&c).unwrap_err().to_string().contains("head.mlp_dims"));
    }

    #[test]
    fn reduced_precision_forward_keeps_bn_stats_and_scores_in_fp32() {
        let arch = ModelArch::new(&cfg("regnety-tiny")).unwrap();
        let f32p = params(&arch, 2);
        // What FSDP hands over in bf16: everything but the prototypes cast.
        let half: HashMap<String, Tensor> =
            f32p.iter().map(|(n, t)| (n.clone(), if n == "head.proto.weight" { t.shallow_clone() } else { t.to_kind(Kind::BFloat16) })).collect();
        tch::manual_seed(4);
        let x = Tensor::randn([4, 3, 32, 32], (Kind::Float, Device::Cpu));
        let mut bn32 = BnState::new(&arch, Device::Cpu);
        let mut bn16 = BnState::new(&arch, Device::Cpu);
        let s32 = arch.forward(&f32p, &mut bn32, &[x.shallow_clone()], &Mode::train()).unwrap();
        let s16 = arch.forward(&half, &mut bn16, &[x.to_kind(Kind::BFloat16)], &Mode::train()).unwrap();
        assert_eq!(s16.kind(), Kind::Float);
        assert_eq!(bn16.get("s4.b0.c_bn").unwrap().0.kind(), Kind::Float);
        // Cosine scores agree to bf16 accuracy.
        let diff = (&s32 - &s16).abs().max().double_value(&[]);
        assert!(diff < 0.1, "{diff}");
    }

    #[test]
    fn bn_buffers_round_trip() {
        let arch = ModelArch::new(&cfg("regnety-tiny")).unwrap();
        let p = params(&arch, 0);
        let mut bn = BnState::new(&arch, Device::Cpu);
        let x = Tensor::randn([2, 3, 16, 16], (Kind::Float, Device::Cpu));
        let _ = arch.forward(&p, &mut bn, &[x], &Mode::train()).unwrap();
        let saved: Vec<(String, Tensor)> = bn.buffers().into_iter().map(|(n, t)| (n, t.copy())).collect();
        let mut fresh = BnState::new(&arch, Device::Cpu);
        fresh.load(&saved).unwrap();
        for ((n, a), (_, b)) in fresh.buffers().iter().zip(&saved) {
            assert!(a.equal(b), "{n}");
        }
        assert!(fresh.load(&saved[1..]).is_err());
    }
}
