//! One poll cycle of one device: its requests, what came back, and the readings made of it.
//!
//! Pure: the link task feeds it replies and failures with their receipt times, and asks it
//! which request is next; it never does I/O or reads a clock.
//!
//! # Rules
//!
//! - Every reading point of every planned request yields exactly one reading, in profile
//!   order: decoded from this cycle's replies, or `value: None, quality: Error` with the
//!   reason its request failed. No value is ever carried over or made up.
//! - The register image is fresh each cycle, so a scale factor read in an earlier cycle can
//!   never scale a value read now; a point whose scale factor's request failed gets
//!   `scale factor not read`.
//! - A reading's `ts` is the receipt time of its request's reply (or of the failure).
//! - A sentinel ("not implemented") is the device telling the truth: the reading has
//!   `value: None`, `quality: Good` and reason `not available (sentinel)` (also `(NaN)` and
//!   `(scale factor)`). A scale factor outside −10..=10 is a device fault: `quality: Error`.

use std::collections::VecDeque;
use std::sync::Arc;

use fivezero_model::wire::{Quality, Reading, Value};
use fivezero_profiles::Profile;
use fivezero_profiles::codec::{self, DecodeError, Decoded, NotAvailable, RegisterImage};
use fivezero_profiles::plan::ReadRequest;
use tokio::time::Instant;

use super::transport::Reply;

/// Reason of the points of a block skipped because it is marked misconfigured.
pub const MISCONFIGURED: &str = "misconfigured block";
/// Reason of the points of a cycle that found its link down.
pub const DISCONNECTED: &str = "disconnected";
/// Reason of the points of a cycle that found its unit in backoff.
pub const UNIT_OFFLINE: &str = "unit offline";

/// A request still to be sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Step {
    /// Index into the cycle's plan.
    pub index: usize,
    /// Not to be sent before this (a 05/06 retry).
    pub not_before: Option<Instant>,
    /// Already sent once and answered busy.
    pub retried: bool,
}

#[derive(Debug, Clone)]
enum Outcome {
    Read { ts: i64 },
    Failed { ts: i64, reason: Arc<str> },
}

/// One cycle in progress.
#[derive(Debug)]
pub struct Cycle {
    cycle: u64,
    ts_ms: i64,
    plan: Arc<[ReadRequest]>,
    queue: VecDeque<Step>,
    outcomes: Vec<Option<Outcome>>,
    image: RegisterImage,
    sent: u64,
}

impl Cycle {
    /// A cycle reading `plan`; requests for which `skip` gives a reason are not sent and
    /// fail at `now_ms` with that reason.
    pub fn new(
        cycle: u64,
        ts_ms: i64,
        plan: Arc<[ReadRequest]>,
        now_ms: i64,
        mut skip: impl FnMut(&ReadRequest) -> Option<&'static str>,
    ) -> Self {
        let mut queue = VecDeque::with_capacity(plan.len());
        let mut outcomes = Vec::with_capacity(plan.len());
        for (index, req) in plan.iter().enumerate() {
            match skip(req) {
                Some(reason) => outcomes.push(Some(Outcome::Failed {
                    ts: now_ms,
                    reason: Arc::from(reason),
                })),
                None => {
                    outcomes.push(None);
                    queue.push_back(Step {
                        index,
                        not_before: None,
                        retried: false,
                    });
                }
            }
        }
        Self {
            cycle,
            ts_ms,
            plan,
            queue,
            outcomes,
            image: RegisterImage::new(),
            sent: 0,
        }
    }

    /// A cycle in which nothing can be sent: every request fails at `now_ms` with `reason`.
    pub fn failed(
        cycle: u64,
        ts_ms: i64,
        plan: Arc<[ReadRequest]>,
        now_ms: i64,
        reason: &'static str,
    ) -> Self {
        Self::new(cycle, ts_ms, plan, now_ms, |_| Some(reason))
    }

    /// The cycle number.
    #[must_use]
    pub const fn number(&self) -> u64 {
        self.cycle
    }

    /// The cycle's boundary, UTC ms.
    #[must_use]
    pub const fn ts_ms(&self) -> i64 {
        self.ts_ms
    }

