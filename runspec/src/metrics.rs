//! The metrics record each rank writes per step (`metrics.rank<r>.jsonl`),
//! its typed reader, and the one summary of a run both `train` (its closing
//! table) and `validate` (its report) use, so they report the same numbers
//! for the same run.

use cost_models::stats::median;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};

/// Steps dropped from a run's summary by default: the first steps allocate
/// the optimiser state and warm caches and the autotuner.
pub const DEFAULT_WARMUP: u64 = 3;

/// One line of a metrics file.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StepMetrics {
    pub rank: usize,
    pub step: u64,
    /// Global SwAV loss (sum of the ranks' terms).
    #[serde(deserialize_with = "null_as_nan")]
    pub loss: f64,
    pub lr: f64,
    pub step_time_s: f64,
    /// Global images per second (all ranks).
    pub images_per_s: f64,
    /// Peak bytes allocated during the step on this rank.
    pub peak_memory_bytes: u64,
    /// Time this rank was blocked in collectives during the step.
    pub comm_time_s: f64,
    /// Time this rank waited for its batch (data pipeline falling behind).
    #[serde(default)]
    pub data_wait_s: f64,
    pub loss_scale: f64,
    /// fp16 overflow: the optimiser step was skipped.
    pub skipped: bool,
    #[serde(deserialize_with = "null_as_nan")]
    pub grad_norm: f64,
    /// BN statistics were synchronized over all ranks (SyncBN) rather than
    /// per rank; files from before the option read as per rank.
    #[serde(default)]
    pub sync_bn: bool,
    /// Image files this rank's loader has found unreadable (and skipped)
    /// since the run started; 0 in files from before it was recorded.
    #[serde(default)]
    pub skipped_images: u64,
    /// ATen operators this rank dispatched during the step (nested ones
    /// included, as torch.profiler counts them); 0 in older files.
    #[serde(default)]
    pub aten_ops: u64,
    /// Times this rank's host waited for the device during the step (value
    /// read-backs and synchronisations; on a CPU run, where it would wait);
    /// 0 in older files.
    #[serde(default)]
    pub host_syncs: u64,
    /// This rank's process resident memory after the step (host RAM: the
    /// loader's buffers, decoded images, libtorch); 0 where the OS does
    /// not say or in older files.
    #[serde(default)]
    pub host_rss_bytes: u64,
}

/// JSON has no NaN: serde_json writes a diverged loss or norm as `null`;
/// read it back as NaN so a metrics file always reads its own output.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

/// A metrics file that cannot be read, or a line of it that is not a record.
#[derive(Debug, thiserror::Error)]
#[error("metrics file {}: {source}", path.display())]
pub struct MetricsError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// Where rank `rank` of a run writing into `dir` keeps its metrics.
pub fn metrics_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("metrics.rank{rank}.jsonl"))
}

/// Reads a metrics file back; a bad line is an error naming its number.
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>, MetricsError> {
    let text = std::fs::read_to_string(path).map_err(|source| MetricsError { path: path.to_path_buf(), source })?;
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| MetricsError {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("line {}: {e}", i + 1)),
            })
        })
        .collect()
}

/// Every rank's records of a run of `world` ranks writing into `dir`.
pub fn read_run(dir: &Path, world: usize) -> Result<Vec<StepMetrics>, MetricsError> {
    let mut all = Vec::new();
    for r in 0..world {
        all.extend(read_metrics(&metrics_path(dir, r))?);
    }
    Ok(all)
}

/// What a run measured, steady state only.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Measured {
    pub ranks: usize,
    /// Steady-state steps used (after warm-up).
    pub steps: usize,
    /// Max over ranks and steady-state steps.
    pub peak_memory_bytes: u64,
    /// Min over ranks of their steady-state max (shows rank spread and
    /// step-to-step noise).
    pub peak_memory_min_rank_bytes: u64,
    /// Median over steady-state steps of the slowest rank's step time.
    pub step_time_s: f64,
    /// Median over steady-state steps of the mean over ranks of the time
    /// blocked in collectives.
    pub comm_time_s: f64,
    /// Each run's own `step_time_s`, in the order they ran (one entry per
    /// run that measured something).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub run_step_times_s: Vec<f64>,
}

/// The steady-state summary of a run's records (any ranks, any order):
/// steps `0..warmup` are dropped (if nothing is left, the last step is
/// used); a step takes its slowest rank.
pub fn summarize(samples: &[StepMetrics], warmup: u64) -> Option<Measured> {
    if samples.is_empty() {
        return None;
    }
    let last = samples.iter().map(|s| s.step).max()?;
    let from = if last >= warmup { warmup } else { last };
    let steady: Vec<&StepMetrics> = samples.iter().filter(|s| s.step >= from).collect();
    let mut ranks: Vec<usize> = steady.iter().map(|s| s.rank).collect();
    ranks.sort_unstable();
    ranks.dedup();
    let mut steps: Vec<u64> = steady.iter().map(|s| s.step).collect();
    steps.sort_unstable();
    steps.dedup();
    let per_rank_max = |r: usize| steady.iter().filter(|s| s.rank == r).map(|s| s.peak_memory_bytes).max().unwrap_or(0);
    let at = |st: u64| steady.iter().filter(move |s| s.step == st);
    let times: Vec<f64> = steps.iter().map(|&st| at(st).map(|s| s.step_time_s).fold(0.0, f64::max)).collect();
    let comms: Vec<f64> = steps
        .iter()
        .map(|&st| {
            let v: Vec<f64> = at(st).map(|s| s.comm_time_s).collect();
            v.iter().sum::<f64>() / v.len().max(1) as f64
        })
        .collect();
    Some(Measured {
        ranks: ranks.len(),
        steps: steps.len(),
        peak_memory_bytes: ranks.iter().map(|&r| per_rank_max(r)).max().unwrap_or(0),
        peak_memory_min_rank_bytes: ranks.iter().map(|&r| per_rank_max(r)).min().unwrap_or(0),
        step_time_s: median(times.clone()),
        comm_time_s: median(comms),
        run_step_times_s: vec![median(times)],
    })
}

