//! The data pipeline: an image folder, a file list or WebDataset tar
//! shards in; each rank's part of every global batch out, decoded and
//! multi-cropped on worker threads with bounded prefetch; unreadable
//! images skipped, counted and named.
//!
//! Folders and file lists: global step s of epoch e covers positions
//! `s*G .. (s+1)*G` of the epoch's shuffled order (G = images_per_rank *
//! world); rank r takes the r-th contiguous slice of it, so N ranks'
//! batches concatenated in rank order are the world-size-1 batch.
//! Shards: each rank streams its own shards through a shuffle buffer
//! ([`crate::stream`]); the loader saves that stream's state for resume.
//! Either way every sample's RNG is seeded from (seed, epoch, global
//! position in the epoch), so the crops never depend on thread timing.

use crate::augment::{AugmentConfig, AugmentError, CropPlan, Crops};
use crate::decode::{decode_bytes, decode_scaled, dimensions};
use crate::model::CropLayout;
use crate::shards::{is_shard_spec, Sample, ShardError, ShardSet};
use crate::stream::{fresh_epoch, redistribute, resume_mine, Stream, StreamConfig, StreamError, StreamStart, StreamState};
use image::RgbImage;
use rand::seq::SliceRandom;
use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;
use std::collections::{BTreeSet, HashMap, HashSet};
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
    #[error("{spec}: all {samples} samples of a batch failed to decode")]
    BatchUnreadable { spec: String, samples: usize },
    #[error("tar shards {0}")]
    Shard(#[from] ShardError),
    #[error(transparent)]
    Stream(#[from] StreamError),
    #[error("data worker stopped unexpectedly")]
    WorkerGone,
}

/// What `--data` names: an image folder or file list, or tar shards.
#[derive(Clone, Debug)]
pub enum Dataset {
    Folder(ImageFolder),
    Shards(Arc<ShardSet>),
}

impl Dataset {
    /// Shards if `spec` ends in `.tar` (a path, glob or braces) or is a
    /// folder with a shard `index.json`; else a folder or `.txt` list.
    pub fn open(spec: impl AsRef<Path>) -> Result<Dataset, DataError> {
        let spec = spec.as_ref();
        let text = spec.to_string_lossy();
        if is_shard_spec(&text) {
            return Ok(Dataset::Shards(Arc::new(ShardSet::open(&text)?)));
        }
        Ok(Dataset::Folder(ImageFolder::open(spec)?))
    }

    /// Samples in one pass (files of a folder, samples of the shards).
    pub fn samples(&self) -> u64 {
        match self {
            Dataset::Folder(f) => f.len() as u64,
            Dataset::Shards(s) => s.samples(),
        }
    }

    /// "12 images in .photos" / "1000 shards (50000 samples) at x/{0..9}.tar".
    pub fn describe(&self) -> String {
        match self {
            Dataset::Folder(f) => format!("{} images in {}", f.len(), f.root().display()),
            Dataset::Shards(s) => format!("{} shards ({} samples) at {}", s.len(), s.samples(), s.spec()),
        }
    }

    /// The encoded bytes of up to `n` samples, in order (for benchmarks).
    pub fn first_samples(&self, n: usize) -> Result<Vec<Vec<u8>>, DataError> {
        let mut out = Vec::with_capacity(n);
        match self {
            Dataset::Folder(f) => {
                for p in f.files().iter().take(n) {
                    out.push(std::fs::read(p).map_err(|source| DataError::Io { path: p.clone(), source })?);
                }
            }
            Dataset::Shards(set) => {
                for (i, p) in set.paths().iter().enumerate() {
                    let mut r = crate::shards::ShardReader::open(p, i as u32, 0)?;
                    while out.len() < n {
                        match r.next_sample(true)? {
                            Some(s) => out.push(s.image),
                            None => break,
                        }
                    }
                    if out.len() >= n {
                        break;
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Decodes `bytes` and renders every crop: the crops are drawn first, so a
/// JPEG whose crops all shrink 2x or more is decoded at that reduced size.
pub(crate) fn augment_bytes(bytes: &[u8], cfg: &AugmentConfig, rng: &mut ChaCha8Rng) -> Result<Crops, String> {
    let (w, h) = dimensions(bytes)?;
    let plan = CropPlan::draw(w, h, cfg, rng);
    let decoded = decode_scaled(bytes, plan.decode_scale(cfg))?;
    Ok(plan.render(&decoded.image, decoded.scale, cfg))
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
        // Follows links (the default folder is one); a link back into a
        // folder already being walked is skipped, not followed forever;
        // unreadable files are not fatal here, their decode will be.
        for entry in walkdir::WalkDir::new(&root).follow_links(true) {
            let entry = match entry {
                Ok(e) => e,
                Err(e) if e.loop_ancestor().is_some() => continue,
                Err(e) => {
                    let path = e.path().map_or_else(|| root.clone(), Path::to_path_buf);
                    match e.into_io_error() {
                        Some(source) if path == root => return Err(DataError::Io { path, source }),
                        _ => continue,
                    }
                }
            };
            if !entry.file_type().is_dir() && is_image_name(entry.path()) {
                files.push(entry.into_path());
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

/// The shuffled order of `n` files in `epoch`.
pub(crate) fn epoch_order(n: usize, seed: u64, epoch: u64) -> Vec<usize> {
    let mut order: Vec<usize> = (0..n).collect();
    order.shuffle(&mut ChaCha8Rng::seed_from_u64(mix(&[seed, 0x005e_ed0f_e90c, epoch])));
    order
}

/// Seeds from several parts (`cost_models::hash::mix`).
pub use cost_models::hash::mix;

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
    /// Shards: samples in each rank's shuffle buffer.
    pub shuffle_buffer: usize,
    /// Shards: where the stream starts (a new epoch `start.epoch`, this
    /// rank's saved state, or every old rank's to deal again).
    pub stream_start: StreamStart,
}

/// Samples a rank's shuffle buffer holds by default: WebDataset's usual
/// size; at SEER's ~100 KB JPEGs about 100 MB of host memory.
pub const DEFAULT_SHUFFLE_BUFFER: usize = 1000;

/// One rank's batch.
pub struct Batch {
    pub position: DataPosition,
    /// One tensor per crop group, `[images * count, 3, R, R]`, image-major.
    pub groups: Vec<Tensor>,
    pub layout: CropLayout,
    /// The samples used: indices into [`ImageFolder::files`], or for shards
    /// the sample's place in the shard list (samples of earlier shards + index).
    pub images: Vec<usize>,
    /// Shards: the stream's state after this batch (what a checkpoint saves).
    pub stream: Option<StreamState>,
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
    fn has_room(&self, bytes: usize) -> bool {
        self.used.load(Ordering::Relaxed) + bytes <= self.budget
    }
    /// Keeps `img` if it fits the budget; returns it shared either way.
    fn insert(&self, idx: usize, img: RgbImage) -> Arc<RgbImage> {
        let img = Arc::new(img);
        let bytes = img.as_raw().len();
        if self.has_room(bytes) {
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
/// training loop decides when to stop). Dropping it stops its threads.
pub struct DataLoader {
    rx: Vec<Receiver<Result<Batch, DataError>>>,
    handles: Vec<JoinHandle<()>>,
    produced: u64,
    next: DataPosition,
    failed: bool,
    source: Source,
}

/// What the loader reads, with what it needs to say where it stands.
enum Source {
    Folder(Arc<Shared>),
    Shards { shared: Arc<ShardShared>, state: StreamState },
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
pub(crate) fn time_batches(folder: ImageFolder, cfg: LoaderConfig, batches: usize) -> Result<Vec<f64>, DataError> {
    let shared = Shared::new(folder, cfg)?;
    let n = shared.folder.len();
    if n <= TIMING_PRELOAD_MAX {
        let all: Vec<usize> = (0..n).collect();
        for i in 0..n {
            shared.load(&all, i, 0)?;
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

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>, DataError> {
    std::thread::Builder::new()
        .name(name)
        .spawn(move || {
            crate::op_count::exclude_this_thread();
            f()
        })
        .map_err(|e| DataError::Io { path: PathBuf::from("<thread>"), source: e })
}

impl DataLoader {
    pub fn new(data: Dataset, cfg: LoaderConfig) -> Result<DataLoader, DataError> {
        match data {
            Dataset::Folder(f) => DataLoader::folder(f, cfg),
            Dataset::Shards(s) => DataLoader::shards(s, cfg),
        }
    }

    fn folder(folder: ImageFolder, cfg: LoaderConfig) -> Result<DataLoader, DataError> {
        let workers = cfg.workers.max(1);
        let prefetch = cfg.prefetch.max(1);
        let next = cfg.start;
        let shared = Arc::new(Shared::new(folder, cfg)?);
        let mut rx = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers);
        for w in 0..workers {
            let (tx, r) = sync_channel(prefetch);
            let sh = Arc::clone(&shared);
            // Worker w makes batches w, w + workers, ...; one channel per
            // worker keeps the order without a reorder buffer and bounds
            // how far each worker runs ahead.
            handles.push(spawn(format!("seerscale-data-{w}"), move || {
                let mut k = w as u64;
                loop {
                    let res = sh.make_batch(sh.position_after(sh.cfg.start, k));
                    let stop = res.is_err();
                    if tx.send(res).is_err() || stop {
                        return;
                    }
                    k += workers as u64;
                }
            })?);
            rx.push(r);
        }
        Ok(DataLoader { rx, handles, produced: 0, next, failed: false, source: Source::Folder(shared) })
    }

    /// One reader thread streams the rank's shards (sequential I/O, the
    /// shuffle buffer) and deals whole batches of encoded samples to the
    /// workers round-robin; the workers decode and crop them.
    fn shards(set: Arc<ShardSet>, cfg: LoaderConfig) -> Result<DataLoader, DataError> {
        check_config(&cfg)?;
        let scfg = StreamConfig { seed: cfg.seed, rank: cfg.rank, world: cfg.world, images_per_rank: cfg.images_per_rank, buffer: cfg.shuffle_buffer.max(1) };
        let state = match &cfg.stream_start {
            StreamStart::Fresh => fresh_epoch(&set, &scfg, cfg.start.epoch)?,
            StreamStart::Mine(s) => resume_mine(s, &set)?,
            StreamStart::Pooled(all) => redistribute(all, &set, &scfg, cfg.start.step)?,
        };
        let mut stream = Stream::new(Arc::clone(&set), scfg, state.clone())?;
        let workers = cfg.workers.max(1);
        let prefetch = cfg.prefetch.max(1);
        let mut offsets = Vec::with_capacity(set.len());
        let mut total = 0u64;
        for &c in set.counts() {
            offsets.push(total);
            total += c;
        }
        let next = position_of(&state);
        let shared = Arc::new(ShardShared { set, cfg, offsets, bad: Mutex::new(BTreeSet::new()) });
        let mut rx = Vec::with_capacity(workers);
        let mut jobs = Vec::with_capacity(workers);
        let mut handles = Vec::with_capacity(workers + 1);
        for w in 0..workers {
            let (job_tx, job_rx) = sync_channel::<Result<Job, DataError>>(prefetch);
            let (tx, r) = sync_channel(prefetch);
            let sh = Arc::clone(&shared);
            handles.push(spawn(format!("seerscale-data-{w}"), move || {
                while let Ok(job) = job_rx.recv() {
                    let res = job.and_then(|j| sh.make_batch(j));
                    let stop = res.is_err();
                    if tx.send(res).is_err() || stop {
                        return;
                    }
                }
            })?);
            rx.push(r);
            jobs.push(job_tx);
        }
        let rank = shared.cfg.rank;
        handles.push(spawn("seerscale-shards".into(), move || {
            let mut warned = 0;
            for k in 0.. {
                let job =
                    stream.next_batch().map_err(DataError::from).map(|(epoch, step, samples)| Job { epoch, step, samples, after: stream.state().clone() });
                for w in &stream.warnings[warned..] {
                    eprintln!("warning: rank {rank}: {w}");
                }
                warned = stream.warnings.len();
                let stop = job.is_err();
                if jobs[k % jobs.len()].send(job).is_err() || stop {
                    return;
                }
            }
        })?);
        Ok(DataLoader { rx, handles, produced: 0, next, failed: false, source: Source::Shards { shared, state } })
    }

    /// Steps in the current epoch.
    pub fn steps_per_epoch(&self) -> u64 {
        match &self.source {
            Source::Folder(sh) => sh.steps_per_epoch,
            Source::Shards { state, .. } => state.epoch_steps,
        }
    }

    /// The position of the next batch `next()` returns (save it to resume).
    pub fn position(&self) -> DataPosition {
        self.next
    }

    /// Shards: the stream's state after the last batch returned (save it
    /// with the position to resume mid-epoch); None for a folder.
    pub fn stream_state(&self) -> Option<&StreamState> {
        match &self.source {
            Source::Folder(_) => None,
            Source::Shards { state, .. } => Some(state),
        }
    }

    /// Images found unreadable so far.
    pub fn skipped_files(&self) -> usize {
        self.skipped_paths().len()
    }

    /// What they were, sorted: file paths, or `shard.tar:key` in shards.
    pub fn skipped_paths(&self) -> Vec<String> {
        match &self.source {
            Source::Folder(sh) => {
                let bad = sh.bad.lock().map(|s| s.iter().copied().collect::<Vec<_>>()).unwrap_or_default();
                let mut v: Vec<String> = bad.into_iter().map(|i| sh.folder.files()[i].display().to_string()).collect();
                v.sort();
                v
            }
            Source::Shards { shared, .. } => shared.bad.lock().map(|b| b.iter().cloned().collect()).unwrap_or_default(),
        }
    }
}

/// The settings every loader checks: crops, rank in world, batch.
fn check_config(cfg: &LoaderConfig) -> Result<(), DataError> {
    cfg.augment.validate()?;
    if cfg.world == 0 || cfg.rank >= cfg.world {
        return Err(DataError::Config { field: "rank", reason: format!("rank {} of world {}", cfg.rank, cfg.world) });
    }
    if cfg.images_per_rank == 0 {
        return Err(DataError::Config { field: "images_per_rank", reason: "must be >= 1".into() });
    }
    Ok(())
}

/// The position of the batch a stream in `state` makes next.
fn position_of(state: &StreamState) -> DataPosition {
    if state.step >= state.epoch_steps {
        DataPosition { epoch: state.epoch + 1, step: 0 }
    } else {
        DataPosition { epoch: state.epoch, step: state.step }
    }
}

impl Iterator for DataLoader {
    type Item = Result<Batch, DataError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        let w = (self.produced % self.rx.len() as u64) as usize;
        let mut res = self.rx[w].recv().unwrap_or(Err(DataError::WorkerGone));
        self.produced += 1;
        match (&mut res, &mut self.source) {
            (Ok(b), Source::Folder(sh)) => self.next = sh.position_after(b.position, 1),
            (Ok(b), Source::Shards { state, .. }) => {
                if let Some(after) = &b.stream {
                    *state = after.clone();
                    self.next = position_of(state);
                }
            }
            (Err(_), _) => self.failed = true,
        }
        Some(res)
    }
}

impl Drop for DataLoader {
    fn drop(&mut self) {
        // Closing the channels makes every worker's next send fail; the
        // shard reader's next send then fails too.
        self.rx.clear();
        for h in self.handles.drain(..) {
            let _ = h.join();
        }
    }
}

/// A batch of encoded samples, dealt by the shard reader to a worker.
struct Job {
    epoch: u64,
    step: u64,
    samples: Vec<Sample>,
    after: StreamState,
}

struct ShardShared {
    set: Arc<ShardSet>,
    cfg: LoaderConfig,
    /// Samples before each shard (a sample's id is its shard's offset + index).
    offsets: Vec<u64>,
    bad: Mutex<BTreeSet<String>>,
}

impl ShardShared {
    /// Decodes and crops a job's samples; an undecodable one is replaced by
    /// the next one of the batch that decodes, and named.
    fn make_batch(&self, job: Job) -> Result<Batch, DataError> {
        let cfg = &self.cfg;
        let n = job.samples.len();
        let first = job.step as usize * cfg.images_per_rank * cfg.world + cfg.rank * cfg.images_per_rank;
        let mut data = BatchData::new(cfg);
        let mut images = Vec::with_capacity(n);
        for i in 0..n {
            let seed = mix(&[cfg.seed, job.epoch, (first + i) as u64]);
            let mut done = false;
            for t in 0..n {
                let s = &job.samples[(i + t) % n];
                match augment_bytes(&s.image, &cfg.augment, &mut ChaCha8Rng::seed_from_u64(seed)) {
                    Ok(crops) => {
                        data.push(crops);
                        images.push((self.offsets[s.shard as usize] + s.index) as usize);
                        done = true;
                        break;
                    }
                    Err(_) => {
                        if let Ok(mut b) = self.bad.lock() {
                            b.insert(format!("{}:{}", self.set.name(s.shard), s.key));
                        }
                    }
                }
            }
            if !done {
                return Err(DataError::BatchUnreadable { spec: self.set.spec().to_string(), samples: n });
            }
        }
        let skipped = self.bad.lock().map(|b| b.len()).unwrap_or(0);
        data.finish(DataPosition { epoch: job.epoch, step: job.step }, images, skipped, Some(job.after))
    }
}

/// A batch's crops, group by group, image-major.
struct BatchData<'a> {
    cfg: &'a LoaderConfig,
    groups: Vec<Vec<f32>>,
}

impl<'a> BatchData<'a> {
    fn new(cfg: &'a LoaderConfig) -> BatchData<'a> {
        let groups = cfg.augment.crops.iter().map(|g| Vec::with_capacity(cfg.images_per_rank * g.count * 3 * (g.resolution as usize).pow(2))).collect();
        BatchData { cfg, groups }
    }

    /// One image's crops (this image's are contiguous in each group).
    fn push(&mut self, crops: Crops) {
        for (g, crops) in crops.into_iter().enumerate() {
            for c in crops {
                self.groups[g].extend_from_slice(&c);
            }
        }
    }

    fn finish(self, position: DataPosition, images: Vec<usize>, skipped_files: usize, stream: Option<StreamState>) -> Result<Batch, DataError> {
        let cfg = self.cfg;
        let specs = &cfg.augment.crops;
        let mut tensors = Vec::with_capacity(specs.len());
        for (g, spec) in specs.iter().enumerate() {
            let r = spec.resolution as i64;
            let rows = (cfg.images_per_rank * spec.count) as i64;
            tensors.push(Tensor::f_from_slice(&self.groups[g])?.f_view([rows, 3, r, r])?);
        }
        Ok(Batch {
            position,
            groups: tensors,
            layout: CropLayout { images: cfg.images_per_rank as i64, groups: specs.iter().map(|g| g.count as i64).collect() },
            images,
            skipped_files,
            stream,
        })
    }
}

impl Shared {
    fn new(folder: ImageFolder, cfg: LoaderConfig) -> Result<Shared, DataError> {
        check_config(&cfg)?;
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

    /// The crops of file `idx`, its RNG seeded by `seed`: from the decode
    /// cache, else decoded (at full size while the cache has room for it,
    /// else shrunk as far as the crops allow).
    fn crops_of(&self, idx: usize, seed: u64) -> Result<Crops, String> {
        let cfg = &self.cfg.augment;
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        if let Some(img) = self.cache.get(idx) {
            return Ok(CropPlan::draw(img.width(), img.height(), cfg, &mut rng).render(&img, 1, cfg));
        }
        let bytes = std::fs::read(&self.folder.files()[idx]).map_err(|e| e.to_string())?;
        let (w, h) = dimensions(&bytes)?;
        if self.cache.has_room(w as usize * h as usize * 3) {
            let img = self.cache.insert(idx, decode_bytes(&bytes)?);
            return Ok(CropPlan::draw(w, h, cfg, &mut rng).render(&img, 1, cfg));
        }
        augment_bytes(&bytes, cfg, &mut rng)
    }

    /// The crops of the image at epoch position `pos`; an unreadable file
    /// is replaced by the next one in the epoch order (deterministically).
    fn load(&self, order: &[usize], pos: usize, seed: u64) -> Result<(usize, Crops), DataError> {
        let n = order.len();
        for t in 0..n {
            let idx = order[(pos + t) % n];
            if self.bad.lock().map(|b| b.contains(&idx)).unwrap_or(false) {
                continue;
            }
            match self.crops_of(idx, seed) {
                Ok(crops) => return Ok((idx, crops)),
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
        let mut data = BatchData::new(cfg);
        let mut images = Vec::with_capacity(cfg.images_per_rank);
        for i in 0..cfg.images_per_rank {
            let pos = first + i;
            let (idx, crops) = self.load(&order, pos, mix(&[cfg.seed, position.epoch, pos as u64]))?;
            data.push(crops);
            images.push(idx);
        }
        let skipped = self.bad.lock().map(|b| b.len()).unwrap_or(0);
        data.finish(position, images, skipped, None)
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
        LoaderConfig {
            seed: 9,
            rank,
            world,
            images_per_rank: images,
            augment: crops(),
            workers: 2,
            prefetch: 2,
            start: DataPosition::default(),
            shuffle_buffer: 8,
            stream_start: StreamStart::Fresh,
        }
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
        let mut loader = DataLoader::new(Dataset::Folder(folder), loader_cfg(0, 1, 4)).unwrap();
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
        let mut loader = DataLoader::new(Dataset::Folder(folder), loader_cfg(0, 1, 2)).unwrap();
        assert_eq!(loader.steps_per_epoch(), 3);
        // Two full epochs: every batch complete, both bad files found.
        let mut seen = HashSet::new();
        for _ in 0..6 {
            let b = loader.next().unwrap().unwrap();
            assert_eq!(b.groups[0].size()[0], 4);
            seen.extend(b.images);
        }
        assert_eq!(loader.skipped_files(), 2);
        assert_eq!(loader.skipped_paths(), vec![dir.join("broken.jpg").display().to_string(), dir.join("empty.png").display().to_string()]);
        assert_eq!(seen.len(), 5);
        std::fs::remove_dir_all(&dir).ok();
    }

    #[test]
    fn folders_smaller_than_a_global_batch_are_passed_over_several_times() {
        let dir = temp_folder("small", 3, &[]);
        let folder = ImageFolder::open(&dir).unwrap();
        let mut loader = DataLoader::new(Dataset::Folder(folder), loader_cfg(1, 2, 4)).unwrap();
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
        let mut loader = DataLoader::new(Dataset::Folder(folder.clone()), loader_cfg(0, 1, 1)).unwrap();
        let err = loader.next().unwrap().err().unwrap().to_string();
        assert!(err.contains("no readable image") && err.contains(dir.to_str().unwrap()), "{err}");
        // Files, not attempts.
        assert!(err.contains("all 2 files failed"), "{err}");
        assert!(loader.next().is_none());
        // Fewer images than a global batch: still an error about readability, not a panic.
        let mut small = DataLoader::new(Dataset::Folder(folder), loader_cfg(0, 2, 2)).unwrap();
        assert!(small.next().unwrap().is_err());
        let missing = ImageFolder::open(dir.join("nope")).unwrap_err().to_string();
        assert!(missing.contains("nope"), "{missing}");
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Links are followed (the default folder is one), and a link back to
    /// a folder above is a loop the walk steps over instead of following.
    #[cfg(unix)]
    #[test]
    fn the_folder_walk_follows_links_and_stops_at_loops() {
        let dir = temp_folder("loop", 2, &[]);
        let elsewhere = temp_folder("linked", 1, &[]);
        std::os::unix::fs::symlink(&elsewhere, dir.join("more")).unwrap();
        std::os::unix::fs::symlink(&dir, dir.join("back-up")).unwrap();
        let f = ImageFolder::open(&dir).unwrap();
        assert_eq!(f.len(), 3, "two here, one through the link, none again through the loop: {:?}", f.files());
        std::fs::remove_dir_all(&dir).ok();
        std::fs::remove_dir_all(&elsewhere).ok();
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
        let mut loader = DataLoader::new(Dataset::Folder(list), loader_cfg(0, 1, 3)).unwrap();
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
            let loader = DataLoader::new(Dataset::Folder(ImageFolder::open(&dir).unwrap()), cfg).unwrap();
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
            let l = DataLoader::new(Dataset::Folder(folder.clone()), loader_cfg(rank, world, per)).unwrap();
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
        let full: Vec<Batch> = DataLoader::new(Dataset::Folder(folder.clone()), loader_cfg(0, 1, 2)).unwrap().take(5).map(|b| b.unwrap()).collect();
        let mut cfg = loader_cfg(0, 1, 2);
        cfg.start = full[3].position;
        let resumed: Vec<Batch> = DataLoader::new(Dataset::Folder(folder), cfg).unwrap().take(2).map(|b| b.unwrap()).collect();
        for (a, b) in full[3..].iter().zip(&resumed) {
            assert_eq!(a.position, b.position);
            assert!(a.groups[0].equal(&b.groups[0]));
        }
        std::fs::remove_dir_all(&dir).ok();
    }

    /// Tar shards of small PNGs (`per` samples each, one corrupt sample in
    /// shard 1), opened by brace notation.
    fn shard_dataset(tag: &str, shards: usize, per: usize) -> (PathBuf, Dataset) {
        let dir = std::env::temp_dir().join(format!("seerscale-data-shards-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        for s in 0..shards {
            let members: Vec<(String, Vec<u8>)> = (0..per)
                .map(|i| {
                    let mut png = Vec::new();
                    let img = RgbImage::from_fn(40, 30, |x, y| image::Rgb([(x * 6) as u8, (y * 8) as u8, (s * 50 + i * 9) as u8]));
                    img.write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png).unwrap();
                    if s == 1 && i == 2 {
                        png = b"\x89PNG broken".to_vec();
                    }
                    (format!("{s}{i:03}.png"), png)
                })
                .collect();
            crate::shards::tests::write_tar(&dir.join(format!("s-{s}.tar")), &members.iter().map(|(n, b)| (n.as_str(), b.clone())).collect::<Vec<_>>());
        }
        let data = Dataset::open(format!("{}/s-{{0..{}}}.tar", dir.display(), shards - 1)).unwrap();
        (dir, data)
    }

    /// Shards through the loader (one rank: it reads every shard): whole
    /// batches, the corrupt sample named and replaced, the stream state carried on each batch, the same
    /// batches with 1 or 3 workers, and every sample of an epoch once.
    #[test]
    fn shards_load_deterministically_and_skip_a_corrupt_sample() {
        let (dir, data) = shard_dataset("load", 4, 6);
        assert!(matches!(data, Dataset::Shards(_)));
        assert_eq!(data.samples(), 24);
        let run = |workers: usize| {
            let mut cfg = loader_cfg(0, 1, 3);
            cfg.workers = workers;
            let mut l = DataLoader::new(data.clone(), cfg).unwrap();
            let batches: Vec<Batch> = l.by_ref().take(8).map(|b| b.unwrap()).collect();
            (batches, l.skipped_paths(), l.stream_state().cloned())
        };
        let (a, bad_a, state) = run(1);
        let (b, _, _) = run(3);
        for (x, y) in a.iter().zip(&b) {
            assert_eq!((x.position, &x.images), (y.position, &y.images));
            assert!(x.groups[0].equal(&y.groups[0]));
        }
        // 24 samples, 3 per batch: 8 steps an epoch, every sample read once.
        assert_eq!(a.iter().map(|x| x.position.step).collect::<Vec<_>>(), (0..8).collect::<Vec<_>>());
        let state = state.unwrap();
        assert_eq!((state.epoch, state.step, state.epoch_steps), (0, 8, 8));
        assert_eq!(bad_a, ["s-1.tar:1002"]);
        let ids: HashSet<usize> = a.iter().flat_map(|x| x.images.clone()).collect();
        assert_eq!(ids.len(), 23, "the corrupt sample replaced by another of its batch");
        assert!(!ids.contains(&(6 + 2)), "shard 1's sample 2 is never used");
        assert!(a.iter().all(|x| x.groups[0].size()[0] == 6));
        std::fs::remove_dir_all(&dir).ok();
    }
}
