//! Calibration's records and fits: what `seerscale calibrate` measured on
//! a machine (the executor runs the ops and fills these records in), the
//! fits that turn the records into rates, collective alpha/beta and busy
//! extras, and the [`HardwareProfile`] built from them. Nothing here runs
//! an op: measuring needs libtorch and stays in `executor::calibrate`.
//!
//! Every number is a median over repeats; the spread (p10..p90) is reported
//! as noise next to it.
//!
//! `records` holds what was measured, `fit` turns records into rates and
//! alpha/beta, `report` gathers a run's records and builds the profile.

use crate::collectives::Collective;
use crate::hardware::HardwareError;

mod fit;
mod records;
mod report;

pub use fit::*;
pub use records::*;
pub use report::*;

/// The collectives calibrate measures idle, and fits.
pub const COLLECTIVES: [Collective; 4] = [Collective::AllGather, Collective::ReduceScatter, Collective::AllReduce, Collective::Broadcast];

/// Collectives FSDP issues in a step, measured right after compute.
pub const BUSY_COLLECTIVES: [Collective; 3] = [Collective::AllGather, Collective::ReduceScatter, Collective::AllReduce];

/// Why measurements do not make a profile.
#[derive(Debug, thiserror::Error)]
pub enum CalibrationError {
    #[error(transparent)]
    Hardware(#[from] HardwareError),
    #[error("{what}: {reason}")]
    Degenerate { what: String, reason: String },
    #[error("the calibrated profile is invalid: field `{field}`: {reason}")]
    Invalid { field: String, reason: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::compute::OpKind;
    use crate::DType;

    #[test]
    fn calibrate_flop_and_byte_counts_match_the_graph_conventions() {
        let c = OpCase::Conv { n: 2, cin: 8, cout: 16, hw: 8, k: 3, stride: 2, groups: 2 };
        // out 4x4; MACs = 2*16*4*4*(8/2)*9
        let macs = (2 * 16 * 4 * 4 * 4 * 9) as f64;
        assert_eq!(c.flops(), (2.0 * macs, 4.0 * macs));
        assert_eq!(c.kind(), OpKind::GroupedConv);
        assert_eq!(c.kernels(), (1, 2));
        let (bf, bb) = c.bytes(DType::Bf16);
        assert_eq!(bf, ((2 * 8 * 64 + 2 * 16 * 16 + 16 * 4 * 9) * 2) as f64);
        assert_eq!(bb, 2.0 * bf);
        assert_eq!(OpCase::Add { n: 1, c: 2, hw: 3 }.bytes(DType::Fp32).0, 3.0 * 18.0 * 4.0);
    }

    #[test]
    fn calibrate_quantiles_and_noise() {
        let t = Timing::from_samples(vec![5.0, 1.0, 3.0, 2.0, 4.0], 1);
        assert_eq!(t.median_s, 3.0);
        assert_eq!(t.expected_s, 3.0, "under ten samples nothing is dropped");
        assert!((t.p10_s - 1.4).abs() < 1e-12 && (t.p90_s - 4.6).abs() < 1e-12);
        assert!((t.noise() - 3.2 / 6.0).abs() < 1e-12);
        // A right-skewed series: the expected cost sits above the median, and
        // the one stall (the slowest tenth) does not count.
        let t = Timing::from_samples(vec![1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 4.0, 4.0, 100.0], 1);
        assert_eq!(t.median_s, 1.0);
        assert!((t.expected_s - 15.0 / 9.0).abs() < 1e-12, "{}", t.expected_s);
    }

    /// The busy-rank fit: per compute length, busy − compute − idle; a line
    /// through the two lengths gives the fixed extra and the skew.
    #[test]
    fn busy_collectives_fit_a_fixed_extra_and_a_skew_per_second_of_compute() {
        let t = |s: f64| Timing { median_s: s, p10_s: s, p90_s: s, expected_s: s, samples: 1, calls_per_sample: 1 };
        let idle = vec![CollectiveSample { collective: Collective::AllReduce, bytes: 4096, world_size: 2, timing: t(100e-6) }];
        // extra(L) = 50 µs + 0.4 L at L = 1 ms and 4 ms.
        let sample = |convs: usize, l: f64, extra: f64, skew: f64, round: usize| BusySample {
            collective: Collective::AllReduce,
            bytes: 4096,
            world_size: 2,
            compute: t(l),
            busy: t(l + 100e-6 + extra + skew * l),
            segment_convs: convs,
            round,
        };
        let busy = vec![sample(2, 1e-3, 50e-6, 0.4, 0), sample(8, 4e-3, 50e-6, 0.4, 0)];
        let fit = busy_extras(&idle, &busy);
        assert_eq!(fit.len(), 1);
        assert!((fit[0].extra.0 - 50e-6).abs() < 1e-9, "{:?}", fit[0]);
        assert!((fit[0].skew - 0.4).abs() < 1e-9, "{:?}", fit[0]);
        // Noise that makes the longer segment cheaper is no skew, not a negative one.
        let mut flat = busy.clone();
        flat[1].busy = t(4e-3 + 100e-6);
        let fit = busy_extras(&idle, &flat);
        assert!(fit[0].skew == 0.0 && fit[0].extra.0 >= 0.0, "{:?}", fit[0]);
        // Three rounds, one of them all extra and no skew: each round is
        // fitted on its own and the median of the three is kept.
        let rounds: Vec<BusySample> = [(50e-6, 0.4), (400e-6, 0.0), (60e-6, 0.3)]
            .iter()
            .enumerate()
            .flat_map(|(r, &(e, k))| [sample(2, 1e-3, e, k, r), sample(8, 4e-3, e, k, r)])
            .collect();
        let fit = busy_extras(&idle, &rounds);
        assert!((fit[0].extra.0 - 60e-6).abs() < 1e-9 && (fit[0].skew - 0.3).abs() < 1e-9, "{:?}", fit[0]);
    }

    #[test]
    fn calibrate_flat_collective_times_still_fit_latency() {
        let xy = [(4096.0, 0.0039), (65536.0, 0.0040), (1048576.0, 0.00386)];
        let (a, b) = latency_bound_fit(&xy);
        assert!((a - 0.00386).abs() < 1e-9 && b > 0.0);
        // The line never predicts less than the fastest measurement.
        assert!(xy.iter().all(|&(x, _)| a + b * x >= 0.00386 && a + b * x <= 0.0040 * 1.1));
        // A plausible bandwidth, not an unbounded one.
        assert!(1048576.0 / (b * 1048576.0) < 1e10);
    }

    #[test]
    fn calibrate_line_fit_recovers_alpha_beta() {
        // t = 50 µs + S / 2 GB/s, with ±2 % alternating noise.
        let pts: Vec<(f64, f64)> =
            (0..7).map(|i| 4096.0 * 4f64.powi(i)).enumerate().map(|(k, s)| (s, (50e-6 + s / 2e9) * if k % 2 == 0 { 1.02 } else { 0.98 })).collect();
        let (a, b) = fit_line(&pts).unwrap();
        assert!((a - 50e-6).abs() / 50e-6 < 0.05, "a = {a}");
        assert!((1.0 / b - 2e9).abs() / 2e9 < 0.05, "bw = {}", 1.0 / b);
        // All-gather over 2 ranks: a = 1·alpha, b = (1/2) / busbw.
        let samples: Vec<CollectiveSample> = pts
            .iter()
            .map(|&(s, t)| CollectiveSample { collective: Collective::AllGather, bytes: s as u64, world_size: 2, timing: Timing::from_samples(vec![t], 1) })
            .collect();
        let f = &fit_collectives(&samples).unwrap()[0];
        assert!((f.fit.alpha.0 - a).abs() < 1e-12);
        assert!((f.fit.bus_bandwidth.0 - 0.5 / b).abs() < 1.0);
        assert!(f.rms_rel_error < 0.03, "{}", f.rms_rel_error);
        // Flat or shrinking times cannot be fitted.
        assert!(fit_line(&[(1.0, 2.0), (4.0, 1.0)]).is_none());
    }
}
