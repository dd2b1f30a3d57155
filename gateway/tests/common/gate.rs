//! A TCP gate in front of a broker: forwards every connection to `upstream` while open;
//! while closed it accepts and drops connections at once (the client sees its broker
//! unreachable) and cuts those it carried.
//!
//! A test restarts its broker with the gate closed, subscribes its own probe straight to the
//! broker, and only then opens the gate, so nothing the gateway publishes after the restart
//! can reach the broker before the probe listens (a fresh Mosquitto without persistence
//! drops messages that nobody subscribed to).
//!
//! # Toxics
//!
//! Link-quality faults in the manner of toxiproxy, set at run time with
//! [`Gate::set_toxic`] (one at a time; `None` removes it). Each carried connection is two
//! directional pumps (a reader feeding a writer through a short queue, so a delayed chunk does
//! not stop the next ones from being read); the writer reads the current setting for every
//! chunk, so latency, bandwidth, slicer and limit_data act on live connections from the next
//! chunk on, slow_close on every direction that ends while it is set, and reset_peer restarts
//! its clock on every connection when it is set. Toxiproxy attaches a toxic to one direction
//! (downstream or upstream); here every toxic acts on both directions, so latency delays a
//! request and its answer each (a round trip takes twice the latency) and bandwidth allows
//! its rate each way.
//!
//! | toxic | what the gate does |
//! |---|---|
//! | [`Toxic::Latency`] | holds every chunk `latency ± jitter` (uniform) after it was read, order kept |
//! | [`Toxic::Bandwidth`] | writes at most `bytes_per_second` each way, in pieces of a tenth of a second's worth |
//! | [`Toxic::Slicer`] | writes every chunk in slices of `average ± variation` bytes, `delay` apart |
//! | [`Toxic::SlowClose`] | when one side closes, sends its FIN to the other `delay` later |
//! | [`Toxic::ResetPeer`] | aborts each connection with RST both ways (`SO_LINGER` 0) `every` after it started or the toxic was set; new connections are still accepted |
//! | [`Toxic::LimitData`] | cuts each connection once `bytes` have passed (both ways together, counted from its start or the toxic's setting), mid-message: the chunk that crosses the limit goes out only up to it |
//!
//! Jitter and slice sizes come from rand's `StdRng` seeded with the gate's seed ([`DEFAULT_SEED`],
//! or [`Gate::set_seed`]), the connection's number and the direction, so a run's draws are
//! the same from run to run (which chunk gets which draw depends on how reads split).
//!
//! [`Gate::hang_up`] closes every carried connection the way its server would: the gate
//! half-closes towards the server (FIN) and swallows what the client still sends; the server
//! then closes its side, and that FIN reaches the client (after slow_close's delay when set).
//!
//! Without a toxic the gate forwards like `tokio::io::copy_bidirectional`: when one side
//! closes, the other's write half is shut down; an error on either side ends both.
//!
//! The toxics are built with [`Gate::latency`] and its siblings as well as with [`Toxic`]'s
//! variants, so a test that reaches the gate through a re-export of [`Gate`] alone (the
//! root package's `tests/pipeline`) can use them too.
//!
//! Include with `#[path = "common/gate.rs"] mod gate;`.

#![allow(dead_code)] // Each test file uses its own part.

use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng as _, SeedableRng as _};

