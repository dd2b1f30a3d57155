//! Per-device health, written by the link task and read by anyone through a snapshot.
//!
//! Each device has one [`DeviceHealth`]: an `Arc` of atomics. The link task is the only
//! writer; [`DeviceHealth::snapshot`] reads every field with relaxed loads, so a snapshot is
//! cheap and never blocks polling (fields may be from instants a few microseconds apart).
//!
//! Counters only grow (`cycles`, `timeouts`, `reconnects`, `exceptions`, ...); gauges say the
//! current value (`state`, `consecutive_failures`, `misconfigured_blocks`, latencies).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU8, AtomicU64, Ordering::Relaxed};
use std::time::Duration;

/// Upper bounds of the latency histogram's buckets, in milliseconds; one more bucket holds
/// everything slower.
pub const LATENCY_BUCKETS_MS: [u64; 12] = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000, 5000];

/// Weight of the newest sample in the latency moving average, as 1/N.
const EWMA_N: u64 = 8;

/// Where a device stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DeviceState {
    /// No answer yet since the link was (re)opened.
    Connecting,
    /// The last request got an answer.
    Online,
    /// The link failed; waiting to reconnect.
    Backoff,
    /// The unit does not answer (timeouts, gateway exceptions); waiting in its own backoff.
    Offline,
}

impl DeviceState {
    const fn to_u8(self) -> u8 {
        match self {
            Self::Connecting => 0,
            Self::Online => 1,
            Self::Backoff => 2,
            Self::Offline => 3,
        }
    }

    const fn from_u8(v: u8) -> Self {
        match v {
            1 => Self::Online,
            2 => Self::Backoff,
            3 => Self::Offline,
            _ => Self::Connecting,
        }
    }

    /// Lower-case name, for logs and status messages.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Connecting => "connecting",
            Self::Online => "online",
            Self::Backoff => "backoff",
            Self::Offline => "offline",
        }
    }
}

#[derive(Debug)]
struct Cell {
    device: Arc<str>,
    link: String,
    state: AtomicU8,
    last_success_ms: AtomicI64,
    consecutive_failures: AtomicU64,
    latency_last_us: AtomicU64,
    latency_ewma_us: AtomicU64,
    latency_buckets: [AtomicU64; LATENCY_BUCKETS_MS.len() + 1],
    requests: AtomicU64,
    requests_per_cycle: AtomicU64,
    cycles: AtomicU64,
    overruns: AtomicU64,
    cycles_dropped: AtomicU64,
    timeouts: AtomicU64,
    reconnects: AtomicU64,
    exceptions: [AtomicU64; 256],
    misconfigured_blocks: AtomicU64,
}

/// The shared health record of one device; cloning is cheap (an `Arc`).
#[derive(Debug, Clone)]
pub struct DeviceHealth {
    cell: Arc<Cell>,
}

/// A copy of a device's health at one moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HealthSnapshot {
    /// Device name.
    pub device: Arc<str>,
    /// The link it is polled over (`tcp 10.0.0.21:502`, `rtu /dev/ttyUSB0`).
    pub link: String,
    /// Where it stands.
    pub state: DeviceState,
    /// UTC ms of the last request answered with data.
    pub last_success_ms: Option<i64>,
    /// Failed requests since the last success.
    pub consecutive_failures: u64,
    /// Latency of the last answered request.
    pub latency_last: Option<Duration>,
    /// Moving average of request latency (newest sample weighs 1/8).
    pub latency_ewma: Option<Duration>,
    /// Requests answered per latency bucket ([`LATENCY_BUCKETS_MS`], then the rest).
    pub latency_histogram: Vec<u64>,
    /// Requests sent, in total.
    pub requests: u64,
    /// Requests sent in the last completed cycle.
    pub requests_per_cycle: u64,
    /// Cycles completed (readings produced, whether good or not).
    pub cycles: u64,
    /// Cycles skipped because the previous one ran too long (see `schedule`).
    pub overruns: u64,
    /// Cycles whose readings were dropped because the readings channel stayed full.
    pub cycles_dropped: u64,
    /// Requests that timed out.
    pub timeouts: u64,
    /// Times the link was opened again after having been open.
    pub reconnects: u64,
    /// Exception replies by code.
    pub exceptions: BTreeMap<u8, u64>,
    /// Blocks currently marked misconfigured (skipped, retried every `backoff_max`).
    pub misconfigured_blocks: u64,
}

