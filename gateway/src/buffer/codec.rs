//! The compact on-disk encoding of one row's payload.
//!
//! # Readings (`kind = 0`)
//!
//! ```text
//! payload  = version:u8(=1) device:varint base_ts:zigzag n:varint reading{n}
//! reading  = tag:u8 metric:varint dts:zigzag [device:varint] [reason:varint] value
//! tag      = quality (bits 0-1: 0 good, 1 stale, 2 error)
//!          | has_reason (bit 2) | device_differs (bit 3)
//!          | value_kind (bits 4-7)
//! value    = kind 0: nothing (null)
//!          | kind 1: f64, 8 bytes little endian
//!          | kind 2: f32, 4 bytes little endian (used only when it reads back bit for bit)
//!          | kind 3: text, len:varint + UTF-8
//!          | kind 4 + k (k = 0..=9): decimal m / 10^k, m:zigzag (used only when it reads
//!            back bit for bit)
//! ```
//!
//! `device`, `metric` and `reason` are ids in the database's `names` table (interned once per
//! database, not per row: a per-row string table would cost 20–30 bytes per reading).
//! `dts` is the reading's timestamp minus the previous reading's (the first one's minus
//! `base_ts`), so readings of one cycle cost one byte of time each. A decimal value such as
//! `230.5` (a scaled Modbus register) costs 2–4 bytes instead of 8. Every value reads back as
//! exactly the `f64` that was stored (checked bitwise when choosing the form), so a replay
//! publishes byte-identical JSON and the sink's content hash matches.
//!
//! # KPI records (`kind = 1`)
//!
//! postcard of a mirror of [`KpiRecord`] whose enums are stored as codes fixed in this file
//! (not serde variant indices), so reordering the model's enums cannot change stored data.
//!
//! Decoding checks every length and id and never panics: a damaged payload is an error.

use std::collections::HashMap;

use fivezero_model::wire::{
    Factor, KpiQuality, KpiRecord, Period, Quality, Reading, TierOutcome, TierStatus, Value, Window,
};
use serde::{Deserialize, Serialize};

/// Version byte of a readings payload.
const READINGS_V1: u8 = 1;
/// Version byte of a KPI payload.
const KPI_V1: u8 = 1;

const KIND_NULL: u8 = 0;
const KIND_F64: u8 = 1;
const KIND_F32: u8 = 2;
const KIND_TEXT: u8 = 3;
const KIND_DECIMAL: u8 = 4;
const MAX_DECIMALS: u8 = 9;

const POW10: [f64; 10] = [1.0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9];

/// Why a payload could not be decoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("damaged payload: {0}")]
pub(crate) struct DecodeError(pub(crate) &'static str);

/// The names dictionary of a database: device, metric and reason strings by id.
#[derive(Debug, Default, Clone)]
pub(crate) struct Names {
    by_name: HashMap<Box<str>, u32>,
    by_id: HashMap<u32, Box<str>>,
    max_id: u32,
}

impl Names {
    /// Adds a name known to the database.
    pub(crate) fn insert(&mut self, id: u32, name: &str) {
        self.by_name.insert(name.into(), id);
        self.by_id.insert(id, name.into());
        self.max_id = self.max_id.max(id);
    }

    /// The name of `id`.
    pub(crate) fn get(&self, id: u32) -> Option<&str> {
        self.by_id.get(&id).map(AsRef::as_ref)
    }

    /// Number of names.
    pub(crate) fn len(&self) -> usize {
        self.by_id.len()
    }
}

/// Interns names for one transaction: ids of new names are handed out tentatively and become
/// part of [`Names`] only once the transaction commits ([`Interner::into_new`]).
#[derive(Debug)]
pub(crate) struct Interner<'a> {
    names: &'a Names,
    new: Vec<(u32, String)>,
    new_ids: HashMap<String, u32>,
}

impl<'a> Interner<'a> {
    /// An interner over the committed names.
    pub(crate) fn new(names: &'a Names) -> Self {
        Self {
            names,
            new: Vec::new(),
            new_ids: HashMap::new(),
        }
    }

