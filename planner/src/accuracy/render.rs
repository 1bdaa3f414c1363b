//! The report as markdown, a text summary and an SVG.

use super::*;
use cost_models::Seconds;

impl AccuracyReport {
    /// Per (source, part): rows, fitted / not fitted, median and max |error|.
    fn groups(&self) -> Vec<(Source, Part, bool, Summary)> {
        let mut keys: Vec<(Source, Part, bool)> = self.rows.iter().map(|r| (r.source, r.part, r.fitted)).collect();
        keys.sort();
        keys.dedup();
        keys.into_iter()
            .filter_map(|(s, p, f)| summary(self.rows.iter().filter(|r| r.source == s && r.part == p && r.fitted == f)).map(|x| (s, p, f, x)))
            .collect()
    }

    /// The summary table as plain text (what the command prints).
    pub fn summary_text(&self) -> String {
        let mut s = format!("{:<62} {:<18} {:>9} {:>5} {:>9} {:>9}\n", "rows", "part", "fitted", "n", "median", "max");
        for (src, part, fitted, Summary { rows: n, median: med, max }) in self.groups() {
            s.push_str(&format!(
                "{:<62} {:<18} {:>9} {:>5} {:>8.1}% {:>8.1}%\n",
                src.describe(),
                part.name(),
                if fitted { "fitted" } else { "not" },
                n,
                med * 100.0,
                max * 100.0
            ));
        }
        let failures = self.failures();
        if failures.is_empty() {
            s.push_str(&format!("public rows not fitted on: every part within median {:.0} % and max {:.0} %", TARGET_MEDIAN * 100.0, TARGET_MAX * 100.0));
        } else {
            s.push_str(&format!("outside the targets: {}", failures.join("; ")));
        }
        s
    }

    /// The report; `command` is how to regenerate it.
    pub fn markdown(&self, svg_name: Option<&str>, command: &str) -> String {
        let mut s = format!("# GPU time model: predicted vs measured\n\nRegenerate with:\n\n```sh\n{command}\n```\n\n");
        s.push_str("Every row is one measured time and what the kernel model (`cost-models/src/kernels.rs`) predicts for the same work from the layer graph and the GPU's catalog entry; the nccl-tests rows are a public bus bandwidth at one size, as a time, against the collective model (`cost-models/src/collectives.rs`, [comm.md](comm.md)). Error = predicted / measured − 1 (positive: predicted slower). ");
        s.push_str(&format!(
            "Targets on the public rows **not** fitted on: median |error| ≤ {:.0} % and max ≤ {:.0} %, for each part. `seerscale accuracy --fit` refits the parameters on the fit rows (pycls's and timm's RegNetX/Y sizes 200MF, 600MF, 1.6GF, 4.0GF, 8.0GF, 16GF); the other sizes, and everything measured on the H200, are never fitted on.\n\n",
            TARGET_MEDIAN * 100.0,
            TARGET_MAX * 100.0
        ));
        if let Some(svg) = svg_name {
            s.push_str(&format!("![predicted vs measured, log-log]({svg})\n\n"));
        }
        s.push_str("## Summary\n\n| rows | part | fitted | n | median \\|error\\| | max \\|error\\| |\n|---|---|---|---:|---:|---:|\n");
        for (src, part, fitted, Summary { rows: n, median: med, max }) in self.groups() {
            s.push_str(&format!(
                "| {} | {} | {} | {n} | {:.1} % | {:.1} % |\n",
                src.describe(),
                part.name(),
                if fitted { "yes" } else { "no" },
                med * 100.0,
                max * 100.0
            ));
        }
        let failures = self.failures();
        s.push_str(&if failures.is_empty() {
            "\nEvery part of the public rows not fitted on is within its targets.\n".to_string()
        } else {
            format!("\nOutside the targets: {}.\n", failures.join("; "))
        });
        s.push_str("\n## Error bands and their coverage\n\n`plan` prints each step time with the range the measured time is expected in (`planner::bands`): the exposed communication scaled by the communication band, the rest by the compute band of the plan's hardware (a family the kernel model was fitted on, Hopper, or blocks measured by `calibrate`), and the share of the compute in unaligned GEMMs (SEER's widths in 16-bit, unpadded) further by 0.56-1.92x: their efficiency is assumed, and the H200's unaligned convolutions ran at 0.26-0.88 of their aligned twins' rate. A band is honest where the measured time falls inside it on rows the model was not fitted on:\n\n| rows (not fitted on) | band (measured / predicted) | inside |\n|---|---|---:|\n");
        for Coverage { rows: name, low, high, source, inside, n } in self.band_coverage() {
            s.push_str(&format!("| {name} | {low:.2}-{high:.2}x ({source}) | {inside} of {n} |\n"));
        }
        s.push_str("\n## Parameters\n\n| architecture | tensor eff. | CUDA-core eff. | K overhead | memory eff. | unaligned TC eff. | min channels/group for TC | launch | source |\n|---|---:|---:|---:|---:|---:|---:|---:|---|\n");
        for (arch, k) in &self.kernels {
            s.push_str(&format!(
                "| {arch} | {:.3} | {:.3} | {:.0} | {:.3} | {:.2} | {} | {:.1} µs | {} |\n",
                k.tensor_efficiency,
                k.cuda_efficiency,
                k.k_overhead,
                k.memory_efficiency,
                k.unaligned_tensor_efficiency,
                k.tensor_min_group_channels,
                k.launch.0 * 1e6,
                k.source
            ));
        }
        let mut sources: Vec<Source> = self.rows.iter().map(|r| r.source).collect();
        sources.sort();
        sources.dedup();
        for src in sources {
            s.push_str(&format!(
                "\n## {}\n\n| workload | GPU | part | measured | predicted | error | fitted |\n|---|---|---|---:|---:|---:|---|\n",
                src.describe()
            ));
            for r in self.rows.iter().filter(|r| r.source == src) {
                s.push_str(&format!(
                    "| {} | {} | {} | {} | {} | {:+.1} % | {} |\n",
                    r.workload,
                    r.gpu,
                    r.part.name(),
                    Seconds(r.measured_s).readable(),
                    Seconds(r.predicted_s).readable(),
                    r.error() * 100.0,
                    match (r.fitted, r.band) {
                        (true, Some([lo, hi])) => format!("yes; its plan's band {lo:.2}-{hi:.2}x"),
                        (false, Some([lo, hi])) => format!("its plan's band {lo:.2}-{hi:.2}x"),
                        (true, None) => "yes".into(),
                        (false, None) => String::new(),
                    }
                ));
            }
        }
        s.push_str("\nSources: `configs/gpu-timings/README.md` (what each file is, where it comes from, how the H200 rows were measured); `configs/comm-timings/public-nccl-tests.toml` (each nccl-tests figure with its source).\n");
        s
    }

