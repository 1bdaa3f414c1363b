//! `seerscale embed`: pooled trunk features of every image in a folder.

use crate::commands::weights_source::WeightsArgs;
use anyhow::Result;
use clap::Args;
use executor::embed::{self, EmbedConfig, Features};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct EmbedArgs {
    #[command(flatten)]
    pub weights: WeightsArgs,
    /// Image folder (JPEG/PNG, recursive).
    #[arg(long)]
    pub data: PathBuf,
    /// Write the features here (safetensors: `features` [images, width] fp32, file list in the metadata).
    #[arg(long)]
    pub out: PathBuf,
    #[command(flatten)]
    pub features: FeatureArgs,
}

/// How images become features: what `embed` and `eval knn` share.
#[derive(Args, Debug, Clone)]
pub struct FeatureArgs {
    /// Centre-crop side the trunk sees (after resizing the shorter side to resolution x 256/224).
    #[arg(long, default_value_t = 224)]
    pub resolution: u32,
    /// Images per forward pass.
    #[arg(long, default_value_t = 64)]
    pub batch: usize,
    /// cpu, cuda or cuda:N.
    #[arg(long, default_value = "cpu")]
    pub device: String,
}

impl FeatureArgs {
    pub fn config(&self) -> Result<EmbedConfig> {
        Ok(EmbedConfig { resolution: self.resolution, batch: self.batch, device: embed::parse_device(&self.device)? })
    }
}

/// Features of a folder, with a progress bar on a terminal and a warning
/// for files that could not be read.
pub fn features_of(w: &executor::weights::Weights, dir: &Path, cfg: &EmbedConfig) -> Result<Features> {
    let files = embed::image_files(dir)?;
    let bar = std::io::stderr().is_terminal().then(|| {
        let b = indicatif::ProgressBar::new(files.len() as u64);
        b.set_style(
            indicatif::ProgressStyle::with_template("{msg} [{bar:40}] {pos}/{len} images ({elapsed})")
                .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
        );
        b.set_message(format!("embedding {}", dir.display()));
        b
    });
    let f = embed::embed(w, &files, cfg, |done, _| {
        if let Some(b) = &bar {
            b.set_position(done as u64);
        }
    })?;
    if let Some(b) = bar {
        b.finish_and_clear();
    }
    if !f.skipped.is_empty() {
        let first: Vec<String> = f.skipped.iter().take(3).map(|(p, why)| format!("{} ({why})", p.display())).collect();
        eprintln!("warning: skipped {} unreadable image(s) of {}: {}", f.skipped.len(), files.len(), first.join(", "));
    }
    anyhow::ensure!(!f.files.is_empty(), "no readable image under {}", dir.display());
    Ok(f)
}

pub fn run(a: &EmbedArgs) -> Result<()> {
    let cfg = a.features.config()?;
    let w = a.weights.load()?;
    let f = features_of(&w, &a.data, &cfg)?;
    f.save(&a.out, &w.model.name, cfg.resolution)?;
    let (n, width) = f.shape();
    println!("{}: {} images -> features [{n}, {width}] at {} px; wrote {}", w.model.name, f.files.len(), cfg.resolution, a.out.display());
    Ok(())
}
