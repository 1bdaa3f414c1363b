//! How far to trust a predicted step time: the range the measured time is
//! expected in, from the accuracy study that applies to the plan's hardware
//! (docs/accuracy-gpu.md), for its compute and for its exposed
//! communication. A band is a range of measured / predicted; the test
//! `bands_cover_the_rows_they_come_from` (accuracy.rs) holds every band to
//! the rows it stands for, so a model change that leaves them fails.

use cost_models::hardware::{DeviceKind, HardwareProfile};
use cost_models::Seconds;

/// Measured / predicted is expected within `[low, high]`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Band {
    pub low: f64,
    pub high: f64,
    pub source: &'static str,
}

/// The kernel model on Volta and Ampere, the families it was fitted on:
/// pycls's and timm's rows not fitted on read 0.93-1.10 of the prediction.
pub const FITTED_FAMILY: Band = Band { low: 0.90, high: 1.12, source: "kernel model on a family it was fitted on" };

/// The kernel model on Hopper, never fitted there: pycls's workloads on an
/// H200 read 1.30-1.76 of the prediction, the executor's blocks 0.93-3.4.
pub const HOPPER_CATALOG: Band = Band { low: 1.2, high: 2.0, source: "kernel model on Hopper, never fitted there" };

/// Blocks measured on the GPU (`calibrate --device cuda --recipe`): the
/// H200's calibrated validation read within 10 % of the prediction.
pub const CALIBRATED: Band = Band { low: 0.90, high: 1.10, source: "blocks measured on this GPU" };

/// The catalog's links: public nccl-tests figures read 0.88-1.19 of the model.
pub const CATALOG_COMM: Band = Band { low: 0.85, high: 1.22, source: "catalog links vs public nccl-tests" };

/// Collectives fitted from measurements (nccl-tests logs or calibrate).
pub const MEASURED_COMM: Band = Band { low: 0.90, high: 1.10, source: "measured collectives" };

/// The compute band for `profile`; None on a CPU, whose speed moves with
/// the shared host (docs/validate-tiny-cpu*.md) too much for one.
pub fn compute_band(profile: &HardwareProfile) -> Option<Band> {
    let hw = &profile.hardware;
    if hw.kind == DeviceKind::Cpu {
        return None;
    }
    if !profile.measured.block_times.is_empty() {
        return Some(CALIBRATED);
    }
    let arch = hw.kernels.as_ref().map(|k| k.architecture.as_str()).unwrap_or("");
    Some(if arch == "hopper" { HOPPER_CATALOG } else { FITTED_FAMILY })
}

pub fn comm_band(profile: &HardwareProfile) -> Band {
    if profile.measured.collectives.fits.is_empty() {
        CATALOG_COMM
    } else {
        MEASURED_COMM
    }
}

/// A predicted step time's range and where it comes from.
#[derive(Clone, Debug, PartialEq)]
pub struct StepRange {
    pub low: Seconds,
    pub high: Seconds,
    pub source: String,
}

impl StepRange {
    /// `value` (days, dollars) scaled as the step: `[low, high]`.
    pub fn scale(&self, predicted_step: Seconds, value: f64) -> [f64; 2] {
        let s = predicted_step.0.max(1e-30);
        [value * self.low.0 / s, value * self.high.0 / s]
    }
}

/// The step's range: its exposed communication in the communication band,
/// the rest (compute, recompute, optimiser, host) in the compute band.
pub fn step_range(profile: &HardwareProfile, step: Seconds, exposed_comm: Seconds) -> Option<StepRange> {
    let c = compute_band(profile)?;
    let m = comm_band(profile);
    let comm = exposed_comm.0.clamp(0.0, step.0);
    let rest = step.0 - comm;
    Some(StepRange {
        low: Seconds(rest * c.low + comm * m.low),
        high: Seconds(rest * c.high + comm * m.high),
        source: format!("compute {:.2}-{:.2}x ({}); communication {:.2}-{:.2}x ({})", c.low, c.high, c.source, m.low, m.high, m.source),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use cost_models::hardware::load_profile;

    #[test]
    fn the_band_follows_the_hardware_and_what_was_measured() {
        let a100 = load_profile("a100-40gb").unwrap();
        assert_eq!(compute_band(&a100), Some(FITTED_FAMILY));
        assert_eq!(compute_band(&load_profile("h100-80gb").unwrap()), Some(HOPPER_CATALOG));
        assert_eq!(compute_band(&load_profile("v100-32gb").unwrap()), Some(FITTED_FAMILY));
        assert_eq!(compute_band(&load_profile("cpu-local").unwrap()), None);
        // 1 s of which 0.2 s exposed communication.
        let r = step_range(&a100, Seconds(1.0), Seconds(0.2)).unwrap();
        assert!((r.low.0 - (0.8 * 0.90 + 0.2 * 0.85)).abs() < 1e-12 && (r.high.0 - (0.8 * 1.12 + 0.2 * 1.22)).abs() < 1e-12, "{r:?}");
        assert_eq!(r.source, "compute 0.90-1.12x (kernel model on a family it was fitted on); communication 0.85-1.22x (catalog links vs public nccl-tests)");
        let [lo, hi] = r.scale(Seconds(1.0), 10.0);
        assert!((lo - 10.0 * r.low.0).abs() < 1e-9 && (hi - 10.0 * r.high.0).abs() < 1e-9);
    }
}
