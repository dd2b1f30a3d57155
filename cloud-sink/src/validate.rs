//! Validation of every incoming message: topic and payload in, a typed message or a
//! [`Rejection`] out. Pure and synchronous; the ingest task only moves bytes in and verdicts out.
//!
//! # Rules
//!
//! A message is refused (and then acknowledged, kept raw in the dead letters and counted by
//! [`RejectReason`]) when:
//! - the topic is not `{prefix}/{site}/{gateway}/{batches|kpi|gaps|status}` (`topic`);
//! - the payload is larger than the configured maximum (`oversized`), empty (`empty`), not
//!   JSON or not the shape of the message (`malformed`: truncated, wrong types, unknown
//!   fields, nested too deeply);
//! - the schema version is not the one this build reads (`schema`);
//! - a field breaks the contract (`invalid`: NaN or infinite numbers, `count` 0, above
//!   [`MAX_BATCH_READINGS`] or not the number of entries, a sequence that overflows,
//!   timestamps more than ten years from now, names that cannot be topic levels);
//! - the sequence range does not fit the database's signed 64-bit integers (`seq_range`);
//! - the gateway or site in the payload differs from the topic's (`gateway_mismatch`,
//!   `site_mismatch`);
//! - an allow-list is configured and the gateway is not on it (`unknown_gateway`).
//!
//! An empty payload on a `status` topic is the clearing of a retained message, not an error:
//! it is [`Inbound::Cleared`] (acknowledged and counted as ignored).
//!
//! [`MAX_BATCH_READINGS`]: fivezero_model::wire::MAX_BATCH_READINGS

use std::collections::BTreeSet;

use fivezero_model::topic::{self, TopicKind};
use fivezero_model::wire::{self, Batch, Gap, KpiBatch, Status, WireError};

/// Why a message was refused; the label of the dead-letter counter and row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum RejectReason {
    /// The topic is not one the sink reads.
    Topic,
    /// The payload is larger than allowed.
    Oversized,
    /// The payload is empty.
    Empty,
    /// Not JSON or not the message's shape.
    Malformed,
    /// An unknown schema version.
    Schema,
    /// A field breaks the contract.
    Invalid,
    /// The sequence range does not fit a signed 64-bit integer.
    SeqRange,
    /// The payload's gateway differs from the topic's.
    GatewayMismatch,
    /// The payload's site differs from the topic's.
    SiteMismatch,
    /// The gateway is not on the configured allow-list.
    UnknownGateway,
}

impl RejectReason {
    /// Every reason, for tests and metric labels.
    pub const ALL: [Self; 10] = [
        Self::Topic,
        Self::Oversized,
        Self::Empty,
        Self::Malformed,
        Self::Schema,
        Self::Invalid,
        Self::SeqRange,
        Self::GatewayMismatch,
        Self::SiteMismatch,
        Self::UnknownGateway,
    ];

    /// The label, snake case.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Topic => "topic",
            Self::Oversized => "oversized",
            Self::Empty => "empty",
            Self::Malformed => "malformed",
            Self::Schema => "schema",
            Self::Invalid => "invalid",
            Self::SeqRange => "seq_range",
            Self::GatewayMismatch => "gateway_mismatch",
            Self::SiteMismatch => "site_mismatch",
            Self::UnknownGateway => "unknown_gateway",
        }
    }
}

/// A refused message: the reason and a human-readable detail (bounded in length).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Why.
    pub reason: RejectReason,
    /// What exactly, for the dead-letter row and the log.
    pub detail: String,
}

/// An accepted message.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// Readings.
    Batch(Batch),
    /// KPI records.
    Kpi(KpiBatch),
    /// A declared gap.
    Gap(Gap),
    /// A gateway's presence.
    Status(Status),
    /// A retained status being cleared (empty payload): nothing to store.
    Cleared,
}

/// What the validator needs to know.
#[derive(Debug, Clone)]
pub struct Rules {
    /// The topic prefix, such as `fivezero/v1`.
    pub prefix: String,
    /// The largest payload accepted, in bytes.
    pub max_payload: usize,
    /// When set, only these gateways are accepted.
    pub allowed_gateways: Option<BTreeSet<String>>,
}

/// The most characters of detail kept in a rejection.
const MAX_DETAIL: usize = 512;

