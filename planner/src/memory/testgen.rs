//! Random small instances for the cross-checks (replay vs closed form,
//! DP vs brute force).

use super::*;
use runspec::sharding::Reduction;

pub use rand::rngs::StdRng as Rng;
use rand::{Rng as _, SeedableRng};

/// A deterministic generator from a seed (proptest picks the seeds).
pub fn seeded(seed: u64) -> Rng {
    Rng::seed_from_u64(seed)
}

/// Uniform in `0..n` (0 when `n` is 0).
pub fn below(rng: &mut Rng, n: u64) -> u64 {
    rng.gen_range(0..n.max(1))
}

fn bytes(rng: &mut Rng, max: u64) -> Bytes {
    Bytes(rng.gen_range(0..=max))
}

/// `n` blocks with random sizes, random (possibly overlapping) units,
/// random reshard and fragmentation.
pub(crate) fn random_profile(rng: &mut Rng, n: usize) -> MemProfile {
    let blocks = (0..n)
        .map(|i| {
            let output = bytes(rng, 1000);
            BlockMem {
                name: format!("b{i}"),
                stage: Some(1 + i / 3),
                kept: output + bytes(rng, 3000),
                output,
                input_grad: Bytes::ZERO,
                fwd_transient: bytes(rng, 800),
                nograd_peak: output + bytes(rng, 1500),
                bwd_transient: bytes(rng, 2000),
                checkpointable: below(rng, 6) != 0,
                groups: Vec::new(),
            }
        })
        .collect::<Vec<_>>();
    let mut blocks = blocks;
    for i in 1..n {
        blocks[i].input_grad = blocks[i - 1].output;
    }
    let nu = 1 + below(rng, n as u64 + 2) as usize;
    let units = (0..nu)
        .map(|u| {
            let s = below(rng, n as u64) as usize;
            let len = if below(rng, 4) == 0 { 1 + below(rng, (n - s) as u64) as usize } else { 1 };
            UnitMem {
                name: format!("u{u}"),
                blocks: s..s + len,
                unsharded: bytes(rng, 2000),
                shard: bytes(rng, 300),
                grad_acc: bytes(rng, 2000),
                rs_out: bytes(rng, 300),
                rs_cast: bytes(rng, 600),
                param_grad: bytes(rng, 2000),
            }
        })
        .collect();
    MemProfile {
        blocks,
        units,
        statics: StaticMem {
            optimizer_states: below(rng, 3),
            input_batch: bytes(rng, 500),
            host_batches: bytes(rng, 500),
            bn_buffers: bytes(rng, 100),
            swav_queue: bytes(rng, 100),
            head_loss: bytes(rng, 3000),
            optimizer_transient: bytes(rng, 2000),
        },
        reshard_after_forward: below(rng, 2) == 0,
        reduction: Reduction { scatter: below(rng, 3) != 0, all_reduce: below(rng, 2) == 0 },
        backward_order: BackwardOrder::Together,
        crop_groups: 1,
        trunk: n,
        allocator: Allocator { quantum: 1, fragmentation: [0.0, 0.03, 0.1][below(rng, 3) as usize] },
        usable: Bytes(20_000),
    }
}

/// Every placement: each block plain, or segments over checkpointable runs.
pub(crate) fn all_placements(p: &MemProfile) -> Vec<Vec<Range<usize>>> {
    fn rec(p: &MemProfile, k: usize, cur: &mut Vec<Range<usize>>, out: &mut Vec<Vec<Range<usize>>>) {
        let n = p.blocks.len();
        if k == n {
            out.push(cur.clone());
            return;
        }
        rec(p, k + 1, cur, out);
        let mut e = k;
        while e < n && p.blocks[e].checkpointable {
            e += 1;
            cur.push(k..e);
            rec(p, e, cur, out);
            cur.pop();
        }
    }
    let mut out = Vec::new();
    rec(p, 0, &mut Vec::new(), &mut out);
    out
}
