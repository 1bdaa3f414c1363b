//! How ranks map onto machines: which world sizes a search considers (whole
//! nodes, plus power-of-two slices of one node for small jobs), what one
//! rank's device looks like (a CPU shared by several rank processes is split
//! between them), and the world group's links, cached per world size.

use cost_models::hardware::{DeviceKind, HardwareSpec, Measured};
use cost_models::topology::{GroupLinks, Topology, TopologyError};
use cost_models::{Bandwidth, Bytes, FlopRate};
use runspec::sharding::Sharding;
use std::collections::HashMap;

/// Most rank processes one CPU machine is split into.
const MAX_CPU_RANKS: usize = 64;

/// Candidate world sizes in `[min, max]` for this hardware, ascending.
///
/// GPUs: whole nodes, plus 1, 2, 4, ... GPUs of a single node below a full
/// node (a partial node is rentable; partial nodes beyond one are not).
/// Hardware without NICs cannot span nodes. CPUs: any number of rank
/// processes sharing the machine.
pub(crate) fn world_sizes(hw: &HardwareSpec, min: usize, max: usize) -> Vec<usize> {
    let min = min.max(1);
    let g = hw.gpus_per_node().max(1);
    let mut out = Vec::new();
    if hw.kind == DeviceKind::Cpu {
        out.extend((min..=max.min(MAX_CPU_RANKS)).filter(|&n| rank_hardware(hw, n).is_some()));
        return out;
    }
    let mut p = 1;
    while p < g {
        if (min..=max).contains(&p) {
            out.push(p);
        }
        p *= 2;
    }
    let max_nodes = if hw.interconnect.nics_per_node == 0 { 1 } else { usize::MAX };
    let mut k = 1;
    while k <= max_nodes && k * g <= max {
        if k * g >= min {
            out.push(k * g);
        }
        k += 1;
    }
    out
}

/// One rank's device for a job of `world` ranks; `None` if the machine
/// cannot host that many ranks.
///
/// A GPU job smaller than a node uses `world` GPUs of one node. A CPU
/// "device" is one machine: its ranks are processes on it, each getting an
/// equal share of the cores, memory and memory bandwidth (and of the price);
/// each process still pays the full runtime reserve (its own libtorch).
pub fn rank_hardware(hw: &HardwareSpec, world: usize) -> Option<HardwareSpec> {
    if world == 0 {
        return None;
    }
    let mut h = hw.clone();
    match hw.kind {
        DeviceKind::Gpu => {
            if world < hw.gpus_per_node() {
                h.interconnect.gpus_per_node = world;
            }
        }
        DeviceKind::Cpu => {
            if world == 1 {
                return Some(h);
            }
            if world > MAX_CPU_RANKS {
                return None;
            }
            let k = world as f64;
            let c = &mut h.compute;
            c.fp32 = FlopRate(c.fp32.0 / k);
            for r in [&mut c.tf32, &mut c.fp16, &mut c.bf16].into_iter().flatten() {
                *r = FlopRate(r.0 / k);
            }
            h.memory.capacity = Bytes(hw.memory.capacity.0 / world as u64);
            h.memory.bandwidth = Bandwidth(hw.memory.bandwidth.0 / k);
            h.price_usd_per_gpu_hour = hw.price_usd_per_gpu_hour / k;
            h.interconnect.gpus_per_node = world;
            h.name = format!("{}, shared by {world} ranks", hw.name);
            if h.memory_reserve() >= h.memory.capacity {
                return None;
            }
        }
    }
    Some(h)
}

/// A CPU profile's measurements as one rank of a `world`-rank job sees
/// them. The rates were measured by one process running `threads_per_rank`
/// threads on `host_cores` cores; ranks that each run that many threads
/// share the cores, so when `world x threads` exceeds the cores every
/// rank's rates (and fixed costs) scale by `cores / (world x threads)`.
/// Without those two fields (older profiles, the catalog) the measurements
/// are used as they are. GPUs: unchanged.
pub(crate) fn rank_measured(hw: &HardwareSpec, measured: &Measured, world: usize) -> Measured {
    let (DeviceKind::Cpu, Some(t), Some(cores)) = (hw.kind, measured.threads_per_rank, measured.host_cores) else {
        return measured.clone();
    };
    let f = (cores as f64 / (world.max(1) * t.max(1)) as f64).min(1.0);
    if f >= 1.0 {
        return measured.clone();
    }
    measured.slowed_by(1.0 / f)
}

