//! GPU kernel times from op shapes: what the cuDNN / cuBLAS kernels of one
//! graph layer take on one GPU architecture.
//!
//! Convolutions run as the implicit GEMMs cuDNN launches, one per group:
//!
//! | pass    | M           | N            | K            |
//! |---------|-------------|--------------|--------------|
//! | forward | N·Ho·Wo     | Cout/g       | Cin/g·kh·kw  |
//! | dgrad   | N·Hi·Wi     | Cin/g        | Cout/g·kh·kw |
//! | wgrad   | Cout/g      | Cin/g·kh·kw  | N·Ho·Wo      |
//!
//! and linears likewise (H = W = 1, one group). Each GEMM runs on the math
//! path its dtype and channels allow — tensor cores for fp16/bf16 (and fp32
//! convolutions as TF32 where PyTorch's defaults allow it) when the
//! channels per group are aligned, CUDA cores otherwise — and with the tile
//! that finishes first: the groups' tiles are spread over the SMs in waves,
//! each tile costs its `2·tm·tn·(K + k0)` FLOPs at one SM's share of the
//! path's peak times the path's efficiency (`k0` is the per-tile fixed work
//! of filling and draining the pipeline), and a GEMM whose tiles do not
//! fill the SMs splits K, paying the partial sums' traffic. A GEMM takes the
//! larger of that and its bytes at achieved bandwidth, plus one launch.
//!
//! Memory-bound ops (BN, ReLU, the SE scaling, residual adds, pooling, the
//! loss) move a fixed number of activation-sized passes per op and pass at
//! achieved bandwidth, plus their launches.
//!
//! The per-architecture parameters ([`KernelSpec`], a GPU's `[kernels]`
//! table) are fitted to public timings by `seerscale accuracy --fit`; the
//! datasheet numbers (SMs, peaks, bandwidth) stay datasheet numbers.

use crate::graph::{Layer, LayerKind};
use crate::hardware::HardwareSpec;
use crate::quantity::{Bytes, DType, FlopRate, Seconds};
use serde::{Deserialize, Serialize};

/// Per-architecture parameters of the kernel model (a GPU's `[kernels]`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KernelSpec {
    /// `volta`, `ampere` or `hopper`: which family's fitted numbers these are.
    pub architecture: String,
    /// Streaming multiprocessors (datasheet).
    pub sms: u32,
    /// Fraction of the tensor-core peak a large aligned GEMM tile reaches.
    pub tensor_efficiency: f64,
    /// Fraction of the fp32 CUDA-core peak a large GEMM tile reaches.
    pub cuda_efficiency: f64,
    /// Per-tile fixed work, in elements of the reduction dimension K.
    pub k_overhead: f64,
    /// Speed-up of fp32 3x3 stride-1 convolutions on CUDA cores, forward
    /// and data gradient, from Winograd's transform (fewer multiplies than the
    /// GEMM's count), which cuDNN's autotuner picks there; 1 = none.
    pub winograd_speedup: f64,
    /// Efficiency of the backward GEMMs (data and weight gradients)
    /// relative to the forward's: their kernels read a transposed filter
    /// or reduce over the whole batch, and reach less of the peak.
    pub backward_efficiency: f64,
    /// Fraction of the memory bandwidth memory-bound kernels reach.
    pub memory_efficiency: f64,
    /// Tensor-core efficiency of GEMMs whose channels per group are not a
    /// multiple of 8 (16-bit) or 4 (TF32), relative to aligned ones; 0 =
    /// such convolutions cannot use tensor cores at all (cuDNN before 7.2, or NHWC tensors on Volta).
    pub unaligned_tensor_efficiency: f64,
    /// Grouped convolutions with fewer channels per group than this run on
    /// CUDA cores (cuDNN's grouped kernels for narrow groups).
    pub tensor_min_group_channels: u64,
    /// Fixed cost of one kernel on the device (launch latency and tail).
    #[serde(rename = "launch_us", with = "crate::hardware::human::us")]
    pub launch: Seconds,
    /// Host time to issue one op of an eager training loop (framework
    /// dispatch and the launch call). The host runs ahead of the device, so
    /// an op costs the larger of this and its kernels: small ops on a fast
    /// GPU are bound by the host.
    #[serde(rename = "host_op_us", with = "crate::hardware::human::us")]
    pub host_op: Seconds,
    /// The same for one autograd node in backward (the engine's dispatch of
    /// the node and its kernels' launches).
    #[serde(rename = "host_backward_op_us", with = "crate::hardware::human::us")]
    pub host_backward_op: Seconds,
    /// Where the numbers come from (fit set, or which family they are borrowed from).
    pub source: String,
}

