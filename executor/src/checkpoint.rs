//! Sharded checkpoints: each rank writes its fp32 parameter shards, the
//! optimiser state of those shards, its BN buffers and a JSON record (step,
//! data position, loss scaler, seed) under `<dir>/step_<N>/`, each file
//! written to a temporary name and renamed so a crash never leaves a torn
//! file; each rank's record carries the size and CRC-32 of its tensor file.
//! After every rank has written (a barrier), rank 0 points `<dir>/latest`
//! at the new step, again by rename. `--resume` takes the newest published
//! step whose files every rank finds complete ([`verify_rank`]), so a
//! truncated or corrupt checkpoint falls back to the one before it.

use crate::data::DataPosition;
use crate::precision::LossScaler;
use cost_models::config::ModelConfig;
use runspec::sharding::Sharding;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use tch::Tensor;

pub const FORMAT_VERSION: u32 = 1;

#[derive(Debug, thiserror::Error)]
pub enum CheckpointError {
    #[error("checkpoint {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("checkpoint {path}: {msg}")]
    Format { path: PathBuf, msg: String },
    #[error("checkpoint {path} was written by a run with {what}; this run has {here}")]
    Mismatch { path: PathBuf, what: String, here: String },
    #[error("checkpoint {path}: libtorch: {source}")]
    Torch { path: PathBuf, source: tch::TchError },
}

/// The non-tensor part of one rank's checkpoint.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct RankMeta {
    pub format_version: u32,
    /// Steps completed: training resumes at this step.
    pub step: u64,
    pub rank: usize,
    pub world_size: usize,
    /// Position of the next batch of the data loader.
    pub data: DataPosition,
    /// Tar shards: this rank's stream after its last batch (shards left,
    /// the shuffle buffer), so a resume neither rereads nor skips a sample.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_stream: Option<crate::stream::StreamState>,
    pub loss_scaler: LossScaler,
    pub seed: u64,
    /// Unit names in order (guards against resuming with another plan).
    pub units: Vec<String>,
    /// How the shards were cut (`fsdp` over the world in checkpoints
    /// without the field): a shard only resumes under the same sharding.
    #[serde(default)]
    pub sharding: Sharding,
    /// The model and the plan's unit list (`(name, members)`), so the
    /// shards can be put back together without the plan (`seerscale
    /// export`); absent in checkpoints of older versions.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub model: Option<ModelConfig>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unit_specs: Vec<(String, Vec<String>)>,
    /// Size and CRC-32 of `rank<r>.pt` (absent in older checkpoints,
    /// which are then taken as they are).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tensors_file: Option<FileCheck>,
    /// Images per step over all ranks (an elastic resume converts the
    /// step through it); absent in older checkpoints.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub images_per_step: Option<u64>,
}

/// What a complete file looks like.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileCheck {
    pub bytes: u64,
    pub crc32: u32,
}

impl FileCheck {
    pub fn of(path: &Path) -> Result<FileCheck, CheckpointError> {
        let data = std::fs::read(path).map_err(io(path))?;
        Ok(FileCheck { bytes: data.len() as u64, crc32: crc32fast::hash(&data) })
    }
}

/// Everything one rank saves.
pub struct RankState {
    pub meta: RankMeta,
    /// `(group, name, tensor)` with group one of `master`, `optim`, `bn`.
    pub tensors: Vec<(String, String, Tensor)>,
}

pub fn step_dir(dir: &Path, step: u64) -> PathBuf {
    dir.join(format!("step_{step:08}"))
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> CheckpointError + '_ {
    move |source| CheckpointError::Io { path: path.to_path_buf(), source }
}

/// Writes `path` atomically: `write` fills a temporary file beside it,
/// which is synced and then renamed over `path`.
fn write_atomic(path: &Path, write: impl FnOnce(&Path) -> Result<(), CheckpointError>) -> Result<(), CheckpointError> {
    let dir = path.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
    let tmp = tempfile::Builder::new().suffix(".tmp").tempfile_in(dir).map_err(io(dir))?;
    write(tmp.path())?;
    std::fs::File::open(tmp.path()).and_then(|f| f.sync_all()).map_err(io(tmp.path()))?;
    tmp.persist(path).map(drop).map_err(|e| CheckpointError::Io { path: path.to_path_buf(), source: e.error })
}

