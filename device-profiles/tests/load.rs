//! The profile loader: what it accepts, how it normalises addresses, and every refusal with the
//! exact message an integrator sees.

use std::path::Path;

use fivezero_profiles::{DataType, Table, WordOrder, load_str};

const HEADER: &str = r#"[device]
manufacturer = "Acme"
model = "M1"
category = "meter"
source = "Acme M1 manual v2, table 4"
"#;

/// Loads `HEADER` + `points` as `acme-m1.toml` and returns the printed diagnostics.
fn refusals(points: &str) -> Vec<String> {
    let text = format!("{HEADER}{points}");
    match load_str(Path::new("acme-m1.toml"), &text) {
        Ok(_) => panic!("expected a refusal for:\n{text}"),
        Err(ds) => ds.iter().map(ToString::to_string).collect(),
    }
}

fn the_one_refusal(points: &str) -> String {
    let all = refusals(points);
    assert_eq!(all.len(), 1, "expected exactly one error, got {all:#?}");
    all.into_iter().next().unwrap()
}

#[test]
fn a_valid_profile_loads_with_defaults_filled_in() {
    let text = format!(
        "{HEADER}{}",
        r#"
[modbus]
order = "CDAB"
max_registers = 60
max_gap = 4

[[point]]
name = "energy"
metric = "electricity.import_energy"
table = "input"
address = 10
type = "u32"
unit = "Wh"
scale = 10
not_available = [0xFFFFFFFF]

[[point]]
name = "power"
metric = "electricity.active_power"
register = 30001
type = "f32"
order = "ABCD"
unit = "W"

[[point]]
name = "state"
metric = "boiler.state"
table = "holding"
number = 5
type = "u16"
labels = { 0 = "off", 1 = "firing" }
"#
    );
    let p = load_str(Path::new("acme-m1.toml"), &text).expect("valid");
    assert_eq!(p.id, "acme-m1");
    assert_eq!(p.limits.max_registers, 60);
    assert_eq!(p.limits.max_gap, 4);
    let energy = p.point("energy").unwrap();
    assert_eq!(
        energy.order,
        WordOrder::Cdab,
        "profile default order applies"
    );
    assert_eq!(energy.data_type, DataType::U32);
    assert_eq!(energy.not_available, vec![0xFFFF_FFFF]);
    assert!(
        (energy.conversion.apply(1000.0) - 1.0).abs() < 1e-12,
        "Wh -> kWh"
    );
    let power = p.point("power").unwrap();
    assert_eq!(
        (power.table, power.address),
        (Table::Input, 0),
        "30001 is input 0"
    );
    assert_eq!(power.order, WordOrder::Abcd, "per-point order overrides");
    let state = p.point("state").unwrap();
    assert_eq!(
        (state.table, state.address),
        (Table::Holding, 4),
        "number 5 is address 4"
    );
    assert_eq!(state.labels.get(&1).map(String::as_str), Some("firing"));
}

#[test]
fn a_misspelt_key_is_refused_with_its_line_and_column() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "p"
metric = "electricity.active_power"
table = "input"
adress = 3
type = "f32"
"#,
    );
    assert!(
        e.starts_with("acme-m1.toml:11:1: error: unknown key `adress`"),
        "{e}"
    );
}

#[test]
fn an_address_beyond_65535_is_refused() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "p"
metric = "electricity.active_power"
table = "input"
address = 70000
type = "f32"
"#,
    );
    assert_eq!(
        e,
        "acme-m1.toml:11:11: error: point `p`: address 70000 is outside 0..=65535; addresses are 0-based PDU addresses"
    );
}

/// Regression (issue 9, fuzzing): `number - 1` overflowed on the smallest TOML integer and
/// panicked instead of refusing the point.
#[test]
fn a_register_number_of_i64_min_is_refused_not_a_panic() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "p"
metric = "electricity.active_power"
table = "input"
number = -9223372036854775808
type = "f32"
"#,
    );
    assert_eq!(
        e,
        "acme-m1.toml:11:10: error: point `p`: register number -9223372036854775808 is outside 1..=65536 (`number` is the manual's 1-based numbering)"
    );
}