impl KernelSpec {
    /// `(field, reason)` of the first invalid value.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let frac = |x: f64| x.is_finite() && x > 0.0 && x <= 1.0;
        let bad = |f: &str, why: String| Err((format!("kernels.{f}"), why));
        if self.sms == 0 {
            return bad("sms", "must be at least 1".into());
        }
        for (f, x) in [
            ("tensor_efficiency", self.tensor_efficiency),
            ("cuda_efficiency", self.cuda_efficiency),
            ("backward_efficiency", self.backward_efficiency),
            ("memory_efficiency", self.memory_efficiency),
        ] {
            if !frac(x) {
                return bad(f, format!("must be in (0, 1], got {x}"));
            }
        }
        if !(self.unaligned_tensor_efficiency >= 0.0 && self.unaligned_tensor_efficiency <= 1.0) {
            return bad("unaligned_tensor_efficiency", format!("must be in [0, 1], got {}", self.unaligned_tensor_efficiency));
        }
        if !(self.winograd_speedup >= 1.0 && self.winograd_speedup <= 2.25) {
            return bad("winograd_speedup", format!("must be in [1, 2.25] (F(2x2, 3x3) saves 2.25x at most), got {}", self.winograd_speedup));
        }
        if !(self.k_overhead >= 0.0 && self.k_overhead.is_finite()) {
            return bad("k_overhead", format!("must be >= 0, got {}", self.k_overhead));
        }
        if !(self.launch.0 >= 0.0 && self.launch.0.is_finite()) {
            return bad("launch_us", format!("must be >= 0, got {}", self.launch.0 * 1e6));
        }
        if !(self.host_op.0 >= 0.0 && self.host_op.0.is_finite()) {
            return bad("host_op_us", format!("must be >= 0, got {}", self.host_op.0 * 1e6));
        }
        if !(self.host_backward_op.0 >= 0.0 && self.host_backward_op.0.is_finite()) {
            return bad("host_backward_op_us", format!("must be >= 0, got {}", self.host_backward_op.0 * 1e6));
        }
        Ok(())
    }
}

/// Which units a GEMM runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum MathPath {
    TensorCores,
    CudaCores,
}

/// One GEMM: `groups` independent `M x N x K` products.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Gemm {
    pub m: u64,
    pub n: u64,
    pub k: u64,
    pub groups: u64,
    /// Bytes read and written (operands, result).
    pub bytes: Bytes,
}

/// A GEMM's time and what set it.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct GemmTime {
    pub time: Seconds,
    pub path: MathPath,
    /// The compute part (waves x tile time), before the memory bound.
    pub compute: Seconds,
    pub memory: Seconds,
}

/// Where a layer's time goes, for reports: which units its kernels run on,
/// or whether the host's issue rate bounds it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum TimeClass {
    /// GEMMs on tensor cores with aligned channels.
    TensorCores,
    /// GEMMs on tensor cores with channels per group not a multiple of 8 (4 for TF32).
    TensorCoresUnaligned,
    /// GEMMs on CUDA cores.
    CudaCores,
    /// Memory-bound kernels (BN, ReLU, SE scaling, adds, pooling).
    MemoryBound,
    /// Ops whose kernels finish before the host issues the next op.
    HostIssue,
}

impl TimeClass {
    pub const ALL: [TimeClass; 5] =
        [TimeClass::TensorCores, TimeClass::TensorCoresUnaligned, TimeClass::CudaCores, TimeClass::MemoryBound, TimeClass::HostIssue];
    pub fn name(self) -> &'static str {
        match self {
            TimeClass::TensorCores => "tensor cores",
            TimeClass::TensorCoresUnaligned => "tensor cores, unaligned",
            TimeClass::CudaCores => "CUDA cores",
            TimeClass::MemoryBound => "memory-bound",
            TimeClass::HostIssue => "host issue",
        }
    }
}

