//! The SunSpec discovery walk, over any [`RegisterReader`].
//!
//! 1. Read two holding registers at 40000, then 0, then 50000, until one pair is the marker
//!    "SunS" (`0x5375 0x6E53`). A base that answers with an exception (illegal data address,
//!    usually), times out, or holds something else is skipped; a broken link ends the search.
//! 2. From `base + 2`, read each model's header (ID, L): the model's data are the `L` registers
//!    after the header, the next header follows at `address + 2 + L`. The chain ends at ID
//!    `0xFFFF`. Some devices (SMA STP10.0-3SE-40, for one) have no end model: an "illegal data
//!    address" exception after at least one model also ends the chain, and so does an ID of 0
//!    (a device answering zeros past its map) or the end of the address space.
//! 3. [`read_common`] reads a common model (1): manufacturer, model, version, serial number.
//!
//! Models `scan` has no table for are kept with their id, address and length, so they can be
//! added to a profile by hand.

use std::fmt;
use std::future::Future;

use super::models::{self, END_MODEL};
use crate::poll::DeviceException;

/// The marker at the base of a SunSpec map: "SunS".
pub const MARKER: [u16; 2] = [0x5375, 0x6E53];

/// Where the marker is looked for, in this order.
pub const BASES: [u16; 3] = [40_000, 0, 50_000];

/// Most models a chain may have before the walk gives up (a device answering nonsense).
pub const MAX_MODELS: usize = 256;

/// Exception code "illegal data address".
const ILLEGAL_DATA_ADDRESS: u8 = 0x02;

/// Why a read gave no registers.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ReadFailure {
    /// The device answered with this exception code.
    Exception(u8),
    /// No answer within the timeout.
    Timeout,
    /// Anything else: the link failed, the reply was malformed.
    Failed(String),
}

impl fmt::Display for ReadFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Exception(code) => f.write_str(&DeviceException(*code).reason()),
            Self::Timeout => f.write_str("no reply within the timeout"),
            Self::Failed(why) => f.write_str(why),
        }
    }
}

/// Reads holding registers: what discovery needs from a device.
pub trait RegisterReader {
    /// Reads `count` holding registers from `start`: exactly `count` words, or why not.
    fn read_holding(
        &mut self,
        start: u16,
        count: u16,
    ) -> impl Future<Output = Result<Vec<u16>, ReadFailure>>;
}

/// One model of the chain.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Model {
    /// The model id.
    pub id: u16,
    /// 0-based address of its ID register.
    pub address: u16,
    /// Its length `L`: the registers after ID and L.
    pub length: u16,
}

impl Model {
    /// The model's name, when `scan` knows it.
    #[must_use]
    pub fn name(&self) -> Option<&'static str> {
        models::model_name(self.id)
    }

    /// One past the model's last register.
    #[must_use]
    pub fn end(&self) -> u32 {
        u32::from(self.address) + 2 + u32::from(self.length)
    }
}

/// How the chain ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum End {
    /// The end model (ID `0xFFFF`) at this address.
    EndModel(u16),
    /// "Illegal data address" where the next header should be (a device without end model).
    IllegalAddress(u16),
    /// An ID of 0 where the next header should be.
    ZeroId(u16),
    /// The chain ran to the end of the address space.
    AddressSpace,
}

impl fmt::Display for End {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::EndModel(a) => write!(f, "end model 0xFFFF at {a}"),
            Self::IllegalAddress(a) => write!(
                f,
                "no end model: illegal data address at {a}, taken as the end"
            ),
            Self::ZeroId(a) => write!(f, "no end model: ID 0 at {a}, taken as the end"),
            Self::AddressSpace => f.write_str("the chain reaches the end of the address space"),
        }
    }
}

/// What the walk found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Discovery {
    /// Address of the "SunS" marker.
    pub base: u16,
    /// The models, in chain order.
    pub models: Vec<Model>,
    /// How the chain ended.
    pub end: End,
    /// The bases tried before the marker was found, with what they held.
    pub skipped: Vec<(u16, String)>,
}

/// Why no model list came out.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DiscoveryError {
    /// No base holds the marker; what each held.
    NotSunSpec {
        /// Each base tried, with what it answered.
        tried: Vec<(u16, String)>,
    },
    /// A read failed in a way that ends the walk.
    Read {
        /// The address read.
        address: u16,
        /// What went wrong.
        failure: ReadFailure,
        /// The models found before it.
        found: Vec<Model>,
    },
    /// More than [`MAX_MODELS`] models: the device is answering nonsense.
    TooManyModels {
        /// The models found.
        found: Vec<Model>,
    },
}

