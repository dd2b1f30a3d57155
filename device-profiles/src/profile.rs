//! The validated form of a device profile.
//!
//! [`crate::load_file`] turns a TOML file into a [`Profile`]; everything here has already been checked,
//! so the planner and the codec never meet an address past 65535, a scale-factor point that is
//! not an `i16`, an unknown metric or a unit of the wrong dimension.

use std::collections::BTreeMap;
use std::time::Duration;

use fivezero_model::Kind;
use fivezero_model::Metric;
use fivezero_model::units::Conversion;

/// A device model described by a profile file.
#[derive(Debug, Clone)]
pub struct Profile {
    /// The profile id: the file name without `.toml` (e.g. `eastron-sdm630`).
    pub id: String,
    /// Who makes the device.
    pub manufacturer: String,
    /// Model name(s) the profile covers.
    pub model: String,
    /// What kind of equipment it is.
    pub category: Category,
    /// The document the register map comes from (manual title, version, page).
    pub source: String,
    /// Free text for integrators: firmware needed, settings to enable, known gaps in the map.
    pub notes: Option<String>,
    /// The device's rated power in kW (`[device] rated_power`), which the lint pass uses to
    /// tell whether an energy counter wraps within a year.
    pub rated_power_kw: Option<f64>,
    /// How the device may be read.
    pub limits: ReadLimits,
    /// The points, in file order.
    pub points: Vec<Point>,
}

impl Profile {
    /// Looks a point up by name.
    #[must_use]
    pub fn point(&self, name: &str) -> Option<&Point> {
        self.points.iter().find(|p| p.name == name)
    }

    /// Indices of the points that produce readings (every point but pure scale-factor helpers).
    pub fn reading_points(&self) -> impl Iterator<Item = usize> + '_ {
        self.points
            .iter()
            .enumerate()
            .filter(|(_, p)| p.metric.is_some())
            .map(|(i, _)| i)
    }
}

/// Equipment categories, used by the simulator to pick physics and by `profile list`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Category {
    /// Electricity meter (grid connection or sub-meter).
    Meter,
    /// Photovoltaic inverter.
    PvInverter,
    /// Electric-vehicle charge point.
    EvCharger,
    /// Boiler (biomass, gas) and its controller.
    Boiler,
    /// Air compressor or compressed-air station.
    Compressor,
    /// Heat meter.
    HeatMeter,
    /// Liquid flow meter.
    FlowMeter,
    /// Stack or flue-gas analyser.
    StackAnalyser,
    /// Waste sorting line (PLC).
    SortingLine,
    /// Steam meter.
    SteamMeter,
    /// Weather station or ambient sensor.
    Weather,
    /// Anything else.
    Other,
}

impl Category {
    /// Every category with its profile spelling.
    pub const ALL: [(Self, &'static str); 12] = [
        (Self::Meter, "meter"),
        (Self::PvInverter, "pv_inverter"),
        (Self::EvCharger, "ev_charger"),
        (Self::Boiler, "boiler"),
        (Self::Compressor, "compressor"),
        (Self::HeatMeter, "heat_meter"),
        (Self::FlowMeter, "flow_meter"),
        (Self::StackAnalyser, "stack_analyser"),
        (Self::SortingLine, "sorting_line"),
        (Self::SteamMeter, "steam_meter"),
        (Self::Weather, "weather"),
        (Self::Other, "other"),
    ];

    /// The profile spelling.
    #[must_use]
    pub fn as_str(self) -> &'static str {
        Self::ALL
            .iter()
            .find(|(c, _)| *c == self)
            .map_or("other", |(_, s)| s)
    }

    /// Parses the profile spelling.
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        Self::ALL.iter().find(|(_, n)| *n == s).map(|(c, _)| *c)
    }
}

/// What a device accepts in one request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ReadLimits {
    /// Most registers in one read (1..=125, the Modbus limit).
    pub max_registers: u16,
    /// Most coils or discrete inputs in one read (1..=2000).
    pub max_bits: u16,
    /// Largest run of unused registers (or bits) the planner may read through to merge two
    /// requests. Some devices answer an exception for unmapped registers: use 0 for those.
    pub max_gap: u16,
    /// The device answers only one point per request.
    pub single_point: bool,
}

impl Default for ReadLimits {
    fn default() -> Self {
        Self {
            max_registers: 125,
            max_bits: 2000,
            max_gap: 0,
            single_point: false,
        }
    }
}

/// The four Modbus data tables.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Table {
    /// Coils (function 1), read-write bits.
    Coil,
    /// Discrete inputs (function 2), read-only bits.
    Discrete,
    /// Input registers (function 4), read-only words.
    Input,
    /// Holding registers (function 3), read-write words.
    Holding,
}

impl Table {
    /// True for the bit tables (coils and discrete inputs).
    #[must_use]
    pub const fn is_bits(self) -> bool {
        matches!(self, Self::Coil | Self::Discrete)
    }

    /// The profile spelling.
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Coil => "coil",
            Self::Discrete => "discrete",
            Self::Input => "input",
            Self::Holding => "holding",
        }
    }
}

