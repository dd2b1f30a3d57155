//! The register codec: turns the registers and bits of a device into readings and back.
//!
//! The gateway keeps what it last read from a device in a [`RegisterImage`] and calls [`decode`]
//! for every point; the simulator keeps what it serves in a `RegisterImage` and fills it with
//! [`encode`], [`encode_text`], [`encode_not_available`] and [`encode_raw`]. Both sides share
//! this one module, so they can never disagree on word order, sentinels or scaling.
//!
//! # Processing order of a numeric point
//!
//! 1. The point's registers are assembled into one raw bit pattern per its [`WordOrder`]
//!    ([`words_to_raw`]), zero-extended to 64 bits.
//! 2. A pattern equal to one of the point's `not_available` sentinels (compared masked to the
//!    type's width) gives [`NotAvailable::Sentinel`].
//! 3. The pattern is read as the data type (two's complement integers, IEEE 754 floats); a NaN
//!    or an infinity gives [`NotAvailable::NotANumber`].
//! 4. A SunSpec scale factor, when the point has one, is read from its own point (an `i16`):
//!    `0x8000` (or one of that point's sentinels) gives [`NotAvailable::ScaleFactorNotAvailable`],
//!    a factor outside −10..=10 gives [`NotAvailable::ScaleFactorOutOfRange`]; otherwise the value
//!    is multiplied by 10^sf, done as a multiplication or division by an exactly representable
//!    power of ten, so `4998` with `sf = −2` is exactly the `f64` nearest to 49.98.
//! 5. `value * point.scale + point.offset`, then `point.conversion` into the canonical unit.
//!
//! [`encode`] runs the same steps backwards and refuses any value it cannot write so that
//! [`decode`] gives it back.
//!
//! # Bits, booleans and text
//!
//! * [`DataType::Bit`]: the raw pattern is the whole register (after the byte swap of `BADC` and
//!   `DCBA`), so a bit-field sentinel such as `0xFFFF` applies to every bit of it; the value is
//!   bit *n* (0 = least significant) as 0.0 or 1.0. Scale, offset and conversion do not apply.
//! * [`DataType::Bool`]: the coil or discrete input as 0.0 or 1.0; sentinels compare exactly.
//! * [`DataType::Ascii`]: two characters per register, high byte first unless the order swaps
//!   bytes (`BADC`, `DCBA`); word order does not apply to text. The text stops at the first NUL,
//!   trailing spaces are cut, bytes above 0x7F read as `?`. When every register equals a
//!   sentinel (SunSpec: all `0x0000`) the text is [`NotAvailable::Sentinel`].
//!
//! # Cost
//!
//! Decoding a numeric point allocates nothing: one binary search in the image per point (two
//! with a scale factor), at most four words folded into a `u64`, and a handful of float
//! operations. Only text allocates its `String`.

use std::fmt;
use std::ops::Deref;

use thiserror::Error;

use crate::profile::{DataType, Point, Profile, Table, WordOrder};

/// Exact powers of ten for scale factors 0..=10 (every one is representable in an `f64`).
const POW10: [f64; 11] = [1e0, 1e1, 1e2, 1e3, 1e4, 1e5, 1e6, 1e7, 1e8, 1e9, 1e10];

/// The SunSpec `sunssf` "not implemented" pattern.
const SF_NOT_AVAILABLE: u64 = 0x8000;

/// Largest scale-factor magnitude SunSpec allows.
const SF_LIMIT: i16 = 10;

/// The quiet NaN written by [`encode_not_available`] for an `f32` point without sentinels.
const F32_NAN: u64 = 0x7FC0_0000;

/// The quiet NaN written by [`encode_not_available`] for an `f64` point without sentinels.
const F64_NAN: u64 = 0x7FF8_0000_0000_0000;

/// Number of addresses in one Modbus table.
const TABLE_SIZE: usize = 65_536;

// ---------------------------------------------------------------------------------------------
// Register image
// ---------------------------------------------------------------------------------------------

