//! SwAV multi-crop augmentation (as VISSL / the SwAV repository): per crop
//! RandomResizedCrop(resolution, scale range), horizontal flip, colour
//! jitter (strength s: brightness / contrast / saturation 0.8s, hue 0.2s,
//! p = 0.8, random order), grayscale p = 0.2, Gaussian blur p = 0.5
//! (sigma 0.1-2.0 px), then ImageNet mean/std normalisation into CHW f32.
//!
//!
//! Every random choice of an image's crops is drawn first ([`CropPlan`]),
//! from an RNG the loader seeds per sample, so the crops never depend on
//! thread timing, and the decoder knows how far every crop shrinks before
//! it decodes. Pixels stay u8 until the last step's normalisation table.

// `!(x > 0.0)` checks are deliberate: they reject NaN as well.
#![allow(clippy::neg_cmp_op_on_partial_ord)]

use image::RgbImage;
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

/// Every crop of one image: `crops[g][k]` is crop k of group g, normalised
/// CHW f32 of `3 * R * R` values.
pub type Crops = Vec<Vec<Vec<f32>>>;

/// The random choices for one crop, drawn before any pixel is touched
/// (so the decoder can be told how far every crop will shrink).
#[derive(Clone, Debug, PartialEq)]
pub struct CropDraw {
    /// (x, y, w, h) in the original image's pixels.
    pub area: (u32, u32, u32, u32),
    pub flip: bool,
    pub jitter: Option<Jitter>,
    pub gray: bool,
    pub blur_sigma: Option<f64>,
}

/// ColorJitter's factors and torchvision's random order of its four ops
/// (0 brightness, 1 contrast, 2 saturation, 3 hue).
#[derive(Clone, Debug, PartialEq)]
pub struct Jitter {
    pub order: [u8; 4],
    pub brightness: f32,
    pub contrast: f32,
    pub saturation: f32,
    /// Hue rotation in turns.
    pub hue: f32,
}

/// Every crop of one image, drawn: `crops[g]` are group g's.
#[derive(Clone, Debug, PartialEq)]
pub struct CropPlan {
    pub width: u32,
    pub height: u32,
    pub crops: Vec<Vec<CropDraw>>,
}

impl CropPlan {
    /// Draws every crop of a `width` x `height` image, group by group.
    pub fn draw<R: Rng>(width: u32, height: u32, cfg: &AugmentConfig, rng: &mut R) -> CropPlan {
        let crops = cfg.crops.iter().map(|spec| (0..spec.count).map(|_| draw_crop(width, height, spec, cfg, rng)).collect()).collect();
        CropPlan { width, height, crops }
    }

    /// The largest decode shrink (1, 2, 4 or 8) that every crop still
    /// downscales from: DCT scaling then loses nothing the resize keeps.
    pub fn decode_scale(&self, cfg: &AugmentConfig) -> u32 {
        let mut scale = 8;
        for (spec, crops) in cfg.crops.iter().zip(&self.crops) {
            for c in crops {
                let side = c.area.2.min(c.area.3);
                while scale > 1 && side / scale < spec.resolution {
                    scale /= 2;
                }
            }
        }
        scale
    }

    /// Renders every crop from `img`, the image decoded shrunk by `scale`:
    /// `out[g][k]` is normalised CHW f32, `3 * R * R` values.
    pub fn render(&self, img: &RgbImage, scale: u32, cfg: &AugmentConfig) -> Crops {
        // The decoded size may round up (ceil(W / scale)); map boxes exactly.
        let (sx, sy) = (img.width() as f64 / self.width as f64, img.height() as f64 / self.height as f64);
        debug_assert!(scale >= 1 && (sx * scale as f64 - 1.0).abs() < 0.2);
        RESIZER.with(|resizer| {
            let mut resizer = resizer.borrow_mut();
            cfg.crops
                .iter()
                .zip(&self.crops)
                .map(|(spec, crops)| crops.iter().map(|c| render_crop(&mut resizer, img, (sx, sy), c, spec.resolution)).collect())
                .collect()
        })
    }
}

thread_local! {
    static RESIZER: std::cell::RefCell<fast_image_resize::Resizer> = std::cell::RefCell::new(fast_image_resize::Resizer::new());
}

