//! Register codec: golden values from `reference/registers.md` §8, round trips and robustness.

use std::collections::{BTreeMap, HashMap};

use fivezero_model::Kind;
use fivezero_model::units::Conversion;
use fivezero_profiles::codec::{
    self, DecodeError, Decoded, EncodeError, NotAvailable, RegisterImage, decode, encode,
    encode_not_available, encode_raw, encode_text, raw, raw_to_words, words_to_raw,
};
use fivezero_profiles::{Category, DataType, Point, Profile, ReadLimits, Table, WordOrder};
use proptest::prelude::*;

// ---------------------------------------------------------------------------------------------
// Builders
// ---------------------------------------------------------------------------------------------

/// A point under construction; `sf` names the scale-factor point, resolved by [`profile`].
struct Pb {
    point: Point,
    sf: Option<&'static str>,
}

fn pt(name: &str, table: Table, address: u16, data_type: DataType) -> Pb {
    Pb {
        point: Point {
            name: name.to_owned(),
            metric: None,
            table,
            address,
            data_type,
            order: WordOrder::Abcd,
            scale: 1.0,
            offset: 0.0,
            scale_factor: None,
            unit: String::new(),
            conversion: Conversion::IDENTITY,
            kind: Kind::Gauge,
            labels: BTreeMap::new(),
            flags: BTreeMap::new(),
            not_available: Vec::new(),
            interval: None,
            doc_ref: None,
        },
        sf: None,
    }
}

fn holding(name: &str, address: u16, data_type: DataType) -> Pb {
    pt(name, Table::Holding, address, data_type)
}

impl Pb {
    fn order(mut self, order: WordOrder) -> Self {
        self.point.order = order;
        self
    }
    fn scale(mut self, scale: f64) -> Self {
        self.point.scale = scale;
        self
    }
    fn offset(mut self, offset: f64) -> Self {
        self.point.offset = offset;
        self
    }
    fn conversion(mut self, scale: f64, offset: f64) -> Self {
        self.point.conversion = Conversion { scale, offset };
        self
    }
    fn sf(mut self, name: &'static str) -> Self {
        self.sf = Some(name);
        self
    }
    fn na(mut self, sentinels: &[u64]) -> Self {
        self.point.not_available = sentinels.to_vec();
        self
    }
}

fn profile(points: Vec<Pb>) -> Profile {
    let names: Vec<String> = points.iter().map(|p| p.point.name.clone()).collect();
    let points = points
        .into_iter()
        .map(|mut pb| {
            pb.point.scale_factor = pb.sf.map(|sf| {
                names
                    .iter()
                    .position(|n| n == sf)
                    .unwrap_or_else(|| panic!("no scale-factor point {sf}"))
            });
            pb.point
        })
        .collect();
    Profile {
        id: "test".to_owned(),
        manufacturer: "test".to_owned(),
        model: "test".to_owned(),
        category: Category::Other,
        source: "tests/codec.rs".to_owned(),
        notes: None,
        rated_power_kw: None,
        limits: ReadLimits::default(),
        points,
    }
}

fn index(profile: &Profile, name: &str) -> usize {
    profile
        .points
        .iter()
        .position(|p| p.name == name)
        .unwrap_or_else(|| panic!("no point {name}"))
}

/// A one-point profile with the given words at holding 0, decoded.
fn decode_one(point: Pb, words: &[u16]) -> Decoded {
    let profile = profile(vec![point]);
    let mut image = RegisterImage::new();
    image.put_registers(Table::Holding, 0, words);
    decode(&profile, 0, &image).expect("registers are present")
}

fn number(d: &Decoded) -> f64 {
    match d {
        Decoded::Number(x) => *x,
        other => panic!("expected a number, got {other:?}"),
    }
}

fn assert_close(actual: f64, expected: f64, tolerance: f64) {
    assert!(
        (actual - expected).abs() <= tolerance,
        "{actual} is not within {tolerance} of {expected}"
    );
}

const ORDERS: [WordOrder; 4] = [
    WordOrder::Abcd,
    WordOrder::Cdab,
    WordOrder::Badc,
    WordOrder::Dcba,
];

// ---------------------------------------------------------------------------------------------
// Golden values (registers.md §8)
// ---------------------------------------------------------------------------------------------

#[test]
fn tuf_2000m_temperature_decodes_only_as_low_word_first() {
    let cdab = decode_one(
        holding("T1", 0, DataType::F32).order(WordOrder::Cdab),
        &[0x806B, 0x4212],
    );
    assert_close(number(&cdab), 36.6254, 1e-4);
    let abcd = decode_one(holding("T1", 0, DataType::F32), &[0x806B, 0x4212]);
    assert!(number(&abcd).abs() < 1e-37, "ABCD gives a tiny number");
}

