//! `seerscale export`: a training run's sharded checkpoint as one
//! safetensors file under torchvision's RegNet names.

use crate::commands::weights_source::checkpoint_dir;
use anyhow::Result;
use clap::{Args, ValueEnum};
use executor::weights::{self, ExportDtype};
use std::path::PathBuf;

#[derive(Args, Debug, Clone)]
pub struct ExportArgs {
    /// A training run's output folder, its `checkpoints/`, or one step of it.
    #[arg(long)]
    pub checkpoint: PathBuf,
    /// This step instead of the latest.
    #[arg(long)]
    pub step: Option<u64>,
    /// Write the model here (safetensors).
    #[arg(long)]
    pub out: PathBuf,
    /// Element type of the weights (the prototypes stay fp32).
    #[arg(long, value_enum, default_value = "fp32")]
    pub dtype: Dtype,
}

#[derive(Clone, Copy, Debug, ValueEnum)]
pub enum Dtype {
    Fp32,
    Bf16,
}

pub fn run(a: &ExportArgs) -> Result<()> {
    let dir = checkpoint_dir(&a.checkpoint, a.step)?;
    let w = weights::from_checkpoint(&dir)?;
    let dtype = match a.dtype {
        Dtype::Fp32 => ExportDtype::Fp32,
        Dtype::Bf16 => ExportDtype::Bf16,
    };
    let n = weights::save_safetensors(&w, &a.out, dtype)?;
    let params: i64 = w.params.values().map(|t| t.numel() as i64).sum();
    println!(
        "{}: step {}, {} parameters ({} tensors with BN statistics), trunk as torchvision's RegNet, head under swav_head.; wrote {}",
        w.model.name,
        w.step,
        params,
        n,
        a.out.display()
    );
    Ok(())
}
