//! Raw config in, validated [`Config`] out: every rule checked, every problem collected.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::num::{NonZeroU16, NonZeroU32, NonZeroUsize};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fivezero_model::topic::{check_prefix, check_segment};
use fivezero_model::wire::MAX_BATCH_READINGS;
use fivezero_profiles::{Profile, load_file};

use super::raw::{
    RawBuffer, RawConfig, RawDevice, RawGateway, RawMetrics, RawMqtt, RawPoll, RawPublish,
};
use super::{
    BufferConfig, Config, ConfigError, DeviceConfig, GatewayConfig, MetricsConfig, MqttConfig,
    MqttProtocol, MqttUrl, Parity, PollConfig, PublishConfig, RetainUntil, SerialSettings,
    Synchronous, Transport,
};

/// Shortest device interval.
const MIN_INTERVAL: Duration = Duration::from_millis(100);
/// Longest device interval.
const MAX_INTERVAL: Duration = Duration::from_secs(86_400);
/// Shortest request timeout.
const MIN_TIMEOUT: Duration = Duration::from_millis(10);
/// Longest request timeout.
const MAX_TIMEOUT: Duration = Duration::from_secs(60);
/// Longest inter-frame delay accepted as an override.
const MAX_INTER_FRAME_DELAY: Duration = Duration::from_secs(1);
/// Longest backoff.
const MAX_BACKOFF: Duration = Duration::from_secs(3_600);
/// Smallest `publish.bytes_per_message`.
const MIN_MESSAGE_BYTES: u64 = 1024;
/// Largest `publish.bytes_per_message`: 255 MiB, under MQTT's 256 MiB packet limit.
const MAX_MESSAGE_BYTES: u64 = 255 << 20;
/// How deep the library folder is searched for `<id>.toml`.
const LIBRARY_DEPTH: usize = 4;

/// The silence Modbus RTU requires between frames: 3.5 character times at the port's
/// settings (start bit, data bits, parity bit, stop bits per character), or the fixed
/// 1.75 ms the Modbus serial line specification sets above 19200 baud. Never zero.
#[must_use]
pub fn inter_frame_delay(serial: &SerialSettings) -> Duration {
    if serial.baud > 19_200 {
        return Duration::from_micros(1_750);
    }
    let bits = 1
        + u64::from(serial.data_bits)
        + u64::from(serial.parity != Parity::None)
        + u64::from(serial.stop_bits);
    // 3.5 characters = 7 half characters, in nanoseconds, rounded up.
    let nanos = (7 * bits * 1_000_000_000).div_ceil(2 * u64::from(serial.baud.max(1)));
    Duration::from_nanos(nanos.max(1))
}

/// Collects problems while validating.
#[derive(Debug, Default)]
pub(super) struct Problems(pub(super) Vec<String>);

impl Problems {
    pub(super) fn push(&mut self, p: impl Into<String>) {
        self.0.push(p.into());
    }
}

pub(super) fn validate(path: &Path, raw: RawConfig) -> Result<Config, ConfigError> {
    let base = path
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf);
    let base = if base.as_os_str().is_empty() {
        PathBuf::from(".")
    } else {
        base
    };
    let mut problems = Problems::default();
    let gateway = gateway(&raw.gateway, &base, &mut problems);
    let mqtt = mqtt(&raw.mqtt, &base, &mut problems);
    let buffer = buffer(&raw.buffer, &mut problems);
    let publish = publish(&raw.publish, &mut problems);
    let poll = poll(&raw.poll, &mut problems);
    let metrics = metrics(&raw.metrics, &mut problems);
    let devices = devices(&raw.devices, &gateway.profile_dir, &base, &mut problems);
    let kpi = super::site::kpi(&raw.kpi, &raw.devices, &devices, &mut problems);
    if problems.0.is_empty() {
        Ok(Config {
            file: path.to_path_buf(),
            gateway,
            mqtt,
            buffer,
            publish,
            poll,
            metrics,
            devices,
            kpi,
        })
    } else {
        Err(ConfigError::Invalid {
            file: path.to_path_buf(),
            problems: problems.0,
        })
    }
}

fn resolve(base: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base.join(p)
    }
}

