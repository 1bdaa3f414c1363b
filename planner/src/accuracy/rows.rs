//! The rows: public and H200 timings read from `configs/`, each predicted
//! by the kernel model; nccl-tests figures; the published SEER 2021 run.

use super::*;
use crate::build::build_plan;
use crate::build::reference_decisions;
use crate::search::{BatchPolicy, GpuCount, SearchSpace, Searcher, ShardingSpace, DEFAULT_BUCKET_MIB};
use crate::step_costs::estimated_block;
use cost_models::compute::ComputeModel;
use cost_models::config::{ModelConfig, SwavHeadSpec};
use cost_models::graph::{crops_label, CropGroup, Layer, LayerKind, ModelGraph, Workload};
use cost_models::hardware::{builtin_hardware, HardwareProfile};
use cost_models::kernels::KernelModel;
use cost_models::{Bytes, DType, Flops};
use runspec::recipe::Recipe;
use serde::Deserialize;
use std::collections::BTreeMap;

pub(super) const PYCLS: &str = include_str!("../../../configs/gpu-timings/pycls-model-timing.json");
pub(super) const TIMM: &str = include_str!("../../../configs/gpu-timings/timm-train-amp-nchw-pt112-cu113-rtx3090-regnet.csv");
pub(super) const H200_PYTORCH: &str = include_str!("../../../configs/gpu-timings/h200-141gb-pytorch.json");
pub(super) const H200_BLOCKS: &str = include_str!("../../../configs/gpu-timings/h200-141gb-executor-blocks.json");
pub(super) const H200_CONVS: &str = include_str!("../../../configs/gpu-timings/h200-141gb-convs.json");
/// The H200 calibrated by `seerscale calibrate --device cuda` (scripts/device-check):
/// the executor's measured per-op host costs on that machine.
pub(super) const COMM_PUBLIC: &str = include_str!("../../../configs/comm-timings/public-nccl-tests.toml");
pub(super) const H200_PROFILE: &str = include_str!("../../../docs/calibration-gpu-10b-s3.toml");

/// pycls's per-GPU training batch: TRAIN.BATCH_SIZE / 8 GPUs of its
/// `configs/dds_baselines/regnet{x,y}/*_dds_8gpu.yaml`.
pub(super) fn pycls_batch(model: &str) -> u64 {
    match model {
        "regnetx-32gf" | "regnety-16gf" | "regnety-32gf" => 32,
        m if ["200mf", "400mf", "600mf", "800mf", "1.6gf"].iter().any(|s| m.ends_with(s)) => 128,
        _ => 64,
    }
}

/// Sizes the parameters are fitted on (every other from the smallest).
pub(super) const FIT_SIZES: [&str; 6] = ["200mf", "600mf", "1.6gf", "4.0gf", "8.0gf", "16gf"];

pub(super) fn data_err(file: &'static str, why: impl Into<String>) -> AccuracyError {
    AccuracyError::Data { file, why: why.into() }
}

/// `RegNetY-1.6GF` -> (`regnety-1.6gf`, `1.6gf`).
pub(super) fn builtin_of(pycls_name: &str) -> (String, String) {
    let lower = pycls_name.to_ascii_lowercase();
    let size = lower.split('-').nth(1).unwrap_or("").to_string();
    // The RegNetY-8.0GF built-in carries torchvision's name.
    let model = if lower == "regnety-8.0gf" { "regnety-8gf".to_string() } else { lower };
    (model, size)
}

/// The model with pycls's classifier as its head (1000 classes, one linear).
pub(super) fn classifier(name: &str) -> Result<ModelConfig, AccuracyError> {
    let mut m = ModelConfig::load(name)?;
    m.head = SwavHeadSpec { mlp_dims: vec![], prototypes: 1000, use_bn: false };
    Ok(m)
}