/// Every crop of one image: `out[g]` is group g's `count` crops, each
/// normalised CHW f32 of `3 * R * R` values (what the loader's workers
/// compute, in one call: the tests' reference).
#[cfg(test)]
pub(crate) fn multi_crop<R: Rng>(img: &RgbImage, cfg: &AugmentConfig, rng: &mut R) -> Crops {
    CropPlan::draw(img.width(), img.height(), cfg, rng).render(img, 1, cfg)
}

fn draw_crop<R: Rng>(width: u32, height: u32, spec: &CropSpec, cfg: &AugmentConfig, rng: &mut R) -> CropDraw {
    let area = resized_crop_box(width, height, spec.scale, rng);
    let flip = rng.gen_bool(cfg.flip_p);
    let jitter = rng.gen_bool(cfg.jitter_p).then(|| {
        let s = cfg.color_strength;
        let mut order = [0u8, 1, 2, 3];
        order.shuffle(rng);
        let mut factor = |x: f64| rng.gen_range((1.0 - x).max(0.0)..=1.0 + x) as f32;
        let (brightness, contrast, saturation) = (factor(0.8 * s), factor(0.8 * s), factor(0.8 * s));
        let h = 0.2 * s;
        let hue = if h > 0.0 { rng.gen_range(-h..=h) as f32 } else { 0.0 };
        Jitter { order, brightness, contrast, saturation, hue }
    });
    let gray = rng.gen_bool(cfg.gray_p);
    let blur_sigma = rng.gen_bool(cfg.blur_p).then(|| rng.gen_range(cfg.blur_sigma.0..=cfg.blur_sigma.1));
    CropDraw { area, flip, jitter, gray, blur_sigma }
}

/// torchvision RandomResizedCrop.get_params (aspect ratio 3/4 - 4/3, 10
/// tries, then a centre crop clamped to the ratio range): (x, y, w, h).
pub(crate) fn resized_crop_box<R: Rng>(width: u32, height: u32, scale: (f64, f64), rng: &mut R) -> (u32, u32, u32, u32) {
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

/// One crop: antialiased bilinear resize (PIL's, with the support widened
/// when shrinking) straight out of the decoded image, then the colour ops
/// on u8 RGB, then normalisation through a per-channel table.
fn render_crop(resizer: &mut fast_image_resize::Resizer, img: &RgbImage, (sx, sy): (f64, f64), c: &CropDraw, r: u32) -> Vec<f32> {
    use fast_image_resize::{images::Image, images::ImageRef, FilterType, PixelType, ResizeAlg, ResizeOptions};
    let (x, y, w, h) = c.area;
    let src = ImageRef::new(img.width(), img.height(), img.as_raw(), PixelType::U8x3).expect("an RgbImage's buffer is 3 bytes per pixel");
    let mut dst = Image::new(r, r, PixelType::U8x3);
    let options = ResizeOptions::new().resize_alg(ResizeAlg::Convolution(FilterType::Bilinear)).crop(
        x as f64 * sx,
        y as f64 * sy,
        (w as f64 * sx).min(img.width() as f64 - x as f64 * sx),
        (h as f64 * sy).min(img.height() as f64 - y as f64 * sy),
    );
    resizer.resize(&src, &mut dst, &options).expect("same pixel type, non-empty crop inside the image");
    let mut px = dst.into_vec();
    let n = r as usize;
    if c.flip {
        for row in px.chunks_exact_mut(3 * n) {
            for i in 0..n / 2 {
                let (a, b) = (3 * i, 3 * (n - 1 - i));
                for k in 0..3 {
                    row.swap(a + k, b + k);
                }
            }
        }
    }
    if let Some(j) = &c.jitter {
        color_jitter(&mut px, j);
    }
    if c.gray {
        for p in px.chunks_exact_mut(3) {
            let l = luma(p);
            p.fill(l);
        }
    }
    if let Some(sigma) = c.blur_sigma {
        gaussian_blur(&mut px, n, n, sigma);
    }
    let lut = normalise_table();
    let mut out = vec![0f32; 3 * n * n];
    let (r_out, rest) = out.split_at_mut(n * n);
    let (g_out, b_out) = rest.split_at_mut(n * n);
    for (i, p) in px.chunks_exact(3).enumerate() {
        r_out[i] = lut[0][p[0] as usize];
        g_out[i] = lut[1][p[1] as usize];
        b_out[i] = lut[2][p[2] as usize];
    }
    out
}

/// `(v / 255 - mean) / std` for every u8 value, per channel.
fn normalise_table() -> &'static [[f32; 256]; 3] {
    static TABLE: std::sync::OnceLock<[[f32; 256]; 3]> = std::sync::OnceLock::new();
    TABLE.get_or_init(|| std::array::from_fn(|c| std::array::from_fn(|v| (v as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c])))
}