fn gateway(raw: &RawGateway, base: &Path, problems: &mut Problems) -> GatewayConfig {
    if let Err(e) = check_segment(&raw.id) {
        problems.push(format!("gateway.id {:?} {e}", raw.id));
    }
    if let Err(e) = check_segment(&raw.site) {
        problems.push(format!("gateway.site {:?} {e}", raw.site));
    }
    if raw.state_dir.as_os_str().is_empty() {
        problems.push("gateway.state_dir is empty");
    }
    let profile_dir = raw
        .profile_dir
        .as_deref()
        .map_or_else(fivezero_profiles::library_dir, |d| resolve(base, d));
    if raw.shutdown_timeout.is_zero() || raw.shutdown_timeout > Duration::from_secs(300) {
        problems.push(format!(
            "gateway.shutdown_timeout {} must be between 1ms and 5m",
            humantime::format_duration(raw.shutdown_timeout)
        ));
    }
    GatewayConfig {
        id: raw.id.clone(),
        site: raw.site.clone(),
        state_dir: resolve(base, &raw.state_dir),
        profile_dir,
        shutdown_timeout: raw.shutdown_timeout,
    }
}

fn metrics(raw: &RawMetrics, problems: &mut Problems) -> MetricsConfig {
    let listen = raw.listen.trim();
    if listen.is_empty() {
        return MetricsConfig { listen: None };
    }
    match listen.parse::<std::net::SocketAddr>() {
        Ok(addr) => MetricsConfig { listen: Some(addr) },
        Err(_) => {
            problems.push(format!(
                "metrics.listen {listen:?} is not an address such as \"127.0.0.1:9464\" (empty turns the endpoint off)"
            ));
            MetricsConfig { listen: None }
        }
    }
}

fn mqtt(raw: &RawMqtt, base: &Path, problems: &mut Problems) -> MqttConfig {
    let url = parse_mqtt_url(&raw.url).unwrap_or_else(|e| {
        problems.push(format!("mqtt.url {:?}: {e}", raw.url));
        MqttUrl {
            tls: false,
            host: String::new(),
            port: 1883,
        }
    });
    if let Err(e) = check_prefix(&raw.prefix) {
        problems.push(format!("mqtt.prefix: {e}"));
    }
    if raw.username.as_deref().is_some_and(str::is_empty) {
        problems.push("mqtt.username is empty; leave it out when the broker wants none");
    }
    match (&raw.client_cert_file, &raw.client_key_file) {
        (Some(_), None) => problems.push("mqtt.client_cert_file is set without client_key_file"),
        (None, Some(_)) => problems.push("mqtt.client_key_file is set without client_cert_file"),
        _ => {}
    }
    if !url.tls && (raw.ca_file.is_some() || raw.client_cert_file.is_some()) && !url.host.is_empty()
    {
        problems.push("mqtt.ca_file and client certificates need an mqtts:// url");
    }
    let ka = raw.keep_alive;
    if ka < Duration::from_secs(1) || ka > Duration::from_secs(65_535) || ka.subsec_nanos() != 0 {
        problems.push(format!(
            "mqtt.keep_alive {} must be whole seconds from 1s to 65535s",
            humantime::format_duration(ka)
        ));
    }
    let protocol = match raw.protocol.as_str() {
        "5" => MqttProtocol::V5,
        "3.1.1" => MqttProtocol::V311,
        other => {
            problems.push(format!(
                "mqtt.protocol {other:?} must be \"5\" or \"3.1.1\""
            ));
            MqttProtocol::V5
        }
    };
    let file = |p: &Option<PathBuf>| p.as_deref().map(|p| resolve(base, p));
    MqttConfig {
        url,
        prefix: raw.prefix.clone(),
        username: raw.username.clone(),
        password_file: file(&raw.password_file),
        ca_file: file(&raw.ca_file),
        client_cert_file: file(&raw.client_cert_file),
        client_key_file: file(&raw.client_key_file),
        keep_alive: ka,
        protocol,
    }
}