pub(super) fn public_cases() -> Result<Vec<Case>, AccuracyError> {
    let mut out = Vec::new();
    let pycls: BTreeMap<String, serde_json::Value> = serde_json::from_str(PYCLS).map_err(|e| data_err("pycls-model-timing.json", e.to_string()))?;
    for (name, v) in pycls.iter().filter(|(n, _)| n.starts_with("RegNet")) {
        let (model, size) = builtin_of(name);
        let batch = pycls_batch(&name.to_ascii_lowercase());
        let get = |k: &str| v.get(k).and_then(|x| x.as_f64()).ok_or_else(|| data_err("pycls-model-timing.json", format!("{name}: no {k}")));
        let (fw, bw) = (get("train_fw_time")?, get("train_bw_time")?);
        out.push(Case {
            source: Source::Pycls,
            gpu: "v100-16gb".into(),
            workload: format!("{name} b{batch} 224px fp32"),
            graph: ModelGraph::build(&classifier(&model)?, &Workload::single(batch, 224, DType::Fp32)),
            block: None,
            measured: vec![(Part::Forward, fw), (Part::Backward, bw), (Part::Total, fw + bw)],
            fitted: FIT_SIZES.contains(&size.as_str()),
            optimizer: None,
        });
    }
    const TIMM_FILE: &str = "timm-train-amp-nchw-pt112-cu113-rtx3090-regnet.csv";
    /// One row of timm's benchmark CSV, by column name.
    #[derive(serde::Deserialize)]
    struct TimmRow {
        model: String,
        train_step_time: f64,
        train_batch_size: u64,
        train_img_size: u64,
    }
    for (i, row) in csv::Reader::from_reader(TIMM.as_bytes()).deserialize::<TimmRow>().enumerate() {
        let row = row.map_err(|e| data_err(TIMM_FILE, format!("row {}: {e}", i + 1)))?;
        let (name, step_ms, batch, res) = (row.model.as_str(), row.train_step_time, row.train_batch_size, row.train_img_size);
        let bad = || data_err(TIMM_FILE, format!("row {}: model `{name}`", i + 1));
        // timm's `regnety_016` is pycls's RegNetY-1.6GF.
        let (family, code) = name.split_once('_').ok_or_else(bad)?;
        let size = match code {
            "002" => "200mf",
            "004" => "400mf",
            "006" => "600mf",
            "008" => "800mf",
            "016" => "1.6gf",
            "032" => "3.2gf",
            "040" => "4.0gf",
            _ => return Err(bad()),
        };
        let graph = ModelGraph::build(&classifier(&format!("{family}-{size}"))?, &Workload::single(batch, res, DType::Fp16));
        let params = (graph.blocks.iter().map(|b| b.param_tensors.len()).sum(), graph.trunk_params() + graph.head_params());
        out.push(Case {
            source: Source::Timm,
            gpu: "rtx-3090".into(),
            workload: format!("{name} b{batch} {res}px fp16 AMP"),
            graph,
            block: None,
            measured: vec![(Part::Step, step_ms / 1e3)],
            fitted: FIT_SIZES.contains(&size),
            optimizer: Some(params),
        });
    }
    Ok(out)
}

pub(super) fn h200_cases() -> Result<Vec<Case>, AccuracyError> {
    const F: &str = "h200-141gb-pytorch.json";
    let mut out = Vec::new();
    let d: serde_json::Value = serde_json::from_str(H200_PYTORCH).map_err(|e| data_err(F, e.to_string()))?;
    for r in d.get("rows").and_then(|r| r.as_array()).ok_or_else(|| data_err(F, "no rows"))? {
        let name = r.get("model").and_then(|x| x.as_str()).ok_or_else(|| data_err(F, "a row without model"))?;
        let (Some(fw), Some(bw), Some(batch)) =
            (r.get("forward_s").and_then(|x| x.as_f64()), r.get("backward_s").and_then(|x| x.as_f64()), r.get("batch").and_then(|x| x.as_u64()))
        else {
            continue;
        };
        let (model, _) = builtin_of(name);
        out.push(Case {
            source: Source::H200Pytorch,
            gpu: "h200-141gb".into(),
            workload: format!("{name} b{batch} 224px fp32 (TF32 convs)"),
            graph: ModelGraph::build(&classifier(&model)?, &Workload::single(batch, 224, DType::Fp32)),
            block: None,
            measured: vec![(Part::Forward, fw), (Part::Backward, bw), (Part::Total, fw + bw)],
            fitted: false,
            optimizer: None,
        });
    }
    const B: &str = "h200-141gb-executor-blocks.json";
    let d: serde_json::Value = serde_json::from_str(H200_BLOCKS).map_err(|e| data_err(B, e.to_string()))?;
    let mut graphs: BTreeMap<String, ModelGraph> = BTreeMap::new();
    for r in d.get("rows").and_then(|r| r.as_array()).ok_or_else(|| data_err(B, "no rows"))? {
        let label = r.get("label").and_then(|x| x.as_str()).ok_or_else(|| data_err(B, "a row without label"))?;
        // "<model> <block> b<batch> <crops> <dtype>"
        let f: Vec<&str> = label.split_whitespace().collect();
        let [model, block, batch, crops, dtype] = f.as_slice() else { return Err(data_err(B, format!("label `{label}`"))) };
        let images: u64 = batch.strip_prefix('b').and_then(|b| b.parse().ok()).ok_or_else(|| data_err(B, format!("batch in `{label}`")))?;
        let crops: Vec<CropGroup> = crops
            .split('+')
            .map(|c| {
                let (n, r) = c.split_once('x')?;
                Some(CropGroup { count: n.parse().ok()?, resolution: r.parse().ok()? })
            })
            .collect::<Option<_>>()
            .ok_or_else(|| data_err(B, format!("crops in `{label}`")))?;
        let dtype = DType::parse(dtype).ok_or_else(|| data_err(B, format!("dtype in `{label}`")))?;
        let key = format!("{model} {images} {} {dtype}", crops_label(&crops));
        if !graphs.contains_key(&key) {
            graphs.insert(key.clone(), ModelGraph::build(&ModelConfig::load(model)?, &Workload { images, crops, dtype }));
        }
        let (Some(fw), Some(bw)) = (r.get("forward_s").and_then(|x| x.as_f64()), r.get("backward_s").and_then(|x| x.as_f64())) else { continue };
        out.push(Case {
            source: Source::H200Executor,
            gpu: "h200-141gb".into(),
            workload: label.to_string(),
            graph: graphs[&key].clone(),
            block: Some(block.to_string()),
            measured: vec![(Part::Forward, fw), (Part::Backward, bw), (Part::Total, fw + bw)],
            fitted: false,
            optimizer: None,
        });
    }
    Ok(out)
}

