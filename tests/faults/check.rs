//! The invariant, checked on a run's record:
//!
//! > for every client and channel, what it received equals the
//! > acknowledged publications of that channel, in order, with no
//! > duplicate — except where the hub told it "not recovered", and then
//! > nothing after that point is missing either. Every acknowledged
//! > publication is in history while its retention holds.
//!
//! Publications of a channel are numbered in the order the hub stored them
//! (one publisher per channel waits for each answer), so "in order, no
//! duplicate, nothing missing" is about numbers: within a subscription they
//! ascend by one, skipping only publications that were never acknowledged
//! (sent when the hub died: stored or not, nobody was told). A subscription
//! that continues from the client's position (recovered) must start right
//! after the last one the client had; one that starts afresh, or that the
//! hub told it could not be recovered, must have every acknowledged
//! publication sent after it went live. A subscription owes only what was
//! due (acknowledged, and asked for or live) at least [`END_GRACE`] before
//! it ended. The last subscription must end with the channel's last
//! acknowledged publication.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use crate::record::{Attempt, Channel, ClientRecord, Outcome, Start};

/// A publication due this shortly before a subscription ended may not
/// have reached it (fan-out follows the acknowledgement, a replay takes
/// time): it belongs to the next one.
const END_GRACE: Duration = Duration::from_millis(1500);

/// What the checker was asked to enforce.
pub struct Rules {
    /// The store keeps everything for the whole run: being told "not
    /// recovered" is itself a violation.
    pub expect_recovery: bool,
}

/// A run's figures and violations.
#[derive(Debug, Default)]
pub struct Verdict {
    pub acked: u64,
    pub maybe: u64,
    pub deliveries: u64,
    pub sessions: HashMap<&'static str, u64>,
    pub violations: Vec<String>,
}

/// Checks every client against the publishers' record; `stored` is each
/// channel's publication numbers found in history at the end (when the
/// store is meant to keep them all).
pub fn check(
    channels: &HashMap<String, Channel>,
    clients: &[(String, ClientRecord)],
    stored: Option<&HashMap<String, HashSet<u64>>>,
    rules: &Rules,
    run_end: Instant,
) -> Verdict {
    let mut v = Verdict::default();
    for ch in channels.values() {
        for a in &ch.outcomes {
            match a.outcome {
                Outcome::Acked => v.acked += 1,
                Outcome::Maybe => v.maybe += 1,
            }
        }
    }
    for (name, record) in clients {
        for a in &record.anomalies {
            v.violations.push(format!("{name}: {a}"));
        }
        for (channel, sessions) in &record.sessions {
            let Some(published) = channels.get(channel) else {
                v.violations
                    .push(format!("{name}: sessions of unknown channel {channel}"));
                continue;
            };
            check_channel(name, channel, published, sessions, rules, run_end, &mut v);
        }
    }
    if let Some(stored) = stored {
        for (channel, published) in channels {
            let kept = stored.get(channel);
            for (i, a) in published.outcomes.iter().enumerate() {
                let n = i as u64 + 1;
                if a.outcome == Outcome::Acked && !kept.is_some_and(|k| k.contains(&n)) {
                    v.violations.push(format!(
                        "{channel}: acknowledged publication {n} is not in history"
                    ));
                }
            }
        }
    }
    v
}

