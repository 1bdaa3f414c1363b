//! The step schedule: the ordered events one rank runs in a training step,
//! compiled once from a plan. The executor runs it event by event
//! (`executor::step`); the planner's memory replay and step simulator cost
//! the same events, so the two describe one step, not two.
//!
//! Rules the compiler follows (FSDP as the executor runs it):
//! * forward, block by block: gather the block's units, prefetch the next
//!   block's, run the block (keeping its graph, or inside a checkpointed
//!   segment only the segment's input), then reshard the units whose last
//!   block it was (unless they are the last block's, which backward needs
//!   at once);
//! * the loss on the last block's output;
//! * backward, last block first: at the end of a checkpointed segment
//!   gather all its units and recompute it with autograd; gather the
//!   block's units, prefetch the previous block's, run its backward; every
//!   unit whose first block it was has its gradient: free its parameters
//!   and reduce the gradient (see below);
//! * wait for the reductions still in flight, free every unit, all-reduce
//!   the loss value, the optimiser.
//!
//! The backward order of the crop groups is a choice ([`BackwardOrder`]).
//! Trunk blocks run each crop group separately; the first head block pools
//! and joins them. `Together` back-propagates every group through a block
//! before the previous block (one reduction per unit). `ByCropGroup` runs
//! the head's backward once, then the whole trunk for the last group, then
//! for the one before, ... as autograd orders one graph per group: only one
//! group's recompute and gradients are alive at a time. Each pass reduces
//! the gradient it produced (one more reduction per trunk unit and group,
//! as FSDP2 does for a module run several times) and, when resharding,
//! frees a unit after its first block and gathers it again in the next pass.
//!
//! A unit's gradient is reduced by the sharding's collectives
//! (`sharding::Reduction`): a reduce-scatter within the shard group, then
//! an all-reduce of the shard across replicas, then added into the fp32
//! shard gradient. Each kind keeps at most [`MAX_IN_FLIGHT`] in flight: the
//! oldest is waited for when another starts, which bounds the gradient
//! buffers alive at once.

use crate::sharding::Reduction;
use serde::{Deserialize, Serialize};
use std::collections::VecDeque;
use std::ops::Range;

/// Reduce-scatters (and, separately, all-reduces) one rank keeps in flight.
pub const MAX_IN_FLIGHT: usize = 2;

/// The order in which backward runs the trunk's crop groups.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackwardOrder {
    /// Every crop group through a block, then the previous block.
    #[default]
    Together,
    /// The whole trunk for one crop group, then for the next (last first).
    ByCropGroup,
}

impl BackwardOrder {
    pub fn name(self) -> &'static str {
        match self {
            BackwardOrder::Together => "together",
            BackwardOrder::ByCropGroup => "by_crop_group",
        }
    }

    /// From [`BackwardOrder::name`].
    pub fn parse(s: &str) -> Option<BackwardOrder> {
        [BackwardOrder::Together, BackwardOrder::ByCropGroup].into_iter().find(|o| o.name() == s)
    }
}

/// What a forward block keeps for its backward.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Keep {
    /// Its autograd graph (a block outside checkpointed segments).
    Graph,
    /// Only its input: the first block of a checkpointed segment, run
    /// without autograd.
    SegmentInput,
    /// Nothing: a later block of a checkpointed segment.
    Nothing,
}

