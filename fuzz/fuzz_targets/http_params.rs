//! The sink API's query-parameter parsers: times, steps and whole query strings, never a
//! panic, always a value or a 4xx error.
#![no_main]

use std::collections::BTreeMap;

use fivezero_sink::api::params;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let _ = params::time("from", text);
    let _ = params::step("step", text);
    if let (Ok(a), Ok(b)) = (params::time("from", text), params::time("to", text)) {
        let _ = params::range(a, b, std::time::Duration::from_secs(86_400));
    }
    let _ = params::parse::<BTreeMap<String, String>>(Some(text));
});