/// Parses `mqtt://host[:port]` or `mqtts://host[:port]` (IPv6 in brackets).
fn parse_mqtt_url(url: &str) -> Result<MqttUrl, String> {
    let (tls, rest) = if let Some(rest) = url.strip_prefix("mqtts://") {
        (true, rest)
    } else if let Some(rest) = url.strip_prefix("mqtt://") {
        (false, rest)
    } else {
        return Err("must start with mqtt:// or mqtts://".to_owned());
    };
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    if rest.contains('/') || rest.contains('@') || rest.contains('?') {
        return Err(
            "takes only host and port; the user name goes in mqtt.username and the password \
             in mqtt.password_file"
                .to_owned(),
        );
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = split_host_port(rest, Some(default_port))?;
    Ok(MqttUrl { tls, host, port })
}

/// Splits `host:port` (`[v6]:port`); `default` is used when the port is left out, if allowed.
fn split_host_port(s: &str, default: Option<u16>) -> Result<(String, u16), String> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((host, after)) = rest.split_once(']') else {
            return Err("has '[' without ']'".to_owned());
        };
        match after.strip_prefix(':') {
            Some(port) => (host, Some(port)),
            None if after.is_empty() => (host, None),
            None => return Err(format!("has {after:?} after the IPv6 address")),
        }
    } else {
        match s.rsplit_once(':') {
            Some((host, _)) if host.contains(':') => {
                return Err("an IPv6 address needs brackets: \"[::1]:502\"".to_owned());
            }
            Some((host, port)) => (host, Some(port)),
            None => (s, None),
        }
    };
    if host.is_empty() {
        return Err("has no host".to_owned());
    }
    if host.chars().any(|c| c.is_whitespace() || c.is_control()) {
        return Err("has white space in the host".to_owned());
    }
    let port = match (port, default) {
        (Some(p), _) => match p.parse::<u16>() {
            Ok(0) | Err(_) => return Err(format!("port {p:?} is not a number in 1..=65535")),
            Ok(p) => p,
        },
        (None, Some(d)) => d,
        (None, None) => return Err("needs a port, as in \"10.0.0.21:502\"".to_owned()),
    };
    Ok((host.to_owned(), port))
}

fn buffer(raw: &RawBuffer, problems: &mut Problems) -> BufferConfig {
    let max_bytes = raw.max_bytes.as_u64();
    if max_bytes < 1 << 20 {
        problems.push(format!(
            "buffer.max_bytes {} is below the 1 MiB minimum",
            raw.max_bytes
        ));
    }
    if raw.max_age < Duration::from_secs(60) {
        problems.push(format!(
            "buffer.max_age {} is below the 1 min minimum",
            humantime::format_duration(raw.max_age)
        ));
    }
    let synchronous = match raw.synchronous.to_ascii_lowercase().as_str() {
        "full" => Synchronous::Full,
        "normal" => Synchronous::Normal,
        other => {
            problems.push(format!(
                "buffer.synchronous {other:?} must be \"full\" or \"normal\""
            ));
            Synchronous::Full
        }
    };
    let retain_until = match raw.retain_until.to_ascii_lowercase().as_str() {
        "sink_ack" => RetainUntil::SinkAck,
        "broker_ack" => RetainUntil::BrokerAck,
        other => {
            problems.push(format!(
                "buffer.retain_until {other:?} must be \"sink_ack\" or \"broker_ack\""
            ));
            RetainUntil::SinkAck
        }
    };
    BufferConfig {
        max_bytes,
        max_age: raw.max_age,
        synchronous,
        retain_until,
    }
}

/// A count within `1..=max`, or the problem named by `key`.
fn count<T: TryFrom<i64>>(key: &str, value: i64, max: i64, problems: &mut Problems) -> Option<T> {
    if (1..=max).contains(&value) {
        T::try_from(value).ok()
    } else {
        problems.push(format!("{key} {value} is outside 1..={max}"));
        None
    }
}

