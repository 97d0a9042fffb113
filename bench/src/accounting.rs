//! What a benchmark run received, against what it expected: deliveries,
//! loss, duplicates, reordering and end-to-end latency. Pure (no I/O), so
//! the arithmetic is tested on known streams.
//!
//! Every publication carries a sequence number (per channel, from 1) and
//! the time it was sent; each subscriber reports what it received, in the
//! order it arrived. A subscriber that joined a channel expects every
//! sequence number published on it while it was subscribed.

use std::sync::LazyLock;

use hdrhistogram::Histogram;
use memchr::memmem::Finder;

/// The payload marker of a sequence number: `"seq":123`.
pub const SEQ_MARK: &[u8] = b"\"seq\":";
/// The payload marker of the send time, microseconds since the Unix epoch: `"t":…`.
pub const TIME_MARK: &[u8] = b"\"t\":";

/// How far back duplicates and reordering are told apart, in sequence
/// numbers (older arrivals count as reordered).
const WINDOW: u64 = 4096;

/// One subscriber's view of its channel. Memory is fixed (a 4096-bit
/// window below the highest sequence number), whatever the run's length.
#[derive(Debug, Clone)]
pub struct Tally {
    /// Deliveries received (duplicates included).
    pub received: u64,
    /// Deliveries whose sequence number was already received.
    pub duplicates: u64,
    /// Deliveries older than one received before them (not duplicates).
    pub reordered: u64,
    /// Highest sequence number received.
    pub highest: u64,
    window: [u64; (WINDOW / 64) as usize],
}

impl Default for Tally {
    fn default() -> Self {
        Tally {
            received: 0,
            duplicates: 0,
            reordered: 0,
            highest: 0,
            window: [0; (WINDOW / 64) as usize],
        }
    }
}

impl Tally {
    fn bit(&mut self, seq: u64) -> (&mut u64, u64) {
        let slot = seq % WINDOW;
        (&mut self.window[(slot / 64) as usize], 1 << (slot % 64))
    }

    /// Records one delivery.
    pub fn record(&mut self, seq: u64) {
        self.received += 1;
        if seq > self.highest {
            // Forget the slots the window slides past.
            let from = self.highest.max(seq.saturating_sub(WINDOW)) + 1;
            for s in from..seq {
                let (word, mask) = self.bit(s);
                *word &= !mask;
            }
            let (word, mask) = self.bit(seq);
            *word |= mask;
            self.highest = seq;
        } else if self.highest - seq >= WINDOW {
            self.reordered += 1;
        } else {
            let (word, mask) = self.bit(seq);
            if *word & mask != 0 {
                self.duplicates += 1;
            } else {
                *word |= mask;
                self.reordered += 1;
            }
        }
    }

    /// Zeroes the counts, keeping the position (for a new measurement step).
    pub fn reset_counts(&mut self) {
        (self.received, self.duplicates, self.reordered) = (0, 0, 0);
    }

    /// Distinct sequence numbers received.
    pub fn distinct(&self) -> u64 {
        self.received - self.duplicates
    }

    /// Of `expected` publications, how many never arrived.
    pub fn lost(&self, expected: u64) -> u64 {
        expected.saturating_sub(self.distinct())
    }
}

/// Finds every delivery in a chunk of received bytes: each `"seq":N`
/// followed by `"t":T`. Works on any framing (SSE events, WebSocket
/// messages, JSON wrappers) as long as the chunk holds whole messages.
pub fn scan(chunk: &[u8], mut found: impl FnMut(u64, u64)) {
    // Built once: building a searcher costs more than most searches.
    static SEQ: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(SEQ_MARK));
    static TIME: LazyLock<Finder<'static>> = LazyLock::new(|| Finder::new(TIME_MARK));
    let mut rest = chunk;
    while let Some(at) = SEQ.find(rest) {
        rest = &rest[at + SEQ_MARK.len()..];
        let (seq, used) = number(rest);
        rest = &rest[used..];
        let near = &rest[..rest.len().min(8 + TIME_MARK.len())];
        let time = match TIME.find(near) {
            Some(t) if t < 8 => {
                let (time, used) = number(&rest[t + TIME_MARK.len()..]);
                rest = &rest[t + TIME_MARK.len() + used..];
                time
            }
            _ => 0,
        };
        found(seq, time);
    }
}

