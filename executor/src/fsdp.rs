//! The FSDP runtime: each unit's parameters flattened into one fp32 master
//! vector, padded to a multiple of the shard-group size and sharded over the
//! shard group (`groups.rs`; the whole vector on a rank that shards over
//! nobody, as under DDP); gathered in the compute dtype into a persistent
//! flat buffer whose *storage* is freed and re-filled (see `storage.rs`) so
//! autograd's saved views stay valid; gradients accumulated unsharded per
//! unit, reduce-scattered within the shard group and all-reduced across
//! replicas in the reduce dtype, then added into the fp32 shard gradient, as
//! the step schedule's events say.
//!
//! Units follow the naming contract (docs/architecture.md): a parameter
//! belongs to the unit with the longest member that is a prefix of its name
//! on `.` boundaries; unmatched parameters form the implicit `root` unit.

use crate::dist::{DistError, ReduceOp, Work};
use crate::groups::RankGroups;
use crate::model::ParamSpec;
use crate::optim::{FlatShard, Piece};
use crate::storage::{self, StorageError};
use cost_models::graph::is_batch_norm_param;
use cost_models::Bytes;
use std::collections::HashMap;
use tch::{Device, Kind, TchError, Tensor};

/// One FSDP unit as the plan lists it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct UnitSpec {
    pub name: String,
    pub members: Vec<String>,
}

