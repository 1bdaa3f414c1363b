//! A calibration run's records together, and the hardware profile built
//! from them (medians over rounds, the host-speed correction).

use super::*;
use crate::collectives::{Collective, CollectiveFit, CollectiveProfile};
use crate::hardware::{BlockTime, HardwareProfile, HardwareSpec, HostCosts, LoaderTime, Measured, OpFixed, OpThroughput};
use crate::stats::{median, quantile};
use crate::{Bandwidth, Bytes, FlopRate, Seconds};
use serde::{Deserialize, Serialize};

#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct ComputeReport {
    pub threads: usize,
    /// `cpu` or `cuda:N`: where the ops ran.
    #[serde(default = "cpu_device")]
    pub device: String,
    pub op_overhead: Timing,
    pub copy: CopyBandwidth,
    pub ops: Vec<OpMeasurement>,
    pub rates: Vec<RateFit>,
    /// Fixed per-op costs per kind (tiny shapes, fp32).
    #[serde(default)]
    pub fixed: Vec<FixedCost>,
    #[serde(default)]
    pub host: Option<HostMeasurement>,
    /// Effective GB/s of BN / elementwise / pooling.
    pub memory_bound_gb_s: Option<f64>,
    /// Dtypes left out, with the reason (an op this CPU build cannot run).
    pub skipped: Vec<String>,
    pub elapsed_s: f64,
}

/// Everything measured, for the JSON report next to the profile.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct CalibrationReport {
    pub host: HostInfo,
    pub quick: bool,
    pub compute: ComputeReport,
    pub collectives: Vec<CollectiveSample>,
    pub collective_fits: Vec<CollectiveFitReport>,
    /// Ranks the collectives ran over (0 = not measured).
    pub collective_world_size: usize,
    /// Whole blocks of a recipe's model (`--recipe`), per workload.
    #[serde(default)]
    pub blocks: Vec<BlockMeasurement>,
    /// Collectives right after compute on every rank.
    #[serde(default)]
    pub busy_collectives: Vec<BusySample>,
    /// Host-speed probes (`executor::speed_probe`) taken around the
    /// compute measurements and around each block workload.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub speed: Option<SpeedProbes>,
    /// The host and fixed costs measured again in rounds 2.. (`calibrate
    /// --rounds`; round 1 is in `compute`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub host_rounds: Vec<HostRound>,
    /// The data loader per crop set and round (`--recipe`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loader: Vec<LoaderMeasurement>,
}

pub(super) fn op_fixed(fixed: &[FixedCost]) -> Vec<OpFixed> {
    fixed.iter().map(|f| OpFixed { kind: f.kind, forward: Seconds(sig(f.forward.median_s)), backward: Seconds(sig(f.backward_node_s)) }).collect()
}

/// The profile's host costs from one round of host measurements (four
/// significant digits).
pub fn host_costs(h: &HostMeasurement) -> HostCosts {
    let us = |s: f64| Seconds(sig(s));
    HostCosts {
        optimizer_norms_shard: h.optimizer.map(|o| us(o.norms_s)),
        optimizer_sgd_shard: h.optimizer.map(|o| us(o.sgd_s)),
        optimizer_adam_shard: h.optimizer.map(|o| us(o.adam_s)),
        param_leaf_unused: h.param_leaf_unused_s.map(us),
        ..HostCosts::new(us(h.small_op.median_s), us(h.param_view_forward_s), us(h.param_grad_s), us(h.backward_call_s))
    }
}

