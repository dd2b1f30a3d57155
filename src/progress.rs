//! The demo's progress line: what the gateway polled and buffered (from its Prometheus
//! endpoint) and what the sink stored (from its counters), every few seconds.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::{Duration, Instant};

use fivezero_sink::stats::SinkStats;

/// The figures of one scrape of the gateway.
#[derive(Debug, Default, Clone, Copy)]
struct Gateway {
    polled: f64,
    backlog: f64,
    committed: f64,
    connected: bool,
}

/// A value of the exposition without labels, by its full name.
fn value(text: &str, name: &str) -> Option<f64> {
    text.lines().filter(|l| !l.starts_with('#')).find_map(|l| {
        let (n, v) = l.split_once(' ')?;
        (n == name).then(|| v.trim().parse().ok()).flatten()
    })
}

/// `GET /metrics` of the gateway, or `None` while it is not answering.
fn scrape(addr: SocketAddr) -> Option<Gateway> {
    let mut stream = TcpStream::connect_timeout(&addr, Duration::from_millis(500)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    stream
        .write_all(b"GET /metrics HTTP/1.0\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut body = String::new();
    stream.read_to_string(&mut body).ok()?;
    Some(Gateway {
        polled: value(&body, "fivezero_readings_polled_total")?,
        backlog: value(&body, "fivezero_outbox_backlog").unwrap_or(0.0),
        committed: value(&body, "fivezero_outbox_committed_seq").unwrap_or(0.0),
        connected: value(&body, "fivezero_mqtt_connected").is_some_and(|v| v > 0.0),
    })
}

/// Prints a line every `every` until the task is aborted.
pub(crate) async fn run(metrics: SocketAddr, sink: SinkStats, every: Duration) {
    let mut last: Option<(Instant, f64, u64)> = None;
    let mut tick = tokio::time::interval(every);
    tick.tick().await;
    loop {
        tick.tick().await;
        let gateway = tokio::task::spawn_blocking(move || scrape(metrics))
            .await
            .ok()
            .flatten();
        let stored = sink.snapshot();
        let now = Instant::now();
        let Some(g) = gateway else {
            println!("fivezero: waiting for the gateway's metrics on {metrics} ...");
            continue;
        };
        let (polled_rate, stored_rate) = match last {
            Some((t, polled, items)) => {
                let s = now.duration_since(t).as_secs_f64().max(1e-3);
                (
                    (g.polled - polled) / s,
                    stored.stored_items.saturating_sub(items) as f64 / s,
                )
            }
            None => (0.0, 0.0),
        };
        last = Some((now, g.polled, stored.stored_items));
        println!(
            "fivezero: gateway {:>6.0} readings/s polled, {} committed, backlog {}, broker {}; sink {:>6.0} items/s stored, {} in all, {} dead letters",
            polled_rate,
            g.committed,
            g.backlog,
            if g.connected { "connected" } else { "down" },
            stored_rate,
            stored.stored_items,
            stored.dead_letters_total(),
        );
    }
}
