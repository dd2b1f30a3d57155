//! Reads the daemon's Prometheus endpoint: a minimal HTTP/1.1 `GET /metrics` over a std
//! `TcpStream` (run on the blocking pool), and a lookup of one sample in the text format.
//!
//! Include with `#[path = "common/scrape.rs"] mod scrape;`.

#![allow(dead_code)] // Each test file uses its own part.

use std::collections::BTreeMap;
use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

/// How long one scrape may take (connect, send, read).
const TIMEOUT: Duration = Duration::from_secs(2);

/// One scrape of `/metrics`: the samples of the text format.
#[derive(Debug, Clone, Default)]
pub(crate) struct Metrics {
    /// Every sample line: name, labels, value.
    samples: Vec<(String, BTreeMap<String, String>, f64)>,
}

impl Metrics {
    /// Parses the text exposition format (comments and malformed lines are skipped).
    pub(crate) fn parse(text: &str) -> Self {
        let mut samples = Vec::new();
        for line in text.lines() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (head, rest) = match line.find('{') {
                Some(open) => {
                    let Some(close) = line[open..].find('}').map(|c| open + c) else {
                        continue;
                    };
                    (&line[..close + 1], &line[close + 1..])
                }
                None => match line.split_once(' ') {
                    Some((name, rest)) => (name, rest),
                    None => continue,
                },
            };
            let Some(Ok(value)) = rest.split_whitespace().next().map(str::parse::<f64>) else {
                continue;
            };
            let (name, labels) = match head.split_once('{') {
                Some((name, body)) => (name, labels_of(body.trim_end_matches('}'))),
                None => (head, BTreeMap::new()),
            };
            samples.push((name.to_owned(), labels, value));
        }
        Self { samples }
    }

    /// The value of the sample `name` whose labels include every pair of `labels`.
    pub(crate) fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        self.samples
            .iter()
            .find(|(n, l, _)| {
                n == name
                    && labels
                        .iter()
                        .all(|(k, v)| l.get(*k).is_some_and(|have| have == v))
            })
            .map(|(_, _, v)| *v)
    }

    /// As [`Metrics::get`], as a count (0 when absent).
    pub(crate) fn count(&self, name: &str, labels: &[(&str, &str)]) -> u64 {
        // Counters are exact integers well below 2^53.
        self.get(name, labels).map_or(0, |v| v.max(0.0) as u64)
    }
}

/// `a="x",b="y"` as a map (our label values hold no quotes or commas).
fn labels_of(body: &str) -> BTreeMap<String, String> {
    body.split(',')
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim().to_owned(), v.trim().trim_matches('"').to_owned()))
        })
        .collect()
}

/// `GET /metrics` from `addr`; `None` when it does not answer 200 within the timeout.
pub(crate) async fn scrape(addr: SocketAddr) -> Option<Metrics> {
    let text = tokio::task::spawn_blocking(move || get(addr, "/metrics"))
        .await
        .ok()??;
    Some(Metrics::parse(&text))
}

/// A blocking HTTP/1.1 GET with `Connection: close`; the body when the status is 200.
pub(crate) fn get(addr: SocketAddr, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect_timeout(&addr, TIMEOUT).ok()?;
    stream.set_read_timeout(Some(TIMEOUT)).ok()?;
    stream.set_write_timeout(Some(TIMEOUT)).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response).ok()?;
    let response = String::from_utf8(response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    let status = head.lines().next()?;
    if status.split_whitespace().nth(1) != Some("200") {
        return None;
    }
    // The body has a Content-Length (no chunked encoding), and the server closes after it.
    Some(body.to_owned())
}

#[cfg(test)]
mod tests {
    use super::Metrics;

    #[test]
    fn a_labelled_counter_is_found_whatever_the_label_order() {
        let m = Metrics::parse(
            "# TYPE fivezero_readings_dropped counter\n\
             fivezero_readings_dropped_total{intentional=\"true\",reason=\"buffer_full\"} 42\n\
             fivezero_readings_dropped_total{intentional=\"false\",reason=\"disk_full\"} 7\n\
             fivezero_outbox_bytes 1234.5\n",
        );
        assert_eq!(
            m.count(
                "fivezero_readings_dropped_total",
                &[("reason", "buffer_full"), ("intentional", "true")]
            ),
            42
        );
        assert_eq!(
            m.count(
                "fivezero_readings_dropped_total",
                &[("intentional", "false"), ("reason", "disk_full")]
            ),
            7
        );
        assert_eq!(m.get("fivezero_outbox_bytes", &[]), Some(1234.5));
        assert_eq!(m.get("fivezero_missing", &[]), None);
    }
}