    /// Requests sent so far (a retry counts again).
    #[must_use]
    pub const fn sent(&self) -> u64 {
        self.sent
    }

    /// True when every request has an outcome.
    #[must_use]
    pub fn is_done(&self) -> bool {
        self.queue.is_empty()
    }

    /// True when a request may be sent at `now`.
    #[must_use]
    pub fn has_ready(&self, now: Instant) -> bool {
        self.queue
            .iter()
            .any(|s| s.not_before.is_none_or(|t| t <= now))
    }

    /// The earliest time a waiting request may be sent, when none may be sent now.
    #[must_use]
    pub fn next_ready(&self) -> Option<Instant> {
        self.queue.iter().filter_map(|s| s.not_before).min()
    }

    /// Takes the first request that may be sent at `now`, with its read.
    pub fn take_ready(&mut self, now: Instant) -> Option<(Step, ReadRequest)> {
        let pos = self
            .queue
            .iter()
            .position(|s| s.not_before.is_none_or(|t| t <= now))?;
        let step = self.queue.remove(pos)?;
        let req = self.plan.get(step.index)?.clone();
        self.sent += 1;
        Some((step, req))
    }

    /// Stores what the device answered to `step`, received at `ts`.
    pub fn record(&mut self, step: Step, reply: &Reply, ts: i64) {
        let Some(req) = self.plan.get(step.index) else {
            return;
        };
        match reply {
            Reply::Words(words) => self.image.put_registers(req.table, req.start, words),
            Reply::Bits(bits) => self.image.put_bits(req.table, req.start, bits),
        }
        if let Some(slot) = self.outcomes.get_mut(step.index) {
            *slot = Some(Outcome::Read { ts });
        }
    }

    /// Records that `step` failed at `ts`.
    pub fn fail(&mut self, step: Step, reason: &str, ts: i64) {
        if let Some(slot) = self.outcomes.get_mut(step.index) {
            *slot = Some(Outcome::Failed {
                ts,
                reason: Arc::from(reason),
            });
        }
    }

    /// Puts `step` back to be sent again, not before `at`.
    pub fn retry_at(&mut self, step: Step, at: Instant) {
        self.queue.push_back(Step {
            index: step.index,
            not_before: Some(at),
            retried: true,
        });
    }

    /// Fails every request not yet answered, at `ts`, with `reason`.
    pub fn abort(&mut self, reason: &str, ts: i64) {
        let reason: Arc<str> = Arc::from(reason);
        for step in self.queue.drain(..) {
            if let Some(slot) = self.outcomes.get_mut(step.index) {
                *slot = Some(Outcome::Failed {
                    ts,
                    reason: Arc::clone(&reason),
                });
            }
        }
    }

    /// The readings of the cycle (call when [`Cycle::is_done`]; a request still pending
    /// counts as failed with `reason` "not polled").
    #[must_use]
    pub fn readings(&self, profile: &Profile, device: &str) -> Vec<Reading> {
        let mut out: Vec<(usize, Reading)> = Vec::new();
        for (req, outcome) in self.plan.iter().zip(&self.outcomes) {
            for &point in &req.points {
                let Some(metric) = profile.points.get(point).and_then(|p| p.metric) else {
                    continue;
                };
                let (ts, value, quality, reason) = match outcome {
                    Some(Outcome::Read { ts }) => {
                        let (value, quality, reason) =
                            judge(codec::decode(profile, point, &self.image));
                        (*ts, value, quality, reason)
                    }
                    Some(Outcome::Failed { ts, reason }) => {
                        (*ts, None, Quality::Error, Some(reason.to_string()))
                    }
                    None => (
                        self.ts_ms,
                        None,
                        Quality::Error,
                        Some("not polled".to_owned()),
                    ),
                };
                out.push((
                    point,
                    Reading {
                        ts,
                        device: device.to_owned(),
                        metric: metric.id.to_owned(),
                        value,
                        quality,
                        reason,
                    },
                ));
            }
        }
        out.sort_by_key(|(point, _)| *point);
        out.into_iter().map(|(_, r)| r).collect()
    }
}

