//! The memory timeline as a hand-written SVG: one stacked area per
//! category over the step's events, the usable-memory line, and the peak
//! marked with its event.

use crate::memory::{Category, MemoryReport};
use crate::svg::xml_escape;
use cost_models::quantity::GIB;
use std::fmt::Write as _;

const W: f64 = 1100.0;
const H: f64 = 560.0;
const LEFT: f64 = 70.0;
const RIGHT: f64 = 200.0;
const TOP: f64 = 50.0;
const BOTTOM: f64 = 80.0;

fn color(c: Category) -> &'static str {
    match c {
        Category::ParamsShard => "#4e79a7",
        Category::GradsShard => "#a0cbe8",
        Category::Optimizer => "#f28e2b",
        Category::UnshardedParams => "#ffbe7d",
        Category::GradBuffers => "#59a14f",
        Category::Activations => "#e15759",
        Category::Recompute => "#ff9d9a",
        Category::HeadLoss => "#b07aa1",
        Category::Transient => "#9c755f",
        Category::Fragmentation => "#bab0ac",
    }
}

/// A "nice" tick step (1, 2 or 5 times a power of ten) for `max` over ~`n` ticks.
fn tick_step(max: f64, n: f64) -> f64 {
    let raw = (max / n).max(1e-9);
    let p = 10f64.powf(raw.log10().floor());
    [1.0, 2.0, 5.0, 10.0].iter().map(|m| m * p).find(|s| *s >= raw).unwrap_or(10.0 * p)
}

/// The largest of GiB / MiB / KiB that shows `bytes` as at least 1.
fn display_unit(bytes: u64) -> (&'static str, f64) {
    if bytes >= GIB {
        ("GiB", GIB as f64)
    } else if bytes >= 1 << 20 {
        ("MiB", (1u64 << 20) as f64)
    } else {
        ("KiB", 1024.0)
    }
}