/// The median over rounds (each already on the reference speed) of every
/// host cost and of each kind's fixed costs. These are microseconds timed
/// in a fraction of a second, and one pass can land on a moment when a
/// shared host runs them several times slower, while a step pays them
/// thousands of times.
pub(super) fn median_host_costs(rounds: &[Measured]) -> (Option<HostCosts>, Vec<OpFixed>) {
    let hosts: Vec<&HostCosts> = rounds.iter().filter_map(|m| m.host.as_ref()).collect();
    let of = |f: fn(&HostCosts) -> Seconds| Seconds(sig(median(hosts.iter().map(|h| f(h).0).collect())));
    // Rounds from an older report may lack the optimiser's costs.
    let of_some = |f: fn(&HostCosts) -> Option<Seconds>| {
        let v: Vec<f64> = hosts.iter().copied().filter_map(f).map(|s| s.0).collect();
        (!v.is_empty()).then(|| Seconds(sig(median(v))))
    };
    let host = (!hosts.is_empty()).then(|| HostCosts {
        small_op: of(|h| h.small_op),
        param_view_forward: of(|h| h.param_view_forward),
        param_grad: of(|h| h.param_grad),
        param_leaf_unused: of_some(|h| h.param_leaf_unused),
        backward_call: of(|h| h.backward_call),
        optimizer_norms_shard: of_some(|h| h.optimizer_norms_shard),
        optimizer_sgd_shard: of_some(|h| h.optimizer_sgd_shard),
        optimizer_adam_shard: of_some(|h| h.optimizer_adam_shard),
    });
    let fixed = rounds
        .first()
        .map_or(&[][..], |m| m.op_fixed.as_slice())
        .iter()
        .map(|first| {
            let same: Vec<&OpFixed> = rounds.iter().flat_map(|m| m.op_fixed.iter().filter(|x| x.kind == first.kind)).collect();
            OpFixed {
                kind: first.kind,
                forward: Seconds(sig(median(same.iter().map(|x| x.forward.0).collect()))),
                backward: Seconds(sig(median(same.iter().map(|x| x.backward.0).collect()))),
            }
        })
        .collect();
    (host, fixed)
}

/// One loader time per crop set: the median over rounds of the time per
/// image, each on the reference speed.
pub(super) fn median_per_crops(loader: &[LoaderMeasurement], speed: &SpeedProbes) -> Vec<LoaderTime> {
    groups_by(loader, |m| m.crops.clone())
        .into_iter()
        .map(|g| {
            let same: Vec<f64> = g.iter().map(|x| x.image_s() * speed.normaliser(x.probe_s)).collect();
            LoaderTime { crops: g[0].crops.clone(), image: Seconds(sig(median(same))), data: Some(g[0].data.clone()) }
        })
        .collect()
}

/// `items` grouped by `key`, the groups in the order of their first item
/// (the rounds of one measurement, in the order the first round took them).
pub(super) fn groups_by<T, K: PartialEq>(items: impl IntoIterator<Item = T>, key: impl Fn(&T) -> K) -> Vec<Vec<T>> {
    let mut groups: Vec<(K, Vec<T>)> = Vec::new();
    for t in items {
        let k = key(&t);
        match groups.iter_mut().find(|(gk, _)| *gk == k) {
            Some((_, g)) => g.push(t),
            None => groups.push((k, vec![t])),
        }
    }
    groups.into_iter().map(|(_, g)| g).collect()
}

/// One time per block key: the median of its rounds (`calibrate
/// --rounds`), each already on the reference speed. Rounds measure the same
/// workloads tens of seconds apart, so the median drops a round that a slow spell
/// of the host fell on; the backward's peak is deterministic, the max is
/// kept in case one round's kernels chose a larger workspace.
pub(super) fn median_per_block(times: impl Iterator<Item = BlockTime>) -> Vec<BlockTime> {
    groups_by(times, |t| t.key.clone())
        .into_iter()
        .map(|g| {
            let of = |f: fn(&BlockTime) -> Seconds| Seconds(median(g.iter().map(|t| f(t).0).collect()));
            BlockTime {
                forward: of(|t| t.forward),
                forward_no_grad: of(|t| t.forward_no_grad),
                backward: of(|t| t.backward),
                backward_peak_bytes: g.iter().filter_map(|t| t.backward_peak_bytes).max(),
                ..g[0].clone()
            }
        })
        .collect()
}