use tokio::io::{AsyncRead, AsyncReadExt as _, AsyncWrite, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::Instant;

/// The seed of the jitter and slice sizes unless [`Gate::set_seed`] changes it.
pub(crate) const DEFAULT_SEED: u64 = 0x5EED_0F0F_6A7E_0001;
/// The most one read takes from a socket.
const CHUNK: usize = 8 * 1024;
/// Chunks read but not yet written, per direction.
const QUEUE: usize = 64;

/// A link-quality fault (see the module's table).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Toxic {
    /// Every chunk is written `latency ± jitter` after it was read.
    Latency {
        /// The mean delay.
        latency: Duration,
        /// The most the delay strays from `latency`, either way (uniform).
        jitter: Duration,
    },
    /// At most this many bytes a second each way.
    Bandwidth {
        /// The rate.
        bytes_per_second: u64,
    },
    /// Every chunk goes out in slices, each followed by a pause.
    Slicer {
        /// The mean slice size in bytes.
        average: usize,
        /// The most a slice's size strays from `average`, either way (uniform).
        variation: usize,
        /// The pause after each slice.
        delay: Duration,
    },
    /// The FIN of a side that closed reaches the other side this much later.
    SlowClose {
        /// The delay.
        delay: Duration,
    },
    /// Each connection is reset this long after it started or the toxic was set.
    ResetPeer {
        /// The lifetime of a connection.
        every: Duration,
    },
    /// Each connection is cut once this many bytes have passed.
    LimitData {
        /// The bytes a connection may carry (both directions together).
        bytes: u64,
    },
}

/// What every link watches.
#[derive(Debug, Clone, Copy, Default)]
struct Setting {
    toxic: Option<Toxic>,
    /// Bumped by every [`Gate::set_toxic`]: limit_data's count and reset_peer's clock start
    /// again.
    generation: u64,
    /// Bumped by every [`Gate::hang_up`].
    hang_ups: u64,
}

/// The forwarder; its task and the connections it carries end when it is dropped.
#[derive(Debug)]
pub(crate) struct Gate {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    carried: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
    setting: watch::Sender<Setting>,
    seed: Arc<AtomicU64>,
}

impl Gate {
    /// Listens on a free port of 127.0.0.1, open, forwarding to `upstream`.
    pub(crate) async fn start(upstream: SocketAddr) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind the gate on 127.0.0.1:0");
        let addr = listener.local_addr().expect("the gate's address");
        let open = Arc::new(AtomicBool::new(true));
        let carried: Arc<Mutex<Vec<JoinHandle<()>>>> = Arc::default();
        let (setting, watching) = watch::channel(Setting::default());
        let seed = Arc::new(AtomicU64::new(DEFAULT_SEED));
        let task = {
            let open = Arc::clone(&open);
            let carried = Arc::clone(&carried);
            let seed = Arc::clone(&seed);
            tokio::spawn(async move {
                let mut number: u64 = 0;
                loop {
                    let Ok((mut client, _)) = listener.accept().await else {
                        continue;
                    };
                    if !open.load(Ordering::SeqCst) {
                        drop(client);
                        continue;
                    }
                    let connect =
                        tokio::time::timeout(Duration::from_secs(1), TcpStream::connect(upstream));
                    let Ok(Ok(mut server)) = connect.await else {
                        drop(client);
                        continue;
                    };
                    let _ = client.set_nodelay(true);
                    let _ = server.set_nodelay(true);
                    // Checked again under the lock `close` takes: a connection accepted just
                    // before a close is never carried after it.
                    let mut links = carried.lock().unwrap_or_else(PoisonError::into_inner);
                    if !open.load(Ordering::SeqCst) {
                        continue;
                    }
                    links.retain(|t| !t.is_finished());
                    number += 1;
                    let link_seed = seed.load(Ordering::SeqCst).wrapping_add(number << 2);
                    let watching = watching.clone();
                    links.push(tokio::spawn(async move {
                        carry(&mut client, &mut server, watching, link_seed).await;
                    }));
                }
            })
        };
        Self {
            addr,
            open,
            carried,
            task,
            setting,
            seed,
        }
    }

    /// The port clients connect to.
    pub(crate) fn port(&self) -> u16 {
        self.addr.port()
    }

    /// Lets new connections through.
    pub(crate) fn open(&self) {
        self.open.store(true, Ordering::SeqCst);
    }

    /// Drops new connections and cuts the ones carried.
    pub(crate) fn close(&self) {
        let mut carried = self.carried.lock().unwrap_or_else(PoisonError::into_inner);
        self.open.store(false, Ordering::SeqCst);
        for link in carried.drain(..) {
            link.abort();
        }
    }

    /// Sets the toxic (`None` removes it), for the connections carried now and later.
    pub(crate) fn set_toxic(&self, toxic: Option<Toxic>) {
        self.setting.send_modify(|s| {
            s.toxic = toxic;
            s.generation += 1;
        });
    }

    /// The toxic set now.
    pub(crate) fn toxic(&self) -> Option<Toxic> {
        self.setting.borrow().toxic
    }

    /// The seed of the connections accepted from now on.
    pub(crate) fn set_seed(&self, seed: u64) {
        self.seed.store(seed, Ordering::SeqCst);
    }

    /// Closes every connection carried now as its server would: FIN towards the server at
    /// once, and what the client sends from then on is swallowed; the server's FIN reaches
    /// the client when the server closes (later by slow_close's delay, when set).
    pub(crate) fn hang_up(&self) {
        self.setting.send_modify(|s| s.hang_ups += 1);
    }

    /// [`Toxic::Latency`].
    pub(crate) fn latency(latency: Duration, jitter: Duration) -> Toxic {
        Toxic::Latency { latency, jitter }
    }

    /// [`Toxic::Bandwidth`].
    pub(crate) fn bandwidth(bytes_per_second: u64) -> Toxic {
        Toxic::Bandwidth { bytes_per_second }
    }

    /// [`Toxic::Slicer`].
    pub(crate) fn slicer(average: usize, variation: usize, delay: Duration) -> Toxic {
        Toxic::Slicer {
            average,
            variation,
            delay,
        }
    }

    /// [`Toxic::SlowClose`].
    pub(crate) fn slow_close(delay: Duration) -> Toxic {
        Toxic::SlowClose { delay }
    }

    /// [`Toxic::ResetPeer`].
    pub(crate) fn reset_peer(every: Duration) -> Toxic {
        Toxic::ResetPeer { every }
    }

    /// [`Toxic::LimitData`].
    pub(crate) fn limit_data(bytes: u64) -> Toxic {
        Toxic::LimitData { bytes }
    }
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.close();
        self.task.abort();
    }
}

