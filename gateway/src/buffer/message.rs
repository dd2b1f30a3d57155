//! Assembling `pending` messages: contiguous sequences of one kind and one stream, merged
//! across rows up to the publisher's limits, encoded as the wire JSON. Pure.
//!
//! The payload is exactly what [`wire::encode`] writes for the [`Batch`] (or [`KpiBatch`])
//! with these readings: the header is serde_json's encoding of the message with an empty
//! list, and the items are serde_json's encoding of each reading, joined by commas. This lets
//! the size be known exactly before an item is added, without encoding twice; a unit test
//! and the model test compare it with `wire::encode`.

use fivezero_model::wire::{self, Batch, Epoch, KpiBatch, MAX_BATCH_READINGS, SCHEMA_VERSION};

use super::state::Kind;
use crate::outbox::{Limits, Outgoing};

/// Decimal digits of `n`.
fn digits(mut n: u64) -> usize {
    let mut d = 1;
    while n >= 10 {
        n /= 10;
        d += 1;
    }
    d
}

fn header(
    kind: Kind,
    gateway: &str,
    site: &str,
    epoch: Epoch,
    first_seq: u64,
    count: u32,
) -> Vec<u8> {
    let mut bytes = match kind {
        Kind::Readings => wire::encode(&Batch {
            schema: SCHEMA_VERSION,
            gateway: gateway.to_owned(),
            site: site.to_owned(),
            epoch,
            first_seq,
            count,
            readings: Vec::new(),
        }),
        Kind::Kpi => wire::encode(&KpiBatch {
            schema: SCHEMA_VERSION,
            gateway: gateway.to_owned(),
            site: site.to_owned(),
            epoch,
            first_seq,
            count,
            records: Vec::new(),
        }),
    };
    // Drop the closing `]}` of the empty list and the object.
    bytes.truncate(bytes.len().saturating_sub(2));
    bytes
}

#[derive(Debug)]
struct Open {
    kind: Kind,
    first_seq: u64,
    count: u32,
    items: Vec<u8>,
}

/// Whether [`Builder::push`] took the item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Push {
    /// Taken.
    Taken,
    /// Not taken: the message limit is reached.
    Full,
}

/// Builds the messages of one `pending` call.
#[derive(Debug)]
pub(crate) struct Builder<'a> {
    gateway: &'a str,
    site: &'a str,
    epoch: Epoch,
    messages: usize,
    items_per_message: u32,
    bytes_per_message: usize,
    /// Header length of each kind without the digits of `first_seq` and `count`.
    base: [usize; 2],
    open: Option<Open>,
    done: Vec<Outgoing>,
}

impl<'a> Builder<'a> {
    /// A builder for messages of `epoch` within `limits`.
    pub(crate) fn new(gateway: &'a str, site: &'a str, epoch: Epoch, limits: Limits) -> Self {
        let base = |kind| header(kind, gateway, site, epoch, 0, 0).len() - 2;
        Self {
            gateway,
            site,
            epoch,
            messages: limits.messages,
            items_per_message: limits.items_per_message.min(MAX_BATCH_READINGS),
            bytes_per_message: limits.bytes_per_message,
            base: [base(Kind::Readings), base(Kind::Kpi)],
            open: None,
            done: Vec::new(),
        }
    }

    fn size_with(&self, open: &Open, item: &[u8]) -> usize {
        let base = self.base[usize::from(open.kind == Kind::Kpi)];
        base + digits(open.first_seq)
            + digits(u64::from(open.count) + 1)
            + open.items.len()
            + 1
            + item.len()
            + 2
    }

    /// Whether no further message can be started.
    pub(crate) fn is_full(&self) -> bool {
        self.done.len() >= self.messages || self.items_per_message == 0
    }

    /// Adds the item with sequence `seq` (its JSON encoding). It joins the open message when
    /// it continues it (same kind, next sequence) and fits; otherwise it starts the next
    /// message. A single item larger than `bytes_per_message` still goes alone in a message
    /// (the stream must not stall on it).
    pub(crate) fn push(&mut self, kind: Kind, seq: u64, item: &[u8]) -> Push {
        if let Some(open) = &self.open {
            let continues = open.kind == kind
                && open.first_seq.checked_add(u64::from(open.count)) == Some(seq)
                && open.count < self.items_per_message
                && self.size_with(open, item) <= self.bytes_per_message;
            if continues {
                if let Some(open) = &mut self.open {
                    open.items.push(b',');
                    open.items.extend_from_slice(item);
                    open.count += 1;
                }
                return Push::Taken;
            }
            self.close();
        }
        if self.is_full() {
            return Push::Full;
        }
        self.open = Some(Open {
            kind,
            first_seq: seq,
            count: 1,
            items: item.to_vec(),
        });
        Push::Taken
    }

