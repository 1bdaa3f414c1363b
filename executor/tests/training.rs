//! The engine end to end on CPU ranks over Gloo: equivalence across world
//! sizes, checkpointing/resharding invariance, resume, a killed rank, and
//! the loss going down on the bundled photos with regnety-tiny.

mod common;
use common::*;
use cost_models::config::ModelConfig;
use cost_models::padding::ChannelPadding;
use executor::augment::{AugmentConfig, CropSpec};
use executor::data::DataPosition;
use executor::fsdp::UnitSpec;
use executor::groups::RankGroups;
use executor::launch::{self, LaunchError, LaunchOptions, RankEnv};
use executor::model::ModelArch;
use executor::optim::{Larc, OptimConfig};
use executor::precision::ComputePrecision;
use executor::reference::ReferenceTrainer;
use executor::swav::SwavLossConfig;
use executor::train::{self, TrainConfig, Trainer};
use runspec::schedule::BackwardOrder;
use runspec::sharding::Sharding;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use tch::{Device, Tensor};

const GLOBAL_BATCH: usize = 16;

fn photos() -> PathBuf {
    // Tests run in executor/; the link lives at the workspace root.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    std::env::var_os("SEERSCALE_PHOTOS").map(PathBuf::from).map(|p| if p.is_absolute() { p } else { root.join(p) }).unwrap_or(root.join(".photos"))
}

/// Units: stem and head.proto left to `root`... no: `stem` in root, one unit
/// per residual block, the first block's grouped conv its own (nested)
/// unit, `head.mlp` and `head.proto` units.
fn test_units(blocks: &[String]) -> Vec<UnitSpec> {
    let mut u = Vec::new();
    for b in blocks.iter().filter(|b| b.starts_with('s')) {
        if b == "s1.b0" {
            u.push(UnitSpec { name: "s1.b0.b".into(), members: vec!["s1.b0.b".into()] });
        }
        u.push(UnitSpec { name: b.clone(), members: vec![b.clone()] });
    }
    u.push(UnitSpec { name: "head.mlp".into(), members: vec!["head.mlp".into()] });
    u.push(UnitSpec { name: "head.proto".into(), members: vec!["head.proto".into()] });
    u
}

/// The tiny-cpu recipe's run with `world` ranks sharing a global batch of 8.
fn config(world: usize, out: &Path, ckpt: bool, reshard: bool) -> TrainConfig {
    let model = ModelConfig::load("regnety-tiny").unwrap();
    let blocks = ModelArch::new(&model).unwrap().block_names();
    // A segment of two blocks and one of a single block.
    let segments = if ckpt { vec![vec![blocks[1].clone(), blocks[2].clone()], vec![blocks[4].clone()]] } else { vec![] };
    let images_per_rank = GLOBAL_BATCH / world;
    TrainConfig {
        units: test_units(&blocks),
        model,
        checkpoint_segments: segments,
        reshard_after_forward: reshard,
        backward_order: BackwardOrder::Together,
        channel_padding: ChannelPadding::Off,
        precision: ComputePrecision::Fp32,
        fp32_reduce: true,
        images_per_rank,
        augment: AugmentConfig::with_crops(vec![
            CropSpec { count: 2, resolution: 32, scale: (0.14, 1.0) },
            CropSpec { count: 2, resolution: 16, scale: (0.05, 0.14) },
        ]),
        swav: SwavLossConfig { temperature: 0.1, epsilon: 0.05, sinkhorn_iters: 3, crops_for_assign: vec![0, 1], queue_length: 0, queue_start_iter: 0 },
        optim: OptimConfig::Sgd { momentum: 0.9, weight_decay: 1e-6, larc: Some(Larc { trust: 0.001, ..Larc::default() }) },
        lr_per_256: 0.6,
        warmup_fraction: 0.1,
        // Every rank on one node, as the local launcher runs them: no
        // warm-up (VISSL on one node), so every world size has one schedule.
        ranks_per_node: 8,
        freeze_prototypes_iters: 0,
        steps: 30,
        stop_after: None,
        seed: 7,
        data_dir: photos(),
        workers: 1,
        prefetch: 2,
        shuffle_buffer: 16,
        out_dir: out.to_path_buf(),
        checkpoint_every: None,
        resume: false,
        resume_required: false,
        // BN statistics over groups of 4 images, whatever the world size.
        bn_groups: images_per_rank / 4,
        sync_bn: false,
        sync_bn_group: None,
        sharding: sharding_from_env(world),
        device: Device::Cpu,
        timeout: Duration::from_secs(60),
        predicted: Default::default(),
        progress: false,
        record_events: false,
    }
}

/// The sharding a worker runs (`SSC_SHARDING`: ddp, fsdp, hybrid:S;
/// default FSDP over the world).
fn sharding_from_env(world: usize) -> Sharding {
    std::env::var("SSC_SHARDING").ok().map_or(Sharding::fsdp(world), |s| s.parse::<Sharding>().unwrap().resolved(world))
}

/// The worker's process groups for its sharding.
fn groups(cfg: &TrainConfig) -> RankGroups {
    RankGroups::new(group(Duration::from_secs(60)), cfg.sharding, cfg.sync_bn_group).unwrap()
}

fn env_of(rank: usize, world: usize, port: u16) -> RankEnv {
    RankEnv { rank, world_size: world, local_rank: rank, master_addr: "127.0.0.1".into(), master_port: port }
}