/// PIL's "L": (299 R + 587 G + 114 B) / 1000, in 16-bit fixed point.
fn luma(p: &[u8]) -> u8 {
    ((p[0] as u32 * 19595 + p[1] as u32 * 38470 + p[2] as u32 * 7471 + 0x8000) >> 16) as u8
}

/// Rounds half up after clamping (no libm call: the values are >= 0).
fn clamp_u8(v: f32) -> u8 {
    (v.clamp(0.0, 255.0) + 0.5) as u8
}

/// `v -> other + f * (v - other)` for every u8 value (PIL's blend).
fn blend_table(other: f32, f: f32) -> [u8; 256] {
    std::array::from_fn(|v| clamp_u8(other + f * (v as f32 - other)))
}

/// ColorJitter's four ops in the drawn order, each as PIL's ImageEnhance
/// does it: brightness and contrast through a 256-entry table, saturation
/// as a blend with each pixel's luma in fixed point, hue through HSV.
fn color_jitter(px: &mut [u8], j: &Jitter) {
    for op in j.order {
        match op {
            0 => {
                let t = blend_table(0.0, j.brightness);
                px.iter_mut().for_each(|v| *v = t[*v as usize]);
            }
            1 => {
                let sum: u64 = px.chunks_exact(3).map(|p| luma(p) as u64).sum();
                let mean = (sum as f64 / (px.len() / 3).max(1) as f64).round() as f32;
                let t = blend_table(mean, j.contrast);
                px.iter_mut().for_each(|v| *v = t[*v as usize]);
            }
            2 => {
                let f = (j.saturation * 4096.0).round() as i32;
                for p in px.chunks_exact_mut(3) {
                    let l = luma(p) as i32;
                    for v in p.iter_mut() {
                        *v = (l + ((f * (*v as i32 - l) + 2048) >> 12)).clamp(0, 255) as u8;
                    }
                }
            }
            _ => {
                if j.hue != 0.0 {
                    for p in px.chunks_exact_mut(3) {
                        let q = hue_shift([p[0] as f32, p[1] as f32, p[2] as f32], j.hue);
                        for k in 0..3 {
                            p[k] = clamp_u8(q[k]);
                        }
                    }
                }
            }
        }
    }
}

/// Rotates the hue of an RGB pixel (any scale) by `shift` turns through HSV.
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

