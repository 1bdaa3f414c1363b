//! `seerscale calibrate`: measure what the planner's cost models assume
//! about this machine. The records, the fits and the profile built from
//! them are `cost_models::hardware::calibration`'s; this module runs the
//! ops that fill the records in.
//!
//! * Compute: conv (dense 1x1, grouped 3x3), linear, BN, elementwise and
//!   pooling ops on RegNet-Y-like shapes, forward and backward, per dtype.
//!   FLOPs and bytes are counted exactly as `cost_models::graph` counts them
//!   (fwd 2·MACs, bwd 4·MACs in two kernels; BN/elementwise bytes = inputs +
//!   output, backward twice that) so the fitted rates plug straight into
//!   `ComputeModel`'s roofline `max(flops/rate, bytes/bw) + kernels·overhead`.
//! * Per-op overhead (a tiny op with autograd recording), the executor's own
//!   host bookkeeping and optimiser, and large-copy memory bandwidth.
//! * Collectives over a real c10d process group: time by message size, max
//!   over ranks per iteration, idle and right after compute.

use crate::dist::{DistError, ProcessGroup, ReduceOp};
use cost_models::collectives::Collective;
use cost_models::compute::OpKind;
pub use cost_models::hardware::calibration::*;
use cost_models::DType;
use serde::{Deserialize, Serialize};
use std::time::Instant;
use tch::{Device, Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error(transparent)]
    Dist(#[from] DistError),
    #[error(transparent)]
    Fit(#[from] CalibrationError),
    #[error("{what}: {reason}")]
    Degenerate { what: String, reason: String },
}

// ------------------------------------------------------------------ timing

/// How long and how often to repeat one measurement.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Budget {
    pub warmup: usize,
    pub min_samples: usize,
    pub max_samples: usize,
    /// Each sample loops the op until it lasts about this long, so the
    /// timer's resolution and `Instant` overhead do not matter.
    pub target_sample_s: f64,
    /// Stop sampling once this much time went into one measurement.
    pub budget_s: f64,
}

impl Budget {
    pub fn full() -> Budget {
        Budget { warmup: 2, min_samples: 7, max_samples: 40, target_sample_s: 2e-3, budget_s: 0.25 }
    }
    pub fn quick() -> Budget {
        Budget { warmup: 1, min_samples: 3, max_samples: 9, target_sample_s: 5e-4, budget_s: 0.03 }
    }
}

/// Waits for `device`'s queued kernels (nothing to wait for on CPU).
pub fn sync(device: Device) {
    if let Device::Cuda(d) = device {
        tch::Cuda::synchronize(d as i64);
    }
}

/// Times `f` (one call = one op) with the budget, on `device`. CPU ops are
/// synchronous, so wall time around the call is the op's time. On CUDA each sample loops the call
/// without synchronising and waits for the device once at its end, as a
/// training step issues its ops: a sample then lasts max(host issue time,
/// device time) per call, whichever of the two bounds the loop.
pub(crate) fn time_calls_on<E>(device: Device, budget: &Budget, mut f: impl FnMut() -> Result<(), E>) -> Result<Timing, E> {
    let mut one = f64::INFINITY;
    sync(device);
    for _ in 0..budget.warmup.max(1) {
        let t = Instant::now();
        f()?;
        sync(device);
        one = one.min(t.elapsed().as_secs_f64());
    }
    let calls = ((budget.target_sample_s / one.max(1e-9)).ceil() as usize).clamp(1, 100_000);
    let start = Instant::now();
    let mut samples = Vec::with_capacity(budget.max_samples);
    while samples.len() < budget.min_samples || (samples.len() < budget.max_samples && start.elapsed().as_secs_f64() < budget.budget_s) {
        let t = Instant::now();
        for _ in 0..calls {
            f()?;
        }
        sync(device);
        samples.push(t.elapsed().as_secs_f64() / calls as f64);
    }
    Ok(Timing::from_samples(samples, calls))
}

// ----------------------------------------------------------------- compute

/// The shapes measured: RegNet-Y blocks of `regnety-tiny` / `regnety-400mf`
/// at the small crops a CPU trains on, and the SwAV head's linears.
pub(crate) fn default_cases(quick: bool) -> Vec<OpCase> {
    use OpCase::*;
    let mut v = vec![
        Conv { n: 16, cin: 104, cout: 104, hw: 14, k: 1, stride: 1, groups: 1 },
        Conv { n: 16, cin: 104, cout: 104, hw: 14, k: 3, stride: 1, groups: 13 },
        Linear { rows: 64, d_in: 440, d_out: 2048 },
        BatchNorm { n: 16, c: 104, hw: 14 },
        Relu { n: 16, c: 104, hw: 14 },
        // Small shapes like regnety-tiny's at 32 px (8-64 channels, 2-16 px
        // maps), so each rate is fitted over sizes spanning what small
        // models run, not only one large shape.
        Conv { n: 8, cin: 16, cout: 16, hw: 8, k: 1, stride: 1, groups: 1 },
        Conv { n: 8, cin: 16, cout: 16, hw: 8, k: 3, stride: 1, groups: 2 },
        Linear { rows: 16, d_in: 64, d_out: 64 },
    ];
    if !quick {
        v.extend([
            Conv { n: 16, cin: 32, cout: 32, hw: 16, k: 1, stride: 1, groups: 1 },
            Conv { n: 16, cin: 208, cout: 208, hw: 7, k: 1, stride: 1, groups: 1 },
            Conv { n: 16, cin: 48, cout: 104, hw: 28, k: 1, stride: 2, groups: 1 },
            Conv { n: 16, cin: 32, cout: 32, hw: 16, k: 3, stride: 1, groups: 4 },
            Conv { n: 16, cin: 208, cout: 208, hw: 14, k: 3, stride: 2, groups: 26 },
            Linear { rows: 64, d_in: 2048, d_out: 128 },
            Linear { rows: 64, d_in: 128, d_out: 3000 },
            BatchNorm { n: 16, c: 32, hw: 16 },
            Add { n: 16, c: 104, hw: 14 },
            ScaleMul { n: 16, c: 104, hw: 14 },
            AvgPool { n: 16, c: 104, hw: 14 },
        ]);
    }
    v
}

