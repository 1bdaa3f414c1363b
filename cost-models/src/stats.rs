//! Order statistics of measured samples. Timings on shared machines have
//! long upper tails, so every measured number is a median or a quantile,
//! never a mean.

/// Linear-interpolated quantile `q` in [0, 1] of sorted data; 0 when empty.
pub fn quantile(sorted: &[f64], q: f64) -> f64 {
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

#[cfg(test)]
mod tests {
    use super::*;

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