/// A graph layer for one convolution of the H200 conv table.
pub(super) fn conv_layer(r: &serde_json::Value, dtype: DType) -> Option<Layer> {
    let u = |k: &str| r.get(k).and_then(|x| x.as_u64());
    let (n, cin, cout, k, s, g, hw, ohw) = (u("n")?, u("cin")?, u("cout")?, u("kernel")?, u("stride")?, u("groups")?, u("hw")?, u("out_hw")?);
    let macs = n * cout * ohw * ohw * (cin / g) * k * k;
    Some(Layer {
        name: r.get("label")?.as_str()?.to_string(),
        block: 0,
        kind: LayerKind::Conv { kernel: k, stride: s, groups: g, bias: false },
        in_shape: [n, cin, hw, hw],
        out_shape: [n, cout, ohw, ohw],
        params: vec![],
        fwd_flops: Flops(2.0 * macs as f64),
        bwd_flops: Flops(4.0 * macs as f64),
        saved: Bytes::ZERO,
        io_bytes: Bytes::ZERO,
        dtype,
    })
}

pub(super) fn conv_rows(k: &KernelModel) -> Result<Vec<Row>, AccuracyError> {
    const C: &str = "h200-141gb-convs.json";
    let d: serde_json::Value = serde_json::from_str(H200_CONVS).map_err(|e| data_err(C, e.to_string()))?;
    let mut out = Vec::new();
    for r in d.get("rows").and_then(|r| r.as_array()).ok_or_else(|| data_err(C, "no rows"))? {
        let dtype = r.get("dtype").and_then(|x| x.as_str()).and_then(DType::parse).ok_or_else(|| data_err(C, "a row without a dtype"))?;
        let Some(l) = conv_layer(r, dtype) else { continue };
        let Some(c) = k.conv_passes(&l) else { continue };
        for (part, key, pred) in
            [(Part::ConvForward, "forward_s", c.forward), (Part::ConvDgrad, "dgrad_s", c.dgrad.unwrap_or_default()), (Part::ConvWgrad, "wgrad_s", c.wgrad)]
        {
            if let Some(m) = r.get(key).and_then(|x| x.as_f64()) {
                out.push(Row {
                    source: Source::H200Convs,
                    gpu: "h200-141gb".into(),
                    workload: format!(
                        "{} {dtype} ({}x{}→{} g{} k{} s{} @{})",
                        l.name,
                        l.in_shape[0],
                        l.in_shape[1],
                        l.out_shape[1],
                        l.kind_groups(),
                        l.kind_kernel(),
                        l.kind_stride(),
                        l.in_shape[2]
                    ),
                    part,
                    measured_s: m,
                    predicted_s: pred.0,
                    fitted: false,
                    band: None,
                });
            }
        }
    }
    Ok(out)
}

trait ConvFields {
    fn kind_groups(&self) -> u64;
    fn kind_kernel(&self) -> u64;
    fn kind_stride(&self) -> u64;
}

