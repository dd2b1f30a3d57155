//! A TCP gate in front of a broker: forwards every connection to `upstream` while open;
//! while closed it accepts and drops connections at once (the client sees its broker
//! unreachable) and cuts those it carried.
//!
//! A test restarts its broker with the gate closed, subscribes its own probe straight to the
//! broker, and only then opens the gate, so nothing the gateway publishes after the restart
//! can reach the broker before the probe listens (a fresh Mosquitto without persistence
//! drops messages that nobody subscribed to).
//!
//! Include with `#[path = "common/gate.rs"] mod gate;`.

#![allow(dead_code)] // Each test file uses its own part.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

/// The forwarder; its task and the connections it carries end when it is dropped.
#[derive(Debug)]
pub(crate) struct Gate {
    addr: SocketAddr,
    open: Arc<AtomicBool>,
    carried: Arc<Mutex<Vec<JoinHandle<()>>>>,
    task: JoinHandle<()>,
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
        let task = {
            let open = Arc::clone(&open);
            let carried = Arc::clone(&carried);
            tokio::spawn(async move {
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
                    links.push(tokio::spawn(async move {
                        let _ = tokio::io::copy_bidirectional(&mut client, &mut server).await;
                    }));
                }
            })
        };
        Self {
            addr,
            open,
            carried,
            task,
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
}

impl Drop for Gate {
    fn drop(&mut self) {
        self.close();
        self.task.abort();
    }
}
