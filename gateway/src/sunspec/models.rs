//! SunSpec model tables: the names of the models `scan` recognises, and the points of the
//! models it can draft a profile for.
//!
//! Offsets count from the model's ID register (offset 0 = ID, 1 = L, data from 2), as in
//! `reference/registers.md` §6.2, so a point's address is the discovered address of the
//! model's ID plus its offset. Sources: the SunSpec model definitions (sunspec/models
//! `json/model_1.json`, `model_101.json`–`model_103.json`, `model_201.json`–`model_204.json`):
//! models 101, 102 and 103 share one layout (a single-phase inverter reports its unused phases
//! as "not implemented"), and so do 201, 202, 203 and 204.
//!
//! A point with a `metric` becomes a reading point of the draft; a `sunssf` point becomes an
//! `i16` helper when a reading point uses it; every other point is listed in the draft as a
//! comment, so the integrator sees the whole model.

/// A SunSpec point type, as the int+SF models use them.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SunType {
    /// `uint16`.
    Uint16,
    /// `int16`.
    Int16,
    /// `enum16`.
    Enum16,
    /// `acc32`: an unsigned 32-bit accumulator.
    Acc32,
    /// `bitfield32`.
    Bitfield32,
    /// `sunssf`: a power-of-ten scale factor, `int16` in −10..=10.
    Sunssf,
    /// `string` over this many registers.
    String(u16),
    /// `pad`: a register that holds nothing.
    Pad,
}

impl SunType {
    /// Registers the point occupies.
    #[must_use]
    pub const fn width(self) -> u16 {
        match self {
            Self::Uint16 | Self::Int16 | Self::Enum16 | Self::Sunssf | Self::Pad => 1,
            Self::Acc32 | Self::Bitfield32 => 2,
            Self::String(n) => n,
        }
    }

    /// The SunSpec spelling.
    #[must_use]
    pub const fn sunspec_name(self) -> &'static str {
        match self {
            Self::Uint16 => "uint16",
            Self::Int16 => "int16",
            Self::Enum16 => "enum16",
            Self::Acc32 => "acc32",
            Self::Bitfield32 => "bitfield32",
            Self::Sunssf => "sunssf",
            Self::String(_) => "string",
            Self::Pad => "pad",
        }
    }

    /// The profile `type` it is read as; `None` for padding.
    #[must_use]
    pub const fn profile_type(self) -> Option<&'static str> {
        match self {
            Self::Uint16 | Self::Enum16 => Some("u16"),
            Self::Int16 | Self::Sunssf => Some("i16"),
            Self::Acc32 | Self::Bitfield32 => Some("u32"),
            Self::String(_) => Some("string"),
            Self::Pad => None,
        }
    }

    /// The "not implemented" pattern, as written in a profile's `not_available`: int16
    /// `0x8000`, uint16 and enum16 `0xFFFF`, acc32 `0` ("not accumulated"), bitfield32
    /// `0xFFFFFFFF`. Scale factors have none here (the codec itself treats a `0x8000` scale
    /// factor as "not available"), strings have none in the profile format.
    #[must_use]
    pub const fn not_available(self) -> Option<&'static str> {
        match self {
            Self::Uint16 | Self::Enum16 => Some("0xFFFF"),
            Self::Int16 => Some("0x8000"),
            Self::Acc32 => Some("0"),
            Self::Bitfield32 => Some("0xFFFFFFFF"),
            Self::Sunssf | Self::String(_) | Self::Pad => None,
        }
    }
}

/// One point of a model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PointDef {
    /// The SunSpec point name.
    pub name: &'static str,
    /// Offset from the model's ID register.
    pub offset: u16,
    /// Its type.
    pub ty: SunType,
    /// The name of its scale-factor point, if it has one.
    pub sf: Option<&'static str>,
    /// Its unit, in the profile's spelling (empty when it has none).
    pub unit: &'static str,
    /// The catalogue metric it reports; `None` when the catalogue has none for it.
    pub metric: Option<&'static str>,
    /// Labels of an enumerated point.
    pub labels: &'static [(i64, &'static str)],
    /// Labels of the bits of a bit field.
    pub flags: &'static [(u8, &'static str)],
    /// Read once an hour (nameplate text that never changes).
    pub hourly: bool,
}

/// What a model describes, which decides the profile's category.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ModelKind {
    /// The common model (1): who made the device and what it is.
    Common,
    /// A PV inverter.
    Inverter,
    /// An electricity meter.
    Meter,
}

