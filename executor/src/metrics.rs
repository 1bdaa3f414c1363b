//! Per-step metrics: every rank appends JSON lines to
//! `<out>/metrics.rank<r>.jsonl`; rank 0 also drives an indicatif progress
//! bar and prints the measured-vs-predicted summary at the end.

use cost_models::{Bytes, Seconds};
use indicatif::{ProgressBar, ProgressStyle};
use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

pub use runspec::metrics::{metrics_path, read_metrics, read_run, summarize, Measured, MetricsError, StepMetrics, DEFAULT_WARMUP};

pub struct MetricsWriter {
    path: PathBuf,
    out: BufWriter<File>,
    bar: Option<ProgressBar>,
    /// Without a terminal (a SLURM log): a progress line every so often.
    lines: Option<Lines>,
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
        let bar_range = bar;
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
        let lines = match &bar {
            Some(b) if b.is_hidden() => Some(Lines { every: total_of(bar_range) / 20, last: std::time::Instant::now(), total: total_of(bar_range) }),
            _ => None,
        };
        Ok(MetricsWriter { path, out: BufWriter::new(f), bar, lines })
    }

    pub fn record(&mut self, m: &StepMetrics) -> Result<(), MetricsError> {
        let line = serde_json::to_string(m).map_err(|e| MetricsError { path: self.path.clone(), source: e.into() })?;
        writeln!(self.out, "{line}").and_then(|_| self.out.flush()).map_err(|source| MetricsError { path: self.path.clone(), source })?;
        if let Some(l) = &mut self.lines {
            let done = m.step + 1;
            if done == 1 || done == l.total || (l.every > 0 && done.is_multiple_of(l.every)) || l.last.elapsed() >= std::time::Duration::from_secs(30) {
                l.last = std::time::Instant::now();
                println!(
                    "step {done}/{}: loss {:.4}, {:.1} img/s, {:.1} ms/step, peak {}{}",
                    l.total,
                    m.loss,
                    m.images_per_s,
                    m.step_time_s * 1e3,
                    Bytes(m.peak_memory_bytes),
                    if m.skipped { " (skipped: fp16 overflow)" } else { "" }
                );
            }
        }
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

    /// Leaves the bar's last state on screen and ends its line, so that
    /// what is printed next starts on a line of its own.
    pub fn finish(&mut self) {
        if let Some(b) = self.bar.take() {
            b.finish();
            if !b.is_hidden() {
                eprintln!();
            }
        }
    }
}

/// Progress as plain lines: about 20 per run, and at least every 30 s.
struct Lines {
    every: u64,
    last: std::time::Instant,
    total: u64,
}

fn total_of(bar: Option<(u64, u64)>) -> u64 {
    bar.map_or(0, |(_, total)| total)
}

/// What a run measured, to set against the plan's predictions: the
/// steady-state summary `validate` uses too, and the loss at both ends.
#[derive(Clone, Debug, PartialEq)]
pub struct RunSummary {
    pub measured: Measured,
    /// Global images per second at the summary's step time.
    pub images_per_s: f64,
    pub first_loss: f64,
    pub last_loss: f64,
}

/// Summarises a run from every rank's records (`all`) and its global
/// images per step: the same steady state ([`DEFAULT_WARMUP`] steps
/// dropped, the slowest rank per step) as `seerscale validate` reports.
pub(crate) fn summarize_run(all: &[StepMetrics], global_images: f64) -> Option<RunSummary> {
    let measured = summarize(all, DEFAULT_WARMUP)?;
    let by_step = |first: bool| {
        let step = if first { all.iter().map(|m| m.step).min() } else { all.iter().map(|m| m.step).max() }?;
        all.iter().find(|m| m.step == step).map(|m| m.loss)
    };
    Some(RunSummary {
        images_per_s: if measured.step_time_s > 0.0 { global_images / measured.step_time_s } else { 0.0 },
        first_loss: by_step(true)?,
        last_loss: by_step(false)?,
        measured,
    })
}

/// What the plan predicted, for the end-of-run table.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PlanPrediction {
    /// The allocator's peak the plan predicts per rank.
    pub peak: Option<Bytes>,
    pub step_time: Option<Seconds>,
    /// Where the measured step time is expected: the plan's band.
    pub step_range: Option<(Seconds, Seconds)>,
    /// Where the band comes from, or why there is none (a CPU plan).
    pub basis: Option<String>,
}

