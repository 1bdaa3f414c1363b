//! The image-folder data pipeline: recursive JPEG/PNG listing, a
//! deterministic per-epoch shuffle, each rank's slice of every global batch,
//! decoding + multi-crop augmentation on worker threads with bounded
//! prefetch, unreadable files skipped and counted.
//!
//! Global step s of epoch e covers positions `s*G .. (s+1)*G` of the epoch's
//! shuffled order (G = images_per_rank * world); rank r takes the r-th
//! contiguous slice of it. Every sample's RNG is seeded from (seed, epoch,
//! position in the epoch), so the crops depend neither on thread timing nor
//! on the world size: N ranks' batches concatenated in rank order are
//! exactly the world-size-1 batch of the same global size.

use crate::augment::{multi_crop, AugmentConfig, AugmentError};
use crate::model::CropLayout;
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc::{sync_channel, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use tch::Tensor;

#[derive(Debug, thiserror::Error)]
pub enum DataError {
    #[error("cannot read image folder or file list {path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("no JPEG or PNG image found under {0}")]
    Empty(PathBuf),
    #[error("{0}: the file list names no image")]
    EmptyList(PathBuf),
    #[error("no readable image in {folder}: all {files} files failed to decode")]
    NoReadable { folder: PathBuf, files: usize },
    #[error("invalid loader setting `{field}`: {reason}")]
    Config { field: &'static str, reason: String },
    #[error(transparent)]
    Augment(#[from] AugmentError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("data worker stopped unexpectedly")]
    WorkerGone,
}

/// Where the loader stands: the next batch is step `step` of epoch `epoch`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
pub struct DataPosition {
    pub epoch: u64,
    pub step: u64,
}

/// The image files of a folder, recursively, sorted (so every rank lists
/// them in the same order); or of a file list (VISSL's `disk_filelist`).
#[derive(Clone, Debug)]
pub struct ImageFolder {
    root: PathBuf,
    files: Vec<PathBuf>,
}

impl ImageFolder {
    /// `SEERSCALE_PHOTOS` if set, else `.photos` (scikit-image's bundled
    /// photos, linked by scripts/setup).
    pub fn default_root() -> PathBuf {
        std::env::var_os("SEERSCALE_PHOTOS").map(PathBuf::from).unwrap_or_else(|| PathBuf::from(".photos"))
    }

    /// A folder, searched recursively for JPEG and PNG files, or a `.txt`
    /// file list: one path per line, relative to the list's folder or
    /// absolute, in the order given (blank lines skipped).
    pub fn open(root: impl AsRef<Path>) -> Result<ImageFolder, DataError> {
        let root = root.as_ref().to_path_buf();
        if root.extension().is_some_and(|e| e.eq_ignore_ascii_case("txt")) && root.is_file() {
            return ImageFolder::from_list(root);
        }
        let mut files = Vec::new();
        let mut dirs = vec![root.clone()];
        while let Some(dir) = dirs.pop() {
            let rd = std::fs::read_dir(&dir).map_err(|source| DataError::Io { path: dir.clone(), source })?;
            for entry in rd {
                let entry = entry.map_err(|source| DataError::Io { path: dir.clone(), source })?;
                let path = entry.path();
                // Follows links (the default folder is one); unreadable
                // entries are not fatal, their decode will be.
                let meta = std::fs::metadata(&path);
                if meta.as_ref().map(|m| m.is_dir()).unwrap_or(false) {
                    dirs.push(path);
                } else if is_image_name(&path) {
                    files.push(path);
                }
            }
        }
        if files.is_empty() {
            return Err(DataError::Empty(root));
        }
        files.sort();
        Ok(ImageFolder { root, files })
    }

    fn from_list(list: PathBuf) -> Result<ImageFolder, DataError> {
        let text = std::fs::read_to_string(&list).map_err(|source| DataError::Io { path: list.clone(), source })?;
        let base = list.parent().map(Path::to_path_buf).unwrap_or_default();
        let files: Vec<PathBuf> = text.lines().map(str::trim).filter(|l| !l.is_empty()).map(|l| base.join(l)).collect();
        if files.is_empty() {
            return Err(DataError::EmptyList(list));
        }
        Ok(ImageFolder { root: list, files })
    }

    pub fn root(&self) -> &Path {
        &self.root
    }
    pub fn files(&self) -> &[PathBuf] {
        &self.files
    }
    pub fn len(&self) -> usize {
        self.files.len()
    }
    pub fn is_empty(&self) -> bool {
        self.files.is_empty()
    }
}

fn is_image_name(p: &Path) -> bool {
    matches!(p.extension().and_then(|e| e.to_str()).map(|e| e.to_ascii_lowercase()).as_deref(), Some("jpg" | "jpeg" | "png"))
}

/// Decodes any JPEG/PNG (gray, RGBA, 16-bit) to 8-bit RGB.
pub fn decode(path: &Path) -> Result<RgbImage, String> {
    let reader = image::ImageReader::open(path).map_err(|e| e.to_string())?;
    let reader = reader.with_guessed_format().map_err(|e| e.to_string())?;
    let img = reader.decode().map_err(|e| e.to_string())?;
    if img.width() == 0 || img.height() == 0 {
        return Err("empty image".into());
    }
    Ok(img.to_rgb8())
}

/// The shuffled order of `n` files in `epoch`.
pub fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(&[seed, 0x005e_ed0f_e90c, epoch])));
    order
}

