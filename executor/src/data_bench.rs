//! `seerscale data bench`: how many images per second the loader's CPU
//! work (decode, and decode plus multi-crop) gets through on N threads,
//! on samples already read into memory, so disk speed is left out.

use crate::augment::AugmentConfig;
use crate::data::{augment_bytes, mix};
use crate::decode::decode_bytes;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::HashSet;
use std::time::{Duration, Instant};

/// One measurement on `threads` threads.
#[derive(Clone, Debug, PartialEq, serde::Serialize)]
pub struct BenchRow {
    pub threads: usize,
    /// Full-size decodes per second, all threads together.
    pub decoded_per_s: f64,
    /// Decoded and multi-cropped images per second, all threads together
    /// (what a training run consumes).
    pub images_per_s: f64,
    /// `images_per_s / threads`.
    pub images_per_s_per_thread: f64,
    /// Samples that failed to decode (left out of the rates).
    pub failed: usize,
}

/// Runs `work` over `samples` on `threads` threads, round-robin, until at
/// least `min` has passed and every thread has done one sample: images/s,
/// and how many distinct samples failed.
fn rate(samples: &[Vec<u8>], threads: usize, min: Duration, work: impl Fn(&[u8], u64) -> bool + Sync) -> (f64, usize) {
    let start = Instant::now();
    let results: Vec<(u64, HashSet<usize>)> = std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| {
                let work = &work;
                scope.spawn(move || {
                    let (mut done, mut fails, mut failed, mut k) = (0u64, 0usize, HashSet::new(), t);
                    while done == 0 || start.elapsed() < min {
                        let i = k % samples.len();
                        if work(&samples[i], k as u64) {
                            done += 1;
                        } else {
                            failed.insert(i);
                            fails += 1;
                            // Nothing decodes: stop once every sample failed.
                            if done == 0 && fails > samples.len() * 4 {
                                break;
                            }
                        }
                        k += threads;
                    }
                    (done, failed)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap_or_default()).collect()
    });
    let secs = start.elapsed().as_secs_f64();
    let done: u64 = results.iter().map(|r| r.0).sum();
    let failed: HashSet<usize> = results.into_iter().flat_map(|r| r.1).collect();
    (done as f64 / secs, failed.len())
}

/// Decode-only and decode + multi-crop rates on `threads` threads.
pub fn bench(samples: &[Vec<u8>], augment: &AugmentConfig, threads: usize, min: Duration) -> BenchRow {
    let threads = threads.max(1);
    let (decoded_per_s, failed) = rate(samples, threads, min, |b, _| decode_bytes(b).is_ok());
    let (images_per_s, _) = rate(samples, threads, min, |b, k| augment_bytes(b, augment, &mut ChaCha8Rng::seed_from_u64(mix(&[k]))).is_ok());
    BenchRow { threads, decoded_per_s, images_per_s, images_per_s_per_thread: images_per_s / threads as f64, failed }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::CropSpec;
    use std::io::Cursor;

    #[test]
    fn rates_count_decoded_and_cropped_images_and_failures() {
        let img = image::RgbImage::from_fn(64, 48, |x, y| image::Rgb([x as u8, y as u8, 9]));
        let mut jpeg = Vec::new();
        img.write_to(&mut Cursor::new(&mut jpeg), image::ImageFormat::Jpeg).unwrap();
        let samples = vec![jpeg, b"not an image".to_vec()];
        let cfg = AugmentConfig::with_crops(vec![CropSpec { count: 2, resolution: 16, scale: (0.14, 1.0) }]);
        let row = bench(&samples, &cfg, 2, Duration::from_millis(50));
        assert_eq!((row.threads, row.failed), (2, 1));
        assert!(row.decoded_per_s > 0.0 && row.images_per_s > 0.0);
        assert!((row.images_per_s_per_thread * 2.0 - row.images_per_s).abs() < 1e-9);
        assert!(crate::memstats::peak_rss_bytes().unwrap() > 1 << 20);
    }
}
