//! What one set of decisions costs: graphs, per-op costs, the memory
//! model and the simulated step, each built once and cached.

use super::*;
use crate::cluster::{rank_hardware, RankLinks};
use crate::failures::checkpoint_bytes_per_rank;
use crate::memory::{Decisions, MemoryModel};
use crate::simulator::StepResult;
use crate::step_costs::{step_profile, GraphCosts, WorldCosts};
use crate::wrapping::{units_for, Unit};
use cost_models::compute::ComputeModel;
use cost_models::graph::{ModelGraph, Workload};
use cost_models::hardware::{HardwareProfile, HardwareSpec};
use cost_models::padding::ChannelPadding;
use cost_models::{Bytes, DType};
use runspec::recipe::Wrapping;
use runspec::sharding::Sharding;

impl<'r> Searcher<'r> {
    /// The layer graph of one rank's step at (dtype, padding, batch), cached.
    pub fn graph(&mut self, dtype: DType, padding: ChannelPadding, batch: usize) -> &ModelGraph {
        let (model, recipe) = (&self.model, self.recipe);
        self.graphs
            .entry((dtype, padding, batch))
            .or_insert_with(|| ModelGraph::build_executed(model, &Workload { images: batch as u64, crops: recipe.crop_groups(), dtype }, padding))
    }

    pub(super) fn units(&mut self, wrapping: Wrapping) -> &[Unit] {
        if !self.units.contains_key(&wrapping) {
            // Units depend on names and parameter counts only: any batch will do.
            let u = units_for(self.graph(DType::Fp32, ChannelPadding::Off, 1), wrapping);
            self.units.insert(wrapping, u);
        }
        &self.units[&wrapping]
    }

    /// Collective costs of `world` ranks on hardware `h` under `sharding`.
    pub(super) fn world_costs<'a>(&'a self, h: usize, links: &'a RankLinks, world: usize, sharding: Sharding) -> WorldCosts<'a> {
        let p = &self.space.hardware[h];
        WorldCosts {
            links,
            collectives: &self.collectives[h],
            world_size: world,
            sharding: sharding.resolved(world),
            overlap: crate::cluster::comm_overlaps_compute(&p.hardware, &p.measured, world),
            cores_full: crate::cluster::cores_full(&p.hardware, &p.measured, world),
        }
    }

    /// CPU ranks split the machine, so their op costs depend on the share.
    pub(super) fn share(&self, h: usize, world: usize) -> usize {
        match self.space.hardware[h].hardware.kind {
            cost_models::hardware::DeviceKind::Cpu => world,
            cost_models::hardware::DeviceKind::Gpu => 1,
        }
    }

    pub(super) fn compute_model(&mut self, h: usize, share: usize, rank_hw: &HardwareSpec) -> &ComputeModel {
        let profile = &self.space.hardware[h];
        self.computes.entry((h, share)).or_insert_with(|| {
            let measured = crate::cluster::rank_measured(&profile.hardware, &profile.measured, share);
            ComputeModel::new(&HardwareProfile { hardware: rank_hw.clone(), measured })
        })
    }

    pub(super) fn graph_costs(
        &mut self,
        h: usize,
        share: usize,
        rank_hw: &HardwareSpec,
        dtype: DType,
        padding: ChannelPadding,
        batch: usize,
    ) -> Result<&GraphCosts, SearchError> {
        let key = (h, share, dtype, padding, batch);
        if !self.costs.contains_key(&key) {
            let compute = self.compute_model(h, share, rank_hw).clone();
            let recipe = self.recipe;
            let g = self.graph(dtype, padding, batch);
            let c = GraphCosts::new(g, &compute, recipe)?;
            self.costs.insert(key, c);
        }
        Ok(&self.costs[&key])
    }

    /// The simulator's input for one set of decisions: every op's time in
    /// execution order (for phase-by-phase comparisons).
    pub fn step_profile(&mut self, h: usize, d: &Decisions) -> Result<crate::simulator::StepProfile, SearchError> {
        let rank_hw = rank_hardware(&self.space.hardware[h].hardware, d.world_size)
            .ok_or_else(|| SearchError::Request(format!("{} cannot host {} ranks", self.space.hardware[h].hardware.name, d.world_size)))?;
        self.step_profile_on(h, &rank_hw, d)
    }

