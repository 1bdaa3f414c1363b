//! A full `seerscale sweep` of seer-10b on A100-40GB over 8..1024 GPUs:
//! every sharding (DDP, FSDP, hybrid), wrapping, reshard on/off,
//! fp32/fp16/bf16, channel padding on/off, per-GPU batch 8..64
//! (global batch <= 16,384) and optimal checkpointing. Target: < 1 s.

use cost_models::hardware::load_profile;
use criterion::{criterion_group, criterion_main, Criterion};
use planner::search::{BatchPolicy, GpuCount, SearchSpace, DEFAULT_BATCHES, DEFAULT_MAX_GLOBAL_BATCH};
use planner::sweep::sweep;
use runspec::recipe::Recipe;

fn bench_sweep(c: &mut Criterion) {
    let recipe = Recipe::load("seer-10b").expect("built-in recipe");
    let hw = vec![load_profile("a100-40gb").expect("built-in hardware")];
    let space = || {
        SearchSpace::full(
            hw.clone(),
            GpuCount::Range { min: 8, max: 1024 },
            BatchPolicy::Search { candidates: DEFAULT_BATCHES.to_vec(), max_global: DEFAULT_MAX_GLOBAL_BATCH },
        )
    };
    let mut g = c.benchmark_group("sweep");
    g.sample_size(10);
    // Everything from scratch each time: graphs, op costs, topologies, memo.
    g.bench_function("seer-10b a100-40gb 8..1024", |b| {
        b.iter(|| {
            let s = sweep(&recipe, space(), |_, _| {}).expect("sweep runs");
            assert!(s.rows.iter().any(|r| r.fits));
            s
        })
    });
    g.finish();
}

criterion_group!(benches, bench_sweep);
criterion_main!(benches);
