//! The trade-off users choose on: days to train against cost, both
//! minimised. The frontier holds the plans no other plan beats on both;
//! the SVG plots every fitting cluster size (log-log), labels each point
//! with its GPU count, draws its band and joins the frontier.

use crate::svg::xml_escape;
use serde::Serialize;
use std::fmt::Write;

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

const PALETTE: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

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

/// Log-log plot of days to train against cost; each point is labelled with
/// its GPU count, frontier points are larger, outlined and joined; hovering
/// a point shows its numbers.
pub fn svg(points: &[ParetoPoint], front: &[usize], title: &str) -> String {
    let (w, h) = (860.0, 540.0);
    let (l, r, t, b) = (70.0, 170.0, 40.0, 55.0);
    let mut s = String::new();
    let _ = writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#);
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
        (l + w - r) / 2.0,
        xml_escape(title)
    );
    let ok: Vec<&ParetoPoint> = points.iter().filter(|p| p.cost_usd.is_finite() && p.cost_usd > 0.0 && p.days.is_finite() && p.days > 0.0).collect();
    if ok.is_empty() {
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">no plan fits</text></svg>"#, w / 2.0, h / 2.0);
        return s;
    }
    let span = |v: &mut dyn Iterator<Item = f64>| {
        let (lo, hi) = v.fold((f64::MAX, f64::MIN), |(a, b), x| (a.min(x), b.max(x)));
        // Pad by 10 % each side (log), at least a factor of 2 in all.
        let pad = ((hi / lo).log10() * 0.1).max(0.15);
        (lo / 10f64.powf(pad), hi * 10f64.powf(pad))
    };
    let with_band = |v: f64, r: Option<[f64; 2]>| [v, r.map_or(v, |r| r[0]), r.map_or(v, |r| r[1])];
    let (x0, x1) = span(&mut ok.iter().flat_map(|p| with_band(p.cost_usd, p.cost_range_usd)));
    let (y0, y1) = span(&mut ok.iter().flat_map(|p| with_band(p.days, p.days_range)));
    let px = |c: f64| l + (c / x0).log10() / (x1 / x0).log10() * (w - l - r);
    let py = |d: f64| h - b - (d / y0).log10() / (y1 / y0).log10() * (h - t - b);
    let _ =
        writeln!(s, r##"<g stroke="#444"><line x1="{l}" y1="{}" x2="{}" y2="{}"/><line x1="{l}" y1="{t}" x2="{l}" y2="{}"/></g>"##, h - b, w - r, h - b, h - b);
    for v in log_ticks(x0, x1) {
        let x = px(v);
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{t}" x2="{x:.1}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            h - b,
            h - b + 16.0,
            tick_label(v, true)
        );
    }
    for v in log_ticks(y0, y1) {
        let y = py(v);
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - r,
            l - 6.0,
            y + 4.0,
            tick_label(v, false)
        );
    }
    let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">cost to train, USD (log)</text>"#, (l + w - r) / 2.0, h - 15.0);
    let _ = writeln!(
        s,
        r#"<text x="18" y="{}" text-anchor="middle" transform="rotate(-90 18 {})">days to train (log)</text>"#,
        (t + h - b) / 2.0,
        (t + h - b) / 2.0
    );
    let mut types: Vec<&str> = Vec::new();
    for p in &ok {
        if !types.contains(&p.gpu.as_str()) {
            types.push(&p.gpu);
        }
    }
    let colour = |g: &str| PALETTE[types.iter().position(|t| *t == g).unwrap_or(0) % PALETTE.len()];
    // One point; `style` sizes and outlines it, `label` prefixes its tooltip.
    let circle = |s: &mut String, p: &ParetoPoint, style: &str, label: &str| {
        let _ = writeln!(
            s,
            r#"<circle cx="{:.1}" cy="{:.1}" {style} fill="{}"><title>{label}{} x {}: {:.2} days, ${:.0}</title></circle>"#,
            px(p.cost_usd),
            py(p.days),
            colour(&p.gpu),
            p.gpus,
            xml_escape(&p.gpu),
            p.days,
            p.cost_usd
        );
    };
    // Each plan's band: days and cost scale together, so it is a segment
    // along the diagonal through the point.
    for p in &ok {
        if let (Some(d), Some(c)) = (p.days_range, p.cost_range_usd) {
            let _ = writeln!(
                s,
                r#"<line x1="{:.1}" y1="{:.1}" x2="{:.1}" y2="{:.1}" stroke="{}" stroke-width="2" opacity="0.3"><title>{} x {}: {:.2}-{:.2} days, ${:.0}-${:.0}</title></line>"#,
                px(c[0]),
                py(d[0]),
                px(c[1]),
                py(d[1]),
                colour(&p.gpu),
                p.gpus,
                xml_escape(&p.gpu),
                d[0],
                d[1],
                c[0],
                c[1]
            );
        }
    }
    for p in &ok {
        circle(&mut s, p, r#"r="3" opacity="0.6""#, "");
    }
    let on_front: Vec<&ParetoPoint> = front.iter().filter_map(|&i| points.get(i)).filter(|p| ok.contains(p)).collect();
    if on_front.len() > 1 {
        let path: Vec<String> = on_front.iter().map(|p| format!("{:.1},{:.1}", px(p.cost_usd), py(p.days))).collect();
        let _ = writeln!(s, r#"<polyline points="{}" fill="none" stroke="black" stroke-width="1" stroke-dasharray="4 3"/>"#, path.join(" "));
    }
    for p in &on_front {
        circle(&mut s, p, r#"r="5" stroke="black""#, "Pareto: ");
    }
    // GPU counts beside the points: the frontier's first, then the others
    // where they do not overlap a label already placed.
    let mut placed: Vec<(f64, f64, f64)> = Vec::new();
    let overlaps =
        |placed: &[(f64, f64, f64)], x: f64, y: f64, w: f64| placed.iter().any(|&(a, b, v)| x < a + v + 2.0 && a < x + w + 2.0 && (y - b).abs() < 11.0);
    let mut order: Vec<&&ParetoPoint> = ok.iter().filter(|p| on_front.contains(p)).collect();
    order.extend(ok.iter().filter(|p| !on_front.contains(p)));
    for p in order {
        let front = on_front.contains(p);
        let text = p.gpus.to_string();
        let width = 6.0 * text.len() as f64;
        let (x, y) = (px(p.cost_usd) + 6.0, py(p.days) - 5.0);
        // A frontier label that would overlap moves below its point.
        let y = if front && overlaps(&placed, x, y, width) { py(p.days) + 14.0 } else { y };
        if overlaps(&placed, x, y, width) && !front {
            continue;
        }
        placed.push((x, y, width));
        let weight = if front { r#" font-weight="bold""# } else { "" };
        let _ = writeln!(s, r#"<text x="{x:.1}" y="{y:.1}" font-size="10"{weight}>{text}</text>"#);
    }
    for (k, ty) in types.iter().enumerate() {
        let y = t + 10.0 + 18.0 * k as f64;
        let _ = writeln!(
            s,
            r#"<circle cx="{}" cy="{y}" r="5" fill="{}"/><text x="{}" y="{}">{}</text>"#,
            w - r + 15.0,
            colour(ty),
            w - r + 25.0,
            y + 4.0,
            xml_escape(ty)
        );
    }
    let y = t + 10.0 + 18.0 * types.len() as f64;
    let _ = writeln!(
        s,
        r#"<circle cx="{}" cy="{y}" r="5" fill="none" stroke="black"/><text x="{}" y="{}">Pareto frontier</text><text x="{}" y="{}">labels: GPUs</text>"#,
        w - r + 15.0,
        w - r + 25.0,
        y + 4.0,
        w - r + 5.0,
        y + 24.0
    );
    if ok.iter().any(|p| p.days_range.is_some()) {
        let _ = writeln!(
            s,
            r##"<line x1="{}" y1="{}" x2="{}" y2="{}" stroke="#888" stroke-width="2" opacity="0.5"/><text x="{}" y="{}">band (measured /</text><text x="{}" y="{}">predicted, docs/</text><text x="{}" y="{}">accuracy-gpu.md)</text>"##,
            w - r + 8.0,
            y + 46.0,
            w - r + 22.0,
            y + 34.0,
            w - r + 25.0,
            y + 44.0,
            w - r + 25.0,
            y + 58.0,
            w - r + 25.0,
            y + 72.0
        );
    }
    s.push_str("</svg>\n");
    s
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

    #[test]
    fn svg_is_well_formed_labels_gpus_and_marks_the_frontier() {
        let pts = vec![p(8, 100.0, 1000.0), p(16, 60.0, 1200.0), p(16, 70.0, 1300.0)];
        let f = frontier(&pts);
        let s = svg(&pts, &f, "t <&>");
        crate::timeline_svg::tests::check_well_formed(&s).unwrap();
        assert_eq!(s.matches("Pareto: ").count(), 2);
        assert!(s.contains("t &lt;&amp;&gt;"));
        assert!(s.contains("cost to train") && s.contains("days to train"));
        assert!(s.contains(">8</text>") && s.contains(">16</text>"), "GPU counts label the points");
        assert!(svg(&[], &[], "x").contains("no plan fits"));
        assert!(!s.contains("band (measured"));
    }

    /// A band is a segment from its low to its high end, inside the plot;
    /// labels that would overlap (248 next to 256) are dropped, the
    /// frontier's never.
    #[test]
    fn svg_draws_bands_and_keeps_labels_apart() {
        let mut pts = vec![p(248, 10.0, 1000.0), p(256, 10.01, 1000.5), p(512, 5.0, 1100.0)];
        pts[0].days_range = Some([9.0, 12.0]);
        pts[0].cost_range_usd = Some([900.0, 1200.0]);
        let s = svg(&pts, &[0, 2], "t");
        crate::timeline_svg::tests::check_well_formed(&s).unwrap();
        assert!(s.contains("248 x a: 9.00-12.00 days, $900-$1200") && s.contains("band (measured"));
        assert!(s.contains(">248</text>") && s.contains(">512</text>") && !s.contains(">256</text>"), "{s}");
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