impl PlanPrediction {
    pub fn of(plan: &runspec::plan::Plan) -> PlanPrediction {
        let p = &plan.predicted;
        PlanPrediction {
            peak: Some(Bytes(p.allocated_peak_bytes())),
            step_time: Some(Seconds(p.step_time_s)),
            step_range: p.step_time_range_s.map(|[lo, hi]| (Seconds(lo), Seconds(hi))),
            basis: p.range_source.clone(),
        }
    }
}

/// The end-of-run table: measured vs predicted, the step time's band and
/// whether the measurement fell in it, and what the prediction rests on.
pub(crate) fn comparison_table(s: &RunSummary, predicted: &PlanPrediction) -> String {
    let m = &s.measured;
    let rel = |m: f64, p: f64| if p > 0.0 { format!("{:+.1}%", (m - p) / p * 100.0) } else { "-".into() };
    let mut t = String::new();
    t.push_str(&format!("{:<18} {:>14} {:>14} {:>9}\n", "", "measured", "predicted", "error"));
    let (pp, pe) = match predicted.peak {
        Some(p) => (p.to_string(), rel(m.peak_memory_bytes as f64, p.0 as f64)),
        None => ("-".into(), "-".into()),
    };
    t.push_str(&format!("{:<18} {:>14} {:>14} {:>9}\n", "peak memory/rank", Bytes(m.peak_memory_bytes).to_string(), pp, pe));
    let (tp, te) = match predicted.step_time {
        Some(p) => (p.to_string(), rel(m.step_time_s, p.0)),
        None => ("-".into(), "-".into()),
    };
    t.push_str(&format!("{:<18} {:>14} {:>14} {:>9}\n", "step time", Seconds(m.step_time_s).to_string(), tp, te));
    if let Some((lo, hi)) = predicted.step_range {
        let inside = if (lo.0..=hi.0).contains(&m.step_time_s) { "inside" } else { "OUTSIDE" };
        t.push_str(&format!("{:<18} {:>14} {:>14} {:>9}\n", "  band", "", format!("{lo}-{hi}"), inside));
    }
    t.push_str(&format!("{:<18} {:>14.1}\n", "images/s", s.images_per_s));
    t.push_str(&format!("{:<18} {:>14.4} -> {:.4}\n", "loss", s.first_loss, s.last_loss));
    if let Some(basis) = &predicted.basis {
        let what = if predicted.step_range.is_some() { "band: measured/predicted as docs/accuracy-gpu.md finds it for" } else { "step time:" };
        t.push_str(&format!("{what} {basis}\n"));
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn summary(step_s: f64) -> RunSummary {
        RunSummary {
            measured: Measured {
                ranks: 2,
                steps: 10,
                peak_memory_bytes: 1 << 20,
                peak_memory_min_rank_bytes: 1 << 20,
                step_time_s: step_s,
                comm_time_s: 0.0,
                run_step_times_s: Vec::new(),
            },
            images_per_s: 100.0,
            first_loss: 5.0,
            last_loss: 4.0,
        }
    }

    /// A GPU plan's band is a row that says whether the measured step fell
    /// in it; a CPU plan, which has none, says how to read its step time.
    #[test]
    fn the_table_shows_the_band_or_says_why_there_is_none() {
        let gpu = PlanPrediction {
            peak: Some(Bytes(1 << 20)),
            step_time: Some(Seconds(1.0)),
            step_range: Some((Seconds(0.9), Seconds(1.2))),
            basis: Some("compute 0.90-1.12x (kernel model on a family it was fitted on)".into()),
        };
        let inside = comparison_table(&summary(1.1), &gpu);
        assert!(inside.lines().any(|l| l.trim_start().starts_with("band") && l.trim_end().ends_with("inside")), "{inside}");
        assert!(inside.contains("band: measured/predicted as docs/accuracy-gpu.md finds it for compute 0.90-1.12x"), "{inside}");
        let outside = comparison_table(&summary(1.5), &gpu);
        assert!(outside.lines().any(|l| l.trim_start().starts_with("band") && l.trim_end().ends_with("OUTSIDE")), "{outside}");
        let cpu = PlanPrediction { step_range: None, basis: Some("no band on a CPU; ... a floor".into()), ..gpu };
        let t = comparison_table(&summary(1.5), &cpu);
        assert!(!t.lines().any(|l| l.trim_start().starts_with("band")) && t.contains("step time: no band on a CPU"), "{t}");
        assert!(!comparison_table(&summary(1.0), &PlanPrediction::default()).contains("band"));
    }
}