/// The registers and bits of one device: as last read (gateway) or as currently served
/// (simulator).
///
/// # Design
///
/// Each of the four tables keeps its words, and separately its bits, as a sorted list of
/// contiguous segments (`start`, `Vec` of values). Segments never overlap and never touch: a
/// write that overlaps or adjoins existing segments merges them into one. Hence any run of
/// present registers lies inside a single segment, and [`RegisterImage::registers`] answers
/// with a borrowed slice after one binary search over the segments, without allocating.
///
/// A device read in a few requests holds a few segments (one per request, fewer when requests
/// adjoin), so the search is over a handful of entries; memory is proportional to what was
/// written, not to the 65 536-address table. Writing over registers already present copies in
/// place and allocates nothing, which is the simulator's steady state.
///
/// Words written to a bit table and bits written to a register table are kept as given, but
/// the codec reads numbers only from the words of the table a point names and booleans only
/// from its bits. Values that would lie past address 65 535 are dropped.
#[derive(Debug, Clone, Default)]
pub struct RegisterImage {
    words: [Segments<u16>; 4],
    bits: [Segments<bool>; 4],
}

impl RegisterImage {
    /// An empty image.
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// Stores `words` at `start`, `start + 1`, …, overwriting what was there.
    pub fn put_registers(&mut self, table: Table, start: u16, words: &[u16]) {
        self.words[table_index(table)].put(start, words);
    }

    /// Stores `bits` at `start`, `start + 1`, …, overwriting what was there.
    pub fn put_bits(&mut self, table: Table, start: u16, bits: &[bool]) {
        self.bits[table_index(table)].put(start, bits);
    }

    /// The `count` registers from `start`, or `None` if any of them is missing.
    #[must_use]
    pub fn registers(&self, table: Table, start: u16, count: u16) -> Option<&[u16]> {
        self.words[table_index(table)].get(start, count)
    }

    /// The bit at `addr`, or `None` if it is missing.
    #[must_use]
    pub fn bit(&self, table: Table, addr: u16) -> Option<bool> {
        self.bits[table_index(table)]
            .get(addr, 1)
            .and_then(|b| b.first().copied())
    }

    /// Forgets every register and bit (e.g. when the device went offline).
    pub fn clear(&mut self) {
        for s in &mut self.words {
            s.segments.clear();
        }
        for s in &mut self.bits {
            s.segments.clear();
        }
    }

    /// True when the image holds no register and no bit.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|s| s.segments.is_empty())
            && self.bits.iter().all(|s| s.segments.is_empty())
    }
}

const fn table_index(table: Table) -> usize {
    match table {
        Table::Coil => 0,
        Table::Discrete => 1,
        Table::Input => 2,
        Table::Holding => 3,
    }
}

/// One run of consecutive present addresses.
#[derive(Debug, Clone)]
struct Segment<T> {
    start: u32,
    data: Vec<T>,
}

impl<T> Segment<T> {
    /// One past the last address.
    fn end(&self) -> u32 {
        // A segment never holds more than the 65 536 addresses of a table.
        self.start + u32::try_from(self.data.len()).unwrap_or(u32::MAX - self.start)
    }
}

/// Sorted, disjoint, non-adjacent segments of one table.
#[derive(Debug, Clone)]
struct Segments<T> {
    segments: Vec<Segment<T>>,
}

impl<T> Default for Segments<T> {
    fn default() -> Self {
        Self {
            segments: Vec::new(),
        }
    }
}

impl<T: Copy + Default> Segments<T> {
    fn get(&self, start: u16, count: u16) -> Option<&[T]> {
        if count == 0 {
            return Some(&[]);
        }
        let start = u32::from(start);
        let i = self.segments.partition_point(|s| s.start <= start);
        let seg = self.segments.get(i.checked_sub(1)?)?;
        let off = usize::try_from(start - seg.start).ok()?;
        seg.data.get(off..off + usize::from(count))
    }

    fn put(&mut self, start: u16, items: &[T]) {
        let room = TABLE_SIZE - usize::from(start);
        let items = items.get(..room).unwrap_or(items);
        if items.is_empty() {
            return;
        }
        let start = u32::from(start);
        let end = start + u32::try_from(items.len()).unwrap_or(0);
        // Segments lo..hi overlap or adjoin [start, end).
        let lo = self.segments.partition_point(|s| s.end() < start);
        let hi = self.segments.partition_point(|s| s.start <= end);
        let (Some(first), Some(last)) = (self.segments.get(lo), hi.checked_sub(1)) else {
            self.segments.insert(
                lo,
                Segment {
                    start,
                    data: items.to_vec(),
                },
            );
            return;
        };
        if lo > last {
            self.segments.insert(
                lo,
                Segment {
                    start,
                    data: items.to_vec(),
                },
            );
            return;
        }
        let first_start = first.start;
        let merged_start = first_start.min(start);
        let merged_end = self.segments.get(last).map_or(end, |s| s.end().max(end));
        let len = usize::try_from(merged_end - merged_start).unwrap_or(0);

        // Reuse the first segment's buffer when it already begins at the merged start (always
        // the case when overwriting registers that are present).
        let mut data = match self.segments.get_mut(lo) {
            Some(seg) if first_start == merged_start => std::mem::take(&mut seg.data),
            _ => Vec::with_capacity(len),
        };
        data.resize(len, T::default());
        for seg in self.segments.get(lo..=last).unwrap_or(&[]) {
            copy_into(&mut data, seg.start - merged_start, &seg.data);
        }
        copy_into(&mut data, start - merged_start, items);

        if let Some(seg) = self.segments.get_mut(lo) {
            *seg = Segment {
                start: merged_start,
                data,
            };
        }
        if last > lo {
            self.segments.drain(lo + 1..=last);
        }
    }
}

