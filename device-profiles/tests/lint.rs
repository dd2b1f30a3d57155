//! The lint pass of `profile check`: warnings for likely mistakes, never refusals (issue 7).

use std::path::Path;

use fivezero_profiles::{Diagnostic, Severity, check_path, check_str, library_dir};

const DEVICE: &str = r#"
[device]
manufacturer = "Acme"
model = "Lint test"
category = "meter"
source = "tests/lint.rs"
"#;

fn warnings(text: &str) -> Vec<Diagnostic> {
    let checked = check_str(Path::new("acme.toml"), text)
        .unwrap_or_else(|e| panic!("the profile must load: {e:?}"));
    assert!(
        checked
            .warnings
            .iter()
            .all(|w| w.severity == Severity::Warning)
    );
    checked.warnings
}

/// The 1-based line of the first line of `text` containing `needle`.
fn line_of(text: &str, needle: &str) -> usize {
    text.lines()
        .position(|l| l.contains(needle))
        .unwrap_or_else(|| panic!("{needle:?} not in the text"))
        + 1
}

fn one(ws: &[Diagnostic], needle: &str) -> Diagnostic {
    let found: Vec<&Diagnostic> = ws.iter().filter(|w| w.message.contains(needle)).collect();
    assert_eq!(found.len(), 1, "one warning with {needle:?} in {ws:#?}");
    found[0].clone()
}

#[test]
fn a_clean_profile_has_no_warnings() {
    let text = format!(
        r#"{DEVICE}rated_power = "40 kW"

[[point]]
name = "power"
metric = "electricity.active_power"
table = "input"
address = 0
type = "f32"
unit = "W"

[[point]]
name = "import"
metric = "electricity.import_energy"
table = "input"
address = 2
type = "u32"
scale = 0.1
unit = "kWh"
"#
    );
    assert_eq!(warnings(&text), Vec::new());
}

#[test]
fn a_32_bit_wh_counter_that_wraps_within_a_year_at_the_rating_is_flagged_with_its_line() {
    // u32 in Wh wraps at 4,294,967 kWh: 9.8 months at 600 kW, 16 years at 30 kW.
    let text = |rating: &str| {
        format!(
            r#"{DEVICE}rated_power = "{rating}"

[[point]]
name = "WH"
metric = "electricity.import_energy"
table = "holding"
address = 40093
type = "u32"
unit = "Wh"
"#
        )
    };
    let big = text("0.6 MW");
    let w = one(&warnings(&big), "wraps every 4,294,967 kWh");
    assert_eq!(w.line, line_of(&big, "[[point]]"));
    assert!(w.message.contains("point `WH`"), "{}", w.message);
    assert!(
        w.message.contains("9.8 months at the rated 600 kW"),
        "{}",
        w.message
    );
    assert!(w.to_string().starts_with(&format!("acme.toml:{}:", w.line)));
    assert!(w.to_string().contains(": warning: "), "{w}");

    assert!(warnings(&text("30 kW")).is_empty());
}

#[test]
fn a_counter_wrap_needs_a_rating_to_be_judged() {
    let text = format!(
        r#"{DEVICE}
[[point]]
name = "WH"
metric = "electricity.import_energy"
table = "holding"
address = 100
type = "u16"
unit = "Wh"
"#
    );
    assert!(warnings(&text).is_empty());
    let rated = text.replace(
        "source = \"tests/lint.rs\"",
        "source = \"x\"\nrated_power = \"22 kW\"",
    );
    let w = one(&warnings(&rated), "wraps every 65.5 kWh");
    assert!(
        w.message.contains("2.98 hours at the rated 22 kW"),
        "{}",
        w.message
    );
}

#[test]
fn a_float32_energy_total_is_flagged_with_the_step_it_reaches() {
    let text = format!(
        r#"{DEVICE}rated_power = "250 kW"

[[point]]
name = "total"
metric = "electricity.import_energy"
table = "input"
address = 72
type = "f32"
unit = "kWh"
"#
    );
    // A year at 250 kW is 2,190,000 kWh, where float32 steps by 0.25 kWh.
    let w = one(&warnings(&text), "float32 total");
    assert!(w.message.contains("2,190,000 kWh"), "{}", w.message);
    assert!(w.message.contains("steps of 0.25 kWh"), "{}", w.message);
    // A float32 gauge is fine.
    let gauge = text
        .replace("electricity.import_energy", "electricity.active_power")
        .replace("kWh", "kW");
    assert!(warnings(&gauge).is_empty(), "{:?}", warnings(&gauge));
}

