//! Measured memory: on CPU a counting wrapper around c10's CPU allocator
//! (installed once per process, before the tensors we want to count are
//! made); on GPU the CUDA caching allocator's own statistics. Also the
//! process's resident host memory, where /proc says it.

use crate::dist::last_error;
use cost_models::Bytes;

mod ffi {
    use std::ffi::c_int;
    extern "C" {
        pub fn ssc_cpu_mem_install() -> c_int;
        pub fn ssc_cpu_mem_current() -> i64;
        pub fn ssc_cpu_mem_peak() -> i64;
        pub fn ssc_cpu_mem_reset_peak();
        pub fn ssc_cuda_mem_stats(device: c_int, current: *mut i64, peak: *mut i64) -> c_int;
        pub fn ssc_cuda_mem_reset_peak(device: c_int) -> c_int;
        pub fn ssc_cuda_describe(device: c_int, buf: *mut std::ffi::c_char, len: c_int) -> c_int;
    }
}

#[derive(Debug, thiserror::Error)]
pub enum MemError {
    #[error("cannot install the counting CPU allocator: {0}")]
    Install(String),
    #[error("CUDA memory statistics of device {device}: {msg}")]
    Cuda { device: usize, msg: String },
}

/// Which allocator to read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MemDevice {
    Cpu,
    Cuda(usize),
}

impl MemDevice {
    pub fn of(device: tch::Device) -> MemDevice {
        match device {
            tch::Device::Cuda(i) => MemDevice::Cuda(i),
            _ => MemDevice::Cpu,
        }
    }
}

/// Routes every later CPU tensor allocation through the counter. Idempotent.
/// Tensors allocated before stay uncounted (their frees are not subtracted).
pub fn install_cpu_counter() -> Result<(), MemError> {
    // SAFETY: the shim guards the installation with call_once.
    if unsafe { ffi::ssc_cpu_mem_install() } != 0 {
        return Err(MemError::Install(last_error()));
    }
    Ok(())
}

/// Bytes currently allocated (and not freed) by counted allocations.
pub fn current(dev: MemDevice) -> Result<Bytes, MemError> {
    Ok(stats(dev)?.0)
}

/// Highest `current` since the last [`reset_peak`].
pub fn peak(dev: MemDevice) -> Result<Bytes, MemError> {
    Ok(stats(dev)?.1)
}

/// `(current, peak)`.
pub fn stats(dev: MemDevice) -> Result<(Bytes, Bytes), MemError> {
    match dev {
        // SAFETY: atomic reads.
        MemDevice::Cpu => unsafe { Ok((Bytes(ffi::ssc_cpu_mem_current().max(0) as u64), Bytes(ffi::ssc_cpu_mem_peak().max(0) as u64))) },
        MemDevice::Cuda(d) => {
            let (mut c, mut p) = (0i64, 0i64);
            // SAFETY: valid out-pointers.
            if unsafe { ffi::ssc_cuda_mem_stats(d as i32, &mut c, &mut p) } != 0 {
                return Err(MemError::Cuda { device: d, msg: last_error() });
            }
            Ok((Bytes(c.max(0) as u64), Bytes(p.max(0) as u64)))
        }
    }
}

/// Restarts peak tracking from the current usage.
pub fn reset_peak(dev: MemDevice) -> Result<(), MemError> {
    match dev {
        // SAFETY: atomic store.
        MemDevice::Cpu => unsafe { ffi::ssc_cpu_mem_reset_peak() },
        MemDevice::Cuda(d) => {
            // SAFETY: plain call.
            if unsafe { ffi::ssc_cuda_mem_reset_peak(d as i32) } != 0 {
                return Err(MemError::Cuda { device: d, msg: last_error() });
            }
        }
    }
    Ok(())
}

/// The GPU and the libraries it runs with, for reports: name, SMs and
/// memory; libtorch, CUDA (headers built against), cuDNN and NCCL versions.
pub fn describe_cuda(device: usize) -> Result<String, MemError> {
    let mut buf = vec![0u8; 512];
    // SAFETY: the shim writes at most `len` bytes, NUL-terminated.
    if unsafe { ffi::ssc_cuda_describe(device as i32, buf.as_mut_ptr().cast(), buf.len() as i32) } != 0 {
        return Err(MemError::Cuda { device, msg: last_error() });
    }
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    Ok(String::from_utf8_lossy(&buf[..end]).into_owned())
}
/// This process's peak resident memory (VmHWM), where /proc has it.
pub fn peak_rss_bytes() -> Option<u64> {
    proc_status_kb("VmHWM:").map(|kb| kb * 1024)
}

/// This process's resident memory now (VmRSS), where /proc has it.
pub(crate) fn rss_bytes() -> Option<u64> {
    proc_status_kb("VmRSS:").map(|kb| kb * 1024)
}

fn proc_status_kb(field: &str) -> Option<u64> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status.lines().find(|l| l.starts_with(field))?;
    line.split_whitespace().nth(1)?.parse().ok()
}
