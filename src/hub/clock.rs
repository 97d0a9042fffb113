//! The write clock: how a busy connection's publications are coalesced.
//!
//! Each write to a socket costs a system call and a TCP segment, and on a
//! busy hub that cost, not encoding, is most of the CPU. So a connection
//! that has just written is *held*: what reaches its queue meanwhile waits
//! for the clock's next tick and then goes out in one write. A connection
//! that has not written recently is not held, so a publication after a
//! quiet spell still goes out at once.
//!
//! One clock serves the whole hub. Holding and releasing happen in the
//! queue ([`Sink`](super::Sink)): an offer to a held queue does not wake its writer, and
//! a tick wakes only the held writers that have something to write. A busy
//! connection therefore costs one wake-up per write and no timer of its
//! own, whatever the number of publications it receives.

use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio::time::MissedTickBehavior;

/// A queue the clock holds until its next tick.
pub trait Held: Send + Sync {
    /// The tick came: the queue is no longer held.
    fn release(&self);
}

/// Ticks every `hub.write_interval`, releasing the queues held since the
/// previous tick.
pub struct WriteClock {
    held: Mutex<Vec<Arc<dyn Held>>>,
    /// Wakes the ticking task when a queue is held after an idle spell
    /// (and when the clock is dropped, so that the task ends).
    work: Arc<Notify>,
}

impl WriteClock {
    /// A clock ticking every `interval` (from a task it spawns, which ends
    /// when the clock is dropped).
    pub fn start(interval: Duration) -> Arc<WriteClock> {
        let clock = Arc::new(WriteClock {
            held: Mutex::new(Vec::new()),
            work: Arc::new(Notify::new()),
        });
        tokio::spawn(tick(Arc::downgrade(&clock), clock.work.clone(), interval));
        clock
    }

    /// Releases `sink` at the next tick.
    pub(crate) fn hold(&self, sink: Arc<dyn Held>) {
        let mut held = self.held.lock();
        held.push(sink);
        if held.len() == 1 {
            self.work.notify_one();
        }
    }
}

impl Drop for WriteClock {
    fn drop(&mut self) {
        self.work.notify_one();
    }
}

async fn tick(clock: Weak<WriteClock>, work: Arc<Notify>, interval: Duration) {
    let mut ticker = tokio::time::interval(interval);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    let mut releasing = Vec::new();
    loop {
        let Some(strong) = clock.upgrade() else {
            return;
        };
        std::mem::swap(&mut *strong.held.lock(), &mut releasing);
        if releasing.is_empty() {
            // Nothing held: sleep until something is, then hold it for a
            // whole interval.
            drop(strong);
            work.notified().await;
            ticker.reset();
        } else {
            drop(strong);
            for sink in releasing.drain(..) {
                sink.release();
            }
        }
        ticker.tick().await;
    }
}