impl ConvFields for Layer {
    fn kind_groups(&self) -> u64 {
        match self.kind {
            LayerKind::Conv { groups, .. } => groups,
            _ => 1,
        }
    }
    fn kind_kernel(&self) -> u64 {
        match self.kind {
            LayerKind::Conv { kernel, .. } => kernel,
            _ => 1,
        }
    }
    fn kind_stride(&self) -> u64 {
        match self.kind {
            LayerKind::Conv { stride, .. } => stride,
            _ => 1,
        }
    }
}

/// Bytes per parameter an SGD-with-momentum step moves in fp32 (read
/// weight, gradient and momentum; write weight and momentum), plus AMP's
/// per-step fp16 copy of each weight (read fp32, write fp16) and zeroing
/// the gradient: 20 + 6 + 4.
pub(super) const SGD_AMP_BYTES_PER_PARAM: f64 = 30.0;
/// Kernels per parameter tensor of that step (update, momentum, cast, zero).
pub(super) const SGD_AMP_KERNELS_PER_TENSOR: u32 = 4;

/// The kernel model's time of each of `c`'s parts.
pub(super) fn predict(k: &KernelModel, c: &Case) -> Vec<(Part, f64)> {
    let (mut f, mut b) = (0.0, 0.0);
    for blk in c.graph.blocks.iter().filter(|blk| c.block.as_ref().is_none_or(|n| *n == blk.name)) {
        for l in c.graph.layers_of(blk) {
            f += k.forward(l).0;
            b += k.backward(l).0;
        }
    }
    // One op per kernel of the step, each at least the host's issue time.
    let per_op = k.launch().0.max(k.spec().host_op.0);
    let opt = c.optimizer.map_or(0.0, |(tensors, params)| {
        k.memory_bound(Bytes((params as f64 * SGD_AMP_BYTES_PER_PARAM) as u64), 1.0, 0).0 + per_op * (SGD_AMP_KERNELS_PER_TENSOR as usize * tensors) as f64
    });
    c.measured
        .iter()
        .map(|(p, _)| {
            (
                *p,
                match p {
                    Part::Forward => f,
                    Part::Backward => b,
                    Part::Total => f + b,
                    Part::Step => f + b + opt,
                    _ => 0.0,
                },
            )
        })
        .collect()
}

/// An executor block as the planner predicts it from a calibrated GPU
/// profile without block times: the kernel model for the device, the
/// executor's measured per-op host costs and bookkeeping for the host.
pub(super) fn predict_executor_block(compute: &ComputeModel, c: &Case) -> Option<Vec<(Part, f64)>> {
    let block = c.graph.block(c.block.as_deref()?)?;
    let cost = estimated_block(&c.graph, block, compute).ok()?;
    Some(
        c.measured
            .iter()
            .map(|(p, _)| {
                let t = match p {
                    Part::Forward => cost.forward.0,
                    Part::Backward => cost.backward.0,
                    _ => cost.forward.0 + cost.backward.0,
                };
                (*p, t)
            })
            .collect(),
    )
}

/// A case's rows: each measured part against its prediction, with the
/// case's band.
pub(super) fn case_rows(c: &Case, predicted: Vec<(Part, f64)>, band: Option<[f64; 2]>) -> Vec<Row> {
    predicted
        .into_iter()
        .zip(&c.measured)
        .map(|((part, p), (_, m))| Row {
            source: c.source,
            gpu: c.gpu.clone(),
            workload: c.workload.clone(),
            part,
            measured_s: *m,
            predicted_s: p,
            fitted: c.fitted,
            band,
        })
        .collect()
}

