use cost_models::config::ModelConfig;
use cost_models::graph::{CropGroup, LayerKind, ModelGraph, Workload};
use cost_models::DType;
use executor::calibrate::{measure_op, time_calls, Budget, OpCase};
use executor::model::{BnState, ModelArch, Mode};
use std::collections::HashMap;
use tch::{Device, Kind, Tensor};

fn main() {
    tch::set_num_threads(1);
    let cfg = ModelConfig::load("regnety-tiny").unwrap();
    let b: i64 = std::env::args().nth(1).map(|s| s.parse().unwrap()).unwrap_or(8);
    let w = Workload { images: b as u64, crops: vec![CropGroup { count: 2, resolution: 32 }, CropGroup { count: 2, resolution: 16 }], dtype: DType::Fp32 };
    let g = ModelGraph::build(&cfg, &w);
    let budget = Budget::full();
    let (mut f, mut bw) = (0.0, 0.0);
    let mut by: HashMap<String, (f64, f64, usize)> = HashMap::new();
    for l in g.graph.node_weights() {
        let i = &l.in_shape;
        let o = &l.out_shape;
        let case = match l.kind {
            LayerKind::Conv { kernel, stride, groups, .. } => OpCase::Conv { n: i[0] as i64, cin: i[1] as i64, cout: o[1] as i64, hw: i[2] as i64, k: kernel as i64, stride: stride as i64, groups: groups as i64 },
            LayerKind::BatchNorm => OpCase::BatchNorm { n: i[0] as i64, c: i[1] as i64, hw: i[2] as i64 },
            LayerKind::Relu | LayerKind::Sigmoid => OpCase::Relu { n: i[0] as i64, c: i[1] as i64, hw: if i.len() > 2 { i[2] as i64 } else { 1 } },
            LayerKind::Add => OpCase::Add { n: i[0] as i64, c: i[1] as i64, hw: i[2] as i64 },
            LayerKind::Mul => OpCase::ScaleMul { n: i[0] as i64, c: i[1] as i64, hw: i[2] as i64 },
            LayerKind::AvgPool => OpCase::AvgPool { n: i[0] as i64, c: i[1] as i64, hw: i[2] as i64 },
            LayerKind::Linear { .. } => OpCase::Linear { rows: i[0] as i64, d_in: i[1] as i64, d_out: o[1] as i64 },
            _ => continue,
        };
        let m = measure_op(&case, DType::Fp32, &budget).unwrap();
        f += m.forward.median_s;
        bw += m.backward.median_s;
        let e = by.entry(format!("{:?}", m.kind)).or_default();
        e.0 += m.forward.median_s; e.1 += m.backward.median_s; e.2 += 1;
    }
    println!("per-op sum: fwd {:.2} ms bwd {:.2} ms", f * 1e3, bw * 1e3);
    for (k, v) in &by { println!("  {k}: n={} fwd {:.2} bwd {:.2}", v.2, v.0 * 1e3, v.1 * 1e3); }
    let arch = ModelArch::new(&cfg).unwrap();
    let params: HashMap<String, Tensor> = arch.init_params(1).unwrap().into_iter().map(|(n, t)| (n, t.set_requires_grad(true))).collect();
    let mut bn = BnState::new(&arch, Device::Cpu);
    let inputs = vec![Tensor::randn([2 * b, 3, 32, 32], (Kind::Float, Device::Cpu)), Tensor::randn([2 * b, 3, 16, 16], (Kind::Float, Device::Cpu))];
    let mode = Mode::train();
    let fw = time_calls(&budget, || { let _ = arch.forward(&params, &mut bn, &inputs, &mode).unwrap(); Ok(()) }).unwrap();
    let leaves: Vec<&Tensor> = params.values().collect();
    let fb = time_calls(&budget, || { let y = arch.forward(&params, &mut bn, &inputs, &mode).unwrap(); let _ = Tensor::f_run_backward(&[&y.sum(Kind::Float)], &leaves, false, false)?; Ok(()) }).unwrap();
    println!("model: fwd {:.2} ms, fwd+bwd {:.2} ms => bwd {:.2}", fw.median_s * 1e3, fb.median_s * 1e3, (fb.median_s - fw.median_s) * 1e3);
}
