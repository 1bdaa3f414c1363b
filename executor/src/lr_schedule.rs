//! Learning-rate schedule per step, as VISSL resolves SEER's: the base rate
//! is given per 256 images and scaled linearly with the global batch
//! (`auto_lr_scaling`); a composite of a linear warm-up and a cosine with
//! `interval_scaling: [rescaled, fixed]`.
//!
//! - The warm-up starts at the base rate scaled by the images of *one node*
//!   (`hydra_config.py`, `resolve_linear_schedule`: 0.15 for SEER 10B's 16 x
//!   8 images) and ends at the peak, over its own interval (rescaled).
//! - On a single node that start is the peak itself, and VISSL drops the
//!   warm-up: the cosine then covers the whole run.
//! - The cosine is evaluated at the run's global progress (fixed): after the
//!   warm-up it continues from where the curve already is, a little below
//!   the peak, instead of restarting at it.

// `!(x > 0.0)` checks are deliberate: they reject NaN as well.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

/// ClassyVision's `CompositeParamScheduler.WHERE_EPSILON`.
const WHERE_EPSILON: f64 = 1e-6;

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid lr schedule `{field}`: {reason}")]
pub struct LrScheduleError {
    pub field: &'static str,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    /// Learning rate for a global batch of 256 (SEER: 0.3).
    pub base_lr_per_256: f64,
    pub global_batch: usize,
    /// Images per node (per-rank batch x ranks on one node): where the
    /// warm-up starts, and whether there is one.
    pub node_batch: usize,
    pub total_steps: u64,
    /// Fraction of the steps spent warming up (SEER: 0.043648).
    pub warmup_fraction: f64,
    /// Final lr as a fraction of the peak (VISSL SwAV: 4.8 -> 0.0048).
    pub final_ratio: f64,
}

impl LrSchedule {
    /// SEER 10B's schedule: 16 images per GPU on nodes of 8.
    pub fn seer(global_batch: usize, total_steps: u64) -> LrSchedule {
        LrSchedule { base_lr_per_256: 0.3, global_batch, node_batch: 16 * 8, total_steps, warmup_fraction: 0.043648, final_ratio: 0.001 }
    }

    pub fn validate(&self) -> Result<(), LrScheduleError> {
        let bad = |field, reason: String| Err(LrScheduleError { field, reason });
        if !(self.base_lr_per_256 > 0.0) {
            return bad("base_lr_per_256", format!("must be > 0, got {}", self.base_lr_per_256));
        }
        if self.global_batch == 0 {
            return bad("global_batch", "must be >= 1".into());
        }
        if self.node_batch == 0 || self.node_batch > self.global_batch {
            return bad("node_batch", format!("must be in 1..={} (the global batch), got {}", self.global_batch, self.node_batch));
        }
        if self.total_steps == 0 {
            return bad("total_steps", "must be >= 1".into());
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) {
            return bad("warmup_fraction", format!("must be in [0, 1), got {}", self.warmup_fraction));
        }
        if !(self.final_ratio >= 0.0) {
            return bad("final_ratio", "must be >= 0".into());
        }
        Ok(())
    }

    /// The peak rate: base * global_batch / 256.
    pub fn peak_lr(&self) -> f64 {
        self.base_lr_per_256 * self.global_batch as f64 / 256.0
    }

    /// Where the warm-up starts: base * node_batch / 256.
    pub fn warmup_start_lr(&self) -> f64 {
        self.base_lr_per_256 * self.node_batch as f64 / 256.0
    }

    /// Whether the run warms up: a warm-up fraction, and a start below the
    /// peak (more than one node).
    pub fn warms_up(&self) -> bool {
        self.warmup_fraction > 0.0 && self.warmup_start_lr() < self.peak_lr()
    }

    /// The rate for (0-based) `step`; steps past the end keep the final rate.
    pub fn lr(&self, step: u64) -> f64 {
        let peak = self.peak_lr();
        let t = (step as f64 / self.total_steps as f64).min(1.0);
        let wf = self.warmup_fraction;
        // ClassyVision's composite scheduler moves on to the next part once
        // `where + 1e-6` passes the part's end.
        if self.warms_up() && t + WHERE_EPSILON <= wf {
            let start = self.warmup_start_lr();
            return start + (peak - start) * t / wf;
        }
        let end = peak * self.final_ratio;
        end + 0.5 * (peak - end) * (1.0 + (std::f64::consts::PI * t).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cosine(peak: f64, t: f64) -> f64 {
        let end = peak * 0.001;
        end + 0.5 * (peak - end) * (1.0 + (std::f64::consts::PI * t).cos())
    }

    #[test]
    fn multi_node_warms_up_from_the_node_batch_then_follows_the_global_cosine() {
        let s = LrSchedule::seer(7936, 1000);
        s.validate().unwrap();
        let peak = 0.3 * 7936.0 / 256.0;
        // SEER 10B: starts at 0.3 x 128 / 256 = 0.15.
        assert!((s.lr(0) - 0.15).abs() < 1e-12);
        assert!((s.lr(20) - (0.15 + (peak - 0.15) * 0.02 / 0.043648)).abs() < 1e-12);
        // After the warm-up: the cosine at global progress, below the peak.
        assert!((s.lr(44) - cosine(peak, 0.044)).abs() < 1e-12);
        assert!(s.lr(44) < peak);
        assert!(s.lr(500) < s.lr(100));
        assert!((s.lr(1000) - peak * 0.001).abs() < 1e-12);
        assert!((s.lr(5000) - peak * 0.001).abs() < 1e-12);
        let mut bad = s.clone();
        bad.warmup_fraction = 1.5;
        assert_eq!(bad.validate().unwrap_err().field, "warmup_fraction");
        bad = s.clone();
        bad.node_batch = 8000;
        assert_eq!(bad.validate().unwrap_err().field, "node_batch");
    }

    #[test]
    fn one_node_drops_the_warm_up_and_never_exceeds_the_peak() {
        // tiny-cpu's shape: 16 images on one node, 0.6 per 256.
        let s = LrSchedule { base_lr_per_256: 0.6, global_batch: 16, node_batch: 16, total_steps: 100, warmup_fraction: 0.1, final_ratio: 0.001 };
        assert!(!s.warms_up());
        let peak = 0.6 * 16.0 / 256.0;
        assert!((s.lr(0) - peak).abs() < 1e-15);
        for step in 0..=100 {
            assert!((s.lr(step) - cosine(peak, step as f64 / 100.0)).abs() < 1e-15);
            assert!(s.lr(step) <= peak);
        }
    }
}