impl CalibrationReport {
    /// Catalog entry `base` with the measured numbers: DRAM capacity and
    /// copy bandwidth replace the catalog's, the memory-bound efficiency and
    /// per-op overhead become the measured ones, and `[measured]` carries
    /// the achieved rates, effective bandwidth and collective fits.
    pub fn to_profile(&self, base: &HardwareSpec) -> Result<HardwareProfile, CalibrationError> {
        let c = &self.compute;
        let gpu = c.device != "cpu";
        let mut hw = base.clone();
        hw.name = if gpu {
            format!("{} — calibrated on {}", base.name, c.device)
        } else {
            format!("{} — calibrated, {} thread(s) per rank", base.name, c.threads)
        };
        // A GPU keeps its catalog capacity (the host's RAM is not its memory).
        if let (Some(m), false) = (self.host.memory_bytes, gpu) {
            hw.memory.capacity = Bytes(m >> 20 << 20);
        }
        hw.memory.bandwidth = Bandwidth(sig(c.copy.gb_s * 1e9));
        if let Some(e) = hw.efficiency.as_mut() {
            if let Some(mb) = c.memory_bound_gb_s {
                // Small BN/elementwise tensors live in cache, so this can pass 1.
                e.memory_bound = sig((mb / c.copy.gb_s).clamp(1e-3, 1.0));
            }
            e.kernel_overhead = Seconds(sig(c.op_overhead.median_s));
        }
        // The links as the catalog describes them, made consistent with the
        // all-gather fit (FSDP's main collective), for code that reads the
        // spec rather than the fits.
        if let Some(ag) = self.collective_fits.iter().find(|f| f.fit.collective == Collective::AllGather) {
            hw.interconnect.nvlink_latency = Seconds(sig(ag.fit.alpha.0));
            hw.interconnect.nvlink_bidirectional = Bandwidth(sig(2.0 * ag.fit.bus_bandwidth.0));
            hw.interconnect.nvlink_efficiency = 1.0;
        }
        hw.source = Some(format!(
            "seerscale calibrate on {} ({} cores); catalog entry `{}` with measured memory and overhead{}",
            self.host.cpu,
            self.host.cores,
            base.id,
            base.source.as_deref().map(|s| format!("; catalog: {s}")).unwrap_or_default()
        ));
        let speed = self.speed.clone().unwrap_or_default();
        let mut measured = Measured {
            source: Some(if gpu {
                format!(
                    "seerscale calibrate --device {}{}: host issue and fixed costs of the executor's ops and whole blocks on the GPU, medians over repeats; kernels otherwise from the catalog's kernel model",
                    c.device,
                    if self.quick { " --quick" } else { "" }
                )
            } else {
                format!(
                    "seerscale calibrate{}: {} threads, medians over repeats; collectives over {} Gloo ranks on 127.0.0.1",
                    if self.quick { " --quick" } else { "" },
                    c.threads,
                    self.collective_world_size
                )
            }),
            threads_per_rank: Some(c.threads),
            host_cores: Some(self.host.cores),
            memory_bandwidth: c.memory_bound_gb_s.map(|g| Bandwidth(sig(g * 1e9))),
            kernel_overhead: Some(Seconds(sig(c.op_overhead.median_s))),
            op_throughput: c.rates.iter().map(|r| OpThroughput { kind: r.kind, dtype: r.dtype, rate: FlopRate(sig(r.tflops * 1e12)) }).collect(),
            collectives: CollectiveProfile::default(),
            op_fixed: op_fixed(&c.fixed),
            host: c.host.as_ref().map(host_costs),
            block_times: Vec::new(),
            speed_probe: None,
            loader: Vec::new(),
        }
        // Op measurements and each block workload were taken at their own
        // host speed: put them all on the reference speed.
        .slowed_by(speed.normaliser(Some(speed.compute_s)));
        if gpu {
            // No op rates are measured on a GPU: the large copy is what the
            // optimiser's and the loss's streaming passes reach, at the
            // device's speed, not the host's.
            measured.memory_bandwidth = Some(Bandwidth(sig(c.copy.gb_s * 1e9)));
        }
        if !self.host_rounds.is_empty() {
            let rounds: Vec<Measured> = std::iter::once(measured.clone())
                .chain(self.host_rounds.iter().map(|r| {
                    Measured { op_fixed: op_fixed(&r.fixed), host: Some(host_costs(&r.host)), ..Measured::default() }.slowed_by(speed.normaliser(r.probe_s))
                }))
                .collect();
            (measured.host, measured.op_fixed) = median_host_costs(&rounds);
        }
        measured.block_times = median_per_block(self.blocks.iter().map(|b| b.to_block_time().slowed_by(speed.normaliser(b.probe_s))));
        measured.collectives = CollectiveProfile {
            fits: self
                .collective_fits
                .iter()
                .map(|f| CollectiveFit { alpha: Seconds(sig(f.fit.alpha.0)), bus_bandwidth: Bandwidth(sig(f.fit.bus_bandwidth.0)), ..f.fit.clone() })
                .collect(),
            busy: busy_extras(&self.collectives, &self.busy_collectives),
        };
        measured.loader = median_per_crops(&self.loader, &speed);
        measured.speed_probe = (speed.reference_s() > 0.0).then(|| Seconds(sig(speed.reference_s())));
        let p = HardwareProfile { hardware: hw, measured };
        p.validate().map_err(|(field, reason)| CalibrationError::Invalid { field, reason })?;
        Ok(p)
    }

