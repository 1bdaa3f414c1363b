//! Predicted vs measured: plan variants with fixed decisions (no search),
//! the comparison of their predictions with what the executor measured, and
//! the report (markdown + a plotters SVG bar plot).
//!
//! A variant is named by its decisions, e.g. `w2-block-reshard-ckpt0-fp32-b8-r32`:
//! world size and sharding (`w4` FSDP over the world, `w4h2` hybrid with
//! shard groups of 2, `w4ddp` DDP), unit granularity (`block` | `stage` |
//! `whole`), `reshard` or
//! `keep` after forward, checkpointing (`ckpt0` none, `ckptsome` one segment
//! per middle stage, `ckptall` every trunk block its own segment), compute
//! precision, per-rank batch and the resolution of the largest crop group
//! (the other groups scale with it); an optional `-bygroup` runs backward
//! one crop group after the other.
//!
//! This module never runs anything: the CLI executes the plans and hands the
//! per-step metrics back through [`runspec::metrics`].
//!
//! `variant` names and plans the variants, `report` sets their predictions
//! against the measurements (rows, markdown), `plot` draws the report.

mod plot;
mod report;
mod variant;

pub use report::*;
pub use runspec::metrics::{combine_runs, Measured};
pub use variant::*;

use crate::search::SearchError;

#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    #[error("variant `{name}`: {why} (expected e.g. `w2-block-reshard-ckpt0-fp32-b8-r32`)")]
    BadVariant { name: String, why: String },
    #[error("variant `{name}`: {source}")]
    Plan { name: String, source: SearchError },
    #[error("variant `{name}`: {why}")]
    Recipe { name: String, why: String },
}

#[cfg(test)]
mod tests {
    use super::*;
    use cost_models::hardware::{builtin_hardware, HardwareProfile};
    use cost_models::DType;
    use runspec::recipe::Recipe;
    use runspec::recipe::Wrapping;

    #[test]
    fn names_round_trip_and_bad_names_are_errors() {
        for v in default_variants() {
            assert_eq!(Variant::parse(&v.to_string()).unwrap(), v);
        }
        let v = Variant::parse("w4-stage-keep-ckptall-bf16-b16-r48").unwrap();
        assert_eq!((v.world_size, v.granularity, v.reshard_after_forward, v.checkpoint), (4, Granularity::Stage, false, CkptLevel::All));
        assert_eq!((v.precision, v.batch_per_rank, v.resolution), (DType::Bf16, 16, 48));
        // Optional suffixes: -bygroup, then -pad.
        for name in ["w2-block-reshard-ckpt0-bf16-b8-r32-pad", "w2-block-reshard-ckpt0-bf16-b8-r32-bygroup-pad"] {
            let v = Variant::parse(name).unwrap();
            assert_eq!(v.channel_padding, cost_models::padding::ChannelPadding::On, "{name}");
            assert_eq!(v.to_string(), name);
        }
        for bad in [
            "w2-block-reshard-ckpt0-bf16-b8-r32-pad-bygroup",
            "w2-block-reshard-ckpt0-bf16-b8-r32-pad-pad",
            "",
            "w2",
            "w0-block-reshard-ckpt0-fp32-b8-r32",
            "w2-blocks-reshard-ckpt0-fp32-b8-r32",
            "w2-block-reshard-ckpt9-fp32-b8-r32",
            "w2-block-reshard-ckpt0-fp64-b8-r32",
            "w2-block-reshard-ckpt0-fp32-b0-r32",
            "w2-block-reshard-ckpt0-fp32-b8-r4",
            "w99-block-reshard-ckpt0-fp32-b8-r32",
        ] {
            assert!(Variant::parse(bad).is_err(), "{bad}");
        }
        assert_eq!(parse_variants("w1-block-keep-ckpt0-fp32-b8-r32, w1-block-keep-ckpt0-fp32-b8-r32").unwrap().len(), 1);
        assert!(parse_variants(" , ").is_err());
    }

    #[test]
    fn default_set_covers_every_axis() {
        let vs = default_variants();
        let has = |f: &dyn Fn(&Variant) -> bool| vs.iter().any(f);
        for w in [1, 2, 4] {
            assert!(has(&|v| v.world_size == w));
        }
        for g in [Granularity::Block, Granularity::Stage, Granularity::Whole] {
            assert!(has(&|v| v.granularity == g));
        }
        for c in [CkptLevel::None, CkptLevel::Some, CkptLevel::All] {
            assert!(has(&|v| v.checkpoint == c));
        }
        assert!(has(&|v| v.reshard_after_forward) && has(&|v| !v.reshard_after_forward));
        assert!(has(&|v| v.precision == DType::Fp32) && has(&|v| v.precision == DType::Bf16));
        assert!(has(&|v| v.batch_per_rank == 8) && has(&|v| v.batch_per_rank == 16));
        assert!(has(&|v| v.resolution == 32) && has(&|v| v.resolution == 48));
    }