fn write_losses(path: &Path, losses: &[f64]) {
    std::fs::write(path, serde_json::to_string(losses).unwrap()).unwrap();
}
fn read_losses(path: &Path) -> Vec<f64> {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

fn rel_diff(a: &Tensor, b: &Tensor) -> f64 {
    let d = (a - b).norm().double_value(&[]);
    let n = a.norm().double_value(&[]).max(1e-12);
    d / n
}

/// Per-tensor relative differences of `b` from `a`, worst first, split into
/// the zero-initialised tensors (the BN biases) and the rest.
///
/// Why the split: a zero tensor has norm 0, so at step 0 LARC leaves its
/// update unscaled (apex: a zero norm skips the trust ratio) and momentum
/// carries that step on; after a few steps a BN bias is almost exactly a
/// multiple of its first gradient, so its relative error *is* that
/// gradient's, undiluted. And a BN bias gradient is a badly conditioned
/// fp32 sum: sum(dy) over the batch, where dy has had its per-channel mean
/// taken out by the next BN's backward (only ReLU masks and SE put some
/// back). For `s1.b0.b_bn.bias` on the test batch sum|dy| / |sum dy| is about
/// 60 (85 per channel in the median), so any change of summation order
/// moves it by a few 1e-6: one process with the images of each BN group
/// reversed, the same arithmetic otherwise, differs from itself by 3.7e-6
/// (BN over 16 images) and 6.0e-6 (groups of 4) on that tensor. Every other
/// tensor moves by about trust x lr of its norm per step, which dilutes its
/// gradient's rounding by ~1000x.
type Diffs = Vec<(f64, String)>;

fn tensor_diffs(a: &std::collections::BTreeMap<String, Tensor>, b: &std::collections::BTreeMap<String, Tensor>) -> (Diffs, Diffs) {
    let zero_init: std::collections::HashSet<String> = ModelArch::new(&ModelConfig::load("regnety-tiny").unwrap())
        .unwrap()
        .param_specs()
        .into_iter()
        .filter(|p| p.init == executor::model::Init::Zeros)
        .map(|p| p.name)
        .collect();
    let (mut zero, mut rest) = (Vec::new(), Vec::new());
    for (n, t) in a {
        let d = (rel_diff(t, &b[n]), n.clone());
        if zero_init.contains(n) {
            zero.push(d);
        } else {
            rest.push(d);
        }
    }
    for v in [&mut zero, &mut rest] {
        v.sort_by(|x, y| y.0.total_cmp(&x.0));
    }
    assert!(!zero.is_empty() && !rest.is_empty());
    (zero, rest)
}

// ------------------------------------------------------------ equivalence

#[test]
#[ignore = "worker: run by world_sizes_1_2_4_and_every_sharding_agree_in_fp32"]
fn worker_equivalence() {
    let (rank, world, _, dir) = worker_env();
    let mut cfg = config(world, &dir.join(format!("w{world}")), true, true);
    cfg.stop_after = Some(3);
    let groups = groups(&cfg);
    let label = if cfg.sharding.strategy == runspec::sharding::Strategy::Fsdp { format!("w{world}") } else { format!("w{world}-{}", cfg.sharding) };
    let mut t = Trainer::new(&groups, &cfg).unwrap();
    let report = t.fit().unwrap();
    let params = t.fsdp().full_params().unwrap();
    if world == 1 {
        // The same 3 steps with plain autograd over the unsharded model.
        let mut r = ReferenceTrainer::new(&cfg.model, cfg.seed, cfg.optim.clone(), cfg.swav.clone(), cfg.bn_groups, Device::Cpu).unwrap();
        let sched = cfg.lr_schedule(1);
        let mut losses = Vec::new();
        let per_epoch = (executor::data::ImageFolder::open(&cfg.data_dir).unwrap().len() / GLOBAL_BATCH) as u64;
        for step in 0..3u64 {
            let pos = DataPosition { epoch: step / per_epoch, step: step % per_epoch };
            let b = train::load_batch(&cfg.data_dir, &cfg, 0, 1, pos).unwrap();
            losses.push(r.step(&b.groups, &b.layout, sched.lr(step)).unwrap());
        }
        write_losses(&dir.join("losses_ref.json"), &losses);
        Tensor::save_multi(&r.params.iter().map(|(n, t)| (n.replace('.', ":"), t.detach())).collect::<Vec<_>>(), dir.join("params_ref.pt")).unwrap();
    }
    if rank == 0 {
        let losses: Vec<f64> = report.metrics.iter().map(|m| m.loss).collect();
        write_losses(&dir.join(format!("losses_{label}.json")), &losses);
        Tensor::save_multi(&params.iter().map(|(n, t)| (n.replace('.', ":"), t)).collect::<Vec<_>>(), dir.join(format!("params_{label}.pt"))).unwrap();
    }
}

// ---------------------------------------------------------- channel padding

/// regnety-tiny with a group width of 6: every width (6, 18, 30, 66 and
/// their SE squeezes) off the tensor-core multiples.
fn unaligned_model() -> ModelConfig {
    let mut m = ModelConfig::load("regnety-tiny").unwrap();
    m.regnet.group_width = 6;
    m.name = "regnety-tiny-g6".into();
    m
}

#[test]
#[ignore = "worker: run by padded_channels_train_the_same_model"]
fn worker_padding() {
    let (rank, world, _, dir) = worker_env();
    let padding = if std::env::var("SSC_PADDING").as_deref() == Ok("on") { ChannelPadding::On } else { ChannelPadding::Off };
    let bf16 = std::env::var("SSC_PRECISION").as_deref() == Ok("bf16");
    let mut cfg = config(world, &dir.join("run"), true, true);
    cfg.model = unaligned_model();
    cfg.channel_padding = padding;
    cfg.precision = if bf16 { ComputePrecision::Bf16 } else { ComputePrecision::Fp32 };
    cfg.stop_after = Some(3);
    let groups = groups(&cfg);
    let mut t = Trainer::new(&groups, &cfg).unwrap();
    let report = t.fit().unwrap();
    // What leaves the executor: the full (unpadded) parameters and BN buffers.
    let params = t.fsdp().full_params().unwrap();
    if rank == 0 {
        let label = format!("{}-{}-{}", cfg.sharding, if bf16 { "bf16" } else { "fp32" }, padding.name());
        write_losses(&dir.join(format!("losses_{label}.json")), &report.metrics.iter().map(|m| m.loss).collect::<Vec<_>>());
        let mut out: Vec<(String, Tensor)> = params.iter().map(|(n, t)| (n.replace('.', ":"), t.shallow_clone())).collect();
        out.extend(t.bn().buffers().into_iter().map(|(n, b)| (format!("bn:{}", n.replace('.', ":")), b.copy())));
        Tensor::save_multi(&out, dir.join(format!("model_{label}.pt"))).unwrap();
    }
}

/// The padded and the unpadded model train alike: same losses, and the
/// same exported parameters and BN buffers (unpadded in both), under
/// FSDP, hybrid and DDP, in fp32 and bf16. The padded run's convolutions
/// see other shapes (other kernels, other summation orders), so they agree
/// to rounding, not bit for bit.
#[test]
fn padded_channels_train_the_same_model() {
    let dir = temp_dir("padding");
    let arch = ModelArch::with_padding(&unaligned_model(), ChannelPadding::On).unwrap();
    assert!(arch.padding.is_some());
    let runs = [(2, "fsdp"), (4, "hybrid:2"), (2, "ddp")];
    for (world, sharding) in runs {
        for precision in ["fp32", "bf16"] {
            for padding in ["off", "on"] {
                let env = [
                    ("OMP_NUM_THREADS", "1".into()),
                    ("SSC_SHARDING", sharding.to_string()),
                    ("SSC_PADDING", padding.into()),
                    ("SSC_PRECISION", precision.into()),
                ];
                let outs = run_ranks("worker_padding", world, &dir, &env, Duration::from_secs(240));
                assert_all_ok(&outs);
            }
        }
    }
    let load = |label: &str| -> std::collections::BTreeMap<String, Tensor> {
        Tensor::load_multi(dir.join(format!("model_{label}.pt"))).unwrap().into_iter().map(|(n, t)| (n.replace(':', "."), t)).collect()
    };
    let init = ModelArch::new(&unaligned_model()).unwrap().init_params(7).unwrap();
    for (world, sharding) in runs {
        let sharding = sharding.parse::<Sharding>().unwrap().resolved(world);
        // Rounding grows with every LARC step: fp32 losses differ by about
        // 1e-5 after three steps, tensors by 5e-5; bf16 by 3e-4 and 5e-3.
        for (precision, loss_tol, tensor_tol) in [("fp32", 1e-4, 5e-4), ("bf16", 2e-3, 2e-2)] {
            let label = |p: &str| format!("{sharding}-{precision}-{p}");
            let (off, on) = (read_losses(&dir.join(format!("losses_{}.json", label("off")))), read_losses(&dir.join(format!("losses_{}.json", label("on")))));
            assert_eq!(off.len(), 3);
            for (s, (a, b)) in off.iter().zip(&on).enumerate() {
                assert!(((a - b) / a).abs() < loss_tol, "{sharding} {precision} step {s}: loss unpadded {a} vs padded {b}");
            }
            let (m_off, m_on) = (load(&label("off")), load(&label("on")));
            assert_eq!(m_off.keys().collect::<Vec<_>>(), m_on.keys().collect::<Vec<_>>());
            let mut moved = 0f64;
            for (n, a) in &m_off {
                let b = &m_on[n];
                assert_eq!(a.size(), b.size(), "{n}: exported shapes differ");
                let d = rel_diff(a, b);
                assert!(d < tensor_tol, "{sharding} {precision} {n}: unpadded vs padded differ by {d}");
                if let Some((_, t0)) = init.iter().find(|(m, _)| m == n) {
                    moved = moved.max(rel_diff(t0, a));
                }
            }
            assert!(moved > 1e-4, "the parameters barely moved ({moved}): the comparison would be vacuous");
        }
    }
}

/// World sizes 1, 2 and 4 under FSDP, and 4 ranks under hybrid sharding
/// (2 shard groups of 2) and DDP, on the same global batch.
#[test]
fn world_sizes_1_2_4_and_every_sharding_agree_in_fp32() {
    let dir = temp_dir("equiv");
    for (world, sharding) in [(1, "fsdp"), (2, "fsdp"), (4, "fsdp"), (4, "hybrid:2"), (4, "ddp")] {
        let env = [("OMP_NUM_THREADS", "1".into()), ("SSC_SHARDING", sharding.to_string())];
        let outs = run_ranks("worker_equivalence", world, &dir, &env, Duration::from_secs(240));
        assert_all_ok(&outs);
    }
    let l1 = read_losses(&dir.join("losses_w1.json"));
    assert_eq!(l1.len(), 3);
    let load = |w: &str| -> std::collections::BTreeMap<String, Tensor> {
        Tensor::load_multi(dir.join(format!("params_{w}.pt"))).unwrap().into_iter().map(|(n, t)| (n.replace(':', "."), t)).collect()
    };
    let p1 = load("w1");
    // The initial parameters, to show the 3 steps changed something.
    let init = ModelArch::new(&ModelConfig::load("regnety-tiny").unwrap()).unwrap().init_params(7).unwrap();
    assert_eq!(p1.len(), init.len());
    let moved: f64 = init.iter().map(|(n, b)| rel_diff(b, &p1[n])).fold(0.0, f64::max);
    assert!(moved > 1e-4, "parameters barely changed ({moved}); the comparison would be vacuous");
    // World size 1 through the FSDP engine (flat units, per-block backward,
    // checkpoint recompute, resharding) against plain autograd on the
    // unsharded model: the same arithmetic in the same order, so equal.
    let lref = read_losses(&dir.join("losses_ref.json"));
    for (a, b) in l1.iter().zip(&lref) {
        assert!(((a - b) / a).abs() < 1e-7, "FSDP world 1 {l1:?} vs reference {lref:?}");
    }
    let pref: std::collections::BTreeMap<String, Tensor> =
        Tensor::load_multi(dir.join("params_ref.pt")).unwrap().into_iter().map(|(n, t)| (n.replace(':', "."), t)).collect();
    for (n, a) in &p1 {
        assert!(rel_diff(&pref[n], a) < 1e-7, "{n}: FSDP world 1 vs reference {}", rel_diff(&pref[n], a));
    }
    // Sharded runs sum gradients in another order (per rank, then
    // reduce-scatter and all-reduce); fp32 rounding is all that may differ.
    let flat = |p: &std::collections::BTreeMap<String, Tensor>| Tensor::cat(&p.values().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0);
    for world in ["w2", "w4", "w4-hybrid:2", "w4-ddp"] {
        let l = read_losses(&dir.join(format!("losses_{world}.json")));
        for (s, (a, b)) in l1.iter().zip(&l).enumerate() {
            assert!(((a - b) / a).abs() < 1e-5, "step {s}: loss world 1 {a} vs {world} {b}");
        }
        let p = load(world);
        assert_eq!(p.len(), p1.len());
        let whole = rel_diff(&flat(&p1), &flat(&p));
        assert!(whole < 1e-5, "all parameters: world 1 vs world {world} relative difference {whole}");
        // 1e-5 per tensor, except the zero-initialised BN biases, which
        // carry their ill-conditioned first gradient (see tensor_diffs).
        let (zero, rest) = tensor_diffs(&p1, &p);
        assert!(rest[0].0 < 1e-5, "{}: world 1 vs world {world} relative difference {}", rest[0].1, rest[0].0);
        assert!(zero[0].0 < 1e-4, "{}: world 1 vs world {world} relative difference {}", zero[0].1, zero[0].0);
        println!(
            "world {world}: losses {l:?}; params rel. diff {whole:.2e} overall, worst tensor {} {:.2e}, worst not zero-initialised {} {:.2e}",
            zero[0].1, zero[0].0, rest[0].1, rest[0].0
        );
    }
    println!("world 1 losses {l1:?} (= reference)");
}

// ------------------------------------------------------------ SyncBN

fn save_tensors(path: &Path, ts: &[(String, Tensor)]) {
    Tensor::save_multi(&ts.iter().map(|(n, t)| (n.replace('.', ":"), t.shallow_clone())).collect::<Vec<_>>(), path).unwrap();
}
fn load_tensors(path: &Path) -> std::collections::BTreeMap<String, Tensor> {
    Tensor::load_multi(path).unwrap().into_iter().map(|(n, t)| (n.replace(':', "."), t)).collect()
}

#[test]
#[ignore = "worker: run by sync_bn_over_2_ranks_equals_one_unsplit_process"]
fn worker_sync_bn() {
    let (rank, world, _, dir) = worker_env();
    // Checkpointed segments and resharding on, so the recompute path (BN
    // forward again, running stats left alone, all-reduce still matched)
    // is part of the comparison.
    let mut cfg = config(world, &dir.join(format!("w{world}")), true, true);
    cfg.bn_groups = 1;
    cfg.sync_bn = world > 1;
    cfg.stop_after = Some(3);
    // World 4: SyncBN in groups of 2 ranks (8 images, as SEER's groups of 64).
    let label = if world == 4 {
        cfg.sync_bn_group = Some(2);
        "w4-groups2".to_string()
    } else {
        format!("w{world}")
    };
    let pg = groups(&cfg);
    let mut t = Trainer::new(&pg, &cfg).unwrap();
    let report = t.fit().unwrap();
    assert!(report.metrics.iter().all(|m| m.sync_bn == cfg.sync_bn));
    let params = t.fsdp().full_params().unwrap();
    let bn: Vec<(String, Tensor)> = t.bn().buffers().into_iter().map(|(n, b)| (n, b.copy())).collect();
    save_tensors(&dir.join(format!("bn_{label}_r{rank}.pt")), &bn);
    if rank == 0 {
        write_losses(&dir.join(format!("losses_{label}.json")), &report.metrics.iter().map(|m| m.loss).collect::<Vec<_>>());
        save_tensors(&dir.join(format!("params_{label}.pt")), &params);
    }
    if world == 1 {
        // BN over two groups of 8 images: what SyncBN groups of 2 of 4 ranks compute.
        let mut halves = config(1, &dir.join("halves"), true, true);
        halves.bn_groups = 2;
        halves.stop_after = Some(3);
        let mut t = Trainer::new(&pg, &halves).unwrap();
        let r = t.fit().unwrap();
        write_losses(&dir.join("losses_w1-bn2.json"), &r.metrics.iter().map(|m| m.loss).collect::<Vec<_>>());
        save_tensors(&dir.join("params_w1-bn2.pt"), &t.fsdp().full_params().unwrap());
    }
    if world == 1 {
        // Per-rank BN of 2 ranks (emulated), first step only: what SyncBN
        // must differ from, or the comparison would be vacuous.
        let mut per_rank = config(1, &dir.join("per_rank"), true, true);
        per_rank.bn_groups = 2;
        per_rank.stop_after = Some(1);
        let r = Trainer::new(&pg, &per_rank).unwrap().fit().unwrap();
        write_losses(&dir.join("losses_per_rank.json"), &[r.metrics[0].loss]);
    }
}

#[test]
fn sync_bn_over_2_ranks_equals_one_unsplit_process() {
    let dir = temp_dir("syncbn");
    for world in [1, 2, 4] {
        let outs = run_ranks("worker_sync_bn", world, &dir, &[("OMP_NUM_THREADS", "1".into())], Duration::from_secs(240));
        assert_all_ok(&outs);
    }
    let (l1, l2) = (read_losses(&dir.join("losses_w1.json")), read_losses(&dir.join("losses_w2.json")));
    assert_eq!((l1.len(), l2.len()), (3, 3));
    for (s, (a, b)) in l1.iter().zip(&l2).enumerate() {
        assert!(((a - b) / a).abs() < 1e-5, "step {s}: loss world 1 (batch 16, BN over 16) {a} vs world 2 SyncBN {b}: {l1:?} vs {l2:?}");
    }
    let per_rank = read_losses(&dir.join("losses_per_rank.json"))[0];
    assert!(((per_rank - l1[0]) / l1[0]).abs() > 1e-4, "per-rank BN loss {per_rank} equals the unsplit one {}: vacuous", l1[0]);
    let (p1, p2) = (load_tensors(&dir.join("params_w1.pt")), load_tensors(&dir.join("params_w2.pt")));
    assert_eq!(p1.len(), p2.len());
    let flat = |p: &std::collections::BTreeMap<String, Tensor>| Tensor::cat(&p.values().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0);
    let whole = rel_diff(&flat(&p1), &flat(&p2));
    assert!(whole < 1e-5, "all parameters: world 1 vs world 2 SyncBN relative difference {whole}");
    let (zero, rest) = tensor_diffs(&p1, &p2);
    assert!(rest[0].0 < 1e-5, "{}: world 1 vs world 2 SyncBN relative difference {}", rest[0].1, rest[0].0);
    assert!(zero[0].0 < 1e-4, "{}: world 1 vs world 2 SyncBN relative difference {}", zero[0].1, zero[0].0);
    // Running statistics: global on every rank (identical), equal to the
    // unsplit run's, and updated once per step despite the recompute.
    let bn1 = load_tensors(&dir.join("bn_w1_r0.pt"));
    let (bn_r0, bn_r1) = (load_tensors(&dir.join("bn_w2_r0.pt")), load_tensors(&dir.join("bn_w2_r1.pt")));
    let mut worst_bn = 0.0f64;
    for (n, a) in &bn1 {
        assert!(bn_r0[n].equal(&bn_r1[n]), "{n}: ranks disagree");
        worst_bn = worst_bn.max(rel_diff(a, &bn_r0[n]));
    }
    assert!(worst_bn < 1e-5, "BN running stats: world 1 vs world 2 SyncBN relative difference {worst_bn}");
    // SyncBN groups of 2 ranks of 4 = BN over two halves of the batch.
    let (lh, l4) = (read_losses(&dir.join("losses_w1-bn2.json")), read_losses(&dir.join("losses_w4-groups2.json")));
    for (s, (a, b)) in lh.iter().zip(&l4).enumerate() {
        assert!(((a - b) / a).abs() < 1e-5, "step {s}: BN over 2 halves {a} vs SyncBN groups of 2 of 4 ranks {b}: {lh:?} vs {l4:?}");
    }
    assert!(((lh[0] - l1[0]) / l1[0]).abs() > 1e-4, "BN over halves equals BN over all: vacuous");
    let groups_diff = rel_diff(&flat(&load_tensors(&dir.join("params_w1-bn2.pt"))), &flat(&load_tensors(&dir.join("params_w4-groups2.pt"))));
    assert!(groups_diff < 1e-5, "all parameters: BN over halves vs SyncBN groups of 2: {groups_diff}");
    let (g0, g2) = (load_tensors(&dir.join("bn_w4-groups2_r0.pt")), load_tensors(&dir.join("bn_w4-groups2_r2.pt")));
    assert!(g0.iter().any(|(n, a)| !a.equal(&g2[n])), "the two SyncBN groups saw the same statistics: vacuous");
    println!("SyncBN groups of 2 of 4 ranks vs BN over two halves: losses {l4:?} vs {lh:?}; params {groups_diff:.2e}");
    println!(
        "SyncBN world 2 vs world 1: losses {l2:?} vs {l1:?}; params {whole:.2e} overall, worst tensor {} {:.2e}, worst not zero-initialised {} {:.2e}; BN buffers {worst_bn:.2e}; per-rank BN first loss {per_rank}",
        zero[0].1, zero[0].0, rest[0].1, rest[0].0
    );
}

// ------------------------------------------------- checkpointing/reshard

#[test]
#[ignore = "worker: run by checkpointing_and_resharding_do_not_change_gradients"]
fn worker_grads() {
    let (rank, world, _, dir) = worker_env();
    let base = config(world, &dir, false, false);
    let pg = groups(&base);
    let batch = train::load_batch(&base.data_dir, &base, rank, world, DataPosition::default()).unwrap();
    // Per-rank BN, then SyncBN (whose recompute pass all-reduces again).
    for sync_bn in [false, true] {
        let mut results = Vec::new();
        // (checkpointing, reshard, the crop groups one after the other in backward)
        for (ckpt, reshard, by_group) in
            [(false, false, false), (true, false, false), (false, true, false), (true, true, false), (true, true, true), (false, false, true)]
        {
            let mut cfg = config(world, &dir, ckpt, reshard);
            if by_group {
                cfg.backward_order = BackwardOrder::ByCropGroup;
            }
            if sync_bn {
                cfg.sync_bn = true;
                cfg.bn_groups = 1;
            }
            let mut t = Trainer::new(&pg, &cfg).unwrap();
            let loss = t.compute_grads(&batch).unwrap().double_value(&[0]);
            let grads = t.fsdp().full_grads().unwrap();
            let bn: Vec<Tensor> = t.bn().buffers().into_iter().map(|(_, b)| b.copy()).collect();
            results.push(((ckpt, reshard, by_group), loss, grads, bn));
        }
        let (_, l0, g0, bn0) = &results[0];
        let gnorm: f64 = g0.iter().map(|(_, g)| g.norm().double_value(&[]).powi(2)).sum::<f64>().sqrt();
        assert!(gnorm > 0.0);
        for ((ckpt, reshard, by_group), l, g, bn) in &results[1..] {
            let what = format!("checkpointing={ckpt} reshard={reshard} by_crop_group={by_group} sync_bn={sync_bn}");
            assert_eq!(l, l0, "loss with {what}");
            for ((n, a), (_, b)) in g0.iter().zip(g) {
                let d = (a - b).abs().max().double_value(&[]);
                assert!(d <= 1e-6 * gnorm.max(1.0), "{n}: gradient differs by {d} ({what})");
            }
            // Recompute must not update the BN running statistics twice.
            for (a, b) in bn0.iter().zip(bn) {
                assert!((a - b).abs().max().double_value(&[]) < 1e-6, "BN running stats differ ({what})");
            }
        }
        println!("rank {rank}: grads equal over {} configurations (sync_bn={sync_bn}), loss {l0}", results.len());
    }
}

#[test]
fn checkpointing_and_resharding_do_not_change_gradients() {
    let dir = temp_dir("grads");
    let outs = run_ranks("worker_grads", 2, &dir, &[("OMP_NUM_THREADS", "1".into())], Duration::from_secs(240));
    assert_all_ok(&outs);
    assert!(String::from_utf8_lossy(&outs[1].stdout).contains("grads equal"));
}

// ------------------------------------------------------------ resume

#[test]
#[ignore = "worker: run by resume_reproduces_the_uninterrupted_run"]
fn worker_resume() {
    let (rank, world, port, dir) = worker_env();
    let phase = std::env::var("SSC_PHASE").unwrap();
    let mut cfg = config(world, &dir.join(&phase), true, true);
    // SSC_PADDED_RESUME: the unaligned model, resumed with channels padded.
    if std::env::var_os("SSC_PADDED_RESUME").is_some() {
        cfg.model = unaligned_model();
        if phase == "resumed" {
            cfg.channel_padding = ChannelPadding::On;
        }
    }
    match phase.as_str() {
        "full" => cfg.stop_after = Some(5),
        "first" => {
            cfg.out_dir = dir.join("split");
            cfg.stop_after = Some(3);
            cfg.checkpoint_every = Some(3);
        }
        _ => {
            cfg.out_dir = dir.join("split");
            cfg.stop_after = Some(5);
            cfg.resume = true;
        }
    }
    let report = train::train_rank(&cfg, &env_of(rank, world, port)).unwrap();
    if rank == 0 {
        let losses: Vec<f64> = report.metrics.iter().map(|m| m.loss).collect();
        write_losses(&dir.join(format!("losses_{phase}.json")), &losses);
    }
}

#[test]
fn resume_reproduces_the_uninterrupted_run() {
    let dir = temp_dir("resume");
    for phase in ["full", "first", "resumed"] {
        let outs = run_ranks("worker_resume", 2, &dir, &[("OMP_NUM_THREADS", "1".into()), ("SSC_PHASE", phase.into())], Duration::from_secs(240));
        assert_all_ok(&outs);
    }
    let full = read_losses(&dir.join("losses_full.json"));
    let first = read_losses(&dir.join("losses_first.json"));
    let resumed = read_losses(&dir.join("losses_resumed.json"));
    assert_eq!((full.len(), first.len(), resumed.len()), (5, 3, 2));
    assert_eq!(&first[..], &full[..3]);
    for (a, b) in full[3..].iter().zip(&resumed) {
        assert!(((a - b) / a).abs() < 1e-6, "resumed {resumed:?} vs uninterrupted {full:?}");
    }
    // Metrics of both halves are in the same per-rank file.
    let m = executor::metrics::read_metrics(&executor::metrics::metrics_path(&dir.join("split"), 0)).unwrap();
    assert_eq!(m.iter().map(|x| x.step).collect::<Vec<_>>(), vec![0, 1, 2, 3, 4]);
}

/// A checkpoint written unpadded resumes with channels padded (the same
/// parameters and buffers, so the same files) and continues the run.
#[test]
fn a_padded_run_resumes_an_unpadded_checkpoint() {
    let dir = temp_dir("resume-padded");
    for phase in ["full", "first", "resumed"] {
        let env = [("OMP_NUM_THREADS", "1".into()), ("SSC_PHASE", phase.into()), ("SSC_PADDED_RESUME", "1".into())];
        let outs = run_ranks("worker_resume", 2, &dir, &env, Duration::from_secs(240));
        assert_all_ok(&outs);
    }
    let full = read_losses(&dir.join("losses_full.json"));
    let resumed = read_losses(&dir.join("losses_resumed.json"));
    assert_eq!((full.len(), resumed.len()), (5, 2));
    for (a, b) in full[3..].iter().zip(&resumed) {
        assert!(((a - b) / a).abs() < 1e-4, "resumed padded {resumed:?} vs uninterrupted unpadded {full:?}");
    }
}

// ------------------------------------------------------------ export

#[test]
#[ignore = "worker: run by a_checkpoint_reassembles_into_the_trained_parameters"]
fn worker_export() {
    let (rank, world, _, dir) = worker_env();
    let mut cfg = config(world, &dir.join("run"), true, true);
    cfg.stop_after = Some(2);
    cfg.checkpoint_every = Some(2);
    let pg = groups(&cfg);
    let mut t = Trainer::new(&pg, &cfg).unwrap();
    t.fit().unwrap();
    let params = t.fsdp().full_params().unwrap();
    if rank == 0 {
        save_tensors(&dir.join("trained.pt"), &params);
        save_tensors(&dir.join("bn.pt"), &t.bn().buffers());
    }
}

/// The shards of a hybrid run (4 ranks, shard groups of 2) put back
/// together are exactly the parameters the trainer holds, and rank 0's BN
/// statistics come with them.
#[test]
fn a_checkpoint_reassembles_into_the_trained_parameters() {
    let dir = temp_dir("export");
    let outs = run_ranks("worker_export", 4, &dir, &[("OMP_NUM_THREADS", "1".into()), ("SSC_SHARDING", "hybrid:2".into())], Duration::from_secs(240));
    assert_all_ok(&outs);
    let w = executor::weights::from_checkpoint(&dir.join("run").join("checkpoints")).unwrap();
    assert_eq!(w.step, 2);
    let trained = load_tensors(&dir.join("trained.pt"));
    assert_eq!(w.params.len(), trained.len());
    for (n, t) in &trained {
        assert!(w.params[n].equal(t), "{n} differs from the trained parameter");
    }
    let bn = load_tensors(&dir.join("bn.pt"));
    for (n, t) in &bn {
        assert!(w.bn[n].equal(t), "{n} differs from rank 0's BN statistics");
    }
    // Every exported name is torchvision's.
    assert!(w.params.keys().all(|n| executor::weights::torchvision_name(n).is_some()));
}

// ------------------------------------------------------------ elastic resume

/// 24 images per step over any world size, SyncBN (BN over the whole
/// global batch, so every world size computes the same step).
fn elastic_config(world: usize, out: &Path) -> TrainConfig {
    let mut cfg = config(world, out, true, true);
    cfg.images_per_rank = 24 / world;
    cfg.bn_groups = 1;
    cfg.sync_bn = world > 1;
    cfg
}

#[test]
#[ignore = "worker: run by elastic_resume_4_2_3_ranks_continues_the_run"]
fn worker_elastic() {
    let (rank, world, _, dir) = worker_env();
    let phase: usize = std::env::var("SSC_PHASE").unwrap().parse().unwrap();
    let out = if world == 1 { dir.join("reference") } else { dir.join("elastic") };
    let mut cfg = elastic_config(world, &out);
    cfg.stop_after = Some(if world == 1 { 6 } else { 2 * (phase as u64 + 1) });
    cfg.checkpoint_every = Some(2);
    let pg = groups(&cfg);
    let mut t = Trainer::new(&pg, &cfg).unwrap();
    if world > 1 && phase > 0 {
        // Restored on another world size: bit for bit what was saved.
        assert_eq!(t.restore_latest().unwrap(), Some(2 * phase as u64));
        let saved = load_tensors(&dir.join(format!("params_after_{}.pt", phase - 1)));
        for (n, p) in t.fsdp().full_params().unwrap() {
            assert!(saved[&n].equal(&p), "{n} changed across the resume (phase {phase}, world {world})");
        }
    }
    let report = t.fit().unwrap();
    let params = t.fsdp().full_params().unwrap();
    if rank == 0 {
        let losses: Vec<f64> = report.metrics.iter().map(|m| m.loss).collect();
        let name = if world == 1 { "losses_reference.json".to_string() } else { format!("losses_phase{phase}.json") };
        write_losses(&dir.join(name), &losses);
        if world > 1 {
            save_tensors(&dir.join(format!("params_after_{phase}.pt")), &params);
        } else {
            save_tensors(&dir.join("params_reference.pt"), &params);
        }
    }
}

/// A checkpoint of 4 ranks resumes on 2, whose resumes on 3: the
/// parameters come back bit for bit, and the six steps match one
/// uninterrupted process on the same global batch.
#[test]
fn elastic_resume_4_2_3_ranks_continues_the_run() {
    let dir = temp_dir("elastic");
    for (phase, world) in [(0, 4), (1, 2), (2, 3)] {
        let env = [("OMP_NUM_THREADS", "1".into()), ("SSC_PHASE", phase.to_string())];
        let outs = run_ranks("worker_elastic", world, &dir, &env, Duration::from_secs(240));
        assert_all_ok(&outs);
    }
    let outs = run_ranks("worker_elastic", 1, &dir, &[("OMP_NUM_THREADS", "1".into()), ("SSC_PHASE", "0".into())], Duration::from_secs(240));
    assert_all_ok(&outs);
    let reference = read_losses(&dir.join("losses_reference.json"));
    let elastic: Vec<f64> = (0..3).flat_map(|p| read_losses(&dir.join(format!("losses_phase{p}.json")))).collect();
    assert_eq!((reference.len(), elastic.len()), (6, 6));
    for (s, (a, b)) in reference.iter().zip(&elastic).enumerate() {
        assert!(((a - b) / a).abs() < 1e-5, "step {s}: uninterrupted {a} vs 4 -> 2 -> 3 ranks {b}: {reference:?} vs {elastic:?}");
    }
    let flat = |p: &std::collections::BTreeMap<String, Tensor>| Tensor::cat(&p.values().map(|t| t.reshape([-1])).collect::<Vec<_>>(), 0);
    let whole = rel_diff(&flat(&load_tensors(&dir.join("params_reference.pt"))), &flat(&load_tensors(&dir.join("params_after_2.pt"))));
    assert!(whole < 1e-5, "parameters after 6 steps: uninterrupted vs elastic {whole}");
    println!("4 -> 2 -> 3 ranks: losses {elastic:?} vs uninterrupted {reference:?}; params {whole:.2e}");
}

#[test]
#[ignore = "worker: run by a_truncated_checkpoint_falls_back_to_the_one_before"]
fn worker_fallback() {
    let (rank, world, _, dir) = worker_env();
    let phase = std::env::var("SSC_PHASE").unwrap();
    let mut cfg = config(world, &dir.join("run"), false, true);
    cfg.checkpoint_every = Some(2);
    cfg.stop_after = Some(4);
    cfg.resume = phase == "resumed";
    let pg = groups(&cfg);
    let report = Trainer::new(&pg, &cfg).unwrap().fit().unwrap();
    if rank == 0 {
        write_losses(&dir.join(format!("losses_{phase}.json")), &report.metrics.iter().map(|m| m.loss).collect::<Vec<_>>());
    }
}

/// Rank 1's file of the newest checkpoint is cut in half: the resume finds
/// it (naming the file), and every rank takes the checkpoint before it.
#[test]
fn a_truncated_checkpoint_falls_back_to_the_one_before() {
    let dir = temp_dir("fallback");
    let env = |phase: &str| [("OMP_NUM_THREADS", "1".to_string()), ("SSC_PHASE", phase.to_string())];
    assert_all_ok(&run_ranks("worker_fallback", 2, &dir, &env("first"), Duration::from_secs(240)));
    let pt = dir.join("run/checkpoints/step_00000004/rank1.pt");
    let len = std::fs::metadata(&pt).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&pt).unwrap().set_len(len / 2).unwrap();
    let outs = run_ranks("worker_fallback", 2, &dir, &env("resumed"), Duration::from_secs(240));
    assert_all_ok(&outs);
    let stderr = String::from_utf8_lossy(&outs[1].stderr);
    assert!(stderr.contains("step_00000004/rank1.pt") && stderr.contains("truncated or corrupt"), "{stderr}");
    let (first, resumed) = (read_losses(&dir.join("losses_first.json")), read_losses(&dir.join("losses_resumed.json")));
    // Resumed at step 2: steps 2 and 3 again, as the first run did them.
    assert_eq!(resumed.len(), 2, "{resumed:?}");
    for (a, b) in first[2..].iter().zip(&resumed) {
        assert!(((a - b) / a).abs() < 1e-6, "first run {first:?} vs resumed {resumed:?}");
    }
}