fn publish(raw: &RawPublish, problems: &mut Problems) -> PublishConfig {
    let fmt = humantime::format_duration;
    let window = count::<u16>("publish.window", raw.window, i64::from(u16::MAX), problems)
        .and_then(NonZeroU16::new)
        .unwrap_or(NonZeroU16::MIN);
    let items_per_message = count::<u32>(
        "publish.items_per_message",
        raw.items_per_message,
        i64::from(MAX_BATCH_READINGS),
        problems,
    )
    .and_then(NonZeroU32::new)
    .unwrap_or(NonZeroU32::MIN);
    let replay_rate = count::<u32>(
        "publish.replay_rate",
        raw.replay_rate,
        i64::from(u32::MAX),
        problems,
    )
    .and_then(NonZeroU32::new)
    .unwrap_or(NonZeroU32::MIN);
    let bytes = raw.bytes_per_message.as_u64();
    let bytes_per_message = if (MIN_MESSAGE_BYTES..=MAX_MESSAGE_BYTES).contains(&bytes) {
        usize::try_from(bytes).ok().and_then(NonZeroUsize::new)
    } else {
        problems.push(format!(
            "publish.bytes_per_message {} is outside 1 KiB..=255 MiB (MQTT's packet limit is 256 MiB)",
            raw.bytes_per_message
        ));
        None
    }
    .unwrap_or(NonZeroUsize::MIN);
    if raw.backoff_min < Duration::from_millis(10) {
        problems.push(format!(
            "publish.backoff_min {} is below 10ms",
            fmt(raw.backoff_min)
        ));
    }
    if raw.backoff_max < raw.backoff_min || raw.backoff_max > MAX_BACKOFF {
        problems.push(format!(
            "publish.backoff_max {} must be between publish.backoff_min {} and 1h",
            fmt(raw.backoff_max),
            fmt(raw.backoff_min)
        ));
    }
    if raw.stall_min < Duration::from_secs(1) {
        problems.push(format!(
            "publish.stall_min {} is below 1s",
            fmt(raw.stall_min)
        ));
    }
    if raw.stall_max < raw.stall_min || raw.stall_max > Duration::from_secs(86_400) {
        problems.push(format!(
            "publish.stall_max {} must be between publish.stall_min {} and 1day",
            fmt(raw.stall_max),
            fmt(raw.stall_min)
        ));
    }
    PublishConfig {
        window,
        items_per_message,
        bytes_per_message,
        replay_rate,
        backoff_min: raw.backoff_min,
        backoff_max: raw.backoff_max,
        stall_min: raw.stall_min,
        stall_max: raw.stall_max,
    }
}

fn poll(raw: &RawPoll, problems: &mut Problems) -> PollConfig {
    let fmt = humantime::format_duration;
    if raw.connect_timeout.is_zero() || raw.connect_timeout > MAX_TIMEOUT {
        problems.push(format!(
            "poll.connect_timeout {} must be above 0 and at most 60s",
            fmt(raw.connect_timeout)
        ));
    }
    if raw.backoff_min < Duration::from_millis(10) {
        problems.push(format!(
            "poll.backoff_min {} is below 10ms",
            fmt(raw.backoff_min)
        ));
    }
    if raw.backoff_max < raw.backoff_min {
        problems.push(format!(
            "poll.backoff_max {} is below poll.backoff_min {}",
            fmt(raw.backoff_max),
            fmt(raw.backoff_min)
        ));
    }
    if raw.backoff_max > MAX_BACKOFF {
        problems.push(format!(
            "poll.backoff_max {} is above 1h",
            fmt(raw.backoff_max)
        ));
    }
    if let Some(d) = raw.inter_frame_delay
        && d > MAX_INTER_FRAME_DELAY
    {
        problems.push(format!("poll.inter_frame_delay {} is above 1s", fmt(d)));
    }
    PollConfig {
        connect_timeout: raw.connect_timeout,
        backoff_min: raw.backoff_min,
        backoff_max: raw.backoff_max,
        inter_frame_delay: raw.inter_frame_delay,
    }
}

/// Profiles already loaded, by resolved path.
type ProfileCache = HashMap<PathBuf, Result<Arc<Profile>, String>>;