    fn id(&mut self, name: &str) -> u32 {
        if let Some(&id) = self.names.by_name.get(name) {
            return id;
        }
        if let Some(&id) = self.new_ids.get(name) {
            return id;
        }
        let id = self
            .names
            .max_id
            .saturating_add(1)
            .saturating_add(u32::try_from(self.new.len()).unwrap_or(u32::MAX));
        self.new.push((id, name.to_owned()));
        self.new_ids.insert(name.to_owned(), id);
        id
    }

    /// Names that were not in the dictionary, with their tentative ids.
    pub(crate) fn into_new(self) -> Vec<(u32, String)> {
        self.new
    }
}

// ------------------------------------------------------------------------------------------
// Primitive writers and readers
// ------------------------------------------------------------------------------------------

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push((v as u8) | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn zigzag(v: i64) -> u64 {
    ((v << 1) ^ (v >> 63)) as u64
}

fn unzigzag(v: u64) -> i64 {
    ((v >> 1) as i64) ^ -((v & 1) as i64)
}

struct Reader<'a> {
    bytes: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn byte(&mut self) -> Result<u8, DecodeError> {
        let b = *self
            .bytes
            .get(self.at)
            .ok_or(DecodeError("truncated byte"))?;
        self.at += 1;
        Ok(b)
    }

    fn take(&mut self, n: usize) -> Result<&'a [u8], DecodeError> {
        let end = self
            .at
            .checked_add(n)
            .ok_or(DecodeError("length overflow"))?;
        let s = self
            .bytes
            .get(self.at..end)
            .ok_or(DecodeError("truncated field"))?;
        self.at = end;
        Ok(s)
    }

    fn varint(&mut self) -> Result<u64, DecodeError> {
        let mut v = 0_u64;
        for shift in (0..64).step_by(7) {
            let b = self.byte()?;
            v |= u64::from(b & 0x7f) << shift;
            if b & 0x80 == 0 {
                return Ok(v);
            }
        }
        Err(DecodeError("varint too long"))
    }

    fn id(&mut self) -> Result<u32, DecodeError> {
        u32::try_from(self.varint()?).map_err(|_| DecodeError("name id out of range"))
    }
}

// ------------------------------------------------------------------------------------------
// Values
// ------------------------------------------------------------------------------------------

/// The shortest exact form of `v`: `(kind, bytes)`.
fn encode_number(v: f64, out: &mut Vec<u8>) -> u8 {
    const LIMIT: f64 = 9_007_199_254_740_992.0; // 2^53
    for k in 0..=MAX_DECIMALS {
        let scaled = v * POW10[usize::from(k)];
        if !scaled.is_finite() || scaled.abs() >= LIMIT {
            break;
        }
        // |scaled| < 2^53, so the rounded value fits an i64 exactly; the decoder computes
        // `back` with the same expression.
        let m = scaled.round() as i64;
        let back = m as f64 / POW10[usize::from(k)];
        if back.to_bits() == v.to_bits() {
            put_varint(out, zigzag(m));
            return KIND_DECIMAL + k;
        }
    }
    let single = v as f32;
    if f64::from(single).to_bits() == v.to_bits() {
        out.extend_from_slice(&single.to_le_bytes());
        return KIND_F32;
    }
    out.extend_from_slice(&v.to_le_bytes());
    KIND_F64
}

fn decode_value(kind: u8, r: &mut Reader<'_>) -> Result<Option<Value>, DecodeError> {
    Ok(match kind {
        KIND_NULL => None,
        KIND_F64 => {
            let b: [u8; 8] = r
                .take(8)?
                .try_into()
                .map_err(|_| DecodeError("f64 width"))?;
            Some(Value::Number(f64::from_le_bytes(b)))
        }
        KIND_F32 => {
            let b: [u8; 4] = r
                .take(4)?
                .try_into()
                .map_err(|_| DecodeError("f32 width"))?;
            Some(Value::Number(f64::from(f32::from_le_bytes(b))))
        }
        KIND_TEXT => {
            let len = usize::try_from(r.varint()?).map_err(|_| DecodeError("text length"))?;
            let text = std::str::from_utf8(r.take(len)?).map_err(|_| DecodeError("text utf-8"))?;
            Some(Value::Text(text.to_owned()))
        }
        k if (KIND_DECIMAL..=KIND_DECIMAL + MAX_DECIMALS).contains(&k) => {
            let m = unzigzag(r.varint()?);
            let v = m as f64 / POW10[usize::from(k - KIND_DECIMAL)];
            Some(Value::Number(v))
        }
        _ => return Err(DecodeError("unknown value kind")),
    })
}

