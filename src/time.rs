//! Wall-clock time and retry pacing, for every layer.
//!
//! Positions in history, token expiry and webhook timestamps are wall-clock
//! times (they outlive the process and cross machines), so they come from
//! the system clock; durations inside the process use `tokio::time`.

use std::time::Duration;

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or_default()
}

/// Seconds since the Unix epoch (what JWT `exp` claims count).
pub fn now_secs() -> u64 {
    now_ms() / 1000
}

/// Retries with exponential backoff (100 ms doubling to 5 s): how engine
/// feeds reconnect and webhooks are redelivered.
pub struct Backoff(Duration);

impl Default for Backoff {
    fn default() -> Self {
        Backoff(Duration::from_millis(100))
    }
}

impl Backoff {
    /// Waits the current delay, then doubles it.
    pub async fn wait(&mut self) {
        tokio::time::sleep(self.0).await;
        self.0 = (self.0 * 2).min(Duration::from_secs(5));
    }

    /// Back to the shortest delay (after a success).
    pub fn reset(&mut self) {
        self.0 = Duration::from_millis(100);
    }
}