/// Carries one connection until both directions end, an error or limit_data cuts it, or
/// reset_peer resets it (the streams are closed by the caller's drop, with RST then).
async fn carry(
    client: &mut TcpStream,
    server: &mut TcpStream,
    setting: watch::Receiver<Setting>,
    seed: u64,
) {
    let start = *setting.borrow();
    let budget = Budget::new(start.generation);
    let reset = {
        let (mut client_read, mut client_write) = client.split();
        let (mut server_read, mut server_write) = server.split();
        let up = async {
            let mut hang = setting.clone();
            tokio::select! {
                r = pump(&mut client_read, &mut server_write, setting.clone(), &budget, seed ^ 1) => {
                    return r;
                }
                () = hung_up(&mut hang, start.hang_ups) => {}
            }
            let _ = server_write.shutdown().await;
            discard(&mut client_read).await
        };
        let down = pump(
            &mut server_read,
            &mut client_write,
            setting.clone(),
            &budget,
            seed ^ 2,
        );
        tokio::select! {
            _ = async { tokio::try_join!(up, down) } => false,
            () = reset_due(setting.clone()) => true,
        }
    };
    if reset {
        // Closing with SO_LINGER 0 sends RST instead of FIN.
        let _ = client.set_zero_linger();
        let _ = server.set_zero_linger();
    }
}

/// One direction: a reader queueing chunks and a writer applying the toxic set now to each.
async fn pump<R, W>(
    src: &mut R,
    dst: &mut W,
    setting: watch::Receiver<Setting>,
    budget: &Budget,
    seed: u64,
) -> io::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    let (tx, rx) = mpsc::channel::<Chunk>(QUEUE);
    let read = async move {
        loop {
            let mut data = vec![0; CHUNK];
            let n = src.read(&mut data).await?;
            if n == 0 {
                // `tx` drops here: the writer drains the queue and shuts `dst` down.
                return Ok(());
            }
            data.truncate(n);
            let chunk = Chunk {
                at: Instant::now(),
                data,
            };
            if tx.send(chunk).await.is_err() {
                return Ok(());
            }
        }
    };
    let write = write_out(rx, dst, setting, budget, Draws::new(seed));
    tokio::try_join!(read, write).map(|_| ())
}

