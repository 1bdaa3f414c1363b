//! SwAV: distributed Sinkhorn-Knopp assignments, the swapped-prediction loss
//! over multi-crop, and prototype normalisation (as VISSL's SwAVLoss).
//!
//! Everything that needs global statistics takes an all-reduce-sum callback,
//! so one process with the whole batch and N ranks with slices of it compute
//! the same numbers.

// `!(x > 0.0)` checks are deliberate: they reject NaN as well.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use crate::model::{CropLayout, ModelError};
use crate::reduce::{AllReduceSum, ReduceError};
use tch::{Kind, TchError, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum SwavError {
    #[error("invalid SwAV setting `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error(transparent)]
    Layout(#[from] ModelError),
    #[error(transparent)]
    Reduce(#[from] ReduceError),
    #[error("libtorch: {0}")]
    Torch(#[from] TchError),
}

/// Loss settings; the defaults are SEER's (VISSL regnet10B over
/// swav_8node_resnet).
#[derive(Clone, Debug, PartialEq)]
pub struct SwavLossConfig {
    pub temperature: f64,
    pub epsilon: f64,
    pub sinkhorn_iters: usize,
    /// Crops whose codes are the targets (0 and 1: the two large crops).
    pub crops_for_assign: Vec<i64>,
}

impl Default for SwavLossConfig {
    fn default() -> Self {
        SwavLossConfig { temperature: 0.1, epsilon: 0.03, sinkhorn_iters: 10, crops_for_assign: vec![0, 1] }
    }
}

/// Sinkhorn-Knopp codes for one crop's local scores `[n, K]` (any dtype;
/// computed in fp32 without grad). `global_rows` is the number of rows over
/// all ranks (n for world size 1). Returns `[n, K]` whose rows sum to 1.
pub fn sinkhorn(scores: &Tensor, epsilon: f64, iters: usize, global_rows: i64, all_reduce: &AllReduceSum) -> Result<Tensor, SwavError> {
    if !(epsilon > 0.0) {
        return Err(SwavError::Config { field: "epsilon", reason: format!("must be > 0, got {epsilon}") });
    }
    let s = scores.size();
    if s.len() != 2 || s[1] == 0 {
        return Err(SwavError::Config { field: "scores", reason: format!("expected [rows, prototypes], got {s:?}") });
    }
    if global_rows < s[0] || global_rows <= 0 {
        return Err(SwavError::Config { field: "global_rows", reason: format!("{global_rows} < local rows {}", s[0]) });
    }
    let _guard = tch::no_grad_guard();
    // exp(scores / eps) as SwAV; scores are cosine similarities (both
    // embedding and prototypes are unit vectors) so subtracting 1/eps keeps
    // every value in (0, 1] without a max all-reduce, and cancels in the
    // first normalisation.
    let mut q = scores.f_detach()?.f_to_kind(Kind::Float)?.f_div_scalar(epsilon)?.f_add_scalar(-1.0 / epsilon)?.f_exp()?.f_t_copy()?; // [K, n]
    let k = s[1] as f64;
    let mut total = q.f_sum(Kind::Float)?;
    all_reduce(&mut total)?;
    let _ = q.f_div_(&total)?;
    for _ in 0..iters {
        // Rows (prototypes): each gets total mass 1/K over the global batch.
        let mut row_sum = q.f_sum_dim_intlist(&[1i64][..], true, Kind::Float)?;
        all_reduce(&mut row_sum)?;
        let _ = q.f_div_(&row_sum.f_mul_scalar(k)?)?;
        // Columns (samples): each gets mass 1/N; local, no reduce needed.
        let col_sum = q.f_sum_dim_intlist(&[0i64][..], true, Kind::Float)?;
        let _ = q.f_div_(&col_sum.f_mul_scalar(global_rows as f64)?)?;
    }
    let col_sum = q.f_sum_dim_intlist(&[0i64][..], true, Kind::Float)?;
    Ok(q.f_div(&col_sum)?.f_t_copy()?)
}

/// The swapped-prediction loss of one rank's multi-crop scores
/// (`[layout.rows(), K]`, fp32, with grad), as VISSL: for each assignment
/// crop, cross-entropy of its codes against the softmax(scores / T) of every
/// other crop, averaged over those crops, then over assignment crops.
///
/// The returned scalar is this rank's share of the *global* mean over
/// `global_images` images: summing it (and its gradients) over ranks gives
/// the single-process loss (and gradients) on the whole batch.
pub fn swav_loss(scores: &Tensor, layout: &CropLayout, cfg: &SwavLossConfig, global_images: i64, all_reduce: &AllReduceSum) -> Result<Tensor, SwavError> {
    let crops = layout.num_crops();
    if crops < 2 {
        return Err(SwavError::Config { field: "crops", reason: "SwAV needs at least 2 crops per image".into() });
    }
    if cfg.crops_for_assign.is_empty() {
        return Err(SwavError::Config { field: "crops_for_assign", reason: "must name at least one crop".into() });
    }
    if let Some(&c) = cfg.crops_for_assign.iter().find(|&&c| c < 0 || c >= crops) {
        return Err(SwavError::Config { field: "crops_for_assign", reason: format!("crop {c} out of 0..{crops}") });
    }
    if !(cfg.temperature > 0.0) {
        return Err(SwavError::Config { field: "temperature", reason: format!("must be > 0, got {}", cfg.temperature) });
    }
    if global_images < layout.images {
        return Err(SwavError::Config { field: "global_images", reason: format!("{global_images} < this rank's {} images", layout.images) });
    }
    let scores = scores.f_to_kind(Kind::Float)?;
    let mut per_assign = Vec::with_capacity(cfg.crops_for_assign.len());
    for &a in &cfg.crops_for_assign {
        let q = sinkhorn(&layout.crop_rows(&scores, a)?, cfg.epsilon, cfg.sinkhorn_iters, global_images, all_reduce)?;
        let mut terms = Vec::with_capacity(crops as usize - 1);
        for v in (0..crops).filter(|&v| v != a) {
            let logp = layout.crop_rows(&scores, v)?.f_div_scalar(cfg.temperature)?.f_log_softmax(1, Kind::Float)?;
            terms.push(q.f_mul(&logp)?.f_sum(Kind::Float)?.f_div_scalar(-(global_images as f64))?);
        }
        // Mean over the predicted crops: more crops must not scale the loss.
        per_assign.push(Tensor::f_stack(&terms, 0)?.f_mean(Kind::Float)?);
    }
    Ok(Tensor::f_stack(&per_assign, 0)?.f_mean(Kind::Float)?)
}

/// L2-normalises the rows of the full prototype weight `[K, d]` in place
/// (no grad), as SwAV does before every step.
pub fn normalize_prototypes_(weight: &Tensor) -> Result<(), SwavError> {
    let s = weight.size();
    if s.len() != 2 {
        return Err(SwavError::Config { field: "head.proto.weight", reason: format!("expected [K, d], got {s:?}") });
    }
    let flat = weight.f_view([-1])?;
    normalize_rows_sharded_(&flat, 0, s[0], s[1], &crate::reduce::local_sum)
}

/// Row-normalises a `[rows, cols]` matrix held as flat shards: `shard` is
/// elements `offset .. offset + shard.numel()` of the row-major flattening
/// (an FSDP shard may cut rows anywhere). Per-row sums of squares are
/// all-reduced, so every rank scales its elements by the full row norm.
pub fn normalize_rows_sharded_(shard: &Tensor, offset: i64, rows: i64, cols: i64, all_reduce: &AllReduceSum) -> Result<(), SwavError> {
    let len = shard.numel() as i64;
    if shard.dim() != 1 || offset < 0 || cols <= 0 || offset + len > rows * cols {
        return Err(SwavError::Config {
            field: "shard",
            reason: format!("1-D slice [{offset}, {}) of a {rows}x{cols} matrix expected, got {:?}", offset + len, shard.size()),
        });
    }
    let _guard = tch::no_grad_guard();
    let dev = shard.device();
    let row = Tensor::f_arange_start(offset, offset + len, (Kind::Int64, dev))?.f_floor_divide_scalar(cols)?;
    let sq = shard.f_to_kind(Kind::Float)?.f_square()?;
    let mut sums = Tensor::f_zeros([rows], (Kind::Float, dev))?;
    let _ = sums.f_index_add_(0, &row, &sq)?;
    all_reduce(&mut sums)?;
    let norms = sums.f_sqrt()?.f_clamp_min(1e-12)?.f_index_select(0, &row)?;
    let mut s = shard.shallow_clone();
    let _ = s.f_div_(&norms.f_to_kind(shard.kind())?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::reduce::{local_sum, ThreadWorld};
    use tch::Device;

    fn unit_rows(n: i64, d: i64) -> Tensor {
        let x = Tensor::randn([n, d], (Kind::Float, Device::Cpu));
        &x / x.norm_scalaropt_dim(2, [1i64], true)
    }

    /// Cosine scores of `n` random embeddings against `k` random prototypes.
    fn scores(n: i64, k: i64) -> Tensor {
        unit_rows(n, 16).matmul(&unit_rows(k, 16).tr())
    }

    #[test]
    fn sinkhorn_gives_assignments_with_equal_partition() {
        tch::manual_seed(0);
        let s = scores(64, 8);
        let q = sinkhorn(&s, 0.05, 10, 64, &local_sum).unwrap();
        assert_eq!(q.size(), [64, 8]);
        // Each sample's code is a distribution...
        let rows = q.sum_dim_intlist(&[1i64][..], false, Kind::Float);
        assert!(rows.allclose(&Tensor::ones([64], (Kind::Float, Device::Cpu)), 1e-5, 1e-6, false));
        // ...and prototypes are used about equally (64 / 8 samples each).
        let cols = q.sum_dim_intlist(&[0i64][..], false, Kind::Float);
        let dev = (&cols - 8.0).abs().max().double_value(&[]);
        assert!(dev < 0.5, "prototype mass {cols:?}");
        // Compared with a plain softmax, the partition is far more even.
        let soft = (&s / 0.05).softmax(1, Kind::Float).sum_dim_intlist(&[0i64][..], false, Kind::Float);
        assert!((&soft - 8.0).abs().max().double_value(&[]) > dev);
        assert!(!q.requires_grad());
    }

    #[test]
    fn sinkhorn_split_over_two_ranks_equals_unsplit() {
        tch::manual_seed(1);
        let s = scores(40, 12);
        let whole = sinkhorn(&s, 0.03, 10, 40, &local_sum).unwrap();
        let inputs = vec![s.narrow(0, 0, 20), s.narrow(0, 20, 20)];
        let parts = ThreadWorld::run(inputs, |_, part, ar| sinkhorn(&part, 0.03, 10, 40, ar).unwrap());
        let split = Tensor::cat(&parts, 0);
        assert!(whole.allclose(&split, 1e-4, 1e-6, false), "max diff {}", (&whole - &split).abs().max().double_value(&[]));
        // Without the all-reduce each half is normalised on its own: different.
        let alone = Tensor::cat(
            &[sinkhorn(&s.narrow(0, 0, 20), 0.03, 10, 20, &local_sum).unwrap(), sinkhorn(&s.narrow(0, 20, 20), 0.03, 10, 20, &local_sum).unwrap()],
            0,
        );
        assert!(!whole.allclose(&alone, 1e-4, 1e-6, false));
    }

    #[test]
    fn loss_shares_sum_to_the_single_process_loss_and_gradient() {
        tch::manual_seed(2);
        let layout = CropLayout { images: 8, groups: vec![2, 2] };
        // Scores for 8 images x 4 crops, row order: group 0 image-major, then group 1.
        let raw = scores(layout.rows(), 10);
        let cfg = SwavLossConfig::default();
        let full_in = raw.detach().set_requires_grad(true);
        let full = swav_loss(&full_in, &layout, &cfg, 8, &local_sum).unwrap();
        full.backward();
        let full_grad = full_in.grad();
        // Rank r owns images 4r..4r+4: in each group, a contiguous row range.
        let half = CropLayout { images: 4, groups: vec![2, 2] };
        let inputs: Vec<Tensor> = (0..2).map(|r| Tensor::cat(&[raw.narrow(0, 8 * r, 8), raw.narrow(0, 16 + 8 * r, 8)], 0)).collect();
        let results = ThreadWorld::run(inputs, |_, mine, ar| {
            let mine = mine.detach().set_requires_grad(true);
            let l = swav_loss(&mine, &half, &cfg, 8, ar).unwrap();
            l.backward();
            (l.double_value(&[]), mine.grad())
        });
        let sum = results[0].0 + results[1].0;
        let f = full.double_value(&[]);
        assert!((sum - f).abs() < 1e-5 * f.abs().max(1.0), "{sum} vs {f}");
        let g = Tensor::cat(&[results[0].1.narrow(0, 0, 8), results[1].1.narrow(0, 0, 8), results[0].1.narrow(0, 8, 8), results[1].1.narrow(0, 8, 8)], 0);
        assert!(g.allclose(&full_grad, 1e-4, 1e-7, false), "max diff {}", (&g - &full_grad).abs().max().double_value(&[]));
        // The loss is a cross-entropy against soft codes: at least 0, at most log K-ish.
        assert!(f > 0.0 && f < 10.0, "{f}");
    }

    #[test]
    fn loss_rejects_bad_settings() {
        let layout = CropLayout { images: 2, groups: vec![2] };
        let s = scores(4, 5);
        let cfg = SwavLossConfig { crops_for_assign: vec![0, 2], ..Default::default() };
        assert!(swav_loss(&s, &layout, &cfg, 2, &local_sum).unwrap_err().to_string().contains("crops_for_assign"));
        assert!(swav_loss(&s, &layout, &SwavLossConfig::default(), 1, &local_sum).is_err());
        let one = CropLayout { images: 4, groups: vec![1] };
        assert!(swav_loss(&s, &one, &SwavLossConfig::default(), 4, &local_sum).is_err());
        assert!(sinkhorn(&s, 0.0, 3, 4, &local_sum).is_err());
    }

    #[test]
    fn sharded_prototype_normalisation_equals_full() {
        tch::manual_seed(3);
        let w = Tensor::randn([7, 5], (Kind::Float, Device::Cpu)) * 3.0;
        let full = w.copy();
        normalize_prototypes_(&full).unwrap();
        let norms = full.norm_scalaropt_dim(2, [1i64], false);
        assert!(norms.allclose(&Tensor::ones([7], (Kind::Float, Device::Cpu)), 1e-5, 1e-6, false));
        // Three shards cutting rows at arbitrary places (35 = 12 + 12 + 11).
        let flat = w.reshape([-1]);
        let inputs: Vec<(i64, Tensor)> = [(0, 12), (12, 12), (24, 11)].iter().map(|&(st, len)| (st, flat.narrow(0, st, len).copy())).collect();
        let shards = ThreadWorld::run(inputs, |_, (start, s), ar| {
            normalize_rows_sharded_(&s, start, 7, 5, ar).unwrap();
            s
        });
        let got = Tensor::cat(&shards, 0).view([7, 5]);
        assert!(got.allclose(&full, 1e-5, 1e-6, false));
        assert!(normalize_rows_sharded_(&flat.narrow(0, 30, 5), 31, 7, 5, &local_sum).is_err());
    }
}