/// One thing a rank does in a step.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "event", rename_all = "snake_case")]
pub enum Event {
    /// Normalise the prototypes, zero the gradients, move the batch.
    Prologue,
    /// All-gather a unit's parameters, or wait for its prefetch.
    Gather { unit: usize },
    /// Start a unit's all-gather ahead of the block that needs it.
    Prefetch { unit: usize },
    /// A block's forward.
    Forward { block: usize, keep: Keep },
    /// Free a unit's gathered parameters after its last forward block.
    Reshard { unit: usize },
    /// The SwAV loss on the last block's output (Sinkhorn included).
    Loss,
    /// A block of a checkpointed segment run again with autograd, just
    /// before the segment's backward; `group`: one crop group only (`None`:
    /// every group).
    Recompute {
        block: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<usize>,
    },
    /// A block's backward: gradients of its input and its parameters, for
    /// one crop group (`group`) or every group (`None`).
    Backward {
        block: usize,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        group: Option<usize>,
    },
    /// A unit's gradient (of this backward pass) is complete: free its
    /// gathered parameters.
    GradReady { unit: usize },
    /// Start reduce-scattering a unit's gradient within the shard group.
    ReduceScatter { unit: usize },
    /// Wait for a unit's reduce-scatter; its unsharded gradient is freed.
    WaitReduceScatter { unit: usize },
    /// Start all-reducing a unit's (scattered) gradient across replicas.
    AllReduce { unit: usize },
    /// Wait for a unit's all-reduce.
    WaitAllReduce { unit: usize },
    /// Add a unit's reduced gradient into its fp32 shard gradient and free
    /// the buffer it was reduced in.
    ShardGrad { unit: usize },
    /// Every reduction has been waited for; free every unit.
    Drain,
    /// All-reduce the step's loss value.
    LossAllReduce,
    /// LARC norms and the optimiser's update of the shards.
    Optimizer,
}

/// Which units each block needs: what the schedule is compiled from.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Layout {
    /// For each block (forward order), the units owning its parameters, in
    /// unit order.
    pub units_of_block: Vec<Vec<usize>>,
    /// For each unit, the first and last block it owns parameters of
    /// (`None`: it owns none).
    pub span: Vec<Option<(usize, usize)>>,
    /// Crop groups the trunk runs separately (1: one batch).
    pub crop_groups: usize,
    /// Blocks `0..trunk` run each crop group separately; the next one
    /// joins them.
    pub trunk: usize,
}

impl Layout {
    /// From each unit's blocks (as `Ownership::blocks_of_units` gives them).
    pub fn new(num_blocks: usize, blocks_of_units: &[Vec<usize>]) -> Layout {
        let mut units_of_block = vec![Vec::new(); num_blocks];
        for (u, blocks) in blocks_of_units.iter().enumerate() {
            for &b in blocks.iter().filter(|&&b| b < num_blocks) {
                units_of_block[b].push(u);
            }
        }
        let span = blocks_of_units.iter().map(|b| Some((*b.iter().min()?, *b.iter().max()?))).collect();
        Layout { units_of_block, span, crop_groups: 1, trunk: num_blocks }
    }

    /// The same layout with `groups` crop groups run separately by blocks
    /// `0..trunk`.
    pub fn with_crop_groups(self, groups: usize, trunk: usize) -> Layout {
        let trunk = trunk.min(self.num_blocks());
        Layout { crop_groups: groups.max(1), trunk, ..self }
    }

    pub fn num_blocks(&self) -> usize {
        self.units_of_block.len()
    }
}

/// The compiled step.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Schedule {
    pub events: Vec<Event>,
}

