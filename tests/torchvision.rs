//! The network is derived once (`cost_models::regnet::RegNetSpec::blocks`)
//! and both the cost model's layer graph and the executor's module count
//! exactly the trunk parameters of torchvision's `RegNet` built from the
//! same `BlockParams`, for every built-in model. The reference counts are
//! in tests/data/torchvision-trunk-params.json, written by
//! `scripts/torchvision-params` (re-run it after adding a model config).

use cost_models::config::{ModelConfig, BUILTIN_MODELS};
use cost_models::graph::{ModelGraph, Workload};
use cost_models::DType;
use std::collections::BTreeMap;

#[derive(serde::Deserialize)]
struct Reference {
    trunk_params: BTreeMap<String, u64>,
}

fn reference() -> Reference {
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/data/torchvision-trunk-params.json");
    serde_json::from_str(&std::fs::read_to_string(path).expect("tests/data/torchvision-trunk-params.json (scripts/torchvision-params writes it)")).unwrap()
}

#[test]
fn every_builtin_model_has_torchvisions_trunk_parameter_count() {
    let reference = reference();
    let mut wrong = Vec::new();
    for (name, _) in BUILTIN_MODELS {
        let Some(&want) = reference.trunk_params.get(*name) else {
            panic!("{name} is not in tests/data/torchvision-trunk-params.json: run scripts/torchvision-params");
        };
        let cfg = ModelConfig::load(name).unwrap();
        let graph = ModelGraph::build(&cfg, &Workload::single(1, 32, DType::Fp32)).trunk_params();
        let specs = executor::model::param_specs(&cfg).unwrap();
        let module: i64 = specs.iter().filter(|p| !p.block.starts_with("head.")).map(|p| p.numel()).sum();
        if graph != want || module as u64 != want {
            wrong.push(format!("{name}: torchvision {want}, cost model {graph}, executor {module}"));
        }
    }
    assert_eq!(reference.trunk_params.len(), BUILTIN_MODELS.len(), "the reference lists models that are not built in");
    assert!(wrong.is_empty(), "trunk parameters differ:\n{}", wrong.join("\n"));
}
