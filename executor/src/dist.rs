//! Safe Rust over the c10d shim (`csrc/shim.cpp`): a process group made of
//! PyTorch's own `TCPStore` + `ProcessGroupGloo` (CPU) or `ProcessGroupNCCL`
//! (GPU, when the shim was compiled with CUDA), and the collectives FSDP
//! needs. Every collective is bounded by the group's timeout and reports
//! failures as [`DistError`]; nothing here panics or waits forever.

use std::ffi::{c_char, c_int, c_void, CStr, CString};
use std::ptr::NonNull;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tch::Tensor;

mod ffi {
    use super::*;
    #[repr(C)]
    pub struct SscPg {
        _p: [u8; 0],
    }
    #[repr(C)]
    pub struct SscWork {
        _p: [u8; 0],
    }
    extern "C" {
        pub fn ssc_last_error() -> *const c_char;
        pub fn ssc_pg_new_gloo(host: *const c_char, port: u16, rank: c_int, world: c_int, timeout_ms: i64, out: *mut *mut SscPg) -> c_int;
        pub fn ssc_has_nccl() -> c_int;
        pub fn ssc_pg_new_nccl(host: *const c_char, port: u16, rank: c_int, world: c_int, device: c_int, timeout_ms: i64, out: *mut *mut SscPg) -> c_int;
        pub fn ssc_pg_new_sub(parent: *mut SscPg, prefix: *const c_char, rank: c_int, size: c_int, out: *mut *mut SscPg) -> c_int;
        pub fn ssc_pg_free(pg: *mut SscPg);
        pub fn ssc_all_gather_into(pg: *mut SscPg, out: *mut c_void, inp: *mut c_void, w: *mut *mut SscWork) -> c_int;
        pub fn ssc_reduce_scatter(pg: *mut SscPg, out: *mut c_void, inp: *mut c_void, op: c_int, w: *mut *mut SscWork) -> c_int;
        pub fn ssc_all_reduce(pg: *mut SscPg, t: *mut c_void, op: c_int, w: *mut *mut SscWork) -> c_int;
        pub fn ssc_broadcast(pg: *mut SscPg, t: *mut c_void, root: c_int, w: *mut *mut SscWork) -> c_int;
        pub fn ssc_barrier(pg: *mut SscPg, w: *mut *mut SscWork) -> c_int;
        pub fn ssc_work_wait(w: *mut SscWork, timeout_ms: i64) -> c_int;
        pub fn ssc_work_free(w: *mut SscWork);
        pub fn ssc_sync_batch_norm(
            pg: *mut SscPg,
            input: *mut c_void,
            weight: *mut c_void,
            bias: *mut c_void,
            running_mean: *mut c_void,
            running_var: *mut c_void,
            momentum: f64,
            eps: f64,
            out: *mut *mut c_void,
        ) -> c_int;
    }
}

/// Status codes of the shim (`csrc/shim.h`).
const SSC_OK: c_int = 0;
const SSC_TIMEOUT: c_int = 2;
const SSC_NETWORK: c_int = 3;

/// The shim's message for the last failure on this thread.
pub(crate) fn last_error() -> String {
    // SAFETY: the shim returns a NUL-terminated thread-local buffer that
    // stays valid until the next shim call on this thread; we copy it now.
    unsafe { CStr::from_ptr(ffi::ssc_last_error()).to_string_lossy().into_owned() }
}