fn devices(
    raws: &[RawDevice],
    library: &Path,
    base: &Path,
    problems: &mut Problems,
) -> Vec<DeviceConfig> {
    let mut cache = ProfileCache::new();
    let mut names = BTreeSet::new();
    let mut out = Vec::with_capacity(raws.len());
    for (i, raw) in raws.iter().enumerate() {
        let who = if raw.name.is_empty() {
            format!("device[{i}]")
        } else {
            format!("device {:?}", raw.name)
        };
        let before = problems.0.len();
        if let Err(e) = check_segment(&raw.name) {
            problems.push(format!("{who}: name {e}"));
        } else if !names.insert(raw.name.clone()) {
            problems.push(format!("{who}: the name is used by another device"));
        }
        let transport = transport(raw, &who, problems);
        let unit = unit(raw, transport.as_ref(), &who, problems);
        timing(raw, &who, problems);
        let dir = raw
            .profile_dir
            .as_deref()
            .map_or_else(|| library.to_path_buf(), |d| resolve(base, d));
        let profile = profile(&raw.profile, &dir, base, &mut cache)
            .map_err(|e| problems.push(format!("{who}: {e}")))
            .ok();
        if problems.0.len() != before {
            continue;
        }
        if let (Some(transport), Some(unit), Some((profile_path, profile))) =
            (transport, unit, profile)
        {
            out.push(DeviceConfig {
                name: Arc::from(raw.name.as_str()),
                profile,
                profile_path,
                transport,
                unit,
                interval: raw.interval,
                timeout: raw.timeout,
            });
        }
    }
    shared_ports(&out, problems);
    out
}