impl fmt::Display for DiscoveryError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotSunSpec { tried } => {
                let tried: Vec<String> =
                    tried.iter().map(|(b, why)| format!("{b}: {why}")).collect();
                write!(
                    f,
                    "no SunSpec marker \"SunS\" (0x5375 0x6E53) at 40000, 0 or 50000 ({})",
                    tried.join("; ")
                )
            }
            Self::Read {
                address,
                failure,
                found,
            } => write!(
                f,
                "reading the model header at {address} failed after {} model(s): {failure}",
                found.len()
            ),
            Self::TooManyModels { found } => write!(
                f,
                "more than {MAX_MODELS} models in the chain (stopped at {}): the device does not \
                 answer a SunSpec map",
                found.last().map_or(0, |m| m.address)
            ),
        }
    }
}

impl std::error::Error for DiscoveryError {}

/// Finds the marker and walks the model chain.
///
/// # Errors
/// No marker at any base, a read that fails for another reason than the ends listed in
/// [`End`], or a chain longer than [`MAX_MODELS`].
pub async fn discover<R: RegisterReader>(reader: &mut R) -> Result<Discovery, DiscoveryError> {
    let mut skipped = Vec::new();
    let mut base = None;
    for b in BASES {
        match reader.read_holding(b, 2).await {
            Ok(words) if words == MARKER => {
                base = Some(b);
                break;
            }
            Ok(words) => skipped.push((b, format!("holds {}", hex_words(&words)))),
            Err(e @ (ReadFailure::Exception(_) | ReadFailure::Timeout)) => {
                skipped.push((b, e.to_string()));
            }
            Err(failure) => {
                return Err(DiscoveryError::Read {
                    address: b,
                    failure,
                    found: Vec::new(),
                });
            }
        }
    }
    let Some(base) = base else {
        return Err(DiscoveryError::NotSunSpec { tried: skipped });
    };
    let mut models: Vec<Model> = Vec::new();
    let mut next = u32::from(base) + 2;
    let end = loop {
        let Some(address) = u16::try_from(next).ok().filter(|a| *a < u16::MAX) else {
            break End::AddressSpace;
        };
        if models.len() >= MAX_MODELS {
            return Err(DiscoveryError::TooManyModels { found: models });
        }
        let header = match reader.read_holding(address, 2).await {
            Ok(words) => words,
            Err(ReadFailure::Exception(ILLEGAL_DATA_ADDRESS)) if !models.is_empty() => {
                break End::IllegalAddress(address);
            }
            Err(failure) => {
                return Err(DiscoveryError::Read {
                    address,
                    failure,
                    found: models,
                });
            }
        };
        let (Some(&id), Some(&length)) = (header.first(), header.get(1)) else {
            return Err(DiscoveryError::Read {
                address,
                failure: ReadFailure::Failed(format!("{} register(s) for 2 asked", header.len())),
                found: models,
            });
        };
        if id == END_MODEL {
            break End::EndModel(address);
        }
        if id == 0 && !models.is_empty() {
            break End::ZeroId(address);
        }
        let model = Model {
            id,
            address,
            length,
        };
        models.push(model);
        next = model.end();
    };
    Ok(Discovery {
        base,
        models,
        end,
        skipped,
    })
}

/// What a common model (1) says about the device; empty text where it says nothing.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct CommonInfo {
    /// `Mn`: manufacturer.
    pub manufacturer: String,
    /// `Md`: model.
    pub model: String,
    /// `Opt`: options.
    pub options: String,
    /// `Vr`: version.
    pub version: String,
    /// `SN`: serial number.
    pub serial: String,
}

/// Reads the text points of common model `model` in one request.
///
/// # Errors
/// The read failed.
pub async fn read_common<R: RegisterReader>(
    reader: &mut R,
    model: &Model,
) -> Result<CommonInfo, ReadFailure> {
    // Mn, Md, Opt, Vr and SN fill the first 64 data registers.
    let count = model.length.min(64);
    if count == 0 {
        return Ok(CommonInfo::default());
    }
    let start = model.address.saturating_add(2);
    let words = reader.read_holding(start, count).await?;
    let field = |offset: usize, len: usize| {
        // Offsets as in the model table: from the ID register, data from 2.
        let from = offset.saturating_sub(2);
        words
            .get(from..(from + len).min(words.len()))
            .map(text_of)
            .unwrap_or_default()
    };
    Ok(CommonInfo {
        manufacturer: field(2, 16),
        model: field(18, 16),
        options: field(34, 8),
        version: field(42, 8),
        serial: field(50, 16),
    })
}

/// SunSpec text: two ASCII characters per register, high byte first, ended by NUL; anything
/// unprintable becomes `?`; surrounding blanks are cut.
#[must_use]
pub fn text_of(words: &[u16]) -> String {
    let mut s = String::with_capacity(words.len() * 2);
    for b in words.iter().flat_map(|w| w.to_be_bytes()) {
        if b == 0 {
            break;
        }
        s.push(if b.is_ascii_graphic() || b == b' ' {
            char::from(b)
        } else {
            '?'
        });
    }
    s.trim().to_owned()
}

