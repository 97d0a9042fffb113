//! permessage-deflate on the way in: any bytes a client sends, cut
//! anywhere, go through the frame inflater without panicking; and a message compressed in pieces the
//! way the hub compresses them comes out of the inflater as the plain
//! frame, whatever the cuts.
#![no_main]

use arbitrary::Arbitrary;
use libfuzzer_sys::fuzz_target;
use tidings::protocol::websocket::deflate::{finish, piece};
use tidings::protocol::websocket::client_frame;
use tidings::protocol::websocket::inflate::FrameInflater;

const LIMIT: usize = 1 << 16;

#[derive(Arbitrary, Debug)]
struct Input {
    raw: Vec<u8>,
    cuts: Vec<u16>,
    /// Pieces of a message, each compressed on its own, and a level.
    message: Vec<Vec<u8>>,
    level: u8,
    mask: [u8; 4],
}

/// Feeds `bytes` cut at `cuts`; the output, or None once it refused them.
fn feed(bytes: &[u8], cuts: &[u16]) -> Option<Vec<u8>> {
    let mut inflater = FrameInflater::new(LIMIT);
    let mut out = Vec::new();
    let mut rest = bytes;
    for cut in cuts.iter().chain(std::iter::once(&u16::MAX)) {
        let (now, later) = rest.split_at((*cut as usize).min(rest.len()));
        inflater.feed(now, &mut out).ok()?;
        rest = later;
    }
    Some(out)
}

fuzz_target!(|input: Input| {
    let _ = feed(&input.raw, &input.cuts);

    let plain: Vec<u8> = input.message.concat();
    if plain.len() > LIMIT {
        return;
    }
    let level = 1 + u32::from(input.level % 9);
    let mut pieces: Vec<_> = input.message.iter().map(|p| piece(p, level)).collect();
    finish(&mut pieces);
    let compressed = pieces.concat();
    let frame = |first: u8, payload: &[u8], mask: [u8; 4]| {
        let mut f = Vec::new();
        client_frame(first, payload, mask, &mut f);
        f
    };
    if compressed.len() > LIMIT {
        return;
    }
    let out = feed(&frame(0xc2, &compressed, input.mask), &input.cuts)
        .expect("our own compression inflates");
    // The inflater hands frames on masked with a zero key.
    assert_eq!(out, frame(0x82, &plain, [0; 4]));
});
