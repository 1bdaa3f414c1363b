use super::fit::*;
use super::rows::*;
use super::*;
use cost_models::config::ModelConfig;
use cost_models::config::BUILTIN_MODELS;
use cost_models::graph::Workload;
use cost_models::hardware::{list_builtin_hardware, DeviceKind, MathUnit};
use cost_models::DType;

#[test]
fn public_rows_not_fitted_on_meet_their_targets() {
    let r = report().unwrap();
    assert!(r.failures().is_empty(), "{:#?}", r.failures());
    // Both public sources have rows on both sides of the split.
    for src in [Source::Pycls, Source::Timm] {
        assert!(r.rows.iter().any(|x| x.source == src && x.fitted) && r.rows.iter().any(|x| x.source == src && !x.fitted), "{src:?}");
    }
    // Nothing measured on the H200 is ever marked fitted (the published
    // run is what Volta's unaligned efficiency is fitted on).
    assert!(r.rows.iter().filter(|x| !matches!(x.source, Source::Pycls | Source::Timm | Source::NcclTests | Source::PublishedRun)).all(|x| !x.fitted));
}

/// The catalog's `[kernels]` are what `seerscale accuracy --fit` finds
/// (rounded as printed), not hand-tuned numbers.
#[test]
fn the_catalog_holds_what_the_fit_finds() {
    let close = |a: f64, b: f64, tol: f64| (a - b).abs() <= tol;
    for f in fit().unwrap() {
        let id = match f.architecture.as_str() {
            "volta" => "v100-16gb",
            "ampere" => "rtx-3090",
            _ => "h200-141gb",
        };
        let k = builtin_hardware(id).unwrap().kernels.unwrap();
        let s = &f.spec;
        for (name, got, want, tol) in [
            ("tensor_efficiency", k.tensor_efficiency, s.tensor_efficiency, 2e-3),
            ("cuda_efficiency", k.cuda_efficiency, s.cuda_efficiency, 2e-3),
            ("winograd_speedup", k.winograd_speedup, s.winograd_speedup, 2e-3),
            ("backward_efficiency", k.backward_efficiency, s.backward_efficiency, 2e-3),
            ("k_overhead", k.k_overhead, s.k_overhead, 0.2),
            ("memory_efficiency", k.memory_efficiency, s.memory_efficiency, 2e-3),
            ("launch_us", k.launch.0 * 1e6, s.launch.0 * 1e6, 0.02),
        ] {
            assert!(close(got, want, tol), "{id} {name}: catalog {got}, fit {want}");
        }
    }
}

/// No built-in model on any built-in GPU, in any dtype it supports,
/// computes faster than the dense peak its MFU is measured against.
#[test]
fn no_model_runs_faster_than_the_peak() {
    for id in list_builtin_hardware() {
        let hw = builtin_hardware(id).unwrap();
        if hw.kind != DeviceKind::Gpu {
            continue;
        }
        let k = KernelModel::new(&hw).unwrap();
        for dtype in [DType::Fp32, DType::Fp16, DType::Bf16] {
            let Some(peak) = hw.peak(dtype, MathUnit::Conv) else { continue };
            for (name, _) in BUILTIN_MODELS {
                let g = ModelGraph::build(&ModelConfig::load(name).unwrap(), &Workload::single(8, 128, dtype));
                let flops: f64 = g.blocks.iter().map(|b| b.fwd_flops.0 + b.bwd_flops.0).sum();
                let time: f64 = g.graph.node_weights().map(|l| k.forward(l).0 + k.backward(l).0).sum();
                let mfu = flops / time / peak.0;
                assert!(mfu <= 1.0, "{name} on {id} in {dtype}: MFU {:.1} %", mfu * 100.0);
            }
        }
    }
}

/// Every public nccl-tests figure is a row, the model's algorithm named,
/// and the one the catalog took its NVLS bandwidth from is marked fitted.
#[test]
fn public_nccl_tests_figures_are_rows_of_the_report() {
    let rows = comm_rows().unwrap();
    assert_eq!(rows.len(), 5);
    assert!(rows.iter().all(|r| r.source == Source::NcclTests && r.part == Part::Collective && r.measured_s > 0.0 && r.predicted_s > 0.0));
    let fitted: Vec<&Row> = rows.iter().filter(|r| r.fitted).collect();
    assert_eq!(fitted.len(), 1);
    assert!(fitted[0].workload.contains("(nvls)"), "{}", fitted[0].workload);
    assert!(rows.iter().any(|r| r.workload.contains("4 NICs per node") && r.workload.contains("(hierarchical)")));
}

/// Volta's unaligned tensor-core efficiency is fitted on SEER 2021's
/// published iteration: the row reads within 2 % of it, and carries the
/// wide band of a plan whose time is mostly unaligned GEMMs.
#[test]
fn volta_unaligned_efficiency_is_fitted_on_the_published_run() {
    let rows = published_rows().unwrap();
    let r = &rows[0];
    assert!(r.fitted && r.error().abs() < 0.02, "{r:?}");
    let [lo, hi] = r.band.unwrap();
    assert!(lo < 0.7 && hi > 1.5 && (lo..=hi).contains(&(r.measured_s / r.predicted_s)), "{lo}-{hi}");
}

/// The bands cover the rows they stand for: all of pycls's and timm's
/// whole passes, pycls's workloads on an H200 and the nccl-tests rows.
/// The executor's H200 blocks are reported, not
/// held (docs/accuracy-gpu.md says how many fall inside).
#[test]
fn bands_cover_the_rows_they_come_from() {
    let r = report().unwrap();
    for c in r.band_coverage() {
        assert!(c.n > 0, "{}: no rows", c.rows);
        if !c.rows.contains("executor") {
            assert_eq!(c.inside, c.n, "{}: {} of {} inside its band", c.rows, c.inside, c.n);
        }
    }
}