/// Splits a chain into logical devices: each common model (1) starts one, as SunSpec
/// aggregates several devices behind one address (an inverter and its meter, for one).
/// Models before the first common model form a device of their own.
#[must_use]
pub fn logical_devices(models: &[Model]) -> Vec<Vec<Model>> {
    let mut out: Vec<Vec<Model>> = Vec::new();
    for m in models {
        match out.last_mut() {
            Some(current) if m.id != 1 => current.push(*m),
            _ => out.push(vec![*m]),
        }
    }
    out
}

/// Words as `0x5375 0x6E53`.
#[must_use]
pub fn hex_words(words: &[u16]) -> String {
    let v: Vec<String> = words.iter().map(|w| format!("{w:#06X}")).collect();
    v.join(" ")
}

#[cfg(test)]
pub(crate) mod tests {
    use std::collections::{BTreeMap, BTreeSet};

    use super::*;

    /// A device as a map of holding registers; anything outside it is "illegal data address",
    /// listed addresses time out.
    #[derive(Debug, Default)]
    pub(crate) struct MapReader {
        pub(crate) regs: BTreeMap<u16, u16>,
        pub(crate) timeouts: BTreeSet<u16>,
        pub(crate) log: Vec<(u16, u16)>,
    }

    impl MapReader {
        pub(crate) fn put(&mut self, start: u16, words: &[u16]) {
            for (i, w) in words.iter().enumerate() {
                if let Some(a) = u16::try_from(i).ok().and_then(|i| start.checked_add(i)) {
                    self.regs.insert(a, *w);
                }
            }
        }

        /// "SunS" at `base`, then the models (id, length, data filled with `fill(model, i)`),
        /// then an end model when `end` is set.
        pub(crate) fn sunspec(base: u16, models: &[(u16, u16)], end: bool) -> Self {
            let mut r = Self::default();
            r.put(base, &MARKER);
            let mut a = base + 2;
            for &(id, len) in models {
                r.put(a, &[id, len]);
                let data: Vec<u16> = (0..len).map(|i| i.wrapping_mul(7)).collect();
                r.put(a + 2, &data);
                a += 2 + len;
            }
            if end {
                r.put(a, &[END_MODEL, 0]);
            }
            r
        }
    }

    impl RegisterReader for MapReader {
        fn read_holding(
            &mut self,
            start: u16,
            count: u16,
        ) -> impl Future<Output = Result<Vec<u16>, ReadFailure>> {
            self.log.push((start, count));
            let result = if self.timeouts.contains(&start) {
                Err(ReadFailure::Timeout)
            } else {
                (u32::from(start)..u32::from(start) + u32::from(count))
                    .map(|a| {
                        u16::try_from(a)
                            .ok()
                            .and_then(|a| self.regs.get(&a).copied())
                            .ok_or(ReadFailure::Exception(ILLEGAL_DATA_ADDRESS))
                    })
                    .collect()
            };
            std::future::ready(result)
        }
    }

    /// SolarEdge-style: inverter common (L 65) + 103, meter common + 203, end model.
    pub(crate) fn solaredge() -> MapReader {
        MapReader::sunspec(40_000, &[(1, 65), (103, 50), (1, 65), (203, 105)], true)
    }

    #[tokio::test]
    async fn the_chain_of_a_solaredge_inverter_with_a_meter_is_walked_to_its_end_model() {
        let mut r = solaredge();
        let d = discover(&mut r).await.unwrap();
        assert_eq!(d.base, 40_000);
        let found: Vec<(u16, u16, u16)> = d
            .models
            .iter()
            .map(|m| (m.id, m.address, m.length))
            .collect();
        assert_eq!(
            found,
            [
                (1, 40_002, 65),
                (103, 40_069, 50),
                (1, 40_121, 65),
                (203, 40_188, 105)
            ]
        );
        assert_eq!(d.end, End::EndModel(40_295));
        assert!(d.skipped.is_empty());
        assert_eq!(r.log.first(), Some(&(40_000, 2)));
    }

    #[tokio::test]
    async fn bases_that_time_out_or_refuse_are_skipped_in_order() {
        let mut r = MapReader::sunspec(50_000, &[(1, 66), (101, 50)], true);
        r.timeouts.insert(0);
        let d = discover(&mut r).await.unwrap();
        assert_eq!(d.base, 50_000);
        assert_eq!(d.models.len(), 2);
        assert_eq!(d.models[1].address, 50_070);
        assert_eq!(
            d.skipped,
            [
                (40_000, "exception 02 illegal data address".to_owned()),
                (0, "no reply within the timeout".to_owned())
            ]
        );
        let bases: Vec<u16> = r.log.iter().take(3).map(|(a, _)| *a).collect();
        assert_eq!(bases, [40_000, 0, 50_000]);
    }