#[test]
fn two_flow_mag_11_negative_flow_decodes_big_endian() {
    let d = decode_one(holding("Q", 0, DataType::F32), &[0xC148, 0x0000]);
    assert_eq!(number(&d), -12.5);
}

#[test]
fn libmodbus_doc_example_decodes_in_all_four_orders() {
    // 916.540649 is 0x4465229A: bytes A=44 B=65 C=22 D=9A.
    let wire: [(WordOrder, [u16; 2]); 4] = [
        (WordOrder::Abcd, [0x4465, 0x229A]),
        (WordOrder::Cdab, [0x229A, 0x4465]),
        (WordOrder::Badc, [0x6544, 0x9A22]),
        (WordOrder::Dcba, [0x9A22, 0x6544]),
    ];
    for (order, words) in wire {
        let d = decode_one(holding("x", 0, DataType::F32).order(order), &words);
        assert_close(number(&d), 916.540_649, 1e-6);
        assert_eq!(words_to_raw(&words, order), 0x4465_229A, "{order:?}");
    }
}

#[test]
fn froling_boiler_temperature_and_residual_oxygen_scale_by_a_half_and_a_tenth() {
    let profile = profile(vec![
        pt("boiler", Table::Input, 0, DataType::I16).scale(0.5),
        pt("o2", Table::Input, 3, DataType::I16).scale(0.1),
    ]);
    let mut image = RegisterImage::new();
    image.put_registers(Table::Input, 0, &[0x0091]);
    image.put_registers(Table::Input, 3, &[0x0041]);
    assert_close(number(&decode(&profile, 0, &image).unwrap()), 72.5, 1e-12);
    assert_close(number(&decode(&profile, 1, &image).unwrap()), 6.5, 1e-12);
}

#[test]
fn keba_total_energy_in_tenths_of_a_watt_hour_converts_to_kilowatt_hours() {
    let d = decode_one(
        holding("E", 0, DataType::U32)
            .scale(0.1)
            .conversion(0.001, 0.0),
        &[0x0001, 0x86A0],
    );
    assert_close(number(&d), 10.0, 1e-12);
}

#[test]
fn sdm630_total_import_energy_decodes_to_one_thousand() {
    let profile = profile(vec![pt("imp", Table::Input, 72, DataType::F32)]);
    let mut image = RegisterImage::new();
    image.put_registers(Table::Input, 72, &[0x447A, 0x0000]);
    assert_eq!(decode(&profile, 0, &image), Ok(Decoded::Number(1000.0)));
}

/// SolarEdge SE25K model 103, the 50 registers after (ID, L), at 40071.
const SE25K: [u16; 50] = [
    0, 0, 0, 0, 65534, 3965, 3953, 3963, 2288, 2284, 2285, 65535, 0, 0, 4998, 65534, 0, 0, 0, 0, 0,
    0, 60, 8980, 0, 0, 0, 16, 65535, 0, 0, 32768, 3927, 32768, 32768, 65534, 2, 0, 65535, 65535,
    65535, 65535, 0, 0, 65535, 65535, 65535, 65535, 0, 0,
];

fn model_103() -> Profile {
    use DataType::{I16, U16, U32};
    let sf = |name, address| holding(name, address, I16).na(&[0x8000]);
    profile(vec![
        holding("A", 40071, U16).sf("A_SF").na(&[0xFFFF]),
        holding("AphA", 40072, U16).sf("A_SF").na(&[0xFFFF]),
        sf("A_SF", 40075),
        holding("PPVphAB", 40076, U16).sf("V_SF").na(&[0xFFFF]),
        holding("PhVphA", 40079, U16).sf("V_SF").na(&[0xFFFF]),
        sf("V_SF", 40082),
        holding("W", 40083, I16).sf("W_SF").na(&[0x8000]),
        sf("W_SF", 40084),
        holding("Hz", 40085, U16).sf("Hz_SF").na(&[0xFFFF]),
        sf("Hz_SF", 40086),
        holding("WH", 40093, U32).sf("WH_SF").na(&[0]),
        sf("WH_SF", 40095),
        holding("DCV", 40098, U16).sf("DCV_SF").na(&[0xFFFF]),
        sf("DCV_SF", 40099),
        holding("TmpCab", 40102, I16).sf("Tmp_SF").na(&[0x8000]),
        holding("TmpSnk", 40103, I16).sf("Tmp_SF").na(&[0x8000]),
        sf("Tmp_SF", 40106),
        holding("St", 40107, U16).na(&[0xFFFF]),
        holding("Evt1", 40109, U32).na(&[0xFFFF_FFFF]),
        holding("EvtVnd1", 40113, U32).na(&[0xFFFF_FFFF]),
    ])
}

fn se25k_image() -> RegisterImage {
    let mut image = RegisterImage::new();
    image.put_registers(Table::Holding, 40069, &[103, 50]);
    image.put_registers(Table::Holding, 40071, &SE25K);
    image
}