/// Bytes read from one side, and when.
#[derive(Debug)]
struct Chunk {
    at: Instant,
    data: Vec<u8>,
}

/// Writes every queued chunk as the toxic set now says, then the FIN.
async fn write_out<W>(
    mut rx: mpsc::Receiver<Chunk>,
    dst: &mut W,
    setting: watch::Receiver<Setting>,
    budget: &Budget,
    mut rng: Draws,
) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let mut slot = Instant::now();
    while let Some(chunk) = rx.recv().await {
        let now = *setting.borrow();
        match now.toxic {
            Some(Toxic::Latency { latency, jitter }) => {
                tokio::time::sleep_until(chunk.at + rng.around(latency, jitter)).await;
                dst.write_all(&chunk.data).await?;
            }
            Some(Toxic::Bandwidth { bytes_per_second }) => {
                throttle(dst, &chunk.data, bytes_per_second, &mut slot).await?;
            }
            Some(Toxic::Slicer {
                average,
                variation,
                delay,
            }) => {
                let mut rest = chunk.data.as_slice();
                while !rest.is_empty() {
                    let size = rng.around_size(average, variation).clamp(1, rest.len());
                    let (slice, tail) = rest.split_at(size);
                    dst.write_all(slice).await?;
                    rest = tail;
                    tokio::time::sleep(delay).await;
                }
            }
            Some(Toxic::LimitData { bytes }) => {
                let (allowed, spent) = budget.take(now.generation, bytes, chunk.data.len());
                dst.write_all(&chunk.data[..allowed]).await?;
                if spent {
                    return Err(io::Error::other(
                        "limit_data reached: the connection is cut",
                    ));
                }
            }
            Some(Toxic::SlowClose { .. } | Toxic::ResetPeer { .. }) | None => {
                dst.write_all(&chunk.data).await?;
            }
        }
    }
    let closing = setting.borrow().toxic;
    if let Some(Toxic::SlowClose { delay }) = closing {
        tokio::time::sleep(delay).await;
    }
    dst.shutdown().await
}

/// Writes `data` at no more than `rate` bytes a second: each piece (a tenth of a second's
/// worth at most) waits for its slot, and the next slot follows after the piece's time on
/// the wire. An idle link saves up no credit.
async fn throttle<W>(dst: &mut W, data: &[u8], rate: u64, slot: &mut Instant) -> io::Result<()>
where
    W: AsyncWrite + Unpin,
{
    let rate = rate.max(1);
    let piece = usize::try_from(rate / 10).unwrap_or(usize::MAX).max(1);
    for part in data.chunks(piece) {
        *slot = (*slot).max(Instant::now());
        tokio::time::sleep_until(*slot).await;
        dst.write_all(part).await?;
        #[allow(clippy::cast_precision_loss)] // Chunks and rates are far below 2^52.
        let on_wire = Duration::from_secs_f64(part.len() as f64 / rate as f64);
        *slot += on_wire;
    }
    Ok(())
}

/// Reads and drops everything until the end of the stream.
async fn discard<R>(src: &mut R) -> io::Result<()>
where
    R: AsyncRead + Unpin,
{
    let mut sink = vec![0; CHUNK];
    while src.read(&mut sink).await? > 0 {}
    Ok(())
}

/// Returns once the gate has been hung up more than `since` times.
async fn hung_up(setting: &mut watch::Receiver<Setting>, since: u64) {
    loop {
        if setting.borrow_and_update().hang_ups > since {
            return;
        }
        if setting.changed().await.is_err() {
            std::future::pending::<()>().await;
        }
    }
}

