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

/// What one step did (for metrics / debugging).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct StepStats {
    /// Global L2 norm of the gradients over all parameters.
    pub grad_norm: f64,
}

/// Optimiser over a fixed list of shards (the same list every step).
pub struct Optimizer {
    cfg: OptimConfig,
    num_params: usize,
    steps: i64,
    /// Per shard: SGD momentum buffer, or Adam's (exp_avg, exp_avg_sq).
    state: Vec<Vec<Tensor>>,
    /// Parameters left untouched during the first `frozen_steps` steps.
    frozen: Vec<bool>,
    frozen_steps: i64,
}

impl Optimizer {
    /// `num_params`: number of parameter tensors of the whole model (the
    /// length of the all-reduced norm vector, equal on every rank).
    pub fn new(cfg: OptimConfig, num_params: usize) -> Result<Optimizer, OptimError> {
        cfg.validate()?;
        Ok(Optimizer { cfg, num_params, steps: 0, state: Vec::new(), frozen: vec![false; num_params], frozen_steps: 0 })
    }

    /// Leaves `params` (indices) alone for the first `steps` steps: no
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
        Ok(())
    }

    fn is_frozen(&self, param: usize) -> bool {
        self.steps <= self.frozen_steps && self.frozen[param]
    }

    pub fn config(&self) -> &OptimConfig {
        &self.cfg
    }

    /// Steps taken so far.
    pub fn steps(&self) -> i64 {
        self.steps
    }

    fn check(&self, shards: &[FlatShard]) -> Result<(), OptimError> {
        for (i, s) in shards.iter().enumerate() {
            let err = |reason: String| Err(OptimError::Shard { shard: i, reason });
            if s.param.dim() != 1 || s.param.size() != s.grad.size() {
                return err(format!("param {:?} and grad {:?} must be equal 1-D", s.param.size(), s.grad.size()));
            }
            if s.param.kind() != Kind::Float {
                return err(format!("master shard must be fp32, is {:?}", s.param.kind()));
            }
            let n = s.param.size()[0];
            for p in &s.pieces {
                if p.param >= self.num_params || p.start < 0 || p.len < 0 || p.start + p.len > n {
                    return err(format!("piece {p:?} outside shard of {n} elements / {} params", self.num_params));
                }
            }
        }
        if !self.state.is_empty() && self.state.len() != shards.len() {
            return Err(OptimError::State(format!("{} shards now, {} when state was made", shards.len(), self.state.len())));
        }
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

    /// Per-parameter global `(||w||², ||g||²)`, summed over shards and ranks.
    pub fn global_sq_norms(&self, shards: &[FlatShard], all_reduce: &AllReduceSum) -> Result<Vec<(f64, f64)>, OptimError> {
        let dev = shards.first().map_or(Device::Cpu, |s| s.param.device());
        let mut w2 = vec![0f64; self.num_params];
        let mut g2 = vec![0f64; self.num_params];
        // Partial sums: one small kernel per piece, then one all-reduce.
        let mut parts: Vec<Tensor> = Vec::new();
        let mut ids: Vec<usize> = Vec::new();
        for s in shards {
            for p in &s.pieces {
                if p.len == 0 {
                    continue;
                }
                parts.push(s.param.f_narrow(0, p.start, p.len)?.f_square()?.f_sum(Kind::Float)?);
                parts.push(s.grad.f_narrow(0, p.start, p.len)?.f_square()?.f_sum(Kind::Float)?);
                ids.push(p.param);
            }
        }
        let mut vec = Tensor::f_zeros([2 * self.num_params as i64], (Kind::Float, dev))?;
        if !parts.is_empty() {
            let idx: Vec<i64> = ids.iter().flat_map(|&i| [2 * i as i64, 2 * i as i64 + 1]).collect();
            let idx = Tensor::f_from_slice(&idx)?.f_to_device(dev)?;
            let _ = vec.f_index_add_(0, &idx, &Tensor::f_stack(&parts, 0)?)?;
        }
        all_reduce(&mut vec)?;
        let host: Vec<f32> = Vec::<f32>::try_from(vec.f_to_device(Device::Cpu)?)?;
        for i in 0..self.num_params {
            w2[i] = host[2 * i] as f64;
            g2[i] = host[2 * i + 1] as f64;
        }
        Ok(w2.into_iter().zip(g2).collect())
    }

    /// One update of every shard with learning rate `lr`. Collective: every
    /// rank must call it (LARC all-reduces the per-parameter norms).
    pub fn step(&mut self, shards: &[FlatShard], lr: f64, all_reduce: &AllReduceSum) -> Result<StepStats, OptimError> {
        self.check(shards)?;
        self.init_state(shards)?;
        let _guard = tch::no_grad_guard();
        self.steps += 1;
        let cfg = self.cfg.clone();
        match cfg {
            OptimConfig::Sgd { momentum, weight_decay, larc } => {
                let norms = self.global_sq_norms(shards, all_reduce)?;
                let grad_norm = norms.iter().map(|n| n.1).sum::<f64>().sqrt();
                for (si, s) in shards.iter().enumerate() {
                    let buf = &self.state[si][0];
                    for p in &s.pieces {
                        if p.len == 0 || self.is_frozen(p.param) {
                            continue;
                        }
                        let w = s.param.f_narrow(0, p.start, p.len)?;
                        let g = s.grad.f_narrow(0, p.start, p.len)?;
                        let (wn, gn) = (norms[p.param].0.sqrt(), norms[p.param].1.sqrt());
                        // apex LARC: decay folded into the gradient, then the
                        // whole update scaled; a zero norm leaves the gradient
                        // as it is and skips decay (the inner optimiser's
                        // decay is disabled while LARC runs).
                        let (scale, wd) = match &larc {
                            None => (1.0, weight_decay),
                            Some(l) if wn != 0.0 && gn != 0.0 => {
                                let mut a = l.trust * wn / (gn + weight_decay * wn + l.eps);
                                if l.clip {
                                    a = (a / lr).min(1.0);
                                }
                                (a, weight_decay)
                            }
                            Some(_) => (1.0, 0.0),
                        };
                        let mut d = if wd != 0.0 { g.f_add(&w.f_mul_scalar(wd)?)? } else { g.shallow_clone() };
                        if scale != 1.0 {
                            d = d.f_mul_scalar(scale)?;
                        }
                        let mut b = buf.f_narrow(0, p.start, p.len)?;
                        // torch SGD: buf = momentum * buf + d (zero-initialised
                        // buffer makes the first step buf = d); w -= lr * buf.
                        let _ = b.f_mul_scalar_(momentum)?;
                        let _ = b.f_add_(&d)?;
                        let mut w = w;
                        let _ = w.f_sub_(&b.f_mul_scalar(lr)?)?;
                    }
                }
                Ok(StepStats { grad_norm })
            }
            OptimConfig::Adam { beta1, beta2, eps, weight_decay } => {
                let norms = self.global_sq_norms(shards, all_reduce)?;
                let grad_norm = norms.iter().map(|n| n.1).sum::<f64>().sqrt();
                let t = self.steps as f64;
                let (bc1, bc2) = (1.0 - beta1.powf(t), 1.0 - beta2.powf(t));
                for (si, s) in shards.iter().enumerate() {
                    for p in &s.pieces {
                        if p.len == 0 || self.is_frozen(p.param) {
                            continue;
                        }
                        let piece = |t: &Tensor| t.f_narrow(0, p.start, p.len);
                        let (mut m, mut v) = (piece(&self.state[si][0])?, piece(&self.state[si][1])?);
                        let (mut w, g) = (piece(&s.param)?, piece(&s.grad)?);
                        // torch.optim.Adam with L2 decay folded into the gradient.
                        let g = if weight_decay != 0.0 { g.f_add(&w.f_mul_scalar(weight_decay)?)? } else { g };
                        let _ = m.f_mul_scalar_(beta1)?;
                        let _ = m.f_add_(&g.f_mul_scalar(1.0 - beta1)?)?;
                        let _ = v.f_mul_scalar_(beta2)?;
                        let _ = v.f_add_(&g.f_square()?.f_mul_scalar(1.0 - beta2)?)?;
                        let denom = v.f_div_scalar(bc2)?.f_sqrt()?.f_add_scalar(eps)?;
                        let _ = w.f_sub_(&m.f_div(&denom)?.f_mul_scalar(lr / bc1)?)?;
                    }
                }
                Ok(StepStats { grad_norm })
            }
        }
    }

    /// State for checkpoints: `steps` (a 1-element int64 tensor) and the
    /// per-shard buffers `shard{i}.momentum` / `shard{i}.exp_avg` /
    /// `shard{i}.exp_avg_sq`. Empty buffers before the first step.
    pub fn state_tensors(&self) -> Vec<(String, Tensor)> {
        let names: &[&str] = match self.cfg {
            OptimConfig::Sgd { .. } => &["momentum"],
            OptimConfig::Adam { .. } => &["exp_avg", "exp_avg_sq"],
        };
        let mut out = vec![("steps".to_string(), Tensor::from_slice(&[self.steps]))];
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
        self.state.clear();
        if self.steps == 0 && saved.len() == 1 {
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
