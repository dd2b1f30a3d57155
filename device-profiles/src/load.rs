//! Reading profile files: TOML in, a validated [`Profile`] or a list of [`Diagnostic`]s out.
//!
//! Parsing happens in two steps. Serde reads the file into raw structs that keep every value's
//! byte span and refuse unknown keys (a misspelt key must never pass silently). Validation then
//! checks every rule of the format and collects *all* problems, each with the line and column
//! of the offending value and a sentence saying how to fix it, so an integrator fixes a profile
//! in one pass rather than one error per run.
//!
//! The rules (each has a test in `tests/load.rs`):
//! - `[device]` names manufacturer, model, category and the source of the map;
//! - a point gives exactly one of `address` (0-based PDU address), `register` (the manual's
//!   5- or 6-digit Modicon form, 30001 or 300001, which also fixes the table) or `number`
//!   (the manual's 1-based register number within `table`);
//! - a point fits below address 65535; a `bit` index is 0..=15; a `string` has a length;
//!   `bool` lives in the coil or discrete table and the word types in the register tables;
//! - `metric` is in the catalogue and `unit` measures the same thing as the metric's
//!   canonical unit; `kind`, when given, agrees with the metric;
//! - a `scale_factor` names an `i16` point of a register table; a point without a metric must
//!   be somebody's scale factor;
//! - point names are unique, and overlapping points of one table do not disagree on type.

use std::collections::{BTreeMap, HashMap};
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::time::Duration;

use fivezero_model::units::{self, Conversion};
use fivezero_model::{Kind, metric};
use serde::Deserialize;
use toml::Spanned;

use crate::diagnostic::{Diagnostic, SourceMap};
use crate::lint::PointFacts;
use crate::profile::{Category, DataType, Point, Profile, ReadLimits, Table, WordOrder};

/// The most registers one Modbus read may return.
pub const MODBUS_MAX_REGISTERS: u16 = 125;
/// The most coils or discrete inputs one Modbus read may return.
pub const MODBUS_MAX_BITS: u16 = 2000;

/// Reads and validates one profile file. The profile id is the file name without `.toml`.
///
/// # Errors
/// Every problem found, as diagnostics naming the file, line and column.
pub fn load_file(path: &Path) -> Result<Profile, Vec<Diagnostic>> {
    let text = read(path)?;
    load_str(path, &text)
}

/// Validates profile text; `path` names it in diagnostics and gives the profile id.
///
/// # Errors
/// Every problem found, as diagnostics naming the file, line and column.
pub fn load_str(path: &Path, text: &str) -> Result<Profile, Vec<Diagnostic>> {
    check_str(path, text).map(|c| c.profile)
}

/// A profile that loads, with the warnings of the lint pass (likely mistakes that are not errors).
#[derive(Debug, Clone)]
pub struct Checked {
    /// The validated profile.
    pub profile: Profile,
    /// Likely mistakes that do not refuse the profile, in file order.
    pub warnings: Vec<Diagnostic>,
}

/// Validates profile text like [`load_str`] and, when it is valid, runs the lint pass.
///
/// # Errors
/// Every problem found, as diagnostics naming the file, line and column.
pub fn check_str(path: &Path, text: &str) -> Result<Checked, Vec<Diagnostic>> {
    let map = SourceMap::new(path, text);
    let raw: RawProfile = toml::from_str(text).map_err(|e| {
        let offset = e.span().map_or(0, |s| s.start);
        vec![map.error(offset, tidy_serde_message(e.message()))]
    })?;
    let mut checker = Checker {
        map: &map,
        diagnostics: Vec::new(),
    };
    let id = profile_id(path);
    if id.is_empty()
        || !id
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '_')
    {
        checker.error(
            0..0,
            format!(
                "the file name gives the profile id {id:?}; use lower-case letters, digits and '-' only (e.g. eastron-sdm630.toml)"
            ),
        );
    }
    let (profile, facts) = checker.profile(id, raw);
    if checker.diagnostics.is_empty() {
        let warnings = crate::lint::lint(&profile, &facts)
            .into_iter()
            .map(|(span, message)| map.warning(span.start, message))
            .collect();
        Ok(Checked { profile, warnings })
    } else {
        Err(checker.diagnostics)
    }
}

/// Reads a profile file and runs [`check_str`] on it.
///
/// # Errors
/// Every problem found, as diagnostics naming the file, line and column.
pub fn check_file(path: &Path) -> Result<Checked, Vec<Diagnostic>> {
    let text = read(path)?;
    check_str(path, &text)
}

/// One file found by [`check_path`] and what became of it.
pub type CheckedFile = (PathBuf, Result<Checked, Vec<Diagnostic>>);