/// Whether a `world`-rank job's compute fills every core of a CPU host
/// (`world x threads_per_rank >= cores`): then nothing runs beside the
/// step for free. Gloo's threads copy and reduce on the CPU, so a
/// collective in flight takes a core from the compute it was meant to hide
/// behind, and the data loader's threads take their CPU time from the step.
/// GPUs (their own stream; the loader runs on the host's cores) and unknown
/// threads or cores (older profiles, the catalog): no.
pub(crate) fn cores_full(hw: &HardwareSpec, measured: &Measured, world: usize) -> bool {
    match (hw.kind, measured.threads_per_rank, measured.host_cores) {
        (DeviceKind::Cpu, Some(t), Some(cores)) => world.max(1) * t.max(1) >= cores,
        _ => false,
    }
}

/// Whether a `world`-rank job's collectives run beside its compute: unless
/// the ranks fill the cores ([`cores_full`]); a single rank has none.
pub(crate) fn comm_overlaps_compute(hw: &HardwareSpec, measured: &Measured, world: usize) -> bool {
    world <= 1 || !cores_full(hw, measured, world)
}

/// Nodes a job of `world` ranks spans on `rank_hw` (from [`rank_hardware`]).
pub(crate) fn nodes_for(rank_hw: &HardwareSpec, world: usize) -> usize {
    world.div_ceil(rank_hw.gpus_per_node().max(1))
}

/// The links of every group one rank's step uses.
#[derive(Clone, Debug, PartialEq)]
pub struct RankLinks {
    pub world: GroupLinks,
    /// Its shard group (`s` consecutive ranks).
    pub shard: GroupLinks,
    /// Its replica group (the ranks with its index in their shard group).
    pub replica: GroupLinks,
    /// Its SyncBN group (`k` consecutive ranks, or the world).
    pub sync_bn: GroupLinks,
}

/// World-group links per world size (building a topology of a 1000-GPU
/// cluster is the expensive part; a sweep needs each one once).
#[derive(Default)]
pub struct LinkCache {
    links: HashMap<(String, usize), GroupLinks>,
    topologies: HashMap<(String, usize), Topology>,
    groups: HashMap<(String, usize, usize, usize), RankLinks>,
}

impl LinkCache {
    /// Rank 0's groups under `sharding` (resolved) and SyncBN groups of
    /// `sync_bn_group` ranks (`None`: the world). Every rank's groups look
    /// alike: nodes are identical and groups are aligned to them.
    pub fn groups(&mut self, rank_hw: &HardwareSpec, world: usize, sharding: Sharding, sync_bn_group: Option<usize>) -> Result<&RankLinks, TopologyError> {
        let s = sharding.resolved(world).shard_group.clamp(1, world.max(1));
        let k = sync_bn_group.unwrap_or(world).clamp(1, world.max(1));
        let hw = format!("{}/{}", rank_hw.id, rank_hw.gpus_per_node());
        let key = (hw.clone(), world, s, k);
        if !self.groups.contains_key(&key) {
            let topo = match self.topologies.entry((hw, world)) {
                std::collections::hash_map::Entry::Occupied(e) => e.into_mut(),
                std::collections::hash_map::Entry::Vacant(e) => e.insert(Topology::build(rank_hw, nodes_for(rank_hw, world))?),
            };
            let sh = Sharding::hybrid(s);
            let links = RankLinks {
                world: topo.group(&(0..world).collect::<Vec<_>>())?,
                shard: topo.group(&sh.shard_group_of(0))?,
                replica: topo.group(&sh.replica_group_of(0, world))?,
                sync_bn: topo.group(&(0..k).collect::<Vec<_>>())?,
            };
            self.groups.insert(key.clone(), links);
        }
        Ok(&self.groups[&key])
    }

