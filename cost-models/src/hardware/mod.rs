//! Hardware catalog: what one accelerator (and the node it sits in) can do.
//!
//! A [`HardwareSpec`] is read from TOML written in the units vendors publish
//! (TFLOP/s, GB/s, Gbit/s, MiB, µs) and exposed in the crate's unit types.
//! Built-ins live in `configs/hardware/*.toml` and are compiled into the
//! binary; users pass their own file by path. A [`HardwareProfile`] is a spec
//! plus optional measured overrides, written by `seerscale calibrate` (its
//! types are in `profile`; `calibration` holds calibrate's records and the
//! fits that build a profile from them).

use crate::config::{field_prefix, line_suffix, looks_like_path, parse_json, parse_toml, read_file, ConfigError};
use crate::quantity::{Bandwidth, Bytes, DType, FlopRate, Seconds, MIB};
use serde::{Deserialize, Serialize};

pub mod calibration;
mod host;
mod profile;
pub use host::*;
pub use profile::*;

/// Built-in catalog: (id, TOML text). Order = display order.
const BUILTINS: &[(&str, &str)] = &[
    ("v100-16gb", include_str!("../../../configs/hardware/v100-16gb.toml")),
    ("v100-32gb", include_str!("../../../configs/hardware/v100-32gb.toml")),
    ("a100-40gb", include_str!("../../../configs/hardware/a100-40gb.toml")),
    ("a100-80gb", include_str!("../../../configs/hardware/a100-80gb.toml")),
    ("h100-80gb", include_str!("../../../configs/hardware/h100-80gb.toml")),
    ("h200-141gb", include_str!("../../../configs/hardware/h200-141gb.toml")),
    ("rtx-3090", include_str!("../../../configs/hardware/rtx-3090.toml")),
    ("cpu-local", include_str!("../../../configs/hardware/cpu-local.toml")),
];

/// Why a hardware description could not be loaded. Every variant names the
/// file (or built-in) it came from. The file parts are located by
/// [`crate::config`] and converted from [`ConfigError`].
#[derive(Debug, thiserror::Error)]
pub enum HardwareError {
    /// The OS reason is in the message, not chained, so `{:#}` prints it once.
    #[error("{file}: cannot read: {error}")]
    Io { file: String, error: std::io::Error },
    #[error("{file}:{line}:{column}: {}{message}", field_prefix(.field))]
    Parse { file: String, line: usize, column: usize, field: Option<String>, message: String },
    #[error("{file}{}: field `{field}`: {reason}", line_suffix(*.line))]
    Invalid { file: String, line: Option<usize>, field: String, reason: String },
    #[error("unknown hardware `{id}`: not a file and not a built-in id (built-ins: {valid})")]
    UnknownId { id: String, valid: String },
    #[error("cannot serialise hardware profile: {0}")]
    Serialize(String),
}

impl From<ConfigError> for HardwareError {
    fn from(e: ConfigError) -> Self {
        match e {
            ConfigError::Io { origin, error } => HardwareError::Io { file: origin, error },
            ConfigError::Parse { origin, line, column, field, message } => HardwareError::Parse { file: origin, line, column, field, message },
            ConfigError::Invalid { origin, line, field, reason } => HardwareError::Invalid { file: origin, line, field, reason },
            ConfigError::Unknown { name, .. } => unknown(&name),
        }
    }
}

/// GPU or a CPU standing in for one (the `tiny-cpu` recipe).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Gpu,
    Cpu,
}

/// One accelerator type and the node it is packaged in.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HardwareSpec {
    pub id: String,
    pub name: String,
    pub kind: DeviceKind,
    /// On-demand price of one device for one hour (users override it).
    pub price_usd_per_gpu_hour: f64,
    pub compute: ComputeSpec,
    pub memory: MemorySpec,
    pub interconnect: InterconnectSpec,
    /// Flat fractions of peak per class of op (a roofline): CPUs, and GPUs
    /// described without a kernel model.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub efficiency: Option<EfficiencySpec>,
    /// The GPU kernel-time model's parameters ([`crate::kernels`]).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kernels: Option<crate::kernels::KernelSpec>,
    /// The node's CPUs (what feeds the data loader); absent where unknown.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host: Option<HostSpec>,
    /// Free text: where the numbers come from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<String>,
}

