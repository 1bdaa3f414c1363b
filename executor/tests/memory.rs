//! The counting CPU allocator and in-place storage free/refill.

use cost_models::Bytes;
use executor::memstats::{self, MemDevice};
use executor::storage;
use tch::{Kind, Tensor};

#[test]
fn cpu_counter_sees_an_allocation_and_its_free() {
    memstats::install_cpu_counter().unwrap();
    memstats::install_cpu_counter().unwrap(); // idempotent
    let before = memstats::current(MemDevice::Cpu).unwrap();
    memstats::reset_peak(MemDevice::Cpu).unwrap();
    let n: i64 = 4 << 20; // 16 MiB of f32
    let t = Tensor::ones([n], (Kind::Float, tch::Device::Cpu));
    let (cur, peak) = memstats::stats(MemDevice::Cpu).unwrap();
    assert!(cur.0 >= before.0 + 16 * 1024 * 1024, "current {cur} before {before}");
    assert!(peak.0 >= before.0 + 16 * 1024 * 1024, "peak {peak}");
    drop(t);
    let after = memstats::current(MemDevice::Cpu).unwrap();
    assert!(after.0 + 16 * 1024 * 1024 <= cur.0, "after drop {after}, with tensor {cur}");
    // The peak remembers the allocation until reset.
    assert!(memstats::peak(MemDevice::Cpu).unwrap() >= peak);
    memstats::reset_peak(MemDevice::Cpu).unwrap();
    assert!(memstats::peak(MemDevice::Cpu).unwrap().0 < peak.0);

    // Storage free/refill shows up in the counter too.
    let flat = Tensor::zeros([n], (Kind::Float, tch::Device::Cpu));
    let with = memstats::current(MemDevice::Cpu).unwrap();
    storage::free(&flat).unwrap();
    assert_eq!(storage::nbytes(&flat), Bytes(0));
    assert!(memstats::current(MemDevice::Cpu).unwrap().0 + 16 * 1024 * 1024 <= with.0);
    storage::refill(&flat, storage::full_nbytes(&flat)).unwrap();
    assert_eq!(storage::nbytes(&flat), Bytes(16 * 1024 * 1024));
    assert!(memstats::current(MemDevice::Cpu).unwrap() >= with);
}

#[test]
fn refilled_storage_keeps_autograd_saved_views_valid() {
    // A flat parameter; a view of it is saved by autograd (mul saves its
    // other operand). Free the storage, refill it with new values, then
    // back-propagate: the gradient must use the refilled values.
    let flat = Tensor::zeros([6], (Kind::Float, tch::Device::Cpu)).set_requires_grad(true);
    tch::no_grad(|| flat.shallow_clone().copy_(&Tensor::from_slice(&[1f32, 2., 3., 4., 5., 6.])));
    let w = flat.narrow(0, 2, 3).view([3]);
    let x = Tensor::from_slice(&[10f32, 20., 30.]).set_requires_grad(true);
    let y = (&x * &w).sum(Kind::Float);
    storage::free(&flat).unwrap();
    assert_eq!(storage::nbytes(&flat), Bytes(0));
    storage::refill(&flat, Bytes(6 * 4)).unwrap();
    // Written the way a collective writes (raw bytes, no version bump).
    let new = [0f32, 0., 7., 8., 9., 0.];
    // SAFETY: the refilled storage holds 6 f32s.
    unsafe { std::ptr::copy_nonoverlapping(new.as_ptr(), flat.data_ptr() as *mut f32, 6) };
    let g = Tensor::run_backward(&[&y], &[&x, &flat], false, false);
    assert_eq!(Vec::<f32>::try_from(&g[0]).unwrap(), vec![7., 8., 9.], "dy/dx reads the refilled view");
    assert_eq!(Vec::<f32>::try_from(&g[1]).unwrap(), vec![0., 0., 10., 20., 30., 0.]);
    // The view itself reads the new bytes.
    assert_eq!(Vec::<f32>::try_from(&w.detach()).unwrap(), vec![7., 8., 9.]);
}