/// A model `scan` can draft a profile for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ModelDef {
    /// The model id.
    pub id: u16,
    /// What it describes.
    pub kind: ModelKind,
    /// Its length `L` in the SunSpec definition (registers after ID and L).
    pub length: u16,
    /// Its points, by offset.
    pub points: &'static [PointDef],
    /// Point names this model spells differently from the shared table (model 203 calls the
    /// line-to-line voltages `PhVphAB`, not `PPVphAB`).
    pub renames: &'static [(&'static str, &'static str)],
}

impl ModelDef {
    /// The model's name for point `p` (after [`ModelDef::renames`]).
    #[must_use]
    pub fn point_name(&self, p: &PointDef) -> &'static str {
        self.renames
            .iter()
            .find(|(from, _)| *from == p.name)
            .map_or(p.name, |(_, to)| to)
    }
}

/// The id that ends the model chain.
pub const END_MODEL: u16 = 0xFFFF;

/// The name of a model, if `scan` knows it.
#[must_use]
pub fn model_name(id: u16) -> Option<&'static str> {
    Some(match id {
        1 => "common",
        101 => "inverter, single phase (int+SF)",
        102 => "inverter, split phase (int+SF)",
        103 => "inverter, three phase (int+SF)",
        111 => "inverter, single phase (float)",
        112 => "inverter, split phase (float)",
        113 => "inverter, three phase (float)",
        120 => "nameplate ratings",
        121 => "basic settings",
        122 => "measurements and status",
        123 => "immediate controls",
        124 => "storage",
        126 => "volt-VAr",
        127 => "frequency-watt",
        128 => "dynamic reactive current",
        160 => "multiple MPPT",
        201 => "meter, single phase (int+SF)",
        202 => "meter, split phase (int+SF)",
        203 => "meter, wye three phase (int+SF)",
        204 => "meter, delta three phase (int+SF)",
        211 => "meter, single phase (float)",
        212 => "meter, split phase (float)",
        213 => "meter, wye three phase (float)",
        214 => "meter, delta three phase (float)",
        802 => "battery",
        _ => return None,
    })
}

/// The table of a model `scan` can draft, if it has one.
#[must_use]
pub fn model(id: u16) -> Option<&'static ModelDef> {
    match id {
        1 => Some(&COMMON),
        101 => Some(&INVERTER_101),
        102 => Some(&INVERTER_102),
        103 => Some(&INVERTER_103),
        201 => Some(&METER_201),
        202 => Some(&METER_202),
        203 => Some(&METER_203),
        204 => Some(&METER_204),
        _ => None,
    }
}

/// A plain point.
const fn p(
    name: &'static str,
    offset: u16,
    ty: SunType,
    sf: Option<&'static str>,
    unit: &'static str,
    metric: Option<&'static str>,
) -> PointDef {
    PointDef {
        name,
        offset,
        ty,
        sf,
        unit,
        metric,
        labels: &[],
        flags: &[],
        hourly: false,
    }
}

/// A scale-factor point.
const fn sf(name: &'static str, offset: u16) -> PointDef {
    p(name, offset, SunType::Sunssf, None, "", None)
}

/// Nameplate text, read hourly.
const fn text(name: &'static str, offset: u16, len: u16, metric: Option<&'static str>) -> PointDef {
    PointDef {
        hourly: true,
        ..p(name, offset, SunType::String(len), None, "", metric)
    }
}

use SunType::{Acc32, Bitfield32, Enum16, Int16, Pad, Uint16};

/// Model 1, common (L = 66; 65 on older devices, without `Pad`).
pub static COMMON: ModelDef = ModelDef {
    id: 1,
    kind: ModelKind::Common,
    length: 66,
    points: &[
        text("Mn", 2, 16, None),
        text("Md", 18, 16, Some("device.model_name")),
        text("Opt", 34, 8, None),
        text("Vr", 42, 8, Some("device.firmware_version")),
        text("SN", 50, 16, Some("device.serial_number")),
        p("DA", 66, Uint16, None, "", None),
        p("Pad", 67, Pad, None, "", None),
    ],
    renames: &[],
};

/// Inverter operating states (`St`, enum16).
const INVERTER_STATES: &[(i64, &str)] = &[
    (1, "OFF"),
    (2, "SLEEPING"),
    (3, "STARTING"),
    (4, "MPPT"),
    (5, "THROTTLED"),
    (6, "SHUTTING_DOWN"),
    (7, "FAULT"),
    (8, "STANDBY"),
];