/// The times of a convolution's forward, data-gradient and weight-gradient GEMMs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct ConvTimes {
    pub forward: Seconds,
    pub dgrad: Option<Seconds>,
    pub wgrad: Seconds,
}

/// Tile shapes (rows x columns of the output) cuDNN/cuBLAS choose among.
const TENSOR_TILES: [(u64, u64); 6] = [(256, 128), (128, 256), (128, 128), (128, 64), (64, 128), (64, 64)];
const CUDA_TILES: [(u64, u64); 5] = [(128, 128), (128, 64), (64, 64), (64, 32), (32, 32)];
/// A math path a GEMM may take: the path, its peak (FLOP/s), efficiency and tiles.
type PathOption = (MathPath, f64, f64, &'static [(u64, u64)]);

/// Split-K never cuts K below this many elements per split.
const MIN_SPLIT_K: u64 = 256;

/// Which math unit family an op belongs to, for PyTorch's TF32 defaults.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GemmKind {
    /// cuDNN convolution (TF32 allowed by default).
    Conv,
    /// cuBLAS matmul (TF32 off by default).
    Matmul,
}

/// The kernel model of one GPU: its spec's peaks and bandwidth with its
/// `[kernels]` parameters.
#[derive(Clone, Debug)]
pub struct KernelModel {
    spec: KernelSpec,
    fp32: FlopRate,
    tf32: Option<FlopRate>,
    fp16: Option<FlopRate>,
    bf16: Option<FlopRate>,
    fp32_conv_tf32: bool,
    fp32_matmul_tf32: bool,
    bandwidth: f64,
}

fn ceil_div(a: u64, b: u64) -> u64 {
    a.div_ceil(b.max(1))
}

impl KernelModel {
    /// `None` when the hardware has no `[kernels]` table.
    pub fn new(hw: &HardwareSpec) -> Option<KernelModel> {
        let spec = hw.kernels.clone()?;
        Some(KernelModel::with_spec(hw, spec))
    }

    /// The model with other parameters (fitting).
    pub fn with_spec(hw: &HardwareSpec, spec: KernelSpec) -> KernelModel {
        let c = &hw.compute;
        KernelModel {
            spec,
            fp32: c.fp32,
            tf32: c.tf32,
            fp16: c.fp16,
            bf16: c.bf16,
            fp32_conv_tf32: c.fp32_conv_uses_tf32,
            fp32_matmul_tf32: c.fp32_matmul_uses_tf32,
            bandwidth: hw.memory.bandwidth.0,
        }
    }

    pub fn spec(&self) -> &KernelSpec {
        &self.spec
    }

    /// Achieved bandwidth of memory-bound kernels (bytes/s).
    pub fn memory_bandwidth(&self) -> f64 {
        self.bandwidth * self.spec.memory_efficiency
    }

    pub fn launch(&self) -> Seconds {
        self.spec.launch
    }

    /// Tensor-core peak for `dtype` on `kind`, and the channel granule its
    /// kernels need; `None` when this dtype gets no tensor cores.
    fn tensor_peak(&self, dtype: DType, kind: GemmKind) -> Option<(f64, u64)> {
        match dtype {
            DType::Fp16 => self.fp16.map(|p| (p.0, 8)),
            DType::Bf16 => self.bf16.map(|p| (p.0, 8)),
            DType::Fp32 => {
                let allowed = match kind {
                    GemmKind::Conv => self.fp32_conv_tf32,
                    GemmKind::Matmul => self.fp32_matmul_tf32,
                };
                self.tf32.filter(|_| allowed).map(|p| (p.0, 4))
            }
        }
    }

