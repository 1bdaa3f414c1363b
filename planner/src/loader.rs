//! The data loader's claim on the host CPUs: the cores per GPU that decode
//! and multi-crop the images a plan's step consumes, against the cores the
//! node has per GPU (`[host]` in the hardware file). One core per GPU is
//! left to the rank's own host thread (issuing kernels, collectives).

use cost_models::graph::CropGroup;
use cost_models::hardware::{HostSpec, DEFAULT_CROP_NS_PER_PIXEL, DEFAULT_DECODE_MS};
use cost_models::Seconds;

/// What the loader needs for one GPU's share of a step.
#[derive(Clone, Debug, PartialEq)]
pub struct LoaderNeed {
    /// Images one GPU consumes per second at the plan's step time.
    pub images_per_s_per_gpu: f64,
    /// One core's time to decode and multi-crop one image.
    pub core_time_per_image: Seconds,
    /// Loader cores per GPU that keep the step fed.
    pub cores_per_gpu: f64,
    /// Cores per GPU the node has, where the hardware file says.
    pub cpu_cores_per_gpu: Option<f64>,
}

impl LoaderNeed {
    /// The loader work of `batch_per_gpu` images cut into `crops`, every `step`.
    pub fn of(host: Option<&HostSpec>, crops: &[CropGroup], batch_per_gpu: usize, step: Seconds) -> LoaderNeed {
        let pixels: f64 = crops.iter().map(|c| (c.count * c.resolution * c.resolution) as f64).sum();
        let per_image = match host {
            Some(h) => h.loader_time_per_image(pixels),
            None => Seconds(DEFAULT_DECODE_MS * 1e-3 + pixels * DEFAULT_CROP_NS_PER_PIXEL * 1e-9),
        };
        let images_per_s_per_gpu = batch_per_gpu as f64 / step.0.max(1e-12);
        LoaderNeed {
            images_per_s_per_gpu,
            core_time_per_image: per_image,
            cores_per_gpu: images_per_s_per_gpu * per_image.0,
            cpu_cores_per_gpu: host.map(|h| h.cpu_cores_per_gpu),
        }
    }

    /// Cores per GPU the loader may use: all but the rank's own.
    pub fn available(&self) -> Option<f64> {
        self.cpu_cores_per_gpu.map(|c| (c - 1.0).max(0.0))
    }

    /// Whether the node's cores keep the step fed (None: not known).
    pub fn keeps_up(&self) -> Option<bool> {
        self.available().map(|a| self.cores_per_gpu <= a)
    }

    /// The shortest step the loader allows on the node's cores (None where
    /// the cores are unknown): `batch x time per image / loader cores`.
    pub fn loader_bound_step(&self, batch_per_gpu: usize) -> Option<Seconds> {
        self.available().map(|a| Seconds(batch_per_gpu as f64 * self.core_time_per_image.0 / a.max(1e-9)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn host(cores: f64) -> HostSpec {
        HostSpec { cpu_cores_per_gpu: cores, loader_decode_ms: 1.0, loader_crop_ns_per_pixel: 30.0, source: None }
    }

    #[test]
    fn the_loader_needs_images_per_second_times_core_time_per_image() {
        let seer = [CropGroup { count: 2, resolution: 160 }, CropGroup { count: 4, resolution: 96 }];
        // 2x160² + 4x96² = 88064 pixels: 1 ms + 2.642 ms per image.
        let n = LoaderNeed::of(Some(&host(16.0)), &seer, 16, Seconds(0.5));
        assert!((n.core_time_per_image.0 - 3.64192e-3).abs() < 1e-9, "{n:?}");
        assert!((n.images_per_s_per_gpu - 32.0).abs() < 1e-12);
        assert!((n.cores_per_gpu - 32.0 * 3.64192e-3).abs() < 1e-9);
        assert_eq!(n.keeps_up(), Some(true));
        // A small model's fast step outruns 2 cores per GPU (1 for the loader).
        let fast = LoaderNeed::of(Some(&host(2.0)), &seer, 256, Seconds(0.1));
        assert_eq!(fast.keeps_up(), Some(false));
        let bound = fast.loader_bound_step(256).unwrap();
        assert!((bound.0 - 256.0 * 3.64192e-3).abs() < 1e-9, "{bound:?}");
        // Unknown cores: the need is still said, the verdict is not.
        let unknown = LoaderNeed::of(None, &seer, 16, Seconds(0.5));
        assert_eq!((unknown.keeps_up(), unknown.loader_bound_step(16)), (None, None));
        assert!(unknown.cores_per_gpu > 0.0);
    }
}
