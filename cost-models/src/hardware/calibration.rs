//! Calibration's records and fits: what `seerscale calibrate` measured on
//! a machine (the executor runs the ops and fills these records in), the
//! fits that turn the records into rates, collective alpha/beta and busy
//! extras, and the [`HardwareProfile`] built from them. Nothing here runs
//! an op: measuring needs libtorch and stays in `executor::calibrate`.
//!
//! Every number is a median over repeats; the spread (p10..p90) is reported
//! as noise next to it.

use crate::collectives::{BusyCollective, Collective, CollectiveFit, CollectiveProfile, Scope};
use crate::compute::OpKind;
use crate::hardware::{BlockTime, HardwareError, HardwareProfile, HardwareSpec, HostCosts, LoaderTime, Measured, OpFixed, OpThroughput};
use crate::stats::{mean_without_slowest, median, quantile};
use crate::{Bandwidth, Bytes, DType, FlopRate, Seconds};
use serde::{Deserialize, Serialize};

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

/// Median and spread of the time of ONE call, over samples.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Timing {
    pub median_s: f64,
    pub p10_s: f64,
    pub p90_s: f64,
    /// What one call costs inside a sum of many: the mean of the samples
    /// without the slowest tenth. Collectives on a shared host are
    /// right-skewed (the mean well above the median, a long tail), so a
    /// step's dozens of them cost their mean each, not their median;
    /// the slowest tenth goes because a rare stall shows in a few steps,
    /// which the step's median skips.
    #[serde(default)]
    pub expected_s: f64,
    pub samples: usize,
    /// Calls per sample (each sample's time is divided by this).
    pub calls_per_sample: usize,
}

impl Timing {
    /// Half the p10..p90 spread relative to the median: "± x %".
    pub fn noise(&self) -> f64 {
        if self.median_s > 0.0 {
            (self.p90_s - self.p10_s) / (2.0 * self.median_s)
        } else {
            0.0
        }
    }

    /// From per-call sample times (any order; at least one).
    pub fn from_samples(mut s: Vec<f64>, calls_per_sample: usize) -> Timing {
        s.sort_by(|a, b| a.total_cmp(b));
        let expected_s = mean_without_slowest(&s, 0.1);
        Timing { median_s: quantile(&s, 0.5), p10_s: quantile(&s, 0.1), p90_s: quantile(&s, 0.9), expected_s, samples: s.len(), calls_per_sample }
    }
}

/// One op at one shape (NCHW; `hw` is height = width).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum OpCase {
    /// k x k conv, padding k/2, no bias (RegNet-Y's `a`, `b`, `c`, `proj`).
    Conv {
        n: i64,
        cin: i64,
        cout: i64,
        hw: i64,
        k: i64,
        stride: i64,
        groups: i64,
    },
    /// `rows x d_in -> d_out` with bias (the SwAV MLP).
    Linear {
        rows: i64,
        d_in: i64,
        d_out: i64,
    },
    /// Training-mode BatchNorm2d with affine parameters.
    BatchNorm {
        n: i64,
        c: i64,
        hw: i64,
    },
    Relu {
        n: i64,
        c: i64,
        hw: i64,
    },
    /// Residual add of two activations.
    Add {
        n: i64,
        c: i64,
        hw: i64,
    },
    /// SE gate: activation times a per-channel [n, c, 1, 1] scale.
    ScaleMul {
        n: i64,
        c: i64,
        hw: i64,
    },
    /// Global average pool to [n, c, 1, 1].
    AvgPool {
        n: i64,
        c: i64,
        hw: i64,
    },
}

impl OpCase {
    pub fn kind(&self) -> OpKind {
        match self {
            OpCase::Conv { groups, .. } if *groups > 1 => OpKind::GroupedConv,
            OpCase::Conv { .. } => OpKind::Conv,
            OpCase::Linear { .. } => OpKind::Matmul,
            OpCase::BatchNorm { .. } => OpKind::Norm,
            OpCase::Relu { .. } | OpCase::Add { .. } | OpCase::ScaleMul { .. } => OpKind::Elementwise,
            OpCase::AvgPool { .. } => OpKind::Reduction,
        }
    }

    pub fn label(&self) -> String {
        match *self {
            OpCase::Conv { n, cin, cout, hw, k, stride, groups } => {
                format!("conv{k}x{k} {cin}->{cout} g{groups} s{stride} @{n}x{hw}x{hw}")
            }
            OpCase::Linear { rows, d_in, d_out } => format!("linear {d_in}->{d_out} x{rows}"),
            OpCase::BatchNorm { n, c, hw } => format!("batchnorm {c} @{n}x{hw}x{hw}"),
            OpCase::Relu { n, c, hw } => format!("relu {c} @{n}x{hw}x{hw}"),
            OpCase::Add { n, c, hw } => format!("add {c} @{n}x{hw}x{hw}"),
            OpCase::ScaleMul { n, c, hw } => format!("se-mul {c} @{n}x{hw}x{hw}"),
            OpCase::AvgPool { n, c, hw } => format!("avgpool {c} @{n}x{hw}x{hw}"),
        }
    }

