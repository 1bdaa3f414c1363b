//! Whole-block timings for `seerscale calibrate --recipe`: every block of a
//! model at one workload, run through the executor's own block code
//! (`ModelArch::forward_block` on inputs cut from the previous block, and
//! backward from the `(y · g).sum()` root that `step.rs` uses), without
//! FSDP. The planner adds FSDP's gathers, views, reductions and collectives
//! on top, so what is measured here is only what no per-op rate predicts
//! well on a CPU: small ops whose cost depends on their exact shapes and on
//! which libtorch kernel they land in.

use crate::calibrate::BlockMeasurement;
use crate::calibrate::{kind_of, time_calls_on, Budget, CalibrateError};
use crate::memstats::MemDevice;
use crate::model::{BnState, Mode, ModelArch, ModelError};
use cost_models::config::ModelConfig;
use cost_models::graph::{ModelGraph, Workload};
use cost_models::padding::ChannelPadding;
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

fn model_err(block: &str, e: ModelError) -> CalibrateError {
    CalibrateError::Degenerate { what: format!("block `{block}`"), reason: e.to_string() }
}

/// A short text for the workload, e.g. `b8 2x32+2x16 fp32`.
pub fn workload_label(w: &Workload) -> String {
    format!("b{} {} {}", w.images, w.crops_label(), w.dtype)
}

