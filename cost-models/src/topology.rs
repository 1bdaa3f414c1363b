//! Cluster topology as a graph: GPUs, one NVSwitch per node, NICs, one
//! fabric switch. Edges carry the achievable per-direction bandwidth and the
//! latency of one hop. From it we derive, for any group of ranks, the
//! bottleneck bus bandwidth and per-step latency of the intra-node part
//! (GPU → NVSwitch → GPU) and the inter-node part (GPU → NIC → fabric → NIC
//! → GPU) that collective cost formulas need.
//!
//! Ranks are laid out node-major (rank r is GPU r % g of node r / g), as
//! torchrun does. GPUs are wired to NICs rail-aligned (GPU i uses NIC
//! i·nics/g), as in DGX nodes; the fabric is a non-blocking switch scaled by
//! the spec's oversubscription.

use crate::hardware::HardwareSpec;
use crate::quantity::{Bandwidth, Seconds};
use petgraph::algo::astar;
use petgraph::graph::{EdgeIndex, NodeIndex, UnGraph};
use petgraph::visit::NodeFiltered;
use std::collections::{BTreeMap, BTreeSet};

#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum TopologyError {
    #[error("a cluster needs at least one node")]
    NoNodes,
    #[error("{hardware} has no NICs (nics_per_node = 0): it cannot span {nodes} nodes")]
    NoNetwork { hardware: String, nodes: usize },
    #[error("rank {rank} is outside the cluster of {world} ranks")]
    RankOutOfRange { rank: usize, world: usize },
    #[error("rank {0} appears twice in the group")]
    DuplicateRank(usize),
    #[error("a group needs at least one rank")]
    EmptyGroup,
    #[error("no path between ranks {0} and {1}")]
    NoPath(usize, usize),
}

/// A vertex of the topology graph.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Device {
    Gpu { rank: usize, node: usize, local: usize },
    NvSwitch { node: usize },
    Nic { node: usize, index: usize },
    Fabric,
}

/// An edge: achievable bandwidth per direction and one-hop latency.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Link {
    pub bandwidth: Bandwidth,
    pub latency: Seconds,
}

/// What a ring step over some links costs: the bottleneck bandwidth and the
/// latency of one step.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct LinkCost {
    pub bus_bandwidth: Bandwidth,
    pub latency: Seconds,
}

/// A group of ranks seen by the collective model.
#[derive(Clone, Debug, PartialEq)]
pub struct GroupLinks {
    /// Number of ranks in the group.
    pub ranks: usize,
    /// Number of nodes the group touches.
    pub nodes: usize,
    /// Group ranks on the node with the fewest / most of them.
    pub min_per_node: usize,
    pub max_per_node: usize,
    /// GPU ↔ GPU inside a node; `None` if no node holds two group ranks.
    pub intra: Option<LinkCost>,
    /// Node ↔ node: the bandwidth is what one node's group GPUs can push
    /// through their NICs together (rings use one channel per rail); `None`
    /// on a single node.
    pub inter: Option<LinkCost>,
    /// All-reduce in the NVSwitch (NVLink SHARP) for a group inside one
    /// node, where the hardware has it: its bus bandwidth, the ring's step.
    pub nvls: Option<LinkCost>,
}

impl GroupLinks {
    /// Same number of group ranks on every node touched.
    pub fn is_uniform(&self) -> bool {
        self.min_per_node == self.max_per_node
    }
}

/// The cluster graph for `nodes` nodes of one hardware type.
#[derive(Clone, Debug)]
pub struct Topology {
    pub graph: UnGraph<Device, Link>,
    gpus: Vec<NodeIndex>,
    /// Fabric-side edge of every NIC, per node.
    nic_uplinks: Vec<Vec<EdgeIndex>>,
    /// GPU (by rank) → its NICs.
    gpu_nics: Vec<Vec<usize>>,
    gpus_per_node: usize,
    nodes: usize,
    /// NVLink SHARP's all-reduce bus bandwidth inside a node, if any.
    nvls: Option<Bandwidth>,
}

