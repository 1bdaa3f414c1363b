//! `seerscale comm`: the planner's collective times on a cluster, laid out
//! as nccl-tests prints its measurements, so the two can be set side by side.

use anyhow::{bail, Context, Result};
use clap::{Args, ValueEnum};
use cost_models::collectives::{Collective, CollectiveModel};
use cost_models::hardware::load_profile;
use cost_models::nccl_tests::{bus_factor, format_rows, test_name, NcclRow};
use cost_models::topology::Topology;
use cost_models::Bytes;

#[derive(Args)]
pub struct CommArgs {
    /// GPU: catalog id or hardware/profile TOML (a profile's measured collectives are used).
    #[arg(long)]
    pub gpu: String,
    /// GPUs in the collective; more than a node's use the hierarchical model the planner plans with.
    #[arg(long)]
    pub gpus: usize,
    #[arg(long, value_enum, default_value = "all")]
    pub op: OpArg,
    /// Smallest and largest message, bytes (doubling in between, as nccl-tests' `-b 8 -e 8G -f 2`).
    #[arg(long, default_value_t = 8)]
    pub min_bytes: u64,
    #[arg(long, default_value_t = 8 << 30)]
    pub max_bytes: u64,
    /// Print JSON instead of tables.
    #[arg(long)]
    pub json: bool,
}

/// The collective; nccl-tests' spelling (`all_reduce`) is accepted too.
#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum OpArg {
    #[value(alias = "all_reduce")]
    AllReduce,
    #[value(alias = "all_gather")]
    AllGather,
    #[value(alias = "reduce_scatter")]
    ReduceScatter,
    All,
}

impl OpArg {
    fn ops(self) -> Vec<Collective> {
        match self {
            OpArg::AllReduce => vec![Collective::AllReduce],
            OpArg::AllGather => vec![Collective::AllGather],
            OpArg::ReduceScatter => vec![Collective::ReduceScatter],
            OpArg::All => vec![Collective::AllReduce, Collective::AllGather, Collective::ReduceScatter],
        }
    }
}

/// One predicted row.
#[derive(serde::Serialize)]
struct Row {
    op: &'static str,
    bytes: u64,
    time_us: f64,
    algbw_gb_s: f64,
    busbw_gb_s: f64,
    algorithm: &'static str,
}

pub fn run(a: &CommArgs) -> Result<()> {
    if a.gpus < 2 {
        bail!("--gpus {}: a collective needs at least 2", a.gpus);
    }
    if a.min_bytes == 0 || a.min_bytes > a.max_bytes {
        bail!("--min-bytes {} --max-bytes {}: need 1 <= min <= max", a.min_bytes, a.max_bytes);
    }
    let profile = load_profile(&a.gpu).with_context(|| format!("--gpu {}", a.gpu))?;
    let hw = &profile.hardware;
    let per_node = hw.interconnect.gpus_per_node;
    let nodes = a.gpus.div_ceil(per_node);
    let topo = Topology::build(hw, nodes).with_context(|| format!("{} GPUs of {}", a.gpus, hw.id))?;
    let ranks: Vec<usize> = (0..a.gpus).collect();
    let group = topo.group(&ranks)?;
    let model = CollectiveModel::new(profile.measured.collectives.clone());
    let mut rows = Vec::new();
    for op in a.op.ops() {
        let mut bytes = a.min_bytes;
        while bytes <= a.max_bytes {
            let c = model.cost(op, &group, Bytes(bytes));
            let algbw = bytes as f64 / c.time.0 / 1e9;
            rows.push((op, c.algorithm, NcclRow { bytes, time: c.time, algbw_gb_s: algbw, busbw_gb_s: algbw * bus_factor(op, a.gpus) }));
            bytes = bytes.saturating_mul(2);
        }
    }
    let layout = if nodes > 1 { format!("{nodes} nodes x {per_node}") } else { format!("one node of {per_node}") };
    let source = if profile.measured.collectives.fits.is_empty() { "the catalog's links".to_string() } else { format!("{}'s measured collectives", a.gpu) };
    if a.json {
        let out: Vec<Row> = rows
            .iter()
            .map(|(op, alg, r)| Row {
                op: test_name(*op).trim_end_matches("_perf"),
                bytes: r.bytes,
                time_us: r.time.0 * 1e6,
                algbw_gb_s: r.algbw_gb_s,
                busbw_gb_s: r.busbw_gb_s,
                algorithm: alg.name(),
            })
            .collect();
        println!("{}", serde_json::to_string_pretty(&serde_json::json!({ "gpu": hw.id, "gpus": a.gpus, "nodes": nodes, "source": source, "rows": out }))?);
        return Ok(());
    }
    for op in a.op.ops() {
        let mine: Vec<NcclRow> = rows.iter().filter(|r| r.0 == op).map(|r| r.2).collect();
        let algs: Vec<&str> = rows.iter().filter(|r| r.0 == op).map(|r| r.1.name()).collect();
        println!("# {} predicted: {} GPUs of {} ({layout}), from {source}", test_name(op), a.gpus, hw.name);
        for (i, line) in format_rows(&mine).into_iter().enumerate() {
            let alg = if i < 2 {
                if i == 0 {
                    "algorithm"
                } else {
                    ""
                }
            } else {
                algs[i - 2]
            };
            println!("{line}  {alg}");
        }
    }
    Ok(())
}
