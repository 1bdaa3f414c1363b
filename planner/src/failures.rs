//! Interruptions at scale, in the plan: a job of `n` GPUs fails `n` times as
//! often as one GPU, so it must checkpoint; checkpoints cost write time and
//! every failure costs a restart plus the work since the last checkpoint.
//! From the checkpoint's size and write bandwidth this computes Young and
//! Daly's interval `sqrt(2 · MTBF_job · C)`, the expected lost time per
//! failure, the goodput (useful share of wall time) and the days and dollars
//! including expected failures.
//!
//! Expected wall time of `W` seconds of work with a checkpoint of `C`
//! seconds after every `τ` seconds of work, restarts of `R` and failures
//! at rate `1/M` (a Poisson process): each segment of `τ` work + `C` write is retried
//! until it completes, which takes `E = (M + R)(e^{(τ+C)/M} − 1)` on
//! average (failures strike while working or writing, not during a
//! restart), so `wall = ⌊W/τ⌋ · E` plus the last, shorter segment. A test
//! checks this against a Monte Carlo simulation of failures.

use cost_models::config::{parse_toml, ConfigError};
use cost_models::graph::{LayerKind, ModelGraph};
use cost_models::Bytes;
use serde::{Deserialize, Serialize};

/// What failures and checkpoints cost, per cluster (the defaults and their
/// sources are in `configs/reliability.toml`).
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Reliability {
    /// Mean GPU-hours between unexpected interruptions of a job, per GPU.
    pub mtbf_gpu_hours: f64,
    /// Checkpoint write bandwidth of one node to shared storage (GB/s).
    pub checkpoint_gb_s_per_node: f64,
    /// Relaunch, rendezvous and checkpoint load after a failure (s).
    pub restart_s: f64,
}

impl Reliability {
    /// The built-in defaults (`configs/reliability.toml`).
    pub fn builtin() -> Reliability {
        parse_toml::<Reliability>(include_str!("../../configs/reliability.toml"), "configs/reliability.toml").expect("built-in reliability parses")
    }

    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |f: &str, why: &str| Err(ConfigError::invalid("reliability", f, why));
        if !(self.mtbf_gpu_hours > 0.0) {
            return bad("mtbf_gpu_hours", "must be > 0");
        }
        if !(self.checkpoint_gb_s_per_node > 0.0) {
            return bad("checkpoint_gb_s_per_node", "must be > 0");
        }
        if !(self.restart_s >= 0.0) {
            return bad("restart_s", "must be >= 0");
        }
        Ok(())
    }
}

/// The failure-aware view of one plan (the plan file's `predicted.failures`).
pub use runspec::plan::PredictedFailures as FailureCosts;

/// Bytes one rank's checkpoint holds: its fp32 parameter shards, the
/// optimiser's `states` per parameter, and the BN running statistics.
pub fn checkpoint_bytes_per_rank(shard_params: u64, states: u64, graph: &ModelGraph) -> Bytes {
    let bn_channels: u64 =
        graph.blocks.iter().flat_map(|b| graph.layers_of(b)).filter(|l| l.kind == LayerKind::BatchNorm && !l.params.is_empty()).map(|l| l.out_shape[1]).sum();
    Bytes(shard_params * 4 * (1 + states) + bn_channels * 2 * 4)
}

/// Expected wall seconds of one segment of `segment_s` (work plus its
/// checkpoint) that is retried from its start after every failure.
fn segment_wall(segment_s: f64, restart_s: f64, mtbf_s: f64) -> f64 {
    (mtbf_s + restart_s) * (segment_s / mtbf_s).exp_m1()
}

/// Expected wall seconds of `work_s` seconds of work checkpointed every
/// `interval_s` (see the module docs).
pub(crate) fn expected_wall(work_s: f64, interval_s: f64, write_s: f64, restart_s: f64, mtbf_s: f64) -> f64 {
    if work_s <= 0.0 {
        return 0.0;
    }
    let full = (work_s / interval_s).floor();
    let last = work_s - full * interval_s;
    let mut wall = full * segment_wall(interval_s + write_s, restart_s, mtbf_s);
    if last > 1e-9 {
        wall += segment_wall(last + write_s, restart_s, mtbf_s);
    }
    wall
}