/// Peak dense (no sparsity) arithmetic rates.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ComputeSpec {
    /// IEEE fp32 on CUDA cores (or CPU vector units).
    #[serde(rename = "fp32_tflops", with = "human::tflops")]
    pub fp32: FlopRate,
    /// TF32 tensor cores (Ampere+); absent = not supported.
    #[serde(rename = "tf32_tflops", default, skip_serializing_if = "Option::is_none", with = "human::opt_tflops")]
    pub tf32: Option<FlopRate>,
    #[serde(rename = "fp16_tflops", default, skip_serializing_if = "Option::is_none", with = "human::opt_tflops")]
    pub fp16: Option<FlopRate>,
    /// Absent on V100 (no bf16 tensor cores): bf16 plans are refused there.
    #[serde(rename = "bf16_tflops", default, skip_serializing_if = "Option::is_none", with = "human::opt_tflops")]
    pub bf16: Option<FlopRate>,
    /// PyTorch default `torch.backends.cudnn.allow_tf32 = True`: fp32 convs
    /// run on TF32 tensor cores.
    #[serde(default = "yes")]
    pub fp32_conv_uses_tf32: bool,
    /// PyTorch default `torch.backends.cuda.matmul.allow_tf32 = False` (since
    /// 1.12): fp32 matmuls (the SwAV prototypes) run in true fp32.
    #[serde(default)]
    pub fp32_matmul_uses_tf32: bool,
}

fn yes() -> bool {
    true
}

/// Device memory and what the runtime takes before the model gets any.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MemorySpec {
    /// Total device memory as `nvidia-smi` reports it.
    #[serde(rename = "capacity_mib", with = "human::mib")]
    pub capacity: Bytes,
    #[serde(rename = "bandwidth_gb_s", with = "human::gb_s")]
    pub bandwidth: Bandwidth,
    /// Runtime before any tensor: CUDA context with the kernels of
    /// libtorch/cuDNN/NCCL (lazily loaded), or the process + OS on a CPU.
    #[serde(rename = "runtime_mib", with = "human::mib")]
    pub runtime: Bytes,
    /// cuBLAS + cuDNN workspaces kept by the caching allocator.
    #[serde(rename = "workspace_mib", with = "human::mib")]
    pub workspace: Bytes,
    /// NCCL (or gloo) communicator buffers, all process groups together.
    #[serde(rename = "comm_buffers_mib", with = "human::mib")]
    pub comm_buffers: Bytes,
}

/// Node packaging and network.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct InterconnectSpec {
    pub gpus_per_node: usize,
    /// Published per-GPU NVLink bandwidth, both directions together (the
    /// vendor's "600 GB/s"); a ring uses one direction per neighbour.
    #[serde(rename = "nvlink_gb_s", with = "human::gb_s")]
    pub nvlink_bidirectional: Bandwidth,
    /// One ring step GPU→GPU inside a node.
    #[serde(rename = "nvlink_latency_us", with = "human::us")]
    pub nvlink_latency: Seconds,
    /// Achieved fraction of one-direction NVLink bandwidth (nccl-tests busbw).
    pub nvlink_efficiency: f64,
    /// 0 = a single-node machine with no network.
    pub nics_per_node: usize,
    /// Line rate of one NIC, per direction.
    #[serde(rename = "nic_gbit_s", with = "human::gbit_s")]
    pub nic_bandwidth: Bandwidth,
    /// Achieved fraction of NIC line rate.
    pub nic_efficiency: f64,
    /// One ring step GPU→NIC→fabric→NIC→GPU across nodes.
    #[serde(rename = "fabric_latency_us", with = "human::us")]
    pub fabric_latency: Seconds,
    /// Fabric oversubscription (1 = non-blocking fat tree).
    #[serde(default = "one")]
    pub fabric_oversubscription: f64,
    /// NVLink SHARP (Hopper's NVSwitch reduces in the switch): all-reduce
    /// bus bandwidth inside a node as nccl-tests reports it for NCCL's NVLS
    /// algorithm; absent where the switch cannot reduce.
    #[serde(rename = "nvls_all_reduce_gb_s", default, skip_serializing_if = "Option::is_none", with = "human::opt_gb_s")]
    pub nvls_all_reduce: Option<Bandwidth>,
}

fn one() -> f64 {
    1.0
}

/// Achievable fractions of peak, per class of op. Defaults only; a
/// calibration profile replaces them with measurements.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EfficiencySpec {
    /// Linear layers (large GEMMs).
    pub matmul: f64,
    /// Dense convolutions (cuDNN implicit GEMM).
    pub conv: f64,
    /// Grouped convolutions: cuDNN's grouped kernels reach a smaller fraction
    /// of tensor-core peak (narrow per-group GEMMs), so they get their own.
    pub grouped_conv: f64,
    /// Fraction of HBM bandwidth reached by BN / elementwise / pooling.
    pub memory_bound: f64,
    /// Fixed cost per kernel (launch + tail) that no roofline sees.
    #[serde(rename = "kernel_overhead_us", with = "human::us")]
    pub kernel_overhead: Seconds,
}

