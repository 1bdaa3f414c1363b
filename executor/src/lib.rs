//! The executor: runs a plan for real with libtorch (tch) and PyTorch's c10d.
//!
//! Owns: the tch RegNet-Y + SwAV model, the c10d shim (`csrc/`), the FSDP
//! runtime, activation checkpointing, the data pipeline, the launcher,
//! sharded checkpoints and per-step metrics.
//!
//! Must not know about: search or cost formulas. It measures; the planner
//! predicts. It takes the plan file as the single source of decisions.

pub mod augment;
pub mod block_timing;
pub mod calibrate;
pub mod checkpoint;
pub mod data;
pub mod data_bench;
pub mod decode;
pub mod dist;
pub mod elastic;
pub mod embed;
pub mod fsdp;
pub mod groups;
pub mod knn;
pub mod launch;
pub mod lr_schedule;
pub mod memstats;
pub mod metrics;
pub mod model;
pub mod op_count;
pub mod optim;
pub mod pack;
pub mod padding;
pub mod phase_timer;
pub mod precision;
pub mod reduce;
pub mod reference;
pub mod shards;
pub mod speed_probe;
pub mod step;
pub mod storage;
pub mod stream;
pub mod swav;
pub mod train;
pub mod weights;

/// The device type the executor's entry points take (`cpu`, `cuda:N`).
pub use tch::Device;

/// CUDA devices this process can see (0 without a GPU or a CUDA libtorch).
pub fn cuda_device_count() -> usize {
    tch::Cuda::device_count().max(0) as usize
}

/// What every CUDA run of the executor sets up on its device: cuDNN picks
/// each convolution's fastest algorithm by timing the candidates at the
/// shape's first call (as pycls, timm and VISSL's trainers ask), and the
/// step's synced phase timers wait for this device.
pub(crate) fn cuda_setup(device: usize) {
    tch::Cuda::cudnn_set_benchmark(true);
    phase_timer::set_cuda_device(Some(device));
}