/// Inverter event bits (`Evt1`, bitfield32).
const INVERTER_EVENTS: &[(u8, &str)] = &[
    (0, "GROUND_FAULT"),
    (1, "DC_OVER_VOLT"),
    (2, "AC_DISCONNECT"),
    (3, "DC_DISCONNECT"),
    (4, "GRID_DISCONNECT"),
    (5, "CABINET_OPEN"),
    (6, "MANUAL_SHUTDOWN"),
    (7, "OVER_TEMP"),
    (8, "OVER_FREQUENCY"),
    (9, "UNDER_FREQUENCY"),
    (10, "AC_OVER_VOLT"),
    (11, "AC_UNDER_VOLT"),
    (12, "BLOWN_STRING_FUSE"),
    (13, "UNDER_TEMP"),
    (14, "MEMORY_LOSS"),
    (15, "HW_TEST_FAILURE"),
];

/// The layout of models 101, 102 and 103 (L = 50).
const INVERTER_POINTS: &[PointDef] = &[
    p("A", 2, Uint16, Some("A_SF"), "A", None),
    p(
        "AphA",
        3,
        Uint16,
        Some("A_SF"),
        "A",
        Some("electricity.current_l1"),
    ),
    p(
        "AphB",
        4,
        Uint16,
        Some("A_SF"),
        "A",
        Some("electricity.current_l2"),
    ),
    p(
        "AphC",
        5,
        Uint16,
        Some("A_SF"),
        "A",
        Some("electricity.current_l3"),
    ),
    sf("A_SF", 6),
    p(
        "PPVphAB",
        7,
        Uint16,
        Some("V_SF"),
        "V",
        Some("electricity.voltage_l1_l2"),
    ),
    p(
        "PPVphBC",
        8,
        Uint16,
        Some("V_SF"),
        "V",
        Some("electricity.voltage_l2_l3"),
    ),
    p(
        "PPVphCA",
        9,
        Uint16,
        Some("V_SF"),
        "V",
        Some("electricity.voltage_l3_l1"),
    ),
    p(
        "PhVphA",
        10,
        Uint16,
        Some("V_SF"),
        "V",
        Some("electricity.voltage_l1"),
    ),
    p(
        "PhVphB",
        11,
        Uint16,
        Some("V_SF"),
        "V",
        Some("electricity.voltage_l2"),
    ),
    p(
        "PhVphC",
        12,
        Uint16,
        Some("V_SF"),
        "V",
        Some("electricity.voltage_l3"),
    ),
    sf("V_SF", 13),
    p("W", 14, Int16, Some("W_SF"), "W", Some("pv.ac_power")),
    sf("W_SF", 15),
    p(
        "Hz",
        16,
        Uint16,
        Some("Hz_SF"),
        "Hz",
        Some("electricity.frequency"),
    ),
    sf("Hz_SF", 17),
    p(
        "VA",
        18,
        Int16,
        Some("VA_SF"),
        "VA",
        Some("electricity.apparent_power"),
    ),
    sf("VA_SF", 19),
    p(
        "VAr",
        20,
        Int16,
        Some("VAr_SF"),
        "var",
        Some("electricity.reactive_power"),
    ),
    sf("VAr_SF", 21),
    p(
        "PF",
        22,
        Int16,
        Some("PF_SF"),
        "%",
        Some("electricity.power_factor"),
    ),
    sf("PF_SF", 23),
    p("WH", 24, Acc32, Some("WH_SF"), "Wh", Some("pv.energy")),
    sf("WH_SF", 26),
    p(
        "DCA",
        27,
        Uint16,
        Some("DCA_SF"),
        "A",
        Some("pv.dc_current"),
    ),
    sf("DCA_SF", 28),
    p(
        "DCV",
        29,
        Uint16,
        Some("DCV_SF"),
        "V",
        Some("pv.dc_voltage"),
    ),
    sf("DCV_SF", 30),
    p("DCW", 31, Int16, Some("DCW_SF"), "W", Some("pv.dc_power")),
    sf("DCW_SF", 32),
    p(
        "TmpCab",
        33,
        Int16,
        Some("Tmp_SF"),
        "°C",
        Some("pv.cabinet_temperature"),
    ),
    p(
        "TmpSnk",
        34,
        Int16,
        Some("Tmp_SF"),
        "°C",
        Some("pv.heatsink_temperature"),
    ),
    p("TmpTrns", 35, Int16, Some("Tmp_SF"), "°C", None),
    p("TmpOt", 36, Int16, Some("Tmp_SF"), "°C", None),
    sf("Tmp_SF", 37),
    PointDef {
        labels: INVERTER_STATES,
        ..p("St", 38, Enum16, None, "", Some("pv.operating_state"))
    },
    p("StVnd", 39, Enum16, None, "", None),
    PointDef {
        flags: INVERTER_EVENTS,
        ..p("Evt1", 40, Bitfield32, None, "", Some("pv.event_flags"))
    },
    p("Evt2", 42, Bitfield32, None, "", None),
    p("EvtVnd1", 44, Bitfield32, None, "", None),
    p("EvtVnd2", 46, Bitfield32, None, "", None),
    p("EvtVnd3", 48, Bitfield32, None, "", None),
    p("EvtVnd4", 50, Bitfield32, None, "", None),
];

