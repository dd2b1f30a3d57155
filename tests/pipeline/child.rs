//! The gateway or the sink as a child process, so a scenario can kill it with SIGKILL.
//!
//! The test binary runs itself again: `current_exe() --exact pipeline::child::child_process_entry
//! --nocapture --test-threads=1`, with [`ROLE_ENV`] saying which service and [`CONFIG_ENV`]
//! naming its config file. In the child, [`child_process_entry`] (a no-op in a normal test
//! run, where the variable is unset) loads the file and runs `fivezero_gateway::daemon::run`
//! or `fivezero_sink::service::run` until SIGTERM (a clean stop) or SIGKILL.
//!
//! - The whole environment of the test process is passed on (the gateway's config overrides,
//!   `FIVEZERO_FAILPOINTS` for a build with the gateway's `failpoints` feature, log filters);
//!   [`Child::spawn`] adds only the variables above.
//! - The child's stdout (libtest's own lines) goes nowhere; its stderr, with the services' log
//!   at `warn` (`FIVEZERO_ORACLE_CHILD_LOG` sets another filter), is appended to a file in the
//!   scenario's folder. [`Child::stderr_line`] waits for a line of one incarnation there (the
//!   `FAILPOINT <name>` marker of a halted gateway).
//! - A gateway child arms the points of `FIVEZERO_FAILPOINTS` as `fivezero-gateway run`
//!   does ([`Child::spawn_with_env`] sets it for one incarnation), and takes the byte budget
//!   of [`BUDGET_ENV`] (below the config's 1 MiB floor) after loading its config.
//! - A sink child writes its counters to [`STATS_ENV`]'s file every 100 ms (written aside and
//!   renamed, so a reader never sees half a line): a killed incarnation leaves its last
//!   figures behind, and the parent adds the incarnations up (the last 100 ms of each killed
//!   one are not counted).
//! - A child whose parent goes away (the test process killed) exits within half a second, so
//!   no orphan keeps polling or holding a database.
//! - Dropping a [`Child`] kills and reaps it: a failing scenario leaves no process behind.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::time::Duration;

/// Which service the child runs: `gateway` or `sink`.
pub(crate) const ROLE_ENV: &str = "FIVEZERO_ORACLE_CHILD";
/// The service's config file.
pub(crate) const CONFIG_ENV: &str = "FIVEZERO_ORACLE_CHILD_CONFIG";
/// Where a sink child writes its counters.
pub(crate) const STATS_ENV: &str = "FIVEZERO_ORACLE_CHILD_STATS";
/// The log filter of the child (default `warn,rumqttd=off`).
pub(crate) const LOG_ENV: &str = "FIVEZERO_ORACLE_CHILD_LOG";
/// A gateway child's byte budget, set after loading its config (below the validator's 1 MiB
/// floor), in bytes.
pub(crate) const BUDGET_ENV: &str = "FIVEZERO_ORACLE_CHILD_BUDGET";

/// How long a SIGTERM may take before the test gives up on a clean stop.
const TERM_LIMIT: Duration = Duration::from_secs(60);

/// The service a child runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Role {
    /// `fivezero_gateway::daemon::run`.
    Gateway,
    /// `fivezero_sink::service::run`.
    Sink,
}

impl Role {
    fn as_str(self) -> &'static str {
        match self {
            Self::Gateway => "gateway",
            Self::Sink => "sink",
        }
    }
}

/// The libtest name of [`child_process_entry`] in whichever test binary includes this module.
fn entry_name() -> String {
    let path = module_path!();
    let inner = path.split_once("::").map_or(path, |(_, rest)| rest);
    format!("{inner}::child_process_entry")
}

/// A running child; killed and reaped when dropped.
#[derive(Debug)]
pub(crate) struct Child {
    role: Role,
    process: Option<std::process::Child>,
    /// The file its stderr is appended to.
    log: PathBuf,
    /// The length of that file when this child started: its own lines come after.
    log_start: u64,
}

impl Child {
    /// Starts the test binary again as `role` with `config`; a sink child writes its counters
    /// to `stats`; stderr is appended to `log`.
    pub(crate) fn spawn(role: Role, config: &Path, stats: Option<&Path>, log: &Path) -> Self {
        Self::spawn_with_env(role, config, stats, log, &[])
    }

