//! Device profiles: the TOML format that describes a device's registers, its validation, the
//! read planner and the register codec.
//!
//! An integrator describes a device model once, in `profiles/<id>.toml`; the gateway plans its
//! Modbus reads from the profile, decodes the replies into readings in canonical units, and the
//! simulator encodes plant values into registers with the same codec. The format is documented
//! for integrators in `device-profiles/README.md`.

pub mod codec;
mod diagnostic;
mod lint;
mod load;
pub mod plan;
pub mod profile;

pub use diagnostic::{Diagnostic, Severity};
pub use load::{
    Checked, CheckedFile, LoadedFile, MODBUS_MAX_BITS, MODBUS_MAX_REGISTERS, check_file,
    check_path, check_str, load_file, load_path, load_str,
};
pub use profile::{Category, DataType, Point, Profile, ReadLimits, Table, WordOrder};

/// The folder of the shipped profile library, as seen from the source tree.
#[must_use]
pub fn library_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("profiles")
}
