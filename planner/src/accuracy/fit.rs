//! The fit of each architecture's `[kernels]` parameters on the fit rows.

use super::rows::*;
use super::*;
use cost_models::hardware::HardwareSpec;
use cost_models::kernels::{KernelModel, KernelSpec};
use serde::Serialize;
use std::collections::BTreeMap;

/// Fitted `[kernels]` values per architecture, with the fit rows' error.
#[derive(Clone, Debug, Serialize)]
pub struct Fit {
    pub architecture: String,
    pub spec: KernelSpec,
    pub rows: usize,
    /// Root mean square of ln(predicted / measured) over the fit rows.
    pub rms_log_error: f64,
}

/// Which fields a family's rows can determine.
pub(super) fn free_fields(arch: &str) -> &'static [&'static str] {
    match arch {
        "volta" => &["cuda_efficiency", "backward_efficiency", "winograd_speedup", "k_overhead", "memory_efficiency", "launch_us"],
        _ => &["tensor_efficiency", "cuda_efficiency", "k_overhead", "memory_efficiency", "launch_us"],
    }
}

pub(super) fn field<'a>(spec: &'a mut KernelSpec, name: &str) -> (&'a mut f64, f64, f64) {
    match name {
        "tensor_efficiency" => (&mut spec.tensor_efficiency, 0.05, 1.0),
        "cuda_efficiency" => (&mut spec.cuda_efficiency, 0.05, 1.0),
        "memory_efficiency" => (&mut spec.memory_efficiency, 0.05, 1.0),
        "backward_efficiency" => (&mut spec.backward_efficiency, 0.05, 1.0),
        "winograd_speedup" => (&mut spec.winograd_speedup, 1.0, 2.25),
        "k_overhead" => (&mut spec.k_overhead, 0.0, 1024.0),
        "host_op_us" => (&mut spec.host_op.0, 0.0, 100e-6),
        _ => (&mut spec.launch.0, 0.0, 50e-6),
    }
}

/// Coordinate-descent sweeps over the free fields.
pub(super) const SWEEPS: usize = 14;

/// Fits one architecture's free fields on `cases` (coordinate descent,
/// golden-section search per field, on the summed squared log error).
pub(super) fn fit_family(hw: &HardwareSpec, start: KernelSpec, cases: &[&Case]) -> Fit {
    let loss = |spec: &KernelSpec| -> f64 {
        let k = KernelModel::with_spec(hw, spec.clone());
        cases.iter().flat_map(|c| predict(&k, c).into_iter().zip(&c.measured).map(|((_, p), (_, m))| (p / m).ln().powi(2)).collect::<Vec<_>>()).sum()
    };
    let mut spec = start;
    let fields = free_fields(&spec.architecture);
    for _sweep in 0..SWEEPS {
        for f in fields {
            let (lo, hi) = {
                let mut s = spec.clone();
                let (_, lo, hi) = field(&mut s, f);
                (lo, hi)
            };
            let eval = |x: f64| {
                let mut s = spec.clone();
                *field(&mut s, f).0 = x;
                loss(&s)
            };
            let (mut a, mut b) = (lo, hi);
            let r = (5f64.sqrt() - 1.0) / 2.0;
            let (mut c, mut d) = (b - r * (b - a), a + r * (b - a));
            let (mut fc, mut fd) = (eval(c), eval(d));
            for _ in 0..40 {
                if fc < fd {
                    b = d;
                    d = c;
                    fd = fc;
                    c = b - r * (b - a);
                    fc = eval(c);
                } else {
                    a = c;
                    c = d;
                    fc = fd;
                    d = a + r * (b - a);
                    fd = eval(d);
                }
            }
            let x = 0.5 * (a + b);
            if eval(x) < loss(&spec) {
                *field(&mut spec, f).0 = x;
            }
        }
    }
    let n: usize = cases.iter().map(|c| c.measured.len()).sum();
    let rms = (loss(&spec) / n.max(1) as f64).sqrt();
    Fit { architecture: spec.architecture.clone(), spec, rows: n, rms_log_error: rms }
}

/// The fit's starting point: the catalog's fixed fields with neutral
/// values for the free ones, so the result does not depend on what the
/// catalog held before.
pub(super) fn prior(catalog: KernelSpec) -> KernelSpec {
    KernelSpec {
        tensor_efficiency: 0.7,
        cuda_efficiency: 0.75,
        winograd_speedup: 1.0,
        backward_efficiency: 0.8,
        k_overhead: 64.0,
        memory_efficiency: 0.8,
        launch: cost_models::Seconds(5e-6),
        ..catalog
    }
}

/// Fits Volta on pycls's fit rows, then Ampere on timm's (with Volta's K
/// overhead, which its rows cannot pin down); Hopper takes Ampere's values.
pub fn fit() -> Result<Vec<Fit>, AccuracyError> {
    let cases = public_cases()?;
    let mut hw_cache = BTreeMap::new();
    let v100 = hardware_for("v100-16gb", &mut hw_cache)?;
    let volta_cases: Vec<&Case> = cases.iter().filter(|c| c.source == Source::Pycls && c.fitted).collect();
    let start = prior(v100.kernels.clone().ok_or_else(|| AccuracyError::Plan("v100-16gb has no [kernels]".into()))?);
    // pycls's rows give forward and backward; their sum is not a third row.
    let volta_parts: Vec<Case> =
        volta_cases.iter().map(|c| Case { measured: c.measured.iter().filter(|(p, _)| *p != Part::Total).copied().collect(), ..clone_case(c) }).collect();
    let volta = fit_family(&v100, start, &volta_parts.iter().collect::<Vec<_>>());
    let rtx = hardware_for("rtx-3090", &mut hw_cache)?;
    let mut start = prior(rtx.kernels.clone().ok_or_else(|| AccuracyError::Plan("rtx-3090 has no [kernels]".into()))?);
    start.k_overhead = volta.spec.k_overhead;
    start.backward_efficiency = volta.spec.backward_efficiency;

    let ampere_cases: Vec<&Case> = cases.iter().filter(|c| c.source == Source::Timm && c.fitted).collect();
    let ampere = fit_family(&rtx, start, &ampere_cases);
    let hopper =
        Fit { architecture: "hopper".into(), spec: KernelSpec { architecture: "hopper".into(), ..ampere.spec.clone() }, rows: 0, rms_log_error: f64::NAN };
    Ok(vec![volta, ampere, hopper])
}

pub(super) fn clone_case(c: &Case) -> Case {
    Case {
        source: c.source,
        gpu: c.gpu.clone(),
        workload: c.workload.clone(),
        graph: c.graph.clone(),
        block: c.block.clone(),
        measured: c.measured.clone(),
        fitted: c.fitted,
        optimizer: c.optimizer,
    }
}
