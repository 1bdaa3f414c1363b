//! Channel padding as the executor runs it (`cost_models::padding`): each
//! weight and BN parameter is padded with zero channels where a block uses
//! it, so the convolutions see tensor-core aligned channels while
//! parameters, shards, optimiser state, checkpoints and exports keep the
//! model's own sizes. The padding is an autograd op: its backward hands the
//! real entries' gradients to the parameter and drops the zeros', so padded
//! channels carry zeros through every step and never need masking.

use crate::model::ParamSource;
use cost_models::padding::{BlockLayouts, ChannelLayout};
use cost_models::regnet::BlockSpec;
use std::cell::RefCell;
use std::collections::HashMap;
use tch::{TchError, Tensor};

/// Per parameter, the layout of its dims 0 and 1 once padded; per BN layer,
/// its channels' layout. Only entries that padding changes are kept.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PaddingPlan {
    params: HashMap<String, [Option<ChannelLayout>; 2]>,
    bn: HashMap<String, ChannelLayout>,
}

impl PaddingPlan {
    /// The layouts of RegNet-Y `blocks` with its stem and SwAV head.
    pub fn new(stem_width: usize, blocks: &[BlockSpec], mlp_dims: &[usize], head_bn: bool) -> PaddingPlan {
        let mut p = PaddingPlan::default();
        let one = |c: usize| ChannelLayout::new(c, 1, true);
        let stem = one(stem_width);
        p.conv("stem.conv", stem, None, false);
        p.batch_norm("stem.bn", stem);
        for b in blocks {
            let l = BlockLayouts::of(b, true);
            let n = &b.name;
            if b.proj {
                p.conv(&format!("{n}.proj"), l.output, Some(l.input), false);
                p.batch_norm(&format!("{n}.proj_bn"), l.output);
            }
            p.conv(&format!("{n}.a"), l.bottleneck, Some(l.input), false);
            p.batch_norm(&format!("{n}.a_bn"), l.bottleneck);
            // The grouped 3x3's weight holds one group's input channels.
            let per_group = ChannelLayout { groups: 1, ..l.bottleneck };
            p.conv(&format!("{n}.b"), l.bottleneck, Some(per_group), false);
            p.batch_norm(&format!("{n}.b_bn"), l.bottleneck);
            if b.se > 0 {
                p.conv(&format!("{n}.se.reduce"), l.se, Some(l.bottleneck), true);
                p.conv(&format!("{n}.se.expand"), l.bottleneck, Some(l.se), true);
            }
            p.conv(&format!("{n}.c"), l.output, Some(l.bottleneck), false);
            p.batch_norm(&format!("{n}.c_bn"), l.output);
        }
        let mut d_in = one(blocks.last().map_or(stem_width, |b| b.w_out));
        for (k, &d) in mlp_dims.iter().enumerate() {
            p.conv(&format!("head.mlp.{k}"), one(d), Some(d_in), true);
            if head_bn && k + 1 < mlp_dims.len() {
                p.batch_norm(&format!("head.mlp.{k}.bn"), one(d));
            }
            d_in = one(d);
        }
        // The prototypes' count is not a channel width: only their input pads.
        p.insert("head.proto.weight", [None, Some(d_in)]);
        p
    }

    fn insert(&mut self, name: &str, dims: [Option<ChannelLayout>; 2]) {
        if dims.iter().flatten().any(ChannelLayout::is_padded) {
            self.params.insert(name.to_string(), dims);
        }
    }

    fn conv(&mut self, layer: &str, out: ChannelLayout, input: Option<ChannelLayout>, bias: bool) {
        self.insert(&format!("{layer}.weight"), [Some(out), input]);
        if bias {
            self.insert(&format!("{layer}.bias"), [Some(out), None]);
        }
    }

    fn batch_norm(&mut self, layer: &str, c: ChannelLayout) {
        self.insert(&format!("{layer}.weight"), [Some(c), None]);
        self.insert(&format!("{layer}.bias"), [Some(c), None]);
        if c.is_padded() {
            self.bn.insert(layer.to_string(), c);
        }
    }

    /// `t` (a parameter named `name`) padded as the padded model uses it.
    pub fn pad_param(&self, name: &str, t: &Tensor) -> Result<Tensor, TchError> {
        let Some(dims) = self.params.get(name) else { return Ok(t.shallow_clone()) };
        let mut t = t.shallow_clone();
        for (dim, l) in dims.iter().enumerate() {
            if let Some(l) = l {
                t = pad_dim(&t, dim, l, 0.0)?;
            }
        }
        Ok(t)
    }

