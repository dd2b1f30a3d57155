//! Failpoints for the kill -9 tests: the points K1–K7 of "kill -9 points in the gateway"
//! (`reference/reliability.md` §B.8), built on the [`fail`](https://docs.rs/fail) crate.
//!
//! # Build
//!
//! Only with the cargo feature `failpoints` (off by default). Without it every point compiles
//! to nothing and the `fail` crate is not linked: `cargo build --release -p fivezero-gateway`
//! and the Debian package have none. The workspace's test build has them: the root package
//! names `fivezero-gateway` as a dev-dependency with `features = ["failpoints"]`, so
//! `cargo test --workspace` (and `cargo build --workspace --all-targets`) builds the gateway
//! binary with them. `cargo test -p fivezero-gateway` alone does not; build it with
//! `cargo test -p fivezero-gateway --features failpoints` instead.
//!
//! Whether a binary has them: `fivezero-gateway failpoints` (a hidden subcommand) prints the
//! point names, one a line, and exits 0; a build without them says so on stderr and exits 1.
//!
//! # Points
//!
//! | name | K | where |
//! |---|---|---|
//! | `k1-after-poll` | K1 | a poll cycle was answered and decoded, before it is handed to the buffer (the daemon's hand-over task, once per group of cycles) |
//! | `k2-before-commit` | K2 | inside the buffer's append transaction: rows inserted and `next_seq` advanced, before `COMMIT` |
//! | `k3-after-commit` | K3 | the append's `COMMIT` returned, before the writer tells anyone (nothing of it is published yet) |
//! | `k4-after-publish` | K4 | rumqttc wrote a QoS 1 PUBLISH (its packet id reported), before its PUBACK is handled; the first after each connect is the retained `online` status |
//! | `k5-after-puback` | K5 | the broker's PUBACK of a readings or KPI message arrived, before the buffer records it |
//! | `k5-before-watermark-commit` | K5 | the sink's ack watermark arrived: inside the transaction that stores it, before `COMMIT` (with `retain_until = "sink_ack"`, the default, this is the acknowledgement the buffer keeps) |
//! | `k6-evict-before-gap` | K6 | inside an eviction transaction (byte budget or `max_age`): the evicted rows deleted, before their `Gap` is written |
//! | `k7-checkpoint` | K7 | at `PRAGMA wal_checkpoint(TRUNCATE)`, just before it runs: after a drain (WAL over 4 MiB and no row left), at a clean stop (after the shutdown's drain and the clean-stop mark), and after a full-disk append |
//!
//! Each is evaluated on the thread doing that work: K2, K3, K5 (watermark), K6 and K7 on the
//! buffer's writer thread, so blocking there stops every buffer operation; K1, K4 and K5
//! (PUBACK) on the tokio worker running the hand-over or the publisher task.
//!
//! # Arming them
//!
//! `FIVEZERO_FAILPOINTS` holds `name=actions` pairs separated by `;`, read once when
//! `fivezero-gateway run` starts (a reload on SIGHUP keeps them as they are):
//!
//! ```text
//! FIVEZERO_FAILPOINTS="k3-after-commit=2*off->return;k7-checkpoint=return"
//! ```
//!
//! `actions` is the `fail` crate's own syntax: `action[->action…]`, each action
//! `[p%][cnt*]task[(arg)]`; an action is tried only once the one before it is used up
//! (`cnt`) or did not fire (`p%`). Tasks: `off`, `return`, `sleep(ms)`, `panic(msg)`,
//! `print(msg)`, `pause`, `yield`, `delay(ms)`. So `2*off->return` lets the first two hits
//! pass and halts at the third; `25%return` halts at a hit with probability 1/4;
//! `5*off->1*return` halts at the sixth hit only.
//!
//! `return` is the one the harness uses: the thread writes one line, `FAILPOINT <name>`, to
//! stderr (flushed at once, never interleaved with a log line) and then blocks forever,
//! holding whatever it holds (a transaction, the hand-over, the publisher). The harness
//! waits for that line and sends SIGKILL. The other tasks do what `fail` says (`pause`
//! blocks silently until reconfigured, which a separate process cannot do; `panic` ends the
//! thread or task).
//!
//! A name not in the table above, or actions `fail` cannot parse, make `run` exit with status
//! 1 before it opens anything, the problem on stderr. Armed points are logged (WARN) at start.
//! In a build without the feature a set `FIVEZERO_FAILPOINTS` is ignored with a WARN.
//!
//! # Running the tests
//!
//! ```text
//! cargo test -p fivezero-gateway --features failpoints --test daemon_failpoints
//! ```
//!
//! (or `cargo test --workspace`). `gateway/tests/daemon_failpoints.rs` runs each point against
//! the simulator and a private Mosquitto; without the feature, or without Mosquitto, it prints
//! why it skips and passes.

