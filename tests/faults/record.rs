//! What a run records: every publish attempt and its outcome, and what
//! every client received, session by session. The checker reads only this.

use std::collections::HashMap;
use std::time::Instant;

use parking_lot::Mutex;

/// How a publish attempt ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// The hub answered 200: the publication is stored.
    Acked,
    /// Sent, but no answer (the hub died, timed out, failed): it may or may
    /// not be stored.
    Maybe,
}

/// One publish attempt that reached the hub (or may have).
#[derive(Debug, Clone, Copy)]
pub struct Attempt {
    pub outcome: Outcome,
    /// When its request was sent: a subscription live before this must
    /// receive it.
    pub sent: Instant,
    /// When its outcome was known (the answer came, or did not).
    pub known: Instant,
}

/// One channel's publications, numbered 1, 2, … in the order the hub
/// stored them (one publisher per channel, waiting for each answer).
#[derive(Debug, Default)]
pub struct Channel {
    /// Index `n - 1`: publication `n`.
    pub outcomes: Vec<Attempt>,
}

impl Channel {
    pub fn outcome(&self, n: u64) -> Option<Outcome> {
        self.outcomes
            .get(n.checked_sub(1)? as usize)
            .map(|a| a.outcome)
    }

    /// The newest acknowledged publication.
    pub fn last_acked(&self) -> u64 {
        self.outcomes
            .iter()
            .rposition(|a| a.outcome == Outcome::Acked)
            .map_or(0, |i| i as u64 + 1)
    }

    /// True when every publication strictly between `a` and `b` may be
    /// missing (none of them was acknowledged).
    pub fn only_maybes_between(&self, a: u64, b: u64) -> bool {
        (a + 1..b).all(|n| self.outcome(n) != Some(Outcome::Acked))
    }

    /// The first acknowledged publication sent after `t`. (Not "answered
    /// after": an answer is read some time after the hub sent it, and a
    /// subscription may go live in between without owing it.)
    pub fn first_acked_after(&self, t: Instant) -> Option<u64> {
        self.outcomes
            .iter()
            .position(|a| a.outcome == Outcome::Acked && a.sent > t)
            .map(|i| i as u64 + 1)
    }
}

/// How a subscription (re)started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// Without a position (first subscription, or none was known).
    Fresh,
    /// Continued from the client's position: nothing may be missing since.
    Recovered,
    /// The hub said the position could not be honoured (Centrifugo
    /// `recovered: false`, Mercure `Mercure-Last-Event-ID: earliest`).
    Lost,
}

/// One subscription of one channel, from its start to its end.
#[derive(Debug)]
pub struct Session {
    pub start: Start,
    /// When it was live: publications sent after this reach it.
    pub live_at: Instant,
    pub ended_at: Option<Instant>,
    /// Publication numbers, in the order received.
    pub received: Vec<u64>,
    /// What the client asked to continue after (its last publication), if
    /// anything.
    pub asked_after: Option<u64>,
    /// When the client first stopped reading (a stall fault): from then on
    /// it is owed nothing more.
    pub stalled_at: Option<Instant>,
}

/// One client's record.
#[derive(Debug, Default)]
pub struct ClientRecord {
    /// Sessions by channel, oldest first.
    pub sessions: HashMap<String, Vec<Session>>,
    /// Things the client saw that can never be right (undecodable
    /// messages, publications of channels it did not subscribe to…).
    pub anomalies: Vec<String>,
    /// Connections made (the first and every reconnection).
    pub connections: u64,
    /// Times the hub ended a connection or subscription by itself.
    pub closed_by_hub: u64,
}

impl ClientRecord {
    /// A subscription of `channel` started.
    pub fn started(&mut self, channel: &str, start: Start, asked_after: Option<u64>) {
        let now = Instant::now();
        let sessions = self.sessions.entry(channel.to_owned()).or_default();
        if let Some(last) = sessions.last_mut() {
            last.ended_at.get_or_insert(now);
        }
        sessions.push(Session {
            start,
            live_at: now,
            ended_at: None,
            received: Vec::new(),
            asked_after,
            stalled_at: None,
        });
    }

    /// Every open subscription ended (the connection did).
    pub fn ended_all(&mut self) {
        let now = Instant::now();
        for s in self.sessions.values_mut().filter_map(|v| v.last_mut()) {
            s.ended_at.get_or_insert(now);
        }
    }

    /// The client stopped reading: every open subscription is stalled.
    pub fn stalled(&mut self) {
        let now = Instant::now();
        for s in self.sessions.values_mut().filter_map(|v| v.last_mut()) {
            if s.ended_at.is_none() {
                s.stalled_at.get_or_insert(now);
            }
        }
    }

    /// The subscription of `channel` ended.
    pub fn ended(&mut self, channel: &str) {
        if let Some(s) = self.sessions.get_mut(channel).and_then(|v| v.last_mut()) {
            s.ended_at.get_or_insert(Instant::now());
        }
    }

    /// Publication `n` of `channel` arrived.
    pub fn received(&mut self, channel: &str, n: u64) {
        match self.sessions.get_mut(channel).and_then(|v| v.last_mut()) {
            Some(s) if s.ended_at.is_none() => s.received.push(n),
            _ => self.anomalies.push(format!(
                "publication {n} of {channel} outside a subscription"
            )),
        }
    }

    /// The last publication of `channel` received in any session.
    pub fn last_received(&self, channel: &str) -> Option<u64> {
        self.sessions
            .get(channel)?
            .iter()
            .rev()
            .find_map(|s| s.received.last().copied())
    }
}

/// Shared, locked.
pub type Shared<T> = std::sync::Arc<Mutex<T>>;
