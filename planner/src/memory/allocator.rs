//! How the device allocator rounds each tensor, and what it keeps beyond them.

use cost_models::hardware::DeviceKind;
use cost_models::Bytes;

/// How the device allocator rounds each tensor.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Allocator {
    /// Every allocation is a multiple of this. The CUDA caching allocator
    /// rounds every request to 512 bytes and counts the rounded block as
    /// allocated; its 2 MiB and 20 MiB granularity is that of the segments
    /// it reserves from the driver, which the allocated-bytes peak does not
    /// see (that is what the fragmentation margin is for).
    pub quantum: u64,
    /// Fraction of live bytes lost to fragmentation, added on top.
    pub fragmentation: f64,
}

impl Allocator {
    /// CUDA caching allocator; CPU: the executor's counting allocator sees
    /// exact byte counts and there is no cache to fragment.
    pub fn for_device(kind: DeviceKind) -> Allocator {
        match kind {
            DeviceKind::Gpu => Allocator { quantum: 512, fragmentation: 0.03 },
            DeviceKind::Cpu => Allocator { quantum: 1, fragmentation: 0.0 },
        }
    }
    /// Bytes the allocator hands out for a tensor of `b` bytes.
    pub fn round(&self, b: u64) -> Bytes {
        if b == 0 {
            Bytes::ZERO
        } else {
            Bytes(b).round_up(self.quantum)
        }
    }
    /// Fragmentation added to `raw` live bytes (monotone in `raw`).
    pub fn frag(&self, raw: u64) -> u64 {
        (raw as f64 * self.fragmentation).ceil() as u64
    }
    /// Largest raw total whose total with fragmentation stays within `budget`.
    pub fn raw_budget(&self, budget: Bytes) -> u64 {
        let fits = |r: u64| (r as u128 + self.frag(r) as u128) <= budget.0 as u128;
        // Binary search: `r + frag(r)` is monotone in `r`.
        let (mut lo, mut hi) = (0u64, budget.0);
        if !fits(0) {
            return 0;
        }
        while lo < hi {
            let mid = lo + (hi - lo).div_ceil(2);
            if fits(mid) {
                lo = mid;
            } else {
                hi = mid - 1;
            }
        }
        lo
    }
}
