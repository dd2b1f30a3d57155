//! Property-based fuzzing of the HTTP API from its own OpenAPI document with Schemathesis
//! (`pip install schemathesis`; the `st` command). A whole sink runs in this process
//! (embedded broker on a free port, SQLite in a scratch folder, HTTP on a free port, tokens
//! on) over known data, and `st run` sends generated requests to every documented operation
//! and checks each answer against the document.
//!
//! Without the `schemathesis` (or `st`) command the test prints "skipped" and passes;
//! `.ci/run` installs it. `FIVEZERO_SCHEMATHESIS_EXAMPLES` (default 300 per operation and
//! phase, about a minute) and `FIVEZERO_SCHEMATHESIS_SEED` (default fixed, so CI runs are
//! reproducible) tune the run.

mod common;

#[path = "common/fixture.rs"]
mod fixture;

#[path = "common/http.rs"]
mod http;

use std::process::Stdio;
use std::time::Duration;

use common::{LIMIT, Sink, eventually, free_port, scratch};
use fivezero_sink::config::hash_token;
use fivezero_sink::store::AnyStore;
use fivezero_sink::store::sqlite::SqliteStore;

/// The checks run on every answer, and why the others are left out.
///
/// Left out:
/// - `positive_data_acceptance`: the document types `from`, `to` and `step` as patterned
///   strings, but the API also refuses schema-valid combinations on purpose (`from` after
///   `to`, a range longer than `http.max_range`, more buckets than `http.max_rows`), with a
///   documented 400/422; the check would call those refusals failures.
/// - `use_after_free`, `ensure_resource_availability`, `object_level_authorization`: the API
///   is read-only and has no resources created or deleted by requests.
const CHECKS: &[&str] = &[
    "not_a_server_error",
    "status_code_conformance",
    "content_type_conformance",
    "response_headers_conformance",
    "response_schema_conformance",
    "negative_data_rejection",
    "missing_required_header",
    "unsupported_method",
    "allow_header_conformance",
    "ignored_auth",
];

/// The Schemathesis command, if installed: `schemathesis`, or `st` when its help says it is
/// Schemathesis (another program may be called `st`).
fn schemathesis() -> Option<String> {
    ["schemathesis", "st"].into_iter().find_map(|cmd| {
        std::process::Command::new(cmd)
            .arg("--help")
            .stdin(Stdio::null())
            .stderr(Stdio::null())
            .output()
            .ok()
            .filter(|o| {
                o.status.success() && String::from_utf8_lossy(&o.stdout).contains("API testing")
            })
            .map(|_| cmd.to_owned())
    })
}

/// The longest the Schemathesis run may take (it takes 1–2 minutes with the defaults).
const RUN_LIMIT: Duration = Duration::from_secs(600);

