//! The task of one physical link: it owns the link's tokio-modbus context and serialises the
//! requests of every device (unit) on it.
//!
//! # Loop
//!
//! 1. Start the cycles that are due (`Schedule::poll`): a unit whose link is in backoff gets
//!    a cycle of `disconnected` readings, a unit in its own backoff one of `unit offline`
//!    readings, any other a cycle of requests.
//! 2. Hand finished cycles' readings to the channel (see *Back-pressure*).
//! 3. Give the next unit with a request ready its turn (round robin, one request a turn), so
//!    every unit on a bus gets a fair share whatever its number of requests. A dead unit
//!    costs the others at most one timeout per attempt: its first timeout ends its cycle and
//!    puts it in its own backoff, during which it takes no turns at all.
//! 4. Otherwise sleep until the next boundary or retry time, or until shutdown.
//!
//! A turn opens the link if needed (under `connect_timeout`), keeps the inter-frame silence,
//! sends one read under the device's `timeout`, and applies the [`Disposition`] of whatever
//! went wrong (see [`super::error`]).
//!
//! # Back-pressure
//!
//! The readings channel is bounded. When it is full the task waits up to one interval of
//! the device for room, then drops the cycle's readings and counts it (`cycles_dropped`,
//! logged at ERROR at most once per 10 s): the schedule is never held up for longer than a
//! cycle, and the buffer, the consumer, is the one place that decides what is kept.
//!
//! # Shutdown
//!
//! When asked to stop, no new cycle starts; the cycles in progress finish (each request is
//! bounded by its timeout) and their readings are sent; then the link is closed.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::time::Instant;
use tokio_modbus::client::{Client, Context};
use tracing::{debug, error, info, warn};

use super::DeviceReadings;
use super::backoff::{Backoff, deadline};
use super::clock::Clock;
use super::cycle::{Cycle, DISCONNECTED, UNIT_OFFLINE};
use super::error::{Disposition, PollError};
use super::health::DeviceState;
use super::schedule::Due;
use super::transport::{self, Connect};
use super::unit::Unit;

/// Least time between two ERROR lines about dropped cycles of one link.
const DROP_LOG_EVERY: Duration = Duration::from_secs(10);

/// How long closing the link may take at shutdown.
const CLOSE_LIMIT: Duration = Duration::from_secs(1);

/// Timing shared by the links.
#[derive(Debug, Clone, Copy)]
pub(crate) struct LinkTiming {
    pub(crate) connect_timeout: Duration,
    pub(crate) backoff_max: Duration,
    pub(crate) inter_frame_delay: Duration,
}

/// One link's task state.
#[derive(Debug)]
pub(crate) struct LinkTask {
    name: String,
    connect: Arc<dyn Connect>,
    ctx: Option<ContextCell>,
    opened_before: bool,
    backoff: Backoff,
    timing: LinkTiming,
    quiet_until: Instant,
    units: Vec<Unit>,
    rr: usize,
    clock: Arc<dyn Clock>,
    tx: mpsc::Sender<DeviceReadings>,
    stop: watch::Receiver<bool>,
    stopping: bool,
    dropped_since_log: u64,
    last_drop_log: Option<Instant>,
}

/// tokio-modbus's `Context` has no `Debug`.
struct ContextCell(Context);

impl std::fmt::Debug for ContextCell {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Context")
    }
}

impl LinkTask {
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn new(
        name: String,
        connect: Arc<dyn Connect>,
        backoff: Backoff,
        timing: LinkTiming,
        units: Vec<Unit>,
        clock: Arc<dyn Clock>,
        tx: mpsc::Sender<DeviceReadings>,
        stop: watch::Receiver<bool>,
    ) -> Self {
        Self {
            name,
            connect,
            ctx: None,
            opened_before: false,
            backoff,
            timing,
            quiet_until: Instant::now(),
            units,
            rr: 0,
            clock,
            tx,
            stop,
            stopping: false,
            dropped_since_log: 0,
            last_drop_log: None,
        }
    }

