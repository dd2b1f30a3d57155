//! Reading a device's `[device.params]` table: typed, range-checked, unknown keys refused.

use super::PlantError;

/// The parameters of one device, with the keys the model has asked for so far.
pub(crate) struct Params<'a> {
    device: &'a str,
    physics: &'a str,
    table: &'a toml::Table,
    known: Vec<&'static str>,
}

impl<'a> Params<'a> {
    pub(crate) fn new(device: &'a str, physics: &'a str, table: &'a toml::Table) -> Self {
        Self {
            device,
            physics,
            table,
            known: Vec::new(),
        }
    }

    fn note(&mut self, key: &'static str) {
        if !self.known.contains(&key) {
            self.known.push(key);
        }
    }

    pub(crate) fn bad(&self, key: &str, message: impl Into<String>) -> PlantError {
        PlantError::BadParam {
            device: self.device.to_owned(),
            key: key.to_owned(),
            message: message.into(),
        }
    }

    fn missing(&self, key: &str) -> PlantError {
        PlantError::MissingParam {
            device: self.device.to_owned(),
            physics: self.physics.to_owned(),
            key: key.to_owned(),
        }
    }

    /// Whether the key is present.
    pub(crate) fn has(&mut self, key: &'static str) -> bool {
        self.note(key);
        self.table.contains_key(key)
    }

    /// A number within `min..=max`; `default` when absent, an error when absent and required.
    pub(crate) fn number(
        &mut self,
        key: &'static str,
        default: Option<f64>,
        min: f64,
        max: f64,
    ) -> Result<f64, PlantError> {
        self.note(key);
        let value = match self.table.get(key) {
            None => return default.ok_or_else(|| self.missing(key)),
            Some(toml::Value::Float(x)) => *x,
            Some(toml::Value::Integer(i)) => *i as f64,
            Some(other) => {
                return Err(self.bad(key, format!("must be a number, not {}", other.type_str())));
            }
        };
        if !value.is_finite() || value < min || value > max {
            return Err(self.bad(key, format!("{value} is outside {min}..={max}")));
        }
        Ok(value)
    }

    /// A string; `default` when absent, an error when absent and required.
    pub(crate) fn text(
        &mut self,
        key: &'static str,
        default: Option<&'a str>,
    ) -> Result<&'a str, PlantError> {
        self.note(key);
        match self.table.get(key) {
            None => default.ok_or_else(|| self.missing(key)),
            Some(toml::Value::String(s)) => Ok(s.as_str()),
            Some(other) => {
                Err(self.bad(key, format!("must be a string, not {}", other.type_str())))
            }
        }
    }

    /// One of `options`; `default` when absent.
    pub(crate) fn choice(
        &mut self,
        key: &'static str,
        options: &[&'static str],
        default: Option<&'static str>,
    ) -> Result<&'static str, PlantError> {
        let given = self.text(key, default)?;
        options
            .iter()
            .find(|o| **o == given)
            .copied()
            .ok_or_else(|| {
                self.bad(
                    key,
                    format!("{given:?} is not one of {}", options.join(", ")),
                )
            })
    }

    /// A list of numbers, each within `min..=max`; empty when absent.
    pub(crate) fn numbers(
        &mut self,
        key: &'static str,
        min: f64,
        max: f64,
    ) -> Result<Vec<f64>, PlantError> {
        self.note(key);
        let Some(value) = self.table.get(key) else {
            return Ok(Vec::new());
        };
        let toml::Value::Array(items) = value else {
            return Err(self.bad(
                key,
                format!("must be a list of numbers, not {}", value.type_str()),
            ));
        };
        items
            .iter()
            .map(|v| {
                let x = match v {
                    toml::Value::Integer(i) => *i as f64,
                    toml::Value::Float(x) => *x,
                    other => {
                        return Err(
                            self.bad(key, format!("must list numbers, not {}", other.type_str()))
                        );
                    }
                };
                if x.is_finite() && (min..=max).contains(&x) {
                    Ok(x)
                } else {
                    Err(self.bad(key, format!("{x} is outside {min}..={max}")))
                }
            })
            .collect()
    }

    /// A list of strings (a single string counts as a list of one); empty when absent.
    pub(crate) fn list(&mut self, key: &'static str) -> Result<Vec<&'a str>, PlantError> {
        self.note(key);
        match self.table.get(key) {
            None => Ok(Vec::new()),
            Some(toml::Value::String(s)) => Ok(vec![s.as_str()]),
            Some(toml::Value::Array(items)) => items
                .iter()
                .map(|v| match v {
                    toml::Value::String(s) => Ok(s.as_str()),
                    other => {
                        Err(self.bad(key, format!("must list strings, not {}", other.type_str())))
                    }
                })
                .collect(),
            Some(other) => Err(self.bad(
                key,
                format!("must be a list of strings, not {}", other.type_str()),
            )),
        }
    }

    /// Refuses keys the model did not ask for.
    pub(crate) fn finish(self) -> Result<(), PlantError> {
        for key in self.table.keys() {
            if !self.known.contains(&key.as_str()) {
                let mut known = self.known.clone();
                known.sort_unstable();
                return Err(PlantError::UnknownParam {
                    device: self.device.to_owned(),
                    physics: self.physics.to_owned(),
                    key: key.clone(),
                    known: known.join(", "),
                });
            }
        }
        Ok(())
    }
}
