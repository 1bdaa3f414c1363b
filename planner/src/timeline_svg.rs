//! The memory timeline (plotters): one stacked area per category over the
//! step's events, the usable-memory line, the peak marked with its event,
//! and the x axis read in the step's terms (stages, phases).

use crate::memory::{Category, MemoryReport};
use cost_models::quantity::GIB;

fn color(c: Category) -> plotters::style::RGBColor {
    use plotters::style::RGBColor;
    match c {
        Category::ParamsShard => RGBColor(0x4e, 0x79, 0xa7),
        Category::GradsShard => RGBColor(0xa0, 0xcb, 0xe8),
        Category::Optimizer => RGBColor(0xf2, 0x8e, 0x2b),
        Category::UnshardedParams => RGBColor(0xff, 0xbe, 0x7d),
        Category::GradBuffers => RGBColor(0x59, 0xa1, 0x4f),
        Category::Activations => RGBColor(0xe1, 0x57, 0x59),
        Category::Recompute => RGBColor(0xff, 0x9d, 0x9a),
        Category::HeadLoss => RGBColor(0xb0, 0x7a, 0xa1),
        Category::Transient => RGBColor(0x9c, 0x75, 0x5f),
        Category::Fragmentation => RGBColor(0xba, 0xb0, 0xac),
    }
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
    let mut out = String::new();
    // Drawing into a String cannot fail for I/O.
    let _ = draw(report, title, &mut out);
    out
}

