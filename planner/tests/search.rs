//! The search end to end: SEER 10B reference vs the planner, objectives,
//! infeasible requests, plan files.

use cost_models::hardware::load_profile;
use planner::build::{build_plan, reference_decisions};
use planner::search::{choose, BatchPolicy, Constraints, GpuCount, Objective, SearchError, SearchSpace, Searcher, DEFAULT_BATCHES};
use runspec::plan::Plan;
use runspec::recipe::Recipe;

fn space(gpu: &str, gpus: GpuCount, batch: BatchPolicy) -> SearchSpace {
    SearchSpace::full(vec![load_profile(gpu).unwrap()], gpus, batch)
}

#[test]
fn seer_10b_reference_fits_and_planner_is_at_least_as_fast() {
    let recipe = Recipe::load("seer-10b").unwrap();
    let mut s = Searcher::new(&recipe, space("a100-40gb", GpuCount::Fixed(496), BatchPolicy::PerGpu(16))).unwrap();
    let d = reference_decisions(&mut s, 496).expect("seer-10b has a reference plan");
    // VISSL stage_checkpoints [[2], [7], [9, 17], []]: four segments, s4 not checkpointed.
    assert_eq!(d.recompute_segments.len(), 4);
    let reference = s.evaluate(0, &d).unwrap();
    assert!(reference.fits(), "reference peak {} > usable {}", reference.peak, reference.usable);
    assert!(reference.step.recompute_time.0 > 0.0);

    let outcomes = s.run(|_, _| {}).unwrap();
    let best = choose(&outcomes, Objective::Fastest, Constraints::default()).unwrap();
    assert!(best.fits());
    assert_eq!((best.decisions.world_size, best.decisions.batch_per_rank), (496, 16));
    assert!(best.step.step_time <= reference.step.step_time, "planner {:?} vs reference {:?}", best.step, reference.step);
    assert!(best.throughput.days <= reference.throughput.days);

    // Both become valid plan files.
    let (plan, report) = build_plan(&mut s, &reference.clone()).unwrap();
    assert!(plan.predicted.fits && report.fits());
    assert_eq!(plan.gpus_per_node, 8);
    assert_eq!(plan.checkpoint_segments.len(), 4);
    assert_eq!(plan.checkpoint_segments[2].first().map(String::as_str), Some("s3.b0"));
    let (plan, _) = build_plan(&mut s, &best.clone()).unwrap();
    assert_eq!(plan.predicted.peak_memory_bytes, best.peak.0);
}

#[test]
fn objectives_pick_different_points() {
    let recipe = Recipe::load("seer-256gf").unwrap();
    let batch = BatchPolicy::Search { candidates: DEFAULT_BATCHES.to_vec(), max_global: 16_384 };
    let mut s = Searcher::new(&recipe, space("v100-32gb", GpuCount::Range { min: 8, max: 128 }, batch)).unwrap();
    let outcomes = s.run(|_, _| {}).unwrap();
    let none = Constraints::default();
    let fastest = choose(&outcomes, Objective::Fastest, none).unwrap();
    let fewest = choose(&outcomes, Objective::FewestGpus, none).unwrap();
    let cheapest = choose(&outcomes, Objective::Cheapest, none).unwrap();
    assert!(fastest.decisions.world_size > fewest.decisions.world_size);
    assert!(fastest.throughput.days < fewest.throughput.days);
    for o in outcomes.iter().filter_map(|o| o.best.as_ref()) {
        assert!(cheapest.throughput.cost_usd <= o.throughput.cost_usd);
        assert!(fastest.throughput.days <= o.throughput.days);
        assert!(fewest.decisions.world_size <= o.decisions.world_size);
    }
    // A budget between the cheapest and the fastest plan's cost.
    assert!(cheapest.throughput.cost_usd < fastest.throughput.cost_usd);
    let budget = (cheapest.throughput.cost_usd + fastest.throughput.cost_usd) / 2.0;
    let under = choose(&outcomes, Objective::FastestUnderBudget, Constraints { budget_usd: Some(budget), deadline_days: None }).unwrap();
    assert!(under.throughput.cost_usd <= budget);
    assert!(under.throughput.days >= fastest.throughput.days);
    assert!(under.throughput.days <= cheapest.throughput.days);
    // Impossible constraints say why.
    let e = choose(&outcomes, Objective::Cheapest, Constraints { budget_usd: Some(1.0), deadline_days: None }).unwrap_err();
    assert!(matches!(e, SearchError::Constraint(_)) && e.to_string().contains("cheapest plan that fits costs"), "{e}");
    let e = choose(&outcomes, Objective::FastestUnderBudget, none).unwrap_err();
    assert!(e.to_string().contains("--budget-usd"), "{e}");
}

