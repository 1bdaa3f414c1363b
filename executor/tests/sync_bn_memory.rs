//! SyncBN keeps the memory of native BN: it saves the same tensors for
//! backward and adds only per-channel temporaries, so the planner's
//! activation model of BN holds with `--sync-bn`. Its own test binary: the
//! counting allocator is process-wide, and other tests running beside it
//! would move the numbers.

use cost_models::config::ModelConfig;
use executor::memstats::{self, MemDevice};
use executor::model::{BnState, Mode, ModelArch, SyncBn};
use std::collections::HashMap;
use std::time::Duration;
use tch::{Device, Kind, Tensor};

#[test]
fn sync_bn_saves_what_native_bn_saves() {
    memstats::install_cpu_counter().unwrap();
    let pg = executor::dist::ProcessGroup::new(&executor::dist::GroupConfig {
        master_addr: "127.0.0.1".into(),
        master_port: executor::dist::free_port().unwrap(),
        rank: 0,
        world_size: 1,
        backend: executor::dist::Backend::Gloo,
        timeout: Duration::from_secs(30),
    })
    .unwrap();
    let arch = ModelArch::new(&ModelConfig::load("regnety-tiny").unwrap()).unwrap();
    let params: HashMap<String, Tensor> = arch.init_params(0).unwrap().into_iter().map(|(n, t)| (n, t.set_requires_grad(true))).collect();
    tch::manual_seed(3);
    let x = Tensor::randn([8, 3, 32, 32], (Kind::Float, Device::Cpu));
    let sync: &dyn SyncBn = &pg;
    // (bytes held between forward and backward, peak over the pass)
    let measure = |mode: &Mode| -> (i64, i64) {
        let mut bn = BnState::new(&arch, Device::Cpu);
        let base = memstats::current(MemDevice::Cpu).unwrap().0 as i64;
        memstats::reset_peak(MemDevice::Cpu).unwrap();
        let y = arch.forward(&params, &mut bn, &[x.shallow_clone()], mode).unwrap();
        let held = memstats::current(MemDevice::Cpu).unwrap().0 as i64 - base;
        y.sum(Kind::Float).backward();
        drop(y);
        let peak = memstats::peak(MemDevice::Cpu).unwrap().0 as i64 - base;
        for t in params.values() {
            let _ = t.grad().zero_();
        }
        (held, peak)
    };
    // Warm-up: parameter gradients exist from here on, in both passes.
    let _ = measure(&Mode::train());
    // The counter is process-wide and the process group's threads
    // allocate and free now and then (about 1 KB, in one run of a few): the
    // median of five passes is what the pass itself holds; a real
    // regression shows in every pass.
    let median = |mode: &Mode| {
        let (mut held, mut peak): (Vec<i64>, Vec<i64>) = (0..5).map(|_| measure(mode)).unzip();
        held.sort_unstable();
        peak.sort_unstable();
        (held[2], peak[2])
    };
    let native = median(&Mode::train());
    let synced = median(&Mode::train().with_sync_bn(sync));
    // Per BN call SyncBN keeps one extra 4-byte tensor (the global count).
    let bn_calls = arch.bn_layers().len() as i64;
    let held_extra = synced.0 - native.0;
    assert!((0..=4 * bn_calls).contains(&held_extra), "saved for backward: native {} B, SyncBN {} B", native.0, synced.0);
    let peak_extra = synced.1 - native.1;
    assert!(peak_extra.abs() as f64 <= 0.01 * native.1 as f64, "peak: native {} B, SyncBN {} B", native.1, synced.1);
    println!("held for backward: native {} B, SyncBN {} B; peak: native {} B, SyncBN {} B", native.0, synced.0, native.1, synced.1);
}