    fn out_hw(hw: i64, k: i64, stride: i64) -> i64 {
        (hw + 2 * (k / 2) - k) / stride + 1
    }

    /// Multiply-adds of a conv / linear (0 for the memory-bound ops).
    fn macs(&self) -> f64 {
        match *self {
            OpCase::Conv { n, cin, cout, hw, k, stride, groups } => {
                let o = Self::out_hw(hw, k, stride);
                (n * cout * o * o * (cin / groups) * k * k) as f64
            }
            OpCase::Linear { rows, d_in, d_out } => (rows * d_in * d_out) as f64,
            _ => 0.0,
        }
    }

    /// (forward, backward) FLOPs as the graph counts them.
    pub fn flops(&self) -> (f64, f64) {
        let m = self.macs();
        (2.0 * m, 4.0 * m)
    }

    /// (forward, backward) kernels, as `OpDesc::from_layer` counts them.
    pub fn kernels(&self) -> (u32, u32) {
        match self {
            OpCase::Conv { .. } | OpCase::Linear { .. } => (1, 2),
            _ => (1, 1),
        }
    }

    /// (forward, backward) bytes moved, as the graph counts them: inputs +
    /// output (+ weights for conv/linear), backward twice that.
    pub fn bytes(&self, dtype: DType) -> (f64, f64) {
        let d = dtype.size() as f64;
        let act = |n: i64, c: i64, hw: i64| (n * c * hw * hw) as f64 * d;
        let fwd = match *self {
            OpCase::Conv { n, cin, cout, hw, k, stride, groups } => {
                let o = Self::out_hw(hw, k, stride);
                act(n, cin, hw) + act(n, cout, o) + (cout * (cin / groups) * k * k) as f64 * d
            }
            OpCase::Linear { rows, d_in, d_out } => (rows * (d_in + d_out) + d_in * d_out) as f64 * d,
            OpCase::BatchNorm { n, c, hw } | OpCase::Relu { n, c, hw } => 2.0 * act(n, c, hw),
            OpCase::Add { n, c, hw } => 3.0 * act(n, c, hw),
            OpCase::ScaleMul { n, c, hw } => 2.0 * act(n, c, hw),
            OpCase::AvgPool { n, c, hw } => act(n, c, hw) + (n * c) as f64 * d,
        };
        (fwd, 2.0 * fwd)
    }
}

/// One op measured in one dtype.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct OpMeasurement {
    pub case: OpCase,
    pub label: String,
    pub kind: OpKind,
    pub dtype: DType,
    pub forward: Timing,
    /// The autograd backward call, minus the `ones_like` it starts with.
    pub backward: Timing,
    pub flops_fwd: f64,
    pub flops_bwd: f64,
    pub bytes_fwd: f64,
    pub bytes_bwd: f64,
}

impl OpMeasurement {
    /// Achieved FLOP/s (fwd, bwd), overhead not subtracted.
    pub fn tflops(&self) -> (f64, f64) {
        (self.flops_fwd / self.forward.median_s / 1e12, self.flops_bwd / self.backward.median_s / 1e12)
    }
    /// Achieved GB/s (fwd, bwd) in the graph's byte count.
    pub fn gb_s(&self) -> (f64, f64) {
        (self.bytes_fwd / self.forward.median_s / 1e9, self.bytes_bwd / self.backward.median_s / 1e9)
    }
}

/// Fixed cost of one op kind under autograd, forward and backward (the
/// backward without the engine call, which is measured on its own).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FixedCost {
    pub kind: OpKind,
    pub label: String,
    pub forward: Timing,
    pub backward: Timing,
    /// Backward minus the engine call (what one node costs inside a graph).
    pub backward_node_s: f64,
}

/// Host-side costs of the executor's bookkeeping.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostMeasurement {
    /// A small op without autograd (64 floats, `mul_scalar` under no_grad).
    pub small_op: Timing,
    /// One `run_backward` call: a chain of 1 vs 17 ReLUs, extrapolated to 0.
    pub backward_call_s: f64,
    /// Per parameter leaf made from a gathered flat parameter
    /// (`executor::fsdp::param_leaf`), forward.
    pub param_view_forward_s: f64,
    /// Per parameter gradient added into a unit's gradient buffer
    /// (`executor::fsdp::add_grad_at`, 16 elements).
    #[serde(alias = "param_view_backward_s")]
    pub param_grad_s: f64,
    /// Per leaf in a backward call's inputs that the graph does not reach
    /// (16 such leaves vs none). Absent in older reports.
    #[serde(default)]
    pub param_leaf_unused_s: Option<f64>,
    /// The optimiser per flat shard (absent in reports from before it was
    /// measured): see `executor::calibrate::measure_optimizer`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub optimizer: Option<OptimizerShards>,
}

