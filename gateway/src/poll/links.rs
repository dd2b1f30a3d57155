//! Which devices share a physical link, and how each link is opened.
//!
//! - Every `tcp` device gets a link (a connection) of its own, even when several devices
//!   name the same `host:port`: a Modbus TCP server answers them independently, and a
//!   timeout on one never drops another's connection.
//! - The devices of one `rtu_tcp` address share one connection to the serial server, and
//!   the devices of one `rtu` port share the port: one task serialises their requests.
//!
//! A link's inter-frame delay is the silence kept between frames: on a serial port the
//! configured `poll.inter_frame_delay` or 3.5 character times at its settings; behind a
//! serial server the configured value or none (the server keeps the bus timing); none on
//! Modbus TCP.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use super::transport::{Connect, RtuTcpConnect, SerialConnect, TcpConnect};
use crate::config::{Config, SerialSettings, Transport, inter_frame_delay};

/// A physical link.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum LinkAddr {
    /// A Modbus TCP connection (one device).
    Tcp {
        /// `host:port`.
        addr: String,
    },
    /// RTU frames over TCP to a serial server.
    RtuTcp {
        /// `host:port`.
        addr: String,
    },
    /// A local serial port.
    Serial {
        /// The port.
        path: String,
        /// Its settings.
        serial: SerialSettings,
    },
}

impl fmt::Display for LinkAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Tcp { addr } => write!(f, "tcp {addr}"),
            Self::RtuTcp { addr } => write!(f, "rtu_tcp {addr}"),
            Self::Serial { path, serial } => write!(f, "rtu {path} {serial}"),
        }
    }
}

/// A link and the devices polled over it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkPlan {
    /// The link.
    pub addr: LinkAddr,
    /// Indices into `Config::devices`, in file order.
    pub devices: Vec<usize>,
    /// Silence between frames.
    pub inter_frame_delay: Duration,
}

/// The links of a configuration, in the order their first device appears in the file.
#[must_use]
pub fn links(config: &Config) -> Vec<LinkPlan> {
    let mut out: Vec<LinkPlan> = Vec::new();
    for (i, d) in config.devices.iter().enumerate() {
        let addr = match &d.transport {
            Transport::Tcp { addr } => LinkAddr::Tcp { addr: addr.clone() },
            Transport::RtuTcp { addr } => LinkAddr::RtuTcp { addr: addr.clone() },
            Transport::Rtu { path, serial } => LinkAddr::Serial {
                path: path.clone(),
                serial: *serial,
            },
        };
        let shared = !matches!(addr, LinkAddr::Tcp { .. });
        let existing = out.iter_mut().find(|l| {
            shared
                && match (&l.addr, &addr) {
                    (LinkAddr::Serial { path: a, .. }, LinkAddr::Serial { path: b, .. }) => a == b,
                    (a, b) => a == b,
                }
        });
        if let Some(l) = existing {
            l.devices.push(i);
            continue;
        }
        let inter_frame_delay = match &addr {
            LinkAddr::Tcp { .. } => Duration::ZERO,
            LinkAddr::RtuTcp { .. } => config.poll.inter_frame_delay.unwrap_or(Duration::ZERO),
            LinkAddr::Serial { serial, .. } => config
                .poll
                .inter_frame_delay
                .unwrap_or_else(|| inter_frame_delay(serial)),
        };
        out.push(LinkPlan {
            addr,
            devices: vec![i],
            inter_frame_delay,
        });
    }
    out
}

/// Makes the [`Connect`] of each link; tests give their own to reach in-memory devices.
pub trait Transports: Send + Sync + fmt::Debug {
    /// The connector of `link`.
    fn connector(&self, link: &LinkAddr) -> Arc<dyn Connect>;
}

/// The real thing: TCP sockets and serial ports.
#[derive(Debug, Clone, Copy, Default)]
pub struct RealTransports;

impl Transports for RealTransports {
    fn connector(&self, link: &LinkAddr) -> Arc<dyn Connect> {
        match link {
            LinkAddr::Tcp { addr } => Arc::new(TcpConnect { addr: addr.clone() }),
            LinkAddr::RtuTcp { addr } => Arc::new(RtuTcpConnect { addr: addr.clone() }),
            LinkAddr::Serial { path, serial } => Arc::new(SerialConnect {
                path: path.clone(),
                serial: *serial,
            }),
        }
    }
}
