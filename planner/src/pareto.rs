//! The trade-off users choose on: days to train against cost, both
//! minimised. The frontier holds the plans no other plan beats on both;
//! the SVG plots every fitting cluster size (log-log), labels each point
//! with its GPU count and joins the frontier.

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

/// Decade-or-finer ticks over [lo, hi] (log axis): 1-2-5 steps when the
/// range spans less than two decades.
fn log_ticks(lo: f64, hi: f64) -> Vec<f64> {
    let (e0, e1) = (lo.log10().floor() as i32, hi.log10().ceil() as i32);
    let mults: &[f64] = if e1 - e0 <= 2 { &[1.0, 2.0, 5.0] } else { &[1.0] };
    (e0..=e1).flat_map(|e| mults.iter().map(move |m| m * 10f64.powi(e))).filter(|v| *v >= lo * 0.999 && *v <= hi * 1.001).collect()
}

fn tick_label(v: f64, money: bool) -> String {
    let s = if v >= 1e6 {
        format!("{}M", v / 1e6)
    } else if v >= 1e3 {
        format!("{}k", v / 1e3)
    } else {
        format!("{v}")
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
    let (x0, x1) = span(&mut ok.iter().map(|p| p.cost_usd));
    let (y0, y1) = span(&mut ok.iter().map(|p| p.days));
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
    // GPU counts beside the points: every frontier point, and the others
    // where they do not crowd (at most ~40 labels).
    let every = ok.len().div_ceil(40).max(1);
    for (i, p) in ok.iter().enumerate() {
        let front = on_front.contains(p);
        if front || i % every == 0 {
            let weight = if front { r#" font-weight="bold""# } else { "" };
            let _ = writeln!(s, r#"<text x="{:.1}" y="{:.1}" font-size="10"{weight}>{}</text>"#, px(p.cost_usd) + 6.0, py(p.days) - 5.0, p.gpus);
        }
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
    s.push_str("</svg>\n");
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(gpus: usize, days: f64, cost: f64) -> ParetoPoint {
        ParetoPoint { gpu: "a".into(), gpus, days, cost_usd: cost }
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
    }
}
