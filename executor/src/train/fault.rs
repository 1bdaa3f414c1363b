//! Fault injection: a rank that aborts on purpose, as a crash would.

use std::path::PathBuf;

/// `SEERSCALE_FAULT=rank=R,step=S[,once=FILE]` makes rank R abort (as a
/// crash would) when it reaches step S: how the tests and operators check
/// that a dead rank stops the whole job with a clear error instead of a
/// hang. With `once`, only if FILE does not exist yet (it is created), so a
/// restarted job runs through.
pub(super) fn fault_injection(rank: usize, step: u64) {
    let Ok(spec) = std::env::var("SEERSCALE_FAULT") else { return };
    let mut r = None;
    let mut s = None;
    let mut once = None;
    for kv in spec.split(',') {
        match kv.split_once('=') {
            Some(("rank", v)) => r = v.trim().parse::<usize>().ok(),
            Some(("step", v)) => s = v.trim().parse::<u64>().ok(),
            Some(("once", v)) => once = Some(PathBuf::from(v.trim())),
            _ => {}
        }
    }
    if r == Some(rank) && s == Some(step) {
        if let Some(f) = once {
            if std::fs::OpenOptions::new().write(true).create_new(true).open(&f).is_err() {
                return;
            }
        }
        eprintln!("rank {rank}: SEERSCALE_FAULT: aborting at step {step}");
        std::process::abort();
    }
}