#[test]
fn pruned_search_matches_exhaustive() {
    let recipe = Recipe::load("seer-256gf").unwrap();
    let batch = BatchPolicy::Search { candidates: vec![8, 16, 32], max_global: 16_384 };
    let run = |exhaustive: bool| {
        let mut sp = space("a100-40gb", GpuCount::Range { min: 8, max: 64 }, batch.clone());
        sp.exhaustive = exhaustive;
        let mut s = Searcher::new(&recipe, sp).unwrap();
        s.run(|_, _| {}).unwrap()
    };
    let (pruned, full) = (run(false), run(true));
    assert_eq!(pruned.len(), full.len());
    for (p, f) in pruned.iter().zip(&full) {
        let (p, f) = (p.best.as_ref().unwrap(), f.best.as_ref().unwrap());
        assert!((p.step.step_time.0 / p.decisions.batch_per_rank as f64 - f.step.step_time.0 / f.decisions.batch_per_rank as f64).abs() < 1e-12);
    }
    assert!(pruned.iter().map(|o| o.evaluated).sum::<usize>() < full.iter().map(|o| o.evaluated).sum::<usize>());
}

#[test]
fn infeasible_request_explains_why() {
    // 10B parameters with fp32 master weights, grads and momentum on one GPU.
    let recipe = Recipe::load("seer-10b").unwrap();
    let mut s = Searcher::new(&recipe, space("a100-40gb", GpuCount::Fixed(1), BatchPolicy::PerGpu(8))).unwrap();
    let outcomes = s.run(|_, _| {}).unwrap();
    assert!(outcomes[0].best.is_none());
    assert!(matches!(choose(&outcomes, Objective::Fastest, Constraints::default()), Err(SearchError::Infeasible(_))));
    let why = s.explain_infeasible(&outcomes);
    assert!(why.starts_with("needs ") && why.contains("usable") && why.contains("dominate"), "{why}");
    assert!(why.contains("A100"), "{why}");
}