fn quality_code(q: Quality) -> u8 {
    match q {
        Quality::Good => 0,
        Quality::Stale => 1,
        Quality::Error => 2,
    }
}

fn quality_of(code: u8) -> Result<Quality, DecodeError> {
    match code {
        0 => Ok(Quality::Good),
        1 => Ok(Quality::Stale),
        2 => Ok(Quality::Error),
        _ => Err(DecodeError("unknown quality")),
    }
}

// ------------------------------------------------------------------------------------------
// Readings
// ------------------------------------------------------------------------------------------

/// Encodes the readings of one poll cycle of `device`.
pub(crate) fn encode_readings(
    device: &str,
    readings: &[Reading],
    names: &mut Interner<'_>,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(16 + readings.len() * 6);
    out.push(READINGS_V1);
    let device_id = names.id(device);
    put_varint(&mut out, u64::from(device_id));
    let base = readings.first().map_or(0, |r| r.ts);
    put_varint(&mut out, zigzag(base));
    put_varint(&mut out, readings.len() as u64);
    let mut prev = base;
    let mut value = Vec::with_capacity(16);
    for r in readings {
        value.clear();
        let kind = match &r.value {
            None => KIND_NULL,
            Some(Value::Number(v)) => encode_number(*v, &mut value),
            Some(Value::Text(t)) => {
                put_varint(&mut value, t.len() as u64);
                value.extend_from_slice(t.as_bytes());
                KIND_TEXT
            }
        };
        let other_device = r.device != device;
        let tag = quality_code(r.quality)
            | (u8::from(r.reason.is_some()) << 2)
            | (u8::from(other_device) << 3)
            | (kind << 4);
        out.push(tag);
        put_varint(&mut out, u64::from(names.id(&r.metric)));
        put_varint(&mut out, zigzag(r.ts.wrapping_sub(prev)));
        prev = r.ts;
        if other_device {
            put_varint(&mut out, u64::from(names.id(&r.device)));
        }
        if let Some(reason) = &r.reason {
            put_varint(&mut out, u64::from(names.id(reason)));
        }
        out.extend_from_slice(&value);
    }
    out
}

/// Decodes a readings payload.
pub(crate) fn decode_readings(payload: &[u8], names: &Names) -> Result<Vec<Reading>, DecodeError> {
    let mut r = Reader {
        bytes: payload,
        at: 0,
    };
    if r.byte()? != READINGS_V1 {
        return Err(DecodeError("unknown readings payload version"));
    }
    let name = |id: u32| names.get(id).ok_or(DecodeError("unknown name id"));
    let device = name(r.id()?)?;
    let mut ts = unzigzag(r.varint()?);
    let n = usize::try_from(r.varint()?).map_err(|_| DecodeError("count"))?;
    // Every reading takes at least 3 bytes: a damaged count cannot allocate much.
    let mut readings = Vec::with_capacity(n.min(payload.len() / 3));
    for _ in 0..n {
        let tag = r.byte()?;
        let metric = name(r.id()?)?;
        ts = ts.wrapping_add(unzigzag(r.varint()?));
        let device = if tag & 0b1000 != 0 {
            name(r.id()?)?
        } else {
            device
        };
        let reason = if tag & 0b100 != 0 {
            Some(name(r.id()?)?.to_owned())
        } else {
            None
        };
        let value = decode_value(tag >> 4, &mut r)?;
        readings.push(Reading {
            ts,
            device: device.to_owned(),
            metric: metric.to_owned(),
            value,
            quality: quality_of(tag & 0b11)?,
            reason,
        });
    }
    if r.at != payload.len() {
        return Err(DecodeError("trailing bytes"));
    }
    Ok(readings)
}

// ------------------------------------------------------------------------------------------
// KPI records
// ------------------------------------------------------------------------------------------

