//! The wire format, pinned.
//!
//! Each file in `tests/fixtures/` is one message as the gateway or the sink would publish it,
//! pretty-printed, ending with one newline. The golden tests decode each file and print it
//! again with `serde_json::to_string_pretty`; the result must equal the file byte for byte, so
//! any change to the wire format (a renamed field, a new field, a different number format)
//! shows up as a fixture diff in review. The other tests pin the refusals the sink relies on:
//! every validation rule with its message, unknown schema versions, truncated, hostile and
//! non-finite input.

use std::path::Path;

use fivezero_model::wire::{
    self, AckWatermark, Batch, Epoch, EpochError, Gap, KpiBatch, KpiQuality, MAX_BATCH_READINGS,
    MAX_TS_SKEW_MS, Period, Presence, Quality, Reading, SCHEMA_VERSION, Status, StreamAck, Value,
    WireError,
};
use proptest::prelude::*;
use serde::Serialize;

/// The fixtures' "now": 2026-03-15T02:15:05Z, when the batch's first readings were taken.
const NOW: i64 = 1_773_540_905_000;

fn fixture(name: &str) -> String {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name);
    std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// Decodes a fixture, prints it pretty with a final newline, and compares with the file.
/// Also checks that the compact encoding decodes to the same value.
fn assert_golden<T>(name: &str, decode: fn(&[u8]) -> Result<T, WireError>) -> T
where
    T: wire::Message + PartialEq + std::fmt::Debug,
{
    let text = fixture(name);
    let message = decode(text.as_bytes()).unwrap_or_else(|e| panic!("{name}: {e}"));
    let printed = serde_json::to_string_pretty(&message).unwrap() + "\n";
    assert_eq!(printed, text, "{name} does not re-encode byte for byte");
    let compact = wire::encode(&message);
    assert_eq!(
        decode(&compact).unwrap(),
        message,
        "{name}: compact encoding differs"
    );
    message
}

fn batch() -> Batch {
    wire::decode_batch(fixture("batch.json").as_bytes()).unwrap()
}

fn kpi_batch() -> KpiBatch {
    wire::decode_kpi_batch(fixture("kpi_batch.json").as_bytes()).unwrap()
}

fn gap() -> Gap {
    wire::decode_gap(fixture("gap.json").as_bytes()).unwrap()
}

fn status() -> Status {
    wire::decode_status(fixture("status_online.json").as_bytes()).unwrap()
}

fn ack() -> AckWatermark {
    wire::decode_ack(fixture("ack.json").as_bytes()).unwrap()
}

