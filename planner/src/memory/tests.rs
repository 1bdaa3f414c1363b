// A one-segment placement is a placement, not a mistaken range-to-vec.
#![allow(clippy::single_range_in_vec_init)]
use super::testgen::*;
use super::*;
use crate::wrapping::units_for;
use cost_models::config::ModelConfig;
use cost_models::graph::Workload;
use cost_models::hardware::{builtin_hardware, DeviceKind};
use cost_models::DType;
use runspec::recipe::Recipe;

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(300))]
    /// The closed form equals the event-by-event replay on random
    /// profiles and placements, and the breakdown adds up to the peak.
    #[test]
    fn closed_form_equals_replayed_timeline_on_random_instances(seed in proptest::prelude::any::<u64>(), n in 1usize..10) {
        let mut rng = seeded(seed);
        let p = random_profile(&mut rng, n);
        let m = MemoryModel::from_profile(p.clone());
        let all = all_placements(&p);
        for _ in 0..8 {
            let segs = &all[below(&mut rng, all.len() as u64) as usize];
            let r = m.report(segs);
            proptest::prop_assert_eq!(m.peak(segs), r.peak, "segments {:?}, profile {:#?}", segs, p);
            proptest::prop_assert_eq!(r.timeline[r.peak_event].total, r.peak);
            let sum: u64 = r.breakdown.values().map(|b| b.0).sum();
            proptest::prop_assert_eq!(sum, r.peak.0, "breakdown adds up");
        }
    }
}

/// Everything the replay allocates it frees: at the optimiser event only
/// static memory (plus the optimiser's temporaries) is left.
#[test]
fn replay_releases_everything_by_the_optimizer_step() {
    let mut rng = seeded(7);
    for n in 1..9 {
        let p = random_profile(&mut rng, n);
        let m = MemoryModel::from_profile(p.clone());
        for segs in all_placements(&p).iter().take(20) {
            let r = m.report(segs);
            let last = r.timeline.last().unwrap();
            assert_eq!(last.label, "optimizer");
            let raw = m.static_bytes().0 + p.statics.optimizer_transient.0;
            assert!(m.static_bytes().0 >= p.statics.bn_buffers.0 + p.statics.input_batch.0);
            assert_eq!(last.total.0, raw + p.allocator.frag(raw), "{segs:?}");
        }
    }
}

/// tiny-cpu without its queue: these tests are about activations and
/// checkpointing, whose trade-offs a loss-side transient would shift.
fn tiny(batch: u64, precision: DType) -> (ModelGraph, Recipe) {
    let mut r = Recipe::load("tiny-cpu").unwrap();
    r.swav.queue_length = 0;
    let m = ModelConfig::load(&r.model).unwrap();
    (ModelGraph::build(&m, &Workload { images: batch, crops: r.crop_groups(), dtype: precision }), r)
}

fn decisions(world: usize, reshard: bool, dt: DType, w: Wrapping) -> Decisions {
    Decisions {
        world_size: world,
        batch_per_rank: 8,
        precision: Precision { compute: dt, reduce: dt },
        reshard_after_forward: reshard,
        sharding: Sharding::fsdp(world),
        wrapping: w,
        recompute_segments: vec![],
        backward_order: BackwardOrder::Together,
        channel_padding: cost_models::padding::ChannelPadding::Off,
    }
}