/// Seconds per flat shard that the executor's optimiser spends
/// (`optim::Optimizer`), with shards so small that their bytes do not
/// count: what the planner multiplies by a rank's shard (unit) count.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct OptimizerShards {
    /// The per-parameter squared norms of weights and gradients.
    pub norms_s: f64,
    /// SEER's update (SGD momentum, weight decay, LARC) after the norms.
    pub sgd_s: f64,
    /// Adam's update (L2 decay) after the norms.
    pub adam_s: f64,
}

/// [`fit_rates`] with the measured per-kind fixed costs subtracted instead
/// of a uniform per-kernel overhead.
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

/// Large copy (read + write): the DRAM bandwidth memory-bound ops can reach.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CopyBandwidth {
    pub bytes: u64,
    pub timing: Timing,
    pub gb_s: f64,
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

/// `rate = Σ flops / Σ (time − kernels · overhead)`, i.e. the rate that makes
/// the roofline + overhead model reproduce the summed measured time.
pub fn fit_rates(ops: &[OpMeasurement], overhead_s: f64) -> Result<Vec<RateFit>, CalibrationError> {
    let mut out: Vec<RateFit> = Vec::new();
    for m in ops.iter().filter(|m| m.flops_fwd > 0.0) {
        if out.iter().any(|r| r.kind == m.kind && r.dtype == m.dtype) {
            continue;
        }
        let group: Vec<&OpMeasurement> = ops.iter().filter(|o| o.kind == m.kind && o.dtype == m.dtype).collect();
        let (mut flops, mut time, mut ovh) = (0.0, 0.0, 0.0);
        for o in &group {
            let (kf, kb) = o.case.kernels();
            flops += o.flops_fwd + o.flops_bwd;
            time += o.forward.median_s + o.backward.median_s;
            ovh += overhead_s * (kf + kb) as f64;
        }
        let compute = time - ovh;
        if compute <= 0.1 * time {
            return Err(CalibrationError::Degenerate {
                what: format!("{:?} {}", m.kind, m.dtype),
                reason: format!("per-op overhead ({:.1} µs) explains {:.0} % of the measured time; use larger shapes", overhead_s * 1e6, 100.0 * ovh / time),
            });
        }
        out.push(RateFit { kind: m.kind, dtype: m.dtype, tflops: flops / compute / 1e12, overhead_share: ovh / time, shapes: group.len() });
    }
    Ok(out)
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

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ComputeReport {
    pub threads: usize,
    /// `cpu` or `cuda:N`: where the ops ran.
    #[serde(default = "cpu_device")]
    pub device: String,
    pub op_overhead: Timing,
    pub copy: CopyBandwidth,
    pub ops: Vec<OpMeasurement>,
    pub rates: Vec<RateFit>,
    /// Fixed per-op costs per kind (tiny shapes, fp32).
    #[serde(default)]
    pub fixed: Vec<FixedCost>,
    #[serde(default)]
    pub host: Option<HostMeasurement>,
    /// Effective GB/s of BN / elementwise / pooling.
    pub memory_bound_gb_s: Option<f64>,
    /// Dtypes left out, with the reason (an op this CPU build cannot run).
    pub skipped: Vec<String>,
    pub elapsed_s: f64,
}

fn cpu_device() -> String {
    "cpu".into()
}

/// One collective at one size: per-iteration time of the slowest rank.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CollectiveSample {
    pub collective: Collective,
    pub bytes: u64,
    pub world_size: usize,
    pub timing: Timing,
}

/// One collective at one size issued right after a fixed compute segment
/// on every rank, as a training step issues it, with no barrier between
/// iterations: the ranks drift apart by their compute noise and the
/// transport's threads compete with compute for the cores.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BusySample {
    pub collective: Collective,
    pub bytes: u64,
    pub world_size: usize,
    /// The compute segment before the collective (mean over ranks).
    pub compute: Timing,
    /// Compute segment + collective, per iteration, slowest rank.
    pub busy: Timing,
    /// Grouped 3x3 convs in the compute segment (one of `executor::calibrate`'s busy segments).
    #[serde(default)]
    pub segment_convs: usize,
    /// Which pass of `executor::calibrate::measure_busy_collectives` (`calibrate --rounds`)
    /// took it: each pass is fitted on its own.
    #[serde(default)]
    pub round: usize,
}