/// K1: a poll cycle answered and decoded, before the buffer insert.
pub const K1_AFTER_POLL: &str = "k1-after-poll";
/// K2: inside the append transaction, rows inserted, before `COMMIT`.
pub const K2_BEFORE_COMMIT: &str = "k2-before-commit";
/// K3: after the append's `COMMIT`, before anything is published.
pub const K3_AFTER_COMMIT: &str = "k3-after-commit";
/// K4: a QoS 1 PUBLISH written, before its PUBACK is handled.
pub const K4_AFTER_PUBLISH: &str = "k4-after-publish";
/// K5: the broker's PUBACK of a message received, before the buffer records it.
pub const K5_AFTER_PUBACK: &str = "k5-after-puback";
/// K5: the sink's watermark received, inside its transaction before `COMMIT`.
pub const K5_BEFORE_WATERMARK_COMMIT: &str = "k5-before-watermark-commit";
/// K6: inside an eviction transaction, rows deleted, before the `Gap` is written.
pub const K6_EVICT_BEFORE_GAP: &str = "k6-evict-before-gap";
/// K7: at the WAL checkpoint (`TRUNCATE`), just before it runs.
pub const K7_CHECKPOINT: &str = "k7-checkpoint";

/// Every point, in K order.
pub const ALL: [&str; 8] = [
    K1_AFTER_POLL,
    K2_BEFORE_COMMIT,
    K3_AFTER_COMMIT,
    K4_AFTER_PUBLISH,
    K5_AFTER_PUBACK,
    K5_BEFORE_WATERMARK_COMMIT,
    K6_EVICT_BEFORE_GAP,
    K7_CHECKPOINT,
];

/// The variable that arms points at start.
pub const ENV: &str = "FIVEZERO_FAILPOINTS";

/// What a point writes to stderr before it blocks, followed by a space and its name.
pub const MARKER: &str = "FAILPOINT";

/// Whether this build has the failpoints (the cargo feature `failpoints`).
#[must_use]
pub const fn compiled_in() -> bool {
    cfg!(feature = "failpoints")
}