/// The failure costs of a plan: `world` ranks, `ranks_per_node` on each
/// node, `per_rank` checkpoint bytes, `step_s` per step, `work_days`
/// failure-free, `usd_per_day` for the whole cluster.
pub(crate) fn failure_costs(
    r: &Reliability,
    world: usize,
    ranks_per_node: usize,
    per_rank: Bytes,
    step_s: f64,
    work_days: f64,
    usd_per_day: f64,
) -> FailureCosts {
    let world_f = world.max(1) as f64;
    let write_s = per_rank.0 as f64 * ranks_per_node.clamp(1, world.max(1)) as f64 / (r.checkpoint_gb_s_per_node * 1e9);
    let mtbf_job_s = r.mtbf_gpu_hours * 3600.0 / world_f;
    let step_s = step_s.max(1e-9);
    let tau = (2.0 * mtbf_job_s * write_s).sqrt().max(step_s);
    let steps = (tau / step_s).round().max(1.0);
    let interval_s = steps * step_s;
    let work_s = work_days * 86_400.0;
    let wall = expected_wall(work_s, interval_s, write_s, r.restart_s, mtbf_job_s);
    let goodput = if wall.is_finite() && wall > 0.0 { (work_s / wall).clamp(0.0, 1.0) } else { 0.0 };
    let days = if goodput > 0.0 { work_days / goodput } else { f64::INFINITY };
    FailureCosts {
        checkpoint_bytes_per_rank: per_rank.0,
        checkpoint_bytes: per_rank.0 * world as u64,
        checkpoint_write_s: write_s,
        mtbf_job_hours: mtbf_job_s / 3600.0,
        checkpoint_interval_steps: steps as u64,
        expected_lost_s_per_failure: r.restart_s + (interval_s + write_s) / 2.0,
        expected_failures: wall / mtbf_job_s,
        goodput,
        days_to_train: days,
        cost_usd: days * usd_per_day,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    /// One run with failures: work in segments of `interval` work plus a
    /// checkpoint write, a failure anywhere (exponential inter-arrival over
    /// wall time) costs the restart and the segment so far.
    fn simulate(rng: &mut rand_chacha::ChaCha8Rng, work: f64, interval: f64, write: f64, restart: f64, mtbf: f64) -> f64 {
        let mut wall = 0.0;
        let mut done = 0.0;
        let mut next_failure = -mtbf * (1.0 - rng.gen::<f64>()).ln();
        while done < work - 1e-9 {
            let seg = interval.min(work - done) + write;
            if wall + seg <= next_failure {
                wall += seg;
                done += seg - write;
            } else {
                wall = next_failure + restart;
                next_failure = wall - mtbf * (1.0 - rng.gen::<f64>()).ln();
            }
        }
        wall
    }

    #[test]
    fn expected_wall_matches_a_monte_carlo_simulation_of_failures() {
        let mut rng = rand_chacha::ChaCha8Rng::seed_from_u64(7);
        // A 496-GPU job at the default rate: MTBF ~ 100 h; 5 days of work.
        for &(work_h, mtbf_h, write_s, restart_s) in &[(120.0, 102.0, 60.0, 600.0), (24.0, 5.0, 30.0, 300.0), (10.0, 50.0, 200.0, 100.0)] {
            let (work, mtbf) = (work_h * 3600.0, mtbf_h * 3600.0);
            let tau = (2.0f64 * mtbf * write_s).sqrt();
            let runs = 4000;
            let mean: f64 = (0..runs).map(|_| simulate(&mut rng, work, tau, write_s, restart_s, mtbf)).sum::<f64>() / runs as f64;
            let model = expected_wall(work, tau, write_s, restart_s, mtbf);
            let err = (model - mean) / mean;
            assert!(err.abs() < 0.02, "work {work_h} h, MTBF {mtbf_h} h: model {model:.0} s vs simulated {mean:.0} s ({:+.1} %)", 100.0 * err);
        }
    }

    /// Young/Daly's interval is (close to) the best one: no interval in a
    /// wide range around it loses much less time.
    #[test]
    fn young_daly_is_near_the_optimal_interval() {
        let (work, mtbf, write, restart) = (120.0 * 3600.0, 102.0 * 3600.0, 60.0, 600.0);
        let tau = (2.0f64 * mtbf * write).sqrt();
        let at = |t: f64| expected_wall(work, t, write, restart, mtbf);
        let best = (1..400).map(|k| at(tau * k as f64 / 100.0)).fold(f64::INFINITY, f64::min);
        assert!(at(tau) <= best * 1.002, "Young/Daly {} vs best {best}", at(tau));
        assert!(at(tau / 4.0) > at(tau) && at(tau * 4.0) > at(tau));
    }

    #[test]
    fn more_gpus_fail_more_often_and_checkpoint_more_often() {
        let r = Reliability::builtin();
        assert!((r.mtbf_gpu_hours - 50_700.0).abs() < 1.0);
        let small = failure_costs(&r, 64, 8, Bytes(2 << 30), 3.0, 20.0, 1000.0);
        let big = failure_costs(&r, 512, 8, Bytes(2 << 30), 3.0, 20.0, 1000.0);
        assert!(big.mtbf_job_hours < small.mtbf_job_hours / 7.9);
        assert!(big.checkpoint_interval_steps < small.checkpoint_interval_steps);
        assert!(big.goodput < small.goodput && small.goodput < 1.0 && big.goodput > 0.5);
        assert!(big.days_to_train > 20.0 && (big.cost_usd - big.days_to_train * 1000.0).abs() < 1e-6);
        assert_eq!(big.checkpoint_bytes, 512 * (2 << 30));
    }
}