impl Topology {
    pub fn build(hw: &HardwareSpec, nodes: usize) -> Result<Topology, TopologyError> {
        if nodes == 0 {
            return Err(TopologyError::NoNodes);
        }
        let ic = &hw.interconnect;
        if nodes > 1 && ic.nics_per_node == 0 {
            return Err(TopologyError::NoNetwork { hardware: hw.id.clone(), nodes });
        }
        let g = ic.gpus_per_node;
        let nics = ic.nics_per_node;
        let nvlink = Link { bandwidth: hw.nvlink_bus_bandwidth(), latency: ic.nvlink_latency / 2.0 };
        // The NIC line rate (not PCIe) limits GPU→NIC traffic; the whole
        // cross-node step latency sits on the NIC↔fabric hops.
        let nic = hw.nic_effective_bandwidth();
        let to_nic = Link { bandwidth: nic, latency: Seconds(0.0) };
        let uplink = Link { bandwidth: nic, latency: ic.fabric_latency / 2.0 };

        let mut graph = UnGraph::default();
        let fabric = (nodes > 1).then(|| graph.add_node(Device::Fabric));
        let mut gpus = Vec::with_capacity(nodes * g);
        let mut nic_uplinks = Vec::with_capacity(nodes);
        let mut gpu_nics = Vec::with_capacity(nodes * g);
        for node in 0..nodes {
            let sw = graph.add_node(Device::NvSwitch { node });
            // A lone node's NICs carry no collective traffic: leave them out.
            let nic_count = if fabric.is_some() { nics } else { 0 };
            let nic_ix: Vec<NodeIndex> = (0..nic_count).map(|index| graph.add_node(Device::Nic { node, index })).collect();
            nic_uplinks.push(match fabric {
                Some(f) => nic_ix.iter().map(|&n| graph.add_edge(n, f, uplink)).collect(),
                None => Vec::new(),
            });
            for local in 0..g {
                let gpu = graph.add_node(Device::Gpu { rank: node * g + local, node, local });
                graph.add_edge(gpu, sw, nvlink);
                let mine = rail_nics(local, g, nics);
                if fabric.is_some() {
                    for &j in &mine {
                        graph.add_edge(gpu, nic_ix[j], to_nic);
                    }
                }
                gpus.push(gpu);
                gpu_nics.push(mine);
            }
        }
        Ok(Topology { graph, gpus, nic_uplinks, gpu_nics, gpus_per_node: g, nodes, nvls: ic.nvls_all_reduce })
    }

    pub fn world_size(&self) -> usize {
        self.gpus.len()
    }

    pub fn nodes(&self) -> usize {
        self.nodes
    }

    pub fn gpus_per_node(&self) -> usize {
        self.gpus_per_node
    }

    pub fn node_of(&self, rank: usize) -> usize {
        rank / self.gpus_per_node
    }

    /// Lowest-latency path between two ranks: its bottleneck bandwidth and
    /// total latency (one ring step between them).
    pub fn path(&self, a: usize, b: usize) -> Result<LinkCost, TopologyError> {
        let world = self.world_size();
        for r in [a, b] {
            if r >= world {
                return Err(TopologyError::RankOutOfRange { rank: r, world });
            }
        }
        let (src, dst) = (self.gpus[a], self.gpus[b]);
        if src == dst {
            return Ok(LinkCost { bus_bandwidth: Bandwidth(f64::INFINITY), latency: Seconds(0.0) });
        }
        // Latency-weighted shortest path; the tiny per-hop term breaks ties
        // by hop count so a zero-latency GPU→NIC hop never looks free.
        let cost = |e: petgraph::graph::EdgeReference<'_, Link>| e.weight().latency.0 + 1e-12;
        // Search only the two end nodes (plus their NICs and the fabric
        // between them, for a cross-node pair): a same-node pair stays on
        // its NVLink, which is what "intra-node" means, and no search
        // wanders over a 1000-NIC fabric.
        let (na, nb) = (self.node_of(a), self.node_of(b));
        // Inside a node the path is NVLink: two GPUs that share a NIC do not
        // talk through it.
        let ends = NodeFiltered::from_fn(&self.graph, |n| match self.graph[n] {
            Device::Gpu { node: x, .. } | Device::NvSwitch { node: x } => x == na || x == nb,
            Device::Nic { node: x, .. } => na != nb && (x == na || x == nb),
            Device::Fabric => na != nb,
        });
        let found = astar(&ends, src, |n| n == dst, cost, |_| 0.0);
        let (_, nodes) = found.ok_or(TopologyError::NoPath(a, b))?;
        let mut bw = f64::INFINITY;
        let mut lat = 0.0;
        for w in nodes.windows(2) {
            let e = self.graph.find_edge(w[0], w[1]).ok_or(TopologyError::NoPath(a, b))?;
            let l = self.graph[e];
            bw = bw.min(l.bandwidth.0);
            lat += l.latency.0;
        }
        Ok(LinkCost { bus_bandwidth: Bandwidth(bw), latency: Seconds(lat) })
    }

    /// All ranks of the cluster.
    pub fn world(&self) -> Vec<usize> {
        (0..self.world_size()).collect()
    }