    /// [`Child::spawn`] with `env` added to the child's environment (for instance
    /// `FIVEZERO_FAILPOINTS` for this incarnation only).
    pub(crate) fn spawn_with_env(
        role: Role,
        config: &Path,
        stats: Option<&Path>,
        log: &Path,
        env: &[(String, String)],
    ) -> Self {
        let log_start = std::fs::metadata(log).map_or(0, |m| m.len());
        let exe = std::env::current_exe().expect("the test binary's path");
        let stderr = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .unwrap_or_else(|e| panic!("open {}: {e}", log.display()));
        let mut command = Command::new(exe);
        command
            .args(["--exact", &entry_name(), "--nocapture", "--test-threads=1"])
            .env(ROLE_ENV, role.as_str())
            .env(CONFIG_ENV, config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(stderr);
        if let Some(stats) = stats {
            command.env(STATS_ENV, stats);
        }
        command.envs(env.iter().map(|(k, v)| (k, v)));
        let process = command
            .spawn()
            .unwrap_or_else(|e| panic!("the {} child starts: {e}", role.as_str()));
        Self {
            role,
            process: Some(process),
            log: log.to_owned(),
            log_start,
        }
    }

    /// Waits (polling its stderr's file every 10 ms) until this child has written a whole
    /// line containing `needle`, and returns that line; an error when the child ends first
    /// or `limit` passes.
    pub(crate) async fn stderr_line(
        &mut self,
        needle: &str,
        limit: Duration,
    ) -> Result<String, String> {
        let deadline = std::time::Instant::now() + limit;
        loop {
            // Read before checking the exit, so a line written just before the end is seen.
            if let Some(line) = find_line(&self.log, self.log_start, needle) {
                return Ok(line);
            }
            if let Some(status) = self.exited() {
                return Err(format!(
                    "the {} child ended ({status}) without writing {needle:?}",
                    self.role.as_str()
                ));
            }
            if std::time::Instant::now() >= deadline {
                return Err(format!(
                    "the {} child wrote no {needle:?} within {limit:?}",
                    self.role.as_str()
                ));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    /// One look: the first whole line this child has written containing `needle`, if any.
    pub(crate) fn find_stderr_line(&self, needle: &str) -> Option<String> {
        find_line(&self.log, self.log_start, needle)
    }

    /// Sends SIGTERM (a clean stop) without waiting for the child to end.
    pub(crate) fn signal_term(&self) {
        let Some(p) = self.process.as_ref() else {
            return;
        };
        let sent = Command::new("kill")
            .args(["-TERM", &p.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(
            sent.success(),
            "SIGTERM to the {} child",
            self.role.as_str()
        );
    }

    /// The process id.
    pub(crate) fn id(&self) -> u32 {
        self.process.as_ref().map_or(0, std::process::Child::id)
    }

    /// The exit status if the child has ended on its own.
    pub(crate) fn exited(&mut self) -> Option<ExitStatus> {
        self.process
            .as_mut()
            .and_then(|p| p.try_wait().ok().flatten())
    }

    /// SIGKILL, and reaps it.
    pub(crate) fn kill(mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }

    /// SIGTERM, then waits (on the blocking pool) for the exit status; SIGKILL and a panic
    /// when the clean stop takes longer than a minute.
    pub(crate) async fn terminate(mut self) -> ExitStatus {
        let mut p = self.process.take().expect("a running child");
        let role = self.role.as_str();
        if let Ok(Some(status)) = p.try_wait() {
            return status;
        }
        let sent = Command::new("kill")
            .args(["-TERM", &p.id().to_string()])
            .status()
            .expect("kill(1) runs");
        assert!(sent.success(), "SIGTERM to the {role} child");
        let waited = tokio::task::spawn_blocking(move || {
            let deadline = std::time::Instant::now() + TERM_LIMIT;
            loop {
                match p.try_wait() {
                    Ok(Some(status)) => return Ok(status),
                    Ok(None) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(Duration::from_millis(20));
                    }
                    _ => {
                        let _ = p.kill();
                        let _ = p.wait();
                        return Err(());
                    }
                }
            }
        })
        .await
        .expect("the wait does not panic");
        waited.unwrap_or_else(|()| panic!("the {role} child did not stop within {TERM_LIMIT:?}"))
    }
}

impl Drop for Child {
    fn drop(&mut self) {
        if let Some(mut p) = self.process.take() {
            let _ = p.kill();
            let _ = p.wait();
        }
    }
}

/// The first whole line after byte `from` of `log` that contains `needle`.
fn find_line(log: &Path, from: u64, needle: &str) -> Option<String> {
    let bytes = std::fs::read(log).ok()?;
    let start = usize::try_from(from).ok()?.min(bytes.len());
    let text = String::from_utf8_lossy(&bytes[start..]);
    // Only lines ended by a newline: a line being written is not whole yet.
    let whole = text.rfind('\n').map_or("", |end| &text[..end]);
    whole
        .lines()
        .find(|l| l.contains(needle))
        .map(str::to_owned)
}

/// Counters a sink child writes, one line of numbers.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct SinkCounts {
    /// Messages received.
    pub(crate) received: u64,
    /// Readings and records newly stored.
    pub(crate) stored_items: u64,
    /// Sequences met again, identical (transport duplicates).
    pub(crate) duplicate_items: u64,
    /// Duplicates whose content differed (quarantined).
    pub(crate) conflicting: u64,
    /// Messages dead-lettered.
    pub(crate) dead_letters: u64,
    /// Store failures (retried).
    pub(crate) store_errors: u64,
    /// Connections to the broker made.
    pub(crate) connections: u64,
}

impl SinkCounts {
    /// The figures of a sink's statistics.
    pub(crate) fn of(stats: &fivezero_sink::stats::SinkStats) -> Self {
        let s = stats.snapshot();
        Self {
            received: s.received,
            stored_items: s.stored_items,
            duplicate_items: s.duplicate_items,
            conflicting: s.conflicting_duplicates,
            dead_letters: s.dead_letters_total(),
            store_errors: s.store_errors,
            connections: s.connections,
        }
    }

    fn line(&self) -> String {
        format!(
            "{} {} {} {} {} {} {}\n",
            self.received,
            self.stored_items,
            self.duplicate_items,
            self.conflicting,
            self.dead_letters,
            self.store_errors,
            self.connections
        )
    }

    /// Reads a file [`child_process_entry`] wrote; zero when it is absent or unreadable.
    pub(crate) fn read(path: &Path) -> Self {
        let text = std::fs::read_to_string(path).unwrap_or_default();
        let n: Vec<u64> = text
            .split_whitespace()
            .filter_map(|w| w.parse().ok())
            .collect();
        match n[..] {
            [
                received,
                stored_items,
                duplicate_items,
                conflicting,
                dead_letters,
                store_errors,
                connections,
            ] => Self {
                received,
                stored_items,
                duplicate_items,
                conflicting,
                dead_letters,
                store_errors,
                connections,
            },
            _ => Self::default(),
        }
    }

    /// The sum of two incarnations' figures.
    #[must_use]
    pub(crate) fn plus(self, o: Self) -> Self {
        Self {
            received: self.received + o.received,
            stored_items: self.stored_items + o.stored_items,
            duplicate_items: self.duplicate_items + o.duplicate_items,
            conflicting: self.conflicting + o.conflicting,
            dead_letters: self.dead_letters + o.dead_letters,
            store_errors: self.store_errors + o.store_errors,
            connections: self.connections + o.connections,
        }
    }
}

/// Resolves on SIGTERM.
async fn sigterm() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(e) => {
            eprintln!("oracle child: no SIGTERM handler ({e}); running until killed");
            std::future::pending::<()>().await;
        }
    }
}

/// Exits the process when its parent (the test) goes away.
fn exit_with_parent() {
    let parent = std::os::unix::process::parent_id();
    std::thread::spawn(move || {
        loop {
            std::thread::sleep(Duration::from_millis(500));
            if std::os::unix::process::parent_id() != parent {
                eprintln!("oracle child: the test process went away; exiting");
                std::process::exit(70);
            }
        }
    });
}

/// Writes the sink's counters to `path` every 100 ms.
async fn write_stats(stats: fivezero_sink::stats::SinkStats, path: PathBuf) {
    let aside = path.with_extension("tmp");
    loop {
        let line = SinkCounts::of(&stats).line();
        if std::fs::write(&aside, line).is_ok() {
            let _ = std::fs::rename(&aside, &path);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// The child's entry point: runs the service [`ROLE_ENV`] names until SIGTERM or SIGKILL.
/// Without the variable (every normal test run) it does nothing.
#[test]
fn child_process_entry() {
    let Ok(role) = std::env::var(ROLE_ENV) else {
        return;
    };
    let config = PathBuf::from(std::env::var_os(CONFIG_ENV).expect("the child's config file"));
    exit_with_parent();
    let filter = std::env::var(LOG_ENV).unwrap_or_else(|_| "warn,rumqttd=off".to_owned());
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
        .with_writer(std::io::stderr)
        .try_init();
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a runtime");
    runtime.block_on(async move {
        match role.as_str() {
            "gateway" => {
                let mut config = fivezero_gateway::config::Config::load(&config)
                    .unwrap_or_else(|e| panic!("{e}"));
                if let Some(budget) = std::env::var(BUDGET_ENV).ok().and_then(|b| b.parse().ok()) {
                    config.buffer.max_bytes = budget;
                }
                // As `fivezero-gateway run` does: the points FIVEZERO_FAILPOINTS names.
                fivezero_gateway::failpoints::arm_from_env()
                    .unwrap_or_else(|e| panic!("the failpoints: {e}"));
                fivezero_gateway::daemon::run(config, sigterm())
                    .await
                    .unwrap_or_else(|e| panic!("the gateway failed: {e:#}"));
            }
            "sink" => {
                let config =
                    fivezero_sink::config::Config::load(&config).unwrap_or_else(|e| panic!("{e}"));
                let stats = fivezero_sink::stats::SinkStats::default();
                let writer = std::env::var_os(STATS_ENV)
                    .map(|p| tokio::spawn(write_stats(stats.clone(), PathBuf::from(p))));
                let result = fivezero_sink::service::run(config, stats.clone(), sigterm()).await;
                if let Some(w) = writer {
                    w.abort();
                }
                if let Some(p) = std::env::var_os(STATS_ENV) {
                    let _ = std::fs::write(p, SinkCounts::of(&stats).line());
                }
                result.unwrap_or_else(|e| panic!("the sink failed: {e}"));
            }
            other => panic!("{ROLE_ENV}={other:?}: expected gateway or sink"),
        }
    });
}
