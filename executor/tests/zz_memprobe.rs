//! TEMPORARY investigation probe (validate session); not part of the suite.
//! PROBE_PLAN=plan.json cargo test -p executor --test zz_memprobe -- --ignored --nocapture
#![allow(clippy::all)]

use executor::data::DataPosition;
use executor::dist::{GroupConfig, ProcessGroup, ReduceOp};
use executor::fsdp::{Fsdp, FsdpOptions};
use executor::launch::RankEnv;
use executor::memstats::{self, MemDevice};
use executor::model::{BnState, ModelArch, Mode};
use executor::step::Checkpointing;
use executor::swav;
use executor::train::{load_batch, TrainArgs, TrainConfig, Trainer};
use planner::plan::Plan;
use std::time::Duration;
use tch::{Kind, Tensor};

fn cur() -> i64 {
    memstats::current(MemDevice::Cpu).unwrap().0 as i64
}
fn pk() -> i64 {
    memstats::peak(MemDevice::Cpu).unwrap().0 as i64
}

struct Tr {
    base: i64,
    last: i64,
}
impl Tr {
    fn ev(&mut self, label: &str) {
        let (c, p) = (cur(), pk());
        println!("TRACE {:<40} cur {:>9} (d {:>+8}) peak {:>9}", label, c - self.base, c - self.last, p - self.base);
        self.last = c;
        memstats::reset_peak(MemDevice::Cpu).unwrap();
    }
}