fn mix(parts: &[u64]) -> u64 {
    // SplitMix64 over the parts: cheap, stable, well spread.
    let mut h = 0x9e37_79b9_7f4a_7c15u64;
    for &p in parts {
        h ^= p;
        h = h.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = h;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        h = z ^ (z >> 31);
    }
    h
}

#[derive(Clone, Debug)]
pub struct LoaderConfig {
    pub seed: u64,
    pub rank: usize,
    pub world: usize,
    pub images_per_rank: usize,
    pub augment: AugmentConfig,
    /// Decode/augment threads.
    pub workers: usize,
    /// Batches each worker may have ready ahead of the consumer.
    pub prefetch: usize,
    /// Where to start (resume).
    pub start: DataPosition,
}

/// One rank's batch.
pub struct Batch {
    pub position: DataPosition,
    /// One tensor per crop group, `[images * count, 3, R, R]`, image-major.
    pub groups: Vec<Tensor>,
    pub layout: CropLayout,
    /// Indices (into [`ImageFolder::files`]) of the images used.
    pub images: Vec<usize>,
    /// Files found unreadable by this loader so far.
    pub skipped_files: usize,
}

struct Shared {
    folder: ImageFolder,
    cfg: LoaderConfig,
    steps_per_epoch: u64,
    /// Shuffled passes over the folder per epoch (1 unless it is smaller
    /// than a global batch).
    passes: usize,
    bad: Mutex<HashSet<usize>>,
    cache: DecodeCache,
}

/// Decoded images kept for later epochs, up to a byte budget: decoding a
/// photo costs far more than cropping it, and small folders (the bundled
/// photos) are read every few steps.
struct DecodeCache {
    images: Mutex<HashMap<usize, Arc<RgbImage>>>,
    budget: usize,
    used: AtomicUsize,
}

impl DecodeCache {
    fn new(budget: usize) -> DecodeCache {
        DecodeCache { images: Mutex::new(HashMap::new()), budget, used: AtomicUsize::new(0) }
    }
    fn get(&self, idx: usize) -> Option<Arc<RgbImage>> {
        self.images.lock().ok()?.get(&idx).cloned()
    }
    /// Keeps `img` if it fits the budget; returns it shared either way.
    fn insert(&self, idx: usize, img: RgbImage) -> Arc<RgbImage> {
        let img = Arc::new(img);
        let bytes = img.as_raw().len();
        if self.used.load(Ordering::Relaxed) + bytes <= self.budget {
            if let Ok(mut m) = self.images.lock() {
                if m.insert(idx, Arc::clone(&img)).is_none() {
                    self.used.fetch_add(bytes, Ordering::Relaxed);
                }
            }
        }
        img
    }
}

