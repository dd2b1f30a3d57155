//! Warnings for likely mistakes in a profile that loads: things that are legal, and sometimes
//! right, but more often an integrator's slip. `fivezero-gateway profile check` prints them as
//! `file:line:column: warning: ...`; they never refuse a profile.
//!
//! The lints (each has a test in `tests/lint.rs`):
//! - **counter wrap**: a 16- or 32-bit integer energy counter that wraps within a year at the
//!   device's `rated_power` (`[device]`); without a rating the lint cannot judge and is silent.
//!   A scale-factor point is judged with the factor at 0 (10^0).
//! - **float32 total**: a counter read as `f32` keeps 24 significant bits, so a growing total
//!   counts in ever coarser steps; the warning says how coarse after a year at the rating (or
//!   at 1,000,000 units without one).
//! - **no unit**: a gauge or counter point without `unit` silently takes the metric's canonical
//!   unit; writing it down confirms the manual says so.
//! - **scale factor on a float**: float registers carry the value itself; a `scale_factor`
//!   (SunSpec `*_SF`) on an `f32`/`f64` point belongs to an integer model.
//! - **1-based address**: an `address` that looks like the manual's Modicon notation (30001 on
//!   the input table, 10001 on the discrete table, 40001 on the holding table), or 32-bit points
//!   that all start at odd addresses in a table whose lowest address is odd (1, 3, 5, ... where
//!   the device counts 0, 2, 4, ...).

use std::collections::BTreeMap;
use std::ops::Range;

use fivezero_model::Kind;

use crate::profile::{DataType, Profile, Table};

/// Hours in a (non-leap) year.
const HOURS_PER_YEAR: f64 = 8760.0;

/// What the loader knew about a point's text that the validated [`crate::Point`] no longer says.
#[derive(Debug, Clone)]
pub(crate) struct PointFacts {
    /// The whole `[[point]]` table.
    pub(crate) span: Range<usize>,
    /// `unit` was written.
    pub(crate) unit_given: bool,
    /// The span of `address` when the point was located by a raw 0-based `address`.
    pub(crate) address: Option<Range<usize>>,
    /// The span of `scale_factor`, when given.
    pub(crate) scale_factor: Option<Range<usize>>,
}

/// One warning: where, and what to do.
pub(crate) type Finding = (Range<usize>, String);

/// Runs every lint over a validated profile; `facts[i]` belongs to `profile.points[i]`.
pub(crate) fn lint(profile: &Profile, facts: &[PointFacts]) -> Vec<Finding> {
    let mut out = Vec::new();
    for (point, fact) in profile.points.iter().zip(facts) {
        counter_width(profile, point, fact, &mut out);
        no_unit(point, fact, &mut out);
        float_scale_factor(point, fact, &mut out);
        modicon_address(point, fact, &mut out);
    }
    odd_wide_points(profile, facts, &mut out);
    out.sort_by_key(|(span, _)| span.start);
    out
}

/// Energy counters of 16 or 32 bits that wrap within a year at the rating; float32 totals.
fn counter_width(
    profile: &Profile,
    point: &crate::Point,
    fact: &PointFacts,
    out: &mut Vec<Finding>,
) {
    let Some(metric) = point.metric else { return };
    if point.kind != Kind::Counter {
        return;
    }
    let name = &point.name;
    let unit = metric.unit;
    // One raw count in the metric's unit (scale factor taken as 10^0).
    let per_count = (point.scale * point.conversion.scale).abs();
    let rating = profile.rated_power_kw.filter(|r| *r > 0.0);
    let range = match point.data_type {
        DataType::U16 => Some(65_536.0),
        DataType::I16 => Some(32_768.0),
        DataType::U32 => Some(4_294_967_296.0),
        DataType::I32 => Some(2_147_483_648.0),
        _ => None,
    };
    if let (Some(range), Some(rating), "kWh") = (range, rating, unit) {
        let wraps_at = range * per_count;
        let hours = wraps_at / rating;
        if hours < HOURS_PER_YEAR {
            let sf = if point.scale_factor.is_some() {
                " (with its scale factor at 0)"
            } else {
                ""
            };
            out.push((
                fact.span.clone(),
                format!(
                    "point `{name}`: this {} counter wraps every {} {unit}{sf}, which takes {} at the rated {} kW; check that `scale` and `unit` match the manual and that the device has no wider or coarser energy register. The gateway counts one wrap between polls, so poll it well within that time",
                    point.data_type.as_str(),
                    figure(wraps_at),
                    duration(hours),
                    figure(rating)
                ),
            ));
        }
    }
    if point.data_type == DataType::F32 {
        let (at, why) = match rating {
            Some(r) if unit == "kWh" => (
                r * HOURS_PER_YEAR,
                format!("after a year at the rated {} kW", figure(r)),
            ),
            _ => (1_000_000.0, String::from("at")),
        };
        let step = f32_step(at);
        out.push((
            fact.span.clone(),
            format!(
                "point `{name}`: a float32 total keeps 24 significant bits; {why} {} {unit} it counts in steps of {} {unit}, and coarser as it grows. Use an integer register for the total if the device has one; KPIs over short windows will show the steps",
                figure(at),
                figure(step)
            ),
        ));
    }
}

/// The distance between adjacent float32 values at `x` (x > 0).
fn f32_step(x: f64) -> f64 {
    #[allow(clippy::cast_possible_truncation)] // Only the exponent matters; x is a plain figure.
    let exp = x.log2().floor() as i32;
    2f64.powi(exp - 23)
}

