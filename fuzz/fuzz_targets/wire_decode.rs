//! The wire decoders the sink and the gateway use on payloads from the network: any bytes
//! give a message or an error, never a panic; a decoded message re-encodes and decodes equal.
#![no_main]

use fivezero_model::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(b) = wire::decode_batch(data) {
        assert_eq!(wire::decode_batch(&wire::encode(&b)).ok(), Some(b));
    }
    if let Ok(k) = wire::decode_kpi_batch(data) {
        assert_eq!(wire::decode_kpi_batch(&wire::encode(&k)).ok(), Some(k));
    }
    if let Ok(g) = wire::decode_gap(data) {
        assert_eq!(wire::decode_gap(&wire::encode(&g)).ok(), Some(g));
    }
    let _ = wire::decode_status(data);
    let _ = wire::decode_ack(data);
});
