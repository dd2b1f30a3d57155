//! The seam between the buffer and the publisher.
//!
//! The buffer (SQLite) is the source of truth for what has been committed and what has been
//! acknowledged; the publisher only moves messages from it to the broker and acknowledgements
//! back. It talks to the buffer through [`Outbox`], so its logic is tested with an in-memory
//! outbox and runs on the SQLite one.
//!
//! Contract (the delivery rules of the wire contract, G1–G8 of the reliability reference):
//! - [`Outbox::pending`] returns committed, not-yet-acknowledged messages in sequence order,
//!   each a ready-to-publish wire payload covering a contiguous sequence range of one kind.
//!   Messages never straddle a declared gap. It reads one of two [`Lane`]s: the backlog,
//!   oldest first, or the live tail of one stream, so that after an outage fresh readings go
//!   out beside the replay instead of behind it.
//! - [`Outbox::broker_acked`] records the broker's PUBACK of one message. In `broker_ack` mode
//!   that is the end of the rows; in `sink_ack` mode (the default) the rows stay until
//!   [`Outbox::sink_acked`] passes them.
//! - [`Outbox::sink_acked`] records the sink's watermark for a stream: every sequence up to and
//!   including `seq` of `epoch` is stored at the sink (or declared as a gap). It never moves
//!   backwards; an older or foreign epoch is ignored.
//! - Declared gaps (ranges evicted under the disk budget) are published once each from
//!   [`Outbox::pending_gaps`] and confirmed with [`Outbox::gap_published`].
//! - Nothing acknowledged is ever returned by `pending` again; nothing unacknowledged is ever
//!   deleted except by declared eviction.

use std::future::Future;

use fivezero_model::topic::TopicKind;
use fivezero_model::wire::{BufferState, Epoch};
use thiserror::Error;
use tokio::sync::watch;

/// One message ready for the broker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Outgoing {
    /// Which topic it goes to: [`TopicKind::Batches`] or [`TopicKind::Kpi`].
    pub kind: TopicKind,
    /// The stream's epoch.
    pub epoch: Epoch,
    /// First sequence number in the message.
    pub first_seq: u64,
    /// Number of sequence numbers (readings or KPI records) it covers.
    pub count: u32,
    /// The encoded wire message (`wire::Batch` or `wire::KpiBatch`, JSON).
    pub payload: Vec<u8>,
}

impl Outgoing {
    /// The last sequence number in the message.
    #[must_use]
    pub fn last_seq(&self) -> u64 {
        self.first_seq + u64::from(self.count) - 1
    }
}

/// A declared gap waiting to be published.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutgoingGap {
    /// Row id of the gap in the buffer, for [`Outbox::gap_published`].
    pub id: i64,
    /// The encoded `wire::Gap` (JSON).
    pub payload: Vec<u8>,
}

/// Bounds on one call to [`Outbox::pending`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// At most this many messages.
    pub messages: usize,
    /// At most this many readings or records in one message.
    pub items_per_message: u32,
    /// At most this many bytes of payload in one message (the broker's maximum packet size
    /// less the topic and header).
    pub bytes_per_message: usize,
}

/// Where an [`Outbox::pending`] call reads.
///
/// After an outage the publisher splits the current stream at the sequence committed when
/// the connection came back: the backlog lane replays everything up to the split, oldest
/// first, while the live lane publishes what is committed after it, so a fresh reading
/// reaches the sink in seconds even behind an hour of backlog. The sink's watermark is a
/// contiguous prefix whatever the arrival order, so it only passes the split once the
/// replay has filled everything below it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    /// Every stream, oldest first, from the first unfinished sequence above `after` of the
    /// stream served last (from the start when the stream served changes). In the stream of
    /// epoch `through.0`, nothing above sequence `through.1` (the live lane has those).
    Backlog {
        /// The last sequence already handed out on this lane (0: from the start).
        after: u64,
        /// The live lane's split, when one is open.
        through: Option<(Epoch, u64)>,
    },
    /// The stream of `epoch` only, above `after`; nothing when the buffer holds no such
    /// stream. Reading it does not move the backlog lane.
    Live {
        /// The stream's epoch.
        epoch: Epoch,
        /// The last sequence already handed out on this lane (the split at first).
        after: u64,
    },
}

impl Lane {
    /// The backlog lane without a split, from after `after`.
    #[must_use]
    pub const fn backlog(after: u64) -> Self {
        Self::Backlog {
            after,
            through: None,
        }
    }
}

/// Why an outbox operation failed.
#[derive(Debug, Error)]
pub enum OutboxError {
    /// The database failed; the operation may succeed later.
    #[error("buffer database: {0}")]
    Storage(String),
    /// The buffer was closed (shutdown).
    #[error("buffer is closed")]
    Closed,
}

/// What the publisher needs from the buffer.
pub trait Outbox: Send + Sync + 'static {
    /// Committed messages not yet finished on `lane`, oldest first.
    fn pending(
        &self,
        lane: Lane,
        limits: Limits,
    ) -> impl Future<Output = Result<Vec<Outgoing>, OutboxError>> + Send;

    /// The broker acknowledged the message of stream `epoch` covering
    /// `first_seq..first_seq + count`.
    fn broker_acked(
        &self,
        epoch: Epoch,
        first_seq: u64,
        count: u32,
    ) -> impl Future<Output = Result<(), OutboxError>> + Send;

    /// Hands out again, from the next [`Outbox::pending`] on, every message the broker
    /// acknowledged but the sink's watermark has not passed (`sink_ack` mode; a no-op in
    /// `broker_ack` mode). The publisher calls it after every reconnect and when the sink's
    /// watermark stalls: a broker may drop what it acknowledged (queue limits, restarts
    /// without persistence), and only the sink's watermark proves a message stored.
    fn replay_unconfirmed(&self) -> impl Future<Output = Result<(), OutboxError>> + Send;

    /// The sink's watermark for a stream.
    fn sink_acked(
        &self,
        epoch: Epoch,
        seq: u64,
    ) -> impl Future<Output = Result<(), OutboxError>> + Send;

    /// Declared gaps not yet published.
    fn pending_gaps(&self) -> impl Future<Output = Result<Vec<OutgoingGap>, OutboxError>> + Send;

    /// The broker acknowledged a gap notice.
    fn gap_published(&self, id: i64) -> impl Future<Output = Result<(), OutboxError>> + Send;

    /// The current epoch of the stream this gateway writes.
    fn epoch(&self) -> Epoch;

    /// The buffer's figures, for the retained `online` status message.
    fn state(&self) -> BufferState;

    /// Highest committed sequence number; changes whenever a commit lands (or a gap is
    /// declared), so the publisher wakes without polling.
    fn committed(&self) -> watch::Receiver<u64>;
}