fn transport(raw: &RawDevice, who: &str, problems: &mut Problems) -> Option<Transport> {
    let given: Vec<&str> = [
        raw.tcp.as_ref().map(|_| "tcp"),
        raw.rtu.as_ref().map(|_| "rtu"),
        raw.rtu_tcp.as_ref().map(|_| "rtu_tcp"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if given.len() != 1 {
        problems.push(if given.is_empty() {
            format!(
                "{who}: say how to reach it: tcp = \"host:port\", rtu = \"/dev/ttyUSB0\" or \
                 rtu_tcp = \"host:port\""
            )
        } else {
            format!("{who}: give only one of {}", given.join(", "))
        });
        return None;
    }
    let serial_keys: Vec<&str> = [
        raw.baud.map(|_| "baud"),
        raw.parity.as_ref().map(|_| "parity"),
        raw.data_bits.map(|_| "data_bits"),
        raw.stop_bits.map(|_| "stop_bits"),
    ]
    .into_iter()
    .flatten()
    .collect();
    if raw.rtu.is_none() && !serial_keys.is_empty() {
        problems.push(format!(
            "{who}: {} only apply to a serial port (rtu = \"/dev/...\"); a serial server \
             behind rtu_tcp keeps its own line settings",
            serial_keys.join(", ")
        ));
    }
    let mut addr = |key: &str, addr: &str| match split_host_port(addr, None) {
        Ok(_) => Some(addr.to_owned()),
        Err(e) => {
            problems.push(format!("{who}: {key} {addr:?} {e}"));
            None
        }
    };
    if let Some(a) = &raw.tcp {
        return addr("tcp", a).map(|addr| Transport::Tcp { addr });
    }
    if let Some(a) = &raw.rtu_tcp {
        return addr("rtu_tcp", a).map(|addr| Transport::RtuTcp { addr });
    }
    let path = raw.rtu.clone().unwrap_or_default();
    if path.trim().is_empty() {
        problems.push(format!(
            "{who}: rtu is empty; name the serial port, e.g. /dev/ttyUSB0"
        ));
        return None;
    }
    serial(raw, who, problems).map(|serial| Transport::Rtu { path, serial })
}

fn serial(raw: &RawDevice, who: &str, problems: &mut Problems) -> Option<SerialSettings> {
    let d = SerialSettings::default();
    let before = problems.0.len();
    let baud = raw.baud.unwrap_or(d.baud);
    if !(300..=4_000_000).contains(&baud) {
        problems.push(format!("{who}: baud {baud} is outside 300..=4000000"));
    }
    let parity = match raw
        .parity
        .as_deref()
        .map(str::to_ascii_uppercase)
        .as_deref()
    {
        None => d.parity,
        Some("N" | "NONE") => Parity::None,
        Some("E" | "EVEN") => Parity::Even,
        Some("O" | "ODD") => Parity::Odd,
        Some(_) => {
            problems.push(format!(
                "{who}: parity {:?} must be \"N\", \"E\" or \"O\"",
                raw.parity.as_deref().unwrap_or_default()
            ));
            d.parity
        }
    };
    let data_bits = raw.data_bits.unwrap_or(i64::from(d.data_bits));
    if !(5..=8).contains(&data_bits) {
        problems.push(format!("{who}: data_bits {data_bits} is outside 5..=8"));
    }
    let stop_bits = raw.stop_bits.unwrap_or(i64::from(d.stop_bits));
    if !(1..=2).contains(&stop_bits) {
        problems.push(format!("{who}: stop_bits {stop_bits} must be 1 or 2"));
    }
    (problems.0.len() == before).then(|| SerialSettings {
        baud,
        parity,
        data_bits: u8::try_from(data_bits).unwrap_or(8),
        stop_bits: u8::try_from(stop_bits).unwrap_or(1),
    })
}

fn unit(
    raw: &RawDevice,
    transport: Option<&Transport>,
    who: &str,
    problems: &mut Problems,
) -> Option<u8> {
    let serial_line = matches!(
        transport,
        Some(Transport::Rtu { .. } | Transport::RtuTcp { .. })
    ) || (transport.is_none() && (raw.rtu.is_some() || raw.rtu_tcp.is_some()));
    let u = raw.unit;
    if serial_line && !(1..=247).contains(&u) {
        problems.push(format!(
            "{who}: unit {u} is outside 1..=247, the addresses of devices on a serial line \
             (0 is broadcast, which no device answers)"
        ));
        return None;
    }
    match u8::try_from(u) {
        Ok(u) => Some(u),
        Err(_) => {
            problems.push(format!("{who}: unit {u} is outside 0..=255"));
            None
        }
    }
}

fn timing(raw: &RawDevice, who: &str, problems: &mut Problems) {
    let fmt = humantime::format_duration;
    let i = raw.interval;
    if i < MIN_INTERVAL || i > MAX_INTERVAL {
        problems.push(format!(
            "{who}: interval {} is outside 100ms..=1day",
            fmt(i)
        ));
    } else if !i.subsec_nanos().is_multiple_of(1_000_000) {
        problems.push(format!(
            "{who}: interval {} is not a whole number of milliseconds",
            fmt(i)
        ));
    }
    let t = raw.timeout;
    if t < MIN_TIMEOUT || t > MAX_TIMEOUT {
        problems.push(format!("{who}: timeout {} is outside 10ms..=60s", fmt(t)));
    }
}

/// Loads (once per file) the profile a device names; `Ok((path, profile))`.
fn profile(
    reference: &str,
    library: &Path,
    base: &Path,
    cache: &mut ProfileCache,
) -> Result<(PathBuf, Arc<Profile>), String> {
    let path = profile_path(reference, library, base)?;
    let loaded = cache
        .entry(path.clone())
        .or_insert_with(|| match load_file(&path) {
            Ok(p) => Ok(Arc::new(p)),
            Err(diagnostics) => {
                let lines: Vec<String> = diagnostics
                    .iter()
                    .filter(|d| d.severity == fivezero_profiles::Severity::Error)
                    .map(|d| format!("\n    {d}"))
                    .collect();
                Err(format!(
                    "profile {} is refused:{}",
                    path.display(),
                    lines.concat()
                ))
            }
        });
    loaded.clone().map(|p| (path, p))
}

/// Where a profile reference points: a path (it has a `/` or ends in `.toml`), or a library id
/// found as `<id>.toml` in the library folder or below it.
fn profile_path(reference: &str, library: &Path, base: &Path) -> Result<PathBuf, String> {
    if reference.is_empty() {
        return Err("profile is empty; name a library id or a .toml file".to_owned());
    }
    if reference.contains('/') || reference.contains('\\') || reference.ends_with(".toml") {
        let p = resolve(base, Path::new(reference));
        return if p.is_file() {
            Ok(p)
        } else {
            Err(format!("profile file {} does not exist", p.display()))
        };
    }
    let mut ids = BTreeMap::new();
    let listing = list_library(library, LIBRARY_DEPTH, &mut ids);
    if let Some(p) = ids.get(reference) {
        return Ok(p.clone());
    }
    let have = if ids.is_empty() {
        "which has no profiles".to_owned()
    } else {
        format!(
            "which has: {}",
            ids.keys().cloned().collect::<Vec<_>>().join(", ")
        )
    };
    match listing {
        Err(e) => Err(format!(
            "profile {reference:?}: the library folder {} cannot be read ({e}); set \
             gateway.profile_dir or give a path to a .toml file",
            library.display()
        )),
        Ok(()) => Err(format!(
            "profile {reference:?} is not in the library folder {} ({have}); give a library \
             id or a path to a .toml file",
            library.display()
        )),
    }
}

/// Every `*.toml` under `dir` (to `depth` levels), by file stem; the first found (in name
/// order, shallow first) wins.
fn list_library(
    dir: &Path,
    depth: usize,
    ids: &mut BTreeMap<String, PathBuf>,
) -> std::io::Result<()> {
    let mut entries: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(Result::ok)
        .map(|e| e.path())
        .collect();
    entries.sort();
    let mut folders = Vec::new();
    for p in entries {
        if p.is_dir() {
            folders.push(p);
        } else if p.extension().is_some_and(|e| e == "toml")
            && let Some(stem) = p.file_stem().and_then(|s| s.to_str())
        {
            ids.entry(stem.to_owned()).or_insert(p);
        }
    }
    if depth > 0 {
        for f in folders {
            // An unreadable sub-folder hides only its own profiles.
            let _ = list_library(&f, depth - 1, ids);
        }
    }
    Ok(())
}

/// Devices on one serial port must agree on its settings.
fn shared_ports(devices: &[DeviceConfig], problems: &mut Problems) {
    let mut first: BTreeMap<&str, (&str, SerialSettings)> = BTreeMap::new();
    for d in devices {
        if let Transport::Rtu { path, serial } = &d.transport {
            match first.get(path.as_str()) {
                None => {
                    first.insert(path, (&d.name, *serial));
                }
                Some((other, s)) if s != serial => problems.push(format!(
                    "device {:?}: serial settings {serial} on {path} differ from device \
                     {other:?}'s {s}; devices on one port share its settings",
                    &*d.name
                )),
                Some(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_and_port_split_with_ipv6_in_brackets() {
        assert_eq!(
            split_host_port("10.0.0.1:502", None),
            Ok(("10.0.0.1".to_owned(), 502))
        );
        assert_eq!(
            split_host_port("[::1]:5020", None),
            Ok(("::1".to_owned(), 5020))
        );
        assert_eq!(
            split_host_port("plc.local", Some(1883)),
            Ok(("plc.local".to_owned(), 1883))
        );
        assert!(split_host_port("plc.local", None).is_err());
        assert!(split_host_port("::1:502", None).is_err());
        assert!(split_host_port("host:0", None).is_err());
        assert!(split_host_port("host:99999", None).is_err());
        assert!(split_host_port(":502", None).is_err());
    }

    #[test]
    fn mqtt_urls_take_scheme_host_and_optional_port() {
        let u = parse_mqtt_url("mqtts://broker.example").unwrap();
        assert!(u.tls);
        assert_eq!((u.host.as_str(), u.port), ("broker.example", 8883));
        assert_eq!(parse_mqtt_url("mqtt://h:1884").unwrap().port, 1884);
        assert!(parse_mqtt_url("http://h").is_err());
        assert!(parse_mqtt_url("mqtt://user:pw@h").is_err());
    }

    #[test]
    fn the_inter_frame_delay_is_three_and_a_half_characters_or_1750_us_above_19200_baud() {
        let s = SerialSettings::default(); // 9600 8N1: 10 bits a character
        assert_eq!(inter_frame_delay(&s), Duration::from_nanos(3_645_834));
        let e = SerialSettings {
            parity: Parity::Even,
            ..s
        }; // 11 bits
        assert_eq!(inter_frame_delay(&e), Duration::from_nanos(4_010_417));
        let fast = SerialSettings { baud: 115_200, ..s };
        assert_eq!(inter_frame_delay(&fast), Duration::from_micros(1_750));
    }
}
