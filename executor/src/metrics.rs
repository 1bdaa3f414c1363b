//! Per-step metrics: every rank appends JSON lines to
//! `<out>/metrics.rank<r>.jsonl`; rank 0 also drives an indicatif progress
//! bar and prints the measured-vs-predicted summary at the end.

use cost_models::{Bytes, Seconds};
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

/// One line of the metrics file.
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
    /// Peak bytes allocated during the step on this rank (memstats).
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
}

/// JSON has no NaN: serde_json writes a diverged loss or norm as `null`;
/// read it back as NaN so a metrics file always reads its own output.
fn null_as_nan<'de, D: serde::Deserializer<'de>>(d: D) -> Result<f64, D::Error> {
    Ok(Option::<f64>::deserialize(d)?.unwrap_or(f64::NAN))
}

#[derive(Debug, thiserror::Error)]
#[error("metrics file {path}: {source}")]
pub struct MetricsError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

pub struct MetricsWriter {
    path: PathBuf,
    out: BufWriter<File>,
    bar: Option<ProgressBar>,
}

pub fn metrics_path(dir: &Path, rank: usize) -> PathBuf {
    dir.join(format!("metrics.rank{rank}.jsonl"))
}

impl MetricsWriter {
    /// Opens the rank's file. `resume_from: Some(s)`: a resumed run keeps
    /// the lines of steps before `s` (dropping any a failed attempt wrote
    /// after its last checkpoint) and appends; None: starts afresh. `bar`:
    /// show a progress bar from step `.0` to `.1` (rank 0 only).
    pub fn open(dir: &Path, rank: usize, resume_from: Option<u64>, bar: Option<(u64, u64)>) -> Result<MetricsWriter, MetricsError> {
        let path = metrics_path(dir, rank);
        let err = |source| MetricsError { path: path.clone(), source };
        std::fs::create_dir_all(dir).map_err(err)?;
        let kept: Vec<String> = match resume_from {
            Some(s) if path.exists() => std::fs::read_to_string(&path)
                .map_err(err)?
                .lines()
                .filter(|l| serde_json::from_str::<StepMetrics>(l).is_ok_and(|m| m.step < s))
                .map(str::to_string)
                .collect(),
            _ => Vec::new(),
        };
        let mut f = OpenOptions::new().create(true).write(true).truncate(true).open(&path).map_err(err)?;
        for l in &kept {
            writeln!(f, "{l}").map_err(err)?;
        }
        let bar = bar.map(|(start, total)| {
            let b = ProgressBar::new(total);
            b.set_style(
                ProgressStyle::with_template("{spinner} step {pos}/{len} [{bar:30}] {msg} ({elapsed}, eta {eta})")
                    .unwrap_or_else(|_| ProgressStyle::default_bar())
                    .progress_chars("=> "),
            );
            b.set_position(start);
            b
        });
        Ok(MetricsWriter { path, out: BufWriter::new(f), bar })
    }

    pub fn record(&mut self, m: &StepMetrics) -> Result<(), MetricsError> {
        let line = serde_json::to_string(m).map_err(|e| MetricsError { path: self.path.clone(), source: e.into() })?;
        writeln!(self.out, "{line}").and_then(|_| self.out.flush()).map_err(|source| MetricsError { path: self.path.clone(), source })?;
        if let Some(b) = &self.bar {
            b.set_position(m.step + 1);
            b.set_message(format!(
                "loss {:.4}  {:.1} img/s  peak {}{}",
                m.loss,
                m.images_per_s,
                Bytes(m.peak_memory_bytes),
                if m.skipped { "  (skipped: fp16 overflow)" } else { "" }
            ));
        }
        Ok(())
    }

    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
        }
    }
}

/// Reads a metrics file back (tests, validation against the planner).
pub fn read_metrics(path: &Path) -> Result<Vec<StepMetrics>, MetricsError> {
    let text = std::fs::read_to_string(path).map_err(|source| MetricsError { path: path.to_path_buf(), source })?;
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .enumerate()
        .map(|(i, l)| {
            serde_json::from_str(l).map_err(|e| MetricsError {
                path: path.to_path_buf(),
                source: std::io::Error::new(std::io::ErrorKind::InvalidData, format!("line {}: {e}", i + 1)),
            })
        })
        .collect()
}

/// What a run measured, to set against the plan's predictions.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct MeasuredSummary {
    pub steps: u64,
    /// Highest per-step peak over the run (this rank).
    pub peak_memory: Bytes,
    /// Median step time, excluding the first (warm-up) step when possible.
    pub step_time: Seconds,
    pub images_per_s: f64,
    pub final_loss: f64,
}

pub fn summarize(ms: &[StepMetrics]) -> Option<MeasuredSummary> {
    let last = ms.last()?;
    let mut times: Vec<f64> = ms.iter().skip(usize::from(ms.len() > 1)).map(|m| m.step_time_s).collect();
    times.sort_by(|a, b| a.total_cmp(b));
    let median = times[times.len() / 2];
    let mut ips: Vec<f64> = ms.iter().skip(usize::from(ms.len() > 1)).map(|m| m.images_per_s).collect();
    ips.sort_by(|a, b| a.total_cmp(b));
    Some(MeasuredSummary {
        steps: ms.len() as u64,
        peak_memory: Bytes(ms.iter().map(|m| m.peak_memory_bytes).max().unwrap_or(0)),
        step_time: Seconds(median),
        images_per_s: ips[ips.len() / 2],
        final_loss: last.loss,
    })
}

/// The end-of-run table: measured vs predicted.
pub fn comparison_table(measured: &MeasuredSummary, predicted_peak: Option<Bytes>, predicted_step: Option<Seconds>) -> String {
    let rel = |m: f64, p: f64| if p > 0.0 { format!("{:+.1}%", (m - p) / p * 100.0) } else { "-".into() };
    let mut s = String::new();
    s.push_str(&format!("{:<18} {:>14} {:>14} {:>9}\n", "", "measured", "predicted", "error"));
    let (pp, pe) = match predicted_peak {
        Some(p) => (p.to_string(), rel(measured.peak_memory.0 as f64, p.0 as f64)),
        None => ("-".into(), "-".into()),
    };
    s.push_str(&format!("{:<18} {:>14} {:>14} {:>9}\n", "peak memory/rank", measured.peak_memory.to_string(), pp, pe));
    let (tp, te) = match predicted_step {
        Some(p) => (p.to_string(), rel(measured.step_time.0, p.0)),
        None => ("-".into(), "-".into()),
    };
    s.push_str(&format!("{:<18} {:>14} {:>14} {:>9}\n", "step time", measured.step_time.to_string(), tp, te));
    s.push_str(&format!("{:<18} {:>14.1}\n", "images/s", measured.images_per_s));
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_diverged_step_round_trips_through_its_own_file() {
        let m = StepMetrics {
            rank: 1,
            step: 3,
            loss: f64::NAN,
            lr: 0.1,
            step_time_s: 0.5,
            images_per_s: 32.0,
            peak_memory_bytes: 1 << 20,
            comm_time_s: 0.01,
            data_wait_s: 0.0,
            loss_scale: 1.0,
            skipped: true,
            grad_norm: f64::NAN,
            sync_bn: true,
        };
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
}