fn number(bytes: &[u8]) -> (u64, usize) {
    let digits = bytes.iter().take_while(|b| b.is_ascii_digit()).count();
    let value = bytes[..digits].iter().fold(0u64, |n, d| {
        n.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    });
    (value, digits)
}

/// The payload of publication `seq` sent at `time_us`, padded to `size` bytes
/// with words drawn from a small vocabulary, so that it compresses about as
/// well as the text of a real message (a run of one letter would make
/// permessage-deflate look far better than it is).
pub fn payload(seq: u64, time_us: u64, size: usize) -> String {
    const WORDS: [&str; 32] = [
        "price", "update", "order", "user", "status", "active", "market", "value", "symbol",
        "volume", "change", "open", "close", "high", "low", "bid", "ask", "trade", "time", "room",
        "message", "text", "author", "reply", "seen", "typing", "online", "away", "score", "level",
        "team", "round",
    ];
    let head = format!("{{\"seq\":{seq},\"t\":{time_us},\"p\":\"");
    let pad = size.saturating_sub(head.len() + 2);
    let mut text = String::with_capacity(pad + 8);
    let mut state = seq.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1;
    while text.len() < pad {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        text.push_str(WORDS[(state % WORDS.len() as u64) as usize]);
        text.push(' ');
    }
    text.truncate(pad);
    format!("{head}{text}\"}}")
}

/// Latencies in microseconds, 1 µs to 10 minutes, 3 significant digits.
pub fn latency_histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 600_000_000, 3).unwrap_or_else(|_| unreachable!())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_known_stream_counts_loss_duplicates_and_reordering() {
        let mut t = Tally::default();
        for seq in [1, 2, 4, 3, 3, 6, 7, 7] {
            t.record(seq);
        }
        assert_eq!(t.received, 8);
        assert_eq!(t.duplicates, 2, "3 and 7 twice");
        assert_eq!(t.reordered, 1, "3 after 4");
        assert_eq!(t.highest, 7);
        assert_eq!(t.distinct(), 6);
        assert_eq!(t.lost(8), 2, "5 and 8 missing");
    }

    #[test]
    fn memory_is_bounded_and_old_arrivals_count_as_reordered() {
        let mut t = Tally::default();
        for seq in 1..=100_000 {
            t.record(seq);
        }
        t.record(99_999); // within the window: a duplicate
        t.record(10); // beyond it: reordered (cannot tell)
        assert_eq!((t.duplicates, t.reordered), (1, 1));
        t.record(200_000); // a jump clears the window
        t.record(150_000);
        assert_eq!(t.reordered, 2);
        assert_eq!(t.lost(200_000), 200_000 - t.distinct());
    }

    #[test]
    fn deliveries_are_found_in_any_framing() {
        let sse = format!(
            "id: a\ndata: {}\n\nid: b\ndata: {}\n\n",
            payload(1, 100, 40),
            payload(2, 200, 40)
        );
        let ws = format!(
            "{{\"push\":{{\"channel\":\"c\",\"pub\":{{\"data\":{},\"offset\":3}}}}}}\n{{}}",
            payload(3, 300, 0)
        );
        let mut got = Vec::new();
        scan(sse.as_bytes(), |s, t| got.push((s, t)));
        scan(ws.as_bytes(), |s, t| got.push((s, t)));
        assert_eq!(got, vec![(1, 100), (2, 200), (3, 300)]);
        assert_eq!(payload(9, 1, 100).len(), 100);
    }

    #[test]
    fn latencies_land_in_the_histogram() {
        let mut h = latency_histogram();
        for us in [1_000u64, 2_000, 3_000, 100_000] {
            h.record(us).unwrap();
        }
        assert_eq!(h.len(), 4);
        assert!((h.value_at_quantile(0.5) as i64 - 2_000).abs() < 10);
        assert!(h.max() >= 99_900);
    }
}