/// Copies `src` into `dst` at `offset` (never out of bounds by construction; clipped if it were).
fn copy_into<T: Copy>(dst: &mut [T], offset: u32, src: &[T]) {
    let Ok(offset) = usize::try_from(offset) else {
        return;
    };
    if let Some(d) = dst.get_mut(offset..) {
        let n = d.len().min(src.len());
        if let (Some(d), Some(s)) = (d.get_mut(..n), src.get(..n)) {
            d.copy_from_slice(s);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Words and raw patterns
// ---------------------------------------------------------------------------------------------

/// Up to four registers, in the order they sit on the wire; derefs to `&[u16]`.
#[derive(Clone, Copy, PartialEq, Eq, Default)]
pub struct Words {
    buf: [u16; 4],
    len: u8,
}

impl Words {
    /// The registers as a slice.
    #[must_use]
    pub fn as_slice(&self) -> &[u16] {
        self.buf.get(..usize::from(self.len)).unwrap_or(&[])
    }
}

impl Deref for Words {
    type Target = [u16];

    fn deref(&self) -> &[u16] {
        self.as_slice()
    }
}

impl fmt::Debug for Words {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_list()
            .entries(self.as_slice().iter().map(|w| format!("{w:#06X}")))
            .finish()
    }
}

/// Assembles registers into a raw bit pattern (the value's bytes, most significant first,
/// zero-extended to 64 bits).
///
/// Bytes are swapped inside each register for `BADC` and `DCBA`; the registers are taken lowest
/// word first for `CDAB` and `DCBA` (all words reversed, also for 64-bit values). At most the
/// first four registers are used.
#[must_use]
pub fn words_to_raw(words: &[u16], order: WordOrder) -> u64 {
    let words = words.get(..4).unwrap_or(words);
    let swap = order.swapped_bytes();
    let push = |acc: u64, w: &u16| (acc << 16) | u64::from(if swap { w.swap_bytes() } else { *w });
    if order.low_word_first() {
        words.iter().rev().fold(0, push)
    } else {
        words.iter().fold(0, push)
    }
}

/// Splits a raw pattern into `width` registers (1..=4; more are capped at 4) in wire order, the
/// inverse of [`words_to_raw`]. Bits above `16 * width` are ignored.
#[must_use]
pub fn raw_to_words(raw: u64, width: u16, order: WordOrder) -> Words {
    let n = usize::from(width.min(4));
    let mut words = Words {
        buf: [0; 4],
        len: u8::try_from(n).unwrap_or(4),
    };
    for i in 0..n {
        // i-th word counted from the most significant.
        let shift = 16 * (n - 1 - i);
        let w = (raw >> shift) as u16;
        let w = if order.swapped_bytes() {
            w.swap_bytes()
        } else {
            w
        };
        let pos = if order.low_word_first() { n - 1 - i } else { i };
        if let Some(slot) = words.buf.get_mut(pos) {
            *slot = w;
        }
    }
    words
}

/// Mask of the bits of a raw pattern `width` registers wide.
const fn width_mask(width: u16) -> u64 {
    if width >= 4 {
        u64::MAX
    } else {
        (1u64 << (16 * width)) - 1
    }
}

/// Mask sentinels are compared under: the type's width in bits, a whole register for
/// [`DataType::Bit`], exact for [`DataType::Bool`].
const fn sentinel_mask(data_type: DataType) -> u64 {
    match data_type {
        DataType::Bool => u64::MAX,
        DataType::Bit(_) | DataType::Ascii(_) => 0xFFFF,
        other => width_mask(other.width()),
    }
}

// ---------------------------------------------------------------------------------------------
// Decoding
// ---------------------------------------------------------------------------------------------

/// What a point decodes to.
#[derive(Debug, Clone, PartialEq)]
pub enum Decoded {
    /// A number in the metric's canonical unit (always finite).
    Number(f64),
    /// Text of an [`DataType::Ascii`] point.
    Text(String),
    /// The device says the value does not exist or cannot be scaled.
    NotAvailable(NotAvailable),
}

impl Decoded {
    /// The number, if this is one.
    #[must_use]
    pub const fn number(&self) -> Option<f64> {
        match self {
            Self::Number(x) => Some(*x),
            _ => None,
        }
    }
}

/// Why a point that was read has no value.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NotAvailable {
    /// The raw pattern (masked to the type's width) is one of the point's sentinels.
    Sentinel(u64),
    /// A float point holds NaN or an infinity, or scaling overflowed.
    NotANumber,
    /// The point's scale-factor register holds `0x8000` (or one of its sentinels).
    ScaleFactorNotAvailable,
    /// The point's scale factor lies outside −10..=10.
    ScaleFactorOutOfRange(i16),
}

/// Why a point could not be decoded at all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
pub enum DecodeError {
    /// Registers (or bits) the point needs are not in the image.
    #[error("{} {address} (+{count}) not in the register image", .table.as_str())]
    Missing {
        /// The table.
        table: Table,
        /// First address needed.
        address: u16,
        /// How many registers (or bits) from there.
        count: u16,
    },
    /// The point index (or a scale-factor index) is not in the profile.
    #[error("the profile has no point number {point}")]
    NoSuchPoint {
        /// The index asked for.
        point: usize,
    },
    /// [`raw`] was asked for a text point, which has no single raw pattern; read its words with
    /// [`RegisterImage::registers`].
    #[error("point number {point} is text and has no raw pattern")]
    NotNumeric {
        /// The index of the point.
        point: usize,
    },
}

/// Decodes point number `point` of `profile` from `image` into its canonical unit.
///
/// # Errors
/// [`DecodeError::Missing`] when a register or bit of the point or of its scale factor is not in
/// the image; [`DecodeError::NoSuchPoint`] for an index past the profile's points.
pub fn decode(
    profile: &Profile,
    point: usize,
    image: &RegisterImage,
) -> Result<Decoded, DecodeError> {
    let p = point_at(profile, point)?;
    if let DataType::Ascii(_) = p.data_type {
        return Ok(decode_text(p, read_words(p, image)?));
    }
    let raw = raw_of(p, point, image)?;
    let mask = sentinel_mask(p.data_type);
    if let Some(s) = p.not_available.iter().map(|s| s & mask).find(|&s| s == raw) {
        return Ok(Decoded::NotAvailable(NotAvailable::Sentinel(s)));
    }
    let x = match p.data_type {
        DataType::U16 | DataType::U32 | DataType::U64 => raw as f64,
        DataType::I16 => f64::from(raw as u16 as i16),
        DataType::I32 => f64::from(raw as u32 as i32),
        DataType::I64 => raw as i64 as f64,
        DataType::F32 => f64::from(f32::from_bits(raw as u32)),
        DataType::F64 => f64::from_bits(raw),
        DataType::Bit(n) => {
            let bit = raw.checked_shr(u32::from(n)).unwrap_or(0) & 1;
            return Ok(Decoded::Number(bit as f64));
        }
        DataType::Bool => return Ok(Decoded::Number(if raw == 0 { 0.0 } else { 1.0 })),
        DataType::Ascii(_) => return Err(DecodeError::NotNumeric { point }),
    };
    if !x.is_finite() {
        return Ok(Decoded::NotAvailable(NotAvailable::NotANumber));
    }
    let x = match scale_factor(profile, p, image)? {
        ScaleFactor::None => x,
        ScaleFactor::Value(sf) => apply_sf(x, sf),
        ScaleFactor::NotAvailable(why) => return Ok(Decoded::NotAvailable(why)),
    };
    // `+ 0.0` is skipped so that −0.0 survives an identity profile bit for bit.
    let mut x = x * p.scale;
    if p.offset != 0.0 {
        x += p.offset;
    }
    let c = p.conversion;
    if c.scale != 1.0 || c.offset != 0.0 {
        x = c.apply(x);
    }
    if x.is_finite() {
        Ok(Decoded::Number(x))
    } else {
        Ok(Decoded::NotAvailable(NotAvailable::NotANumber))
    }
}

/// The raw bit pattern of point number `point`: its registers assembled per its word order
/// (zero-extended to 64 bits); the whole register for [`DataType::Bit`]; 0 or 1 for
/// [`DataType::Bool`]. Counters take rollover on this pattern.
///
/// # Errors
/// [`DecodeError::Missing`] when the point's registers are not in the image,
/// [`DecodeError::NotNumeric`] for a text point, [`DecodeError::NoSuchPoint`] for a bad index.
pub fn raw(profile: &Profile, point: usize, image: &RegisterImage) -> Result<u64, DecodeError> {
    raw_of(point_at(profile, point)?, point, image)
}

fn point_at(profile: &Profile, point: usize) -> Result<&Point, DecodeError> {
    profile
        .points
        .get(point)
        .ok_or(DecodeError::NoSuchPoint { point })
}

fn read_words<'a>(p: &Point, image: &'a RegisterImage) -> Result<&'a [u16], DecodeError> {
    let count = p.data_type.width();
    image
        .registers(p.table, p.address, count)
        .ok_or(DecodeError::Missing {
            table: p.table,
            address: p.address,
            count,
        })
}

