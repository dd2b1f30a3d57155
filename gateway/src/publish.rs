//! The MQTT publisher: moves committed messages from the buffer to the broker, and the
//! broker's and the sink's acknowledgements back.
//!
//! # Structure
//!
//! ```text
//!            committed() watch ──wakes──┐
//! Outbox ──pending(lane, limits)───▶ Publisher ──QoS 1 publish──▶ rumqttc ──▶ broker
//!    ▲                                  │  ▲                          │
//!    ├──broker_acked(first, count)──────┘  └──Written(pkid), PubAck───┘ (driver task)
//!    └──sink_acked(epoch, seq)◀── retained …/ack (AckWatermark), subscribed QoS 1
//! ```
//!
//! The publisher only talks to the buffer through [`Outbox`]; it never blocks appends (it
//! only reads what is committed and records acknowledgements). Every decision is made by a
//! pure, synchronous module tested without sockets; the task only moves data between them:
//!
//! | module | what it decides |
//! |---|---|
//! | [`window`] | which message each PUBACK acknowledges; what is in flight; where the next outbox read starts |
//! | [`rate`] | how fast messages go out (the replay rate limit) |
//! | [`stall`] | when to republish because the sink's watermark is stuck (`retain_until = "sink_ack"`) |
//! | [`error`](mod@error) | what each failure means ([`Disposition`]) |
//! | [`config`](mod@config) | settings, secrets and TLS files, read once at startup |
//! | [`stats`] | the counters ([`PublishStats`]) |
//! | `link` | the thin rumqttc layer: one enum over MQTT 5 and 3.1.1, the driver owning the event loop |
//! | `run` | the task that ties them together |
//!
//! # Delivery (the wire contract; `reference/reliability.md` B.6, B.7)
//!
//! - **Windowed commit.** Up to W messages (QoS 1, default 32, at most the broker's Receive
//!   Maximum) are in flight, oldest first from `Outbox::pending`. PUBACKs are matched to
//!   messages through the packet ids rumqttc reports in request order
//!   (`Outgoing::Publish(pkid)`), and recorded with [`Outbox::broker_acked`], in any order.
//! - **Reconnects.** On any disconnect the window is dropped, rumqttc's own resend queue is
//!   cleared (so rumqttc never resends on its own), and after the reconnect everything not
//!   acknowledged is read from the outbox again and republished. The outbox is the source of
//!   truth; duplicates are expected and the sink deduplicates them. Reconnects wait an
//!   exponential backoff with full jitter (0.5 s to 30 s), reset once a connection has lived
//!   10 s, so a restarted broker is not stormed by its gateways.
//! - **End to end.** The publisher subscribes to its retained `…/ack` topic and hands every
//!   stream's watermark to [`Outbox::sink_acked`]; a malformed payload is counted and logged,
//!   never fatal. With `retain_until = "sink_ack"` (the default) a watermark stuck behind the
//!   broker's acknowledgements makes the publisher read the outbox from the start again
//!   (after 2 min, doubling to 30 min), which republishes what the broker dropped.
//! - **Gaps.** Declared gaps from [`Outbox::pending_gaps`] go to `…/gaps` (QoS 1) and are
//!   confirmed with [`Outbox::gap_published`] on their PUBACK.
//! - **Presence.** The last will is a retained minimal `offline` [`Status`] on `…/status`;
//!   after every connect the publisher publishes a retained `online` status (version, epoch,
//!   profiles, buffer state); a clean stop publishes `offline` retained, waits for its PUBACK
//!   and disconnects (so the broker discards the will).
//! - **Replay.** After an outage the backlog goes out oldest first at `replay_rate` messages
//!   a second (a token bucket) while fresh commits keep landing: the outbox's `committed()`
//!   watch wakes the publisher, which never polls on a timer.
//! - **Live lane.** Every (re)connect and rewind splits the current stream at its last
//!   commit ([`Lane`](crate::outbox::Lane)): what is committed after the split goes out first,
//!   as it lands, and the backlog up to the split takes the window's and the rate's rest. So
//!   after an hour's outage a fresh reading reaches the sink in seconds, not after the
//!   replay; the sink's watermark, a contiguous prefix, passes the split once the replay has
//!   filled everything below it. When the backlog lane has nothing left below the split the
//!   two lanes merge.
//! - **Limits.** `bytes_per_message` is lowered so a message fits the broker's Maximum Packet
//!   Size (MQTT 5 CONNACK); a message that still does not fit is left in the buffer, counted
//!   and logged as an error rather than sent (which would kill the connection).
//!
//! # Logs
//!
//! WARN means nothing is lost (the broker is down: readings wait in the buffer); ERROR means
//! an operator must act (credentials or certificates refused, a message too large, an ACL
//! refusing a publish). Repeated lines are limited to one per kind every 10 s, with the count
//! held back. The password is never logged.
//!
//! [`Status`]: fivezero_model::wire::Status

pub mod config;
pub mod error;
mod link;
pub mod rate;
mod run;
pub mod stall;
pub mod stats;
mod throttle;
pub mod window;

use std::future::Future;

pub use config::{
    DEFAULT_BYTES_PER_MESSAGE, DEFAULT_ITEMS_PER_MESSAGE, DEFAULT_REPLAY_RATE, DEFAULT_WINDOW,
    PASSWORD_ENV, PublisherConfig, RetainUntil, Secret, TlsSettings,
};
pub use error::{Disposition, PublishError};
pub use stats::{PublishStats, StatsSnapshot};

use crate::outbox::Outbox;

/// The MQTT publisher of one gateway; see the [module documentation](self).
#[derive(Debug)]
pub struct Publisher<O> {
    config: PublisherConfig,
    outbox: O,
    stats: PublishStats,
}

impl<O: Outbox> Publisher<O> {
    /// A publisher moving messages from `outbox` to the broker of `config`.
    #[must_use]
    pub fn new(config: PublisherConfig, outbox: O) -> Self {
        Self {
            config,
            outbox,
            stats: PublishStats::default(),
        }
    }

    /// A handle on the counters, readable while [`Publisher::run`] runs.
    #[must_use]
    pub fn stats(&self) -> PublishStats {
        self.stats.clone()
    }

    /// Runs until `shutdown` completes, then stops cleanly: publishes the retained `offline`
    /// status, waits for its PUBACK (at most `shutdown_timeout`) and disconnects. This task is
    /// the only owner of the rumqttc event loop; dropping its future drops the connection
    /// without a DISCONNECT, so the broker publishes the will.
    ///
    /// Connection failures are never returned: they are logged and retried with backoff.
    ///
    /// # Errors
    /// [`PublishError::Outbox`] with `OutboxError::Closed` when the buffer closed (the
    /// publisher stops cleanly first).
    pub async fn run<S>(self, shutdown: S) -> Result<(), PublishError>
    where
        S: Future<Output = ()> + Send,
    {
        run::run(&self.config, &self.outbox, &self.stats, shutdown).await
    }
}
