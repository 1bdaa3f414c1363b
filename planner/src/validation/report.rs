//! Predicted against measured: one row per variant, the report and its
//! markdown.

use crate::simulator::PhaseTimes;
use cost_models::stats::median;
use cost_models::Bytes;
use runspec::metrics::Measured;
use runspec::plan::Plan;
use serde::{Deserialize, Serialize};

use super::Variant;

/// `(measured - predicted) / predicted`; None without a prediction.
pub(crate) fn rel_error(measured: f64, predicted: f64) -> Option<f64> {
    (predicted > 0.0 && measured.is_finite()).then(|| (measured - predicted) / predicted)
}

/// One variant's line of the report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Row {
    pub variant: String,
    /// The plan's peak as an allocated-bytes counter reads it (without the
    /// GPU fragmentation margin: [`runspec::plan::Predicted::allocated_peak_bytes`]).
    pub predicted_peak_bytes: u64,
    /// Predicted peak by category (bytes).
    pub predicted_breakdown: Vec<(String, u64)>,
    pub predicted_step_time_s: f64,
    pub predicted_comm_time_s: f64,
    pub predicted_exposed_comm_s: f64,
    pub measured: Option<Measured>,
    /// Why there is no (or only a partial) measurement.
    pub note: Option<String>,
    /// The simulator's compute time per phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_phases: Option<PhaseTimes>,
    /// Rank 0's phase timer (median over steady-state steps).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_phases: Option<PhaseTimes>,
    /// How much slower the host-speed probe ran around this variant's run
    /// (before and after it) than during the calibration.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub host_slowdown: Option<f64>,
    /// The step time predicted at the speed `host_slowdown` says the host
    /// had (a diagnostic: the probe does not track the ranks' speed well
    /// enough to be the prediction, see the README).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub probe_scaled_step_time_s: Option<f64>,
    /// The plan's model FLOPs utilisation (against the device's dense peak
    /// in the plan's compute dtype).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub predicted_mfu: Option<f64>,
}

impl Row {
    pub fn from_plan(variant: &Variant, plan: &Plan, measured: Option<Measured>, note: Option<String>) -> Row {
        let p = &plan.predicted;
        let frag = crate::memory::Category::Fragmentation.name();
        let mut breakdown: Vec<(String, u64)> = p.peak_breakdown.iter().filter(|(k, v)| **v > 0 && k.as_str() != frag).map(|(k, v)| (k.clone(), *v)).collect();
        breakdown.sort_by_key(|x| std::cmp::Reverse(x.1));
        Row {
            variant: variant.to_string(),
            predicted_peak_bytes: p.allocated_peak_bytes(),
            predicted_breakdown: breakdown,
            predicted_step_time_s: p.step_time_s,
            predicted_comm_time_s: p.comm_time_s,
            predicted_exposed_comm_s: p.exposed_comm_s,
            measured,
            note,
            predicted_phases: None,
            measured_phases: None,
            host_slowdown: None,
            probe_scaled_step_time_s: None,
            predicted_mfu: Some(p.mfu),
        }
    }
    /// The measured MFU: the same model FLOPs and peak as the prediction,
    /// over the measured step time.
    pub fn measured_mfu(&self) -> Option<f64> {
        let m = self.measured.as_ref()?;
        let mfu = self.predicted_mfu?;
        (m.step_time_s > 0.0).then(|| mfu * self.predicted_step_time_s / m.step_time_s)
    }
    pub fn memory_error(&self) -> Option<f64> {
        self.measured.as_ref().and_then(|m| rel_error(m.peak_memory_bytes as f64, self.predicted_peak_bytes as f64))
    }
    pub fn step_error(&self) -> Option<f64> {
        self.measured.as_ref().and_then(|m| rel_error(m.step_time_s, self.predicted_step_time_s))
    }
    /// The step-time error of the probe-scaled prediction.
    pub fn probe_scaled_step_error(&self) -> Option<f64> {
        let p = self.probe_scaled_step_time_s?;
        self.measured.as_ref().and_then(|m| rel_error(m.step_time_s, p))
    }
}

/// The whole report.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ValidationReport {
    pub recipe: String,
    pub hardware: String,
    /// Where the hardware numbers came from (catalog or a calibrated profile).
    pub hardware_source: String,
    pub steps: u64,
    pub warmup: u64,
    /// Runs per variant (`validate --repeats`), in interleaved rounds.
    #[serde(default = "one")]
    pub repeats: u64,
    pub memory_tolerance: f64,
    pub step_tolerance: f64,
    /// The command that regenerates the report.
    pub command: String,
    pub rows: Vec<Row>,
    /// Free-form notes printed under the table (how things were measured).
    pub notes: Vec<String>,
    /// The recipe the variants were derived from, in full (so a report can
    /// be re-predicted without the file it was read from).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub recipe_config: Option<runspec::recipe::Recipe>,
    /// The GPU and library versions the runs used (GPU runs).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device: Option<String>,
    /// For a report re-predicted from stored measurements (`validate
    /// --replay`): the command that measured them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub measured_with: Option<String>,
}