fn raw_of(p: &Point, index: usize, image: &RegisterImage) -> Result<u64, DecodeError> {
    match p.data_type {
        DataType::Ascii(_) => Err(DecodeError::NotNumeric { point: index }),
        DataType::Bool => {
            image
                .bit(p.table, p.address)
                .map(u64::from)
                .ok_or(DecodeError::Missing {
                    table: p.table,
                    address: p.address,
                    count: 1,
                })
        }
        _ => Ok(words_to_raw(read_words(p, image)?, p.order)),
    }
}

fn decode_text(p: &Point, words: &[u16]) -> Decoded {
    if !words.is_empty() {
        for &s in &p.not_available {
            let w = (s & 0xFFFF) as u16;
            if words.iter().all(|&x| x == w) {
                return Decoded::NotAvailable(NotAvailable::Sentinel(u64::from(w)));
            }
        }
    }
    let swap = p.order.swapped_bytes();
    let mut text = String::with_capacity(words.len() * 2);
    'words: for &w in words {
        let bytes = if swap {
            w.to_le_bytes()
        } else {
            w.to_be_bytes()
        };
        for b in bytes {
            if b == 0 {
                break 'words;
            }
            text.push(if b.is_ascii() { char::from(b) } else { '?' });
        }
    }
    let keep = text.trim_end_matches(' ').len();
    text.truncate(keep);
    Decoded::Text(text)
}

