//! Limits: what one client, address or credential may take of the hub.
//!
//! Admission counters ([`Admission`]) bound open connections in total, per
//! IP address and per user; token buckets ([`RateLimiter`],
//! [`KeyedRateLimiter`]) bound publications per second. Every refusal is
//! counted in `tidings_limit_refusals_total{limit}` so an operator sees
//! which limit bites. The transports turn a refusal into the protocol's own
//! error (HTTP 503/429, Centrifugo error 111 or disconnect 4503).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Validated `[limits]`.
#[derive(Debug, Clone)]
pub struct LimitSettings {
    /// Open TCP connections in total (None: no limit).
    pub max_connections: Option<usize>,
    /// Open TCP connections per IP address.
    pub max_connections_per_ip: Option<usize>,
    /// Centrifugo sessions per user.
    pub max_connections_per_user: Option<usize>,
    /// Concurrent HTTP/2 streams per connection.
    pub max_streams: usize,
    /// Time allowed for TLS and a request's headers.
    pub header_timeout: Duration,
    /// Silence after which an HTTP connection is closed.
    pub idle_timeout: Duration,
    /// A write to a client that makes no progress for this long closes the
    /// connection as a slow consumer.
    pub write_timeout: Duration,
    /// Client publications per second per Centrifugo connection.
    pub publish_rate: Option<usize>,
    /// Publications per second per server credential.
    pub api_publish_rate: Option<usize>,
    /// Queued bytes per connection before it is a slow consumer.
    pub queue_bytes: usize,
}

/// Which limit refused something: the metric label and the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    /// `limits.max_connections`.
    Connections,
    /// `limits.max_connections_per_ip`.
    ConnectionsPerIp,
    /// `limits.max_connections_per_user`.
    ConnectionsPerUser,
    /// `limits.publish_rate` or `limits.api_publish_rate`.
    PublishRate,
}

impl Refusal {
    /// The metric label.
    pub fn label(self) -> &'static str {
        match self {
            Refusal::Connections => "max_connections",
            Refusal::ConnectionsPerIp => "max_connections_per_ip",
            Refusal::ConnectionsPerUser => "max_connections_per_user",
            Refusal::PublishRate => "publish_rate",
        }
    }

    /// What the client is told.
    pub fn message(self) -> &'static str {
        match self {
            Refusal::Connections => "the hub is at its connection limit; retry later",
            Refusal::ConnectionsPerIp => "too many connections from this address",
            Refusal::ConnectionsPerUser => "too many connections for this user",
            Refusal::PublishRate => "publish rate limit exceeded; slow down",
        }
    }

    /// Counts this refusal in `tidings_limit_refusals_total`.
    pub fn count(self) {
        metrics::counter!("tidings_limit_refusals_total", "limit" => self.label()).increment(1);
    }
}

/// Open-connection counters, total and per key. A [`Ticket`] holds one
/// place until it is dropped, whatever ends the connection.
pub struct Admission<K: Eq + Hash + Clone + Send + 'static> {
    state: Arc<Mutex<Counts<K>>>,
    max_total: Option<usize>,
    max_per_key: Option<usize>,
    refusals: (Refusal, Refusal),
}

struct Counts<K> {
    total: usize,
    per_key: HashMap<K, usize>,
}

/// One admitted connection; dropping it frees its place.
pub struct Ticket<K: Eq + Hash + Clone + Send + 'static> {
    state: Arc<Mutex<Counts<K>>>,
    key: K,
}

impl<K: Eq + Hash + Clone + Send + 'static> Drop for Ticket<K> {
    fn drop(&mut self) {
        let mut counts = self.state.lock();
        counts.total -= 1;
        if let Some(n) = counts.per_key.get_mut(&self.key) {
            *n -= 1;
            if *n == 0 {
                counts.per_key.remove(&self.key);
            }
        }
    }
}

impl<K: Eq + Hash + Clone + Send + 'static> Admission<K> {
    fn new(
        max_total: Option<usize>,
        max_per_key: Option<usize>,
        refusals: (Refusal, Refusal),
    ) -> Self {
        Admission {
            state: Arc::new(Mutex::new(Counts {
                total: 0,
                per_key: HashMap::new(),
            })),
            max_total,
            max_per_key,
            refusals,
        }
    }

    /// Takes a place for `key`, or says which limit is full.
    pub fn admit(&self, key: K) -> Result<Ticket<K>, Refusal> {
        let mut counts = self.state.lock();
        if self.max_total.is_some_and(|max| counts.total >= max) {
            self.refusals.0.count();
            return Err(self.refusals.0);
        }
        let n = counts.per_key.entry(key.clone()).or_default();
        if self.max_per_key.is_some_and(|max| *n >= max) {
            if *n == 0 {
                counts.per_key.remove(&key);
            }
            self.refusals.1.count();
            return Err(self.refusals.1);
        }
        *n += 1;
        counts.total += 1;
        Ok(Ticket {
            state: self.state.clone(),
            key,
        })
    }

    /// Places taken in total.
    pub fn open(&self) -> usize {
        self.state.lock().total
    }
}