/// Saves this rank's state for `meta.step` (call on every rank, then a
/// barrier, then [`publish`] on rank 0).
pub(crate) fn save_rank(dir: &Path, state: &RankState) -> Result<(), CheckpointError> {
    let sd = step_dir(dir, state.meta.step);
    std::fs::create_dir_all(&sd).map_err(io(&sd))?;
    let r = state.meta.rank;
    let pt = sd.join(format!("rank{r}.pt"));
    // Names may contain dots (`s1.b0`); keep the archive flat by escaping.
    let named: Vec<(String, &Tensor)> = state.tensors.iter().map(|(g, n, t)| (format!("{g}/{n}").replace('.', ":"), t)).collect();
    write_atomic(&pt, |tmp| Tensor::save_multi(&named, tmp).map_err(|source| CheckpointError::Torch { path: tmp.to_path_buf(), source }))?;
    let meta = RankMeta { tensors_file: Some(FileCheck::of(&pt)?), ..state.meta.clone() };
    let js = sd.join(format!("rank{r}.json"));
    let text = serde_json::to_string_pretty(&meta).map_err(|e| CheckpointError::Format { path: js.clone(), msg: e.to_string() })?;
    write_atomic(&js, |tmp| std::fs::write(tmp, text).map_err(io(tmp)))
}

/// Points `<dir>/latest` at `step` (rank 0, after every rank saved).
pub(crate) fn publish(dir: &Path, step: u64) -> Result<(), CheckpointError> {
    let latest = dir.join("latest");
    let name = step_dir(dir, step).file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    write_atomic(&latest, |tmp| std::fs::write(tmp, name).map_err(io(tmp)))
}

/// The step directory `latest` points at, if any checkpoint was published.
pub fn latest(dir: &Path) -> Result<Option<PathBuf>, CheckpointError> {
    let latest = dir.join("latest");
    match std::fs::read_to_string(&latest) {
        Ok(s) => {
            let sd = dir.join(s.trim());
            if !sd.is_dir() {
                return Err(CheckpointError::Format { path: latest, msg: format!("points at missing directory {}", sd.display()) });
            }
            Ok(Some(sd))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io(&latest)(e)),
    }
}

/// Published step directories, newest first (those up to `latest`).
pub fn published(dir: &Path) -> Result<Vec<PathBuf>, CheckpointError> {
    let Some(latest) = latest(dir)? else { return Ok(Vec::new()) };
    let newest = latest.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
    let mut steps: Vec<PathBuf> = std::fs::read_dir(dir)
        .map_err(io(dir))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_dir() && p.file_name().is_some_and(|n| n.to_string_lossy().starts_with("step_") && n.to_string_lossy().as_ref() <= newest.as_str()))
        .collect();
    steps.sort();
    steps.reverse();
    Ok(steps)
}

/// Whether rank `rank`'s files in a step directory are complete: its
/// record parses and its tensor file has the size and CRC-32 recorded.
/// The error names the file.
pub(crate) fn verify_rank(step_dir: &Path, rank: usize) -> Result<(), CheckpointError> {
    let meta = read_meta(step_dir, rank)?;
    let pt = step_dir.join(format!("rank{rank}.pt"));
    let Some(want) = meta.tensors_file else {
        return if pt.is_file() { Ok(()) } else { Err(CheckpointError::Format { path: pt, msg: "missing".into() }) };
    };
    let got = FileCheck::of(&pt)?;
    if got != want {
        return Err(CheckpointError::Format {
            path: pt,
            msg: format!("{} bytes with CRC-32 {:08x}, its record says {} bytes, {:08x} (truncated or corrupt)", got.bytes, got.crc32, want.bytes, want.crc32),
        });
    }
    Ok(())
}

/// The record rank `rank` wrote in a step directory.
pub(crate) fn read_meta(step_dir: &Path, rank: usize) -> Result<RankMeta, CheckpointError> {
    let js = step_dir.join(format!("rank{rank}.json"));
    let text = std::fs::read_to_string(&js).map_err(io(&js))?;
    serde_json::from_str(&text).map_err(|e| CheckpointError::Format { path: js.clone(), msg: e.to_string() })
}

/// Loads this rank's state from a step directory, checking it belongs to
/// a run with the same world size, sharding and units.
pub(crate) fn load_rank(step_dir: &Path, rank: usize, world_size: usize, sharding: Sharding, units: &[String]) -> Result<RankState, CheckpointError> {
    let js = step_dir.join(format!("rank{rank}.json"));
    let meta = read_meta(step_dir, rank)?;
    if meta.format_version != FORMAT_VERSION {
        return Err(CheckpointError::Mismatch { path: js, what: format!("format {}", meta.format_version), here: format!("format {FORMAT_VERSION}") });
    }
    if meta.world_size != world_size || meta.rank != rank {
        return Err(CheckpointError::Mismatch { path: js, what: format!("rank {}/{}", meta.rank, meta.world_size), here: format!("rank {rank}/{world_size}") });
    }
    let saved = meta.sharding.resolved(meta.world_size);
    if saved != sharding.resolved(world_size) {
        return Err(CheckpointError::Mismatch { path: js, what: format!("sharding {saved}"), here: format!("sharding {}", sharding.resolved(world_size)) });
    }
    if meta.units != units {
        return Err(CheckpointError::Mismatch { path: js, what: format!("units {:?}", meta.units), here: format!("units {units:?}") });
    }
    let pt = step_dir.join(format!("rank{rank}.pt"));
    let raw = Tensor::load_multi(&pt).map_err(|source| CheckpointError::Torch { path: pt.clone(), source })?;
    let mut tensors = Vec::with_capacity(raw.len());
    for (k, t) in raw {
        let k = k.replace(':', ".");
        let (g, n) = k.split_once('/').ok_or_else(|| CheckpointError::Format { path: pt.clone(), msg: format!("bad tensor name `{k}`") })?;
        tensors.push((g.to_string(), n.to_string(), t));
    }
    Ok(RankState { meta, tensors })
}