fn draw<'a>(report: &MemoryReport, title: &str, out: &'a mut String) -> Result<(), Box<dyn std::error::Error + 'a>> {
    use plotters::prelude::*;
    use plotters::style::text_anchor::{HPos, Pos, VPos};
    let ev = &report.timeline;
    let n = ev.len().max(1);
    // The usable line sets the scale only when it is near the peak; a plan
    // using 0.04 % of a device would otherwise draw as a flat line.
    let usable_on_scale = report.usable.0 <= report.peak.0.saturating_mul(4);
    let top_bytes = if usable_on_scale { report.peak.0.max(report.usable.0) } else { report.peak.0 };
    let (unit, div) = display_unit(top_bytes);
    let scaled = |b: u64| b as f64 / div;
    let ymax = scaled(top_bytes).max(1e-6) * 1.08;
    let xmax = (n - 1).max(1) as f64;
    let red = RGBColor(0xd6, 0x27, 0x28);

    let root = SVGBackend::with_string(out, (1100, 560)).into_drawing_area();
    root.fill(&WHITE)?;
    let (plot, legend) = root.split_horizontally(900);
    let mut chart = ChartBuilder::on(&plot)
        .caption(title, ("sans-serif", 16).into_font().style(FontStyle::Bold))
        .margin(10)
        .margin_bottom(70)
        .x_label_area_size(4)
        .y_label_area_size(60)
        .build_cartesian_2d(0.0..xmax, 0.0..ymax)?;
    chart.configure_mesh().disable_x_mesh().light_line_style(WHITE).x_labels(0).y_desc(format!("{unit} per rank")).y_label_formatter(&|v| trim(*v)).draw()?;

    // Stacked areas, bottom category first.
    let mut lower = vec![0.0f64; ev.len()];
    let mut shown = Vec::new();
    for c in Category::ALL {
        let vals: Vec<f64> = ev.iter().map(|e| scaled(e.by_category.get(c.name()).map_or(0, |b| b.0))).collect();
        if vals.iter().all(|v| *v == 0.0) {
            continue;
        }
        let upper: Vec<f64> = lower.iter().zip(&vals).map(|(l, v)| l + v).collect();
        let mut pts: Vec<(f64, f64)> = upper.iter().enumerate().map(|(i, u)| (i as f64, *u)).collect();
        pts.extend(lower.iter().enumerate().rev().map(|(i, l)| (i as f64, *l)));
        chart.draw_series(std::iter::once(Polygon::new(pts, color(c).filled())))?;
        shown.push(c);
        lower = upper;
    }

    // Usable memory.
    let right = chart.backend_coord(&(xmax, 0.0)).0;
    if usable_on_scale {
        let u = scaled(report.usable.0);
        chart.draw_series(DashedLineSeries::new([(0.0, u), (xmax, u)], 8, 4, red.stroke_width(2)))?;
        let at = chart.backend_coord(&(xmax, u));
        root.draw(&Text::new(
            format!("usable {u:.2} {unit}"),
            (at.0, at.1 - 6),
            ("sans-serif", 12).into_font().color(&red).pos(Pos::new(HPos::Right, VPos::Bottom)),
        ))?;
    } else {
        let top = chart.backend_coord(&(xmax, ymax));
        let text = format!("usable {} (off scale: {:.0}x the peak)", report.usable, report.usable.0 as f64 / report.peak.0.max(1) as f64);
        root.draw(&Text::new(text, (top.0, top.1 - 4), ("sans-serif", 12).into_font().color(&red).pos(Pos::new(HPos::Right, VPos::Bottom))))?;
    }

    // Peak.
    if let Some(pe) = ev.get(report.peak_event) {
        let (px, py) = (report.peak_event as f64, scaled(report.peak.0));
        chart.draw_series(DashedLineSeries::new([(px, 0.0), (px, py)], 3, 3, BLACK.stroke_width(1)))?;
        chart.draw_series(std::iter::once(Circle::new((px, py), 4, BLACK.filled())))?;
        let at = chart.backend_coord(&(px, py));
        let (left, _) = chart.backend_coord(&(0.0, 0.0));
        let to_left = at.0 > left + (right - left) * 7 / 10;
        let (h, dx) = if to_left { (HPos::Right, -6) } else { (HPos::Left, 6) };
        let text = format!("peak {:.2} {unit}: {}", py, pe.label);
        root.draw(&Text::new(text, (at.0 + dx, at.1 - 8), ("sans-serif", 12).into_font().style(FontStyle::Bold).color(&BLACK).pos(Pos::new(h, VPos::Bottom))))?;
    }

    // The x axis in the step's terms: a tick where each stage starts in
    // forward and in backward (a label that would run into the one before
    // it drops to a second row; where both are taken the tick stands
    // alone), a bracket per phase.
    let labels: Vec<&str> = ev.iter().map(|e| e.label.as_str()).collect();
    let axis_y = chart.backend_coord(&(0.0, 0.0)).1;
    let mut row_end = [i32::MIN; 2];
    for (i, stage) in stage_starts(&labels) {
        let (xi, _) = chart.backend_coord(&(i as f64, 0.0));
        root.draw(&PathElement::new([(xi, axis_y), (xi, axis_y + 5)], BLACK))?;
        let half = 3 * stage.len() as i32;
        if let Some(row) = (0..2).find(|&r| xi - half > row_end[r].saturating_add(3)) {
            row_end[row] = xi + half;
            root.draw(&Text::new(
                stage,
                (xi, axis_y + 7 + 10 * row as i32),
                ("sans-serif", 10).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top)),
            ))?;
        }
    }
    for (name, first, last) in phases(&labels) {
        let (x0, x1, yb) = (chart.backend_coord(&(first as f64, 0.0)).0, chart.backend_coord(&(last as f64, 0.0)).0, axis_y + 30);
        root.draw(&PathElement::new([(x0, yb - 4), (x0, yb), (x1, yb), (x1, yb - 4)], BLACK.mix(0.5)))?;
        root.draw(&Text::new(name, ((x0 + x1) / 2, yb + 3), ("sans-serif", 12).into_font().color(&BLACK).pos(Pos::new(HPos::Center, VPos::Top))))?;
    }
    let (l, r) = (chart.backend_coord(&(0.0, 0.0)).0, right);
    root.draw(&Text::new(
        "events of one step",
        ((l + r) / 2, 550),
        ("sans-serif", 11).into_font().color(&RGBColor(0x55, 0x55, 0x55)).pos(Pos::new(HPos::Center, VPos::Bottom)),
    ))?;

    // Legend: the categories drawn, top of the stack first, with their
    // bytes at the peak.
    for (k, c) in shown.iter().rev().enumerate() {
        let y = 60 + 20 * k as i32;
        let at_peak = report.breakdown.get(c.name()).map_or(0, |b| b.0);
        legend.draw(&Rectangle::new([(20, y), (32, y + 12)], color(*c).filled()))?;
        legend.draw(&Text::new(format!("{} {:.2}", c.name(), scaled(at_peak)), (38, y + 1), ("sans-serif", 12)))?;
    }
    legend.draw(&Text::new(format!("{unit} at peak"), (20, 60 + 20 * shown.len() as i32 + 4), ("sans-serif", 12).into_font().style(FontStyle::Italic)))?;
    root.present()?;
    Ok(())
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

    /// The texts an SVG shows, in order, whitespace around each trimmed.
    pub fn svg_texts(doc: &str) -> Vec<String> {
        doc.split("</text>").filter_map(|t| t.rsplit_once('>').map(|(_, text)| text.trim().to_string())).collect()
    }

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
        let texts = svg_texts(&svg);
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        assert!(texts.iter().any(|t| t.starts_with("usable")), "{texts:?}");
        let (unit, div) = display_unit(if r.usable.0 <= r.peak.0 * 4 { r.peak.0.max(r.usable.0) } else { r.peak.0 });
        let peak = format!("peak {:.2} {unit}", r.peak.0 as f64 / div);
        assert!(texts.iter().any(|t| t.starts_with(&peak)), "{peak}: {texts:?}");
        assert!(svg.contains("tiny &lt;test&gt; &amp; &quot;quotes&quot;"));
        assert!(svg.matches("<polygon").count() >= 3);
        for label in ["forward", "backward"] {
            assert!(texts.contains(&label), "the x axis names the phases: {label}");
        }
        let starts = stage_starts(&r.timeline.iter().map(|e| e.label.as_str()).collect::<Vec<_>>());
        assert!(!starts.is_empty() && texts.contains(&starts[0].1.as_str()), "the first stage is labelled: {starts:?} {texts:?}");
        // Degenerate: a one-event report still renders.
        let mut one = r.clone();
        one.timeline.truncate(1);
        one.peak_event = 0;
        check_well_formed(&timeline_svg(&one, "one")).unwrap();
    }
}
