//! Draft profiles from a discovered SunSpec map.
//!
//! [`emit`] writes the TOML of a profile for one logical device of a [`Discovery`] (each
//! common model starts one, see [`logical_devices`]): for every model `scan` has a table for
//! ([`super::models`]), a reading point per point with a catalogue metric, at the discovered
//! address plus the point's offset, with its SunSpec "not implemented" sentinel, and an `i16`
//! helper point for every scale factor those points use. Points without a metric are listed as
//! comments. The header says it is a draft, what was found where, and what to check.
//!
//! A profile describes one device, so one metric can appear only once: a second inverter or
//! meter model in the same logical device is left out (and said so in the header).

use std::collections::BTreeSet;
use std::fmt::{self, Write as _};

use super::discover::{CommonInfo, Discovery, Model, logical_devices};
use super::models::{self, ModelDef, ModelKind, PointDef, SunType};

/// Where and when the map was read, for the draft's header and `source`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DraftSource {
    /// The link, as `tcp 10.0.0.21:502`.
    pub link: String,
    /// The unit id.
    pub unit: u8,
    /// When, as text (RFC 3339).
    pub date: String,
}

/// A draft profile.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Draft {
    /// The profile, TOML.
    pub text: String,
    /// The logical device drafted (1-based) and how many there are.
    pub device: (usize, usize),
    /// The models it covers.
    pub included: Vec<Model>,
    /// Models of the logical device left out, with why.
    pub left_out: Vec<(Model, String)>,
    /// Reading points written.
    pub reading_points: usize,
}

/// Why no draft could be written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EmitError {
    /// The logical device asked for does not exist.
    NoSuchDevice {
        /// Asked for (1-based).
        asked: usize,
        /// How many there are.
        devices: usize,
    },
    /// The logical device has no model `scan` has a table for.
    NothingToDraft {
        /// The device (1-based).
        device: usize,
        /// Its model ids.
        models: Vec<u16>,
    },
}

impl fmt::Display for EmitError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NoSuchDevice { asked, devices } => write!(
                f,
                "there is no logical device {asked}: the map has {devices} (numbered from 1)"
            ),
            Self::NothingToDraft { device, models } => {
                let ids: Vec<String> = models.iter().map(u16::to_string).collect();
                write!(
                    f,
                    "logical device {device} has no model scan can draft (models {}; scan knows \
                     1, 101-103 and 201-204)",
                    ids.join(", ")
                )
            }
        }
    }
}

impl std::error::Error for EmitError {}

/// One model going into the draft.
#[derive(Debug)]
struct Section {
    model: Model,
    def: &'static ModelDef,
    /// Reading points written.
    reading: BTreeSet<u16>,
    /// Scale-factor points written (offsets).
    helpers: BTreeSet<u16>,
}

impl Section {
    /// True when point `p` lies inside the model as the device declares it, and inside the
    /// address space.
    fn fits(model: &Model, p: &PointDef) -> bool {
        let end = u32::from(p.offset) + u32::from(p.ty.width());
        end <= 2 + u32::from(model.length) && u32::from(model.address) + end <= 65_536
    }

    fn new(model: Model, def: &'static ModelDef) -> Self {
        let fits = |p: &PointDef| Self::fits(&model, p);
        let sf_of = |p: &PointDef| {
            p.sf.and_then(|name| def.points.iter().find(|q| q.name == name))
        };
        let mut reading = BTreeSet::new();
        let mut helpers = BTreeSet::new();
        for p in def.points {
            if p.metric.is_none() || !fits(p) || p.ty.profile_type().is_none() {
                continue;
            }
            match (p.sf, sf_of(p)) {
                (None, _) => {}
                (Some(_), Some(sf)) if fits(sf) => {
                    helpers.insert(sf.offset);
                }
                // A value whose scale factor is missing cannot be decoded.
                (Some(_), _) => continue,
            }
            reading.insert(p.offset);
        }
        Self {
            model,
            def,
            reading,
            helpers,
        }
    }

