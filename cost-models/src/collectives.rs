//! Alpha-beta cost of NCCL-style collectives over a group of ranks, for a
//! flat ring and a hierarchical (intra-node, then inter-node, then
//! intra-node) algorithm; the faster one is reported.
//!
//! Sizes: `bytes` is the full buffer S. All-gather: every rank ends with S
//! (holds S/N before). Reduce-scatter: every rank contributes S, keeps S/N.
//! All-reduce and broadcast: S everywhere.
//!
//! Ring over N ranks: AG/RS = (N-1)·α + (N-1)/N · S / busbw; AR = RS + AG;
//! broadcast (pipelined chain) = (N-1)·α + S / busbw. In a ring that spans
//! nodes every step waits for the slowest hop, so α is the cross-node one and
//! busbw = min(NVLink, what a node's NICs carry together).
//!
//! Hierarchical over m nodes × k ranks: k parallel inter-node rings, each on
//! S/k bytes through its own rail, plus an intra-node phase over NVLink. It
//! pays (k-1)·α_intra + (m-1)·α_inter instead of (N-1)·α_inter, but the two
//! phases do not overlap, so a flat ring wins again for very large buffers.

use crate::quantity::{Bandwidth, Bytes, Seconds};
use crate::topology::{GroupLinks, LinkCost};
use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Collective {
    AllGather,
    ReduceScatter,
    AllReduce,
    Broadcast,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// World size 1: nothing moves.
    Local,
    Ring,
    Hierarchical,
    /// All-reduce in the NVSwitch (NVLink SHARP, Hopper), inside one node.
    Nvls,
}

impl Algorithm {
    pub fn name(self) -> &'static str {
        match self {
            Algorithm::Local => "local",
            Algorithm::Ring => "ring",
            Algorithm::Hierarchical => "hierarchical",
            Algorithm::Nvls => "nvls",
        }
    }
}

/// Which links a fit applies to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    IntraNode,
    InterNode,
}

/// A collective's predicted time and how it splits.
#[derive(Clone, Copy, Debug, PartialEq, Serialize)]
pub struct CollectiveCost {
    pub time: Seconds,
    pub algorithm: Algorithm,
    /// The alpha part (step latencies).
    pub latency: Seconds,
    /// The beta part (bytes over bandwidth).
    pub transfer: Seconds,
}

impl CollectiveCost {
    const ZERO: CollectiveCost = CollectiveCost { time: Seconds(0.0), algorithm: Algorithm::Local, latency: Seconds(0.0), transfer: Seconds(0.0) };

    fn new(algorithm: Algorithm, latency: Seconds, transfer: Seconds) -> CollectiveCost {
        CollectiveCost { time: latency + transfer, algorithm, latency, transfer }
    }
}

/// Measured alpha (per ring step) and bus bandwidth for one collective on
/// one scope; plugged into the same formulas in place of the topology's.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectiveFit {
    pub collective: Collective,
    pub scope: Scope,
    #[serde(rename = "alpha_us", with = "crate::hardware::human::us")]
    pub alpha: Seconds,
    #[serde(rename = "bus_bandwidth_gb_s", with = "crate::hardware::human::gb_s")]
    pub bus_bandwidth: Bandwidth,
}

/// How much longer a collective takes when every rank computes right up to
/// it than on idle ranks (CPU ranks that fill the cores), measured by
/// `seerscale calibrate` over `world_size` ranks after compute segments of
/// two lengths L and fitted as `extra + skew · L`: a fixed part (the
/// transport's threads wait for a core) and a part that grows with the
/// compute since the ranks last synchronised (they drift apart by their
/// compute noise, and the first to arrive waits for the last).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BusyCollective {
    pub collective: Collective,
    pub world_size: usize,
    #[serde(rename = "extra_us", with = "crate::hardware::human::us")]
    pub extra: Seconds,
    /// Waiting per second of compute since the last synchronisation.
    pub skew: f64,
}

/// Expected maximum of `n` independent standard normal draws (how far the
/// slowest of `n` ranks lags the mean), exact to 3 digits up to 8 ranks,
/// the leading asymptotic term beyond.
pub(crate) fn expected_max_normal(n: usize) -> f64 {
    const TABLE: [f64; 9] = [0.0, 0.0, 0.564, 0.846, 1.029, 1.163, 1.267, 1.352, 1.424];
    match n {
        0..=8 => TABLE[n],
        _ => {
            let l = (2.0 * (n as f64).ln()).sqrt();
            l - ((n as f64).ln().ln() + (4.0 * std::f64::consts::PI).ln()) / (2.0 * l)
        }
    }
}

