//! WebSocket framing: the header of a frame a server sends (RFC 6455
//! §5.2), and permessage-deflate (RFC 7692).
//!
//! Reading client frames (masking, fragmentation, control frames, UTF-8,
//! closing) is tungstenite's job. Writing a server's data frame is simple
//! enough to do here, and doing it here lets a batch of encoded messages go
//! to the socket in one `writev` beside its header, without being copied
//! into another buffer first.
//!
//! - [`deflate`]: the offer we accept, compressed pieces, inflating.
//! - [`inflate`]: a client's frame stream with compressed messages
//!   inflated, before tungstenite reads it.

pub mod deflate;
pub mod inflate;

/// Most bytes of a server frame header: no mask, a 64-bit length.
pub const MAX_HEADER: usize = 10;

/// What a data frame carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Opcode {
    /// UTF-8 text (JSON).
    Text,
    /// Binary (Protobuf).
    Binary,
}

/// Writes the header of an unfragmented, unmasked frame carrying `len`
/// bytes into `buf`; returns it. `compressed` sets RSV1 (a
/// permessage-deflate message).
pub fn frame_header(
    opcode: Opcode,
    compressed: bool,
    len: usize,
    buf: &mut [u8; MAX_HEADER],
) -> &[u8] {
    buf[0] = 0x80
        | if compressed { 0x40 } else { 0 }
        | match opcode {
            Opcode::Text => 0x1,
            Opcode::Binary => 0x2,
        };
    match len {
        0..=125 => {
            buf[1] = len as u8;
            &buf[..2]
        }
        126..=0xffff => {
            buf[1] = 126;
            buf[2..4].copy_from_slice(&(len as u16).to_be_bytes());
            &buf[..4]
        }
        _ => {
            buf[1] = 127;
            buf[2..10].copy_from_slice(&(len as u64).to_be_bytes());
            &buf[..10]
        }
    }
}

/// Appends a frame as a client sends it to `out`: `first` is its first
/// byte (FIN, RSV, opcode), the payload masked with `mask`. (The hub's
/// inflater hands frames on this way, and the bench's clients write them.)
pub fn client_frame(first: u8, payload: &[u8], mask: [u8; 4], out: &mut Vec<u8>) {
    out.push(first);
    match payload.len() {
        n @ 0..=125 => out.push(0x80 | n as u8),
        n @ 126..=0xffff => {
            out.push(0x80 | 126);
            out.extend_from_slice(&(n as u16).to_be_bytes());
        }
        n => {
            out.push(0x80 | 127);
            out.extend_from_slice(&(n as u64).to_be_bytes());
        }
    }
    out.extend_from_slice(&mask);
    if mask == [0; 4] {
        out.extend_from_slice(payload);
    } else {
        out.extend(payload.iter().enumerate().map(|(i, b)| b ^ mask[i % 4]));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lengths_take_the_shortest_form() {
        let mut buf = [0u8; MAX_HEADER];
        assert_eq!(frame_header(Opcode::Text, false, 0, &mut buf), [0x81, 0]);
        assert_eq!(frame_header(Opcode::Text, true, 1, &mut buf), [0xc1, 1]);
        assert_eq!(
            frame_header(Opcode::Binary, false, 125, &mut buf),
            [0x82, 125]
        );
        assert_eq!(
            frame_header(Opcode::Text, false, 126, &mut buf),
            [0x81, 126, 0, 126]
        );
        assert_eq!(
            frame_header(Opcode::Text, false, 0xffff, &mut buf),
            [0x81, 126, 0xff, 0xff]
        );
        assert_eq!(
            frame_header(Opcode::Text, false, 0x1_0000, &mut buf),
            [0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]
        );
    }

    #[test]
    fn tungstenite_reads_what_we_write() {
        use tungstenite::protocol::frame::FrameHeader;
        for len in [0usize, 1, 125, 126, 200, 0xffff, 0x1_0000, 300_000] {
            let mut buf = [0u8; MAX_HEADER];
            let header = frame_header(Opcode::Text, false, len, &mut buf).to_vec();
            let mut cursor = std::io::Cursor::new(header.as_slice());
            let (parsed, parsed_len) = FrameHeader::parse(&mut cursor).unwrap().unwrap();
            assert_eq!(parsed_len, len as u64);
            assert!(parsed.is_final && parsed.mask.is_none());
            assert_eq!(cursor.position() as usize, header.len());
        }
    }
}