#[test]
fn a_point_running_past_the_last_register_is_refused() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "p"
metric = "electricity.import_energy"
table = "holding"
address = 65534
type = "u64"
"#,
    );
    assert_eq!(
        e,
        "acme-m1.toml:11:11: error: point `p`: a u64 at address 65534 runs past address 65535 (it needs 4 registers); check the address"
    );
}

#[test]
fn overlapping_points_of_different_types_are_refused() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "a"
metric = "electricity.active_power"
table = "input"
address = 0
type = "f32"

[[point]]
name = "b"
metric = "electricity.frequency"
table = "input"
address = 1
type = "u16"
"#,
    );
    assert_eq!(
        e,
        "acme-m1.toml:14:1: error: point `b` (u16 at input 1) overlaps point `a` (line 7, f32 at 0) with a different type; check both addresses"
    );
}

#[test]
fn bits_of_a_status_register_may_overlap_it() {
    let text = format!(
        "{HEADER}{}",
        r#"
[[point]]
name = "word"
metric = "compressor.alarm_flags"
table = "holding"
address = 277
type = "u16"

[[point]]
name = "running"
metric = "compressor.running"
table = "holding"
address = 277
type = "bit"
bit = 3
"#
    );
    load_str(Path::new("acme-m1.toml"), &text).expect("bits of a u16 are compatible");
}

#[test]
fn the_same_table_in_other_tables_does_not_overlap() {
    let text = format!(
        "{HEADER}{}",
        r#"
[[point]]
name = "a"
metric = "electricity.active_power"
table = "input"
address = 0
type = "f32"

[[point]]
name = "b"
metric = "electricity.frequency"
table = "holding"
address = 0
type = "u16"
"#
    );
    load_str(Path::new("acme-m1.toml"), &text).expect("different tables never overlap");
}

#[test]
fn a_unit_of_the_wrong_dimension_is_refused() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "p"
metric = "electricity.active_power"
table = "input"
address = 0
type = "f32"
unit = "kWh"
"#,
    );
    assert_eq!(
        e,
        "acme-m1.toml:13:8: error: point `p` (metric `electricity.active_power`): unit \"kWh\" measures energy but the metric's unit \"kW\" measures power"
    );
}

#[test]
fn an_unknown_unit_is_refused_with_a_suggestion() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "p"
metric = "electricity.import_energy"
table = "input"
address = 0
type = "f32"
unit = "kwh"
"#,
    );
    assert!(
        e.contains("unknown unit \"kwh\"; did you mean \"kWh\"?"),
        "{e}"
    );
}

#[test]
fn a_metric_not_in_the_catalogue_is_refused_with_a_suggestion() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "p"
metric = "electricity.import_enrgy"
table = "input"
address = 0
type = "f32"
"#,
    );
    assert_eq!(
        e,
        "acme-m1.toml:9:10: error: point `p`: metric \"electricity.import_enrgy\" is not in the catalogue; did you mean \"electricity.import_energy\"? `fivezero-gateway profile metrics` lists them all"
    );
}

#[test]
fn a_scale_factor_that_is_not_int16_is_refused() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "W"
metric = "pv.ac_power"
table = "holding"
address = 40083
type = "i16"
scale_factor = "W_SF"

[[point]]
name = "W_SF"
table = "holding"
address = 40084
type = "u16"
"#,
    );
    assert_eq!(
        e,
        "acme-m1.toml:13:16: error: point `W`: scale-factor point `W_SF` is a u16; scale-factor registers are signed 16-bit powers of ten, so declare it type = \"i16\""
    );
}

#[test]
fn a_scale_factor_naming_no_point_is_refused() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "W"
metric = "pv.ac_power"
table = "holding"
address = 40083
type = "i16"
scale_factor = "W_SFF"
"#,
    );
    assert!(
        e.contains("scale_factor \"W_SFF\" is not a point of this profile"),
        "{e}"
    );
}

