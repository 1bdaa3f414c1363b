//! WebDataset tar shards: the shard list a spec names (a path, a glob or
//! brace notation `part-{000000..009999}.tar`), the per-shard sample
//! counts (from the `index.json` that `seerscale data pack` writes, else
//! from the tar headers alone), and a sequential reader that groups tar
//! members into samples by key (`000123.jpg` with an optional
//! `000123.cls`) and can start at any sample by seeking past the others.
//!
//! Memory grows with the number of shards, never with the number of
//! samples: nothing per sample is kept beyond the shuffle buffer.

use serde::{Deserialize, Serialize};
use std::fs::File;
use std::io::{BufReader, Read};
use std::path::{Path, PathBuf};

/// The index `data pack` writes beside its shards.
pub const INDEX_FILE: &str = "index.json";
const INDEX_FORMAT: &str = "seerscale-shards/1";

#[derive(Debug, thiserror::Error)]
pub enum ShardError {
    #[error("{spec}: {reason}")]
    Spec { spec: String, reason: String },
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: not a tar archive ({reason})")]
    NotTar { path: PathBuf, reason: String },
}

/// A shard's entry in `index.json`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct IndexEntry {
    /// File name, relative to the index's folder.
    pub file: String,
    pub samples: u64,
    /// File size when indexed: a shard rewritten since is counted again.
    pub bytes: u64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ShardIndex {
    pub format: String,
    pub samples: u64,
    pub shards: Vec<IndexEntry>,
}

impl ShardIndex {
    pub fn new(shards: Vec<IndexEntry>) -> ShardIndex {
        ShardIndex { format: INDEX_FORMAT.into(), samples: shards.iter().map(|s| s.samples).sum(), shards }
    }

    pub fn write(&self, dir: &Path) -> Result<(), ShardError> {
        let path = dir.join(INDEX_FILE);
        let text = serde_json::to_string_pretty(self).map_err(|e| ShardError::Spec { spec: path.display().to_string(), reason: e.to_string() })?;
        std::fs::write(&path, text).map_err(|source| ShardError::Io { path, source })
    }

    fn read(dir: &Path) -> Option<ShardIndex> {
        let text = std::fs::read_to_string(dir.join(INDEX_FILE)).ok()?;
        serde_json::from_str::<ShardIndex>(&text).ok().filter(|i| i.format == INDEX_FORMAT)
    }
}

/// Tar shards in a fixed order with their sample counts.
#[derive(Clone, Debug)]
pub struct ShardSet {
    spec: String,
    paths: Vec<PathBuf>,
    counts: Vec<u64>,
}

/// Whether `spec` names tar shards rather than an image folder or list:
/// it ends in `.tar` (after any brace or glob), or is a folder holding a
/// shard `index.json`.
pub(crate) fn is_shard_spec(spec: &str) -> bool {
    let p = Path::new(spec);
    spec.ends_with(".tar") || spec.ends_with(".tar}") || (p.is_dir() && p.join(INDEX_FILE).is_file())
}