/// Like [`load_path`], with the lint pass's warnings for every profile that loads.
///
/// # Errors
/// A diagnostic when the folder cannot be read; problems in individual files are in the list.
pub fn check_path(path: &Path) -> Result<Vec<CheckedFile>, Diagnostic> {
    Ok(toml_files(path)?
        .into_iter()
        .map(|f| {
            let checked = check_file(&f);
            (f, checked)
        })
        .collect())
}

fn read(path: &Path) -> Result<String, Vec<Diagnostic>> {
    std::fs::read_to_string(path).map_err(|e| {
        vec![Diagnostic {
            file: path.to_path_buf(),
            line: 1,
            column: 1,
            severity: crate::Severity::Error,
            message: format!("cannot read the file: {e}"),
        }]
    })
}

fn toml_files(path: &Path) -> Result<Vec<PathBuf>, Diagnostic> {
    let mut files = Vec::new();
    collect_toml(path, &mut files).map_err(|e| Diagnostic {
        file: path.to_path_buf(),
        line: 1,
        column: 1,
        severity: crate::Severity::Error,
        message: format!("cannot read: {e}"),
    })?;
    Ok(files)
}

/// One file found by [`load_path`] and what became of it.
pub type LoadedFile = (PathBuf, Result<Profile, Vec<Diagnostic>>);

/// Loads every `*.toml` file under `path` (recursively, in name order), or `path` itself when
/// it is a file.
///
/// # Errors
/// A diagnostic when the folder cannot be read; problems in individual files are in the list.
pub fn load_path(path: &Path) -> Result<Vec<LoadedFile>, Diagnostic> {
    Ok(toml_files(path)?
        .into_iter()
        .map(|f| {
            let loaded = load_file(&f);
            (f, loaded)
        })
        .collect())
}

fn collect_toml(path: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    if path.is_dir() {
        let mut entries: Vec<PathBuf> = std::fs::read_dir(path)?
            .map(|e| e.map(|e| e.path()))
            .collect::<Result<_, _>>()?;
        entries.sort();
        for entry in entries {
            if entry.is_dir() {
                collect_toml(&entry, out)?;
            } else if entry.extension().is_some_and(|e| e == "toml") {
                out.push(entry);
            }
        }
        Ok(())
    } else {
        std::fs::metadata(path)?;
        out.push(path.to_path_buf());
        Ok(())
    }
}