#[test]
fn solaredge_se25k_model_103_dump_decodes_with_scale_factors_and_sentinels() {
    let profile = model_103();
    let image = se25k_image();
    let get = |name: &str| decode(&profile, index(&profile, name), &image).unwrap();

    assert_eq!(get("A"), Decoded::Number(0.0));
    assert_eq!(get("PPVphAB"), Decoded::Number(396.5));
    assert_eq!(get("PhVphA"), Decoded::Number(228.8));
    assert_eq!(get("W"), Decoded::Number(0.0));
    assert_eq!(get("Hz"), Decoded::Number(49.98));
    assert_eq!(get("WH"), Decoded::Number(3_941_140.0));
    assert_eq!(get("DCV"), Decoded::Number(1.6));
    assert_eq!(
        get("TmpCab"),
        Decoded::NotAvailable(NotAvailable::Sentinel(0x8000))
    );
    assert_eq!(get("TmpSnk"), Decoded::Number(39.27));
    assert_eq!(get("St"), Decoded::Number(2.0));
    assert_eq!(
        get("Evt1"),
        Decoded::NotAvailable(NotAvailable::Sentinel(0xFFFF_FFFF))
    );
    assert_eq!(get("EvtVnd1"), Decoded::Number(0.0));

    let sf = index(&profile, "A_SF");
    assert_eq!(raw(&profile, sf, &image), Ok(0xFFFE));
    assert_eq!(
        raw(&profile, index(&profile, "WH"), &image),
        Ok(60 * 65_536 + 8980)
    );
}

#[test]
fn a_scale_factor_of_0x8000_makes_the_value_not_available() {
    let profile = profile(vec![
        holding("W", 0, DataType::I16).sf("W_SF"),
        holding("W_SF", 1, DataType::I16),
    ]);
    let mut image = RegisterImage::new();
    image.put_registers(Table::Holding, 0, &[1234, 0x8000]);
    assert_eq!(
        decode(&profile, 0, &image),
        Ok(Decoded::NotAvailable(NotAvailable::ScaleFactorNotAvailable))
    );
    assert!(matches!(
        encode(&profile, 0, 5.0, &mut image),
        Err(EncodeError::ScaleFactorUnusable { point: 0, .. })
    ));
}

#[test]
fn a_scale_factor_outside_minus_ten_to_ten_is_reported_with_its_value() {
    let profile = profile(vec![
        holding("W", 0, DataType::I16).sf("W_SF"),
        holding("W_SF", 1, DataType::I16),
    ]);
    let mut image = RegisterImage::new();
    image.put_registers(Table::Holding, 0, &[1234, 11]);
    assert_eq!(
        decode(&profile, 0, &image),
        Ok(Decoded::NotAvailable(NotAvailable::ScaleFactorOutOfRange(
            11
        )))
    );
    image.put_registers(Table::Holding, 1, &[(-10i16) as u16]);
    assert_close(
        number(&decode(&profile, 0, &image).unwrap()),
        1234e-10,
        1e-20,
    );
}

// ---------------------------------------------------------------------------------------------
// Missing registers, sentinels, bits, text
// ---------------------------------------------------------------------------------------------

#[test]
fn a_missing_register_is_an_error_not_a_number() {
    let profile = profile(vec![
        holding("E", 10, DataType::U32),
        holding("W", 20, DataType::I16).sf("W_SF"),
        holding("W_SF", 21, DataType::I16),
        pt("on", Table::Coil, 5, DataType::Bool),
    ]);
    let mut image = RegisterImage::new();
    image.put_registers(Table::Holding, 10, &[1]); // half of E
    image.put_registers(Table::Holding, 20, &[7]); // W without its SF
    image.put_registers(Table::Input, 21, &[0]); // wrong table
    assert_eq!(
        decode(&profile, 0, &image),
        Err(DecodeError::Missing {
            table: Table::Holding,
            address: 10,
            count: 2
        })
    );
    assert_eq!(
        raw(&profile, 0, &image),
        Err(DecodeError::Missing {
            table: Table::Holding,
            address: 10,
            count: 2
        })
    );
    assert_eq!(
        decode(&profile, 1, &image),
        Err(DecodeError::Missing {
            table: Table::Holding,
            address: 21,
            count: 1
        })
    );
    assert_eq!(
        decode(&profile, 3, &image),
        Err(DecodeError::Missing {
            table: Table::Coil,
            address: 5,
            count: 1
        })
    );
    assert_eq!(
        decode(&profile, 9, &image),
        Err(DecodeError::NoSuchPoint { point: 9 })
    );
    assert!(matches!(
        encode(&profile, 1, 7.0, &mut image),
        Err(EncodeError::ScaleFactorMissing {
            point: 1,
            scale_factor: 2
        })
    ));
}