pub(crate) fn kind_of(dtype: DType) -> Kind {
    match dtype {
        DType::Fp32 => Kind::Float,
        DType::Fp16 => Kind::Half,
        DType::Bf16 => Kind::BFloat16,
    }
}

fn leaf(shape: &[i64], kind: Kind, device: Device) -> Tensor {
    Tensor::randn(shape, (kind, device)).set_requires_grad(true)
}

/// Leaves that need gradients, and the forward of the op on them.
type Forward = Box<dyn Fn(&[Tensor]) -> Result<Tensor, tch::TchError>>;

fn build(case: &OpCase, kind: Kind, device: Device) -> (Vec<Tensor>, Forward) {
    let leaf = |shape: &[i64], kind| leaf(shape, kind, device);
    match *case {
        OpCase::Conv { n, cin, cout, hw, k, stride, groups } => (
            vec![leaf(&[n, cin, hw, hw], kind), leaf(&[cout, cin / groups, k, k], kind)],
            Box::new(move |t| t[0].f_conv2d::<Tensor>(&t[1], None, [stride, stride], [k / 2, k / 2], [1, 1], groups)),
        ),
        OpCase::Linear { rows, d_in, d_out } => {
            (vec![leaf(&[rows, d_in], kind), leaf(&[d_out, d_in], kind), leaf(&[d_out], kind)], Box::new(|t| t[0].f_linear(&t[1], Some(&t[2]))))
        }
        OpCase::BatchNorm { n, c, hw } => (
            vec![leaf(&[n, c, hw, hw], kind), leaf(&[c], kind), leaf(&[c], kind)],
            Box::new(|t| t[0].f_batch_norm(Some(&t[1]), Some(&t[2]), None::<&Tensor>, None::<&Tensor>, true, 0.1, 1e-5, false)),
        ),
        OpCase::Relu { n, c, hw } => (vec![leaf(&[n, c, hw, hw], kind)], Box::new(|t| t[0].f_relu())),
        OpCase::Add { n, c, hw } => (vec![leaf(&[n, c, hw, hw], kind), leaf(&[n, c, hw, hw], kind)], Box::new(|t| t[0].f_add(&t[1]))),
        OpCase::ScaleMul { n, c, hw } => (vec![leaf(&[n, c, hw, hw], kind), leaf(&[n, c, 1, 1], kind)], Box::new(|t| t[0].f_mul(&t[1]))),
        OpCase::AvgPool { n, c, hw } => (vec![leaf(&[n, c, hw, hw], kind)], Box::new(|t| t[0].f_adaptive_avg_pool2d([1, 1]))),
    }
}

/// Times the forward (with autograd recording, as in training) and the
/// backward of one op. Backward re-runs one retained graph; at_run_backward
/// seeds it with `ones_like(y)`, whose fill is timed and subtracted.
pub(crate) fn measure_op(case: &OpCase, dtype: DType, budget: &Budget, device: Device) -> Result<OpMeasurement, CalibrateError> {
    let kind = kind_of(dtype);
    let (inputs, fwd) = build(case, kind, device);
    let forward = time_calls_on(device, budget, || fwd(&inputs).map(drop))?;
    let y = fwd(&inputs)?;
    let raw = time_calls_on(device, budget, || Tensor::f_run_backward(&[&y], &inputs, true, false).map(drop))?;
    let seed = time_calls_on(device, budget, || y.f_ones_like().map(drop))?;
    let sub = |x: f64| (x - seed.median_s).max(0.05 * x);
    let backward = Timing { median_s: sub(raw.median_s), p10_s: sub(raw.p10_s), p90_s: sub(raw.p90_s), expected_s: sub(raw.expected_s), ..raw };
    let (flops_fwd, flops_bwd) = case.flops();
    let (bytes_fwd, bytes_bwd) = case.bytes(dtype);
    Ok(OpMeasurement { case: case.clone(), label: case.label(), kind: case.kind(), dtype, forward, backward, flops_fwd, flops_bwd, bytes_fwd, bytes_bwd })
}

/// Fixed cost of one op as the training loop pays it: dispatch, allocation
/// of the output and autograd recording, on a one-element tensor.
pub(crate) fn measure_op_overhead(budget: &Budget, device: Device) -> Result<Timing, CalibrateError> {
    let x = leaf(&[1], Kind::Float, device);
    Ok(time_calls_on(device, budget, || x.f_relu().map(drop))?)
}

/// A shape per op kind small enough that the op's work is negligible next
/// to its fixed cost (RegNet-Y-like: 8 channels, group width 8).
pub(crate) fn tiny_case(kind: OpKind) -> OpCase {
    use OpCase::*;
    match kind {
        OpKind::Conv => Conv { n: 2, cin: 8, cout: 8, hw: 4, k: 1, stride: 1, groups: 1 },
        OpKind::GroupedConv => Conv { n: 2, cin: 16, cout: 16, hw: 4, k: 3, stride: 1, groups: 2 },
        OpKind::Matmul => Linear { rows: 4, d_in: 8, d_out: 8 },
        OpKind::Norm => BatchNorm { n: 2, c: 8, hw: 4 },
        OpKind::Elementwise => Relu { n: 2, c: 8, hw: 4 },
        OpKind::Reduction => AvgPool { n: 2, c: 8, hw: 4 },
    }
}