/// Separable Gaussian blur of interleaved u8 RGB (radius ceil(3 sigma),
/// edges clamped), weights in 14-bit fixed point; both passes run along
/// contiguous memory so they vectorise.
fn gaussian_blur(px: &mut [u8], w: usize, h: usize, sigma: f64) {
    const ONE: u32 = 1 << 14;
    let rad = (3.0 * sigma).ceil().max(1.0) as usize;
    let g: Vec<f64> = (0..=2 * rad).map(|i| (-((i as f64 - rad as f64).powi(2)) / (2.0 * sigma * sigma)).exp()).collect();
    let total: f64 = g.iter().sum();
    let mut k: Vec<u32> = g.iter().map(|v| (v / total * ONE as f64).round() as u32).collect();
    // Weights that sum to exactly one keep flat regions flat.
    let sum: u32 = k.iter().sum();
    k[rad] = (k[rad] + ONE).saturating_sub(sum);
    let row = 3 * w;
    let mut padded = vec![0u32; 3 * (w + 2 * rad)];
    let mut acc = vec![0u32; row];
    let mut tmp = vec![0u8; px.len()];
    for y in 0..h {
        let src = &px[y * row..(y + 1) * row];
        for x in 0..w + 2 * rad {
            let sx = x.saturating_sub(rad).min(w - 1);
            for c in 0..3 {
                padded[3 * x + c] = src[3 * sx + c] as u32;
            }
        }
        acc.fill(ONE / 2);
        for (i, &ki) in k.iter().enumerate() {
            for (a, &v) in acc.iter_mut().zip(&padded[3 * i..3 * i + row]) {
                *a += ki * v;
            }
        }
        for (t, a) in tmp[y * row..(y + 1) * row].iter_mut().zip(&acc) {
            *t = (a >> 14).min(255) as u8;
        }
    }
    for y in 0..h {
        acc.fill(ONE / 2);
        for (i, &ki) in k.iter().enumerate() {
            let sy = (y + i).saturating_sub(rad).min(h - 1);
            for (a, &v) in acc.iter_mut().zip(&tmp[sy * row..(sy + 1) * row]) {
                *a += ki * v as u32;
            }
        }
        for (p, a) in px[y * row..(y + 1) * row].iter_mut().zip(&acc) {
            *p = (a >> 14).min(255) as u8;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use image::imageops;
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
        let mut px: Vec<u8> = (0..64).flat_map(|i| [(i % 8) as u8 * 32, 128, (i / 8) as u8 * 32]).collect();
        let before: u32 = px.chunks(3).map(|p| p[1] as u32).sum();
        gaussian_blur(&mut px, 8, 8, 1.5);
        assert_eq!(px.chunks(3).map(|p| p[1] as u32).sum::<u32>(), before, "a flat channel stays flat");
        // Blur smooths: the horizontal ramp's extreme values move inwards.
        assert!(px[0] > 0 && px[3 * 7] < 7 * 32);
        let ramp: u32 = px.chunks(3).map(|p| p[0] as u32).sum();
        assert!((ramp as i64 - 64 * 112).abs() < 64 * 4, "{ramp}");
    }

    #[test]
    fn colour_ops_match_their_float_definitions() {
        let mut px = vec![200u8, 100, 50, 10, 20, 30];
        let j = Jitter { order: [0, 1, 2, 3], brightness: 1.0, contrast: 1.0, saturation: 1.0, hue: 0.0 };
        color_jitter(&mut px, &j);
        assert_eq!(px, [200, 100, 50, 10, 20, 30], "unit factors are the identity");
        let j = Jitter { order: [0, 3, 1, 2], brightness: 0.5, contrast: 1.0, saturation: 0.0, hue: 0.0 };
        color_jitter(&mut px, &j);
        // Brightness halves, saturation 0 is the luma.
        assert_eq!(px, [62, 62, 62, 9, 9, 9]);
    }

    /// A crop rendered from an image decoded at a quarter of its size is the
    /// full-size render within a few grey levels: every crop of the plan
    /// shrinks at least 4x, so the shrunk decode loses nothing it keeps.
    #[test]
    fn renders_from_a_shrunk_decode_match_the_full_size() {
        let cfg = AugmentConfig::with_crops(vec![CropSpec { count: 2, resolution: 24, scale: (0.5, 1.0) }]);
        let img = RgbImage::from_fn(256, 192, |x, y| image::Rgb([(x) as u8, (y) as u8, ((x * y) / 256) as u8]));
        let mut rng = ChaCha8Rng::seed_from_u64(3);
        let mut plan = CropPlan::draw(256, 192, &cfg, &mut rng);
        for c in plan.crops.iter_mut().flatten() {
            (c.jitter, c.blur_sigma, c.gray) = (None, None, false);
        }
        assert_eq!(plan.decode_scale(&cfg), 4);
        let full = plan.render(&img, 1, &cfg);
        let small = imageops::resize(&img, 64, 48, imageops::FilterType::Triangle);
        let shrunk = plan.render(&small, 4, &cfg);
        for (a, b) in full.iter().flatten().zip(shrunk.iter().flatten()) {
            let mean = a.iter().zip(b).map(|(x, y)| (x - y).abs()).sum::<f32>() / a.len() as f32;
            assert!(mean < 0.05, "mean |difference| {mean} (normalised units)");
        }
        let tiny = AugmentConfig::with_crops(vec![CropSpec { count: 2, resolution: 160, scale: (0.05, 0.14) }]);
        assert_eq!(CropPlan::draw(256, 192, &tiny, &mut rng).decode_scale(&tiny), 1);
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
