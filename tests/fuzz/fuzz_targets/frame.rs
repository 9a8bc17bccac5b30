//! Bytes from a peer as a stream reader takes them: the whole as one frame (`decode_frame`), and
//! the 4-byte header (`frame_len`) then that many payload bytes (`decode_payload`), more bytes
//! possibly following (the next frame's). Both ways must agree, and whatever decodes must
//! re-encode and decode to itself.
#![no_main]

use cpis_fuzz::assert_round_trip;
use cpis_protocol::wire::{self, FRAME_HEADER_BYTES};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let whole = wire::decode_frame(data);
    if let Ok(message) = &whole {
        assert_round_trip(message);
    }
    let Some((header, rest)) = data.split_first_chunk::<FRAME_HEADER_BYTES>() else {
        assert!(whole.is_err(), "decode_frame took fewer bytes than a frame header");
        return;
    };
    let Ok(len) = wire::frame_len(*header) else {
        assert!(whole.is_err(), "decode_frame took a frame whose header frame_len refuses");
        return;
    };
    assert_eq!(len, u32::from_be_bytes(*header) as usize, "frame_len changed the declared length");
    let Some(payload) = rest.get(..len) else {
        assert!(whole.is_err(), "decode_frame took a frame shorter than its header says");
        return;
    };
    let streamed = wire::decode_payload(payload);
    if let Ok(message) = &streamed {
        assert_round_trip(message);
    }
    if rest.len() != len {
        assert!(whole.is_err(), "decode_frame took bytes beyond the frame its header declares");
        return;
    }
    match (&whole, &streamed) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "decode_frame and frame_len + decode_payload decode differently"),
        (Err(_), Err(_)) => {}
        _ => panic!("decode_frame gave {whole:?} but frame_len + decode_payload gave {streamed:?}"),
    }
});