/// Many tiny shards against one of the same size, so the optimiser's
/// fixed per-step work (norm vector, trust ratios) cancels out.
const OPTIMIZER_SHARDS: i64 = 64;

/// Times [`crate::optim::Optimizer`] on [`OPTIMIZER_SHARDS`] 16-element
/// shards and on one shard holding the same parameters (so the norm vector
/// is the same size), and returns the extra cost per shard of the norms
/// pass and of each update.
pub(crate) fn measure_optimizer(budget: &Budget, device: Device) -> Result<OptimizerShards, CalibrateError> {
    use crate::optim::{FlatShard, OptimConfig, Optimizer, Piece};
    let n = OPTIMIZER_SHARDS;
    let optim_err = |e: crate::optim::OptimError| CalibrateError::Degenerate { what: "optimiser timing".into(), reason: e.to_string() };
    let shard = |params: std::ops::Range<i64>| -> Result<FlatShard, CalibrateError> {
        let len = 16 * (params.end - params.start);
        Ok(FlatShard {
            param: Tensor::f_randn([len], (Kind::Float, device))?,
            grad: Tensor::f_randn([len], (Kind::Float, device))?,
            pieces: params.clone().map(|i| Piece { param: i as usize, start: (i - params.start) * 16, len: 16 }).collect(),
        })
    };
    let many: Vec<FlatShard> = (0..n).map(|i| shard(i..i + 1)).collect::<Result<_, _>>()?;
    let one = vec![shard(0..n)?];
    let per_shard = |t_many: &Timing, t_one: &Timing| ((t_many.median_s - t_one.median_s) / (n - 1) as f64).max(0.0);
    let norms = |shards: &[FlatShard]| -> Result<Timing, CalibrateError> {
        let mut opt = Optimizer::new(OptimConfig::seer(), n as usize).map_err(optim_err)?;
        time_calls_on(device, budget, || opt.sq_norms(shards, &crate::reduce::local_sum).map(drop)).map_err(optim_err)
    };
    let norms_s = per_shard(&norms(&many)?, &norms(&one)?);
    let step = |cfg: &OptimConfig| -> Result<f64, CalibrateError> {
        let time = |shards: &[FlatShard]| -> Result<Timing, CalibrateError> {
            let mut opt = Optimizer::new(cfg.clone(), n as usize).map_err(optim_err)?;
            time_calls_on(device, budget, || opt.step(shards, 1e-4, &crate::reduce::local_sum).map(drop)).map_err(optim_err)
        };
        let total = per_shard(&time(&many)?, &time(&one)?);
        Ok((total - norms_s).max(0.0))
    };
    Ok(OptimizerShards { norms_s, sgd_s: step(&OptimConfig::seer())?, adam_s: step(&OptimConfig::adam(1e-5))? })
}

fn relu_chain_backward(budget: &Budget, len: usize, device: Device) -> Result<Timing, CalibrateError> {
    let x = leaf(&[2, 8, 4, 4], Kind::Float, device);
    let mut y = x.shallow_clone();
    for _ in 0..len {
        y = y.f_relu()?;
    }
    Ok(time_calls_on(device, budget, || Tensor::f_run_backward(&[&y], &[&x], true, false).map(drop))?)
}

/// A backward call from a root that depends on `x` only, with `unused`
/// more leaves among its inputs (their gradients come back undefined).
fn backward_with_unused_leaves(budget: &Budget, unused: usize, device: Device) -> Result<Timing, CalibrateError> {
    let x = leaf(&[16], Kind::Float, device);
    let root = x.f_relu()?.f_sum(Kind::Float)?;
    let others: Vec<Tensor> = (0..unused).map(|_| leaf(&[16], Kind::Float, device)).collect();
    let inputs: Vec<&Tensor> = std::iter::once(&x).chain(&others).collect();
    Ok(time_calls_on(device, budget, || Tensor::f_run_backward(&[&root], &inputs, true, false).map(drop))?)
}

/// Host-side costs on `device` (on CUDA: what the host spends issuing the
/// op, the device's part of tiny ops being shorter).
pub(crate) fn measure_host(budget: &Budget, device: Device) -> Result<HostMeasurement, CalibrateError> {
    use crate::fsdp::{add_grad_at, param_leaf, FlatParam};
    let small = Tensor::f_ones([64], (Kind::Float, device))?;
    let small_op = tch::no_grad(|| time_calls_on(device, budget, || small.f_mul_scalar(2.0).map(drop)))?;
    let (one, many) = (relu_chain_backward(budget, 1, device)?, relu_chain_backward(budget, 17, device)?);
    let node = ((many.median_s - one.median_s) / 16.0).max(0.0);
    let backward_call_s = (one.median_s - node).max(0.0);
    // The executor's own leaf and gradient-add code, on 16-element
    // parameters of a 1024-element flat parameter.
    let flat = Tensor::f_randn([1024], (Kind::Float, device))?;
    let params: Vec<FlatParam> = (0..16).map(|i| FlatParam { index: i, name: String::new(), shape: vec![4, 4], offset: i as i64 * 16, numel: 16 }).collect();
    let fwd = time_calls_on(device, budget, || params.iter().try_for_each(|p| param_leaf(&flat, p).map(drop)))?;
    let g = Tensor::f_randn([4, 4], (Kind::Float, device))?;
    let grad = tch::no_grad(|| time_calls_on(device, budget, || params.iter().try_for_each(|p| add_grad_at(&flat, p.offset, &g))))?;
    let (u0, u16) = (backward_with_unused_leaves(budget, 0, device)?, backward_with_unused_leaves(budget, 16, device)?);
    Ok(HostMeasurement {
        small_op,
        backward_call_s,
        param_view_forward_s: fwd.median_s / 16.0,
        param_grad_s: grad.median_s / 16.0,
        param_leaf_unused_s: Some(((u16.median_s - u0.median_s) / 16.0).max(0.0)),
        optimizer: Some(measure_optimizer(budget, device)?),
    })
}

