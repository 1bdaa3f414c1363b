//! The host CPUs beside the accelerators: what decodes and multi-crops the
//! images that feed them.

use crate::quantity::Seconds;
use serde::{Deserialize, Serialize};

/// One node's CPUs, per accelerator, and one core's data-loader speed.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSpec {
    /// Physical CPU cores per accelerator (the node's cores / its GPUs).
    pub cpu_cores_per_gpu: f64,
    /// One core's time to decode one image of about 500 px (JPEG).
    #[serde(default = "default_decode_ms")]
    pub loader_decode_ms: f64,
    /// One core's time per output pixel of multi-crop (resize, colour
    /// jitter, grayscale, blur, normalisation), averaged over SwAV's draws.
    #[serde(default = "default_crop_ns_per_pixel")]
    pub loader_crop_ns_per_pixel: f64,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// `seerscale data bench` on JPEGs of about 500 px, one thread (docs/loader.md).
pub const DEFAULT_DECODE_MS: f64 = 0.9;
pub const DEFAULT_CROP_NS_PER_PIXEL: f64 = 32.0;

fn default_decode_ms() -> f64 {
    DEFAULT_DECODE_MS
}
fn default_crop_ns_per_pixel() -> f64 {
    DEFAULT_CROP_NS_PER_PIXEL
}

impl HostSpec {
    /// One core's time to decode and crop one image into `crop_pixels`
    /// output pixels (all its crops together, e.g. 2x160² + 4x96²).
    pub fn loader_time_per_image(&self, crop_pixels: f64) -> Seconds {
        Seconds(self.loader_decode_ms * 1e-3 + crop_pixels * self.loader_crop_ns_per_pixel * 1e-9)
    }
}