impl Schedule {
    /// Compiles the step for `layout`, checkpointed `segments` (block
    /// ranges: in order, disjoint, within the model), the reshard policy,
    /// the collectives that reduce a gradient and the crop groups' order in
    /// backward.
    pub fn compile(layout: &Layout, segments: &[Range<usize>], reshard_after_forward: bool, reduction: Reduction, order: BackwardOrder) -> Schedule {
        let n = layout.num_blocks();
        let mut seg_of = vec![None; n];
        for (si, s) in segments.iter().enumerate() {
            for b in s.clone().filter(|&b| b < n) {
                seg_of[b] = Some(si);
            }
        }
        let units = |b: usize| layout.units_of_block[b].iter().copied();
        let last_units: Vec<usize> = if n > 0 { units(n - 1).collect() } else { Vec::new() };
        let mut reducer = Reducer { reduction, scattering: VecDeque::new(), reducing: VecDeque::new() };
        let mut ev = vec![Event::Prologue];
        for (b, &seg) in seg_of.iter().enumerate() {
            ev.extend(units(b).map(|unit| Event::Gather { unit }));
            if b + 1 < n {
                ev.extend(units(b + 1).map(|unit| Event::Prefetch { unit }));
            }
            let keep = match seg {
                None => Keep::Graph,
                Some(s) if segments[s].start == b => Keep::SegmentInput,
                Some(_) => Keep::Nothing,
            };
            ev.push(Event::Forward { block: b, keep });
            if reshard_after_forward {
                ev.extend(
                    units(b).filter(|u| layout.span[*u].is_some_and(|(_, last)| last == b) && !last_units.contains(u)).map(|unit| Event::Reshard { unit }),
                );
            }
        }
        if n > 0 {
            ev.push(Event::Loss);
        }
        // One pass over every block (`Together`, or a single crop group),
        // or the head once and then one pass over the trunk per crop group.
        let groups = layout.crop_groups;
        let passes: Vec<(Range<usize>, Option<usize>)> = if order == BackwardOrder::ByCropGroup && groups > 1 && layout.trunk > 0 {
            let trunk = layout.trunk.min(n);
            std::iter::once((trunk..n, None)).chain((0..groups).rev().map(|g| (0..trunk, Some(g)))).collect()
        } else {
            vec![(0..n, None)]
        };
        for (blocks, group) in passes {
            let last_pass = group.is_none_or(|g| g == 0);
            for b in blocks.rev() {
                if let Some(s) = seg_of[b].filter(|&s| segments[s].end - 1 == b) {
                    let seg = segments[s].clone();
                    for j in seg.clone() {
                        ev.extend(units(j).map(|unit| Event::Gather { unit }));
                    }
                    ev.extend(seg.map(|block| Event::Recompute { block, group }));
                }
                ev.extend(units(b).map(|unit| Event::Gather { unit }));
                if b > 0 {
                    ev.extend(units(b - 1).map(|unit| Event::Prefetch { unit }));
                }
                ev.push(Event::Backward { block: b, group });
                for unit in units(b).filter(|u| layout.span[*u].is_some_and(|(first, _)| first == b)) {
                    // A pass before the last keeps the unit gathered for the
                    // next one unless it reshards.
                    if last_pass || reshard_after_forward {
                        ev.push(Event::GradReady { unit });
                    }
                    reducer.start(&mut ev, unit);
                }
            }
        }
        reducer.finish(&mut ev);
        ev.extend([Event::Drain, Event::LossAllReduce, Event::Optimizer]);
        Schedule { events: ev }
    }

    /// The schedule of `plan` (its units resolved against its model's
    /// parameters by the ownership rule, its segments, its reshard policy).
    pub fn from_plan(plan: &crate::plan::Plan) -> Result<Schedule, crate::units::UnitError> {
        let graph = plan.graph();
        let mut names = Vec::new();
        let mut block_of = Vec::new();
        for (bi, b) in graph.blocks.iter().enumerate() {
            for (p, _) in &b.param_tensors {
                names.push(p.as_str());
                block_of.push(bi);
            }
        }
        let units: Vec<(String, Vec<String>)> = plan.units.iter().map(|u| (u.name.clone(), u.members.clone())).collect();
        let own = crate::units::assign(&names, &units)?;
        let layout = Layout::new(graph.blocks.len(), &own.blocks_of_units(&block_of));
        let names: Vec<&str> = graph.blocks.iter().map(|b| b.name.as_str()).collect();
        // Plan::check (on load) holds the segments to the model.
        let segments: Vec<Range<usize>> = plan.segment_ranges(&names).unwrap_or_default();
        let trunk = graph.trunk_blocks().count();
        let layout = layout.with_crop_groups(plan.recipe.crop_groups().len(), trunk);
        Ok(Schedule::compile(&layout, &segments, plan.reshard_after_forward, plan.sharding.reduction(plan.world_size), plan.backward_order))
    }

    /// The forward and backward pass: the events after the prologue, up to
    /// and including the drain (what `executor::step` runs).
    pub fn pass(&self) -> &[Event] {
        let start = self.events.iter().position(|e| *e == Event::Prologue).map_or(0, |i| i + 1);
        let end = self.events.iter().position(|e| *e == Event::Drain).map_or(self.events.len(), |i| i + 1);
        &self.events[start..end.max(start)]
    }

    /// The events as one line each, for diffs in tests and reports.
    pub fn lines(events: &[Event]) -> Vec<String> {
        events.iter().map(|e| format!("{e:?}")).collect()
    }
}

