//! The gateway config: the example, environment overrides, unknown keys through the `config`
//! crate, validation messages, and `fivezero-gateway check-config`.

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use common::scratch;
use fivezero_gateway::buffer::BufferOptions;
use fivezero_gateway::config::{
    Config, ConfigError, MqttProtocol, Parity, RetainUntil, SerialSettings, Synchronous, Transport,
};
use fivezero_gateway::poll::{LinkAddr, links};
use fivezero_gateway::publish::PublisherConfig;

fn example() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/gateway.toml")
}

fn env(vars: &[(&str, &str)]) -> Vec<(String, String)> {
    vars.iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// Writes `text` as `gateway.toml` in a scratch folder and loads it with `vars`.
fn load(name: &str, text: &str, vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
    let file = scratch(name).join("gateway.toml");
    std::fs::write(&file, text).unwrap();
    Config::load_with_env(&file, env(vars))
}

/// The problems of a refused config, one line each, with the file name.
fn problems(r: Result<Config, ConfigError>) -> Vec<String> {
    match r {
        Ok(_) => panic!("the config was accepted"),
        Err(e) => e.lines(),
    }
}

const MINIMAL: &str = r#"
[gateway]
id = "gw1"
site = "site1"

[[device]]
name = "meter"
profile = "eastron-sdm630"
tcp = "127.0.0.1:5020"
unit = 1
"#;

#[test]
fn the_example_config_is_valid_as_is() {
    let c = match Config::load_with_env(&example(), Vec::new()) {
        Ok(c) => c,
        Err(e) => panic!("{e}"),
    };
    assert_eq!(c.gateway.id, "qd-greensail-gw1");
    assert_eq!(c.gateway.site, "qingdao-greensail");
    assert_eq!(c.buffer.max_bytes, 2 * 1024 * 1024 * 1024);
    assert_eq!(c.buffer.max_age, Duration::from_secs(30 * 86_400));
    assert_eq!(c.buffer.synchronous, Synchronous::Full);
    assert_eq!(c.mqtt.protocol, MqttProtocol::V5);
    assert_eq!(c.poll.backoff_max, Duration::from_secs(60));
    let units: Vec<(&str, &str, u8)> = c
        .devices
        .iter()
        .map(|d| (&*d.name, d.profile.id.as_str(), d.unit))
        .collect();
    assert_eq!(
        units,
        [
            ("grid-meter", "sunspec-meter", 1),
            ("pv-roof-a", "sunspec-inverter", 2),
            ("boiler", "biomass-boiler-plc-template", 5),
            ("sorting-line-meter", "eastron-sdm630", 15),
            ("water-reused", "tuf-2000m", 17),
        ]
    );
    assert!(c.devices.iter().all(|d| d.transport
        == Transport::Tcp {
            addr: "127.0.0.1:5020".to_owned()
        }));
}

#[test]
fn defaults_fill_every_section_left_out() {
    let c = load("defaults", MINIMAL, &[]).unwrap();
    assert_eq!(c.gateway.state_dir, PathBuf::from("/var/lib/fivezero"));
    assert_eq!(c.mqtt.url.to_string(), "mqtt://127.0.0.1:1883");
    assert_eq!(c.mqtt.prefix, "fivezero/v1");
    assert_eq!(c.mqtt.keep_alive, Duration::from_secs(30));
    assert_eq!(c.poll.connect_timeout, Duration::from_secs(3));
    assert_eq!(c.poll.backoff_min, Duration::from_secs(1));
    assert_eq!(c.poll.inter_frame_delay, None);
    assert_eq!(c.buffer.retain_until, RetainUntil::SinkAck);
    assert_eq!(c.publish.window.get(), 32);
    assert_eq!(c.publish.items_per_message.get(), 1000);
    assert_eq!(c.publish.bytes_per_message.get(), 255 * 1024);
    assert_eq!(c.publish.replay_rate.get(), 200);
    assert_eq!(c.publish.stall_min, Duration::from_secs(120));
    let d = &c.devices[0];
    assert_eq!(d.interval, Duration::from_secs(5));
    assert_eq!(d.timeout, Duration::from_secs(1));
}

#[test]
fn environment_variables_override_file_keys_at_every_level() {
    let c = load(
        "env",
        MINIMAL,
        &[
            ("FIVEZERO_MQTT__URL", "mqtts://broker.example"),
            ("FIVEZERO_BUFFER__MAX_BYTES", "512 MiB"),
            ("FIVEZERO_POLL__BACKOFF_MAX", "2m"),
            ("FIVEZERO_DEVICE__0__UNIT", "9"),
            ("FIVEZERO_DEVICE__0__INTERVAL", "250ms"),
            ("fivezero_gateway__site", "site2"),
            ("FIVEZERO_LOG", "debug"),
        ],
    )
    .unwrap();
    assert!(c.mqtt.url.tls);
    assert_eq!(c.mqtt.url.port, 8883);
    assert_eq!(c.buffer.max_bytes, 512 * 1024 * 1024);
    assert_eq!(c.poll.backoff_max, Duration::from_secs(120));
    assert_eq!(c.devices[0].unit, 9);
    assert_eq!(c.devices[0].interval, Duration::from_millis(250));
    assert_eq!(c.gateway.site, "site2");
}

#[test]
fn an_unknown_key_in_the_file_is_an_error_naming_it_and_the_file() {
    let text = MINIMAL.replace("unit = 1", "unit = 1\nintervall = \"5s\"");
    let lines = problems(load("typo", &text, &[]));
    assert_eq!(lines.len(), 1);
    assert!(lines[0].contains("gateway.toml"), "{lines:?}");
    assert!(lines[0].contains("unknown field `intervall`"), "{lines:?}");
    assert!(lines[0].contains("device[0]"), "{lines:?}");
}

#[test]
fn an_unknown_section_is_an_error() {
    let text = format!("{MINIMAL}\n[mqqt]\nurl = \"mqtt://x\"\n");
    let lines = problems(load("section", &text, &[]));
    assert!(lines[0].contains("unknown field `mqqt`"), "{lines:?}");
}

#[test]
fn an_unknown_key_from_the_environment_is_an_error_naming_the_variable() {
    let lines = problems(load(
        "env-typo",
        MINIMAL,
        &[("FIVEZERO_MQTT__URLL", "mqtt://x")],
    ));
    assert!(lines[0].contains("unknown field `urll`"), "{lines:?}");
    assert!(lines[0].contains("FIVEZERO_MQTT__URLL"), "{lines:?}");
}

#[test]
fn an_override_of_a_device_that_is_not_in_the_file_is_refused() {
    let lines = problems(load(
        "env-device",
        MINIMAL,
        &[("FIVEZERO_DEVICE__3__UNIT", "2")],
    ));
    assert!(lines[0].contains("FIVEZERO_DEVICE__3__UNIT"), "{lines:?}");
    assert!(lines[0].contains("1 [[device]] entries"), "{lines:?}");
}

#[test]
fn values_of_the_wrong_form_are_errors_naming_the_key() {
    let text = MINIMAL.replace("unit = 1", "unit = 1\ninterval = \"5 parsecs\"");
    let lines = problems(load("form", &text, &[]));
    assert!(lines[0].contains("device[0].interval"), "{lines:?}");
    let lines = problems(load(
        "size",
        &format!("{MINIMAL}\n[buffer]\nmax_bytes = \"lots\"\n"),
        &[],
    ));
    assert!(lines[0].contains("buffer.max_bytes"), "{lines:?}");
}

#[test]
fn validation_names_the_file_and_the_device_and_reports_every_problem() {
    let text = r#"
[gateway]
id = "gw/1"
site = "site1"

[poll]
backoff_min = "10s"
backoff_max = "5s"

[[device]]
name = "pv-roof-a"
profile = "eastron-sdm630"
tcp = "10.0.0.21:502"
unit = 300

[[device]]
name = "pv-roof-a"
profile = "eastron-sdm630"
tcp = "10.0.0.21"
unit = 1
timeout = "0s"
"#;
    let dir = format!("{}/", scratch("invalid").display());
    let lines: Vec<String> = problems(load("invalid", text, &[]))
        .iter()
        .map(|l| l.replace(&dir, ""))
        .collect();
    let expect = [
        "gateway.toml: gateway.id \"gw/1\" contains '/'",
        "gateway.toml: poll.backoff_max 5s is below poll.backoff_min 10s",
        "gateway.toml: device \"pv-roof-a\": unit 300 is outside 0..=255",
        "gateway.toml: device \"pv-roof-a\": the name is used by another device",
        "gateway.toml: device \"pv-roof-a\": tcp \"10.0.0.21\" needs a port",
        "gateway.toml: device \"pv-roof-a\": timeout 0s is outside 10ms..=60s",
    ];
    for e in expect {
        assert!(
            lines.iter().any(|l| l.starts_with(e)),
            "no line starting {e:?} in\n{}",
            lines.join("\n")
        );
    }
    assert_eq!(lines.len(), expect.len(), "{}", lines.join("\n"));
}

#[test]
fn an_unknown_profile_id_lists_the_library_folder() {
    let text = MINIMAL.replace("eastron-sdm630", "eastron-sdm63");
    let lines = problems(load("unknown-profile", &text, &[]));
    assert_eq!(lines.len(), 1);
    let l = &lines[0];
    assert!(
        l.contains("device \"meter\": profile \"eastron-sdm63\" is not in the library folder"),
        "{l}"
    );
    assert!(
        l.contains(&fivezero_profiles::library_dir().display().to_string()),
        "{l}"
    );
    assert!(
        l.contains("eastron-sdm630"),
        "lists what the folder has: {l}"
    );
}

#[test]
fn a_profile_path_is_relative_to_the_config_file_and_its_problems_are_shown() {
    let dir = scratch("profile-path");
    let sdm = std::fs::read_to_string(fivezero_profiles::library_dir().join("eastron-sdm630.toml"))
        .unwrap();
    std::fs::create_dir_all(dir.join("profiles")).unwrap();
    std::fs::write(dir.join("profiles/my-meter.toml"), &sdm).unwrap();
    std::fs::write(
        dir.join("profiles/broken.toml"),
        sdm.replacen("type = \"f32\"", "type = \"f33\"", 1),
    )
    .unwrap();
    let ok = load(
        "profile-path",
        &MINIMAL.replace("eastron-sdm630", "profiles/my-meter.toml"),
        &[],
    )
    .unwrap();
    assert_eq!(ok.devices[0].profile.id, "my-meter");
    let lines = problems(load(
        "profile-path",
        &MINIMAL.replace("eastron-sdm630", "profiles/broken.toml"),
        &[],
    ));
    assert!(
        lines[0].contains("profiles/broken.toml is refused"),
        "{lines:?}"
    );
    assert!(
        lines[0].contains("broken.toml:"),
        "carries the profile's file:line: {lines:?}"
    );
}

#[test]
fn devices_on_one_serial_port_must_agree_on_its_settings() {
    let text = r#"
[gateway]
id = "gw1"
site = "site1"

[[device]]
name = "a"
profile = "eastron-sdm630"
rtu = "/dev/ttyUSB0"
baud = 9600
parity = "E"
unit = 1

[[device]]
name = "b"
profile = "eastron-sdm630"
rtu = "/dev/ttyUSB0"
baud = 19200
parity = "E"
unit = 2
"#;
    let lines = problems(load("serial", text, &[]));
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(
        lines[0].contains("device \"b\": serial settings 19200 8E1 on /dev/ttyUSB0 differ from device \"a\"'s 9600 8E1"),
        "{lines:?}"
    );
    let same = load("serial-ok", &text.replace("19200", "9600"), &[]).unwrap();
    let l = links(&same);
    assert_eq!(l.len(), 1, "one task serves the port");
    assert_eq!(l[0].devices, [0, 1]);
    let serial = SerialSettings {
        baud: 9600,
        parity: Parity::Even,
        data_bits: 8,
        stop_bits: 1,
    };
    assert_eq!(
        l[0].addr,
        LinkAddr::Serial {
            path: "/dev/ttyUSB0".to_owned(),
            serial
        }
    );
    assert_eq!(l[0].inter_frame_delay, Duration::from_nanos(4_010_417));
}

#[test]
fn transports_are_exclusive_and_serial_settings_belong_to_rtu() {
    let both = MINIMAL.replace("unit = 1", "unit = 1\nrtu = \"/dev/ttyUSB0\"");
    assert!(problems(load("both", &both, &[]))[0].contains("give only one of tcp, rtu"));
    let baud = MINIMAL.replace("unit = 1", "unit = 1\nbaud = 9600");
    assert!(problems(load("baud", &baud, &[]))[0].contains("baud only apply to a serial port"));
    let none = MINIMAL.replace("tcp = \"127.0.0.1:5020\"\n", "");
    assert!(problems(load("none", &none, &[]))[0].contains("say how to reach it"));
    let broadcast = MINIMAL
        .replace("tcp = \"127.0.0.1:5020\"", "rtu = \"/dev/ttyUSB0\"")
        .replace("unit = 1", "unit = 0");
    assert!(problems(load("broadcast", &broadcast, &[]))[0].contains("unit 0 is outside 1..=247"));
}

#[test]
fn tcp_devices_get_a_link_each_and_rtu_tcp_devices_share_one() {
    let text = r#"
[gateway]
id = "gw1"
site = "site1"

[[device]]
name = "a"
profile = "eastron-sdm630"
tcp = "127.0.0.1:5020"
unit = 1

[[device]]
name = "b"
profile = "eastron-sdm630"
tcp = "127.0.0.1:5020"
unit = 2

[[device]]
name = "c"
profile = "eastron-sdm630"
rtu_tcp = "10.0.0.50:4001"
unit = 1

[[device]]
name = "d"
profile = "eastron-sdm630"
rtu_tcp = "10.0.0.50:4001"
unit = 2
"#;
    let c = load("links", text, &[]).unwrap();
    let l = links(&c);
    let devices: Vec<Vec<usize>> = l.iter().map(|l| l.devices.clone()).collect();
    assert_eq!(devices, [vec![0], vec![1], vec![2, 3]]);
    assert!(l.iter().all(|l| l.inter_frame_delay.is_zero()));
}

fn gateway() -> Command {
    Command::new(env!("CARGO_BIN_EXE_fivezero-gateway"))
}

#[test]
fn check_config_prints_the_links_devices_and_requests_per_cycle() {
    let out = gateway()
        .arg("check-config")
        .arg(example())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(": ok: gateway \"qd-greensail-gw1\""),
        "{stdout}"
    );
    assert!(stdout.contains("link tcp 127.0.0.1:5020"), "{stdout}");
    let sdm = stdout
        .lines()
        .find(|l| l.contains("sorting-line-meter unit 15"))
        .unwrap_or_else(|| panic!("{stdout}"));
    assert!(sdm.contains("profile eastron-sdm630"), "{sdm}");
    assert!(sdm.contains("requests per cycle"), "{sdm}");
}

