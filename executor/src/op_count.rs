//! What the host does per step, counted rather than timed (a shared CPU's
//! clock is noise; counts are not): the ATen operators this process
//! dispatches (libtorch's RecordFunction hook, `csrc/op_count.cpp`, the
//! same hook `torch.profiler` reads, so PyTorch is counted the same way) and
//! the points where the host waits for the device: every value read back
//! ([`read_back`] and ATen's `item()`) and every explicit device
//! synchronisation ([`synchronize`]). On a CPU run nothing waits, but the
//! same points are counted: they are where a GPU run would.

use crate::dist::last_error;
use std::sync::atomic::{AtomicU64, Ordering};
use tch::{Device, Kind, TchError, Tensor};

mod ffi {
    extern "C" {
        pub fn ssc_op_count_install() -> std::ffi::c_int;
        pub fn ssc_op_count_exclude_thread();
        pub fn ssc_op_count_ops() -> i64;
        pub fn ssc_op_count_scalar_reads() -> i64;
    }
}

/// Host waits made through this module (read-backs and synchronisations).
static WAITS: AtomicU64 = AtomicU64::new(0);

/// Why counting could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot install the ATen op counter: {0}")]
pub struct OpCountError(String);

/// Starts counting ATen ops (idempotent; ops before it are not counted).
pub fn install() -> Result<(), OpCountError> {
    // SAFETY: the shim guards the registration with call_once.
    if unsafe { ffi::ssc_op_count_install() } != 0 {
        return Err(OpCountError(last_error()));
    }
    Ok(())
}

/// Leaves the calling thread's ops out of the count (the loader's workers:
/// their few ops per batch are the input pipeline's, not the step's).
pub fn exclude_this_thread() {
    // SAFETY: sets a thread-local flag.
    unsafe { ffi::ssc_op_count_exclude_thread() }
}

/// Totals since [`install`]; subtract two to get a step's.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct HostCounts {
    /// ATen operators dispatched (0 until [`install`]).
    pub ops: u64,
    /// Times the host waited for (or, on a CPU, would wait for) the device.
    pub syncs: u64,
}

impl HostCounts {
    pub fn now() -> HostCounts {
        // SAFETY: atomic reads.
        let (ops, reads) = unsafe { (ffi::ssc_op_count_ops(), ffi::ssc_op_count_scalar_reads()) };
        HostCounts { ops: ops.max(0) as u64, syncs: reads.max(0) as u64 + WAITS.load(Ordering::Relaxed) }
    }

    /// What happened between `earlier` and `self`.
    pub fn since(self, earlier: HostCounts) -> HostCounts {
        HostCounts { ops: self.ops.saturating_sub(earlier.ops), syncs: self.syncs.saturating_sub(earlier.syncs) }
    }
}

/// `t`'s values on the host as f64, in one device-to-host copy: one
/// synchronisation, counted.
pub fn read_back(t: &Tensor) -> Result<Vec<f64>, TchError> {
    WAITS.fetch_add(1, Ordering::Relaxed);
    let host = t.f_to_device(Device::Cpu)?.f_to_kind(Kind::Double)?.f_reshape([-1])?;
    Vec::<f64>::try_from(&host)
}

/// Waits for every kernel queued on `device` (nothing on a CPU); counted.
pub(crate) fn synchronize(device: Device) {
    if let Device::Cuda(d) = device {
        WAITS.fetch_add(1, Ordering::Relaxed);
        tch::Cuda::synchronize(d as i64);
    }
}
