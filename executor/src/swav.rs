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
    /// Queued embeddings per assignment crop over all ranks (0: none, as SEER).
    pub queue_length: i64,
    /// The step the queue starts filling at.
    pub queue_start_iter: u64,
}

impl Default for SwavLossConfig {
    fn default() -> Self {
        SwavLossConfig { temperature: 0.1, epsilon: 0.03, sinkhorn_iters: 10, crops_for_assign: vec![0, 1], queue_length: 0, queue_start_iter: 0 }
    }
}

/// The queue's prototype scores joining one step's Sinkhorn: one `[len, K]`
/// tensor per assignment crop (this rank's rows) and the rows over all ranks.
pub struct QueueScores {
    pub scores: Vec<Tensor>,
    pub global_rows: i64,
}

/// SwAV's queue on one rank (facebookresearch/swav `main_swav.py`): the
/// embeddings of the last `len` images of each assignment crop, newest
/// first. It fills from `queue_start_iter` on, one batch per step, and
/// joins Sinkhorn once full, scored against the current prototypes; the
/// loss still takes only the batch's own codes.
#[derive(Debug)]
pub struct SwavQueue {
    /// `[assignment crops, len, d]`, fp32.
    emb: Tensor,
    /// Batches pushed so far.
    pushes: u64,
    start_iter: u64,
    world: i64,
}

impl SwavQueue {
    /// The queue a run needs (`None` without one): `queue_length / world`
    /// rows per rank, whole batches of `images` each.
    pub fn new(cfg: &SwavLossConfig, images: i64, world: i64, dim: i64, device: tch::Device) -> Result<Option<SwavQueue>, SwavError> {
        if cfg.queue_length <= 0 {
            return Ok(None);
        }
        let global = images * world;
        if global <= 0 || cfg.queue_length % global != 0 {
            return Err(SwavError::Config {
                field: "queue_length",
                reason: format!("{} is not a multiple of the global batch {global} ({images} images x {world} ranks)", cfg.queue_length),
            });
        }
        let len = cfg.queue_length / world;
        let emb = Tensor::f_zeros([cfg.crops_for_assign.len() as i64, len, dim], (Kind::Float, device))?;
        Ok(Some(SwavQueue { emb, pushes: 0, start_iter: cfg.queue_start_iter, world }))
    }

    /// Rows on this rank, per assignment crop.
    pub fn len(&self) -> i64 {
        self.emb.size()[1]
    }

    pub fn is_empty(&self) -> bool {
        self.pushes == 0
    }

    /// Whether every row holds an embedding (`images` per push).
    pub fn is_full(&self, images: i64) -> bool {
        self.pushes as i64 * images >= self.len()
    }

    /// Whether step `step` pushes its embeddings.
    pub fn fills_at(&self, step: u64) -> bool {
        step >= self.start_iter
    }

    /// The queue's scores against `prototypes` `[K, d]` (no grad), once full.
    pub fn scores(&self, prototypes: &Tensor, images: i64) -> Result<Option<QueueScores>, SwavError> {
        if !self.is_full(images) {
            return Ok(None);
        }
        let _guard = tch::no_grad_guard();
        let w = prototypes.f_detach()?.f_to_kind(Kind::Float)?;
        let scores = (0..self.emb.size()[0]).map(|i| self.emb.f_get(i)?.f_matmul(&w.f_tr()?)).collect::<Result<Vec<_>, _>>()?;
        Ok(Some(QueueScores { scores, global_rows: self.len() * self.world }))
    }

    /// Pushes this step's embeddings (`[layout.rows(), d]`) of the
    /// assignment crops, dropping the oldest.
    pub fn push(&mut self, embedding: &Tensor, layout: &CropLayout, crops_for_assign: &[i64]) -> Result<(), SwavError> {
        let _guard = tch::no_grad_guard();
        let n = layout.images.min(self.len());
        let mut rows = Vec::with_capacity(crops_for_assign.len());
        for &a in crops_for_assign {
            rows.push(layout.crop_rows(embedding, a)?.f_detach()?.f_to_kind(Kind::Float)?.f_narrow(0, 0, n)?);
        }
        let new = Tensor::f_stack(&rows, 0)?;
        let kept = self.emb.f_narrow(1, 0, self.len() - n)?;
        self.emb = Tensor::f_cat(&[new, kept], 1)?;
        self.pushes += 1;
        Ok(())
    }

    /// What a checkpoint keeps: the rows and the number of pushes.
    pub fn state(&self) -> Vec<(String, Tensor)> {
        vec![("embeddings".into(), self.emb.shallow_clone()), ("pushes".into(), Tensor::from_slice(&[self.pushes as i64]))]
    }