#[test]
fn a_cleared_image_has_no_registers_left() {
    let mut image = RegisterImage::new();
    image.put_registers(Table::Holding, 0, &[1, 2, 3]);
    image.put_bits(Table::Coil, 0, &[true]);
    assert!(!image.is_empty());
    image.clear();
    assert!(image.is_empty());
    assert_eq!(image.registers(Table::Holding, 0, 1), None);
    assert_eq!(image.bit(Table::Coil, 0), None);
}

#[test]
fn sentinels_compare_masked_to_the_type_width() {
    // A sentinel written sign-extended (-32768 as u64) still matches the 16-bit 0x8000.
    let d = decode_one(
        holding("t", 0, DataType::I16).na(&[(-32768i64) as u64]),
        &[0x8000],
    );
    assert_eq!(d, Decoded::NotAvailable(NotAvailable::Sentinel(0x8000)));
}

#[test]
fn float_nan_and_infinity_are_not_available() {
    for words in [[0x7FC0, 0x0000], [0x7F80, 0x0000], [0xFF80, 0x0000]] {
        let d = decode_one(holding("f", 0, DataType::F32), &words);
        assert_eq!(d, Decoded::NotAvailable(NotAvailable::NotANumber));
    }
    let d = decode_one(holding("f", 0, DataType::F64), &[0x7FF0, 0, 0, 1]);
    assert_eq!(d, Decoded::NotAvailable(NotAvailable::NotANumber));
}

#[test]
fn a_bit_point_reads_its_bit_after_the_byte_swap() {
    // Register 0x0102 (wire bytes 01 02): bits 1 and 8 are set.
    let abcd = |n| number(&decode_one(holding("b", 0, DataType::Bit(n)), &[0x0102]));
    assert_eq!((abcd(1), abcd(8), abcd(0), abcd(9)), (1.0, 1.0, 0.0, 0.0));
    let badc = |n| {
        number(&decode_one(
            holding("b", 0, DataType::Bit(n)).order(WordOrder::Badc),
            &[0x0102],
        ))
    };
    // Swapped: 0x0201.
    assert_eq!((badc(0), badc(9), badc(1), badc(8)), (1.0, 1.0, 0.0, 0.0));
}

#[test]
fn encoding_a_bit_changes_only_that_bit() {
    let profile = profile(vec![
        holding("b3", 0, DataType::Bit(3)),
        holding("b0_swapped", 0, DataType::Bit(0)).order(WordOrder::Dcba),
        holding("b0", 1, DataType::Bit(0)),
    ]);
    let mut image = RegisterImage::new();
    image.put_registers(Table::Holding, 0, &[0x00F0]);
    encode(&profile, 0, 1.0, &mut image).unwrap();
    assert_eq!(image.registers(Table::Holding, 0, 1), Some(&[0x00F8][..]));
    encode(&profile, 0, 0.0, &mut image).unwrap();
    assert_eq!(image.registers(Table::Holding, 0, 1), Some(&[0x00F0][..]));
    // Bit 0 of a byte-swapped register is the lowest bit of the first wire byte.
    encode(&profile, 1, 1.0, &mut image).unwrap();
    assert_eq!(image.registers(Table::Holding, 0, 1), Some(&[0x01F0][..]));
    // An absent register counts as 0.
    encode(&profile, 2, 1.0, &mut image).unwrap();
    assert_eq!(image.registers(Table::Holding, 1, 1), Some(&[0x0001][..]));
    assert!(matches!(
        encode(&profile, 2, 0.5, &mut image),
        Err(EncodeError::OutOfRange { point: 2, .. })
    ));
}

#[test]
fn coils_and_discrete_inputs_decode_and_encode_as_zero_or_one() {
    let profile = profile(vec![
        pt("run", Table::Coil, 3, DataType::Bool),
        pt("alarm", Table::Discrete, 3, DataType::Bool),
    ]);
    let mut image = RegisterImage::new();
    image.put_bits(Table::Coil, 0, &[false, false, false, true]);
    image.put_bits(Table::Discrete, 3, &[false]);
    assert_eq!(decode(&profile, 0, &image), Ok(Decoded::Number(1.0)));
    assert_eq!(decode(&profile, 1, &image), Ok(Decoded::Number(0.0)));
    encode(&profile, 1, 1.0, &mut image).unwrap();
    assert_eq!(image.bit(Table::Discrete, 3), Some(true));
    assert_eq!(image.bit(Table::Coil, 3), Some(true));
    assert_eq!(raw(&profile, 1, &image), Ok(1));
}