/// Which hardware unit a multiply-accumulate op runs on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MathUnit {
    /// cuDNN convolutions (TF32 allowed by default in PyTorch).
    Conv,
    /// cuBLAS matmuls (TF32 off by default in PyTorch).
    Matmul,
    /// Anything else (vector units, no tensor cores).
    Vector,
}

impl HardwareSpec {
    /// Peak dense rate for `dtype` on `unit`; `None` if the device cannot
    /// run that dtype at all.
    pub fn peak(&self, dtype: DType, unit: MathUnit) -> Option<FlopRate> {
        let c = &self.compute;
        match dtype {
            DType::Fp32 => {
                let tf32 = match unit {
                    MathUnit::Conv => c.fp32_conv_uses_tf32,
                    MathUnit::Matmul => c.fp32_matmul_uses_tf32,
                    MathUnit::Vector => false,
                };
                Some(if tf32 { c.tf32.unwrap_or(c.fp32) } else { c.fp32 })
            }
            // Half-precision vector ops (BN, ReLU) do not use tensor cores:
            // count them at the fp32 vector rate, if the dtype is supported.
            DType::Fp16 | DType::Bf16 => {
                let tensor = if dtype == DType::Fp16 { c.fp16 } else { c.bf16 };
                if unit == MathUnit::Vector {
                    tensor.map(|_| c.fp32)
                } else {
                    tensor
                }
            }
        }
    }

    pub fn supports(&self, dtype: DType) -> bool {
        self.peak(dtype, MathUnit::Conv).is_some()
    }

    pub fn memory_capacity(&self) -> Bytes {
        self.memory.capacity
    }

    /// Runtime + workspaces + communication buffers.
    pub fn memory_reserve(&self) -> Bytes {
        self.memory.runtime + self.memory.workspace + self.memory.comm_buffers
    }

    /// What the caching allocator can hand to tensors.
    pub fn usable_memory(&self) -> Bytes {
        self.memory.capacity.saturating_sub(self.memory_reserve())
    }

    pub fn hbm_bandwidth(&self) -> Bandwidth {
        self.memory.bandwidth
    }

    /// Achievable one-direction NVLink bandwidth of one GPU.
    pub fn nvlink_bus_bandwidth(&self) -> Bandwidth {
        let ic = &self.interconnect;
        Bandwidth(ic.nvlink_bidirectional.0 / 2.0 * ic.nvlink_efficiency)
    }

    /// Achievable bandwidth of one NIC through the fabric.
    pub fn nic_effective_bandwidth(&self) -> Bandwidth {
        let ic = &self.interconnect;
        Bandwidth(ic.nic_bandwidth.0 * ic.nic_efficiency / ic.fabric_oversubscription)
    }

    pub fn gpus_per_node(&self) -> usize {
        self.interconnect.gpus_per_node
    }

    /// Price of one device-hour in USD.
    pub fn price_per_gpu_hour(&self) -> f64 {
        self.price_usd_per_gpu_hour
    }

    /// Same hardware at another price (`--price`).
    pub fn with_price(mut self, usd_per_gpu_hour: f64) -> Result<HardwareSpec, HardwareError> {
        self.price_usd_per_gpu_hour = usd_per_gpu_hour;
        self.validate().map_err(|(field, reason)| HardwareError::Invalid { file: format!("--price for {}", self.id), line: None, field, reason })?;
        Ok(self)
    }