// ------------------------------------------------------------ dead rank

#[test]
#[ignore = "worker: run by a_killed_rank_stops_the_job_with_an_error"]
fn worker_launched() {
    // Started by the launcher (RANK etc. set by it).
    let env = RankEnv::from_env().unwrap().expect("launched ranks have RANK set");
    let dir = PathBuf::from(std::env::var("SSC_TEST_DIR").unwrap());
    let mut cfg = config(env.world_size, &dir, false, true);
    cfg.timeout = Duration::from_secs(10);
    cfg.stop_after = Some(4);
    // The surviving rank is meant to fail: report like a real rank (one
    // error line, exit code) instead of as a failed test, so the outer test's
    // log shows no FAILED summary from this child.
    if let Err(e) = train::train_rank(&cfg, &env) {
        eprintln!("error: {e}");
        std::process::exit(1);
    }
}

/// Kills rank `victim` of a `world`-rank job under `sharding` at step 1.
fn kill_one_rank(name: &str, world: usize, sharding: &str, victim: usize) {
    let dir = temp_dir(name);
    let exe = std::env::current_exe().unwrap();
    let args: Vec<std::ffi::OsString> = ["--ignored", "--exact", "worker_launched", "--nocapture", "--test-threads=1"].iter().map(Into::into).collect();
    let mut opts = LaunchOptions::local(world);
    opts.grace = Duration::from_secs(20);
    opts.deadline = Some(Duration::from_secs(120));
    opts.env = vec![
        ("SEERSCALE_FAULT".into(), format!("rank={victim},step=1")),
        ("SSC_TEST_DIR".into(), dir.display().to_string()),
        ("SSC_SHARDING".into(), sharding.into()),
        ("OMP_NUM_THREADS".into(), "1".into()),
    ];
    let t = Instant::now();
    let err = launch::launch_local(&exe, &args, &opts).unwrap_err();
    let took = t.elapsed();
    match &err {
        LaunchError::RankFailed { rank, status, .. } => {
            assert_eq!(*rank, victim, "{err}");
            assert!(status.contains("signal 6"), "{err}");
        }
        e => panic!("expected RankFailed, got {e}"),
    }
    assert!(took < Duration::from_secs(60), "took {took:?}");
    println!("{sharding}: {err} (after {took:?})");
}

