//! Opt-in phase timing (`SEERSCALE_PHASE_TIMES=1`): accumulates wall time
//! per named phase of a step and prints one line per step to stderr.
//! Instrumentation only; a no-op unless the variable is set.

use std::cell::RefCell;
use std::time::Instant;

thread_local! {
    static PHASES: RefCell<Vec<(&'static str, f64)>> = const { RefCell::new(Vec::new()) };
}

pub fn enabled() -> bool {
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
pub fn flush(rank: usize, step: u64) {
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
