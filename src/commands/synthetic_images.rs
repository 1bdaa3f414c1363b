//! Deterministic synthetic images (colour blocks over gradients, small
//! PNGs) for `validate` runs and `calibrate`'s loader timing:
//! small enough that decoding them is negligible, so the data loader keeps
//! up with a CPU step and its CPU time is the augmentation's.

use anyhow::{Context, Result};
use std::path::Path;

/// Images written (a few batches of every validate variant).
pub const SYNTHETIC_IMAGES: usize = 48;
/// Side in pixels.
pub const SYNTHETIC_SIDE: u32 = 64;

/// Writes deterministic synthetic images (colour blocks over gradients)
/// unless the folder already has them all.
pub fn synthetic_images(dir: &Path) -> Result<()> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let side = SYNTHETIC_SIDE;
    for i in 0..SYNTHETIC_IMAGES {
        let path = dir.join(format!("img{i:03}.png"));
        if path.exists() {
            continue;
        }
        let mut rgb = Vec::with_capacity((side * side * 3) as usize);
        for y in 0..side {
            for x in 0..side {
                let cell = ((x / 8) * 31 + (y / 8) * 17 + i as u32 * 101) as u64;
                let hsh = cell.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40;
                for c in 0..3u32 {
                    let g = (x * (c + 1) * 2 + y * (3 - c) * 2) % 256;
                    rgb.push(((g + ((hsh >> (8 * c)) & 0xFF) as u32) / 2) as u8);
                }
            }
        }
        image::RgbImage::from_raw(side, side, rgb)
            .context("synthetic image buffer has the wrong size")?
            .save(&path)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