#[test]
fn a_killed_rank_stops_the_job_with_an_error() {
    kill_one_rank("kill", 2, "fsdp", 1);
}

/// Rank 3 of hybrid:2 on 4 ranks is in shard group {2, 3} and replica
/// group {1, 3}: its peers in both subgroups (and the others, in the world
/// group) must stop.
#[test]
fn a_killed_rank_in_a_subgroup_stops_the_job_with_an_error() {
    kill_one_rank("kill-hybrid", 4, "hybrid:2", 3);
}

// ------------------------------------------------------------ learning

#[test]
#[ignore = "worker: run by loss_goes_down_on_the_bundled_photos"]
fn worker_learn() {
    let (rank, world, _, dir) = worker_env();
    let mut cfg = config(world, &dir, true, true);
    cfg.steps = 40;
    let pg = groups(&cfg);
    let mut t = Trainer::new(&pg, &cfg).unwrap();
    let report = t.fit().unwrap();
    if rank == 0 {
        write_losses(&dir.join("losses.json"), &report.metrics.iter().map(|m| m.loss).collect::<Vec<_>>());
        assert!(report.summary.unwrap().measured.peak_memory_bytes > 0);
    }
}

#[test]
fn loss_goes_down_on_the_bundled_photos() {
    let dir = temp_dir("learn");
    let outs = run_ranks("worker_learn", 2, &dir, &[("OMP_NUM_THREADS", "1".into())], Duration::from_secs(280));
    assert_all_ok(&outs);
    let l = read_losses(&dir.join("losses.json"));
    assert_eq!(l.len(), 40);
    // Random crops make single steps noisy: compare 5-step means.
    let head: f64 = l[..5].iter().sum::<f64>() / 5.0;
    let tail: f64 = l[l.len() - 5..].iter().sum::<f64>() / 5.0;
    assert!(tail < head * 0.97, "loss did not go down: first 5 mean {head}, last 5 mean {tail}: {l:?}");
    println!("losses: {l:?}");
}

