//! Scenario files: which devices a simulated park has and how their physics are set.
//!
//! ```toml
//! [site]
//! name = "qingdao-greensail"
//! latitude = 36.07
//! longitude = 120.38
//! timezone = "Asia/Shanghai"
//! start = "2026-06-21T00:00:00+08:00"   # simulated time when the simulator starts
//!
//! [simulation]
//! seed = 42          # same seed, same values at the same simulated time
//! step = "1s"        # physics integration step, in simulated time
//!
//! [[device]]
//! name = "grid-meter"
//! profile = "eastron-sdm630"   # an id from the profile library, or a path to a .toml file
//! unit_id = 1
//! listener = "main"            # devices on one listener share a TCP port, like a serial-to-TCP gateway
//! physics = "grid_meter"       # which model drives the device; see the physics module
//! [device.params]              # model parameters, checked by the model
//! ```
//!
//! Paths in `profile` are relative to the scenario file. Listener `main` binds the address
//! given on the command line; other listeners bind the addresses in `[listeners]`, or a free
//! port on the same host when they are not listed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use fivezero_profiles::Profile;
use serde::Deserialize;
use thiserror::Error;

/// The listener every device uses unless it names another.
pub const MAIN_LISTENER: &str = "main";

/// A loaded, checked scenario.
#[derive(Debug, Clone)]
pub struct Scenario {
    /// Where the park is.
    pub site: Site,
    /// Seed of every random process (clouds, EV arrivals, noise).
    pub seed: u64,
    /// Physics step in simulated time.
    pub step: Duration,
    /// Addresses of listeners other than `main`, as configured.
    pub listeners: BTreeMap<String, String>,
    /// The devices, in file order; their index is their id in [`crate::Physics`].
    pub devices: Vec<DeviceSpec>,
}

/// Location and clock of the simulated park.
#[derive(Debug, Clone)]
pub struct Site {
    /// Site id, as the gateway config will name it.
    pub name: String,
    /// Degrees north.
    pub latitude: f64,
    /// Degrees east.
    pub longitude: f64,
    /// IANA time zone of the site (for daily patterns).
    pub timezone: String,
    /// Simulated UTC milliseconds at simulator start.
    pub start_ms: i64,
}

/// One simulated device.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// Unique device name.
    pub name: String,
    /// The profile the device is served with.
    pub profile: Arc<Profile>,
    /// Modbus unit id (1..=247).
    pub unit_id: u8,
    /// The listener (TCP port) it answers on.
    pub listener: String,
    /// The physics model that drives it.
    pub physics: String,
    /// Parameters of the model.
    pub params: toml::Table,
}

