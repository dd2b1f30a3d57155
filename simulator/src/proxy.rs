//! The MBAP-aware TCP proxy in front of each listener's tokio-modbus server.
//!
//! tokio-modbus's server owns the bytes it writes, so frame-level faults (a wrong transaction
//! id, a garbled header, a reply cut in the middle) are made here. The public listener accepts
//! clients; each client connection gets its own connection to the listener's internal
//! tokio-modbus server on an ephemeral loopback port. The proxy relays one request at a time:
//!
//! 1. read one whole MBAP frame from the client: the 7-byte header, whose length field (unit
//!    id + PDU) says how many bytes follow. Lengths of 0 or above 254 (frames above the
//!    260-byte Modbus TCP maximum) are refused by closing the connection, so memory per
//!    connection is bounded;
//! 2. look up the fault of the device behind the frame's unit id;
//! 3. `no_reply`: drop the request and wait for the next one; `drop_connection`: close;
//!    otherwise forward the frame unchanged and read the server's reply frame;
//! 4. alter, delay, slice or cut the reply as the fault says, and write it to the client.
//!
//! Requests on one connection are answered in order, like a serial device; a delayed reply
//! delays the requests queued behind it. This is framing only: the PDU is never parsed, except
//! for the function code and byte count that [`Fault::FewerRegisters`],
//! [`Fault::TruncatedPdu`] and [`Fault::WrongFunctionCode`] rewrite.

use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinSet;

use crate::fault::Fault;
use crate::server::Route;

/// Largest Modbus TCP frame (MBAP header and PDU) the proxy accepts: 7 + 253 bytes.
pub const MAX_ADU_LEN: usize = 260;

/// Length of the MBAP header including the unit id.
const HEADER_LEN: usize = 7;

/// How long the proxy waits for the internal server's reply before giving up on the connection.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(30);