    /// The intra- and inter-node link costs of a group of ranks.
    ///
    /// Nodes are identical by construction, so each distinct pattern of
    /// local ranks is evaluated on the graph once (keeps the whole-world
    /// group of a 1000-GPU cluster cheap enough for sweeps).
    pub fn group(&self, ranks: &[usize]) -> Result<GroupLinks, TopologyError> {
        if ranks.is_empty() {
            return Err(TopologyError::EmptyGroup);
        }
        let world = self.world_size();
        let g = self.gpus_per_node;
        // Per node, which local GPUs are in the group (bitmap by local id).
        let mut member = vec![false; world];
        for &r in ranks {
            if r >= world {
                return Err(TopologyError::RankOutOfRange { rank: r, world });
            }
            if std::mem::replace(&mut member[r], true) {
                return Err(TopologyError::DuplicateRank(r));
            }
        }
        let mut patterns: BTreeMap<&[bool], usize> = BTreeMap::new();
        let (mut nodes, mut min_per_node, mut max_per_node) = (0, usize::MAX, 0);
        let mut first_rank_of_two_nodes = Vec::with_capacity(2);
        for (node, locals) in member.chunks(g).enumerate() {
            let count = locals.iter().filter(|&&m| m).count();
            if count == 0 {
                continue;
            }
            nodes += 1;
            min_per_node = min_per_node.min(count);
            max_per_node = max_per_node.max(count);
            if first_rank_of_two_nodes.len() < 2 {
                first_rank_of_two_nodes.push(node * g + locals.iter().position(|&m| m).unwrap_or(0));
            }
            patterns.entry(locals).or_insert(node);
        }

        let mut intra: Option<LinkCost> = None;
        let mut inter_bw = f64::INFINITY;
        for (mask, &node) in &patterns {
            let base = node * g;
            let locals: Vec<usize> = (0..g).filter(|&l| mask[l]).collect();
            // Ring through this node's group GPUs: every neighbour pair.
            for w in locals.windows(2) {
                let c = self.path(base + w[0], base + w[1])?;
                intra = Some(worst(intra, c));
            }
            if self.nodes > 1 {
                // Rails this node's group GPUs can use, counted once each.
                let nics: BTreeSet<usize> = locals.iter().flat_map(|&l| self.gpu_nics[base + l].iter().copied()).collect();
                let bw: f64 = nics.iter().map(|&j| self.graph[self.nic_uplinks[node][j]].bandwidth.0).sum();
                inter_bw = inter_bw.min(bw);
            }
        }
        let inter = match first_rank_of_two_nodes[..] {
            // Step latency: a representative cross-node path.
            [a, b] => Some(LinkCost { bus_bandwidth: Bandwidth(inter_bw), latency: self.path(a, b)?.latency }),
            _ => None,
        };
        let nvls = match (self.nvls, intra) {
            (Some(bw), Some(step)) if nodes == 1 => Some(LinkCost { bus_bandwidth: bw, latency: step.latency }),
            _ => None,
        };
        Ok(GroupLinks { ranks: ranks.len(), nodes, min_per_node, max_per_node, intra, inter, nvls })
    }
}

/// The slower of two link costs, each term separately.
fn worst(a: Option<LinkCost>, b: LinkCost) -> LinkCost {
    match a {
        None => b,
        Some(a) => LinkCost { bus_bandwidth: Bandwidth(a.bus_bandwidth.0.min(b.bus_bandwidth.0)), latency: a.latency.max(b.latency) },
    }
}