/// The timeline of `report` as an SVG document.
pub fn timeline_svg(report: &MemoryReport, title: &str) -> String {
    let ev = &report.timeline;
    let n = ev.len().max(1);
    // The usable line sets the scale only when it is near the peak; a plan
    // using 0.04 % of a device would otherwise draw as a flat line.
    let usable_on_scale = report.usable.0 <= report.peak.0.saturating_mul(4);
    let top_bytes = if usable_on_scale { report.peak.0.max(report.usable.0) } else { report.peak.0 };
    let (unit, div) = display_unit(top_bytes);
    let scaled = |b: u64| b as f64 / div;
    let ymax = scaled(top_bytes).max(1e-6) * 1.08;
    let (pw, ph) = (W - LEFT - RIGHT, H - TOP - BOTTOM);
    let x = |i: f64| LEFT + if n > 1 { i / (n - 1) as f64 * pw } else { pw / 2.0 };
    let y = |g: f64| TOP + ph - g / ymax * ph;
    let mut s = String::new();
    let _ = writeln!(s, r#"<?xml version="1.0" encoding="UTF-8"?>"#);
    let _ = writeln!(s, r#"<svg xmlns="http://www.w3.org/2000/svg" width="{W}" height="{H}" viewBox="0 0 {W} {H}" font-family="sans-serif" font-size="12">"#);
    let _ = writeln!(s, r#"<rect x="0" y="0" width="{W}" height="{H}" fill="white"/>"#);
    let _ = writeln!(s, r#"<text x="{LEFT}" y="24" font-size="16" font-weight="bold">{}</text>"#, xml_escape(title));

    // Stacked areas, bottom category first.
    let mut lower = vec![0.0f64; ev.len()];
    for c in Category::ALL {
        let vals: Vec<f64> = ev.iter().map(|e| scaled(e.by_category.get(c.name()).map_or(0, |b| b.0))).collect();
        if vals.iter().all(|v| *v == 0.0) {
            continue;
        }
        let upper: Vec<f64> = lower.iter().zip(&vals).map(|(l, v)| l + v).collect();
        let mut pts = String::new();
        for (i, u) in upper.iter().enumerate() {
            let _ = write!(pts, "{:.1},{:.1} ", x(i as f64), y(*u));
        }
        for (i, l) in lower.iter().enumerate().rev() {
            let _ = write!(pts, "{:.1},{:.1} ", x(i as f64), y(*l));
        }
        let _ = writeln!(s, r#"<polygon points="{}" fill="{}" stroke="none"><title>{}</title></polygon>"#, pts.trim_end(), color(c), c.name());
        lower = upper;
    }

    // Axes and ticks.
    let step = tick_step(ymax, 6.0);
    let _ = writeln!(
        s,
        r##"<g stroke="#333" stroke-width="1"><line x1="{LEFT}" y1="{}" x2="{}" y2="{}"/><line x1="{LEFT}" y1="{TOP}" x2="{LEFT}" y2="{}"/></g>"##,
        TOP + ph,
        LEFT + pw,
        TOP + ph,
        TOP + ph
    );
    let mut t = 0.0;
    while t <= ymax + 1e-9 {
        let _ = writeln!(
            s,
            r##"<line x1="{:.1}" y1="{:.1}" x2="{LEFT}" y2="{:.1}" stroke="#333"/><text x="{:.1}" y="{:.1}" text-anchor="end">{}</text>"##,
            LEFT - 5.0,
            y(t),
            y(t),
            LEFT - 8.0,
            y(t) + 4.0,
            trim(t)
        );
        t += step;
    }
    let _ =
        writeln!(s, r#"<text x="18" y="{:.1}" transform="rotate(-90 18 {:.1})" text-anchor="middle">{unit} per rank</text>"#, TOP + ph / 2.0, TOP + ph / 2.0);
    // The x axis in the step's terms: a tick where each stage starts in
    // forward and in backward, and a bracket per phase.
    let labels: Vec<&str> = ev.iter().map(|e| e.label.as_str()).collect();
    // A label that would run into the one before it drops to a second
    // row; where both rows are taken, the tick stands alone.
    let mut row_end = [f64::NEG_INFINITY; 2];
    for (i, stage) in stage_starts(&labels) {
        let xi = x(i as f64);
        let _ = writeln!(s, r##"<line x1="{xi:.1}" y1="{:.1}" x2="{xi:.1}" y2="{:.1}" stroke="#333"/>"##, TOP + ph, TOP + ph + 5.0);
        let half = 3.0 * stage.len() as f64;
        if let Some(row) = (0..2).find(|&r| xi - half > row_end[r] + 3.0) {
            row_end[row] = xi + half;
            let _ = writeln!(
                s,
                r#"<text x="{xi:.1}" y="{:.1}" text-anchor="middle" font-size="10">{}</text>"#,
                TOP + ph + 16.0 + 10.0 * row as f64,
                xml_escape(&stage)
            );
        }
    }
    for (name, first, last) in phases(&labels) {
        let (x0, x1, yb) = (x(first as f64), x(last as f64), TOP + ph + 30.0);
        let _ = writeln!(
            s,
            r##"<path d="M{x0:.1},{:.1} V{yb:.1} H{x1:.1} V{:.1}" fill="none" stroke="#777"/><text x="{:.1}" y="{:.1}" text-anchor="middle">{name}</text>"##,
            yb - 4.0,
            yb - 4.0,
            (x0 + x1) / 2.0,
            yb + 15.0
        );
    }
    let _ = writeln!(s, r##"<text x="{:.1}" y="{:.1}" text-anchor="middle" font-size="11" fill="#555">events of one step</text>"##, LEFT + pw / 2.0, H - 10.0);

    // Usable memory.
    if usable_on_scale {
        let uy = y(scaled(report.usable.0));
        let _ =
            writeln!(s, r##"<line x1="{LEFT}" y1="{uy:.1}" x2="{:.1}" y2="{uy:.1}" stroke="#d62728" stroke-width="2" stroke-dasharray="8 4"/>"##, LEFT + pw);
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="#d62728" text-anchor="end">usable {:.2} {unit}</text>"##,
            LEFT + pw,
            uy - 6.0,
            scaled(report.usable.0)
        );
    } else {
        let _ = writeln!(
            s,
            r##"<text x="{:.1}" y="{:.1}" fill="#d62728" text-anchor="end">usable {} (off scale: {:.0}x the peak)</text>"##,
            LEFT + pw,
            TOP - 4.0,
            report.usable,
            report.usable.0 as f64 / report.peak.0.max(1) as f64
        );
    }

    // Peak.
    if let Some(pe) = ev.get(report.peak_event) {
        let (px, py) = (x(report.peak_event as f64), y(scaled(report.peak.0)));
        let _ = writeln!(s, r##"<line x1="{px:.1}" y1="{py:.1}" x2="{px:.1}" y2="{:.1}" stroke="black" stroke-dasharray="3 3"/>"##, TOP + ph);
        let _ = writeln!(s, r##"<circle cx="{px:.1}" cy="{py:.1}" r="4" fill="black"/>"##);
        let anchor = if px > LEFT + pw * 0.7 { "end" } else { "start" };
        let _ = writeln!(
            s,
            r#"<text x="{:.1}" y="{:.1}" text-anchor="{anchor}" font-weight="bold">peak {:.2} {unit}: {}</text>"#,
            px + if anchor == "end" { -6.0 } else { 6.0 },
            py - 8.0,
            scaled(report.peak.0),
            xml_escape(&pe.label)
        );
    }

    // Legend.
    let lx = LEFT + pw + 20.0;
    for (k, c) in Category::ALL.iter().rev().enumerate() {
        let ly = TOP + 10.0 + k as f64 * 20.0;
        let at_peak = report.breakdown.get(c.name()).map_or(0, |b| b.0);
        let _ = writeln!(
            s,
            r#"<rect x="{lx}" y="{:.1}" width="12" height="12" fill="{}"/><text x="{:.1}" y="{:.1}">{} {:.2}</text>"#,
            ly,
            color(*c),
            lx + 18.0,
            ly + 10.0,
            c.name(),
            scaled(at_peak)
        );
    }
    let _ = writeln!(s, r#"<text x="{lx}" y="{:.1}" font-style="italic">{unit} at peak</text>"#, TOP + 10.0 + 10.0 * 20.0 + 10.0);
    s.push_str("</svg>\n");
    s
}

/// The stage a block event runs (`fwd s2.b3` -> `s2`, `bwd head.mlp` ->
/// `head`) and whether it is forward.
fn block_stage(label: &str) -> Option<(bool, String)> {
    let (forward, rest) = if let Some(r) = label.strip_prefix("fwd ") {
        (true, r)
    } else if let Some(r) = label.strip_prefix("bwd ").or_else(|| label.strip_prefix("recompute ")) {
        (false, r)
    } else {
        return None;
    };
    let name = rest.split_whitespace().next()?;
    let stage = if name.starts_with("head") { "head" } else { name.split('.').next()? };
    Some((forward, stage.to_string()))
}

/// Events where a stage starts, in forward and again in backward.
fn stage_starts(labels: &[&str]) -> Vec<(usize, String)> {
    let mut out = Vec::new();
    let mut last: Option<(bool, String)> = None;
    for (i, l) in labels.iter().enumerate() {
        if let Some(cur) = block_stage(l) {
            if last.as_ref() != Some(&cur) {
                out.push((i, cur.1.clone()));
                last = Some(cur);
            }
        }
    }
    out
}

/// Forward, backward (recompute included) and the optimiser step, as
/// first..=last event.
fn phases(labels: &[&str]) -> Vec<(&'static str, usize, usize)> {
    let span = |pred: &dyn Fn(&str) -> bool| {
        let first = labels.iter().position(|l| pred(l))?;
        let last = labels.iter().rposition(|l| pred(l))?;
        Some((first, last))
    };
    let mut out = Vec::new();
    if let Some((a, b)) = span(&|l| block_stage(l).is_some_and(|s| s.0)) {
        out.push(("forward", a, b));
    }
    if let Some((a, b)) = span(&|l| block_stage(l).is_some_and(|s| !s.0)) {
        out.push(("backward", a, b));
    }
    if let Some((a, b)) = span(&|l| l.starts_with("optimizer")) {
        out.push(("optimiser", a, b));
    }
    out
}

fn trim(v: f64) -> String {
    let s = format!("{v:.2}");
    s.trim_end_matches('0').trim_end_matches('.').to_string()
}

#[cfg(test)]
pub(crate) mod tests {
    #![allow(clippy::single_range_in_vec_init)]
    use super::*;
    use crate::memory::testgen::{random_profile, seeded};
    use crate::memory::MemoryModel;

    /// Minimal XML well-formedness: balanced tags, quoted attributes,
    /// entities only from the predefined set, nothing after the root.
    pub fn check_well_formed(doc: &str) -> Result<(), String> {
        let mut stack: Vec<String> = Vec::new();
        let mut rest = doc.trim_start();
        if let Some(r) = rest.strip_prefix("<?xml") {
            rest = &r[r.find("?>").ok_or("unterminated declaration")? + 2..];
        }
        let mut seen_root = false;
        while !rest.is_empty() {
            let lt = rest.find('<').unwrap_or(rest.len());
            check_text(&rest[..lt])?;
            if stack.is_empty() && seen_root && !rest[..lt].trim().is_empty() {
                return Err("text after root".into());
            }
            rest = &rest[lt..];
            if rest.is_empty() {
                break;
            }
            let gt = rest.find('>').ok_or("unterminated tag")?;
            let tag = &rest[1..gt];
            rest = &rest[gt + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                match stack.pop() {
                    Some(open) if open == name.trim() => {}
                    other => return Err(format!("</{name}> closes {other:?}")),
                }
                continue;
            }
            let self_closing = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name: String = body.chars().take_while(|c| !c.is_whitespace()).collect();
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || "-_:".contains(c)) {
                return Err(format!("bad tag name in <{tag}>"));
            }
            if stack.is_empty() && seen_root {
                return Err("second root element".into());
            }
            seen_root = true;
            // Attributes: name="value" pairs.
            let mut a = body[name.len()..].trim();
            while !a.is_empty() {
                let eq = a.find('=').ok_or(format!("attribute without value in <{tag}>"))?;
                let q = a[eq + 1..].chars().next().ok_or("missing quote")?;
                if q != '"' && q != '\'' {
                    return Err(format!("unquoted attribute in <{tag}>"));
                }
                let vstart = eq + 2;
                let vend = vstart + a[vstart..].find(q).ok_or("unterminated attribute")?;
                check_text(&a[vstart..vend])?;
                if a[vstart..vend].contains('<') {
                    return Err("'<' in attribute".into());
                }
                a = a[vend + 1..].trim_start();
            }
            if !self_closing {
                stack.push(name);
            }
        }
        if !stack.is_empty() {
            return Err(format!("unclosed {stack:?}"));
        }
        if !seen_root {
            return Err("no root".into());
        }
        Ok(())
    }

    fn check_text(t: &str) -> Result<(), String> {
        let mut r = t;
        while let Some(i) = r.find('&') {
            let semi = r[i..].find(';').ok_or("bare &")?;
            let ent = &r[i + 1..i + semi];
            if !["amp", "lt", "gt", "quot", "apos"].contains(&ent) && !ent.starts_with('#') {
                return Err(format!("unknown entity &{ent};"));
            }
            r = &r[i + semi + 1..];
        }
        Ok(())
    }

    #[test]
    fn the_x_axis_reads_in_phases_and_stages() {
        let labels =
            ["all-gather stem", "fwd stem", "fwd s1.b0", "fwd s1.b1", "fwd head.mlp", "bwd head.mlp", "recompute s1.b1", "bwd s1.b1", "bwd stem", "optimizer"];
        let starts: Vec<(usize, String)> = stage_starts(&labels);
        let names: Vec<&str> = starts.iter().map(|(_, s)| s.as_str()).collect();
        assert_eq!(names, ["stem", "s1", "head", "head", "s1", "stem"]);
        assert_eq!(phases(&labels), vec![("forward", 1, 4), ("backward", 5, 8), ("optimiser", 9, 9)]);
    }

    #[test]
    fn checker_rejects_broken_documents() {
        assert!(check_well_formed("<svg><g></svg>").is_err());
        assert!(check_well_formed("<svg a=1/>").is_err());
        assert!(check_well_formed("<svg>a & b</svg>").is_err());
        assert!(check_well_formed("<svg/><svg/>").is_err());
        assert!(check_well_formed(r#"<svg a="1"><g/>x &amp; y</svg>"#).is_ok());
    }

    #[test]
    fn timeline_svg_is_well_formed_and_marks_peak_and_limit() {
        let m = MemoryModel::from_profile(random_profile(&mut seeded(42), 8));
        let r = m.report(&[2..4]);
        let svg = timeline_svg(&r, "tiny <test> & \"quotes\"");
        check_well_formed(&svg).unwrap();
        assert!(svg.contains("usable"));
        let (unit, div) = display_unit(if r.usable.0 <= r.peak.0 * 4 { r.peak.0.max(r.usable.0) } else { r.peak.0 });
        assert!(svg.contains(&format!("peak {:.2} {unit}", r.peak.0 as f64 / div)), "{svg}");
        assert!(svg.contains("tiny &lt;test&gt; &amp; &quot;quotes&quot;"));
        assert!(svg.matches("<polygon").count() >= 3);
        for label in [">forward</text>", ">backward</text>"] {
            assert!(svg.contains(label), "the x axis names the phases: {label}");
        }
        assert!(svg.matches(r#"font-size="10""#).count() >= 2, "stage ticks");
        // Degenerate: a one-event report still renders.
        let mut one = r.clone();
        one.timeline.truncate(1);
        one.peak_event = 0;
        check_well_formed(&timeline_svg(&one, "one")).unwrap();
    }
}
