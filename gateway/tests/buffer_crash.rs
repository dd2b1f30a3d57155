//! `kill -9` at random points (reliability B.8, K2–K7): a child process (this test binary,
//! started again with an environment variable that selects the child's loop) appends,
//! acknowledges, evicts under a small budget and closes and reopens the buffer, printing what
//! it was told; the parent kills it with SIGKILL after a random delay, reopens the database
//! and checks that every sequence the child was told is committed is still there (or was
//! acknowledged or declared as a gap), that rows and gaps never overlap, that sequences
//! continue without reuse, and that `PRAGMA integrity_check` is ok.
//!
//! A second child runs under a file-size limit (`ulimit -f`, with SIGXFSZ ignored, so writes
//! past it fail with EFBIG like on a full disk; no root needed) and checks that appends fail
//! as `disk_full` without a panic while reads go on.

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use fivezero_gateway::buffer::{AppendError, Buffer, BufferOptions, FILE_NAME, RetainUntil};
use fivezero_gateway::config::Synchronous;
use fivezero_gateway::outbox::{Lane, Limits, Outbox};
use fivezero_gateway::poll::DeviceReadings;
use fivezero_model::wire::{Quality, Reading, Value};

const CHILD_DIR: &str = "FIVEZERO_BUFFER_CHILD_DIR";
const CHILD_MODE: &str = "FIVEZERO_BUFFER_CHILD_MODE";
const BOOT: &str = "crash-test-boot";
const T0: i64 = 1_750_000_000_000;

fn options(mode: &str) -> BufferOptions {
    let mut o = BufferOptions::new("gw-1", "site-1");
    o.boot_id = Arc::new(|| Some(BOOT.to_owned()));
    o.max_bytes = 48 * 1024;
    o.retain_until = if mode.contains("broker") {
        RetainUntil::BrokerAck
    } else {
        RetainUntil::SinkAck
    };
    o.synchronous = if mode.contains("normal") {
        Synchronous::Normal
    } else {
        Synchronous::Full
    };
    o
}

fn cycle(n: usize, i: u64) -> DeviceReadings {
    DeviceReadings {
        device: Arc::from("dev-1"),
        ts_ms: T0,
        cycle: i,
        readings: (0..n)
            .map(|k| Reading {
                ts: T0,
                device: "dev-1".into(),
                metric: format!("m.{k}"),
                value: Some(Value::Number((i * 7 + k as u64) as f64 * 0.25)),
                quality: Quality::Good,
                reason: None,
            })
            .collect(),
    }
}

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

