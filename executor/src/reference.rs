//! The unsharded reference: one process, plain autograd over the whole
//! model, the same loss, optimiser and prototype normalisation as the FSDP
//! runtime. With `bn_groups = N` and the global batch it reproduces what N
//! ranks compute, so the engine's equivalence tests compare against it.

use crate::model::{BnState, CropLayout, Mode, ModelArch, ModelError};
use crate::optim::{FlatShard, OptimConfig, OptimError, Optimizer, Piece};
use crate::reduce::local_sum;
use crate::swav::{normalize_prototypes_, swav_loss, SwavError, SwavLossConfig};
use cost_models::config::ModelConfig;
use std::collections::HashMap;
use tch::{Device, Tensor};

#[derive(Debug, thiserror::Error)]
pub enum ReferenceError {
    #[error(transparent)]
    Model(#[from] ModelError),
    #[error(transparent)]
    Swav(#[from] SwavError),
    #[error(transparent)]
    Optim(#[from] OptimError),
    #[error("libtorch: {0}")]
    Torch(#[from] tch::TchError),
}

pub struct ReferenceTrainer {
    pub arch: ModelArch,
    /// Leaf fp32 parameters in `param_specs()` order.
    pub params: Vec<(String, Tensor)>,
    pub bn: BnState,
    pub optim: Optimizer,
    pub loss: SwavLossConfig,
    pub bn_groups: usize,
}

impl ReferenceTrainer {
    pub fn new(
        cfg: &ModelConfig,
        seed: u64,
        optim: OptimConfig,
        loss: SwavLossConfig,
        bn_groups: usize,
        device: Device,
    ) -> Result<ReferenceTrainer, ReferenceError> {
        let arch = ModelArch::new(cfg)?;
        let mut params = Vec::new();
        for (n, t) in arch.init_params(seed)? {
            params.push((n, t.f_to_device(device)?.set_requires_grad(true)));
        }
        let bn = BnState::new(&arch, device);
        let optim = Optimizer::new(optim, params.len())?;
        Ok(ReferenceTrainer { arch, params, bn, optim, loss, bn_groups })
    }

    /// One training step on the global batch (`groups`: one image-major
    /// tensor per crop group); returns the loss before the update.
    pub fn step(&mut self, groups: &[Tensor], layout: &CropLayout, lr: f64) -> Result<f64, ReferenceError> {
        if let Some((_, w)) = self.params.iter().find(|(n, _)| n == "head.proto.weight") {
            tch::no_grad(|| normalize_prototypes_(w))?;
        }
        for (_, p) in self.params.iter_mut() {
            p.zero_grad();
        }
        let map: HashMap<String, Tensor> = self.params.iter().map(|(n, t)| (n.clone(), t.shallow_clone())).collect();
        let mode = Mode::train().with_bn_groups(self.bn_groups);
        let scores = self.arch.forward(&map, &mut self.bn, groups, &mode)?;
        let loss = swav_loss(&scores, layout, &self.loss, layout.images, None, &local_sum)?;
        loss.f_backward()?;
        let value = loss.f_double_value(&[])?;
        let mut shards = Vec::with_capacity(self.params.len());
        for (i, (_, p)) in self.params.iter().enumerate() {
            let g = p.grad();
            let g = if g.defined() { g } else { p.f_zeros_like()? };
            shards.push(FlatShard {
                param: p.f_detach()?.f_view([-1])?,
                grad: g.f_view([-1])?,
                pieces: vec![Piece { param: i, start: 0, len: p.numel() as i64 }],
            });
        }
        self.optim.step(&shards, lr, &local_sum)?;
        Ok(value)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::Kind;

    #[test]
    fn swav_loss_decreases_with_sgd_on_a_fixed_random_batch() {
        let cfg = ModelConfig::load("regnety-tiny").unwrap();
        let optim = OptimConfig::Sgd { momentum: 0.9, weight_decay: 1e-5, larc: None };
        let mut t = ReferenceTrainer::new(&cfg, 0, optim, SwavLossConfig::default(), 1, Device::Cpu).unwrap();
        tch::manual_seed(5);
        let layout = CropLayout { images: 8, groups: vec![2, 2] };
        let groups = [Tensor::randn([16, 3, 32, 32], (Kind::Float, Device::Cpu)), Tensor::randn([16, 3, 16, 16], (Kind::Float, Device::Cpu))];
        let losses: Vec<f64> = (0..6).map(|_| t.step(&groups, &layout, 0.05).unwrap()).collect();
        assert!(losses.iter().all(|l| l.is_finite()), "{losses:?}");
        assert!(losses[5] < losses[0] * 0.9, "loss did not go down: {losses:?}");
        // Prototypes stay unit rows (re-normalised each step).
        let (_, w) = t.params.iter().find(|(n, _)| n == "head.proto.weight").unwrap();
        normalize_prototypes_(w).unwrap();
        assert!(w.norm_scalaropt_dim(2, [1i64], false).allclose(&Tensor::ones([32], (Kind::Float, Device::Cpu)), 1e-5, 1e-6, false));
    }
}