/// Splits a `FIVEZERO_FAILPOINTS` value into `(name, actions)` pairs; empty entries are
/// skipped. The actions are checked by `fail` when they are armed.
///
/// # Errors
/// Every entry without `=` or naming no point of [`ALL`], one message each.
pub fn parse(spec: &str) -> Result<Vec<(String, String)>, Vec<String>> {
    let mut out = Vec::new();
    let mut errors = Vec::new();
    for entry in spec.split(';').map(str::trim).filter(|e| !e.is_empty()) {
        match entry.split_once('=') {
            Some((name, actions)) if ALL.contains(&name.trim()) => {
                out.push((name.trim().to_owned(), actions.trim().to_owned()));
            }
            Some((name, _)) => errors.push(format!(
                "{ENV}: no failpoint named {:?}; the points are {}",
                name.trim(),
                ALL.join(", ")
            )),
            None => errors.push(format!("{ENV}: {entry:?} is not name=actions")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

/// Arms the points `FIVEZERO_FAILPOINTS` names (nothing when it is unset or empty) and logs
/// them; returns how many. Call once, when the daemon starts.
///
/// # Errors
/// The variable names an unknown point, is malformed, or holds actions `fail` refuses: one
/// line per problem.
#[cfg(feature = "failpoints")]
pub fn arm_from_env() -> Result<usize, String> {
    let Some(spec) = std::env::var_os(ENV) else {
        return Ok(0);
    };
    let spec = spec
        .into_string()
        .map_err(|_| format!("{ENV} is not UTF-8"))?;
    let points = parse(&spec).map_err(|e| e.join("\n"))?;
    for (name, actions) in &points {
        fail::cfg(name.as_str(), actions).map_err(|e| format!("{ENV}: {name}={actions}: {e}"))?;
        tracing::warn!(point = %name, %actions, "Failpoint armed (test build).");
    }
    Ok(points.len())
}

/// Without the feature: a set `FIVEZERO_FAILPOINTS` is only reported (WARN), never read.
///
/// # Errors
/// None; the signature is the one of the build with failpoints.
#[cfg(not(feature = "failpoints"))]
#[allow(clippy::unnecessary_wraps)]
pub fn arm_from_env() -> Result<usize, String> {
    if std::env::var_os(ENV).is_some_and(|v| !v.is_empty()) {
        tracing::warn!(
            "{ENV} is set but this build has no failpoints (cargo feature `failpoints`); ignored."
        );
    }
    Ok(0)
}

/// Evaluates the point `name`: when its action is `return`, writes `FAILPOINT <name>` to
/// stderr and blocks the calling thread forever. Use through `failpoint!`.
#[cfg(feature = "failpoints")]
#[doc(hidden)]
pub fn hit(name: &'static str) {
    if fail::eval(name, |_| ()).is_some() {
        halt(name);
    }
}

#[cfg(feature = "failpoints")]
fn halt(name: &str) -> ! {
    use std::io::Write as _;
    {
        // One write of the whole line under the lock: a log line cannot cut into it.
        let mut err = std::io::stderr().lock();
        let _ = err.write_all(format!("{MARKER} {name}\n").as_bytes());
        let _ = err.flush();
    }
    loop {
        std::thread::park();
    }
}

/// Marks a failpoint: `failpoint!(failpoints::K3_AFTER_COMMIT);`. Without the cargo feature
/// `failpoints` it only names the constant (so the imports stay used) and compiles to nothing.
macro_rules! failpoint {
    ($name:expr) => {{
        #[cfg(feature = "failpoints")]
        $crate::failpoints::hit($name);
        #[cfg(not(feature = "failpoints"))]
        let _: &str = $name;
    }};
}
pub(crate) use failpoint;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_names_points_with_fail_actions() {
        let points = parse(" k3-after-commit=2*off->return ; ;k7-checkpoint=return;").unwrap();
        assert_eq!(
            points,
            vec![
                ("k3-after-commit".to_owned(), "2*off->return".to_owned()),
                ("k7-checkpoint".to_owned(), "return".to_owned()),
            ]
        );
        assert_eq!(parse("").unwrap(), Vec::new());
    }

    #[test]
    fn an_unknown_point_or_a_malformed_entry_is_refused_by_name() {
        let errors = parse("k9-nowhere=return;k1-after-poll").unwrap_err();
        assert_eq!(errors.len(), 2);
        assert!(errors[0].contains("\"k9-nowhere\""), "{errors:?}");
        assert!(errors[1].contains("not name=actions"), "{errors:?}");
    }

    #[test]
    fn every_point_name_is_distinct_and_k_numbered() {
        for (i, a) in ALL.iter().enumerate() {
            assert!(a.starts_with('k'), "{a}");
            assert!(!ALL[i + 1..].contains(a), "{a} twice");
        }
    }
}