    /// Checks every value is physically meaningful; returns (field, reason)
    /// with values shown in the file's units.
    pub fn validate(&self) -> Result<(), (String, String)> {
        let mut v = Checks::default();
        v.check(
            !self.id.is_empty() && self.id.chars().all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c)),
            "id",
            "must be non-empty, letters, digits, '-', '_' or '.'",
        );
        v.check(!self.name.trim().is_empty(), "name", "must not be empty");
        v.nonneg(self.price_usd_per_gpu_hour, "price_usd_per_gpu_hour");
        let c = &self.compute;
        v.pos(c.fp32.0 / 1e12, "compute.fp32_tflops");
        for (r, f) in [(c.tf32, "compute.tf32_tflops"), (c.fp16, "compute.fp16_tflops"), (c.bf16, "compute.bf16_tflops")] {
            if let Some(r) = r {
                v.pos(r.0 / 1e12, f);
            }
        }
        let m = &self.memory;
        v.check(m.capacity.0 > 0, "memory.capacity_mib", "must be positive");
        v.pos(m.bandwidth.0 / 1e9, "memory.bandwidth_gb_s");
        v.check(
            self.memory_reserve() < m.capacity,
            "memory.runtime_mib",
            &format!("reserve (runtime + workspace + comm_buffers = {}) must be smaller than capacity {}", self.memory_reserve(), m.capacity),
        );
        let ic = &self.interconnect;
        v.check(ic.gpus_per_node >= 1, "interconnect.gpus_per_node", "must be at least 1");
        v.pos(ic.nvlink_bidirectional.0 / 1e9, "interconnect.nvlink_gb_s");
        v.nonneg(ic.nvlink_latency.0 * 1e6, "interconnect.nvlink_latency_us");
        v.fraction(ic.nvlink_efficiency, "interconnect.nvlink_efficiency");
        if ic.nics_per_node > 0 {
            v.pos(ic.nic_bandwidth.0 * 8.0 / 1e9, "interconnect.nic_gbit_s");
        } else {
            v.nonneg(ic.nic_bandwidth.0 * 8.0 / 1e9, "interconnect.nic_gbit_s");
        }
        v.fraction(ic.nic_efficiency, "interconnect.nic_efficiency");
        v.nonneg(ic.fabric_latency.0 * 1e6, "interconnect.fabric_latency_us");
        v.check(ic.fabric_oversubscription.is_finite() && ic.fabric_oversubscription >= 1.0, "interconnect.fabric_oversubscription", "must be >= 1");
        if let Some(b) = ic.nvls_all_reduce {
            v.pos(b.0 / 1e9, "interconnect.nvls_all_reduce_gb_s");
        }
        if let Some(h) = &self.host {
            v.pos(h.cpu_cores_per_gpu, "host.cpu_cores_per_gpu");
            v.pos(h.loader_decode_ms, "host.loader_decode_ms");
            v.pos(h.loader_crop_ns_per_pixel, "host.loader_crop_ns_per_pixel");
        }
        match (&self.efficiency, &self.kernels) {
            (None, None) => v.check(false, "efficiency", "give `[kernels]` (the GPU kernel model) or `[efficiency]` (flat fractions of peak)"),
            (_, Some(_)) if self.kind == DeviceKind::Cpu => v.check(false, "kernels", "the kernel model is for GPUs; a CPU takes `[efficiency]`"),
            _ => {}
        }
        if let Some(e) = &self.efficiency {
            v.fraction(e.matmul, "efficiency.matmul");
            v.fraction(e.conv, "efficiency.conv");
            v.fraction(e.grouped_conv, "efficiency.grouped_conv");
            v.fraction(e.memory_bound, "efficiency.memory_bound");
            v.nonneg(e.kernel_overhead.0 * 1e6, "efficiency.kernel_overhead_us");
        }
        if let Some(Err((field, reason))) = self.kernels.as_ref().map(|k| k.validate()) {
            v.check(false, &field, &reason);
        }
        v.done()
    }
}

/// First failing check wins (fields are checked in file order).
#[derive(Default)]
struct Checks(Option<(String, String)>);

impl Checks {
    fn check(&mut self, ok: bool, field: &str, reason: &str) {
        if !ok && self.0.is_none() {
            self.0 = Some((field.to_string(), reason.to_string()));
        }
    }
    fn pos(&mut self, x: f64, field: &str) {
        self.check(x.is_finite() && x > 0.0, field, &format!("must be positive, got {x}"));
    }
    fn nonneg(&mut self, x: f64, field: &str) {
        self.check(x.is_finite() && x >= 0.0, field, &format!("must be >= 0, got {x}"));
    }
    fn fraction(&mut self, x: f64, field: &str) {
        self.check(x.is_finite() && x > 0.0 && x <= 1.0, field, &format!("must be in (0, 1], got {x}"));
    }
    fn done(self) -> Result<(), (String, String)> {
        self.0.map_or(Ok(()), Err)
    }
}

// ---------------------------------------------------------------- catalog

/// Ids of the built-in hardware, in catalog order.
pub fn list_builtin_hardware() -> Vec<&'static str> {
    BUILTINS.iter().map(|(id, _)| *id).collect()
}

/// A built-in spec by id.
pub fn builtin_hardware(id: &str) -> Result<HardwareSpec, HardwareError> {
    let (id, text) = BUILTINS.iter().find(|(i, _)| *i == id).ok_or_else(|| unknown(id))?;
    parse_hardware(text, &builtin_label(id))
}

fn builtin_label(id: &str) -> String {
    format!("configs/hardware/{id}.toml (built-in)")
}

fn unknown(id: &str) -> HardwareError {
    HardwareError::UnknownId { id: id.to_string(), valid: list_builtin_hardware().join(", ") }
}

/// A built-in id, or a path to a TOML hardware spec (anything containing a
/// path separator or ending in `.toml` is treated as a path).
pub fn load_hardware(name_or_path: &str) -> Result<HardwareSpec, HardwareError> {
    Ok(load_profile(name_or_path)?.hardware)
}

