//! The precision policy of a run and fp16's dynamic loss scaling.

use crate::fsdp::MixedPrecision;
use tch::Kind;

/// Compute precision as a plan names it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ComputePrecision {
    Fp32,
    Bf16,
    /// fp16 compute: needs dynamic loss scaling.
    Fp16,
}

impl ComputePrecision {
    pub fn compute_kind(self) -> Kind {
        match self {
            ComputePrecision::Fp32 => Kind::Float,
            ComputePrecision::Bf16 => Kind::BFloat16,
            ComputePrecision::Fp16 => Kind::Half,
        }
    }

    /// Parameters gathered and gradients reduced in the compute dtype, as
    /// SEER (FairScale `fp32_reduce_scatter=False`) unless `fp32_reduce`.
    pub fn policy(self, fp32_reduce: bool) -> MixedPrecision {
        let k = self.compute_kind();
        MixedPrecision { param: k, reduce: if fp32_reduce { Kind::Float } else { k } }
    }

    pub fn needs_loss_scaling(self) -> bool {
        self == ComputePrecision::Fp16
    }
}

/// Dynamic loss scaling (as torch's GradScaler): backward from
/// `loss * scale`; a step whose gradients contain inf/nan on any rank is
/// skipped and the scale halved; after `growth_interval` good steps in a
/// row the scale doubles.
#[derive(Clone, Debug, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct LossScaler {
    pub enabled: bool,
    pub scale: f64,
    pub growth_factor: f64,
    pub backoff_factor: f64,
    pub growth_interval: u32,
    pub good_steps: u32,
}

impl LossScaler {
    /// torch.amp.GradScaler's defaults.
    pub fn dynamic() -> LossScaler {
        LossScaler { enabled: true, scale: 65536.0, growth_factor: 2.0, backoff_factor: 0.5, growth_interval: 2000, good_steps: 0 }
    }

    pub fn disabled() -> LossScaler {
        LossScaler { enabled: false, scale: 1.0, ..LossScaler::dynamic() }
    }

    pub fn for_precision(p: ComputePrecision) -> LossScaler {
        if p.needs_loss_scaling() {
            LossScaler::dynamic()
        } else {
            LossScaler::disabled()
        }
    }

    /// Factor the loss is multiplied by before backward.
    pub fn scale(&self) -> f64 {
        if self.enabled {
            self.scale
        } else {
            1.0
        }
    }

    /// Records a step's outcome; returns whether the optimiser should step.
    pub fn update(&mut self, found_non_finite: bool) -> bool {
        if !self.enabled {
            return !found_non_finite;
        }
        if found_non_finite {
            self.scale *= self.backoff_factor;
            self.good_steps = 0;
            return false;
        }
        self.good_steps += 1;
        if self.good_steps >= self.growth_interval {
            self.scale *= self.growth_factor;
            self.good_steps = 0;
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scaler_halves_on_overflow_and_grows_after_interval() {
        let mut s = LossScaler { growth_interval: 3, ..LossScaler::dynamic() };
        assert!(!s.update(true));
        assert_eq!(s.scale, 32768.0);
        assert!(s.update(false) && s.update(false));
        assert_eq!(s.scale, 32768.0);
        assert!(s.update(false));
        assert_eq!(s.scale, 65536.0);
        let mut off = LossScaler::for_precision(ComputePrecision::Bf16);
        assert_eq!(off.scale(), 1.0);
        assert!(off.update(false) && !off.update(true));
        assert_eq!(off.scale(), 1.0);
    }
}