/// Memory figures in one unit for a whole table, chosen by the largest.
fn memory_unit(max_bytes: u64) -> (&'static str, f64) {
    match max_bytes {
        b if b >= 64 << 30 => ("GiB", (1u64 << 30) as f64),
        b if b >= 64 << 20 => ("MiB", (1u64 << 20) as f64),
        _ => ("KiB", 1024.0),
    }
}

fn one() -> u64 {
    1
}

impl ValidationReport {
    /// "k/n within ±t% (max |error| m%, median n%)" for one step-time error.
    fn step_summary(&self, error: fn(&Row) -> Option<f64>) -> String {
        let errs: Vec<f64> = self.rows.iter().filter_map(error).map(f64::abs).collect();
        if errs.is_empty() {
            return format!("0/{} measured", self.rows.len());
        }
        let within = errs.iter().filter(|e| **e <= self.step_tolerance).count();
        let max = errs.iter().copied().fold(0.0, f64::max);
        let mid = median(errs);
        format!("{within}/{} within ±{:.0}% (max |error| {:.0}%, median {:.0}%)", self.rows.len(), self.step_tolerance * 100.0, max * 100.0, mid * 100.0)
    }

    /// How repeatable the host makes a single run: for every run of a
    /// variant measured more than once, its deviation from the median of
    /// the variant's *other* runs. Returns (runs within the step tolerance,
    /// runs compared, median |deviation|); None with fewer than two runs
    /// anywhere. A perfect predictor cannot beat this spread, so it is the
    /// floor under the step-time errors.
    pub fn run_spread(&self) -> Option<(usize, usize, f64)> {
        let mut devs = Vec::new();
        for m in self.rows.iter().filter_map(|r| r.measured.as_ref()) {
            let runs = &m.run_step_times_s;
            if runs.len() < 2 {
                continue;
            }
            for (i, &t) in runs.iter().enumerate() {
                let others: Vec<f64> = runs.iter().enumerate().filter(|(j, _)| *j != i).map(|(_, &o)| o).collect();
                if let Some(d) = rel_error(t, median(others)) {
                    devs.push(d.abs());
                }
            }
        }
        if devs.is_empty() {
            return None;
        }
        let within = devs.iter().filter(|d| **d <= self.step_tolerance).count();
        Some((within, devs.len(), median(devs.clone())))
    }

    /// Median of the signed step-time errors: a systematic bias of the
    /// model shows here, host noise mostly cancels.
    pub fn step_bias(&self) -> Option<f64> {
        let errs: Vec<f64> = self.rows.iter().filter_map(Row::step_error).collect();
        (!errs.is_empty()).then(|| median(errs))
    }

    /// Variants whose measured peak is off by more than the tolerance, or
    /// that were not measured at all.
    pub fn memory_failures(&self) -> Vec<String> {
        self.rows
            .iter()
            .filter_map(|r| match r.memory_error() {
                Some(e) if e.abs() <= self.memory_tolerance => None,
                Some(e) => Some(format!(
                    "{}: peak {:+.1}% (measured {}, predicted {})",
                    r.variant,
                    e * 100.0,
                    Bytes(r.measured.as_ref().map_or(0, |m| m.peak_memory_bytes)),
                    Bytes(r.predicted_peak_bytes)
                )),
                None => Some(format!("{}: not measured ({})", r.variant, r.note.as_deref().unwrap_or("no metrics"))),
            })
            .collect()
    }

