//! Unit parsing and conversion into a metric's canonical unit.
//!
//! A device profile says in which unit a register counts (`unit = "MWh"`, `unit = "m3/h"`,
//! `unit = "degC"`); the catalogue says in which unit the metric is kept (`kWh`, `m³/h`, `°C`).
//! [`conversion`] parses both and returns the affine map `y = x * scale + offset` that the codec
//! applies to every reading. Parsing and [`Conversion::between`] run once per point when a
//! profile loads; [`Conversion::apply`] runs per reading and is one multiply-add.
//!
//! # Where the numbers and the spellings come from
//!
//! Every conversion factor and temperature offset comes from the [`uom`] crate: each unit's map
//! to the SI base unit is computed from a `uom` quantity (for example
//! `Energy::new::<kilowatt_hour>(1.0).value` is 3.6e6 J). Nothing here hard-codes a factor.
//!
//! The string table (which spellings mean which `uom` unit) is ours, because `uom`'s own
//! `FromStr` does not fit: it parses a whole quantity of a type known in advance (`"1.5 kW · h"`
//! as an `Energy`), it only accepts `uom`'s own abbreviations and names (`"kW · h"`, `"m³/h"`,
//! `"°C"`), and it cannot tell which quantity a bare unit string measures. Equipment datasheets
//! write `kWh`, `kW*h`, `m3/h`, `degC`, `℃`, `kvar`, `Nm³/h` and `1/min`; several of those
//! have no `uom` unit at all (reactive and apparent power, volumes at normal conditions), and
//! `uom` would happily treat `kvar` as `kW` or `Nm³` as `m³`, which must stay apart here.
//!
//! # Accepted spellings
//!
//! Before lookup, a unit string is trimmed; whitespace and multiplication signs (`·`, `⋅`, `*`)
//! are dropped (`"kW · h"` is `kWh`); superscripts and `^` become plain digits (`m³`, `m^3` and
//! `m3` are the same); `℃`/`℉` become `°C`/`°F`; a leading `delta` or `∆` becomes `Δ`. Case is
//! kept: `mW` is a milliwatt and `MW` a megawatt.
//!
//! | dimension | canonical symbols (other accepted spellings) |
//! |---|---|
//! | no unit | `""` (state and info metrics) |
//! | energy | `Wh` `kWh` `MWh` `GWh` `J` `kJ` `MJ` `GJ` |
//! | power | `W` `kW` `MW` `GW` `mW` |
//! | reactive power | `var` `kvar` `Mvar` (`VAr`, `kVAr`, `kVAR`, …) |
//! | apparent power | `VA` `kVA` `MVA` |
//! | reactive energy | `varh` `kvarh` `Mvarh` (`kVArh`, …) |
//! | apparent energy | `VAh` `kVAh` `MVAh` |
//! | voltage, current, frequency | `mV` `V` `kV`, `mA` `A` `kA`, `Hz` `kHz` |
//! | temperature | `K` `°C` (`degC`, `C`, `℃`) `°F` (`degF`, `℉`) |
//! | temperature difference | `ΔK` `Δ°C` (`ΔdegC`, `ΔC`, `delta K`, …) `Δ°F` |
//! | pressure | `Pa` `hPa` `kPa` `MPa` `mbar` `bar` `psi` |
//! | volume | `L` (`l`) `m³` |
//! | volume at normal conditions | `Nm³` |
//! | volume flow | `L/h` `L/min` `L/s` (`l/…`) `m³/h` `m³/min` `m³/s` |
//! | volume flow at normal conditions | `Nm³/h` `Nm³/min` `Nm³/s` |
//! | mass, mass flow | `mg` `g` `kg` `t`, `kg/s` `kg/min` `kg/h` `t/h` `t/d` |
//! | ratio | `1` (a plain fraction) `%` (`vol%`, `Vol.-%`, `%vol`) `‰` `ppm` (`ppmv`) `ppb` |
//! | mass concentration | `mg/m³` `g/m³` |
//! | mass concentration at normal conditions | `mg/Nm³` `g/Nm³` |
//! | time, speed | `ms` `s` `min` `h` `d`, `m/s` `km/h` |
//! | rotational speed | `rpm` (`1/min`, `r/min`, `min⁻¹`, `U/min`, `rev/min`) |
//! | irradiance | `W/m²` `kW/m²` |
//!
//! Volumes at normal conditions (`Nm³`, `Nm³/h`, `mg/Nm³`) are their own dimensions: turning
//! them into actual volumes needs the gas's pressure and temperature, so `Nm³` never converts
//! to `m³`. A ratio of `1` is a plain fraction: 50 `%` is 0.5 in `1`.
//!
//! # Temperatures and temperature differences
//!
//! `K`, `°C` and `°F` are absolute temperatures: `°C` to `K` adds 273.15. That is right for
//! every temperature the plant reports, and it also makes the catalogue's difference metric
//! (`heat.temperature_difference`, kept in `K`) work for a device that reports the difference
//! in `K`: `K` to `K` is the identity.
//!
//! A device that reports a *difference* in degrees Celsius or Fahrenheit must say so with `Δ`:
//! `Δ°C`, `ΔK` and `Δ°F` form the [`Dimension::TemperatureDifference`], and a conversion where
//! either side is a difference is an interval conversion: scale only, never an offset (`Δ°C` to
//! `K` is the identity, `Δ°F` to `K` multiplies by 5/9). Writing plain `°C` for a difference
//! would add 273.15; the unit string alone cannot tell, so the `Δ` is the integrator's job.