/// Why a scenario was refused.
#[derive(Debug, Error)]
pub enum ScenarioError {
    /// The file could not be read.
    #[error("{path}: cannot read the scenario: {source}")]
    Read {
        /// The scenario file.
        path: PathBuf,
        /// The I/O error.
        source: std::io::Error,
    },
    /// The TOML is malformed or has unknown keys.
    #[error("{path}: {message}")]
    Syntax {
        /// The scenario file.
        path: PathBuf,
        /// What serde and toml said, with line and column.
        message: String,
    },
    /// A rule of the format is broken.
    #[error("{path}: {message}")]
    Invalid {
        /// The scenario file.
        path: PathBuf,
        /// What is wrong and where.
        message: String,
    },
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScenario {
    site: RawSite,
    #[serde(default)]
    simulation: RawSimulation,
    #[serde(default)]
    listeners: BTreeMap<String, String>,
    #[serde(rename = "device")]
    devices: Vec<RawDevice>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSite {
    name: String,
    latitude: f64,
    longitude: f64,
    timezone: String,
    start: String,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawSimulation {
    seed: Option<u64>,
    step: Option<String>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    name: String,
    profile: String,
    unit_id: u8,
    listener: Option<String>,
    physics: String,
    #[serde(default)]
    params: toml::Table,
}

impl Scenario {
    /// Reads a scenario file, resolving profiles from `library` (ids) or relative to the file
    /// (paths ending in `.toml`).
    ///
    /// # Errors
    /// A [`ScenarioError`] naming the file and the problem.
    pub fn load(path: &Path, library: &Path) -> Result<Self, ScenarioError> {
        let text = std::fs::read_to_string(path).map_err(|source| ScenarioError::Read {
            path: path.to_path_buf(),
            source,
        })?;
        Self::parse(path, &text, library)
    }

    /// Parses scenario text; `path` names it in errors and anchors relative profile paths.
    ///
    /// # Errors
    /// A [`ScenarioError`] naming the file and the problem.
    pub fn parse(path: &Path, text: &str, library: &Path) -> Result<Self, ScenarioError> {
        let invalid = |message: String| ScenarioError::Invalid {
            path: path.to_path_buf(),
            message,
        };
        let raw: RawScenario = toml::from_str(text).map_err(|e| ScenarioError::Syntax {
            path: path.to_path_buf(),
            message: e.to_string(),
        })?;
        let start: jiff::Timestamp = raw.site.start.parse().map_err(|e| {
            invalid(format!(
                "site.start {:?} is not an RFC 3339 time such as 2026-06-21T00:00:00+08:00: {e}",
                raw.site.start
            ))
        })?;
        if !(-90.0..=90.0).contains(&raw.site.latitude)
            || !(-180.0..=180.0).contains(&raw.site.longitude)
        {
            return Err(invalid(
                "site.latitude must be within ±90 and site.longitude within ±180".into(),
            ));
        }
        jiff::tz::TimeZone::get(&raw.site.timezone)
            .map_err(|e| invalid(format!("site.timezone {:?}: {e}", raw.site.timezone)))?;
        let step = match raw.simulation.step {
            Some(s) => humantime::parse_duration(&s)
                .ok()
                .filter(|d| *d >= Duration::from_millis(10) && *d <= Duration::from_secs(60))
                .ok_or_else(|| {
                    invalid(format!(
                        "simulation.step {s:?} must be a duration from 10ms to 60s"
                    ))
                })?,
            None => Duration::from_secs(1),
        };
        if raw.devices.is_empty() {
            return Err(invalid("the scenario has no [[device]]".into()));
        }
        let base = path.parent().unwrap_or(Path::new("."));
        let mut profiles: BTreeMap<String, Arc<Profile>> = BTreeMap::new();
        let mut seen = BTreeMap::new();
        let mut devices = Vec::with_capacity(raw.devices.len());
        for d in raw.devices {
            let listener = d.listener.unwrap_or_else(|| MAIN_LISTENER.to_owned());
            if let Some(other) = seen.insert((listener.clone(), d.unit_id), d.name.clone()) {
                return Err(invalid(format!(
                    "devices `{other}` and `{}` both use unit id {} on listener `{listener}`",
                    d.name, d.unit_id
                )));
            }
            if !(1..=247).contains(&d.unit_id) {
                return Err(invalid(format!(
                    "device `{}`: unit_id {} is outside 1..=247",
                    d.name, d.unit_id
                )));
            }
            if devices.iter().any(|x: &DeviceSpec| x.name == d.name) {
                return Err(invalid(format!("device name `{}` is used twice", d.name)));
            }
            let profile = match profiles.get(&d.profile) {
                Some(p) => Arc::clone(p),
                None => {
                    let file = if Path::new(&d.profile)
                        .extension()
                        .is_some_and(|e| e == "toml")
                    {
                        base.join(&d.profile)
                    } else {
                        library.join(format!("{}.toml", d.profile))
                    };
                    let loaded = fivezero_profiles::load_file(&file).map_err(|ds| {
                        let lines: Vec<String> = ds.iter().map(ToString::to_string).collect();
                        invalid(format!(
                            "device `{}`: profile {:?} is refused:\n{}",
                            d.name,
                            d.profile,
                            lines.join("\n")
                        ))
                    })?;
                    let loaded = Arc::new(loaded);
                    profiles.insert(d.profile.clone(), Arc::clone(&loaded));
                    loaded
                }
            };
            devices.push(DeviceSpec {
                name: d.name,
                profile,
                unit_id: d.unit_id,
                listener,
                physics: d.physics,
                params: d.params,
            });
        }
        for name in raw.listeners.keys() {
            if !devices.iter().any(|d| &d.listener == name) {
                return Err(invalid(format!(
                    "listener `{name}` in [listeners] has no device"
                )));
            }
        }
        Ok(Self {
            site: Site {
                name: raw.site.name,
                latitude: raw.site.latitude,
                longitude: raw.site.longitude,
                timezone: raw.site.timezone,
                start_ms: start.as_millisecond(),
            },
            seed: raw.simulation.seed.unwrap_or(1),
            step,
            listeners: raw.listeners,
            devices,
        })
    }

    /// Index of the device with this name.
    #[must_use]
    pub fn device_index(&self, name: &str) -> Option<usize> {
        self.devices.iter().position(|d| d.name == name)
    }
}