/// The state of a point's scale factor.
enum ScaleFactor {
    /// The point has none.
    None,
    /// A usable factor in −10..=10.
    Value(i16),
    /// The factor exists but cannot be used.
    NotAvailable(NotAvailable),
}

fn scale_factor(
    profile: &Profile,
    p: &Point,
    image: &RegisterImage,
) -> Result<ScaleFactor, DecodeError> {
    let Some(index) = p.scale_factor else {
        return Ok(ScaleFactor::None);
    };
    let sf_point = point_at(profile, index)?;
    let raw = raw_of(sf_point, index, image)? & 0xFFFF;
    let mask = sentinel_mask(sf_point.data_type);
    if raw == SF_NOT_AVAILABLE || sf_point.not_available.iter().any(|s| s & mask == raw) {
        return Ok(ScaleFactor::NotAvailable(
            NotAvailable::ScaleFactorNotAvailable,
        ));
    }
    let sf = raw as u16 as i16;
    if (-SF_LIMIT..=SF_LIMIT).contains(&sf) {
        Ok(ScaleFactor::Value(sf))
    } else {
        Ok(ScaleFactor::NotAvailable(
            NotAvailable::ScaleFactorOutOfRange(sf),
        ))
    }
}

/// `x * 10^sf`, as a multiplication or a division by an exact power of ten.
fn apply_sf(x: f64, sf: i16) -> f64 {
    let pow = POW10[usize::from(sf.unsigned_abs().min(10))];
    if sf < 0 { x / pow } else { x * pow }
}

/// `x / 10^sf`, the inverse of [`apply_sf`].
fn unapply_sf(x: f64, sf: i16) -> f64 {
    let pow = POW10[usize::from(sf.unsigned_abs().min(10))];
    if sf < 0 { x * pow } else { x / pow }
}

// ---------------------------------------------------------------------------------------------
// Encoding
// ---------------------------------------------------------------------------------------------