fn check_channel(
    name: &str,
    channel: &str,
    published: &Channel,
    sessions: &[crate::record::Session],
    rules: &Rules,
    run_end: Instant,
    v: &mut Verdict,
) {
    let mut bad = |what: String| v.violations.push(format!("{name} on {channel}: {what}"));
    // The last publication received so far, and since when the client has
    // been subscribed without interruption it was not told of.
    let mut position: Option<u64> = None;
    let mut anchor: Option<Instant> = None;
    let mut deliveries = 0;
    let mut counts: Vec<&'static str> = Vec::new();
    for (i, s) in sessions.iter().enumerate() {
        counts.push(match s.start {
            Start::Fresh => "fresh",
            Start::Recovered => "recovered",
            Start::Lost => "lost",
        });
        match s.start {
            Start::Recovered => {
                if anchor.is_none() {
                    bad(format!("session {i} recovered without any earlier session"));
                }
                if s.asked_after.is_some() && s.asked_after != position {
                    bad(format!(
                        "session {i} asked to continue after {:?}, its last was {position:?}",
                        s.asked_after
                    ));
                }
            }
            Start::Lost if rules.expect_recovery => {
                bad(format!(
                    "session {i} was told its position is lost, though history kept everything"
                ));
                (position, anchor) = (None, Some(s.live_at));
            }
            Start::Lost | Start::Fresh => (position, anchor) = (None, Some(s.live_at)),
        }
        deliveries += s.received.len() as u64;
        for w in s.received.windows(2) {
            if w[1] <= w[0] {
                bad(format!(
                    "session {i}: {} after {} (order or duplicate)",
                    w[1], w[0]
                ));
            } else if !published.only_maybes_between(w[0], w[1]) {
                bad(format!(
                    "session {i}: acknowledged publications {}..{} skipped",
                    w[0] + 1,
                    w[1] - 1
                ));
            }
        }
        // Where this session had to start.
        // A client owes nothing to itself while it does not read.
        let stopped = s.ended_at.unwrap_or(run_end);
        let stopped = s.stalled_at.map_or(stopped, |t| t.min(stopped));
        let deadline = stopped.checked_sub(END_GRACE);
        let required = |after: Option<u64>| -> Option<u64> {
            let first = match after {
                Some(p) => (p + 1..=published.outcomes.len() as u64)
                    .find(|&n| published.outcome(n) == Some(Outcome::Acked))?,
                None => published.first_acked_after(anchor?)?,
            };
            // Owed once it was both acknowledged and asked for: a session
            // gets the grace to deliver even a backlog.
            let due = published.outcomes[first as usize - 1].known.max(s.live_at);
            deadline.is_some_and(|d| due <= d).then_some(first)
        };
        match (s.received.first(), position) {
            (Some(&first), Some(p)) => {
                if first <= p {
                    bad(format!("session {i} repeated {first} (had up to {p})"));
                } else if !published.only_maybes_between(p, first) {
                    bad(format!(
                        "session {i} resumed at {first} after {p}: {}..{} lost without notice",
                        p + 1,
                        first - 1
                    ));
                }
            }
            (Some(&first), None) => {
                if let Some(m) = published
                    .first_acked_after(anchor.unwrap_or(s.live_at))
                    .filter(|&m| m < first)
                {
                    bad(format!(
                        "session {i} started at {first}, missing {m}.. published after it was live"
                    ));
                }
            }
            (None, p) => {
                if let Some(m) = required(p) {
                    let open = s.ended_at.unwrap_or(run_end) - s.live_at;
                    let state = if s.ended_at.is_some() {
                        "ended"
                    } else {
                        "open at the end"
                    };
                    bad(format!(
                        "session {i} ({:?}, live {:.1}s, {state}) received nothing, missing {m}..",
                        s.start,
                        open.as_secs_f64()
                    ));
                }
            }
        }
        if let Some(&last) = s.received.last() {
            position = Some(last);
        }
    }
    // The end: everything acknowledged arrived.
    let last_acked = published.last_acked();
    let got = position.unwrap_or(0);
    let owed = match position {
        Some(_) => got < last_acked,
        None => anchor.is_some_and(|a| published.first_acked_after(a).is_some()),
    };
    if owed && !sessions.is_empty() {
        bad(format!(
            "ended at {got}, the last acknowledged publication is {last_acked}"
        ));
    }
    v.deliveries += deliveries;
    for c in counts {
        *v.sessions.entry(c).or_default() += 1;
    }
}