#[test]
fn ascii_text_stops_at_nul_trims_spaces_and_replaces_non_ascii() {
    let text =
        |order, words: &[u16]| decode_one(holding("s", 0, DataType::Ascii(4)).order(order), words);
    assert_eq!(
        text(WordOrder::Abcd, &[0x5345, 0x3235, 0x4B20, 0x0041]),
        Decoded::Text("SE25K".to_owned())
    );
    // Byte-swapped registers (Phoenix: "strings are LSB first").
    assert_eq!(
        text(WordOrder::Dcba, &[0x4553, 0x3532, 0x204B, 0x2020]),
        Decoded::Text("SE25K".to_owned())
    );
    assert_eq!(
        text(WordOrder::Abcd, &[0x41FF, 0x8042, 0x2020, 0x2020]),
        Decoded::Text("A??B".to_owned())
    );
    assert_eq!(
        decode_one(holding("s", 0, DataType::Ascii(2)).na(&[0]), &[0, 0]),
        Decoded::NotAvailable(NotAvailable::Sentinel(0))
    );
}

#[test]
fn text_round_trips_and_refuses_what_does_not_fit() {
    let profile = profile(vec![
        holding("sn", 0, DataType::Ascii(3)),
        holding("sn_swapped", 10, DataType::Ascii(3)).order(WordOrder::Badc),
        holding("n", 20, DataType::U16),
    ]);
    let mut image = RegisterImage::new();
    for point in [0, 1] {
        encode_text(&profile, point, "ABCDE", &mut image).unwrap();
        assert_eq!(
            decode(&profile, point, &image),
            Ok(Decoded::Text("ABCDE".to_owned()))
        );
    }
    assert_eq!(
        image.registers(Table::Holding, 0, 3),
        Some(&[0x4142, 0x4344, 0x4500][..])
    );
    assert_eq!(
        image.registers(Table::Holding, 10, 3),
        Some(&[0x4241, 0x4443, 0x0045][..])
    );
    assert!(matches!(
        encode_text(&profile, 0, "ABCDEFG", &mut image),
        Err(EncodeError::TextTooLong { len: 7, max: 6, .. })
    ));
    assert!(matches!(
        encode_text(&profile, 0, "Fröling", &mut image),
        Err(EncodeError::InvalidText { point: 0 })
    ));
    assert!(matches!(
        encode_text(&profile, 2, "x", &mut image),
        Err(EncodeError::WrongType { point: 2, .. })
    ));
    assert!(matches!(
        encode(&profile, 0, 1.0, &mut image),
        Err(EncodeError::WrongType { point: 0, .. })
    ));
    assert_eq!(
        raw(&profile, 0, &image),
        Err(DecodeError::NotNumeric { point: 0 })
    );
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

#[test]
fn encoding_refuses_out_of_range_non_finite_and_sentinel_values() {
    let profile = profile(vec![
        holding("u", 0, DataType::U16),
        holding("i", 1, DataType::I16).na(&[0x8000]),
        holding("f", 2, DataType::F32),
    ]);
    let mut image = RegisterImage::new();
    assert!(matches!(
        encode(&profile, 0, 65_536.0, &mut image),
        Err(EncodeError::OutOfRange { point: 0, value }) if value == 65_536.0
    ));
    assert!(matches!(
        encode(&profile, 0, -0.6, &mut image),
        Err(EncodeError::OutOfRange { .. })
    ));
    assert!(matches!(
        encode(&profile, 0, f64::NAN, &mut image),
        Err(EncodeError::NotFinite { point: 0, .. })
    ));
    assert!(matches!(
        encode(&profile, 2, 1e39, &mut image),
        Err(EncodeError::OutOfRange { point: 2, .. })
    ));
    assert_eq!(
        encode(&profile, 1, -32_768.0, &mut image),
        Err(EncodeError::Sentinel {
            point: 1,
            raw: 0x8000
        })
    );
    assert!(image.is_empty(), "nothing was written");
    encode(&profile, 0, 65_535.4, &mut image).unwrap();
    assert_eq!(image.registers(Table::Holding, 0, 1), Some(&[0xFFFF][..]));
}

#[test]
fn encoding_undoes_conversion_scale_offset_and_scale_factor() {
    let profile = profile(vec![
        holding("T", 0, DataType::I16)
            .sf("T_SF")
            .scale(0.5)
            .offset(-40.0)
            .conversion(1.0, 273.15),
        holding("T_SF", 1, DataType::I16),
    ]);
    let mut image = RegisterImage::new();
    image.put_registers(Table::Holding, 1, &[(-1i16) as u16]);
    // 300 K = 26.85 °C = raw * 0.1 * 0.5 - 40 → raw = 1337.
    encode(&profile, 0, 300.0, &mut image).unwrap();
    assert_eq!(image.registers(Table::Holding, 0, 1), Some(&[1337][..]));
    assert_close(number(&decode(&profile, 0, &image).unwrap()), 300.0, 1e-9);
}

#[test]
fn not_available_writes_the_first_sentinel_or_nan() {
    let profile = profile(vec![
        holding("i", 0, DataType::I16).na(&[0x8000, 0x7FFF]),
        holding("f", 1, DataType::F32).order(WordOrder::Cdab),
        holding("d", 3, DataType::F64),
        holding("u", 7, DataType::U16),
        holding("s", 8, DataType::Ascii(2)).na(&[0]),
    ]);
    let mut image = RegisterImage::new();
    for point in 0..3 {
        encode_not_available(&profile, point, &mut image).unwrap();
    }
    assert_eq!(
        decode(&profile, 0, &image),
        Ok(Decoded::NotAvailable(NotAvailable::Sentinel(0x8000)))
    );
    assert_eq!(
        image.registers(Table::Holding, 1, 2),
        Some(&[0x0000, 0x7FC0][..])
    );
    for point in [1, 2] {
        assert_eq!(
            decode(&profile, point, &image),
            Ok(Decoded::NotAvailable(NotAvailable::NotANumber))
        );
    }
    assert_eq!(
        encode_not_available(&profile, 3, &mut image),
        Err(EncodeError::NoSentinel { point: 3 })
    );
    encode_not_available(&profile, 4, &mut image).unwrap();
    assert_eq!(
        decode(&profile, 4, &image),
        Ok(Decoded::NotAvailable(NotAvailable::Sentinel(0)))
    );
}

#[test]
fn a_raw_counter_wraps_exactly_like_the_device() {
    let profile = profile(vec![holding("WH", 0, DataType::U32).order(WordOrder::Cdab)]);
    let mut image = RegisterImage::new();
    encode_raw(&profile, 0, 4_294_967_000, &mut image).unwrap();
    let before = raw(&profile, 0, &image).unwrap();
    encode_raw(
        &profile,
        0,
        (4_294_967_000u64 + 496) & 0xFFFF_FFFF,
        &mut image,
    )
    .unwrap();
    let after = raw(&profile, 0, &image).unwrap();
    assert_eq!(after, 200);
    assert_eq!(after.wrapping_sub(before) & 0xFFFF_FFFF, 496);
    assert_eq!(
        image.registers(Table::Holding, 0, 2),
        Some(&[200, 0][..]),
        "low word first"
    );
}

// ---------------------------------------------------------------------------------------------
// Register image
// ---------------------------------------------------------------------------------------------

#[test]
fn registers_written_again_overwrite_and_adjacent_writes_merge() {
    let mut image = RegisterImage::new();
    image.put_registers(Table::Holding, 10, &[1, 2, 3]);
    image.put_registers(Table::Holding, 14, &[5]);
    assert_eq!(
        image.registers(Table::Holding, 10, 5),
        None,
        "13 is missing"
    );
    image.put_registers(Table::Holding, 13, &[4]);
    assert_eq!(
        image.registers(Table::Holding, 10, 5),
        Some(&[1, 2, 3, 4, 5][..])
    );
    image.put_registers(Table::Holding, 8, &[8, 9, 10]);
    assert_eq!(
        image.registers(Table::Holding, 8, 7),
        Some(&[8, 9, 10, 2, 3, 4, 5][..])
    );
    assert_eq!(image.registers(Table::Input, 8, 1), None);
}

#[test]
fn registers_past_address_65535_are_dropped() {
    let mut image = RegisterImage::new();
    image.put_registers(Table::Input, 65_534, &[1, 2, 3, 4]);
    assert_eq!(image.registers(Table::Input, 65_534, 2), Some(&[1, 2][..]));
    assert_eq!(image.registers(Table::Input, 65_535, 2), None);
}

// ---------------------------------------------------------------------------------------------
// Properties
// ---------------------------------------------------------------------------------------------

fn order() -> impl Strategy<Value = WordOrder> {
    prop::sample::select(ORDERS.to_vec())
}

/// An integer type and a value of it, over the type's full range (as the nearest `f64`, minus
/// the two values that round up to 2^64 and 2^63 and so do not fit).
fn integer_value() -> impl Strategy<Value = (DataType, f64)> {
    prop_oneof![
        any::<u16>().prop_map(|v| (DataType::U16, f64::from(v))),
        any::<i16>().prop_map(|v| (DataType::I16, f64::from(v))),
        any::<u32>().prop_map(|v| (DataType::U32, f64::from(v))),
        any::<i32>().prop_map(|v| (DataType::I32, f64::from(v))),
        any::<u64>()
            .prop_map(|v| (DataType::U64, v as f64))
            .prop_filter("fits", |(_, x)| *x < 18_446_744_073_709_551_616.0),
        any::<i64>()
            .prop_map(|v| (DataType::I64, v as f64))
            .prop_filter("fits", |(_, x)| *x < 9_223_372_036_854_775_808.0),
        // The edges.
        Just((DataType::U16, 65_535.0)),
        Just((DataType::I16, -32_768.0)),
        Just((DataType::U32, 4_294_967_295.0)),
        Just((DataType::I32, -2_147_483_648.0)),
        Just((DataType::I64, -9_223_372_036_854_775_808.0)),
        Just((DataType::U64, 18_446_744_073_709_549_568.0)),
    ]
}

fn finite_float() -> impl Strategy<Value = (DataType, f64)> {
    prop_oneof![
        any::<u32>()
            .prop_map(f32::from_bits)
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| (DataType::F32, f64::from(f))),
        any::<u64>()
            .prop_map(f64::from_bits)
            .prop_filter("finite", |f| f.is_finite())
            .prop_map(|f| (DataType::F64, f)),
    ]
}