/// Why a value could not be written into the image.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum EncodeError {
    /// The point index is not in the profile.
    #[error("the profile has no point number {point}")]
    NoSuchPoint {
        /// The index asked for.
        point: usize,
    },
    /// The value does not fit the point's type once scaled back to raw (or, for a bit or a
    /// boolean, is neither 0 nor 1).
    #[error("{value} does not fit point number {point}")]
    OutOfRange {
        /// The index of the point.
        point: usize,
        /// The value, in the canonical unit.
        value: f64,
    },
    /// NaN or an infinity was given; use [`encode_not_available`] to write "no value".
    #[error("point number {point} cannot hold the non-finite value {value}")]
    NotFinite {
        /// The index of the point.
        point: usize,
        /// The value given.
        value: f64,
    },
    /// The value's raw pattern is one of the point's sentinels, so it would read back as "not
    /// available"; use [`encode_raw`] to write it anyway.
    #[error("point number {point}: raw pattern {raw:#X} is a not-available sentinel")]
    Sentinel {
        /// The index of the point.
        point: usize,
        /// The pattern, masked to the type's width.
        raw: u64,
    },
    /// The point's scale-factor register is not in the image (or its index is not in the
    /// profile).
    #[error("point number {point}: its scale factor (point number {scale_factor}) is not set")]
    ScaleFactorMissing {
        /// The index of the point.
        point: usize,
        /// The index of the scale-factor point.
        scale_factor: usize,
    },
    /// The point's scale factor is `0x8000` or outside −10..=10.
    #[error("point number {point}: its scale factor {raw} is not usable")]
    ScaleFactorUnusable {
        /// The index of the point.
        point: usize,
        /// The scale factor found.
        raw: i16,
    },
    /// The operation does not suit the point's data type (a number for a text point, text for
    /// a number, a raw pattern for text).
    #[error("point number {point} is of type {} and cannot take this value", .data_type.as_str())]
    WrongType {
        /// The index of the point.
        point: usize,
        /// Its data type.
        data_type: DataType,
    },
    /// The text is longer than the point's registers hold.
    #[error("point number {point} holds {max} characters, the text has {len}")]
    TextTooLong {
        /// The index of the point.
        point: usize,
        /// Length of the text in bytes.
        len: usize,
        /// Characters the point holds.
        max: usize,
    },
    /// The text contains a non-ASCII character or a NUL.
    #[error("point number {point} takes ASCII text without NUL characters only")]
    InvalidText {
        /// The index of the point.
        point: usize,
    },
    /// [`encode_not_available`] for a point that has no sentinel and is not a float.
    #[error("point number {point} has no not-available sentinel")]
    NoSentinel {
        /// The index of the point.
        point: usize,
    },
}

/// Writes `value` (in the metric's canonical unit) into the registers of point number `point`,
/// so that [`decode`] gives it back.
///
/// Undoes the conversion, offset, scale and scale factor (read from the image), rounds to the
/// nearest integer for integer types and refuses what does not fit. A [`DataType::Bit`] takes
/// 0 or 1 and changes only its bit of the register (an absent register counts as 0); a
/// [`DataType::Bool`] takes 0 or 1 and sets its coil or discrete input.
///
/// # Errors
/// See [`EncodeError`]: non-finite values, values out of the type's range, a raw pattern that is
/// a sentinel, a scale factor absent or unusable, a text point.
pub fn encode(
    profile: &Profile,
    point: usize,
    value: f64,
    image: &mut RegisterImage,
) -> Result<(), EncodeError> {
    let p = encode_point(profile, point)?;
    if !value.is_finite() {
        return Err(EncodeError::NotFinite { point, value });
    }
    let out_of_range = EncodeError::OutOfRange { point, value };
    let mask = sentinel_mask(p.data_type);
    let raw = match p.data_type {
        DataType::Ascii(_) => {
            return Err(EncodeError::WrongType {
                point,
                data_type: p.data_type,
            });
        }
        DataType::Bool => bool_value(value).ok_or(out_of_range)?.into(),
        DataType::Bit(n) => {
            let on = bool_value(value).ok_or_else(|| out_of_range.clone())?;
            let current = image
                .registers(p.table, p.address, 1)
                .map_or(0, |w| words_to_raw(w, p.order));
            let bit = 1u64.checked_shl(u32::from(n)).filter(|b| *b <= 0x8000);
            match (bit, on) {
                (Some(b), true) => current | b,
                (Some(b), false) => current & !b,
                (None, false) => current,
                (None, true) => return Err(out_of_range),
            }
        }
        numeric => {
            let x = unscale(profile, point, p, value, image)?;
            to_pattern(numeric, x).ok_or(out_of_range)?
        }
    };
    if let Some(s) = p.not_available.iter().map(|s| s & mask).find(|&s| s == raw) {
        return Err(EncodeError::Sentinel { point, raw: s });
    }
    write_raw(p, raw, image);
    Ok(())
}