fn no_unit(point: &crate::Point, fact: &PointFacts, out: &mut Vec<Finding>) {
    let Some(metric) = point.metric else { return };
    if fact.unit_given || !matches!(metric.kind, Kind::Gauge | Kind::Counter) {
        return;
    }
    out.push((
        fact.span.clone(),
        format!(
            "point `{}` has no `unit`, so it is read as {} (the unit of `{}`); write `unit = \"{}\"` if that is what the manual says, or the manual's unit",
            point.name, metric.unit, metric.id, metric.unit
        ),
    ));
}

fn float_scale_factor(point: &crate::Point, fact: &PointFacts, out: &mut Vec<Finding>) {
    if !point.data_type.is_float() {
        return;
    }
    if let Some(span) = &fact.scale_factor {
        out.push((
            span.clone(),
            format!(
                "point `{}` is a {} with a `scale_factor`: float registers carry the value itself (SunSpec float models 111-113 and 211-214 have no *_SF points), so the factor probably belongs to the integer model; remove `scale_factor`",
                point.name,
                point.data_type.as_str()
            ),
        ));
    }
}

/// The Modicon base of a table: its first register in the manual's 5-digit notation.
fn modicon_first(table: Table) -> Option<u16> {
    match table {
        Table::Discrete => Some(10_001),
        Table::Input => Some(30_001),
        Table::Holding => Some(40_001),
        Table::Coil => None,
    }
}

fn modicon_address(point: &crate::Point, fact: &PointFacts, out: &mut Vec<Finding>) {
    let Some(span) = &fact.address else { return };
    let Some(first) = modicon_first(point.table) else {
        return;
    };
    let a = point.address;
    // Holding 40000.. is where SunSpec lives (absolute PDU addresses), so only the exact
    // 40001 is suspicious there; input 3xxxx and discrete 1xxxx addresses are rare as such.
    let suspicious = match point.table {
        Table::Holding => a == first,
        _ => (first..first + 9_999).contains(&a),
    };
    if suspicious {
        let register = u32::from(a);
        out.push((
            span.clone(),
            format!(
                "point `{}`: address {a} looks like the manual's Modicon notation ({} register {register} is address {}); if so, write `register = {register}` instead of `address`",
                point.name,
                point.table.as_str(),
                a - first
            ),
        ));
    }
}

/// In a table located by raw addresses, 32-bit (or wider) points all at odd addresses with the
/// lowest address odd: the device almost certainly counts 0, 2, 4 and the manual 1, 3, 5.
fn odd_wide_points(profile: &Profile, facts: &[PointFacts], out: &mut Vec<Finding>) {
    let mut tables: BTreeMap<Table, Vec<usize>> = BTreeMap::new();
    for (i, (p, f)) in profile.points.iter().zip(facts).enumerate() {
        if f.address.is_some() && !p.table.is_bits() {
            tables.entry(p.table).or_default().push(i);
        }
    }
    for (table, indices) in tables {
        let wide: Vec<usize> = indices
            .iter()
            .copied()
            .filter(|&i| profile.points[i].data_type.width() >= 2)
            .collect();
        let Some(&lowest) = indices.iter().min_by_key(|&&i| profile.points[i].address) else {
            continue;
        };
        let low = profile.points[lowest].address;
        if wide.len() >= 2
            && low % 2 == 1
            && wide.iter().all(|&i| profile.points[i].address % 2 == 1)
        {
            let span = facts[lowest].address.clone().unwrap_or(0..0);
            out.push((
                span,
                format!(
                    "every 32-bit point of the {} table starts at an odd address and the lowest is {low}: this looks like the manual's 1-based numbering. If the manual counts from 1, write `number = N` instead of `address` (fivezero subtracts 1); if the device really uses these addresses, ignore this",
                    table.as_str()
                ),
            ));
        }
    }
}

/// A figure for people: thousands separated, at most three decimals for small numbers.
fn figure(x: f64) -> String {
    if x >= 1000.0 {
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // x ≥ 1000, finite.
        let n = x.round() as u64;
        let digits = n.to_string();
        let mut out = String::new();
        for (i, c) in digits.chars().enumerate() {
            if i > 0 && (digits.len() - i).is_multiple_of(3) {
                out.push(',');
            }
            out.push(c);
        }
        out
    } else if x >= 10.0 || x == x.trunc() {
        format!("{}", (x * 10.0).round() / 10.0)
    } else {
        // Three significant digits.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // 0 < x < 10.
        let decimals = (2.0 - x.log10().floor()).clamp(0.0, 12.0) as usize;
        let s = format!("{x:.decimals$}");
        s.trim_end_matches('0').trim_end_matches('.').to_owned()
    }
}

/// A duration in hours, in the largest unit that keeps it readable.
fn duration(hours: f64) -> String {
    if hours < 48.0 {
        format!("{} hours", figure(hours))
    } else if hours < 24.0 * 60.0 {
        format!("{} days", figure((hours / 24.0).round()))
    } else {
        format!("{} months", figure((hours / 730.0 * 10.0).round() / 10.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn figures_read_like_a_person_wrote_them() {
        assert_eq!(figure(4_294_967.296), "4,294,967");
        assert_eq!(figure(0.0625), "0.0625");
        assert_eq!(figure(25.0), "25");
        assert_eq!(figure(2.978_909), "2.98");
        assert_eq!(figure(0.25), "0.25");
        assert_eq!(figure(219_000.0), "219,000");
        assert_eq!(duration(10.0), "10 hours");
        assert_eq!(duration(240.0), "10 days");
        assert_eq!(duration(5_000.0), "6.8 months");
    }

    #[test]
    fn the_float32_step_doubles_with_each_power_of_two() {
        assert!((f32_step(1_000_000.0) - 0.0625).abs() < 1e-12);
        assert!((f32_step(10_000_000.0) - 1.0).abs() < 1e-12);
        assert!((f32_step(16_777_216.0) - 2.0).abs() < 1e-12);
    }
}