#[derive(Debug, thiserror::Error)]
pub enum FsdpError {
    #[error(transparent)]
    Units(#[from] runspec::units::UnitError),
    #[error("parameter `{name}`: initial value has shape {got:?}, spec says {want:?}")]
    InitShape { name: String, got: Vec<i64>, want: Vec<i64> },
    #[error("unit `{unit}` is not gathered (internal ordering error)")]
    NotGathered { unit: String },
    #[error("unit `{unit}`: gradient has {got} elements, flat parameter has {want}")]
    GradShape { unit: String, got: i64, want: i64 },
    #[error("unit `{unit}`: {event} out of order (internal schedule error)")]
    OutOfOrder { unit: String, event: &'static str },
    #[error("checkpoint shard of unit `{unit}` has {got} elements, this run needs {want} (different plan or world size?)")]
    ShardShape { unit: String, got: i64, want: i64 },
    #[error(transparent)]
    Dist(#[from] DistError),
    #[error(transparent)]
    Storage(#[from] StorageError),
    #[error("libtorch: {0}")]
    Torch(#[from] TchError),
    #[error("initialising parameters: {0}")]
    Init(String),
}

/// Dtypes of the mixed-precision policy.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct MixedPrecision {
    /// Dtype of gathered parameters (and so of the compute).
    pub param: Kind,
    /// Dtype of gradients when reduce-scattered.
    pub reduce: Kind,
}

impl MixedPrecision {
    pub fn fp32() -> Self {
        MixedPrecision { param: Kind::Float, reduce: Kind::Float }
    }
}

#[derive(Clone, Debug, PartialEq)]
pub struct FsdpOptions {
    pub reshard_after_forward: bool,
    pub precision: MixedPrecision,
    pub device: Device,
}

/// A parameter's place in its unit's flat vector.
#[derive(Clone, Debug, PartialEq)]
pub struct FlatParam {
    /// Index in the model's `param_specs()` (same on every rank).
    pub index: usize,
    pub name: String,
    pub shape: Vec<i64>,
    pub offset: i64,
    pub numel: i64,
}

/// `p` as an autograd leaf sharing the storage of `flat` (a gathered flat
/// parameter, detached), so a refill after resharding is what autograd's
/// saved tensors see. What every block's forward does per parameter of
/// each unit covering it (calibrate times it).
pub(crate) fn param_leaf(flat: &Tensor, p: &FlatParam) -> Result<Tensor, TchError> {
    Ok(flat.f_narrow(0, p.offset, p.numel)?.f_view(p.shape.as_slice())?.set_requires_grad(true))
}

/// Adds one parameter's gradient `g` into `acc` (a unit's unsharded
/// gradient, in the reduce dtype) at `offset`: what every block's backward
/// does per parameter gradient it returns (calibrate times it).
pub(crate) fn add_grad_at(acc: &Tensor, offset: i64, g: &Tensor) -> Result<(), TchError> {
    let mut slot = acc.f_narrow(0, offset, g.numel() as i64)?;
    let _ = slot.f_add_(&g.f_reshape([-1])?.f_to_kind(acc.kind())?)?;
    Ok(())
}

enum Gather<'pg> {
    Free,
    Pending(Work<'pg>),
    Ready,
}

/// A unit's BN affine parameters kept in fp32 beside its compute-dtype
/// flat (VISSL keeps every BN layer its own fp32 unit). Gathered: each
/// rank writes the fp32 master values of the BN elements in its shard into
/// a zero vector of all of them, and a sum over the shard group fills it
/// (every element has one owner, so the sum is exact). An all-reduce, not
/// an all-gather: BN elements sit in few ranks' shards, and equal-sized
/// all-gather slices would be as large as the fullest one on every rank.
/// Reduced: their gradients are summed in fp32 over every rank, and each
/// rank adds its shard's elements into its fp32 shard gradient.
struct Exact<'pg> {
    /// This rank's shard positions of its BN elements...
    src: Tensor,
    /// ...and their positions among the unit's BN elements (flat order).
    dst: Tensor,
    /// BN elements of the unit.
    len: i64,
    /// The gathered fp32 values, while the unit is gathered.
    values: Option<Tensor>,
    pending: Option<(Work<'pg>, Tensor)>,
    /// A BN parameter's flat offset -> its offset in `values` (and in `grad`).
    by_offset: HashMap<i64, i64>,
    /// Their fp32 gradient over the unit's backward, then being summed.
    grad: Option<Tensor>,
    reducing: Option<Work<'pg>>,
}

struct Unit<'pg> {
    name: String,
    params: Vec<FlatParam>,
    numel: i64,
    padded: i64,
    shard_len: i64,
    /// Dtype of the gathered flat (fp32 for units holding the prototypes).
    dtype: Kind,
    /// fp32 master shard `[shard_len]` and its gradient.
    master: Tensor,
    grad: Tensor,
    /// Gathered flat parameter `[padded]`: a leaf requiring grad whose
    /// storage is freed when resharded.
    flat: Tensor,
    state: Gather<'pg>,
    /// Unsharded gradient accumulated over the unit's blocks (reduce dtype).
    grad_acc: Option<Tensor>,
    /// The gradient on its way to the shard gradient: being reduced over
    /// the ranks, or reduced and waiting to be added.
    reducing: Option<Reducing<'pg>>,
    /// Block indices using this unit, ascending.
    blocks: Vec<usize>,
    /// BN affine parameters in fp32, where the unit's dtype is not.
    exact: Option<Exact<'pg>>,
}

/// The fp32 side-gather of `params`' BN elements, for a flat sharded in
/// slices of `shard_len` (`rank`'s is here).
fn exact_gather<'pg>(params: &[FlatParam], shard_len: i64, rank: i64, device: Device) -> Result<Option<Exact<'pg>>, TchError> {
    let (lo, hi) = (rank * shard_len, (rank + 1) * shard_len);
    let (mut src, mut dst, mut len) = (Vec::new(), Vec::new(), 0i64);
    let mut by_offset = HashMap::new();
    for p in params.iter().filter(|p| is_batch_norm_param(&p.name)) {
        by_offset.insert(p.offset, len);
        for i in p.offset.max(lo)..(p.offset + p.numel).min(hi) {
            src.push(i - lo);
            dst.push(len + i - p.offset);
        }
        len += p.numel;
    }
    if len == 0 {
        return Ok(None);
    }
    Ok(Some(Exact {
        src: Tensor::f_from_slice(&src)?.f_to_device(device)?,
        dst: Tensor::f_from_slice(&dst)?.f_to_device(device)?,
        len,
        values: None,
        pending: None,
        by_offset,
        grad: None,
        reducing: None,
    }))
}

/// A unit's gradient between its backward and its shard: the buffer it is
/// reduced in (the reduce-scatter's output shard, or the whole gradient
/// when nothing scatters it) and the collective writing it.
struct Reducing<'pg> {
    buf: Tensor,
    work: Option<Work<'pg>>,
}

/// Sharded parameters of the whole model on one rank.
pub struct Fsdp<'pg> {
    groups: &'pg RankGroups,
    /// This rank's index in its shard group.
    shard_rank: i64,
    opts: FsdpOptions,
    units: Vec<Unit<'pg>>,
    /// Units used by each block (block order of the model).
    block_units: Vec<Vec<usize>>,
}

/// Maps each parameter to its unit (`runspec::units`, the plan's rule):
/// `(unit names in order, unit of param i)`; the implicit `root` unit comes
/// last and only if it holds parameters.
pub(crate) fn assign_units(specs: &[ParamSpec], units: &[UnitSpec]) -> Result<(Vec<String>, Vec<usize>), FsdpError> {
    let names: Vec<&str> = specs.iter().map(|p| p.name.as_str()).collect();
    let plan: Vec<(String, Vec<String>)> = units.iter().map(|u| (u.name.clone(), u.members.clone())).collect();
    let o = runspec::units::assign(&names, &plan)?;
    Ok((o.names, o.owner))
}

/// A block's parameters for one forward: by name for the model, and as
/// autograd leaves with their place in the units' flat parameters.
pub struct BlockParams {
    pub by_name: HashMap<String, Tensor>,
    pub leaves: Vec<ParamLeaf>,
}

pub struct ParamLeaf {
    pub unit: usize,
    pub offset: i64,
    pub tensor: Tensor,
}

impl ParamLeaf {
    /// The same leaf (shares the tensor and its autograd identity).
    pub fn shallow_clone(&self) -> ParamLeaf {
        ParamLeaf { unit: self.unit, offset: self.offset, tensor: self.tensor.shallow_clone() }
    }
}

/// Every unit's parameters in its flat vector, in unit order: what
/// [`Fsdp::new`] lays out, and what a checkpoint's shards hold (resuming
/// under other units re-cuts them by these offsets).
pub(crate) fn flat_layout(specs: &[ParamSpec], units: &[UnitSpec]) -> Result<Vec<(String, Vec<FlatParam>)>, FsdpError> {
    let (names, owner) = assign_units(specs, units)?;
    Ok(names
        .into_iter()
        .enumerate()
        .map(|(ui, name)| {
            let mut offset = 0i64;
            let params = specs
                .iter()
                .enumerate()
                .filter(|(pi, _)| owner[*pi] == ui)
                .map(|(pi, p)| {
                    offset += p.numel();
                    FlatParam { index: pi, name: p.name.clone(), shape: p.shape.clone(), offset: offset - p.numel(), numel: p.numel() }
                })
                .collect();
            (name, params)
        })
        .collect())
}

impl<'pg> Fsdp<'pg> {
    /// Shards the model over `groups`' shard group. `blocks` are the
    /// model's block names in forward order; `init` gives a parameter's
    /// initial fp32 value (every rank must produce the same values; only
    /// this rank's slice is kept).
    pub fn new(
        groups: &'pg RankGroups,
        specs: &[ParamSpec],
        blocks: &[String],
        units: &[UnitSpec],
        opts: FsdpOptions,
        init: &mut dyn FnMut(&ParamSpec) -> Result<Tensor, String>,
    ) -> Result<Fsdp<'pg>, FsdpError> {
        let layout = flat_layout(specs, units)?;
        let (rank, world) = groups.shard_rank_and_size();
        let (rank, world) = (rank as i64, world as i64);
        let block_index: HashMap<&str, usize> = blocks.iter().enumerate().map(|(i, b)| (b.as_str(), i)).collect();
        let mut out_units = Vec::with_capacity(layout.len());
        let mut block_units: Vec<Vec<usize>> = vec![Vec::new(); blocks.len()];
        for (ui, (uname, params)) in layout.into_iter().enumerate() {
            let mut ublocks: Vec<usize> = Vec::new();
            for fp in &params {
                let p = &specs[fp.index];
                let b =
                    *block_index.get(p.block.as_str()).ok_or_else(|| FsdpError::Init(format!("parameter `{}` names unknown block `{}`", p.name, p.block)))?;
                if !ublocks.contains(&b) {
                    ublocks.push(b);
                }
            }
            let offset: i64 = params.iter().map(|p| p.numel).sum();
            ublocks.sort_unstable();
            for &b in &ublocks {
                block_units[b].push(ui);
            }
            let numel = offset;
            let padded = (numel + world - 1) / world * world;
            let shard_len = padded / world;
            // Prototypes stay fp32 whatever the compute dtype (SEER).
            let dtype = if params.iter().any(|p| p.name.starts_with("head.proto.")) { Kind::Float } else { opts.precision.param };
            // Build this rank's slice of the fp32 flat one parameter at a
            // time, so no rank ever holds a whole unit in fp32.
            let master = Tensor::f_zeros([shard_len], (Kind::Float, opts.device))?;
            let (lo, hi) = (rank * shard_len, (rank + 1) * shard_len);
            for fp in &params {
                let (a, b) = (fp.offset.max(lo), (fp.offset + fp.numel).min(hi));
                if a >= b {
                    continue;
                }
                let v = init(&specs[fp.index]).map_err(FsdpError::Init)?;
                if v.size() != fp.shape {
                    return Err(FsdpError::InitShape { name: fp.name.clone(), got: v.size(), want: fp.shape.clone() });
                }
                let v = v.f_to_kind(Kind::Float)?.f_reshape([-1])?.f_narrow(0, a - fp.offset, b - a)?;
                master.f_narrow(0, a - lo, b - a)?.f_copy_(&v.f_to_device(opts.device)?)?;
            }
            let grad = master.f_zeros_like()?;
            let flat = Tensor::f_zeros([padded], (dtype, opts.device))?.set_requires_grad(true);
            if padded > 0 {
                storage::free(&flat)?;
            }
            let exact = if dtype == Kind::Float { None } else { exact_gather(&params, shard_len, rank, opts.device)? };
            out_units.push(Unit {
                name: uname,
                params,
                numel,
                padded,
                shard_len,
                dtype,
                master,
                grad,
                flat,
                state: Gather::Free,
                grad_acc: None,
                reducing: None,
                blocks: ublocks,
                exact,
            });
        }
        Ok(Fsdp { groups, shard_rank: rank, opts, units: out_units, block_units })
    }