#[test]
fn a_point_without_metric_must_be_a_scale_factor() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "orphan"
table = "holding"
address = 1
type = "i16"
"#,
    );
    assert!(
        e.contains("point `orphan` has no `metric` and no point uses it as `scale_factor`"),
        "{e}"
    );
}

#[test]
fn a_bit_index_over_15_is_refused() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "p"
metric = "compressor.running"
table = "holding"
address = 0
type = "bit"
bit = 16
"#,
    );
    assert_eq!(
        e,
        "acme-m1.toml:13:7: error: point `p`: bit index 16 is over 15; a register has bits 0 (least significant) to 15"
    );
}

#[test]
fn a_string_of_zero_length_is_refused() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "sn"
metric = "device.serial_number"
table = "holding"
address = 0
type = "string"
length = 0
"#,
    );
    assert_eq!(
        e,
        "acme-m1.toml:13:10: error: point `sn`: a string of length 0 is not possible; give 1 to 125 registers"
    );
}

#[test]
fn duplicate_point_names_are_refused() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "p"
metric = "electricity.active_power"
table = "input"
address = 0
type = "f32"

[[point]]
name = "p"
metric = "electricity.frequency"
table = "input"
address = 2
type = "f32"
"#,
    );
    assert_eq!(
        e,
        "acme-m1.toml:14:1: error: point name `p` is used twice (first at line 7); names must be unique"
    );
}

#[test]
fn one_metric_reported_twice_is_refused() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "a"
metric = "electricity.frequency"
table = "input"
address = 0
type = "f32"

[[point]]
name = "b"
metric = "electricity.frequency"
table = "input"
address = 2
type = "f32"
"#,
    );
    assert!(
        e.contains("metric `electricity.frequency` is already reported by the point at line 7"),
        "{e}"
    );
}

#[test]
fn register_notation_must_agree_with_the_table() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "p"
metric = "electricity.frequency"
table = "holding"
register = 30005
type = "u16"
"#,
    );
    assert!(
        e.contains("register 30005 is in the input table but `table` says holding"),
        "{e}"
    );
}

#[test]
fn a_plain_number_in_register_is_refused_with_the_alternatives() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "p"
metric = "electricity.frequency"
register = 5
type = "u16"
"#,
    );
    assert!(
        e.contains("for a plain 0-based address use `address`, for a 1-based number use `number`"),
        "{e}"
    );
}

#[test]
fn two_locations_are_refused() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "p"
metric = "electricity.frequency"
table = "input"
address = 4
number = 5
type = "u16"
"#,
    );
    assert!(
        e.contains("give only one of `address`, `register` and `number`"),
        "{e}"
    );
}

#[test]
fn kind_must_agree_with_the_metric() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "p"
metric = "electricity.import_energy"
table = "input"
address = 0
type = "f32"
kind = "gauge"
"#,
    );
    assert!(
        e.contains("kind = \"gauge\" but metric `electricity.import_energy` is a counter"),
        "{e}"
    );
}

#[test]
fn bool_belongs_to_the_bit_tables_and_words_to_the_register_tables() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "p"
metric = "compressor.running"
table = "holding"
address = 0
type = "bool"
"#,
    );
    assert!(
        e.contains("type \"bool\" is for coils and discrete inputs"),
        "{e}"
    );
    let e = the_one_refusal(
        r#"
[[point]]
name = "p"
metric = "compressor.running"
table = "coil"
address = 0
type = "u16"
"#,
    );
    assert!(
        e.contains("the coil table holds single bits; use type \"bool\""),
        "{e}"
    );
}

#[test]
fn a_sentinel_wider_than_the_type_is_refused() {
    let e = the_one_refusal(
        r#"
[[point]]
name = "p"
metric = "pv.ac_power"
table = "holding"
address = 0
type = "i16"
not_available = [0x18000]
"#,
    );
    assert!(
        e.contains("sentinel does not fit in a i16 (16 bits)"),
        "{e}"
    );
}