    #[test]
    fn variant_plans_carry_their_decisions() {
        let base = Recipe::load("tiny-cpu").unwrap();
        let hw = HardwareProfile::from_spec(builtin_hardware("cpu-local").unwrap());
        let v = Variant::parse("w2-stage-keep-ckptsome-bf16-b16-r48").unwrap();
        let (plan, report) = plan_variant(&base, &hw, &v).unwrap();
        assert_eq!(plan.world_size, 2);
        assert_eq!(plan.batch_per_rank, 16);
        assert_eq!(plan.precision.compute, DType::Bf16);
        assert!(!plan.reshard_after_forward);
        assert_eq!(plan.wrapping, Wrapping::PerStage);
        assert_eq!(plan.recipe.data.crops.iter().map(|c| c.resolution).collect::<Vec<_>>(), vec![48, 24]);
        // tiny: stages 1..4, so "some" = stages 2 and 3, s3 as one segment of two blocks.
        assert_eq!(plan.checkpoint_segments, vec![vec!["s2.b0".to_string()], vec!["s3.b0".to_string(), "s3.b1".to_string()]]);
        assert_eq!(plan.predicted.peak_memory_bytes, report.peak.0);
        let all = plan_variant(&base, &hw, &Variant::parse("w2-stage-keep-ckptall-bf16-b16-r48").unwrap()).unwrap().0;
        assert_eq!(all.checkpoint_segments.len(), 6);
        assert!(all.predicted.peak_memory_bytes < plan.predicted.peak_memory_bytes || all.predicted.peak_memory_bytes > 0);
    }