#[derive(Serialize, Deserialize)]
struct StoredKpi {
    kpi: String,
    start: i64,
    end: i64,
    period: u8,
    tz: String,
    numerator: Option<f64>,
    denominator: Option<f64>,
    value: Option<f64>,
    unit: String,
    coverage: f64,
    quality: u8,
    tiers: Vec<(String, u8)>,
    factors: Vec<(String, f64, String, String)>,
    formula_version: u32,
    flags: Vec<String>,
}

fn period_code(p: Period) -> u8 {
    match p {
        Period::FifteenMinutes => 0,
        Period::Hour => 1,
        Period::Day => 2,
    }
}

fn period_of(c: u8) -> Result<Period, DecodeError> {
    match c {
        0 => Ok(Period::FifteenMinutes),
        1 => Ok(Period::Hour),
        2 => Ok(Period::Day),
        _ => Err(DecodeError("unknown period")),
    }
}

fn kpi_quality_code(q: KpiQuality) -> u8 {
    match q {
        KpiQuality::Ok => 0,
        KpiQuality::Estimated => 1,
        KpiQuality::InsufficientData => 2,
        KpiQuality::NoDenominator => 3,
        KpiQuality::MeterFault => 4,
    }
}

fn kpi_quality_of(c: u8) -> Result<KpiQuality, DecodeError> {
    match c {
        0 => Ok(KpiQuality::Ok),
        1 => Ok(KpiQuality::Estimated),
        2 => Ok(KpiQuality::InsufficientData),
        3 => Ok(KpiQuality::NoDenominator),
        4 => Ok(KpiQuality::MeterFault),
        _ => Err(DecodeError("unknown KPI quality")),
    }
}

fn outcome_code(o: TierOutcome) -> u8 {
    match o {
        TierOutcome::Achieved => 0,
        TierOutcome::NotAchieved => 1,
        TierOutcome::InsufficientData => 2,
    }
}

fn outcome_of(c: u8) -> Result<TierOutcome, DecodeError> {
    match c {
        0 => Ok(TierOutcome::Achieved),
        1 => Ok(TierOutcome::NotAchieved),
        2 => Ok(TierOutcome::InsufficientData),
        _ => Err(DecodeError("unknown tier outcome")),
    }
}

/// Encodes KPI records.
pub(crate) fn encode_kpis(records: &[KpiRecord]) -> Vec<u8> {
    let stored: Vec<StoredKpi> = records
        .iter()
        .map(|k| StoredKpi {
            kpi: k.kpi.clone(),
            start: k.window.start,
            end: k.window.end,
            period: period_code(k.window.period),
            tz: k.window.tz.clone(),
            numerator: k.numerator,
            denominator: k.denominator,
            value: k.value,
            unit: k.unit.clone(),
            coverage: k.coverage,
            quality: kpi_quality_code(k.quality),
            tiers: k
                .tiers
                .iter()
                .map(|t| (t.tier.clone(), outcome_code(t.status)))
                .collect(),
            factors: k
                .factors
                .iter()
                .map(|f| (f.name.clone(), f.value, f.unit.clone(), f.source.clone()))
                .collect(),
            formula_version: k.formula_version,
            flags: k.flags.clone(),
        })
        .collect();
    let mut out = vec![KPI_V1];
    // postcard cannot fail on these plain types when writing into a Vec.
    out.extend(postcard::to_stdvec(&stored).unwrap_or_default());
    out
}

