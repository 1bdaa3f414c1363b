//! The cluster sweep: the search's best plan at every (GPU type, cluster
//! size), as table rows, plus the Pareto frontier over them.

use crate::pareto::{frontier, ParetoPoint};
use crate::search::{wrapping_name, PointOutcome, SearchError, SearchSpace, Searcher};
use runspec::recipe::Recipe;
use serde::Serialize;

/// One row: the best plan at one cluster size, or why none fits.
#[derive(Clone, Debug, Serialize)]
pub struct SweepRow {
    pub gpu: String,
    pub gpus: usize,
    pub fits: bool,
    /// `ddp`, `fsdp` or `hybrid:S` of the best plan (of the closest miss
    /// when nothing fits; null when nothing was tried).
    pub sharding: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub wrapping: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub precision: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batch_per_gpu: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub global_batch: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reshard_after_forward: Option<bool>,
    /// Checkpointed segments as `first..last` block names.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint: Option<Vec<String>>,
    /// Peak memory per rank (GiB): of the plan, or the least any option needs.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub peak_gib: Option<f64>,
    pub usable_gib: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub exposed_comm_s: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub mfu: Option<f64>,
    /// Days and dollars including checkpoints and expected failures.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_usd: Option<f64>,
    /// Useful share of wall time under failures, 0..1.
    /// Where the measured step time, days and cost are expected: the
    /// step's band (`planner::bands`), and which accuracy rows it comes from.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub step_range_s: Option<[f64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days_range: Option<[f64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_range_usd: Option<[f64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub range_source: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub goodput: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub checkpoint_interval_steps: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub failure_free_days: Option<f64>,
    /// Why nothing fits here.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub why: Option<String>,
    pub pareto: bool,
    /// Combinations simulated / skipped by the bound.
    pub evaluated: usize,
    pub skipped: usize,
}

#[derive(Clone, Debug, Serialize)]
pub struct Sweep {
    pub recipe: String,
    pub rows: Vec<SweepRow>,
    /// Indices into `rows` of the Pareto frontier.
    pub frontier: Vec<usize>,
    /// The frontier were every plan at its band's high end (the slowest
    /// its days and cost are expected to read).
    pub frontier_at_band_high: Vec<usize>,
}

impl Sweep {
    pub fn pareto_points(&self) -> Vec<ParetoPoint> {
        self.rows.iter().map(point).collect()
    }
}

fn point(r: &SweepRow) -> ParetoPoint {
    ParetoPoint {
        gpu: r.gpu.clone(),
        gpus: r.gpus,
        days: r.days.unwrap_or(f64::INFINITY),
        cost_usd: r.cost_usd.unwrap_or(f64::INFINITY),
        days_range: r.days_range,
        cost_range_usd: r.cost_range_usd,
    }
}

/// The point at its band's high end (as predicted where it has no band).
fn point_at_band_high(r: &SweepRow) -> ParetoPoint {
    let mut p = point(r);
    p.days = r.days_range.map_or(p.days, |d| d[1]);
    p.cost_usd = r.cost_range_usd.map_or(p.cost_usd, |c| c[1]);
    p
}

/// Runs the search at every point; `progress(done, total)` after each.
pub fn sweep(recipe: &Recipe, space: SearchSpace, progress: impl FnMut(usize, usize)) -> Result<Sweep, SearchError> {
    let mut s = Searcher::new(recipe, space)?;
    let outcomes = s.run(progress)?;
    Ok(rows_of(&s, recipe, &outcomes))
}

/// Table rows and the frontier from search outcomes.
pub fn rows_of(s: &Searcher, recipe: &Recipe, outcomes: &[PointOutcome]) -> Sweep {
    let block_names = s.block_names().to_vec();
    let mut rows: Vec<SweepRow> = outcomes
        .iter()
        .map(|o| {
            let hw = &s.space.hardware[o.hardware].hardware;
            let mut row = SweepRow {
                gpu: hw.id.clone(),
                gpus: o.world_size,
                fits: o.best.is_some(),
                sharding: None,
                wrapping: None,
                precision: None,
                batch_per_gpu: None,
                global_batch: None,
                reshard_after_forward: None,
                checkpoint: None,
                peak_gib: None,
                usable_gib: hw.usable_memory().as_gib(),
                step_s: None,
                exposed_comm_s: None,
                mfu: None,
                days: None,
                cost_usd: None,
                step_range_s: None,
                days_range: None,
                cost_range_usd: None,
                range_source: None,
                goodput: None,
                checkpoint_interval_steps: None,
                failure_free_days: None,
                why: o.note.clone(),
                pareto: false,
                evaluated: o.evaluated,
                skipped: o.skipped,
            };
            if let Some(e) = &o.best {
                let d = &e.decisions;
                row.sharding = Some(d.sharding.to_string());
                row.wrapping = Some(wrapping_name(d.wrapping));
                row.precision = Some(d.precision.compute.to_string());
                row.batch_per_gpu = Some(d.batch_per_rank);
                row.global_batch = Some(e.throughput.global_batch);
                row.reshard_after_forward = Some(d.reshard_after_forward);
                row.checkpoint = Some(d.recompute_segments.iter().map(|r| segment_label(&block_names, r)).collect());
                row.peak_gib = Some(e.peak.as_gib());
                row.usable_gib = e.usable.as_gib();
                row.step_s = Some(e.step.step_time.0);
                row.exposed_comm_s = Some(e.step.exposed_comm.0);
                row.mfu = Some(e.throughput.mfu);
                row.days = Some(e.throughput.days);
                row.cost_usd = Some(e.throughput.cost_usd);
                if let Some(r) = crate::bands::range_of(&s.space.hardware[o.hardware], e) {
                    row.step_range_s = Some([r.low.0, r.high.0]);
                    row.days_range = Some(r.scale(e.step.step_time, e.throughput.days));
                    row.cost_range_usd = Some(r.scale(e.step.step_time, e.throughput.cost_usd));
                    row.range_source = Some(r.source);
                }
                row.goodput = Some(e.throughput.failures.goodput);
                row.checkpoint_interval_steps = Some(e.throughput.failures.checkpoint_interval_steps);
                row.failure_free_days = Some(e.throughput.failure_free_days);
            } else if let Some(m) = &o.closest {
                row.sharding = Some(m.decisions.sharding.to_string());
                row.peak_gib = Some(m.peak.as_gib());
                row.usable_gib = m.usable.as_gib();
                row.why = Some(format!("needs at least {:.1} GiB, {:.1} usable", m.peak.as_gib(), m.usable.as_gib()));
            }
            row
        })
        .collect();
    let pts: Vec<ParetoPoint> = rows.iter().map(point).collect();
    let front: Vec<usize> = frontier(&pts).into_iter().filter(|&i| rows[i].fits).collect();
    let high: Vec<ParetoPoint> = rows.iter().map(point_at_band_high).collect();
    let frontier_at_band_high: Vec<usize> = frontier(&high).into_iter().filter(|&i| rows[i].fits).collect();
    for &i in &front {
        rows[i].pareto = true;
    }
    Sweep { recipe: recipe.name.clone(), rows, frontier: front, frontier_at_band_high }
}

/// `s3.b0..s3.b8` (or one name for a one-block segment).
pub fn segment_label(names: &[String], r: &std::ops::Range<usize>) -> String {
    let name = |i: usize| names.get(i).cloned().unwrap_or_else(|| format!("#{i}"));
    if r.end <= r.start + 1 {
        name(r.start)
    } else {
        format!("{}..{}", name(r.start), name(r.end - 1))
    }
}