/// Default decoded-image cache per loader (override: SEERSCALE_DECODE_CACHE_MB).
fn decode_cache_budget() -> usize {
    std::env::var("SEERSCALE_DECODE_CACHE_MB").ok().and_then(|v| v.parse::<usize>().ok()).unwrap_or(1024) << 20
}

/// Prefetching multi-crop loader; iterate it for batches (endless: the
/// training loop decides when to stop). Dropping it stops the workers.
pub struct DataLoader {
    shared: Arc<Shared>,
    rx: Vec<Receiver<Result<Batch, DataError>>>,
    handles: Vec<JoinHandle<()>>,
    produced: u64,
    next: DataPosition,
    failed: bool,
}

/// Folders of at most this many images are decoded into the cache before
/// [`time_batches`] times anything: a run's later epochs read them from it.
const TIMING_PRELOAD_MAX: usize = 512;

/// Seconds one loader worker takes to make each of `batches` batches of
/// `cfg`, made on this thread: the CPU time the worker threads take from
/// the cores beside the step. A folder of at most [`TIMING_PRELOAD_MAX`]
/// images is decoded first (as far as the decode cache holds it), so the
/// timed batches read it as a run's later epochs do; a larger one is timed
/// as it comes after one batch, decoding most images.
pub fn time_batches(folder: ImageFolder, cfg: LoaderConfig, batches: usize) -> Result<Vec<f64>, DataError> {
    let shared = Shared::new(folder, cfg)?;
    let n = shared.folder.len();
    if n <= TIMING_PRELOAD_MAX {
        let all: Vec<usize> = (0..n).collect();
        for i in 0..n {
            shared.load(&all, i)?;
        }
    }
    let warmup = 1;
    let mut out = Vec::with_capacity(batches);
    for k in 0..warmup + batches as u64 {
        let t = std::time::Instant::now();
        drop(shared.make_batch(shared.position_after(shared.cfg.start, k))?);
        if k >= warmup {
            out.push(t.elapsed().as_secs_f64());
        }
    }
    Ok(out)
}

impl DataLoader {
    pub fn new(folder: ImageFolder, cfg: LoaderConfig) -> Result<DataLoader, DataError> {
        let workers = cfg.workers.max(1);
        let prefetch = cfg.prefetch.max(1);
        let next = cfg.start;
        let shared = Arc::new(Shared::new(folder, cfg)?);
        let mut rx = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, r) = sync_channel(prefetch);
            let sh = Arc::clone(&shared);
            let h = std::thread::Builder::new()
                .name(format!("seerscale-data-{w}"))
                .spawn(move || {
                    // Worker w makes batches w, w + workers, ...; one channel
                    // per worker keeps the order without a reorder buffer and
                    // bounds how far each worker runs ahead.
                    crate::op_count::exclude_this_thread();
                    let mut k = w as u64;
                    loop {
                        let res = sh.make_batch(sh.position_after(sh.cfg.start, k));
                        let stop = res.is_err();
                        if tx.send(res).is_err() || stop {
                            return;
                        }
                        k += workers as u64;
                    }
                })
                .map_err(|e| DataError::Io { path: PathBuf::from("<thread>"), source: e })?;
            rx.push(r);
            handles.push(h);
        }
        Ok(DataLoader { shared, rx, handles, produced: 0, next, failed: false })
    }

    pub fn steps_per_epoch(&self) -> u64 {
        self.shared.steps_per_epoch
    }

    /// The position of the next batch `next()` returns (save it to resume).
    pub fn position(&self) -> DataPosition {
        self.next
    }

    /// Files found unreadable so far.
    pub fn skipped_files(&self) -> usize {
        self.shared.bad.lock().map(|s| s.len()).unwrap_or(0)
    }

    /// Their paths, sorted (for a warning naming them).
    pub fn skipped_paths(&self) -> Vec<PathBuf> {
        let bad = self.shared.bad.lock().map(|s| s.iter().copied().collect::<Vec<_>>()).unwrap_or_default();
        let mut v: Vec<PathBuf> = bad.into_iter().map(|i| self.shared.folder.files()[i].clone()).collect();
        v.sort();
        v
    }
}