    /// Restores [`SwavQueue::state`] saved by a run of the same shape.
    pub fn load(&mut self, saved: &[(String, Tensor)]) -> Result<(), SwavError> {
        let get = |n: &str| saved.iter().find(|(k, _)| k == n).map(|(_, t)| t);
        let (Some(emb), Some(pushes)) = (get("embeddings"), get("pushes")) else {
            return Err(SwavError::Config { field: "queue", reason: "checkpoint has no `embeddings` and `pushes`".into() });
        };
        if emb.size() != self.emb.size() {
            return Err(SwavError::Config {
                field: "queue",
                reason: format!("checkpoint queue is {:?}, this run keeps {:?} (another world size or queue_length)", emb.size(), self.emb.size()),
            });
        }
        self.emb = emb.f_to_device(self.emb.device())?.f_to_kind(Kind::Float)?;
        self.pushes = pushes.f_int64_value(&[0])?.max(0) as u64;
        Ok(())
    }
}

/// Added to every code when a prototype's codes all underflow to 0
/// (VISSL's `eps_num_stab`).
const ZERO_ROW_EPS: f64 = 1e-12;

/// Replaces the infinite entries of `t` by the largest finite one, on the
/// device (VISSL's guard, without its host-side loop).
fn replace_infs(t: &Tensor) -> Result<Tensor, TchError> {
    let inf = t.f_isinf()?;
    let finite = t.f_masked_fill(&inf, 0.0)?;
    let m = finite.f_max()?;
    finite.f_where_self(&inf.f_logical_not()?, &m)
}

