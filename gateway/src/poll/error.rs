//! What can go wrong with one Modbus request, and what the poller does about each.
//!
//! Device exceptions (the device answered, but with an exception code) are kept apart from
//! transport and protocol errors, as tokio-modbus does: a request ends as
//! `Result<Result<Reply, DeviceException>, PollError>`. Both say what to do through
//! [`Disposition`], so the poller never guesses:
//!
//! | what happened | disposition | the request's points | afterwards |
//! |---|---|---|---|
//! | exception 01, 02, 03 (illegal function, address, value) | [`Disposition::Misconfigured`] | error, `exception 02 illegal data address` | the block is skipped (`misconfigured block`) and tried again every `backoff_max`; warned once; the rest of the device polls on |
//! | exception 04 (device failure), 08, any other code | [`Disposition::RetryNextCycle`] | error, `exception 04 server device failure` | tried again next cycle |
//! | exception 05, 06 (acknowledge, busy) | [`Disposition::RetryAfter`] 100 ms | error only if the one retry within the cycle fails too | |
//! | exception 0A, 0B (gateway path, target) | [`Disposition::UnitOffline`] | error; the unit's cycle ends | backoff for that unit only; the link stays up |
//! | timeout, short or long reply, header or function-code mismatch, invalid frame | [`Disposition::Reconnect`] | error (`timeout`, `short reply`, ...); the unit's cycle ends | the link's context is dropped, so a late reply can never be taken for the answer to a later request; backoff for that unit; other units on the link reconnect at once |
//! | transport error (reset, EOF), connect failure or timeout | [`Disposition::LinkDown`] | error `disconnected`; every unit's cycle on the link ends | the context is dropped; backoff for the link |

use std::fmt;
use std::io;
use std::time::Duration;

use tokio_modbus::{ExceptionCode, ProtocolError};

/// How long to wait before the one retry of a request answered with 05 or 06.
pub const BUSY_RETRY: Duration = Duration::from_millis(100);

/// What the poller does after a failed request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Disposition {
    /// The block cannot be read as configured: skip it, try again every `backoff_max`.
    Misconfigured,
    /// The device could not serve it now: try again next cycle; the link stays up.
    RetryNextCycle,
    /// Try once more after this long, within the same cycle.
    RetryAfter(Duration),
    /// The unit does not answer (through a gateway): back off this unit; the link stays up.
    UnitOffline,
    /// The exchange went wrong: drop the link's context (reopened at the next request) and
    /// back off this unit.
    Reconnect,
    /// The link itself failed: drop the context and back off the whole link.
    LinkDown,
}

/// A Modbus exception reply.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceException(pub u8);

impl DeviceException {
    /// The name the Modbus specification gives the code.
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self.0 {
            0x01 => "illegal function",
            0x02 => "illegal data address",
            0x03 => "illegal data value",
            0x04 => "server device failure",
            0x05 => "acknowledge",
            0x06 => "server device busy",
            0x08 => "memory parity error",
            0x0A => "gateway path unavailable",
            0x0B => "gateway target device failed to respond",
            _ => "unknown exception",
        }
    }

    /// What to do about it.
    #[must_use]
    pub const fn disposition(self) -> Disposition {
        match self.0 {
            0x01..=0x03 => Disposition::Misconfigured,
            0x05 | 0x06 => Disposition::RetryAfter(BUSY_RETRY),
            0x0A | 0x0B => Disposition::UnitOffline,
            _ => Disposition::RetryNextCycle,
        }
    }

    /// The reading's reason: `exception 02 illegal data address`.
    #[must_use]
    pub fn reason(self) -> String {
        format!("exception {:02X} {}", self.0, self.name())
    }
}

impl fmt::Display for DeviceException {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason())
    }
}

impl From<ExceptionCode> for DeviceException {
    fn from(code: ExceptionCode) -> Self {
        Self(u8::from(code))
    }
}