fn profile_id(path: &Path) -> String {
    path.file_stem()
        .map(|s| s.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Serde's messages name Rust-side things; say them in profile terms.
fn tidy_serde_message(message: &str) -> String {
    let message = message.trim_end();
    if let Some(rest) = message.strip_prefix("unknown field ") {
        format!(
            "unknown key {rest}; check the spelling (device-profiles/README.md lists every key)"
        )
    } else if let Some(rest) = message.strip_prefix("missing field ") {
        format!("missing key {rest}")
    } else {
        message.to_owned()
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawProfile {
    device: Spanned<RawDevice>,
    #[serde(default)]
    modbus: Option<Spanned<RawModbus>>,
    #[serde(default, rename = "point")]
    points: Vec<Spanned<RawPoint>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDevice {
    manufacturer: Spanned<String>,
    model: Spanned<String>,
    category: Spanned<String>,
    source: Spanned<String>,
    notes: Option<String>,
    rated_power: Option<Spanned<String>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawModbus {
    order: Option<Spanned<String>>,
    max_registers: Option<Spanned<i64>>,
    max_bits: Option<Spanned<i64>>,
    max_gap: Option<Spanned<i64>>,
    single_point: Option<bool>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPoint {
    name: Spanned<String>,
    metric: Option<Spanned<String>>,
    table: Option<Spanned<String>>,
    address: Option<Spanned<i64>>,
    register: Option<Spanned<i64>>,
    number: Option<Spanned<i64>>,
    #[serde(rename = "type")]
    data_type: Spanned<String>,
    bit: Option<Spanned<i64>>,
    length: Option<Spanned<i64>>,
    order: Option<Spanned<String>>,
    scale: Option<Spanned<f64>>,
    offset: Option<Spanned<f64>>,
    scale_factor: Option<Spanned<String>>,
    unit: Option<Spanned<String>>,
    kind: Option<Spanned<String>>,
    labels: Option<Spanned<BTreeMap<String, String>>>,
    flags: Option<Spanned<BTreeMap<String, String>>>,
    not_available: Option<Spanned<Vec<Spanned<RawPattern>>>>,
    interval: Option<Spanned<String>>,
    doc_ref: Option<String>,
}

/// A raw sentinel: an integer (negative allowed for signed types) or a hex string for 64-bit
/// patterns that TOML integers cannot hold.
#[derive(Deserialize)]
#[serde(untagged)]
enum RawPattern {
    Int(i64),
    Text(String),
}

struct Checker<'a> {
    map: &'a SourceMap<'a>,
    diagnostics: Vec<Diagnostic>,
}

/// A point that passed its own checks, with what the cross-point checks need.
struct Pending {
    point: Point,
    span: Range<usize>,
    scale_factor: Option<Spanned<String>>,
    facts: PointFacts,
}

impl Checker<'_> {
    fn error(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.diagnostics.push(self.map.error(span.start, message));
    }

    fn line_of(&self, span: &Range<usize>) -> usize {
        self.map.position(span.start).0
    }

    fn profile(&mut self, id: String, raw: RawProfile) -> (Profile, Vec<PointFacts>) {
        let device_span = raw.device.span();
        let device = raw.device.into_inner();
        let category = match Category::parse(device.category.get_ref()) {
            Some(c) => c,
            None => {
                let names: Vec<&str> = Category::ALL.iter().map(|(_, n)| *n).collect();
                self.error(
                    device.category.span(),
                    format!(
                        "unknown category {:?}; use one of: {}",
                        device.category.get_ref(),
                        names.join(", ")
                    ),
                );
                Category::Other
            }
        };
        for (field, value) in [
            ("manufacturer", &device.manufacturer),
            ("model", &device.model),
            ("source", &device.source),
        ] {
            if value.get_ref().trim().is_empty() {
                self.error(
                    value.span(),
                    format!("`{field}` is empty; say who makes the device, the model, and which document the map comes from"),
                );
            }
        }
        let rated_power_kw = device
            .rated_power
            .as_ref()
            .and_then(|r| self.rated_power(r));
        let (limits, default_order) = self.modbus(raw.modbus);
        if raw.points.is_empty() {
            self.error(
                device_span,
                "the profile has no points; add at least one [[point]]",
            );
        }
        let mut pending: Vec<Pending> = raw
            .points
            .into_iter()
            .filter_map(|p| self.point(p, default_order))
            .collect();
        self.names_are_unique(&pending);
        self.link_scale_factors(&mut pending);
        self.overlaps_agree(&pending);
        self.metrics_are_unique(&pending);
        let (points, facts) = pending.into_iter().map(|p| (p.point, p.facts)).unzip();
        let profile = Profile {
            id,
            manufacturer: device.manufacturer.into_inner(),
            model: device.model.into_inner(),
            category,
            source: device.source.into_inner(),
            notes: device.notes,
            rated_power_kw,
            limits,
            points,
        };
        (profile, facts)
    }

    /// `rated_power = "22 kW"`: a number and a power unit, in kW.
    fn rated_power(&mut self, raw: &Spanned<String>) -> Option<f64> {
        let text = raw.get_ref().trim();
        let split = text
            .find(|c: char| !(c.is_ascii_digit() || c == '.' || c == '_'))
            .unwrap_or(text.len());
        let (number, unit) = text.split_at(split);
        let value = number.replace('_', "").parse::<f64>().ok();
        let conversion = units::conversion(unit.trim(), "kW");
        match (value, conversion) {
            (Some(v), Ok(c)) if v.is_finite() && v > 0.0 && !unit.trim().is_empty() => {
                Some(c.apply(v))
            }
            _ => {
                self.error(
                    raw.span(),
                    format!(
                        "rated_power {text:?} is not a power; write a positive number and a unit, e.g. \"22 kW\" or \"6 MW\""
                    ),
                );
                None
            }
        }
    }

    fn modbus(&mut self, raw: Option<Spanned<RawModbus>>) -> (ReadLimits, WordOrder) {
        let mut limits = ReadLimits::default();
        let Some(raw) = raw.map(Spanned::into_inner) else {
            return (limits, WordOrder::default());
        };
        let order = raw
            .order
            .and_then(|o| self.word_order(&o))
            .unwrap_or_default();
        if let Some(v) = raw.max_registers {
            limits.max_registers = self.bounded(
                &v,
                1,
                MODBUS_MAX_REGISTERS,
                "max_registers",
                "Modbus allows at most 125 registers per read",
            );
        }
        if let Some(v) = raw.max_bits {
            limits.max_bits = self.bounded(
                &v,
                1,
                MODBUS_MAX_BITS,
                "max_bits",
                "Modbus allows at most 2000 coils or discrete inputs per read",
            );
        }
        if let Some(v) = raw.max_gap {
            limits.max_gap = self.bounded(
                &v,
                0,
                MODBUS_MAX_BITS,
                "max_gap",
                "it is the number of unused registers a read may bridge",
            );
        }
        limits.single_point = raw.single_point.unwrap_or(false);
        (limits, order)
    }

    fn bounded(&mut self, v: &Spanned<i64>, min: u16, max: u16, field: &str, why: &str) -> u16 {
        match u16::try_from(*v.get_ref()) {
            Ok(n) if (min..=max).contains(&n) => n,
            _ => {
                self.error(
                    v.span(),
                    format!(
                        "`{field}` = {} is out of range; use {min} to {max} ({why})",
                        v.get_ref()
                    ),
                );
                max.min(MODBUS_MAX_REGISTERS)
            }
        }
    }

    fn word_order(&mut self, raw: &Spanned<String>) -> Option<WordOrder> {
        let order = WordOrder::parse(raw.get_ref());
        if order.is_none() {
            self.error(
                raw.span(),
                format!(
                    "unknown order {:?}; use \"ABCD\" (big-endian, high word first), \"CDAB\" (low word first), \"BADC\" (bytes swapped) or \"DCBA\" (little-endian)",
                    raw.get_ref()
                ),
            );
        }
        order
    }

    #[allow(clippy::too_many_lines)] // One rule after another, in file order; splitting hides the order.
    fn point(&mut self, raw: Spanned<RawPoint>, default_order: WordOrder) -> Option<Pending> {
        let span = raw.span();
        let raw = raw.into_inner();
        let errors_before = self.diagnostics.len();
        let name = raw.name.get_ref().clone();
        if name.is_empty()
            || !name
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.')
        {
            self.error(
                raw.name.span(),
                format!("point name {name:?} must be letters, digits, '_', '-' or '.'"),
            );
        }

        // Where the point is.
        let table = match &raw.table {
            Some(t) => {
                let Some(parsed) = parse_table(t.get_ref()) else {
                    self.error(
                        t.span(),
                        format!(
                            "point `{name}`: unknown table {:?}; use \"holding\", \"input\", \"coil\" or \"discrete\"",
                            t.get_ref()
                        ),
                    );
                    return None;
                };
                Some(parsed)
            }
            None => None,
        };
        let (table, address) = self.location(&name, &raw, table, &span)?;

        // What it holds.
        let data_type = self.data_type(&name, &raw, table)?;
        let order = match &raw.order {
            Some(o) => self.word_order(o)?,
            None => default_order,
        };
        let end = u32::from(address) + u32::from(data_type.width()) - 1;
        if end > 65535 {
            let at = raw
                .address
                .as_ref()
                .or(raw.register.as_ref())
                .or(raw.number.as_ref())
                .map_or(span.clone(), Spanned::span);
            self.error(
                at,
                format!(
                    "point `{name}`: a {} at address {address} runs past address 65535 (it needs {} registers); check the address",
                    data_type.as_str(),
                    data_type.width()
                ),
            );
        }

        // What it means.
        let metric = raw.metric.as_ref().and_then(|m| {
            let found = metric::lookup(m.get_ref());
            if found.is_none() {
                let hint = metric::closest(m.get_ref())
                    .map(|c| format!("did you mean \"{}\"? ", c.id))
                    .unwrap_or_default();
                self.error(
                    m.span(),
                    format!(
                        "point `{name}`: metric {:?} is not in the catalogue; {hint}`fivezero-gateway profile metrics` lists them all",
                        m.get_ref()
                    ),
                );
            }
            found
        });
        let kind = match (metric, &raw.kind) {
            (Some(m), Some(k)) => {
                if k.get_ref() != m.kind.as_str() {
                    self.error(
                        k.span(),
                        format!(
                            "point `{name}`: kind = {:?} but metric `{}` is a {}; remove `kind` or pick a {} metric",
                            k.get_ref(),
                            m.id,
                            m.kind,
                            k.get_ref()
                        ),
                    );
                }
                m.kind
            }
            (Some(m), None) => m.kind,
            (None, Some(k)) => {
                self.error(k.span(), format!("point `{name}`: `kind` needs a `metric`"));
                Kind::Gauge
            }
            (None, None) => Kind::Gauge,
        };
        if matches!(data_type, DataType::Ascii(_)) && metric.is_some_and(|m| m.kind != Kind::Info) {
            self.error(
                raw.data_type.span(),
                format!(
                    "point `{name}`: a string can only feed an info metric (device.serial_number, device.model_name, device.firmware_version)"
                ),
            );
        }
        let (unit, conversion) = self.unit(&name, &raw, metric);

        // How the raw value becomes a number.
        let scale = match &raw.scale {
            Some(s) if !s.get_ref().is_finite() || *s.get_ref() == 0.0 => {
                self.error(s.span(), format!("point `{name}`: `scale` must be a finite, non-zero number (for \"divide by 10\" write 0.1)"));
                1.0
            }
            Some(s) => *s.get_ref(),
            None => 1.0,
        };
        let offset = match &raw.offset {
            Some(o) if !o.get_ref().is_finite() => {
                self.error(
                    o.span(),
                    format!("point `{name}`: `offset` must be a finite number"),
                );
                0.0
            }
            Some(o) => *o.get_ref(),
            None => 0.0,
        };
        if (raw.scale.is_some() || raw.offset.is_some() || raw.scale_factor.is_some())
            && !data_type.is_numeric()
        {
            self.error(span.clone(), format!("point `{name}`: a string cannot be scaled; remove `scale`, `offset` and `scale_factor`"));
        }
        let labels = self.labels(&name, &raw, kind);
        let flags = self.flags(&name, &raw, kind, data_type);
        let not_available = self.not_available(&name, &raw, data_type);
        let interval = raw.interval.as_ref().and_then(|i| {
            match humantime::parse_duration(i.get_ref()) {
                Ok(d) if d > Duration::ZERO => Some(d),
                _ => {
                    self.error(
                        i.span(),
                        format!("point `{name}`: interval {:?} is not a positive duration such as \"5s\", \"1m\" or \"15min\"", i.get_ref()),
                    );
                    None
                }
            }
        });
        if self.diagnostics.len() > errors_before {
            return None;
        }
        Some(Pending {
            point: Point {
                name,
                metric,
                table,
                address,
                data_type,
                order,
                scale,
                offset,
                scale_factor: None,
                unit,
                conversion,
                kind,
                labels,
                flags,
                not_available,
                interval,
                doc_ref: raw.doc_ref,
            },
            facts: PointFacts {
                span: span.clone(),
                unit_given: raw.unit.is_some(),
                address: raw.address.as_ref().map(Spanned::span),
                scale_factor: raw.scale_factor.as_ref().map(Spanned::span),
            },
            span,
            scale_factor: raw.scale_factor,
        })
    }

    /// Resolves `address` / `register` / `number` and the table into (table, 0-based address).
    fn location(
        &mut self,
        name: &str,
        raw: &RawPoint,
        table: Option<Table>,
        span: &Range<usize>,
    ) -> Option<(Table, u16)> {
        let given: Vec<&Spanned<i64>> = [&raw.address, &raw.register, &raw.number]
            .into_iter()
            .flatten()
            .collect();
        match given.len() {
            0 => {
                self.error(span.clone(), format!("point `{name}` has no location; give `address` (0-based), `register` (the manual's 30001/40001 form) or `number` (the manual's 1-based number)"));
                return None;
            }
            1 => {}
            _ => {
                self.error(
                    given[1].span(),
                    format!("point `{name}`: give only one of `address`, `register` and `number`"),
                );
                return None;
            }
        }
        if let Some(a) = &raw.address {
            let table = self.require_table(name, table, span)?;
            return match u16::try_from(*a.get_ref()) {
                Ok(addr) => Some((table, addr)),
                Err(_) => {
                    self.error(a.span(), format!("point `{name}`: address {} is outside 0..=65535; addresses are 0-based PDU addresses", a.get_ref()));
                    None
                }
            };
        }
        if let Some(n) = &raw.number {
            let table = self.require_table(name, table, span)?;
            // `checked_sub`: `number = -9223372036854775808` (i64::MIN) is valid TOML.
            return match n.get_ref().checked_sub(1).map(u16::try_from) {
                Some(Ok(addr)) => Some((table, addr)),
                _ => {
                    self.error(n.span(), format!("point `{name}`: register number {} is outside 1..=65536 (`number` is the manual's 1-based numbering)", n.get_ref()));
                    None
                }
            };
        }
        let r = raw.register.as_ref()?;
        let Some((implied, addr)) = modicon(*r.get_ref()) else {
            self.error(r.span(), format!("point `{name}`: register {} is not in the 10001/30001/40001 (or 100001/300001/400001) notation; for a plain 0-based address use `address`, for a 1-based number use `number`", r.get_ref()));
            return None;
        };
        if let Some(t) = table
            && t != implied
        {
            self.error(
                r.span(),
                format!(
                    "point `{name}`: register {} is in the {} table but `table` says {}; remove `table` or fix the register",
                    r.get_ref(),
                    implied.as_str(),
                    t.as_str()
                ),
            );
            return None;
        }
        Some((implied, addr))
    }

    fn require_table(
        &mut self,
        name: &str,
        table: Option<Table>,
        span: &Range<usize>,
    ) -> Option<Table> {
        if table.is_none() {
            self.error(span.clone(), format!("point `{name}` needs `table` (\"holding\", \"input\", \"coil\" or \"discrete\")"));
        }
        table
    }

    fn data_type(&mut self, name: &str, raw: &RawPoint, table: Table) -> Option<DataType> {
        let ty = raw.data_type.get_ref().as_str();
        let data_type = match ty {
            "u16" => DataType::U16,
            "i16" => DataType::I16,
            "u32" => DataType::U32,
            "i32" => DataType::I32,
            "u64" => DataType::U64,
            "i64" => DataType::I64,
            "f32" => DataType::F32,
            "f64" => DataType::F64,
            "bool" => DataType::Bool,
            "bit" => {
                let Some(bit) = &raw.bit else {
                    self.error(raw.data_type.span(), format!("point `{name}`: type \"bit\" needs `bit` = 0..15 (0 = least significant bit)"));
                    return None;
                };
                match u8::try_from(*bit.get_ref()) {
                    Ok(b) if b <= 15 => DataType::Bit(b),
                    _ => {
                        self.error(bit.span(), format!("point `{name}`: bit index {} is over 15; a register has bits 0 (least significant) to 15", bit.get_ref()));
                        return None;
                    }
                }
            }
            "string" => {
                let Some(length) = &raw.length else {
                    self.error(raw.data_type.span(), format!("point `{name}`: type \"string\" needs `length`, the number of registers (two characters each)"));
                    return None;
                };
                match u16::try_from(*length.get_ref()) {
                    Ok(n) if (1..=MODBUS_MAX_REGISTERS).contains(&n) => DataType::Ascii(n),
                    _ => {
                        self.error(length.span(), format!("point `{name}`: a string of length {} is not possible; give 1 to 125 registers", length.get_ref()));
                        return None;
                    }
                }
            }
            other => {
                self.error(raw.data_type.span(), format!("point `{name}`: unknown type {other:?}; use u16, i16, u32, i32, u64, i64, f32, f64, bit, bool or string"));
                return None;
            }
        };
        if raw.bit.is_some() && !matches!(data_type, DataType::Bit(_)) {
            self.error(
                raw.bit.as_ref().map_or(0..0, Spanned::span),
                format!("point `{name}`: `bit` only goes with type \"bit\""),
            );
        }
        if raw.length.is_some() && !matches!(data_type, DataType::Ascii(_)) {
            self.error(
                raw.length.as_ref().map_or(0..0, Spanned::span),
                format!("point `{name}`: `length` only goes with type \"string\""),
            );
        }
        match (table.is_bits(), data_type == DataType::Bool) {
            (true, false) => {
                self.error(
                    raw.data_type.span(),
                    format!(
                        "point `{name}`: the {} table holds single bits; use type \"bool\"",
                        table.as_str()
                    ),
                );
                None
            }
            (false, true) => {
                self.error(raw.data_type.span(), format!("point `{name}`: type \"bool\" is for coils and discrete inputs; for one bit of a register use type \"bit\" with `bit` = N"));
                None
            }
            _ => Some(data_type),
        }
    }

    fn unit(
        &mut self,
        name: &str,
        raw: &RawPoint,
        metric: Option<&'static fivezero_model::Metric>,
    ) -> (String, Conversion) {
        let Some(metric) = metric else {
            if let Some(u) = &raw.unit {
                self.error(
                    u.span(),
                    format!("point `{name}` has a unit but no metric; give it a `metric`"),
                );
            }
            return (String::new(), Conversion::IDENTITY);
        };
        let Some(unit) = &raw.unit else {
            return (metric.unit.to_owned(), Conversion::IDENTITY);
        };
        if matches!(metric.kind, Kind::State | Kind::Info) {
            if !unit.get_ref().is_empty() {
                self.error(
                    unit.span(),
                    format!(
                        "point `{name}`: metric `{}` is a {} and has no unit; remove `unit`",
                        metric.id, metric.kind
                    ),
                );
            }
            return (String::new(), Conversion::IDENTITY);
        }
        match units::conversion(unit.get_ref(), metric.unit) {
            Ok(c) => (unit.get_ref().clone(), c),
            Err(e) => {
                self.error(
                    unit.span(),
                    format!("point `{name}` (metric `{}`): {e}", metric.id),
                );
                (unit.get_ref().clone(), Conversion::IDENTITY)
            }
        }
    }

    fn labels(&mut self, name: &str, raw: &RawPoint, kind: Kind) -> BTreeMap<i64, String> {
        let Some(labels) = &raw.labels else {
            return BTreeMap::new();
        };
        if kind != Kind::State {
            self.error(
                labels.span(),
                format!("point `{name}`: `labels` only go on state metrics"),
            );
        }
        let mut out = BTreeMap::new();
        for (key, label) in labels.get_ref() {
            match key.parse::<i64>() {
                Ok(k) => {
                    out.insert(k, label.clone());
                }
                Err(_) => self.error(labels.span(), format!("point `{name}`: label key {key:?} is not an integer; write e.g. labels = {{ 1 = \"off\", 2 = \"sleeping\" }}")),
            }
        }
        out
    }

    fn flags(
        &mut self,
        name: &str,
        raw: &RawPoint,
        kind: Kind,
        data_type: DataType,
    ) -> BTreeMap<u8, String> {
        let Some(flags) = &raw.flags else {
            return BTreeMap::new();
        };
        if kind != Kind::State {
            self.error(
                flags.span(),
                format!("point `{name}`: `flags` only go on state metrics"),
            );
        }
        let bits = u32::from(data_type.width()) * 16;
        let mut out = BTreeMap::new();
        for (key, label) in flags.get_ref() {
            match key.parse::<u8>() {
                Ok(k) if u32::from(k) < bits => {
                    out.insert(k, label.clone());
                }
                _ => self.error(
                    flags.span(),
                    format!(
                        "point `{name}`: flag bit {key:?} is not a bit of a {}; use 0 to {}",
                        data_type.as_str(),
                        bits - 1
                    ),
                ),
            }
        }
        out
    }

    fn not_available(&mut self, name: &str, raw: &RawPoint, data_type: DataType) -> Vec<u64> {
        let Some(list) = &raw.not_available else {
            return Vec::new();
        };
        if !data_type.is_numeric() || matches!(data_type, DataType::Bool | DataType::Bit(_)) {
            self.error(
                list.span(),
                format!("point `{name}`: `not_available` applies to numeric register types only"),
            );
            return Vec::new();
        }
        let width_bits = u32::from(data_type.width()) * 16;
        let mask = if width_bits >= 64 {
            u64::MAX
        } else {
            (1u64 << width_bits) - 1
        };
        let mut out = Vec::new();
        for item in list.get_ref() {
            let value = match item.get_ref() {
                RawPattern::Int(i) => {
                    let fits = if *i >= 0 {
                        width_bits >= 64 || i.unsigned_abs() <= mask
                    } else {
                        width_bits >= 64 || i.unsigned_abs() <= (mask >> 1) + 1
                    };
                    fits.then(|| i.cast_unsigned() & mask)
                }
                RawPattern::Text(s) => {
                    let digits = s
                        .trim()
                        .trim_start_matches("0x")
                        .trim_start_matches("0X")
                        .replace('_', "");
                    u64::from_str_radix(&digits, 16)
                        .ok()
                        .filter(|v| *v & !mask == 0)
                }
            };
            match value {
                Some(v) => out.push(v),
                None => self.error(item.span(), format!("point `{name}`: sentinel does not fit in a {} ({} bits); write it as the raw register value, e.g. 0x8000", data_type.as_str(), width_bits)),
            }
        }
        out
    }

    fn names_are_unique(&mut self, points: &[Pending]) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut errors = Vec::new();
        for p in points {
            if let Some(line) = seen.get(p.point.name.as_str()) {
                errors.push((p.span.clone(), format!("point name `{}` is used twice (first at line {line}); names must be unique", p.point.name)));
            } else {
                seen.insert(&p.point.name, self.line_of(&p.span));
            }
        }
        for (span, message) in errors {
            self.error(span, message);
        }
    }

    fn metrics_are_unique(&mut self, points: &[Pending]) {
        let mut seen: HashMap<&str, usize> = HashMap::new();
        let mut errors = Vec::new();
        for p in points {
            let Some(m) = p.point.metric else { continue };
            if let Some(line) = seen.get(m.id) {
                errors.push((p.span.clone(), format!("point `{}`: metric `{}` is already reported by the point at line {line}; one device reports each metric once", p.point.name, m.id)));
            } else {
                seen.insert(m.id, self.line_of(&p.span));
            }
        }
        for (span, message) in errors {
            self.error(span, message);
        }
    }

    fn link_scale_factors(&mut self, points: &mut [Pending]) {
        let index: HashMap<String, usize> = points
            .iter()
            .enumerate()
            .map(|(i, p)| (p.point.name.clone(), i))
            .collect();
        let mut used_as_factor = vec![false; points.len()];
        for i in 0..points.len() {
            let Some(sf) = points[i].scale_factor.clone() else {
                continue;
            };
            let name = points[i].point.name.clone();
            let Some(&j) = index.get(sf.get_ref()) else {
                self.error(sf.span(), format!("point `{name}`: scale_factor {:?} is not a point of this profile; define it as a point of type \"i16\"", sf.get_ref()));
                continue;
            };
            if i == j {
                self.error(
                    sf.span(),
                    format!("point `{name}` cannot be its own scale factor"),
                );
                continue;
            }
            // Referenced, even if wrongly: one error for the link, not a second for the helper.
            used_as_factor[j] = true;
            let factor = &points[j].point;
            if factor.data_type != DataType::I16 || factor.table.is_bits() {
                self.error(sf.span(), format!("point `{name}`: scale-factor point `{}` is a {}; scale-factor registers are signed 16-bit powers of ten, so declare it type = \"i16\"", factor.name, factor.data_type.as_str()));
                continue;
            }
            if points[j].scale_factor.is_some() {
                self.error(sf.span(), format!("point `{name}`: scale-factor point `{}` has a scale factor itself; chains are not allowed", factor.name));
                continue;
            }
            points[i].point.scale_factor = Some(j);
        }
        let mut errors = Vec::new();
        for (p, used) in points.iter().zip(&used_as_factor) {
            if p.point.metric.is_none() && !used {
                errors.push((p.span.clone(), format!("point `{}` has no `metric` and no point uses it as `scale_factor`; give it a metric from the catalogue", p.point.name)));
            }
        }
        for (span, message) in errors {
            self.error(span, message);
        }
    }

    fn overlaps_agree(&mut self, points: &[Pending]) {
        let mut order: Vec<usize> = (0..points.len()).collect();
        order.sort_by_key(|&i| (points[i].point.table, points[i].point.address));
        let mut errors = Vec::new();
        for (n, &i) in order.iter().enumerate() {
            let a = &points[i].point;
            for &j in &order[n + 1..] {
                let b = &points[j].point;
                if b.table != a.table || u32::from(b.address) >= a.end() {
                    break;
                }
                if !compatible(a, b) {
                    let (first, second) = if points[i].span.start < points[j].span.start {
                        (i, j)
                    } else {
                        (j, i)
                    };
                    let f = &points[first].point;
                    let s = &points[second].point;
                    errors.push((
                        points[second].span.clone(),
                        format!(
                            "point `{}` ({} at {} {}) overlaps point `{}` (line {}, {} at {}) with a different type; check both addresses",
                            s.name,
                            s.data_type.as_str(),
                            s.table.as_str(),
                            s.address,
                            f.name,
                            self.line_of(&points[first].span),
                            f.data_type.as_str(),
                            f.address
                        ),
                    ));
                }
            }
        }
        for (span, message) in errors {
            self.error(span, message);
        }
    }
}

/// Two overlapping points agree when they read the same registers the same way, or when bits
/// are taken from a 16-bit register.
fn compatible(a: &Point, b: &Point) -> bool {
    let word = |t: DataType| matches!(t, DataType::U16 | DataType::I16);
    match (a.data_type, b.data_type) {
        (DataType::Bit(_), DataType::Bit(_)) => true,
        (DataType::Bit(_), t) | (t, DataType::Bit(_)) => word(t) && a.address == b.address,
        (x, y) => x == y && a.address == b.address && a.order == b.order,
    }
}

fn parse_table(s: &str) -> Option<Table> {
    match s {
        "holding" => Some(Table::Holding),
        "input" => Some(Table::Input),
        "coil" => Some(Table::Coil),
        "discrete" => Some(Table::Discrete),
        _ => None,
    }
}

/// The Modicon notation: 5 digits (10001–19999, 30001–39999, 40001–49999) or 6 digits
/// (100001–165536, 300001–365536, 400001–465536). Coils (0xxxx) cannot be written as TOML
/// integers with their leading zero, so they take `number` or `address`.
fn modicon(register: i64) -> Option<(Table, u16)> {
    let (table, base) = match register {
        10_001..=19_999 => (Table::Discrete, 10_001),
        30_001..=39_999 => (Table::Input, 30_001),
        40_001..=49_999 => (Table::Holding, 40_001),
        100_001..=165_536 => (Table::Discrete, 100_001),
        300_001..=365_536 => (Table::Input, 300_001),
        400_001..=465_536 => (Table::Holding, 400_001),
        _ => return None,
    };
    u16::try_from(register - base).ok().map(|a| (table, a))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modicon_notation_gives_table_and_zero_based_address() {
        assert_eq!(modicon(30_001), Some((Table::Input, 0)));
        assert_eq!(modicon(40_278), Some((Table::Holding, 277)));
        assert_eq!(modicon(10_004), Some((Table::Discrete, 3)));
        assert_eq!(modicon(465_536), Some((Table::Holding, 65_535)));
        assert_eq!(modicon(300_001), Some((Table::Input, 0)));
        assert_eq!(modicon(20_001), None);
        assert_eq!(modicon(5), None);
    }
}