use std::collections::HashMap;
use std::fmt;
use std::str::FromStr;
use std::sync::LazyLock;

use thiserror::Error;
use uom::si::f64 as q;
use uom::si::{
    angular_velocity, electric_current, electric_potential, energy, frequency, heat_flux_density,
    mass, mass_concentration, mass_rate, power, pressure, ratio, temperature_interval,
    thermodynamic_temperature, time, velocity, volume, volume_rate,
};

/// An affine conversion `y = x * scale + offset`, computed once per point and applied per reading.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Conversion {
    /// Multiplier.
    pub scale: f64,
    /// Added after the multiplier.
    pub offset: f64,
}

impl Conversion {
    /// The conversion that changes nothing.
    pub const IDENTITY: Self = Self {
        scale: 1.0,
        offset: 0.0,
    };

    /// Converts one value: one multiply and one add.
    #[must_use]
    #[inline]
    pub fn apply(&self, x: f64) -> f64 {
        x * self.scale + self.offset
    }

    /// The conversion from unit `from` into unit `to` (normally the metric's canonical unit).
    ///
    /// Both units must measure the same [`Dimension`]. The one exception is temperature: when
    /// either side is a [`Dimension::TemperatureDifference`] (`ΔK`, `Δ°C`, `Δ°F`) and the other
    /// a temperature or a difference, the conversion is an interval conversion (scale only, no
    /// offset); see the module documentation.
    ///
    /// # Errors
    /// [`UnitError::Incompatible`] when the two units measure different things.
    pub fn between(from: &Unit, to: &Unit) -> Result<Self, UnitError> {
        if from == to {
            return Ok(Self::IDENTITY);
        }
        let (a, b) = (from.to_si, to.to_si);
        if is_interval_pair(from.dimension, to.dimension) {
            return Ok(Self {
                scale: a.scale / b.scale,
                offset: 0.0,
            });
        }
        if from.dimension != to.dimension {
            return Err(UnitError::Incompatible {
                from: from.symbol.to_owned(),
                from_dimension: from.dimension,
                to: to.symbol.to_owned(),
                to_dimension: to.dimension,
            });
        }
        // x → SI: x * a.scale + a.offset; SI → y: (si - b.offset) / b.scale.
        Ok(Self {
            scale: a.scale / b.scale,
            offset: (a.offset - b.offset) / b.scale,
        })
    }
}

/// True when a conversion between these dimensions is a temperature interval conversion.
fn is_interval_pair(from: Dimension, to: Dimension) -> bool {
    use Dimension::{Temperature, TemperatureDifference};
    matches!(
        (from, to),
        (TemperatureDifference, Temperature | TemperatureDifference)
            | (Temperature, TemperatureDifference)
    )
}

/// Why a unit was refused.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum UnitError {
    /// The unit is not one fivezero knows.
    #[error("unknown unit {unit:?}{}", unknown_hint(suggestion.as_deref()))]
    Unknown {
        /// The unit as written, trimmed.
        unit: String,
        /// The canonical symbol of a close known unit, if there is one.
        suggestion: Option<String>,
    },
    /// The two units measure different things, so no conversion exists.
    #[error(
        "unit {from:?} measures {from_dimension} but the metric's unit {to:?} measures {to_dimension}"
    )]
    Incompatible {
        /// Canonical symbol of the unit converted from (the device's unit).
        from: String,
        /// What `from` measures.
        from_dimension: Dimension,
        /// Canonical symbol of the unit converted to (the metric's unit).
        to: String,
        /// What `to` measures.
        to_dimension: Dimension,
    },
}

fn unknown_hint(suggestion: Option<&str>) -> String {
    match suggestion {
        Some(s) => format!("; did you mean {s:?}?"),
        None => " (fivezero accepts datasheet spellings such as \"kWh\", \"m³/h\", \"°C\", \
                  \"%\"; the units documentation lists them all)"
            .to_owned(),
    }
}

/// What a unit measures. Units convert into each other only within one dimension.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Dimension {
    /// No unit at all: state codes and text (the empty unit `""`).
    None,
    /// Energy: `Wh`, `kWh`, `J`, `MJ`, …
    Energy,
    /// Active power: `W`, `kW`, `MW`, …
    Power,
    /// Reactive power: `var`, `kvar`, `Mvar`.
    ReactivePower,
    /// Apparent power: `VA`, `kVA`, `MVA`.
    ApparentPower,
    /// Reactive energy: `varh`, `kvarh`, `Mvarh`.
    ReactiveEnergy,
    /// Apparent energy: `VAh`, `kVAh`, `MVAh`.
    ApparentEnergy,
    /// Electric potential: `mV`, `V`, `kV`.
    Voltage,
    /// Electric current: `mA`, `A`, `kA`.
    Current,
    /// Frequency: `Hz`, `kHz`.
    Frequency,
    /// Absolute temperature: `K`, `°C`, `°F`.
    Temperature,
    /// A difference of two temperatures: `ΔK`, `Δ°C`, `Δ°F`; converts by scale only.
    TemperatureDifference,
    /// Pressure: `Pa`, `kPa`, `bar`, `psi`, …
    Pressure,
    /// Actual volume: `L`, `m³`.
    Volume,
    /// Gas volume at normal conditions: `Nm³`.
    NormalVolume,
    /// Actual volume flow: `m³/h`, `L/s`, …
    VolumeFlow,
    /// Gas volume flow at normal conditions: `Nm³/h`, `Nm³/min`, `Nm³/s`.
    NormalVolumeFlow,
    /// Mass: `g`, `kg`, `t`, …
    Mass,
    /// Mass flow: `kg/h`, `t/h`, …
    MassFlow,
    /// A dimensionless ratio: `1`, `%`, `‰`, `ppm`, `ppb`.
    Ratio,
    /// Mass per actual volume: `mg/m³`, `g/m³`.
    MassConcentration,
    /// Mass per volume at normal conditions: `mg/Nm³`, `g/Nm³`.
    NormalMassConcentration,
    /// Time: `s`, `min`, `h`, `d`, …
    Time,
    /// Linear speed: `m/s`, `km/h`.
    Velocity,
    /// Rotational speed: `rpm` (`1/min`).
    RotationalSpeed,
    /// Irradiance (power per area): `W/m²`, `kW/m²`.
    Irradiance,
}