/// Model 101, single-phase inverter.
pub static INVERTER_101: ModelDef = ModelDef {
    id: 101,
    kind: ModelKind::Inverter,
    length: 50,
    points: INVERTER_POINTS,
    renames: &[],
};

/// Model 102, split-phase inverter (the 101 layout).
pub static INVERTER_102: ModelDef = ModelDef {
    id: 102,
    kind: ModelKind::Inverter,
    length: 50,
    points: INVERTER_POINTS,
    renames: &[],
};

/// Model 103, three-phase inverter.
pub static INVERTER_103: ModelDef = ModelDef {
    id: 103,
    kind: ModelKind::Inverter,
    length: 50,
    points: INVERTER_POINTS,
    renames: &[],
};

/// The layout of models 201 to 204 (L = 105).
const METER_POINTS: &[PointDef] = &[
    p("A", 2, Int16, Some("A_SF"), "A", None),
    p(
        "AphA",
        3,
        Int16,
        Some("A_SF"),
        "A",
        Some("electricity.current_l1"),
    ),
    p(
        "AphB",
        4,
        Int16,
        Some("A_SF"),
        "A",
        Some("electricity.current_l2"),
    ),
    p(
        "AphC",
        5,
        Int16,
        Some("A_SF"),
        "A",
        Some("electricity.current_l3"),
    ),
    sf("A_SF", 6),
    p("PhV", 7, Int16, Some("V_SF"), "V", None),
    p(
        "PhVphA",
        8,
        Int16,
        Some("V_SF"),
        "V",
        Some("electricity.voltage_l1"),
    ),
    p(
        "PhVphB",
        9,
        Int16,
        Some("V_SF"),
        "V",
        Some("electricity.voltage_l2"),
    ),
    p(
        "PhVphC",
        10,
        Int16,
        Some("V_SF"),
        "V",
        Some("electricity.voltage_l3"),
    ),
    p("PPV", 11, Int16, Some("V_SF"), "V", None),
    p(
        "PPVphAB",
        12,
        Int16,
        Some("V_SF"),
        "V",
        Some("electricity.voltage_l1_l2"),
    ),
    p(
        "PPVphBC",
        13,
        Int16,
        Some("V_SF"),
        "V",
        Some("electricity.voltage_l2_l3"),
    ),
    p(
        "PPVphCA",
        14,
        Int16,
        Some("V_SF"),
        "V",
        Some("electricity.voltage_l3_l1"),
    ),
    sf("V_SF", 15),
    p(
        "Hz",
        16,
        Int16,
        Some("Hz_SF"),
        "Hz",
        Some("electricity.frequency"),
    ),
    sf("Hz_SF", 17),
    p(
        "W",
        18,
        Int16,
        Some("W_SF"),
        "W",
        Some("electricity.active_power"),
    ),
    p(
        "WphA",
        19,
        Int16,
        Some("W_SF"),
        "W",
        Some("electricity.active_power_l1"),
    ),
    p(
        "WphB",
        20,
        Int16,
        Some("W_SF"),
        "W",
        Some("electricity.active_power_l2"),
    ),
    p(
        "WphC",
        21,
        Int16,
        Some("W_SF"),
        "W",
        Some("electricity.active_power_l3"),
    ),
    sf("W_SF", 22),
    p(
        "VA",
        23,
        Int16,
        Some("VA_SF"),
        "VA",
        Some("electricity.apparent_power"),
    ),
    p("VAphA", 24, Int16, Some("VA_SF"), "VA", None),
    p("VAphB", 25, Int16, Some("VA_SF"), "VA", None),
    p("VAphC", 26, Int16, Some("VA_SF"), "VA", None),
    sf("VA_SF", 27),
    p(
        "VAR",
        28,
        Int16,
        Some("VAR_SF"),
        "var",
        Some("electricity.reactive_power"),
    ),
    p("VARphA", 29, Int16, Some("VAR_SF"), "var", None),
    p("VARphB", 30, Int16, Some("VAR_SF"), "var", None),
    p("VARphC", 31, Int16, Some("VAR_SF"), "var", None),
    sf("VAR_SF", 32),
    p(
        "PF",
        33,
        Int16,
        Some("PF_SF"),
        "%",
        Some("electricity.power_factor"),
    ),
    p("PFphA", 34, Int16, Some("PF_SF"), "%", None),
    p("PFphB", 35, Int16, Some("PF_SF"), "%", None),
    p("PFphC", 36, Int16, Some("PF_SF"), "%", None),
    sf("PF_SF", 37),
    p(
        "TotWhExp",
        38,
        Acc32,
        Some("TotWh_SF"),
        "Wh",
        Some("electricity.export_energy"),
    ),
    p("TotWhExpPhA", 40, Acc32, Some("TotWh_SF"), "Wh", None),
    p("TotWhExpPhB", 42, Acc32, Some("TotWh_SF"), "Wh", None),
    p("TotWhExpPhC", 44, Acc32, Some("TotWh_SF"), "Wh", None),
    p(
        "TotWhImp",
        46,
        Acc32,
        Some("TotWh_SF"),
        "Wh",
        Some("electricity.import_energy"),
    ),
    p("TotWhImpPhA", 48, Acc32, Some("TotWh_SF"), "Wh", None),
    p("TotWhImpPhB", 50, Acc32, Some("TotWh_SF"), "Wh", None),
    p("TotWhImpPhC", 52, Acc32, Some("TotWh_SF"), "Wh", None),
    sf("TotWh_SF", 54),
    p("TotVAhExp", 55, Acc32, Some("TotVAh_SF"), "VAh", None),
    p("TotVAhExpPhA", 57, Acc32, Some("TotVAh_SF"), "VAh", None),
    p("TotVAhExpPhB", 59, Acc32, Some("TotVAh_SF"), "VAh", None),
    p("TotVAhExpPhC", 61, Acc32, Some("TotVAh_SF"), "VAh", None),
    p("TotVAhImp", 63, Acc32, Some("TotVAh_SF"), "VAh", None),
    p("TotVAhImpPhA", 65, Acc32, Some("TotVAh_SF"), "VAh", None),
    p("TotVAhImpPhB", 67, Acc32, Some("TotVAh_SF"), "VAh", None),
    p("TotVAhImpPhC", 69, Acc32, Some("TotVAh_SF"), "VAh", None),
    sf("TotVAh_SF", 71),
    p("TotVArhImpQ1", 72, Acc32, Some("TotVArh_SF"), "varh", None),
    p(
        "TotVArhImpQ1PhA",
        74,
        Acc32,
        Some("TotVArh_SF"),
        "varh",
        None,
    ),
    p(
        "TotVArhImpQ1PhB",
        76,
        Acc32,
        Some("TotVArh_SF"),
        "varh",
        None,
    ),
    p(
        "TotVArhImpQ1PhC",
        78,
        Acc32,
        Some("TotVArh_SF"),
        "varh",
        None,
    ),
    p("TotVArhImpQ2", 80, Acc32, Some("TotVArh_SF"), "varh", None),
    p(
        "TotVArhImpQ2PhA",
        82,
        Acc32,
        Some("TotVArh_SF"),
        "varh",
        None,
    ),
    p(
        "TotVArhImpQ2PhB",
        84,
        Acc32,
        Some("TotVArh_SF"),
        "varh",
        None,
    ),
    p(
        "TotVArhImpQ2PhC",
        86,
        Acc32,
        Some("TotVArh_SF"),
        "varh",
        None,
    ),
    p("TotVArhExpQ3", 88, Acc32, Some("TotVArh_SF"), "varh", None),
    p(
        "TotVArhExpQ3PhA",
        90,
        Acc32,
        Some("TotVArh_SF"),
        "varh",
        None,
    ),
    p(
        "TotVArhExpQ3PhB",
        92,
        Acc32,
        Some("TotVArh_SF"),
        "varh",
        None,
    ),
    p(
        "TotVArhExpQ3PhC",
        94,
        Acc32,
        Some("TotVArh_SF"),
        "varh",
        None,
    ),
    p("TotVArhExpQ4", 96, Acc32, Some("TotVArh_SF"), "varh", None),
    p(
        "TotVArhExpQ4PhA",
        98,
        Acc32,
        Some("TotVArh_SF"),
        "varh",
        None,
    ),
    p(
        "TotVArhExpQ4PhB",
        100,
        Acc32,
        Some("TotVArh_SF"),
        "varh",
        None,
    ),
    p(
        "TotVArhExpQ4PhC",
        102,
        Acc32,
        Some("TotVArh_SF"),
        "varh",
        None,
    ),
    sf("TotVArh_SF", 104),
    p("Evt", 105, Bitfield32, None, "", None),
];

