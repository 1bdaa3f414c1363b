//! `seerscale data pack` (a folder or file list as WebDataset tar shards)
//! and `seerscale data bench` (the loader's images/s per thread, and the
//! loader cores per GPU a plan needs).

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};
use executor::augment::{AugmentConfig, CropSpec};
use executor::data::{Dataset, ImageFolder};
use executor::data_bench::{bench, BenchRow};
use executor::memstats::peak_rss_bytes;
use std::path::PathBuf;
use std::time::Duration;

#[derive(Args)]
pub struct DataArgs {
    #[command(subcommand)]
    pub command: DataCommand,
}

#[derive(Subcommand)]
pub enum DataCommand {
    /// Write an image folder or .txt file list as tar shards with an index.json of counts.
    Pack(PackArgs),
    /// Write index.json (samples per shard) beside existing tar shards, so runs open them without reading them.
    Index(IndexArgs),
    /// Decoded and multi-cropped images/s per thread; with --plan, the loader cores per GPU it needs.
    Bench(BenchArgs),
}

#[derive(Args)]
pub struct IndexArgs {
    /// Tar shards in one folder: a path, glob or braces (`shards/part-{000000..009999}.tar`).
    #[arg(long)]
    pub data: String,
}

#[derive(Args)]
pub struct PackArgs {
    /// Image folder (recursive) or .txt file list.
    #[arg(long)]
    pub data: PathBuf,
    /// A new or empty folder for the shards and index.json.
    #[arg(long)]
    pub out: PathBuf,
    /// Target shard size: bytes, or with KiB/MiB/GiB (img2dataset's shards are about 1 GiB).
    #[arg(long, default_value = "1GiB")]
    pub shard_size: String,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Image folder, .txt list or tar shards, as `train --data` (default: the bundled photos).
    #[arg(long)]
    pub data: Option<PathBuf>,
    /// Crop groups, largest first: `2x160,4x96` is SEER's (the first group
    /// takes scale 0.14-1, the others 0.05-0.14, as SwAV's multi-crop).
    #[arg(long, default_value = "2x160,4x96")]
    pub crops: String,
    /// Thread counts to measure, e.g. `1,4,16`.
    #[arg(long, default_value = "1", value_delimiter = ',')]
    pub threads: Vec<usize>,
    /// Samples read into memory first (the rates leave the disk out).
    #[arg(long, default_value_t = 64)]
    pub images: usize,
    /// Seconds each measurement runs for at least.
    #[arg(long, default_value_t = 2.0)]
    pub seconds: f64,
    /// A plan file: how many loader cores per GPU keep its predicted step fed.
    #[arg(long)]
    pub plan: Option<PathBuf>,
    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &DataArgs) -> Result<()> {
    match &a.command {
        DataCommand::Pack(p) => pack(p),
        DataCommand::Index(i) => index(i),
        DataCommand::Bench(b) => run_bench(b),
    }
}

/// `1GiB`, `512MiB`, `64KiB`, `1000000`.
pub fn parse_size(s: &str) -> Result<u64> {
    let t = s.trim();
    let (num, mult) = [("GiB", 1u64 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10), ("GB", 1_000_000_000), ("MB", 1_000_000), ("KB", 1000), ("B", 1)]
        .iter()
        .find_map(|(suffix, m)| t.strip_suffix(suffix).map(|n| (n.trim(), *m)))
        .unwrap_or((t, 1));
    let v: f64 = num.parse().with_context(|| format!("--shard-size `{s}`: expected a size such as 1GiB, 256MiB or 1000000"))?;
    if !(v.is_finite() && v > 0.0) {
        bail!("--shard-size `{s}` must be positive");
    }
    Ok((v * mult as f64) as u64)
}

/// `2x160,4x96`: groups with SwAV's scales (the first global, the rest local).
pub fn parse_crops(s: &str) -> Result<AugmentConfig> {
    let mut groups = Vec::new();
    for (i, part) in s.split(',').enumerate() {
        let (n, r) = part.trim().split_once('x').with_context(|| format!("--crops `{s}`: `{part}` is not COUNTxRESOLUTION (e.g. 2x160)"))?;
        let count: usize = n.trim().parse().with_context(|| format!("--crops `{s}`: `{n}` is not a count"))?;
        let resolution: u32 = r.trim().parse().with_context(|| format!("--crops `{s}`: `{r}` is not a resolution"))?;
        let scale = if i == 0 { (0.14, 1.0) } else { (0.05, 0.14) };
        groups.push(CropSpec { count, resolution, scale });
    }
    let cfg = AugmentConfig::with_crops(groups);
    cfg.validate().with_context(|| format!("--crops `{s}`"))?;
    Ok(cfg)
}

fn pack(a: &PackArgs) -> Result<()> {
    let size = parse_size(&a.shard_size)?;
    let report = executor::pack::pack(&a.data, &a.out, size)?;
    for p in report.skipped.iter().take(5) {
        eprintln!("warning: {} does not read as an image: left out", p.display());
    }
    if report.skipped.len() > 5 {
        eprintln!("warning: {} more files left out", report.skipped.len() - 5);
    }
    let bytes: u64 = report.index.shards.iter().map(|s| s.bytes).sum();
    println!(
        "wrote {} samples into {} shard(s) ({:.1} MiB) and {} under {}; train with --data {}",
        report.index.samples,
        report.index.shards.len(),
        bytes as f64 / (1u64 << 20) as f64,
        executor::shards::INDEX_FILE,
        a.out.display(),
        a.out.display()
    );
    Ok(())
}

