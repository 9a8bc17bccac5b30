//! Bytes as a frame payload (`decode_payload`: version, then one message): a message or an error,
//! never a panic; a message re-encodes to a payload that decodes to itself.
#![no_main]

use cpis_protocol::wire;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = wire::decode_payload(data) {
        cpis_fuzz::assert_round_trip(&message);
        let again = wire::decode_payload(&wire::encode_payload(&message));
        assert!(again.as_ref().is_ok_and(|m| *m == message), "a {} payload does not round-trip", message.kind());
    }
});
