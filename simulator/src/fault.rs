//! Faults a simulated device can be switched into while the simulator runs.
//!
//! A [`Fault`] is set per device (`SimulatorHandle::set_fault`, the control endpoint's
//! `PUT /devices/{name}/fault`, or `--fault DEVICE=KIND[:ARG]` on the command line) and stays until
//! it is cleared. Exceptions are answered by the Modbus service itself; every other fault is made
//! by the MBAP-aware proxy in front of it (see [`crate::proxy`]), which controls the bytes on the
//! wire. Each fault reproduces one row of the "evil slave" table in `reference/reliability.md`.
//!
//! | spelling (CLI and JSON `kind`) | argument | what the client sees |
//! |---|---|---|
//! | `exception` | `code` (1..=255) | that Modbus exception for every request |
//! | `no_reply` | | nothing; the connection stays open |
//! | `late_reply` | `delay_ms` | the correct reply, after the delay (longer than its timeout) |
//! | `slow` | `delay_ms` | the correct reply, after the delay (shorter than its timeout) |
//! | `wrong_transaction_id` | | a reply whose MBAP transaction id is not the request's |
//! | `wrong_unit_id` | | a reply whose unit id is not the request's |
//! | `wrong_function_code` | | a reply with another function code (3 ↔ 4, 1 ↔ 2) |
//! | `fewer_registers` | | one register (or one byte of bits) fewer than asked, byte count consistent |
//! | `truncated_pdu` | | a PDU one byte shorter than its byte count says, MBAP length consistent |
//! | `garbled` | | a frame whose MBAP protocol id is not 0 |
//! | `zero_length` | | a frame whose MBAP length is 0 |
//! | `huge_length` | | a header announcing 65 535 bytes, a few bytes, then silence |
//! | `sliced` | `gap_ms` | the correct reply, one byte at a time, `gap_ms` apart |
//! | `drop_connection` | | the connection closed (FIN) on the request |
//! | `reset_mid_frame` | | half of the reply, then a TCP reset |

use std::fmt;
use std::str::FromStr;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use thiserror::Error;

/// Longest delay a fault may carry; longer ones are refused as input mistakes.
pub const MAX_DELAY: Duration = Duration::from_secs(3600);

/// A misbehaviour of one simulated device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "FaultJson", into = "FaultJson")]
pub enum Fault {
    /// Answer this exception code to every request (01, 02, 04, 06, 0B ...; never 0).
    Exception(u8),
    /// Swallow the request and never answer; keep the connection open.
    NoReply,
    /// Answer correctly, but only after `delay` (meant to be longer than the client's timeout).
    LateReply {
        /// How long the reply is held back.
        delay: Duration,
    },
    /// Answer correctly after `delay` (meant to be shorter than the client's timeout).
    Slow {
        /// How long the reply is held back.
        delay: Duration,
    },
    /// Answer with a transaction id that is not the request's.
    WrongTransactionId,
    /// Answer with a unit id that is not the request's.
    WrongUnitId,
    /// Answer with another function code than the request's (read holding ↔ read input,
    /// read coils ↔ read discrete inputs).
    WrongFunctionCode,
    /// Answer one register fewer than asked (one byte of bits fewer for bit reads), with the
    /// byte count and MBAP length consistent with what is sent.
    FewerRegisters,
    /// Send a PDU one byte shorter than its byte count says (the MBAP length matches what is
    /// sent), so the byte count exceeds the bytes that follow.
    TruncatedPdu,
    /// Send the reply with an MBAP protocol id that is not 0.
    Garbled,
    /// Send the reply with an MBAP length of 0.
    ZeroLength,
    /// Send a header announcing 65 535 bytes, a few bytes of the reply, then nothing more.
    HugeLength,
    /// Send the correct reply one byte per write, `gap` apart.
    Sliced {
        /// Pause between two bytes.
        gap: Duration,
    },
    /// Close the TCP connection (orderly FIN) when a request for the device arrives.
    DropConnection,
    /// Send the first half of the reply, then reset the TCP connection.
    ResetMidFrame,
}