/// The crop groups one after the other: a trunk block's groups add up
/// to the block; every kept and recomputed byte is freed by the end of
/// backward; with every block checkpointed the peak drops (one group's
/// recompute at a time), and with one crop group it is the same step.
#[test]
fn by_crop_group_replays_one_groups_recompute_at_a_time() {
    let (g, r) = tiny(8, DType::Fp32);
    let hw = builtin_hardware("cpu-local").unwrap();
    let units = units_for(&g, Wrapping::PerBlock);
    let d = decisions(2, true, DType::Fp32, Wrapping::PerBlock);
    let together = MemoryModel::new(&g, &units, &r, &d, &hw);
    let by_group = MemoryModel::new(&g, &units, &r, &Decisions { backward_order: BackwardOrder::ByCropGroup, ..d.clone() }, &hw);
    assert!(by_group.replays() && !together.replays());
    for b in by_group.profile().blocks.iter().filter(|b| b.checkpointable) {
        assert_eq!(b.groups.len(), 2, "{}", b.name);
        assert_eq!(b.groups.iter().map(|x| x.kept.0).sum::<u64>(), b.kept.0, "{}", b.name);
        assert_eq!(b.groups.iter().map(|x| x.output.0).sum::<u64>(), b.output.0, "{}", b.name);
    }
    let singles: Vec<Range<usize>> = (0..together.profile().trunk).map(|b| b..b + 1).collect();
    for segs in [vec![], singles.clone(), vec![1..4]] {
        let rep = by_group.report(&segs);
        assert_eq!(by_group.peak(&segs), rep.peak, "{segs:?}");
        // Back to the static bytes after the drain.
        let drain = rep.timeline.iter().rposition(|e| e.label == "optimizer").unwrap();
        let acts: u64 = ["activations", "recompute", "grad_buffers", "unsharded_params"]
            .iter()
            .map(|k| rep.timeline[drain].by_category.iter().find(|(n, _)| n == k).unwrap().1 .0)
            .sum();
        let statics = &by_group.profile().statics;
        assert_eq!(acts, statics.input_batch.0 + statics.host_batches.0 + statics.swav_queue.0, "{segs:?}");
    }
    assert!(by_group.peak(&singles) < together.peak(&singles), "{} vs {}", by_group.peak(&singles), together.peak(&singles));
    assert!(by_group.report(&singles).timeline.iter().any(|e| e.label == "recompute s1.b0 (crop group 1)"));
    let mut one = by_group.profile().clone();
    one.crop_groups = 1;
    let mut one_together = together.profile().clone();
    one_together.crop_groups = 1;
    assert_eq!(MemoryModel::from_profile(one).report(&singles), MemoryModel::from_profile(one_together).report(&singles));
}

/// A measured backward peak replaces the walk's estimate of a block's
/// backward transient, higher or lower: what was measured beyond the
/// block's parameter gradients.
#[test]
fn measured_backward_peaks_replace_the_estimate() {
    let (g, r) = tiny(8, DType::Bf16);
    let hw = builtin_hardware("cpu-local").unwrap();
    let units = units_for(&g, Wrapping::PerBlock);
    let d = decisions(2, true, DType::Bf16, Wrapping::PerBlock);
    let plain = MemoryModel::new(&g, &units, &r, &d, &hw);
    let i = g.blocks.iter().position(|b| b.name == "s4.b0").unwrap();
    let params = Allocator::for_device(hw.kind).round(g.blocks[i].params * 2).0;
    let mut measured = vec![None; g.blocks.len()];
    measured[i] = Some(params + 1_000_000);
    measured[0] = Some(Allocator::for_device(hw.kind).round(g.blocks[0].params * 2).0 + 1);
    let cal = MemoryModel::calibrated(&g, &units, &r, &d, &hw, &measured);
    assert_eq!(cal.profile().blocks[i].bwd_transient.0, 1_000_000);
    assert_eq!(cal.profile().blocks[0].bwd_transient.0, 1, "a smaller measurement lowers it");
    assert!(plain.profile().blocks[0].bwd_transient.0 > 1);
    assert!(cal.peak(&[]) > plain.peak(&[]));
    assert_eq!(MemoryModel::calibrated(&g, &units, &r, &d, &hw, &[]).peak(&[]), plain.peak(&[]));
}

