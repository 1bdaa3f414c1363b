//! Where `embed` and `eval knn` take a model from: an exported file or a
//! training run's checkpoint.

use anyhow::{bail, Result};
use clap::Args;
use executor::weights::{self, Weights};
use std::path::{Path, PathBuf};

#[derive(Args, Debug, Clone)]
pub struct WeightsArgs {
    /// A model written by `seerscale export`.
    #[arg(long, conflicts_with = "checkpoint", required_unless_present = "checkpoint")]
    pub weights: Option<PathBuf>,
    /// A training run's output folder, its `checkpoints/`, or one step of it.
    #[arg(long)]
    pub checkpoint: Option<PathBuf>,
    /// With --checkpoint: this step instead of the latest.
    #[arg(long, requires = "checkpoint")]
    pub step: Option<u64>,
}

impl WeightsArgs {
    pub fn load(&self) -> Result<Weights> {
        match (&self.weights, &self.checkpoint) {
            (Some(w), _) => Ok(weights::load_safetensors(w)?),
            (None, Some(c)) => Ok(weights::from_checkpoint(&checkpoint_dir(c, self.step)?)?),
            (None, None) => bail!("pass --weights FILE or --checkpoint DIR"),
        }
    }
}

/// The step folder (or checkpoints folder, for its latest step) that `dir`
/// names: a run's output folder, its `checkpoints/`, or a step folder.
pub fn checkpoint_dir(dir: &Path, step: Option<u64>) -> Result<PathBuf> {
    if !dir.is_dir() {
        bail!("checkpoint {}: no such folder", dir.display());
    }
    let root = if dir.join("checkpoints").is_dir() { dir.join("checkpoints") } else { dir.to_path_buf() };
    Ok(match step {
        Some(s) => {
            let sd = executor::checkpoint::step_dir(&root, s);
            if !sd.is_dir() {
                bail!("checkpoint {}: no step {s} (no {})", root.display(), sd.display());
            }
            sd
        }
        None => root,
    })
}