/// Measured overrides written by `seerscale calibrate`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CollectiveProfile {
    #[serde(default)]
    pub fits: Vec<CollectiveFit>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub busy: Vec<BusyCollective>,
}

impl CollectiveProfile {
    pub fn is_empty(&self) -> bool {
        self.fits.is_empty() && self.busy.is_empty()
    }

    pub fn get(&self, c: Collective, scope: Scope) -> Option<&CollectiveFit> {
        self.fits.iter().find(|f| f.collective == c && f.scope == scope)
    }

    pub fn validate(&self) -> Result<(), (String, String)> {
        for f in &self.fits {
            if !(f.alpha.0.is_finite() && f.alpha.0 >= 0.0) {
                return Err(("fits.alpha_us".into(), format!("must be >= 0, got {}", f.alpha.0 * 1e6)));
            }
            if !(f.bus_bandwidth.0.is_finite() && f.bus_bandwidth.0 > 0.0) {
                return Err(("fits.bus_bandwidth_gb_s".into(), format!("must be positive, got {}", f.bus_bandwidth.0 / 1e9)));
            }
        }
        for b in &self.busy {
            if !(b.extra.0.is_finite() && b.extra.0 >= 0.0) {
                return Err(("busy.extra_us".into(), format!("must be >= 0, got {}", b.extra.0 * 1e6)));
            }
            if b.world_size < 2 {
                return Err(("busy.world_size".into(), format!("must be >= 2, got {}", b.world_size)));
            }
            if !(b.skew.is_finite() && b.skew >= 0.0) {
                return Err(("busy.skew".into(), format!("must be >= 0, got {}", b.skew)));
            }
        }
        Ok(())
    }
}

/// The collective cost model, optionally corrected by measurements.
#[derive(Clone, Debug, Default)]
pub struct CollectiveModel {
    pub profile: CollectiveProfile,
}

impl CollectiveModel {
    pub fn new(profile: CollectiveProfile) -> CollectiveModel {
        CollectiveModel { profile }
    }

    /// Cheapest algorithm for `op` of `bytes` over the group.
    pub fn cost(&self, op: Collective, group: &GroupLinks, bytes: Bytes) -> CollectiveCost {
        let ring = self.ring(op, group, bytes);
        let best = match self.hierarchical(op, group, bytes) {
            Some(h) if h.time < ring.time => h,
            _ => ring,
        };
        match self.nvls(op, group, bytes) {
            Some(n) if n.time < best.time => n,
            _ => best,
        }
    }

    /// NCCL's NVLS all-reduce inside one node where the NVSwitch reduces
    /// (Hopper): the ring's steps at NVLink SHARP's bus bandwidth. A
    /// measured intra-node all-reduce (which already is what NCCL chose) wins.
    pub fn nvls(&self, op: Collective, group: &GroupLinks, bytes: Bytes) -> Option<CollectiveCost> {
        if op != Collective::AllReduce || group.ranks < 2 || self.profile.get(op, Scope::IntraNode).is_some() {
            return None;
        }
        Some(ring_phase(op, group.ranks, bytes.0 as f64, group.nvls?, Algorithm::Nvls))
    }

    /// The measured extra cost of `op` among busy ranks (zero if not
    /// measured), scaled from the measured world size by ring steps.
    pub fn busy_extra(&self, op: Collective, ranks: usize) -> Seconds {
        if ranks <= 1 {
            return Seconds(0.0);
        }
        match self.profile.busy.iter().find(|b| b.collective == op) {
            Some(b) => b.extra * ((ranks - 1) as f64 / (b.world_size.max(2) - 1) as f64),
            None => Seconds(0.0),
        }
    }

    /// Waiting per second of compute between synchronisations among `ranks`
    /// busy ranks: the median of the collectives' measured skews (the ranks'
    /// drift does not depend on which collective ends the stretch; the
    /// median resists one noisy measurement), scaled from the measured world
    /// size by how far the slowest of `ranks` noisy ranks lags (0 if not
    /// measured).
    pub fn busy_skew(&self, ranks: usize) -> f64 {
        let mut by_skew: Vec<&BusyCollective> = self.profile.busy.iter().collect();
        by_skew.sort_by(|a, b| a.skew.total_cmp(&b.skew));
        let Some(b) = by_skew.get(by_skew.len() / 2) else { return 0.0 };
        let at = expected_max_normal(b.world_size.max(2));
        if ranks <= 1 || at <= 0.0 {
            return 0.0;
        }
        b.skew * expected_max_normal(ranks) / at
    }