/// Per-kind fixed costs at [`tiny_case`] shapes.
pub(crate) fn measure_fixed(budget: &Budget, backward_call_s: f64, device: Device) -> Result<Vec<FixedCost>, CalibrateError> {
    OpKind::ALL
        .iter()
        .map(|&kind| {
            let m = measure_op(&tiny_case(kind), DType::Fp32, budget, device)?;
            let backward_node_s = (m.backward.median_s - backward_call_s).max(0.0);
            Ok(FixedCost { kind, label: m.label, forward: m.forward, backward: m.backward, backward_node_s })
        })
        .collect()
}

pub(crate) fn measure_copy_bandwidth(bytes: u64, budget: &Budget, device: Device) -> Result<CopyBandwidth, CalibrateError> {
    let n = (bytes / 4) as i64;
    let src = Tensor::f_ones([n], (Kind::Float, device))?;
    let mut dst = Tensor::f_zeros([n], (Kind::Float, device))?;
    let timing = time_calls_on(device, budget, || dst.f_copy_(&src))?;
    // The copy reads `bytes` and writes `bytes`.
    let gb_s = 2.0 * (n as f64 * 4.0) / timing.median_s / 1e9;
    Ok(CopyBandwidth { bytes: n as u64 * 4, timing, gb_s })
}

/// What to measure on the compute side.
#[derive(Clone, Debug)]
pub struct ComputeOptions {
    pub threads: usize,
    /// Where the ops run. On CUDA only the fixed and host costs and the
    /// copy bandwidth are measured (`cases` is empty): a GPU's kernel times
    /// come from the catalog's kernel model and from whole blocks.
    pub device: Device,
    pub dtypes: Vec<DType>,
    pub cases: Vec<OpCase>,
    pub budget: Budget,
    pub copy_bytes: u64,
}

impl ComputeOptions {
    pub fn new(quick: bool, threads: usize) -> ComputeOptions {
        ComputeOptions {
            threads,
            device: Device::Cpu,
            dtypes: vec![DType::Fp32, DType::Bf16],
            cases: default_cases(quick),
            budget: if quick { Budget::quick() } else { Budget::full() },
            copy_bytes: if quick { 32 << 20 } else { 256 << 20 },
        }
    }
}

/// `cpu` or `cuda:N`.
pub fn device_label(device: Device) -> String {
    match device {
        Device::Cuda(d) => format!("cuda:{d}"),
        _ => "cpu".into(),
    }
}

/// Runs the compute side in this process with `threads` intra-op threads.
pub fn measure_compute(opts: &ComputeOptions, mut progress: impl FnMut(&str)) -> Result<ComputeReport, CalibrateError> {
    let start = Instant::now();
    tch::set_num_threads(opts.threads.max(1) as i32);
    let op_overhead = measure_op_overhead(&opts.budget, opts.device)?;
    progress(&format!("per-op overhead {:.2} µs", op_overhead.median_s * 1e6));
    let copy = measure_copy_bandwidth(opts.copy_bytes, &opts.budget, opts.device)?;
    progress(&format!("copy bandwidth {:.1} GB/s", copy.gb_s));
    let mut ops = Vec::new();
    let mut skipped = Vec::new();
    'dtypes: for &dtype in &opts.dtypes {
        let mut these = Vec::new();
        for case in &opts.cases {
            match measure_op(case, dtype, &opts.budget, opts.device) {
                Ok(m) => {
                    progress(&format!("{dtype} {}: fwd {:.1} µs, bwd {:.1} µs", m.label, m.forward.median_s * 1e6, m.backward.median_s * 1e6));
                    these.push(m);
                }
                // A dtype this build cannot run is reported, not fatal.
                Err(CalibrateError::Torch(e)) => {
                    skipped.push(format!("{dtype}: {}: {}", case.label(), e.to_string().lines().next().unwrap_or("")));
                    continue 'dtypes;
                }
                Err(e) => return Err(e),
            }
        }
        ops.extend(these);
    }
    let (host, fixed) = measure_host_round(&opts.budget, opts.threads, opts.device)?;
    progress(&format!(
        "host: small op {:.2} µs, backward call {:.1} µs, param leaf {:.2} µs, param grad add {:.2} µs, unused leaf in backward {:.2} µs{}",
        host.small_op.median_s * 1e6,
        host.backward_call_s * 1e6,
        host.param_view_forward_s * 1e6,
        host.param_grad_s * 1e6,
        host.param_leaf_unused_s.unwrap_or(0.0) * 1e6,
        host.optimizer.map_or(String::new(), |o| format!(
            ", optimiser per shard {:.1} µs norms + {:.1} µs SGD / {:.1} µs Adam",
            o.norms_s * 1e6,
            o.sgd_s * 1e6,
            o.adam_s * 1e6
        ))
    ));
    for f in &fixed {
        progress(&format!("fixed {:?} ({}): fwd {:.1} µs, bwd node {:.1} µs", f.kind, f.label, f.forward.median_s * 1e6, f.backward_node_s * 1e6));
    }
    let rates = fit_rates_fixed(&ops, &fixed)?;
    // Memory-bound ops: subtract the per-kind fixed cost.
    let memory_bound_gb_s = {
        let (mut bytes, mut time) = (0.0, 0.0);
        for o in ops.iter().filter(|m| matches!(m.kind, OpKind::Norm | OpKind::Elementwise | OpKind::Reduction)) {
            let f = fixed.iter().find(|f| f.kind == o.kind);
            let (ff, fb) = f.map_or((op_overhead.median_s, op_overhead.median_s), |f| (f.forward.median_s, f.backward.median_s));
            bytes += o.bytes_fwd + o.bytes_bwd;
            time += (o.forward.median_s - ff).max(0.1 * o.forward.median_s) + (o.backward.median_s - fb).max(0.1 * o.backward.median_s);
        }
        (time > 0.0).then(|| bytes / time / 1e9)
    };
    let _ = fit_memory_bound;
    Ok(ComputeReport {
        threads: opts.threads,
        device: device_label(opts.device),
        op_overhead,
        copy,
        ops,
        rates,
        fixed,
        host: Some(host),
        memory_bound_gb_s,
        skipped,
        elapsed_s: start.elapsed().as_secs_f64(),
    })
}

