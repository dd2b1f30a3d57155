//! Environment overrides and the `config` crate: file text plus variables into a raw config.

use std::path::Path;

use config::{Config as Layers, File, FileFormat};

use super::ConfigError;
use super::raw::RawConfig;

/// Prefix of every override variable.
pub const ENV_PREFIX: &str = "FIVEZERO_";

/// Level separator in variable names.
const SEPARATOR: &str = "__";

/// The variables of this process, skipping any whose name or value is not UTF-8 (which
/// `std::env::vars` would panic on) unless it is one of ours.
pub(super) fn process_env() -> Vec<(String, String)> {
    std::env::vars_os()
        .filter_map(|(k, v)| match (k.into_string(), v.into_string()) {
            (Ok(k), Ok(v)) => Some((k, v)),
            (Ok(k), Err(v)) if k.starts_with(ENV_PREFIX) => {
                // Keep it visible: validation then refuses the mangled value by name.
                Some((k, v.to_string_lossy().into_owned()))
            }
            _ => None,
        })
        .collect()
}

/// Turns the variables that are config overrides into `(key path, value)` pairs in the
/// `config` crate's path syntax (`mqtt.url`, `device[0].unit`), sorted by variable name.
///
/// `devices` is the number of `[[device]]` entries in the file: a device override must name
/// one of them.
///
/// # Errors
/// One message per variable that has `__` but cannot be a key (an empty level, a device index
/// that is not a number or past the last device, a device key missing or nested too deep).
pub fn env_overrides<I>(vars: I, devices: usize) -> Result<Vec<(String, String)>, Vec<String>>
where
    I: IntoIterator<Item = (String, String)>,
{
    let mut ours: Vec<(String, String)> = vars
        .into_iter()
        .filter(|(k, _)| {
            k.get(..ENV_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
                && k.get(ENV_PREFIX.len()..)
                    .is_some_and(|r| r.contains(SEPARATOR))
        })
        .collect();
    ours.sort();
    let mut out = Vec::with_capacity(ours.len());
    let mut errors = Vec::new();
    for (var, value) in ours {
        match key_of(&var, devices) {
            Ok(key) => out.push((key, value)),
            Err(e) => errors.push(format!("environment variable {var}: {e}")),
        }
    }
    if errors.is_empty() {
        Ok(out)
    } else {
        Err(errors)
    }
}

fn key_of(var: &str, devices: usize) -> Result<String, String> {
    let rest = var.get(ENV_PREFIX.len()..).unwrap_or_default();
    let levels: Vec<String> = rest.split(SEPARATOR).map(str::to_ascii_lowercase).collect();
    if levels.iter().any(String::is_empty) {
        return Err("has an empty level (three or more underscores in a row?)".to_owned());
    }
    if levels
        .iter()
        .any(|l| !l.chars().all(|c| c.is_ascii_alphanumeric() || c == '_'))
    {
        return Err("a level holds a character other than letters, digits and '_'".to_owned());
    }
    match levels.as_slice() {
        [section, index, key] if section == "device" => {
            let n: usize = index.parse().map_err(|_| {
                format!(
                    "{index:?} is not a device number; devices are named by their 0-based \
                     position in the file, as in FIVEZERO_DEVICE__0__UNIT"
                )
            })?;
            if n >= devices {
                return Err(if devices == 0 {
                    "the file has no [[device]] entry to override".to_owned()
                } else {
                    format!(
                        "device {n} does not exist: the file has {devices} [[device]] entries \
                         (0..={})",
                        devices - 1
                    )
                });
            }
            Ok(format!("device[{n}].{key}"))
        }
        [section, ..] if section == "device" => Err(
            "a device override is FIVEZERO_DEVICE__<n>__<KEY>, with n the device's 0-based \
             position in the file"
                .to_owned(),
        ),
        [section, key] => Ok(format!("{section}.{key}")),
        _ => Err("names no key: overrides are FIVEZERO_<SECTION>__<KEY>".to_owned()),
    }
}

/// Reads the TOML text and the overrides through the `config` crate into the raw structs.
pub(super) fn read_raw<I>(path: &Path, text: &str, env: I) -> Result<RawConfig, ConfigError>
where
    I: IntoIterator<Item = (String, String)>,
{
    let parse_error = |message: String, env: Vec<String>| ConfigError::Parse {
        file: path.to_path_buf(),
        message,
        env,
    };
    let file_only = Layers::builder()
        .add_source(File::from_str(text, FileFormat::Toml))
        .build()
        .map_err(|e| parse_error(e.to_string(), Vec::new()))?;
    let devices = match file_only.get_array("device") {
        Ok(a) => a.len(),
        Err(config::ConfigError::NotFound(_)) => 0,
        Err(e) => return Err(parse_error(e.to_string(), Vec::new())),
    };
    let vars: Vec<(String, String)> = env.into_iter().collect();
    let overrides =
        env_overrides(vars.iter().cloned(), devices).map_err(|problems| ConfigError::Invalid {
            file: path.to_path_buf(),
            problems,
        })?;
    let names: Vec<String> = vars
        .iter()
        .filter(|(k, _)| {
            k.get(..ENV_PREFIX.len())
                .is_some_and(|p| p.eq_ignore_ascii_case(ENV_PREFIX))
                && k.contains(SEPARATOR)
        })
        .map(|(k, _)| k.clone())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let mut builder = Layers::builder().add_source(File::from_str(text, FileFormat::Toml));
    for (key, value) in overrides {
        builder = builder
            .set_override(key.as_str(), value)
            .map_err(|e| parse_error(format!("{key}: {e}"), names.clone()))?;
    }
    builder
        .build()
        .and_then(Layers::try_deserialize::<RawConfig>)
        .map_err(|e| parse_error(tidy_key_paths(&e.to_string()), names))
}

/// The `config` crate writes the key of an array element's field as `device[0]interval`;
/// say `device[0].interval`.
fn tidy_key_paths(message: &str) -> String {
    let mut out = String::with_capacity(message.len() + 4);
    let mut chars = message.chars().peekable();
    while let Some(c) = chars.next() {
        out.push(c);
        if c == ']'
            && chars
                .peek()
                .is_some_and(|n| n.is_ascii_alphanumeric() || *n == '_')
        {
            out.push('.');
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn vars(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn array_element_keys_get_their_dot_back() {
        assert_eq!(
            tidy_key_paths("bad for key `device[0]interval`"),
            "bad for key `device[0].interval`"
        );
        assert_eq!(tidy_key_paths("`device[0]`"), "`device[0]`");
    }

    #[test]
    fn section_keys_map_to_dotted_paths_in_lower_case() {
        let got = env_overrides(vars(&[("FIVEZERO_MQTT__URL", "mqtt://x")]), 0).unwrap();
        assert_eq!(got, vec![("mqtt.url".to_owned(), "mqtt://x".to_owned())]);
    }

    #[test]
    fn device_keys_name_the_device_by_position() {
        let got = env_overrides(vars(&[("FIVEZERO_DEVICE__1__UNIT", "7")]), 2).unwrap();
        assert_eq!(got, vec![("device[1].unit".to_owned(), "7".to_owned())]);
    }

    #[test]
    fn variables_without_a_separator_and_foreign_variables_are_ignored() {
        let got = env_overrides(
            vars(&[
                ("FIVEZERO_LOG", "debug"),
                ("PATH", "/bin"),
                ("HOME__X", "y"),
            ]),
            0,
        )
        .unwrap();
        assert!(got.is_empty());
    }

    #[test]
    fn a_device_past_the_last_one_is_an_error_that_says_how_many_there_are() {
        let err = env_overrides(vars(&[("FIVEZERO_DEVICE__5__UNIT", "7")]), 2).unwrap_err();
        assert!(err[0].contains("FIVEZERO_DEVICE__5__UNIT"), "{err:?}");
        assert!(err[0].contains("0..=1"), "{err:?}");
    }

    #[test]
    fn malformed_variable_names_are_errors_not_silently_dropped() {
        for bad in [
            "FIVEZERO_MQTT____URL",
            "FIVEZERO_DEVICE__X__UNIT",
            "FIVEZERO_DEVICE__UNIT",
            "FIVEZERO_A__B__C",
        ] {
            assert!(
                env_overrides(vars(&[(bad, "1")]), 1).is_err(),
                "{bad} was accepted"
            );
        }
    }
}