/// Writes `text` into an [`DataType::Ascii`] point, padded with NULs.
///
/// # Errors
/// [`EncodeError::TextTooLong`], [`EncodeError::InvalidText`] for non-ASCII text or a NUL,
/// [`EncodeError::Sentinel`] when the padded registers would all equal a sentinel (an empty text
/// on a point whose sentinel is `0x0000`), [`EncodeError::WrongType`] for a numeric point.
pub fn encode_text(
    profile: &Profile,
    point: usize,
    text: &str,
    image: &mut RegisterImage,
) -> Result<(), EncodeError> {
    let p = encode_point(profile, point)?;
    let DataType::Ascii(n) = p.data_type else {
        return Err(EncodeError::WrongType {
            point,
            data_type: p.data_type,
        });
    };
    let max = usize::from(n) * 2;
    if !text.is_ascii() || text.contains('\0') {
        return Err(EncodeError::InvalidText { point });
    }
    if text.len() > max {
        return Err(EncodeError::TextTooLong {
            point,
            len: text.len(),
            max,
        });
    }
    let mut bytes = text.bytes();
    let words: Vec<u16> = (0..n)
        .map(|_| {
            let pair = [bytes.next().unwrap_or(0), bytes.next().unwrap_or(0)];
            if p.order.swapped_bytes() {
                u16::from_le_bytes(pair)
            } else {
                u16::from_be_bytes(pair)
            }
        })
        .collect();
    if !words.is_empty() {
        for &s in &p.not_available {
            let w = (s & 0xFFFF) as u16;
            if words.iter().all(|&x| x == w) {
                return Err(EncodeError::Sentinel {
                    point,
                    raw: u64::from(w),
                });
            }
        }
    }
    image.put_registers(p.table, p.address, &words);
    Ok(())
}

/// Writes "no value" into point number `point`: its first sentinel, or a quiet NaN for a float
/// point without sentinels. A text point gets every register set to the sentinel's low 16 bits.
///
/// # Errors
/// [`EncodeError::NoSentinel`] for a non-float point without sentinels.
pub fn encode_not_available(
    profile: &Profile,
    point: usize,
    image: &mut RegisterImage,
) -> Result<(), EncodeError> {
    let p = encode_point(profile, point)?;
    let raw = match (p.not_available.first(), p.data_type) {
        (Some(&s), _) => s,
        (None, DataType::F32) => F32_NAN,
        (None, DataType::F64) => F64_NAN,
        (None, _) => return Err(EncodeError::NoSentinel { point }),
    };
    if let DataType::Ascii(n) = p.data_type {
        let words = vec![(raw & 0xFFFF) as u16; usize::from(n)];
        image.put_registers(p.table, p.address, &words);
        return Ok(());
    }
    write_raw(p, raw, image);
    Ok(())
}

/// Writes a raw bit pattern (as [`raw`] returns it) into point number `point`, unchecked:
/// bits above the type's width are dropped; a [`DataType::Bit`] point takes the whole register,
/// a [`DataType::Bool`] point is set when `raw` is not 0. Counters use this to wrap exactly like
/// the device.
///
/// # Errors
/// [`EncodeError::WrongType`] for a text point.
pub fn encode_raw(
    profile: &Profile,
    point: usize,
    raw: u64,
    image: &mut RegisterImage,
) -> Result<(), EncodeError> {
    let p = encode_point(profile, point)?;
    if let DataType::Ascii(_) = p.data_type {
        return Err(EncodeError::WrongType {
            point,
            data_type: p.data_type,
        });
    }
    write_raw(p, raw, image);
    Ok(())
}