/// Runs `cmd` to completion, killing it after `limit`; its output, read while it runs.
fn run_with_deadline(mut cmd: std::process::Command, limit: Duration) -> std::process::Output {
    use std::io::Read;
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("schemathesis starts");
    let mut pipe = child.stdout.take().unwrap();
    let stdout = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = pipe.read_to_end(&mut v);
        v
    });
    let mut pipe = child.stderr.take().unwrap();
    let stderr = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = pipe.read_to_end(&mut v);
        v
    });
    let deadline = std::time::Instant::now() + limit;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("schemathesis did not finish within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    std::process::Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

/// Steers part of the generated values to the known data, so the fuzzer gets past "no such
/// site" into the series, KPI and coverage code: values from these lists with the given
/// probability, free values otherwise.
fn config_toml() -> String {
    let times = [
        "2026-06-01T00:00:00Z",
        "2026-06-01T01:00:00Z",
        "2026-06-01T08:00:00+08:00",
        "2026-06-02T00:00:00Z",
        "2026-07-01T00:00:00Z",
        "1780272000000",
        "1780279200000",
        "1780358400000",
    ];
    let list = |v: &[&str]| {
        v.iter()
            .map(|x| format!("{x:?}"))
            .collect::<Vec<_>>()
            .join(", ")
    };
    format!(
        "[dictionaries.sites]\nvalues = [{}]\n\
         [dictionaries.devices]\nvalues = [{}]\n\
         [dictionaries.metrics]\nvalues = [{}]\n\
         [dictionaries.times]\nvalues = [{}]\n\
         [parameters]\n\
         \"path.site\" = {{ dictionary = \"sites\", probability = 0.7 }}\n\
         \"query.device\" = {{ dictionary = \"devices\", probability = 0.5 }}\n\
         \"query.metric\" = {{ dictionary = \"metrics\", probability = 0.5 }}\n\
         \"query.from\" = {{ dictionary = \"times\", probability = 0.5 }}\n\
         \"query.to\" = {{ dictionary = \"times\", probability = 0.5 }}\n",
        list(&[fixture::SITE]),
        list(&[fixture::METER, "weather"]),
        list(&["electricity.import_energy", "ambient.temperature"]),
        list(&times),
    )
}

fn env_number(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn schemathesis_finds_no_answer_that_breaks_the_openapi_document() {
    let Some(st) = schemathesis() else {
        println!("skipped: the schemathesis CLI (st) is not installed; pip install schemathesis");
        return;
    };
    let dir = scratch("schemathesis");
    let db = dir.join("sink.db");
    {
        let store = AnyStore::Sqlite(SqliteStore::open(&db).await.unwrap());
        fixture::fill(&store).await;
        fixture::fill_pillars(&store).await;
    }
    let (mqtt_port, http_port) = (free_port(), free_port());
    let text = format!(
        "[sink]\nclient_id = \"sink-st-{:08x}\"\nshutdown_timeout = \"5s\"\n\
         [storage]\nurl = \"sqlite://{}\"\n\
         [mqtt]\nbroker = \"embedded\"\nlisten = \"127.0.0.1:{mqtt_port}\"\n\
         [http]\nlisten = \"127.0.0.1:{http_port}\"\n\
         [[http.tokens]]\nname = \"fuzz-read\"\nscope = \"read\"\nsha256 = \"{}\"\n\
         [[http.tokens]]\nname = \"fuzz-admin\"\nscope = \"admin\"\nsha256 = \"{}\"\n",
        rand::random::<u32>(),
        db.display(),
        hash_token(fixture::READ),
        hash_token(fixture::ADMIN),
    );
    let sink = Sink::start(&text, mqtt_port).await;
    let addr: std::net::SocketAddr = ([127, 0, 0, 1], http_port).into();
    eventually(
        "the HTTP API answers /readyz with 200",
        LIMIT,
        || async move {
            tokio::net::TcpStream::connect(addr).await.is_ok()
                && http::get_with(addr, "/readyz", &[]).await.status == 200
        },
    )
    .await;

    let examples = env_number("FIVEZERO_SCHEMATHESIS_EXAMPLES", 300);
    let seed = env_number("FIVEZERO_SCHEMATHESIS_SEED", 5050);
    let junit_path = dir.join("junit.xml");
    let config = dir.join("schemathesis.toml");
    std::fs::write(&config, config_toml()).unwrap();
    let mut cmd = std::process::Command::new(&st);
    cmd.arg("--config-file")
        .arg(&config)
        .arg("run")
        .arg(format!("http://{addr}/api/v1/openapi.json"))
        .args(["--checks", &CHECKS.join(",")])
        .args([
            "--header",
            &format!("Authorization: Bearer {}", fixture::ADMIN),
        ])
        .args(["--max-examples", &examples.to_string()])
        .args(["--seed", &seed.to_string()])
        .args(["--workers", "2", "--request-timeout", "30"])
        .args(["--report", "junit"])
        .arg("--report-junit-path")
        .arg(&junit_path)
        // Its example database and reports go to the scratch folder, not the source tree.
        .current_dir(&dir)
        .env("NO_COLOR", "1")
        .env("SCHEMATHESIS_HOOKS", "")
        .stdin(Stdio::null());
    let out = tokio::task::spawn_blocking(move || run_with_deadline(cmd, RUN_LIMIT))
        .await
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    println!("{stdout}");
    eprintln!("{}", String::from_utf8_lossy(&out.stderr));
    let junit = std::fs::read_to_string(&junit_path).unwrap_or_default();
    let generated = stdout
        .lines()
        .skip_while(|l| !l.starts_with("Test cases:"))
        .nth(1)
        .unwrap_or("")
        .trim();
    println!(
        "schemathesis: {} operations tested, seed {seed}, at most {examples} examples per \
         operation and phase; test cases: {generated}",
        junit.matches("<testcase").count(),
    );
    assert!(
        out.status.success(),
        "schemathesis found answers that break the OpenAPI document (see above); reproduce \
         with FIVEZERO_SCHEMATHESIS_SEED={seed}"
    );
    sink.stop().await.unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}
