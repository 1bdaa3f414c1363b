//! The op counter sees the whole process, so this binary holds one test:
//! nothing else runs beside it.

use executor::op_count::{exclude_this_thread, install, read_back, HostCounts};
use tch::{Device, Kind, Tensor};

#[test]
fn ops_and_reads_are_counted_on_the_calling_thread_only() {
    install().unwrap();
    let before = HostCounts::now();
    let x = Tensor::ones([4], (Kind::Float, Device::Cpu));
    let y = (&x + 1.0).sum(Kind::Float);
    let v = y.double_value(&[]);
    assert_eq!(v, 8.0);
    let mid = HostCounts::now().since(before);
    // ones, add, sum, item (and whatever they call): at least four ops,
    // and exactly one read of a value on the host.
    assert!(mid.ops >= 4, "{mid:?}");
    assert_eq!(mid.syncs, 1, "{mid:?}");
    let back = read_back(&y).unwrap();
    assert_eq!(back, vec![8.0]);
    assert_eq!(HostCounts::now().since(before).syncs, 2);
    // A thread that opts out adds nothing.
    let t0 = HostCounts::now();
    std::thread::spawn(|| {
        exclude_this_thread();
        let _ = Tensor::ones([4], (Kind::Float, Device::Cpu)).sum(Kind::Float).double_value(&[]);
    })
    .join()
    .unwrap();
    assert_eq!(HostCounts::now().since(t0), HostCounts::default());

    // The optimiser's ops per step do not grow with the number of
    // parameter tensors: 8 and 80 parameters in one shard cost the same.
    let optimizer_ops = |params: usize, shards: usize| -> u64 {
        use executor::optim::{FlatShard, OptimConfig, Optimizer, Piece};
        use executor::reduce::local_sum;
        let per = (params / shards) as i64;
        let make = |s: usize| FlatShard {
            param: Tensor::randn([per * 4 + 3], (Kind::Float, Device::Cpu)),
            grad: Tensor::randn([per * 4 + 3], (Kind::Float, Device::Cpu)),
            pieces: (0..per).map(|i| Piece { param: s * per as usize + i as usize, start: 4 * i, len: 4 }).collect(),
        };
        let list: Vec<FlatShard> = (0..shards).map(make).collect();
        let mut opt = Optimizer::new(OptimConfig::seer(), params).unwrap();
        opt.step(&list, 0.1, &local_sum).unwrap();
        let t0 = HostCounts::now();
        opt.step(&list, 0.1, &local_sum).unwrap();
        let c = HostCounts::now().since(t0);
        assert_eq!(c.syncs, 0, "the optimiser read a value back: {c:?}");
        c.ops
    };
    let (few, many) = (optimizer_ops(8, 1), optimizer_ops(80, 1));
    assert_eq!(few, many, "optimiser ops grew with the parameter count");
    let two = optimizer_ops(80, 2);
    assert!(two > many && two < 2 * many, "one shard {many} ops, two {two}");
}