/// Each collective's busy-rank cost as `extra + skew · L`: per round and
/// compute length L, the median over sizes of `busy − compute alone − idle
/// collective` (medians), then the line through the two lengths (both
/// parts at least 0); with several rounds, the median of their extras and
/// of their skews (a two-point line on a noisy host swings between all
/// extra and all skew from one pass to the next).
pub fn busy_extras(idle: &[CollectiveSample], busy: &[BusySample]) -> Vec<BusyCollective> {
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
fn busy_line<'a>(idle: &[CollectiveSample], busy: impl Iterator<Item = &'a BusySample> + Clone) -> Option<(f64, f64)> {
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
fn ring_terms(op: Collective, n: usize) -> (f64, f64) {
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
pub fn fit_line(points: &[(f64, f64)]) -> Option<(f64, f64)> {
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
fn latency_bound_fit(xy: &[(f64, f64)]) -> (f64, f64) {
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

/// The machine as the OS describes it.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostInfo {
    pub cpu: String,
    pub cores: usize,
    pub memory_bytes: Option<u64>,
}

impl HostInfo {
    pub fn detect() -> HostInfo {
        let cpu = std::fs::read_to_string("/proc/cpuinfo")
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("model name")).and_then(|l| l.split_once(':')).map(|(_, v)| v.trim().to_string()))
            .unwrap_or_else(|| std::env::consts::ARCH.to_string());
        let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1);
        let memory_bytes = std::fs::read_to_string("/proc/meminfo").ok().and_then(|s| {
            let l = s.lines().find(|l| l.starts_with("MemTotal:"))?;
            let kb: u64 = l.split_whitespace().nth(1)?.parse().ok()?;
            Some(kb * 1024)
        });
        HostInfo { cpu, cores, memory_bytes }
    }
}

/// Everything measured, for the JSON report next to the profile.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CalibrationReport {
    pub host: HostInfo,
    pub quick: bool,
    pub compute: ComputeReport,
    pub collectives: Vec<CollectiveSample>,
    pub collective_fits: Vec<CollectiveFitReport>,
    /// Ranks the collectives ran over (0 = not measured).
    pub collective_world_size: usize,
    /// Whole blocks of a recipe's model (`--recipe`), per workload.
    #[serde(default)]
    pub blocks: Vec<BlockMeasurement>,
    /// Collectives right after compute on every rank.
    #[serde(default)]
    pub busy_collectives: Vec<BusySample>,
    /// Host-speed probes (`executor::speed_probe`) taken around the
    /// compute measurements and around each block workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<SpeedProbes>,
    /// The host and fixed costs measured again in rounds 2.. (`calibrate
    /// --rounds`; round 1 is in `compute`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_rounds: Vec<HostRound>,
    /// The data loader per crop set and round (`--recipe`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loader: Vec<LoaderMeasurement>,
}

/// The data loader timed at one crop set (`executor::data::time_batches`).
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct LoaderMeasurement {
    /// `Workload::crops_label`, e.g. `2x32+2x16`.
    pub crops: String,
    pub images_per_batch: usize,
    /// The image folder read.
    pub data: String,
    /// One batch on one worker thread.
    pub batch: Timing,
    /// Host-speed probe around it (mean of before and after).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_s: Option<f64>,
}

impl LoaderMeasurement {
    /// Expected time per image: batches differ by which images they crop
    /// (photos of different sizes), and a run pays the mean.
    pub fn image_s(&self) -> f64 {
        self.batch.expected_s / self.images_per_batch.max(1) as f64
    }
}

/// One later round's host and fixed costs, with the host-speed probe
/// around them.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct HostRound {
    pub host: HostMeasurement,
    pub fixed: Vec<FixedCost>,
    pub probe_s: Option<f64>,
}

/// Seconds per host-speed probe call, taken while the calibration ran.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct SpeedProbes {
    /// Mean of the probes just before and just after the op measurements.
    pub compute_s: f64,
    /// Every probe reading, in order.
    pub readings_s: Vec<f64>,
}

impl SpeedProbes {
    /// Records a reading (seconds per probe call) and returns the mean of
    /// it and the one before: the host's speed over what was measured in
    /// between.
    pub fn record(&mut self, now: f64) -> f64 {
        let mean = self.readings_s.last().map_or(now, |prev| 0.5 * (prev + now));
        self.readings_s.push(now);
        mean
    }

    /// The speed everything is normalised to: the median reading.
    pub fn reference_s(&self) -> f64 {
        median(self.readings_s.iter().copied().filter(|x| *x > 0.0).collect())
    }

    /// Factor that puts a time measured while the probe read `local_s` on
    /// the reference speed (1 when either is unknown).
    pub fn normaliser(&self, local_s: Option<f64>) -> f64 {
        match (self.reference_s(), local_s) {
            (r, Some(l)) if r > 0.0 && l > 0.0 => r / l,
            _ => 1.0,
        }
    }
}

