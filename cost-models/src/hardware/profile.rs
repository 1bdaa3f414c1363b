//! A catalog entry plus what `seerscale calibrate` measured on the real
//! machine: op rates, host costs, whole blocks, the data loader,
//! collectives.

use super::*;

/// A catalog entry plus what calibration measured on the real machine.
/// `plan` reads it wherever it accepts a hardware id.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareProfile {
    pub hardware: HardwareSpec,
    #[serde(default)]
    pub measured: Measured,
}

/// Measured replacements for catalog numbers; every part is optional.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Measured {
    /// Where and when it was measured (free text).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
    /// Achieved HBM (or DRAM) bandwidth for memory-bound ops.
    #[serde(rename = "memory_bandwidth_gb_s", default, skip_serializing_if = "Option::is_none", with = "human::opt_gb_s")]
    pub memory_bandwidth: Option<Bandwidth>,
    /// Intra-op threads each rank used while the compute side was measured:
    /// the rates below are per rank at this many threads, so runs that are
    /// compared with them must use the same (`seerscale train --threads`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub threads_per_rank: Option<usize>,
    /// Cores of the measured machine (a CPU rank running `threads_per_rank`
    /// threads next to others gets `cores / ranks` of them at most).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_cores: Option<usize>,
    /// Measured fixed cost per kernel / op dispatch.
    #[serde(rename = "kernel_overhead_us", default, skip_serializing_if = "Option::is_none", with = "human::opt_us")]
    pub kernel_overhead: Option<Seconds>,
    /// Achieved FLOP/s per (op kind, dtype); replaces peak x efficiency.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub op_throughput: Vec<OpThroughput>,
    /// Fitted alpha/beta per collective.
    #[serde(default, skip_serializing_if = "crate::collectives::CollectiveProfile::is_empty")]
    pub collectives: crate::collectives::CollectiveProfile,
    /// Fixed cost of one op per kind and pass as a training step pays it
    /// (dispatch, output allocation, autograd recording / the backward
    /// node), measured at shapes small enough that the work is negligible.
    /// Replaces `kernel_overhead x kernels` for graph layers.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub op_fixed: Vec<OpFixed>,
    /// Host-side costs of the executor's own machinery (views of flat
    /// parameters, autograd engine calls); charged only when measured, since
    /// on a GPU the host runs ahead of the device stream.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostCosts>,
    /// Whole blocks timed through the executor's own block code at the
    /// shapes of a workload (`seerscale calibrate --recipe`), keyed by
    /// [`crate::graph::ModelGraph::block_key`]. Replace the per-op sum for
    /// those blocks: on a CPU, small ops cost what their shapes and
    /// libtorch's kernel choice make them, which no per-kind rate captures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub block_times: Vec<BlockTime>,
    /// Time of one call of the host-speed probe (a fixed single-thread
    /// workload, `executor::speed_probe`) while these numbers were taken;
    /// the compute times above are normalised to it. A shared machine's
    /// speed drifts by tens of percent over minutes, so a comparison made
    /// later re-runs the probe and scales with [`Measured::slowed_by`].
    #[serde(rename = "speed_probe_us", default, skip_serializing_if = "Option::is_none", with = "human::opt_us")]
    pub speed_probe: Option<Seconds>,
    /// The data loader's CPU time per image, per crop set (`seerscale
    /// calibrate --recipe`). On a CPU host whose cores the ranks fill, the
    /// loader's threads take it from the step.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub loader: Vec<LoaderTime>,
}

/// CPU time one data-loader worker spends per image (decode unless cached,
/// multi-crop augmentation, batch assembly) at one crop set, over the image
/// folder it names: decoding and cropping cost what the images make them.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LoaderTime {
    /// The crop groups ([`crate::graph::Workload::crops_label`], e.g. `2x32+2x16`).
    pub crops: String,
    #[serde(rename = "image_us", with = "human::us")]
    pub image: Seconds,
    /// The image folder it was measured on.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data: Option<String>,
}