impl Fault {
    /// The spelling used on the command line and as the JSON `kind`.
    #[must_use]
    pub const fn kind(&self) -> &'static str {
        match self {
            Self::Exception(_) => "exception",
            Self::NoReply => "no_reply",
            Self::LateReply { .. } => "late_reply",
            Self::Slow { .. } => "slow",
            Self::WrongTransactionId => "wrong_transaction_id",
            Self::WrongUnitId => "wrong_unit_id",
            Self::WrongFunctionCode => "wrong_function_code",
            Self::FewerRegisters => "fewer_registers",
            Self::TruncatedPdu => "truncated_pdu",
            Self::Garbled => "garbled",
            Self::ZeroLength => "zero_length",
            Self::HugeLength => "huge_length",
            Self::Sliced { .. } => "sliced",
            Self::DropConnection => "drop_connection",
            Self::ResetMidFrame => "reset_mid_frame",
        }
    }

    /// Every spelling, for help texts and error messages.
    pub const KINDS: [&'static str; 15] = [
        "exception",
        "no_reply",
        "late_reply",
        "slow",
        "wrong_transaction_id",
        "wrong_unit_id",
        "wrong_function_code",
        "fewer_registers",
        "truncated_pdu",
        "garbled",
        "zero_length",
        "huge_length",
        "sliced",
        "drop_connection",
        "reset_mid_frame",
    ];

    /// Builds a fault from its kind and optional argument: an exception code (decimal or `0x`
    /// hex) for `exception`, a duration (`1500ms`, `2s`, or plain milliseconds) for
    /// `late_reply`, `slow` and `sliced`. Dashes and underscores are interchangeable, case is
    /// ignored.
    ///
    /// # Errors
    /// [`FaultError`] for an unknown kind, a missing, superfluous or malformed argument.
    pub fn from_parts(kind: &str, arg: Option<&str>) -> Result<Self, FaultError> {
        let norm = kind.trim().to_ascii_lowercase().replace('-', "_");
        let arg = arg.map(str::trim);
        let needs = |what: &'static str| FaultError::MissingArgument {
            kind: norm.clone(),
            what,
        };
        let fault = match norm.as_str() {
            "exception" => {
                Self::Exception(parse_code(arg.ok_or_else(|| needs("an exception code"))?)?)
            }
            "late_reply" => Self::LateReply {
                delay: parse_delay(arg.ok_or_else(|| needs("a delay such as 1500ms"))?)?,
            },
            "slow" => Self::Slow {
                delay: parse_delay(arg.ok_or_else(|| needs("a delay such as 200ms"))?)?,
            },
            "sliced" => Self::Sliced {
                gap: parse_delay(arg.ok_or_else(|| needs("a gap such as 10ms"))?)?,
            },
            other => {
                let fault = match other {
                    "no_reply" => Self::NoReply,
                    "wrong_transaction_id" => Self::WrongTransactionId,
                    "wrong_unit_id" => Self::WrongUnitId,
                    "wrong_function_code" => Self::WrongFunctionCode,
                    "fewer_registers" => Self::FewerRegisters,
                    "truncated_pdu" => Self::TruncatedPdu,
                    "garbled" => Self::Garbled,
                    "zero_length" => Self::ZeroLength,
                    "huge_length" => Self::HugeLength,
                    "drop_connection" => Self::DropConnection,
                    "reset_mid_frame" => Self::ResetMidFrame,
                    _ => return Err(FaultError::UnknownKind(kind.to_owned())),
                };
                if let Some(a) = arg {
                    return Err(FaultError::UnexpectedArgument {
                        kind: norm,
                        arg: a.to_owned(),
                    });
                }
                fault
            }
        };
        fault.validate()?;
        Ok(fault)
    }

    /// Checks the parameters: an exception code other than 0, delays up to [`MAX_DELAY`].
    ///
    /// # Errors
    /// [`FaultError::BadCode`] or [`FaultError::BadDelay`].
    pub fn validate(&self) -> Result<(), FaultError> {
        match *self {
            Self::Exception(0) => Err(FaultError::BadCode("0".into())),
            Self::LateReply { delay } | Self::Slow { delay } | Self::Sliced { gap: delay }
                if delay > MAX_DELAY =>
            {
                Err(FaultError::BadDelay(format!("{delay:?}")))
            }
            _ => Ok(()),
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exception(code) => write!(f, "exception:{code:#04x}"),
            Self::LateReply { delay } | Self::Slow { delay } | Self::Sliced { gap: delay } => {
                write!(f, "{}:{}ms", self.kind(), delay.as_millis())
            }
            other => f.write_str(other.kind()),
        }
    }
}

/// Parses `KIND[:ARG]`, e.g. `exception:4`, `late_reply:1500ms`, `no_reply`.
impl FromStr for Fault {
    type Err = FaultError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.split_once(':') {
            Some((kind, arg)) => Self::from_parts(kind, Some(arg)),
            None => Self::from_parts(s, None),
        }
    }
}

/// Why a fault description was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum FaultError {
    /// The kind is not one of [`Fault::KINDS`].
    #[error("unknown fault kind {0:?}; known kinds: {kinds}", kinds = Fault::KINDS.join(", "))]
    UnknownKind(String),
    /// The kind needs an argument.
    #[error("fault {kind} needs {what}")]
    MissingArgument {
        /// The fault kind.
        kind: String,
        /// What is missing.
        what: &'static str,
    },
    /// The kind takes no argument.
    #[error("fault {kind} takes no argument, got {arg:?}")]
    UnexpectedArgument {
        /// The fault kind.
        kind: String,
        /// The argument given.
        arg: String,
    },
    /// The exception code is not a number in 1..=255.
    #[error("exception code {0:?} must be a number from 1 to 255 (e.g. 4 or 0x0B)")]
    BadCode(String),
    /// The delay is malformed or longer than [`MAX_DELAY`].
    #[error("delay {0:?} must be a duration up to 1h, e.g. 1500ms or 2s")]
    BadDelay(String),
}

fn parse_code(s: &str) -> Result<u8, FaultError> {
    let bad = || FaultError::BadCode(s.to_owned());
    let code = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(hex) => u8::from_str_radix(hex, 16).map_err(|_| bad())?,
        None => s.parse::<u8>().map_err(|_| bad())?,
    };
    if code == 0 { Err(bad()) } else { Ok(code) }
}