// ------------------------------------------------------------ precision

#[test]
#[ignore = "worker: run by bf16_and_fp16_track_fp32"]
fn worker_precision() {
    let (rank, world, _, dir) = worker_env();
    let pg = groups(&config(world, &dir, true, true));
    let mut firsts = Vec::new();
    for (name, p, fp32_reduce) in [("fp32", ComputePrecision::Fp32, true), ("bf16", ComputePrecision::Bf16, false), ("fp16", ComputePrecision::Fp16, false)] {
        let mut cfg = config(world, &dir.join(name), true, true);
        // 24 px small crops: at 16 px the last stage's stride-2 grouped conv
        // sees a 1x1 input, where libtorch's CPU bf16/fp16 weight-gradient
        // kernel is non-deterministic (occasionally NaN) in plain PyTorch too.
        cfg.augment.crops[1].resolution = 24;
        cfg.precision = p;
        cfg.fp32_reduce = fp32_reduce;
        // fp16 starts at torch's 2^16 loss scale and, like GradScaler,
        // skips steps that overflow until the scale fits.
        cfg.stop_after = Some(if p == ComputePrecision::Fp16 { 10 } else { 4 });
        let mut t = Trainer::new(&pg, &cfg).unwrap();
        let r = t.fit().unwrap();
        let l: Vec<f64> = r.metrics.iter().map(|m| m.loss).collect();
        assert!(l.iter().all(|x| x.is_finite()), "{name}: {l:?}");
        if p == ComputePrecision::Fp16 {
            // Dynamic loss scaling: started at 2^16, stepped at least once.
            assert!(r.metrics.iter().any(|m| !m.skipped), "{name}: every step skipped");
            for w in r.metrics.windows(2) {
                if w[1].skipped {
                    assert_eq!(w[1].loss_scale, w[0].loss_scale / 2.0, "a skipped step halves the scale");
                }
            }
        }
        // Prototypes stay fp32 and unit-norm after the updates.
        let proto = t.fsdp().full_params().unwrap().into_iter().find(|(n, _)| n == "head.proto.weight").unwrap().1;
        assert_eq!(proto.kind(), tch::Kind::Float);
        if rank == 0 {
            println!(
                "{name}: losses {l:?} scales {:?} skipped {:?}",
                r.metrics.iter().map(|m| m.loss_scale).collect::<Vec<_>>(),
                r.metrics.iter().map(|m| m.skipped).collect::<Vec<_>>()
            );
        }
        firsts.push(l[0]);
    }
    for (i, name) in [(1, "bf16"), (2, "fp16")] {
        let rel = ((firsts[i] - firsts[0]) / firsts[0]).abs();
        assert!(rel < 2e-2, "{name} first loss {} vs fp32 {}", firsts[i], firsts[0]);
    }
}