#[test]
fn a_point_without_a_unit_is_flagged_but_states_are_not() {
    let text = format!(
        r#"{DEVICE}
[[point]]
name = "temperature"
metric = "flow.temperature"
table = "input"
address = 0
type = "i16"

[[point]]
name = "errors"
metric = "flow.error_flags"
table = "input"
address = 1
type = "u16"
"#
    );
    let ws = warnings(&text);
    assert_eq!(ws.len(), 1, "{ws:#?}");
    assert!(ws[0].message.contains("point `temperature` has no `unit`"));
    assert!(ws[0].message.contains("°C"), "{}", ws[0].message);
    assert_eq!(ws[0].line, line_of(&text, "[[point]]"));
}

#[test]
fn a_scale_factor_on_a_float_is_flagged_at_the_scale_factor() {
    let text = format!(
        r#"{DEVICE}
[[point]]
name = "W"
metric = "electricity.active_power"
table = "holding"
address = 40083
type = "f32"
unit = "W"
scale_factor = "W_SF"

[[point]]
name = "W_SF"
table = "holding"
address = 40085
type = "i16"
"#
    );
    let w = one(&warnings(&text), "scale_factor");
    assert!(w.message.contains("point `W` is a f32"), "{}", w.message);
    assert_eq!(w.line, line_of(&text, "scale_factor ="));
}

#[test]
fn an_address_in_modicon_notation_is_flagged() {
    let text = format!(
        r#"{DEVICE}
[[point]]
name = "temperature"
metric = "flow.temperature"
table = "input"
address = 30001
type = "i16"
unit = "°C"
"#
    );
    let w = one(&warnings(&text), "Modicon");
    assert!(
        w.message.contains("write `register = 30001`"),
        "{}",
        w.message
    );
    assert_eq!(w.line, line_of(&text, "address = 30001"));
    // The same register written as `register` is what the lint asks for: no warning.
    let fixed = text.replace("table = \"input\"\naddress = 30001", "register = 30001");
    assert!(warnings(&fixed).is_empty());
    // SunSpec's absolute holding addresses (40000 and up) are not Modicon notation.
    let sunspec = text
        .replace("\"input\"", "\"holding\"")
        .replace("30001", "40071");
    assert!(warnings(&sunspec).is_empty());
}

#[test]
fn thirty_two_bit_points_all_at_odd_addresses_look_one_based() {
    let text = format!(
        r#"{DEVICE}
[[point]]
name = "v1"
metric = "electricity.voltage_l1"
table = "input"
address = 1
type = "f32"
unit = "V"

[[point]]
name = "v2"
metric = "electricity.voltage_l2"
table = "input"
address = 3
type = "f32"
unit = "V"
"#
    );
    let w = one(&warnings(&text), "1-based");
    assert_eq!(w.line, line_of(&text, "address = 1"));
    let fixed = text
        .replace("address = 1\n", "address = 0\n")
        .replace("address = 3", "address = 2");
    assert!(warnings(&fixed).is_empty());
    // Written as the manual's numbers, the same points are at 0 and 2: no warning.
    let numbered = text
        .replace("address = 1\n", "number = 1\n")
        .replace("address = 3", "number = 3");
    assert!(warnings(&numbered).is_empty());
}

#[test]
fn a_rating_that_is_not_a_power_is_refused() {
    let text = format!(
        "{DEVICE}rated_power = \"22 kWh\"\n[[point]]\nname = \"p\"\nmetric = \"electricity.active_power\"\ntable = \"input\"\naddress = 0\ntype = \"f32\"\nunit = \"kW\"\n"
    );
    let errors = check_str(Path::new("acme.toml"), &text).unwrap_err();
    assert!(errors[0].message.contains("rated_power"), "{errors:?}");
    assert_eq!(errors[0].line, line_of(&text, "rated_power"));
}

#[test]
fn the_library_warns_only_where_the_device_leaves_no_better_choice() {
    // Every shipped point says its unit and no address looks 1-based; what remains are float32
    // totals of devices that publish no integer total, and 32-bit counters of devices whose
    // manual has no wider register.
    let mut unexpected = Vec::new();
    for (file, checked) in check_path(&library_dir()).expect("library") {
        let checked = checked.unwrap_or_else(|e| panic!("{}: {e:?}", file.display()));
        for w in checked.warnings {
            let allowed =
                w.message.contains("float32 total") || w.message.contains("counter wraps");
            if !allowed {
                unexpected.push(w.to_string());
            }
        }
    }
    assert!(unexpected.is_empty(), "\n{}", unexpected.join("\n"));
}