/// The child's loop: runs only when started by the parent.
#[test]
fn child() {
    let (Ok(dir), Ok(mode)) = (std::env::var(CHILD_DIR), std::env::var(CHILD_MODE)) else {
        return;
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("runtime");
    rt.block_on(async move {
        if mode == "fsize" {
            fsize_child(Path::new(&dir)).await;
            return;
        }
        let dir = PathBuf::from(dir);
        let mut buffer = Buffer::open(&dir, &options(&mode)).expect("open");
        let limits = Limits {
            messages: 4,
            items_per_message: 120,
            bytes_per_message: 1 << 20,
        };
        let mut cursor = 0;
        for i in 0_u64.. {
            match buffer.append_readings(&cycle(50, i)).await {
                Ok(a) => say(&format!("A {} {}", a.first_seq, a.count)),
                Err(e) => say(&format!("E {e}")),
            }
            if i % 3 == 2 {
                let out = buffer
                    .pending(Lane::backlog(cursor), limits)
                    .await
                    .expect("pending");
                if let Some(m) = out.first() {
                    cursor = m.last_seq();
                    // Intent first: the deletion may commit before the kill lets us print.
                    say(&format!("K {} {}", m.first_seq, m.count));
                    buffer
                        .broker_acked(m.epoch, m.first_seq, m.count)
                        .await
                        .expect("ack");
                }
            }
            if i % 17 == 16 {
                let w = buffer.stats().committed_seq / 2;
                say(&format!("S {w}"));
                buffer.sink_acked(buffer.epoch(), w).await.expect("sink");
            }
            if i % 40 == 39 {
                buffer.close().await;
                say("R");
                buffer = Buffer::open(&dir, &options(&mode)).expect("reopen");
                cursor = 0;
            }
        }
    });
}

async fn fsize_child(dir: &Path) {
    let clock = Arc::new(AtomicI64::new(T0));
    let mut o = BufferOptions::new("gw-1", "site-1");
    let c = Arc::clone(&clock);
    o.clock = Arc::new(move || c.load(Ordering::SeqCst));
    let buffer = Buffer::open(dir, &o).expect("open");
    let mut stored = 0_u64;
    let mut failed = None;
    for i in 0..10_000 {
        match buffer.append_readings(&cycle(150, i)).await {
            Ok(_) => stored += 150,
            Err(e) => {
                failed = Some(e);
                break;
            }
        }
    }
    let failed = failed.expect("the file-size limit is reached");
    say(&format!("FAILED {} {}", failed.reason(), stored));
    assert!(matches!(failed, AppendError::DiskFull { .. }), "{failed}");
    assert!(buffer.stats().disk_failing);
    assert!(matches!(
        buffer.append_readings(&cycle(150, 0)).await,
        Err(AppendError::DiskFull { .. })
    ));
    let out = buffer
        .pending(
            Lane::backlog(0),
            Limits {
                messages: 100_000,
                items_per_message: 10_000,
                bytes_per_message: 1 << 20,
            },
        )
        .await
        .expect("reads go on with a full disk");
    let published: u64 = out.iter().map(|m| u64::from(m.count)).sum();
    say(&format!("PUBLISHED {published}"));
    // The sink confirms everything: deleting frees pages; the next probe may write again.
    let _ = buffer.sink_acked(buffer.epoch(), stored).await;
    clock.fetch_add(10_000, Ordering::SeqCst);
    match buffer.append_readings(&cycle(150, 0)).await {
        Ok(a) => say(&format!("RESUMED {}", a.first_seq)),
        Err(e) => say(&format!("STILL {}", e.reason())),
    }
    say(&format!(
        "DROPPED {}",
        buffer.stats().counters.dropped_disk_full
    ));
    say("DONE");
}

fn scratch(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!(
        "fivezero-buffer-crash-{}-{name}",
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("scratch");
    dir
}

fn child_command(dir: &Path, mode: &str) -> Command {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["child", "--exact", "--nocapture", "--test-threads=1", "-q"])
        .env(CHILD_DIR, dir)
        .env(CHILD_MODE, mode)
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    cmd
}

#[derive(Debug, Default)]
struct Told {
    appended: BTreeSet<u64>,
    acked: BTreeSet<u64>,
    sink: u64,
}

fn parse(lines: &[String]) -> Told {
    let mut told = Told::default();
    for line in lines {
        let words: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| {
            words
                .get(i)
                .and_then(|w| w.parse::<u64>().ok())
                .unwrap_or(0)
        };
        match words.first() {
            Some(&"A") => told.appended.extend(num(1)..num(1) + num(2)),
            Some(&"K") => told.acked.extend(num(1)..num(1) + num(2)),
            Some(&"S") => told.sink = told.sink.max(num(1)),
            _ => {}
        }
    }
    told
}

#[test]
fn kill_9_at_random_points_loses_nothing_committed() {
    let modes = ["sink", "broker-normal", "broker", "sink-normal"];
    for run in 0..10 {
        let mode = modes[run % modes.len()];
        let dir = scratch(&format!("kill-{run}"));
        let mut child = child_command(&dir, mode).spawn().expect("spawn child");
        let stdout = child.stdout.take().expect("stdout");
        let reader = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        std::thread::sleep(Duration::from_millis(rand::random_range(150..900)));
        child.kill().expect("SIGKILL");
        let _ = child.wait();
        let lines = reader.join().expect("reader");
        let told = parse(&lines);
        let count = |tag: &str| lines.iter().filter(|l| l.starts_with(tag)).count();
        eprintln!(
            "run {run} ({mode}): killed after {} appends, {} broker acks, {} sink acks, {} reopens",
            count("A "),
            count("K "),
            count("S "),
            count("R")
        );
        assert!(
            !told.appended.is_empty(),
            "run {run} ({mode}): the child appended nothing: {lines:?}"
        );

        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        rt.block_on(async {
            let buffer = Buffer::open(&dir, &options(mode)).expect("reopen after kill");
            let inv = buffer.inventory().await.expect("inventory");
            let committed = buffer.stats().committed_seq;
            eprintln!(
                "run {run}: reopened with {} rows and {} gaps, committed {committed}",
                inv.rows.len(),
                inv.gaps.len()
            );
            let epoch = buffer.epoch();
            let mut present = BTreeSet::new();
            for &(e, first, count, _) in &inv.rows {
                assert_eq!(e, epoch, "run {run}: a process crash keeps the epoch");
                for s in first..first + count {
                    assert!(present.insert(s), "run {run}: seq {s} stored twice");
                }
            }
            for &(_, first, count, _) in &inv.gaps {
                for s in first..first + count {
                    assert!(
                        present.insert(s),
                        "run {run}: seq {s} both stored and declared a gap"
                    );
                }
            }
            assert!(
                present.iter().all(|&s| s >= 1 && s <= committed),
                "run {run}: beyond the commits"
            );
            let last_told = told.appended.iter().next_back().copied().unwrap_or(0);
            assert!(
                committed >= last_told,
                "run {run}: committed {committed} < told {last_told}"
            );
            assert!(
                committed <= last_told + 50,
                "run {run}: more than one unreported commit"
            );
            for s in 1..=committed {
                let explained = present.contains(&s) || told.acked.contains(&s) || s <= told.sink;
                assert!(
                    explained,
                    "run {run} ({mode}): seq {s} of {committed} vanished unexplained"
                );
            }
            for &s in &told.appended {
                let kept = present.contains(&s) || told.acked.contains(&s) || s <= told.sink;
                assert!(kept, "run {run} ({mode}): committed seq {s} lost");
            }
            let next = buffer
                .append_readings(&cycle(5, 0))
                .await
                .expect("append after recovery");
            assert_eq!(
                next.first_seq,
                committed + 1,
                "run {run}: sequences continue, no reuse"
            );
            buffer.close().await;
        });
        let conn = rusqlite::Connection::open(dir.join(FILE_NAME)).expect("open");
        let ok: String = conn
            .query_row("PRAGMA integrity_check", [], |r| r.get(0))
            .expect("integrity_check");
        assert_eq!(ok, "ok", "run {run}");
        let _ = std::fs::remove_dir_all(&dir);
    }
}

#[test]
fn a_file_size_limit_fails_appends_as_disk_full_without_a_panic() {
    if !Path::new("/bin/bash").exists() {
        return;
    }
    let dir = scratch("fsize");
    let exe = std::env::current_exe().expect("test binary");
    // SIGXFSZ ignored survives exec, so a write past the limit fails with EFBIG instead of
    // killing the process; `ulimit -f` counts 1024-byte blocks in bash.
    let output = Command::new("/bin/bash")
        .arg("-c")
        .arg("trap '' XFSZ; ulimit -f 512; exec \"$0\" child --exact --nocapture --test-threads=1 -q")
        .arg(exe)
        .env(CHILD_DIR, &dir)
        .env(CHILD_MODE, "fsize")
        .output()
        .expect("run child");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "child failed: {stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(stdout.contains("FAILED disk_full"), "{stdout}");
    assert!(stdout.contains("PUBLISHED"), "{stdout}");
    assert!(stdout.contains("DONE"), "{stdout}");
    eprintln!("{stdout}");
    let _ = std::fs::remove_dir_all(&dir);
}