/// Like [`load_hardware`] but also accepts a calibration profile file
/// (`[hardware]` + `[measured]`); a plain spec gets no measurements.
pub fn load_profile(name_or_path: &str) -> Result<HardwareProfile, HardwareError> {
    if looks_like_path(name_or_path) {
        return HardwareProfile::parse_toml(&read_file(name_or_path)?, name_or_path);
    }
    Ok(HardwareProfile { hardware: builtin_hardware(name_or_path)?, measured: Measured::default() })
}

/// Parses and validates one hardware spec; `file` labels errors.
pub(crate) fn parse_hardware(text: &str, file: &str) -> Result<HardwareSpec, HardwareError> {
    let spec: HardwareSpec = parse_toml(text, file)?;
    spec.validate().map_err(|(field, reason)| invalid(text, file, field, reason))?;
    Ok(spec)
}

/// A validation failure, with the line of `field` in `text`.
fn invalid(text: &str, file: &str, field: String, reason: String) -> HardwareError {
    ConfigError::invalid(file, field, reason).located(text).into()
}

/// serde adapters between the unit types and the units vendors publish.
pub(crate) mod human {
    macro_rules! scaled {
        ($name:ident, $opt:ident, $ty:path, $scale:expr) => {
            #[allow(dead_code)]
            pub mod $name {
                use serde::{Deserialize, Deserializer, Serializer};
                pub fn serialize<S: Serializer>(v: &$ty, s: S) -> Result<S::Ok, S::Error> {
                    s.serialize_f64(v.0 as f64 / $scale)
                }
                pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<$ty, D::Error> {
                    let x = f64::deserialize(d)?;
                    super::from_f64(x * $scale).map(|v| $ty(v as _)).map_err(serde::de::Error::custom)
                }
            }
            #[allow(dead_code)]
            pub mod $opt {
                use serde::{Deserialize, Deserializer, Serializer};
                pub fn serialize<S: Serializer>(v: &Option<$ty>, s: S) -> Result<S::Ok, S::Error> {
                    match v {
                        Some(v) => s.serialize_some(&(v.0 as f64 / $scale)),
                        None => s.serialize_none(),
                    }
                }
                pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<$ty>, D::Error> {
                    match Option::<f64>::deserialize(d)? {
                        Some(x) => super::from_f64(x * $scale).map(|v| Some($ty(v as _))).map_err(serde::de::Error::custom),
                        None => Ok(None),
                    }
                }
            }
        };
    }