    /// Runs until shutdown.
    pub(crate) async fn run(mut self) {
        debug!(link = %self.name, units = self.units.len(), "Link task started.");
        loop {
            if !self.stopping && *self.stop.borrow() {
                self.stopping = true;
            }
            if !self.stopping {
                self.start_due(Instant::now());
            }
            self.emit_done().await;
            if self.stopping && self.units.iter().all(|u| u.cycle.is_none()) {
                break;
            }
            if let Some(i) = self.pick(Instant::now()) {
                self.turn(i).await;
                continue;
            }
            let wake = self.next_wake();
            let stopping = self.stopping;
            tokio::select! {
                () = sleep_until_opt(wake) => {}
                changed = self.stop.changed(), if !stopping => {
                    if changed.is_err() {
                        // The poller is gone: stop as if asked to.
                        self.stopping = true;
                    }
                }
            }
        }
        if let Some(ContextCell(mut ctx)) = self.ctx.take() {
            let _ = deadline(CLOSE_LIMIT, ctx.disconnect()).await;
        }
        debug!(link = %self.name, "Link task stopped.");
    }

    /// Starts the cycles that are due at `now`.
    fn start_due(&mut self, now: Instant) {
        let link_waiting = self.ctx.is_none() && self.backoff.is_waiting(now);
        for unit in &mut self.units {
            if unit.cycle.is_some() {
                continue;
            }
            let (cycle, skipped) = match unit.schedule.poll(now) {
                Due::Wait { skipped, .. } => (None, skipped),
                Due::Start { cycle, skipped } => (Some(cycle), skipped),
            };
            if skipped > 0 {
                unit.health.overran(skipped);
                debug!(device = %unit.device.name, skipped, "Cycles skipped: the previous one ran past their slot.");
            }
            let Some(cycle) = cycle else { continue };
            let now_ms = self.clock.now_ms();
            let c = if link_waiting {
                unit.health.set_state(DeviceState::Backoff);
                unit.begin_failed(cycle, now_ms, DISCONNECTED)
            } else if unit.backoff.is_waiting(now) {
                unit.health.set_state(DeviceState::Offline);
                unit.begin_failed(cycle, now_ms, UNIT_OFFLINE)
            } else {
                unit.begin(cycle, now, now_ms)
            };
            unit.cycle = Some(c);
        }
    }

    /// Sends the readings of every finished cycle.
    async fn emit_done(&mut self) {
        for i in 0..self.units.len() {
            let Some(unit) = self.units.get_mut(i) else {
                continue;
            };
            if !unit.cycle.as_ref().is_some_and(Cycle::is_done) {
                continue;
            }
            let Some(c) = unit.cycle.take() else { continue };
            unit.health.cycle_done(c.sent());
            let readings = c.readings(&unit.device.profile, &unit.device.name);
            if readings.is_empty() {
                continue;
            }
            let out = DeviceReadings {
                device: Arc::clone(&unit.device.name),
                ts_ms: c.ts_ms(),
                cycle: c.number(),
                readings,
            };
            let wait = unit.device.interval;
            let health = unit.health.clone();
            match self.tx.send_timeout(out, wait).await {
                Ok(()) => {}
                Err(mpsc::error::SendTimeoutError::Timeout(dropped)) => {
                    health.cycle_dropped();
                    self.log_drop(&dropped);
                }
                Err(mpsc::error::SendTimeoutError::Closed(_)) => {
                    if !self.stopping {
                        warn!(link = %self.name, "The readings channel is closed; polling stops.");
                    }
                    self.stopping = true;
                }
            }
        }
    }