/// A raw pattern of a numeric type that decodes to a number with moderate scaling: integers
/// (64-bit ones up to 2^53) and floats of magnitude 1e-30..1e30 or zero.
fn raw_value() -> impl Strategy<Value = (DataType, u64)> {
    let float32 = (-30.0f64..30.0, any::<bool>()).prop_map(|(e, neg)| {
        let f = (10f64.powf(e) * if neg { -1.0 } else { 1.0 }) as f32;
        (DataType::F32, u64::from(f.to_bits()))
    });
    let float64 = (-30.0f64..30.0, any::<bool>()).prop_map(|(e, neg)| {
        (
            DataType::F64,
            (10f64.powf(e) * if neg { -1.0 } else { 1.0 }).to_bits(),
        )
    });
    prop_oneof![
        any::<u16>().prop_map(|v| (DataType::U16, u64::from(v))),
        any::<u16>().prop_map(|v| (DataType::I16, u64::from(v))),
        any::<u32>().prop_map(|v| (DataType::U32, u64::from(v))),
        any::<u32>().prop_map(|v| (DataType::I32, u64::from(v))),
        (0u64..(1 << 53)).prop_map(|v| (DataType::U64, v)),
        (-(1i64 << 53)..(1i64 << 53)).prop_map(|v| (DataType::I64, v as u64)),
        float32,
        float64,
        Just((DataType::F32, 0)),
        Just((DataType::F64, 0)),
    ]
}

