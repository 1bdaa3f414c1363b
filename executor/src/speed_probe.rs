//! The host-speed probe: a fixed single-thread workload timed for a fraction
//! of a second, so numbers measured minutes apart on a shared machine can
//! be put on one scale.
//!
//! On the 2-core hosts this project runs on, the same computation takes
//! 30-50 % longer in one minute than in the next (other tenants); a profile
//! calibrated at one speed and a run measured at another then differ by
//! that much whatever the model gets right. `calibrate` records the probe
//! beside its measurements and `validate` re-runs it around every run; the
//! ratio is the host's slowdown in between.

use cost_models::Seconds;
use std::time::Instant;
use tch::{Device, Kind, TchError, Tensor};

/// The probe's shapes: a RegNet-Y-like mix of a dense 3x3 convolution, a
/// grouped one, batch norm and ReLU at a small CPU batch.
struct Workload {
    x: Tensor,
    dense: Tensor,
    grouped: Tensor,
    bn_weight: Tensor,
    bn_bias: Tensor,
}

impl Workload {
    fn new() -> Result<Workload, TchError> {
        let opts = (Kind::Float, Device::Cpu);
        Ok(Workload {
            x: Tensor::f_ones([8, 48, 16, 16], opts)?.f_mul_scalar(0.5)?,
            dense: Tensor::f_ones([48, 48, 3, 3], opts)?.f_mul_scalar(0.01)?,
            grouped: Tensor::f_ones([48, 8, 3, 3], opts)?.f_mul_scalar(0.01)?,
            bn_weight: Tensor::f_ones([48], opts)?,
            bn_bias: Tensor::f_zeros([48], opts)?,
        })
    }

    fn call(&self) -> Result<(), TchError> {
        let _g = tch::no_grad_guard();
        let y = self.x.f_conv2d(&self.dense, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 1)?;
        let y = y.f_conv2d(&self.grouped, None::<&Tensor>, [1, 1], [1, 1], [1, 1], 6)?;
        let y = y.f_batch_norm(Some(&self.bn_weight), Some(&self.bn_bias), None::<&Tensor>, None::<&Tensor>, true, 0.1, 1e-5, false)?;
        drop(y.f_relu()?);
        Ok(())
    }
}

/// How long one reading takes: long enough for a stable median, short next
/// to the measurements it brackets.
pub const DURATION: Seconds = Seconds(0.3);

/// Median time of one probe call over about `duration` of samples, on one
/// intra-op thread (the caller's thread setting is restored).
pub fn measure(duration: Seconds) -> Result<Seconds, TchError> {
    let threads = tch::get_num_threads();
    tch::set_num_threads(1);
    let result = (|| {
        let w = Workload::new()?;
        w.call()?;
        let mut samples = Vec::new();
        let start = Instant::now();
        while samples.len() < 5 || start.elapsed().as_secs_f64() < duration.0 {
            let t = Instant::now();
            for _ in 0..4 {
                w.call()?;
            }
            samples.push(t.elapsed().as_secs_f64() / 4.0);
        }
        Ok(Seconds(cost_models::stats::median(samples)))
    })();
    tch::set_num_threads(threads);
    result
}

/// How much slower the host is now than when `reference` was probed
/// (> 1: slower), from probes taken `before` and `after` the measurement
/// being compared.
pub fn slowdown(reference: Seconds, before: Seconds, after: Seconds) -> f64 {
    if reference.0 > 0.0 {
        0.5 * (before.0 + after.0) / reference.0
    } else {
        1.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn probe_takes_time_and_restores_threads() {
        let before = tch::get_num_threads();
        let t = measure(Seconds(0.02)).unwrap();
        assert!(t.0 > 1e-6 && t.0 < 1.0, "{t:?}");
        assert_eq!(tch::get_num_threads(), before);
        assert!((slowdown(Seconds(2.0), Seconds(3.0), Seconds(5.0)) - 2.0).abs() < 1e-12);
        assert_eq!(slowdown(Seconds(0.0), Seconds(3.0), Seconds(5.0)), 1.0);
    }
}