    #[test]
    fn report_flags_drift_and_renders() {
        let base = Recipe::load("tiny-cpu").unwrap();
        let hw = HardwareProfile::from_spec(builtin_hardware("cpu-local").unwrap());
        let v = Variant::parse("w1-block-reshard-ckpt0-fp32-b8-r32").unwrap();
        let (plan, _) = plan_variant(&base, &hw, &v).unwrap();
        let p = plan.predicted.peak_memory_bytes;
        let meas = |peak: u64| Measured {
            ranks: 1,
            steps: 3,
            peak_memory_bytes: peak,
            peak_memory_min_rank_bytes: peak,
            step_time_s: 0.1,
            comm_time_s: 0.0,
            run_step_times_s: Vec::new(),
        };
        let mut rep = ValidationReport {
            recipe: "tiny-cpu".into(),
            hardware: "cpu".into(),
            hardware_source: "catalog".into(),
            steps: 5,
            warmup: 2,
            repeats: 1,
            memory_tolerance: 0.03,
            step_tolerance: 0.10,
            command: "seerscale validate --recipe tiny-cpu".into(),
            rows: vec![Row::from_plan(&v, &plan, Some(meas(p + p / 50)), None)],
            notes: vec![],
            recipe_config: None,
            device: None,
            measured_with: None,
        };
        assert!(rep.memory_failures().is_empty());
        rep.rows.push(Row::from_plan(&v, &plan, Some(meas(p + p / 10)), None));
        rep.rows.push(Row::from_plan(&v, &plan, None, Some("rank 1 failed".into())));
        let f = rep.memory_failures();
        assert_eq!(f.len(), 2, "{f:?}");
        let unmeasured = ValidationReport { rows: vec![rep.rows[2].clone()], ..rep.clone() };
        let md = unmeasured.markdown(None);
        assert!(md.contains("**Peak memory**: 0/1 variants measured. **Step time**: 0/1 measured."), "no run, no error figures: {md}");
        assert!(f[1].contains("rank 1 failed"));
        let md = rep.markdown(Some("x.svg"));
        assert!(md.contains("seerscale validate --recipe tiny-cpu") && md.contains("+2.0%") && md.contains("+10.0%") && md.contains("x.svg"));
        assert!(!md.contains("host-speed probe"), "no probe, no correction: {md}");
        let svg = rep.svg();
        assert!(svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"));
        // Both panels, every variant named, the measured bars' errors.
        let texts = crate::timeline_svg::tests::svg_texts(&svg);
        let texts: Vec<&str> = texts.iter().map(String::as_str).collect();
        assert!(texts.contains(&"peak memory (KiB)") && texts.contains(&"step time (ms)"), "{texts:?}");
        assert_eq!(texts.iter().filter(|t| **t == rep.rows[0].variant).count(), 3, "{texts:?}");
        assert!(texts.contains(&"+2%") && texts.contains(&"+10%"), "{texts:?}");

        // A run the probe found 1.5x slower: the headline stays the
        // calibration-speed prediction, the probe-scaled one is stated too.
        let mut slow = Row::from_plan(&v, &plan, Some(Measured { step_time_s: 1.05 * plan.predicted.step_time_s, ..meas(p) }), None);
        slow.host_slowdown = Some(1.5);
        slow.probe_scaled_step_time_s = Some(plan.predicted.step_time_s * 1.5);
        assert!((slow.step_error().unwrap() - 0.05).abs() < 1e-9);
        assert!((slow.probe_scaled_step_error().unwrap() + 0.3).abs() < 1e-9);
        rep.rows = vec![slow];
        let md = rep.markdown(None);
        assert!(md.contains("**Step time**: 1/1 within ±10% (max |error| 5%, median 5%) (scaled by the host-speed probe's slowdown instead: 0/1 within ±10% (max |error| 30%"), "{md}");
        assert!(md.contains("| x1.50 |"), "{md}");
        assert!(!md.contains("step runs") && !md.contains("interleaved") && !md.contains("Run-to-run"), "one run, no per-run column: {md}");

        // Three runs of the variant: the report says so and lists each run.
        let runs = [0.2, 0.1, 0.11].map(|t| Measured { step_time_s: t, run_step_times_s: vec![t], ..meas(p) });
        rep.rows = vec![Row::from_plan(&v, &plan, combine_runs(&runs), None)];
        rep.repeats = 3;
        let md = rep.markdown(None);
        assert!(md.contains("ran 3 times, in interleaved rounds") && md.contains("| step runs (ms) |") && md.contains("| 200.0, 100.0, 110.0 |"), "{md}");
        // 0.2 is +90% off the others' median 0.105; 0.1 is -35% off 0.155;
        // 0.11 is -27% off 0.15: no run within ±10%, median deviation 35%.
        let (within, n, mid) = rep.run_spread().unwrap();
        assert_eq!((within, n), (0, 3));
        assert!((mid - (0.1_f64 / 0.155 - 1.0).abs()).abs() < 1e-9, "{mid}");
        assert!(md.contains("**Run-to-run spread** (the floor under any prediction): 0/3 single runs within ±10%"), "{md}");
        let runs = [0.1, 0.104, 0.099].map(|t| Measured { step_time_s: t, run_step_times_s: vec![t], ..meas(p) });
        rep.rows = vec![Row::from_plan(&v, &plan, combine_runs(&runs), None)];
        assert_eq!(rep.run_spread().map(|(w, n, _)| (w, n)), Some((3, 3)), "a quiet host: every run near the others");
        let bias = rep.step_bias().unwrap();
        assert!((bias - (0.1 / plan.predicted.step_time_s - 1.0)).abs() < 1e-9);
    }

    /// Allocated-bytes counters do not see the GPU fragmentation margin, so
    /// the row compares against the peak without it; on CPU there is none.
    #[test]
    fn rows_compare_allocated_bytes_without_the_fragmentation_margin() {
        let base = Recipe::load("tiny-cpu").unwrap();
        let v = Variant::parse("w1-block-reshard-ckpt0-bf16-b64-r224").unwrap();
        let gpu = HardwareProfile::from_spec(builtin_hardware("h200-141gb").unwrap());
        let (plan, _) = plan_variant(&base, &gpu, &v).unwrap();
        let frag = plan.predicted.peak_breakdown["fragmentation"];
        assert!(frag > 0, "GPU plans carry a fragmentation margin");
        let row = Row::from_plan(&v, &plan, None, None);
        assert_eq!(row.predicted_peak_bytes, plan.predicted.peak_memory_bytes - frag);
        assert_eq!(row.predicted_breakdown.iter().map(|(_, b)| b).sum::<u64>(), row.predicted_peak_bytes, "the listed categories add up to the compared peak");
        let cpu = HardwareProfile::from_spec(builtin_hardware("cpu-local").unwrap());
        let (plan, _) = plan_variant(&base, &cpu, &v).unwrap();
        assert_eq!(Row::from_plan(&v, &plan, None, None).predicted_peak_bytes, plan.predicted.peak_memory_bytes);
    }

    #[test]
    fn phase_times_are_medians_of_rank0_after_warmup() {
        let log = "phase-times rank=0 step=0 proto_norm=9 zero_grad=0 forward=100 loss=1 run_backward=90 backward+loss=95 optimizer=20\n\
                   phase-times rank=0 step=2 proto_norm=0.2 zero_grad=0.1 forward=8 loss=0.5 run_backward=16 backward+loss=18.5 optimizer=3\n\
                   phase-times rank=1 step=2 proto_norm=0.2 zero_grad=0.1 forward=80 loss=0.5 run_backward=16 backward+loss=18.5 optimizer=3\n\
                   phase-times rank=0 step=3 proto_norm=0.2 zero_grad=0.1 forward=10 loss=0.5 run_backward=16 backward+loss=20.5 optimizer=5\n\
                   other line\n";
        let p = parse_phase_times(log, 2).unwrap();
        assert!((p.forward_s - 9e-3).abs() < 1e-12, "{p:?}");
        assert!((p.backward_s - 19e-3).abs() < 1e-12, "{p:?}");
        assert!((p.optimizer_s - 4e-3).abs() < 1e-12, "{p:?}");
        assert!((p.prologue_s - 0.3e-3).abs() < 1e-12, "{p:?}");
        assert!(parse_phase_times("nothing", 0).is_none());
    }
}
