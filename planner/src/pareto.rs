//! The Pareto frontier over (GPUs, days to train, cost) — all minimised —
//! and its SVG plot (days against GPUs, log-log, frontier highlighted).

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
    let le = a.gpus <= b.gpus && a.days <= b.days && a.cost_usd <= b.cost_usd;
    let lt = a.gpus < b.gpus || a.days < b.days || a.cost_usd < b.cost_usd;
    le && lt
}

/// Indices of the points no other point dominates, by GPUs then days.
/// O(n²); sweeps have at most a few hundred points.
pub fn frontier(points: &[ParetoPoint]) -> Vec<usize> {
    let mut out: Vec<usize> = (0..points.len())
        .filter(|&i| points[i].days.is_finite() && points[i].cost_usd.is_finite())
        .filter(|&i| !points.iter().enumerate().any(|(j, q)| j != i && dominates(q, &points[i])))
        .collect();
    out.sort_by(|&a, &b| points[a].gpus.cmp(&points[b].gpus).then(points[a].days.total_cmp(&points[b].days)));
    // Equal points (neither dominates): keep one.
    out.dedup_by(|a, b| points[*a] == points[*b]);
    out
}

const PALETTE: [&str; 6] = ["#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b"];

fn esc(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// Log-log plot of days to train against GPUs; frontier points are larger,
/// outlined and joined; hovering a point shows its cost.
pub fn svg(points: &[ParetoPoint], front: &[usize], title: &str) -> String {
    let (w, h) = (820.0, 520.0);
    let (l, r, t, b) = (70.0, 170.0, 40.0, 55.0);
    let mut s = String::new();
    let _ = writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="sans-serif" font-size="12">"#);
    let _ = writeln!(
        s,
        r#"<rect width="100%" height="100%" fill="white"/><text x="{}" y="24" font-size="15" text-anchor="middle">{}</text>"#,
        (l + w - r) / 2.0,
        esc(title)
    );
    let ok: Vec<&ParetoPoint> = points.iter().filter(|p| p.gpus > 0 && p.days.is_finite() && p.days > 0.0).collect();
    if ok.is_empty() {
        let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">no plan fits</text></svg>"#, w / 2.0, h / 2.0);
        return s;
    }
    let lg = |v: f64| v.log10();
    let (mut x0, mut x1) = (f64::MAX, f64::MIN);
    let (mut y0, mut y1) = (f64::MAX, f64::MIN);
    for p in &ok {
        x0 = x0.min(lg(p.gpus as f64));
        x1 = x1.max(lg(p.gpus as f64));
        y0 = y0.min(lg(p.days));
        y1 = y1.max(lg(p.days));
    }
    let (x0, x1) = (x0.floor(), x1.ceil().max(x0.floor() + 1.0));
    let (y0, y1) = (y0.floor(), y1.ceil().max(y0.floor() + 1.0));
    let px = |g: f64| l + (lg(g) - x0) / (x1 - x0) * (w - l - r);
    let py = |d: f64| h - b - (lg(d) - y0) / (y1 - y0) * (h - t - b);
    // Axes with decade ticks.
    let _ =
        writeln!(s, r##"<g stroke="#444"><line x1="{l}" y1="{}" x2="{}" y2="{}"/><line x1="{l}" y1="{t}" x2="{l}" y2="{}"/></g>"##, h - b, w - r, h - b, h - b);
    for e in x0 as i32..=x1 as i32 {
        let x = px(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{x:.1}" y1="{t}" x2="{x:.1}" y2="{}" stroke="#eee"/><text x="{x:.1}" y="{}" text-anchor="middle">{}</text>"##,
            h - b,
            h - b + 16.0,
            10f64.powi(e)
        );
    }
    for e in y0 as i32..=y1 as i32 {
        let y = py(10f64.powi(e));
        let _ = writeln!(
            s,
            r##"<line x1="{l}" y1="{y:.1}" x2="{}" y2="{y:.1}" stroke="#eee"/><text x="{}" y="{:.1}" text-anchor="end">{}</text>"##,
            w - r,
            l - 6.0,
            y + 4.0,
            10f64.powi(e)
        );
    }
    let _ = writeln!(s, r#"<text x="{}" y="{}" text-anchor="middle">GPUs (log)</text>"#, (l + w - r) / 2.0, h - 15.0);
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
            px(p.gpus as f64),
            py(p.days),
            colour(&p.gpu),
            p.gpus,
            esc(&p.gpu),
            p.days,
            p.cost_usd
        );
    };
    for p in &ok {
        circle(&mut s, p, r#"r="2.5" opacity="0.6""#, "");
    }
    let path: Vec<String> = front
        .iter()
        .filter_map(|&i| points.get(i))
        .filter(|p| p.days > 0.0 && p.gpus > 0)
        .map(|p| format!("{:.1},{:.1}", px(p.gpus as f64), py(p.days)))
        .collect();
    if path.len() > 1 {
        let _ = writeln!(s, r#"<polyline points="{}" fill="none" stroke="black" stroke-width="1" stroke-dasharray="4 3"/>"#, path.join(" "));
    }
    for &i in front {
        let Some(p) = points.get(i) else { continue };
        if p.days <= 0.0 || p.gpus == 0 {
            continue;
        }
        circle(&mut s, p, r#"r="5" stroke="black""#, "Pareto: ");
    }
    for (k, ty) in types.iter().enumerate() {
        let y = t + 10.0 + 18.0 * k as f64;
        let _ =
            writeln!(s, r#"<circle cx="{}" cy="{y}" r="5" fill="{}"/><text x="{}" y="{}">{}</text>"#, w - r + 15.0, colour(ty), w - r + 25.0, y + 4.0, esc(ty));
    }
    let y = t + 10.0 + 18.0 * types.len() as f64;
    let _ = writeln!(
        s,
        r#"<circle cx="{}" cy="{y}" r="5" fill="none" stroke="black"/><text x="{}" y="{}">Pareto frontier</text>"#,
        w - r + 15.0,
        w - r + 25.0,
        y + 4.0
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
        // (16, 70, 1300) is beaten by (16, 60, 1200); (32, 60, 2000) by (16, 60, 1200).
        assert_eq!(frontier(&pts), vec![0, 1, 4]);
        assert!(frontier(&[]).is_empty());
    }

    #[test]
    fn svg_is_well_formed_and_marks_the_frontier() {
        let pts = vec![p(8, 100.0, 1000.0), p(16, 60.0, 1200.0), p(16, 70.0, 1300.0)];
        let f = frontier(&pts);
        let s = svg(&pts, &f, "t <&>");
        assert!(s.starts_with("<svg") && s.trim_end().ends_with("</svg>"));
        assert_eq!(s.matches("Pareto: ").count(), 2);
        assert!(s.contains("t &lt;&amp;&gt;"));
        assert!(svg(&[], &[], "x").contains("no plan fits"));
    }
}
