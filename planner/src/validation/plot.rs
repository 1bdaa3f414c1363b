//! The report's SVG: predicted against measured peak memory and step time
//! per variant.

use super::report::{fmt_num, rel_error, Row};
use super::ValidationReport;

/// One panel: its title and each row's (predicted, measured).
type Panel<'a> = (&'a str, fn(&Row) -> (f64, Option<f64>));

const PANELS: [Panel; 2] = [
    ("peak memory (KiB)", |r| (r.predicted_peak_bytes as f64 / 1024.0, r.measured.as_ref().map(|m| m.peak_memory_bytes as f64 / 1024.0))),
    ("step time (ms)", |r| (r.predicted_step_time_s * 1e3, r.measured.as_ref().map(|m| m.step_time_s * 1e3))),
];

impl ValidationReport {
    /// Grouped bars per variant: predicted vs measured peak memory (top
    /// panel) and step time (bottom panel), each scaled to its own maximum,
    /// the measured bar labelled with its error; variant names below.
    pub fn svg(&self) -> String {
        let mut out = String::new();
        // Drawing into a String cannot fail for I/O.
        let _ = self.draw(&mut out);
        out
    }

    fn draw<'a>(&self, out: &'a mut String) -> Result<(), Box<dyn std::error::Error + 'a>> {
        use plotters::prelude::*;
        let n = self.rows.len().max(1);
        let (predicted, measured) = (RGBColor(0x4e, 0x79, 0xa7), RGBColor(0xf2, 0x8e, 0x2b));
        let width = (200 + 56 * n) as u32;
        let root = SVGBackend::with_string(out, (width, 620)).into_drawing_area();
        root.fill(&WHITE)?;
        let root = root.titled(&format!("{} — predicted vs measured (per rank)", self.recipe), ("sans-serif", 14))?;
        let (panels, names) = root.split_vertically(380);
        let names_area = names.margin(0, 0, 70, 130);
        for (i, r) in self.rows.iter().enumerate() {
            let x = (56 * i + 27) as i32;
            names_area.draw(&Text::new(r.variant.clone(), (x, 6), ("sans-serif", 10).into_font().transform(FontTransform::Rotate90)))?;
        }
        for ((title, f), area) in PANELS.iter().zip(panels.split_evenly((2, 1))) {
            let vals: Vec<(f64, Option<f64>)> = self.rows.iter().map(f).collect();
            let max = vals.iter().flat_map(|(p, m)| [Some(*p), *m]).flatten().filter(|v| v.is_finite()).fold(0.0, f64::max).max(1e-9);
            let mut chart = ChartBuilder::on(&area)
                .caption(*title, ("sans-serif", 12))
                .margin_right(130)
                .y_label_area_size(70)
                .x_label_area_size(4)
                .build_cartesian_2d(0.0..n as f64, 0.0..max * 1.15)?;
            chart.configure_mesh().disable_x_mesh().disable_x_axis().y_labels(5).y_label_formatter(&|v| fmt_num(*v)).draw()?;
            chart
                .draw_series(vals.iter().enumerate().map(|(i, (p, _))| Rectangle::new([(i as f64 + 0.14, 0.0), (i as f64 + 0.46, *p)], predicted.filled())))?
                .label("predicted")
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], predicted.filled()));
            chart
                .draw_series(
                    vals.iter()
                        .enumerate()
                        .filter_map(|(i, (_, m))| m.map(|m| Rectangle::new([(i as f64 + 0.5, 0.0), (i as f64 + 0.82, m)], measured.filled()))),
                )?
                .label("measured")
                .legend(move |(x, y)| Rectangle::new([(x, y - 5), (x + 10, y + 5)], measured.filled()));
            chart.draw_series(vals.iter().enumerate().filter_map(|(i, (p, m))| {
                let m = (*m)?;
                let e = rel_error(m, *p)?;
                Some(Text::new(format!("{:+.0}%", e * 100.0), (i as f64 + 0.2, p.max(m) + max * 0.1), ("sans-serif", 9)))
            }))?;
            chart.configure_series_labels().position(SeriesLabelPosition::UpperRight).border_style(BLACK.mix(0.3)).background_style(WHITE.mix(0.85)).draw()?;
        }
        root.present()?;
        Ok(())
    }
}
