//! How well the GPU kernel model ([`cost_models::kernels`]) predicts
//! measured GPU time, row by row, and the fit of its per-architecture
//! parameters to a documented subset of the public rows.
//!
//! Rows (`configs/gpu-timings/`, embedded):
//! * pycls's model-zoo timings: RegNetX/Y 200MF-32GF, fp32 on a V100-16GB,
//!   forward and backward apart, pycls's per-GPU training batch at 224 px;
//! * timm's RTX 3090 AMP training benchmark: RegNetX/Y 200MF-4.0GF, one
//!   step (forward, backward, SGD) at timm's batch;
//! * the pycls workloads re-run on an H200 with PyTorch (TF32 convolutions
//!   by PyTorch's default) and the executor's own blocks timed on it;
//! * single convolutions on the H200, forward / data gradient / weight
//!   gradient (an op-level check);
//! * the published SEER 2021 iteration time against its plan.
//!
//! Fit set: in each family (RegNetX, RegNetY) of pycls's and timm's rows,
//! every other size from the smallest (200MF, 600MF, 1.6GF, 4.0GF, 8.0GF,
//! 16GF); the other sizes are never fitted on and carry the targets. The
//! V100 rows fit Volta's parameters (CUDA-core and memory efficiency, per-
//! tile K overhead, launch), the RTX 3090 rows Ampere's (tensor-core,
//! CUDA-core and memory efficiency, launch; K overhead is Volta's). Hopper
//! has no public rows: it takes Ampere's fitted values, and the H200 rows
//! check that transfer.
//!
//! `rows` reads and predicts the rows, `fit` fits the parameters, `render`
//! writes the report; this module holds the rows' types and what the
//! report concludes (targets, band coverage).

use cost_models::compute::ComputeModel;
use cost_models::graph::ModelGraph;
use cost_models::hardware::{builtin_hardware, HardwareProfile, HardwareSpec};
use cost_models::kernels::{KernelModel, KernelSpec};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

mod fit;
mod render;
mod rows;
#[cfg(test)]
mod tests;

pub use fit::{fit, Fit};
use rows::*;

/// What a row's time covers.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Part {
    Forward,
    Backward,
    /// Forward + backward.
    Total,
    /// Forward + backward + optimiser (a whole training step).
    Step,
    /// One collective at one message size.
    Collective,
    /// One convolution's forward.
    ConvForward,
    ConvDgrad,
    ConvWgrad,
}

impl Part {
    pub fn name(self) -> &'static str {
        match self {
            Part::Forward => "forward",
            Part::Backward => "backward",
            Part::Total => "forward+backward",
            Part::Step => "step",
            Part::Collective => "collective",
            Part::ConvForward => "conv forward",
            Part::ConvDgrad => "conv dgrad",
            Part::ConvWgrad => "conv wgrad",
        }
    }
}

/// Where a row's measurement comes from.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Source {
    /// pycls model zoo, V100-16GB, fp32.
    Pycls,
    /// timm benchmark, RTX 3090, AMP.
    Timm,
    /// The pycls workloads re-run on an H200 with PyTorch.
    H200Pytorch,
    /// The executor's blocks timed on an H200.
    H200Executor,
    /// Single convolutions on an H200.
    H200Convs,
    /// A published training run's iteration time against its plan.
    PublishedRun,
    /// Public nccl-tests bus bandwidths against the collective model.
    NcclTests,
}

impl Source {
    pub fn describe(self) -> &'static str {
        match self {
            Source::Pycls => "pycls model zoo (V100-16GB, fp32)",
            Source::Timm => "timm benchmark (RTX 3090, AMP fp16)",
            Source::H200Pytorch => "pycls workloads on an H200 (PyTorch, fp32 with TF32 convs)",
            Source::H200Executor => "seerscale executor blocks on an H200 (bf16; host costs from its calibration)",
            Source::H200Convs => "single convolutions on an H200 (PyTorch)",
            Source::PublishedRun => "published run vs its plan",
            Source::NcclTests => "public nccl-tests figures vs the collective model",
        }
    }
}

/// One measured time and its prediction.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub source: Source,
    pub gpu: String,
    pub workload: String,
    pub part: Part,
    pub measured_s: f64,
    pub predicted_s: f64,
    /// The kernel parameters were fitted on this row.
    pub fitted: bool,
    /// The row's own band (measured / predicted expected within), where
    /// it has one: a published run's, from its plan.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub band: Option<[f64; 2]>,
}