    /// What was measured, in a few lines: the host, the compute rates, the
    /// collectives, the blocks and the loader (`summary` has every number).
    pub fn brief(&self) -> Vec<String> {
        let c = &self.compute;
        let mut l = vec![format!(
            "host: {} ({} cores), {} intra-op thread(s); per-op overhead {:.2} µs, copies {:.1} GB/s",
            self.host.cpu,
            self.host.cores,
            c.threads,
            c.op_overhead.median_s * 1e6,
            c.copy.gb_s
        )];
        if !c.rates.is_empty() {
            let rates: Vec<String> = c.rates.iter().map(|r| format!("{:?} {:.1} ({})", r.kind, r.tflops * 1e3, r.dtype)).collect();
            l.push(format!("compute, GFLOP/s: {}", rates.join(", ")));
        }
        if !self.collective_fits.is_empty() {
            let kinds: Vec<String> = self.collective_fits.iter().map(|f| format!("{:?}", f.fit.collective)).collect();
            l.push(format!("collectives over {} ranks fitted: {}", self.collective_world_size, kinds.join(", ")));
        }
        if !self.blocks.is_empty() {
            l.push(format!("{} block workload(s) timed through the executor's block code", self.blocks.len()));
        }
        for m in &self.loader {
            l.push(format!("data loader at {}: {:.1} µs per image", m.crops, m.image_s() * 1e6));
        }
        l
    }