    fn metrics(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.def
            .points
            .iter()
            .filter(|p| self.reading.contains(&p.offset))
            .filter_map(|p| p.metric)
    }

    fn names(&self) -> impl Iterator<Item = &'static str> + '_ {
        self.def
            .points
            .iter()
            .filter(|p| self.reading.contains(&p.offset) || self.helpers.contains(&p.offset))
            .map(|p| self.def.point_name(p))
    }

    fn address(&self, p: &PointDef) -> u16 {
        // `fits` keeps every written point below 65536.
        u16::try_from(u32::from(self.model.address) + u32::from(p.offset)).unwrap_or(u16::MAX)
    }
}

/// The draft profile of logical device `device` (1-based) of `discovery`, with the text of its
/// common model when it was read.
///
/// # Errors
/// No such logical device, or none of its models has a table.
pub fn emit(
    discovery: &Discovery,
    device: usize,
    common: Option<&CommonInfo>,
    source: &DraftSource,
) -> Result<Draft, EmitError> {
    let groups = logical_devices(&discovery.models);
    let Some(group) = device.checked_sub(1).and_then(|i| groups.get(i)) else {
        return Err(EmitError::NoSuchDevice {
            asked: device,
            devices: groups.len(),
        });
    };
    let mut sections: Vec<Section> = Vec::new();
    let mut left_out: Vec<(Model, String)> = Vec::new();
    for m in group {
        let Some(def) = models::model(m.id) else {
            left_out.push((
                *m,
                format!(
                    "scan has no table for model {}; its {} data registers start at {}",
                    m.id,
                    m.length,
                    u32::from(m.address) + 2
                ),
            ));
            continue;
        };
        let section = Section::new(*m, def);
        if section.reading.is_empty() {
            left_out.push((*m, "none of its points fits its length".to_owned()));
            continue;
        }
        let clash = sections.iter().find(|s| {
            let metrics: BTreeSet<&str> = s.metrics().collect();
            let names: BTreeSet<&str> = s.names().collect();
            section.metrics().any(|x| metrics.contains(x))
                || section.names().any(|x| names.contains(x))
        });
        if let Some(s) = clash {
            left_out.push((
                *m,
                format!(
                    "its metrics are already reported by model {} at {}; a profile describes \
                     one device, so draft this model in a profile of its own (copy this one \
                     and shift the addresses by {})",
                    s.model.id,
                    s.model.address,
                    i64::from(m.address) - i64::from(s.model.address)
                ),
            ));
            continue;
        }
        sections.push(section);
    }
    let reading_points: usize = sections.iter().map(|s| s.reading.len()).sum();
    if reading_points == 0 {
        return Err(EmitError::NothingToDraft {
            device,
            models: group.iter().map(|m| m.id).collect(),
        });
    }
    let text = render(
        discovery,
        (device, groups.len()),
        &sections,
        &left_out,
        common,
        source,
    );
    Ok(Draft {
        text,
        device: (device, groups.len()),
        included: sections.iter().map(|s| s.model).collect(),
        left_out,
        reading_points,
    })
}

/// A TOML basic string.
fn q(s: &str) -> String {
    let mut out = String::with_capacity(s.len() + 2);
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if c.is_control() => {
                let _ = write!(out, "\\u{:04X}", u32::from(c));
            }
            c => out.push(c),
        }
    }
    out.push('"');
    out
}

fn models_list(sections: &[Section]) -> String {
    let v: Vec<String> = sections
        .iter()
        .map(|s| format!("{} at {}", s.model.id, s.model.address))
        .collect();
    v.join(", ")
}

