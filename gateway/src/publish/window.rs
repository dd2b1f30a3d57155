//! Windowed commit: which message each PUBACK acknowledges. Pure, synchronous, no I/O.
//!
//! rumqttc cannot say which publish a PUBACK acknowledges (`reference/reliability.md`, B.6
//! item 2). It does report, in the order the requests were handed to it, the packet id each
//! QoS 1 publish was written with (`Event::Outgoing(Outgoing::Publish(pkid))`). So:
//!
//! 1. every QoS 1 publish handed to the client is appended to `queued`, a FIFO ([`Window::send`]);
//! 2. each `Outgoing::Publish(pkid)` pops the front of `queued` and files it under `pkid`
//!    ([`Window::written`]);
//! 3. each PUBACK takes `pkid` out of the map and says what it acknowledged
//!    ([`Window::acked`]). The map is keyed by packet id, so PUBACKs may come in any order.
//!
//! rumqttc keeps the FIFO order even on a packet-id collision: the colliding publish is held
//! (`Outgoing::AwaitAck`), nothing else is sent meanwhile, and its `Outgoing::Publish` comes
//! right after the PUBACK that frees the id. Its other exception, resending its own pending
//! queue after a reconnect, cannot happen: the publisher clears that queue on every
//! disconnect (B.6 item 1).
//!
//! # Invariants
//!
//! - At most [`Window::capacity`] publishes (W) are queued or in flight together.
//! - [`Window::backlog`] is the backlog [`Lane`] of the next `Outbox::pending` call. Its
//!   `after` is the last sequence of the last backlog message handed to the client since the
//!   last (re)connect or rewind (0 before the first). It is not a maximum: when the outbox
//!   moves on to a newer stream (epoch), its sequences start again from 1 and the cursor
//!   follows them. Gaps and status messages do not move it.
//! - A live lane ([`Window::open_live`]) splits one stream at a sequence: messages of that
//!   stream above the split are live ([`Window::live`] reads them), the rest backlog. Which
//!   lane a message belongs to follows from its epoch and sequences, so [`Window::send`]
//!   needs no hint. When the backlog lane has nothing left below the split,
//!   [`Window::merge_live`] hands its place to the backlog lane and closes the live one.
//! - On any disconnect everything queued or in flight is forgotten, the live lane closed
//!   and the cursor goes back to 0: after the reconnect, the outbox (the source of truth, B.6
//!   item 1) is asked again for everything not acknowledged, whether or not the broker kept
//!   a session. Duplicates are expected; the sink deduplicates them.
//! - A PUBACK for a packet id not in the map (one from before a disconnect, or a publish
//!   rumqttc sent on its own) acknowledges nothing.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::num::NonZeroU16;

use fivezero_model::topic::TopicKind;
use fivezero_model::wire::{Epoch, Presence};

use crate::outbox::Lane;

/// A batch or KPI message, as far as the window needs to know it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MessageRef {
    /// `Batches` or `Kpi`.
    pub kind: TopicKind,
    /// The stream's epoch.
    pub epoch: Epoch,
    /// First sequence number.
    pub first_seq: u64,
    /// Sequence numbers covered.
    pub count: u32,
}

impl MessageRef {
    /// The last sequence number covered (`first_seq` when `count` is 0).
    #[must_use]
    pub fn last_seq(&self) -> u64 {
        self.first_seq
            .saturating_add(u64::from(self.count.saturating_sub(1)))
    }
}

/// One QoS 1 publish the window keeps track of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Slot {
    /// Readings or KPI records from the outbox.
    Message(MessageRef),
    /// A declared gap, by its row id in the buffer.
    Gap(i64),
    /// The retained status message.
    Status(Presence),
}

/// What [`Window::send`] learnt about a publish.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Sent {
    /// The message covers sequences handed to the client before (in this or an earlier
    /// connection): it is a republication.
    pub republished: bool,
}

/// Bookkeeping that went wrong; the window stays usable.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum WindowError {
    /// [`Window::send`] with W publishes already queued or in flight.
    #[error("the window of {capacity} publishes is full")]
    Full {
        /// The window's capacity.
        capacity: usize,
    },
    /// rumqttc wrote a publish the window did not hand it (nothing is queued).
    #[error("packet id {pkid} was written but no publish is queued")]
    Unexpected {
        /// The packet id written.
        pkid: u16,
    },
    /// rumqttc wrote a publish with a packet id that is still in flight; the older publish is
    /// forgotten (it is sent again after the next reconnect or rewind).
    #[error("packet id {pkid} was written while still in flight")]
    PkidInUse {
        /// The packet id.
        pkid: u16,
        /// The publish that was in flight under it.
        dropped: Slot,
    },
}