/// A multiplier of magnitude 1e-3..1e3, either sign.
fn multiplier() -> impl Strategy<Value = f64> {
    (-3.0f64..3.0, any::<bool>()).prop_map(|(e, neg)| 10f64.powf(e) * if neg { -1.0 } else { 1.0 })
}

fn relative_gap(a: f64, b: f64) -> f64 {
    let scale = a.abs().max(b.abs());
    if scale == 0.0 {
        0.0
    } else {
        (a - b).abs() / scale
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(2000))]

    #[test]
    fn integers_round_trip_exactly_over_their_full_range(
        (data_type, value) in integer_value(),
        order in order(),
        address in 0u16..=65_532,
    ) {
        let profile = profile(vec![holding("x", address, data_type).order(order)]);
        let mut image = RegisterImage::new();
        encode(&profile, 0, value, &mut image).unwrap();
        prop_assert_eq!(decode(&profile, 0, &image), Ok(Decoded::Number(value)));
    }

    #[test]
    fn floats_round_trip_bit_exactly(
        (data_type, value) in finite_float(),
        order in order(),
    ) {
        let profile = profile(vec![holding("x", 0, data_type).order(order)]);
        let mut image = RegisterImage::new();
        encode(&profile, 0, value, &mut image).unwrap();
        let back = number(&decode(&profile, 0, &image).unwrap());
        prop_assert_eq!(back.to_bits(), value.to_bits());
    }

    #[test]
    fn scaled_values_round_trip_within_one_part_in_a_billion(
        (data_type, raw_pattern) in raw_value(),
        order in order(),
        scale in multiplier(),
        conversion_scale in multiplier(),
        offset_share in -4.0f64..4.0,
        conversion_offset_share in -4.0f64..4.0,
        sf in -10i16..=10,
    ) {
        // Offsets are sized against the value they are added to, so that they shift it without
        // wiping out its digits ("values representable").
        let mut probe = profile(vec![
            holding("x", 0, data_type).order(order).sf("x_SF").scale(scale),
            holding("x_SF", 10, DataType::I16),
        ]);
        let mut image = RegisterImage::new();
        image.put_registers(Table::Holding, 10, &[sf as u16]);
        encode_raw(&probe, 0, raw_pattern, &mut image).unwrap();
        let scaled = number(&decode(&probe, 0, &image).unwrap());
        let offset = offset_share * scaled.abs();
        let conversion_offset = conversion_offset_share * ((scaled + offset) * conversion_scale).abs();
        probe.points[0].offset = offset;
        probe.points[0].conversion = Conversion { scale: conversion_scale, offset: conversion_offset };
        let value = number(&decode(&probe, 0, &image).unwrap());

        let mut fresh = RegisterImage::new();
        fresh.put_registers(Table::Holding, 10, &[sf as u16]);
        encode(&probe, 0, value, &mut fresh).unwrap();
        let back = number(&decode(&probe, 0, &fresh).unwrap());
        prop_assert!(
            relative_gap(back, value) <= 1e-9,
            "{value} came back as {back} (raw {raw_pattern:#x} → {:#x})",
            raw(&probe, 0, &fresh).unwrap()
        );
    }

    #[test]
    fn words_and_raw_patterns_convert_both_ways(
        pattern in any::<u64>(),
        width in 1u16..=4,
        order in order(),
    ) {
        let mask = if width == 4 { u64::MAX } else { (1u64 << (16 * width)) - 1 };
        let words = raw_to_words(pattern, width, order);
        prop_assert_eq!(words.len(), usize::from(width));
        prop_assert_eq!(words_to_raw(&words, order), pattern & mask);
        prop_assert_eq!(raw_to_words(words_to_raw(&words, order), width, order), words);
    }

    #[test]
    fn decoding_arbitrary_words_never_panics(
        words in prop::collection::vec(any::<u16>(), 0..12),
        bits in prop::collection::vec(any::<bool>(), 0..4),
        type_pick in 0u8..11,
        parameter in any::<u8>(),
        order in order(),
        address in 0u16..8,
        sf_address in 0u16..12,
        sentinels in prop::collection::vec(any::<u64>(), 0..3),
        scale in prop_oneof![multiplier(), Just(0.0), Just(f64::MAX)],
        with_sf in any::<bool>(),
    ) {
        let data_type = match type_pick {
            0 => DataType::U16,
            1 => DataType::I16,
            2 => DataType::U32,
            3 => DataType::I32,
            4 => DataType::U64,
            5 => DataType::I64,
            6 => DataType::F32,
            7 => DataType::F64,
            8 => DataType::Bit(parameter),
            9 => DataType::Bool,
            _ => DataType::Ascii(u16::from(parameter % 10)),
        };
        let table = if data_type == DataType::Bool { Table::Coil } else { Table::Holding };
        let mut point = pt("x", table, address, data_type).order(order).na(&sentinels).scale(scale);
        if with_sf {
            point = point.sf("x_SF");
        }
        let profile = profile(vec![point, holding("x_SF", sf_address, DataType::I16)]);
        let mut image = RegisterImage::new();
        image.put_registers(Table::Holding, 0, &words);
        image.put_bits(Table::Coil, 0, &bits);
        match decode(&profile, 0, &image) {
            Ok(Decoded::Number(x)) => prop_assert!(x.is_finite()),
            Ok(Decoded::Text(t)) => prop_assert!(t.is_ascii()),
            Ok(Decoded::NotAvailable(_)) | Err(DecodeError::Missing { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected {e}"),
        }
        let _ = raw(&profile, 0, &image);
    }

    #[test]
    fn the_register_image_agrees_with_a_plain_map_after_any_writes(
        writes in prop::collection::vec(
            (0u16..200, prop::collection::vec(any::<u16>(), 0..20)),
            0..30,
        ),
        probes in prop::collection::vec((0u16..220, 0u16..25), 20),
    ) {
        let mut image = RegisterImage::new();
        let mut model = HashMap::new();
        for (start, words) in &writes {
            image.put_registers(Table::Input, *start, words);
            for (i, w) in words.iter().enumerate() {
                model.insert(usize::from(*start) + i, *w);
            }
        }
        for (start, count) in probes {
            let expected: Option<Vec<u16>> = (0..usize::from(count))
                .map(|i| model.get(&(usize::from(start) + i)).copied())
                .collect();
            prop_assert_eq!(
                image.registers(Table::Input, start, count).map(<[u16]>::to_vec),
                expected
            );
        }
    }
}

#[test]
fn a_counter_past_the_top_of_a_u32_wraps_like_the_device_register() {
    // 0.1 kWh per count: 429,496,729.6 kWh is one full turn of the register.
    let p = profile(vec![holding("energy", 0, DataType::U32).scale(0.1)]);
    let mut image = RegisterImage::new();
    let turn = 4_294_967_296.0 * 0.1;
    assert!(
        codec::encode(&p, 0, turn + 12.5, &mut image).is_err(),
        "plain encode refuses"
    );
    codec::encode_wrapping(&p, 0, turn + 12.5, &mut image).unwrap();
    assert_close(number(&codec::decode(&p, 0, &image).unwrap()), 12.5, 1e-9);
    codec::encode_wrapping(&p, 0, 7.0, &mut image).unwrap();
    assert_close(number(&codec::decode(&p, 0, &image).unwrap()), 7.0, 1e-9);
}

#[test]
fn signed_and_float_points_never_wrap() {
    let p = profile(vec![holding("t", 0, DataType::I16)]);
    let mut image = RegisterImage::new();
    assert!(codec::encode_wrapping(&p, 0, 40_000.0, &mut image).is_err());
}