impl Row {
    /// Signed relative error of the prediction (positive: predicted slower).
    pub fn error(&self) -> f64 {
        self.predicted_s / self.measured_s - 1.0
    }
}

/// A workload the kernel model times: a graph on one GPU, and how its
/// measurement splits.
struct Case {
    source: Source,
    gpu: String,
    workload: String,
    graph: ModelGraph,
    /// Blocks whose layers count (`None`: all).
    block: Option<String>,
    measured: Vec<(Part, f64)>,
    fitted: bool,
    /// Parameter tensors and elements (the optimiser of a whole step).
    optimizer: Option<(usize, u64)>,
}

#[derive(Debug, thiserror::Error)]
pub enum AccuracyError {
    #[error("{file}: {why}")]
    Data { file: &'static str, why: String },
    #[error(transparent)]
    Config(#[from] cost_models::config::ConfigError),
    #[error(transparent)]
    Hardware(#[from] cost_models::hardware::HardwareError),
    #[error("{0}")]
    Plan(String),
}

/// One band against the rows it stands for, not fitted on.
#[derive(Clone, Debug, PartialEq)]
pub struct Coverage {
    pub rows: &'static str,
    /// The band, measured / predicted; where rows carry their own (widened
    /// by unaligned GEMMs), from the lowest low to the highest high.
    pub low: f64,
    pub high: f64,
    pub source: String,
    /// Rows whose measured / predicted falls inside their band, of `n`.
    pub inside: usize,
    pub n: usize,
}

/// Rows a band stands for: their name, the band, which rows.
type BandRows = (&'static str, crate::bands::Band, fn(&Row) -> bool);

/// The whole report: every row at the catalog's current parameters.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct AccuracyReport {
    pub rows: Vec<Row>,
    /// The catalog's `[kernels]` per architecture the rows were predicted with.
    pub kernels: BTreeMap<String, KernelSpec>,
}

fn hardware_for(gpu: &str, cache: &mut BTreeMap<String, HardwareSpec>) -> Result<HardwareSpec, AccuracyError> {
    if !cache.contains_key(gpu) {
        cache.insert(gpu.to_string(), builtin_hardware(gpu)?);
    }
    Ok(cache[gpu].clone())
}

fn kernel_model(hw: &HardwareSpec) -> Result<KernelModel, AccuracyError> {
    KernelModel::new(hw).ok_or_else(|| AccuracyError::Plan(format!("{} has no [kernels] table", hw.id)))
}

/// The band a prediction of `c` carries (`crate::bands`): its GPU family's,
/// widened by the share of its kernel time in unaligned GEMMs.
fn case_band(hw: &HardwareSpec, k: &KernelModel, c: &Case) -> Option<[f64; 2]> {
    let counted = c.graph.blocks.iter().filter(|blk| c.block.as_ref().is_none_or(|n| *n == blk.name));
    crate::bands::compute_range(&HardwareProfile::from_spec(hw.clone()), k.unaligned_share(counted.flat_map(|blk| c.graph.layers_of(blk))))
}

/// Every row, predicted with the catalog's parameters.
pub fn report() -> Result<AccuracyReport, AccuracyError> {
    let mut hw_cache = BTreeMap::new();
    let mut rows = Vec::new();
    let mut kernels = BTreeMap::new();
    let mut profile = HardwareProfile::parse_toml(H200_PROFILE, "docs/calibration-gpu-10b-s3.toml")?;
    profile.measured.block_times.clear();
    let calibrated = ComputeModel::new(&profile);
    for c in public_cases()?.iter().chain(h200_cases()?.iter()) {
        let hw = hardware_for(&c.gpu, &mut hw_cache)?;
        let k = kernel_model(&hw)?;
        kernels.insert(k.spec().architecture.clone(), k.spec().clone());
        let predicted = match (c.source, predict_executor_block(&calibrated, c)) {
            (Source::H200Executor, Some(pred)) => pred,
            _ => predict(&k, c),
        };
        rows.extend(case_rows(c, predicted, case_band(&hw, &k, c)));
    }
    let h200 = kernel_model(&hardware_for("h200-141gb", &mut hw_cache)?)?;
    rows.extend(conv_rows(&h200)?);
    rows.extend(published_rows()?);
    rows.extend(comm_rows()?);
    Ok(AccuracyReport { rows, kernels })
}

/// How far some rows' predictions are off.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Summary {
    pub rows: usize,
    /// Median |error|.
    pub median: f64,
    /// Largest |error|.
    pub max: f64,
}

/// The [`Summary`] of some rows; `None` without rows.
pub fn summary<'a>(rows: impl Iterator<Item = &'a Row>) -> Option<Summary> {
    let errs: Vec<f64> = rows.map(|r| r.error().abs()).collect();
    if errs.is_empty() {
        return None;
    }
    let max = errs.iter().copied().fold(0.0, f64::max);
    Some(Summary { rows: errs.len(), median: cost_models::stats::median(errs), max })
}

/// Targets on the public rows not fitted on, per part.
pub const TARGET_MEDIAN: f64 = 0.10;
pub const TARGET_MAX: f64 = 0.25;

impl AccuracyReport {
    /// Public rows not fitted on, by (source, part).
    pub fn checks(&self) -> Vec<((Source, Part), Summary)> {
        let mut keys: Vec<(Source, Part)> =
            self.rows.iter().filter(|r| matches!(r.source, Source::Pycls | Source::Timm | Source::NcclTests)).map(|r| (r.source, r.part)).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter().filter_map(|k| summary(self.rows.iter().filter(|r| (r.source, r.part) == k && !r.fitted)).map(|s| (k, s))).collect()
    }