/// Model 201, single-phase meter.
pub static METER_201: ModelDef = ModelDef {
    id: 201,
    kind: ModelKind::Meter,
    length: 105,
    points: METER_POINTS,
    renames: &[],
};

/// Model 202, split-phase meter.
pub static METER_202: ModelDef = ModelDef {
    id: 202,
    kind: ModelKind::Meter,
    length: 105,
    points: METER_POINTS,
    renames: &[],
};

/// Model 203, wye-connected three-phase meter (names its line-to-line voltages `PhVph*`).
pub static METER_203: ModelDef = ModelDef {
    id: 203,
    kind: ModelKind::Meter,
    length: 105,
    points: METER_POINTS,
    renames: &[
        ("PPVphAB", "PhVphAB"),
        ("PPVphBC", "PhVphBC"),
        ("PPVphCA", "PhVphCA"),
    ],
};

/// Model 204, delta-connected three-phase meter.
pub static METER_204: ModelDef = ModelDef {
    id: 204,
    kind: ModelKind::Meter,
    length: 105,
    points: METER_POINTS,
    renames: &[],
};

#[cfg(test)]
mod tests {
    use super::*;

    const DRAFTABLE: [u16; 8] = [1, 101, 102, 103, 201, 202, 203, 204];

    #[test]
    fn every_table_fills_its_model_exactly_without_overlaps() {
        for id in DRAFTABLE {
            let m = model(id).unwrap();
            assert_eq!(m.id, id);
            let mut next = 2;
            for p in m.points {
                assert_eq!(p.offset, next, "model {id} point {}", p.name);
                next = p.offset + p.ty.width();
            }
            assert_eq!(next, 2 + m.length, "model {id}");
        }
    }