fn render(
    discovery: &Discovery,
    (device, devices): (usize, usize),
    sections: &[Section],
    left_out: &[(Model, String)],
    common: Option<&CommonInfo>,
    source: &DraftSource,
) -> String {
    let mut o = String::new();
    let kinds: Vec<ModelKind> = sections.iter().map(|s| s.def.kind).collect();
    let has_meter = kinds.contains(&ModelKind::Meter);
    let category = if kinds.contains(&ModelKind::Inverter) {
        "pv_inverter"
    } else if has_meter {
        "meter"
    } else {
        "other"
    };
    let included: BTreeSet<u16> = sections.iter().map(|s| s.model.address).collect();

    // Header.
    let _ = writeln!(
        o,
        "# DRAFT device profile written by `fivezero-gateway scan`: review every point before use."
    );
    let _ = writeln!(o, "#");
    let _ = writeln!(
        o,
        "# Scanned {}, unit {}, on {}.",
        source.link, source.unit, source.date
    );
    let _ = writeln!(
        o,
        "# SunSpec marker \"SunS\" at {}; models (id at the address of its ID register, length L):",
        discovery.base
    );
    for m in &discovery.models {
        let mark = if included.contains(&m.address) {
            "   <- in this draft"
        } else {
            ""
        };
        let _ = writeln!(
            o,
            "#   {:>5} at {:>5}, L = {:>3}  {}{mark}",
            m.id,
            m.address,
            m.length,
            m.name().unwrap_or("(unknown model)")
        );
    }
    let _ = writeln!(o, "#   {}", discovery.end);
    let _ = writeln!(
        o,
        "# This draft is logical device {device} of {devices} (each common model starts one; \
         `scan --device N` drafts another)."
    );
    for (m, why) in left_out {
        let _ = writeln!(o, "# Left out: model {} at {}: {why}.", m.id, m.address);
    }
    let _ = writeln!(o, "#");
    for line in [
        "# Addresses are the discovered ones: 0-based PDU addresses of holding registers",
        "# (function 03), big-endian words; each doc_ref names the model, the offset from its ID",
        "# register and the SunSpec type. Every scale factor (*_SF) that a point uses is an i16",
        "# helper point; the planner reads it in the same request as its values. Sentinels",
        "# (\"not implemented\"): int16 0x8000, uint16 and enum16 0xFFFF, acc32 0, bitfield32",
        "# 0xFFFFFFFF; a scale factor of 0x8000 makes its values \"not available\".",
        "#",
        "# Check before use:",
        "# - acc32 energy counters treat 0 (\"not accumulated\") as not available, so a brand-new",
        "#   device shows no energy until its first Wh;",
        "# - PF is declared in percent (Pct); if the device reports a ratio (values near 1),",
        "#   set its unit to \"1\";",
    ] {
        let _ = writeln!(o, "{line}");
    }
    if has_meter {
        for line in [
            "# - meter sign: the catalogue wants W positive when drawn from the grid; at midday",
            "#   with PV exporting W must be negative, else add scale = -1 to W and WphA-C and",
            "#   check that TotWhImp and TotWhExp are not swapped;",
        ] {
            let _ = writeln!(o, "{line}");
        }
    }
    for line in [
        "# - points without a catalogue metric are listed as comments, not read.",
        "# Then: fivezero-gateway profile check <this file>, and",
        "#       fivezero-gateway read --profile <this file> --tcp HOST:PORT --unit N",
        "",
    ] {
        let _ = writeln!(o, "{line}");
    }

    // [device]
    let info = common.cloned().unwrap_or_default();
    let ids: Vec<String> = sections.iter().map(|s| s.model.id.to_string()).collect();
    let manufacturer = if info.manufacturer.is_empty() {
        "Unknown (SunSpec Mn not read): set the manufacturer".to_owned()
    } else {
        info.manufacturer.clone()
    };
    let model = if info.model.is_empty() {
        format!("SunSpec device (models {})", models_list(sections))
    } else {
        format!("{} (SunSpec models {})", info.model, models_list(sections))
    };
    let mut notes = format!(
        "DRAFT written by fivezero-gateway scan on {}: review before use.",
        source.date
    );
    let said: Vec<String> = [
        ("manufacturer", &info.manufacturer),
        ("model", &info.model),
        ("options", &info.options),
        ("version", &info.version),
        ("serial number", &info.serial),
    ]
    .iter()
    .filter(|(_, value)| !value.is_empty())
    .map(|(label, value)| format!("{label} {value}"))
    .collect();
    if !said.is_empty() {
        let _ = write!(
            notes,
            " The common model said at scan time: {}.",
            said.join(", ")
        );
    }
    let _ = writeln!(o, "[device]");
    let _ = writeln!(o, "manufacturer = {}", q(&manufacturer));
    let _ = writeln!(o, "model = {}", q(&model));
    let _ = writeln!(o, "category = {}", q(category));
    let _ = writeln!(
        o,
        "source = {}",
        q(&format!(
            "SunSpec discovery by fivezero-gateway scan of {} unit {} on {}; point offsets, \
             types and units from the SunSpec model definitions (models {}), as tabulated in \
             the project register reference (registers.md 6.2). Draft: not checked by a person.",
            source.link,
            source.unit,
            source.date,
            ids.join(", ")
        ))
    );
    let _ = writeln!(o, "notes = {}", q(&notes));
    let _ = writeln!(o);
    let _ = writeln!(o, "[modbus]");
    let _ = writeln!(o, "order = \"ABCD\"");
    let _ = writeln!(
        o,
        "# SunSpec devices answer reads up to the Modbus maximum, and every register inside the"
    );
    let _ = writeln!(
        o,
        "# map belongs to a model, so short runs of unread points may be read through."
    );
    let _ = writeln!(o, "max_registers = 125");
    let _ = writeln!(o, "max_gap = 16");

    for s in sections {
        render_section(&mut o, s);
    }
    o
}

