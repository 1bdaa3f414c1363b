//! Order statistics of measured samples. Timings on shared machines have
//! long upper tails, so a measured number is a median or a quantile; the
//! one mean, [`mean_without_slowest`], is for costs a step pays many times
//! over, where the tail is part of what it pays.

/// Linear-interpolated quantile `q` in [0, 1] of sorted data; 0 when empty.
pub(crate) fn quantile(sorted: &[f64], q: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let pos = q.clamp(0.0, 1.0) * (sorted.len() - 1) as f64;
    let (lo, hi) = (pos.floor() as usize, pos.ceil() as usize);
    sorted[lo] + (sorted[hi] - sorted[lo]) * (pos - lo as f64)
}

/// Median of samples in any order (the mean of the middle two for an even
/// count); 0 when empty.
pub fn median(mut samples: Vec<f64>) -> f64 {
    samples.sort_by(f64::total_cmp);
    quantile(&samples, 0.5)
}

/// Mean of sorted data without its slowest `fraction` (rounded down to
/// whole samples, so nothing is dropped under `1 / fraction` samples); 0
/// when empty.
pub(crate) fn mean_without_slowest(sorted: &[f64], fraction: f64) -> f64 {
    let drop = (sorted.len() as f64 * fraction.clamp(0.0, 1.0)).floor() as usize;
    let kept = &sorted[..sorted.len() - drop.min(sorted.len())];
    if kept.is_empty() {
        return 0.0;
    }
    kept.iter().sum::<f64>() / kept.len() as f64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_without_slowest_drops_whole_samples_from_the_top() {
        assert_eq!(mean_without_slowest(&[1.0, 2.0, 3.0], 0.1), 2.0, "3 samples: a tenth is none");
        let s = [1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 1.0, 4.0, 4.0, 100.0];
        assert!((mean_without_slowest(&s, 0.1) - 15.0 / 9.0).abs() < 1e-12);
        assert_eq!(mean_without_slowest(&[], 0.1), 0.0);
        assert_eq!(mean_without_slowest(&[5.0], 1.0), 0.0);
    }

    #[test]
    fn median_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![]), 0.0);
        assert_eq!(median(vec![7.0]), 7.0);
    }

    #[test]
    fn quantiles_interpolate_between_samples() {
        let s = [0.0, 10.0, 20.0, 30.0, 40.0];
        assert_eq!(quantile(&s, 0.0), 0.0);
        assert_eq!(quantile(&s, 1.0), 40.0);
        assert!((quantile(&s, 0.1) - 4.0).abs() < 1e-12);
        assert!((quantile(&s, 0.9) - 36.0).abs() < 1e-12);
    }
}