    /// The time of `g` on `path` at `peak x efficiency`: the best tile,
    /// wave-quantised over the SMs, K split when the tiles leave SMs idle.
    fn gemm_on(&self, g: &Gemm, peak: f64, efficiency: f64, tiles: &[(u64, u64)]) -> (Seconds, Bytes) {
        let sms = self.spec.sms as u64;
        let per_sm = peak / sms as f64 * efficiency;
        let mut best = (f64::INFINITY, Bytes::ZERO);
        for &(tm, tn) in tiles {
            let t = g.groups * ceil_div(g.m, tm) * ceil_div(g.n, tn);
            let split = if t < sms { (sms / t.max(1)).min(g.k / MIN_SPLIT_K).max(1) } else { 1 };
            let kk = ceil_div(g.k, split) as f64;
            let waves = ceil_div(t * split, sms) as f64;
            let time = waves * 2.0 * (tm * tn) as f64 * (kk + self.spec.k_overhead) / per_sm;
            // Partial sums of a split K: written and read back in fp32.
            let extra = if split > 1 { Bytes(2 * 4 * g.m * g.n * g.groups * split) } else { Bytes::ZERO };
            if time < best.0 {
                best = (time, extra);
            }
        }
        (Seconds(best.0), best.1)
    }

    /// Time of one GEMM of `dtype` (a backward one when `backward`);
    /// `group_channels` are the input and output channels per group.
    pub fn gemm(&self, g: &Gemm, dtype: DType, kind: GemmKind, group_channels: (u64, u64), backward: bool) -> GemmTime {
        self.gemm_with(g, dtype, kind, group_channels, backward, false)
    }

    /// [`Self::gemm`]; `winograd`: a 3x3 stride-1 convolution's forward or
    /// data gradient, which runs [`KernelSpec::winograd_speedup`] faster on
    /// CUDA cores.
    pub fn gemm_with(&self, g: &Gemm, dtype: DType, kind: GemmKind, group_channels: (u64, u64), backward: bool, winograd: bool) -> GemmTime {
        let s = &self.spec;
        let (cin_g, cout_g) = group_channels;
        let pass = if backward { s.backward_efficiency } else { 1.0 };
        let cuda_speed = if winograd && dtype == DType::Fp32 { s.winograd_speedup } else { 1.0 };
        let mut options: Vec<PathOption> = vec![(MathPath::CudaCores, self.fp32.0 * cuda_speed, s.cuda_efficiency * pass, &CUDA_TILES)];
        if let Some((peak, granule)) = self.tensor_peak(dtype, kind) {
            let narrow = g.groups > 1 && cin_g.min(cout_g) < s.tensor_min_group_channels;
            let aligned = cin_g.is_multiple_of(granule) && cout_g.is_multiple_of(granule);
            let eff = if aligned { s.tensor_efficiency } else { s.tensor_efficiency * s.unaligned_tensor_efficiency };
            if !narrow && eff > 0.0 {
                options.push((MathPath::TensorCores, peak, eff * pass, &TENSOR_TILES));
            }
        }
        let mut best: Option<GemmTime> = None;
        for (path, peak, eff, tiles) in options {
            let (compute, extra) = self.gemm_on(g, peak, eff, tiles);
            let memory = Seconds((g.bytes + extra).0 as f64 / self.memory_bandwidth());
            let time = compute.max(memory) + s.launch;
            if best.is_none_or(|b| time < b.time) {
                best = Some(GemmTime { time, path, compute, memory });
            }
        }
        best.expect("the CUDA-core path always exists")
    }

    /// `passes` activation-sized transfers of `bytes` each, in `kernels` launches.
    pub fn memory_bound(&self, bytes: Bytes, passes: f64, kernels: u32) -> Seconds {
        Seconds(bytes.0 as f64 * passes / self.memory_bandwidth()) + self.spec.launch * kernels as f64
    }

    /// Forward time of a graph layer: its kernels, or the host's time to
    /// issue the op when that is longer.
    pub fn forward(&self, l: &Layer) -> Seconds {
        self.issued(self.layer(l, false), l, self.spec.host_op)
    }

    /// Backward time of a graph layer (input gradient when the graph asks
    /// for one, weight gradient for layers with parameters), at least the
    /// host's time to issue its autograd node.
    pub fn backward(&self, l: &Layer) -> Seconds {
        self.issued(self.layer(l, true), l, self.spec.host_backward_op)
    }

