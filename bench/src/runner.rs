//! Running one benchmark program as a child process: its output is echoed (indented) while it
//! runs and kept, its `BENCH` lines are parsed, and it is killed with every process it started
//! if it runs past its time limit.
//!
//! A `BENCH` line is `BENCH NAME key=value key=value …`: one word of name (for example
//! `gateway_bench.live`), then pairs whose values hold no spaces.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Read};
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The figures of one `BENCH` line, by key.
pub(crate) type Fields = BTreeMap<String, String>;

/// What one program printed and how it ended.
#[derive(Debug, Default)]
pub(crate) struct Outcome {
    /// Standard output, line by line.
    pub(crate) stdout: Vec<String>,
    /// Standard error, line by line.
    pub(crate) stderr: Vec<String>,
    /// The exit code (`None`: killed by a signal, or could not start).
    pub(crate) code: Option<i32>,
    /// Why it could not start, or that it was killed at its time limit.
    pub(crate) failure: Option<String>,
    /// Wall time, seconds.
    pub(crate) seconds: f64,
}

impl Outcome {
    /// The `BENCH` lines, by name (a later line of the same name wins).
    pub(crate) fn bench(&self) -> BTreeMap<String, Fields> {
        let mut out = BTreeMap::new();
        for line in &self.stdout {
            if let Some((name, fields)) = parse_bench_line(line) {
                out.insert(name, fields);
            }
        }
        out
    }

    /// A short reason why figures are missing: the failure, the last error line, or the
    /// exit status.
    pub(crate) fn reason(&self) -> String {
        if let Some(f) = &self.failure {
            return f.clone();
        }
        let said = self
            .stderr
            .iter()
            .chain(self.stdout.iter())
            .rev()
            .find(|l| {
                let l = l.to_ascii_lowercase();
                l.contains("error") || l.contains("failed") || l.contains("skipped")
            })
            .cloned();
        let status = match self.code {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_owned(),
        };
        match said {
            Some(s) => format!("{} ({status})", s.trim()),
            None => status,
        }
    }
}

/// Parses `BENCH NAME key=value …`.
pub(crate) fn parse_bench_line(line: &str) -> Option<(String, Fields)> {
    let mut words = line.split_whitespace();
    if words.next() != Some("BENCH") {
        return None;
    }
    let name = words.next()?.to_owned();
    let fields = words
        .filter_map(|w| w.split_once('='))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect();
    Some((name, fields))
}

/// Runs `program args…` with `env` added (and `unset` removed), echoing its output with
/// `indent`; kills it and its descendants after `limit`.
pub(crate) fn run(
    program: &Path,
    args: &[String],
    env: &[(&str, String)],
    unset: &[&str],
    limit: Duration,
) -> Outcome {
    let name = program.file_name().map_or_else(
        || program.display().to_string(),
        |n| n.to_string_lossy().into_owned(),
    );
    let title = std::iter::once(name)
        .chain(args.iter().cloned())
        .collect::<Vec<_>>()
        .join(" ");
    println!();
    println!("==> {title}   (load average {})", load_average());
    let started = Instant::now();
    let mut command = Command::new(program);
    command
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    for (k, v) in env {
        command.env(k, v);
    }
    for k in unset {
        command.env_remove(k);
    }
    let mut child = match command.spawn() {
        Ok(c) => c,
        Err(e) => {
            let failure = format!("cannot start {}: {e}", program.display());
            println!("    {failure}");
            return Outcome {
                failure: Some(failure),
                ..Outcome::default()
            };
        }
    };
    let (tx, rx) = mpsc::channel::<(bool, String)>();
    if let Some(out) = child.stdout.take() {
        forward(out, false, tx.clone());
    }
    if let Some(err) = child.stderr.take() {
        forward(err, true, tx.clone());
    }
    drop(tx);
    let mut outcome = Outcome::default();
    let deadline = started + limit;
    // Set when the program has ended: what is left in the pipes is read until then (a process
    // it left behind may hold them open).
    let mut ended: Option<Instant> = None;
    loop {
        match rx.recv_timeout(Duration::from_millis(200)) {
            Ok((is_err, line)) => {
                if is_err {
                    println!("    ! {line}");
                    outcome.stderr.push(line);
                } else {
                    println!("    {line}");
                    outcome.stdout.push(line);
                }
            }
            // Both pipes are closed: the program has ended (or closed them).
            Err(mpsc::RecvTimeoutError::Disconnected) => break,
            Err(mpsc::RecvTimeoutError::Timeout) => {}
        }
        match ended {
            Some(t) if t.elapsed() > Duration::from_secs(2) => break,
            Some(_) => {}
            None => {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    ended = Some(Instant::now());
                }
            }
        }
        if ended.is_none() && Instant::now() > deadline {
            let pids = descendants(child.id());
            let _ = child.kill();
            kill_all(&pids);
            let failure = format!(
                "killed after its time limit of {} s, with {} process(es) it had started",
                limit.as_secs(),
                pids.len()
            );
            println!("    {failure}");
            outcome.failure = Some(failure);
            break;
        }
    }
    outcome.code = child.wait().ok().and_then(|s| s.code());
    outcome.seconds = started.elapsed().as_secs_f64();
    println!(
        "<== {:.0} s, {}",
        outcome.seconds,
        match outcome.code {
            Some(c) => format!("exit status {c}"),
            None => "killed by a signal".to_owned(),
        }
    );
    outcome
}