impl Iterator for DataLoader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let w = (self.produced % self.rx.len() as u64) as usize;
        let res = self.rx[w].recv().unwrap_or(Err(DataError::WorkerGone));
        self.produced += 1;
        match &res {
            Ok(b) => self.next = self.shared.position_after(b.position, 1),
            Err(_) => self.failed = true,
        }
        Some(res)
    }
}

impl Drop for DataLoader {
    fn drop(&mut self) {
        // Closing the channels makes every worker's next send fail.
        self.rx.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

impl Shared {
    fn new(folder: ImageFolder, cfg: LoaderConfig) -> Result<Shared, DataError> {
        cfg.augment.validate()?;
        if cfg.world == 0 || cfg.rank >= cfg.world {
            return Err(DataError::Config { field: "rank", reason: format!("rank {} of world {}", cfg.rank, cfg.world) });
        }
        if cfg.images_per_rank == 0 {
            return Err(DataError::Config { field: "images_per_rank", reason: "must be >= 1".into() });
        }
        let global_batch = cfg.images_per_rank * cfg.world;
        // A folder smaller than one global batch is passed over several times
        // per epoch, each pass in its own shuffled order.
        let passes = global_batch.div_ceil(folder.len().max(1));
        let steps_per_epoch = (folder.len() * passes / global_batch) as u64;
        if cfg.start.step >= steps_per_epoch {
            return Err(DataError::Config { field: "start.step", reason: format!("step {} but an epoch has {steps_per_epoch} steps", cfg.start.step) });
        }
        Ok(Shared { folder, cfg, steps_per_epoch, passes, bad: Mutex::new(HashSet::new()), cache: DecodeCache::new(decode_cache_budget()) })
    }

    fn position_after(&self, p: DataPosition, k: u64) -> DataPosition {
        let s = p.step + k;
        DataPosition { epoch: p.epoch + s / self.steps_per_epoch, step: s % self.steps_per_epoch }
    }

    /// Decodes the image at epoch position `pos`; an unreadable file is
    /// replaced by the next one in the epoch order (deterministically).
    fn load(&self, order: &[usize], pos: usize) -> Result<(usize, Arc<RgbImage>), DataError> {
        let n = order.len();
        for t in 0..n {
            let idx = order[(pos + t) % n];
            if self.bad.lock().map(|b| b.contains(&idx)).unwrap_or(false) {
                continue;
            }
            if let Some(img) = self.cache.get(idx) {
                return Ok((idx, img));
            }
            match decode(&self.folder.files()[idx]) {
                Ok(img) => return Ok((idx, self.cache.insert(idx, img))),
                Err(_) => {
                    if let Ok(mut b) = self.bad.lock() {
                        b.insert(idx);
                    }
                }
            }
        }
        Err(DataError::NoReadable { folder: self.folder.root().to_path_buf(), files: self.folder.len() })
    }

    fn make_batch(&self, position: DataPosition) -> Result<Batch, DataError> {
        let cfg = &self.cfg;
        let mut order = epoch_order(self.folder.len(), cfg.seed, position.epoch);
        for pass in 1..self.passes {
            order.extend(epoch_order(self.folder.len(), cfg.seed, mix(&[position.epoch, pass as u64])));
        }
        let global_batch = cfg.images_per_rank * cfg.world;
        let first = position.step as usize * global_batch + cfg.rank * cfg.images_per_rank;
        let groups = &cfg.augment.crops;
        let mut data: Vec<Vec<f32>> = groups.iter().map(|g| Vec::with_capacity(cfg.images_per_rank * g.count * 3 * (g.resolution as usize).pow(2))).collect();
        let mut images = Vec::with_capacity(cfg.images_per_rank);
        for i in 0..cfg.images_per_rank {
            let pos = first + i;
            let (idx, img) = self.load(&order, pos)?;
            let mut rng = ChaCha8Rng::seed_from_u64(mix(&[cfg.seed, position.epoch, pos as u64]));
            // Image-major: this image's crops are contiguous in each group.
            for (g, crops) in multi_crop(&img, &cfg.augment, &mut rng).into_iter().enumerate() {
                for c in crops {
                    data[g].extend_from_slice(&c);
                }
            }
            images.push(idx);
        }
        let mut tensors = Vec::with_capacity(groups.len());
        for (g, spec) in groups.iter().enumerate() {
            let r = spec.resolution as i64;
            let rows = (cfg.images_per_rank * spec.count) as i64;
            tensors.push(Tensor::f_from_slice(&data[g])?.f_view([rows, 3, r, r])?);
        }
        Ok(Batch {
            position,
            groups: tensors,
            layout: CropLayout { images: cfg.images_per_rank as i64, groups: groups.iter().map(|g| g.count as i64).collect() },
            images,
            skipped_files: self.bad.lock().map(|b| b.len()).unwrap_or(0),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::augment::CropSpec;

    fn crops() -> AugmentConfig {
        AugmentConfig::with_crops(vec![CropSpec { count: 2, resolution: 32, scale: (0.14, 1.0) }, CropSpec { count: 2, resolution: 16, scale: (0.05, 0.14) }])
    }

    fn loader_cfg(rank: usize, world: usize, images: usize) -> LoaderConfig {
        LoaderConfig { seed: 9, rank, world, images_per_rank: images, augment: crops(), workers: 2, prefetch: 2, start: DataPosition::default() }
    }

    /// A temp folder with `n` small PNG/JPEG images (one in a subfolder)
    /// plus the extra files given.
    fn temp_folder(tag: &str, n: u32, extra: &[(&str, &[u8])]) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("seerscale-data-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        for i in 0..n {
            let img = RgbImage::from_fn(40 + i, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, (i * 40) as u8]));
            let path = if i == 0 { dir.join("sub").join("a0.jpg") } else { dir.join(format!("img{i}.png")) };
            img.save(&path).unwrap();
        }
        std::fs::write(dir.join("notes.txt"), b"not an image").unwrap();
        for (name, bytes) in extra {
            std::fs::write(dir.join(name), bytes).unwrap();
        }
        dir
    }

    #[test]
    fn loads_the_bundled_photos() {
        let folder = ImageFolder::open(ImageFolder::default_root()).unwrap();
        assert!(folder.len() >= 10, "{} images", folder.len());
        assert!(folder.files().iter().any(|f| f.extension().unwrap() == "jpg"));
        let mut loader = DataLoader::new(folder, loader_cfg(0, 1, 4)).unwrap();
        let b = loader.next().unwrap().unwrap();
        assert_eq!(b.groups[0].size(), [8, 3, 32, 32]);
        assert_eq!(b.groups[1].size(), [8, 3, 16, 16]);
        assert_eq!(b.layout, CropLayout { images: 4, groups: vec![2, 2] });
        assert_eq!(b.position, DataPosition { epoch: 0, step: 0 });
        assert_eq!(loader.position(), DataPosition { epoch: 0, step: 1 });
        // Normalised pixels of real photos: mean near 0, spread near 1.
        let mean = b.groups[0].mean(tch::Kind::Float).double_value(&[]);
        assert!(mean.abs() < 1.5, "{mean}");
        // The rest of the epoch: every bundled photo decodes (gray, RGBA,
        // 16-bit PNGs and JPEGs alike).
        let rest = loader.steps_per_epoch() as usize - 1;
        for b in loader.by_ref().take(rest) {
            b.unwrap();
        }
        assert_eq!(loader.skipped_files(), 0);
    }

    #[test]
    fn corrupt_files_are_skipped_and_counted() {
        let dir = temp_folder("corrupt", 5, &[("broken.jpg", b"\xff\xd8\xff garbage"), ("empty.png", b"")]);
        let folder = ImageFolder::open(&dir).unwrap();
        assert_eq!(folder.len(), 7); // 5 good + 2 bad, the .txt ignored
        let mut loader = DataLoader::new(folder, loader_cfg(0, 1, 2)).unwrap();
        assert_eq!(loader.steps_per_epoch(), 3);
        // Two full epochs: every batch complete, both bad files found.
        let mut seen = HashSet::new();
        for _ in 0..6 {
            let b = loader.next().unwrap().unwrap();
            assert_eq!(b.groups[0].size()[0], 4);
            seen.extend(b.images);
        }
        assert_eq!(loader.skipped_files(), 2);
        assert_eq!(loader.skipped_paths(), vec![dir.join("broken.jpg"), dir.join("empty.png")]);
        assert_eq!(seen.len(), 5);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn folders_smaller_than_a_global_batch_are_passed_over_several_times() {
        let dir = temp_folder("small", 3, &[]);
        let folder = ImageFolder::open(&dir).unwrap();
        let mut loader = DataLoader::new(folder, loader_cfg(1, 2, 4)).unwrap();
        assert_eq!(loader.steps_per_epoch(), 1);
        let b = loader.next().unwrap().unwrap();
        assert_eq!(b.images.len(), 4);
        let mut seen = b.images.clone();
        seen.sort_unstable();
        seen.dedup();
        assert!(seen.len() >= 2, "{:?}", b.images);
        std::fs::remove_dir_all(&dir).ok();
    }

    /// The loader's per-batch time, made on the calling thread: one value
    /// per timed batch, positive, after the folder is decoded into the
    /// cache; and the same checks as a loader (a bad rank is refused).
    #[test]
    fn time_batches_times_each_batch_from_the_decode_cache() {
        let dir = temp_folder("timing", 6, &[]);
        let folder = ImageFolder::open(&dir).unwrap();
        let t = time_batches(folder.clone(), loader_cfg(0, 1, 2), 4).unwrap();
        assert_eq!(t.len(), 4);
        assert!(t.iter().all(|&s| s > 0.0 && s < 5.0), "{t:?}");
        assert!(matches!(time_batches(folder, loader_cfg(2, 2, 2), 1), Err(DataError::Config { field: "rank", .. })));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn folders_without_usable_images_are_clear_errors() {
        let dir = std::env::temp_dir().join(format!("seerscale-data-none-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join("readme.txt"), b"x").unwrap();
        let err = ImageFolder::open(&dir).unwrap_err().to_string();
        assert!(err.contains("no JPEG or PNG") && err.contains(dir.to_str().unwrap()), "{err}");
        std::fs::write(dir.join("bad.png"), b"nope").unwrap();
        std::fs::write(dir.join("bad2.jpeg"), b"nope").unwrap();
        let folder = ImageFolder::open(&dir).unwrap();
        let mut loader = DataLoader::new(folder.clone(), loader_cfg(0, 1, 1)).unwrap();
        let err = loader.next().unwrap().err().unwrap().to_string();
        assert!(err.contains("no readable image") && err.contains(dir.to_str().unwrap()), "{err}");
        // Files, not attempts.
        assert!(err.contains("all 2 files failed"), "{err}");
        assert!(loader.next().is_none());
        // Fewer images than a global batch: still an error about readability, not a panic.
        let mut small = DataLoader::new(folder, loader_cfg(0, 2, 2)).unwrap();
        assert!(small.next().unwrap().is_err());
        let missing = ImageFolder::open(dir.join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// A `.txt` file list: paths relative to its folder or absolute, in the
    /// order given, blank lines skipped; the loader reads it as a folder.
    #[test]
    fn a_file_list_names_the_images_to_read() {
        let dir = temp_folder("list", 3, &[]);
        let abs = dir.join("img2.png");
        std::fs::write(dir.join("list.txt"), format!("img1.png\n\n  sub/a0.jpg\n{}\n", abs.display())).unwrap();
        let list = ImageFolder::open(dir.join("list.txt")).unwrap();
        assert_eq!(list.files(), &[dir.join("img1.png"), dir.join("sub/a0.jpg"), abs]);
        assert_eq!(list.root(), dir.join("list.txt"));
        let mut loader = DataLoader::new(list, loader_cfg(0, 1, 3)).unwrap();
        let b = loader.next().unwrap().unwrap();
        assert_eq!(b.images.len(), 3);
        assert_eq!(loader.skipped_files(), 0);
        std::fs::write(dir.join("empty.txt"), "\n\n").unwrap();
        let e = ImageFolder::open(dir.join("empty.txt")).unwrap_err().to_string();
        assert!(e.contains("empty.txt") && e.contains("names no image"), "{e}");
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn crops_are_deterministic_and_independent_of_workers() {
        let dir = temp_folder("det", 8, &[]);
        let run = |workers: usize, seed: u64| {
            let mut cfg = loader_cfg(0, 1, 2);
            cfg.workers = workers;
            cfg.seed = seed;
            let loader = DataLoader::new(ImageFolder::open(&dir).unwrap(), cfg).unwrap();
            loader.take(5).map(|b| b.unwrap()).collect::<Vec<_>>()
        };
        let a = run(1, 9);
        let b = run(3, 9);
        let c = run(2, 10);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!(x.images, y.images);
            assert!(x.groups[0].equal(&y.groups[0]) && x.groups[1].equal(&y.groups[1]));
        }
        assert!(a.iter().zip(&c).any(|(x, y)| !x.groups[0].equal(&y.groups[0])));
        // Epochs are reshuffled: 4 steps per epoch, step 4 is epoch 1.
        assert_eq!(a[4].position, DataPosition { epoch: 1, step: 0 });
        assert_ne!(epoch_order(8, 9, 0), epoch_order(8, 9, 1));
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn ranks_read_disjoint_parts_that_concatenate_to_the_global_batch() {
        let dir = temp_folder("ranks", 12, &[]);
        let folder = ImageFolder::open(&dir).unwrap();
        let take = |rank: usize, world: usize, per: usize| {
            let l = DataLoader::new(folder.clone(), loader_cfg(rank, world, per)).unwrap();
            l.take(3).map(|b| b.unwrap()).collect::<Vec<_>>()
        };
        let whole = take(0, 1, 4);
        let r0 = take(0, 2, 2);
        let r1 = take(1, 2, 2);
        let mut all = HashSet::new();
        for s in 0..3 {
            let a: HashSet<usize> = r0[s].images.iter().copied().collect();
            let b: HashSet<usize> = r1[s].images.iter().copied().collect();
            assert!(a.is_disjoint(&b));
            all.extend(a);
            all.extend(b);
            // Rank 0 then rank 1, per crop group, is the world-size-1 batch.
            let mut ids = r0[s].images.clone();
            ids.extend(&r1[s].images);
            assert_eq!(ids, whole[s].images);
            for g in 0..2 {
                let cat = Tensor::cat(&[&r0[s].groups[g], &r1[s].groups[g]], 0);
                assert!(cat.equal(&whole[s].groups[g]), "step {s} group {g}");
            }
        }
        assert_eq!(all.len(), 12); // one epoch covers every image once
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn resume_from_a_position_continues_the_same_stream() {
        let dir = temp_folder("resume", 6, &[]);
        let folder = ImageFolder::open(&dir).unwrap();
        let full: Vec<Batch> = DataLoader::new(folder.clone(), loader_cfg(0, 1, 2)).unwrap().take(5).map(|b| b.unwrap()).collect();
        let mut cfg = loader_cfg(0, 1, 2);
        cfg.start = full[3].position;
        let resumed: Vec<Batch> = DataLoader::new(folder, cfg).unwrap().take(2).map(|b| b.unwrap()).collect();
        for (a, b) in full[3..].iter().zip(&resumed) {
            assert_eq!(a.position, b.position);
            assert!(a.groups[0].equal(&b.groups[0]));
        }
        std::fs::remove_dir_all(&dir).ok();
    }
}