impl ShardSet {
    /// Opens the shards `spec` names, in sorted order for a glob or a
    /// folder and in the written order for braces. Counts come from the
    /// folder's `index.json` where it lists a shard at its current size,
    /// else from the shard's tar headers.
    pub fn open(spec: &str) -> Result<ShardSet, ShardError> {
        let bad = |reason: String| ShardError::Spec { spec: spec.to_string(), reason };
        let paths: Vec<PathBuf> = if Path::new(spec).is_dir() {
            let index = ShardIndex::read(Path::new(spec)).ok_or_else(|| bad(format!("no readable {INDEX_FILE} (written by `seerscale data pack`)")))?;
            index.shards.iter().map(|s| Path::new(spec).join(&s.file)).collect()
        } else {
            let mut out = Vec::new();
            for one in expand_braces(spec).map_err(bad)? {
                if one.contains(['*', '?', '[']) {
                    let mut hits: Vec<PathBuf> = glob::glob(&one).map_err(|e| bad(e.to_string()))?.filter_map(Result::ok).collect();
                    hits.sort();
                    out.extend(hits);
                } else {
                    out.push(PathBuf::from(one));
                }
            }
            out
        };
        if paths.is_empty() {
            return Err(bad("names no shard".into()));
        }
        if let Some(missing) = paths.iter().find(|p| !p.is_file()) {
            return Err(ShardError::Io { path: missing.clone(), source: std::io::Error::new(std::io::ErrorKind::NotFound, "no such shard") });
        }
        let mut counts = Vec::with_capacity(paths.len());
        let mut index: Option<(PathBuf, ShardIndex)> = None;
        for p in &paths {
            let dir = p.parent().map(Path::to_path_buf).unwrap_or_default();
            if index.as_ref().is_none_or(|(d, _)| *d != dir) {
                index = ShardIndex::read(&dir).map(|i| (dir.clone(), i));
            }
            let name = p.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default();
            let size = std::fs::metadata(p).map(|m| m.len()).map_err(|source| ShardError::Io { path: p.clone(), source })?;
            let listed = index.as_ref().and_then(|(_, i)| i.shards.iter().find(|e| e.file == name && e.bytes == size)).map(|e| e.samples);
            counts.push(match listed {
                Some(n) => n,
                None => count_samples(p)?,
            });
        }
        Ok(ShardSet { spec: spec.to_string(), paths, counts })
    }

    pub fn spec(&self) -> &str {
        &self.spec
    }
    pub fn paths(&self) -> &[PathBuf] {
        &self.paths
    }
    pub fn counts(&self) -> &[u64] {
        &self.counts
    }
    pub fn len(&self) -> usize {
        self.paths.len()
    }
    pub fn is_empty(&self) -> bool {
        self.paths.is_empty()
    }
    pub fn samples(&self) -> u64 {
        self.counts.iter().sum()
    }
    /// `part-000003.tar` for shard 3 (what warnings and skip lists name).
    pub fn name(&self, shard: u32) -> String {
        self.paths.get(shard as usize).and_then(|p| p.file_name()).map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| format!("shard {shard}"))
    }
}

/// Expands every `{a..b}` (numeric, zero padding kept) and `{x,y,z}` in
/// `spec`, left to right, as the shell and WebDataset do.
pub(crate) fn expand_braces(spec: &str) -> Result<Vec<String>, String> {
    let Some(open) = spec.find('{') else { return Ok(vec![spec.to_string()]) };
    let close = spec[open..].find('}').map(|i| open + i).ok_or_else(|| format!("unclosed '{{' at byte {open}"))?;
    let (head, body, tail) = (&spec[..open], &spec[open + 1..close], &spec[close + 1..]);
    let options: Vec<String> = if let Some((a, b)) = body.split_once("..") {
        let (lo, hi) = (
            a.parse::<u64>().map_err(|_| format!("'{{{body}}}': {a} is not a number"))?,
            b.parse::<u64>().map_err(|_| format!("'{{{body}}}': {b} is not a number"))?,
        );
        if lo > hi {
            return Err(format!("'{{{body}}}' counts down"));
        }
        if hi - lo >= 100_000_000 {
            return Err(format!("'{{{body}}}' names more than 10^8 shards"));
        }
        let width = if a.starts_with('0') && a.len() > 1 { a.len() } else { 0 };
        (lo..=hi).map(|i| format!("{i:0width$}")).collect()
    } else {
        body.split(',').map(str::to_string).collect()
    };
    let rest = expand_braces(tail)?;
    Ok(options.iter().flat_map(|o| rest.iter().map(move |r| format!("{head}{o}{r}"))).collect())
}

/// WebDataset's split of a member name: the key is the path up to the
/// first dot of the file name, the extension the rest, lower-cased.
pub(crate) fn split_key(name: &str) -> Option<(&str, String)> {
    let file_start = name.rfind('/').map_or(0, |i| i + 1);
    let dot = name[file_start..].find('.')? + file_start;
    Some((&name[..dot], name[dot + 1..].to_ascii_lowercase()))
}

