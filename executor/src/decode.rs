//! Encoded image bytes to 8-bit RGB: JPEG, PNG and WebP (gray, RGBA and
//! 16-bit alike), and JPEGs decoded straight to 1/2, 1/4 or 1/8 size by
//! DCT scaling (libjpeg's `scale_denom`, PIL's `draft`, DALI's ROI decode)
//! when every crop taken from them is downscaled at least that much.

use image::RgbImage;
use std::io::Cursor;
use std::path::Path;

/// A decoded image and the factor it was shrunk by in decoding (1, 2, 4
/// or 8): pixel (x, y) of the original is near (x / scale, y / scale).
pub struct Decoded {
    pub image: RgbImage,
    pub scale: u32,
}

/// Width and height from the headers, without decoding the pixels.
pub(crate) fn dimensions(bytes: &[u8]) -> Result<(u32, u32), String> {
    let reader = image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    let (w, h) = reader.into_dimensions().map_err(|e| e.to_string())?;
    if w == 0 || h == 0 {
        return Err("empty image".into());
    }
    Ok((w, h))
}

/// Decodes at full size.
pub(crate) fn decode_bytes(bytes: &[u8]) -> Result<RgbImage, String> {
    let reader = image::ImageReader::new(Cursor::new(bytes)).with_guessed_format().map_err(|e| e.to_string())?;
    let img = reader.decode().map_err(|e| e.to_string())?;
    if img.width() == 0 || img.height() == 0 {
        return Err("empty image".into());
    }
    Ok(img.to_rgb8())
}

/// Decodes a file at full size.
pub(crate) fn decode_file(path: &Path) -> Result<RgbImage, String> {
    decode_bytes(&std::fs::read(path).map_err(|e| e.to_string())?)
}

fn is_jpeg(bytes: &[u8]) -> bool {
    bytes.starts_with(&[0xff, 0xd8, 0xff])
}

/// Decodes shrunk by `scale` (a power of two up to 8) where the format
/// allows it (baseline and progressive 8-bit JPEG, RGB or gray); anything
/// else is decoded at full size, which `Decoded::scale` then says.
pub(crate) fn decode_scaled(bytes: &[u8], scale: u32) -> Result<Decoded, String> {
    if scale > 1 && is_jpeg(bytes) {
        if let Some(d) = jpeg_scaled(bytes, scale.min(8)) {
            return Ok(d);
        }
    }
    Ok(Decoded { image: decode_bytes(bytes)?, scale: 1 })
}

fn jpeg_scaled(bytes: &[u8], scale: u32) -> Option<Decoded> {
    let mut dec = jpeg_decoder::Decoder::new(Cursor::new(bytes));
    dec.read_info().ok()?;
    let info = dec.info()?;
    let (w, h) = (info.width as u32, info.height as u32);
    let (rw, rh) = (w.div_ceil(scale), h.div_ceil(scale));
    let (ow, oh) = dec.scale(rw as u16, rh as u16).ok()?;
    let (ow, oh) = (ow as u32, oh as u32);
    let got = [1u32, 2, 4, 8].into_iter().find(|&s| w.div_ceil(s) == ow && h.div_ceil(s) == oh)?;
    let px = dec.decode().ok()?;
    let rgb = match dec.info()?.pixel_format {
        jpeg_decoder::PixelFormat::RGB24 => px,
        jpeg_decoder::PixelFormat::L8 => px.iter().flat_map(|&l| [l, l, l]).collect(),
        _ => return None,
    };
    Some(Decoded { image: RgbImage::from_raw(ow, oh, rgb)?, scale: got })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn jpeg(w: u32, h: u32) -> Vec<u8> {
        let img = RgbImage::from_fn(w, h, |x, y| image::Rgb([(x % 256) as u8, (y % 256) as u8, ((x + y) % 256) as u8]));
        let mut out = Vec::new();
        img.write_to(&mut Cursor::new(&mut out), image::ImageFormat::Jpeg).unwrap();
        out
    }

    #[test]
    fn jpegs_decode_shrunk_by_dct_scaling() {
        let bytes = jpeg(200, 120);
        assert_eq!(dimensions(&bytes).unwrap(), (200, 120));
        let full = decode_scaled(&bytes, 1).unwrap();
        assert_eq!((full.image.width(), full.image.height(), full.scale), (200, 120, 1));
        for s in [2, 4, 8] {
            let d = decode_scaled(&bytes, s).unwrap();
            assert_eq!(d.scale, s);
            assert_eq!((d.image.width(), d.image.height()), (200u32.div_ceil(s), 120u32.div_ceil(s)));
            // The shrunk decode is the full image's average: the gradient's
            // pixel at (x, y) is near x / s.
            let p = d.image.get_pixel(10, 5);
            assert!((p[0] as i32 - (10 * s) as i32).abs() <= (s as i32) + 8, "scale {s}: {p:?}");
        }
    }

    #[test]
    fn other_formats_decode_at_full_size() {
        let img = RgbImage::from_fn(30, 20, |x, _| image::Rgb([x as u8, 0, 0]));
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
        let d = decode_scaled(&png, 4).unwrap();
        assert_eq!((d.image.width(), d.scale), (30, 1));
        let mut webp = Vec::new();
        img.write_to(&mut Cursor::new(&mut webp), image::ImageFormat::WebP).unwrap();
        assert_eq!(decode_bytes(&webp).unwrap().dimensions(), (30, 20));
        assert!(decode_bytes(b"\xff\xd8\xff garbage").is_err());
        assert!(dimensions(b"").is_err());
    }
}
