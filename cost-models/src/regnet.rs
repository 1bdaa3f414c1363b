//! RegNet-Y design space: (depth, w_0, w_a, w_m, group width, bottleneck, SE
//! ratio, stem) → per-stage widths, depths and groups, with exactly the
//! quantisation and width/group adjustment of pycls / classy / torchvision.

use serde::{Deserialize, Serialize};

/// The generator parameters of one RegNet-Y (fields as in pycls configs).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RegNetSpec {
    pub depth: usize,
    pub w_0: f64,
    pub w_a: f64,
    pub w_m: f64,
    pub group_width: usize,
    #[serde(default = "one")]
    pub bottleneck_multiplier: f64,
    #[serde(default = "quarter")]
    pub se_ratio: f64,
    #[serde(default = "stem32")]
    pub stem_width: usize,
}

fn one() -> f64 {
    1.0
}
fn quarter() -> f64 {
    0.25
}
fn stem32() -> usize {
    32
}

/// One stage after quantisation: `depth` blocks of output width `width`,
/// grouped 3x3 convs with `group_width` channels per group; the first block
/// has stride 2.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct StageSpec {
    pub width: usize,
    pub depth: usize,
    pub group_width: usize,
    pub bottleneck_multiplier: f64,
}

impl StageSpec {
    /// Bottleneck (inner) width `int(round(width * b))`, as torchvision's
    /// `ResBottleneckBlock`.
    pub fn bottleneck_width(&self) -> usize {
        (self.width as f64 * self.bottleneck_multiplier).round_ties_even() as usize
    }
    /// Number of groups of the 3x3 conv.
    pub fn groups(&self) -> usize {
        self.bottleneck_width() / self.group_width
    }
}

/// One residual block of the trunk, as torchvision's `ResBottleneckBlock`
/// builds it: the single derivation of the network that the cost model's
/// layer graph and the executor's module both read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BlockSpec {
    /// `s{stage}.b{index}`, stage from 1.
    pub name: String,
    /// Stage index from 1.
    pub stage: usize,
    pub w_in: usize,
    pub w_out: usize,
    /// Bottleneck width (channels of the grouped 3x3 conv).
    pub w_b: usize,
    pub groups: usize,
    pub stride: usize,
    /// Squeeze-excitation channels, `round(se_ratio * w_in)` half to even
    /// (Python's `round`, as torchvision); 0: no SE (RegNet-X).
    pub se: usize,
    /// Projection shortcut (the width or the resolution changes).
    pub proj: bool,
}

/// Which field of a [`RegNetSpec`] is invalid, and why.
#[derive(Debug, Clone, PartialEq)]
pub struct SpecError {
    pub field: &'static str,
    pub reason: String,
}

const QUANT: f64 = 8.0;

impl RegNetSpec {
    pub fn validate(&self) -> Result<(), SpecError> {
        let bad = |field, reason: &str| Err(SpecError { field, reason: reason.to_string() });
        if self.depth == 0 {
            return bad("depth", "must be at least 1");
        }
        if !(self.w_0 > 0.0) || !self.w_0.is_finite() {
            return bad("w_0", "must be a positive width");
        }
        if !(self.w_a >= 0.0) || !self.w_a.is_finite() {
            return bad("w_a", "must be >= 0 (width slope)");
        }
        if !(self.w_m > 1.0) || !self.w_m.is_finite() {
            return bad("w_m", "must be > 1 (width multiplier between stages)");
        }
        if self.group_width == 0 {
            return bad("group_width", "must be at least 1");
        }
        if !(self.bottleneck_multiplier > 0.0) {
            return bad("bottleneck_multiplier", "must be > 0");
        }
        if !(self.se_ratio >= 0.0 && self.se_ratio <= 1.0) {
            return bad("se_ratio", "must be in [0, 1]");
        }
        if self.stem_width == 0 {
            return bad("stem_width", "must be at least 1");
        }
        Ok(())
    }