/// The gradient pipeline of [`Schedule::compile`]: each stage keeps at most
/// [`MAX_IN_FLIGHT`] collectives in flight, oldest waited for first.
struct Reducer {
    reduction: Reduction,
    scattering: VecDeque<usize>,
    reducing: VecDeque<usize>,
}

impl Reducer {
    /// `unit`'s gradient is complete. A reduction of the same unit still in
    /// flight (from an earlier crop-group pass) is finished first: a unit
    /// has one reduction buffer.
    fn start(&mut self, ev: &mut Vec<Event>, unit: usize) {
        while self.scattering.contains(&unit) {
            let oldest = self.scattering.pop_front().unwrap_or(unit);
            self.scattered(ev, oldest);
        }
        while self.reducing.contains(&unit) {
            let oldest = self.reducing.pop_front().unwrap_or(unit);
            ev.extend([Event::WaitAllReduce { unit: oldest }, Event::ShardGrad { unit: oldest }]);
        }
        if self.reduction.scatter {
            ev.push(Event::ReduceScatter { unit });
            self.scattering.push_back(unit);
            while self.scattering.len() > MAX_IN_FLIGHT {
                let oldest = self.scattering.pop_front().unwrap_or(unit);
                self.scattered(ev, oldest);
            }
        } else {
            self.across_replicas(ev, unit);
        }
    }

    fn scattered(&mut self, ev: &mut Vec<Event>, unit: usize) {
        ev.push(Event::WaitReduceScatter { unit });
        self.across_replicas(ev, unit);
    }

    fn across_replicas(&mut self, ev: &mut Vec<Event>, unit: usize) {
        if !self.reduction.all_reduce {
            ev.push(Event::ShardGrad { unit });
            return;
        }
        ev.push(Event::AllReduce { unit });
        self.reducing.push_back(unit);
        while self.reducing.len() > MAX_IN_FLIGHT {
            let oldest = self.reducing.pop_front().unwrap_or(unit);
            ev.extend([Event::WaitAllReduce { unit: oldest }, Event::ShardGrad { unit: oldest }]);
        }
    }

    /// The end of backward: wait for everything still in flight.
    fn finish(&mut self, ev: &mut Vec<Event>) {
        while let Some(unit) = self.scattering.pop_front() {
            self.scattered(ev, unit);
        }
        while let Some(unit) = self.reducing.pop_front() {
            ev.extend([Event::WaitAllReduce { unit }, Event::ShardGrad { unit }]);
        }
    }
}

#[cfg(test)]
#[allow(clippy::single_range_in_vec_init)] // one checkpointed segment, not a range of blocks
mod tests {
    use super::*;
    use Event::*;

    /// Five blocks; unit 0 = blocks 0-1, unit 1 = block 2, unit 2 = blocks 3-4.
    fn layout() -> Layout {
        Layout::new(5, &[vec![0, 1], vec![2], vec![3, 4]])
    }

    #[test]
    fn forward_gathers_prefetches_and_reshards_after_a_units_last_block() {
        let s = Schedule::compile(&layout(), &[], true, FSDP, BackwardOrder::Together);
        let fwd: Vec<Event> = s.events.iter().copied().take_while(|e| *e != Loss).collect();
        assert_eq!(
            fwd,
            vec![
                Prologue,
                Gather { unit: 0 },
                Prefetch { unit: 0 },
                Forward { block: 0, keep: Keep::Graph },
                Gather { unit: 0 },
                Prefetch { unit: 1 },
                Forward { block: 1, keep: Keep::Graph },
                Reshard { unit: 0 },
                Gather { unit: 1 },
                Prefetch { unit: 2 },
                Forward { block: 2, keep: Keep::Graph },
                Reshard { unit: 1 },
                Gather { unit: 2 },
                Prefetch { unit: 2 },
                Forward { block: 3, keep: Keep::Graph },
                Gather { unit: 2 },
                Forward { block: 4, keep: Keep::Graph },
            ]
        );
        // Without resharding nothing is freed before the drain.
        assert!(!Schedule::compile(&layout(), &[], false, FSDP, BackwardOrder::Together).events.iter().any(|e| matches!(e, Reshard { .. })));
    }