/// Sends each line of `from` to `tx`, tagged with `is_err`.
fn forward(from: impl Read + Send + 'static, is_err: bool, tx: mpsc::Sender<(bool, String)>) {
    std::thread::spawn(move || {
        for line in BufReader::new(from).lines() {
            let Ok(line) = line else { break };
            if tx.send((is_err, strip_ansi(&line))).is_err() {
                break;
            }
        }
    });
}

/// `line` without ANSI escape sequences (`ESC [ … letter`: the colours of log lines).
fn strip_ansi(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c != '\u{1b}' {
            out.push(c);
        } else if chars.next() == Some('[') {
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        }
    }
    out
}

/// Every process below `root` (children, their children …), from `/proc/*/stat`.
fn descendants(root: u32) -> Vec<u32> {
    let mut parent_of = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/proc") {
        for entry in dir.flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|n| n.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            // "PID (COMMAND) STATE PPID …": the command may hold spaces and parentheses.
            let ppid = stat
                .rsplit_once(')')
                .and_then(|(_, rest)| rest.split_whitespace().nth(1))
                .and_then(|p| p.parse::<u32>().ok());
            if let Some(ppid) = ppid {
                parent_of.push((pid, ppid));
            }
        }
    }
    let mut found = Vec::new();
    let mut frontier = vec![root];
    while let Some(p) = frontier.pop() {
        for &(pid, ppid) in &parent_of {
            if ppid == p && !found.contains(&pid) {
                found.push(pid);
                frontier.push(pid);
            }
        }
    }
    found
}

/// SIGKILL to each of `pids` (all started, directly or not, by this program).
fn kill_all(pids: &[u32]) {
    for pid in pids {
        let _ = Command::new("kill")
            .args(["-KILL", &pid.to_string()])
            .stderr(Stdio::null())
            .status();
    }
}

/// `/proc/loadavg`'s three load averages.
pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bench_lines_give_their_name_and_fields() {
        let (name, f) =
            parse_bench_line("BENCH gateway_bench.live devices=10 cpu_s_per_1000=0.002400")
                .unwrap();
        assert_eq!(name, "gateway_bench.live");
        assert_eq!(f["devices"], "10");
        assert_eq!(f["cpu_s_per_1000"], "0.002400");
        assert!(parse_bench_line("readings/s  7500").is_none());
        assert!(parse_bench_line("BENCH").is_none());
    }

    #[test]
    fn colours_are_taken_out_of_log_lines() {
        assert_eq!(
            strip_ansi("\u{1b}[2m2026\u{1b}[0m \u{1b}[33m WARN\u{1b}[0m listening"),
            "2026  WARN listening"
        );
        assert_eq!(strip_ansi("plain"), "plain");
    }

    #[test]
    fn the_reason_is_the_last_error_line_and_the_status() {
        let o = Outcome {
            stderr: vec!["warming up".into(), "error: the broker is down".into()],
            code: Some(1),
            ..Outcome::default()
        };
        assert_eq!(o.reason(), "error: the broker is down (exit status 1)");
    }
}
