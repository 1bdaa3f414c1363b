//! What larger worlds (and smaller batches) already showed: combinations
//! that did not fit, and placements that stay optimal.

use cost_models::padding::ChannelPadding;
use cost_models::DType;
use runspec::recipe::Wrapping;
use runspec::sharding::Sharding;
use std::ops::Range;

/// (hardware, sharding as searched, dtype, channel padding, wrapping, reshard).
pub(super) type MemoKey = (usize, Sharding, DType, ChannelPadding, Wrapping, bool);

/// What earlier (larger) worlds taught about one combination; only valid
/// where the rank's device does not change with the world (GPUs).
#[derive(Default)]
pub(super) struct Memo {
    /// (world, batch) that did not fit.
    pub(super) infeasible: Vec<(usize, usize)>,
    /// (world, batch, optimal segments, their recompute time), the crop
    /// groups together.
    pub(super) placements: Vec<(usize, usize, Vec<Range<usize>>, f64)>,
    /// (world, batch, least recompute time of any backward order).
    pub(super) least_recompute: Vec<(usize, usize, f64)>,
}

impl Memo {
    pub(super) fn known_infeasible(&self, world: usize, batch: usize) -> bool {
        self.infeasible.iter().any(|&(w, b)| w >= world && b <= batch)
    }
    /// The placement from the smallest world >= `world` at this batch.
    pub(super) fn placement(&self, world: usize, batch: usize) -> Option<&(usize, usize, Vec<Range<usize>>, f64)> {
        self.placements.iter().filter(|p| p.0 >= world && p.1 == batch).min_by_key(|p| p.0)
    }
    /// A lower bound on the recompute at (`world`, `batch`): what the
    /// smallest world >= `world` needed at this batch (fewer ranks hold more).
    pub(super) fn recompute_bound(&self, world: usize, batch: usize) -> f64 {
        self.least_recompute.iter().filter(|p| p.0 >= world && p.1 == batch).min_by_key(|p| p.0).map_or(0.0, |p| p.2)
    }
}