impl DeviceHealth {
    /// A fresh record in state [`DeviceState::Connecting`].
    #[must_use]
    pub fn new(device: Arc<str>, link: String) -> Self {
        Self {
            cell: Arc::new(Cell {
                device,
                link,
                state: AtomicU8::new(DeviceState::Connecting.to_u8()),
                last_success_ms: AtomicI64::new(i64::MIN),
                consecutive_failures: AtomicU64::new(0),
                latency_last_us: AtomicU64::new(u64::MAX),
                latency_ewma_us: AtomicU64::new(u64::MAX),
                latency_buckets: std::array::from_fn(|_| AtomicU64::new(0)),
                requests: AtomicU64::new(0),
                requests_per_cycle: AtomicU64::new(0),
                cycles: AtomicU64::new(0),
                overruns: AtomicU64::new(0),
                cycles_dropped: AtomicU64::new(0),
                timeouts: AtomicU64::new(0),
                reconnects: AtomicU64::new(0),
                exceptions: std::array::from_fn(|_| AtomicU64::new(0)),
                misconfigured_blocks: AtomicU64::new(0),
            }),
        }
    }

    /// The device's name.
    #[must_use]
    pub fn device(&self) -> &Arc<str> {
        &self.cell.device
    }

    /// The current state.
    #[must_use]
    pub fn state(&self) -> DeviceState {
        DeviceState::from_u8(self.cell.state.load(Relaxed))
    }

    /// Copies every field.
    #[must_use]
    pub fn snapshot(&self) -> HealthSnapshot {
        let c = &*self.cell;
        let us = |v: u64| (v != u64::MAX).then(|| Duration::from_micros(v));
        let last = c.last_success_ms.load(Relaxed);
        HealthSnapshot {
            device: Arc::clone(&c.device),
            link: c.link.clone(),
            state: self.state(),
            last_success_ms: (last != i64::MIN).then_some(last),
            consecutive_failures: c.consecutive_failures.load(Relaxed),
            latency_last: us(c.latency_last_us.load(Relaxed)),
            latency_ewma: us(c.latency_ewma_us.load(Relaxed)),
            latency_histogram: c.latency_buckets.iter().map(|b| b.load(Relaxed)).collect(),
            requests: c.requests.load(Relaxed),
            requests_per_cycle: c.requests_per_cycle.load(Relaxed),
            cycles: c.cycles.load(Relaxed),
            overruns: c.overruns.load(Relaxed),
            cycles_dropped: c.cycles_dropped.load(Relaxed),
            timeouts: c.timeouts.load(Relaxed),
            reconnects: c.reconnects.load(Relaxed),
            exceptions: c
                .exceptions
                .iter()
                .enumerate()
                .filter_map(|(code, n)| {
                    let n = n.load(Relaxed);
                    (n > 0).then(|| (u8::try_from(code).unwrap_or(u8::MAX), n))
                })
                .collect(),
            misconfigured_blocks: c.misconfigured_blocks.load(Relaxed),
        }
    }

    // Writers, used by the link task only.

    pub(crate) fn set_state(&self, state: DeviceState) {
        self.cell.state.store(state.to_u8(), Relaxed);
    }

    pub(crate) fn request_sent(&self) {
        self.cell.requests.fetch_add(1, Relaxed);
    }