/// Checks the checker: planted violations must be found, a clean record
/// must pass. Run before every run (a checker that finds nothing proves
/// nothing).
pub fn self_test() {
    use crate::record::Session;
    let t0 = Instant::now();
    let at = |ms: u64| t0 + Duration::from_millis(ms);
    let mut ch = Channel::default();
    for n in 1..=10u64 {
        let o = if n == 5 {
            Outcome::Maybe
        } else {
            Outcome::Acked
        };
        ch.outcomes.push(Attempt {
            outcome: o,
            sent: at(100 * n - 10),
            known: at(100 * n),
        });
    }
    let channels: HashMap<String, Channel> = [("c".to_owned(), ch)].into();
    let session = |start, live: u64, ended: Option<u64>, after, received: Vec<u64>| Session {
        start,
        live_at: at(live),
        ended_at: ended.map(at),
        received,
        asked_after: after,
        stalled_at: None,
    };
    let record = |sessions| {
        let mut r = ClientRecord::default();
        r.sessions.insert("c".into(), sessions);
        r
    };
    let run = |sessions| {
        let rules = Rules {
            expect_recovery: true,
        };
        check(
            &channels,
            &[("t".into(), record(sessions))],
            None,
            &rules,
            at(5000),
        )
        .violations
    };
    // Clean: live before 1, 5 (never acknowledged) missing, a recovered
    // reconnection dropped at once (long after 6 was acknowledged: it had
    // no time to replay it), another after it.
    let clean = run(vec![
        session(Start::Fresh, 50, Some(450), None, vec![1, 2, 3, 4]),
        session(Start::Recovered, 2200, Some(2300), Some(4), vec![]),
        session(Start::Recovered, 2400, None, Some(4), vec![6, 7, 8, 9, 10]),
    ]);
    // Clean: a recovered session whose client stopped reading as it
    // opened, and stayed stalled until the hub closed it.
    let mut stalled = session(Start::Recovered, 460, Some(3000), Some(4), vec![]);
    stalled.stalled_at = Some(at(460));
    let stalled = run(vec![
        session(Start::Fresh, 50, Some(450), None, vec![1, 2, 3, 4]),
        stalled,
        session(Start::Recovered, 3100, None, Some(4), vec![6, 7, 8, 9, 10]),
    ]);
    assert!(
        stalled.is_empty(),
        "the checker refused a session its client stalled: {stalled:?}"
    );
    // Clean: 2 was answered after the subscription went live, but sent
    // before it: it may be missing.
    let in_flight = run(vec![session(
        Start::Fresh,
        195,
        None,
        None,
        vec![3, 4, 6, 7, 8, 9, 10],
    )]);
    assert!(
        in_flight.is_empty(),
        "the checker refused a publication in flight: {in_flight:?}"
    );
    assert!(
        clean.is_empty(),
        "the checker refused a clean record: {clean:?}"
    );
    let planted: [(&str, Vec<Session>); 8] = [
        (
            // Lived long enough to replay 6..: silent, then a later session
            // made up for it (only the backlog rule can see this).
            "silent recovery",
            vec![
                session(Start::Fresh, 50, Some(450), None, vec![1, 2, 3, 4]),
                session(Start::Recovered, 460, Some(3000), Some(4), vec![]),
                session(Start::Recovered, 3100, None, Some(4), vec![6, 7, 8, 9, 10]),
            ],
        ),
        (
            "late start",
            vec![session(
                Start::Fresh,
                185,
                None,
                None,
                vec![3, 4, 6, 7, 8, 9, 10],
            )],
        ),
        (
            "gap",
            vec![session(
                Start::Fresh,
                50,
                None,
                None,
                vec![1, 2, 4, 6, 7, 8, 9, 10],
            )],
        ),
        (
            "duplicate",
            vec![session(
                Start::Fresh,
                50,
                None,
                None,
                vec![1, 2, 2, 3, 4, 6, 7, 8, 9, 10],
            )],
        ),
        (
            "order",
            vec![session(
                Start::Fresh,
                50,
                None,
                None,
                vec![1, 3, 2, 4, 6, 7, 8, 9, 10],
            )],
        ),
        (
            "silent resume gap",
            vec![
                session(Start::Fresh, 50, Some(450), None, vec![1, 2, 3]),
                session(Start::Recovered, 460, None, Some(3), vec![6, 7, 8, 9, 10]),
            ],
        ),
        (
            "short end",
            vec![session(
                Start::Fresh,
                50,
                None,
                None,
                vec![1, 2, 3, 4, 6, 7],
            )],
        ),
        (
            "lost on a keeping store",
            vec![
                session(Start::Fresh, 50, Some(450), None, vec![1, 2, 3, 4]),
                session(Start::Lost, 460, None, Some(4), vec![6, 7, 8, 9, 10]),
            ],
        ),
    ];
    for (what, sessions) in planted {
        assert!(
            !run(sessions).is_empty(),
            "the checker missed a planted {what}"
        );
    }
}