/// Decodes a KPI payload.
pub(crate) fn decode_kpis(payload: &[u8]) -> Result<Vec<KpiRecord>, DecodeError> {
    let Some((&KPI_V1, body)) = payload.split_first() else {
        return Err(DecodeError("unknown KPI payload version"));
    };
    let stored: Vec<StoredKpi> =
        postcard::from_bytes(body).map_err(|_| DecodeError("KPI records"))?;
    stored
        .into_iter()
        .map(|s| {
            Ok(KpiRecord {
                kpi: s.kpi,
                window: Window {
                    start: s.start,
                    end: s.end,
                    period: period_of(s.period)?,
                    tz: s.tz,
                },
                numerator: s.numerator,
                denominator: s.denominator,
                value: s.value,
                unit: s.unit,
                coverage: s.coverage,
                quality: kpi_quality_of(s.quality)?,
                tiers: s
                    .tiers
                    .into_iter()
                    .map(|(tier, c)| {
                        Ok(TierStatus {
                            tier,
                            status: outcome_of(c)?,
                        })
                    })
                    .collect::<Result<_, DecodeError>>()?,
                factors: s
                    .factors
                    .into_iter()
                    .map(|(name, value, unit, source)| Factor {
                        name,
                        value,
                        unit,
                        source,
                    })
                    .collect(),
                formula_version: s.formula_version,
                flags: s.flags,
            })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reading(ts: i64, metric: &str, value: Option<Value>) -> Reading {
        Reading {
            ts,
            device: "pv-roof-a".into(),
            metric: metric.into(),
            value,
            quality: Quality::Good,
            reason: None,
        }
    }

    fn round_trip(readings: &[Reading]) -> (Vec<Reading>, usize) {
        let names = Names::default();
        let mut interner = Interner::new(&names);
        let bytes = encode_readings("pv-roof-a", readings, &mut interner);
        let mut names = Names::default();
        for (id, name) in interner.into_new() {
            names.insert(id, &name);
        }
        (
            decode_readings(&bytes, &names).expect("decodes"),
            bytes.len(),
        )
    }

    #[test]
    fn every_value_reads_back_bit_for_bit() {
        let values = [
            0.0,
            -0.0,
            1.0,
            230.5,
            -12.25,
            0.1 + 0.2,
            1e300,
            -1e-300,
            f64::MIN_POSITIVE,
            123_456.7,
            9_007_199_254_740_993.0,
            f64::from(1.1_f32),
            0.000_000_001,
        ];
        let readings: Vec<Reading> = values
            .iter()
            .enumerate()
            .map(|(i, &v)| reading(1_700_000_000_000 + i as i64, "m", Some(Value::Number(v))))
            .collect();
        let (back, _) = round_trip(&readings);
        for (a, b) in readings.iter().zip(&back) {
            match (&a.value, &b.value) {
                (Some(Value::Number(x)), Some(Value::Number(y))) => {
                    assert_eq!(x.to_bits(), y.to_bits(), "{x} came back as {y}");
                }
                _ => panic!("numbers expected"),
            }
        }
        assert_eq!(back, readings);
    }

    #[test]
    fn nulls_text_reasons_and_other_devices_round_trip() {
        let mut readings = vec![
            reading(5, "a", None),
            reading(4, "b", Some(Value::Text("SN-1234 ünïcode".into()))),
            reading(-9, "c", Some(Value::Number(3.0))),
        ];
        readings[0].quality = Quality::Error;
        readings[0].reason = Some("timeout".into());
        readings[1].quality = Quality::Stale;
        readings[2].device = "meter-1".into();
        let (back, _) = round_trip(&readings);
        assert_eq!(back, readings);
    }

    #[test]
    fn a_typical_cycle_takes_a_few_bytes_per_reading() {
        let readings: Vec<Reading> = (0..150)
            .map(|i| {
                reading(
                    1_700_000_000_000,
                    &format!("metric.{i}"),
                    Some(Value::Number(f64::from(i) * 0.1 + 200.0)),
                )
            })
            .collect();
        let (back, len) = round_trip(&readings);
        assert_eq!(back, readings);
        assert!(len <= 150 * 7, "{len} bytes");
    }

    #[test]
    fn damaged_payloads_are_errors_not_panics() {
        let readings = vec![reading(1, "a", Some(Value::Number(0.3)))];
        let names = Names::default();
        let mut interner = Interner::new(&names);
        let bytes = encode_readings("pv-roof-a", &readings, &mut interner);
        let mut names = Names::default();
        for (id, name) in interner.into_new() {
            names.insert(id, &name);
        }
        for cut in 0..bytes.len() {
            assert!(decode_readings(&bytes[..cut], &names).is_err());
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(decode_readings(&long, &names).is_err());
        assert!(decode_readings(&[1, 1, 0, 0xff, 0xff, 0xff, 0xff, 0x0f], &names).is_err());
        assert!(decode_readings(&bytes, &Names::default()).is_err());
        assert!(decode_kpis(&[]).is_err());
        assert!(decode_kpis(&[1, 200, 3]).is_err());
    }
}