/// The live lane: the sequences of one stream above a split.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Live {
    epoch: Epoch,
    split: u64,
    /// The last sequence handed out on the lane (`split` at first).
    cursor: u64,
}

impl Live {
    fn holds(&self, m: &MessageRef) -> bool {
        m.epoch == self.epoch && m.first_seq > self.split
    }
}

/// The window of publishes between the outbox and the broker's PUBACKs.
#[derive(Debug, Clone)]
pub struct Window {
    /// W as configured.
    limit: usize,
    /// W for the current connection: `limit`, lowered to the broker's Receive Maximum.
    capacity: usize,
    /// Handed to the client, packet id not known yet, oldest first.
    queued: VecDeque<Slot>,
    /// Written with a packet id, waiting for its PUBACK.
    in_flight: BTreeMap<u16, Slot>,
    /// `after` for the next backlog `Outbox::pending`.
    cursor: u64,
    /// The live lane, when one is open.
    live: Option<Live>,
    /// The highest sequence ever handed to the client on the backlog lane, across
    /// connections, with its epoch (the live lane's sequences are all above it).
    high_water: Option<(Epoch, u64)>,
    /// Gap ids queued or in flight (so a gap is not sent twice on one connection).
    gaps: BTreeSet<i64>,
}

impl Window {
    /// An empty window of at most `limit` publishes.
    #[must_use]
    pub fn new(limit: NonZeroU16) -> Self {
        let limit = usize::from(limit.get());
        Self {
            limit,
            capacity: limit,
            queued: VecDeque::new(),
            in_flight: BTreeMap::new(),
            cursor: 0,
            live: None,
            high_water: None,
            gaps: BTreeSet::new(),
        }
    }

    /// W for the current connection.
    #[must_use]
    pub const fn capacity(&self) -> usize {
        self.capacity
    }

    /// Publishes queued or in flight.
    #[must_use]
    pub fn len(&self) -> usize {
        self.queued.len() + self.in_flight.len()
    }

    /// True when nothing is queued or in flight.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// How many more publishes may be handed to the client now.
    #[must_use]
    pub fn room(&self) -> usize {
        self.capacity.saturating_sub(self.len())
    }

    /// The backlog lane's cursor: the last sequence handed out on it.
    #[must_use]
    pub const fn cursor(&self) -> u64 {
        self.cursor
    }

    /// The backlog lane for the next `Outbox::pending` call: after the cursor, up to the
    /// live lane's split when one is open.
    #[must_use]
    pub fn backlog(&self) -> Lane {
        Lane::Backlog {
            after: self.cursor,
            through: self.live.map(|l| (l.epoch, l.split)),
        }
    }

    /// The live lane for the next `Outbox::pending` call, when one is open.
    #[must_use]
    pub fn live(&self) -> Option<Lane> {
        self.live.map(|l| Lane::Live {
            epoch: l.epoch,
            after: l.cursor,
        })
    }

    /// Opens a live lane for the stream of `epoch` above `split` (the sequence committed
    /// when the backlog started to be read); a lane already open stays as it is.
    pub fn open_live(&mut self, epoch: Epoch, split: u64) {
        if self.live.is_none() {
            self.live = Some(Live {
                epoch,
                split,
                cursor: split,
            });
        }
    }

    /// The backlog lane has nothing left below the split: it carries on from where the live
    /// lane stands, and the live lane closes. Nothing is skipped: what the live lane handed
    /// out is finished or in flight.
    pub fn merge_live(&mut self) {
        if let Some(live) = self.live.take() {
            self.cursor = live.cursor;
            if live.cursor > live.split {
                self.high_water = match self.high_water {
                    Some((epoch, high)) if epoch == live.epoch => {
                        Some((epoch, high.max(live.cursor)))
                    }
                    _ => Some((live.epoch, live.cursor)),
                };
            }
        }
    }