fn op_fixed(fixed: &[FixedCost]) -> Vec<OpFixed> {
    fixed.iter().map(|f| OpFixed { kind: f.kind, forward: Seconds(sig(f.forward.median_s)), backward: Seconds(sig(f.backward_node_s)) }).collect()
}

/// The profile's host costs from one round of host measurements (four
/// significant digits).
pub fn host_costs(h: &HostMeasurement) -> HostCosts {
    let us = |s: f64| Seconds(sig(s));
    HostCosts {
        optimizer_norms_shard: h.optimizer.map(|o| us(o.norms_s)),
        optimizer_sgd_shard: h.optimizer.map(|o| us(o.sgd_s)),
        optimizer_adam_shard: h.optimizer.map(|o| us(o.adam_s)),
        param_leaf_unused: h.param_leaf_unused_s.map(us),
        ..HostCosts::new(us(h.small_op.median_s), us(h.param_view_forward_s), us(h.param_grad_s), us(h.backward_call_s))
    }
}

/// The median over rounds (each already on the reference speed) of every
/// host cost and of each kind's fixed costs. These are microseconds timed
/// in a fraction of a second, and one pass can land on a moment when a
/// shared host runs them several times slower, while a step pays them
/// thousands of times.
fn median_host_costs(rounds: &[Measured]) -> (Option<HostCosts>, Vec<OpFixed>) {
    let hosts: Vec<&HostCosts> = rounds.iter().filter_map(|m| m.host.as_ref()).collect();
    let of = |f: fn(&HostCosts) -> Seconds| Seconds(sig(median(hosts.iter().map(|h| f(h).0).collect())));
    // Rounds from an older report may lack the optimiser's costs.
    let of_some = |f: fn(&HostCosts) -> Option<Seconds>| {
        let v: Vec<f64> = hosts.iter().copied().filter_map(f).map(|s| s.0).collect();
        (!v.is_empty()).then(|| Seconds(sig(median(v))))
    };
    let host = (!hosts.is_empty()).then(|| HostCosts {
        small_op: of(|h| h.small_op),
        param_view_forward: of(|h| h.param_view_forward),
        param_grad: of(|h| h.param_grad),
        param_leaf_unused: of_some(|h| h.param_leaf_unused),
        backward_call: of(|h| h.backward_call),
        optimizer_norms_shard: of_some(|h| h.optimizer_norms_shard),
        optimizer_sgd_shard: of_some(|h| h.optimizer_sgd_shard),
        optimizer_adam_shard: of_some(|h| h.optimizer_adam_shard),
    });
    let fixed = rounds
        .first()
        .map_or(&[][..], |m| m.op_fixed.as_slice())
        .iter()
        .map(|first| {
            let same: Vec<&OpFixed> = rounds.iter().flat_map(|m| m.op_fixed.iter().filter(|x| x.kind == first.kind)).collect();
            OpFixed {
                kind: first.kind,
                forward: Seconds(sig(median(same.iter().map(|x| x.forward.0).collect()))),
                backward: Seconds(sig(median(same.iter().map(|x| x.backward.0).collect()))),
            }
        })
        .collect();
    (host, fixed)
}

/// One loader time per crop set: the median over rounds of the time per
/// image, each on the reference speed.
fn median_per_crops(loader: &[LoaderMeasurement], speed: &SpeedProbes) -> Vec<LoaderTime> {
    groups_by(loader, |m| m.crops.clone())
        .into_iter()
        .map(|g| {
            let same: Vec<f64> = g.iter().map(|x| x.image_s() * speed.normaliser(x.probe_s)).collect();
            LoaderTime { crops: g[0].crops.clone(), image: Seconds(sig(median(same))), data: Some(g[0].data.clone()) }
        })
        .collect()
}