fn parse_delay(s: &str) -> Result<Duration, FaultError> {
    let bad = || FaultError::BadDelay(s.to_owned());
    let delay = match s.parse::<u64>() {
        Ok(ms) => Duration::from_millis(ms),
        Err(_) => humantime::parse_duration(s).map_err(|_| bad())?,
    };
    if delay > MAX_DELAY {
        Err(bad())
    } else {
        Ok(delay)
    }
}

/// The JSON form of a fault: `{"kind":"exception","code":4}`, `{"kind":"late_reply","delay_ms":1500}`,
/// `{"kind":"sliced","gap_ms":10}`, `{"kind":"no_reply"}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct FaultJson {
    kind: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    code: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    delay_ms: Option<u64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    gap_ms: Option<u64>,
}

impl TryFrom<FaultJson> for Fault {
    type Error = FaultError;

    fn try_from(j: FaultJson) -> Result<Self, Self::Error> {
        let norm = j.kind.trim().to_ascii_lowercase().replace('-', "_");
        let arg = match norm.as_str() {
            "exception" => j.code.map(|c| c.to_string()),
            "late_reply" | "slow" => j.delay_ms.map(|d| d.to_string()),
            "sliced" => j.gap_ms.map(|d| d.to_string()),
            _ => None,
        };
        // A field that does not belong to the kind is a mistake worth reporting.
        let stray = match norm.as_str() {
            "exception" => j.delay_ms.or(j.gap_ms).map(|_| "delay_ms/gap_ms"),
            "late_reply" | "slow" => j.code.or(j.gap_ms).map(|_| "code/gap_ms"),
            "sliced" => j.code.or(j.delay_ms).map(|_| "code/delay_ms"),
            _ => j
                .code
                .or(j.delay_ms)
                .or(j.gap_ms)
                .map(|_| "code/delay_ms/gap_ms"),
        };
        if let Some(field) = stray
            && Fault::KINDS.contains(&norm.as_str())
        {
            return Err(FaultError::UnexpectedArgument {
                kind: norm,
                arg: field.to_owned(),
            });
        }
        Fault::from_parts(&j.kind, arg.as_deref())
    }
}

impl From<Fault> for FaultJson {
    fn from(f: Fault) -> Self {
        let ms = |d: Duration| Some(u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut j = Self {
            kind: f.kind().to_owned(),
            code: None,
            delay_ms: None,
            gap_ms: None,
        };
        match f {
            Fault::Exception(code) => j.code = Some(u64::from(code)),
            Fault::LateReply { delay } | Fault::Slow { delay } => j.delay_ms = ms(delay),
            Fault::Sliced { gap } => j.gap_ms = ms(gap),
            _ => {}
        }
        j
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spellings_parse_and_print_back() {
        for s in [
            "exception:0x04",
            "late_reply:1500ms",
            "slow:200ms",
            "sliced:10ms",
            "no_reply",
            "garbled",
            "drop_connection",
        ] {
            let f: Fault = s.parse().unwrap();
            assert_eq!(f.to_string().parse::<Fault>().unwrap(), f);
        }
        assert_eq!(
            "Exception:11".parse::<Fault>().unwrap(),
            Fault::Exception(0x0B)
        );
        assert_eq!("no-reply".parse::<Fault>().unwrap(), Fault::NoReply);
        assert_eq!(
            "late_reply:2s".parse::<Fault>().unwrap(),
            Fault::LateReply {
                delay: Duration::from_secs(2)
            }
        );
    }

    #[test]
    fn bad_spellings_are_refused() {
        for s in [
            "exception",
            "exception:0",
            "exception:300",
            "late_reply",
            "late_reply:forever",
            "late_reply:2h",
            "no_reply:3",
            "bogus",
            "",
        ] {
            assert!(s.parse::<Fault>().is_err(), "{s}");
        }
    }

    #[test]
    fn json_round_trips_and_refuses_mistakes() {
        let f: Fault = serde_json::from_str(r#"{"kind":"exception","code":4}"#).unwrap();
        assert_eq!(f, Fault::Exception(4));
        let f: Fault = serde_json::from_str(r#"{"kind":"late_reply","delay_ms":1500}"#).unwrap();
        assert_eq!(
            f,
            Fault::LateReply {
                delay: Duration::from_millis(1500)
            }
        );
        assert_eq!(
            serde_json::to_string(&f).unwrap(),
            r#"{"kind":"late_reply","delay_ms":1500}"#
        );
        for bad in [
            r#"{"kind":"exception"}"#,
            r#"{"kind":"exception","code":0}"#,
            r#"{"kind":"exception","code":256}"#,
            r#"{"kind":"no_reply","code":4}"#,
            r#"{"kind":"late_reply","code":4}"#,
            r#"{"kind":"nope"}"#,
            r#"{"kind":"no_reply","extra":1}"#,
            r#"{"code":4}"#,
        ] {
            assert!(serde_json::from_str::<Fault>(bad).is_err(), "{bad}");
        }
    }
}
