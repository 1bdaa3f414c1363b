//! `seerscale eval knn`: a kNN classifier on frozen trunk features.

use crate::commands::embed::{features_of, FeatureArgs};
use crate::commands::weights_source::WeightsArgs;
use anyhow::{ensure, Result};
use clap::{Args, Subcommand};
use executor::knn::{knn, labels_of};
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct EvalArgs {
    #[command(subcommand)]
    pub what: EvalWhat,
}

#[derive(Subcommand, Debug, Clone)]
pub enum EvalWhat {
    /// Cosine-similarity kNN with temperature-weighted votes (as DINO's and VISSL's).
    Knn(KnnArgs),
}

#[derive(Args, Debug, Clone)]
pub struct KnnArgs {
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// Training images, one sub-folder per class.
    #[arg(long)]
    pub train: PathBuf,
    /// Validation images, one sub-folder per class (the same class names).
    #[arg(long)]
    pub val: PathBuf,
    #[arg(long, default_value_t = 20)]
    pub k: usize,
    #[arg(long, default_value_t = 0.07)]
    pub temperature: f64,
    #[command(flatten)]
    pub features: FeatureArgs,
    /// Print JSON instead of the table.
    #[arg(long)]
    pub json: bool,
}

pub fn run(a: &EvalArgs) -> Result<()> {
    match &a.what {
        EvalWhat::Knn(k) => run_knn(k),
    }
}

fn run_knn(a: &KnnArgs) -> Result<()> {
    ensure!(a.k >= 1, "--k must be at least 1");
    ensure!(a.temperature > 0.0, "--temperature must be > 0");
    let cfg = a.features.config()?;
    let w = a.weights.load()?;
    let train = features_of(&w, &a.train, &cfg)?;
    let val = features_of(&w, &a.val, &cfg)?;
    let (train_labels, classes) = labels_of(&a.train, &train.files)?;
    let (val_named, val_classes) = labels_of(&a.val, &val.files)?;
    // Validation classes by name into the training classes.
    let mut val_labels = Vec::with_capacity(val_named.len());
    for l in val_named {
        let name = &val_classes[l];
        let i = classes
            .iter()
            .position(|c| c == name)
            .ok_or_else(|| anyhow::anyhow!("validation class `{name}` has no training images under {}", a.train.display()))?;
        val_labels.push(i);
    }
    let r = knn(&train.features, &train_labels, &val.features, &val_labels, &classes, a.k, a.temperature)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&r)?);
        return Ok(());
    }
    println!(
        "kNN (k {}, temperature {}) on {} features at {} px: {} training and {} validation images, {} classes",
        r.k,
        r.temperature,
        w.model.name,
        cfg.resolution,
        r.train_images,
        r.val_images,
        classes.len()
    );
    println!("top-1 {:.1} %   top-5 {:.1} %", 100.0 * r.top1, 100.0 * r.top5);
    println!("{:<24} {:>7} {:>7}", "class", "images", "top-1");
    for c in &r.per_class {
        println!("{:<24} {:>7} {:>6.1}%", c.class, c.images, 100.0 * c.top1);
    }
    Ok(())
}