    /// A layer's time in one pass and what bounds it.
    /// Whether `l` is a convolution or linear layer whose channels per
    /// group miss the tensor cores' granule for its dtype (8 for 16-bit, 4
    /// for TF32) on a GPU with tensor cores for it, groups too narrow for
    /// them aside: the GEMMs whose speed rests on the assumed
    /// `unaligned_tensor_efficiency` rather than on fitted rows.
    pub fn is_unaligned(&self, l: &Layer) -> bool {
        let (kind, groups, ch) = match l.kind {
            LayerKind::Conv { groups, .. } => {
                let g = groups.max(1);
                (GemmKind::Conv, g, (l.in_shape[1] / g, l.out_shape[1] / g))
            }
            LayerKind::Linear { .. } => (GemmKind::Matmul, 1, (l.in_shape[1], l.out_shape[1])),
            _ => return false,
        };
        let narrow = groups > 1 && ch.0.min(ch.1) < self.spec.tensor_min_group_channels;
        match self.tensor_peak(l.dtype, kind) {
            Some((_, granule)) => {
                let aligned = ch.0.is_multiple_of(granule) && ch.1.is_multiple_of(granule);
                !narrow && !aligned
            }
            None => false,
        }
    }

    /// Share of `layers`' forward and backward time in unaligned GEMMs
    /// ([`Self::is_unaligned`]); 0 for no time.
    pub fn unaligned_share<'a>(&self, layers: impl IntoIterator<Item = &'a Layer>) -> f64 {
        let (mut all, mut unaligned) = (0.0, 0.0);
        for l in layers {
            let t = self.forward(l).0 + self.backward(l).0;
            all += t;
            if self.is_unaligned(l) {
                unaligned += t;
            }
        }
        if all > 0.0 {
            unaligned / all
        } else {
            0.0
        }
    }

    pub fn classify(&self, l: &Layer, backward: bool) -> (Seconds, TimeClass) {
        let device = self.layer(l, backward);
        let host = if backward { self.spec.host_backward_op } else { self.spec.host_op };
        if !matches!(l.kind, LayerKind::Input) && host > device {
            return (host, TimeClass::HostIssue);
        }
        let class = match l.kind {
            LayerKind::Conv { groups, .. } => {
                let g = groups.max(1);
                let ch = (l.in_shape[1] / g, l.out_shape[1] / g);
                let probe = Gemm { m: 1 << 16, n: ch.1, k: ch.0, groups: g, bytes: Bytes(0) };
                self.path_class(&probe, l.dtype, GemmKind::Conv, ch)
            }
            LayerKind::Linear { .. } => {
                let ch = (l.in_shape[1], l.out_shape[1]);
                let probe = Gemm { m: 1 << 16, n: ch.1, k: ch.0, groups: 1, bytes: Bytes(0) };
                self.path_class(&probe, l.dtype, GemmKind::Matmul, ch)
            }
            _ => TimeClass::MemoryBound,
        };
        (device, class)
    }

    fn path_class(&self, g: &Gemm, dtype: DType, kind: GemmKind, ch: (u64, u64)) -> TimeClass {
        match self.gemm(g, dtype, kind, ch, false).path {
            MathPath::CudaCores => TimeClass::CudaCores,
            MathPath::TensorCores => {
                let granule = if dtype == DType::Fp32 { 4 } else { 8 };
                if ch.0.is_multiple_of(granule) && ch.1.is_multiple_of(granule) {
                    TimeClass::TensorCores
                } else {
                    TimeClass::TensorCoresUnaligned
                }
            }
        }
    }

    fn issued(&self, device: Seconds, l: &Layer, host: Seconds) -> Seconds {
        if matches!(l.kind, LayerKind::Input) {
            device
        } else {
            device.max(host)
        }
    }

    /// A convolution's three GEMMs (`None` for other layers; no data
    /// gradient when the graph computes none).
    pub fn conv_passes(&self, l: &Layer) -> Option<ConvTimes> {
        let LayerKind::Conv { kernel, groups, stride, .. } = l.kind else { return None };
        let winograd = kernel == 3 && stride == 1;
        let d = l.dtype.size();
        let [n, cin, hi, wi] = l.in_shape;
        let [_, cout, ho, wo] = l.out_shape;
        let g = groups.max(1);
        let (cin_g, cout_g, kk) = (cin / g, cout / g, kernel * kernel);
        let bytes = Bytes((n * cin * hi * wi + n * cout * ho * wo + cout * cin_g * kk) * d);
        let ch = (cin_g, cout_g);
        let time = |m, nn, k, bwd, wino| self.gemm_with(&Gemm { m, n: nn, k, groups: g, bytes }, l.dtype, GemmKind::Conv, ch, bwd, wino).time;
        Some(ConvTimes {
            forward: time(n * ho * wo, cout_g, cin_g * kk, false, winograd),
            dgrad: input_grad(l).then(|| time(n * hi * wi, cin_g, cout_g * kk, true, winograd)),
            wgrad: time(cout_g, cin_g * kk, n * ho * wo, true, false),
        })
    }

    fn layer(&self, l: &Layer, backward: bool) -> Seconds {
        let d = l.dtype.size();
        let el = |s: &[u64; 4]| s.iter().product::<u64>();
        let (i, o) = (el(&l.in_shape), el(&l.out_shape));
        match &l.kind {
            LayerKind::Input => Seconds(0.0),
            LayerKind::Conv { .. } => match self.conv_passes(l) {
                Some(c) if backward => c.wgrad + c.dgrad.unwrap_or_default(),
                Some(c) => c.forward,
                None => Seconds(0.0),
            },
            LayerKind::Linear { .. } => {
                let (rows, d_in, d_out) = (l.in_shape[0], l.in_shape[1], l.out_shape[1]);
                let w = d_in * d_out;
                let bytes = Bytes((i + o + w) * d);
                let ch = (d_in, d_out);
                if !backward {
                    return self.gemm(&Gemm { m: rows, n: d_out, k: d_in, groups: 1, bytes }, l.dtype, GemmKind::Matmul, ch, false).time;
                }
                let mut t = self.gemm(&Gemm { m: d_out, n: d_in, k: rows, groups: 1, bytes }, l.dtype, GemmKind::Matmul, ch, true).time;
                if input_grad(l) {
                    t += self.gemm(&Gemm { m: rows, n: d_in, k: d_out, groups: 1, bytes }, l.dtype, GemmKind::Matmul, ch, true).time;
                }
                t
            }
            kind => {
                let (passes, kernels) = memory_passes(kind, backward);
                let size = if matches!(kind, LayerKind::AvgPool) { i } else { o };
                self.memory_bound(Bytes(size * d), passes, kernels)
            }
        }
    }
}

