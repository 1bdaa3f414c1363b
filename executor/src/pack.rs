//! `seerscale data pack`: an image folder or file list written as
//! WebDataset tar shards of about a given size, with the `index.json` of
//! per-shard counts that lets a run open them without reading them.

use crate::data::{DataError, ImageFolder};
use crate::decode::dimensions;
use crate::shards::{IndexEntry, ShardIndex};
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum PackError {
    #[error(transparent)]
    Data(#[from] DataError),
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{0} is not empty: `data pack` writes into a new or empty folder, so nothing there is overwritten")]
    NotEmpty(PathBuf),
    #[error("--shard-size must be at least 1 KiB, got {0} bytes")]
    ShardSize(u64),
}

/// What a pack wrote.
#[derive(Debug)]
pub struct PackReport {
    pub index: ShardIndex,
    /// Files left out because their headers do not read as an image.
    pub skipped: Vec<PathBuf>,
}

/// The shard being written: a temporary file until it is complete.
struct OpenShard {
    tmp: tempfile::NamedTempFile,
    builder: tar::Builder<std::io::BufWriter<std::fs::File>>,
    samples: u64,
    bytes: u64,
}

fn io(path: &Path) -> impl Fn(std::io::Error) -> PackError + '_ {
    move |source| PackError::Io { path: path.to_path_buf(), source }
}

/// Writes the images of `source` (a folder or `.txt` list) into `out` as
/// `shard-000000.tar`, ... of at most `shard_bytes` each (a single larger
/// image gets a shard of its own), members `000000123.<ext>` in source
/// order. Each shard is written under a temporary name and renamed once
/// complete; `index.json` is written last.
pub fn pack(source: &Path, out: &Path, shard_bytes: u64) -> Result<PackReport, PackError> {
    if shard_bytes < 1024 {
        return Err(PackError::ShardSize(shard_bytes));
    }
    let folder = ImageFolder::open(source)?;
    if out.exists() && std::fs::read_dir(out).map_err(io(out))?.next().is_some() {
        return Err(PackError::NotEmpty(out.to_path_buf()));
    }
    std::fs::create_dir_all(out).map_err(io(out))?;
    let mut entries = Vec::new();
    let mut skipped = Vec::new();
    let mut current: Option<OpenShard> = None;
    let finish = |cur: Option<OpenShard>, entries: &mut Vec<IndexEntry>| -> Result<(), PackError> {
        let Some(OpenShard { tmp, builder, samples, .. }) = cur else { return Ok(()) };
        let name = format!("shard-{:06}.tar", entries.len());
        let path = out.join(&name);
        let mut w = builder.into_inner().map_err(io(&path))?;
        std::io::Write::flush(&mut w).map_err(io(&path))?;
        drop(w);
        tmp.persist(&path).map_err(|e| PackError::Io { path: path.clone(), source: e.error })?;
        let bytes = std::fs::metadata(&path).map_err(io(&path))?.len();
        entries.push(IndexEntry { file: name, samples, bytes });
        Ok(())
    };
    for (i, file) in folder.files().iter().enumerate() {
        let bytes = std::fs::read(file).map_err(io(file))?;
        if dimensions(&bytes).is_err() {
            skipped.push(file.clone());
            continue;
        }
        let ext = file.extension().and_then(|e| e.to_str()).map(str::to_ascii_lowercase).unwrap_or_else(|| "jpg".into());
        let size = 512 + (bytes.len() as u64).div_ceil(512) * 512;
        if current.as_ref().is_some_and(|c| c.bytes > 0 && c.bytes + size > shard_bytes) {
            finish(current.take(), &mut entries)?;
        }
        if current.is_none() {
            let tmp = tempfile::Builder::new().suffix(".tar.tmp").tempfile_in(out).map_err(io(out))?;
            let f = tmp.reopen().map_err(io(tmp.path()))?;
            current = Some(OpenShard { tmp, builder: tar::Builder::new(std::io::BufWriter::new(f)), samples: 0, bytes: 0 });
        }
        let cur = current.as_mut().expect("opened above");
        let mut header = tar::Header::new_ustar();
        header.set_size(bytes.len() as u64);
        header.set_mode(0o644);
        header.set_entry_type(tar::EntryType::Regular);
        header.set_cksum();
        let name = format!("{i:09}.{ext}");
        cur.builder.append_data(&mut header, &name, bytes.as_slice()).map_err(io(out))?;
        cur.samples += 1;
        cur.bytes += size;
    }
    finish(current.take(), &mut entries)?;
    if entries.is_empty() {
        return Err(PackError::Data(DataError::NoReadable { folder: source.to_path_buf(), files: folder.len() }));
    }
    let index = ShardIndex::new(entries);
    index.write(out).map_err(|e| PackError::Io { path: out.join(crate::shards::INDEX_FILE), source: std::io::Error::other(e.to_string()) })?;
    Ok(PackReport { index, skipped })
}