    pub fn all_gather(&self, group: &GroupLinks, bytes: Bytes) -> CollectiveCost {
        self.cost(Collective::AllGather, group, bytes)
    }
    pub fn reduce_scatter(&self, group: &GroupLinks, bytes: Bytes) -> CollectiveCost {
        self.cost(Collective::ReduceScatter, group, bytes)
    }
    pub fn all_reduce(&self, group: &GroupLinks, bytes: Bytes) -> CollectiveCost {
        self.cost(Collective::AllReduce, group, bytes)
    }
    pub fn broadcast(&self, group: &GroupLinks, bytes: Bytes) -> CollectiveCost {
        self.cost(Collective::Broadcast, group, bytes)
    }

    /// The link cost of `scope` for `op` where the group uses that scope
    /// (`topo` is the topology's): a measured fit if there is one.
    fn link(&self, op: Collective, scope: Scope, topo: Option<LinkCost>) -> Option<LinkCost> {
        let topo = topo?;
        Some(match self.profile.get(op, scope) {
            Some(f) => LinkCost { bus_bandwidth: f.bus_bandwidth, latency: f.alpha },
            None => topo,
        })
    }

    /// Flat ring over all ranks of the group.
    pub fn ring(&self, op: Collective, group: &GroupLinks, bytes: Bytes) -> CollectiveCost {
        let n = group.ranks;
        if n <= 1 {
            return CollectiveCost::ZERO;
        }
        let intra = self.link(op, Scope::IntraNode, group.intra);
        let inter = self.link(op, Scope::InterNode, group.inter);
        let step = match (intra, inter) {
            (Some(a), Some(b)) => LinkCost { bus_bandwidth: Bandwidth(a.bus_bandwidth.0.min(b.bus_bandwidth.0)), latency: a.latency.max(b.latency) },
            (Some(a), None) | (None, Some(a)) => a,
            // n > 1 always has one of the two; stay total anyway.
            (None, None) => return CollectiveCost::ZERO,
        };
        ring_phase(op, n, bytes.0 as f64, step, Algorithm::Ring)
    }

    /// Intra-node / inter-node / intra-node; `None` when it does not apply
    /// (one node, one rank per node, or an uneven number of ranks per node).
    pub fn hierarchical(&self, op: Collective, group: &GroupLinks, bytes: Bytes) -> Option<CollectiveCost> {
        if group.nodes < 2 || group.max_per_node < 2 || !group.is_uniform() {
            return None;
        }
        let (m, k) = (group.nodes, group.max_per_node);
        let intra = self.link(op, Scope::IntraNode, group.intra)?;
        let inter = self.link(op, Scope::InterNode, group.inter)?;
        let s = bytes.0 as f64;
        let h = Algorithm::Hierarchical;
        // The k inter-node rings each move S/k through a 1/k share of the
        // node's rails, so the node aggregate bandwidth applies to all of S.
        let cost = match op {
            Collective::AllGather | Collective::ReduceScatter => add(ring_phase(op, k, s, intra, h), ring_phase(op, m, s, inter, h)),
            // RS inside the node, AR of the S/k shards across nodes, AG back.
            Collective::AllReduce => add(
                add(ring_phase(Collective::ReduceScatter, k, s, intra, h), ring_phase(Collective::AllReduce, m, s, inter, h)),
                ring_phase(Collective::AllGather, k, s, intra, h),
            ),
            Collective::Broadcast => add(ring_phase(op, m, s, inter, h), ring_phase(op, k, s, intra, h)),
        };
        Some(cost)
    }
}

fn add(a: CollectiveCost, b: CollectiveCost) -> CollectiveCost {
    CollectiveCost::new(a.algorithm, a.latency + b.latency, a.transfer + b.transfer)
}