impl Measured {
    /// These measurements on a host `factor` times slower (`factor` > 1:
    /// every compute time longer, every rate lower; < 1: faster). The
    /// collective fits stay: they time the transport between processes,
    /// not one process's compute; their extra cost next to busy compute
    /// does scale.
    pub fn slowed_by(&self, factor: f64) -> Measured {
        let f = if factor.is_finite() && factor > 0.0 { factor } else { 1.0 };
        let mut m = self.clone();
        for r in &mut m.op_throughput {
            r.rate = FlopRate(r.rate.0 / f);
        }
        m.memory_bandwidth = m.memory_bandwidth.map(|b| Bandwidth(b.0 / f));
        m.kernel_overhead = m.kernel_overhead.map(|o| Seconds(o.0 * f));
        for x in &mut m.op_fixed {
            x.forward = Seconds(x.forward.0 * f);
            x.backward = Seconds(x.backward.0 * f);
        }
        for b in &mut m.collectives.busy {
            b.extra = Seconds(b.extra.0 * f);
        }
        for b in &mut m.block_times {
            *b = b.slowed_by(f);
        }
        m.host = m.host.map(|h| h.map(|s| s * f));
        for l in &mut m.loader {
            l.image = l.image * f;
        }
        m.speed_probe = m.speed_probe.map(|p| Seconds(p.0 * f));
        m
    }
}

/// Measured time of one block (all its crop groups) in one pass.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BlockTime {
    /// [`crate::graph::ModelGraph::block_key`]: the block's layers, shapes and dtype.
    pub key: String,
    /// For people: model, block and workload it was measured at.
    pub label: String,
    /// Forward recorded by autograd (a normal block, or a recompute).
    #[serde(rename = "forward_us", with = "human::us")]
    pub forward: Seconds,
    /// Forward under no_grad (the first pass of a checkpointed block).
    #[serde(rename = "forward_no_grad_us", with = "human::us")]
    pub forward_no_grad: Seconds,
    /// Backward from the block's outputs to its inputs and parameters,
    /// including building the root and the autograd engine call.
    #[serde(rename = "backward_us", with = "human::us")]
    pub backward: Seconds,
    /// Peak bytes the backward allocated above what was held before it
    /// (input and parameter gradients, the kernels' workspaces), from the
    /// counting CPU allocator; the memory model takes the block's backward
    /// transient from it where it exceeds the modelled one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub backward_peak_bytes: Option<u64>,
}

impl BlockTime {
    /// The same block on a host `factor` times slower.
    pub fn slowed_by(&self, factor: f64) -> BlockTime {
        BlockTime {
            forward: Seconds(self.forward.0 * factor),
            forward_no_grad: Seconds(self.forward_no_grad.0 * factor),
            backward: Seconds(self.backward.0 * factor),
            ..self.clone()
        }
    }
}

/// Fixed per-op cost of one op kind, forward and backward.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpFixed {
    pub kind: crate::compute::OpKind,
    #[serde(rename = "forward_us", with = "human::us")]
    pub forward: Seconds,
    #[serde(rename = "backward_us", with = "human::us")]
    pub backward: Seconds,
}

