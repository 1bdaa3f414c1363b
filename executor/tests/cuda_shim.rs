//! The shim's CUDA/NCCL half (`csrc/cuda.cpp`): built whenever its headers
//! are there, failing with a plain error (not a crash) on a machine without a
//! GPU, and — where there is one — a single-rank NCCL group and the caching
//! allocator's statistics working.

use executor::dist::{free_port, nccl_available, Backend, DistError, GroupConfig, ProcessGroup, CUDA_SHIM as SHIM};
use executor::memstats::{self, MemDevice};
use std::path::Path;
use std::time::Duration;

fn nccl_group(device: usize) -> Result<ProcessGroup, DistError> {
    ProcessGroup::new(&GroupConfig {
        master_addr: "127.0.0.1".into(),
        master_port: free_port().unwrap(),
        rank: 0,
        world_size: 1,
        backend: Backend::Nccl { device },
        timeout: Duration::from_secs(30),
    })
}

#[test]
fn nccl_half_matches_the_build_cfg() {
    assert_eq!(nccl_available(), cfg!(seerscale_cuda), "SEERSCALE_CUDA_SHIM={SHIM}");
    assert_eq!(SHIM == "on", cfg!(seerscale_cuda), "SEERSCALE_CUDA_SHIM={SHIM}");
}

/// `scripts/setup` fetched the headers the pip wheels lack, so the CUDA half
/// must have been compiled (unless turned off, or libtorch has no CUDA): this
/// catches a build.rs that silently stops finding them and leaves the GPU
/// code unchecked.
#[test]
fn cuda_half_is_built_when_setup_fetched_its_headers() {
    let fetched = Path::new(env!("CARGO_MANIFEST_DIR")).join("../.cuda-headers/include/crt/host_config.h");
    if fetched.exists() {
        assert!(!SHIM.starts_with("off-no-headers"), "headers at {} but: {SHIM}", fetched.display());
    }
}

#[test]
fn cuda_calls_without_a_gpu_fail_plainly() {
    if tch::Cuda::is_available() {
        return; // covered by the GPU test below
    }
    let want = if cfg!(seerscale_cuda) { "no CUDA device is visible" } else { "built without CUDA" };
    let e = memstats::stats(MemDevice::Cuda(0)).unwrap_err().to_string();
    assert!(e.contains(want), "{e}");
    let e = memstats::reset_peak(MemDevice::Cuda(0)).unwrap_err().to_string();
    assert!(e.contains(want), "{e}");
    let e = memstats::describe_cuda(0).unwrap_err().to_string();
    assert!(e.contains(want), "{e}");
    match nccl_group(0) {
        Err(DistError::Invalid { msg, .. }) if cfg!(seerscale_cuda) => assert!(msg.contains(want), "{msg}"),
        Err(DistError::Unsupported(msg)) if !cfg!(seerscale_cuda) => assert!(msg.contains(SHIM), "{msg}"),
        Err(e) => panic!("unexpected error: {e}"),
        Ok(_) => panic!("an NCCL group without a GPU"),
    }
}

#[cfg(seerscale_cuda)]
#[test]
#[ignore = "needs a CUDA GPU (scripts/device-check runs it with --include-ignored)"]
fn nccl_single_rank_and_cuda_memory_stats_on_gpu() {
    use executor::dist::ReduceOp;
    use tch::{Device, Kind, Tensor};
    assert!(tch::Cuda::is_available(), "no CUDA device is visible: run it where there is one");
    let vals = |t: &Tensor| Vec::<f32>::try_from(t.to_device(Device::Cpu).to_kind(Kind::Float).reshape([-1])).unwrap();
    let dev = MemDevice::Cuda(0);
    // Before any CUDA tensor: the shim initialises CUDA itself.
    memstats::reset_peak(dev).unwrap();
    let before = memstats::current(dev).unwrap().0;
    let t = Tensor::ones([1 << 20], (Kind::Float, Device::Cuda(0)));
    let (cur, peak) = memstats::stats(dev).unwrap();
    assert!(cur.0 >= before + (4 << 20), "current {} after a 4 MiB tensor (before {before})", cur.0);
    assert!(peak.0 >= cur.0);
    drop(t);
    let e = memstats::stats(MemDevice::Cuda(1000)).unwrap_err().to_string();
    assert!(e.contains("does not exist"), "{e}");

    let pg = nccl_group(0).unwrap();
    let x = Tensor::from_slice(&[1.0f32, 2.0]).to_device(Device::Cuda(0));
    pg.all_reduce_(&x, ReduceOp::Avg).unwrap();
    assert_eq!(vals(&x), vec![1.0, 2.0]);
    let out = Tensor::zeros([2], (Kind::BFloat16, Device::Cuda(0)));
    pg.all_gather_into_tensor(&out, &x.to_kind(Kind::BFloat16)).unwrap();
    assert_eq!(vals(&out), vec![1.0, 2.0]);
    let rs = Tensor::zeros([2], (Kind::Float, Device::Cuda(0)));
    pg.reduce_scatter_tensor(&rs, &x, ReduceOp::Sum).unwrap();
    assert_eq!(vals(&rs), vec![1.0, 2.0]);
    pg.barrier().unwrap();
    let d = memstats::describe_cuda(0).unwrap();
    assert!(d.contains("SMs") && d.contains("cuDNN") && d.contains("NCCL"), "{d}");
}

/// Block timing on the GPU (what `calibrate --device cuda --recipe` runs):
/// every block timed under its cost-model key, with the forward's saved
/// bytes and the backward's peak from the caching allocator.
#[cfg(seerscale_cuda)]
#[test]
#[ignore = "needs a CUDA GPU (scripts/device-check runs it with --include-ignored)"]
fn blocks_are_timed_on_the_gpu() {
    use cost_models::config::ModelConfig;
    use cost_models::graph::{CropGroup, ModelGraph, Workload};
    use cost_models::padding::ChannelPadding;
    use cost_models::DType;
    use executor::block_timing::measure_blocks;
    use executor::calibrate::Budget;
    assert!(tch::Cuda::is_available(), "no CUDA device is visible: run it where there is one");
    let model = ModelConfig::load("regnety-tiny").unwrap();
    let w = Workload { images: 4, crops: vec![CropGroup { count: 2, resolution: 32 }, CropGroup { count: 2, resolution: 16 }], dtype: DType::Bf16 };
    let got = measure_blocks(&model, &w, ChannelPadding::Off, &Budget::quick(), 1, tch::Device::Cuda(0), |_| {}).unwrap();
    let g = ModelGraph::build_executed(&model, &w, ChannelPadding::Off);
    assert_eq!(got.len(), g.blocks.len());
    for (m, b) in got.iter().zip(&g.blocks) {
        assert_eq!(m.key, g.block_key(b));
        assert!(m.forward.median_s > 0.0 && m.forward_backward.median_s >= m.forward.median_s * 0.5, "{m:?}");
        assert!(m.forward_saved_bytes.is_some_and(|s| s > 0) && m.backward_peak_bytes > 0, "{m:?}");
    }
}