/// Times every block of `model` at `workload` on `device` (`threads`
/// intra-op threads on CPU; parameters in the compute dtype except the
/// fp32 prototypes, as the executor's mixed precision gathers them;
/// BatchNorm in training mode). On CUDA a timing is the mean per call of
/// calls issued back to back, then waited for, as a step issues them.
/// With `padding` on, the blocks run at their padded widths, under the
/// padded graph's keys.
#[allow(clippy::too_many_arguments)]
pub fn measure_blocks(
    model: &ModelConfig,
    workload: &Workload,
    padding: ChannelPadding,
    budget: &Budget,
    threads: usize,
    device: Device,
    mut progress: impl FnMut(&str),
) -> Result<Vec<BlockMeasurement>, CalibrateError> {
    tch::set_num_threads(threads.max(1) as i32);
    let mem_dev = MemDevice::of(device);
    if let Device::Cuda(d) = device {
        crate::cuda_setup(d);
    }
    if device == Device::Cpu {
        crate::memstats::install_cpu_counter().map_err(|e| CalibrateError::Degenerate { what: "counting allocator".into(), reason: e.to_string() })?;
    }
    let time_calls = |budget: &Budget, f: &mut dyn FnMut() -> Result<(), CalibrateError>| time_calls_on(device, budget, f);
    let arch = ModelArch::with_padding(model, padding).map_err(|e| model_err("model", e))?;
    let graph = ModelGraph::build_executed(model, workload, padding);
    let names = arch.block_names();
    let graph_names: Vec<&str> = graph.blocks.iter().map(|b| b.name.as_str()).collect();
    if names.iter().map(String::as_str).ne(graph_names.iter().copied()) {
        return Err(CalibrateError::Degenerate {
            what: format!("model `{}`", model.name),
            reason: format!("executor blocks {names:?} differ from the cost model's {graph_names:?}"),
        });
    }
    let kind = kind_of(workload.dtype);
    let mut params: HashMap<String, Tensor> = HashMap::new();
    let mut leaves_of: HashMap<String, Vec<Tensor>> = HashMap::new();
    for spec in arch.param_specs() {
        let dtype = if spec.block == "head.proto" { Kind::Float } else { kind };
        let t = spec.init_tensor(1).map_err(|e| model_err(&spec.block, e))?.f_to_device(device)?.f_to_kind(dtype)?.set_requires_grad(true);
        leaves_of.entry(spec.block.clone()).or_default().push(t.shallow_clone());
        params.insert(spec.name.clone(), t);
    }
    let mut bn = BnState::new(&arch, device);
    let mode = Mode::train();
    let mut xs: Vec<Tensor> = workload
        .crops
        .iter()
        .map(|c| {
            let rows = (workload.images * c.count) as i64;
            let r = c.resolution as i64;
            Tensor::f_randn([rows, 3, r, r], (Kind::Float, device))?.f_to_kind(kind)
        })
        .collect::<Result<_, _>>()?;
    let label_suffix = workload_label(workload);
    let mut out = Vec::with_capacity(names.len());
    for (i, name) in names.iter().enumerate() {
        // As step.rs cuts the graph between blocks: images need no gradient.
        let cut = |xs: &[Tensor]| -> Vec<Tensor> { xs.iter().map(|t| if i == 0 { t.detach() } else { t.detach().set_requires_grad(true) }).collect() };
        let block_leaves = leaves_of.get(name).map(Vec::as_slice).unwrap_or(&[]);
        let mut fwd = |xin: &[Tensor], mode: &Mode| arch.forward_block(name, &params, &mut bn, xin, mode).map_err(|e| model_err(name, e));
        let forward = time_calls(budget, &mut || {
            let y = fwd(&cut(&xs), &mode)?;
            drop(y.iter().map(|t| t.detach()).collect::<Vec<_>>());
            Ok::<(), CalibrateError>(())
        })?;
        let forward_no_grad = tch::no_grad(|| time_calls(budget, &mut || fwd(&xs, &mode).map(drop)))?;
        let mem = |e: crate::memstats::MemError| CalibrateError::Degenerate { what: "memory statistics".into(), reason: e.to_string() };
        // What a forward with autograd keeps: everything still allocated
        // while its outputs (and their graph) are held.
        let forward_saved_bytes = {
            let xin = cut(&xs);
            crate::calibrate::sync(device);
            let before = crate::memstats::current(mem_dev).map_err(mem)?;
            let y = fwd(&xin, &mode)?;
            crate::calibrate::sync(device);
            let held = crate::memstats::current(mem_dev).map_err(mem)?;
            drop(y);
            held.0.saturating_sub(before.0)
        };
        let seeds: Vec<Tensor> = fwd(&cut(&xs), &mode)?.iter().map(|y| y.f_randn_like()).collect::<Result<_, _>>()?;
        // One forward + backward; with `measure`, returns the backward's
        // peak above what was held when it started (waiting for the device
        // around it), else 0.
        let mut step = |measure: bool| -> Result<u64, CalibrateError> {
            let xin = cut(&xs);
            let y = fwd(&xin, &mode)?;
            let mut root: Option<Tensor> = None;
            for (yk, gk) in y.iter().zip(&seeds) {
                let t = yk.f_mul(&gk.f_detach()?)?.f_sum(Kind::Float)?;
                root = Some(match root {
                    None => t,
                    Some(a) => a.f_add(&t)?,
                });
            }
            let root = root.ok_or_else(|| CalibrateError::Degenerate { what: format!("block `{name}`"), reason: "no outputs".into() })?;
            let mut wrt: Vec<&Tensor> = xin.iter().filter(|t| t.requires_grad()).collect();
            wrt.extend(block_leaves.iter());
            if !measure {
                drop(Tensor::f_run_backward(&[&root], &wrt, false, false)?);
                return Ok(0);
            }
            crate::calibrate::sync(device);
            let before = crate::memstats::current(mem_dev).map_err(mem)?;
            crate::memstats::reset_peak(mem_dev).map_err(mem)?;
            drop(Tensor::f_run_backward(&[&root], &wrt, false, false)?);
            crate::calibrate::sync(device);
            let peak = crate::memstats::peak(mem_dev).map_err(mem)?;
            Ok(peak.0.saturating_sub(before.0))
        };
        let backward_peak_bytes = step(true)?;
        let forward_backward = time_calls(budget, &mut || step(false).map(drop))?;
        let next = tch::no_grad(|| fwd(&xs, &mode))?;
        let block = graph.block(name).ok_or_else(|| CalibrateError::Degenerate { what: format!("block `{name}`"), reason: "not in the cost model".into() })?;
        let m = BlockMeasurement {
            block: name.clone(),
            key: graph.block_key(block),
            label: format!("{} {name} {label_suffix}", model.name),
            forward,
            forward_no_grad,
            forward_backward,
            backward_peak_bytes,
            forward_saved_bytes: Some(forward_saved_bytes),
            probe_s: None,
        };
        progress(&m.summary());
        out.push(m);
        xs = next.iter().map(|t| t.detach()).collect();
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use cost_models::graph::CropGroup;
    use cost_models::DType;

    #[test]
    fn every_block_of_the_tiny_model_is_timed_under_its_cost_model_key() {
        let model = ModelConfig::load("regnety-tiny").unwrap();
        let w = Workload { images: 2, crops: vec![CropGroup { count: 2, resolution: 16 }, CropGroup { count: 1, resolution: 8 }], dtype: DType::Fp32 };
        let quick = Budget { warmup: 1, min_samples: 2, max_samples: 2, target_sample_s: 1e-4, budget_s: 0.01 };
        let got = measure_blocks(&model, &w, ChannelPadding::Off, &quick, 1, Device::Cpu, |_| {}).unwrap();
        let g = ModelGraph::build_executed(&model, &w, ChannelPadding::Off);
        assert_eq!(got.len(), g.blocks.len());
        for (m, b) in got.iter().zip(&g.blocks) {
            assert_eq!(m.block, b.name);
            assert_eq!(m.key, g.block_key(b));
            assert!(m.forward.median_s > 0.0 && m.forward_backward.median_s > 0.0, "{m:?}");
            // Backward allocates at least the input and parameter gradients.
            assert!(m.backward_peak_bytes > 0, "{m:?}");
            let t = m.to_block_time();
            assert!(t.backward.0 > 0.0 && t.label.contains("b2 2x16+1x8 fp32"), "{t:?}");
        }
        // A different workload is a different key for every block.
        let g2 = ModelGraph::build_executed(&model, &Workload { images: 4, ..w.clone() }, ChannelPadding::Off);
        for (a, b) in g.blocks.iter().zip(&g2.blocks) {
            assert_ne!(g.block_key(a), g2.block_key(b), "{}", a.name);
        }
    }
}
