//! The report's SVG: predicted against measured peak memory and step time
//! per variant.

use crate::svg::xml_escape;

use super::report::{fmt_num, rel_error, Row};
use super::ValidationReport;

impl ValidationReport {
    /// Grouped bars per variant: predicted vs measured peak memory (top
    /// panel) and step time (bottom panel), each scaled to its own maximum.
    pub fn svg(&self) -> String {
        let n = self.rows.len().max(1);
        // Rotated variant names run right and down past their bar group.
        let (left, right, top) = (70.0, 130.0, 40.0);
        let group_w = 56.0;
        let width = left + right + group_w * n as f64;
        let panel_h = 160.0;
        let label_h = 200.0;
        let height = top + 2.0 * panel_h + 40.0 + label_h;
        let mut s = format!(
            "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width:.0}\" height=\"{height:.0}\" viewBox=\"0 0 {width:.0} {height:.0}\" font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" fill=\"white\"/>\n<text x=\"{left}\" y=\"18\" font-size=\"14\">{} — predicted vs measured (per rank)</text>\n",
            xml_escape(&self.recipe)
        );
        s.push_str(&format!(
            "<rect x=\"{:.0}\" y=\"24\" width=\"10\" height=\"10\" fill=\"#4e79a7\"/><text x=\"{:.0}\" y=\"33\">predicted</text><rect x=\"{:.0}\" y=\"24\" width=\"10\" height=\"10\" fill=\"#f28e2b\"/><text x=\"{:.0}\" y=\"33\">measured</text>\n",
            width - 190.0,
            width - 176.0,
            width - 100.0,
            width - 86.0
        ));
        type Panel<'a> = (&'a str, Box<dyn Fn(&Row) -> (f64, Option<f64>)>, f64);
        let panels: [Panel; 2] = [
            (
                "peak memory (KiB)",
                Box::new(|r: &Row| (r.predicted_peak_bytes as f64 / 1024.0, r.measured.as_ref().map(|m| m.peak_memory_bytes as f64 / 1024.0))),
                top,
            ),
            ("step time (ms)", Box::new(|r: &Row| (r.predicted_step_time_s * 1e3, r.measured.as_ref().map(|m| m.step_time_s * 1e3))), top + panel_h + 20.0),
        ];
        for (title, f, y0) in &panels {
            let vals: Vec<(f64, Option<f64>)> = self.rows.iter().map(f).collect();
            let max = vals.iter().flat_map(|(p, m)| [Some(*p), *m]).flatten().filter(|v| v.is_finite()).fold(0.0, f64::max).max(1e-9);
            let base = y0 + panel_h - 14.0;
            let scale = (panel_h - 30.0) / max;
            s.push_str(&format!("<text x=\"4\" y=\"{:.0}\" font-size=\"12\">{}</text>\n", y0 + 12.0, xml_escape(title)));
            s.push_str(&format!("<line x1=\"{left}\" y1=\"{base:.1}\" x2=\"{:.1}\" y2=\"{base:.1}\" stroke=\"black\"/>\n", width - right));
            for k in 0..=4 {
                let v = max * k as f64 / 4.0;
                let y = base - v * scale;
                s.push_str(&format!(
                    "<line x1=\"{left}\" y1=\"{y:.1}\" x2=\"{:.1}\" y2=\"{y:.1}\" stroke=\"#ddd\"/><text x=\"{:.0}\" y=\"{:.1}\" text-anchor=\"end\">{}</text>\n",
                    width - right,
                    left - 4.0,
                    y + 4.0,
                    fmt_num(v)
                ));
            }
            for (i, (p, m)) in vals.iter().enumerate() {
                let x = left + group_w * i as f64 + 8.0;
                let hp = (p * scale).max(0.0);
                s.push_str(&format!(
                    "<rect x=\"{x:.1}\" y=\"{:.1}\" width=\"18\" height=\"{hp:.1}\" fill=\"#4e79a7\"><title>predicted {}</title></rect>\n",
                    base - hp,
                    fmt_num(*p)
                ));
                if let Some(m) = m {
                    let hm = (m * scale).max(0.0);
                    s.push_str(&format!(
                        "<rect x=\"{:.1}\" y=\"{:.1}\" width=\"18\" height=\"{hm:.1}\" fill=\"#f28e2b\"><title>measured {}</title></rect>\n",
                        x + 20.0,
                        base - hm,
                        fmt_num(*m)
                    ));
                    if let Some(e) = rel_error(*m, *p) {
                        s.push_str(&format!(
                            "<text x=\"{:.1}\" y=\"{:.1}\" text-anchor=\"middle\" font-size=\"9\">{:+.0}%</text>\n",
                            x + 19.0,
                            base - hp.max(hm) - 3.0,
                            e * 100.0
                        ));
                    }
                }
            }
        }
        let ly = top + 2.0 * panel_h + 30.0;
        for (i, r) in self.rows.iter().enumerate() {
            let x = left + group_w * i as f64 + 27.0;
            s.push_str(&format!(
                "<text x=\"{x:.1}\" y=\"{ly:.1}\" transform=\"rotate(60 {x:.1} {ly:.1})\" font-size=\"10\">{}</text>\n",
                xml_escape(&r.variant)
            ));
        }
        s.push_str("</svg>\n");
        s
    }
}
