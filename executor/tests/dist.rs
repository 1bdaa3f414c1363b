//! c10d collectives through the shim, 2 and 4 real processes over Gloo.

mod common;
use common::*;
use executor::dist::{DistError, ReduceOp};
use std::time::{Duration, Instant};
use tch::{Kind, Tensor};

fn vals(t: &Tensor) -> Vec<f32> {
    Vec::<f32>::try_from(t.to_kind(Kind::Float).reshape([-1])).unwrap()
}

#[test]
#[ignore = "worker: run by collectives_2_and_4_ranks"]
fn worker_collectives() {
    let pg = group(Duration::from_secs(30));
    let (r, w) = (pg.rank() as f32, pg.world_size());
    let n = w as i64;
    for kind in [Kind::Float, Kind::BFloat16] {
        // all-gather: rank r contributes [r+1, r+1, r+1].
        let x = Tensor::full([3], (r + 1.0) as f64, (kind, tch::Device::Cpu));
        let out = Tensor::zeros([3 * n], (kind, tch::Device::Cpu));
        pg.all_gather_into_tensor(&out, &x).unwrap();
        let want: Vec<f32> = (0..w).flat_map(|k| [k as f32 + 1.0; 3]).collect();
        assert_eq!(vals(&out), want, "all_gather {kind:?}");

        // reduce-scatter: input arange(2n) * (r+1); chunk k of the sum.
        let inp = (Tensor::arange(2 * n, (Kind::Float, tch::Device::Cpu)) * (r as f64 + 1.0)).to_kind(kind);
        let rs = Tensor::zeros([2], (kind, tch::Device::Cpu));
        pg.reduce_scatter_tensor(&rs, &inp, ReduceOp::Sum).unwrap();
        let s: f32 = (1..=w).map(|k| k as f32).sum();
        let me = pg.rank() as f32;
        assert_eq!(vals(&rs), vec![2.0 * me * s, (2.0 * me + 1.0) * s], "reduce_scatter {kind:?}");

        let rs_avg = Tensor::zeros([2], (kind, tch::Device::Cpu));
        pg.reduce_scatter_tensor(&rs_avg, &inp, ReduceOp::Avg).unwrap();
        assert_eq!(vals(&rs_avg), vec![2.0 * me * s / w as f32, (2.0 * me + 1.0) * s / w as f32]);
    }
    // all-reduce sum / avg / max.
    let t = Tensor::from_slice(&[r + 1.0, -r]);
    pg.all_reduce_(&t, ReduceOp::Sum).unwrap();
    let s: f32 = (1..=w).map(|k| k as f32).sum();
    assert_eq!(vals(&t), vec![s, -(s - w as f32)]);
    let t = Tensor::from_slice(&[r + 1.0]);
    pg.all_reduce_(&t, ReduceOp::Avg).unwrap();
    assert_eq!(vals(&t), vec![s / w as f32]);
    let t = Tensor::from_slice(&[r, -r]);
    pg.all_reduce_(&t, ReduceOp::Max).unwrap();
    assert_eq!(vals(&t), vec![w as f32 - 1.0, 0.0]);
    // broadcast from the last rank.
    let t = Tensor::from_slice(&[r * 10.0, 7.0]);
    pg.broadcast_(&t, w - 1).unwrap();
    assert_eq!(vals(&t), vec![(w as f32 - 1.0) * 10.0, 7.0]);
    // async: two gathers in flight, waited in reverse order.
    let a = Tensor::zeros([n], (Kind::Float, tch::Device::Cpu));
    let b = Tensor::zeros([n], (Kind::Float, tch::Device::Cpu));
    let xa = Tensor::from_slice(&[r]);
    let xb = Tensor::from_slice(&[r * 2.0]);
    let wa = pg.all_gather_into(&a, &xa).unwrap();
    let wb = pg.all_gather_into(&b, &xb).unwrap();
    wb.wait().unwrap();
    wa.wait().unwrap();
    assert_eq!(vals(&a), (0..w).map(|k| k as f32).collect::<Vec<_>>());
    assert_eq!(vals(&b), (0..w).map(|k| 2.0 * k as f32).collect::<Vec<_>>());
    // Bad sizes are errors, not crashes.
    let bad = Tensor::zeros([5], (Kind::Float, tch::Device::Cpu));
    assert!(matches!(pg.all_gather_into_tensor(&bad, &xa), Err(DistError::Invalid { .. })));
    pg.barrier().unwrap();
    println!("rank {} ok", pg.rank());
}

