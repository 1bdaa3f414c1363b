//! A trained model out of the tool: the whole model reassembled from a
//! sharded checkpoint (each unit's shards concatenated in shard-rank order,
//! cut into parameters by the ownership rule), renamed to torchvision's
//! `RegNet` parameter and buffer names, and written as safetensors with the
//! model config in its metadata, so it can be rebuilt anywhere. The SwAV
//! head and prototypes are kept under `swav_head.`, apart from the trunk.

use crate::checkpoint::{self, CheckpointError};
use crate::fsdp::{assign_units, UnitSpec};
use crate::model::{ModelArch, ModelError};
use cost_models::config::ModelConfig;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use std::collections::{BTreeMap, HashMap};
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

/// Metadata key holding the model config (JSON).
pub const META_MODEL: &str = "seerscale.model";
/// Metadata key holding the checkpoint step the weights are from.
pub const META_STEP: &str = "seerscale.step";
/// Metadata key naming the layout (`torchvision.models.RegNet`).
pub const META_FORMAT: &str = "format";
pub const FORMAT: &str = "torchvision.models.RegNet";

#[derive(Debug, thiserror::Error)]
pub enum WeightsError {
    #[error(transparent)]
    Checkpoint(#[from] CheckpointError),
    #[error("checkpoint {path}: {msg}")]
    Shards { path: PathBuf, msg: String },
    #[error("{path}: {msg}")]
    File { path: PathBuf, msg: String },
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

/// A whole model: parameters and BN running statistics under the
/// executor's names, fp32 on the CPU.
pub struct Weights {
    pub model: ModelConfig,
    pub step: u64,
    pub params: BTreeMap<String, Tensor>,
    /// `<layer>.running_mean` / `<layer>.running_var`.
    pub bn: BTreeMap<String, Tensor>,
}

/// Reassembles the model a checkpoint holds. `step_dir` is a step
/// directory or a checkpoints folder (its `latest` is read). BN running
/// statistics are rank 0's (ranks keep their own under per-rank BN, as
/// PyTorch's DDP saves rank 0's).
pub fn from_checkpoint(dir: &Path) -> Result<Weights, WeightsError> {
    let step_dir = if dir.join("rank0.json").is_file() {
        dir.to_path_buf()
    } else {
        checkpoint::latest(dir)?
            .ok_or_else(|| WeightsError::Shards { path: dir.to_path_buf(), msg: "no published checkpoint (no `latest`, no rank0.json)".into() })?
    };
    let bad = |msg: String| WeightsError::Shards { path: step_dir.clone(), msg };
    let meta0 = checkpoint::read_meta(&step_dir, 0)?;
    let model =
        meta0.model.clone().ok_or_else(|| bad("the checkpoint does not record its model (written by an older seerscale); it cannot be exported".into()))?;
    let sharding = meta0.sharding.resolved(meta0.world_size);
    let arch = ModelArch::new(&model)?;
    let specs = arch.param_specs();
    let units: Vec<UnitSpec> = meta0.unit_specs.iter().map(|(name, members)| UnitSpec { name: name.clone(), members: members.clone() }).collect();
    let (names, owner) = assign_units(&specs, &units).map_err(|e| bad(e.to_string()))?;
    if names != meta0.units {
        return Err(bad(format!("its units {:?} do not follow from its plan's unit list ({names:?})", meta0.units)));
    }
    // One copy of every shard: the shard group of rank 0.
    let s = sharding.shard_group.max(1);
    let mut shards: Vec<HashMap<String, Tensor>> = Vec::with_capacity(s);
    for r in 0..s {
        let st = checkpoint::load_rank(&step_dir, r, meta0.world_size, sharding, &meta0.units)?;
        shards.push(st.group("master").into_iter().collect());
    }
    let mut params = BTreeMap::new();
    for (ui, uname) in names.iter().enumerate() {
        let mine: Vec<usize> = (0..specs.len()).filter(|&p| owner[p] == ui).collect();
        let numel: i64 = mine.iter().map(|&p| specs[p].numel()).sum();
        let mut pieces = Vec::with_capacity(s);
        for (r, shard) in shards.iter().enumerate() {
            pieces.push(shard.get(uname).ok_or_else(|| bad(format!("rank {r} has no shard of unit `{uname}`")))?.f_to_kind(Kind::Float)?.f_flatten(0, -1)?);
        }
        let flat = Tensor::f_cat(&pieces, 0)?;
        if flat.numel() as i64 != (numel + s as i64 - 1) / s as i64 * s as i64 {
            return Err(bad(format!("unit `{uname}`: {} elements in its shards, its {} parameters need {numel} padded to {s}", flat.numel(), mine.len())));
        }
        let mut offset = 0;
        for &p in &mine {
            let spec = &specs[p];
            params.insert(spec.name.clone(), flat.f_narrow(0, offset, spec.numel())?.f_view(spec.shape.as_slice())?.f_contiguous()?);
            offset += spec.numel();
        }
    }
    let st0 = checkpoint::load_rank(&step_dir, 0, meta0.world_size, sharding, &meta0.units)?;
    let bn: BTreeMap<String, Tensor> = st0.group("bn").into_iter().map(|(n, t)| t.f_to_kind(Kind::Float).map(|t| (n, t))).collect::<Result<_, _>>()?;
    Ok(Weights { model, step: meta0.step, params, bn })
}

/// torchvision's name for one of the executor's parameter or BN buffer
/// names; `None` for a name that is not part of the model.
pub fn torchvision_name(name: &str) -> Option<String> {
    if let Some(rest) = name.strip_prefix("head.mlp.") {
        return Some(format!("swav_head.projection.{rest}"));
    }
    if let Some(rest) = name.strip_prefix("head.proto.") {
        return Some(format!("swav_head.prototypes.{rest}"));
    }
    if let Some(rest) = name.strip_prefix("stem.") {
        let (layer, suffix) = rest.split_once('.')?;
        let idx = match layer {
            "conv" => 0,
            "bn" => 1,
            _ => return None,
        };
        return Some(format!("stem.{idx}.{suffix}"));
    }
    // s<i>.b<j>.<layer...>.<suffix>
    let (stage, rest) = name.split_once('.')?;
    let (block, rest) = rest.split_once('.')?;
    let i: usize = stage.strip_prefix('s')?.parse().ok()?;
    let j: usize = block.strip_prefix('b')?.parse().ok()?;
    let (layer, suffix) = rest.rsplit_once('.')?;
    let tv = match layer {
        "proj" => "proj.0",
        "proj_bn" => "proj.1",
        "a" => "f.a.0",
        "a_bn" => "f.a.1",
        "b" => "f.b.0",
        "b_bn" => "f.b.1",
        "c" => "f.c.0",
        "c_bn" => "f.c.1",
        "se.reduce" => "f.se.fc1",
        "se.expand" => "f.se.fc2",
        _ => return None,
    };
    Some(format!("trunk_output.block{i}.block{i}-{j}.{tv}.{suffix}"))
}

/// Element type of an exported file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ExportDtype {
    Fp32,
    Bf16,
}

impl ExportDtype {
    fn kind(self) -> Kind {
        match self {
            ExportDtype::Fp32 => Kind::Float,
            ExportDtype::Bf16 => Kind::BFloat16,
        }
    }
    fn safetensors(self) -> Dtype {
        match self {
            ExportDtype::Fp32 => Dtype::F32,
            ExportDtype::Bf16 => Dtype::BF16,
        }
    }
}

fn raw_bytes(t: &Tensor) -> Result<Vec<u8>, tch::TchError> {
    let t = t.f_contiguous()?.f_to_device(Device::Cpu)?;
    let n = t.numel() * t.kind().elt_size_in_bytes();
    let mut buf = vec![0u8; n];
    t.f_copy_data_u8(&mut buf, t.numel())?;
    Ok(buf)
}

/// Writes `w` to `path` under torchvision's names: parameters and BN
/// statistics in `dtype` (the prototypes stay fp32), every BN's
/// `num_batches_tracked` (int64, the steps trained), the model config and
/// step in the metadata. Atomic: a temporary file renamed into place.
pub fn save_safetensors(w: &Weights, path: &Path, dtype: ExportDtype) -> Result<usize, WeightsError> {
    let file_err = |msg: String| WeightsError::File { path: path.to_path_buf(), msg };
    let mut tensors: Vec<(String, Dtype, Vec<usize>, Vec<u8>)> = Vec::new();
    let mut put = |name: &str, t: &Tensor, kind: Kind, st: Dtype| -> Result<(), WeightsError> {
        let tv = torchvision_name(name).ok_or_else(|| file_err(format!("`{name}` has no torchvision name")))?;
        let t = t.f_to_kind(kind)?;
        tensors.push((tv, st, t.size().iter().map(|&d| d as usize).collect(), raw_bytes(&t)?));
        Ok(())
    };
    for (n, t) in &w.params {
        let (kind, st) = if n.starts_with("head.proto.") { (Kind::Float, Dtype::F32) } else { (dtype.kind(), dtype.safetensors()) };
        put(n, t, kind, st)?;
    }
    for (n, t) in &w.bn {
        put(n, t, dtype.kind(), dtype.safetensors())?;
    }
    let steps = (w.step as i64).to_le_bytes().to_vec();
    let layers: Vec<String> = w.bn.keys().filter_map(|k| k.strip_suffix(".running_mean")).map(str::to_string).collect();
    for layer in layers {
        let tv = torchvision_name(&format!("{layer}.num_batches_tracked")).ok_or_else(|| file_err(format!("BN layer `{layer}` has no torchvision name")))?;
        tensors.push((tv, Dtype::I64, vec![], steps.clone()));
    }
    let views: Vec<(String, TensorView)> = tensors
        .iter()
        .map(|(n, st, shape, data)| TensorView::new(*st, shape.clone(), data).map(|v| (n.clone(), v)))
        .collect::<Result<_, _>>()
        .map_err(|e| file_err(format!("{e:?}")))?;
    let model = serde_json::to_string(&w.model).map_err(|e| file_err(e.to_string()))?;
    let metadata: HashMap<String, String> =
        [(META_FORMAT.to_string(), FORMAT.to_string()), (META_MODEL.to_string(), model), (META_STEP.to_string(), w.step.to_string())].into_iter().collect();
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new().suffix(".tmp").tempfile_in(dir).map_err(|e| file_err(format!("cannot write beside it: {e}")))?;
    safetensors::tensor::serialize_to_file(views, &Some(metadata), tmp.path()).map_err(|e| file_err(format!("cannot write: {e:?}")))?;
    tmp.persist(path).map_err(|e| file_err(format!("cannot write: {}", e.error)))?;
    Ok(tensors.len())
}

/// Reads a file written by [`save_safetensors`] back into the executor's
/// names (fp32), checking every parameter and BN buffer of its model is
/// there with its shape.
pub fn load_safetensors(path: &Path) -> Result<Weights, WeightsError> {
    let file_err = |msg: String| WeightsError::File { path: path.to_path_buf(), msg };
    let bytes = std::fs::read(path).map_err(|e| file_err(format!("cannot read: {e}")))?;
    let (_, header) = SafeTensors::read_metadata(&bytes).map_err(|e| file_err(format!("not a safetensors file: {e:?}")))?;
    let meta = header.metadata().clone().unwrap_or_default();
    if meta.get(META_FORMAT).map(String::as_str) != Some(FORMAT) {
        return Err(file_err(format!("not a seerscale export (metadata `{META_FORMAT}` is not `{FORMAT}`)")));
    }
    let model: ModelConfig = serde_json::from_str(meta.get(META_MODEL).ok_or_else(|| file_err(format!("metadata has no `{META_MODEL}`")))?)
        .map_err(|e| file_err(format!("metadata `{META_MODEL}`: {e}")))?;
    let step = meta.get(META_STEP).and_then(|s| s.parse().ok()).unwrap_or(0);
    let st = SafeTensors::deserialize(&bytes).map_err(|e| file_err(format!("not a safetensors file: {e:?}")))?;
    let arch = ModelArch::new(&model)?;
    let specs = arch.param_specs();
    let read = |name: &str, shape: &[i64]| -> Result<Tensor, WeightsError> {
        let tv = torchvision_name(name).ok_or_else(|| file_err(format!("`{name}` has no torchvision name")))?;
        let v = st.tensor(&tv).map_err(|_| file_err(format!("missing tensor `{tv}`")))?;
        let kind = match v.dtype() {
            Dtype::F32 => Kind::Float,
            Dtype::BF16 => Kind::BFloat16,
            Dtype::F16 => Kind::Half,
            d => return Err(file_err(format!("`{tv}`: unsupported dtype {d:?}"))),
        };
        let dims: Vec<i64> = v.shape().iter().map(|&d| d as i64).collect();
        if dims != shape {
            return Err(file_err(format!("`{tv}` has shape {dims:?}, the model needs {shape:?}")));
        }
        Ok(Tensor::f_from_data_size(v.data(), &dims, kind)?.f_to_kind(Kind::Float)?)
    };
    let mut params = BTreeMap::new();
    for p in &specs {
        params.insert(p.name.clone(), read(&p.name, &p.shape)?);
    }
    let mut bn = BTreeMap::new();
    for (layer, c) in arch.bn_layers() {
        for suffix in ["running_mean", "running_var"] {
            let n = format!("{layer}.{suffix}");
            bn.insert(n.clone(), read(&n, &[c])?);
        }
    }
    Ok(Weights { model, step, params, bn })
}
