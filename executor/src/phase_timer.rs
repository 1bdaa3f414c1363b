//! Opt-in phase timing (`SEERSCALE_PHASE_TIMES=1`): accumulates wall time
//! per named phase of a step and prints one line per step to stderr.
//! Instrumentation only; a no-op unless the variable is set.
//!
//! On a GPU the host runs ahead of the kernels it queues, so the step's
//! top-level phases ([`add_synced`]) wait for the device before they read
//! the clock: each is then the wall time until its kernels finished. That
//! adds a few synchronisations per step (counted in the metrics'
//! `host_syncs`); nested phases ([`add`]) stay host-side issue times.

use std::cell::RefCell;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Instant;

/// CUDA device the synced phases wait for (-1: none).
static CUDA_DEVICE: AtomicI64 = AtomicI64::new(-1);

/// Makes [`add_synced`] wait for this CUDA device (`None`: CPU).
pub(crate) fn set_cuda_device(device: Option<usize>) {
    CUDA_DEVICE.store(device.map_or(-1, |d| d as i64), Ordering::Relaxed);
}

/// [`add`] after waiting for the GPU's queued kernels (when enabled and a
/// CUDA device is set).
pub(crate) fn add_synced(phase: &'static str, t0: Instant) {
    if !enabled() {
        return;
    }
    let d = CUDA_DEVICE.load(Ordering::Relaxed);
    if d >= 0 {
        crate::op_count::synchronize(tch::Device::Cuda(d as usize));
    }
    add(phase, t0);
}

thread_local! {
    static PHASES: RefCell<Vec<(&'static str, f64)>> = const { RefCell::new(Vec::new()) };
}

pub(crate) fn enabled() -> bool {
    static ON: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *ON.get_or_init(|| std::env::var_os("SEERSCALE_PHASE_TIMES").is_some())
}

/// Adds the time since `t0` to `phase` (when enabled).
pub fn add(phase: &'static str, t0: Instant) {
    if !enabled() {
        return;
    }
    let dt = t0.elapsed().as_secs_f64();
    PHASES.with(|p| {
        let mut p = p.borrow_mut();
        match p.iter_mut().find(|(n, _)| *n == phase) {
            Some(e) => e.1 += dt,
            None => p.push((phase, dt)),
        }
    });
}

/// Prints and clears the step's phases.
pub(crate) fn flush(rank: usize, step: u64) {
    if !enabled() {
        return;
    }
    PHASES.with(|p| {
        let mut p = p.borrow_mut();
        let s: Vec<String> = p.iter().map(|(n, t)| format!("{n}={:.2}", t * 1e3)).collect();
        eprintln!("phase-times rank={rank} step={step} {}", s.join(" "));
        p.clear();
    });
}