pub(crate) fn is_image_ext(ext: &str) -> bool {
    matches!(ext, "jpg" | "jpeg" | "png" | "webp")
}

/// One sample of a shard: its image's bytes and, if present, its class.
#[derive(Clone, Debug)]
pub struct Sample {
    pub shard: u32,
    /// Position in the shard, counting samples (key groups with an image).
    pub index: u64,
    pub key: String,
    pub image: Vec<u8>,
    pub class: Option<i64>,
}

/// Counts the samples of a shard from its headers, seeking over the data.
pub(crate) fn count_samples(path: &Path) -> Result<u64, ShardError> {
    let mut reader = ShardReader::open(path, 0, 0)?;
    let mut n = 0;
    while reader.next_sample(false)?.is_some() {
        n += 1;
    }
    Ok(n)
}

/// Reads a shard's samples in order from sample `start` on. The walk is
/// its own (tar's `Entries` borrows its archive for the whole walk); the
/// headers are parsed by the `tar` crate, GNU long names and PAX `path`
/// and `size` records included. Data not wanted is seeked over.
pub struct ShardReader {
    shard: u32,
    path: PathBuf,
    file: BufReader<File>,
    /// Index of the next sample this reader yields.
    next_index: u64,
    /// The header read ahead: the first member of the next sample.
    pending: Option<Member>,
    done: bool,
    /// Set when the archive ended in a broken header or short data.
    pub truncated: Option<String>,
}

const BLOCK: u64 = 512;

impl ShardReader {
    pub fn open(path: &Path, shard: u32, start: u64) -> Result<ShardReader, ShardError> {
        let file = File::open(path).map_err(|source| ShardError::Io { path: path.to_path_buf(), source })?;
        let mut r = ShardReader {
            shard,
            path: path.to_path_buf(),
            file: BufReader::with_capacity(1 << 20, file),
            next_index: 0,
            pending: None,
            done: false,
            truncated: None,
        };
        while r.next_index < start {
            if r.next_sample(false)?.is_none() {
                break;
            }
        }
        Ok(r)
    }

    pub fn next_index(&self) -> u64 {
        self.next_index
    }

    pub fn shard(&self) -> u32 {
        self.shard
    }

    /// The next sample (its image's bytes read only if `read`), or None at
    /// the end. A shard that breaks off ends there; `truncated` says where.
    pub fn next_sample(&mut self, read: bool) -> Result<Option<Sample>, ShardError> {
        loop {
            let mut key: Option<String> = None;
            let (mut image, mut class) = (None::<Vec<u8>>, None);
            loop {
                let member = match self.pending.take() {
                    Some(m) => Some(m),
                    None => self.next_header()?,
                };
                let Some(m) = member else { break };
                if key.as_ref().is_some_and(|g| *g != m.key) {
                    // The next sample's first member: its data stays unread.
                    self.pending = Some(m);
                    break;
                }
                let want_image = is_image_ext(&m.ext) && image.is_none();
                let Some(data) = self.member_data(&m, (want_image && read) || m.ext == "cls")? else { break };
                key.get_or_insert(m.key);
                if want_image {
                    image = Some(data);
                } else if m.ext == "cls" {
                    class = std::str::from_utf8(&data).ok().and_then(|s| s.trim().parse().ok());
                }
            }
            let Some(key) = key else { return Ok(None) };
            // A key without an image (metadata only) is not a sample.
            if let Some(image) = image {
                let index = self.next_index;
                self.next_index += 1;
                return Ok(Some(Sample { shard: self.shard, index, key, image, class }));
            }
        }
    }

    fn io_err(&self, source: std::io::Error) -> ShardError {
        ShardError::Io { path: self.path.clone(), source }
    }

