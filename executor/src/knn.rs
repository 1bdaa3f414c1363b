//! The k-nearest-neighbour classifier on frozen features that DINO and
//! VISSL use to check self-supervised features: features L2-normalised,
//! cosine similarity to every training feature, the `k` most similar vote
//! for their class with weight `exp(similarity / temperature)`.

use serde::Serialize;
use tch::{Kind, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum KnnError {
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
    #[error("{0}")]
    Input(String),
}

/// One class's top-1 accuracy.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ClassAccuracy {
    pub class: String,
    pub images: usize,
    pub top1: f64,
}

/// What the classifier scored on the validation set.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct KnnResult {
    pub k: usize,
    pub temperature: f64,
    pub train_images: usize,
    pub val_images: usize,
    /// Fractions in 0..1.
    pub top1: f64,
    pub top5: f64,
    pub per_class: Vec<ClassAccuracy>,
    /// The predicted class index of every validation image.
    pub predictions: Vec<usize>,
}

/// Classifies `val` (`[n, d]`) by its neighbours in `train` (`[m, d]`,
/// labels `train_labels` in `0..classes.len()`); `val_labels` score it.
pub fn knn(
    train: &Tensor,
    train_labels: &[usize],
    val: &Tensor,
    val_labels: &[usize],
    classes: &[String],
    k: usize,
    temperature: f64,
) -> Result<KnnResult, KnnError> {
    let (m, n, c) = (train.size()[0] as usize, val.size()[0] as usize, classes.len());
    if m == 0 || n == 0 || c == 0 {
        return Err(KnnError::Input(format!("need training and validation images and classes (got {m}, {n}, {c})")));
    }
    if train_labels.len() != m || val_labels.len() != n || train_labels.iter().chain(val_labels).any(|&l| l >= c) {
        return Err(KnnError::Input("labels do not match the features or the classes".into()));
    }
    if k == 0 || temperature.is_nan() || temperature <= 0.0 {
        return Err(KnnError::Input(format!("k must be >= 1 and the temperature > 0 (got {k}, {temperature})")));
    }
    let k = k.min(m);
    let unit = |t: &Tensor| -> Result<Tensor, tch::TchError> {
        let t = t.f_to_kind(Kind::Double)?;
        let norm = t.f_norm_scalaropt_dim(2, [1i64].as_slice(), true)?.f_clamp_min(1e-12)?;
        t.f_div(&norm)
    };
    let (train, val) = (unit(train)?, unit(val)?);
    let labels = Tensor::from_slice(&train_labels.iter().map(|&l| l as i64).collect::<Vec<_>>());
    let sim = val.f_matmul(&train.f_transpose(0, 1)?)?;
    let (top_sim, top_idx) = sim.f_topk(k as i64, 1, true, true)?;
    let weights = top_sim.f_div_scalar(temperature)?.f_exp()?;
    let neighbour_labels = labels.f_index_select(0, &top_idx.f_flatten(0, -1)?)?.f_view([n as i64, k as i64])?;
    let votes = Tensor::f_zeros([n as i64, c as i64], (Kind::Double, tch::Device::Cpu))?.f_scatter_add(1, &neighbour_labels, &weights)?;
    let top = (5usize).min(c) as i64;
    let (_, ranked) = votes.f_topk(top, 1, true, true)?;
    let ranked: Vec<i64> = Vec::<i64>::try_from(ranked.f_flatten(0, -1)?)?;
    let (mut hit1, mut hit5) = (0usize, 0usize);
    let mut per = vec![(0usize, 0usize); c];
    let mut predictions = Vec::with_capacity(n);
    for (i, &truth) in val_labels.iter().enumerate() {
        let row = &ranked[i * top as usize..(i + 1) * top as usize];
        let pred = row[0] as usize;
        predictions.push(pred);
        per[truth].0 += 1;
        if pred == truth {
            hit1 += 1;
            per[truth].1 += 1;
        }
        if row.iter().any(|&r| r as usize == truth) {
            hit5 += 1;
        }
    }
    let per_class = classes
        .iter()
        .zip(&per)
        .map(|(name, &(images, hits))| ClassAccuracy { class: name.clone(), images, top1: if images > 0 { hits as f64 / images as f64 } else { 0.0 } })
        .collect();
    Ok(KnnResult { k, temperature, train_images: m, val_images: n, top1: hit1 as f64 / n as f64, top5: hit5 as f64 / n as f64, per_class, predictions })
}

/// Class of each file by its folder under `root` (ImageFolder layout: one
/// sub-folder per class), and the sorted class names.
pub fn labels_of(root: &std::path::Path, files: &[std::path::PathBuf]) -> Result<(Vec<usize>, Vec<String>), KnnError> {
    let class_of = |f: &std::path::Path| -> Option<String> {
        let rel = f.strip_prefix(root).ok()?;
        let mut parts = rel.components();
        let first = parts.next()?.as_os_str().to_string_lossy().into_owned();
        parts.next().map(|_| first)
    };
    let mut names = Vec::with_capacity(files.len());
    for f in files {
        names.push(
            class_of(f)
                .ok_or_else(|| KnnError::Input(format!("{} is not inside a class folder of {} (one sub-folder per class)", f.display(), root.display())))?,
        );
    }
    let mut classes: Vec<String> = names.clone();
    classes.sort();
    classes.dedup();
    let labels = names.iter().map(|n| classes.binary_search(n).unwrap_or(0)).collect();
    Ok((labels, classes))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two clusters on the unit circle: every validation point takes its
    /// own cluster's class; with k covering both clusters the temperature
    /// decides, and a low one still favours the nearer points.
    #[test]
    fn neighbours_vote_with_temperature_weights() {
        let train = Tensor::from_slice(&[1.0f32, 0.0, 0.9, 0.1, 0.0, 1.0, 0.1, 0.9, 0.05, 0.95]).view([5, 2]);
        let train_labels = [0, 0, 1, 1, 1];
        let val = Tensor::from_slice(&[1.0f32, 0.05, 0.02, 1.0]).view([2, 2]);
        let classes = vec!["a".to_string(), "b".to_string()];
        let r = knn(&train, &train_labels, &val, &[0, 1], &classes, 2, 0.07).unwrap();
        assert_eq!((r.top1, r.top5, r.predictions.clone()), (1.0, 1.0, vec![0, 1]));
        // k = 5: class b has three votes, a two; a low temperature keeps the
        // near ones decisive, a very high one counts heads.
        let near = knn(&train, &train_labels, &val, &[0, 1], &classes, 5, 0.01).unwrap();
        assert_eq!(near.predictions, vec![0, 1]);
        let flat = knn(&train, &train_labels, &val, &[0, 1], &classes, 5, 1e6).unwrap();
        assert_eq!(flat.predictions, vec![1, 1]);
        assert_eq!(flat.per_class[0].top1, 0.0);
        assert!(knn(&train, &train_labels, &val, &[0, 2], &classes, 5, 0.1).is_err());
    }
}