// ------------------------------------------------------------- collectives

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CollectiveOptions {
    /// Full buffer sizes S in bytes (see `cost_models::collectives`).
    pub sizes: Vec<u64>,
    pub warmup: usize,
    pub iters: usize,
}

impl CollectiveOptions {
    pub fn new(quick: bool) -> CollectiveOptions {
        if quick {
            CollectiveOptions { sizes: vec![4 << 10, 64 << 10, 1 << 20], warmup: 1, iters: 5 }
        } else {
            CollectiveOptions { sizes: (0..7).map(|i| 4u64 << (10 + 2 * i)).collect(), warmup: 2, iters: 12 }
        }
    }
}

/// Every rank calls this with the same options (collectives must be issued
/// in the same order everywhere); every rank gets the same samples.
pub fn measure_collectives(pg: &ProcessGroup, opts: &CollectiveOptions) -> Result<Vec<CollectiveSample>, CalibrateError> {
    let world = pg.world_size();
    let mut local: Vec<(Collective, u64, Vec<f64>)> = Vec::new();
    for op in COLLECTIVES {
        for &bytes in &opts.sizes {
            let (full, shard) = collective_buffers(world, bytes)?;
            let mut times = Vec::with_capacity(opts.iters);
            for i in 0..opts.warmup + opts.iters {
                // Line the ranks up so each timing is the op, not a wait for a late peer.
                pg.barrier()?;
                let t = Instant::now();
                run_collective(pg, op, &full, &shard)?;
                if i >= opts.warmup {
                    times.push(t.elapsed().as_secs_f64());
                }
            }
            local.push((op, full.numel() as u64 * 4, times));
        }
    }
    // The collective took as long as its slowest rank: max over ranks, per iteration.
    let times: Vec<Vec<f64>> = local.iter().map(|l| l.2.clone()).collect();
    let maxed = across_ranks(pg, &times, ReduceOp::Max)?;
    Ok(local
        .into_iter()
        .zip(maxed)
        .map(|((collective, bytes, _), s)| CollectiveSample { collective, bytes, world_size: world, timing: Timing::from_samples(s, 1) })
        .collect())
}

/// fp32 buffers for one collective of `bytes`: the full tensor and one
/// rank's shard (whole elements, divisible by the world size).
fn collective_buffers(world: usize, bytes: u64) -> Result<(Tensor, Tensor), tch::TchError> {
    let opt = (Kind::Float, Device::Cpu);
    let numel = ((bytes / 4).max(world as u64) / world as u64 * world as u64) as i64;
    Ok((Tensor::f_ones([numel], opt)?, Tensor::f_ones([numel / world as i64], opt)?))
}

/// One blocking `op` over the group (sum where it reduces).
fn run_collective(pg: &ProcessGroup, op: Collective, full: &Tensor, shard: &Tensor) -> Result<(), DistError> {
    match op {
        Collective::AllGather => pg.all_gather_into_tensor(full, shard),
        Collective::ReduceScatter => pg.reduce_scatter_tensor(shard, full, ReduceOp::Sum),
        Collective::AllReduce => pg.all_reduce_(full, ReduceOp::Sum),
        Collective::Broadcast => pg.broadcast_(full, 0),
    }
}

/// Each rank's per-iteration series reduced elementwise across ranks (every
/// rank passes series of the same lengths, in the same order).
fn across_ranks(pg: &ProcessGroup, series: &[Vec<f64>], op: ReduceOp) -> Result<Vec<Vec<f64>>, CalibrateError> {
    let flat: Vec<f64> = series.iter().flatten().copied().collect();
    let all = Tensor::from_slice(&flat).to_kind(Kind::Double);
    pg.all_reduce_(&all, op)?;
    let reduced: Vec<f64> = Vec::<f64>::try_from(&all)?;
    let mut at = 0;
    Ok(series
        .iter()
        .map(|s| {
            at += s.len();
            reduced[at - s.len()..at].to_vec()
        })
        .collect())
}

/// Compute segments between collectives, in convs: about one small block's
/// forward, and four times that.
const BUSY_SEGMENTS: [usize; 2] = [2, 8];

/// A compute segment of `convs` grouped 3x3 convs (RegNet-Y's `b` conv at a
/// CPU crop size), about 0.5 ms each on one thread.
fn busy_work(x: &Tensor, w: &Tensor, convs: usize) -> Result<(), tch::TchError> {
    for _ in 0..convs {
        drop(x.f_conv2d::<Tensor>(w, None, [1, 1], [1, 1], [1, 1], 4)?);
    }
    Ok(())
}