/// The message of a refusal, which must name the field.
fn refusal(result: Result<(), WireError>) -> String {
    match result {
        Err(err @ WireError::Invalid { .. }) => err.to_string(),
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

/// Replaces one field of a fixture's JSON object, to build hostile payloads from good ones.
fn with_field(name: &str, field: &str, value: &str) -> Vec<u8> {
    let mut object: serde_json::Map<String, serde_json::Value> =
        serde_json::from_str(&fixture(name)).unwrap();
    object.insert(field.to_owned(), serde_json::from_str(value).unwrap());
    serde_json::to_vec(&object).unwrap()
}

type Decoder = fn(&[u8]) -> Result<(), WireError>;

/// Every decoder, with the fixture it accepts.
const DECODERS: [(&str, Decoder); 6] = [
    ("batch.json", |p| wire::decode_batch(p).map(drop)),
    ("kpi_batch.json", |p| wire::decode_kpi_batch(p).map(drop)),
    ("gap.json", |p| wire::decode_gap(p).map(drop)),
    ("status_online.json", |p| wire::decode_status(p).map(drop)),
    ("status_offline.json", |p| wire::decode_status(p).map(drop)),
    ("ack.json", |p| wire::decode_ack(p).map(drop)),
];

// ---------------------------------------------------------------------------------------------
// Golden fixtures
// ---------------------------------------------------------------------------------------------

#[test]
fn the_batch_fixture_reencodes_byte_for_byte() {
    assert_golden("batch.json", wire::decode_batch);
}

#[test]
fn the_kpi_batch_fixture_reencodes_byte_for_byte() {
    assert_golden("kpi_batch.json", wire::decode_kpi_batch);
}

#[test]
fn the_gap_fixture_reencodes_byte_for_byte() {
    assert_golden("gap.json", wire::decode_gap);
}

#[test]
fn the_online_status_fixture_reencodes_byte_for_byte() {
    assert_golden("status_online.json", wire::decode_status);
}

#[test]
fn the_offline_status_fixture_reencodes_byte_for_byte() {
    assert_golden("status_offline.json", wire::decode_status);
}

#[test]
fn the_ack_fixture_reencodes_byte_for_byte() {
    assert_golden("ack.json", wire::decode_ack);
}

#[test]
fn every_fixture_is_valid_at_its_own_time() {
    batch().validate(NOW).unwrap();
    kpi_batch().validate(NOW).unwrap();
    gap().validate(NOW).unwrap();
    status().validate(NOW).unwrap();
    wire::decode_status(fixture("status_offline.json").as_bytes())
        .unwrap()
        .validate(NOW)
        .unwrap();
    ack().validate(NOW).unwrap();
}

#[test]
fn the_offline_fixture_is_the_minimal_will() {
    let will = Status::offline_will(
        "qd-greensail-gw1",
        "qingdao-greensail",
        "0.1.0",
        1_773_496_800_000,
    );
    assert_eq!(
        wire::decode_status(fixture("status_offline.json").as_bytes()).unwrap(),
        will
    );
    assert_eq!(will.state, Presence::Offline);
}

#[test]
fn untagged_values_decode_to_the_variant_their_json_type_says() {
    let readings = batch().readings;
    assert_eq!(readings[0].value, Some(Value::Number(183_427.61)));
    assert_eq!(readings[2].value, Some(Value::Text("22115037".to_owned())));
    assert_eq!(readings[3].value, None);
    assert_eq!(readings[3].quality, Quality::Error);
    assert_eq!(
        readings[3].reason.as_deref(),
        Some("modbus: no reply within 1000 ms")
    );
    assert_eq!(readings[4].value, Some(Value::Number(4.0)));
    assert_eq!(readings[5].quality, Quality::Stale);
}

#[test]
fn the_fixtures_share_one_sequence_space_per_stream() {
    let (batch, kpi, status, ack) = (batch(), kpi_batch(), status(), ack());
    assert_eq!(batch.stream(), kpi.stream());
    assert_eq!(batch.last_seq(), Some(48_218));
    assert_eq!(
        kpi.first_seq, 48_219,
        "KPI records continue the readings' sequence"
    );
    let buffer = status.buffer.unwrap();
    assert_eq!(buffer.committed_seq, kpi.last_seq().unwrap());
    assert_eq!(ack.seq_for(batch.epoch), Some(buffer.sink_acked_seq));
    assert_eq!(ack.seq_for(Epoch(1)), None);
    let gap = gap();
    assert!(
        gap.count > MAX_BATCH_READINGS,
        "a gap may cover more than one batch's worth"
    );
    assert!(gap.last_seq().unwrap() <= buffer.sink_acked_seq);
}

#[test]
fn encode_is_compact_json_with_schema_first() {
    let bytes = wire::encode(&gap());
    let text = std::str::from_utf8(&bytes).unwrap();
    assert!(
        text.starts_with(r#"{"schema":1,"gateway":"qd-greensail-gw1","#),
        "{text}"
    );
    assert!(!text.contains('\n') && !text.contains(": "));
}

#[test]
fn an_absent_reason_and_empty_flags_are_left_out_of_the_json() {
    let text = String::from_utf8(wire::encode(&batch())).unwrap();
    assert_eq!(text.matches("\"reason\"").count(), 2);
    let text = String::from_utf8(wire::encode(&kpi_batch())).unwrap();
    assert_eq!(text.matches("\"flags\"").count(), 1);
}

// ---------------------------------------------------------------------------------------------
// Schema version and strict parsing
// ---------------------------------------------------------------------------------------------

#[test]
fn an_unknown_schema_version_is_refused_by_every_decoder() {
    for (name, decode) in DECODERS {
        for version in ["0", "2", "4294967296"] {
            let err = decode(&with_field(name, "schema", version)).unwrap_err();
            assert!(
                matches!(err, WireError::UnsupportedSchema { found } if found.to_string() == version),
                "{name}: {err:?}"
            );
            assert_eq!(err.field(), Some("schema"));
        }
    }
    let err = wire::decode_batch(&with_field("batch.json", "schema", "2")).unwrap_err();
    assert_eq!(
        err.to_string(),
        "unsupported schema version 2: this build reads version 1 only"
    );
}

#[test]
fn the_schema_is_checked_before_the_rest_of_the_message() {
    // A version-2 message may look nothing like version 1 and still gets the clear answer.
    let err = wire::decode_batch(br#"{"schema":2,"readings":"elsewhere","new_field":[1]}"#);
    assert!(matches!(
        err,
        Err(WireError::UnsupportedSchema { found: 2 })
    ));
}

#[test]
fn a_missing_or_mistyped_schema_is_refused() {
    let err = wire::decode_gap(br#"{"gateway":"gw"}"#).unwrap_err();
    assert!(err.to_string().contains("missing field `schema`"), "{err}");
    for schema in [r#""1""#, "1.0", "-1", "null"] {
        let err = wire::decode_gap(&with_field("gap.json", "schema", schema)).unwrap_err();
        assert!(matches!(err, WireError::Json(_)), "{schema}: {err:?}");
    }
}

#[test]
fn an_unknown_field_is_refused_not_dropped() {
    for (name, decode) in DECODERS {
        let err = decode(&with_field(name, "priority", "1")).unwrap_err();
        assert!(
            err.to_string().contains("unknown field `priority`"),
            "{name}: {err}"
        );
    }
    let nested = fixture("batch.json").replacen(
        r#""quality": "good""#,
        r#""quality": "good", "unit": "kWh""#,
        1,
    );
    let err = wire::decode_batch(nested.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("unknown field `unit`"), "{err}");
}

#[test]
fn a_repeated_field_is_refused() {
    let text =
        fixture("gap.json").replacen(r#""count": 12000"#, r#""count": 1, "count": 12000"#, 1);
    let err = wire::decode_gap(text.as_bytes()).unwrap_err();
    assert!(err.to_string().contains("duplicate field `count`"), "{err}");
}

#[test]
fn every_truncation_of_every_fixture_is_refused() {
    for (name, decode) in DECODERS {
        let text = fixture(name);
        let end = text.rfind('}').unwrap();
        for cut in 0..end {
            let result = decode(&text.as_bytes()[..cut]);
            assert!(
                matches!(result, Err(WireError::Json(_))),
                "{name} cut at {cut}: {result:?}"
            );
        }
    }
    let err = wire::decode_batch(&fixture("batch.json").as_bytes()[..200]).unwrap_err();
    assert!(
        err.to_string()
            .starts_with("malformed payload: EOF while parsing"),
        "{err}"
    );
}

#[test]
fn nesting_ten_thousand_deep_is_refused_without_panic() {
    let arrays = format!("{}{}", "[".repeat(10_000), "]".repeat(10_000));
    let objects = format!("{}1{}", r#"{"a":"#.repeat(10_000), "}".repeat(10_000));
    let unclosed = "[".repeat(10_000);
    for deep in [&arrays, &objects, &unclosed] {
        let payloads = [
            deep.clone(),
            format!(r#"{{"schema":1,"gateway":{deep}}}"#),
            format!(r#"{{"x":{deep},"schema":1}}"#),
            format!(r#"{{"schema":2,"x":{deep}}}"#),
            fixture("batch.json").replacen("183427.61", deep, 1),
            fixture("kpi_batch.json").replacen("0.5306", deep, 1),
        ];
        for payload in &payloads {
            for (name, decode) in DECODERS {
                assert!(
                    decode(payload.as_bytes()).is_err(),
                    "{name} accepted deep nesting"
                );
            }
        }
    }
    let err = wire::decode_batch(
        fixture("batch.json")
            .replacen("183427.61", &arrays, 1)
            .as_bytes(),
    )
    .unwrap_err();
    assert!(
        err.to_string().contains("recursion limit exceeded"),
        "{err}"
    );
}

#[test]
fn nan_and_infinity_cannot_be_written_in_json_input() {
    for bad in [
        "NaN",
        "Infinity",
        "-Infinity",
        "1e999",
        "-1e999",
        "nan",
        "inf",
    ] {
        let text = fixture("batch.json").replacen("183427.61", bad, 1);
        let result = wire::decode_batch(text.as_bytes());
        assert!(
            matches!(result, Err(WireError::Json(_))),
            "{bad}: {result:?}"
        );
        let text = fixture("kpi_batch.json").replacen("0.9896", bad, 1);
        assert!(wire::decode_kpi_batch(text.as_bytes()).is_err(), "{bad}");
    }
}

#[test]
fn an_epoch_that_is_not_a_hex_string_is_refused_with_a_clear_message() {
    let cases = [
        (r#""3F9C2A7E5B1D4C08""#, "got 'F' at byte 1"),
        (r#""3f9c2a7e5b1d4c0""#, "got 15 bytes"),
        (r#""03f9c2a7e5b1d4c08""#, "got 17 bytes"),
        (r#""3f9c2a7e5b1d4c0g""#, "got 'g' at byte 15"),
        (r#""0x9c2a7e5b1d4c08""#, "got 'x' at byte 1"),
        (r#""3f9c2a7e5b1d4c""#, "got 14 bytes"),
        (r#""3f9c2a7e5b1d4青""#, "got '青' at byte 13"),
        ("4583920174829", "invalid type: integer `4583920174829`"),
    ];
    for (epoch, expected) in cases {
        let err = wire::decode_batch(&with_field("batch.json", "epoch", epoch)).unwrap_err();
        assert!(err.to_string().contains(expected), "{epoch}: {err}");
    }
}

// ---------------------------------------------------------------------------------------------
// Epoch
// ---------------------------------------------------------------------------------------------

#[test]
fn epoch_parse_errors_say_what_an_epoch_looks_like() {
    assert_eq!(
        "ABCDEF0123456789".parse::<Epoch>().unwrap_err().to_string(),
        "an epoch is 16 lowercase hex digits, got 'A' at byte 0"
    );
    assert_eq!("".parse::<Epoch>(), Err(EpochError::WrongLength { len: 0 }));
    assert_eq!(
        " 3f9c2a7e5b1d4c0".parse::<Epoch>(),
        Err(EpochError::NotLowercaseHex { ch: ' ', at: 0 })
    );
    assert_eq!(
        "+3f9c2a7e5b1d4c0".parse::<Epoch>(),
        Err(EpochError::NotLowercaseHex { ch: '+', at: 0 })
    );
}

#[test]
fn the_extreme_epochs_round_trip() {
    for epoch in [Epoch(0), Epoch(1), Epoch(u64::MAX), Epoch((1 << 53) | 1)] {
        assert_eq!(epoch.to_string().parse::<Epoch>(), Ok(epoch));
        let json = serde_json::to_string(&epoch).unwrap();
        assert_eq!(json.len(), 18);
        assert_eq!(serde_json::from_str::<Epoch>(&json).unwrap(), epoch);
    }
    assert_eq!(
        serde_json::to_string(&Epoch(255)).unwrap(),
        r#""00000000000000ff""#
    );
}

proptest! {
    #[test]
    fn every_epoch_round_trips_through_its_hex_form(n in any::<u64>()) {
        let text = Epoch(n).to_string();
        prop_assert_eq!(text.len(), 16);
        prop_assert!(text.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)));
        prop_assert_eq!(text.parse::<Epoch>(), Ok(Epoch(n)));
        prop_assert_eq!(u64::from_str_radix(&text, 16), Ok(n));
    }
}

// ---------------------------------------------------------------------------------------------
// Validation refusals
// ---------------------------------------------------------------------------------------------

#[test]
fn a_batch_with_no_readings_is_refused() {
    let mut b = batch();
    b.readings.clear();
    b.count = 0;
    assert_eq!(
        refusal(b.validate(NOW)),
        "field `count` is 0; a message covers at least one sequence number"
    );
}

#[test]
fn a_batch_over_ten_thousand_readings_is_refused() {
    let mut b = batch();
    let one = b.readings[0].clone();
    b.readings = vec![one; 10_001];
    b.count = 10_001;
    assert_eq!(
        refusal(b.validate(NOW)),
        "field `count` is 10001, more than the 10000 a batch may carry"
    );
    b.readings.pop();
    b.count = MAX_BATCH_READINGS;
    b.validate(NOW).unwrap();
}

#[test]
fn a_count_that_disagrees_with_the_readings_is_refused() {
    let mut b = batch();
    b.count = 7;
    assert_eq!(
        refusal(b.validate(NOW)),
        "field `count` is 7 but `readings` holds 6"
    );
    b.count = 5;
    assert_eq!(
        refusal(b.validate(NOW)),
        "field `count` is 5 but `readings` holds 6"
    );
}

#[test]
fn sequence_zero_is_refused_because_sequences_start_at_one() {
    let mut b = batch();
    b.first_seq = 0;
    assert_eq!(
        refusal(b.validate(NOW)),
        "field `first_seq` is 0; sequence numbers start at 1"
    );
}

#[test]
fn a_sequence_range_that_overflows_u64_is_refused() {
    let mut b = batch();
    b.first_seq = u64::MAX - 2;
    assert_eq!(
        refusal(b.validate(NOW)),
        "field `first_seq` is 18446744073709551613; with count 6 the sequence overflows u64"
    );
    b.first_seq = u64::MAX - 6;
    b.validate(NOW).unwrap();
}

#[test]
fn non_finite_values_built_in_code_are_refused() {
    for (x, shown) in [
        (f64::NAN, "NaN"),
        (f64::INFINITY, "inf"),
        (f64::NEG_INFINITY, "-inf"),
    ] {
        let mut b = batch();
        b.readings[4].value = Some(Value::Number(x));
        assert_eq!(
            refusal(b.validate(NOW)),
            format!("field `readings[4].value` is {shown}, not a finite number")
        );
    }
}

#[test]
fn a_timestamp_more_than_ten_years_away_is_refused() {
    let mut b = batch();
    b.readings[1].ts = NOW + MAX_TS_SKEW_MS;
    b.validate(NOW).unwrap();
    b.readings[1].ts = NOW - MAX_TS_SKEW_MS;
    b.validate(NOW).unwrap();
    b.readings[1].ts = NOW + MAX_TS_SKEW_MS + 1;
    assert_eq!(
        refusal(b.validate(NOW)),
        "field `readings[1].ts` 2089160105001 is more than 10 years (315619200000 ms) away from now (1773540905000)"
    );
    // Seconds sent as milliseconds land in 1970.
    b.readings[1].ts = NOW / 1000;
    assert!(
        refusal(b.validate(NOW))
            .starts_with("field `readings[1].ts` 1773540905 is more than 10 years")
    );
    b.readings[1].ts = i64::MIN;
    assert!(refusal(b.validate(NOW)).starts_with("field `readings[1].ts`"));
}

#[test]
fn empty_names_are_refused() {
    let mut b = batch();
    b.gateway.clear();
    assert_eq!(refusal(b.validate(NOW)), r#"field `gateway` "" is empty"#);
    let mut b = batch();
    b.site.clear();
    assert_eq!(refusal(b.validate(NOW)), r#"field `site` "" is empty"#);
    let mut b = batch();
    b.readings[2].device.clear();
    assert_eq!(
        refusal(b.validate(NOW)),
        r#"field `readings[2].device` "" is empty"#
    );
    let mut b = batch();
    b.readings[5].metric.clear();
    assert_eq!(
        refusal(b.validate(NOW)),
        r#"field `readings[5].metric` "" is empty"#
    );
}

#[test]
fn names_with_wildcards_slashes_or_nul_are_refused() {
    let mut b = batch();
    b.gateway = "qd+gw1".to_owned();
    assert_eq!(
        refusal(b.validate(NOW)),
        r#"field `gateway` "qd+gw1" contains '+', which cannot appear in an MQTT topic level"#
    );
    let mut b = batch();
    b.site = "qingdao/greensail".to_owned();
    assert_eq!(
        refusal(b.validate(NOW)),
        r#"field `site` "qingdao/greensail" contains '/', which cannot appear in an MQTT topic level"#
    );
    let mut b = batch();
    b.readings[0].device = "meter#1".to_owned();
    assert_eq!(
        refusal(b.validate(NOW)),
        r##"field `readings[0].device` "meter#1" contains '#', which cannot appear in an MQTT topic level"##
    );
    let mut b = batch();
    b.readings[3].metric = "pv.ac_power\0".to_owned();
    assert_eq!(
        refusal(b.validate(NOW)),
        r#"field `readings[3].metric` "pv.ac_power\0" contains '\0', which cannot appear in an MQTT topic level"#
    );
}

#[test]
fn an_overlong_name_is_refused_and_cut_in_the_message() {
    let mut b = batch();
    b.readings[0].device = "d".repeat(5_000);
    let message = refusal(b.validate(NOW));
    assert!(
        message.ends_with("\"… is 5000 bytes long, more than the 64 allowed"),
        "{message}"
    );
    assert!(message.len() < 200);
}

#[test]
fn a_schema_other_than_one_is_refused_when_built_in_code() {
    let mut b = batch();
    b.schema = 2;
    assert_eq!(
        refusal(b.validate(NOW)),
        "field `schema` is 2; this build writes version 1"
    );
    assert_eq!(SCHEMA_VERSION, 1);
}

#[test]
fn invalid_errors_name_their_field() {
    let mut b = batch();
    b.readings[3].ts = 0;
    assert_eq!(b.validate(NOW).unwrap_err().field(), Some("readings[3].ts"));
}

#[test]
fn kpi_coverage_outside_zero_to_one_is_refused() {
    for (coverage, shown) in [(1.5, "1.5"), (-0.1, "-0.1"), (f64::NAN, "NaN")] {
        let mut k = kpi_batch();
        k.records[1].coverage = coverage;
        assert_eq!(
            refusal(k.validate(NOW)),
            format!("field `records[1].coverage` is {shown}, outside 0..=1")
        );
    }
    let mut k = kpi_batch();
    k.records[1].coverage = 0.0;
    k.validate(NOW).unwrap();
}

#[test]
fn non_finite_kpi_numbers_are_refused() {
    let mut k = kpi_batch();
    k.records[0].numerator = Some(f64::INFINITY);
    assert_eq!(
        refusal(k.validate(NOW)),
        "field `records[0].numerator` is inf, not a finite number"
    );
    let mut k = kpi_batch();
    k.records[1].denominator = Some(f64::NAN);
    assert_eq!(
        refusal(k.validate(NOW)),
        "field `records[1].denominator` is NaN, not a finite number"
    );
    let mut k = kpi_batch();
    k.records[0].factors[0].value = f64::NEG_INFINITY;
    assert_eq!(
        refusal(k.validate(NOW)),
        "field `records[0].factors[0].value` is -inf, not a finite number"
    );
}

#[test]
fn a_kpi_computed_as_ok_must_have_a_value() {
    let mut k = kpi_batch();
    k.records[0].value = None;
    assert_eq!(
        refusal(k.validate(NOW)),
        "field `records[0].value` is null but quality says the KPI was computed"
    );
    k.records[0].quality = KpiQuality::InsufficientData;
    k.validate(NOW).unwrap();
}

#[test]
fn a_kpi_window_must_last_as_long_as_its_period() {
    let mut k = kpi_batch();
    k.records[0].window.end = k.records[0].window.start;
    assert_eq!(
        refusal(k.validate(NOW)),
        "field `records[0].window.end` is 0 ms after window.start; a 1d window lasts 79200000 to 93600000 ms"
    );
    let mut k = kpi_batch();
    k.records[1].window.period = Period::Hour;
    assert_eq!(
        refusal(k.validate(NOW)),
        "field `records[1].window.end` is 86400000 ms after window.start; a 1h window lasts 3600000 ms"
    );
    // A 23-hour local day (spring forward) is fine.
    let mut k = kpi_batch();
    k.records[0].window.end -= 3_600_000;
    k.validate(NOW).unwrap();
}

#[test]
fn a_kpi_batch_with_a_wrong_count_or_empty_names_is_refused() {
    let mut k = kpi_batch();
    k.count = 3;
    assert_eq!(
        refusal(k.validate(NOW)),
        "field `count` is 3 but `records` holds 2"
    );
    let mut k = kpi_batch();
    k.records[1].kpi.clear();
    assert_eq!(
        refusal(k.validate(NOW)),
        r#"field `records[1].kpi` "" is empty"#
    );
    let mut k = kpi_batch();
    k.records[1].window.tz.clear();
    assert_eq!(
        refusal(k.validate(NOW)),
        "field `records[1].window.tz` is empty"
    );
    let mut k = kpi_batch();
    k.records[1].flags.push(String::new());
    assert_eq!(
        refusal(k.validate(NOW)),
        "field `records[1].flags[1]` is empty"
    );
    let mut k = kpi_batch();
    k.records[1].window.start = NOW + MAX_TS_SKEW_MS + 1;
    assert!(refusal(k.validate(NOW)).starts_with("field `records[1].window.start`"));
}

#[test]
fn a_gap_must_cover_a_valid_range_at_a_sane_time() {
    let mut g = gap();
    g.count = 0;
    assert_eq!(
        refusal(g.validate(NOW)),
        "field `count` is 0; a message covers at least one sequence number"
    );
    let mut g = gap();
    g.first_seq = 0;
    assert_eq!(
        refusal(g.validate(NOW)),
        "field `first_seq` is 0; sequence numbers start at 1"
    );
    let mut g = gap();
    g.first_seq = u64::MAX;
    assert!(refusal(g.validate(NOW)).ends_with("with count 12000 the sequence overflows u64"));
    let mut g = gap();
    g.declared_at = -1;
    assert!(refusal(g.validate(NOW)).starts_with("field `declared_at` -1 is more than 10 years"));
    let mut g = gap();
    g.count = u32::MAX;
    g.validate(NOW).unwrap();
}

#[test]
fn a_status_or_ack_from_a_bad_clock_or_id_is_refused() {
    let mut s = status();
    s.ts = 0;
    assert!(refusal(s.validate(NOW)).starts_with("field `ts` 0 is more than 10 years"));
    let mut s = status();
    s.buffer.as_mut().unwrap().oldest_unsent_ts = Some(i64::MAX);
    assert!(refusal(s.validate(NOW)).starts_with("field `buffer.oldest_unsent_ts`"));
    let mut a = ack();
    a.gateway = "gw/1".to_owned();
    assert!(refusal(a.validate(NOW)).starts_with(r#"field `gateway` "gw/1" contains '/'"#));
}

#[test]
fn an_ack_naming_one_epoch_twice_is_refused() {
    let mut a = ack();
    a.streams.push(StreamAck {
        epoch: a.streams[0].epoch,
        seq: 5,
    });
    assert_eq!(
        refusal(a.validate(NOW)),
        "field `streams[2].epoch` repeats epoch a17e0c44d2b98f51 of streams[0]"
    );
}

// ---------------------------------------------------------------------------------------------
// Round trips and robustness
// ---------------------------------------------------------------------------------------------

fn name() -> impl Strategy<Value = String> {
    "[a-z0-9][a-z0-9._-]{0,30}"
}

/// Finite numbers with up to 15 significant digits and up to 12 decimals: every measured or
/// computed value a meter can state, from 1e-12 to 1e15 in magnitude.
fn decimal() -> impl Strategy<Value = f64> {
    (-999_999_999_999_999_i64..=999_999_999_999_999, 0..=12_i32)
        .prop_map(|(mantissa, decimals)| mantissa as f64 / 10_f64.powi(decimals))
}

/// Any finite `f64`: normal, subnormal, zero, either sign.
fn any_finite() -> impl Strategy<Value = f64> {
    use proptest::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO
}

fn reading(number: BoxedStrategy<f64>) -> impl Strategy<Value = Reading> {
    let value = prop_oneof![
        Just(None),
        number.prop_map(|x| Some(Value::Number(x))),
        any::<String>().prop_map(|s| Some(Value::Text(s))),
    ];
    let quality = prop_oneof![
        Just(Quality::Good),
        Just(Quality::Stale),
        Just(Quality::Error)
    ];
    (
        any::<i64>(),
        name(),
        name(),
        value,
        quality,
        proptest::option::of(any::<String>()),
    )
        .prop_map(|(ts, device, metric, value, quality, reason)| Reading {
            ts,
            device,
            metric,
            value,
            quality,
            reason,
        })
}

fn arb_batch(number: BoxedStrategy<f64>) -> impl Strategy<Value = Batch> {
    (
        name(),
        name(),
        any::<u64>(),
        any::<u64>(),
        proptest::collection::vec(reading(number), 1..20),
    )
        .prop_map(|(gateway, site, epoch, first_seq, readings)| Batch {
            schema: SCHEMA_VERSION,
            gateway,
            site,
            epoch: Epoch(epoch),
            first_seq,
            count: u32::try_from(readings.len()).unwrap(),
            readings,
        })
}

/// Compares through the bits of every float, so `-0.0` and `0.0` differ and a value one unit in
/// the last place off is caught.
fn same_bits<T: Serialize>(a: &T, b: &T) -> bool {
    fn bits(v: serde_json::Value) -> serde_json::Value {
        match v {
            serde_json::Value::Number(n) if n.is_f64() => {
                serde_json::Value::String(format!("{:016x}", n.as_f64().unwrap().to_bits()))
            }
            serde_json::Value::Array(a) => a.into_iter().map(bits).collect(),
            serde_json::Value::Object(o) => o.into_iter().map(|(k, v)| (k, bits(v))).collect(),
            other => other,
        }
    }
    bits(serde_json::to_value(a).unwrap()) == bits(serde_json::to_value(b).unwrap())
}

proptest! {
    #[test]
    fn a_batch_of_decimal_values_survives_encode_and_decode(batch in arb_batch(decimal().boxed())) {
        let decoded = wire::decode_batch(&wire::encode(&batch)).unwrap();
        prop_assert!(same_bits(&decoded, &batch), "{:?}\n!=\n{:?}", decoded, batch);
        prop_assert_eq!(decoded, batch);
    }

    #[test]
    fn decoding_a_damaged_fixture_never_panics(
        index in 0..6_usize,
        edits in proptest::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..8),
    ) {
        let (name, decode) = DECODERS[index];
        let mut bytes = fixture(name).into_bytes();
        for (at, byte) in edits {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        let _ = decode(&bytes);
    }

    #[test]
    fn decoding_arbitrary_bytes_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for (_, decode) in DECODERS {
            let _ = decode(&bytes);
        }
    }
}

proptest! {
    /// Relies on serde_json's `float_roundtrip` feature (on in `model/Cargo.toml`): without
    /// it, about one full-precision float in ten parses one unit in the last place off (for
    /// example `985690694.6328695` reads back as `985690694.6328696`).
    #[test]
    fn a_batch_of_any_finite_values_survives_encode_and_decode_bit_for_bit(
        batch in arb_batch(any_finite().boxed()),
    ) {
        let decoded = wire::decode_batch(&wire::encode(&batch)).unwrap();
        prop_assert!(same_bits(&decoded, &batch), "{:?}\n!=\n{:?}", decoded, batch);
    }
}