#[derive(Debug, thiserror::Error)]
pub enum DistError {
    #[error("rank {rank}/{world}: rendezvous at {addr}:{port} failed (is rank 0 up and the port free?): {msg}")]
    Init { addr: String, port: u16, rank: usize, world: usize, msg: String },
    #[error("rank {rank}: {op} timed out after {timeout:?} (a peer is stuck or died): {msg}")]
    Timeout { op: &'static str, rank: usize, timeout: Duration, msg: String },
    #[error("rank {rank}: {op} failed because a peer disconnected (it probably died): {msg}")]
    PeerLost { op: &'static str, rank: usize, msg: String },
    #[error("rank {rank}: {op} failed: {msg}")]
    Collective { op: &'static str, rank: usize, msg: String },
    #[error("{op}: {msg}")]
    Invalid { op: &'static str, msg: String },
    #[error("NCCL is not available: {0}")]
    Unsupported(String),
}

/// Which c10d backend carries the collectives.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    Gloo,
    /// NCCL on CUDA device `device` (the local rank).
    Nccl {
        device: usize,
    },
}

/// Whether the shim's CUDA/NCCL half was compiled, and if not why:
/// `on`, or `off-<reason>: <detail>` (set by executor/build.rs).
pub const CUDA_SHIM: &str = env!("SEERSCALE_CUDA_SHIM");

/// Whether the shim was compiled with ProcessGroupNCCL.
pub fn nccl_available() -> bool {
    // SAFETY: a pure query.
    unsafe { ffi::ssc_has_nccl() != 0 }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceOp {
    Sum,
    /// Mean over ranks (Gloo lacks it natively; emulated as sum / world).
    Avg,
    Max,
}

impl ReduceOp {
    fn code(self) -> c_int {
        match self {
            ReduceOp::Sum => 0,
            ReduceOp::Avg => 1,
            ReduceOp::Max => 2,
        }
    }
}

/// Where and how to rendezvous.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupConfig {
    pub master_addr: String,
    pub master_port: u16,
    pub rank: usize,
    pub world_size: usize,
    pub backend: Backend,
    /// Bounds the rendezvous and every collective.
    pub timeout: Duration,
}

/// A c10d process group. Not `Sync`: collectives are issued from one thread
/// (the training loop), as c10d requires the same order on every rank.
pub struct ProcessGroup {
    pg: NonNull<ffi::SscPg>,
    /// This rank's index in the group, and the group's size.
    rank: usize,
    world: usize,
    /// The world ranks of the group, in group order (`0..world` for the world).
    members: Vec<usize>,
    /// `world`, or what the subgroup is for (`shard group`, ...), for errors.
    label: String,
    backend: Backend,
    timeout: Duration,
    /// Time spent blocked in `Work::wait` (communication not hidden),
    /// shared with the group's subgroups so one counter sees them all.
    comm_wait: Arc<AtomicU64>,
}

// SAFETY: the c10d objects behind the pointer are heap objects usable from
// any thread; we only need to move the group into a worker thread.
unsafe impl Send for ProcessGroup {}

impl ProcessGroup {
    pub fn new(cfg: &GroupConfig) -> Result<ProcessGroup, DistError> {
        let init_err = |msg: String| DistError::Init { addr: cfg.master_addr.clone(), port: cfg.master_port, rank: cfg.rank, world: cfg.world_size, msg };
        if cfg.world_size == 0 || cfg.rank >= cfg.world_size {
            return Err(init_err(format!("rank {} is not in a world of {}", cfg.rank, cfg.world_size)));
        }
        let host = CString::new(cfg.master_addr.as_str()).map_err(|_| init_err("address contains NUL".into()))?;
        let ms = cfg.timeout.as_millis().max(1) as i64;
        let mut out: *mut ffi::SscPg = std::ptr::null_mut();
        // SAFETY: valid C string and out-pointer; the shim catches all C++ exceptions.
        let rc = unsafe {
            match cfg.backend {
                Backend::Gloo => ffi::ssc_pg_new_gloo(host.as_ptr(), cfg.master_port, cfg.rank as c_int, cfg.world_size as c_int, ms, &mut out),
                Backend::Nccl { device } => {
                    if !nccl_available() {
                        return Err(DistError::Unsupported(format!("this build has no CUDA/NCCL shim ({CUDA_SHIM})")));
                    }
                    // Checked here too (the shim checks again) so a missing GPU
                    // is not reported as a failed rendezvous.
                    let visible = tch::Cuda::device_count().max(0) as usize;
                    if device >= visible {
                        let msg = if visible == 0 {
                            "no CUDA device is visible to this process".to_string()
                        } else {
                            format!("CUDA device {device} does not exist ({visible} visible)")
                        };
                        return Err(DistError::Invalid { op: "NCCL process group", msg });
                    }
                    ffi::ssc_pg_new_nccl(host.as_ptr(), cfg.master_port, cfg.rank as c_int, cfg.world_size as c_int, device as c_int, ms, &mut out)
                }
            }
        };
        if rc != SSC_OK {
            return Err(init_err(last_error()));
        }
        let pg = NonNull::new(out).ok_or_else(|| init_err("shim returned no group".into()))?;
        Ok(ProcessGroup {
            pg,
            rank: cfg.rank,
            world: cfg.world_size,
            members: (0..cfg.world_size).collect(),
            label: "world".into(),
            backend: cfg.backend,
            timeout: cfg.timeout,
            comm_wait: Arc::new(AtomicU64::new(0)),
        })
    }

    /// A group of some of this group's ranks (PyTorch's `new_group`), made
    /// by those ranks only, all passing the same `ranks` (in this group's
    /// numbering) and `label`. Collective over the members.
    pub fn subgroup(&self, label: &str, ranks: &[usize]) -> Result<ProcessGroup, DistError> {
        let me = self.members[self.rank];
        let init_err = |msg: String| DistError::Collective { op: "creating a process subgroup", rank: me, msg: format!("{label} {ranks:?}: {msg}") };
        let rank = ranks.iter().position(|&r| r == self.rank).ok_or_else(|| init_err(format!("rank {} is not a member", self.rank)))?;
        if ranks.iter().any(|&r| r >= self.world) {
            return Err(init_err(format!("ranks must be below {}", self.world)));
        }
        let members: Vec<usize> = ranks.iter().map(|&r| self.members[r]).collect();
        let prefix = format!("{label}/{}", members.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(","));
        let prefix = CString::new(prefix).map_err(|_| init_err("label contains NUL".into()))?;
        let mut out: *mut ffi::SscPg = std::ptr::null_mut();
        // SAFETY: live parent, valid C string and out-pointer; the shim catches all C++ exceptions.
        let rc = unsafe { ffi::ssc_pg_new_sub(self.pg.as_ptr(), prefix.as_ptr(), rank as c_int, ranks.len() as c_int, &mut out) };
        if rc != SSC_OK {
            return Err(init_err(last_error()));
        }
        let pg = NonNull::new(out).ok_or_else(|| init_err("shim returned no group".into()))?;
        Ok(ProcessGroup {
            pg,
            rank,
            world: ranks.len(),
            label: format!("{label} (ranks {})", members.iter().map(|r| r.to_string()).collect::<Vec<_>>().join(",")),
            members,
            backend: self.backend,
            timeout: self.timeout,
            comm_wait: self.comm_wait.clone(),
        })
    }

    /// This rank in the world (not in the group).
    pub fn world_rank(&self) -> usize {
        self.members[self.rank]
    }

    pub fn rank(&self) -> usize {
        self.rank
    }
    pub fn world_size(&self) -> usize {
        self.world
    }
    pub fn backend(&self) -> Backend {
        self.backend
    }
    pub fn timeout(&self) -> Duration {
        self.timeout
    }

    /// Total time spent blocked waiting for collectives since the last call
    /// (and resets it): the communication that computation did not hide.
    pub fn take_comm_time(&self) -> Duration {
        Duration::from_nanos(self.comm_wait.swap(0, Ordering::Relaxed))
    }

    fn err(&self, op: &'static str, rc: c_int) -> DistError {
        let msg = if self.label == "world" { last_error() } else { format!("in the {}: {}", self.label, last_error()) };
        let rank = self.world_rank();
        match rc {
            SSC_TIMEOUT => DistError::Timeout { op, rank, timeout: self.timeout, msg },
            SSC_NETWORK => DistError::PeerLost { op, rank, msg },
            _ => DistError::Collective { op, rank, msg },
        }
    }

    fn check_contiguous(op: &'static str, ts: &[&Tensor]) -> Result<(), DistError> {
        for t in ts {
            if !t.is_contiguous() {
                return Err(DistError::Invalid { op, msg: format!("tensor of shape {:?} is not contiguous", t.size()) });
            }
        }
        if ts.windows(2).any(|w| w[0].kind() != w[1].kind()) {
            return Err(DistError::Invalid { op, msg: format!("dtypes differ: {:?}", ts.iter().map(|t| t.kind()).collect::<Vec<_>>()) });
        }
        Ok(())
    }

    /// A group of one rank: every collective is the identity (a copy for
    /// the out-of-place ones), done here instead of through the backend,
    /// whose calls, thread hand-offs and waits cost a single-rank
    /// `tiny-cpu` step on a 2-core host 3.3–3.8 ms blocked plus more in
    /// every phase (46–56 ms steps before, 36 ms after) for nothing.
    fn alone(&self) -> bool {
        self.world == 1
    }

    /// An already finished collective (see [`Self::alone`]).
    fn done(&self, op: &'static str) -> Work<'_> {
        Work { pg: self, w: None, op, _keep: Vec::new(), avg_of: None }
    }

    /// As the backend writes it: into the storage, invisible to autograd.
    /// The output may be a leaf that requires grad (FSDP's full parameter)
    /// whose views autograd saved; `data()` shares the storage but not the
    /// version counter, so refilling it in backward is not a modification.
    fn copy(&self, op: &'static str, out: &Tensor, input: &Tensor) -> Result<Work<'_>, DistError> {
        out.f_data().and_then(|mut raw| raw.f_copy_(input)).map_err(|e| DistError::Collective { op, rank: self.rank, msg: e.to_string() })?;
        Ok(self.done(op))
    }

    fn work(&self, op: &'static str, rc: c_int, w: *mut ffi::SscWork, keep: Vec<Tensor>, avg: Option<Tensor>) -> Result<Work<'_>, DistError> {
        if rc != SSC_OK {
            return Err(self.err(op, rc));
        }
        let w = NonNull::new(w).ok_or_else(|| DistError::Collective { op, rank: self.rank, msg: "no work handle".into() })?;
        Ok(Work { pg: self, w: Some(w), op, _keep: keep, avg_of: avg })
    }

    /// Gloo has no AVG: reduce with SUM and divide after the wait.
    fn lower(&self, op: ReduceOp) -> ReduceOp {
        if op == ReduceOp::Avg && self.backend == Backend::Gloo {
            ReduceOp::Sum
        } else {
            op
        }
    }

    /// Starts `out = concat over ranks of input` (`out.numel() == world * input.numel()`).
    pub fn all_gather_into(&self, out: &Tensor, input: &Tensor) -> Result<Work<'_>, DistError> {
        const OP: &str = "all_gather_into_tensor";
        Self::check_contiguous(OP, &[out, input])?;
        if out.numel() != input.numel() * self.world {
            return Err(DistError::Invalid { op: OP, msg: format!("output has {} elements, need {} x {}", out.numel(), self.world, input.numel()) });
        }
        if self.alone() {
            return self.copy(OP, out, input);
        }
        let mut w = std::ptr::null_mut();
        // SAFETY: tch's C_tensor is an at::Tensor*; both tensors are kept alive in the Work.
        let rc = unsafe { ffi::ssc_all_gather_into(self.pg.as_ptr(), out.as_ptr() as *mut c_void, input.as_ptr() as *mut c_void, &mut w) };
        self.work(OP, rc, w, vec![out.shallow_clone(), input.shallow_clone()], None)
    }

    /// Starts `out = this rank's chunk of op(input over ranks)`.
    pub fn reduce_scatter(&self, out: &Tensor, input: &Tensor, op: ReduceOp) -> Result<Work<'_>, DistError> {
        const OP: &str = "reduce_scatter_tensor";
        Self::check_contiguous(OP, &[out, input])?;
        if input.numel() != out.numel() * self.world {
            return Err(DistError::Invalid { op: OP, msg: format!("input has {} elements, need {} x {}", input.numel(), self.world, out.numel()) });
        }
        if self.alone() {
            return self.copy(OP, out, input);
        }
        let lowered = self.lower(op);
        let mut w = std::ptr::null_mut();
        // SAFETY: as above.
        let rc = unsafe { ffi::ssc_reduce_scatter(self.pg.as_ptr(), out.as_ptr() as *mut c_void, input.as_ptr() as *mut c_void, lowered.code(), &mut w) };
        let avg = (lowered != op).then(|| out.shallow_clone());
        self.work(OP, rc, w, vec![out.shallow_clone(), input.shallow_clone()], avg)
    }

    /// Starts an in-place all-reduce of `t`.
    pub fn all_reduce(&self, t: &Tensor, op: ReduceOp) -> Result<Work<'_>, DistError> {
        const OP: &str = "all_reduce";
        Self::check_contiguous(OP, &[t])?;
        if self.alone() {
            return Ok(self.done(OP));
        }
        let lowered = self.lower(op);
        let mut w = std::ptr::null_mut();
        // SAFETY: as above.
        let rc = unsafe { ffi::ssc_all_reduce(self.pg.as_ptr(), t.as_ptr() as *mut c_void, lowered.code(), &mut w) };
        let avg = (lowered != op).then(|| t.shallow_clone());
        self.work(OP, rc, w, vec![t.shallow_clone()], avg)
    }

    /// Starts an in-place broadcast of `t` from `root`.
    pub fn broadcast(&self, t: &Tensor, root: usize) -> Result<Work<'_>, DistError> {
        const OP: &str = "broadcast";
        Self::check_contiguous(OP, &[t])?;
        if root >= self.world {
            return Err(DistError::Invalid { op: OP, msg: format!("root {root} not in a world of {}", self.world) });
        }
        if self.alone() {
            return Ok(self.done(OP));
        }
        let mut w = std::ptr::null_mut();
        // SAFETY: as above.
        let rc = unsafe { ffi::ssc_broadcast(self.pg.as_ptr(), t.as_ptr() as *mut c_void, root as c_int, &mut w) };
        self.work(OP, rc, w, vec![t.shallow_clone()], None)
    }

    /// Blocks until every rank reached the barrier (or the timeout).
    pub fn barrier(&self) -> Result<(), DistError> {
        if self.alone() {
            return Ok(());
        }
        let mut w = std::ptr::null_mut();
        // SAFETY: valid group.
        let rc = unsafe { ffi::ssc_barrier(self.pg.as_ptr(), &mut w) };
        self.work("barrier", rc, w, Vec::new(), None)?.wait()
    }

    /// Training-mode batch norm with statistics over every rank of the
    /// group (SyncBN, `csrc/sync_bn.cpp`): an autograd function whose
    /// forward all-reduces per-channel sums and whose backward all-reduces
    /// per-channel gradient sums, both bounded by the group's timeout (a
    /// failure in backward comes out of `run_backward` as an error). Every
    /// rank must call it, and run backward through it, in the same order.
    /// `running`: `(running_mean, running_var, momentum)` updated in place
    /// (fp32) with the global statistics, or None to leave them alone.
    /// Input may be bf16/fp16 with fp32 weight and bias; statistics are fp32
    /// and the output has the input's dtype.
    pub fn sync_batch_norm(&self, x: &Tensor, weight: &Tensor, bias: &Tensor, running: Option<(&Tensor, &Tensor, f64)>, eps: f64) -> Result<Tensor, DistError> {
        const OP: &str = "sync_batch_norm";
        if let Some((_, _, momentum)) = running {
            if !(0.0..=1.0).contains(&momentum) {
                return Err(DistError::Invalid { op: OP, msg: format!("momentum {momentum} is not in [0, 1]") });
            }
        }
        let (rm, rv, momentum) = match running {
            Some((m, v, k)) => (m.as_ptr() as *mut c_void, v.as_ptr() as *mut c_void, k),
            None => (std::ptr::null_mut(), std::ptr::null_mut(), 0.0),
        };
        let mut out: *mut c_void = std::ptr::null_mut();
        // SAFETY: tch's C_tensor is an at::Tensor*; every tensor outlives the
        // call (the autograd graph keeps its own references); the shim
        // catches all C++ exceptions.
        let rc = unsafe {
            ffi::ssc_sync_batch_norm(
                self.pg.as_ptr(),
                x.as_ptr() as *mut c_void,
                weight.as_ptr() as *mut c_void,
                bias.as_ptr() as *mut c_void,
                rm,
                rv,
                momentum,
                eps,
                &mut out,
            )
        };
        if rc != SSC_OK {
            return Err(self.err(OP, rc));
        }
        if out.is_null() {
            return Err(DistError::Collective { op: OP, rank: self.rank, msg: "shim returned no tensor".into() });
        }
        // SAFETY: the shim handed over a fresh heap at::Tensor*, which tch
        // frees (at_free) when the Tensor drops.
        Ok(unsafe { Tensor::from_ptr(out.cast()) })
    }

    // Blocking conveniences.

    pub fn all_gather_into_tensor(&self, out: &Tensor, input: &Tensor) -> Result<(), DistError> {
        self.all_gather_into(out, input)?.wait()
    }
    pub fn reduce_scatter_tensor(&self, out: &Tensor, input: &Tensor, op: ReduceOp) -> Result<(), DistError> {
        self.reduce_scatter(out, input, op)?.wait()
    }
    pub fn all_reduce_(&self, t: &Tensor, op: ReduceOp) -> Result<(), DistError> {
        self.all_reduce(t, op)?.wait()
    }
    pub fn broadcast_(&self, t: &Tensor, root: usize) -> Result<(), DistError> {
        self.broadcast(t, root)?.wait()
    }
}

impl Drop for ProcessGroup {
    fn drop(&mut self) {
        // SAFETY: created by ssc_pg_new_*, freed once. Outstanding `Work`
        // borrows the group, so none can outlive it.
        unsafe { ffi::ssc_pg_free(self.pg.as_ptr()) }
    }
}

/// An in-flight collective. Must be waited on before its tensors are read;
/// dropping it un-waited waits (bounded by the timeout) so the tensors it
/// writes are never freed under it.
#[must_use = "a collective must be waited on"]
pub struct Work<'a> {
    pg: &'a ProcessGroup,
    w: Option<NonNull<ffi::SscWork>>,
    op: &'static str,
    /// Handles that keep the buffers alive while the backend uses them.
    _keep: Vec<Tensor>,
    /// Emulated AVG: divide this tensor by the world size after the wait.
    avg_of: Option<Tensor>,
}

impl Work<'_> {
    pub fn op(&self) -> &'static str {
        self.op
    }

    /// Blocks until done; fails after the group's timeout.
    pub fn wait(mut self) -> Result<(), DistError> {
        self.wait_inner()
    }

    fn wait_inner(&mut self) -> Result<(), DistError> {
        let Some(w) = self.w.take() else { return Ok(()) };
        let start = Instant::now();
        // SAFETY: a live work handle, freed exactly once below.
        let rc = unsafe { ffi::ssc_work_wait(w.as_ptr(), self.pg.timeout.as_millis().max(1) as i64) };
        unsafe { ffi::ssc_work_free(w.as_ptr()) };
        self.pg.comm_wait.fetch_add(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
        if rc != SSC_OK {
            return Err(self.pg.err(self.op, rc));
        }
        if let Some(t) = self.avg_of.take() {
            let mut t = t;
            let _ = t.f_div_scalar_(self.pg.world as f64).map_err(|e| DistError::Collective { op: self.op, rank: self.pg.rank, msg: e.to_string() })?;
        }
        Ok(())
    }
}

impl Drop for Work<'_> {
    fn drop(&mut self) {
        let _ = self.wait_inner();
    }
}

/// A TCP port that was free a moment ago on 127.0.0.1 (for tests and the
/// local launcher; the store binds it right after).
pub fn free_port() -> std::io::Result<u16> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(l.local_addr()?.port())
}
