//! Centrifugo client frames: JSON (newline-delimited) and Protobuf
//! (length-delimited) commands, emulation request bodies, and the uni_sse
//! resume id a browser sends back in Last-Event-ID.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tidings::protocol::centrifuge::{decode_commands, decode_emulation, resume, Encoding};

fuzz_target!(|frame: &[u8]| {
    let _ = decode_commands(Encoding::Json, frame);
    let _ = decode_commands(Encoding::Protobuf, frame);
    let _ = decode_emulation(false, frame);
    let _ = decode_emulation(true, frame);
    if let Ok(id) = std::str::from_utf8(frame) {
        let _ = resume::decode(id);
    }
});