#[test]
fn bf16_and_fp16_track_fp32() {
    let dir = temp_dir("precision");
    let outs = run_ranks("worker_precision", 2, &dir, &[("OMP_NUM_THREADS", "1".into())], Duration::from_secs(280));
    assert_all_ok(&outs);
    println!("{}", String::from_utf8_lossy(&outs[0].stdout));
}

// ------------------------------------------- BN affine parameters in fp32

#[test]
#[ignore = "worker: run by bn_affine_parameters_are_used_in_fp32_under_bf16"]
fn worker_bn_fp32() {
    use executor::fsdp::{Fsdp, FsdpOptions, MixedPrecision};
    let (_, world, _, dir) = worker_env();
    let cfg = config(world, &dir, false, true);
    let pg = groups(&cfg);
    let arch = ModelArch::new(&cfg.model).unwrap();
    let opts =
        FsdpOptions { reshard_after_forward: true, precision: MixedPrecision { param: tch::Kind::BFloat16, reduce: tch::Kind::BFloat16 }, device: Device::Cpu };
    // BN weights 1 + 1/3: not a bf16 value (bf16 rounds it to 1.3359375).
    let third = 1.0f64 + 1.0 / 3.0;
    let mut init = |p: &executor::model::ParamSpec| -> Result<Tensor, String> {
        let mut t = p.init_tensor(3).map_err(|e| e.to_string())?;
        Ok(if cost_models::graph::is_batch_norm_param(&p.name) && p.name.ends_with(".weight") { t.fill_(third) } else { t })
    };
    let mut fsdp = Fsdp::new(&pg, &arch.param_specs(), &arch.block_names(), &cfg.units, opts, &mut init).unwrap();
    // Every block's BN weight, whichever rank's shard holds it, arrives in
    // fp32 and unrounded; its convolutions arrive in bf16.
    for (b, block) in arch.block_names().iter().enumerate().take(arch.trunk_len()) {
        for &u in fsdp.units_of_block(b).to_vec().iter() {
            fsdp.gather(u).unwrap();
        }
        let p = fsdp.block_params(b).unwrap();
        let bn = if b == 0 { "stem.bn.weight".to_string() } else { format!("{block}.a_bn.weight") };
        let w = &p.by_name[&bn];
        assert_eq!(w.kind(), tch::Kind::Float, "{bn}");
        assert!(w.allclose(&Tensor::full(w.size(), third, (tch::Kind::Float, Device::Cpu)), 0.0, 1e-7, false), "{bn}: {w:?}");
        let conv = if b == 0 { "stem.conv.weight".to_string() } else { format!("{block}.a.weight") };
        assert_eq!(p.by_name[&conv].kind(), tch::Kind::BFloat16, "{conv}");
        for &u in fsdp.units_of_block(b).to_vec().iter() {
            fsdp.free(u).unwrap();
        }
    }
    // Their gradients are summed in fp32 too: every rank adds 1/3 to one BN
    // weight's gradient; the shard gradient holds world x 1/3 unrounded
    // (bf16 would hold 0.66796875 for two ranks).
    let b = 1;
    let units = fsdp.units_of_block(b).to_vec();
    for &u in &units {
        fsdp.gather(u).unwrap();
    }
    let p = fsdp.block_params(b).unwrap();
    let name = format!("{}.a_bn.weight", arch.block_names()[b]);
    let leaf = p.leaves.iter().find(|l| l.tensor.data_ptr() == p.by_name[&name].data_ptr()).unwrap();
    let (u, offset, n) = (leaf.unit, leaf.offset, leaf.tensor.numel() as i64);
    fsdp.accumulate_param_grad(u, offset, &Tensor::full([n], 1.0 / 3.0, (tch::Kind::Float, Device::Cpu))).unwrap();
    for &u in &units {
        fsdp.grad_ready(u).unwrap();
        if world > 1 {
            fsdp.reduce_scatter(u).unwrap();
            fsdp.wait_reduce_scatter(u).unwrap();
        }
        fsdp.shard_grad(u).unwrap();
    }
    let grads = fsdp.full_grads().unwrap();
    let g = &grads.iter().find(|(n, _)| *n == name).unwrap().1;
    let want = Tensor::full([n], 1.0 / 3.0, (tch::Kind::Float, Device::Cpu)) * world as f64;
    assert!(g.equal(&want), "{name}: {g:?}");
}