    /// Rejects NaN/inf at parse time; sign is checked by `validate`, which
    /// can name the field (a negative byte count is rejected here because
    /// `Bytes` cannot hold it).
    fn from_f64(x: f64) -> Result<f64, &'static str> {
        if x.is_finite() {
            Ok(x)
        } else {
            Err("must be a finite number")
        }
    }

    scaled!(tflops, opt_tflops, crate::quantity::FlopRate, 1e12);
    scaled!(gb_s, opt_gb_s, crate::quantity::Bandwidth, 1e9);
    scaled!(gbit_s, opt_gbit_s, crate::quantity::Bandwidth, 1e9 / 8.0);
    scaled!(us, opt_us, crate::quantity::Seconds, 1e-6);

    /// MiB <-> Bytes; negative or fractional-byte sizes are refused.
    pub mod mib {
        use serde::{Deserialize, Deserializer, Serializer};
        pub fn serialize<S: Serializer>(v: &crate::quantity::Bytes, s: S) -> Result<S::Ok, S::Error> {
            s.serialize_f64(v.0 as f64 / super::super::MIB as f64)
        }
        pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<crate::quantity::Bytes, D::Error> {
            let x = f64::deserialize(d)?;
            if !x.is_finite() || x < 0.0 {
                return Err(serde::de::Error::custom(format!("must be a non-negative size in MiB, got {x}")));
            }
            Ok(crate::quantity::Bytes((x * super::super::MIB as f64).round() as u64))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_builtin_loads_and_validates() {
        let ids = list_builtin_hardware();
        for want in ["v100-32gb", "a100-40gb", "a100-80gb", "h100-80gb", "h200-141gb", "cpu-local"] {
            assert!(ids.contains(&want), "{want} missing from catalog");
        }
        for id in ids {
            let hw = builtin_hardware(id).unwrap_or_else(|e| panic!("{e}"));
            assert_eq!(hw.id, id, "file id must match catalog id");
            assert!(hw.usable_memory() < hw.memory_capacity());
            assert!(hw.usable_memory().as_gib() > 1.0, "{id}: usable {}", hw.usable_memory());
            assert!(hw.supports(DType::Fp32));
        }
    }

    #[test]
    fn published_numbers_and_pytorch_tf32_defaults() {
        let a = builtin_hardware("a100-40gb").unwrap();
        assert_eq!(a.peak(DType::Bf16, MathUnit::Conv), Some(FlopRate(312e12)));
        // fp32 conv: cuDNN TF32; fp32 matmul: true fp32 (PyTorch defaults).
        assert_eq!(a.peak(DType::Fp32, MathUnit::Conv), Some(FlopRate(156e12)));
        assert_eq!(a.peak(DType::Fp32, MathUnit::Matmul), Some(FlopRate(19.5e12)));
        assert_eq!(a.hbm_bandwidth(), Bandwidth(1555e9));
        assert_eq!(a.memory_capacity(), Bytes(40960 * MIB));
        assert!((a.nvlink_bus_bandwidth().0 - 300e9 * a.interconnect.nvlink_efficiency).abs() < 1.0);
        assert_eq!(a.interconnect.nic_bandwidth, Bandwidth(25e9));
        let v = builtin_hardware("v100-32gb").unwrap();
        assert!(!v.supports(DType::Bf16), "V100 has no bf16 tensor cores");
        assert_eq!(v.peak(DType::Fp32, MathUnit::Conv), Some(FlopRate(15.7e12)), "no TF32 on Volta");
        let h = builtin_hardware("h200-141gb").unwrap();
        assert_eq!(h.hbm_bandwidth(), Bandwidth(4800e9));
    }

    #[test]
    fn unknown_id_lists_valid_ones() {
        let e = builtin_hardware("a100").unwrap_err().to_string();
        assert!(e.contains("a100-40gb") && e.contains("h200-141gb") && e.contains("`a100`"), "{e}");
        let e = load_hardware("tpu-v5").unwrap_err().to_string();
        assert!(e.contains("v100-32gb"), "{e}");
    }

    fn a100_text() -> &'static str {
        BUILTINS.iter().find(|(i, _)| *i == "a100-40gb").unwrap().1
    }

    #[test]
    fn unknown_field_names_file_line_and_field() {
        let text = a100_text().replace("[memory]\n", "[memory]\nbandwith_gb_s = 10\n");
        let line = text.lines().position(|l| l.starts_with("bandwith_gb_s")).unwrap() + 1;
        let e = parse_hardware(&text, "my.toml").unwrap_err();
        match &e {
            HardwareError::Parse { file, line: l, field, .. } => {
                assert_eq!(file, "my.toml");
                assert_eq!(*l, line);
                assert_eq!(field.as_deref(), Some("memory.bandwith_gb_s"));
            }
            other => panic!("wrong error {other:?}"),
        }
        assert!(e.to_string().starts_with(&format!("my.toml:{line}:")), "{e}");
    }

    #[test]
    fn negative_bandwidth_names_field_and_line() {
        let text = a100_text().replace("nic_gbit_s = 200", "nic_gbit_s = -200");
        assert_ne!(text, a100_text());
        let line = text.lines().position(|l| l.starts_with("nic_gbit_s")).unwrap() + 1;
        let e = parse_hardware(&text, "cluster.toml").unwrap_err();
        match &e {
            HardwareError::Invalid { file, line: l, field, reason } => {
                assert_eq!(file, "cluster.toml");
                assert_eq!(*l, Some(line));
                assert_eq!(field, "interconnect.nic_gbit_s");
                assert!(reason.contains("positive"), "{reason}");
            }
            other => panic!("wrong error {other:?}"),
        }
        assert!(e.to_string().contains(&format!("cluster.toml:{line}: field `interconnect.nic_gbit_s`")), "{e}");
    }

    #[test]
    fn wrong_type_and_missing_field_are_located() {
        let text = a100_text().replace("gpus_per_node = 8", "gpus_per_node = \"eight\"");
        let e = parse_hardware(&text, "x.toml").unwrap_err();
        assert!(matches!(&e, HardwareError::Parse { field: Some(f), .. } if f == "interconnect.gpus_per_node"), "{e:?}");
        let text: String = a100_text().lines().filter(|l| !l.starts_with("nvlink_efficiency")).map(|l| format!("{l}\n")).collect();
        let e = parse_hardware(&text, "x.toml").unwrap_err();
        assert!(e.to_string().contains("nvlink_efficiency"), "{e}");
        let text = a100_text().replace("capacity_mib = 40960", "capacity_mib = -1");
        let e = parse_hardware(&text, "x.toml").unwrap_err();
        assert!(matches!(&e, HardwareError::Parse { field: Some(f), .. } if f == "memory.capacity_mib"), "{e:?}");
    }

    #[test]
    fn missing_file_names_the_file() {
        let e = load_hardware("/nonexistent/dir/gpu.toml").unwrap_err();
        assert!(matches!(e, HardwareError::Io { .. }));
        assert!(e.to_string().contains("/nonexistent/dir/gpu.toml"), "{e}");
    }

    #[test]
    fn user_file_by_path_and_price_override() {
        let dir = std::env::temp_dir().join(format!("seerscale-hw-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("mycluster.toml");
        std::fs::write(&p, a100_text().replace("id = \"a100-40gb\"", "id = \"my-a100\"")).unwrap();
        let hw = load_hardware(p.to_str().unwrap()).unwrap();
        assert_eq!(hw.id, "my-a100");
        let cheap = hw.with_price(1.25).unwrap();
        assert_eq!(cheap.price_per_gpu_hour(), 1.25);
        let e = cheap.with_price(-3.0).unwrap_err().to_string();
        assert!(e.contains("price_usd_per_gpu_hour"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn profile_round_trips_through_toml_and_json() {
        use crate::collectives::{BusyCollective, Collective, CollectiveFit, CollectiveProfile, Scope};
        use crate::compute::OpKind;
        let mut p = HardwareProfile::from_spec(builtin_hardware("cpu-local").unwrap());
        p.measured = Measured {
            source: Some("test".into()),
            threads_per_rank: Some(1),
            host_cores: Some(2),
            memory_bandwidth: Some(Bandwidth(12.5e9)),
            kernel_overhead: Some(Seconds(8e-6)),
            op_throughput: vec![OpThroughput { kind: OpKind::Conv, dtype: DType::Fp32, rate: FlopRate(0.11e12) }],
            collectives: CollectiveProfile {
                fits: vec![CollectiveFit { collective: Collective::AllGather, scope: Scope::IntraNode, alpha: Seconds(30e-6), bus_bandwidth: Bandwidth(3e9) }],
                busy: vec![BusyCollective { collective: Collective::AllGather, world_size: 2, extra: Seconds(20e-6), skew: 0.3 }],
            },
            op_fixed: vec![OpFixed { kind: OpKind::Conv, forward: Seconds(20e-6), backward: Seconds(40e-6) }],
            host: Some(HostCosts::new(Seconds(3e-6), Seconds(4e-6), Seconds(9e-6), Seconds(30e-6))),
            block_times: vec![BlockTime {
                key: "00ff".into(),
                label: "tiny s1.b0".into(),
                forward: Seconds(1e-3),
                forward_no_grad: Seconds(0.8e-3),
                backward: Seconds(2.5e-3),
                backward_peak_bytes: Some(123_456),
            }],
            speed_probe: Some(Seconds(1.5e-3)),
            loader: vec![LoaderTime { crops: "2x32+2x16".into(), image: Seconds(80e-6), data: Some("images".into()) }],
        };
        let t = p.to_toml_string().unwrap();
        let back = HardwareProfile::parse_toml(&t, "profile.toml").unwrap();
        assert_eq!(back.measured.block_times.len(), 1);
        assert_eq!(back.measured.block_times[0].backward_peak_bytes, Some(123_456));
        assert_eq!(back.measured.speed_probe, Some(Seconds(1.5e-3)));
        let slow = t.replace("speed_probe_us = 1500.0", "speed_probe_us = 0.0");
        assert_ne!(slow, t, "{t}");
        let e = HardwareProfile::parse_toml(&slow, "profile.toml").unwrap_err();
        assert!(e.to_string().contains("measured.speed_probe_us"), "{e}");

        // The same measurements on a host twice as slow: compute times
        // double, rates halve, the transport's fits stay.
        let s2 = p.measured.slowed_by(2.0);
        assert_eq!(s2.op_throughput[0].rate, FlopRate(0.055e12));
        assert_eq!(s2.memory_bandwidth, Some(Bandwidth(6.25e9)));
        assert_eq!(s2.kernel_overhead, Some(Seconds(16e-6)));
        assert_eq!((s2.op_fixed[0].forward, s2.op_fixed[0].backward), (Seconds(40e-6), Seconds(80e-6)));
        assert_eq!(s2.block_times[0].backward, Seconds(5e-3));
        assert_eq!(s2.block_times[0].forward_no_grad, Seconds(1.6e-3));
        assert_eq!(s2.host.unwrap().backward_call, Seconds(60e-6));
        assert_eq!(s2.collectives.busy[0].extra, Seconds(40e-6));
        assert_eq!(s2.collectives.fits, p.measured.collectives.fits);
        assert_eq!(s2.speed_probe, Some(Seconds(3e-3)));
        assert_eq!(s2.loader[0].image, Seconds(160e-6));
        assert_eq!(back.measured.loader, p.measured.loader);
        let e = HardwareProfile::parse_toml(&t.replace("image_us = 80.0", "image_us = -80.0"), "profile.toml").unwrap_err();
        assert!(e.to_string().contains("measured.loader.image_us"), "{e}");
        assert_eq!(s2.block_times[0].backward_peak_bytes, Some(123_456));
        // Nonsense factors leave the numbers alone.
        assert_eq!(p.measured.slowed_by(f64::NAN), p.measured);
        assert_eq!(p.measured.slowed_by(0.0), p.measured);
        assert!((back.measured.block_times[0].backward.0 - 2.5e-3).abs() < 1e-12);
        let neg = t.replace("backward_us = 2500.0", "backward_us = -1.0");
        assert_ne!(neg, t, "{t}");
        let e = HardwareProfile::parse_toml(&neg, "profile.toml").unwrap_err();
        assert!(e.to_string().contains("measured.block_times.backward_us"), "{e}");

        // The optimiser's per-shard costs: optional (older profiles lack
        // them), round-tripped, scaled with the host, checked by name.
        assert!(!t.contains("optimizer_"), "{t}");
        assert_eq!(back.measured.host, p.measured.host);
        let mut q = p.clone();
        q.measured.host = q.measured.host.map(|h| HostCosts { optimizer_norms_shard: Some(Seconds(10e-6)), optimizer_sgd_shard: Some(Seconds(20e-6)), ..h });
        let tq = q.to_toml_string().unwrap();
        assert!(tq.contains("optimizer_sgd_shard_us = 20.0") && !tq.contains("optimizer_adam"), "{tq}");
        let hq = HardwareProfile::parse_toml(&tq, "profile.toml").unwrap().measured.host.unwrap();
        assert_eq!((hq.optimizer_sgd_shard, hq.optimizer_adam_shard), (Some(Seconds(20e-6)), None));
        assert_eq!(q.measured.slowed_by(2.0).host.unwrap().optimizer_norms_shard, Some(Seconds(20e-6)));
        let bad = tq.replace("optimizer_norms_shard_us = 10.0", "optimizer_norms_shard_us = -3.0");
        assert_ne!(bad, tq);
        let e = HardwareProfile::parse_toml(&bad, "profile.toml").unwrap_err();
        assert!(e.to_string().contains("measured.host.optimizer_norms_shard_us"), "{e}");
        // The unused-leaf cost is optional too; the gradient add was called
        // `param_view_backward_us` before and still loads.
        assert!(t.contains("param_grad_us") && !t.contains("param_leaf_unused"), "{t}");
        let old = t.replace("param_grad_us", "param_view_backward_us");
        assert_eq!(HardwareProfile::parse_toml(&old, "old.toml").unwrap().measured.host, p.measured.host);
        let mut u = p.clone();
        u.measured.host = u.measured.host.map(|h| HostCosts { param_leaf_unused: Some(Seconds(0.5e-6)), ..h });
        let tu = u.to_toml_string().unwrap();
        assert!(tu.contains("param_leaf_unused_us = 0.5"), "{tu}");
        assert_eq!(HardwareProfile::parse_toml(&tu, "profile.toml").unwrap().measured.host, u.measured.host);
        assert_eq!(u.measured.slowed_by(2.0).host.unwrap().param_leaf_unused, Some(Seconds(1e-6)));
        let e = HardwareProfile::parse_toml(&tu.replace("param_leaf_unused_us = 0.5", "param_leaf_unused_us = -0.5"), "profile.toml").unwrap_err();
        assert!(e.to_string().contains("measured.host.param_leaf_unused_us"), "{e}");
        assert_eq!(back.hardware, p.hardware);
        assert_eq!(back.measured.collectives, p.measured.collectives);
        assert!((back.measured.memory_bandwidth.unwrap().0 - 12.5e9).abs() < 1e-3);
        let j = p.to_json_string().unwrap();
        let back = HardwareProfile::parse_json(&j, "profile.json").unwrap();
        assert_eq!(back.measured.op_throughput.len(), 1);
        // A bare spec file is also a valid profile with no measurements.
        let bare = HardwareProfile::parse_toml(a100_text(), "a.toml").unwrap();
        assert_eq!(bare.measured, Measured::default());
        // Errors inside a profile carry the table prefix.
        let bad = t.replace("memory_bandwidth_gb_s = 12.5", "memory_bandwidth_gb_s = -1.0");
        assert_ne!(bad, t, "{t}");
        let e = HardwareProfile::parse_toml(&bad, "profile.toml").unwrap_err();
        assert!(matches!(&e, HardwareError::Invalid { field, line: Some(_), .. } if field == "measured.memory_bandwidth_gb_s"), "{e:?}");
    }
}