    #[test]
    fn a_checkpointed_segment_keeps_its_input_and_is_recomputed_before_its_backward() {
        let s = Schedule::compile(&layout(), &[1..3], true, FSDP, BackwardOrder::Together);
        let fwd: Vec<Event> = s.events.iter().copied().filter(|e| matches!(e, Forward { .. })).collect();
        assert_eq!(
            fwd,
            vec![
                Forward { block: 0, keep: Keep::Graph },
                Forward { block: 1, keep: Keep::SegmentInput },
                Forward { block: 2, keep: Keep::Nothing },
                Forward { block: 3, keep: Keep::Graph },
                Forward { block: 4, keep: Keep::Graph },
            ]
        );
        let at = |e: Event| s.events.iter().position(|x| *x == e).unwrap();
        // The segment (blocks 1-2) is recomputed right before block 2's backward, after block 3's.
        assert!(at(Backward { block: 3, group: None }) < at(Recompute { block: 1, group: None }));
        assert!(at(Recompute { block: 1, group: None }) < at(Recompute { block: 2, group: None }));
        assert!(at(Recompute { block: 2, group: None }) < at(Backward { block: 2, group: None }));
        // Its units are gathered first.
        let r = at(Recompute { block: 1, group: None });
        assert_eq!(&s.events[r - 2..r], &[Gather { unit: 0 }, Gather { unit: 1 }]);
    }

    /// What reduces gradients under FSDP over several ranks.
    const FSDP: Reduction = Reduction { scatter: true, all_reduce: false };

    /// The gradient events after the last backward, as lines.
    fn tail(s: &Schedule) -> Vec<Event> {
        let last = s.events.iter().rposition(|e| matches!(e, Backward { .. })).unwrap();
        s.events[last + 1..].to_vec()
    }

    #[test]
    fn a_units_reduce_scatter_starts_after_the_backward_of_its_first_block() {
        let s = Schedule::compile(&layout(), &[], true, FSDP, BackwardOrder::Together);
        let at = |e: Event| s.events.iter().position(|x| *x == e).unwrap();
        assert_eq!(at(GradReady { unit: 2 }), at(Backward { block: 3, group: None }) + 1);
        assert_eq!(at(ReduceScatter { unit: 2 }), at(Backward { block: 3, group: None }) + 2);
        assert_eq!(at(ReduceScatter { unit: 1 }), at(Backward { block: 2, group: None }) + 2);
        // The third in flight waits for the oldest.
        assert_eq!(at(WaitReduceScatter { unit: 2 }), at(ReduceScatter { unit: 0 }) + 1);
        assert_eq!(
            tail(&s),
            vec![
                GradReady { unit: 0 },
                ReduceScatter { unit: 0 },
                WaitReduceScatter { unit: 2 },
                ShardGrad { unit: 2 },
                WaitReduceScatter { unit: 1 },
                ShardGrad { unit: 1 },
                WaitReduceScatter { unit: 0 },
                ShardGrad { unit: 0 },
                Drain,
                LossAllReduce,
                Optimizer
            ]
        );
    }

    /// Hybrid sharding: each scattered shard is all-reduced across
    /// replicas once its reduce-scatter has been waited for; DDP
    /// all-reduces the whole gradient; one rank only adds it.
    #[test]
    fn hybrid_ddp_and_one_rank_reduce_by_their_collectives() {
        let hybrid = Schedule::compile(&layout(), &[], true, Reduction { scatter: true, all_reduce: true }, BackwardOrder::Together);
        assert_eq!(
            tail(&hybrid),
            vec![
                GradReady { unit: 0 },
                ReduceScatter { unit: 0 },
                WaitReduceScatter { unit: 2 },
                AllReduce { unit: 2 },
                WaitReduceScatter { unit: 1 },
                AllReduce { unit: 1 },
                WaitReduceScatter { unit: 0 },
                AllReduce { unit: 0 },
                WaitAllReduce { unit: 2 },
                ShardGrad { unit: 2 },
                WaitAllReduce { unit: 1 },
                ShardGrad { unit: 1 },
                WaitAllReduce { unit: 0 },
                ShardGrad { unit: 0 },
                Drain,
                LossAllReduce,
                Optimizer
            ]
        );
        let ddp = Schedule::compile(&layout(), &[], true, Reduction { scatter: false, all_reduce: true }, BackwardOrder::Together);
        let at = |e: Event| ddp.events.iter().position(|x| *x == e).unwrap();
        assert_eq!(at(AllReduce { unit: 2 }), at(Backward { block: 3, group: None }) + 2);
        assert_eq!(at(WaitAllReduce { unit: 2 }), at(AllReduce { unit: 0 }) + 1);
        assert!(!ddp.events.iter().any(|e| matches!(e, ReduceScatter { .. } | WaitReduceScatter { .. })));
        let one = Schedule::compile(&layout(), &[], true, Reduction::default(), BackwardOrder::Together);
        let at = |e: Event| one.events.iter().position(|x| *x == e).unwrap();
        assert_eq!(at(ShardGrad { unit: 1 }), at(GradReady { unit: 1 }) + 1);
        assert!(!one.events.iter().any(|e| matches!(e, ReduceScatter { .. } | AllReduce { .. })));
        // Every unit's gradient reaches its shard exactly once, whatever reduces it.
        for s in [&hybrid, &ddp, &one] {
            for unit in 0..3 {
                assert_eq!(s.events.iter().filter(|e| **e == ShardGrad { unit }).count(), 1);
            }
        }
    }

