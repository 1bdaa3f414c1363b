//! How far to trust a predicted step time: the range the measured time is
//! expected in, from the accuracy study that applies to the plan's hardware
//! (docs/accuracy-gpu.md), for its compute and for its exposed
//! communication. A band is a range of measured / predicted; the test
//! `accuracy::tests::bands_cover_the_rows_they_come_from` holds every band to
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

/// Unaligned GEMMs (channels per group not a multiple of 8 in 16-bit, 4 in
/// TF32; SEER's widths) run at an assumed half of the aligned tensor-core
/// efficiency, fitted on no row. The H200's unaligned SEER-width
/// convolutions ran at 0.26-0.88 of their aligned twins' rate (forward,
/// data and weight gradients together), so their time reads 0.56-1.92 of
/// the assumption's, on top of the family's band
/// (`unaligned_band_spans_the_h200_twins` holds it to those rows).
pub const UNALIGNED: Band = Band { low: 0.56, high: 1.92, source: "unaligned channels at an assumed efficiency" };

/// The compute band for `profile`; None on a CPU, whose speed moves with
/// the shared host (docs/validate-tiny-cpu*.md) too much for one.
pub(crate) fn compute_band(profile: &HardwareProfile) -> Option<Band> {
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

/// Why a CPU plan's step time carries no band, and how to read it; None
/// off a CPU. Its step time is a floor on the catalog's peak rates, and
/// measured costs (`calibrate`) were timed on a host whose load moves.
pub fn cpu_caveat(profile: &HardwareProfile) -> Option<String> {
    if profile.hardware.kind != DeviceKind::Cpu {
        return None;
    }
    let m = &profile.measured;
    Some(if m.block_times.is_empty() && m.op_throughput.is_empty() {
        "no band on a CPU; the catalog's peak op rates, not measured on this host, make this step time a floor (`seerscale calibrate` measures them)".into()
    } else {
        let what = if m.block_times.is_empty() { "op rates" } else { "blocks" };
        format!(
            "no band on a CPU; {what} measured by `calibrate`, whose speed moves with the shared host's load and with the cores the ranks and loader threads take from each other (docs/validation.md)"
        )
    })
}

pub(crate) fn comm_band(profile: &HardwareProfile) -> Band {
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
/// the rest (compute, recompute, optimiser, host) in the compute band, of
/// which `unaligned_share` (unaligned GEMMs' share of the kernel time) also
/// in [`UNALIGNED`] unless the blocks were measured.
pub fn step_range(profile: &HardwareProfile, step: Seconds, exposed_comm: Seconds, unaligned_share: f64) -> Option<StepRange> {
    let c = compute_band(profile)?;
    let [lo, hi] = compute_range(profile, unaligned_share)?;
    let m = comm_band(profile);
    let comm = exposed_comm.0.clamp(0.0, step.0);
    let rest = step.0 - comm;
    let u = if c == CALIBRATED { 0.0 } else { unaligned_share.clamp(0.0, 1.0) };
    let mut source = format!("compute {:.2}-{:.2}x ({})", c.low, c.high, c.source);
    if u >= 0.005 {
        source.push_str(&format!(", its {:.0} % in {}: {:.2}-{:.2}x of that", 100.0 * u, UNALIGNED.source, UNALIGNED.low, UNALIGNED.high));
    }
    source.push_str(&format!("; communication {:.2}-{:.2}x ({})", m.low, m.high, m.source));
    Some(StepRange { low: Seconds(rest * lo + comm * m.low), high: Seconds(rest * hi + comm * m.high), source })
}

/// Measured / predicted expected for compute on `profile` of which
/// `unaligned_share` is unaligned GEMMs: the compute band, that share of it
/// widened by [`UNALIGNED`] (not where the blocks were measured); None on
/// a CPU.
pub(crate) fn compute_range(profile: &HardwareProfile, unaligned_share: f64) -> Option<[f64; 2]> {
    let c = compute_band(profile)?;
    let u = if c == CALIBRATED { 0.0 } else { unaligned_share.clamp(0.0, 1.0) };
    Some([c.low * ((1.0 - u) + u * UNALIGNED.low), c.high * ((1.0 - u) + u * UNALIGNED.high)])
}

/// [`step_range`] of an evaluated plan on its hardware.
pub fn range_of(profile: &HardwareProfile, e: &crate::search::Evaluated) -> Option<StepRange> {
    step_range(profile, e.step.step_time, e.step.exposed_comm, e.unaligned_share)
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
        let r = step_range(&a100, Seconds(1.0), Seconds(0.2), 0.0).unwrap();
        assert!((r.low.0 - (0.8 * 0.90 + 0.2 * 0.85)).abs() < 1e-12 && (r.high.0 - (0.8 * 1.12 + 0.2 * 1.22)).abs() < 1e-12, "{r:?}");
        assert_eq!(r.source, "compute 0.90-1.12x (kernel model on a family it was fitted on); communication 0.85-1.22x (catalog links vs public nccl-tests)");
        let [lo, hi] = r.scale(Seconds(1.0), 10.0);
        assert!((lo - 10.0 * r.low.0).abs() < 1e-9 && (hi - 10.0 * r.high.0).abs() < 1e-9);
        // Half the compute in unaligned GEMMs widens that half by UNALIGNED.
        let u = step_range(&a100, Seconds(1.0), Seconds(0.0), 0.5).unwrap();
        assert!((u.low.0 - 0.90 * (0.5 + 0.5 * UNALIGNED.low)).abs() < 1e-12 && (u.high.0 - 1.12 * (0.5 + 0.5 * UNALIGNED.high)).abs() < 1e-12, "{u:?}");
        assert!(u.source.contains("its 50 % in unaligned channels"), "{}", u.source);
    }

    /// The unaligned band holds every aligned/unaligned twin the H200
    /// measured: the same SEER-width convolution with 373 vs 376 (256GF)
    /// or 1010 vs 1008 (10B) channels per group, as the assumed efficiency
    /// over the measured rate ratio (forward, data and weight gradients).
    #[test]
    fn unaligned_band_spans_the_h200_twins() {
        let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../configs/gpu-timings/h200-141gb-convs.json")).unwrap();
        let rows: serde_json::Value = serde_json::from_str(&text).unwrap();
        let rows = rows["rows"].as_array().unwrap();
        let time_per_flop = |label: &str, dtype: &str| {
            let r = rows.iter().find(|r| r["label"] == label && r["dtype"] == dtype)?;
            let t: f64 = ["forward_s", "dgrad_s", "wgrad_s"].iter().map(|k| r[k].as_f64().unwrap()).sum();
            Some(t / r["flops"].as_f64().unwrap())
        };
        let assumed = load_profile("h200-141gb").unwrap().hardware.kernels.unwrap().unaligned_tensor_efficiency;
        let mut twins = 0;
        for (unaligned, aligned) in [("256gf-s3-g373", "256gf-s3-g376"), ("10b-s3-g1010", "10b-s3-g1008")] {
            for at in ["@14.a", "@14.b", "@6.a", "@6.b", "@10.a", "@10.b"] {
                let (Some(u), Some(a)) = (time_per_flop(&format!("{unaligned}{at}"), "bf16"), time_per_flop(&format!("{aligned}{at}"), "bf16")) else {
                    continue;
                };
                let measured_over_assumed = assumed / (a / u);
                assert!((UNALIGNED.low..=UNALIGNED.high).contains(&measured_over_assumed), "{unaligned}{at}: {measured_over_assumed:.3}");
                twins += 1;
            }
        }
        assert_eq!(twins, 8);
    }

    #[test]
    fn a_cpu_plan_says_why_it_has_no_band() {
        assert_eq!(cpu_caveat(&load_profile("a100-40gb").unwrap()), None);
        let mut cpu = load_profile("cpu-local").unwrap();
        assert!(cpu_caveat(&cpu).unwrap().contains("floor"));
        cpu.measured.op_throughput.push(cost_models::hardware::OpThroughput {
            kind: cost_models::compute::OpKind::Conv,
            dtype: cost_models::DType::Fp32,
            rate: cost_models::FlopRate(1e11),
        });
        let calibrated = cpu_caveat(&cpu).unwrap();
        assert!(calibrated.contains("op rates measured") && !calibrated.contains("floor"), "{calibrated}");
    }
}