    /// Predicted against measured, log-log, one colour per source; fitted
    /// rows hollow.
    pub fn svg(&self) -> String {
        let mut out = String::new();
        // Drawing into a String cannot fail for I/O; a plot that cannot be
        // drawn (no rows) leaves an empty canvas.
        let _ = self.draw(&mut out);
        out
    }

    fn draw(&self, out: &mut String) -> Result<(), Box<dyn std::error::Error + '_>> {
        use plotters::prelude::*;
        let root = SVGBackend::with_string(out, (760, 600)).into_drawing_area();
        root.fill(&WHITE)?;
        let lo = self.rows.iter().flat_map(|r| [r.measured_s, r.predicted_s]).fold(f64::INFINITY, f64::min).max(1e-6) * 0.7;
        let hi = self.rows.iter().flat_map(|r| [r.measured_s, r.predicted_s]).fold(0.0, f64::max) * 1.4;
        let mut chart = ChartBuilder::on(&root)
            .caption("GPU time: predicted vs measured (s, log-log; dashed: ±25 %)", ("sans-serif", 17))
            .margin(12)
            .x_label_area_size(40)
            .y_label_area_size(56)
            .build_cartesian_2d((lo..hi).log_scale(), (lo..hi).log_scale())?;
        chart.configure_mesh().x_desc("measured (s)").y_desc("predicted (s)").draw()?;
        chart.draw_series(LineSeries::new([(lo, lo), (hi, hi)], BLACK.mix(0.4)))?;
        for band in [1.25, 0.8] {
            chart.draw_series(LineSeries::new([(lo, lo * band), (hi, hi * band)], BLACK.mix(0.15)))?;
        }
        let palette =
            [RGBColor(31, 119, 180), RGBColor(255, 127, 14), RGBColor(44, 160, 44), RGBColor(214, 39, 40), RGBColor(148, 103, 189), RGBColor(140, 86, 75)];
        let mut sources: Vec<Source> = self.rows.iter().map(|r| r.source).collect();
        sources.sort();
        sources.dedup();
        for (i, src) in sources.iter().enumerate() {
            let c = palette[i % palette.len()];
            let series = chart.draw_series(self.rows.iter().filter(|r| r.source == *src).map(|r| {
                let style = if r.fitted { c.stroke_width(1) } else { c.filled() };
                Circle::new((r.measured_s, r.predicted_s), 3, style)
            }))?;
            series
                .label(format!("{}{}", src.describe(), if matches!(src, Source::Pycls | Source::Timm) { " (hollow: fitted)" } else { "" }))
                .legend(move |(x, y)| Circle::new((x, y), 4, c.filled()));
        }
        chart.configure_series_labels().position(SeriesLabelPosition::UpperLeft).background_style(WHITE.mix(0.8)).border_style(BLACK.mix(0.3)).draw()?;
        root.present()?;
        Ok(())
    }
}
