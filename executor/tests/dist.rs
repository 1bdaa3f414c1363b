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
#[ignore = "worker: run by rendezvous_without_peers_times_out"]
fn worker_rendezvous_without_peers() {
    // Rank 1 of 2 with nobody serving the store: a clear error, bounded.
    let port: u16 = std::env::var("SSC_PORT").unwrap().parse().unwrap();
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
    println!("worker saw: {err}");
}

/// In a child process: libtorch logs the failed connection attempts (with
/// C++ frames) on stderr, which belongs in the child's captured output, not
/// the test log.
#[test]
fn rendezvous_without_peers_times_out() {
    let out = std::process::Command::new(std::env::current_exe().unwrap())
        .args(["--ignored", "--exact", "worker_rendezvous_without_peers", "--nocapture"])
        .env("SSC_PORT", free_port().to_string())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && stdout.contains("worker saw: "), "{stdout}\n{}", String::from_utf8_lossy(&out.stderr));
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

// ------------------------------------------------------------ SyncBN

fn world1_group() -> executor::dist::ProcessGroup {
    executor::dist::ProcessGroup::new(&executor::dist::GroupConfig {
        master_addr: "127.0.0.1".into(),
        master_port: free_port(),
        rank: 0,
        world_size: 1,
        backend: executor::dist::Backend::Gloo,
        timeout: Duration::from_secs(30),
    })
    .unwrap()
}

/// One rank: the collectives are done in place of the backend (identity,
/// or a copy for the out-of-place ones), so they cost no comm time; bad
/// shapes are still errors.
#[test]
fn one_rank_collectives_are_identities() {
    let pg = world1_group();
    let x = Tensor::from_slice(&[1.0f32, 2.0, 3.0, 4.0]);
    let opts = (Kind::Float, tch::Device::Cpu);
    // Like FSDP's full parameter: a leaf that requires grad, with a view
    // autograd saved; refilling it (backward's re-gather) is not an
    // in-place modification that backward would refuse.
    let gathered = Tensor::zeros([4], opts).set_requires_grad(true);
    let saved = gathered.view([2, 2]);
    let loss = (&saved * &saved).sum(Kind::Float);
    pg.all_gather_into_tensor(&gathered, &x).unwrap();
    assert_eq!(vals(&gathered), vals(&x));
    loss.backward();
    assert_eq!(vals(&gathered.grad()), vec![2.0, 4.0, 6.0, 8.0], "backward reads the refilled storage");
    let scattered = Tensor::zeros([4], opts);
    pg.reduce_scatter_tensor(&scattered, &x, ReduceOp::Avg).unwrap();
    assert_eq!(vals(&scattered), vals(&x));
    let t = x.copy();
    pg.all_reduce_(&t, ReduceOp::Sum).unwrap();
    pg.broadcast_(&t, 0).unwrap();
    pg.barrier().unwrap();
    assert_eq!(vals(&t), vals(&x));
    assert_eq!(pg.take_comm_time(), Duration::ZERO);
    assert!(matches!(pg.all_gather_into_tensor(&Tensor::zeros([3], opts), &x), Err(DistError::Invalid { .. })));
    assert!(matches!(pg.broadcast_(&t, 1), Err(DistError::Invalid { .. })));
}

fn max_abs(a: &Tensor, b: &Tensor) -> f64 {
    (a.to_kind(Kind::Double) - b.to_kind(Kind::Double)).abs().max().double_value(&[])
}

/// `(output, x.grad, weight.grad, bias.grad)` of BN followed by an in-place
/// ReLU (as the executor applies it) and a fixed linear loss.
fn bn_then_relu(bn: impl Fn(&Tensor, &Tensor, &Tensor) -> Tensor, x: &Tensor, w: &Tensor, b: &Tensor, dy: &Tensor) -> (Tensor, Tensor, Tensor, Tensor) {
    let (x, w, b) = (x.detach().set_requires_grad(true), w.detach().set_requires_grad(true), b.detach().set_requires_grad(true));
    let mut y = bn(&x, &w, &b);
    let _ = y.relu_();
    (&y * dy).sum(Kind::Float).backward();
    (y.detach(), x.grad(), w.grad(), b.grad())
}

