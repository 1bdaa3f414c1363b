//! The trade-off users choose on: days to train against cost, both
//! minimised. The frontier holds the plans no other plan beats on both;
//! the SVG plots every fitting cluster size (log-log), labels each point
//! with its GPU count, draws its band and joins the frontier.

use serde::Serialize;

#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ParetoPoint {
    /// GPU type id (one colour per type in the plot).
    pub gpu: String,
    pub gpus: usize,
    pub days: f64,
    pub cost_usd: f64,
    /// Where the measured days and cost are expected (`planner::bands`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub days_range: Option<[f64; 2]>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub cost_range_usd: Option<[f64; 2]>,
}

fn dominates(a: &ParetoPoint, b: &ParetoPoint) -> bool {
    let le = a.days <= b.days && a.cost_usd <= b.cost_usd;
    let lt = a.days < b.days || a.cost_usd < b.cost_usd;
    le && lt
}

/// Indices of the points no other point beats on both days and cost, from
/// the cheapest (slowest) to the fastest. O(n²); sweeps have at most a few
/// hundred points.
pub fn frontier(points: &[ParetoPoint]) -> Vec<usize> {
    let mut out: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].days.is_finite() && points[i].cost_usd.is_finite())
        .filter(|&i| !points.iter().enumerate().any(|(j, q)| j != i && dominates(q, &points[i])))
        .collect();
    out.sort_by(|&a, &b| points[a].cost_usd.total_cmp(&points[b].cost_usd).then(points[a].gpus.cmp(&points[b].gpus)));
    // Equal (days, cost): keep the one with fewer GPUs.
    out.dedup_by(|a, b| points[*a].days == points[*b].days && points[*a].cost_usd == points[*b].cost_usd);
    out
}

/// One colour per GPU type, in the order the types appear.
const PALETTE: [(u8, u8, u8); 6] = [(31, 119, 180), (214, 39, 40), (44, 160, 44), (148, 103, 189), (255, 127, 14), (140, 86, 75)];

/// Ticks over [lo, hi] (log axis): decades, else 1-2-5 steps, else every
/// integer multiple of the decade, the first of these giving three ticks;
/// a range narrower than that gets evenly spaced round values.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (e0, e1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let steps: [&[f64]; 3] = [&[1.0], &[1.0, 2.0, 5.0], &[1.0, 2.0, 3.0, 4.0, 5.0, 6.0, 7.0, 8.0, 9.0]];
    let ticks = |mults: &[f64]| -> Vec<f64> {
        (e0..=e1).flat_map(|e| mults.iter().map(move |m| m * 10f64.powi(e))).filter(|v| *v >= lo * 0.999 && *v <= hi * 1.001).collect()
    };
    steps.iter().map(|m| ticks(m)).find(|t| t.len() >= 3).unwrap_or_else(|| linear_ticks(lo, hi))
}

/// Multiples of a round step (1, 2, 2.5 or 5 times a power of ten) that
/// put three to five ticks in [lo, hi].
fn linear_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let raw = (hi - lo) / 4.0;
    let mag = 10f64.powf(raw.log10().floor());
    let step = [1.0, 2.0, 2.5, 5.0, 10.0].iter().map(|m| m * mag).find(|s| *s >= raw).unwrap_or(10.0 * mag);
    let first = (lo / step).ceil() as i64;
    let last = (hi / step).floor() as i64;
    (first..=last).map(|k| k as f64 * step).collect()
}

fn tick_label(v: f64, money: bool) -> String {
    // Four significant digits at most, trailing zeros dropped.
    let short = |x: f64| {
        let decimals = (3 - x.abs().max(1e-12).log10().floor() as i32).max(0) as usize;
        let t = format!("{x:.decimals$}");
        if t.contains('.') {
            t.trim_end_matches('0').trim_end_matches('.').to_string()
        } else {
            t
        }
    };
    let s = if v >= 1e6 {
        format!("{}M", short(v / 1e6))
    } else if v >= 1e3 {
        format!("{}k", short(v / 1e3))
    } else {
        short(v)
    };
    if money {
        format!("${s}")
    } else {
        s
    }
}

/// A logarithmic axis whose ticks are [`log_ticks`]'s (plotters' own log
/// axis puts none inside a decade, so a narrow sweep had one tick).
#[derive(Clone)]
struct LogAxis {
    lo: f64,
    hi: f64,
    /// Ticks read as dollars.
    money: bool,
}

impl plotters::coord::ranged1d::ValueFormatter<f64> for LogAxis {
    fn format_ext(&self, v: &f64) -> String {
        tick_label(*v, self.money)
    }
}

impl plotters::coord::ranged1d::Ranged for LogAxis {
    type FormatOption = plotters::coord::ranged1d::NoDefaultFormatting;
    type ValueType = f64;
    fn map(&self, v: &f64, limit: (i32, i32)) -> i32 {
        let f = (v.max(f64::MIN_POSITIVE).ln() - self.lo.ln()) / (self.hi.ln() - self.lo.ln());
        limit.0 + (f * (limit.1 - limit.0) as f64).round() as i32
    }
    fn key_points<H: plotters::coord::ranged1d::KeyPointHint>(&self, hint: H) -> Vec<f64> {
        match hint.weight() {
            plotters::coord::ranged1d::KeyPointWeight::Bold => log_ticks(self.lo, self.hi),
            plotters::coord::ranged1d::KeyPointWeight::Any => Vec::new(),
        }
    }
    fn range(&self) -> std::ops::Range<f64> {
        self.lo..self.hi
    }
}