    /// Reads (`read`) or seeks over a member's data, the file left at the
    /// next header; None where the shard breaks off inside it.
    fn member_data(&mut self, m: &Member, read: bool) -> Result<Option<Vec<u8>>, ShardError> {
        use std::io::Seek;
        let padded = m.size.div_ceil(BLOCK) * BLOCK;
        if read {
            let mut data = vec![0u8; m.size as usize];
            let n = read_full(&mut self.file, &mut data).map_err(|e| self.io_err(e))?;
            if n as u64 != m.size {
                self.broken(format!("member {} cut off after {n} of {} bytes", m.name, m.size));
                return Ok(None);
            }
            self.file.seek_relative((padded - m.size) as i64).map_err(|e| self.io_err(e))?;
            return Ok(Some(data));
        }
        let here = self.file.stream_position().map_err(|e| self.io_err(e))?;
        let len = self.file.get_ref().metadata().map(|m| m.len()).unwrap_or(u64::MAX);
        if here + m.size > len {
            self.broken(format!("member {} cut off after {} of {} bytes", m.name, len.saturating_sub(here), m.size));
            return Ok(None);
        }
        self.file.seek_relative(padded as i64).map_err(|e| self.io_err(e))?;
        Ok(Some(Vec::new()))
    }

    fn broken(&mut self, what: String) {
        self.done = true;
        self.truncated = Some(what);
    }

    /// The next regular member's header (GNU long names and PAX records
    /// applied, `__*` and dot members and non-files passed over), the file
    /// left at its data.
    fn next_header(&mut self) -> Result<Option<Member>, ShardError> {
        let mut long_name: Option<String> = None;
        let mut pax_size: Option<u64> = None;
        while !self.done {
            let mut block = [0u8; BLOCK as usize];
            match read_full(&mut self.file, &mut block).map_err(|e| self.io_err(e))? {
                0 => {
                    self.done = true;
                    return Ok(None);
                }
                n if n < block.len() => {
                    self.broken(format!("a header cut off after {n} bytes"));
                    return Ok(None);
                }
                _ => {}
            }
            if block.iter().all(|&b| b == 0) {
                self.done = true;
                return Ok(None);
            }
            let header = tar::Header::from_byte_slice(&block);
            if header.cksum().ok() != Some(header_checksum(&block)) {
                if self.next_index == 0 && self.pending.is_none() && long_name.is_none() {
                    return Err(ShardError::NotTar { path: self.path.clone(), reason: "the first header's checksum is wrong".into() });
                }
                self.broken("a header with a wrong checksum".into());
                return Ok(None);
            }
            let size = match pax_size.take().map(Ok).unwrap_or_else(|| header.entry_size()) {
                Ok(s) => s,
                Err(e) => {
                    self.broken(format!("a header's size: {e}"));
                    return Ok(None);
                }
            };
            let name = long_name.take().unwrap_or_else(|| String::from_utf8_lossy(&header.path_bytes()).into_owned());
            let kind = header.entry_type();
            let mut m = Member { key: String::new(), ext: String::new(), name, size };
            if kind.is_gnu_longname() || kind.is_pax_local_extensions() {
                let Some(data) = self.member_data(&m, true)? else { return Ok(None) };
                if kind.is_gnu_longname() {
                    long_name = Some(String::from_utf8_lossy(&data).trim_end_matches('\0').to_string());
                } else {
                    for ext in tar::PaxExtensions::new(&data).flatten() {
                        match ext.key() {
                            Ok("path") => long_name = ext.value().ok().map(str::to_string),
                            Ok("size") => pax_size = ext.value().ok().and_then(|v| v.parse().ok()),
                            _ => {}
                        }
                    }
                }
                continue;
            }
            let base = m.name.rsplit('/').next().unwrap_or("");
            let split = split_key(&m.name).map(|(k, e)| (k.to_string(), e));
            match split {
                Some((key, ext)) if kind.is_file() && !base.starts_with("__") && !base.starts_with('.') => {
                    (m.key, m.ext) = (key, ext);
                    return Ok(Some(m));
                }
                _ => {
                    if self.member_data(&m, false)?.is_none() {
                        return Ok(None);
                    }
                }
            }
        }
        Ok(None)
    }
}