    fn log_drop(&mut self, dropped: &DeviceReadings) {
        self.dropped_since_log += 1;
        let now = Instant::now();
        if self
            .last_drop_log
            .is_none_or(|t| now.duration_since(t) >= DROP_LOG_EVERY)
        {
            error!(
                device = %dropped.device,
                cycle = dropped.cycle,
                readings = dropped.readings.len(),
                cycles_dropped = self.dropped_since_log,
                intentional = false,
                reason = "channel_full",
                "Readings dropped: the readings channel stayed full for a whole interval."
            );
            self.dropped_since_log = 0;
            self.last_drop_log = Some(now);
        }
    }

    /// The next unit, round robin from the last one served, with a request ready at `now`.
    fn pick(&mut self, now: Instant) -> Option<usize> {
        let n = self.units.len();
        (0..n)
            .map(|k| (self.rr + k) % n)
            .find(|&i| {
                self.units
                    .get(i)
                    .and_then(|u| u.cycle.as_ref())
                    .is_some_and(|c| c.has_ready(now))
            })
            .inspect(|&i| self.rr = (i + 1) % n)
    }

    /// When something next needs doing (a boundary or a retry), if anything.
    fn next_wake(&self) -> Option<Instant> {
        self.units
            .iter()
            .filter_map(|u| match &u.cycle {
                Some(c) => c.next_ready(),
                None if !self.stopping => Some(u.schedule.next_due()),
                None => None,
            })
            .min()
    }

    /// Gives unit `i` one request.
    async fn turn(&mut self, i: usize) {
        let now = Instant::now();
        let Some((step, req)) = self
            .units
            .get_mut(i)
            .and_then(|u| u.cycle.as_mut())
            .and_then(|c| c.take_ready(now))
        else {
            return;
        };
        if self.ctx.is_none() && !self.open(i, step).await {
            return;
        }
        if !self.timing.inter_frame_delay.is_zero() {
            tokio::time::sleep_until(self.quiet_until).await;
        }
        let (Some(unit), Some(ContextCell(ctx))) = (self.units.get_mut(i), self.ctx.as_mut())
        else {
            return;
        };
        // Taken out while the request runs, so the unit can be updated beside it; put back
        // below whatever happens.
        let Some(mut cycle) = unit.cycle.take() else {
            return;
        };
        unit.health.request_sent();
        let t0 = Instant::now();
        let result = transport::read(ctx, unit.device.unit, &req, unit.device.timeout).await;
        let t1 = Instant::now();
        let ts = self.clock.now_ms();
        self.quiet_until = t1 + self.timing.inter_frame_delay;
        let device = Arc::clone(&unit.device.name);
        match result {
            Ok(Ok(reply)) => {
                unit.health.answered(t1 - t0);
                if unit.backoff.failures() > 0 || self.backoff.failures() > 0 {
                    info!(device = %device, link = %self.name, "Device answers again.");
                }
                unit.health.succeeded(ts);
                unit.backoff.reset();
                self.backoff.reset();
                cycle.record(step, &reply, ts);
                if unit.clear_misconfigured(&req) {
                    info!(device = %device, table = req.table.as_str(), start = req.start, count = req.count, "Misconfigured block reads again.");
                }
            }
            Ok(Err(exception)) => {
                unit.health.answered(t1 - t0);
                unit.health.exception(exception.0);
                unit.health.failed();
                self.backoff.reset();
                let reason = exception.reason();
                match exception.disposition() {
                    Disposition::UnitOffline => {
                        cycle.fail(step, &reason, ts);
                        cycle.abort(&reason, ts);
                        let wait = unit.backoff.fail(t1);
                        unit.health.set_state(DeviceState::Offline);
                        debug!(device = %device, %exception, backoff = ?wait, "Unit offline behind its gateway; backing off.");
                    }
                    Disposition::Misconfigured => {
                        unit.backoff.reset();
                        unit.health.set_state(DeviceState::Online);
                        cycle.fail(step, &reason, ts);
                        if unit.mark_misconfigured(&req, t1, self.timing.backoff_max) {
                            warn!(
                                device = %device,
                                table = req.table.as_str(),
                                start = req.start,
                                count = req.count,
                                %exception,
                                retry = ?self.timing.backoff_max,
                                "Device refused a block: it is skipped and retried every backoff_max. Check the profile."
                            );
                        }
                    }
                    Disposition::RetryAfter(after) if !step.retried => {
                        unit.backoff.reset();
                        unit.health.set_state(DeviceState::Online);
                        cycle.retry_at(step, t1 + after);
                    }
                    _ => {
                        unit.backoff.reset();
                        unit.health.set_state(DeviceState::Online);
                        cycle.fail(step, &reason, ts);
                    }
                }
            }
            Err(e) => {
                unit.health.failed();
                if matches!(e, PollError::Timeout) {
                    unit.health.timeout();
                }
                match e.disposition() {
                    Disposition::LinkDown => {
                        cycle.fail(step, e.reason(), ts);
                        cycle.abort(e.reason(), ts);
                        self.link_down(&e);
                    }
                    _ => {
                        // Reconnect: whatever is still on its way is never read as an answer.
                        cycle.fail(step, e.reason(), ts);
                        cycle.abort(e.reason(), ts);
                        let first = unit.backoff.failures() == 0;
                        let wait = unit.backoff.fail(t1);
                        unit.health.set_state(DeviceState::Offline);
                        if first {
                            warn!(device = %device, link = %self.name, error = %e, backoff = ?wait, "Request failed; link reopened, unit backing off.");
                        } else {
                            debug!(device = %device, error = %e, backoff = ?wait, "Request failed again.");
                        }
                        self.ctx = None;
                    }
                }
            }
        }
        if let Some(unit) = self.units.get_mut(i) {
            unit.cycle = Some(cycle);
        }
    }