#[test]
fn sync_bn_over_one_rank_equals_native_batch_norm() {
    let pg = world1_group();
    tch::manual_seed(11);
    let opts = (Kind::Float, tch::Device::Cpu);
    for shape in [vec![6i64, 5, 4, 4], vec![12, 5]] {
        // A mean far from 0 relative to the spread: what E[x^2] - E[x]^2 in
        // fp32 would get wrong.
        let x = Tensor::randn(shape.as_slice(), opts) * 3.0 + 20.0;
        let w = Tensor::rand([5], opts) + 0.5;
        let b = Tensor::randn([5], opts);
        let dy = Tensor::randn(shape.as_slice(), opts);
        let (rm0, rv0) = (Tensor::randn([5], opts) * 0.1, Tensor::rand([5], opts) + 0.5);
        let (rm_n, rv_n) = (rm0.copy(), rv0.copy());
        let (rm_s, rv_s) = (rm0.copy(), rv0.copy());
        let native = bn_then_relu(|x, w, b| x.batch_norm(Some(w), Some(b), Some(&rm_n), Some(&rv_n), true, 0.1, 1e-5, false), &x, &w, &b, &dy);
        let sync = bn_then_relu(|x, w, b| pg.sync_batch_norm(x, w, b, Some((&rm_s, &rv_s, 0.1)), 1e-5).unwrap(), &x, &w, &b, &dy);
        let diffs = [
            ("output", max_abs(&native.0, &sync.0)),
            ("input grad", max_abs(&native.1, &sync.1)),
            ("weight grad", max_abs(&native.2, &sync.2)),
            ("bias grad", max_abs(&native.3, &sync.3)),
            ("running mean", max_abs(&rm_n, &rm_s)),
            ("running var", max_abs(&rv_n, &rv_s)),
        ];
        let scale = [native.0.abs().max(), native.1.abs().max(), native.2.abs().max(), native.3.abs().max(), rm_n.abs().max(), rv_n.abs().max()];
        for ((what, d), s) in diffs.iter().zip(&scale) {
            let rel = d / s.double_value(&[]).max(1e-12);
            assert!(rel < 1e-6, "{shape:?} {what}: max |native - sync| {d:e} ({rel:e} of the largest value)");
        }
        assert!(!rm_s.equal(&rm0), "running mean was not updated");
        println!("{shape:?}: {diffs:?}");
        // No running stats (a recompute pass): they stay as they are.
        let (rm_k, rv_k) = (rm0.copy(), rv0.copy());
        let y = pg.sync_batch_norm(&x, &w, &b, None, 1e-5).unwrap();
        assert!(max_abs(&y.relu(), &sync.0) < 1e-6, "output without running stats differs");
        assert!(rm_k.equal(&rm0) && rv_k.equal(&rv0));
    }
}

#[test]
fn sync_bn_reduced_precision_input_keeps_fp32_statistics() {
    let pg = world1_group();
    tch::manual_seed(12);
    let opts = (Kind::Float, tch::Device::Cpu);
    let x = (Tensor::randn([8, 4, 3, 3], opts) * 2.0 + 1.0).to_kind(Kind::BFloat16);
    let (w, b) = (Tensor::rand([4], opts) + 0.5, Tensor::randn([4], opts));
    let dy = Tensor::randn([8, 4, 3, 3], opts).to_kind(Kind::BFloat16);
    let (rm_n, rv_n) = (Tensor::zeros([4], opts), Tensor::ones([4], opts));
    let (rm_s, rv_s) = (Tensor::zeros([4], opts), Tensor::ones([4], opts));
    let native = bn_then_relu(|x, w, b| x.batch_norm(Some(w), Some(b), Some(&rm_n), Some(&rv_n), true, 0.1, 1e-5, false), &x, &w, &b, &dy);
    let sync = bn_then_relu(|x, w, b| pg.sync_batch_norm(x, w, b, Some((&rm_s, &rv_s, 0.1)), 1e-5).unwrap(), &x, &w, &b, &dy);
    assert_eq!((sync.0.kind(), sync.1.kind(), sync.2.kind(), rm_s.kind()), (Kind::BFloat16, Kind::BFloat16, Kind::Float, Kind::Float));
    // Statistics in fp32 on both sides: running stats agree to fp32, the
    // bf16 tensors to bf16 rounding.
    assert!(max_abs(&rm_n, &rm_s) < 1e-6 && max_abs(&rv_n, &rv_s) < 1e-6, "{} {}", max_abs(&rm_n, &rm_s), max_abs(&rv_n, &rv_s));
    for (what, a, b, tol) in [("output", &native.0, &sync.0, 2e-2), ("input grad", &native.1, &sync.1, 2e-2), ("weight grad", &native.2, &sync.2, 1e-3)] {
        let d = max_abs(a, b) / a.to_kind(Kind::Float).abs().max().double_value(&[]);
        assert!(d < tol, "{what}: relative difference {d}");
    }
}