    pub fn options(&self) -> &FsdpOptions {
        &self.opts
    }
    pub fn groups(&self) -> &'pg RankGroups {
        self.groups
    }
    /// Units whose parameters `block` uses.
    pub fn units_of_block(&self, block: usize) -> &[usize] {
        &self.block_units[block]
    }
    /// Which units each block needs, for compiling the step schedule.
    pub fn layout(&self) -> runspec::schedule::Layout {
        let blocks: Vec<Vec<usize>> = self.units.iter().map(|u| u.blocks.clone()).collect();
        runspec::schedule::Layout::new(self.block_units.len(), &blocks)
    }

    /// Starts gathering `u` (no-op if gathered or in flight).
    pub fn prefetch(&mut self, u: usize) -> Result<(), FsdpError> {
        let unit = &mut self.units[u];
        if !matches!(unit.state, Gather::Free) || unit.padded == 0 {
            if unit.padded == 0 {
                unit.state = Gather::Ready;
            }
            return Ok(());
        }
        let bytes = Bytes(unit.padded as u64 * unit.dtype.elt_size_in_bytes() as u64);
        storage::refill(&unit.flat, bytes)?;
        let shard = if unit.dtype == Kind::Float { unit.master.shallow_clone() } else { unit.master.f_to_kind(unit.dtype)? };
        if let Some(ex) = unit.exact.as_mut() {
            let mut values = Tensor::f_zeros([ex.len], (Kind::Float, self.opts.device))?;
            let _ = values.f_index_copy_(0, &ex.dst, &unit.master.f_index_select(0, &ex.src)?)?;
            match self.groups.shard() {
                Some(g) => ex.pending = Some((g.all_reduce(&values, ReduceOp::Sum)?, values)),
                None => ex.values = Some(values),
            }
        }
        unit.state = match self.groups.shard() {
            Some(g) => Gather::Pending(g.all_gather_into(&unit.flat, &shard)?),
            None => {
                // The whole vector is here: a cast into the gathered storage,
                // as the backend writes it (outside autograd).
                unit.flat.f_data()?.f_copy_(&shard)?;
                Gather::Ready
            }
        };
        Ok(())
    }

    /// Makes sure `u` is gathered, waiting for an in-flight prefetch.
    pub fn gather(&mut self, u: usize) -> Result<(), FsdpError> {
        self.prefetch(u)?;
        let unit = &mut self.units[u];
        if let Gather::Pending(_) = unit.state {
            if let Gather::Pending(w) = std::mem::replace(&mut unit.state, Gather::Ready) {
                w.wait()?;
            }
        }
        if let Some(ex) = unit.exact.as_mut() {
            if let Some((w, values)) = ex.pending.take() {
                w.wait()?;
                ex.values = Some(values);
            }
        }
        Ok(())
    }

    /// Releases `u`'s gathered storage (its views stay valid as metadata).
    pub fn free(&mut self, u: usize) -> Result<(), FsdpError> {
        let unit = &mut self.units[u];
        match std::mem::replace(&mut unit.state, Gather::Free) {
            Gather::Free => return Ok(()),
            Gather::Pending(w) => w.wait()?,
            Gather::Ready => {}
        }
        if let Some(ex) = unit.exact.as_mut() {
            if let Some((w, _)) = ex.pending.take() {
                w.wait()?;
            }
            ex.values = None;
        }
        if unit.padded > 0 {
            storage::free(&unit.flat)?;
        }
        Ok(())
    }

    /// The gathered flat parameter of `u` (a leaf requiring grad).
    pub fn flat(&self, u: usize) -> Result<&Tensor, FsdpError> {
        let unit = &self.units[u];
        match unit.state {
            Gather::Ready => Ok(&unit.flat),
            _ => Err(FsdpError::NotGathered { unit: unit.name.clone() }),
        }
    }

    /// Every parameter of the units of `block` (all must be gathered) as a
    /// leaf that shares the gathered flat storage, so a refill after
    /// resharding is seen by autograd's saved tensors. Backward asks for the
    /// gradients of these leaves, not of the flat parameter: a view's
    /// gradient w.r.t. its base is a zero-filled flat-sized tensor per
    /// parameter, which costs O(parameters x unit size).
    pub fn block_params(&self, block: usize) -> Result<BlockParams, FsdpError> {
        let mut by_name = HashMap::new();
        let mut leaves = Vec::new();
        for &u in &self.block_units[block] {
            let flat = self.flat(u)?.f_detach()?;
            let exact = self.units[u].exact.as_ref().and_then(|ex| ex.values.as_ref().map(|v| (v, &ex.by_offset)));
            for p in &self.units[u].params {
                let leaf = match exact.and_then(|(v, at)| at.get(&p.offset).map(|&o| (v, o))) {
                    // BN's affine parameters: the fp32 values, a leaf of their own.
                    Some((v, o)) => v.f_narrow(0, o, p.numel)?.f_view(p.shape.as_slice())?.f_detach()?.set_requires_grad(true),
                    None => param_leaf(&flat, p)?,
                };
                by_name.insert(p.name.clone(), leaf.shallow_clone());
                leaves.push(ParamLeaf { unit: u, offset: p.offset, tensor: leaf });
            }
        }
        Ok(BlockParams { by_name, leaves })
    }

    /// Adds the gradient of one parameter (at `offset` in `u`'s flat
    /// parameter) into `u`'s unsharded gradient, in the reduce dtype.
    pub fn accumulate_param_grad(&mut self, u: usize, offset: i64, g: &Tensor) -> Result<(), FsdpError> {
        let reduce = self.opts.precision.reduce;
        let device = self.opts.device;
        let unit = &mut self.units[u];
        if offset < 0 || offset + g.numel() as i64 > unit.padded {
            return Err(FsdpError::GradShape { unit: unit.name.clone(), got: offset + g.numel() as i64, want: unit.padded });
        }
        if let Some(ex) = unit.exact.as_mut() {
            if let Some(&at) = ex.by_offset.get(&offset) {
                if ex.grad.is_none() {
                    ex.grad = Some(Tensor::f_zeros([ex.len], (Kind::Float, device))?);
                }
                if let Some(acc) = &ex.grad {
                    add_grad_at(acc, at, g)?;
                }
                return Ok(());
            }
        }
        if unit.grad_acc.is_none() {
            unit.grad_acc = Some(Tensor::f_zeros([unit.padded], (reduce, device))?);
        }
        if let Some(acc) = &unit.grad_acc {
            add_grad_at(acc, offset, g)?;
        }
        Ok(())
    }

    fn unit_error(&self, u: usize, event: &'static str) -> FsdpError {
        FsdpError::OutOfOrder { unit: self.units[u].name.clone(), event }
    }

    /// `u`'s gradient is complete: free its gathered parameters.
    pub fn grad_ready(&mut self, u: usize) -> Result<(), FsdpError> {
        self.free(u)?;
        // BN's fp32 gradients: summed over every rank (shard group and
        // replicas at once) while the rest of the unit's is reduced.
        let world = self.groups.world_group();
        if let Some(ex) = self.units[u].exact.as_mut() {
            if let (Some(g), true) = (&ex.grad, world.world_size() > 1) {
                ex.reducing = Some(world.all_reduce(g, ReduceOp::Sum)?);
            }
        }
        Ok(())
    }

    /// Starts reduce-scattering `u`'s gradient (sum) within the shard
    /// group; the backend holds the unsharded gradient until it is done.
    pub fn reduce_scatter(&mut self, u: usize) -> Result<(), FsdpError> {
        let g = self.groups.shard().ok_or_else(|| self.unit_error(u, "reduce-scatter without a shard group"))?;
        let reduce = self.opts.precision.reduce;
        let unit = &mut self.units[u];
        let Some(acc) = unit.grad_acc.take() else { return Ok(()) };
        let buf = Tensor::f_empty([unit.shard_len], (reduce, self.opts.device))?;
        let work = g.reduce_scatter(&buf, &acc, ReduceOp::Sum)?;
        drop(acc); // the Work holds it until done
        unit.reducing = Some(Reducing { buf, work: Some(work) });
        Ok(())
    }

    /// Waits for the collective reducing `u`'s gradient (its reduce-scatter
    /// or its all-reduce).
    fn wait_reduction(&mut self, u: usize) -> Result<(), FsdpError> {
        if let Some(w) = self.units[u].reducing.as_mut().and_then(|r| r.work.take()) {
            w.wait()?;
        }
        Ok(())
    }

    /// Waits for `u`'s reduce-scatter: the unsharded gradient is freed.
    pub fn wait_reduce_scatter(&mut self, u: usize) -> Result<(), FsdpError> {
        self.wait_reduction(u)
    }

    /// Starts all-reducing (sum) `u`'s gradient shard across replicas: the
    /// scattered shard, or the whole gradient where nothing scattered it.
    pub fn all_reduce(&mut self, u: usize) -> Result<(), FsdpError> {
        let g = self.groups.replica().ok_or_else(|| self.unit_error(u, "all-reduce without replicas"))?;
        let unit = &mut self.units[u];
        if unit.reducing.is_none() {
            let Some(acc) = unit.grad_acc.take() else { return Ok(()) };
            unit.reducing = Some(Reducing { buf: acc, work: None });
        }
        let Some(r) = unit.reducing.as_mut() else { return Ok(()) };
        if r.work.is_some() {
            return Err(FsdpError::OutOfOrder { unit: unit.name.clone(), event: "all-reduce before its reduce-scatter was waited for" });
        }
        r.work = Some(g.all_reduce(&r.buf, ReduceOp::Sum)?);
        Ok(())
    }

    /// Waits for `u`'s all-reduce.
    pub fn wait_all_reduce(&mut self, u: usize) -> Result<(), FsdpError> {
        self.wait_reduction(u)
    }

    /// Adds `u`'s reduced gradient into its fp32 shard gradient and frees
    /// the buffer (every collective on it has been waited for).
    pub fn shard_grad(&mut self, u: usize) -> Result<(), FsdpError> {
        let unit = &mut self.units[u];
        if let Some(ex) = unit.exact.as_mut() {
            if let Some(w) = ex.reducing.take() {
                w.wait()?;
            }
            if let Some(g) = ex.grad.take() {
                let _g = tch::no_grad_guard();
                let _ = unit.grad.f_index_add_(0, &ex.src, &g.f_index_select(0, &ex.dst)?)?;
            }
        }
        let buf = match unit.reducing.take() {
            Some(Reducing { work: Some(_), .. }) => {
                return Err(FsdpError::OutOfOrder { unit: unit.name.clone(), event: "shard gradient before its reduction was waited for" })
            }
            Some(Reducing { buf, work: None }) => buf,
            None => match unit.grad_acc.take() {
                Some(acc) => acc,
                None => return Ok(()),
            },
        };
        if unit.shard_len > 0 {
            let _g = tch::no_grad_guard();
            let _ = unit.grad.f_add_(&buf.f_to_kind(Kind::Float)?)?;
        }
        Ok(())
    }

    /// Frees every gathered unit (end of step).
    pub fn free_all(&mut self) -> Result<(), FsdpError> {
        for u in 0..self.units.len() {
            self.free(u)?;
        }
        Ok(())
    }

    pub fn zero_grad(&mut self) -> Result<(), FsdpError> {
        for u in &mut self.units {
            let _ = u.grad.f_zero_()?;
            u.grad_acc = None;
            u.reducing = None;
        }
        Ok(())
    }

    /// The shards as the optimiser sees them: each piece of a shard is a
    /// slice of one parameter (padding belongs to none).
    pub fn shards(&self) -> Vec<FlatShard> {
        let rank = self.shard_rank;
        self.units
            .iter()
            .map(|u| {
                let (lo, hi) = (rank * u.shard_len, (rank + 1) * u.shard_len);
                let pieces = u
                    .params
                    .iter()
                    .filter_map(|p| {
                        let (a, b) = (p.offset.max(lo), (p.offset + p.numel).min(hi));
                        (a < b).then_some(Piece { param: p.index, start: a - lo, len: b - a })
                    })
                    .collect();
                FlatShard { param: u.master.shallow_clone(), grad: u.grad.shallow_clone(), pieces }
            })
            .collect()
    }

    /// This rank's slice of parameter `name`: `(master slice, offset of the
    /// slice within the flattened parameter)`, or None if it owns none of it.
    pub fn local_slice(&self, name: &str) -> Result<Option<(Tensor, i64)>, FsdpError> {
        let rank = self.shard_rank;
        for u in &self.units {
            if let Some(p) = u.params.iter().find(|p| p.name == name) {
                let (lo, hi) = (rank * u.shard_len, (rank + 1) * u.shard_len);
                let (a, b) = (p.offset.max(lo), (p.offset + p.numel).min(hi));
                if a >= b {
                    return Ok(Some((u.master.f_narrow(0, 0, 0)?, 0)));
                }
                return Ok(Some((u.master.f_narrow(0, a - lo, b - a)?, a - p.offset)));
            }
        }
        Ok(None)
    }

    /// Every parameter in fp32, gathered from the shard group (collective;
    /// for tests, evaluation and export; needs the whole model in memory).
    pub fn full_params(&self) -> Result<Vec<(String, Tensor)>, FsdpError> {
        self.gather_per_param(|u| &u.master)
    }

    /// Master shards (name = unit name) for checkpoints.
    pub fn master_shards(&self) -> Vec<(String, Tensor)> {
        self.units.iter().map(|u| (u.name.clone(), u.master.shallow_clone())).collect()
    }

    /// Every parameter's fp32 gradient gathered from the shard group (collective).
    pub fn full_grads(&self) -> Result<Vec<(String, Tensor)>, FsdpError> {
        self.gather_per_param(|u| &u.grad)
    }

    /// All-gathers the fp32 shard `shard(unit)` of every unit and cuts it
    /// into named parameters on the CPU.
    fn gather_per_param(&self, shard: impl for<'a> Fn(&'a Unit<'pg>) -> &'a Tensor) -> Result<Vec<(String, Tensor)>, FsdpError> {
        let mut out = Vec::new();
        for u in &self.units {
            if u.padded == 0 {
                continue;
            }
            let full = match self.groups.shard() {
                Some(g) => {
                    let full = Tensor::f_empty([u.padded], (Kind::Float, self.opts.device))?;
                    g.all_gather_into_tensor(&full, shard(u))?;
                    full
                }
                None => shard(u).f_detach_copy()?,
            };
            for p in &u.params {
                out.push((p.name.clone(), full.f_narrow(0, p.offset, p.numel)?.f_view(p.shape.as_slice())?.f_to_device(Device::Cpu)?));
            }
        }
        Ok(out)
    }

    /// Restores master shards saved by [`Fsdp::master_shards`].
    pub fn load_master_shards(&mut self, saved: &[(String, Tensor)]) -> Result<(), FsdpError> {
        let _g = tch::no_grad_guard();
        for u in &mut self.units {
            let src = saved.iter().find(|(n, _)| *n == u.name).map(|(_, t)| t).ok_or_else(|| FsdpError::ShardShape {
                unit: u.name.clone(),
                got: 0,
                want: u.shard_len,
            })?;
            if src.numel() as i64 != u.shard_len {
                return Err(FsdpError::ShardShape { unit: u.name.clone(), got: src.numel() as i64, want: u.shard_len });
            }
            u.master.f_copy_(&src.f_to_device(self.opts.device)?.f_to_kind(Kind::Float)?)?;
        }
        Ok(())
    }

    /// Multiplies every shard gradient by `k` (loss-scale unscaling).
    pub fn scale_grads(&mut self, k: f64) -> Result<(), FsdpError> {
        let _g = tch::no_grad_guard();
        for u in &mut self.units {
            let _ = u.grad.f_mul_scalar_(k)?;
        }
        Ok(())
    }

    /// Total elements per unit: `(name, numel, padded)` for reports.
    pub fn unit_sizes(&self) -> Vec<(String, i64, i64)> {
        self.units.iter().map(|u| (u.name.clone(), u.numel, u.padded)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Init;

    fn spec(name: &str, block: &str) -> ParamSpec {
        ParamSpec { name: name.into(), shape: vec![2], block: block.into(), init: Init::Zeros }
    }
    fn unit(name: &str, members: &[&str]) -> UnitSpec {
        UnitSpec { name: name.into(), members: members.iter().map(|m| m.to_string()).collect() }
    }

    #[test]
    fn longest_member_wins_and_the_rest_goes_to_root() {
        let specs = [
            spec("stem.conv.weight", "stem"),
            spec("s4.b0.a.weight", "s4.b0"),
            spec("s4.b0.b.weight", "s4.b0"),
            spec("s4.b0.b_bn.weight", "s4.b0"),
            spec("s4.b10.a.weight", "s4.b10"),
            spec("head.proto.weight", "head.proto"),
        ];
        // VISSL's rule: a big conv is its own unit inside its block's unit.
        let units = [unit("s4.b0.b", &["s4.b0.b"]), unit("s4.b0", &["s4.b0"]), unit("head", &["head.proto"])];
        let (names, owner) = assign_units(&specs, &units).unwrap();
        assert_eq!(names, ["s4.b0.b", "s4.b0", "head", "root"]);
        // `s4.b0.b_bn` is not under `s4.b0.b` (prefix on `.` boundaries only),
        // and `s4.b10` is not under `s4.b0`.
        assert_eq!(owner, [3, 1, 0, 1, 3, 2]);
    }

    #[test]
    fn bad_unit_lists_are_named_errors() {
        let specs = [spec("s1.b0.a.weight", "s1.b0")];
        let e = assign_units(&specs, &[unit("x", &["s9.b0"])]).unwrap_err();
        assert!(e.to_string().contains("`s9.b0`") && e.to_string().contains("`x`"), "{e}");
        let e = assign_units(&specs, &[unit("x", &["s1.b0"]), unit("y", &["s1.b0"])]).unwrap_err();
        assert!(matches!(e, FsdpError::Units(runspec::units::UnitError::DuplicateMember { .. })), "{e}");
        let e = assign_units(&specs, &[unit("x", &["s1.b0"]), unit("x", &["s1.b0.a"])]).unwrap_err();
        assert!(matches!(e, FsdpError::Units(runspec::units::UnitError::DuplicateUnit(_))), "{e}");
    }
}
