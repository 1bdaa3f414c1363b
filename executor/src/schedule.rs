//! Learning-rate schedule per step: the base rate is given per 256 images and
//! scaled linearly with the global batch (VISSL auto_lr_scaling), warmed up
//! linearly, then decayed with a cosine (VISSL's composite linear + cosine,
//! SEER fractions 0.043648 / 0.956352).

// `!(x > 0.0)` checks are deliberate: they reject NaN as well.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid lr schedule `{field}`: {reason}")]
pub struct ScheduleError {
    pub field: &'static str,
    pub reason: String,
}

#[derive(Clone, Debug, PartialEq)]
pub struct LrSchedule {
    /// Learning rate for a global batch of 256 (SEER: 0.3).
    pub base_lr_per_256: f64,
    pub global_batch: usize,
    pub total_steps: u64,
    /// Fraction of the steps spent warming up (SEER: 0.043648).
    pub warmup_fraction: f64,
    /// Warm-up start; VISSL starts from the unscaled base value.
    pub warmup_start_lr: f64,
    /// Final lr as a fraction of the peak (VISSL SwAV: 4.8 -> 0.0048).
    pub final_ratio: f64,
}

impl LrSchedule {
    pub fn seer(global_batch: usize, total_steps: u64) -> LrSchedule {
        LrSchedule { base_lr_per_256: 0.3, global_batch, total_steps, warmup_fraction: 0.043648, warmup_start_lr: 0.3, final_ratio: 0.001 }
    }

    pub fn validate(&self) -> Result<(), ScheduleError> {
        let bad = |field, reason: String| Err(ScheduleError { field, reason });
        if !(self.base_lr_per_256 > 0.0) {
            return bad("base_lr_per_256", format!("must be > 0, got {}", self.base_lr_per_256));
        }
        if self.global_batch == 0 {
            return bad("global_batch", "must be >= 1".into());
        }
        if self.total_steps == 0 {
            return bad("total_steps", "must be >= 1".into());
        }
        if !(0.0..1.0).contains(&self.warmup_fraction) {
            return bad("warmup_fraction", format!("must be in [0, 1), got {}", self.warmup_fraction));
        }
        if !(self.warmup_start_lr >= 0.0) || !(self.final_ratio >= 0.0) {
            return bad("warmup_start_lr/final_ratio", "must be >= 0".into());
        }
        Ok(())
    }

    /// The peak rate: base * global_batch / 256.
    pub fn peak_lr(&self) -> f64 {
        self.base_lr_per_256 * self.global_batch as f64 / 256.0
    }

    /// The rate for (0-based) `step`; steps past the end keep the final rate.
    pub fn lr(&self, step: u64) -> f64 {
        let peak = self.peak_lr();
        let end = peak * self.final_ratio;
        let t = (step as f64 / self.total_steps as f64).min(1.0);
        let wf = self.warmup_fraction;
        if t < wf {
            return self.warmup_start_lr + (peak - self.warmup_start_lr) * t / wf;
        }
        // Cosine over the rest, rescaled to [0, 1] ("rescaled" interval).
        let u = if wf < 1.0 { (t - wf) / (1.0 - wf) } else { 1.0 };
        end + 0.5 * (peak - end) * (1.0 + (std::f64::consts::PI * u).cos())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn warmup_then_cosine_scaled_by_batch() {
        let s = LrSchedule::seer(7936, 1000);
        s.validate().unwrap();
        let peak = 0.3 * 7936.0 / 256.0;
        assert!((s.lr(0) - 0.3).abs() < 1e-12);
        // Warm-up ends at step 43.648: rising until then.
        assert!(s.lr(20) > s.lr(10) && s.lr(43) < peak);
        assert!((s.lr(44) - peak).abs() / peak < 1e-3);
        assert!(s.lr(500) < s.lr(100));
        assert!((s.lr(1000) - peak * 0.001).abs() < 1e-12);
        assert!((s.lr(5000) - peak * 0.001).abs() < 1e-12);
        let mut bad = s.clone();
        bad.warmup_fraction = 1.5;
        assert_eq!(bad.validate().unwrap_err().field, "warmup_fraction");
    }
}