/// Order of the bytes of a multi-byte value, named by where the most significant byte `A` lands.
///
/// For 16-bit values only the byte order inside the register matters (`ABCD` and `CDAB` read
/// a register the same way; `BADC` and `DCBA` swap its two bytes). For 64-bit values `CDAB`
/// means every register reversed (lowest word first) with big-endian bytes in each register.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub enum WordOrder {
    /// Big-endian: highest word first, high byte first in each word (Modbus default, SunSpec).
    #[default]
    Abcd,
    /// Lowest word first, high byte first in each word ("word swapped", "LSW first").
    Cdab,
    /// Highest word first, low byte first in each word ("byte swapped").
    Badc,
    /// Little-endian: lowest word first, low byte first.
    Dcba,
}

impl WordOrder {
    /// Parses `ABCD`, `CDAB`, `BADC` or `DCBA` (any case).
    #[must_use]
    pub fn parse(s: &str) -> Option<Self> {
        match s.to_ascii_uppercase().as_str() {
            "ABCD" => Some(Self::Abcd),
            "CDAB" => Some(Self::Cdab),
            "BADC" => Some(Self::Badc),
            "DCBA" => Some(Self::Dcba),
            _ => None,
        }
    }

    /// True when words come lowest first.
    #[must_use]
    pub const fn low_word_first(self) -> bool {
        matches!(self, Self::Cdab | Self::Dcba)
    }

    /// True when the two bytes inside each register are swapped.
    #[must_use]
    pub const fn swapped_bytes(self) -> bool {
        matches!(self, Self::Badc | Self::Dcba)
    }
}

/// How the raw registers or bits of a point are interpreted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum DataType {
    /// Unsigned 16-bit.
    U16,
    /// Signed 16-bit (two's complement).
    I16,
    /// Unsigned 32-bit, two registers.
    U32,
    /// Signed 32-bit, two registers.
    I32,
    /// Unsigned 64-bit, four registers.
    U64,
    /// Signed 64-bit, four registers.
    I64,
    /// IEEE 754 single precision, two registers.
    F32,
    /// IEEE 754 double precision, four registers.
    F64,
    /// One bit (0 = least significant) of a register; value 0 or 1.
    Bit(u8),
    /// A coil or discrete input; value 0 or 1.
    Bool,
    /// ASCII text over this many registers (two characters each), trailing NULs and spaces cut.
    Ascii(u16),
}

impl DataType {
    /// Registers (or, for [`DataType::Bool`], bits) the value occupies.
    #[must_use]
    pub const fn width(self) -> u16 {
        match self {
            Self::U16 | Self::I16 | Self::Bit(_) | Self::Bool => 1,
            Self::U32 | Self::I32 | Self::F32 => 2,
            Self::U64 | Self::I64 | Self::F64 => 4,
            Self::Ascii(n) => n,
        }
    }

    /// True for types that decode to a number.
    #[must_use]
    pub const fn is_numeric(self) -> bool {
        !matches!(self, Self::Ascii(_))
    }

    /// True for the IEEE 754 types.
    #[must_use]
    pub const fn is_float(self) -> bool {
        matches!(self, Self::F32 | Self::F64)
    }

    /// The profile spelling (`bit` and `string` carry their parameter separately).
    #[must_use]
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::U16 => "u16",
            Self::I16 => "i16",
            Self::U32 => "u32",
            Self::I32 => "i32",
            Self::U64 => "u64",
            Self::I64 => "i64",
            Self::F32 => "f32",
            Self::F64 => "f64",
            Self::Bit(_) => "bit",
            Self::Bool => "bool",
            Self::Ascii(_) => "string",
        }
    }
}

/// One value read from the device.
#[derive(Debug, Clone)]
pub struct Point {
    /// Unique name within the profile (often the manual's name, e.g. `W_SF`).
    pub name: String,
    /// The catalogue metric this point reports; `None` for a helper point that exists only to
    /// be another point's scale factor.
    pub metric: Option<&'static Metric>,
    /// The Modbus table.
    pub table: Table,
    /// 0-based PDU address of the first register or bit.
    pub address: u16,
    /// How the registers are interpreted.
    pub data_type: DataType,
    /// Byte and word order.
    pub order: WordOrder,
    /// Multiplier applied to the raw value (after the scale factor).
    pub scale: f64,
    /// Added after scaling.
    pub offset: f64,
    /// Index of the point holding this point's power-of-ten scale factor (SunSpec `*_SF`).
    pub scale_factor: Option<usize>,
    /// The unit the device reports in, as written in the profile.
    pub unit: String,
    /// Converts the scaled value from `unit` into the metric's canonical unit.
    pub conversion: Conversion,
    /// Gauge, counter, state or info (always the metric's kind).
    pub kind: Kind,
    /// Labels of enumerated values (`state` points).
    pub labels: BTreeMap<i64, String>,
    /// Labels of individual bits, 0 = least significant (`state` points holding a bit field).
    pub flags: BTreeMap<u8, String>,
    /// Raw bit patterns that mean "not available" (SunSpec 0x8000, 0xFFFF, ...), compared
    /// before any scaling. NaN and infinities of float types are always "not available".
    pub not_available: Vec<u64>,
    /// Own poll interval, when the point should be read less often than the device.
    pub interval: Option<Duration>,
    /// The manual's notation for the address (e.g. `30001`), for people reading the profile.
    pub doc_ref: Option<String>,
}

impl Point {
    /// One past the last register (or bit) the point occupies.
    #[must_use]
    pub fn end(&self) -> u32 {
        u32::from(self.address) + u32::from(self.data_type.width())
    }
}