/// Measured host-side costs of the training step's bookkeeping.
#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostCosts {
    /// One small tensor op outside autograd (optimizer, Sinkhorn, FSDP
    /// bookkeeping): dispatch + output allocation.
    #[serde(rename = "small_op_us", with = "human::us")]
    pub small_op: Seconds,
    /// One parameter of a gathered flat parameter made an autograd leaf
    /// that shares its storage (narrow + view + requires_grad), as every
    /// block's forward does for each parameter of each unit covering it.
    #[serde(rename = "param_view_forward_us", with = "human::us")]
    pub param_view_forward: Seconds,
    /// Adding one parameter's gradient into its unit's unsharded gradient
    /// at its offset, as a block's backward does for each gradient it
    /// returns: the fixed part (the bytes are counted at memory bandwidth).
    /// Profiles that timed the backward of a view into the flat parameter
    /// instead call it `param_view_backward_us`: it loads as this, an
    /// overestimate, until the profile is recalibrated.
    #[serde(rename = "param_grad_us", alias = "param_view_backward_us", with = "human::us")]
    pub param_grad: Seconds,
    /// Per parameter leaf in a block's backward call whose gradient that
    /// block does not produce (the other blocks' parameters of a unit that
    /// spans several): the autograd engine still walks to it. Absent in
    /// older profiles (then not charged).
    #[serde(default, rename = "param_leaf_unused_us", with = "human::opt_us", skip_serializing_if = "Option::is_none")]
    pub param_leaf_unused: Option<Seconds>,
    /// One autograd engine call (`run_backward`), fixed part.
    #[serde(rename = "backward_call_us", with = "human::us")]
    pub backward_call: Seconds,
    /// The executor's optimiser per flat shard (one FSDP unit's shard on a
    /// rank), timed on many tiny shards against one of the same size: the
    /// norms pass, and the SGD (momentum, decay, LARC) and Adam updates.
    /// Absent in profiles from before they were measured; the planner then
    /// counts the pass's ops as small ops.
    #[serde(default, rename = "optimizer_norms_shard_us", with = "human::opt_us", skip_serializing_if = "Option::is_none")]
    pub optimizer_norms_shard: Option<Seconds>,
    #[serde(default, rename = "optimizer_sgd_shard_us", with = "human::opt_us", skip_serializing_if = "Option::is_none")]
    pub optimizer_sgd_shard: Option<Seconds>,
    #[serde(default, rename = "optimizer_adam_shard_us", with = "human::opt_us", skip_serializing_if = "Option::is_none")]
    pub optimizer_adam_shard: Option<Seconds>,
}

impl HostCosts {
    /// Only the always-measured costs; the optimiser's per-shard costs unknown.
    pub fn new(small_op: Seconds, param_view_forward: Seconds, param_grad: Seconds, backward_call: Seconds) -> HostCosts {
        HostCosts {
            small_op,
            param_view_forward,
            param_grad,
            param_leaf_unused: None,
            backward_call,
            optimizer_norms_shard: None,
            optimizer_sgd_shard: None,
            optimizer_adam_shard: None,
        }
    }

    /// Every cost put through `f` (scaling, or a statistic over rounds).
    pub fn map(&self, mut f: impl FnMut(Seconds) -> Seconds) -> HostCosts {
        HostCosts {
            small_op: f(self.small_op),
            param_view_forward: f(self.param_view_forward),
            param_grad: f(self.param_grad),
            param_leaf_unused: self.param_leaf_unused.map(&mut f),
            backward_call: f(self.backward_call),
            optimizer_norms_shard: self.optimizer_norms_shard.map(&mut f),
            optimizer_sgd_shard: self.optimizer_sgd_shard.map(&mut f),
            optimizer_adam_shard: self.optimizer_adam_shard.map(&mut f),
        }
    }

    /// Every cost with its profile field name, for validation and reports.
    pub fn fields(&self) -> Vec<(&'static str, Seconds)> {
        let mut v = vec![
            ("small_op_us", self.small_op),
            ("param_view_forward_us", self.param_view_forward),
            ("param_grad_us", self.param_grad),
            ("backward_call_us", self.backward_call),
        ];
        let opt = [
            ("param_leaf_unused_us", self.param_leaf_unused),
            ("optimizer_norms_shard_us", self.optimizer_norms_shard),
            ("optimizer_sgd_shard_us", self.optimizer_sgd_shard),
            ("optimizer_adam_shard_us", self.optimizer_adam_shard),
        ];
        v.extend(opt.into_iter().filter_map(|(n, s)| s.map(|s| (n, s))));
        v
    }
}