    /// An answer (data or exception) arrived after `latency`.
    pub(crate) fn answered(&self, latency: Duration) {
        let c = &*self.cell;
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX - 1);
        c.latency_last_us.store(us, Relaxed);
        let old = c.latency_ewma_us.load(Relaxed);
        let ewma = if old == u64::MAX {
            us
        } else {
            let (old, new) = (u128::from(old), u128::from(us));
            let n = u128::from(EWMA_N);
            u64::try_from((old * (n - 1) + new) / n).unwrap_or(u64::MAX - 1)
        };
        c.latency_ewma_us.store(ewma, Relaxed);
        let ms = u64::try_from(latency.as_millis()).unwrap_or(u64::MAX);
        let bucket = LATENCY_BUCKETS_MS
            .iter()
            .position(|&b| ms < b || (ms == b && latency.subsec_nanos().is_multiple_of(1_000_000)))
            .unwrap_or(LATENCY_BUCKETS_MS.len());
        if let Some(b) = c.latency_buckets.get(bucket) {
            b.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn succeeded(&self, now_ms: i64) {
        self.cell.last_success_ms.store(now_ms, Relaxed);
        self.cell.consecutive_failures.store(0, Relaxed);
        self.set_state(DeviceState::Online);
    }

    pub(crate) fn failed(&self) {
        self.cell.consecutive_failures.fetch_add(1, Relaxed);
    }

    pub(crate) fn exception(&self, code: u8) {
        if let Some(n) = self.cell.exceptions.get(usize::from(code)) {
            n.fetch_add(1, Relaxed);
        }
    }

    pub(crate) fn timeout(&self) {
        self.cell.timeouts.fetch_add(1, Relaxed);
    }

    pub(crate) fn reconnected(&self) {
        self.cell.reconnects.fetch_add(1, Relaxed);
    }

    pub(crate) fn cycle_done(&self, requests: u64) {
        self.cell.cycles.fetch_add(1, Relaxed);
        self.cell.requests_per_cycle.store(requests, Relaxed);
    }

    pub(crate) fn overran(&self, skipped: u64) {
        self.cell.overruns.fetch_add(skipped, Relaxed);
    }

    pub(crate) fn cycle_dropped(&self) {
        self.cell.cycles_dropped.fetch_add(1, Relaxed);
    }

    pub(crate) fn set_misconfigured_blocks(&self, n: usize) {
        self.cell
            .misconfigured_blocks
            .store(u64::try_from(n).unwrap_or(u64::MAX), Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn health() -> DeviceHealth {
        DeviceHealth::new(Arc::from("meter"), "tcp 127.0.0.1:502".to_owned())
    }

    #[test]
    fn a_fresh_record_is_connecting_with_nothing_measured() {
        let s = health().snapshot();
        assert_eq!(s.state, DeviceState::Connecting);
        assert_eq!(s.last_success_ms, None);
        assert_eq!(s.latency_last, None);
        assert_eq!(s.latency_histogram.len(), LATENCY_BUCKETS_MS.len() + 1);
        assert!(s.exceptions.is_empty());
    }

    #[test]
    fn latencies_land_in_their_bucket_and_the_average_follows() {
        let h = health();
        h.answered(Duration::from_micros(1_500)); // <= 2 ms
        h.answered(Duration::from_millis(2)); // <= 2 ms
        h.answered(Duration::from_secs(9)); // slower than every bound
        let s = h.snapshot();
        assert_eq!(s.latency_histogram[1], 2);
        assert_eq!(s.latency_histogram[LATENCY_BUCKETS_MS.len()], 1);
        assert_eq!(s.latency_last, Some(Duration::from_secs(9)));
        let ewma = s.latency_ewma.unwrap();
        assert!(ewma > Duration::from_millis(2) && ewma < Duration::from_secs(9));
    }

    #[test]
    fn a_success_resets_consecutive_failures_and_goes_online() {
        let h = health();
        h.failed();
        h.failed();
        h.exception(2);
        h.exception(2);
        h.succeeded(42);
        let s = h.snapshot();
        assert_eq!(s.consecutive_failures, 0);
        assert_eq!(s.state, DeviceState::Online);
        assert_eq!(s.last_success_ms, Some(42));
        assert_eq!(s.exceptions, BTreeMap::from([(2, 2)]));
    }
}
