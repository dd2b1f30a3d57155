//! The sink's validation of an inbound MQTT message: any topic and payload are accepted or
//! rejected with a reason, never a panic.
#![no_main]

use fivezero_sink::validate::{Rules, validate};
use libfuzzer_sys::fuzz_target;

/// The site and gateway of model/tests/fixtures/*.json, so the seeds pass the topic checks and
/// the fuzzer starts from accepted messages; the first input byte picks the topic.
const TOPICS: [&str; 5] = [
    "fivezero/v1/qingdao-greensail/qd-greensail-gw1/batches",
    "fivezero/v1/qingdao-greensail/qd-greensail-gw1/kpi",
    "fivezero/v1/qingdao-greensail/qd-greensail-gw1/gaps",
    "fivezero/v1/qingdao-greensail/qd-greensail-gw1/status",
    "fivezero/v1/qingdao-greensail/qd-greensail-gw1/ack",
];

fuzz_target!(|data: &[u8]| {
    let Some((&pick, payload)) = data.split_first() else {
        return;
    };
    let rules = Rules {
        prefix: "fivezero/v1".into(),
        max_payload: 256 * 1024,
        allowed_gateways: None,
    };
    let topic = TOPICS[usize::from(pick) % TOPICS.len()];
    let _ = validate(&rules, topic, payload, 1_790_000_000_000);
    if let Ok(text) = std::str::from_utf8(payload) {
        let _ = validate(&rules, text, b"{}", 1_790_000_000_000);
    }
});