    /// Two crop groups, blocks 0-3 the trunk, block 4 the head.
    #[test]
    fn by_crop_group_runs_the_head_once_then_the_trunk_per_group_last_group_first() {
        let two = layout().with_crop_groups(2, 4);
        let s = Schedule::compile(&two, &[1..3], true, FSDP, BackwardOrder::ByCropGroup);
        let compute: Vec<Event> = s.events.iter().copied().filter(|e| matches!(e, Recompute { .. } | Backward { .. })).collect();
        let pass = |g| {
            vec![
                Backward { block: 3, group: Some(g) },
                Recompute { block: 1, group: Some(g) },
                Recompute { block: 2, group: Some(g) },
                Backward { block: 2, group: Some(g) },
                Backward { block: 1, group: Some(g) },
                Backward { block: 0, group: Some(g) },
            ]
        };
        let want: Vec<Event> = std::iter::once(Backward { block: 4, group: None }).chain(pass(1)).chain(pass(0)).collect();
        assert_eq!(compute, want);
        // Each trunk unit is reduced once per group (the head's unit 2 owns
        // block 3 too, so it is reduced twice as well); every reduction is
        // waited for before the same unit's next one starts.
        for unit in 0..3 {
            assert_eq!(s.events.iter().filter(|e| **e == ReduceScatter { unit }).count(), 2, "unit {unit}");
            assert_eq!(s.events.iter().filter(|e| **e == ShardGrad { unit }).count(), 2, "unit {unit}");
        }
        let mut in_flight = std::collections::HashSet::new();
        for e in &s.events {
            match *e {
                ReduceScatter { unit } => assert!(in_flight.insert(unit), "unit {unit} scattered twice at once"),
                WaitReduceScatter { unit } => assert!(in_flight.remove(&unit)),
                _ => {}
            }
        }
        // Resharding: unit 0 is freed after the first pass and gathered again.
        let at = |e: Event| s.events.iter().position(|x| *x == e).unwrap();
        let second = at(Backward { block: 3, group: Some(0) });
        assert!(s.events[..second].contains(&GradReady { unit: 0 }));
        assert!(s.events[second..].contains(&Gather { unit: 0 }));
        // Without resharding the units stay gathered between passes.
        let kept = Schedule::compile(&two, &[1..3], false, FSDP, BackwardOrder::ByCropGroup);
        assert_eq!(kept.events.iter().filter(|e| **e == GradReady { unit: 0 }).count(), 1);
        // One crop group: the same step as together.
        let one = layout().with_crop_groups(1, 4);
        assert_eq!(
            Schedule::compile(&one, &[1..3], true, FSDP, BackwardOrder::ByCropGroup),
            Schedule::compile(&one, &[1..3], true, FSDP, BackwardOrder::Together)
        );
    }

    #[test]
    fn events_read_back_from_json() {
        let s = Schedule::compile(&layout().with_crop_groups(2, 4), &[1..3], false, FSDP, BackwardOrder::ByCropGroup);
        let back: Schedule = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