/// Returns when reset_peer's time has come for this connection: `every` after it saw the
/// toxic set (at its start, or when the toxic was set later). Never while it is not set.
async fn reset_due(mut setting: watch::Receiver<Setting>) {
    let mut generation = None;
    let mut due = None;
    loop {
        let now = *setting.borrow_and_update();
        if generation != Some(now.generation) {
            generation = Some(now.generation);
            due = match now.toxic {
                Some(Toxic::ResetPeer { every }) => Some(Instant::now() + every),
                _ => None,
            };
        }
        let changed = async {
            if setting.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        match due {
            Some(at) => tokio::select! {
                () = tokio::time::sleep_until(at) => return,
                () = changed => {}
            },
            None => changed.await,
        }
    }
}

/// limit_data's count for one connection: the bytes passed since its start or since the
/// toxic was last set, whichever is later.
#[derive(Debug)]
struct Budget(Mutex<(u64, u64)>);

impl Budget {
    fn new(generation: u64) -> Self {
        Self(Mutex::new((generation, 0)))
    }

    /// Takes up to `len` bytes of the `limit` under `generation`: how many may pass, and
    /// whether the limit is reached with them.
    fn take(&self, generation: u64, limit: u64, len: usize) -> (usize, bool) {
        let mut state = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if state.0 != generation {
            *state = (generation, 0);
        }
        let left = limit.saturating_sub(state.1);
        let allowed = usize::try_from(left).map_or(len, |l| l.min(len));
        state.1 += allowed as u64;
        (allowed, state.1 >= limit)
    }
}

/// Seeded draws for jitter and slice sizes (rand's `StdRng`, so a seed gives the same draws
/// from run to run).
#[derive(Debug)]
struct Draws(StdRng);

impl Draws {
    fn new(seed: u64) -> Self {
        Self(StdRng::seed_from_u64(seed))
    }

    /// Uniform in `mid - spread ..= mid + spread` (floored at 0).
    fn around_u64(&mut self, mid: u64, spread: u64) -> u64 {
        self.0
            .random_range(mid.saturating_sub(spread)..=mid.saturating_add(spread))
    }

    /// [`Self::around_u64`] in microseconds.
    fn around(&mut self, mid: Duration, spread: Duration) -> Duration {
        let us = |d: Duration| u64::try_from(d.as_micros()).unwrap_or(u64::MAX);
        Duration::from_micros(self.around_u64(us(mid), us(spread)))
    }

    /// [`Self::around_u64`] for sizes.
    fn around_size(&mut self, mid: usize, spread: usize) -> usize {
        let draw = self.around_u64(mid as u64, spread as u64);
        usize::try_from(draw).unwrap_or(usize::MAX)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::{Budget, Draws};

    #[test]
    fn limit_data_cuts_at_the_limit_mid_chunk_and_counts_afresh_after_a_new_setting() {
        let budget = Budget::new(1);
        assert_eq!(budget.take(1, 100, 60), (60, false));
        assert_eq!(budget.take(1, 100, 60), (40, true), "only up to the limit");
        assert_eq!(budget.take(1, 100, 60), (0, true));
        assert_eq!(
            budget.take(2, 100, 60),
            (60, false),
            "a new setting starts again"
        );
    }

    #[test]
    fn jitter_stays_in_its_range_and_repeats_from_the_seed() {
        let (mid, spread) = (Duration::from_millis(500), Duration::from_millis(250));
        let draws = |seed| {
            let mut rng = Draws::new(seed);
            (0..1000)
                .map(|_| rng.around(mid, spread))
                .collect::<Vec<_>>()
        };
        let a = draws(7);
        assert_eq!(a, draws(7), "the same seed, the same draws");
        assert_ne!(a, draws(8), "another seed, other draws");
        assert!(a.iter().all(|d| *d >= mid - spread && *d <= mid + spread));
        let (low, high) = (a.iter().min(), a.iter().max());
        assert!(
            low < Some(&Duration::from_millis(300)) && high > Some(&Duration::from_millis(700))
        );
        let mut rng = Draws::new(7);
        assert!((0..1000).all(|_| (8..=24).contains(&rng.around_size(16, 8))));
        assert_eq!(
            Draws::new(1).around_size(3, 8),
            Draws::new(1).around_size(3, 8)
        );
        assert!(
            (0..100).all(|_| rng.around_size(3, 8) <= 11),
            "floored at 0, not wrapped"
        );
    }
}