/// A request that got no usable answer.
#[derive(Debug, thiserror::Error)]
pub enum PollError {
    /// No reply within the device's timeout.
    #[error("no reply within the timeout")]
    Timeout,
    /// The link did not open within `connect_timeout`.
    #[error("connecting took longer than the connect timeout")]
    ConnectTimeout,
    /// The link could not be opened.
    #[error("cannot connect: {0}")]
    Connect(io::Error),
    /// Fewer registers or bits than asked for (tokio-modbus only debug-asserts this).
    #[error("short reply: {got} of {expected} registers or bits")]
    ShortReply {
        /// Asked for.
        expected: u16,
        /// Received.
        got: usize,
    },
    /// More registers than asked for.
    #[error("long reply: {got} registers for {expected} asked")]
    LongReply {
        /// Asked for.
        expected: u16,
        /// Received.
        got: usize,
    },
    /// The reply's transaction id or unit id is not the request's.
    #[error("reply header does not match the request: {0}")]
    HeaderMismatch(String),
    /// The reply is for another function code, or of an unexpected shape.
    #[error("reply function code does not match the request")]
    FunctionCodeMismatch,
    /// The bytes received are not a valid frame (bad CRC, bad length, bad protocol id).
    #[error("invalid frame: {0}")]
    InvalidFrame(io::Error),
    /// The connection failed (reset, closed, broken pipe).
    #[error("transport error: {0}")]
    Transport(io::Error),
}

impl PollError {
    /// What to do about it.
    #[must_use]
    pub const fn disposition(&self) -> Disposition {
        match self {
            Self::Timeout
            | Self::ShortReply { .. }
            | Self::LongReply { .. }
            | Self::HeaderMismatch(_)
            | Self::FunctionCodeMismatch
            | Self::InvalidFrame(_) => Disposition::Reconnect,
            Self::ConnectTimeout | Self::Connect(_) | Self::Transport(_) => Disposition::LinkDown,
        }
    }

    /// The reading's reason: short and stable, for counting and grouping (the log line has
    /// the details).
    #[must_use]
    pub const fn reason(&self) -> &'static str {
        match self {
            Self::Timeout => "timeout",
            Self::ShortReply { .. } => "short reply",
            Self::LongReply { .. } => "long reply",
            Self::HeaderMismatch(_) => "header mismatch",
            Self::FunctionCodeMismatch => "function code mismatch",
            Self::InvalidFrame(_) => "invalid frame",
            Self::ConnectTimeout | Self::Connect(_) | Self::Transport(_) => "disconnected",
        }
    }
}

impl From<tokio_modbus::Error> for PollError {
    fn from(e: tokio_modbus::Error) -> Self {
        match e {
            tokio_modbus::Error::Protocol(ProtocolError::HeaderMismatch { message, .. }) => {
                Self::HeaderMismatch(message)
            }
            tokio_modbus::Error::Protocol(ProtocolError::FunctionCodeMismatch { .. }) => {
                Self::FunctionCodeMismatch
            }
            tokio_modbus::Error::Transport(io) if io.kind() == io::ErrorKind::InvalidData => {
                Self::InvalidFrame(io)
            }
            tokio_modbus::Error::Transport(io) => Self::Transport(io),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_class_exceptions_mark_the_block_misconfigured() {
        for code in [1, 2, 3] {
            assert_eq!(
                DeviceException(code).disposition(),
                Disposition::Misconfigured
            );
        }
    }

    #[test]
    fn busy_and_acknowledge_retry_once_after_100_ms() {
        for code in [5, 6] {
            assert_eq!(
                DeviceException(code).disposition(),
                Disposition::RetryAfter(Duration::from_millis(100))
            );
        }
    }

    #[test]
    fn gateway_exceptions_take_the_unit_offline_and_others_retry_next_cycle() {
        assert_eq!(
            DeviceException(0x0A).disposition(),
            Disposition::UnitOffline
        );
        assert_eq!(
            DeviceException(0x0B).disposition(),
            Disposition::UnitOffline
        );
        for code in [4, 8, 0x0C, 0x7F, 0xFF] {
            assert_eq!(
                DeviceException(code).disposition(),
                Disposition::RetryNextCycle
            );
        }
    }

    #[test]
    fn exception_reasons_name_the_code_in_hex_and_words() {
        assert_eq!(
            DeviceException(2).reason(),
            "exception 02 illegal data address"
        );
        assert_eq!(
            DeviceException(0x0B).reason(),
            "exception 0B gateway target device failed to respond"
        );
    }

    #[test]
    fn exchange_errors_reconnect_and_link_errors_back_off_the_link() {
        assert_eq!(PollError::Timeout.disposition(), Disposition::Reconnect);
        assert_eq!(
            PollError::ShortReply {
                expected: 2,
                got: 1
            }
            .disposition(),
            Disposition::Reconnect
        );
        let reset = io::Error::from(io::ErrorKind::ConnectionReset);
        assert_eq!(
            PollError::from(tokio_modbus::Error::Transport(reset)).disposition(),
            Disposition::LinkDown
        );
        let bad = io::Error::new(io::ErrorKind::InvalidData, "crc");
        assert!(matches!(
            PollError::from(tokio_modbus::Error::Transport(bad)),
            PollError::InvalidFrame(_)
        ));
    }
}