/// `[lo, hi]` of `values` padded by 10 % of the span each side (log), at
/// least a factor of 2 in all.
fn log_span(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
    let pad = ((hi / lo).log10() * 0.1).max(0.15);
    (lo / 10f64.powf(pad), hi * 10f64.powf(pad))
}

/// Log-log plot of days to train against cost: every fitting plan a point
/// in its GPU type's colour with its band as a segment through it (days
/// and cost scale together, so along the diagonal), the frontier larger,
/// outlined and joined, GPU counts beside the points where they do not
/// overlap (the frontier's first).
pub fn svg(points: &[ParetoPoint], front: &[usize], title: &str) -> String {
    let mut out = String::new();
    // Drawing into a String cannot fail for I/O; a plot that cannot be
    // drawn leaves what was drawn so far.
    let _ = draw(points, front, title, &mut out);
    out
}

fn draw<'a>(points: &[ParetoPoint], front: &[usize], title: &str, out: &'a mut String) -> Result<(), Box<dyn std::error::Error + 'a>> {
    use plotters::prelude::*;
    let root = SVGBackend::with_string(out, (860, 540)).into_drawing_area();
    root.fill(&WHITE)?;
    let ok: Vec<&ParetoPoint> = points.iter().filter(|p| p.cost_usd.is_finite() && p.cost_usd > 0.0 && p.days.is_finite() && p.days > 0.0).collect();
    if ok.is_empty() {
        root.draw(&Text::new("no plan fits", (380, 260), ("sans-serif", 14)))?;
        root.present()?;
        return Ok(());
    }
    let with_band = |v: f64, r: Option<[f64; 2]>| [v, r.map_or(v, |r| r[0]), r.map_or(v, |r| r[1])];
    let (x0, x1) = log_span(ok.iter().flat_map(|p| with_band(p.cost_usd, p.cost_range_usd)));
    let (y0, y1) = log_span(ok.iter().flat_map(|p| with_band(p.days, p.days_range)));
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 15))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(56)
        .build_cartesian_2d(LogAxis { lo: x0, hi: x1, money: true }, LogAxis { lo: y0, hi: y1, money: false })?;
    chart.configure_mesh().x_desc("cost to train, USD (log)").y_desc("days to train (log)").light_line_style(WHITE).draw()?;
    let mut types: Vec<&str> = Vec::new();
    for p in &ok {
        if !types.contains(&p.gpu.as_str()) {
            types.push(&p.gpu);
        }
    }
    let colour = |g: &str| {
        let (r, gr, b) = PALETTE[types.iter().position(|t| *t == g).unwrap_or(0) % PALETTE.len()];
        RGBColor(r, gr, b)
    };
    let on_front: Vec<&ParetoPoint> = front.iter().filter_map(|&i| points.get(i)).filter(|p| ok.contains(p)).collect();
    // Bands, then points, then the frontier on top.
    let banded: Vec<&&ParetoPoint> = ok.iter().filter(|p| p.days_range.is_some() && p.cost_range_usd.is_some()).collect();
    for p in &banded {
        let (d, c) = (p.days_range.unwrap_or([p.days; 2]), p.cost_range_usd.unwrap_or([p.cost_usd; 2]));
        chart.draw_series(LineSeries::new([(c[0], d[0]), (c[1], d[1])], colour(&p.gpu).mix(0.3).stroke_width(2)))?;
    }
    if !banded.is_empty() {
        chart
            .draw_series(std::iter::empty::<Circle<(f64, f64), i32>>())?
            .label("band (measured / predicted, docs/accuracy-gpu.md)")
            .legend(|(x, y)| PathElement::new([(x - 8, y + 5), (x + 8, y - 5)], BLACK.mix(0.4).stroke_width(2)));
    }
    for ty in &types {
        let c = colour(ty);
        chart
            .draw_series(ok.iter().filter(|p| p.gpu == *ty).map(|p| Circle::new((p.cost_usd, p.days), 3, c.mix(0.6).filled())))?
            .label(ty.to_string())
            .legend(move |(x, y)| Circle::new((x, y), 5, c.filled()));
    }
    if on_front.len() > 1 {
        chart.draw_series(DashedLineSeries::new(on_front.iter().map(|p| (p.cost_usd, p.days)), 4, 3, BLACK.stroke_width(1)))?;
    }
    chart
        .draw_series(on_front.iter().map(|p| Circle::new((p.cost_usd, p.days), 5, colour(&p.gpu).filled())))?
        .label("Pareto frontier (labels: GPUs)")
        .legend(|(x, y)| Circle::new((x, y), 5, BLACK.stroke_width(1)));
    chart.draw_series(on_front.iter().map(|p| Circle::new((p.cost_usd, p.days), 5, BLACK.stroke_width(1))))?;
    // GPU counts beside the points: the frontier's first, then the others
    // where they do not overlap a label already placed.
    let mut placed: Vec<(i32, i32, i32)> = Vec::new();
    let overlaps = |placed: &[(i32, i32, i32)], x: i32, y: i32, w: i32| placed.iter().any(|&(a, b, v)| x < a + v + 2 && a < x + w + 2 && (y - b).abs() < 11);
    let mut order: Vec<&&ParetoPoint> = ok.iter().filter(|p| on_front.contains(p)).collect();
    order.extend(ok.iter().filter(|p| !on_front.contains(p)));
    let mut labels = Vec::new();
    for p in order {
        let front = on_front.contains(p);
        let text = p.gpus.to_string();
        let width = 6 * text.len() as i32;
        let (px, py) = chart.backend_coord(&(p.cost_usd, p.days));
        let (x, mut y) = (px + 6, py - 5);
        // A frontier label that would overlap moves below its point.
        if front && overlaps(&placed, x, y, width) {
            y = py + 14;
        }
        if overlaps(&placed, x, y, width) && !front {
            continue;
        }
        placed.push((x, y, width));
        labels.push((text, (x, y - 9), front));
    }
    for (text, at, front) in labels {
        let font = if front { ("sans-serif", 10).into_font().style(FontStyle::Bold) } else { ("sans-serif", 10).into_font() };
        root.draw(&Text::new(text, at, font))?;
    }
    chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).background_style(WHITE.mix(0.85)).border_style(BLACK.mix(0.3)).draw()?;
    root.present()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(gpus: usize, days: f64, cost: f64) -> ParetoPoint {
        ParetoPoint { gpu: "a".into(), gpus, days, cost_usd: cost, days_range: None, cost_range_usd: None }
    }

    #[test]
    fn dominated_points_leave_the_frontier() {
        let pts = vec![p(8, 100.0, 1000.0), p(16, 60.0, 1200.0), p(16, 70.0, 1300.0), p(32, 60.0, 2000.0), p(64, 20.0, 1900.0)];
        // (70 d, $1300) is beaten by (60 d, $1200); (60 d, $2000) by it too
        // whatever their GPUs; cheapest first.
        assert_eq!(frontier(&pts), vec![0, 1, 4]);
        // More GPUs at the same days and cost add nothing.
        assert_eq!(frontier(&[p(8, 10.0, 100.0), p(16, 10.0, 100.0)]), vec![0]);
        assert!(frontier(&[]).is_empty());
    }

    use crate::timeline_svg::tests::svg_texts as texts;

    #[test]
    fn svg_is_well_formed_labels_gpus_and_marks_the_frontier() {
        let pts = vec![p(8, 100.0, 1000.0), p(16, 60.0, 1200.0), p(16, 70.0, 1300.0)];
        let f = frontier(&pts);
        let s = svg(&pts, &f, "t <&>");
        crate::timeline_svg::tests::check_well_formed(&s).unwrap();
        assert!(s.contains("Pareto frontier") && s.contains("t &lt;&amp;&gt;"), "{s}");
        assert!(s.contains("cost to train") && s.contains("days to train"));
        let t = texts(&s);
        assert!(t.iter().any(|x| x == "8") && t.iter().any(|x| x == "16"), "GPU counts label the points: {t:?}");
        assert!(svg(&[], &[], "x").contains("no plan fits"));
        assert!(!s.contains("band (measured"));
    }

    /// A band is drawn and named in the legend; labels that would overlap
    /// (248 next to 256) are dropped, the frontier's never.
    #[test]
    fn svg_draws_bands_and_keeps_labels_apart() {
        let mut pts = vec![p(248, 10.0, 1000.0), p(256, 10.01, 1000.5), p(512, 5.0, 1100.0)];
        pts[0].days_range = Some([9.0, 12.0]);
        pts[0].cost_range_usd = Some([900.0, 1200.0]);
        let s = svg(&pts, &[0, 2], "t");
        crate::timeline_svg::tests::check_well_formed(&s).unwrap();
        assert!(s.contains("band (measured / predicted"), "{s}");
        let t = texts(&s);
        assert!(t.iter().any(|x| x == "248") && t.iter().any(|x| x == "512") && !t.iter().any(|x| x == "256"), "{t:?}");
    }

    /// A narrow range still gets three ticks, labelled without float noise.
    #[test]
    fn a_narrow_axis_has_several_ticks() {
        assert_eq!(tick_label(3.0 * 0.2, false), "0.6");
        assert_eq!(tick_label(125_000.0, true), "$125k");
        assert_eq!(tick_label(2.5e6, true), "$2.5M");
        assert_eq!(log_ticks(1.0, 1000.0), vec![1.0, 10.0, 100.0, 1000.0]);
        assert_eq!(log_ticks(150.0, 210.0), vec![160.0, 180.0, 200.0]);
        assert_eq!(log_ticks(100_000.0, 200_000.0), vec![100_000.0, 125_000.0, 150_000.0, 175_000.0, 200_000.0]);
    }
}