/// Accepts clients on `public` and relays each to the internal server at `upstream` until the
/// task is aborted (which also ends every connection it started).
pub(crate) async fn accept_loop(public: TcpListener, upstream: SocketAddr, route: Arc<Route>) {
    let mut connections = JoinSet::new();
    loop {
        tokio::select! {
            accepted = public.accept() => match accepted {
                Ok((client, peer)) => {
                    tracing::debug!(%peer, "client connected");
                    connections.spawn(relay(client, peer, upstream, Arc::clone(&route)));
                }
                Err(err) => {
                    // Out of file descriptors and the like: back off instead of spinning.
                    tracing::warn!("accept failed: {err}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = connections.join_next(), if !connections.is_empty() => {}
        }
    }
}

/// What to do with the connection after a reply.
enum Next {
    Continue,
    Close,
}

async fn relay(
    mut client: TcpStream,
    peer: SocketAddr,
    upstream_addr: SocketAddr,
    route: Arc<Route>,
) {
    let _ = client.set_nodelay(true);
    let mut upstream = match TcpStream::connect(upstream_addr).await {
        Ok(s) => s,
        Err(err) => {
            tracing::warn!(%peer, "cannot reach the internal Modbus server: {err}");
            return;
        }
    };
    let _ = upstream.set_nodelay(true);
    loop {
        let request = match read_frame(&mut client).await {
            Ok(Some(frame)) => frame,
            Ok(None) => {
                tracing::debug!(%peer, "client closed the connection");
                return;
            }
            Err(err) => {
                tracing::debug!(%peer, "closing the connection after a bad request frame: {err}");
                return;
            }
        };
        let unit = request.get(6).copied().unwrap_or(0);
        let fault = route.fault(unit);
        match fault {
            Some(Fault::NoReply) => {
                tracing::debug!(%peer, unit, "fault no_reply: request swallowed");
                continue;
            }
            Some(Fault::DropConnection) => {
                tracing::debug!(%peer, unit, "fault drop_connection: closing");
                let _ = client.shutdown().await;
                return;
            }
            _ => {}
        }
        if let Err(err) = upstream.write_all(&request).await {
            tracing::warn!(%peer, "internal Modbus server went away: {err}");
            return;
        }
        let reply = match tokio::time::timeout(UPSTREAM_TIMEOUT, read_frame(&mut upstream)).await {
            Ok(Ok(Some(reply))) => reply,
            Ok(Ok(None)) => {
                // The server closes on a request it cannot decode; so does the proxy.
                tracing::debug!(%peer, "internal Modbus server closed the connection");
                return;
            }
            Ok(Err(err)) => {
                tracing::warn!(%peer, "bad frame from the internal Modbus server: {err}");
                return;
            }
            Err(_) => {
                tracing::warn!(%peer, "internal Modbus server did not answer in {UPSTREAM_TIMEOUT:?}");
                return;
            }
        };
        match send_reply(&mut client, reply, fault).await {
            Ok(Next::Continue) => {}
            Ok(Next::Close) => return,
            Err(err) => {
                tracing::debug!(%peer, "cannot write the reply: {err}");
                return;
            }
        }
    }
}

/// Reads one MBAP frame; `None` when the peer closed the connection between frames.
///
/// # Errors
/// End of file inside a frame, a length field of 0 or one that makes the frame longer than
/// [`MAX_ADU_LEN`], or any I/O error.
async fn read_frame<R: AsyncRead + Unpin>(r: &mut R) -> io::Result<Option<Vec<u8>>> {
    let mut header = [0u8; HEADER_LEN];
    if r.read(&mut header[..1]).await? == 0 {
        return Ok(None);
    }
    r.read_exact(&mut header[1..]).await?;
    let len = usize::from(u16::from_be_bytes([header[4], header[5]]));
    if len == 0 || HEADER_LEN - 1 + len > MAX_ADU_LEN {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!(
                "MBAP length {len} is outside 1..={}",
                MAX_ADU_LEN + 1 - HEADER_LEN
            ),
        ));
    }
    let mut frame = Vec::with_capacity(HEADER_LEN - 1 + len);
    frame.extend_from_slice(&header);
    frame.resize(HEADER_LEN - 1 + len, 0);
    if let Some(pdu) = frame.get_mut(HEADER_LEN..) {
        r.read_exact(pdu).await?;
    }
    Ok(Some(frame))
}

/// Writes the reply to the client, altered as `fault` says.
async fn send_reply(
    client: &mut TcpStream,
    mut reply: Vec<u8>,
    fault: Option<Fault>,
) -> io::Result<Next> {
    match fault {
        None | Some(Fault::Exception(_) | Fault::NoReply | Fault::DropConnection) => {}
        Some(Fault::LateReply { delay } | Fault::Slow { delay }) => tokio::time::sleep(delay).await,
        Some(Fault::WrongTransactionId) => {
            if let Some(tid) = reply.get_mut(0..2) {
                // Far from the request's id, so it cannot match the next request either.
                tid[0] ^= 0x5A;
                tid[1] ^= 0xA5;
            }
        }
        Some(Fault::WrongUnitId) => {
            if let Some(unit) = reply.get_mut(6) {
                *unit = unit.wrapping_add(1);
            }
        }
        Some(Fault::WrongFunctionCode) => {
            if let Some(fc) = reply.get_mut(7) {
                let swapped = match *fc & 0x7F {
                    0x01 => 0x02,
                    0x02 => 0x01,
                    0x03 => 0x04,
                    0x04 => 0x03,
                    other => other ^ 0x10,
                };
                *fc = swapped | (*fc & 0x80);
            }
        }
        Some(Fault::FewerRegisters) => fewer(&mut reply),
        Some(Fault::TruncatedPdu) => {
            if reply.len() > HEADER_LEN + 1 {
                reply.pop();
                set_length(&mut reply);
            }
        }
        Some(Fault::Garbled) => {
            if let Some(pid) = reply.get_mut(2..4) {
                pid.copy_from_slice(&[0x00, 0x01]);
            }
        }
        Some(Fault::ZeroLength) => {
            if let Some(len) = reply.get_mut(4..6) {
                len.copy_from_slice(&[0, 0]);
            }
        }
        Some(Fault::HugeLength) => {
            if let Some(len) = reply.get_mut(4..6) {
                len.copy_from_slice(&[0xFF, 0xFF]);
            }
        }
        Some(Fault::Sliced { gap }) => {
            for (k, byte) in reply.iter().enumerate() {
                if k > 0 {
                    tokio::time::sleep(gap).await;
                }
                client.write_all(&[*byte]).await?;
                client.flush().await?;
            }
            return Ok(Next::Continue);
        }
        Some(Fault::ResetMidFrame) => {
            let half = reply.get(..reply.len() / 2).unwrap_or(&[]);
            client.write_all(half).await?;
            client.flush().await?;
            // Let the half leave the send buffer: a zero-linger close discards what is queued.
            tokio::time::sleep(Duration::from_millis(20)).await;
            // Closing with a zero linger sends RST instead of FIN.
            client.set_zero_linger()?;
            return Ok(Next::Close);
        }
    }
    client.write_all(&reply).await?;
    client.flush().await?;
    Ok(Next::Continue)
}

/// Removes one register (or one byte of bits) from a read reply and fixes byte count and MBAP
/// length; other replies are left alone.
fn fewer(reply: &mut Vec<u8>) {
    let (Some(&fc), Some(&count)) = (reply.get(7), reply.get(8)) else {
        return;
    };
    let cut: u8 = match fc {
        0x03 | 0x04 if count >= 2 => 2,
        0x01 | 0x02 if count >= 1 => 1,
        _ => return,
    };
    if reply.len() != HEADER_LEN + 2 + usize::from(count) {
        return;
    }
    reply.truncate(reply.len() - usize::from(cut));
    if let Some(c) = reply.get_mut(8) {
        *c = count - cut;
    }
    set_length(reply);
}

/// Sets the MBAP length field to the bytes after it.
fn set_length(frame: &mut [u8]) {
    let len = u16::try_from(frame.len().saturating_sub(HEADER_LEN - 1)).unwrap_or(u16::MAX);
    if let Some(field) = frame.get_mut(4..6) {
        field.copy_from_slice(&len.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reply(fc: u8, data: &[u8]) -> Vec<u8> {
        let mut f = vec![
            0x00,
            0x07,
            0x00,
            0x00,
            0x00,
            0x00,
            0x01,
            fc,
            u8::try_from(data.len()).unwrap(),
        ];
        f.extend_from_slice(data);
        set_length(&mut f);
        f
    }

    #[test]
    fn fewer_registers_drops_one_register_and_keeps_counts_consistent() {
        let mut f = reply(0x03, &[0, 1, 0, 2, 0, 3]);
        fewer(&mut f);
        assert_eq!(
            f,
            vec![
                0x00, 0x07, 0x00, 0x00, 0x00, 0x07, 0x01, 0x03, 4, 0, 1, 0, 2
            ]
        );
    }

    #[test]
    fn fewer_leaves_exceptions_alone() {
        let mut f = vec![0x00, 0x07, 0x00, 0x00, 0x00, 0x03, 0x01, 0x83, 0x02];
        let before = f.clone();
        fewer(&mut f);
        assert_eq!(f, before);
    }

    #[tokio::test]
    async fn frames_are_read_whole_and_bad_lengths_refused() {
        let mut ok: &[u8] = &[0, 1, 0, 0, 0, 6, 1, 4, 0, 0, 0, 2];
        assert_eq!(read_frame(&mut ok).await.unwrap().unwrap().len(), 12);
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty).await.unwrap().is_none());
        let mut zero: &[u8] = &[0, 1, 0, 0, 0, 0, 1];
        assert!(read_frame(&mut zero).await.is_err());
        let mut huge: &[u8] = &[0, 1, 0, 0, 0xFF, 0xFF, 1, 4];
        assert!(read_frame(&mut huge).await.is_err());
        let mut cut: &[u8] = &[0, 1, 0, 0, 0, 6, 1, 4];
        assert!(read_frame(&mut cut).await.is_err());
    }
}