/// Counts every shard's samples (from its headers) and writes the index
/// into the shards' folder.
fn index(a: &IndexArgs) -> Result<()> {
    use executor::shards::{IndexEntry, ShardIndex, ShardSet, INDEX_FILE};
    let set = ShardSet::open(&a.data).with_context(|| format!("--data {}", a.data))?;
    let dir = set.paths()[0].parent().map(std::path::Path::to_path_buf).unwrap_or_default();
    if let Some(other) = set.paths().iter().find(|p| p.parent() != Some(dir.as_path())) {
        bail!("--data {}: {} is not in {} (an index covers the shards of one folder)", a.data, other.display(), dir.display());
    }
    let mut entries = Vec::with_capacity(set.len());
    for (i, p) in set.paths().iter().enumerate() {
        let bytes = std::fs::metadata(p).with_context(|| p.display().to_string())?.len();
        entries.push(IndexEntry { file: set.name(i as u32), samples: set.counts()[i], bytes });
    }
    let index = ShardIndex::new(entries);
    index.write(&dir)?;
    println!("{} shards, {} samples: wrote {}", set.len(), index.samples, dir.join(INDEX_FILE).display());
    Ok(())
}

/// What a plan asks of the loader, against one measured rate per thread.
#[derive(serde::Serialize)]
struct PlanNeed {
    plan: String,
    images_per_gpu: usize,
    step_time_s: f64,
    loader_images_per_s_per_core: f64,
    images_per_gpu_per_s: f64,
    loader_cores_per_gpu: f64,
    cpu_cores_per_gpu: Option<f64>,
}

fn run_bench(a: &BenchArgs) -> Result<()> {
    let augment = parse_crops(&a.crops)?;
    if a.threads.is_empty() || a.threads.contains(&0) {
        bail!("--threads: every count must be at least 1");
    }
    if a.images == 0 {
        bail!("--images must be at least 1");
    }
    if !(a.seconds.is_finite() && a.seconds > 0.0) {
        bail!("--seconds must be positive");
    }
    let spec = a.data.clone().unwrap_or_else(ImageFolder::default_root);
    let data = Dataset::open(&spec).with_context(|| format!("--data {}", spec.display()))?;
    let samples = data.first_samples(a.images)?;
    let min = Duration::from_secs_f64(a.seconds);
    let rows: Vec<BenchRow> = a.threads.iter().map(|&t| bench(&samples, &augment, t, min)).collect();
    if rows.iter().all(|r| r.images_per_s == 0.0) {
        bail!("--data {}: none of the first {} samples decodes", spec.display(), samples.len());
    }
    let need = match &a.plan {
        None => None,
        Some(p) => {
            let plan = runspec::plan::Plan::load(p).with_context(|| format!("--plan {}", p.display()))?;
            let per_thread = rows.iter().find(|r| r.threads == 1).unwrap_or(&rows[0]).images_per_s_per_thread;
            let per_gpu = plan.batch_per_rank as f64 / plan.predicted.step_time_s;
            Some(PlanNeed {
                plan: p.display().to_string(),
                images_per_gpu: plan.batch_per_rank,
                step_time_s: plan.predicted.step_time_s,
                loader_images_per_s_per_core: per_thread,
                images_per_gpu_per_s: per_gpu,
                loader_cores_per_gpu: per_gpu / per_thread,
                cpu_cores_per_gpu: plan.hardware.host.as_ref().map(|h| h.cpu_cores_per_gpu),
            })
        }
    };
    let failed = rows.iter().map(|r| r.failed).max().unwrap_or(0);
    if a.json {
        let out = serde_json::json!({
            "data": data.describe(),
            "crops": a.crops,
            "samples": samples.len(),
            "failed": failed,
            "rows": rows,
            "images_per_s": rows.first().map(|r| r.images_per_s_per_thread),
            "peak_rss_bytes": peak_rss_bytes(),
            "plan": need,
        });
        println!("{}", serde_json::to_string_pretty(&out)?);
        return Ok(());
    }
    println!("{} ({} samples in memory, {} undecodable), crops {}:", data.describe(), samples.len(), failed, a.crops);
    println!("| threads | decoded images/s | multi-cropped images/s | per thread |");
    println!("|---|---|---|---|");
    for r in &rows {
        println!("| {} | {:.1} | {:.1} | {:.1} |", r.threads, r.decoded_per_s, r.images_per_s, r.images_per_s_per_thread);
    }
    if let Some(n) = need {
        let has = n.cpu_cores_per_gpu.map_or_else(|| "the plan's hardware does not say how many it has".to_string(), |c| format!("it has {c}"));
        println!(
            "{}: {} images per GPU every {:.3} s = {:.2} images/s per GPU; at {:.1} images/s per core that is {:.2} loader cores per GPU; {has}",
            n.plan, n.images_per_gpu, n.step_time_s, n.images_per_gpu_per_s, n.loader_images_per_s_per_core, n.loader_cores_per_gpu
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_and_crops_parse_or_say_why_not() {
        assert_eq!(parse_size("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_size("1.5 MiB").unwrap(), 3 << 19);
        assert_eq!(parse_size("4096").unwrap(), 4096);
        assert!(parse_size("big").unwrap_err().to_string().contains("--shard-size `big`"));
        assert!(parse_size("-1MiB").is_err());
        let c = parse_crops("2x224,6x96").unwrap();
        assert_eq!(c.num_crops(), 8);
        assert_eq!(c.crops[1].scale, (0.05, 0.14));
        assert!(parse_crops("2x160,4").unwrap_err().to_string().contains("COUNTxRESOLUTION"));
        assert!(format!("{:#}", parse_crops("1x160").unwrap_err()).contains("at least 2 crops"));
    }
}
