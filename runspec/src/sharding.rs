//! How parameters, gradients and optimiser state are spread over the
//! ranks: replicated (DDP), sharded over every rank (FSDP / ZeRO-3), or
//! sharded inside groups of `s` consecutive ranks and replicated across the
//! `world / s` groups (hybrid sharding: PyTorch's HYBRID_SHARD, FSDP2's 2-D
//! mesh). The shard group of rank `r` is the `s` ranks `⌊r/s⌋·s ..`; its
//! replica group the `world / s` ranks with the same `r mod s`.
//!
//! One gradient pipeline covers all three: within the shard group a
//! reduce-scatter (`s > 1`), across replicas an all-reduce of the shard
//! (`world / s > 1`). DDP is `s = 1` (no gather, no reduce-scatter, the
//! whole gradient all-reduced in buckets, which are its units), FSDP is
//! `s = world` (no all-reduce).

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// The strategy named in a plan.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Strategy {
    Ddp,
    Fsdp,
    Hybrid,
}

/// A strategy and its shard-group size.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sharding {
    pub strategy: Strategy,
    /// Ranks one copy of the parameters is sharded over (`ddp`: 1,
    /// `fsdp`: the world size). 0 in a plan file that predates the field,
    /// read as FSDP over the world (see [`Sharding::resolved`]).
    pub shard_group: usize,
}

/// Why a sharding does not fit a world size (or does not parse).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct ShardingError(pub String);

impl Default for Sharding {
    /// What a plan without the field means: FSDP over every rank.
    fn default() -> Self {
        Sharding { strategy: Strategy::Fsdp, shard_group: 0 }
    }
}

impl Sharding {
    pub fn ddp() -> Sharding {
        Sharding { strategy: Strategy::Ddp, shard_group: 1 }
    }
    pub fn fsdp(world: usize) -> Sharding {
        Sharding { strategy: Strategy::Fsdp, shard_group: world.max(1) }
    }
    pub fn hybrid(shard_group: usize) -> Sharding {
        Sharding { strategy: Strategy::Hybrid, shard_group }
    }

    /// The shard group filled in for a world size where it was left open
    /// (0: a plan without the field, or `--sharding fsdp`): FSDP over the
    /// world, DDP over one rank. A given group is kept (and checked by
    /// [`Sharding::check`]).
    pub fn resolved(self, world: usize) -> Sharding {
        match (self.strategy, self.shard_group) {
            (Strategy::Fsdp, 0) => Sharding::fsdp(world),
            (Strategy::Ddp, 0) => Sharding::ddp(),
            _ => self,
        }
    }

    /// Checks the group against the world size: hybrid needs `1 < s <
    /// world` with `s` dividing the world (the ends are DDP and FSDP).
    pub fn check(&self, world: usize) -> Result<(), ShardingError> {
        let s = self.shard_group;
        let ok = match self.strategy {
            Strategy::Ddp => s == 1,
            Strategy::Fsdp => s == world,
            Strategy::Hybrid => s > 1 && s < world && world.is_multiple_of(s),
        };
        if ok {
            return Ok(());
        }
        Err(ShardingError(match self.strategy {
            Strategy::Ddp => format!("ddp shards over 1 rank, not {s}"),
            Strategy::Fsdp => format!("fsdp shards over the whole world ({world} ranks), not {s}"),
            Strategy::Hybrid => {
                format!("hybrid:{s} needs a shard group that divides the world size {world} and lies strictly between 1 and it (use ddp or fsdp for the ends)")
            }
        }))
    }

    /// Ranks each parameter shard is replicated over: `world / s`.
    pub fn replicas(&self, world: usize) -> usize {
        world / self.shard_group.max(1)
    }

    /// The ranks of `rank`'s shard group, in order.
    pub fn shard_group_of(&self, rank: usize) -> Vec<usize> {
        let s = self.shard_group.max(1);
        let first = rank / s * s;
        (first..first + s).collect()
    }

    /// The ranks of `rank`'s replica group, in order.
    pub fn replica_group_of(&self, rank: usize, world: usize) -> Vec<usize> {
        let s = self.shard_group.max(1);
        (rank % s..world).step_by(s).collect()
    }

    /// The collectives of one unit's gradient, for the step schedule.
    pub fn reduction(&self, world: usize) -> Reduction {
        Reduction { scatter: self.shard_group > 1, all_reduce: self.replicas(world) > 1 }
    }
}

/// What reduces a unit's gradient over the ranks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct Reduction {
    /// A reduce-scatter within the shard group.
    pub scatter: bool,
    /// An all-reduce of the (scattered) gradient across replicas.
    pub all_reduce: bool,
}

impl Reduction {
    /// FSDP over `world` ranks.
    pub fn fsdp(world: usize) -> Reduction {
        Sharding::fsdp(world).reduction(world)
    }
}

impl fmt::Display for Sharding {
    /// `ddp`, `fsdp`, `hybrid:8`: what `plan --sharding` takes.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.strategy {
            Strategy::Ddp => f.write_str("ddp"),
            Strategy::Fsdp => f.write_str("fsdp"),
            Strategy::Hybrid => write!(f, "hybrid:{}", self.shard_group),
        }
    }
}

impl FromStr for Sharding {
    type Err = ShardingError;
    /// `ddp`, `fsdp` (shard group filled in by [`Sharding::resolved`]) or
    /// `hybrid:S`.
    fn from_str(s: &str) -> Result<Sharding, ShardingError> {
        match s {
            "ddp" => Ok(Sharding::ddp()),
            "fsdp" => Ok(Sharding::default()),
            _ => match s.strip_prefix("hybrid:").map(str::parse::<usize>) {
                Some(Ok(g)) if g >= 1 => Ok(Sharding::hybrid(g)),
                _ => Err(ShardingError(format!("`{s}` is not a sharding: use ddp, fsdp or hybrid:S (S ranks per shard group)"))),
            },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn groups_partition_the_world() {
        let h = Sharding::hybrid(2);
        assert_eq!(h.shard_group_of(3), vec![2, 3]);
        assert_eq!(h.replica_group_of(3, 8), vec![1, 3, 5, 7]);
        assert_eq!(h.replicas(8), 4);
        assert_eq!(h.reduction(8), Reduction { scatter: true, all_reduce: true });
        assert_eq!(Sharding::ddp().reduction(4), Reduction { scatter: false, all_reduce: true });
        assert_eq!(Sharding::fsdp(4).reduction(4), Reduction { scatter: true, all_reduce: false });
        assert_eq!(Sharding::fsdp(1).reduction(1), Reduction::default());
    }

    #[test]
    fn parses_checks_and_prints() {
        for s in ["ddp", "fsdp", "hybrid:8"] {
            assert_eq!(s.parse::<Sharding>().unwrap().resolved(64).to_string(), s);
        }
        assert!("hybrid:0".parse::<Sharding>().is_err() && "zero3".parse::<Sharding>().is_err());
        assert!(Sharding::hybrid(8).check(64).is_ok());
        let e = Sharding::hybrid(3).check(8).unwrap_err().to_string();
        assert!(e.contains("divides the world size 8"), "{e}");
        assert!(Sharding::hybrid(8).check(8).is_err() && Sharding::fsdp(4).check(8).is_err());
        assert_eq!(Sharding::default().resolved(16), Sharding::fsdp(16));
    }

    #[test]
    fn json_form_is_the_plan_field() {
        let j = serde_json::to_string(&Sharding::hybrid(8)).unwrap();
        assert_eq!(j, r#"{"strategy":"hybrid","shard_group":8}"#);
    }
}
