//! The thin I/O layer: opening a link and issuing one read with a time limit.
//!
//! A link is opened by a [`Connect`]: Modbus TCP ([`TcpConnect`]), RTU frames over TCP to a
//! serial server ([`RtuTcpConnect`]) or a local serial port ([`SerialConnect`]). Tests inject
//! their own (an in-memory `tokio::io::duplex` carrying RTU frames, for instance).
//!
//! [`read`] sends one [`ReadRequest`] under `tokio::time::timeout` and checks the reply
//! against the request with [`check_reply`]: tokio-modbus only `debug_assert`s the number of
//! registers (and its `read_*` helpers would panic on a short reply in a debug build), so the
//! raw `call` is used and the length is checked here. Coils and discrete inputs arrive in
//! whole bytes and are cut to the count asked for.

use std::fmt;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::time::Duration;

use fivezero_profiles::Table;
use fivezero_profiles::plan::ReadRequest;
use tokio::net::TcpStream;
use tokio_modbus::client::{Client, Context};
use tokio_modbus::slave::{Slave, SlaveContext};
use tokio_modbus::{Request, Response};

use super::error::{DeviceException, PollError};
use crate::config::{Parity, SerialSettings};

/// A boxed, sendable future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Opens a link and hands back a tokio-modbus client context on it.
///
/// Each call opens a fresh connection: the poller drops the old context after any exchange
/// that went wrong, so nothing left on the old one can be read as a later answer.
pub trait Connect: Send + Sync + fmt::Debug {
    /// Opens the link.
    fn connect(&self) -> BoxFuture<'_, io::Result<Context>>;
}

/// Modbus TCP (MBAP framing, transaction ids checked by tokio-modbus).
#[derive(Debug, Clone)]
pub struct TcpConnect {
    /// `host:port`.
    pub addr: String,
}

impl Connect for TcpConnect {
    fn connect(&self) -> BoxFuture<'_, io::Result<Context>> {
        Box::pin(async move {
            let stream = TcpStream::connect(self.addr.as_str()).await?;
            stream.set_nodelay(true)?;
            Ok(tokio_modbus::client::tcp::attach(stream))
        })
    }
}

/// RTU frames over a TCP connection to a serial server.
#[derive(Debug, Clone)]
pub struct RtuTcpConnect {
    /// `host:port`.
    pub addr: String,
}

impl Connect for RtuTcpConnect {
    fn connect(&self) -> BoxFuture<'_, io::Result<Context>> {
        Box::pin(async move {
            let stream = TcpStream::connect(self.addr.as_str()).await?;
            stream.set_nodelay(true)?;
            Ok(tokio_modbus::client::rtu::attach(stream))
        })
    }
}

/// A local serial port.
#[derive(Debug, Clone)]
pub struct SerialConnect {
    /// The port, e.g. `/dev/ttyUSB0`.
    pub path: String,
    /// Its settings.
    pub serial: SerialSettings,
}

impl Connect for SerialConnect {
    fn connect(&self) -> BoxFuture<'_, io::Result<Context>> {
        Box::pin(async move {
            use tokio_serial::{SerialPort, SerialPortBuilderExt};
            let s = &self.serial;
            let data_bits = match s.data_bits {
                5 => tokio_serial::DataBits::Five,
                6 => tokio_serial::DataBits::Six,
                7 => tokio_serial::DataBits::Seven,
                _ => tokio_serial::DataBits::Eight,
            };
            let parity = match s.parity {
                Parity::None => tokio_serial::Parity::None,
                Parity::Even => tokio_serial::Parity::Even,
                Parity::Odd => tokio_serial::Parity::Odd,
            };
            let stop_bits = if s.stop_bits == 2 {
                tokio_serial::StopBits::Two
            } else {
                tokio_serial::StopBits::One
            };
            let port = tokio_serial::new(self.path.as_str(), s.baud)
                .data_bits(data_bits)
                .parity(parity)
                .stop_bits(stop_bits)
                .open_native_async()
                .map_err(io::Error::from)?;
            // Whatever a unit sent after we gave up on it is not an answer to anything.
            port.clear(tokio_serial::ClearBuffer::All)
                .map_err(io::Error::from)?;
            Ok(tokio_modbus::client::rtu::attach(port))
        })
    }
}

/// The data of a successful read, already checked against the request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Exactly `count` registers.
    Words(Vec<u16>),
    /// Exactly `count` coils or discrete inputs.
    Bits(Vec<bool>),
}

/// The Modbus request that reads `req`: function 1, 2, 3 or 4 by table.
#[must_use]
pub fn request_for(req: &ReadRequest) -> Request<'static> {
    match req.table {
        Table::Coil => Request::ReadCoils(req.start, req.count),
        Table::Discrete => Request::ReadDiscreteInputs(req.start, req.count),
        Table::Holding => Request::ReadHoldingRegisters(req.start, req.count),
        Table::Input => Request::ReadInputRegisters(req.start, req.count),
    }
}