#[test]
fn sync_bn_bad_arguments_are_errors() {
    let pg = world1_group();
    let opts = (Kind::Float, tch::Device::Cpu);
    let x = Tensor::randn([4, 3, 2, 2], opts);
    let (w, b) = (Tensor::ones([3], opts), Tensor::zeros([3], opts));
    let e = pg.sync_batch_norm(&x, &Tensor::ones([4], opts), &b, None, 1e-5).unwrap_err();
    assert!(matches!(e, DistError::Collective { .. }) && e.to_string().contains("must be [3]"), "{e}");
    let e = pg.sync_batch_norm(&x.narrow(0, 0, 1).narrow(2, 0, 1).narrow(3, 0, 1), &w, &b, None, 1e-5).unwrap_err();
    assert!(e.to_string().contains("more than 1 value per channel"), "{e}");
    let e = pg.sync_batch_norm(&x, &w, &b, Some((&Tensor::zeros([3], opts), &Tensor::ones([3], opts), 1.5)), 1e-5).unwrap_err();
    assert!(matches!(e, DistError::Invalid { .. }), "{e}");
    let e = pg.sync_batch_norm(&x, &w, &b, Some((&Tensor::zeros([3], (Kind::Double, tch::Device::Cpu)), &Tensor::ones([3], opts), 0.1)), 1e-5).unwrap_err();
    assert!(e.to_string().contains("fp32"), "{e}");
}

#[test]
#[ignore = "worker: run by sync_bn_dead_peer_is_an_error_not_a_hang"]
fn worker_sync_bn_dead_peer() {
    let pg = group(Duration::from_secs(5));
    let opts = (Kind::Float, tch::Device::Cpu);
    let x = Tensor::randn([4, 3, 2, 2], opts).set_requires_grad(true);
    let (w, b) = (Tensor::ones([3], opts).set_requires_grad(true), Tensor::zeros([3], opts).set_requires_grad(true));
    // Both ranks finish a forward (its all-reduce is matched), then rank 1
    // dies before backward.
    let y = pg.sync_batch_norm(&x, &w, &b, None, 1e-5).unwrap();
    if pg.rank() == 1 {
        std::process::abort();
    }
    let start = Instant::now();
    let err = Tensor::f_run_backward(&[y.sum(Kind::Float)], &[&x, &w, &b], false, false).unwrap_err();
    assert!(start.elapsed() < Duration::from_secs(20), "backward took {:?}", start.elapsed());
    assert!(err.to_string().contains("SyncBN backward all-reduce failed"), "{err}");
    // A later forward fails too, as a DistError.
    let err2 = pg.sync_batch_norm(&x, &w, &b, None, 1e-5).unwrap_err();
    assert!(matches!(err2, DistError::PeerLost { .. } | DistError::Timeout { .. }), "{err2}");
    assert!(start.elapsed() < Duration::from_secs(30), "took {:?}", start.elapsed());
    println!("rank 0 saw in backward: {err}\nrank 0 saw in forward: {err2}");
}

#[test]
fn sync_bn_dead_peer_is_an_error_not_a_hang() {
    let dir = temp_dir("syncbn-dead");
    let t = Instant::now();
    let outs = run_ranks("worker_sync_bn_dead_peer", 2, &dir, &[], Duration::from_secs(60));
    assert!(t.elapsed() < Duration::from_secs(50), "took {:?}", t.elapsed());
    assert!(!outs[1].status.success());
    let o0 = String::from_utf8_lossy(&outs[0].stdout);
    assert!(outs[0].status.success() && o0.contains("rank 0 saw in backward"), "rank 0:\n{o0}\n{}", String::from_utf8_lossy(&outs[0].stderr));
    println!("{}", o0.lines().filter(|l| l.contains("rank 0 saw")).collect::<Vec<_>>().join("\n"));
}