    #[tokio::test]
    async fn a_device_without_end_model_ends_at_the_illegal_address() {
        let mut r = MapReader::sunspec(0, &[(1, 65), (103, 50)], false);
        let d = discover(&mut r).await.unwrap();
        assert_eq!(d.base, 0);
        assert_eq!(d.models.len(), 2);
        assert_eq!(d.end, End::IllegalAddress(2 + 67 + 52));
    }

    #[tokio::test]
    async fn zeros_past_the_map_end_the_chain() {
        let mut r = MapReader::sunspec(40_000, &[(1, 65)], false);
        r.put(40_069, &[0, 0, 0, 0]);
        let d = discover(&mut r).await.unwrap();
        assert_eq!(d.end, End::ZeroId(40_069));
        assert_eq!(d.models.len(), 1);
    }

    #[tokio::test]
    async fn no_marker_anywhere_is_not_sunspec_with_what_each_base_held() {
        let mut r = MapReader::default();
        r.put(0, &[1, 2]);
        let e = discover(&mut r).await.unwrap_err();
        let DiscoveryError::NotSunSpec { tried } = &e else {
            panic!("{e:?}")
        };
        assert_eq!(tried.len(), 3);
        assert_eq!(tried[1], (0, "holds 0x0001 0x0002".to_owned()));
        assert!(e.to_string().contains("no SunSpec marker"), "{e}");
    }

    #[tokio::test]
    async fn a_marker_without_a_readable_first_model_is_an_error() {
        let mut r = MapReader::default();
        r.put(40_000, &MARKER);
        let e = discover(&mut r).await.unwrap_err();
        assert!(
            matches!(
                e,
                DiscoveryError::Read {
                    address: 40_002,
                    ..
                }
            ),
            "{e:?}"
        );
    }

    #[tokio::test]
    async fn a_broken_link_ends_the_search_at_once() {
        struct Broken(usize);
        impl RegisterReader for Broken {
            fn read_holding(
                &mut self,
                _: u16,
                _: u16,
            ) -> impl Future<Output = Result<Vec<u16>, ReadFailure>> {
                self.0 += 1;
                std::future::ready(Err(ReadFailure::Failed("reset".into())))
            }
        }
        let mut r = Broken(0);
        assert!(matches!(
            discover(&mut r).await,
            Err(DiscoveryError::Read {
                address: 40_000,
                ..
            })
        ));
        assert_eq!(r.0, 1);
    }

    #[tokio::test]
    async fn a_chain_of_nonsense_stops() {
        // Every header says "model 7, length 0": the chain never ends.
        let mut r = MapReader::default();
        r.put(40_000, &MARKER);
        for a in (40_002..=65_534).step_by(2) {
            r.put(a, &[7, 0]);
        }
        assert!(matches!(
            discover(&mut r).await,
            Err(DiscoveryError::TooManyModels { .. })
        ));
    }

    #[tokio::test]
    async fn the_common_model_text_is_read_in_one_request() {
        let mut r = MapReader::sunspec(40_000, &[(1, 65)], true);
        let text = |s: &str, len: usize| {
            let mut b = s.as_bytes().to_vec();
            b.resize(len * 2, 0);
            b.chunks(2)
                .map(|c| u16::from_be_bytes([c[0], c[1]]))
                .collect::<Vec<u16>>()
        };
        r.put(40_004, &text("SolarEdge ", 16));
        r.put(40_020, &text("SE25K", 16));
        r.put(40_044, &text("0003.2468", 8));
        r.put(40_052, &text("7E0\u{1}42A1", 16));
        let d = discover(&mut r).await.unwrap();
        r.log.clear();
        let info = read_common(&mut r, &d.models[0]).await.unwrap();
        assert_eq!(r.log, [(40_004, 64)]);
        assert_eq!(info.manufacturer, "SolarEdge");
        assert_eq!(info.model, "SE25K");
        assert_eq!(info.version, "0003.2468");
        assert_eq!(info.serial, "7E0?42A1");
    }

    #[test]
    fn each_common_model_starts_a_logical_device() {
        let m = |id, address| Model {
            id,
            address,
            length: 0,
        };
        let groups = logical_devices(&[m(103, 2), m(1, 4), m(103, 6), m(1, 8), m(203, 10)]);
        let ids: Vec<Vec<u16>> = groups
            .iter()
            .map(|g| g.iter().map(|m| m.id).collect())
            .collect();
        assert_eq!(ids, [vec![103], vec![1, 103], vec![1, 203]]);
    }
}