/// One ring over `n` ranks moving a buffer of `s` bytes.
fn ring_phase(op: Collective, n: usize, s: f64, link: LinkCost, algorithm: Algorithm) -> CollectiveCost {
    if n <= 1 {
        return CollectiveCost::new(algorithm, Seconds(0.0), Seconds(0.0));
    }
    let nf = n as f64;
    let steps = nf - 1.0;
    let frac = (nf - 1.0) / nf;
    let bw = link.bus_bandwidth.0;
    let (lat_steps, bytes_moved) = match op {
        Collective::AllGather | Collective::ReduceScatter => (steps, frac * s),
        Collective::AllReduce => (2.0 * steps, 2.0 * frac * s),
        Collective::Broadcast => (steps, s),
    };
    CollectiveCost::new(algorithm, link.latency * lat_steps, Seconds(bytes_moved / bw))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hardware::builtin_hardware;
    use crate::quantity::MIB;
    use crate::topology::Topology;

    fn rel(a: f64, b: f64) -> f64 {
        (a - b).abs() / b.abs().max(1e-30)
    }

    #[test]
    fn world_size_one_costs_nothing() {
        let hw = builtin_hardware("a100-40gb").unwrap();
        let t = Topology::build(&hw, 1).unwrap();
        let g = t.group(&[3]).unwrap();
        let m = CollectiveModel::default();
        for op in [Collective::AllGather, Collective::ReduceScatter, Collective::AllReduce, Collective::Broadcast] {
            let c = m.cost(op, &g, Bytes(1 << 30));
            assert_eq!(c.time, Seconds(0.0), "{op:?}");
            assert_eq!(c.algorithm, Algorithm::Local);
        }
    }

    #[test]
    fn ring_all_gather_matches_formula() {
        let hw = builtin_hardware("a100-40gb").unwrap();
        let t = Topology::build(&hw, 1).unwrap();
        let g = t.group(&t.world()).unwrap();
        let m = CollectiveModel::default();
        let s = 256.0 * MIB as f64;
        let n = 8.0;
        let alpha = hw.interconnect.nvlink_latency.0;
        let bw = hw.nvlink_bus_bandwidth().0;
        let want = (n - 1.0) * alpha + (n - 1.0) / n * s / bw;
        let ag = m.all_gather(&g, Bytes(s as u64));
        assert_eq!(ag.algorithm, Algorithm::Ring, "one node: ring over NVLink");
        assert!(rel(ag.time.0, want) < 1e-12, "{} vs {want}", ag.time.0);
        let rs = m.reduce_scatter(&g, Bytes(s as u64));
        let ar = m.all_reduce(&g, Bytes(s as u64));
        assert!(rel(ar.time.0, ag.time.0 + rs.time.0) < 1e-12, "all-reduce = RS + AG");
        let bc = m.broadcast(&g, Bytes(s as u64));
        assert!(rel(bc.time.0, (n - 1.0) * alpha + s / bw) < 1e-12);
        // Latency grows with N, bandwidth term does not (much).
        let two = t.group(&[0, 1]).unwrap();
        let small = m.all_gather(&two, Bytes(1024));
        assert!(rel(small.latency.0, alpha) < 1e-12);
    }

    #[test]
    fn ring_over_nodes_uses_cross_node_alpha_and_bottleneck() {
        let hw = builtin_hardware("h100-80gb").unwrap();
        let t = Topology::build(&hw, 2).unwrap();
        let g = t.group(&t.world()).unwrap();
        let ring = CollectiveModel::default().ring(Collective::AllGather, &g, Bytes(1 << 30));
        let bw = hw.nvlink_bus_bandwidth().0.min(8.0 * hw.nic_effective_bandwidth().0);
        let want = 15.0 * hw.interconnect.fabric_latency.0 + 15.0 / 16.0 * (1u64 << 30) as f64 / bw;
        assert!(rel(ring.time.0, want) < 1e-12);
    }

    #[test]
    fn seer_cluster_prefers_hierarchical_for_large_unit_gathers() {
        // 62 nodes x 8 A100 (the SEER 10B cluster), 256 MiB all-gathers
        // (a ~1.3e8-parameter fp16 FSDP unit).
        let hw = builtin_hardware("a100-40gb").unwrap();
        let t = Topology::build(&hw, 62).unwrap();
        let g = t.group(&t.world()).unwrap();
        let m = CollectiveModel::default();
        let s = Bytes(256 * MIB);
        let ring = m.ring(Collective::AllGather, &g, s);
        let hier = m.hierarchical(Collective::AllGather, &g, s).unwrap();
        assert!(hier.time < ring.time, "hier {} ring {}", hier.time, ring.time);
        let best = m.all_gather(&g, s);
        assert_eq!(best.algorithm, Algorithm::Hierarchical);
        assert_eq!(best.time, hier.time);
        // Formula check of the hierarchical phases.
        let (k, mm) = (8.0, 62.0);
        let sf = s.0 as f64;
        let want = (k - 1.0) * hw.interconnect.nvlink_latency.0
            + (k - 1.0) / k * sf / hw.nvlink_bus_bandwidth().0
            + (mm - 1.0) * hw.interconnect.fabric_latency.0
            + (mm - 1.0) / mm * sf / (8.0 * hw.nic_effective_bandwidth().0);
        assert!(rel(hier.time.0, want) < 1e-12);
        // The all-reduce (LARC norms, Sinkhorn sums) is small: latency-bound,
        // so hierarchical wins by far.
        let ar = m.all_reduce(&g, Bytes(64 * 1024));
        assert_eq!(ar.algorithm, Algorithm::Hierarchical);
        assert!(ar.latency > ar.transfer);
        // A flat ring is bandwidth-optimal: for a huge buffer it wins back.
        let huge = m.all_gather(&g, Bytes(64 << 30));
        assert_eq!(huge.algorithm, Algorithm::Ring);
    }

    #[test]
    fn hierarchical_needs_several_nodes_and_even_groups() {
        let hw = builtin_hardware("a100-80gb").unwrap();
        let t = Topology::build(&hw, 2).unwrap();
        let m = CollectiveModel::default();
        let uneven = t.group(&[0, 1, 2, 8]).unwrap();
        assert!(m.hierarchical(Collective::AllGather, &uneven, Bytes(1 << 20)).is_none());
        let one_node = t.group(&[0, 1, 2]).unwrap();
        assert!(m.hierarchical(Collective::AllGather, &one_node, Bytes(1 << 20)).is_none());
    }

    #[test]
    fn measured_fit_replaces_topology_terms() {
        let hw = builtin_hardware("cpu-local").unwrap();
        let mut hw2 = hw.clone();
        hw2.interconnect.gpus_per_node = 2; // two ranks on the machine
        let t = Topology::build(&hw2, 1).unwrap();
        let g = t.group(&[0, 1]).unwrap();
        let profile = CollectiveProfile {
            fits: vec![CollectiveFit { collective: Collective::AllReduce, scope: Scope::IntraNode, alpha: Seconds(50e-6), bus_bandwidth: Bandwidth(2e9) }],
            busy: vec![],
        };
        let m = CollectiveModel::new(profile);
        let s = 8e6;
        let ar = m.all_reduce(&g, Bytes(s as u64));
        let want = 2.0 * 50e-6 + 2.0 * 0.5 * s / 2e9;
        assert!(rel(ar.time.0, want) < 1e-12, "{} vs {want}", ar.time.0);
        // Other collectives keep the topology's numbers.
        let ag = m.all_gather(&g, Bytes(s as u64));
        let want_ag = hw2.interconnect.nvlink_latency.0 + 0.5 * s / hw2.nvlink_bus_bandwidth().0;
        assert!(rel(ag.time.0, want_ag) < 1e-12);
        let bad = CollectiveProfile {
            fits: vec![CollectiveFit { collective: Collective::Broadcast, scope: Scope::InterNode, alpha: Seconds(1e-6), bus_bandwidth: Bandwidth(-1.0) }],
            busy: vec![],
        };
        assert_eq!(bad.validate().unwrap_err().0, "fits.bus_bandwidth_gb_s");
    }

    #[test]
    fn busy_costs_scale_with_ring_steps_and_the_slowest_of_n_ranks() {
        let p = CollectiveProfile {
            fits: vec![],
            busy: vec![
                BusyCollective { collective: Collective::AllGather, world_size: 2, extra: Seconds(100e-6), skew: 0.2 },
                BusyCollective { collective: Collective::AllReduce, world_size: 2, extra: Seconds(0.0), skew: 0.5 },
            ],
        };
        p.validate().unwrap();
        let m = CollectiveModel::new(p.clone());
        assert_eq!(m.busy_extra(Collective::AllGather, 1), Seconds(0.0));
        assert!((m.busy_extra(Collective::AllGather, 4).0 - 300e-6).abs() < 1e-12, "3 ring steps");
        assert_eq!(m.busy_extra(Collective::ReduceScatter, 2), Seconds(0.0), "not measured");
        // The median skew (of two: the upper), scaled by how far the slowest of n lags.
        assert!((m.busy_skew(2) - 0.5).abs() < 1e-12);
        assert!((m.busy_skew(4) - 0.5 * 1.029 / 0.564).abs() < 1e-9);
        assert_eq!(m.busy_skew(1), 0.0);
        assert!(expected_max_normal(64) > expected_max_normal(8) && expected_max_normal(64) < 3.0);
        let mut bad = p;
        bad.busy[0].skew = -0.1;
        assert!(bad.validate().unwrap_err().0.contains("busy.skew"));
    }
}