#[test]
#[ignore]
fn probe() {
    let path = std::env::var("PROBE_PLAN").unwrap();
    let plan = Plan::load(std::path::Path::new(&path)).unwrap();
    memstats::install_cpu_counter().unwrap();
    let port = executor::dist::free_port().unwrap();
    let env = RankEnv::single(port);
    let mut plan1 = plan.clone();
    plan1.world_size = 1;
    let args = TrainArgs::new(&path);
    let cfg = TrainConfig::from_plan(&plan1, &args, &env).unwrap();
    tch::set_num_threads(std::env::var("PROBE_THREADS").ok().and_then(|v| v.parse().ok()).unwrap_or(1));
    let c0 = cur();
    let pg = ProcessGroup::new(&GroupConfig {
        master_addr: "127.0.0.1".into(),
        master_port: port,
        rank: 0,
        world_size: 1,
        backend: executor::dist::Backend::Gloo,
        timeout: Duration::from_secs(60),
    })
    .unwrap();
    let c1 = cur();
    println!("pg: {}", c1 - c0);
    let batch = load_batch(&cfg.data_dir, &cfg, 0, 1, DataPosition::default()).unwrap();
    let c2 = cur();
    println!("batch: {}", c2 - c1);
    if std::env::var("PROBE_LOADER").is_ok() {
        use executor::data::{DataLoader, ImageFolder, LoaderConfig};
        let a = cur();
        let t0 = std::time::Instant::now();
        let mut l = DataLoader::new(ImageFolder::open(&cfg.data_dir).unwrap(), LoaderConfig { seed: 0, rank: 0, world: 1, images_per_rank: cfg.images_per_rank, augment: cfg.augment.clone(), workers: 2, prefetch: 2, start: DataPosition::default() }).unwrap();
        let b = l.next().unwrap().unwrap();
        println!("first batch after {:?}", t0.elapsed());
        for k in 0..10 { std::thread::sleep(Duration::from_millis(100)); println!("t {:?} loader holds {} batches", t0.elapsed(), (cur() - a) as f64 / 245760.0); }
        drop(b);
        let t1 = std::time::Instant::now();
        for _ in 0..20 { let _b = l.next().unwrap().unwrap(); }
        println!("20 batches in {:?}", t1.elapsed());
        return;
    }
    if std::env::var("PROBE_TRAINER").is_ok() {
        let mut t = Trainer::new(&pg, &cfg).unwrap();
        let c3 = cur();
        println!("trainer static: {}", c3 - c2);
        for s in 0..3 {
            memstats::reset_peak(MemDevice::Cpu).unwrap();
            let b0 = cur();
            let loss = t.compute_grads(&batch).unwrap();
            let p1 = pk();
            let b1 = cur();
            memstats::reset_peak(MemDevice::Cpu).unwrap();
            t.apply_grads(loss).unwrap();
            let p2 = pk();
            let b2 = cur();
            println!("step {s}: start {} fb peak {} after fb {} opt peak {} after {}", b0 - c2, p1 - c2, b1 - c2, p2 - c2, b2 - c2);
        }
        return;
    }
    // Event-level copy of step::forward_backward.
    let arch = ModelArch::new(&cfg.model).unwrap();
    println!("arch: {}", cur() - c2);
    let specs = arch.param_specs();
    let blocks = arch.block_names();
    let opts = FsdpOptions {
        reshard_after_forward: cfg.reshard_after_forward,
        precision: cfg.precision.policy(cfg.fp32_reduce || cfg.precision == executor::precision::Precision::Fp32),
        device: tch::Device::Cpu,
    };
    let mut fsdp = Fsdp::new(&pg, &specs, &blocks, &cfg.units, opts, &mut |p| p.init_tensor(0).map_err(|e| e.to_string())).unwrap();
    println!("fsdp: {}  shard bytes {}", cur() - c2, fsdp.shard_bytes().0);
    if std::env::var("PROBE_INIT").is_ok() {
        let a = cur();
        let v = specs[1].init_tensor(0).unwrap();
        println!("init one {:?}: {} numel {}", specs[1].shape, cur() - a, v.numel());
        drop(v);
        println!("after drop: {}", cur() - a);
        let t = Tensor::zeros([1000], (Kind::Float, tch::Device::Cpu));
        let t2 = t.set_requires_grad(true);
        println!("zeros: {}", cur() - a);
        executor::storage::free(&t2).unwrap();
        println!("freed: {}", cur() - a);
        return;
    }
    let mut bn = BnState::new(&arch, tch::Device::Cpu);
    let ck = Checkpointing::new(&blocks, &cfg.checkpoint_segments).unwrap();
    let segs = ck.segments().to_vec();
    let seg_of = |i: usize| segs.iter().position(|s| s.contains(&i));
    let mode = Mode::train();
    let c3 = cur();
    println!("static (fsdp+bn): {}", c3 - c2);
    let base = c2;
    let mut tr = Tr { base, last: cur() };
    let kind = cfg.precision.compute_kind();
    let pgr = &pg;
    let ar = move |t: &mut Tensor| pgr.all_reduce_(t, ReduceOp::Sum).map_err(|e| executor::reduce::ReduceError(e.to_string()));
    for _step in 0..2 {
        memstats::reset_peak(MemDevice::Cpu).unwrap();
        tr.ev("==== step start");
        fsdp.zero_grad().unwrap();
        let inputs: Vec<Tensor> = batch.groups.iter().map(|t| t.to_kind(kind)).collect();
        tr.ev("inputs cast");
        let n = blocks.len();
        let reshard = cfg.reshard_after_forward;
        enum Saved {
            Nothing,
            Block { xin: Vec<Tensor>, y: Vec<Tensor> },
            Seg(Vec<Tensor>),
        }
        let mut saved: Vec<Saved> = (0..n).map(|_| Saved::Nothing).collect();
        let cut = |xs: &[Tensor], i: usize| -> Vec<Tensor> { xs.iter().map(|t| if i == 0 { t.detach() } else { t.detach().set_requires_grad(true) }).collect() };
        let mut x: Vec<Tensor> = inputs.iter().map(|t| t.shallow_clone()).collect();
        let last_units = fsdp.units_of_block(n - 1).to_vec();
        for i in 0..n {
            for &u in fsdp.units_of_block(i).to_vec().iter() {
                fsdp.gather(u).unwrap();
            }
            if i + 1 < n {
                for &u in fsdp.units_of_block(i + 1).to_vec().iter() {
                    fsdp.prefetch(u).unwrap();
                }
            }
            tr.ev(&format!("gathered for fwd {}", blocks[i]));
            match seg_of(i) {
                Some(s) => {
                    if segs[s].start == i {
                        saved[i] = Saved::Seg(x.iter().map(|t| t.detach()).collect());
                    }
                    let params = fsdp.block_params(i).unwrap();
                    x = tch::no_grad(|| arch.forward_block(&blocks[i], &params, &mut bn, &x, &mode)).unwrap();
                    tr.ev(&format!("fwd nograd {}", blocks[i]));
                }
                None => {
                    let xin = cut(&x, i);
                    let params = fsdp.block_params(i).unwrap();
                    let y = arch.forward_block(&blocks[i], &params, &mut bn, &xin, &mode).unwrap();
                    drop(params);
                    let out: Vec<Tensor> = y.iter().map(|t| t.detach()).collect();
                    saved[i] = Saved::Block { xin, y };
                    x = out;
                    tr.ev(&format!("fwd {}", blocks[i]));
                }
            }
            if reshard {
                for &u in fsdp.units_of_block(i).to_vec().iter() {
                    if fsdp.block_span(u).1 == i && !last_units.contains(&u) {
                        fsdp.free(u).unwrap();
                    }
                }
            }
            tr.ev(&format!("after fwd {}", blocks[i]));
        }
        drop(x);
        let mut grad_y: Option<Vec<Tensor>> = None;
        let rmode = mode.recompute();
        for i in (0..n).rev() {
            if let Some(s) = seg_of(i) {
                let seg = segs[s].clone();
                if seg.end - 1 == i {
                    for j in seg.clone() {
                        for &u in fsdp.units_of_block(j).to_vec().iter() {
                            fsdp.gather(u).unwrap();
                        }
                    }
                    tr.ev("recompute gathered");
                    let Saved::Seg(mut xs) = std::mem::replace(&mut saved[seg.start], Saved::Nothing) else { panic!() };
                    for j in seg.clone() {
                        let xin = cut(&xs, j);
                        let params = fsdp.block_params(j).unwrap();
                        let y = arch.forward_block(&blocks[j], &params, &mut bn, &xin, &rmode).unwrap();
                        xs = y.iter().map(|t| t.detach()).collect();
                        saved[j] = Saved::Block { xin, y };
                        tr.ev(&format!("recompute {}", blocks[j]));
                    }
                }
            }
            for &u in fsdp.units_of_block(i).to_vec().iter() {
                fsdp.gather(u).unwrap();
            }
            if i > 0 {
                for &u in fsdp.units_of_block(i - 1).to_vec().iter() {
                    fsdp.prefetch(u).unwrap();
                }
            }
            tr.ev(&format!("gathered for bwd {}", blocks[i]));
            let Saved::Block { xin, y } = std::mem::replace(&mut saved[i], Saved::Nothing) else { panic!() };
            let root = match &grad_y {
                None => {
                    let l = swav::swav_loss(&y[0], &batch.layout, &cfg.swav, batch.layout.images, &ar).unwrap();
                    tr.ev("loss fwd");
                    l
                }
                Some(g) => {
                    let mut acc: Option<Tensor> = None;
                    for (yk, gk) in y.iter().zip(g) {
                        let t = yk.f_mul(&gk.detach()).unwrap().sum(Kind::Float);
                        acc = Some(match acc {
                            None => t,
                            Some(a) => a + t,
                        });
                    }
                    tr.ev(&format!("root {}", blocks[i]));
                    acc.unwrap()
                }
            };
            let units = fsdp.units_of_block(i).to_vec();
            let mut wrt: Vec<Tensor> = xin.iter().filter(|t| t.requires_grad()).map(|t| t.shallow_clone()).collect();
            let n_x = wrt.len();
            for &u in &units {
                wrt.push(fsdp.flat(u).unwrap().shallow_clone());
            }
            let grads = Tensor::run_backward(&[&root], &wrt, false, false);
            tr.ev(&format!("bwd {}", blocks[i]));
            drop(root);
            drop(y);
            tr.ev(&format!("dropped y {}", blocks[i]));
            for (k, &u) in units.iter().enumerate() {
                let g = &grads[n_x + k];
                if g.defined() {
                    fsdp.accumulate_grad(u, g).unwrap();
                }
            }
            tr.ev(&format!("accumulated {}", blocks[i]));
            grad_y = if i > 0 {
                let mut gs = Vec::new();
                for (k, x) in xin.iter().enumerate() {
                    let g = &grads[k];
                    gs.push(if g.defined() { g.shallow_clone() } else { x.zeros_like() });
                }
                Some(gs)
            } else {
                None
            };
            for &u in &units {
                if fsdp.block_span(u).0 == i {
                    fsdp.finish_grad(u).unwrap();
                }
            }
            tr.ev(&format!("post bwd {}", blocks[i]));
        }
        fsdp.drain().unwrap();
        tr.ev("drained");
        fsdp.free_all().unwrap();
        drop(inputs);
        tr.ev("freed all");
    }
}
