//! Every shipped profile decodes its recorded register words to the expected values.
//!
//! `fixtures/<profile id>.toml` holds register words (`[[words]]`, each marked with where it
//! comes from) and, under `[expect]`, the value every reading point must decode to in its
//! metric's canonical unit: a number (compared within 1e-6 relative, the precision of float32),
//! a string for text points, or the string "not_available" for a sentinel. Every reading point
//! of a profile must have an expectation, so a new point cannot ship untested.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use fivezero_profiles::codec::{Decoded, RegisterImage, decode};
use fivezero_profiles::{Profile, Table, library_dir, load_path};
use serde::Deserialize;

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Fixture {
    #[serde(default)]
    words: Vec<Words>,
    #[serde(default)]
    bits: Vec<Bits>,
    expect: BTreeMap<String, toml::Value>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Words {
    table: String,
    address: u16,
    values: Vec<u16>,
    origin: Origin,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Bits {
    table: String,
    address: u16,
    values: Vec<bool>,
    #[expect(
        dead_code,
        reason = "required in the file so a reader knows what the bits prove"
    )]
    origin: Origin,
}

/// Where register words come from, so a reader knows what a fixture proves.
#[derive(Deserialize, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
enum Origin {
    /// Recorded from a real device or a published register dump.
    Captured,
    /// Given as an example in the project's register reference or the vendor manual.
    Reference,
    /// Made by encoding a documented or plausible example value.
    Encoded,
}

fn table(name: &str) -> Table {
    match name {
        "holding" => Table::Holding,
        "input" => Table::Input,
        "coil" => Table::Coil,
        "discrete" => Table::Discrete,
        other => panic!("unknown table {other:?} in a fixture"),
    }
}

fn fixture_path(profile: &Profile) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fixtures")
        .join(format!("{}.toml", profile.id))
}

fn check(profile: &Profile) -> Vec<String> {
    let path = fixture_path(profile);
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "{}: every shipped profile needs a fixture: {e}",
            path.display()
        )
    });
    let fixture: Fixture =
        toml::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut image = RegisterImage::new();
    for w in &fixture.words {
        image.put_registers(table(&w.table), w.address, &w.values);
    }
    for b in &fixture.bits {
        image.put_bits(table(&b.table), b.address, &b.values);
    }
    let mut problems = Vec::new();
    for index in profile.reading_points() {
        let point = &profile.points[index];
        let Some(expected) = fixture.expect.get(&point.name) else {
            problems.push(format!("point `{}` has no expected value", point.name));
            continue;
        };
        let got = match decode(profile, index, &image) {
            Ok(d) => d,
            Err(e) => {
                problems.push(format!("point `{}`: {e}", point.name));
                continue;
            }
        };
        let ok = match (expected, &got) {
            (toml::Value::Float(_) | toml::Value::Integer(_), Decoded::Number(v)) => {
                let want = expected
                    .as_float()
                    .unwrap_or_else(|| expected.as_integer().unwrap() as f64);
                (v - want).abs() <= 1e-6 * want.abs().max(1e-9)
            }
            (toml::Value::String(s), Decoded::NotAvailable(_)) => s == "not_available",
            (toml::Value::String(s), Decoded::Text(t)) => s == t,
            _ => false,
        };
        if !ok {
            problems.push(format!(
                "point `{}`: expected {expected}, decoded {got:?}",
                point.name
            ));
        }
    }
    for name in fixture.expect.keys() {
        if profile.point(name).is_none_or(|p| p.metric.is_none()) {
            problems.push(format!(
                "expectation for `{name}`, which is not a reading point of the profile"
            ));
        }
    }
    problems
}

#[test]
fn every_shipped_profile_decodes_its_fixture_words_to_the_expected_values() {
    let loaded = load_path(&library_dir()).expect("profile library");
    assert!(!loaded.is_empty());
    let mut failures = Vec::new();
    for (path, result) in loaded {
        let profile = result.unwrap_or_else(|_| panic!("{} does not load", path.display()));
        for problem in check(&profile) {
            failures.push(format!("{}: {problem}", fixture_path(&profile).display()));
        }
    }
    assert!(failures.is_empty(), "\n{}", failures.join("\n"));
}

#[test]
fn the_sdm630_fixture_includes_the_reference_capture() {
    let text = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("fixtures/eastron-sdm630.toml"),
    )
    .unwrap();
    let fixture: Fixture = toml::from_str(&text).unwrap();
    let import = fixture
        .words
        .iter()
        .find(|w| w.address == 0x48)
        .expect("import energy words");
    assert_eq!(import.values, [0x447A, 0x0000]);
    assert_eq!(import.origin, Origin::Reference);
}