#[test]
fn tiny_cpu_plan_runs_two_ranks_on_this_machine_and_round_trips() {
    let recipe = Recipe::load("tiny-cpu").unwrap();
    let mut s = Searcher::new(&recipe, space("cpu-local", GpuCount::Fixed(2), BatchPolicy::PerGpu(8))).unwrap();
    let outcomes = s.run(|_, _| {}).unwrap();
    let best = choose(&outcomes, Objective::Fastest, Constraints::default()).unwrap().clone();
    let (plan, _) = build_plan(&mut s, &best).unwrap();
    assert_eq!((plan.world_size, plan.gpus_per_node, plan.batch_per_rank), (2, 2, 8));
    assert!(plan.predicted.fits && plan.predicted.step_time_s > 0.0);
    // Two processes share the machine: each rank gets half of it.
    let cpu = load_profile("cpu-local").unwrap().hardware;
    assert_eq!(plan.hardware.memory.capacity.0, cpu.memory.capacity.0 / 2);
    assert!(plan.predicted.comm_time_s > 0.0);

    let dir = std::env::temp_dir().join(format!("seerscale-plan-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("plan.json");
    plan.save(&path).unwrap();
    let back = Plan::load(&path).unwrap();
    assert_eq!(back, plan);
    // A corrupted file names the file and the line.
    let text = std::fs::read_to_string(&path).unwrap().replacen("\"world_size\": 2", "\"world_size\": \"two\"", 1);
    std::fs::write(&path, text).unwrap();
    let e = Plan::load(&path).unwrap_err().to_string();
    assert!(e.contains("plan.json:") && e.contains("invalid type"), "{e}");
    std::fs::remove_dir_all(&dir).ok();
}

#[test]
fn one_rank_has_no_communication() {
    let recipe = Recipe::load("tiny-cpu").unwrap();
    let mut s = Searcher::new(&recipe, space("cpu-local", GpuCount::Fixed(1), BatchPolicy::PerGpu(8))).unwrap();
    let outcomes = s.run(|_, _| {}).unwrap();
    let best = outcomes[0].best.as_ref().unwrap();
    assert_eq!(best.step.comm_time.0, 0.0);
    assert_eq!(best.step.exposed_comm.0, 0.0);
    assert!((best.step.step_time.0 - best.step.compute_time.0).abs() < 1e-12);
}

/// Where the crop groups together do not fit even with every block
/// checkpointed, running backward one crop group after the other does: the
/// search finds it, and only when that order is allowed.
#[test]
fn the_search_runs_crop_groups_one_after_the_other_where_only_that_fits() {
    use cost_models::DType;
    use planner::memory::Decisions;
    use runspec::plan::Precision;
    use runspec::recipe::Wrapping;
    use runspec::schedule::BackwardOrder;
    use runspec::sharding::Sharding;
    let recipe = Recipe::load("cpu-400mf").unwrap();
    let narrow = |profile: cost_models::hardware::HardwareProfile, orders: Vec<BackwardOrder>| SearchSpace {
        wrappings: vec![Wrapping::PerBlock],
        precisions: vec![DType::Fp32],
        reshard: vec![true],
        backward_orders: orders,
        ..SearchSpace::full(vec![profile], GpuCount::Fixed(2), BatchPolicy::PerGpu(4))
    };
    let both = vec![BackwardOrder::Together, BackwardOrder::ByCropGroup];
    let base = load_profile("cpu-local").unwrap();
    let mut s = Searcher::new(&recipe, narrow(base.clone(), both.clone())).unwrap();
    let trunk = s.graph(DType::Fp32, cost_models::padding::ChannelPadding::Off, 4).trunk_blocks().count();
    let singles: Vec<std::ops::Range<usize>> = (0..trunk).map(|b| b..b + 1).collect();
    let d = |order| Decisions {
        world_size: 2,
        batch_per_rank: 4,
        precision: Precision { compute: DType::Fp32, reduce: DType::Fp32 },
        reshard_after_forward: true,
        sharding: Sharding::fsdp(2),
        wrapping: Wrapping::PerBlock,
        recompute_segments: singles.clone(),
        backward_order: order,
        channel_padding: cost_models::padding::ChannelPadding::Off,
    };
    let together = s.evaluate(0, &d(BackwardOrder::Together)).unwrap().peak;
    let by_group = s.evaluate(0, &d(BackwardOrder::ByCropGroup)).unwrap().peak;
    assert!(by_group.0 < together.0 * 9 / 10, "one group at a time {by_group} vs together {together}");

    // A machine whose rank has memory between the two.
    let mut small = base.clone();
    let m = &small.hardware.memory;
    let reserve = m.runtime.0 + m.workspace.0 + m.comm_buffers.0;
    small.hardware.memory.capacity = cost_models::Bytes(2 * ((together.0 + by_group.0) / 2 + reserve));
    let mut s = Searcher::new(&recipe, narrow(small.clone(), both)).unwrap();
    let outcomes = s.run(|_, _| {}).unwrap();
    let best = choose(&outcomes, Objective::Fastest, Constraints::default()).unwrap();
    assert_eq!(best.decisions.backward_order, BackwardOrder::ByCropGroup);
    assert!(best.fits(), "{} > {}", best.peak, best.usable);
    let (plan, report) = build_plan(&mut s, &best.clone()).unwrap();
    assert_eq!(plan.backward_order, BackwardOrder::ByCropGroup);
    assert!(report.fits());
    // Together only: nothing fits.
    let mut s = Searcher::new(&recipe, narrow(small, vec![BackwardOrder::Together])).unwrap();
    let outcomes = s.run(|_, _| {}).unwrap();
    assert!(choose(&outcomes, Objective::Fastest, Constraints::default()).is_err());
}

/// Channel padding is a choice the search prices: on SEER 10B's unaligned
/// widths it buys tensor-core time with activation memory, so on a GPU the
/// search takes it where it fits; a CPU gains nothing and never pads; a
/// fixed choice is honoured, and the plan file carries it.
#[test]
fn the_search_pads_unaligned_channels_on_a_gpu_only() {
    use cost_models::padding::ChannelPadding;
    let recipe = Recipe::load("seer-10b").unwrap();
    let fixed = |p: ChannelPadding| SearchSpace { paddings: vec![p], ..space("a100-40gb", GpuCount::Fixed(496), BatchPolicy::PerGpu(16)) };
    let best = |space: SearchSpace| {
        let mut s = Searcher::new(&recipe, space).unwrap();
        let outcomes = s.run(|_, _| {}).unwrap();
        let e = choose(&outcomes, Objective::Fastest, Constraints::default()).unwrap().clone();
        let (plan, _) = build_plan(&mut s, &e).unwrap();
        (e, plan)
    };
    let (off, off_plan) = best(fixed(ChannelPadding::Off));
    let (on, on_plan) = best(fixed(ChannelPadding::On));
    assert_eq!((off.decisions.channel_padding, on.decisions.channel_padding), (ChannelPadding::Off, ChannelPadding::On));
    assert_eq!((off_plan.channel_padding, on_plan.channel_padding), (ChannelPadding::Off, ChannelPadding::On));
    assert!(on.step.compute_time.0 < off.step.compute_time.0 / 1.2, "padded compute {:?} vs {:?}", on.step.compute_time, off.step.compute_time);
    // The same parameters, so the same shards; more activation memory at a
    // given placement.
    assert_eq!(on_plan.units, off_plan.units);
    let (auto, _) = best(space("a100-40gb", GpuCount::Fixed(496), BatchPolicy::PerGpu(16)));
    assert_eq!(auto.decisions.channel_padding, ChannelPadding::On);
    assert_eq!(auto.step.step_time, on.step.step_time);
    // On a CPU the search does not pad, even where widths are unaligned.
    let tiny = Recipe::load("tiny-cpu").unwrap();
    let mut s = Searcher::new(&tiny, space("cpu-local", GpuCount::Fixed(2), BatchPolicy::PerGpu(4))).unwrap();
    let outcomes = s.run(|_, _| {}).unwrap();
    let cpu = choose(&outcomes, Objective::Fastest, Constraints::default()).unwrap();
    assert_eq!(cpu.decisions.channel_padding, ChannelPadding::Off);
}

/// SEER 10B's published SyncBN (groups of 8) costs step time; a SwAV queue
/// costs memory (its embeddings and the taller Sinkhorn) and step time; the
/// search skips world sizes the SyncBN groups cannot tile.
#[test]
fn sync_bn_groups_and_the_queue_are_priced() {
    let seer = Recipe::load("seer-10b").unwrap();
    assert_eq!((seer.sync_bn, seer.sync_bn_group, seer.swav.freeze_prototypes_iters), (true, Some(8), 313));
    let reference = |r: &Recipe| {
        let mut s = Searcher::new(r, space("a100-40gb", GpuCount::Fixed(496), BatchPolicy::PerGpu(16))).unwrap();
        let d = reference_decisions(&mut s, 496).unwrap();
        s.evaluate(0, &d).unwrap()
    };
    let with = reference(&seer);
    let mut per_rank = seer.clone();
    (per_rank.sync_bn, per_rank.sync_bn_group) = (false, None);
    let without = reference(&per_rank);
    let sync_cost = with.step.step_time.0 - without.step.step_time.0;
    assert!(sync_cost > 0.0 && sync_cost < 0.05 * without.step.step_time.0, "SyncBN adds {sync_cost} s");
    // What `plan` prints as SyncBN's share: its blocking all-reduces, which
    // is most of what the step gains without them.
    assert_eq!(without.step.sync_bn.0, 0.0);
    assert!((with.step.sync_bn.0 - sync_cost).abs() < 0.25 * sync_cost, "{:?} vs {sync_cost}", with.step.sync_bn);
    assert_eq!(with.peak, without.peak);
    let mut queued = seer.clone();
    queued.swav.queue_length = 7936 * 4;
    let q = reference(&queued);
    assert!(
        q.peak > with.peak && q.step.step_time > with.step.step_time,
        "queue: {} / {:?} vs {} / {:?}",
        q.peak,
        q.step.step_time,
        with.peak,
        with.step.step_time
    );
    // 12 GPUs cannot hold SyncBN groups of 8: refused when asked for, skipped in a range.
    assert!(Searcher::new(&seer, space("a100-40gb", GpuCount::Fixed(12), BatchPolicy::PerGpu(16))).is_err());
    let s = Searcher::new(&seer, space("a100-40gb", GpuCount::Range { min: 1, max: 64 }, BatchPolicy::PerGpu(16))).unwrap();
    assert!(s.points().iter().all(|&(_, n)| n <= 8 || n % 8 == 0), "{:?}", s.points());
}