fn render_section(o: &mut String, s: &Section) {
    let m = &s.model;
    let title = format!(
        "# --- model {} ({}) at {}, L = {} ",
        m.id,
        m.name().unwrap_or("?"),
        m.address,
        m.length
    );
    let _ = writeln!(o);
    let _ = writeln!(o, "{title:-<95}");
    for p in s.def.points {
        let name = s.def.point_name(p);
        let kind = p.ty.sunspec_name();
        if s.reading.contains(&p.offset) || s.helpers.contains(&p.offset) {
            render_point(o, s, p);
            continue;
        }
        let why = if !Section::fits(m, p) {
            format!("beyond this device's L = {}, absent", m.length)
        } else if p.ty == SunType::Pad {
            "padding".to_owned()
        } else if p.ty == SunType::Sunssf {
            "scale factor of points not read".to_owned()
        } else if p.metric.is_some() {
            "its scale factor lies beyond the model, not read".to_owned()
        } else {
            "no catalogue metric, not read".to_owned()
        };
        let sf =
            p.sf.map(|sf| format!(", scale factor {sf}"))
                .unwrap_or_default();
        let unit = if p.unit.is_empty() {
            String::new()
        } else {
            format!(", {}", p.unit)
        };
        let _ = writeln!(
            o,
            "# offset {:>3} (address {}): {name} ({kind}{sf}{unit}): {why}",
            p.offset,
            s.address(p)
        );
    }
}