#[test]
fn bn_affine_parameters_are_used_in_fp32_under_bf16() {
    let dir = temp_dir("bn-fp32");
    for world in [1, 2] {
        let outs = run_ranks("worker_bn_fp32", world, &dir, &[("OMP_NUM_THREADS", "1".into())], Duration::from_secs(120));
        assert_all_ok(&outs);
    }
}

// ------------------------------------------------- resume on another plan

/// One unit per stage (`s1`, `s2`, ...) and the head's two.
fn per_stage_units(blocks: &[String]) -> Vec<UnitSpec> {
    let mut stages: Vec<String> = blocks.iter().filter(|b| b.starts_with('s') && b.contains(".b")).map(|b| b.split('.').next().unwrap().to_string()).collect();
    stages.dedup();
    let mut u: Vec<UnitSpec> = stages.into_iter().map(|s| UnitSpec { name: s.clone(), members: vec![s] }).collect();
    u.push(UnitSpec { name: "head.mlp".into(), members: vec!["head.mlp".into()] });
    u.push(UnitSpec { name: "head.proto".into(), members: vec!["head.proto".into()] });
    u
}

#[test]
#[ignore = "worker: run by a_per_stage_checkpoint_of_2_ranks_resumes_on_1_rank_per_block"]
fn worker_replanned() {
    let (rank, world, _, dir) = worker_env();
    let phase = std::env::var("SSC_PHASE").unwrap();
    let out = if phase == "reference" { dir.join("reference") } else { dir.join("run") };
    let mut cfg = elastic_config(world, &out);
    if world == 2 {
        cfg.units = per_stage_units(&ModelArch::new(&cfg.model).unwrap().block_names());
    }
    cfg.stop_after = Some(if phase == "first" { 2 } else { 4 });
    cfg.checkpoint_every = Some(2);
    let pg = groups(&cfg);
    let mut t = Trainer::new(&pg, &cfg).unwrap();
    if phase == "second" {
        // Re-cut by parameter name into other units: bit for bit.
        assert_eq!(t.restore_latest().unwrap(), Some(2));
        let saved = load_tensors(&dir.join("params_after_first.pt"));
        for (n, p) in t.fsdp().full_params().unwrap() {
            assert!(saved[&n].equal(&p), "{n} changed across the re-planned resume");
        }
    }
    let report = t.fit().unwrap();
    let params = t.fsdp().full_params().unwrap();
    if rank == 0 {
        write_losses(&dir.join(format!("losses_{phase}.json")), &report.metrics.iter().map(|m| m.loss).collect::<Vec<_>>());
        save_tensors(&dir.join(format!("params_after_{phase}.pt")), &params);
    }
}