/// `items` grouped by `key`, the groups in the order of their first item
/// (the rounds of one measurement, in the order the first round took them).
fn groups_by<T, K: PartialEq>(items: impl IntoIterator<Item = T>, key: impl Fn(&T) -> K) -> Vec<Vec<T>> {
    let mut groups: Vec<(K, Vec<T>)> = Vec::new();
    for t in items {
        let k = key(&t);
        match groups.iter_mut().find(|(gk, _)| *gk == k) {
            Some((_, g)) => g.push(t),
            None => groups.push((k, vec![t])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// One time per block key: the median of its rounds (`calibrate
/// --rounds`), each already on the reference speed. Rounds measure the same
/// workloads tens of seconds apart, so the median drops a round that a slow spell
/// of the host fell on; the backward's peak is deterministic, the max is
/// kept in case one round's kernels chose a larger workspace.
fn median_per_block(times: impl Iterator<Item = BlockTime>) -> Vec<BlockTime> {
    groups_by(times, |t| t.key.clone())
        .into_iter()
        .map(|g| {
            let of = |f: fn(&BlockTime) -> Seconds| Seconds(median(g.iter().map(|t| f(t).0).collect()));
            BlockTime {
                forward: of(|t| t.forward),
                forward_no_grad: of(|t| t.forward_no_grad),
                backward: of(|t| t.backward),
                backward_peak_bytes: g.iter().filter_map(|t| t.backward_peak_bytes).max(),
                ..g[0].clone()
            }
        })
        .collect()
}

impl CalibrationReport {
    /// Catalog entry `base` with the measured numbers: DRAM capacity and
    /// copy bandwidth replace the catalog's, the memory-bound efficiency and
    /// per-op overhead become the measured ones, and `[measured]` carries
    /// the achieved rates, effective bandwidth and collective fits.
    pub fn to_profile(&self, base: &HardwareSpec) -> Result<HardwareProfile, CalibrationError> {
        let c = &self.compute;
        let gpu = c.device != "cpu";
        let mut hw = base.clone();
        hw.name = if gpu {
            format!("{} — calibrated on {}", base.name, c.device)
        } else {
            format!("{} — calibrated, {} thread(s) per rank", base.name, c.threads)
        };
        // A GPU keeps its catalog capacity (the host's RAM is not its memory).
        if let (Some(m), false) = (self.host.memory_bytes, gpu) {
            hw.memory.capacity = Bytes(m >> 20 << 20);
        }
        hw.memory.bandwidth = Bandwidth(sig(c.copy.gb_s * 1e9));
        if let Some(e) = hw.efficiency.as_mut() {
            if let Some(mb) = c.memory_bound_gb_s {
                // Small BN/elementwise tensors live in cache, so this can pass 1.
                e.memory_bound = sig((mb / c.copy.gb_s).clamp(1e-3, 1.0));
            }
            e.kernel_overhead = Seconds(sig(c.op_overhead.median_s));
        }
        // The links as the catalog describes them, made consistent with the
        // all-gather fit (FSDP's main collective), for code that reads the
        // spec rather than the fits.
        if let Some(ag) = self.collective_fits.iter().find(|f| f.fit.collective == Collective::AllGather) {
            hw.interconnect.nvlink_latency = Seconds(sig(ag.fit.alpha.0));
            hw.interconnect.nvlink_bidirectional = Bandwidth(sig(2.0 * ag.fit.bus_bandwidth.0));
            hw.interconnect.nvlink_efficiency = 1.0;
        }
        hw.source = Some(format!(
            "seerscale calibrate on {} ({} cores); catalog entry `{}` with measured memory and overhead{}",
            self.host.cpu,
            self.host.cores,
            base.id,
            base.source.as_deref().map(|s| format!("; catalog: {s}")).unwrap_or_default()
        ));
        let speed = self.speed.clone().unwrap_or_default();
        let mut measured = Measured {
            source: Some(if gpu {
                format!(
                    "seerscale calibrate --device {}{}: host issue and fixed costs of the executor's ops and whole blocks on the GPU, medians over repeats; kernels otherwise from the catalog's kernel model",
                    c.device,
                    if self.quick { " --quick" } else { "" }
                )
            } else {
                format!(
                    "seerscale calibrate{}: {} threads, medians over repeats; collectives over {} Gloo ranks on 127.0.0.1",
                    if self.quick { " --quick" } else { "" },
                    c.threads,
                    self.collective_world_size
                )
            }),
            threads_per_rank: Some(c.threads),
            host_cores: Some(self.host.cores),
            memory_bandwidth: c.memory_bound_gb_s.map(|g| Bandwidth(sig(g * 1e9))),
            kernel_overhead: Some(Seconds(sig(c.op_overhead.median_s))),
            op_throughput: c.rates.iter().map(|r| OpThroughput { kind: r.kind, dtype: r.dtype, rate: FlopRate(sig(r.tflops * 1e12)) }).collect(),
            collectives: CollectiveProfile::default(),
            op_fixed: op_fixed(&c.fixed),
            host: c.host.as_ref().map(host_costs),
            block_times: Vec::new(),
            speed_probe: None,
            loader: Vec::new(),
        }
        // Op measurements and each block workload were taken at their own
        // host speed: put them all on the reference speed.
        .slowed_by(speed.normaliser(Some(speed.compute_s)));
        if gpu {
            // No op rates are measured on a GPU: the large copy is what the
            // optimiser's and the loss's streaming passes reach, at the
            // device's speed, not the host's.
            measured.memory_bandwidth = Some(Bandwidth(sig(c.copy.gb_s * 1e9)));
        }
        if !self.host_rounds.is_empty() {
            let rounds: Vec<Measured> = std::iter::once(measured.clone())
                .chain(self.host_rounds.iter().map(|r| {
                    Measured { op_fixed: op_fixed(&r.fixed), host: Some(host_costs(&r.host)), ..Measured::default() }.slowed_by(speed.normaliser(r.probe_s))
                }))
                .collect();
            (measured.host, measured.op_fixed) = median_host_costs(&rounds);
        }
        measured.block_times = median_per_block(self.blocks.iter().map(|b| b.to_block_time().slowed_by(speed.normaliser(b.probe_s))));
        measured.collectives = CollectiveProfile {
            fits: self
                .collective_fits
                .iter()
                .map(|f| CollectiveFit { alpha: Seconds(sig(f.fit.alpha.0)), bus_bandwidth: Bandwidth(sig(f.fit.bus_bandwidth.0)), ..f.fit.clone() })
                .collect(),
            busy: busy_extras(&self.collectives, &self.busy_collectives),
        };
        measured.loader = median_per_crops(&self.loader, &speed);
        measured.speed_probe = (speed.reference_s() > 0.0).then(|| Seconds(sig(speed.reference_s())));
        let p = HardwareProfile { hardware: hw, measured };
        p.validate().map_err(|(field, reason)| CalibrationError::Invalid { field, reason })?;
        Ok(p)
    }

    /// What was measured, in a few lines: the host, the compute rates, the
    /// collectives, the blocks and the loader (`summary` has every number).
    pub fn brief(&self) -> Vec<String> {
        let c = &self.compute;
        let mut l = vec![format!(
            "host: {} ({} cores), {} intra-op thread(s); per-op overhead {:.2} µs, copies {:.1} GB/s",
            self.host.cpu,
            self.host.cores,
            c.threads,
            c.op_overhead.median_s * 1e6,
            c.copy.gb_s
        )];
        if !c.rates.is_empty() {
            let rates: Vec<String> = c.rates.iter().map(|r| format!("{:?} {:.1} ({})", r.kind, r.tflops * 1e3, r.dtype)).collect();
            l.push(format!("compute, GFLOP/s: {}", rates.join(", ")));
        }
        if !self.collective_fits.is_empty() {
            let kinds: Vec<String> = self.collective_fits.iter().map(|f| format!("{:?}", f.fit.collective)).collect();
            l.push(format!("collectives over {} ranks fitted: {}", self.collective_world_size, kinds.join(", ")));
        }
        if !self.blocks.is_empty() {
            l.push(format!("{} block workload(s) timed through the executor's block code", self.blocks.len()));
        }
        for m in &self.loader {
            l.push(format!("data loader at {}: {:.1} µs per image", m.crops, m.image_s() * 1e6));
        }
        l
    }

    /// Human summary, also written as comments at the top of the TOML.
    pub fn summary(&self) -> Vec<String> {
        let c = &self.compute;
        let mut l = vec![
            format!("host: {} ({} cores), {} intra-op thread(s)", self.host.cpu, self.host.cores, c.threads),
            format!("per-op overhead: {:.2} µs ±{:.0} %", c.op_overhead.median_s * 1e6, 100.0 * c.op_overhead.noise()),
            format!("copy bandwidth ({} MiB): {:.1} GB/s ±{:.0} %", c.copy.bytes >> 20, c.copy.gb_s, 100.0 * c.copy.timing.noise()),
        ];
        if let Some(mb) = c.memory_bound_gb_s {
            l.push(format!("memory-bound ops (BN/elementwise/pool, graph byte count): {mb:.1} GB/s"));
        }
        for r in &c.rates {
            l.push(format!(
                "rate {:?} {}: {:.1} GFLOP/s over {} shape(s), fwd+bwd ({:.0} % of time was per-op overhead)",
                r.kind,
                r.dtype,
                r.tflops * 1e3,
                r.shapes,
                100.0 * r.overhead_share
            ));
        }
        for m in &c.ops {
            let (tf, tb) = m.tflops();
            let (gf, gb) = m.gb_s();
            let what = if m.flops_fwd > 0.0 { format!("{:.1}/{:.1} GFLOP/s", tf * 1e3, tb * 1e3) } else { format!("{gf:.1}/{gb:.1} GB/s") };
            l.push(format!(
                "  {} {}: fwd {:.1} µs ±{:.0} %, bwd {:.1} µs ±{:.0} % ({what} fwd/bwd)",
                m.dtype,
                m.label,
                m.forward.median_s * 1e6,
                100.0 * m.forward.noise(),
                m.backward.median_s * 1e6,
                100.0 * m.backward.noise()
            ));
        }
        for s in &c.skipped {
            l.push(format!("skipped {s}"));
        }
        for f in &self.collective_fits {
            l.push(format!(
                "{:?} over {} ranks: alpha {:.1} µs/step, bus bandwidth {:.2} GB/s (fit rms error {:.0} % over {} sizes)",
                f.fit.collective,
                self.collective_world_size,
                f.fit.alpha.0 * 1e6,
                f.fit.bus_bandwidth.0 / 1e9,
                100.0 * f.rms_rel_error,
                f.points
            ));
        }
        for b in busy_extras(&self.collectives, &self.busy_collectives) {
            l.push(format!(
                "{:?} over {} busy ranks: +{:.1} µs + {:.1} % of the compute since the last collective, over idle ranks",
                b.collective,
                b.world_size,
                b.extra.0 * 1e6,
                100.0 * b.skew
            ));
        }
        for s in &self.busy_collectives {
            l.push(format!(
                "  {:?} {} KiB after {:.0} µs of compute: {:.1} µs ±{:.0} %",
                s.collective,
                s.bytes >> 10,
                s.compute.median_s * 1e6,
                s.busy.median_s * 1e6,
                100.0 * s.busy.noise()
            ));
        }
        for b in &self.blocks {
            l.push(format!("block {}", b.summary()));
        }
        for m in &self.loader {
            l.push(format!(
                "loader {} ({} images a batch, one worker, {}): {:.1} µs per image ±{:.0} %",
                m.crops,
                m.images_per_batch,
                m.data,
                m.image_s() * 1e6,
                100.0 * m.batch.noise()
            ));
        }
        for s in &self.collectives {
            l.push(format!(
                "  {:?} {} KiB: median {:.1} µs ±{:.0} %, expected {:.1} µs (fitted)",
                s.collective,
                s.bytes >> 10,
                s.timing.median_s * 1e6,
                100.0 * s.timing.noise(),
                s.timing.expected_s * 1e6
            ));
        }
        let noise: Vec<f64> =
            c.ops.iter().flat_map(|m| [m.forward.noise(), m.backward.noise()]).chain(self.collectives.iter().map(|s| s.timing.noise())).collect();
        if !noise.is_empty() {
            let mut n = noise.clone();
            n.sort_by(|a, b| a.total_cmp(b));
            l.push(format!("noise (half p10..p90 spread / median): median ±{:.0} %, worst ±{:.0} %", 100.0 * quantile(&n, 0.5), 100.0 * n[n.len() - 1]));
        }
        l
    }

    /// The profile as TOML, with the summary as comments on top.
    pub fn profile_toml(&self, base: &HardwareSpec) -> Result<String, CalibrationError> {
        let p = self.to_profile(base)?;
        let mut s = String::from("# Written by `seerscale calibrate`; measured numbers are in [measured].\n");
        for l in self.summary() {
            s.push_str("# ");
            s.push_str(&l);
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&p.to_toml_string()?);
        Ok(s)
    }
}

/// One block measured at one workload.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct BlockMeasurement {
    pub block: String,
    /// `ModelGraph::block_key` of the block at this workload.
    pub key: String,
    pub label: String,
    pub forward: Timing,
    pub forward_no_grad: Timing,
    /// Forward + backward; backward alone is the difference of medians.
    pub forward_backward: Timing,
    /// Peak bytes the backward allocated above what was held before it
    /// (counting CPU allocator, or the CUDA caching allocator's
    /// statistics; deterministic, measured once).
    pub backward_peak_bytes: u64,
    /// Bytes the forward with autograd left allocated besides its outputs'
    /// first use: what the block saves for backward, outputs included
    /// (absent in reports from before it was measured).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub forward_saved_bytes: Option<u64>,
    /// Host-speed probe (`executor::speed_probe`) around this workload's
    /// measurements (mean of before and after), seconds per probe call.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_s: Option<f64>,
}

impl BlockMeasurement {
    pub fn backward_s(&self) -> f64 {
        // Medians of two noisy measurements: never let noise make it negative.
        (self.forward_backward.median_s - self.forward.median_s).max(0.05 * self.forward_backward.median_s)
    }

    /// One line for people: label, forward (with noise), no-grad forward, backward.
    pub fn summary(&self) -> String {
        format!(
            "{}: fwd {:.1} µs ±{:.0} % (no grad {:.1}), bwd {:.1} µs, backward peak +{:.1} KiB",
            self.label,
            self.forward.median_s * 1e6,
            100.0 * self.forward.noise(),
            self.forward_no_grad.median_s * 1e6,
            self.backward_s() * 1e6,
            self.backward_peak_bytes as f64 / 1024.0
        )
    }

    pub fn to_block_time(&self) -> BlockTime {
        BlockTime {
            key: self.key.clone(),
            label: self.label.clone(),
            forward: Seconds(self.forward.median_s),
            forward_no_grad: Seconds(self.forward_no_grad.median_s),
            backward: Seconds(self.backward_s()),
            backward_peak_bytes: Some(self.backward_peak_bytes),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
