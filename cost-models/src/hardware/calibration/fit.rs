//! Fits: measured ops into rates, collectives into alpha and bus
//! bandwidth, busy collectives into their extra cost.

use super::*;
use crate::collectives::{BusyCollective, Collective, CollectiveFit, Scope};
use crate::compute::OpKind;
use crate::stats::median;
use crate::{Bandwidth, DType, Seconds};
use serde::{Deserialize, Serialize};

/// Achieved rate per (kind, dtype), `Σ flops / Σ (time − fixed costs)`:
/// the rate that makes the roofline plus the measured per-kind fixed costs
/// reproduce the summed measured time.
pub fn fit_rates_fixed(ops: &[OpMeasurement], fixed: &[FixedCost]) -> Result<Vec<RateFit>, CalibrationError> {
    let mut out: Vec<RateFit> = Vec::new();
    for m in ops.iter().filter(|m| m.flops_fwd > 0.0) {
        if out.iter().any(|r| r.kind == m.kind && r.dtype == m.dtype) {
            continue;
        }
        let Some(f) = fixed.iter().find(|f| f.kind == m.kind) else { continue };
        let group: Vec<&OpMeasurement> = ops.iter().filter(|o| o.kind == m.kind && o.dtype == m.dtype).collect();
        // time_i = fixed + flops_i / rate with the fixed cost measured at a
        // tiny shape; 1/rate fitted by least squares on the *relative*
        // error of each shape's compute part, so small shapes (where real
        // small models live) weigh as much as large ones.
        let (mut time, mut ovh, mut sa, mut saa) = (0.0, 0.0, 0.0, 0.0);
        for o in &group {
            let t = o.forward.median_s + o.backward.median_s;
            let fixed = f.forward.median_s + f.backward.median_s;
            time += t;
            ovh += fixed;
            let a = (o.flops_fwd + o.flops_bwd) / (t - fixed).max(0.1 * t);
            sa += a;
            saa += a * a;
        }
        let rate = if sa > 0.0 { saa / sa } else { 0.0 };
        out.push(RateFit { kind: m.kind, dtype: m.dtype, tflops: rate / 1e12, overhead_share: ovh / time, shapes: group.len() });
    }
    Ok(out)
}

/// Achieved rate of one (kind, dtype), from all its shapes, forward and
/// backward together: the one number `ComputeModel` uses for both passes.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RateFit {
    pub kind: OpKind,
    pub dtype: DType,
    pub tflops: f64,
    /// Fraction of the measured time that was per-op overhead.
    pub overhead_share: f64,
    pub shapes: usize,
}

/// Effective bandwidth of the memory-bound ops (BN, elementwise, pooling)
/// in the graph's byte count, overhead subtracted; what `ComputeModel`
/// divides their bytes by. `None` when none was measured.
pub fn fit_memory_bound(ops: &[OpMeasurement], overhead_s: f64) -> Option<f64> {
    let (mut bytes, mut time) = (0.0, 0.0);
    for o in ops.iter().filter(|m| matches!(m.kind, OpKind::Norm | OpKind::Elementwise | OpKind::Reduction)) {
        bytes += o.bytes_fwd + o.bytes_bwd;
        time += (o.forward.median_s - overhead_s).max(0.1 * o.forward.median_s) + (o.backward.median_s - overhead_s).max(0.1 * o.backward.median_s);
    }
    (time > 0.0).then(|| bytes / time)
}

/// Each collective's busy-rank cost as `extra + skew · L`: per round and
/// compute length L, the median over sizes of `busy − compute alone − idle
/// collective` (medians), then the line through the two lengths (both
/// parts at least 0); with several rounds, the median of their extras and
/// of their skews (a two-point line on a noisy host swings between all
/// extra and all skew from one pass to the next).
pub(crate) fn busy_extras(idle: &[CollectiveSample], busy: &[BusySample]) -> Vec<BusyCollective> {
    let mut out = Vec::new();
    let mut rounds: Vec<usize> = busy.iter().map(|b| b.round).collect();
    rounds.sort_unstable();
    rounds.dedup();
    for op in BUSY_COLLECTIVES {
        let fits: Vec<(f64, f64)> = rounds.iter().filter_map(|&r| busy_line(idle, busy.iter().filter(|b| b.collective == op && b.round == r))).collect();
        if fits.is_empty() {
            continue;
        }
        let extra = median(fits.iter().map(|f| f.0).collect());
        let skew = median(fits.iter().map(|f| f.1).collect());
        let world_size = busy.iter().find(|b| b.collective == op).map_or(2, |b| b.world_size);
        out.push(BusyCollective { collective: op, world_size, extra: Seconds(sig(extra)), skew: sig(skew) });
    }
    out
}

/// (extra, skew) of one collective in one round: per compute segment, the
/// median segment length and the median over sizes of `busy − compute
/// alone − idle collective`; then the line through the shortest and the
/// longest segment. None without samples.
pub(super) fn busy_line<'a>(idle: &[CollectiveSample], busy: impl Iterator<Item = &'a BusySample> + Clone) -> Option<(f64, f64)> {
    let mut segments: Vec<usize> = busy.clone().map(|b| b.segment_convs).collect();
    segments.sort_unstable();
    segments.dedup();
    let mut points: Vec<(f64, f64)> = Vec::new();
    for seg in segments {
        let in_seg = busy.clone().filter(|b| b.segment_convs == seg);
        let e: Vec<f64> = in_seg
            .clone()
            .filter_map(|b| {
                let i = idle.iter().find(|s| s.collective == b.collective && s.bytes == b.bytes)?;
                Some(b.busy.expected_s - b.compute.expected_s - i.timing.expected_s)
            })
            .collect();
        if !e.is_empty() {
            points.push((median(in_seg.map(|b| b.compute.expected_s).collect()), median(e)));
        }
    }
    points.sort_by(|a, b| a.0.total_cmp(&b.0));
    match points.as_slice() {
        [] => None,
        [(_, e)] => Some((*e, 0.0)),
        [(l0, e0), .., (l1, e1)] => {
            let skew = if l1 > l0 { ((e1 - e0) / (l1 - l0)).max(0.0) } else { 0.0 };
            Some(((e0 - skew * l0).max(0.0), skew))
        }
    }
}