    pub fn world(&mut self, rank_hw: &HardwareSpec, world: usize) -> Result<&GroupLinks, TopologyError> {
        let key = (format!("{}/{}", rank_hw.id, rank_hw.gpus_per_node()), world);
        if !self.links.contains_key(&key) {
            let topo = Topology::build(rank_hw, nodes_for(rank_hw, world))?;
            let ranks: Vec<usize> = (0..world).collect();
            let g = topo.group(&ranks)?;
            self.links.insert(key.clone(), g);
        }
        Ok(&self.links[&key])
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use cost_models::hardware::builtin_hardware;

    #[test]
    fn gpu_world_sizes_are_whole_nodes_plus_small_slices() {
        let a = builtin_hardware("a100-40gb").unwrap();
        assert_eq!(world_sizes(&a, 1, 24), vec![1, 2, 4, 8, 16, 24]);
        let w = world_sizes(&a, 8, 1024);
        assert_eq!(w.len(), 128);
        assert_eq!((w[0], w[127]), (8, 1024));
        assert!(w.contains(&496));
    }

    #[test]
    fn measured_cpu_rates_scale_only_when_ranks_oversubscribe_the_cores() {
        use cost_models::compute::OpKind;
        use cost_models::hardware::{HostCosts, OpThroughput};
        use cost_models::{DType, Seconds};
        let cpu = cost_models::hardware::builtin_hardware("cpu-local").unwrap();
        let mut m = Measured { threads_per_rank: Some(1), host_cores: Some(2), ..Measured::default() };
        m.op_throughput.push(OpThroughput { kind: OpKind::Conv, dtype: DType::Fp32, rate: FlopRate(10e9) });
        m.host = Some(HostCosts::new(Seconds(4e-6), Seconds(0.0), Seconds(0.0), Seconds(0.0)));
        // 1 or 2 single-thread ranks fit on 2 cores: the measurement as is.
        assert_eq!(rank_measured(&cpu, &m, 1), m);
        assert_eq!(rank_measured(&cpu, &m, 2), m);
        // Only a lone rank leaves a core for Gloo's threads on 2 cores.
        assert!(comm_overlaps_compute(&cpu, &m, 1));
        assert!(!comm_overlaps_compute(&cpu, &m, 2));
        assert!(comm_overlaps_compute(&cpu, &Measured { host_cores: Some(16), ..m.clone() }, 4));
        assert!(comm_overlaps_compute(&builtin_hardware("a100-40gb").unwrap(), &m, 8), "GPUs overlap on their own stream");
        assert!(comm_overlaps_compute(&cpu, &Measured::default(), 4), "unknown cores: assume overlap");
        // One single-thread rank leaves a core to the loader; two fill both.
        assert!(!cores_full(&cpu, &m, 1) && cores_full(&cpu, &m, 2) && cores_full(&cpu, &m, 4));
        assert!(cores_full(&cpu, &Measured { threads_per_rank: Some(2), ..m.clone() }, 1));
        assert!(!cores_full(&builtin_hardware("a100-40gb").unwrap(), &m, 8) && !cores_full(&cpu, &Measured::default(), 4));
        m.block_times.push(cost_models::hardware::BlockTime {
            key: "k".into(),
            label: "b".into(),
            forward: Seconds(1e-3),
            forward_no_grad: Seconds(1e-3),
            backward: Seconds(2e-3),
            backward_peak_bytes: None,
        });
        // 4 ranks share 2 cores: half the rate, twice the fixed costs.
        let four = rank_measured(&cpu, &m, 4);
        assert!((four.block_times[0].backward.0 - 4e-3).abs() < 1e-12);
        assert!((four.op_throughput[0].rate.0 - 5e9).abs() < 1.0);
        assert!((four.host.unwrap().small_op.0 - 8e-6).abs() < 1e-12);
        // 2 threads per rank: 2 ranks already oversubscribe.
        let two_threads = Measured { threads_per_rank: Some(2), ..m.clone() };
        assert!((rank_measured(&cpu, &two_threads, 2).op_throughput[0].rate.0 - 5e9).abs() < 1.0);
        // Without the fields (older profiles): unchanged.
        let old = Measured { threads_per_rank: None, ..m.clone() };
        assert_eq!(rank_measured(&cpu, &old, 4), old);
    }

    #[test]
    fn cpu_ranks_share_one_machine() {
        let cpu = builtin_hardware("cpu-local").unwrap();
        let one = rank_hardware(&cpu, 1).unwrap();
        assert_eq!(one, cpu);
        let two = rank_hardware(&cpu, 2).unwrap();
        assert_eq!(two.gpus_per_node(), 2);
        assert_eq!(two.memory.capacity.0, cpu.memory.capacity.0 / 2);
        assert!((two.compute.fp32.0 * 2.0 - cpu.compute.fp32.0).abs() < 1.0);
        assert!(two.validate().is_ok());
        assert_eq!(nodes_for(&two, 2), 1);
        let mut cache = LinkCache::default();
        let g = cache.world(&two, 2).unwrap();
        assert_eq!((g.ranks, g.nodes), (2, 1));
        assert!(g.intra.is_some() && g.inter.is_none());
        assert!(world_sizes(&cpu, 1, 4).contains(&2));
    }

    #[test]
    fn sub_node_gpu_job_has_one_node() {
        let h = builtin_hardware("h100-80gb").unwrap();
        let r = rank_hardware(&h, 4).unwrap();
        assert_eq!(nodes_for(&r, 4), 1);
        let mut cache = LinkCache::default();
        assert_eq!(cache.world(&r, 4).unwrap().nodes, 1);
        let full = rank_hardware(&h, 16).unwrap();
        assert_eq!(cache.world(&full, 16).unwrap().nodes, 2);
    }
}