    /// Human summary, also written as comments at the top of the TOML.
    pub fn summary(&self) -> Vec<String> {
        let c = &self.compute;
        let mut l = vec![
            format!("host: {} ({} cores), {} intra-op thread(s)", self.host.cpu, self.host.cores, c.threads),
            format!("per-op overhead: {:.2} µs ±{:.0} %", c.op_overhead.median_s * 1e6, 100.0 * c.op_overhead.noise()),
            format!("copy bandwidth ({} MiB): {:.1} GB/s ±{:.0} %", c.copy.bytes >> 20, c.copy.gb_s, 100.0 * c.copy.timing.noise()),
        ];
        if let Some(mb) = c.memory_bound_gb_s {
            l.push(format!("memory-bound ops (BN/elementwise/pool, graph byte count): {mb:.1} GB/s"));
        }
        for r in &c.rates {
            l.push(format!(
                "rate {:?} {}: {:.1} GFLOP/s over {} shape(s), fwd+bwd ({:.0} % of time was per-op overhead)",
                r.kind,
                r.dtype,
                r.tflops * 1e3,
                r.shapes,
                100.0 * r.overhead_share
            ));
        }
        for m in &c.ops {
            let (tf, tb) = m.tflops();
            let (gf, gb) = m.gb_s();
            let what = if m.flops_fwd > 0.0 { format!("{:.1}/{:.1} GFLOP/s", tf * 1e3, tb * 1e3) } else { format!("{gf:.1}/{gb:.1} GB/s") };
            l.push(format!(
                "  {} {}: fwd {:.1} µs ±{:.0} %, bwd {:.1} µs ±{:.0} % ({what} fwd/bwd)",
                m.dtype,
                m.label,
                m.forward.median_s * 1e6,
                100.0 * m.forward.noise(),
                m.backward.median_s * 1e6,
                100.0 * m.backward.noise()
            ));
        }
        for s in &c.skipped {
            l.push(format!("skipped {s}"));
        }
        for f in &self.collective_fits {
            l.push(format!(
                "{:?} over {} ranks: alpha {:.1} µs/step, bus bandwidth {:.2} GB/s (fit rms error {:.0} % over {} sizes)",
                f.fit.collective,
                self.collective_world_size,
                f.fit.alpha.0 * 1e6,
                f.fit.bus_bandwidth.0 / 1e9,
                100.0 * f.rms_rel_error,
                f.points
            ));
        }
        for b in busy_extras(&self.collectives, &self.busy_collectives) {
            l.push(format!(
                "{:?} over {} busy ranks: +{:.1} µs + {:.1} % of the compute since the last collective, over idle ranks",
                b.collective,
                b.world_size,
                b.extra.0 * 1e6,
                100.0 * b.skew
            ));
        }
        for s in &self.busy_collectives {
            l.push(format!(
                "  {:?} {} KiB after {:.0} µs of compute: {:.1} µs ±{:.0} %",
                s.collective,
                s.bytes >> 10,
                s.compute.median_s * 1e6,
                s.busy.median_s * 1e6,
                100.0 * s.busy.noise()
            ));
        }
        for b in &self.blocks {
            l.push(format!("block {}", b.summary()));
        }
        for m in &self.loader {
            l.push(format!(
                "loader {} ({} images a batch, one worker, {}): {:.1} µs per image ±{:.0} %",
                m.crops,
                m.images_per_batch,
                m.data,
                m.image_s() * 1e6,
                100.0 * m.batch.noise()
            ));
        }
        for s in &self.collectives {
            l.push(format!(
                "  {:?} {} KiB: median {:.1} µs ±{:.0} %, expected {:.1} µs (fitted)",
                s.collective,
                s.bytes >> 10,
                s.timing.median_s * 1e6,
                100.0 * s.timing.noise(),
                s.timing.expected_s * 1e6
            ));
        }
        let noise: Vec<f64> =
            c.ops.iter().flat_map(|m| [m.forward.noise(), m.backward.noise()]).chain(self.collectives.iter().map(|s| s.timing.noise())).collect();
        if !noise.is_empty() {
            let mut n = noise.clone();
            n.sort_by(|a, b| a.total_cmp(b));
            l.push(format!("noise (half p10..p90 spread / median): median ±{:.0} %, worst ±{:.0} %", 100.0 * quantile(&n, 0.5), 100.0 * n[n.len() - 1]));
        }
        l
    }

    /// The profile as TOML, with the summary as comments on top.
    pub fn profile_toml(&self, base: &HardwareSpec) -> Result<String, CalibrationError> {
        let p = self.to_profile(base)?;
        let mut s = String::from("# Written by `seerscale calibrate`; measured numbers are in [measured].\n");
        for l in self.summary() {
            s.push_str("# ");
            s.push_str(&l);
            s.push('\n');
        }
        s.push('\n');
        s.push_str(&p.to_toml_string()?);
        Ok(s)
    }
}
