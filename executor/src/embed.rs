//! Pooled trunk features of images, for evaluation: each image resized so
//! its shorter side is `resolution · 256/224` (torchvision's evaluation
//! transform; skipped when it already is), centre-cropped to `resolution`,
//! ImageNet-normalised, run through the trunk in eval mode (BN running
//! statistics) and averaged over space.

use crate::augment::{IMAGENET_MEAN, IMAGENET_STD};
use crate::decode::decode_file as decode;
use crate::model::{BnState, Mode, ModelArch, ModelError};
use crate::weights::Weights;
use image::imageops::FilterType;
use image::RgbImage;
use std::path::{Path, PathBuf};
use tch::{Device, Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum EmbedError {
    #[error("model: {0}")]
    Model(#[from] ModelError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{0}")]
    Input(String),
}

#[derive(Clone, Debug)]
pub struct EmbedConfig {
    /// Side of the centre crop the trunk sees (px).
    pub resolution: u32,
    /// Images per forward pass.
    pub batch: usize,
    pub device: Device,
}

/// Features of the images that could be read, in the order given.
pub struct Features {
    pub files: Vec<PathBuf>,
    /// `[files, trunk width]`, fp32 on the CPU.
    pub features: Tensor,
    /// Files that could not be decoded, with why.
    pub skipped: Vec<(PathBuf, String)>,
}

/// Shorter side of an image before its centre crop to `resolution`.
pub(crate) fn resize_side(resolution: u32) -> u32 {
    ((resolution as f64) * 256.0 / 224.0).round() as u32
}

/// One image as the trunk's CHW fp32 input (see the module docs).
pub(crate) fn preprocess(img: &RgbImage, resolution: u32) -> Result<Vec<f32>, EmbedError> {
    let (w, h) = img.dimensions();
    if w == 0 || h == 0 {
        return Err(EmbedError::Input("empty image".into()));
    }
    let side = resize_side(resolution);
    let resized;
    let img = if w.min(h) == side {
        img
    } else {
        let (nw, nh) =
            if w <= h { (side, ((h as f64) * side as f64 / w as f64).round() as u32) } else { (((w as f64) * side as f64 / h as f64).round() as u32, side) };
        resized = image::imageops::resize(img, nw.max(resolution), nh.max(resolution), FilterType::Triangle);
        &resized
    };
    let (w, h) = img.dimensions();
    let (x0, y0) = ((w - resolution) / 2, (h - resolution) / 2);
    let n = (resolution * resolution) as usize;
    let mut out = vec![0f32; 3 * n];
    for y in 0..resolution {
        for x in 0..resolution {
            let p = img.get_pixel(x0 + x, y0 + y).0;
            let i = (y * resolution + x) as usize;
            for c in 0..3 {
                out[c * n + i] = (p[c] as f32 / 255.0 - IMAGENET_MEAN[c]) / IMAGENET_STD[c];
            }
        }
    }
    Ok(out)
}

/// The trunk of `w` ready to run.
pub struct Trunk {
    arch: ModelArch,
    params: std::collections::BTreeMap<String, Tensor>,
    bn: BnState,
    blocks: Vec<String>,
    device: Device,
}

impl Trunk {
    pub fn new(w: &Weights, device: Device) -> Result<Trunk, EmbedError> {
        let arch = ModelArch::new(&w.model)?;
        let params = w.params.iter().map(|(n, t)| t.f_to_device(device).map(|t| (n.clone(), t))).collect::<Result<_, _>>()?;
        let mut bn = BnState::new(&arch, device);
        let buffers: Vec<(String, Tensor)> = w.bn.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        bn.load(&buffers)?;
        let blocks = arch.block_names().into_iter().filter(|b| !b.starts_with("head.")).collect();
        Ok(Trunk { arch, params, bn, blocks, device })
    }

    /// Width of the pooled features.
    pub fn width(&self) -> i64 {
        self.arch.trunk_width()
    }

    /// Pooled features of a `[N, 3, R, R]` batch, `[N, width]` fp32 on the CPU.
    pub fn features(&mut self, images: &Tensor) -> Result<Tensor, EmbedError> {
        let _g = tch::no_grad_guard();
        let mut xs = vec![images.f_to_device(self.device)?.f_to_kind(Kind::Float)?];
        for b in &self.blocks {
            xs = self.arch.forward_block(b, &self.params, &mut self.bn, &xs, &Mode::eval())?;
        }
        let x = xs.pop().ok_or_else(|| EmbedError::Input("the trunk returned nothing".into()))?;
        Ok(x.f_mean_dim([2i64, 3].as_slice(), false, Kind::Float)?.f_to_device(Device::Cpu)?)
    }
}

/// Features of every file in `files`; unreadable ones are skipped (and
/// listed). `progress(done, total)` after each batch.
pub fn embed(w: &Weights, files: &[PathBuf], cfg: &EmbedConfig, mut progress: impl FnMut(usize, usize)) -> Result<Features, EmbedError> {
    if cfg.resolution < 8 || cfg.batch == 0 {
        return Err(EmbedError::Input(format!("resolution {} px and batch {} must be at least 8 and 1", cfg.resolution, cfg.batch)));
    }
    let mut trunk = Trunk::new(w, cfg.device)?;
    let r = cfg.resolution as i64;
    let (mut kept, mut skipped, mut rows) = (Vec::new(), Vec::new(), Vec::new());
    for chunk in files.chunks(cfg.batch) {
        let mut data = Vec::new();
        let mut n = 0;
        for f in chunk {
            match decode(f).map_err(EmbedError::Input).and_then(|img| preprocess(&img, cfg.resolution)) {
                Ok(px) => {
                    data.extend_from_slice(&px);
                    kept.push(f.clone());
                    n += 1;
                }
                Err(e) => skipped.push((f.clone(), e.to_string())),
            }
        }
        if n > 0 {
            let batch = Tensor::from_slice(&data).f_view([n, 3, r, r])?;
            rows.push(trunk.features(&batch)?);
        }
        progress(kept.len() + skipped.len(), files.len());
    }
    let features = if rows.is_empty() { Tensor::f_zeros([0, trunk.width()], (Kind::Float, Device::Cpu))? } else { Tensor::f_cat(&rows, 0)? };
    Ok(Features { files: kept, features, skipped })
}

/// `cpu`, `cuda` or `cuda:N`, checked against the devices visible here.
pub fn parse_device(s: &str) -> Result<Device, EmbedError> {
    let d = match s {
        "cpu" => Device::Cpu,
        "cuda" => Device::Cuda(0),
        _ => s
            .strip_prefix("cuda:")
            .and_then(|n| n.parse().ok())
            .map(Device::Cuda)
            .ok_or_else(|| EmbedError::Input(format!("device `{s}`: use cpu, cuda or cuda:N")))?,
    };
    if let Device::Cuda(i) = d {
        let n = tch::Cuda::device_count().max(0) as usize;
        if i >= n {
            return Err(EmbedError::Input(format!("device `{s}`: {n} CUDA device(s) visible")));
        }
    }
    Ok(d)
}

impl Features {
    /// Writes `features` [images, width] fp32 as safetensors, with the
    /// files (a JSON list), the model and the resolution in the metadata.
    pub fn save(&self, path: &Path, model: &str, resolution: u32) -> Result<(), EmbedError> {
        use safetensors::tensor::{Dtype, TensorView};
        let err = |e: String| EmbedError::Input(format!("{}: cannot write: {e}", path.display()));
        let t = self.features.f_to_kind(Kind::Float)?.f_contiguous()?;
        let n = t.numel() * 4;
        let mut data = vec![0u8; n];
        t.f_copy_data_u8(&mut data, t.numel())?;
        let shape: Vec<usize> = t.size().iter().map(|&d| d as usize).collect();
        let view = TensorView::new(Dtype::F32, shape, &data).map_err(|e| err(format!("{e:?}")))?;
        let files: Vec<String> = self.files.iter().map(|p| p.display().to_string()).collect();
        let meta: std::collections::HashMap<String, String> = [
            ("files".to_string(), serde_json::to_string(&files).map_err(|e| err(e.to_string()))?),
            ("model".to_string(), model.to_string()),
            ("resolution".to_string(), resolution.to_string()),
        ]
        .into_iter()
        .collect();
        safetensors::tensor::serialize_to_file([("features".to_string(), view)], &Some(meta), path).map_err(|e| err(format!("{e:?}")))
    }

    /// `[images, width]` of the features.
    pub fn shape(&self) -> (i64, i64) {
        let s = self.features.size();
        (s[0], s.get(1).copied().unwrap_or(0))
    }
}

/// Image files under `dir` (recursive, sorted), as the data loader finds them.
pub fn image_files(dir: &Path) -> Result<Vec<PathBuf>, EmbedError> {
    let folder = crate::data::ImageFolder::open(dir).map_err(|e| EmbedError::Input(e.to_string()))?;
    Ok(folder.files().to_vec())
}
