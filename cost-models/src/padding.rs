//! Tensor-core aligned channels: the widths a model runs at when every
//! convolution's and linear layer's channel count (per group, for grouped
//! convolutions) is padded with zero channels to a multiple of
//! [`ALIGN`]. 16-bit tensor-core kernels want channels per group in
//! multiples of 8; SEER's widths (11110 channels, 1010 per group) are not.
//!
//! The padded model computes exactly the unpadded one: padded weights and
//! BN parameters are zeros that no gradient reaches, so padded activation
//! channels stay zero. Parameters, and so shards, optimiser state and
//! checkpoints, keep their unpadded sizes; only the shapes the kernels see
//! (and the activations saved for backward) grow.

use crate::config::ModelConfig;
use crate::hardware::DeviceKind;
use crate::regnet::BlockSpec;
use serde::{Deserialize, Serialize};

/// Channels per group of a padded layer are a multiple of this.
pub const ALIGN: usize = 8;

/// `c` rounded up to a multiple of [`ALIGN`].
pub fn aligned(c: usize) -> usize {
    c.div_ceil(ALIGN) * ALIGN
}

/// Whether channels are padded (a plan field, `channel_padding`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChannelPadding {
    /// The model's own widths.
    #[default]
    Off,
    /// Every width padded per group to a multiple of [`ALIGN`].
    On,
}

impl ChannelPadding {
    pub fn is_on(self) -> bool {
        self == ChannelPadding::On
    }
    pub fn name(self) -> &'static str {
        match self {
            ChannelPadding::Off => "off",
            ChannelPadding::On => "on",
        }
    }
}

/// How one channel dimension is laid out once padded: `groups` groups of
/// `real` channels, each followed by `padded - real` zero channels (one
/// group: the zeros at the end).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ChannelLayout {
    pub groups: usize,
    /// Real channels per group.
    pub real: usize,
    /// Channels per group once padded.
    pub padded: usize,
}

impl ChannelLayout {
    /// `channels` in `groups` groups, padded per group when `on`.
    pub fn new(channels: usize, groups: usize, on: bool) -> ChannelLayout {
        let groups = groups.max(1);
        let real = channels / groups;
        ChannelLayout { groups, real, padded: if on { aligned(real) } else { real } }
    }
    pub fn real_total(&self) -> usize {
        self.groups * self.real
    }
    pub fn padded_total(&self) -> usize {
        self.groups * self.padded
    }
    pub fn is_padded(&self) -> bool {
        self.padded != self.real
    }
}

/// A residual block's channel layouts: its input and output (one group),
/// its bottleneck (the grouped 3x3's groups) and its SE squeeze.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct BlockLayouts {
    pub input: ChannelLayout,
    pub output: ChannelLayout,
    pub bottleneck: ChannelLayout,
    pub se: ChannelLayout,
}

impl BlockLayouts {
    pub fn of(b: &BlockSpec, on: bool) -> BlockLayouts {
        BlockLayouts {
            input: ChannelLayout::new(b.w_in, 1, on),
            output: ChannelLayout::new(b.w_out, 1, on),
            bottleneck: ChannelLayout::new(b.w_b, b.groups, on),
            se: ChannelLayout::new(b.se, 1, on),
        }
    }

    /// The block as the padded model runs it (same groups, stride, names).
    pub fn padded_spec(&self, b: &BlockSpec) -> BlockSpec {
        BlockSpec {
            w_in: self.input.padded_total(),
            w_out: self.output.padded_total(),
            w_b: self.bottleneck.padded_total(),
            se: self.se.padded_total(),
            ..b.clone()
        }
    }
}

/// The widths the padded model runs at: the stem and head widths padded
/// (the prototypes' count is not a channel width and stays), and its
/// residual blocks, padded per group.
pub(crate) fn padded_model(model: &ModelConfig) -> (ModelConfig, Vec<BlockSpec>) {
    let mut m = model.clone();
    m.regnet.stem_width = aligned(m.regnet.stem_width);
    m.head.mlp_dims = m.head.mlp_dims.iter().map(|&d| aligned(d)).collect();
    let blocks = model.regnet.blocks().iter().map(|b| BlockLayouts::of(b, true).padded_spec(b)).collect();
    (m, blocks)
}

/// Whether padding changes any width of `model` (else it is a no-op).
pub(crate) fn changes_widths(model: &ModelConfig) -> bool {
    let (p, blocks) = padded_model(model);
    p != *model || blocks != model.regnet.blocks()
}

/// The paddings worth trying for `model` on a device of `kind`: both where
/// padding changes a width and the device has tensor cores to gain from
/// aligned channels (a GPU), else `off` alone (a CPU only pays for them).
pub fn worth_trying(model: &ModelConfig, kind: DeviceKind) -> Vec<ChannelPadding> {
    if kind == DeviceKind::Gpu && changes_widths(model) {
        vec![ChannelPadding::Off, ChannelPadding::On]
    } else {
        vec![ChannelPadding::Off]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seer_10b_widths_pad_to_tensor_core_multiples() {
        let m = ModelConfig::load("regnety-10b").unwrap();
        let (p, blocks) = padded_model(&m);
        for (b, pb) in m.regnet.blocks().iter().zip(&blocks) {
            assert_eq!(pb.groups, b.groups, "{}", b.name);
            assert_eq!(pb.w_b % (pb.groups * ALIGN), 0, "{}: {} in {} groups", b.name, pb.w_b, pb.groups);
            assert!(pb.w_out % ALIGN == 0 && pb.w_out >= b.w_out && pb.w_out - b.w_out < ALIGN, "{}", b.name);
            assert!(pb.se % ALIGN == 0 && pb.se >= b.se);
        }
        // SEER 10B's third stage: 11110 channels, 1010 per group.
        let i = m.regnet.blocks().iter().position(|b| b.stage == 3).unwrap();
        let s3 = &m.regnet.blocks()[i];
        assert_eq!((s3.w_out, s3.w_b / s3.groups), (11110, 1010));
        assert_eq!((blocks[i].w_out, blocks[i].w_b / blocks[i].groups), (11112, 1016));
        assert_eq!(p.head.prototypes, m.head.prototypes);
        assert!(p.head.mlp_dims.iter().all(|d| d % ALIGN == 0));
        assert!(changes_widths(&m));
    }

    #[test]
    fn layouts_keep_real_channels_and_add_zeros_per_group() {
        let l = ChannelLayout::new(18, 3, true);
        assert_eq!((l.real, l.padded, l.real_total(), l.padded_total()), (6, 8, 18, 24));
        assert!(l.is_padded());
        let off = ChannelLayout::new(18, 3, false);
        assert_eq!(off.padded_total(), 18);
        assert!(!off.is_padded());
        assert_eq!(ChannelLayout::new(16, 1, true).padded_total(), 16);
        assert_eq!(ChannelLayout::new(0, 1, true).padded_total(), 0);
    }
}