#[test]
fn check_config_exits_1_with_every_problem_on_stderr() {
    let dir = scratch("cli-bad");
    let file = dir.join("gateway.toml");
    std::fs::write(
        &file,
        MINIMAL
            .replace("unit = 1", "unit = 300")
            .replace("eastron-sdm630", "no-such-profile"),
    )
    .unwrap();
    let out = gateway().arg("check-config").arg(&file).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let stderr = String::from_utf8_lossy(&out.stderr);
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 2, "{stderr}");
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with(&file.display().to_string())),
        "{stderr}"
    );
    assert!(stderr.contains("unit 300 is outside 0..=255"), "{stderr}");
    assert!(stderr.contains("profile \"no-such-profile\""), "{stderr}");
}

#[test]
fn check_config_reports_an_unreadable_file() {
    let out = gateway()
        .arg("check-config")
        .arg("/nonexistent/gateway.toml")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("/nonexistent/gateway.toml: cannot be read")
    );
}

proptest::proptest! {
    #![proptest_config(proptest::test_runner::Config::with_cases(64))]

    /// Any text, with any override variables, is a config or a list of problems: never a
    /// panic.
    #[test]
    fn no_input_makes_loading_panic(
        text in "[\\[\\]a-z_=\"0-9. \n]{0,200}",
        var in "FIVEZERO_[A-Z_0-9]{0,20}",
        value in "[ -~]{0,20}",
    ) {
        let file = scratch("fuzz").join("gateway.toml");
        let _ = Config::from_toml(&file, &text, vec![(var.clone(), value.clone())]);
        let _ = Config::from_toml(&file, MINIMAL, vec![(var, value)]);
    }
}