/// Value, quality and reason of a decoded point.
fn judge(decoded: Result<Decoded, DecodeError>) -> (Option<Value>, Quality, Option<String>) {
    match decoded {
        Ok(Decoded::Number(x)) => (Some(Value::Number(x)), Quality::Good, None),
        Ok(Decoded::Text(t)) => (Some(Value::Text(t)), Quality::Good, None),
        Ok(Decoded::NotAvailable(why)) => match why {
            NotAvailable::Sentinel(_) => not_available("not available (sentinel)"),
            NotAvailable::NotANumber => not_available("not available (NaN)"),
            NotAvailable::ScaleFactorNotAvailable => not_available("not available (scale factor)"),
            NotAvailable::ScaleFactorOutOfRange(sf) => (
                None,
                Quality::Error,
                Some(format!("scale factor {sf} out of range")),
            ),
        },
        // The point's own registers came with its request, so what is missing is its scale
        // factor, read by another request that failed.
        Err(DecodeError::Missing { .. }) => (
            None,
            Quality::Error,
            Some("scale factor not read".to_owned()),
        ),
        Err(e) => (None, Quality::Error, Some(e.to_string())),
    }
}

fn not_available(reason: &str) -> (Option<Value>, Quality, Option<String>) {
    (None, Quality::Good, Some(reason.to_owned()))
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::time::Duration;

    use fivezero_profiles::{load_str, plan};

    use super::*;

    /// A SunSpec-like inverter: power with a scale factor next to it, energy with a sentinel,
    /// and a temperature whose scale factor is too far away to be read with it.
    fn profile() -> Profile {
        load_str(
            Path::new("acme-inv.toml"),
            r#"
[device]
manufacturer = "Acme"
model = "Inv"
category = "pv_inverter"
source = "test"

[modbus]
max_registers = 4

[[point]]
name = "W"
metric = "pv.ac_power"
table = "holding"
address = 0
type = "i16"
unit = "W"
scale_factor = "W_SF"

[[point]]
name = "W_SF"
table = "holding"
address = 1
type = "i16"

[[point]]
name = "WH"
metric = "pv.energy"
table = "holding"
address = 2
type = "u32"
unit = "Wh"
not_available = [0xFFFFFFFF]

[[point]]
name = "Tmp"
metric = "pv.cabinet_temperature"
table = "holding"
address = 20
type = "i16"
unit = "°C"
scale_factor = "Tmp_SF"

[[point]]
name = "Tmp_SF"
table = "holding"
address = 30
type = "i16"
"#,
        )
        .expect("test profile is valid")
    }

    fn cycle(p: &Profile) -> Cycle {
        let plan: Arc<[ReadRequest]> = plan::plan_all(p).into();
        Cycle::new(7, 7_000, plan, 7_001, |_| None)
    }

    fn answer_all(c: &mut Cycle, mut words: impl FnMut(&ReadRequest) -> Vec<u16>, ts: i64) {
        let now = Instant::now();
        while let Some((step, req)) = c.take_ready(now) {
            c.record(step, &Reply::Words(words(&req)), ts);
        }
    }

    /// Register values by address.
    fn regs(req: &ReadRequest, f: impl Fn(u16) -> u16) -> Vec<u16> {
        (req.start..req.start + req.count).map(f).collect()
    }

    #[test]
    fn every_reading_point_is_decoded_in_profile_order_with_its_receipt_time() {
        let p = profile();
        let mut c = cycle(&p);
        answer_all(
            &mut c,
            |r| {
                regs(r, |a| match a {
                    0 => 1234,
                    1 => (-1i16) as u16, // W_SF = -1
                    2 => 0,
                    3 => 5000,
                    20 => 415,
                    30 => (-1i16) as u16,
                    _ => 0,
                })
            },
            7_010,
        );
        assert!(c.is_done());
        let r = c.readings(&p, "inv");
        let metrics: Vec<&str> = r.iter().map(|r| r.metric.as_str()).collect();
        assert_eq!(
            metrics,
            ["pv.ac_power", "pv.energy", "pv.cabinet_temperature"]
        );
        let Some(Value::Number(w)) = r[0].value else {
            panic!("{:?}", r[0].value)
        };
        assert!((w - 0.1234).abs() < 1e-12, "{w}"); // 123.4 W in kW
        assert_eq!(r[1].value, Some(Value::Number(5.0))); // 5000 Wh in kWh
        assert_eq!(r[2].value, Some(Value::Number(41.5)));
        assert!(
            r.iter()
                .all(|r| r.quality == Quality::Good && r.ts == 7_010)
        );
        assert!(r.iter().all(|r| r.device == "inv" && r.reason.is_none()));
    }

    #[test]
    fn a_failed_request_gives_its_points_an_error_with_the_reason_and_no_value() {
        let p = profile();
        let mut c = cycle(&p);
        let now = Instant::now();
        let (step, _) = c.take_ready(now).unwrap();
        c.fail(step, "exception 02 illegal data address", 7_020);
        c.abort("timeout", 7_030);
        assert!(c.is_done());
        let r = c.readings(&p, "inv");
        assert_eq!(r.len(), 3);
        assert!(
            r.iter()
                .all(|r| r.value.is_none() && r.quality == Quality::Error)
        );
        assert_eq!(
            r[0].reason.as_deref(),
            Some("exception 02 illegal data address")
        );
        assert_eq!(r[0].ts, 7_020);
        assert_eq!(r[2].reason.as_deref(), Some("timeout"));
    }

    #[test]
    fn a_sentinel_is_a_good_reading_without_a_value() {
        let p = profile();
        let mut c = cycle(&p);
        answer_all(
            &mut c,
            |r| regs(r, |a| if a == 2 || a == 3 { 0xFFFF } else { 1 }),
            1,
        );
        let r = c.readings(&p, "inv");
        let energy = r.iter().find(|r| r.metric == "pv.energy").unwrap();
        assert_eq!(energy.value, None);
        assert_eq!(energy.quality, Quality::Good);
        assert_eq!(energy.reason.as_deref(), Some("not available (sentinel)"));
    }

    #[test]
    fn a_value_whose_scale_factor_was_not_read_is_an_error_not_a_guess() {
        let p = profile();
        let mut c = cycle(&p);
        let now = Instant::now();
        while let Some((step, req)) = c.take_ready(now) {
            if req.start == 30 {
                c.fail(step, "timeout", 5);
            } else {
                c.record(step, &Reply::Words(regs(&req, |_| 1)), 5);
            }
        }
        let r = c.readings(&p, "inv");
        let tmp = r
            .iter()
            .find(|r| r.metric == "pv.cabinet_temperature")
            .unwrap();
        assert_eq!(tmp.value, None);
        assert_eq!(tmp.quality, Quality::Error);
        assert_eq!(tmp.reason.as_deref(), Some("scale factor not read"));
    }

    #[test]
    fn skipped_blocks_fail_at_once_and_are_never_sent() {
        let p = profile();
        let plan: Arc<[ReadRequest]> = plan::plan_all(&p).into();
        let c = Cycle::new(1, 0, plan, 3, |r| (r.start == 0).then_some(MISCONFIGURED));
        let sent: Vec<u16> = {
            let mut c = c;
            let mut v = Vec::new();
            while let Some((step, req)) = c.take_ready(Instant::now()) {
                v.push(req.start);
                c.fail(step, "x", 0);
            }
            let r = c.readings(&p, "inv");
            assert_eq!(r[0].reason.as_deref(), Some(MISCONFIGURED));
            v
        };
        assert!(!sent.contains(&0));
    }

    #[test]
    fn a_request_put_back_waits_for_its_time_while_others_go_first() {
        let p = profile();
        let mut c = cycle(&p);
        let now = Instant::now();
        let (first, _) = c.take_ready(now).unwrap();
        c.retry_at(first, now + Duration::from_millis(100));
        let (second, _) = c.take_ready(now).unwrap();
        assert_ne!(second.index, first.index);
        c.fail(second, "x", 0);
        while let Some((s, _)) = c.take_ready(now) {
            c.fail(s, "x", 0);
        }
        assert!(!c.is_done());
        assert!(!c.has_ready(now));
        assert_eq!(c.next_ready(), Some(now + Duration::from_millis(100)));
        let (again, _) = c.take_ready(now + Duration::from_millis(100)).unwrap();
        assert!(again.retried);
        assert_eq!(again.index, first.index);
    }
}
