//! SwAV multi-crop augmentation (as VISSL / the SwAV repository): per crop
//! RandomResizedCrop(resolution, scale range), horizontal flip, colour
//! jitter (strength s: brightness / contrast / saturation 0.8s, hue 0.2s,
//! p = 0.8, random order), grayscale p = 0.2, Gaussian blur p = 0.5
//! (sigma 0.1-2.0 px), then ImageNet mean/std normalisation into CHW f32.
//!
//! Pure functions of the image and an RNG: the data loader seeds one RNG
//! per sample, so the crops never depend on thread timing.

// `!(x > 0.0)` checks are deliberate: they reject NaN as well.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use image::{imageops, RgbImage};
use rand::seq::SliceRandom;
use rand::Rng;

pub const IMAGENET_MEAN: [f32; 3] = [0.485, 0.456, 0.406];
pub const IMAGENET_STD: [f32; 3] = [0.229, 0.224, 0.225];

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("invalid augmentation setting `{field}`: {reason}")]
pub struct AugmentError {
    pub field: String,
    pub reason: String,
}

/// `count` crops of `resolution` px, RandomResizedCrop area fraction in `scale`.
#[derive(Clone, Debug, PartialEq)]
pub struct CropSpec {
    pub count: usize,
    pub resolution: u32,
    pub scale: (f64, f64),
}

#[derive(Clone, Debug, PartialEq)]
pub struct AugmentConfig {
    /// Resolution groups in batch order (large crops first: crops 0 and 1
    /// are the assignment crops).
    pub crops: Vec<CropSpec>,
    pub color_strength: f64,
    pub flip_p: f64,
    pub jitter_p: f64,
    pub gray_p: f64,
    pub blur_p: f64,
    pub blur_sigma: (f64, f64),
}

impl AugmentConfig {
    /// SEER 10B: 2 x 160 px (scale 0.14-1) + 4 x 96 px (scale 0.05-0.14).
    pub fn seer() -> AugmentConfig {
        AugmentConfig::with_crops(vec![CropSpec { count: 2, resolution: 160, scale: (0.14, 1.0) }, CropSpec { count: 4, resolution: 96, scale: (0.05, 0.14) }])
    }

    /// The SEER pipeline with other crop groups (e.g. 2 x 32 + 2 x 16 for tests).
    pub fn with_crops(crops: Vec<CropSpec>) -> AugmentConfig {
        AugmentConfig { crops, color_strength: 1.0, flip_p: 0.5, jitter_p: 0.8, gray_p: 0.2, blur_p: 0.5, blur_sigma: (0.1, 2.0) }
    }

    pub fn num_crops(&self) -> usize {
        self.crops.iter().map(|c| c.count).sum()
    }

    pub fn validate(&self) -> Result<(), AugmentError> {
        let bad = |field: String, reason: String| Err(AugmentError { field, reason });
        if self.crops.is_empty() || self.num_crops() < 2 {
            return bad("crops".into(), "SwAV needs at least 2 crops per image".into());
        }
        for (i, c) in self.crops.iter().enumerate() {
            if c.count == 0 || c.resolution == 0 {
                return bad(format!("crops[{i}]"), "count and resolution must be >= 1".into());
            }
            if !(c.scale.0 > 0.0 && c.scale.0 <= c.scale.1 && c.scale.1 <= 1.0) {
                return bad(format!("crops[{i}].scale"), format!("need 0 < min <= max <= 1, got {:?}", c.scale));
            }
        }
        for (f, p) in [("flip_p", self.flip_p), ("jitter_p", self.jitter_p), ("gray_p", self.gray_p), ("blur_p", self.blur_p)] {
            if !(0.0..=1.0).contains(&p) {
                return bad(f.into(), format!("probability must be in [0, 1], got {p}"));
            }
        }
        if !(self.color_strength >= 0.0 && self.blur_sigma.0 > 0.0 && self.blur_sigma.0 <= self.blur_sigma.1) {
            return bad("color_strength/blur_sigma".into(), "strength >= 0 and 0 < sigma min <= max".into());
        }
        Ok(())
    }
}

