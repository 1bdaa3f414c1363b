//! `seerscale train` without the root CLI (for engine work):
//!
//!     cargo run -p executor --example train -- --plan plan.json --nproc-per-node 2 [--steps N]
//!         [--out DIR] [--data DIR] [--resume] [--checkpoint-every N] [--stop-after N] [--cpu]
//!
//! It calls exactly what the CLI calls: `executor::train::run`.
use executor::train::{self, TrainArgs};
use std::time::Duration;

fn main() {
    let mut a: Option<TrainArgs> = None;
    let mut it = std::env::args().skip(1);
    let mut pending: Vec<(String, Option<String>)> = Vec::new();
    while let Some(k) = it.next() {
        let v = match k.as_str() {
            "--resume" | "--cpu" => None,
            _ => it.next(),
        };
        pending.push((k, v));
    }
    for (k, v) in &pending {
        if k == "--plan" {
            a = v.as_ref().map(TrainArgs::new);
        }
    }
    let Some(mut a) = a else {
        eprintln!("usage: train --plan PLAN.json [--nproc-per-node N] [--steps N] [--out DIR] [--data DIR] [--resume] [--checkpoint-every N] [--stop-after N] [--timeout-s S] [--cpu]");
        std::process::exit(2);
    };
    for (k, v) in pending {
        let num = |v: &Option<String>| -> u64 {
            v.as_deref().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
                eprintln!("{k} needs a number");
                std::process::exit(2)
            })
        };
        match k.as_str() {
            "--plan" => {}
            "--nproc-per-node" => a.nproc_per_node = Some(num(&v) as usize),
            "--steps" => a.steps = Some(num(&v)),
            "--stop-after" => a.stop_after = Some(num(&v)),
            "--checkpoint-every" => a.checkpoint_every = Some(num(&v)),
            "--timeout-s" => a.timeout = Duration::from_secs(num(&v)),
            "--out" => a.out = v.unwrap_or_default().into(),
            "--data" => a.data = v.map(Into::into),
            "--resume" => a.resume = true,
            "--cpu" => a.force_cpu = true,
            other => {
                eprintln!("unknown option {other}");
                std::process::exit(2);
            }
        }
    }
    match train::run(&a) {
        Ok(_) => {}
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(1);
        }
    }
}