/// Public nccl-tests figures (`configs/comm-timings/`): one bus bandwidth
/// at one size each, against the collective model on that cluster.
#[derive(Deserialize)]
pub(super) struct CommRows {
    row: Vec<CommRow>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CommRow {
    gpu: String,
    gpus: usize,
    op: cost_models::collectives::Collective,
    bytes: u64,
    busbw_gb_s: f64,
    fitted: bool,
    /// The measured cluster's NICs per node, where the catalog's differ.
    #[serde(default)]
    nics_per_node: Option<usize>,
    #[allow(dead_code)]
    source: String,
}

/// Each public nccl-tests figure as a time (`bytes x share / busbw`) and
/// the collective model's time for the same collective on that cluster.
pub(super) fn comm_rows() -> Result<Vec<Row>, AccuracyError> {
    use cost_models::collectives::CollectiveModel;
    use cost_models::nccl_tests::{bus_factor, test_name};
    use cost_models::topology::Topology;
    let file = "configs/comm-timings/public-nccl-tests.toml";
    let rows: CommRows = toml::from_str(COMM_PUBLIC).map_err(|e| AccuracyError::Data { file, why: e.to_string() })?;
    let mut out = Vec::with_capacity(rows.row.len());
    for r in rows.row {
        let mut hw = builtin_hardware(&r.gpu)?;
        if let Some(n) = r.nics_per_node {
            hw.interconnect.nics_per_node = n;
        }
        let topo = Topology::build(&hw, r.gpus.div_ceil(hw.interconnect.gpus_per_node)).map_err(|e| AccuracyError::Data { file, why: e.to_string() })?;
        let group = topo.group(&(0..r.gpus).collect::<Vec<_>>()).map_err(|e| AccuracyError::Data { file, why: e.to_string() })?;
        let predicted = CollectiveModel::default().cost(r.op, &group, Bytes(r.bytes));
        let measured_s = r.bytes as f64 * bus_factor(r.op, r.gpus) / (r.busbw_gb_s * 1e9);
        let nics = r.nics_per_node.map(|n| format!(", {n} NICs per node")).unwrap_or_default();
        out.push(Row {
            source: Source::NcclTests,
            gpu: r.gpu,
            workload: format!("{} on {} GPUs{nics}, {} MiB ({})", test_name(r.op), r.gpus, r.bytes >> 20, predicted.algorithm.name()),
            part: Part::Collective,
            measured_s,
            predicted_s: predicted.time.0,
            fitted: r.fitted,
            band: None,
        });
    }
    Ok(out)
}

/// Images per GPU of the SEER 2021 run whose iteration time was reported
/// (the paper's 8,704 on 512 GPUs; the recipe holds the released
/// checkpoint's 16).
pub(super) const PUBLISHED_RUN_IMAGES_PER_GPU: usize = 17;

/// The published SEER 2021 iteration (~6.1 s, 512 V100-32GB, 17 images per
/// GPU) against the planner's step time for its published plan.
pub(super) fn published_rows() -> Result<Vec<Row>, AccuracyError> {
    let mut recipe = Recipe::load("seer-256gf")?;
    recipe.cluster.batch_per_gpu = PUBLISHED_RUN_IMAGES_PER_GPU;
    if let Some(rp) = recipe.reference_plan.as_mut() {
        rp.batch_per_gpu = PUBLISHED_RUN_IMAGES_PER_GPU;
    }
    let hw = builtin_hardware(&recipe.cluster.gpu)?;
    let rp = recipe.reference_plan.clone().ok_or_else(|| AccuracyError::Plan("seer-256gf has no reference plan".into()))?;
    let space = SearchSpace {
        hardware: vec![HardwareProfile::from_spec(hw)],
        gpus: GpuCount::Fixed(recipe.cluster.gpus),
        batch: BatchPolicy::PerGpu(PUBLISHED_RUN_IMAGES_PER_GPU),
        shardings: ShardingSpace::Only(rp.sharding.parse().map_err(|e: runspec::sharding::ShardingError| AccuracyError::Plan(e.0))?),
        wrappings: vec![rp.wrapping],
        bucket_mib: DEFAULT_BUCKET_MIB,
        precisions: vec![rp.precision],
        reshard: vec![rp.reshard_after_forward],
        backward_orders: vec![runspec::schedule::BackwardOrder::Together],
        paddings: vec![cost_models::padding::ChannelPadding::Off],
        exhaustive: true,
        headroom: 0.0,
        reliability: crate::failures::Reliability::builtin(),
    };
    let mut s = Searcher::new(&recipe, space).map_err(|e| AccuracyError::Plan(e.to_string()))?;
    let d = reference_decisions(&mut s, recipe.cluster.gpus).ok_or_else(|| AccuracyError::Plan("seer-256gf has no reference plan".into()))?;
    let e = s.evaluate(0, &d).map_err(|e| AccuracyError::Plan(e.to_string()))?;
    let (plan, _) = build_plan(&mut s, &e).map_err(|e| AccuracyError::Plan(e.to_string()))?;
    Ok(vec![Row {
        source: Source::PublishedRun,
        gpu: recipe.cluster.gpu.clone(),
        workload: format!(
            "SEER 2021: RegNetY-256GF, {} x {} GPUs, 2x224+4x96, fp16, checkpointing (published ~6.1 s/iteration)",
            PUBLISHED_RUN_IMAGES_PER_GPU, recipe.cluster.gpus
        ),
        part: Part::Step,
        measured_s: 6.1,
        predicted_s: plan.predicted.step_time_s,
        // Volta's unaligned tensor-core efficiency is fitted on this row.
        fitted: true,
        band: plan.predicted.step_time_range_s.map(|[lo, hi]| [lo / plan.predicted.step_time_s, hi / plan.predicted.step_time_s]),
    }])
}