/// Sinkhorn-Knopp codes for one crop's local scores `[n, K]` (any dtype;
/// computed in fp32 without grad). `global_rows` is the number of rows over
/// all ranks (n for world size 1). Returns `[n, K]` whose rows sum to 1.
///
/// VISSL's `distributed_sinkhornknopp`, guards included: infinite codes
/// become the largest finite one; when a prototype's codes sum to zero over
/// the global batch, 1e-12 is added to every code (its row sums then grow by
/// 1e-12 x `global_rows`, so no second all-reduce is needed); infinite
/// row scalings become the largest finite one. Every guard is decided on the
/// device: no read-back.
pub(crate) fn sinkhorn(scores: &Tensor, epsilon: f64, iters: usize, global_rows: i64, all_reduce: &AllReduceSum) -> Result<Tensor, SwavError> {
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
    // exp(scores / eps) as SwAV. VISSL subtracts the all-reduced max score
    // first; scores here are cosine similarities (unit embeddings against
    // unit prototypes) so 1/eps bounds it, which needs no all-reduce and
    // cancels in the first normalisation just the same.
    let q = scores.f_detach()?.f_to_kind(Kind::Float)?.f_div_scalar(epsilon)?.f_add_scalar(-1.0 / epsilon)?.f_exp()?.f_t_copy()?; // [K, n]
    let mut q = replace_infs(&q)?;
    let k = s[1] as f64;
    let mut total = q.f_sum(Kind::Float)?;
    all_reduce(&mut total)?;
    let _ = q.f_div_(&total)?;
    for _ in 0..iters {
        // Rows (prototypes): each gets total mass 1/K over the global batch.
        let mut u = q.f_sum_dim_intlist(&[1i64][..], true, Kind::Float)?;
        all_reduce(&mut u)?;
        let zero_row = u.f_eq(0.0)?.f_any()?.f_mul_scalar(ZERO_ROW_EPS)?;
        let _ = q.f_add_(&zero_row)?;
        let _ = u.f_add_(&zero_row.f_mul_scalar(global_rows as f64)?)?;
        let scale = replace_infs(&u.f_mul_scalar(k)?.f_reciprocal()?)?;
        let _ = q.f_mul_(&scale)?;
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
///
/// `queue`: the queue's scores, which join each assignment crop's Sinkhorn
/// (their codes are computed and dropped, as SwAV's).
pub(crate) fn swav_loss(
    scores: &Tensor,
    layout: &CropLayout,
    cfg: &SwavLossConfig,
    global_images: i64,
    queue: Option<&QueueScores>,
    all_reduce: &AllReduceSum,
) -> Result<Tensor, SwavError> {
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
    if let Some(qs) = queue {
        if qs.scores.len() != cfg.crops_for_assign.len() {
            return Err(SwavError::Config {
                field: "queue",
                reason: format!("{} score tensors for {} assignment crops", qs.scores.len(), cfg.crops_for_assign.len()),
            });
        }
    }
    for (i, &a) in cfg.crops_for_assign.iter().enumerate() {
        let mine = layout.crop_rows(&scores, a)?;
        let q = match queue {
            None => sinkhorn(&mine, cfg.epsilon, cfg.sinkhorn_iters, global_images, all_reduce)?,
            Some(qs) => {
                let queued = &qs.scores[i];
                let rows = queued.size()[0];
                let both = Tensor::f_cat(&[queued.f_to_kind(Kind::Float)?, mine.f_detach()?], 0)?;
                sinkhorn(&both, cfg.epsilon, cfg.sinkhorn_iters, global_images + qs.global_rows, all_reduce)?.f_narrow(0, rows, layout.images)?
            }
        };
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
pub(crate) fn normalize_prototypes_(weight: &Tensor) -> Result<(), SwavError> {
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
        let full = swav_loss(&full_in, &layout, &cfg, 8, None, &local_sum).unwrap();
        full.backward();
        let full_grad = full_in.grad();
        // Rank r owns images 4r..4r+4: in each group, a contiguous row range.
        let half = CropLayout { images: 4, groups: vec![2, 2] };
        let inputs: Vec<Tensor> = (0..2).map(|r| Tensor::cat(&[raw.narrow(0, 8 * r, 8), raw.narrow(0, 16 + 8 * r, 8)], 0)).collect();
        let results = ThreadWorld::run(inputs, |_, mine, ar| {
            let mine = mine.detach().set_requires_grad(true);
            let l = swav_loss(&mine, &half, &cfg, 8, None, ar).unwrap();
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
        assert!(swav_loss(&s, &layout, &cfg, 2, None, &local_sum).unwrap_err().to_string().contains("crops_for_assign"));
        assert!(swav_loss(&s, &layout, &SwavLossConfig::default(), 1, None, &local_sum).is_err());
        let one = CropLayout { images: 4, groups: vec![1] };
        assert!(swav_loss(&s, &one, &SwavLossConfig::default(), 4, None, &local_sum).is_err());
        assert!(sinkhorn(&s, 0.0, 3, 4, &local_sum).is_err());
    }

    #[test]
    fn sinkhorn_guards_infinite_codes_and_empty_prototypes() {
        tch::manual_seed(4);
        // An infinite score, and a prototype every sample scores so low that
        // its codes underflow to zero: VISSL's guards keep the codes finite.
        let s = scores(16, 6);
        let _ = s.get(3).get(2).fill_(f64::INFINITY);
        let _ = s.narrow(1, 5, 1).fill_(-1e4);
        let q = sinkhorn(&s, 0.05, 5, 16, &local_sum).unwrap();
        assert!(bool::try_from(q.isfinite().all()).unwrap(), "{q:?}");
        let rows = q.sum_dim_intlist(&[1i64][..], false, Kind::Float);
        assert!(rows.allclose(&Tensor::ones([16], (Kind::Float, Device::Cpu)), 1e-5, 1e-6, false));
        // The sample with the infinite score goes to that prototype.
        assert_eq!(q.get(3).argmax(0, false).int64_value(&[]), 2);
    }

    #[test]
    fn the_queue_fills_newest_first_and_scores_once_full() {
        let cfg = SwavLossConfig { queue_length: 8, ..Default::default() };
        let layout = CropLayout { images: 2, groups: vec![2, 1] };
        assert!(SwavQueue::new(&SwavLossConfig { queue_length: 6, ..cfg.clone() }, 2, 2, 4, Device::Cpu).unwrap_err().to_string().contains("multiple"));
        assert!(SwavQueue::new(&SwavLossConfig::default(), 2, 2, 4, Device::Cpu).unwrap().is_none());
        // 2 ranks: 4 rows here, two pushes of 2 images.
        let mut q = SwavQueue::new(&cfg, 2, 2, 4, Device::Cpu).unwrap().unwrap();
        assert_eq!(q.len(), 4);
        let protos = unit_rows(5, 4);
        assert!(q.scores(&protos, 2).unwrap().is_none());
        let emb = |v: f64| Tensor::full([6, 4], v, (Kind::Float, Device::Cpu));
        q.push(&emb(1.0), &layout, &[0, 1]).unwrap();
        assert!(!q.is_full(2) && q.scores(&protos, 2).unwrap().is_none());
        q.push(&emb(2.0), &layout, &[0, 1]).unwrap();
        let s = q.scores(&protos, 2).unwrap().unwrap();
        assert_eq!((s.scores.len(), s.scores[0].size(), s.global_rows), (2, vec![4, 5], 8));
        // Newest first: rows 0-1 hold the second push.
        let want = protos.sum_dim_intlist(&[1i64][..], false, Kind::Float);
        assert!(s.scores[1].get(0).allclose(&(&want * 2.0), 1e-5, 1e-6, false));
        assert!(s.scores[1].get(3).allclose(&want, 1e-5, 1e-6, false));
        // A checkpoint of another shape is refused by name.
        let mut other = SwavQueue::new(&SwavLossConfig { queue_length: 16, ..cfg }, 2, 2, 4, Device::Cpu).unwrap().unwrap();
        assert!(other.load(&q.state()).unwrap_err().to_string().contains("another world size"));
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