#[test]
fn no_checkpointing_peak_is_static_plus_everything_kept_plus_last_backward() {
    let (g, r) = tiny(8, DType::Fp32);
    let hw = builtin_hardware("cpu-local").unwrap();
    let units = units_for(&g, Wrapping::PerBlock);
    let d = decisions(1, true, DType::Fp32, Wrapping::PerBlock);
    let m = MemoryModel::new(&g, &units, &r, &d, &hw);
    let p = m.profile();
    let n = p.blocks.len();
    // The last block's backward: every block's kept activations, the
    // images, shards, the last block's and previous block's gathered
    // units, its parameter gradient, transient and the loss.
    let kept: u64 = p.blocks.iter().map(|b| b.kept.0).sum();
    let shard: u64 = p.units.iter().map(|u| u.shard.0).sum();
    let last = &p.blocks[n - 1];
    let expect_last_bwd = shard * 3
        + p.statics.bn_buffers.0
        + p.statics.swav_queue.0
        + p.statics.input_batch.0
        + p.statics.host_batches.0
        + kept
        + p.units[n - 1].unsharded.0
        + p.units[n - 2].unsharded.0
        + p.units[n - 1].param_grad.0
        + last.bwd_transient.0
        + p.statics.head_loss.0;
    let rep = m.report(&[]);
    let ev = rep.timeline.iter().find(|e| e.label == format!("bwd {}", last.name)).unwrap();
    assert_eq!(ev.total.0, expect_last_bwd);
    assert!(rep.peak >= ev.total);
    assert_eq!(m.peak(&[]), rep.peak);
    // CPU: exact bytes, no fragmentation.
    assert_eq!(rep.breakdown["fragmentation"], Bytes::ZERO);
    // Kept bytes follow the graph's saved bytes (images separate; the
    // prototypes' output is kept by the executor though not saved).
    let saved: u64 = g.blocks.iter().map(|b| b.saved.0).sum();
    let images: u64 = p.statics.input_batch.0;
    assert_eq!(kept, saved - images + g.blocks[n - 1].output.0);
    // On CPU the loader's full prefetch queue is counted too (fp32
    // compute: the batch in use is the loader's own tensor).
    assert_eq!(p.statics.host_batches.0, (r.data.loader_workers * (r.data.loader_prefetch + 1)) as u64 * images);
    let gpu = MemoryModel::new(&g, &units, &r, &d, &builtin_hardware("a100-80gb").unwrap());
    assert_eq!(gpu.profile().statics.host_batches, Bytes::ZERO);
    for (b, gb) in p.blocks.iter().zip(&g.blocks) {
        assert_eq!(b.output, gb.output, "{}", b.name);
    }
}

#[test]
fn the_queue_is_state_and_a_taller_sinkhorn() {
    let (g, plain) = tiny(8, DType::Fp32);
    let queued = Recipe::load("tiny-cpu").unwrap();
    assert_eq!(queued.swav.queue_length, 256);
    let hw = builtin_hardware("cpu-local").unwrap();
    let units = units_for(&g, Wrapping::PerBlock);
    let d = decisions(2, true, DType::Fp32, Wrapping::PerBlock);
    let (a, b) = (MemoryModel::new(&g, &units, &plain, &d, &hw), MemoryModel::new(&g, &units, &queued, &d, &hw));
    let (sa, sb) = (&a.profile().statics, &b.profile().statics);
    // 128 rows per rank (256 over 2 ranks) of 32-wide embeddings for 2
    // assignment crops, in fp32.
    assert_eq!(sa.swav_queue.0, 0);
    assert_eq!(sb.swav_queue, a.allocator().round(2 * 128 * 32 * 4));
    // Its scores (2 crops x 128 x 32 prototypes), their concatenation
    // with the batch's (136 rows), and two Sinkhorn temporaries 128
    // rows taller.
    let qk = 128 * 32 * 4;
    assert_eq!(sb.head_loss.0 - sa.head_loss.0, 2 * qk + 136 * 32 * 4 + 2 * qk);
    assert!(b.peak(&[]) > a.peak(&[]));
}

#[test]
fn checkpointing_resharding_and_more_ranks_lower_the_peak() {
    let (g, r) = tiny(8, DType::Fp32);
    let hw = builtin_hardware("cpu-local").unwrap();
    let units = units_for(&g, Wrapping::PerBlock);
    let d = decisions(1, true, DType::Fp32, Wrapping::PerBlock);
    let m = MemoryModel::new(&g, &units, &r, &d, &hw);
    let nt = g.trunk_blocks().count();
    let none = m.peak(&[]);
    // One segment over the whole trunk recomputes everything at once:
    // no gain (the classic reason to split segments).
    assert!(m.peak(&[0..nt]) >= none);
    let each: Vec<Range<usize>> = (0..nt).map(|i| i..i + 1).collect();
    let all = m.peak(&each);
    assert!(all < none, "checkpointing every trunk block: {all} vs {none}");
    let per_stage = m.peak(&[1..2, 2..3, 3..5, 5..6]);
    assert!(per_stage < none);
    // Activations held at the peak shrink accordingly.
    let rn = m.report(&[]);
    let ra = m.report(&each);
    assert!(ra.breakdown["activations"] < rn.breakdown["activations"]);

    // Resharding after forward frees gathered units (big units: Whole-free policy).
    let units = units_for(&g, Wrapping::PerBlock);
    let keep = MemoryModel::new(&g, &units, &r, &decisions(1, false, DType::Fp32, Wrapping::PerBlock), &hw).peak(&[]);
    assert!(none < keep, "reshard {none} vs keep {keep}");

    // More ranks: smaller shards.
    let (g16, r16) = (g.clone(), r.clone());
    let m1 = MemoryModel::new(&g16, &units, &r16, &decisions(1, true, DType::Fp32, Wrapping::PerBlock), &hw);
    let m4 = MemoryModel::new(&g16, &units, &r16, &decisions(4, true, DType::Fp32, Wrapping::PerBlock), &hw);
    let r1 = m1.report(&[]);
    let r4 = m4.report(&[]);
    assert!(r4.breakdown["params_shard"] < r1.breakdown["params_shard"]);
    assert!(r4.breakdown["optimizer"] < r1.breakdown["optimizer"]);
    assert!(r4.peak < r1.peak);
    // Padding: every unit's shard is ceil(params / world) fp32 elements.
    for (u, um) in units.iter().zip(&m4.profile().units) {
        assert_eq!(um.shard.0, u.params.div_ceil(4) * 4);
    }
}