impl RankState {
    /// `(name, tensor)` of one group.
    pub fn group(&self, group: &str) -> Vec<(String, Tensor)> {
        self.tensors.iter().filter(|(g, _, _)| g == group).map(|(_, n, t)| (n.clone(), t.shallow_clone())).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn meta(step: u64) -> RankMeta {
        RankMeta {
            format_version: FORMAT_VERSION,
            step,
            rank: 0,
            world_size: 1,
            data: DataPosition { epoch: 1, step: 2 },
            data_stream: None,
            loss_scaler: LossScaler::disabled(),
            seed: 3,
            units: vec!["s1.b0".into(), "root".into()],
            sharding: Sharding::fsdp(1),
            model: None,
            unit_specs: vec![],
            tensors_file: None,
            images_per_step: None,
        }
    }

    #[test]
    fn save_publish_load_round_trip_and_mismatches() {
        let dir = std::env::temp_dir().join(format!("seerscale-ckpt-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        assert!(latest(&dir).unwrap().is_none());
        let t = Tensor::from_slice(&[1f32, 2., 3.]);
        let st = RankState { meta: meta(5), tensors: vec![("master".into(), "s1.b0".into(), t.shallow_clone())] };
        save_rank(&dir, &st).unwrap();
        // Not visible until published.
        assert!(latest(&dir).unwrap().is_none());
        publish(&dir, 5).unwrap();
        let sd = latest(&dir).unwrap().unwrap();
        let back = load_rank(&sd, 0, 1, Sharding::fsdp(1), &meta(5).units).unwrap();
        assert_eq!(back.meta, RankMeta { tensors_file: Some(FileCheck::of(&sd.join("rank0.pt")).unwrap()), ..meta(5) });
        verify_rank(&sd, 0).unwrap();
        let m = back.group("master");
        assert_eq!(m[0].0, "s1.b0");
        assert!(m[0].1.equal(&t));
        // No temporary files are left behind.
        assert!(std::fs::read_dir(&sd).unwrap().all(|e| !e.unwrap().file_name().to_string_lossy().ends_with(".tmp")));
        let e = load_rank(&sd, 0, 2, Sharding::fsdp(2), &meta(5).units).err().unwrap();
        assert!(e.to_string().contains("rank 0/1") && e.to_string().contains("rank 0/2"), "{e}");
        let e = load_rank(&sd, 0, 1, Sharding::ddp(), &meta(5).units).err().unwrap();
        assert!(e.to_string().contains("sharding fsdp") && e.to_string().contains("this run has sharding ddp"), "{e}");
        let e = load_rank(&sd, 0, 1, Sharding::fsdp(1), &["other".to_string()]).err().unwrap();
        assert!(e.to_string().contains("units"), "{e}");
        // A second, newer step; then truncate its file: found, named, and
        // the older step is still there to fall back to.
        save_rank(&dir, &RankState { meta: meta(7), tensors: vec![("master".into(), "s1.b0".into(), t.shallow_clone())] }).unwrap();
        publish(&dir, 7).unwrap();
        let steps = published(&dir).unwrap();
        assert_eq!(steps, vec![step_dir(&dir, 7), step_dir(&dir, 5)]);
        let pt = step_dir(&dir, 7).join("rank0.pt");
        let len = std::fs::metadata(&pt).unwrap().len();
        std::fs::OpenOptions::new().write(true).open(&pt).unwrap().set_len(len / 2).unwrap();
        let e = verify_rank(&step_dir(&dir, 7), 0).unwrap_err().to_string();
        assert!(e.contains("rank0.pt") && e.contains("truncated or corrupt"), "{e}");
        verify_rank(&step_dir(&dir, 5), 0).unwrap();
        std::fs::write(dir.join("latest"), "step_99999999").unwrap();
        assert!(latest(&dir).unwrap_err().to_string().contains("missing directory"));
        let _ = std::fs::remove_dir_all(&dir);
    }
}