impl Dimension {
    /// A human name for messages: "energy", "power", "volume at normal conditions", …
    #[must_use]
    pub const fn name(self) -> &'static str {
        match self {
            Self::None => "nothing (no unit)",
            Self::Energy => "energy",
            Self::Power => "power",
            Self::ReactivePower => "reactive power",
            Self::ApparentPower => "apparent power",
            Self::ReactiveEnergy => "reactive energy",
            Self::ApparentEnergy => "apparent energy",
            Self::Voltage => "voltage",
            Self::Current => "electric current",
            Self::Frequency => "frequency",
            Self::Temperature => "temperature",
            Self::TemperatureDifference => "temperature difference",
            Self::Pressure => "pressure",
            Self::Volume => "volume",
            Self::NormalVolume => "volume at normal conditions",
            Self::VolumeFlow => "volume flow",
            Self::NormalVolumeFlow => "volume flow at normal conditions",
            Self::Mass => "mass",
            Self::MassFlow => "mass flow",
            Self::Ratio => "ratio",
            Self::MassConcentration => "mass concentration",
            Self::NormalMassConcentration => "mass concentration at normal conditions",
            Self::Time => "time",
            Self::Velocity => "speed",
            Self::RotationalSpeed => "rotational speed",
            Self::Irradiance => "irradiance",
        }
    }
}

impl fmt::Display for Dimension {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A parsed unit. Two units are equal when they are the same unit, whatever the spelling.
#[derive(Debug, Clone, Copy)]
pub struct Unit {
    symbol: &'static str,
    dimension: Dimension,
    /// The map from this unit to the SI base unit of its quantity.
    to_si: Conversion,
}

impl Unit {
    /// The canonical spelling (`"m³/h"` for `"m3/h"`, `"°C"` for `"degC"`); `""` for no unit.
    #[must_use]
    pub fn symbol(&self) -> &str {
        self.symbol
    }

    /// What the unit measures.
    #[must_use]
    pub fn dimension(&self) -> Dimension {
        self.dimension
    }
}

impl PartialEq for Unit {
    fn eq(&self, other: &Self) -> bool {
        self.symbol == other.symbol
    }
}

impl Eq for Unit {}

impl std::hash::Hash for Unit {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.symbol.hash(state);
    }
}

impl fmt::Display for Unit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.symbol)
    }
}

impl FromStr for Unit {
    type Err = UnitError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        parse(s)
    }
}

/// Parses a unit string as found in datasheets (see the module documentation for the spellings).
///
/// The empty string (or only whitespace) is the unit of state and info metrics,
/// [`Dimension::None`].
///
/// # Errors
/// [`UnitError::Unknown`] for a unit not in the table, with a suggestion when a known spelling
/// is close (`"kwh"` suggests `"kWh"`).
pub fn parse(s: &str) -> Result<Unit, UnitError> {
    let trimmed = s.trim();
    let key = normalize(trimmed);
    // A string of only separators ("·") is not the empty unit.
    if key.is_empty() && !trimmed.is_empty() {
        return Err(UnitError::Unknown {
            unit: trimmed.to_owned(),
            suggestion: None,
        });
    }
    match INDEX.get(&key) {
        Some(&i) => {
            let def = &DEFS[i];
            Ok(Unit {
                symbol: def.symbol,
                dimension: def.dimension,
                to_si: (def.to_si)(),
            })
        }
        None => Err(UnitError::Unknown {
            unit: trimmed.to_owned(),
            suggestion: suggest(&key),
        }),
    }
}

/// The conversion from unit `from` (the device's) into unit `to` (the metric's): parses both,
/// then [`Conversion::between`].
///
/// # Errors
/// When either unit is unknown or the two measure different things.
pub fn conversion(from: &str, to: &str) -> Result<Conversion, UnitError> {
    Conversion::between(&parse(from)?, &parse(to)?)
}