#[test]
fn the_publish_section_and_retain_until_reach_the_publisher() {
    let text = format!(
        "{MINIMAL}\n[buffer]\nretain_until = \"broker_ack\"\n\n[publish]\nwindow = 8\n\
         items_per_message = 250\nbytes_per_message = \"64 KiB\"\nreplay_rate = 50\n\
         backoff_min = \"100ms\"\nbackoff_max = \"5s\"\nstall_min = \"2s\"\nstall_max = \"10s\"\n"
    );
    let c = load(
        "publish-section",
        &text,
        &[("FIVEZERO_PUBLISH__REPLAY_RATE", "75")],
    )
    .unwrap();
    assert_eq!(c.buffer.retain_until, RetainUntil::BrokerAck);
    let p = PublisherConfig::from_config_with_password(&c, Vec::new(), None).unwrap();
    assert_eq!(p.window.get(), 8);
    assert_eq!(p.items_per_message.get(), 250);
    assert_eq!(p.bytes_per_message.get(), 64 * 1024);
    assert_eq!(
        p.replay_rate.get(),
        75,
        "the environment overrides the file"
    );
    assert_eq!(p.retain_until, RetainUntil::BrokerAck);
    assert_eq!(
        (p.backoff_min, p.backoff_max),
        (Duration::from_millis(100), Duration::from_secs(5))
    );
    assert_eq!(
        (p.stall_min, p.stall_max),
        (Duration::from_secs(2), Duration::from_secs(10))
    );
    let options = BufferOptions::from_config(&c.gateway, &c.buffer);
    assert_eq!(options.retain_until, RetainUntil::BrokerAck);
}