/// A 2-rank checkpoint written under per-stage units resumes on 1 rank under
/// per-block units (a re-planned wrapping and world size): parameters come
/// back bit for bit and the 4 steps match the uninterrupted run's.
#[test]
fn a_per_stage_checkpoint_of_2_ranks_resumes_on_1_rank_per_block() {
    let dir = temp_dir("replanned");
    for (phase, world) in [("first", 2), ("second", 1), ("reference", 1)] {
        let env = [("OMP_NUM_THREADS", "1".into()), ("SSC_PHASE", phase.to_string())];
        let outs = run_ranks("worker_replanned", world, &dir, &env, Duration::from_secs(240));
        assert_all_ok(&outs);
    }
    let reference = read_losses(&dir.join("losses_reference.json"));
    let resumed: Vec<f64> = ["first", "second"].iter().flat_map(|p| read_losses(&dir.join(format!("losses_{p}.json")))).collect();
    assert_eq!((reference.len(), resumed.len()), (4, 4));
    for (s, (a, b)) in reference.iter().zip(&resumed).enumerate() {
        assert!(((a - b) / a).abs() < 1e-5, "step {s}: uninterrupted {a} vs re-planned {b}: {reference:?} vs {resumed:?}");
    }
    println!("2 ranks per-stage -> 1 rank per-block: losses {resumed:?} vs uninterrupted {reference:?}");
}