/// Every rank calls this with the same options; see [`BusySample`]. Each
/// iteration times its own compute segment and the whole iteration, so
/// compute and waiting come from the same moment of a noisy host.
pub fn measure_busy_collectives(pg: &ProcessGroup, opts: &CollectiveOptions, round: usize) -> Result<Vec<BusySample>, CalibrateError> {
    let world = pg.world_size();
    let (x, w) = busy_tensors()?;
    // Waiting is the noisiest thing measured here: many iterations.
    let iters = opts.iters.max(8) * 4;
    let sizes: Vec<u64> = opts.sizes.iter().copied().filter(|&b| b <= 64 << 10).collect();
    // (op, bytes, convs, per-iteration compute, per-iteration total)
    type BusyTimes = (Collective, u64, usize, Vec<f64>, Vec<f64>);
    let mut local: Vec<BusyTimes> = Vec::new();
    for convs in BUSY_SEGMENTS {
        for op in BUSY_COLLECTIVES {
            for &bytes in &sizes {
                let (full, shard) = collective_buffers(world, bytes)?;
                pg.barrier()?;
                let (mut compute, mut total) = (Vec::with_capacity(iters), Vec::with_capacity(iters));
                for i in 0..opts.warmup + iters {
                    let t = Instant::now();
                    busy_work(&x, &w, convs)?;
                    let c = t.elapsed().as_secs_f64();
                    run_collective(pg, op, &full, &shard)?;
                    if i >= opts.warmup {
                        compute.push(c);
                        total.push(t.elapsed().as_secs_f64());
                    }
                }
                local.push((op, full.numel() as u64 * 4, convs, compute, total));
            }
        }
    }
    // Mean compute over ranks, slowest total: per iteration.
    let computes: Vec<Vec<f64>> = local.iter().map(|l| l.3.iter().map(|c| c / world as f64).collect()).collect();
    let totals: Vec<Vec<f64>> = local.iter().map(|l| l.4.clone()).collect();
    let computes = across_ranks(pg, &computes, ReduceOp::Sum)?;
    let totals = across_ranks(pg, &totals, ReduceOp::Max)?;
    Ok(local
        .into_iter()
        .zip(computes.into_iter().zip(totals))
        .map(|((collective, bytes, segment_convs, _, _), (c, t))| BusySample {
            collective,
            bytes,
            segment_convs,
            world_size: world,
            compute: Timing::from_samples(c, 1),
            busy: Timing::from_samples(t, 1),
            round,
        })
        .collect())
}

/// The tensors of the busy compute segments.
fn busy_tensors() -> Result<(Tensor, Tensor), tch::TchError> {
    let opt = (Kind::Float, Device::Cpu);
    Ok((Tensor::f_randn([16, 32, 16, 16], opt)?, Tensor::f_randn([32, 8, 3, 3], opt)?))
}

// ----------------------------------------------------------------- profile

/// Times `batches` batches of `images` images from `folder` with
/// `augment`, after the warm-up [`crate::data::time_batches`] chooses.
pub fn measure_loader(
    folder: &std::path::Path,
    augment: crate::augment::AugmentConfig,
    crops: String,
    images: usize,
    batches: usize,
) -> Result<LoaderMeasurement, CalibrateError> {
    use crate::data::{time_batches, DataPosition, ImageFolder, LoaderConfig};
    let err = |e: crate::data::DataError| CalibrateError::Degenerate { what: format!("data loader over {}", folder.display()), reason: e.to_string() };
    let images_folder = ImageFolder::open(folder).map_err(err)?;
    let cfg = LoaderConfig {
        seed: 0,
        rank: 0,
        world: 1,
        images_per_rank: images,
        augment,
        workers: 1,
        prefetch: 1,
        start: DataPosition::default(),
        shuffle_buffer: 1,
        stream_start: crate::stream::StreamStart::Fresh,
    };
    let samples = time_batches(images_folder, cfg, batches.max(1)).map_err(err)?;
    Ok(LoaderMeasurement { crops, images_per_batch: images, data: folder.display().to_string(), batch: Timing::from_samples(samples, 1), probe_s: None })
}