    #[test]
    fn every_scale_factor_named_exists_and_every_metric_is_in_the_catalogue() {
        for id in DRAFTABLE {
            let m = model(id).unwrap();
            for p in m.points {
                if let Some(sf) = p.sf {
                    let target = m.points.iter().find(|q| q.name == sf);
                    assert_eq!(target.map(|t| t.ty), Some(SunType::Sunssf), "{}", p.name);
                }
                if let Some(metric) = p.metric {
                    assert!(fivezero_model::metric::lookup(metric).is_some(), "{metric}");
                }
            }
        }
    }

    #[test]
    fn offsets_match_the_reference_tables() {
        // registers.md §6.2: model 103 at 40069 has W at 40083, WH at 40093, St at 40107;
        // model 203 at 40188 has W at 40206, TotWhImp at 40234, TotWh_SF at 40242.
        let at = |id: u16, name: &str| {
            model(id)
                .unwrap()
                .points
                .iter()
                .find(|p| p.name == name)
                .unwrap()
                .offset
        };
        assert_eq!(40069 + at(103, "W"), 40083);
        assert_eq!(40069 + at(103, "WH"), 40093);
        assert_eq!(40069 + at(103, "St"), 40107);
        assert_eq!(40188 + at(203, "W"), 40206);
        assert_eq!(40188 + at(203, "TotWhImp"), 40234);
        assert_eq!(40188 + at(203, "TotWh_SF"), 40242);
        assert_eq!(40188 + at(203, "Evt"), 40293);
        assert_eq!(40002 + at(1, "SN"), 40052);
    }

    #[test]
    fn model_203_spells_its_line_voltages_its_own_way() {
        let pp = METER_POINTS.iter().find(|p| p.name == "PPVphAB").unwrap();
        assert_eq!(METER_203.point_name(pp), "PhVphAB");
        assert_eq!(METER_201.point_name(pp), "PPVphAB");
        assert_eq!(model_name(203), Some("meter, wye three phase (int+SF)"));
        assert_eq!(model_name(64_000), None);
    }
}
