//! Deterministic synthetic images (colour blocks over gradients, small
//! uncompressed PNGs) for `validate` runs and `calibrate`'s loader timing:
//! small enough that decoding them is negligible, so the data loader keeps
//! up with a CPU step and its CPU time is the augmentation's.

use anyhow::{Context, Result};
use std::path::Path;

/// Images written (a few batches of every validate variant).
pub const SYNTHETIC_IMAGES: usize = 48;
/// Side in pixels.
pub const SYNTHETIC_SIDE: u32 = 64;

fn crc32(bytes: &[u8]) -> u32 {
    let mut c = 0xFFFF_FFFFu32;
    for &b in bytes {
        c ^= b as u32;
        for _ in 0..8 {
            c = if c & 1 != 0 { 0xEDB8_8320 ^ (c >> 1) } else { c >> 1 };
        }
    }
    !c
}

/// An 8-bit RGB PNG with stored (uncompressed) deflate blocks.
fn png(w: u32, h: u32, rgb: &[u8]) -> Vec<u8> {
    let chunk = |out: &mut Vec<u8>, kind: &[u8; 4], data: &[u8]| {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut body = kind.to_vec();
        body.extend_from_slice(data);
        out.extend_from_slice(&body);
        out.extend_from_slice(&crc32(&body).to_be_bytes());
    };
    let mut raw = Vec::with_capacity((w as usize * 3 + 1) * h as usize);
    for row in rgb.chunks(w as usize * 3) {
        raw.push(0);
        raw.extend_from_slice(row);
    }
    let mut z = vec![0x78, 0x01];
    let blocks: Vec<&[u8]> = raw.chunks(65_535).collect();
    for (i, b) in blocks.iter().enumerate() {
        z.push(u8::from(i + 1 == blocks.len()));
        z.extend_from_slice(&(b.len() as u16).to_le_bytes());
        z.extend_from_slice(&(!(b.len() as u16)).to_le_bytes());
        z.extend_from_slice(b);
    }
    let (mut a, mut b) = (1u32, 0u32);
    for &x in &raw {
        a = (a + x as u32) % 65_521;
        b = (b + a) % 65_521;
    }
    z.extend_from_slice(&((b << 16) | a).to_be_bytes());
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&w.to_be_bytes());
    ihdr.extend_from_slice(&h.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(&mut out, b"IDAT", &z);
    chunk(&mut out, b"IEND", &[]);
    out
}

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
        std::fs::write(&path, png(side, side, &rgb)).with_context(|| format!("writing {}", path.display()))?;
    }
    Ok(())
}