    /// Each step-level band (`crate::bands`) against the rows it stands
    /// for, not fitted on: (rows, band, rows whose measured / predicted
    /// falls inside it, rows).
    pub fn band_coverage(&self) -> Vec<Coverage> {
        use crate::bands::{CATALOG_COMM, FITTED_FAMILY, HOPPER_CATALOG};
        let groups: [BandRows; 4] = [
            ("pycls and timm, whole passes and steps", FITTED_FAMILY, |r: &Row| {
                matches!((r.source, r.part), (Source::Pycls, Part::Total) | (Source::Timm, Part::Step))
            }),
            ("pycls's workloads on an H200, forward+backward", HOPPER_CATALOG, |r| (r.source, r.part) == (Source::H200Pytorch, Part::Total)),
            ("the executor's blocks on an H200, forward+backward", HOPPER_CATALOG, |r| (r.source, r.part) == (Source::H200Executor, Part::Total)),
            ("public nccl-tests figures", CATALOG_COMM, |r| r.source == Source::NcclTests),
        ];
        groups
            .into_iter()
            .map(|(name, band, pick)| {
                let rows: Vec<&Row> = self.rows.iter().filter(|r| !r.fitted && pick(r)).collect();
                let own = |r: &Row| r.band.unwrap_or([band.low, band.high]);
                let inside = rows.iter().filter(|r| (own(r)[0]..=own(r)[1]).contains(&(r.measured_s / r.predicted_s))).count();
                let low = rows.iter().map(|r| own(r)[0]).fold(band.low, f64::min);
                let high = rows.iter().map(|r| own(r)[1]).fold(band.high, f64::max);
                let widened = low < band.low || high > band.high;
                Coverage {
                    rows: name,
                    low,
                    high,
                    source: if widened { format!("{}; per row, widened by its unaligned GEMMs' share", band.source) } else { band.source.to_string() },
                    inside,
                    n: rows.len(),
                }
            })
            .collect()
    }

    /// Public rows outside their targets, for the test and `--check`.
    pub fn failures(&self) -> Vec<String> {
        let mut out = Vec::new();
        for ((src, part), Summary { median: med, max, .. }) in self.checks() {
            if med > TARGET_MEDIAN || max > TARGET_MAX {
                out.push(format!(
                    "{} {}: median |error| {:.1} %, max {:.1} % (targets {:.0} %, {:.0} %)",
                    src.describe(),
                    part.name(),
                    med * 100.0,
                    max * 100.0,
                    TARGET_MEDIAN * 100.0,
                    TARGET_MAX * 100.0
                ));
            }
        }
        let checked = |r: &&Row| matches!(r.source, Source::Pycls | Source::Timm) || (r.source == Source::NcclTests && !r.fitted);
        for r in self.rows.iter().filter(checked).filter(|r| r.error().abs() > TARGET_MAX) {
            out.push(format!("{} {} {}: {:+.1} % (tolerance ±{:.0} %)", r.source.describe(), r.workload, r.part.name(), r.error() * 100.0, TARGET_MAX * 100.0));
        }
        out
    }
}
