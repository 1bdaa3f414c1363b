//! Stable hashes and seed mixing: the same value on every platform and Rust
//! version (unlike `DefaultHasher`), for names that key measurements and
//! seeds that must reproduce a run.

/// The golden-ratio increment of SplitMix64.
const GOLDEN: u64 = 0x9e37_79b9_7f4a_7c15;

/// FNV-1a (64-bit) of `bytes`.
pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's finaliser: spreads every input bit over the output.
pub(crate) fn splitmix64(z: u64) -> u64 {
    let z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    let z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// One seed from several parts (SplitMix64 over them, in order).
pub fn mix(parts: &[u64]) -> u64 {
    parts.iter().fold(GOLDEN, |h, &p| splitmix64((h ^ p).wrapping_add(GOLDEN)))
}

/// A seed for the thing called `name` in a run seeded by `seed`.
pub fn name_seed(seed: u64, name: &str) -> u64 {
    splitmix64(fnv1a(name.as_bytes()) ^ seed.wrapping_mul(GOLDEN))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed values: checkpoints, measurements keyed by block and seeded
    /// runs depend on these never changing.
    #[test]
    fn hashes_are_stable() {
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(mix(&[]), GOLDEN);
        assert_ne!(mix(&[1, 2]), mix(&[2, 1]));
        assert_ne!(name_seed(0, "s1.b0.a.weight"), name_seed(1, "s1.b0.a.weight"));
    }
}