fn render_point(o: &mut String, s: &Section, p: &PointDef) {
    let name = s.def.point_name(p);
    let _ = writeln!(o);
    let _ = writeln!(o, "[[point]]");
    let _ = writeln!(o, "name = {}", q(name));
    let helper = !s.reading.contains(&p.offset);
    if let (false, Some(metric)) = (helper, p.metric) {
        let _ = writeln!(o, "metric = {}", q(metric));
    }
    let _ = writeln!(o, "table = \"holding\"");
    let _ = writeln!(o, "address = {}", s.address(p));
    let _ = writeln!(o, "type = {}", q(p.ty.profile_type().unwrap_or("u16")));
    if let SunType::String(len) = p.ty {
        let _ = writeln!(o, "length = {len}");
    }
    if !helper {
        if let Some(sf) = p.sf.and_then(|n| s.def.points.iter().find(|q| q.name == n)) {
            let _ = writeln!(o, "scale_factor = {}", q(s.def.point_name(sf)));
        }
        if !p.unit.is_empty() {
            let _ = writeln!(o, "unit = {}", q(p.unit));
        }
        if let Some(na) = p.ty.not_available() {
            let _ = writeln!(o, "not_available = [{na}]");
        }
        if !p.labels.is_empty() {
            let v: Vec<String> = p
                .labels
                .iter()
                .map(|(k, l)| format!("{k} = {}", q(l)))
                .collect();
            let _ = writeln!(o, "labels = {{ {} }}", v.join(", "));
        }
        if !p.flags.is_empty() {
            let v: Vec<String> = p
                .flags
                .iter()
                .map(|(k, l)| format!("{k} = {}", q(l)))
                .collect();
            let _ = writeln!(o, "flags = {{ {} }}", v.join(", "));
        }
        if p.hourly {
            let _ = writeln!(o, "interval = \"1h\"");
        }
    }
    let _ = writeln!(
        o,
        "doc_ref = {}",
        q(&format!(
            "model {} at {}, offset {}: {name}, {}",
            s.model.id,
            s.model.address,
            p.offset,
            p.ty.sunspec_name()
        ))
    );
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use fivezero_profiles::codec::{self, Decoded, NotAvailable, RegisterImage};
    use fivezero_profiles::{Category, Profile, Table, load_file};

    use super::super::discover;
    use super::super::discover::{End, tests::solaredge};
    use super::*;

    fn source() -> DraftSource {
        DraftSource {
            link: "tcp 192.0.2.10:502".to_owned(),
            unit: 1,
            date: "2026-06-21T00:00:00Z".to_owned(),
        }
    }

    fn discovery(models: &[(u16, u16)]) -> Discovery {
        let mut a = 40_002;
        let models = models
            .iter()
            .map(|&(id, length)| {
                let m = Model {
                    id,
                    address: a,
                    length,
                };
                a += 2 + length;
                m
            })
            .collect();
        Discovery {
            base: 40_000,
            models,
            end: End::EndModel(a),
            skipped: Vec::new(),
        }
    }

    /// Writes the draft as `<name>.toml` in a scratch folder and loads it with `load_file`.
    fn load(draft: &Draft, name: &str) -> Profile {
        let dir: PathBuf = std::env::temp_dir().join(format!(
            "fivezero-sunspec-emit-{}-{name}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join(format!("{name}.toml"));
        std::fs::write(&file, &draft.text).unwrap();
        match load_file(&file) {
            Ok(p) => p,
            Err(d) => {
                let lines: Vec<String> = d.iter().map(ToString::to_string).collect();
                panic!("{}\n{}", lines.join("\n"), draft.text)
            }
        }
    }

    fn address(p: &Profile, name: &str) -> u16 {
        p.point(name)
            .unwrap_or_else(|| panic!("no point {name}"))
            .address
    }

    #[tokio::test]
    async fn a_solaredge_inverter_draft_loads_with_the_discovered_addresses() {
        let mut r = solaredge();
        let d = discover::discover(&mut r).await.unwrap();
        let info = CommonInfo {
            manufacturer: "SolarEdge".into(),
            model: "SE25K".into(),
            serial: "7E0\"42".into(),
            ..CommonInfo::default()
        };
        let draft = emit(&d, 1, Some(&info), &source()).unwrap();
        assert_eq!(draft.device, (1, 2));
        assert!(draft.left_out.is_empty());
        assert!(draft.text.starts_with("# DRAFT"));
        let p = load(&draft, "se25k-draft");
        assert_eq!(p.category, Category::PvInverter);
        assert_eq!(p.manufacturer, "SolarEdge");
        assert!(
            p.model
                .starts_with("SE25K (SunSpec models 1 at 40002, 103 at 40069)")
        );
        assert_eq!(address(&p, "Md"), 40_020);
        assert_eq!(address(&p, "SN"), 40_052);
        assert_eq!(address(&p, "W"), 40_083);
        assert_eq!(address(&p, "W_SF"), 40_084);
        assert_eq!(address(&p, "WH"), 40_093);
        assert_eq!(address(&p, "St"), 40_107);
        assert_eq!(address(&p, "Evt1"), 40_109);
        assert_eq!(p.point("W").unwrap().not_available, [0x8000]);
        assert_eq!(p.point("WH").unwrap().not_available, [0]);
        assert_eq!(p.point("Evt1").unwrap().not_available, [0xFFFF_FFFF]);
        assert_eq!(
            p.point("St").unwrap().labels.get(&4).map(String::as_str),
            Some("MPPT")
        );
        assert_eq!(draft.reading_points, p.reading_points().count());
        // Every scale factor of model 103 is wired as an i16 helper of its values.
        for sf in [
            "A_SF", "V_SF", "W_SF", "Hz_SF", "VA_SF", "VAr_SF", "PF_SF", "WH_SF", "DCA_SF",
            "DCV_SF", "DCW_SF", "Tmp_SF",
        ] {
            let i = p.points.iter().position(|x| x.name == sf).unwrap();
            assert!(p.points[i].metric.is_none());
            assert!(p.points.iter().any(|x| x.scale_factor == Some(i)), "{sf}");
        }
        // Points without a metric are there as comments.
        assert!(
            draft
                .text
                .contains("TmpTrns (int16, scale factor Tmp_SF, °C): no catalogue metric")
        );
        // The whole draft is read in one request.
        assert_eq!(fivezero_profiles::plan::plan_all(&p).len(), 1);
    }

    #[tokio::test]
    async fn the_meter_behind_the_inverter_is_the_second_logical_device() {
        let mut r = solaredge();
        let d = discover::discover(&mut r).await.unwrap();
        let draft = emit(&d, 2, None, &source()).unwrap();
        let p = load(&draft, "se-meter-draft");
        assert_eq!(p.category, Category::Meter);
        assert_eq!(address(&p, "AphA"), 40_191);
        assert_eq!(address(&p, "PhVphAB"), 40_200);
        assert_eq!(address(&p, "W"), 40_206);
        assert_eq!(address(&p, "TotWhImp"), 40_234);
        assert_eq!(address(&p, "TotWh_SF"), 40_242);
        assert_eq!(address(&p, "SN"), 40_171);
        assert!(p.manufacturer.starts_with("Unknown"));
        assert!(draft.text.contains("meter sign"));
        assert!(
            draft
                .text
                .contains("TotVAh_SF (sunssf): scale factor of points not read")
        );
        assert!(matches!(
            emit(&d, 3, None, &source()),
            Err(EmitError::NoSuchDevice {
                asked: 3,
                devices: 2
            })
        ));
        assert!(emit(&d, 0, None, &source()).is_err());
    }

    #[test]
    fn the_golden_se25k_dump_decodes_through_the_draft() {
        // registers.md §6.2: a SolarEdge SE25K, model 103 data after (ID, L) at 40069.
        let dump: [u16; 50] = [
            0, 0, 0, 0, 65534, 3965, 3953, 3963, 2288, 2284, 2285, 65535, 0, 0, 4998, 65534, 0, 0,
            0, 0, 0, 0, 60, 8980, 0, 0, 0, 16, 65535, 0, 0, 32768, 3927, 32768, 32768, 65534, 2, 0,
            65535, 65535, 65535, 65535, 0, 0, 65535, 65535, 65535, 65535, 0, 0,
        ];
        let d = discovery(&[(1, 65), (103, 50)]);
        let draft = emit(&d, 1, None, &source()).unwrap();
        let p = load(&draft, "golden");
        let mut image = RegisterImage::new();
        image.put_registers(Table::Holding, 40_071, &dump);
        let value = |name: &str| {
            let i = p.points.iter().position(|x| x.name == name).unwrap();
            codec::decode(&p, i, &image).unwrap()
        };
        let near = |name: &str, want: f64| {
            let got = value(name).number().unwrap_or(f64::NAN);
            assert!((got - want).abs() < 1e-9, "{name}: {got} != {want}");
        };
        near("PPVphAB", 396.5);
        near("PhVphA", 228.8);
        near("Hz", 49.98);
        near("WH", 3_941.14); // kWh
        near("DCV", 1.6);
        near("TmpSnk", 39.27);
        near("St", 2.0);
        assert_eq!(
            value("TmpCab"),
            Decoded::NotAvailable(NotAvailable::Sentinel(0x8000))
        );
        assert!(matches!(value("Evt1"), Decoded::NotAvailable(_)));
    }

    #[test]
    fn a_common_model_of_66_moves_everything_after_it_by_one() {
        let d = discovery(&[(1, 66), (103, 50)]);
        let p = load(&emit(&d, 1, None, &source()).unwrap(), "l66");
        assert_eq!(address(&p, "W"), 40_084);
        assert_eq!(address(&p, "AphA"), 40_073);
    }

    #[test]
    fn every_int_sf_inverter_and_meter_model_drafts_a_valid_profile() {
        for (id, category) in [
            (101, Category::PvInverter),
            (102, Category::PvInverter),
            (103, Category::PvInverter),
            (201, Category::Meter),
            (202, Category::Meter),
            (203, Category::Meter),
            (204, Category::Meter),
        ] {
            let len = models::model(id).unwrap().length;
            let d = discovery(&[(1, 65), (id, len)]);
            let draft = emit(&d, 1, None, &source()).unwrap();
            let p = load(&draft, &format!("model-{id}"));
            assert_eq!(p.category, category, "{id}");
            assert_eq!(address(&p, "W"), 40_069 + if id < 200 { 14 } else { 18 });
        }
        // 201 calls its line voltages PPVph*, 203 PhVph*.
        let d = discovery(&[(201, 105)]);
        let p = load(&emit(&d, 1, None, &source()).unwrap(), "m201");
        assert!(p.point("PPVphAB").is_some());
    }

    #[test]
    fn a_second_device_model_without_its_own_common_model_is_left_out() {
        let d = discovery(&[(1, 65), (103, 50), (160, 48), (203, 105)]);
        let draft = emit(&d, 1, None, &source()).unwrap();
        let left: Vec<u16> = draft.left_out.iter().map(|(m, _)| m.id).collect();
        assert_eq!(left, [160, 203]);
        assert!(
            draft.left_out[1]
                .1
                .contains("already reported by model 103")
        );
        assert!(draft.text.contains("# Left out: model 160 at 40121"));
        let p = load(&draft, "clash");
        assert_eq!(p.category, Category::PvInverter);
        assert_eq!(address(&p, "W"), 40_083);
    }

    #[test]
    fn points_beyond_a_short_model_are_left_out_with_values_missing_their_factor() {
        // L = 30: DCW (offset 31) fits, its DCW_SF (offset 32) does not.
        let d = discovery(&[(1, 65), (103, 30)]);
        let draft = emit(&d, 1, None, &source()).unwrap();
        let p = load(&draft, "short");
        assert!(p.point("DCV").is_some());
        assert!(p.point("DCW").is_none());
        assert!(p.point("St").is_none());
        assert!(draft.text.contains(
            "DCW (int16, scale factor DCW_SF, W): its scale factor lies beyond the model"
        ));
    }

    #[test]
    fn a_device_of_unknown_models_cannot_be_drafted() {
        let d = discovery(&[(160, 48)]);
        assert!(matches!(
            emit(&d, 1, None, &source()),
            Err(EmitError::NothingToDraft { device: 1, .. })
        ));
    }

    #[test]
    fn toml_strings_are_escaped() {
        assert_eq!(q("a\"b\\c\u{7f}"), "\"a\\\"b\\\\c\\u007F\"");
    }
}
