//! What the search found at a point, what it costs to train, and how
//! an objective chooses among points.

use super::*;
use crate::failures::{failure_costs, FailureCosts, Reliability};
use crate::memory::Decisions;
use crate::simulator::StepResult;
use cost_models::hardware::{HardwareSpec, MathUnit};
use cost_models::Bytes;
use runspec::recipe::{Recipe, Wrapping};

/// Throughput and what the whole run costs.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Throughput {
    pub images_per_s: f64,
    pub global_batch: usize,
    /// Model FLOPs (no recompute) / (step time x peak of the compute dtype).
    pub mfu: f64,
    /// Days and dollars including expected failures (what objectives use).
    pub days: f64,
    pub cost_usd: f64,
    /// The same without failures or checkpoints.
    pub failure_free_days: f64,
    pub failure_free_cost_usd: f64,
    pub failures: FailureCosts,
}

impl Throughput {
    /// `checkpoint_per_rank`: the bytes each rank writes per checkpoint.
    pub fn new(
        recipe: &Recipe,
        hw: &HardwareSpec,
        d: &Decisions,
        step: &StepResult,
        model_flops: f64,
        checkpoint_per_rank: Bytes,
        reliability: &Reliability,
    ) -> Throughput {
        let global = d.world_size * d.batch_per_rank;
        let ips = if step.step_time.0 > 0.0 { global as f64 / step.step_time.0 } else { f64::INFINITY };
        let secs = recipe.data.total_images / ips;
        let peak = hw.peak(d.precision.compute, MathUnit::Conv).map_or(0.0, |p| p.0);
        let mfu = if peak > 0.0 && step.step_time.0 > 0.0 { model_flops / (step.step_time.0 * peak) } else { 0.0 };
        let usd_per_day = 24.0 * d.world_size as f64 * hw.price_per_gpu_hour();
        let days = secs / 86_400.0;
        let failures = failure_costs(reliability, d.world_size, hw.gpus_per_node(), checkpoint_per_rank, step.step_time.0, days, usd_per_day);
        Throughput {
            images_per_s: ips,
            global_batch: global,
            mfu,
            days: failures.days_to_train,
            cost_usd: failures.cost_usd,
            failure_free_days: days,
            failure_free_cost_usd: days * usd_per_day,
            failures,
        }
    }
}

/// One costed plan.
#[derive(Clone, Debug)]
pub struct Evaluated {
    /// Index into [`SearchSpace::hardware`].
    pub hardware: usize,
    /// One rank's device (a share of the machine for CPU ranks).
    pub rank_hardware: HardwareSpec,
    /// `checkpoint` holds the chosen segments.
    pub decisions: Decisions,
    pub peak: Bytes,
    pub usable: Bytes,
    pub step: StepResult,
    pub throughput: Throughput,
    /// Share of the model's kernel time in unaligned GEMMs
    /// (`KernelModel::is_unaligned`): what widens its band.
    pub unaligned_share: f64,
}

impl Evaluated {
    pub fn fits(&self) -> bool {
        self.peak <= self.usable
    }
}

/// A combination that did not fit, with the least memory it could need.
#[derive(Clone, Debug)]
pub struct NearMiss {
    pub hardware: usize,
    pub rank_hardware: HardwareSpec,
    pub decisions: Decisions,
    pub peak: Bytes,
    pub usable: Bytes,
}

/// The search's answer for one (GPU type, world size).
#[derive(Clone, Debug)]
pub struct PointOutcome {
    pub hardware: usize,
    pub world_size: usize,
    pub best: Option<Evaluated>,
    /// Smallest peak among combinations that did not fit.
    pub closest: Option<NearMiss>,
    pub evaluated: usize,
    pub skipped: usize,
    /// Why nothing was tried at all (no batch allowed, machine too small).
    pub note: Option<String>,
}

/// Objective for picking one point.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Objective {
    Fastest,
    Cheapest,
    FewestGpus,
    FastestUnderBudget,
}

impl Objective {
    pub fn parse(s: &str) -> Option<Objective> {
        match s {
            "fastest" => Some(Objective::Fastest),
            "cheapest" => Some(Objective::Cheapest),
            "fewest-gpus" => Some(Objective::FewestGpus),
            "fastest-under-budget" => Some(Objective::FastestUnderBudget),
            _ => None,
        }
    }
}

#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Constraints {
    pub budget_usd: Option<f64>,
    pub deadline_days: Option<f64>,
}

pub fn wrapping_name(w: Wrapping) -> String {
    match w {
        Wrapping::PerBlock => "per-block".into(),
        Wrapping::PerStage => "per-stage".into(),
        Wrapping::Group(g) => format!("group-{g}"),
        Wrapping::Vissl => "vissl".into(),
        Wrapping::Whole => "whole".into(),
        Wrapping::Buckets(mib) => format!("buckets-{mib}mib"),
    }
}

/// Picks one plan among the per-point bests. `Fastest`/`Cheapest` respect
/// the budget and deadline when given; `FewestGpus` takes the smallest
/// cluster that fits (fastest among equals); `FastestUnderBudget` needs a
/// budget.
pub fn choose(outcomes: &[PointOutcome], objective: Objective, c: Constraints) -> Result<&Evaluated, SearchError> {
    if objective == Objective::FastestUnderBudget && c.budget_usd.is_none() {
        return Err(SearchError::Request("--objective fastest-under-budget needs --budget-usd".into()));
    }
    let feasible: Vec<&Evaluated> = outcomes.iter().filter_map(|o| o.best.as_ref()).collect();
    if feasible.is_empty() {
        return Err(SearchError::Infeasible("no plan fits".into()));
    }
    let ok: Vec<&Evaluated> = feasible
        .iter()
        .copied()
        .filter(|e| c.budget_usd.is_none_or(|b| e.throughput.cost_usd <= b) && c.deadline_days.is_none_or(|d| e.throughput.days <= d))
        .collect();
    if ok.is_empty() {
        let cheapest = feasible.iter().min_by(|a, b| a.throughput.cost_usd.total_cmp(&b.throughput.cost_usd)).copied();
        let fastest = feasible.iter().min_by(|a, b| a.throughput.days.total_cmp(&b.throughput.days)).copied();
        let mut why = Vec::new();
        if let (Some(b), Some(e)) = (c.budget_usd, cheapest) {
            why.push(format!(
                "budget ${b:.0}: the cheapest plan that fits costs ${:.0} ({} GPUs, {:.1} days)",
                e.throughput.cost_usd, e.decisions.world_size, e.throughput.days
            ));
        }
        if let (Some(d), Some(e)) = (c.deadline_days, fastest) {
            why.push(format!(
                "deadline {d} days: the fastest plan that fits takes {:.1} days ({} GPUs, ${:.0})",
                e.throughput.days, e.decisions.world_size, e.throughput.cost_usd
            ));
        }
        return Err(SearchError::Constraint(why.join("; ")));
    }
    let by = |f: fn(&Evaluated) -> (f64, f64)| {
        ok.iter().copied().min_by(|a, b| {
            let (x, y) = (f(a), f(b));
            x.0.total_cmp(&y.0).then(x.1.total_cmp(&y.1))
        })
    };
    let pick = match objective {
        Objective::Fastest | Objective::FastestUnderBudget => by(|e| (e.throughput.days, e.throughput.cost_usd)),
        Objective::Cheapest => by(|e| (e.throughput.cost_usd, e.throughput.days)),
        Objective::FewestGpus => by(|e| (e.decisions.world_size as f64, e.throughput.days)),
    };
    pick.ok_or_else(|| SearchError::Infeasible("no plan fits".into()))
}
