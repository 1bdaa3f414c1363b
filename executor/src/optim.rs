//! Optimisers on flat fp32 shards: SGD + momentum + weight decay with LARC
//! (apex / VISSL semantics), plain SGD, and Adam.
//!
//! An FSDP shard holds pieces of several parameter tensors (and padding).
//! LARC needs each *parameter's* norm, so every shard contributes partial
//! sums of squares per parameter, one all-reduce sums them over ranks, and
//! each piece is scaled by its parameter's trust ratio: the result equals the
//! unsharded computation.

// `!(x > 0.0)` checks are deliberate: they reject NaN as well.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use crate::reduce::{AllReduceSum, ReduceError};
use tch::{Device, Kind, TchError, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum OptimError {
    #[error("invalid optimiser setting `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error("shard {shard}: {reason}")]
    Shard { shard: usize, reason: String },
    #[error("optimiser state: {0}")]
    State(String),
    #[error(transparent)]
    Reduce(#[from] ReduceError),
    #[error("libtorch: {0}")]
    Torch(#[from] TchError),
}

/// Elements `start .. start + len` of a flat shard belong to parameter
/// number `param` (its index in `ModelArch::param_specs()`, the same on
/// every rank).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Piece {
    pub param: usize,
    pub start: i64,
    pub len: i64,
}

/// One flat fp32 shard and its gradient (same shape); tensors are handles
/// to the engine's storage, updated in place.
pub struct FlatShard {
    pub param: Tensor,
    pub grad: Tensor,
    pub pieces: Vec<Piece>,
}

/// LARC as apex (used by VISSL for SwAV): local lr = trust * ||w|| /
/// (||g|| + wd * ||w|| + eps), applied to every parameter tensor (no
/// exclusions: VISSL's SwAV recipes apply LARC and weight decay to BN and
/// bias parameters too).
#[derive(Clone, Debug, PartialEq)]
pub struct Larc {
    pub trust: f64,
    /// Clip mode: min(local lr / lr, 1); SEER runs without.
    pub clip: bool,
    pub eps: f64,
}

impl Default for Larc {
    fn default() -> Self {
        Larc { trust: 0.001, clip: false, eps: 1e-8 }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub enum OptimConfig {
    Sgd { momentum: f64, weight_decay: f64, larc: Option<Larc> },
    Adam { beta1: f64, beta2: f64, eps: f64, weight_decay: f64 },
}

impl OptimConfig {
    /// SEER: SGD momentum 0.9, weight decay 1e-5, LARC trust 0.001 no clip.
    pub fn seer() -> OptimConfig {
        OptimConfig::Sgd { momentum: 0.9, weight_decay: 1e-5, larc: Some(Larc::default()) }
    }

    /// torch.optim.Adam's defaults (betas 0.9/0.999, eps 1e-8) with L2 decay.
    pub fn adam(weight_decay: f64) -> OptimConfig {
        OptimConfig::Adam { beta1: 0.9, beta2: 0.999, eps: 1e-8, weight_decay }
    }

    fn validate(&self) -> Result<(), OptimError> {
        let bad = |field, reason: String| Err(OptimError::Config { field, reason });
        match self {
            OptimConfig::Sgd { momentum, weight_decay, larc } => {
                if !(0.0..1.0).contains(momentum) {
                    return bad("momentum", format!("must be in [0, 1), got {momentum}"));
                }
                if !(*weight_decay >= 0.0) {
                    return bad("weight_decay", format!("must be >= 0, got {weight_decay}"));
                }
                if let Some(l) = larc {
                    if !(l.trust > 0.0) {
                        return bad("larc.trust", format!("must be > 0, got {}", l.trust));
                    }
                }
            }
            OptimConfig::Adam { beta1, beta2, eps, weight_decay } => {
                if !(0.0..1.0).contains(beta1) || !(0.0..1.0).contains(beta2) {
                    return bad("betas", format!("must be in [0, 1), got ({beta1}, {beta2})"));
                }
                if !(*eps > 0.0) || !(*weight_decay >= 0.0) {
                    return bad("eps/weight_decay", "eps must be > 0 and weight decay >= 0".into());
                }
            }
        }
        Ok(())
    }
}

/// What one step did, on the device: reading it back is the caller's
/// choice (the trainer reads every step's scalars in one copy at its end).
#[derive(Debug)]
pub struct StepStats {
    /// Global L2 norm of the gradients over all parameters (fp32 scalar).
    pub grad_norm: Tensor,
    /// Whether every gradient was finite on every rank (bool scalar): the
    /// fp16 loss scaler's overflow check, taken from the all-reduced norms.
    pub finite: Tensor,
}

/// A shard cut into contiguous segments, each one parameter's piece or
/// padding (`param == num_params`, a slot nothing reads): what the
/// segmented reductions and the per-parameter broadcasts run over.
struct Segments {
    /// Elements per segment (int64, on the shard's device).
    lengths: Tensor,
    /// Parameter of each segment (int64, on the shard's device).
    params: Tensor,
    /// Shard length.
    len: i64,
    /// Whether any segment belongs to a frozen parameter.
    has_frozen: bool,
}

impl Segments {
    fn of(shard: &FlatShard, num_params: usize, frozen: &[bool]) -> Result<Segments, TchError> {
        let len = shard.param.size()[0];
        let mut pieces: Vec<&Piece> = shard.pieces.iter().filter(|p| p.len > 0).collect();
        pieces.sort_by_key(|p| p.start);
        let (mut lengths, mut params, mut at) = (Vec::new(), Vec::new(), 0);
        let pad = num_params as i64;
        for p in pieces {
            if p.start > at {
                lengths.push(p.start - at);
                params.push(pad);
            }
            lengths.push(p.len);
            params.push(p.param as i64);
            at = p.start + p.len;
        }
        if at < len {
            lengths.push(len - at);
            params.push(pad);
        }
        let has_frozen = params.iter().any(|&p| p < pad && frozen[p as usize]);
        let dev = shard.param.device();
        Ok(Segments { lengths: Tensor::f_from_slice(&lengths)?.f_to_device(dev)?, params: Tensor::f_from_slice(&params)?.f_to_device(dev)?, len, has_frozen })
    }

    /// Per-segment sums of `x` (one element per segment).
    fn sums(&self, x: &Tensor) -> Result<Tensor, TchError> {
        Tensor::f_segment_reduce(x, "sum", Some(&self.lengths), None, None, 0, true, 0.0)
    }

    /// `per_param[p]` at every element of parameter `p` (`per_param` has
    /// `num_params + 1` entries, the last for padding).
    fn broadcast(&self, per_param: &Tensor) -> Result<Tensor, TchError> {
        per_param.f_index_select(0, &self.params)?.f_repeat_interleave_self_tensor(&self.lengths, 0, self.len)
    }
}

/// Optimiser over a fixed list of shards (the same list every step).
///
/// A step launches a fixed number of kernels per shard and a fixed number
/// per step, whatever the number of parameter tensors: per-parameter sums
/// of squares are segmented reductions, LARC's trust ratios are computed
/// on the device from the all-reduced norm vector and broadcast back over
/// each shard's segments, and the update is a few whole-shard ops. Nothing
/// is read back to the host.
pub struct Optimizer {
    cfg: OptimConfig,
    num_params: usize,
    steps: i64,
    /// Calls to `step`, overflow-skipped ones included (VISSL's iteration
    /// count, which the freezing window follows).
    iterations: i64,
    /// Per shard: SGD momentum buffer, or Adam's (exp_avg, exp_avg_sq).
    state: Vec<Vec<Tensor>>,
    /// Parameters left untouched during the first `frozen_steps` steps.
    frozen: Vec<bool>,
    frozen_steps: i64,
    /// Leave every parameter as it is on a step whose gradients are not all
    /// finite (fp16 loss scaling), decided on the device.
    skip_non_finite: bool,
    /// The shards' pieces when `segments` was built, and the segments.
    layout: Vec<Vec<Piece>>,
    segments: Vec<Segments>,
    /// `!frozen` per parameter (+ padding slot), on the shards' device.
    active: Option<Tensor>,
}

impl Optimizer {
    /// `num_params`: number of parameter tensors of the whole model (the
    /// length of the all-reduced norm vector, equal on every rank).
    pub fn new(cfg: OptimConfig, num_params: usize) -> Result<Optimizer, OptimError> {
        cfg.validate()?;
        Ok(Optimizer {
            cfg,
            num_params,
            steps: 0,
            iterations: 0,
            state: Vec::new(),
            frozen: vec![false; num_params],
            frozen_steps: 0,
            skip_non_finite: false,
            layout: Vec::new(),
            segments: Vec::new(),
            active: None,
        })
    }

    /// Leaves `params` (indices) alone for the first `steps` iterations
    /// (calls to [`Optimizer::step`], fp16-skipped ones included): no
    /// update, no decay, no momentum, as VISSL's TEMP_FROZEN_PARAMS_ITER_MAP
    /// (SwAV freezes the prototypes for its first 313 iterations) does by
    /// dropping their gradients.
    pub fn freeze(&mut self, params: &[usize], steps: i64) -> Result<(), OptimError> {
        if let Some(&p) = params.iter().find(|&&p| p >= self.num_params) {
            return Err(OptimError::Config { field: "freeze", reason: format!("parameter {p} of {}", self.num_params) });
        }
        self.frozen = vec![false; self.num_params];
        for &p in params {
            self.frozen[p] = true;
        }
        self.frozen_steps = steps.max(0);
        self.layout.clear();
        self.active = None;
        Ok(())
    }

    /// Steps whose gradients hold an inf or nan anywhere change nothing
    /// (decided on the device from the norms; see [`StepStats::finite`]);
    /// the caller reports such a step with [`Optimizer::unstep`].
    pub fn skip_non_finite(&mut self, on: bool) {
        self.skip_non_finite = on;
    }

    /// Takes back the count of a step the device skipped (non-finite
    /// gradients): Adam's bias correction counts the steps taken (the
    /// freezing window counts iterations).
    pub fn unstep(&mut self) {
        self.steps = (self.steps - 1).max(0);
    }

    pub fn config(&self) -> &OptimConfig {
        &self.cfg
    }

    /// Steps taken so far.
    pub fn steps(&self) -> i64 {
        self.steps
    }

    fn freezing(&self) -> bool {
        self.iterations <= self.frozen_steps && self.frozen.iter().any(|&f| f)
    }

    /// Checks the shards and (re)builds their segments when their pieces
    /// changed (only the first step, for a fixed list).
    fn prepare(&mut self, shards: &[FlatShard]) -> Result<(), OptimError> {
        let same = self.layout.len() == shards.len() && self.layout.iter().zip(shards).all(|(l, s)| *l == s.pieces);
        if same {
            return Ok(());
        }
        for (i, s) in shards.iter().enumerate() {
            let err = |reason: String| Err(OptimError::Shard { shard: i, reason });
            if s.param.dim() != 1 || s.param.size() != s.grad.size() {
                return err(format!("param {:?} and grad {:?} must be equal 1-D", s.param.size(), s.grad.size()));
            }
            if s.param.kind() != Kind::Float {
                return err(format!("master shard must be fp32, is {:?}", s.param.kind()));
            }
            let n = s.param.size()[0];
            let mut spans: Vec<(i64, i64)> = Vec::new();
            for p in &s.pieces {
                if p.param >= self.num_params || p.start < 0 || p.len < 0 || p.start + p.len > n {
                    return err(format!("piece {p:?} outside shard of {n} elements / {} params", self.num_params));
                }
                spans.push((p.start, p.start + p.len));
            }
            spans.sort_unstable();
            if let Some(w) = spans.windows(2).find(|w| w[1].0 < w[0].1) {
                return err(format!("pieces {:?} and {:?} overlap", w[0], w[1]));
            }
        }
        if !self.state.is_empty() && self.state.len() != shards.len() {
            return Err(OptimError::State(format!("{} shards now, {} when state was made", shards.len(), self.state.len())));
        }
        self.segments = shards.iter().map(|s| Segments::of(s, self.num_params, &self.frozen)).collect::<Result<_, _>>()?;
        self.layout = shards.iter().map(|s| s.pieces.clone()).collect();
        let dev = shards.first().map_or(Device::Cpu, |s| s.param.device());
        let mut active: Vec<bool> = self.frozen.iter().map(|f| !f).collect();
        active.push(true);
        self.active = Some(Tensor::f_from_slice(&active)?.f_to_device(dev)?);
        Ok(())
    }

    fn init_state(&mut self, shards: &[FlatShard]) -> Result<(), OptimError> {
        if !self.state.is_empty() {
            return Ok(());
        }
        let per = match self.cfg {
            OptimConfig::Sgd { .. } => 1,
            OptimConfig::Adam { .. } => 2,
        };
        for s in shards {
            let mut v = Vec::new();
            for _ in 0..per {
                v.push(s.param.f_zeros_like()?);
            }
            self.state.push(v);
        }
        Ok(())
    }

    /// Per-parameter global sums of squares `[2, num_params + 1]` (row 0
    /// the weights, row 1 the gradients; the last column is padding),
    /// summed over shards and over the ranks `all_reduce` spans. Stays on
    /// the shards' device.
    pub fn sq_norms(&mut self, shards: &[FlatShard], all_reduce: &AllReduceSum) -> Result<Tensor, OptimError> {
        self.prepare(shards)?;
        let dev = shards.first().map_or(Device::Cpu, |s| s.param.device());
        let k = self.num_params as i64 + 1;
        let acc = Tensor::f_zeros([2, k], (Kind::Float, dev))?;
        for (s, seg) in shards.iter().zip(&self.segments) {
            if seg.len == 0 {
                continue;
            }
            for (row, x) in [&s.param, &s.grad].into_iter().enumerate() {
                let sums = seg.sums(&x.f_square()?)?;
                let _ = acc.f_get(row as i64)?.f_index_add_(0, &seg.params, &sums)?;
            }
        }
        let mut flat = acc.f_view([-1])?;
        all_reduce(&mut flat)?;
        Ok(flat.f_view([2, k])?)
    }

    /// Per-parameter factor on the decayed gradient (`[num_params + 1]`,
    /// fp32): apex LARC's local rate `trust ||w|| / (||g|| + wd ||w|| +
    /// eps)` where both norms are non-zero; 1 where the weights are zero
    /// (the decay term vanishes with them); 0 where the gradient is zero
    /// (apex skips the decay there, and the gradient adds nothing).
    fn larc_scale(norms: &Tensor, larc: &Larc, weight_decay: f64, lr: f64) -> Result<Tensor, TchError> {
        let n = norms.f_to_kind(Kind::Double)?.f_sqrt()?;
        let (wn, gn) = (n.f_get(0)?, n.f_get(1)?);
        let mut ratio = wn.f_mul_scalar(larc.trust)?.f_div(&gn.f_add(&wn.f_mul_scalar(weight_decay)?)?.f_add_scalar(larc.eps)?)?;
        if larc.clip {
            ratio = ratio.f_div_scalar(lr)?.f_clamp_max(1.0)?;
        }
        let both = wn.f_gt(0.0)?.f_logical_and(&gn.f_gt(0.0)?)?;
        let fallback = gn.f_gt(0.0)?.f_to_kind(Kind::Double)?;
        ratio.f_where_self(&both, &fallback)?.f_to_kind(Kind::Float)
    }

    /// One update of every shard with learning rate `lr`. Collective: every
    /// rank must call it (the per-parameter norms are all-reduced).
    pub fn step(&mut self, shards: &[FlatShard], lr: f64, all_reduce: &AllReduceSum) -> Result<StepStats, OptimError> {
        let _guard = tch::no_grad_guard();
        let norms = self.sq_norms(shards, all_reduce)?;
        self.init_state(shards)?;
        self.steps += 1;
        self.iterations += 1;
        let k = self.num_params as i64;
        let grads = norms.f_get(1)?;
        let grad_norm = grads.f_narrow(0, 0, k)?.f_sum(Kind::Float)?.f_sqrt()?;
        let finite = grads.f_isfinite()?.f_all()?;
        let freezing = self.freezing();
        let active = self.active.as_ref().ok_or_else(|| OptimError::State("segments not built".into()))?;
        // Where the update applies: a bool per element, a bool scalar, or everywhere.
        let mask = |seg: &Segments| -> Result<Option<Tensor>, TchError> {
            let frozen = if freezing && seg.has_frozen { Some(seg.broadcast(active)?) } else { None };
            Ok(match (frozen, self.skip_non_finite) {
                (Some(m), true) => Some(m.f_logical_and(&finite)?),
                (Some(m), false) => Some(m),
                (None, true) => Some(finite.shallow_clone()),
                (None, false) => None,
            })
        };
        match self.cfg.clone() {
            OptimConfig::Sgd { momentum, weight_decay, larc } => {
                let scale = larc.as_ref().map(|l| Self::larc_scale(&norms, l, weight_decay, lr)).transpose()?;
                for (si, (s, seg)) in shards.iter().zip(&self.segments).enumerate() {
                    if seg.len == 0 {
                        continue;
                    }
                    // apex LARC: decay folded into the gradient, then the
                    // whole update scaled per parameter.
                    let mut d = if weight_decay != 0.0 {
                        let mut d = s.param.f_mul_scalar(weight_decay)?;
                        let _ = d.f_add_(&s.grad)?;
                        d
                    } else {
                        s.grad.shallow_clone()
                    };
                    if let Some(scale) = &scale {
                        d = d.f_mul(&seg.broadcast(scale)?)?;
                    }
                    // torch SGD: buf = momentum * buf + d (zero-initialised
                    // buffer makes the first step buf = d); w -= lr * buf.
                    let (mut buf, mut w) = (self.state[si][0].shallow_clone(), s.param.shallow_clone());
                    match mask(seg)? {
                        None => {
                            let _ = buf.f_mul_scalar_(momentum)?;
                            let _ = buf.f_add_(&d)?;
                            let _ = w.f_sub_(&buf.f_mul_scalar(lr)?)?;
                        }
                        Some(m) => {
                            let mut b = buf.f_mul_scalar(momentum)?;
                            let _ = b.f_add_(&d)?;
                            let nw = w.f_sub(&b.f_mul_scalar(lr)?)?;
                            buf.f_copy_(&b.f_where_self(&m, &buf)?)?;
                            w.f_copy_(&nw.f_where_self(&m, &w)?)?;
                        }
                    }
                }
            }
            OptimConfig::Adam { beta1, beta2, eps, weight_decay } => {
                let t = self.steps as f64;
                let (bc1, bc2) = (1.0 - beta1.powf(t), 1.0 - beta2.powf(t));
                for (si, (s, seg)) in shards.iter().zip(&self.segments).enumerate() {
                    if seg.len == 0 {
                        continue;
                    }
                    // torch.optim.Adam with L2 decay folded into the gradient.
                    let g = if weight_decay != 0.0 {
                        let mut g = s.param.f_mul_scalar(weight_decay)?;
                        let _ = g.f_add_(&s.grad)?;
                        g
                    } else {
                        s.grad.shallow_clone()
                    };
                    let (mut m, mut v, mut w) = (self.state[si][0].shallow_clone(), self.state[si][1].shallow_clone(), s.param.shallow_clone());
                    let mask = mask(seg)?;
                    let (mut m1, mut v1) = match &mask {
                        None => (m.shallow_clone(), v.shallow_clone()),
                        Some(_) => (m.f_detach_copy()?, v.f_detach_copy()?),
                    };
                    let _ = m1.f_mul_scalar_(beta1)?;
                    let _ = m1.f_add_(&g.f_mul_scalar(1.0 - beta1)?)?;
                    let _ = v1.f_mul_scalar_(beta2)?;
                    let _ = v1.f_add_(&g.f_square()?.f_mul_scalar(1.0 - beta2)?)?;
                    let denom = v1.f_div_scalar(bc2)?.f_sqrt()?.f_add_scalar(eps)?;
                    let delta = m1.f_div(&denom)?.f_mul_scalar(lr / bc1)?;
                    match mask {
                        None => {
                            let _ = w.f_sub_(&delta)?;
                        }
                        Some(mk) => {
                            let nw = w.f_sub(&delta)?;
                            m.f_copy_(&m1.f_where_self(&mk, &m)?)?;
                            v.f_copy_(&v1.f_where_self(&mk, &v)?)?;
                            w.f_copy_(&nw.f_where_self(&mk, &w)?)?;
                        }
                    }
                }
            }
        }
        Ok(StepStats { grad_norm, finite })
    }

    /// State for checkpoints: `steps` (a 1-element int64 tensor) and the
    /// per-shard buffers `shard{i}.momentum` / `shard{i}.exp_avg` /
    /// `shard{i}.exp_avg_sq`. Empty buffers before the first step.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let names: &[&str] = match self.cfg {
            OptimConfig::Sgd { .. } => &["momentum"],
            OptimConfig::Adam { .. } => &["exp_avg", "exp_avg_sq"],
        };
        let mut out = vec![("steps".to_string(), Tensor::from_slice(&[self.steps])), ("iterations".to_string(), Tensor::from_slice(&[self.iterations]))];
        for (i, bufs) in self.state.iter().enumerate() {
            for (n, t) in names.iter().zip(bufs) {
                out.push((format!("shard{i}.{n}"), t.shallow_clone()));
            }
        }
        out
    }

    /// Restores what [`Optimizer::state_tensors`] saved (buffers are copied to
    /// the device of `shards`, whose sizes they must match).
    pub fn load_state(&mut self, saved: &[(String, Tensor)], shards: &[FlatShard]) -> Result<(), OptimError> {
        let get = |k: &str| saved.iter().find(|(n, _)| n == k).map(|(_, t)| t);
        let steps = get("steps").ok_or_else(|| OptimError::State("missing `steps`".into()))?;
        self.steps = steps.f_int64_value(&[0])?;
        // Checkpoints from before iterations were counted: every step taken.
        self.iterations = match get("iterations") {
            Some(t) => t.f_int64_value(&[0])?,
            None => self.steps,
        };
        self.state.clear();
        if self.steps == 0 && saved.iter().all(|(n, _)| n == "steps" || n == "iterations") {
            return Ok(());
        }
        self.init_state(shards)?;
        let names: &[&str] = match self.cfg {
            OptimConfig::Sgd { .. } => &["momentum"],
            OptimConfig::Adam { .. } => &["exp_avg", "exp_avg_sq"],
        };
        for (i, s) in shards.iter().enumerate() {
            for (j, n) in names.iter().enumerate() {
                let key = format!("shard{i}.{n}");
                let src = get(&key).ok_or_else(|| OptimError::State(format!("missing `{key}`")))?;
                if src.size() != s.param.size() {
                    return Err(OptimError::State(format!("`{key}` has shape {:?}, shard has {:?}", src.size(), s.param.size())));
                }
                self.state[i][j].f_copy_(src)?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::{local_sum, ThreadWorld};

    const SIZES: [i64; 4] = [5, 7, 4, 3];

    /// Weights (param 3 all zero: LARC must leave it unscaled, undecayed)
    /// and three steps of gradients, as flat 19-element vectors.
    fn problem() -> (Tensor, Vec<Tensor>) {
        tch::manual_seed(11);
        let w = Tensor::randn([19], (Kind::Float, Device::Cpu));
        let _ = w.narrow(0, 16, 3).zero_();
        let grads = (0..3).map(|_| Tensor::randn([19], (Kind::Float, Device::Cpu)) * 0.1).collect();
        (w, grads)
    }

    fn whole_pieces() -> Vec<Piece> {
        let mut start = 0;
        SIZES
            .iter()
            .enumerate()
            .map(|(i, &n)| {
                let p = Piece { param: i, start, len: n };
                start += n;
                p
            })
            .collect()
    }

    fn seer() -> OptimConfig {
        OptimConfig::Sgd { momentum: 0.9, weight_decay: 1e-2, larc: Some(Larc::default()) }
    }

    #[test]
    fn larc_on_two_shards_equals_larc_on_the_whole_vector() {
        let (w0, grads) = problem();
        let lr = 2.0;
        // Unsharded.
        let w = w0.copy();
        let mut opt = Optimizer::new(seer(), 4).unwrap();
        for g in &grads {
            let shard = FlatShard { param: w.shallow_clone(), grad: g.copy(), pieces: whole_pieces() };
            opt.step(&[shard], lr, &local_sum).unwrap();
        }
        // Two ranks, 19 elements padded to 20, cut at 10 (inside param 1).
        let pieces = [
            vec![Piece { param: 0, start: 0, len: 5 }, Piece { param: 1, start: 5, len: 5 }],
            vec![Piece { param: 1, start: 0, len: 2 }, Piece { param: 2, start: 2, len: 4 }, Piece { param: 3, start: 6, len: 3 }],
        ];
        let padded = |t: &Tensor| Tensor::cat(&[t.shallow_clone(), Tensor::zeros([1], (Kind::Float, Device::Cpu))], 0);
        let inputs: Vec<(Tensor, Vec<Tensor>, Vec<Piece>)> = (0..2)
            .map(|r| {
                let cut = |t: &Tensor| padded(t).narrow(0, 10 * r as i64, 10).copy();
                (cut(&w0), grads.iter().map(cut).collect(), pieces[r].clone())
            })
            .collect();
        let shards = ThreadWorld::run(inputs, |_, (w, gs, pieces), ar| {
            let mut opt = Optimizer::new(seer(), 4).unwrap();
            for g in gs {
                let shard = FlatShard { param: w.shallow_clone(), grad: g, pieces: pieces.clone() };
                opt.step(&[shard], lr, ar).unwrap();
            }
            w
        });
        let sharded = Tensor::cat(&shards, 0).narrow(0, 0, 19);
        assert!(sharded.allclose(&w, 1e-5, 1e-7, false), "max diff {}", (&sharded - &w).abs().max().double_value(&[]));
        // Padding stayed zero.
        assert_eq!(shards[1].double_value(&[9]), 0.0);

        // And both equal the apex LARC formula, written out for one step.
        let wv: Vec<f32> = Vec::try_from(&w0).unwrap();
        let gv: Vec<f32> = Vec::try_from(&grads[0]).unwrap();
        let mut one = Optimizer::new(seer(), 4).unwrap();
        let w1 = w0.copy();
        one.step(&[FlatShard { param: w1.shallow_clone(), grad: grads[0].copy(), pieces: whole_pieces() }], lr, &local_sum).unwrap();
        let w1: Vec<f32> = Vec::try_from(&w1).unwrap();
        let mut start = 0usize;
        for &n in &SIZES {
            let r = start..start + n as usize;
            let wn = wv[r.clone()].iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            let gn = gv[r.clone()].iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
            for i in r {
                let expect = if wn > 0.0 {
                    let a = 0.001 * wn / (gn + 1e-2 * wn + 1e-8);
                    wv[i] as f64 - lr * a * (gv[i] as f64 + 1e-2 * wv[i] as f64)
                } else {
                    wv[i] as f64 - lr * gv[i] as f64
                };
                assert!((w1[i] as f64 - expect).abs() < 1e-5 * (1.0 + expect.abs()), "elem {i}: {} vs {expect}", w1[i]);
            }
            start += n as usize;
        }
    }

    /// The optimiser as it ran piece by piece (one narrow and a few small
    /// ops per parameter piece, trust ratios on the host): the reference
    /// the whole-shard optimiser must reproduce.
    fn piecewise_step(cfg: &OptimConfig, shards: &[FlatShard], state: &[Vec<Tensor>], num_params: usize, t: i64, frozen: &[usize], lr: f64) {
        let _g = tch::no_grad_guard();
        let (mut w2, mut g2) = (vec![0f64; num_params], vec![0f64; num_params]);
        for s in shards {
            for p in &s.pieces {
                w2[p.param] += s.param.narrow(0, p.start, p.len).square().sum(Kind::Float).double_value(&[]);
                g2[p.param] += s.grad.narrow(0, p.start, p.len).square().sum(Kind::Float).double_value(&[]);
            }
        }
        for (si, s) in shards.iter().enumerate() {
            for p in &s.pieces {
                if p.len == 0 || frozen.contains(&p.param) {
                    continue;
                }
                let (w, g) = (s.param.narrow(0, p.start, p.len), s.grad.narrow(0, p.start, p.len));
                match cfg {
                    OptimConfig::Sgd { momentum, weight_decay, larc } => {
                        let (wn, gn) = (w2[p.param].sqrt(), g2[p.param].sqrt());
                        let (scale, wd) = match larc {
                            None => (1.0, *weight_decay),
                            Some(l) if wn != 0.0 && gn != 0.0 => {
                                let mut a = l.trust * wn / (gn + weight_decay * wn + l.eps);
                                if l.clip {
                                    a = (a / lr).min(1.0);
                                }
                                (a, *weight_decay)
                            }
                            Some(_) => (1.0, 0.0),
                        };
                        let mut d = if wd != 0.0 { &g + &w * wd } else { g.shallow_clone() };
                        if scale != 1.0 {
                            d *= scale;
                        }
                        let mut b = state[si][0].narrow(0, p.start, p.len);
                        let _ = b.f_mul_scalar_(*momentum).unwrap();
                        let _ = b.f_add_(&d).unwrap();
                        let mut w = w;
                        let _ = w.f_sub_(&(&b * lr)).unwrap();
                    }
                    OptimConfig::Adam { beta1, beta2, eps, weight_decay } => {
                        let (bc1, bc2) = (1.0 - beta1.powf(t as f64), 1.0 - beta2.powf(t as f64));
                        let (mut m, mut v) = (state[si][0].narrow(0, p.start, p.len), state[si][1].narrow(0, p.start, p.len));
                        let g = if *weight_decay != 0.0 { &g + &w * *weight_decay } else { g };
                        let _ = m.f_mul_scalar_(*beta1).unwrap();
                        let _ = m.f_add_(&(&g * (1.0 - beta1))).unwrap();
                        let _ = v.f_mul_scalar_(*beta2).unwrap();
                        let _ = v.f_add_(&(g.square() * (1.0 - beta2))).unwrap();
                        let denom = (&v / bc2).sqrt() + *eps;
                        let mut w = w;
                        let _ = w.f_sub_(&(m.f_div(&denom).unwrap() * (lr / bc1))).unwrap();
                    }
                }
            }
        }
    }

    /// Three shards cutting 9 parameters unevenly (one spread over all
    /// three, padding at the end of the last), a parameter with zero
    /// weights and one with a zero gradient.
    fn uneven_problem(step: i64) -> (Vec<i64>, Vec<Vec<Piece>>, Tensor, Tensor) {
        let sizes: Vec<i64> = vec![7, 30, 3, 12, 1, 25, 4, 9, 5];
        let total: i64 = sizes.iter().sum();
        let padded = 99;
        tch::manual_seed(100 + step);
        let w = Tensor::randn([padded], (Kind::Float, Device::Cpu));
        let g = Tensor::randn([padded], (Kind::Float, Device::Cpu)) * 0.05;
        let _ = w.narrow(0, total, padded - total).zero_();
        let _ = g.narrow(0, total, padded - total).zero_();
        let _ = w.narrow(0, 37, 3).zero_(); // param 2: zero weights
        let _ = g.narrow(0, 40, 12).zero_(); // param 3: zero gradient
        let shard_len = 33;
        let mut pieces = vec![Vec::new(); 3];
        let mut off = 0;
        for (i, &n) in sizes.iter().enumerate() {
            for (r, shard) in pieces.iter_mut().enumerate() {
                let (lo, hi) = (r as i64 * shard_len, (r as i64 + 1) * shard_len);
                let (a, b) = (off.max(lo), (off + n).min(hi));
                if a < b {
                    shard.push(Piece { param: i, start: a - lo, len: b - a });
                }
            }
            off += n;
        }
        (sizes, pieces, w, g)
    }

    #[test]
    fn whole_shard_updates_equal_the_piecewise_optimiser() {
        let larc = |clip| Some(Larc { clip, ..Larc::default() });
        let configs = [
            OptimConfig::Sgd { momentum: 0.9, weight_decay: 1e-2, larc: larc(false) },
            OptimConfig::Sgd { momentum: 0.9, weight_decay: 0.0, larc: larc(false) },
            OptimConfig::Sgd { momentum: 0.9, weight_decay: 1e-2, larc: larc(true) },
            OptimConfig::Sgd { momentum: 0.5, weight_decay: 1e-3, larc: None },
            OptimConfig::adam(1e-2),
            OptimConfig::adam(0.0),
        ];
        for cfg in configs {
            for frozen in [vec![], vec![1usize, 4]] {
                let (sizes, pieces, w0, _) = uneven_problem(0);
                let cut = |t: &Tensor, r: usize| t.narrow(0, 33 * r as i64, 33);
                let (w_new, w_ref) = (w0.copy(), w0.copy());
                let states = match cfg {
                    OptimConfig::Sgd { .. } => 1,
                    OptimConfig::Adam { .. } => 2,
                };
                let ref_state: Vec<Vec<Tensor>> = (0..3).map(|_| (0..states).map(|_| Tensor::zeros([33], (Kind::Float, Device::Cpu))).collect()).collect();
                let mut opt = Optimizer::new(cfg.clone(), sizes.len()).unwrap();
                opt.freeze(&frozen, 2).unwrap();
                for step in 1..=3 {
                    let (_, _, _, g) = uneven_problem(step);
                    let shards = |w: &Tensor| -> Vec<FlatShard> {
                        (0..3).map(|r| FlatShard { param: cut(w, r), grad: cut(&g, r).copy(), pieces: pieces[r].clone() }).collect()
                    };
                    let lr = 0.3 / step as f64;
                    opt.step(&shards(&w_new), lr, &local_sum).unwrap();
                    let frozen_now: &[usize] = if step <= 2 { &frozen } else { &[] };
                    piecewise_step(&cfg, &shards(&w_ref), &ref_state, sizes.len(), step, frozen_now, lr);
                }
                let diff = (&w_new - &w_ref).abs().max().double_value(&[]);
                assert!(w_new.allclose(&w_ref, 1e-6, 1e-8, false), "{cfg:?} frozen {frozen:?}: max diff {diff}");
                assert!(!w_new.equal(&w0), "{cfg:?}: nothing moved");
                // Padding stays zero.
                assert_eq!(w_new.narrow(0, 96, 3).abs().sum(Kind::Float).double_value(&[]), 0.0);
            }
        }
    }

    #[test]
    fn a_non_finite_gradient_changes_nothing_when_asked_to_skip() {
        for cfg in [seer(), OptimConfig::adam(1e-4)] {
            let (w0, grads) = problem();
            let w = w0.copy();
            let mut opt = Optimizer::new(cfg.clone(), 4).unwrap();
            opt.skip_non_finite(true);
            let shard = |g: &Tensor| FlatShard { param: w.shallow_clone(), grad: g.copy(), pieces: whole_pieces() };
            let first = opt.step(&[shard(&grads[0])], 0.5, &local_sum).unwrap();
            assert!(bool::try_from(&first.finite).unwrap());
            let after_one = w.copy();
            let bad = grads[1].copy();
            let _ = bad.narrow(0, 6, 1).fill_(f64::INFINITY);
            let stats = opt.step(&[shard(&bad)], 0.5, &local_sum).unwrap();
            assert!(!bool::try_from(&stats.finite).unwrap(), "{cfg:?}");
            assert!(w.equal(&after_one), "{cfg:?}: a skipped step moved the weights");
            opt.unstep();
            assert_eq!(opt.steps(), 1);
            // The skipped step still counts as an iteration (the freezing window's clock).
            let count = |o: &Optimizer, n: &str| o.state_tensors().into_iter().find(|(k, _)| k == n).unwrap().1.int64_value(&[0]);
            assert_eq!(count(&opt, "iterations"), 2);
            let buffers = |o: &Optimizer| o.state_tensors().into_iter().filter(|(n, _)| n.starts_with("shard")).collect::<Vec<_>>();
            let saved: Vec<Tensor> = buffers(&opt).into_iter().map(|(_, t)| t.copy()).collect();
            // The state is the first step's: a second finite step matches an
            // optimiser that never saw the bad one.
            let mut clean = Optimizer::new(cfg.clone(), 4).unwrap();
            let w2 = w0.copy();
            let shard2 = |g: &Tensor| FlatShard { param: w2.shallow_clone(), grad: g.copy(), pieces: whole_pieces() };
            clean.step(&[shard2(&grads[0])], 0.5, &local_sum).unwrap();
            for (a, (_, b)) in saved.iter().zip(buffers(&clean)) {
                assert!(a.equal(&b), "{cfg:?}: optimiser state changed on a skipped step");
            }
            opt.step(&[shard(&grads[2])], 0.5, &local_sum).unwrap();
            clean.step(&[shard2(&grads[2])], 0.5, &local_sum).unwrap();
            assert!(w.equal(&w2), "{cfg:?}");
        }
    }

    #[test]
    fn grad_norm_is_the_global_norm_of_every_gradient() {
        let (w0, grads) = problem();
        let mut opt = Optimizer::new(seer(), 4).unwrap();
        let stats = opt.step(&[FlatShard { param: w0.copy(), grad: grads[0].copy(), pieces: whole_pieces() }], 0.1, &local_sum).unwrap();
        let want = grads[0].square().sum(Kind::Double).sqrt().double_value(&[]);
        assert!((stats.grad_norm.double_value(&[]) - want).abs() < 1e-5 * want, "{} vs {want}", stats.grad_norm.double_value(&[]));
    }

    #[test]
    fn state_round_trip_continues_identically() {
        for cfg in [seer(), OptimConfig::adam(1e-4)] {
            let (w0, grads) = problem();
            let (a, mut b) = (w0.copy(), w0.copy());
            let mut opt_a = Optimizer::new(cfg.clone(), 4).unwrap();
            let shard = |w: &Tensor, g: &Tensor| FlatShard { param: w.shallow_clone(), grad: g.copy(), pieces: whole_pieces() };
            for g in &grads[..2] {
                opt_a.step(&[shard(&a, g)], 0.1, &local_sum).unwrap();
            }
            let saved: Vec<(String, Tensor)> = opt_a.state_tensors().into_iter().map(|(n, t)| (n, t.copy())).collect();
            b.copy_(&a);
            let mut opt_b = Optimizer::new(cfg.clone(), 4).unwrap();
            opt_b.load_state(&saved, &[shard(&b, &grads[2])]).unwrap();
            assert_eq!(opt_b.steps(), 2);
            opt_a.step(&[shard(&a, &grads[2])], 0.1, &local_sum).unwrap();
            opt_b.step(&[shard(&b, &grads[2])], 0.1, &local_sum).unwrap();
            assert!(a.equal(&b), "{cfg:?}");
            // Missing buffers are an error, not a silent restart.
            let mut opt_c = Optimizer::new(cfg.clone(), 4).unwrap();
            assert!(opt_c.load_state(&saved[..1], &[shard(&b, &grads[2])]).is_err());
        }
    }

    #[test]
    fn frozen_parameters_wait_then_train() {
        for cfg in [seer(), OptimConfig::adam(1e-4)] {
            let (w0, grads) = problem();
            let w = w0.copy();
            let mut opt = Optimizer::new(cfg.clone(), 4).unwrap();
            opt.freeze(&[1], 2).unwrap();
            let shard = |g: &Tensor| FlatShard { param: w.shallow_clone(), grad: g.copy(), pieces: whole_pieces() };
            for g in &grads[..2] {
                opt.step(&[shard(g)], 0.5, &local_sum).unwrap();
            }
            // Param 1 (elements 5..12) untouched, the others moved.
            assert!(w.narrow(0, 5, 7).equal(&w0.narrow(0, 5, 7)), "{cfg:?}");
            assert!(!w.narrow(0, 0, 5).equal(&w0.narrow(0, 0, 5)));
            opt.step(&[shard(&grads[2])], 0.5, &local_sum).unwrap();
            assert!(!w.narrow(0, 5, 7).equal(&w0.narrow(0, 5, 7)), "{cfg:?}");
            assert!(opt.freeze(&[4], 1).is_err());
        }
        // An fp16 overflow step that was skipped still counts as an iteration:
        // frozen for 2, the third call trains param 1 (VISSL counts iterations).
        let (w0, grads) = problem();
        let w = w0.copy();
        let mut opt = Optimizer::new(seer(), 4).unwrap();
        opt.skip_non_finite(true);
        opt.freeze(&[1], 2).unwrap();
        let shard = |g: &Tensor| FlatShard { param: w.shallow_clone(), grad: g.copy(), pieces: whole_pieces() };
        opt.step(&[shard(&grads[0])], 0.5, &local_sum).unwrap();
        let bad = grads[1].copy();
        let _ = bad.narrow(0, 0, 1).fill_(f64::INFINITY);
        opt.step(&[shard(&bad)], 0.5, &local_sum).unwrap();
        opt.unstep();
        assert!(w.narrow(0, 5, 7).equal(&w0.narrow(0, 5, 7)));
        opt.step(&[shard(&grads[2])], 0.5, &local_sum).unwrap();
        assert!(!w.narrow(0, 5, 7).equal(&w0.narrow(0, 5, 7)), "still frozen after 2 iterations, one of them skipped");
    }

    #[test]
    fn bad_shards_and_settings_are_errors() {
        let mut opt = Optimizer::new(seer(), 2).unwrap();
        let w = Tensor::zeros([4], (Kind::Float, Device::Cpu));
        let bad = FlatShard { param: w.shallow_clone(), grad: w.copy(), pieces: vec![Piece { param: 0, start: 2, len: 3 }] };
        assert!(opt.step(&[bad], 0.1, &local_sum).unwrap_err().to_string().contains("outside shard"));
        let half = FlatShard { param: w.to_kind(Kind::Half), grad: w.to_kind(Kind::Half), pieces: vec![] };
        assert!(opt.step(&[half], 0.1, &local_sum).unwrap_err().to_string().contains("fp32"));
        assert!(Optimizer::new(OptimConfig::Sgd { momentum: 1.5, weight_decay: 0.0, larc: None }, 1).is_err());
    }
}
