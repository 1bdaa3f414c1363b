//! Freeing and re-filling a tensor's storage in place, as PyTorch FSDP does
//! with `untyped_storage().resize_(0)` / `resize_(n)`: the `StorageImpl` stays
//! the same object, so every view of it (including views autograd saved for
//! backward) sees the new bytes once they are refilled.
//!
//! Between free and refill, reading the tensor is invalid; the FSDP runtime
//! tracks that state (`fsdp::Unsharded`) so it never does.

use crate::dist::last_error;
use cost_models::Bytes;
use std::ffi::{c_int, c_void};
use tch::Tensor;

mod ffi {
    use super::*;
    extern "C" {
        pub fn ssc_storage_free(t: *mut c_void) -> c_int;
        pub fn ssc_storage_refill(t: *mut c_void, nbytes: i64) -> c_int;
        pub fn ssc_storage_nbytes(t: *mut c_void) -> i64;
    }
}

#[derive(Debug, thiserror::Error)]
#[error("storage {op} of a tensor of shape {shape:?}: {msg}")]
pub struct StorageError {
    pub op: &'static str,
    pub shape: Vec<i64>,
    pub msg: String,
}

/// Releases the bytes of `t`'s storage (shared by all its views).
pub fn free(t: &Tensor) -> Result<(), StorageError> {
    // SAFETY: tch's C_tensor is an at::Tensor*; the shim catches exceptions.
    if unsafe { ffi::ssc_storage_free(t.as_ptr() as *mut c_void) } != 0 {
        return Err(StorageError { op: "free", shape: t.size(), msg: last_error() });
    }
    Ok(())
}

/// Gives `t`'s storage a fresh (uninitialised) allocation of `nbytes` from
/// the storage's own allocator (CPU or CUDA caching allocator).
pub fn refill(t: &Tensor, nbytes: Bytes) -> Result<(), StorageError> {
    // SAFETY: as above.
    if unsafe { ffi::ssc_storage_refill(t.as_ptr() as *mut c_void, nbytes.0 as i64) } != 0 {
        return Err(StorageError { op: "refill", shape: t.size(), msg: last_error() });
    }
    Ok(())
}

/// Bytes currently held by `t`'s storage (0 after [`free`]).
pub fn nbytes(t: &Tensor) -> Bytes {
    // SAFETY: as above; -1 on error maps to 0.
    Bytes(unsafe { ffi::ssc_storage_nbytes(t.as_ptr() as *mut c_void) }.max(0) as u64)
}

/// Bytes a contiguous tensor of `t`'s shape and dtype needs.
pub fn full_nbytes(t: &Tensor) -> Bytes {
    Bytes(t.numel() as u64 * t.kind().elt_size_in_bytes() as u64)
}