    pub fn markdown(&self, svg_name: Option<&str>) -> String {
        let pct = |e: Option<f64>| e.map_or("-".to_string(), |e| format!("{:+.1}%", e * 100.0));
        let largest =
            self.rows.iter().flat_map(|r| std::iter::once(r.predicted_peak_bytes).chain(r.measured.as_ref().map(|m| m.peak_memory_bytes))).max().unwrap_or(0);
        let (unit, per) = memory_unit(largest);
        let kib = |b: u64| format!("{:.1}", b as f64 / per);
        let ms = |s: f64| format!("{:.1}", s * 1e3);
        let mut s = String::new();
        s.push_str(&format!("# Validation: `{}` predicted vs measured\n\n", self.recipe));
        match &self.measured_with {
            Some(m) => s.push_str(&format!(
                "Regenerate the predictions (from the measurements stored in the report's JSON, with this planner) with:\n\n```sh\n{}\n```\n\nThe measurements were taken with:\n\n```sh\n{m}\n```\n\n",
                self.command
            )),
            None => s.push_str(&format!("Regenerate with:\n\n```sh\n{}\n```\n\n", self.command)),
        }
        if let Some(d) = &self.device {
            s.push_str(&format!("Device: {d}.\n\n"));
        }
        let runs = if self.repeats > 1 {
            format!(" Each variant ran {} times, in interleaved rounds (every variant once, then every variant again), so a slow spell of the host falls on different variants in different rounds; the peak is the max over the runs, step and comm times the median of the runs' own (`step runs` lists each run's).", self.repeats)
        } else {
            String::new()
        };
        s.push_str(&format!(
            "Hardware: {} ({}). Each variant is planned with fixed decisions, executed by `seerscale train` as real ranks for {} steps; steps 0..{} are warm-up and dropped. Measured peak = max over ranks and steady-state steps of the allocator's peak allocated bytes (the executor's counting allocator on CPU, the CUDA caching allocator's statistics on GPU); step time = median over steady-state steps of the slowest rank; comm = median time blocked in collectives (mean over ranks), compared with the simulator's *exposed* communication.{runs}\n\n",
            self.hardware, self.hardware_source, self.steps, self.warmup
        ));
        let within_mem = self.rows.iter().filter(|r| r.memory_error().is_some_and(|e| e.abs() <= self.memory_tolerance)).count();
        let mem_errs: Vec<f64> = self.rows.iter().filter_map(|r| r.memory_error()).map(f64::abs).collect();
        let maxf = |v: &[f64]| v.iter().copied().fold(0.0, f64::max);
        let memory = if mem_errs.is_empty() {
            format!("0/{} variants measured", self.rows.len())
        } else {
            format!("{within_mem}/{} variants within ±{:.0}% (max |error| {:.1}%)", self.rows.len(), self.memory_tolerance * 100.0, maxf(&mem_errs) * 100.0)
        };
        s.push_str(&format!("**Peak memory**: {memory}. **Step time**: {}", self.step_summary(Row::step_error)));
        if self.rows.iter().any(|r| r.probe_scaled_step_time_s.is_some()) {
            s.push_str(&format!(" (scaled by the host-speed probe's slowdown instead: {})", self.step_summary(Row::probe_scaled_step_error)));
        }
        s.push('.');
        if let Some(bias) = self.step_bias() {
            s.push_str(&format!(" Median signed step error {:+.0}% (measured slower than predicted when positive).", bias * 100.0));
        }
        if let Some((within, n, mid)) = self.run_spread() {
            s.push_str(&format!(
                " **Run-to-run spread** (the floor under any prediction): {within}/{n} single runs within ±{:.0}% of the median of their variant's other runs (median |deviation| {:.0}%).",
                self.step_tolerance * 100.0,
                mid * 100.0
            ));
        }
        s.push_str("\n\n");
        if let Some(svg) = svg_name {
            s.push_str(&format!("![predicted vs measured peak memory and step time]({svg})\n\n"));
        }
        let per_run = self.rows.iter().any(|r| r.measured.as_ref().is_some_and(|m| m.run_step_times_s.len() > 1));
        let mfu = self.device.is_some();
        s.push_str(&format!(
            "| variant | ranks | peak pred ({unit}) | peak meas ({unit}) | error | step pred (ms) | step meas (ms) | error |{}{} host slowdown (probe) | comm exposed pred (ms) | comm meas (ms) |\n",
            if per_run { " step runs (ms) |" } else { "" },
            if mfu { " MFU pred / meas |" } else { "" }
        ));
        s.push_str(&format!(
            "|---|---:|---:|---:|---:|---:|---:|---:|{}{}---:|---:|---:|\n",
            if per_run { "---:|" } else { "" },
            if mfu { "---:|" } else { "" }
        ));
        for r in &self.rows {
            let (mp, mt, mc, ranks) = match &r.measured {
                Some(m) => (kib(m.peak_memory_bytes), ms(m.step_time_s), ms(m.comm_time_s), m.ranks.to_string()),
                None => ("-".into(), "-".into(), "-".into(), "-".into()),
            };
            let runs = match (&r.measured, per_run) {
                (_, false) => String::new(),
                (Some(m), true) => format!(" {} |", m.run_step_times_s.iter().map(|t| ms(*t)).collect::<Vec<_>>().join(", ")),
                (None, true) => " - |".into(),
            };
            let runs = if mfu {
                let f = |x: Option<f64>| x.map_or("-".to_string(), |x| format!("{:.1}%", x * 100.0));
                format!("{runs} {} / {} |", f(r.predicted_mfu), f(r.measured_mfu()))
            } else {
                runs
            };
            s.push_str(&format!(
                "| `{}` | {} | {} | {} | {} | {} | {} | {} |{runs} {} | {} | {} |\n",
                r.variant,
                ranks,
                kib(r.predicted_peak_bytes),
                mp,
                pct(r.memory_error()),
                ms(r.predicted_step_time_s),
                mt,
                pct(r.step_error()),
                r.host_slowdown.map_or("-".to_string(), |f| format!("x{f:.2}")),
                ms(r.predicted_exposed_comm_s),
                mc
            ));
        }
        if self.rows.iter().any(|r| r.predicted_phases.is_some() || r.measured_phases.is_some()) {
            s.push_str("\n## Step time by phase\n\n");
            s.push_str("Compute time per phase in ms, predicted (the simulator's busy time, no waiting on collectives) / measured (rank 0's `SEERSCALE_PHASE_TIMES` timer, median over steady-state steps; waits inside a phase included).\n\n");
            s.push_str("| variant | prologue | forward | loss | backward | optimizer | sum |\n|---|---:|---:|---:|---:|---:|---:|\n");
            let sum = |p: &PhaseTimes| p.prologue_s + p.forward_s + p.loss_s + p.backward_s + p.optimizer_s;
            for r in &self.rows {
                let cell = |f: &dyn Fn(&PhaseTimes) -> f64| {
                    let a = r.predicted_phases.as_ref().map_or("-".to_string(), |p| ms(f(p)));
                    let b = r.measured_phases.as_ref().map_or("-".to_string(), |p| ms(f(p)));
                    format!("{a} / {b}")
                };
                s.push_str(&format!(
                    "| `{}` | {} | {} | {} | {} | {} | {} |\n",
                    r.variant,
                    cell(&|p| p.prologue_s),
                    cell(&|p| p.forward_s),
                    cell(&|p| p.loss_s),
                    cell(&|p| p.backward_s),
                    cell(&|p| p.optimizer_s),
                    cell(&sum)
                ));
            }
        }
        s.push_str("\n## Predicted peak by category\n\n");
        s.push_str(&format!("The executor's counter has one total per step, so categories are predicted only ({unit} at the predicted peak event).\n\n"));
        for r in &self.rows {
            let parts: Vec<String> = r.predicted_breakdown.iter().map(|(k, v)| format!("{k} {}", kib(*v))).collect();
            s.push_str(&format!("* `{}`: {}\n", r.variant, parts.join(", ")));
        }
        let notes: Vec<String> = self.rows.iter().filter_map(|r| r.note.as_ref().map(|n| format!("`{}`: {n}", r.variant))).collect();
        if !notes.is_empty() || !self.notes.is_empty() {
            s.push_str("\n## Notes\n\n");
            for n in self.notes.iter().chain(&notes) {
                s.push_str(&format!("* {n}\n"));
            }
        }
        s
    }
}