/// Whether the graph computes this layer's input gradient (backward FLOPs
/// of 2x forward: weight and input gradient; the stem's input is data).
fn input_grad(l: &Layer) -> bool {
    l.bwd_flops.0 > 1.5 * l.fwd_flops.0
}

/// Activation-sized memory passes and kernel launches of a memory-bound
/// op in one pass, as PyTorch's CUDA kernels run them: BN reads its input
/// twice (statistics, then normalise) and writes once, and its backward
/// reads the output gradient and the input twice and writes once; an
/// in-place ReLU reads and writes, its backward reads the gradient and the
/// result and writes; the SE scaling writes its product, and its backward
/// both scales the gradient and reduces it against the input; a residual
/// add reads two tensors, and in backward the block input's two gradients
/// are summed; global pooling reads its input once and its backward writes it.
pub(crate) fn memory_passes(kind: &LayerKind, backward: bool) -> (f64, u32) {
    match (kind, backward) {
        (LayerKind::BatchNorm, false) => (3.0, 2),
        (LayerKind::BatchNorm, true) => (5.0, 2),
        (LayerKind::Relu, false) => (2.0, 1),
        (LayerKind::Relu, true) => (3.0, 1),
        (LayerKind::Sigmoid, false) => (2.0, 1),
        (LayerKind::Sigmoid, true) => (3.0, 1),
        (LayerKind::Mul, false) => (2.0, 1),
        (LayerKind::Mul, true) => (4.0, 2),
        (LayerKind::Add, false) => (3.0, 1),
        (LayerKind::Add, true) => (3.0, 1),
        (LayerKind::AvgPool, false) => (1.0, 1),
        (LayerKind::AvgPool, true) => (1.0, 1),
        (LayerKind::Normalize, false) => (3.0, 3),
        (LayerKind::Normalize, true) => (4.0, 3),
        (LayerKind::Input, _) | (LayerKind::Conv { .. }, _) | (LayerKind::Linear { .. }, _) => (0.0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::builtin_hardware;

    fn model(id: &str) -> KernelModel {
        KernelModel::new(&builtin_hardware(id).unwrap()).unwrap()
    }

    fn dense(m: u64, n: u64, k: u64, d: u64) -> Gemm {
        Gemm { m, n, k, groups: 1, bytes: Bytes((m * k + k * n + m * n) * d) }
    }

    #[test]
    fn a_large_aligned_gemm_runs_near_the_tensor_peak_on_tensor_cores() {
        let k = model("h100-80gb");
        let g = dense(8192, 8192, 8192, 2);
        let t = k.gemm(&g, DType::Bf16, GemmKind::Matmul, (8192, 8192), false);
        assert_eq!(t.path, MathPath::TensorCores);
        let rate = 2.0 * 8192f64.powi(3) / t.time.0;
        let peak = 989e12 * k.spec().tensor_efficiency;
        assert!(rate <= peak && rate > 0.9 * peak, "{rate:e} vs {peak:e}");
    }

    #[test]
    fn unaligned_channels_cost_tensor_core_efficiency_or_the_tensor_cores() {
        for id in ["v100-32gb", "h100-80gb"] {
            let k = model(id);
            let aligned = k.gemm(&dense(32768, 1008, 1008 * 9, 2), DType::Fp16, GemmKind::Conv, (1008, 1008), false);
            let unaligned = k.gemm(&dense(32768, 1010, 1010 * 9, 2), DType::Fp16, GemmKind::Conv, (1010, 1010), false);
            assert_eq!(aligned.path, MathPath::TensorCores, "{id}");
            assert!(unaligned.time.0 > 1.3 * aligned.time.0, "{id}: {unaligned:?} vs {aligned:?}");
            if k.spec().unaligned_tensor_efficiency == 0.0 {
                assert_eq!(unaligned.path, MathPath::CudaCores, "{id}");
            }
        }
    }

    #[test]
    fn narrow_groups_run_on_cuda_cores_and_waste_their_tiles() {
        let k = model("a100-40gb");
        // RegNetY-400MF's 3x3 conv: 8 channels per group.
        let g = Gemm { m: 64 * 40 * 40, n: 8, k: 72, groups: 6, bytes: Bytes(50 << 20) };
        let t = k.gemm(&g, DType::Bf16, GemmKind::Conv, (8, 8), false);
        assert_eq!(t.path, MathPath::CudaCores);
        let useful = 2.0 * (g.m * g.n * g.k * g.groups) as f64 / t.compute.0;
        assert!(useful < 0.3 * 19.5e12, "narrow groups cannot fill 32-wide tiles: {useful:e} FLOP/s");
    }

    #[test]
    fn a_gemm_too_small_to_fill_the_sms_splits_k() {
        let k = model("h100-80gb");
        // A weight gradient: small M x N, K = batch x spatial.
        let wide = k.gemm(&dense(256, 256, 1 << 20, 2), DType::Bf16, GemmKind::Conv, (256, 256), false);
        let tiles = 4; // 256x256 in 128x128 tiles
        let unsplit = 2.0 * 128.0 * 128.0 * ((1u64 << 20) as f64 + k.spec().k_overhead) / (989e12 / k.spec().sms as f64 * k.spec().tensor_efficiency);
        assert!(tiles < k.spec().sms && wide.compute.0 < 0.2 * unsplit, "{:?} vs unsplit {unsplit}", wide);
    }

    #[test]
    fn memory_bound_ops_move_their_passes_at_achieved_bandwidth() {
        let k = model("h200-141gb");
        let t = k.memory_bound(Bytes(1 << 30), 3.0, 2);
        let want = 3.0 * (1u64 << 30) as f64 / (4800e9 * k.spec().memory_efficiency) + 2.0 * k.spec().launch.0;
        assert!((t.0 - want).abs() < 1e-12 * want);
    }
}
