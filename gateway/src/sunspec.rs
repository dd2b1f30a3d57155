//! SunSpec discovery and draft profiles, for `fivezero-gateway scan`.
//!
//! A SunSpec device starts its register map with the marker "SunS" (`0x5375 0x6E53`) at one of
//! three bases (40000, 0, 50000) and then chains models: each model begins with its id and its
//! length `L` (the number of data registers after those two), the next model follows directly,
//! and the id `0xFFFF` ends the chain. See `reference/registers.md` §6.2.
//!
//! | module | what it holds |
//! |---|---|
//! | [`models`] | the model tables: names of the models we recognise, and the points of those we can draft (common 1, inverters 101–103, meters 201–204, integer + scale factor) |
//! | [`discover`](mod@discover) | the walk over a [`discover::RegisterReader`]: find the marker, list the models, read the common model |
//! | [`emit`](mod@emit) | a draft profile (TOML) for one logical device of a discovered map |
//!
//! Everything here is pure apart from the reader it is handed; the CLI supplies a reader over a
//! real Modbus link, the tests one over an in-memory register map.

pub mod discover;
pub mod emit;
pub mod models;

pub use discover::{
    CommonInfo, Discovery, DiscoveryError, End, Model, ReadFailure, RegisterReader, discover,
    logical_devices, read_common,
};
pub use emit::{Draft, DraftSource, EmitError, emit};