pub(super) fn fmt_num(v: f64) -> String {
    if v >= 100.0 {
        format!("{v:.0}")
    } else if v >= 10.0 {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// Median per phase over steps `>= warmup` of rank 0's
/// `phase-times rank=0 step=N key=ms ...` lines (the executor's
/// `SEERSCALE_PHASE_TIMES=1` output). Backward is the executor's
/// `backward+loss` window less the loss; the prologue is `proto_norm +
/// zero_grad`. None when the log has no such lines.
pub fn parse_phase_times(log: &str, warmup: u64) -> Option<PhaseTimes> {
    let mut rows: Vec<PhaseTimes> = Vec::new();
    for line in log.lines() {
        let Some(rest) = line.trim().strip_prefix("phase-times ") else { continue };
        let kv: Vec<(&str, &str)> = rest.split_whitespace().filter_map(|t| t.split_once('=')).collect();
        let get = |k: &str| kv.iter().find(|(a, _)| *a == k).and_then(|(_, v)| v.parse::<f64>().ok());
        if get("rank") != Some(0.0) || get("step").is_none_or(|st| st < warmup as f64) {
            continue;
        }
        let ms = |k: &str| get(k).unwrap_or(0.0) / 1e3;
        let loss = ms("loss");
        rows.push(PhaseTimes {
            prologue_s: ms("proto_norm") + ms("zero_grad"),
            forward_s: ms("forward"),
            loss_s: loss,
            backward_s: (get("backward+loss").map_or(ms("run_backward"), |b| b / 1e3 - loss)).max(0.0),
            optimizer_s: ms("optimizer"),
        });
    }
    median_phases(&rows)
}

/// Median of each phase over steps or runs; None when there are none.
pub fn median_phases(rows: &[PhaseTimes]) -> Option<PhaseTimes> {
    if rows.is_empty() {
        return None;
    }
    let med = |f: fn(&PhaseTimes) -> f64| median(rows.iter().map(f).collect());
    Some(PhaseTimes {
        prologue_s: med(|p| p.prologue_s),
        forward_s: med(|p| p.forward_s),
        loss_s: med(|p| p.loss_s),
        backward_s: med(|p| p.backward_s),
        optimizer_s: med(|p| p.optimizer_s),
    })
}