    /// [`Searcher::step_profile`] on one rank's device.
    pub(super) fn step_profile_on(&mut self, h: usize, rank_hw: &HardwareSpec, d: &Decisions) -> Result<crate::simulator::StepProfile, SearchError> {
        let share = self.share(h, d.world_size);
        self.graph_costs(h, share, rank_hw, d.precision.compute, d.channel_padding, d.batch_per_rank)?;
        self.units(d.wrapping);
        let compute = self.compute_model(h, share, rank_hw).clone();
        let links = self.links.groups(rank_hw, d.world_size, d.sharding, self.recipe.sync_bn_group_for(d.world_size).ok().flatten())?.clone();
        let gc = &self.costs[&(h, share, d.precision.compute, d.channel_padding, d.batch_per_rank)];
        let units = &self.units[&d.wrapping];
        let w = self.world_costs(h, &links, d.world_size, d.sharding);
        let p = &d.precision;
        Ok(step_profile(gc, units, &d.recompute_segments, self.recipe, p.compute, p.reduce, d.reshard_after_forward, d.backward_order, &compute, &w))
    }

    /// Simulates one set of decisions (checkpoint segments given).
    pub fn simulate(&mut self, h: usize, rank_hw: &HardwareSpec, d: &Decisions) -> Result<(StepResult, f64), SearchError> {
        let profile = self.step_profile_on(h, rank_hw, d)?;
        let share = self.share(h, d.world_size);
        let flops = self.costs[&(h, share, d.precision.compute, d.channel_padding, d.batch_per_rank)].model_flops.0;
        Ok((self.sim.run(&profile), flops))
    }

    /// Bytes one rank writes per checkpoint under `d`.
    pub fn checkpoint_per_rank(&mut self, d: &Decisions) -> Bytes {
        self.units(d.wrapping);
        let s = d.shard_group();
        let shard: u64 = self.units[&d.wrapping].iter().map(|u| u.shard_len(s)).sum();
        let states = self.recipe.optim.kind.states_per_param();
        checkpoint_bytes_per_rank(shard, states, &self.graphs[&(DType::Fp32, ChannelPadding::Off, 1)])
    }

    /// Peak memory of one set of decisions (checkpoint segments given).
    pub fn memory(&mut self, h: usize, rank_hw: &HardwareSpec, d: &Decisions) -> MemoryModel {
        self.units(d.wrapping);
        self.measured_backward(h, d);
        let g = &self.graphs[&(d.precision.compute, d.channel_padding, d.batch_per_rank)];
        let measured = &self.measured_bwd[&(h, d.precision.compute, d.channel_padding, d.batch_per_rank)];
        MemoryModel::calibrated(g, &self.units[&d.wrapping], self.recipe, d, rank_hw, measured)
    }

    /// The profile's measured backward peaks for `d`'s graph, per block
    /// (matched once per hardware and graph: keys cost a pass over the layers).
    pub fn measured_backward(&mut self, h: usize, d: &Decisions) -> &[Option<u64>] {
        let key = (h, d.precision.compute, d.channel_padding, d.batch_per_rank);
        if !self.measured_bwd.contains_key(&key) {
            self.graph(key.1, key.2, key.3);
            let m = crate::memory::measured_backward(&self.space.hardware[h].measured, &self.graphs[&(key.1, key.2, key.3)]);
            self.measured_bwd.insert(key, m);
        }
        &self.measured_bwd[&key]
    }

    /// The share of the graph's forward and backward kernel time in
    /// unaligned GEMMs on hardware `h` (0 without a GPU kernel model).
    pub fn unaligned_share(&mut self, h: usize, dtype: DType, padding: ChannelPadding, batch: usize) -> f64 {
        let key = (h, dtype, padding, batch);
        if let Some(&share) = self.unaligned.get(&key) {
            return share;
        }
        let share = match cost_models::kernels::KernelModel::new(&self.space.hardware[h].hardware) {
            Some(k) => {
                let g = self.graph(dtype, padding, batch);
                k.unaligned_share(g.blocks.iter().flat_map(|b| g.layers_of(b)))
            }
            None => 0.0,
        };
        self.unaligned.insert(key, share);
        share
    }
}