    /// Every residual block in forward order; the first block of a stage
    /// has stride 2.
    pub fn blocks(&self) -> Vec<BlockSpec> {
        let mut out = Vec::new();
        let mut w_in = self.stem_width;
        for (si, st) in self.stages().iter().enumerate() {
            for j in 0..st.depth {
                let stride = if j == 0 { 2 } else { 1 };
                out.push(BlockSpec {
                    name: format!("s{}.b{}", si + 1, j),
                    stage: si + 1,
                    w_in,
                    w_out: st.width,
                    w_b: st.bottleneck_width(),
                    groups: st.groups().max(1),
                    stride,
                    se: (self.se_ratio * w_in as f64).round_ties_even() as usize,
                    proj: w_in != st.width || stride != 1,
                });
                w_in = st.width;
            }
        }
        out
    }

    /// Per-block widths before grouping into stages.
    pub fn block_widths(&self) -> Vec<usize> {
        (0..self.depth)
            .map(|j| {
                let u = self.w_0 + self.w_a * j as f64;
                let s = ((u / self.w_0).ln() / self.w_m.ln()).round_ties_even();
                ((self.w_0 * self.w_m.powf(s) / QUANT).round_ties_even() * QUANT) as usize
            })
            .collect()
    }

    /// Stages after quantisation and the width/group compatibility adjustment.
    pub fn stages(&self) -> Vec<StageSpec> {
        let mut raw: Vec<(usize, usize)> = Vec::new();
        for w in self.block_widths() {
            match raw.last_mut() {
                Some((lw, d)) if *lw == w => *d += 1,
                _ => raw.push((w, 1)),
            }
        }
        raw.into_iter()
            .map(|(w, depth)| {
                let b = self.bottleneck_multiplier;
                let w_bot = (w as f64 * b) as usize;
                let g = self.group_width.min(w_bot).max(1);
                let w_bot = make_divisible(w_bot as f64, g);
                StageSpec { width: (w_bot as f64 / b) as usize, depth, group_width: g, bottleneck_multiplier: b }
            })
            .collect()
    }
}

/// torchvision's `_make_divisible(v, divisor, min_value=divisor)`.
fn make_divisible(v: f64, divisor: usize) -> usize {
    let d = divisor as f64;
    let mut new_v = d.max(((v + d / 2.0) / d).floor() * d);
    if new_v < 0.9 * v {
        new_v += d;
    }
    new_v as usize
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(depth: usize, w_0: f64, w_a: f64, w_m: f64, g: usize) -> RegNetSpec {
        RegNetSpec { depth, w_0, w_a, w_m, group_width: g, bottleneck_multiplier: 1.0, se_ratio: 0.25, stem_width: 32 }
    }

    #[test]
    fn regnety_400mf_stages_match_torchvision() {
        let s = spec(16, 48.0, 27.89, 2.09, 8).stages();
        let got: Vec<(usize, usize, usize)> = s.iter().map(|s| (s.width, s.depth, s.group_width)).collect();
        assert_eq!(got, vec![(48, 1, 8), (104, 3, 8), (208, 6, 8), (440, 6, 8)]);
    }

    #[test]
    fn regnety_16gf_stages_match_torchvision() {
        let s = spec(18, 200.0, 106.23, 2.48, 112).stages();
        let got: Vec<(usize, usize)> = s.iter().map(|s| (s.width, s.depth)).collect();
        assert_eq!(got, vec![(224, 2), (448, 4), (1232, 11), (3024, 1)]);
    }

    #[test]
    fn invalid_specs_name_their_field() {
        let mut s = spec(16, 48.0, 27.89, 1.0, 8);
        assert_eq!(s.validate().unwrap_err().field, "w_m");
        s.w_m = 2.0;
        s.w_0 = -3.0;
        assert_eq!(s.validate().unwrap_err().field, "w_0");
    }
}