/// Host and fixed costs on `threads` intra-op threads (the compute pass,
/// and again in each later `--rounds` round).
pub fn measure_host_round(budget: &Budget, threads: usize, device: Device) -> Result<(HostMeasurement, Vec<FixedCost>), CalibrateError> {
    tch::set_num_threads(threads.max(1) as i32);
    let host = measure_host(budget, device)?;
    let fixed = measure_fixed(budget, host.backward_call_s, device)?;
    Ok((host, fixed))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::dist::{free_port, Backend, GroupConfig};
    use cost_models::Seconds;
    use std::time::Duration;

    /// The optimiser's cost per shard is what many shards cost beyond one
    /// of the same size: positive and microseconds, for the norms and both
    /// updates.
    #[test]
    fn optimizer_cost_per_shard_is_measured_on_the_executor_optimizer() {
        let budget = Budget { warmup: 1, min_samples: 5, max_samples: 5, target_sample_s: 2e-3, budget_s: 0.05 };
        let o = measure_optimizer(&budget, Device::Cpu).unwrap();
        assert!(o.norms_s > 1e-8 && o.sgd_s > 1e-8 && o.adam_s > 1e-8, "{o:?}");
        assert!(o.norms_s < 1e-3 && o.sgd_s < 1e-3 && o.adam_s < 1e-3, "{o:?}");
    }

    /// The FSDP bookkeeping per parameter is timed on the executor's own
    /// leaf and gradient-add code (microseconds each) and reaches the
    /// profile unchanged.
    #[test]
    fn host_costs_per_parameter_are_measured_on_the_executor_fsdp_code() {
        let budget = Budget { warmup: 1, min_samples: 5, max_samples: 5, target_sample_s: 2e-3, budget_s: 0.05 };
        let h = measure_host(&budget, Device::Cpu).unwrap();
        let unused = h.param_leaf_unused_s.unwrap();
        for (name, s) in [("leaf", h.param_view_forward_s), ("grad add", h.param_grad_s)] {
            assert!(s > 1e-8 && s < 1e-3, "{name}: {s}");
        }
        assert!(unused < 1e-3, "{unused}");
        let costs = host_costs(&h);
        assert_eq!(costs.param_leaf_unused, Some(Seconds(sig(unused))));
        assert_eq!(costs.param_grad, Seconds(sig(h.param_grad_s)));
    }

    /// Two ranks of a real Gloo group (threads of this process over 127.0.0.1).
    fn two_rank_collectives(opts: &CollectiveOptions) -> Vec<CollectiveSample> {
        let port = free_port().unwrap();
        let handles: Vec<_> = (0..2)
            .map(|rank| {
                let opts = opts.clone();
                std::thread::spawn(move || {
                    let cfg = GroupConfig {
                        master_addr: "127.0.0.1".into(),
                        master_port: port,
                        rank,
                        world_size: 2,
                        backend: Backend::Gloo,
                        timeout: Duration::from_secs(60),
                    };
                    let pg = ProcessGroup::new(&cfg).unwrap();
                    measure_collectives(&pg, &opts).unwrap()
                })
            })
            .collect();
        let results: Vec<Vec<CollectiveSample>> = handles.into_iter().map(|h| h.join().unwrap()).collect();
        // Max over ranks: both ranks hold identical samples.
        for (a, b) in results[0].iter().zip(&results[1]) {
            assert_eq!(a.timing, b.timing);
        }
        results.into_iter().next().unwrap()
    }

    /// The whole quick calibration for real (compute, then collectives, one
    /// after the other so they do not disturb each other's timings): numbers
    /// must be physically plausible for a CPU, and the written profile must
    /// load through `cost_models::hardware::load_profile` unchanged.
    #[test]
    fn calibrate_quick_measures_plausible_numbers_and_profile_loads() {
        let mut opts = ComputeOptions::new(true, 1);
        opts.copy_bytes = 8 << 20;
        let r = measure_compute(&opts, |_| {}).unwrap();
        assert!(r.op_overhead.median_s > 1e-8 && r.op_overhead.median_s < 1e-3, "{:?}", r.op_overhead);
        assert!(r.copy.gb_s > 0.1 && r.copy.gb_s < 1000.0, "{}", r.copy.gb_s);
        for k in [OpKind::Conv, OpKind::GroupedConv, OpKind::Matmul] {
            let fp32 = r.rates.iter().find(|x| x.kind == k && x.dtype == DType::Fp32).unwrap_or_else(|| panic!("no fp32 {k:?}"));
            // Between 0.1 GFLOP/s and 100 TFLOP/s on one CPU thread.
            assert!(fp32.tflops > 1e-4 && fp32.tflops < 100.0, "{fp32:?}");
        }
        let mb = r.memory_bound_gb_s.unwrap();
        assert!(mb > 0.05 && mb < 1000.0, "{mb}");
        for m in &r.ops {
            assert!(m.forward.median_s > 0.0 && m.backward.median_s > 0.0, "{}", m.label);
            assert!(m.forward.p10_s <= m.forward.median_s && m.forward.median_s <= m.forward.p90_s);
        }

        let copts = CollectiveOptions::new(true);
        let samples = two_rank_collectives(&copts);
        assert_eq!(samples.len(), COLLECTIVES.len() * copts.sizes.len());
        let fits = fit_collectives(&samples).unwrap();
        assert_eq!(fits.len(), COLLECTIVES.len());
        for f in &fits {
            assert!(f.fit.alpha.0 >= 0.0 && f.fit.alpha.0 < 0.1, "{f:?}");
            assert!(f.fit.bus_bandwidth.0 > 1e7 && f.fit.bus_bandwidth.0 < 1e12, "{f:?}");
        }

        let report = CalibrationReport {
            host: HostInfo::detect(),
            quick: true,
            compute: r,
            collectives: samples,
            collective_fits: fits,
            collective_world_size: 2,
            blocks: Vec::new(),
            busy_collectives: Vec::new(),
            speed: None,
            host_rounds: Vec::new(),
            loader: Vec::new(),
        };
        let base = cost_models::hardware::builtin_hardware("cpu-local").unwrap();
        let text = report.profile_toml(&base).unwrap();
        let dir = std::env::temp_dir().join(format!("seerscale-calibrate-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("cpu-local.toml");
        std::fs::write(&path, &text).unwrap();
        let p = cost_models::hardware::load_profile(path.to_str().unwrap()).unwrap();
        std::fs::remove_dir_all(&dir).ok();
        assert_eq!(p.hardware.id, "cpu-local");
        assert_eq!(p.measured.collectives.fits.len(), 4);
        let conv = p.measured.op_throughput.iter().find(|t| t.kind == OpKind::Conv && t.dtype == DType::Fp32).unwrap();
        let want = report.compute.rates.iter().find(|x| x.kind == OpKind::Conv && x.dtype == DType::Fp32).unwrap().tflops;
        assert!((conv.rate.0 / 1e12 - want).abs() / want < 1e-3, "4 significant digits");
        assert!(p.measured.memory_bandwidth.unwrap().0 > 0.0 && p.hardware.memory.bandwidth.0 > 0.0);
        // The planner's compute model picks the measured rate up.
        let cm = cost_models::compute::ComputeModel::new(&p);
        assert_eq!(cm.rate(OpKind::Conv, DType::Fp32).unwrap(), conv.rate);
        assert_eq!(p.measured.speed_probe, None);

        // With host-speed probes: the ops ran while the host was 2x slower
        // than the reference (median reading) and one block workload while
        // it was 4x faster; both are put on the reference speed.
        let timing = |s: f64| Timing { median_s: s, p10_s: s, p90_s: s, expected_s: s, samples: 1, calls_per_sample: 1 };
        let block = BlockMeasurement {
            block: "s1.b0".into(),
            key: "k".into(),
            label: "tiny s1.b0".into(),
            forward: timing(1e-3),
            forward_no_grad: timing(1e-3),
            forward_backward: timing(3e-3),
            backward_peak_bytes: 10,
            forward_saved_bytes: None,
            probe_s: Some(0.25e-3),
        };
        let probed = CalibrationReport {
            blocks: vec![block.clone()],
            speed: Some(SpeedProbes { compute_s: 2e-3, readings_s: vec![2e-3, 1e-3, 1e-3, 0.25e-3, 1e-3] }),
            ..report.clone()
        };
        let q = probed.to_profile(&base).unwrap();
        assert_eq!(q.measured.speed_probe, Some(cost_models::Seconds(1e-3)));
        let conv_q = q.measured.op_throughput.iter().find(|t| t.kind == OpKind::Conv && t.dtype == DType::Fp32).unwrap();
        assert!((conv_q.rate.0 / conv.rate.0 - 2.0).abs() < 1e-3, "{} vs {}", conv_q.rate.0, conv.rate.0);
        let b = &q.measured.block_times[0];
        assert!((b.forward.0 - 4e-3).abs() < 1e-9 && (b.backward.0 - 8e-3).abs() < 1e-9, "{b:?}");
        // The probes leave the collectives alone (compared in memory: the
        // TOML round trip of `p` may move a fit's last bit).
        assert_eq!(q.measured.collectives, report.to_profile(&base).unwrap().measured.collectives);

        // Three rounds of the same block (`--rounds 3`): each is put on the
        // reference speed first, then the profile keeps one time per block,
        // the median, so the round a slow spell hit (10 ms, probe blind to
        // it) does not count.
        let round = |fwd: f64, probe: f64| BlockMeasurement {
            forward: timing(fwd),
            forward_no_grad: timing(fwd),
            forward_backward: timing(3.0 * fwd),
            probe_s: Some(probe),
            ..block.clone()
        };
        let rounds = CalibrationReport { blocks: vec![round(1e-3, 1e-3), round(10e-3, 1e-3), round(0.5e-3, 0.5e-3)], ..probed.clone() };
        let r = rounds.to_profile(&base).unwrap();
        assert_eq!(r.measured.block_times.len(), 1, "{:?}", r.measured.block_times);
        let b = &r.measured.block_times[0];
        assert!((b.forward.0 - 1e-3).abs() < 1e-9 && (b.backward.0 - 2e-3).abs() < 1e-9, "{b:?}");

        // Host and fixed costs in three rounds: round 1 is the compute pass
        // (its probe read 2x the reference, so its costs are halved), rounds
        // 2 and 3 ran at the reference speed with a small op 10x and 2x
        // round 1's normalised one; the profile keeps the medians.
        let s0 = q.measured.host.as_ref().unwrap().small_op.0;
        let h = probed.compute.host.clone().unwrap();
        let host_round =
            |small: f64| HostRound { host: HostMeasurement { small_op: timing(small), ..h.clone() }, fixed: probed.compute.fixed.clone(), probe_s: Some(1e-3) };
        let rounds = CalibrationReport { host_rounds: vec![host_round(10.0 * s0), host_round(2.0 * s0)], ..probed.clone() };
        let r = rounds.to_profile(&base).unwrap();
        let small = r.measured.host.as_ref().unwrap().small_op.0;
        assert!((small / (2.0 * s0) - 1.0).abs() < 1e-3, "{small} vs {}", 2.0 * s0);
        assert_eq!(r.measured.op_fixed.len(), q.measured.op_fixed.len());
        for (f, raw) in r.measured.op_fixed.iter().zip(&probed.compute.fixed) {
            // Normalised {0.5x, x, x}: the median is the later rounds' x.
            assert!((f.forward.0 / raw.forward.median_s - 1.0).abs() < 1e-3, "{f:?} vs {raw:?}");
        }

        // The loader: per image = batch / images, on the reference speed,
        // the median over rounds per crop set. 8 images at 800 µs a batch is
        // 100 µs an image; the 4 ms round (probe at the reference) is the
        // odd one out; the round whose probe read 2x is halved.
        let lm = |crops: &str, batch: f64, probe: f64| LoaderMeasurement {
            crops: crops.into(),
            images_per_batch: 8,
            data: "imgs".into(),
            batch: timing(batch),
            probe_s: Some(probe),
        };
        let with_loader = CalibrationReport {
            loader: vec![lm("2x32+2x16", 0.8e-3, 1e-3), lm("2x32+2x16", 4e-3, 1e-3), lm("2x32+2x16", 1.6e-3, 2e-3), lm("2x48+2x24", 1.6e-3, 1e-3)],
            ..probed.clone()
        };
        let l = with_loader.to_profile(&base).unwrap().measured.loader;
        assert_eq!(l.len(), 2, "{l:?}");
        assert_eq!((l[0].crops.as_str(), l[0].data.as_deref()), ("2x32+2x16", Some("imgs")));
        assert!((l[0].image.0 - 100e-6).abs() < 1e-12 && (l[1].image.0 - 200e-6).abs() < 1e-12, "{l:?}");
    }
}