/// Achieved rate of one class of op in one dtype.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpThroughput {
    pub kind: crate::compute::OpKind,
    pub dtype: DType,
    #[serde(rename = "tflops", with = "human::tflops")]
    pub rate: FlopRate,
}

impl HardwareProfile {
    pub fn from_spec(hardware: HardwareSpec) -> HardwareProfile {
        HardwareProfile { hardware, measured: Measured::default() }
    }

    /// Accepts either a profile (`[hardware]` table) or a bare spec.
    pub fn parse_toml(text: &str, file: &str) -> Result<HardwareProfile, HardwareError> {
        let table: toml::Table = parse_toml(text, file)?;
        if !table.contains_key("hardware") {
            return Ok(HardwareProfile::from_spec(parse_hardware(text, file)?));
        }
        let p: HardwareProfile = parse_toml(text, file)?;
        p.validate().map_err(|(field, reason)| invalid(text, file, field, reason))?;
        Ok(p)
    }

    pub fn parse_json(text: &str, file: &str) -> Result<HardwareProfile, HardwareError> {
        let p: HardwareProfile = parse_json(text, file)?;
        p.validate().map_err(|(field, reason)| HardwareError::Invalid { file: file.to_string(), line: None, field, reason })?;
        Ok(p)
    }

    pub fn to_toml_string(&self) -> Result<String, HardwareError> {
        toml::to_string_pretty(self).map_err(|e| HardwareError::Serialize(e.to_string()))
    }

    pub fn to_json_string(&self) -> Result<String, HardwareError> {
        serde_json::to_string_pretty(self).map_err(|e| HardwareError::Serialize(e.to_string()))
    }

    /// Spec and measurements; field names are dotted paths in the file.
    pub fn validate(&self) -> Result<(), (String, String)> {
        self.hardware.validate().map_err(|(f, r)| (format!("hardware.{f}"), r))?;
        let m = &self.measured;
        let mut v = Checks::default();
        if let Some(bw) = m.memory_bandwidth {
            v.pos(bw.0 / 1e9, "measured.memory_bandwidth_gb_s");
        }
        if let Some(t) = m.threads_per_rank {
            v.pos(t as f64, "measured.threads_per_rank");
        }
        if let Some(c) = m.host_cores {
            v.pos(c as f64, "measured.host_cores");
        }
        if let Some(o) = m.kernel_overhead {
            v.nonneg(o.0 * 1e6, "measured.kernel_overhead_us");
        }
        if let Some(p) = m.speed_probe {
            v.pos(p.0 * 1e6, "measured.speed_probe_us");
        }
        for t in &m.op_throughput {
            v.pos(t.rate.0 / 1e12, "measured.op_throughput.tflops");
        }
        for f in &m.op_fixed {
            v.nonneg(f.forward.0 * 1e6, "measured.op_fixed.forward_us");
            v.nonneg(f.backward.0 * 1e6, "measured.op_fixed.backward_us");
        }
        for b in &m.block_times {
            v.check(!b.key.is_empty(), "measured.block_times.key", "must not be empty");
            v.nonneg(b.forward.0 * 1e6, "measured.block_times.forward_us");
            v.nonneg(b.forward_no_grad.0 * 1e6, "measured.block_times.forward_no_grad_us");
            v.nonneg(b.backward.0 * 1e6, "measured.block_times.backward_us");
        }
        for l in &m.loader {
            v.check(!l.crops.is_empty(), "measured.loader.crops", "must not be empty");
            v.nonneg(l.image.0 * 1e6, "measured.loader.image_us");
        }
        for (name, s) in m.host.iter().flat_map(HostCosts::fields) {
            v.nonneg(s.0 * 1e6, &format!("measured.host.{name}"));
        }
        v.done()?;
        m.collectives.validate().map_err(|(f, r)| (format!("measured.collectives.{f}"), r))
    }
}