/// Checks a response against the request it answers: the right kind, and exactly `count`
/// registers (fewer is a [`PollError::ShortReply`], more a [`PollError::LongReply`]), or at
/// least `count` bits, cut to `count`.
///
/// # Errors
/// A short or long reply, or a response of another function.
pub fn check_reply(req: &ReadRequest, response: Response) -> Result<Reply, PollError> {
    let expected = req.count;
    let n = usize::from(expected);
    match (req.table, response) {
        (Table::Holding, Response::ReadHoldingRegisters(words))
        | (Table::Input, Response::ReadInputRegisters(words)) => {
            if words.len() < n {
                Err(PollError::ShortReply {
                    expected,
                    got: words.len(),
                })
            } else if words.len() > n {
                Err(PollError::LongReply {
                    expected,
                    got: words.len(),
                })
            } else {
                Ok(Reply::Words(words))
            }
        }
        (Table::Coil, Response::ReadCoils(mut bits))
        | (Table::Discrete, Response::ReadDiscreteInputs(mut bits)) => {
            if bits.len() < n {
                Err(PollError::ShortReply {
                    expected,
                    got: bits.len(),
                })
            } else {
                bits.truncate(n);
                Ok(Reply::Bits(bits))
            }
        }
        _ => Err(PollError::FunctionCodeMismatch),
    }
}

/// Reads `req` from unit `unit` on `ctx`, giving up after `timeout`.
///
/// # Errors
/// The outer error is a transport or protocol failure (after which the context must be
/// dropped, see [`PollError::disposition`]); the inner one a Modbus exception.
pub async fn read(
    ctx: &mut Context,
    unit: u8,
    req: &ReadRequest,
    timeout: Duration,
) -> Result<Result<Reply, DeviceException>, PollError> {
    ctx.set_slave(Slave(unit));
    match tokio::time::timeout(timeout, ctx.call(request_for(req))).await {
        Err(_) => Err(PollError::Timeout),
        Ok(Err(e)) => Err(PollError::from(e)),
        Ok(Ok(Err(code))) => Ok(Err(DeviceException::from(code))),
        Ok(Ok(Ok(response))) => check_reply(req, response).map(Ok),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(table: Table, count: u16) -> ReadRequest {
        ReadRequest {
            table,
            start: 10,
            count,
            points: vec![0],
        }
    }

    #[test]
    fn the_function_follows_the_table() {
        assert_eq!(request_for(&req(Table::Coil, 3)), Request::ReadCoils(10, 3));
        assert_eq!(
            request_for(&req(Table::Discrete, 3)),
            Request::ReadDiscreteInputs(10, 3)
        );
        assert_eq!(
            request_for(&req(Table::Holding, 3)),
            Request::ReadHoldingRegisters(10, 3)
        );
        assert_eq!(
            request_for(&req(Table::Input, 3)),
            Request::ReadInputRegisters(10, 3)
        );
    }

    #[test]
    fn a_reply_with_fewer_registers_is_a_short_reply_never_data() {
        let r = check_reply(
            &req(Table::Input, 4),
            Response::ReadInputRegisters(vec![1, 2, 3]),
        );
        assert!(matches!(
            r,
            Err(PollError::ShortReply {
                expected: 4,
                got: 3
            })
        ));
    }

    #[test]
    fn a_reply_with_more_registers_is_refused() {
        let r = check_reply(
            &req(Table::Holding, 1),
            Response::ReadHoldingRegisters(vec![1, 2]),
        );
        assert!(matches!(r, Err(PollError::LongReply { .. })));
    }

    #[test]
    fn coils_arrive_in_whole_bytes_and_are_cut_to_the_count() {
        let r = check_reply(&req(Table::Coil, 3), Response::ReadCoils(vec![true; 8]));
        assert_eq!(r.unwrap(), Reply::Bits(vec![true; 3]));
        let short = check_reply(
            &req(Table::Discrete, 9),
            Response::ReadDiscreteInputs(vec![true; 8]),
        );
        assert!(matches!(short, Err(PollError::ShortReply { .. })));
    }

    proptest::proptest! {
        /// A reply of any length is either exactly the count asked for or an error.
        #[test]
        fn a_checked_reply_always_has_exactly_the_count_asked_for(
            count in 1u16..200,
            len in 0usize..260,
            table in 0usize..4,
        ) {
            let table = [Table::Coil, Table::Discrete, Table::Input, Table::Holding][table];
            let response = match table {
                Table::Coil => Response::ReadCoils(vec![true; len]),
                Table::Discrete => Response::ReadDiscreteInputs(vec![false; len]),
                Table::Input => Response::ReadInputRegisters(vec![7; len]),
                Table::Holding => Response::ReadHoldingRegisters(vec![7; len]),
            };
            match check_reply(&req(table, count), response) {
                Ok(Reply::Words(w)) => proptest::prop_assert_eq!(w.len(), usize::from(count)),
                Ok(Reply::Bits(b)) => proptest::prop_assert_eq!(b.len(), usize::from(count)),
                Err(_) => proptest::prop_assert!(
                    len < usize::from(count) || (!table.is_bits() && len > usize::from(count))
                ),
            }
        }
    }

    #[test]
    fn a_reply_of_another_function_is_refused() {
        let r = check_reply(
            &req(Table::Holding, 2),
            Response::ReadInputRegisters(vec![1, 2]),
        );
        assert!(matches!(r, Err(PollError::FunctionCodeMismatch)));
    }
}