/// Every crop of one image: `out[g]` is group g's `count` crops, each
/// normalised CHW f32 of `3 * R * R` values.
pub fn multi_crop<R: Rng>(img: &RgbImage, cfg: &AugmentConfig, rng: &mut R) -> Vec<Vec<Vec<f32>>> {
    cfg.crops.iter().map(|c| (0..c.count).map(|_| one_crop(img, c, cfg, rng)).collect()).collect()
}

fn one_crop<R: Rng>(img: &RgbImage, spec: &CropSpec, cfg: &AugmentConfig, rng: &mut R) -> Vec<f32> {
    let (x, y, w, h) = resized_crop_box(img.width(), img.height(), spec.scale, rng);
    let r = spec.resolution;
    let patch = imageops::crop_imm(img, x, y, w, h).to_image();
    // Triangle = bilinear with support widened when shrinking (antialiased,
    // as PIL's resize that torchvision uses).
    let resized = imageops::resize(&patch, r, r, imageops::FilterType::Triangle);
    let mut px: Vec<[f32; 3]> = resized.pixels().map(|p| [p[0] as f32 / 255.0, p[1] as f32 / 255.0, p[2] as f32 / 255.0]).collect();
    let n = r as usize;
    if rng.gen_bool(cfg.flip_p) {
        for row in px.chunks_mut(n) {
            row.reverse();
        }
    }
    if rng.gen_bool(cfg.jitter_p) {
        color_jitter(&mut px, cfg.color_strength, rng);
    }
    if rng.gen_bool(cfg.gray_p) {
        for p in px.iter_mut() {
            let l = luma(p);
            *p = [l, l, l];
        }
    }
    if rng.gen_bool(cfg.blur_p) {
        let sigma = rng.gen_range(cfg.blur_sigma.0..=cfg.blur_sigma.1);
        gaussian_blur(&mut px, n, n, sigma);
    }
    let mut out = vec![0f32; 3 * n * n];
    for (i, p) in px.iter().enumerate() {
        for c in 0..3 {
            out[c * n * n + i] = (p[c] - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
        }
    }
    out
}

/// torchvision RandomResizedCrop.get_params (aspect ratio 3/4 - 4/3, 10
/// tries, then a centre crop clamped to the ratio range): (x, y, w, h).
pub fn resized_crop_box<R: Rng>(width: u32, height: u32, scale: (f64, f64), rng: &mut R) -> (u32, u32, u32, u32) {
    let (wf, hf) = (width as f64, height as f64);
    let area = wf * hf;
    let (lr0, lr1) = ((3.0f64 / 4.0).ln(), (4.0f64 / 3.0).ln());
    for _ in 0..10 {
        let target = area * rng.gen_range(scale.0..=scale.1);
        let aspect = rng.gen_range(lr0..=lr1).exp();
        let w = (target * aspect).sqrt().round();
        let h = (target / aspect).sqrt().round();
        if w > 0.0 && h > 0.0 && w <= wf && h <= hf {
            let (w, h) = (w as u32, h as u32);
            let y = rng.gen_range(0..=height - h);
            let x = rng.gen_range(0..=width - w);
            return (x, y, w, h);
        }
    }
    let ratio = wf / hf;
    let (w, h) = if ratio < 3.0 / 4.0 {
        (wf, (wf / (3.0 / 4.0)).round())
    } else if ratio > 4.0 / 3.0 {
        ((hf * (4.0 / 3.0)).round(), hf)
    } else {
        (wf, hf)
    };
    let (w, h) = ((w as u32).clamp(1, width.max(1)), (h as u32).clamp(1, height.max(1)));
    ((width - w) / 2, (height - h) / 2, w, h)
}

fn luma(p: &[f32; 3]) -> f32 {
    0.299 * p[0] + 0.587 * p[1] + 0.114 * p[2]
}

fn blend(p: &mut [f32; 3], other: [f32; 3], factor: f32) {
    for c in 0..3 {
        p[c] = (factor * p[c] + (1.0 - factor) * other[c]).clamp(0.0, 1.0);
    }
}

/// ColorJitter(0.8s, 0.8s, 0.8s, 0.2s) with torchvision's random op order.
fn color_jitter<R: Rng>(px: &mut [[f32; 3]], s: f64, rng: &mut R) {
    let factor = |rng: &mut R, x: f64| rng.gen_range((1.0 - x).max(0.0)..=1.0 + x) as f32;
    let mut order = [0usize, 1, 2, 3];
    order.shuffle(rng);
    for op in order {
        match op {
            0 => {
                let f = factor(rng, 0.8 * s);
                px.iter_mut().for_each(|p| blend(p, [0.0; 3], f));
            }
            1 => {
                let f = factor(rng, 0.8 * s);
                let mean = px.iter().map(luma).sum::<f32>() / px.len().max(1) as f32;
                px.iter_mut().for_each(|p| blend(p, [mean; 3], f));
            }
            2 => {
                let f = factor(rng, 0.8 * s);
                px.iter_mut().for_each(|p| {
                    let l = luma(p);
                    blend(p, [l; 3], f)
                });
            }
            _ => {
                let h = 0.2 * s;
                let shift = if h > 0.0 { rng.gen_range(-h..=h) as f32 } else { 0.0 };
                px.iter_mut().for_each(|p| *p = hue_shift(*p, shift));
            }
        }
    }
}

/// Rotates the hue by `shift` turns through HSV.
fn hue_shift(p: [f32; 3], shift: f32) -> [f32; 3] {
    let [r, g, b] = p;
    let max = r.max(g).max(b);
    let min = r.min(g).min(b);
    let d = max - min;
    if d <= 0.0 {
        return p;
    }
    let mut h = if max == r {
        ((g - b) / d).rem_euclid(6.0)
    } else if max == g {
        (b - r) / d + 2.0
    } else {
        (r - g) / d + 4.0
    } / 6.0;
    h = (h + shift).rem_euclid(1.0);
    let (v, s) = (max, d / max);
    let hi = h * 6.0;
    let i = hi.floor();
    let f = hi - i;
    let (pp, q, t) = (v * (1.0 - s), v * (1.0 - s * f), v * (1.0 - s * (1.0 - f)));
    match i as i32 % 6 {
        0 => [v, t, pp],
        1 => [q, v, pp],
        2 => [pp, v, t],
        3 => [pp, q, v],
        4 => [t, pp, v],
        _ => [v, pp, q],
    }
}

/// Separable Gaussian blur (radius ceil(3 sigma), edges clamped).
fn gaussian_blur(px: &mut [[f32; 3]], w: usize, h: usize, sigma: f64) {
    let rad = (3.0 * sigma).ceil().max(1.0) as isize;
    let mut k: Vec<f32> = (-rad..=rad).map(|i| (-(i * i) as f64 / (2.0 * sigma * sigma)).exp() as f32).collect();
    let sum: f32 = k.iter().sum();
    k.iter_mut().for_each(|v| *v /= sum);
    let mut tmp = vec![[0f32; 3]; px.len()];
    let clamp = |v: isize, n: usize| v.clamp(0, n as isize - 1) as usize;
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0f32; 3];
            for (ki, kv) in k.iter().enumerate() {
                let sx = clamp(x as isize + ki as isize - rad, w);
                let p = px[y * w + sx];
                for c in 0..3 {
                    acc[c] += kv * p[c];
                }
            }
            tmp[y * w + x] = acc;
        }
    }
    for y in 0..h {
        for x in 0..w {
            let mut acc = [0f32; 3];
            for (ki, kv) in k.iter().enumerate() {
                let sy = clamp(y as isize + ki as isize - rad, h);
                let p = tmp[sy * w + x];
                for c in 0..3 {
                    acc[c] += kv * p[c];
                }
            }
            px[y * w + x] = acc;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand_chacha::ChaCha8Rng;

    fn gradient(w: u32, h: u32) -> RgbImage {
        RgbImage::from_fn(w, h, |x, y| image::Rgb([(x * 255 / w) as u8, (y * 255 / h) as u8, 128]))
    }

    #[test]
    fn crop_boxes_stay_inside_and_respect_scale() {
        let mut rng = ChaCha8Rng::seed_from_u64(1);
        for _ in 0..200 {
            let (x, y, w, h) = resized_crop_box(300, 200, (0.05, 0.14), &mut rng);
            assert!(x + w <= 300 && y + h <= 200 && w > 0 && h > 0);
            let frac = (w * h) as f64 / 60000.0;
            assert!(frac < 0.2, "{frac}");
        }
        // Degenerate 1x1 image: the fallback still gives a valid box.
        assert_eq!(resized_crop_box(1, 1, (0.05, 0.14), &mut rng), (0, 0, 1, 1));
    }

    #[test]
    fn multi_crop_shapes_and_normalisation() {
        let cfg = AugmentConfig::with_crops(vec![
            CropSpec { count: 2, resolution: 32, scale: (0.14, 1.0) },
            CropSpec { count: 3, resolution: 16, scale: (0.05, 0.14) },
        ]);
        cfg.validate().unwrap();
        let img = gradient(120, 90);
        let out = multi_crop(&img, &cfg, &mut ChaCha8Rng::seed_from_u64(7));
        assert_eq!(out.len(), 2);
        assert_eq!(out[0].len(), 2);
        assert_eq!(out[1].len(), 3);
        assert!(out[0].iter().all(|c| c.len() == 3 * 32 * 32));
        assert!(out[1].iter().all(|c| c.len() == 3 * 16 * 16));
        // Values are ImageNet-normalised [0, 1] pixels.
        let lo = -IMAGENET_MEAN[0] / IMAGENET_STD[0] - 1e-3;
        let hi = (1.0 - IMAGENET_MEAN[2]) / IMAGENET_STD[2] + 1e-3;
        assert!(out.iter().flatten().flatten().all(|v| v.is_finite() && *v >= lo && *v <= hi));
        // Same seed, same crops; another seed, other crops.
        let again = multi_crop(&img, &cfg, &mut ChaCha8Rng::seed_from_u64(7));
        assert_eq!(out, again);
        let other = multi_crop(&img, &cfg, &mut ChaCha8Rng::seed_from_u64(8));
        assert_ne!(out, other);
    }

    #[test]
    fn hue_shift_round_trips_and_blur_keeps_mean() {
        let p = [0.8, 0.3, 0.1];
        let q = hue_shift(hue_shift(p, 0.17), -0.17);
        for c in 0..3 {
            assert!((p[c] - q[c]).abs() < 1e-5, "{p:?} {q:?}");
        }
        assert_eq!(hue_shift([0.5; 3], 0.3), [0.5; 3]);
        let mut px: Vec<[f32; 3]> = (0..64).map(|i| [(i % 8) as f32 / 8.0, 0.5, (i / 8) as f32 / 8.0]).collect();
        let before: f32 = px.iter().map(|p| p[1]).sum();
        gaussian_blur(&mut px, 8, 8, 1.5);
        let after: f32 = px.iter().map(|p| p[1]).sum();
        assert!((before - after).abs() < 1e-3);
        // Blur smooths: the horizontal ramp's extreme values move inwards.
        assert!(px[0][0] > 0.0 && px[7][0] < 7.0 / 8.0);
    }

    #[test]
    fn invalid_settings_name_their_field() {
        let mut cfg = AugmentConfig::seer();
        cfg.crops[1].scale = (0.5, 0.1);
        assert_eq!(cfg.validate().unwrap_err().field, "crops[1].scale");
        let mut cfg = AugmentConfig::seer();
        cfg.blur_p = 1.5;
        assert_eq!(cfg.validate().unwrap_err().field, "blur_p");
    }
}
