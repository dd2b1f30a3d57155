//! The state the poller keeps for one device (one Modbus unit on a link): its schedule, its
//! cached plans, its misconfigured blocks, its backoff and the cycle in progress.
//!
//! Pure apart from the clock values it is handed.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use fivezero_profiles::Table;
use fivezero_profiles::plan::{self, ReadRequest};
use tokio::time::Instant;

use super::backoff::Backoff;
use super::cycle::{Cycle, MISCONFIGURED};
use super::health::DeviceHealth;
use super::schedule::Schedule;
use crate::config::DeviceConfig;

/// Distinct due sets kept in the plan cache; per-point intervals repeat with a short period,
/// so this is never reached in practice, and the cache is simply emptied if it is.
const PLAN_CACHE_LIMIT: usize = 64;

/// Identifies a block across cycles: the same read is the same block, whatever due set
/// produced it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct BlockKey {
    /// The table.
    pub table: Table,
    /// First address.
    pub start: u16,
    /// Registers or bits.
    pub count: u16,
}

impl From<&ReadRequest> for BlockKey {
    fn from(r: &ReadRequest) -> Self {
        Self {
            table: r.table,
            start: r.start,
            count: r.count,
        }
    }
}

/// One device on a link.
#[derive(Debug)]
pub struct Unit {
    /// Its configuration.
    pub device: DeviceConfig,
    /// When its cycles run.
    pub schedule: Schedule,
    /// Backoff of this unit alone (timeouts, gateway exceptions, bad replies).
    pub backoff: Backoff,
    /// The cycle in progress.
    pub cycle: Option<Cycle>,
    /// Its health record.
    pub health: DeviceHealth,
    plans: HashMap<Vec<usize>, Arc<[ReadRequest]>>,
    misconfigured: HashMap<BlockKey, Instant>,
}

impl Unit {
    /// A unit whose schedule starts at the first boundary after `now_ms`.
    #[must_use]
    pub fn new(
        device: DeviceConfig,
        backoff: Backoff,
        health: DeviceHealth,
        now: Instant,
        now_ms: i64,
    ) -> Self {
        let schedule = Schedule::new(device.interval, now, now_ms);
        Self {
            device,
            schedule,
            backoff,
            cycle: None,
            health,
            plans: HashMap::new(),
            misconfigured: HashMap::new(),
        }
    }

    /// The requests of cycle `cycle`: `plan::plan` of `plan::due_points`, cached per due set.
    pub fn plan_for(&mut self, cycle: u64) -> Arc<[ReadRequest]> {
        let profile = &self.device.profile;
        let due = plan::due_points(profile, self.schedule.interval(), cycle);
        if let Some(p) = self.plans.get(&due) {
            return Arc::clone(p);
        }
        if self.plans.len() >= PLAN_CACHE_LIMIT {
            self.plans.clear();
        }
        let p: Arc<[ReadRequest]> = plan::plan(profile, &due).into();
        self.plans.insert(due, Arc::clone(&p));
        p
    }

    /// Starts cycle `cycle` whose requests can be sent: blocks marked misconfigured whose
    /// retry time has not come are skipped.
    pub fn begin(&mut self, cycle: u64, now: Instant, now_ms: i64) -> Cycle {
        let plan = self.plan_for(cycle);
        let ts = self.schedule.boundary_ms(cycle);
        let misconfigured = &self.misconfigured;
        Cycle::new(cycle, ts, plan, now_ms, |r| {
            misconfigured
                .get(&BlockKey::from(r))
                .is_some_and(|retry| now < *retry)
                .then_some(MISCONFIGURED)
        })
    }

    /// Starts cycle `cycle` in which nothing can be sent: every point fails with `reason`.
    pub fn begin_failed(&mut self, cycle: u64, now_ms: i64, reason: &'static str) -> Cycle {
        let plan = self.plan_for(cycle);
        let ts = self.schedule.boundary_ms(cycle);
        Cycle::failed(cycle, ts, plan, now_ms, reason)
    }

    /// Marks `req`'s block misconfigured until `now + retry_after`; true if it was not
    /// marked before (the caller warns once).
    pub fn mark_misconfigured(
        &mut self,
        req: &ReadRequest,
        now: Instant,
        retry_after: Duration,
    ) -> bool {
        let retry = now.checked_add(retry_after).unwrap_or(now);
        let fresh = self
            .misconfigured
            .insert(BlockKey::from(req), retry)
            .is_none();
        self.health
            .set_misconfigured_blocks(self.misconfigured.len());
        fresh
    }

    /// Clears the mark of `req`'s block after it was read; true if it was marked.
    pub fn clear_misconfigured(&mut self, req: &ReadRequest) -> bool {
        let was = self.misconfigured.remove(&BlockKey::from(req)).is_some();
        if was {
            self.health
                .set_misconfigured_blocks(self.misconfigured.len());
        }
        was
    }

    /// The blocks currently marked misconfigured.
    #[must_use]
    pub fn misconfigured_blocks(&self) -> Vec<BlockKey> {
        let mut v: Vec<BlockKey> = self.misconfigured.keys().copied().collect();
        v.sort();
        v
    }
}