/// Brings a spelling to its lookup key: trimmed, no whitespace or multiplication signs, plain
/// digits for superscripts, `°C`/`°F` for the one-character signs, `Δ` for a leading "delta".
fn normalize(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.trim().chars() {
        match c {
            c if c.is_whitespace() => {}
            '·' | '⋅' | '∙' | '•' | '*' | '^' => {}
            '¹' => out.push('1'),
            '²' => out.push('2'),
            '³' => out.push('3'),
            '⁻' => out.push('-'),
            '℃' => out.push_str("°C"),
            '℉' => out.push_str("°F"),
            'º' | '˚' => out.push('°'),
            '∆' => out.push('Δ'),
            c => out.push(c),
        }
    }
    for prefix in ["delta", "Delta", "DELTA"] {
        if let Some(rest) = out.strip_prefix(prefix)
            && !rest.is_empty()
        {
            return format!("Δ{rest}");
        }
    }
    out
}

/// The canonical symbol of the known unit closest to an unknown lookup key, if one is close.
fn suggest(key: &str) -> Option<String> {
    let len = key.chars().count();
    if len == 0 || len > 32 {
        return None;
    }
    // Case and a missing degree sign never count as typos ("kwh" → "kWh", "F" → "°F").
    let loose = |s: &str| s.replace('°', "").to_lowercase();
    let key_loose = loose(key);
    DEFS.iter()
        .flat_map(|def| spellings(def).map(move |sp| (def, normalize(sp))))
        .map(|(def, sp)| {
            let d = crate::metric::edit_distance(&key_loose, &loose(&sp));
            (d, crate::metric::edit_distance(key, &sp), def)
        })
        // Otherwise allow about one edit in three characters, and fewer edits than characters.
        .filter(|&(d, _, _)| d == 0 || (d <= len.max(4) / 3 && d < len))
        .min_by_key(|&(d, exact, _)| (d, exact))
        .map(|(_, _, def)| def.symbol.to_owned())
}

/// One known unit: its canonical symbol, other accepted spellings and map to SI.
struct Def {
    symbol: &'static str,
    dimension: Dimension,
    aliases: &'static [&'static str],
    to_si: fn() -> Conversion,
}

fn spellings(def: &Def) -> impl Iterator<Item = &'static str> {
    std::iter::once(def.symbol).chain(def.aliases.iter().copied())
}

/// Lookup key → index into [`DEFS`].
static INDEX: LazyLock<HashMap<String, usize>> = LazyLock::new(|| {
    let mut index = HashMap::new();
    for (i, def) in DEFS.iter().enumerate() {
        for sp in spellings(def) {
            index.entry(normalize(sp)).or_insert(i);
        }
    }
    index
});

const fn linear(scale: f64) -> Conversion {
    Conversion { scale, offset: 0.0 }
}

/// The SI factor of a `uom` unit: `si!(Power, power::kilowatt)` is 1000 (W per kW).
macro_rules! si {
    ($quantity:ident, $module:ident :: $unit:ident) => {
        || linear(q::$quantity::new::<$module::$unit>(1.0).value)
    };
}

/// The affine map of a `uom` temperature unit to kelvin: the scale from `TemperatureInterval`,
/// the offset from `ThermodynamicTemperature` at zero.
macro_rules! absolute_temperature {
    ($unit:ident) => {
        || Conversion {
            scale: q::TemperatureInterval::new::<temperature_interval::$unit>(1.0).value,
            offset: q::ThermodynamicTemperature::new::<thermodynamic_temperature::$unit>(0.0).value,
        }
    };
}

macro_rules! defs {
    ($( $symbol:literal [$($alias:literal),*] $dimension:ident = $to_si:expr; )*) => {
        /// The table of known units, grouped by dimension.
        static DEFS: &[Def] = &[
            $( Def {
                symbol: $symbol,
                dimension: Dimension::$dimension,
                aliases: &[$($alias),*],
                to_si: $to_si,
            }, )*
        ];
    };
}