/// Like [`encode`], but a value past the top of an unsigned integer type (`u16`, `u32`, `u64`)
/// wraps modulo 2^bits, the way a device's counter register rolls over; other types behave
/// exactly as [`encode`]. The simulator serves lifetime counters through it, so the gateway
/// meets real rollovers.
///
/// # Errors
/// As [`encode`], except [`EncodeError::OutOfRange`] above the top of an unsigned type.
pub fn encode_wrapping(
    profile: &Profile,
    point: usize,
    value: f64,
    image: &mut RegisterImage,
) -> Result<(), EncodeError> {
    match encode(profile, point, value, image) {
        Err(e @ EncodeError::OutOfRange { .. }) => {
            let p = encode_point(profile, point)?;
            if !matches!(p.data_type, DataType::U16 | DataType::U32 | DataType::U64) || value < 0.0
            {
                return Err(e);
            }
            let x = unscale(profile, point, p, value, image)?.round();
            let bits = 16 * i32::from(p.data_type.width());
            // `as` saturates at u64::MAX for the one value rounding may push to 2^64.
            let raw = x.rem_euclid(2f64.powi(bits)) as u64;
            write_raw(p, raw, image);
            Ok(())
        }
        other => other,
    }
}

fn encode_point(profile: &Profile, point: usize) -> Result<&Point, EncodeError> {
    profile
        .points
        .get(point)
        .ok_or(EncodeError::NoSuchPoint { point })
}

/// Writes a raw pattern of a numeric, bit or bool point.
fn write_raw(p: &Point, raw: u64, image: &mut RegisterImage) {
    if let DataType::Bool = p.data_type {
        image.put_bits(p.table, p.address, &[raw != 0]);
    } else {
        let words = raw_to_words(raw, p.data_type.width(), p.order);
        image.put_registers(p.table, p.address, &words);
    }
}

/// 0.0 → false, 1.0 → true, anything else → None.
fn bool_value(value: f64) -> Option<bool> {
    if value == 0.0 {
        Some(false)
    } else if value == 1.0 {
        Some(true)
    } else {
        None
    }
}

/// Takes a canonical value back to the unscaled domain of the raw type.
fn unscale(
    profile: &Profile,
    point: usize,
    p: &Point,
    value: f64,
    image: &RegisterImage,
) -> Result<f64, EncodeError> {
    let c = p.conversion;
    let mut x = value;
    if c.scale != 1.0 || c.offset != 0.0 {
        x = (x - c.offset) / c.scale;
    }
    x = (x - p.offset) / p.scale;
    if let Some(sf_index) = p.scale_factor {
        let missing = EncodeError::ScaleFactorMissing {
            point,
            scale_factor: sf_index,
        };
        match scale_factor(profile, p, image) {
            Ok(ScaleFactor::Value(sf)) => x = unapply_sf(x, sf),
            Ok(ScaleFactor::None) => {}
            Ok(ScaleFactor::NotAvailable(_)) => {
                let raw = profile
                    .points
                    .get(sf_index)
                    .and_then(|sp| raw_of(sp, sf_index, image).ok())
                    .map_or(i16::MIN, |r| r as u16 as i16);
                return Err(EncodeError::ScaleFactorUnusable { point, raw });
            }
            Err(_) => return Err(missing),
        }
    }
    if x.is_finite() {
        Ok(x)
    } else {
        Err(EncodeError::OutOfRange { point, value })
    }
}

/// The raw pattern of `x` (finite) as `data_type`, rounding integers to nearest; `None` when it
/// does not fit.
fn to_pattern(data_type: DataType, x: f64) -> Option<u64> {
    // Upper bounds are exclusive powers of two, exactly representable.
    const TWO_16: f64 = 65_536.0;
    const TWO_32: f64 = 4_294_967_296.0;
    const TWO_64: f64 = 18_446_744_073_709_551_616.0;
    const TWO_15: f64 = 32_768.0;
    const TWO_31: f64 = 2_147_483_648.0;
    const TWO_63: f64 = 9_223_372_036_854_775_808.0;
    let r = x.round();
    let unsigned = |limit: f64| (r >= 0.0 && r < limit).then_some(r);
    let signed = |limit: f64| (r >= -limit && r < limit).then_some(r);
    match data_type {
        DataType::U16 => unsigned(TWO_16).map(|r| r as u64),
        DataType::U32 => unsigned(TWO_32).map(|r| r as u64),
        DataType::U64 => unsigned(TWO_64).map(|r| r as u64),
        DataType::I16 => signed(TWO_15).map(|r| u64::from(r as i16 as u16)),
        DataType::I32 => signed(TWO_31).map(|r| u64::from(r as i32 as u32)),
        DataType::I64 => signed(TWO_63).map(|r| r as i64 as u64),
        DataType::F32 => {
            let f = x as f32;
            f.is_finite().then(|| u64::from(f.to_bits()))
        }
        DataType::F64 => Some(x.to_bits()),
        DataType::Bit(_) | DataType::Bool | DataType::Ascii(_) => None,
    }
}
