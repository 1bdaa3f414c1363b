//! Time of one op on one device.
//!
//! A GPU with a kernel model (`[kernels]`, [`crate::kernels`]) times each
//! layer from its shapes: implicit GEMMs per math path, tile and wave
//! quantisation, memory-bound passes. Otherwise (CPUs, and profiles with
//! measured op rates) a roofline plus a fixed per-kernel cost:
//!
//!   time = max(flops / (peak(dtype, unit) · eff(kind)),
//!              bytes / (hbm_bw · eff_mem)) + kernels · kernel_overhead
//!
//! `eff(kind)` is separate for dense convs, grouped convs and matmuls:
//! cuDNN's grouped-conv kernels run narrow per-group GEMMs and reach a
//! visibly smaller fraction of tensor-core peak than dense convs of the same
//! FLOPs, and RegNet-Y's 3x3 convs are grouped whenever the bottleneck is
//! wider than the group width. A calibration profile replaces `peak · eff`
//! with a measured rate per (kind, dtype) and `hbm_bw · eff_mem` with a
//! measured bandwidth.

use crate::graph::{Layer, LayerKind};
use crate::hardware::{BlockTime, HardwareProfile, HardwareSpec, HostCosts, MathUnit, Measured};
use crate::kernels::KernelModel;
use crate::quantity::{Bandwidth, Bytes, DType, FlopRate, Flops, Seconds};
use serde::{Deserialize, Serialize};
use std::collections::HashMap;

/// Class of op, as far as speed is concerned.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OpKind {
    /// Dense convolution (groups = 1).
    Conv,
    /// Convolution with groups > 1.
    GroupedConv,
    /// Linear / GEMM.
    Matmul,
    /// BatchNorm (and other normalisations).
    Norm,
    /// ReLU, sigmoid, add, multiply, L2 normalise.
    Elementwise,
    /// Pooling and other reductions.
    Reduction,
}

impl OpKind {
    pub const ALL: [OpKind; 6] = [OpKind::Conv, OpKind::GroupedConv, OpKind::Matmul, OpKind::Norm, OpKind::Elementwise, OpKind::Reduction];

    fn unit(self) -> MathUnit {
        match self {
            OpKind::Conv | OpKind::GroupedConv => MathUnit::Conv,
            OpKind::Matmul => MathUnit::Matmul,
            OpKind::Norm | OpKind::Elementwise | OpKind::Reduction => MathUnit::Vector,
        }
    }
}

/// Forward or backward pass of a layer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pass {
    Forward,
    Backward,
}

/// What the compute model needs to know about one op.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct OpDesc {
    pub kind: OpKind,
    pub flops: Flops,
    /// Bytes read + written from device memory.
    pub bytes: Bytes,
    pub dtype: DType,
    /// Kernels launched (each pays the fixed overhead).
    pub kernels: u32,
}

impl OpDesc {
    pub fn new(kind: OpKind, flops: Flops, bytes: Bytes, dtype: DType) -> OpDesc {
        OpDesc { kind, flops, bytes, dtype, kernels: 1 }
    }

    /// The op a graph layer runs in `pass`; `None` for the input
    /// placeholder (no kernel).
    ///
    /// Bytes: the graph's activation traffic (`io_bytes`) plus, for convs and
    /// linears, one read of the weights (in the layer's dtype, as FSDP mixed
    /// precision computes). Backward is modelled as twice the forward
    /// traffic (reads grad-out and the saved input, writes grad-in; weight
    /// grads add a weight-sized write) and as two kernels for convs/linears
    /// that need an input gradient (dgrad + wgrad), one otherwise.
    pub fn from_layer(layer: &Layer, pass: Pass) -> Option<OpDesc> {
        let d = layer.dtype.size();
        let (kind, weights) = match &layer.kind {
            LayerKind::Input => return None,
            LayerKind::Conv { kernel, groups, .. } => {
                let cin = layer.in_shape[1];
                let cout = layer.out_shape[1];
                let g = (*groups).max(1);
                let kind = if g > 1 { OpKind::GroupedConv } else { OpKind::Conv };
                (kind, cout * (cin / g) * kernel * kernel)
            }
            LayerKind::Linear { .. } => (OpKind::Matmul, layer.in_shape[1] * layer.out_shape[1]),
            LayerKind::BatchNorm => (OpKind::Norm, 0),
            LayerKind::Relu | LayerKind::Sigmoid | LayerKind::Mul | LayerKind::Add | LayerKind::Normalize => (OpKind::Elementwise, 0),
            LayerKind::AvgPool => (OpKind::Reduction, 0),
        };
        let fwd_bytes = layer.io_bytes + Bytes(weights * d);
        Some(match pass {
            Pass::Forward => OpDesc { kind, flops: layer.fwd_flops, bytes: fwd_bytes, dtype: layer.dtype, kernels: 1 },
            Pass::Backward => {
                let gemm = matches!(kind, OpKind::Conv | OpKind::GroupedConv | OpKind::Matmul);
                // bwd_flops = 2 x fwd when the input gradient is computed.
                let two = gemm && layer.bwd_flops.0 > 1.5 * layer.fwd_flops.0;
                OpDesc { kind, flops: layer.bwd_flops, bytes: fwd_bytes * 2, dtype: layer.dtype, kernels: if two { 2 } else { 1 } }
            }
        })
    }
}