defs! {
    "" [] None = || Conversion::IDENTITY;

    "Wh" [] Energy = si!(Energy, energy::watt_hour);
    "kWh" [] Energy = si!(Energy, energy::kilowatt_hour);
    "MWh" [] Energy = si!(Energy, energy::megawatt_hour);
    "GWh" [] Energy = si!(Energy, energy::gigawatt_hour);
    "J" [] Energy = si!(Energy, energy::joule);
    "kJ" [] Energy = si!(Energy, energy::kilojoule);
    "MJ" [] Energy = si!(Energy, energy::megajoule);
    "GJ" [] Energy = si!(Energy, energy::gigajoule);

    // MW before mW so that "mw" suggests the plant-sized unit.
    "W" [] Power = si!(Power, power::watt);
    "kW" [] Power = si!(Power, power::kilowatt);
    "MW" [] Power = si!(Power, power::megawatt);
    "GW" [] Power = si!(Power, power::gigawatt);
    "mW" [] Power = si!(Power, power::milliwatt);

    // uom has no var or VA: they take the factors of the physically identical W and Wh.
    "var" ["VAr", "VAR", "Var"] ReactivePower = si!(Power, power::watt);
    "kvar" ["kVAr", "kVAR", "kVar"] ReactivePower = si!(Power, power::kilowatt);
    "Mvar" ["MVAr", "MVAR", "MVar"] ReactivePower = si!(Power, power::megawatt);
    "VA" [] ApparentPower = si!(Power, power::watt);
    "kVA" [] ApparentPower = si!(Power, power::kilowatt);
    "MVA" [] ApparentPower = si!(Power, power::megawatt);
    "varh" ["VArh", "VARh", "Varh"] ReactiveEnergy = si!(Energy, energy::watt_hour);
    "kvarh" ["kVArh", "kVARh", "kVarh"] ReactiveEnergy = si!(Energy, energy::kilowatt_hour);
    "Mvarh" ["MVArh", "MVARh", "MVarh"] ReactiveEnergy = si!(Energy, energy::megawatt_hour);
    "VAh" [] ApparentEnergy = si!(Energy, energy::watt_hour);
    "kVAh" [] ApparentEnergy = si!(Energy, energy::kilowatt_hour);
    "MVAh" [] ApparentEnergy = si!(Energy, energy::megawatt_hour);

    "V" [] Voltage = si!(ElectricPotential, electric_potential::volt);
    "kV" [] Voltage = si!(ElectricPotential, electric_potential::kilovolt);
    "mV" [] Voltage = si!(ElectricPotential, electric_potential::millivolt);
    "A" [] Current = si!(ElectricCurrent, electric_current::ampere);
    "kA" [] Current = si!(ElectricCurrent, electric_current::kiloampere);
    "mA" [] Current = si!(ElectricCurrent, electric_current::milliampere);
    "Hz" [] Frequency = si!(Frequency, frequency::hertz);
    "kHz" [] Frequency = si!(Frequency, frequency::kilohertz);

    "K" [] Temperature = absolute_temperature!(kelvin);
    "°C" ["degC", "C"] Temperature = absolute_temperature!(degree_celsius);
    "°F" ["degF"] Temperature = absolute_temperature!(degree_fahrenheit);
    "ΔK" [] TemperatureDifference = si!(TemperatureInterval, temperature_interval::kelvin);
    "Δ°C" ["ΔdegC", "ΔC"] TemperatureDifference =
        si!(TemperatureInterval, temperature_interval::degree_celsius);
    "Δ°F" ["ΔdegF", "ΔF"] TemperatureDifference =
        si!(TemperatureInterval, temperature_interval::degree_fahrenheit);

    "Pa" [] Pressure = si!(Pressure, pressure::pascal);
    "hPa" [] Pressure = si!(Pressure, pressure::hectopascal);
    "kPa" [] Pressure = si!(Pressure, pressure::kilopascal);
    "MPa" [] Pressure = si!(Pressure, pressure::megapascal);
    "mbar" [] Pressure = si!(Pressure, pressure::millibar);
    "bar" [] Pressure = si!(Pressure, pressure::bar);
    "psi" ["lbf/in²"] Pressure = si!(Pressure, pressure::pound_force_per_square_inch);

    "L" ["l"] Volume = si!(Volume, volume::liter);
    "m³" [] Volume = si!(Volume, volume::cubic_meter);
    // Normal cubic metres: uom's cubic metre factor, kept apart as their own dimension.
    "Nm³" [] NormalVolume = si!(Volume, volume::cubic_meter);

    "L/h" ["l/h"] VolumeFlow = || linear(
        (q::Volume::new::<volume::liter>(1.0) / q::Time::new::<time::hour>(1.0)).value,
    );
    "L/min" ["l/min"] VolumeFlow = si!(VolumeRate, volume_rate::liter_per_minute);
    "L/s" ["l/s"] VolumeFlow = si!(VolumeRate, volume_rate::liter_per_second);
    "m³/h" [] VolumeFlow = si!(VolumeRate, volume_rate::cubic_meter_per_hour);
    "m³/min" [] VolumeFlow = si!(VolumeRate, volume_rate::cubic_meter_per_minute);
    "m³/s" [] VolumeFlow = si!(VolumeRate, volume_rate::cubic_meter_per_second);
    "Nm³/h" [] NormalVolumeFlow = si!(VolumeRate, volume_rate::cubic_meter_per_hour);
    "Nm³/min" [] NormalVolumeFlow = si!(VolumeRate, volume_rate::cubic_meter_per_minute);
    "Nm³/s" [] NormalVolumeFlow = si!(VolumeRate, volume_rate::cubic_meter_per_second);

    "mg" [] Mass = si!(Mass, mass::milligram);
    "g" [] Mass = si!(Mass, mass::gram);
    "kg" [] Mass = si!(Mass, mass::kilogram);
    "t" [] Mass = si!(Mass, mass::ton);
    "kg/s" [] MassFlow = si!(MassRate, mass_rate::kilogram_per_second);
    "kg/min" [] MassFlow = si!(MassRate, mass_rate::kilogram_per_minute);
    "kg/h" [] MassFlow = si!(MassRate, mass_rate::kilogram_per_hour);
    "t/h" [] MassFlow = si!(MassRate, mass_rate::ton_per_hour);
    "t/d" [] MassFlow = si!(MassRate, mass_rate::ton_per_day);

    "1" [] Ratio = si!(Ratio, ratio::ratio);
    "%" ["vol%", "Vol%", "%vol", "Vol.-%", "vol.-%"] Ratio = si!(Ratio, ratio::percent);
    "‰" [] Ratio = si!(Ratio, ratio::per_mille);
    "ppm" ["ppmv"] Ratio = si!(Ratio, ratio::part_per_million);
    "ppb" [] Ratio = si!(Ratio, ratio::part_per_billion);

    "mg/m³" [] MassConcentration =
        si!(MassConcentration, mass_concentration::milligram_per_cubic_meter);
    "g/m³" [] MassConcentration = si!(MassConcentration, mass_concentration::gram_per_cubic_meter);
    // Per normal cubic metre: uom's per-cubic-metre factors, kept apart as their own dimension.
    "mg/Nm³" [] NormalMassConcentration =
        si!(MassConcentration, mass_concentration::milligram_per_cubic_meter);
    "g/Nm³" [] NormalMassConcentration =
        si!(MassConcentration, mass_concentration::gram_per_cubic_meter);

    "ms" [] Time = si!(Time, time::millisecond);
    "s" [] Time = si!(Time, time::second);
    "min" [] Time = si!(Time, time::minute);
    "h" [] Time = si!(Time, time::hour);
    "d" [] Time = si!(Time, time::day);
    "m/s" [] Velocity = si!(Velocity, velocity::meter_per_second);
    "km/h" [] Velocity = si!(Velocity, velocity::kilometer_per_hour);
    "rpm" ["1/min", "r/min", "min⁻¹", "U/min", "rev/min"] RotationalSpeed =
        si!(AngularVelocity, angular_velocity::revolution_per_minute);

    "W/m²" [] Irradiance = si!(HeatFluxDensity, heat_flux_density::watt_per_square_meter);
    "kW/m²" [] Irradiance = si!(HeatFluxDensity, heat_flux_density::kilowatt_per_square_meter);
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::HashSet;

    fn assert_close(actual: f64, expected: f64, what: &str) {
        let tolerance = 1e-12 * expected.abs().max(1.0);
        assert!(
            (actual - expected).abs() <= tolerance,
            "{what}: got {actual:?}, expected {expected:?}"
        );
    }

    fn convert(x: f64, from: &str, to: &str) -> f64 {
        conversion(from, to)
            .unwrap_or_else(|e| panic!("{from} -> {to}: {e}"))
            .apply(x)
    }

    #[test]
    fn every_spelling_in_the_table_parses_to_its_own_unit() {
        for def in DEFS {
            for sp in spellings(def) {
                let unit = parse(sp).unwrap_or_else(|e| panic!("{sp:?}: {e}"));
                assert_eq!(unit.symbol(), def.symbol, "{sp:?}");
                assert_eq!(unit.dimension(), def.dimension, "{sp:?}");
            }
        }
    }

    #[test]
    fn no_two_units_share_a_spelling() {
        let mut seen = HashSet::new();
        for def in DEFS {
            assert!(seen.insert(def.symbol), "duplicate symbol {:?}", def.symbol);
        }
        let mut keys = HashMap::new();
        for def in DEFS {
            for sp in spellings(def) {
                if let Some(other) = keys.insert(normalize(sp), def.symbol) {
                    assert_eq!(
                        other, def.symbol,
                        "{sp:?} means both {other:?} and {:?}",
                        def.symbol
                    );
                }
            }
        }
    }

    #[test]
    fn datasheet_spellings_parse_to_the_canonical_symbol() {
        for (spelling, symbol) in [
            ("kWh", "kWh"),
            ("kW·h", "kWh"),
            ("kW*h", "kWh"),
            ("kW h", "kWh"),
            ("kW · h", "kWh"),
            ("  MWh\t", "MWh"),
            ("GWh", "GWh"),
            ("GJ", "GJ"),
            ("kvar", "kvar"),
            ("kVAr", "kvar"),
            ("Mvar", "Mvar"),
            ("kVA", "kVA"),
            ("kvarh", "kvarh"),
            ("kvar·h", "kvarh"),
            ("Mvarh", "Mvarh"),
            ("mV", "mV"),
            ("kA", "kA"),
            ("Hz", "Hz"),
            ("°C", "°C"),
            ("degC", "°C"),
            ("deg C", "°C"),
            ("C", "°C"),
            ("℃", "°C"),
            ("ºC", "°C"),
            ("°F", "°F"),
            ("℉", "°F"),
            ("K", "K"),
            ("ΔK", "ΔK"),
            ("∆°C", "Δ°C"),
            ("delta K", "ΔK"),
            ("delta degC", "Δ°C"),
            ("mbar", "mbar"),
            ("psi", "psi"),
            ("m³", "m³"),
            ("m3", "m³"),
            ("m^3", "m³"),
            ("l", "L"),
            ("Nm³", "Nm³"),
            ("Nm3", "Nm³"),
            ("m3/h", "m³/h"),
            ("m^3/min", "m³/min"),
            ("m³/s", "m³/s"),
            ("l/s", "L/s"),
            ("L/min", "L/min"),
            ("l/h", "L/h"),
            ("Nm3/h", "Nm³/h"),
            ("Nm³/min", "Nm³/min"),
            ("t", "t"),
            ("g", "g"),
            ("t/h", "t/h"),
            ("kg/min", "kg/min"),
            ("%", "%"),
            ("vol%", "%"),
            ("‰", "‰"),
            ("ppm", "ppm"),
            ("1", "1"),
            ("mg/Nm3", "mg/Nm³"),
            ("g/Nm³", "g/Nm³"),
            ("mg/m3", "mg/m³"),
            ("min", "min"),
            ("d", "d"),
            ("m/s", "m/s"),
            ("rpm", "rpm"),
            ("1/min", "rpm"),
            ("r/min", "rpm"),
            ("min⁻¹", "rpm"),
            ("min^-1", "rpm"),
            ("W/m2", "W/m²"),
            ("W/m^2", "W/m²"),
            ("", ""),
            ("   ", ""),
        ] {
            let unit = parse(spelling).unwrap_or_else(|e| panic!("{spelling:?}: {e}"));
            assert_eq!(unit.symbol(), symbol, "{spelling:?}");
        }
    }

    #[test]
    fn every_catalogue_unit_parses() {
        for m in crate::metric::CATALOGUE {
            let unit = parse(m.unit).unwrap_or_else(|e| panic!("{}: {e}", m.id));
            assert_eq!(unit.symbol(), m.unit, "{} is not written canonically", m.id);
        }
    }

    #[test]
    fn case_matters_where_si_needs_it() {
        assert_eq!(parse("mW").map(|u| u.dimension()), Ok(Dimension::Power));
        assert_close(convert(1.0, "MW", "mW"), 1e9, "MW -> mW");
        assert_close(convert(1.0, "mV", "V"), 1e-3, "mV -> V");
    }

    #[test]
    fn kilowatt_hours_convert_to_megajoules() {
        assert_eq!(
            conversion("kWh", "MJ"),
            Ok(Conversion {
                scale: 3.6,
                offset: 0.0
            })
        );
    }

    #[test]
    fn the_conversion_table_holds_the_expected_values() {
        for (x, from, to, expected) in [
            (1.0, "kWh", "MJ", 3.6),
            (1.0, "GJ", "kWh", 277.777_777_777_777_8),
            (1.0, "Wh", "J", 3600.0),
            (1.0, "MWh", "kWh", 1000.0),
            (20.0, "°C", "K", 293.15),
            (0.0, "K", "°C", -273.15),
            (68.0, "°F", "°C", 20.0),
            (-40.0, "°F", "°C", -40.0),
            (1.0, "bar", "kPa", 100.0),
            (1000.0, "mbar", "bar", 1.0),
            (1.0, "MPa", "bar", 10.0),
            (1.0, "psi", "bar", 0.068_947_578_895_157_79),
            (1.0, "m³/min", "m³/h", 60.0),
            (1.0, "L/s", "m³/h", 3.6),
            (1000.0, "L/h", "m³/h", 1.0),
            (1000.0, "L", "m³", 1.0),
            (1.0, "Nm³/min", "Nm³/h", 60.0),
            (1.0, "t", "kg", 1000.0),
            (1.0, "t/h", "kg/h", 1000.0),
            (24.0, "t/d", "t/h", 1.0),
            (50.0, "%", "1", 0.5),
            (1000.0, "ppm", "%", 0.1),
            (5.0, "‰", "%", 0.5),
            (1.0, "MW", "kW", 1000.0),
            (1.0, "kvar", "var", 1000.0),
            (1.0, "MVA", "kVA", 1000.0),
            (1.0, "kvarh", "varh", 1000.0),
            (1.0, "kV", "V", 1000.0),
            (1.0, "kA", "mA", 1e6),
            (1.0, "g/Nm³", "mg/Nm³", 1000.0),
            (1.0, "d", "h", 24.0),
            (1.0, "h", "s", 3600.0),
            (36.0, "km/h", "m/s", 10.0),
            (1500.0, "rpm", "1/min", 1500.0),
            (1.0, "kW/m²", "W/m²", 1000.0),
        ] {
            assert_close(
                convert(x, from, to),
                expected,
                &format!("{x} {from} -> {to}"),
            );
        }
        assert!((convert(1.0, "psi", "bar") - 0.068_947_6).abs() < 1e-7);
    }

    #[test]
    fn every_unit_converts_to_itself_exactly() {
        for def in DEFS {
            assert_eq!(
                conversion(def.symbol, def.symbol),
                Ok(Conversion::IDENTITY),
                "{}",
                def.symbol
            );
        }
        assert_eq!(conversion("K", "K"), Ok(Conversion::IDENTITY));
        assert_eq!(conversion("°C", "degC"), Ok(Conversion::IDENTITY));
    }

    #[test]
    fn celsius_to_kelvin_adds_273_15() {
        assert_eq!(
            conversion("°C", "K"),
            Ok(Conversion {
                scale: 1.0,
                offset: 273.15
            })
        );
        assert_eq!(
            conversion("K", "°C"),
            Ok(Conversion {
                scale: 1.0,
                offset: -273.15
            })
        );
    }

    #[test]
    fn temperature_differences_convert_by_scale_only() {
        assert_eq!(conversion("Δ°C", "K"), Ok(Conversion::IDENTITY));
        assert_eq!(conversion("ΔK", "K"), Ok(Conversion::IDENTITY));
        assert_eq!(conversion("K", "Δ°C"), Ok(Conversion::IDENTITY));
        let c = conversion("Δ°F", "K").expect("Δ°F -> K");
        assert_eq!(c.offset, 0.0);
        assert_close(c.apply(9.0), 5.0, "9 Δ°F -> K");
        assert_eq!(
            parse("Δ°C").map(|u| u.dimension()),
            Ok(Dimension::TemperatureDifference)
        );
    }

    #[test]
    fn a_wrong_dimension_is_refused_with_a_clear_message() {
        let err = conversion("kWh", "kW").unwrap_err();
        assert_eq!(
            err,
            UnitError::Incompatible {
                from: "kWh".into(),
                from_dimension: Dimension::Energy,
                to: "kW".into(),
                to_dimension: Dimension::Power,
            }
        );
        assert_eq!(
            err.to_string(),
            r#"unit "kWh" measures energy but the metric's unit "kW" measures power"#
        );
        assert!(conversion("kvar", "kW").is_err());
        assert!(conversion("kVA", "kvar").is_err());
        assert!(conversion("Hz", "rpm").is_err());
    }

    #[test]
    fn normal_cubic_metres_do_not_convert_to_cubic_metres() {
        let err = conversion("m3", "Nm³").unwrap_err();
        assert_eq!(
            err.to_string(),
            r#"unit "m³" measures volume but the metric's unit "Nm³" measures volume at normal conditions"#
        );
        assert!(conversion("Nm³/h", "m³/h").is_err());
        assert!(conversion("mg/m³", "mg/Nm³").is_err());
    }

    #[test]
    fn an_unknown_unit_suggests_a_close_spelling() {
        let err = parse("kwh").unwrap_err();
        assert_eq!(
            err,
            UnitError::Unknown {
                unit: "kwh".into(),
                suggestion: Some("kWh".into())
            }
        );
        assert_eq!(
            err.to_string(),
            r#"unknown unit "kwh"; did you mean "kWh"?"#
        );
        for (typo, suggestion) in [
            ("KW", "kW"),
            ("KWH", "kWh"),
            ("m3/hr", "m³/h"),
            ("kWhr", "kWh"),
            ("nm3/h", "Nm³/h"),
            ("F", "°F"),
            ("Mpa", "MPa"),
        ] {
            assert_eq!(
                parse(typo),
                Err(UnitError::Unknown {
                    unit: typo.into(),
                    suggestion: Some(suggestion.into())
                }),
                "{typo}"
            );
        }
    }

    #[test]
    fn a_far_fetched_unit_gets_no_suggestion() {
        for garbage in [
            "furlong",
            "x",
            "·",
            "??",
            "kWh kWh kWh kWh kWh kWh kWh kWh kWh kWh",
        ] {
            match parse(garbage) {
                Err(UnitError::Unknown {
                    suggestion: None, ..
                }) => {}
                other => panic!("{garbage:?}: {other:?}"),
            }
        }
        assert!(
            parse("furlong")
                .unwrap_err()
                .to_string()
                .starts_with(r#"unknown unit "furlong" ("#)
        );
    }

    #[test]
    fn the_empty_unit_has_no_dimension_and_converts_only_to_itself() {
        let none = parse("").expect("empty unit");
        assert_eq!(none.dimension(), Dimension::None);
        assert_eq!(none.symbol(), "");
        assert_eq!(conversion("", ""), Ok(Conversion::IDENTITY));
        assert_eq!(conversion(" ", ""), Ok(Conversion::IDENTITY));
        assert_eq!(
            conversion("", "kW").unwrap_err().to_string(),
            r#"unit "" measures nothing (no unit) but the metric's unit "kW" measures power"#
        );
        assert!(conversion("1", "").is_err());
    }

    #[test]
    fn dimensions_have_human_names() {
        assert_eq!(Dimension::Energy.to_string(), "energy");
        assert_eq!(Dimension::Power.to_string(), "power");
        assert_eq!(
            Dimension::TemperatureDifference.to_string(),
            "temperature difference"
        );
    }

    #[test]
    fn apply_is_a_multiply_add() {
        let c = Conversion {
            scale: 2.0,
            offset: 3.0,
        };
        assert_eq!(c.apply(5.0), 13.0);
        assert_eq!(Conversion::IDENTITY.apply(-7.25), -7.25);
    }

    /// Indices into `DEFS` of two units of the same dimension.
    fn same_dimension_pair() -> impl Strategy<Value = (usize, usize)> {
        let groups: Vec<Vec<usize>> = {
            let mut by_dim: Vec<(Dimension, Vec<usize>)> = Vec::new();
            for (i, def) in DEFS.iter().enumerate() {
                match by_dim.iter_mut().find(|(d, _)| *d == def.dimension) {
                    Some((_, v)) => v.push(i),
                    None => by_dim.push((def.dimension, vec![i])),
                }
            }
            by_dim.into_iter().map(|(_, v)| v).collect()
        };
        proptest::sample::select(groups).prop_flat_map(|g| {
            (
                proptest::sample::select(g.clone()),
                proptest::sample::select(g),
            )
        })
    }

    proptest! {
        #[test]
        fn converting_there_and_back_returns_the_value(
            x in -1e9f64..1e9,
            (a, b) in same_dimension_pair(),
        ) {
            let (from, to) = (DEFS[a].symbol, DEFS[b].symbol);
            let there = conversion(from, to).expect("same dimension");
            let back = conversion(to, from).expect("same dimension");
            let y = back.apply(there.apply(x));
            // Relative, with a floor near zero where a temperature offset dominates.
            prop_assert!((y - x).abs() <= 1e-9 * x.abs().max(1.0), "{x} {from} -> {to} -> {y}");
        }

        #[test]
        fn parsing_any_string_never_panics(s in any::<String>(), t in "\\PC{0,8}") {
            let _ = parse(&s);
            let _ = conversion(&t, "kWh");
            let _ = parse(&t).map(|u| u.to_string());
        }
    }
}