#[test]
fn adam_holds_twice_the_optimizer_state_of_sgd() {
    let (g, mut r) = tiny(8, DType::Fp32);
    let hw = builtin_hardware("cpu-local").unwrap();
    let units = units_for(&g, Wrapping::PerStage);
    let d = decisions(2, true, DType::Fp32, Wrapping::PerStage);
    let sgd = MemoryModel::new(&g, &units, &r, &d, &hw).report(&[]);
    r.optim.kind = runspec::recipe::OptimKind::Adam;
    let adam = MemoryModel::new(&g, &units, &r, &d, &hw).report(&[]);
    assert_eq!(adam.breakdown["optimizer"].0, 2 * sgd.breakdown["optimizer"].0);
    assert_eq!(sgd.breakdown["optimizer"], sgd.breakdown["grads_shard"]);
    assert_eq!(sgd.breakdown["params_shard"].0, sgd.breakdown["grads_shard"].0 + MemoryModel::new(&g, &units, &r, &d, &hw).profile().statics.bn_buffers.0);
}

#[test]
fn gpu_allocator_rounds_and_adds_fragmentation() {
    let a = Allocator::for_device(DeviceKind::Gpu);
    assert_eq!(a.round(1), Bytes(512));
    assert_eq!(a.round(MIB), Bytes(MIB));
    // Large blocks too: the allocated-bytes statistic counts 512 B blocks,
    // whatever segment they were carved from.
    assert_eq!(a.round(MIB + 1), Bytes(MIB + 512));
    assert_eq!(a.round(5 * MIB + 600), Bytes(5 * MIB + 1024));
    for b in [0u64, 1, 1000, 10_000_000, 40 << 30] {
        let r = a.raw_budget(Bytes(b));
        assert!(r + a.frag(r) <= b);
        assert!(r + 1 + a.frag(r + 1) > b);
    }
    // Huge budgets do not overflow.
    let r = a.raw_budget(Bytes(u64::MAX));
    assert!(r > 0 && (r as u128 + a.frag(r) as u128) <= u64::MAX as u128);
    {}
}

#[test]
fn incremental_segment_locals_equal_direct_ones() {
    let mut rng = seeded(11);
    for case in 0..200 {
        let n = 1 + case % 12;
        let m = MemoryModel::from_profile(random_profile(&mut rng, n));
        for a in 0..n {
            let inc = m.segment_locals(a, n);
            for b in a + 1..=n {
                assert_eq!(inc[b - a - 1], m.piece_local(a, b, true), "case {case} [{a},{b})");
            }
        }
    }
}

#[test]
fn normalize_segments_never_panics() {
    // Clamped, overlaps merged, adjacent segments kept apart.
    assert_eq!(normalize_segments(5, &[3..9, 0..2, 1..3, 4..4]), vec![0..3, 3..5]);
    assert_eq!(normalize_segments(5, &[3..4, 0..2]), vec![0..2, 3..4]);
    let m = MemoryModel::from_profile(random_profile(&mut seeded(3), 4));
    let _ = m.peak(&[2..100, 7..9]);
    let _ = m.report(&[2..100]);
}