/// Which roofline term set the time.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Bound {
    Compute,
    Memory,
}

/// Predicted time of one op, with its parts.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct OpTime {
    pub time: Seconds,
    pub compute: Seconds,
    pub memory: Seconds,
    pub overhead: Seconds,
    pub bound: Bound,
}

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ComputeError {
    #[error("{hardware} cannot run {dtype} ({what}); choose another precision")]
    UnsupportedDType { hardware: String, dtype: DType, what: &'static str },
}

/// Rates resolved once per device so per-layer queries are cheap.
#[derive(Clone, Debug)]
pub struct ComputeModel {
    hardware: String,
    /// Achieved FLOP/s per (kind, dtype); `None` = dtype unsupported.
    rates: Vec<(OpKind, DType, Option<FlopRate>)>,
    memory_bandwidth: Bandwidth,
    kernel_overhead: Seconds,
    /// Measured fixed cost per (kind) for (forward, backward); `None` =
    /// `kernel_overhead x kernels`.
    fixed: [Option<(Seconds, Seconds)>; 6],
    host: Option<HostCosts>,
    /// Measured whole-block times by `ModelGraph::block_key`.
    blocks: HashMap<String, BlockTime>,
    /// Measured data-loader CPU time per image, by crop set.
    loader: HashMap<String, Seconds>,
    /// The GPU kernel model, used for graph layers unless the profile
    /// measured op rates.
    kernels: Option<KernelModel>,
}

const DTYPES: [DType; 3] = [DType::Fp32, DType::Fp16, DType::Bf16];

impl ComputeModel {
    pub fn from_spec(spec: &HardwareSpec) -> ComputeModel {
        ComputeModel::with_measured(spec, &Measured::default())
    }

    pub fn new(profile: &HardwareProfile) -> ComputeModel {
        ComputeModel::with_measured(&profile.hardware, &profile.measured)
    }

    fn with_measured(spec: &HardwareSpec, m: &Measured) -> ComputeModel {
        let kernels = if m.op_throughput.is_empty() { KernelModel::new(spec) } else { None };
        // The roofline's fractions of peak: the spec's, or for a GPU
        // described by its kernel model, its large-GEMM efficiencies.
        let e = spec.efficiency.clone().unwrap_or_else(|| {
            let k = spec.kernels.as_ref().expect("validated: a spec has [efficiency] or [kernels]");
            crate::hardware::EfficiencySpec {
                matmul: k.tensor_efficiency,
                conv: k.tensor_efficiency,
                grouped_conv: k.tensor_efficiency,
                memory_bound: k.memory_efficiency,
                kernel_overhead: k.launch,
            }
        });
        let mut rates = Vec::with_capacity(OpKind::ALL.len() * DTYPES.len());
        for kind in OpKind::ALL {
            for dtype in DTYPES {
                let measured = m.op_throughput.iter().find(|t| t.kind == kind && t.dtype == dtype).map(|t| t.rate);
                let rate = if !spec.supports(dtype) {
                    None
                } else if measured.is_some() {
                    measured
                } else {
                    let eff = match kind {
                        OpKind::Conv => e.conv,
                        OpKind::GroupedConv => e.grouped_conv,
                        OpKind::Matmul => e.matmul,
                        // Vector ops: memory-bound; their FLOPs only matter
                        // as a sanity bound, at full vector rate.
                        OpKind::Norm | OpKind::Elementwise | OpKind::Reduction => 1.0,
                    };
                    spec.peak(dtype, kind.unit()).map(|p| FlopRate(p.0 * eff))
                };
                rates.push((kind, dtype, rate));
            }
        }
        let mut fixed = [None; 6];
        for (i, kind) in OpKind::ALL.iter().enumerate() {
            fixed[i] = m.op_fixed.iter().find(|f| f.kind == *kind).map(|f| (f.forward, f.backward));
        }
        ComputeModel {
            hardware: spec.id.clone(),
            rates,
            memory_bandwidth: m.memory_bandwidth.unwrap_or(Bandwidth(spec.hbm_bandwidth().0 * e.memory_bound)),
            kernel_overhead: m.kernel_overhead.unwrap_or(e.kernel_overhead),
            fixed,
            host: m.host,
            blocks: m.block_times.iter().map(|b| (b.key.clone(), b.clone())).collect(),
            loader: m.loader.iter().map(|l| (l.crops.clone(), l.image)).collect(),
            kernels,
        }
    }

    /// The GPU kernel model graph layers are timed with, if any.
    pub fn kernel_model(&self) -> Option<&KernelModel> {
        self.kernels.as_ref()
    }

    /// Achieved FLOP/s for `kind` in `dtype`.
    pub fn rate(&self, kind: OpKind, dtype: DType) -> Result<FlopRate, ComputeError> {
        self.rates.iter().find(|(k, d, _)| *k == kind && *d == dtype).and_then(|(_, _, r)| *r).ok_or(ComputeError::UnsupportedDType {
            hardware: self.hardware.clone(),
            dtype,
            what: "no peak rate in the hardware spec",
        })
    }

    /// Achieved memory bandwidth.
    pub fn memory_bandwidth(&self) -> Bandwidth {
        self.memory_bandwidth
    }

    pub fn kernel_overhead(&self) -> Seconds {
        self.kernel_overhead
    }

    /// Host-side bookkeeping costs, when measured (calibrated profiles).
    pub fn host(&self) -> Option<&HostCosts> {
        self.host.as_ref()
    }

    /// Whether the profile has any measured block times.
    pub fn has_block_times(&self) -> bool {
        !self.blocks.is_empty()
    }

    /// The measured time of a block with this `ModelGraph::block_key`, if
    /// the profile has one.
    pub fn block_time(&self, key: &str) -> Option<&BlockTime> {
        self.blocks.get(key)
    }

    /// The data loader's CPU time per image at this crop set
    /// (`Workload::crops_label`), if measured.
    pub fn loader_image(&self, crops: &str) -> Option<Seconds> {
        self.loader.get(crops).copied()
    }

    /// Cost of `n` small bookkeeping ops (zero unless measured: on a GPU the
    /// host issues them ahead of the device stream).
    pub fn small_ops(&self, n: f64) -> Seconds {
        self.host.map_or(Seconds(0.0), |h| h.small_op * n)
    }

    /// Fixed cost of one op of `kind` in `pass` launching `kernels` kernels:
    /// the measured per-kind cost, else `kernel_overhead x kernels`.
    pub fn fixed_cost(&self, kind: OpKind, pass: Pass, kernels: u32) -> Seconds {
        let i = OpKind::ALL.iter().position(|k| *k == kind).unwrap_or(0);
        match (self.fixed[i], pass) {
            (Some((f, _)), Pass::Forward) => f,
            (Some((_, b)), Pass::Backward) => b,
            (None, _) => self.kernel_overhead * kernels as f64,
        }
    }

    /// Roofline time of one op (fixed part: `kernel_overhead x kernels`).
    pub fn op_time(&self, op: &OpDesc) -> Result<OpTime, ComputeError> {
        self.roofline(op, self.kernel_overhead * op.kernels as f64)
    }

    /// Roofline time of one op in `pass`, with the measured per-kind fixed
    /// cost when the profile has one.
    pub fn op_time_in(&self, op: &OpDesc, pass: Pass) -> Result<OpTime, ComputeError> {
        self.roofline(op, self.fixed_cost(op.kind, pass, op.kernels))
    }

    fn roofline(&self, op: &OpDesc, overhead: Seconds) -> Result<OpTime, ComputeError> {
        let rate = self.rate(op.kind, op.dtype)?;
        let compute = op.flops / rate;
        let memory = op.bytes / self.memory_bandwidth;
        let bound = if compute >= memory { Bound::Compute } else { Bound::Memory };
        Ok(OpTime { time: compute.max(memory) + overhead, compute, memory, overhead, bound })
    }

    /// Time of a graph layer in one pass (zero for the input placeholder).
    /// With a kernel model: the kernels' time from the layer's shapes, or
    /// the measured per-op fixed cost when that is longer (a host that
    /// issues ops slower than the GPU runs them sets the pace).
    pub fn layer_time(&self, layer: &Layer, pass: Pass) -> Result<Seconds, ComputeError> {
        let Some(op) = OpDesc::from_layer(layer, pass) else { return Ok(Seconds(0.0)) };
        match &self.kernels {
            Some(k) => {
                // Unsupported dtypes are refused the same way either path.
                self.rate(op.kind, op.dtype)?;
                let device = match pass {
                    Pass::Forward => k.forward(layer),
                    Pass::Backward => k.backward(layer),
                };
                let i = OpKind::ALL.iter().position(|x| *x == op.kind).unwrap_or(0);
                let host = match (self.fixed[i], pass) {
                    (Some((f, _)), Pass::Forward) => f,
                    (Some((_, b)), Pass::Backward) => b,
                    (None, _) => Seconds(0.0),
                };
                Ok(device.max(host))
            }
            None => Ok(self.op_time_in(&op, pass)?.time),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::{builtin_hardware, OpThroughput};

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs()
    }

    /// A 1x1 conv layer 1024 -> 1024 channels on 16x1024x28x28.
    fn big_conv(dtype: DType) -> Layer {
        let macs = 16.0 * 784.0 * 1024.0 * 1024.0;
        Layer {
            name: "c".into(),
            block: 0,
            kind: LayerKind::Conv { kernel: 1, stride: 1, groups: 1, bias: false },
            in_shape: [16, 1024, 28, 28],
            out_shape: [16, 1024, 28, 28],
            params: vec![],
            fwd_flops: Flops(2.0 * macs),
            bwd_flops: Flops(4.0 * macs),
            saved: Bytes::ZERO,
            io_bytes: Bytes(2 * 16 * 1024 * 784 * dtype.size()),
            dtype,
        }
    }

    #[test]
    fn gpu_layers_are_timed_by_the_kernel_model() {
        let hw = builtin_hardware("a100-40gb").unwrap();
        let m = ComputeModel::from_spec(&hw);
        let k = m.kernel_model().expect("GPU catalog entries carry [kernels]");
        let l = big_conv(DType::Fp16);
        assert_eq!(m.layer_time(&l, Pass::Forward).unwrap(), k.forward(&l));
        assert_eq!(m.layer_time(&l, Pass::Backward).unwrap(), k.backward(&l));
        // Compute-bound on tensor cores: close to FLOPs at the fitted fraction of peak.
        let ideal = l.fwd_flops.0 / (312e12 * hw.kernels.as_ref().unwrap().tensor_efficiency);
        let t = k.forward(&l).0;
        assert!(t >= ideal && t < 1.3 * ideal, "{t} vs {ideal}");
    }

    #[test]
    fn measured_op_rates_keep_the_roofline_on_a_gpu() {
        let mut p = HardwareProfile::from_spec(builtin_hardware("h100-80gb").unwrap());
        p.measured.op_throughput.push(OpThroughput { kind: OpKind::Conv, dtype: DType::Fp16, rate: FlopRate(100e12) });
        let m = ComputeModel::new(&p);
        assert!(m.kernel_model().is_none());
        let l = big_conv(DType::Fp16);
        let t = m.layer_time(&l, Pass::Forward).unwrap().0;
        assert!(rel(t, l.fwd_flops.0 / 100e12 + m.kernel_overhead().0) < 1e-9, "{t}");
    }

    #[test]
    fn cpu_batchnorm_is_memory_bound_on_the_roofline() {
        let hw = builtin_hardware("cpu-local").unwrap();
        let e = hw.efficiency.clone().unwrap();
        let m = ComputeModel::from_spec(&hw);
        let elems = 16.0 * 256.0 * 56.0 * 56.0;
        let op = OpDesc::new(OpKind::Norm, Flops(10.0 * elems), Bytes((4.0 * elems) as u64), DType::Fp32);
        let t = m.op_time(&op).unwrap();
        assert_eq!(t.bound, Bound::Memory);
        let want = 4.0 * elems / (hw.memory.bandwidth.0 * e.memory_bound) + e.kernel_overhead.0;
        assert!(rel(t.time.0, want) < 1e-12);
    }

    #[test]
    fn unaligned_grouped_convs_are_slower_than_aligned_ones() {
        let m = ComputeModel::from_spec(&builtin_hardware("a100-80gb").unwrap());
        let grouped = |c: u64, g: u64| {
            let mut l = big_conv(DType::Bf16);
            l.kind = LayerKind::Conv { kernel: 3, stride: 1, groups: g, bias: false };
            l.in_shape[1] = c;
            l.out_shape[1] = c;
            m.layer_time(&l, Pass::Forward).unwrap().0 / (c * c / g) as f64
        };
        // Per unit of work: 1010 channels per group cost more than 1008.
        assert!(grouped(11110, 11) > 1.3 * grouped(11088, 11));
    }

    #[test]
    fn unsupported_dtype_is_an_error() {
        let m = ComputeModel::from_spec(&builtin_hardware("v100-32gb").unwrap());
        let e = m.op_time(&OpDesc::new(OpKind::Conv, Flops(1e9), Bytes(0), DType::Bf16)).unwrap_err();
        assert!(e.to_string().contains("v100-32gb") && e.to_string().contains("bf16"), "{e}");
    }

    #[test]
    fn measured_rates_override_peak_times_efficiency() {
        let mut p = HardwareProfile::from_spec(builtin_hardware("cpu-local").unwrap());
        p.measured.op_throughput.push(OpThroughput { kind: OpKind::Conv, dtype: DType::Fp32, rate: FlopRate(50e9) });
        p.measured.memory_bandwidth = Some(Bandwidth(8e9));
        p.measured.kernel_overhead = Some(Seconds(0.0));
        let m = ComputeModel::new(&p);
        let t = m.op_time(&OpDesc::new(OpKind::Conv, Flops(1e9), Bytes(1000), DType::Fp32)).unwrap();
        assert!(rel(t.time.0, 1e9 / 50e9) < 1e-12);
        let t = m.op_time(&OpDesc::new(OpKind::Elementwise, Flops(1e3), Bytes(8_000_000), DType::Fp32)).unwrap();
        assert!(rel(t.time.0, 1e-3) < 1e-12);
        // Unmeasured kinds keep catalog peak x efficiency.
        let hw = &p.hardware;
        let e = hw.efficiency.clone().unwrap();
        assert!(rel(m.rate(OpKind::Matmul, DType::Fp32).unwrap().0, hw.compute.fp32.0 * e.matmul) < 1e-12);
    }

    #[test]
    fn graph_layers_map_to_ops() {
        use crate::config::ModelConfig;
        use crate::graph::{ModelGraph, Workload};
        let model = ModelConfig::load("regnety-16gf").unwrap();
        let g = ModelGraph::build(&model, &Workload::single(16, 224, DType::Fp16));
        let m = ComputeModel::from_spec(&builtin_hardware("a100-40gb").unwrap());
        let mut kinds = std::collections::BTreeSet::new();
        let mut fwd = Seconds(0.0);
        let mut bwd = Seconds(0.0);
        for l in g.graph.node_weights() {
            if let Some(op) = OpDesc::from_layer(l, Pass::Forward) {
                kinds.insert(format!("{:?}", op.kind));
                assert_eq!(op.flops, l.fwd_flops);
            }
            fwd += m.layer_time(l, Pass::Forward).unwrap();
            bwd += m.layer_time(l, Pass::Backward).unwrap();
        }
        for k in ["Conv", "GroupedConv", "Matmul", "Norm", "Elementwise", "Reduction"] {
            assert!(kinds.contains(k), "no {k} layer in {kinds:?}");
        }
        // RegNetY-16GF forward at 16 images: ~16 x 2 x 15.9 GFLOP = 0.5 TFLOP;
        // at 312 TFLOP/s x ~0.5 that is a few ms; backward costs more.
        assert!(fwd.0 > 2e-3 && fwd.0 < 50e-3, "fwd {fwd}");
        assert!(bwd > fwd, "bwd {bwd} fwd {fwd}");
    }
}
