//! A rank's process groups: the world, and the subgroups its sharding
//! strategy (`runspec::sharding`) and SyncBN groups need, each made once,
//! in the same order on every rank (a subgroup's constructor waits for its
//! members, so a common order cannot deadlock).

use crate::dist::{DistError, ProcessGroup};
use runspec::sharding::Sharding;

pub struct RankGroups {
    world: ProcessGroup,
    sharding: Sharding,
    /// Subgroups strictly between one rank and the world (`None`: the
    /// world itself or this rank alone serves).
    shard: Option<ProcessGroup>,
    replica: Option<ProcessGroup>,
    sync_bn: Option<ProcessGroup>,
}

impl RankGroups {
    /// The world only: FSDP over every rank, SyncBN (if used) over all.
    pub fn world(world: ProcessGroup) -> RankGroups {
        let sharding = Sharding::fsdp(world.world_size());
        RankGroups { world, sharding, shard: None, replica: None, sync_bn: None }
    }

    /// Makes this rank's shard group (`s` consecutive ranks), replica group
    /// (the ranks with the same index in their shard group) and SyncBN
    /// group (`k` consecutive ranks; `None`: all).
    pub fn new(world: ProcessGroup, sharding: Sharding, sync_bn_group: Option<usize>) -> Result<RankGroups, DistError> {
        let n = world.world_size();
        let sharding = sharding.resolved(n);
        sharding.check(n).map_err(|e| DistError::Invalid { op: "sharding", msg: e.0 })?;
        if let Some(k) = sync_bn_group {
            if k < 2 || !n.is_multiple_of(k) {
                return Err(DistError::Invalid {
                    op: "sync_bn_group",
                    msg: format!("{k} ranks per SyncBN group: needs at least 2 that divide the world size {n}"),
                });
            }
        }
        let me = world.rank();
        let between = |size: usize| size > 1 && size < n;
        let s = sharding.shard_group;
        let shard = if between(s) { Some(world.subgroup("shard group", &sharding.shard_group_of(me))?) } else { None };
        let replica = if between(n / s) { Some(world.subgroup("replica group", &sharding.replica_group_of(me, n))?) } else { None };
        let sync_bn = match sync_bn_group {
            Some(k) if between(k) => Some(world.subgroup("SyncBN group", &(me / k * k..me / k * k + k).collect::<Vec<_>>())?),
            _ => None,
        };
        Ok(RankGroups { world, sharding, shard, replica, sync_bn })
    }

    pub fn world_group(&self) -> &ProcessGroup {
        &self.world
    }
    pub fn sharding(&self) -> Sharding {
        self.sharding
    }

    /// The ranks parameters are sharded over; `None`: this rank holds them
    /// whole (DDP, or a world of one).
    pub fn shard(&self) -> Option<&ProcessGroup> {
        match self.sharding.shard_group {
            s if s <= 1 => None,
            s if s >= self.world.world_size() => Some(&self.world),
            _ => self.shard.as_ref(),
        }
    }

    /// The ranks holding the same shard; `None`: no replicas (FSDP).
    pub fn replica(&self) -> Option<&ProcessGroup> {
        let n = self.world.world_size();
        match self.sharding.replicas(n) {
            r if r <= 1 => None,
            r if r >= n => Some(&self.world),
            _ => self.replica.as_ref(),
        }
    }

    /// The ranks SyncBN takes statistics over.
    pub fn sync_bn(&self) -> &ProcessGroup {
        self.sync_bn.as_ref().unwrap_or(&self.world)
    }

    /// This rank's index in its shard group and the group's size.
    pub fn shard_rank_and_size(&self) -> (usize, usize) {
        self.shard().map_or((0, 1), |g| (g.rank(), g.world_size()))
    }
}