#[test]
fn publish_values_out_of_range_are_each_named() {
    let text = format!(
        "{MINIMAL}\n[buffer]\nretain_until = \"forever\"\n\n[publish]\nwindow = 0\n\
         items_per_message = 20000\nbytes_per_message = \"100 B\"\nreplay_rate = -1\n\
         backoff_min = \"1ms\"\nstall_min = \"5m\"\nstall_max = \"1m\"\n"
    );
    let lines = problems(load("publish-range", &text, &[]));
    for expected in [
        "buffer.retain_until \"forever\" must be \"sink_ack\" or \"broker_ack\"",
        "publish.window 0 is outside 1..=65535",
        "publish.items_per_message 20000 is outside 1..=10000",
        "publish.bytes_per_message 100 B is outside 1 KiB..=255 MiB",
        "publish.replay_rate -1 is outside 1..=",
        "publish.backoff_min 1ms is below 10ms",
        "publish.stall_max 1m must be between publish.stall_min 5m and 1day",
    ] {
        assert!(
            lines.iter().any(|l| l.contains(expected)),
            "no problem saying {expected:?} in {lines:#?}"
        );
    }
    assert!(
        lines
            .iter()
            .all(|l| l.starts_with("gateway.toml") || l.contains("gateway.toml"))
    );
}