fn reject(reason: RejectReason, detail: impl Into<String>) -> Rejection {
    let mut detail: String = detail.into();
    if let Some((cut, _)) = detail.char_indices().nth(MAX_DETAIL) {
        detail.truncate(cut);
        detail.push('…');
    }
    Rejection { reason, detail }
}

fn wire_rejection(e: &WireError) -> Rejection {
    let reason = match e {
        WireError::Json(_) => RejectReason::Malformed,
        WireError::UnsupportedSchema { .. } => RejectReason::Schema,
        WireError::Invalid { field, .. } if field == "schema" => RejectReason::Schema,
        WireError::Invalid { .. } => RejectReason::Invalid,
    };
    reject(reason, e.to_string())
}

/// The largest sequence number the stores can hold (`BIGINT`).
const MAX_STORED_SEQ: u64 = i64::MAX as u64;

fn check_seq(first_seq: u64, count: u32) -> Result<(), Rejection> {
    match first_seq.checked_add(u64::from(count)) {
        Some(end) if end - 1 <= MAX_STORED_SEQ => Ok(()),
        _ => Err(reject(
            RejectReason::SeqRange,
            format!("sequences {first_seq} + {count} do not fit a signed 64-bit integer"),
        )),
    }
}

fn check_source(
    topic_site: &str,
    topic_gateway: &str,
    site: &str,
    gateway: &str,
) -> Result<(), Rejection> {
    if gateway != topic_gateway {
        return Err(reject(
            RejectReason::GatewayMismatch,
            format!("payload gateway {gateway:?} differs from the topic's {topic_gateway:?}"),
        ));
    }
    if site != topic_site {
        return Err(reject(
            RejectReason::SiteMismatch,
            format!("payload site {site:?} differs from the topic's {topic_site:?}"),
        ));
    }
    Ok(())
}