/// A member's header, as far as samples need it.
struct Member {
    key: String,
    ext: String,
    name: String,
    size: u64,
}

/// tar's header checksum: the header's bytes summed with the checksum
/// field read as spaces.
fn header_checksum(block: &[u8; 512]) -> u32 {
    block.iter().enumerate().map(|(i, &b)| if (148..156).contains(&i) { b' ' as u32 } else { b as u32 }).sum()
}

/// Reads until `buf` is full or the file ends; the count read.
fn read_full(r: &mut impl Read, buf: &mut [u8]) -> std::io::Result<usize> {
    let mut n = 0;
    while n < buf.len() {
        match r.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => n += k,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(n)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A tar of `(name, bytes)` members, written by the `tar` crate.
    pub(crate) fn write_tar(path: &Path, members: &[(&str, Vec<u8>)]) {
        let mut b = tar::Builder::new(File::create(path).unwrap());
        for (name, data) in members {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o644);
            h.set_cksum();
            b.append_data(&mut h, name, data.as_slice()).unwrap();
        }
        b.into_inner().unwrap();
    }

    fn temp(tag: &str) -> PathBuf {
        let d = std::env::temp_dir().join(format!("seerscale-shards-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&d);
        std::fs::create_dir_all(&d).unwrap();
        d
    }

    #[test]
    fn braces_expand_as_the_shell_does() {
        assert_eq!(expand_braces("a-{008..011}.tar").unwrap(), ["a-008.tar", "a-009.tar", "a-010.tar", "a-011.tar"]);
        assert_eq!(expand_braces("{x,y}/p{1..2}.tar").unwrap(), ["x/p1.tar", "x/p2.tar", "y/p1.tar", "y/p2.tar"]);
        assert_eq!(expand_braces("plain.tar").unwrap(), ["plain.tar"]);
        assert!(expand_braces("a{1..").unwrap_err().contains("unclosed"));
        assert!(expand_braces("a{5..1}.tar").unwrap_err().contains("counts down"));
        assert!(expand_braces("a{x..1}.tar").unwrap_err().contains("not a number"));
        assert_eq!(split_key("dir/000123.seg.PNG"), Some(("dir/000123", "seg.png".to_string())));
        assert_eq!(split_key("a.b/noext"), None);
    }

    #[test]
    fn members_group_into_samples_by_key() {
        let d = temp("group");
        let long = format!("{}/000004.jpg", "deep".repeat(40));
        write_tar(
            &d.join("s.tar"),
            &[
                ("000001.jpg", b"one".to_vec()),
                ("000001.cls", b" 7\n".to_vec()),
                ("000002.json", b"{}".to_vec()), // no image: not a sample
                ("__key__", b"x".to_vec()),
                ("000003.txt", b"caption".to_vec()),
                ("000003.webp", b"three".to_vec()),
                (&long, b"four".to_vec()), // a GNU long name
            ],
        );
        let mut r = ShardReader::open(&d.join("s.tar"), 5, 0).unwrap();
        let a = r.next_sample(true).unwrap().unwrap();
        assert_eq!((a.shard, a.index, a.key.as_str(), a.image.as_slice(), a.class), (5, 0, "000001", &b"one"[..], Some(7)));
        let b = r.next_sample(true).unwrap().unwrap();
        assert_eq!((b.index, b.key.as_str(), b.image.as_slice(), b.class), (1, "000003", &b"three"[..], None));
        let c = r.next_sample(true).unwrap().unwrap();
        assert_eq!((c.index, c.key, c.image), (2, long.trim_end_matches(".jpg").to_string(), b"four".to_vec()));
        assert!(r.next_sample(true).unwrap().is_none());
        assert!(r.truncated.is_none());
        assert_eq!(count_samples(&d.join("s.tar")).unwrap(), 3);
        // Starting at sample 2 seeks past the first two.
        let mut r = ShardReader::open(&d.join("s.tar"), 5, 2).unwrap();
        assert_eq!(r.next_sample(true).unwrap().unwrap().image, b"four");
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn a_cut_off_shard_keeps_the_samples_before_the_break() {
        let d = temp("cut");
        let members: Vec<(String, Vec<u8>)> = (0..4).map(|i| (format!("{i:06}.jpg"), vec![i as u8; 3000])).collect();
        let refs: Vec<(&str, Vec<u8>)> = members.iter().map(|(n, b)| (n.as_str(), b.clone())).collect();
        let p = d.join("cut.tar");
        write_tar(&p, &refs);
        // Each member is a 512-byte header and 3072 bytes of data: cut
        // inside the third member's data.
        let bytes = std::fs::read(&p).unwrap();
        std::fs::write(&p, &bytes[..2 * 3584 + 1000]).unwrap();
        let mut r = ShardReader::open(&p, 0, 0).unwrap();
        assert_eq!(r.next_sample(true).unwrap().unwrap().index, 0);
        assert_eq!(r.next_sample(true).unwrap().unwrap().index, 1);
        assert!(r.next_sample(true).unwrap().is_none());
        assert!(r.truncated.as_deref().unwrap().contains("000002.jpg cut off"), "{:?}", r.truncated);
        // Counting only headers sees the same break.
        assert_eq!(count_samples(&p).unwrap(), 2);
        std::fs::write(d.join("junk.tar"), vec![7u8; 2048]).unwrap();
        assert!(matches!(ShardReader::open(&d.join("junk.tar"), 0, 0).unwrap().next_sample(true), Err(ShardError::NotTar { .. })));
        std::fs::remove_dir_all(&d).ok();
    }

    #[test]
    fn shard_sets_take_counts_from_a_current_index_else_from_headers() {
        let d = temp("set");
        for s in 0..3 {
            let m: Vec<(String, Vec<u8>)> = (0..s + 1).map(|i| (format!("{s}{i:05}.jpg"), vec![1u8; 10])).collect();
            write_tar(&d.join(format!("p-{s:02}.tar")), &m.iter().map(|(n, b)| (n.as_str(), b.clone())).collect::<Vec<_>>());
        }
        let brace = format!("{}/p-{{00..02}}.tar", d.display());
        let set = ShardSet::open(&brace).unwrap();
        assert_eq!(set.counts(), [1, 2, 3]);
        assert_eq!(set.name(1), "p-01.tar");
        let glob = ShardSet::open(&format!("{}/p-*.tar", d.display())).unwrap();
        assert_eq!(glob.paths(), set.paths());
        // An index is believed where a shard has the size it lists.
        let size = |s: &str| std::fs::metadata(d.join(s)).unwrap().len();
        let index = ShardIndex::new(vec![
            IndexEntry { file: "p-00.tar".into(), samples: 10, bytes: size("p-00.tar") },
            IndexEntry { file: "p-01.tar".into(), samples: 20, bytes: 1 },
            IndexEntry { file: "p-02.tar".into(), samples: 30, bytes: size("p-02.tar") },
        ]);
        index.write(&d).unwrap();
        assert_eq!(ShardSet::open(&brace).unwrap().counts(), [10, 2, 30]);
        assert_eq!(ShardSet::open(d.to_str().unwrap()).unwrap().counts(), [10, 2, 30]);
        assert!(is_shard_spec(d.to_str().unwrap()) && is_shard_spec(&brace) && !is_shard_spec("photos"));
        let missing = ShardSet::open(&format!("{}/p-{{00..03}}.tar", d.display())).unwrap_err().to_string();
        assert!(missing.contains("p-03.tar") && missing.contains("no such shard"), "{missing}");
        assert!(ShardSet::open(&format!("{}/q-*.tar", d.display())).unwrap_err().to_string().contains("names no shard"));
        std::fs::remove_dir_all(&d).ok();
    }
}