/// Alpha/beta of one collective with how well the line fits.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CollectiveFitReport {
    pub fit: CollectiveFit,
    /// Fitted `time = intercept + slope · S`.
    pub intercept_s: f64,
    pub slope_s_per_byte: f64,
    /// Root-mean-square relative error of the line at the measured sizes.
    pub rms_rel_error: f64,
    pub points: usize,
}

/// (latency steps, bytes-moved factor) of the ring formula over `n` ranks:
/// `time = steps·α + factor·S / busbw`.
pub(super) fn ring_terms(op: Collective, n: usize) -> (f64, f64) {
    let nf = n as f64;
    let frac = (nf - 1.0) / nf;
    match op {
        Collective::AllGather | Collective::ReduceScatter => (nf - 1.0, frac),
        Collective::AllReduce => (2.0 * (nf - 1.0), 2.0 * frac),
        Collective::Broadcast => (nf - 1.0, 1.0),
    }
}

/// Least squares of `t = a + b·S` on the medians, minimising RELATIVE error
/// (weights 1/t²) so the small sizes that set alpha count as much as the
/// large ones that set beta. A negative intercept (noise) is refitted
/// through the origin.
pub(crate) fn fit_line(points: &[(f64, f64)]) -> Option<(f64, f64)> {
    if points.len() < 2 {
        return None;
    }
    let (mut sw, mut sx, mut sy, mut sxx, mut sxy) = (0.0, 0.0, 0.0, 0.0, 0.0);
    for &(x, y) in points {
        let w = 1.0 / (y * y);
        sw += w;
        sx += w * x;
        sy += w * y;
        sxx += w * x * x;
        sxy += w * x * y;
    }
    let det = sw * sxx - sx * sx;
    if det.abs() < f64::MIN_POSITIVE {
        return None;
    }
    let b = (sw * sxy - sx * sy) / det;
    let a = (sy - b * sx) / sw;
    if b <= 0.0 {
        return None;
    }
    if a >= 0.0 {
        return Some((a, b));
    }
    Some((0.0, sxy / sxx))
}

/// `time = a + b·S` for measurements that do not grow with size: `a` the
/// fastest time, `b` the growth from it to the largest size, but at least
/// 10 % of `a` over the largest size, so the bandwidth stays one the data
/// cannot rule out rather than an unbounded one.
pub(super) fn latency_bound_fit(xy: &[(f64, f64)]) -> (f64, f64) {
    let a = xy.iter().map(|p| p.1).fold(f64::INFINITY, f64::min);
    let (s_max, t_at_max) = xy.iter().copied().fold((0.0, 0.0), |m, p| if p.0 > m.0 { p } else { m });
    let s_max = s_max.max(1.0);
    let b = ((t_at_max - a) / s_max).max(0.1 * a / s_max);
    (a, b)
}

/// Fits every collective measured, for ranks on one node (`Scope::IntraNode`).
pub fn fit_collectives(samples: &[CollectiveSample]) -> Result<Vec<CollectiveFitReport>, CalibrationError> {
    let mut out = Vec::new();
    for op in COLLECTIVES {
        let pts: Vec<&CollectiveSample> = samples.iter().filter(|s| s.collective == op).collect();
        if pts.is_empty() {
            continue;
        }
        let n = pts[0].world_size;
        if n < 2 {
            return Err(CalibrationError::Degenerate { what: format!("{op:?}"), reason: "needs at least 2 ranks".into() });
        }
        let xy: Vec<(f64, f64)> = pts.iter().map(|s| (s.bytes as f64, s.timing.expected_s)).collect();
        // Over loopback the measured sizes can all be latency-bound (time
        // flat in size, or noise making the slope negative). Then keep the
        // latency and a bandwidth only bounded from below by the data: the
        // transfer at the largest size is at most what the times allow.
        // A fitted slope whose growth over the measured sizes is within the
        // noise of the latency says no more than a flat line does.
        let s_max = xy.iter().map(|p| p.0).fold(0.0, f64::max);
        let (a, b) = match fit_line(&xy) {
            Some((a, b)) if b * s_max >= 0.1 * a => (a, b),
            _ => latency_bound_fit(&xy),
        };
        let rms = (xy.iter().map(|&(x, y)| ((a + b * x - y) / y).powi(2)).sum::<f64>() / xy.len() as f64).sqrt();
        let (steps, factor) = ring_terms(op, n);
        out.push(CollectiveFitReport {
            fit: CollectiveFit { collective: op, scope: Scope::IntraNode, alpha: Seconds(a / steps), bus_bandwidth: Bandwidth(factor / b) },
            intercept_s: a,
            slope_s_per_byte: b,
            rms_rel_error: rms,
            points: xy.len(),
        });
    }
    Ok(out)
}

/// Four significant digits: the noise is percents, more digits only mislead.
pub fn sig(x: f64) -> f64 {
    if x == 0.0 || !x.is_finite() {
        return x;
    }
    let p = 10f64.powi(3 - x.abs().log10().floor() as i32);
    (x * p).round() / p
}