/// Validates one message received on `topic` at `now_ms`.
///
/// # Errors
/// A [`Rejection`] for every rule in the [module documentation](self).
pub fn validate(
    rules: &Rules,
    topic: &str,
    payload: &[u8],
    now_ms: i64,
) -> Result<Inbound, Rejection> {
    let Some((site, gateway, kind)) = topic::parse(&rules.prefix, topic) else {
        return Err(reject(
            RejectReason::Topic,
            format!(
                "topic {topic:?} is not {}/<site>/<gateway>/<kind>",
                rules.prefix
            ),
        ));
    };
    if let Some(allowed) = &rules.allowed_gateways
        && !allowed.contains(gateway)
    {
        return Err(reject(
            RejectReason::UnknownGateway,
            format!("gateway {gateway:?} is not on the allow-list"),
        ));
    }
    if payload.len() > rules.max_payload {
        return Err(reject(
            RejectReason::Oversized,
            format!(
                "payload is {} bytes, more than the {} allowed",
                payload.len(),
                rules.max_payload
            ),
        ));
    }
    if payload.is_empty() {
        return if kind == TopicKind::Status {
            Ok(Inbound::Cleared)
        } else {
            Err(reject(RejectReason::Empty, "payload is empty"))
        };
    }
    match kind {
        TopicKind::Batches => {
            let b = wire::decode_batch(payload).map_err(|e| wire_rejection(&e))?;
            b.validate(now_ms).map_err(|e| wire_rejection(&e))?;
            check_source(site, gateway, &b.site, &b.gateway)?;
            check_seq(b.first_seq, b.count)?;
            Ok(Inbound::Batch(b))
        }
        TopicKind::Kpi => {
            let b = wire::decode_kpi_batch(payload).map_err(|e| wire_rejection(&e))?;
            b.validate(now_ms).map_err(|e| wire_rejection(&e))?;
            check_source(site, gateway, &b.site, &b.gateway)?;
            check_seq(b.first_seq, b.count)?;
            Ok(Inbound::Kpi(b))
        }
        TopicKind::Gaps => {
            let g = wire::decode_gap(payload).map_err(|e| wire_rejection(&e))?;
            g.validate(now_ms).map_err(|e| wire_rejection(&e))?;
            check_source(site, gateway, &g.site, &g.gateway)?;
            check_seq(g.first_seq, g.count)?;
            Ok(Inbound::Gap(g))
        }
        TopicKind::Status => {
            let s = wire::decode_status(payload).map_err(|e| wire_rejection(&e))?;
            s.validate(now_ms).map_err(|e| wire_rejection(&e))?;
            check_source(site, gateway, &s.site, &s.gateway)?;
            Ok(Inbound::Status(s))
        }
        TopicKind::Ack => Err(reject(
            RejectReason::Topic,
            "the sink writes ack topics; it does not read them",
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fivezero_model::wire::{Epoch, Quality, Reading, SCHEMA_VERSION, Value};

    const NOW: i64 = 1_780_000_000_000;

    fn rules() -> Rules {
        Rules {
            prefix: "fivezero/v1".into(),
            max_payload: 4096,
            allowed_gateways: None,
        }
    }

    fn batch() -> Batch {
        Batch {
            schema: SCHEMA_VERSION,
            gateway: "gw1".into(),
            site: "s".into(),
            epoch: Epoch(7),
            first_seq: 1,
            count: 1,
            readings: vec![Reading {
                ts: NOW,
                device: "m".into(),
                metric: "electricity.import_energy".into(),
                value: Some(Value::Number(1.5)),
                quality: Quality::Good,
                reason: None,
            }],
        }
    }

    const T: &str = "fivezero/v1/s/gw1/batches";

    fn reason(topic: &str, payload: &[u8], rules: &Rules) -> RejectReason {
        validate(rules, topic, payload, NOW).unwrap_err().reason
    }

    #[test]
    fn a_good_batch_is_accepted() {
        let got = validate(&rules(), T, &wire::encode(&batch()), NOW).unwrap();
        assert_eq!(got, Inbound::Batch(batch()));
    }

    #[test]
    fn each_broken_rule_has_its_reason() {
        let r = rules();
        let enc = |b: &Batch| wire::encode(b);
        let full = enc(&batch());
        assert_eq!(
            reason("fivezero/v1/s/gw1/other", &full, &r),
            RejectReason::Topic
        );
        assert_eq!(
            reason(T, &full[..full.len() / 2], &r),
            RejectReason::Malformed
        );
        assert_eq!(reason(T, b"", &r), RejectReason::Empty);
        assert_eq!(reason(T, br#"{"schema":2}"#, &r), RejectReason::Schema);
        let mut b = batch();
        b.count = 0;
        assert_eq!(reason(T, &enc(&b), &r), RejectReason::Invalid);
        let mut b = batch();
        b.readings[0].ts = NOW * 10;
        assert_eq!(reason(T, &enc(&b), &r), RejectReason::Invalid);
        let mut b = batch();
        b.first_seq = u64::MAX;
        assert_eq!(reason(T, &enc(&b), &r), RejectReason::Invalid);
        let mut b = batch();
        b.first_seq = u64::MAX / 2 + 10;
        assert_eq!(reason(T, &enc(&b), &r), RejectReason::SeqRange);
        let mut b = batch();
        b.gateway = "gw2".into();
        assert_eq!(reason(T, &enc(&b), &r), RejectReason::GatewayMismatch);
        let mut b = batch();
        b.site = "other".into();
        assert_eq!(reason(T, &enc(&b), &r), RejectReason::SiteMismatch);
        let big = vec![b' '; 5000];
        assert_eq!(reason(T, &big, &r), RejectReason::Oversized);
        let mut allow = rules();
        allow.allowed_gateways = Some(BTreeSet::from(["gw9".to_owned()]));
        assert_eq!(reason(T, &full, &allow), RejectReason::UnknownGateway);
    }

    #[test]
    fn nan_written_as_a_string_or_null_never_passes_as_a_number() {
        let text = String::from_utf8(wire::encode(&batch()))
            .unwrap()
            .replace("1.5", "NaN");
        assert_eq!(
            reason(T, text.as_bytes(), &rules()),
            RejectReason::Malformed
        );
    }

    #[test]
    fn an_empty_status_payload_is_a_retained_clear() {
        let got = validate(&rules(), "fivezero/v1/s/gw1/status", b"", NOW).unwrap();
        assert_eq!(got, Inbound::Cleared);
    }

    #[test]
    fn deeply_nested_json_is_malformed_not_a_crash() {
        let deep = "[".repeat(100_000);
        let mut r = rules();
        r.max_payload = 1 << 20;
        assert_eq!(reason(T, deep.as_bytes(), &r), RejectReason::Malformed);
    }

    #[test]
    fn long_details_are_cut() {
        let r = reject(RejectReason::Invalid, "x".repeat(10_000));
        assert!(r.detail.chars().count() <= MAX_DETAIL + 1);
    }
}