#[test]
fn negative_and_hex_string_sentinels_are_masked_to_the_type() {
    let text = format!(
        "{HEADER}{}",
        r#"
[[point]]
name = "p"
metric = "pv.ac_power"
table = "holding"
address = 0
type = "i16"
not_available = [-32768]

[[point]]
name = "e"
metric = "pv.energy"
table = "holding"
address = 4
type = "u64"
not_available = ["0x8000000000000000"]
"#
    );
    let p = load_str(Path::new("acme-m1.toml"), &text).expect("valid");
    assert_eq!(p.point("p").unwrap().not_available, vec![0x8000]);
    assert_eq!(
        p.point("e").unwrap().not_available,
        vec![0x8000_0000_0000_0000]
    );
}

#[test]
fn every_problem_in_a_file_is_reported_at_once() {
    let all = refusals(
        r#"
[[point]]
name = "a"
metric = "no.such_metric"
table = "input"
address = 0
type = "f32"

[[point]]
name = "b"
metric = "electricity.frequency"
table = "input"
address = 2
type = "f33"
"#,
    );
    assert_eq!(all.len(), 2, "{all:#?}");
    assert!(all[0].starts_with("acme-m1.toml:9:10:"), "{}", all[0]);
    assert!(all[1].starts_with("acme-m1.toml:19:8:"), "{}", all[1]);
}

#[test]
fn an_unknown_category_lists_the_valid_ones() {
    let text = HEADER.replace("\"meter\"", "\"metre\"")
        + r#"
[[point]]
name = "p"
metric = "electricity.frequency"
table = "input"
address = 0
type = "f32"
"#;
    let e = load_str(Path::new("acme-m1.toml"), &text).unwrap_err();
    assert_eq!(e.len(), 1);
    assert!(e[0].to_string().starts_with(
        "acme-m1.toml:4:12: error: unknown category \"metre\"; use one of: meter, pv_inverter"
    ));
}

#[test]
fn a_read_limit_above_the_modbus_maximum_is_refused() {
    let e = the_one_refusal(
        r#"
[modbus]
max_registers = 200

[[point]]
name = "p"
metric = "electricity.frequency"
table = "input"
address = 0
type = "f32"
"#,
    );
    assert!(
        e.contains("`max_registers` = 200 is out of range; use 1 to 125"),
        "{e}"
    );
}

#[test]
fn the_shipped_library_loads_without_errors() {
    let loaded = fivezero_profiles::load_path(&fivezero_profiles::library_dir()).expect("library");
    assert!(!loaded.is_empty());
    for (path, result) in loaded {
        if let Err(ds) = result {
            panic!(
                "{} refused:\n{}",
                path.display(),
                ds.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join("\n")
            );
        }
    }
}

#[test]
fn the_example_in_the_readme_is_a_valid_profile() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    let start = readme.find("```toml\n").expect("a toml block") + "```toml\n".len();
    let end = start + readme[start..].find("```").unwrap();
    let p = load_str(Path::new("acme-bx200.toml"), &readme[start..end]).unwrap_or_else(|ds| {
        panic!(
            "{}",
            ds.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join("\n")
        )
    });
    assert_eq!(p.points.len(), 4);
    let fuel = p.point("fuel_total").unwrap();
    assert!(
        (fuel.conversion.apply(1000.0) - 1.0).abs() < 1e-12,
        "kg -> t"
    );
}

#[test]
fn the_readme_catalogue_lists_every_shipped_profile() {
    let readme =
        std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).unwrap();
    for (path, _) in fivezero_profiles::load_path(&fivezero_profiles::library_dir()).unwrap() {
        let id = path.file_stem().unwrap().to_string_lossy();
        assert!(
            readme.contains(&format!("| `{id}` |")),
            "device-profiles/README.md does not list `{id}`"
        );
    }
}