/// One measurement from several runs of the same variant: the worst peak
/// (as within one run: max over ranks and steps), the median of the runs'
/// step and communication times. None when no run measured anything.
pub fn combine_runs(runs: &[Measured]) -> Option<Measured> {
    let first = runs.first()?;
    Some(Measured {
        ranks: first.ranks,
        steps: runs.iter().map(|m| m.steps).sum(),
        peak_memory_bytes: runs.iter().map(|m| m.peak_memory_bytes).max()?,
        peak_memory_min_rank_bytes: runs.iter().map(|m| m.peak_memory_min_rank_bytes).min()?,
        step_time_s: median(runs.iter().map(|m| m.step_time_s).collect()),
        comm_time_s: median(runs.iter().map(|m| m.comm_time_s).collect()),
        run_step_times_s: runs.iter().map(|m| m.step_time_s).collect(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample(rank: usize, step: u64, peak: u64, t: f64) -> StepMetrics {
        StepMetrics {
            rank,
            step,
            loss: 1.0,
            lr: 0.1,
            step_time_s: t,
            images_per_s: 1.0 / t,
            peak_memory_bytes: peak,
            comm_time_s: t / 10.0,
            data_wait_s: 0.0,
            loss_scale: 1.0,
            skipped: false,
            grad_norm: 1.0,
            sync_bn: false,
            skipped_images: 0,
            aten_ops: 0,
            host_syncs: 0,
            host_rss_bytes: 0,
        }
    }

    #[test]
    fn summary_drops_warmup_and_takes_max_over_ranks() {
        let s = vec![
            sample(0, 0, 900, 5.0),
            sample(1, 0, 900, 5.0),
            sample(0, 1, 100, 1.0),
            sample(1, 1, 120, 2.0),
            sample(0, 2, 110, 1.0),
            sample(1, 2, 100, 4.0),
            sample(0, 3, 100, 1.0),
            sample(1, 3, 100, 3.0),
        ];
        let m = summarize(&s, 1).unwrap();
        assert_eq!((m.ranks, m.steps, m.peak_memory_bytes, m.peak_memory_min_rank_bytes), (2, 3, 120, 110));
        assert_eq!(m.step_time_s, 3.0);
        assert!((m.comm_time_s - 0.2).abs() < 1e-12);
        // Only warm-up steps: the last one is used.
        let m = summarize(&s[..2], 1).unwrap();
        assert_eq!(m.peak_memory_bytes, 900);
        assert!(summarize(&[], 1).is_none());
    }

    #[test]
    fn runs_combine_into_the_worst_peak_and_median_times() {
        let run = |peak: u64, min: u64, t: f64, c: f64| Measured {
            ranks: 2,
            steps: 10,
            peak_memory_bytes: peak,
            peak_memory_min_rank_bytes: min,
            step_time_s: t,
            comm_time_s: c,
            run_step_times_s: vec![t],
        };
        let m = combine_runs(&[run(100, 90, 0.30, 0.02), run(104, 95, 0.10, 0.01), run(101, 88, 0.12, 0.05)]).unwrap();
        assert_eq!((m.peak_memory_bytes, m.peak_memory_min_rank_bytes, m.steps), (104, 88, 30));
        assert_eq!((m.step_time_s, m.comm_time_s), (0.12, 0.02));
        assert_eq!(m.run_step_times_s, vec![0.30, 0.10, 0.12]);
        assert!(combine_runs(&[]).is_none());
    }

    #[test]
    fn a_diverged_step_round_trips_through_its_own_file() {
        let m = StepMetrics { loss: f64::NAN, grad_norm: f64::NAN, skipped: true, sync_bn: true, ..sample(1, 3, 1 << 20, 0.5) };
        let line = serde_json::to_string(&m).unwrap();
        assert!(line.contains("\"loss\":null"), "{line}");
        let back: StepMetrics = serde_json::from_str(&line).unwrap();
        assert!(back.loss.is_nan() && back.grad_norm.is_nan());
        assert_eq!(back.step, 3);
        assert!(back.sync_bn);
        // Lines written before SyncBN existed still read (per-rank BN).
        let old = line.replace(",\"sync_bn\":true", "");
        assert!(!old.contains("sync_bn"), "{old}");
        assert!(!serde_json::from_str::<StepMetrics>(&old).unwrap().sync_bn);
    }

    #[test]
    fn a_bad_line_is_named_by_its_number() {
        let dir = std::env::temp_dir().join(format!("runspec-metrics-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = metrics_path(&dir, 0);
        let good = serde_json::to_string(&sample(0, 0, 1, 1.0)).unwrap();
        std::fs::write(&path, format!("{good}\n\n{{\"rank\": 0}}\n")).unwrap();
        let e = read_metrics(&path).unwrap_err().to_string();
        assert!(e.contains("line 3") && e.contains("metrics.rank0.jsonl"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }
}
