//! What calibrate measured: timings of ops, host costs, collectives, the
//! loader and blocks, as the executor records them.

use crate::collectives::Collective;
use crate::compute::OpKind;
use crate::hardware::BlockTime;
use crate::stats::{mean_without_slowest, median, quantile};
use crate::{DType, Seconds};
use serde::{Deserialize, Serialize};

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

/// Large copy (read + write): the DRAM bandwidth memory-bound ops can reach.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CopyBandwidth {
    pub bytes: u64,
    pub timing: Timing,
    pub gb_s: f64,
}

pub(super) fn cpu_device() -> String {
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