#[test]
fn collectives_2_and_4_ranks() {
    for world in [2, 4] {
        let dir = temp_dir("dist");
        let outs = run_ranks("worker_collectives", world, &dir, &[], Duration::from_secs(120));
        assert_all_ok(&outs);
        for o in &outs {
            assert!(String::from_utf8_lossy(&o.stdout).contains(" ok"));
        }
    }
}

#[test]
#[ignore = "worker: run by dead_peer_is_an_error_not_a_hang"]
fn worker_dead_peer() {
    let pg = group(Duration::from_secs(5));
    let t = Tensor::from_slice(&[1.0f32]);
    pg.all_reduce_(&t, ReduceOp::Sum).unwrap();
    if pg.rank() == 1 {
        std::process::abort();
    }
    let start = Instant::now();
    let err = pg.all_reduce_(&t, ReduceOp::Sum).and_then(|_| pg.all_reduce_(&t, ReduceOp::Sum)).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(20));
    assert!(matches!(err, DistError::PeerLost { .. } | DistError::Timeout { .. }), "{err}");
    println!("rank 0 saw: {err}");
}

#[test]
fn dead_peer_is_an_error_not_a_hang() {
    let dir = temp_dir("dead");
    let t = Instant::now();
    let outs = run_ranks("worker_dead_peer", 2, &dir, &[], Duration::from_secs(60));
    assert!(t.elapsed() < Duration::from_secs(50), "took {:?}", t.elapsed());
    assert!(!outs[1].status.success());
    let o0 = String::from_utf8_lossy(&outs[0].stdout);
    assert!(outs[0].status.success() && o0.contains("rank 0 saw"), "rank 0:\n{o0}\n{}", String::from_utf8_lossy(&outs[0].stderr));
}

#[test]
fn rendezvous_without_peers_times_out() {
    // Rank 1 of 2 with nobody serving the store: a clear error, bounded.
    let port = free_port();
    let t = Instant::now();
    let err = executor::dist::ProcessGroup::new(&executor::dist::GroupConfig {
        master_addr: "127.0.0.1".into(),
        master_port: port,
        rank: 1,
        world_size: 2,
        backend: executor::dist::Backend::Gloo,
        timeout: Duration::from_secs(3),
    })
    .err()
    .expect("must fail");
    assert!(t.elapsed() < Duration::from_secs(30), "{:?}", t.elapsed());
    assert!(matches!(err, DistError::Init { .. }), "{err}");
    assert!(err.to_string().contains(&port.to_string()), "{err}");
}

#[test]
#[ignore = "worker: run by a_stuck_peer_times_out"]
fn worker_stuck_peer() {
    let pg = group(Duration::from_secs(2));
    let t = Tensor::from_slice(&[1.0f32]);
    pg.all_reduce_(&t, ReduceOp::Sum).unwrap();
    if pg.rank() == 1 {
        // Alive but not taking part (a hang, not a crash).
        std::thread::sleep(Duration::from_secs(8));
        let _ = pg.all_reduce_(&t, ReduceOp::Sum);
        return;
    }
    let start = Instant::now();
    let err = pg.all_reduce_(&t, ReduceOp::Sum).unwrap_err();
    let took = start.elapsed();
    assert!(took < Duration::from_secs(7), "took {took:?}");
    assert!(matches!(err, DistError::Timeout { .. } | DistError::PeerLost { .. }), "{err}");
    println!("rank 0 gave up after {took:?}: {err}");
}

#[test]
fn a_stuck_peer_times_out() {
    let dir = temp_dir("stuck");
    let outs = run_ranks("worker_stuck_peer", 2, &dir, &[], Duration::from_secs(60));
    let o0 = String::from_utf8_lossy(&outs[0].stdout);
    assert!(outs[0].status.success() && o0.contains("gave up"), "rank 0:\n{o0}\n{}", String::from_utf8_lossy(&outs[0].stderr));
    println!("{}", o0.lines().find(|l| l.contains("gave up")).unwrap_or(""));
}