    /// Opens the link for unit `i`'s `step`; false (with the step and every cycle failed) if
    /// it cannot be opened now.
    async fn open(&mut self, i: usize, step: super::cycle::Step) -> bool {
        if self.backoff.is_waiting(Instant::now()) {
            if let Some(c) = self.units.get_mut(i).and_then(|u| u.cycle.as_mut()) {
                c.fail(step, DISCONNECTED, self.clock.now_ms());
            }
            return false;
        }
        for u in &self.units {
            if u.health.state() != DeviceState::Offline {
                u.health.set_state(DeviceState::Connecting);
            }
        }
        let result = deadline(self.timing.connect_timeout, self.connect.connect()).await;
        match result {
            Some(Ok(ctx)) => {
                self.ctx = Some(ContextCell(ctx));
                if self.opened_before {
                    for u in &self.units {
                        u.health.reconnected();
                    }
                }
                self.opened_before = true;
                debug!(link = %self.name, "Link opened.");
                true
            }
            failed => {
                let e = match failed {
                    Some(Err(e)) => PollError::Connect(e),
                    _ => PollError::ConnectTimeout,
                };
                if let Some(c) = self.units.get_mut(i).and_then(|u| u.cycle.as_mut()) {
                    c.fail(step, e.reason(), self.clock.now_ms());
                }
                self.link_down(&e);
                false
            }
        }
    }

    /// Drops the context, ends every cycle in progress and backs the link off.
    fn link_down(&mut self, e: &PollError) {
        self.ctx = None;
        let ts = self.clock.now_ms();
        for u in &mut self.units {
            if let Some(c) = u.cycle.as_mut() {
                c.abort(e.reason(), ts);
            }
            u.health.set_state(DeviceState::Backoff);
        }
        let first = self.backoff.failures() == 0;
        let wait = self.backoff.fail(Instant::now());
        if first {
            warn!(link = %self.name, error = %e, backoff = ?wait, "Link down; reconnecting after a backoff.");
        } else {
            debug!(link = %self.name, error = %e, backoff = ?wait, "Link still down.");
        }
    }
}

async fn sleep_until_opt(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}