    /// Closes the live lane without merging (its stream is no longer the current one): the
    /// backlog lane reads that stream whole.
    pub fn close_live(&mut self) {
        self.live = None;
    }

    /// True when the backlog lane should wait for the sink: a live lane is open, and the
    /// backlog lane's last message, in the live lane's stream, lies more than `ahead`
    /// sequences past `sink`, the sink's watermark of that stream. False without a
    /// watermark, in another stream, or with no live lane (once the lanes merge, new
    /// commits go out whatever the sink does).
    #[must_use]
    pub fn replay_paused(&self, sink: Option<(Epoch, u64)>, ahead: u64) -> bool {
        let (Some(live), Some((sink_epoch, sink)), Some((epoch, _))) =
            (self.live, sink, self.high_water)
        else {
            return false;
        };
        sink_epoch == live.epoch && epoch == live.epoch && self.cursor > sink.saturating_add(ahead)
    }

    /// The epoch of the open live lane.
    #[must_use]
    pub fn live_epoch(&self) -> Option<Epoch> {
        self.live.map(|l| l.epoch)
    }

    /// The highest sequence ever handed to the client on the backlog lane, with its epoch.
    #[must_use]
    pub const fn high_water(&self) -> Option<(Epoch, u64)> {
        self.high_water
    }

    /// True when the gap `id` is queued or in flight on this connection.
    #[must_use]
    pub fn gap_in_flight(&self, id: i64) -> bool {
        self.gaps.contains(&id)
    }

    /// Records a publish handed to the client.
    ///
    /// # Errors
    /// [`WindowError::Full`] when W publishes are already queued or in flight; nothing is
    /// recorded then.
    pub fn send(&mut self, slot: Slot) -> Result<Sent, WindowError> {
        if self.room() == 0 {
            return Err(WindowError::Full {
                capacity: self.capacity,
            });
        }
        let mut sent = Sent { republished: false };
        match slot {
            Slot::Message(m) => {
                let last = m.last_seq();
                match &mut self.live {
                    Some(live) if live.holds(&m) => {
                        sent.republished = last <= live.cursor;
                        live.cursor = live.cursor.max(last);
                    }
                    _ => {
                        match self.high_water {
                            Some((epoch, high)) if epoch == m.epoch => {
                                sent.republished = last <= high;
                                self.high_water = Some((epoch, high.max(last)));
                            }
                            _ => self.high_water = Some((m.epoch, last)),
                        }
                        self.cursor = last;
                    }
                }
            }
            Slot::Gap(id) => {
                self.gaps.insert(id);
            }
            Slot::Status(_) => {}
        }
        self.queued.push_back(slot);
        Ok(sent)
    }

    /// rumqttc wrote the oldest queued publish with packet id `pkid`.
    ///
    /// # Errors
    /// [`WindowError::Unexpected`] when nothing is queued (the event is ignored), and
    /// [`WindowError::PkidInUse`] when `pkid` was still in flight (the new publish replaces
    /// the old one, which is reported).
    pub fn written(&mut self, pkid: u16) -> Result<(), WindowError> {
        let Some(slot) = self.queued.pop_front() else {
            return Err(WindowError::Unexpected { pkid });
        };
        match self.in_flight.insert(pkid, slot) {
            None => Ok(()),
            Some(dropped) => {
                if let Slot::Gap(id) = dropped {
                    self.gaps.remove(&id);
                }
                Err(WindowError::PkidInUse { pkid, dropped })
            }
        }
    }

    /// The broker acknowledged `pkid`: what it acknowledged, or `None` for a packet id the
    /// window does not know.
    pub fn acked(&mut self, pkid: u16) -> Option<Slot> {
        let slot = self.in_flight.remove(&pkid)?;
        if let Slot::Gap(id) = slot {
            self.gaps.remove(&id);
        }
        Some(slot)
    }

    /// The connection dropped: forget everything queued or in flight, close the live lane
    /// and rewind the cursor. Returns how many publishes were forgotten (they are sent again
    /// after the reconnect).
    pub fn disconnected(&mut self) -> usize {
        let dropped = self.len();
        self.queued.clear();
        self.in_flight.clear();
        self.gaps.clear();
        self.rewind();
        dropped
    }