/// NICs wired to GPU `local` of `g`: one rail per GPU when counts match, a
/// shared NIC when there are fewer NICs (DGX-1: two GPUs per NIC), several
/// when there are more.
fn rail_nics(local: usize, g: usize, nics: usize) -> Vec<usize> {
    if nics == 0 {
        Vec::new()
    } else if nics >= g {
        (0..nics).filter(|j| j % g == local).collect()
    } else {
        vec![local * nics / g]
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::builtin_hardware;

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() <= 1e-9 * a.abs().max(b.abs())
    }

    #[test]
    fn graph_has_gpus_switches_nics_and_fabric() {
        let hw = builtin_hardware("a100-40gb").unwrap();
        let t = Topology::build(&hw, 2).unwrap();
        assert_eq!(t.world_size(), 16);
        // 16 GPUs + 2 NVSwitches + 16 NICs + 1 fabric.
        assert_eq!(t.graph.node_count(), 35);
        // GPU-switch 16, GPU-NIC 16, NIC-fabric 16.
        assert_eq!(t.graph.edge_count(), 48);
        let single = Topology::build(&hw, 1).unwrap();
        assert!(!single.graph.node_weights().any(|d| matches!(d, Device::Fabric | Device::Nic { .. })));
    }

    #[test]
    fn paths_go_through_nvswitch_inside_and_nics_across() {
        let hw = builtin_hardware("h100-80gb").unwrap();
        let t = Topology::build(&hw, 4).unwrap();
        let inside = t.path(0, 5).unwrap();
        assert!(close(inside.bus_bandwidth.0, hw.nvlink_bus_bandwidth().0));
        assert!(close(inside.latency.0, hw.interconnect.nvlink_latency.0));
        let across = t.path(3, 27).unwrap();
        assert!(close(across.bus_bandwidth.0, hw.nic_effective_bandwidth().0));
        assert!(close(across.latency.0, hw.interconnect.fabric_latency.0));
        assert_eq!(t.path(0, 40), Err(TopologyError::RankOutOfRange { rank: 40, world: 32 }));
    }

    #[test]
    fn world_group_uses_all_rails_one_rank_per_node_uses_one() {
        let hw = builtin_hardware("a100-40gb").unwrap();
        let t = Topology::build(&hw, 62).unwrap();
        let w = t.group(&t.world()).unwrap();
        assert_eq!((w.ranks, w.nodes, w.min_per_node, w.max_per_node), (496, 62, 8, 8));
        assert!(close(w.intra.unwrap().bus_bandwidth.0, hw.nvlink_bus_bandwidth().0));
        assert!(close(w.inter.unwrap().bus_bandwidth.0, 8.0 * hw.nic_effective_bandwidth().0));
        let leaders: Vec<usize> = (0..62).map(|n| n * 8).collect();
        let l = t.group(&leaders).unwrap();
        assert!(l.intra.is_none());
        assert!(close(l.inter.unwrap().bus_bandwidth.0, hw.nic_effective_bandwidth().0));
        // V100 DGX-1: 4 NICs shared by 8 GPUs; GPUs 0 and 1 share NIC 0.
        let v = builtin_hardware("v100-32gb").unwrap();
        let t = Topology::build(&v, 2).unwrap();
        let pair = t.group(&[0, 1, 8, 9]).unwrap();
        assert!(close(pair.inter.unwrap().bus_bandwidth.0, v.nic_effective_bandwidth().0));
        let all = t.group(&t.world()).unwrap();
        assert!(close(all.inter.unwrap().bus_bandwidth.0, 4.0 * v.nic_effective_bandwidth().0));
    }

    #[test]
    fn bad_groups_and_clusters_are_errors() {
        let hw = builtin_hardware("a100-80gb").unwrap();
        let t = Topology::build(&hw, 1).unwrap();
        assert_eq!(t.group(&[]), Err(TopologyError::EmptyGroup));
        assert_eq!(t.group(&[1, 1]), Err(TopologyError::DuplicateRank(1)));
        assert!(matches!(t.group(&[9]), Err(TopologyError::RankOutOfRange { .. })));
        assert_eq!(Topology::build(&hw, 0).unwrap_err(), TopologyError::NoNodes);
        let cpu = builtin_hardware("cpu-local").unwrap();
        assert!(Topology::build(&cpu, 1).is_ok());
        let e = Topology::build(&cpu, 2).unwrap_err().to_string();
        assert!(e.contains("cpu-local") && e.contains("NICs"), "{e}");
    }

    /// DGX-1: 4 NICs for 8 GPUs, two GPUs per NIC. Inside a node the ring
    /// goes over NVLink, never through the NIC two GPUs share; across nodes
    /// a node pushes what its 4 NICs carry together.
    #[test]
    fn gpus_that_share_a_nic_still_talk_over_nvlink() {
        let hw = builtin_hardware("v100-32gb").unwrap();
        assert_eq!((hw.interconnect.nics_per_node, hw.interconnect.gpus_per_node), (4, 8));
        let t = Topology::build(&hw, 2).unwrap();
        let pair = t.path(0, 1).unwrap();
        assert!(close(pair.bus_bandwidth.0, hw.nvlink_bus_bandwidth().0), "{pair:?}");
        let g = t.group(&t.world()).unwrap();
        assert!(close(g.intra.unwrap().bus_bandwidth.0, hw.nvlink_bus_bandwidth().0));
        assert!(close(g.inter.unwrap().bus_bandwidth.0, 4.0 * hw.nic_effective_bandwidth().0));
        assert!(g.nvls.is_none(), "Volta's NVSwitch does not reduce");
    }

    /// Hopper's NVLink SHARP: a one-node group gets it, a two-node one not.
    #[test]
    fn nvls_applies_inside_one_hopper_node() {
        let hw = builtin_hardware("h100-80gb").unwrap();
        let t = Topology::build(&hw, 2).unwrap();
        let one = t.group(&(0..8).collect::<Vec<_>>()).unwrap();
        assert!(close(one.nvls.unwrap().bus_bandwidth.0, 480e9));
        assert!(t.group(&t.world()).unwrap().nvls.is_none());
    }
}