    fn close(&mut self) {
        if let Some(open) = self.open.take() {
            let mut payload = header(
                open.kind,
                self.gateway,
                self.site,
                self.epoch,
                open.first_seq,
                open.count,
            );
            payload.extend_from_slice(&open.items);
            payload.extend_from_slice(b"]}");
            self.done.push(Outgoing {
                kind: open.kind.topic(),
                epoch: self.epoch,
                first_seq: open.first_seq,
                count: open.count,
                payload,
            });
        }
    }

    /// The messages.
    pub(crate) fn finish(mut self) -> Vec<Outgoing> {
        self.close();
        self.done
    }
}

#[cfg(test)]
mod tests {
    use fivezero_model::wire::{Quality, Reading, Value};

    use super::*;

    fn reading(i: u32) -> Reading {
        Reading {
            ts: 1_700_000_000_000 + i64::from(i),
            device: "dev".into(),
            metric: format!("m{i}"),
            value: Some(Value::Number(f64::from(i) / 3.0)),
            quality: Quality::Good,
            reason: None,
        }
    }

    fn limits(messages: usize, items: u32, bytes: usize) -> Limits {
        Limits {
            messages,
            items_per_message: items,
            bytes_per_message: bytes,
        }
    }

    #[test]
    fn the_payload_is_exactly_what_wire_encode_writes() {
        let readings: Vec<Reading> = (0..12).map(reading).collect();
        let mut b = Builder::new("gw", "site", Epoch(7), limits(10, 5, 1 << 20));
        for (i, r) in readings.iter().enumerate() {
            let json = serde_json::to_vec(r).unwrap_or_default();
            assert_eq!(b.push(Kind::Readings, 98 + i as u64, &json), Push::Taken);
        }
        let out = b.finish();
        assert_eq!(
            out.iter().map(|o| o.count).collect::<Vec<_>>(),
            vec![5, 5, 2]
        );
        for (n, o) in out.iter().enumerate() {
            let batch = Batch {
                schema: SCHEMA_VERSION,
                gateway: "gw".into(),
                site: "site".into(),
                epoch: Epoch(7),
                first_seq: 98 + 5 * n as u64,
                count: o.count,
                readings: readings[5 * n..5 * n + o.count as usize].to_vec(),
            };
            assert_eq!(o.payload, wire::encode(&batch));
            assert!(batch.validate(1_700_000_000_000).is_ok());
        }
    }

    #[test]
    fn messages_never_exceed_the_byte_limit_and_never_join_across_a_hole() {
        let items: Vec<Vec<u8>> = (0..40)
            .map(|i| serde_json::to_vec(&reading(i)).unwrap_or_default())
            .collect();
        let mut b = Builder::new("gw", "site", Epoch(7), limits(100, 1000, 600));
        for (i, item) in items.iter().enumerate() {
            let seq = if i < 20 { i as u64 + 1 } else { i as u64 + 5 };
            assert_eq!(b.push(Kind::Readings, seq, item), Push::Taken);
        }
        let out = b.finish();
        for o in &out {
            assert!(o.payload.len() <= 600, "{}", o.payload.len());
            assert!(o.last_seq() <= 20 || o.first_seq >= 25);
        }
        assert_eq!(out.iter().map(|o| u64::from(o.count)).sum::<u64>(), 40);
    }

    #[test]
    fn kinds_are_never_mixed_and_the_message_limit_holds() {
        let item = serde_json::to_vec(&reading(1)).unwrap_or_default();
        let mut b = Builder::new("gw", "site", Epoch(7), limits(2, 100, 1 << 20));
        assert_eq!(b.push(Kind::Readings, 1, &item), Push::Taken);
        assert_eq!(b.push(Kind::Kpi, 2, b"{}"), Push::Taken);
        assert_eq!(b.push(Kind::Readings, 3, &item), Push::Full);
        let out = b.finish();
        assert_eq!(out.len(), 2);
        assert_eq!(out[1].kind, fivezero_model::topic::TopicKind::Kpi);
    }

    #[test]
    fn zero_limits_give_nothing() {
        let mut b = Builder::new("gw", "site", Epoch(7), limits(0, 100, 100));
        assert_eq!(b.push(Kind::Readings, 1, b"{}"), Push::Full);
        assert!(b.finish().is_empty());
        let mut b = Builder::new("gw", "site", Epoch(7), limits(3, 0, 100));
        assert_eq!(b.push(Kind::Readings, 1, b"{}"), Push::Full);
    }
}