    /// A connection was made. W becomes the configured limit, lowered to the broker's
    /// Receive Maximum when it announced one.
    ///
    /// `session_present` changes nothing: whether or not the broker kept a session, the
    /// publisher has cleared rumqttc's own resend queue, so every unacknowledged message is
    /// asked from the outbox again (cursor 0) and published with fresh packet ids.
    pub fn connected(&mut self, session_present: bool, receive_maximum: Option<u16>) {
        let _ = session_present;
        self.disconnected();
        self.capacity = receive_maximum
            .map_or(self.limit, |max| self.limit.min(usize::from(max)))
            .max(1);
    }

    /// Moves its lane's cursor past a message that is not published (one the broker cannot
    /// take), so the next `pending` call does not return it again; it stays in the outbox.
    pub fn skip(&mut self, m: &MessageRef) {
        match &mut self.live {
            Some(live) if live.holds(m) => live.cursor = live.cursor.max(m.last_seq()),
            _ => self.cursor = m.last_seq(),
        }
    }

    /// Ask the outbox again from the start: the live lane closes and the next `pending` call
    /// reads the backlog with `after = 0`. Publishes in flight stay in flight.
    pub fn rewind(&mut self) {
        self.cursor = 0;
        self.live = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn w(limit: u16) -> Window {
        Window::new(NonZeroU16::new(limit).unwrap())
    }

    const E1: Epoch = Epoch(0x1111);
    const E2: Epoch = Epoch(0x2222);

    fn msg(first_seq: u64, count: u32) -> Slot {
        msg_of(E1, first_seq, count)
    }

    fn msg_of(epoch: Epoch, first_seq: u64, count: u32) -> Slot {
        Slot::Message(MessageRef {
            kind: TopicKind::Batches,
            epoch,
            first_seq,
            count,
        })
    }

    /// Sends `n` messages of 10 sequences each after the cursor; writes them with packet
    /// ids `first_pkid..`.
    fn send_and_write(win: &mut Window, n: u64, first_pkid: u16) -> Vec<Slot> {
        let mut slots = Vec::new();
        for i in 0..n {
            let slot = msg(win.cursor() + 1, 10);
            win.send(slot).unwrap();
            slots.push(slot);
            win.written(first_pkid + u16::try_from(i).unwrap()).unwrap();
        }
        slots
    }

    #[test]
    fn pubacks_map_to_publishes_in_the_order_they_were_written() {
        // Given three messages handed to the client
        let mut win = w(32);
        for first in [1, 11, 21] {
            win.send(msg(first, 10)).unwrap();
        }
        // When rumqttc writes them with packet ids 7, 8, 9
        for pkid in [7, 8, 9] {
            win.written(pkid).unwrap();
        }
        // Then each PUBACK names the message written with its id
        assert_eq!(win.acked(7), Some(msg(1, 10)));
        assert_eq!(win.acked(8), Some(msg(11, 10)));
        assert_eq!(win.acked(9), Some(msg(21, 10)));
        assert!(win.is_empty());
    }

    #[test]
    fn out_of_order_pubacks_acknowledge_exactly_their_own_message() {
        let mut win = w(32);
        let slots = send_and_write(&mut win, 5, 1);
        // PUBACKs arrive 3, 1, 5, 2, 4
        for pkid in [3u16, 1, 5, 2, 4] {
            assert_eq!(win.acked(pkid), Some(slots[usize::from(pkid) - 1]));
        }
        assert!(win.is_empty());
        assert_eq!(
            win.acked(3),
            None,
            "a second PUBACK for one id acknowledges nothing"
        );
    }

    #[test]
    fn a_packet_id_can_be_reused_once_acknowledged() {
        let mut win = w(2);
        win.send(msg(1, 1)).unwrap();
        win.written(1).unwrap();
        assert_eq!(win.acked(1), Some(msg(1, 1)));
        win.send(msg(2, 1)).unwrap();
        win.written(1).unwrap();
        assert_eq!(win.acked(1), Some(msg(2, 1)));
    }

    #[test]
    fn the_window_holds_at_most_w_publishes_queued_or_in_flight() {
        let mut win = w(3);
        win.send(msg(1, 1)).unwrap();
        win.written(1).unwrap();
        win.send(msg(2, 1)).unwrap(); // queued, not written yet
        win.send(Slot::Gap(9)).unwrap();
        assert_eq!(win.room(), 0);
        assert_eq!(win.send(msg(3, 1)), Err(WindowError::Full { capacity: 3 }));
        assert_eq!(win.cursor(), 2, "a refused send records nothing");
        win.written(2).unwrap();
        win.acked(1);
        assert_eq!(win.room(), 1);
    }

    #[test]
    fn the_cursor_follows_messages_but_not_gaps_or_status() {
        let mut win = w(8);
        win.send(Slot::Status(Presence::Online)).unwrap();
        assert_eq!(win.cursor(), 0);
        win.send(msg(1, 100)).unwrap();
        assert_eq!(win.cursor(), 100);
        win.send(Slot::Gap(4)).unwrap();
        assert_eq!(win.cursor(), 100);
        assert!(win.gap_in_flight(4));
        win.send(msg(101, 1)).unwrap();
        assert_eq!(win.cursor(), 101);
    }

    #[test]
    fn the_cursor_follows_the_outbox_into_a_new_epoch() {
        // The outbox drains an old stream, then serves the new one from sequence 1.
        let mut win = w(8);
        win.send(msg_of(E1, 1, 500)).unwrap();
        assert_eq!(win.cursor(), 500);
        let sent = win.send(msg_of(E2, 1, 10)).unwrap();
        assert_eq!(win.cursor(), 10, "not stuck at the old stream's 500");
        assert!(!sent.republished, "a new epoch's first message is new");
        assert_eq!(win.high_water(), Some((E2, 10)));
    }

    #[test]
    fn a_skipped_message_moves_the_cursor_without_taking_room() {
        let mut win = w(1);
        win.skip(&msg_ref(E1, 31, 10));
        assert_eq!(win.cursor(), 40);
        assert_eq!(win.room(), 1);
    }

    fn msg_ref(epoch: Epoch, first_seq: u64, count: u32) -> MessageRef {
        MessageRef {
            kind: TopicKind::Batches,
            epoch,
            first_seq,
            count,
        }
    }

    #[test]
    fn a_live_lane_reads_above_the_split_while_the_backlog_reads_below_it() {
        // Given a backlog of 1,000 sequences when the connection came back
        let mut win = w(8);
        win.open_live(E1, 1000);
        assert_eq!(
            win.backlog(),
            Lane::Backlog {
                after: 0,
                through: Some((E1, 1000))
            }
        );
        assert_eq!(
            win.live(),
            Some(Lane::Live {
                epoch: E1,
                after: 1000
            })
        );
        // When fresh commits and the replay go out interleaved
        let live = win.send(msg(1001, 10)).unwrap();
        let replay = win.send(msg(1, 100)).unwrap();
        win.send(msg(1011, 10)).unwrap();
        win.send(msg(101, 100)).unwrap();
        // Then each lane has its own cursor, and neither counts as a republication
        assert!(!live.republished && !replay.republished);
        assert_eq!(
            win.live(),
            Some(Lane::Live {
                epoch: E1,
                after: 1020
            })
        );
        assert_eq!(win.cursor(), 200);
        assert_eq!(
            win.high_water(),
            Some((E1, 200)),
            "the live lane is not counted"
        );
        // And a second open does not move the split
        win.open_live(E1, 5000);
        assert_eq!(
            win.backlog(),
            Lane::Backlog {
                after: 200,
                through: Some((E1, 1000))
            }
        );
    }

    #[test]
    fn merging_hands_the_live_lanes_place_to_the_backlog() {
        let mut win = w(8);
        win.open_live(E1, 1000);
        win.send(msg(1001, 10)).unwrap();
        win.send(msg(991, 10)).unwrap();
        win.merge_live();
        assert_eq!(win.live(), None);
        assert_eq!(win.backlog(), Lane::backlog(1010));
        assert_eq!(win.high_water(), Some((E1, 1010)));
        // What the live lane sent is a republication when it comes again
        assert!(win.send(msg(1001, 10)).unwrap().republished);
        assert!(!win.send(msg(1011, 10)).unwrap().republished);
    }

    #[test]
    fn merging_an_unused_live_lane_keeps_the_backlogs_place() {
        let mut win = w(8);
        win.open_live(E1, 1000);
        win.send(msg(1, 1000)).unwrap();
        win.merge_live();
        assert_eq!(win.backlog(), Lane::backlog(1000));
        assert_eq!(win.high_water(), Some((E1, 1000)));
    }

    #[test]
    fn the_live_lane_only_holds_its_own_stream() {
        // An old stream's sequences above the split are backlog, not live
        let mut win = w(8);
        win.open_live(E2, 50);
        win.send(msg_of(E1, 51, 100)).unwrap();
        assert_eq!(win.cursor(), 150);
        assert_eq!(
            win.live(),
            Some(Lane::Live {
                epoch: E2,
                after: 50
            })
        );
        win.skip(&msg_ref(E2, 51, 5));
        assert_eq!(
            win.live(),
            Some(Lane::Live {
                epoch: E2,
                after: 55
            })
        );
        assert_eq!(
            win.cursor(),
            150,
            "skipping a live message leaves the backlog alone"
        );
        win.close_live();
        assert_eq!(win.backlog(), Lane::backlog(150));
    }

    #[test]
    fn the_replay_waits_while_it_runs_too_far_ahead_of_the_sink() {
        let mut win = w(8);
        win.open_live(E1, 1000);
        win.send(msg(1, 100)).unwrap();
        let sink = |seq| Some((E1, seq));
        // 100 handed out, the sink at 0: within 100 ahead, not beyond 99
        assert!(!win.replay_paused(sink(0), 100));
        assert!(win.replay_paused(sink(0), 99));
        // The sink catching up releases it
        assert!(!win.replay_paused(sink(1), 99));
        // No watermark seen, or one of another stream: no pacing
        assert!(!win.replay_paused(None, 0));
        assert!(!win.replay_paused(Some((E2, 0)), 0));
        // Once the lanes merge, nothing waits for the sink
        win.merge_live();
        assert!(!win.replay_paused(sink(0), 0));
    }

    #[test]
    fn the_replay_of_an_old_stream_is_not_paced_by_the_current_ones_watermark() {
        let mut win = w(8);
        win.open_live(E2, 10);
        win.send(msg_of(E1, 1, 500)).unwrap();
        assert!(!win.replay_paused(Some((E2, 0)), 0));
    }

    #[test]
    fn a_disconnect_or_a_rewind_closes_the_live_lane() {
        let mut win = w(8);
        win.open_live(E1, 10);
        win.send(msg(11, 5)).unwrap();
        win.disconnected();
        assert_eq!(win.live(), None);
        assert_eq!(win.backlog(), Lane::backlog(0));
        win.open_live(E1, 20);
        win.rewind();
        assert_eq!(win.live(), None);
        assert_eq!(win.live_epoch(), None);
    }

    #[test]
    fn a_gap_is_in_flight_until_its_puback() {
        let mut win = w(8);
        win.send(Slot::Gap(4)).unwrap();
        win.written(10).unwrap();
        assert!(win.gap_in_flight(4));
        assert_eq!(win.acked(10), Some(Slot::Gap(4)));
        assert!(!win.gap_in_flight(4));
    }

    #[test]
    fn a_collision_keeps_the_fifo_order() {
        // rumqttc with inflight 2: ids 1 and 2 in flight, the broker acks 2 first; the next
        // publish draws id 1 again, collides, and is written after PUBACK 1.
        let mut win = w(2);
        let slots = send_and_write(&mut win, 2, 1);
        assert_eq!(win.acked(2), Some(slots[1]));
        let third = msg(21, 10);
        win.send(third).unwrap(); // Outgoing::AwaitAck(1): nothing to do
        assert_eq!(win.acked(1), Some(slots[0]));
        win.written(1).unwrap(); // the held publish goes out after PUBACK 1
        assert_eq!(win.acked(1), Some(third));
    }

    #[test]
    fn a_write_the_window_did_not_queue_is_reported_and_ignored() {
        let mut win = w(4);
        assert_eq!(win.written(5), Err(WindowError::Unexpected { pkid: 5 }));
        assert_eq!(win.acked(5), None);
        assert!(win.is_empty());
    }

    #[test]
    fn a_reused_packet_id_replaces_the_old_publish_and_says_so() {
        let mut win = w(4);
        win.send(msg(1, 1)).unwrap();
        win.written(1).unwrap();
        win.send(msg(2, 1)).unwrap();
        assert_eq!(
            win.written(1),
            Err(WindowError::PkidInUse {
                pkid: 1,
                dropped: msg(1, 1)
            })
        );
        assert_eq!(win.acked(1), Some(msg(2, 1)));
    }

    #[test]
    fn a_disconnect_forgets_the_window_and_rewinds_the_cursor() {
        let mut win = w(8);
        send_and_write(&mut win, 3, 1);
        win.send(msg(31, 10)).unwrap(); // queued, never written
        win.send(Slot::Gap(2)).unwrap();
        assert_eq!(win.disconnected(), 5);
        assert!(win.is_empty());
        assert_eq!(win.cursor(), 0);
        assert!(!win.gap_in_flight(2));
        assert_eq!(
            win.high_water(),
            Some((E1, 40)),
            "the high-water mark survives"
        );
    }

    fn reconnect_republishes_everything(session_present: bool) {
        // Given 4 messages in flight, the second acknowledged
        let mut win = w(8);
        let before = send_and_write(&mut win, 4, 1);
        assert_eq!(win.acked(2), Some(before[1]));
        // When the connection drops and comes back
        win.disconnected();
        win.connected(session_present, None);
        // Then the outbox is asked from the start, stale PUBACKs acknowledge nothing,
        for pkid in [1, 3, 4] {
            assert_eq!(win.acked(pkid), None);
        }
        assert_eq!(win.cursor(), 0);
        // and republished messages are recognised as such
        let again = msg(1, 10);
        assert_eq!(win.send(again).unwrap(), Sent { republished: true });
        // with fresh packet ids that map as usual
        win.written(1).unwrap();
        assert_eq!(win.acked(1), Some(again));
        let fresh = msg(41, 10);
        win.send(fresh).unwrap();
        assert_eq!(win.send(msg(51, 1)).unwrap(), Sent { republished: false });
    }

    #[test]
    fn a_reconnect_without_a_session_republishes_every_unacknowledged_message() {
        reconnect_republishes_everything(false);
    }

    #[test]
    fn a_reconnect_with_a_session_present_republishes_the_same_way() {
        reconnect_republishes_everything(true);
    }

    #[test]
    fn a_write_left_over_from_the_old_connection_cannot_be_mistaken_for_a_new_one() {
        // rumqttc's own resend after a session-present reconnect (which the publisher
        // prevents by clearing `pending`) would show up as a write with nothing queued.
        let mut win = w(8);
        send_and_write(&mut win, 2, 1);
        win.connected(true, None);
        assert_eq!(win.written(1), Err(WindowError::Unexpected { pkid: 1 }));
        assert_eq!(win.acked(1), None);
    }

    #[test]
    fn the_brokers_receive_maximum_lowers_w_for_that_connection_only() {
        let mut win = w(32);
        win.connected(false, Some(10));
        assert_eq!(win.capacity(), 10);
        win.connected(false, Some(0));
        assert_eq!(win.capacity(), 1, "never below one");
        win.connected(false, Some(100));
        assert_eq!(win.capacity(), 32, "never above the configured W");
        win.connected(false, None);
        assert_eq!(win.capacity(), 32);
    }

    #[test]
    fn a_rewind_asks_the_outbox_from_the_start_but_keeps_the_flight() {
        let mut win = w(8);
        let slots = send_and_write(&mut win, 2, 1);
        win.rewind();
        assert_eq!(win.cursor(), 0);
        assert_eq!(win.acked(2), Some(slots[1]));
    }

    proptest::proptest! {
        #[test]
        fn any_ack_order_acknowledges_every_message_exactly_once(
            n in 1usize..40,
            order in proptest::collection::vec(proptest::num::usize::ANY, 40),
        ) {
            let mut win = w(64);
            let slots = send_and_write(&mut win, n as u64, 1);
            // A permutation of 0..n from the random keys.
            let mut idx: Vec<usize> = (0..n).collect();
            idx.sort_by_key(|&i| order[i]);
            let mut got = Vec::new();
            for i in idx {
                let pkid = u16::try_from(i + 1).unwrap();
                got.push(win.acked(pkid).unwrap());
                proptest::prop_assert_eq!(win.acked(pkid), None);
            }
            got.sort_by_key(|s| match s { Slot::Message(m) => m.first_seq, _ => 0 });
            proptest::prop_assert_eq!(got, slots);
            proptest::prop_assert!(win.is_empty());
        }
    }
}
