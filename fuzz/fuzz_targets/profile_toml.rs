//! Profile parsing and validation: any text gives a profile or diagnostics, never a panic.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(text) = std::str::from_utf8(data) {
        let _ = fivezero_profiles::check_str(Path::new("fuzz.toml"), text);
    }
});