/// TCP connections: `limits.max_connections` and `max_connections_per_ip`.
pub fn connections(settings: &LimitSettings) -> Admission<IpAddr> {
    Admission::new(
        settings.max_connections,
        settings.max_connections_per_ip,
        (Refusal::Connections, Refusal::ConnectionsPerIp),
    )
}

/// Centrifugo sessions per user: `limits.max_connections_per_user`.
pub fn users(settings: &LimitSettings) -> Admission<String> {
    Admission::new(
        None,
        settings.max_connections_per_user,
        (Refusal::Connections, Refusal::ConnectionsPerUser),
    )
}

/// A token bucket: `rate` tokens per second, holding at most `rate` (one
/// second of burst).
#[derive(Debug)]
pub struct RateLimiter {
    rate: f64,
    tokens: f64,
    last: Instant,
}

impl RateLimiter {
    /// A full bucket.
    pub fn new(rate: usize) -> Self {
        RateLimiter {
            rate: rate as f64,
            tokens: rate as f64,
            last: Instant::now(),
        }
    }

    /// Takes one token at `now`; false (and counted) when the bucket is empty.
    pub fn allow_at(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.last).as_secs_f64();
        self.last = now;
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            Refusal::PublishRate.count();
            false
        }
    }

    /// Takes one token now.
    pub fn allow(&mut self) -> bool {
        self.allow_at(Instant::now())
    }
}

/// Token buckets per credential. Buckets of credentials unused for a minute
/// are forgotten, so the map stays as small as the set of active publishers
/// (and only authenticated credentials get one).
pub struct KeyedRateLimiter {
    rate: Option<usize>,
    buckets: Mutex<HashMap<String, RateLimiter>>,
}

impl KeyedRateLimiter {
    /// `rate` per second per key (None: no limit).
    pub fn new(rate: Option<usize>) -> Self {
        KeyedRateLimiter {
            rate,
            buckets: Mutex::new(HashMap::new()),
        }
    }

    /// Takes one token from `key`'s bucket.
    pub fn allow(&self, key: &str) -> bool {
        let Some(rate) = self.rate else {
            return true;
        };
        let now = Instant::now();
        let mut buckets = self.buckets.lock();
        if buckets.len() > 1024 {
            buckets.retain(|_, b| now.duration_since(b.last) < Duration::from_secs(60));
        }
        buckets
            .entry(key.to_owned())
            .or_insert_with(|| RateLimiter::new(rate))
            .allow_at(now)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_counts_total_and_per_key_and_frees_on_drop() {
        let a = Admission::new(
            Some(3),
            Some(2),
            (Refusal::Connections, Refusal::ConnectionsPerIp),
        );
        let t1 = a.admit("a").unwrap();
        let _t2 = a.admit("a").unwrap();
        assert_eq!(a.admit("a").err(), Some(Refusal::ConnectionsPerIp));
        let _t3 = a.admit("b").unwrap();
        assert_eq!(a.admit("c").err(), Some(Refusal::Connections));
        drop(t1);
        assert_eq!(a.open(), 2);
        let _t4 = a.admit("c").unwrap();
        assert_eq!(a.state.lock().per_key.len(), 3);
    }

    #[test]
    fn token_bucket_allows_a_second_of_burst_then_the_rate() {
        let mut r = RateLimiter::new(10);
        let t0 = r.last;
        assert_eq!((0..20).filter(|_| r.allow_at(t0)).count(), 10);
        assert!(!r.allow_at(t0 + Duration::from_millis(50)));
        assert!(r.allow_at(t0 + Duration::from_millis(110)));
        // A long pause refills to the burst, not beyond.
        let later = t0 + Duration::from_secs(60);
        assert_eq!((0..20).filter(|_| r.allow_at(later)).count(), 10);
    }

    #[test]
    fn keyed_limiter_keeps_keys_apart_and_none_is_unlimited() {
        let k = KeyedRateLimiter::new(Some(2));
        assert!(k.allow("x") && k.allow("x"));
        assert!(!k.allow("x"));
        assert!(k.allow("y"));
        let open = KeyedRateLimiter::new(None);
        assert!((0..1000).all(|_| open.allow("x")));
    }
}