    /// The layout of BN layer `layer`'s channels, if padding changes it.
    pub fn bn_layout(&self, layer: &str) -> Option<&ChannelLayout> {
        self.bn.get(layer)
    }
}

/// `t` with dimension `dim` laid out as `l`: each group's real channels,
/// then `value` up to the padded width.
pub(crate) fn pad_dim(t: &Tensor, dim: usize, l: &ChannelLayout, value: f64) -> Result<Tensor, TchError> {
    if !l.is_padded() {
        return Ok(t.shallow_clone());
    }
    let shape = t.size();
    let mut grouped: Vec<i64> = shape[..dim].to_vec();
    grouped.extend([l.groups as i64, l.real as i64]);
    grouped.extend(&shape[dim + 1..]);
    // constant padding's widths run from the last dimension backwards.
    let trailing = grouped.len() - dim - 2;
    let mut pad = vec![0i64; 2 * trailing];
    pad.extend([0, (l.padded - l.real) as i64]);
    let mut out: Vec<i64> = shape.clone();
    out[dim] = l.padded_total() as i64;
    t.f_reshape(grouped.as_slice())?.f_pad(pad.as_slice(), "constant", Some(value))?.f_reshape(out.as_slice())
}

/// Positions of the real channels in a padded dimension (int64), to read
/// them out of, or write them into, a padded buffer.
pub(crate) fn real_positions(l: &ChannelLayout) -> Vec<i64> {
    (0..l.groups).flat_map(|g| (0..l.real).map(move |c| (g * l.padded + c) as i64)).collect()
}

/// A block's parameters as the padded model uses them: each padded once
/// per block call (every crop group's forward shares the copy).
pub struct PaddedParams<'a> {
    inner: &'a dyn ParamSource,
    plan: &'a PaddingPlan,
    cache: RefCell<HashMap<String, Tensor>>,
}

impl<'a> PaddedParams<'a> {
    pub fn new(inner: &'a dyn ParamSource, plan: &'a PaddingPlan) -> PaddedParams<'a> {
        PaddedParams { inner, plan, cache: RefCell::new(HashMap::new()) }
    }
}

impl ParamSource for PaddedParams<'_> {
    fn param(&self, name: &str) -> Option<Tensor> {
        if let Some(t) = self.cache.borrow().get(name) {
            return Some(t.shallow_clone());
        }
        let padded = self.plan.pad_param(name, &self.inner.param(name)?).ok()?;
        self.cache.borrow_mut().insert(name.to_string(), padded.shallow_clone());
        Some(padded)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tch::{Device, Kind};

    #[test]
    fn a_grouped_dimension_pads_each_group_and_keeps_the_real_channels_in_place() {
        let l = ChannelLayout::new(6, 2, true); // 2 groups of 3 -> 2 groups of 8
        let t = Tensor::arange(12, (Kind::Float, Device::Cpu)).view([6, 2]) + 1.0;
        let p = pad_dim(&t, 0, &l, 0.0).unwrap();
        assert_eq!(p.size(), [16, 2]);
        let pos = Tensor::from_slice(&real_positions(&l));
        assert!(p.index_select(0, &pos).equal(&t));
        assert_eq!(p.abs().sum(Kind::Float).double_value(&[]), t.sum(Kind::Float).double_value(&[]));
        // Dim 1 of a 4-D weight, and a fill value.
        let w = Tensor::ones([4, 3, 2, 2], (Kind::Float, Device::Cpu));
        let pw = pad_dim(&w, 1, &ChannelLayout::new(3, 1, true), 5.0).unwrap();
        assert_eq!(pw.size(), [4, 8, 2, 2]);
        assert_eq!(pw.narrow(1, 3, 5).mean(Kind::Float).double_value(&[]), 5.0);
        // Gradients reach the real entries only.
        let x = t.set_requires_grad(true);
        let y = pad_dim(&x, 0, &l, 0.0).unwrap();
        let g = Tensor::ones([16, 2], (Kind::Float, Device::Cpu));
        let gx = Tensor::run_backward(&[(&y * &g).sum(Kind::Float)], &[&x], false, false);
        assert!(gx[0].equal(&Tensor::ones([6, 2], (Kind::Float, Device::Cpu))));
    }
}
